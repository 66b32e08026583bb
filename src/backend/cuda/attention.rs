//! Launchers of the fused attention kernels (`kernels/attention.cu`): non-causal multi-head
//! attention on fused qkv rows, the same layout and math as `backend::cpu::attention`.
//! bf16 activations, f32 log-sum-exp; the backward is two deterministic kernels (dQ, then dK/dV).
//! Head dims 16, 32, 64 and 128 run the tensor-core kernels (`attention_*_tc{hd}`: mma.sync
//! bf16 with f32 accumulation, 64 rows per block); the other multiples of 8 the f32 kernels.

use anyhow::{Result, anyhow, ensure};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::CudaDevice;
use super::kernels::launch_err;

/// Longest sequence accepted. The kernels stream keys (queries in dK/dV) through shared memory
/// in tiles and split each head's rows over blocks, so nothing but time grows with the length;
/// this bound keeps the kernels' int row arithmetic far from overflow. Tested to 4,096
/// (`tests/kernels_attention.rs`).
pub const MAX_SEQ: usize = 32_768;
/// Largest head dimension (a multiple of 8) the kernels handle.
pub const MAX_HEAD_DIM: usize = 128;
/// Threads per block (4 warps) and rows a block handles per pass (4 per warp), as in the kernel.
const THREADS: u32 = 128;
const ROWS_PER_PASS: usize = 16;
/// At most this many passes per block: longer sequences are split over more blocks.
const MAX_PASSES: usize = 4;

/// Tensor-core kernels (`kernels/attention.cu`, `TC_KERNELS`) per head dim: forward, dQ, dK/dV.
const TC_KERNELS: [(usize, [&str; 3]); 4] = [
    (16, ["attention_fwd_tc16", "attention_bwd_dq_tc16", "attention_bwd_dkdv_tc16"]),
    (32, ["attention_fwd_tc32", "attention_bwd_dq_tc32", "attention_bwd_dkdv_tc32"]),
    (64, ["attention_fwd_tc64", "attention_bwd_dq_tc64", "attention_bwd_dkdv_tc64"]),
    (128, ["attention_fwd_tc128", "attention_bwd_dq_tc128", "attention_bwd_dkdv_tc128"]),
];
/// Rows (queries, or keys in dK/dV) per block of the tensor-core kernels.
const TC_ROWS: usize = 64;

/// True when `head_dim` runs the tensor-core kernels (else the f32 kernels).
pub fn uses_tensor_cores(head_dim: usize) -> bool {
    TC_KERNELS.iter().any(|(hd, _)| *hd == head_dim)
}

