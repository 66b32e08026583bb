//! `hrm eval` and `hrm solve`.

use crate::backend::DeviceChoice;
use crate::config::ModelConfig;
use crate::hrm::Hrm;
use crate::infer::augmented::{AugmentedOptions, AugmentedReport, HaltMode, evaluate_augmented_on};
use crate::infer::eval::{EvalReport, EvalSet, Example, predict, predict_on, score};
use crate::infer::perturb::parse_spec_for;
use crate::model::HostParams;
use crate::model::checkpoint::{load_checkpoint, write_atomic};
use crate::model::memory::{Purpose, check_device, check_host};
use crate::sudoku::board::{Board, board_to_string, is_solution_of, is_valid_solution, parse_board};
use crate::sudoku::formats::{read_eval_set, unique_solution};
use crate::task::Rules;
use crate::train::data::{example_of, load_eval_set};
use crate::train::distributed::{self, DistEnv, Role, connect};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (safetensors with official names). Repeat it to bootstrap over several
    /// checkpoints (Augmented HRM): every checkpoint answers every pass; the first one is
    /// `single`'s model.
    #[arg(long = "checkpoint", required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// Architecture JSON (default: the config stored in the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Perturbed inference: run each puzzle under these input perturbations, map every answer
    /// back through the inverse and report the selection modes single / vote / vote_halt / verify / oracle.
    /// SPEC is factors joined by '+' (their product; pass 0 is always the unperturbed puzzle):
    /// `relabel9` (the 9 cyclic digit relabelings d -> (d - 1 + k) mod 9 + 1), `perm:N` (the
    /// identity and N random digit permutations), `sym:N` (the identity and N random geometric
    /// symmetries: transpose, band/stack and row/column permutations), `aug:N` (the identity
    /// and N random full HRM augmentations), `none`. Example: relabel9+sym:3 = 36 passes.
    /// Maze sets: `dihedral8` (the 8 dihedral maps of the grid) or `none`; `verify` keeps the
    /// answers that are shortest paths.
    #[arg(long, value_name = "SPEC")]
    pub perturb: Option<String>,
    /// Seed of the random members of --perturb.
    #[arg(long, default_value_t = 0)]
    pub perturb_seed: u64,
    /// Perturbed inference: fixed = every pass runs all segments; act = a pass stops once
    /// q_halt > q_continue (after --min-segments) and its batch row takes the next pass.
    #[arg(long, value_enum, default_value_t = HaltMode::Fixed)]
    pub halt: HaltMode,
    /// With --halt act: segments every pass runs before it may stop.
    #[arg(long, default_value_t = 2)]
    pub min_segments: usize,
    /// Evaluation sets: Sudoku-Extreme CSV or one-puzzle-per-line files (solutions computed
    /// when absent), or maze splits in the reference's layout (a folder with dataset.json, or
    /// the root `hrm data maze build` writes, whose test/ is read); maze reports add valid
    /// paths and valid shortest paths.
    #[arg(required = true)]
    pub sets: Vec<PathBuf>,
    /// Evaluate only the first N puzzles of each set (N >= 1; ARC: the first N tasks, every
    /// variant of each).
    #[arg(long, value_parser = crate::commands::args::positive_usize)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 256, value_parser = crate::commands::args::positive_usize)]
    pub batch_size: usize,
    /// Also write the reports as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write every puzzle's answer as CSV here: `set,index,puzzle,answer,correct` (plain
    /// evaluation; answer = the last segment's argmax), or with perturbed inference
    /// `set,index,puzzle,single,vote,vote_share,verify,verify_valid,vote_correct,verify_correct`
    /// (vote and verify are label-free; 81 characters per board, `.` where the model put no
    /// digit).
    #[arg(long, value_name = "CSV")]
    pub answers: Option<PathBuf>,
    /// ARC sets: write the ARC Prize submission JSON here (per task, per test input, the two
    /// best-voted answers as attempt_1 and attempt_2), tasks of every ARC set together.
    #[arg(long, value_name = "JSON")]
    pub submission: Option<PathBuf>,
    /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Shard the puzzles over N local GPUs (one process per GPU, results gathered on rank 0,
    /// which alone prints and writes); see docs/DISTRIBUTED.md. The torchrun variables (RANK,
    /// WORLD_SIZE, ...) set by a scheduler start one rank without it.
    #[arg(long, value_parser = crate::commands::args::positive_usize)]
    pub nproc: Option<usize>,
    /// With --nproc: the rendezvous port on 127.0.0.1 (default: a free one).
    #[arg(long, requires = "nproc")]
    pub master_port: Option<u16>,
}

