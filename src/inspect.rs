//! Reads the live kernel through `bpftool -j` (never scraped from text) and
//! the file system: programs behind pins, their maps, cgroup attachments.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

/// What `bpftool -j prog show` says of one program (the fields we use).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub tag: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub map_ids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
struct MapInfo {
    id: u32,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CgroupAttachment {
    pub id: u32,
    #[serde(default)]
    pub attach_type: String,
}

/// Run `bpftool -j ARGS` and parse its JSON.
pub fn bpftool_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T> {
    let out = duct::cmd("bpftool", std::iter::once("-j").chain(args.iter().copied()))
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "`bpftool -j {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        &b"null"[..]
    } else {
        &out.stdout[..]
    };
    serde_json::from_slice(text)
        .with_context(|| format!("parsing the JSON of `bpftool -j {}`", args.join(" ")))
}

/// The program pinned at `pin`, or `None` when nothing is pinned there.
pub fn pinned_prog(pin: &str) -> Result<Option<ProgInfo>> {
    if !Path::new(pin).exists() {
        return Ok(None);
    }
    bpftool_json(&["prog", "show", "pinned", pin]).map(Some)
}

/// The id of the map named `map` among the maps of the program at `prog_pin`.
pub fn map_id_of(prog_pin: &str, map: &str) -> Result<u32> {
    let prog =
        pinned_prog(prog_pin)?.with_context(|| format!("no program is pinned at {prog_pin}"))?;
    for id in &prog.map_ids {
        let info: MapInfo = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        if info.name == map {
            return Ok(info.id);
        }
    }
    bail!("the program pinned at {prog_pin} uses no map named `{map}`")
}

/// The id of the map pinned at `pin`, or `None` when nothing is pinned there.
pub fn pinned_map_id(pin: &str) -> Result<Option<u32>> {
    if !Path::new(pin).exists() {
        return Ok(None);
    }
    let info: MapInfo = bpftool_json(&["map", "show", "pinned", pin])?;
    Ok(Some(info.id))
}

/// The programs attached to a cgroup (directly, not inherited).
pub fn cgroup_attachments(cgroup: &str) -> Result<Vec<CgroupAttachment>> {
    if !Path::new(cgroup).is_dir() {
        return Ok(Vec::new());
    }
    // bpftool prints nothing at all (not `[]`) for a cgroup with no programs.
    Ok(
        bpftool_json::<Option<Vec<CgroupAttachment>>>(&["cgroup", "show", cgroup])?
            .unwrap_or_default(),
    )
}

/// Whether a program id still exists in the kernel.
pub fn prog_exists(id: u32) -> bool {
    bpftool_json::<ProgInfo>(&["prog", "show", "id", &id.to_string()]).is_ok()
}

/// Whether a map id still exists in the kernel.
pub fn map_exists(id: u32) -> bool {
    bpftool_json::<MapInfo>(&["map", "show", "id", &id.to_string()]).is_ok()
}

/// The id of the XDP program attached to an interface, if any.
pub fn xdp_prog_id(iface: &str) -> Result<Option<u32>> {
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
        return Ok(None);
    }
    let nets: Vec<Net> = bpftool_json(&["net", "show", "dev", iface])?;
    Ok(nets
        .iter()
        .flat_map(|n| &n.xdp)
        .filter(|x| x.devname == iface)
        .find_map(|x| x.id.or_else(|| x.multi_attachments.first().map(|p| p.id))))
}
