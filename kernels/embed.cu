// Input embedding and the input-injection add.
//   embed forward: out[b, s] = scale * (s < P ? puzzle_w[id_b] zero-padded to P*hidden, row s
//                                      : embed_w[token[b, s-P]])
//                  with learned positions: out = scale * 0.707106781 * (that + pos_w[s])
//   embed backward (scatter-add, +=, f32 atomics): dembed_w[token] += k dx, dpuzzle_w[id] += k dx
//                  (first puzzle_emb_ndim values of the prefix), dpos_w[s] += scale*0.7071 dx,
//                  k = scale (* 0.707106781 with positions)
//   add (input injection z + x): a += b, bf16, f32 math.
// Weights are the f32 master copies; activations bf16. One thread per output element.
// Token or puzzle ids out of range give NaN rows (forward) and are skipped (backward), so a bad
// id shows in tests instead of reading out of bounds.
// Napkin cost (batch 768, S = 82, hidden 512 = 32M elements): forward reads 4 B (f32 weight,
// L2 resident for an 11-token vocabulary) and writes 2 B per element, ~64 MB of DRAM writes,
// ~15 us; backward reads 2 B and does one f32 atomic per element: contention on 11 rows makes
// it atomic-bound (a per-block pre-reduction is the later fix if it shows in profiles).
// add: reads 4 B, writes 2 B per element.
#include "common.cuh"

#define HRM_POS_SCALE 0.707106781f

extern "C" __global__ void __launch_bounds__(256)
    embed_fwd_bf16(const int* __restrict__ tokens, const int* __restrict__ puzzle_ids,
                   const float* __restrict__ embed_w, const float* __restrict__ puzzle_w,
                   const float* __restrict__ pos_w, bf16* __restrict__ out, int batch,
                   int seq_len, int prefix_len, int hidden, int puzzle_emb_ndim, int vocab,
                   int num_puzzles, float scale) {
  const int S = prefix_len + seq_len;
  const long long n = (long long)batch * S * hidden;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const long long row = i / hidden;
    const int j = (int)(i - row * hidden);
    const int b = (int)(row / S);
    const int s = (int)(row - (long long)b * S);
    float v;
    if (s < prefix_len) {
      const int idx = s * hidden + j;
      const int id = puzzle_ids[b];
      if (idx >= puzzle_emb_ndim) {
        v = 0.0f;
      } else if (id < 0 || id >= num_puzzles) {
        v = __int_as_float(0x7fc00000);
      } else {
        v = puzzle_w[(long long)id * puzzle_emb_ndim + idx];
      }
    } else {
      const int t = tokens[(long long)b * seq_len + (s - prefix_len)];
      v = (t < 0 || t >= vocab) ? __int_as_float(0x7fc00000)
                                : embed_w[(long long)t * hidden + j];
    }
    if (pos_w != nullptr) v = HRM_POS_SCALE * (v + pos_w[(long long)s * hidden + j]);
    out[i] = f2bf(scale * v);
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
  const long long n = (long long)batch * S * hidden;
  const float k = dpos_w != nullptr ? scale * HRM_POS_SCALE : scale;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const long long row = i / hidden;
    const int j = (int)(i - row * hidden);
    const int b = (int)(row / S);
    const int s = (int)(row - (long long)b * S);
    const float g = bf2f(dx[i]);
    if (dpos_w != nullptr) atomicAdd(&dpos_w[(long long)s * hidden + j], scale * HRM_POS_SCALE * g);
    if (s < prefix_len) {
      const int idx = s * hidden + j;
      const int id = puzzle_ids[b];
      if (idx < puzzle_emb_ndim && id >= 0 && id < num_puzzles)
        atomicAdd(&dpuzzle_w[(long long)id * puzzle_emb_ndim + idx], k * g);
    } else {
      const int t = tokens[(long long)b * seq_len + (s - prefix_len)];
      if (t >= 0 && t < vocab) atomicAdd(&dembed_w[(long long)t * hidden + j], k * g);
    }
  }
}
EMU_REGISTER(embed_bwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    add_inplace_bf16(bf16* __restrict__ a, const bf16* __restrict__ b, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    a[i] = f2bf(bf2f(a[i]) + bf2f(b[i]));
  }
}
EMU_REGISTER(add_inplace_bf16)
