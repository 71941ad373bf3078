//! bpfplan: a TOML manifest of eBPF programs, maps, pins and attach points
//! becomes an ordered plan of plain `bpftool` commands to review, run and
//! reverse.

pub mod bench;
pub mod cli;
pub mod diag;
pub mod drift;
pub mod exec;
pub mod host;
pub mod inspect;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod render;
pub mod state;
pub mod step;
pub mod traffic;
pub mod validate;

use anyhow::{Context, Result};
use clap::Parser;
use std::path::Path;

use crate::cli::{Cli, Command, Target};
use crate::diag::Source;
use crate::host::HostFacts;
use crate::plan::{Plan, PlanOptions};
use crate::render::Direction;

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
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Run the command line; returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => 0,
        Err(Failure::Manifest | Failure::Differs) => 2,
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Plan {
            target,
            format,
            destroy: false,
            detailed_exitcode: true,
        } => {
            let plan = load_plan(&target)?;
            match exec::pending(&plan)? {
                drift::Changes::None => {
                    println!("No changes: the kernel matches {}", plan.manifest.display());
                    Ok(())
                }
                drift::Changes::Entries(steps) => {
                    let changes = Plan {
                        manifest: plan.manifest.clone(),
                        steps,
                    };
                    print!("{}", render::render(&changes, format, Direction::Apply)?);
                    Err(Failure::Differs)
                }
                drift::Changes::Full(reason) => {
                    eprintln!("{reason}: apply runs the whole plan");
                    print!("{}", render::render(&plan, format, Direction::Apply)?);
                    Err(Failure::Differs)
                }
            }
        }
        Command::Status { target, format } => {
            let plan = load_plan(&target)?;
            exec::check_privileges()?;
            let report = drift::status(&plan)?;
            match format {
                cli::ReportFormat::Text => print!("{}", drift::status_text(&report)),
                cli::ReportFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding JSON")?
                ),
            }
            if report.in_sync {
                Ok(())
            } else {
                Err(Failure::Differs)
            }
        }
        Command::Plan {
            target,
            format,
            destroy,
            ..
        } => {
            let plan = load_plan(&target)?;
            let (plan, dir) = if destroy {
                (plan.destroy(), Direction::Destroy)
            } else {
                (plan, Direction::Apply)
            };
            print!("{}", render::render(&plan, format, dir)?);
            Ok(())
        }
        Command::Apply { target } => {
            let plan = load_plan(&target)?;
            exec::apply(&plan)?;
            Ok(())
        }
        Command::Destroy { target } => {
            let plan = load_plan(&target)?;
            exec::destroy(&plan)?;
            Ok(())
        }
        Command::Bench {
            target,
            rounds,
            quick,
            format,
            chart,
            cgroup_parent,
            pin_parent,
        } => {
            // Validate first, with the two variables bench sets: a manifest
            // error exits 2 before anything is made.
            let mut probe = target.clone();
            probe.vars.push(("cgroup".into(), "auto".into()));
            probe
                .vars
                .push(("pin_dir".into(), host::DEFAULT_BPFFS.into()));
            if let Err(e) = load_plan(&probe) {
                eprintln!(
                    "error: bench needs a manifest that declares `cgroup` and `pin_dir` in `[vars]`"
                );
                return Err(e);
            }
            let opts = bench::BenchOptions {
                rounds,
                quick,
                cgroup_parent,
                pin_parent,
                chart,
            };
            let report = bench::bench(&target, &opts)?;
            match format {
                cli::ReportFormat::Text => print!("{}", bench::text(&report)),
                cli::ReportFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding JSON")?
                ),
            }
            Ok(())
        }
    }
}

/// Read, validate and plan a manifest, printing its diagnostics to stderr.
pub fn load_plan(target: &Target) -> Result<Plan, Failure> {
    let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    let text = match std::fs::read_to_string(&target.manifest) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "error: cannot read manifest {}: {e}",
                target.manifest.display()
            );
            return Err(Failure::Manifest);
        }
    };
    let src = Source::new(&target.manifest, text);
    let env = validate::Env {
        host: &host,
        overrides: &target.vars,
        exists: &|p: &Path| p.is_file(),
    };
    match validate::validate(&src, &env) {
        Ok(checked) => {
            for w in &checked.warnings {
                eprint!("{}", src.render(w));
            }
            let opts = PlanOptions::for_host(target.build_dir.clone());
            Ok(plan::plan(&checked.model, &opts))
        }
        Err(diags) => {
            let errors = diags.iter().filter(|d| d.is_error()).count();
            for d in &diags {
                eprintln!("{}", src.render(d));
            }
            eprintln!(
                "error: {} has {errors} error{}; nothing was changed",
                target.manifest.display(),
                if errors == 1 { "" } else { "s" }
            );
            Err(Failure::Manifest)
        }
    }
}
