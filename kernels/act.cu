// Small kernels of the recurrent loop and the training step around it.
//   add_bf16:               out = a + b (bf16, f32 math, one rounding).
//   add_injection_bf16:     out = z + bf16(z_h + x): the L module's input with the input injection
//                           (z_H + x) fused in, rounded exactly as the two separate adds (so the
//                           same bits); `out` may be `z` (in place). Reads 6 B, writes 2 B per
//                           element, where the two adds moved 12 B.
//   reset_rows_bf16:        z [batch, seq, width]: rows b with mask[b] != 0 become init [width]
//                           (f32, rounded to bf16) at every position; other rows untouched.
//                           Grid y = batch row, so unmasked rows cost one byte read per block.
//   gather_positions_bf16:  dst[b, j] = src[b, start + j], j < n (src [batch, seq, width],
//                           dst [batch, n, width]).
//   scatter_add_positions_bf16: the transpose, dsrc[b, start + j] += ddst[b, j] (f32 math).
//   count_nonfinite_{f32,bf16}: *count += number of NaN/inf elements (grid-stride, per-block
//                           reduce, one integer atomic per block).
//   ema_f32:                ema = decay * ema + (1 - decay) * p, in that order with explicitly
//                           rounded multiplies and add (no FMA contraction), as the CPU backend.
//   f32_to_bf16:            y = bf16(x) (round to nearest even): a parameter's bf16 shadow.
//   q_head_fwd_f32:         q[r, o] = bias[o] + sum_j x[r, j] w[o, j], o in {0, 1}, f32
//                           throughout (halting logits are never rounded to bf16); x[r] is
//                           position 0 of row r of z_H [rows, seq, d]. A warp per row.
//   q_head_bwd_w_f32:       dw[o, j] += sum_r dq[r, o] x[r, j], db[o] += sum_r dq[r, o].
//                           Deterministic: a block per 32 columns, 8 warps each summing a
//                           fixed interleaved subset of rows, combined in fixed order through
//                           shared memory; one extra block sums db with block_sum. No float
//                           atomics.
//   q_head_bwd_x_bf16:      dz[r, 0, j] += dq[r, 0] w[0, j] + dq[r, 1] w[1, j] (f32 math, one
//                           rounding); other positions of dz untouched.
// Napkin cost (batch 768, seq 82, width 512 = 32M elements): add reads 4 B and writes 2 B per
// element (~190 MB, ~45 us at 4.3 TB/s); reset_rows writes 2 B per element of masked rows only;
// gather/scatter move 4/6 B per gathered element; count_nonfinite reads 4 B (f32) per element
// (27.3M parameters: 110 MB, ~25 us); ema reads 8 B, writes 4 B per parameter (~330 MB,
// ~75 us). q head: reads 768 x 512 bf16 (0.8 MB) once forward and twice backward: a few us,
// launch-latency bound.
#include "common.cuh"

// Round-to-nearest multiply and add that nvcc may not fuse into an FMA (the host compiler of
// the emulation does not contract without -ffp-contract/-mfma).
#ifdef HRM_EMU
static inline float mul_rn(float a, float b) { return a * b; }
static inline float add_rn(float a, float b) { return a + b; }
#else
static __device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
static __device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
#endif

// NaN or infinity: all exponent bits set.
static __device__ __forceinline__ unsigned nonfinite(float x) {
  return (__float_as_int(x) & 0x7f800000) == 0x7f800000 ? 1u : 0u;
}

// 16-byte vectors of 8 bf16 when all three buffers are aligned, then the < 8 tail elements.
extern "C" __global__ void __launch_bounds__(256)
    add_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b, bf16* __restrict__ out,
             long long n) {
  const long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long done = 0;
  if (aligned16(a) && aligned16(b) && aligned16(out)) {
    const long long nv = n >> 3;
    for (long long v = tid; v < nv; v += stride) {
      float x[8], y[8];
      load_bf16x8(a + 8 * v, x);
      load_bf16x8(b + 8 * v, y);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] += y[e];
      store_bf16x8(out + 8 * v, x);
    }
    done = nv << 3;
  }
  for (long long i = done + tid; i < n; i += stride) out[i] = f2bf(bf2f(a[i]) + bf2f(b[i]));
}
EMU_REGISTER(add_bf16)

