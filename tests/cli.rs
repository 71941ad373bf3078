//! The real binary: exit codes, stdout and stderr, snapshotted. These
//! commands only plan (nothing is built or written), so the snapshots show
//! bpfplan's real default build directory.

use std::process::Command;

use bpfplan::host::HostFacts;

use crate::common;

/// Run bpfplan and format the result like uv's CLI snapshots.
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let text = format!(
        "exit_code: {code}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, text)
}

/// Snapshots must not depend on where this host mounts cgroup v2.
fn settings() -> insta::Settings {
    let mut s = common::settings();
    if let Some(cg) = HostFacts::read().ok().and_then(|h| h.cgroup2) {
        s.add_filter(
            &common::regex_escape(&cg.display().to_string()),
            "[CGROUP2]",
        );
    }
    s
}

#[track_caller]
fn case(name: &str, args: &[&str], want_code: i32) {
    let (code, text) = run(args);
    assert_eq!(code, want_code, "{text}");
    settings().bind(|| insta::assert_snapshot!(format!("cli-{name}"), text));
}

#[test]
fn plan_text_of_bypass() {
    case(
        "plan-bypass",
        &["plan", "manifests/bypass.toml", "--manifest-only"],
        0,
    );
}

#[test]
fn plan_with_var_override() {
    case(
        "plan-bypass-vars",
        &[
            "plan",
            "manifests/bypass.toml",
            "--var",
            "pin_dir=/sys/fs/bpf/team_a",
            "--format",
            "sh",
            "--destroy",
            "--manifest-only",
        ],
        0,
    );
}

#[test]
fn manifest_errors_exit_1() {
    case(
        "many-errors",
        &["plan", "tests/fixtures/invalid/many_errors.toml"],
        1,
    );
}

#[test]
fn unknown_var_override_exits_1() {
    case(
        "unknown-var",
        &["plan", "manifests/bypass.toml", "--var", "pin_dri=/x"],
        1,
    );
}

#[test]
fn malformed_var_is_a_usage_error() {
    let (code, text) = run(&["plan", "manifests/bypass.toml", "--var", "novalue"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("expected NAME=VALUE"), "{text}");
}

#[test]
fn missing_manifest_exits_1() {
    case("missing-manifest", &["plan", "manifests/nope.toml"], 1);
}

#[test]
fn warnings_do_not_fail_the_plan() {
    let (code, text) = run(&["plan", "tests/fixtures/invalid/warn_long_names.toml"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("warning: program name `a_very_long_program_name` is 24 characters"));
}

#[test]
fn help_documents_exit_codes() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(text.contains("Exit codes (Terraform's):"), "{text}");
    assert!(
        text.contains("1  an error: a usage or manifest error"),
        "{text}"
    );
    assert!(
        text.contains("2  only for status and plan --detailed-exitcode"),
        "{text}"
    );
}

#[test]
fn json_plan_is_valid_json() {
    let out = Command::new(common::bin())
        .args(["plan", "manifests/bypass.toml", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 17);
    assert_eq!(v["steps"][4]["argv"][4]["map"], "sock_ops_map");
}

#[test]
fn bench_refuses_a_manifest_without_cgroup_and_pin_dir_vars() {
    let (code, text) = run(&["bench", "manifests/xdp-counter.toml", "--quick"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("bench needs a manifest that declares `cgroup` and `pin_dir`"),
        "{text}"
    );
}

/// Run bpfplan with a time limit (a command that blocks fails the test
/// instead of hanging it).
fn run_bounded(mut cmd: Command) -> std::process::Output {
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bpfplan blocked");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_fifo_given_as_manifest_or_plan_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("m.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let path = fifo.to_str().unwrap();
    for args in [
        vec!["plan", path, "--manifest-only"],
        vec!["show", path],
        vec!["apply", "--plan", path],
    ] {
        let mut cmd = common::bpfplan();
        cmd.args(&args);
        let out = run_bounded(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("not a regular file"), "{args:?}: {err}");
    }
}

#[test]
fn a_closed_stdout_or_stderr_is_no_panic() {
    use std::os::fd::FromRawFd;
    let closed = || {
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two fds; the read end is closed at once, so
        // every write to the other one fails with EPIPE.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[0]);
            std::process::Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
        }
    };
    let out = common::bpfplan()
        .args([
            "plan",
            "manifests/bypass.toml",
            "--manifest-only",
            "--format",
            "json",
        ])
        .stdout(closed())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A manifest error with nowhere to say it: still exit 1, no panic.
    let out = common::bpfplan()
        .args(["plan", "tests/fixtures/invalid/many_errors.toml"])
        .stdout(closed())
        .stderr(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn generate_never_writes_through_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man");
    std::fs::create_dir(&out).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("bpfplan.1")).unwrap();
    let (code, text) = run(&["generate", "man", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("is a symbolic link"), "{text}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // Without the link, every page is written, and the completions too.
    std::fs::remove_file(out.join("bpfplan.1")).unwrap();
    let (code, text) = run(&["generate", "man", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let page = std::fs::read_to_string(out.join("bpfplan-apply.1")).unwrap();
    assert!(page.contains(".TH"), "{page}");
    let (code, text) = run(&["generate", "bash", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(
        std::fs::read_to_string(out.join("bpfplan.bash"))
            .unwrap()
            .contains("complete")
    );
}
