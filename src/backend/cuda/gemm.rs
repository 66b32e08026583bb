//! bf16 GEMMs through cuBLASLt: bf16 operands, f32 accumulation (`CUBLAS_COMPUTE_32F`), bf16
//! or f32 output. One plan (descriptors + the heuristic's algorithm) is cached per shape, so the
//! heuristic runs once per shape rather than on every call (cudarc's `CudaBlasLT::matmul` runs
//! it on every call).
//!
//! Row-major interface: `C[m, n] = alpha * op(A) op(B) + beta * C`, with A stored `[m, k]`
//! (`[k, m]` when `a_trans`) and B stored `[k, n]` (`[n, k]` when `b_trans`). cuBLASLt is
//! column-major, so it computes `C^T = op(B)^T op(A)^T`: B is passed as its "A" operand.
//! For a linear layer with a PyTorch `[out, in]` weight: `y = x W^T` is
//! `matmul(rows, out, in, x, false, w, true)`; `dx = dy W` is `(rows, in, out, dy, false, w,
//! false)`; `dW = dy^T x` is `(out, in, rows, dy, true, x, false)` (f32 output, beta 1 to
//! accumulate).
//!
//! [`Gemm::matmul_ld`] takes explicit row strides (leading dimensions) for operands that are a
//! window of a wider buffer (TRM's token mixing, rows of 97 positions stored 104 apart).
//! Tensor-core kernels want every leading dimension a multiple of 8 elements (16 bytes of
//! bf16); [`Gemm::unaligned_plans`] counts the plans that break that, so a test can hold a
//! model's GEMMs to it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow, bail};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;

/// Output element types the GEMM writes.
pub trait GemmOutput: DeviceRepr {
    const DTYPE: sys::cudaDataType;
}
impl GemmOutput for bf16 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
}
impl GemmOutput for f32 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    a_trans: bool,
    b_trans: bool,
    out_f32: bool,
    ld: Ld,
}

/// Row strides (leading dimensions, in elements) of the row-major A, B and C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ld {
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

impl Ld {
    /// The packed strides of `matmul`'s shapes.
    pub fn packed(m: usize, n: usize, k: usize, a_trans: bool, b_trans: bool) -> Self {
        Ld { a: if a_trans { m } else { k }, b: if b_trans { k } else { n }, c: n }
    }

