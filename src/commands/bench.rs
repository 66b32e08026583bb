//! `hrm bench`: the speed of a whole training step and of 16-segment inference on the chosen
//! backend, on random puzzles (timing does not depend on the data): ms per step, tokens/s,
//! achieved TFLOP/s (matrix products, `crate::hrm::flops`), MFU against the device's peak, and
//! device memory in use. The per-kernel figures come from the criterion benches.

use crate::act::{Batch, Carry, infer_segments};
use crate::backend::{Backend, DeviceChoice};
use crate::config::ModelConfig;
use crate::hrm::{Hrm, flops};
use crate::model::HostParams;
use crate::model::checkpoint::write_atomic;
use crate::model::memory::{SavedActivations, choose_saved};
use crate::train::sampler::VecSource;
use crate::train::{TrainConfig, Trainer};
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model preset (sudoku, small, demo, tiny, maze, arc1, arc2, trm-sudoku-mlp,
    /// trm-sudoku-att, trm-demo, trm-maze, trm-arc1, trm-arc2); default: the --task's preset
    /// of the --arch family (sudoku, or trm-sudoku-mlp with --arch trm).
    #[arg(long, conflicts_with = "task")]
    pub preset: Option<String>,
    /// The model family: hrm or trm (picks the family's preset of --task; with --preset or
    /// --config the two must agree).
    #[arg(long, value_enum)]
    pub arch: Option<crate::config::Arch>,
    /// The benchmark whose model to time: sudoku, maze or arc1/arc2 (the family's preset for
    /// it: S = 901 / 916 for the 30 x 30 tasks); random tokens of its vocabulary.
    #[arg(long, value_enum, conflicts_with = "config")]
    pub task: Option<crate::config::Task>,
    /// Architecture JSON (overrides --preset).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training batch size.
    #[arg(long, default_value_t = 768)]
    pub batch_size: usize,
    /// Timed training steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Inference batch size (0 = skip inference).
    #[arg(long, default_value_t = 768)]
    pub infer_batch_size: usize,
    /// Timed inference batches (each runs all halt_max_steps segments).
    #[arg(long, default_value_t = 2)]
    pub infer_batches: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// TRM: keep or recompute the gradient-carrying recursion's activations (as `hrm train`;
    /// default: keep where it fits).
    #[arg(long, value_enum)]
    pub activations: Option<SavedActivations>,
}

/// The measured figures.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub preset: String,
    pub batch_size: usize,
    /// what a training step kept for the backward (TRM: keep or recompute)
    pub activations: &'static str,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    pub step_tflop: f64,
    pub tflops: f64,
    pub mfu: Option<f64>,
    pub infer_batch_size: usize,
    pub infer_segments: usize,
    /// Puzzles run through all segments per second.
    pub infer_puzzles_per_s: f64,
    pub infer_tflops: f64,
    pub device_memory_bytes: Option<u64>,
    /// (kernel launches, cuBLASLt matmuls) per training step, counted on the emulation
    /// (the same code issues the same launches on a GPU)
    pub launches_per_step: Option<(u64, u64)>,
    /// the same per inference batch of all segments (after the warm-up batch)
    pub launches_per_infer_batch: Option<(u64, u64)>,
}

fn random_source(cfg: &ModelConfig, n: usize, seed: u64) -> VecSource {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let len = n * cfg.seq_len;
    VecSource {
        seq_len: cfg.seq_len,
        inputs: (0..len).map(|_| rng.gen_range(1..cfg.vocab_size as u8)).collect(),
        labels: (0..len).map(|_| rng.gen_range(2..cfg.vocab_size as u8)).collect(),
        group_offsets: (0..=n).collect(),
    }
}

/// The preset `--preset` / `--task` and `--arch` name.
fn preset_name(a: &BenchArgs) -> &str {
    let arch = a.arch.unwrap_or(crate::config::Arch::Hrm);
    a.preset.as_deref().unwrap_or(a.task.unwrap_or_default().preset(arch))
}

