//! Maze-Hard generation (TASKS_SPEC section 2: Searchformer's instance distribution, HRM's
//! hardness filter, the project's labeling rule).
//!
//! One maze per wall layout:
//! 1. walls: a uniform number of cells in [3/10, 5/10] of the grid (270-450 of 900), chosen
//!    uniformly, independently of each other (no carving);
//! 2. start: a uniform open cell; goal: uniform among the open cells more than `min_moves - 1`
//!    moves away from the start (Maze-Hard: more than 110). A start without any such cell is
//!    redrawn, up to `starts_per_layout` times (Searchformer draws 100 (start, goal) pairs per
//!    layout), then the layout is;
//! 3. label: [`super::label`] (breadth-first distance from G, then from S always the first
//!    neighbour in the order up, down, left, right one step closer).
//!
//! Drawing the goal among the hard cells of one breadth-first search (rather than drawing pairs
//! until one is hard, of which only about 1 in 30,000 is) makes the set in seconds; it
//! weighs starts with few hard goals a little more than uniform pairs would.
//!
//! Maze `i` of a seed comes from its own random stream (seed, i), so a set is the same whatever
//! the thread count, and the train and test splits (streams 0..train and train..train+test)
//! never share a layout.

use super::{FAR, GOAL, OPEN, START, WALL, bfs_into, label, shortest_path_count};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct MazeGenConfig {
    pub side: usize,
    /// A maze's shortest path has at least this many moves (Maze-Hard: 111, "longer than 110").
    pub min_moves: u32,
    /// Start cells tried per wall layout before the next layout.
    pub starts_per_layout: usize,
    /// Layouts tried per maze before giving up (a bound for impossible settings).
    pub max_layouts: usize,
}

impl MazeGenConfig {
    /// Maze-Hard: 30 x 30, shortest paths longer than 110 moves.
    pub fn hard() -> Self {
        MazeGenConfig { side: super::SIDE, min_moves: 111, starts_per_layout: 100, max_layouts: 1_000_000 }
    }
    /// The range of wall counts: 3/10 to 5/10 of the cells (Searchformer's `n // 10 * 3 ..= n // 10 * 5`).
    pub fn wall_range(&self) -> (usize, usize) {
        let n = self.side * self.side;
        (n / 10 * 3, n / 10 * 5)
    }
}

/// One generated maze.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedMaze {
    /// question tokens (walls, open cells, S, G)
    pub question: Vec<u8>,
    /// the answer: the question with the labeled shortest path's cells set to `o`
    pub answer: Vec<u8>,
    /// moves of the shortest path
    pub moves: u32,
    /// how many shortest paths there are (the label is one of them)
    pub shortest_paths: f64,
    /// wall layouts drawn for this maze (1 = the first)
    pub layouts: usize,
}

/// The random stream of maze `index` of `seed`.
fn stream(seed: u64, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_7a65_6861_7264);
    r.set_stream(index);
    r
}

/// Maze `index` of `seed`, or `None` if `max_layouts` layouts gave none.
pub fn generate_one(cfg: &MazeGenConfig, seed: u64, index: u64) -> Option<GeneratedMaze> {
    let mut rng = stream(seed, index);
    let n = cfg.side * cfg.side;
    let (wmin, wmax) = cfg.wall_range();
    let mut cells: Vec<usize> = (0..n).collect();
    let mut grid = vec![OPEN; n];
    let (mut dist, mut queue) = (vec![FAR; n], Vec::with_capacity(n));
    let mut hard = Vec::with_capacity(n);
    for layout in 1..=cfg.max_layouts {
        cells.shuffle(&mut rng);
        let walls = rng.gen_range(wmin..=wmax);
        grid.fill(OPEN);
        for &c in &cells[..walls] {
            grid[c] = WALL;
        }
        let open = &cells[walls..];
        if open.len() < 2 {
            continue;
        }
        for _ in 0..cfg.starts_per_layout {
            let s = open[rng.gen_range(0..open.len())];
            bfs_into(&grid, cfg.side, s, &mut dist, &mut queue);
            hard.clear();
            // in breadth-first order: a fixed order for the draw below
            hard.extend(queue.iter().map(|&c| c as usize).filter(|&c| dist[c] >= cfg.min_moves));
            if hard.is_empty() {
                continue;
            }
            let g = hard[rng.gen_range(0..hard.len())];
            let mut question = grid.clone();
            question[s] = START;
            question[g] = GOAL;
            let answer = label(&question, cfg.side).expect("G was reached from S");
            return Some(GeneratedMaze {
                moves: dist[g],
                shortest_paths: shortest_path_count(&question, cfg.side, s, g),
                question,
                answer,
                layouts: layout,
            });
        }
    }
    None
}

