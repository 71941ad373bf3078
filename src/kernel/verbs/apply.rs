//! apply end to end: check, lock, look at the kernel, decide what runs (the
//! intent, purely), build, then carry out the rest of the intent; and what
//! `plan` and `plan --out` show, which is the same intent.

use anyhow::{Result, bail};
use std::time::{Duration, Instant};

use crate::kernel::act::carry::{self, Applied};
use crate::kernel::act::exec::{Executor, Listener, Numbering, Policy};
use crate::kernel::act::seam::Kernel;
use crate::kernel::decide::intent::{self, ApplyIntent, Staged};
use crate::kernel::decide::{Decision, Reason};
use crate::kernel::look::observe::{Observed, Query};
use crate::kernel::remember::build;
use crate::kernel::remember::build::Built;
use crate::kernel::remember::record::{Found, Loaded, Store};
use crate::kernel::remember::saved::{self, SavedObject, SavedPlan};
use crate::kernel::verbs::preflight;
use crate::plan::step::Step;
use crate::plan::{Plan, Review, Stage};

/// How long a second apply or destroy waits for the first
/// (`BPFPLAN_LOCK_TIMEOUT`, seconds, default 30; `inf` waits for good).
pub(crate) fn lock_timeout() -> Result<Option<Duration>> {
    crate::util::env_seconds("BPFPLAN_LOCK_TIMEOUT", 30.0)
}

