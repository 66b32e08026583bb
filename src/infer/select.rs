//! Answer selection over a puzzle's passes, side by side:
//! - `single`: the unperturbed pass (perturbation 0) of the first checkpoint: plain HRM.
//! - `vote`: label-free majority over all passes; ties go to the answer with the higher mean
//!   q_halt, then to the answer seen first. Measured on demo models (docs/AUGMENTED.md) it is
//!   at least as good as `vote_halt` almost everywhere: the Q head's halting verdict is a weak
//!   filter there.
//! - `vote_halt`: the same majority over the passes that would halt (q_halt > q_continue after
//!   their last segment), or over all passes when none would (the paper's act_halt filter).
//! - `verify`: label-free; the passes whose answer passes the task's check are the candidates
//!   (voted as `vote_halt` does); without any, the same as `vote_halt`. The check
//!   (`crate::task::Rules::verdict`, "optimal"): Sudoku, a valid solution keeping the givens;
//!   Maze, a shortest path from S to G.
//! - `oracle` (uses the labels): the Augmented HRM paper's metric. Per checkpoint, the puzzle
//!   counts as solved if the correct answer holds a strict majority among that checkpoint's
//!   halting passes (none halting: not solved); across checkpoints the results are ORed, so it
//!   scores "any of N checkpoints", not one answer.

use super::passes::{Pass, PassTable};
use crate::task::Rules;
use serde::Serialize;

/// The selection modes, in report order.
pub const MODES: [&str; 5] = ["single", "vote", "vote_halt", "verify", "oracle"];

/// A chosen answer and how strongly the passes backed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub tokens: Vec<u8>,
    /// Passes that gave this answer.
    pub votes: usize,
    /// Passes it was chosen from.
    pub pool: usize,
    pub mean_q_halt: f32,
}

/// Majority vote among `passes` (ties: higher mean q_halt, then first seen). `None` if empty.
pub fn majority<'a>(passes: impl IntoIterator<Item = &'a Pass>) -> Option<Choice> {
    let mut groups: Vec<(&[u8], usize, f64)> = Vec::new();
    let mut pool = 0;
    for p in passes {
        pool += 1;
        match groups.iter_mut().find(|g| g.0 == &p.tokens[..]) {
            Some(g) => {
                g.1 += 1;
                g.2 += p.q_halt as f64;
            }
            None => groups.push((&p.tokens, 1, p.q_halt as f64)),
        }
    }
    let mut best: Option<&(&[u8], usize, f64)> = None;
    for g in &groups {
        let better = match best {
            None => true,
            Some(b) => g.1 > b.1 || (g.1 == b.1 && g.2 / g.1 as f64 > b.2 / b.1 as f64),
        };
        if better {
            best = Some(g);
        }
    }
    best.map(|g| Choice { tokens: g.0.to_vec(), votes: g.1, pool, mean_q_halt: (g.2 / g.1 as f64) as f32 })
}

/// `single`: the unperturbed pass of the first checkpoint.
pub fn select_single(passes: &[Pass]) -> Option<Choice> {
    passes.iter().find(|p| p.checkpoint == 0 && p.perturbation == 0).map(|p| Choice {
        tokens: p.tokens.clone(),
        votes: 1,
        pool: 1,
        mean_q_halt: p.q_halt,
    })
}

/// `vote_halt`: majority over the halting passes, all passes if none halts.
pub fn select_vote_halt(passes: &[Pass]) -> Option<Choice> {
    if passes.iter().any(Pass::halted) {
        majority(passes.iter().filter(|p| p.halted()))
    } else {
        majority(passes)
    }
}

/// `vote`: majority over every pass.
pub fn select_vote(passes: &[Pass]) -> Option<Choice> {
    majority(passes)
}

/// `verify`: `vote_halt` among the passes whose answer passes `rules`' check against
/// `question` (its input tokens); `vote_halt` over all passes when none does (or the task has
/// no check).
pub fn select_verify(passes: &[Pass], rules: Rules, question: &[i32]) -> Option<Choice> {
    let valid: Vec<Pass> = passes
        .iter()
        .filter(|p| rules.verdict(question, &p.tokens).is_some_and(|v| v.optimal))
        .cloned()
        .collect();
    if valid.is_empty() { select_vote_halt(passes) } else { select_vote_halt(&valid) }
}

/// `oracle` (labels): strict majority of the correct answer among a checkpoint's halting
/// passes, ORed over checkpoints.
pub fn oracle_correct(passes: &[Pass], labels: &[u8]) -> bool {
    let checkpoints = passes.iter().map(|p| p.checkpoint + 1).max().unwrap_or(0);
    (0..checkpoints).any(|c| {
        let halted: Vec<&Pass> = passes.iter().filter(|p| p.checkpoint == c && p.halted()).collect();
        let correct = halted.iter().filter(|p| p.tokens[..] == *labels).count();
        2 * correct > halted.len()
    })
}

/// Exact accuracy of each mode over a pass table.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ModeAccuracy {
    pub single: f64,
    pub vote: f64,
    pub vote_halt: f64,
    pub verify: f64,
    pub oracle: f64,
}

impl ModeAccuracy {
    pub fn get(&self, mode: &str) -> f64 {
        match mode {
            "single" => self.single,
            "vote" => self.vote,
            "vote_halt" => self.vote_halt,
            "verify" => self.verify,
            _ => self.oracle,
        }
    }
}

/// Per puzzle, what each mode answered (the oracle gives only a verdict).
#[derive(Clone, Debug)]
pub struct Selected {
    pub single: Choice,
    pub vote: Choice,
    pub vote_halt: Choice,
    pub verify: Choice,
}

/// Selects per puzzle (`questions`: input tokens) and scores against `labels` (token ids).
pub fn score<L: AsRef<[u8]>>(
    table: &PassTable,
    rules: Rules,
    questions: &[&[i32]],
    labels: &[L],
) -> (ModeAccuracy, Vec<Selected>) {
    let mut acc = ModeAccuracy::default();
    let mut out = Vec::with_capacity(table.puzzles);
    for p in 0..table.puzzles {
        let passes = table.of_puzzle(p);
        let sel = Selected {
            single: select_single(passes).expect("a pass table has pass 0 of checkpoint 0"),
            vote: select_vote(passes).expect("passes"),
            vote_halt: select_vote_halt(passes).expect("passes"),
            verify: select_verify(passes, rules, questions[p]).expect("passes"),
        };
        let l = labels[p].as_ref();
        acc.single += (sel.single.tokens == l) as u8 as f64;
        acc.vote += (sel.vote.tokens == l) as u8 as f64;
        acc.vote_halt += (sel.vote_halt.tokens == l) as u8 as f64;
        acc.verify += (sel.verify.tokens == l) as u8 as f64;
        acc.oracle += oracle_correct(passes, l) as u8 as f64;
        out.push(sel);
    }
    let n = table.puzzles.max(1) as f64;
    acc.single /= n;
    acc.vote /= n;
    acc.vote_halt /= n;
    acc.verify /= n;
    acc.oracle /= n;
    (acc, out)
}
