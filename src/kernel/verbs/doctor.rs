//! `bpfplan doctor`: why bpfplan will or will not work on this host, in
//! order, each with its fix: privileges, bpftool, clang and the libbpf
//! headers (only when something must be compiled), bpffs, cgroup v2, BTF,
//! and the kernel's support for what the manifest needs.

use serde::Serialize;
use std::path::Path;

use crate::host::{
    DEFAULT_BPFFS, HostFacts, effective_caps, has_bpf_and_net_admin, has_bpf_privileges,
};
use crate::kernel::act::cmd;
use crate::manifest::model::ProgType;
use crate::plan::Plan;
use crate::plan::step::{AttachPoint, Step};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// Works, but worth knowing.
    Warn,
    /// bpfplan cannot do its job until this is fixed.
    Fail,
    /// Not needed for this manifest.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it (for warn and fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The manifest checked against (what it needs from the kernel).
    pub manifest: String,
    /// Whether everything needed is there.
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
        fix: None,
    }
}

fn with_fix(mut c: Check, fix: impl Into<String>) -> Check {
    c.fix = Some(fix.into());
    c
}

/// Run every check against what `plan` needs.
pub fn doctor(plan: &Plan) -> Report {
    let mut checks = vec![privileges()];
    let bpftool = bpftool();
    let have_bpftool = bpftool.verdict == Verdict::Ok;
    checks.push(bpftool);
    checks.extend(compiler(plan));
    let host = HostFacts::read().unwrap_or_default();
    checks.push(bpffs(&host));
    checks.push(cgroup2(&host));
    checks.push(btf());
    checks.extend(kernel_support(plan, have_bpftool));
    checks.push(kernel_version(plan));
    Report {
        manifest: plan.manifest.display().to_string(),
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks,
    }
}

fn privileges() -> Check {
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_caps);
    match caps {
        Some(c) if has_bpf_privileges(c) => check(
            "privileges",
            Verdict::Ok,
            format!("effective capabilities {c:#x}"),
        ),
        Some(c) if has_bpf_and_net_admin(c) => with_fix(
            check(
                "privileges",
                Verdict::Fail,
                format!(
                    "effective capabilities {c:#x}: CAP_BPF and CAP_NET_ADMIN load and attach, \
                     but looking maps up by id needs CAP_SYS_ADMIN"
                ),
            ),
            "run bpfplan as root (sudo), or add CAP_SYS_ADMIN",
        ),
        Some(c) => with_fix(
            check(
                "privileges",
                Verdict::Fail,
                format!("effective capabilities {c:#x}: no CAP_SYS_ADMIN"),
            ),
            "run bpfplan as root (sudo), or give it CAP_SYS_ADMIN",
        ),
        None => with_fix(
            check(
                "privileges",
                Verdict::Fail,
                "cannot read CapEff from /proc/self/status",
            ),
            "run bpfplan where /proc is mounted",
        ),
    }
}

fn bpftool() -> Check {
    #[derive(serde::Deserialize)]
    struct Version {
        version: String,
        #[serde(default)]
        libbpf_version: String,
    }
    if which::which("bpftool").is_err() {
        return with_fix(
            check("bpftool", Verdict::Fail, "not found in PATH"),
            "apt-get install bpftool (in a checkout: make deps); every kernel change bpfplan makes is a bpftool command",
        );
    }
    match cmd::bpftool_json::<Version>(&["version"]) {
        Ok(v) => check(
            "bpftool",
            Verdict::Ok,
            format!("bpftool {}, libbpf {}", v.version, v.libbpf_version),
        ),
        Err(e) => with_fix(
            check("bpftool", Verdict::Fail, format!("does not run: {e:#}")),
            "reinstall bpftool (apt-get install --reinstall bpftool)",
        ),
    }
}

