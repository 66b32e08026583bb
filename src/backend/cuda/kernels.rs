//! One launcher per kernel in `kernels/*.cu`. Each checks buffer sizes, picks the launch shape,
//! and enqueues the kernel on the device's stream (asynchronous on a GPU). Activations are bf16,
//! weights/optimizer state f32, as described in each `.cu` file's header.

use anyhow::{Result, anyhow, ensure};
use cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use half::bf16;

use super::device::CudaDevice;
pub use crate::backend::TransposeDims;
use crate::backend::cpu::embed::EmbedDims;
use crate::backend::cpu::optim::AdamHyper;

/// Threads per block of the element-wise kernels.
pub(super) const BLOCK: u32 = 256;
/// Grid cap of the grid-stride kernels: 132 SMs x 16 blocks of 256 threads fill an H200.
pub(super) const MAX_GRID: usize = 132 * 16;

pub(super) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Element-wise launch for kernels whose fast path handles 8 elements per thread (16-byte
/// vectors of bf16) when `lanes_of_8` holds, one element per thread otherwise.
pub(super) fn elementwise_vec8(n: usize, lanes_of_8: bool) -> LaunchConfig {
    elementwise(if lanes_of_8 { n.div_ceil(8) } else { n })
}

/// One warp per row, 8 rows per 256-thread block.
fn warp_per_row(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil((BLOCK / 32) as usize).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Shared memory the embedding backward may use for its per-token sums; above it they live in
/// the partial table in global memory (same code, another stride).
const EMBED_SMEM_MAX: usize = 49152;
/// Threads (= columns) per block of the embedding backward's first pass.
const EMBED_BWD_THREADS: usize = 128;

/// Blocks of the embedding backward: (column tiles, position groups) and the positions per
/// group. Groups of one position up to 256 positions (longer sequences share blocks), so the
/// partial table has at most 256 slices.
fn embed_bwd_grid(s_len: usize, hidden: usize) -> (usize, usize, usize) {
    let sb = s_len.div_ceil(256).max(1);
    (hidden.div_ceil(EMBED_BWD_THREADS).max(1), s_len.div_ceil(sb).max(1), sb)
}

/// Length (f32 elements) of the scratch [`embed_bwd`] needs: one vocab x hidden table of
/// token sums per position group.
pub fn embed_bwd_scratch_len(dims: &EmbedDims, vocab: usize) -> usize {
    let (_, groups, _) = embed_bwd_grid(dims.total_seq(), dims.hidden);
    (groups * vocab * dims.hidden).max(1)
}

fn per_row(rows: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

pub(super) fn launch_err(kernel: &str) -> impl FnOnce(cudarc::driver::DriverError) -> anyhow::Error + '_ {
    move |e| anyhow!("launching {kernel}: {e}")
}

/// Device pointer of an optional input buffer (0 = nullptr for the kernel) and cudarc's guard,
/// which must live until after the launch (dropping it records the stream's read of the buffer).
fn opt_ptr<'a, T>(s: &'a CudaStream, b: Option<&'a CudaSlice<T>>) -> (u64, Option<SyncOnDrop<'a>>) {
    match b {
        Some(b) => {
            let (p, g) = b.device_ptr(s);
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// [`opt_ptr`] for an optional buffer the kernel writes (the guard records a write).
fn opt_ptr_mut<'a, T>(s: &'a CudaStream, b: Option<&'a mut CudaSlice<T>>) -> (u64, Option<SyncOnDrop<'a>>) {
    match b {
        Some(b) => {
            let (p, g) = b.device_ptr_mut(s);
            (p, Some(g))
        }
        None => (0, None),
    }
}

pub(super) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{what} = {v} does not fit the kernel's int"))
}

/// The batched transpose of [`TransposeDims`] (a bit-exact copy).
pub fn transpose(
    dev: &CudaDevice,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    t: &TransposeDims,
) -> Result<()> {
    transpose_entry(dev, "transpose_bf16", x, y, t)
}

/// The emulation's self-test: [`transpose`] through its broken twin, whose tile barrier is
/// missing (kernels/transpose.cu); the emulation must not let it pass.
#[doc(hidden)]
pub fn transpose_missing_sync_selftest(
    dev: &CudaDevice,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    t: &TransposeDims,
) -> Result<()> {
    transpose_entry(dev, "transpose_bf16_missing_sync", x, y, t)
}

fn transpose_entry(
    dev: &CudaDevice,
    entry: &'static str,
    x: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    t: &TransposeDims,
) -> Result<()> {
    let TransposeDims { batch, rows, cols, x_ld, y_ld } = *t;
    ensure!(x_ld >= cols && y_ld >= rows, "transpose {t:?}: a leading dimension below its row");
    let (nx, ny) = (batch * rows * x_ld, batch * cols * y_ld);
    ensure!(x.len() >= nx && y.len() >= ny, "transpose {t:?}: buffers too small");
    if ny == 0 {
        return Ok(());
    }
    ensure!(batch <= 65_535, "transpose: batch {batch} exceeds the grid's z limit (65,535)");
    let f = dev.func("transpose", entry)?;
    let s = &dev.stream;
    let (px, _g1) = x.device_ptr(s);
    let (py, _g2) = y.device_ptr_mut(s);
    let (ri, ci) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let (xl, yl) = (i32_of(x_ld, "x_ld")?, i32_of(y_ld, "y_ld")?);
    i32_of(rows * x_ld, "rows x x_ld")?;
    i32_of(cols * y_ld, "cols x y_ld")?;
    let mut b = s.launch_builder(&f);
    b.arg(&px).arg(&py).arg(&ri).arg(&ci).arg(&xl).arg(&yl);
    let shape = LaunchConfig {
        // the y axis covers y_ld, so the tiles past `rows` write the pads
        grid_dim: (cols.div_ceil(32) as u32, y_ld.div_ceil(32) as u32, batch as u32),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { b.launch(shape) }.map_err(launch_err(entry))?;
    Ok(())
}

/// `dst[r, c] = src[r, c]` for r < rows, c < cols, else 0: `src` [rows, cols] into `dst`
/// [rows_ld, cols_ld] (kernels/pad.cu).
pub fn pad_bf16(
    dev: &CudaDevice,
    src: &impl DevicePtr<bf16>,
    dst: &mut impl DevicePtrMut<bf16>,
    (rows, cols): (usize, usize),
    (rows_ld, cols_ld): (usize, usize),
) -> Result<()> {
    ensure!(rows_ld >= rows && cols_ld >= cols, "pad {rows} x {cols} to {rows_ld} x {cols_ld}");
    let n = rows_ld * cols_ld;
    ensure!(src.len() >= rows * cols && dst.len() >= n, "pad_bf16: buffers too small");
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("pad", "pad_bf16")?;
    let s = &dev.stream;
    let (ps, _g1) = src.device_ptr(s);
    let (pd, _g2) = dst.device_ptr_mut(s);
    let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?);
    let (rl, cl) = (i32_of(rows_ld, "rows_ld")?, i32_of(cols_ld, "cols_ld")?);
    let mut b = s.launch_builder(&f);
    b.arg(&ps).arg(&pd).arg(&r).arg(&c).arg(&rl).arg(&cl);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { b.launch(elementwise(n)) }.map_err(launch_err("pad_bf16"))?;
    Ok(())
}

/// `dst[r, c] += src[r, c]` for `dst` [rows, cols] and `src` with rows of `src_ld`
/// (kernels/pad.cu).
pub fn add_unpad_f32(
    dev: &CudaDevice,
    src: &impl DevicePtr<f32>,
    dst: &mut impl DevicePtrMut<f32>,
    rows: usize,
    cols: usize,
    src_ld: usize,
) -> Result<()> {
    ensure!(src_ld >= cols, "add_unpad_f32: leading dimension {src_ld} below {cols} columns");
    let n = rows * cols;
    ensure!(src.len() >= rows * src_ld && dst.len() >= n, "add_unpad_f32: buffers too small");
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("pad", "add_unpad_f32")?;
    let s = &dev.stream;
    let (ps, _g1) = src.device_ptr(s);
    let (pd, _g2) = dst.device_ptr_mut(s);
    let (r, c, l) = (i32_of(rows, "rows")?, i32_of(cols, "cols")?, i32_of(src_ld, "src_ld")?);
    let mut b = s.launch_builder(&f);
    b.arg(&ps).arg(&pd).arg(&r).arg(&c).arg(&l);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { b.launch(elementwise(n)) }.map_err(launch_err("add_unpad_f32"))?;
    Ok(())
}

/// `y = rmsnorm(x + r)` per row of `d` (no weight), `rstd[row] = 1/sqrt(sum((x+r)^2) / count +
/// eps)`: `count` = d, or fewer where the rows end in zero pads (TRM's rows of seq_ld).
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_fwd(
    dev: &CudaDevice,
    x: &impl DevicePtr<bf16>,
    r: &impl DevicePtr<bf16>,
    y: &mut impl DevicePtrMut<bf16>,
    rstd: &mut impl DevicePtrMut<f32>,
    rows: usize,
    (d, count): (usize, usize),
    eps: f32,
) -> Result<()> {
    ensure!(x.len() >= rows * d && r.len() >= rows * d && y.len() >= rows * d);
    ensure!(count <= d && count > 0, "norm over {count} of rows of {d}");
    ensure!(rstd.len() >= rows);
    if rows == 0 {
        return Ok(());
    }
    let f = dev.func("norm", "add_rms_norm_fwd_bf16")?;
    let s = &dev.stream;
    let (px, _g1) = x.device_ptr(s);
    let (pr, _g2) = r.device_ptr(s);
    let (py, _g3) = y.device_ptr_mut(s);
    let (ps, _g4) = rstd.device_ptr_mut(s);
    let (rows_i, d_i, n_i) = (i32_of(rows, "rows")?, i32_of(d, "d")?, i32_of(count, "count")?);
    let mut b = s.launch_builder(&f);
    b.arg(&px).arg(&pr).arg(&py).arg(&ps).arg(&rows_i).arg(&d_i).arg(&n_i).arg(&eps);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { b.launch(warp_per_row(rows)) }.map_err(launch_err("add_rms_norm_fwd_bf16"))?;
    Ok(())
}

/// `dx = rstd * (dy - y * sum(dy * y) / count)`: the gradient w.r.t. `x + r` (`count` as in
/// [`add_rms_norm_fwd`]; zero pads of dy and y give zero pads of dx).
pub fn rms_norm_bwd(
    dev: &CudaDevice,
    dy: &impl DevicePtr<bf16>,
    y: &impl DevicePtr<bf16>,
    rstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    (d, count): (usize, usize),
) -> Result<()> {
    ensure!(dy.len() >= rows * d && y.len() >= rows * d && dx.len() >= rows * d);
    ensure!(count <= d && count > 0, "norm over {count} of rows of {d}");
    ensure!(rstd.len() >= rows);
    if rows == 0 {
        return Ok(());
    }
    let f = dev.func("norm", "rms_norm_bwd_bf16")?;
    let s = &dev.stream;
    let (pdy, _g1) = dy.device_ptr(s);
    let (py, _g2) = y.device_ptr(s);
    let (ps, _g3) = rstd.device_ptr(s);
    let (pdx, _g4) = dx.device_ptr_mut(s);
    let (rows_i, d_i, n_i) = (i32_of(rows, "rows")?, i32_of(d, "d")?, i32_of(count, "count")?);
    let mut b = s.launch_builder(&f);
    b.arg(&pdy).arg(&py).arg(&ps).arg(&pdx).arg(&rows_i).arg(&d_i).arg(&n_i);
    // SAFETY: as above.
    unsafe { b.launch(warp_per_row(rows)) }.map_err(launch_err("rms_norm_bwd_bf16"))?;
    Ok(())
}

/// `out = silu(gate) * up` on rows `[gate (inter) | up (inter)]`.
pub fn swiglu_fwd(
    dev: &CudaDevice,
    gate_up: &impl DevicePtr<bf16>,
    out: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    inter: usize,
) -> Result<()> {
    ensure!(gate_up.len() >= rows * 2 * inter && out.len() >= rows * inter);
    let f = dev.func("swiglu", "swiglu_fwd_bf16")?;
    let s = &dev.stream;
    let (pg, _g1) = gate_up.device_ptr(s);
    let (po, _g2) = out.device_ptr_mut(s);
    let (rows_l, inter_i) = (rows as i64, i32_of(inter, "inter")?);
    let mut b = s.launch_builder(&f);
    b.arg(&pg).arg(&po).arg(&rows_l).arg(&inter_i);
    let shape = elementwise_vec8(rows * inter, inter.is_multiple_of(8));
    // SAFETY: as above.
    unsafe { b.launch(shape) }.map_err(launch_err("swiglu_fwd_bf16"))?;
    Ok(())
}

/// `d gate = dout * up * silu'(gate)`, `d up = dout * silu(gate)` (overwrites `dgate_up`).
pub fn swiglu_bwd(
    dev: &CudaDevice,
    dout: &impl DevicePtr<bf16>,
    gate_up: &impl DevicePtr<bf16>,
    dgate_up: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    inter: usize,
) -> Result<()> {
    ensure!(dout.len() >= rows * inter);
    ensure!(gate_up.len() >= rows * 2 * inter && dgate_up.len() >= rows * 2 * inter);
    let f = dev.func("swiglu", "swiglu_bwd_bf16")?;
    let s = &dev.stream;
    let (pd, _g1) = dout.device_ptr(s);
    let (pg, _g2) = gate_up.device_ptr(s);
    let (pdg, _g3) = dgate_up.device_ptr_mut(s);
    let (rows_l, inter_i) = (rows as i64, i32_of(inter, "inter")?);
    let mut b = s.launch_builder(&f);
    b.arg(&pd).arg(&pg).arg(&pdg).arg(&rows_l).arg(&inter_i);
    let shape = elementwise_vec8(rows * inter, inter.is_multiple_of(8));
    // SAFETY: as above.
    unsafe { b.launch(shape) }.map_err(launch_err("swiglu_bwd_bf16"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn rope(
    dev: &CudaDevice,
    kernel: &'static str,
    qkv: &mut impl DevicePtrMut<bf16>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    tokens: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    ensure!(head_dim.is_multiple_of(2) && seq > 0);
    ensure!(qkv.len() >= tokens * 3 * heads * head_dim);
    ensure!(cos.len() >= seq * head_dim && sin.len() >= seq * head_dim);
    let f = dev.func("rope", kernel)?;
    let s = &dev.stream;
    let (pq, _g1) = qkv.device_ptr_mut(s);
    let (pc, _g2) = cos.device_ptr(s);
    let (ps, _g3) = sin.device_ptr(s);
    let tokens_l = tokens as i64;
    let (seq_i, heads_i, hd_i) =
        (i32_of(seq, "seq")?, i32_of(heads, "heads")?, i32_of(head_dim, "head_dim")?);
    let mut b = s.launch_builder(&f);
    b.arg(&pq).arg(&pc).arg(&ps).arg(&tokens_l).arg(&seq_i).arg(&heads_i).arg(&hd_i);
    let shape = elementwise_vec8(tokens * heads * head_dim, (head_dim / 2).is_multiple_of(8));
    // SAFETY: as above.
    unsafe { b.launch(shape) }.map_err(launch_err(kernel))?;
    Ok(())
}

/// RoPE (rotate-half) in place on the q and k parts of `qkv` rows; token t at position t % seq.
#[allow(clippy::too_many_arguments)]
pub fn rope_fwd(
    dev: &CudaDevice,
    qkv: &mut impl DevicePtrMut<bf16>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    tokens: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    rope(dev, "rope_fwd_bf16", qkv, cos, sin, tokens, seq, heads, head_dim)
}

/// The transpose of [`rope_fwd`], in place on the gradient of `qkv`.
#[allow(clippy::too_many_arguments)]
pub fn rope_bwd(
    dev: &CudaDevice,
    dqkv: &mut impl DevicePtrMut<bf16>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    tokens: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    rope(dev, "rope_bwd_bf16", dqkv, cos, sin, tokens, seq, heads, head_dim)
}

/// Token + puzzle-prefix embedding (f32 tables, bf16 output); see kernels/embed.cu.
#[allow(clippy::too_many_arguments)]
pub fn embed_fwd(
    dev: &CudaDevice,
    tokens: &impl DevicePtr<i32>,
    puzzle_ids: &impl DevicePtr<i32>,
    embed_w: &impl DevicePtr<f32>,
    puzzle_w: &impl DevicePtr<f32>,
    pos_w: Option<&CudaSlice<f32>>,
    out: &mut impl DevicePtrMut<bf16>,
    dims: &EmbedDims,
) -> Result<()> {
    let (s_len, h, nd) = (dims.total_seq(), dims.hidden, dims.puzzle_emb_ndim);
    ensure!(tokens.len() >= dims.batch * dims.seq_len && puzzle_ids.len() >= dims.batch);
    ensure!(out.len() >= dims.batch * s_len * h && embed_w.len().is_multiple_of(h));
    ensure!(nd <= dims.prefix_len * h && (nd == 0 || puzzle_w.len().is_multiple_of(nd)));
    if let Some(p) = pos_w {
        ensure!(p.len() >= s_len * h);
    }
    let vocab = i32_of(embed_w.len() / h, "vocab")?;
    let n_puzzles = i32_of(puzzle_w.len().checked_div(nd).unwrap_or(0), "puzzles")?;
    let f = dev.func("embed", "embed_fwd_bf16")?;
    let s = &dev.stream;
    let (pt, _g1) = tokens.device_ptr(s);
    let (pp, _g2) = puzzle_ids.device_ptr(s);
    let (pe, _g3) = embed_w.device_ptr(s);
    let (ppw, _g4) = puzzle_w.device_ptr(s);
    let (ppos, _g6) = opt_ptr(s, pos_w);
    let (po, _g5) = out.device_ptr_mut(s);
    let ints = [
        i32_of(dims.batch, "batch")?,
        i32_of(dims.seq_len, "seq_len")?,
        i32_of(dims.prefix_len, "prefix_len")?,
        i32_of(h, "hidden")?,
        i32_of(nd, "puzzle_emb_ndim")?,
    ];
    let mut b = s.launch_builder(&f);
    b.arg(&pt).arg(&pp).arg(&pe).arg(&ppw).arg(&ppos).arg(&po);
    for v in &ints {
        b.arg(v);
    }
    b.arg(&vocab).arg(&n_puzzles).arg(&dims.scale);
    // SAFETY: as above.
    unsafe { b.launch(warp_per_row(dims.batch * s_len)) }.map_err(launch_err("embed_fwd_bf16"))?;
    Ok(())
}

/// Scatter-add backward of [`embed_fwd`] into f32 gradient tables and, in `dpuzzle_rows`
/// [batch, puzzle_emb_ndim], one puzzle gradient row per batch row (accumulates, `+=`),
/// deterministic: fixed summation orders, no float atomics (see `kernels/embed.cu`). `scratch`
/// holds at least [`embed_bwd_scratch_len`] f32 (its contents are overwritten).
#[allow(clippy::too_many_arguments)]
pub fn embed_bwd(
    dev: &CudaDevice,
    dx: &impl DevicePtr<bf16>,
    tokens: &impl DevicePtr<i32>,
    dembed_w: &mut impl DevicePtrMut<f32>,
    dpuzzle_rows: &mut impl DevicePtrMut<f32>,
    dpos_w: Option<&mut CudaSlice<f32>>,
    scratch: &mut impl DevicePtrMut<f32>,
    dims: &EmbedDims,
) -> Result<()> {
    let (s_len, h, nd) = (dims.total_seq(), dims.hidden, dims.puzzle_emb_ndim);
    ensure!(dx.len() >= dims.batch * s_len * h);
    ensure!(tokens.len() >= dims.batch * dims.seq_len);
    ensure!(dembed_w.len().is_multiple_of(h) && (nd == 0 || dpuzzle_rows.len() >= dims.batch * nd));
    if let Some(p) = &dpos_w {
        ensure!(p.len() >= s_len * h);
    }
    let vocab = dembed_w.len() / h;
    let need = embed_bwd_scratch_len(dims, vocab);
    ensure!(scratch.len() >= need, "embed_bwd: scratch of {} f32, need {need}", scratch.len());
    let (gx, gy, sb) = embed_bwd_grid(s_len, h);
    let smem = vocab * EMBED_BWD_THREADS * 4;
    let use_smem = smem <= EMBED_SMEM_MAX;
    let s = &dev.stream;
    let (ppart, _gs) = scratch.device_ptr_mut(s);
    {
        let f = dev.func("embed", "embed_bwd_partial_bf16")?;
        let (ppos, _g0) = opt_ptr_mut(s, dpos_w);
        let (pdx, _g1) = dx.device_ptr(s);
        let (pt, _g2) = tokens.device_ptr(s);
        let (ppw, _g5) = dpuzzle_rows.device_ptr_mut(s);
        let ints = [
            i32_of(dims.batch, "batch")?,
            i32_of(dims.seq_len, "seq_len")?,
            i32_of(dims.prefix_len, "prefix_len")?,
            i32_of(h, "hidden")?,
            i32_of(nd, "puzzle_emb_ndim")?,
            i32_of(vocab, "vocab")?,
            i32_of(sb, "positions per block")?,
            use_smem as i32,
        ];
        let mut b = s.launch_builder(&f);
        b.arg(&pdx).arg(&pt).arg(&ppart).arg(&ppw).arg(&ppos);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&dims.scale);
        let cfg = LaunchConfig {
            grid_dim: (gx as u32, gy as u32, 1),
            block_dim: (EMBED_BWD_THREADS as u32, 1, 1),
            shared_mem_bytes: if use_smem { smem as u32 } else { 0 },
        };
        // SAFETY: sizes checked above; the kernel's signature matches the arguments.
        unsafe { b.launch(cfg) }.map_err(launch_err("embed_bwd_partial_bf16"))?;
    }
    let f = dev.func("embed", "embed_bwd_reduce_f32")?;
    let (pe, _g4) = dembed_w.device_ptr_mut(s);
    let parts = i32_of(gy, "position groups")?;
    let n = (vocab * h) as i64;
    let mut b = s.launch_builder(&f);
    b.arg(&ppart).arg(&pe).arg(&parts).arg(&n);
    // SAFETY: as above.
    unsafe { b.launch(elementwise(vocab * h)) }.map_err(launch_err("embed_bwd_reduce_f32"))?;
    Ok(())
}

/// `a += b` (input injection `z + x`), bf16 with f32 math.
pub fn add_inplace(
    dev: &CudaDevice,
    a: &mut impl DevicePtrMut<bf16>,
    b: &impl DevicePtr<bf16>,
    n: usize,
) -> Result<()> {
    ensure!(a.len() >= n && b.len() >= n);
    let f = dev.func("embed", "add_inplace_bf16")?;
    let s = &dev.stream;
    let (pa, _g1) = a.device_ptr_mut(s);
    let (pb, _g2) = b.device_ptr(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pa).arg(&pb).arg(&n_l);
    // SAFETY: as above.
    unsafe { lb.launch(elementwise_vec8(n, true)) }.map_err(launch_err("add_inplace_bf16"))?;
    Ok(())
}

/// Device outputs of [`stablemax_ce`], one entry per row (sequence) or token.
pub struct LmLossBuffers {
    pub loss_per_row: CudaSlice<f64>,
    pub n_correct: CudaSlice<u32>,
    pub n_valid: CudaSlice<u32>,
    pub exact: CudaSlice<u8>,
    pub argmax: CudaSlice<u8>,
}

impl LmLossBuffers {
    pub fn new(dev: &CudaDevice, rows: usize, seq: usize) -> Result<Self> {
        let e = |e: cudarc::driver::DriverError| anyhow!("alloc: {e}");
        // SAFETY: every element is written by the kernel before it is read.
        unsafe {
            Ok(LmLossBuffers {
                loss_per_row: dev.alloc_uninit::<f64>(rows).map_err(e)?,
                n_correct: dev.alloc_uninit::<u32>(rows).map_err(e)?,
                n_valid: dev.alloc_uninit::<u32>(rows).map_err(e)?,
                exact: dev.alloc_uninit::<u8>(rows).map_err(e)?,
                argmax: dev.alloc_uninit::<u8>(rows * seq).map_err(e)?,
            })
        }
    }
}

/// Stablemax cross entropy + argmax + exact flags (+ gradient when `dlogits` is given);
/// `logits` [rows*seq, vocab] bf16, `labels` [rows*seq] (0 = PAD).
#[allow(clippy::too_many_arguments)]
pub fn stablemax_ce(
    dev: &CudaDevice,
    logits: &impl DevicePtr<bf16>,
    labels: &impl DevicePtr<i32>,
    rows: usize,
    seq: usize,
    vocab: usize,
    grad_scale: f64,
    dlogits: Option<&mut CudaSlice<bf16>>,
    out: &mut LmLossBuffers,
) -> Result<()> {
    ensure!((1..=256).contains(&vocab), "argmax is stored as u8: vocab must be <= 256");
    ensure!(logits.len() >= rows * seq * vocab && labels.len() >= rows * seq);
    ensure!(out.loss_per_row.len() >= rows && out.argmax.len() >= rows * seq);
    if let Some(d) = &dlogits {
        ensure!(d.len() >= rows * seq * vocab);
    }
    if rows == 0 {
        return Ok(());
    }
    let f = dev.func("loss", "stablemax_ce_bf16")?;
    let s = &dev.stream;
    let (pd, _g0) = opt_ptr_mut(s, dlogits);
    let (pl, _g1) = logits.device_ptr(s);
    let (pb, _g2) = labels.device_ptr(s);
    let (p_loss, _g3) = out.loss_per_row.device_ptr_mut(s);
    let (p_nc, _g4) = out.n_correct.device_ptr_mut(s);
    let (p_nv, _g5) = out.n_valid.device_ptr_mut(s);
    let (p_ex, _g6) = out.exact.device_ptr_mut(s);
    let (p_am, _g7) = out.argmax.device_ptr_mut(s);
    let (seq_i, vocab_i) = (i32_of(seq, "seq")?, i32_of(vocab, "vocab")?);
    let mut b = s.launch_builder(&f);
    b.arg(&pl).arg(&pb).arg(&seq_i).arg(&vocab_i).arg(&grad_scale).arg(&pd);
    b.arg(&p_loss).arg(&p_nc).arg(&p_nv).arg(&p_ex).arg(&p_am);
    // SAFETY: as above.
    unsafe { b.launch(per_row(rows, 128)) }.map_err(launch_err("stablemax_ce_bf16"))?;
    Ok(())
}

/// Sum of BCE-with-logits terms into `loss_sum[0]` (f64); `dlogits = grad_scale*(sigmoid-t)`.
pub fn bce_with_logits(
    dev: &CudaDevice,
    logits: &impl DevicePtr<f32>,
    targets: &impl DevicePtr<f32>,
    n: usize,
    grad_scale: f64,
    dlogits: Option<&mut CudaSlice<f32>>,
    loss_sum: &mut impl DevicePtrMut<f64>,
) -> Result<()> {
    ensure!(logits.len() >= n && targets.len() >= n && !loss_sum.is_empty());
    if let Some(d) = &dlogits {
        ensure!(d.len() >= n);
    }
    let f = dev.func("loss", "bce_with_logits_f32")?;
    let s = &dev.stream;
    let (pd, _g0) = opt_ptr_mut(s, dlogits);
    let (pl, _g1) = logits.device_ptr(s);
    let (pt, _g2) = targets.device_ptr(s);
    let (ps, _g3) = loss_sum.device_ptr_mut(s);
    let n_i = i32_of(n, "n")?;
    let mut b = s.launch_builder(&f);
    b.arg(&pl).arg(&pt).arg(&n_i).arg(&grad_scale).arg(&pd).arg(&ps);
    // SAFETY: as above.
    unsafe { b.launch(per_row(1, 256)) }.map_err(launch_err("bce_with_logits_f32"))?;
    Ok(())
}

/// One AdamATan2 step (1-based `step`) on f32 master weights; also writes `p_bf16` if given.
#[allow(clippy::too_many_arguments)]
pub fn adam_atan2_step(
    dev: &CudaDevice,
    p: &mut impl DevicePtrMut<f32>,
    g: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    p_bf16: Option<&mut CudaSlice<bf16>>,
    step: u32,
    h: &AdamHyper,
) -> Result<()> {
    let n = p.len();
    ensure!(step >= 1, "AdamATan2 steps are 1-based");
    ensure!(g.len() == n && m.len() == n && v.len() == n);
    if let Some(b) = &p_bf16 {
        ensure!(b.len() == n);
    }
    // The same f64 -> f32 scalars as the CPU backend.
    let (lr, b1, b2, wd) = (h.lr as f64, h.beta1 as f64, h.beta2 as f64, h.weight_decay as f64);
    let bc1_recip = (1.0 / (1.0 - b1.powi(step as i32))) as f32;
    let bc2_sqrt = (1.0 - b2.powi(step as i32)).sqrt() as f32;
    let decay = (1.0 - lr * wd) as f32;
    let (w1, w2) = ((1.0 - b1) as f32, (1.0 - b2) as f32);
    let f = dev.func("optim", "adam_atan2_f32")?;
    let s = &dev.stream;
    let (pb, _g0) = opt_ptr_mut(s, p_bf16);
    let (pp, _g1) = p.device_ptr_mut(s);
    let (pg, _g2) = g.device_ptr(s);
    let (pm, _g3) = m.device_ptr_mut(s);
    let (pv, _g4) = v.device_ptr_mut(s);
    let n_l = n as i64;
    let mut b = s.launch_builder(&f);
    b.arg(&pp).arg(&pg).arg(&pm).arg(&pv).arg(&pb).arg(&n_l);
    b.arg(&decay).arg(&w1).arg(&w2).arg(&h.lr).arg(&bc1_recip).arg(&bc2_sqrt);
    // SAFETY: as above.
    unsafe { b.launch(elementwise(n)) }.map_err(launch_err("adam_atan2_f32"))?;
    Ok(())
}

/// The sparse SignSGD step of the puzzle table `w` [num_puzzles, row_len] from one gradient
/// row per batch row (`grads` [rows, row_len], `ids` [rows]); see `puzzle_sign_sgd_f32` in
/// kernels/optim.cu. Skipped by the kernel once `status` records a bad step.
#[allow(clippy::too_many_arguments)]
pub fn puzzle_sign_sgd(
    dev: &CudaDevice,
    w: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    ids: &impl DevicePtr<i32>,
    row_len: usize,
    lr: f32,
    weight_decay: f32,
    status: &impl DevicePtr<i32>,
) -> Result<()> {
    let rows = ids.len();
    ensure!(
        row_len > 0 && w.len().is_multiple_of(row_len),
        "puzzle table of {} in rows of {row_len}",
        w.len()
    );
    ensure!(
        grads.len() >= rows * row_len,
        "puzzle gradient rows: {} values for {rows} rows of {row_len}",
        grads.len()
    );
    if rows == 0 {
        return Ok(());
    }
    let decay = 1.0 - lr * weight_decay;
    let f = dev.func("optim", "puzzle_sign_sgd_f32")?;
    let s = &dev.stream;
    let ints = [i32_of(rows, "rows")?, i32_of(row_len, "row_len")?, i32_of(w.len() / row_len, "puzzle ids")?];
    let (pw, _g1) = w.device_ptr_mut(s);
    let (pg, _g2) = grads.device_ptr(s);
    let (pi, _g3) = ids.device_ptr(s);
    let (pst, _g4) = status.device_ptr(s);
    let mut b = s.launch_builder(&f);
    b.arg(&pw).arg(&pg).arg(&pi);
    for v in &ints {
        b.arg(v);
    }
    b.arg(&lr).arg(&decay).arg(&pst);
    // SAFETY: sizes checked above; the kernel's signature matches the arguments.
    unsafe { b.launch(per_row(rows, 128)) }.map_err(launch_err("puzzle_sign_sgd_f32"))?;
    Ok(())
}
