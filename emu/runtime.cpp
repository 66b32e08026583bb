// CPU emulation runtime: CUDA threads as fibers, blocks run one after another, checked device
// memory, and the kernel registry. See emu/cuda_emu.h for the kernel-side view.
//
// Scheduling: the blocks of a grid run one after another in a (seeded, per-launch) shuffled
// order; the fibers of a block are resumed in a shuffled order (drawn again at every sweep once a
// barrier has opened); each
// runs until it arrives at __syncthreads, __syncwarp or a shuffle, or returns. A barrier opens
// when every live thread of the block (warp) has arrived. A sweep over all fibers in which none
// arrives anywhere new is a deadlock (threads wait at a barrier others never reach) and fails
// the launch. Work between two barriers runs thread after thread, so a missing barrier lets one
// thread read shared data the others have not written yet: the result is wrong on every run.
#include "runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

thread_local const ThreadIdx* t_idx = nullptr;

// ---------------------------------------------------------------------------------------------
// Kernel registry
static std::unordered_map<std::string, const KernelEntry*>& registry() {
  static std::unordered_map<std::string, const KernelEntry*> r;
  return r;
}
void register_kernel(const KernelEntry* e) { registry()[e->name] = e; }
const KernelEntry* find_kernel(const char* name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------------------------
// Checked device memory
namespace {
constexpr size_t kPage = 4096;
// Red-zone bytes repeat 0xA5 0x7F (little endian 0x7FA5 at even addresses): read as f32 or bf16
// that is a signaling NaN, so a stray read poisons results; arithmetic on it yields a quiet NaN
// with a different bit pattern, so even NaN written back out of bounds is seen as damage.
inline unsigned char red_zone_byte(const char* p) {
  return (reinterpret_cast<uintptr_t>(p) & 1) ? 0x7F : 0xA5;
}
void fill_red_zone(char* from, char* to) {
  for (char* p = from; p < to; ++p) *p = static_cast<char>(red_zone_byte(p));
}
constexpr size_t kFrontZone = 256;
struct Alloc {
  char* map;       // whole mapping: [no-access page][front zone | data | tail zone][no-access page]
  size_t map_len;
  char* user;
  size_t size;
  char* zone_begin;  // first red-zone byte before user
  char* zone_end;    // one past the last accessible byte after user
  uint64_t id;       // unique per allocation, also when a pool hands the same address out again
};
std::mutex g_mem_mu;
std::map<uint64_t, Alloc> g_allocs;  // by user address
size_t g_live_bytes = 0;             // sum of the live allocations' sizes
uint64_t g_next_id = 1;
// Stream-ordered allocator (memory pools): freed blocks by (stream, size), handed out again at
// the SAME address to the next allocation of that size on that stream, as a real pool does
// between synchronisations.
std::map<std::pair<uint64_t, size_t>, std::vector<Alloc>> g_pool;

const Alloc* find_alloc_locked(uint64_t p) {
  auto it = g_allocs.upper_bound(p);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  const Alloc& a = it->second;
  uint64_t u = reinterpret_cast<uint64_t>(a.user);
  // size 0 allocations still own their first byte address
  if (p >= u && p < u + std::max<size_t>(a.size, 1)) return &a;
  return nullptr;
}
}  // namespace

size_t mem_capacity() {
  // 16 GiB, or HRM_EMU_DEVICE_MEM_MB: a small device makes the out-of-memory paths testable
  static const size_t cap = [] {
    const char* v = std::getenv("HRM_EMU_DEVICE_MEM_MB");
    char* end = nullptr;
    unsigned long long mb = v ? std::strtoull(v, &end, 10) : 0;
    if (v && (end == v || *end != '\0' || mb == 0)) {
      fprintf(stderr, "hrm-emu: HRM_EMU_DEVICE_MEM_MB='%s' is not a positive number of MiB\n", v);
      std::abort();
    }
    return v ? size_t(mb) << 20 : size_t(16) << 30;
  }();
  return cap;
}

size_t mem_live_bytes() {
  std::lock_guard<std::mutex> g(g_mem_mu);
  return g_live_bytes;
}

static bool guards_ok_locked(const Alloc& a, std::string* msg);

uint64_t mem_alloc(size_t bytes) {
  if (bytes == 0) return 0;  // as the driver: CUDA_ERROR_INVALID_VALUE
  {
    // the device's capacity counts what was asked for (red zones are the emulation's own)
    std::lock_guard<std::mutex> g(g_mem_mu);
    if (bytes > mem_capacity() - g_live_bytes) return 0;
    g_live_bytes += bytes;
  }
  auto give_back = [&] {
    std::lock_guard<std::mutex> g(g_mem_mu);
    g_live_bytes -= bytes;
  };
  // 256-byte aligned start, as the driver's allocations; at least 16 checked bytes after the
  // end (an off-by-one write is reported, not a fault)
  size_t padded = (bytes + 15) / 16 * 16 + 16;
  size_t data = (padded + 256 + kFrontZone + kPage - 1) / kPage * kPage;
  size_t len = data + 2 * kPage;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    give_back();
    return 0;
  }
  char* map = static_cast<char*>(m);
  mprotect(map, kPage, PROT_NONE);
  mprotect(map + kPage + data, kPage, PROT_NONE);
  Alloc a;
  a.map = map;
  a.map_len = len;
  a.zone_end = map + kPage + data;
  a.user = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(a.zone_end - padded) & ~uintptr_t(255));
  a.size = bytes;
  a.zone_begin = map + kPage;
  fill_red_zone(a.zone_begin, a.user);
  std::memset(a.user, 0xFF, bytes);  // fresh memory reads as quiet NaN (f32, bf16, f64)
  fill_red_zone(a.user + bytes, a.zone_end);
  std::lock_guard<std::mutex> g(g_mem_mu);
  a.id = g_next_id++;
  g_allocs[reinterpret_cast<uint64_t>(a.user)] = a;
  return reinterpret_cast<uint64_t>(a.user);
}

