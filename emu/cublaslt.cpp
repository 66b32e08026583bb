// Stand-in for libcublasLt for the CPU emulation (OUT_DIR/emu/libcublasLt.so, SONAME
// libcublasLt.so; loaded the same way as the libcuda stand-in, see emu/driver.cpp).
//
// Supports what src/backend/cuda/gemm.rs uses: D = alpha * op(A) op(B) + beta * C, column-major
// layouts, A/B in bf16 (CUDA_R_16BF), C/D in bf16 or f32, compute CUBLAS_COMPUTE_32F, host
// scalars, strided batches, the default epilogue. Products of bf16 values are exact in f32 and
// are summed in f32: the operand and accumulator precision of cuBLASLt (the summation order
// differs, so results agree to f32 rounding of the sum, not bit for bit). Anything else returns
// CUBLAS_STATUS_NOT_SUPPORTED so a test cannot silently pass on an unemulated path.
//
// On a capturing stream (CUDA graph capture in the libcuda stand-in) a matmul is checked now and
// recorded as a graph node (descriptors and host scalars copied, as cuBLASLt does); the
// operands are read when the graph is replayed.
#include <cuda_bf16.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {
enum Status {
  OK = 0,
  NOT_INITIALIZED = 1,
  INVALID_VALUE = 7,
  NOT_SUPPORTED = 15,
};
constexpr int R_32F = 0;
constexpr int R_16BF = 14;
constexpr int COMPUTE_32F = 68;

struct Layout {
  int type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t order = 0;  // CUBLASLT_ORDER_COL
  int32_t batch = 1;
  int64_t stride = 0;
};
struct Desc {
  int compute, scale;
  int32_t transa = 0, transb = 0, transc = 0;
  int32_t pointer_mode = 0;  // host
  uint32_t epilogue = 1;     // CUBLASLT_EPILOGUE_DEFAULT
};
struct Pref {};
struct Handle {};

int (*g_range_ok)(uint64_t, size_t) = nullptr;
using CaptureHost = int (*)(void*, int (*)(void*), void*, void (*)(void*), const uint64_t*, int);
CaptureHost g_capture = nullptr;
// Records fn(data) on `stream` when it is capturing (1), 0 when it is not (the driver first
// completes the copies still queued before it, so the caller can run it now), -1 on an
// invalidated capture. `ptrs` are the device pointers the operation touches (checked at replay).
int capture_host(void* stream, int (*fn)(void*), void* data, void (*free_fn)(void*),
                 const uint64_t* ptrs, int nptrs) {
  if (!g_capture) {
    void* h = dlopen("libcuda.so", RTLD_NOW | RTLD_NOLOAD);
    if (h) g_capture = reinterpret_cast<CaptureHost>(dlsym(h, "hrm_emu_capture_host"));
    if (!g_capture) return 0;  // driver stand-in not loaded: nothing can capture
  }
  return g_capture(stream, fn, data, free_fn, ptrs, nptrs);
}
bool range_ok(const void* p, size_t n) {
  if (!g_range_ok) {
    void* h = dlopen("libcuda.so", RTLD_NOW | RTLD_NOLOAD);
    if (h) g_range_ok = reinterpret_cast<int (*)(uint64_t, size_t)>(dlsym(h, "hrm_emu_mem_range_ok"));
    if (!g_range_ok) return true;  // driver stand-in not loaded: cannot check
  }
  return g_range_ok(reinterpret_cast<uint64_t>(p), n) != 0;
}

template <typename T>
bool set_attr(T& field, const void* buf, size_t size) {
  if (size != sizeof(T)) return false;
  std::memcpy(&field, buf, sizeof(T));
  return true;
}

float load(const void* base, int type, size_t i) {
  if (type == R_16BF) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}
void store(void* base, int type, size_t i, float v) {
  if (type == R_16BF)
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16(v);
  else
    static_cast<float*>(base)[i] = v;
}
size_t elem(int type) { return type == R_16BF ? 2 : 4; }
size_t span(const Layout& l) {  // elements touched by one matrix of the batch
  return l.cols == 0 ? 0 : static_cast<size_t>((l.cols - 1) * l.ld + l.rows);
}
}  // namespace

