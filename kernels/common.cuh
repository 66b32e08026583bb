// Shared helpers for the HRM kernels. Compiled two ways: by nvcc for sm_90/sm_90a, and by the
// host C++ compiler for the CPU emulation (emu/cuda_emu.h is force-included first and defines
// HRM_EMU). Only constructs both can run are used here: full-warp shuffles, and inline PTX only
// in the tensor-core wrappers at the end, whose host versions live in the emulation.
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

// NVRTC (the CUDA 12 build's front end) has no <cmath> macros.
#if defined(__CUDACC_RTC__) && !defined(INFINITY)
#define INFINITY __int_as_float(0x7f800000)
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
// (NVRTC, the CUDA 12 build's front end, has no <cstring>; memcpy is built in there.)
#if !defined(HRM_EMU) && !defined(__CUDACC_RTC__)
#include <cstring>
#endif
static __device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}
static __device__ __forceinline__ uint4 ld16(const void* p) {
#ifdef HRM_EMU
  // a GPU faults on a misaligned 16-byte access (misaligned address); x86 would not
  if (!aligned16(p)) emu::report_error("misaligned 16-byte vector load (the GPU faults)");
  uint4 u;
  std::memcpy(&u, p, 16);
  return u;
#else
  return *reinterpret_cast<const uint4*>(p);
#endif
}
static __device__ __forceinline__ void st16(void* p, uint4 u) {
#ifdef HRM_EMU
  if (!aligned16(p)) emu::report_error("misaligned 16-byte vector store (the GPU faults)");
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

// ---------------------------------------------------------------------------------------------
// Tensor-core primitives (sm_80+; the build targets sm_90/sm_90a). Warp-collective: all 32 lanes
// of the warp must execute the same call. Fragment layouts (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), lane = 4 g + t (g = lane >> 2, t = lane & 3):
//   A 16x16 row-major, 4 regs of 2 bf16: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..],
//     a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]   (low half = lower column)
//   B 16x8 "col" (B[k][n]), 2 regs: b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C/D 16x8 f32: c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// ldmatrix.m8n8 (b16): lanes 8m..8m+7 give the row addresses (16-byte aligned) of matrix m; each
// lane receives one 32-bit register per matrix: row g, columns 2t, 2t+1 (or, with .trans,
// column g, rows 2t, 2t+1). So for a row-major 16x16 tile X in shared memory, ldsm_x4 with lane
// address &X[lane & 15][(lane >> 4) * 8] yields exactly the A fragment of X, and for a tile
// stored as Y[n][k] (k contiguous) ldsm_x2 yields the B fragment of Y^T; ldsm_x2_trans on a
// tile stored as Z[k][n] (n contiguous) yields the B fragment of Z.

// Two floats as a bf16x2 register (lo in the low half), round to nearest even.
static __device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  unsigned r;
  memcpy(&r, &v, 4);
  return r;
}

// d = A B + c (f32 accumulate); d may alias c.
static __device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4],
                                                      const unsigned (&b)[2],
                                                      const float (&c)[4]) {
#ifdef HRM_EMU
  emu::mma_m16n8k16_bf16(d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#endif
}

// ldsm_x{1,2,4}[_trans](r, p): ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16, p = this
// lane's row address in shared memory (used by lanes < 8N; the others' are ignored).
static __device__ __forceinline__ unsigned smem_u32(const void* p) {
#ifdef HRM_EMU
  (void)p;
  return 0;
#else
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
#endif
}
static __device__ __forceinline__ void ldsm_x1(unsigned (&r)[1], const bf16* p) {
#ifdef HRM_EMU
  emu::ldmatrix_m8n8_b16(r, 1, 0, p);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(p)) : "memory");
#endif
}
static __device__ __forceinline__ void ldsm_x1_trans(unsigned (&r)[1], const bf16* p) {
#ifdef HRM_EMU
  emu::ldmatrix_m8n8_b16(r, 1, 1, p);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(p)) : "memory");
#endif
}
static __device__ __forceinline__ void ldsm_x2(unsigned (&r)[2], const bf16* p) {
#ifdef HRM_EMU
  emu::ldmatrix_m8n8_b16(r, 2, 0, p);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)) : "memory");
#endif
}
static __device__ __forceinline__ void ldsm_x2_trans(unsigned (&r)[2], const bf16* p) {
#ifdef HRM_EMU
  emu::ldmatrix_m8n8_b16(r, 2, 1, p);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)) : "memory");
#endif
}
static __device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const bf16* p) {
#ifdef HRM_EMU
  emu::ldmatrix_m8n8_b16(r, 4, 0, p);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
#endif
}
static __device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const bf16* p) {
#ifdef HRM_EMU
  emu::ldmatrix_m8n8_b16(r, 4, 1, p);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
#endif
}
