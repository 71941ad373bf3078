//! What bpfplan applied, kept under /run (it lives as long as the kernel
//! objects do: both are gone after a reboot), and the lock that keeps two
//! applies or destroys of one deployment from running at once.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::plan::Plan;
use crate::step::Step;

/// Where state lives unless `BPFPLAN_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/bpfplan";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Apply is under way, or was killed: `started` steps may have run.
    Applying,
    /// Every step ran.
    Applied,
}

/// A loaded program as the kernel reported it after apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedProgram {
    pub pin: String,
    pub id: u32,
    pub tag: String,
    pub map_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub manifest: PathBuf,
    pub status: Status,
    /// The plan that was (being) applied.
    pub plan: Plan,
    /// How many steps were started; on a killed apply, these are undone.
    pub started: usize,
    /// sha256 of each C source compiled, by path.
    #[serde(default)]
    pub sources: Vec<(PathBuf, String)>,
    /// sha256 of each compiled or prebuilt object, by path.
    pub objects: Vec<(PathBuf, String)>,
    /// Programs loaded, once apply finished.
    pub programs: Vec<LoadedProgram>,
}

impl State {
    /// The steps whose effects may be in the kernel.
    pub fn started_steps(&self) -> &[Step] {
        &self.plan.steps[..self.started.min(self.plan.steps.len())]
    }
}

/// The state file and lock of one deployment.
pub struct Store {
    pub path: PathBuf,
    lock_path: PathBuf,
}

impl Store {
    /// A deployment is identified by its manifest and the pins it owns, so
    /// the same manifest applied with another `pin_dir` is another one.
    pub fn for_plan(plan: &Plan) -> Result<Store> {
        let dir = std::env::var_os("BPFPLAN_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        Store::in_dir(&dir, plan)
    }

    /// The store of a plan's deployment in a given state directory.
    pub fn in_dir(dir: &Path, plan: &Plan) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let manifest = std::fs::canonicalize(&plan.manifest).unwrap_or(plan.manifest.clone());
        let mut pins: Vec<String> = plan.steps.iter().filter_map(step_pin).collect();
        pins.sort();
        let mut h = Sha256::new();
        h.update(manifest.as_os_str().as_encoded_bytes());
        for p in &pins {
            h.update(b"\n");
            h.update(p.as_bytes());
        }
        let digest = hex(&h.finalize());
        let stem = manifest
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{stem}-{}", &digest[..16]);
        Ok(Store {
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
        })
    }

    /// Other deployments recorded for the same manifest (applied with other
    /// pins): apply warns about them, as they stay in place.
    pub fn others(&self, plan: &Plan) -> Vec<State> {
        let manifest = std::fs::canonicalize(&plan.manifest).unwrap_or(plan.manifest.clone());
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
            .filter_map(|p| serde_json::from_slice::<State>(&std::fs::read(p).ok()?).ok())
            .filter(|st| std::fs::canonicalize(&st.manifest).is_ok_and(|m| m == manifest))
            .collect()
    }

    pub fn load(&self) -> Result<Option<State>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading state {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading state {}", self.path.display())),
        }
    }

    /// Write atomically (temp file, fsync, rename): a kill leaves the old or
    /// the new state, never half of one.
    pub fn save(&self, state: &State) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, state)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path)
            .with_context(|| format!("writing state {}", self.path.display()))?;
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing state {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Take the deployment's lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<File> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .with_context(|| format!("opening lock {}", self.lock_path.display()))?;
        let start = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if start.elapsed() >= timeout {
                        bail!(
                            "another bpfplan apply or destroy of this deployment is running \
                             (lock {} held for {:.1}s); try again when it ends",
                            self.lock_path.display(),
                            start.elapsed().as_secs_f64()
                        );
                    }
                    if !told {
                        eprintln!("waiting for another bpfplan run of this deployment to end...");
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

fn step_pin(step: &Step) -> Option<String> {
    match step {
        Step::LoadProgram { pin, .. } => Some(pin.0.clone()),
        Step::PinMap { pin, .. } => Some(pin.0.clone()),
        _ => None,
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// sha256 of the files some steps name.
fn hashes(plan: &Plan, pick: impl Fn(&Step) -> Option<&PathBuf>) -> Result<Vec<(PathBuf, String)>> {
    plan.steps
        .iter()
        .filter_map(pick)
        .map(|f| Ok((f.clone(), file_sha256(f)?)))
        .collect()
}

/// sha256 of every object the plan loads.
pub fn object_hashes(plan: &Plan) -> Result<Vec<(PathBuf, String)>> {
    hashes(plan, |s| match s {
        Step::LoadProgram { object, .. } => Some(object),
        _ => None,
    })
}

/// sha256 of what each program is built from, without building: a C source
/// together with every file its last compile read (the `-MD` depfile next to
/// the object, so headers count), or a prebuilt object.
pub fn source_hashes(plan: &Plan) -> Result<Vec<(PathBuf, String)>> {
    let compiled: Vec<&PathBuf> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Compile { object, .. } => Some(object),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for step in &plan.steps {
        match step {
            Step::Compile { source, object, .. } => {
                let mut h = Sha256::new();
                h.update(
                    std::fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?,
                );
                if let Ok(deps) = std::fs::read_to_string(object.with_extension("d")) {
                    for dep in parse_depfile(&deps) {
                        h.update(dep.as_bytes());
                        // A header that vanished counts as a change, not an error.
                        h.update(std::fs::read(&dep).unwrap_or_default());
                    }
                }
                out.push((source.clone(), hex(&h.finalize())));
            }
            Step::LoadProgram { object, .. } if !compiled.contains(&object) => {
                out.push((object.clone(), file_sha256(object)?));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The prerequisites in a make-style depfile (`obj: a.c b.h \`).
pub fn parse_depfile(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    let rest = joined.split_once(": ").map_or("", |(_, r)| r);
    let mut files = Vec::new();
    let mut cur = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    files.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        files.push(cur);
    }
    files
}
