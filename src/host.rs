//! Facts about this host that the manifest depends on (the cgroup v2 and bpffs
//! mounts), read once from `/proc/self/mountinfo` before validation.

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

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
