//! Glue between the Sudoku data side and training/evaluation: the binary dataset as a
//! `PuzzleSource`, puzzle sets as evaluation examples, and the demo's k-blank puzzles.

use super::sampler::{PuzzleSource, VecSource};
use crate::infer::eval::Example;
use crate::sudoku::board::{Board, to_tokens};
use crate::sudoku::dataset::{Dataset, hint_twin};
use crate::sudoku::formats::Puzzle;
use crate::sudoku::generate::random_grid;
use crate::sudoku::solver::count_solutions;
use crate::sudoku::symmetry::Transform;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

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