    /// Whether every stride is a multiple of 8 elements (16 bytes of bf16, 32 of f32).
    pub fn aligned(&self) -> bool {
        [self.a, self.b, self.c].iter().all(|v| v.is_multiple_of(8))
    }
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    la: sys::cublasLtMatrixLayout_t,
    lb: sys::cublasLtMatrixLayout_t,
    lc: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this module, destroyed once.
        unsafe {
            let _ = result::destroy_matrix_layout(self.la);
            let _ = result::destroy_matrix_layout(self.lb);
            let _ = result::destroy_matrix_layout(self.lc);
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

/// cuBLASLt handle, workspace and plan cache for one stream.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<Key, Plan>>,
}

// SAFETY: the raw cuBLASLt handles are only used under the plan-cache mutex or read-only, and
// cuBLASLt handles may be used from any thread.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

const WORKSPACE_BYTES: usize = 32 << 20;

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // cudarc panics when it cannot load the library; say what is missing and how to fix it.
        // SAFETY: probing loads and unloads the library by name.
        if !unsafe { sys::is_culib_present() } {
            bail!(
                "cuBLASLt (libcublasLt.so.13) not found: the CUDA 13 libraries must be on \
                 LD_LIBRARY_PATH, e.g. /usr/local/cuda/lib64, or the lib folder of the \
                 `nvidia-cublas` Python package (`--device cpu` runs without a GPU)"
            );
        }
        let handle = result::create_handle().map_err(|e| anyhow!("cublasLtCreate: {e:?}"))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(|e| {
            anyhow!("allocating the cuBLASLt workspace ({} MiB): {e:?}", WORKSPACE_BYTES >> 20)
        })?;
        Ok(Gemm { handle, stream, workspace, plans: Mutex::new(HashMap::new()) })
    }

    /// Number of cached plans (one per distinct shape and layout).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().unwrap().len()
    }

    /// The cached plans with a leading dimension that is not a multiple of 8 (which keeps
    /// cuBLASLt off its fastest tensor-core kernels), as `([m, n, k], leading dimensions)`.
    pub fn unaligned_plans(&self) -> Vec<([usize; 3], Ld)> {
        let plans = self.plans.lock().unwrap();
        plans.keys().filter(|k| !k.ld.aligned()).map(|k| ([k.m, k.n, k.k], k.ld)).collect()
    }

    fn plan(&self, key: Key, out: sys::cudaDataType) -> Result<()> {
        let mut plans = self.plans.lock().unwrap();
        if plans.contains_key(&key) {
            return Ok(());
        }
        let Key { m, n, k, a_trans, b_trans, ld, .. } = key;
        let bf = sys::cudaDataType::CUDA_R_16BF;
        let e = |what: &str, err: result::CublasError| anyhow!("cuBLASLt {what}: {err:?}");
        // cuBLASLt "A" = our B, "B" = our A, "C/D" = C^T (column-major n x m).
        let (ar, ac) = if b_trans { (k, n) } else { (n, k) };
        let (br, bc) = if a_trans { (m, k) } else { (k, m) };
        // (a row-major row stride is the column-major leading dimension)
        let la = result::create_matrix_layout(bf, ar as u64, ac as u64, ld.b as i64)
            .map_err(|x| e("layout A", x))?;
        let lb = result::create_matrix_layout(bf, br as u64, bc as u64, ld.a as i64)
            .map_err(|x| e("layout B", x))?;
        let lc = result::create_matrix_layout(out, n as u64, m as u64, ld.c as i64)
            .map_err(|x| e("layout C", x))?;
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|x| e("matmul desc", x))?;
        let mut plan = Plan { desc, la, lb, lc, algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] } };
        let ta = b_trans as i32;
        let tb = a_trans as i32;
        let pref = result::create_matmul_pref().map_err(|x| e("preference", x))?;
        // SAFETY: valid descriptors created above; attribute buffers outlive the calls.
        let heur = unsafe {
            result::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &ta as *const i32 as *const c_void,
                4,
            )
            .map_err(|x| e("TRANSA", x))?;
            result::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &tb as *const i32 as *const c_void,
                4,
            )
            .map_err(|x| e("TRANSB", x))?;
            let ws = WORKSPACE_BYTES as u64;
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .map_err(|x| e("workspace preference", x))?;
            let h = result::get_matmul_algo_heuristic(self.handle, desc, la, lb, lc, lc, pref);
            let _ = result::destroy_matmul_pref(pref);
            h.map_err(|x| e("no algorithm for this shape", x))?
        };
        plan.algo = heur.algo;
        plans.insert(key, plan);
        Ok(())
    }

    /// Row-major `C[m, n] = alpha * op(A) op(B) + beta * C` (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul<C: GemmOutput>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &impl DevicePtr<bf16>,
        a_trans: bool,
        b: &impl DevicePtr<bf16>,
        b_trans: bool,
        c: &mut impl DevicePtrMut<C>,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let ld = Ld::packed(m, n, k, a_trans, b_trans);
        self.matmul_ld(m, n, k, a, a_trans, b, b_trans, c, ld, alpha, beta)
    }

    /// [`Gemm::matmul`] with explicit row strides: A's stored rows (`[m, k]`, or `[k, m]` when
    /// `a_trans`) are `ld.a` apart, B's `ld.b`, C's `ld.c`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_ld<C: GemmOutput>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &impl DevicePtr<bf16>,
        a_trans: bool,
        b: &impl DevicePtr<bf16>,
        b_trans: bool,
        c: &mut impl DevicePtrMut<C>,
        ld: Ld,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        // stored rows x row length of each operand
        let (a_rows, a_cols) = if a_trans { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if b_trans { (n, k) } else { (k, n) };
        if ld.a < a_cols || ld.b < b_cols || ld.c < n {
            bail!("gemm {m}x{n}x{k}: a leading dimension below its row ({ld:?})");
        }
        let span = |rows: usize, cols: usize, ld: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
        if a.len() < span(a_rows, a_cols, ld.a)
            || b.len() < span(b_rows, b_cols, ld.b)
            || c.len() < span(m, n, ld.c)
        {
            bail!("gemm {m}x{n}x{k} {ld:?}: buffers too small (a {}, b {}, c {})", a.len(), b.len(), c.len());
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let out_f32 = C::DTYPE == sys::cudaDataType::CUDA_R_32F;
        let key = Key { m, n, k, a_trans, b_trans, out_f32, ld };
        self.plan(key, C::DTYPE)?;
        let plans = self.plans.lock().unwrap();
        let p = &plans[&key];
        let stream = &self.stream;
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pc, _rc) = c.device_ptr_mut(stream);
        let (pw, _rw) = self.workspace.device_ptr(stream);
        // SAFETY: sizes checked above; plan descriptors match the shapes; pointers stay valid
        // until the guards drop after the call is enqueued.
        unsafe {
            result::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                pb as *const c_void,
                p.la,
                pa as *const c_void,
                p.lb,
                pc as *const c_void,
                p.lc,
                pc as *mut c_void,
                p.lc,
                &p.algo,
                pw as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| anyhow!("cublasLtMatmul {m}x{n}x{k}: {e:?}"))
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.lock().unwrap().clear();
        // SAFETY: created in new(), destroyed once, after its plans.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}
