//! The CUDA backend against the f32 CPU reference on the tiny configs: forward after 1 and 16
//! segments, the gradient of one training step, and 20 training steps (loss curve, halting
//! decisions). Runs on a GPU when present, else on the CPU emulation (CI); never skipped in CI
//! (`HRM_REQUIRE_NVCC=1` makes a missing device a failure).
//!
//! The bound (flash-attention's rule): the CUDA path stores activations and GEMM weights in
//! bf16, so its error against the f32 reference is judged against the error of the same math
//! done on the CPU with bf16 rounding at the same points (`CpuBf16`):
//!     err(cuda) <= 2 * err(cpu-bf16) + floor.
//! Both run the same sequence of roundings; the CUDA path differs in summation order (GEMM
//! tiles, block reductions) and in where f32 intermediates are kept, which moves each rounding
//! by at most one bf16 ulp, so its error is of the same size as the yardstick's, not larger by
//! more than a small factor. The floor (stated per quantity below, a fraction of the reference's
//! RMS) covers quantities whose yardstick error happens to be near zero. A wrong kernel (a
//! missing term, a transposed index) is off by O(1) of the RMS and fails by orders of magnitude.

mod common;
use common::{assert_bf16_rule, assert_rule, max_err, rms};
use hrm::act::{Batch, Carry, eval_step, infer_segments};
use hrm::backend::cpu::Cpu;
use hrm::backend::cpu::bf16::CpuBf16;
use hrm::backend::cuda::{Cuda, CudaDevice};
use hrm::backend::{Backend, EvalRows};
use hrm::commands::grad_outputs;
use hrm::config::ModelConfig;
use hrm::hrm::Hrm;
use hrm::model::HostParams;
use hrm::train::sampler::VecSource;
use hrm::train::{TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The tests of this file share the device's one stream: the tests that record graphs or count
/// launches hold it alone, the others together.
static STREAM: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    STREAM.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    STREAM.write().unwrap_or_else(|e| e.into_inner())
}

fn cuda(test: &str) -> Option<Cuda> {
    CudaDevice::for_tests(test).map(Cuda::new)
}

fn random_batch(rng: &mut ChaCha8Rng, b: usize, ids: usize) -> Batch {
    Batch {
        inputs: (0..b * 81).map(|_| rng.gen_range(1..11)).collect(),
        puzzle_ids: (0..b).map(|i| (i % ids) as i32).collect(),
        labels: Some((0..b * 81).map(|i| if i % 37 == 5 { 0 } else { rng.gen_range(2..11) }).collect()),
    }
}

/// Parameters with the zero-initialized tensors made non-trivial, and a q head whose margins
/// q_halt - q_continue are O(1) and differ by row (so halting decisions are exercised).
fn params(cfg: &ModelConfig, seed: u64) -> HostParams {
    let mut p = HostParams::init(cfg, &mut hrm::rng::seeded(seed));
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    if let Some(e) = p.puzzle_emb.as_mut() {
        e.iter_mut().for_each(|v| *v = rng.gen_range(-0.5..0.5));
    }
    let d = cfg.hidden_size;
    let scale = 2.0 / (d as f32).sqrt();
    p.q_head_weight.iter_mut().for_each(|v| *v = rng.gen_range(-scale..scale));
    p.q_head_bias = vec![0.1, -0.1];
    p
}

struct Forward {
    logits: Vec<f32>,
    q_halt: Vec<f32>,
    q_continue: Vec<f32>,
    z_h: Vec<f32>,
}

fn forward<B: Backend>(be: &B, cfg: &ModelConfig, p: &HostParams, batch: &Batch, segments: usize) -> Forward {
    let model = Hrm::new(be, cfg, p);
    let mut carry = Carry::fresh(be, &model, batch.len());
    let mut last = None;
    for _ in 0..segments {
        last = Some(eval_step(be, &model, &mut carry, batch).unwrap().heads);
    }
    let h = last.unwrap();
    be.check().unwrap();
    Forward {
        logits: be.download_act(carry.logits()),
        q_halt: h.q_halt,
        q_continue: h.q_continue,
        z_h: be.download_act(&carry.z_h),
    }
}

