// Fused non-causal multi-head attention on fused qkv rows (the layout of the CPU reference,
// src/backend/cpu/attention.rs): qkv bf16 [batch*seq, 3d], d = heads*hd; head h's q, k, v are
// columns h*hd, d + h*hd, 2d + h*hd. Scale 1/sqrt(hd). No S x S matrix in global memory, and
// any sequence length (Maze-Hard and ARC-AGI: 901 or 916 positions; tested to 4,096): the other
// side is streamed through shared memory in tiles of at most ATT_MAX_TILE rows, and a head's
// rows are spread over blocks, so only the time grows with S (as S^2).
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
// Two implementations: the f32 kernels right below (any head dim that is a multiple of 8), and
// the tensor-core kernels at the end of the file (head dims 16, 32, 64, 128; the launcher,
// src/backend/cuda/attention.rs, picks them whenever the head dim allows).
// Napkin cost of the f32 kernels at the Sudoku shape (batch 768, seq 82, 8 heads of 64):
// forward reads qkv 193 MB, writes out 64 MB + lse 2 MB (~60 us at 4.3 TB/s) and does
// 4 S^2 hd = 10.6 GFLOP of f32 FMA
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
#define ATT_MAX_TILE 256  // rows per staged tile at most (the dK/dV kernel's per-row statistics)
#define ATT_NC (ATT_MAX_HD / 32)  // head-dim columns per lane in the accumulation
#define ATT_TILE_BF16 16384       // two staged tiles together: 32 KiB

typedef __nv_bfloat162 bf162;

