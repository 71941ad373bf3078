//! Reads the live kernel: what sits behind a pin or an id (bpf(2), in
//! `sys`), cgroup, sockmap and XDP attachments and map contents (`bpftool
//! -j`, never scraped from text). Changes nothing.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::kernel::act::cmd::bpftool_json;
use crate::kernel::look::sys;
use crate::manifest::model::AttachKind;

pub use crate::kernel::look::sys::{MapInfo, ProgInfo};

#[derive(Debug, Clone, Deserialize)]
struct CgroupAttachment {
    id: u32,
}

/// What a pin holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinState {
    Program(ProgInfo),
    Map(MapInfo),
    /// A directory, or something bpftool cannot read.
    Other,
}

/// What is pinned at `pin`, or `None` when nothing is.
pub fn pinned(pin: &str) -> Result<Option<PinState>> {
    let path = Path::new(pin);
    match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {pin}")),
        Ok(m) if !m.file_type().is_file() => return Ok(Some(PinState::Other)),
        Ok(_) => {}
    }
    let fd = match sys::obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Ok(Some(PinState::Other)),
    };
    Ok(Some(match sys::kind(&fd) {
        sys::Kind::Prog => PinState::Program(sys::prog_info(&fd)?),
        sys::Kind::Map => PinState::Map(sys::map_info(&fd)?),
        sys::Kind::Other => PinState::Other,
    }))
}

/// The program pinned at `pin`, or `None` when no program is pinned there.
pub fn pinned_prog(pin: &str) -> Result<Option<ProgInfo>> {
    Ok(match pinned(pin)? {
        Some(PinState::Program(p)) => Some(p),
        _ => None,
    })
}

/// The map pinned at `pin`, or `None` when no map is pinned there.
pub fn pinned_map(pin: &str) -> Result<Option<MapInfo>> {
    Ok(match pinned(pin)? {
        Some(PinState::Map(m)) => Some(m),
        _ => None,
    })
}

/// The program with this id, if it still exists.
pub fn prog_by_id(id: u32) -> Option<ProgInfo> {
    sys::prog_by_id(id)
}

/// The map with this id, if it still exists.
pub fn map_by_id(id: u32) -> Option<MapInfo> {
    sys::map_by_id(id)
}

/// The id of the map named `map` among the maps of the program at `prog_pin`.
pub fn map_id_of(prog_pin: &str, map: &str) -> Result<u32> {
    let prog =
        pinned_prog(prog_pin)?.with_context(|| format!("no program is pinned at {prog_pin}"))?;
    let kernel_name = crate::manifest::model::kernel_name(map);
    for id in &prog.map_ids {
        if let Some(info) = map_by_id(*id)
            && info.name == kernel_name
        {
            return Ok(info.id);
        }
    }
    bail!("the program pinned at {prog_pin} uses no map named `{map}`")
}

/// The ids of the programs attached to a cgroup (directly, not inherited).
pub fn cgroup_prog_ids(cgroup: &str) -> Result<Vec<u32>> {
    if !Path::new(cgroup).is_dir() {
        return Ok(Vec::new());
    }
    // bpftool prints nothing at all (not `[]`) for a cgroup with no programs.
    Ok(
        bpftool_json::<Option<Vec<CgroupAttachment>>>(&["cgroup", "show", cgroup])?
            .unwrap_or_default()
            .iter()
            .map(|a| a.id)
            .collect(),
    )
}

/// Every cgroup under `root` with programs attached, and each program's id
/// (`bpftool -j cgroup tree`).
pub fn cgroup_tree(root: &Path) -> Result<Vec<(String, u32)>> {
    #[derive(Deserialize)]
    struct Node {
        cgroup: String,
        #[serde(default)]
        programs: Vec<CgroupAttachment>,
    }
    let root = root.to_string_lossy();
    let nodes: Option<Vec<Node>> = bpftool_json(&["cgroup", "tree", &root])?;
    Ok(nodes
        .unwrap_or_default()
        .into_iter()
        .flat_map(|n| {
            let cg = n.cgroup;
            n.programs.into_iter().map(move |p| (cg.clone(), p.id))
        })
        .collect())
}

/// The ids of the XDP programs attached to an interface (in any mode).
pub fn xdp_prog_ids(iface: &str) -> Result<Vec<u32>> {
    #[derive(Deserialize)]
    struct Net {
        #[serde(default)]
        xdp: Vec<XdpEntry>,
    }
    #[derive(Deserialize)]
    struct XdpEntry {
        #[serde(default)]
        devname: String,
        #[serde(default)]
        multi_attachments: Vec<XdpProg>,
        id: Option<u32>,
    }
    #[derive(Deserialize)]
    struct XdpProg {
        id: u32,
    }
    if !Path::new("/sys/class/net").join(iface).exists() {
        return Ok(Vec::new());
    }
    let nets: Option<Vec<Net>> = bpftool_json(&["net", "show", "dev", iface])?;
    Ok(nets
        .unwrap_or_default()
        .iter()
        .flat_map(|n| &n.xdp)
        .filter(|x| x.devname == iface)
        .flat_map(|x| {
            x.id.into_iter()
                .chain(x.multi_attachments.iter().map(|p| p.id))
        })
        .collect())
}

