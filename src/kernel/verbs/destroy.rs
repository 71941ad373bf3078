//! destroy end to end: end a killed run, learn the tags of programs found
//! at the pins when there is no record (the probe), tear down what is this
//! deployment's, and wait until the kernel has freed it; and what `plan
//! --destroy` shows, which is the same intent. `adopt`, which uses the same
//! probe, lives here too.

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::kernel::act::carry;
use crate::kernel::act::exec::{Executor, Listener, Numbering, Policy};
use crate::kernel::act::seam::Kernel;
use crate::kernel::decide::intent::{self, Probe, Staged};
use crate::kernel::decide::{self, Tags};
use crate::kernel::look::observe::Query;
use crate::kernel::remember::build;
use crate::kernel::remember::record::{Deployed, Found, Lingering, Loaded, Record, Store};
use crate::kernel::verbs::apply::{Mismatch, lock_timeout, query, read_record};
use crate::kernel::verbs::preflight;
use crate::manifest::model::Staging;
use crate::plan::step::Step;
use crate::plan::{Plan, Review, Stage};

/// What destroy did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Destroyed {
    /// Nothing of the deployment was there.
    Nothing,
    /// Its pins and attachments are gone, and the kernel freed every
    /// program and map of it.
    Freed,
    /// Its pins and attachments are gone, but the kernel still holds these
    /// programs and maps (connections made during the bypass, or something
    /// else, reference them).
    Lingering(Lingering),
}

/// The objects of a plan that are built (a probe can load them).
fn built(plan: &Plan) -> BTreeSet<PathBuf> {
    plan.spec
        .programs
        .iter()
        .filter(|p| p.object.is_file())
        .map(|p| p.object.clone())
        .collect()
}

/// The record for destroy: an unusable one is set aside at the end, and
/// destroy removes only what the manifest declares and is recognisably
/// this deployment's.
fn load(exec: &mut Executor, store: &Store) -> (Option<Loaded>, bool) {
    match store.load() {
        Found::Missing => (None, false),
        Found::Ok(l) => (Some(*l), false),
        Found::Corrupt(why) => {
            exec.warn(&format!(
                "the record {} cannot be used ({why}): removing only what the manifest \
                 declares and is recognisably this deployment's",
                store.path.display()
            ));
            (None, true)
        }
    }
}

/// Destroy a deployment.
pub(crate) fn destroy(
    plan: &Plan,
    kernel: &mut dyn Kernel,
    listeners: Vec<&mut dyn Listener>,
) -> Result<Destroyed> {
    preflight::inspect()?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout()?)?;
    let mut exec = Executor::new(kernel, listeners);
    destroy_on(&mut exec, &store, plan, &built(plan))
}

/// Destroy, once checked and locked: the part the fake kernel runs.
/// `built` are the objects a probe can load.
pub(crate) fn destroy_on(
    exec: &mut Executor,
    store: &Store,
    plan: &Plan,
    built: &BTreeSet<PathBuf>,
) -> Result<Destroyed> {
    let (mut loaded, corrupt) = load(exec, store);
    let mut q = query(plan, loaded.as_ref());
    // Map contents matter to destroy only to undo or finish a run on
    // record; a million entries are not read to unpin their map.
    if loaded.as_ref().is_none_or(|l| l.record.run.is_none()) {
        q.dumps.clear();
        q.dump_ids.clear();
    }
    let mut obs = exec.observe(&q)?;
    let claims = store.claims();
    let foreseen = intent::destroy(plan, loaded.as_ref(), &obs, built, &claims);
    let total = foreseen.total();
    if let Some(r) = &foreseen.recover {
        let l = loaded
            .take()
            .context("internal error: a recovery without a record")?;
        let numbering = Numbering {
            first: foreseen.first(Stage::Recover),
            total,
        };
        carry::recover(exec, store, l, r, numbering)?;
        loaded = read_record(store)?;
        obs = exec.observe(&query(plan, loaded.as_ref()))?;
    }
    let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
    let probe = match deployed {
        Some(_) => None,
        None => intent::probe(plan, &obs, built, &claims),
    };
    let tags = match &probe {
        Some(p) => run_probe(exec, p, foreseen.first(Stage::Probe), total, plan)?,
        None => Tags::new(),
    };
    let decided = intent::teardown_intent(
        plan,
        deployed,
        &obs,
        foreseen.recover.clone(),
        probe,
        &tags,
        &claims,
    );
    if decided.ops != foreseen.ops {
        exec.note(&format!(
            "the kernel is not as foreseen before destroy began: its teardown is decided again \
             ({} step(s) where {} were foreseen)",
            decided.ops.len(),
            foreseen.ops.len()
        ));
    }
    teardown(exec, store, decided, corrupt, plan)
}