// Rows per staged tile: the most that fit (a multiple of 32, at most ATT_MAX_TILE), but no more
// than the sequence needs. hd <= 128 gives at least 32.
static __device__ __forceinline__ int att_tile_rows(int seq, int hd) {
  const int fit = ATT_TILE_BF16 / (2 * (hd + 2)) / 32 * 32;
  const int cap = fit < ATT_MAX_TILE ? fit : ATT_MAX_TILE;
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
  __shared__ float lse_s[ATT_MAX_TILE];  // the staged query tile's statistics
  __shared__ float d_s[ATT_MAX_TILE];
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

// =============================================================================================
// Tensor-core path (head_dim 16, 32, 64, 128; the launcher takes the f32 kernels above for the
// other head dims). Same math, layout and outputs as above; every inner product runs on
// mma.sync m16n8k16 (bf16 operands, f32 accumulation) through the wrappers of common.cuh, with
// the fragments loaded by ldmatrix from shared memory.
//   Block: 128 threads = 4 warps, 64 consecutive rows of one (batch, head); warp w owns rows
//   16w..16w+15 (a warp whose rows all lie past seq skips the arithmetic). The block's own rows
//   (q, or q and dO, or k and v) and the other side's tile are staged in shared memory with a
//   row stride of HD + 8 elements (16-byte aligned rows; the 8 rows an ldmatrix reads hit 8
//   different 16-byte bank groups). Rows past seq are zero; padded keys (queries in dK/dV) are
//   masked to probability 0. The other side is staged in tiles of TILE rows (one tile for
//   seq <= TILE: the whole K/V of the head sits in shared memory for the Sudoku shape), and
//   each warp walks a tile in chunks of NCH keys/queries: scores of 16 x NCH in registers, the
//   online softmax in f32 (forward), P or dS converted in registers from the accumulator
//   layout to the A-operand layout (the two share rows: no shared-memory round trip).
//   Forward: S = Q K^T (A: q rows, B: k rows as [n][k] by ldsm_x4), P = exp(S scale - m),
//            O += P V (B: v rows as [k][n] by ldsm_x4_trans); out = O / l, lse = m + log l.
//   dQ:      S and dP = dO V^T recomputed per chunk, dS = P (dP - D), dQ += dS K (B: k rows as
//            [k][n]); D_i = sum_c dO_ic O_ic is computed first and written for dK/dV.
//   dK/dV:   S^T = K Q^T, dP^T = V dO^T (B: q / dO rows as [n][k]), P^T from lse and dS^T from
//            D (per query column, staged in shared memory), dV += P^T dO, dK += dS^T Q (B: dO /
//            q rows as [k][n]); dK scaled at the end.
// Shared memory (static, bytes, HD 16 / 32 / 64 / 128): forward k and v tiles of 256/256/160/80
// rows: 24,576/40,960/46,080/43,520 B (q staged through the same buffer first); dQ and dK/dV:
// own rows 2 x 64 x (HD + 8), tiles of 256/224/96/16 rows of two tensors, row statistics:
// dQ 30,976/46,336/46,336/43,776 B, dK/dV 32,768/48,128/48,128/45,568 B. All within the 48 KiB
// of a launch without opt-in.
// Registers (ptxas -v, sm_90a, no spills; OUT_DIR/ptxas-report.txt, tests/kernels_build.rs):
// forward 72/96/127/163, dQ 96/114/127/127, dK/dV 80/113/177/224. Occupancy at HD 64: forward
// and dQ 4 blocks (16 warps) per SM (registers and shared memory both allow 4), dK/dV 2 blocks
// (8 warps; registers).
// RoPE inside (optional cos/sin tables, attention(rope(qkv)) with qkv unmodified): q and k rows
// are rotated while staged (rounded to bf16 like the rope kernel's output), dq and dk rotated
// back in registers before the store; costs nothing measurable beyond the f32 table reads (L2).
// Napkin cost at the Sudoku shape (batch 768, seq 82, 8 heads of 64: 6,144 (batch, head) pairs,
// 2 blocks each, 82 rows padded to 96 on both sides):
//   forward: useful 4 S^2 hd = 10.6 GFLOP, executed 4 x 96 x 96 x 64 x 6144 = 14.5 GFLOP (~25 us
//   at ~600 TFLOP/s of mma.sync); reads qkv 193 MB (k, v twice, second time mostly from L2),
//   writes out 64 MB + lse 2 MB: ~60 us at 4.3 TB/s: memory bound, ~60-70 us expected.
//   backward: 14 x 96^2 x 64 x 6144 = 51 GFLOP executed (~85 us); ~580 MB read + 195 MB written
//   (~180 us): memory bound, ~0.2 ms expected for both kernels together.

#define TC_ROWS 64  // rows per block (4 warps x 16)
#define TC_SMEM_BYTES 49152
#define TC_FWD_BYTES 47104  // forward staging budget (k and v tiles)

template <int HD>
struct TcCfg {
  static constexpr int LDS = HD + 8;  // shared row stride (elements)
  static constexpr int cap16(int rows) { return rows > 256 ? 256 : rows / 16 * 16; }
  // forward: k and v tiles
  static constexpr int FWD_TILE = cap16(TC_FWD_BYTES / (2 * LDS * 2));
  // backward: own rows (2 tensors x 64) + 2 tiles + 2 x 256 f32 statistics
  static constexpr int OWN = TC_ROWS * LDS;
  static constexpr int BWD_TILE = cap16((TC_SMEM_BYTES - 2 * OWN * 2 - 2 * 256 * 4) / (2 * LDS * 2));
  // keys (queries) per register chunk: 64 for HD <= 64, else 32 (register budget); dK/dV
  // (four accumulator sets live) 64 only for HD 64 (ptxas spills HD 16/32 at 64)
  static constexpr int NCH = HD <= 64 ? 64 : 32;
  static constexpr int NCH_KV = HD == 64 ? 64 : 32;
  static_assert(FWD_TILE >= 16 && BWD_TILE >= 16, "tile too small");
};

// Static shared memory of the tensor-core kernels. On the GPU each template declares its own, as
// any kernel does. In the emulation a function-local static of a template would not land in the
// shared-memory section (GCC ignores the section attribute there), so it would be neither
// re-poisoned per block nor race-checked: there the extern "C" kernels declare these structs and
// pass them in (TC_SMEM_*), and the templates bind the same names to their members. (Passing
// them in on the GPU too costs dK/dV at HD 64 a register spill.)
#ifdef HRM_EMU
#define TC_SMEM_PARAM(S) , S<HD>& sm
#define TC_SMEM_DECLARE(S, HD) __shared__ S<HD> sm;
#define TC_SMEM_ARG , sm
#else
#define TC_SMEM_PARAM(S)
#define TC_SMEM_DECLARE(S, HD)
#define TC_SMEM_ARG
#endif
template <int HD>
struct TcFwdSmem {
  alignas(16) bf16 kv[2 * TcCfg<HD>::FWD_TILE * TcCfg<HD>::LDS];  // k tile, v tile
};
template <int HD>
struct TcDqSmem {
  alignas(16) bf16 own[2 * TcCfg<HD>::OWN];                      // q rows, dO rows
  alignas(16) bf16 kv[2 * TcCfg<HD>::BWD_TILE * TcCfg<HD>::LDS];  // k tile, v tile
  float dd[TC_ROWS];
};
template <int HD>
struct TcDkdvSmem {
  alignas(16) bf16 own[2 * TcCfg<HD>::OWN];                      // k rows, v rows
  alignas(16) bf16 qd[2 * TcCfg<HD>::BWD_TILE * TcCfg<HD>::LDS];  // q tile, dO tile
  float lse[256], d[256];
};

// Block-cooperative: rows [r0, r0 + rows) of a head slice (g = its first column, row stride ld)
// into dst (row stride HD + 8); rows at or past r_end are zero.
template <int HD>
static __device__ __forceinline__ void tc_stage(const bf16* __restrict__ g, size_t ld, int r0,
                                                int rows, int r_end, bf16* __restrict__ dst) {
  constexpr int PAIRS = HD / 2;
  for (int idx = threadIdx.x; idx < rows * PAIRS; idx += blockDim.x) {
    const int r = idx / PAIRS, c = 2 * (idx - r * PAIRS);
    bf162 v = att_zero2();
    if (r0 + r < r_end) v = *reinterpret_cast<const bf162*>(g + (size_t)(r0 + r) * ld + c);
    *reinterpret_cast<bf162*>(dst + r * (HD + 8) + c) = v;
  }
}

// tc_stage with RoPE (rotate-half, as kernels/rope.cu) applied to each row on the way: row r0 + r
// sits at position r0 + r; cos_t/sin_t f32 [seq, HD]. The rotated values are rounded to bf16,
// the same values the separate rope kernel would have written. cos_t == nullptr: plain copy.
template <int HD>
static __device__ __forceinline__ void tc_stage_rope(const bf16* __restrict__ g, size_t ld, int r0,
                                                     int rows, int r_end, bf16* __restrict__ dst,
                                                     const float* __restrict__ cos_t,
                                                     const float* __restrict__ sin_t) {
  if (cos_t == nullptr) {
    tc_stage<HD>(g, ld, r0, rows, r_end, dst);
    return;
  }
  constexpr int HALF = HD / 2;
  for (int idx = threadIdx.x; idx < rows * HALF; idx += blockDim.x) {
    const int r = idx / HALF, k = idx - r * HALF, pos = r0 + r;
    float y1 = 0.0f, y2 = 0.0f;
    if (pos < r_end) {
      const bf16* x = g + (size_t)pos * ld;
      const float* c = cos_t + (size_t)pos * HD;
      const float* sn = sin_t + (size_t)pos * HD;
      const float a = bf2f(x[k]), b = bf2f(x[k + HALF]);
      y1 = a * c[k] - b * sn[k];
      y2 = b * c[k + HALF] + a * sn[k + HALF];
    }
    dst[r * (HD + 8) + k] = f2bf(y1);
    dst[r * (HD + 8) + k + HALF] = f2bf(y2);
  }
}

// Gradient through RoPE, in registers: acc holds d(rotated row) for this warp's rows r0 + g and
// r0 + g + 8 in accumulator layout (column c and its partner c + HD/2 sit in the same lane, in
// n-tiles dn and dn + HD/16); overwritten by d(row before rotation):
//   dx1 = dy1 cos1 + dy2 sin2,  dx2 = dy2 cos2 - dy1 sin1.  Rows at or past seq are left alone.
template <int HD>
static __device__ __forceinline__ void tc_unrope(float (&acc)[HD / 8][4], int r0, int seq,
                                                 const float* __restrict__ cos_t,
                                                 const float* __restrict__ sin_t) {
  const int lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = r0 + gr + 8 * h;
    if (row >= seq) continue;
    const float* c = cos_t + (size_t)row * HD;
    const float* sn = sin_t + (size_t)row * HD;
#pragma unroll
    for (int dn = 0; dn < HD / 16; ++dn)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int k = dn * 8 + 2 * t + e;
        const float dy1 = acc[dn][2 * h + e], dy2 = acc[dn + HD / 16][2 * h + e];
        acc[dn][2 * h + e] = dy1 * c[k] + dy2 * sn[k + HD / 2];
        acc[dn + HD / 16][2 * h + e] = dy2 * c[k + HD / 2] - dy1 * sn[k];
      }
  }
}

