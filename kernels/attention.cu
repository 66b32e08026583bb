// Fused non-causal multi-head attention on fused qkv rows (the layout of the CPU reference,
// src/backend/cpu/attention.rs): qkv bf16 [batch*seq, 3d], d = heads*hd; head h's q, k, v are
// columns h*hd, d + h*hd, 2d + h*hd. Scale 1/sqrt(hd). No S x S matrix in global memory.
//   forward:  out = softmax(Q K^T * scale) V   (bf16 [batch*seq, d], head h at columns h*hd)
//             lse = log-sum-exp of the scaled scores (f32 [batch, heads, seq])
//             online softmax over key tiles, f32 scores, sums and accumulators.
//   backward: D_i = sum_c dO_ic O_ic, P = exp(S*scale - lse), dP = dO V^T, dS = P (dP - D),
//             dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO; written to dqkv (same fused
//             layout, overwritten). Two kernels, no atomics (deterministic): a dQ kernel (query
//             rows, loop over keys; also writes D) and a dK/dV kernel (key rows, loop over
//             queries, reading that D).
// Launch shape: grid (row chunks, heads, batch), 128 threads (4 warps); a block owns `chunk`
// consecutive rows of one (batch, head) and handles them in passes of 16 (4 rows per warp).
// The other side (keys, or queries in dK/dV) is staged into shared memory in tiles of up to
// ATT_TILE_BF16 / (2 (hd + 2)) rows (a multiple of 32; 96 rows for hd 64, so the Sudoku head's 82
// keys are one tile, staged once per block). Within a tile a warp takes 32 columns at a time,
// one per lane (lane = key for scores), then lanes over head dims for the accumulation. Rows of
// staged tiles are padded to hd + 2 so that lanes reading 32 different rows hit 32 banks.
// Shared memory (static, the same for every shape): forward 38,912 B, dQ 43,008 B, dK/dV
// 47,104 B, all within the 48 KiB of a launch without opt-in. Inner products are plain f32 FMAs
// in two small device functions (att_dot_rows, att_accum_rows).
// Napkin cost at the Sudoku shape (batch 768, seq 82, 8 heads of 64): forward reads qkv 193 MB,
// writes out 64 MB + lse 2 MB (~60 us at 4.3 TB/s) and does 4 S^2 hd = 10.6 GFLOP of f32 FMA
// (~0.2 ms at 60 TFLOP/s): compute bound until the products move to tensor cores. Backward:
// the dQ kernel reads qkv, out, dout, lse and writes dQ + D; the dK/dV kernel reads qkv, dout,
// lse, D and writes dK, dV: ~580 MB read, 195 MB written (~0.18 ms), and 14 S^2 hd = 37 GFLOP
// (both kernels recompute S and dP): ~0.6 ms at 60 TFLOP/s.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_THREADS (32 * ATT_WARPS)
#define ATT_ROWS 4                             // rows per warp per pass
#define ATT_ROWS_PER_PASS (ATT_WARPS * ATT_ROWS)  // 16
#define ATT_MAX_HD 128
#define ATT_MAX_SEQ 256
#define ATT_NC (ATT_MAX_HD / 32)  // head-dim columns per lane in the accumulation
#define ATT_TILE_BF16 16384       // two staged tiles together: 32 KiB

typedef __nv_bfloat162 bf162;

// Rows per staged tile: the most that fit (a multiple of 32), but no more than the sequence
// needs. hd <= 128 gives at least 32.
static __device__ __forceinline__ int att_tile_rows(int seq, int hd) {
  const int cap = ATT_TILE_BF16 / (2 * (hd + 2)) / 32 * 32;
  const int need = (seq + 31) / 32 * 32;
  return cap < need ? cap : need;
}

static __device__ __forceinline__ int att_min(int a, int b) { return a < b ? a : b; }

static __device__ __forceinline__ float att_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

static __device__ __forceinline__ bf162 att_zero2() { return __floats2bfloat162_rn(0.0f, 0.0f); }

