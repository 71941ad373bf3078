//! What to do, decided purely from the new plan, the record of what was
//! applied and one observation of the kernel: nothing, recover a killed run,
//! update map entries, replace the deployment (new objects staged beside the
//! old, then swapped in), apply fresh, or refuse. The teardown that destroy
//! runs and the findings that status reports come from the same facts.

pub(crate) mod intent;
pub(crate) mod recovery;

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::kernel::look::inspect::{MapInfo, PinState, ProgInfo};
use crate::kernel::look::observe::Observed;
use crate::kernel::remember::build::Built;
use crate::kernel::remember::record::{Deployed, Loaded, MapFact, ProgramFact};
use crate::manifest::model::{Entry, MapPin, ProgPin, ProgType, Staging, kernel_name};
use crate::plan::step::{AttachPoint, Attachment, PinKind, ProgRef, Step};
use crate::plan::{Drift, Op, Plan, Spec};

/// What apply does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The kernel matches the record and the plan.
    Nothing,
    /// A run was killed: finish it (`forward`) or undo it, then decide again.
    Recover { ops: Vec<Op>, forward: bool },
    /// Only map contents differ: these updates, each undone to the value
    /// it replaced if a later one fails.
    Entries(Vec<Op>),
    /// Something of the deployment drifted that can be put back as it was
    /// without reloading anything: a detached program attached again, a
    /// removed pin pinned again from the object's id (it lives on), changed
    /// entries set back. Counters and connections are untouched.
    Repair { reason: Reason, ops: Vec<Op> },
    /// The deployment changes: stage, swap, then remove the old objects
    /// (from `commit_at` on, the run is past its point of no return).
    Replace {
        reason: Reason,
        ops: Vec<Op>,
        commit_at: usize,
        pin_dirs: Vec<PathBuf>,
        /// What a reviewer should know: the maps that are not kept, and why.
        notes: Vec<String>,
    },
    /// Nothing of this deployment exists: run the plan.
    Fresh {
        ops: Vec<Op>,
        pin_dirs: Vec<PathBuf>,
    },
    /// Apply must not go on, for this reason.
    Refuse(String),
}

/// Why a deployment is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Its programs, maps, pins or attachments are not the deployed ones.
    ManifestChanged,
    /// An object loads other instructions.
    ProgramChanged,
    /// A source, header or prebuilt object changed (foreseen before the
    /// build: what it compiles to decides).
    SourceChanged,
    /// Something of the deployment is missing or different in the kernel.
    Drift(Finding),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::ManifestChanged => f.write_str("the manifest changed"),
            Reason::ProgramChanged => f.write_str("a program changed"),
            Reason::SourceChanged => f.write_str("a program's source, header or object changed"),
            Reason::Drift(d) => write!(
                f,
                "drift: {} `{}` at {} is {}",
                d.kind,
                d.name,
                d.place,
                d.health.describe()
            ),
        }
    }
}

/// What `adopt` takes over: every program, map, entry and attachment of
/// the plan must be in the kernel exactly as the manifest would make it
/// (type, name and tag of each program, each map used by its creator and by
/// the programs that reuse it, the declared entries, every attachment).
/// Else the differences.
pub(crate) fn adoption(
    plan: &Plan,
    obs: &Observed,
    tags: &Tags,
    built: &Built,
) -> Result<(Vec<ProgramFact>, Vec<MapFact>), Vec<String>> {
    let mut diffs = Vec::new();
    let mut programs = Vec::new();
    for p in &plan.spec.programs {
        let want = format!(
            "a {} program `{}` with tag {}",
            p.prog_type.kernel_type(),
            kernel_name(p.name.as_str()),
            tags.get(&p.pin).map_or("?", String::as_str)
        );
        match obs.pins.get(p.pin.as_str()) {
            Some(PinState::Program(info))
                if is_ours(
                    info,
                    p.prog_type,
                    p.name.as_str(),
                    tags.get(&p.pin).map(String::as_str),
                ) =>
            {
                programs.push(ProgramFact {
                    name: p.name.clone(),
                    pin: p.pin.clone(),
                    id: info.id,
                    tag: info.tag.clone(),
                    map_ids: info.map_ids.clone(),
                })
            }
            Some(state) => diffs.push(format!(
                "{}: holds {}, the manifest makes {want}",
                p.pin,
                describe_pin(state)
            )),
            None => diffs.push(format!("{}: missing, the manifest makes {want}", p.pin)),
        }
    }
    let mut maps = Vec::new();
    for m in &plan.spec.maps {
        match obs.pins.get(m.pin.as_str()) {
            Some(PinState::Map(info)) if info.name == kernel_name(m.name.as_str()) => {
                let users: Vec<&ProgramFact> = programs
                    .iter()
                    .filter(|p| p.name == m.owner || reuses(plan, &p.pin, &m.pin))
                    .collect();
                for u in users.iter().filter(|u| !u.map_ids.contains(&info.id)) {
                    diffs.push(format!(
                        "{}: map id {} is not the one program `{}` uses",
                        m.pin, info.id, u.name
                    ));
                }
                diffs.extend(lookalike(plan, m, info, built));
                maps.push(MapFact {
                    name: m.name.clone(),
                    pin: m.pin.clone(),
                    id: info.id,
                });
            }
            Some(state) => diffs.push(format!(
                "{}: holds {}, the manifest makes map `{}`",
                m.pin,
                describe_pin(state),
                m.name
            )),
            None => diffs.push(format!(
                "{}: missing, the manifest makes map `{}`",
                m.pin, m.name
            )),
        }
    }
    for op in entry_ops(&plan.spec, obs, None) {
        diffs.push(format!("the manifest would {}", op.step.summary()));
    }
    for a in &plan.spec.attachments {
        let attached = obs
            .prog_id(&a.prog)
            .is_some_and(|id| obs.attached(&a.point, id));
        if !attached {
            diffs.push(format!(
                "program `{}` is not attached to {}",
                a.program,
                a.place()
            ));
        }
    }
    diffs.extend(attached_elsewhere(plan, obs, &programs));
    if diffs.is_empty() {
        Ok((programs, maps))
    } else {
        Err(diffs)
    }
}

/// The programs attached to a cgroup the manifest does not attach them to
/// (every cgroup was looked at).
fn attached_elsewhere(plan: &Plan, obs: &Observed, programs: &[ProgramFact]) -> Vec<String> {
    let mut diffs = Vec::new();
    for p in programs {
        let wanted: Vec<&str> = plan
            .spec
            .attachments
            .iter()
            .filter(|a| a.program == p.name)
            .filter_map(|a| match &a.point {
                AttachPoint::Cgroup { cgroup, .. } => Some(cgroup.as_str()),
                _ => None,
            })
            .collect();
        for (cgroup, _) in obs.cgroup_tree.iter().filter(|(_, id)| *id == p.id) {
            if !wanted.contains(&cgroup.as_str()) {
                diffs.push(format!(
                    "program `{}` (id {}) is also attached to cgroup {cgroup}, where the manifest \
                     does not attach it",
                    p.name, p.id
                ));
            }
        }
    }
    diffs
}

/// A lookalike is not the map: it must have the shape the manifest's
/// object gives it.
fn lookalike(
    plan: &Plan,
    m: &crate::plan::MapSpec,
    info: &MapInfo,
    built: &Built,
) -> Option<String> {
    let object = plan.spec.programs.iter().find(|p| p.name == m.owner)?;
    let want = built.shape(&object.object, m.name.as_str())?;
    (want != info.shape()).then(|| {
        format!(
            "{}: map `{}` is not as the manifest's object makes it ({})",
            m.pin,
            m.name,
            info.shape().differences(&want).join(", ")
        )
    })
}

/// Whether the program pinned at `prog` loads reusing the map at `map`.
fn reuses(plan: &Plan, prog: &ProgPin, map: &MapPin) -> bool {
    plan.outline().iter().any(|s| {
        matches!(s, Step::LoadProgram { pin, reuse, .. } if pin == prog && reuse.iter().any(|r| &r.pin == map))
    })
}

/// The manifest's objects that are missing or different in the kernel.
pub(crate) fn drift(spec: &Spec, deployed: Option<&Deployed>, obs: &Observed) -> Vec<Drift> {
    findings(spec, deployed, obs)
        .into_iter()
        .filter(|f| f.health != Health::Present)
        .map(|f| Drift {
            kind: f.kind.to_string(),
            name: f.name,
            place: f.place,
            state: f.health.describe(),
        })
        .collect()
}

