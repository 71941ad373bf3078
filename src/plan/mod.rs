//! Model → plan, purely: the same model and options always give the same
//! plan. A plan is the facts of what it sets up (`Spec`) and the ordered
//! steps that set it up; the teardown is each step's undo, in reverse.

pub(crate) mod ops;
pub mod render;
pub mod step;

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::manifest::model::{
    self, Code, Entry, MapDef, MapName, MapPin, Model, ProgName, ProgPin, ProgType,
};
use step::{AttachPoint, Attachment, ProgRef, ReusedMap, Step};

/// Inputs to planning besides the model.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Where compiled objects go (outside the source tree).
    pub build_dir: PathBuf,
    /// Extra `-I` directories for clang.
    pub include: Vec<PathBuf>,
}

impl PlanOptions {
    /// The defaults for this host: objects under `build_dir`, and the
    /// multiarch header directory Debian keeps `asm/types.h` in, which
    /// `clang -target bpf` does not search on its own.
    pub fn for_host(build_dir: PathBuf) -> PlanOptions {
        PlanOptions {
            build_dir,
            include: vec![PathBuf::from(format!(
                "/usr/include/{}-linux-gnu",
                std::env::consts::ARCH
            ))],
        }
    }
}

/// A program the plan loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramSpec {
    pub name: ProgName,
    pub prog_type: ProgType,
    pub pin: ProgPin,
    /// The object loaded.
    pub object: PathBuf,
    /// The C source the object is compiled from (none for a prebuilt one).
    pub source: Option<PathBuf>,
}

/// A map the plan pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSpec {
    pub name: MapName,
    /// The program whose object creates it.
    pub owner: ProgName,
    pub pin: MapPin,
    /// The exact contents apply keeps (absent: not managed).
    #[serde(with = "model::entry_list")]
    pub entries: Option<Vec<Entry>>,
    /// Entries destroy writes first, before it detaches anything (a switch
    /// the programs read).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "model::entry_list"
    )]
    pub on_destroy: Option<Vec<Entry>>,
    /// Names of a counter array's slots, for `bpfplan status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// What a plan sets up, as facts: status, drift and teardown read these,
/// never the steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub programs: Vec<ProgramSpec>,
    pub maps: Vec<MapSpec>,
    pub attachments: Vec<Attachment>,
}

impl Spec {
    /// Whether two specs differ only in what changes without a reload (map
    /// contents and counter labels): if not, one replaces the other.
    pub fn same_structure(&self, other: &Spec) -> bool {
        let map = |a: &MapSpec, b: &MapSpec| {
            a.name == b.name
                && a.owner == b.owner
                && a.pin == b.pin
                && a.entries.is_some() == b.entries.is_some()
        };
        // Where an object is built is not what is deployed: objects are
        // compared by their hashes.
        let program = |a: &ProgramSpec, b: &ProgramSpec| {
            a.name == b.name
                && a.prog_type == b.prog_type
                && a.pin == b.pin
                && a.source == b.source
                && (a.source.is_some() || a.object == b.object)
        };
        self.programs.len() == other.programs.len()
            && self
                .programs
                .iter()
                .zip(&other.programs)
                .all(|(a, b)| program(a, b))
            && self.attachments == other.attachments
            && self.maps.len() == other.maps.len()
            && self.maps.iter().zip(&other.maps).all(|(a, b)| map(a, b))
    }

    pub fn program(&self, pin: &ProgPin) -> Option<&ProgramSpec> {
        self.programs.iter().find(|p| &p.pin == pin)
    }
}

/// An ordered list of steps for one manifest, with the facts it sets up.
/// A managed map's entry steps (`UpdateMapEntry`, one per entry, right
/// after the map's `PinMap`) are not held: they are the spec's entries
/// again, made one at a time by `steps()` whenever the plan is read, so a
/// plan of a million entries holds them once (as bytes, in the spec). It is
/// stored (in records and saved plans) in this form too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "StoredPlan")]
pub struct Plan {
    /// The manifest the plan came from.
    pub manifest: PathBuf,
    pub spec: Spec,
    /// The steps but the entry steps that follow a managed map's `PinMap`.
    outline: Vec<Step>,
}

/// A plan as stored: its outline.
#[derive(Deserialize)]
struct StoredPlan {
    manifest: PathBuf,
    spec: Spec,
    steps: Vec<Step>,
}

