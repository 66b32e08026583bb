// RoPE, rotate-half convention, in place on the q and k parts of fused qkv rows
// ([q heads | k heads | v heads], each heads * head_dim; token t has position t % seq):
//   forward:  y1 = x1 cos1 - x2 sin1,  y2 = x2 cos2 + x1 sin2   (x1, x2: the two head halves)
//   backward: dx1 = dy1 cos1 + dy2 sin2,  dx2 = dy2 cos2 - dy1 sin1   (the transpose)
// cos/sin: f32 tables [seq, head_dim] (emb = cat(freqs, freqs)), from the CPU's rope_tables.
// bf16 in/out, f32 math. Fast path (head_dim/2 a multiple of 8, 16-byte aligned buffers, fewer
// than 2^32 units): one thread per 8 rotation pairs: two 128-bit loads/stores of qkv and four
// 32-byte reads of the (L1/L2-resident) tables; 32-bit index math, three divisions per 16
// elements. Otherwise one thread per pair (32-bit index math when the count fits).
// Napkin cost (B = 768, S = 82: 62,976 tokens, heads * head_dim = 512): reads and writes the
// q and k parts, 2 x 512 x 2 B each way per token = 4 KiB/token -> 258 MB, 54 us at 4.8 TB/s;
// the tables (82 x 64 x 4 B x 2 = 42 KB) stay in L2; 6 FLOP per pair.
#include "common.cuh"

template <bool kBackward>
static __device__ __forceinline__ void rope_pair(float a, float b, float c1, float s1, float c2,
                                                 float s2, float& y1, float& y2) {
  if (kBackward) {
    y1 = a * c1 + b * s2;
    y2 = b * c2 - a * s1;
  } else {
    y1 = a * c1 - b * s1;
    y2 = b * c2 + a * s2;
  }
}

// One pair per unit; I = unsigned when the unit count fits 32 bits.
template <bool kBackward, typename I>
static __device__ __forceinline__ void rope_scalar(bf16* __restrict__ qkv,
                                                   const float* __restrict__ cos_t,
                                                   const float* __restrict__ sin_t, I n,
                                                   int seq, int heads, int head_dim) {
  const int half = head_dim >> 1;
  const I per_token = (I)(2 * heads * half);  // pairs in q and k
  const unsigned stride = gridDim.x * blockDim.x;
  for (unsigned long long i64 = blockIdx.x * blockDim.x + threadIdx.x; i64 < n; i64 += stride) {
    const I i = (I)i64;
    const I t = i / per_token;
    const int rem = (int)(i - t * per_token);
    const int h = rem / half;  // 0..2*heads: q heads then k heads
    const int k = rem - h * half;
    const int pos = (int)(t % (I)seq);
    bf16* x = qkv + (size_t)t * 3 * heads * head_dim + (size_t)h * head_dim;
    const float* c = cos_t + (size_t)pos * head_dim;
    const float* s = sin_t + (size_t)pos * head_dim;
    float y1, y2;
    rope_pair<kBackward>(bf2f(x[k]), bf2f(x[k + half]), c[k], s[k], c[k + half], s[k + half], y1,
                         y2);
    x[k] = f2bf(y1);
    x[k + half] = f2bf(y2);
  }
}

template <bool kBackward>
static __device__ __forceinline__ void rope_apply(bf16* __restrict__ qkv,
                                                  const float* __restrict__ cos_t,
                                                  const float* __restrict__ sin_t,
                                                  long long tokens, int seq, int heads,
                                                  int head_dim) {
  const int half = head_dim >> 1;
  const long long pairs = tokens * 2 * heads * half;
  if ((half & 7) == 0 && pairs / 8 < 4294967296LL && aligned16(qkv) && aligned16(cos_t) &&
      aligned16(sin_t)) {
    const unsigned hv = (unsigned)(half >> 3);          // 8-pair units per head
    const unsigned per_token = 2u * (unsigned)heads * hv;  // units per token (q and k)
    const unsigned n = (unsigned)(pairs / 8);
    const unsigned stride = gridDim.x * blockDim.x;
    for (unsigned long long i64 = blockIdx.x * blockDim.x + threadIdx.x; i64 < n;
         i64 += stride) {
      const unsigned i = (unsigned)i64;
      const unsigned t = i / per_token;
      const unsigned rem = i - t * per_token;
      const unsigned h = rem / hv;
      const unsigned k = (rem - h * hv) * 8;
      const unsigned pos = t % (unsigned)seq;
      bf16* x = qkv + (size_t)t * 3 * heads * head_dim + (size_t)h * head_dim + k;
      const float* c = cos_t + (size_t)pos * head_dim + k;
      const float* s = sin_t + (size_t)pos * head_dim + k;
      float a[8], b[8], c1[8], s1[8], c2[8], s2[8], y1[8], y2[8];
      load_bf16x8(x, a);
      load_bf16x8(x + half, b);
      load_f32x8(c, c1);
      load_f32x8(s, s1);
      load_f32x8(c + half, c2);
      load_f32x8(s + half, s2);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        rope_pair<kBackward>(a[e], b[e], c1[e], s1[e], c2[e], s2[e], y1[e], y2[e]);
      store_bf16x8(x, y1);
      store_bf16x8(x + half, y2);
    }
    return;
  }
  if (pairs < 4294967296LL)
    rope_scalar<kBackward, unsigned>(qkv, cos_t, sin_t, (unsigned)pairs, seq, heads, head_dim);
  else
    rope_scalar<kBackward, unsigned long long>(qkv, cos_t, sin_t, pairs, seq, heads, head_dim);
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
