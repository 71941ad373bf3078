//! Manifest diagnostics: one error kind enum with one `Display`, and the
//! just-style rendering (`--> file:line:col`, the source line, a caret).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Whether a diagnostic stops the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Everything that can be wrong with a manifest, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestErrorKind {
    /// TOML syntax, unknown keys, missing keys or wrong value types, as
    /// reported by the TOML parser.
    Syntax(String),
    DuplicateName {
        kind: &'static str,
        name: String,
        first_line: usize,
    },
    DuplicatePin {
        pin: String,
        first_line: usize,
    },
    UnknownProgram(String),
    UnknownMap(String),
    UnknownProgramType {
        found: String,
        expected: String,
    },
    UnknownAttachType {
        found: String,
        expected: String,
    },
    IncompatibleAttach {
        program: String,
        prog_type: String,
        attach_type: String,
        expected: String,
        /// The program type that attaches as `attach_type`, if one does.
        instead: Option<String>,
    },
    AttachTarget {
        found: usize,
    },
    AttachTargetKind {
        attach_type: String,
        target: &'static str,
        expected: &'static str,
    },
    XdpModeWithoutXdp,
    UnknownXdpMode(String),
    SourceAndObject {
        program: String,
        found: usize,
    },
    MissingFile {
        what: &'static str,
        path: String,
    },
    BadName {
        kind: &'static str,
        name: String,
    },
    NameTooLong {
        kind: &'static str,
        name: String,
    },
    PinNotAbsolute(String),
    PinDotDot(String),
    PinBadChars(String),
    PinOutsideBpffs {
        pin: String,
        mounts: String,
    },
    CgroupPath {
        path: String,
        reason: &'static str,
    },
    NoCgroup2,
    BadInterface(String),
    UnknownVariable(String),
    UnterminatedVariable,
    UnknownVarOverride(String),
    MapOwnReuse {
        program: String,
        map: String,
    },
    MapNotReused {
        program: String,
        map: String,
        owner: String,
    },
    DependencyCycle(String),
    UnknownScalarType(String),
    EntriesWithoutTypes,
    BadEntry {
        what: &'static str,
        reason: String,
    },
    DuplicateEntry(String),
    KernelNameClash {
        name: String,
        other: String,
        program: String,
    },
    DuplicateReuse(String),
    DuplicateAttachment(String),
    XdpInterfaceTaken {
        iface: String,
        first: String,
    },
    PinDot {
        pin: String,
        name: String,
    },
    ControlChars {
        what: &'static str,
        value: String,
    },
    NothingDeclared,
    /// More entries than the map holds, or an array key past its end (known
    /// once the object is built: `max_entries` is in the object).
    EntriesDoNotFit {
        map: String,
        max_entries: u32,
        found: usize,
        array: bool,
    },
}

impl fmt::Display for ManifestErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ManifestErrorKind::*;
        match self {
            Syntax(msg) => write!(f, "{msg}"),
            DuplicateName {
                kind,
                name,
                first_line,
            } => write!(
                f,
                "{kind} `{name}` is defined twice (first on line {first_line})"
            ),
            DuplicatePin { pin, first_line } => write!(
                f,
                "pin path `{pin}` is used twice (first on line {first_line})"
            ),
            UnknownProgram(name) => write!(f, "no program named `{name}` in this manifest"),
            UnknownMap(name) => write!(f, "no map named `{name}` in this manifest"),
            UnknownProgramType { found, expected } => {
                write!(
                    f,
                    "unknown program type `{found}`; expected one of: {expected}"
                )
            }
            UnknownAttachType { found, expected } => {
                write!(
                    f,
                    "unknown attach type `{found}`; expected one of: {expected}"
                )
            }
            IncompatibleAttach {
                program,
                prog_type,
                attach_type,
                expected,
                instead,
            } => {
                write!(
                    f,
                    "program `{program}` of type `{prog_type}` cannot be attached as \
                     `{attach_type}`; a `{prog_type}` program attaches as: {expected}"
                )?;
                match instead {
                    Some(t) => write!(f, " (a `{attach_type}` program is loaded as type `{t}`)"),
                    None => Ok(()),
                }
            }
            AttachTarget { found } => write!(
                f,
                "an attachment needs exactly one target of `cgroup`, `map` or `interface`, found {found}"
            ),
            AttachTargetKind {
                attach_type,
                target,
                expected,
            } => write!(
                f,
                "attach type `{attach_type}` attaches to a {expected}, not to a {target}"
            ),
            XdpModeWithoutXdp => write!(f, "`mode` applies only to `xdp` attachments"),
            UnknownXdpMode(mode) => write!(
                f,
                "unknown xdp mode `{mode}`; expected one of: auto, generic, native, offload"
            ),
            SourceAndObject { program, found } => write!(
                f,
                "program `{program}` needs exactly one of `source` (C to compile) or `object` (a prebuilt .o), found {found}"
            ),
            MissingFile { what, path } => write!(f, "{what} `{path}` does not exist"),
            NothingDeclared => write!(
                f,
                "the manifest declares no program, map or attachment: is it the right file?"
            ),
            EntriesDoNotFit {
                map,
                max_entries,
                found,
                array: false,
            } => write!(
                f,
                "map `{map}` holds at most {max_entries} entries (max_entries in its object) \
                 and the manifest lists {found}: this entry and the ones after it do not fit; \
                 raise max_entries in the C source or list fewer"
            ),
            EntriesDoNotFit {
                map, max_entries, ..
            } => write!(
                f,
                "array `{map}` has {max_entries} slots (max_entries in its object): this key \
                 is past its end"
            ),
            _ => self.fmt_values(f),
        }
    }
}

