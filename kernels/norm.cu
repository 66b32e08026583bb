// Fused residual add + RMSNorm (no weight), post-norm as in the HRM block:
//   forward:  s = x + r (f32);  rstd = 1/sqrt(mean(s^2) + eps);  y = bf16(s * rstd)
//             (the sum is kept in f32, not rounded to bf16 before the norm)
//   backward: dx = rstd * (dy - y * mean(dy * y))   (gradient w.r.t. s = x + r, f32 math)
// One block per row of d; bf16 in/out, f32 rstd per row.
// Napkin cost per row (d = 512): forward reads 2*2d B, writes 2d + 4 B = 3 KiB, ~5d FLOP;
// backward reads 2*2d + 4 B, writes 2d B = 3 KiB, ~6d FLOP. Memory bound: at 4.3 TB/s a
// 768*82-row batch (63k rows, 194 MB both ways) is ~45 us per pass.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    add_rms_norm_fwd_bf16(const bf16* __restrict__ x, const bf16* __restrict__ r,
                          bf16* __restrict__ y, float* __restrict__ rstd_out, int rows, int d,
                          float eps) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const bf16* xr = x + (size_t)row * d;
  const bf16* rr = r + (size_t)row * d;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const float s = bf2f(xr[j]) + bf2f(rr[j]);
    ss += s * s;
  }
  ss = block_sum(ss, scratch);
  const float rstd = rsqrtf(ss / (float)d + eps);
  bf16* yr = y + (size_t)row * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    yr[j] = f2bf((bf2f(xr[j]) + bf2f(rr[j])) * rstd);
  }
  if (threadIdx.x == 0) rstd_out[row] = rstd;
}
EMU_REGISTER(add_rms_norm_fwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    rms_norm_bwd_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ y,
                      const float* __restrict__ rstd, bf16* __restrict__ dx, int rows, int d) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  if (row >= rows) return;
  const bf16* dyr = dy + (size_t)row * d;
  const bf16* yr = y + (size_t)row * d;
  float dot = 0.0f;
  for (int j = threadIdx.x; j < d; j += blockDim.x) dot += bf2f(dyr[j]) * bf2f(yr[j]);
  dot = block_sum(dot, scratch) / (float)d;
  const float rs = rstd[row];
  bf16* dxr = dx + (size_t)row * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    dxr[j] = f2bf(rs * (bf2f(dyr[j]) - bf2f(yr[j]) * dot));
  }
}
EMU_REGISTER(rms_norm_bwd_bf16)
