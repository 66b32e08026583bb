//! Solver throughput on the shared real puzzle sets (puzzles/s via criterion throughput).
//!
//! `cargo bench --bench sudoku`. Sets come from `../shared/data/sudoku/`; a missing set is
//! skipped with a message. Large sets use a fixed prefix so one iteration stays short.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrm::sudoku::board::{Board, parse_board};
use hrm::sudoku::rating::rate;
use hrm::sudoku::solver::count_solutions;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

fn load(name: &str, max: usize) -> Option<Vec<Board>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/sudoku")
        .join(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping {}: not found", path.display());
        return None;
    };
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| parse_board(l).ok())
            .take(max)
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let sets = [
        ("top1465", "magictour_top1465.txt", usize::MAX),
        ("11plus_first4000", "forum_hardest_1905_11plus_a.txt", 4000),
        ("17clue_first10000", "17_clue.txt", 10_000),
    ];
    for (label, file, max) in sets {
        let Some(puzzles) = load(file, max) else {
            continue;
        };
        let mut g = c.benchmark_group(format!("sudoku_{label}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .warm_up_time(Duration::from_secs(1));
        g.throughput(Throughput::Elements(puzzles.len() as u64));
        g.bench_function("solve", |b| {
            b.iter(|| {
                for p in &puzzles {
                    black_box(count_solutions(black_box(p), 1).unwrap());
                }
            })
        });
        g.bench_function("unique", |b| {
            b.iter(|| {
                for p in &puzzles {
                    black_box(count_solutions(black_box(p), 2).unwrap());
                }
            })
        });
        if label == "top1465" {
            g.bench_function("rate8", |b| {
                b.iter(|| {
                    for p in &puzzles {
                        black_box(rate(black_box(p), 8).unwrap());
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
