//! The instruction set of a plan. A step is data that says what to do; it
//! gives the exact command (`argv`) and the step that reverses it (`undo`).
//! The sh renderer and the executor both use `argv`, so what a reviewer reads
//! is exactly what runs.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::model::{CgroupPath, Entry, IfaceName, MapName, MapPin, ProgName, ProgPin, XdpMode};

/// One word of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Arg {
    /// A literal word.
    Lit(String),
    /// The id of the map named `map` among the maps the program pinned at
    /// `program_pin` uses; known only once that program is loaded.
    MapId { program_pin: ProgPin, map: MapName },
}

impl Arg {
    fn lit(s: impl Into<String>) -> Arg {
        Arg::Lit(s.into())
    }

    fn path(p: &std::path::Path) -> Arg {
        Arg::Lit(p.display().to_string())
    }
}

/// A reused map: the object's map `name` is replaced by the map pinned at `pin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReusedMap {
    /// The map's name in the object.
    pub name: MapName,
    /// Where the map to reuse is pinned.
    pub pin: MapPin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Create the directory that compiled objects go to.
    MakeBuildDir {
        /// The build directory.
        dir: PathBuf,
    },
    /// Compile a program's C source into a BPF object.
    Compile {
        /// The program the object is for.
        program: ProgName,
        /// The C source.
        source: PathBuf,
        /// The object written.
        object: PathBuf,
        /// Extra include directories (the host's multiarch headers).
        include: Vec<PathBuf>,
    },
    /// Load a program from its object and pin it.
    LoadProgram {
        /// The program.
        program: ProgName,
        /// The BPF object to load.
        object: PathBuf,
        /// bpftool's program type.
        prog_type: String,
        /// Where the program is pinned.
        pin: ProgPin,
        /// Maps taken from their pins instead of created.
        reuse: Vec<ReusedMap>,
    },
    /// Pin a map that a loaded program's object created.
    PinMap {
        /// The map's name in the object.
        map: MapName,
        /// The pinned program whose maps are searched.
        program_pin: ProgPin,
        /// Where the map is pinned.
        pin: MapPin,
        /// Apply keeps this map's contents exactly as the manifest lists them.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        managed: bool,
        /// Names of a counter array's slots, for `bpfplan status`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
    },
    /// Write one declared entry into a pinned map.
    UpdateMapEntry {
        /// The map.
        map: MapName,
        /// Where the map is pinned.
        pin: MapPin,
        /// The entry.
        entry: Entry,
    },
    /// Remove one entry from a pinned map.
    DeleteMapEntry {
        /// The map.
        map: MapName,
        /// Where the map is pinned.
        pin: MapPin,
        /// The entry (its key is what is removed).
        entry: Entry,
    },
    /// Attach a program to a map (sockmap/sockhash verdict or parser).
    AttachMap {
        /// The program.
        program: ProgName,
        /// Where the program is pinned.
        program_pin: ProgPin,
        /// The map.
        map: MapName,
        /// Where the map is pinned.
        map_pin: MapPin,
        /// The attach type (`msg_verdict`, ...).
        kind: String,
    },
    /// Attach a program to a cgroup, alongside any programs already there.
    AttachCgroup {
        /// The program.
        program: ProgName,
        /// Where the program is pinned.
        program_pin: ProgPin,
        /// The cgroup v2 directory.
        cgroup: CgroupPath,
        /// The attach type (`sock_ops`, `egress`, ...).
        kind: String,
    },
    /// Attach an XDP program to an interface.
    AttachXdp {
        /// The program.
        program: ProgName,
        /// Where the program is pinned.
        program_pin: ProgPin,
        /// The interface.
        iface: IfaceName,
        /// The XDP mode.
        mode: XdpMode,
    },
    /// Detach a program from a cgroup.
    DetachCgroup {
        /// The program.
        program: ProgName,
        /// Where the program is pinned.
        program_pin: ProgPin,
        /// The cgroup v2 directory.
        cgroup: CgroupPath,
        /// The attach type.
        kind: String,
    },
    /// Detach a program from a map.
    DetachMap {
        /// The program.
        program: ProgName,
        /// Where the program is pinned.
        program_pin: ProgPin,
        /// The map.
        map: MapName,
        /// Where the map is pinned.
        map_pin: MapPin,
        /// The attach type.
        kind: String,
    },
    /// Detach the XDP program of an interface.
    DetachXdp {
        /// The program.
        program: ProgName,
        /// Where the program is pinned (only that program is detached).
        program_pin: ProgPin,
        /// The interface.
        iface: IfaceName,
        /// The XDP mode it was attached in.
        mode: XdpMode,
    },
    /// Remove a program's pin; the kernel frees it with its last reference.
    UnpinProgram {
        /// The program.
        program: ProgName,
        /// The pin to remove.
        pin: ProgPin,
    },
    /// Remove a map's pin; the kernel frees it with its last reference.
    UnpinMap {
        /// The map.
        map: MapName,
        /// The pin to remove.
        pin: MapPin,
    },
}

