//! Evaluation as the reference does it: every puzzle runs all `halt_max_steps` segments from a
//! fresh carry; exact accuracy (whole board right), token accuracy (all cells, the reference's
//! "accuracy"), accuracy on the blank cells only, exact accuracy after each segment, and the
//! fraction whose final q_halt > q_continue (Augmented HRM's act_halt).

use crate::act::{Batch, Carry, infer_segments};
use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::task::Rules;
use crate::train::distributed::{Dist, all_gather_words, rows};
use anyhow::{Result, bail};
use serde::Serialize;

/// One puzzle as token ids (Sudoku: inputs 1..10, labels 2..10; see the spec).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub inputs: Vec<i32>,
    pub labels: Vec<i32>,
    /// the puzzle identifier (0, the blank, but for ARC's variants)
    pub puzzle_id: i32,
}

/// A named evaluation set of one task.
#[derive(Clone, Debug)]
pub struct EvalSet {
    pub name: String,
    pub rules: Rules,
    pub examples: Vec<Example>,
    /// ARC: each example's task, test input and variant, for the vote
    pub arc: Option<std::sync::Arc<crate::arc::eval::ArcSet>>,
}

/// Results over one evaluation set.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalReport {
    pub name: String,
    pub puzzles: usize,
    pub exact_accuracy: f64,
    pub cell_accuracy: f64,
    /// accuracy on the cells the model must decide ([`Rules::is_blank`]: Sudoku's blanks, a
    /// maze's open cells)
    pub blank_cell_accuracy: f64,
    pub exact_accuracy_per_segment: Vec<f64>,
    pub act_halt_fraction: f64,
    /// Tasks whose answers the task can check besides the label ([`Rules::reports_validity`]:
    /// Maze): answers that are valid (a path from S to G), and valid and optimal (a shortest
    /// one, the label's or another).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_optimal_accuracy: Option<f64>,
    /// ARC: the voted pass@1 and pass@2 over the variants (the per-row exact accuracy above is
    /// un-voted)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc: Option<crate::arc::vote::ArcScores>,
}

/// Model outputs for a set of puzzles after the last segment.
pub struct Predictions {
    /// argmax token per cell [n, seq_len]
    pub tokens: Vec<u8>,
    /// per puzzle
    pub q_halt: Vec<f32>,
    pub q_continue: Vec<f32>,
    /// per segment, per puzzle (when labels are known)
    pub exact_per_segment: Vec<Vec<bool>>,
}

/// A batch of examples.
pub fn batch_of(examples: &[Example]) -> Batch {
    Batch {
        inputs: examples.iter().flat_map(|e| e.inputs.iter().copied()).collect(),
        puzzle_ids: examples.iter().map(|e| e.puzzle_id).collect(),
        labels: Some(examples.iter().flat_map(|e| e.labels.iter().copied()).collect()),
    }
}

/// Run all segments on `examples` in batches of `batch_size` (see [`infer_segments`]: a batch
/// reads back once, after its last segment).
pub fn predict<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    examples: &[Example],
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Predictions> {
    let cfg = &model.cfg;
    let n = cfg.seq_len;
    let segments = cfg.halt_max_steps;
    let mut out = Predictions {
        tokens: Vec::with_capacity(examples.len() * n),
        q_halt: Vec::with_capacity(examples.len()),
        q_continue: Vec::with_capacity(examples.len()),
        exact_per_segment: vec![Vec::with_capacity(examples.len()); segments],
    };
    // One carry per batch size (all full batches share one, so their segments replay one
    // recorded graph on a device), dropped with its graphs at the end.
    let mut carry: Option<Carry<B>> = None;
    let graphs = crate::train::graphs_enabled();
    let result = (|| -> Result<()> {
        for chunk in examples.chunks(batch_size.max(1)) {
            let b = chunk.len();
            if carry.as_ref().is_none_or(|c| c.ws.batch() != b) {
                if let Some(c) = carry.take() {
                    be.forget_graphs(c.ws.uid());
                }
                carry = Some(Carry::fresh(be, model, b));
            }
            let c = carry.as_mut().expect("made above");
            let r = infer_segments(be, model, c, &batch_of(chunk), segments, graphs)?;
            be.check()?;
            for (seg, exact) in r.exact_per_segment.iter().enumerate() {
                out.exact_per_segment[seg].extend(exact);
            }
            out.tokens.extend(&r.argmax);
            out.q_halt.extend(&r.q_halt);
            out.q_continue.extend(&r.q_continue);
            on_batch(b);
        }
        Ok(())
    })();
    if let Some(c) = carry {
        be.forget_graphs(c.ws.uid());
    }
    result?;
    Ok(out)
}