uint64_t mem_pool_alloc(size_t bytes, uint64_t stream) {
  if (bytes == 0) return 0;
  {
    std::lock_guard<std::mutex> g(g_mem_mu);
    auto it = g_pool.find({stream, bytes});
    if (it != g_pool.end() && !it->second.empty() && bytes <= mem_capacity() - g_live_bytes) {
      Alloc a = it->second.back();
      it->second.pop_back();
      a.id = g_next_id++;
      std::memset(a.user, 0xFF, bytes);  // stricter than a GPU: old contents read as NaN
      g_live_bytes += bytes;
      g_allocs[reinterpret_cast<uint64_t>(a.user)] = a;
      return reinterpret_cast<uint64_t>(a.user);
    }
  }
  return mem_alloc(bytes);
}

bool mem_pool_free(uint64_t ptr, uint64_t stream) {
  std::lock_guard<std::mutex> g(g_mem_mu);
  auto it = g_allocs.find(ptr);
  if (it == g_allocs.end()) return false;
  Alloc a = it->second;
  g_allocs.erase(it);
  g_live_bytes -= a.size;
  std::memset(a.user, 0xFF, a.size);  // a stale read of freed memory sees NaN until reused
  g_pool[{stream, a.size}].push_back(a);
  return true;
}

void mem_pool_trim(uint64_t stream, bool all) {
  std::vector<std::vector<Alloc>> pool;
  {
    std::lock_guard<std::mutex> g(g_mem_mu);
    for (auto it = g_pool.begin(); it != g_pool.end();) {
      if (all || it->first.first == stream) {
        pool.push_back(std::move(it->second));
        it = g_pool.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& blocks : pool) {
    for (Alloc& a : blocks) {
      std::string msg;
      if (!guards_ok_locked(a, &msg)) fprintf(stderr, "hrm-emu: at free: %s", msg.c_str());
      munmap(a.map, a.map_len);
    }
  }
}

uint64_t mem_alloc_id(uint64_t ptr) {
  std::lock_guard<std::mutex> g(g_mem_mu);
  const Alloc* a = find_alloc_locked(ptr);
  return a ? a->id : 0;
}

static bool guards_ok_locked(const Alloc& a, std::string* msg) {
  auto bad = [&](const char* from, const char* to, const char* where) {
    for (const char* p = from; p < to; ++p) {
      if (static_cast<unsigned char>(*p) != red_zone_byte(p)) {
        if (msg) {
          char buf[256];
          long off = where[0] == 'a' ? static_cast<long>(p - (a.user + a.size))
                                     : static_cast<long>(a.user - p);
          snprintf(buf, sizeof buf,
                   "out-of-bounds write %s device allocation 0x%llx (%zu bytes): red-zone byte %ld %s "
                   "changed\n",
                   where, static_cast<unsigned long long>(reinterpret_cast<uint64_t>(a.user)),
                   a.size, off, where[0] == 'a' ? "past the end" : "before the start");
          *msg += buf;
        }
        return true;
      }
    }
    return false;
  };
  bool damaged = bad(a.zone_begin, a.user, "before");
  damaged |= bad(a.user + a.size, a.zone_end, "after");
  return !damaged;
}

bool mem_free(uint64_t ptr) {
  Alloc a;
  {
    std::lock_guard<std::mutex> g(g_mem_mu);
    auto it = g_allocs.find(ptr);
    if (it == g_allocs.end()) return false;
    a = it->second;
    g_allocs.erase(it);
    g_live_bytes -= a.size;
  }
  std::string msg;
  if (!guards_ok_locked(a, &msg)) fprintf(stderr, "hrm-emu: at free: %s", msg.c_str());
  munmap(a.map, a.map_len);
  return true;
}

bool mem_range_ok(uint64_t ptr, size_t bytes) {
  std::lock_guard<std::mutex> g(g_mem_mu);
  const Alloc* a = find_alloc_locked(ptr);
  if (!a) return false;
  return ptr + bytes <= reinterpret_cast<uint64_t>(a->user) + a->size;
}

bool mem_guards_ok(uint64_t ptr, std::string* msg) {
  std::lock_guard<std::mutex> g(g_mem_mu);
  const Alloc* a = find_alloc_locked(ptr);
  if (!a) return true;
  return guards_ok_locked(*a, msg);
}

size_t mem_live_allocations() {
  std::lock_guard<std::mutex> g(g_mem_mu);
  return g_allocs.size();
}

// ---------------------------------------------------------------------------------------------
// Shared memory poisoning
//
// Static `__shared__` variables of the host-compiled kernels live in the section
// `hrm_emu_smem` (see cuda_emu.h); dynamic shared memory is a per-launch buffer. Both are
// filled with the red-zone pattern (a signaling NaN as f32 and bf16) before EVERY block, so a
// block that reads shared memory it did not write itself (in this block) gets NaN instead of a
// value an earlier block left behind. The section is one copy per process, so launches are
// serialised by g_launch_mu (GEMMs and copies still run concurrently).
extern "C" {
extern char __start_hrm_emu_smem[] __attribute__((weak, visibility("hidden")));
extern char __stop_hrm_emu_smem[] __attribute__((weak, visibility("hidden")));
}
namespace {
std::mutex g_launch_mu;
void poison(char* from, char* to) {
  // same pattern as the red zones: 0xA5 at even, 0x7F at odd addresses
  if (from >= to) return;
  uintptr_t a = reinterpret_cast<uintptr_t>(from);
  if (a & 1) *from++ = static_cast<char>(0x7F);
  size_t n = static_cast<size_t>(to - from);
  uint64_t pat = 0x7FA57FA57FA57FA5ull;
  size_t words = n / 8;
  for (size_t i = 0; i < words; ++i) std::memcpy(from + 8 * i, &pat, 8);
  for (size_t i = words * 8; i < n; ++i) from[i] = static_cast<char>((i & 1) ? 0x7F : 0xA5);
}
}  // namespace

size_t static_smem_bytes() {
  if (!__start_hrm_emu_smem || !__stop_hrm_emu_smem) return 0;
  return static_cast<size_t>(__stop_hrm_emu_smem - __start_hrm_emu_smem);
}

// ---------------------------------------------------------------------------------------------
// Fibers
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* to_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#endif

namespace {
constexpr size_t kStack = 64 * 1024;
constexpr int kMaxThreads = 1024;

struct Fiber {
#if defined(__x86_64__)
  void* sp;
#else
  ucontext_t uc;
#endif
  ThreadIdx idx;
  int lane, warp;
  bool done;
};

struct Warp {
  unsigned live_mask;
  int live;
  int count;
  unsigned gen;
  void* site;
  uint64_t slot[32];
};

struct Sched {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  char* stacks = nullptr;
  Fiber* cur = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> order;
  int live = 0;
  int bar_count = 0;
  void* bar_site = nullptr;  // call site of the first arrival in the current barrier round
  unsigned bar_gen = 0;
  bool progress = false;
  const KernelEntry* kernel = nullptr;
  const void* args = nullptr;
  void* dyn_smem = nullptr;
  size_t dyn_smem_bytes = 0;
  std::string error;
  uint64_t launches = 0;
  uint64_t block_serial = 0;
};
thread_local Sched t_s;
thread_local std::string t_last_error;

void fail(const std::string& what) {
  if (t_s.error.empty()) t_s.error = what;
}

inline void yield_to_scheduler() {
#if defined(__x86_64__)
  emu_switch(&t_s.cur->sp, t_s.sp);
#else
  swapcontext(&t_s.cur->uc, &t_s.uc);
#endif
}

void thread_exit() {
  Fiber* f = t_s.cur;
  f->done = true;
  t_s.live--;
  Warp& w = t_s.warps[f->warp];
  w.live--;
  w.live_mask &= ~(1u << f->lane);
  t_s.progress = true;
  if (t_s.bar_count > 0 && t_s.bar_count == t_s.live) {
    t_s.bar_count = 0;
    t_s.bar_gen++;
  }
  if (w.count > 0 && w.count == w.live) {
    w.count = 0;
    w.gen++;
  }
  for (;;) yield_to_scheduler();  // never resumed: the scheduler skips finished fibers
}

void fiber_main() {
  t_s.kernel->call(t_s.args);
  thread_exit();
}

char* stack_of(int i) { return t_s.stacks + static_cast<size_t>(i) * (kStack + kPage); }

void ensure_stacks() {
  if (t_s.stacks) return;
  size_t len = static_cast<size_t>(kMaxThreads) * (kStack + kPage);
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) {
    fprintf(stderr, "hrm-emu: cannot map fiber stacks\n");
    abort();
  }
  t_s.stacks = static_cast<char*>(m);
  for (int i = 0; i < kMaxThreads; ++i) mprotect(stack_of(i), kPage, PROT_NONE);  // overflow
}

void init_fiber(Fiber& f, int i) {
  char* lo = stack_of(i) + kPage;
  char* top = lo + kStack;  // 16-aligned
#if defined(__x86_64__)
  void** sp = reinterpret_cast<void**>(top - 64);
  for (int r = 0; r < 6; ++r) sp[r] = nullptr;  // r15 r14 r13 r12 rbx rbp
  sp[6] = reinterpret_cast<void*>(&fiber_main);
  sp[7] = nullptr;
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = lo;
  f.uc.uc_stack.ss_size = kStack;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, &fiber_main, 0);
#endif
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int order_mode() {
  static int mode = [] {
    const char* e = getenv("HRM_EMU_ORDER");
    if (!e || !strcmp(e, "shuffle")) return 0;
    if (!strcmp(e, "forward")) return 1;
    if (!strcmp(e, "reverse")) return 2;
    return 0;
  }();
  return mode;
}

// Runs one block to completion. False on a detected error (t_s.error says which).
bool run_block(const LaunchDims& d, U3 bidx, uint64_t seed) {
  int nt = static_cast<int>(d.block.x * d.block.y * d.block.z);
  int nw = (nt + 31) / 32;
  t_s.fibers.resize(nt);
  t_s.warps.assign(nw, Warp{});
  for (int w = 0; w < nw; ++w) {
    int lanes = std::min(32, nt - 32 * w);
    t_s.warps[w].live = lanes;
    t_s.warps[w].live_mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
  }
  for (int i = 0; i < nt; ++i) {
    Fiber& f = t_s.fibers[i];
    f.idx.thread_idx = U3{static_cast<unsigned>(i) % d.block.x,
                          (static_cast<unsigned>(i) / d.block.x) % d.block.y,
                          static_cast<unsigned>(i) / (d.block.x * d.block.y)};
    f.idx.block_idx = bidx;
    f.idx.block_dim = d.block;
    f.idx.grid_dim = d.grid;
    f.lane = i % 32;
    f.warp = i / 32;
    f.done = false;
    init_fiber(f, i);
  }
  t_s.order.resize(nt);
  for (int i = 0; i < nt; ++i) t_s.order[i] = i;
  int mode = order_mode();
  if (mode == 2) std::reverse(t_s.order.begin(), t_s.order.end());
  if (mode == 0) {
    for (int i = nt - 1; i > 0; --i) {
      int j = static_cast<int>(splitmix(seed) % static_cast<uint64_t>(i + 1));
      std::swap(t_s.order[i], t_s.order[j]);
    }
  }
  if (__start_hrm_emu_smem && __stop_hrm_emu_smem) poison(__start_hrm_emu_smem, __stop_hrm_emu_smem);
  if (d.dyn_smem_bytes) {
    char* dyn = static_cast<char*>(t_s.dyn_smem);
    poison(dyn, dyn + d.dyn_smem_bytes);
  }
  t_s.live = nt;
  t_s.bar_count = 0;
  t_s.bar_gen = 0;
  t_s.block_serial++;
  while (t_s.live > 0) {
    t_s.progress = false;
    if (mode == 0 && t_s.bar_gen != 0) {
      // after a barrier opened, a new interleaving: warps do not keep their order across barriers
      for (int i = nt - 1; i > 0; --i) {
        int j = static_cast<int>(splitmix(seed) % static_cast<uint64_t>(i + 1));
        std::swap(t_s.order[i], t_s.order[j]);
      }
    }
    for (int i : t_s.order) {
      Fiber& f = t_s.fibers[i];
      if (f.done) continue;
      t_s.cur = &f;
      t_idx = &f.idx;
#if defined(__x86_64__)
      emu_switch(&t_s.sp, f.sp);
#else
      swapcontext(&t_s.uc, &f.uc);
#endif
      if (!t_s.error.empty()) return false;
    }
    if (!t_s.progress && t_s.live > 0) {
      fail("deadlock: some threads wait at __syncthreads/__syncwarp/a shuffle that other live "
           "threads of their block/warp never reach");
      return false;
    }
  }
  t_s.cur = nullptr;
  t_idx = nullptr;
  return true;
}

// SIGSEGV inside a kernel: name the kernel, block and thread, then die with the signal.
struct sigaction g_old_segv, g_old_bus;
void on_fault(int sig, siginfo_t* info, void* uctx) {
  if (t_s.kernel && t_idx) {
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "hrm-emu: invalid memory access at %p in kernel %s, block (%u,%u,%u), "
                     "thread (%u,%u,%u): out of bounds of a device allocation?\n",
                     info->si_addr, t_s.kernel->name, t_idx->block_idx.x, t_idx->block_idx.y,
                     t_idx->block_idx.z, t_idx->thread_idx.x, t_idx->thread_idx.y,
                     t_idx->thread_idx.z);
    if (n > 0) {
      ssize_t ignored = write(2, buf, static_cast<size_t>(std::min<int>(n, sizeof buf - 1)));
      (void)ignored;
    }
    signal(sig, SIG_DFL);
    return;  // the access faults again, now with the default action
  }
  struct sigaction* old = sig == SIGSEGV ? &g_old_segv : &g_old_bus;
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction) {
      old->sa_sigaction(sig, info, uctx);
      return;
    }
  } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
    old->sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);
}
}  // namespace

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
  });
}

