//! The trust rule, tried as a hostile local user would: a throwaway user,
//! made by each test and removed at its end (even on failure), owns or can
//! write the manifest, a header, a pin directory or the audit log. Root
//! refuses what others can write, with the path and the fix, and changes
//! nothing; it reads a file another user owns with a warning that reaches
//! the audit log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::sandbox::{Sandbox, bpftool_json};
use crate::common::{self, stderr};

/// A system user of the test's own, removed on drop.
struct Throwaway {
    name: String,
    uid: u32,
}

impl Throwaway {
    fn new(tag: &str) -> Throwaway {
        let name = format!("bpft-{tag}-{}", std::process::id());
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", stderr(&out));
        // From here on, drop removes it.
        let mut user = Throwaway { name, uid: 0 };
        let id = Command::new("id")
            .args(["-u", &user.name])
            .output()
            .unwrap();
        user.uid = common::stdout(&id).trim().parse().unwrap();
        assert_ne!(user.uid, 0);
        user
    }

    fn chown(&self, path: &Path) {
        let out = Command::new("chown")
            .args(["-h", &format!("{}:", self.name)])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {}", stderr(&out));
    }

    /// Run a command as this user.
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.uid))
            .args(["--clear-groups", "--"])
            .args(argv)
            .output()
            .unwrap()
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn apply(sb: &Sandbox, manifest: &Path, extra: &[&str]) -> Output {
    sb.bpfplan_cmd("apply", manifest)
        .args(extra)
        .output()
        .unwrap()
}

/// How many programs of this name the kernel holds.
fn loaded(name: &str) -> usize {
    bpftool_json(&["prog", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str() == Some(name))
        .count()
}

/// Refused with exit 1, the message and nothing changed: no pin, no
/// attachment, no program more than before.
fn refused(sb: &Sandbox, out: &Output, before: usize, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in:\n{err}");
    }
    // (The pin directory of the pin test is the test's, not a pin.)
    let pins: Vec<String> = sb.pins().into_iter().filter(|p| p != "foreign").collect();
    assert_eq!(pins, Vec::<String>::new());
    assert_eq!(sb.attachments(), Vec::<(String, String)>::new());
    assert!(loaded("bpf_sockops") <= before, "a program was loaded");
}