// A fragment (16 x 16) of a row-major tile: rows r0.., columns k0.. (row stride HD + 8).
template <int HD>
static __device__ __forceinline__ void tc_frag_a(const bf16* t, int r0, int k0, unsigned (&a)[4]) {
  const int lane = threadIdx.x & 31;
  ldsm_x4(a, t + (r0 + (lane & 15)) * (HD + 8) + k0 + (lane >> 4) * 8);
}

// B fragments of two n-tiles (n0.., n0 + 8..) for k in k0..k0+15, from a tile stored [n][k].
template <int HD>
static __device__ __forceinline__ void tc_frag_b_nk(const bf16* t, int n0, int k0,
                                                    unsigned (&b0)[2], unsigned (&b1)[2]) {
  const int lane = threadIdx.x & 31, m = lane >> 3;
  unsigned r[4];
  ldsm_x4(r, t + (n0 + (m >> 1) * 8 + (lane & 7)) * (HD + 8) + k0 + (m & 1) * 8);
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// B fragments of two n-tiles (n0.., n0 + 8..) for k in k0..k0+15, from a tile stored [k][n].
template <int HD>
static __device__ __forceinline__ void tc_frag_b_kn(const bf16* t, int k0, int n0,
                                                    unsigned (&b0)[2], unsigned (&b1)[2]) {
  const int lane = threadIdx.x & 31, m = lane >> 3;
  unsigned r[4];
  ldsm_x4_trans(r, t + (k0 + (m & 1) * 8 + (lane & 7)) * (HD + 8) + n0 + (m >> 1) * 8);
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}

// c[nt] (16 x 8 each, nt < 2 * NP) = A B over k = HD: A rows r0.. of `at` ([row][k]), B from
// `bt` stored [n][k] at rows n0.. (pairs of n-tiles p with n0 + 16 p < n_end only).
template <int HD, int NP>
static __device__ __forceinline__ void tc_scores(const bf16* at, int r0, const bf16* bt, int n0,
                                                 int n_end, float (&c)[2 * NP][4]) {
#pragma unroll
  for (int nt = 0; nt < 2 * NP; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[nt][i] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < HD; kk += 16) {
    unsigned a[4];
    tc_frag_a<HD>(at, r0, kk, a);
#pragma unroll
    for (int p = 0; p < NP; ++p) {
      if (n0 + 16 * p < n_end) {
        unsigned b0[2], b1[2];
        tc_frag_b_nk<HD>(bt, n0 + 16 * p, kk, b0, b1);
        mma_bf16_16816(c[2 * p], a, b0, c[2 * p]);
        mma_bf16_16816(c[2 * p + 1], a, b1, c[2 * p + 1]);
      }
    }
  }
}

// acc[HD/8] += W V: W (16 x 16 NP) given as accumulator-layout values w[2 NP][4] (rounded to
// bf16 here), V from `vt` stored [k][n] at rows k0.. (k-steps p with k0 + 16 p < k_end only).
template <int HD, int NP>
static __device__ __forceinline__ void tc_accum(const float (&w)[2 * NP][4], const bf16* vt,
                                                int k0, int k_end, float (&acc)[HD / 8][4]) {
#pragma unroll
  for (int p = 0; p < NP; ++p) {
    if (k0 + 16 * p < k_end) {
      unsigned a[4];
      a[0] = pack_bf16x2(w[2 * p][0], w[2 * p][1]);
      a[1] = pack_bf16x2(w[2 * p][2], w[2 * p][3]);
      a[2] = pack_bf16x2(w[2 * p + 1][0], w[2 * p + 1][1]);
      a[3] = pack_bf16x2(w[2 * p + 1][2], w[2 * p + 1][3]);
#pragma unroll
      for (int dn = 0; dn < HD / 8; dn += 2) {
        unsigned b0[2], b1[2];
        tc_frag_b_kn<HD>(vt, k0 + 16 * p, dn * 8, b0, b1);
        mma_bf16_16816(acc[dn], a, b0, acc[dn]);
        mma_bf16_16816(acc[dn + 1], a, b1, acc[dn + 1]);
      }
    }
  }
}

// Writes acc * mul (accumulator layout, rows r0.. of this warp) as bf16 pairs to g (stride ld),
// rows below r_end only.
template <int HD>
static __device__ __forceinline__ void tc_store(bf16* __restrict__ g, size_t ld, int r0,
                                                int r_end, float mul0, float mul1,
                                                const float (&acc)[HD / 8][4]) {
  const int lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = r0 + gr + 8 * h;
    if (row >= r_end) continue;
    const float mul = h ? mul1 : mul0;
#pragma unroll
    for (int dn = 0; dn < HD / 8; ++dn) {
      *reinterpret_cast<bf162*>(g + (size_t)row * ld + dn * 8 + 2 * t) =
          __floats2bfloat162_rn(acc[dn][2 * h] * mul, acc[dn][2 * h + 1] * mul);
    }
  }
}