/// The name a replace stages a new object under, beside the old one.
fn staged(pin: &str) -> String {
    Staging::New.of(pin)
}

/// The name a replace moves an old object to before removing it.
fn aside(pin: &str) -> String {
    Staging::Old.of(pin)
}

/// Every pin a replace of `plan` over `deployed` may touch besides their
/// own: the observation a decision needs.
pub(crate) fn swap_pins(plan: &Plan, deployed: Option<&Deployed>) -> Vec<String> {
    let mut pins: Vec<String> = all_pins(&plan.spec).map(staged).collect();
    if let Some(d) = deployed {
        pins.extend(all_pins(&d.plan.spec).map(aside));
    }
    pins
}

fn all_pins(spec: &Spec) -> impl Iterator<Item = &str> {
    let programs = spec.programs.iter().map(|p| p.pin.as_str());
    programs.chain(spec.maps.iter().map(|m| m.pin.as_str()))
}

/// Decide what apply does. `objects` are the hashes of the objects the
/// plan loads, as built now.
pub(crate) fn decide(
    plan: &Plan,
    loaded: Option<&Loaded>,
    obs: &Observed,
    built: &Built,
) -> Decision {
    let Some(loaded) = loaded else {
        return fresh(plan, obs);
    };
    if let Some(run) = &loaded.record.run {
        let (ops, forward) = crate::kernel::decide::recovery::recovery(run, loaded.started, obs);
        return Decision::Recover { ops, forward };
    }
    let Some(d) = &loaded.record.deployed else {
        return fresh(plan, obs);
    };
    let reason = if !d.plan.spec.same_structure(&plan.spec) {
        Some(Reason::ManifestChanged)
    } else if d.objects != built.hashes {
        Some(Reason::ProgramChanged)
    } else {
        findings(&plan.spec, Some(d), obs)
            .into_iter()
            .find(|f| f.health != Health::Present)
            .map(Reason::Drift)
    };
    match reason {
        Some(Reason::Drift(f)) => match repair(plan, d, obs) {
            Some(ops) => Decision::Repair {
                reason: Reason::Drift(f),
                ops,
            },
            None => replace(plan, d, obs, Reason::Drift(f), built),
        },
        Some(reason) => replace(plan, d, obs, reason, built),
        None => {
            let ops = entry_ops(&plan.spec, obs, Some(d));
            if ops.is_empty() {
                Decision::Nothing
            } else {
                Decision::Entries(ops)
            }
        }
    }
}

/// The repair of drift, when everything that drifted can be put back
/// without a reload: `None` when something must be replaced (a program
/// that is not the recorded one, a pin holding something else, an object
/// that is gone).
fn repair(plan: &Plan, d: &Deployed, obs: &Observed) -> Option<Vec<Op>> {
    let mut ops = Vec::new();
    for p in &plan.spec.programs {
        let fact = d.program(&p.pin)?;
        match obs.pins.get(p.pin.as_str()) {
            Some(PinState::Program(info)) if info.id == fact.id && info.tag == fact.tag => {}
            None => {
                obs.programs.get(&fact.id).filter(|i| i.tag == fact.tag)?;
                ops.push(Op::of(Step::PinById {
                    kind: PinKind::Program,
                    name: p.name.0.clone(),
                    id: fact.id,
                    pin: p.pin.0.clone(),
                }));
            }
            _ => return None,
        }
    }
    for m in &plan.spec.maps {
        let fact = d.maps.iter().find(|f| f.pin == m.pin);
        match obs.pins.get(m.pin.as_str()) {
            Some(PinState::Map(info)) if fact.is_none_or(|f| f.id == info.id) => {}
            None => {
                let f = fact?;
                obs.maps.get(&f.id)?;
                ops.push(Op::of(Step::PinById {
                    kind: PinKind::Map,
                    name: m.name.to_string(),
                    id: f.id,
                    pin: m.pin.to_string(),
                }));
            }
            _ => return None,
        }
    }
    // The attachments in the plan's order (map attachments, then traffic),
    // judged by the recorded program: a program pinned again is attached
    // where it was.
    for step in plan.outline() {
        let Step::Attach(a) = step else { continue };
        let ProgRef::Pinned(pin) = &a.prog else {
            continue;
        };
        let fact = d.program(pin)?;
        if !obs.attached(&a.point, fact.id) {
            ops.push(Op::of(step.clone()));
        }
    }
    ops.extend(entry_ops(&plan.spec, obs, Some(d)));
    Some(ops)
}

/// A first apply: refused when anything sits at the plan's pins (it is not
/// bpfplan's, or bpfplan has no record of it); missing pin directories are
/// created first.
fn fresh(plan: &Plan, obs: &Observed) -> Decision {
    if let Some(pin) = all_pins(&plan.spec).find(|p| obs.pins.contains_key(*p)) {
        return Decision::Refuse(format!(
            "{pin} already exists and bpfplan has no record of creating it: choose another \
             pin directory, or, if it is this manifest's own deployment (made by the sh \
             script, say), remove it first with `bpfplan destroy` and the same variables"
        ));
    }
    let pin_dirs = missing_dirs(plan, obs);
    let mut ops: Vec<Op> = pin_dirs
        .iter()
        .map(|dir| Op::of(Step::MakePinDir { dir: dir.clone() }))
        .collect();
    ops.extend(
        plan.steps()
            .filter(|s| s.touches_kernel())
            .map(|s| Op::of(s.into_owned())),
    );
    Decision::Fresh { ops, pin_dirs }
}

/// The plan's pin directories that do not exist.
fn missing_dirs(plan: &Plan, obs: &Observed) -> Vec<PathBuf> {
    crate::kernel::remember::record::pin_dirs_and_parents(plan)
        .into_iter()
        .filter(|d| !obs.dirs.contains(d))
        .collect()
}

/// The tag each program of a manifest gets when its object is loaded
/// (learned by loading it under a probe pin): without a record, a program
/// is this deployment's only with this tag.
pub(crate) type Tags = BTreeMap<ProgPin, String>;

/// What a program of the plan must look like to count as this
/// deployment's: its type, the name the kernel keeps, and (when known) the
/// tag apply recorded.
fn is_ours(info: &ProgInfo, prog_type: ProgType, name: &str, tag: Option<&str>) -> bool {
    info.prog_type == prog_type.kernel_type()
        && info.name == kernel_name(name)
        && tag.is_none_or(|t| t == info.tag)
}

/// This deployment's programs for a pin: the recorded one if it still
/// lives with its recorded tag (named by pin when it is still pinned there,
/// else by id), and whatever sits at the pin if it matches.
fn our_programs(
    pin: &ProgPin,
    spec: &Spec,
    deployed: Option<&Deployed>,
    obs: &Observed,
    tags: &Tags,
) -> Vec<(u32, ProgRef)> {
    let Some(p) = spec.program(pin) else {
        return Vec::new();
    };
    let fact = deployed.and_then(|d| d.program(pin));
    let tag = fact
        .map(|f| f.tag.as_str())
        .or_else(|| tags.get(pin).map(String::as_str));
    let at_pin = obs.program_at(pin.as_str());
    let mut out = Vec::new();
    if let Some(info) = at_pin
        && is_ours(info, p.prog_type, p.name.as_str(), tag)
    {
        out.push((info.id, ProgRef::Pinned(pin.clone())));
    }
    if let Some(f) = fact
        && at_pin.is_none_or(|i| i.id != f.id)
        && let Some(info) = obs.programs.get(&f.id)
        && info.tag == f.tag
    {
        out.push((f.id, ProgRef::Id(f.id)));
    }
    out
}

/// Whether the map at a pin is this deployment's: the recorded one, or,
/// without a record of it, a map of the declared name.
fn map_is_ours(pin: &MapPin, spec: &Spec, deployed: Option<&Deployed>, obs: &Observed) -> bool {
    let Some(PinState::Map(info)) = obs.pins.get(pin.as_str()) else {
        return false;
    };
    let recorded = deployed.and_then(|d| d.maps.iter().find(|m| &m.pin == pin));
    match recorded {
        Some(m) if m.id == info.id => true,
        _ => spec
            .maps
            .iter()
            .any(|m| &m.pin == pin && info.name == kernel_name(m.name.as_str())),
    }
}

