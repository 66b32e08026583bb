//! `hrm data arc ...`: check ARC task folders.

use super::{Task, read_dir, variants};
use anyhow::Result;
use clap::Subcommand;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::PathBuf;

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
