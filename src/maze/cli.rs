//! `hrm data maze ...`: generate Maze-Hard sets and check maze CSVs.

use super::formats::{MazeRow, read_csv, write_csv};
use super::generate::{MazeGenConfig, generate};
use super::{check_answer, endpoints, label, shortest_path_count};
use crate::fsutil::check_output_dir;
use anyhow::{Result, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Subcommand)]
pub enum MazeCommand {
    /// Generate a Maze-Hard set (30 x 30, shortest path longer than 110 moves; TASKS_SPEC
    /// section 2) as OUT/train.csv and OUT/test.csv in the official CSV layout, deterministic
    /// from --seed; one maze per wall layout, so the splits share none.
    Generate {
        #[arg(long, default_value_t = 1000, value_parser = crate::commands::args::positive_usize)]
        train: usize,
        #[arg(long, default_value_t = 1000)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Grid side (Maze-Hard: 30; smaller for quick experiments).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(3..=64))]
        side: u16,
        /// Fewest moves of a maze's shortest path (Maze-Hard: 111, i.e. longer than 110).
        #[arg(long, default_value_t = 111)]
        min_moves: u32,
        /// Output directory (created; must not hold a train.csv or test.csv).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Check maze CSVs (ours or the published Maze-Hard files): every label a valid path from S
    /// to G avoiding walls and a shortest one; prints the sizes, wall fractions, path lengths,
    /// the number of shortest paths and how many labels follow this project's labeling rule.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Build a training set from maze CSVs (ours or the published Maze-Hard files) in the
    /// reference's dataset layout: OUT/train and OUT/test (all__inputs.npy, all__labels.npy,
    /// the puzzle and group indices, dataset.json) and OUT/identifiers.json. One group per
    /// maze; --aug puts each training maze's 8 dihedral transforms in its group.
    Build {
        /// Training mazes (CSV `source,q,a,rating`).
        #[arg(long)]
        train: PathBuf,
        /// Test mazes (never augmented).
        #[arg(long)]
        test: PathBuf,
        /// The 8 dihedral transforms of every training maze (TRM's paper; HRM's default is none).
        #[arg(long)]
        aug: bool,
        /// Output directory (created; its train/ and test/ must not exist).
        #[arg(short, long)]
        out: PathBuf,
    },
}

/// Summary figures of a set of mazes.
fn describe(rows: &[MazeRow]) -> String {
    if rows.is_empty() {
        return "no mazes".to_string();
    }
    let side = rows[0].side;
    let mut moves: Vec<u32> = Vec::new();
    let (mut valid, mut optimal, mut ruled) = (0, 0, 0);
    let mut walls = 0.0;
    let mut paths: Vec<f64> = Vec::new();
    for r in rows {
        let c = check_answer(&r.question, &r.answer, r.side);
        valid += c.valid as usize;
        optimal += c.optimal as usize;
        ruled += (label(&r.question, r.side).as_deref() == Some(&r.answer[..])) as usize;
        walls += r.question.iter().filter(|&&t| t == super::WALL).count() as f64 / r.question.len() as f64;
        if let Some((s, g)) = endpoints(&r.question) {
            let d = super::bfs(&r.question, r.side, s)[g];
            if d != super::FAR {
                moves.push(d);
                paths.push(shortest_path_count(&r.question, r.side, s, g));
            }
        }
    }
    moves.sort_unstable();
    paths.sort_by(f64::total_cmp);
    let n = rows.len();
    let med = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    format!(
        "{n} mazes of {side} x {side}; walls {:.1}% on average; shortest path {}..{} moves (median {}), \
         {} unreachable; labels valid {valid}/{n}, shortest {optimal}/{n}, by this project's rule \
         {ruled}/{n}; shortest paths per maze: median {:.3e}, fewest {:.0}",
        100.0 * walls / n as f64,
        moves.first().copied().unwrap_or(0),
        moves.last().copied().unwrap_or(0),
        moves.get(moves.len() / 2).copied().unwrap_or(0),
        n - moves.len(),
        med(&paths),
        paths.first().copied().unwrap_or(0.0),
    )
}

/// Runs one `hrm data maze` command.
pub fn run(cmd: MazeCommand) -> Result<()> {
    match cmd {
        MazeCommand::Generate { train, test, seed, side, min_moves, out } => {
            let side = side as usize;
            let (train_csv, test_csv) = (out.join("train.csv"), out.join("test.csv"));
            check_output_dir("--out", &out, &["train.csv", "test.csv"], &[])?;
            for p in [&train_csv, &test_csv] {
                if p.exists() {
                    bail!("{} exists: choose another --out (nothing was written)", p.display());
                }
            }
            let cfg = MazeGenConfig { side, min_moves, ..MazeGenConfig::hard() };
            let t = Instant::now();
            let total = train + test;
            let progress = |d: usize| eprint!("\rgenerating: {d}/{total} mazes");
            let mazes = generate(&cfg, seed, 0, total, &progress)?;
            eprintln!();
            let secs = t.elapsed().as_secs_f64();
            let rows: Vec<MazeRow> = mazes
                .iter()
                .enumerate()
                .map(|(i, m)| MazeRow {
                    source: format!("hrm-maze-s{seed}-{i}-paths{:.0}", m.shortest_paths),
                    question: m.question.clone(),
                    answer: m.answer.clone(),
                    rating: m.moves.to_string(),
                    side,
                })
                .collect();
            std::fs::create_dir_all(&out)?;
            write_csv(&train_csv, &rows[..train])?;
            write_csv(&test_csv, &rows[train..])?;
            let layouts: usize = mazes.iter().map(|m| m.layouts).sum();
            eprintln!(
                "generated {total} mazes in {secs:.1}s ({layouts} wall layouts drawn) -> {}, {}",
                train_csv.display(),
                test_csv.display()
            );
            println!("train: {}", describe(&rows[..train]));
            println!("test:  {}", describe(&rows[train..]));
            Ok(())
        }
        MazeCommand::Check { files } => {
            let mut bad = 0;
            for f in &files {
                let rows = read_csv(f)?;
                println!("{}: {}", f.display(), describe(&rows));
                bad += rows.iter().filter(|r| !check_answer(&r.question, &r.answer, r.side).optimal).count();
            }
            if bad > 0 {
                bail!("{bad} maze(s) whose label is not a valid shortest path");
            }
            Ok(())
        }
        MazeCommand::Build { train, test, aug, out } => {
            let inputs = [("--train", train.as_path()), ("--test", test.as_path())];
            check_output_dir("--out", &out, &["train", "test", "identifiers.json"], &inputs)?;
            for p in [out.join("train"), out.join("test")] {
                if p.exists() {
                    bail!("{} exists: choose another --out (nothing was written)", p.display());
                }
            }
            let (train_rows, test_rows) = (read_csv(&train)?, read_csv(&test)?);
            for (rows, f) in [(&train_rows, &train), (&test_rows, &test)] {
                if let Some(i) = rows.iter().position(|r| !check_answer(&r.question, &r.answer, r.side).valid)
                {
                    bail!("{}: maze {} has a label that is not a valid path from S to G", f.display(), i + 1);
                }
            }
            let tr = super::build::split_of(&train_rows, aug, &train.display().to_string())?;
            let te = super::build::split_of(&test_rows, false, &test.display().to_string())?;
            super::build::write(&out, &tr, &te)?;
            println!(
                "train: {} mazes -> {} examples in {} groups{}; test: {} mazes; seq_len {} -> {}",
                train_rows.len(),
                tr.num_examples(),
                tr.num_groups(),
                if aug { " (8 dihedral transforms each)" } else { "" },
                te.num_examples(),
                tr.seq_len,
                out.display()
            );
            Ok(())
        }
    }
}
