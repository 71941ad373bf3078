//! What a command will run, decided before it runs anything: its stages in
//! order (mount, build, recover, probe, apply or destroy), each a list of
//! ops, numbered on from one stage to the next. `plan` renders an intent,
//! apply and destroy carry one out: the steps a reviewer reads are the
//! steps that run. Pure: the plan, the record and one look decide.
//!
//! A stage that follows a recovery or a probe is decided on the kernel as
//! the steps before it will leave it (the recovery simulator); the command
//! looks again when it gets there and says so if the kernel is not as
//! foreseen.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::kernel::decide::recovery::{self, Simulated};
use crate::kernel::decide::{self, Decision, Tags, Teardown};
use crate::kernel::look::inspect::PinState;
use crate::kernel::look::observe::Observed;
use crate::kernel::remember::record::{Claims, Deployed, Loaded, MapFact, ProgramFact, Run};
use crate::manifest::model::{ProgPin, Staging, kernel_name};
use crate::plan::step::{ProgRef, Step};
use crate::plan::{DecisionKind, Op, Plan, Review, Span, Stage};

/// A killed run's end: its ops, and whether they finish it (past its point
/// of no return) or undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub ops: Vec<Op>,
    pub forward: bool,
}

/// Without a record, the programs loaded once under probe pins to learn
/// the tags their objects get, and the unpins after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub loads: Vec<Op>,
    pub unpins: Vec<Op>,
}

/// What apply runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApplyIntent {
    pub mount: Vec<Op>,
    pub build: Vec<Op>,
    pub recover: Option<Recovery>,
    /// Without a record, when the kernel holds programs at this manifest's
    /// pins (made by the sh script, or pins that outlived a lost `/run`):
    /// the probe that learns their objects' tags, after which apply adopts
    /// the deployment if it is exactly what the manifest makes, else
    /// refuses with the differences.
    pub adopt: Option<Probe>,
    /// What apply does once any recovery or adoption has run.
    pub decision: Decision,
}

impl ApplyIntent {
    /// The adoption of a record-less deployment at the manifest's pins, if
    /// that is what this intent meets: a first apply refused because pins
    /// exist, with programs at them of the manifest's types and names that
    /// no other record claims. Foreseen as adopted: nothing more to change.
    pub(crate) fn adopting(
        self,
        plan: &Plan,
        loaded: Option<&Loaded>,
        obs: &Observed,
        claims: &Claims,
    ) -> ApplyIntent {
        if loaded.is_some() || !matches!(self.decision, Decision::Refuse(_)) {
            return self;
        }
        let objects: BTreeSet<PathBuf> = plan
            .spec
            .programs
            .iter()
            .map(|p| p.object.clone())
            .collect();
        match probe(plan, obs, &objects, claims) {
            Some(p) => ApplyIntent {
                adopt: Some(p),
                decision: Decision::Nothing,
                ..self
            },
            None => self,
        }
    }
}

/// What destroy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DestroyIntent {
    pub recover: Option<Recovery>,
    pub probe: Option<Probe>,
    pub teardown: Teardown,
    /// The teardown's steps as ops (best effort: none is undone).
    pub ops: Vec<Op>,
}

/// The ops of each stage, in the order they run.
pub(crate) trait Staged {
    fn stages(&self) -> Vec<(Stage, &[Op])>;

    /// How many steps run in all.
    fn total(&self) -> usize {
        self.stages().iter().map(|(_, ops)| ops.len()).sum()
    }

    /// The number of the first step of `stage` (numbered on from 1).
    fn first(&self, stage: Stage) -> usize {
        1 + self
            .stages()
            .iter()
            .take_while(|(s, _)| *s != stage)
            .map(|(_, ops)| ops.len())
            .sum::<usize>()
    }

    /// Every step, with the stage spans of a review.
    fn steps(&self) -> (Vec<Step>, Vec<Span>) {
        let mut steps = Vec::new();
        let mut spans = Vec::new();
        for (stage, ops) in self.stages() {
            if ops.is_empty() {
                continue;
            }
            spans.push(Span {
                stage,
                steps: ops.len(),
            });
            steps.extend(ops.iter().map(|o| o.step.clone()));
        }
        (steps, spans)
    }
}

impl Staged for ApplyIntent {
    fn stages(&self) -> Vec<(Stage, &[Op])> {
        let mut out: Vec<(Stage, &[Op])> =
            vec![(Stage::Mount, &self.mount), (Stage::Build, &self.build)];
        if let Some(r) = &self.recover {
            out.push((Stage::Recover, &r.ops));
        }
        if let Some(p) = &self.adopt {
            out.push((Stage::Probe, &p.loads));
            out.push((Stage::Probe, &p.unpins));
        }
        out.push((Stage::Apply, run_ops(&self.decision)));
        out
    }
}