/// A Sudoku model's config and weights from a checkpoint.
pub fn load_model_checkpoint(checkpoint: &Path, config: Option<&Path>) -> Result<(ModelConfig, HostParams)> {
    load_checkpoint_for(checkpoint, config, &[Rules::Sudoku])
}

/// A model's config and weights from a checkpoint, checked to read the sequences of every task
/// in `tasks`.
pub fn load_checkpoint_for(
    checkpoint: &Path,
    config: Option<&Path>,
    tasks: &[Rules],
) -> Result<(ModelConfig, HostParams)> {
    let cfg = config.map(ModelConfig::from_json_file).transpose()?;
    let (cfg, params) = load_checkpoint(checkpoint, cfg.as_ref())?;
    for r in tasks {
        r.check_model(&cfg).with_context(|| format!("{}: not a {} model", checkpoint.display(), r.name()))?;
    }
    Ok((cfg, params))
}

/// A readable table of reports (with the columns `valid` and `optimal`, valid and optimal,
/// when a task reports them: Maze).
pub fn report_table(reports: &[EvalReport]) -> String {
    let validity = reports.iter().any(|r| r.valid_accuracy.is_some());
    let mut s =
        format!("{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}", "set", "puzzles", "exact", "cells", "blanks", "halt");
    s += &if validity { format!(" {:>8} {:>8}\n", "valid", "optimal") } else { "\n".into() };
    for r in reports {
        s += &format!(
            "{:<32} {:>8} {:>8.4} {:>8.4} {:>8.4} {:>8.3}",
            r.name, r.puzzles, r.exact_accuracy, r.cell_accuracy, r.blank_cell_accuracy, r.act_halt_fraction
        );
        let cell = |v: Option<f64>| v.map_or(format!(" {:>8}", "-"), |v| format!(" {v:>8.4}"));
        s += &if validity {
            cell(r.valid_accuracy) + &cell(r.valid_optimal_accuracy) + "\n"
        } else {
            "\n".into()
        };
    }
    for r in reports {
        if let Some(a) = &r.arc {
            let f = |k: usize, n: usize| format!("{k}/{n} ({:.4})", k as f64 / n.max(1) as f64);
            s += &format!(
                "{}: ARC vote over the variants: pass@1 {} and pass@2 {} test inputs; tasks with every \
                 input passing: pass@1 {}, pass@2 {}; mean pass@2 per task {:.4}\n",
                r.name,
                f(a.pass1_inputs, a.test_inputs),
                f(a.pass2_inputs, a.test_inputs),
                f(a.pass1_tasks, a.tasks),
                f(a.pass2_tasks, a.tasks),
                a.pass2_task_mean
            );
        }
    }
    if !reports.is_empty() {
        s += "exact accuracy per segment:\n";
        for r in reports {
            let segs: Vec<String> = r.exact_accuracy_per_segment.iter().map(|a| format!("{a:.3}")).collect();
            s += &format!("  {}: {}\n", r.name, segs.join(" "));
        }
    }
    s
}

/// What `hrm eval` measured: the plain report, or perturbed inference's modes.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum EvalOutput {
    Plain(Vec<EvalReport>),
    Augmented(Vec<AugmentedReport>),
}

