//! The manifest: TOML text → raw serde structs (spans kept) → a validated,
//! typed model, with every problem located in the file.

pub mod diag;
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

/// Read and validate a manifest against this host's facts.
/// A regular file's text; a FIFO, device or directory is refused at once
/// (opened without blocking, then looked at), never waited on.
fn read_regular(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

pub fn load(path: &Path, vars: &[(String, String)], host: &HostFacts) -> Result<Loaded, LoadError> {
    let unreadable = |e: std::io::Error| {
        LoadError::Unreadable(format!("cannot read manifest {}: {e}", path.display()))
    };
    let text = read_regular(path).map_err(unreadable)?;
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
            warnings: checked.warnings.iter().map(|w| src.render(w)).collect(),
            model: checked.model,
        }),
        Err(diags) => Err(LoadError::Invalid {
            errors: diags.iter().filter(|d| d.is_error()).count(),
            rendered: diags.iter().map(|d| src.render(d)).collect(),
        }),
    }
}