fn check_forward(segments: usize, layer_scale: f32) {
    let Some(gpu) = cuda(&format!("backend_parity forward {segments}")) else {
        return;
    };
    let cfg = ModelConfig::tiny();
    let mut p = params(&cfg, 1);
    for l in p.h_layers.iter_mut().chain(p.l_layers.iter_mut()) {
        for w in [&mut l.qkv, &mut l.o, &mut l.gate_up, &mut l.down] {
            w.iter_mut().for_each(|v| *v *= layer_scale);
        }
    }
    let batch = random_batch(&mut ChaCha8Rng::seed_from_u64(2), 3, cfg.num_puzzle_identifiers);
    let want = forward(&Cpu, &cfg, &p, &batch, segments);
    let sim = forward(&CpuBf16, &cfg, &p, &batch, segments);
    let got = forward(&gpu, &cfg, &p, &batch, segments);
    let tag = |s: &str| format!("{s} after {segments} segment(s)");
    assert_rule(&tag("logits"), &got.logits, &sim.logits, &want.logits, 1e-3);
    assert_rule(&tag("z_H"), &got.z_h, &sim.z_h, &want.z_h, 1e-3);
    // The rule is only informative while bf16 rounding has not decorrelated the trajectory:
    // the yardstick's own error must stay well below the signal.
    let informative = max_err(&sim.logits, &want.logits) / rms(&want.logits);
    eprintln!("{}: yardstick error / RMS = {informative:.3}", tag("logits"));
    assert!(informative < 0.2, "{}: the bf16 yardstick itself is off by {informative} RMS", tag("logits"));
    assert_rule(&tag("q_halt"), &got.q_halt, &sim.q_halt, &want.q_halt, 1e-3);
    assert_rule(&tag("q_continue"), &got.q_continue, &sim.q_continue, &want.q_continue, 1e-3);
}

#[test]
fn forward_one_segment_matches_cpu() {
    let _stream = shared();
    check_forward(1, 1.0);
}

#[test]
fn forward_sixteen_segments_matches_cpu() {
    let _stream = shared();
    // With the reference initialization the untrained recurrence is chaotic: after 16 segments
    // any two roundings (bf16 on the CPU included) end in different states. Smaller block
    // weights make the map contract, so the 16-segment comparison stays meaningful.
    check_forward(16, SIXTEEN_SEGMENT_SCALE);
}

const SIXTEEN_SEGMENT_SCALE: f32 = 0.3;

#[test]
fn gradient_of_one_step_matches_cpu() {
    let _stream = shared();
    let Some(gpu) = cuda("backend_parity grad") else {
        return;
    };
    let cfg = ModelConfig::tiny();
    let p = params(&cfg, 3);
    let batch = random_batch(&mut ChaCha8Rng::seed_from_u64(4), 3, cfg.num_puzzle_identifiers);
    let want = grad_outputs(&Cpu, &cfg, &p, &batch).unwrap();
    let sim = grad_outputs(&CpuBf16, &cfg, &p, &batch).unwrap();
    let got = grad_outputs(&gpu, &cfg, &p, &batch).unwrap();
    // (`halted`, the decisions, is compared where the q margin is clear, in the training test;
    // all-zero gradients, e.g. the puzzle-embedding rows of ids not in the batch, exactly)
    let compared = assert_bf16_rule("grad", &got, &sim, &want, 2e-3);
    assert!(compared >= 20, "only {compared} tensors compared");
}

fn train_data() -> VecSource {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (groups, per) = (6, 2);
    let n = groups * per * 81;
    VecSource {
        seq_len: 81,
        inputs: (0..n).map(|_| rng.gen_range(1..11)).collect(),
        labels: (0..n).map(|_| rng.gen_range(2..11)).collect(),
        group_offsets: (0..=groups).map(|g| g * per).collect(),
    }
}

/// Per step: lm loss, q logits, halting decisions.
struct Curve {
    lm: Vec<f64>,
    q: Vec<Vec<f32>>,
    halted: Vec<Vec<bool>>,
    params: Vec<f32>,
}