/// The side-by-side table of perturbed inference: exact accuracy per selection mode.
pub fn augmented_table(reports: &[AugmentedReport]) -> String {
    let mut s = format!(
        "{:<24} {:>7} {:>6} {:>7} {:>7} {:>8} {:>7} {:>8} {:>6} {:>9} {:>9} {:>8}\n",
        "set",
        "puzzles",
        "passes",
        "single",
        "vote",
        "vote-halt",
        "verify",
        "oracle*",
        "segs",
        "puzzles/s",
        "passes/s",
        "overhead"
    );
    for r in reports {
        let a = &r.exact_accuracy;
        s += &format!(
            "{:<24} {:>7} {:>6} {:>7.4} {:>7.4} {:>8.4} {:>7.4} {:>8.4} {:>6.2} {:>9.1} {:>9.1} {:>7.3}%\n",
            r.name,
            r.puzzles,
            r.passes_per_puzzle,
            a.single,
            a.vote,
            a.vote_halt,
            a.verify,
            a.oracle,
            r.mean_segments,
            r.puzzles_per_s,
            r.passes_per_s,
            100.0 * r.overhead_fraction
        );
    }
    if let Some(r) = reports.first() {
        s += &format!(
            "passes = checkpoints x {} perturbations ({}), halt {}; segs = mean segments per pass; \
             overhead = (perturb + map back + select) / model time\n",
            r.perturbations,
            r.perturb,
            format!("{:?}", r.halt).to_lowercase()
        );
        s += "exact accuracy per mode: single = unperturbed pass of the first checkpoint; vote = majority \
              of all passes; vote-halt = majority of halting passes; verify = vote-halt among valid solutions; *oracle uses the labels (strict \
              majority of halting passes per checkpoint, OR over checkpoints: the paper's metric)\n";
    }
    s
}

fn load_sets(a: &EvalArgs) -> Result<Vec<EvalSet>> {
    a.sets.iter().map(|path| load_eval_set(path, a.limit)).collect()
}

/// `--json` and `--answers`, checked before any work: neither may be an input (a checkpoint,
/// the config or a puzzle set) nor the other.
fn check_eval_outputs(a: &EvalArgs) -> Result<()> {
    let mut inputs: Vec<crate::fsutil::Input> =
        a.checkpoints.iter().map(|c| ("--checkpoint", c.as_path())).collect();
    inputs.extend(a.config.as_deref().map(|c| ("--config", c)));
    inputs.extend(a.sets.iter().map(|s| ("puzzle set", s.as_path())));
    let outputs: Vec<(&str, &Path)> =
        [("--json", &a.json), ("--answers", &a.answers), ("--submission", &a.submission)]
            .into_iter()
            .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
            .collect();
    for (flag, p) in &outputs {
        crate::fsutil::check_output(flag, p, &inputs)?;
    }
    crate::fsutil::check_distinct_outputs(&outputs)
}