/// Declared entries the kernel holds otherwise (with what it holds), and
/// the keys it holds that are not declared (none in an array), in key order.
type EntryDiff<'a> = (
    Vec<(&'a Entry, Option<&'a [u8]>)>,
    Vec<(&'a [u8], &'a [u8])>,
);

fn diff<'a, K: Ord + Copy>(
    declared: &'a [Entry],
    dump: &'a [crate::kernel::look::inspect::DumpEntry],
    is_array: bool,
    key: impl Fn(&'a [u8]) -> K,
) -> EntryDiff<'a> {
    // Both sides sorted by key, then walked together: a million keys are
    // compared in order, not looked up at random in a table larger than
    // the caches.
    let mut ours: Vec<(K, u32)> = declared
        .iter()
        .enumerate()
        .map(|(i, e)| (key(e.key()), i as u32))
        .collect();
    let mut theirs: Vec<(K, u32)> = dump
        .iter()
        .enumerate()
        .map(|(i, e)| (key(e.key.as_slice()), i as u32))
        .collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    let mut changed: Vec<(u32, Option<&[u8]>)> = Vec::new();
    let mut gone = Vec::new();
    let (mut a, mut b) = (ours.iter().peekable(), theirs.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(&&(ka, ia)), Some(&&(kb, ib))) if ka == kb => {
                let live = dump[ib as usize].first();
                if live != declared[ia as usize].value() {
                    changed.push((ia, Some(live)));
                }
                a.next();
                b.next();
            }
            (Some(&&(ka, ia)), Some(&&(kb, _))) if ka < kb => {
                changed.push((ia, None));
                a.next();
            }
            (Some(&&(_, ia)), None) => {
                changed.push((ia, None));
                a.next();
            }
            (_, Some(&&(_, ib))) => {
                let e = &dump[ib as usize];
                if !is_array {
                    gone.push((e.key.as_slice(), e.first()));
                }
                b.next();
            }
            (None, None) => break,
        }
    }
    // Changes in the manifest's order; deletions in key order.
    changed.sort_unstable_by_key(|c| c.0);
    gone.sort_unstable();
    (
        changed
            .into_iter()
            .map(|(i, before)| (&declared[i as usize], before))
            .collect(),
        gone,
    )
}

/// A map update or delete, each undone to what it replaced.
pub(crate) fn entry_ops(spec: &Spec, obs: &Observed, deployed: Option<&Deployed>) -> Vec<Op> {
    let mut ops = Vec::new();
    for m in &spec.maps {
        let Some(declared) = &m.entries else {
            continue;
        };
        let (Some(PinState::Map(info)), Some(dump)) = (
            obs.pins.get(m.pin.as_str()),
            obs.contents.get(m.pin.as_str()),
        ) else {
            continue;
        };
        // Every slot of an array always exists: an undeclared one is left as
        // it is, never deleted (the kernel refuses that). Per-CPU maps are
        // compared on the first CPU, the one `bpftool map update` writes a
        // single value for.
        let is_array = info.map_type.is_array();
        // Keys of the manifest's types are at most 16 bytes: sorted and
        // compared as numbers (big-endian, so in byte order), not slices, a
        // million times; as 8-byte numbers when they fit, which halves what
        // the two sorted lists hold. Keys of one length (a map's key size)
        // need no length beside them.
        let len = declared.first().map(|e| e.key().len());
        let one_len = len.is_some_and(|n| {
            declared.iter().all(|e| e.key().len() == n) && dump.iter().all(|e| e.key.len() == n)
        });
        let padded = |k: &[u8]| {
            let mut a = [0u8; 16];
            a[..k.len()].copy_from_slice(k);
            a
        };
        let (changed, gone) = match len {
            Some(n) if one_len && n <= 8 => diff(declared, dump, is_array, |k| {
                let mut a = [0u8; 8];
                a[..k.len()].copy_from_slice(k);
                u64::from_be_bytes(a)
            }),
            Some(n) if one_len && n <= 16 => {
                diff(declared, dump, is_array, |k| u128::from_be_bytes(padded(k)))
            }
            _ if dump.iter().all(|e| e.key.len() <= 16)
                && declared.iter().all(|e| e.key().len() <= 16) =>
            {
                diff(declared, dump, is_array, |k| {
                    (u128::from_be_bytes(padded(k)), k.len() as u8)
                })
            }
            _ => diff(declared, dump, is_array, |k| k),
        };
        // A key the kernel holds is shown as the manifest types the map's
        // keys (now, or when it was deployed).
        let shown = declared
            .first()
            .or_else(|| {
                deployed
                    .and_then(|d| d.plan.spec.maps.iter().find(|o| o.pin == m.pin))
                    .and_then(|o| o.entries.as_ref()?.first())
            })
            .map(Entry::shown)
            .unwrap_or_default();
        let as_entry = |key: &[u8], value: &[u8]| Entry::new(key, value, shown);
        let update = |entry| Step::UpdateMapEntry {
            map: m.name.clone(),
            pin: m.pin.clone(),
            entry,
        };
        let delete = |entry| Step::DeleteMapEntry {
            map: m.name.clone(),
            pin: m.pin.clone(),
            entry,
        };
        // Deletions first: a map at its `max_entries` whose keys change
        // has room for the new ones only once the old ones are gone (what
        // the capacity check before the run counts on).
        for (key, value) in gone {
            let old = as_entry(key, value);
            ops.push(Op {
                step: delete(old.clone()),
                undo: Some(Box::new(update(old))),
            });
        }
        for (e, before) in changed {
            ops.push(Op {
                step: update(e.clone()),
                undo: Some(Box::new(match before {
                    Some(v) => update(as_entry(e.key(), v)),
                    None => delete(e.clone()),
                })),
            });
        }
    }
    ops
}

/// How one object of the manifest stands in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Health {
    Present,
    Missing,
    Different(String),
}

impl Health {
    pub fn describe(&self) -> String {
        match self {
            Health::Present => "present".into(),
            Health::Missing => "missing".into(),
            Health::Different(why) => format!("different ({why})"),
        }
    }
}

/// What kind of object a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Program,
    Map,
    Entries,
    Attachment,
    Manifest,
    Record,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Program => "program",
            ObjectKind::Map => "map",
            ObjectKind::Entries => "entries",
            ObjectKind::Attachment => "attachment",
            ObjectKind::Manifest => "manifest",
            ObjectKind::Record => "record",
        })
    }
}

/// One object of the manifest and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: ObjectKind,
    /// The object, as the manifest names it.
    pub name: String,
    /// Where it lives (a pin, a cgroup, an interface).
    pub place: String,
    pub health: Health,
}

/// Programs, map pins and attachments of a spec, as the kernel has them.
pub(crate) fn findings(spec: &Spec, deployed: Option<&Deployed>, obs: &Observed) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &spec.programs {
        let fact = deployed.and_then(|d| d.program(&p.pin));
        let health = match obs.pins.get(p.pin.as_str()) {
            None => Health::Missing,
            Some(PinState::Program(info)) => match fact {
                Some(r) if r.tag != info.tag => {
                    Health::Different(format!("tag {} where apply loaded {}", info.tag, r.tag))
                }
                Some(r) if r.id != info.id => Health::Different(format!(
                    "program id {} where apply loaded {}",
                    info.id, r.id
                )),
                _ => Health::Present,
            },
            Some(_) => Health::Different("the pin holds something else".into()),
        };
        out.push(Finding {
            kind: ObjectKind::Program,
            name: p.name.0.clone(),
            place: p.pin.0.clone(),
            health,
        });
    }
    for m in &spec.maps {
        let health = match obs.pins.get(m.pin.as_str()) {
            None => Health::Missing,
            Some(PinState::Map(_)) => Health::Present,
            Some(_) => Health::Different("the pin holds something else".into()),
        };
        out.push(Finding {
            kind: ObjectKind::Map,
            name: m.name.to_string(),
            place: m.pin.to_string(),
            health,
        });
    }
    for a in &spec.attachments {
        let present = obs
            .prog_id(&a.prog)
            .is_some_and(|id| obs.attached(&a.point, id));
        let (name, place) = match &a.point {
            AttachPoint::Cgroup { cgroup, kind } => {
                (format!("{} ({kind})", a.program), cgroup.0.clone())
            }
            AttachPoint::Map { map, kind, .. } => {
                (format!("{} ({kind})", a.program), format!("map {map}"))
            }
            AttachPoint::Xdp { iface, .. } => {
                (format!("{} (xdp)", a.program), format!("interface {iface}"))
            }
        };
        out.push(Finding {
            kind: ObjectKind::Attachment,
            name,
            place,
            health: if present {
                Health::Present
            } else {
                Health::Missing
            },
        });
    }
    out
}

