//! One function per verb: load the manifest, call the layer that does the
//! work, print its result, map it to an exit code.

use anyhow::Context;

use std::path::{Path, PathBuf};

use crate::Failure;
use crate::cli::{self, Command, ReportFormat, StatusFormat, Target};
use crate::host::{self, HostFacts};
use crate::kernel::act::carry::Applied;
use crate::kernel::act::events::JsonLines;
use crate::kernel::act::exec::{Event, Listener, Printer};
use crate::kernel::act::seam::{Faults, Live};
use crate::kernel::look::prefetch;
use crate::kernel::remember::audit::{self, AuditContext, AuditLog};
use crate::kernel::remember::{saved, trust};
use crate::kernel::verbs::apply;
use crate::kernel::verbs::destroy::{self, Destroyed};
use crate::kernel::verbs::{metrics, status};
use crate::manifest::{self, LoadError};
use crate::plan::render::{self, Direction, Format};
use crate::plan::step::Step;
use crate::plan::{self, DecisionKind, Plan, PlanOptions};

pub(crate) fn dispatch(cli: cli::Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Plan {
            target,
            format,
            out: Some(out),
            ..
        } => plan_out(&target, format, &out),
        Command::Plan {
            target,
            format,
            destroy,
            detailed_exitcode,
            manifest_only,
            out: None,
        } => plan_cmd(
            &target,
            format,
            if destroy {
                Direction::Destroy
            } else {
                Direction::Apply
            },
            detailed_exitcode,
            manifest_only,
        ),
        Command::Show { file, format } => show_cmd(&file, format),
        Command::Status {
            target,
            format,
            textfile,
            stats,
        } => status_cmd(&target, format, textfile.as_deref(), stats),
        Command::Apply {
            manifest,
            vars,
            build_dir,
            plan: saved_plan,
            format,
        } => match (manifest, saved_plan) {
            (_, Some(file)) => apply_saved(&file, format),
            (Some(manifest), None) => apply_cmd(
                &Target {
                    manifest,
                    vars,
                    build_dir,
                },
                format,
            ),
            (None, None) => Err(Failure::Runtime(anyhow::anyhow!(
                "apply needs a manifest or --plan FILE"
            ))),
        },
        Command::Adopt { target, format } => adopt_cmd(&target, format),
        Command::Destroy { target, format } => destroy_cmd(&target, format),
        Command::Build { target } => build_cmd(&target),
        Command::Doctor {
            manifest,
            vars,
            build_dir,
            format,
            compat: true,
        } => compat_cmd(manifest, vars, build_dir, format),
        Command::Doctor {
            manifest,
            vars,
            build_dir,
            format,
            compat: false,
        } => doctor_cmd(manifest, vars, build_dir, format),
        Command::Generate { what, out } => Ok(generate(what, &out)?),
        Command::Log {
            deployment,
            since,
            format,
        } => log_cmd(deployment.as_deref(), since.as_deref(), format),
        Command::Bench {
            target,
            rounds,
            quick,
            format,
            chart,
            cgroup_parent,
            pin_parent,
            workload,
            sizes,
            bulk_bytes,
        } => bench_cmd(
            &target,
            format,
            crate::bench::BenchOptions {
                rounds,
                quick,
                cgroup_parent,
                pin_parent,
                chart,
                workloads: workload,
                sizes,
                bulk: bulk_bytes,
            },
        ),
    }
}

/// The kernel bpfplan acts on: the live one, with the faults a test asks
/// for through the environment.
fn kernel() -> Faults<Live> {
    Faults::from_env(Live::default())
}

/// Read ahead, on another core, the maps of the manifest's deployment on
/// record while the manifest is read (`look::prefetch`; off with
/// `BPFPLAN_PREFETCH=0`).
fn ahead(target: &Target) -> Option<std::thread::JoinHandle<prefetch::Prefetch>> {
    if std::env::var_os("BPFPLAN_PREFETCH").is_some_and(|v| v == "0") {
        return None;
    }
    prefetch::start(&target.manifest)
}

/// `kernel()`, with what was read ahead.
fn kernel_ahead(ahead: Option<std::thread::JoinHandle<prefetch::Prefetch>>) -> Faults<Live> {
    Faults::from_env(Live {
        prefetch: ahead.and_then(|h| h.join().ok()),
    })
}

/// `plan --out FILE`: build, save what was reviewed, print it: what
/// `apply --plan FILE` runs (the objects are built and kept in the file).
fn plan_out(target: &Target, format: Format, out: &Path) -> Result<(), Failure> {
    let plan = std::sync::Arc::new(load_plan(target)?);
    trust::refuse_link(out)?;
    let saved = apply::save(&plan, &mut kernel(), &target.vars)?;
    let mut bytes = serde_json::to_vec_pretty(&saved).context("encoding the plan")?;
    bytes.push(b'\n');
    trust::write_new(out, &bytes)?;
    show_saved(&saved, format)
}

