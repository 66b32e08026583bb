// Input embedding and the input-injection add.
//   embed forward: out[b, s] = scale * (s < P ? puzzle_w[id_b] zero-padded to P*hidden, row s
//                                      : embed_w[token[b, s-P]])
//                  with learned positions: out = scale * 0.707106781 * (that + pos_w[s])
//   embed backward (scatter-add, +=, f32): dembed_w[token] += k dx, dpuzzle_w[id] += k dx
//                  (first puzzle_emb_ndim values of the prefix), dpos_w[s] += scale*0.7071 dx,
//                  k = scale (* 0.707106781 with positions)
//   add (input injection z + x): a += b, bf16, f32 math.
// Weights are the f32 master copies; activations bf16. Token or puzzle ids out of range give
// NaN rows (forward) and are skipped (backward), so a bad id shows in tests instead of reading
// out of bounds.
//
// Forward: one WARP per output row (8 rows per 256-thread block; one row index division per
// row, none per element); with hidden a multiple of 8 and 16-byte aligned buffers each lane
// reads 8 f32 weights as two 16-byte loads and writes 8 bf16 with one 128-bit store.
// Backward, pre-reduced per block: block (x, y) owns positions [x*sb, x*sb + sb) of batches
// [y*bb, y*bb + bb) (sb, bb from the grid shape, chosen by the launcher). It sums the token
// table rows (vocab x hidden f32) and its positions' rows (sb x hidden) in SHARED memory
// (shared-memory atomics), then adds each non-zero sum to global memory with ONE atomic per
// (block, token, column) and (block, position, column). When the tables do not fit 48 KiB
// (a large vocabulary), every element goes straight to a global atomic as before. Puzzle
// prefix rows (distinct puzzle ids per batch row) always use global atomics.
// Napkin cost (B = 768, S = 82, hidden 512 = 32.2M elements; vocab 11): forward reads the
// weight rows (L2 resident, 11 + 82 rows) and writes 2 B per element = 64 MB, 13 us at
// 4.8 TB/s. Backward reads 2 B per element = 64 MB, 13 us; with the launcher's ~264 blocks
// (sb = 4 positions x bb = 64 batches each) the global atomics drop from 64M (token + position
// per element) to ~264 x (11 + 4) x 512 = 2.0M. add: reads 4 B, writes 2 B per element.
#include "common.cuh"

#define HRM_POS_SCALE 0.707106781f

// Bytes of shared memory the backward uses when pre-reducing (the launcher computes the same);
// above EMBED_SMEM_MAX it falls back to per-element global atomics.
#define EMBED_SMEM_MAX 49152

static __device__ __forceinline__ float embed_prefix_value(const float* __restrict__ puzzle_w,
                                                           int id, int idx, int puzzle_emb_ndim,
                                                           int num_puzzles) {
  if (idx >= puzzle_emb_ndim) return 0.0f;
  if (id < 0 || id >= num_puzzles) return __int_as_float(0x7fc00000);
  return puzzle_w[(size_t)id * puzzle_emb_ndim + idx];
}