// ---------------------------------------------------------------------------------------------
// Kernel-side primitives
void* dyn_smem() { return t_s.dyn_smem; }

void report_error(const char* what) { fail(what); }

bool race_view(RaceView* v) {
  const Fiber* f = t_s.cur;
  if (!f || !t_s.kernel) return false;
  v->tid = f->warp * 32 + f->lane;
  v->warp = f->warp;
  v->block_gen = t_s.bar_gen;
  v->warp_gen = t_s.warps[f->warp].gen;
  v->block_serial = t_s.block_serial;
  v->static_begin = __start_hrm_emu_smem;
  v->static_end = __stop_hrm_emu_smem;
  v->dyn_begin = static_cast<const char*>(t_s.dyn_smem);
  v->dyn_end = v->dyn_begin ? v->dyn_begin + t_s.dyn_smem_bytes : nullptr;
  return true;
}

void current_thread(U3* block, U3* thread) {
  *block = t_s.cur ? t_s.cur->idx.block_idx : U3{0, 0, 0};
  *thread = t_s.cur ? t_s.cur->idx.thread_idx : U3{0, 0, 0};
}

// [p, p + n) lies in the block's shared memory (static __shared__ or the launch's dynamic part).
bool is_shared(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  if (__start_hrm_emu_smem && c >= __start_hrm_emu_smem && c + n <= __stop_hrm_emu_smem) return true;
  const char* dyn = static_cast<const char*>(t_s.dyn_smem);
  return dyn && c >= dyn && c + n <= dyn + t_s.dyn_smem_bytes;
}