// Block-cooperative: rows [r0, r0 + n) of one head slice (`g` points at the slice's first
// column, row stride ld) into a tile with row stride hd + 2; tile rows n..kt-1 are zero.
static __device__ __forceinline__ void att_stage_tile(const bf16* __restrict__ g, size_t ld,
                                                      int r0, int n, int kt, int hd,
                                                      bf16* __restrict__ tile) {
  const int pairs = hd >> 1, ldt = hd + 2;
  for (int idx = threadIdx.x; idx < kt * pairs; idx += blockDim.x) {
    const int row = idx / pairs, c = 2 * (idx - row * pairs);
    bf162 v = att_zero2();
    if (row < n) v = *reinterpret_cast<const bf162*>(g + (size_t)(r0 + row) * ld + c);
    *reinterpret_cast<bf162*>(tile + row * ldt + c) = v;
  }
}

// Warp-cooperative: this warp's ATT_ROWS rows starting at r0 (rows >= r_end are zero) into
// dst[ATT_ROWS][ATT_MAX_HD].
static __device__ __forceinline__ void att_load_rows(const bf16* __restrict__ g, size_t ld,
                                                     int r0, int r_end, int hd,
                                                     bf16* __restrict__ dst) {
  const int lane = threadIdx.x & 31, pairs = hd >> 1;
  for (int idx = lane; idx < ATT_ROWS * pairs; idx += 32) {
    const int r = idx / pairs, c = 2 * (idx - r * pairs);
    bf162 v = att_zero2();
    if (r0 + r < r_end) v = *reinterpret_cast<const bf162*>(g + (size_t)(r0 + r) * ld + c);
    *reinterpret_cast<bf162*>(dst + r * ATT_MAX_HD + c) = v;
  }
}

// s[r] = rows[r] . x  (r < ATT_ROWS): rows [ATT_ROWS][ATT_MAX_HD] are the same for every lane
// (broadcast reads), x is this lane's own row of a staged tile.
static __device__ __forceinline__ void att_dot_rows(const bf16* __restrict__ rows,
                                                    const bf16* __restrict__ x, int hd,
                                                    float (&s)[ATT_ROWS]) {
#pragma unroll
  for (int r = 0; r < ATT_ROWS; ++r) s[r] = 0.0f;
#pragma unroll 4
  for (int k = 0; k < hd; k += 2) {
    const float2 xx = __bfloat1622float2(*reinterpret_cast<const bf162*>(x + k));
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
      const float2 rr = __bfloat1622float2(*reinterpret_cast<const bf162*>(rows + r * ATT_MAX_HD + k));
      s[r] = fmaf(rr.x, xx.x, s[r]);
      s[r] = fmaf(rr.y, xx.y, s[r]);
    }
  }
}

// acc[r][c] += sum_{j < nj} w[r][j] * t[j][lane + 32c]: w [ATT_ROWS][32] per-warp weights in
// shared memory, t a staged tile (row stride ldt) starting at the chunk's first row.
static __device__ __forceinline__ void att_accum_rows(const float (*__restrict__ w)[32],
                                                      const bf16* __restrict__ t, int ldt,
                                                      int nj, int hd,
                                                      float (&acc)[ATT_ROWS][ATT_NC]) {
  const int lane = threadIdx.x & 31;
  for (int j = 0; j < nj; ++j) {
    float tv[ATT_NC];
#pragma unroll
    for (int c = 0; c < ATT_NC; ++c) {
      const int col = lane + 32 * c;
      tv[c] = col < hd ? bf2f(t[j * ldt + col]) : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
      const float wr = w[r][j];
#pragma unroll
      for (int c = 0; c < ATT_NC; ++c) acc[r][c] = fmaf(wr, tv[c], acc[r][c]);
    }
  }
}

// Writes acc[r][c] * mul to row r0 + r (if < r_end) at columns lane + 32c of `g` (stride ld).
static __device__ __forceinline__ void att_store_rows(bf16* __restrict__ g, size_t ld, int r0,
                                                      int r_end, int hd, float mul,
                                                      const float (&acc)[ATT_ROWS][ATT_NC]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < ATT_ROWS; ++r) {
    if (r0 + r >= r_end) continue;
#pragma unroll
    for (int c = 0; c < ATT_NC; ++c) {
      const int col = lane + 32 * c;
      if (col < hd) g[(size_t)(r0 + r) * ld + col] = f2bf(acc[r][c] * mul);
    }
  }
}