extern "C" {

int cublasLtCreate(Handle** h) {
  *h = new Handle();
  return OK;
}
int cublasLtDestroy(Handle* h) {
  delete h;
  return OK;
}
size_t cublasLtGetVersion() { return 130000; }

int cublasLtMatrixLayoutCreate(Layout** out, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  *out = new Layout{type, rows, cols, ld};
  return OK;
}
int cublasLtMatrixLayoutDestroy(Layout* l) {
  delete l;
  return OK;
}
int cublasLtMatrixLayoutSetAttribute(Layout* l, int attr, const void* buf, size_t size) {
  bool ok;
  switch (attr) {
    case 0: ok = set_attr(l->type, buf, size); break;     // TYPE (uint32)
    case 1: ok = set_attr(l->order, buf, size); break;    // ORDER
    case 2: ok = set_attr(l->rows, buf, size); break;     // ROWS
    case 3: ok = set_attr(l->cols, buf, size); break;     // COLS
    case 4: ok = set_attr(l->ld, buf, size); break;       // LD
    case 5: ok = set_attr(l->batch, buf, size); break;    // BATCH_COUNT
    case 6: ok = set_attr(l->stride, buf, size); break;   // STRIDED_BATCH_OFFSET
    default: return NOT_SUPPORTED;
  }
  return ok ? OK : INVALID_VALUE;
}

int cublasLtMatmulDescCreate(Desc** out, int compute, int scale) {
  *out = new Desc{compute, scale};
  return OK;
}
int cublasLtMatmulDescDestroy(Desc* d) {
  delete d;
  return OK;
}
int cublasLtMatmulDescSetAttribute(Desc* d, int attr, const void* buf, size_t size) {
  bool ok;
  switch (attr) {
    case 2: ok = set_attr(d->pointer_mode, buf, size); break;
    case 3: ok = set_attr(d->transa, buf, size); break;
    case 4: ok = set_attr(d->transb, buf, size); break;
    case 5: ok = set_attr(d->transc, buf, size); break;
    case 7: ok = set_attr(d->epilogue, buf, size); break;
    default: return NOT_SUPPORTED;
  }
  return ok ? OK : INVALID_VALUE;
}

int cublasLtMatmulPreferenceCreate(Pref** p) {
  *p = new Pref();
  return OK;
}
int cublasLtMatmulPreferenceDestroy(Pref* p) {
  delete p;
  return OK;
}
int cublasLtMatmulPreferenceSetAttribute(Pref*, int, const void*, size_t) { return OK; }

struct HeuristicResult {
  uint64_t algo[8];
  size_t workspace;
  int state;
  float waves;
  int reserved[4];
};
int cublasLtMatmulAlgoGetHeuristic(Handle*, Desc* d, Layout* a, Layout* b, Layout* c, Layout* dl,
                                   Pref*, int requested, HeuristicResult* out, int* count) {
  *count = 0;
  if (requested < 1) return INVALID_VALUE;
  bool supported = d->compute == COMPUTE_32F && d->scale == R_32F && a->type == R_16BF &&
                   b->type == R_16BF && (c->type == R_16BF || c->type == R_32F) &&
                   dl->type == c->type && d->epilogue == 1 && d->pointer_mode == 0 &&
                   d->transc == 0 && a->order == 0 && b->order == 0 && c->order == 0 &&
                   dl->order == 0;
  if (!supported) return NOT_SUPPORTED;
  std::memset(out, 0, sizeof *out);
  out->waves = 1.0f;
  *count = 1;
  return OK;
}

}  // extern "C"

