//! The ACT state of a batch on the device and the launchers of kernels/halting.cu and of the
//! multi-tensor optimizer (kernels/optim.cu). The CPU reference is `backend::cpu::halting`.

use anyhow::{Result, anyhow, ensure};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::device::CudaDevice;
use super::kernels::{BLOCK, LmLossBuffers, i32_of, launch_err};
use crate::backend::cpu::halting::{METRICS, NONE, explore_threshold};
use crate::backend::{OptimRule, OptimStep};

fn rows_launch(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn one_block() -> LaunchConfig {
    LaunchConfig { grid_dim: (1, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Elements per chunk of the multi-tensor kernels (one block each).
pub const CHUNK: usize = 8192;

/// A device table of tensors and the chunks (one block each) that cover them.
pub struct TensorTable {
    /// the pointers the table was built from (rebuilt when any moves)
    key: Vec<u64>,
    pub entries: CudaSlice<u64>,
    pub chunk_tensor: CudaSlice<i32>,
    pub chunk_start: CudaSlice<i64>,
    pub chunks: usize,
}

impl TensorTable {
    /// `entries` holds `fields` u64 per tensor; `lens[t]` is tensor t's element count.
    fn build(dev: &CudaDevice, entries: Vec<u64>, lens: &[usize]) -> Result<Self> {
        let (mut ct, mut cs) = (Vec::new(), Vec::new());
        for (t, &n) in lens.iter().enumerate() {
            for start in (0..n).step_by(CHUNK) {
                ct.push(i32_of(t, "tensor index")?);
                cs.push(start as i64);
            }
        }
        let chunks = ct.len();
        if chunks == 0 {
            ct.push(0);
            cs.push(0);
        }
        let e = |e: cudarc::driver::DriverError| anyhow!("uploading a tensor table: {e}");
        Ok(TensorTable {
            key: entries.clone(),
            entries: dev.clone_htod(&entries).map_err(e)?,
            chunk_tensor: dev.clone_htod(&ct).map_err(e)?,
            chunk_start: dev.clone_htod(&cs).map_err(e)?,
            chunks,
        })
    }

    /// The cached table if it was built from the same entries, else a new one.
    pub fn reuse_or_build(
        cache: &mut Option<TensorTable>,
        dev: &CudaDevice,
        entries: Vec<u64>,
        lens: &[usize],
    ) -> Result<()> {
        if cache.as_ref().is_none_or(|t| t.key != entries) {
            *cache = Some(TensorTable::build(dev, entries, lens)?);
        }
        Ok(())
    }
}

/// Raw device address of a buffer (the tables hold addresses; the buffers outlive the launch).
fn addr<T>(dev: &CudaDevice, b: &CudaSlice<T>) -> u64 {
    let (p, _g) = b.device_ptr(&dev.stream);
    p
}

/// The ACT state of one batch on the device (see `Backend::ActState`).
pub struct CudaActState {
    pub batch: usize,
    pub steps: CudaSlice<i32>,
    pub halted: CudaSlice<u8>,
    pub min_halt: CudaSlice<i32>,
    pub q: CudaSlice<f32>,
    pub q_next: CudaSlice<f32>,
    pub dq: CudaSlice<f32>,
    pub target: CudaSlice<f32>,
    /// the LM loss's per-row results (made by the first training loss, which knows `seq`)
    pub lm: Option<LmLossBuffers>,
    /// inference: the exact flag of each row per segment [batch, segments] (made by the first
    /// inference scoring, which knows the segment count)
    pub exact_hist: Option<CudaSlice<u8>>,
    pub metrics: CudaSlice<f64>,
    pub status: CudaSlice<i32>,
    /// the number of the step running (written before the step, read by the loss and guard)
    pub step_now: CudaSlice<i32>,
    pub guard_table: Option<TensorTable>,
}

impl CudaActState {
    pub fn new(dev: &CudaDevice, batch: usize) -> Result<Self> {
        let e = |e: cudarc::driver::DriverError| anyhow!("allocating the ACT state of {batch} rows: {e}");
        let n = batch.max(1);
        Ok(CudaActState {
            batch,
            steps: dev.alloc_zeros::<i32>(n).map_err(e)?,
            halted: dev.clone_htod(&vec![1u8; n]).map_err(e)?,
            min_halt: dev.alloc_zeros::<i32>(n).map_err(e)?,
            q: dev.alloc_zeros::<f32>(2 * n).map_err(e)?,
            q_next: dev.alloc_zeros::<f32>(2 * n).map_err(e)?,
            dq: dev.alloc_zeros::<f32>(2 * n).map_err(e)?,
            target: dev.alloc_zeros::<f32>(n).map_err(e)?,
            lm: None,
            exact_hist: None,
            metrics: dev.alloc_zeros::<f64>(METRICS).map_err(e)?,
            status: dev.clone_htod(&[NONE, 0, NONE, 0]).map_err(e)?,
            step_now: dev.alloc_zeros::<i32>(1).map_err(e)?,
            guard_table: None,
        })
    }
}

#[allow(clippy::too_many_arguments)]
pub fn take_new(
    dev: &CudaDevice,
    st: &mut CudaActState,
    new_tokens: &CudaSlice<i32>,
    tokens: &mut CudaSlice<i32>,
    new_ids: &CudaSlice<i32>,
    ids: &mut CudaSlice<i32>,
    new_labels: &CudaSlice<i32>,
    labels: &mut CudaSlice<i32>,
    seq_len: usize,
) -> Result<()> {
    let b = st.batch;
    let n = b * seq_len;
    ensure!(
        new_tokens.len() >= n && tokens.len() >= n && new_labels.len() >= n && labels.len() >= n,
        "act_take_new: token/label buffers shorter than {b} x {seq_len}"
    );
    ensure!(new_ids.len() >= b && ids.len() >= b, "act_take_new: puzzle ids shorter than {b}");
    if n == 0 {
        return Ok(());
    }
    let f = dev.func("halting", "act_take_new_i32")?;
    let s = &dev.stream;
    let (ph, _g0) = st.halted.device_ptr(s);
    let (ps, _g1) = st.steps.device_ptr_mut(s);
    let (pnt, _g2) = new_tokens.device_ptr(s);
    let (pt, _g3) = tokens.device_ptr_mut(s);
    let (pni, _g4) = new_ids.device_ptr(s);
    let (pi, _g5) = ids.device_ptr_mut(s);
    let (pnl, _g6) = new_labels.device_ptr(s);
    let (pl, _g7) = labels.device_ptr_mut(s);
    let (bi, si) = (i32_of(b, "batch")?, i32_of(seq_len, "seq_len")?);
    i32_of(n, "batch x seq_len")?;
    let mut lb = s.launch_builder(&f);
    lb.arg(&ph).arg(&ps).arg(&pnt).arg(&pt).arg(&pni).arg(&pi).arg(&pnl).arg(&pl).arg(&bi).arg(&si);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { lb.launch(rows_launch(n)) }.map_err(launch_err("act_take_new_i32"))?;
    Ok(())
}

pub fn explore(
    dev: &CudaDevice,
    st: &mut CudaActState,
    key: u64,
    prob: f64,
    max_steps: usize,
    first_row: usize,
) -> Result<()> {
    if st.batch == 0 {
        return Ok(());
    }
    let f = dev.func("halting", "act_explore_i32")?;
    let s = &dev.stream;
    let (pm, _g) = st.min_halt.device_ptr_mut(s);
    let (bi, mi) = (i32_of(st.batch, "batch")?, i32_of(max_steps, "halt_max_steps")?);
    let threshold = explore_threshold(prob);
    let first = i32_of(first_row + st.batch, "first row + batch").map(|_| first_row as i32)?;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pm).arg(&bi).arg(&first).arg(&key).arg(&threshold).arg(&mi);
    // SAFETY: as above.
    unsafe { lb.launch(rows_launch(st.batch)) }.map_err(launch_err("act_explore_i32"))?;
    Ok(())
}

/// Which halting rule [`halt`] applies after the exploration minimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltRule {
    /// HRM: q_halt > q_continue
    QHaltAboveContinue = 0,
    /// TRM's `no_ACT_continue`: q_halt > 0
    QHaltPositive = 1,
}

pub fn halt(dev: &CudaDevice, st: &mut CudaActState, max_steps: usize, rule: HaltRule) -> Result<()> {
    if st.batch == 0 {
        return Ok(());
    }
    let f = dev.func("halting", "act_halt_i32")?;
    let s = &dev.stream;
    let (pq, _g0) = st.q.device_ptr(s);
    let (ps, _g1) = st.steps.device_ptr_mut(s);
    let (ph, _g2) = st.halted.device_ptr_mut(s);
    let (pm, _g3) = st.min_halt.device_ptr(s);
    let (bi, mi) = (i32_of(st.batch, "batch")?, i32_of(max_steps, "halt_max_steps")?);
    let ri = rule as i32;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pq).arg(&ps).arg(&ph).arg(&pm).arg(&bi).arg(&mi).arg(&ri);
    // SAFETY: as above.
    unsafe { lb.launch(rows_launch(st.batch)) }.map_err(launch_err("act_halt_i32"))?;
    Ok(())
}

/// Inference: the exact flags of the segment just scored (`st.lm`) into column `steps[b]` of
/// `st.exact_hist` [batch, max_segments].
pub fn exact_hist(dev: &CudaDevice, st: &mut CudaActState, max_segments: usize) -> Result<()> {
    if st.batch == 0 {
        return Ok(());
    }
    let lm = st.lm.as_ref().ok_or_else(|| anyhow!("act_exact_hist before the segment's scoring"))?;
    let hist = st.exact_hist.as_mut().ok_or_else(|| anyhow!("act_exact_hist without a history buffer"))?;
    ensure!(hist.len() >= st.batch * max_segments, "act_exact_hist: history shorter than batch x segments");
    let f = dev.func("halting", "act_exact_hist_u8")?;
    let s = &dev.stream;
    let (ps, _g0) = st.steps.device_ptr(s);
    let (pe, _g1) = lm.exact.device_ptr(s);
    let (ph, _g2) = hist.device_ptr_mut(s);
    let (bi, mi) = (i32_of(st.batch, "batch")?, i32_of(max_segments, "segments")?);
    i32_of(st.batch * max_segments, "batch x segments")?;
    let mut lb = s.launch_builder(&f);
    lb.arg(&ps).arg(&pe).arg(&ph).arg(&bi).arg(&mi);
    // SAFETY: argument types and order match the kernel; sizes checked above.
    unsafe { lb.launch(rows_launch(st.batch)) }.map_err(launch_err("act_exact_hist_u8"))?;
    Ok(())
}

/// The Q losses (see kernels/halting.cu); `halt_only`: TRM's q_halt term alone.
pub fn q_loss(
    dev: &CudaDevice,
    st: &mut CudaActState,
    max_steps: usize,
    halt_only: bool,
    grad_scale: f64,
) -> Result<()> {
    let lm = st.lm.as_ref().ok_or_else(|| anyhow!("act_q_loss before the step's LM loss"))?;
    let f = dev.func("halting", "act_q_loss_f32")?;
    let s = &dev.stream;
    let (pq, _g0) = st.q.device_ptr(s);
    let (pn, _g1) = st.q_next.device_ptr(s);
    let (ps, _g2) = st.steps.device_ptr(s);
    let (ph, _g3) = st.halted.device_ptr(s);
    let (pl, _g4) = lm.loss_per_row.device_ptr(s);
    let (pc, _g5) = lm.n_correct.device_ptr(s);
    let (pv, _g6) = lm.n_valid.device_ptr(s);
    let (pe, _g7) = lm.exact.device_ptr(s);
    let (pd, _g8) = st.dq.device_ptr_mut(s);
    let (pt, _g9) = st.target.device_ptr_mut(s);
    let (pm, _g10) = st.metrics.device_ptr_mut(s);
    let (pst, _g11) = st.status.device_ptr_mut(s);
    let (step_i, _g12) = st.step_now.device_ptr(s);
    let (bi, mi) = (i32_of(st.batch, "batch")?, i32_of(max_steps, "halt_max_steps")?);
    let mut lb = s.launch_builder(&f);
    lb.arg(&pq).arg(&pn).arg(&ps).arg(&ph).arg(&pl).arg(&pc).arg(&pv).arg(&pe);
    let only = halt_only as i32;
    lb.arg(&bi).arg(&mi).arg(&only).arg(&grad_scale).arg(&step_i).arg(&pd).arg(&pt).arg(&pm).arg(&pst);
    // SAFETY: as above; one block loops over the rows.
    unsafe { lb.launch(one_block()) }.map_err(launch_err("act_q_loss_f32"))?;
    Ok(())
}

/// Records the first tensor of `grads` holding a NaN or infinity at the current step.
pub fn guard(dev: &CudaDevice, st: &mut CudaActState, grads: &[&CudaSlice<f32>]) -> Result<()> {
    let mut entries = Vec::with_capacity(2 * grads.len());
    for g in grads {
        entries.push(addr(dev, g));
        entries.push(g.len() as u64);
    }
    let lens: Vec<usize> = grads.iter().map(|g| g.len()).collect();
    TensorTable::reuse_or_build(&mut st.guard_table, dev, entries, &lens)?;
    let t = st.guard_table.as_ref().expect("built above");
    if t.chunks == 0 {
        return Ok(());
    }
    let f = dev.func("halting", "act_guard_f32")?;
    let s = &dev.stream;
    let (pe, _g0) = t.entries.device_ptr(s);
    let (pc, _g1) = t.chunk_tensor.device_ptr(s);
    let (ps, _g2) = t.chunk_start.device_ptr(s);
    let (pst, _g3) = st.status.device_ptr_mut(s);
    let (step_i, _g4) = st.step_now.device_ptr(s);
    let chunk = CHUNK as i32;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pe).arg(&pc).arg(&ps).arg(&chunk).arg(&step_i).arg(&pst);
    let cfg =
        LaunchConfig { grid_dim: (t.chunks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table holds live f32 buffers of the given lengths; chunks cover them.
    unsafe { lb.launch(cfg) }.map_err(launch_err("act_guard_f32"))?;
    Ok(())
}

/// Fields per tensor of the optimizer table: master, shadow, grad, m, v, ema (0: none),
/// length, rule (0 Adam, 2 frozen).
const OPT_FIELDS: usize = 8;

/// One tensor of the multi-tensor optimizer.
pub struct OptTensor<'a> {
    pub master: &'a CudaSlice<f32>,
    pub shadow: &'a CudaSlice<bf16>,
    pub grad: &'a CudaSlice<f32>,
    pub m: &'a CudaSlice<f32>,
    pub v: &'a CudaSlice<f32>,
    pub ema: Option<&'a CudaSlice<f32>>,
    pub rule: OptimRule,
}

/// The optimizer's table of tensors, kept while the tensors stay the same.
pub struct OptimTables {
    pub table: Option<TensorTable>,
}

/// AdamATan2 / EMA / bf16 shadow over every dense tensor in one launch; nothing changes once
/// `status` records a bad step.
pub fn optimizer_step(
    dev: &CudaDevice,
    cache: &mut OptimTables,
    tensors: &[OptTensor<'_>],
    h: &OptimStep,
    status: &CudaSlice<i32>,
) -> Result<()> {
    ensure!(h.step >= 1, "AdamATan2 steps are 1-based");
    let mut entries = Vec::with_capacity(OPT_FIELDS * tensors.len());
    let mut lens = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.master.len();
        ensure!(
            t.grad.len() == n && t.m.len() == n && t.v.len() == n && t.shadow.len() == n,
            "optimizer: a tensor's master, shadow, gradient and moments differ in length"
        );
        ensure!(i32::try_from(n).is_ok(), "optimizer: a tensor of {n} elements exceeds the kernel's int");
        if let Some(e) = t.ema {
            ensure!(e.len() == n, "optimizer: EMA length {} for a tensor of {n}", e.len());
        }
        let rule = match t.rule {
            OptimRule::Adam => 0u64,
            OptimRule::Frozen => 2,
        };
        entries.extend([
            addr(dev, t.master),
            addr(dev, t.shadow),
            addr(dev, t.grad),
            addr(dev, t.m),
            addr(dev, t.v),
            t.ema.map_or(0, |e| addr(dev, e)),
            n as u64,
            rule,
        ]);
        lens.push(n);
    }
    TensorTable::reuse_or_build(&mut cache.table, dev, entries, &lens)?;
    let s = &dev.stream;
    let t = cache.table.as_ref().expect("built above");
    if t.chunks == 0 {
        return Ok(());
    }
    // The same f64 -> f32 scalars as the CPU backend.
    let a = &h.adam;
    let (lr, b1, b2, wd) = (a.lr as f64, a.beta1 as f64, a.beta2 as f64, a.weight_decay as f64);
    let bc1_recip = (1.0 / (1.0 - b1.powi(h.step as i32))) as f32;
    let bc2_sqrt = (1.0 - b2.powi(h.step as i32)).sqrt() as f32;
    let decay = (1.0 - lr * wd) as f32;
    let (w1, w2) = ((1.0 - b1) as f32, (1.0 - b2) as f32);
    let ema_decay = h.ema_decay.unwrap_or(-1.0);
    let f = dev.func("optim", "optim_multi_f32")?;
    let (pe, _g0) = t.entries.device_ptr(s);
    let (pc, _g1) = t.chunk_tensor.device_ptr(s);
    let (ps, _g2) = t.chunk_start.device_ptr(s);
    let (pst, _g4) = status.device_ptr(s);
    let chunk = CHUNK as i32;
    let mut lb = s.launch_builder(&f);
    lb.arg(&pe).arg(&pc).arg(&ps).arg(&chunk).arg(&pst);
    lb.arg(&decay).arg(&w1).arg(&w2).arg(&a.lr).arg(&bc1_recip).arg(&bc2_sqrt);
    lb.arg(&ema_decay);
    let cfg =
        LaunchConfig { grid_dim: (t.chunks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table holds live buffers of the given lengths; chunks cover them.
    unsafe { lb.launch(cfg) }.map_err(launch_err("optim_multi_f32"))?;
    Ok(())
}
