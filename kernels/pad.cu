// Zero-padded copies for the tensor-core GEMMs of TRM's token mixing (see transpose.cu): its
// weights are [2t, S] and [S, t] with S = 97 positions for Sudoku, and the GEMMs run over rows
// of S_ld = 104 (a multiple of 8).
//   pad_bf16:        dst[r, c] = src[r, c] for r < rows, c < cols, else 0; dst is
//                    rows_ld x cols_ld, src rows x cols (a weight's bf16 copy, padded before
//                    each GEMM that reads it, so no padded copy can go stale after an update)
//   add_unpad_f32:   dst[r, c] += src[r, c] for c < cols, src with rows of src_ld (a weight
//                    gradient computed over the padded rows, accumulated into its real shape)
// One thread per destination element, grid-stride. Napkin cost (t = 512, S = 97): 100K
// elements, 0.4 MB, ~1 us; negligible beside the GEMMs (~80 GFLOP per weight gradient at
// batch 768).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    pad_bf16(const bf16* __restrict__ src, bf16* __restrict__ dst, int rows, int cols,
             int rows_ld, int cols_ld) {
  const size_t n = (size_t)rows_ld * cols_ld;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const int r = (int)(i / cols_ld), c = (int)(i % cols_ld);
    dst[i] = (r < rows && c < cols) ? src[(size_t)r * cols + c] : f2bf(0.0f);
  }
}
EMU_REGISTER(pad_bf16)

extern "C" __global__ void __launch_bounds__(256)
    add_unpad_f32(const float* __restrict__ src, float* __restrict__ dst, int rows, int cols,
                  int src_ld) {
  const size_t n = (size_t)rows * cols;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const int r = (int)(i / cols), c = (int)(i % cols);
    dst[i] += src[(size_t)r * src_ld + c];
  }
}
EMU_REGISTER(add_unpad_f32)