/// Print a saved plan's review: what `apply --plan` runs.
fn show_saved(saved: &saved::SavedPlan, format: Format) -> Result<(), Failure> {
    emit_with(|w| {
        render::render_decided_to(w, &saved.plan, &saved.review, format, Direction::Apply)
    })?;
    Ok(())
}

/// A saved plan, once it holds up: root's own file, and exactly the plan
/// its manifest and variables make today, so a file cannot ask root for a
/// step, an object or a path its manifest does not. (What apply would run
/// is checked against the file's review once apply has looked.)
fn read_saved(file: &Path) -> Result<(saved::SavedPlan, String), Failure> {
    let (mut saved, hash) = saved::read(file)?;
    let build_dir = saved.plan.outline().iter().find_map(|s| match s {
        Step::MakeBuildDir { dir } => Some(dir.clone()),
        _ => None,
    });
    let target = Target {
        manifest: saved.manifest.clone(),
        vars: saved.vars.clone(),
        build_dir,
    };
    let today = load_plan(&target)?;
    if today != *saved.plan {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{}: {} with the variables saved in the file no longer makes the plan the file \
             holds (the manifest changed since, or the file was edited); nothing was changed: \
             make the plan again",
            file.display(),
            saved.manifest.display()
        )));
    }
    // The file holds the plan without its entry steps; today's plan is the
    // same plan with them.
    saved.plan = std::sync::Arc::new(today);
    Ok((saved, hash))
}

fn show_cmd(file: &Path, format: Format) -> Result<(), Failure> {
    let (saved, _) = read_saved(file)?;
    show_saved(&saved, format)
}

fn outcome(a: Applied) -> &'static str {
    match a {
        Applied::NoChanges => "no_changes",
        Applied::Changed => "changed",
    }
}

/// `apply --plan FILE`: exactly what was reviewed, or nothing.
fn apply_saved(file: &Path, format: ReportFormat) -> Result<(), Failure> {
    let (saved, hash) = read_saved(file)?;
    let mut audit = AuditContext::for_plan("apply", &saved.plan)?;
    audit.plan_hash = hash.clone();
    let plan = saved.plan.clone();
    let reviewed = apply::Reviewed { saved, hash };
    change("apply", format, audit, &[], |listeners| {
        apply::apply(&plan, &mut kernel(), listeners, Some(&reviewed)).map(outcome)
    })
}

fn apply_cmd(target: &Target, format: ReportFormat) -> Result<(), Failure> {
    let ahead = ahead(target);
    let (plan, warnings) = load_plan_warned(target)?;
    let audit = AuditContext::for_plan("apply", &plan)?;
    // Shared by the run and the record apply writes: not copied.
    let plan = std::sync::Arc::new(plan);
    // Joined before apply takes the deployment's lock (held shared while
    // the maps were read).
    let mut kernel = kernel_ahead(ahead);
    change("apply", format, audit, &warnings, |listeners| {
        apply::apply(&plan, &mut kernel, listeners, None).map(outcome)
    })
}

fn adopt_cmd(target: &Target, format: ReportFormat) -> Result<(), Failure> {
    let (plan, warnings) = load_plan_warned(target)?;
    let audit = AuditContext::for_plan("adopt", &plan)?;
    change("adopt", format, audit, &warnings, |listeners| {
        destroy::adopt(&plan, &mut kernel(), listeners).map(|()| "adopted")
    })
}

fn destroy_cmd(target: &Target, format: ReportFormat) -> Result<(), Failure> {
    let (plan, warnings) = load_plan_warned(target)?;
    let audit = AuditContext::for_plan("destroy", &plan)?;
    change("destroy", format, audit, &warnings, |listeners| {
        destroy::destroy(&plan, &mut kernel(), listeners).map(|d| match d {
            Destroyed::Freed => "destroyed",
            Destroyed::Lingering(_) => "destroyed_objects_linger",
            Destroyed::Nothing => "nothing_to_destroy",
        })
    })
}

fn build_cmd(target: &Target) -> Result<(), Failure> {
    // Building attaches nothing: an image build without a cgroup v2
    // mount may still resolve `cgroup = "auto"` (to the usual place).
    let mut host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    host.cgroup2
        .get_or_insert_with(|| PathBuf::from("/sys/fs/cgroup"));
    let (plan, _) = plan_on(target, &host)?;
    apply::build_only(&plan, &mut kernel(), vec![&mut Printer::default()])?;
    Ok(())
}

