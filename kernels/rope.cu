// RoPE, rotate-half convention, in place on the q and k parts of fused qkv rows
// ([q heads | k heads | v heads], each heads * head_dim; token t has position t % seq):
//   forward:  y1 = x1 cos1 - x2 sin1,  y2 = x2 cos2 + x1 sin2   (x1, x2: the two head halves)
//   backward: dx1 = dy1 cos1 + dy2 sin2,  dx2 = dy2 cos2 - dy1 sin1   (the transpose)
// cos/sin: f32 tables [seq, head_dim] (emb = cat(freqs, freqs)), from the CPU's rope_tables.
// bf16 in/out, f32 math; one thread per rotation pair.
// Napkin cost per token (heads * head_dim = 512): reads and writes 2 * 512 * 2 B of q and k
// (4 KiB) plus the tables (L2 resident), 6 FLOP per pair. Memory bound: 63k tokens ~260 MB,
// ~60 us at 4.3 TB/s.
#include "common.cuh"

template <bool kBackward>
static __device__ __forceinline__ void rope_apply(bf16* __restrict__ qkv,
                                                  const float* __restrict__ cos_t,
                                                  const float* __restrict__ sin_t,
                                                  long long tokens, int seq, int heads,
                                                  int head_dim) {
  const int half = head_dim >> 1;
  const int per_token = 2 * heads * half;  // pairs in q and k
  const long long n = tokens * per_token;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const long long t = i / per_token;
    const int rem = (int)(i - t * per_token);
    const int h = rem / half;  // 0..2*heads: q heads then k heads
    const int k = rem - h * half;
    const int pos = (int)(t % seq);
    bf16* x = qkv + t * 3LL * heads * head_dim + (long long)h * head_dim;
    const float* c = cos_t + (long long)pos * head_dim;
    const float* s = sin_t + (long long)pos * head_dim;
    const float a = bf2f(x[k]), b = bf2f(x[k + half]);
    if (kBackward) {
      x[k] = f2bf(a * c[k] + b * s[k + half]);
      x[k + half] = f2bf(b * c[k + half] - a * s[k]);
    } else {
      x[k] = f2bf(a * c[k] - b * s[k]);
      x[k + half] = f2bf(b * c[k + half] + a * s[k + half]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256)
    rope_fwd_bf16(bf16* qkv, const float* cos_t, const float* sin_t, long long tokens, int seq,
                  int heads, int head_dim) {
  rope_apply<false>(qkv, cos_t, sin_t, tokens, seq, heads, head_dim);
}
EMU_REGISTER(rope_fwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    rope_bwd_bf16(bf16* dqkv, const float* cos_t, const float* sin_t, long long tokens, int seq,
                  int heads, int head_dim) {
  rope_apply<true>(dqkv, cos_t, sin_t, tokens, seq, heads, head_dim);
}
EMU_REGISTER(rope_bwd_bf16)
