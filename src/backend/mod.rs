//! Compute backends. The model math (`crate::hrm`, `crate::act`) is written once over the
//! `Backend` trait; a backend implements each op with its forward and backward side by side.
//! `cpu` is the f32 reference every other backend is validated against; `cuda` runs the same
//! ops with our kernels and cuBLASLt in bf16 (also under the CPU emulation, for tests).
//!
//! Storage is typed, because a device keeps each kind of tensor in its own precision:
//! - [`Backend::Act`]: activations and the recurrent carry (bf16 on CUDA, f32 on the CPU);
//! - [`Backend::Param`]: parameters, f32 masters (CUDA adds a bf16 shadow that the GEMMs read
//!   and the optimizer rewrites after every step);
//! - [`Backend::F32`]: f32 buffers: gradients, optimizer moments, EMA, per-row statistics;
//! - [`Backend::I32`]: token ids, labels, puzzle ids.
//!
//! Ops do not return errors one by one: a device backend records the first failure (a launch
//! error, out of memory) and skips later work, and [`Backend::check`] reports it; the model
//! code calls it at step boundaries, as CUDA's own sticky errors work.

pub mod collective;
pub mod cpu;
pub mod cuda;

use anyhow::Result;

pub use cpu::embed::EmbedDims;
pub use cpu::loss::LmLossOut;
pub use cpu::optim::AdamHyper;

/// The ops the HRM needs, forward and backward paired. Shapes: activations are row-major
/// `[rows, width]` with rows = batch * sequence; `w` is a PyTorch `[out, in]` weight.
#[allow(clippy::too_many_arguments)]
pub trait Backend {
    type Act;
    type Param;
    type F32;
    type I32;

    fn name(&self) -> &'static str;
    /// Dense bf16 tensor-core peak of the device in FLOP/s, for MFU (`None`: not a GPU).
    fn peak_flops(&self) -> Option<f64> {
        None
    }
    /// Device memory in use now, in bytes (`None` where there is no separate device memory).
    fn device_memory_used(&self) -> Option<u64> {
        None
    }
    /// The first error any op met since the backend was made (then every op is skipped).
    fn check(&self) -> Result<()>;

    // Memory.
    /// Activations of `n` elements, zero.
    fn zeros(&self, n: usize) -> Self::Act;
    fn upload_act(&self, host: &[f32]) -> Self::Act;
    fn download_act(&self, buf: &Self::Act) -> Vec<f32>;
    fn act_len(&self, buf: &Self::Act) -> usize;
    fn copy(&self, src: &Self::Act, dst: &mut Self::Act);
    /// Sets every element to zero.
    fn zero_act(&self, buf: &mut Self::Act);
    fn upload_param(&self, host: &[f32]) -> Self::Param;
    fn download_param(&self, p: &Self::Param) -> Vec<f32>;
    /// f32 buffer of `n` zeros.
    fn zeros_f32(&self, n: usize) -> Self::F32;
    fn upload_f32(&self, host: &[f32]) -> Self::F32;
    fn download_f32(&self, buf: &Self::F32) -> Vec<f32>;
    fn upload_i32(&self, host: &[i32]) -> Self::I32;
    /// Overwrites `buf` (of the same length) with `host`.
    fn write_i32(&self, host: &[i32], buf: &mut Self::I32);
    /// No NaN or infinity in the buffer (the training NaN guard).
    fn all_finite(&self, buf: &Self::F32) -> bool;
    /// The index of the first buffer holding a NaN or infinity (one read-back for all).
    fn first_non_finite(&self, bufs: &[&Self::F32]) -> Option<usize> {
        bufs.iter().position(|b| !self.all_finite(b))
    }
    /// `ema = decay * ema + (1 - decay) * p`
    fn ema_update(&self, ema: &mut Self::F32, p: &Self::Param, decay: f32);