/// clang and libbpf's headers, when a source must be compiled (objects
/// already built into the cache need neither).
fn compiler(plan: &Plan) -> Vec<Check> {
    let to_build = crate::kernel::remember::build::stale_compiles(plan);
    if to_build.is_empty() {
        let why = if plan
            .outline()
            .iter()
            .any(|s| matches!(s, Step::Compile { .. }))
        {
            "every object is built and current in the cache: apply needs no compiler"
        } else {
            "the manifest compiles nothing (prebuilt objects)"
        };
        return vec![check("clang", Verdict::Skip, why)];
    }
    let clang = match which::which("clang") {
        Ok(p) => check(
            "clang",
            Verdict::Ok,
            format!("{} ({} source(s) to compile)", p.display(), to_build.len()),
        ),
        Err(_) => with_fix(
            check(
                "clang",
                Verdict::Fail,
                format!(
                    "not found in PATH, and {} source(s) must be compiled",
                    to_build.len()
                ),
            ),
            "apt-get install clang libbpf-dev, or build the objects elsewhere with `bpfplan build` into the cache",
        ),
    };
    let header = Path::new("/usr/include/bpf/bpf_helpers.h");
    let libbpf = if header.is_file() {
        check("libbpf headers", Verdict::Ok, header.display().to_string())
    } else {
        with_fix(
            check(
                "libbpf headers",
                Verdict::Fail,
                format!("{} is missing", header.display()),
            ),
            "apt-get install libbpf-dev",
        )
    };
    vec![clang, libbpf]
}

fn bpffs(host: &HostFacts) -> Check {
    use std::os::unix::fs::MetadataExt;
    if !host.bpffs.iter().any(|m| m == Path::new(DEFAULT_BPFFS)) {
        return with_fix(
            check(
                "bpffs",
                Verdict::Warn,
                format!("not mounted at {DEFAULT_BPFFS}"),
            ),
            format!(
                "apply mounts it (mode 0700) when a pin needs it; or mount -t bpf -o mode=0700 bpf {DEFAULT_BPFFS}"
            ),
        );
    }
    let mode = std::fs::metadata(DEFAULT_BPFFS).map_or(0, |m| m.mode() & 0o7777);
    if mode & 0o022 != 0 {
        with_fix(
            check(
                "bpffs",
                Verdict::Warn,
                format!(
                    "mounted at {DEFAULT_BPFFS}, mode {mode:o}: other users can create pins there"
                ),
            ),
            "keep bpfplan's pins in a directory of their own (pin_dir): apply creates it with mode 0700",
        )
    } else {
        check(
            "bpffs",
            Verdict::Ok,
            format!("mounted at {DEFAULT_BPFFS}, mode {mode:o}"),
        )
    }
}

fn cgroup2(host: &HostFacts) -> Check {
    match &host.cgroup2 {
        Some(p) => {
            let layout = if p == Path::new("/sys/fs/cgroup") {
                "unified"
            } else {
                "hybrid"
            };
            check(
                "cgroup v2",
                Verdict::Ok,
                format!("mounted at {} ({layout})", p.display()),
            )
        }
        None => with_fix(
            check(
                "cgroup v2",
                Verdict::Fail,
                "no cgroup2 mount in /proc/self/mountinfo",
            ),
            "mount -t cgroup2 none /sys/fs/cgroup/unified (or boot with systemd.unified_cgroup_hierarchy=1)",
        ),
    }
}

fn btf() -> Check {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if path.exists() {
        check("BTF", Verdict::Ok, path.display().to_string())
    } else {
        with_fix(
            check(
                "BTF",
                Verdict::Warn,
                format!("{} is missing", path.display()),
            ),
            "a kernel built with CONFIG_DEBUG_INFO_BTF=y; bpfplan's own programs do not need it, CO-RE programs do",
        )
    }
}

/// What to do when the probe could not reach the kernel.
const PROBE_FIX: &str = "bpftool probes by loading tiny programs, which needs CAP_BPF (or \
                         CAP_SYS_ADMIN) and bpf(2) allowed by any seccomp filter \
                         (systemd-nspawn: --system-call-filter=bpf); apply may work regardless";

