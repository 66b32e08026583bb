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
