//! The CUDA backend: the `Backend` ops on the device, with our kernels (`kernels/*.cu`) and
//! cuBLASLt GEMMs. Activations and the carry are bf16; parameters are f32 masters with a bf16
//! shadow that the GEMMs read and the optimizer rewrites after each update; gradients,
//! optimizer moments, EMA and per-row statistics are f32. Everything is enqueued on the
//! device's one stream; the host reads back only what the model code needs on the host (the
//! q logits for the halting decision, the loss terms and flags).
//!
//! Errors are sticky, as CUDA's are: the first failing op is recorded (with its name), every
//! later op is skipped, and [`Backend::check`] returns the error.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use super::device::{CudaDevice, DeviceKind};
use super::{act, attention, kernels};
use crate::backend::{AdamHyper, Backend, EmbedDims, LmLossOut};

/// A parameter tensor on the device: the f32 master and its bf16 copy for the GEMMs.
pub struct CudaParam {
    pub master: CudaSlice<f32>,
    pub shadow: CudaSlice<bf16>,
}

/// (batch, heads, seq) of a cached attention scratch.
type ScratchShape = (usize, usize, usize);

/// The CUDA backend over one device (a GPU, or the CPU emulation in tests).
pub struct Cuda {
    dev: Arc<CudaDevice>,
    error: Mutex<Option<anyhow::Error>>,
    /// Per-row scratch of the attention backward, kept for the last shape.
    attention_scratch: Mutex<Option<(ScratchShape, attention::AttentionScratch)>>,
}

impl Cuda {
    pub fn new(dev: Arc<CudaDevice>) -> Self {
        Cuda { dev, error: Mutex::new(None), attention_scratch: Mutex::new(None) }
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
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
        match self.dev.stream.alloc_zeros::<T>(n) {
            Ok(s) => s,
            Err(e) => {
                // Nothing sensible can stand in for the buffer: stop here with the size asked.
                panic!(
                    "CUDA allocation of {} bytes failed on {}: {e}",
                    n * std::mem::size_of::<T>(),
                    self.dev.name
                )
            }
        }
    }

    fn upload<T: DeviceRepr>(&self, host: &[T]) -> CudaSlice<T> {
        if host.is_empty() {
            // cudarc cannot copy an empty slice; a one-element buffer is never read.
            // SAFETY: a buffer of length 1 that no kernel reads (every launcher checks sizes).
            return match unsafe { self.dev.stream.alloc::<T>(1) } {
                Ok(s) => s,
                Err(e) => panic!("CUDA allocation failed on {}: {e}", self.dev.name),
            };
        }
        match self.dev.stream.clone_htod(host) {
            Ok(s) => s,
            Err(e) => panic!(
                "CUDA upload of {} bytes failed on {}: {e}",
                std::mem::size_of_val(host),
                self.dev.name
            ),
        }
    }

