// Self-test kernels of the tensor-core wrappers of common.cuh (mma_bf16_16816, ldsm_*), run by
// tests/kernels_mma.rs against a plain f32 matrix product, on the GPU and under the emulation.
// `fault` plants a fragment-layout bug in the emulation (emu::plant_tensor_core_fault; 0 on a
// GPU) so the test can show its comparison catches a wrong layout. Not used by the model.
// Napkin cost: irrelevant (test-only, tiny inputs).
#include "common.cuh"

static __device__ __forceinline__ void mma_plant_fault(int fault) {
#ifdef HRM_EMU
  if (fault) emu::plant_tensor_core_fault(fault);
#else
  (void)fault;
#endif
}

static __device__ __forceinline__ unsigned ld_pair(const bf16* p) {
  unsigned r;
  memcpy(&r, p, 4);
  return r;
}

// One m16n8k16 product, fragments read straight from global memory with the documented layout
// (no ldmatrix): d[16][8] = a[16][16] b[16][8] + c[16][8], all row-major. One warp.
extern "C" __global__ void mma_selftest_single(const bf16* a, const bf16* b, const float* c,
                                               float* d, int fault) {
  mma_plant_fault(fault);
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned af[4], bf[2];
  af[0] = ld_pair(a + g * 16 + 2 * t);
  af[1] = ld_pair(a + (g + 8) * 16 + 2 * t);
  af[2] = ld_pair(a + g * 16 + 2 * t + 8);
  af[3] = ld_pair(a + (g + 8) * 16 + 2 * t + 8);
  for (int i = 0; i < 2; ++i) {
    const int k = 2 * t + 8 * i;
    bf[i] = pack_bf16x2(bf2f(b[k * 8 + g]), bf2f(b[(k + 1) * 8 + g]));
  }
  float cf[4], df[4];
  for (int i = 0; i < 4; ++i) cf[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mma_bf16_16816(df, af, bf, cf);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = df[i];
}
EMU_REGISTER(mma_selftest_single)

#define MMA_LD 24  // shared row stride in elements (48 bytes: rows stay 16-byte aligned)

// c[m][n] = sum_k a[m][k] b[k][n] (row-major, m, n, k multiples of 16), one warp per 16x16 tile
// of c (grid (n/16, m/16), 32 threads), k in steps of 16 through shared memory. `mode` picks how
// the fragments are loaded, so that every ldmatrix variant is exercised:
//   0: A by ldsm_x4 from A, B by ldsm_x4_trans from B          (2 n-tiles per load)
//   1: A by 2 ldsm_x2 from A, B by ldsm_x2_trans per n-tile
//   2: A by 4 ldsm_x1 from A, B by 4 ldsm_x1_trans
//   3: A by ldsm_x4_trans from A^T, B by ldsm_x4 from B^T       (the transposed copies)
//   4: like 0 with a[1] and a[2] swapped: a BROKEN kernel (wrong fragment index)
extern "C" __global__ void __launch_bounds__(32)
    mma_selftest_tiled(const bf16* a, const bf16* b, float* c, int m, int n, int k, int mode,
                       int fault) {
  mma_plant_fault(fault);
  alignas(16) __shared__ bf16 as[16 * MMA_LD], bs[16 * MMA_LD];    // A[m][k], B[k][n]
  alignas(16) __shared__ bf16 ats[16 * MMA_LD], bts[16 * MMA_LD];  // A^T[k][m], B^T[n][k]
  const int lane = threadIdx.x & 31, j = lane & 7, mat = lane >> 3;
  const int row0 = blockIdx.y * 16, col0 = blockIdx.x * 16;
  float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
  for (int k0 = 0; k0 < k; k0 += 16) {
    __syncwarp();
    for (int i = lane; i < 256; i += 32) {
      const int r = i >> 4, q = i & 15;
      const bf16 av = a[(size_t)(row0 + r) * k + k0 + q];
      const bf16 bv = b[(size_t)(k0 + r) * n + col0 + q];
      as[r * MMA_LD + q] = av;
      ats[q * MMA_LD + r] = av;
      bs[r * MMA_LD + q] = bv;
      bts[q * MMA_LD + r] = bv;
    }
    __syncwarp();
    unsigned af[4], bf[2][2];
    if (mode == 0 || mode == 4) {
      ldsm_x4(af, as + (lane & 15) * MMA_LD + (lane >> 4) * 8);
      unsigned r4[4];
      ldsm_x4_trans(r4, bs + ((mat & 1) * 8 + j) * MMA_LD + (mat >> 1) * 8);
      bf[0][0] = r4[0], bf[0][1] = r4[1], bf[1][0] = r4[2], bf[1][1] = r4[3];
      if (mode == 4) {
        const unsigned x = af[1];
        af[1] = af[2];
        af[2] = x;
      }
    } else if (mode == 1) {
      unsigned r2[2];
      ldsm_x2(r2, as + (lane & 15) * MMA_LD);  // lanes 16..31: ignored, valid addresses
      af[0] = r2[0], af[1] = r2[1];
      ldsm_x2(r2, as + (lane & 15) * MMA_LD + 8);
      af[2] = r2[0], af[3] = r2[1];
      for (int nt = 0; nt < 2; ++nt) {
        ldsm_x2_trans(r2, bs + (lane & 15) * MMA_LD + nt * 8);
        bf[nt][0] = r2[0], bf[nt][1] = r2[1];
      }
    } else if (mode == 2) {
      for (int i = 0; i < 4; ++i) {
        unsigned r1[1];
        ldsm_x1(r1, as + ((i & 1) * 8 + j) * MMA_LD + (i >> 1) * 8);
        af[i] = r1[0];
        ldsm_x1_trans(r1, bs + ((i & 1) * 8 + j) * MMA_LD + (i >> 1) * 8);
        bf[i >> 1][i & 1] = r1[0];
      }
    } else {
      ldsm_x4_trans(af, ats + ((mat >> 1) * 8 + j) * MMA_LD + (mat & 1) * 8);
      unsigned r4[4];
      ldsm_x4(r4, bts + ((mat >> 1) * 8 + j) * MMA_LD + (mat & 1) * 8);
      bf[0][0] = r4[0], bf[0][1] = r4[1], bf[1][0] = r4[2], bf[1][1] = r4[3];
    }
    for (int nt = 0; nt < 2; ++nt) mma_bf16_16816(acc[nt], af, bf[nt], acc[nt]);
  }
  const int g = lane >> 2, t = lane & 3;
  for (int nt = 0; nt < 2; ++nt)
    for (int i = 0; i < 4; ++i)
      c[(size_t)(row0 + g + 8 * (i >> 1)) * n + col0 + nt * 8 + 2 * t + (i & 1)] = acc[nt][i];
}
EMU_REGISTER(mma_selftest_tiled)

// BROKEN: only lanes 0..15 reach the mma (the others return first); the emulation must refuse
// it (undefined on a GPU, never launched there).
extern "C" __global__ void mma_selftest_partial_warp(float* d) {
  if ((threadIdx.x & 31) >= 16) return;
  unsigned af[4] = {0, 0, 0, 0}, bf[2] = {0, 0};
  float cf[4] = {0, 0, 0, 0};
  mma_bf16_16816(cf, af, bf, cf);
  d[threadIdx.x] = cf[0];
}
EMU_REGISTER(mma_selftest_partial_warp)