static __device__ __forceinline__ void att_zero_acc(float (&acc)[ATT_ROWS][ATT_NC]) {
#pragma unroll
  for (int r = 0; r < ATT_ROWS; ++r)
#pragma unroll
    for (int c = 0; c < ATT_NC; ++c) acc[r][c] = 0.0f;
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_fwd_bf16(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                       float* __restrict__ lse, int seq, int heads, int hd, int chunk) {
  alignas(16) __shared__ bf16 kv_s[ATT_TILE_BF16];
  alignas(16) __shared__ bf16 q_s[ATT_WARPS][ATT_ROWS * ATT_MAX_HD];
  __shared__ float p_s[ATT_WARPS][ATT_ROWS][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int d = heads * hd;
  const size_t ld = 3 * (size_t)d;
  const bf16* base = qkv + (size_t)b * seq * ld;
  const bf16* qg = base + h * hd;
  const bf16* kg = base + d + h * hd;
  const bf16* vg = base + 2 * d + h * hd;
  bf16* og = out + (size_t)b * seq * d + h * hd;
  float* lse_g = lse + ((size_t)b * heads + h) * seq;
  const int q0 = blockIdx.x * chunk;
  const int q_end = att_min(seq, q0 + chunk);
  if (q0 >= q_end) return;  // the whole block: chunk and seq are uniform
  const int kt = att_tile_rows(seq, hd), ldt = hd + 2;
  bf16* k_s = kv_s;
  bf16* v_s = kv_s + kt * ldt;
  const int n_tiles = (seq + kt - 1) / kt;
  const int n_passes = (q_end - q0 + ATT_ROWS_PER_PASS - 1) / ATT_ROWS_PER_PASS;
  const float scale = 1.0f / sqrtf((float)hd);

  for (int pass = 0; pass < n_passes; ++pass) {
    const int r0 = q0 + pass * ATT_ROWS_PER_PASS + warp * ATT_ROWS;
    att_load_rows(qg, ld, r0, q_end, hd, q_s[warp]);
    __syncwarp();
    float m[ATT_ROWS], l[ATT_ROWS], acc[ATT_ROWS][ATT_NC];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.0f;
    }
    att_zero_acc(acc);
    for (int t = 0; t < n_tiles; ++t) {
      const int j0 = t * kt, nk = att_min(kt, seq - j0);
      if (n_tiles > 1 || pass == 0) {
        __syncthreads();
        att_stage_tile(kg, ld, j0, nk, kt, hd, k_s);
        att_stage_tile(vg, ld, j0, nk, kt, hd, v_s);
        __syncthreads();
      }
      for (int c0 = 0; c0 < nk; c0 += 32) {
        const bool valid = c0 + lane < nk;
        float s[ATT_ROWS];
        att_dot_rows(q_s[warp], k_s + (c0 + lane) * ldt, hd, s);
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
          const float sr = valid ? s[r] * scale : -INFINITY;
          const float m_new = fmaxf(m[r], att_warp_max(sr));  // finite: lane 0 is valid
          const float alpha = expf(m[r] - m_new);
          const float p = expf(sr - m_new);
          l[r] = l[r] * alpha + p;
#pragma unroll
          for (int c = 0; c < ATT_NC; ++c) acc[r][c] *= alpha;
          m[r] = m_new;
          p_s[warp][r][lane] = p;
        }
        __syncwarp();
        att_accum_rows(p_s[warp], v_s + c0 * ldt, ldt, att_min(32, nk - c0), hd, acc);
        __syncwarp();
      }
    }
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
      const float sum = warp_sum(l[r]);
      l[r] = 1.0f / sum;
      if (lane == 0 && r0 + r < q_end) lse_g[r0 + r] = m[r] + logf(sum);
      // rescale acc now so the store below multiplies by 1
#pragma unroll
      for (int c = 0; c < ATT_NC; ++c) acc[r][c] *= l[r];
    }
    att_store_rows(og, d, r0, q_end, hd, 1.0f, acc);
  }
}
EMU_REGISTER(attention_fwd_bf16)

