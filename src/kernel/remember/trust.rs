//! What root trusts, in one place, after sshd's StrictModes.
//!
//! - Directories and files root keeps for itself (state, journal, build
//!   cache, audit log, object store) are trusted only when root made them:
//!   owned by root, not writable by group or others, not symlinks, and no
//!   directory above them is writable by anyone but root unless it is
//!   sticky (like `/tmp`).
//! - An input root reads (manifest, source, header, prebuilt object) is
//!   refused when anyone but its owner and root can change it: the file, or
//!   a directory above it without the sticky bit, writable by group or
//!   others. A file (or a directory above it) owned by another user is
//!   read, with a warning that names the user and reaches the audit log.
//! - A pin directory bpfplan did not create must be root's and not writable
//!   by others: whoever can write it can rename root's pins.
//!
//! A user who can write `/tmp` therefore cannot plant a record, an object or
//! a pin directory that root acts on.

use anyhow::{Context, Result, bail};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// A file root keeps for itself (the audit log, say), open already: a
/// regular file of root's that no one else can write.
pub(crate) fn private_file(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    check_meta(path, meta, "file")
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
    // Whoever can write a directory above can swap this one for their own,
    // unless that directory is sticky (like /tmp).
    for above in dirs_above(dir) {
        if let Ok(pm) = fs::metadata(&above)
            && pm.mode() & 0o1000 == 0
        {
            check_meta(&above, &pm, &format!("a directory above the {what}"))?;
        }
    }
    Ok(())
}

/// Read a file of a private directory, refusing a symlink or a file that
/// someone other than root could have written. `None` when it is missing.
pub(crate) fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    let Some(file) = open_private(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    (&file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(bytes))
}

/// `read_private`'s file, open and checked, to read a part of (the end of
/// an audit log of a million lines).
pub(crate) fn open_private(path: &Path) -> Result<Option<fs::File>> {
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
    Ok(Some(file))
}

/// Write a file of a private directory atomically (a temporary file, then
/// rename), mode 0600: a kill leaves the old file or the new one. No fsync:
/// what is written here describes kernel objects that a crash of the
/// machine takes with it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_private_with(path, |w| Ok(w.write_all(bytes)?))
}

/// `write_private`, the contents written by `fill` as they are made (a
/// record of a million entries is not first held as bytes).
pub(crate) fn write_private_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a file without a directory")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".bpfplan-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("writing in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()?;
    }
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
    write_new_mode(path, bytes, 0o600)
}

/// `write_new`, readable by others as `mode` says (a metrics file that
/// node_exporter, not root, reads).
pub(crate) fn write_new_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    refuse_link(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".bpfplan-")
        .permissions(fs::Permissions::from_mode(mode))
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

/// The effective uid: a file of one's own is as trusted as root's.
fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// Every directory above `path`, nearest first: those its name passes
/// through and, when a link is on the way, those of where it leads.
fn dirs_above(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: &Path| {
        for d in p.ancestors().skip(1) {
            if !d.as_os_str().is_empty() && !out.iter().any(|o| o == d) {
                out.push(d.to_path_buf());
            }
        }
    };
    if let Ok(abs) = std::path::absolute(path) {
        add(&abs);
    }
    if let Ok(real) = fs::canonicalize(path) {
        add(&real);
    }
    out
}

/// The warning for an input another user controls.
fn foreign(what: &str, path: &Path, holder: &Path, uid: u32) -> String {
    let whose = if holder == path {
        "is owned by".to_string()
    } else {
        format!("is in {}, owned by", holder.display())
    };
    format!(
        "{what} {} {whose} {} (uid {uid}): bpfplan reads it, but that user can change what \
         root runs; `chown root:` it to trust it",
        path.display(),
        crate::kernel::remember::audit::user_name(uid),
    )
}

