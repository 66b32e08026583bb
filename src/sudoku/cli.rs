//! `hrm data ...`: generate, import, build and inspect Sudoku data.

use super::dataset::{BuildConfig, Dataset, SPLITS, build, canonical_set, read_puzzles};
use super::formats::{ImportOptions, Puzzle, import, total_size, write_csv};
use super::generate::{GenConfig, Mode, generate};
use super::rating::{DEFAULT_SAMPLES, RatingStats};
use crate::fsutil::{Input, check_output, check_output_dir};
use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenMode {
    /// Random minimal unique puzzles.
    Minimal,
    /// Puzzles solvable by singles alone (rating 0).
    Easy,
    /// Local search for puzzles rated at least --min-rating.
    Hard,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate puzzles (deterministic from --seed) into a Sudoku-Extreme CSV.
    Generate {
        /// Number of distinct puzzles (distinct up to symmetry).
        #[arg(short = 'n', long, default_value_t = 1000, value_parser = crate::commands::args::positive_usize)]
        count: usize,
        #[arg(long, value_enum, default_value_t = GenMode::Hard)]
        mode: GenMode,
        /// Hard mode: keep puzzles with rating >= this.
        #[arg(long, default_value_t = 48.0, allow_negative_numbers = true, value_parser = crate::commands::args::rating)]
        min_rating: f32,
        /// Hard mode: keep puzzles with rating <= this (and do not climb above it).
        #[arg(long, default_value_t = 320.0, allow_negative_numbers = true, value_parser = crate::commands::args::rating)]
        max_rating: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Orientations averaged by the rating of generated puzzles.
        #[arg(long, default_value_t = DEFAULT_SAMPLES, value_parser = crate::commands::args::positive_usize)]
        rating_samples: usize,
        /// Give up after this many batches of 32 chains (hard mode).
        #[arg(long, default_value_t = 100_000, value_parser = crate::commands::args::positive_usize)]
        max_batches: usize,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Solve, check and rate puzzle files (CSV or one-per-line) into a Sudoku-Extreme CSV.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
        /// Report and skip bad lines instead of failing.
        #[arg(long)]
        skip_invalid: bool,
        #[arg(long, default_value_t = DEFAULT_SAMPLES, value_parser = crate::commands::args::positive_usize)]
        rating_samples: usize,
    },
    /// Build a training set (HRM recipe + optional hint twins) as data.bin + manifest.json.
    Build {
        /// Puzzle files (CSV with answers, or one-per-line).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        train: usize,
        #[arg(long, default_value_t = 0)]
        test: usize,
        /// Augmentations per training puzzle.
        #[arg(long, default_value_t = 1000)]
        augment: usize,
        /// Augmentations per test puzzle.
        #[arg(long, default_value_t = 0)]
        test_augment: usize,
        /// Add an Augmented-HRM hint twin to every training example.
        #[arg(long)]
        hints: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Evaluation sets to keep disjoint from (up to symmetry).
        #[arg(long, num_args = 1..)]
        exclude: Vec<PathBuf>,
    },
    /// ARC-AGI: check task folders (`hrm data arc --help`).
    Arc {
        #[command(subcommand)]
        cmd: crate::arc::cli::ArcCommand,
    },
    /// Maze-Hard: generate sets, check maze CSVs (`hrm data maze --help`).
    Maze {
        #[command(subcommand)]
        cmd: crate::maze::cli::MazeCommand,
    },
    /// Print counts and rating statistics of puzzle files or dataset directories.
    Stats {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value_t = DEFAULT_SAMPLES, value_parser = crate::commands::args::positive_usize)]
        rating_samples: usize,
    },
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Bytes an example takes while a dataset is built: its 162 bytes in `data.bin` and the
/// question/answer boards it is made from.
const BUILD_BYTES_PER_EXAMPLE: f64 = 2.0 * 162.0 + 64.0;