impl Predictions {
    /// Words per puzzle in [`Predictions::to_words`]: the tokens, q_halt, q_continue, and one
    /// exact flag per segment.
    fn words_per_puzzle(seq_len: usize, segments: usize) -> usize {
        seq_len + 2 + segments
    }

    /// Flat per-puzzle words (bit patterns), for the all-gather of a sharded evaluation.
    fn to_words(&self, seq_len: usize) -> Vec<u32> {
        let n = self.q_halt.len();
        let mut out = Vec::with_capacity(n * Self::words_per_puzzle(seq_len, self.exact_per_segment.len()));
        for p in 0..n {
            out.extend(self.tokens[p * seq_len..(p + 1) * seq_len].iter().map(|&t| t as u32));
            out.push(self.q_halt[p].to_bits());
            out.push(self.q_continue[p].to_bits());
            out.extend(self.exact_per_segment.iter().map(|s| s[p] as u32));
        }
        out
    }

    /// The inverse of [`Predictions::to_words`].
    fn from_words(words: &[u32], seq_len: usize, segments: usize) -> Result<Predictions> {
        let w = Self::words_per_puzzle(seq_len, segments);
        if !words.len().is_multiple_of(w) {
            bail!("gathered predictions: {} words is not a whole number of puzzles of {w}", words.len());
        }
        let n = words.len() / w;
        let mut out = Predictions {
            tokens: Vec::with_capacity(n * seq_len),
            q_halt: Vec::with_capacity(n),
            q_continue: Vec::with_capacity(n),
            exact_per_segment: vec![Vec::with_capacity(n); segments],
        };
        for p in words.chunks(w) {
            out.tokens.extend(p[..seq_len].iter().map(|&t| t as u8));
            out.q_halt.push(f32::from_bits(p[seq_len]));
            out.q_continue.push(f32::from_bits(p[seq_len + 1]));
            for (s, &e) in out.exact_per_segment.iter_mut().zip(&p[seq_len + 2..]) {
                s.push(e != 0);
            }
        }
        Ok(out)
    }
}

/// [`predict`] sharded over the ranks of a data-parallel run: rank r runs puzzles
/// [r*n/N, (r+1)*n/N) and every rank gets the predictions of all `n` in order (one
/// all-gather). Each puzzle runs alone in its batch row, so the answers are the ones a single
/// process gives (bit for bit when the device's matrix products do not depend on the batch
/// size, as under the emulation). Without `dist`, [`predict`].
pub fn predict_on<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    examples: &[Example],
    batch_size: usize,
    dist: Option<&Dist>,
    on_batch: impl FnMut(usize),
) -> Result<Predictions> {
    let Some(d) = dist else { return predict(be, model, examples, batch_size, on_batch) };
    let n = examples.len();
    let (lo, hi) = rows(n, d.rank(), d.world());
    let mine = predict(be, model, &examples[lo..hi], batch_size, on_batch)?;
    let (seq, segments) = (model.cfg.seq_len, model.cfg.halt_max_steps);
    let w = Predictions::words_per_puzzle(seq, segments);
    let lens: Vec<usize> = (0..d.world())
        .map(|r| {
            let (a, b) = rows(n, r, d.world());
            (b - a) * w
        })
        .collect();
    let all = all_gather_words(d, be, "evaluation all-gather", &mine.to_words(seq), &lens)?;
    Predictions::from_words(&all, seq, segments)
}