impl From<StoredPlan> for Plan {
    fn from(p: StoredPlan) -> Self {
        Plan {
            manifest: p.manifest,
            spec: p.spec,
            outline: p.steps,
        }
    }
}

/// A plan as a record holds it (the same form as any plan: kept for the
/// records' `deserialize_with`, which shares it).
pub fn recorded<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::sync::Arc<Plan>, D::Error> {
    Plan::deserialize(d).map(std::sync::Arc::new)
}

impl Plan {
    /// A plan of these steps; `outline` holds no entry step of a managed
    /// map right after its `PinMap` (those are the spec's entries, made by
    /// `steps()`).
    pub fn new(manifest: PathBuf, spec: Spec, outline: Vec<Step>) -> Plan {
        Plan {
            manifest,
            spec,
            outline,
        }
    }

    /// Every step, in order: the outline with each managed map's entry
    /// steps after its `PinMap`, made as they are read.
    pub fn steps(&self) -> impl DoubleEndedIterator<Item = Cow<'_, Step>> + Clone + '_ {
        self.outline.iter().flat_map(move |step| {
            let entries = self.entries_after(step).into_iter().flat_map(|m| {
                m.entries.iter().flatten().map(move |e| {
                    Cow::Owned(Step::UpdateMapEntry {
                        map: m.name.clone(),
                        pin: m.pin.clone(),
                        entry: e.clone(),
                    })
                })
            });
            std::iter::once(Cow::Borrowed(step)).chain(entries)
        })
    }

    /// How many steps `steps()` makes.
    pub fn len(&self) -> usize {
        self.outline.len()
            + self
                .outline
                .iter()
                .filter_map(|s| self.entries_after(s))
                .map(|m| m.entries.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.outline.is_empty()
    }

    /// The steps without the entry steps of managed maps: what every reader
    /// that looks for another kind of step needs, without making a million.
    pub fn outline(&self) -> &[Step] {
        &self.outline
    }

    /// The managed map whose entry steps follow this step.
    fn entries_after(&self, step: &Step) -> Option<&MapSpec> {
        match step {
            Step::PinMap { pin, .. } => self
                .spec
                .maps
                .iter()
                .find(|m| &m.pin == pin && m.entries.is_some()),
            _ => None,
        }
    }
}

impl Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Plan", 3)?;
        st.serialize_field("manifest", &self.manifest)?;
        st.serialize_field("spec", &self.spec)?;
        st.serialize_field("steps", &self.outline)?;
        st.end()
    }
}

impl Plan {
    /// The teardown: the entries destroy writes first (a switch the
    /// programs read), then the undo of every step, last step first.
    pub fn destroy(&self) -> Plan {
        let switches = self.spec.maps.iter().flat_map(|m| {
            m.on_destroy.iter().flatten().map(|e| Step::UpdateMapEntry {
                map: m.name.clone(),
                pin: m.pin.clone(),
                entry: e.clone(),
            })
        });
        // An entry step has no undo (the map goes with its pin).
        let undos = self.outline.iter().rev().filter_map(Step::undo);
        Plan {
            manifest: self.manifest.clone(),
            spec: self.spec.clone(),
            outline: switches.chain(undos).collect(),
        }
    }
}

/// One run of steps within a command, in the order a command runs them:
/// each is numbered on from the one before, by the plan and the executor
/// alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// bpffs mounted where a pin needs one and none is.
    Mount,
    /// The objects compiled (no kernel change).
    Build,
    /// A killed run ended: undone, or finished past its point of no return.
    Recover,
    /// Without a record, each program loaded once under a probe pin to learn
    /// its tag, then unpinned.
    Probe,
    /// The change itself: fresh, entries or replace.
    Apply,
    /// The teardown.
    Destroy,
    /// The undo of a failed transaction (never planned: it follows a failure).
    Rollback,
}

impl Stage {
    /// Its name in events, the audit log and plans.
    pub fn word(self) -> &'static str {
        match self {
            Stage::Mount => "mount",
            Stage::Build => "build",
            Stage::Recover => "recover",
            Stage::Probe => "probe",
            Stage::Apply => "apply",
            Stage::Destroy => "destroy",
            Stage::Rollback => "rollback",
        }
    }

    /// Whether its steps put the kernel back as it was (these run even when
    /// the audit log cannot record them first: a half-made change is worse).
    pub fn restores(self) -> bool {
        matches!(self, Stage::Recover | Stage::Rollback)
    }
}