/// The record of a deployment, or the reason it cannot be used.
pub(crate) fn read_record(store: &Store) -> Result<Option<Loaded>> {
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

/// What to look at to decide for a plan and its record: its objects, its
/// pin directories, every staging name a replace or a probe may use, and
/// what the record names.
pub(crate) fn query(plan: &Plan, loaded: Option<&Loaded>) -> Query {
    let mut q = Query::default();
    q.spec(&plan.spec, true);
    q.dirs(crate::kernel::remember::record::pin_dirs_and_parents(plan));
    let deployed = loaded.and_then(|l| l.record.deployed.as_ref());
    for pin in crate::kernel::decide::swap_pins(plan, deployed) {
        q.pin(&pin);
    }
    for pin in intent::probe_pins(plan) {
        q.pin(pin.as_str());
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
/// changed; the command fails.
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
    plan: &std::sync::Arc<Plan>,
    kernel: &mut dyn Kernel,
    listeners: Vec<&mut dyn Listener>,
    reviewed: Option<&Reviewed>,
) -> Result<Applied> {
    let started = Instant::now();
    let trust_warnings = preflight::apply(plan, reviewed.is_none())?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout()?)?;
    let mut exec = Executor::new(kernel, listeners);
    for w in &trust_warnings {
        exec.warn(w);
    }
    let loaded = read_record(&store)?;
    let mut obs = exec.observe(&query(plan, loaded.as_ref()))?;
    let mount = preflight::bpffs_mount(plan)?;
    let build = match reviewed {
        Some(_) => Vec::new(),
        None => intent::build_ops(plan),
    };
    // What apply foresees before it builds (a changed source stands for a
    // changed program, as `plan` shows it) numbers the mount and the build.
    let (foreseen, assumed) = foresee(plan, mount, build, loaded.as_ref(), &obs)?;
    let foreseen = foreseen.adopting(plan, loaded.as_ref(), &obs, &store.claims());
    if let Some(r) = reviewed {
        check_reviewed(r, loaded.as_ref(), &obs)?;
        check_review(
            plan,
            r,
            loaded.as_ref(),
            &obs,
            &foreseen.mount,
            &store.claims(),
        )?;
    }
    let total = foreseen.total();
    if !foreseen.mount.is_empty() {
        mount_stage(&mut exec, &foreseen.mount, Numbering { first: 1, total })?;
        obs = exec.observe(&query(plan, loaded.as_ref()))?;
    }
    preflight::on_bpffs(plan)?;
    match reviewed {
        Some(r) => {
            exec.note(
                "the deployment is as it was when the plan was made: loading the reviewed objects",
            );
            saved::install(&r.saved.objects)?;
        }
        None => {
            let numbering = Numbering {
                first: foreseen.first(Stage::Build),
                total,
            };
            build_stage(&mut exec, plan, &foreseen.build, numbering)?;
        }
    }
    let built = build::built(plan)?;
    build::check_capacity(plan, &built)?;
    let inputs = Inputs {
        built,
        sources: match reviewed {
            Some(r) => r.saved.sources.clone(),
            None => build::source_hashes(plan)?,
        },
        last_plan: reviewed.map(|r| r.hash.clone()),
        started,
    };
    if loaded.is_none() {
        warn_other_deployments(&mut exec, &store, plan);
    }
    let pre = Pre {
        mount: foreseen.mount.clone(),
        build: foreseen.build.clone(),
    };
    // When nothing was mounted (the kernel was looked at once) and the
    // objects are the ones foreseen, deciding again would take the same
    // inputs to the same decision: it is kept. Otherwise only what it takes
    // to tell a different decision is kept: the foreseen ops of a million
    // entries are not held while apply decides again.
    // The objects' hashes are read only against a deployment on record.
    let deployed = loaded.as_ref().is_some_and(|l| l.record.deployed.is_some());
    let same_objects =
        assumed.maps == inputs.built.maps && (!deployed || assumed.hashes == inputs.built.hashes);
    let prior = if reviewed.is_none() && foreseen.mount.is_empty() && same_objects {
        Prior::Decided(Box::new(foreseen))
    } else {
        Prior::Foreseen(Foreseen::of(&foreseen.decision))
    };
    carry_out(
        &mut exec,
        &store,
        plan,
        pre,
        loaded,
        obs,
        inputs,
        Some(prior),
    )
}

/// What apply decided before it built, handed to the decision after it.
pub(crate) enum Prior {
    /// Decided from other inputs: said when the decision after the build
    /// differs.
    Foreseen(Foreseen),
    /// Decided from the same inputs as after the build: the decision.
    Decided(Box<ApplyIntent>),
}

/// Mount bpffs where the pins need one (through the executor, like every
/// change).
fn mount_stage(exec: &mut Executor, mount: &[crate::plan::Op], numbering: Numbering) -> Result<()> {
    exec.note("bpffs is not mounted where the pins go: mounting it");
    let failures = carry::stage(exec, Stage::Mount, mount, Policy::BestEffort, numbering)?;
    match failures.first() {
        Some(f) => bail!("{f}"),
        None => Ok(()),
    }
}

/// What apply would run with the saved plan's objects is what the file
/// shows its reviewer, or nothing runs.
fn check_review(
    plan: &Plan,
    r: &Reviewed,
    loaded: Option<&Loaded>,
    obs: &Observed,
    mount: &[crate::plan::Op],
    claims: &crate::kernel::remember::record::Claims,
) -> Result<()> {
    let mut objects = Built::default();
    for o in &r.saved.objects {
        objects
            .hashes
            .push(crate::kernel::remember::record::FileHash {
                path: o.path.clone(),
                sha256: o.sha256.clone(),
            });
        objects
            .maps
            .insert(o.path.clone(), build::object_maps(&o.kept)?);
    }
    let decided = intent::apply(plan, None, Vec::new(), loaded, obs, &objects)
        .adopting(plan, loaded, obs, claims);
    let decided = ApplyIntent {
        mount: mount.to_vec(),
        ..decided
    };
    let deployed = loaded.and_then(|l| l.record.deployed.as_ref());
    let now = intent::apply_review(plan, &decided, deployed, obs);
    if now.decision == r.saved.review.decision && now.changes == r.saved.review.changes {
        return Ok(());
    }
    Err(Mismatch {
        headline: "what apply would run is not what the saved plan shows; nothing was \
                   changed: make the plan again"
            .into(),
        lines: vec![format!(
            "the file shows `{}` with {} step(s); apply would run `{}` with {}",
            r.saved.review.decision.word(),
            r.saved.review.changes.len(),
            now.decision.word(),
            now.changes.len()
        )],
    }
    .into())
}

/// The stages of apply that ran before it decides with the objects built:
/// they number the stages after them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pre {
    pub mount: Vec<crate::plan::Op>,
    pub build: Vec<crate::plan::Op>,
}