// Call sites are compared with __builtin_return_address: the kernel-side wrappers are inlined,
// so the address identifies the __syncthreads (or shuffle) in the kernel. Threads of a block
// arriving at different barriers in one round is undefined behaviour in CUDA (divergent
// __syncthreads) and fails the launch here. Threads that have returned count as arrived, as on
// Volta and later GPUs.
void syncthreads() {
  void* site = __builtin_return_address(0);
  t_s.progress = true;
  if (t_s.bar_count == 0) {
    t_s.bar_site = site;
  } else if (site != t_s.bar_site) {
    fail("divergent __syncthreads: threads of one block wait at different barriers");
    yield_to_scheduler();
  }
  unsigned g = t_s.bar_gen;
  if (++t_s.bar_count == t_s.live) {
    t_s.bar_count = 0;
    t_s.bar_gen++;
    return;
  }
  while (t_s.bar_gen == g) yield_to_scheduler();
  t_s.progress = true;
}

static void warp_barrier(Warp& w, void* site) {
  t_s.progress = true;
  if (w.count == 0) {
    w.site = site;
  } else if (site != w.site) {
    fail("divergent warp operation: lanes of one warp are at different shuffles/__syncwarp");
    yield_to_scheduler();
  }
  unsigned g = w.gen;
  if (++w.count == w.live) {
    w.count = 0;
    w.gen++;
    return;
  }
  while (w.gen == g) yield_to_scheduler();
  t_s.progress = true;
}

