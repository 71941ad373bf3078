//! Saved plans: `plan --out FILE` writes what was reviewed (the plan, the
//! variables, the deployment, the compiled objects as content-addressed
//! copies with their hashes, and a fingerprint of what the kernel held for
//! this deployment); `apply --plan FILE` runs exactly that, or refuses as
//! stale when the kernel or the record changed since.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kernel::look::inspect::PinState;
use crate::kernel::look::observe::Observed;
use crate::kernel::remember::record::{FileHash, Loaded};
use crate::kernel::remember::trust;
use crate::manifest::model::ProgName;
use crate::plan::{Plan, Review};
use crate::util::{file_sha256, sha256_hex};

/// The saved plan's format.
pub const SAVED_FORMAT_VERSION: u32 = 1;
const KIND: &str = "bpfplan-saved-plan";

/// An object as it was reviewed: where the plan loads it from, its hash,
/// and the copy bpfplan keeps under that hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedObject {
    pub program: ProgName,
    pub path: PathBuf,
    pub sha256: String,
    pub kept: PathBuf,
}

/// What `plan --out` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub kind: String,
    /// When it was made (RFC 3339).
    pub created: String,
    pub manifest: PathBuf,
    /// The `--var`s it was made with.
    pub vars: Vec<(String, String)>,
    /// The deployment's record name.
    pub deployment: String,
    /// Shared with the command that made it, not copied. Read back
    /// without its entry steps (`plan::recorded`): the reader checks it
    /// against the plan its manifest makes today and goes on with that one.
    #[serde(deserialize_with = "crate::plan::recorded")]
    pub plan: std::sync::Arc<Plan>,
    pub objects: Vec<SavedObject>,
    /// The sources the objects were built from.
    pub sources: Vec<FileHash>,
    /// What apply would run, as the kernel stood.
    pub review: Review,
    /// What the kernel held for this deployment, and the record.
    pub observed: BTreeMap<String, String>,
    /// sha256 of `observed`.
    pub fingerprint: String,
}

/// Where kept objects live: `<cache>/objects/<sha256>.o`.
fn objects_dir() -> PathBuf {
    crate::kernel::remember::build::cache_dir().join("objects")
}

/// Keep a copy of an object under its hash (root's own directory).
pub(crate) fn keep(path: &Path) -> Result<(String, PathBuf)> {
    let dir = objects_dir();
    trust::private_dir(&dir, "object store")?;
    let sha = file_sha256(path)?;
    let kept = dir.join(format!("{sha}.o"));
    if file_sha256(&kept).ok().as_deref() != Some(&sha) {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        trust::write_private(&kept, &bytes)?;
    }
    Ok((sha, kept))
}

/// A kept object still has the hash it was reviewed with.
fn still_reviewed(o: &SavedObject) -> Result<()> {
    let sha = file_sha256(&o.kept).with_context(|| {
        format!(
            "the reviewed object of `{}` ({}) is gone: make the plan again",
            o.program,
            o.kept.display()
        )
    })?;
    if sha != o.sha256 {
        bail!(
            "the reviewed object of `{}` ({}) no longer has the hash the plan holds: make the \
             plan again",
            o.program,
            o.kept.display()
        );
    }
    Ok(())
}

/// Put the reviewed objects where the plan loads them from, after checking
/// each kept copy still has its hash.
pub(crate) fn install(objects: &[SavedObject]) -> Result<()> {
    for o in objects {
        still_reviewed(o)?;
        let dir = o.path.parent().context("an object without a directory")?;
        crate::kernel::remember::build::check_dir(dir)?;
        let bytes = std::fs::read(&o.kept)?;
        // The build cache must not take the reviewed object for the compile
        // of today's source.
        crate::kernel::remember::build::unstamp(&o.path)?;
        trust::write_private(&o.path, &bytes)?;
    }
    Ok(())
}

/// What the kernel holds for a deployment, and what bpfplan recorded, as
/// text by key: the fingerprint hashes it, and two of them diff into what
/// changed. Counters and sockhash contents are left out (they change all
/// the time); declared map entries are in.
pub(crate) fn snapshot(obs: &Observed, loaded: Option<&Loaded>) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    for (pin, state) in &obs.pins {
        let v = match state {
            PinState::Program(p) => format!(
                "program id {} ({}, `{}`, tag {})",
                p.id, p.prog_type, p.name, p.tag
            ),
            PinState::Map(m) => format!("map id {} ({}, `{}`)", m.id, m.map_type, m.name),
            PinState::Other => "something else".into(),
        };
        s.insert(format!("pin {pin}"), v);
    }
    for (cg, ids) in &obs.cgroups {
        s.insert(format!("cgroup {cg}"), format!("programs {ids:?}"));
    }
    for ((pin, kind), ids) in &obs.map_links {
        s.insert(format!("map {pin} ({kind})"), format!("programs {ids:?}"));
    }
    for (iface, ids) in &obs.xdp {
        s.insert(
            format!("interface {iface}"),
            format!("XDP programs {ids:?}"),
        );
    }
    for (pin, dump) in &obs.contents {
        let mut entries: Vec<String> = dump
            .iter()
            .map(|e| {
                let v = e
                    .values
                    .first()
                    .map_or(String::new(), |v| crate::util::hex(v));
                format!("{}={v}", crate::util::hex(&e.key))
            })
            .collect();
        entries.sort();
        s.insert(
            format!("entries {pin}"),
            format!(
                "{} entries, sha256 {}",
                entries.len(),
                &sha256_hex(entries.join(",").as_bytes())[..16]
            ),
        );
    }
    for dir in &obs.dirs {
        s.insert(format!("directory {}", dir.display()), "exists".into());
    }
    let record = match loaded {
        None => "none".to_string(),
        Some(l) => match serde_json::to_vec(&l.record) {
            Ok(bytes) => format!("sha256 {}", &sha256_hex(&bytes)[..16]),
            Err(_) => "unreadable".into(),
        },
    };
    s.insert("record".into(), record);
    s
}