/// `hrm eval`. With `--nproc N` (or the torchrun variables) the puzzles are sharded over the
/// ranks and rank 0 alone prints and writes; the launcher of `--nproc` and the other ranks
/// return an empty output.
pub fn run_eval(a: &EvalArgs) -> Result<EvalOutput> {
    check_eval_outputs(a)?;
    let augmented = a.perturb.is_some() || a.checkpoints.len() > 1 || a.halt == HaltMode::Act;
    let env = match distributed::setup(a.device, a.nproc, a.master_port, "evaluation")? {
        Role::Launched => return Ok(EvalOutput::Plain(Vec::new())),
        Role::Single => None,
        Role::Rank(e) => Some(e),
    };
    let main = env.as_ref().is_none_or(|e| e.rank == 0);
    if augmented && a.submission.is_some() {
        bail!("--submission: ARC sets are evaluated by plain `hrm eval` (no --perturb, one checkpoint)");
    }
    let (out, answers, submission) = if augmented {
        let (reports, answers) = run_augmented_eval(a, env.as_ref())?;
        (EvalOutput::Augmented(reports), answers, None)
    } else {
        let (reports, answers, submission) = run_plain_eval(a, env.as_ref())?;
        (EvalOutput::Plain(reports), answers, submission)
    };
    if !main {
        return Ok(EvalOutput::Plain(Vec::new()));
    }
    match &out {
        EvalOutput::Plain(r) => print!("{}", report_table(r)),
        EvalOutput::Augmented(r) => print!("{}", augmented_table(r)),
    }
    if let Some(j) = &a.json {
        write_atomic(j, serde_json::to_string_pretty(&out)?.as_bytes())?;
    }
    if let Some(p) = &a.answers {
        write_atomic(p, answers.as_bytes())?;
    }
    if let Some(p) = &a.submission {
        let Some(sub) = submission else {
            bail!("--submission {}: no ARC set was evaluated", p.display());
        };
        write_atomic(p, serde_json::to_string(&sub)?.as_bytes())?;
    }
    Ok(out)
}

/// A progress bar on rank 0 (or a single process) only.
fn progress(main: bool, len: usize) -> indicatif::ProgressBar {
    if main { indicatif::ProgressBar::new(len as u64) } else { indicatif::ProgressBar::hidden() }
}

/// The reports, the answers CSV and the ARC submission (with ARC sets).
fn run_plain_eval(
    a: &EvalArgs,
    env: Option<&DistEnv>,
) -> Result<(Vec<EvalReport>, String, Option<serde_json::Value>)> {
    let sets = load_sets(a)?;
    let tasks: Vec<Rules> = sets.iter().map(|s| s.rules).collect();
    let (cfg, params) = load_checkpoint_for(&a.checkpoints[0], a.config.as_deref(), &tasks)?;
    for set in &sets {
        if let Some(e) = set.examples.iter().find(|e| e.puzzle_id as usize >= cfg.num_puzzle_identifiers) {
            bail!(
                "{}: set {} has puzzle identifier {}, the model has {} (with the blank): not the model of \
                 this dataset",
                a.checkpoints[0].display(),
                set.name,
                e.puzzle_id,
                cfg.num_puzzle_identifiers
            );
        }
    }
    let world = env.map_or(1, |e| e.world);
    let purpose = Purpose::Eval { batch: a.batch_size };
    check_host(&cfg, purpose, a.device)?;
    crate::with_backend!(a.device, |be| {
        check_device(be, &cfg, purpose)?;
        let dist = env.map(connect).transpose()?;
        distributed::ranked(dist.as_deref(), || {
            let model = Hrm::new(be, &cfg, &params).with_origin(&a.checkpoints[0]);
            let mut reports = Vec::new();
            let mut csv = String::from("set,index,puzzle,answer,correct\n");
            let mut submission: Option<serde_json::Map<String, serde_json::Value>> = None;
            for set in &sets {
                let (name, examples) = (&set.name, &set.examples);
                let bar = progress(env.is_none_or(|e| e.rank == 0), examples.len().div_ceil(world));
                let p =
                    predict_on(be, &model, examples, a.batch_size, dist.as_deref(), |n| bar.inc(n as u64))?;
                bar.finish_and_clear();
                let r = score(set, &p, &cfg);
                if let Some(arc) = &set.arc {
                    let (ranked, _) = crate::arc::eval::vote(arc, &p.tokens, &p.q_halt);
                    if let serde_json::Value::Object(m) = crate::arc::vote::submission(&ranked, &arc.tasks) {
                        submission.get_or_insert_with(Default::default).extend(m);
                    }
                }
                let last = p.exact_per_segment.last().cloned().unwrap_or_default();
                for (i, e) in examples.iter().enumerate() {
                    let answer = set
                        .rules
                        .line(p.tokens[i * cfg.seq_len..(i + 1) * cfg.seq_len].iter().map(|&t| t as i32));
                    csv += &format!(
                        "{name},{i},{},{answer},{}\n",
                        set.rules.line(e.inputs.iter().copied()),
                        last.get(i).copied().unwrap_or(false) as u8
                    );
                }
                reports.push(r);
            }
            Ok((reports, csv, submission.map(serde_json::Value::Object)))
        })
    })
}