/// The tensor-core kernels and launch (grid (row blocks, heads, batch), 128 threads) if
/// `head_dim` has them.
fn tc_launch(
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Option<([&'static str; 3], LaunchConfig)> {
    let names = TC_KERNELS.iter().find(|(hd, _)| *hd == head_dim)?.1;
    let cfg = LaunchConfig {
        grid_dim: (seq.div_ceil(TC_ROWS) as u32, heads as u32, batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Some((names, cfg))
}

/// Device scratch of [`attention_bwd`]: `D_i = sum_c dO_ic O_ic` per (batch, head, row).
pub struct AttentionScratch {
    delta: CudaSlice<f32>,
}

impl AttentionScratch {
    pub fn new(dev: &CudaDevice, batch: usize, heads: usize, seq: usize) -> Result<Self> {
        Self::with_len(dev, batch * heads * seq)
    }

    /// Scratch for `rows` (batch x heads x seq) rows.
    pub fn with_len(dev: &CudaDevice, rows: usize) -> Result<Self> {
        // SAFETY: the dQ kernel writes every element before the dK/dV kernel reads it.
        let delta = unsafe { dev.alloc_uninit::<f32>(rows) }
            .map_err(|e| anyhow!("allocating the attention backward's scratch: {e}"))?;
        Ok(AttentionScratch { delta })
    }

    /// Rows (batch x heads x seq) it has room for.
    pub fn len(&self) -> usize {
        self.delta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.delta.is_empty()
    }
}

/// Checks the shape and returns the launch configuration: grid (row chunks, heads, batch),
/// and the rows per chunk.
fn launch_shape(batch: usize, seq: usize, heads: usize, head_dim: usize) -> Result<(LaunchConfig, i32)> {
    ensure!((1..=MAX_SEQ).contains(&seq), "attention: seq {seq} not in 1..={MAX_SEQ}");
    ensure!(
        head_dim.is_multiple_of(8) && (8..=MAX_HEAD_DIM).contains(&head_dim),
        "attention: head_dim {head_dim} is not a multiple of 8 in 8..={MAX_HEAD_DIM}"
    );
    ensure!((1..=65535).contains(&heads), "attention: heads {heads} not in 1..=65535");
    ensure!(batch <= 65535, "attention: batch {batch} > 65535 (grid z)");
    ensure!(
        batch.checked_mul(seq * 3 * heads * head_dim).is_some_and(|n| n <= i64::MAX as usize),
        "attention: qkv too large"
    );
    let passes = seq.div_ceil(ROWS_PER_PASS);
    let chunks = passes.div_ceil(MAX_PASSES);
    let chunk = passes.div_ceil(chunks) * ROWS_PER_PASS;
    let cfg = LaunchConfig {
        grid_dim: (chunks as u32, heads as u32, batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((cfg, chunk as i32))
}

/// The kernels read bf16 pairs: buffers they read must be 4-byte aligned.
fn ensure_aligned(p: u64, what: &str) -> Result<()> {
    ensure!(p.is_multiple_of(4), "attention: {what} device pointer {p:#x} is not 4-byte aligned");
    Ok(())
}

/// `out[T, heads*hd]` = softmax(q k^T / sqrt(hd)) v per batch element and head, from
/// `qkv[T, 3 * heads*hd]` (T = batch * seq); `lse[batch, heads, seq]` = log-sum-exp of the
/// scaled scores (kept for the backward).
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd(
    dev: &CudaDevice,
    qkv: &impl DevicePtr<bf16>,
    out: &mut impl DevicePtrMut<bf16>,
    lse: &mut impl DevicePtrMut<f32>,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    fwd(dev, qkv, (0, 0), out, lse, batch, seq, heads, head_dim)
}

/// [`attention_fwd`] with `rope = (cos, sin)` device pointers of the RoPE tables, or (0, 0).
#[allow(clippy::too_many_arguments)]
fn fwd(
    dev: &CudaDevice,
    qkv: &impl DevicePtr<bf16>,
    rope: (u64, u64),
    out: &mut impl DevicePtrMut<bf16>,
    lse: &mut impl DevicePtrMut<f32>,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    let (cfg, chunk) = launch_shape(batch, seq, heads, head_dim)?;
    let (t, d) = (batch * seq, heads * head_dim);
    ensure!(qkv.len() >= t * 3 * d, "attention_fwd: qkv has {} < {} elements", qkv.len(), t * 3 * d);
    ensure!(out.len() >= t * d, "attention_fwd: out has {} < {} elements", out.len(), t * d);
    ensure!(
        lse.len() >= batch * heads * seq,
        "attention_fwd: lse has {} < {} elements",
        lse.len(),
        batch * heads * seq
    );
    if batch == 0 {
        return Ok(());
    }
    let s = &dev.stream;
    let (pq, _g1) = qkv.device_ptr(s);
    let (po, _g2) = out.device_ptr_mut(s);
    let (pl, _g3) = lse.device_ptr_mut(s);
    ensure_aligned(pq, "qkv")?;
    let (seq_i, heads_i, hd_i) = (seq as i32, heads as i32, head_dim as i32);
    if let Some((names, tc)) = tc_launch(batch, seq, heads, head_dim) {
        ensure_aligned(po, "out")?; // written as bf16 pairs
        let name = names[0];
        let f = dev.func("attention", name)?;
        let mut b = s.launch_builder(&f);
        b.arg(&pq).arg(&po).arg(&pl).arg(&seq_i).arg(&heads_i).arg(&rope.0).arg(&rope.1);
        // SAFETY: argument types and order match the kernel; sizes and shape checked above.
        unsafe { b.launch(tc) }.map_err(launch_err(name))?;
        return Ok(());
    }
    ensure!(rope == (0, 0), "attention: fused RoPE needs a tensor-core head dim, not {head_dim}");
    let f = dev.func("attention", "attention_fwd_bf16")?;
    let mut b = s.launch_builder(&f);
    b.arg(&pq).arg(&po).arg(&pl).arg(&seq_i).arg(&heads_i).arg(&hd_i).arg(&chunk);
    // SAFETY: argument types and order match the kernel; sizes and shape checked above.
    unsafe { b.launch(cfg) }.map_err(launch_err("attention_fwd_bf16"))?;
    Ok(())
}

/// Gradient of [`attention_fwd`] with respect to q, k and v, written into `dqkv` (overwritten,
/// the fused layout of `qkv`), from the forward's `out` and `lse` and the output gradient
/// `dout[T, heads*hd]`. `scratch` must be made for at least this batch x heads x seq.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dev: &CudaDevice,
    qkv: &impl DevicePtr<bf16>,
    out: &impl DevicePtr<bf16>,
    lse: &impl DevicePtr<f32>,
    dout: &impl DevicePtr<bf16>,
    dqkv: &mut impl DevicePtrMut<bf16>,
    scratch: &mut AttentionScratch,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    bwd(dev, qkv, (0, 0), out, lse, dout, dqkv, scratch, batch, seq, heads, head_dim)
}

/// [`attention_bwd`] with `rope = (cos, sin)` device pointers of the RoPE tables, or (0, 0).
#[allow(clippy::too_many_arguments)]
fn bwd(
    dev: &CudaDevice,
    qkv: &impl DevicePtr<bf16>,
    rope: (u64, u64),
    out: &impl DevicePtr<bf16>,
    lse: &impl DevicePtr<f32>,
    dout: &impl DevicePtr<bf16>,
    dqkv: &mut impl DevicePtrMut<bf16>,
    scratch: &mut AttentionScratch,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    let (cfg, chunk) = launch_shape(batch, seq, heads, head_dim)?;
    let (t, d) = (batch * seq, heads * head_dim);
    ensure!(qkv.len() >= t * 3 * d, "attention_bwd: qkv has {} < {} elements", qkv.len(), t * 3 * d);
    ensure!(dqkv.len() >= t * 3 * d, "attention_bwd: dqkv has {} < {} elements", dqkv.len(), t * 3 * d);
    ensure!(out.len() >= t * d && dout.len() >= t * d, "attention_bwd: out/dout have < {} elements", t * d);
    ensure!(
        lse.len() >= batch * heads * seq,
        "attention_bwd: lse has {} < {} elements",
        lse.len(),
        batch * heads * seq
    );
    ensure!(
        scratch.delta.len() >= batch * heads * seq,
        "attention_bwd: scratch made for {} rows, need {}",
        scratch.delta.len(),
        batch * heads * seq
    );
    if batch == 0 {
        return Ok(());
    }
    let s = &dev.stream;
    let (pq, _g1) = qkv.device_ptr(s);
    let (po, _g2) = out.device_ptr(s);
    let (pl, _g3) = lse.device_ptr(s);
    let (pdo, _g4) = dout.device_ptr(s);
    let (pdq, _g5) = dqkv.device_ptr_mut(s);
    let (pd, _g6) = scratch.delta.device_ptr_mut(s);
    ensure_aligned(pq, "qkv")?;
    ensure_aligned(pdo, "dout")?;
    let (seq_i, heads_i, hd_i) = (seq as i32, heads as i32, head_dim as i32);
    if let Some((names, tc)) = tc_launch(batch, seq, heads, head_dim) {
        ensure_aligned(pdq, "dqkv")?; // written as bf16 pairs
        let name = names[1];
        let f = dev.func("attention", name)?;
        let mut b = s.launch_builder(&f);
        b.arg(&pq).arg(&po).arg(&pl).arg(&pdo).arg(&pdq).arg(&pd).arg(&seq_i).arg(&heads_i);
        b.arg(&rope.0).arg(&rope.1);
        // SAFETY: argument types and order match the kernel; it writes the q columns of dqkv
        // and all of delta.
        unsafe { b.launch(tc) }.map_err(launch_err(name))?;
        let name = names[2];
        let f = dev.func("attention", name)?;
        let mut b = s.launch_builder(&f);
        b.arg(&pq).arg(&pl).arg(&pdo).arg(&pd).arg(&pdq).arg(&seq_i).arg(&heads_i);
        b.arg(&rope.0).arg(&rope.1);
        // SAFETY: as above; runs after the dQ kernel on the same stream (reads its delta) and
        // writes the k and v columns of dqkv.
        unsafe { b.launch(tc) }.map_err(launch_err(name))?;
        return Ok(());
    }
    ensure!(rope == (0, 0), "attention: fused RoPE needs a tensor-core head dim, not {head_dim}");
    let f_dq = dev.func("attention", "attention_bwd_dq_bf16")?;
    let f_dkdv = dev.func("attention", "attention_bwd_dkdv_bf16")?;
    let mut b = s.launch_builder(&f_dq);
    b.arg(&pq).arg(&po).arg(&pl).arg(&pdo).arg(&pdq).arg(&pd);
    b.arg(&seq_i).arg(&heads_i).arg(&hd_i).arg(&chunk);
    // SAFETY: as above; the dQ kernel writes the q columns of dqkv and all of delta.
    unsafe { b.launch(cfg) }.map_err(launch_err("attention_bwd_dq_bf16"))?;
    let mut b = s.launch_builder(&f_dkdv);
    b.arg(&pq).arg(&pl).arg(&pdo).arg(&pd).arg(&pdq);
    b.arg(&seq_i).arg(&heads_i).arg(&hd_i).arg(&chunk);
    // SAFETY: as above; runs after the dQ kernel on the same stream (reads its delta) and
    // writes the k and v columns of dqkv.
    unsafe { b.launch(cfg) }.map_err(launch_err("attention_bwd_dkdv_bf16"))?;
    Ok(())
}

/// Checks the RoPE tables (f32 `[seq, head_dim]`) of the fused ops.
fn rope_tables_ok(cos: usize, sin: usize, seq: usize, head_dim: usize) -> Result<()> {
    ensure!(
        uses_tensor_cores(head_dim),
        "attention with fused RoPE: head_dim {head_dim} has no tensor-core kernel (16, 32, 64, 128); \
         use rope + attention"
    );
    ensure!(
        cos >= seq * head_dim && sin >= seq * head_dim,
        "attention with fused RoPE: tables have {cos}/{sin} < {} elements",
        seq * head_dim
    );
    Ok(())
}

/// `attention_fwd(rope(qkv))` in one pass: q and k rotated (rotate-half RoPE with the f32
/// tables `cos`, `sin` `[seq, head_dim]`, as `kernels::rope_fwd`) while they are staged;
/// `qkv` (before RoPE) is not modified. Tensor-core head dims only (see [`uses_tensor_cores`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_rope_fwd(
    dev: &CudaDevice,
    qkv: &impl DevicePtr<bf16>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    out: &mut impl DevicePtrMut<bf16>,
    lse: &mut impl DevicePtrMut<f32>,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    rope_tables_ok(cos.len(), sin.len(), seq, head_dim)?;
    let (pc, _g1) = cos.device_ptr(&dev.stream);
    let (ps, _g2) = sin.device_ptr(&dev.stream);
    fwd(dev, qkv, (pc, ps), out, lse, batch, seq, heads, head_dim)
}

/// Gradient of [`attention_rope_fwd`] with respect to `qkv` before RoPE (dq and dk rotated
/// back, as `kernels::rope_bwd` after [`attention_bwd`]); `qkv` is the un-rotated input.
#[allow(clippy::too_many_arguments)]
pub fn attention_rope_bwd(
    dev: &CudaDevice,
    qkv: &impl DevicePtr<bf16>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    out: &impl DevicePtr<bf16>,
    lse: &impl DevicePtr<f32>,
    dout: &impl DevicePtr<bf16>,
    dqkv: &mut impl DevicePtrMut<bf16>,
    scratch: &mut AttentionScratch,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    rope_tables_ok(cos.len(), sin.len(), seq, head_dim)?;
    let (pc, _g1) = cos.device_ptr(&dev.stream);
    let (ps, _g2) = sin.device_ptr(&dev.stream);
    bwd(dev, qkv, (pc, ps), out, lse, dout, dqkv, scratch, batch, seq, heads, head_dim)
}
