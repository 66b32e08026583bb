//! `hrm demo --task maze`: random small mazes (`crate::maze::generate`, the Maze-Hard recipe at
//! a smaller side and hardness), a small model trained on them on the CPU with the 8 dihedral
//! transforms of every training maze (the layout of `hrm data maze build --aug`, read by
//! `hrm train`'s own path), and the held-out mazes, whose wall layouts no training maze has in
//! any orientation, scored as `hrm eval` scores a maze set: exact match, valid paths, and valid
//! shortest paths, also by path length.

use super::eval::report_table;
use super::train::DemoArgs;
use crate::infer::eval::{EvalSet, Example, predict};
use crate::maze::formats::MazeRow;
use crate::maze::generate::{GeneratedMaze, MazeGenConfig, generate};
use crate::model::HostParams;
use crate::model::checkpoint::{load_checkpoint, write_atomic};
use crate::model::memory::{Purpose, SavedActivations, check_host};
use crate::task::Rules;
use crate::train::checkpoint::complete_checkpoints;
use crate::train::data::TrainData;
use crate::train::run::{RunOptions, RunSummary, run};
use crate::train::{Trainer, sampler::mix};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// Seeds of the two sets: distinct streams of one `--seed`.
const TRAIN_STREAM: u64 = 0x7261_696e;
const HELD_OUT_STREAM: u64 = 0x6865_6c64;

/// The mazes as CSV rows (`source` = the demo, `rating` = the moves of the shortest path).
fn rows_of(mazes: &[GeneratedMaze], side: usize, source: &str) -> Vec<MazeRow> {
    mazes
        .iter()
        .map(|m| MazeRow {
            source: source.to_string(),
            question: m.question.clone(),
            answer: m.answer.clone(),
            rating: m.moves.to_string(),
            side,
        })
        .collect()
}

/// Exact match, valid and valid-and-optimal answers by the moves of the shortest path.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ByMoves {
    pub moves: u32,
    pub mazes: usize,
    pub exact: f64,
    pub valid: f64,
    pub valid_optimal: f64,
}

/// [`ByMoves`] rows for `mazes` and the model's answers (token ids, `side * side` per maze),
/// one row per distinct length.
pub fn by_moves(mazes: &[GeneratedMaze], answers: &[u8], side: usize) -> Vec<ByMoves> {
    let rules = Rules::Maze { side };
    let mut by: BTreeMap<u32, (usize, usize, usize, usize)> = BTreeMap::new();
    for (m, a) in mazes.iter().zip(answers.chunks(side * side)) {
        let q: Vec<i32> = m.question.iter().map(|&t| t as i32).collect();
        let v = rules.verdict(&q, a).expect("mazes have a check");
        let e = by.entry(m.moves).or_default();
        e.0 += 1;
        e.1 += (a == &m.answer[..]) as usize;
        e.2 += v.valid as usize;
        e.3 += v.optimal as usize;
    }
    by.into_iter()
        .map(|(moves, (n, exact, valid, optimal))| {
            let f = |k: usize| k as f64 / n as f64;
            ByMoves { moves, mazes: n, exact: f(exact), valid: f(valid), valid_optimal: f(optimal) }
        })
        .collect()
}

/// The by-length table, lengths grouped in bands of `band` moves.
fn by_moves_table(rows: &[ByMoves], band: u32) -> String {
    let mut bands: BTreeMap<u32, (usize, f64, f64, f64)> = BTreeMap::new();
    for r in rows {
        let e = bands.entry(r.moves / band * band).or_default();
        let n = r.mazes as f64;
        e.0 += r.mazes;
        e.1 += r.exact * n;
        e.2 += r.valid * n;
        e.3 += r.valid_optimal * n;
    }
    let mut s = format!("{:>9} {:>6} {:>7} {:>7} {:>9}\n", "moves", "mazes", "exact", "valid", "optimal");
    for (lo, (n, exact, valid, optimal)) in bands {
        let k = n as f64;
        s += &format!(
            "{:>9} {n:>6} {:>7.3} {:>7.3} {:>9.3}\n",
            format!("{lo}-{}", lo + band - 1),
            exact / k,
            valid / k,
            optimal / k
        );
    }
    s
}

