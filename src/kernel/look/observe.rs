//! One look at the kernel for a deployment: what sits at each pin, what is
//! attached to each cgroup, sockmap and interface, which recorded programs
//! still live, and the contents of the maps that matter. Every decision and
//! report is computed from this snapshot, purely.

use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::kernel::look::inspect::{self, DumpEntry, MapInfo, PinState, ProgInfo};
use crate::kernel::remember::record::{Connection, Record};
use crate::manifest::model::AttachKind;
use crate::plan::step::{AttachPoint, Attachment, ProgRef, Step};
use crate::plan::{Op, Spec};

/// What to look at.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pub pins: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    pub map_links: BTreeSet<(String, AttachKind)>,
    pub ifaces: BTreeSet<String>,
    pub prog_ids: BTreeSet<u32>,
    pub map_ids: BTreeSet<u32>,
    pub dumps: BTreeSet<String>,
    /// Maps whose entries are read by id (no pin names them any more).
    pub dump_ids: BTreeSet<u32>,
    /// Walk every cgroup under this one for its programs (adopt).
    pub cgroup_tree: Option<PathBuf>,
    pub dirs: BTreeSet<PathBuf>,
}

impl Query {
    /// The objects of a spec; with `contents`, the entries of its managed
    /// maps too.
    pub fn spec(&mut self, spec: &Spec, contents: bool) -> &mut Self {
        for p in &spec.programs {
            self.pin(p.pin.as_str());
        }
        for m in &spec.maps {
            self.pin(m.pin.as_str());
            if contents && m.entries.is_some() {
                self.dumps.insert(m.pin.to_string());
            }
        }
        for a in &spec.attachments {
            self.attachment(a);
        }
        self
    }

    /// Every map of a spec dumped: sockhash sizes and counters for status.
    pub fn gauges(&mut self, spec: &Spec) -> &mut Self {
        for m in &spec.maps {
            self.dumps.insert(m.pin.to_string());
        }
        self
    }

    /// The objects of a record: what is deployed, what a run touched, and
    /// the programs by their recorded ids.
    pub fn record(&mut self, rec: &Record) -> &mut Self {
        if let Some(d) = &rec.deployed {
            self.spec(&d.plan.spec, false);
            self.prog_ids.extend(d.programs.iter().map(|p| p.id));
            self.map_ids.extend(d.maps.iter().map(|m| m.id));
            self.dirs.extend(d.pin_dirs.iter().cloned());
        }
        if let Some(run) = &rec.run {
            self.spec(&run.plan.spec, false);
            self.ops(&run.ops);
            self.dirs.extend(run.pin_dirs.iter().cloned());
        }
        self
    }

    /// Everything the steps of a run name.
    pub fn ops(&mut self, ops: &[Op]) -> &mut Self {
        for op in ops {
            for step in std::iter::once(&op.step).chain(op.undo.as_deref()) {
                self.step(step);
            }
        }
        self
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::LoadProgram { pin, .. } | Step::UnpinProgram { pin, .. } => {
                self.pin(pin.as_str())
            }
            Step::PinMap { pin, .. } | Step::UnpinMap { pin, .. } => self.pin(pin.as_str()),
            Step::RenamePin { from, to, .. } => {
                self.pin(from);
                self.pin(to);
            }
            Step::PinById { kind, id, pin, .. } => {
                self.pin(pin);
                match kind {
                    crate::plan::step::PinKind::Program => self.prog_ids.insert(*id),
                    crate::plan::step::PinKind::Map => self.map_ids.insert(*id),
                };
            }
            Step::Attach(a) | Step::Detach(a) => self.attachment(a),
            // Recovery judges entry steps by the map's contents.
            Step::UpdateMapEntry { pin, .. } | Step::DeleteMapEntry { pin, .. } => {
                self.pin(pin.as_str());
                self.dumps.insert(pin.to_string());
            }
            Step::MakePinDir { dir } | Step::RemovePinDir { dir } => {
                self.dirs.insert(dir.clone());
            }
            _ => {}
        }
    }

    /// Also look at this pin.
    pub fn pin(&mut self, pin: &str) {
        self.pins.insert(pin.to_string());
    }

    fn attachment(&mut self, a: &Attachment) {
        match &a.prog {
            ProgRef::Pinned(pin) => self.pin(pin.as_str()),
            ProgRef::Id(id) => {
                self.prog_ids.insert(*id);
            }
        }
        match &a.point {
            AttachPoint::Cgroup { cgroup, .. } => {
                self.cgroups.insert(cgroup.0.clone());
            }
            AttachPoint::Map { map_pin, kind, .. } => {
                self.pin(map_pin.as_str());
                self.map_links.insert((map_pin.to_string(), *kind));
            }
            AttachPoint::Xdp { iface, .. } => {
                self.ifaces.insert(iface.0.clone());
            }
        }
    }

    /// Also look for these program and map ids.
    pub fn ids(&mut self, progs: &[u32], maps: &[u32]) -> &mut Self {
        self.prog_ids.extend(progs);
        self.map_ids.extend(maps);
        self
    }

    /// Also look at these directories.
    pub fn dirs(&mut self, dirs: impl IntoIterator<Item = PathBuf>) -> &mut Self {
        self.dirs.extend(dirs);
        self
    }
}