fn run_augmented_eval(a: &EvalArgs, env: Option<&DistEnv>) -> Result<(Vec<AugmentedReport>, String)> {
    let spec = a.perturb.clone().unwrap_or_else(|| "none".to_string());
    if a.min_segments == 0 {
        bail!("--min-segments: expected at least 1");
    }
    let sets = load_sets(a)?;
    // each set's passes for its task (parsed before any model is loaded)
    let perts = sets
        .iter()
        .map(|s| parse_spec_for(s.rules, &spec, a.perturb_seed).with_context(|| format!("set {}", s.name)))
        .collect::<Result<Vec<_>>>()?;
    let tasks: Vec<Rules> = sets.iter().map(|s| s.rules).collect();
    let loaded = a
        .checkpoints
        .iter()
        .map(|c| load_checkpoint_for(c, a.config.as_deref(), &tasks))
        .collect::<Result<Vec<_>>>()?;
    let opts = AugmentedOptions { batch_size: a.batch_size, halt: a.halt, min_segments: a.min_segments };
    let world = env.map_or(1, |e| e.world);
    let purpose = Purpose::Eval { batch: a.batch_size };
    for (cfg, _) in &loaded {
        check_host(cfg, purpose, a.device)?;
    }
    crate::with_backend!(a.device, |be| {
        for (cfg, _) in &loaded {
            check_device(be, cfg, purpose)?;
        }
        let dist = env.map(connect).transpose()?;
        distributed::ranked(dist.as_deref(), || {
            let models: Vec<_> = loaded
                .iter()
                .zip(&a.checkpoints)
                .map(|((cfg, p), path)| Hrm::new(be, cfg, p).with_origin(path))
                .collect();
            let mut reports = Vec::new();
            let mut csv = String::from(
                "set,index,puzzle,single,vote,vote_share,verify,verify_valid,vote_correct,verify_correct\n",
            );
            for (set, perts) in sets.iter().zip(&perts) {
                let (name, examples, rules) = (&set.name, &set.examples, set.rules);
                let bar = progress(
                    env.is_none_or(|e| e.rank == 0),
                    examples.len().div_ceil(world) * perts.len() * models.len(),
                );
                let (r, selected) = evaluate_augmented_on(
                    be,
                    &models,
                    name,
                    rules,
                    examples,
                    &spec,
                    perts,
                    &opts,
                    dist.as_deref(),
                    |n| bar.inc(n as u64),
                )?;
                bar.finish_and_clear();
                let text = |t: &[u8]| rules.line(t.iter().map(|&x| x as i32));
                for (i, (e, sel)) in examples.iter().zip(&selected).enumerate() {
                    let label: Vec<u8> = e.labels.iter().map(|&t| t as u8).collect();
                    let valid = rules.verdict(&e.inputs, &sel.verify.tokens).is_some_and(|v| v.optimal);
                    csv += &format!(
                        "{name},{i},{},{},{},{:.4},{},{},{},{}\n",
                        rules.line(e.inputs.iter().copied()),
                        text(&sel.single.tokens),
                        text(&sel.vote.tokens),
                        sel.vote.votes as f64 / sel.vote.pool.max(1) as f64,
                        text(&sel.verify.tokens),
                        valid as u8,
                        (sel.vote.tokens == label) as u8,
                        (sel.verify.tokens == label) as u8,
                    );
                }
                reports.push(r);
            }
            Ok((reports, csv))
        })
    })
}

