//! A throwaway place to run a deployment in, for the benchmark and the
//! tests: a child cgroup v2 (with children of its own if asked) and a pin
//! directory on bpffs, both made here and removed on drop, even after a
//! failure. Only what it made is touched: its processes are killed, the
//! programs attached to its cgroups detached, the pins in its directory
//! removed.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::{DEFAULT_BPFFS, HostFacts};
use crate::kernel::act::cmd;

pub struct Sandbox {
    /// The sandbox's cgroup.
    pub cgroup: PathBuf,
    /// The sandbox's pin directory.
    pub pin_dir: PathBuf,
    /// Child cgroups, made by `child`.
    children: Vec<PathBuf>,
}

impl Sandbox {
    /// Make `NAME-PID` under the cgroup v2 mount (or `cgroup_parent`) and
    /// under /sys/fs/bpf (or `pin_parent`), mounting bpffs there if absent.
    pub fn create(
        name: &str,
        cgroup_parent: Option<&Path>,
        pin_parent: Option<&Path>,
    ) -> Result<Sandbox> {
        let host = HostFacts::read().context("reading /proc/self/mountinfo")?;
        let parent = match cgroup_parent {
            Some(p) => p.to_path_buf(),
            None => host.cgroup2.clone().context("no cgroup v2 mount")?,
        };
        let pin_parent = pin_parent.map_or_else(|| PathBuf::from(DEFAULT_BPFFS), Path::to_path_buf);
        if pin_parent.starts_with(DEFAULT_BPFFS) {
            crate::kernel::verbs::preflight::mount_bpffs(&host)?;
        }
        let unique = format!("{name}-{}", std::process::id());
        let cgroup = parent.join(&unique);
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        let sandbox = Sandbox {
            cgroup,
            pin_dir: pin_parent.join(&unique),
            children: Vec::new(),
        };
        std::fs::create_dir(&sandbox.pin_dir)
            .with_context(|| format!("creating pin directory {}", sandbox.pin_dir.display()))?;
        Ok(sandbox)
    }

    /// Make a child cgroup of the sandbox's cgroup.
    pub fn child(&mut self, name: &str) -> Result<PathBuf> {
        let path = self.cgroup.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        self.children.push(path.clone());
        Ok(path)
    }

    /// The sandbox's cgroups, children first.
    fn cgroups(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self.children.iter().rev().cloned().collect();
        all.push(self.cgroup.clone());
        all
    }

    /// Kill every process in the sandbox's cgroups; wait (bounded) until
    /// they are gone.
    pub fn kill_processes(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut any = false;
            for cg in self.cgroups() {
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    any = true;
                    // SAFETY: kill(2) with a pid read from our own cgroup.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            if !any {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("processes in {} would not die", self.cgroup.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Detach whatever is still attached to the sandbox's cgroups (only
    /// this sandbox made them, so all of it is a leftover of its own).
    fn detach_leftovers(&self) {
        #[derive(serde::Deserialize)]
        struct Attached {
            id: u32,
            attach_type: String,
        }
        for cg in self.cgroups() {
            let cg = cg.display().to_string();
            let Ok(Some(list)) =
                cmd::bpftool_json::<Option<Vec<Attached>>>(&["cgroup", "show", &cg])
            else {
                continue;
            };
            for a in list {
                // bpftool takes the kernel's name (cgroup_sock_ops) back.
                let kind = a.attach_type.as_str();
                let argv: Vec<String> = ["bpftool", "cgroup", "detach", &cg, kind, "id"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([a.id.to_string()])
                    .collect();
                let _ = cmd::run(&argv, None);
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.kill_processes();
        self.detach_leftovers();
        // Pins and directories below it are all this sandbox's.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let deadline = Instant::now() + Duration::from_secs(5);
        for cg in self.cgroups() {
            while std::fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