/// Mazes `first..first + count` of `seed`, in parallel; `progress(done)` now and then. An
/// error names the first maze that found no layout.
pub fn generate(
    cfg: &MazeGenConfig,
    seed: u64,
    first: u64,
    count: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> anyhow::Result<Vec<GeneratedMaze>> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let out: Vec<Option<GeneratedMaze>> = (0..count as u64)
        .into_par_iter()
        .map(|k| {
            let m = generate_one(cfg, seed, first + k);
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if d.is_multiple_of(16) || d == count {
                progress(d);
            }
            m
        })
        .collect();
    out.into_iter()
        .enumerate()
        .map(|(k, m)| {
            m.ok_or_else(|| {
                anyhow::anyhow!(
                    "maze {} of seed {seed}: no {}x{} layout in {} had a shortest path of {} moves or more",
                    first + k as u64,
                    cfg.side,
                    cfg.side,
                    cfg.max_layouts,
                    cfg.min_moves
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maze::{PATH, check_answer, endpoints};

    fn small() -> MazeGenConfig {
        MazeGenConfig { side: 10, min_moves: 20, starts_per_layout: 100, max_layouts: 10_000 }
    }

    #[test]
    fn every_maze_is_valid_hard_labeled_by_the_rule_and_reproducible() {
        let cfg = small();
        let mazes = generate(&cfg, 7, 0, 40, &|_| {}).unwrap();
        let (wmin, wmax) = cfg.wall_range();
        for (i, m) in mazes.iter().enumerate() {
            let (s, g) = endpoints(&m.question).expect("one S and one G");
            let walls = m.question.iter().filter(|&&t| t == WALL).count();
            assert!((wmin..=wmax).contains(&walls), "maze {i}: {walls} walls");
            assert!(m.moves >= cfg.min_moves, "maze {i}: {} moves", m.moves);
            let c = check_answer(&m.question, &m.answer, cfg.side);
            assert_eq!((c.valid, c.optimal, c.moves), (true, true, Some(m.moves)), "maze {i}");
            assert_eq!(m.answer.iter().filter(|&&t| t == PATH).count() as u32, m.moves - 1);
            assert_eq!(label(&m.question, cfg.side).unwrap(), m.answer, "maze {i}: the fixed rule");
            assert!(m.shortest_paths >= 1.0);
            assert!(s != g);
        }
        // the same seed gives the same mazes, whatever the split of the work
        let again: Vec<_> = (0..40).map(|k| generate_one(&cfg, 7, k).unwrap()).collect();
        assert_eq!(again, mazes);
        assert_ne!(generate(&cfg, 8, 0, 40, &|_| {}).unwrap(), mazes, "another seed, other mazes");
        // distinct layouts
        let layouts: std::collections::HashSet<Vec<bool>> =
            mazes.iter().map(|m| m.question.iter().map(|&t| t == WALL).collect()).collect();
        assert_eq!(layouts.len(), mazes.len());
        // the 8 dihedral transforms keep every label a valid shortest path, and invert
        for m in &mazes[..8] {
            for t in 0..8 {
                let (q, a) = (
                    crate::maze::dihedral(&m.question, cfg.side, t),
                    crate::maze::dihedral(&m.answer, cfg.side, t),
                );
                let c = check_answer(&q, &a, cfg.side);
                assert_eq!((c.valid, c.optimal, c.moves), (true, true, Some(m.moves)), "transform {t}");
                let back = crate::grid::inverse_dihedral(&q, cfg.side, cfg.side, t).0;
                assert_eq!(back, m.question, "transform {t} inverted");
            }
        }
    }

    #[test]
    fn an_impossible_hardness_is_an_error_naming_the_maze() {
        let cfg = MazeGenConfig { side: 4, min_moves: 50, starts_per_layout: 3, max_layouts: 20 };
        let e = generate(&cfg, 1, 5, 2, &|_| {}).unwrap_err().to_string();
        assert!(e.contains("maze 5 of seed 1") && e.contains("50 moves"), "{e}");
    }
}