// dQ for `chunk` query rows per block; also writes delta[b, h, i] = D_i (read by the dK/dV
// kernel, which must run after this one).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_bwd_dq_bf16(const bf16* __restrict__ qkv, const bf16* __restrict__ out,
                          const float* __restrict__ lse, const bf16* __restrict__ dout,
                          bf16* __restrict__ dqkv, float* __restrict__ delta, int seq, int heads,
                          int hd, int chunk) {
  alignas(16) __shared__ bf16 kv_s[ATT_TILE_BF16];
  alignas(16) __shared__ bf16 q_s[ATT_WARPS][ATT_ROWS * ATT_MAX_HD];
  alignas(16) __shared__ bf16 do_s[ATT_WARPS][ATT_ROWS * ATT_MAX_HD];
  __shared__ float ds_s[ATT_WARPS][ATT_ROWS][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int d = heads * hd;
  const size_t ld = 3 * (size_t)d;
  const bf16* base = qkv + (size_t)b * seq * ld;
  const bf16* qg = base + h * hd;
  const bf16* kg = base + d + h * hd;
  const bf16* vg = base + 2 * d + h * hd;
  const bf16* og = out + (size_t)b * seq * d + h * hd;
  const bf16* dog = dout + (size_t)b * seq * d + h * hd;
  bf16* dqg = dqkv + (size_t)b * seq * ld + h * hd;
  const size_t stat = ((size_t)b * heads + h) * seq;
  const int q0 = blockIdx.x * chunk;
  const int q_end = att_min(seq, q0 + chunk);
  if (q0 >= q_end) return;
  const int kt = att_tile_rows(seq, hd), ldt = hd + 2;
  bf16* k_s = kv_s;
  bf16* v_s = kv_s + kt * ldt;
  const int n_tiles = (seq + kt - 1) / kt;
  const int n_passes = (q_end - q0 + ATT_ROWS_PER_PASS - 1) / ATT_ROWS_PER_PASS;
  const float scale = 1.0f / sqrtf((float)hd);

  for (int pass = 0; pass < n_passes; ++pass) {
    const int r0 = q0 + pass * ATT_ROWS_PER_PASS + warp * ATT_ROWS;
    att_load_rows(qg, ld, r0, q_end, hd, q_s[warp]);
    att_load_rows(dog, d, r0, q_end, hd, do_s[warp]);
    __syncwarp();
    float dd[ATT_ROWS], ls[ATT_ROWS], acc[ATT_ROWS][ATT_NC];
#pragma unroll
    for (int r = 0; r < ATT_ROWS; ++r) {
      const bool row_ok = r0 + r < q_end;
      float part = 0.0f;
      if (row_ok) {
        for (int col = lane; col < hd; col += 32) {
          part = fmaf(bf2f(do_s[warp][r * ATT_MAX_HD + col]), bf2f(og[(size_t)(r0 + r) * d + col]),
                      part);
        }
      }
      dd[r] = warp_sum(part);
      ls[r] = row_ok ? lse[stat + r0 + r] : 0.0f;
      if (lane == 0 && row_ok) delta[stat + r0 + r] = dd[r];
    }
    att_zero_acc(acc);
    for (int t = 0; t < n_tiles; ++t) {
      const int j0 = t * kt, nk = att_min(kt, seq - j0);
      if (n_tiles > 1 || pass == 0) {
        __syncthreads();
        att_stage_tile(kg, ld, j0, nk, kt, hd, k_s);
        att_stage_tile(vg, ld, j0, nk, kt, hd, v_s);
        __syncthreads();
      }
      for (int c0 = 0; c0 < nk; c0 += 32) {
        const bool valid = c0 + lane < nk;
        float s[ATT_ROWS], dp[ATT_ROWS];
        att_dot_rows(q_s[warp], k_s + (c0 + lane) * ldt, hd, s);
        att_dot_rows(do_s[warp], v_s + (c0 + lane) * ldt, hd, dp);
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
          const float p = valid ? expf(s[r] * scale - ls[r]) : 0.0f;
          ds_s[warp][r][lane] = p * (dp[r] - dd[r]);
        }
        __syncwarp();
        att_accum_rows(ds_s[warp], k_s + c0 * ldt, ldt, att_min(32, nk - c0), hd, acc);
        __syncwarp();
      }
    }
    att_store_rows(dqg, ld, r0, q_end, hd, scale, acc);
  }
}
EMU_REGISTER(attention_bwd_dq_bf16)

