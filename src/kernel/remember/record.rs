//! What bpfplan applied, as typed facts: the plan that is deployed, the
//! programs and maps the kernel reported for it, the sources and objects it
//! came from, and any run under way. Kept under /run (it lives as long as the
//! kernel objects do: both are gone after a reboot) next to an append-only
//! journal of the steps a run started, and a lock that keeps two runs of one
//! deployment apart.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::{DEFAULT_BPFFS, HostFacts};
use crate::kernel::remember::trust;
use crate::manifest::model::{MapName, MapPin, ProgName, ProgPin, Staging};
use crate::manifest::validate::{check_cgroup, check_pin};
use crate::plan::step::{AttachPoint, ProgRef, Step};
use crate::plan::{Op, Plan};

/// Where records live unless `BPFPLAN_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/bpfplan";

/// The record's format; a record of another format is not read.
pub const FORMAT_VERSION: u32 = 2;

/// A loaded program as the kernel reported it after apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramFact {
    pub name: ProgName,
    pub pin: ProgPin,
    pub id: u32,
    pub tag: String,
    pub map_ids: Vec<u32>,
}

/// A pinned map as the kernel reported it after apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFact {
    pub name: MapName,
    pub pin: MapPin,
    pub id: u32,
}

/// A file's path and sha256.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileHash {
    pub path: PathBuf,
    pub sha256: String,
}

/// What a completed run left in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The plan that was applied; its `spec` holds the programs, maps,
    /// entries and attachments. Shared with the run that brought it in;
    /// read back without its map entry steps (`plan::recorded`).
    #[serde(deserialize_with = "crate::plan::recorded")]
    pub plan: Arc<Plan>,
    /// The programs loaded, with their kernel ids and tags.
    pub programs: Vec<ProgramFact>,
    /// The maps pinned, with their kernel ids.
    pub maps: Vec<MapFact>,
    /// Each C source (hashed with the headers it read) or prebuilt object.
    pub sources: Vec<FileHash>,
    /// Each object loaded.
    pub objects: Vec<FileHash>,
    /// Pin directories bpfplan created; destroy removes them when empty.
    pub pin_dirs: Vec<PathBuf>,
}

impl Deployed {
    pub fn program(&self, pin: &ProgPin) -> Option<&ProgramFact> {
        self.programs.iter().find(|p| &p.pin == pin)
    }
}

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A first apply.
    Fresh,
    /// New programs staged beside the old ones, then swapped in.
    Replace,
    /// Map entries only.
    Entries,
    /// What drifted put back, nothing reloaded.
    Repair,
}

/// A run under way (or killed): the next run finishes or undoes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub kind: RunKind,
    /// What the run brings in: the record's `deployed` when it completes
    /// (shared with the command's plan, not copied: a million entries;
    /// read back without its map entry steps, `plan::recorded`).
    #[serde(deserialize_with = "crate::plan::recorded")]
    pub plan: Arc<Plan>,
    /// The steps, each with its undo (entry ops packed, `plan::ops`).
    #[serde(with = "crate::plan::ops")]
    pub ops: Vec<Op>,
    /// From this op on the run is past its point of no return: a killed
    /// run is finished, not undone.
    pub commit_at: Option<usize>,
    /// Sources and objects of `plan`.
    pub sources: Vec<FileHash>,
    pub objects: Vec<FileHash>,
    /// Pin directories this run creates.
    pub pin_dirs: Vec<PathBuf>,
}

/// The record of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format_version: u32,
    /// The manifest, as applied.
    pub manifest: PathBuf,
    /// What is deployed; `None` until a first apply completes.
    pub deployed: Option<Deployed>,
    /// A run that has not ended.
    pub run: Option<Run>,
    /// The hash of the last saved plan applied (a saved plan applies once).
    #[serde(default)]
    pub last_plan: Option<String>,
}

