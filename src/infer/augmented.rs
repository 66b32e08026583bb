//! Augmented HRM's perturbed inference: every puzzle runs under every perturbation with every
//! checkpoint ("pass"), each pass from a fresh carry, and the passes' answers are mapped back
//! through the inverse perturbation so they all answer the original puzzle.
//!
//! Puzzles x perturbations are flattened into one stream of passes per checkpoint and run in
//! batches of `batch_size` rows (a checkpoint's weights are shared by its whole batch, so
//! checkpoints run one after another). Two halting modes:
//! - [`HaltMode::Fixed`]: every pass runs all `halt_max_steps` segments (the reference's
//!   evaluation); passes are loaded in whole batches.
//! - [`HaltMode::Act`]: a pass stops once q_halt > q_continue after at least `min_segments`
//!   segments (or at `halt_max_steps`), and its batch row takes the next pending pass at once
//!   (continuous batching through [`Carry`]'s per-row halted mask, which restarts exactly the
//!   halted rows from H_init / L_init).

use super::passes::{Pass, PassTable};
use super::perturb::InputMap;
use crate::act::{Batch, Carry, eval_step};
use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::task::Rules;
use anyhow::{Result, bail};
use serde::Serialize;
use std::time::Instant;

/// When a pass stops (`--halt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HaltMode {
    /// All `halt_max_steps` segments (the reference's evaluation).
    #[default]
    Fixed,
    /// Stop when q_halt > q_continue after at least `--min-segments`; refill the row at once.
    Act,
}

#[derive(Clone, Debug)]
pub struct AugmentedOptions {
    /// Rows per model call.
    pub batch_size: usize,
    pub halt: HaltMode,
    /// ACT mode: segments every pass runs before it may halt.
    pub min_segments: usize,
}

impl Default for AugmentedOptions {
    fn default() -> Self {
        AugmentedOptions { batch_size: 256, halt: HaltMode::Fixed, min_segments: 2 }
    }
}

/// Where the time of a run went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunStats {
    pub passes: usize,
    /// Row-segments computed (idle rows of a partly filled batch included).
    pub row_segments: u64,
    /// Mean segments per pass.
    pub mean_segments: f64,
    pub wall_seconds: f64,
    /// In the model: segments and the argmax decode.
    pub model_seconds: f64,
    /// Perturbing inputs and mapping answers back.
    pub perturb_seconds: f64,
}

