//! Carrying out what was decided: each stage of an intent runs through the
//! one executor, numbered as the plan numbers it, and this is the one place
//! that writes the record (a run on record before its first op, the facts
//! once it completed, its end when recovered) and waits for the kernel to
//! free what was removed. Every word it says about the kernel comes from a
//! look at it.

use anyhow::{Result, bail};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kernel::act::exec::{Batch, Executor, Failed, Numbering, Policy};
use crate::kernel::decide::Decision;
use crate::kernel::decide::intent::{self, Recovery};
use crate::kernel::look::observe::{Observed, Query};
use crate::kernel::remember::record::{FileHash, Lingering, Loaded, Record, Run, RunKind, Store};
use crate::plan::{Op, Plan, Stage};

/// How long destroy waits for the kernel to free programs and maps.
pub(crate) const FREE_TIMEOUT: Duration = Duration::from_secs(10);

/// What apply did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The kernel already matched the manifest; nothing ran.
    NoChanges,
    /// Something ran.
    Changed,
}

/// Run a stage that keeps no record (mount, build, probe, teardown) as a
/// transaction or best effort; best-effort failures are returned.
pub(crate) fn stage(
    exec: &mut Executor,
    stage: Stage,
    ops: &[Op],
    policy: Policy,
    numbering: Numbering,
) -> Result<Vec<String>> {
    let b = Batch {
        stage,
        ops,
        policy,
        numbering,
        decided_on: None,
    };
    exec.run(b, None).map_err(|f| f.error.context(f.label))
}

/// What carrying out an apply decision needs.
pub(crate) struct Apply<'a> {
    pub store: &'a Store,
    /// Shared with the run and the record, not copied.
    pub plan: &'a Arc<Plan>,
    pub sources: Vec<FileHash>,
    pub objects: Vec<FileHash>,
    pub started: Instant,
    pub numbering: Numbering,
    /// The hash of the saved plan being applied.
    pub last_plan: Option<String>,
}

impl Apply<'_> {
    fn run(
        &self,
        kind: RunKind,
        ops: Vec<Op>,
        commit_at: Option<usize>,
        pin_dirs: Vec<std::path::PathBuf>,
    ) -> Run {
        Run {
            kind,
            plan: self.plan.clone(),
            ops,
            commit_at,
            sources: self.sources.clone(),
            objects: self.objects.clone(),
            pin_dirs,
        }
    }
}

/// Carry out the apply stage of a decision.
pub(crate) fn apply(
    exec: &mut Executor,
    decision: Decision,
    loaded: Option<Loaded>,
    obs: &Observed,
    ctx: Apply,
) -> Result<Applied> {
    let manifest = ctx.plan.manifest.display().to_string();
    let mut record = loaded.map(|l| l.record).unwrap_or_else(|| Record {
        format_version: crate::kernel::remember::record::FORMAT_VERSION,
        manifest: ctx.plan.manifest.clone(),
        deployed: None,
        run: None,
        last_plan: None,
    });
    let (run, what) = match decision {
        Decision::Nothing => return settle_nothing(exec, record, &ctx),
        Decision::Refuse(why) => bail!(why),
        Decision::Recover { .. } => bail!("internal error: recovery is carried out before"),
        Decision::Entries(ops) => {
            exec.note(&format!(
                "only map contents differ: {} update(s), no program is reloaded",
                ops.len()
            ));
            (
                ctx.run(RunKind::Entries, ops, None, Vec::new()),
                Undone::Entries,
            )
        }
        Decision::Repair { reason, ops } => {
            exec.note(&format!(
                "{reason}: putting back only what drifted ({} step(s)), no program is reloaded",
                ops.len()
            ));
            (
                ctx.run(RunKind::Repair, ops, None, Vec::new()),
                Undone::Repair,
            )
        }
        Decision::Fresh { ops, pin_dirs } => {
            (ctx.run(RunKind::Fresh, ops, None, pin_dirs), Undone::Fresh)
        }
        Decision::Replace {
            reason,
            ops,
            commit_at,
            pin_dirs,
            notes,
        } => {
            exec.note(&format!(
                "{reason}: replacing the deployment (the new programs are loaded beside the \
                 running ones, then swapped in)"
            ));
            for n in &notes {
                exec.note(n);
            }
            (
                ctx.run(RunKind::Replace, ops, Some(commit_at), pin_dirs),
                Undone::Replace,
            )
        }
    };
    record.run = Some(run);
    let before = record.deployed.as_ref().map(ids_of);
    transact(exec, &ctx, record, obs).map_err(|f| explain(f, what))?;
    if let (Undone::Replace, Some((progs, maps))) = (what, before) {
        replaced(exec, &ctx, progs, maps)?;
    }
    exec.note(&format!(
        "applied {manifest} in {} ms",
        ctx.started.elapsed().as_millis()
    ));
    Ok(Applied::Changed)
}

