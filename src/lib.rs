//! bpfplan: a TOML manifest of eBPF programs, maps, pins and attach points
//! becomes an ordered plan of plain `bpftool` commands to review, run and
//! reverse.
//!
//! The layers, each importing only those before it: `util` and `host`
//! (leaves), `manifest` (text → checked model), `plan` (model → steps →
//! text, sh, JSON), `kernel` (look, decide, execute, record), `bench` and
//! `sandbox` (measuring), then `cli` and `commands` (the verbs).

pub(crate) mod bench;
pub mod cli;
mod commands;
pub mod host;
pub mod kernel;
pub mod manifest;
pub mod plan;
pub mod sandbox;
pub(crate) mod util;

use clap::Parser;

pub use commands::load_plan;

/// Why bpfplan stopped.
#[derive(Debug)]
pub enum Failure {
    /// The manifest (or a `--var`) is wrong; already reported. Exit 2.
    Manifest,
    /// A command or the host failed. Exit 1.
    Runtime(anyhow::Error),
    /// The kernel differs from the manifest (status, plan --detailed-exitcode).
    /// Exit 2.
    Differs,
    /// A check failed and said so itself (doctor). Exit 1.
    Quiet,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Run the command line; returns the exit code.
pub fn run() -> i32 {
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(()) => 0,
        Err(Failure::Manifest | Failure::Differs) => 2,
        Err(Failure::Quiet) => 1,
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