impl Staged for DestroyIntent {
    fn stages(&self) -> Vec<(Stage, &[Op])> {
        let mut out: Vec<(Stage, &[Op])> = Vec::new();
        if let Some(r) = &self.recover {
            out.push((Stage::Recover, &r.ops));
        }
        if let Some(p) = &self.probe {
            out.push((Stage::Probe, &p.loads));
            out.push((Stage::Probe, &p.unpins));
        }
        out.push((Stage::Destroy, &self.ops));
        out
    }
}

/// The ops a decision runs (none for nothing, refuse and recover).
pub(crate) fn run_ops(d: &Decision) -> &[Op] {
    match d {
        Decision::Entries(ops)
        | Decision::Repair { ops, .. }
        | Decision::Replace { ops, .. }
        | Decision::Fresh { ops, .. } => ops,
        Decision::Nothing | Decision::Refuse(_) | Decision::Recover { .. } => &[],
    }
}

/// The build stage of a plan: its steps that change no kernel object.
pub(crate) fn build_ops(plan: &Plan) -> Vec<Op> {
    plan.outline()
        .iter()
        .filter(|s| !s.touches_kernel())
        .cloned()
        .map(Op::of)
        .collect()
}

/// Decide apply: `built` are the objects the plan loads (hashes and maps);
/// `mount` the bpffs mount preflight found missing.
pub(crate) fn apply(
    plan: &Plan,
    mount: Option<Step>,
    build: Vec<Op>,
    loaded: Option<&Loaded>,
    obs: &Observed,
    built: &crate::kernel::remember::build::Built,
) -> ApplyIntent {
    let (recover, decision) = match decide::decide(plan, loaded, obs, built) {
        Decision::Recover { ops, forward } => {
            let (after, sim) = recovered(loaded, &ops, forward, obs);
            let decision = decide::decide(plan, after.as_ref(), &sim, built);
            (Some(Recovery { ops, forward }), decision)
        }
        d => (None, d),
    };
    ApplyIntent {
        mount: mount.into_iter().map(Op::of).collect(),
        build,
        recover,
        adopt: None,
        decision,
    }
}

/// The record and the kernel as a recovery will leave them: undone, the
/// run is gone from the record; finished, what it brought in is deployed.
pub(crate) fn recovered(
    loaded: Option<&Loaded>,
    ops: &[Op],
    forward: bool,
    obs: &Observed,
) -> (Option<Loaded>, Observed) {
    let mut sim = Simulated::new(obs);
    for op in ops {
        sim.effect(&op.step);
    }
    let obs = sim.into_observed();
    let Some(l) = loaded else {
        return (None, obs);
    };
    let mut record = l.record.clone();
    if let Some(run) = record.run.take()
        && forward
    {
        record.deployed = Some(completed(run, record.deployed.as_ref(), &obs));
    }
    let after = (record.deployed.is_some() || record.last_plan.is_some())
        .then_some(Loaded { record, started: 0 });
    (after, obs)
}

/// What the kernel holds once `run` completed, as a look shows it: its
/// plan, with the ids and tags behind its pins. Pin directories made
/// before stay ours while the plan still pins there and they exist.
pub(crate) fn completed(run: Run, before: Option<&Deployed>, obs: &Observed) -> Deployed {
    let programs = run
        .plan
        .spec
        .programs
        .iter()
        .filter_map(|p| {
            let info = obs.program_at(p.pin.as_str())?;
            Some(ProgramFact {
                name: p.name.clone(),
                pin: p.pin.clone(),
                id: info.id,
                tag: info.tag.clone(),
                map_ids: info.map_ids.clone(),
            })
        })
        .collect();
    let maps = run
        .plan
        .spec
        .maps
        .iter()
        .filter_map(|m| match obs.pins.get(m.pin.as_str()) {
            Some(PinState::Map(info)) => Some(MapFact {
                name: m.name.clone(),
                pin: m.pin.clone(),
                id: info.id,
            }),
            _ => None,
        })
        .collect();
    let in_use = crate::kernel::remember::record::pin_dirs_and_parents(&run.plan);
    let mut pin_dirs: Vec<PathBuf> = before
        .map(|d| d.pin_dirs.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| in_use.contains(d) && obs.dirs.contains(d))
        .collect();
    pin_dirs.extend(run.pin_dirs.iter().cloned());
    pin_dirs.sort();
    pin_dirs.dedup();
    Deployed {
        plan: run.plan,
        programs,
        maps,
        sources: run.sources,
        objects: run.objects,
        pin_dirs,
    }
}