    // Elementwise.
    /// `out = a + b`
    fn add(&self, a: &Self::Act, b: &Self::Act, out: &mut Self::Act);
    /// `a += b`
    fn add_inplace(&self, a: &mut Self::Act, b: &Self::Act);
    /// Rows `b` with `mask[b]` of `z` [batch, seq, width] become `init` [width] at every position.
    fn reset_rows(&self, z: &mut Self::Act, init: &Self::Param, mask: &[bool], width: usize);
    /// `dst[b, j] = src[b, start + j]` for j < n, rows of `width`; `src` is [batch, seq, width].
    fn gather_positions(
        &self,
        src: &Self::Act,
        dst: &mut Self::Act,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    );
    /// The transpose of `gather_positions`, accumulating into `dsrc`.
    fn scatter_add_positions(
        &self,
        ddst: &Self::Act,
        dsrc: &mut Self::Act,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    );

    // Linear (GEMM).
    /// `y[rows, dout] = x[rows, din] w^T`
    fn linear_fwd(
        &self,
        x: &Self::Act,
        w: &Self::Param,
        y: &mut Self::Act,
        rows: usize,
        din: usize,
        dout: usize,
    );
    /// `dx (+)= dy w`
    fn linear_bwd_x(
        &self,
        dy: &Self::Act,
        w: &Self::Param,
        dx: &mut Self::Act,
        rows: usize,
        din: usize,
        dout: usize,
        accumulate: bool,
    );
    /// `dw += dy^T x` (weight gradients always accumulate)
    fn linear_bwd_w(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        dw: &mut Self::F32,
        rows: usize,
        din: usize,
        dout: usize,
    );

    /// The Q head in f32 on position 0 of `z_h` [batch, seq, d]: per row `(q_halt, q_continue)
    /// = w z_h[b, 0] + bias`, returned to the host (the halting decision needs them there).
    fn q_head_fwd(
        &self,
        z_h: &Self::Act,
        w: &Self::Param,
        bias: &Self::Param,
        batch: usize,
        seq: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<f32>);
    /// Backward of [`Backend::q_head_fwd`] from the host gradients of the two logits:
    /// `dw += dq^T z_h[:, 0]`, `dbias += sum dq`, `dz_h[:, 0] += dq w`.
    fn q_head_bwd(
        &self,
        dq_halt: &[f32],
        dq_continue: &[f32],
        z_h: &Self::Act,
        w: &Self::Param,
        dw: &mut Self::F32,
        dbias: &mut Self::F32,
        dz_h: &mut Self::Act,
        seq: usize,
        d: usize,
    );

