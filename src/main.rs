//! The `hrm` command line: argument parsing only; the work lives in the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use hrm::backend::DeviceChoice;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hrm",
    version,
    about = "Hierarchical Reasoning Model: train, run and analyse HRM on Sudoku"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    /// (at least 1; capped at the number of cores).
    #[arg(long, global = true, value_parser = hrm::commands::args::positive_usize)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a freshly initialized checkpoint (reference initialization, seeded).
    Init {
        /// Model preset: sudoku (the paper's), small, tiny.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Architecture JSON with the reference's keys (overrides --preset).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Eval-mode ACT from a fresh carry for N segments; writes logits, q logits, final carry
    /// and per-segment exact correctness.
    Forward {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Architecture JSON (default: the config stored in the checkpoint).
        #[arg(long)]
        config: Option<PathBuf>,
        /// safetensors with `inputs` i32 [B,81], `puzzle_identifiers` i32 [B], optional `labels`.
        #[arg(long)]
        batch: PathBuf,
        #[arg(long, default_value_t = 16, value_parser = hrm::commands::args::positive_usize)]
        segments: usize,
        #[arg(long)]
        out: PathBuf,
        /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
    /// One training step from a fresh carry (exploration off): loss terms and the gradient of
    /// (total loss / batch size) under each parameter's checkpoint name.
    Grad {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        batch: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Where to run: auto (a CUDA GPU when usable, else the CPU), cpu, cuda, emu.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
    /// Train HRM (ACT with deep supervision) on a dataset from `hrm data build`.
    Train(Box<hrm::commands::train::TrainArgs>),
    /// Evaluate a checkpoint on puzzle sets: all segments, exact / cell accuracy per set.
    Eval(hrm::commands::eval::EvalArgs),
    /// Solve puzzles with a checkpoint and check the answers.
    Solve(hrm::commands::eval::SolveArgs),
    /// Make easy puzzles, train a small HRM on the CPU, evaluate it on held-out puzzles.
    Demo(hrm::commands::train::DemoArgs),
    /// Time a training step and 16-segment inference (ms, tokens/s, TFLOP/s, MFU, memory).
    Bench(hrm::commands::bench::BenchArgs),
    /// Draw a run's curves (loss terms, accuracy, halting step, throughput) as SVG.
    Plot {
        run: PathBuf,
        /// Output directory (default: RUN/plots).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Mechanistic analyses (Augmented HRM): per-segment trajectory, trivial puzzles.
    Analyze {
        #[command(subcommand)]
        cmd: hrm::commands::analyze::AnalyzeCommand,
    },
    /// What this machine offers (driver, GPUs, CUDA libraries, CPU features) and what
    /// `--device auto` will pick and why.
    Doctor(hrm::commands::doctor::DoctorArgs),
    /// Sudoku data: generate, import, build, stats.
    Data {
        #[command(subcommand)]
        cmd: hrm::sudoku::cli::DataCommand,
    },
}

/// Exit status 1 on an error, or 128 + signal when training stopped on SIGINT or SIGTERM
/// (after writing its checkpoint), as a shell reports a process ended by that signal.
fn main() -> std::process::ExitCode {
    // A device out of memory unwinds with its own payload: reported below, not as a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        if p.downcast_ref::<hrm::backend::DeviceOutOfMemory>().is_none() {
            default_hook(info)
        }
    }));
    let outcome = match std::panic::catch_unwind(run) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<hrm::backend::DeviceOutOfMemory>() {
            Ok(oom) => Err(anyhow::anyhow!("{oom}")),
            Err(other) => std::panic::resume_unwind(other),
        },
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            let interrupted = e.downcast_ref::<hrm::train::interrupt::Interrupted>();
            std::process::ExitCode::from(interrupted.map_or(1, |i| i.exit_code()))
        }
    }
}

fn run() -> Result<()> {
    hrm::tune_allocator();
    hrm::envvars::check()?;
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `train --resume` honors or refuses each flag given: it needs to know which were typed.
    if let (Cmd::Train(a), Some(m)) = (&mut cli.cmd, matches.subcommand_matches("train")) {
        a.given = m
            .ids()
            .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.as_str().to_string())
            .collect();
    }
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(n, |c| c.get());
        let n = if n > cores {
            eprintln!("warning: --threads {n} is more than the {cores} cores of this machine; using {cores}");
            cores
        } else {
            n
        };
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    match cli.cmd {
        Cmd::Init { preset, config, seed, out } => {
            let inputs: Vec<hrm::fsutil::Input> = config.iter().map(|c| ("--config", c.as_path())).collect();
            hrm::fsutil::check_output("--out", &out, &inputs)?;
            let cfg = match config {
                Some(p) => hrm::config::ModelConfig::from_json_file(&p)?,
                None => hrm::config::ModelConfig::preset(&preset)?,
            };
            let purpose = hrm::model::memory::Purpose::Eval { batch: 0 };
            hrm::model::memory::check_host(&cfg, purpose, hrm::backend::DeviceChoice::Cpu)?;
            let params = hrm::model::HostParams::init(&cfg, &mut hrm::rng::seeded(seed));
            hrm::model::checkpoint::save_checkpoint(&out, &cfg, &params)?;
            eprintln!("wrote {} ({} trainable parameters)", out.display(), params.num_trainable(&cfg));
        }
        Cmd::Forward { checkpoint, config, batch, segments, out, device } => {
            hrm::commands::run_forward(&checkpoint, config.as_deref(), &batch, segments, &out, device)?
        }
        Cmd::Grad { checkpoint, config, batch, out, device } => {
            hrm::commands::run_grad(&checkpoint, config.as_deref(), &batch, &out, device)?
        }
        Cmd::Data { cmd } => hrm::sudoku::cli::run(cmd)?,
        Cmd::Analyze { cmd } => {
            hrm::commands::analyze::run_analyze(&cmd)?.iter().for_each(|f| println!("{}", f.display()))
        }
        Cmd::Train(a) => {
            hrm::commands::train::run_train(&a)?;
        }
        Cmd::Eval(a) => {
            hrm::commands::eval::run_eval(&a)?;
        }
        Cmd::Solve(a) => {
            hrm::commands::eval::run_solve(&a)?;
        }
        Cmd::Bench(a) => {
            hrm::commands::bench::run_bench(&a)?;
        }
        Cmd::Plot { run, out } => {
            for f in hrm::analysis::plot::plot_run(&run, out.as_deref())? {
                println!("{}", f.display());
            }
        }
        Cmd::Doctor(a) => {
            hrm::commands::doctor::run_doctor(&a)?;
        }
        Cmd::Demo(a) => {
            hrm::commands::train::run_demo(&a)?;
        }
    }
    Ok(())
}