/// What apply records of the inputs besides the kernel.
pub(crate) struct Inputs {
    /// The objects as built: their hashes and the maps they define.
    pub built: Built,
    pub sources: Vec<crate::kernel::remember::record::FileHash>,
    /// The hash of the saved plan being applied.
    pub last_plan: Option<String>,
    pub started: Instant,
}

/// Decide with the objects as built, then carry the decision out: the
/// recovery of a killed run, if any, then the apply stage. `prior` is
/// what was decided before the build: the decision itself when it was made
/// from the same inputs, or else its fingerprint, said when it differs.
/// The part of apply the fake kernel runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn carry_out(
    exec: &mut Executor,
    store: &Store,
    plan: &std::sync::Arc<Plan>,
    pre: Pre,
    mut loaded: Option<Loaded>,
    mut obs: Observed,
    inputs: Inputs,
    prior: Option<Prior>,
) -> Result<Applied> {
    let (decided, foreseen) = match prior {
        Some(Prior::Decided(d)) => (*d, None),
        prior => {
            let decided =
                intent::apply(plan, None, pre.build, loaded.as_ref(), &obs, &inputs.built)
                    .adopting(plan, loaded.as_ref(), &obs, &store.claims());
            let decided = ApplyIntent {
                mount: pre.mount,
                ..decided
            };
            let foreseen = match prior {
                Some(Prior::Foreseen(f)) => Some(f),
                _ => None,
            };
            (decided, foreseen)
        }
    };
    if let Some(f) = foreseen
        && f != Foreseen::of(&decided.decision)
    {
        exec.note(&format!(
            "with the objects built, apply decides `{}` rather than the `{}` foreseen from the \
             sources",
            decided_word(&decided.decision),
            f.word
        ));
    }
    let mut ctx = carry::Apply {
        store,
        plan,
        sources: inputs.sources.clone(),
        objects: inputs.built.hashes.clone(),
        started: inputs.started,
        numbering: Numbering {
            first: decided.first(Stage::Apply),
            total: decided.total(),
        },
        last_plan: inputs.last_plan,
    };
    let (recover_first, probe_first, total) = (
        decided.first(Stage::Recover),
        decided.first(Stage::Probe),
        decided.total(),
    );
    let ApplyIntent {
        recover,
        adopt,
        mut decision,
        ..
    } = decided;
    if let Some(r) = &recover {
        let Some(l) = loaded.take() else {
            bail!("internal error: a recovery without a record");
        };
        let numbering = Numbering {
            first: recover_first,
            total,
        };
        carry::recover(exec, store, l, r, numbering)?;
        let again;
        (loaded, obs, again) = decide_again(exec, store, plan, &inputs.built, &decision, &mut ctx)?;
        if again.recover.is_some() {
            bail!("an interrupted run could not be recovered; run `bpfplan destroy`, then apply");
        }
        decision = again.decision;
    }
    if let Some(p) = &adopt {
        exec.note(&format!(
            "bpfplan has no record of the programs at {}'s pins: adopting the deployment if the \
             kernel holds exactly what the manifest makes",
            plan.manifest.display()
        ));
        let tags = crate::kernel::verbs::destroy::run_probe(exec, p, probe_first, total, plan)?;
        crate::kernel::verbs::destroy::take_over(
            exec,
            store,
            plan,
            &tags,
            &inputs.built,
            &inputs.sources,
        )?;
        let again;
        (loaded, obs, again) = decide_again(exec, store, plan, &inputs.built, &decision, &mut ctx)?;
        decision = again.decision;
    }
    carry::apply(exec, decision, loaded, &obs, ctx)
}