impl ManifestErrorKind {
    /// The messages about values: names, pins, paths, variables, entries.
    fn fmt_values(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ManifestErrorKind::*;
        match self {
            BadName { kind, name } => write!(
                f,
                "{kind} name `{name}` may hold only ASCII letters, digits and `_`, and may not start with a digit"
            ),
            NameTooLong { kind, name } => write!(
                f,
                "{kind} name `{name}` is {} characters; the kernel keeps only the first 15 (`{}`), so `bpftool ... name` lookups must use that",
                name.len(),
                crate::manifest::model::kernel_name(name)
            ),
            UnknownVariable(name) => write!(
                f,
                "unknown variable `{name}`; declare it in `[vars]` with a default"
            ),
            UnterminatedVariable => write!(f, "unterminated `${{`; write `$${{` for a literal"),
            UnknownVarOverride(name) => write!(
                f,
                "`--var {name}=...` names a variable this manifest does not declare in `[vars]`"
            ),
            MapOwnReuse { program, map } => write!(
                f,
                "program `{program}` creates map `{map}`; it cannot also reuse it"
            ),
            MapNotReused {
                program,
                map,
                owner,
            } => write!(
                f,
                "program `{program}` is attached to map `{map}` but neither creates it nor reuses it \
                 (add `maps = [\"{map}\"]`; its creator is `{owner}`)"
            ),
            DependencyCycle(cycle) => {
                write!(f, "programs reuse each other's maps in a cycle: {cycle}")
            }
            UnknownScalarType(t) => write!(
                f,
                "unknown entry type `{t}`; expected one of: u8, u16, u32, u64, ip"
            ),
            EntriesWithoutTypes => write!(
                f,
                "a map with `entries` needs `key` and `value` types (u8, u16, u32, u64 or ip)"
            ),
            BadEntry { what, reason } => write!(f, "bad entry {what}: {reason}"),
            DuplicateEntry(key) => write!(f, "entry key `{key}` is listed twice"),
            KernelNameClash {
                name,
                other,
                program,
            } => write!(
                f,
                "maps `{other}` and `{name}` of program `{program}` share the name the kernel keeps \
                 (`{}`, the first 15 characters), so apply could not tell them apart; rename one",
                crate::manifest::model::kernel_name(name)
            ),
            DuplicateReuse(map) => write!(f, "map `{map}` is listed twice in `maps`"),
            DuplicateAttachment(program) => {
                write!(f, "program `{program}` is attached here the same way twice")
            }
            XdpInterfaceTaken { iface, first } => write!(
                f,
                "interface `{iface}` already gets XDP program `{first}`; an interface holds one"
            ),
            ControlChars { what, value } => write!(
                f,
                "{what} `{}` holds a control character",
                value.escape_debug()
            ),
            _ => self.fmt_paths(f),
        }
    }