template <int HD>
static __device__ __forceinline__ void tc_zero(float (&acc)[HD / 8][4]) {
#pragma unroll
  for (int dn = 0; dn < HD / 8; ++dn)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[dn][i] = 0.0f;
}

// Max / sum over the 4 lanes of a quad (the lanes holding one accumulator row).
static __device__ __forceinline__ float tc_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
static __device__ __forceinline__ float tc_quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

template <int HD>
static __device__ __forceinline__ void tc_fwd(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                                              float* __restrict__ lse, int seq, int heads,
                                              const float* __restrict__ cos_t,
                                              const float* __restrict__ sin_t
                                                  TC_SMEM_PARAM(TcFwdSmem)) {
  using C = TcCfg<HD>;
  constexpr int LDS = C::LDS, TILE = C::FWD_TILE, NCH = C::NCH, NP = NCH / 16;
#ifdef HRM_EMU
  auto& kv_s = sm.kv;
#else
  alignas(16) __shared__ bf16 kv_s[2 * TILE * LDS];
#endif
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z;
  const int d = heads * HD;
  const size_t ld = 3 * (size_t)d;
  const bf16* base = qkv + (size_t)b * seq * ld;
  const bf16* qg = base + h * HD;
  const bf16* kg = base + d + h * HD;
  const bf16* vg = base + 2 * d + h * HD;
  const int q0 = blockIdx.x * TC_ROWS;
  const int r0 = q0 + 16 * warp;  // this warp's first row
  const bool active = r0 < seq;   // warp-uniform
  const float sl2 = TC_LOG2E / sqrtf((float)HD);  // scale in the log2 domain
  bf16* k_s = kv_s;
  bf16* v_s = kv_s + TILE * LDS;

  // q rows through the tile buffer into registers (A fragments, HD / 16 k-steps)
  unsigned qf[HD / 16][4];
  tc_stage_rope<HD>(qg, ld, q0, TC_ROWS, seq, kv_s, cos_t, sin_t);
  __syncthreads();
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) tc_frag_a<HD>(kv_s, 16 * warp, 16 * kk, qf[kk]);

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float acc[HD / 8][4];
  tc_zero<HD>(acc);
  for (int j0 = 0; j0 < seq; j0 += TILE) {
    const int nk = att_min(TILE, seq - j0), nk16 = (nk + 15) & ~15;
    __syncthreads();  // q fragments read / previous tile done
    tc_stage_rope<HD>(kg, ld, j0, nk16, seq, k_s, cos_t, sin_t);
    tc_stage<HD>(vg, ld, j0, nk16, seq, v_s);
    __syncthreads();
    if (!active) continue;
    for (int c0 = 0; c0 < nk16; c0 += NCH) {
      float s[2 * NP][4];
#pragma unroll
      for (int nt = 0; nt < 2 * NP; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
        for (int p = 0; p < NP; ++p) {
          if (c0 + 16 * p < nk16) {
            unsigned b0[2], b1[2];
            tc_frag_b_nk<HD>(k_s, c0 + 16 * p, 16 * kk, b0, b1);
            mma_bf16_16816(s[2 * p], qf[kk], b0, s[2 * p]);
            mma_bf16_16816(s[2 * p + 1], qf[kk], b1, s[2 * p + 1]);
          }
        }
      }
      // scale, mask padded keys, online softmax (rows g: i = 0, 1; g + 8: i = 2, 3)
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < 2 * NP; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = c0 + 8 * nt + 2 * t + (i & 1);
          s[nt][i] = key < nk ? s[nt][i] * sl2 : -INFINITY;
          mx[i >> 1] = fmaxf(mx[i >> 1], s[nt][i]);
        }
      float alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m_new = fmaxf(m[r], tc_quad_max(mx[r]));  // finite: key c0 is valid
        alpha[r] = exp2f(m[r] - m_new);
        m[r] = m_new;
      }
