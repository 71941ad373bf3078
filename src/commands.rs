//! One function per verb: load the manifest, call the layer that does the
//! work, print its result, map it to an exit code.

use anyhow::Context;

use crate::Failure;
use crate::cli::{self, Command, ReportFormat, Target};
use crate::host::{self, HostFacts};
use crate::kernel::apply;
use crate::kernel::audit::{self, AuditContext, AuditLog};
use crate::kernel::events::JsonLines;
use crate::kernel::exec::{Listener, Printer};
use crate::kernel::saved;
use crate::kernel::status;
use crate::manifest::{self, LoadError};
use crate::plan::render::{self, Direction, Format};
use crate::plan::{self, Plan, PlanOptions};

pub(crate) fn dispatch(cli: cli::Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Plan {
            target,
            format,
            destroy: _,
            detailed_exitcode: _,
            out: Some(out),
        } => {
            let plan = load_plan(&target)?;
            let saved = apply::save(&plan, &target.vars)?;
            let mut bytes = serde_json::to_vec_pretty(&saved).context("encoding the plan")?;
            bytes.push(b'\n');
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            print!(
                "{}",
                render::render_reviewed(
                    &saved.plan,
                    Some(&saved.review),
                    format,
                    Direction::Apply
                )?
            );
            Ok(())
        }
        Command::Plan {
            target,
            format,
            destroy,
            detailed_exitcode,
            out: None,
        } => plan_cmd(&target, format, destroy, detailed_exitcode),
        Command::Show { file, format } => {
            let (saved, _) = saved::read(&file)?;
            print!(
                "{}",
                render::render_reviewed(
                    &saved.plan,
                    Some(&saved.review),
                    format,
                    Direction::Apply
                )?
            );
            Ok(())
        }
        Command::Status { target, format } => status_cmd(&target, format),
        Command::Apply {
            manifest,
            vars,
            build_dir,
            plan: saved_plan,
            format,
        } => {
            let outcome = |a| match a {
                apply::Applied::NoChanges => "no_changes",
                apply::Applied::Changed => "changed",
            };
            match (manifest, saved_plan) {
                (_, Some(file)) => {
                    let (saved, hash) = saved::read(&file)?;
                    let mut audit = AuditContext::for_plan("apply", &saved.plan)?;
                    audit.plan_hash = hash.clone();
                    let reviewed = apply::Reviewed { saved, hash };
                    change("apply", format, audit, |listeners| {
                        apply::apply(&reviewed.saved.plan, listeners, Some(&reviewed)).map(outcome)
                    })
                }
                (Some(manifest), None) => {
                    let target = Target {
                        manifest,
                        vars,
                        build_dir,
                    };
                    let plan = load_plan(&target)?;
                    let audit = AuditContext::for_plan("apply", &plan)?;
                    change("apply", format, audit, |listeners| {
                        apply::apply(&plan, listeners, None).map(outcome)
                    })
                }
                (None, None) => Err(Failure::Runtime(anyhow::anyhow!(
                    "apply needs a manifest or --plan FILE"
                ))),
            }
        }
        Command::Adopt { target, format } => {
            let plan = load_plan(&target)?;
            let audit = AuditContext::for_plan("adopt", &plan)?;
            change("adopt", format, audit, |listeners| {
                apply::adopt(&plan, listeners).map(|()| "adopted")
            })
        }
        Command::Destroy { target, format } => {
            let plan = load_plan(&target)?;
            let audit = AuditContext::for_plan("destroy", &plan)?;
            change("destroy", format, audit, |listeners| {
                apply::destroy(&plan, listeners).map(|()| "destroyed")
            })
        }
        Command::Log {
            deployment,
            since,
            format,
        } => {
            let since = since.as_deref().map(audit::parse_since).transpose()?;
            let lines = audit::read(&audit::log_path(), deployment.as_deref(), since)?;
            match format {
                ReportFormat::Text => print!("{}", audit::text(&lines)),
                ReportFormat::Json => {
                    for l in &lines {
                        println!("{}", serde_json::to_string(l).context("encoding JSON")?);
                    }
                }
            }
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
    audit: AuditContext,
    f: impl FnOnce(Vec<&mut dyn Listener>) -> anyhow::Result<&'static str>,
) -> Result<(), Failure> {
    let mut log = AuditLog::open(audit)?;
    let result = match format {
        ReportFormat::Text => f(vec![&mut Printer::default(), &mut log]).map(|_| ()),
        ReportFormat::Json => {
            let mut json = JsonLines::new();
            let outcome = f(vec![&mut json, &mut log]);
            match outcome {
                Ok(outcome) => {
                    json.result(verb, true, outcome, None);
                    Ok(())
                }
                Err(e) => {
                    let stale = e.downcast_ref::<apply::Mismatch>().is_some();
                    let outcome = if stale { "stale" } else { "failed" };
                    json.result(verb, false, outcome, Some(&format!("{e:#}")));
                    Err(e)
                }
            }
        }
    };
    match result {
        Ok(()) => Ok(()),
        // A stale saved plan or a deployment that does not match for
        // adoption changed nothing: exit 2, like a manifest error.
        Err(e) if e.downcast_ref::<apply::Mismatch>().is_some() => {
            eprintln!("error: {e:#}");
            Err(Failure::Differs)
        }
        Err(e) => Err(e.into()),
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
    let review = apply::pending(&plan)?;
    if review.decision == "nothing" {
        if format == Format::Json {
            print!(
                "{}",
                render::render_reviewed(&plan, Some(&review), format, Direction::Apply)?
            );
        } else {
            println!("No changes: the kernel matches {}", plan.manifest.display());
        }
        return Ok(());
    }
    match (review.decision.as_str(), &review.reason) {
        ("refused", Some(why)) => eprintln!("apply would refuse: {why}"),
        ("fresh", _) => eprintln!("not applied yet: apply runs the whole plan"),
        ("replace", Some(why)) => eprintln!("{why}: apply replaces the deployment"),
        (_, Some(why)) => eprintln!("{why}"),
        _ => {}
    }
    if format == Format::Json {
        print!(
            "{}",
            render::render_reviewed(&plan, Some(&review), format, Direction::Apply)?
        );
    } else {
        let changes = Plan {
            steps: review.changes.clone(),
            ..plan
        };
        print!("{}", render::render(&changes, format, Direction::Apply)?);
    }
    Err(Failure::Differs)
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
