//! A kernel made of plain data, for tests that run in milliseconds without
//! root: it models the effect of every step kind (pins, ids, tags, maps and
//! their entries, cgroup, sockmap and XDP attachments, directories, and the
//! kernel freeing what nothing references) and fails where the kernel
//! fails (a pin that exists, a directory that is missing, a full map, a
//! detach of what is not attached). It answers `observe` as the real look
//! does. The root tests run the same scenarios on the real kernel and keep
//! it honest: nothing here is smarter than the kernel, and a behaviour is
//! added here only when a root test has seen it.

use anyhow::{Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::kernel::act::seam::{At, BatchEnd, Kernel, Ran, StepError};
use crate::kernel::look::inspect::{DumpEntry, MapInfo, PinState, ProgInfo};
use crate::kernel::look::observe::{Observed, Query};
use crate::manifest::model::{AttachKind, KernelProgType, MapShape, kernel_name};
use crate::plan::step::{AttachPoint, Attachment, BatchLines, ProgRef, Step};

/// The directories there are before anything runs: bpffs and above it.
const BASE_DIRS: [&str; 3] = ["/sys", "/sys/fs", "/sys/fs/bpf"];

/// What loading an object creates besides the program.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub tag: String,
    /// The name and shape of each map it creates.
    pub maps: Vec<(String, MapShape)>,
}

#[derive(Debug, Clone)]
struct Map {
    info: MapInfo,
    max_entries: usize,
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obj {
    Prog(u32),
    Map(u32),
}

/// The fake kernel.
#[derive(Debug, Clone)]
pub(crate) struct Fake {
    next_id: u32,
    objects: BTreeMap<PathBuf, Object>,
    progs: BTreeMap<u32, ProgInfo>,
    maps: BTreeMap<u32, Map>,
    pins: BTreeMap<String, Obj>,
    dirs: BTreeSet<PathBuf>,
    cgroups: BTreeMap<String, Vec<u32>>,
    /// Programs attached to a map, by map id (a link follows the map when
    /// its pin moves).
    links: BTreeMap<(u32, AttachKind), Vec<u32>>,
    xdp: BTreeMap<String, Vec<u32>>,
    /// The command line of every step that ran (entry lines included), as
    /// the audit log records them.
    pub ran: Vec<Vec<String>>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            next_id: 1,
            objects: BTreeMap::new(),
            progs: BTreeMap::new(),
            maps: BTreeMap::new(),
            pins: BTreeMap::new(),
            dirs: BASE_DIRS.iter().map(PathBuf::from).collect(),
            cgroups: BTreeMap::new(),
            links: BTreeMap::new(),
            xdp: BTreeMap::new(),
            ran: Vec::new(),
        }
    }
}

fn err(what: &str, why: &str) -> StepError {
    StepError {
        exit: Some(255),
        error: anyhow!("{what}: {why}"),
    }
}

impl Fake {
    /// What loading `path` makes.
    pub fn object(&mut self, path: impl Into<PathBuf>, object: Object) {
        self.objects.insert(path.into(), object);
    }

    /// Every pin, with what it holds ("prog 3", "map 4").
    pub fn pins(&self) -> Vec<String> {
        self.pins
            .iter()
            .map(|(p, o)| match o {
                Obj::Prog(id) => format!("{p} prog {id}"),
                Obj::Map(id) => format!("{p} map {id}"),
            })
            .collect()
    }

    /// The live program and map ids.
    pub fn ids(&self) -> (Vec<u32>, Vec<u32>) {
        (
            self.progs.keys().copied().collect(),
            self.maps.keys().copied().collect(),
        )
    }

    /// Program ids attached to a cgroup.
    pub fn cgroup(&self, cg: &str) -> Vec<u32> {
        self.cgroups.get(cg).cloned().unwrap_or_default()
    }

    /// The entries of the map at a pin.
    pub fn entries(&self, pin: &str) -> Option<&BTreeMap<Vec<u8>, Vec<u8>>> {
        match self.pins.get(pin) {
            Some(Obj::Map(id)) => self.maps.get(id).map(|m| &m.entries),
            _ => None,
        }
    }

    /// Detach a program from a cgroup by hand (drift).
    pub fn detach_by_hand(&mut self, cg: &str, id: u32) {
        if let Some(ids) = self.cgroups.get_mut(cg) {
            ids.retain(|i| *i != id);
        }
        self.free();
    }