#pragma unroll
      for (int nt = 0; nt < 2 * NP; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s[nt][i] = exp2f(s[nt][i] - m[i >> 1]);
          rs[i >> 1] += s[nt][i];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + rs[r];
#pragma unroll
      for (int dn = 0; dn < HD / 8; ++dn)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[dn][i] *= alpha[i >> 1];
      tc_accum<HD, NP>(s, v_s, c0, nk16, acc);
    }
  }
  if (!active) return;
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = tc_quad_sum(l[r]);
    inv[r] = 1.0f / sum;
    const int row = r0 + g + 8 * r;
    if (t == 0 && row < seq) lse[((size_t)b * heads + h) * seq + row] = (m[r] + log2f(sum)) * TC_LN2;
  }
  tc_store<HD>(out + (size_t)b * seq * d + h * HD, d, r0, seq, inv[0], inv[1], acc);
}

// D_i = sum_c dO_ic O_ic for this warp's 16 rows (0 past seq) into d16[16].
template <int HD>
static __device__ __forceinline__ void tc_delta(const bf16* __restrict__ og, const bf16* do_s,
                                                size_t d, int r0, int seq, int lrow0,
                                                float* d16) {
  const int lane = threadIdx.x & 31;
  for (int r = 0; r < 16; ++r) {
    float part = 0.0f;
    if (r0 + r < seq) {
      for (int c = lane; c < HD; c += 32)
        part = fmaf(bf2f(do_s[(lrow0 + r) * (HD + 8) + c]), bf2f(og[(size_t)(r0 + r) * d + c]), part);
    }
    part = warp_sum(part);
    if (lane == 0) d16[r] = part;
  }
  __syncwarp();
}

