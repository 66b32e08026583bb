//! Puzzle generator, deterministic from a seed and parallel across cores.
//!
//! Work is split into *chains*; chain `c` draws from a ChaCha8 generator seeded with
//! `item_seed(seed, c)`, produces a fixed number of puzzles, and chains are merged in index
//! order, so the output does not depend on the number of threads.
//!
//! Modes:
//! - `minimal`: a random full grid, then givens removed in random order while the puzzle stays
//!   unique; the result is minimal (no given can be removed).
//! - `easy`: givens removed in random order while singles alone still solve it (rating 0).
//! - `hard`: a local search in the style of tdoku's generator: start from a random minimal
//!   puzzle, repeatedly perturb it (drop 1-3 givens, add givens from one of the competing
//!   solutions until unique again, minimize), move to the perturbed puzzle when its rating is
//!   not lower (or restart after a long stall), and emit every puzzle rated at or above the
//!   threshold.

use super::board::Board;
use super::rating::rate;
use super::solver::{count_solutions, count_solutions_random, solvable_by_singles};
use super::symmetry::canonical;
use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::HashSet;

/// Generation mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Minimal,
    Easy,
    Hard { min_rating: f32 },
}

/// A generated puzzle with its unique solution and rating.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub question: Board,
    pub answer: Board,
    pub rating: f32,
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub count: usize,
    pub mode: Mode,
    pub seed: u64,
    /// Orientations averaged by the rating.
    pub rating_samples: usize,
    /// Hard mode: local-search steps per chain before it gives up.
    pub max_steps_per_chain: usize,
    /// Hard mode: puzzles emitted per chain at most.
    pub per_chain: usize,
}

impl GenConfig {
    pub fn new(count: usize, mode: Mode, seed: u64) -> GenConfig {
        GenConfig { count, mode, seed, rating_samples: 4, max_steps_per_chain: 2000, per_chain: 8 }
    }
}

/// SplitMix64 mix of (seed, index): the seed of item `index`.
pub fn item_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random complete grid.
pub fn random_grid<R: Rng + ?Sized>(rng: &mut R) -> Board {
    count_solutions_random(&[0; 81], 1, rng).ok().and_then(|r| r.solution).unwrap_or([0; 81]) // unreachable: the empty board always has a solution
}

fn shuffled_givens<R: Rng + ?Sized>(p: &Board, rng: &mut R) -> Vec<usize> {
    let mut cells: Vec<usize> = (0..81).filter(|&i| p[i] != 0).collect();
    cells.shuffle(rng);
    cells
}

/// Removes givens in random order while the puzzle stays unique. The input must be unique;
/// the result is minimal.
pub fn minimize<R: Rng + ?Sized>(p: &Board, rng: &mut R) -> Board {
    let mut q = *p;
    for c in shuffled_givens(p, rng) {
        let v = q[c];
        q[c] = 0;
        if !count_solutions(&q, 2).is_ok_and(|r| r.solutions == 1) {
            q[c] = v;
        }
    }
    q
}

/// A random minimal puzzle and its solution.
pub fn minimal_puzzle<R: Rng + ?Sized>(rng: &mut R) -> (Board, Board) {
    let grid = random_grid(rng);
    (minimize(&grid, rng), grid)
}

/// A random puzzle that singles alone solve, with as few givens as that allows in one
/// random removal pass.
pub fn easy_puzzle<R: Rng + ?Sized>(rng: &mut R) -> (Board, Board) {
    let grid = random_grid(rng);
    let mut q = grid;
    for c in shuffled_givens(&grid, rng) {
        q[c] = 0;
        if !solvable_by_singles(&q).unwrap_or(false) {
            q[c] = grid[c];
        }
    }
    (q, grid)
}

/// Local-search move: drop 1-3 givens, add givens from one of two competing solutions until the
/// puzzle is unique again, then minimize. Returns the new puzzle and its solution.
pub fn perturb<R: Rng + ?Sized>(p: &Board, rng: &mut R) -> Option<(Board, Board)> {
    let mut q = *p;
    let givens = shuffled_givens(p, rng);
    let k = rng.gen_range(1..=3usize).min(givens.len());
    for &c in &givens[..k] {
        q[c] = 0;
    }
    let mut guard = 0;
    loop {
        let r = count_solutions_random(&q, 2, rng).ok()?;
        match r.solutions {
            0 => return None,
            1 => {
                let m = minimize(&q, rng);
                return Some((m, r.solution?));
            }
            _ => {
                let (a, b) = (r.solution?, r.second?);
                let diff: Vec<usize> = (0..81).filter(|&i| a[i] != b[i]).collect();
                let c = *diff.choose(rng)?;
                q[c] = if rng.r#gen::<bool>() { a[c] } else { b[c] };
            }
        }
        guard += 1;
        if guard > 81 {
            return None;
        }
    }
}