void syncwarp(unsigned mask) {
  Warp& w = t_s.warps[t_s.cur->warp];
  if ((mask & w.live_mask) != w.live_mask) {
    fail("__syncwarp with a mask that leaves out live lanes (only full-warp syncs are emulated)");
    yield_to_scheduler();
  }
  warp_barrier(w, __builtin_return_address(0));
}

uint64_t shfl_bits(unsigned mask, uint64_t bits, int arg, int mode, int width) {
  Fiber* f = t_s.cur;
  Warp& w = t_s.warps[f->warp];
  if ((mask & w.live_mask) != w.live_mask) {
    fail("shuffle with a mask that leaves out live lanes (only full-warp shuffles are emulated)");
    yield_to_scheduler();
  }
  if (width <= 0 || width > 32 || (width & (width - 1))) {
    fail("shuffle width must be a power of two <= 32");
    yield_to_scheduler();
  }
  void* site = __builtin_return_address(0);
  int lane = f->lane;
  w.slot[lane] = bits;
  warp_barrier(w, site);
  int seg = lane & ~(width - 1);
  int src;
  switch (mode) {
    case SHFL_IDX: src = seg + (arg & (width - 1)); break;
    case SHFL_XOR: src = lane ^ arg; break;
    case SHFL_DOWN: src = lane + arg; break;
    default: src = lane - arg; break;
  }
  uint64_t r;
  if (src < seg || src >= seg + width) {
    r = bits;  // out of the lane's segment: CUDA returns the caller's own value
  } else if (!(w.live_mask & (1u << src)) && !(src == lane)) {
    r = ~0ull;  // source lane does not exist or has exited: undefined on the GPU, NaN here
  } else {
    r = w.slot[src];
  }
  warp_barrier(w, reinterpret_cast<char*>(site) + 1);  // second phase: its own site
  return r;
}

