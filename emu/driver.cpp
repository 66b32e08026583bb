// Stand-in for libcuda (the CUDA driver API) that runs everything on the CPU, for CI without a
// GPU. Built by build.rs as OUT_DIR/emu/libcuda.so (SONAME libcuda.so) together with the
// host-compiled kernels. src/backend/cuda/device.rs dlopens it by full path before cudarc's
// first driver call; cudarc's own dlopen("libcuda.so") then finds the already loaded library by
// its SONAME, so the same cudarc calls and the same launch code drive it.
//
// Semantics: one device ("HRM CPU emulation", sm_90 attributes); every call completes before it
// returns (event timestamps are host time), except copies from page-locked host memory
// (cuMemHostAlloc) to the device: as on a GPU they complete later, here at the next operation
// on the device or the first synchronisation that covers them (stream, context, or an event
// recorded after them), so a host that refills a page-locked buffer before its copy is known to
// be done sends the new contents. Memory pools are supported (cuMemAllocAsync reuses freed
// blocks at the same address, released at synchronisations), and a graph node replayed with a
// pointer into memory freed since the capture fails. Synchronisations are counted
// (hrm_emu_sync_count) so tests can assert that a training step waits for nothing. Device
// pointers are host addresses of checked allocations (emu/runtime.cpp); modules are the real
// PTX/cubin images from nvcc, and cuModuleGetFunction checks that the image contains the kernel
// before returning the host-compiled version registered under that name.
//
// Launch limits as on the GPU: the block size must not exceed the kernel's
// `__launch_bounds__` (read from the loaded image: `.maxntid` in PTX, EIATTR_MAX_THREADS in the
// cubin's .nv.info section), and dynamic shared memory above 48 KiB needs the function's
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES opt-in.
//
// Stream capture (CUDA graphs): cuStreamBeginCapture on a stream records, instead of running,
// the kernel launches, device-to-device copies and memsets issued on it, and the cuBLASLt
// matmuls (through hrm_emu_capture_host); cuStreamEndCapture returns them as a graph,
// cuGraphInstantiate freezes it and cuGraphLaunch replays the nodes in order (kernel arguments
// as captured; the memory they point to is read at replay). Synchronising, allocating or freeing
// while a capture is active, and host<->device copies on a capturing stream, are refused and
// invalidate the capture, as on the GPU (pageable host memory cannot be captured).
#include <cuda.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime.h"