fn train_curve<B: Backend>(be: &B, cfg: &TrainConfig, p: &HostParams, steps: usize) -> Curve {
    let data = train_data();
    let mut t = Trainer::new(be, cfg.clone(), p);
    let mut c = Curve { lm: vec![], q: vec![], halted: vec![], params: vec![] };
    for _ in 0..steps {
        t.train_step(be, &data).unwrap();
        let report = t.report(be).unwrap();
        assert_eq!(report.steps, 1, "one step per report");
        let rows = be.act_rows(&t.carry.ws.act);
        c.lm.push(report.lm_loss);
        c.q.push(rows.q_halt.iter().zip(&rows.q_continue).map(|(h, q)| h - q).collect());
        c.halted.push(rows.halted.clone());
    }
    c.params = t.model.to_host(be).tensors().into_iter().flatten().copied().collect();
    c
}

#[test]
fn twenty_training_steps_match_cpu() {
    let _stream = shared();
    let Some(gpu) = cuda("backend_parity train") else {
        return;
    };
    let model = ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        num_puzzle_identifiers: 6,
        halt_max_steps: 4,
        halt_exploration_prob: 0.3,
        ..ModelConfig::sudoku()
    };
    let mut cfg = TrainConfig::new(model.clone());
    cfg.batch_size = 4;
    cfg.steps = 20;
    cfg.seed = 5;
    cfg.optim.lr = 1e-3;
    cfg.optim.lr_warmup_steps = 2;
    cfg.optim.puzzle_emb_lr = 1e-2;
    let p = params(&model, 6);
    let steps = 20;
    let want = train_curve(&Cpu, &cfg, &p, steps);
    let sim = train_curve(&CpuBf16, &cfg, &p, steps);
    let got = train_curve(&gpu, &cfg, &p, steps);
    // Halting: where the reference's margin is clear of the bf16 uncertainty, the decision must
    // agree; once a row's decision legitimately differs (inside the margin), the two runs feed
    // that row different puzzles, so the curves are compared up to the first such step.
    let mut same_until = steps;
    'steps: for k in 0..steps {
        let q_bound = 2.0 * max_err(&sim.q[k], &want.q[k]) + 1e-3;
        for b in 0..cfg.batch_size {
            if got.halted[k][b] != want.halted[k][b] {
                let margin = want.q[k][b].abs() as f64;
                assert!(
                    margin <= q_bound,
                    "step {k} row {b}: halting differs with a clear q margin {margin:e} > {q_bound:e}"
                );
                same_until = k;
                break 'steps;
            }
        }
    }
    eprintln!("halting decisions identical for {same_until} of {steps} steps");
    assert!(same_until >= 10, "halting diverged at step {same_until}: the test no longer compares a curve");
    let lm = |c: &Curve| c.lm[..same_until].iter().map(|&v| v as f32).collect::<Vec<f32>>();
    assert_rule("lm loss curve", &lm(&got), &lm(&sim), &lm(&want), 1e-3);
    if same_until == steps {
        assert_rule("parameters after 20 steps", &got.params, &sim.params, &want.params, 1e-4);
    }
}

fn first_non_finite_on<B: Backend>(be: &B) {
    let clean: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    for (planted, value) in
        [(None, 0.0), (Some(0), f32::NAN), (Some(2), f32::INFINITY), (Some(3), f32::NEG_INFINITY)]
    {
        let bufs: Vec<_> = (0..4)
            .map(|i| {
                let mut v = clean.clone();
                if Some(i) == planted {
                    v[999 - 300 * i] = value;
                }
                be.upload_f32(&v)
            })
            .collect();
        let refs: Vec<_> = bufs.iter().collect();
        assert_eq!(be.first_non_finite(&refs), planted, "{} with {value} in buffer {planted:?}", be.name());
    }
    be.check().unwrap();
}

#[test]
fn the_nan_guard_names_the_first_bad_buffer_on_both_backends() {
    let _stream = shared();
    first_non_finite_on(&Cpu);
    if let Some(gpu) = cuda("backend_parity nan guard") {
        first_non_finite_on(&gpu);
    }
}

