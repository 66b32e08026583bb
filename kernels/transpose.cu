// Batched transpose of bf16 matrices: y[b, c, r] = x[b, r, c] for `batch` matrices of
// rows x cols. TRM's token-mixing MLP works along the sequence axis, so each of its blocks moves
// [batch, seq, hidden] to [batch, hidden, seq] and back (twice forward, twice backward).
// Tiled through shared memory so both the loads and the stores are coalesced: a 32 x 32 tile
// per block of 32 x 8 threads, each thread moving 4 elements in and 4 out; the tile is padded to
// 33 columns so a warp's column-wise reads spread over the banks. Any rows/cols (edge tiles
// check bounds); the values are copied, not rounded (bit-exact).
// Napkin cost (TRM Sudoku, B = 768, S = 97, hidden 512: 38.1M elements): 76 MB read + 76 MB
// written, ~32 us at 4.8 TB/s; no FLOPs.
#include "common.cuh"

#define TR_TILE 32
#define TR_ROWS 8

// `sync` is false only in the self-test's twin (a planted missing barrier, which the
// emulation must catch).
template <bool sync>
static __device__ __forceinline__ void transpose_tile(const bf16* __restrict__ x,
                                                      bf16* __restrict__ y, int rows, int cols,
                                                      bf16 (*tile)[TR_TILE + 1]) {
  const size_t mat = (size_t)rows * cols;
  const bf16* xb = x + (size_t)blockIdx.z * mat;
  bf16* yb = y + (size_t)blockIdx.z * mat;
  const int c0 = blockIdx.x * TR_TILE, r0 = blockIdx.y * TR_TILE;
  const int tx = threadIdx.x, ty = threadIdx.y;
  // load x[r0 + i, c0 + tx] (coalesced along the columns of x)
  for (int i = ty; i < TR_TILE; i += TR_ROWS) {
    const int r = r0 + i, c = c0 + tx;
    if (r < rows && c < cols) tile[i][tx] = xb[(size_t)r * cols + c];
  }
  if (sync) __syncthreads();
  // store y[c0 + i, r0 + tx] = x[r0 + tx, c0 + i] (coalesced along the columns of y)
  for (int i = ty; i < TR_TILE; i += TR_ROWS) {
    const int c = c0 + i, r = r0 + tx;
    if (c < cols && r < rows) yb[(size_t)c * rows + r] = tile[tx][i];
  }
}

extern "C" __global__ void __launch_bounds__(TR_TILE * TR_ROWS)
    transpose_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, int rows, int cols) {
  __shared__ bf16 tile[TR_TILE][TR_TILE + 1];
  transpose_tile<true>(x, y, rows, cols, tile);
}
EMU_REGISTER(transpose_bf16)

// BROKEN twin for the emulation's self-test (tests/kernels_transpose.rs): the barrier between
// the tile's stores and loads is missing.
extern "C" __global__ void __launch_bounds__(TR_TILE * TR_ROWS)
    transpose_bf16_missing_sync(const bf16* __restrict__ x, bf16* __restrict__ y, int rows,
                                int cols) {
  __shared__ bf16 tile[TR_TILE][TR_TILE + 1];
  transpose_tile<false>(x, y, rows, cols, tile);
}
EMU_REGISTER(transpose_bf16_missing_sync)