/// Flags every compile gets: optimised (the verifier needs it), with BTF
/// (`-g`) so libbpf can read `.maps`, and a depfile (`-MD`, next to the
/// object) so a changed header is noticed by the build cache.
pub const CLANG_FLAGS: &[&str] = &["-O2", "-g", "-Wall", "-MD", "-target", "bpf"];

impl Step {
    /// The exact command this step runs.
    pub fn argv(&self) -> Vec<Arg> {
        use Step::*;
        let bpftool = |words: &[&str]| -> Vec<Arg> { words.iter().map(|w| Arg::lit(*w)).collect() };
        match self {
            MakeBuildDir { dir } => vec![Arg::lit("mkdir"), Arg::lit("-p"), Arg::path(dir)],
            Compile {
                source,
                object,
                include,
                ..
            } => {
                let mut argv = vec![Arg::lit("clang")];
                argv.extend(CLANG_FLAGS.iter().map(|f| Arg::lit(*f)));
                argv.extend(
                    include
                        .iter()
                        .map(|i| Arg::lit(format!("-I{}", i.display()))),
                );
                argv.extend([
                    Arg::lit("-c"),
                    Arg::path(source),
                    Arg::lit("-o"),
                    Arg::path(object),
                ]);
                argv
            }
            LoadProgram {
                object,
                prog_type,
                pin,
                reuse,
                ..
            } => {
                let mut argv = bpftool(&["bpftool", "prog", "load"]);
                argv.extend([
                    Arg::path(object),
                    Arg::lit(pin.as_str()),
                    Arg::lit("type"),
                    Arg::lit(prog_type),
                ]);
                for m in reuse {
                    argv.extend([
                        Arg::lit("map"),
                        Arg::lit("name"),
                        Arg::lit(m.name.as_str()),
                        Arg::lit("pinned"),
                        Arg::lit(m.pin.as_str()),
                    ]);
                }
                argv
            }
            PinMap {
                map,
                program_pin,
                pin,
                ..
            } => {
                let mut argv = bpftool(&["bpftool", "map", "pin", "id"]);
                argv.push(Arg::MapId {
                    program_pin: program_pin.clone(),
                    map: map.clone(),
                });
                argv.push(Arg::lit(pin.as_str()));
                argv
            }
            UpdateMapEntry { pin, entry, .. } | DeleteMapEntry { pin, entry, .. } => {
                let update = matches!(self, UpdateMapEntry { .. });
                let verb = if update { "update" } else { "delete" };
                let mut argv = bpftool(&["bpftool", "map", verb, "pinned"]);
                argv.extend([Arg::lit(pin.as_str()), Arg::lit("key"), Arg::lit("hex")]);
                argv.extend(entry.key.iter().map(|b| Arg::lit(format!("{b:02x}"))));
                if update {
                    argv.extend([Arg::lit("value"), Arg::lit("hex")]);
                    argv.extend(entry.value.iter().map(|b| Arg::lit(format!("{b:02x}"))));
                }
                argv
            }
            AttachMap {
                program_pin,
                map_pin,
                kind,
                ..
            }
            | DetachMap {
                program_pin,
                map_pin,
                kind,
                ..
            } => {
                let verb = if matches!(self, AttachMap { .. }) {
                    "attach"
                } else {
                    "detach"
                };
                let mut argv = bpftool(&["bpftool", "prog", verb, "pinned"]);
                argv.extend([
                    Arg::lit(program_pin.as_str()),
                    Arg::lit(kind),
                    Arg::lit("pinned"),
                    Arg::lit(map_pin.as_str()),
                ]);
                argv
            }
            AttachCgroup {
                program_pin,
                cgroup,
                kind,
                ..
            }
            | DetachCgroup {
                program_pin,
                cgroup,
                kind,
                ..
            } => {
                let attach = matches!(self, AttachCgroup { .. });
                let verb = if attach { "attach" } else { "detach" };
                let mut argv = bpftool(&["bpftool", "cgroup", verb]);
                argv.extend([
                    Arg::lit(cgroup.as_str()),
                    Arg::lit(kind),
                    Arg::lit("pinned"),
                    Arg::lit(program_pin.as_str()),
                ]);
                if attach {
                    // `multi` adds to what is attached; without it, a program
                    // another tool attached could be silently replaced.
                    argv.push(Arg::lit("multi"));
                }
                argv
            }
            AttachXdp {
                program_pin,
                iface,
                mode,
                ..
            } => {
                let mut argv = bpftool(&["bpftool", "net", "attach", mode.bpftool_word()]);
                argv.extend([
                    Arg::lit("pinned"),
                    Arg::lit(program_pin.as_str()),
                    Arg::lit("dev"),
                    Arg::lit(iface.as_str()),
                ]);
                argv
            }
            DetachXdp { iface, mode, .. } => {
                let mut argv = bpftool(&["bpftool", "net", "detach", mode.bpftool_word()]);
                argv.extend([Arg::lit("dev"), Arg::lit(iface.as_str())]);
                argv
            }
            UnpinProgram { pin, .. } => {
                vec![
                    Arg::lit("rm"),
                    Arg::lit("-f"),
                    Arg::lit("--"),
                    Arg::lit(pin.as_str()),
                ]
            }
            UnpinMap { pin, .. } => {
                vec![
                    Arg::lit("rm"),
                    Arg::lit("-f"),
                    Arg::lit("--"),
                    Arg::lit(pin.as_str()),
                ]
            }
        }
    }

