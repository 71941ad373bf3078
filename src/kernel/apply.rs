//! apply and destroy, end to end: check, lock, look at the kernel, build,
//! decide (purely, in `decide`), run the decision through the executor, and
//! record what the kernel then holds.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::decide::{self, Decision};
use super::exec::{Executor, Failed, Listener, Numbering, Policy};
use super::observe::{Observed, Query, observe};
use super::record::{
    Deployed, FileHash, Found, Loaded, MapFact, ProgramFact, Record, Run, RunKind, Store,
};
use super::saved::{self, SavedObject, SavedPlan};
use super::{build, inspect, preflight};
use crate::plan::step::Step;
use crate::plan::{Op, Plan, Review};

/// How long a second apply or destroy waits for the first
/// (`BPFPLAN_LOCK_TIMEOUT`, seconds, default 30; `inf` waits for good).
fn lock_timeout() -> Result<Option<Duration>> {
    crate::util::env_seconds("BPFPLAN_LOCK_TIMEOUT", 30.0)
}

/// How long destroy waits for the kernel to free programs and maps.
const FREE_TIMEOUT: Duration = Duration::from_secs(10);

/// What apply did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The kernel already matched the manifest; nothing ran.
    NoChanges,
    /// Something ran.
    Changed,
}

/// The record of a deployment, or the reason it cannot be used.
fn read_record(store: &Store) -> Result<Option<Loaded>> {
    match store.load() {
        Found::Missing => Ok(None),
        Found::Ok(l) => Ok(Some(*l)),
        Found::Corrupt(why) => bail!(
            "the record {} cannot be used ({why}); bpfplan will not guess what is deployed. \
             Run `bpfplan destroy` with the same manifest and variables to remove what the \
             manifest declares (and set the record aside), or move the record away by hand \
             if what runs should stay",
            store.path.display()
        ),
    }
}

/// What to look at for a plan and its record.
fn query(plan: &Plan, loaded: Option<&Loaded>) -> Query {
    let mut q = Query::default();
    q.spec(&plan.spec, true);
    q.dirs(super::record::pin_dirs_and_parents(plan));
    let deployed = loaded.and_then(|l| l.record.deployed.as_ref());
    for pin in decide::swap_pins(plan, deployed) {
        q.pin(&pin);
    }
    if let Some(l) = loaded {
        q.record(&l.record);
    }
    q
}

/// A saved plan being applied, and its hash.
pub(crate) struct Reviewed {
    pub saved: SavedPlan,
    pub hash: String,
}

/// The kernel is not as a command needs it (a saved plan gone stale, a
/// deployment that does not match for adoption): what differs. Nothing was
/// changed; the command exits 2.
#[derive(Debug)]
pub struct Mismatch {
    pub headline: String,
    pub lines: Vec<String>,
}