/// After a stage that changes what apply decides on (a recovery, an
/// adoption), the record and the kernel as it left them decide, whatever
/// was foreseen; a decision other than the foreseen one is said, and the
/// steps are numbered on from it.
fn decide_again(
    exec: &mut Executor,
    store: &Store,
    plan: &Plan,
    built: &Built,
    foreseen: &Decision,
    ctx: &mut carry::Apply,
) -> Result<(Option<Loaded>, Observed, ApplyIntent)> {
    let loaded = read_record(store)?;
    let obs = exec.observe(&query(plan, loaded.as_ref()))?;
    let again = intent::apply(plan, None, Vec::new(), loaded.as_ref(), &obs, built);
    if again.decision != *foreseen {
        exec.note(&format!(
            "the kernel is not as foreseen after the steps before: apply decided again (`{}`)",
            decided_word(&again.decision)
        ));
        ctx.numbering.total = ctx.numbering.first - 1 + intent::run_ops(&again.decision).len();
    }
    Ok((loaded, obs, again))
}

/// A decision as far as telling another one apart: its word, and its ops
/// by count and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Foreseen {
    word: &'static str,
    ops: usize,
    hash: u64,
}

impl Foreseen {
    fn of(d: &Decision) -> Foreseen {
        use std::hash::{Hash, Hasher};
        let ops = intent::run_ops(d);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ops.hash(&mut h);
        Foreseen {
            word: decided_word(d),
            ops: ops.len(),
            hash: h.finish(),
        }
    }
}

fn decided_word(d: &Decision) -> &'static str {
    match d {
        Decision::Nothing => "nothing",
        Decision::Recover { .. } => "recover",
        Decision::Entries(_) => "entries",
        Decision::Repair { .. } => "repair",
        Decision::Replace { .. } => "replace",
        Decision::Fresh { .. } => "fresh",
        Decision::Refuse(_) => "refused",
    }
}

/// Build first (no kernel change, and compile errors stop here), into a
/// build directory that must be root's own. Returns the trust rule's
/// warnings about the headers it read (told to the executor too).
pub(crate) fn build_stage(
    exec: &mut Executor,
    plan: &Plan,
    ops: &[crate::plan::Op],
    numbering: Numbering,
) -> Result<Vec<String>> {
    for step in plan.outline() {
        if let Step::MakeBuildDir { dir } = step {
            build::check_dir(dir)?;
        }
    }
    carry::stage(
        exec,
        Stage::Build,
        ops,
        Policy::Transaction { commit_at: None },
        numbering,
    )?;
    // What this compile read is held to the trust rule before anything
    // loads; what an earlier one read was checked before the build.
    let mut told = Vec::new();
    for step in ops.iter().map(|op| &op.step) {
        if let Step::Compile { object, .. } = step {
            for w in preflight::headers(object)? {
                if !told.contains(&w) {
                    exec.warn(&w);
                    told.push(w);
                }
            }
        }
    }
    Ok(told)
}

