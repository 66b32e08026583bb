//! The CUDA backend: the `Backend` ops on the device, with our kernels (`kernels/*.cu`) and
//! cuBLASLt GEMMs. Activations and the carry are bf16; parameters are f32 masters with a bf16
//! shadow that the GEMMs read and the optimizer rewrites after each update; gradients,
//! optimizer moments, EMA and per-row statistics are f32. Everything is enqueued on the
//! device's one stream. A training step reads nothing back: the ACT state (halting, exploration,
//! target-Q, losses, metrics, the non-finite guard) lives on the device (`halting.rs`), the
//! optimizer is one multi-tensor launch, and the host reads the metrics every log interval;
//! evaluation reads the q logits and answers back per segment (its callers decide per row).
//!
//! Errors are sticky, as CUDA's are: the first failing op is recorded (with its name), every
//! later op is skipped, and [`Backend::check`] returns the error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use super::device::{CudaDevice, DeviceKind};
use super::gemm::Ld;
use super::halting::{self, CudaActState, OptTensor, OptimTables};
use super::{act, attention, kernels};
use crate::backend::{
    ActReport, ActRows, AdamHyper, Backend, EmbedDims, EvalRows, LmLossOut, OptimRule, OptimStep, QSlot,
    TokenDims, TransposeDims,
};

/// A parameter tensor on the device: the f32 master and its bf16 copy for the GEMMs (none for
/// the puzzle embedding table, which is only gathered, in f32: `Backend::upload_table`).
pub struct CudaParam {
    pub master: CudaSlice<f32>,
    pub shadow: Option<CudaSlice<bf16>>,
}

impl CudaParam {
    /// The bf16 copy a GEMM reads; an error for a gather-only table (a caller bug, reported
    /// through the backend's error path instead of a panic).
    pub fn shadow(&self) -> Result<&CudaSlice<bf16>> {
        self.shadow.as_ref().ok_or_else(|| anyhow::anyhow!("a gather-only table has no bf16 copy for a GEMM"))
    }
}

/// Scratch buffers of the backward ops, grown (never shrunk) to the largest shape seen, so a
/// change of shape (an evaluation batch between training steps) does not reallocate them. A
/// recorded graph holds their addresses: growing one forgets every recorded graph (each is
/// recorded again at its next use) rather than leaving one to replay into freed memory.
#[derive(Default)]
struct Scratch {
    /// per-row `D_i` of the attention backward
    attention: Option<attention::AttentionScratch>,
    /// per-position-group token sums of the embedding backward
    embed: Option<CudaSlice<f32>>,
    /// a token weight of TRM's token mixing zero-padded to rows of `seq_ld` (made before each
    /// GEMM that reads it, so it never holds a stale copy)
    token_w: Option<CudaSlice<bf16>>,
    /// a token weight's gradient over the padded rows, before it is added into its real shape
    token_dw: Option<CudaSlice<f32>>,
}

/// The CUDA backend over one device (a GPU, or the CPU emulation in tests).
pub struct Cuda {
    dev: Arc<CudaDevice>,
    error: Mutex<Option<anyhow::Error>>,
    /// Scratch of the backward ops (see [`Scratch`]).
    scratch: Mutex<Scratch>,
    /// The multi-tensor optimizer's device table (rebuilt only when a tensor moves).
    optim_tables: Mutex<OptimTables>,
    /// Device-to-host reads so far (each one waits for the stream).
    host_reads: AtomicU64,
    /// Page-locked buffers the host writes go through, so they are asynchronous.
    staging: Mutex<Staging>,
    /// The placeholder puzzle embedding (and gradient) of models without one, made once (an
    /// allocation inside a step would break a recorded graph); no kernel touches it.
    no_puzzle: Mutex<Option<CudaSlice<f32>>>,
    /// Recorded graphs by key (see `Backend::replay_or_record`).
    graphs: Mutex<std::collections::HashMap<Vec<u64>, cudarc::driver::CudaGraph>>,
}

/// At most this many recorded graphs (the arrangements of a step's ping-pong buffers cycle
/// with a short period; beyond this the ops run directly).
const MAX_GRAPHS: usize = 16;

/// Page-locked host memory for host-to-device writes: a write copies the data into the next
/// slot of its length and enqueues the copy from there, so the host does not wait for the
/// stream. A copy from page-locked memory reads it when the device gets to it, so each slot
/// records an event after its copy, and the host waits for that event before filling the slot
/// again (`SLOTS` writes of that length later: by then the copy has long run, unless the host is
/// that far ahead of the device). Without page-locked memory (allocation refused) a write
/// falls back to a plain copy.
struct Staging {
    rings: std::collections::HashMap<usize, (Vec<StagingSlot>, usize)>,
}

/// One page-locked buffer and the event recorded after the copy that last read it.
struct StagingSlot {
    host: cudarc::driver::PinnedHostSlice<i32>,
    copied: cudarc::driver::CudaEvent,
}

impl Staging {
    const SLOTS: usize = 4;

    fn new() -> Self {
        Staging { rings: std::collections::HashMap::new() }
    }

    fn upload(&mut self, d: &CudaDevice, host: &[i32], buf: &mut CudaSlice<i32>) -> Result<()> {
        let n = host.len();
        let (ring, next) = self.rings.entry(n).or_insert_with(|| (Vec::new(), 0));
        if ring.len() < Self::SLOTS {
            // SAFETY: a new slot is filled below before any copy reads it.
            let slot = unsafe { d.ctx.alloc_pinned::<i32>(n) }
                .and_then(|host| Ok(StagingSlot { host, copied: d.ctx.new_event(None)? }));
            match slot {
                Ok(s) => ring.push(s),
                Err(_) if ring.is_empty() => {
                    return d.stream.memcpy_htod(host, buf).map_err(|e| anyhow!("{e}"));
                }
                Err(_) => {}
            }
        }
        let i = *next % ring.len();
        *next = i + 1;
        let slot = &mut ring[i];
        // The copy that last read this slot must have run before the slot is refilled.
        slot.copied.synchronize().map_err(|e| anyhow!("waiting for a staged copy: {e}"))?;
        let p = slot.host.as_mut_ptr().map_err(|e| anyhow!("{e}"))?;
        // SAFETY: `p` points to n i32 of page-locked memory that no queued copy reads any more.
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), p, n) };
        d.stream.memcpy_htod(&slot.host, buf).map_err(|e| anyhow!("{e}"))?;
        slot.copied.record(&d.stream).map_err(|e| anyhow!("recording a staged copy: {e}"))
    }
}

