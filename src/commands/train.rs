//! `hrm train` and `hrm demo`.

use super::eval::report_table;
use super::train_setup::{model_config, model_source, read_json, resume_trainer, train_split};
use crate::backend::{Backend, DeviceChoice};
use crate::config::{Arch, ModelConfig};
use crate::fsutil::{Input, check_output_dir};
use crate::infer::augmented::{AugmentedOptions, evaluate_augmented_on};
use crate::infer::eval::{EvalSet, Example};
use crate::infer::perturb::parse_spec;
use crate::model::HostParams;
use crate::model::checkpoint::{load_checkpoint, write_atomic};
use crate::model::memory::{Purpose, SavedActivations, check_device, check_host, choose_saved};
use crate::task::Rules;
use crate::train::checkpoint::complete_checkpoints;
use crate::train::data::{
    TrainData, augmented_source_with_hints, blanked_puzzles, example_of, load_eval_set,
};
use crate::train::distributed::{self, Dist, DistEnv, Role, connect};
use crate::train::run::{RunOptions, RunSummary, run};
use crate::train::rundir::{
    RUN_ENTRIES, RunLock, discard_checkpoints_after, prepare_new_run, remove_stale_temporaries,
    resume_checkpoint,
};
use crate::train::sampler::PuzzleSource;
use crate::train::{TrainConfig, Trainer};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training set directory (from `hrm data build`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluation sets (CSV or one-per-line puzzle files).
    #[arg(long, num_args = 1..)]
    pub eval: Vec<PathBuf>,
    /// Run directory: config.json, metrics.jsonl, checkpoints/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its newest complete checkpoint.
    #[arg(long, conflicts_with_all = ["out", "preset", "arch", "config", "init", "overwrite"])]
    pub resume: Option<PathBuf>,
    /// With --resume: start from this checkpoint directory (RUN/checkpoints/step_N) instead of
    /// the newest; the run's later checkpoints are set aside as `discarded_step_*`.
    #[arg(long, requires = "resume")]
    pub resume_from: Option<PathBuf>,
    /// Delete the run already in --out (config, run.json, metrics, checkpoints, plots) first.
    #[arg(long)]
    pub overwrite: bool,
    /// Model preset: sudoku (HRM, the paper's), small, tiny, demo; trm-sudoku-mlp (TRM, its
    /// Sudoku default), trm-sudoku-att, trm-demo.
    #[arg(long)]
    pub preset: Option<String>,
    /// The model family: hrm or trm. Without --preset/--config it picks the family's Sudoku
    /// preset (sudoku, trm-sudoku-mlp); with one, the two must agree.
    #[arg(long, value_enum)]
    pub arch: Option<crate::config::Arch>,
    /// Architecture JSON with the reference's keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start from these weights instead of a fresh initialization.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[arg(long, default_value_t = 768, value_parser = crate::commands::args::positive_usize)]
    pub batch_size: usize,
    /// Total steps (default: from --epochs).
    #[arg(long, value_parser = crate::commands::args::positive_u64)]
    pub steps: Option<u64>,
    /// Epochs (passes over the puzzle groups), the reference's unit: steps = epochs * groups / batch.
    #[arg(long, default_value_t = 20_000, value_parser = crate::commands::args::positive_u64)]
    pub epochs: u64,
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true, value_parser = crate::commands::args::non_negative)]
    pub lr: f64,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::commands::args::unit_closed)]
    pub lr_min_ratio: f64,
    #[arg(long, default_value_t = 2000)]
    pub lr_warmup_steps: u64,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::commands::args::non_negative)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true, value_parser = crate::commands::args::unit_half_open)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true, value_parser = crate::commands::args::unit_half_open)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true, value_parser = crate::commands::args::non_negative)]
    pub puzzle_emb_lr: f64,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::commands::args::non_negative)]
    pub puzzle_emb_weight_decay: f64,
    /// EMA decay of the evaluated/exported weights (e.g. 0.999 as TRM), in (0, 1); off by default.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::commands::args::unit_open)]
    pub ema: Option<f64>,
    /// Override the model's halt_exploration_prob (in [0, 1]).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::commands::args::unit_closed)]
    pub halt_exploration_prob: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 10, value_parser = crate::commands::args::positive_u64)]
    pub log_every: u64,
    #[arg(long, default_value_t = 1000, value_parser = crate::commands::args::positive_u64)]
    pub checkpoint_every: u64,
    /// Complete checkpoints to keep.
    #[arg(long, default_value_t = 3, value_parser = crate::commands::args::positive_usize)]
    pub keep: usize,
    #[arg(long, default_value_t = 2000, value_parser = crate::commands::args::positive_u64)]
    pub eval_every: u64,
    /// Puzzles per evaluation set during training (0 = all).
    #[arg(long, default_value_t = 2000)]
    pub eval_limit: usize,
    #[arg(long, default_value_t = 256, value_parser = crate::commands::args::positive_usize)]
    pub eval_batch_size: usize,
    /// Stop once this step is reached (the run can be resumed).
    #[arg(long, value_parser = crate::commands::args::positive_u64)]
    pub stop_after: Option<u64>,
    /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// TRM: keep the block activations of the whole gradient-carrying recursion for the
    /// backward, or recompute its z-updates there (less memory; n - 1 more network calls per
    /// step, +14% for trm-sudoku-mlp on the CPU; the same bits). Default: keep where the memory estimate fits the free
    /// memory with 10% to spare, else recompute; the log says which.
    #[arg(long, value_enum)]
    pub activations: Option<SavedActivations>,
    /// Data-parallel training on N local GPUs: starts N ranks (one process per GPU, NCCL);
    /// see docs/DISTRIBUTED.md. The torchrun variables (RANK, WORLD_SIZE, ...) set by a
    /// scheduler start one rank without it.
    #[arg(long, value_parser = crate::commands::args::positive_usize)]
    pub nproc: Option<usize>,
    /// With --nproc: the rendezvous port on 127.0.0.1 (default: a free one).
    #[arg(long, requires = "nproc")]
    pub master_port: Option<u16>,
    /// With --resume: go on although the training data differs from the data the run was
    /// trained on (its content hash, recorded in RUN/run.json, changed).
    #[arg(long, requires = "resume")]
    pub allow_other_data: bool,
    /// The flags typed on the command line (clap ids), filled in by the binary: `--resume`
    /// honors or refuses each of them.
    #[arg(skip)]
    pub given: Vec<String>,
}