// ---------------------------------------------------------------------------------------------
// Launch
const std::string& last_error() { return t_last_error; }

int set_error(int code, const std::string& what) {
  t_last_error = what;
  fprintf(stderr, "hrm-emu: %s\n", what.c_str());
  return code;
}
void clear_error() { t_last_error.clear(); }

int check_launch_dims(const KernelEntry* k, const LaunchDims& d) {
  constexpr int CUDA_ERROR_INVALID_VALUE = 1;
  uint64_t nt = uint64_t(d.block.x) * d.block.y * d.block.z;
  if (nt == 0 || nt > kMaxThreads || d.grid.x == 0 || d.grid.y == 0 || d.grid.z == 0 ||
      d.grid.y > 65535 || d.grid.z > 65535 || d.block.z > 64 || d.dyn_smem_bytes > 227 * 1024) {
    return set_error(CUDA_ERROR_INVALID_VALUE,
                     std::string("invalid launch configuration for ") + k->name);
  }
  return 0;
}

int launch(const KernelEntry* k, const LaunchDims& d, void** params) {
  t_last_error.clear();
  if (int rc = check_launch_dims(k, d)) return rc;
  void* packed = k->pack(params);
  int rc = launch_packed(k, d, packed);
  k->unpack_free(packed);
  return rc;
}

