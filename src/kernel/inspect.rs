//! Reads the live kernel through `bpftool -j` (never scraped from text) and
//! the file system: programs behind pins, their maps, cgroup, sockmap and
//! XDP attachments, map contents. Changes nothing.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::cmd::bpftool_json;
use crate::manifest::model::AttachKind;

/// What `bpftool -j prog show` says of one program (the fields we use).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub tag: String,
    /// The kernel's type name (`sock_ops`, `sk_msg`, ...).
    #[serde(rename = "type", default)]
    pub prog_type: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub map_ids: Vec<u32>,
}

/// What `bpftool -j map show` says of one map (the fields we use).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    /// The kernel's type name (`hash`, `sockhash`, ...).
    #[serde(rename = "type", default)]
    pub map_type: String,
    #[serde(default)]
    pub name: String,
}

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
    if let Ok(p) = bpftool_json::<ProgInfo>(&["prog", "show", "pinned", pin]) {
        return Ok(Some(PinState::Program(p)));
    }
    if let Ok(m) = bpftool_json::<MapInfo>(&["map", "show", "pinned", pin]) {
        return Ok(Some(PinState::Map(m)));
    }
    Ok(Some(PinState::Other))
}

/// The program pinned at `pin`, or `None` when no program is pinned there.
pub fn pinned_prog(pin: &str) -> Result<Option<ProgInfo>> {
    if !Path::new(pin).exists() {
        return Ok(None);
    }
    bpftool_json(&["prog", "show", "pinned", pin]).map(Some)
}

/// The program with this id, if it still exists.
pub fn prog_by_id(id: u32) -> Option<ProgInfo> {
    bpftool_json::<ProgInfo>(&["prog", "show", "id", &id.to_string()]).ok()
}

/// The map with this id, if it still exists.
pub fn map_by_id(id: u32) -> Option<MapInfo> {
    bpftool_json::<MapInfo>(&["map", "show", "id", &id.to_string()]).ok()
}

/// The id of the map named `map` among the maps of the program at `prog_pin`.
pub fn map_id_of(prog_pin: &str, map: &str) -> Result<u32> {
    let prog =
        pinned_prog(prog_pin)?.with_context(|| format!("no program is pinned at {prog_pin}"))?;
    let kernel_name = crate::manifest::model::kernel_name(map);
    for id in &prog.map_ids {
        let info: MapInfo = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        if info.name == kernel_name {
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
/// bpftool 7.1 has no command for this, so it is the one query made with the
/// bpf(2) syscall directly: `BPF_OBJ_GET` on the pin, then `BPF_PROG_QUERY`
/// on the map (kernel 5.19+). A failed `prog detach` does not say whether the
/// program was attached, so teardown and drift checks ask here first.
pub fn map_attached_prog_ids(map_pin: &str, kind: AttachKind) -> Result<Vec<u32>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_PROG_QUERY: libc::c_long = 16;
    let Some(attach_type) = kind.map_attach_type() else {
        bail!("`{kind}` is not a map attach type");
    };
    let path = std::ffi::CString::new(map_pin).context("pin path holds a NUL byte")?;

    // union bpf_attr, BPF_OBJ_* layout: pathname (u64) at 0.
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) reads `attr` (128 bytes, the size passed) and the
    // NUL-terminated path it points to, both alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        bail!("opening the map pinned at {map_pin}: {e}");
    }
    let fd = i32::try_from(fd).context("bpf(2) returned an fd out of range")?;
    // SAFETY: the kernel just returned this fd to us; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    // BPF_PROG_QUERY layout: target_fd (u32) at 0, attach_type (u32) at 4,
    // prog_ids (u64 pointer) at 16, prog_cnt (u32, in/out) at 24.
    let mut ids = [0u32; 64];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    // SAFETY: bpf(2) reads `attr` and writes at most prog_cnt (64) u32 ids
    // into `ids`, both alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        bail!("querying the programs attached to {map_pin}: {e}");
    }
    let mut cnt = [0u8; 4];
    cnt.copy_from_slice(&attr[24..28]);
    let cnt = (u32::from_ne_bytes(cnt) as usize).min(ids.len());
    Ok(ids[..cnt].to_vec())
}

/// One entry of `bpftool -j map dump`: raw key, and the value (one per CPU
/// for per-CPU maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpEntry {
    pub key: Vec<u8>,
    pub values: Vec<Vec<u8>>,
}

/// The entries of the map pinned at `pin`.
pub fn map_dump(pin: &str) -> Result<Vec<DumpEntry>> {
    #[derive(Deserialize)]
    struct Raw {
        key: Vec<String>,
        value: Option<Vec<String>>,
        values: Option<Vec<PerCpu>>,
    }
    #[derive(Deserialize)]
    struct PerCpu {
        value: Vec<String>,
    }
    fn bytes(hex: &[String]) -> Result<Vec<u8>> {
        hex.iter()
            .map(|h| {
                u8::from_str_radix(h.trim_start_matches("0x"), 16)
                    .with_context(|| format!("`{h}` in bpftool's map dump is not a hex byte"))
            })
            .collect()
    }
    let raw: Option<Vec<Raw>> = bpftool_json(&["map", "dump", "pinned", pin])?;
    raw.unwrap_or_default()
        .iter()
        .map(|r| {
            let values = match (&r.value, &r.values) {
                (Some(v), _) => vec![bytes(v)?],
                (None, Some(per_cpu)) => per_cpu
                    .iter()
                    .map(|c| bytes(&c.value))
                    .collect::<Result<_>>()?,
                (None, None) => Vec::new(),
            };
            Ok(DumpEntry {
                key: bytes(&r.key)?,
                values,
            })
        })
        .collect()
}
