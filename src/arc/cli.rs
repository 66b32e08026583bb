//! `hrm data arc ...`: check ARC task folders and build training sets from them.

use super::{Task, read_dir, variants};
use crate::fsutil::check_output_dir;
use anyhow::{Result, bail};
use clap::Subcommand;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Subcommand)]
pub enum ArcCommand {
    /// Read every task file under the folders (recursively) and check it: colors 0-9, grids of
    /// at most 30 x 30, at least one train and one test pair. Prints tasks, pairs and sizes per
    /// folder and, with --variants N, how many tasks reach N distinct augmented variants besides
    /// the original (the builders' dihedral x color-permutation augmentation, duplicates
    /// removed, at most 5 N draws).
    Check {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        variants: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Build a training set in the reference's dataset layout (OUT/train, OUT/test,
    /// OUT/identifiers.json) by HRM's recipe: every sub-folder of DIRS is a source; the test
    /// pairs of the tasks in sub-folders named --test-dir form the test split (their
    /// demonstration pairs train); each task gives the identity and up to --variants
    /// dihedral x color-permutation variants, one puzzle identifier each; training examples sit
    /// at random offsets (one per puzzle at the origin). HRM's ARC-1 set: DIRS =
    /// arc-agi-1/data conceptarc; ARC-2: arc-agi-2/data. The whole set is held in memory while
    /// it is built (HRM's ARC-1 at 1,000 variants: about 6.5 GB).
    Build {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Augmented variants per task besides the original (HRM: 1,000).
        #[arg(long, default_value_t = 1000)]
        variants: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The sub-folder name of the held-out tasks.
        #[arg(long, default_value = "evaluation")]
        test_dir: String,
        /// Output directory (created; its train/ and test/ must not exist).
        #[arg(short, long)]
        out: PathBuf,
    },
}

fn describe(tasks: &[Task]) -> String {
    let pairs = |f: fn(&Task) -> usize| tasks.iter().map(f).sum::<usize>();
    let largest = tasks
        .iter()
        .flat_map(|t| t.train.iter().chain(&t.test))
        .flat_map(|p| [&p.input, &p.output])
        .map(|g| (g.rows * g.cols, g.rows, g.cols))
        .max()
        .unwrap_or_default();
    format!(
        "{} tasks, {} train and {} test pairs, largest grid {} x {}",
        tasks.len(),
        pairs(|t| t.train.len()),
        pairs(|t| t.test.len()),
        largest.1,
        largest.2
    )
}

pub fn run(cmd: ArcCommand) -> Result<()> {
    match cmd {
        ArcCommand::Build { dirs, variants: n, seed, test_dir, out } => {
            let inputs: Vec<(&str, &std::path::Path)> =
                dirs.iter().map(|d| ("task folder", d.as_path())).collect();
            check_output_dir("--out", &out, &["train", "test", "identifiers.json"], &inputs)?;
            for p in [out.join("train"), out.join("test")] {
                if p.exists() {
                    bail!("{} exists: choose another --out (nothing was written)", p.display());
                }
            }
            let t0 = Instant::now();
            let sources = super::build::read_sources(&dirs, &test_dir)?;
            let held = sources.iter().filter(|s| s.held_out).count();
            eprintln!("{} tasks ({held} held out); building up to {n} variants each", sources.len());
            let bar = indicatif::ProgressBar::new(sources.len() as u64);
            let b = super::build::build(&sources, n, seed, &|d| bar.set_position(d as u64))?;
            bar.finish_and_clear();
            super::build::write(&out, &b)?;
            println!(
                "train: {} groups, {} puzzles, {} examples; test: {} groups, {} puzzles, {} examples; {} \
                 identifiers with the blank; {} tasks below {} variants; {:.1} s -> {}",
                b.train.num_groups(),
                b.train.num_puzzles(),
                b.train.num_examples(),
                b.test.num_groups(),
                b.test.num_puzzles(),
                b.test.num_examples(),
                b.names.len(),
                b.short_tasks,
                n + 1,
                t0.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        ArcCommand::Check { dirs, variants: n, seed } => {
            let mut all = Vec::new();
            for d in &dirs {
                let tasks = read_dir(d)?;
                println!("{}: {}", d.display(), describe(&tasks));
                all.extend(tasks);
            }
            if let Some(n) = n {
                let counts: Vec<usize> = all
                    .par_iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                        rng.set_stream(i as u64);
                        variants(t, n, &mut rng).len()
                    })
                    .collect();
                let short = counts.iter().filter(|&&c| c < n + 1).count();
                println!(
                    "variants: {} of {} tasks have fewer than {} (original + {n}); the smallest has {}",
                    short,
                    all.len(),
                    n + 1,
                    counts.iter().min().copied().unwrap_or(0)
                );
            }
            Ok(())
        }
    }
}