int launch_packed(const KernelEntry* k, const LaunchDims& d, const void* packed) {
  constexpr int CUDA_ERROR_ILLEGAL_ADDRESS = 700;
  constexpr int CUDA_ERROR_LAUNCH_FAILED = 719;
  t_last_error.clear();
  if (int rc = check_launch_dims(k, d)) return rc;
  install_fault_handler();
  ensure_stacks();
  uint64_t ptrs[64];
  int nptr = 0;
  k->pointer_args(packed, ptrs, &nptr);
  for (int i = 0; i < nptr; ++i) {
    if (ptrs[i] != 0 && !mem_range_ok(ptrs[i], 1)) {
      char buf[256];
      snprintf(buf, sizeof buf, "kernel %s: pointer argument %d (0x%llx) is not in a live device "
               "allocation", k->name, i, static_cast<unsigned long long>(ptrs[i]));
      return set_error(CUDA_ERROR_ILLEGAL_ADDRESS, buf);
    }
  }
  std::lock_guard<std::mutex> serial(g_launch_mu);
  std::vector<uint64_t> smem((d.dyn_smem_bytes + 7) / 8 + 1, ~0ull);  // poisoned per block
  t_s.kernel = k;
  t_s.args = packed;
  t_s.dyn_smem = smem.data();
  t_s.dyn_smem_bytes = d.dyn_smem_bytes;
  t_s.error.clear();
  uint64_t seed = 0x1234567ull ^ (t_s.launches++ * 0x9e3779b97f4a7c15ull);
  for (const char* c = k->name; *c; ++c) seed = seed * 131 + static_cast<unsigned char>(*c);
  // Blocks run one after another in a shuffled order that changes with every launch (a GPU
  // promises no order), so a result that depends on the order of blocks (float atomics from
  // several blocks, a "last writer wins" store) differs between two launches.
  const uint64_t nblocks = uint64_t(d.grid.x) * d.grid.y * d.grid.z;
  std::vector<uint64_t> blocks(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) blocks[i] = i;
  const int mode = order_mode();
  if (mode == 2) std::reverse(blocks.begin(), blocks.end());
  if (mode == 0) {
    for (uint64_t i = nblocks; i > 1; --i) std::swap(blocks[i - 1], blocks[splitmix(seed) % i]);
  }
  bool ok = true;
  for (uint64_t i = 0; ok && i < nblocks; ++i) {
    const uint64_t b = blocks[i];
    const unsigned x = unsigned(b % d.grid.x), y = unsigned(b / d.grid.x % d.grid.y),
                   z = unsigned(b / (uint64_t(d.grid.x) * d.grid.y));
    if (!run_block(d, U3{x, y, z}, splitmix(seed))) {
      char buf[160];
      snprintf(buf, sizeof buf, " (kernel %s, block (%u,%u,%u))", k->name, x, y, z);
      t_last_error = t_s.error + buf;
      ok = false;
    }
  }
  t_s.kernel = nullptr;
  t_s.args = nullptr;
  t_s.dyn_smem = nullptr;
  t_idx = nullptr;
  int rc = ok ? 0 : CUDA_ERROR_LAUNCH_FAILED;
  std::string msg;
  for (int i = 0; i < nptr; ++i) {
    if (ptrs[i] != 0 && !mem_guards_ok(ptrs[i], &msg)) rc = CUDA_ERROR_ILLEGAL_ADDRESS;
  }
  if (!msg.empty()) t_last_error += std::string("kernel ") + k->name + ": " + msg;
  if (rc != 0) fprintf(stderr, "hrm-emu: %s\n", t_last_error.c_str());
  return rc;
}

}  // namespace emu

// =============================================================================================
// Tensor-core warp collectives: mma.sync.m16n8k16 (bf16 in, f32 accumulate) and ldmatrix.m8n8
// (.b16, x1/x2/x4, optional .trans), with the fragment layouts of the PTX ISA ("Matrix Fragments
// for mma.m16n8k16 with floating point type", "Warp-level matrix load instruction: ldmatrix").
// Both are warp-collective: all 32 lanes must be live and at the same call site (a lane that has
// exited, a partial warp or lanes at different instructions fail the launch). Each lane deposits
// its operands, the warp meets at a barrier, every lane computes its own result from all 32
// deposits (ldmatrix reads shared memory here, at one point of the warp's program order), and
// the warp meets again before any lane goes on.
// Defined by emu/racecheck.cpp in the race-checking build only.
extern "C" void hrm_emu_race_read(const void* addr, size_t n) __attribute__((weak));

