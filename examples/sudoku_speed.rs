//! Quick one-thread solver timing: `cargo run --release --example sudoku_speed -- FILE [MAX] [REPS]`.
use hrm::sudoku::board::parse_board;
use hrm::sudoku::solver::count_solutions;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("FILE");
    let max: usize = args.get(2).map_or(usize::MAX, |s| s.parse().unwrap());
    let reps: usize = args.get(3).map_or(3, |s| s.parse().unwrap());
    let text = std::fs::read_to_string(path).unwrap();
    let ps: Vec<_> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| parse_board(l).ok())
        .take(max)
        .collect();
    for limit in [1usize, 2] {
        let mut best = f64::MAX;
        let mut guesses = 0u64;
        let mut sols = 0usize;
        for _ in 0..reps {
            let t = Instant::now();
            guesses = 0;
            sols = 0;
            for p in &ps {
                let r = count_solutions(p, limit).unwrap();
                guesses += r.guesses;
                sols += r.solutions;
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "limit {limit}: {} puzzles, {:.0}/s, mean guesses {:.2}, solutions {sols}",
            ps.len(),
            ps.len() as f64 / best,
            guesses as f64 / ps.len() as f64
        );
    }
}