template <int HD>
static __device__ __forceinline__ void tc_bwd_dq(const bf16* __restrict__ qkv,
                                                 const bf16* __restrict__ out,
                                                 const float* __restrict__ lse,
                                                 const bf16* __restrict__ dout,
                                                 bf16* __restrict__ dqkv,
                                                 float* __restrict__ delta, int seq, int heads,
                                                 const float* __restrict__ cos_t,
                                                 const float* __restrict__ sin_t
                                                     TC_SMEM_PARAM(TcDqSmem)) {
  using C = TcCfg<HD>;
  constexpr int LDS = C::LDS, TILE = C::BWD_TILE, NCH = C::NCH, NP = NCH / 16;
#ifdef HRM_EMU
  auto& own_s = sm.own;  // q rows, dO rows
  auto& kv_s = sm.kv;    // k tile, v tile
  auto& dd_s = sm.dd;
#else
  alignas(16) __shared__ bf16 own_s[2 * C::OWN];       // q rows, dO rows
  alignas(16) __shared__ bf16 kv_s[2 * TILE * LDS];    // k tile, v tile
  __shared__ float dd_s[TC_ROWS];
#endif
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z;
  const int d = heads * HD;
  const size_t ld = 3 * (size_t)d;
  const bf16* base = qkv + (size_t)b * seq * ld;
  const size_t stat = ((size_t)b * heads + h) * seq;
  const int q0 = blockIdx.x * TC_ROWS;
  const int r0 = q0 + 16 * warp;
  const bool active = r0 < seq;
  const float sl2 = TC_LOG2E / sqrtf((float)HD);
  bf16* q_s = own_s;
  bf16* do_s = own_s + C::OWN;
  bf16* k_s = kv_s;
  bf16* v_s = kv_s + TILE * LDS;

  tc_stage_rope<HD>(base + h * HD, ld, q0, TC_ROWS, seq, q_s, cos_t, sin_t);
  tc_stage<HD>(dout + (size_t)b * seq * d + h * HD, d, q0, TC_ROWS, seq, do_s);
  __syncthreads();
  float ls[2] = {0.0f, 0.0f}, dd[2] = {0.0f, 0.0f};
  if (active) {
    tc_delta<HD>(out + (size_t)b * seq * d + h * HD, do_s, d, r0, seq, 16 * warp, dd_s + 16 * warp);
    if (lane < 16 && r0 + lane < seq) delta[stat + r0 + lane] = dd_s[16 * warp + lane];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = r0 + g + 8 * r;
      dd[r] = dd_s[16 * warp + g + 8 * r];
      ls[r] = row < seq ? lse[stat + row] * TC_LOG2E : 0.0f;
    }
  }
  float acc[HD / 8][4];
  tc_zero<HD>(acc);
  for (int j0 = 0; j0 < seq; j0 += TILE) {
    const int nk = att_min(TILE, seq - j0), nk16 = (nk + 15) & ~15;
    __syncthreads();
    tc_stage_rope<HD>(base + d + h * HD, ld, j0, nk16, seq, k_s, cos_t, sin_t);
    tc_stage<HD>(base + 2 * d + h * HD, ld, j0, nk16, seq, v_s);
    __syncthreads();
    if (!active) continue;
    for (int c0 = 0; c0 < nk16; c0 += NCH) {
      float s[2 * NP][4], dp[2 * NP][4];
      tc_scores<HD, NP>(q_s, 16 * warp, k_s, c0, nk16, s);
      tc_scores<HD, NP>(do_s, 16 * warp, v_s, c0, nk16, dp);
#pragma unroll
      for (int nt = 0; nt < 2 * NP; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = c0 + 8 * nt + 2 * t + (i & 1);
          const float p = key < nk ? exp2f(s[nt][i] * sl2 - ls[i >> 1]) : 0.0f;
          s[nt][i] = p * (dp[nt][i] - dd[i >> 1]);
        }
      tc_accum<HD, NP>(s, k_s, c0, nk16, acc);
    }
  }
  if (!active) return;
  const float scale = 1.0f / sqrtf((float)HD);
  if (cos_t != nullptr) tc_unrope<HD>(acc, r0, seq, cos_t, sin_t);
  tc_store<HD>(dqkv + (size_t)b * seq * ld + h * HD, ld, r0, seq, scale, scale, acc);
}

