//! The managed maps of a deployment on record, read on another core while
//! the manifest is read on this one: at a million entries each takes about
//! as long as the other, and until the manifest is read nothing says which
//! record, lock and maps are its own.
//!
//! A prefetched dump stands for a dump made when the command looks, and is
//! used only when nothing bpfplan does can have changed the map between
//! the two:
//! - the map was read holding the deployment's lock shared, so no apply or
//!   destroy of it ran meanwhile (one that holds the lock: no prefetch);
//! - the record then had no run under way (a killed run: no prefetch);
//! - when the command looks, the record is the same file, unchanged (every
//!   run writes the record before its first kernel step), and the pin holds
//!   the same map (its id).
//!
//! Anything else that writes the map (its programs, a hand with bpftool)
//! races a dump made at either moment alike. Each dump is used once: a
//! second look at the kernel reads the map again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::inspect::{self, DumpEntry};
use crate::kernel::remember::{record, trust};

/// A file as stat saw it: a record is replaced by a rename, never written
/// in place, so any new record is another inode or another time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Dumps made ahead, and the record they were made against.
#[derive(Debug, Default)]
pub(crate) struct Prefetch {
    record: PathBuf,
    stamp: Option<Stamp>,
    /// Pin -> the id of the map read there, and its entries (sorted).
    dumps: BTreeMap<String, (u32, Vec<DumpEntry>)>,
}

impl Prefetch {
    /// The dump of the map at `pin` whose id is `id`, if one was made ahead
    /// and still stands for it (taken: used once).
    pub(crate) fn take(&mut self, pin: &str, id: u32) -> Option<Vec<DumpEntry>> {
        if self.dumps.is_empty() || Stamp::of(&self.record) != self.stamp {
            self.dumps.clear();
            return None;
        }
        match self.dumps.remove(pin) {
            Some((read, entries)) if read == id => Some(entries),
            _ => None,
        }
    }
}

/// Start reading, on another thread, the managed maps of the one
/// deployment on record for this manifest (none, or more than one with
/// other pin directories: nothing is read). Never fails: whatever goes
/// wrong, the command reads the maps itself, as it would anyway.
pub(crate) fn start(manifest: &Path) -> Option<JoinHandle<Prefetch>> {
    let manifest = std::fs::canonicalize(manifest).ok()?;
    std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || read(&manifest).unwrap_or_default())
        .ok()
}

/// What of a record the prefetch needs: its manifest, whether a run is
/// under way, and the pins of the maps whose entries it keeps.
#[derive(Deserialize)]
struct Light {
    manifest: PathBuf,
    deployed: Option<LightDeployed>,
    run: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct LightDeployed {
    plan: LightPlan,
}

#[derive(Deserialize)]
struct LightPlan {
    spec: LightSpec,
}

#[derive(Deserialize)]
struct LightSpec {
    maps: Vec<LightMap>,
}

#[derive(Deserialize)]
struct LightMap {
    pin: String,
    entries: Option<IgnoredAny>,
}

fn read(manifest: &Path) -> Option<Prefetch> {
    let dir = record::state_dir();
    // The state directory as every record's reader holds it (root's own, not
    // a link); none yet: nothing is on record.
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    trust::private_dir(&dir, "state directory").ok()?;
    let stem = manifest.file_stem()?.to_string_lossy().into_owned();
    let mut found: Option<(PathBuf, Stamp, Light)> = None;
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(&stem)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".json"))
        else {
            continue;
        };
        // `STEM-HASH.json`, not a lingering record or another manifest's.
        if rest.len() != 16 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let before = Stamp::of(&path)?;
        let bytes = trust::read_private(&path).ok()??;
        let light: Light = serde_json::from_slice(&bytes).ok()?;
        if Stamp::of(&path)? != before {
            return None;
        }
        if light.manifest != manifest {
            continue;
        }
        if found.is_some() {
            // Deployments of this manifest with other pin directories:
            // which one is the command's is known from the manifest only.
            return None;
        }
        found = Some((path, before, light));
    }
    let (path, stamp, light) = found?;
    if light.run.is_some() {
        return None;
    }
    let pins: Vec<String> = light
        .deployed?
        .plan
        .spec
        .maps
        .into_iter()
        .filter(|m| m.entries.is_some())
        .map(|m| m.pin)
        .collect();
    if pins.is_empty() {
        return None;
    }
    // Held shared while the maps are read: no run of this deployment
    // changes them meanwhile. One holds it: nothing is read ahead.
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path.with_extension("lock"))
            .ok()?
    };
    lock.try_lock_shared().ok()?;
    if Stamp::of(&path) != Some(stamp) {
        return None;
    }
    let mut dumps = BTreeMap::new();
    for pin in pins {
        let Ok(Some(inspect::PinState::Map(info))) = inspect::pinned(&pin) else {
            continue;
        };
        let Ok(entries) = inspect::map_dump(&pin) else {
            continue;
        };
        // The pin still holds the map that was read.
        if matches!(inspect::pinned(&pin), Ok(Some(inspect::PinState::Map(i))) if i.id == info.id) {
            dumps.insert(pin, (info.id, entries));
        }
    }
    drop(lock);
    Some(Prefetch {
        record: path,
        stamp: Some(stamp),
        dumps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u8) -> Vec<DumpEntry> {
        vec![DumpEntry {
            key: smallvec::smallvec![n],
            values: smallvec::smallvec![smallvec::smallvec![1]],
        }]
    }

    /// A dump made ahead is used once, for the map it was made of, and not
    /// at all once the record is another file (a run wrote it).
    #[test]
    fn a_dump_made_ahead_stands_only_for_the_same_map_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("m-0123456789abcdef.json");
        std::fs::write(&record, b"{}").unwrap();
        let ahead = |record: &Path| Prefetch {
            record: record.to_path_buf(),
            stamp: Stamp::of(record),
            dumps: [
                ("/a".to_string(), (7, entries(1))),
                ("/b".into(), (8, entries(2))),
            ]
            .into_iter()
            .collect(),
        };
        let mut p = ahead(&record);
        assert_eq!(p.take("/a", 9), None, "another map at the pin");
        assert_eq!(p.take("/a", 7), None, "used once, even when refused");
        assert_eq!(p.take("/b", 8), Some(entries(2)));
        assert_eq!(p.take("/b", 8), None, "used once");
        assert_eq!(p.take("/c", 1), None, "not read ahead");

        // A run writes the record (a new file renamed over it): nothing
        // made ahead is used any more.
        let mut p = ahead(&record);
        let new = dir.path().join(".new");
        std::fs::write(&new, b"{}").unwrap();
        std::fs::rename(&new, &record).unwrap();
        assert_eq!(p.take("/a", 7), None);
        assert!(p.dumps.is_empty());

        // The record removed (destroyed): likewise.
        let mut p = ahead(&record);
        std::fs::remove_file(&record).unwrap();
        assert_eq!(p.take("/b", 8), None);
    }
}
