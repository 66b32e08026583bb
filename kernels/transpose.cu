// Batched transpose of bf16 matrices: y[b, c, r] = x[b, r, c] for `batch` matrices of
// rows x cols, x stored with rows of x_ld >= cols (the columns past `cols` are not read) and y
// with rows of y_ld >= rows, whose pad columns rows..y_ld are written 0. TRM's token-mixing MLP
// works along the sequence axis, so each of its blocks moves [batch, seq, hidden] to
// [batch, hidden, seq_ld] and back (twice forward, twice backward); seq_ld rounds the 97
// positions of Sudoku up to 104, a multiple of 8, which the tensor-core GEMMs over that axis
// want, and the zero pads leave their sums alone.
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
// emulation must catch). The grid's y axis covers y_ld (not just rows), so the tiles past
// `rows` write the pads.
template <bool sync>
static __device__ __forceinline__ void transpose_tile(const bf16* __restrict__ x,
                                                      bf16* __restrict__ y, int rows, int cols,
                                                      int x_ld, int y_ld,
                                                      bf16 (*tile)[TR_TILE + 1]) {
  const bf16* xb = x + (size_t)blockIdx.z * rows * x_ld;
  bf16* yb = y + (size_t)blockIdx.z * cols * y_ld;
  const int c0 = blockIdx.x * TR_TILE, r0 = blockIdx.y * TR_TILE;
  const int tx = threadIdx.x, ty = threadIdx.y;
  // load x[r0 + i, c0 + tx] (coalesced along the columns of x); 0 past the last row
  for (int i = ty; i < TR_TILE; i += TR_ROWS) {
    const int r = r0 + i, c = c0 + tx;
    if (c < cols) tile[i][tx] = r < rows ? xb[(size_t)r * x_ld + c] : f2bf(0.0f);
  }
  if (sync) __syncthreads();
  // store y[c0 + i, r0 + tx] = x[r0 + tx, c0 + i] (coalesced along the columns of y)
  for (int i = ty; i < TR_TILE; i += TR_ROWS) {
    const int c = c0 + i, r = r0 + tx;
    if (c < cols && r < y_ld) yb[(size_t)c * y_ld + r] = tile[tx][i];
  }
}

extern "C" __global__ void __launch_bounds__(TR_TILE * TR_ROWS)
    transpose_bf16(const bf16* __restrict__ x, bf16* __restrict__ y, int rows, int cols,
                   int x_ld, int y_ld) {
  __shared__ bf16 tile[TR_TILE][TR_TILE + 1];
  transpose_tile<true>(x, y, rows, cols, x_ld, y_ld, tile);
}
EMU_REGISTER(transpose_bf16)

// BROKEN twin for the emulation's self-test (tests/kernels_transpose.rs): the barrier between
// the tile's stores and loads is missing.
extern "C" __global__ void __launch_bounds__(TR_TILE * TR_ROWS)
    transpose_bf16_missing_sync(const bf16* __restrict__ x, bf16* __restrict__ y, int rows,
                                int cols, int x_ld, int y_ld) {
  __shared__ bf16 tile[TR_TILE][TR_TILE + 1];
  transpose_tile<false>(x, y, rows, cols, x_ld, y_ld, tile);
}
EMU_REGISTER(transpose_bf16_missing_sync)
