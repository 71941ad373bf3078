//! The instruction set of a plan. A step is data that says what to do and
//! holds only what its command needs; it gives the exact command (`argv`)
//! and the step that reverses it (`undo`). The renderers and the executor
//! all use `argv`, so what a reviewer reads is exactly what runs.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::manifest::model::{
    AttachKind, CgroupPath, Entry, IfaceName, MapName, MapPin, ProgName, ProgPin, ProgType, XdpMode,
};

/// One word of a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReusedMap {
    /// The map's name in the object.
    pub name: MapName,
    /// Where the map to reuse is pinned.
    pub pin: MapPin,
}

/// How a command names a program: by its pin, or by its kernel id (a
/// program whose pin is gone, or was moved aside during a replace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgRef {
    Pinned(ProgPin),
    Id(u32),
}

impl ProgRef {
    fn words(&self) -> [Arg; 2] {
        match self {
            ProgRef::Pinned(pin) => [Arg::lit("pinned"), Arg::lit(pin.as_str())],
            ProgRef::Id(id) => [Arg::lit("id"), Arg::lit(id.to_string())],
        }
    }
}

/// Where a program is attached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachPoint {
    /// A cgroup v2 directory.
    Cgroup {
        cgroup: CgroupPath,
        kind: AttachKind,
    },
    /// A pinned sockmap or sockhash (verdict and parser programs).
    Map {
        map: MapName,
        map_pin: MapPin,
        kind: AttachKind,
    },
    /// A network interface (XDP).
    Xdp { iface: IfaceName, mode: XdpMode },
}

/// A program attached somewhere: what attach and detach steps both say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The program, as the manifest names it.
    pub program: ProgName,
    /// How the command names the program.
    pub prog: ProgRef,
    /// Where it is attached.
    pub point: AttachPoint,
}

/// Which kind of object a pin holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    Program,
    Map,
}