    fn download<T: DeviceRepr + Default + Clone>(&self, what: &str, buf: &CudaSlice<T>, n: usize) -> Vec<T> {
        if self.failed() {
            return vec![T::default(); n];
        }
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

    fn mask(&self, m: &[bool]) -> CudaSlice<u8> {
        self.upload(&m.iter().map(|&b| b as u8).collect::<Vec<u8>>())
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

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn peak_flops(&self) -> Option<f64> {
        // H100/H200 SXM dense bf16; the emulation has no meaningful peak.
        (self.dev.kind == DeviceKind::Gpu).then_some(989e12)
    }

    fn device_memory_used(&self) -> Option<u64> {
        if self.dev.kind != DeviceKind::Gpu {
            return None;
        }
        self.dev.ctx.bind_to_thread().ok()?;
        let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
        Some((total - free) as u64)
    }

    fn check(&self) -> Result<()> {
        if let Some(e) = self.error.lock().unwrap().take() {
            return Err(e).with_context(|| format!("CUDA backend on {}", self.dev.name));
        }
        self.dev.sync().with_context(|| format!("CUDA backend on {}", self.dev.name))
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
        CudaParam { master: self.upload(host), shadow: self.upload(&bf16_of(host)) }
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
    fn write_i32(&self, host: &[i32], buf: &mut CudaSlice<i32>) {
        self.op("upload", |d| {
            anyhow::ensure!(host.len() == buf.len(), "writing {} values into {}", host.len(), buf.len());
            d.stream.memcpy_htod(host, buf).map_err(|e| anyhow!("{e}"))
        });
    }
    fn all_finite(&self, buf: &CudaSlice<f32>) -> bool {
        if self.failed() {
            return true; // the recorded error is reported by `check`
        }
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
    fn reset_rows(&self, z: &mut CudaSlice<bf16>, init: &CudaParam, mask: &[bool], width: usize) {
        if !mask.iter().any(|&m| m) {
            return;
        }
        let m = self.mask(mask);
        self.op("reset_rows", |d| {
            let batch = mask.len();
            let seq = z.len() / (batch * width);
            act::reset_rows(d, z, &init.master, &m, batch, seq, width)
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
        self.op("linear_fwd", |d| d.gemm()?.matmul(rows, dout, din, x, false, &w.shadow, true, y, 1.0, 0.0));
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
            d.gemm()?.matmul(rows, din, dout, dy, false, &w.shadow, false, dx, 1.0, beta)
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
        batch: usize,
        seq: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut q = self.alloc_zeros::<f32>(batch * 2);
        self.op("q_head_fwd", |dev| {
            act::q_head_fwd(dev, z_h, &w.master, &bias.master, &mut q, batch, seq, d)
        });
        let q = self.download("q logits", &q, batch * 2);
        (q.chunks(2).map(|r| r[0]).collect(), q.chunks(2).map(|r| r[1]).collect())
    }
    fn q_head_bwd(
        &self,
        dq_halt: &[f32],
        dq_continue: &[f32],
        z_h: &CudaSlice<bf16>,
        w: &CudaParam,
        dw: &mut CudaSlice<f32>,
        dbias: &mut CudaSlice<f32>,
        dz_h: &mut CudaSlice<bf16>,
        seq: usize,
        d: usize,
    ) {
        let batch = dq_halt.len();
        let dq: Vec<f32> = dq_halt.iter().zip(dq_continue).flat_map(|(a, b)| [*a, *b]).collect();
        let dq = self.upload(&dq);
        self.op("q_head_bwd", |dev| {
            act::q_head_bwd(dev, &dq, z_h, &w.master, dw, dbias, dz_h, batch, seq, d)
        });
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
        self.op("add_rms_norm_fwd", |dev| kernels::add_rms_norm_fwd(dev, x, r, y, rstd, x.len() / d, d, eps));
    }
    fn rms_norm_bwd(
        &self,
        dy: &CudaSlice<bf16>,
        y: &CudaSlice<bf16>,
        rstd: &CudaSlice<f32>,
        dx: &mut CudaSlice<bf16>,
        d: usize,
    ) {
        self.op("rms_norm_bwd", |dev| kernels::rms_norm_bwd(dev, dy, y, rstd, dx, dy.len() / d, d));
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
            let mut cache = self.attention_scratch.lock().unwrap();
            if cache.as_ref().is_none_or(|(shape, _)| *shape != (b, h, s)) {
                *cache = Some(((b, h, s), attention::AttentionScratch::new(d, b, h, s)?));
            }
            let scratch = &mut cache.as_mut().expect("just set").1;
            attention::attention_bwd(d, qkv, out, lse, dout, dqkv, scratch, b, s, h, hd)
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
        let empty;
        let pw = match puzzle_w {
            Some(p) => &p.master,
            None => {
                empty = self.upload::<f32>(&[]);
                &empty
            }
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
        puzzle_ids: &CudaSlice<i32>,
        dembed_w: &mut CudaSlice<f32>,
        dpuzzle_w: Option<&mut CudaSlice<f32>>,
        dpos_w: Option<&mut CudaSlice<f32>>,
        dims: &EmbedDims,
    ) {
        let mut empty;
        let dpw = match dpuzzle_w {
            Some(p) => p,
            None => {
                empty = self.upload::<f32>(&[]);
                &mut empty
            }
        };
        self.op("embed_bwd", |d| kernels::embed_bwd(d, dx, tokens, puzzle_ids, dembed_w, dpw, dpos_w, dims));
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
            kernels::adam_atan2_step(d, &mut p.master, g, m, v, Some(&mut p.shadow), step, h)
        });
    }
    fn sign_sgd_step(
        &self,
        w: &mut CudaParam,
        g: &CudaSlice<f32>,
        touched: &[bool],
        row_len: usize,
        lr: f32,
        weight_decay: f32,
    ) {
        let t = self.mask(touched);
        self.op("sign_sgd_step", |d| {
            kernels::sign_sgd_step(d, &mut w.master, g, &t, row_len, lr, weight_decay)?;
            // The shadow follows the master (the puzzle embedding is read in f32, but keep
            // both copies equal so no reader ever sees a stale one).
            act::to_bf16(d, &w.master, &mut w.shadow)
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