/// What destroy does: the steps, and the objects at this deployment's
/// places that are not its own (listed, never touched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Teardown {
    pub steps: Vec<Step>,
    pub foreign: Vec<String>,
    /// Program and map ids that will be freed: destroy waits for them.
    pub prog_ids: Vec<u32>,
    pub map_ids: Vec<u32>,
}

/// Tear down `plan` (what was deployed, or without a record what the
/// manifest declares), as observed: detach our programs wherever they are
/// attached (by pin, or by id when the pin is gone), then unpin what is
/// ours, last step first.
pub(crate) fn teardown(
    plan: &Plan,
    deployed: Option<&Deployed>,
    obs: &Observed,
    tags: &Tags,
) -> Teardown {
    let spec = &plan.spec;
    let mut t = Teardown::default();
    let ours: BTreeMap<&ProgPin, Vec<(u32, ProgRef)>> = spec
        .programs
        .iter()
        .map(|p| (&p.pin, our_programs(&p.pin, spec, deployed, obs, tags)))
        .collect();
    // The switch first: connections that outlive destroy still hold the
    // programs, which read it.
    for m in &spec.maps {
        if let Some(entries) = &m.on_destroy
            && map_is_ours(&m.pin, spec, deployed, obs)
        {
            t.steps.extend(entries.iter().map(|e| Step::UpdateMapEntry {
                map: m.name.clone(),
                pin: m.pin.clone(),
                entry: e.clone(),
            }));
        }
    }
    // Entry steps have nothing to undo: the outline is enough.
    for step in plan.outline().iter().rev() {
        match step {
            Step::Attach(a) => {
                let ProgRef::Pinned(pin) = &a.prog else {
                    continue;
                };
                for (id, prog) in ours.get(pin).into_iter().flatten() {
                    if obs.attached(&a.point, *id) {
                        t.steps.push(Step::Detach(Attachment {
                            prog: prog.clone(),
                            ..a.clone()
                        }));
                    }
                }
            }
            Step::LoadProgram { program, pin, .. } => {
                let mine = ours.get(pin).into_iter().flatten();
                t.prog_ids.extend(mine.map(|(id, _)| *id));
                let at_pin_is_ours = ours
                    .get(pin)
                    .is_some_and(|v| v.iter().any(|(_, r)| matches!(r, ProgRef::Pinned(_))));
                if at_pin_is_ours {
                    if let Some(info) = obs.program_at(pin.as_str()) {
                        t.map_ids.extend(info.map_ids.iter().copied());
                    }
                    t.steps.push(Step::UnpinProgram {
                        program: program.clone(),
                        pin: pin.clone(),
                    });
                } else if let Some(state) = obs.pins.get(pin.as_str()) {
                    t.foreign.push(format!(
                        "{pin} holds {} that is not this deployment's program `{program}`: left in place",
                        describe_pin(state)
                    ));
                }
            }
            Step::PinMap { map, pin, .. } => {
                if map_is_ours(pin, spec, deployed, obs) {
                    t.steps.push(Step::UnpinMap {
                        map: map.clone(),
                        pin: pin.clone(),
                    });
                } else if let Some(state) = obs.pins.get(pin.as_str()) {
                    t.foreign.push(format!(
                        "{pin} holds {} that is not this deployment's map `{map}`: left in place",
                        describe_pin(state)
                    ));
                }
            }
            _ => {}
        }
    }
    if let Some(d) = deployed {
        t.map_ids
            .extend(d.programs.iter().flat_map(|p| p.map_ids.iter().copied()));
        for dir in d.pin_dirs.iter().rev() {
            if obs.dirs.contains(dir) {
                t.steps.push(Step::RemovePinDir { dir: dir.clone() });
            }
        }
    }
    t.prog_ids.sort_unstable();
    t.prog_ids.dedup();
    t.map_ids.sort_unstable();
    t.map_ids.dedup();
    t
}

fn describe_pin(state: &PinState) -> String {
    match state {
        PinState::Program(p) => format!(
            "program id {} ({}, `{}`, tag {})",
            p.id, p.prog_type, p.name, p.tag
        ),
        PinState::Map(m) => format!("map id {} ({}, `{}`)", m.id, m.map_type, m.name),
        PinState::Other => "something else".to_string(),
    }
}

/// The maps a replace keeps: the running deployment's map at the same pin,
/// with the same name and exactly the shape the new object gives it (type,
/// key and value size, max entries, flags). The new programs are loaded
/// with it (`map name M pinned PIN`), so every connection, made before the
/// replace or after, reads one policy and counts into one set of counters.
/// The others, with why they are not kept.
fn carried(
    plan: &Plan,
    deployed: &Deployed,
    obs: &Observed,
    built: &Built,
) -> (BTreeSet<MapPin>, Vec<String>) {
    let mut keep = BTreeSet::new();
    let mut notes = Vec::new();
    for m in &plan.spec.maps {
        let Some(old) = deployed
            .plan
            .spec
            .maps
            .iter()
            .find(|o| o.pin == m.pin && o.name == m.name)
        else {
            continue;
        };
        let Some(PinState::Map(live)) = obs.pins.get(m.pin.as_str()) else {
            continue;
        };
        if !map_is_ours(&old.pin, &deployed.plan.spec, Some(deployed), obs) {
            continue;
        }
        let object = plan
            .spec
            .programs
            .iter()
            .find(|p| p.name == m.owner)
            .map(|p| p.object.as_path());
        let why = match object.and_then(|o| built.shape(o, m.name.as_str())) {
            Some(new) if new == live.shape() => {
                keep.insert(m.pin.clone());
                continue;
            }
            Some(new) => live.shape().differences(&new).join(", "),
            None => "its object does not define it".into(),
        };
        notes.push(format!(
            "map `{}` is not kept ({why}): connections made before this replace keep the old map, \
             with its entries as they are now, until they close",
            m.name
        ));
    }
    (keep, notes)
}

/// Replace `deployed` by `plan` without a moment where neither runs:
///
/// 1. stage: load and pin the new programs and the maps that are not kept
///    under `~new` names, with their entries; the kept maps are loaded with
///    as they are, their entries updated in place (the verifier runs here,
///    while the old deployment still works);
/// 2. attach the new programs to their maps (to a kept map the attach
///    replaces the old program; to a staged one it is new), and to cgroups
///    beside the old ones (`multi`), then detach the old ones (XDP, one
///    program per interface: old off, new on);
/// 3. detach the old programs from the maps that are not kept, move the old
///    pins aside (`~old`), move the new pins in;
/// 4. past the point of no return: unpin the old objects.
///
/// Every step up to 4 has an undo, so a failure restores the old
/// deployment as it was, down to its program ids and map contents.
fn replace(
    plan: &Plan,
    deployed: &Deployed,
    obs: &Observed,
    reason: Reason,
    built: &Built,
) -> Decision {
    let (keep, notes) = carried(plan, deployed, obs, built);
    let t = teardown(&deployed.plan, Some(deployed), obs, &Tags::new());
    if let Some(why) = unswappable(plan, deployed, obs, &t) {
        return Decision::Refuse(why);
    }

    let pin_dirs = missing_dirs(plan, obs);
    let mut ops: Vec<Op> = pin_dirs
        .iter()
        .map(|dir| Op::of(Step::MakePinDir { dir: dir.clone() }))
        .collect();
    let stage = Stager { keep: &keep };
    ops.extend(stage.stage_and_attach(plan, &t, obs, deployed));
    // 3. The old verdicts off the maps that are not kept; old pins aside;
    //    new pins in.
    for s in t
        .steps
        .iter()
        .filter(|s| is_map_detach(s) && !stage.kept_point(s))
    {
        ops.push(detach_op(s));
    }
    let old_pins: Vec<(PinKind, String, String)> = t
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::UnpinProgram { program, pin } => {
                Some((PinKind::Program, program.0.clone(), pin.0.clone()))
            }
            Step::UnpinMap { map, pin } if !keep.contains(pin) => {
                Some((PinKind::Map, map.to_string(), pin.to_string()))
            }
            _ => None,
        })
        .collect();
    for (kind, name, pin) in &old_pins {
        ops.push(Op::of(Step::RenamePin {
            kind: *kind,
            name: name.clone(),
            from: pin.clone(),
            to: aside(pin),
        }));
    }
    for (kind, name, pin) in new_objects(&plan.spec, &keep) {
        ops.push(Op::of(Step::RenamePin {
            kind,
            name,
            from: staged(&pin),
            to: pin,
        }));
    }
    let commit_at = ops.len();
    ops.extend(retire(plan, deployed, &keep, &old_pins));
    Decision::Replace {
        reason,
        ops,
        commit_at,
        pin_dirs,
        notes,
    }
}