// `z` and `out` may be the same buffer (no __restrict__ on them): each element is read before
// it is written, by the same thread.
extern "C" __global__ void __launch_bounds__(256)
    add_injection_bf16(const bf16* z, const bf16* __restrict__ zh, const bf16* __restrict__ x,
                       bf16* out, long long n) {
  const long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  const long long stride = (long long)gridDim.x * blockDim.x;
  long long done = 0;
  if (aligned16(z) && aligned16(zh) && aligned16(x) && aligned16(out)) {
    const long long nv = n >> 3;
    for (long long v = tid; v < nv; v += stride) {
      float a[8], h[8], e[8];
      load_bf16x8(z + 8 * v, a);
      load_bf16x8(zh + 8 * v, h);
      load_bf16x8(x + 8 * v, e);
#pragma unroll
      for (int k = 0; k < 8; ++k) a[k] += bf2f(f2bf(h[k] + e[k]));
      store_bf16x8(out + 8 * v, a);
    }
    done = nv << 3;
  }
  for (long long i = done + tid; i < n; i += stride)
    out[i] = f2bf(bf2f(z[i]) + bf2f(f2bf(bf2f(zh[i]) + bf2f(x[i]))));
}
EMU_REGISTER(add_injection_bf16)

extern "C" __global__ void __launch_bounds__(256)
    reset_rows_bf16(bf16* __restrict__ z, const float* __restrict__ init,
                    const unsigned char* __restrict__ mask, int batch, int seq, int width) {
  const int b = blockIdx.y;
  if (b >= batch || !mask[b]) return;
  // one sequence's state: seq * width < 2^32 elements, so 32-bit index math (no 64-bit %)
  const unsigned per_row = (unsigned)seq * (unsigned)width;
  bf16* row = z + (size_t)b * per_row;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < per_row;
       i += gridDim.x * blockDim.x) {
    row[i] = f2bf(init[i % (unsigned)width]);
  }
}
EMU_REGISTER(reset_rows_bf16)

extern "C" __global__ void __launch_bounds__(256)
    gather_positions_bf16(const bf16* __restrict__ src, bf16* __restrict__ dst, int batch,
                          int seq, int start, int n, int width) {
  const long long per_dst = (long long)n * width;
  const long long total = batch * per_dst;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long b = i / per_dst;
    const long long k = i - b * per_dst;
    dst[i] = src[(b * seq + start) * width + k];
  }
}
EMU_REGISTER(gather_positions_bf16)

extern "C" __global__ void __launch_bounds__(256)
    scatter_add_positions_bf16(const bf16* __restrict__ ddst, bf16* __restrict__ dsrc, int batch,
                               int seq, int start, int n, int width) {
  const long long per_dst = (long long)n * width;
  const long long total = batch * per_dst;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long b = i / per_dst;
    const long long k = i - b * per_dst;
    const long long o = (b * seq + start) * width + k;
    dsrc[o] = f2bf(bf2f(dsrc[o]) + bf2f(ddst[i]));
  }
}
EMU_REGISTER(scatter_add_positions_bf16)

extern "C" __global__ void __launch_bounds__(256)
    count_nonfinite_f32(const float* __restrict__ x, long long n, unsigned int* __restrict__ count) {
  __shared__ unsigned int scratch[32];
  unsigned int c = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    c += nonfinite(x[i]);
  }
  c = block_sum(c, scratch);
  if (threadIdx.x == 0 && c != 0) atomicAdd(count, c);
}
EMU_REGISTER(count_nonfinite_f32)

extern "C" __global__ void __launch_bounds__(256)
    count_nonfinite_bf16(const bf16* __restrict__ x, long long n, unsigned int* __restrict__ count) {
  __shared__ unsigned int scratch[32];
  unsigned int c = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    c += nonfinite(bf2f(x[i]));  // bf16 -> f32 keeps NaN and infinity
  }
  c = block_sum(c, scratch);
  if (threadIdx.x == 0 && c != 0) atomicAdd(count, c);
}
EMU_REGISTER(count_nonfinite_bf16)

extern "C" __global__ void __launch_bounds__(256)
    ema_f32(float* __restrict__ ema, const float* __restrict__ p, long long n, float decay) {
  const float keep = 1.0f - decay;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    ema[i] = add_rn(mul_rn(decay, ema[i]), mul_rn(keep, p[i]));
  }
}
EMU_REGISTER(ema_f32)