/// What the kernel held when it was looked at.
#[derive(Debug, Default, Clone)]
pub(crate) struct Observed {
    /// What each asked-for pin holds; a pin not here is missing.
    pub pins: BTreeMap<String, PinState>,
    /// Program ids attached to each cgroup.
    pub cgroups: BTreeMap<String, Vec<u32>>,
    /// Program ids attached to each pinned map, per attach type.
    pub map_links: BTreeMap<(String, AttachKind), Vec<u32>>,
    /// XDP program ids on each interface.
    pub xdp: BTreeMap<String, Vec<u32>>,
    /// The asked-for program ids that still exist.
    pub programs: BTreeMap<u32, ProgInfo>,
    /// The asked-for map ids that still exist.
    pub maps: BTreeMap<u32, MapInfo>,
    /// Entries of the asked-for maps.
    pub contents: BTreeMap<String, Vec<DumpEntry>>,
    /// Entries of the maps asked for by id, that still exist.
    pub contents_by_id: BTreeMap<u32, Vec<DumpEntry>>,
    /// Every cgroup under the asked-for root with a program attached: the
    /// cgroup and the program's id.
    pub cgroup_tree: Vec<(String, u32)>,
    /// The asked-for directories that exist.
    pub dirs: BTreeSet<PathBuf>,
}