/// What `bpftool feature probe kernel` says of the program types, map
/// types and helpers the plan needs.
fn kernel_support(plan: &Plan, have_bpftool: bool) -> Vec<Check> {
    if !have_bpftool {
        return vec![with_fix(
            check(
                "kernel features",
                Verdict::Skip,
                "not probed: bpftool is missing",
            ),
            "install bpftool, then run doctor again",
        )];
    }
    let probe: serde_json::Value = match cmd::bpftool_json(&["feature", "probe", "kernel"]) {
        Ok(v) => v,
        Err(e) => {
            // A probe that cannot run says nothing of the kernel: apply
            // may still work (with CAP_SYS_ADMIN, or outside a seccomp
            // filter that blocks the probe's loads).
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            return vec![with_fix(
                check(
                    "kernel features",
                    if root { Verdict::Warn } else { Verdict::Fail },
                    format!("not probed: {e:#}"),
                ),
                if root {
                    PROBE_FIX
                } else {
                    "run doctor as root; bpftool probes by loading tiny programs"
                },
            )];
        }
    };
    // A probe that found no program type at all did not reach the kernel
    // (bpf(2) refused to it): that says nothing of the kernel either.
    let none_at_all = probe["program_types"]
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.values().all(|v| v != true));
    if none_at_all {
        return vec![with_fix(
            check(
                "kernel features",
                Verdict::Warn,
                "not probed: bpftool found no program type at all, so its probe loads were refused",
            ),
            PROBE_FIX,
        )];
    }
    let mut needed: Vec<(String, String)> = Vec::new();
    let mut types: Vec<ProgType> = plan.spec.programs.iter().map(|p| p.prog_type).collect();
    types.sort();
    types.dedup();
    for t in &types {
        needed.push((
            format!("program type {}", t.kernel_type()),
            format!("program_types.have_{}_prog_type", t.kernel_type()),
        ));
    }
    let sockmaps = plan
        .spec
        .attachments
        .iter()
        .any(|a| matches!(a.point, AttachPoint::Map { .. }));
    if sockmaps {
        needed.push((
            "map type sockhash".into(),
            "map_types.have_sockhash_map_type".into(),
        ));
    }
    if types.contains(&ProgType::SkMsg) {
        needed.push((
            "helper bpf_msg_redirect_hash".into(),
            "helpers.sk_msg_available_helpers[bpf_msg_redirect_hash]".into(),
        ));
    }
    needed
        .into_iter()
        .map(|(what, path)| {
            let have = match path.split_once('[') {
                Some((list, helper)) => {
                    let helper = helper.trim_end_matches(']');
                    let list = list.split_once('.').map_or(list, |(_, l)| l);
                    probe["helpers"][list]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|h| h == helper))
                }
                None => {
                    let (group, key) = path.split_once('.').unwrap_or(("", &path));
                    probe[group][key] == true
                }
            };
            if have {
                check("kernel feature", Verdict::Ok, what)
            } else {
                with_fix(
                    check(
                        "kernel feature",
                        Verdict::Fail,
                        format!("{what} is not supported"),
                    ),
                    "a newer kernel (the bypass needs sockops, sk_msg and sockhash: Linux 4.18+)",
                )
            }
        })
        .collect()
}

/// Map attachments are queried with BPF_PROG_QUERY on the map: 5.19+.
fn kernel_version(plan: &Plan) -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let needs_query = plan
        .spec
        .attachments
        .iter()
        .any(|a| matches!(a.point, AttachPoint::Map { .. }));
    if !needs_query {
        return check(
            "kernel version",
            Verdict::Skip,
            format!("{release}: no sockmap attachment to query"),
        );
    }
    if (major, minor) >= (5, 19) {
        check(
            "kernel version",
            Verdict::Ok,
            format!("{release} (sockmap query needs 5.19+)"),
        )
    } else {
        with_fix(
            check(
                "kernel version",
                Verdict::Fail,
                format!(
                    "{release}: status, drift and destroy query sockmap attachments, which needs 5.19+"
                ),
            ),
            "a Linux 5.19 or later kernel",
        )
    }
}

/// The report for people: one line a check, the fix under it.
pub fn text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "bpfplan doctor: what {} needs from this host\n\n",
        r.manifest
    );
    for c in &r.checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        let _ = writeln!(out, "  {tag}  {:<16} {}", c.name, c.detail);
        if let Some(fix) = &c.fix
            && c.verdict != Verdict::Ok
        {
            let _ = writeln!(out, "        {:<16} fix: {fix}", "");
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        if r.ok {
            "everything bpfplan needs is here"
        } else {
            "bpfplan cannot work here until the FAIL lines are fixed"
        }
    );
    out
}
