// Shared helpers for the HRM kernels. Compiled two ways: by nvcc for sm_90/sm_90a, and by the
// host C++ compiler for the CPU emulation (emu/cuda_emu.h is force-included first and defines
// HRM_EMU). Only constructs both can run are used here: no inline PTX, full-warp shuffles.
#pragma once

#ifndef HRM_EMU
#include <cuda_bf16.h>
// The emulation registers each kernel under its extern "C" name; nvcc needs nothing.
#define EMU_REGISTER(kernel)
// Dynamic shared memory as a typed pointer (the emulation provides its own buffer).
#define HRM_DYN_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char hrm_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(hrm_dyn_smem_)
#endif

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16(x); }

template <typename T>
static __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (the
// launchers use 128 or 256). `scratch` holds 32 values in shared memory; the leading barrier
// makes back-to-back calls with the same scratch safe.
template <typename T>
static __device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T t = lane < n_warps ? scratch[lane] : T(0);
  return warp_sum(t);
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors of 8 bf16 for the bandwidth-bound element-wise kernels (norm, swiglu, rope,
// embed). One 128-bit load or store per 8 elements; f32 math in registers. The caller checks
// alignment (aligned16) and that the length is a multiple of 8, with a scalar path otherwise.
// The emulation copies through memcpy (no type punning for the host compiler to exploit).
#ifndef HRM_EMU
#include <cstring>
#endif
static __device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}
static __device__ __forceinline__ uint4 ld16(const void* p) {
#ifdef HRM_EMU
  uint4 u;
  std::memcpy(&u, p, 16);
  return u;
#else
  return *reinterpret_cast<const uint4*>(p);
#endif
}
static __device__ __forceinline__ void st16(void* p, uint4 u) {
#ifdef HRM_EMU
  std::memcpy(p, &u, 16);
#else
  *reinterpret_cast<uint4*>(p) = u;
#endif
}
static __device__ __forceinline__ void load_bf16x8(const bf16* p, float (&f)[8]) {
  const uint4 u = ld16(p);
  __nv_bfloat162 h[4];
  memcpy(h, &u, 16);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
static __device__ __forceinline__ void store_bf16x8(bf16* p, const float (&f)[8]) {
  __nv_bfloat162 h[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  uint4 u;
  memcpy(&u, h, 16);
  st16(p, u);
}
// 8 consecutive f32 (two 16-byte loads); p must be 16-byte aligned.
static __device__ __forceinline__ void load_f32x8(const float* p, float (&f)[8]) {
  const uint4 a = ld16(p), b = ld16(p + 4);
  memcpy(f, &a, 16);
  memcpy(f + 4, &b, 16);
}
