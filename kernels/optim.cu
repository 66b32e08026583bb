// Optimizers, f32 master weights.
// AdamATan2 (no epsilon), decoupled weight decay, as the adam-atan2 package's kernel (and the
// CPU backend) computes it; the scalars are computed on the host in f64 and cast to f32:
//   p *= decay (= 1 - lr wd);  m = lerp(m, g, w1);  v = lerp(v, g^2, w2)   (w1 = 1-b1, w2 = 1-b2,
//   lerp(a, b, t) = fma(t, b, fma(-t, a, a)))
//   p -= lr * atan2(bc1_recip * m, sqrt(v) / bc2_sqrt)   (bc1_recip = 1/(1-b1^t),
//   bc2_sqrt = sqrt(1-b2^t)); optionally also writes the bf16 copy of p used by the GEMMs.
// Sparse SignSGD of the puzzle embedding table (puzzle_sign_sgd_f32, below): per id in the
// batch, the sum of its rows' gradients g, then w = w * decay - lr * sign(g), once per id.
// One thread per element, grid-stride.
// Napkin cost: AdamATan2 reads 16 B (p, g, m, v) and writes 12 B (+2 B bf16) per parameter,
// ~15 FLOP + atan2: 27.3M parameters -> ~0.8 GB, ~0.18 ms at 4.3 TB/s.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    adam_atan2_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                   float* __restrict__ v, bf16* __restrict__ p_bf16, long long n, float decay,
                   float w1, float w2, float lr, float bc1_recip, float bc2_sqrt) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float gi = g[i];
    float pi = p[i] * decay;
    const float m0 = m[i], v0 = v[i];
    const float mi = fmaf(w1, gi, fmaf(-w1, m0, m0));
    const float vi = fmaf(w2, gi * gi, fmaf(-w2, v0, v0));
    pi -= lr * atan2f(bc1_recip * mi, sqrtf(vi) / bc2_sqrt);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (p_bf16 != nullptr) p_bf16[i] = f2bf(pi);
  }
}
EMU_REGISTER(adam_atan2_f32)

// The whole optimizer step in one launch (multi-tensor): `table` has 8 u64 per tensor
// (master, bf16 shadow, grad, m, v, ema or 0, length, rule with 0 = AdamATan2, 2 = frozen;
// the puzzle table is not in it: puzzle_sign_sgd_f32 below); block c updates chunk c
// of `chunk_elems` elements of tensor chunk_tensor[c] from chunk_start[c]: the rule's update,
// then the bf16 shadow, then ema = ema_decay * ema + (1 - ema_decay) * p when ema_decay >= 0
// (rounded multiplies and add, as the CPU). Nothing is written once status[0] records a bad
// step (the non-finite guard). Same per-element math as adam_atan2_f32 / ema_f32.
// Napkin cost: as AdamATan2 above plus 8 B per parameter for the EMA: ~1 GB, ~0.25 ms on an
// H200, in one launch instead of ~3 per tensor.
#ifdef HRM_EMU
static inline float opt_mul_rn(float a, float b) { return a * b; }
static inline float opt_add_rn(float a, float b) { return a + b; }
#else
static __device__ __forceinline__ float opt_mul_rn(float a, float b) { return __fmul_rn(a, b); }
static __device__ __forceinline__ float opt_add_rn(float a, float b) { return __fadd_rn(a, b); }
#endif

