//! How to end a run that was killed: undo the steps it started, last
//! first, or, past its point of no return, finish the ones left.
//!
//! One look at the kernel is taken before recovery, but the recovery steps
//! change what they look at (undoing a swap moves the pins the next undo
//! names). So each step is judged against the look as the steps before it
//! will have left it: a simulation of their effect, not the stale look.

use std::collections::BTreeMap;

use crate::kernel::look::inspect::{MapInfo, PinState, ProgInfo};
use crate::kernel::look::observe::Observed;
use crate::kernel::remember::record::Run;
use crate::manifest::model::{KernelMapType, KernelProgType};
use crate::plan::Op;
use crate::plan::step::{AttachPoint, Attachment, Step};

/// The recovery of a killed run that `started` ops were begun of: the ops
/// still needed, and whether they finish the run (`true`) or undo it.
pub(crate) fn recovery(run: &Run, started: usize, obs: &Observed) -> (Vec<Op>, bool) {
    let started = started.min(run.ops.len());
    let commit = run.commit_at.filter(|c| started > *c);
    let forward = commit.is_some();
    let steps: Vec<Step> = if let Some(c) = commit {
        // Every op past the commit point, as some may have failed; those
        // already done are filtered out below.
        run.ops[c.min(run.ops.len())..]
            .iter()
            .map(|op| op.step.clone())
            .collect()
    } else {
        run.ops[..started]
            .iter()
            .rev()
            .filter_map(|op| op.undo.as_deref().cloned())
            .collect()
    };
    let mut sim = Simulated::new(obs);
    let ops = steps
        .into_iter()
        .filter(|s| {
            let needed = sim.needed(s);
            if needed {
                sim.effect(s);
            }
            needed
        })
        .map(|step| Op { step, undo: None })
        .collect();
    (ops, forward)
}

/// What the kernel will look like as steps run: recovery judges each of
/// its steps by it, and the executor judges a failed step by it.
pub(crate) struct Simulated {
    obs: Observed,
    /// The entries of each dumped map, key to (first) value.
    entries: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// The id a program loaded during recovery has before it exists (ids
/// the kernel hands out start at 1).
const NOT_YET_LOADED: u32 = 0;

impl Simulated {
    pub fn new(obs: &Observed) -> Self {
        let entries = obs
            .contents
            .iter()
            .map(|(pin, dump)| {
                let kv = dump
                    .iter()
                    .map(|e| (e.key.to_vec(), e.first().to_vec()))
                    .collect();
                (pin.clone(), kv)
            })
            .collect();
        Simulated {
            obs: obs.clone(),
            entries,
        }
    }

    /// The kernel as the simulated steps left it.
    pub fn into_observed(self) -> Observed {
        let mut obs = self.obs;
        obs.contents = self
            .entries
            .into_iter()
            .map(|(pin, kv)| {
                let dump = kv
                    .into_iter()
                    .map(|(key, value)| crate::kernel::look::inspect::DumpEntry::one(&key, &value))
                    .collect();
                (pin, dump)
            })
            .collect();
        obs
    }

    /// Whether a step still has something to do. A map whose entries were
    /// not looked at is assumed to need every entry step.
    pub fn needed(&self, step: &Step) -> bool {
        let obs = &self.obs;
        match step {
            Step::UnpinProgram { pin, .. } => obs.pins.contains_key(pin.as_str()),
            Step::UnpinMap { pin, .. } => obs.pins.contains_key(pin.as_str()),
            Step::RenamePin { from, to, .. } => {
                obs.pins.contains_key(from) && !obs.pins.contains_key(to)
            }
            Step::PinById { pin, .. } => !obs.pins.contains_key(pin),
            Step::RemovePinDir { dir } => obs.dirs.contains(dir),
            Step::MakePinDir { dir } => !obs.dirs.contains(dir),
            Step::Detach(a) => obs
                .prog_id(&a.prog)
                .is_some_and(|id| obs.attached(&a.point, id)),
            Step::Attach(a) => obs
                .prog_id(&a.prog)
                .is_some_and(|id| !obs.attached(&a.point, id)),
            Step::LoadProgram { pin, .. } => !obs.pins.contains_key(pin.as_str()),
            Step::PinMap { pin, .. } => !obs.pins.contains_key(pin.as_str()),
            Step::UpdateMapEntry { pin, entry, .. } => self
                .entries
                .get(pin.as_str())
                .is_none_or(|kv| kv.get(entry.key()).map(Vec::as_slice) != Some(entry.value())),
            Step::DeleteMapEntry { pin, entry, .. } => self
                .entries
                .get(pin.as_str())
                .is_none_or(|kv| kv.contains_key(entry.key())),
            _ => true,
        }
    }