impl Observed {
    /// The program at a pin, if a program is there.
    pub fn program_at(&self, pin: &str) -> Option<&ProgInfo> {
        match self.pins.get(pin) {
            Some(PinState::Program(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether a program id is attached at a point.
    pub fn attached(&self, point: &AttachPoint, id: u32) -> bool {
        let ids = match point {
            AttachPoint::Cgroup { cgroup, .. } => self.cgroups.get(cgroup.as_str()),
            AttachPoint::Map { map_pin, kind, .. } => {
                self.map_links.get(&(map_pin.to_string(), *kind))
            }
            AttachPoint::Xdp { iface, .. } => self.xdp.get(iface.as_str()),
        };
        ids.is_some_and(|ids| ids.contains(&id))
    }

    /// The id of the program an attachment names, if it exists.
    pub fn prog_id(&self, prog: &ProgRef) -> Option<u32> {
        match prog {
            ProgRef::Pinned(pin) => self.program_at(pin.as_str()).map(|p| p.id),
            ProgRef::Id(id) => self.programs.contains_key(id).then_some(*id),
        }
    }
}

/// What differs between two looks, for what `q` asks: each pin, cgroup,
/// sockmap link, interface, directory and map content, in words. Empty when
/// the kernel is as it was.
pub(crate) fn differences(q: &Query, before: &Observed, after: &Observed) -> Vec<String> {
    fn held(state: Option<&PinState>) -> String {
        match state {
            None => "nothing".into(),
            Some(PinState::Program(p)) => format!("program id {}", p.id),
            Some(PinState::Map(m)) => format!("map id {}", m.id),
            Some(PinState::Other) => "something else".into(),
        }
    }
    fn ids<K: Ord>(m: &BTreeMap<K, Vec<u32>>, k: &K) -> Vec<u32> {
        let mut v = m.get(k).cloned().unwrap_or_default();
        v.sort_unstable();
        v
    }
    let mut out = Vec::new();
    for pin in &q.pins {
        let (b, a) = (before.pins.get(pin), after.pins.get(pin));
        if held(b) != held(a) {
            out.push(format!("{pin} held {} and now holds {}", held(b), held(a)));
        }
    }
    for cg in &q.cgroups {
        let (b, a) = (ids(&before.cgroups, cg), ids(&after.cgroups, cg));
        if b != a {
            out.push(format!(
                "cgroup {cg} had programs {b:?} attached and now {a:?}"
            ));
        }
    }
    for link in &q.map_links {
        let (b, a) = (ids(&before.map_links, link), ids(&after.map_links, link));
        if b != a {
            out.push(format!(
                "map {} had programs {b:?} attached as {} and now {a:?}",
                link.0, link.1
            ));
        }
    }
    for iface in &q.ifaces {
        let (b, a) = (ids(&before.xdp, iface), ids(&after.xdp, iface));
        if b != a {
            out.push(format!(
                "interface {iface} had XDP programs {b:?} and now {a:?}"
            ));
        }
    }
    for dir in &q.dirs {
        let (b, a) = (before.dirs.contains(dir), after.dirs.contains(dir));
        if b != a {
            let was = |x: bool| if x { "existed" } else { "was missing" };
            let now = |x: bool| if x { "exists" } else { "is missing" };
            out.push(format!("{} {} and now {}", dir.display(), was(b), now(a)));
        }
    }
    for pin in &q.dumps {
        fn entries<'o>(
            o: &'o Observed,
            pin: &str,
        ) -> Option<Vec<(&'o [u8], &'o [crate::kernel::look::inspect::Bytes])>> {
            o.contents.get(pin).map(|d| {
                let mut kv: Vec<_> = d
                    .iter()
                    .map(|e| (e.key.as_slice(), e.values.as_slice()))
                    .collect();
                kv.sort_unstable();
                kv
            })
        }
        // A map that is gone, or was not there, is told by its pin.
        if let (Some(b), Some(a)) = (entries(before, pin), entries(after, pin))
            && b != a
        {
            out.push(format!(
                "the entries of {pin} differ ({} before, {} now)",
                b.len(),
                a.len()
            ));
        }
    }
    out
}

/// The connections in the live sockhashes and sockmaps among `maps`.
pub(crate) fn connections(
    kernel: &mut dyn crate::kernel::act::seam::Kernel,
    obs: &Observed,
    maps: &[u32],
) -> Result<Vec<Connection>> {
    let mut q = Query::default();
    q.dump_ids.extend(
        maps.iter()
            .filter(|id| obs.maps.get(id).is_some_and(|m| m.map_type.is_sockmap())),
    );
    if q.dump_ids.is_empty() {
        return Ok(Vec::new());
    }
    let dumps = kernel.observe(&q)?;
    // A sockhash's value, read from user space, is the socket's cookie.
    let cookies: Vec<u64> = dumps
        .contents_by_id
        .values()
        .flatten()
        .filter_map(|e| {
            let v = e.values.first()?;
            Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
        })
        .collect();
    Ok(kernel
        .sockets(&cookies)?
        .into_iter()
        .map(|s| Connection {
            cookie: s.cookie,
            local_port: s.local_port,
            remote_port: s.remote_port,
            rmem_alloc: s.rmem_alloc,
            rcvbuf: s.rcvbuf,
        })
        .collect())
}

/// Look, taking a map's entries from dumps made ahead when they still stand for
/// it (`prefetch`).
pub(crate) fn observe_with(
    q: &Query,
    mut prefetch: Option<&mut super::prefetch::Prefetch>,
) -> Result<Observed> {
    let mut o = Observed::default();
    for pin in &q.pins {
        if let Some(state) = inspect::pinned(pin)? {
            o.pins.insert(pin.clone(), state);
        }
    }
    for cg in &q.cgroups {
        o.cgroups.insert(cg.clone(), inspect::cgroup_prog_ids(cg)?);
    }
    for (pin, kind) in &q.map_links {
        // Only a map can be asked; a missing or foreign pin has no links.
        let is_map = matches!(o.pins.get(pin), Some(PinState::Map(_)));
        let ids = if is_map {
            inspect::map_attached_prog_ids(pin, *kind)?
        } else {
            Vec::new()
        };
        o.map_links.insert((pin.clone(), *kind), ids);
    }
    for iface in &q.ifaces {
        o.xdp.insert(iface.clone(), inspect::xdp_prog_ids(iface)?);
    }
    for id in &q.prog_ids {
        if let Some(p) = inspect::prog_by_id(*id) {
            o.programs.insert(*id, p);
        }
    }
    for id in &q.map_ids {
        if let Some(m) = inspect::map_by_id(*id) {
            o.maps.insert(*id, m);
        }
    }
    for pin in &q.dumps {
        if let Some(PinState::Map(info)) = o.pins.get(pin) {
            let ahead = prefetch.as_deref_mut().and_then(|p| p.take(pin, info.id));
            let entries = match ahead {
                Some(entries) => entries,
                None => inspect::map_dump(pin)?,
            };
            o.contents.insert(pin.clone(), entries);
        }
    }
    if let Some(root) = &q.cgroup_tree {
        o.cgroup_tree = inspect::cgroup_tree(root)?;
    }
    for id in &q.dump_ids {
        if let Some(dump) = inspect::map_dump_id(*id)? {
            o.contents_by_id.insert(*id, dump);
        }
    }
    for dir in &q.dirs {
        if Path::new(dir).is_dir() {
            o.dirs.insert(dir.clone());
        }
    }
    Ok(o)
}