namespace {
struct Module {
  std::string image;
  bool is_ptx;
  std::vector<void*> funcs;
};
struct Func {
  const emu::KernelEntry* kernel;
  int max_threads;    // from __launch_bounds__ in the image; 1024 when it sets none
  int max_dyn_smem;   // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (48 KiB - static until
                      // opted in)
  int static_smem;    // CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, from the image
};
constexpr int kDefaultDynSmem = 48 * 1024;
constexpr int kMaxDynSmemOptin = 227 * 1024;

// One recorded operation of a captured stream.
struct Node {
  enum Kind { Kernel, CopyDtoD, Memset8, Host } kind;
  const emu::KernelEntry* kernel = nullptr;
  emu::LaunchDims dims{};
  void* packed = nullptr;
  CUdeviceptr dst = 0, src = 0;
  size_t bytes = 0;
  unsigned char value = 0;
  int (*host_fn)(void*) = nullptr;
  void* host_data = nullptr;
  void (*host_free)(void*) = nullptr;
  // (device pointer, allocation id) of every pointer the node touches, taken at capture: a
  // replay after one of those allocations was freed (and maybe handed out again) fails.
  std::vector<std::pair<uint64_t, uint64_t>> ptr_ids;
  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node() {
    if (kernel && packed) kernel->unpack_free(packed);
    if (host_free && host_data) host_free(host_data);
  }
};
using NodeList = std::vector<std::shared_ptr<const Node>>;
struct Graph {
  NodeList nodes;
};
struct GraphExec {
  NodeList nodes;  // shares the (immutable) nodes with the graph it came from
};
struct Stream {
  int token;
  bool capturing = false;
  bool invalidated = false;
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
  std::thread::id owner;  // thread that began the capture
  std::unique_ptr<Graph> graph;
};
// Captures in progress in GLOBAL mode (any thread) and in this thread (GLOBAL or THREAD_LOCAL):
// while either is non-zero, "unsafe" calls (allocation, free, synchronisation) are refused.
std::atomic<int> g_global_captures{0};
std::atomic<int> g_any_captures{0};
thread_local int t_local_captures = 0;
std::mutex g_capture_mu;
std::vector<Stream*> g_capturing;  // streams capturing now
struct Event {
  std::chrono::steady_clock::time_point t;
  bool recorded = false;
  uint64_t copies_before = 0;  // queued copies with a lower sequence number precede it
};

// Copies from page-locked host memory still queued (they run at the next device operation or
// a synchronisation that covers them), in issue order.
struct PendingCopy {
  uint64_t seq;
  CUdeviceptr dst;
  const void* src;
  size_t n;
};
std::mutex g_pending_mu;
std::vector<PendingCopy> g_pending;
uint64_t g_copy_seq = 0;
// Page-locked host ranges (start -> length).
std::mutex g_pinned_mu;
std::map<uintptr_t, size_t> g_pinned;
bool is_pinned(const void* p, size_t n) {
  std::lock_guard<std::mutex> g(g_pinned_mu);
  auto it = g_pinned.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == g_pinned.begin()) return false;
  --it;
  return reinterpret_cast<uintptr_t>(p) + n <= it->first + it->second;
}
// Runs the queued copies with a sequence number below `upto` (all by default).
void complete_copies(uint64_t upto = UINT64_MAX) {
  std::lock_guard<std::mutex> g(g_pending_mu);
  size_t done = 0;
  for (; done < g_pending.size() && g_pending[done].seq < upto; ++done) {
    const PendingCopy& c = g_pending[done];
    std::memcpy(reinterpret_cast<void*>(c.dst), c.src, c.n);
  }
  g_pending.erase(g_pending.begin(), g_pending.begin() + static_cast<long>(done));
}
bool copies_pending(uint64_t upto) {
  std::lock_guard<std::mutex> g(g_pending_mu);
  return !g_pending.empty() && g_pending.front().seq < upto;
}
// Host waits for the device (stream or context synchronisations, and event waits that had to
// wait for something).
std::atomic<unsigned long long> g_syncs{0};
// A point where the host waits for everything issued so far: queued copies complete, and the
// pools give their free blocks back (their release threshold is 0).
void synchronise(CUstream stream, bool all) {
  complete_copies();
  emu::mem_pool_trim(reinterpret_cast<uint64_t>(stream), all);
  g_syncs++;
}
// (pointer, allocation id) pairs of a node's pointers, for the check at replay.
void note_ptrs(Node& n, const uint64_t* ptrs, int count) {
  for (int i = 0; i < count; ++i)
    if (ptrs[i] != 0) n.ptr_ids.emplace_back(ptrs[i], emu::mem_alloc_id(ptrs[i]));
}
int g_ctx_token = 0;
int g_stream_token = 0;
thread_local CUcontext t_ctx = nullptr;
bool g_inited = false;

CUresult ok() { return CUDA_SUCCESS; }

size_t elf_size(const unsigned char* p) {
  // 64-bit little-endian ELF: the image ends with the section or program header table.
  uint64_t shoff, phoff;
  uint16_t phentsize, phnum, shentsize, shnum;
  std::memcpy(&phoff, p + 0x20, 8);
  std::memcpy(&shoff, p + 0x28, 8);
  std::memcpy(&phentsize, p + 0x36, 2);
  std::memcpy(&phnum, p + 0x38, 2);
  std::memcpy(&shentsize, p + 0x3A, 2);
  std::memcpy(&shnum, p + 0x3C, 2);
  uint64_t a = shoff + uint64_t(shentsize) * shnum, b = phoff + uint64_t(phentsize) * phnum;
  return static_cast<size_t>(a > b ? a : b);
}

bool image_has_kernel(const Module& m, const char* name) {
  if (m.is_ptx) {
    std::string needle = std::string(".entry ") + name;
    size_t pos = 0;
    while ((pos = m.image.find(needle, pos)) != std::string::npos) {
      char next = pos + needle.size() < m.image.size() ? m.image[pos + needle.size()] : 0;
      if (next == '(' || next == ' ' || next == '\n' || next == '\r' || next == '\t') return true;
      pos += needle.size();
    }
    return false;
  }
  std::string needle = std::string(1, '\0') + name + std::string(1, '\0');
  return m.image.find(needle) != std::string::npos;
}

// Offset and size of the cubin section named `want` (false when there is none).
bool cubin_section(const Module& m, const std::string& want, uint64_t* off, uint64_t* size) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(m.image.data());
  uint64_t shoff;
  uint16_t shentsize, shnum, shstrndx;
  std::memcpy(&shoff, p + 0x28, 8);
  std::memcpy(&shentsize, p + 0x3A, 2);
  std::memcpy(&shnum, p + 0x3C, 2);
  std::memcpy(&shstrndx, p + 0x3E, 2);
  auto sec = [&](int i, uint32_t* nm, uint64_t* o, uint64_t* sz) {
    const unsigned char* h = p + shoff + uint64_t(i) * shentsize;
    std::memcpy(nm, h, 4);
    std::memcpy(o, h + 0x18, 8);
    std::memcpy(sz, h + 0x20, 8);
  };
  uint32_t nm;
  uint64_t stroff, strsize;
  sec(shstrndx, &nm, &stroff, &strsize);
  for (int i = 0; i < shnum; ++i) {
    sec(i, &nm, off, size);
    if (nm < strsize && want == reinterpret_cast<const char*>(p + stroff + nm)) return true;
  }
  return false;
}