extern "C" __global__ void __launch_bounds__(256)
    embed_fwd_bf16(const int* __restrict__ tokens, const int* __restrict__ puzzle_ids,
                   const float* __restrict__ embed_w, const float* __restrict__ puzzle_w,
                   const float* __restrict__ pos_w, bf16* __restrict__ out, int batch,
                   int seq_len, int prefix_len, int hidden, int puzzle_emb_ndim, int vocab,
                   int num_puzzles, float scale) {
  const int S = prefix_len + seq_len;
  const long long rows = (long long)batch * S;
  const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const int b = (int)(row / S);  // once per row
  const int s = (int)(row - (long long)b * S);
  const bool token_row = s >= prefix_len;
  int t = 0, id = 0;
  if (token_row)
    t = tokens[(size_t)b * seq_len + (s - prefix_len)];
  else
    id = puzzle_ids[b];
  const bool bad_token = token_row && (t < 0 || t >= vocab);
  const float* w = token_row && !bad_token ? embed_w + (size_t)t * hidden : nullptr;
  const float* pos = pos_w != nullptr ? pos_w + (size_t)s * hidden : nullptr;
  bf16* o = out + (size_t)row * hidden;
  const float nan = __int_as_float(0x7fc00000);
  if ((hidden & 7) == 0 && aligned16(out) && aligned16(embed_w) &&
      (pos_w == nullptr || aligned16(pos_w))) {
    for (int v = lane; v < (hidden >> 3); v += 32) {
      float val[8];
      if (w != nullptr) {
        load_f32x8(w + 8 * v, val);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          val[e] = token_row ? nan
                             : embed_prefix_value(puzzle_w, id, s * hidden + 8 * v + e,
                                                  puzzle_emb_ndim, num_puzzles);
      }
      if (pos != nullptr) {
        float p[8];
        load_f32x8(pos + 8 * v, p);
#pragma unroll
        for (int e = 0; e < 8; ++e) val[e] = HRM_POS_SCALE * (val[e] + p[e]);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) val[e] = scale * val[e];
      store_bf16x8(o + 8 * v, val);
    }
    return;
  }
  for (int j = lane; j < hidden; j += 32) {
    float v = w != nullptr ? w[j]
              : token_row  ? nan
                           : embed_prefix_value(puzzle_w, id, s * hidden + j, puzzle_emb_ndim,
                                                num_puzzles);
    if (pos != nullptr) v = HRM_POS_SCALE * (v + pos[j]);
    o[j] = f2bf(scale * v);
  }
}
EMU_REGISTER(embed_fwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    embed_bwd_bf16(const bf16* __restrict__ dx, const int* __restrict__ tokens,
                   const int* __restrict__ puzzle_ids, float* __restrict__ dembed_w,
                   float* __restrict__ dpuzzle_w, float* __restrict__ dpos_w, int batch,
                   int seq_len, int prefix_len, int hidden, int puzzle_emb_ndim, int vocab,
                   int num_puzzles, float scale) {
  const int S = prefix_len + seq_len;
  const float k = dpos_w != nullptr ? scale * HRM_POS_SCALE : scale;
  const float kp = scale * HRM_POS_SCALE;
  // this block's tile (the launcher sizes the grid; the tiles cover S x batch)
  const int sb = (S + (int)gridDim.x - 1) / (int)gridDim.x;
  const int bb = (batch + (int)gridDim.y - 1) / (int)gridDim.y;
  const int s0 = (int)blockIdx.x * sb, b0 = (int)blockIdx.y * bb;
  const int ns = (S < s0 + sb ? S : s0 + sb) - s0;
  const int nb = (batch < b0 + bb ? batch : b0 + bb) - b0;
  if (ns <= 0 || nb <= 0) return;  // uniform over the block, before any barrier
  const size_t table_floats = (size_t)(vocab + (dpos_w != nullptr ? sb : 0)) * hidden;
  const bool pre = table_floats * 4 <= EMBED_SMEM_MAX;
  HRM_DYN_SHARED(float, acc);  // [vocab][hidden] token rows, then [sb][hidden] positions
  float* acc_pos = acc + (size_t)vocab * hidden;
  if (pre) {
    for (unsigned i = threadIdx.x; i < (unsigned)table_floats; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
  }
  const bool vec = (hidden & 7) == 0 && aligned16(dx);
  const unsigned width = vec ? 8u : 1u;
  const unsigned ng = (unsigned)hidden / width;  // column groups per row
  const unsigned units = (unsigned)(ns * nb) * ng;
  for (unsigned u = threadIdx.x; u < units; u += blockDim.x) {
    const unsigned r = u / ng;
    const unsigned g = u - r * ng;
    const unsigned bi = r / (unsigned)ns;
    const int si = (int)(r - bi * (unsigned)ns);
    const int b = b0 + (int)bi, s = s0 + si;
    const size_t row = (size_t)b * S + s;
    const int col0 = (int)(g * width);
    int t = -1, id = -1;
    if (s >= prefix_len)
      t = tokens[(size_t)b * seq_len + (s - prefix_len)];
    else
      id = puzzle_ids[b];
    const bool tok_ok = s >= prefix_len && t >= 0 && t < vocab;
    const bool id_ok = s < prefix_len && id >= 0 && id < num_puzzles;
    // one gradient element into the position, token and puzzle accumulators
    auto add = [&](int col, float gr) {
      if (dpos_w != nullptr) {
        if (pre)
          atomicAdd(&acc_pos[(size_t)si * hidden + col], kp * gr);
        else
          atomicAdd(&dpos_w[(size_t)s * hidden + col], kp * gr);
      }
      if (tok_ok) {
        if (pre)
          atomicAdd(&acc[(size_t)t * hidden + col], k * gr);
        else
          atomicAdd(&dembed_w[(size_t)t * hidden + col], k * gr);
      } else if (id_ok) {
        const int idx = s * hidden + col;
        if (idx < puzzle_emb_ndim)
          atomicAdd(&dpuzzle_w[(size_t)id * puzzle_emb_ndim + idx], k * gr);
      }
    };
    if (vec) {
      float gv[8];
      load_bf16x8(dx + row * hidden + col0, gv);
#pragma unroll
      for (int e = 0; e < 8; ++e) add(col0 + e, gv[e]);
    } else {
      add(col0, bf2f(dx[row * hidden + col0]));
    }
  }
  if (!pre) return;
  __syncthreads();
  for (unsigned i = threadIdx.x; i < (unsigned)(vocab * hidden); i += blockDim.x) {
    const float v = acc[i];
    if (v != 0.0f) atomicAdd(&dembed_w[i], v);  // NaN is != 0 and propagates
  }
  if (dpos_w != nullptr) {
    for (unsigned i = threadIdx.x; i < (unsigned)(ns * hidden); i += blockDim.x) {
      const float v = acc_pos[i];
      if (v != 0.0f) atomicAdd(&dpos_w[(size_t)s0 * hidden + i], v);
    }
  }
}
EMU_REGISTER(embed_bwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    add_inplace_bf16(bf16* __restrict__ a, const bf16* __restrict__ b, long long n) {
  const unsigned stride = gridDim.x * blockDim.x;
  const unsigned tid = blockIdx.x * blockDim.x + threadIdx.x;
  long long done = 0;
  if (aligned16(a) && aligned16(b)) {
    const long long nv = n >> 3;
    for (long long v = tid; v < nv; v += stride) {
      float x[8], y[8];
      load_bf16x8(a + 8 * v, x);
      load_bf16x8(b + 8 * v, y);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] += y[e];
      store_bf16x8(a + 8 * v, x);
    }
    done = nv << 3;  // the < 8 tail elements below
  }
  for (long long i = done + tid; i < n; i += stride) a[i] = f2bf(bf2f(a[i]) + bf2f(b[i]));
}
EMU_REGISTER(add_inplace_bf16)