template <int HD>
static __device__ __forceinline__ void tc_bwd_dkdv(const bf16* __restrict__ qkv,
                                                   const float* __restrict__ lse,
                                                   const bf16* __restrict__ dout,
                                                   const float* __restrict__ delta,
                                                   bf16* __restrict__ dqkv, int seq, int heads,
                                                   const float* __restrict__ cos_t,
                                                   const float* __restrict__ sin_t
                                                       TC_SMEM_PARAM(TcDkdvSmem)) {
  using C = TcCfg<HD>;
  constexpr int LDS = C::LDS, TILE = C::BWD_TILE, NCH = C::NCH_KV, NP = NCH / 16;
#ifdef HRM_EMU
  auto& own_s = sm.own;  // k rows, v rows
  auto& qd_s = sm.qd;    // q tile, dO tile
  auto& lse_s = sm.lse;
  auto& d_s = sm.d;
#else
  alignas(16) __shared__ bf16 own_s[2 * C::OWN];     // k rows, v rows
  alignas(16) __shared__ bf16 qd_s[2 * TILE * LDS];  // q tile, dO tile
  __shared__ float lse_s[256], d_s[256];
#endif
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = lane & 3;
  const int h = blockIdx.y, b = blockIdx.z;
  const int d = heads * HD;
  const size_t ld = 3 * (size_t)d;
  const bf16* base = qkv + (size_t)b * seq * ld;
  const bf16* dog = dout + (size_t)b * seq * d + h * HD;
  const size_t stat = ((size_t)b * heads + h) * seq;
  const int k0 = blockIdx.x * TC_ROWS;
  const int r0 = k0 + 16 * warp;
  const bool active = r0 < seq;
  const float sl2 = TC_LOG2E / sqrtf((float)HD);
  bf16* k_s = own_s;
  bf16* v_s = own_s + C::OWN;
  bf16* q_s = qd_s;
  bf16* do_s = qd_s + TILE * LDS;

  tc_stage_rope<HD>(base + d + h * HD, ld, k0, TC_ROWS, seq, k_s, cos_t, sin_t);
  tc_stage<HD>(base + 2 * d + h * HD, ld, k0, TC_ROWS, seq, v_s);
  float dk[HD / 8][4], dv[HD / 8][4];
  tc_zero<HD>(dk);
  tc_zero<HD>(dv);
  for (int i0 = 0; i0 < seq; i0 += TILE) {
    const int ni = att_min(TILE, seq - i0), ni16 = (ni + 15) & ~15;
    __syncthreads();
    tc_stage_rope<HD>(base + h * HD, ld, i0, ni16, seq, q_s, cos_t, sin_t);
    tc_stage<HD>(dog, d, i0, ni16, seq, do_s);
    for (int i = threadIdx.x; i < ni16; i += blockDim.x) {
      lse_s[i] = i < ni ? lse[stat + i0 + i] * TC_LOG2E : 0.0f;
      d_s[i] = i < ni ? delta[stat + i0 + i] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    for (int c0 = 0; c0 < ni16; c0 += NCH) {
      float s[2 * NP][4], dp[2 * NP][4];
      tc_scores<HD, NP>(k_s, 16 * warp, q_s, c0, ni16, s);   // S^T: keys x queries
      tc_scores<HD, NP>(v_s, 16 * warp, do_s, c0, ni16, dp);  // dP^T
#pragma unroll
      for (int nt = 0; nt < 2 * NP; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int q = c0 + 8 * nt + 2 * t + (i & 1);
          const bool valid = q < ni;
          const float p = valid ? exp2f(s[nt][i] * sl2 - lse_s[q]) : 0.0f;
          dp[nt][i] = p * (dp[nt][i] - (valid ? d_s[q] : 0.0f));
          s[nt][i] = p;
        }
      tc_accum<HD, NP>(s, do_s, c0, ni16, dv);
      tc_accum<HD, NP>(dp, q_s, c0, ni16, dk);
    }
  }
  if (!active) return;
  const float scale = 1.0f / sqrtf((float)HD);
  bf16* dkg = dqkv + (size_t)b * seq * ld + d + h * HD;
  if (cos_t != nullptr) tc_unrope<HD>(dk, r0, seq, cos_t, sin_t);
  tc_store<HD>(dkg, ld, r0, seq, scale, scale, dk);
  tc_store<HD>(dkg + d, ld, r0, seq, 1.0f, 1.0f, dv);
}

// cos_t/sin_t: RoPE tables f32 [seq, HD] for attention(rope(qkv)) (q and k rotated as they are
// staged, dq and dk rotated back before they are stored; qkv is not modified), or nullptr for
// plain attention.
#define TC_KERNELS(HD)                                                                          \
  extern "C" __global__ void __launch_bounds__(128) attention_fwd_tc##HD(                       \
      const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse, int seq,   \
      int heads, const float* __restrict__ cos_t, const float* __restrict__ sin_t) {            \
    TC_SMEM_DECLARE(TcFwdSmem, HD)                                                              \
    tc_fwd<HD>(qkv, out, lse, seq, heads, cos_t, sin_t TC_SMEM_ARG);                            \
  }                                                                                             \
  EMU_REGISTER(attention_fwd_tc##HD)                                                            \
  extern "C" __global__ void __launch_bounds__(128) attention_bwd_dq_tc##HD(                    \
      const bf16* __restrict__ qkv, const bf16* __restrict__ out, const float* __restrict__ lse,  \
      const bf16* __restrict__ dout, bf16* __restrict__ dqkv, float* __restrict__ delta,        \
      int seq, int heads, const float* __restrict__ cos_t, const float* __restrict__ sin_t) {   \
    TC_SMEM_DECLARE(TcDqSmem, HD)                                                               \
    tc_bwd_dq<HD>(qkv, out, lse, dout, dqkv, delta, seq, heads, cos_t, sin_t TC_SMEM_ARG);      \
  }                                                                                             \
  EMU_REGISTER(attention_bwd_dq_tc##HD)                                                         \
  extern "C" __global__ void __launch_bounds__(128) attention_bwd_dkdv_tc##HD(                  \
      const bf16* __restrict__ qkv, const float* __restrict__ lse,                              \
      const bf16* __restrict__ dout, const float* __restrict__ delta, bf16* __restrict__ dqkv,  \
      int seq, int heads, const float* __restrict__ cos_t, const float* __restrict__ sin_t) {   \
    TC_SMEM_DECLARE(TcDkdvSmem, HD)                                                             \
    tc_bwd_dkdv<HD>(qkv, lse, dout, delta, dqkv, seq, heads, cos_t, sin_t TC_SMEM_ARG);         \
  }                                                                                             \
  EMU_REGISTER(attention_bwd_dkdv_tc##HD)

TC_KERNELS(16)
TC_KERNELS(32)
TC_KERNELS(64)
TC_KERNELS(128)
