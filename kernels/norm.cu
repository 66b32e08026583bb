// Fused residual add + RMSNorm (no weight), post-norm as in the HRM block:
//   forward:  s = x + r (f32);  rstd = 1/sqrt(mean(s^2) + eps);  y = bf16(s * rstd)
//             (the sum is kept in f32, not rounded to bf16 before the norm)
//   backward: dx = rstd * (dy - y * mean(dy * y))   (gradient w.r.t. s = x + r, f32 math)
// The means divide by `n` <= d: rows of d that end in d - n zero pads (TRM's norm over the
// sequence on rows padded to a multiple of 8) are normed over their n real entries, and their
// pads stay 0 (s = 0 gives y = 0; dy = y = 0 gives dx = 0).
// One WARP per row (8 rows per 256-thread block), no shared memory, no block barrier. Fast path
// (d a multiple of 8, d <= 1024, 16-byte aligned rows): each lane loads its d/256 vectors of
// 8 bf16 with 128-bit loads and keeps the row in registers, so every byte is read once; a warp
// shuffle reduction gives the row sum. Otherwise (any d): the same warp-per-row scheme with
// scalar loads, reading the inputs twice (the second read hits L1/L2).
// Napkin cost (B = 768, S = 82: 62,976 rows, d = 512): forward reads 2 x 2d B and writes
// 2d + 4 B per row = 3,076 B/row -> 194 MB, 40 us at 4.8 TB/s; ~5d FLOP per row (0.16 GFLOP,
// negligible). Backward: reads 2 x 2d + 4 B, writes 2d B per row -> 194 MB, 40 us.
#include "common.cuh"

#define NORM_MAX_VEC 4  // vectors of 8 per lane in the register path: d <= 4 * 8 * 32 = 1024

static __device__ __forceinline__ int norm_row() {
  return (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5));
}

// Register path, NV vectors of 8 per lane (NV = ceil(d / 256); templated so that d = 512 keeps
// only 2 x 8 values per input in registers).
template <int NV>
static __device__ __forceinline__ float norm_fwd_regs(const bf16* __restrict__ xr,
                                                      const bf16* __restrict__ rr,
                                                      bf16* __restrict__ yr, int d, int n,
                                                      float eps, int lane) {
  const int nv = d >> 3;
  float s[NV][8];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int v = lane + 32 * i;
    if (v < nv) {
      float a[8], b[8];
      load_bf16x8(xr + 8 * v, a);
      load_bf16x8(rr + 8 * v, b);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        s[i][e] = a[e] + b[e];
        ss += s[i][e] * s[i][e];
      }
    }
  }
  ss = warp_sum(ss);
  const float rstd = rsqrtf(ss / (float)n + eps);
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int v = lane + 32 * i;
    if (v < nv) {
      float o[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = s[i][e] * rstd;
      store_bf16x8(yr + 8 * v, o);
    }
  }
  return rstd;
}

template <int NV>
static __device__ __forceinline__ void norm_bwd_regs(const bf16* __restrict__ dyr,
                                                     const bf16* __restrict__ yr,
                                                     bf16* __restrict__ dxr, float rs, int d,
                                                     int n, int lane) {
  const int nv = d >> 3;
  float g[NV][8], o[NV][8];
  float dot = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int v = lane + 32 * i;
    if (v < nv) {
      load_bf16x8(dyr + 8 * v, g[i]);
      load_bf16x8(yr + 8 * v, o[i]);
#pragma unroll
      for (int e = 0; e < 8; ++e) dot += g[i][e] * o[i][e];
    }
  }
  dot = warp_sum(dot) / (float)n;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int v = lane + 32 * i;
    if (v < nv) {
      float out[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) out[e] = rs * (g[i][e] - o[i][e] * dot);
      store_bf16x8(dxr + 8 * v, out);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256)
    add_rms_norm_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ r,
                          bf16* __restrict__ y, float* __restrict__ rstd_out, int rows, int d,
                          int n, float eps) {
  const int row = norm_row();
  if (row >= rows) return;  // whole warps leave together: no barrier follows
  const int lane = threadIdx.x & 31;
  const size_t base = (size_t)row * d;
  const bf16* xr = x + base;
  const bf16* rr = r + base;
  bf16* yr = y + base;
  float rstd;
  if ((d & 7) == 0 && d <= NORM_MAX_VEC * 256 && aligned16(xr) && aligned16(rr) && aligned16(yr)) {
    switch ((d + 255) >> 8) {
      case 1: rstd = norm_fwd_regs<1>(xr, rr, yr, d, n, eps, lane); break;
      case 2: rstd = norm_fwd_regs<2>(xr, rr, yr, d, n, eps, lane); break;
      case 3: rstd = norm_fwd_regs<3>(xr, rr, yr, d, n, eps, lane); break;
      default: rstd = norm_fwd_regs<4>(xr, rr, yr, d, n, eps, lane); break;
    }
  } else {
    float ss = 0.0f;
    for (int j = lane; j < d; j += 32) {
      const float s = bf2f(xr[j]) + bf2f(rr[j]);
      ss += s * s;
    }
    ss = warp_sum(ss);
    rstd = rsqrtf(ss / (float)n + eps);
    for (int j = lane; j < d; j += 32) yr[j] = f2bf((bf2f(xr[j]) + bf2f(rr[j])) * rstd);
  }
  if (lane == 0) rstd_out[row] = rstd;
}
EMU_REGISTER(add_rms_norm_fwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    rms_norm_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ y,
                      const float* __restrict__ rstd, bf16* __restrict__ dx, int rows, int d,
                      int n) {
  const int row = norm_row();
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const size_t base = (size_t)row * d;
  const bf16* dyr = dy + base;
  const bf16* yr = y + base;
  bf16* dxr = dx + base;
  const float rs = rstd[row];
  if ((d & 7) == 0 && d <= NORM_MAX_VEC * 256 && aligned16(dyr) && aligned16(yr) &&
      aligned16(dxr)) {
    switch ((d + 255) >> 8) {
      case 1: norm_bwd_regs<1>(dyr, yr, dxr, rs, d, n, lane); break;
      case 2: norm_bwd_regs<2>(dyr, yr, dxr, rs, d, n, lane); break;
      case 3: norm_bwd_regs<3>(dyr, yr, dxr, rs, d, n, lane); break;
      default: norm_bwd_regs<4>(dyr, yr, dxr, rs, d, n, lane); break;
    }
  } else {
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) dot += bf2f(dyr[j]) * bf2f(yr[j]);
    dot = warp_sum(dot) / (float)n;
    for (int j = lane; j < d; j += 32) dxr[j] = f2bf(rs * (bf2f(dyr[j]) - bf2f(yr[j]) * dot));
  }
}
EMU_REGISTER(rms_norm_bwd_bf16)
