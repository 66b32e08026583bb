// Input embedding and the input-injection add.
//   embed forward: out[b, s] = scale * (s < P ? puzzle_w[id_b] zero-padded to P*hidden, row s
//                                      : embed_w[token[b, s-P]])
//                  with learned positions: out = scale * 0.707106781 * (that + pos_w[s])
//   embed backward (scatter-add, +=, f32): dembed_w[token] += k dx, dpuzzle_rows[b] += k dx
//                  (first puzzle_emb_ndim values of the prefix; one gradient row per batch row,
//                  summed per id by the sparse optimizer), dpos_w[s] += scale*0.7071 dx,
//                  k = scale (* 0.707106781 with positions)
//   add (input injection z + x): a += b, bf16, f32 math.
// Weights are the f32 master copies; activations bf16. Token or puzzle ids out of range give
// NaN rows (forward); the backward skips bad tokens and gives every batch row its puzzle
// gradient row (the sparse optimizer skips bad ids), so a bad id shows in tests instead of
// reading out of bounds.
//
// Forward: one WARP per output row (8 rows per 256-thread block; one row index division per
// row, none per element); with hidden a multiple of 8 and 16-byte aligned buffers each lane
// reads 8 f32 weights as two 16-byte loads and writes 8 bf16 with one 128-bit store.
// Backward, deterministic (no float atomics: the same bits on every run, whatever order the
// blocks and warps run in), in two passes:
//   embed_bwd_partial_bf16: block (x, y) owns columns [x*T, x*T + T) (T = blockDim.x, ONE column
//     per thread) and positions [y*sb, y*sb + sb) of EVERY batch row. Each thread walks its
//     positions, then the batch, in a fixed order: k*dx into one accumulator per token for its
//     own column (shared memory when vocab*T floats fit, else its column of the block's slice of
//     the partial table), the position gradient in a register (complete within the block, so
//     written with one +=), and the puzzle-prefix gradient straight into row b of dpuzzle_rows
//     (+=: every (position, column) belongs to one thread). The block's token sums go to
//     partial[y][vocab][hidden].
//   embed_bwd_reduce_f32: dembed_w[i] += sum over y (in order) of partial[y][i].
// No thread reads another thread's accumulator, so no barrier is needed.
// Napkin cost (B = 768, S = 97, hidden 512 = 38.1M elements; vocab 11): forward reads the
// weight rows (L2 resident, 11 + 97 rows) and writes 2 B per element = 76 MB, 16 us at
// 4.8 TB/s. Backward pass 1 reads 2 B per element (76 MB, 16 us at bandwidth) with 388 blocks of
// 128 threads (one wave), each thread a chain of 768 shared-memory adds per position; pass 2
// reads S x 11 x 512 x 4 B = 2.2 MB. add: reads 4 B, writes 2 B per element.
#include "common.cuh"

#define HRM_POS_SCALE 0.707106781f


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

extern "C" __global__ void __launch_bounds__(128)
    embed_bwd_partial_bf16(const bf16* __restrict__ dx, const int* __restrict__ tokens,
                           float* __restrict__ partial, float* __restrict__ dpuzzle_rows,
                           float* __restrict__ dpos_w, int batch, int seq_len, int prefix_len,
                           int hidden, int puzzle_emb_ndim, int vocab, int sb, int use_smem,
                           float scale) {
  const int S = prefix_len + seq_len;
  const float k = dpos_w != nullptr ? scale * HRM_POS_SCALE : scale;
  const float kp = scale * HRM_POS_SCALE;
  const int T = (int)blockDim.x;
  const int col = (int)blockIdx.x * T + (int)threadIdx.x;
  if (col >= hidden) return;  // no barriers in this kernel
  const int s0 = (int)blockIdx.y * sb;
  const int s1 = S < s0 + sb ? S : s0 + sb;
  float* part = partial + (size_t)blockIdx.y * vocab * hidden;  // this block's token sums
  HRM_DYN_SHARED(float, smem);                                   // [vocab][T] with use_smem
  float* acc = use_smem ? smem + threadIdx.x : part + col;       // this column's sums
  const size_t stride = use_smem ? (size_t)T : (size_t)hidden;  // between tokens
  for (int t = 0; t < vocab; ++t) acc[(size_t)t * stride] = 0.0f;
  for (int s = s0; s < s1; ++s) {
    float pos_sum = 0.0f;
    const bool token_row = s >= prefix_len;
    const int idx = s * hidden + col;  // prefix rows: index into the puzzle embedding row
    const bf16* g_row = dx + (size_t)s * hidden + col;
    for (int b = 0; b < batch; ++b) {
      const float g = bf2f(g_row[(size_t)b * S * hidden]);
      pos_sum += kp * g;
      if (token_row) {
        const int t = tokens[(size_t)b * seq_len + (s - prefix_len)];
        if (t >= 0 && t < vocab) acc[(size_t)t * stride] += k * g;
      } else if (idx < puzzle_emb_ndim) {
        dpuzzle_rows[(size_t)b * puzzle_emb_ndim + idx] += k * g;
      }
    }
    if (dpos_w != nullptr) dpos_w[(size_t)s * hidden + col] += pos_sum;
  }
  if (use_smem)
    for (int t = 0; t < vocab; ++t) part[(size_t)t * hidden + col] = acc[(size_t)t * stride];
}
EMU_REGISTER(embed_bwd_partial_bf16)

extern "C" __global__ void __launch_bounds__(256)
    embed_bwd_reduce_f32(const float* __restrict__ partial, float* __restrict__ dembed_w,
                         int parts, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float sum = 0.0f;
    for (int p = 0; p < parts; ++p) sum += partial[(size_t)p * n + i];
    dembed_w[i] += sum;  // NaN propagates
  }
}
EMU_REGISTER(embed_bwd_reduce_f32)

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
