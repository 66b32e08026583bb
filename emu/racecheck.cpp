// Shared-memory race checker of the emulation (what compute-sanitizer's racecheck reports on a
// GPU), linked only into the race-checking build (OUT_DIR/emu-race/libcuda.so, chosen by
// HRM_EMU_RACECHECK=1). build.rs compiles the kernels of that build with GCC's
// -fsanitize=thread instrumentation, which calls __tsan_read4(addr), __tsan_write8(addr), ... on
// every memory access; this file provides those entry points itself (the ThreadSanitizer
// runtime is not linked) and checks the accesses that fall into the block's shared memory.
//
// The rule: two threads of a block touching the same shared byte, at least one of them writing,
// with no barrier between the two accesses, is a race. Threads of different warps are ordered
// only by __syncthreads; lanes of one warp also by the warp's own synchronisations (shuffles,
// __syncwarp, the tensor-core collectives), as with independent thread scheduling. Two atomic
// accesses never race with each other. Per shared byte the checker keeps the last writer and the
// two most recent readers with the barrier generations they saw; a race fails the launch,
// naming both threads.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime.h"

namespace {

struct Access {
  int32_t tid = -1;  // -1: none
  unsigned block_gen = 0, warp_gen = 0;
  bool atomic = false;
};
struct Cell {
  uint64_t serial = 0;  // block run the cell belongs to (older cells are empty)
  Access write, read[2];
};
thread_local std::vector<Cell> t_static, t_dyn;

// True when `prev` (another thread's access) is not ordered before the current access.
bool unordered(const emu::RaceView& v, const Access& prev) {
  if (prev.tid < 0 || prev.tid == v.tid) return false;
  if (prev.block_gen != v.block_gen) return false;  // a __syncthreads in between
  if (prev.tid / 32 != v.warp) return true;         // another warp: only __syncthreads orders
  return prev.warp_gen == v.warp_gen;               // same warp: no warp sync in between
}

void report(const emu::RaceView& v, const char* kind, const char* space, size_t offset,
            const Access& other) {
  emu::U3 block, thread;
  emu::current_thread(&block, &thread);
  char buf[320];
  snprintf(buf, sizeof buf,
           "shared-memory race (%s): thread %d (%u,%u,%u) and thread %d of block (%u,%u,%u) touch "
           "byte %zu of %s shared memory with no barrier between them",
           kind, v.tid, thread.x, thread.y, thread.z, other.tid, block.x, block.y, block.z, offset,
           space);
  emu::report_error(buf);
}

void access(const void* addr, size_t n, bool write, bool atomic) {
  emu::RaceView v;
  const char* p = static_cast<const char*>(addr);
  if (!emu::race_view(&v)) return;
  std::vector<Cell>* cells;
  const char* base;
  const char* space;
  if (v.static_begin && p >= v.static_begin && p < v.static_end) {
    cells = &t_static, base = v.static_begin, space = "static";
    if (t_static.size() < size_t(v.static_end - v.static_begin)) t_static.resize(v.static_end - v.static_begin);
  } else if (v.dyn_begin && p >= v.dyn_begin && p < v.dyn_end) {
    cells = &t_dyn, base = v.dyn_begin, space = "dynamic";
    if (t_dyn.size() < size_t(v.dyn_end - v.dyn_begin)) t_dyn.resize(v.dyn_end - v.dyn_begin);
  } else {
    return;  // global or local memory
  }
  const size_t end = std::min<size_t>(size_t(p - base) + n, cells->size());
  const Access me{v.tid, v.block_gen, v.warp_gen, atomic};
  for (size_t off = size_t(p - base); off < end; ++off) {
    Cell& c = (*cells)[off];
    if (c.serial != v.block_serial) c = Cell{v.block_serial, {}, {{}, {}}};
    auto clash = [&](const Access& a) { return unordered(v, a) && !(atomic && a.atomic); };
    if (clash(c.write)) {
      report(v, write ? "write after write" : "read after write", space, off, c.write);
      return;
    }
    if (write) {
      for (const Access& r : c.read) {
        if (clash(r)) {
          report(v, "write after read", space, off, r);
          return;
        }
      }
      c.write = me;
      c.read[0] = c.read[1] = Access{};
    } else if (c.read[0].tid != v.tid) {
      c.read[1] = c.read[0];
      c.read[0] = me;
    } else {
      c.read[0] = me;
    }
  }
}

template <typename T>
T atomic_rmw(volatile T* a, T v, int op) {
  T* p = const_cast<T*>(a);
  access(p, sizeof(T), true, true);
  switch (op) {
    case 0: return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
    case 1: return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    case 2: return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
    case 3: return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
    case 4: return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
    case 5: return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST);
    default: return __atomic_fetch_nand(p, v, __ATOMIC_SEQ_CST);
  }
}
template <typename T>
bool atomic_cas(volatile T* a, T* expected, T desired) {
  T* p = const_cast<T*>(a);
  access(p, sizeof(T), true, true);
  return __atomic_compare_exchange_n(p, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
}  // namespace

extern "C" {
#define HRM_TSAN_PLAIN(n)                                                                     \
  void __tsan_read##n(void* a) { access(a, n, false, false); }                                \
  void __tsan_write##n(void* a) { access(a, n, true, false); }                                \
  void __tsan_unaligned_read##n(void* a) { access(a, n, false, false); }                      \
  void __tsan_unaligned_write##n(void* a) { access(a, n, true, false); }                      \
  void __tsan_volatile_read##n(void* a) { access(a, n, false, false); }                       \
  void __tsan_volatile_write##n(void* a) { access(a, n, true, false); }
HRM_TSAN_PLAIN(1)
HRM_TSAN_PLAIN(2)
HRM_TSAN_PLAIN(4)
HRM_TSAN_PLAIN(8)
HRM_TSAN_PLAIN(16)
void __tsan_read_range(void* a, unsigned long n) { access(a, n, false, false); }
void __tsan_write_range(void* a, unsigned long n) { access(a, n, true, false); }
void __tsan_init() {}
void __tsan_vptr_update(void**, void*) {}  // the kernel registry's vtables: not shared memory
void __tsan_vptr_read(void**) {}
// ldmatrix's host version (emu/runtime.cpp, not instrumented) reports the rows it reads here.
void hrm_emu_race_read(const void* a, size_t n) { access(a, n, false, false); }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}

#define HRM_TSAN_ATOMIC(bits, T)                                                               \
  T __tsan_atomic##bits##_load(const volatile T* a, int) {                                    \
    access(const_cast<T*>(a), sizeof(T), false, true);                                        \
    return __atomic_load_n(const_cast<T*>(a), __ATOMIC_SEQ_CST);                              \
  }                                                                                           \
  void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                 \
    access(const_cast<T*>(a), sizeof(T), true, true);                                         \
    __atomic_store_n(const_cast<T*>(a), v, __ATOMIC_SEQ_CST);                                 \
  }                                                                                           \
  T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) { return atomic_rmw(a, v, 0); }  \
  T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) { return atomic_rmw(a, v, 1); } \
  T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) { return atomic_rmw(a, v, 2); } \
  T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) { return atomic_rmw(a, v, 3); } \
  T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) { return atomic_rmw(a, v, 4); }  \
  T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) { return atomic_rmw(a, v, 5); } \
  T __tsan_atomic##bits##_fetch_nand(volatile T* a, T v, int) { return atomic_rmw(a, v, 6); } \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {     \
    return atomic_cas(a, c, v);                                                               \
  }                                                                                           \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {       \
    return atomic_cas(a, c, v);                                                               \
  }                                                                                           \
  T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {           \
    atomic_cas(a, &c, v);                                                                     \
    return c;                                                                                 \
  }
HRM_TSAN_ATOMIC(8, uint8_t)
HRM_TSAN_ATOMIC(16, uint16_t)
HRM_TSAN_ATOMIC(32, uint32_t)
HRM_TSAN_ATOMIC(64, uint64_t)
}  // extern "C"