    /// The messages about paths: pins, cgroups, interfaces.
    fn fmt_paths(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ManifestErrorKind::*;
        match self {
            PinNotAbsolute(pin) => write!(f, "pin path `{pin}` must be absolute"),
            PinDotDot(pin) => write!(
                f,
                "pin path `{pin}` must not contain `.` or `..` components"
            ),
            PinBadChars(pin) => write!(
                f,
                "pin path `{}` may hold only ASCII letters, digits, `_`, `-`, `.` and `/`",
                pin.escape_debug()
            ),
            PinOutsideBpffs { pin, mounts } => {
                write!(f, "pin path `{pin}` is not on a bpf filesystem ({mounts})")
            }
            CgroupPath { path, reason } => {
                write!(f, "cgroup path `{}` {reason}", path.escape_debug())
            }
            NoCgroup2 => write!(
                f,
                "`auto` cgroup: no cgroup v2 mount found in /proc/self/mountinfo"
            ),
            BadInterface(name) => write!(
                f,
                "interface name `{}` must be 1 to 15 ASCII letters, digits, `_`, `-` or `.`",
                name.escape_debug()
            ),
            PinDot { pin, name } => write!(
                f,
                "pin path `{pin}`: bpffs refuses names holding `.` (`{name}`)"
            ),
            // Every kind is spelled in one of the three matches.
            other => write!(f, "{other:?}"),
        }
    }
}

/// One finding about a manifest, pointing into its source.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub kind: ManifestErrorKind,
    /// Byte range in the manifest source, when the finding has a place.
    pub span: Option<Range<usize>>,
}

impl Diagnostic {
    pub fn error(kind: ManifestErrorKind, span: Option<Range<usize>>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            kind,
            span,
        }
    }

    pub fn warning(kind: ManifestErrorKind, span: Option<Range<usize>>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            kind,
            span,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The manifest text and the path it was read from, to render diagnostics.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path the manifest's relative paths resolve against.
    pub path: PathBuf,
    /// The path diagnostics show (as the user wrote it).
    shown: PathBuf,
    pub text: String,
    /// Byte offset of the start of each line, for O(log n) look-ups.
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            path: path.to_path_buf(),
            shown: path.to_path_buf(),
            text,
            line_starts,
        }
    }

    /// Show another path in diagnostics (the one the user typed, when
    /// `path` is its canonical form).
    pub fn shown_as(mut self, shown: &Path) -> Self {
        self.shown = shown.to_path_buf();
        self
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset);
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let line_start = self.line_starts[line - 1];
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// Render diagnostics like just: the message, `--> file:line:col`, the
    /// source line and a caret under the offending value.
    pub fn render(&self, diag: &Diagnostic) -> String {
        let label = match diag.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{label}: {}\n", diag.kind);
        let span = diag.span.clone().unwrap_or(0..0);
        let (line, col) = self.line_col(span.start);
        let number = line.to_string();
        let gutter = " ".repeat(number.len());
        out.push_str(&format!(
            "{gutter}--> {}:{line}:{col}\n",
            self.shown.display()
        ));
        let text = self.text.lines().nth(line - 1).unwrap_or("");
        out.push_str(&format!("{gutter} |\n{number} | {text}\n"));
        // The caret covers the span, clipped to the end of its first line.
        let line_chars = text.chars().count();
        let start_char = col - 1;
        let span_chars = self.text[floor_char_boundary(&self.text, span.start)
            ..floor_char_boundary(&self.text, span.end.max(span.start))]
            .chars()
            .take_while(|c| *c != '\n')
            .count();
        let width = span_chars.clamp(1, line_chars.saturating_sub(start_char).max(1));
        out.push_str(&format!(
            "{gutter} | {}{}\n",
            " ".repeat(start_char),
            "^".repeat(width)
        ));
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn case(text: &str, offset: usize, want: (usize, usize)) {
        let src = Source::new(Path::new("m.toml"), text.to_string());
        assert_eq!(src.line_col(offset), want);
    }

    #[test]
    fn line_col() {
        case("abc", 0, (1, 1));
        case("abc\ndef", 4, (2, 1));
        case("abc\ndef", 6, (2, 3));
        case("é = 1\nx", 3, (1, 3));
        case("abc", 99, (1, 4));
    }

    #[test]
    fn caret_under_span() {
        let src = Source::new(Path::new("m.toml"), "a = 1\npin = \"x\"\n".to_string());
        let d = Diagnostic::error(ManifestErrorKind::PinNotAbsolute("x".into()), Some(12..15));
        assert_eq!(
            src.render(&d),
            "error: pin path `x` must be absolute\n --> m.toml:2:7\n  |\n2 | pin = \"x\"\n  |       ^^^\n"
        );
    }
}