namespace emu {
namespace {
constexpr int kXBytes = 64;
thread_local unsigned char t_xbuf[32][32][kXBytes];  // [warp][lane][deposit]
thread_local int t_fault_mode = 0;                   // planted layout bug (test-only)
thread_local uint64_t t_fault_launch = ~0ull;        // ... valid for this launch only

Warp& full_warp(const char* what) {
  Warp& w = t_s.warps[t_s.cur->warp];
  if (w.live != 32 || w.live_mask != 0xffffffffu) {
    fail(std::string(what) +
         ": warp-collective instruction without all 32 lanes (a lane has exited or the warp "
         "is partial)");
    yield_to_scheduler();
  }
  return w;
}

int fault_mode() { return t_fault_launch == t_s.launches ? t_fault_mode : 0; }

float bf16_bits_to_f32(uint32_t h) {
  uint32_t u = (h & 0xffffu) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

void plant_tensor_core_fault(int mode) {
  t_fault_mode = mode;
  t_fault_launch = t_s.launches;
}

void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  char* site = static_cast<char*>(__builtin_return_address(0));
  Warp& w = full_warp("mma.sync.m16n8k16");
  const int lane = t_s.cur->lane, wi = t_s.cur->warp;
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  std::memcpy(t_xbuf[wi][lane], mine, sizeof mine);
  warp_barrier(w, site);
  const int fault = fault_mode();
  // Lane holding an element; mode 1 plants a layout bug: lanes 0 and 5 of A swapped.
  auto a_lane = [&](int l) { return fault == 1 && (l == 0 || l == 5) ? 5 - l : l; };
  auto reg = [&](int l, int r) {
    uint32_t v;
    std::memcpy(&v, t_xbuf[wi][l] + 4 * r, 4);
    return v;
  };
  // A (16 x 16, row): a_i of lane (g, t) is row g + 8 [i = 2,3,6,7], column 2t + (i & 1) + 8
  // [i >= 4]; register i / 2 holds a_{2r} (low half) and a_{2r+1} (high half).
  auto A = [&](int row, int col) {
    const int l = a_lane((row & 7) * 4 + ((col & 7) >> 1));
    const int r = 2 * (col >> 3) + (row >> 3);
    return bf16_bits_to_f32(reg(l, r) >> (16 * (col & 1)));
  };
  // B (16 x 8, col): b_i of lane (g, t) is row 2t + (i & 1) + 8 [i >= 2], column g.
  auto B = [&](int k, int n) {
    const int l = n * 4 + ((k & 7) >> 1);
    return bf16_bits_to_f32(reg(l, 4 + (k >> 3)) >> (16 * (k & 1)));
  };
  // C/D (16 x 8): c_i of lane (g, t) is row g + 8 [i >= 2], column 2t + (i & 1).
  const int g = lane >> 2, t = lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[i] = acc;
  }
  warp_barrier(w, site + 1);  // second phase: no lane overwrites its deposit before all read
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

void ldmatrix_m8n8_b16(uint32_t* r, int num, int trans, const void* addr) {
  char* site = static_cast<char*>(__builtin_return_address(0));
  Warp& w = full_warp("ldmatrix.m8n8");
  const int lane = t_s.cur->lane, wi = t_s.cur->warp;
  if (num != 1 && num != 2 && num != 4) {
    fail("ldmatrix: .num must be x1, x2 or x4");
    yield_to_scheduler();
  }
  if (lane < 8 * num && (reinterpret_cast<uintptr_t>(addr) & 15) != 0) {
    fail("ldmatrix: row address not 16-byte aligned");
    yield_to_scheduler();
  }
  if (lane < 8 * num && !is_shared(addr, 16)) {
    char buf[200];
    snprintf(buf, sizeof buf,
             "ldmatrix: row address %p of lane %d is not in shared memory (.shared state space; "
             "static [%p, %p), dynamic %zu bytes at %p)",
             addr, lane, static_cast<void*>(__start_hrm_emu_smem),
             static_cast<void*>(__stop_hrm_emu_smem), t_s.dyn_smem_bytes, t_s.dyn_smem);
    fail(buf);
    yield_to_scheduler();
  }
  // the race-checking build sees the row this lane addresses as its read
  if (lane < 8 * num && hrm_emu_race_read) hrm_emu_race_read(addr, 16);
  std::memcpy(t_xbuf[wi][lane], &addr, sizeof addr);
  warp_barrier(w, site);
  auto row_ptr = [&](int l) {
    const uint16_t* p;
    std::memcpy(&p, t_xbuf[wi][l], sizeof p);
    return p;
  };
  // Matrix m's row j starts at the address of lane 8m + j. Without .trans lane (g, t) gets row g,
  // columns 2t and 2t + 1; with .trans it gets column g, rows 2t and 2t + 1 (low, high half).
  const int g = lane >> 2, t = lane & 3;
  uint32_t out[4] = {0, 0, 0, 0};
  for (int m = 0; m < num; ++m) {
    uint32_t lo, hi;
    if (!trans) {
      const uint16_t* p = row_ptr(8 * m + g);
      lo = p[2 * t];
      hi = p[2 * t + 1];
    } else {
      lo = row_ptr(8 * m + 2 * t)[g];
      hi = row_ptr(8 * m + 2 * t + 1)[g];
    }
    out[m] = lo | (hi << 16);
  }
  warp_barrier(w, site + 1);
  // Mode 2 plants a layout bug: the results of lanes 1 and 2 swapped.
  if (fault_mode() == 2 && (lane == 1 || lane == 2)) {
    std::memcpy(t_xbuf[wi][lane], out, sizeof out);
    warp_barrier(w, site + 2);
    std::memcpy(out, t_xbuf[wi][3 - lane], sizeof out);
    warp_barrier(w, site + 3);
  } else if (fault_mode() == 2) {
    warp_barrier(w, site + 2);
    warp_barrier(w, site + 3);
  }
  for (int m = 0; m < num; ++m) r[m] = out[m];
}
}  // namespace emu