/// Flags a resumed run takes from its checkpoint: given with `--resume`, they are refused
/// (silently ignoring them would train with other settings than the user asked for).
const FIXED_BY_CHECKPOINT: &[&str] = &[
    "batch_size",
    "epochs",
    "lr",
    "lr_min_ratio",
    "lr_warmup_steps",
    "weight_decay",
    "beta1",
    "beta2",
    "puzzle_emb_lr",
    "puzzle_emb_weight_decay",
    "ema",
    "halt_exploration_prob",
    "seed",
];

fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// `--resume` with flags it cannot honor: refused, naming them, before any work.
fn check_resume_flags(a: &TrainArgs) -> Result<()> {
    let fixed: Vec<String> =
        a.given.iter().filter(|g| FIXED_BY_CHECKPOINT.contains(&g.as_str())).map(|g| flag(g)).collect();
    if !fixed.is_empty() {
        bail!(
            "--resume continues the run with the settings stored in its checkpoint; {} would change \
             them and cannot be honored on resume (start a new run with `--init \
             RUN/checkpoints/step_N/model.safetensors` to train on with other settings)",
            fixed.join(", ")
        );
    }
    Ok(())
}

/// Data parallel: `Some(env)` for a rank (started by `--nproc` or a scheduler), after checking
/// that the arguments fit; `Ok(None)` for a single process. `--nproc N` without the rank
/// variables launches the ranks here and returns their outcome as `Err` / `Ok(Some)`.
fn distributed_setup(a: &TrainArgs) -> Result<std::result::Result<Option<DistEnv>, RunSummary>> {
    Ok(match distributed::setup(a.device, a.nproc, a.master_port, "training")? {
        Role::Single => Ok(None),
        Role::Rank(e) => Ok(Some(e)),
        Role::Launched => Err(RunSummary::default()),
    })
}

/// Runs the training loop; tells the other ranks how it ended.
fn run_ranked<B: Backend>(
    be: &B,
    t: &mut Trainer<B>,
    data: &dyn PuzzleSource,
    opts: &RunOptions,
    dist: Option<&Arc<Dist>>,
) -> Result<RunSummary> {
    distributed::ranked(dist.map(|d| &**d), || run(be, t, data, opts))
}

/// Paths a run reads, saved as `run.json` so `--resume` needs no repetition: absolute, and
/// also relative to the run directory (tried first: a run moved together with its data still
/// finds it), with the training data's content hash, so a resume never silently trains on
/// other data.
#[derive(Serialize, Deserialize)]
struct RunInputs {
    data: PathBuf,
    eval: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_from_run: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    eval_from_run: Vec<Option<PathBuf>>,
    /// [`Dataset::content_hash`] of the training data (absent in runs of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_hash: Option<String>,
}

impl RunInputs {
    fn new(run: &Path, data: &Path, eval: &[PathBuf], hash: String) -> Result<RunInputs> {
        let abs = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()));
        let run = abs(run)?;
        let eval_abs = eval.iter().map(|e| abs(e)).collect::<Result<Vec<_>>>()?;
        let data = abs(data)?;
        Ok(RunInputs {
            data_from_run: relative_to(&data, &run),
            eval_from_run: eval_abs.iter().map(|e| relative_to(e, &run)).collect(),
            data,
            eval: eval_abs,
            data_hash: Some(hash),
        })
    }

    /// Where the inputs are now, seen from the current directory: next to the run when they
    /// are there, else at their absolute path (older runs: relative to the current directory).
    fn locate(&self, run: &Path) -> (PathBuf, Vec<PathBuf>) {
        let pick = |rel: Option<&PathBuf>, abs: &Path| match rel.map(|r| run.join(r)) {
            Some(p) if p.exists() => p,
            _ => abs.to_path_buf(),
        };
        let eval = self
            .eval
            .iter()
            .enumerate()
            .map(|(i, e)| pick(self.eval_from_run.get(i).and_then(|r| r.as_ref()), e));
        (pick(self.data_from_run.as_ref(), &self.data), eval.collect())
    }
}

