//! Glue between the data side and training/evaluation: the training data of a run (a Sudoku
//! dataset, or a split in the reference's layout) as a `PuzzleSource`, puzzle sets as
//! evaluation examples, and the demo's k-blank puzzles.

use super::sampler::{PuzzleSource, VecSource};
use crate::dataset::Split;
use crate::infer::eval::Example;
use crate::sudoku::board::{Board, to_tokens};
use crate::sudoku::dataset::{Dataset, hint_twin};
use crate::sudoku::formats::Puzzle;
use crate::sudoku::generate::random_grid;
use crate::sudoku::solver::count_solutions;
use crate::sudoku::symmetry::Transform;
use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;
use std::path::Path;

/// The training examples of a run: a Sudoku dataset from `hrm data build` (`data.bin`), or a
/// split in the reference's layout (`crate::dataset`; `hrm data maze build`, or a reference
/// builder's output).
pub enum TrainData {
    Sudoku(Dataset),
    /// one example per puzzle, so group g's examples are its puzzles; with `dataset.json`'s
    /// vocabulary
    Reference(Split, usize),
}

impl TrainData {
    /// Loads a split folder (or a Sudoku `data.bin`). The reference's layout is taken where every
    /// puzzle is one example with the blank identifier (Maze): the sampler then picks a
    /// group's puzzles uniformly, as the reference's does. Puzzles of several examples and
    /// puzzle identifiers (ARC) are refused, saying so.
    pub fn load(path: &Path) -> anyhow::Result<TrainData> {
        if !path.join(crate::dataset::META_FILE).exists() {
            return Ok(TrainData::Sudoku(Dataset::load(path)?));
        }
        let (split, meta) = Split::read(path)?;
        let p = split.num_puzzles();
        if let Some(i) = (0..p).find(|&i| split.puzzle_indices[i + 1] - split.puzzle_indices[i] != 1) {
            bail!(
                "{}: puzzle {i} has {} examples; training reads puzzles of one example (Maze) so \
                 far, not ARC's",
                path.display(),
                split.puzzle_indices[i + 1] - split.puzzle_indices[i]
            );
        }
        if let Some(id) = split.puzzle_identifiers.iter().find(|&&id| id != 0) {
            bail!(
                "{}: puzzle identifier {id}; training reads the blank identifier 0 (Maze) so far",
                path.display()
            );
        }
        Ok(TrainData::Reference(split, meta.vocab_size))
    }

    pub fn num_groups(&self) -> usize {
        match self {
            TrainData::Sudoku(d) => d.num_groups(),
            TrainData::Reference(s, _) => s.num_groups(),
        }
    }