#[derive(clap::Args, Debug)]
pub struct SolveArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A puzzle as 81 characters (digits, `.` or `0` for blanks) or a puzzle file (every
    /// puzzle in it is solved); or a maze: a maze CSV (`source,q,a,rating`, every maze in it)
    /// or one maze as a string of `# SG` (walls, open cells, start, goal), row after row, of the
    /// model's length (quote it: it holds spaces).
    pub puzzle: String,
    /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

fn print_board(b: &Board) -> String {
    let mut s = String::new();
    for r in 0..9 {
        if r % 3 == 0 && r > 0 {
            s += "------+-------+------\n";
        }
        for c in 0..9 {
            if c % 3 == 0 && c > 0 {
                s += "| ";
            }
            let v = b[r * 9 + c];
            s += &if v == 0 { ". ".to_string() } else { format!("{v} ") };
        }
        s = s.trim_end().to_string() + "\n";
    }
    s
}

/// The puzzles `hrm solve` is given, each with its unique solution: a puzzle file (every
/// puzzle, checked as `hrm eval` checks them; any path that exists, so a directory or a device
/// gets the reader's own error) or one puzzle of 81 characters, checked the same way
/// (contradictory givens, no solution, several solutions). Anything else is reported as a
/// missing file.
pub fn solve_inputs(arg: &str) -> Result<Vec<(Board, Board)>> {
    let path = Path::new(arg);
    if path.symlink_metadata().is_ok() {
        return Ok(read_eval_set(path)?.into_iter().map(|p| (p.question, p.answer)).collect());
    }
    let t = arg.trim();
    if t.chars().count() != 81 || t.contains(['/', '\\']) {
        bail!("{arg}: no such file (nor an 81-character puzzle: {} characters)", t.chars().count());
    }
    let q = parse_board(t).with_context(|| format!("puzzle '{t}'"))?;
    let (solution, _) = unique_solution(&q, 1).map_err(|m| anyhow::anyhow!("puzzle '{t}': {m}"))?;
    Ok(vec![(q, solution)])
}

/// The mazes `hrm solve` is given, when it is given mazes: a file whose first line is the maze
/// CSV header, or a string of `# SG` holding an S and a G. `None`: not mazes (a Sudoku puzzle or
/// file, or nothing valid, which the Sudoku reader then names).
fn maze_inputs(arg: &str) -> Option<Result<Vec<Vec<u8>>>> {
    let path = Path::new(arg);
    if path.is_file() {
        let first = std::fs::read(path).ok()?.split(|&b| b == b'\n').next()?.to_vec();
        if String::from_utf8_lossy(&first).trim_end_matches('\r') != "source,q,a,rating" {
            return None;
        }
        return Some(
            crate::maze::formats::read_csv(path).map(|rows| rows.into_iter().map(|r| r.question).collect()),
        );
    }
    let is_maze = arg.contains('S') && arg.contains('G') && arg.bytes().all(|c| b"# SG".contains(&c));
    if !is_maze {
        return None;
    }
    let side = arg.len().isqrt();
    Some(if side * side != arg.len() {
        Err(anyhow::anyhow!("the maze: {} characters, not a square grid", arg.len()))
    } else if arg.bytes().filter(|&c| c == b'S').count() != 1
        || arg.bytes().filter(|&c| c == b'G').count() != 1
    {
        Err(anyhow::anyhow!("the maze: expected exactly one S and one G"))
    } else {
        Ok(vec![arg.bytes().map(|c| crate::maze::token_of(c).expect("checked above")).collect()])
    })
}

/// `hrm solve` on mazes: each maze and the model's answer as grids, and what the answer is (a
/// shortest path, a longer path, or no path from S to G).
fn solve_mazes(a: &SolveArgs, mazes: &[Vec<u8>]) -> Result<Vec<bool>> {
    let side = mazes.first().map_or(0, |m| m.len().isqrt());
    if let Some(i) = mazes.iter().position(|m| m.len() != side * side) {
        bail!("maze {}: {} cells, the first has {}", i + 1, mazes[i].len(), side * side);
    }
    let rules = Rules::Maze { side };
    let (cfg, params) = load_checkpoint_for(&a.checkpoint, a.config.as_deref(), &[rules])?;
    let examples: Vec<Example> = mazes
        .iter()
        .map(|q| Example {
            inputs: q.iter().map(|&t| t as i32).collect(),
            labels: crate::maze::label(q, side)
                .unwrap_or_else(|| q.clone())
                .iter()
                .map(|&t| t as i32)
                .collect(),
            puzzle_id: 0,
        })
        .collect();
    let pred = crate::with_backend!(a.device, |be| predict(
        be,
        &Hrm::new(be, &cfg, &params).with_origin(&a.checkpoint),
        &examples,
        256,
        |_| {}
    )?);
    let n = side * side;
    let mut out = Vec::new();
    for (k, (q, e)) in mazes.iter().zip(&examples).enumerate() {
        let answer = &pred.tokens[k * n..(k + 1) * n];
        let check = crate::maze::check_answer(q, answer, side);
        let shortest = crate::maze::endpoints(q).map(|(s, g)| crate::maze::bfs(q, side, s)[g]);
        println!("maze {}:\n{}", k + 1, rules.grid(e.inputs.iter().copied()));
        println!("answer:\n{}", rules.grid(answer.iter().map(|&t| t as i32)));
        let verdict = match (check.valid, check.optimal, shortest) {
            (_, _, Some(crate::maze::FAR) | None) => "G cannot be reached from S".to_string(),
            (true, true, Some(d)) => format!("a shortest path ({d} moves)"),
            (true, false, Some(d)) => {
                format!("a path of {} moves, NOT a shortest ({d})", check.moves.unwrap_or(0))
            }
            (false, _, Some(d)) => format!("NOT a path from S to G (the shortest has {d} moves)"),
        };
        println!("{verdict} (q_halt {:.3}, q_continue {:.3})\n", pred.q_halt[k], pred.q_continue[k]);
        out.push(check.optimal);
    }
    Ok(out)
}

/// Solve each puzzle with the model; prints the board and whether it is a valid solution
/// (mazes: the grid and whether the answer is a shortest path). Returns whether each answer is
/// valid (for mazes: a shortest path).
pub fn run_solve(a: &SolveArgs) -> Result<Vec<bool>> {
    if let Some(mazes) = maze_inputs(&a.puzzle) {
        return solve_mazes(a, &mazes?);
    }
    let puzzles = solve_inputs(&a.puzzle)?;
    let (cfg, params) = load_model_checkpoint(&a.checkpoint, a.config.as_deref())?;
    let questions: Vec<Board> = puzzles.iter().map(|p| p.0).collect();
    let examples: Vec<_> = puzzles.iter().map(|(q, s)| example_of(q, s)).collect();
    let pred = crate::with_backend!(a.device, |be| predict(
        be,
        &Hrm::new(be, &cfg, &params).with_origin(&a.checkpoint),
        &examples,
        256,
        |_| {}
    )?);
    let mut out = Vec::new();
    for (k, q) in questions.iter().enumerate() {
        let mut answer = [0u8; 81];
        for (i, &t) in pred.tokens[k * 81..(k + 1) * 81].iter().enumerate() {
            answer[i] = if (2..=10).contains(&t) { t - 1 } else { 0 };
        }
        let valid = is_valid_solution(&answer) && is_solution_of(q, &answer);
        println!("puzzle  {}", board_to_string(q, '.'));
        println!("answer  {}", board_to_string(&answer, '.'));
        print!("{}", print_board(&answer));
        println!(
            "{} (q_halt {:.3}, q_continue {:.3})\n",
            if valid { "valid solution" } else { "NOT a valid solution" },
            pred.q_halt[k],
            pred.q_continue[k]
        );
        out.push(valid);
    }
    Ok(out)
}