    // Transformer block pieces.
    fn add_rms_norm_fwd(
        &self,
        x: &Self::Act,
        r: &Self::Act,
        y: &mut Self::Act,
        rstd: &mut Self::F32,
        d: usize,
        eps: f32,
    );
    fn rms_norm_bwd(&self, dy: &Self::Act, y: &Self::Act, rstd: &Self::F32, dx: &mut Self::Act, d: usize);
    fn swiglu_fwd(&self, gate_up: &Self::Act, out: &mut Self::Act, inter: usize);
    fn swiglu_bwd(&self, dout: &Self::Act, gate_up: &Self::Act, dgate_up: &mut Self::Act, inter: usize);
    fn rope_fwd(
        &self,
        qkv: &mut Self::Act,
        cos: &Self::F32,
        sin: &Self::F32,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn rope_bwd(
        &self,
        dqkv: &mut Self::Act,
        cos: &Self::F32,
        sin: &Self::F32,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn attention_fwd(
        &self,
        qkv: &Self::Act,
        out: &mut Self::Act,
        lse: &mut Self::F32,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn attention_bwd(
        &self,
        qkv: &Self::Act,
        out: &Self::Act,
        lse: &Self::F32,
        dout: &Self::Act,
        dqkv: &mut Self::Act,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );

    // Embedding.
    fn embed_fwd(
        &self,
        tokens: &Self::I32,
        puzzle_ids: &Self::I32,
        embed_w: &Self::Param,
        puzzle_w: Option<&Self::Param>,
        pos_w: Option<&Self::Param>,
        out: &mut Self::Act,
        dims: &EmbedDims,
    );
    fn embed_bwd(
        &self,
        dx: &Self::Act,
        tokens: &Self::I32,
        puzzle_ids: &Self::I32,
        dembed_w: &mut Self::F32,
        dpuzzle_w: Option<&mut Self::F32>,
        dpos_w: Option<&mut Self::F32>,
        dims: &EmbedDims,
    );

    // Loss: stablemax CE + argmax + exact flags; dlogits = grad_scale * d(row loss)/d logits.
    fn lm_loss(
        &self,
        logits: &Self::Act,
        labels: &Self::I32,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: Option<&mut Self::Act>,
    ) -> LmLossOut;

    // Optimizers.
    fn adam_atan2_step(
        &self,
        p: &mut Self::Param,
        g: &Self::F32,
        m: &mut Self::F32,
        v: &mut Self::F32,
        step: u32,
        h: &AdamHyper,
    );
    fn sign_sgd_step(
        &self,
        w: &mut Self::Param,
        g: &Self::F32,
        touched: &[bool],
        row_len: usize,
        lr: f32,
        weight_decay: f32,
    );

    // Data-parallel training (src/train/distributed.rs).
    /// Runs `op` over `bufs` across the ranks of `group`, in place, the same list of buffers on
    /// every rank. A backend without collectives supports world size 1 only.
    fn collective_f32(
        &self,
        group: &collective::ProcessGroup,
        op: collective::Collective,
        bufs: &mut [&mut Self::F32],
    ) -> Result<()> {
        let _ = (op, bufs);
        if group.world == 1 {
            return Ok(());
        }
        anyhow::bail!(
            "the {} backend has no collectives: data-parallel training (world size {}) runs on \
             the CUDA backend through NCCL (--device cuda, or emu for the CPU emulation)",
            self.name(),
            group.world
        )
    }
}

/// Where the model runs (`--device`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A CUDA GPU when one is usable, else the CPU (never the emulation).
    #[default]
    Auto,
    /// The f32 CPU backend.
    Cpu,
    /// The CUDA backend on a GPU (an error without one).
    Cuda,
    /// The CUDA backend on the CPU emulation of the kernels: for testing the CUDA code path
    /// without a GPU; orders of magnitude slower than either real backend.
    Emu,
}

/// What a [`DeviceChoice`] resolved to on this machine.
pub enum Resolved {
    Cpu,
    Cuda(cuda::Cuda),
}

/// Opens the backend for `choice`: the CUDA device (or the emulation) is opened here, so a
/// missing GPU is reported before any work starts.
pub fn resolve(choice: DeviceChoice) -> Result<Resolved> {
    use cuda::{CudaDevice, DeviceKind};
    let open = || -> Result<Resolved> {
        let dev = CudaDevice::shared().map_err(|e| anyhow::anyhow!("cannot open the CUDA device: {e}"))?;
        Ok(Resolved::Cuda(cuda::Cuda::new(dev)))
    };
    match choice {
        DeviceChoice::Cpu => Ok(Resolved::Cpu),
        DeviceChoice::Auto => match cuda::device::select() {
            Ok(DeviceKind::Gpu) => open(),
            _ => Ok(Resolved::Cpu),
        },
        DeviceChoice::Cuda => match cuda::device::select() {
            Ok(DeviceKind::Gpu) => open(),
            Ok(DeviceKind::Emulation) => anyhow::bail!(
                "--device cuda: no usable GPU (HRM_CUDA_EMU=1 selects the CPU emulation); \
                 `--device emu` runs the CUDA code path on the CPU emulation for testing"
            ),
            Err(why) => anyhow::bail!("--device cuda: {why}"),
        },
        DeviceChoice::Emu => {
            if !cuda::device::request_emulation() {
                anyhow::bail!("--device emu: a real GPU was already opened in this process");
            }
            match cuda::device::select() {
                Ok(DeviceKind::Emulation) => open(),
                Ok(DeviceKind::Gpu) => anyhow::bail!("--device emu: HRM_REQUIRE_GPU=1 forbids the emulation"),
                Err(why) => anyhow::bail!("--device emu: {why}"),
            }
        }
    }
}

/// Runs `$body` with `$be` bound to the backend `$choice` resolves to; the body is compiled
/// once per backend type, so it may call any generic code over `Backend`.
#[macro_export]
macro_rules! with_backend {
    ($choice:expr, |$be:ident| $body:expr) => {{
        match $crate::backend::resolve($choice)? {
            $crate::backend::Resolved::Cpu => {
                let $be = &$crate::backend::cpu::Cpu;
                $body
            }
            $crate::backend::Resolved::Cuda(cuda_backend) => {
                let $be = &cuda_backend;
                $body
            }
        }
    }};
}
