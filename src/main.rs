//! Minimal `hrm` binary (the main engineer owns the full CLI).
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hrm", about = "Hierarchical Reasoning Model tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sudoku data: generate, import, build, stats.
    Data {
        #[command(subcommand)]
        cmd: hrm::sudoku::cli::DataCommand,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Command::Data { cmd } => hrm::sudoku::cli::run(cmd)?,
    }
    Ok(())
}
