//! The build cache and the hashes the record keeps: a compile is skipped
//! when the command and every file clang read (from the `-MD` depfile) are
//! unchanged; sources and objects are hashed so status and apply notice an
//! edit.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::kernel::remember::record::FileHash;
use crate::manifest::model::{KernelMapType, MapShape, ProgType, kernel_name};
use crate::plan::Plan;
use crate::util::{file_sha256, hex};

/// Where bpfplan keeps what it builds: `BPFPLAN_CACHE_DIR`, or
/// /var/cache/bpfplan (root-owned, outlives reboots, unlike /run).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("BPFPLAN_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bpfplan"))
}

/// The build directory of a manifest when `--build-dir` is not given: its
/// own directory in the cache, named by the manifest's canonical path, so
/// neither the working directory nor another manifest changes it.
pub fn default_build_dir(manifest: &Path) -> PathBuf {
    let stem = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = crate::util::sha256_hex(manifest.as_os_str().as_encoded_bytes());
    cache_dir()
        .join("build")
        .join(format!("{stem}-{}", &key[..16]))
}

/// Make sure the build directory is root's own before anything is compiled
/// into it or loaded from it.
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
    crate::kernel::remember::trust::private_dir(dir, "build directory")
}

/// Forget that an object is current (something other than its compile
/// wrote it): the next build compiles it again.
pub(crate) fn unstamp(object: &Path) -> Result<()> {
    match std::fs::remove_file(stamp_path(object)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", stamp_path(object).display()))
        }
        _ => Ok(()),
    }
}

fn stamp_path(object: &Path) -> PathBuf {
    let mut s = object.as_os_str().to_owned();
    s.push(".stamp");
    PathBuf::from(s)
}

/// The hash of the command and of every file clang read (from the depfile
/// `-MD` writes), so a changed header recompiles too. `None` when the
/// depfile is missing or names a file that is gone (then the object is
/// rebuilt).
fn compile_key(argv: &[String], object: &Path) -> Option<String> {
    let deps = std::fs::read_to_string(object.with_extension("d")).ok()?;
    let mut h = Sha256::new();
    for a in argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    for file in parse_depfile(&deps) {
        h.update(file.as_bytes());
        h.update(std::fs::read(&file).ok()?);
    }
    Some(hex(&h.finalize()))
}

/// Whether the object of a compile is current: its inputs match the stamp
/// the last compile left.
pub(crate) fn up_to_date(argv: &[String], object: &Path) -> bool {
    object.is_file()
        && compile_key(argv, object).is_some_and(|key| {
            std::fs::read_to_string(stamp_path(object)).is_ok_and(|s| s.trim() == key)
        })
}

/// The compile steps of a plan whose object is not current: what needs
/// clang (none means apply runs without a compiler).
pub(crate) fn stale_compiles(plan: &Plan) -> Vec<&crate::plan::step::Step> {
    use crate::plan::step::{Arg, Step};
    plan.outline()
        .iter()
        .filter(|s| match s {
            Step::Compile { object, .. } => {
                let argv: Vec<String> = s
                    .argv()
                    .into_iter()
                    .filter_map(|a| match a {
                        Arg::Lit(w) => Some(w),
                        Arg::MapId { .. } => None,
                    })
                    .collect();
                !up_to_date(&argv, object)
            }
            _ => false,
        })
        .collect()
}

/// Record the inputs of a compile that just succeeded.
pub(crate) fn stamp(argv: &[String], object: &Path) -> Result<()> {
    if let Some(key) = compile_key(argv, object) {
        let stamp = stamp_path(object);
        crate::kernel::remember::trust::write_new(&stamp, key.as_bytes())?;
    }
    Ok(())
}

/// What the objects a plan loads are, as built: their hashes, and the
/// maps each defines (from its BTF), by object and map name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Built {
    pub hashes: Vec<FileHash>,
    pub maps: BTreeMap<PathBuf, BTreeMap<String, MapShape>>,
}

impl Built {
    /// The shape an object gives a map, if the object was read.
    pub fn shape(&self, object: &Path, map: &str) -> Option<MapShape> {
        self.maps.get(object)?.get(kernel_name(map)).copied()
    }
}

/// The objects of a plan as built now.
pub(crate) fn built(plan: &Plan) -> Result<Built> {
    let mut maps = BTreeMap::new();
    for p in &plan.spec.programs {
        maps.insert(p.object.clone(), object_maps(&p.object)?);
    }
    Ok(Built {
        hashes: object_hashes(plan)?,
        maps,
    })
}

/// Before any kernel change: every map's entries fit the map as its object
/// defines it (a hash holds at most `max_entries`; an array's keys are below
/// it), or the first that does not is refused, located in the manifest.
pub(crate) fn check_capacity(plan: &Plan, built: &Built) -> Result<()> {
    use crate::manifest::diag::ManifestErrorKind;
    for m in &plan.spec.maps {
        let Some(owner) = plan.spec.programs.iter().find(|p| p.name == m.owner) else {
            continue;
        };
        let Some(shape) = built.shape(&owner.object, m.name.as_str()) else {
            continue;
        };
        let Some(entries) = &m.entries else { continue };
        let max = shape.max_entries;
        let array = shape.map_type.is_array();
        let past = if array {
            entries.iter().position(|e| {
                let mut k = [0u8; 8];
                let n = e.key().len().min(8);
                k[..n].copy_from_slice(&e.key()[..n]);
                u64::from_ne_bytes(k) >= u64::from(max)
            })
        } else {
            (entries.len() > max as usize).then_some(max as usize)
        };
        if let Some(index) = past {
            let kind = ManifestErrorKind::EntriesDoNotFit {
                map: m.name.to_string(),
                max_entries: max,
                found: entries.len(),
                array,
            };
            bail!(
                "{}\nnothing was changed",
                crate::manifest::entry_diagnostic(&plan.manifest, m.name.as_str(), index, kind)
                    .trim_end()
            );
        }
    }
    Ok(())
}