/// Decide destroy. `target` is what was deployed (or, without a record,
/// what the manifest declares); `built` the objects that exist, which a
/// probe can load. Without a record, the teardown is decided as if each
/// probed program has the tag of what sits at its pin: the probe tells,
/// and destroy decides its teardown again with what it learned.
pub(crate) fn destroy(
    plan: &Plan,
    loaded: Option<&Loaded>,
    obs: &Observed,
    built: &BTreeSet<PathBuf>,
    claims: &Claims,
) -> DestroyIntent {
    let mut recover = None;
    let (after, obs) = match loaded {
        Some(l) => match &l.record.run {
            Some(run) => {
                let (ops, forward) = recovery::recovery(run, l.started, obs);
                let after = recovered(loaded, &ops, forward, obs);
                recover = Some(Recovery { ops, forward });
                after
            }
            None => (Some(l.clone()), obs.clone()),
        },
        None => (None, obs.clone()),
    };
    let deployed = after.as_ref().and_then(|l| l.record.deployed.as_ref());
    let probe = match deployed {
        Some(_) => None,
        None => probe(plan, &obs, built, claims),
    };
    teardown_intent(plan, deployed, &obs, recover, probe, &Tags::new(), claims)
}

/// The teardown part of destroy, once the tags are known (or foreseen).
pub(crate) fn teardown_intent(
    plan: &Plan,
    deployed: Option<&Deployed>,
    obs: &Observed,
    recover: Option<Recovery>,
    probe: Option<Probe>,
    tags: &Tags,
    claims: &Claims,
) -> DestroyIntent {
    let target = deployed.map_or(plan, |d| &d.plan);
    let mut teardown = decide::teardown(target, deployed, obs, tags);
    if deployed.is_none() {
        unclaimed(&mut teardown, obs, claims);
    }
    let ops = teardown
        .steps
        .iter()
        .cloned()
        .map(|step| Op { step, undo: None })
        .collect();
    DestroyIntent {
        recover,
        probe,
        teardown,
        ops,
    }
}

/// Without a record, a program or map that another deployment's record
/// claims is never this one's, whatever its type, name and tag: its steps
/// go, and a note says whose it is.
fn unclaimed(t: &mut Teardown, obs: &Observed, claims: &Claims) {
    let claimed_pin = |pin: &str| claims.pins.get(pin);
    let claimed_prog = |r: &ProgRef| match r {
        ProgRef::Pinned(p) => claimed_pin(p.as_str()).or_else(|| {
            obs.program_at(p.as_str())
                .and_then(|i| claims.ids.get(&i.id))
        }),
        ProgRef::Id(id) => claims.ids.get(id),
    };
    let mut kept = Vec::new();
    let mut notes = Vec::new();
    for step in std::mem::take(&mut t.steps) {
        let whose = match &step {
            Step::UnpinProgram { pin, .. } => claimed_pin(pin.as_str()),
            Step::UnpinMap { pin, .. } | Step::UpdateMapEntry { pin, .. } => {
                claimed_pin(pin.as_str())
            }
            Step::Detach(a) => claimed_prog(&a.prog),
            _ => None,
        };
        match whose {
            Some(who) => notes.push(format!(
                "{}: left in place, it is the deployment of {who} (its record claims it)",
                step.summary()
            )),
            None => kept.push(step),
        }
    }
    t.steps = kept;
    t.prog_ids.retain(|id| !claims.ids.contains_key(id));
    t.map_ids.retain(|id| !claims.map_ids.contains_key(id));
    t.foreign.extend(notes);
}

/// The probe, when some pin of the plan holds a program of the plan's type
/// and name whose tag must decide whether it is this deployment's. None
/// when no pin holds such a program: nothing is loaded to learn nothing
/// (and a second destroy, after the first removed the pin directory, does
/// not pin into a directory that is gone).
pub(crate) fn probe(
    plan: &Plan,
    obs: &Observed,
    built: &BTreeSet<PathBuf>,
    claims: &Claims,
) -> Option<Probe> {
    let programs: Vec<_> = plan
        .spec
        .programs
        .iter()
        .filter(|p| built.contains(&p.object))
        // Another deployment's: never this one's, nothing to learn.
        .filter(|p| !claims.pins.contains_key(p.pin.as_str()))
        .filter(|p| {
            obs.program_at(p.pin.as_str()).is_some_and(|info| {
                info.prog_type == p.prog_type.kernel_type()
                    && info.name == kernel_name(p.name.as_str())
            })
        })
        .collect();
    if programs.is_empty() {
        return None;
    }
    let unpin = |p: &crate::plan::ProgramSpec| Op {
        step: Step::UnpinProgram {
            program: p.name.clone(),
            pin: p.pin.staged(Staging::Probe),
        },
        undo: None,
    };
    // A probe pin left by a killed run goes first: `~` never names anyone
    // else's pin.
    let mut loads: Vec<Op> = programs
        .iter()
        .filter(|p| obs.pins.contains_key(p.pin.staged(Staging::Probe).as_str()))
        .map(|p| unpin(p))
        .collect();
    loads.extend(programs.iter().map(|p| {
        Op::of(Step::LoadProgram {
            program: p.name.clone(),
            object: p.object.clone(),
            prog_type: p.prog_type,
            pin: p.pin.staged(Staging::Probe),
            reuse: Vec::new(),
        })
    }));
    let unpins = programs.iter().map(|p| unpin(p)).collect();
    Some(Probe { loads, unpins })
}