/// Runs every puzzle (`inputs`: token sequences, all of the models' length) under every input
/// map with every model; `on_passes(n)` after each batch step that finished `n` passes.
pub fn run_passes<B: Backend, I: AsRef<[u8]>, P: InputMap>(
    be: &B,
    models: &[Hrm<B>],
    inputs: &[I],
    perts: &[P],
    opts: &AugmentedOptions,
    mut on_passes: impl FnMut(usize),
) -> Result<(PassTable, RunStats)> {
    if models.is_empty() || perts.is_empty() {
        bail!("perturbed inference needs at least one checkpoint and one perturbation");
    }
    let t_start = Instant::now();
    let (np, nt, nc) = (inputs.len(), perts.len(), models.len());
    let n = models[0].cfg.seq_len;
    let per_puzzle = nc * nt;
    let inverses: Vec<P> = perts.iter().map(P::inverse_map).collect();
    let mut slots_out: Vec<Option<Pass>> = vec![None; np * per_puzzle];
    let mut st = RunStats { passes: np * per_puzzle, ..Default::default() };
    if let Some(i) = inputs.iter().position(|x| x.as_ref().len() != n) {
        bail!("puzzle {i}: {} cells, the model's sequences have {n}", inputs[i].as_ref().len());
    }
    for (c, model) in models.iter().enumerate() {
        if model.cfg.seq_len != n {
            bail!("checkpoint {}: seq_len {}, the first checkpoint's is {n}", c + 1, model.cfg.seq_len);
        }
        let max_steps = model.cfg.halt_max_steps as u32;
        let min_steps = match opts.halt {
            HaltMode::Fixed => max_steps,
            HaltMode::Act => (opts.min_segments.max(1) as u32).min(max_steps),
        };
        let total = np * nt;
        let mut next = 0usize; // next pending pass (puzzle * nt + perturbation)
        let mut rows = 0usize;
        let mut carry: Option<Carry<B>> = None;
        let mut new = Batch { inputs: vec![], puzzle_ids: vec![], labels: None };
        let mut zero_labels = be.upload_i32(&[]);
        let mut job: Vec<Option<usize>> = Vec::new();
        loop {
            // A fresh, right-sized batch whenever every row is free (always so in fixed mode).
            let all_free = carry.as_ref().is_none_or(|c| c.halted.iter().all(|&h| h));
            if all_free {
                let want = opts.batch_size.max(1).min(total - next);
                if want == 0 {
                    break;
                }
                if want != rows {
                    rows = want;
                    carry = Some(Carry::fresh(be, model, rows));
                    new = Batch { inputs: vec![1; rows * n], puzzle_ids: vec![0; rows], labels: None };
                    zero_labels = be.upload_i32(&vec![0; rows * n]);
                    job = vec![None; rows];
                }
            }
            let cr = carry.as_mut().expect("a batch");
            let t = Instant::now();
            for (b, slot) in job.iter_mut().enumerate() {
                if cr.halted[b] {
                    *slot = (next < total).then_some(next);
                    if let Some(f) = *slot {
                        let x = perts[f % nt].map_tokens(inputs[f / nt].as_ref());
                        for (d, &v) in new.inputs[b * n..(b + 1) * n].iter_mut().zip(&x) {
                            *d = v as i32;
                        }
                        next += 1;
                    }
                }
            }
            st.perturb_seconds += t.elapsed().as_secs_f64();
            if job.iter().all(Option::is_none) {
                break;
            }
            let t = Instant::now();
            let seg = eval_step(be, model, cr, &new)?;
            st.row_segments += rows as u64;
            let finished: Vec<usize> = (0..rows)
                .filter(|&b| {
                    job[b].is_some() && {
                        let s = cr.steps[b];
                        s >= max_steps
                            || (s >= min_steps
                                && crate::act::wants_halt(
                                    model.cfg.no_act_continue(),
                                    seg.heads.q_halt[b],
                                    seg.heads.q_continue[b],
                                ))
                    }
                })
                .collect();
            let argmax = if finished.is_empty() {
                Vec::new()
            } else {
                be.lm_loss(cr.logits(), &zero_labels, model.cfg.vocab_size, n, 0.0, None).argmax
            };
            be.check()?;
            st.model_seconds += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for (h, j) in cr.halted.iter_mut().zip(&job) {
                *h = j.is_none();
            }
            for &b in &finished {
                let f = job[b].take().expect("a job");
                let (p, k) = (f / nt, f % nt);
                slots_out[p * per_puzzle + c * nt + k] = Some(Pass {
                    checkpoint: c,
                    perturbation: k,
                    tokens: inverses[k].map_tokens(&argmax[b * n..(b + 1) * n]),
                    q_halt: seg.heads.q_halt[b],
                    q_continue: seg.heads.q_continue[b],
                    segments: cr.steps[b],
                    halt_at_zero: model.cfg.no_act_continue(),
                });
                cr.halted[b] = true;
            }
            st.perturb_seconds += t.elapsed().as_secs_f64();
            if !finished.is_empty() {
                on_passes(finished.len());
            }
        }
    }
    let passes: Vec<Pass> = slots_out.into_iter().map(|p| p.expect("every pass ran")).collect();
    st.mean_segments = passes.iter().map(|p| p.segments as f64).sum::<f64>() / passes.len().max(1) as f64;
    st.wall_seconds = t_start.elapsed().as_secs_f64();
    Ok((PassTable { puzzles: np, checkpoints: nc, perturbations: nt, passes }, st))
}

