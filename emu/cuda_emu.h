// Host compilation of kernels/*.cu for the CPU emulation (force-included by build.rs with
// `g++ -include emu/cuda_emu.h kernels/x.cu`; never seen by nvcc).
//
// It provides the subset of the CUDA device dialect the kernels use: threadIdx/blockIdx/
// blockDim/gridDim, __syncthreads, warp shuffles (__shfl_xor_sync, __shfl_down_sync,
// __shfl_sync), static __shared__ (one copy per process, re-poisoned before every block; launches
// are serialised), dynamic shared memory (HRM_DYN_SHARED), atomics, device math
// shims, and bf16 through the toolkit's own cuda_bf16.h (its host code paths).
//
// Each CUDA thread of a block is a fiber (emu/runtime.cpp). A fiber runs until it reaches a
// barrier or a shuffle, then the next fiber runs, so the threads of a block really interleave at
// barriers and a missing __syncthreads shows as wrong data. EMU_REGISTER(kernel) records a
// kernel under its extern "C" name so that the stand-in cuLaunchKernel can call it with the
// argument array cudarc passes.
#pragma once

#include <cuda_bf16.h>  // before the macros below: its host paths need the real qualifiers

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __shared__
#undef __launch_bounds__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
// Static shared memory: one copy per process in the section `hrm_emu_smem`, which the runtime
// re-poisons (signaling NaN) before every block and guards with its launch lock.
#define __shared__ static __attribute__((section("hrm_emu_smem"), aligned(16)))
#define __launch_bounds__(...)
#define __restrict__ __restrict

#define HRM_EMU 1

namespace emu {

struct U3 {
  unsigned x, y, z;
};

// State of the fiber (CUDA thread) currently running on this OS thread.
struct ThreadIdx {
  U3 thread_idx;
  U3 block_idx;
  U3 block_dim;
  U3 grid_dim;
};
extern thread_local const ThreadIdx* t_idx;
void* dyn_smem();

void syncthreads();
void syncwarp(unsigned mask);
uint64_t shfl_bits(unsigned mask, uint64_t bits, int src_lane_or_delta, int mode, int width);
void report_error(const char* what);

enum { SHFL_IDX = 0, SHFL_XOR = 1, SHFL_DOWN = 2, SHFL_UP = 3 };

template <typename T>
inline T shfl(unsigned mask, T v, int arg, int mode, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a large type");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  b = shfl_bits(mask, b, arg, mode, width);
  T r;
  std::memcpy(&r, &b, sizeof(T));
  return r;
}

// Kernel registry: one entry per extern "C" kernel, found by name from cuModuleGetFunction.
struct KernelEntry {
  const char* name;
  int n_args;
  // Copies the kernel's arguments out of cudarc's `void** params` (they may not outlive the
  // launch call) and records which ones are pointers (for the out-of-bounds check).
  virtual void* pack(void** params) const = 0;
  virtual void pointer_args(const void* packed, uint64_t* out, int* n_out) const = 0;
  virtual void call(const void* packed) const = 0;
  virtual void unpack_free(void* packed) const = 0;
  virtual ~KernelEntry() = default;
};
void register_kernel(const KernelEntry* entry);

template <typename... A>
struct KernelEntryT final : KernelEntry {
  using Tuple = std::tuple<std::decay_t<A>...>;
  void (*fn)(A...);
  KernelEntryT(const char* n, void (*f)(A...)) : fn(f) {
    name = n;
    n_args = sizeof...(A);
  }
  template <size_t... I>
  static Tuple* pack_impl(void** params, std::index_sequence<I...>) {
    return new Tuple(*static_cast<std::decay_t<A>*>(params[I])...);
  }
  void* pack(void** params) const override {
    return pack_impl(params, std::index_sequence_for<A...>{});
  }
  void pointer_args(const void* packed, uint64_t* out, int* n_out) const override {
    const Tuple& t = *static_cast<const Tuple*>(packed);
    int n = 0;
    std::apply(
        [&](const auto&... a) {
          (
              [&] {
                if constexpr (std::is_pointer_v<std::decay_t<decltype(a)>>) {
                  out[n++] = reinterpret_cast<uint64_t>(a);
                }
              }(),
              ...);
        },
        t);
    *n_out = n;
  }
  void call(const void* packed) const override {
    std::apply(fn, *static_cast<const Tuple*>(packed));
  }
  void unpack_free(void* packed) const override { delete static_cast<Tuple*>(packed); }
};

template <typename... A>
struct Registrar {
  Registrar(const char* name, void (*fn)(A...)) {
    register_kernel(new KernelEntryT<A...>(name, fn));
  }
};

}  // namespace emu