/// `data build` holds every example in memory before writing: refused before the work when
/// they cannot fit (an absurd `--augment` would otherwise wrap or exhaust memory).
fn check_build_size(
    available: usize,
    train: usize,
    test: usize,
    augment: usize,
    test_augment: usize,
    hints: bool,
) -> anyhow::Result<()> {
    let train = train.min(available) as f64;
    let test = test.min(available) as f64;
    let examples =
        train * (1.0 + augment as f64) * if hints { 2.0 } else { 1.0 } + test * (1.0 + test_augment as f64);
    crate::model::memory::check_items(
        &format!(
            "{train} training puzzles x (1 + --augment {augment}) and {test} test puzzles x (1 + \
             --test-augment {test_augment}): {examples:.3e} examples to build"
        ),
        examples,
        BUILD_BYTES_PER_EXAMPLE,
    )
}

/// A progress bar over the bytes of the inputs when their total size is known (regular files),
/// else a spinner: the inputs are read once, by the work itself (a pipe cannot be read twice).
fn bytes_bar(paths: &[PathBuf], what: &str) -> ProgressBar {
    let pb = match total_size(paths) {
        Some(len) => {
            let pb = ProgressBar::new(len);
            pb.set_style(
                ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb
        }
        None => ProgressBar::new_spinner(),
    };
    pb.set_message(what.to_string());
    pb
}

fn print_stats(name: &str, puzzles: &[Puzzle]) {
    let ratings: Vec<f32> = puzzles.iter().map(|p| p.rating).collect();
    let givens: usize = puzzles.iter().map(|p| super::board::count_givens(&p.question)).sum();
    println!(
        "{name}: {} puzzles, mean givens {:.2}, rating {}",
        puzzles.len(),
        givens as f64 / puzzles.len().max(1) as f64,
        RatingStats::from_ratings(&ratings)
    );
}

/// Runs one `hrm data` command.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Generate {
            count,
            mode,
            min_rating,
            max_rating,
            seed,
            rating_samples,
            max_batches,
            out,
        } => {
            if mode == GenMode::Hard && min_rating > max_rating {
                bail!("--min-rating {min_rating} is above --max-rating {max_rating}: no puzzle can qualify");
            }
            // Kept in memory until written (with what deduplication keeps per puzzle).
            crate::model::memory::check_items(&format!("--count {count} puzzles"), count as f64, 512.0)?;
            check_output("--out", &out, &[])?;
            let mode = match mode {
                GenMode::Minimal => Mode::Minimal,
                GenMode::Easy => Mode::Easy,
                GenMode::Hard => Mode::Hard { min_rating, max_rating },
            };
            let mut cfg = GenConfig::new(count, mode, seed);
            cfg.rating_samples = rating_samples.max(1);
            let pb = bar(count as u64, "generate");
            let t = Instant::now();
            let got = generate(&cfg, max_batches, &|done| pb.set_position(done as u64));
            pb.finish_and_clear();
            let secs = t.elapsed().as_secs_f64();
            let source = match mode {
                Mode::Minimal => format!("hrm-gen-minimal-s{seed}"),
                Mode::Easy => format!("hrm-gen-easy-s{seed}"),
                Mode::Hard { min_rating, .. } => format!("hrm-gen-hard{min_rating}-s{seed}"),
            };
            let puzzles: Vec<Puzzle> = got
                .into_iter()
                .map(|g| Puzzle {
                    source: source.clone(),
                    question: g.question,
                    answer: g.answer,
                    rating: g.rating,
                })
                .collect();
            if puzzles.len() < count {
                bail!(
                    "only {} of {count} puzzles found within --max-batches {max_batches}; {} was not \
                     written (raise --max-batches or lower --count)",
                    puzzles.len(),
                    out.display()
                );
            }
            write_csv(&out, &puzzles)?;
            eprintln!(
                "generated {} puzzles in {secs:.1}s ({:.2}/s) -> {}",
                puzzles.len(),
                puzzles.len() as f64 / secs,
                out.display()
            );
            print_stats(&out.display().to_string(), &puzzles);
            Ok(())
        }
        DataCommand::Import { files, out, skip_invalid, rating_samples } => {
            let inputs: Vec<Input> = files.iter().map(|f| ("input", f.as_path())).collect();
            check_output("--out", &out, &inputs)?;
            let pb = bytes_bar(&files, "import");
            let t = Instant::now();
            let opts = ImportOptions {
                skip_invalid,
                rating_samples: rating_samples.max(1),
                rerate: true,
                limit: None,
            };
            let (puzzles, skipped) = import(&files, &opts, &|k| pb.inc(k))?;
            pb.finish_and_clear();
            for e in &skipped {
                eprintln!("skipped {e}");
            }
            write_csv(&out, &puzzles)?;
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "imported {} puzzles ({} skipped) in {secs:.2}s ({:.0}/s) -> {}",
                puzzles.len(),
                skipped.len(),
                puzzles.len() as f64 / secs,
                out.display()
            );
            print_stats(&out.display().to_string(), &puzzles);
            Ok(())
        }
        DataCommand::Build { inputs, out, train, test, augment, test_augment, hints, seed, exclude } => {
            if train == 0 && test == 0 {
                bail!("--train 0 and --test 0: nothing to build");
            }
            if train == 0 {
                eprintln!("warning: --train 0: building only the test split");
            }
            let mut read: Vec<Input> = inputs.iter().map(|f| ("input", f.as_path())).collect();
            read.extend(exclude.iter().map(|f| ("--exclude set", f.as_path())));
            // The splits replace out/train and out/test wholesale (one this build does not
            // write loses its dataset files).
            check_output_dir("--out", &out, &SPLITS, &read)?;
            let t = Instant::now();
            let puzzles = read_puzzles(&inputs)?;
            check_build_size(puzzles.len(), train, test, augment, test_augment, hints)?;
            let ex = canonical_set(&exclude)?;
            let names: Vec<String> = exclude.iter().map(|p| p.display().to_string()).collect();
            let cfg = BuildConfig { train, test, augment, hint_twins: hints, test_augment, seed };
            let pb = bar((train + test) as u64, "build");
            let rep = build(puzzles, &ex, &names, &cfg, &out, &|k| pb.inc(k))?;
            pb.finish_and_clear();
            eprintln!(
                "read {} puzzles: {} duplicates up to symmetry, {} equivalent to excluded sets ({} canonical forms)",
                rep.input_puzzles,
                rep.duplicates,
                rep.excluded,
                ex.len()
            );
            for m in [&rep.train, &rep.test].into_iter().flatten() {
                println!(
                    "{}: {} puzzles, {} examples in {} groups, rating {}",
                    m.split, m.num_puzzles, m.num_examples, m.num_groups, m.rating
                );
            }
            eprintln!("built {} in {:.1}s", out.display(), t.elapsed().as_secs_f64());
            Ok(())
        }
        DataCommand::Maze { cmd } => crate::maze::cli::run(cmd),
        DataCommand::Arc { cmd } => crate::arc::cli::run(cmd),
        DataCommand::Stats { paths, rating_samples } => {
            for p in paths {
                if p.is_dir() || p.extension().is_some_and(|e| e == "bin") {
                    let d = Dataset::load(&p)?;
                    let m = d.manifest();
                    println!(
                        "{}: {} split, {} examples, {} groups ({} per group, {} augmentations, hint twins {}), seed {}, rating {}",
                        p.display(),
                        m.split,
                        d.len(),
                        d.num_groups(),
                        m.examples_per_group,
                        m.augmentations_per_puzzle,
                        m.hint_twins,
                        m.seed,
                        m.rating
                    );
                } else {
                    let opts = ImportOptions {
                        skip_invalid: true,
                        rating_samples: rating_samples.max(1),
                        rerate: true,
                        limit: None,
                    };
                    let pb = bytes_bar(std::slice::from_ref(&p), "stats");
                    let (puzzles, skipped) = import(std::slice::from_ref(&p), &opts, &|k| pb.inc(k))?;
                    pb.finish_and_clear();
                    print_stats(&p.display().to_string(), &puzzles);
                    if !skipped.is_empty() {
                        println!("  {} invalid lines, first: {}", skipped.len(), skipped[0]);
                    }
                }
            }
            Ok(())
        }
    }
}
