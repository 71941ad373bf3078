//! Raw manifest → checked model. Pure: the host facts and a file-exists probe
//! come in as arguments. Collects every error instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use super::diag::{Diagnostic, ManifestErrorKind as K, Source};
use super::model::*;
use super::raw::{self, RawAttach, RawManifest, S};
use crate::host::{DEFAULT_BPFFS, HostFacts};

/// What validation needs besides the manifest text.
pub struct Env<'a> {
    pub host: &'a HostFacts,
    /// `--var NAME=VALUE` overrides, in command-line order.
    pub overrides: &'a [(String, String)],
    /// Whether a file exists (the real file system, or a table in tests).
    pub exists: &'a dyn Fn(&Path) -> bool,
}

/// A checked model plus the warnings found on the way.
#[derive(Debug)]
pub struct Checked {
    pub model: Model,
    pub warnings: Vec<Diagnostic>,
}

/// Validate a manifest. On failure, every diagnostic found (errors and
/// warnings) is returned, in source order.
pub fn validate(src: &Source, env: &Env) -> Result<Checked, Vec<Diagnostic>> {
    let raw = raw::parse(&src.text).map_err(|d| vec![*d])?;
    let mut v = Validator {
        src,
        env,
        vars: BTreeMap::new(),
        diags: Vec::new(),
    };
    let model = v.run(raw);
    let mut diags = v.diags;
    diags.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    match model {
        Some(model) if !diags.iter().any(Diagnostic::is_error) => Ok(Checked {
            model,
            warnings: diags,
        }),
        _ => Err(diags),
    }
}

