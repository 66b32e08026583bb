//! Difficulty rating: the guess count of the propagation + search solver, averaged over random
//! symmetry transforms of the puzzle so that it does not depend on orientation.
//!
//! Definition: `rating(p) = mean over k = 0..samples of guesses(T_k(p))`, where `guesses` is the
//! number of branch points of [`count_solutions`](super::solver::count_solutions) with a limit of
//! 2 (the full uniqueness search: singles to a fixpoint, then branch on the cell with fewest
//! candidates), `T_0` is the identity and `T_1..` are random `shuffle_sudoku` transforms drawn
//! from a ChaCha8 generator seeded with [`RATING_SEED`]. Sudoku-Extreme's rating is the same
//! kind of number (tdoku's guesses); tdoku propagates more per node, so its counts are lower.
//! A rating of 0 means singles alone solve the puzzle.

use super::board::Board;
use super::solver::{SolveError, count_solutions};
use super::symmetry::Transform;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Default number of orientations averaged.
pub const DEFAULT_SAMPLES: usize = 8;
/// Fixed seed of the orientation draws, so a rating is a pure function of the puzzle.
pub const RATING_SEED: u64 = 0x5EED_5D0C_u64;

/// Result of rating one puzzle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rated {
    /// Mean guesses over the orientations.
    pub rating: f32,
    /// Number of solutions (capped at 2).
    pub solutions: usize,
    /// The solution, when unique.
    pub solution: Option<Board>,
}

/// Rates a puzzle over `samples` orientations (at least 1). Puzzles with no or several
/// solutions are rated on the identity orientation only and reported as such.
pub fn rate(b: &Board, samples: usize) -> Result<Rated, SolveError> {
    let first = count_solutions(b, 2)?;
    if first.solutions != 1 {
        return Ok(Rated { rating: first.guesses as f32, solutions: first.solutions, solution: None });
    }
    let mut total = first.guesses;
    let samples = samples.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(RATING_SEED);
    for _ in 1..samples {
        let t = Transform::random(&mut rng);
        total += count_solutions(&t.apply(b), 2)?.guesses;
    }
    Ok(Rated { rating: total as f32 / samples as f32, solutions: 1, solution: first.solution })
}

/// Summary statistics of a set of ratings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RatingStats {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// 10th and 90th percentiles.
    pub p10: f64,
    pub p90: f64,
}

impl RatingStats {
    pub fn from_ratings(r: &[f32]) -> RatingStats {
        if r.is_empty() {
            return RatingStats::default();
        }
        let mut v: Vec<f64> = r.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let pct = |p: f64| v[((n - 1) as f64 * p).round() as usize];
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        RatingStats {
            count: n,
            mean: v.iter().sum::<f64>() / n as f64,
            median,
            min: v[0],
            max: v[n - 1],
            p10: pct(0.1),
            p90: pct(0.9),
        }
    }
}

impl std::fmt::Display for RatingStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} mean={:.2} median={:.2} min={:.2} p10={:.2} p90={:.2} max={:.2}",
            self.count, self.mean, self.median, self.min, self.p10, self.p90, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sudoku::board::parse_board;

    #[test]
    fn rating_is_orientation_stable() {
        let p =
            parse_board("4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........")
                .unwrap();
        let r = rate(&p, 32).unwrap();
        assert_eq!(r.solutions, 1);
        assert!(r.rating > 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let t = Transform::random(&mut rng);
        let r2 = rate(&t.apply(&p), 32).unwrap();
        // Averages over 32 orientations stay within a factor of 2 of each other.
        assert!(r2.rating < 2.0 * r.rating && r.rating < 2.0 * r2.rating, "{r:?} {r2:?}");
    }

    #[test]
    fn stats() {
        let s = RatingStats::from_ratings(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mean, 4.0);
        assert_eq!(s.max, 10.0);
    }
}