fn audit_warnings(sb: &Sandbox) -> Vec<String> {
    std::fs::read_to_string(sb.audit_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["phase"] == "warning")
        .filter_map(|v| v["note"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_manifest_others_can_write_is_refused_and_another_users_is_read_with_a_warning() {
    let (dir, manifest) = common::checkout("bypass.toml");
    let Some(sb) = Sandbox::new("trust_manifest", manifest.to_str().unwrap()) else {
        return;
    };
    let user = Throwaway::new("m");
    let before = loaded("bpf_sockops");
    let shown = manifest.display().to_string();

    chmod(&manifest, 0o666);
    let out = apply(&sb, &manifest, &[]);
    refused(
        &sb,
        &out,
        before,
        &[
            &shown,
            "writable by group or others (mode 666)",
            "chmod go-w",
        ],
    );
    chmod(&manifest, 0o644);

    // The user can replace the file through its directory: refused too.
    let manifests = dir.path().join("manifests");
    chmod(dir.path(), 0o755);
    chmod(&manifests, 0o777);
    let swap = user.run(&["touch", manifests.join("planted").to_str().unwrap()]);
    assert!(
        swap.status.success(),
        "the user cannot write: {}",
        stderr(&swap)
    );
    let out = apply(&sb, &manifest, &[]);
    let above = format!("the directory {} above it", manifests.display());
    refused(&sb, &out, before, &[&above, "not sticky"]);
    chmod(&manifests, 0o755);

    // Owned by the user, writable by no one else: read, with a warning
    // naming the user, on stderr and in the audit log.
    user.chown(&manifest);
    let out = apply(&sb, &manifest, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let owned = format!("is owned by {} (uid {})", user.name, user.uid);
    assert!(stderr(&out).contains(&owned), "{}", stderr(&out));
    let warnings = audit_warnings(&sb);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&owned) && w.contains(&shown)),
        "no audit line: {warnings:?}"
    );
    assert!(!sb.pins().is_empty());
    sb.must("destroy");
}

#[test]
fn a_source_or_header_others_can_write_is_refused_before_anything_loads() {
    let (dir, manifest) = common::checkout("bypass.toml");
    let Some(sb) = Sandbox::new("trust_source", manifest.to_str().unwrap()) else {
        return;
    };
    let before = loaded("bpf_sockops");
    let bpf = dir.path().join("bpf");

    let source = bpf.join("sockops.c");
    chmod(&source, 0o666);
    let out = apply(&sb, &manifest, &[]);
    refused(
        &sb,
        &out,
        before,
        &["source", "sockops.c is writable by group or others"],
    );
    chmod(&source, 0o644);

    // A header is known from the compile: refused after it, before any load;
    // and again before the next compile, from the depfile the first left.
    let header = bpf.join("sock_key.h");
    chmod(&header, 0o666);
    for _ in 0..2 {
        let out = apply(&sb, &manifest, &[]);
        refused(
            &sb,
            &out,
            before,
            &["header", "sock_key.h is writable by group or others"],
        );
    }
    chmod(&header, 0o644);
    sb.must("apply");
    sb.must("destroy");
}

#[test]
fn a_pin_directory_root_did_not_make_is_refused() {
    let Some(sb) = Sandbox::new("trust_pins", "manifests/bypass.toml") else {
        return;
    };
    let user = Throwaway::new("p");
    let before = loaded("bpf_sockops");
    // The user's own directory, open to all, where root's pins would go:
    // whoever can write it can rename root's pins so destroy misses them.
    let foreign: PathBuf = sb.pin_dir.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    user.chown(&foreign);
    chmod(&foreign, 0o777);
    let var = format!("pin_dir={}", foreign.display());
    let out = apply(&sb, Path::new("manifests/bypass.toml"), &["--var", &var]);
    let owned = format!("is owned by {} (uid {}), not root", user.name, user.uid);
    refused(&sb, &out, before, &[&owned]);
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);

    // Root's, but open to others: refused too.
    Command::new("chown")
        .arg("root:")
        .arg(&foreign)
        .status()
        .unwrap();
    let out = apply(&sb, Path::new("manifests/bypass.toml"), &["--var", &var]);
    refused(
        &sb,
        &out,
        before,
        &["writable by group or others (mode 777)"],
    );
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);

    // Closed: bpfplan acts in it.
    chmod(&foreign, 0o700);
    let out = apply(&sb, Path::new("manifests/bypass.toml"), &["--var", &var]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_dir(&foreign).unwrap().count() > 0);
    let out = sb
        .bpfplan_cmd("destroy", Path::new("manifests/bypass.toml"))
        .args(["--var", &var])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
}

#[test]
fn an_audit_log_others_can_write_is_refused() {
    let Some(sb) = Sandbox::new("trust_log", "manifests/bypass.toml") else {
        return;
    };
    let user = Throwaway::new("l");
    let before = loaded("bpf_sockops");
    let log = sb.audit_log();
    let dir = log.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    chmod(dir, 0o700);
    std::fs::write(&log, "").unwrap();
    chmod(&log, 0o666);
    let out = apply(&sb, Path::new("manifests/bypass.toml"), &[]);
    refused(
        &sb,
        &out,
        before,
        &["writable by group or others (mode 666)"],
    );
    chmod(&log, 0o600);
    user.chown(&log);
    let out = apply(&sb, Path::new("manifests/bypass.toml"), &[]);
    refused(
        &sb,
        &out,
        before,
        &[&format!("is owned by uid {}", user.uid)],
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "");
}