impl PinKind {
    pub fn word(self) -> &'static str {
        match self {
            PinKind::Program => "program",
            PinKind::Map => "map",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Mount bpffs where none is, private to root (other users must not
    /// unlink root's pins).
    MountBpffs {
        /// The mount point.
        dir: PathBuf,
    },
    /// Create a pin directory on bpffs, private to root.
    MakePinDir {
        /// The directory.
        dir: PathBuf,
    },
    /// Remove a pin directory bpfplan created, once it is empty.
    RemovePinDir {
        /// The directory.
        dir: PathBuf,
    },
    /// Load a program from its object and pin it.
    LoadProgram {
        /// The program.
        program: ProgName,
        /// The BPF object to load.
        object: PathBuf,
        /// The program type.
        prog_type: ProgType,
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
    },
    /// Write one entry into a pinned map.
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
    /// Attach a program (to a cgroup alongside what is there, to a map, or
    /// to an interface).
    Attach(Attachment),
    /// Detach a program.
    Detach(Attachment),
    /// Move a pin within its bpffs (a replace stages new objects under
    /// other names, then swaps them in).
    RenamePin {
        /// What the pin holds.
        kind: PinKind,
        /// The program or map, as the manifest names it.
        name: String,
        /// The pin now.
        from: String,
        /// The pin after.
        to: String,
    },
    /// Pin again, by its id, a program or map of the deployment whose pin
    /// was removed while the object lives on (a repair: nothing reloads).
    PinById {
        /// What the pin holds.
        kind: PinKind,
        /// The program or map, as the manifest names it.
        name: String,
        /// The kernel's id of the object, as apply recorded it.
        id: u32,
        /// Where it is pinned.
        pin: String,
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

/// `clang ... -c SOURCE -o OBJECT` with the include directories.
fn compile_argv(
    source: &std::path::Path,
    object: &std::path::Path,
    include: &[std::path::PathBuf],
) -> Vec<Arg> {
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

fn words(w: &[&str]) -> Vec<Arg> {
    w.iter().map(|w| Arg::lit(*w)).collect()
}

impl Attachment {
    fn argv(&self, attach: bool) -> Vec<Arg> {
        let verb = if attach { "attach" } else { "detach" };
        let prog = self.prog.words();
        match &self.point {
            AttachPoint::Cgroup { cgroup, kind } => {
                let mut argv = words(&["bpftool", "cgroup", verb]);
                argv.extend([Arg::lit(cgroup.as_str()), Arg::lit(kind.word())]);
                argv.extend(prog);
                if attach {
                    // `multi` adds to what is attached; without it, a program
                    // another tool attached could be silently replaced.
                    argv.push(Arg::lit("multi"));
                }
                argv
            }
            AttachPoint::Map { map_pin, kind, .. } => {
                let mut argv = words(&["bpftool", "prog", verb]);
                argv.extend(prog);
                argv.extend([
                    Arg::lit(kind.word()),
                    Arg::lit("pinned"),
                    Arg::lit(map_pin.as_str()),
                ]);
                argv
            }
            AttachPoint::Xdp { iface, mode } if attach => {
                let mut argv = words(&["bpftool", "net", "attach", mode.bpftool_word()]);
                argv.extend(prog);
                argv.extend([Arg::lit("dev"), Arg::lit(iface.as_str())]);
                argv
            }
            AttachPoint::Xdp { iface, mode } => {
                let mut argv = words(&["bpftool", "net", "detach", mode.bpftool_word()]);
                argv.extend([Arg::lit("dev"), Arg::lit(iface.as_str())]);
                argv
            }
        }
    }

    /// `program `x`` or `program `x` (id 7)`.
    fn who(&self) -> String {
        match self.prog {
            ProgRef::Pinned(_) => format!("program `{}`", self.program),
            ProgRef::Id(id) => format!("program `{}` (id {id})", self.program),
        }
    }

    /// One line for people: where, and as what.
    pub fn place(&self) -> String {
        match &self.point {
            AttachPoint::Cgroup { cgroup, kind } => format!("cgroup {cgroup} as {kind}"),
            AttachPoint::Map { map, kind, .. } => format!("map `{map}` as {kind}"),
            AttachPoint::Xdp { iface, mode } => {
                format!("interface {iface} ({} mode)", mode.name())
            }
        }
    }
}

/// The lines of one `bpftool batch file -`, as the text bpftool reads: one
/// line per map entry step, its command without the leading `bpftool`, each
/// ended by a newline. One string for the whole batch: fifty thousand lines
/// are one allocation, written as they are to bpftool's stdin, and split
/// into lines only for the audit log and `--format json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchLines {
    text: String,
    count: usize,
}

impl BatchLines {
    /// Add `step`'s line; false (and nothing added) when it is not a map
    /// entry step.
    pub fn push(&mut self, step: &Step) -> bool {
        let added = step.batch_line(&mut self.text);
        if added {
            self.text.push('\n');
            self.count += 1;
        }
        added
    }

    /// How many lines.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The text bpftool reads (every line newline-ended).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The lines, in order.
    pub fn iter(&self) -> std::str::SplitTerminator<'_, char> {
        self.text.split_terminator('\n')
    }

    /// Line `k` (from 0).
    pub fn get(&self, k: usize) -> Option<&str> {
        self.iter().nth(k)
    }

    /// The last line added.
    pub fn last(&self) -> Option<&str> {
        self.iter().next_back()
    }

    /// The first `k` lines.
    pub fn prefix(&self, k: usize) -> BatchLines {
        let end = match k {
            0 => 0,
            _ => self
                .text
                .match_indices('\n')
                .nth(k - 1)
                .map_or(self.text.len(), |(i, _)| i + 1),
        };
        BatchLines {
            text: self.text[..end].to_string(),
            count: k.min(self.count),
        }
    }
}

impl Serialize for BatchLines {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for BatchLines {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let lines = Vec::<String>::deserialize(d)?;
        let mut text = String::new();
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        Ok(BatchLines {
            text,
            count: lines.len(),
        })
    }
}

impl Step {
    /// A map entry step's line of a `bpftool batch file -`, appended to
    /// `out`: its `argv` without the leading `bpftool`, joined by spaces
    /// (every word is plain: bpftool's batch reader quotes otherwise), made
    /// without an allocation per word. False for any other step.
    pub fn batch_line(&self, out: &mut String) -> bool {
        let (verb, pin, entry, value) = match self {
            Step::UpdateMapEntry { pin, entry, .. } => ("update", pin, entry, true),
            Step::DeleteMapEntry { pin, entry, .. } => ("delete", pin, entry, false),
            _ => return false,
        };
        let hex_words = |out: &mut String, bytes: &[u8]| {
            for b in bytes {
                out.push(' ');
                crate::util::push_hex(out, std::slice::from_ref(b));
            }
        };
        out.push_str("map ");
        out.push_str(verb);
        out.push_str(" pinned ");
        out.push_str(pin.as_str());
        out.push_str(" key hex");
        hex_words(out, entry.key());
        if value {
            out.push_str(" value hex");
            hex_words(out, entry.value());
        }
        true
    }

    /// The exact command this step runs.
    pub fn argv(&self) -> Vec<Arg> {
        use Step::*;
        match self {
            MakeBuildDir { dir } => vec![Arg::lit("mkdir"), Arg::lit("-p"), Arg::path(dir)],
            Compile {
                source,
                object,
                include,
                ..
            } => compile_argv(source, object, include),
            MountBpffs { dir } => {
                let mut argv = words(&["mount", "-t", "bpf", "-o", "mode=0700", "bpf"]);
                argv.push(Arg::path(dir));
                argv
            }
            MakePinDir { dir } => {
                // Without -p: a missing parent is a step of its own.
                let mut argv = words(&["mkdir", "-m", "0700", "--"]);
                argv.push(Arg::path(dir));
                argv
            }
            RemovePinDir { dir } => vec![Arg::lit("rmdir"), Arg::lit("--"), Arg::path(dir)],
            LoadProgram {
                object,
                prog_type,
                pin,
                reuse,
                ..
            } => {
                let mut argv = words(&["bpftool", "prog", "load"]);
                argv.extend([
                    Arg::path(object),
                    Arg::lit(pin.as_str()),
                    Arg::lit("type"),
                    Arg::lit(prog_type.word()),
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
            } => {
                let mut argv = words(&["bpftool", "map", "pin", "id"]);
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
                let mut argv = words(&["bpftool", "map", verb, "pinned"]);
                argv.extend([Arg::lit(pin.as_str()), Arg::lit("key"), Arg::lit("hex")]);
                argv.extend(
                    entry
                        .key()
                        .iter()
                        .map(|b| Arg::lit(crate::util::hex(&[*b]))),
                );
                if update {
                    argv.extend([Arg::lit("value"), Arg::lit("hex")]);
                    argv.extend(
                        entry
                            .value()
                            .iter()
                            .map(|b| Arg::lit(crate::util::hex(&[*b]))),
                    );
                }
                argv
            }
            Attach(a) => a.argv(true),
            Detach(a) => a.argv(false),
            RenamePin { from, to, .. } => {
                let mut argv = words(&["mv", "-T", "--"]);
                argv.extend([Arg::lit(from.as_str()), Arg::lit(to.as_str())]);
                argv
            }
            PinById { kind, id, pin, .. } => {
                let what = match kind {
                    PinKind::Program => "prog",
                    PinKind::Map => "map",
                };
                let mut argv = words(&["bpftool", what, "pin", "id"]);
                argv.extend([Arg::lit(id.to_string()), Arg::lit(pin.as_str())]);
                argv
            }
            UnpinProgram { pin, .. } => words(&["rm", "-f", "--", pin.as_str()]),
            UnpinMap { pin, .. } => words(&["rm", "-f", "--", pin.as_str()]),
        }
    }

    /// The step that reverses this one; `None` when nothing in the kernel
    /// needs reversing (build outputs stay, as with any build; an entry
    /// goes away with its map, and removals are final).
    pub fn undo(&self) -> Option<Step> {
        use Step::*;
        Some(match self.clone() {
            MakePinDir { dir } => RemovePinDir { dir },
            LoadProgram { program, pin, .. } => UnpinProgram { program, pin },
            PinMap { map, pin, .. } => UnpinMap { map, pin },
            Attach(a) => Detach(a),
            PinById {
                kind: PinKind::Program,
                name,
                pin,
                ..
            } => UnpinProgram {
                program: ProgName(name),
                pin: ProgPin(pin),
            },
            PinById {
                kind: PinKind::Map,
                name,
                pin,
                ..
            } => UnpinMap {
                map: MapName(name.into()),
                pin: MapPin(pin.into()),
            },
            RenamePin {
                kind,
                name,
                from,
                to,
            } => RenamePin {
                kind,
                name,
                from: to,
                to: from,
            },
            MakeBuildDir { .. }
            | Compile { .. }
            | MountBpffs { .. }
            | RemovePinDir { .. }
            | UpdateMapEntry { .. }
            | DeleteMapEntry { .. }
            | Detach(_)
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
            MountBpffs { dir } => format!("mount bpffs at {}, private to root", dir.display()),
            MakePinDir { dir } => format!("create the pin directory {}", dir.display()),
            RemovePinDir { dir } => format!("remove the pin directory {}", dir.display()),
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
            } => format!("pin map `{map}`, created by the program at {program_pin}, at {pin}"),
            UpdateMapEntry { map, entry, .. } => {
                format!("set `{map}`[{}] = {}", entry.key_text(), entry.value_text())
            }
            DeleteMapEntry { map, entry, .. } => {
                format!("remove `{map}`[{}]", entry.key_text())
            }
            Attach(a) => match &a.point {
                AttachPoint::Xdp { .. } => {
                    format!("attach XDP {} to {}", a.who(), a.place())
                }
                _ => format!("attach {} to {}", a.who(), a.place()),
            },
            Detach(a) => match &a.point {
                AttachPoint::Cgroup { cgroup, kind } => {
                    format!("detach {} ({kind}) from cgroup {cgroup}", a.who())
                }
                AttachPoint::Map { map, kind, .. } => {
                    format!("detach {} ({kind}) from map `{map}`", a.who())
                }
                AttachPoint::Xdp { iface, .. } => {
                    format!("detach XDP {} from interface {iface}", a.who())
                }
            },
            RenamePin {
                kind,
                name,
                from,
                to,
            } => format!("move {} `{name}` from {from} to {to}", kind.word()),
            PinById {
                kind,
                name,
                id,
                pin,
            } => format!(
                "pin {} `{name}` (id {id}, which still lives) again at {pin}",
                kind.word()
            ),
            UnpinProgram { program, pin } => format!("unpin program `{program}` at {pin}"),
            UnpinMap { map, pin } => format!("unpin map `{map}` at {pin}"),
        }
    }

    /// Why the step is where it is, or how its command is completed.
    pub fn note(&self) -> Option<&'static str> {
        use Step::*;
        match self {
            PinMap { .. } => Some(
                "the map id is looked up when the step runs, among the ids of the maps the \
                 program uses, by name: bpfplan reads them with bpf(2) (the program's and each \
                 map's info), the sh script with `bpftool -j prog show pinned PROGRAM_PIN` and \
                 `bpftool -j map show id ID`",
            ),
            Attach(Attachment {
                point: AttachPoint::Cgroup { .. },
                ..
            }) => Some(
                "cgroup attachments come last: the kernel gives a socket the map's verdict \
                 programs only when the socket is inserted, so a connection made before the \
                 msg_verdict attach would never be redirected",
            ),
            Detach(Attachment {
                point: AttachPoint::Cgroup { .. },
                ..
            }) => Some("detached first, so no new socket enters a map while the rest is torn down"),
            Detach(Attachment {
                point: AttachPoint::Xdp { .. },
                ..
            }) => Some(
                "`net detach` removes whatever XDP program the interface has in this mode; \
                 bpfplan destroy first checks it is this deployment's, this command does not",
            ),
            _ => None,
        }
    }

    /// What the step does to its object: create, update or delete.
    pub fn action(&self) -> &'static str {
        use Step::*;
        match self {
            MakeBuildDir { .. }
            | Compile { .. }
            | MountBpffs { .. }
            | MakePinDir { .. }
            | LoadProgram { .. }
            | PinMap { .. }
            | PinById { .. }
            | Attach(_) => "create",
            UpdateMapEntry { .. } | RenamePin { .. } => "update",
            RemovePinDir { .. }
            | DeleteMapEntry { .. }
            | Detach(_)
            | UnpinProgram { .. }
            | UnpinMap { .. } => "delete",
        }
    }

    /// The object the step acts on: its kind, name and place.
    pub fn object(&self) -> (&'static str, String, String) {
        use Step::*;
        let path = |p: &std::path::Path| p.display().to_string();
        match self {
            MakeBuildDir { dir } => ("build_dir", path(dir), path(dir)),
            Compile {
                program, object, ..
            } => ("object", program.0.clone(), path(object)),
            MountBpffs { dir } => ("bpffs", path(dir), path(dir)),
            MakePinDir { dir } | RemovePinDir { dir } => ("pin_dir", path(dir), path(dir)),
            LoadProgram { program, pin, .. } | UnpinProgram { program, pin } => {
                ("program", program.0.clone(), pin.0.clone())
            }
            PinMap { map, pin, .. } | UnpinMap { map, pin } => {
                ("map", map.to_string(), pin.to_string())
            }
            UpdateMapEntry { map, pin, entry } | DeleteMapEntry { map, pin, entry } => (
                "entry",
                format!("{map}[{}]", entry.key_text()),
                pin.to_string(),
            ),
            Attach(a) | Detach(a) => ("attachment", a.program.0.clone(), a.place()),
            RenamePin { kind, name, to, .. } => (kind.word(), name.clone(), to.clone()),
            PinById {
                kind, name, pin, ..
            } => (kind.word(), name.clone(), pin.clone()),
        }
    }

    /// The step's operation, as the JSON plan's `op` spells it.
    pub fn op(&self) -> &'static str {
        use Step::*;
        match self {
            MakeBuildDir { .. } => "make_build_dir",
            Compile { .. } => "compile",
            MountBpffs { .. } => "mount_bpffs",
            MakePinDir { .. } => "make_pin_dir",
            RemovePinDir { .. } => "remove_pin_dir",
            LoadProgram { .. } => "load_program",
            PinMap { .. } => "pin_map",
            UpdateMapEntry { .. } => "update_map_entry",
            DeleteMapEntry { .. } => "delete_map_entry",
            Attach(_) => "attach",
            Detach(_) => "detach",
            RenamePin { .. } => "rename_pin",
            PinById { .. } => "pin_by_id",
            UnpinProgram { .. } => "unpin_program",
            UnpinMap { .. } => "unpin_map",
        }
    }

    /// Whether the step changes kernel state (not just the build directory).
    pub fn touches_kernel(&self) -> bool {
        !matches!(self, Step::MakeBuildDir { .. } | Step::Compile { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::model::ScalarType;

    fn entry_steps(len: usize) -> [Step; 2] {
        let key: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
        let value: Vec<u8> = (0..len + 3).map(|i| (i * 91) as u8).collect();
        let entry = Entry::new(&key, &value, (Some(ScalarType::U32), None));
        let (map, pin) = (MapName("m".into()), MapPin::new("/sys/fs/bpf/x/m"));
        [
            Step::UpdateMapEntry {
                map: map.clone(),
                pin: pin.clone(),
                entry: entry.clone(),
            },
            Step::DeleteMapEntry { map, pin, entry },
        ]
    }

    fn joined(step: &Step) -> String {
        let words: Vec<String> = step
            .argv()
            .into_iter()
            .skip(1)
            .map(|a| match a {
                Arg::Lit(w) => w,
                Arg::MapId { .. } => panic!("an entry step names no map id"),
            })
            .collect();
        words.join(" ")
    }

    /// A batch line is the step's own command, word for word.
    #[test]
    fn a_batch_line_is_the_argv_without_bpftool() {
        let mut lines = BatchLines::default();
        let mut want = Vec::new();
        for len in [1, 4, 16, 47, 64] {
            for step in entry_steps(len) {
                assert!(lines.push(&step));
                want.push(joined(&step));
                assert_eq!(lines.last(), want.last().map(String::as_str));
            }
        }
        assert!(!lines.push(&Step::MakePinDir {
            dir: PathBuf::from("/sys/fs/bpf/x"),
        }));
        assert_eq!(lines.iter().collect::<Vec<_>>(), want);
        assert_eq!(lines.len(), want.len());
        assert_eq!(lines.text(), format!("{}\n", want.join("\n")));
        assert_eq!(lines.get(3), Some(want[3].as_str()));
        assert_eq!(lines.get(want.len()), None);
        for k in [0, 1, 5, want.len(), want.len() + 2] {
            let p = lines.prefix(k);
            assert_eq!(p.iter().collect::<Vec<_>>(), want[..k.min(want.len())]);
            assert_eq!(p.len(), k.min(want.len()));
        }
        let json = serde_json::to_string(&lines).unwrap();
        assert_eq!(json, serde_json::to_string(&want).unwrap());
        assert_eq!(serde_json::from_str::<BatchLines>(&json).unwrap(), lines);
    }
}