// Threads per block allowed by the kernel's __launch_bounds__ in the loaded image (0: none).
int image_max_threads(const Module& m, const char* name) {
  if (m.is_ptx) {
    std::string needle = std::string(".entry ") + name;
    size_t pos = m.image.find(needle + "(");
    if (pos == std::string::npos) return 0;
    size_t body = m.image.find('{', pos);
    size_t bound = m.image.find(".maxntid", pos);
    size_t req = m.image.find(".reqntid", pos);
    size_t at = bound < req ? bound : req;
    if (at == std::string::npos || at > body) return 0;
    unsigned x = 1, y = 1, z = 1;
    if (sscanf(m.image.c_str() + at + 8, " %u , %u , %u", &x, &y, &z) < 1) return 0;
    return static_cast<int>(x * y * z);
  }
  // cubin: section .nv.info.<name>, attribute EIATTR_MAX_THREADS (0x05, 3 x u32).
  const unsigned char* p = reinterpret_cast<const unsigned char*>(m.image.data());
  uint64_t off, size;
  if (!cubin_section(m, std::string(".nv.info.") + name, &off, &size)) return 0;
  for (uint64_t j = 0; j + 4 <= size;) {
    unsigned fmt = p[off + j], attr = p[off + j + 1];
    uint16_t len = 0;
    if (fmt == 4) std::memcpy(&len, p + off + j + 2, 2);
    if (fmt == 4 && attr == 0x05 && len == 12) {
      uint32_t xyz[3];
      std::memcpy(xyz, p + off + j + 4, 12);
      return static_cast<int>(xyz[0] * xyz[1] * xyz[2]);
    }
    j += fmt == 4 ? 4 + len : 4;
  }
  return 0;
}

// Bytes of static __shared__ memory of the kernel in a cubin: the size of its .nv.shared.<name>
// section less the 1 KiB that sm_8x/sm_9x reserve per block for the system (it is in that
// section, not in the launch limits); 0 for PTX, whose shared variables are not per kernel.
int image_static_smem(const Module& m, const char* name) {
  constexpr uint64_t kReserved = 1024;
  uint64_t off, size;
  if (m.is_ptx || !cubin_section(m, std::string(".nv.shared.") + name, &off, &size)) return 0;
  return static_cast<int>(size >= kReserved ? size - kReserved : size);
}

bool valid_ptr(CUdeviceptr p, size_t n) { return n == 0 || emu::mem_range_ok(p, n); }

CUresult bad_range(const char* what, CUdeviceptr p, size_t n) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s: [0x%llx, +%zu) is not inside one live device allocation", what,
           static_cast<unsigned long long>(p), n);
  return static_cast<CUresult>(emu::set_error(CUDA_ERROR_INVALID_VALUE, buf));
}