impl Cuda {
    pub fn new(dev: Arc<CudaDevice>) -> Self {
        Cuda {
            dev,
            error: Mutex::new(None),
            scratch: Mutex::new(Scratch::default()),
            optim_tables: Mutex::new(OptimTables { table: None }),
            host_reads: AtomicU64::new(0),
            staging: Mutex::new(Staging::new()),
            graphs: Mutex::new(std::collections::HashMap::new()),
            no_puzzle: Mutex::new(None),
        }
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// How many device-to-host reads the backend made (each one synchronises with the
    /// stream): a training step must make none.
    pub fn host_reads(&self) -> u64 {
        self.host_reads.load(Ordering::Relaxed)
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap().is_some()
    }

    fn fail(&self, e: anyhow::Error) {
        let mut err = self.error.lock().unwrap();
        if err.is_none() {
            *err = Some(e);
        }
    }

    /// Runs one op unless an earlier one failed; records its error.
    fn op(&self, what: &str, f: impl FnOnce(&CudaDevice) -> Result<()>) {
        if self.failed() {
            return;
        }
        if let Err(e) = f(&self.dev) {
            self.fail(e.context(what.to_string()));
        }
    }

    fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> CudaSlice<T> {
        match self.dev.alloc_zeros::<T>(n) {
            Ok(s) => s,
            Err(e) => self.allocation_failed(n * std::mem::size_of::<T>(), &e),
        }
    }

    /// Nothing sensible can stand in for a buffer the device could not allocate: stop here,
    /// saying how much was asked, how much the device has free, and what to change. (The
    /// memory estimate refuses most such runs before anything is allocated; checkpoints are
    /// written atomically, so a run stopped here loses nothing already saved.)
    fn allocation_failed(&self, bytes: usize, e: &dyn std::fmt::Display) -> ! {
        use crate::model::memory::fmt_bytes;
        let free = match self.device_memory_free() {
            Some((free, total)) => {
                format!("{} free of {}", fmt_bytes(free as f64), fmt_bytes(total as f64))
            }
            None => "free memory unknown".into(),
        };
        let e = e.to_string();
        let head = if e.contains("OUT_OF_MEMORY") { "out of GPU memory: " } else { "" };
        // Unwinds to the binary's `main`, which reports it as an error (exit status 1).
        std::panic::panic_any(crate::backend::DeviceOutOfMemory(format!(
            "{head}allocating {} on {} failed ({free}; {e}). Use a smaller --batch-size (or \
             model), or free the GPU of other processes",
            fmt_bytes(bytes as f64),
            self.dev.name
        )))
    }

    fn upload<T: DeviceRepr>(&self, host: &[T]) -> CudaSlice<T> {
        if host.is_empty() {
            // cudarc cannot copy an empty slice; a one-element buffer is never read.
            // SAFETY: a buffer of length 1 that no kernel reads (every launcher checks sizes).
            return match unsafe { self.dev.alloc_uninit::<T>(1) } {
                Ok(s) => s,
                Err(e) => self.allocation_failed(std::mem::size_of::<T>(), &e),
            };
        }
        match self.dev.clone_htod(host) {
            Ok(s) => s,
            Err(e) => self.allocation_failed(std::mem::size_of_val(host), &e),
        }
    }

    fn download<T: DeviceRepr + Default + Clone>(&self, what: &str, buf: &CudaSlice<T>, n: usize) -> Vec<T> {
        if self.failed() {
            return vec![T::default(); n];
        }
        self.host_reads.fetch_add(1, Ordering::Relaxed);
        match self.dev.stream.clone_dtoh(buf) {
            Ok(mut v) => {
                v.truncate(n);
                v
            }
            Err(e) => {
                self.fail(anyhow!("downloading {what}: {e}"));
                vec![T::default(); n]
            }
        }
    }

    /// The attention backward's scratch for at least `need` rows, grown when too small.
    fn attention_scratch<'a>(
        &self,
        d: &CudaDevice,
        cache: &'a mut Scratch,
        need: usize,
    ) -> Result<&'a mut attention::AttentionScratch> {
        if cache.attention.as_ref().is_none_or(|a| a.len() < need) {
            cache.attention = Some(attention::AttentionScratch::with_len(d, need)?);
            self.forget_all_graphs();
        }
        Ok(cache.attention.as_mut().expect("just set"))
    }

    /// `slot` holding at least `need` f32 (the first user writes before it reads), grown when
    /// too small; growing forgets the recorded graphs, as for the attention scratch.
    fn grown<'a, T: cudarc::driver::DeviceRepr>(
        &self,
        d: &CudaDevice,
        slot: &'a mut Option<CudaSlice<T>>,
        need: usize,
        what: &str,
    ) -> Result<&'a mut CudaSlice<T>> {
        if slot.as_ref().is_none_or(|b| b.len() < need) {
            // SAFETY: the caller's kernels write every element they read.
            *slot =
                Some(unsafe { d.alloc_uninit::<T>(need) }.map_err(|e| anyhow!("allocating {what}: {e}"))?);
            self.forget_all_graphs();
        }
        Ok(slot.as_mut().expect("just set"))
    }

    /// The bf16 copy of a token weight stored `(rows, cols)`, as a GEMM over rows of `t.seq_ld`
    /// reads it: zero-padded to `(rows_ld, cols_ld)` in the scratch, or the copy itself where
    /// nothing is padded.
    fn token_weight<'a>(
        &self,
        d: &CudaDevice,
        w: &'a CudaParam,
        slot: &'a mut Option<CudaSlice<bf16>>,
        (rows, cols): (usize, usize),
        (rows_ld, cols_ld): (usize, usize),
    ) -> Result<&'a CudaSlice<bf16>> {
        if (rows, cols) == (rows_ld, cols_ld) {
            return w.shadow();
        }
        let padded = self.grown(d, slot, rows_ld * cols_ld, "the padded token weight")?;
        kernels::pad_bf16(d, w.shadow()?, padded, (rows, cols), (rows_ld, cols_ld))?;
        Ok(padded)
    }

    /// Drops every recorded graph (a buffer they captured is about to be freed).
    fn forget_all_graphs(&self) {
        self.graphs.lock().unwrap().clear();
    }
}