/// Why a replace cannot swap: a foreign object at one of our pins, or
/// leftovers of an earlier swap.
fn unswappable(plan: &Plan, deployed: &Deployed, obs: &Observed, t: &Teardown) -> Option<String> {
    if let Some(pin) = swap_pins(plan, Some(deployed))
        .into_iter()
        .find(|p| obs.pins.contains_key(p))
    {
        return Some(format!(
            "{pin} exists (left by an earlier run?): remove it, then apply again"
        ));
    }
    if let Some(f) = t.foreign.first() {
        return Some(format!(
            "{f}; bpfplan will not replace it: remove it, or choose another pin"
        ));
    }
    let old_spec = &deployed.plan.spec;
    all_pins(&plan.spec)
        .filter(|p| !all_pins(old_spec).any(|o| o == *p))
        .find(|p| obs.pins.contains_key(*p))
        .map(|p| {
            format!("{p} already exists and bpfplan has no record of creating it: remove it first")
        })
}

/// Step 4 of a replace, past its point of no return: the old objects go.
/// An old map that is not kept gets its destroy switch first: the
/// connections that keep it (they hold the old programs) leave the bypass
/// now. Then pin directories the new plan no longer uses.
fn retire(
    plan: &Plan,
    deployed: &Deployed,
    keep: &BTreeSet<MapPin>,
    old_pins: &[(PinKind, String, String)],
) -> Vec<Op> {
    let mut ops = Vec::new();
    for m in deployed
        .plan
        .spec
        .maps
        .iter()
        .filter(|m| !keep.contains(&m.pin))
    {
        for e in m.on_destroy.iter().flatten() {
            ops.push(Op {
                step: Step::UpdateMapEntry {
                    map: m.name.clone(),
                    pin: MapPin::new(aside(m.pin.as_str())),
                    entry: e.clone(),
                },
                undo: None,
            });
        }
    }
    for (kind, name, pin) in old_pins {
        let pin = aside(pin);
        ops.push(Op {
            step: match kind {
                PinKind::Program => Step::UnpinProgram {
                    program: crate::manifest::model::ProgName(name.clone()),
                    pin: ProgPin(pin),
                },
                PinKind::Map => Step::UnpinMap {
                    map: crate::manifest::model::MapName::new(name.as_str()),
                    pin: MapPin::new(pin),
                },
            },
            undo: None,
        });
    }
    let new_dirs = crate::kernel::remember::record::pin_dirs(plan);
    for dir in deployed.pin_dirs.iter().rev() {
        if !new_dirs.iter().any(|d| d.starts_with(dir)) {
            ops.push(Op {
                step: Step::RemovePinDir { dir: dir.clone() },
                undo: None,
            });
        }
    }
    ops
}

/// How the new objects of a replace are staged: under `~new`, except the
/// maps that are kept, which the new programs use where they are.
struct Stager<'a> {
    keep: &'a BTreeSet<MapPin>,
}

impl Stager<'_> {
    fn map_pin(&self, pin: &MapPin) -> MapPin {
        if self.keep.contains(pin) {
            pin.clone()
        } else {
            MapPin::new(staged(pin.as_str()))
        }
    }

    /// Whether a step attaches to (or detaches from) a kept map.
    fn kept_point(&self, step: &Step) -> bool {
        matches!(step, Step::Attach(a) | Step::Detach(a)
            if matches!(&a.point, AttachPoint::Map { map_pin, .. } if self.keep.contains(map_pin)))
    }

    /// Steps 1 and 2 of a replace: the new objects staged, their map
    /// attachments, the new traffic attachments beside the old ones, the
    /// old ones off.
    fn stage_and_attach(
        &self,
        plan: &Plan,
        old: &Teardown,
        obs: &Observed,
        deployed: &Deployed,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        for step in plan.steps().filter(|s| s.touches_kernel()) {
            let step: &Step = &step;
            match step {
                Step::Attach(a) if !matches!(a.point, AttachPoint::Map { .. }) => {}
                Step::PinMap { pin, .. } if self.keep.contains(pin) => {}
                // A kept map's entries change in place, each undone to
                // what it was; the others are staged with the new map.
                Step::UpdateMapEntry { pin, .. } if self.keep.contains(pin) => {}
                Step::Attach(a) if self.kept_point(step) => {
                    ops.push(self.attach_to_kept(a, old, obs));
                }
                _ => ops.push(Op::of(self.stage_step(step, plan))),
            }
            if let Step::PinMap { pin, .. } = step
                && self.keep.contains(pin)
            {
                let kept: Vec<&crate::plan::MapSpec> =
                    plan.spec.maps.iter().filter(|m| &m.pin == pin).collect();
                let spec = Spec {
                    maps: kept.into_iter().cloned().collect(),
                    ..Spec::default()
                };
                ops.extend(entry_ops(&spec, obs, Some(deployed)));
            }
        }
        let traffic: Vec<&Attachment> = plan
            .spec
            .attachments
            .iter()
            .filter(|a| !matches!(a.point, AttachPoint::Map { .. }))
            .collect();
        for a in traffic.iter().filter(|a| !is_xdp(a)) {
            ops.push(Op::of(Step::Attach(self.stage_attachment(a))));
        }
        let old_traffic = old
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Detach(_)) && !is_map_detach(s));
        for s in old_traffic {
            ops.push(detach_op(s));
        }
        // An interface holds one XDP program: the new one goes on once the
        // old one is off.
        for a in traffic.iter().filter(|a| is_xdp(a)) {
            ops.push(Op::of(Step::Attach(self.stage_attachment(a))));
        }
        ops
    }

    /// The new program attached to a kept map: the attach replaces the old
    /// program there, so its undo attaches the old one again (by id).
    fn attach_to_kept(&self, a: &Attachment, old: &Teardown, obs: &Observed) -> Op {
        let new = self.stage_attachment(a);
        let previous = old.steps.iter().find_map(|s| match s {
            Step::Detach(o) if o.point == a.point => obs.prog_id(&o.prog).map(|id| Attachment {
                prog: ProgRef::Id(id),
                ..o.clone()
            }),
            _ => None,
        });
        let undo = match previous {
            Some(o) => Step::Attach(o),
            None => Step::Detach(new.clone()),
        };
        Op {
            step: Step::Attach(new),
            undo: Some(Box::new(undo)),
        }
    }

    fn stage_attachment(&self, a: &Attachment) -> Attachment {
        let prog = match &a.prog {
            ProgRef::Pinned(p) => ProgRef::Pinned(ProgPin(staged(p.as_str()))),
            other => other.clone(),
        };
        let point = match &a.point {
            AttachPoint::Map { map, map_pin, kind } => AttachPoint::Map {
                map: map.clone(),
                map_pin: self.map_pin(map_pin),
                kind: *kind,
            },
            other => other.clone(),
        };
        Attachment {
            program: a.program.clone(),
            prog,
            point,
        }
    }

    /// A plan step with every pin it names moved to its staged name; a
    /// program that creates a kept map is loaded with it instead.
    fn stage_step(&self, step: &Step, plan: &Plan) -> Step {
        match step.clone() {
            Step::LoadProgram {
                program,
                object,
                prog_type,
                pin,
                reuse,
            } => {
                let mut reuse: Vec<_> = reuse
                    .into_iter()
                    .map(|mut r| {
                        r.pin = self.map_pin(&r.pin);
                        r
                    })
                    .collect();
                for m in plan
                    .spec
                    .maps
                    .iter()
                    .filter(|m| m.owner == program && self.keep.contains(&m.pin))
                {
                    reuse.push(crate::plan::step::ReusedMap {
                        name: m.name.clone(),
                        pin: m.pin.clone(),
                    });
                }
                Step::LoadProgram {
                    program,
                    object,
                    prog_type,
                    pin: ProgPin(staged(pin.as_str())),
                    reuse,
                }
            }
            Step::PinMap {
                map,
                program_pin,
                pin,
            } => Step::PinMap {
                map,
                program_pin: ProgPin(staged(program_pin.as_str())),
                pin: MapPin::new(staged(pin.as_str())),
            },
            Step::UpdateMapEntry { map, pin, entry } => Step::UpdateMapEntry {
                map,
                pin: MapPin::new(staged(pin.as_str())),
                entry,
            },
            Step::Attach(a) => Step::Attach(self.stage_attachment(&a)),
            other => other,
        }
    }
}