/// `path` relative to the directory `base` (both absolute and resolved), as `../x/y`.
fn relative_to(path: &Path, base: &Path) -> Option<PathBuf> {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return None;
    }
    let mut rel: PathBuf = b[common..].iter().map(|_| std::path::Component::ParentDir).collect();
    rel.extend(&p[common..]);
    Some(rel)
}

fn load_eval_sets(paths: &[PathBuf], limit: usize) -> Result<Vec<EvalSet>> {
    paths.iter().map(|p| load_eval_set(p, (limit > 0).then_some(limit))).collect()
}

/// The reference's step budget: epochs x groups x mean examples per puzzle / batch (at least 1).
fn epoch_steps(epochs: u64, groups: usize, mean_examples: f64, batch: usize) -> u64 {
    let steps = if mean_examples == 1.0 {
        epochs.saturating_mul(groups as u64) / batch.max(1) as u64
    } else {
        (epochs as f64 * groups as f64 * mean_examples / batch.max(1) as f64) as u64
    };
    steps.max(1)
}

/// `--out RUN` before any work: a directory that can be written, and none of the run's inputs
/// inside the run files a new run replaces (`--overwrite` would delete them).
fn check_run_dir(out: &Path, a: &TrainArgs) -> Result<()> {
    let mut inputs: Vec<Input> = a.data.iter().map(|d| ("--data", d.as_path())).collect();
    inputs.extend(a.init.as_deref().map(|w| ("--init", w)));
    inputs.extend(a.config.as_deref().map(|c| ("--config", c)));
    inputs.extend(a.eval.iter().map(|e| ("--eval set", e.as_path())));
    check_output_dir("--out", out, RUN_ENTRIES, &inputs)
}

