// Stand-in for libcuda (the CUDA driver API) that runs everything on the CPU, for CI without a
// GPU. Built by build.rs as OUT_DIR/emu/libcuda.so (SONAME libcuda.so) together with the
// host-compiled kernels. src/backend/cuda/device.rs dlopens it by full path before cudarc's
// first driver call; cudarc's own dlopen("libcuda.so") then finds the already loaded library by
// its SONAME, so the same cudarc calls and the same launch code drive it.
//
// Semantics: one device ("HRM CPU emulation", sm_90 attributes); every call completes before it
// returns (streams and events only order nothing; event timestamps are host time); device
// pointers are host addresses of checked allocations (emu/runtime.cpp); modules are the real
// PTX/cubin images from nvcc, and cuModuleGetFunction checks that the image contains the kernel
// before returning the host-compiled version registered under that name. Stream capture (CUDA
// graphs) is not emulated and reports CUDA_ERROR_NOT_SUPPORTED.
#include <cuda.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
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
};
struct Event {
  std::chrono::steady_clock::time_point t;
  bool recorded = false;
};
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

bool valid_ptr(CUdeviceptr p, size_t n) { return n == 0 || emu::mem_range_ok(p, n); }

CUresult bad_range(const char* what, CUdeviceptr p, size_t n) {
  fprintf(stderr, "hrm-emu: %s: [0x%llx, +%zu) is not inside one live device allocation\n", what,
          static_cast<unsigned long long>(p), n);
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

CUresult cuInit(unsigned int) {
  g_inited = true;
  emu::install_fault_handler();
  return ok();
}
CUresult cuDriverGetVersion(int* v) {
  *v = 13000;
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
  *bytes = size_t(16) << 30;
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
    // 0: cudarc then allocates with cuMemAlloc/cuMemFree instead of memory pools.
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 0; break;
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
CUresult cuCtxSynchronize(void) { return ok(); }
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
  *s = reinterpret_cast<CUstream>(new int(++g_stream_token));
  return ok();
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int, int) {
  *s = reinterpret_cast<CUstream>(new int(++g_stream_token));
  return ok();
}
CUresult cuStreamDestroy_v2(CUstream s) {
  delete reinterpret_cast<int*>(s);
  return ok();
}
CUresult cuStreamSynchronize(CUstream) { return ok(); }
CUresult cuStreamQuery(CUstream) { return ok(); }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return ok(); }
CUresult cuStreamIsCapturing(CUstream, CUstreamCaptureStatus* st) {
  *st = CU_STREAM_CAPTURE_STATUS_NONE;
  return ok();
}
CUresult cuStreamBeginCapture_v2(CUstream, CUstreamCaptureMode) {
  fprintf(stderr, "hrm-emu: stream capture (CUDA graphs) is not emulated\n");
  return CUDA_ERROR_NOT_SUPPORTED;
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
  return ok();
}
CUresult cuEventSynchronize(CUevent) { return ok(); }
CUresult cuEventQuery(CUevent) { return ok(); }
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

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
  *p = emu::mem_alloc(bytes);
  return *p ? ok() : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) { return cuMemAlloc_v2(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) {
  if (p == 0) return ok();
  return emu::mem_free(p) ? ok() : CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return cuMemFree_v2(p); }
// Page-locked host memory: plain host memory here (copies complete at issue time anyway).
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? ok() : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
  std::free(p);
  return ok();
}
CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
  *free_b = size_t(16) << 30;
  *total = size_t(16) << 30;
  return ok();
}
CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
  if (!valid_ptr(p, n)) return bad_range("cuMemsetD8", p, n);
  std::memset(reinterpret_cast<void*>(p), v, n);
  return ok();
}
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
  return cuMemsetD8_v2(p, v, n);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  if (!valid_ptr(dst, n)) return bad_range("cuMemcpyHtoD", dst, n);
  if (n) std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return ok();
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
  return cuMemcpyHtoD_v2(dst, src, n);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  if (!valid_ptr(src, n)) return bad_range("cuMemcpyDtoH", src, n);
  if (n) std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return ok();
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
  return cuMemcpyDtoH_v2(dst, src, n);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  if (!valid_ptr(dst, n)) return bad_range("cuMemcpyDtoD (dst)", dst, n);
  if (!valid_ptr(src, n)) return bad_range("cuMemcpyDtoD (src)", src, n);
  if (n) std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
  return ok();
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
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
  auto* f = new Func{k};
  m->funcs.push_back(f);
  *out = reinterpret_cast<CUfunction>(f);
  return ok();
}
CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction) {
  *v = a == CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK ? 1024 : 0;
  return ok();
}
CUresult cuFuncSetAttribute(CUfunction, CUfunction_attribute, int) { return ok(); }
CUresult cuFuncSetCacheConfig(CUfunction, CUfunc_cache) { return ok(); }

// Kernel launches issued by the host so far (a test and `hrm bench` read it to count the
// launches of a training step; a GPU gives the same count, as the same code issues them).
static unsigned long long g_launches = 0;
unsigned long long hrm_emu_launch_count() { return g_launches; }

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem,
                        CUstream, void** params, void** extra) {
  ++g_launches;
  if (extra != nullptr) {
    fprintf(stderr, "hrm-emu: cuLaunchKernel with `extra` is not emulated\n");
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  auto* fn = reinterpret_cast<Func*>(f);
  emu::LaunchDims d{{gx, gy, gz}, {bx, by, bz}, smem};
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
    default: *s = "CUDA_ERROR (emulation)"; break;
  }
  return ok();
}
CUresult cuGetErrorString(CUresult e, const char** s) {
  static thread_local std::string msg;
  const char* name;
  cuGetErrorName(e, &name);
  msg = name;
  if ((e == CUDA_ERROR_ILLEGAL_ADDRESS || e == CUDA_ERROR_LAUNCH_FAILED) &&
      !emu::last_error().empty()) {
    msg += ": " + emu::last_error();
  }
  *s = msg.c_str();
  return ok();
}

}  // extern "C"
