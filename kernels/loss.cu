// Losses.
// stablemax cross entropy, fused with argmax, per-row correct counts and exact flags, forward
// and backward in one pass (f64 math, as the reference):
//   s(x) = x < 0 ? 1/(1 - x + 1e-30) : x + 1;  p_i = s(x_i) / sum_j s(x_j)
//   row loss = sum over valid tokens (label != 0) of -log p_label / max(1, n_valid)
//   dlogits_i = grad_scale / max(1, n_valid) * (s'(x_i)/sum - [i == label] s'(x_label)/s(x_label))
//   (zero on PAD tokens); argmax per token, ties to the lowest index; exact = n_correct == n_valid.
//   One block per row (a sequence), one thread per token (loop over the vocabulary, meant for
//   small vocabularies such as Sudoku's 11). bf16 logits in, bf16 dlogits out.
//   Napkin cost (768 x 81 tokens x 11): reads 1.4 MB of logits and writes 1.4 MB of gradients,
//   ~100 f64 FLOP per token (6M): a few microseconds, launch-latency bound.
// q_head BCE with logits, summed (f64), gradient grad_scale * (sigmoid(x) - t) (f32):
//   l = max(x, 0) - x t + log(1 + exp(-|x|)). One block; n is 2 x batch (1,536). Negligible cost.
#include "common.cuh"

// f64 reciprocal from an f32 seed and two Newton steps (error ~1 ulp of f64). A plain f64
// division calls a slow-path subroutine on the GPU whose call frame spills registers. Valid for
// 1e-37 < x < 1e37 (stablemax sums and s(x) of finite bf16 logits far inside that range).
static __device__ __forceinline__ double rcp(double x) {
  double r = (double)__fdividef(1.0f, (float)x);  // approximate seed, inline
  r = fma(r, fma(-x, r, 1.0), r);
  r = fma(r, fma(-x, r, 1.0), r);
  return r;
}

static __device__ __forceinline__ void stablemax_s(double x, double* s, double* ds) {
  if (x < 0.0) {
    const double v = rcp(1.0 - x + 1e-30);
    *s = v;
    *ds = v * v;
  } else {
    *s = x + 1.0;
    *ds = 1.0;
  }
}

extern "C" __global__ void __launch_bounds__(128, 1)
    stablemax_ce_bf16(const bf16* __restrict__ logits, const int* __restrict__ labels, int seq,
                      int vocab, double grad_scale, bf16* __restrict__ dlogits,
                      double* __restrict__ loss_per_row, unsigned int* __restrict__ n_correct,
                      unsigned int* __restrict__ n_valid, unsigned char* __restrict__ exact,
                      unsigned char* __restrict__ argmax_out) {
  __shared__ int scratch_i[32];
  __shared__ double scratch_d[32];
  const long long row = blockIdx.x;
  const int* lab = labels + row * seq;
  int valid = 0;
  for (int t = threadIdx.x; t < seq; t += blockDim.x) valid += lab[t] != 0;
  valid = block_sum(valid, scratch_i);
  const double k = grad_scale * rcp((double)(valid > 1 ? valid : 1));
  double loss = 0.0;
  int correct = 0;
  for (int t = threadIdx.x; t < seq; t += blockDim.x) {
    const long long tok = row * seq + t;
    const bf16* x = logits + tok * vocab;
    int best = 0;
    float bestv = bf2f(x[0]);
    double sum = 0.0;
    for (int i = 0; i < vocab; ++i) {
      const float v = bf2f(x[i]);
      if (v > bestv) {
        bestv = v;
        best = i;
      }
      double s, ds;
      stablemax_s((double)v, &s, &ds);
      sum += s;
    }
    argmax_out[tok] = (unsigned char)best;
    const int y = lab[t];
    if (y == 0) {
      if (dlogits != nullptr)
        for (int i = 0; i < vocab; ++i) dlogits[tok * vocab + i] = f2bf(0.0f);
      continue;
    }
    if (y < 0 || y >= vocab) {  // invalid label: poison the row's loss
      loss += __longlong_as_double(0x7ff8000000000000LL);
      continue;
    }
    correct += best == y;
    double sy, dsy;
    stablemax_s((double)bf2f(x[y]), &sy, &dsy);
    const double inv_sum = rcp(sum);
    loss -= log(sy * inv_sum);
    if (dlogits != nullptr) {
      const double dlog_y = dsy * rcp(sy);
      for (int i = 0; i < vocab; ++i) {
        double s, ds;
        stablemax_s((double)bf2f(x[i]), &s, &ds);
        double g = ds * inv_sum;
        if (i == y) g -= dlog_y;
        dlogits[tok * vocab + i] = f2bf((float)(k * g));
      }
    }
  }
  loss = block_sum(loss, scratch_d);
  correct = block_sum(correct, scratch_i);
  if (threadIdx.x == 0) {
    loss_per_row[row] = loss * rcp((double)(valid > 1 ? valid : 1));
    n_correct[row] = (unsigned int)correct;
    n_valid[row] = (unsigned int)valid;
    exact[row] = correct == valid;
  }
}
EMU_REGISTER(stablemax_ce_bf16)

extern "C" __global__ void __launch_bounds__(256)
    bce_with_logits_f32(const float* __restrict__ logits, const float* __restrict__ targets,
                        int n, double grad_scale, float* __restrict__ dlogits,
                        double* __restrict__ loss_sum) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const double x = logits[i], t = targets[i];
    acc += fmax(x, 0.0) - x * t + log1p(exp(-fabs(x)));
    if (dlogits != nullptr) dlogits[i] = (float)(grad_scale * (1.0 / (1.0 + exp(-x)) - t));
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) loss_sum[0] = acc;
}
EMU_REGISTER(bce_with_logits_f32)