    /// Change the simulated kernel as the step will.
    pub fn effect(&mut self, step: &Step) {
        match step {
            Step::UnpinProgram { pin, .. } => self.unpin(pin.as_str()),
            Step::UnpinMap { pin, .. } => self.unpin(pin.as_str()),
            Step::RenamePin { from, to, .. } => self.rename(from, to),
            Step::PinById { kind, id, pin, .. } => {
                let state = match kind {
                    crate::plan::step::PinKind::Program => {
                        self.obs.programs.get(id).cloned().map(PinState::Program)
                    }
                    crate::plan::step::PinKind::Map => {
                        self.obs.maps.get(id).cloned().map(PinState::Map)
                    }
                };
                if let Some(state) = state {
                    self.obs.pins.insert(pin.clone(), state);
                }
            }
            Step::RemovePinDir { dir } => {
                self.obs.dirs.remove(dir);
            }
            Step::MakePinDir { dir } => {
                self.obs.dirs.insert(dir.clone());
            }
            Step::Attach(a) => {
                if let Some(id) = self.obs.prog_id(&a.prog) {
                    // A map holds one program of each attach type: an
                    // attach there replaces the one before.
                    let replaces = matches!(a.point, AttachPoint::Map { .. });
                    let ids = self.ids_at(a);
                    if replaces {
                        ids.clear();
                    }
                    ids.push(id);
                }
            }
            Step::Detach(a) => {
                if let Some(id) = self.obs.prog_id(&a.prog) {
                    self.ids_at(a).retain(|i| *i != id);
                }
            }
            Step::LoadProgram { pin, program, .. } => {
                let info = ProgInfo {
                    id: NOT_YET_LOADED,
                    tag: String::new(),
                    prog_type: KernelProgType::Unspec,
                    name: program.0.clone(),
                    map_ids: Vec::new(),
                };
                self.obs.pins.insert(pin.0.clone(), PinState::Program(info));
            }
            Step::PinMap { pin, map, .. } => {
                let info = MapInfo {
                    id: 0,
                    map_type: KernelMapType::Unspec,
                    name: map.to_string(),
                    key_size: 0,
                    value_size: 0,
                    max_entries: 0,
                    flags: 0,
                };
                self.obs.pins.insert(pin.to_string(), PinState::Map(info));
            }
            Step::UpdateMapEntry { pin, entry, .. } => {
                if let Some(kv) = self.entries.get_mut(pin.as_str()) {
                    kv.insert(entry.key().to_vec(), entry.value().to_vec());
                }
            }
            Step::DeleteMapEntry { pin, entry, .. } => {
                if let Some(kv) = self.entries.get_mut(pin.as_str()) {
                    kv.remove(entry.key());
                }
            }
            _ => {}
        }
    }

    fn unpin(&mut self, pin: &str) {
        self.obs.pins.remove(pin);
        self.obs.map_links.retain(|(p, _), _| p != pin);
        self.entries.remove(pin);
    }

    /// A pin moved: what it holds, the programs attached to its map and the
    /// map's entries go with it.
    fn rename(&mut self, from: &str, to: &str) {
        if let Some(state) = self.obs.pins.remove(from) {
            self.obs.pins.insert(to.to_string(), state);
        }
        let links: Vec<_> = self
            .obs
            .map_links
            .keys()
            .filter(|(p, _)| p == from)
            .cloned()
            .collect();
        for key in links {
            if let Some(ids) = self.obs.map_links.remove(&key) {
                self.obs.map_links.insert((to.to_string(), key.1), ids);
            }
        }
        if let Some(kv) = self.entries.remove(from) {
            self.entries.insert(to.to_string(), kv);
        }
    }

    /// The program ids attached where an attachment points.
    fn ids_at(&mut self, a: &Attachment) -> &mut Vec<u32> {
        let obs = &mut self.obs;
        match &a.point {
            AttachPoint::Cgroup { cgroup, .. } => {
                obs.cgroups.entry(cgroup.as_str().to_string()).or_default()
            }
            AttachPoint::Map { map_pin, kind, .. } => obs
                .map_links
                .entry((map_pin.to_string(), *kind))
                .or_default(),
            AttachPoint::Xdp { iface, .. } => {
                obs.xdp.entry(iface.as_str().to_string()).or_default()
            }
        }
    }
}
