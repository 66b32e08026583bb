//! The training loop around `Trainer::train_step`: progress bar, metrics as JSON lines,
//! periodic evaluation and checkpoints, and the stop on a non-finite loss that keeps the last
//! good checkpoint.

use super::Trainer;
use super::checkpoint::complete_checkpoints;
use super::distributed;
use super::sampler::PuzzleSource;
use crate::backend::{ActReport, Backend};
use crate::hrm::Hrm;
use crate::infer::eval::{EvalReport, EvalSet, evaluate_on};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where and how a run reports.
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// Named evaluation sets (already limited to the size to evaluate).
    pub eval_sets: Vec<EvalSet>,
    /// Stop (as if interrupted) once this step is reached.
    pub stop_after: Option<u64>,
    pub progress: bool,
}

/// What the run ended with.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub final_step: u64,
    pub last_checkpoint: Option<PathBuf>,
    pub last_eval: Vec<EvalReport>,
    /// The `critical_step` record written when the run reached its last step
    /// ([`crate::analysis::critical`]).
    pub critical_step: Option<serde_json::Value>,
}

/// Adds one report's sums into the window's.
fn accumulate(w: &mut ActReport, r: &ActReport) {
    w.steps += r.steps;
    w.lm_loss += r.lm_loss;
    w.q_halt_loss += r.q_halt_loss;
    w.q_continue_loss += r.q_continue_loss;
    w.count += r.count;
    w.exact_correct += r.exact_correct;
    w.token_accuracy_sum += r.token_accuracy_sum;
    w.steps_sum += r.steps_sum;
    w.q_halt_correct += r.q_halt_correct;
}

fn append_jsonl(path: &Path, v: &serde_json::Value) -> Result<()> {
    super::metrics::append(path, v)
}

pub fn eval_all<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    sets: &[EvalSet],
    batch: usize,
    dist: Option<&distributed::Dist>,
) -> Result<Vec<EvalReport>> {
    sets.iter().map(|set| evaluate_on(be, model, set, batch, dist, |_| {})).collect()
}

/// Seconds between plain progress lines: `HRM_PROGRESS_S`, else 10.
fn plain_progress_interval() -> std::time::Duration {
    let s = std::env::var("HRM_PROGRESS_S").ok().and_then(|v| v.trim().parse::<f64>().ok());
    std::time::Duration::from_secs_f64(s.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(10.0))
}

/// One plain line of progress at a steady interval (and at the end), for output that is not a
/// terminal: step, the last logged window's losses and accuracy, speed, time left.
struct PlainProgress {
    every: std::time::Duration,
    start: Instant,
    first_step: u64,
    end: u64,
    last_line: Instant,
    last_message: String,
}

impl PlainProgress {
    fn new(step: u64, end: u64) -> Self {
        let now = Instant::now();
        PlainProgress {
            every: plain_progress_interval(),
            start: now,
            first_step: step,
            end,
            last_line: now,
            last_message: String::new(),
        }
    }