    /// Whether anything of the fake is left: pins, programs, maps,
    /// attachments, or directories other than bpffs itself.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
            && self.progs.is_empty()
            && self.maps.is_empty()
            && self.cgroups.values().all(Vec::is_empty)
            && self.links.values().all(Vec::is_empty)
            && self.xdp.values().all(Vec::is_empty)
            && self.dirs.len() == BASE_DIRS.len()
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn prog_of(&self, r: &ProgRef) -> Option<u32> {
        match r {
            ProgRef::Pinned(pin) => match self.pins.get(pin.as_str()) {
                Some(Obj::Prog(id)) => Some(*id),
                _ => None,
            },
            ProgRef::Id(id) => self.progs.contains_key(id).then_some(*id),
        }
    }

    fn map_at(&self, pin: &str) -> Option<u32> {
        match self.pins.get(pin) {
            Some(Obj::Map(id)) => Some(*id),
            _ => None,
        }
    }

    /// A new pin: its directory must exist and the name be free.
    fn pin(&mut self, pin: &str, obj: Obj) -> Result<(), StepError> {
        if self.pins.contains_key(pin) || self.dirs.contains(Path::new(pin)) {
            return Err(err(pin, "File exists"));
        }
        let parent = Path::new(pin).parent().unwrap_or(Path::new("/"));
        if !self.dirs.contains(parent) {
            return Err(err(pin, "No such file or directory"));
        }
        self.pins.insert(pin.to_string(), obj);
        Ok(())
    }

    /// The kernel frees a program nothing pins, attaches or links to a
    /// live map, and a map nothing pins or uses.
    fn free(&mut self) {
        loop {
            let mut maps: BTreeSet<u32> = self
                .pins
                .values()
                .filter_map(|o| match o {
                    Obj::Map(id) => Some(*id),
                    Obj::Prog(_) => None,
                })
                .collect();
            let mut progs: BTreeSet<u32> = self
                .pins
                .values()
                .filter_map(|o| match o {
                    Obj::Prog(id) => Some(*id),
                    Obj::Map(_) => None,
                })
                .collect();
            progs.extend(self.cgroups.values().flatten());
            progs.extend(self.xdp.values().flatten());
            // Fixpoint: a live program keeps its maps, a live map its links.
            loop {
                let before = (progs.len(), maps.len());
                for id in &progs {
                    if let Some(p) = self.progs.get(id) {
                        maps.extend(p.map_ids.iter().copied());
                    }
                }
                for ((map, _), ids) in &self.links {
                    if maps.contains(map) {
                        progs.extend(ids.iter().copied());
                    }
                }
                if (progs.len(), maps.len()) == before {
                    break;
                }
            }
            let n = (self.progs.len(), self.maps.len());
            self.progs.retain(|id, _| progs.contains(id));
            self.maps.retain(|id, _| maps.contains(id));
            self.links.retain(|(map, _), _| maps.contains(map));
            if (self.progs.len(), self.maps.len()) == n {
                return;
            }
        }
    }

    fn load(
        &mut self,
        program: &str,
        object: &Path,
        prog_type: KernelProgType,
        pin: &str,
        reuse: &[String],
    ) -> Result<(), StepError> {
        let Some(obj) = self.objects.get(object).cloned() else {
            return Err(err(
                &object.display().to_string(),
                "No such file or directory",
            ));
        };
        let mut map_ids = Vec::new();
        for r in reuse {
            match self.map_at(r) {
                Some(id) => map_ids.push(id),
                None => return Err(err(r, "no map is pinned there")),
            }
        }
        if self.pins.contains_key(pin) {
            return Err(err(pin, "File exists"));
        }
        let id = self.id();
        for (name, shape) in &obj.maps {
            let map_id = self.id();
            self.maps.insert(
                map_id,
                Map {
                    info: MapInfo {
                        id: map_id,
                        map_type: shape.map_type,
                        name: kernel_name(name).to_string(),
                        key_size: shape.key_size,
                        value_size: shape.value_size,
                        max_entries: shape.max_entries,
                        flags: shape.flags,
                    },
                    max_entries: shape.max_entries as usize,
                    entries: BTreeMap::new(),
                },
            );
            map_ids.push(map_id);
        }
        self.progs.insert(
            id,
            ProgInfo {
                id,
                tag: obj.tag.clone(),
                prog_type,
                name: kernel_name(program).to_string(),
                map_ids,
            },
        );
        let pinned = self.pin(pin, Obj::Prog(id));
        self.free();
        pinned
    }