/// What a look at the kernel decided, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The kernel matches; apply changes nothing.
    Nothing,
    /// Nothing of the deployment exists: the whole plan runs.
    Fresh,
    /// Only map contents differ.
    Entries,
    /// What drifted is put back, nothing reloaded.
    Repair,
    /// The deployment is replaced (staged beside, then swapped in).
    Replace,
    /// A killed run is ended first.
    Recover,
    /// No record, and this manifest's deployment at its pins: probed, then
    /// adopted if exact.
    Adopt,
    /// apply would not go on.
    Refused,
    /// destroy removes what is there.
    Destroy,
    /// destroy finds nothing of the deployment.
    NothingToDestroy,
}

impl DecisionKind {
    pub fn word(self) -> &'static str {
        match self {
            DecisionKind::Nothing => "nothing",
            DecisionKind::Fresh => "fresh",
            DecisionKind::Entries => "entries",
            DecisionKind::Repair => "repair",
            DecisionKind::Replace => "replace",
            DecisionKind::Recover => "recover",
            DecisionKind::Adopt => "adopt",
            DecisionKind::Refused => "refused",
            DecisionKind::Destroy => "destroy",
            DecisionKind::NothingToDestroy => "nothing_to_destroy",
        }
    }
}

/// A stage of a decided command and how many of its steps follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub stage: Stage,
    pub steps: usize,
}

/// What the kernel made of a plan when it was looked at: what the command
/// would run, in order and numbered as it runs them, why, and which objects
/// of the manifest are not as it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub decision: DecisionKind,
    /// Why, when the deployment is replaced, recovered or refused.
    pub reason: Option<String>,
    /// Whether apply can run it (not refused).
    pub applicable: bool,
    /// Every step the command would run, in order: `changes[i]` is step
    /// `i + 1` of the run.
    pub changes: Vec<Step>,
    /// Which stage each stretch of `changes` belongs to.
    #[serde(default)]
    pub stages: Vec<Span>,
    /// What the command says besides its steps (why a stage is there).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The manifest's objects that are missing or different in the kernel.
    pub drift: Vec<Drift>,
}

impl Review {
    /// The steps with the stage each belongs to, in order.
    pub fn staged_steps(&self) -> impl Iterator<Item = (Stage, &Step)> {
        self.stages
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.stage, s.steps))
            .zip(&self.changes)
    }

    /// How many steps change the kernel (not the build).
    pub fn kernel_steps(&self) -> usize {
        self.changes.iter().filter(|s| s.touches_kernel()).count()
    }
}

/// One object of the manifest that is not as the manifest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub kind: String,
    pub name: String,
    pub place: String,
    /// missing, or different (why).
    pub state: String,
}

/// A step and the step that reverses it, as a run executes them. A plan's
/// steps carry their own undo; a run computed against the live kernel (an
/// entries update, a replace) sets the undo from what it observed, such as
/// the value an entry had before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    pub step: Step,
    pub undo: Option<Box<Step>>,
}

impl Op {
    /// A step with its own undo.
    pub fn of(step: Step) -> Op {
        let undo = step.undo().map(Box::new);
        Op { step, undo }
    }
}

/// Plan a checked model.
pub fn plan(model: &Model, opts: &PlanOptions) -> Plan {
    let spec = spec(model, opts);
    let mut steps = Vec::new();

    if spec.programs.iter().any(|p| p.source.is_some()) {
        steps.push(Step::MakeBuildDir {
            dir: opts.build_dir.clone(),
        });
    }
    for p in &spec.programs {
        if let Some(source) = &p.source {
            steps.push(Step::Compile {
                program: p.name.clone(),
                source: source.clone(),
                object: p.object.clone(),
                include: opts.include.clone(),
            });
        }
    }

    // Load in dependency order: a program that reuses a map loads after the
    // program that creates it, and after that map is pinned.
    let maps: BTreeMap<&MapName, &MapDef> = model.maps.iter().map(|m| (&m.name, m)).collect();
    let mut owned: BTreeMap<&ProgName, Vec<&MapSpec>> = BTreeMap::new();
    for m in &spec.maps {
        owned.entry(&m.owner).or_default().push(m);
    }
    for i in load_order(model) {
        let (p, ps) = (&model.programs[i], &spec.programs[i]);
        steps.push(Step::LoadProgram {
            program: p.name.clone(),
            object: ps.object.clone(),
            prog_type: p.prog_type,
            pin: p.pin.clone(),
            reuse: p
                .reuse
                .iter()
                .filter_map(|name| maps.get(name))
                .map(|m| ReusedMap {
                    name: m.name.clone(),
                    pin: m.pin.clone(),
                })
                .collect(),
        });
        for m in owned.get(&p.name).into_iter().flatten() {
            steps.push(Step::PinMap {
                map: m.name.clone(),
                program_pin: p.pin.clone(),
                pin: m.pin.clone(),
            });
            // Declared contents go in right after, before anything
            // attaches, so a policy holds from the first packet: the
            // spec's entries, which `Plan::steps` makes into steps here.
        }
    }

    // Map attachments, then the attachments that make traffic reach the
    // programs (cgroups, interfaces): see `Step::note`.
    let (to_maps, to_traffic): (Vec<&Attachment>, Vec<&Attachment>) = spec
        .attachments
        .iter()
        .partition(|a| matches!(a.point, AttachPoint::Map { .. }));
    for a in to_maps.into_iter().chain(to_traffic) {
        steps.push(Step::Attach(a.clone()));
    }

    Plan {
        manifest: model.manifest.clone(),
        spec,
        outline: steps,
    }
}

