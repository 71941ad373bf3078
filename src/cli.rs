//! The command line: `plan`, `apply`, `destroy`, and their shared options.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::plan::render::Format;

const EXIT_CODES: &str = "\
Exit codes (Terraform's):
  0  success (status: in sync; plan --detailed-exitcode: no changes)
  1  an error: a usage or manifest error, a stale saved plan, a failed
     command (apply rolled back what it had done)
  2  only for status and plan --detailed-exitcode: the kernel differs
     from the manifest (changes or drift)";

#[derive(Debug, Parser)]
#[command(
    name = "bpfplan",
    version,
    about = "Declarative, auditable eBPF deployments: a TOML manifest becomes a plan of plain bpftool commands",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the commands apply (or destroy) would run now, changing
    /// nothing: as root it looks at the kernel and shows exactly what would
    /// run, numbered as the command numbers it; otherwise (or with
    /// --manifest-only) the manifest's plan.
    Plan {
        #[command(flatten)]
        target: Target,
        /// How to show the plan.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Show what destroy would run instead.
        #[arg(long)]
        destroy: bool,
        /// Exit 0 when apply (or destroy) would change nothing, 2 when it
        /// would change something (root: it needs a look at the kernel).
        #[arg(long, conflicts_with = "manifest_only")]
        detailed_exitcode: bool,
        /// Show the manifest's plan without looking at the kernel (what a
        /// first apply runs when its pin directories exist), as a reviewer
        /// without root sees it.
        #[arg(long)]
        manifest_only: bool,
        /// Also save the plan to FILE (root: builds the objects and looks at
        /// the kernel), for `bpfplan show` and `bpfplan apply --plan`.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["destroy", "detailed_exitcode", "manifest_only"])]
        out: Option<PathBuf>,
    },
    /// Show a saved plan exactly as `plan` showed it.
    Show {
        /// The file `plan --out` wrote.
        file: PathBuf,
        /// How to show the plan.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Compare the live kernel with the manifest: each program, map, entry
    /// set and attachment, plus sockhash sizes and counters.
    Status {
        #[command(flatten)]
        target: Target,
        /// text, json or prometheus (the text exposition format).
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
        /// Write the Prometheus metrics to DIR/bpfplan-DEPLOYMENT.prom for
        /// node_exporter's textfile collector (a new file renamed into
        /// place, mode 0644), instead of printing the report.
        #[arg(long, value_name = "DIR")]
        textfile: Option<PathBuf>,
        /// Also count what each program runs, and its nanoseconds per run,
        /// for SECONDS: the kernel's BPF run statistics are on for that
        /// window only (kernel.bpf_stats_enabled is never changed).
        #[arg(long, value_name = "SECONDS", value_parser = parse_window)]
        stats: Option<std::time::Duration>,
    },
    /// Compile, load, pin and attach what the manifest describes; or, with
    /// --plan, exactly what a saved plan holds.
    Apply {
        /// The manifest (TOML); not with --plan.
        #[arg(required_unless_present = "plan", conflicts_with = "plan")]
        manifest: Option<PathBuf>,
        /// Override a variable declared in `[vars]` (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var, conflicts_with = "plan")]
        vars: Vec<(String, String)>,
        /// Where compiled objects go.
        #[arg(long, value_name = "DIR", conflicts_with = "plan")]
        build_dir: Option<PathBuf>,
        /// Apply this saved plan (from `plan --out`): its steps and objects,
        /// refused (exit 1) if the deployment changed since it was made.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        /// text (progress for people) or json (one event per line).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Take over a deployment made by hand or by the sh script, when the
    /// kernel holds exactly what the manifest makes (else exit 1 and the
    /// differences).
    Adopt {
        #[command(flatten)]
        target: Target,
        /// text (progress for people) or json (one event per line).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Detach and unpin what apply set up.
    Destroy {
        #[command(flatten)]
        target: Target,
        /// text (progress for people) or json (one event per line).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Compile what the manifest compiles into the build cache, changing
    /// nothing in the kernel (an apply afterwards needs no compiler).
    Build {
        #[command(flatten)]
        target: Target,
    },
    /// Check that this host can run a manifest (the bypass by default):
    /// privileges, bpftool, clang when something must be compiled, bpffs,
    /// cgroup v2, BTF, and the kernel features; each with its fix. Exit 0
    /// when everything needed is there, 1 otherwise.
    Doctor {
        /// The manifest (default: the installed bypass example).
        manifest: Option<PathBuf>,
        /// Override a variable declared in `[vars]` (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Where the manifest's objects are built.
        #[arg(long, value_name = "DIR")]
        build_dir: Option<PathBuf>,
        /// text or json.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Instead: try, on this kernel, each socket behaviour applications
        /// rely on (MSG_OOB, MSG_WAITALL, SO_RCVLOWAT, EINTR, splice,
        /// TCP_INFO, half-close, MSG_PEEK, FIONREAD) over plain TCP and over
        /// the manifest's bypass, in a cgroup and pin directory of its own,
        /// and say which differ and what to do (root).
        #[arg(long)]
        compat: bool,
    },
    /// Write man pages or shell completions (for packagers).
    Generate {
        /// man (one page per verb), bash, zsh or fish.
        #[arg(value_enum)]
        what: Generated,
        /// The directory to write into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Read back the audit log of what apply, destroy and adopt ran.
    Log {
        /// Only lines whose manifest path or deployment holds this text.
        #[arg(long, value_name = "TEXT")]
        deployment: Option<String>,
        /// Only lines since this time (2026-11-26T12:00:00Z) or this long
        /// ago (15m, 2h, 1d).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// text or json (one line each, as stored).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Measure a bypass manifest: loopback TCP vs the bypass vs Unix sockets,
    /// in cgroups of its own (the manifest must declare `cgroup` and `pin_dir`).
    Bench {
        #[command(flatten)]
        target: Target,
        /// Rounds of interleaved runs (each figure is their median).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Tiny durations and one round: checks the harness, measures nothing.
        #[arg(long)]
        quick: bool,
        /// text (a table) or json.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// Also write an SVG chart.
        #[arg(long, value_name = "FILE")]
        chart: Option<PathBuf>,
        /// Make the benchmark's cgroups under this cgroup v2 directory.
        #[arg(long, value_name = "DIR")]
        cgroup_parent: Option<PathBuf>,
        /// Make the benchmark's pin directory under this bpffs directory.
        #[arg(long, value_name = "DIR")]
        pin_parent: Option<PathBuf>,
        /// Run only these workloads (comma-separated: rr, stream, connect);
        /// the control plane timing is then skipped.
        #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
        workload: Vec<crate::bench::Workload>,
        /// Measure request/response and streams at these message sizes
        /// (your services' own; bytes, comma-separated, `k` for KiB)
        /// instead of 64 B, 1 KiB, 16 KiB and 256 B, 4 KiB, 64 KiB.
        #[arg(long, value_delimiter = ',', value_parser = parse_size, value_name = "LIST")]
        sizes: Vec<usize>,
        /// Calibrate `bulk_bytes`: measure the bypass again under each of
        /// these bounds (bytes, comma-separated, `k`/`m` suffixes, 0 for
        /// never) and say which to set. The manifest must declare it.
        #[arg(long, value_delimiter = ',', value_parser = parse_bound, value_name = "LIST")]
        bulk_bytes: Vec<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
    Prometheus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The manifest (TOML).
    pub manifest: PathBuf,
    /// Override a variable declared in `[vars]` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Where compiled objects go (default: a directory of the manifest's
    /// own under /var/cache/bpfplan, or BPFPLAN_CACHE_DIR).
    #[arg(long, value_name = "DIR")]
    pub build_dir: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (n, mult) = match s.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1024),
        None => (s, 1),
    };
    match n.parse::<usize>() {
        Ok(v) if v > 0 && v * mult <= 16 << 20 => Ok(v * mult),
        _ => Err(format!("`{s}` is not a size from 1 byte to 16384k")),
    }
}

fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 3600")),
    }
}

fn parse_bound(s: &str) -> Result<u64, String> {
    let (n, mult) = match s.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1u64 << 10),
        None => match s.strip_suffix(['m', 'M']) {
            Some(n) => (n, 1 << 20),
            None => (s, 1),
        },
    };
    n.parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a byte count (like 0, 65536, 256k or 1m)"))
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, found `{s}`")),
    }
}