/// A training step on the CUDA backend is only enqueued: it reads nothing back (no host
/// synchronisation) and allocates nothing once the first step made the workspace (checked on a
/// GPU, where device memory in use is known; the emulation reports none); the metrics come back
/// with one report.
#[test]
fn training_steps_read_nothing_back_until_the_report() {
    let _stream = alone();
    let Some(gpu) = cuda("backend_parity host reads") else {
        return;
    };
    let model = ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        num_puzzle_identifiers: 3,
        halt_max_steps: 4,
        halt_exploration_prob: 0.3,
        ..ModelConfig::sudoku()
    };
    let mut cfg = TrainConfig::new(model.clone());
    cfg.batch_size = 4;
    cfg.steps = 10;
    cfg.ema = Some(0.9);
    let data = train_data();
    let mut t = Trainer::new(&gpu, cfg, &params(&model, 7));
    t.train_step(&gpu, &data).unwrap();
    // (the first step made every buffer; the second recorded the step's graph)
    t.train_step(&gpu, &data).unwrap();
    let (reads, allocations) = (gpu.host_reads(), gpu.device().allocations());
    let syncs = hrm::backend::cuda::device::emulated_sync_count();
    for _ in 0..3 {
        t.train_step(&gpu, &data).unwrap();
    }
    assert_eq!(gpu.host_reads(), reads, "a training step read from the device");
    // the project's own count: the driver's free memory also moves with graph instantiation
    // and library workspaces on a GPU
    assert_eq!(gpu.device().allocations(), allocations, "a training step allocated device memory");
    // Host waits (counted by the emulation): steps are queued back to back; the host waits at
    // the report, not in a step.
    if let Some(before) = syncs {
        let after = hrm::backend::cuda::device::emulated_sync_count().unwrap();
        assert_eq!(after, before, "a training step waited for the device");
    }
    let r = t.report(&gpu).unwrap();
    assert_eq!(r.steps, 5);
    assert!(r.lm_loss.is_finite() && r.lm_loss > 0.0);
    assert!(gpu.host_reads() > reads);

    // Launches (counted by the emulation): the same every step, and the optimizer over all
    // tensors is one launch plus one marking the batch's puzzle rows.
    if let Some(c0) = hrm::backend::cuda::device::emulated_launch_counts() {
        t.train_step(&gpu, &data).unwrap();
        let c1 = hrm::backend::cuda::device::emulated_launch_counts().unwrap();
        t.train_step(&gpu, &data).unwrap();
        let c2 = hrm::backend::cuda::device::emulated_launch_counts().unwrap();
        assert_eq!((c1.0 - c0.0, c1.1 - c0.1), (c2.0 - c1.0, c2.1 - c1.1), "launches per step");
        // Recorded: the step is one graph launch, the exploration draw and the optimizer's two.
        assert_eq!((c2.0 - c1.0, c2.1 - c1.1), (4, 0), "a recorded step's launches");
        eprintln!("per step: {} kernel launches, {} matmuls", c2.0 - c1.0, c2.1 - c1.1);
        let ws = &t.carry.ws;
        t.opt.apply(
            &gpu,
            &mut t.model,
            &t.grads,
            None,
            &t.cfg.optim,
            1e-3,
            1e-3,
            &ws.inputs.puzzle_ids,
            &ws.act,
        );
        let c3 = hrm::backend::cuda::device::emulated_launch_counts().unwrap();
        assert_eq!((c3.0 - c2.0, c3.1 - c2.1), (2, 0), "the optimizer's launches");
    }
}

/// A training step recorded as a graph and replayed computes exactly what the same ops
/// issued one by one compute: parameters, metrics and ACT state bit-identical over steps that
/// cycle through the arrangements of the ping-pong buffers (and a step that halts rows).
/// Host writes go through a ring of page-locked slots and are copied asynchronously: a slot
/// must not be refilled before the copy that reads it has run. The emulation completes such
/// copies late (at the next device operation or synchronisation), so many writes in a row,
/// more than the ring has slots, deliver stale or foreign data if the wait is missing.
#[test]
fn staged_writes_wait_for_their_copies() {
    let _stream = alone();
    let Some(gpu) = cuda("backend_parity staged writes") else {
        return;
    };
    let n = 37;
    let mut bufs: Vec<_> = (0..11).map(|_| gpu.upload_i32(&vec![0; n])).collect();
    for (k, b) in bufs.iter_mut().enumerate() {
        let host: Vec<i32> = (0..n as i32).map(|i| 1000 * k as i32 + i).collect();
        gpu.write_i32(&host, b);
    }
    for (k, b) in bufs.iter().enumerate() {
        let want: Vec<i32> = (0..n as i32).map(|i| 1000 * k as i32 + i).collect();
        assert_eq!(gpu.download_i32(b), want, "write {k} delivered other data");
    }
    gpu.check().unwrap();
}