extern "C" __global__ void __launch_bounds__(256)
    optim_multi_f32(const unsigned long long* __restrict__ table,
                    const int* __restrict__ chunk_tensor, const long long* __restrict__ chunk_start,
                    int chunk_elems, const int* __restrict__ status, float decay, float w1,
                    float w2, float lr, float bc1_recip, float bc2_sqrt, float ema_decay) {
  if (status[0] != 0x7fffffff) return;
  const int c = blockIdx.x;
  const unsigned long long* e = table + 8 * chunk_tensor[c];
  float* p = reinterpret_cast<float*>(e[0]);
  bf16* shadow = reinterpret_cast<bf16*>(e[1]);
  const float* g = reinterpret_cast<const float*>(e[2]);
  float* m = reinterpret_cast<float*>(e[3]);
  float* v = reinterpret_cast<float*>(e[4]);
  float* ema = reinterpret_cast<float*>(e[5]);
  const int n = (int)e[6];
  const int rule = (int)(e[7] & 0xff);
  const int start = (int)chunk_start[c];
  const int end = start + chunk_elems < n ? start + chunk_elems : n;
  const float keep = 1.0f - ema_decay;
  for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
    float pi = p[i];
    if (rule == 0) {
      const float gi = g[i];
      pi *= decay;
      const float m0 = m[i], v0 = v[i];
      const float mi = fmaf(w1, gi, fmaf(-w1, m0, m0));
      const float vi = fmaf(w2, gi * gi, fmaf(-w2, v0, v0));
      pi -= lr * atan2f(bc1_recip * mi, sqrtf(vi) / bc2_sqrt);
      m[i] = mi;
      v[i] = vi;
      p[i] = pi;
      shadow[i] = f2bf(pi);
    }
    if (ema != nullptr && ema_decay >= 0.0f)
      ema[i] = opt_add_rn(opt_mul_rn(ema_decay, ema[i]), opt_mul_rn(keep, pi));
  }
}
EMU_REGISTER(optim_multi_f32)

// The sparse SignSGD step of the puzzle embedding table w [num_puzzles, ndim] (the reference's
// CastedSparseEmbeddingSignSGD_Distributed): grads [rows, ndim] holds one gradient row per
// batch row (every rank's rows, in global row order, in a data-parallel run) and ids the rows'
// puzzle ids. Block b owns batch row b: when b is the FIRST row holding its id (a block-wide
// count of matches among rows 0..b-1), its threads sum, column by column, the gradients of
// every row holding that id in row order, and update the id's table row once:
//   w = w * decay - lr * sign(sum)            (decay = 1 - lr * wd)
// Every other block returns: each id present is updated exactly once, by one block, from a
// fixed summation order (deterministic, no atomics); rows of ids not in the batch are not
// touched (no decay); ids out of range are skipped. Nothing is written once status[0] records
// a bad step. Launch: grid = rows, 128 threads (a multiple of 32, for block_sum).
// Napkin cost (rows 768, ndim 512): the id tests are warp-uniform loads of a 3 KB array (L1);
// each leader block reads its rows' gradients (768 x 512 x 4 B = 1.5 MB in all) and reads and
// writes its table row: ~3 MB of traffic, a few microseconds, whatever the table's size (a
// million ids x 512 = 2 GB is never scanned).
extern "C" __global__ void __launch_bounds__(128)
    puzzle_sign_sgd_f32(float* __restrict__ w, const float* __restrict__ grads,
                        const int* __restrict__ ids, int rows, int ndim, int num_puzzles,
                        float lr, float decay, const int* __restrict__ status) {
  __shared__ int scratch[32];
  if (status[0] != 0x7fffffff) return;
  const int b = blockIdx.x;
  const int id = ids[b];
  if (id < 0 || id >= num_puzzles) return;  // uniform over the block
  int earlier = 0;
  for (int r = threadIdx.x; r < b; r += blockDim.x) earlier += ids[r] == id;
  if (block_sum(earlier, scratch) != 0) return;  // another block owns this id
  float* row = w + (size_t)id * ndim;
  for (int j = threadIdx.x; j < ndim; j += blockDim.x) {
    float sum = 0.0f;
    for (int r = b; r < rows; ++r)
      if (ids[r] == id) sum += grads[(size_t)r * ndim + j];
    const float sign = sum > 0.0f ? 1.0f : (sum < 0.0f ? -1.0f : 0.0f);
    row[j] = row[j] * decay - lr * sign;
  }
}
EMU_REGISTER(puzzle_sign_sgd_f32)