// The legacy (0x1) and per-thread (0x2) default stream handles and null are no Stream objects.
Stream* as_stream(CUstream s) {
  return reinterpret_cast<uintptr_t>(s) < 4096 ? nullptr : reinterpret_cast<Stream*>(s);
}
Stream* capturing(CUstream s) {
  Stream* st = as_stream(s);
  return st && st->capturing ? st : nullptr;
}
// Marks every capture that an unsafe call in this thread breaks as invalidated.
CUresult refuse_during_capture(const char* what) {
  std::lock_guard<std::mutex> g(g_capture_mu);
  for (Stream* st : g_capturing) {
    if (st->mode == CU_STREAM_CAPTURE_MODE_GLOBAL ||
        (st->mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL && st->owner == std::this_thread::get_id()))
      st->invalidated = true;
  }
  return static_cast<CUresult>(emu::set_error(
      CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
      std::string(what) + " is not allowed while a stream capture is active (the capture is "
                          "invalidated)"));
}
bool unsafe_call_blocked() { return g_global_captures.load() > 0 || t_local_captures > 0; }
CUresult record(Stream* st, std::shared_ptr<const Node> n) {
  if (st->invalidated) {
    return static_cast<CUresult>(emu::set_error(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                                                "the stream capture was invalidated earlier"));
  }
  st->graph->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult refuse_host_copy(Stream* st, const char* what) {
  st->invalidated = true;
  return static_cast<CUresult>(emu::set_error(
      CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
      std::string(what) + " on a capturing stream is not emulated (host memory cannot be "
                          "captured; upload before capturing); the capture is invalidated"));
}

CUresult run_node(const Node& n) {
  for (size_t i = 0; i < n.ptr_ids.size(); ++i) {
    const auto& [p, id] = n.ptr_ids[i];
    if (emu::mem_alloc_id(p) != id) {
      char buf[400];
      snprintf(buf, sizeof buf,
               "graph replay: %s%s touches 0x%llx, memory freed after the graph was captured%s "
               "(a graph keeps the addresses it captured: keep its buffers alive or record it "
               "again)",
               n.kind == Node::Kernel ? "kernel " : "a captured ",
               n.kind == Node::Kernel ? n.kernel->name
                                      : (n.kind == Node::Host ? "cuBLASLt matmul" : "copy/memset"),
               static_cast<unsigned long long>(p),
               emu::mem_alloc_id(p) ? " and handed out again" : "");
      return static_cast<CUresult>(emu::set_error(CUDA_ERROR_ILLEGAL_ADDRESS, buf));
    }
  }
  switch (n.kind) {
    case Node::Kernel:
      return static_cast<CUresult>(emu::launch_packed(n.kernel, n.dims, n.packed));
    case Node::CopyDtoD:
      if (!valid_ptr(n.dst, n.bytes)) return bad_range("graph memcpy node (dst)", n.dst, n.bytes);
      if (!valid_ptr(n.src, n.bytes)) return bad_range("graph memcpy node (src)", n.src, n.bytes);
      if (n.bytes)
        std::memmove(reinterpret_cast<void*>(n.dst), reinterpret_cast<const void*>(n.src), n.bytes);
      return CUDA_SUCCESS;
    case Node::Memset8:
      if (!valid_ptr(n.dst, n.bytes)) return bad_range("graph memset node", n.dst, n.bytes);
      std::memset(reinterpret_cast<void*>(n.dst), n.value, n.bytes);
      return CUDA_SUCCESS;
    case Node::Host: {
      int rc = n.host_fn(n.host_data);
      if (rc != 0) {
        return static_cast<CUresult>(emu::set_error(
            CUDA_ERROR_LAUNCH_FAILED,
            "a captured cuBLASLt matmul failed at graph replay (status " + std::to_string(rc) + ")"));
      }
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_INVALID_VALUE;
}
}  // namespace

extern "C" {

// Used by the cuBLASLt stand-in to check operand ranges.
__attribute__((visibility("default"))) int hrm_emu_mem_range_ok(uint64_t p, size_t n) {
  return valid_ptr(p, n) ? 1 : 0;
}
__attribute__((visibility("default"))) size_t hrm_emu_live_allocations() {
  return emu::mem_live_allocations();
}
// Used by the cuBLASLt stand-in: when `stream` is capturing, records `fn(data)` as a graph node
// (the node owns `data` and releases it with `free_fn`) and returns 1; returns 0 when the stream
// is not capturing (the caller runs the operation now and keeps `data`); -1 when the capture was
// invalidated (the node is not recorded, `data` stays the caller's).
__attribute__((visibility("default"))) int hrm_emu_capture_host(CUstream stream, int (*fn)(void*),
                                                                 void* data,
                                                                 void (*free_fn)(void*),
                                                                 const uint64_t* ptrs, int nptrs) {
  Stream* st = capturing(stream);
  if (!st) {
    complete_copies();  // the caller runs the operation now, after what was queued before it
    return 0;
  }
  if (st->invalidated) return -1;
  auto n = std::make_shared<Node>();
  n->kind = Node::Host;
  n->host_fn = fn;
  n->host_data = data;
  n->host_free = free_fn;
  note_ptrs(*n, ptrs, nptrs);
  st->graph->nodes.push_back(std::move(n));
  return 1;
}
// Host synchronisations so far (see synchronise()).
__attribute__((visibility("default"))) unsigned long long hrm_emu_sync_count() { return g_syncs.load(); }

CUresult cuInit(unsigned int) {
  g_inited = true;
  emu::install_fault_handler();
  return ok();
}
// HRM_EMU_DRIVER_VERSION (e.g. 12040) plays an older driver, for the version check's tests.
CUresult cuDriverGetVersion(int* v) {
  const char* env = getenv("HRM_EMU_DRIVER_VERSION");
  *v = env && *env ? atoi(env) : 13000;
  return ok();
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return ok();
}
CUresult cuDeviceGetCount(int* n) {
  *n = 1;
  return ok();
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
  snprintf(name, static_cast<size_t>(len), "HRM CPU emulation (sm_90 semantics)");
  return ok();
}
CUresult hrm_emu_uuid_v1(CUuuid* u, CUdevice) __asm__("cuDeviceGetUuid");
CUresult hrm_emu_uuid_v1(CUuuid* u, CUdevice) {
  std::memset(u, 0, sizeof *u);
  return ok();
}
CUresult cuDeviceGetUuid_v2(CUuuid* u, CUdevice) {
  std::memset(u, 0, sizeof *u);
  return ok();
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
  *bytes = emu::mem_capacity();
  return ok();
}
CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice) {
  switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 49152; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = 232448; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = 132; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
    // 1, as on every H100/H200: cudarc then allocates with cuMemAllocAsync/cuMemFreeAsync.
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
    default: *v = 0; break;
  }
  return ok();
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) {
  *c = reinterpret_cast<CUcontext>(&g_ctx_token);
  return ok();
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return ok(); }
CUresult cuCtxSetCurrent(CUcontext c) {
  t_ctx = c;
  return ok();
}
CUresult cuCtxGetCurrent(CUcontext* c) {
  *c = t_ctx;
  return ok();
}
CUresult cuCtxPushCurrent_v2(CUcontext c) {
  t_ctx = c;
  return ok();
}
CUresult cuCtxPopCurrent_v2(CUcontext* c) {
  if (c) *c = t_ctx;
  return ok();
}
CUresult cuCtxGetDevice(CUdevice* d) {
  *d = 0;
  return ok();
}
CUresult cuCtxSynchronize(void) {
  if (unsafe_call_blocked() || g_any_captures.load() > 0) return refuse_during_capture("cuCtxSynchronize");
  synchronise(nullptr, true);
  return ok();
}
CUresult cuCtxGetLimit(size_t* v, CUlimit) {
  *v = 0;
  return ok();
}
CUresult cuCtxSetLimit(CUlimit, size_t) { return ok(); }
CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) {
  if (lo) *lo = 0;
  if (hi) *hi = 0;
  return ok();
}
CUresult cuCtxSetFlags(unsigned int) { return ok(); }