    /// Examples.
    pub fn len(&self) -> usize {
        match self {
            TrainData::Sudoku(d) => d.len(),
            TrainData::Reference(s, _) => s.num_examples(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data's identity, recorded by a run so that a resume notices other data
    /// ([`Dataset::content_hash`], [`Split::content_hash`]).
    pub fn content_hash(&self) -> String {
        match self {
            TrainData::Sudoku(d) => d.content_hash(),
            TrainData::Reference(s, _) => s.content_hash(),
        }
    }

    /// `--eval` sets are Sudoku puzzle files: they go with Sudoku data only (evaluation on
    /// other tasks is not wired into training yet).
    pub fn check_eval_sets(&self, eval: &[std::path::PathBuf]) -> anyhow::Result<()> {
        if let (TrainData::Reference(..), Some(e)) = (self, eval.first()) {
            bail!(
                "--eval {}: evaluation sets are Sudoku puzzle files, and this run trains on another \
                 task's data; drop --eval (evaluating Maze models is not wired into training yet)",
                e.display()
            );
        }
        Ok(())
    }

    /// The model must read this data: its sequence length and vocabulary.
    pub fn check_model(&self, cfg: &crate::config::ModelConfig, source: &str) -> anyhow::Result<()> {
        match self {
            TrainData::Sudoku(_) => {
                cfg.check_sudoku().with_context(|| format!("{source}: cannot train on Sudoku data"))
            }
            TrainData::Reference(s, vocab) => {
                let vocab = *vocab;
                // (`Split::read` checked every token id against this vocabulary)
                if cfg.seq_len != s.seq_len || cfg.vocab_size < vocab {
                    bail!(
                        "{source}: seq_len {} and vocab_size {}, the data has sequences of {} and token ids \
                         below {vocab} (a Maze-Hard set: --preset maze or trm-maze)",
                        cfg.seq_len,
                        cfg.vocab_size,
                        s.seq_len
                    );
                }
                Ok(())
            }
        }
    }
}

impl PuzzleSource for TrainData {
    fn num_groups(&self) -> usize {
        TrainData::num_groups(self)
    }
    fn group(&self, g: usize) -> Range<usize> {
        match self {
            TrainData::Sudoku(d) => d.group(g),
            // (one example per puzzle: puzzle p is example p)
            TrainData::Reference(s, _) => s.group_indices[g] as usize..s.group_indices[g + 1] as usize,
        }
    }
    fn example(&self, i: usize) -> (&[u8], &[u8]) {
        match self {
            TrainData::Sudoku(d) => (d.inputs(i), d.labels(i)),
            TrainData::Reference(s, _) => s.example(i),
        }
    }
}

impl PuzzleSource for Dataset {
    fn num_groups(&self) -> usize {
        Dataset::num_groups(self)
    }
    fn group(&self, g: usize) -> Range<usize> {
        Dataset::group(self, g)
    }
    fn example(&self, i: usize) -> (&[u8], &[u8]) {
        (self.inputs(i), self.labels(i))
    }
}

/// A puzzle with a known answer as an evaluation example (token ids).
pub fn example_of(question: &Board, answer: &Board) -> Example {
    Example {
        inputs: to_tokens(question).iter().map(|&t| t as i32).collect(),
        labels: to_tokens(answer).iter().map(|&t| t as i32).collect(),
    }
}

pub fn examples_of(puzzles: &[Puzzle]) -> Vec<Example> {
    puzzles.iter().map(|p| example_of(&p.question, &p.answer)).collect()
}

/// A random solved grid with `blanks` random cells emptied, kept only if the solution is
/// unique (so the answer is the grid). Returns (question, answer).
pub fn blanked_puzzle<R: Rng + ?Sized>(rng: &mut R, blanks: usize) -> (Board, Board) {
    loop {
        let grid = random_grid(rng);
        let mut cells: Vec<usize> = (0..81).collect();
        cells.shuffle(rng);
        let mut q = grid;
        for &c in &cells[..blanks.min(81)] {
            q[c] = 0;
        }
        if matches!(count_solutions(&q, 2), Ok(r) if r.is_unique()) {
            return (q, grid);
        }
    }
}

/// `n` unique puzzles with a blank count drawn uniformly from `blanks`.
pub fn blanked_puzzles(n: usize, blanks: Range<usize>, seed: u64) -> Vec<(Board, Board)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let k = rng.gen_range(blanks.clone());
            blanked_puzzle(&mut rng, k)
        })
        .collect()
}

/// HRM's recipe in memory: every puzzle forms a group with itself and `augment` random
/// symmetry transforms of it (the same transform on question and answer).
pub fn augmented_source(puzzles: &[(Board, Board)], augment: usize, seed: u64) -> VecSource {
    augmented_source_with_hints(puzzles, augment, false, seed)
}

/// [`augmented_source`] with Augmented HRM's hint twins when `hints`: every example is
/// followed, in its group, by a copy with n random blanks filled from the solution, n uniform
/// in [1, blanks - 1] (`hrm data build --hints`'s construction, `dataset::hint_twin`). Without
/// hints the examples are exactly `augmented_source`'s.
pub fn augmented_source_with_hints(
    puzzles: &[(Board, Board)],
    augment: usize,
    hints: bool,
    seed: u64,
) -> VecSource {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut src = VecSource { seq_len: 81, inputs: Vec::new(), labels: Vec::new(), group_offsets: vec![0] };
    let per_group = (1 + augment) * (1 + hints as usize);
    for (q, a) in puzzles {
        for k in 0..=augment {
            let (q, a) = if k == 0 {
                (*q, *a)
            } else {
                let t = Transform::random(&mut rng);
                (t.apply(q), t.apply(a))
            };
            src.inputs.extend(to_tokens(&q));
            src.labels.extend(to_tokens(&a));
            if hints {
                src.inputs.extend(to_tokens(&hint_twin(&q, &a, &mut rng)));
                src.labels.extend(to_tokens(&a));
            }
        }
        src.group_offsets.push(src.group_offsets.last().unwrap() + per_group);
    }
    src
}