impl Mismatch {
    fn stale(lines: Vec<String>) -> Self {
        Mismatch {
            headline: "the saved plan is stale: the deployment changed since it was made, so it \
                       was not applied (make the plan again and review it)"
                .into(),
            lines,
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.headline)?;
        for c in &self.lines {
            write!(f, "\n  {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Mismatch {}

/// Apply a plan; with `reviewed`, exactly the saved plan: its objects, and
/// only if the kernel and the record are as they were when it was made.
pub(crate) fn apply(
    plan: &Plan,
    listeners: Vec<&mut dyn Listener>,
    reviewed: Option<&Reviewed>,
) -> Result<Applied> {
    let started = Instant::now();
    preflight::apply(plan, reviewed.is_none())?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout()?)?;
    let mut exec = Executor::new(listeners);
    mount_if_needed(&mut exec, plan)?;
    let mut loaded = read_record(&store)?;
    let mut obs = observe(&query(plan, loaded.as_ref()))?;

    // Build first (no kernel change, and compile errors stop here), or put
    // the reviewed objects in place.
    let dirs = match &loaded {
        None => super::record::pin_dirs_and_parents(plan)
            .iter()
            .filter(|d| !obs.dirs.contains(*d))
            .count(),
        Some(_) => 0,
    };
    let numbering = Numbering {
        first: 1,
        total: plan.steps.len() + dirs,
    };
    let built = match reviewed {
        Some(r) => {
            check_reviewed(r, loaded.as_ref(), &obs)?;
            exec.note(
                "the deployment is as it was when the plan was made: loading the reviewed objects",
            );
            saved::install(&r.saved.objects)?;
            0
        }
        None => run_build(&mut exec, plan, Some(numbering))?,
    };
    let objects = build::object_hashes(plan)?;
    let sources = match reviewed {
        Some(r) => r.saved.sources.clone(),
        None => build::source_hashes(plan)?,
    };
    if loaded.is_none() {
        warn_other_deployments(&store, plan);
    }

    // A killed run is ended first; then the decision is made again.
    for _ in 0..3 {
        let decision = decide::decide(plan, loaded.as_ref(), &obs, &objects);
        let Decision::Recover { ops, forward } = decision else {
            if let Some(r) = reviewed {
                // What runs is what the file showed the reviewer.
                let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
                let now = decide::review(plan, &decision, deployed, &obs);
                if now != r.saved.review {
                    return Err(Mismatch {
                        headline: "what apply would run is not what the saved plan shows; \
                                   nothing was changed: make the plan again"
                            .into(),
                        lines: vec![format!(
                            "the file shows `{}` with {} step(s); apply would run `{}` with {}",
                            r.saved.review.decision,
                            r.saved.review.changes.len(),
                            now.decision,
                            now.changes.len()
                        )],
                    }
                    .into());
                }
            }
            let ctx = RunContext {
                store: &store,
                plan,
                sources,
                objects,
                started,
                numbering: Numbering {
                    first: built + 1,
                    total: numbering.total,
                },
                last_plan: reviewed.map(|r| r.hash.clone()),
            };
            return carry_out(&mut exec, decision, loaded, &obs, ctx);
        };
        let Some(l) = loaded.take() else {
            bail!("internal error: a recovery without a record");
        };
        recover(&mut exec, &store, l, &ops, forward)?;
        loaded = read_record(&store)?;
        obs = observe(&query(plan, loaded.as_ref()))?;
    }
    bail!("an interrupted run could not be recovered; run `bpfplan destroy`, then apply")
}

/// A saved plan applies once, and only to the deployment it was made on.
fn check_reviewed(r: &Reviewed, loaded: Option<&Loaded>, obs: &Observed) -> Result<()> {
    if loaded.is_some_and(|l| l.record.last_plan.as_deref() == Some(r.hash.as_str())) {
        return Err(Mismatch::stale(vec!["this saved plan was applied already".into()]).into());
    }
    let now = saved::snapshot(obs, loaded);
    if saved::fingerprint(&now) != r.saved.fingerprint {
        return Err(Mismatch::stale(saved::changes(&r.saved.observed, &now)).into());
    }
    Ok(())
}

/// What `plan --out` saves: the plan built (objects kept under their
/// hashes), what apply would run, and the fingerprint of the deployment.
pub(crate) fn save(plan: &Plan, vars: &[(String, String)]) -> Result<SavedPlan> {
    preflight::apply(plan, true)?;
    let store = Store::for_plan(plan)?;
    let loaded = read_record(&store)?;
    let obs = observe(&query(plan, loaded.as_ref()))?;
    run_build(&mut Executor::new(Vec::new()), plan, None)?;
    let mut objects = Vec::new();
    for p in &plan.spec.programs {
        let (sha256, kept) = saved::keep(&p.object)?;
        objects.push(SavedObject {
            program: p.name.clone(),
            path: p.object.clone(),
            sha256,
            kept,
        });
    }
    let hashes = build::object_hashes(plan)?;
    let decision = decide::decide(plan, loaded.as_ref(), &obs, &hashes);
    let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
    let review = decide::review(plan, &decision, deployed, &obs);
    let deployment = store
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(saved::new(
        plan,
        vars,
        deployment,
        objects,
        build::source_hashes(plan)?,
        review,
        saved::snapshot(&obs, loaded.as_ref()),
    ))
}

/// Build what the plan compiles (no kernel change, so compile errors stop
/// everything before it), into a build directory that must be root's own.
/// Returns how many build steps ran.
fn run_build(exec: &mut Executor, plan: &Plan, numbering: Option<Numbering>) -> Result<usize> {
    for step in &plan.steps {
        if let Step::MakeBuildDir { dir } = step {
            build::check_dir(dir)?;
        }
    }
    let ops: Vec<Op> = plan
        .steps
        .iter()
        .filter(|s| !s.touches_kernel())
        .cloned()
        .map(Op::of)
        .collect();
    let numbering = numbering.unwrap_or(Numbering {
        first: 1,
        total: ops.len(),
    });
    exec.run(
        "build",
        &ops,
        Policy::Transaction { commit_at: None },
        None,
        numbering,
    )
    .map_err(|f| f.error.context(f.label))?;
    Ok(ops.len())
}

/// Mount bpffs (under the lock, through the executor like every change).
fn mount_if_needed(exec: &mut Executor, plan: &Plan) -> Result<()> {
    if let Some(step) = preflight::bpffs_mount(plan)? {
        exec.note("bpffs is not mounted where the pins go: mounting it");
        let numbering = Numbering { first: 1, total: 1 };
        exec.run(
            "mount",
            &[Op::of(step)],
            Policy::BestEffort,
            None,
            numbering,
        )
        .map_err(|f| f.error)
        .and_then(|failures| match failures.first() {
            Some(f) => bail!("{f}"),
            None => Ok(()),
        })?;
    }
    preflight::on_bpffs(plan)
}

/// What carrying out a decision needs.
struct RunContext<'a> {
    store: &'a Store,
    plan: &'a Plan,
    sources: Vec<FileHash>,
    objects: Vec<FileHash>,
    started: Instant,
    numbering: Numbering,
    /// The hash of the saved plan being applied.
    last_plan: Option<String>,
}

fn carry_out(
    exec: &mut Executor,
    decision: Decision,
    loaded: Option<Loaded>,
    obs: &Observed,
    ctx: RunContext,
) -> Result<Applied> {
    let manifest = ctx.plan.manifest.display().to_string();
    let mut record = loaded.map(|l| l.record).unwrap_or_else(|| Record {
        format_version: super::record::FORMAT_VERSION,
        manifest: ctx.plan.manifest.clone(),
        deployed: None,
        run: None,
        last_plan: None,
    });
    let run = |kind, ops: Vec<Op>, commit_at, pin_dirs| Run {
        kind,
        plan: ctx.plan.clone(),
        ops,
        commit_at,
        sources: ctx.sources.clone(),
        objects: ctx.objects.clone(),
        pin_dirs,
    };
    match decision {
        Decision::Nothing => {
            // A source edit that compiles to the same object changes
            // nothing; record the new hashes so `status` agrees.
            let new_sources = record
                .deployed
                .as_mut()
                .filter(|d| d.sources != ctx.sources)
                .map(|d| d.sources = ctx.sources.clone())
                .is_some();
            if ctx.last_plan.is_some() {
                record.last_plan = ctx.last_plan.clone();
            }
            if new_sources || ctx.last_plan.is_some() {
                ctx.store.save(&record)?;
            }
            exec.note(&format!(
                "No changes: the kernel matches {manifest} ({} ms)",
                ctx.started.elapsed().as_millis()
            ));
            return Ok(Applied::NoChanges);
        }
        Decision::Refuse(why) => bail!(why),
        Decision::Recover { .. } => bail!("internal error: recovery is not carried out here"),
        Decision::Entries(ops) => {
            exec.note(&format!(
                "only map contents differ: {} update(s), no program is reloaded",
                ops.len()
            ));
            record.run = Some(run(RunKind::Entries, ops, None, Vec::new()));
            let numbering = Numbering {
                first: 1,
                total: record.run.as_ref().map_or(0, |r| r.ops.len()),
            };
            transact(exec, &ctx, record, numbering, obs).map_err(|f| {
                let n = f.undone;
                let plural = if n == 1 { "y" } else { "ies" };
                explain(
                    f,
                    &format!(
                        "restored the {n} entr{plural} it had changed, no program was touched"
                    ),
                )
            })?;
        }
        Decision::Fresh { ops, pin_dirs } => {
            record.run = Some(run(RunKind::Fresh, ops, None, pin_dirs));
            transact(exec, &ctx, record, ctx.numbering, obs).map_err(|f| {
                let n = f.undone;
                explain(
                    f,
                    &format!("undid the {n} kernel change(s) before it, nothing is left behind"),
                )
            })?;
        }
        Decision::Replace {
            reason,
            ops,
            commit_at,
            pin_dirs,
        } => {
            exec.note(&format!(
                "{reason}: replacing the deployment (the new programs are loaded beside the \
                 running ones, then swapped in)"
            ));
            let total = ops.len();
            record.run = Some(run(RunKind::Replace, ops, Some(commit_at), pin_dirs));
            let numbering = Numbering { first: 1, total };
            transact(exec, &ctx, record, numbering, obs).map_err(|f| {
                let n = f.undone;
                explain(
                    f,
                    &format!(
                        "undid the {n} change(s) before it: the previous deployment still runs, \
                         unchanged"
                    ),
                )
            })?;
        }
    }
    exec.note(&format!(
        "applied {manifest} in {} ms",
        ctx.started.elapsed().as_millis()
    ));
    Ok(Applied::Changed)
}

/// The error of a failed run, saying what became of the kernel: `undone`
/// when the rollback worked.
fn explain(f: Failed, undone: &str) -> anyhow::Error {
    if f.committed {
        f.error.context(format!(
            "{}; the next `bpfplan apply` or `bpfplan destroy` removes what is left",
            f.label
        ))
    } else if f.rollback_failures.is_empty() {
        f.error.context(format!("{}; {undone}", f.label))
    } else {
        // The error already says the rollback failed too.
        f.error.context(f.label)
    }
}

/// Run a recorded run as a transaction: the run is on record before its
/// first op, each op is journaled before it runs, and the record says what
/// the kernel holds once it ends. A failure rolls back; a rollback that
/// fails leaves the run on record for the next apply or destroy.
fn transact(
    exec: &mut Executor,
    ctx: &RunContext,
    mut record: Record,
    numbering: Numbering,
    obs: &Observed,
) -> Result<(), Failed> {
    let unrecorded = |e: anyhow::Error| Failed {
        label: "recording the run failed".into(),
        error: e,
        undone: 0,
        rollback_failures: Vec::new(),
        committed: false,
    };
    let store = ctx.store;
    store.save(&record).map_err(unrecorded)?;
    let Some(run) = record.run.take() else {
        return Ok(());
    };
    let mut journal = store.journal().map_err(unrecorded)?;
    let policy = Policy::Transaction {
        commit_at: run.commit_at,
    };
    let outcome = exec.run("apply", &run.ops, policy, Some(&mut journal), numbering);
    match outcome {
        Ok(failures) if !failures.is_empty() => {
            // Past the point of no return: the new deployment runs, but old
            // objects are left. The run stays on record; the next apply or
            // destroy finishes it.
            Err(Failed {
                label: "the new deployment runs, but removing the old one failed".into(),
                error: anyhow::anyhow!("{}", failures.join("\n")),
                undone: 0,
                rollback_failures: Vec::new(),
                committed: true,
            })
        }
        Ok(_) => {
            let deployed = complete(run, record.deployed.as_ref(), obs).map_err(unrecorded)?;
            record.deployed = Some(deployed);
            // A saved plan counts as applied once its run completed.
            if ctx.last_plan.is_some() {
                record.last_plan = ctx.last_plan.clone();
            }
            store.save(&record).map_err(unrecorded)?;
            Ok(())
        }
        Err(mut f) => {
            if f.rollback_failures.is_empty() {
                let saved = match record.deployed {
                    None => store.remove(),
                    Some(_) => store.save(&record),
                };
                if let Err(e) = saved {
                    f.error = f
                        .error
                        .context(format!("and updating the record failed: {e:#}"));
                }
            } else {
                f.error = f.error.context(format!(
                    "rollback failed too ({}); run `bpfplan apply` or `bpfplan destroy` to finish it",
                    f.rollback_failures.join("; ")
                ));
            }
            Err(f)
        }
    }
}

/// What the kernel holds once `run` completed: its plan, with the ids and
/// tags behind its pins.
fn complete(run: Run, before: Option<&Deployed>, obs: &Observed) -> Result<Deployed> {
    let mut programs = Vec::new();
    for p in &run.plan.spec.programs {
        let info = inspect::pinned_prog(p.pin.as_str())?
            .with_context(|| format!("program pinned at {} vanished after apply", p.pin))?;
        programs.push(ProgramFact {
            name: p.name.clone(),
            pin: p.pin.clone(),
            id: info.id,
            tag: info.tag,
            map_ids: info.map_ids,
        });
    }
    let mut maps = Vec::new();
    for m in &run.plan.spec.maps {
        if let Some(info) = inspect::pinned_map(m.pin.as_str())? {
            maps.push(MapFact {
                name: m.name.clone(),
                pin: m.pin.clone(),
                id: info.id,
            });
        }
    }
    // Directories made before stay ours while the plan still pins there.
    let in_use = super::record::pin_dirs_and_parents(&run.plan);
    let mut pin_dirs: Vec<PathBuf> = before
        .map(|d| d.pin_dirs.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| in_use.contains(d) && obs.dirs.contains(d))
        .collect();
    pin_dirs.extend(run.pin_dirs.iter().cloned());
    pin_dirs.sort();
    pin_dirs.dedup();
    Ok(Deployed {
        plan: run.plan,
        programs,
        maps,
        sources: run.sources,
        objects: run.objects,
        pin_dirs,
    })
}

/// End a killed run: undo it, or finish it past its point of no return.
fn recover(
    exec: &mut Executor,
    store: &Store,
    loaded: Loaded,
    ops: &[Op],
    forward: bool,
) -> Result<()> {
    let mut record = loaded.record;
    let Some(run) = record.run.take() else {
        return Ok(());
    };
    if forward {
        exec.note(&format!(
            "an earlier apply of this deployment was interrupted after its point of no return: \
             finishing its last {} step(s)",
            ops.len()
        ));
    } else {
        exec.note(&format!(
            "an earlier apply of this deployment was interrupted: undoing its {} started step(s)",
            loaded.started
        ));
    }
    let numbering = Numbering {
        first: 1,
        total: ops.len(),
    };
    let failures = exec
        .run("recover", ops, Policy::BestEffort, None, numbering)
        .map_err(|f| f.error)?;
    if !failures.is_empty() {
        bail!(
            "recovering the interrupted run failed:\n  {}",
            failures.join("\n  ")
        );
    }
    if forward {
        let obs = observe(Query::default().dirs(super::record::pin_dirs_and_parents(&run.plan)))?;
        record.deployed = Some(complete(run, record.deployed.as_ref(), &obs)?);
    }
    match record.deployed {
        Some(_) => store.save(&record),
        None => store.remove(),
    }
}

fn warn_other_deployments(store: &Store, plan: &Plan) {
    for other in store.others(plan) {
        let pins: Vec<String> = other
            .deployed
            .iter()
            .flat_map(|d| d.plan.spec.programs.iter().map(|p| p.pin.0.clone()))
            .collect();
        eprintln!(
            "warning: {} has another deployment, with programs pinned at {}; it stays in \
             place (a deployment is its manifest and its pin directories): destroy it with the \
             variables it was applied with if it should go",
            plan.manifest.display(),
            pins.join(", ")
        );
    }
}

/// What apply would do now, without building or changing anything: a
/// changed source counts as a changed program.
pub(crate) fn pending(plan: &Plan) -> Result<Review> {
    preflight::inspect()?;
    let store = Store::for_plan(plan)?;
    let loaded = read_record(&store)?;
    let obs = observe(&query(plan, loaded.as_ref()))?;
    let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
    let (objects, rebuilt) = match deployed {
        // The objects are not built here: a changed input stands for a
        // changed program.
        Some(d) if build::source_hashes(plan)? != d.sources => (Vec::new(), true),
        Some(d) => (d.objects.clone(), false),
        None => (Vec::new(), false),
    };
    let decision = decide::decide(plan, loaded.as_ref(), &obs, &objects);
    let mut review = decide::review(plan, &decision, deployed, &obs);
    if rebuilt && review.decision == "replace" {
        review.reason = Some("a program's source, header or object changed".into());
    }
    Ok(review)
}

/// Destroy: end a killed run, then tear down what was applied (or, with no
/// usable record, what the manifest declares and is this deployment's),
/// then wait until the kernel has freed it.
/// Whether destroy had anything to remove.
pub(crate) fn destroy(plan: &Plan, listeners: Vec<&mut dyn Listener>) -> Result<bool> {
    preflight::inspect()?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout()?)?;
    let mut exec = Executor::new(listeners);
    let mut corrupt = false;
    let mut loaded = match store.load() {
        Found::Missing => None,
        Found::Ok(l) => Some(*l),
        Found::Corrupt(why) => {
            eprintln!(
                "warning: the record {} cannot be used ({why}): removing only what the manifest \
                 declares and is recognisably this deployment's",
                store.path.display()
            );
            corrupt = true;
            None
        }
    };
    if let Some(l) = loaded.take() {
        if l.record.run.is_some() {
            let obs = observe(&query(plan, Some(&l)))?;
            if let Some(run) = &l.record.run {
                let (ops, forward) = super::recovery::recovery(run, l.started, &obs);
                recover(&mut exec, &store, l, &ops, forward)?;
            }
            loaded = read_record(&store)?;
        } else {
            loaded = Some(l);
        }
    }
    let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
    let target = deployed.map_or(plan, |d| &d.plan);
    let mut q = query(target, loaded.as_ref());
    q.spec(&plan.spec, false);
    let obs = observe(&q)?;
    // Without a record, a program is ours only with the tag its object
    // gets (when the objects are built; else type and name decide).
    let tags = match deployed {
        Some(_) => decide::Tags::new(),
        None => probe_tags(&mut exec, plan)?,
    };
    let t = decide::teardown(target, deployed, &obs, &tags);
    for f in &t.foreign {
        eprintln!("warning: {f}");
    }
    if t.steps.is_empty() {
        exec.note("nothing to destroy");
    }
    let ops: Vec<Op> = t
        .steps
        .iter()
        .cloned()
        .map(|step| Op { step, undo: None })
        .collect();
    let numbering = Numbering {
        first: 1,
        total: ops.len(),
    };
    let failures = exec
        .run("destroy", &ops, Policy::BestEffort, None, numbering)
        .map_err(|f| f.error)?;
    if !failures.is_empty() {
        bail!(
            "{} teardown step(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    if corrupt {
        let aside = store.set_aside()?;
        eprintln!("the unusable record was moved to {}", aside.display());
    } else {
        store.remove()?;
    }
    wait_freed(&t.prog_ids, &t.map_ids);
    exec.note(&format!("destroyed {}", plan.manifest.display()));
    Ok(!t.steps.is_empty())
}

/// The tag each program of the plan gets when loaded: its built object is
/// loaded under `PIN~probe` (through the executor, so it is on record),
/// read, and unpinned. Programs whose object is not built are left out.
fn probe_tags(exec: &mut Executor, plan: &Plan) -> Result<decide::Tags> {
    let probe = |pin: &str| format!("{pin}~probe");
    let programs: Vec<_> = plan
        .spec
        .programs
        .iter()
        .filter(|p| p.object.is_file())
        .collect();
    let mut tags = decide::Tags::new();
    if programs.is_empty() {
        return Ok(tags);
    }
    exec.note("loading each program once under a probe pin, to learn its tag");
    let unpin = |p: &crate::plan::ProgramSpec| Step::UnpinProgram {
        program: p.name.clone(),
        pin: crate::manifest::model::ProgPin(probe(p.pin.as_str())),
    };
    // A probe pin left by a killed run: `~` never names anyone else's pin.
    let leftovers: Vec<Op> = programs
        .iter()
        .filter(|p| std::path::Path::new(&probe(p.pin.as_str())).exists())
        .map(|p| Op {
            step: unpin(p),
            undo: None,
        })
        .collect();
    let loads: Vec<Op> = programs
        .iter()
        .map(|p| {
            Op::of(Step::LoadProgram {
                program: p.name.clone(),
                object: p.object.clone(),
                prog_type: p.prog_type,
                pin: crate::manifest::model::ProgPin(probe(p.pin.as_str())),
                reuse: Vec::new(),
            })
        })
        .collect();
    let all: Vec<Op> = leftovers.into_iter().chain(loads).collect();
    let numbering = Numbering {
        first: 1,
        total: all.len(),
    };
    exec.run(
        "probe",
        &all,
        Policy::Transaction { commit_at: None },
        None,
        numbering,
    )
    .map_err(|f| f.error.context(format!("{} (probing tags)", f.label)))?;
    for p in &programs {
        if let Some(info) = inspect::pinned_prog(&probe(p.pin.as_str()))? {
            tags.insert(p.pin.clone(), info.tag);
        }
    }
    let unpins: Vec<Op> = programs
        .iter()
        .map(|p| Op {
            step: unpin(p),
            undo: None,
        })
        .collect();
    let numbering = Numbering {
        first: 1,
        total: unpins.len(),
    };
    let failures = exec
        .run("probe", &unpins, Policy::BestEffort, None, numbering)
        .map_err(|f| f.error)?;
    if let Some(f) = failures.first() {
        bail!("removing a probe pin failed: {f}");
    }
    Ok(tags)
}

/// `bpfplan build`: compile what the plan compiles into the build cache,
/// changing nothing in the kernel; an apply afterwards needs no compiler.
pub(crate) fn build_only(plan: &Plan, listeners: Vec<&mut dyn Listener>) -> Result<()> {
    if !super::build::stale_compiles(plan).is_empty() && which::which("clang").is_err() {
        bail!("`clang` not found in PATH: run `make deps` (apt-get install clang libbpf-dev)");
    }
    let mut exec = Executor::new(listeners);
    run_build(&mut exec, plan, None)?;
    for p in &plan.spec.programs {
        exec.note(&format!("`{}`: {}", p.name, p.object.display()));
    }
    Ok(())
}

/// Take over a deployment made by hand or by the sh script: refused unless
/// the kernel holds exactly what the manifest makes (exit 1 with the
/// differences); then recorded as bpfplan's, as if apply had made it.
pub(crate) fn adopt(plan: &Plan, listeners: Vec<&mut dyn Listener>) -> Result<()> {
    preflight::apply(plan, true)?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout()?)?;
    if let Some(l) = read_record(&store)? {
        if l.record.run.is_some() {
            bail!(
                "an apply of this deployment was interrupted: run `bpfplan apply` or `bpfplan destroy` first"
            );
        }
        bail!(
            "{} is bpfplan's already (recorded in {}): nothing to adopt",
            plan.manifest.display(),
            store.path.display()
        );
    }
    let mut exec = Executor::new(listeners);
    run_build(&mut exec, plan, None)?;
    let tags = probe_tags(&mut exec, plan)?;
    let obs = observe(&query(plan, None))?;
    let (programs, maps) = decide::adoption(plan, &obs, &tags).map_err(|lines| Mismatch {
        headline: format!(
            "the kernel does not hold exactly what {} makes, so nothing was adopted",
            plan.manifest.display()
        ),
        lines,
    })?;
    for p in &programs {
        exec.note(&format!(
            "takes over program `{}` (id {}, tag {}) at {}",
            p.name, p.id, p.tag, p.pin
        ));
    }
    for m in &maps {
        exec.note(&format!(
            "takes over map `{}` (id {}) at {}",
            m.name, m.id, m.pin
        ));
    }
    for a in &plan.spec.attachments {
        exec.note(&format!(
            "takes over the attachment of `{}` to {}",
            a.program,
            a.place()
        ));
    }
    let record = Record {
        format_version: super::record::FORMAT_VERSION,
        manifest: plan.manifest.clone(),
        deployed: Some(Deployed {
            plan: plan.clone(),
            programs,
            maps,
            sources: build::source_hashes(plan)?,
            objects: build::object_hashes(plan)?,
            pin_dirs: Vec::new(),
        }),
        run: None,
        last_plan: None,
    };
    store.save(&record)?;
    exec.note(&format!(
        "adopted {}: it is bpfplan's now (recorded in {})",
        plan.manifest.display(),
        store.path.display()
    ));
    Ok(())
}

/// Poll until programs and maps are freed (the kernel releases them a moment
/// after the last reference goes); warn if something still holds them.
fn wait_freed(prog_ids: &[u32], map_ids: &[u32]) {
    let start = Instant::now();
    loop {
        let live_progs: Vec<u32> = prog_ids
            .iter()
            .copied()
            .filter(|id| inspect::prog_by_id(*id).is_some())
            .collect();
        let live_maps: Vec<u32> = map_ids
            .iter()
            .copied()
            .filter(|id| inspect::map_by_id(*id).is_some())
            .collect();
        if live_progs.is_empty() && live_maps.is_empty() {
            return;
        }
        if start.elapsed() > FREE_TIMEOUT {
            eprintln!(
                "warning: after {}s the kernel still holds program ids {live_progs:?} and map \
                 ids {live_maps:?}: something else references them",
                FREE_TIMEOUT.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