    /// The step that reverses this one; `None` when nothing in the kernel
    /// needs reversing (build outputs stay, as with any build).
    pub fn undo(&self) -> Option<Step> {
        use Step::*;
        Some(match self.clone() {
            MakeBuildDir { .. } | Compile { .. } => return None,
            LoadProgram { program, pin, .. } => UnpinProgram { program, pin },
            PinMap { map, pin, .. } => UnpinMap { map, pin },
            // An entry goes away with its map, which the PinMap undo removes.
            UpdateMapEntry { .. } => return None,
            AttachMap {
                program,
                program_pin,
                map,
                map_pin,
                kind,
            } => DetachMap {
                program,
                program_pin,
                map,
                map_pin,
                kind,
            },
            AttachCgroup {
                program,
                program_pin,
                cgroup,
                kind,
            } => DetachCgroup {
                program,
                program_pin,
                cgroup,
                kind,
            },
            AttachXdp {
                program,
                program_pin,
                iface,
                mode,
            } => DetachXdp {
                program,
                program_pin,
                iface,
                mode,
            },
            DetachCgroup { .. }
            | DeleteMapEntry { .. }
            | DetachMap { .. }
            | DetachXdp { .. }
            | UnpinProgram { .. }
            | UnpinMap { .. } => return None,
        })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        use Step::*;
        match self {
            MakeBuildDir { dir } => format!("create the build directory {}", dir.display()),
            Compile {
                program, source, ..
            } => format!("compile program `{program}` from {}", source.display()),
            LoadProgram {
                program,
                prog_type,
                pin,
                ..
            } => format!("load {prog_type} program `{program}` and pin it at {pin}"),
            PinMap {
                map,
                program_pin,
                pin,
                ..
            } => format!("pin map `{map}`, created by the program at {program_pin}, at {pin}"),
            UpdateMapEntry { map, entry, .. } => {
                format!("set `{map}`[{}] = {}", entry.key_text, entry.value_text)
            }
            DeleteMapEntry { map, entry, .. } => {
                format!("remove `{map}`[{}]", entry.key_text)
            }
            AttachMap {
                program, map, kind, ..
            } => format!("attach program `{program}` to map `{map}` as {kind}"),
            AttachCgroup {
                program,
                cgroup,
                kind,
                ..
            } => format!("attach program `{program}` to cgroup {cgroup} as {kind}"),
            AttachXdp {
                program,
                iface,
                mode,
                ..
            } => format!(
                "attach XDP program `{program}` to interface {iface} ({} mode)",
                serde_json::to_value(mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
            DetachCgroup {
                program,
                cgroup,
                kind,
                ..
            } => format!("detach program `{program}` ({kind}) from cgroup {cgroup}"),
            DetachMap {
                program, map, kind, ..
            } => format!("detach program `{program}` ({kind}) from map `{map}`"),
            DetachXdp { program, iface, .. } => {
                format!("detach XDP program `{program}` from interface {iface}")
            }
            UnpinProgram { program, pin } => format!("unpin program `{program}` at {pin}"),
            UnpinMap { map, pin } => format!("unpin map `{map}` at {pin}"),
        }
    }

    /// Why the step is where it is, or how its command is completed.
    pub fn note(&self) -> Option<&'static str> {
        use Step::*;
        match self {
            PinMap { .. } => Some(
                "the map id is read from `bpftool -j prog show pinned PROGRAM_PIN` (map_ids), \
                 matched by name with `bpftool -j map show id ID`",
            ),
            AttachCgroup { .. } => Some(
                "cgroup attachments come last: the kernel gives a socket the map's verdict \
                 programs only when the socket is inserted, so a connection made before the \
                 msg_verdict attach would never be redirected",
            ),
            DetachCgroup { .. } => {
                Some("detached first, so no new socket enters a map while the rest is torn down")
            }
            DetachXdp { .. } => Some(
                "`net detach` removes whatever XDP program the interface has in this mode; \
                 bpfplan destroy first checks it is this deployment's, this command does not",
            ),
            _ => None,
        }
    }

    /// Whether the step changes kernel state (not just the build directory).
    pub fn touches_kernel(&self) -> bool {
        !matches!(self, Step::MakeBuildDir { .. } | Step::Compile { .. })
    }
}
