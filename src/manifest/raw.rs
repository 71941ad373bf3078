//! The raw manifest as serde reads it: every table denies unknown keys, and
//! every value an error may point at keeps its span.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

use super::diag::{Diagnostic, ManifestErrorKind};

pub type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// Variables with their defaults, overridable with `--var NAME=VALUE`.
    #[serde(default)]
    pub vars: Option<Spanned<BTreeMap<S, S>>>,
    #[serde(default, rename = "program")]
    pub programs: Vec<Spanned<RawProgram>>,
    #[serde(default, rename = "map")]
    pub maps: Vec<Spanned<RawMap>>,
    #[serde(default, rename = "attach")]
    pub attachments: Vec<Spanned<RawAttach>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgram {
    /// Our name for the program; by convention the C function's name.
    pub name: S,
    /// C source to compile with clang, relative to the manifest.
    pub source: Option<S>,
    /// A prebuilt BPF object, relative to the manifest.
    pub object: Option<S>,
    /// The program type, as bpftool spells it (`sockops`, `sk_msg`, `cgroup/skb`, ...).
    #[serde(rename = "type")]
    pub prog_type: S,
    /// Where the program is pinned in bpffs.
    pub pin: S,
    /// Pinned maps of this manifest that the object reuses instead of creating.
    #[serde(default)]
    pub maps: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// The map's name in the object (what `bpftool map name X` matches).
    pub name: S,
    /// The program whose object creates the map.
    pub program: S,
    /// Where the map is pinned in bpffs.
    pub pin: S,
    /// How keys of `entries` are encoded: u8, u16, u32, u64 or ip.
    pub key: Option<S>,
    /// How values of `entries` are encoded.
    pub value: Option<S>,
    /// The map's contents, kept exact by apply (absent: not managed).
    pub entries: Option<Spanned<Vec<Spanned<RawEntry>>>>,
    /// Entries destroy writes first, before it detaches anything (a switch
    /// the programs read, so connections that outlive destroy change).
    pub on_destroy: Option<Spanned<Vec<Spanned<RawEntry>>>>,
    /// Names of a counter array's slots, shown by `bpfplan status`.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One declared map entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    pub key: Spanned<Scalar>,
    pub value: Spanned<Scalar>,
}

/// An entry's key or value as written: a number or a string (an address).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttach {
    /// The program to attach.
    pub program: S,
    /// The attach type (`sock_ops`, `msg_verdict`, `xdp`, ...).
    #[serde(rename = "type")]
    pub attach_type: S,
    /// Target: a cgroup v2 directory, or `auto` for the cgroup v2 mount.
    pub cgroup: Option<S>,
    /// Target: a map of this manifest.
    pub map: Option<S>,
    /// Target: a network interface (xdp).
    pub interface: Option<S>,
    /// XDP mode: auto, generic, native or offload.
    pub mode: Option<S>,
}

/// Parse the manifest text; a TOML or schema error becomes one diagnostic.
/// Big `entries` arrays are read from the tokens (`lift`), the rest by
/// serde; when the two do not agree on where an array is, the whole text
/// is read by serde alone.
pub fn parse(text: &str) -> Result<RawManifest, Box<Diagnostic>> {
    let (rest, lifted) = super::lift::lift(text);
    if !lifted.is_empty() {
        let mut raw = from_str(&rest)?;
        if super::lift::restore(&mut raw, lifted).is_some() {
            return Ok(raw);
        }
    }
    from_str(text)
}

fn from_str(text: &str) -> Result<RawManifest, Box<Diagnostic>> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().trim_end().to_string();
        Box::new(Diagnostic::error(
            ManifestErrorKind::Syntax(lowercase_first(&msg)),
            e.span(),
        ))
    })
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if chars.clone().next().is_some_and(|n| n.is_lowercase()) => {
            c.to_lowercase().chain(chars).collect()
        }
        _ => s.to_string(),
    }
}