    fn entry(&mut self, step: &Step) -> Result<(), StepError> {
        let (pin, key, value) = match step {
            Step::UpdateMapEntry { pin, entry, .. } => (pin, entry.key(), Some(entry.value())),
            Step::DeleteMapEntry { pin, entry, .. } => (pin, entry.key(), None),
            _ => return Ok(()),
        };
        let Some(id) = self.map_at(pin.as_str()) else {
            return Err(err(pin.as_str(), "no map is pinned there"));
        };
        let Some(map) = self.maps.get_mut(&id) else {
            return Err(err(pin.as_str(), "no such map"));
        };
        match value {
            Some(v) => {
                if !map.entries.contains_key(key) && map.entries.len() >= map.max_entries {
                    return Err(err("update failed", "Argument list too long"));
                }
                map.entries.insert(key.to_vec(), v.to_vec());
            }
            None => {
                if map.entries.remove(key).is_none() {
                    return Err(err("delete failed", "No such file or directory"));
                }
            }
        }
        Ok(())
    }

    fn attach(&mut self, a: &Attachment, on: bool) -> Result<(), StepError> {
        let what = a.place();
        let Some(id) = self.prog_of(&a.prog) else {
            return Err(err(&what, "no such program"));
        };
        let ids = match &a.point {
            AttachPoint::Cgroup { cgroup, .. } => {
                self.cgroups.entry(cgroup.as_str().to_string()).or_default()
            }
            AttachPoint::Map { map_pin, kind, .. } => {
                let Some(map) = self.map_at(map_pin.as_str()) else {
                    return Err(err(&what, "no map is pinned there"));
                };
                let ids = self.links.entry((map, *kind)).or_default();
                // A map holds one program of each attach type: a second
                // attach replaces the first.
                if on {
                    ids.clear();
                }
                ids
            }
            AttachPoint::Xdp { iface, .. } => {
                let ids = self.xdp.entry(iface.as_str().to_string()).or_default();
                if on && !ids.is_empty() {
                    return Err(err(&what, "Device or resource busy"));
                }
                ids
            }
        };
        match (on, ids.contains(&id)) {
            (true, true) => return Err(err(&what, "File exists")),
            (true, false) => ids.push(id),
            (false, true) => ids.retain(|i| *i != id),
            (false, false) => return Err(err(&what, "No such file or directory")),
        }
        self.free();
        Ok(())
    }

    fn apply(&mut self, step: &Step, argv: &[String]) -> Result<Ran, StepError> {
        match step {
            Step::MakeBuildDir { .. } | Step::Compile { .. } => {
                return Ok(Ran::Skipped("up to date"));
            }
            Step::MountBpffs { .. } => {}
            Step::MakePinDir { dir } => {
                if self.dirs.contains(dir) || self.pins.contains_key(&*dir.to_string_lossy()) {
                    return Err(err(&dir.display().to_string(), "File exists"));
                }
                if !dir.parent().is_some_and(|p| self.dirs.contains(p)) {
                    return Err(err(&dir.display().to_string(), "No such file or directory"));
                }
                self.dirs.insert(dir.clone());
            }
            Step::RemovePinDir { dir } => {
                let busy = self.pins.keys().any(|p| Path::new(p).starts_with(dir))
                    || self.dirs.iter().any(|d| d != dir && d.starts_with(dir));
                if busy {
                    return Ok(Ran::Skipped(
                        "not empty: other pins live there, so it stays",
                    ));
                }
                if !self.dirs.remove(dir) {
                    return Err(err(&dir.display().to_string(), "No such file or directory"));
                }
            }
            Step::LoadProgram {
                program,
                object,
                prog_type,
                pin,
                reuse,
            } => {
                let reuse: Vec<String> = reuse.iter().map(|r| r.pin.to_string()).collect();
                self.load(
                    program.as_str(),
                    object,
                    prog_type.kernel_type(),
                    pin.as_str(),
                    &reuse,
                )?;
            }
            Step::PinMap { pin, .. } => {
                // `bpftool map pin id ID PIN`: the id the executor resolved.
                let id: u32 = argv
                    .get(4)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| err("map pin", "no map id"))?;
                if !self.maps.contains_key(&id) {
                    return Err(err("map pin", "No such file or directory"));
                }
                self.pin(pin.as_str(), Obj::Map(id))?;
            }
            Step::UpdateMapEntry { .. } | Step::DeleteMapEntry { .. } => self.entry(step)?,
            Step::Attach(a) => self.attach(a, true)?,
            Step::Detach(a) => self.attach(a, false)?,
            Step::RenamePin { from, to, .. } => {
                let Some(obj) = self.pins.remove(from) else {
                    return Err(err(from, "No such file or directory"));
                };
                // `mv -T` replaces what is at the destination.
                self.pins.insert(to.clone(), obj);
                self.free();
            }
            Step::PinById { kind, id, pin, .. } => {
                let obj = match kind {
                    crate::plan::step::PinKind::Program if self.progs.contains_key(id) => {
                        Obj::Prog(*id)
                    }
                    crate::plan::step::PinKind::Map if self.maps.contains_key(id) => Obj::Map(*id),
                    _ => return Err(err(pin, "No such file or directory")),
                };
                self.pin(pin, obj)?;
            }
            Step::UnpinProgram { pin, .. } => {
                self.pins.remove(pin.as_str());
                self.free();
            }
            Step::UnpinMap { pin, .. } => {
                self.pins.remove(pin.as_str());
                self.free();
            }
        }
        Ok(Ran::Done)
    }
}