/// Perturbed inference over one evaluation set, scored in every selection mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AugmentedReport {
    pub name: String,
    pub puzzles: usize,
    /// The `--perturb` spec (`none`: only the unperturbed pass).
    pub perturb: String,
    pub checkpoints: usize,
    pub perturbations: usize,
    pub passes_per_puzzle: usize,
    pub halt: HaltMode,
    pub min_segments: usize,
    /// Exact accuracy (whole board right) per mode; `oracle` uses the labels.
    pub exact_accuracy: super::select::ModeAccuracy,
    /// Mean share of its pool that backed the `vote` answer.
    pub vote_agreement: f64,
    /// Fraction of passes with q_halt > q_continue after their last segment.
    pub act_halt_fraction: f64,
    pub mean_segments: f64,
    pub puzzles_per_s: f64,
    pub passes_per_s: f64,
    pub wall_seconds: f64,
    pub model_seconds: f64,
    pub perturb_seconds: f64,
    pub select_seconds: f64,
    /// (perturb + select) / model time.
    pub overhead_fraction: f64,
}

/// Words per pass besides its tokens in the all-gather of a sharded run: checkpoint,
/// perturbation, q_halt, q_continue, segments, halt_at_zero.
const PASS_EXTRA_WORDS: usize = 6;

fn pass_words(p: &Pass, out: &mut Vec<u32>) {
    out.extend(p.tokens.iter().map(|&t| t as u32));
    out.extend([
        p.checkpoint as u32,
        p.perturbation as u32,
        p.q_halt.to_bits(),
        p.q_continue.to_bits(),
        p.segments,
        p.halt_at_zero as u32,
    ]);
}

fn pass_of_words(w: &[u32]) -> Pass {
    let n = w.len() - PASS_EXTRA_WORDS;
    Pass {
        checkpoint: w[n] as usize,
        perturbation: w[n + 1] as usize,
        tokens: w[..n].iter().map(|&x| x as u8).collect(),
        q_halt: f32::from_bits(w[n + 2]),
        q_continue: f32::from_bits(w[n + 3]),
        segments: w[n + 4],
        halt_at_zero: w[n + 5] != 0,
    }
}

/// [`run_passes`] sharded over the ranks of a data-parallel run: rank r runs the passes of
/// puzzles [r*n/N, (r+1)*n/N) and every rank gets the whole table, in puzzle order (one
/// all-gather of the passes and one of the timings). A pass runs alone in its batch row, so
/// the table is the single process's (bit for bit where the device's matrix products do not
/// depend on the batch composition, as under the emulation). The stats sum the ranks' model
/// and perturbation seconds and row-segments; `wall_seconds` is this rank's, gather included.
pub fn run_passes_on<B: Backend, I: AsRef<[u8]>, P: InputMap>(
    be: &B,
    models: &[Hrm<B>],
    inputs: &[I],
    perts: &[P],
    opts: &AugmentedOptions,
    dist: Option<&crate::train::distributed::Dist>,
    on_passes: impl FnMut(usize),
) -> Result<(PassTable, RunStats)> {
    use crate::train::distributed::{all_gather_words, rows};
    let Some(d) = dist else { return run_passes(be, models, inputs, perts, opts, on_passes) };
    let t_start = Instant::now();
    let n = inputs.len();
    let (lo, hi) = rows(n, d.rank(), d.world());
    let (mine, st) = run_passes(be, models, &inputs[lo..hi], perts, opts, on_passes)?;
    let per_puzzle = mine.per_puzzle();
    let pass_len = models.first().map_or(0, |m| m.cfg.seq_len) + PASS_EXTRA_WORDS;
    let mut words = Vec::with_capacity(mine.passes.len() * pass_len);
    for p in &mine.passes {
        pass_words(p, &mut words);
    }
    let lens: Vec<usize> = (0..d.world())
        .map(|r| {
            let (a, b) = rows(n, r, d.world());
            (b - a) * per_puzzle * pass_len
        })
        .collect();
    let all = all_gather_words(d, be, "perturbed evaluation all-gather", &words, &lens)?;
    let passes: Vec<Pass> = all.chunks(pass_len).map(pass_of_words).collect();
    let t = [
        st.row_segments as u32,
        (st.row_segments >> 32) as u32,
        st.model_seconds.to_bits() as u32,
        (st.model_seconds.to_bits() >> 32) as u32,
        st.perturb_seconds.to_bits() as u32,
        (st.perturb_seconds.to_bits() >> 32) as u32,
    ];
    let timings = all_gather_words(d, be, "perturbed evaluation timings", &t, &vec![t.len(); d.world()])?;
    let word64 =
        |r: usize, i: usize| timings[r * 6 + 2 * i] as u64 | ((timings[r * 6 + 2 * i + 1] as u64) << 32);
    let mut total = RunStats { passes: passes.len(), ..Default::default() };
    for r in 0..d.world() {
        total.row_segments += word64(r, 0);
        total.model_seconds += f64::from_bits(word64(r, 1));
        total.perturb_seconds += f64::from_bits(word64(r, 2));
    }
    total.mean_segments = passes.iter().map(|p| p.segments as f64).sum::<f64>() / passes.len().max(1) as f64;
    total.wall_seconds = t_start.elapsed().as_secs_f64();
    let table =
        PassTable { puzzles: n, checkpoints: mine.checkpoints, perturbations: mine.perturbations, passes };
    Ok((table, total))
}

