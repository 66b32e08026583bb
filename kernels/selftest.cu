// Kernels for the emulation's self-test (tests/emulation.rs), not used by the model: a correct
// block reduction and deliberately broken twins (a missing __syncthreads, an off-by-one index),
// a warp-shuffle reduction, a dynamic-shared-memory kernel, and a divergent barrier. The tests
// show that the CPU emulation gets the correct ones right and catches each broken one.
// Napkin cost: irrelevant (test-only, tiny inputs).
#include "common.cuh"

// Tree reduction in shared memory; blockDim.x must be a power of two <= 256.
extern "C" __global__ void selftest_block_sum(const float* x, float* out, int n) {
  __shared__ float s[256];
  const int t = threadIdx.x;
  float v = 0.0f;
  for (int i = t; i < n; i += blockDim.x) v += x[i];
  s[t] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}
EMU_REGISTER(selftest_block_sum)

// BROKEN: the barrier inside the reduction loop is missing.
extern "C" __global__ void selftest_block_sum_missing_sync(const float* x, float* out, int n) {
  __shared__ float s[256];
  const int t = threadIdx.x;
  float v = 0.0f;
  for (int i = t; i < n; i += blockDim.x) v += x[i];
  s[t] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
  }
  if (t == 0) out[blockIdx.x] = s[0];
}
EMU_REGISTER(selftest_block_sum_missing_sync)

// BROKEN: the bounds check is off by one (writes y[n]).
extern "C" __global__ void selftest_scale_off_by_one(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 2.0f * x[i];
}
EMU_REGISTER(selftest_scale_off_by_one)

// Correct twin of the above.
extern "C" __global__ void selftest_scale(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2.0f * x[i];
}
EMU_REGISTER(selftest_scale)

// Warp-shuffle block sum through common.cuh's block_sum (shuffles + shared memory).
extern "C" __global__ void selftest_shuffle_sum(const float* x, float* out, int n) {
  __shared__ float scratch[32];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  v = block_sum(v, scratch);
  // every thread got the total: thread-specific check written by all
  if (threadIdx.x == blockDim.x - 1) out[blockIdx.x] = v;
}
EMU_REGISTER(selftest_shuffle_sum)

// Reverses each block's chunk through dynamic shared memory; `sync` = 0 drops the barrier.
extern "C" __global__ void selftest_reverse_dyn(const float* x, float* y, int sync) {
  HRM_DYN_SHARED(float, s);
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  s[t] = x[base + t];
  if (sync) __syncthreads();
  y[base + t] = s[blockDim.x - 1 - t];
}
EMU_REGISTER(selftest_reverse_dyn)

// BROKEN: the two halves of the block wait at different barriers (undefined in CUDA; the
// emulation reports it). Never launched on a real GPU.
extern "C" __global__ void selftest_divergent_barrier(float* y) {
  __shared__ float s[64];
  if (threadIdx.x < 32) {
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x ^ 1];
  } else {
    __syncthreads();
    y[threadIdx.x] = 2.0f * s[threadIdx.x - 32];
  }
}
EMU_REGISTER(selftest_divergent_barrier)

// BROKEN: only block 0 fills the static shared buffer; every block reads it. On a GPU the other
// blocks read whatever their SM's shared memory held; the emulation re-poisons static shared
// memory before every block, so they read NaN.
extern "C" __global__ void selftest_smem_stale(const float* x, float* y) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  if (blockIdx.x == 0) s[t] = x[t];
  __syncthreads();
  y[blockIdx.x * blockDim.x + t] = s[t];
}
EMU_REGISTER(selftest_smem_stale)

// Correct twin: every block fills its own buffer.
extern "C" __global__ void selftest_smem_own(const float* x, float* y) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  y[blockIdx.x * blockDim.x + t] = s[blockDim.x - 1 - t];
}
EMU_REGISTER(selftest_smem_own)

// Declares at most 64 threads per block: a launch with more must fail.
extern "C" __global__ void __launch_bounds__(64) selftest_bounded64(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] + 1.0f;
}
EMU_REGISTER(selftest_bounded64)

// Order-dependent on purpose: every block stores its index into y[0] (the last block to run
// wins) and adds a value of its own magnitude into y[1] with a float atomic (the rounding of
// the sum depends on the order of the additions). A GPU promises no block order; the
// emulation shuffles it per launch, so both results change between launches.
extern "C" __global__ void selftest_block_order(const float* x, float* y, int n) {
  if (threadIdx.x != 0 || (int)blockIdx.x >= n) return;
  y[0] = (float)blockIdx.x;
  atomicAdd(&y[1], x[blockIdx.x]);
}
EMU_REGISTER(selftest_block_order)

// 8 floats from x + offset through the 16-byte vector load (common.cuh): offset 0 is aligned,
// any offset not a multiple of 4 is a misaligned 16-byte access (a fault on the GPU). `offset`
// > 0 is BROKEN on purpose and only launched under the emulation.
extern "C" __global__ void selftest_vector_load(const float* x, float* y, int offset) {
  if (threadIdx.x != 0) return;
  float v[8];
  load_f32x8(x + offset, v);
  for (int i = 0; i < 8; ++i) y[i] = v[i];
}
EMU_REGISTER(selftest_vector_load)

// ldmatrix from shared memory (correct) or, with from_global != 0, straight from global memory
// (BROKEN: ldmatrix takes .shared addresses only; emulation only). One warp.
extern "C" __global__ void selftest_ldmatrix_space(const bf16* x, float* y, int from_global) {
  __shared__ __align__(16) bf16 tile[8 * 8];
  const int lane = threadIdx.x;
  for (int i = lane; i < 64; i += 32) tile[i] = x[i];
  __syncwarp();
  unsigned r[1];
  ldsm_x1(r, (from_global ? x : tile) + 8 * (lane & 7));
  y[lane] = (float)(r[0] & 0xffffu);
}
EMU_REGISTER(selftest_ldmatrix_space)