namespace {
// Everything one matmul needs, by value (a captured node outlives the caller's descriptors).
struct Matmul {
  Desc d;
  Layout la, lb, lc, ld;
  float alpha, beta;
  const void* A;
  const void* B;
  const void* C;
  void* D;
};

int check_matmul(const Matmul& mm) {
  const Desc* d = &mm.d;
  const Layout *la = &mm.la, *lb = &mm.lb, *lc = &mm.lc, *ld = &mm.ld;
  if (d->compute != COMPUTE_32F || d->scale != R_32F || la->type != R_16BF ||
      lb->type != R_16BF || lc->type != ld->type || d->epilogue != 1 || d->pointer_mode != 0)
    return NOT_SUPPORTED;
  uint64_t m = ld->rows, n = ld->cols;
  uint64_t k = d->transa ? la->rows : la->cols;
  uint64_t am = d->transa ? la->cols : la->rows;
  uint64_t bk = d->transb ? lb->cols : lb->rows;
  uint64_t bn = d->transb ? lb->rows : lb->cols;
  if (am != m || bk != k || bn != n || lc->rows != m || lc->cols != n) return INVALID_VALUE;
  if (la->ld < static_cast<int64_t>(la->rows) || lb->ld < static_cast<int64_t>(lb->rows) ||
      ld->ld < static_cast<int64_t>(m) || lc->ld < static_cast<int64_t>(m))
    return INVALID_VALUE;
  int batch = ld->batch;
  if (la->batch != batch || lb->batch != batch || lc->batch != batch) return INVALID_VALUE;
  return OK;
}

int run_matmul(const Matmul& mm) {
  if (int rc = check_matmul(mm)) return rc;
  const Desc* d = &mm.d;
  const Layout *la = &mm.la, *lb = &mm.lb, *lc = &mm.lc, *ld = &mm.ld;
  // op(A): m x k, op(B): k x n, C/D: m x n (column-major).
  uint64_t m = ld->rows, n = ld->cols;
  uint64_t k = d->transa ? la->rows : la->cols;
  int batch = ld->batch;
  float al = mm.alpha, be = mm.beta;
  for (int bi = 0; bi < batch; ++bi) {
    const char* a = static_cast<const char*>(mm.A) + bi * la->stride * 2;
    const char* b = static_cast<const char*>(mm.B) + bi * lb->stride * 2;
    const char* c = static_cast<const char*>(mm.C) + bi * lc->stride * elem(lc->type);
    char* dd = static_cast<char*>(mm.D) + bi * ld->stride * elem(ld->type);
    if (!range_ok(a, span(*la) * 2) || !range_ok(b, span(*lb) * 2) ||
        (be != 0.0f && !range_ok(c, span(*lc) * elem(lc->type))) ||
        !range_ok(dd, span(*ld) * elem(ld->type))) {
      fprintf(stderr, "hrm-emu: cublasLtMatmul operand out of its device allocation\n");
      return INVALID_VALUE;
    }
    // Unpack op(A) as m x k and op(B) as k x n, row-contiguous over k, into f32 (exact).
    std::vector<float> ta(m * k), tb(n * k);
    for (uint64_t i = 0; i < m; ++i)
      for (uint64_t p = 0; p < k; ++p)
        ta[i * k + p] = load(a, R_16BF, d->transa ? i * la->ld + p : p * la->ld + i);
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t p = 0; p < k; ++p)
        tb[j * k + p] = load(b, R_16BF, d->transb ? p * lb->ld + j : j * lb->ld + p);
    for (uint64_t j = 0; j < n; ++j) {
      for (uint64_t i = 0; i < m; ++i) {
        const float* x = &ta[i * k];
        const float* y = &tb[j * k];
        float acc = 0.0f;
        for (uint64_t p = 0; p < k; ++p) acc += x[p] * y[p];
        float v = al * acc;
        if (be != 0.0f) v += be * load(c, lc->type, j * lc->ld + i);
        store(dd, ld->type, j * ld->ld + i, v);
      }
    }
  }
  return OK;
}
int run_matmul_node(void* p) { return run_matmul(*static_cast<const Matmul*>(p)); }
void free_matmul_node(void* p) { delete static_cast<Matmul*>(p); }
}  // namespace

extern "C" {
// Matmuls the host issued outside a capture so far (see hrm_emu_launch_count in driver.cpp).
static unsigned long long g_matmuls = 0;
unsigned long long hrm_emu_matmul_count() { return g_matmuls; }

int cublasLtMatmul(Handle*, Desc* d, const float* alpha, const void* A, Layout* la, const void* B,
                   Layout* lb, const float* beta, const void* C, Layout* lc, void* D, Layout* ld,
                   const void*, void*, size_t, void* stream) {
  auto* mm = new Matmul{*d, *la, *lb, *lc, *ld, *alpha, *beta, A, B, C, D};
  if (int rc = check_matmul(*mm)) {
    delete mm;
    return rc;
  }
  const uint64_t ptrs[4] = {reinterpret_cast<uint64_t>(A), reinterpret_cast<uint64_t>(B),
                            reinterpret_cast<uint64_t>(*beta != 0.0f ? C : nullptr),
                            reinterpret_cast<uint64_t>(D)};
  int captured = capture_host(stream, run_matmul_node, mm, free_matmul_node, ptrs, 4);
  if (captured == 1) return OK;  // the graph node owns mm now
  if (captured < 0) {
    delete mm;
    fprintf(stderr, "hrm-emu: cublasLtMatmul on an invalidated stream capture\n");
    return INVALID_VALUE;
  }
  ++g_matmuls;
  int rc = run_matmul(*mm);
  delete mm;
  return rc;
}

}  // extern "C"
