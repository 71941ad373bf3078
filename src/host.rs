//! Facts about this host that bpfplan depends on: the cgroup v2 and bpffs
//! mounts (read from `/proc/self/mountinfo` before validation) and this
//! process's capabilities. Reads procfs only; starts no process.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The mount facts validation and preflight need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The first cgroup v2 mount (`/sys/fs/cgroup` or, on hybrid hosts,
    /// `/sys/fs/cgroup/unified`).
    pub cgroup2: Option<PathBuf>,
    /// Every bpffs mount point.
    pub bpffs: Vec<PathBuf>,
}

/// Where bpffs lives by convention, and where apply mounts it when absent.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

impl HostFacts {
    /// Read the facts of the running host.
    pub fn read() -> std::io::Result<HostFacts> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(HostFacts::from_mountinfo(&text))
    }

    /// Parse mountinfo(5): field 5 is the mount point, the file system type
    /// follows the ` - ` separator.
    pub fn from_mountinfo(text: &str) -> HostFacts {
        let mut facts = HostFacts::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let Some(fstype) = right.split(' ').next() else {
                continue;
            };
            let path = PathBuf::from(unescape(mount_point));
            match fstype {
                "cgroup2" if facts.cgroup2.is_none() => facts.cgroup2 = Some(path),
                "bpf" => facts.bpffs.push(path),
                _ => {}
            }
        }
        facts
    }

    /// The bpffs mount that holds `path`, if any (the deepest one).
    pub fn bpffs_for(&self, path: &Path) -> Option<&Path> {
        self.bpffs
            .iter()
            .filter(|m| path.starts_with(m))
            .max_by_key(|m| m.as_os_str().len())
            .map(PathBuf::as_path)
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// bpfplan needs CAP_SYS_ADMIN: CAP_BPF with CAP_NET_ADMIN loads and
/// attaches, but finding a program's maps by id (`bpftool map pin id`, and
/// bpfplan's own reads) needs CAP_SYS_ADMIN. Read from the effective set.
pub fn check_privileges() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = effective_caps(&status).context("no CapEff in /proc/self/status")?;
    if !has_bpf_privileges(caps) {
        bail!(
            "bpfplan needs root, or at least CAP_SYS_ADMIN (CAP_BPF and CAP_NET_ADMIN load and \
             attach, but looking maps and programs up by id needs CAP_SYS_ADMIN); effective \
             capabilities are {caps:#x}"
        );
    }
    Ok(())
}

/// The effective capability set from `/proc/self/status`.
pub fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether a capability set may do all bpfplan does (see `check_privileges`).
pub fn has_bpf_privileges(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN)
}

/// Whether a capability set holds CAP_BPF and CAP_NET_ADMIN (enough to load
/// and attach, not to look objects up by id).
pub fn has_bpf_and_net_admin(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_BPF) && has(CAP_NET_ADMIN)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:40 / /sys/fs/bpf rw,relatime - bpf bpf rw
51 22 0:41 / /run/my\\040bpf rw shared:5 - bpf none rw
";

    #[test]
    fn hybrid_layout() {
        let f = HostFacts::from_mountinfo(HYBRID);
        assert_eq!(f.cgroup2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            f.bpffs,
            vec![PathBuf::from("/sys/fs/bpf"), PathBuf::from("/run/my bpf")]
        );
        assert_eq!(
            f.bpffs_for(Path::new("/sys/fs/bpf/x/y")),
            Some(Path::new("/sys/fs/bpf"))
        );
        assert_eq!(f.bpffs_for(Path::new("/sys/fs/bpfx")), None);
    }

    #[test]
    fn unified_layout_and_nothing() {
        let f = HostFacts::from_mountinfo("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(f.cgroup2, Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(f.bpffs.is_empty());
        assert_eq!(HostFacts::from_mountinfo("garbage\n"), HostFacts::default());
    }

    #[track_caller]
    fn caps(status: &str, want: Option<bool>) {
        assert_eq!(effective_caps(status).map(has_bpf_privileges), want);
    }

    #[test]
    fn privileges() {
        caps("Name:\tx\nCapEff:\t000001ffffffffff\n", Some(true));
        caps("CapEff:\t0000000000200000\n", Some(true)); // CAP_SYS_ADMIN
        // CAP_BPF + CAP_NET_ADMIN: loads, but cannot look maps up by id.
        caps("CapEff:\t0000008000001000\n", Some(false));
        caps("CapEff:\t0000008000000000\n", Some(false)); // CAP_BPF alone
        caps("CapEff:\t0000000000000000\n", Some(false));
        caps("Name:\tx\n", None);
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