pub fn run_train(a: &TrainArgs) -> Result<RunSummary> {
    if a.resume.is_some() {
        check_resume_flags(a)?;
    } else if let Some(from) = &a.resume_from {
        bail!(
            "--resume-from {} needs --resume RUN, the run it is a checkpoint of; to start a new \
             run from its weights, use --init {}",
            from.display(),
            from.join("model.safetensors").display()
        );
    } else if a.allow_other_data {
        bail!("--allow-other-data applies to --resume only");
    }
    if let Some(n) = a.nproc
        && a.resume.is_none()
        && !a.batch_size.is_multiple_of(n)
    {
        bail!("--batch-size {} does not split over --nproc {n} ranks: pass a multiple of {n}", a.batch_size);
    }
    let env = match distributed_setup(a)? {
        Ok(env) => env,
        Err(launched) => return Ok(launched),
    };
    let main = env.as_ref().is_none_or(|e| e.rank == 0);
    let shard = env.as_ref().map_or((0, 1), |e| (e.rank, e.world));
    if let Some(dir) = &a.resume {
        if !dir.join("run.json").exists() {
            bail!("--resume {}: not a run directory (no run.json)", dir.display());
        }
        let _lock = if main { Some(RunLock::acquire(dir)?) } else { None };
        if main {
            for p in remove_stale_temporaries(dir)? {
                eprintln!("removed {} (left by an interrupted checkpoint write)", p.display());
            }
        }
        let inputs: RunInputs = read_json(&dir.join("run.json"))?;
        let (saved_data, saved_eval) = inputs.locate(dir);
        let data_path = train_split(&a.data.clone().unwrap_or(saved_data))?;
        let data = TrainData::load(&data_path)?;
        let hash = data.content_hash();
        let eval = if a.eval.is_empty() { saved_eval } else { a.eval.clone() };
        data.check_eval_sets(&eval)?;
        match &inputs.data_hash {
            Some(h) if *h != hash && !a.allow_other_data => bail!(
                "--resume {}: the training data {} is not the data this run was trained on (its \
                 content hash is {hash}, {} records {h}): it was rebuilt or replaced since; pass \
                 the run's dataset with --data, or add --allow-other-data to go on with this one",
                dir.display(),
                data_path.display(),
                dir.join("run.json").display()
            ),
            None => eprintln!(
                "{}: no content hash of the training data recorded (an older version wrote it); \
                 {} is not checked",
                dir.join("run.json").display(),
                data_path.display()
            ),
            _ => {}
        }
        let ckpt = resume_checkpoint(dir, a.resume_from.as_deref())?;
        return crate::with_backend!(a.device, |be| {
            let mut t = resume_trainer(be, dir, &ckpt, a.resume_from.is_some(), shard)?;
            data.check_model(&t.cfg.model, &ckpt.display().to_string())?;
            let local_batch = t.carry.steps.len();
            t.model.saved =
                saved_activations(be, &t.cfg.model, local_batch, t.cfg.ema.is_some(), a.activations)?;
            if let Some(s) = a.steps {
                if s < t.step {
                    bail!(
                        "--steps {s}: the run is already at step {} ({}); a resume trains on from \
                         there, so --steps must be at least {}",
                        t.step,
                        ckpt.display(),
                        t.step
                    );
                }
                t.cfg.steps = s;
            }
            // Settings that do not change the training trajectory are honored.
            let given = |id: &str| a.given.iter().any(|g| g == id);
            if given("log_every") {
                t.cfg.log_every = a.log_every;
            }
            if given("checkpoint_every") {
                t.cfg.checkpoint_every = a.checkpoint_every;
            }
            if given("keep") {
                t.cfg.keep_checkpoints = a.keep;
            }
            if given("eval_every") {
                t.cfg.eval_every = a.eval_every;
            }
            if given("eval_limit") {
                t.cfg.eval_limit = a.eval_limit;
            }
            if given("eval_batch_size") {
                t.cfg.eval_batch_size = a.eval_batch_size;
            }
            if main && (a.data.is_some() || !a.eval.is_empty()) {
                // The run now reads these: a later plain `--resume` must find them.
                let now = RunInputs::new(dir, &data_path, &eval, hash.clone())?;
                write_atomic(&dir.join("run.json"), serde_json::to_string_pretty(&now)?.as_bytes())?;
            }
            let dist = env.as_ref().map(connect).transpose()?;
            if let Some(d) = &dist {
                distributed::attach(be, &mut t, d.clone())?;
            }
            if a.resume_from.is_some() && main {
                for p in discard_checkpoints_after(dir, t.step)? {
                    eprintln!("set aside {} (past the checkpoint resumed from)", p.display());
                }
            }
            let fixed = if main {
                crate::train::metrics::repair(&dir.join("metrics.jsonl"), t.step)?
            } else {
                Default::default()
            };
            if !fixed.damaged.is_empty() {
                eprintln!(
                    "metrics.jsonl: moved damaged line(s) {:?} (not JSON records) to {}",
                    fixed.damaged,
                    dir.join(crate::train::metrics::DAMAGED_FILE).display()
                );
            }
            if fixed.torn_line || fixed.dropped > 0 {
                eprintln!(
                    "metrics.jsonl: cut {} and {} records past step {}",
                    if fixed.torn_line { "a torn last line" } else { "no torn line" },
                    fixed.dropped,
                    t.step
                );
            }
            eprintln!(
                "resuming {} at step {} of {} from {} on {}",
                dir.display(),
                t.step,
                t.cfg.steps,
                ckpt.display(),
                be.name()
            );
            let opts = RunOptions {
                run_dir: dir.clone(),
                eval_sets: load_eval_sets(&eval, t.cfg.eval_limit)?,
                stop_after: a.stop_after,
                progress: true,
            };
            run_ranked(be, &mut t, &data, &opts, dist.as_ref())
        });
    }
    let (Some(data_path), Some(out)) = (&a.data, &a.out) else {
        bail!("`hrm train` needs --data and --out (or --resume RUN_DIR)");
    };
    check_run_dir(out, a)?;
    let mut model = model_config(a)?;
    let data_path = train_split(data_path)?;
    // (the host side of the least a step could keep; the device side once the device is open)
    let least = a.activations.unwrap_or(SavedActivations::Recompute);
    check_host(&model, Purpose::Train { batch: a.batch_size, ema: a.ema.is_some(), saved: least }, a.device)?;
    let data = TrainData::load(&data_path)?;
    if data.num_groups() == 0 {
        bail!("{}: the dataset holds no puzzles", data_path.display());
    }
    if data.puzzle_identifiers() != model.num_puzzle_identifiers && a.init.is_none() {
        // (as the reference does: the model has one embedding row per identifier of its data)
        eprintln!(
            "num_puzzle_identifiers: {} (the data's), not {} ({})",
            data.puzzle_identifiers(),
            model.num_puzzle_identifiers,
            model_source(a)
        );
        model.num_puzzle_identifiers = data.puzzle_identifiers();
        check_host(
            &model,
            Purpose::Train { batch: a.batch_size, ema: a.ema.is_some(), saved: least },
            a.device,
        )?;
    }
    data.check_model(&model, &model_source(a))?;
    data.check_eval_sets(&a.eval)?;
    let eval_sets = load_eval_sets(&a.eval, a.eval_limit)?;
    let mut cfg = TrainConfig::new(model.clone());
    cfg.batch_size = a.batch_size;
    cfg.steps = a.steps.unwrap_or(epoch_steps(
        a.epochs,
        data.num_groups(),
        data.mean_puzzle_examples(),
        a.batch_size,
    ));
    cfg.seed = a.seed;
    cfg.ema = a.ema;
    cfg.optim = crate::optim::OptimConfig {
        lr: a.lr,
        lr_min_ratio: a.lr_min_ratio,
        lr_warmup_steps: a.lr_warmup_steps,
        beta1: a.beta1,
        beta2: a.beta2,
        weight_decay: a.weight_decay,
        puzzle_emb_lr: a.puzzle_emb_lr,
        puzzle_emb_weight_decay: a.puzzle_emb_weight_decay,
    };
    cfg.log_every = a.log_every;
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.keep_checkpoints = a.keep;
    cfg.eval_every = a.eval_every;
    cfg.eval_limit = a.eval_limit;
    cfg.eval_batch_size = a.eval_batch_size;
    let params = match &a.init {
        Some(p) => load_checkpoint(p, Some(&model))?.1,
        None => HostParams::init(&model, &mut crate::rng::seeded(a.seed)),
    };
    let _lock = if main {
        let lock = RunLock::acquire(out)?;
        prepare_new_run(out, a.overwrite, Some("hrm train --resume"))?;
        let inputs = RunInputs::new(out, &data_path, &a.eval, data.content_hash())?;
        write_atomic(&out.join("run.json"), serde_json::to_string_pretty(&inputs)?.as_bytes())?;
        Some(lock)
    } else {
        None
    };
    eprintln!(
        "training {} trainable parameters on {} groups ({} examples), {} steps of batch {}",
        params.num_trainable(&model),
        data.num_groups(),
        data.len(),
        cfg.steps,
        cfg.batch_size
    );
    let opts = RunOptions { run_dir: out.clone(), eval_sets, stop_after: a.stop_after, progress: true };
    crate::with_backend!(a.device, |be| {
        eprintln!("device: {}", be.name());
        let dist = env.as_ref().map(connect).transpose()?;
        // (checked before anything is allocated)
        let local_batch = cfg.batch_size / dist.as_ref().map_or(1, |d| d.world());
        let saved = saved_activations(be, &model, local_batch, cfg.ema.is_some(), a.activations)?;
        let mut t = match &dist {
            Some(d) => {
                let mut t = distributed::new_trainer(be, cfg, &params, d.world());
                distributed::attach(be, &mut t, d.clone())?;
                t
            }
            None => Trainer::new(be, cfg, &params),
        };
        t.model.saved = saved;
        run_ranked(be, &mut t, &data, &opts, dist.as_ref())
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// The task: sudoku (k-blank 9 x 9 puzzles, the default) or maze (small random mazes,
    /// --side x --side, shortest paths of --min-moves or more).
    #[arg(long, value_enum, default_value_t = DemoTask::Sudoku)]
    pub task: DemoTask,
    /// Run directory (default runs/demo; runs/demo-maze with --task maze).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// --task maze: the grid side.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(3..=30))]
    pub side: u16,
    /// --task maze: the fewest moves of a maze's shortest path.
    #[arg(long, default_value_t = 8)]
    pub min_moves: u32,
    /// Training puzzles (Sudoku: each with --augment symmetry transforms; Maze: each with its
    /// 8 dihedral transforms).
    #[arg(long, default_value_t = 2000, value_parser = crate::commands::args::positive_usize)]
    pub train_puzzles: usize,
    /// Sudoku: symmetry transforms per training puzzle.
    #[arg(long, default_value_t = 20)]
    pub augment: usize,
    /// Held-out evaluation puzzles.
    #[arg(long, default_value_t = 500, value_parser = crate::commands::args::positive_usize)]
    pub eval_puzzles: usize,
    /// Sudoku: fewest blanks per puzzle.
    #[arg(long, default_value_t = 3)]
    pub min_blanks: usize,
    /// Sudoku: most blanks per puzzle.
    #[arg(long, default_value_t = 8)]
    pub max_blanks: usize,
    /// Training steps (default 700 for Sudoku, 1,400 for --task maze; the HRM `demo` preset of
    /// the recipe sweep used 2,500).
    #[arg(long, value_parser = crate::commands::args::positive_u64)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 64, value_parser = crate::commands::args::positive_usize)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true, value_parser = crate::commands::args::non_negative)]
    pub lr: f64,
    /// Model preset: trm-demo (TRM with the token-mixing MLP, the default) or demo (HRM), or
    /// any other preset.
    #[arg(long)]
    pub preset: Option<String>,
    /// The model family: trm (the default, preset trm-demo) or hrm (preset demo); with
    /// --preset or --config the two must agree.
    #[arg(long, value_enum)]
    pub arch: Option<crate::config::Arch>,
    /// Model config JSON (the reference's arch keys) instead of --preset.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Override the preset's segment limit (ACT halts at the latest here; evaluation runs
    /// this many segments).
    #[arg(long)]
    pub halt_max_steps: Option<usize>,
    /// Override the preset's position encoding (rope, learned, or none for TRM).
    #[arg(long)]
    pub pos_encodings: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Delete a previous run in --out first.
    #[arg(long)]
    pub overwrite: bool,
    /// Augmented HRM's hint twins: every training example is followed by an easier copy with
    /// n random blanks filled from its solution (n uniform in [1, blanks - 1]).
    #[arg(long)]
    pub hints: bool,
    /// Perturbations of the closing side-by-side table (the `hrm eval --perturb` grammar).
    #[arg(long, default_value = "relabel9")]
    pub perturb: String,
    /// Add a row bootstrapped over every kept checkpoint to the closing table (3x its time).
    #[arg(long)]
    pub bootstrap: bool,
    /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

/// The demo's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoTask {
    Sudoku,
    Maze,
}

impl DemoArgs {
    /// `out` made ready for a new demo run (checked, locked, a previous run removed with
    /// --overwrite); the lock is held while the guard lives.
    pub fn prepare_run_dir(&self, out: &Path) -> Result<RunLock> {
        let inputs: Vec<(&str, &Path)> = self.config.iter().map(|c| ("--config", c.as_path())).collect();
        check_output_dir("--out", out, RUN_ENTRIES, &inputs)?;
        let lock = RunLock::acquire(out)?;
        prepare_new_run(out, self.overwrite, None)?;
        Ok(lock)
    }

    /// The run directory.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(match self.task {
                DemoTask::Sudoku => "runs/demo",
                DemoTask::Maze => "runs/demo-maze",
            })
        })
    }

    /// The demo's model: --config, --preset or the --arch's demo preset, with the overrides;
    /// with the preset's name or the config's path. For `task` the preset's sequence length and
    /// vocabulary become the task's (a --config must already have them).
    pub fn model(&self, task: Rules) -> Result<(ModelConfig, String)> {
        let preset =
            self.preset.as_deref().unwrap_or(self.arch.unwrap_or(Arch::Trm).pick("demo", "trm-demo"));
        let mut model = match &self.config {
            Some(path) => ModelConfig::from_json_file(path)?,
            None => ModelConfig::preset(preset)?,
        };
        let source = self.config.as_ref().map_or(format!("preset {preset}"), |c| c.display().to_string());
        crate::config::Arch::check(self.arch, &model, &source)?;
        if self.config.is_none() {
            model.seq_len = task.seq_len();
            model.vocab_size = task.vocab_size();
        }
        if let Some(p) = &self.pos_encodings {
            model.pos_encodings = serde_json::from_value(serde_json::Value::String(p.clone()))
                .with_context(|| format!("--pos-encodings {p}: expected rope, learned or none"))?;
        }
        if let Some(h) = self.halt_max_steps {
            model.halt_max_steps = h;
        }
        model.validate()?;
        task.check_model(&model).with_context(|| format!("{source}: not a model for the demo's task"))?;
        Ok((model, self.config.as_ref().map_or(preset.to_string(), |c| c.display().to_string())))
    }

    /// Training steps: --steps, else the task's default.
    pub fn steps(&self) -> u64 {
        self.steps.unwrap_or(match self.task {
            DemoTask::Sudoku => 700,
            DemoTask::Maze => 1400,
        })
    }

    /// The training settings shared by the demo's tasks.
    pub fn train_config(&self, model: &ModelConfig) -> TrainConfig {
        let mut cfg = TrainConfig::new(model.clone());
        let steps = self.steps();
        cfg.batch_size = self.batch_size;
        cfg.steps = steps;
        cfg.seed = self.seed;
        cfg.optim.lr = self.lr;
        cfg.optim.puzzle_emb_lr = self.lr;
        cfg.optim.weight_decay = 0.1;
        cfg.optim.puzzle_emb_weight_decay = 0.1;
        cfg.optim.lr_warmup_steps = (steps / 10).max(1);
        cfg.log_every = 10;
        cfg.checkpoint_every = (steps / 4).max(1);
        cfg.eval_every = (steps / 4).max(1);
        cfg.eval_limit = 0;
        cfg.eval_batch_size = 250;
        cfg
    }
}