/// The program and map ids a deployment holds.
fn ids_of(d: &crate::kernel::remember::record::Deployed) -> (Vec<u32>, Vec<u32>) {
    let progs = d.programs.iter().map(|p| p.id).collect();
    let mut maps: Vec<u32> = d
        .programs
        .iter()
        .flat_map(|p| p.map_ids.iter().copied())
        .chain(d.maps.iter().map(|m| m.id))
        .collect();
    maps.sort_unstable();
    maps.dedup();
    (progs, maps)
}

/// After a replace: what the kernel still holds of the old deployment
/// (connections made before it keep its programs) is said, and noted for
/// status, from a look.
fn replaced(exec: &mut Executor, ctx: &Apply, progs: Vec<u32>, maps: Vec<u32>) -> Result<()> {
    let now = match ctx.store.load() {
        crate::kernel::remember::record::Found::Ok(l) => l.record.deployed.as_ref().map(ids_of),
        _ => None,
    };
    let (new_progs, new_maps) = now.unwrap_or_default();
    // What earlier replaces left is still watched.
    let earlier = ctx.store.lingering().unwrap_or_default();
    let mut old_progs: Vec<u32> = progs
        .into_iter()
        .chain(earlier.programs)
        .filter(|id| !new_progs.contains(id))
        .collect();
    let mut old_maps: Vec<u32> = maps
        .into_iter()
        .chain(earlier.maps)
        .filter(|id| !new_maps.contains(id))
        .collect();
    old_progs.sort_unstable();
    old_progs.dedup();
    old_maps.sort_unstable();
    old_maps.dedup();
    let lingering = wait_freed(exec, &old_progs, &old_maps, Duration::from_secs(1))?;
    if !lingering.is_empty() {
        exec.note(&format!(
            "the old programs (ids {:?}) and maps (ids {:?}) live on: {} made before this \
             replace keep them until they close; the maps that were kept are the ones they use",
            lingering.programs,
            lingering.maps,
            if lingering.connections.is_empty() {
                "connections".to_string()
            } else {
                lingering.describe_connections()
            }
        ));
    }
    ctx.store.save_lingering(&lingering)
}

/// Nothing to change in the kernel: a source edit that compiled to the same
/// object, or a saved plan applied, is still recorded so `status` agrees.
fn settle_nothing(exec: &mut Executor, mut record: Record, ctx: &Apply) -> Result<Applied> {
    let new_sources = record
        .deployed
        .as_mut()
        .filter(|d| d.sources != ctx.sources)
        .map(|d| d.sources = ctx.sources.clone())
        .is_some();
    // What changes nothing in the kernel (counter labels, what destroy
    // writes first) is still the deployment's plan from now on.
    let new_plan = record
        .deployed
        .as_mut()
        .filter(|d| d.plan.as_ref() != ctx.plan.as_ref())
        .map(|d| d.plan = ctx.plan.clone())
        .is_some();
    if ctx.last_plan.is_some() {
        record.last_plan = ctx.last_plan.clone();
    }
    if new_sources || new_plan || ctx.last_plan.is_some() {
        ctx.store.save(&record)?;
    }
    exec.note(&format!(
        "No changes: the kernel matches {} ({} ms)",
        ctx.plan.manifest.display(),
        ctx.started.elapsed().as_millis()
    ));
    Ok(Applied::NoChanges)
}

/// Which kind of run failed, for what its undo means.
#[derive(Debug, Clone, Copy)]
enum Undone {
    Fresh,
    Entries,
    Repair,
    Replace,
}

/// The error of a failed run, saying what became of the kernel, as the
/// look after the rollback found it.
fn explain(f: Failed, what: Undone) -> anyhow::Error {
    if f.committed {
        return f.error.context(format!(
            "{}; the next `bpfplan apply` or `bpfplan destroy` ends the run, which is on record",
            f.label
        ));
    }
    if !f.rollback_failures.is_empty() {
        // The error already says the rollback failed too.
        let aftermath = f.aftermath();
        return f.error.context(format!("{}; {aftermath}", f.label));
    }
    let n = f.undone;
    let undone = match what {
        Undone::Fresh => format!("undid the {n} kernel change(s) before it"),
        Undone::Entries => {
            let plural = if n == 1 { "y" } else { "ies" };
            format!("restored the {n} entr{plural} it had changed, no program was touched")
        }
        Undone::Repair => {
            format!("undid the {n} repair(s) before it: the deployment is as it was, drift and all")
        }
        Undone::Replace => format!(
            "undid the {n} change(s) before it: the previous deployment still runs, unchanged"
        ),
    };
    let aftermath = f.aftermath();
    f.error
        .context(format!("{}; {undone}; {aftermath}", f.label))
}