fn doctor_cmd(
    manifest: Option<PathBuf>,
    vars: Vec<(String, String)>,
    build_dir: Option<PathBuf>,
    format: ReportFormat,
) -> Result<(), Failure> {
    let plan = doctor_plan(manifest, vars, build_dir)?;
    let report = crate::kernel::verbs::doctor::doctor(&plan);
    match format {
        ReportFormat::Text => emit(&crate::kernel::verbs::doctor::text(&report))?,
        ReportFormat::Json => emit(&format!("{}\n", to_json(&report)?))?,
    }
    if report.ok {
        Ok(())
    } else {
        // The report said it all, as advice.
        Err(Failure::Quiet)
    }
}

/// `doctor --compat`: the manifest given, else the installed bypass.
fn compat_cmd(
    manifest: Option<PathBuf>,
    vars: Vec<(String, String)>,
    build_dir: Option<PathBuf>,
    format: ReportFormat,
) -> Result<(), Failure> {
    const INSTALLED: &str = "/usr/share/bpfplan/manifests/bypass.toml";
    let manifest = manifest
        .or_else(|| {
            Path::new(INSTALLED)
                .is_file()
                .then(|| PathBuf::from(INSTALLED))
        })
        .context("doctor --compat needs a manifest (the bypass's, say: manifests/bypass.toml)")?;
    crate::kernel::verbs::preflight::inspect()?;
    let target = Target {
        manifest: manifest.clone(),
        vars: vars.clone(),
        build_dir: build_dir.clone(),
    };
    // Validate first (a manifest error changes nothing); bench-like, the
    // run sets `cgroup` and `pin_dir` itself.
    let mut probe = target.clone();
    probe.vars.push(("cgroup".into(), "auto".into()));
    probe
        .vars
        .push(("pin_dir".into(), host::DEFAULT_BPFFS.into()));
    load_plan(&probe)?;
    let subject = crate::bench::Subject {
        manifest: std::path::absolute(&manifest).context("resolving the manifest")?,
        vars,
        build_dir,
    };
    let report = crate::bench::compat::compat(&subject)?;
    match format {
        ReportFormat::Text => emit(&crate::bench::compat::text(&report))?,
        ReportFormat::Json => emit(&format!("{}\n", to_json(&report)?))?,
    }
    Ok(())
}

fn log_cmd(
    deployment: Option<&str>,
    since: Option<&str>,
    format: ReportFormat,
) -> Result<(), Failure> {
    let since = since.map(audit::parse_since).transpose()?;
    let lines = audit::read(&audit::log_path(), deployment, since)?;
    match format {
        ReportFormat::Text => emit(&audit::text(&lines))?,
        ReportFormat::Json => {
            for l in &lines {
                emit(&format!(
                    "{}\n",
                    serde_json::to_string(l).context("encoding JSON")?
                ))?;
            }
        }
    }
    Ok(())
}

fn bench_cmd(
    target: &Target,
    format: ReportFormat,
    opts: crate::bench::BenchOptions,
) -> Result<(), Failure> {
    // Validate first, with the two variables bench sets: a manifest
    // error exits 2 before anything is made.
    let mut probe = target.clone();
    probe.vars.push(("cgroup".into(), "auto".into()));
    probe
        .vars
        .push(("pin_dir".into(), host::DEFAULT_BPFFS.into()));
    if let Err(e) = load_plan(&probe) {
        say!("error: bench needs a manifest that declares `cgroup` and `pin_dir` in `[vars]`");
        return Err(e);
    }
    let subject = crate::bench::Subject {
        manifest: target.manifest.clone(),
        vars: target.vars.clone(),
        build_dir: target.build_dir.clone(),
    };
    let report = crate::bench::bench(&subject, &opts)?;
    match format {
        ReportFormat::Text => emit(&crate::bench::text(&report))?,
        ReportFormat::Json => emit(&format!("{}\n", to_json(&report)?))?,
    }
    Ok(())
}