fn bf16_of(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

#[allow(clippy::too_many_arguments)]
impl Backend for Cuda {
    type Act = CudaSlice<bf16>;
    type Param = CudaParam;
    type F32 = CudaSlice<f32>;
    type I32 = CudaSlice<i32>;
    type ActState = CudaActState;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn peak_flops(&self) -> Option<f64> {
        // H100/H200 SXM dense bf16; the emulation has no meaningful peak.
        (self.dev.kind == DeviceKind::Gpu).then_some(989e12)
    }

    fn device_memory_used(&self) -> Option<u64> {
        // the emulation's figure is its own bookkeeping, not worth reporting as device memory
        if self.dev.kind != DeviceKind::Gpu {
            return None;
        }
        self.device_memory_free().map(|(free, total)| total - free)
    }

    fn device_memory_free(&self) -> Option<(u64, u64)> {
        self.dev.ctx.bind_to_thread().ok()?;
        let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
        Some((free as u64, total as u64))
    }

    fn act_id(&self, a: &CudaSlice<bf16>) -> u64 {
        let (p, _g) = cudarc::driver::DevicePtr::device_ptr(a, &self.dev.stream);
        p
    }
    fn replay_or_record(&self, key: &[u64], ops: &mut dyn FnMut()) {
        if self.failed() {
            return;
        }
        let known = self.graphs.lock().unwrap().contains_key(key);
        if !known {
            if self.graphs.lock().unwrap().len() >= MAX_GRAPHS {
                ops();
                return;
            }
            let s = &self.dev.stream;
            if let Err(e) =
                s.begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            {
                self.fail(anyhow!("beginning a graph capture: {e}"));
                return;
            }
            ops();
            // End the capture even after a failed op, so the stream is usable again.
            let graph = s.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
            if self.failed() {
                return;
            }
            match graph {
                Ok(Some(g)) => {
                    self.graphs.lock().unwrap().insert(key.to_vec(), g);
                }
                Ok(None) => return self.fail(anyhow!("the graph capture recorded nothing")),
                Err(e) => return self.fail(anyhow!("ending a graph capture: {e}")),
            }
        }
        let graphs = self.graphs.lock().unwrap();
        if let Err(e) = graphs[key].launch() {
            self.fail(anyhow!("launching a recorded graph: {e}"));
        }
    }

    fn forget_graphs(&self, owner: u64) {
        self.graphs.lock().unwrap().retain(|k, _| k.first() != Some(&owner));
    }

    fn check(&self) -> Result<()> {
        self.check_enqueued()?;
        self.dev.sync().with_context(|| format!("CUDA backend on {}", self.dev.name))
    }

    fn check_enqueued(&self) -> Result<()> {
        if let Some(e) = self.error.lock().unwrap().take() {
            return Err(e).with_context(|| format!("CUDA backend on {}", self.dev.name));
        }
        Ok(())
    }

    fn zeros(&self, n: usize) -> CudaSlice<bf16> {
        self.alloc_zeros::<bf16>(n)
    }
    fn upload_act(&self, host: &[f32]) -> CudaSlice<bf16> {
        self.upload(&bf16_of(host))
    }
    fn download_act(&self, buf: &CudaSlice<bf16>) -> Vec<f32> {
        self.download("activations", buf, buf.len()).iter().map(|v| v.to_f32()).collect()
    }
    fn act_len(&self, buf: &CudaSlice<bf16>) -> usize {
        buf.len()
    }
    fn copy(&self, src: &CudaSlice<bf16>, dst: &mut CudaSlice<bf16>) {
        self.op("copy", |d| {
            anyhow::ensure!(src.len() == dst.len(), "copy of {} into {} elements", src.len(), dst.len());
            d.stream.memcpy_dtod(src, dst).map_err(|e| anyhow!("{e}"))
        });
    }
    fn zero_act(&self, buf: &mut CudaSlice<bf16>) {
        self.op("zero", |d| d.stream.memset_zeros(buf).map_err(|e| anyhow!("{e}")));
    }
    fn upload_param(&self, host: &[f32]) -> CudaParam {
        CudaParam { master: self.upload(host), shadow: Some(self.upload(&bf16_of(host))) }
    }
    fn upload_table(&self, host: &[f32]) -> CudaParam {
        CudaParam { master: self.upload(host), shadow: None }
    }
    fn download_param(&self, p: &CudaParam) -> Vec<f32> {
        self.download("parameter", &p.master, p.master.len())
    }
    fn zeros_f32(&self, n: usize) -> CudaSlice<f32> {
        self.alloc_zeros::<f32>(n)
    }
    fn upload_f32(&self, host: &[f32]) -> CudaSlice<f32> {
        self.upload(host)
    }
    fn download_f32(&self, buf: &CudaSlice<f32>) -> Vec<f32> {
        self.download("f32 buffer", buf, buf.len())
    }
    fn upload_i32(&self, host: &[i32]) -> CudaSlice<i32> {
        self.upload(host)
    }
    fn download_i32(&self, buf: &CudaSlice<i32>) -> Vec<i32> {
        self.download("i32 buffer", buf, buf.len())
    }
    fn zero_f32(&self, buf: &mut CudaSlice<f32>) {
        self.op("zero", |d| d.stream.memset_zeros(buf).map_err(|e| anyhow!("{e}")));
    }
    fn write_i32(&self, host: &[i32], buf: &mut CudaSlice<i32>) {
        self.op("upload", |d| {
            anyhow::ensure!(host.len() == buf.len(), "writing {} values into {}", host.len(), buf.len());
            self.staging.lock().unwrap().upload(d, host, buf)
        });
    }
    fn all_finite(&self, buf: &CudaSlice<f32>) -> bool {
        if self.failed() {
            return true; // the recorded error is reported by `check`
        }
        self.host_reads.fetch_add(1, Ordering::Relaxed);
        match act::all_finite(&self.dev, buf) {
            Ok(f) => f,
            Err(e) => {
                self.fail(e.context("all_finite"));
                true
            }
        }
    }
    fn first_non_finite(&self, bufs: &[&CudaSlice<f32>]) -> Option<usize> {
        if self.failed() || bufs.is_empty() {
            return None; // a recorded error is reported by `check`
        }
        let mut counts = self.alloc_zeros::<u32>(bufs.len());
        for (i, b) in bufs.iter().enumerate() {
            self.op("first_non_finite", |d| act::count_nonfinite(d, *b, &mut counts.slice_mut(i..i + 1)));
        }
        self.download("non-finite counts", &counts, bufs.len()).iter().position(|&c| c != 0)
    }
    fn ema_update(&self, ema: &mut CudaSlice<f32>, p: &CudaParam, decay: f32) {
        self.op("ema_update", |d| act::ema_update(d, ema, &p.master, decay));
    }

    fn add(&self, a: &CudaSlice<bf16>, b: &CudaSlice<bf16>, out: &mut CudaSlice<bf16>) {
        self.op("add", |d| act::add(d, a, b, out, out.len()));
    }
    fn add_inplace(&self, a: &mut CudaSlice<bf16>, b: &CudaSlice<bf16>) {
        self.op("add_inplace", |d| kernels::add_inplace(d, a, b, b.len()));
    }
    fn add_injection(
        &self,
        z: &CudaSlice<bf16>,
        z_h: &CudaSlice<bf16>,
        x: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
    ) {
        let n = out.len();
        self.op("add_injection", |d| act::add_injection_to(d, z, z_h, x, out, n));
    }
    fn add_injection_inplace(&self, z: &mut CudaSlice<bf16>, z_h: &CudaSlice<bf16>, x: &CudaSlice<bf16>) {
        let n = z.len();
        self.op("add_injection_inplace", |d| act::add_injection_inplace(d, z, z_h, x, n));
    }
    fn reset_rows(&self, z: &mut CudaSlice<bf16>, init: &CudaParam, st: &CudaActState, width: usize) {
        self.op("reset_rows", |d| {
            let batch = st.batch;
            let seq = z.len() / (batch * width).max(1);
            act::reset_rows(d, z, &init.master, &st.halted, batch, seq, width)
        });
    }
    fn gather_positions(
        &self,
        src: &CudaSlice<bf16>,
        dst: &mut CudaSlice<bf16>,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    ) {
        self.op("gather_positions", |d| {
            let batch = src.len() / (seq * width);
            act::gather_positions(d, src, dst, batch, seq, start, n, width)
        });
    }
    fn scatter_add_positions(
        &self,
        ddst: &CudaSlice<bf16>,
        dsrc: &mut CudaSlice<bf16>,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    ) {
        self.op("scatter_add_positions", |d| {
            let batch = dsrc.len() / (seq * width);
            act::scatter_add_positions(d, ddst, dsrc, batch, seq, start, n, width)
        });
    }

    fn linear_fwd(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaParam,
        y: &mut CudaSlice<bf16>,
        rows: usize,
        din: usize,
        dout: usize,
    ) {
        self.op("linear_fwd", |d| {
            d.gemm()?.matmul(rows, dout, din, x, false, w.shadow()?, true, y, 1.0, 0.0)
        });
    }
    fn linear_bwd_x(
        &self,
        dy: &CudaSlice<bf16>,
        w: &CudaParam,
        dx: &mut CudaSlice<bf16>,
        rows: usize,
        din: usize,
        dout: usize,
        accumulate: bool,
    ) {
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.op("linear_bwd_x", |d| {
            d.gemm()?.matmul(rows, din, dout, dy, false, w.shadow()?, false, dx, 1.0, beta)
        });
    }
    fn linear_bwd_w(
        &self,
        dy: &CudaSlice<bf16>,
        x: &CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        rows: usize,
        din: usize,
        dout: usize,
    ) {
        self.op("linear_bwd_w", |d| d.gemm()?.matmul(dout, din, rows, dy, true, x, false, dw, 1.0, 1.0));
    }

    fn q_head_fwd(
        &self,
        z_h: &CudaSlice<bf16>,
        w: &CudaParam,
        bias: &CudaParam,
        st: &mut CudaActState,
        slot: QSlot,
        batch: usize,
        seq: usize,
        d: usize,
    ) {
        let q = match slot {
            QSlot::Current => &mut st.q,
            QSlot::Target => &mut st.q_next,
        };
        self.op("q_head_fwd", |dev| act::q_head_fwd(dev, z_h, &w.master, &bias.master, q, batch, seq, d));
    }
    fn q_head_bwd(
        &self,
        st: &CudaActState,
        z_h: &CudaSlice<bf16>,
        w: &CudaParam,
        dw: &mut CudaSlice<f32>,
        dbias: &mut CudaSlice<f32>,
        dz_h: &mut CudaSlice<bf16>,
        seq: usize,
        d: usize,
    ) {
        self.op("q_head_bwd", |dev| {
            act::q_head_bwd(dev, &st.dq, z_h, &w.master, dw, dbias, dz_h, st.batch, seq, d)
        });
    }
    fn act_state(&self, batch: usize) -> CudaActState {
        match CudaActState::new(&self.dev, batch) {
            Ok(s) => s,
            Err(e) => panic!("{e:#} on {}", self.dev.name),
        }
    }
    fn act_set(&self, st: &mut CudaActState, steps: &[u32], halted: &[bool]) {
        self.op("act_set", |d| {
            anyhow::ensure!(steps.len() == st.batch && halted.len() == st.batch, "act_set: batch mismatch");
            let steps: Vec<i32> = steps.iter().map(|&s| s as i32).collect();
            let halted: Vec<u8> = halted.iter().map(|&h| h as u8).collect();
            d.stream.memcpy_htod(&steps, &mut st.steps).map_err(|e| anyhow!("{e}"))?;
            d.stream.memcpy_htod(&halted, &mut st.halted).map_err(|e| anyhow!("{e}"))
        });
    }
    fn act_rows(&self, st: &CudaActState) -> ActRows {
        let b = st.batch;
        let q = self.download("q logits", &st.q, 2 * b);
        ActRows {
            steps: self.download("steps", &st.steps, b).iter().map(|&s| s as u32).collect(),
            halted: self.download("halted", &st.halted, b).iter().map(|&h| h != 0).collect(),
            min_halt: self.download("min_halt", &st.min_halt, b).iter().map(|&s| s as u32).collect(),
            q_halt: q.iter().step_by(2).copied().collect(),
            q_continue: q.iter().skip(1).step_by(2).copied().collect(),
            target_q_continue: self.download("target", &st.target, b),
        }
    }
    fn act_q(&self, st: &CudaActState, slot: QSlot) -> (Vec<f32>, Vec<f32>) {
        let buf = if slot == QSlot::Current { &st.q } else { &st.q_next };
        let q = self.download("q logits", buf, 2 * st.batch);
        (q.iter().step_by(2).copied().collect(), q.iter().skip(1).step_by(2).copied().collect())
    }
    fn act_lm_rows(&self, st: &CudaActState) -> LmLossOut {
        let rows = st.batch;
        let Some(lm) = st.lm.as_ref() else {
            self.fail(anyhow!("reading the LM loss rows before any training loss"));
            return LmLossOut {
                loss_per_row: vec![0.0; rows],
                exact: vec![false; rows],
                n_correct: vec![0; rows],
                n_valid: vec![0; rows],
                argmax: Vec::new(),
            };
        };
        LmLossOut {
            loss_per_row: self.download("loss", &lm.loss_per_row, rows),
            exact: self.download("exact flags", &lm.exact, rows).iter().map(|&e| e != 0).collect(),
            n_correct: self.download("correct counts", &lm.n_correct, rows),
            n_valid: self.download("valid counts", &lm.n_valid, rows),
            argmax: Vec::new(),
        }
    }
    fn act_set_min_halt(&self, st: &mut CudaActState, min_halt: &[u32]) {
        self.op("act_set_min_halt", |d| {
            anyhow::ensure!(min_halt.len() == st.batch, "act_set_min_halt: batch mismatch");
            let v: Vec<i32> = min_halt.iter().map(|&s| s as i32).collect();
            d.stream.memcpy_htod(&v, &mut st.min_halt).map_err(|e| anyhow!("{e}"))
        });
    }
    fn act_explore(&self, st: &mut CudaActState, key: u64, prob: f64, max_steps: usize, first_row: usize) {
        self.op("act_explore", |d| halting::explore(d, st, key, prob, max_steps, first_row));
    }
    fn act_take_new(
        &self,
        st: &mut CudaActState,
        new_tokens: &CudaSlice<i32>,
        tokens: &mut CudaSlice<i32>,
        new_ids: &CudaSlice<i32>,
        ids: &mut CudaSlice<i32>,
        new_labels: &CudaSlice<i32>,
        labels: &mut CudaSlice<i32>,
        seq_len: usize,
    ) {
        self.op("act_take_new", |d| {
            halting::take_new(d, st, new_tokens, tokens, new_ids, ids, new_labels, labels, seq_len)
        });
    }
    fn act_halt(&self, st: &mut CudaActState, max_steps: usize) {
        self.op("act_halt", |d| halting::halt(d, st, max_steps, halting::HaltRule::QHaltAboveContinue));
    }
    fn act_set_step(&self, st: &mut CudaActState, step: u32) {
        self.op("act_set_step", |d| {
            let v = i32::try_from(step).map_err(|_| anyhow!("step {step} does not fit the kernels' int"))?;
            self.staging.lock().unwrap().upload(d, &[v], &mut st.step_now)
        });
    }
    fn act_q_loss(&self, st: &mut CudaActState, max_steps: usize, grad_scale: f64) {
        self.op("act_q_loss", |d| halting::q_loss(d, st, max_steps, false, grad_scale));
    }
    fn seq_row_len(&self, seq: usize) -> usize {
        seq.next_multiple_of(8)
    }
    fn transpose(&self, x: &CudaSlice<bf16>, y: &mut CudaSlice<bf16>, t: &TransposeDims) {
        self.op("transpose", |d| kernels::transpose(d, x, y, t));
    }
    fn token_up_fwd(
        &self,
        xt: &CudaSlice<bf16>,
        w_in: &CudaParam,
        gate_up: &mut CudaSlice<bf16>,
        t: &TokenDims,
    ) {
        let n = 2 * t.inter;
        self.op("token_up_fwd", |d| {
            let mut cache = self.scratch.lock().unwrap();
            let w = self.token_weight(d, w_in, &mut cache.token_w, (n, t.seq), (n, t.seq_ld))?;
            d.gemm()?.matmul(t.cols, n, t.seq_ld, xt, false, w, true, gate_up, 1.0, 0.0)
        });
    }
    fn token_down_fwd(
        &self,
        act: &CudaSlice<bf16>,
        w_out: &CudaParam,
        proj: &mut CudaSlice<bf16>,
        t: &TokenDims,
    ) {
        self.op("token_down_fwd", |d| {
            let mut cache = self.scratch.lock().unwrap();
            let w = self.token_weight(d, w_out, &mut cache.token_w, (t.seq, t.inter), (t.seq_ld, t.inter))?;
            // the zero rows of the padded weight write the zero pads of proj
            d.gemm()?.matmul(t.cols, t.seq_ld, t.inter, act, false, w, true, proj, 1.0, 0.0)
        });
    }
    fn token_down_bwd(
        &self,
        ds: &CudaSlice<bf16>,
        w_out: &CudaParam,
        act: &CudaSlice<bf16>,
        dact: &mut CudaSlice<bf16>,
        dw_out: &mut CudaSlice<f32>,
        t: &TokenDims,
    ) {
        self.op("token_down_bwd", |d| {
            let mut cache = self.scratch.lock().unwrap();
            let w = self.token_weight(d, w_out, &mut cache.token_w, (t.seq, t.inter), (t.seq_ld, t.inter))?;
            let g = d.gemm()?;
            g.matmul(t.cols, t.inter, t.seq_ld, ds, false, w, false, dact, 1.0, 0.0)?;
            // dw_out [seq, inter] += ds[:, :seq]^T act: ds read as a window of its padded rows
            let ld = Ld { a: t.seq_ld, b: t.inter, c: t.inter };
            g.matmul_ld(t.seq, t.inter, t.cols, ds, true, act, false, dw_out, ld, 1.0, 1.0)
        });
    }
    fn token_up_bwd(
        &self,
        dgate_up: &CudaSlice<bf16>,
        w_in: &CudaParam,
        xt: &CudaSlice<bf16>,
        dxt: &mut CudaSlice<bf16>,
        dw_in: &mut CudaSlice<f32>,
        t: &TokenDims,
    ) {
        let n = 2 * t.inter;
        self.op("token_up_bwd", |d| {
            let mut cache = self.scratch.lock().unwrap();
            let cache = &mut *cache;
            let w = self.token_weight(d, w_in, &mut cache.token_w, (n, t.seq), (n, t.seq_ld))?;
            let g = d.gemm()?;
            // the zero columns of the padded weight add 0 to the pads of dxt
            g.matmul(t.cols, t.seq_ld, n, dgate_up, false, w, false, dxt, 1.0, 1.0)?;
            if t.seq_ld == t.seq {
                return g.matmul(n, t.seq, t.cols, dgate_up, true, xt, false, dw_in, 1.0, 1.0);
            }
            // dw_in [2 inter, seq] has rows of 97: the GEMM writes rows of seq_ld (aligned, the
            // zero pads of xt give zero columns), then only the real columns are added in; the
            // sum is the one the GEMM's beta = 1 would form (acc + dw_in, rounded once).
            let tmp = self.grown(d, &mut cache.token_dw, n * t.seq_ld, "the token weight's gradient")?;
            g.matmul(n, t.seq_ld, t.cols, dgate_up, true, xt, false, tmp, 1.0, 0.0)?;
            kernels::add_unpad_f32(d, tmp, dw_in, n, t.seq, t.seq_ld)
        });
    }
    fn seq_norm_fwd(
        &self,
        x: &CudaSlice<bf16>,
        r: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        rstd: &mut CudaSlice<f32>,
        t: &TokenDims,
        eps: f32,
    ) {
        let dims = (t.seq_ld, t.seq);
        self.op("seq_norm_fwd", |dev| kernels::add_rms_norm_fwd(dev, x, r, y, rstd, t.cols, dims, eps));
    }
    fn seq_norm_bwd(
        &self,
        dy: &CudaSlice<bf16>,
        y: &CudaSlice<bf16>,
        rstd: &CudaSlice<f32>,
        dx: &mut CudaSlice<bf16>,
        t: &TokenDims,
    ) {
        let dims = (t.seq_ld, t.seq);
        self.op("seq_norm_bwd", |dev| kernels::rms_norm_bwd(dev, dy, y, rstd, dx, t.cols, dims));
    }
    fn act_halt_no_continue(&self, st: &mut CudaActState, max_steps: usize) {
        self.op("act_halt_no_continue", |d| {
            halting::halt(d, st, max_steps, halting::HaltRule::QHaltPositive)
        });
    }
    fn act_q_halt_loss(&self, st: &mut CudaActState, grad_scale: f64) {
        // (max_steps only picks the target of the q_continue term, which this loss has not)
        self.op("act_q_halt_loss", |d| halting::q_loss(d, st, 1, true, grad_scale));
    }
    fn act_guard(&self, st: &mut CudaActState, grads: &[&CudaSlice<f32>]) {
        self.op("act_guard", |d| halting::guard(d, st, grads));
    }
    fn act_report(&self, st: &mut CudaActState) -> ActReport {
        let m = self.download("metrics", &st.metrics, crate::backend::cpu::halting::METRICS);
        let status = self.download("guard status", &st.status, 4);
        self.op("act_report", |d| d.stream.memset_zeros(&mut st.metrics).map_err(|e| anyhow!("{e}")));
        let mut raw = [0.0; crate::backend::cpu::halting::METRICS];
        raw.copy_from_slice(&m);
        ActReport::from_raw(&raw, &[status[0], status[1], status[2], status[3]])
    }
    fn act_eval_score(
        &self,
        logits: &CudaSlice<bf16>,
        labels: &CudaSlice<i32>,
        vocab: usize,
        seq: usize,
        st: &mut CudaActState,
        max_segments: usize,
    ) {
        let rows = st.batch;
        self.op("act_eval_score", |d| {
            // Made by the first (directly run) segment, so a recorded one allocates nothing.
            if st.lm.as_ref().is_none_or(|lm| lm.argmax.len() < rows * seq) {
                st.lm = Some(kernels::LmLossBuffers::new(d, rows, seq)?);
            }
            if st.exact_hist.as_ref().is_none_or(|h| h.len() != rows.max(1) * max_segments) {
                let e = |e: cudarc::driver::DriverError| anyhow!("allocating the exact history: {e}");
                st.exact_hist = Some(d.alloc_zeros::<u8>(rows.max(1) * max_segments).map_err(e)?);
            }
            let out = st.lm.as_mut().expect("made above");
            kernels::stablemax_ce(d, logits, labels, rows, seq, vocab, 0.0, None, out)?;
            halting::exact_hist(d, st, max_segments)
        });
    }
    fn act_eval_read(&self, st: &CudaActState, seq: usize, segments: usize) -> EvalRows {
        let b = st.batch;
        let (Some(lm), Some(hist)) = (st.lm.as_ref(), st.exact_hist.as_ref()) else {
            self.fail(anyhow!("reading inference results before any inference segment was scored"));
            return EvalRows::default();
        };
        let cols = hist.len() / b.max(1);
        let h = self.download("exact history", hist, hist.len());
        let q = self.download("q logits", &st.q, 2 * b);
        EvalRows {
            argmax: self.download("argmax", &lm.argmax, b * seq),
            exact_per_segment: (0..segments.min(cols))
                .map(|s| (0..b).map(|r| h[r * cols + s] != 0).collect())
                .collect(),
            q_halt: q.iter().step_by(2).copied().collect(),
            q_continue: q.iter().skip(1).step_by(2).copied().collect(),
        }
    }
    fn add_rms_norm_fwd(
        &self,
        x: &CudaSlice<bf16>,
        r: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        rstd: &mut CudaSlice<f32>,
        d: usize,
        eps: f32,
    ) {
        self.op("add_rms_norm_fwd", |dev| {
            kernels::add_rms_norm_fwd(dev, x, r, y, rstd, x.len() / d, (d, d), eps)
        });
    }
    fn rms_norm_bwd(
        &self,
        dy: &CudaSlice<bf16>,
        y: &CudaSlice<bf16>,
        rstd: &CudaSlice<f32>,
        dx: &mut CudaSlice<bf16>,
        d: usize,
    ) {
        self.op("rms_norm_bwd", |dev| kernels::rms_norm_bwd(dev, dy, y, rstd, dx, dy.len() / d, (d, d)));
    }
    fn swiglu_fwd(&self, gate_up: &CudaSlice<bf16>, out: &mut CudaSlice<bf16>, inter: usize) {
        self.op("swiglu_fwd", |d| kernels::swiglu_fwd(d, gate_up, out, out.len() / inter, inter));
    }
    fn swiglu_bwd(
        &self,
        dout: &CudaSlice<bf16>,
        gate_up: &CudaSlice<bf16>,
        dgate_up: &mut CudaSlice<bf16>,
        inter: usize,
    ) {
        self.op("swiglu_bwd", |d| kernels::swiglu_bwd(d, dout, gate_up, dgate_up, dout.len() / inter, inter));
    }
    fn rope_fwd(
        &self,
        qkv: &mut CudaSlice<bf16>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        seq: usize,
        heads: usize,
        hd: usize,
    ) {
        let tokens = qkv.len() / (3 * heads * hd);
        self.op("rope_fwd", |d| kernels::rope_fwd(d, qkv, cos, sin, tokens, seq, heads, hd));
    }
    fn rope_bwd(
        &self,
        dqkv: &mut CudaSlice<bf16>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        seq: usize,
        heads: usize,
        hd: usize,
    ) {
        let tokens = dqkv.len() / (3 * heads * hd);
        self.op("rope_bwd", |d| kernels::rope_bwd(d, dqkv, cos, sin, tokens, seq, heads, hd));
    }
    fn attention_fwd(
        &self,
        qkv: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        b: usize,
        s: usize,
        h: usize,
        hd: usize,
    ) {
        self.op("attention_fwd", |d| attention::attention_fwd(d, qkv, out, lse, b, s, h, hd));
    }
    fn attention_bwd(
        &self,
        qkv: &CudaSlice<bf16>,
        out: &CudaSlice<bf16>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<bf16>,
        dqkv: &mut CudaSlice<bf16>,
        b: usize,
        s: usize,
        h: usize,
        hd: usize,
    ) {
        self.op("attention_bwd", |d| {
            let mut cache = self.scratch.lock().unwrap();
            let scratch = self.attention_scratch(d, &mut cache, b * h * s)?;
            attention::attention_bwd(d, qkv, out, lse, dout, dqkv, scratch, b, s, h, hd)
        });
    }

    // Fused RoPE + attention: one pass on the tensor-core head dims, else the composed ops.
    fn fuses_rope_attention(&self, head_dim: usize) -> bool {
        attention::uses_tensor_cores(head_dim)
    }
    fn attention_rope_fwd(
        &self,
        qkv: &CudaSlice<bf16>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        b: usize,
        s: usize,
        h: usize,
        hd: usize,
    ) {
        if !attention::uses_tensor_cores(hd) {
            return crate::backend::attention_rope_fwd_composed(self, qkv, cos, sin, out, lse, b, s, h, hd);
        }
        self.op("attention_rope_fwd", |d| {
            attention::attention_rope_fwd(d, qkv, cos, sin, out, lse, b, s, h, hd)
        });
    }
    fn attention_rope_bwd(
        &self,
        qkv: &CudaSlice<bf16>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        out: &CudaSlice<bf16>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<bf16>,
        dqkv: &mut CudaSlice<bf16>,
        b: usize,
        s: usize,
        h: usize,
        hd: usize,
    ) {
        if !attention::uses_tensor_cores(hd) {
            return crate::backend::attention_rope_bwd_composed(
                self, qkv, cos, sin, out, lse, dout, dqkv, b, s, h, hd,
            );
        }
        self.op("attention_rope_bwd", |d| {
            let mut cache = self.scratch.lock().unwrap();
            let scratch = self.attention_scratch(d, &mut cache, b * h * s)?;
            attention::attention_rope_bwd(d, qkv, cos, sin, out, lse, dout, dqkv, scratch, b, s, h, hd)
        });
    }

    fn embed_fwd(
        &self,
        tokens: &CudaSlice<i32>,
        puzzle_ids: &CudaSlice<i32>,
        embed_w: &CudaParam,
        puzzle_w: Option<&CudaParam>,
        pos_w: Option<&CudaParam>,
        out: &mut CudaSlice<bf16>,
        dims: &EmbedDims,
    ) {
        // Without a puzzle embedding the kernel gets a placeholder it never reads, made once.
        let mut placeholder = self.no_puzzle.lock().unwrap();
        let pw = match puzzle_w {
            Some(p) => &p.master,
            None => &*placeholder.get_or_insert_with(|| self.upload::<f32>(&[])),
        };
        self.op("embed_fwd", |d| {
            kernels::embed_fwd(
                d,
                tokens,
                puzzle_ids,
                &embed_w.master,
                pw,
                pos_w.map(|p| &p.master),
                out,
                dims,
            )
        });
    }
    fn embed_bwd(
        &self,
        dx: &CudaSlice<bf16>,
        tokens: &CudaSlice<i32>,
        dembed_w: &mut CudaSlice<f32>,
        dpuzzle_rows: Option<&mut CudaSlice<f32>>,
        dpos_w: Option<&mut CudaSlice<f32>>,
        dims: &EmbedDims,
    ) {
        // Without a puzzle embedding the kernel gets the placeholder, which it never writes.
        let mut placeholder = self.no_puzzle.lock().unwrap();
        let dpw = match dpuzzle_rows {
            Some(p) => p,
            None => placeholder.get_or_insert_with(|| self.upload::<f32>(&[])),
        };
        self.op("embed_bwd", |d| {
            let need = kernels::embed_bwd_scratch_len(dims, dembed_w.len() / dims.hidden.max(1));
            let mut cache = self.scratch.lock().unwrap();
            let scratch = self.grown(d, &mut cache.embed, need, "the embedding backward's scratch")?;
            kernels::embed_bwd(d, dx, tokens, dembed_w, dpw, dpos_w, scratch, dims)
        });
    }

    fn lm_loss(
        &self,
        logits: &CudaSlice<bf16>,
        labels: &CudaSlice<i32>,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: Option<&mut CudaSlice<bf16>>,
    ) -> LmLossOut {
        let rows = labels.len() / seq;
        let mut out = match kernels::LmLossBuffers::new(&self.dev, rows, seq) {
            Ok(o) => o,
            Err(e) => panic!("CUDA allocation for the loss of {rows} rows failed: {e:#}"),
        };
        self.op("lm_loss", |d| {
            kernels::stablemax_ce(d, logits, labels, rows, seq, vocab, grad_scale, dlogits, &mut out)
        });
        LmLossOut {
            loss_per_row: self.download("loss", &out.loss_per_row, rows),
            exact: self.download("exact flags", &out.exact, rows).iter().map(|&e| e != 0).collect(),
            n_correct: self.download("correct counts", &out.n_correct, rows),
            n_valid: self.download("valid counts", &out.n_valid, rows),
            argmax: self.download("argmax", &out.argmax, rows * seq),
        }
    }

    fn lm_loss_rows(
        &self,
        logits: &CudaSlice<bf16>,
        labels: &CudaSlice<i32>,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: &mut CudaSlice<bf16>,
        st: &mut CudaActState,
    ) {
        let rows = st.batch;
        self.op("lm_loss", |d| {
            if st.lm.is_none() {
                st.lm = Some(kernels::LmLossBuffers::new(d, rows, seq)?);
            }
            let out = st.lm.as_mut().expect("made above");
            kernels::stablemax_ce(d, logits, labels, rows, seq, vocab, grad_scale, Some(dlogits), out)
        });
    }
    fn adam_atan2_step(
        &self,
        p: &mut CudaParam,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        step: u32,
        h: &AdamHyper,
    ) {
        self.op("adam_atan2_step", |d| {
            kernels::adam_atan2_step(d, &mut p.master, g, m, v, p.shadow.as_mut(), step, h)
        });
    }
    fn puzzle_sign_sgd(
        &self,
        table: &mut CudaParam,
        row_grads: &CudaSlice<f32>,
        ids: &CudaSlice<i32>,
        row_len: usize,
        lr: f32,
        weight_decay: f32,
        guard: &CudaActState,
    ) {
        self.op("puzzle_sign_sgd", |d| {
            kernels::puzzle_sign_sgd(
                d,
                &mut table.master,
                row_grads,
                ids,
                row_len,
                lr,
                weight_decay,
                &guard.status,
            )?;
            // A table uploaded as a parameter keeps its bf16 copy equal to the master.
            match table.shadow.as_mut() {
                Some(shadow) => act::to_bf16(d, &table.master, shadow),
                None => Ok(()),
            }
        });
    }
    fn optimizer_step(
        &self,
        params: &mut [&mut CudaParam],
        grads: &[&CudaSlice<f32>],
        m: &mut [&mut CudaSlice<f32>],
        v: &mut [&mut CudaSlice<f32>],
        ema: Option<&mut [&mut CudaSlice<f32>]>,
        rules: &[OptimRule],
        h: &OptimStep,
        guard: &CudaActState,
    ) {
        self.op("optimizer_step", |d| {
            let n = params.len();
            anyhow::ensure!(
                grads.len() == n && m.len() == n && v.len() == n && rules.len() == n,
                "optimizer_step: {n} parameters but {} gradients, {} rules",
                grads.len(),
                rules.len()
            );
            let ema: Option<&[&mut CudaSlice<f32>]> = ema.map(|e| &*e);
            if let Some(e) = ema {
                anyhow::ensure!(e.len() == n, "optimizer_step: {} EMA tensors for {n} parameters", e.len());
            }
            let mut tensors: Vec<OptTensor<'_>> = Vec::with_capacity(n);
            for i in 0..n {
                tensors.push(OptTensor {
                    master: &params[i].master,
                    shadow: params[i].shadow()?,
                    grad: grads[i],
                    m: &*m[i],
                    v: &*v[i],
                    ema: ema.map(|e| &*e[i]),
                    rule: rules[i],
                });
            }
            let mut tables = self.optim_tables.lock().unwrap();
            halting::optimizer_step(d, &mut tables, &tensors, h, &guard.status)
        });
    }

    // Data-parallel training: NCCL (src/backend/cuda/nccl.rs).
    fn collective_f32(
        &self,
        group: &crate::backend::collective::ProcessGroup,
        op: crate::backend::collective::Collective,
        bufs: &mut [&mut CudaSlice<f32>],
    ) -> Result<()> {
        self.check()?;
        super::nccl::collective(&self.dev, group, op, bufs)
    }
}