fn is_map_detach(step: &Step) -> bool {
    matches!(step, Step::Detach(a) if matches!(a.point, AttachPoint::Map { .. }))
}

fn is_xdp(a: &Attachment) -> bool {
    matches!(a.point, AttachPoint::Xdp { .. })
}

/// Detaching an old program, undone by attaching it again by id.
fn detach_op(step: &Step) -> Op {
    let undo = match step {
        Step::Detach(a) => Some(Step::Attach(a.clone())),
        _ => None,
    };
    Op {
        step: step.clone(),
        undo: undo.map(Box::new),
    }
}

/// The programs and maps a spec pins, in manifest order, but the kept maps.
fn new_objects(spec: &Spec, keep: &BTreeSet<MapPin>) -> Vec<(PinKind, String, String)> {
    let programs = spec
        .programs
        .iter()
        .map(|p| (PinKind::Program, p.name.0.clone(), p.pin.0.clone()));
    let maps = spec
        .maps
        .iter()
        .filter(|m| !keep.contains(&m.pin))
        .map(|m| (PinKind::Map, m.name.to_string(), m.pin.to_string()));
    programs.chain(maps).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostFacts;
    use crate::kernel::look::inspect::{DumpEntry, MapInfo};
    use crate::kernel::remember::record::{Record, Run, RunKind};
    use crate::manifest::diag::Source;
    use crate::manifest::validate;
    use crate::plan::PlanOptions;
    use std::path::Path;

    const MANIFEST: &str = r#"
[vars]
port = "1000"
[[program]]
name = "ops"
object = "ops.o"
type = "sockops"
pin = "/sys/fs/bpf/t/ops"
[[map]]
name = "socks"
program = "ops"
pin = "/sys/fs/bpf/t/socks"
[[program]]
name = "redir"
object = "redir.o"
type = "sk_msg"
pin = "/sys/fs/bpf/t/redir"
maps = ["socks"]
[[map]]
name = "deny"
program = "redir"
pin = "/sys/fs/bpf/t/deny"
key = "u32"
value = "u8"
entries = [{ key = "${port}", value = 1 }]
[[attach]]
program = "redir"
type = "msg_verdict"
map = "socks"
[[attach]]
program = "ops"
type = "sock_ops"
cgroup = "/sys/fs/cgroup/web"
"#;

    fn plan_with(port: &str, text: &str) -> Plan {
        let host = HostFacts {
            cgroup2: Some("/sys/fs/cgroup".into()),
            bpffs: vec!["/sys/fs/bpf".into()],
        };
        let vars = vec![("port".to_string(), port.to_string())];
        let env = validate::Env {
            host: &host,
            overrides: &vars,
            exists: &|_| true,
        };
        let src = Source::new(Path::new("/m/x.toml"), text.to_string());
        let checked = validate::validate(&src, &env).expect("valid");
        crate::plan::plan(
            &checked.model,
            &PlanOptions {
                build_dir: "/b".into(),
                include: vec![],
            },
        )
    }

    fn plan(port: &str) -> Plan {
        plan_with(port, MANIFEST)
    }

    /// A plan holds its entry steps once, as the spec's entries: `steps()`
    /// makes them right after their map's `PinMap`, in the manifest's order;
    /// stored and read back (as a record reads it) it is the same plan, and
    /// another entry or a step fewer is another plan.
    #[test]
    fn a_plan_makes_its_entry_steps_from_its_spec() {
        let p = plan("1000");
        let is_entry = |s: &Step| matches!(s, Step::UpdateMapEntry { .. });
        assert!(!p.outline().iter().any(is_entry), "the outline holds none");
        let steps: Vec<Step> = p.steps().map(|s| s.into_owned()).collect();
        assert_eq!(steps.len(), p.len());
        let mut made = 0;
        for m in &p.spec.maps {
            let Some(entries) = &m.entries else { continue };
            let at = steps
                .iter()
                .position(|s| matches!(s, Step::PinMap { pin, .. } if pin == &m.pin))
                .unwrap();
            for (k, e) in entries.iter().enumerate() {
                assert_eq!(
                    steps[at + 1 + k],
                    Step::UpdateMapEntry {
                        map: m.name.clone(),
                        pin: m.pin.clone(),
                        entry: e.clone(),
                    }
                );
            }
            made += entries.len();
        }
        assert!(made > 0, "the manifest declares entries");
        assert_eq!(steps.iter().filter(|s| is_entry(s)).count(), made);
        let json = serde_json::to_string(&p).unwrap();
        let mut de = serde_json::Deserializer::from_str(&json);
        let back = crate::plan::recorded(&mut de).unwrap();
        assert_eq!(*back, p);
        assert!(plan("1001") != *back, "another entry");
        let mut outline = back.outline().to_vec();
        outline.pop();
        let other = Plan::new(back.manifest.clone(), back.spec.clone(), outline);
        assert!(other != p, "a step fewer");
    }

    fn prog(id: u32, kind: &str, name: &str, tag: &str) -> PinState {
        PinState::Program(ProgInfo {
            id,
            tag: tag.into(),
            prog_type: crate::manifest::model::KernelProgType::parse(kind).expect("a kernel type"),
            name: name.into(),
            map_ids: vec![],
        })
    }

    fn map(id: u32, kind: &str, name: &str) -> PinState {
        PinState::Map(MapInfo {
            id,
            map_type: crate::manifest::model::KernelMapType::parse(kind).expect("a kernel type"),
            name: name.into(),
            key_size: 0,
            value_size: 0,
            max_entries: 0,
            flags: 0,
        })
    }

    /// The kernel after a clean apply of `plan(port)`: programs 1 and 2,
    /// maps 10 and 11, both attached, `deny` holding `port`.
    fn healthy(port: u32) -> Observed {
        let mut o = Observed::default();
        o.pins
            .insert("/sys/fs/bpf/t/ops".into(), prog(1, "sock_ops", "ops", "aa"));
        o.pins.insert(
            "/sys/fs/bpf/t/redir".into(),
            prog(2, "sk_msg", "redir", "bb"),
        );
        o.pins
            .insert("/sys/fs/bpf/t/socks".into(), map(10, "sockhash", "socks"));
        o.pins
            .insert("/sys/fs/bpf/t/deny".into(), map(11, "hash", "deny"));
        o.cgroups.insert("/sys/fs/cgroup/web".into(), vec![1]);
        o.map_links.insert(
            (
                "/sys/fs/bpf/t/socks".into(),
                crate::manifest::model::AttachKind::MsgVerdict,
            ),
            vec![2],
        );
        o.contents.insert(
            "/sys/fs/bpf/t/deny".into(),
            vec![DumpEntry::one(&port.to_ne_bytes(), &[1])],
        );
        o.dirs.insert("/sys/fs/bpf/t".into());
        o
    }

    fn objects() -> Built {
        Built {
            hashes: vec![crate::kernel::remember::record::FileHash {
                path: "/m/ops.o".into(),
                sha256: "o1".into(),
            }],
            maps: BTreeMap::new(),
        }
    }

    fn deployed(p: &Plan) -> Deployed {
        Deployed {
            plan: std::sync::Arc::new(p.clone()),
            programs: vec![
                ProgramFact {
                    name: crate::manifest::model::ProgName("ops".into()),
                    pin: ProgPin("/sys/fs/bpf/t/ops".into()),
                    id: 1,
                    tag: "aa".into(),
                    map_ids: vec![10],
                },
                ProgramFact {
                    name: crate::manifest::model::ProgName("redir".into()),
                    pin: ProgPin("/sys/fs/bpf/t/redir".into()),
                    id: 2,
                    tag: "bb".into(),
                    map_ids: vec![10, 11],
                },
            ],
            maps: vec![MapFact {
                name: crate::manifest::model::MapName("socks".into()),
                pin: MapPin("/sys/fs/bpf/t/socks".into()),
                id: 10,
            }],
            sources: vec![],
            objects: objects().hashes,
            pin_dirs: vec![],
        }
    }

    fn loaded(d: Option<Deployed>, run: Option<Run>, started: usize) -> Loaded {
        Loaded {
            record: Record {
                format_version: crate::kernel::remember::record::FORMAT_VERSION,
                manifest: "/m/x.toml".into(),
                deployed: d,
                run,
                last_plan: None,
            },
            started,
        }
    }

    /// A run of `p` as the record keeps it.
    fn run_of(kind: RunKind, p: &Plan, ops: Vec<Op>, commit_at: Option<usize>) -> Run {
        Run {
            kind,
            plan: std::sync::Arc::new(p.clone()),
            ops,
            commit_at,
            sources: vec![],
            objects: vec![],
            pin_dirs: vec![],
        }
    }

    fn summaries(ops: &[Op]) -> Vec<String> {
        ops.iter().map(|o| o.step.summary()).collect()
    }

    /// A decision's kind and, for runs, the summaries of its steps.
    fn kind(d: &Decision) -> &'static str {
        match d {
            Decision::Nothing => "nothing",
            Decision::Recover { forward: true, .. } => "recover-forward",
            Decision::Recover { .. } => "recover-back",
            Decision::Entries(_) => "entries",
            Decision::Repair { .. } => "repair",
            Decision::Replace { .. } => "replace",
            Decision::Fresh { .. } => "fresh",
            Decision::Refuse(_) => "refuse",
        }
    }

    #[track_caller]
    fn case(
        what: &str,
        p: &Plan,
        l: Option<&Loaded>,
        o: &Observed,
        want: &str,
        detail: &str,
    ) -> Decision {
        let d = decide(p, l, o, &objects());
        assert_eq!(kind(&d), want, "{what}: {d:#?}");
        let reason = match &d {
            Decision::Replace { reason, .. } | Decision::Repair { reason, .. } => {
                reason.to_string()
            }
            _ => String::new(),
        };
        let text = format!("{reason} {d:?}");
        assert!(text.contains(detail), "{what}: {detail:?} not in {d:#?}");
        d
    }

    #[test]
    fn the_decision_table() {
        let p = plan("1000");
        let d = deployed(&p);
        let on_record = loaded(Some(d.clone()), None, 0);
        let empty = Observed::default();

        case("nothing applied", &p, None, &empty, "fresh", "MakePinDir");
        let mut foreign = Observed::default();
        foreign
            .pins
            .insert("/sys/fs/bpf/t/ops".into(), prog(9, "xdp", "x", "ff"));
        case(
            "a pin exists, no record",
            &p,
            None,
            &foreign,
            "refuse",
            "no record",
        );
        case(
            "in sync",
            &p,
            Some(&on_record),
            &healthy(1000),
            "nothing",
            "",
        );
        case(
            "an entry changed in the manifest",
            &plan("2000"),
            Some(&on_record),
            &healthy(1000),
            "entries",
            "DeleteMapEntry",
        );
    }

    #[test]
    fn drift_is_repaired_when_it_can_be_and_replaced_when_not() {
        let p = plan("1000");
        let d = deployed(&p);
        let on_record = loaded(Some(d.clone()), None, 0);
        let mut detached = healthy(1000);
        detached.cgroups.insert("/sys/fs/cgroup/web".into(), vec![]);
        case(
            "an attachment removed by hand",
            &p,
            Some(&on_record),
            &detached,
            "repair",
            "drift: attachment `ops (sock_ops)`",
        );
        let mut unpinned = healthy(1000);
        unpinned.pins.remove("/sys/fs/bpf/t/ops");
        unpinned.programs.insert(
            1,
            ProgInfo {
                id: 1,
                tag: "aa".into(),
                prog_type: crate::manifest::model::KernelProgType::SockOps,
                name: "ops".into(),
                map_ids: vec![],
            },
        );
        case(
            "a program pin removed by hand (the program lives on)",
            &p,
            Some(&on_record),
            &unpinned,
            "repair",
            "PinById",
        );
        let mut gone = healthy(1000);
        gone.pins.remove("/sys/fs/bpf/t/ops");
        case(
            "a program pin removed and the program gone",
            &p,
            Some(&on_record),
            &gone,
            "replace",
            "drift: program `ops`",
        );
        let mut rebuilt = d.clone();
        rebuilt.objects[0].sha256 = "other".into();
        case(
            "a program changed",
            &p,
            Some(&loaded(Some(rebuilt), None, 0)),
            &healthy(1000),
            "replace",
            "a program changed",
        );
        let edited = MANIFEST.replace(
            "sock_ops\"\ncgroup = \"/sys/fs/cgroup/web",
            "sock_ops\"\ncgroup = \"/sys/fs/cgroup/db",
        );
        case(
            "the manifest changed",
            &plan_with("1000", &edited),
            Some(&on_record),
            &healthy(1000),
            "replace",
            "the manifest changed",
        );
        let mut replaced = healthy(1000);
        replaced
            .pins
            .insert("/sys/fs/bpf/t/ops".into(), prog(7, "sock_ops", "ops", "cc"));
        case(
            "a foreign program behind our pin",
            &plan_with("1000", &edited),
            Some(&on_record),
            &replaced,
            "refuse",
            "not this deployment's program `ops`",
        );
        let mut leftover = healthy(1000);
        leftover.pins.insert(
            "/sys/fs/bpf/t/ops~new".into(),
            prog(8, "sock_ops", "ops", "aa"),
        );
        case(
            "leftovers of an earlier swap",
            &plan_with("1000", &edited),
            Some(&on_record),
            &leftover,
            "refuse",
            "ops~new exists",
        );
    }

    #[test]
    fn entries_are_undone_to_what_they_replaced() {
        let p = plan("2000");
        let on_record = loaded(Some(deployed(&plan("1000"))), None, 0);
        let Decision::Entries(ops) = decide(&p, Some(&on_record), &healthy(1000), &objects())
        else {
            panic!("not an entries update");
        };
        assert_eq!(
            summaries(&ops),
            ["remove `deny`[1000]", "set `deny`[2000] = 1"]
        );
        let undos: Vec<String> = ops
            .iter()
            .map(|o| o.undo.as_deref().map(Step::summary).unwrap_or_default())
            .collect();
        assert_eq!(undos, ["set `deny`[1000] = 1", "remove `deny`[2000]"]);
    }

    #[test]
    fn a_replace_stages_then_swaps_and_can_be_undone_until_it_commits() {
        let p = plan("1000");
        let on_record = loaded(Some(deployed(&p)), None, 0);
        let mut rebuilt = objects();
        rebuilt.hashes[0].sha256 = "o2".into();
        let Decision::Replace { ops, commit_at, .. } =
            decide(&p, Some(&on_record), &healthy(1000), &rebuilt)
        else {
            panic!("not a replace");
        };
        let s = summaries(&ops);
        let pos = |needle: &str| {
            s.iter()
                .position(|x| x.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {s:#?}"))
        };
        // The new programs are loaded (the verifier runs) before anything
        // old is touched.
        assert!(
            pos("load sockops program `ops` and pin it at /sys/fs/bpf/t/ops~new") < pos("detach")
        );
        assert!(pos("attach program `ops` to cgroup") < pos("detach program `redir`"));
        assert!(
            pos("move program `ops` from /sys/fs/bpf/t/ops to /sys/fs/bpf/t/ops~old")
                < pos("move program `ops` from /sys/fs/bpf/t/ops~new")
        );
        // Everything before the commit point has an undo; after it, only
        // the old objects are removed.
        assert!(
            ops[..commit_at]
                .iter()
                .all(|o| o.undo.is_some() || matches!(o.step, Step::UpdateMapEntry { .. })),
            "{s:#?}"
        );
        assert!(
            ops[commit_at..].iter().all(|o| matches!(
                o.step,
                Step::UnpinProgram { .. } | Step::UnpinMap { .. } | Step::RemovePinDir { .. }
            )),
            "{s:#?}"
        );
        assert_eq!(s[commit_at..].len(), 4, "{s:#?}");
    }

    /// Killed after the new pins were moved in, before the old ones were
    /// removed: the undo is judged step by step against the kernel as the
    /// undos before it leave it, so the old deployment comes back whole.
    #[test]
    fn a_replace_killed_after_the_swap_is_undone_whole() {
        let p = plan("1000");
        let on_record = loaded(Some(deployed(&p)), None, 0);
        let mut rebuilt = objects();
        rebuilt.hashes[0].sha256 = "o2".into();
        let Decision::Replace { ops, commit_at, .. } =
            decide(&p, Some(&on_record), &healthy(1000), &rebuilt)
        else {
            panic!("not a replace");
        };
        // The kernel when every step before the commit point has run: new
        // objects (ids 5, 6, 20, 21) at the pins, old ones aside, only the
        // new ones attached.
        let mut o = Observed::default();
        let t = "/sys/fs/bpf/t";
        o.pins
            .insert(format!("{t}/ops"), prog(5, "sock_ops", "ops", "aa"));
        o.pins
            .insert(format!("{t}/redir"), prog(6, "sk_msg", "redir", "bb"));
        o.pins
            .insert(format!("{t}/socks"), map(20, "sockhash", "socks"));
        o.pins.insert(format!("{t}/deny"), map(21, "hash", "deny"));
        o.pins
            .insert(format!("{t}/ops~old"), prog(1, "sock_ops", "ops", "aa"));
        o.pins
            .insert(format!("{t}/redir~old"), prog(2, "sk_msg", "redir", "bb"));
        o.pins
            .insert(format!("{t}/socks~old"), map(10, "sockhash", "socks"));
        o.pins
            .insert(format!("{t}/deny~old"), map(11, "hash", "deny"));
        o.cgroups.insert("/sys/fs/cgroup/web".into(), vec![5]);
        let verdict = crate::manifest::model::AttachKind::MsgVerdict;
        o.map_links.insert((format!("{t}/socks"), verdict), vec![6]);
        o.map_links
            .insert((format!("{t}/socks~old"), verdict), vec![]);
        o.dirs.insert(t.into());
        let run = run_of(RunKind::Replace, &p, ops, Some(commit_at));
        let (undo, forward) = crate::kernel::decide::recovery::recovery(&run, commit_at, &o);
        assert!(!forward);
        let s = summaries(&undo);
        for want in [
            "move program `ops` from /sys/fs/bpf/t/ops to /sys/fs/bpf/t/ops~new",
            "move program `ops` from /sys/fs/bpf/t/ops~old to /sys/fs/bpf/t/ops",
            "move map `socks` from /sys/fs/bpf/t/socks~old to /sys/fs/bpf/t/socks",
            "attach program `redir` to map `socks`",
            "attach program `ops` to cgroup /sys/fs/cgroup/web",
            "unpin program `ops` at /sys/fs/bpf/t/ops~new",
            "unpin map `socks` at /sys/fs/bpf/t/socks~new",
        ] {
            assert!(
                s.iter().any(|x| x.starts_with(want)),
                "no {want:?} in {s:#?}"
            );
        }
        // The new sockops comes off the cgroup (named by its staged pin)
        // before that pin goes.
        let detach_new = undo.iter().position(|op| {
            matches!(&op.step, Step::Detach(a)
                if a.prog == ProgRef::Pinned(ProgPin(format!("{t}/ops~new"))))
        });
        let unpin_new = s
            .iter()
            .position(|x| x == "unpin program `ops` at /sys/fs/bpf/t/ops~new");
        assert!(detach_new.is_some() && detach_new < unpin_new, "{s:#?}");
    }

    /// An entries run killed mid-batch: only the keys that made it in are
    /// removed again (deleting one that never did would fail, forever).
    #[test]
    fn a_killed_entries_run_undoes_only_what_landed() {
        let p = plan("2000");
        let on_record = loaded(Some(deployed(&plan("1000"))), None, 0);
        let Decision::Entries(ops) = decide(&p, Some(&on_record), &healthy(1000), &objects())
        else {
            panic!("not an entries update");
        };
        let run = run_of(RunKind::Entries, &p, ops, None);
        // Both lines were started (one batch); only the first landed.
        let mut o = healthy(1000);
        o.contents.insert(
            "/sys/fs/bpf/t/deny".into(),
            [1000u32, 2000]
                .iter()
                .map(|k| DumpEntry::one(&k.to_ne_bytes(), &[1]))
                .collect(),
        );
        let (undo, _) = crate::kernel::decide::recovery::recovery(&run, 2, &o);
        assert_eq!(summaries(&undo), ["remove `deny`[2000]"]);
        // Nothing landed: nothing to undo.
        let (undo, _) = crate::kernel::decide::recovery::recovery(&run, 2, &healthy(1000));
        assert_eq!(summaries(&undo), Vec::<String>::new());
    }

    #[test]
    fn a_killed_run_is_undone_or_finished() {
        let p = plan("1000");
        let ops: Vec<Op> = p
            .steps()
            .filter(|s| s.touches_kernel())
            .map(|s| Op::of(s.into_owned()))
            .collect();
        let run = run_of(RunKind::Fresh, &p, ops, None);
        // Killed after the first two steps (load ops, pin socks): both are
        // undone, last first; what is already gone is left out.
        let mut o = Observed::default();
        o.pins
            .insert("/sys/fs/bpf/t/ops".into(), prog(1, "sock_ops", "ops", "aa"));
        let l = loaded(None, Some(run.clone()), 2);
        let d = case("killed after 2 steps", &p, Some(&l), &o, "recover-back", "");
        let Decision::Recover { ops, .. } = d else {
            unreachable!()
        };
        assert_eq!(
            summaries(&ops),
            ["unpin program `ops` at /sys/fs/bpf/t/ops"]
        );

        // Past the point of no return, the rest is finished instead.
        let mut late = run;
        late.commit_at = Some(3);
        late.ops.truncate(5);
        let mut o = Observed::default();
        // The 4th step (pin `deny`) may or may not have finished: it did
        // (the pin is there), so only the entry is written again.
        o.pins
            .insert("/sys/fs/bpf/t/deny".into(), map(11, "hash", "deny"));
        let l = loaded(None, Some(late), 4);
        let d = case(
            "killed past the commit",
            &p,
            Some(&l),
            &o,
            "recover-forward",
            "",
        );
        let Decision::Recover { ops, .. } = d else {
            unreachable!()
        };
        assert_eq!(summaries(&ops), ["set `deny`[1000] = 1"]);
    }

    #[test]
    fn teardown_detaches_by_id_when_the_pin_is_gone_and_leaves_what_is_not_ours() {
        let p = plan("1000");
        let d = deployed(&p);
        let mut o = healthy(1000);
        // The sockops pin was removed by hand; the program lives on, attached.
        o.pins.remove("/sys/fs/bpf/t/ops");
        o.programs.insert(
            1,
            ProgInfo {
                id: 1,
                tag: "aa".into(),
                prog_type: crate::manifest::model::KernelProgType::SockOps,
                name: "ops".into(),
                map_ids: vec![],
            },
        );
        // Someone else's map sits at one of our map pins.
        o.pins
            .insert("/sys/fs/bpf/t/deny".into(), map(99, "array", "theirs"));
        let t = teardown(&p, Some(&d), &o, &Tags::new());
        let s: Vec<String> = t.steps.iter().map(Step::summary).collect();
        assert_eq!(
            s,
            [
                "detach program `ops` (id 1) (sock_ops) from cgroup /sys/fs/cgroup/web",
                "detach program `redir` (msg_verdict) from map `socks`",
                "unpin program `redir` at /sys/fs/bpf/t/redir",
                "unpin map `socks` at /sys/fs/bpf/t/socks",
            ]
        );
        assert_eq!(t.foreign.len(), 1, "{:?}", t.foreign);
        assert!(t.foreign[0].contains("`theirs`"), "{:?}", t.foreign);
    }
}