fn bench<B: Backend>(be: &B, a: &BenchArgs, cfg: &ModelConfig) -> Result<BenchReport> {
    let params = HostParams::init(cfg, &mut crate::rng::seeded(0));
    let mut tc = TrainConfig::new(cfg.clone());
    tc.batch_size = a.batch_size;
    tc.steps = (a.warmup + a.steps) as u64;
    let data = random_source(cfg, a.batch_size * 4, 1);
    let mut t = Trainer::new(be, tc, &params);
    let (auto, _) = choose_saved(be, cfg, a.batch_size, false);
    t.model.saved = a.activations.unwrap_or(auto);
    for _ in 0..a.warmup {
        t.train_step(be, &data)?;
    }
    t.report(be)?; // waits for the warm-up steps
    let launches0 = crate::backend::cuda::device::emulated_launch_counts();
    let start = Instant::now();
    for _ in 0..a.steps {
        t.train_step(be, &data)?;
    }
    t.report(be)?; // a step is only enqueued: wait for the last one
    let step_s = start.elapsed().as_secs_f64() / a.steps.max(1) as f64;
    // The emulation counts launches; the same code issues the same ones on a GPU.
    let launches_per_step = launches0
        .zip(crate::backend::cuda::device::emulated_launch_counts())
        .map(|((k0, m0), (k1, m1))| ((k1 - k0) / a.steps as u64, (m1 - m0) / a.steps as u64));
    let step_flop = flops::train_step(cfg, a.batch_size);

    let segments = cfg.halt_max_steps;
    let (mut puzzles_per_s, mut infer_tflops, mut launches_per_infer_batch) = (0.0, 0.0, None);
    if a.infer_batch_size > 0 && a.infer_batches > 0 {
        let model = Hrm::new(be, cfg, &params);
        let b = a.infer_batch_size;
        let src = random_source(cfg, b, 2);
        let batch = Batch {
            inputs: src.inputs.iter().map(|&x| x as i32).collect(),
            puzzle_ids: vec![0; b],
            labels: Some(src.labels.iter().map(|&x| x as i32).collect()),
        };
        // As `hrm eval` runs it: one carry, every segment on the device (replayed from a
        // recorded graph on a GPU), one read-back per batch.
        let mut carry = Carry::fresh(be, &model, b);
        let graphs = crate::train::graphs_enabled();
        let mut run_once = || -> Result<()> {
            infer_segments(be, &model, &mut carry, &batch, segments, graphs)?;
            be.check()
        };
        run_once()?; // warm-up: GEMM plans, allocator, the recorded segment
        let launches0 = crate::backend::cuda::device::emulated_launch_counts();
        let start = Instant::now();
        for _ in 0..a.infer_batches {
            run_once()?;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = a.infer_batches as u64;
        launches_per_infer_batch = launches0
            .zip(crate::backend::cuda::device::emulated_launch_counts())
            .map(|((k0, m0), (k1, m1))| ((k1 - k0) / n, (m1 - m0) / n));
        be.forget_graphs(carry.ws.uid());
        puzzles_per_s = (a.infer_batches * b) as f64 / secs;
        infer_tflops =
            a.infer_batches as f64 * segments as f64 * flops::segment_forward(cfg, b) / secs / 1e12;
    }
    Ok(BenchReport {
        backend: be.name().to_string(),
        preset: a.config.as_ref().map_or(preset_name(a).to_string(), |p| p.display().to_string()),
        batch_size: a.batch_size,
        activations: if cfg.is_trm() { t.model.saved.name() } else { "keep" },
        step_ms: 1e3 * step_s,
        tokens_per_s: (a.batch_size * cfg.total_seq_len()) as f64 / step_s,
        step_tflop: step_flop / 1e12,
        tflops: step_flop / step_s / 1e12,
        mfu: be.peak_flops().map(|p| step_flop / step_s / p),
        infer_batch_size: a.infer_batch_size,
        infer_segments: segments,
        infer_puzzles_per_s: puzzles_per_s,
        infer_tflops,
        device_memory_bytes: be.device_memory_used(),
        launches_per_step,
        launches_per_infer_batch,
    })
}

pub fn run_bench(a: &BenchArgs) -> Result<BenchReport> {
    if let Some(j) = &a.json {
        let config: Vec<crate::fsutil::Input> = a.config.iter().map(|c| ("--config", c.as_path())).collect();
        crate::fsutil::check_output("--json", j, &config)?;
    }
    if a.batch_size == 0 || a.steps == 0 {
        bail!("--batch-size and --steps must be at least 1");
    }
    let cfg = match &a.config {
        Some(p) => ModelConfig::from_json_file(p)?,
        None => ModelConfig::preset(preset_name(a))?,
    };
    let source = a.config.as_ref().map_or(format!("preset {}", preset_name(a)), |p| p.display().to_string());
    crate::config::Arch::check(a.arch, &cfg, &source)?;
    cfg.validate()?;
    let saved = a.activations.unwrap_or(SavedActivations::Recompute);
    let purpose = crate::model::memory::Purpose::Train { batch: a.batch_size, ema: false, saved };
    crate::model::memory::check_host(&cfg, purpose, a.device)?;
    let infer = crate::model::memory::Purpose::Eval { batch: a.infer_batch_size };
    let infer_flag = || format!("--infer-batch-size {}", a.infer_batch_size);
    crate::model::memory::check_host(&cfg, infer, a.device).with_context(infer_flag)?;
    let r = crate::with_backend!(a.device, |be| {
        crate::model::memory::check_device(be, &cfg, purpose)?;
        crate::model::memory::check_device(be, &cfg, infer).with_context(infer_flag)?;
        bench(be, a, &cfg)?
    });
    println!("backend {} | {} | batch {} | activations {}", r.backend, r.preset, r.batch_size, r.activations);
    println!(
        "train step: {:.2} ms, {:.0} tokens/s, {:.2} TFLOP/step, {:.2} TFLOP/s{}",
        r.step_ms,
        r.tokens_per_s,
        r.step_tflop,
        r.tflops,
        r.mfu.map_or(String::new(), |m| format!(", MFU {:.1}% of 989 TFLOP/s", 100.0 * m))
    );
    if r.infer_batch_size > 0 {
        println!(
            "inference: {} puzzles/s ({} segments, batch {}), {:.2} TFLOP/s",
            // (a 30 x 30 model on the CPU does well under 1 puzzle/s)
            if r.infer_puzzles_per_s >= 10.0 {
                format!("{:.1}", r.infer_puzzles_per_s)
            } else {
                format!("{:.3}", r.infer_puzzles_per_s)
            },
            r.infer_segments,
            r.infer_batch_size,
            r.infer_tflops
        );
    }
    if let Some((k, m)) = r.launches_per_step {
        println!("launches per training step: {k} kernels + {m} cuBLASLt matmuls (counted on the emulation)");
    }
    if let Some((k, m)) = r.launches_per_infer_batch {
        println!(
            "launches per inference batch ({} segments): {k} kernels + {m} cuBLASLt matmuls (counted on the emulation)",
            r.infer_segments
        );
    }
    if let Some(m) = r.device_memory_bytes {
        println!("device memory in use: {:.2} GiB", m as f64 / (1u64 << 30) as f64);
    }
    if let Some(j) = &a.json {
        write_atomic(j, serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    Ok(r)
}
