//! What a task adds to token sequences for evaluation: which cells count as the ones to fill,
//! the validity check of an answer (`verify`, "valid and optimal"), the text of a sequence and
//! the model shape its data needs. The model, the ACT loop and the exact-match metrics are the
//! same for every task; these rules are the only task-specific step of evaluation.

use crate::config::ModelConfig;
use anyhow::{Result, bail};
use serde::Serialize;

/// The evaluation rules of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "task")]
pub enum Rules {
    /// 9 x 9 Sudoku: tokens 0 pad, 1 blank, 2..=10 the digits.
    Sudoku,
    /// A square maze of `side` x `side` cells (`crate::maze` tokens: 1 wall, 2 open, 3 S,
    /// 4 G, 5 path).
    Maze { side: usize },
    /// ARC-AGI: grids on a 30 x 30 canvas (`crate::arc::sequence`: 0 pad, 1 EOS, 2..=11 the
    /// colors). No validity check: an ARC answer is right or wrong.
    Arc,
}

/// An answer measured against its question by the task's own check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// A possible answer (Sudoku: a valid grid keeping the givens; Maze: one 4-connected path
    /// from S to G over open cells).
    pub valid: bool,
    /// Valid and as good as an answer can be (Sudoku: the same as valid; Maze: a shortest
    /// path).
    pub optimal: bool,
}

impl Rules {
    /// Sequence length of the task's grids.
    pub fn seq_len(self) -> usize {
        match self {
            Rules::Sudoku => 81,
            Rules::Maze { side } => side * side,
            Rules::Arc => crate::arc::sequence::CANVAS * crate::arc::sequence::CANVAS,
        }
    }

    /// The token ids its data uses (the model's vocabulary must hold them).
    pub fn vocab_size(self) -> usize {
        match self {
            Rules::Sudoku => 11,
            Rules::Maze { .. } => crate::maze::build::VOCAB,
            Rules::Arc => crate::arc::build::VOCAB,
        }
    }

    /// Whether an input cell is one the model must decide (Sudoku: a blank; Maze: an open
    /// cell, path or not; ARC: every cell, the output being a new grid): the cells of the
    /// report's "blank" accuracy.
    pub fn is_blank(self, input: i32) -> bool {
        match self {
            Rules::Sudoku => input == 1,
            Rules::Maze { .. } => input == crate::maze::OPEN as i32,
            Rules::Arc => true,
        }
    }

    /// Whether the report carries the validity figures: a maze answer can be valid and not the
    /// label (another shortest path), so exact match alone undercounts it. A Sudoku's label is
    /// its unique solution, so the report keeps its exact-match figures alone.
    pub fn reports_validity(self) -> bool {
        matches!(self, Rules::Maze { .. })
    }

    /// The task's check of `answer` (argmax tokens) against the question `inputs` (`None`:
    /// the task has none, ARC).
    pub fn verdict(self, inputs: &[i32], answer: &[u8]) -> Option<Verdict> {
        Some(match self {
            Rules::Arc => return None,
            Rules::Sudoku => {
                use crate::sudoku::board::{is_solution_of, is_valid_solution};
                let board = |t: &mut dyn Iterator<Item = i32>| {
                    let mut b = [0u8; 81];
                    for (o, t) in b.iter_mut().zip(t) {
                        *o = if (2..=10).contains(&t) { (t - 1) as u8 } else { 0 };
                    }
                    b
                };
                let q = board(&mut inputs.iter().copied());
                let a = board(&mut answer.iter().map(|&t| t as i32));
                let valid = answer.len() == 81 && is_valid_solution(&a) && is_solution_of(&q, &a);
                Verdict { valid, optimal: valid }
            }
            Rules::Maze { side } => {
                let q: Vec<u8> = inputs.iter().map(|&t| t.clamp(0, 255) as u8).collect();
                let c = crate::maze::check_answer(&q, answer, side);
                Verdict { valid: c.valid, optimal: c.optimal }
            }
        })
    }

