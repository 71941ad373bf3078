//! Directories and files root relies on (state, journal, build cache) are
//! trusted only when root made them: owned by root, not writable by group or
//! others, not symlinks. Anything else is refused with the reason, so a user
//! who can write `/tmp` cannot plant a record or an object that root acts on.

use anyhow::{Context, Result, bail};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Whether a file's owner and mode make it root's own.
fn check_meta(path: &Path, meta: &fs::Metadata, what: &str) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        bail!(
            "{what} {} is owned by uid {}, not by root: bpfplan does not trust it",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{what} {} is writable by group or others (mode {:o}): bpfplan does not trust it; \
             `chmod go-w` it or choose another",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Make sure `dir` is a private directory of root's: create it (mode 0700,
/// parents 0755) when missing, then refuse it unless it is a real directory
/// owned by root and not writable by group or others.
pub(crate) fn private_dir(dir: &Path, what: &str) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the {what} {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading the {what} {}", dir.display())),
        Ok(_) => {}
    }
    let meta = fs::symlink_metadata(dir)
        .with_context(|| format!("reading the {what} {}", dir.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "the {what} {} is a symbolic link: bpfplan does not follow it",
            dir.display()
        );
    }
    if !meta.is_dir() {
        bail!("the {what} {} is not a directory", dir.display());
    }
    check_meta(dir, &meta, &format!("the {what}"))?;
    // Whoever can write the parent can swap the directory for their own,
    // unless the parent is sticky (like /tmp).
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(pm) = fs::metadata(parent)
        && pm.mode() & 0o1000 == 0
    {
        check_meta(parent, &pm, &format!("the parent of the {what}"))?;
    }
    Ok(())
}

/// Read a file of a private directory, refusing a symlink or a file that
/// someone other than root could have written. `None` when it is missing.
pub(crate) fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
    // refused as not a regular file).
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!(
                "{} is a symbolic link: bpfplan does not follow it",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    check_meta(path, &meta, "file")?;
    let mut bytes = Vec::new();
    (&file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(bytes))
}

/// Write a file of a private directory atomically (a temporary file, then
/// rename), mode 0600: a kill leaves the old file or the new one. No fsync:
/// what is written here describes kernel objects that a crash of the
/// machine takes with it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a file without a directory")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".bpfplan-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("writing in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A symbolic link where root is to write is refused: root never writes
/// through a link someone else may have planted.
pub(crate) fn refuse_link(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symbolic link: bpfplan does not write through it (remove it, or choose \
             another path)",
            path.display()
        ),
        Ok(m) if !m.is_file() => {
            bail!("{} exists and is not a regular file", path.display())
        }
        _ => Ok(()),
    }
}

/// Write a file the way root must: a new file beside it (created, never
/// opened through a link), then renamed over the path (a rename replaces a
/// link planted meanwhile, it does not follow it).
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    refuse_link(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".bpfplan-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_never_writes_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let precious = tmp.path().join("precious");
        fs::write(&precious, "keep me").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let err = write_new(&link, b"plan").unwrap_err();
        assert!(format!("{err:#}").contains("is a symbolic link"), "{err:#}");
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep me");
        // A regular file is replaced whole, and nothing else is left beside it.
        let file = tmp.path().join("file");
        fs::write(&file, "old, and longer than the new").unwrap();
        write_new(&file, b"new").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        let mut names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["file", "link", "precious"]);
    }

    #[test]
    fn refuses_group_writable_and_symlinked_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("ok");
        private_dir(&ok, "state directory").unwrap();
        assert_eq!(fs::metadata(&ok).unwrap().mode() & 0o777, 0o700);

        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&open, "state directory").unwrap_err();
        assert!(
            format!("{e}").contains("writable by group or others"),
            "{e}"
        );

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        let e = private_dir(&link, "state directory").unwrap_err();
        assert!(format!("{e}").contains("symbolic link"), "{e}");
    }

    #[test]
    fn reads_only_private_files() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("r.json");
        write_private(&f, b"{}").unwrap();
        assert_eq!(read_private(&f).unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(read_private(&tmp.path().join("none")).unwrap(), None);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_private(&f).is_err());
        let link = tmp.path().join("l.json");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_private(&link).is_err());
    }
}