// y = bf16(x): the bf16 shadow of an f32 parameter after an update that wrote only the master.
extern "C" __global__ void __launch_bounds__(256)
    f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    y[i] = f2bf(x[i]);
  }
}
EMU_REGISTER(f32_to_bf16)

// Block of 128 threads = 4 warps = 4 rows.
extern "C" __global__ void __launch_bounds__(128)
    q_head_fwd_f32(const bf16* __restrict__ z, const float* __restrict__ w,
                   const float* __restrict__ bias, float* __restrict__ q, int rows, int seq,
                   int d) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (r >= rows) return;  // whole warps leave together
  const bf16* x = z + (long long)r * seq * d;
  float a0 = 0.0f, a1 = 0.0f;
  // the same trip count in every lane (see q_head_bwd_w_f32)
  for (int j0 = 0; j0 < d; j0 += 32) {
    const int j = j0 + lane;
    if (j < d) {
      const float xj = bf2f(x[j]);
      a0 += xj * w[j];
      a1 += xj * w[d + j];
    }
  }
  a0 = warp_sum(a0);
  a1 = warp_sum(a1);
  if (lane == 0) {
    q[2 * r] = bias[0] + a0;
    q[2 * r + 1] = bias[1] + a1;
  }
}
EMU_REGISTER(q_head_fwd_f32)

// Block of 256 threads: lane = column within a 32-column tile, warp = row group (8 groups).
// Blocks 0 .. ceil(d/32)-1 do dw; block ceil(d/32) does db.
extern "C" __global__ void __launch_bounds__(256)
    q_head_bwd_w_f32(const float* __restrict__ dq, const bf16* __restrict__ z,
                     float* __restrict__ dw, float* __restrict__ db, int rows, int seq, int d) {
  __shared__ float part[2][8][33];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tiles = (d + 31) >> 5;
  if ((int)blockIdx.x == tiles) {
    __shared__ float scratch[32];
    float s0 = 0.0f, s1 = 0.0f;
    for (int r0 = 0; r0 < rows; r0 += blockDim.x) {
      const int r = r0 + threadIdx.x;
      if (r < rows) {
        s0 += dq[2 * r];
        s1 += dq[2 * r + 1];
      }
    }
    s0 = block_sum(s0, scratch);
    s1 = block_sum(s1, scratch);
    if (threadIdx.x == 0) {
      db[0] += s0;
      db[1] += s1;
    }
    return;
  }
  const int j = blockIdx.x * 32 + lane;
  float a0 = 0.0f, a1 = 0.0f;
  // Every thread runs the same number of iterations (rows, not columns, are guarded inside):
  // with per-thread trip counts the host compiler of the emulation may duplicate the barrier
  // below into the zero-trip path, which the emulation reports as a divergent __syncthreads.
  for (int r0 = 0; r0 < rows; r0 += 8) {
    const int r = r0 + warp;
    if (r < rows && j < d) {
      const float xj = bf2f(z[(long long)r * seq * d + j]);
      a0 += dq[2 * r] * xj;
      a1 += dq[2 * r + 1] * xj;
    }
  }
  part[0][warp][lane] = a0;
  part[1][warp][lane] = a1;
  __syncthreads();
  if (warp < 2 && j < d) {
    float s = 0.0f;
#pragma unroll
    for (int g = 0; g < 8; ++g) s += part[warp][g][lane];
    dw[(long long)warp * d + j] += s;
  }
}
EMU_REGISTER(q_head_bwd_w_f32)

extern "C" __global__ void __launch_bounds__(256)
    q_head_bwd_x_bf16(const float* __restrict__ dq, const float* __restrict__ w,
                      bf16* __restrict__ dz, int rows, int seq, int d) {
  const long long total = (long long)rows * d;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / d;
    const int j = (int)(i - r * d);
    const long long o = r * seq * d + j;
    const float g = dq[2 * r] * w[j] + dq[2 * r + 1] * w[d + j];
    dz[o] = f2bf(bf2f(dz[o]) + g);
  }
}
EMU_REGISTER(q_head_bwd_x_bf16)