/// Run a recorded run as a transaction: the run is on record before its
/// first op, each op is journaled before it runs, and the record says what
/// the kernel holds once it ends (from a look). A failure rolls back; a
/// rollback that fails leaves the run on record for the next apply or
/// destroy.
fn transact(
    exec: &mut Executor,
    ctx: &Apply,
    mut record: Record,
    obs: &Observed,
) -> Result<(), Failed> {
    let unrecorded = |e: anyhow::Error| Failed::before_any("recording the run failed", e);
    let store = ctx.store;
    store.save(&record).map_err(unrecorded)?;
    let Some(run) = record.run.take() else {
        return Ok(());
    };
    let mut journal = store.journal().map_err(unrecorded)?;
    let batch = Batch {
        stage: Stage::Apply,
        ops: &run.ops,
        policy: Policy::Transaction {
            commit_at: run.commit_at,
        },
        numbering: ctx.numbering,
        decided_on: Some(obs),
    };
    match exec.run(batch, Some(&mut journal)) {
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
                left: None,
            })
        }
        Ok(_) => {
            let done = |e: anyhow::Error| Failed {
                label: "the run completed, but recording what the kernel now holds failed".into(),
                error: e,
                undone: 0,
                rollback_failures: Vec::new(),
                committed: true,
                left: None,
            };
            let after = exec.observe(&looks_after(&run.plan)).map_err(done)?;
            record.deployed = Some(intent::completed(run, record.deployed.as_ref(), &after));
            // A saved plan counts as applied once its run completed.
            if ctx.last_plan.is_some() {
                record.last_plan = ctx.last_plan.clone();
            }
            store.save(&record).map_err(done)?;
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

/// What to look at to record a completed run: its pins and directories.
fn looks_after(plan: &Plan) -> Query {
    let mut q = Query::default();
    q.spec(&plan.spec, false);
    q.dirs(crate::kernel::remember::record::pin_dirs_and_parents(plan));
    q
}

/// End a killed run: undo it, or finish it past its point of no return;
/// then record its end.
pub(crate) fn recover(
    exec: &mut Executor,
    store: &Store,
    loaded: Loaded,
    r: &Recovery,
    numbering: Numbering,
) -> Result<()> {
    let mut record = loaded.record;
    let Some(run) = record.run.take() else {
        return Ok(());
    };
    if r.forward {
        exec.note(&format!(
            "an earlier run of this deployment was interrupted after its point of no return: \
             finishing its last {} step(s)",
            r.ops.len()
        ));
    } else {
        exec.note(&format!(
            "an earlier run of this deployment was interrupted: undoing its {} started step(s) \
             ({} still needed)",
            loaded.started,
            r.ops.len()
        ));
    }
    let failures = stage(exec, Stage::Recover, &r.ops, Policy::BestEffort, numbering)?;
    if !failures.is_empty() {
        bail!(
            "recovering the interrupted run failed:\n  {}",
            failures.join("\n  ")
        );
    }
    if r.forward {
        let after = exec.observe(&looks_after(&run.plan))?;
        record.deployed = Some(intent::completed(run, record.deployed.as_ref(), &after));
    }
    match record.deployed {
        Some(_) => store.save(&record),
        None => store.remove(),
    }
}

/// The end of a destroy: the record removed (or, unusable, set aside).
pub(crate) fn forget(exec: &mut Executor, store: &Store, corrupt: bool) -> Result<()> {
    if corrupt {
        let aside = store.set_aside()?;
        exec.note(&format!(
            "the unusable record was moved to {}",
            aside.display()
        ));
        Ok(())
    } else {
        store.remove()
    }
}

/// Record an adopted deployment.
pub(crate) fn adopted(store: &Store, record: &Record) -> Result<()> {
    store.save(record)
}

/// How long to wait for the kernel to free objects before asking whether
/// connections hold them (then waiting is no use).
const FREE_GRACE: Duration = Duration::from_millis(200);

/// Poll until programs and maps are freed (the kernel releases them a
/// moment after the last reference goes). When connections in a sockhash
/// of theirs hold them, that is said at once: they go when those close.
/// What still lives is returned.
pub(crate) fn wait_freed(
    exec: &mut Executor,
    prog_ids: &[u32],
    map_ids: &[u32],
    timeout: Duration,
) -> Result<Lingering> {
    let mut q = Query::default();
    q.ids(prog_ids, map_ids);
    let start = Instant::now();
    loop {
        let obs = exec.observe(&q)?;
        let live = Lingering {
            programs: prog_ids
                .iter()
                .copied()
                .filter(|id| obs.programs.contains_key(id))
                .collect(),
            maps: map_ids
                .iter()
                .copied()
                .filter(|id| obs.maps.contains_key(id))
                .collect(),
            connections: Vec::new(),
        };
        if live.is_empty() {
            return Ok(live);
        }
        if start.elapsed() > FREE_GRACE {
            let connections =
                crate::kernel::look::observe::connections(exec.kernel(), &obs, &live.maps)?;
            if !connections.is_empty() || start.elapsed() > timeout {
                return Ok(Lingering {
                    connections,
                    ..live
                });
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