/// The probe pins of a plan's programs: what destroy looks at besides its
/// own pins.
pub(crate) fn probe_pins(plan: &Plan) -> Vec<ProgPin> {
    plan.spec
        .programs
        .iter()
        .map(|p| p.pin.staged(Staging::Probe))
        .collect()
}

/// What an apply intent means for a reviewer.
pub(crate) fn apply_review(
    plan: &Plan,
    i: &ApplyIntent,
    deployed: Option<&Deployed>,
    obs: &Observed,
) -> Review {
    let (changes, stages) = i.steps();
    let (mut decision, mut reason) = match &i.decision {
        Decision::Nothing => (DecisionKind::Nothing, None),
        Decision::Entries(_) => (DecisionKind::Entries, None),
        Decision::Repair { reason, .. } => (DecisionKind::Repair, Some(reason.to_string())),
        Decision::Fresh { .. } => (DecisionKind::Fresh, None),
        Decision::Replace { reason, .. } => (DecisionKind::Replace, Some(reason.to_string())),
        Decision::Recover { .. } => (DecisionKind::Recover, None),
        Decision::Refuse(why) => (DecisionKind::Refused, Some(why.clone())),
    };
    let mut notes = match &i.decision {
        Decision::Replace { notes, .. } => notes.clone(),
        _ => Vec::new(),
    };
    if let Some(r) = &i.recover {
        notes.push(format!(
            "an earlier apply was interrupted: apply first {} it ({} step(s)), then {}",
            if r.forward { "finishes" } else { "undoes" },
            r.ops.len(),
            match decision {
                DecisionKind::Nothing => "finds nothing else to change".to_string(),
                d => format!("runs the `{}` decision foreseen here", d.word()),
            }
        ));
        if decision != DecisionKind::Refused {
            reason = Some(match reason {
                Some(r) => format!("an earlier apply was interrupted; then {r}"),
                None => "an earlier apply was interrupted".into(),
            });
            decision = DecisionKind::Recover;
        }
    }
    if let Some(p) = &i.adopt {
        decision = DecisionKind::Adopt;
        reason = Some(format!(
            "the kernel holds programs at {} and bpfplan has no record of them (made by the sh \
             script, or a record lost with /run)",
            plan.spec
                .programs
                .iter()
                .filter(|prog| obs.program_at(prog.pin.as_str()).is_some())
                .map(|prog| prog.pin.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        notes.push(format!(
            "the probe loads {} program(s) once under probe pins to learn their tags; the \
             adoption is recorded and noted in the audit log",
            p.loads
                .iter()
                .filter(|o| matches!(o.step, Step::LoadProgram { .. }))
                .count()
        ));
    }
    let drift = match deployed {
        Some(_) => decide::drift(&plan.spec, deployed, obs),
        None => Vec::new(),
    };
    Review {
        decision,
        reason,
        applicable: !matches!(i.decision, Decision::Refuse(_)),
        changes,
        stages,
        notes,
        drift,
    }
}

/// What a destroy intent means for a reviewer.
pub(crate) fn destroy_review(i: &DestroyIntent) -> Review {
    let (changes, stages) = i.steps();
    let mut notes: Vec<String> = i.teardown.foreign.clone();
    if i.probe.is_some() {
        notes.push(
            "there is no record: each program found at its pin is loaded once under a probe pin \
             to learn its tag, and only a program with that tag is removed"
                .into(),
        );
    }
    if let Some(r) = &i.recover {
        notes.push(format!(
            "an earlier apply was interrupted: destroy first {} it ({} step(s))",
            if r.forward { "finishes" } else { "undoes" },
            r.ops.len()
        ));
    }
    Review {
        decision: if changes.is_empty() {
            DecisionKind::NothingToDestroy
        } else {
            DecisionKind::Destroy
        },
        reason: None,
        applicable: true,
        changes,
        stages,
        notes,
        drift: Vec::new(),
    }
}
