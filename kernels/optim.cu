// Optimizers, f32 master weights.
// AdamATan2 (no epsilon), decoupled weight decay, as the adam-atan2 package's kernel (and the
// CPU backend) computes it; the scalars are computed on the host in f64 and cast to f32:
//   p *= decay (= 1 - lr wd);  m = lerp(m, g, w1);  v = lerp(v, g^2, w2)   (w1 = 1-b1, w2 = 1-b2,
//   lerp(a, b, t) = fma(t, b, fma(-t, a, a)))
//   p -= lr * atan2(bc1_recip * m, sqrt(v) / bc2_sqrt)   (bc1_recip = 1/(1-b1^t),
//   bc2_sqrt = sqrt(1-b2^t)); optionally also writes the bf16 copy of p used by the GEMMs.
// SignSGD (sparse puzzle embedding), rows with touched[r] != 0 only:
//   w = w * decay - lr * sign(g)
// One thread per element, grid-stride.
// Napkin cost: AdamATan2 reads 16 B (p, g, m, v) and writes 12 B (+2 B bf16) per parameter,
// ~15 FLOP + atan2: 27.3M parameters -> ~0.8 GB, ~0.18 ms at 4.3 TB/s. SignSGD: 13 B per element.
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

extern "C" __global__ void __launch_bounds__(256)
    sign_sgd_f32(float* __restrict__ w, const float* __restrict__ g,
                 const unsigned char* __restrict__ touched, long long rows, int row_len,
                 float lr, float decay) {
  const long long n = rows * row_len;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    if (!touched[i / row_len]) continue;
    const float gi = g[i];
    const float sign = gi > 0.0f ? 1.0f : (gi < 0.0f ? -1.0f : 0.0f);
    w[i] = w[i] * decay - lr * sign;
  }
}
EMU_REGISTER(sign_sgd_f32)

// The whole optimizer step in one launch (multi-tensor): `table` has 8 u64 per tensor
// (master, bf16 shadow, grad, m, v, ema or 0, length, rule | row_len << 8 with rule 0 =
// AdamATan2, 1 = SignSGD on rows with touched[row] != 0, 2 = frozen); block c updates chunk c
// of `chunk_elems` elements of tensor chunk_tensor[c] from chunk_start[c]: the rule's update,
// then the bf16 shadow, then ema = ema_decay * ema + (1 - ema_decay) * p when ema_decay >= 0
// (rounded multiplies and add, as the CPU). Nothing is written once status[0] records a bad
// step (the non-finite guard). Same per-element math as adam_atan2_f32 / sign_sgd_f32 / ema_f32.
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
    mark_touched_u8(const int* __restrict__ ids, int batch, unsigned char* __restrict__ touched,
                    int rows) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const int id = ids[b];
  if (id >= 0 && id < rows) touched[id] = 1;
}
EMU_REGISTER(mark_touched_u8)

extern "C" __global__ void __launch_bounds__(256)
    optim_multi_f32(const unsigned long long* __restrict__ table,
                    const int* __restrict__ chunk_tensor, const long long* __restrict__ chunk_start,
                    int chunk_elems, const unsigned char* __restrict__ touched,
                    const int* __restrict__ status, float decay, float w1, float w2, float lr,
                    float bc1_recip, float bc2_sqrt, float sign_lr, float sign_decay,
                    float ema_decay) {
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
  const unsigned row_len = (unsigned)(e[7] >> 8);
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
    } else if (rule == 1 && touched[(unsigned)i / row_len]) {
      const float gi = g[i];
      const float sign = gi > 0.0f ? 1.0f : (gi < 0.0f ? -1.0f : 0.0f);
      pi = pi * sign_decay - sign_lr * sign;
      p[i] = pi;
      shadow[i] = f2bf(pi);
    }
    if (ema != nullptr && ema_decay >= 0.0f)
      ema[i] = opt_add_rn(opt_mul_rn(ema_decay, ema[i]), opt_mul_rn(keep, pi));
  }
}
EMU_REGISTER(optim_multi_f32)