    fn tick(&mut self, step: u64, last: bool) {
        if self.last_message.is_empty() || !(last || self.last_line.elapsed() >= self.every) {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        let rate = (step - self.first_step) as f64 / secs.max(1e-9);
        let left = self.end.saturating_sub(step) as f64 / rate.max(1e-9);
        eprintln!(
            "step {step}/{} | {} | {:.0} s elapsed, about {:.0} s left",
            self.end, self.last_message, secs, left
        );
        self.last_line = Instant::now();
    }
}

pub fn run<B: Backend>(
    be: &B,
    t: &mut Trainer<B>,
    data: &dyn PuzzleSource,
    opts: &RunOptions,
) -> Result<RunSummary> {
    // Data parallel: rank 0 alone writes the run's files (the others only train).
    let main = distributed::is_main(t);
    std::fs::create_dir_all(&opts.run_dir).with_context(|| format!("creating {}", opts.run_dir.display()))?;
    let cfg_path = opts.run_dir.join("config.json");
    if main {
        crate::model::checkpoint::write_atomic(&cfg_path, serde_json::to_string_pretty(&t.cfg)?.as_bytes())?;
    }
    let metrics = opts.run_dir.join("metrics.jsonl");
    let end = opts.stop_after.map_or(t.cfg.steps, |s| s.min(t.cfg.steps));
    let bar = if opts.progress && main {
        indicatif::ProgressBar::new(t.cfg.steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(t.step);
    let mut summary = RunSummary {
        final_step: t.step,
        last_checkpoint: complete_checkpoints(&opts.run_dir)?.pop().map(|(_, p)| p),
        ..Default::default()
    };
    let tokens_per_step = (t.cfg.batch_size * t.cfg.model.total_seq_len()) as f64;
    let flops_per_step = crate::hrm::flops::train_step(&t.cfg.model, t.cfg.batch_size);
    let peak = be.peak_flops();
    let start = Instant::now();
    let mut window = ActReport::default();
    let mut window_start = Instant::now();
    let stop = |bar: &indicatif::ProgressBar, summary: &RunSummary, e: anyhow::Error| {
        bar.abandon();
        let keep = summary.last_checkpoint.as_ref().map_or("none yet".into(), |p| p.display().to_string());
        e.context(format!("training stopped; last good checkpoint: {keep}"))
    };
    // Ctrl-C or SIGTERM: finish the step, write a checkpoint, stop (single process only).
    let interrupt = t.dist.is_none().then(super::interrupt::Guard::install);
    // Where stderr is not a terminal (a log file, CI) the bar draws nothing: a plain line then.
    let mut plain = (opts.progress && main && !std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(|| PlainProgress::new(t.step, end));
    while t.step < end {
        // A step is only enqueued; the backend is read at log, eval and checkpoint boundaries.
        if let Err(e) = t.train_step(be, data) {
            return Err(stop(&bar, &summary, e));
        }
        bar.set_position(t.step);
        let last = t.step == end;
        let log_now = t.step.is_multiple_of(t.cfg.log_every.max(1)) || last;
        let eval_now = !opts.eval_sets.is_empty()
            && (t.step.is_multiple_of(t.cfg.eval_every.max(1)) || t.step == t.cfg.steps);
        let save_now = t.step.is_multiple_of(t.cfg.checkpoint_every.max(1)) || last;
        if log_now || eval_now || save_now {
            match t.report(be) {
                Ok(r) => accumulate(&mut window, &r),
                Err(e) => return Err(stop(&bar, &summary, e)),
            }
        }
        if log_now {
            let w = &window;
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let per = |x: f64| x / (w.steps.max(1) as f64 * t.cfg.batch_size as f64);
            let cnt = w.count.max(1) as f64;
            let (lr, _) = t.lrs(t.step);
            let flops_per_s = w.steps as f64 * flops_per_step / secs;
            let mfu = peak.map(|p| flops_per_s / p);
            let mut line = json!({
                "kind": "train", "step": t.step, "lr": lr,
                "lm_loss": per(w.lm_loss), "q_halt_loss": per(w.q_halt_loss),
                "q_continue_loss": per(w.q_continue_loss),
                "accuracy": w.token_accuracy_sum / cnt, "exact_accuracy": w.exact_correct as f64 / cnt,
                "q_halt_accuracy": w.q_halt_correct as f64 / cnt, "mean_halt_steps": w.steps_sum as f64 / cnt,
                "count": w.count, "steps_per_s": w.steps as f64 / secs,
                "tokens_per_s": w.steps as f64 * tokens_per_step / secs,
                "elapsed_s": start.elapsed().as_secs_f64(),
                "tflops": flops_per_s / 1e12,
            });
            if let Some(m) = mfu {
                line["mfu"] = json!(m);
            }
            if main {
                append_jsonl(&metrics, &line)?;
            }
            let mfu_text = mfu.map_or(String::new(), |m| format!(" MFU {:.1}%", 100.0 * m));
            let message = format!(
                "lm {:.3} qh {:.3} qc {:.3} exact {:.3} halt@{:.1} {:.2} step/s {:.0} tok/s{mfu_text}",
                per(w.lm_loss),
                per(w.q_halt_loss),
                per(w.q_continue_loss),
                w.exact_correct as f64 / cnt,
                w.steps_sum as f64 / cnt,
                w.steps as f64 / secs,
                w.steps as f64 * tokens_per_step / secs
            );
            if let Some(p) = &mut plain {
                p.last_message = message.clone();
            }
            bar.set_message(message);
            window = ActReport::default();
            window_start = Instant::now();
        }
        if let Some(p) = &mut plain {
            p.tick(t.step, last);
        }
        // Data parallel: every rank evaluates its share of the puzzles, rank 0 writes.
        if eval_now {
            let model = Hrm::new(be, &t.cfg.model, &t.eval_params(be));
            let reports = eval_all(be, &model, &opts.eval_sets, t.cfg.eval_batch_size, t.dist.as_deref())?;
            if main {
                for r in &reports {
                    let mut v = serde_json::to_value(r)?;
                    v["kind"] = json!("eval");
                    v["step"] = json!(t.step);
                    append_jsonl(&metrics, &v)?;
                    let mut line = format!(
                        "step {}: eval {}: exact {:.4}, cells {:.4}, blanks {:.4}",
                        t.step, r.name, r.exact_accuracy, r.cell_accuracy, r.blank_cell_accuracy
                    );
                    if let (Some(v), Some(o)) = (r.valid_accuracy, r.valid_optimal_accuracy) {
                        line += &format!(", valid {v:.4}, valid and optimal {o:.4}");
                    }
                    if let Some(a) = &r.arc {
                        line += &format!(
                            ", ARC vote pass@1 {}/{} and pass@2 {}/{} test inputs",
                            a.pass1_inputs, a.test_inputs, a.pass2_inputs, a.test_inputs
                        );
                    }
                    line += &format!(" ({} puzzles)", r.puzzles);
                    // (the hidden bar of a non-terminal prints nothing)
                    if plain.is_some() { eprintln!("{line}") } else { bar.println(line) }
                }
            }
            summary.last_eval = reports;
        }
        // Data parallel: every rank takes part (its carry rows), rank 0 writes.
        if save_now && let Some(p) = distributed::checkpoint(be, t, &opts.run_dir)? {
            summary.last_checkpoint = Some(p);
        }
        if let Some(signal) = interrupt.as_ref().and_then(|g| g.received()) {
            if !save_now {
                if let Err(e) = t.report(be) {
                    return Err(stop(&bar, &summary, e));
                }
                if let Some(p) = distributed::checkpoint(be, t, &opts.run_dir)? {
                    summary.last_checkpoint = Some(p);
                }
            }
            bar.abandon();
            let saved = summary.last_checkpoint.as_ref().map_or("none".into(), |p| p.display().to_string());
            let resume = format!("hrm train --resume {}", opts.run_dir.display());
            return Err(anyhow::Error::new(signal).context(format!(
                "stopped at step {}; checkpoint {saved}; continue with `{resume}`",
                t.step
            )));
        }
    }
    bar.finish();
    summary.final_step = t.step;
    if main
        && t.step == t.cfg.steps
        && let Some(v) = crate::analysis::critical::record(&metrics, t.step)?
    {
        append_jsonl(&metrics, &v)?;
        summary.critical_step = Some(v);
    }
    Ok(summary)
}