// dK and dV for `chunk` key rows per block; needs delta from attention_bwd_dq_bf16.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention_bwd_dkdv_bf16(const bf16* __restrict__ qkv, const float* __restrict__ lse,
                            const bf16* __restrict__ dout, const float* __restrict__ delta,
                            bf16* __restrict__ dqkv, int seq, int heads, int hd, int chunk) {
  alignas(16) __shared__ bf16 qdo_s[ATT_TILE_BF16];
  __shared__ float lse_s[ATT_MAX_SEQ];
  __shared__ float d_s[ATT_MAX_SEQ];
  alignas(16) __shared__ bf16 k_s[ATT_WARPS][ATT_ROWS * ATT_MAX_HD];
  alignas(16) __shared__ bf16 v_s[ATT_WARPS][ATT_ROWS * ATT_MAX_HD];
  __shared__ float w_s[ATT_WARPS][2][ATT_ROWS][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int d = heads * hd;
  const size_t ld = 3 * (size_t)d;
  const bf16* base = qkv + (size_t)b * seq * ld;
  const bf16* qg = base + h * hd;
  const bf16* kg = base + d + h * hd;
  const bf16* vg = base + 2 * d + h * hd;
  const bf16* dog = dout + (size_t)b * seq * d + h * hd;
  bf16* dkg = dqkv + (size_t)b * seq * ld + d + h * hd;
  bf16* dvg = dqkv + (size_t)b * seq * ld + 2 * d + h * hd;
  const size_t stat = ((size_t)b * heads + h) * seq;
  const int k0 = blockIdx.x * chunk;
  const int k_end = att_min(seq, k0 + chunk);
  if (k0 >= k_end) return;
  const int qt = att_tile_rows(seq, hd), ldt = hd + 2;
  bf16* qt_s = qdo_s;
  bf16* dot_s = qdo_s + qt * ldt;
  const int n_tiles = (seq + qt - 1) / qt;
  const int n_passes = (k_end - k0 + ATT_ROWS_PER_PASS - 1) / ATT_ROWS_PER_PASS;
  const float scale = 1.0f / sqrtf((float)hd);

  for (int pass = 0; pass < n_passes; ++pass) {
    const int r0 = k0 + pass * ATT_ROWS_PER_PASS + warp * ATT_ROWS;
    att_load_rows(kg, ld, r0, k_end, hd, k_s[warp]);
    att_load_rows(vg, ld, r0, k_end, hd, v_s[warp]);
    __syncwarp();
    float dk[ATT_ROWS][ATT_NC], dv[ATT_ROWS][ATT_NC];
    att_zero_acc(dk);
    att_zero_acc(dv);
    for (int t = 0; t < n_tiles; ++t) {
      const int i0 = t * qt, ni = att_min(qt, seq - i0);
      if (n_tiles > 1 || pass == 0) {
        __syncthreads();
        att_stage_tile(qg, ld, i0, ni, qt, hd, qt_s);
        att_stage_tile(dog, d, i0, ni, qt, hd, dot_s);
        for (int i = threadIdx.x; i < qt; i += blockDim.x) {
          lse_s[i] = i < ni ? lse[stat + i0 + i] : 0.0f;
          d_s[i] = i < ni ? delta[stat + i0 + i] : 0.0f;
        }
        __syncthreads();
      }
      for (int c0 = 0; c0 < ni; c0 += 32) {
        const int i = c0 + lane;
        const bool valid = i < ni;
        float s[ATT_ROWS], dp[ATT_ROWS];
        att_dot_rows(k_s[warp], qt_s + i * ldt, hd, s);
        att_dot_rows(v_s[warp], dot_s + i * ldt, hd, dp);
        const float li = lse_s[i], di = d_s[i];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
          const float p = valid ? expf(s[r] * scale - li) : 0.0f;
          w_s[warp][0][r][lane] = p;
          w_s[warp][1][r][lane] = p * (dp[r] - di);
        }
        __syncwarp();
        const int nj = att_min(32, ni - c0);
        att_accum_rows(w_s[warp][0], dot_s + c0 * ldt, ldt, nj, hd, dv);
        att_accum_rows(w_s[warp][1], qt_s + c0 * ldt, ldt, nj, hd, dk);
        __syncwarp();
      }
    }
    att_store_rows(dkg, ld, r0, k_end, hd, scale, dk);
    att_store_rows(dvg, ld, r0, k_end, hd, 1.0f, dv);
  }
}
EMU_REGISTER(attention_bwd_dkdv_bf16)