/// Runs [`run_passes`] on `examples` (of the task of `rules`) and scores single / vote /
/// verify / oracle.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_augmented<B: Backend, P: InputMap>(
    be: &B,
    models: &[Hrm<B>],
    name: &str,
    rules: Rules,
    examples: &[super::eval::Example],
    perturb: &str,
    perts: &[P],
    opts: &AugmentedOptions,
    on_passes: impl FnMut(usize),
) -> Result<AugmentedReport> {
    Ok(evaluate_augmented_on(be, models, name, rules, examples, perturb, perts, opts, None, on_passes)?.0)
}

/// [`evaluate_augmented`], sharded over the ranks of `dist` (see [`run_passes_on`]); also
/// returns every puzzle's selected answers. Every rank gets the whole report.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_augmented_on<B: Backend, P: InputMap>(
    be: &B,
    models: &[Hrm<B>],
    name: &str,
    rules: Rules,
    examples: &[super::eval::Example],
    perturb: &str,
    perts: &[P],
    opts: &AugmentedOptions,
    dist: Option<&crate::train::distributed::Dist>,
    on_passes: impl FnMut(usize),
) -> Result<(AugmentedReport, Vec<super::select::Selected>)> {
    let tokens = |v: &[i32]| -> Vec<u8> { v.iter().map(|&x| x as u8).collect() };
    let inputs: Vec<Vec<u8>> = examples.iter().map(|e| tokens(&e.inputs)).collect();
    let labels: Vec<Vec<u8>> = examples.iter().map(|e| tokens(&e.labels)).collect();
    let questions: Vec<&[i32]> = examples.iter().map(|e| &e.inputs[..]).collect();
    let (table, st) = run_passes_on(be, models, &inputs, perts, opts, dist, on_passes)?;
    let t = Instant::now();
    let (acc, selected) = super::select::score(&table, rules, &questions, &labels);
    let select_seconds = t.elapsed().as_secs_f64();
    let n = examples.len().max(1) as f64;
    let wall = st.wall_seconds + select_seconds;
    let report = AugmentedReport {
        name: name.to_string(),
        puzzles: examples.len(),
        perturb: perturb.to_string(),
        checkpoints: table.checkpoints,
        perturbations: table.perturbations,
        passes_per_puzzle: table.per_puzzle(),
        halt: opts.halt,
        min_segments: opts.min_segments,
        exact_accuracy: acc,
        vote_agreement: selected.iter().map(|s| s.vote.votes as f64 / s.vote.pool.max(1) as f64).sum::<f64>()
            / n,
        act_halt_fraction: table.passes.iter().filter(|p| p.halted()).count() as f64
            / table.passes.len().max(1) as f64,
        mean_segments: st.mean_segments,
        puzzles_per_s: examples.len() as f64 / wall.max(1e-9),
        passes_per_s: st.passes as f64 / wall.max(1e-9),
        wall_seconds: wall,
        model_seconds: st.model_seconds,
        perturb_seconds: st.perturb_seconds,
        select_seconds,
        overhead_fraction: (st.perturb_seconds + select_seconds) / st.model_seconds.max(1e-12),
    };
    Ok((report, selected))
}