/// Tear down, forget the record, and wait for the kernel to free it all.
fn teardown(
    exec: &mut Executor,
    store: &Store,
    decided: intent::DestroyIntent,
    corrupt: bool,
    plan: &Plan,
) -> Result<Destroyed> {
    for f in &decided.teardown.foreign {
        exec.warn(f);
    }
    if decided.ops.is_empty() {
        exec.note("nothing to destroy");
    }
    let numbering = Numbering {
        first: decided.first(Stage::Destroy),
        total: decided.total(),
    };
    let failures = carry::stage(
        exec,
        Stage::Destroy,
        &decided.ops,
        Policy::BestEffort,
        numbering,
    )?;
    if !failures.is_empty() {
        bail!(
            "{} teardown step(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    carry::forget(exec, store, corrupt)?;
    let t = &decided.teardown;
    // What earlier replaces left is watched too.
    let earlier = store.lingering().unwrap_or_default();
    let mut progs: Vec<u32> = t.prog_ids.iter().copied().chain(earlier.programs).collect();
    let mut maps: Vec<u32> = t.map_ids.iter().copied().chain(earlier.maps).collect();
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    let lingering = carry::wait_freed(exec, &progs, &maps, carry::FREE_TIMEOUT)?;
    store.save_lingering(&lingering)?;
    let manifest = plan.manifest.display();
    if decided.ops.is_empty() {
        return Ok(Destroyed::Nothing);
    }
    if lingering.is_empty() {
        exec.note(&format!(
            "destroyed {manifest}: its pins and attachments are gone and the kernel freed its \
             programs and maps"
        ));
        return Ok(Destroyed::Freed);
    }
    let switched = t
        .steps
        .iter()
        .any(|s| matches!(s, Step::UpdateMapEntry { .. }));
    let why = if lingering.connections.is_empty() {
        "something else references them".to_string()
    } else {
        format!(
            "{} made during the bypass hold them and free them when they close{}",
            lingering.describe_connections(),
            if switched {
                "; the switch destroy set first sends everything they send from now on over \
                 TCP"
            } else {
                ""
            }
        )
    };
    exec.warn(&format!(
        "destroyed {manifest}'s pins and attachments, but the kernel still holds program ids \
         {:?} and map ids {:?}: {why} (`bpfplan status` reports them until they are gone)",
        lingering.programs, lingering.maps
    ));
    Ok(Destroyed::Lingering(lingering))
}

/// Load each probed program under its probe pin, read the tags, unpin.
pub(crate) fn run_probe(
    exec: &mut Executor,
    p: &Probe,
    first: usize,
    total: usize,
    plan: &Plan,
) -> Result<Tags> {
    exec.note("loading each program found at its pin once under a probe pin, to learn its tag");
    carry::stage(
        exec,
        Stage::Probe,
        &p.loads,
        Policy::Transaction { commit_at: None },
        Numbering { first, total },
    )
    .context("probing tags")?;
    let mut q = Query::default();
    for pin in intent::probe_pins(plan) {
        q.pin(pin.as_str());
    }
    let obs = exec.observe(&q)?;
    let mut tags = Tags::new();
    for prog in &plan.spec.programs {
        if let Some(info) = obs.program_at(prog.pin.staged(Staging::Probe).as_str()) {
            tags.insert(prog.pin.clone(), info.tag.clone());
        }
    }
    let numbering = Numbering {
        first: first + p.loads.len(),
        total,
    };
    let failures = carry::stage(exec, Stage::Probe, &p.unpins, Policy::BestEffort, numbering)?;
    if let Some(f) = failures.first() {
        bail!("removing a probe pin failed: {f}");
    }
    Ok(tags)
}

/// What adopt records, saying what it takes over.
fn adopted_record(
    exec: &mut Executor,
    plan: &Plan,
    programs: Vec<crate::kernel::remember::record::ProgramFact>,
    maps: Vec<crate::kernel::remember::record::MapFact>,
    sources: &[crate::kernel::remember::record::FileHash],
    objects: &[crate::kernel::remember::record::FileHash],
) -> Record {
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
    Record {
        format_version: crate::kernel::remember::record::FORMAT_VERSION,
        manifest: plan.manifest.clone(),
        deployed: Some(Deployed {
            plan: std::sync::Arc::new(plan.clone()),
            programs,
            maps,
            sources: sources.to_vec(),
            objects: objects.to_vec(),
            pin_dirs: Vec::new(),
        }),
        run: None,
        last_plan: None,
    }
}

/// What destroy would run now, as a reviewer reads it.
pub(crate) fn pending(plan: &Plan, kernel: &mut dyn Kernel) -> Result<Review> {
    preflight::inspect()?;
    let store = Store::for_plan(plan)?;
    let (loaded, corrupt) = match store.load() {
        Found::Missing => (None, false),
        Found::Ok(l) => (Some(*l), false),
        Found::Corrupt(_) => (None, true),
    };
    let obs = kernel.observe(&query(plan, loaded.as_ref()))?;
    let mut review = intent::destroy_review(&intent::destroy(
        plan,
        loaded.as_ref(),
        &obs,
        &built(plan),
        &store.claims(),
    ));
    if corrupt {
        review.notes.push(format!(
            "the record {} cannot be used: destroy removes only what the manifest declares and \
             is recognisably this deployment's, and sets the record aside",
            store.path.display()
        ));
    }
    Ok(review)
}

/// Take over a deployment made by hand or by the sh script: refused unless
/// the kernel holds exactly what the manifest makes (with the differences);
/// then recorded as bpfplan's, as if apply had made it.
pub(crate) fn adopt(
    plan: &Plan,
    kernel: &mut dyn Kernel,
    listeners: Vec<&mut dyn Listener>,
) -> Result<()> {
    let trust_warnings = preflight::apply(plan, true)?;
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
    let mut exec = Executor::new(kernel, listeners);
    for w in &trust_warnings {
        exec.warn(w);
    }
    let build = intent::build_ops(plan);
    let obs = exec.observe(&query(plan, None))?;
    let probe = intent::probe(
        plan,
        &obs,
        &plan
            .spec
            .programs
            .iter()
            .map(|p| p.object.clone())
            .collect(),
        &store.claims(),
    );
    let probed = probe.as_ref().map_or(0, |p| p.loads.len() + p.unpins.len());
    let total = build.len() + probed;
    crate::kernel::verbs::apply::build_stage(
        &mut exec,
        plan,
        &build,
        Numbering { first: 1, total },
    )?;
    let tags = match &probe {
        Some(p) => run_probe(&mut exec, p, build.len() + 1, total, plan)?,
        None => Tags::new(),
    };
    take_over(
        &mut exec,
        &store,
        plan,
        &tags,
        &build::built(plan)?,
        &build::source_hashes(plan)?,
    )
}

/// The end of an adoption, once the tags are known: the kernel must hold
/// exactly what the manifest makes, and nothing another record claims;
/// then it is recorded as bpfplan's, as if apply had made it.
pub(crate) fn take_over(
    exec: &mut Executor,
    store: &Store,
    plan: &Plan,
    tags: &Tags,
    built: &build::Built,
    sources: &[crate::kernel::remember::record::FileHash],
) -> Result<()> {
    let mut q = query(plan, None);
    q.cgroup_tree = crate::host::HostFacts::read().ok().and_then(|h| h.cgroup2);
    let obs = exec.observe(&q)?;
    let claims = store.claims();
    let (programs, maps) = decide::adoption(plan, &obs, tags, built).map_err(|lines| Mismatch {
        headline: format!(
            "the kernel does not hold exactly what {} makes, so nothing was adopted",
            plan.manifest.display()
        ),
        lines,
    })?;
    if let Some((p, who)) = programs
        .iter()
        .find_map(|p| claims.ids.get(&p.id).map(|who| (p, who)))
    {
        return Err(Mismatch {
            headline: format!("nothing was adopted: {}", plan.manifest.display()),
            lines: vec![format!(
                "program `{}` (id {}) is the deployment of {who}: its record claims it",
                p.name, p.id
            )],
        }
        .into());
    }
    let record = adopted_record(exec, plan, programs, maps, sources, &built.hashes);
    carry::adopted(store, &record)?;
    exec.note(&format!(
        "adopted {}: it is bpfplan's now (recorded in {})",
        plan.manifest.display(),
        store.path.display()
    ));
    Ok(())
}