impl Record {
    /// Hold every path the record names to the manifest's rules again: a
    /// record is data root acts on (it removes pins, detaches programs), so
    /// a pin outside bpffs or a cgroup outside the cgroup v2 mount makes the
    /// whole record unusable.
    pub fn check_paths(&self, host: &HostFacts) -> Result<(), String> {
        let mut steps: Vec<&Step> = Vec::new();
        let mut specs = Vec::new();
        let mut dirs: Vec<&PathBuf> = Vec::new();
        if let Some(d) = &self.deployed {
            specs.push(&d.plan.spec);
            steps.extend(d.plan.outline());
            dirs.extend(&d.pin_dirs);
        }
        if let Some(r) = &self.run {
            specs.push(&r.plan.spec);
            steps.extend(r.plan.outline());
            steps.extend(
                r.ops
                    .iter()
                    .flat_map(|o| std::iter::once(&o.step).chain(o.undo.as_deref())),
            );
            dirs.extend(&r.pin_dirs);
        }
        let mut pins: Vec<&str> = Vec::new();
        let mut points: Vec<&AttachPoint> = Vec::new();
        for spec in specs {
            pins.extend(spec.programs.iter().map(|p| p.pin.as_str()));
            pins.extend(spec.maps.iter().map(|m| m.pin.as_str()));
            points.extend(spec.attachments.iter().map(|a| &a.point));
        }
        for step in steps {
            match step {
                Step::LoadProgram { pin, reuse, .. } => {
                    pins.push(pin.as_str());
                    pins.extend(reuse.iter().map(|r| r.pin.as_str()));
                }
                Step::PinMap {
                    program_pin, pin, ..
                } => pins.extend([program_pin.as_str(), pin.as_str()]),
                Step::UpdateMapEntry { pin, .. } | Step::DeleteMapEntry { pin, .. } => {
                    pins.push(pin.as_str())
                }
                Step::Attach(a) | Step::Detach(a) => {
                    if let ProgRef::Pinned(p) = &a.prog {
                        pins.push(p.as_str());
                    }
                    points.push(&a.point);
                }
                Step::RenamePin { from, to, .. } => pins.extend([from.as_str(), to.as_str()]),
                Step::PinById { pin, .. } => pins.push(pin.as_str()),
                Step::UnpinProgram { pin, .. } => pins.push(pin.as_str()),
                Step::UnpinMap { pin, .. } => pins.push(pin.as_str()),
                Step::MakePinDir { dir } | Step::RemovePinDir { dir } => dirs.push(dir),
                Step::MountBpffs { dir } if dir.as_path() != Path::new(DEFAULT_BPFFS) => {
                    return Err(format!("it mounts bpffs at {}", dir.display()));
                }
                _ => {}
            }
        }
        // A replace stages and moves aside, and a probe loads, under
        // staging names.
        let base = |pin: &'_ str| -> String { Staging::strip(pin).to_string() };
        // Every entry step names its map's pin again: each pin once.
        pins.sort_unstable();
        pins.dedup();
        for pin in pins {
            check_pin(&base(pin), host).map_err(|k| format!("it names {pin}: {k}"))?;
        }
        for dir in dirs {
            let text = dir.to_string_lossy();
            check_pin(&text, host).map_err(|k| format!("it names the directory {text}: {k}"))?;
        }
        for point in points {
            match point {
                AttachPoint::Cgroup { cgroup, .. } => check_cgroup(cgroup.as_str(), host)
                    .map_err(|why| format!("its cgroup {cgroup} {why}"))?,
                AttachPoint::Map { map_pin, .. } => check_pin(&base(map_pin.as_str()), host)
                    .map_err(|k| format!("it names {map_pin}: {k}"))?,
                AttachPoint::Xdp { iface, .. } => {
                    let ok = (1..=15).contains(&iface.as_str().len())
                        && iface
                            .as_str()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !ok {
                        return Err(format!("it names the interface {:?}", iface.as_str()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the kernel still holds of a deployment once its pins and
/// attachments are gone, as a look found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lingering {
    pub programs: Vec<u32>,
    pub maps: Vec<u32>,
    /// The connections still in a sockhash of it: each holds the programs
    /// (and their maps) until it closes.
    pub connections: Vec<Connection>,
}

/// One connection that holds a deployment's programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub cookie: u64,
    pub local_port: u16,
    pub remote_port: u16,
    /// Bytes charged to its receive side when looked at (what was
    /// redirected to it and not yet read included), and its buffer.
    #[serde(default)]
    pub rmem_alloc: u32,
    #[serde(default)]
    pub rcvbuf: u32,
}

impl Lingering {
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty()
    }

    /// The connections, in words.
    pub fn describe_connections(&self) -> String {
        let mut ports: Vec<String> = self
            .connections
            .iter()
            .map(|c| format!("{}->{}", c.local_port, c.remote_port))
            .collect();
        let n = ports.len();
        if n > 8 {
            ports.truncate(8);
            ports.push("...".into());
        }
        format!("{n} connection(s) (ports {})", ports.join(", "))
    }
}

/// What other deployments' records claim: pins and program ids, with the
/// manifest that claims each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub pins: std::collections::BTreeMap<String, String>,
    pub ids: std::collections::BTreeMap<u32, String>,
    pub map_ids: std::collections::BTreeMap<u32, String>,
}

/// A record as read back, with how far its run got.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: Record,
    /// How many ops of `record.run` were started (from the journal).
    pub started: usize,
}

/// What reading a record found.
#[derive(Debug)]
pub enum Found {
    Missing,
    Ok(Box<Loaded>),
    /// Unreadable, or not trustworthy: the reason.
    Corrupt(String),
}

/// The record, journal and lock of one deployment.
pub struct Store {
    pub path: PathBuf,
    journal_path: PathBuf,
    lock_path: PathBuf,
    /// What the kernel still held of the deployment when destroy or a
    /// replace ended (objects held by connections): status reports it
    /// until it is gone.
    lingering_path: PathBuf,
}

/// The state directory: `BPFPLAN_STATE_DIR` or /run/bpfplan.
pub fn state_dir() -> PathBuf {
    std::env::var_os("BPFPLAN_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The directories a plan pins into.
pub fn pin_dirs(plan: &Plan) -> BTreeSet<PathBuf> {
    let programs = plan.spec.programs.iter().map(|p| p.pin.as_str());
    let maps = plan.spec.maps.iter().map(|m| m.pin.as_str());
    programs
        .chain(maps)
        .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
        .collect()
}

/// The pin directories and every directory above them: what apply makes
/// when missing (each one, parents first, so each is private to root and
/// on record; destroy removes them again, children first).
pub fn pin_dirs_and_parents(plan: &Plan) -> BTreeSet<PathBuf> {
    pin_dirs(plan)
        .iter()
        .flat_map(|d| d.ancestors())
        .filter(|d| d.parent().is_some())
        .map(Path::to_path_buf)
        .collect()
}

impl Store {
    /// The store of a plan's deployment in the state directory. A deployment
    /// is its manifest and the directories it pins into: the same manifest
    /// applied with another `pin_dir` is another one, while adding a program
    /// or renaming a pin changes the same one.
    pub fn for_plan(plan: &Plan) -> Result<Store> {
        Store::in_dir(&state_dir(), plan)
    }

    /// The store of a plan's deployment in a given state directory.
    pub fn in_dir(dir: &Path, plan: &Plan) -> Result<Store> {
        trust::private_dir(dir, "state directory")?;
        let mut key = plan.manifest.as_os_str().as_encoded_bytes().to_vec();
        for d in pin_dirs(plan) {
            key.push(b'\n');
            key.extend_from_slice(d.as_os_str().as_encoded_bytes());
        }
        let digest = crate::util::sha256_hex(&key);
        let stem = plan
            .manifest
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{stem}-{}", &digest[..16]);
        Ok(Store {
            path: dir.join(format!("{name}.json")),
            journal_path: dir.join(format!("{name}.journal")),
            lock_path: dir.join(format!("{name}.lock")),
            lingering_path: dir.join(format!("{name}.lingering.json")),
        })
    }

    /// Other deployments recorded for the same manifest (applied with other
    /// pin directories): apply warns about them, as they stay in place.
    pub fn others(&self, plan: &Plan) -> Vec<Record> {
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p != &self.path && p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| trust::read_private(&p).ok().flatten())
            .filter_map(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .filter(|r| r.manifest == plan.manifest)
            .collect()
    }

    /// What every other deployment's record claims (its pins and ids): a
    /// destroy without a record of its own never removes those.
    pub fn claims(&self) -> Claims {
        let mut c = Claims::default();
        let Some(dir) = self.path.parent() else {
            return c;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return c;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let is_record = path.extension().is_some_and(|x| x == "json")
                && !path.to_string_lossy().ends_with(".lingering.json");
            if path == self.path || !is_record {
                continue;
            }
            // Only what a claim needs is read: a record's plan (a million
            // entries, say) is skipped over, not built.
            #[derive(Deserialize)]
            struct Claimed {
                manifest: PathBuf,
                deployed: Option<ClaimedFacts>,
            }
            #[derive(Deserialize)]
            struct ClaimedFacts {
                programs: Vec<ProgramFact>,
                maps: Vec<MapFact>,
            }
            let Some(record) = trust::read_private(&path)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Claimed>(&b).ok())
            else {
                continue;
            };
            let who = record.manifest.display().to_string();
            for d in record.deployed.iter() {
                for p in &d.programs {
                    c.pins.insert(p.pin.0.clone(), who.clone());
                    c.ids.insert(p.id, who.clone());
                    for id in &p.map_ids {
                        c.map_ids.insert(*id, who.clone());
                    }
                }
                for m in &d.maps {
                    c.pins.insert(m.pin.to_string(), who.clone());
                    c.map_ids.insert(m.id, who.clone());
                }
            }
        }
        c
    }

    /// Read the record and its journal.
    pub fn load(&self) -> Found {
        let bytes = match trust::read_private(&self.path) {
            Ok(None) => return Found::Missing,
            Ok(Some(b)) => b,
            Err(e) => return Found::Corrupt(format!("{e:#}")),
        };
        let record: Record = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return Found::Corrupt(format!("{e}")),
        };
        if record.format_version != FORMAT_VERSION {
            return Found::Corrupt(format!(
                "format version {} (this bpfplan reads {FORMAT_VERSION})",
                record.format_version
            ));
        }
        let host = match HostFacts::read() {
            Ok(h) => h,
            Err(e) => return Found::Corrupt(format!("reading /proc/self/mountinfo: {e}")),
        };
        if let Err(why) = record.check_paths(&host) {
            return Found::Corrupt(format!("it does not hold up: {why}"));
        }
        let started = match self.journal_started() {
            Ok(n) => n,
            Err(e) => return Found::Corrupt(format!("{e:#}")),
        };
        Found::Ok(Box::new(Loaded { record, started }))
    }

    /// How many ops the journal says were started.
    fn journal_started(&self) -> Result<usize> {
        let Some(bytes) = trust::read_private(&self.journal_path)? else {
            return Ok(0);
        };
        // One line per op started: `started N` (1-based). A torn last line
        // (a kill mid-write) counts as not written.
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.strip_prefix("started ")?.trim().parse::<usize>().ok())
            .max()
            .unwrap_or(0))
    }

    /// Write the record (atomically) and start an empty journal for its run.
    pub fn save(&self, record: &Record) -> Result<()> {
        trust::write_private_with(&self.path, |w| {
            serde_json::to_writer(&mut *w, record).context("encoding the record")?;
            Ok(w.write_all(b"\n")?)
        })?;
        self.clear_journal()
    }

    /// Open the journal for appending; each op is noted before it runs.
    pub fn journal(&self) -> Result<Journal> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.journal_path)
            .with_context(|| format!("opening the journal {}", self.journal_path.display()))?;
        Ok(Journal { file })
    }

    fn clear_journal(&self) -> Result<()> {
        remove_if_present(&self.journal_path, "journal")
    }

    /// Note what the kernel still holds (or, when nothing, forget it).
    pub fn save_lingering(&self, l: &Lingering) -> Result<()> {
        if l.is_empty() {
            return remove_if_present(&self.lingering_path, "lingering objects' record");
        }
        let mut bytes = serde_json::to_vec(l).context("encoding the lingering objects")?;
        bytes.push(b'\n');
        trust::write_private(&self.lingering_path, &bytes)
    }

    /// What the kernel still held when destroy or a replace last ended.
    pub fn lingering(&self) -> Option<Lingering> {
        let bytes = trust::read_private(&self.lingering_path).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Remove the record and its journal.
    pub fn remove(&self) -> Result<()> {
        remove_if_present(&self.path, "record")?;
        self.clear_journal()
    }

    /// Move an unreadable record aside (kept for a look, never read again).
    pub fn set_aside(&self) -> Result<PathBuf> {
        let aside = self.path.with_extension(format!(
            "corrupt-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        std::fs::rename(&self.path, &aside)
            .with_context(|| format!("moving {} aside", self.path.display()))?;
        self.clear_journal()?;
        Ok(aside)
    }

    /// Take the deployment's lock, waiting at most `timeout` (`None`: no limit).
    pub fn lock(&self, timeout: Option<Duration>) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.lock_path)
            .with_context(|| format!("opening lock {}", self.lock_path.display()))?;
        let start = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if timeout.is_some_and(|t| start.elapsed() >= t) {
                        bail!(
                            "another bpfplan apply or destroy of this deployment is running \
                             (lock {} held for {:.1}s); try again when it ends",
                            self.lock_path.display(),
                            start.elapsed().as_secs_f64()
                        );
                    }
                    if !told {
                        say!("waiting for another bpfplan run of this deployment to end...");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).context("taking the deployment lock");
                }
            }
        }
    }
}

fn remove_if_present(path: &Path, what: &str) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the {what} {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The append-only journal of a run: one short line per op, before it runs.
/// No fsync: it guards against a killed process, whose writes the page cache
/// keeps; a crash of the machine takes the kernel objects with it.
pub struct Journal {
    file: File,
}

impl Journal {
    /// Note that op `index` (0-based) is about to run.
    pub fn started(&mut self, index: usize) -> Result<()> {
        self.file
            .write_all(format!("started {}\n", index + 1).as_bytes())
            .context("writing the journal")
    }
}