#[test]
fn recorded_training_steps_equal_direct_ones() {
    let _stream = alone();
    let Some(gpu) = cuda("backend_parity graphs") else {
        return;
    };
    // HRM with a puzzle embedding, and without (whose backward passes a placeholder gradient);
    // TRM with the token-mixing MLP, keeping and recomputing the last recursion's activations.
    let hrm = |puzzle_emb_ndim| ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 2,
        L_layers: 1,
        puzzle_emb_ndim,
        num_puzzle_identifiers: 3,
        halt_max_steps: 3,
        halt_exploration_prob: 0.3,
        ..ModelConfig::sudoku()
    };
    let trm = ModelConfig { num_puzzle_identifiers: 3, halt_exploration_prob: 0.3, ..common::small_trm() };
    use hrm::model::memory::SavedActivations::{Keep, Recompute};
    for (model, saved) in [(hrm(32), Keep), (hrm(0), Keep), (trm.clone(), Keep), (trm, Recompute)] {
        let puzzle_emb_ndim = model.puzzle_emb_ndim;
        let mut cfg = TrainConfig::new(model.clone());
        cfg.batch_size = 4;
        cfg.steps = 10;
        cfg.ema = Some(0.9);
        cfg.optim.lr = 1e-3;
        let data = train_data();
        let p = params(&model, 8);
        let run = |graphs: bool| {
            let mut t = Trainer::new(&gpu, cfg.clone(), &p);
            t.graphs = graphs;
            t.model.saved = saved;
            let mut reports = Vec::new();
            for _ in 0..7 {
                t.train_step(&gpu, &data).unwrap();
                reports.push(t.report(&gpu).unwrap());
            }
            let rows = gpu.act_rows(&t.carry.ws.act);
            let bits: Vec<u32> =
                t.model.to_host(&gpu).tensors().into_iter().flatten().map(|x| x.to_bits()).collect();
            let z: Vec<u32> = gpu.download_act(&t.carry.z_h).iter().map(|x| x.to_bits()).collect();
            assert_eq!(t.graphs, graphs, "the recorded run kept replaying its graph");
            (reports, rows, bits, z)
        };
        let direct = run(false);
        let recorded = run(true);
        assert!(direct.0.iter().any(|r| r.count > 0), "some rows halted");
        assert_eq!(recorded.0, direct.0, "metrics");
        assert_eq!(recorded.1, direct.1, "ACT state");
        assert_eq!(recorded.3, direct.3, "carry");
        let what = format!("{:?} {saved:?}, puzzle_emb_ndim {puzzle_emb_ndim}", model.arch);
        assert!(recorded.2 == direct.2, "parameters differ ({what})");
    }
}

/// A recorded graph keeps the addresses it captured. A step of another shape in between (an
/// evaluation batch, a second model) needs larger backward scratch buffers; growing them must
/// not leave the first graph to replay into freed memory (memory pools hand the same address
/// out again, so on a GPU that reads another buffer's data silently; the emulation fails the
/// replay). The interleaved run must equal a direct one bit for bit.
#[test]
fn a_larger_shape_between_recorded_steps_leaves_no_stale_graph() {
    let _stream = alone();
    let Some(gpu) = cuda("backend_parity graph scratch") else {
        return;
    };
    let model = ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1,
        L_layers: 1,
        puzzle_emb_ndim: 32,
        num_puzzle_identifiers: 3,
        halt_max_steps: 3,
        halt_exploration_prob: 0.3,
        ..ModelConfig::sudoku()
    };
    let mut cfg = TrainConfig::new(model.clone());
    cfg.batch_size = 4;
    cfg.steps = 10;
    cfg.optim.lr = 1e-3;
    let data = train_data();
    let p = params(&model, 9);
    let run = |graphs: bool, interleave: bool| {
        let mut t = Trainer::new(&gpu, cfg.clone(), &p);
        t.graphs = graphs;
        for step in 0..6 {
            if interleave && step == 3 {
                // a larger batch on the same backend: its backward grows the scratch buffers
                let mut big = cfg.clone();
                big.batch_size = 12;
                let mut other = Trainer::new(&gpu, big, &p);
                other.train_step(&gpu, &data).unwrap();
                other.report(&gpu).unwrap();
            }
            t.train_step(&gpu, &data).unwrap();
        }
        t.report(&gpu).unwrap();
        t.model.to_host(&gpu).tensors().into_iter().flatten().map(|x| x.to_bits()).collect::<Vec<u32>>()
    };
    let direct = run(false, false);
    let interleaved = run(true, true);
    assert!(interleaved == direct, "a recorded run with a larger step in between differs from a direct one");
}