/// Run a verb that changes the kernel, with the listeners its format asks
/// for; in JSON, the last line says how it ended.
fn change(
    verb: &str,
    format: ReportFormat,
    audit: AuditContext,
    warnings: &[String],
    f: impl FnOnce(Vec<&mut dyn Listener>) -> anyhow::Result<&'static str>,
) -> Result<(), Failure> {
    let mut log = AuditLog::open(audit)?;
    // The manifest's warnings were printed when it was read; the audit log
    // and the JSON events hear them too.
    for w in warnings {
        let text = w.trim_end();
        let text = text.strip_prefix("warning: ").unwrap_or(text);
        log.event(&Event::Warning { text })?;
    }
    let mut json = JsonLines::new();
    let outcome = match format {
        ReportFormat::Text => f(vec![&mut Printer::default(), &mut log]),
        ReportFormat::Json => {
            for w in warnings {
                let text = w.trim_end();
                json.quiet_warning(text.strip_prefix("warning: ").unwrap_or(text));
            }
            f(vec![&mut json, &mut log])
        }
    };
    let (ended, error) = match &outcome {
        Ok(outcome) => (*outcome, None),
        Err(e) if e.downcast_ref::<apply::Mismatch>().is_some() => {
            ("stale", Some(format!("{e:#}")))
        }
        Err(e) => ("failed", Some(format!("{e:#}"))),
    };
    // The audit log's last word on the command; a log that cannot take it
    // is said, and the command's own result stands.
    if let Err(e) = log.finish(ended, i32::from(error.is_some()), error.clone()) {
        say!("warning: the audit log did not take the command's end: {e:#}");
    }
    if format == ReportFormat::Json {
        json.result(verb, error.is_none(), ended, error.as_deref());
    }
    let result = outcome.map(|_| ());
    // A stale saved plan or a deployment that does not match for adoption
    // changed nothing, and is an error like any other: exit 1.
    result.map_err(Failure::from)
}

/// The plan doctor checks against: the manifest given, else the installed
/// bypass example, else the bypass this binary was built with.
fn doctor_plan(
    manifest: Option<PathBuf>,
    vars: Vec<(String, String)>,
    build_dir: Option<PathBuf>,
) -> Result<Plan, Failure> {
    const INSTALLED: &str = "/usr/share/bpfplan/manifests/bypass.toml";
    let manifest = manifest.or_else(|| {
        let installed = PathBuf::from(INSTALLED);
        installed.is_file().then_some(installed)
    });
    if let Some(manifest) = manifest {
        return load_plan(&Target {
            manifest,
            vars,
            build_dir,
        });
    }
    let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    let src = crate::manifest::diag::Source::new(
        std::path::Path::new(INSTALLED),
        include_str!("../manifests/bypass.toml").to_string(),
    );
    let env = crate::manifest::validate::Env {
        host: &host,
        overrides: &vars,
        exists: &|_| true,
    };
    let checked = crate::manifest::validate::validate(&src, &env).map_err(|_| {
        Failure::Runtime(anyhow::anyhow!(
            "the built-in bypass manifest does not validate here"
        ))
    })?;
    let build_dir = crate::kernel::remember::build::default_build_dir(&checked.model.manifest);
    Ok(plan::plan(
        &checked.model,
        &PlanOptions::for_host(build_dir),
    ))
}

/// Man pages (one per verb) or a shell's completions, into `out`. clap
/// writes them into a fresh directory of bpfplan's own; each is then put in
/// `out` by the one writer that never follows a link.
fn generate(what: crate::cli::Generated, out: &std::path::Path) -> anyhow::Result<()> {
    use crate::cli::Generated;
    use clap::CommandFactory;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let fresh = tempfile::tempdir().context("creating a temporary directory")?;
    let mut cmd = crate::cli::Cli::command();
    let shell = match what {
        Generated::Man => None,
        Generated::Bash => Some(clap_complete::Shell::Bash),
        Generated::Zsh => Some(clap_complete::Shell::Zsh),
        Generated::Fish => Some(clap_complete::Shell::Fish),
    };
    match shell {
        None => clap_mangen::generate_to(cmd, fresh.path()).context("writing man pages")?,
        Some(shell) => {
            clap_complete::generate_to(shell, &mut cmd, "bpfplan", fresh.path())
                .context("writing completions")?;
        }
    }
    for entry in std::fs::read_dir(fresh.path()).context("reading the generated files")? {
        let entry = entry.context("reading the generated files")?;
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        trust::write_new(&out.join(entry.file_name()), &bytes)?;
    }
    Ok(())
}

/// Write to stdout. A reader that went away (`bpfplan log | head -1`) is no
/// error: what bpfplan did stands, and so does its exit code; any other
/// failure to write (a full disk) is one.
fn emit(text: &str) -> anyhow::Result<()> {
    emit_with(|w| Ok(w.write_all(text.as_bytes())?))
}