#define EMU_REGISTER(kernel) static ::emu::Registrar emu_registrar_##kernel(#kernel, &kernel);

#define threadIdx (::emu::t_idx->thread_idx)
#define blockIdx (::emu::t_idx->block_idx)
#define blockDim (::emu::t_idx->block_dim)
#define gridDim (::emu::t_idx->grid_dim)
#define warpSize 32

#define HRM_DYN_SHARED(T, name) T* name = reinterpret_cast<T*>(::emu::dyn_smem())

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return emu::shfl(mask, v, src, emu::SHFL_IDX, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::shfl(mask, v, lane_mask, emu::SHFL_XOR, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shfl(mask, v, static_cast<int>(delta), emu::SHFL_DOWN, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shfl(mask, v, static_cast<int>(delta), emu::SHFL_UP, width);
}

// Atomics. Fibers of one block never preempt each other, but launches from different host
// threads may run at the same time, so these are real atomic read-modify-writes.
inline float atomicAdd(float* p, float v) {
  float old;
  int expected = __atomic_load_n(reinterpret_cast<int*>(p), __ATOMIC_RELAXED);
  for (;;) {
    std::memcpy(&old, &expected, 4);
    float nv = old + v;
    int desired;
    std::memcpy(&desired, &nv, 4);
    if (__atomic_compare_exchange_n(reinterpret_cast<int*>(p), &expected, desired, false,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      return old;
    }
  }
}
inline double atomicAdd(double* p, double v) {
  long long expected = __atomic_load_n(reinterpret_cast<long long*>(p), __ATOMIC_RELAXED);
  for (;;) {
    double old;
    std::memcpy(&old, &expected, 8);
    double nv = old + v;
    long long desired;
    std::memcpy(&desired, &nv, 8);
    if (__atomic_compare_exchange_n(reinterpret_cast<long long*>(p), &expected, desired, false,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      return old;
    }
  }
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicMin(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline int atomicMax(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v &&
         !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

// Device math shims (host versions; the GPU's approximate intrinsics differ in the last bits).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float __int_as_float(int i) {
  float x;
  std::memcpy(&x, &i, 4);
  return x;
}
inline double __longlong_as_double(long long i) {
  double x;
  std::memcpy(&x, &i, 8);
  return x;
}
inline long long __double_as_longlong(double x) {
  long long i;
  std::memcpy(&i, &x, 8);
  return i;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core warp collectives (emu/runtime.cpp, last section): host versions of
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 and ldmatrix.sync.aligned.m8n8.{x1,x2,x4}
// {.trans}.shared.b16 with the PTX fragment layouts. Kernels use them through the wrappers of
// kernels/common.cuh (mma_bf16_16816, ldsm_*), never directly. All 32 lanes must take part.
namespace emu {
void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c);
void ldmatrix_m8n8_b16(uint32_t* r, int num, int trans, const void* row_addr);
// Test-only: plants a fragment-layout bug in the collectives for the rest of the current launch
// (1: mma reads A with lanes 0 and 5 swapped; 2: ldmatrix returns lanes 1 and 2 swapped), so a
// self-test can show that its comparison catches a wrong layout.
void plant_tensor_core_fault(int mode);
}  // namespace emu