/// The report of `set` from its predictions.
pub fn score(set: &EvalSet, p: &Predictions, cfg: &crate::config::ModelConfig) -> EvalReport {
    let (name, examples, rules) = (&set.name, &set.examples, set.rules);
    let seq_len = cfg.seq_len;
    let n = seq_len;
    let count = examples.len().max(1) as f64;
    let (mut cells, mut cells_ok, mut blanks, mut blanks_ok) = (0usize, 0usize, 0usize, 0usize);
    for (e, pred) in examples.iter().zip(p.tokens.chunks(n)) {
        for ((&x, &y), &t) in e.inputs.iter().zip(&e.labels).zip(pred) {
            if y == 0 {
                continue;
            }
            cells += 1;
            cells_ok += (t as i32 == y) as usize;
            if rules.is_blank(x) {
                blanks += 1;
                blanks_ok += (t as i32 == y) as usize;
            }
        }
    }
    let last = p.exact_per_segment.last().cloned().unwrap_or_default();
    let (mut valid, mut optimal) = (0usize, 0usize);
    if rules.reports_validity() {
        for v in
            examples.iter().zip(p.tokens.chunks(n)).filter_map(|(e, pred)| rules.verdict(&e.inputs, pred))
        {
            valid += v.valid as usize;
            optimal += v.optimal as usize;
        }
    }
    let validity = |k: usize| rules.reports_validity().then_some(k as f64 / count);
    EvalReport {
        arc: set.arc.as_ref().map(|a| crate::arc::eval::vote(a, &p.tokens, &p.q_halt).1),
        valid_accuracy: validity(valid),
        valid_optimal_accuracy: validity(optimal),
        name: name.to_string(),
        puzzles: examples.len(),
        exact_accuracy: last.iter().filter(|&&e| e).count() as f64 / count,
        cell_accuracy: cells_ok as f64 / cells.max(1) as f64,
        blank_cell_accuracy: blanks_ok as f64 / blanks.max(1) as f64,
        exact_accuracy_per_segment: p
            .exact_per_segment
            .iter()
            .map(|s| s.iter().filter(|&&e| e).count() as f64 / count)
            .collect(),
        act_halt_fraction: p
            .q_halt
            .iter()
            .zip(&p.q_continue)
            .filter(|&(&h, &c)| crate::act::wants_halt(cfg.no_act_continue(), h, c))
            .count() as f64
            / count,
    }
}

/// Evaluate `set`.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    set: &EvalSet,
    batch_size: usize,
    on_batch: impl FnMut(usize),
) -> Result<EvalReport> {
    evaluate_on(be, model, set, batch_size, None, on_batch)
}

/// [`evaluate`], sharded over the ranks of `dist` (see [`predict_on`]); every rank gets the
/// report of the whole set.
pub fn evaluate_on<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    set: &EvalSet,
    batch_size: usize,
    dist: Option<&Dist>,
    on_batch: impl FnMut(usize),
) -> Result<EvalReport> {
    let p = predict_on(be, model, &set.examples, batch_size, dist, on_batch)?;
    Ok(score(set, &p, &model.cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maze answers scored on constructed predictions: the label, another shortest path, a
    /// path that overwrites G, and the question (no path).
    #[test]
    fn maze_reports_count_valid_and_shortest_paths_besides_exact_ones() {
        let t = |rows: &[&str]| -> Vec<u8> {
            rows.iter().flat_map(|r| r.bytes().map(|c| crate::maze::token_of(c).unwrap())).collect()
        };
        let q = t(&["S  ", "   ", "  G"]);
        let label = crate::maze::label(&q, 3).unwrap();
        let other = t(&["Soo", "  o", "  G"]);
        assert_ne!(label, other, "two shortest paths");
        let broken = t(&["S  ", "o  ", "ooo"]);
        let answers = [label.clone(), other, broken, q.clone()];
        let example = Example {
            inputs: q.iter().map(|&x| x as i32).collect(),
            labels: label.iter().map(|&x| x as i32).collect(),
            puzzle_id: 0,
        };
        let set = EvalSet {
            name: "m".into(),
            rules: Rules::Maze { side: 3 },
            examples: vec![example; 4],
            arc: None,
        };
        let exact: Vec<bool> = answers.iter().map(|a| *a == label).collect();
        let p = Predictions {
            tokens: answers.concat(),
            q_halt: vec![1.0; 4],
            q_continue: vec![0.0; 4],
            exact_per_segment: vec![vec![false; 4], exact],
        };
        let cfg =
            crate::config::ModelConfig { seq_len: 9, vocab_size: 6, ..crate::config::ModelConfig::tiny() };
        let r = score(&set, &p, &cfg);
        assert_eq!(r.exact_accuracy, 0.25);
        assert_eq!(r.valid_accuracy, Some(0.5));
        assert_eq!(r.valid_optimal_accuracy, Some(0.5));
        assert_eq!(r.exact_accuracy_per_segment, vec![0.0, 0.25]);
        // Sudoku reports carry no validity figures (the label is the unique solution)
        let sudoku = EvalSet { rules: Rules::Sudoku, ..set };
        assert_eq!(score(&sudoku, &p, &cfg).valid_accuracy, None);
    }
}