/// Segment by segment as `eval_step` runs it (reading back after each), in the shape that
/// `infer_segments` returns.
fn eval_by_steps<B: Backend>(be: &B, model: &Hrm<B>, batch: &Batch) -> EvalRows {
    let mut carry = Carry::fresh(be, model, batch.len());
    let mut out = EvalRows::default();
    for _ in 0..model.cfg.halt_max_steps {
        let s = eval_step(be, model, &mut carry, batch).unwrap();
        let scored = s.scored.expect("labels given");
        out.exact_per_segment.push(scored.exact);
        out.argmax = scored.argmax;
        (out.q_halt, out.q_continue) = (s.heads.q_halt, s.heads.q_continue);
    }
    be.check().unwrap();
    out
}

/// Inference on the backend (`infer_segments`: the batch embedded once, every segment scored
/// where the model runs, read back once; on a device each segment a replayed graph) gives the
/// same bits as segment-by-segment evaluation, on the CPU and under emulation, for a fresh
/// workspace and for one reused with new puzzles; a device batch reads back only at the end
/// and, once warm, launches its 3 setup kernels and one graph per segment.
#[test]
fn inference_on_the_backend_equals_eval_steps() {
    let model_cfg = ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        H_layers: 1, // odd: each module update copies its result home once
        L_layers: 2,
        puzzle_emb_ndim: 0,
        halt_max_steps: 4,
        ..ModelConfig::sudoku()
    };
    let segments = model_cfg.halt_max_steps;
    let p = params(&model_cfg, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut batches: Vec<Batch> = (0..2).map(|_| random_batch(&mut rng, 3, 1)).collect();
    // A row the model gets right (labels = its own answer): exact flags are not all false.
    let cpu_model = Hrm::new(&Cpu, &model_cfg, &p);
    let answer = eval_by_steps(&Cpu, &cpu_model, &batches[0]).argmax;
    batches[0].labels.as_mut().unwrap()[..81].iter_mut().zip(&answer).for_each(|(l, &a)| *l = a as i32);

    let mut carry = Carry::fresh(&Cpu, &cpu_model, 3);
    for batch in &batches {
        let want = eval_by_steps(&Cpu, &cpu_model, batch);
        assert_eq!(want.exact_per_segment.len(), segments);
        let got = infer_segments(&Cpu, &cpu_model, &mut carry, batch, segments, true).unwrap();
        assert_eq!(got, want, "CPU: infer_segments vs eval_step");
    }
    assert!(eval_by_steps(&Cpu, &cpu_model, &batches[0]).exact_per_segment[segments - 1][0]);

    let _stream = alone();
    let Some(gpu) = cuda("backend_parity inference") else {
        return;
    };
    let model = Hrm::new(&gpu, &model_cfg, &p);
    for graphs in [false, true] {
        let mut carry = Carry::fresh(&gpu, &model, 3);
        for (round, batch) in batches.iter().chain(&batches).enumerate() {
            let want = eval_by_steps(&gpu, &model, batch);
            let (reads, launches) = (gpu.host_reads(), hrm::backend::cuda::device::emulated_launch_counts());
            let got = infer_segments(&gpu, &model, &mut carry, batch, segments, graphs).unwrap();
            gpu.check().unwrap();
            // argmax, exact history and q logits: three reads, all after the last segment
            assert_eq!(gpu.host_reads() - reads, 3, "reads of one inference batch");
            assert_eq!(got, want, "emulation: infer_segments (graphs {graphs}, round {round}) vs eval_step");
            if let (true, true, Some(c0)) = (graphs, round > 0, launches) {
                let c1 = hrm::backend::cuda::device::emulated_launch_counts().unwrap();
                assert_eq!((c1.0 - c0.0, c1.1 - c0.1), (3 + segments as u64, 0), "launches of a warm batch");
            }
        }
        gpu.forget_graphs(carry.ws.uid());
    }
}
