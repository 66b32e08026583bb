// SwiGLU on the fused gate_up projection output (row = [gate (inter) | up (inter)]):
//   forward:  out = silu(gate) * up,  silu(g) = g * sigmoid(g)
//   backward: d gate = dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  d up = dout * silu(g)
// bf16 in/out, f32 math. Fast path (inter a multiple of 8, 16-byte aligned buffers, fewer than
// 2^32 vectors): one thread per vector of 8 elements, grid-stride with a 32-bit index and ONE
// 32-bit division per 8 elements (row = i / (inter/8)), 128-bit loads and stores. Otherwise a
// scalar grid-stride loop (32-bit division unless the element count needs 64 bits).
// Napkin cost (B = 768, S = 82: 62,976 rows, inter = 1536: 96.7M elements): forward reads 4 B
// and writes 2 B per element = 580 MB, 121 us at 4.8 TB/s (~8 FLOP/element, 0.8 GFLOP);
// backward reads 6 B and writes 4 B per element = 967 MB, 201 us.
#include "common.cuh"

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

static __device__ __forceinline__ bool swiglu_vec_ok(long long rows, int inter) {
  return (inter & 7) == 0 && rows * (long long)(inter >> 3) < 4294967296LL;
}

// Scalar paths (any inter, any alignment); I = unsigned when the element count fits 32 bits.
template <typename I>
static __device__ __forceinline__ void swiglu_fwd_scalar(const bf16* __restrict__ gate_up,
                                                         bf16* __restrict__ out, I n, int inter,
                                                         unsigned tid, unsigned stride) {
  for (unsigned long long i64 = tid; i64 < n; i64 += stride) {
    const I i = (I)i64;
    const I row = i / (I)inter;
    const int j = (int)(i - row * (I)inter);
    const bf16* gu = gate_up + (size_t)row * 2 * inter;
    const float g = bf2f(gu[j]), u = bf2f(gu[inter + j]);
    out[i] = f2bf(g * sigmoidf_(g) * u);
  }
}
template <typename I>
static __device__ __forceinline__ void swiglu_bwd_scalar(const bf16* __restrict__ dout,
                                                         const bf16* __restrict__ gate_up,
                                                         bf16* __restrict__ dgate_up, I n,
                                                         int inter, unsigned tid,
                                                         unsigned stride) {
  for (unsigned long long i64 = tid; i64 < n; i64 += stride) {
    const I i = (I)i64;
    const I row = i / (I)inter;
    const int j = (int)(i - row * (I)inter);
    const bf16* gu = gate_up + (size_t)row * 2 * inter;
    bf16* dgu = dgate_up + (size_t)row * 2 * inter;
    const float g = bf2f(gu[j]), u = bf2f(gu[inter + j]), d = bf2f(dout[i]);
    const float s = sigmoidf_(g);
    dgu[j] = f2bf(d * u * s * (1.0f + g * (1.0f - s)));
    dgu[inter + j] = f2bf(d * g * s);
  }
}

extern "C" __global__ void __launch_bounds__(256)
    swiglu_fwd_bf16(const bf16* __restrict__ gate_up, bf16* __restrict__ out, long long rows,
                    int inter) {
  const unsigned stride = gridDim.x * blockDim.x;
  const unsigned tid = blockIdx.x * blockDim.x + threadIdx.x;
  if (swiglu_vec_ok(rows, inter) && aligned16(gate_up) && aligned16(out)) {
    const unsigned nv = (unsigned)(inter >> 3);
    const unsigned n = (unsigned)(rows * nv);
    for (unsigned long long i64 = tid; i64 < n; i64 += stride) {
      const unsigned i = (unsigned)i64;
      const unsigned row = i / nv;
      const unsigned jv = i - row * nv;
      const bf16* gu = gate_up + (size_t)row * 2 * inter + 8 * jv;
      float g[8], u[8], o[8];
      load_bf16x8(gu, g);
      load_bf16x8(gu + inter, u);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = g[e] * sigmoidf_(g[e]) * u[e];
      store_bf16x8(out + (size_t)i * 8, o);
    }
    return;
  }
  if (rows * inter < 4294967296LL)
    swiglu_fwd_scalar<unsigned>(gate_up, out, (unsigned)(rows * inter), inter, tid, stride);
  else
    swiglu_fwd_scalar<unsigned long long>(gate_up, out, rows * inter, inter, tid, stride);
}
EMU_REGISTER(swiglu_fwd_bf16)

extern "C" __global__ void __launch_bounds__(256)
    swiglu_bwd_bf16(const bf16* __restrict__ dout, const bf16* __restrict__ gate_up,
                    bf16* __restrict__ dgate_up, long long rows, int inter) {
  const unsigned stride = gridDim.x * blockDim.x;
  const unsigned tid = blockIdx.x * blockDim.x + threadIdx.x;
  if (swiglu_vec_ok(rows, inter) && aligned16(dout) && aligned16(gate_up) &&
      aligned16(dgate_up)) {
    const unsigned nv = (unsigned)(inter >> 3);
    const unsigned n = (unsigned)(rows * nv);
    for (unsigned long long i64 = tid; i64 < n; i64 += stride) {
      const unsigned i = (unsigned)i64;
      const unsigned row = i / nv;
      const unsigned jv = i - row * nv;
      const size_t off = (size_t)row * 2 * inter + 8 * jv;
      float g[8], u[8], d[8], dg[8], du[8];
      load_bf16x8(gate_up + off, g);
      load_bf16x8(gate_up + off + inter, u);
      load_bf16x8(dout + (size_t)i * 8, d);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float s = sigmoidf_(g[e]);
        dg[e] = d[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
        du[e] = d[e] * g[e] * s;
      }
      store_bf16x8(dgate_up + off, dg);
      store_bf16x8(dgate_up + off + inter, du);
    }
    return;
  }
  if (rows * inter < 4294967296LL)
    swiglu_bwd_scalar<unsigned>(dout, gate_up, dgate_up, (unsigned)(rows * inter), inter, tid,
                                stride);
  else
    swiglu_bwd_scalar<unsigned long long>(dout, gate_up, dgate_up, rows * inter, inter, tid,
                                          stride);
}
EMU_REGISTER(swiglu_bwd_bf16)