/// Output of one chain.
fn run_chain(cfg: &GenConfig, chain: u64) -> Vec<Generated> {
    let mut rng = ChaCha8Rng::seed_from_u64(item_seed(cfg.seed, chain));
    let samples = cfg.rating_samples;
    let rated = |q: Board, a: Board| {
        let r = rate(&q, samples).map(|r| r.rating).unwrap_or(0.0);
        Generated { question: q, answer: a, rating: r }
    };
    match cfg.mode {
        Mode::Minimal => {
            let (q, a) = minimal_puzzle(&mut rng);
            vec![rated(q, a)]
        }
        Mode::Easy => {
            let (q, a) = easy_puzzle(&mut rng);
            vec![Generated { question: q, answer: a, rating: 0.0 }]
        }
        Mode::Hard { min_rating } => {
            let mut out: Vec<Generated> = Vec::new();
            let (q, a) = minimal_puzzle(&mut rng);
            let mut cur = rated(q, a);
            if cur.rating >= min_rating {
                out.push(cur.clone());
            }
            let mut stale = 0;
            for _ in 0..cfg.max_steps_per_chain {
                if out.len() >= cfg.per_chain {
                    break;
                }
                let Some((q, a)) = perturb(&cur.question, &mut rng) else {
                    continue;
                };
                let next = rated(q, a);
                if next.rating >= min_rating && !out.iter().any(|g| g.question == next.question) {
                    out.push(next.clone());
                }
                if next.rating >= cur.rating {
                    cur = next;
                    stale = 0;
                } else {
                    stale += 1;
                    if stale > 60 {
                        let (q, a) = minimal_puzzle(&mut rng);
                        cur = rated(q, a);
                        stale = 0;
                    }
                }
            }
            out.truncate(cfg.per_chain);
            out
        }
    }
}

/// Chains run per parallel batch (fixed, so the output does not depend on the thread count).
pub const BATCH_CHAINS: u64 = 32;

/// Generates `cfg.count` distinct puzzles (distinct up to symmetry). `progress(done)` is called
/// after each batch. Hard mode may stop short if `max_batches` pass without filling the count.
pub fn generate(cfg: &GenConfig, max_batches: usize, progress: &(dyn Fn(usize) + Sync)) -> Vec<Generated> {
    let mut out = Vec::with_capacity(cfg.count);
    let mut seen: HashSet<Board> = HashSet::new();
    let mut chain = 0u64;
    let mut batches = 0;
    while out.len() < cfg.count && batches < max_batches {
        let results: Vec<Vec<(Generated, Board)>> = (chain..chain + BATCH_CHAINS)
            .into_par_iter()
            .map(|c| {
                run_chain(cfg, c)
                    .into_iter()
                    .map(|g| {
                        let k = canonical(&g.question);
                        (g, k)
                    })
                    .collect()
            })
            .collect();
        chain += BATCH_CHAINS;
        batches += 1;
        for (g, key) in results.into_iter().flatten() {
            if out.len() < cfg.count && seen.insert(key) {
                out.push(g);
            }
        }
        progress(out.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sudoku::board::{count_givens, is_solution_of};

    #[test]
    fn minimal_puzzles_are_unique_and_minimal() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..5 {
            let (q, a) = minimal_puzzle(&mut rng);
            assert!(is_solution_of(&q, &a));
            let r = count_solutions(&q, 2).unwrap();
            assert_eq!(r.solutions, 1);
            for c in 0..81 {
                if q[c] != 0 {
                    let mut x = q;
                    x[c] = 0;
                    assert_eq!(count_solutions(&x, 2).unwrap().solutions, 2);
                }
            }
            assert!(count_givens(&q) < 40);
        }
    }

    #[test]
    fn easy_puzzles_need_no_guess() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (q, a) = easy_puzzle(&mut rng);
        assert!(is_solution_of(&q, &a));
        assert!(solvable_by_singles(&q).unwrap());
        assert!(count_givens(&q) < 45);
    }
}
