//! `hrm analyze trajectory|trivial|fixed-points|landscape`: the Augmented HRM paper's
//! mechanistic analyses, written as JSON plus SVG charts.

use super::eval::{load_checkpoint_for, load_model_checkpoint};
use crate::analysis::fixed_points::{FixedPointsReport, fixed_points};
use crate::analysis::landscape::{LandscapeReport, landscape};
use crate::analysis::plot::{Series, chart_xy};
use crate::analysis::trajectory::{TrajectoryReport, trajectory};
use crate::analysis::trivial::{TrivialReport, trivial};
use crate::backend::DeviceChoice;
use crate::hrm::Hrm;
use crate::model::checkpoint::write_atomic;
use crate::model::memory::{Purpose, check_host};
use crate::sudoku::formats::read_eval_set_limit;
use crate::train::data::load_eval_set;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// What every analysis reads.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalyzeCommon {
    /// Checkpoint (safetensors with official names).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Architecture JSON (default: the config stored in the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Puzzle set: Sudoku-Extreme CSV or one-puzzle-per-line file (solutions computed when
    /// absent), or a built maze or ARC folder (as `hrm eval` reads it; not for `trivial`).
    pub set: PathBuf,
    /// Use only the first N puzzles.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Output directory for the JSON and SVG files.
    #[arg(long, default_value = "analysis")]
    pub out: PathBuf,
    /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AnalyzeCommand {
    /// Per segment: exact and cell accuracy, relative state change of z_H and z_L, Sudoku
    /// conflicts of the decoded board, q_halt; the segment from which each puzzle stays right,
    /// and how often a right board is later lost. Writes trajectory.json and SVG charts.
    Trajectory(AnalyzeCommon),
    /// Blank k cells of solved grids (the set's solutions) and report the success rate per k
    /// (the paper's one-unknown-cell failure). Writes trivial.json and trivial.svg.
    Trivial {
        #[command(flatten)]
        common: AnalyzeCommon,
        /// Numbers of blank cells, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16])]
        blanks: Vec<usize>,
        /// Seed of the blanked cells.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Per puzzle, R runs from H_init / L_init plus Gaussian noise: distinct final answers,
    /// valid and right runs, and runs stuck at a wrong fixed point (state no longer moving,
    /// board wrong). Writes fixed_points.json and fixed_points.svg.
    FixedPoints {
        #[command(flatten)]
        common: AnalyzeCommon,
        /// Noisy starts per puzzle.
        #[arg(long, default_value_t = 8)]
        runs: usize,
        /// Standard deviation of the noise added to the initial states (the paper uses 2).
        #[arg(long, default_value_t = 2.0)]
        noise_std: f64,
        /// A run is at a fixed point when z_H moved by less than this (relative) in its last
        /// segment (the demo model's mean change in its 4th segment is ~0.009).
        #[arg(long, default_value_t = 1e-2)]
        tolerance: f64,
        /// Seed of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// One puzzle from R noisy starts (as fixed-points), S segments without halting: the z_H
    /// path of every run projected on the first two principal components of all the states,
    /// coloured by the run's final answer, so the attractors show. Writes landscape.json and
    /// landscape.svg.
    Landscape {
        #[command(flatten)]
        common: AnalyzeCommon,
        /// Index of the puzzle in the set (from 0).
        #[arg(long, default_value_t = 0)]
        puzzle: usize,
        /// Noisy starts.
        #[arg(long, default_value_t = 16)]
        runs: usize,
        /// Segments per run (default: twice the model's halt_max_steps, to see where the state
        /// settles).
        #[arg(long)]
        segments: Option<usize>,
        /// Standard deviation of the noise added to the initial states.
        #[arg(long, default_value_t = 2.0)]
        noise_std: f64,
        /// Seed of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn set_name(p: &Path) -> String {
    p.file_stem().map_or("set".into(), |s| s.to_string_lossy().into_owned())
}

fn write_json<T: serde::Serialize>(out: &Path, file: &str, v: &T) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let p = out.join(file);
    write_atomic(&p, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(p)
}

/// Runs one analysis; returns the files written.
pub fn run_analyze(cmd: &AnalyzeCommand) -> Result<Vec<PathBuf>> {
    let (common, files): (&AnalyzeCommon, &[&str]) = match cmd {
        AnalyzeCommand::Trajectory(c) => (
            c,
            &[
                "trajectory.json",
                "trajectory_accuracy.svg",
                "trajectory_state.svg",
                "trajectory_conflicts.svg",
            ],
        ),
        AnalyzeCommand::Trivial { common, .. } => (common, &["trivial.json", "trivial.svg"]),
        AnalyzeCommand::FixedPoints { common, .. } => (common, &["fixed_points.json", "fixed_points.svg"]),
        AnalyzeCommand::Landscape { common, .. } => (common, &["landscape.json", "landscape.svg"]),
    };
    let mut inputs =
        vec![("--checkpoint", common.checkpoint.as_path()), ("puzzle set", common.set.as_path())];
    if let Some(c) = &common.config {
        inputs.push(("--config", c.as_path()));
    }
    crate::fsutil::check_output_dir("--out", &common.out, files, &inputs)?;
    match cmd {
        AnalyzeCommand::Trajectory(c) => {
            let r = run_trajectory(c)?;
            print!("{}", trajectory_table(&r));
            write_trajectory(&c.out, &r)
        }
        AnalyzeCommand::Trivial { common, blanks, seed } => {
            let r = run_trivial(common, blanks, *seed)?;
            print!("{}", trivial_table(&r));
            write_trivial(&common.out, &r)
        }
        AnalyzeCommand::FixedPoints { common, runs, noise_std, tolerance, seed } => {
            let r = run_fixed_points(common, *runs, *noise_std, *tolerance, *seed)?;
            print!("{}", fixed_points_table(&r));
            write_fixed_points(&common.out, &r)
        }
        AnalyzeCommand::Landscape { common, puzzle, runs, segments, noise_std, seed } => {
            let r = run_landscape(common, *puzzle, *runs, *segments, *noise_std, *seed)?;
            print!("{}", landscape_table(&r));
            write_landscape(&common.out, &r)
        }
    }
}

pub fn run_landscape(
    c: &AnalyzeCommon,
    puzzle: usize,
    runs: usize,
    segments: Option<usize>,
    noise_std: f64,
    seed: u64,
) -> Result<LandscapeReport> {
    let set = load_eval_set(&c.set, Some(puzzle.saturating_add(1)))?;
    let (cfg, params) = load_checkpoint_for(&c.checkpoint, c.config.as_deref(), &[set.rules])?;
    check_host(&cfg, Purpose::Eval { batch: runs }, c.device).with_context(|| format!("--runs {runs}"))?;
    let Some(example) = set.examples.get(puzzle) else {
        anyhow::bail!("--puzzle {puzzle}: {} holds {} puzzles", c.set.display(), set.examples.len());
    };
    let segments = segments.unwrap_or(2 * cfg.halt_max_steps);
    Ok(crate::with_backend!(c.device, |be| landscape(
        be,
        &Hrm::new(be, &cfg, &params).with_origin(&c.checkpoint),
        &set_name(&c.set),
        set.rules,
        example,
        puzzle,
        runs,
        segments,
        noise_std,
        seed
    )?))
}

pub fn landscape_table(r: &LandscapeReport) -> String {
    let mut s = format!(
        "{} puzzle {}: {} runs from H_init/L_init + N(0, {}^2), {} segments without halting; \
         PCA of z_H: PC1 {:.1}%, PC2 {:.1}% of the variance\n{:>6} {:>5} {:>8} {:>6}\n",
        r.name,
        r.puzzle,
        r.runs,
        r.noise_std,
        r.segments,
        100.0 * r.explained_variance[0],
        100.0 * r.explained_variance[1],
        "answer",
        "runs",
        "right",
        "valid"
    );
    for (i, a) in r.answers.iter().enumerate() {
        s += &format!("{:>6} {:>5} {:>8} {:>6}\n", i, a.runs, a.correct, a.valid);
    }
    let settled = r.per_run.iter().filter(|p| p.last_change < 1e-2).count();
    s += &format!("runs settled (z_H moved < 1% in the last segment): {settled} of {}\n", r.runs);
    s
}

pub fn write_landscape(out: &Path, r: &LandscapeReport) -> Result<Vec<PathBuf>> {
    let json = write_json(out, "landscape.json", r)?;
    let p = out.join("landscape.svg");
    crate::analysis::plot::landscape_svg(&p, r)?;
    Ok(vec![json, p])
}

pub fn run_fixed_points(
    c: &AnalyzeCommon,
    runs: usize,
    noise_std: f64,
    tolerance: f64,
    seed: u64,
) -> Result<FixedPointsReport> {
    let set = load_eval_set(&c.set, c.limit)?;
    let (cfg, params) = load_checkpoint_for(&c.checkpoint, c.config.as_deref(), &[set.rules])?;
    // A batch holds all runs of at least one puzzle.
    let rows = Purpose::Eval { batch: runs.max(c.batch_size) };
    check_host(&cfg, rows, c.device).with_context(|| format!("--runs {runs}"))?;
    let (rules, examples) = (set.rules, set.examples);
    Ok(crate::with_backend!(c.device, |be| fixed_points(
        be,
        &Hrm::new(be, &cfg, &params).with_origin(&c.checkpoint),
        &set_name(&c.set),
        rules,
        &examples,
        runs,
        noise_std,
        tolerance,
        seed,
        c.batch_size
    )?))
}

pub fn fixed_points_table(r: &FixedPointsReport) -> String {
    format!(
        "{}: {} puzzles x {} runs from H_init/L_init + N(0, {}^2), {} segments\n\
         distinct final answers per puzzle: mean {:.2}; puzzles with several answers: {}; \
         with right and wrong runs: {}\n\
         runs: right {:.4}, valid solution {:.4}, wrong fixed point {:.4}, still moving {:.4} \
         (tolerance {:e})\n",
        r.name,
        r.puzzles,
        r.runs_per_puzzle,
        r.noise_std,
        r.segments,
        r.mean_distinct_answers,
        r.puzzles_with_several_answers,
        r.puzzles_right_and_wrong,
        r.correct_run_fraction,
        r.valid_run_fraction,
        r.wrong_fixed_point_fraction,
        r.unsettled_fraction,
        r.tolerance
    )
}

pub fn write_fixed_points(out: &Path, r: &FixedPointsReport) -> Result<Vec<PathBuf>> {
    let json = write_json(out, "fixed_points.json", r)?;
    let mut hist = vec![0usize; r.runs_per_puzzle + 1];
    for p in &r.per_puzzle {
        hist[p.distinct_answers.min(r.runs_per_puzzle)] += 1;
    }
    let pts: Series = hist.iter().enumerate().skip(1).map(|(k, &c)| (k as f64, c as f64)).collect();
    let p = out.join("fixed_points.svg");
    chart_xy(&p, "distinct final answers per puzzle", "distinct answers", &[("puzzles", &pts)])?;
    Ok(vec![json, p])
}

pub fn run_trajectory(c: &AnalyzeCommon) -> Result<TrajectoryReport> {
    let set = load_eval_set(&c.set, c.limit)?;
    let (cfg, params) = load_checkpoint_for(&c.checkpoint, c.config.as_deref(), &[set.rules])?;
    Ok(crate::with_backend!(c.device, |be| trajectory(
        be,
        &Hrm::new(be, &cfg, &params).with_origin(&c.checkpoint),
        &set_name(&c.set),
        set.rules,
        &set.examples,
        c.batch_size
    )?))
}

pub fn run_trivial(c: &AnalyzeCommon, blanks: &[usize], seed: u64) -> Result<TrivialReport> {
    if crate::train::data::eval_split_dir(&c.set).is_some() {
        anyhow::bail!(
            "{}: `analyze trivial` blanks k cells of solved Sudoku grids; it has no maze or ARC \
             counterpart (trajectory, fixed-points and landscape read these sets)",
            c.set.display()
        );
    }
    let (cfg, params) = load_model_checkpoint(&c.checkpoint, c.config.as_deref())?;
    let puzzles = read_eval_set_limit(&c.set, c.limit)?;
    let grids: Vec<_> = puzzles.iter().map(|p| p.answer).collect();
    Ok(crate::with_backend!(c.device, |be| trivial(
        be,
        &Hrm::new(be, &cfg, &params).with_origin(&c.checkpoint),
        &set_name(&c.set),
        &grids,
        blanks,
        seed,
        c.batch_size
    )?))
}

pub fn trajectory_table(r: &TrajectoryReport) -> String {
    let mut s = format!(
        "{}: {} puzzles, {} segments\n{:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>6}\n",
        r.name,
        r.puzzles,
        r.segments,
        "segment",
        "exact",
        "cells",
        "dz_H",
        "dz_L",
        "conflicts",
        "q_halt",
        "halt"
    );
    for p in &r.per_segment {
        s += &format!(
            "{:>7} {:>8.4} {:>8.4} {:>9.5} {:>9.5} {:>9.3} {:>8.3} {:>6.3}\n",
            p.segment,
            p.exact_accuracy,
            p.cell_accuracy,
            p.z_h_change,
            p.z_l_change,
            p.conflicts,
            p.mean_q_halt,
            p.act_halt_fraction
        );
    }
    s += &format!(
        "stays right from segment k (k = 1..{}): {:?}; wrong at the end: {} (of which right earlier: {}); \
         right-to-wrong flips: {}\n",
        r.segments, r.settle_histogram, r.never_settled, r.lost_after_correct, r.right_to_wrong_flips
    );
    s
}

pub fn write_trajectory(out: &Path, r: &TrajectoryReport) -> Result<Vec<PathBuf>> {
    let mut files = vec![write_json(out, "trajectory.json", r)?];
    let series = |f: fn(&crate::analysis::trajectory::SegmentStats) -> f64| -> Series {
        r.per_segment.iter().map(|p| (p.segment as f64, f(p))).collect()
    };
    type Chart<'a> = (&'a str, &'a str, Vec<(&'a str, Series)>);
    let charts: [Chart; 3] = [
        (
            "trajectory_accuracy.svg",
            "accuracy per segment",
            vec![
                ("exact", series(|p| p.exact_accuracy)),
                ("cells", series(|p| p.cell_accuracy)),
                ("blank cells", series(|p| p.blank_cell_accuracy)),
                ("q_halt > q_continue", series(|p| p.act_halt_fraction)),
            ],
        ),
        (
            "trajectory_state.svg",
            "relative state change ||z(k) - z(k-1)|| / ||z(k-1)||",
            vec![("z_H", series(|p| p.z_h_change)), ("z_L", series(|p| p.z_l_change))],
        ),
        (
            "trajectory_conflicts.svg",
            "Sudoku conflicts of the decoded board",
            vec![("conflicts", series(|p| p.conflicts))],
        ),
    ];
    for (file, title, data) in charts {
        let refs: Vec<(&str, &Series)> = data.iter().map(|(l, s)| (*l, s)).collect();
        let p = out.join(file);
        chart_xy(&p, title, "segment", &refs)?;
        files.push(p);
    }
    Ok(files)
}

pub fn trivial_table(r: &TrivialReport) -> String {
    let mut s = format!(
        "{}: solved grids with k blank cells, {} segments (seed {})\n{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        r.name, r.segments, r.seed, "blanks", "puzzles", "exact", "valid", "blanks", "givens", "halt"
    );
    for x in &r.rows {
        s += &format!(
            "{:>6} {:>8} {:>8.4} {:>8.4} {:>8.4} {:>8.3} {:>6.3}\n",
            x.blanks,
            x.puzzles,
            x.exact_accuracy,
            x.valid_fraction,
            x.blank_cell_accuracy,
            x.givens_changed,
            x.act_halt_fraction
        );
    }
    s += "exact = the original grid; valid = a solution keeping the givens; blanks = blank cells \
          right; givens = givens changed per puzzle\n";
    s
}

pub fn write_trivial(out: &Path, r: &TrivialReport) -> Result<Vec<PathBuf>> {
    let json = write_json(out, "trivial.json", r)?;
    let pts = |f: fn(&crate::analysis::trivial::TrivialRow) -> f64| -> Series {
        r.rows.iter().map(|x| (x.blanks as f64, f(x))).collect()
    };
    let (exact, valid) = (pts(|x| x.exact_accuracy), pts(|x| x.valid_fraction));
    let p = out.join("trivial.svg");
    chart_xy(
        &p,
        "solved grids with k blank cells",
        "blank cells (k)",
        &[("exact", &exact), ("valid", &valid)],
    )?;
    Ok(vec![json, p])
}