/// The demo on mazes (see the module's comment).
pub fn run_maze_demo(a: &DemoArgs) -> Result<RunSummary> {
    let t_start = Instant::now();
    if a.hints || a.bootstrap {
        bail!("--hints and --bootstrap are the Sudoku demo's (Augmented HRM); drop them with --task maze");
    }
    let side = a.side as usize;
    let rules = Rules::Maze { side };
    let out = a.out_dir();
    let (model, name) = a.model(rules)?;
    check_host(
        &model,
        Purpose::Train { batch: a.batch_size, ema: false, saved: SavedActivations::Recompute },
        a.device,
    )?;
    crate::model::memory::check_items(
        &format!("--train-puzzles {} x 8 transforms", a.train_puzzles),
        a.train_puzzles as f64 * 8.0,
        2.0 * (side * side) as f64 + 64.0,
    )?;
    let _lock = a.prepare_run_dir(&out)?;
    let gen_cfg =
        MazeGenConfig { side, min_moves: a.min_moves, starts_per_layout: 100, max_layouts: 100_000 };
    eprintln!(
        "generating {} training and {} held-out {side} x {side} mazes (shortest paths of {} moves or more)",
        a.train_puzzles, a.eval_puzzles, a.min_moves
    );
    let train = generate(&gen_cfg, mix(a.seed ^ TRAIN_STREAM), 0, a.train_puzzles, &|_| {})
        .context("--side and --min-moves")?;
    let held_out = generate(&gen_cfg, mix(a.seed ^ HELD_OUT_STREAM), 0, a.eval_puzzles, &|_| {})
        .context("--side and --min-moves")?;
    // No held-out wall layout is a training one in any orientation.
    let walls = |q: &[u8]| -> Vec<bool> { q.iter().map(|&t| t == crate::maze::WALL).collect() };
    let seen: HashSet<Vec<bool>> = train
        .iter()
        .flat_map(|m| (0..8).map(|t| walls(&crate::maze::dihedral(&m.question, side, t))))
        .collect();
    let held_out: Vec<GeneratedMaze> =
        held_out.into_iter().filter(|m| !seen.contains(&walls(&m.question))).collect();
    if held_out.is_empty() {
        bail!("no held-out maze is left after removing the training layouts; raise --eval-puzzles");
    }
    let split = crate::maze::build::split_of(&rows_of(&train, side, "hrm demo"), true, "training mazes")?;
    let meta = split.meta(crate::maze::build::VOCAB, 1, Some(0));
    let data = TrainData::Reference(split, meta);
    let eval = EvalSet {
        name: "held_out".into(),
        rules,
        examples: held_out
            .iter()
            .map(|m| Example {
                inputs: m.question.iter().map(|&t| t as i32).collect(),
                labels: m.answer.iter().map(|&t| t as i32).collect(),
                puzzle_id: 0,
            })
            .collect(),
        arc: None,
    };
    let cfg = a.train_config(&model);
    let params = HostParams::init(&model, &mut crate::rng::seeded(a.seed));
    eprintln!(
        "training the '{name}' model ({} parameters, {side} x {side} grids) for {} steps of batch {} on {} mazes \
         x 8 transforms",
        params.num_trainable(&model),
        cfg.steps,
        cfg.batch_size,
        data.num_groups()
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::maze::formats::write_csv(
        &out.join("held_out.csv"),
        &rows_of(&held_out, side, "hrm demo held-out"),
    )?;
    let generate_seconds = t_start.elapsed().as_secs_f64();
    let opts =
        RunOptions { run_dir: out.clone(), eval_sets: vec![eval.clone()], stop_after: None, progress: true };
    let t_train = Instant::now();
    let summary = crate::with_backend!(a.device, |be| {
        eprintln!("device: {}", crate::backend::Backend::name(be));
        let mut t = Trainer::new(be, cfg, &params);
        run(be, &mut t, &data, &opts)?
    });
    let train_seconds = t_train.elapsed().as_secs_f64();
    print!("{}", report_table(&summary.last_eval));
    // The final model's answers, by path length.
    let final_dir = complete_checkpoints(&out)?.pop().map(|(_, d)| d);
    let by = match &final_dir {
        Some(dir) => {
            let path = dir.join("model.safetensors");
            println!("model: {}", path.display());
            let (mcfg, mparams) = load_checkpoint(&path, None)?;
            let p = crate::with_backend!(a.device, |be| predict(
                be,
                &crate::hrm::Hrm::new(be, &mcfg, &mparams),
                &eval.examples,
                250,
                |_| {}
            )?);
            by_moves(&held_out, &p.tokens, side)
        }
        None => Vec::new(),
    };
    let band = (a.min_moves.max(2) / 2).max(2);
    println!("\nheld-out mazes by the moves of their shortest path (the final model's answers):");
    print!("{}", by_moves_table(&by, band));
    let figures = serde_json::json!({
        "task": rules,
        "held_out": summary.last_eval.first(),
        "held_out_by_moves": by,
        "mazes": {"train": train.len(), "held_out": held_out.len()},
        "seconds": {
            "generate": generate_seconds,
            "train_and_evaluate": train_seconds,
            "total": t_start.elapsed().as_secs_f64(),
        },
        "args": format!("{a:?}"),
    });
    let path = out.join("demo.json");
    write_atomic(&path, serde_json::to_string_pretty(&figures)?.as_bytes())?;
    println!("figures: {}", path.display());
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_tallied_by_path_length() {
        let cfg = MazeGenConfig { side: 6, min_moves: 5, starts_per_layout: 100, max_layouts: 10_000 };
        let mazes = generate(&cfg, 3, 0, 12, &|_| {}).unwrap();
        // the labels themselves: all exact, valid and optimal; the questions: none valid
        let labels: Vec<u8> = mazes.iter().flat_map(|m| m.answer.clone()).collect();
        let rows = by_moves(&mazes, &labels, 6);
        assert_eq!(rows.iter().map(|r| r.mazes).sum::<usize>(), 12);
        assert!(rows.iter().all(|r| r.exact == 1.0 && r.valid == 1.0 && r.valid_optimal == 1.0));
        assert!(rows.windows(2).all(|w| w[0].moves < w[1].moves));
        let questions: Vec<u8> = mazes.iter().flat_map(|m| m.question.clone()).collect();
        assert!(by_moves(&mazes, &questions, 6).iter().all(|r| r.exact == 0.0 && r.valid == 0.0));
        let table = by_moves_table(&rows, 4);
        assert!(table.lines().count() >= 2, "{table}");
    }
}