/// The one rule for an input root reads (manifest, source, header, object,
/// saved plan), given the file's own metadata (from the open file, so it
/// is the file read). Refused when group or others can write it or a
/// directory above it that is not sticky; `Some(warning)` when another
/// user owns it or such a directory.
pub(crate) fn input(path: &Path, meta: &fs::Metadata, what: &str) -> Result<Option<String>> {
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{what} {} is writable by group or others (mode {:o}): anyone who can write it \
             decides what root runs; `chmod go-w {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    let mut warning = (!trusted_owner(meta.uid())).then(|| foreign(what, path, path, meta.uid()));
    for dir in dirs_above(path) {
        let Ok(dm) = fs::metadata(&dir) else { continue };
        let sticky = dm.mode() & 0o1000 != 0;
        if dm.mode() & 0o022 != 0 && !sticky {
            bail!(
                "{what} {}: the directory {} above it is writable by group or others (mode \
                 {:o}) and not sticky, so anyone who can write it can replace the file; \
                 `chmod go-w {}` or move the file",
                path.display(),
                dir.display(),
                dm.mode() & 0o7777,
                dir.display()
            );
        }
        if warning.is_none() && !trusted_owner(dm.uid()) {
            warning = Some(foreign(what, path, &dir, dm.uid()));
        }
    }
    Ok(warning)
}

/// `input` for a path not yet open (a source, a header, an object).
pub(crate) fn input_path(path: &Path, what: &str) -> Result<Option<String>> {
    let meta = fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    input(path, &meta, what)
}

/// Read an input whole, under the rule: a FIFO, device or directory is
/// refused at once (opened without blocking), never waited on. Returns the
/// bytes and the warning, if any.
pub(crate) fn read_input(path: &Path, what: &str) -> std::io::Result<(Vec<u8>, Option<String>)> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let warning = input(path, &meta, what)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{e}")))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok((bytes, warning))
}

/// A pin directory bpfplan acts in, from below its bpf filesystem's root
/// (`bpffs`) down to `dir`: each part that exists must be a directory of
/// root's that no one else can write, or another user could rename root's
/// pins (so destroy would miss them) or plant their own. The bpffs root
/// itself may be writable when it is sticky.
pub(crate) fn pin_dir(dir: &Path, bpffs: &Path) -> Result<()> {
    let rm = fs::symlink_metadata(bpffs)
        .with_context(|| format!("reading the bpf filesystem {}", bpffs.display()))?;
    if rm.mode() & 0o022 != 0 && rm.mode() & 0o1000 == 0 {
        bail!(
            "the bpf filesystem {} is writable by group or others (mode {:o}) and not sticky: \
             anyone could rename root's pins; `chmod go-w {}`",
            bpffs.display(),
            rm.mode() & 0o7777,
            bpffs.display()
        );
    }
    let Ok(below) = dir.strip_prefix(bpffs) else {
        bail!(
            "pin directory {} is not under {}",
            dir.display(),
            bpffs.display()
        );
    };
    let mut at = bpffs.to_path_buf();
    for part in below.components() {
        at.push(part);
        let meta = match fs::symlink_metadata(&at) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", at.display())),
            Ok(m) => m,
        };
        if meta.file_type().is_symlink() {
            bail!(
                "pin directory {}: {} is a symbolic link: bpfplan does not follow it",
                dir.display(),
                at.display()
            );
        }
        if !meta.is_dir() {
            bail!(
                "pin directory {}: {} is not a directory",
                dir.display(),
                at.display()
            );
        }
        if meta.uid() != 0 {
            bail!(
                "pin directory {}: {} is owned by {} (uid {}), not root: bpfplan did not \
                 create it, and its owner could rename root's pins; remove it, or `chown \
                 root: {}` if it is yours to trust",
                dir.display(),
                at.display(),
                crate::kernel::remember::audit::user_name(meta.uid()),
                meta.uid(),
                at.display()
            );
        }
        if meta.mode() & 0o022 != 0 {
            bail!(
                "pin directory {}: {} is writable by group or others (mode {:o}): anyone \
                 could rename root's pins; `chmod go-w {}`",
                dir.display(),
                at.display(),
                meta.mode() & 0o7777,
                at.display()
            );
        }
    }
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

    fn chown(path: &Path, uid: u32) -> bool {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; -1 keeps the group.
        unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) == 0 }
    }

    fn mode(path: &Path, m: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn an_input_others_can_write_is_refused_and_one_another_user_owns_warned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        fs::create_dir(&dir).unwrap();
        mode(&dir, 0o755);
        let f = dir.join("bypass.toml");
        fs::write(&f, "x").unwrap();
        mode(&f, 0o644);
        assert_eq!(input_path(&f, "manifest").unwrap(), None);

        mode(&f, 0o666);
        let e = format!("{:#}", input_path(&f, "manifest").unwrap_err());
        assert!(
            e.contains("is writable by group or others (mode 666)"),
            "{e}"
        );
        assert!(e.contains("chmod go-w"), "{e}");
        mode(&f, 0o644);

        // A directory above, writable and not sticky: the file can be swapped.
        mode(&dir, 0o777);
        let e = format!("{:#}", input_path(&f, "manifest").unwrap_err());
        assert!(
            e.contains(&format!("the directory {} above it", dir.display())),
            "{e}"
        );
        // Sticky (like /tmp), others cannot rename what is not theirs.
        mode(&dir, 0o1777);
        assert_eq!(input_path(&f, "manifest").unwrap(), None);
        mode(&dir, 0o755);

        // Through a link, where the link leads is held to the rule too.
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        mode(&open, 0o777);
        let target = open.join("real.toml");
        fs::write(&target, "x").unwrap();
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(input_path(&link, "manifest").is_err());

        if euid() != 0 {
            eprintln!("not root: the ownership half of this test is skipped");
            return;
        }
        // 65534 is `nobody` on Debian.
        assert!(chown(&f, 65534));
        let w = input_path(&f, "manifest").unwrap().expect("a warning");
        assert!(w.contains("is owned by nobody (uid 65534)"), "{w}");
        assert!(chown(&f, 0) && chown(&dir, 65534));
        let w = input_path(&f, "manifest").unwrap().expect("a warning");
        assert!(
            w.contains(&format!("is in {}, owned by nobody", dir.display())),
            "{w}"
        );
    }

    #[test]
    fn a_pin_directory_must_be_roots_and_closed_to_others() {
        let tmp = tempfile::tempdir().unwrap();
        let fs_root = tmp.path();
        let dir = fs_root.join("team").join("bypass");
        // Missing parts are bpfplan's to create.
        pin_dir(&dir, fs_root).unwrap();
        fs::create_dir_all(&dir).unwrap();
        mode(&fs_root.join("team"), 0o700);
        mode(&dir, 0o700);
        pin_dir(&dir, fs_root).unwrap();

        mode(&fs_root.join("team"), 0o777);
        let e = format!("{:#}", pin_dir(&dir, fs_root).unwrap_err());
        assert!(
            e.contains("team is writable by group or others (mode 777)"),
            "{e}"
        );
        // Sticky does not help below the root: another user could still plant
        // the name of a pin.
        mode(&fs_root.join("team"), 0o1777);
        assert!(pin_dir(&dir, fs_root).is_err());
        mode(&fs_root.join("team"), 0o700);

        let other = fs_root.join("other");
        fs::create_dir(&other).unwrap();
        fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&other, &dir).unwrap();
        let e = format!("{:#}", pin_dir(&dir, fs_root).unwrap_err());
        assert!(e.contains("is a symbolic link"), "{e}");
        fs::remove_file(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        mode(&dir, 0o700);

        // The bpffs root may be open to all when it is sticky, not otherwise.
        mode(fs_root, 0o1777);
        pin_dir(&dir, fs_root).unwrap();
        mode(fs_root, 0o777);
        assert!(pin_dir(&dir, fs_root).is_err());
        mode(fs_root, 0o700);

        if euid() != 0 {
            eprintln!("not root: the ownership half of this test is skipped");
            return;
        }
        assert!(chown(&dir, 65534));
        let e = format!("{:#}", pin_dir(&dir, fs_root).unwrap_err());
        assert!(
            e.contains("is owned by nobody (uid 65534), not root"),
            "{e}"
        );
    }

    #[test]
    fn a_private_dir_under_a_directory_others_can_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        mode(&open, 0o777);
        // Not only the parent: any directory above.
        let state = open.join("a").join("state");
        fs::create_dir_all(state.parent().unwrap()).unwrap();
        mode(state.parent().unwrap(), 0o755);
        let e = format!("{:#}", private_dir(&state, "state directory").unwrap_err());
        assert!(
            e.contains(&format!(
                "a directory above the state directory {}",
                open.display()
            )),
            "{e}"
        );
    }
}
