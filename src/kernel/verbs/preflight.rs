//! Checks that change nothing, made before any step runs: privileges, the
//! tools a plan needs, that every cgroup is a cgroup v2 directory and every
//! interface exists; and bpffs, mounted (private to root) where none is.

use anyhow::{Context, Result, bail};
use std::path::Path;

use crate::host::{DEFAULT_BPFFS, HostFacts, check_privileges};
use crate::kernel::act::cmd;
use crate::kernel::remember::trust;
use crate::plan::Plan;
use crate::plan::step::{AttachPoint, Step};

/// Before apply: any failure here leaves the kernel as it was. `builds`:
/// whether apply compiles (not when it loads reviewed objects). Returns the
/// warnings of the trust rule about the inputs (for the executor to tell).
pub(crate) fn apply(plan: &Plan, builds: bool) -> Result<Vec<String>> {
    check_privileges()?;
    tool("bpftool")?;
    // Objects already built into the cache need no compiler (at boot, say).
    if builds && !crate::kernel::remember::build::stale_compiles(plan).is_empty() {
        tool("clang")?;
    }
    for a in &plan.spec.attachments {
        match &a.point {
            AttachPoint::Cgroup { cgroup, .. } => check_cgroup2(Path::new(cgroup.as_str()))?,
            AttachPoint::Xdp { iface, .. }
                if !Path::new("/sys/class/net").join(iface.as_str()).exists() =>
            {
                bail!("interface {iface} does not exist");
            }
            _ => {}
        }
    }
    for p in &plan.spec.programs {
        if p.source.is_none() && !p.object.is_file() {
            bail!("object file {} does not exist", p.object.display());
        }
    }
    if builds { inputs(plan) } else { Ok(Vec::new()) }
}

/// The trust rule over what a build reads: every source, every prebuilt
/// object, and the headers an object's last compile read (from its
/// depfile; a new compile's are checked after it, by `headers`).
pub(crate) fn inputs(plan: &Plan) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for p in &plan.spec.programs {
        let checked = match &p.source {
            Some(source) => trust::input_path(source, "source")?,
            None => trust::input_path(&p.object, "object")?,
        };
        warnings.extend(checked);
        if p.source.is_some() {
            warnings.extend(headers(&p.object)?);
        }
    }
    warnings.dedup();
    Ok(warnings)
}

/// The trust rule over every file the compile of `object` read, as its
/// depfile lists them (none when there is no depfile yet).
pub(crate) fn headers(object: &Path) -> Result<Vec<String>> {
    let Ok(deps) = std::fs::read_to_string(object.with_extension("d")) else {
        return Ok(Vec::new());
    };
    let mut warnings = Vec::new();
    for file in crate::kernel::remember::build::parse_depfile(&deps) {
        // A header that is gone makes the object stale: clang says so.
        if Path::new(&file).is_file() {
            warnings.extend(trust::input_path(Path::new(&file), "header")?);
        }
    }
    Ok(warnings)
}

/// Before destroy and status: root and bpftool.
pub(crate) fn inspect() -> Result<()> {
    check_privileges()?;
    tool("bpftool")
}

fn tool(name: &str) -> Result<()> {
    if which::which(name).is_err() {
        let package = if name == "clang" {
            "clang libbpf-dev"
        } else {
            name
        };
        bail!("`{name}` not found in PATH: run `make deps` (apt-get install {package})");
    }
    Ok(())
}

/// The mount apply must make first, if any: bpffs at its conventional
/// place when a pin needs it and no bpffs is there. Never over a bpffs that
/// is there already: each mount is a fresh, empty instance that would hide
/// the pins.
pub(crate) fn bpffs_mount(plan: &Plan) -> Result<Option<Step>> {
    let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    let needed = crate::kernel::remember::record::pin_dirs(plan)
        .iter()
        .any(|d| host.bpffs_for(d).is_none() && d.starts_with(DEFAULT_BPFFS));
    Ok(needed.then(|| Step::MountBpffs {
        dir: DEFAULT_BPFFS.into(),
    }))
}

/// Every pin directory is on a bpf filesystem.
pub(crate) fn on_bpffs(plan: &Plan) -> Result<()> {
    let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    for dir in crate::kernel::remember::record::pin_dirs(plan) {
        let Some(bpffs) = host.bpffs_for(&dir) else {
            bail!("pin directory {} is not on a bpf filesystem", dir.display());
        };
        trust::pin_dir(&dir, bpffs)?;
    }
    Ok(())
}

/// Mount bpffs at /sys/fs/bpf unless one is there (for the sandbox).
pub(crate) fn mount_bpffs(host: &HostFacts) -> Result<()> {
    if host.bpffs.iter().any(|m| m == Path::new(DEFAULT_BPFFS)) {
        return Ok(());
    }
    let step = Step::MountBpffs {
        dir: DEFAULT_BPFFS.into(),
    };
    let argv: Vec<String> = step
        .argv()
        .into_iter()
        .filter_map(|a| match a {
            crate::plan::step::Arg::Lit(s) => Some(s),
            crate::plan::step::Arg::MapId { .. } => None,
        })
        .collect();
    cmd::run_checked(&argv, None).context("mounting bpffs")?;
    Ok(())
}

fn check_cgroup2(path: &Path) -> Result<()> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("cgroup path holds a NUL byte")?;
    // SAFETY: statfs fills a plain C struct; `c` is a valid C string and
    // `buf` a zeroed, writable statfs.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cgroup {} cannot be used: {e}", path.display());
    }
    #[allow(clippy::unnecessary_cast)]
    if buf.f_type as i64 != CGROUP2_SUPER_MAGIC || !path.is_dir() {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(())
}
