//! Launchers of the kernels in `kernels/act.cu`: the small ops of the recurrent loop (add,
//! row reset, position gather/scatter), the NaN guard, the EMA of the weights and the f32 q
//! (halting) head. Each checks buffer sizes, picks the launch shape and enqueues the kernel on
//! the device's stream (asynchronous on a GPU) except [`all_finite`], which reads its answer
//! back. Activations are bf16, parameters, gradients and the q head f32.

use anyhow::{Result, anyhow, ensure};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::CudaDevice;
use super::kernels::{BLOCK, MAX_GRID, elementwise, elementwise_vec8, i32_of, launch_err};

/// Largest grid y dimension (one block row per batch row in `reset_rows`).
const MAX_GRID_Y: usize = 65_535;

/// `out = a + b` on the first `n` elements, bf16 with f32 math (one rounding).
pub fn add(
    dev: &CudaDevice,
    a: &impl DevicePtr<bf16>,
    b: &impl DevicePtr<bf16>,
    out: &mut impl DevicePtrMut<bf16>,
    n: usize,
) -> Result<()> {
    ensure!(a.len() >= n && b.len() >= n && out.len() >= n, "add: buffers shorter than n = {n}");
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("act", "add_bf16")?;
    let s = &dev.stream;
    let (pa, _g1) = a.device_ptr(s);
    let (pb, _g2) = b.device_ptr(s);
    let (po, _g3) = out.device_ptr_mut(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pa).arg(&pb).arg(&po).arg(&n_l);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { lb.launch(elementwise(n)) }.map_err(launch_err("add_bf16"))?;
    Ok(())
}

/// `out = z + bf16(z_h + x)`: the L module's input with the input injection fused in.
pub fn add_injection_to(
    dev: &CudaDevice,
    z: &impl DevicePtr<bf16>,
    z_h: &impl DevicePtr<bf16>,
    x: &impl DevicePtr<bf16>,
    out: &mut impl DevicePtrMut<bf16>,
    n: usize,
) -> Result<()> {
    ensure!(
        z.len() >= n && z_h.len() >= n && x.len() >= n && out.len() >= n,
        "add_injection: buffers shorter than n = {n}"
    );
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("act", "add_injection_bf16")?;
    let s = &dev.stream;
    let (pz, _g0) = z.device_ptr(s);
    let (ph, _g1) = z_h.device_ptr(s);
    let (px, _g2) = x.device_ptr(s);
    let (po, _g3) = out.device_ptr_mut(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pz).arg(&ph).arg(&px).arg(&po).arg(&n_l);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { lb.launch(elementwise_vec8(n, true)) }.map_err(launch_err("add_injection_bf16"))?;
    Ok(())
}

/// `z += bf16(z_h + x)` in place (the kernel allows `out` = `z`).
pub fn add_injection_inplace(
    dev: &CudaDevice,
    z: &mut impl DevicePtrMut<bf16>,
    z_h: &impl DevicePtr<bf16>,
    x: &impl DevicePtr<bf16>,
    n: usize,
) -> Result<()> {
    ensure!(z.len() >= n && z_h.len() >= n && x.len() >= n, "add_injection: buffers shorter than n = {n}");
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("act", "add_injection_bf16")?;
    let s = &dev.stream;
    let (pz, _g0) = z.device_ptr_mut(s);
    let (ph, _g1) = z_h.device_ptr(s);
    let (px, _g2) = x.device_ptr(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pz).arg(&ph).arg(&px).arg(&pz).arg(&n_l);
    // SAFETY: as above; `z` is read and written through the same pointer, element by element.
    unsafe { lb.launch(elementwise_vec8(n, true)) }.map_err(launch_err("add_injection_bf16"))?;
    Ok(())
}