/// The demo: make k-blank puzzles, train the small model on the CPU, evaluate on held-out
/// puzzles of the same difficulty (with --task maze, [`super::demo_maze::run_maze_demo`]).
pub fn run_demo(a: &DemoArgs) -> Result<RunSummary> {
    if a.task == DemoTask::Maze {
        return super::demo_maze::run_maze_demo(a);
    }
    let t_start = std::time::Instant::now();
    let out = a.out_dir();
    let (model, name) = a.model(Rules::Sudoku)?;
    if a.min_blanks > a.max_blanks || a.max_blanks > 64 {
        bail!("blanks must satisfy min <= max <= 64");
    }
    check_host(
        &model,
        Purpose::Train { batch: a.batch_size, ema: false, saved: SavedActivations::Recompute },
        a.device,
    )?;
    let examples = a.train_puzzles as f64 * (1.0 + a.augment as f64) * if a.hints { 2.0 } else { 1.0 };
    crate::model::memory::check_items(
        &format!(
            "--train-puzzles {} x (1 + --augment {}): {examples:.3e} training examples",
            a.train_puzzles, a.augment
        ),
        examples,
        2.0 * 81.0 + 64.0,
    )?;
    let _lock = a.prepare_run_dir(&out)?;
    eprintln!(
        "generating {} training and {} held-out puzzles with {}..={} blanks",
        a.train_puzzles, a.eval_puzzles, a.min_blanks, a.max_blanks
    );
    let blanks = a.min_blanks..a.max_blanks + 1;
    let train = blanked_puzzles(a.train_puzzles, blanks.clone(), crate::train::sampler::mix(a.seed));
    let held_out = blanked_puzzles(a.eval_puzzles, blanks, crate::train::sampler::mix(a.seed ^ 0xE7A1));
    let train_canon: std::collections::HashSet<_> =
        train.iter().map(|(q, _)| crate::sudoku::symmetry::canonical(q)).collect();
    let held_out: Vec<_> = held_out
        .into_iter()
        .filter(|(q, _)| !train_canon.contains(&crate::sudoku::symmetry::canonical(q)))
        .collect();
    if held_out.is_empty() {
        bail!(
            "no held-out puzzle is left after removing those equivalent to training puzzles; raise --eval-puzzles"
        );
    }
    let perts = parse_spec(&a.perturb, 0)?;
    let data = augmented_source_with_hints(&train, a.augment, a.hints, a.seed);
    let cfg = a.train_config(&model);
    let params = HostParams::init(&model, &mut crate::rng::seeded(a.seed));
    eprintln!(
        "training the '{name}' model ({} parameters) for {} steps of batch {} on {} groups",
        params.num_trainable(&model),
        cfg.steps,
        cfg.batch_size,
        data.num_groups()
    );
    let eval: Vec<Example> = held_out.iter().map(|(q, s)| example_of(q, s)).collect();
    let generate_seconds = t_start.elapsed().as_secs_f64();
    let opts = RunOptions {
        run_dir: out.clone(),
        eval_sets: vec![EvalSet {
            name: "held_out".to_string(),
            rules: Rules::Sudoku,
            examples: eval.clone(),
            arc: None,
        }],
        stop_after: None,
        progress: true,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::sudoku::formats::write_lines(
        &out.join("held_out.txt"),
        &held_out.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        "held-out demo puzzles (never trained on)",
    )?;
    let t_train = std::time::Instant::now();
    let summary = crate::with_backend!(a.device, |be| {
        eprintln!("device: {}", be.name());
        let mut t = Trainer::new(be, cfg, &params);
        run(be, &mut t, &data, &opts)?
    });
    let train_seconds = t_train.elapsed().as_secs_f64();
    let t_table = std::time::Instant::now();
    print!("{}", report_table(&summary.last_eval));
    if let Some(c) = &summary.last_checkpoint {
        println!("model: {}", c.join("model.safetensors").display());
    }
    // Augmented HRM on the held-out puzzles: perturbed passes with the final checkpoint, and
    // with --bootstrap over every kept checkpoint (newest first, so `single` is the final model).
    let mut kept = complete_checkpoints(&out)?;
    kept.reverse();
    let loaded = kept
        .iter()
        .map(|(_, dir)| load_checkpoint(&dir.join("model.safetensors"), None))
        .collect::<Result<Vec<_>>>()?;
    let mut reports = Vec::new();
    let mut singles = Vec::new();
    if !loaded.is_empty() {
        let opts = AugmentedOptions { batch_size: 512, ..Default::default() };
        (reports, singles) = crate::with_backend!(a.device, |be| {
            let models: Vec<_> = loaded.iter().map(|(cfg, p)| crate::hrm::Hrm::new(be, cfg, p)).collect();
            let mut reports = Vec::new();
            let mut singles = Vec::new();
            let counts: &[usize] = if a.bootstrap { &[1, models.len()] } else { &[1] };
            for &n in counts {
                let (mut r, selected) = evaluate_augmented_on(
                    be,
                    &models[..n],
                    "held_out",
                    Rules::Sudoku,
                    &eval,
                    &a.perturb,
                    &perts,
                    &opts,
                    None,
                    |_| {},
                )?;
                if n == 1 {
                    singles = selected.iter().map(|s| s.single.tokens.clone()).collect();
                }
                r.name = format!("held_out ({n} checkpoint{})", if n == 1 { "" } else { "s" });
                reports.push(r);
                if models.len() == 1 {
                    break;
                }
            }
            (reports, singles)
        });
        println!("\nAugmented HRM on the held-out puzzles (--perturb {}):", a.perturb);
        print!("{}", super::eval::augmented_table(&reports));
    }
    let table_seconds = t_table.elapsed().as_secs_f64();
    let t_findings = std::time::Instant::now();
    let findings = match loaded.first() {
        Some((cfg, params)) => Some(demo_findings(a, cfg, params, &held_out, &eval, &summary)?),
        None => None,
    };
    let findings_seconds = t_findings.elapsed().as_secs_f64();
    let figures = serde_json::json!({
        "held_out": summary.last_eval.first(),
        "held_out_exact_by_blanks": exact_by_blanks(&held_out, &singles),
        "selection": reports,
        "findings": findings,
        "seconds": {
            "generate": generate_seconds,
            "train_and_evaluate": train_seconds,
            "closing_table": table_seconds,
            "findings": findings_seconds,
            "total": t_start.elapsed().as_secs_f64(),
        },
        "args": format!("{a:?}"),
    });
    let path = out.join("demo.json");
    write_atomic(&path, serde_json::to_string_pretty(&figures)?.as_bytes())?;
    println!("figures: {}", path.display());
    Ok(summary)
}

/// Puzzles of the fixed-points probe in the demo's report, and its noisy starts per puzzle.
const DEMO_FIXED_POINT_PUZZLES: usize = 100;
const DEMO_FIXED_POINT_RUNS: usize = 8;

/// The paper's three findings measured on the demo's final model, printed and written to
/// `RUN/analysis/` (the files of `hrm analyze trivial|fixed-points|landscape`): (a) solved
/// held-out grids with 1, 2, 4 and 8 blanks, next to the demo's own difficulty; (b) the
/// critical step of the training curve; (c) noisy starts: distinct answers and wrong fixed
/// points per puzzle, and the landscape of one puzzle (the first whose runs disagree, else the
/// first). Returns the figures for `demo.json`.
fn demo_findings(
    a: &DemoArgs,
    cfg: &ModelConfig,
    params: &HostParams,
    held_out: &[(crate::sudoku::board::Board, crate::sudoku::board::Board)],
    eval: &[Example],
    summary: &RunSummary,
) -> Result<serde_json::Value> {
    use super::analyze::{fixed_points_table, landscape_table, trivial_table};
    let out = a.out_dir().join("analysis");
    let grids: Vec<_> = held_out.iter().map(|(_, s)| *s).collect();
    let probe = &eval[..eval.len().min(DEMO_FIXED_POINT_PUZZLES)];
    let (trivial, fixed, landscape) = crate::with_backend!(a.device, |be| {
        let model = crate::hrm::Hrm::new(be, cfg, params);
        let trivial =
            crate::analysis::trivial::trivial(be, &model, "held_out", &grids, &[1, 2, 4, 8], a.seed, 512)?;
        let fixed = crate::analysis::fixed_points::fixed_points(
            be,
            &model,
            "held_out",
            Rules::Sudoku,
            probe,
            DEMO_FIXED_POINT_RUNS,
            2.0,
            1e-2,
            a.seed,
            512,
        )?;
        let pick = fixed
            .per_puzzle
            .iter()
            .position(|p| p.distinct_answers > 1)
            .or_else(|| fixed.per_puzzle.iter().position(|p| p.correct_runs < DEMO_FIXED_POINT_RUNS))
            .unwrap_or(0);
        let segments = 2 * cfg.halt_max_steps;
        let landscape = crate::analysis::landscape::landscape(
            be,
            &model,
            "held_out",
            Rules::Sudoku,
            &eval[pick],
            pick,
            16,
            segments,
            2.0,
            a.seed,
        )?;
        (trivial, fixed, landscape)
    });
    let held = summary.last_eval.first().map_or(f64::NAN, |r| r.exact_accuracy);
    println!(
        "\nFinding (a), failures on trivial puzzles: the held-out solutions with k blanks (the demo's own \
         puzzles, {}..={} blanks: exact {held:.4})",
        a.min_blanks, a.max_blanks
    );
    print!("{}", trivial_table(&trivial));
    println!("\nFinding (b), the critical step of the training exact accuracy:");
    match &summary.critical_step {
        Some(c) => println!(
            "  {} at step {:.0} (of {}): {:.3} -> {:.3} over {:.0} steps ({:.0}% of the curve's range)",
            if c["sudden"].as_bool() == Some(true) { "sudden rise" } else { "no sudden rise; steepest" },
            c["at_step"].as_f64().unwrap_or(f64::NAN),
            c["step"],
            c["before"].as_f64().unwrap_or(f64::NAN),
            c["after"].as_f64().unwrap_or(f64::NAN),
            c["window_steps"].as_f64().unwrap_or(f64::NAN),
            100.0 * c["share_of_range"].as_f64().unwrap_or(f64::NAN)
        ),
        None => println!("  none: the curve is too short or never rises"),
    }
    println!("\nFinding (c), multiple fixed points (noisy starts):");
    print!("{}", fixed_points_table(&fixed));
    print!("{}", landscape_table(&landscape));
    let mut files = super::analyze::write_trivial(&out, &trivial)?;
    files.extend(super::analyze::write_fixed_points(&out, &fixed)?);
    files.extend(super::analyze::write_landscape(&out, &landscape)?);
    println!("analysis: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    let mut fixed_summary = serde_json::to_value(&fixed)?;
    fixed_summary.as_object_mut().map(|o| o.remove("per_puzzle"));
    Ok(serde_json::json!({
        "trivial": trivial,
        "critical_step": summary.critical_step,
        "fixed_points": fixed_summary,
        "landscape": {
            "puzzle": landscape.puzzle,
            "runs": landscape.runs,
            "segments": landscape.segments,
            "explained_variance": landscape.explained_variance,
            "answers": landscape.answers.iter().map(|x| serde_json::json!({"runs": x.runs, "correct": x.correct, "valid": x.valid})).collect::<Vec<_>>(),
        },
    }))
}

/// Exact accuracy of the final model's unperturbed answers (`answers`, token ids, in the order
/// of `held_out`) by number of blanks of the puzzle.
fn exact_by_blanks(
    held_out: &[(crate::sudoku::board::Board, crate::sudoku::board::Board)],
    answers: &[Vec<u8>],
) -> serde_json::Value {
    let mut by: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
    for ((q, s), t) in held_out.iter().zip(answers) {
        let e = by.entry(q.iter().filter(|&&c| c == 0).count()).or_default();
        e.0 += 1;
        e.1 += (crate::infer::perturb::tokens_to_board(t) == *s) as usize;
    }
    by.into_iter()
        .map(|(k, (n, right))| {
            serde_json::json!({"blanks": k, "puzzles": n, "exact": right as f64 / n.max(1) as f64})
        })
        .collect()
}

/// What a training step keeps for TRM's backward: `--activations`, else the memory estimate's
/// choice ([`choose_saved`]), said in the log; then the device-memory check for that choice.
fn saved_activations<B: Backend>(
    be: &B,
    model: &ModelConfig,
    batch: usize,
    ema: bool,
    flag: Option<SavedActivations>,
) -> Result<SavedActivations> {
    let (auto, why) = choose_saved(be, model, batch, ema);
    let saved = flag.unwrap_or(auto);
    if model.is_trm() {
        match flag {
            Some(s) => eprintln!("activations: {} (--activations)", s.name()),
            None => eprintln!("{why}"),
        }
    }
    check_device(be, model, Purpose::Train { batch, ema, saved })?;
    Ok(saved)
}