struct Validator<'a> {
    src: &'a Source,
    env: &'a Env<'a>,
    vars: BTreeMap<String, String>,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, kind: K, span: Option<Range<usize>>) {
        self.diags.push(Diagnostic::error(kind, span));
    }

    fn run(&mut self, raw: RawManifest) -> Option<Model> {
        self.vars(&raw);
        if raw.programs.is_empty() && raw.maps.is_empty() && raw.attachments.is_empty() {
            // Almost always the wrong file: say so rather than do nothing.
            self.error(K::NothingDeclared, Some(0..0));
            return None;
        }
        let mut pins: BTreeMap<String, usize> = BTreeMap::new();
        let programs = self.programs(&raw, &mut pins);
        let maps = self.maps(&raw, &mut pins);
        // Map reuse: each named map must exist, belong to another program,
        // and be named once.
        let owners: BTreeMap<&str, &str> = raw
            .maps
            .iter()
            .map(|m| {
                (
                    m.get_ref().name.get_ref().as_str(),
                    m.get_ref().program.get_ref().as_str(),
                )
            })
            .collect();
        self.reuse(&raw, &owners);
        if let Some((cycle, span)) = find_cycle(&raw, &owners) {
            self.error(K::DependencyCycle(cycle), Some(span));
        }
        let attachments = self.attachments(&raw, &owners);
        Some(Model {
            manifest: self.src.path.clone(),
            programs,
            maps,
            attachments,
        })
    }

    fn programs(&mut self, raw: &RawManifest, pins: &mut BTreeMap<String, usize>) -> Vec<Program> {
        let manifest_dir = self
            .src
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut programs = Vec::new();
        let mut prog_names: BTreeMap<String, usize> = BTreeMap::new();
        for p in &raw.programs {
            let p = p.get_ref();
            let name = self.name("program", &p.name);
            self.unique("program", &p.name, &mut prog_names);
            let code = self.code(p, &manifest_dir);
            let prog_type = self.prog_type(&p.prog_type);
            let pin = self.pin(&p.pin, pins);
            let reuse: Vec<MapName> = p
                .maps
                .iter()
                .map(|m| MapName(m.get_ref().clone().into()))
                .collect();
            if let (Some(name), Some(code), Some(prog_type), Some(pin)) =
                (name, code, prog_type, pin)
            {
                programs.push(Program {
                    name: ProgName(name),
                    code,
                    prog_type,
                    pin: ProgPin(pin),
                    reuse,
                });
            }
        }
        programs
    }

    fn maps(&mut self, raw: &RawManifest, pins: &mut BTreeMap<String, usize>) -> Vec<MapDef> {
        let prog_names: BTreeSet<&str> = raw
            .programs
            .iter()
            .map(|p| p.get_ref().name.get_ref().as_str())
            .collect();
        let mut maps = Vec::new();
        let mut map_names: BTreeMap<String, usize> = BTreeMap::new();
        // (owner, kernel name) -> the first map's name: apply finds a map
        // among its program's maps by the name the kernel keeps.
        let mut kernel_names: BTreeMap<(String, String), String> = BTreeMap::new();
        for m in &raw.maps {
            let m = m.get_ref();
            let name = self.name("map", &m.name);
            self.unique("map", &m.name, &mut map_names);
            if !prog_names.contains(m.program.get_ref().as_str()) {
                self.error(
                    K::UnknownProgram(m.program.get_ref().clone()),
                    Some(m.program.span()),
                );
            }
            if let Some(name) = &name {
                let key = (m.program.get_ref().clone(), kernel_name(name).to_string());
                match kernel_names.get(&key) {
                    Some(first) if first != name => {
                        // The error says more than the two long-name warnings.
                        self.diags.retain(|d| {
                            !matches!(&d.kind, K::NameTooLong { kind: "map", name: n } if n == name || n == first)
                        });
                        self.error(
                            K::KernelNameClash {
                                name: name.clone(),
                                other: first.clone(),
                                program: m.program.get_ref().clone(),
                            },
                            Some(m.name.span()),
                        )
                    }
                    _ => {
                        kernel_names.insert(key, name.clone());
                    }
                }
            }
            let pin = self.pin(&m.pin, pins);
            let types = self.entry_types(m);
            let entries = types.and_then(|t| self.entries(t, &m.entries));
            let on_destroy = types.and_then(|t| self.entries(t, &m.on_destroy));
            if let (Some(name), Some(pin), Some(entries), Some(on_destroy)) =
                (name, pin, entries, on_destroy)
            {
                maps.push(MapDef {
                    name: MapName(name.into()),
                    owner: ProgName(m.program.get_ref().clone()),
                    pin: MapPin(pin.into()),
                    entries,
                    on_destroy,
                    labels: m.labels.clone(),
                });
            }
        }
        maps
    }

    fn reuse(&mut self, raw: &RawManifest, owners: &BTreeMap<&str, &str>) {
        for p in &raw.programs {
            let p = p.get_ref();
            let mut seen = BTreeSet::new();
            for m in &p.maps {
                if !seen.insert(m.get_ref().as_str()) {
                    self.error(K::DuplicateReuse(m.get_ref().clone()), Some(m.span()));
                    continue;
                }
                match owners.get(m.get_ref().as_str()) {
                    None => self.error(K::UnknownMap(m.get_ref().clone()), Some(m.span())),
                    Some(owner) if *owner == p.name.get_ref() => self.error(
                        K::MapOwnReuse {
                            program: p.name.get_ref().clone(),
                            map: m.get_ref().clone(),
                        },
                        Some(m.span()),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    fn attachments(&mut self, raw: &RawManifest, owners: &BTreeMap<&str, &str>) -> Vec<Attachment> {
        let by_name: BTreeMap<&str, &raw::RawProgram> = raw
            .programs
            .iter()
            .rev() // the first of duplicate names wins, as in the error
            .map(|p| (p.get_ref().name.get_ref().as_str(), p.get_ref()))
            .collect();
        let mut attachments: Vec<Attachment> = Vec::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        // An interface holds one XDP program, whatever the mode; the first claim wins.
        let mut xdp: BTreeMap<String, String> = BTreeMap::new();
        for a in &raw.attachments {
            let span = a.span();
            let Some(att) = self.attachment(a.get_ref(), span.clone(), &by_name, owners) else {
                continue;
            };
            if !seen.insert((att.program.0.clone(), format!("{:?}", att.point))) {
                self.error(K::DuplicateAttachment(att.program.0.clone()), Some(span));
                continue;
            }
            if let AttachPoint::Xdp { iface, .. } = &att.point {
                if let Some(first) = xdp.get(iface.as_str()) {
                    self.error(
                        K::XdpInterfaceTaken {
                            iface: iface.0.clone(),
                            first: first.clone(),
                        },
                        Some(span),
                    );
                    continue;
                }
                xdp.insert(iface.0.clone(), att.program.0.clone());
            }
            attachments.push(att);
        }
        attachments
    }

    fn vars(&mut self, raw: &RawManifest) {
        let declared: BTreeMap<String, String> = raw
            .vars
            .as_ref()
            .map(|v| {
                v.get_ref()
                    .iter()
                    .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                    .collect()
            })
            .unwrap_or_default();
        let vars_span = raw.vars.as_ref().map(|v| v.span());
        self.vars = declared;
        for (name, value) in self.env.overrides {
            if let Some(slot) = self.vars.get_mut(name) {
                slot.clone_from(value);
            } else {
                self.error(K::UnknownVarOverride(name.clone()), vars_span.clone());
            }
        }
    }

    /// A map's entry key and value types (each `None` when not given);
    /// `None` when one is unknown (reported).
    fn entry_types(&mut self, m: &raw::RawMap) -> Option<(Option<ScalarType>, Option<ScalarType>)> {
        let ty = |v: &mut Self, s: &Option<S>| -> Option<Option<ScalarType>> {
            match s {
                None => Some(None),
                Some(s) => match ScalarType::parse(s.get_ref()) {
                    Some(t) => Some(Some(t)),
                    None => {
                        v.error(K::UnknownScalarType(s.get_ref().clone()), Some(s.span()));
                        None
                    }
                },
            }
        };
        Some((ty(self, &m.key)?, ty(self, &m.value)?))
    }

    /// A map's declared entries (`entries` or `on_destroy`), encoded;
    /// `Some(None)` when not declared.
    fn entries(
        &mut self,
        (key_ty, value_ty): (Option<ScalarType>, Option<ScalarType>),
        declared: &Option<toml::Spanned<Vec<toml::Spanned<raw::RawEntry>>>>,
    ) -> Option<Option<Vec<Entry>>> {
        let Some(raw) = declared else {
            return Some(None);
        };
        let (Some(key_ty), Some(value_ty)) = (key_ty, value_ty) else {
            self.error(K::EntriesWithoutTypes, Some(raw.span()));
            return None;
        };
        let mut out = Vec::with_capacity(raw.get_ref().len());
        // Each encoded key with the entry it came from, to find repeats.
        let mut keys: Vec<(Encoded, u32)> = Vec::with_capacity(raw.get_ref().len());
        let shown = (Some(key_ty), Some(value_ty));
        let mut ok = true;
        for (i, e) in raw.get_ref().iter().enumerate() {
            let e = e.get_ref();
            // Strings may use variables, like every other string value.
            let (Some(k), Some(v)) = (self.scalar(&e.key), self.scalar(&e.value)) else {
                ok = false;
                continue;
            };
            match (encode(key_ty, &k), encode(value_ty, &v)) {
                (Ok(key), Ok(value)) => {
                    keys.push((key, i as u32));
                    out.push(Entry::new(key.as_slice(), value.as_slice(), shown));
                }
                (k, v) => {
                    for (what, r, span) in [("key", k, e.key.span()), ("value", v, e.value.span())]
                    {
                        if let Err(reason) = r {
                            self.error(K::BadEntry { what, reason }, Some(span));
                        }
                    }
                    ok = false;
                }
            }
        }
        // Sorted, a repeat sits next to the entry it repeats (a million keys
        // sort faster than they hash into a table larger than the caches);
        // each later one is an error, in the manifest's order.
        keys.sort_unstable();
        let mut repeats: Vec<u32> = keys
            .windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .map(|w| w[1].1)
            .collect();
        repeats.sort_unstable();
        for i in repeats {
            let Some(e) = raw.get_ref().get(i as usize).map(|e| e.get_ref()) else {
                continue;
            };
            // Named as written: `::ffff:198.18.0.1` repeats `198.18.0.1`.
            let written = match self.scalar(&e.key) {
                Some(raw::Scalar::Int(n)) => n.to_string(),
                Some(raw::Scalar::Str(s)) => s,
                None => continue,
            };
            self.error(K::DuplicateEntry(written), Some(e.key.span()));
            ok = false;
        }
        ok.then_some(Some(out))
    }

    /// An entry's key or value with its variables expanded.
    fn scalar(&mut self, s: &toml::Spanned<raw::Scalar>) -> Option<raw::Scalar> {
        match s.get_ref() {
            raw::Scalar::Int(n) => Some(raw::Scalar::Int(*n)),
            raw::Scalar::Str(text) => {
                let spanned = toml::Spanned::new(s.span(), text.clone());
                self.interp(&spanned).map(raw::Scalar::Str)
            }
        }
    }

    /// Record a name, or report it as a duplicate of an earlier one.
    fn unique(&mut self, kind: &'static str, s: &S, seen: &mut BTreeMap<String, usize>) {
        if let Some(first) = seen.get(s.get_ref()) {
            self.error(
                K::DuplicateName {
                    kind,
                    name: s.get_ref().clone(),
                    first_line: *first,
                },
                Some(s.span()),
            );
        } else {
            seen.insert(s.get_ref().clone(), self.line(s));
        }
    }

    fn line(&self, s: &S) -> usize {
        self.src.line_col(s.span().start).0
    }

    /// Expand `${name}` in a string value; `$${` is a literal `${`.
    fn interp(&mut self, s: &S) -> Option<String> {
        let value = s.get_ref();
        let mut out = String::with_capacity(value.len());
        let mut rest = value.as_str();
        let mut consumed = 0;
        let mut ok = true;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
                consumed += i + 3;
            } else if let Some(body) = after.strip_prefix("${") {
                match body.find('}') {
                    Some(end) => {
                        let name = &body[..end];
                        let len = end + 3;
                        match self.vars.get(name) {
                            Some(v) => out.push_str(v),
                            None => {
                                let span = self.inner_span(s, consumed + i, len);
                                self.error(K::UnknownVariable(name.to_string()), Some(span));
                                ok = false;
                            }
                        }
                        rest = &after[len..];
                        consumed += i + len;
                    }
                    None => {
                        let span = self.inner_span(s, consumed + i, after.len());
                        self.error(K::UnterminatedVariable, Some(span));
                        return None;
                    }
                }
            } else {
                out.push('$');
                rest = &after[1..];
                consumed += i + 1;
            }
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    /// The span of `value[offset..offset+len]` in the source, when the value
    /// is written without escapes; else the whole value.
    fn inner_span(&self, s: &S, offset: usize, len: usize) -> Range<usize> {
        let span = s.span();
        let raw = self.src.text.get(span.clone()).unwrap_or("");
        let value = s.get_ref();
        let plain = raw.len() == value.len() + 2 && raw.get(1..raw.len() - 1) == Some(value);
        if plain {
            span.start + 1 + offset..span.start + 1 + offset + len
        } else {
            span
        }
    }

    /// Program and map names: safe for shells, bpffs and the kernel.
    fn name(&mut self, kind: &'static str, s: &S) -> Option<String> {
        let name = s.get_ref();
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            self.error(
                K::BadName {
                    kind,
                    name: name.clone(),
                },
                Some(s.span()),
            );
            return None;
        }
        if name.len() > 15 {
            self.diags.push(Diagnostic::warning(
                K::NameTooLong {
                    kind,
                    name: name.clone(),
                },
                Some(s.span()),
            ));
        }
        Some(name.clone())
    }

    fn code(&mut self, p: &raw::RawProgram, dir: &Path) -> Option<Code> {
        let (what, s, make): (_, _, fn(PathBuf) -> Code) = match (&p.source, &p.object) {
            (Some(s), None) => ("source file", s, Code::Source),
            (None, Some(o)) => ("object file", o, Code::Object),
            (a, b) => {
                self.error(
                    K::SourceAndObject {
                        program: p.name.get_ref().clone(),
                        found: usize::from(a.is_some()) + usize::from(b.is_some()),
                    },
                    Some(p.name.span()),
                );
                return None;
            }
        };
        let value = self.interp(s)?;
        if value.chars().any(char::is_control) {
            self.error(K::ControlChars { what, value }, Some(s.span()));
            return None;
        }
        let path = normalize(&dir.join(&value));
        if !(self.env.exists)(&path) {
            self.error(
                K::MissingFile {
                    what,
                    path: path.display().to_string(),
                },
                Some(s.span()),
            );
            return None;
        }
        Some(make(path))
    }

    fn prog_type(&mut self, s: &S) -> Option<ProgType> {
        let found = ProgType::parse(s.get_ref());
        if found.is_none() {
            let expected = ProgType::ALL
                .iter()
                .map(|t| t.word())
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                K::UnknownProgramType {
                    found: s.get_ref().clone(),
                    expected,
                },
                Some(s.span()),
            );
        }
        found
    }

    /// A pin path: absolute, plain characters, no `.`/`..`, unique, on bpffs.
    fn pin(&mut self, s: &S, seen: &mut BTreeMap<String, usize>) -> Option<String> {
        let pin = normal_path(&self.interp(s)?);
        let span = Some(s.span());
        if let Err(kind) = check_pin(&pin, self.env.host) {
            self.error(kind, span);
            return None;
        }
        if let Some(first) = seen.get(&pin) {
            self.error(
                K::DuplicatePin {
                    pin,
                    first_line: *first,
                },
                span,
            );
            return None;
        }
        seen.insert(pin.clone(), self.line(s));
        Some(pin)
    }

    fn attachment(
        &mut self,
        a: &RawAttach,
        span: Range<usize>,
        programs: &BTreeMap<&str, &raw::RawProgram>,
        owners: &BTreeMap<&str, &str>,
    ) -> Option<Attachment> {
        let program = programs.get(a.program.get_ref().as_str()).copied();
        if program.is_none() {
            self.error(
                K::UnknownProgram(a.program.get_ref().clone()),
                Some(a.program.span()),
            );
        }
        let kind_name = a.attach_type.get_ref().as_str();
        let Some(kind) = AttachKind::parse(kind_name) else {
            let mut all: Vec<&str> = AttachKind::ALL.iter().map(|k| k.word()).collect();
            all.sort_unstable();
            self.error(
                K::UnknownAttachType {
                    found: kind_name.to_string(),
                    expected: all.join(", "),
                },
                Some(a.attach_type.span()),
            );
            return None;
        };
        // Compatibility with the program's type (when that type is known).
        if let Some(p) = program
            && let Some(t) = ProgType::parse(p.prog_type.get_ref())
            && !t.attach_kinds().contains(&kind)
        {
            self.error(
                K::IncompatibleAttach {
                    program: p.name.get_ref().clone(),
                    prog_type: t.word().to_string(),
                    attach_type: kind.to_string(),
                    expected: t
                        .attach_kinds()
                        .iter()
                        .map(|k| k.word())
                        .collect::<Vec<_>>()
                        .join(", "),
                    // The program type that does attach so, if any (a
                    // `cgroup/sock` program meant for post_bind4, say).
                    instead: ProgType::ALL
                        .iter()
                        .find(|o| o.attach_kinds().contains(&kind))
                        .map(|o| o.word().to_string()),
                },
                Some(a.attach_type.span()),
            );
        }

        let targets: Vec<(&S, TargetKind)> = [
            (&a.cgroup, TargetKind::Cgroup),
            (&a.map, TargetKind::Map),
            (&a.interface, TargetKind::Interface),
        ]
        .into_iter()
        .filter_map(|(t, k)| t.as_ref().map(|t| (t, k)))
        .collect();
        let [(target, target_kind)] = targets[..] else {
            self.error(
                K::AttachTarget {
                    found: targets.len(),
                },
                Some(span),
            );
            return None;
        };
        let expected = kind.target();
        if expected != target_kind {
            self.error(
                K::AttachTargetKind {
                    attach_type: kind.to_string(),
                    target: target_kind.describe(),
                    expected: expected.describe(),
                },
                Some(target.span()),
            );
            return None;
        }
        if let Some(mode) = &a.mode
            && target_kind != TargetKind::Interface
        {
            self.error(K::XdpModeWithoutXdp, Some(mode.span()));
        }
        let point = match target_kind {
            TargetKind::Cgroup => AttachPoint::Cgroup {
                path: CgroupPath(self.cgroup(target)?),
                kind,
            },
            TargetKind::Map => self.map_point(target, kind, program, owners)?,
            TargetKind::Interface => self.xdp_point(target, a.mode.as_ref())?,
        };
        Some(Attachment {
            program: ProgName(a.program.get_ref().clone()),
            point,
        })
    }

    /// A map target: a map of this manifest that the program creates or
    /// reuses.
    fn map_point(
        &mut self,
        target: &S,
        kind: AttachKind,
        program: Option<&raw::RawProgram>,
        owners: &BTreeMap<&str, &str>,
    ) -> Option<AttachPoint> {
        let map = target.get_ref();
        let Some(owner) = owners.get(map.as_str()) else {
            self.error(K::UnknownMap(map.clone()), Some(target.span()));
            return None;
        };
        if let Some(p) = program {
            let reuses = p.maps.iter().any(|m| m.get_ref() == map);
            if *owner != p.name.get_ref() && !reuses {
                self.error(
                    K::MapNotReused {
                        program: p.name.get_ref().clone(),
                        map: map.clone(),
                        owner: owner.to_string(),
                    },
                    Some(target.span()),
                );
            }
        }
        Some(AttachPoint::Map {
            map: MapName(map.clone().into()),
            kind,
        })
    }

    /// An interface target, with its XDP mode.
    fn xdp_point(&mut self, target: &S, mode: Option<&S>) -> Option<AttachPoint> {
        let iface = self.interp(target)?;
        let valid = (1..=15).contains(&iface.len())
            && iface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !valid {
            self.error(K::BadInterface(iface), Some(target.span()));
            return None;
        }
        let mode = match mode {
            None => XdpMode::Auto,
            Some(m) => {
                let value = self.interp(m)?;
                let Some(mode) = XdpMode::parse(&value) else {
                    self.error(K::UnknownXdpMode(value), Some(m.span()));
                    return None;
                };
                mode
            }
        };
        Some(AttachPoint::Xdp {
            iface: IfaceName(iface),
            mode,
        })
    }

    /// A cgroup v2 directory; `auto` means the cgroup v2 mount itself.
    fn cgroup(&mut self, s: &S) -> Option<String> {
        let value = self.interp(s)?;
        let span = Some(s.span());
        let path = if value == "auto" {
            match &self.env.host.cgroup2 {
                Some(p) => p.display().to_string(),
                None => {
                    self.error(K::NoCgroup2, span);
                    return None;
                }
            }
        } else {
            normal_path(&value)
        };
        let reason = check_cgroup(&path, self.env.host).err();
        if let Some(reason) = reason {
            self.error(K::CgroupPath { path, reason }, span);
            return None;
        }
        Some(path)
    }
}

/// A path spelled once: doubled slashes collapsed and a trailing one
/// dropped (`/sys/fs/cgroup/x/` and `/sys/fs/cgroup//x` are
/// `/sys/fs/cgroup/x`), so what is compared with the kernel and the record
/// is one spelling. `.` and `..` stay, for the rules to refuse.
pub fn normal_path(p: &str) -> String {
    if !p.starts_with('/') {
        return p.to_string();
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// The rules for a pin path: absolute, plain characters, no `.`/`..` or
/// empty components, below a bpffs mount (or /sys/fs/bpf, which apply
/// mounts), and no `.` in any name below the mount (bpffs refuses those;
/// dots are kept for the kernel's own files, like maps.debug). Records are
/// held to the same rules when read back.
pub fn check_pin(pin: &str, host: &HostFacts) -> Result<(), K> {
    if !pin
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
    {
        return Err(K::PinBadChars(pin.to_string()));
    }
    if !pin.starts_with('/') {
        return Err(K::PinNotAbsolute(pin.to_string()));
    }
    if pin
        .split('/')
        .skip(1)
        .any(|c| c == "." || c == ".." || c.is_empty())
    {
        return Err(K::PinDotDot(pin.to_string()));
    }
    let path = Path::new(pin);
    let on_default = path.starts_with(DEFAULT_BPFFS) && path != Path::new(DEFAULT_BPFFS);
    let mount = host.bpffs_for(path).filter(|m| *m != path);
    let below = mount
        .or(on_default.then_some(Path::new(DEFAULT_BPFFS)))
        .and_then(|m| path.strip_prefix(m).ok());
    if let Some(name) = below.and_then(|rest| {
        rest.components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .find(|c| c.contains('.'))
    }) {
        return Err(K::PinDot {
            pin: pin.to_string(),
            name,
        });
    }
    if !on_default && mount.is_none() {
        let mut mounts: Vec<String> = host.bpffs.iter().map(|m| m.display().to_string()).collect();
        if !mounts.iter().any(|m| m == DEFAULT_BPFFS) {
            mounts.insert(0, DEFAULT_BPFFS.to_string());
        }
        return Err(K::PinOutsideBpffs {
            pin: pin.to_string(),
            mounts: format!("bpffs: {}", mounts.join(", ")),
        });
    }
    Ok(())
}

/// The rules for a cgroup path (after `auto` is resolved): absolute, no
/// control characters, no `.`/`..` components, under the cgroup v2 mount.
pub fn check_cgroup(path: &str, host: &HostFacts) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        Err("must be absolute")
    } else if path.chars().any(char::is_control) {
        Err("must not hold control characters")
    } else if path.split('/').any(|c| c == "." || c == "..") {
        Err("must not contain `.` or `..` components")
    } else if let Some(root) = &host.cgroup2
        && !Path::new(path).starts_with(root)
    {
        Err("is not under the cgroup v2 mount")
    } else {
        Ok(())
    }
}

/// A cycle among programs through reused maps, as `a -> b -> a`: an
/// iterative depth-first search, linear in programs and reused maps (a long
/// chain of programs neither recurses nor revisits).
fn find_cycle(raw: &RawManifest, owners: &BTreeMap<&str, &str>) -> Option<(String, Range<usize>)> {
    let index: BTreeMap<&str, usize> = raw
        .programs
        .iter()
        .enumerate()
        .rev() // the first of duplicate names wins
        .map(|(i, p)| (p.get_ref().name.get_ref().as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = raw
        .programs
        .iter()
        .map(|p| {
            let p = p.get_ref();
            p.maps
                .iter()
                .filter_map(|m| owners.get(m.get_ref().as_str()))
                .filter(|o| **o != p.name.get_ref())
                .filter_map(|o| index.get(o).copied())
                .collect()
        })
        .collect();
    // 0: not seen, 1: on the current path, 2: done (no cycle through it).
    let mut color = vec![0u8; deps.len()];
    for root in 0..deps.len() {
        if color[root] != 0 {
            continue;
        }
        // The current path, each with the index of its next dependency.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(&dep) = deps[node].get(*next) else {
                color[node] = 2;
                stack.pop();
                continue;
            };
            *next += 1;
            match color[dep] {
                0 => {
                    color[dep] = 1;
                    stack.push((dep, 0));
                }
                1 => {
                    let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut names: Vec<&str> = stack[from..]
                        .iter()
                        .map(|(n, _)| raw.programs[*n].get_ref().name.get_ref().as_str())
                        .collect();
                    names.push(raw.programs[dep].get_ref().name.get_ref().as_str());
                    let span = raw.programs[dep].get_ref().name.span();
                    return Some((names.join(" -> "), span));
                }
                _ => {}
            }
        }
    }
    None
}

/// Encode an entry's key or value: a number (native byte order, as the BPF
/// program reads it) or an address; the error says what was expected.
/// An entry's key or value, encoded as the map stores it (at most 16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Encoded {
    bytes: [u8; 16],
    len: u8,
}

impl Encoded {
    fn of(b: &[u8]) -> Encoded {
        let mut bytes = [0u8; 16];
        bytes[..b.len()].copy_from_slice(b);
        Encoded {
            bytes,
            len: b.len() as u8,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

fn encode(ty: ScalarType, v: &raw::Scalar) -> Result<Encoded, String> {
    use raw::Scalar;
    let int = |max: u64| -> Result<u64, String> {
        let n = match v {
            Scalar::Int(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative"))?,
            Scalar::Str(s) => s
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not a number"))?,
        };
        if n > max {
            return Err(format!("{n} does not fit (at most {max})"));
        }
        Ok(n)
    };
    Ok(match ty {
        ScalarType::U8 => Encoded::of(&[int(u8::MAX.into())? as u8]),
        ScalarType::U16 => Encoded::of(&(int(u16::MAX.into())? as u16).to_ne_bytes()),
        ScalarType::U32 => Encoded::of(&(int(u32::MAX.into())? as u32).to_ne_bytes()),
        ScalarType::U64 => Encoded::of(&int(u64::MAX)?.to_ne_bytes()),
        ScalarType::Ip => {
            let Scalar::Str(s) = v else {
                return Err("an address is a string, like \"198.18.0.1\" or \"::1\"".into());
            };
            match s.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => Encoded::of(&a.to_ipv6_mapped().octets()),
                Ok(std::net::IpAddr::V6(a)) => Encoded::of(&a.octets()),
                Err(_) => return Err(format!("`{s}` is not an IP address")),
            }
        }
    })
}

/// Lexically remove `.` and resolve `..` against earlier components, so
/// `manifests/../bpf/x.c` reads `bpf/x.c` in plans.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    out.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn norm(input: &str, want: &str) {
        assert_eq!(normalize(Path::new(input)), PathBuf::from(want));
    }

    #[test]
    fn paths_are_spelled_once() {
        assert_eq!(normal_path("/sys/fs/cgroup/x/"), "/sys/fs/cgroup/x");
        assert_eq!(normal_path("/sys/fs//cgroup///x"), "/sys/fs/cgroup/x");
        assert_eq!(normal_path("/"), "/");
        assert_eq!(normal_path("/a/./b"), "/a/./b");
        assert_eq!(normal_path("relative/"), "relative/");
        let c = check(
            "[vars]\npin_dir = \"/sys/fs/bpf/t/\"\n[[program]]\nname = \"p\"\nobject = \"p.o\"\ntype = \"xdp\"\npin = \"${pin_dir}/p\"\n",
            &[],
        )
        .unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(c.model.programs[0].pin.as_str(), "/sys/fs/bpf/t/p");
    }

    #[test]
    fn normalizes() {
        norm("manifests/../bpf/x.c", "bpf/x.c");
        norm("./a/./b", "a/b");
        norm("../a", "../a");
        norm("/../a", "/a");
        norm("a/b/../../../c", "../c");
    }

    fn check(text: &str, overrides: &[(&str, &str)]) -> Result<Checked, Vec<Diagnostic>> {
        let host = HostFacts {
            cgroup2: Some(PathBuf::from("/sys/fs/cgroup")),
            bpffs: vec![PathBuf::from("/sys/fs/bpf")],
        };
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = Env {
            host: &host,
            overrides: &overrides,
            exists: &|_| true,
        };
        validate(&Source::new(Path::new("m.toml"), text.to_string()), &env)
    }

    #[track_caller]
    fn interp_case(value: &str, want: Result<&str, &str>) {
        let text = format!(
            "[vars]\nd = \"/sys/fs/bpf/t\"\n[[program]]\nname = \"p\"\nobject = \"p.o\"\ntype = \"xdp\"\npin = \"{value}\"\n"
        );
        match (check(&text, &[]), want) {
            (Ok(c), Ok(w)) => assert_eq!(c.model.programs[0].pin.as_str(), w),
            (Err(d), Err(w)) => assert_eq!(d[0].kind.to_string(), w),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn interpolation() {
        interp_case("${d}/x", Ok("/sys/fs/bpf/t/x"));
        // A doubled slash is one spelling of a path, not an empty name.
        interp_case("${d}/${d}", Ok("/sys/fs/bpf/t/sys/fs/bpf/t"));
        interp_case(
            "${e}/x",
            Err("unknown variable `e`; declare it in `[vars]` with a default"),
        );
        interp_case("${d", Err("unterminated `${`; write `$${` for a literal"));
        interp_case(
            "/sys/fs/bpf/a$b",
            Err(
                "pin path `/sys/fs/bpf/a$b` may hold only ASCII letters, digits, `_`, `-`, `.` and `/`",
            ),
        );
    }

    #[test]
    fn overrides_replace_defaults_and_unknown_ones_fail() {
        let text = "[vars]\nd = \"/sys/fs/bpf\"\n[[program]]\nname = \"p\"\nobject = \"p.o\"\ntype = \"xdp\"\npin = \"${d}/p\"\n";
        let c = check(text, &[("d", "/sys/fs/bpf/other")]).expect("valid");
        assert_eq!(c.model.programs[0].pin.as_str(), "/sys/fs/bpf/other/p");
        let e = check(text, &[("x", "1")]).expect_err("unknown override");
        assert!(matches!(e[0].kind, K::UnknownVarOverride(ref n) if n == "x"));
    }

    #[test]
    fn unknown_variable_caret_points_inside_the_string() {
        let text = "[[program]]\nname = \"p\"\nobject = \"p.o\"\ntype = \"xdp\"\npin = \"/sys/fs/bpf/${nope}\"\n";
        let e = check(text, &[]).expect_err("unknown var");
        let span = e[0].span.clone().expect("span");
        assert_eq!(&text[span], "${nope}");
    }
}
