//! The manifest: TOML text → raw serde structs (spans kept) → a validated,
//! typed model, with every problem located in the file.

pub mod diag;
mod lift;
pub mod model;
pub(crate) mod raw;
pub mod validate;

use std::path::Path;

use crate::host::HostFacts;
use diag::Source;
use model::Model;

/// A manifest that validated, with its warnings rendered for stderr.
#[derive(Debug)]
pub struct Loaded {
    pub model: Model,
    pub warnings: Vec<String>,
}

/// Why a manifest could not be used; every message is ready for stderr.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Unreadable(String),
    /// It did not validate: the rendered diagnostics and how many are errors.
    Invalid {
        rendered: Vec<String>,
        errors: usize,
    },
}

/// Read and validate a manifest against this host's facts. It is held to
/// the trust rule of every input root reads (`trust::input`): refused when
/// others can write it, read with a warning when another user owns it; a
/// FIFO, device or directory is refused at once, never waited on.
pub fn load(path: &Path, vars: &[(String, String)], host: &HostFacts) -> Result<Loaded, LoadError> {
    let unreadable = |e: std::io::Error| {
        LoadError::Unreadable(format!("cannot read manifest {}: {e}", path.display()))
    };
    let (bytes, trust_warning) = crate::kernel::remember::trust::read_input(path, "manifest")
        .map_err(|e| match e.raw_os_error() {
            // The trust rule's refusal says all there is to say.
            None if e.kind() == std::io::ErrorKind::PermissionDenied => {
                LoadError::Unreadable(e.to_string())
            }
            _ => unreadable(e),
        })?;
    let trust_warning = trust_warning.map(|w| format!("warning: {w}"));
    let text = String::from_utf8(bytes).map_err(|_| {
        LoadError::Unreadable(format!("manifest {} is not UTF-8 text", path.display()))
    })?;
    // Plans and records name the manifest and its sources by canonical
    // paths: where bpfplan runs from never changes what they mean.
    let canonical = std::fs::canonicalize(path).map_err(unreadable)?;
    let src = Source::new(&canonical, text).shown_as(path);
    let env = validate::Env {
        host,
        overrides: vars,
        exists: &|p: &Path| p.is_file(),
    };
    match validate::validate(&src, &env) {
        Ok(checked) => Ok(Loaded {
            warnings: trust_warning
                .into_iter()
                .chain(checked.warnings.iter().map(|w| src.render(w)))
                .collect(),
            model: checked.model,
        }),
        Err(diags) => Err(LoadError::Invalid {
            errors: diags.iter().filter(|d| d.is_error()).count(),
            rendered: trust_warning
                .into_iter()
                .chain(diags.iter().map(|d| src.render(d)))
                .collect(),
        }),
    }
}

/// A finding about the `index`th entry of map `map`, rendered as the
/// manifest's other errors are (`--> file:line:col`, the line, a caret),
/// from the manifest file itself; the bare message when it cannot be
/// located there (the file changed since).
pub fn entry_diagnostic(
    path: &Path,
    map: &str,
    index: usize,
    kind: diag::ManifestErrorKind,
) -> String {
    let located = std::fs::read_to_string(path).ok().and_then(|text| {
        let raw = raw::parse(&text).ok()?;
        let entries = raw
            .maps
            .iter()
            .find(|m| m.get_ref().name.get_ref() == map)?
            .get_ref()
            .entries
            .as_ref()?;
        let span = entries
            .get_ref()
            .get(index)
            .map_or_else(|| entries.span(), |e| e.span());
        Some((Source::new(path, text), span))
    });
    match located {
        Some((src, span)) => src.render(&diag::Diagnostic::error(kind, Some(span))),
        None => format!("error: {kind}"),
    }
}
