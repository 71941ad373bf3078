//! bpfplan: a TOML manifest of eBPF programs, maps, pins and attach points
//! becomes an ordered plan of plain `bpftool` commands to review, run and
//! reverse.
//!
//! The layers, each importing only those before it: `util` and `host`
//! (leaves), `manifest` (text → checked model), `plan` (model → steps →
//! text, sh, JSON), `kernel` (look, decide, execute, record), `bench` and
//! `sandbox` (measuring), then `cli` and `commands` (the verbs).

/// A line on stderr. A closed or full stderr is no reason to stop or to
/// panic: what bpfplan did stands, and its exit code says so.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `say!` without the newline.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

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

/// Why bpfplan stopped. The exit codes are Terraform's: 0 nothing to
/// change, 2 changes or drift (and only that), 1 every error.
#[derive(Debug)]
pub enum Failure {
    /// The manifest (or a `--var`) is wrong; already reported. Exit 1.
    Manifest,
    /// A command or the host failed. Exit 1.
    Runtime(anyhow::Error),
    /// The kernel differs from the manifest (status, plan --detailed-exitcode).
    /// Exit 2.
    Differs,
    /// A check failed and said so itself (doctor, a stale saved plan). Exit 1.
    Quiet,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Exit code: changes or drift (status, `plan --detailed-exitcode`).
pub const EXIT_DIFFERS: i32 = 2;

/// Run the command line; returns the exit code.
pub fn run() -> i32 {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on a usage error; 2 means "changes" here, so a
            // usage error is an error like any other: 1 (help and version 0).
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    match commands::dispatch(cli) {
        Ok(()) => 0,
        Err(Failure::Differs) => EXIT_DIFFERS,
        Err(Failure::Manifest | Failure::Quiet) => 1,
        Err(Failure::Runtime(e)) => {
            say!("error: {e:#}");
            1
        }
    }
}