/// The maps an object defines, by the name the kernel keeps, read from its
/// ELF and BTF (`aya-obj`, as libbpf reads them) without loading anything.
pub(crate) fn object_maps(object: &Path) -> Result<BTreeMap<String, MapShape>> {
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let obj = aya_obj::Object::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading the maps of {}", object.display()))?;
    Ok(obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            let shape = MapShape {
                map_type: KernelMapType::from(m.map_type()),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
            };
            (kernel_name(name).to_string(), shape)
        })
        .collect())
}

/// Whether an object can be the object of a program of type `t`: it holds
/// a program of that type (by its ELF section, read with `aya-obj` as
/// libbpf reads it). `None` when it holds no program whose section `aya-obj`
/// knows: bpftool's `type` then decides, and nothing can be told from here.
pub(crate) fn object_holds(object: &Path, t: ProgType) -> Result<Option<bool>> {
    use aya_obj::ProgramSection as S;
    use aya_obj::programs::CgroupSockAttachType as K;
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let obj = aya_obj::Object::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading the programs of {}", object.display()))?;
    if obj.programs.is_empty() {
        return Ok(None);
    }
    let fits = |section: &S| match t {
        ProgType::SockOps => matches!(section, S::SockOps),
        ProgType::SkMsg => matches!(section, S::SkMsg),
        ProgType::SkSkb => matches!(section, S::SkSkbStream { .. }),
        ProgType::Xdp => matches!(section, S::Xdp { .. }),
        ProgType::CgroupSkb => matches!(section, S::CgroupSkb { .. }),
        ProgType::CgroupSock => matches!(
            section,
            S::CgroupSock {
                attach_type: K::SockCreate
            }
        ),
        ProgType::CgroupSockRelease => {
            matches!(
                section,
                S::CgroupSock {
                    attach_type: K::SockRelease
                }
            )
        }
        ProgType::CgroupPostBind4 => {
            matches!(
                section,
                S::CgroupSock {
                    attach_type: K::PostBind4
                }
            )
        }
        ProgType::CgroupPostBind6 => {
            matches!(
                section,
                S::CgroupSock {
                    attach_type: K::PostBind6
                }
            )
        }
        ProgType::CgroupDev => matches!(section, S::CgroupDevice),
        ProgType::CgroupSysctl => matches!(section, S::CgroupSysctl),
        ProgType::CgroupGetsockopt | ProgType::CgroupSetsockopt => {
            matches!(section, S::CgroupSockopt { .. })
        }
        ProgType::CgroupBind4
        | ProgType::CgroupBind6
        | ProgType::CgroupConnect4
        | ProgType::CgroupConnect6
        | ProgType::CgroupSendmsg4
        | ProgType::CgroupSendmsg6
        | ProgType::CgroupRecvmsg4
        | ProgType::CgroupRecvmsg6
        | ProgType::CgroupGetpeername4
        | ProgType::CgroupGetpeername6
        | ProgType::CgroupGetsockname4
        | ProgType::CgroupGetsockname6 => matches!(section, S::CgroupSockAddr { .. }),
    };
    Ok(Some(obj.programs.values().any(|p| fits(&p.section))))
}

/// sha256 of every object the plan loads.
pub(crate) fn object_hashes(plan: &Plan) -> Result<Vec<FileHash>> {
    plan.spec
        .programs
        .iter()
        .map(|p| {
            Ok(FileHash {
                sha256: file_sha256(&p.object)?,
                path: p.object.clone(),
            })
        })
        .collect()
}

/// sha256 of what each program is built from, without building: a C source
/// together with every file its last compile read (the `-MD` depfile next to
/// the object, so headers count), or a prebuilt object.
pub(crate) fn source_hashes(plan: &Plan) -> Result<Vec<FileHash>> {
    let mut out = Vec::new();
    for p in &plan.spec.programs {
        match &p.source {
            Some(source) => {
                let mut h = Sha256::new();
                h.update(
                    std::fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?,
                );
                if let Ok(deps) = std::fs::read_to_string(p.object.with_extension("d")) {
                    for dep in parse_depfile(&deps) {
                        h.update(dep.as_bytes());
                        // A header that vanished counts as a change, not an error.
                        h.update(std::fs::read(&dep).unwrap_or_default());
                    }
                }
                out.push(FileHash {
                    path: source.clone(),
                    sha256: hex(&h.finalize()),
                });
            }
            None => out.push(FileHash {
                path: p.object.clone(),
                sha256: file_sha256(&p.object)?,
            }),
        }
    }
    Ok(out)
}

/// The prerequisites in a make-style depfile (`obj: a.c b.h \`).
pub(crate) fn parse_depfile(text: &str) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depfile() {
        let d = "target/bpf/x.o: bpf/x.c /usr/include/linux/bpf.h \\\n  bpf/my\\ key.h\n";
        assert_eq!(
            parse_depfile(d),
            ["bpf/x.c", "/usr/include/linux/bpf.h", "bpf/my key.h"]
        );
        assert!(parse_depfile("").is_empty());
    }
}