/// The ids of the programs attached to a sockmap or sockhash as `kind`.
///
/// bpftool 7.1 has no command for this: `BPF_OBJ_GET` on the pin, then
/// `BPF_PROG_QUERY` on the map (kernel 5.19+). A failed `prog detach` does
/// not say whether the program was attached, so teardown and drift checks
/// ask here first.
pub fn map_attached_prog_ids(map_pin: &str, kind: AttachKind) -> Result<Vec<u32>> {
    let Some(attach_type) = kind.map_attach_type() else {
        bail!("`{kind}` is not a map attach type");
    };
    let fd =
        sys::obj_get(map_pin).with_context(|| format!("opening the map pinned at {map_pin}"))?;
    sys::query(&fd, attach_type, map_pin)
}

/// One entry of `bpftool -j map dump`: raw key, and the value (one per CPU
/// for per-CPU maps).
/// Held inline up to 16 bytes each (no allocation for the keys and values
/// of a blocklist of a million entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpEntry {
    pub key: Bytes,
    pub values: smallvec::SmallVec<[Bytes; 1]>,
}

impl DumpEntry {
    /// An entry with one value (a map that is not per-CPU).
    pub fn one(key: &[u8], value: &[u8]) -> DumpEntry {
        DumpEntry {
            key: Bytes::from_slice(key),
            values: smallvec::smallvec![Bytes::from_slice(value)],
        }
    }

    /// The value on the first CPU (the only one, unless per-CPU).
    pub fn first(&self) -> &[u8] {
        self.values.first().map_or(&[][..], |v| v.as_slice())
    }
}

/// A key or value as the kernel returned it.
pub type Bytes = smallvec::SmallVec<[u8; 16]>;

/// Bytes from bpftool's `["0x01", "0xab"]`, parsed without an allocation
/// per byte (a 100,000-entry dump has half a million of them).
struct HexBytes(Vec<u8>);

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HexBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of hex bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<HexBytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
                while let Some(h) = seq.next_element::<&'de str>()? {
                    let b = u8::from_str_radix(h.trim_start_matches("0x"), 16).map_err(|_| {
                        serde::de::Error::custom(format!("`{h}` is not a hex byte"))
                    })?;
                    out.push(b);
                }
                Ok(HexBytes(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The entries of the map pinned at `pin`: read in batches with bpf(2)
/// when the map type allows, else from `bpftool -j map dump`.
pub fn map_dump(pin: &str) -> Result<Vec<DumpEntry>> {
    let fd = sys::obj_get(pin).with_context(|| format!("opening the map pinned at {pin}"))?;
    dump_fd(&fd, &["pinned", pin])
}

/// The entries of the map with this id (one no pin names any more), if it
/// still exists.
pub fn map_dump_id(id: u32) -> Result<Option<Vec<DumpEntry>>> {
    let Some(fd) = sys::map_fd_by_id(id) else {
        return Ok(None);
    };
    dump_fd(&fd, &["id", &id.to_string()]).map(Some)
}

fn dump_fd(fd: &std::os::fd::OwnedFd, words: &[&str]) -> Result<Vec<DumpEntry>> {
    let per_cpu = sys::map_info(fd)?.map_type.per_cpu();
    let mut entries = match sys::map_entries(fd, per_cpu)? {
        Some(entries) => entries
            .into_iter()
            .map(|(key, values)| DumpEntry { key, values })
            .collect(),
        None => bpftool_dump(words)?,
    };
    // In key order, not the kernel's hash order: what is read from a dump
    // is the same whichever way the map was read, and comparing it with the
    // manifest is a walk (decide::diff), not a sort, each time.
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(entries)
}

/// The entries of a map (`pinned PIN` or `id ID`), as `bpftool -j map
/// dump` says.
fn bpftool_dump(words: &[&str]) -> Result<Vec<DumpEntry>> {
    #[derive(Deserialize)]
    struct Raw {
        key: HexBytes,
        value: Option<HexBytes>,
        values: Option<Vec<PerCpu>>,
    }
    #[derive(Deserialize)]
    struct PerCpu {
        value: HexBytes,
    }
    let argv: Vec<String> = ["bpftool", "-j", "map", "dump"]
        .iter()
        .chain(words)
        .map(|s| s.to_string())
        .collect();
    let out = crate::kernel::act::cmd::run_checked(&argv, None)?;
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let raw: Vec<Raw> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "parsing the JSON of `bpftool -j map dump {}`",
            words.join(" ")
        )
    })?;
    Ok(raw
        .into_iter()
        .map(|r| DumpEntry {
            key: r.key.0.into(),
            values: match (r.value, r.values) {
                (Some(v), _) => smallvec::smallvec![v.0.into()],
                (None, Some(per_cpu)) => per_cpu.into_iter().map(|c| c.value.0.into()).collect(),
                (None, None) => smallvec::SmallVec::new(),
            },
        })
        .collect())
}