impl Kernel for Fake {
    /// The fake holds no connections.
    fn sockets(&mut self, _: &[u64]) -> Result<Vec<crate::kernel::look::sockets::Socket>> {
        Ok(Vec::new())
    }

    fn observe(&mut self, q: &Query) -> Result<Observed> {
        let mut o = Observed::default();
        for pin in &q.pins {
            let state = match self.pins.get(pin) {
                Some(Obj::Prog(id)) => self.progs.get(id).cloned().map(PinState::Program),
                Some(Obj::Map(id)) => self.maps.get(id).map(|m| PinState::Map(m.info.clone())),
                None => self
                    .dirs
                    .contains(Path::new(pin))
                    .then_some(PinState::Other),
            };
            if let Some(state) = state {
                o.pins.insert(pin.clone(), state);
            }
        }
        for cg in &q.cgroups {
            o.cgroups.insert(cg.clone(), self.cgroup(cg));
        }
        for (pin, kind) in &q.map_links {
            let ids = self
                .map_at(pin)
                .and_then(|m| self.links.get(&(m, *kind)).cloned())
                .unwrap_or_default();
            o.map_links.insert((pin.clone(), *kind), ids);
        }
        for iface in &q.ifaces {
            o.xdp.insert(
                iface.clone(),
                self.xdp.get(iface).cloned().unwrap_or_default(),
            );
        }
        for id in &q.prog_ids {
            if let Some(p) = self.progs.get(id) {
                o.programs.insert(*id, p.clone());
            }
        }
        for id in &q.map_ids {
            if let Some(m) = self.maps.get(id) {
                o.maps.insert(*id, m.info.clone());
            }
        }
        for pin in &q.dumps {
            if let Some(entries) = self.entries(pin) {
                let dump = entries.iter().map(|(k, v)| DumpEntry::one(k, v)).collect();
                o.contents.insert(pin.clone(), dump);
            }
        }
        if q.cgroup_tree.is_some() {
            o.cgroup_tree = self
                .cgroups
                .iter()
                .flat_map(|(cg, ids)| ids.iter().map(move |id| (cg.clone(), *id)))
                .collect();
        }
        for id in &q.dump_ids {
            if let Some(m) = self.maps.get(id) {
                let dump = m
                    .entries
                    .iter()
                    .map(|(k, v)| DumpEntry::one(k, v))
                    .collect();
                o.contents_by_id.insert(*id, dump);
            }
        }
        o.dirs = q
            .dirs
            .iter()
            .filter(|d| self.dirs.contains(*d))
            .cloned()
            .collect();
        Ok(o)
    }

    fn map_id(&mut self, program_pin: &str, map: &str) -> Result<u32> {
        let Some(Obj::Prog(id)) = self.pins.get(program_pin) else {
            bail!("no program is pinned at {program_pin}");
        };
        let prog = self
            .progs
            .get(id)
            .ok_or_else(|| anyhow!("no program {id}"))?;
        prog.map_ids
            .iter()
            .copied()
            .find(|m| {
                self.maps
                    .get(m)
                    .is_some_and(|m| m.info.name == kernel_name(map))
            })
            .ok_or_else(|| anyhow!("the program pinned at {program_pin} uses no map named `{map}`"))
    }

    fn execute(&mut self, _: At, step: &Step, argv: &[String]) -> Result<Ran, StepError> {
        self.ran.push(argv.to_vec());
        self.apply(step, argv)
    }

    fn batch(&mut self, _: At, steps: &[&Step], lines: &BatchLines) -> BatchEnd {
        for (k, (step, line)) in steps.iter().zip(lines.iter()).enumerate() {
            let mut argv = vec!["bpftool".to_string()];
            argv.extend(line.split(' ').map(str::to_string));
            self.ran.push(argv.clone());
            if let Err(e) = self.apply(step, &argv) {
                return BatchEnd::Failed(
                    k,
                    e.error.context(format!("bpftool batch, line {}", k + 1)),
                );
            }
        }
        BatchEnd::Done
    }
}