    /// A sequence as one line of text: Sudoku digits with `.` elsewhere; maze characters
    /// `# SGo` with `?` for any other token; ARC colors as digits, `|` for EOS and `.` for pad.
    pub fn line(self, tokens: impl IntoIterator<Item = i32>) -> String {
        match self {
            Rules::Sudoku => tokens
                .into_iter()
                .map(|t| if (2..=10).contains(&t) { char::from(b'0' + (t - 1) as u8) } else { '.' })
                .collect(),
            Rules::Maze { .. } => tokens
                .into_iter()
                .map(|t| if (1..=5).contains(&t) { crate::maze::char_of(t as u8) } else { '?' })
                .collect(),
            Rules::Arc => tokens
                .into_iter()
                .map(|t| match t {
                    2..=11 => char::from(b'0' + (t - 2) as u8),
                    1 => '|',
                    _ => '.',
                })
                .collect(),
        }
    }

    /// A sequence as a grid of text, one row per line.
    pub fn grid(self, tokens: impl IntoIterator<Item = i32>) -> String {
        let side = match self {
            Rules::Sudoku => 9,
            Rules::Maze { side } => side,
            Rules::Arc => crate::arc::sequence::CANVAS,
        };
        let line: Vec<char> = self.line(tokens).chars().collect();
        line.chunks(side).map(|r| r.iter().collect::<String>() + "\n").collect()
    }

    /// The model must read this task's sequences: its length and vocabulary.
    pub fn check_model(self, cfg: &ModelConfig) -> Result<()> {
        if self == Rules::Sudoku {
            return cfg.check_sudoku();
        }
        if cfg.seq_len != self.seq_len() || cfg.vocab_size < self.vocab_size() {
            bail!(
                "config fields seq_len {} and vocab_size {}; {} sequences need seq_len {} and at least {} \
                 token ids",
                cfg.seq_len,
                cfg.vocab_size,
                self.name(),
                self.seq_len(),
                self.vocab_size()
            );
        }
        Ok(())
    }

    /// The task's name in reports.
    pub fn name(self) -> String {
        match self {
            Rules::Sudoku => "sudoku".into(),
            Rules::Maze { side } => format!("maze {side}x{side}"),
            Rules::Arc => "arc".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudoku_verdicts_keep_the_givens() {
        let solution: Vec<u8> = crate::sudoku::board::to_tokens(&crate::sudoku::generate::random_grid(
            &mut crate::rng::seeded(3),
        ))
        .to_vec();
        let mut question: Vec<i32> = solution.iter().map(|&t| t as i32).collect();
        question[..40].iter_mut().for_each(|t| *t = 1);
        let r = Rules::Sudoku;
        assert_eq!(r.verdict(&question, &solution), Some(Verdict { valid: true, optimal: true }));
        // a given changed: no longer a solution of this question (nor valid)
        let mut other = solution.clone();
        other.swap(50, 51);
        assert!(!r.verdict(&question, &other).unwrap().valid);
        assert!(r.is_blank(1) && !r.is_blank(2));
        assert_eq!(r.line([1, 2, 10, 0]), ".19.");
    }

    #[test]
    fn maze_verdicts_tell_valid_from_optimal() {
        let t = |rows: &[&str]| -> Vec<u8> {
            rows.iter().flat_map(|r| r.bytes().map(|c| crate::maze::token_of(c).unwrap())).collect()
        };
        let q: Vec<i32> = t(&["S  ", "#  ", "G  "]).iter().map(|&x| x as i32).collect();
        let r = Rules::Maze { side: 3 };
        let v = |a: &[&str]| r.verdict(&q, &t(a)).unwrap();
        assert_eq!(v(&["So ", "#o ", "Go "]), Verdict { valid: true, optimal: true });
        assert_eq!(v(&["Soo", "# o", "Goo"]), Verdict { valid: true, optimal: false });
        assert_eq!(v(&["So ", "#  ", "G  "]), Verdict { valid: false, optimal: false });
        assert_eq!(Rules::Arc.verdict(&q, &t(&["So ", "#o ", "Go "])), None);
        assert_eq!(Rules::Arc.line([0, 1, 2, 11]), ".|09");
        assert!(r.is_blank(2) && !r.is_blank(1));
        assert_eq!(r.grid(q.iter().copied()), "S  \n#  \nG  \n");
        assert_eq!(r.line([0, 5]), "?o");
    }
}