/// The facts of what a model sets up, in manifest order.
fn spec(model: &Model, opts: &PlanOptions) -> Spec {
    let programs: BTreeMap<&ProgName, &model::Program> =
        model.programs.iter().map(|p| (&p.name, p)).collect();
    let maps: BTreeMap<&MapName, &MapDef> = model.maps.iter().map(|m| (&m.name, m)).collect();
    Spec {
        programs: model
            .programs
            .iter()
            .map(|p| ProgramSpec {
                name: p.name.clone(),
                prog_type: p.prog_type,
                pin: p.pin.clone(),
                object: match &p.code {
                    Code::Source(_) => opts.build_dir.join(format!("{}.o", p.name)),
                    Code::Object(o) => o.clone(),
                },
                source: match &p.code {
                    Code::Source(s) => Some(s.clone()),
                    Code::Object(_) => None,
                },
            })
            .collect(),
        maps: model
            .maps
            .iter()
            .map(|m| MapSpec {
                name: m.name.clone(),
                owner: m.owner.clone(),
                pin: m.pin.clone(),
                entries: m.entries.clone(),
                on_destroy: m.on_destroy.clone(),
                labels: m.labels.clone(),
            })
            .collect(),
        attachments: model
            .attachments
            .iter()
            .filter_map(|a| {
                let p = programs.get(&a.program)?;
                let point = match &a.point {
                    model::AttachPoint::Cgroup { path, kind } => AttachPoint::Cgroup {
                        cgroup: path.clone(),
                        kind: *kind,
                    },
                    model::AttachPoint::Map { map, kind } => AttachPoint::Map {
                        map: map.clone(),
                        map_pin: maps.get(map)?.pin.clone(),
                        kind: *kind,
                    },
                    model::AttachPoint::Xdp { iface, mode } => AttachPoint::Xdp {
                        iface: iface.clone(),
                        mode: *mode,
                    },
                };
                Some(Attachment {
                    program: p.name.clone(),
                    prog: ProgRef::Pinned(p.pin.clone()),
                    point,
                })
            })
            .collect(),
    }
}

/// Indices of programs in load order: manifest order, except that a program
/// is preceded by the creators of the maps it reuses. An iterative
/// depth-first walk (validation rules out cycles; a node on the current path
/// is not entered again, so a cycle cannot loop).
fn load_order(model: &Model) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = model
        .programs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let owner: BTreeMap<&str, usize> = model
        .maps
        .iter()
        .filter_map(|m| Some((m.name.as_str(), *index.get(m.owner.as_str())?)))
        .collect();
    let deps: Vec<Vec<usize>> = model
        .programs
        .iter()
        .map(|p| {
            p.reuse
                .iter()
                .filter_map(|m| owner.get(m.as_str()).copied())
                .collect()
        })
        .collect();
    let mut state = vec![0u8; deps.len()]; // 0 new, 1 on the path, 2 placed
    let mut order = Vec::with_capacity(deps.len());
    for root in 0..deps.len() {
        if state[root] != 0 {
            continue;
        }
        state[root] = 1;
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            match deps[node].get(next) {
                Some(&dep) => {
                    top.1 += 1;
                    if state[dep] == 0 {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                }
                None => {
                    state[node] = 2;
                    order.push(node);
                    stack.pop();
                }
            }
        }
    }
    order
}