/// Write to stdout as the output is made (a plan of a million steps is
/// not held whole); a reader that went away (`| head`) is not an error.
fn emit_with(
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = write(&mut out).and_then(|()| Ok(out.flush()?));
    match result {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        other => other.context("writing the output"),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(v).context("encoding JSON")
}

fn plan_cmd(
    target: &Target,
    format: Format,
    dir: Direction,
    detailed_exitcode: bool,
    manifest_only: bool,
) -> Result<(), Failure> {
    // A teardown reads no map's entries (but of a run on record).
    let ahead = match dir {
        Direction::Apply if !manifest_only => ahead(target),
        _ => None,
    };
    let plan = load_plan(target)?;
    let manifest_plan = |plan: Plan| match dir {
        Direction::Apply => plan,
        Direction::Destroy => plan.destroy(),
    };
    if manifest_only {
        emit_with(|w| render::render_to(w, &manifest_plan(plan), format, dir))?;
        return Ok(());
    }
    // Looking at the kernel needs root (bpf(2)) and bpftool.
    if let Err(why) = crate::kernel::verbs::preflight::inspect() {
        if detailed_exitcode {
            return Err(why
                .context("plan --detailed-exitcode compares with the kernel")
                .into());
        }
        say!(
            "note: the kernel was not looked at ({why:#}): this is the manifest's plan, what a \
             first {} runs (as `--manifest-only` shows it)",
            match dir {
                Direction::Apply => "apply",
                Direction::Destroy => "destroy after it",
            }
        );
        emit_with(|w| render::render_to(w, &manifest_plan(plan), format, dir))?;
        return Ok(());
    }
    let mut kernel = kernel_ahead(ahead);
    let review = match dir {
        Direction::Apply => apply::pending(&plan, &mut kernel)?,
        Direction::Destroy => destroy::pending(&plan, &mut kernel)?,
    };
    emit_with(|w| render::render_decided_to(w, &plan, &review, format, dir))?;
    let changes = !matches!(
        review.decision,
        DecisionKind::Nothing | DecisionKind::NothingToDestroy
    );
    if detailed_exitcode && changes {
        return Err(Failure::Differs);
    }
    Ok(())
}

fn status_cmd(
    target: &Target,
    format: StatusFormat,
    textfile: Option<&Path>,
    stats: Option<std::time::Duration>,
) -> Result<(), Failure> {
    let ahead = ahead(target);
    let plan = load_plan(target)?;
    let report = status::status(&plan, &mut kernel_ahead(ahead), stats)?;
    if let Some(dir) = textfile {
        // node_exporter reads `*.prom` only, so the temporary file beside
        // it is never read half-written.
        let path = dir.join(format!("bpfplan-{}.prom", report.deployment));
        trust::write_new_mode(&path, metrics::prometheus(&report).as_bytes(), 0o644)?;
    } else {
        match format {
            StatusFormat::Text => emit(&status::text(&report))?,
            // One line: a fleet's statuses collect into JSON lines.
            StatusFormat::Json => emit(&format!(
                "{}\n",
                serde_json::to_string(&report).context("encoding JSON")?
            ))?,
            StatusFormat::Prometheus => emit(&metrics::prometheus(&report))?,
        }
    }
    if report.in_sync {
        Ok(())
    } else {
        Err(Failure::Differs)
    }
}

/// Read, validate and plan a manifest, printing its diagnostics to stderr.
pub fn load_plan(target: &Target) -> Result<Plan, Failure> {
    load_plan_warned(target).map(|(plan, _)| plan)
}

/// `load_plan`, and the warnings it printed.
fn load_plan_warned(target: &Target) -> Result<(Plan, Vec<String>), Failure> {
    let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    plan_on(target, &host)
}

/// Read, validate and plan a manifest against these host facts; its
/// warnings are printed, and returned.
fn plan_on(target: &Target, host: &HostFacts) -> Result<(Plan, Vec<String>), Failure> {
    match manifest::load(&target.manifest, &target.vars, host) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                say_raw!("{w}");
            }
            let warnings = loaded.warnings.clone();
            let build_dir = match &target.build_dir {
                // Relative to where bpfplan runs, like any path argument.
                Some(dir) => std::path::absolute(dir).context("resolving --build-dir")?,
                None => crate::kernel::remember::build::default_build_dir(&loaded.model.manifest),
            };
            let opts = PlanOptions::for_host(build_dir);
            Ok((plan::plan(&loaded.model, &opts), warnings))
        }
        Err(LoadError::Unreadable(msg)) => {
            say!("error: {msg}");
            Err(Failure::Manifest)
        }
        Err(LoadError::Invalid { rendered, errors }) => {
            for d in &rendered {
                say!("{d}");
            }
            say!(
                "error: {} has {errors} error{}; nothing was changed",
                target.manifest.display(),
                if errors == 1 { "" } else { "s" }
            );
            Err(Failure::Manifest)
        }
    }
}