/// What apply will run, foreseen without building: the objects are the
/// recorded ones while the sources are as recorded, else none (so a changed
/// source reads as a changed program).
fn foresee(
    plan: &Plan,
    mount: Option<Step>,
    build: Vec<crate::plan::Op>,
    loaded: Option<&Loaded>,
    obs: &Observed,
) -> Result<(ApplyIntent, Built)> {
    let deployed = loaded.and_then(|l| l.record.deployed.as_ref());
    let rebuilt =
        deployed.is_some_and(|d| build::source_hashes(plan).ok().as_ref() != Some(&d.sources));
    // The objects on disk are the deployed ones while the sources are; what
    // they define (their maps) is read from them as they are.
    let mut objects = Built::default();
    if let Some(d) = deployed
        && !rebuilt
    {
        objects.hashes = d.objects.clone();
    }
    for p in &plan.spec.programs {
        if let Ok(maps) = build::object_maps(&p.object) {
            objects.maps.insert(p.object.clone(), maps);
        }
    }
    let mut foreseen = intent::apply(plan, mount, build, loaded, obs, &objects);
    if let Decision::Replace { reason, .. } = &mut foreseen.decision
        && rebuilt
        && *reason == Reason::ProgramChanged
    {
        *reason = Reason::SourceChanged;
    }
    Ok((foreseen, objects))
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
pub(crate) fn save(
    plan: &std::sync::Arc<Plan>,
    kernel: &mut dyn Kernel,
    vars: &[(String, String)],
) -> Result<SavedPlan> {
    let trust_warnings = preflight::apply(plan, true)?;
    let store = Store::for_plan(plan)?;
    let loaded = read_record(&store)?;
    let mut exec = Executor::new(kernel, Vec::new());
    for w in &trust_warnings {
        say!("warning: {w}");
    }
    let obs = exec.observe(&query(plan, loaded.as_ref()))?;
    let build = intent::build_ops(plan);
    for w in build_stage(&mut exec, plan, &build, Numbering::alone(&build))? {
        say!("warning: {w}");
    }
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
    let hashes = build::built(plan)?;
    build::check_capacity(plan, &hashes)?;
    // Applied, a saved plan loads its kept objects and builds nothing.
    let decided = intent::apply(
        plan,
        preflight::bpffs_mount(plan)?,
        Vec::new(),
        loaded.as_ref(),
        &obs,
        &hashes,
    )
    .adopting(plan, loaded.as_ref(), &obs, &store.claims());
    let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
    let review = intent::apply_review(plan, &decided, deployed, &obs);
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

fn warn_other_deployments(exec: &mut Executor, store: &Store, plan: &Plan) {
    for other in store.others(plan) {
        let pins: Vec<String> = other
            .deployed
            .iter()
            .flat_map(|d| d.plan.spec.programs.iter().map(|p| p.pin.0.clone()))
            .collect();
        exec.warn(&format!(
            "{} has another deployment, with programs pinned at {}; it stays in place (a \
             deployment is its manifest and its pin directories): destroy it with the \
             variables it was applied with if it should go",
            plan.manifest.display(),
            pins.join(", ")
        ));
    }
}

/// What apply would run now, without building or changing anything: the
/// intent `apply` starts from (a changed source counts as a changed
/// program), as a reviewer reads it.
pub(crate) fn pending(plan: &Plan, kernel: &mut dyn Kernel) -> Result<Review> {
    preflight::inspect()?;
    let store = Store::for_plan(plan)?;
    let loaded = read_record(&store)?;
    let obs = kernel.observe(&query(plan, loaded.as_ref()))?;
    let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
    let foreseen = foresee(
        plan,
        preflight::bpffs_mount(plan)?,
        intent::build_ops(plan),
        loaded.as_ref(),
        &obs,
    )?
    .0
    .adopting(plan, loaded.as_ref(), &obs, &store.claims());
    Ok(intent::apply_review(plan, &foreseen, deployed, &obs))
}

/// `bpfplan build`: compile what the plan compiles into the build cache,
/// changing nothing in the kernel; an apply afterwards needs no compiler.
pub(crate) fn build_only(
    plan: &Plan,
    kernel: &mut dyn Kernel,
    listeners: Vec<&mut dyn Listener>,
) -> Result<()> {
    if !build::stale_compiles(plan).is_empty() && which::which("clang").is_err() {
        bail!("`clang` not found in PATH: run `make deps` (apt-get install clang libbpf-dev)");
    }
    let mut exec = Executor::new(kernel, listeners);
    let ops = intent::build_ops(plan);
    build_stage(&mut exec, plan, &ops, Numbering::alone(&ops))?;
    for p in &plan.spec.programs {
        exec.note(&format!("`{}`: {}", p.name, p.object.display()));
    }
    Ok(())
}