CUresult cuStreamCreate(CUstream* s, unsigned int) {
  *s = reinterpret_cast<CUstream>(new Stream{++g_stream_token});
  return ok();
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int, int) {
  *s = reinterpret_cast<CUstream>(new Stream{++g_stream_token});
  return ok();
}
CUresult cuStreamDestroy_v2(CUstream s) {
  Stream* st = as_stream(s);
  if (st && st->capturing) {
    return static_cast<CUresult>(
        emu::set_error(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "cuStreamDestroy on a capturing stream"));
  }
  delete st;
  return ok();
}
CUresult cuStreamSynchronize(CUstream s) {
  if (Stream* st = capturing(s)) {
    st->invalidated = true;
    return static_cast<CUresult>(emu::set_error(
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        "cuStreamSynchronize on a capturing stream (the capture is invalidated)"));
  }
  if (unsafe_call_blocked()) return refuse_during_capture("cuStreamSynchronize");
  synchronise(s, false);
  return ok();
}
CUresult cuStreamQuery(CUstream s) {
  if (capturing(s)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  return ok();
}
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return ok(); }
CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* out) {
  Stream* st = capturing(s);
  *out = !st ? CU_STREAM_CAPTURE_STATUS_NONE
             : (st->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                : CU_STREAM_CAPTURE_STATUS_ACTIVE);
  return ok();
}
CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
  Stream* st = as_stream(s);
  if (!st) {
    return static_cast<CUresult>(emu::set_error(
        CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "stream capture on the legacy default stream"));
  }
  if (st->capturing) {
    return static_cast<CUresult>(
        emu::set_error(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: the stream is already capturing"));
  }
  st->capturing = true;
  st->invalidated = false;
  st->mode = mode;
  st->owner = std::this_thread::get_id();
  st->graph = std::make_unique<Graph>();
  g_any_captures++;
  if (mode == CU_STREAM_CAPTURE_MODE_GLOBAL) g_global_captures++;
  if (mode != CU_STREAM_CAPTURE_MODE_RELAXED) t_local_captures++;
  std::lock_guard<std::mutex> g(g_capture_mu);
  g_capturing.push_back(st);
  return ok();
}
CUresult cuStreamEndCapture(CUstream s, CUgraph* out) {
  *out = nullptr;
  Stream* st = capturing(s);
  if (!st) {
    return static_cast<CUresult>(emu::set_error(
        CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture on a stream that is not capturing"));
  }
  st->capturing = false;
  g_any_captures--;
  if (st->mode == CU_STREAM_CAPTURE_MODE_GLOBAL) g_global_captures--;
  if (st->mode != CU_STREAM_CAPTURE_MODE_RELAXED) t_local_captures--;
  {
    std::lock_guard<std::mutex> g(g_capture_mu);
    for (size_t i = 0; i < g_capturing.size(); ++i) {
      if (g_capturing[i] == st) {
        g_capturing.erase(g_capturing.begin() + static_cast<long>(i));
        break;
      }
    }
  }
  std::unique_ptr<Graph> graph = std::move(st->graph);
  if (st->invalidated) {
    st->invalidated = false;
    return static_cast<CUresult>(emu::set_error(
        CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        "cuStreamEndCapture: the capture was invalidated by an operation not allowed during "
        "capture"));
  }
  *out = reinterpret_cast<CUgraph>(graph.release());
  return ok();
}
CUresult cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph g, unsigned long long) {
  if (!g) return CUDA_ERROR_INVALID_VALUE;
  auto* e = new GraphExec{reinterpret_cast<Graph*>(g)->nodes};
  *out = reinterpret_cast<CUgraphExec>(e);
  return ok();
}
CUresult cuGraphUpload(CUgraphExec, CUstream) { return ok(); }
// Launches the host issued outside a capture so far (kernels and graph launches): a test and
// `hrm bench` read it to count the launches of a training step; a GPU gets the same count, as
// the same code issues them.
static unsigned long long g_launches = 0;
unsigned long long hrm_emu_launch_count() { return g_launches; }

CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  if (capturing(s)) {
    return static_cast<CUresult>(emu::set_error(
        CUDA_ERROR_NOT_SUPPORTED, "cuGraphLaunch on a capturing stream is not emulated"));
  }
  emu::clear_error();
  complete_copies();
  ++g_launches;
  for (const auto& n : reinterpret_cast<GraphExec*>(e)->nodes) {
    CUresult rc = run_node(*n);
    if (rc != CUDA_SUCCESS) return rc;
  }
  return ok();
}
CUresult cuGraphExecDestroy(CUgraphExec e) {
  delete reinterpret_cast<GraphExec*>(e);
  return ok();
}
CUresult cuGraphDestroy(CUgraph g) {
  delete reinterpret_cast<Graph*>(g);
  return ok();
}

CUresult cuEventCreate(CUevent* e, unsigned int) {
  *e = reinterpret_cast<CUevent>(new Event());
  return ok();
}
CUresult cuEventDestroy_v2(CUevent e) {
  delete reinterpret_cast<Event*>(e);
  return ok();
}
CUresult cuEventRecord(CUevent e, CUstream) {
  auto* ev = reinterpret_cast<Event*>(e);
  ev->t = std::chrono::steady_clock::now();
  ev->recorded = true;
  std::lock_guard<std::mutex> g(g_pending_mu);
  ev->copies_before = g_copy_seq;
  return ok();
}
CUresult cuEventSynchronize(CUevent e) {
  auto* ev = reinterpret_cast<Event*>(e);
  if (ev->recorded && copies_pending(ev->copies_before)) {
    complete_copies(ev->copies_before);
    g_syncs++;
  }
  return ok();
}
CUresult cuEventQuery(CUevent e) {
  auto* ev = reinterpret_cast<Event*>(e);
  return ev->recorded && copies_pending(ev->copies_before) ? CUDA_ERROR_NOT_READY : ok();
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) {
  auto* ea = reinterpret_cast<Event*>(a);
  auto* eb = reinterpret_cast<Event*>(b);
  if (!ea->recorded || !eb->recorded) return CUDA_ERROR_INVALID_HANDLE;
  *ms = std::chrono::duration<float, std::milli>(eb->t - ea->t).count();
  return ok();
}
CUresult hrm_emu_event_elapsed_v1(float* ms, CUevent a, CUevent b) __asm__("cuEventElapsedTime");
CUresult hrm_emu_event_elapsed_v1(float* ms, CUevent a, CUevent b) {
  return cuEventElapsedTime_v2(ms, a, b);
}

// Allocation and free nodes of a graph are not emulated: the capture is invalidated.
CUresult refuse_memory_node(Stream* st, const char* what) {
  st->invalidated = true;
  return static_cast<CUresult>(emu::set_error(
      CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, std::string(what) + "; the capture is invalidated"));
}
CUresult zero_bytes(const char* what) {
  return static_cast<CUresult>(emu::set_error(
      CUDA_ERROR_INVALID_VALUE, std::string(what) + " of 0 bytes (the driver refuses it)"));
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
  if (unsafe_call_blocked()) return refuse_during_capture("cuMemAlloc");
  if (bytes == 0) return zero_bytes("cuMemAlloc");
  *p = emu::mem_alloc(bytes);
  return *p ? ok() : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
  if (Stream* st = capturing(s)) {
    return refuse_memory_node(st, "cuMemAllocAsync during a stream capture (a graph allocation "
                                  "node) is not emulated: make the buffer before capturing");
  }
  if (bytes == 0) return zero_bytes("cuMemAllocAsync");
  complete_copies();
  *p = emu::mem_pool_alloc(bytes, reinterpret_cast<uint64_t>(s));
  return *p ? ok() : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
  if (p == 0) return ok();
  if (unsafe_call_blocked()) return refuse_during_capture("cuMemFree");
  complete_copies();  // a queued copy into it runs first (cuMemFree waits for the device)
  return emu::mem_free(p) ? ok() : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  if (Stream* st = capturing(s)) {
    return refuse_memory_node(st, "cuMemFreeAsync during a stream capture (a graph free node) "
                                  "is not emulated: keep buffers a graph uses alive past the capture");
  }
  if (p == 0) return ok();
  complete_copies();
  return emu::mem_pool_free(p, reinterpret_cast<uint64_t>(s)) ? ok() : CUDA_ERROR_INVALID_VALUE;
}
// Page-locked host memory: copies from it to the device are queued (see the header).
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int) {
  if (bytes == 0) return zero_bytes("cuMemHostAlloc");
  *p = std::malloc(bytes);
  if (!*p) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard<std::mutex> g(g_pinned_mu);
  g_pinned[reinterpret_cast<uintptr_t>(*p)] = bytes;
  return ok();
}
CUresult cuMemFreeHost(void* p) {
  complete_copies();  // the driver waits for copies reading it
  {
    std::lock_guard<std::mutex> g(g_pinned_mu);
    g_pinned.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
  return ok();
}
CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
  *total = emu::mem_capacity();
  *free_b = *total - emu::mem_live_bytes();
  return ok();
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
  complete_copies();
  if (!valid_ptr(p, n)) return bad_range("cuMemsetD8", p, n);
  std::memset(reinterpret_cast<void*>(p), v, n);
  return ok();
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) {
  if (Stream* st = capturing(s)) {
    if (!valid_ptr(p, n)) return bad_range("cuMemsetD8Async (captured)", p, n);
    auto node = std::make_shared<Node>();
    node->kind = Node::Memset8;
    const uint64_t ptr = p;
    note_ptrs(*node, &ptr, 1);
    node->dst = p;
    node->bytes = n;
    node->value = v;
    return record(st, std::move(node));
  }
  return cuMemsetD8_v2(p, v, n);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  complete_copies();
  if (!valid_ptr(dst, n)) return bad_range("cuMemcpyHtoD", dst, n);
  if (n) std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return ok();
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
  if (Stream* st = capturing(s)) return refuse_host_copy(st, "cuMemcpyHtoDAsync");
  if (n && is_pinned(src, n)) {
    // from page-locked memory the copy is truly asynchronous: it reads `src` later
    if (!valid_ptr(dst, n)) return bad_range("cuMemcpyHtoDAsync", dst, n);
    std::lock_guard<std::mutex> g(g_pending_mu);
    g_pending.push_back(PendingCopy{g_copy_seq++, dst, src, n});
    return ok();
  }
  return cuMemcpyHtoD_v2(dst, src, n);  // pageable memory: staged before the call returns
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  complete_copies();
  if (!valid_ptr(src, n)) return bad_range("cuMemcpyDtoH", src, n);
  if (n) std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return ok();
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
  if (Stream* st = capturing(s)) return refuse_host_copy(st, "cuMemcpyDtoHAsync");
  return cuMemcpyDtoH_v2(dst, src, n);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  complete_copies();
  if (!valid_ptr(dst, n)) return bad_range("cuMemcpyDtoD (dst)", dst, n);
  if (!valid_ptr(src, n)) return bad_range("cuMemcpyDtoD (src)", src, n);
  if (n) std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
  return ok();
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  if (Stream* st = capturing(s)) {
    if (!valid_ptr(dst, n)) return bad_range("cuMemcpyDtoDAsync (captured, dst)", dst, n);
    if (!valid_ptr(src, n)) return bad_range("cuMemcpyDtoDAsync (captured, src)", src, n);
    auto node = std::make_shared<Node>();
    node->kind = Node::CopyDtoD;
    const uint64_t ptrs[2] = {dst, src};
    note_ptrs(*node, ptrs, 2);
    node->dst = dst;
    node->src = src;
    node->bytes = n;
    return record(st, std::move(node));
  }
  return cuMemcpyDtoD_v2(dst, src, n);
}

