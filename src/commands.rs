//! One function per verb: load the manifest, call the layer that does the
//! work, print its result, map it to an exit code.

use anyhow::Context;

use crate::Failure;
use crate::cli::{self, Command, ReportFormat, Target};
use crate::host::{self, HostFacts};
use crate::kernel::apply::{self, Pending};
use crate::kernel::events::JsonLines;
use crate::kernel::exec::{Listener, Printer};
use crate::kernel::status;
use crate::manifest::{self, LoadError};
use crate::plan::render::{self, Direction, Format};
use crate::plan::{self, Plan, PlanOptions};

pub(crate) fn dispatch(cli: cli::Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Plan {
            target,
            format,
            destroy,
            detailed_exitcode,
        } => plan_cmd(&target, format, destroy, detailed_exitcode),
        Command::Status { target, format } => status_cmd(&target, format),
        Command::Apply { target, format } => {
            let plan = load_plan(&target)?;
            change("apply", format, |listeners| {
                apply::apply(&plan, listeners).map(|a| match a {
                    apply::Applied::NoChanges => "no_changes",
                    apply::Applied::Changed => "changed",
                })
            })
        }
        Command::Destroy { target, format } => {
            let plan = load_plan(&target)?;
            change("destroy", format, |listeners| {
                apply::destroy(&plan, listeners).map(|()| "destroyed")
            })
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
            let opts = crate::bench::BenchOptions {
                rounds,
                quick,
                cgroup_parent,
                pin_parent,
                chart,
            };
            let report = crate::bench::bench(&target, &opts)?;
            match format {
                ReportFormat::Text => print!("{}", crate::bench::text(&report)),
                ReportFormat::Json => println!("{}", to_json(&report)?),
            }
            Ok(())
        }
    }
}

/// Run a verb that changes the kernel, with the listeners its format asks
/// for; in JSON, the last line says how it ended.
fn change(
    verb: &str,
    format: ReportFormat,
    f: impl FnOnce(Vec<&mut dyn Listener>) -> anyhow::Result<&'static str>,
) -> Result<(), Failure> {
    match format {
        ReportFormat::Text => {
            f(vec![&mut Printer::default()])?;
            Ok(())
        }
        ReportFormat::Json => {
            let mut json = JsonLines::new();
            let outcome = f(vec![&mut json]);
            match outcome {
                Ok(outcome) => {
                    json.result(verb, true, outcome, None);
                    Ok(())
                }
                Err(e) => {
                    json.result(verb, false, "failed", Some(&format!("{e:#}")));
                    Err(e.into())
                }
            }
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(v).context("encoding JSON")
}

fn plan_cmd(
    target: &Target,
    format: Format,
    destroy: bool,
    detailed_exitcode: bool,
) -> Result<(), Failure> {
    let plan = load_plan(target)?;
    if !detailed_exitcode {
        let (plan, dir) = if destroy {
            (plan.destroy(), Direction::Destroy)
        } else {
            (plan, Direction::Apply)
        };
        print!("{}", render::render(&plan, format, dir)?);
        return Ok(());
    }
    match apply::pending(&plan)? {
        Pending::None => {
            println!("No changes: the kernel matches {}", plan.manifest.display());
            Ok(())
        }
        Pending::Steps { reason, steps } => {
            if let Some(reason) = reason {
                eprintln!("{reason}");
            }
            let changes = Plan { steps, ..plan };
            print!("{}", render::render(&changes, format, Direction::Apply)?);
            Err(Failure::Differs)
        }
    }
}

fn status_cmd(target: &Target, format: ReportFormat) -> Result<(), Failure> {
    let plan = load_plan(target)?;
    let report = status::status(&plan)?;
    match format {
        ReportFormat::Text => print!("{}", status::text(&report)),
        ReportFormat::Json => println!("{}", to_json(&report)?),
    }
    if report.in_sync {
        Ok(())
    } else {
        Err(Failure::Differs)
    }
}

/// Read, validate and plan a manifest, printing its diagnostics to stderr.
pub fn load_plan(target: &Target) -> Result<Plan, Failure> {
    let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    match manifest::load(&target.manifest, &target.vars, &host) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprint!("{w}");
            }
            let build_dir = match &target.build_dir {
                // Relative to where bpfplan runs, like any path argument.
                Some(dir) => std::path::absolute(dir).context("resolving --build-dir")?,
                None => crate::kernel::build::default_build_dir(&loaded.model.manifest),
            };
            let opts = PlanOptions::for_host(build_dir);
            Ok(plan::plan(&loaded.model, &opts))
        }
        Err(LoadError::Unreadable(msg)) => {
            eprintln!("error: {msg}");
            Err(Failure::Manifest)
        }
        Err(LoadError::Invalid { rendered, errors }) => {
            for d in &rendered {
                eprintln!("{d}");
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