/// Rows `b < batch` of `z` [batch, seq, width] with `mask[b] != 0` become `init` [width]
/// (rounded to bf16) at every position; the other rows are not written.
pub fn reset_rows(
    dev: &CudaDevice,
    z: &mut impl DevicePtrMut<bf16>,
    init: &impl DevicePtr<f32>,
    mask: &impl DevicePtr<u8>,
    batch: usize,
    seq: usize,
    width: usize,
) -> Result<()> {
    ensure!(batch <= MAX_GRID_Y, "reset_rows: batch {batch} > {MAX_GRID_Y}");
    ensure!(mask.len() >= batch, "reset_rows: mask has {} entries, batch {batch}", mask.len());
    ensure!(z.len() >= batch * seq * width, "reset_rows: z shorter than {batch}x{seq}x{width}");
    ensure!(init.len() == width, "reset_rows: init has {} elements, want {width}", init.len());
    if batch * seq * width == 0 {
        return Ok(());
    }
    let per_row = seq * width;
    let blocks_x = per_row.div_ceil(BLOCK as usize).clamp(1, MAX_GRID.div_ceil(batch).max(1)) as u32;
    let cfg =
        LaunchConfig { grid_dim: (blocks_x, batch as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    let f = dev.func("act", "reset_rows_bf16")?;
    let s = &dev.stream;
    let (pz, _g1) = z.device_ptr_mut(s);
    let (pi, _g2) = init.device_ptr(s);
    let (pm, _g3) = mask.device_ptr(s);
    let ints = [i32_of(batch, "batch")?, i32_of(seq, "seq")?, i32_of(width, "width")?];
    let mut lb = s.launch_builder(&f);
    lb.arg(&pz).arg(&pi).arg(&pm);
    for v in &ints {
        lb.arg(v);
    }
    // SAFETY: as above.
    unsafe { lb.launch(cfg) }.map_err(launch_err("reset_rows_bf16"))?;
    Ok(())
}

/// Checks shared by the gather/scatter launchers; returns the int arguments.
#[allow(clippy::too_many_arguments)]
fn positions_args(
    what: &str,
    full: usize,
    part: usize,
    batch: usize,
    seq: usize,
    start: usize,
    n: usize,
    width: usize,
) -> Result<[i32; 5]> {
    ensure!(start + n <= seq, "{what}: positions {start}..{} outside seq {seq}", start + n);
    ensure!(full >= batch * seq * width, "{what}: [batch, seq, width] buffer too short");
    ensure!(part >= batch * n * width, "{what}: [batch, n, width] buffer too short");
    // the kernel indexes with 64-bit offsets; each argument must fit an int
    Ok([
        i32_of(batch, "batch")?,
        i32_of(seq, "seq")?,
        i32_of(start, "start")?,
        i32_of(n, "n")?,
        i32_of(width, "width")?,
    ])
}

/// `dst[b, j] = src[b, start + j]` for `j < n`: `src` [batch, seq, width], `dst` [batch, n, width].
#[allow(clippy::too_many_arguments)]
pub fn gather_positions(
    dev: &CudaDevice,
    src: &impl DevicePtr<bf16>,
    dst: &mut impl DevicePtrMut<bf16>,
    batch: usize,
    seq: usize,
    start: usize,
    n: usize,
    width: usize,
) -> Result<()> {
    let ints = positions_args("gather_positions", src.len(), dst.len(), batch, seq, start, n, width)?;
    let total = batch * n * width;
    if total == 0 {
        return Ok(());
    }
    let f = dev.func("act", "gather_positions_bf16")?;
    let s = &dev.stream;
    let (ps, _g1) = src.device_ptr(s);
    let (pd, _g2) = dst.device_ptr_mut(s);
    let mut lb = s.launch_builder(&f);
    lb.arg(&ps).arg(&pd);
    for v in &ints {
        lb.arg(v);
    }
    // SAFETY: as above.
    unsafe { lb.launch(elementwise(total)) }.map_err(launch_err("gather_positions_bf16"))?;
    Ok(())
}

/// The transpose of [`gather_positions`]: `dsrc[b, start + j] += ddst[b, j]` (f32 math, one
/// rounding); positions outside `start..start + n` are not written.
#[allow(clippy::too_many_arguments)]
pub fn scatter_add_positions(
    dev: &CudaDevice,
    ddst: &impl DevicePtr<bf16>,
    dsrc: &mut impl DevicePtrMut<bf16>,
    batch: usize,
    seq: usize,
    start: usize,
    n: usize,
    width: usize,
) -> Result<()> {
    let ints = positions_args("scatter_add_positions", dsrc.len(), ddst.len(), batch, seq, start, n, width)?;
    let total = batch * n * width;
    if total == 0 {
        return Ok(());
    }
    let f = dev.func("act", "scatter_add_positions_bf16")?;
    let s = &dev.stream;
    let (pd, _g1) = ddst.device_ptr(s);
    let (ps, _g2) = dsrc.device_ptr_mut(s);
    let mut lb = s.launch_builder(&f);
    lb.arg(&pd).arg(&ps);
    for v in &ints {
        lb.arg(v);
    }
    // SAFETY: as above.
    unsafe { lb.launch(elementwise(total)) }.map_err(launch_err("scatter_add_positions_bf16"))?;
    Ok(())
}

fn count_nonfinite_any<T>(
    dev: &CudaDevice,
    kernel: &'static str,
    x: &impl DevicePtr<T>,
    count: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    ensure!(!count.is_empty(), "{kernel}: empty counter");
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("act", kernel)?;
    let s = &dev.stream;
    let (px, _g1) = x.device_ptr(s);
    let (pc, _g2) = count.device_ptr_mut(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&px).arg(&n_l).arg(&pc);
    // SAFETY: as above.
    unsafe { lb.launch(elementwise(n)) }.map_err(launch_err(kernel))?;
    Ok(())
}

/// `count[0] += number of NaN/infinite elements of x` (f32). Does not zero the counter, so one
/// counter can cover several buffers before a single read-back.
pub fn count_nonfinite(
    dev: &CudaDevice,
    x: &impl DevicePtr<f32>,
    count: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    count_nonfinite_any(dev, "count_nonfinite_f32", x, count)
}

/// [`count_nonfinite`] for a bf16 buffer.
pub fn count_nonfinite_bf16(
    dev: &CudaDevice,
    x: &impl DevicePtr<bf16>,
    count: &mut impl DevicePtrMut<u32>,
) -> Result<()> {
    count_nonfinite_any(dev, "count_nonfinite_bf16", x, count)
}

fn all_finite_any<T>(dev: &CudaDevice, kernel: &'static str, x: &impl DevicePtr<T>) -> Result<bool> {
    let mut count = dev.alloc_zeros::<u32>(1).map_err(|e| anyhow!("alloc: {e}"))?;
    count_nonfinite_any(dev, kernel, x, &mut count)?;
    let host = dev.stream.clone_dtoh(&count).map_err(|e| anyhow!("reading the non-finite count: {e}"))?;
    Ok(host[0] == 0)
}

/// No NaN or infinity in `x` (f32); synchronizes the stream to read the answer.
pub fn all_finite(dev: &CudaDevice, x: &impl DevicePtr<f32>) -> Result<bool> {
    all_finite_any(dev, "count_nonfinite_f32", x)
}

/// [`all_finite`] for a bf16 buffer.
pub fn all_finite_bf16(dev: &CudaDevice, x: &impl DevicePtr<bf16>) -> Result<bool> {
    all_finite_any(dev, "count_nonfinite_bf16", x)
}

/// `ema = decay * ema + (1 - decay) * p` (f32, the CPU backend's order and roundings).
pub fn ema_update(
    dev: &CudaDevice,
    ema: &mut impl DevicePtrMut<f32>,
    p: &impl DevicePtr<f32>,
    decay: f32,
) -> Result<()> {
    let n = ema.len();
    ensure!(p.len() == n, "ema_update: ema has {n} elements, p {}", p.len());
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("act", "ema_f32")?;
    let s = &dev.stream;
    let (pe, _g1) = ema.device_ptr_mut(s);
    let (pp, _g2) = p.device_ptr(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pe).arg(&pp).arg(&n_l).arg(&decay);
    // SAFETY: as above.
    unsafe { lb.launch(elementwise(n)) }.map_err(launch_err("ema_f32"))?;
    Ok(())
}

/// `y = bf16(x)` element-wise (round to nearest even, as `half::bf16::from_f32`).
pub fn to_bf16(dev: &CudaDevice, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<bf16>) -> Result<()> {
    let n = x.len();
    ensure!(y.len() == n, "to_bf16: x has {n} elements, y {}", y.len());
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("act", "f32_to_bf16")?;
    let s = &dev.stream;
    let (px, _g1) = x.device_ptr(s);
    let (py, _g2) = y.device_ptr_mut(s);
    let n_l = n as i64;
    let mut lb = s.launch_builder(&f);
    lb.arg(&px).arg(&py).arg(&n_l);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { lb.launch(elementwise(n)) }.map_err(launch_err("f32_to_bf16"))?;
    Ok(())
}

/// Checks shared by the q head launchers: `z` [rows, seq, d] holds at least `rows` rows, `w` is
/// [2, d]; returns the int arguments.
fn q_head_args(z_len: usize, w_len: usize, rows: usize, seq: usize, d: usize) -> Result<[i32; 3]> {
    ensure!(seq >= 1 && d >= 1, "q head: seq {seq} and d {d} must be positive");
    ensure!(z_len >= rows * seq * d, "q head: z_H has {z_len} elements, want {rows}x{seq}x{d}");
    ensure!(w_len == 2 * d, "q head: w has {w_len} elements, want 2x{d}");
    Ok([i32_of(rows, "rows")?, i32_of(seq, "seq")?, i32_of(d, "d")?])
}

/// Halting logits `q[r, o] = bias[o] + sum_j z_h[r, 0, j] w[o, j]` in f32: `z_h` [rows, seq, d]
/// bf16 (position 0 of each row is read in place), `w` [2, d], `bias` [2], `q` [rows, 2] f32.
#[allow(clippy::too_many_arguments)]
pub fn q_head_fwd(
    dev: &CudaDevice,
    z_h: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<f32>,
    bias: &impl DevicePtr<f32>,
    q: &mut impl DevicePtrMut<f32>,
    rows: usize,
    seq: usize,
    d: usize,
) -> Result<()> {
    let ints = q_head_args(z_h.len(), w.len(), rows, seq, d)?;
    ensure!(bias.len() == 2 && q.len() >= 2 * rows, "q_head_fwd: bias [2], q [rows, 2]");
    if rows == 0 {
        return Ok(());
    }
    let warps_per_block = 4;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(warps_per_block) as u32, 1, 1),
        block_dim: (32 * warps_per_block as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = dev.func("act", "q_head_fwd_f32")?;
    let s = &dev.stream;
    let (pz, _g1) = z_h.device_ptr(s);
    let (pw, _g2) = w.device_ptr(s);
    let (pb, _g3) = bias.device_ptr(s);
    let (pq, _g4) = q.device_ptr_mut(s);
    let mut lb = s.launch_builder(&f);
    lb.arg(&pz).arg(&pw).arg(&pb).arg(&pq);
    for v in &ints {
        lb.arg(v);
    }
    // SAFETY: as above.
    unsafe { lb.launch(cfg) }.map_err(launch_err("q_head_fwd_f32"))?;
    Ok(())
}

/// Backward of [`q_head_fwd`], accumulating: `dw[o, j] += sum_r dq[r, o] z_h[r, 0, j]`,
/// `db[o] += sum_r dq[r, o]` (f32, deterministic: fixed summation order, no float atomics),
/// `dz_h[r, 0, j] += dq[r, 0] w[0, j] + dq[r, 1] w[1, j]` (bf16, f32 math; positions > 0 of
/// `dz_h` are not written). `dz_h` has the shape of `z_h`.
#[allow(clippy::too_many_arguments)]
pub fn q_head_bwd(
    dev: &CudaDevice,
    dq: &impl DevicePtr<f32>,
    z_h: &impl DevicePtr<bf16>,
    w: &impl DevicePtr<f32>,
    dw: &mut impl DevicePtrMut<f32>,
    db: &mut impl DevicePtrMut<f32>,
    dz_h: &mut impl DevicePtrMut<bf16>,
    rows: usize,
    seq: usize,
    d: usize,
) -> Result<()> {
    let ints = q_head_args(z_h.len(), w.len(), rows, seq, d)?;
    ensure!(dq.len() >= 2 * rows, "q_head_bwd: dq [rows, 2]");
    ensure!(dw.len() == 2 * d && db.len() == 2, "q_head_bwd: dw [2, d], db [2]");
    ensure!(dz_h.len() >= rows * seq * d, "q_head_bwd: dz_H shorter than z_H's view");
    if rows == 0 {
        return Ok(());
    }
    let s = &dev.stream;
    {
        let f = dev.func("act", "q_head_bwd_w_f32")?;
        // one block per 32 columns of dw, plus one for db
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(32) as u32 + 1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (pdq, _g1) = dq.device_ptr(s);
        let (pz, _g2) = z_h.device_ptr(s);
        let (pdw, _g3) = dw.device_ptr_mut(s);
        let (pdb, _g4) = db.device_ptr_mut(s);
        let mut lb = s.launch_builder(&f);
        lb.arg(&pdq).arg(&pz).arg(&pdw).arg(&pdb);
        for v in &ints {
            lb.arg(v);
        }
        // SAFETY: as above.
        unsafe { lb.launch(cfg) }.map_err(launch_err("q_head_bwd_w_f32"))?;
    }
    let f = dev.func("act", "q_head_bwd_x_bf16")?;
    let (pdq, _g1) = dq.device_ptr(s);
    let (pw, _g2) = w.device_ptr(s);
    let (pdz, _g3) = dz_h.device_ptr_mut(s);
    let mut lb = s.launch_builder(&f);
    lb.arg(&pdq).arg(&pw).arg(&pdz);
    for v in &ints {
        lb.arg(v);
    }
    // SAFETY: as above.
    unsafe { lb.launch(elementwise(rows * d)) }.map_err(launch_err("q_head_bwd_x_bf16"))?;
    Ok(())
}