CUresult cuModuleLoadData(CUmodule* out, const void* image) {
  const auto* p = static_cast<const unsigned char*>(image);
  auto* m = new Module();
  if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F') {
    m->is_ptx = false;
    m->image.assign(reinterpret_cast<const char*>(p), elf_size(p));
  } else {
    m->is_ptx = true;
    m->image.assign(reinterpret_cast<const char*>(p));
    if (m->image.find(".entry") == std::string::npos &&
        m->image.find(".version") == std::string::npos) {
      delete m;
      fprintf(stderr, "hrm-emu: cuModuleLoadData: image is neither PTX text nor an ELF cubin\n");
      return CUDA_ERROR_INVALID_IMAGE;
    }
  }
  *out = reinterpret_cast<CUmodule>(m);
  return ok();
}
CUresult cuModuleUnload(CUmodule mod) {
  auto* m = reinterpret_cast<Module*>(mod);
  for (void* f : m->funcs) delete static_cast<Func*>(f);
  delete m;
  return ok();
}
CUresult cuModuleGetFunction(CUfunction* out, CUmodule mod, const char* name) {
  auto* m = reinterpret_cast<Module*>(mod);
  if (!image_has_kernel(*m, name)) {
    fprintf(stderr, "hrm-emu: kernel %s is not in the loaded module image\n", name);
    return CUDA_ERROR_NOT_FOUND;
  }
  const emu::KernelEntry* k = emu::find_kernel(name);
  if (!k) {
    fprintf(stderr,
            "hrm-emu: kernel %s is in the module but has no host version (EMU_REGISTER missing?)\n",
            name);
    return CUDA_ERROR_NOT_FOUND;
  }
  int bound = image_max_threads(*m, name);
  int static_smem = image_static_smem(*m, name);
  auto* f = new Func{k, bound > 0 ? bound : 1024, std::max(0, kDefaultDynSmem - static_smem), static_smem};
  m->funcs.push_back(f);
  *out = reinterpret_cast<CUfunction>(f);
  return ok();
}
CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
  auto* fn = reinterpret_cast<Func*>(f);
  switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = fn->max_threads; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = fn->max_dyn_smem; break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *v = fn->static_smem; break;
    default: *v = 0; break;
  }
  return ok();
}
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
  auto* fn = reinterpret_cast<Func*>(f);
  if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
    if (v < 0 || v + fn->static_smem > kMaxDynSmemOptin) {
      return static_cast<CUresult>(emu::set_error(
          CUDA_ERROR_INVALID_VALUE, std::string("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, ") +
                                        std::to_string(v) + ") for " + fn->kernel->name + " with " +
                                        std::to_string(fn->static_smem) +
                                        " bytes of static shared memory: above the 227 KiB per "
                                        "block of sm_90"));
    }
    fn->max_dyn_smem = v;
  }
  return ok();
}
CUresult cuFuncSetCacheConfig(CUfunction, CUfunc_cache) { return ok(); }

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem,
                        CUstream stream, void** params, void** extra) {
  if (extra != nullptr) {
    fprintf(stderr, "hrm-emu: cuLaunchKernel with `extra` is not emulated\n");
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  auto* fn = reinterpret_cast<Func*>(f);
  emu::clear_error();
  emu::LaunchDims d{{gx, gy, gz}, {bx, by, bz}, smem};
  uint64_t threads = uint64_t(bx) * by * bz;
  if (threads > static_cast<uint64_t>(fn->max_threads)) {
    char buf[256];
    snprintf(buf, sizeof buf,
             "kernel %s launched with %llu threads per block, above its __launch_bounds__ (%d)",
             fn->kernel->name, static_cast<unsigned long long>(threads), fn->max_threads);
    return static_cast<CUresult>(emu::set_error(CUDA_ERROR_INVALID_VALUE, buf));
  }
  if (smem > static_cast<unsigned>(fn->max_dyn_smem)) {
    char buf[320];
    snprintf(buf, sizeof buf,
             "kernel %s launched with %u bytes of dynamic shared memory, above its limit of %d "
             "(%d static; static + dynamic above 48 KiB needs "
             "cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES))",
             fn->kernel->name, smem, fn->max_dyn_smem, fn->static_smem);
    return static_cast<CUresult>(emu::set_error(CUDA_ERROR_INVALID_VALUE, buf));
  }
  if (Stream* st = capturing(stream)) {
    if (int rc = emu::check_launch_dims(fn->kernel, d)) return static_cast<CUresult>(rc);
    auto node = std::make_shared<Node>();
    node->kind = Node::Kernel;
    node->kernel = fn->kernel;
    node->dims = d;
    node->packed = fn->kernel->pack(params);
    uint64_t ptrs[64];
    int nptr = 0;
    fn->kernel->pointer_args(node->packed, ptrs, &nptr);
    note_ptrs(*node, ptrs, nptr);
    return record(st, std::move(node));
  }
  complete_copies();
  ++g_launches;
  return static_cast<CUresult>(emu::launch(fn->kernel, d, params));
}

CUresult cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
    case CUDA_ERROR_ILLEGAL_STATE: *s = "CUDA_ERROR_ILLEGAL_STATE"; break;
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
    case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
    case CUDA_ERROR_STREAM_CAPTURE_UNMATCHED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"; break;
    default: *s = "CUDA_ERROR (emulation)"; break;
  }
  return ok();
}
CUresult cuGetErrorString(CUresult e, const char** s) {
  static thread_local std::string msg;
  const char* name;
  cuGetErrorName(e, &name);
  msg = name;
  if (e != CUDA_SUCCESS && !emu::last_error().empty()) {
    msg += ": " + emu::last_error();
  }
  *s = msg.c_str();
  return ok();
}

}  // extern "C"