/// sha256 of a snapshot.
pub(crate) fn fingerprint(snapshot: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (k, v) in snapshot {
        text.push_str(k);
        text.push('\t');
        text.push_str(v);
        text.push('\n');
    }
    sha256_hex(text.as_bytes())
}

/// What differs between the snapshot a plan was made on and now.
pub(crate) fn changes(
    then: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (then.get(k), now.get(k)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(a), Some(b)) => Some(format!("{k}: was {a}, is {b}")),
            (Some(a), None) => Some(format!("{k}: was {a}, is gone")),
            (None, Some(b)) => Some(format!("{k}: was not there, is {b}")),
            (None, None) => None,
        })
        .collect()
}

/// Read a saved plan, holding every path in it to the manifest's rules.
/// Root runs what the file says verbatim, so it must be root's own (not a
/// symlink, not writable by group or others, stricter than a manifest,
/// which is planned again), in directories no one else can write; that it
/// is what its manifest
/// plans is checked by the caller, which can plan.
pub fn read(path: &Path) -> Result<(SavedPlan, String)> {
    let bytes = trust::read_private(path)
        .with_context(|| format!("reading the saved plan {}", path.display()))?
        .with_context(|| format!("the saved plan {} does not exist", path.display()))?;
    // Root's own file, and no directory above it lets another swap it.
    trust::input_path(path, "saved plan")?;
    let saved: SavedPlan = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a saved bpfplan plan", path.display()))?;
    if saved.kind != KIND || saved.format_version != SAVED_FORMAT_VERSION {
        bail!(
            "{} is a {} of format {}; this bpfplan reads {KIND} format {SAVED_FORMAT_VERSION}",
            path.display(),
            saved.kind,
            saved.format_version
        );
    }
    let host = crate::host::HostFacts::read().context("reading /proc/self/mountinfo")?;
    let record = crate::kernel::remember::record::Record {
        format_version: crate::kernel::remember::record::FORMAT_VERSION,
        manifest: saved.manifest.clone(),
        deployed: None,
        run: Some(crate::kernel::remember::record::Run {
            kind: crate::kernel::remember::record::RunKind::Fresh,
            plan: saved.plan.clone(),
            ops: Vec::new(),
            commit_at: None,
            sources: Vec::new(),
            objects: Vec::new(),
            pin_dirs: Vec::new(),
        }),
        last_plan: None,
    };
    record
        .check_paths(&host)
        .map_err(|why| anyhow::anyhow!("{} does not hold up: {why}", path.display()))?;
    // One reviewed object per program, loaded from where the plan says.
    let programs = &saved.plan.spec.programs;
    let matches = saved.objects.len() == programs.len()
        && programs.iter().all(|p| {
            saved
                .objects
                .iter()
                .any(|o| o.program == p.name && o.path == p.object)
        });
    if !matches {
        bail!(
            "{}: its objects are not the objects its plan loads",
            path.display()
        );
    }
    for p in programs {
        if let Some(o) = saved.objects.iter().find(|o| o.program == p.name) {
            check_object(o, p.prog_type)
                .with_context(|| format!("{} does not hold up", path.display()))?;
        }
    }
    Ok((saved, sha256_hex(&bytes)))
}

/// One reviewed object, checked on its own: kept in bpfplan's object store
/// under its hash, still of that hash, and a program of the type its
/// program loads as (objects swapped between programs are caught here, not
/// when a load fails).
fn check_object(o: &SavedObject, prog_type: crate::manifest::model::ProgType) -> Result<()> {
    let store = objects_dir();
    let name = format!("{}.o", o.sha256);
    if o.kept.parent() != Some(store.as_path())
        || o.kept.file_name() != Some(std::ffi::OsStr::new(&name))
    {
        bail!(
            "the object of `{}` is not kept as {name} in bpfplan's object store {}",
            o.program,
            store.display()
        );
    }
    still_reviewed(o)?;
    if crate::kernel::remember::build::object_holds(&o.kept, prog_type)? == Some(false) {
        bail!(
            "the reviewed object of `{}` ({}) holds no {prog_type} program, and `{}` loads as \
             {prog_type}: the objects were swapped or replaced",
            o.program,
            o.kept.display(),
            o.program
        );
    }
    Ok(())
}

/// Build a saved plan.
pub(crate) fn new(
    plan: &std::sync::Arc<Plan>,
    vars: &[(String, String)],
    deployment: String,
    objects: Vec<SavedObject>,
    sources: Vec<FileHash>,
    review: Review,
    observed: BTreeMap<String, String>,
) -> SavedPlan {
    SavedPlan {
        format_version: SAVED_FORMAT_VERSION,
        kind: KIND.into(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        manifest: plan.manifest.clone(),
        vars: vars.to_vec(),
        deployment,
        plan: plan.clone(),
        objects,
        sources,
        review,
        fingerprint: fingerprint(&observed),
        observed,
    }
}
