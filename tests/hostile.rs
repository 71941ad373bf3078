//! Hostile strings fed through variables: validation refuses them, or the sh
//! script quotes them into the literal value. Proven by running the script
//! with stand-ins for bpftool and clang that record the words they get.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use bpfplan::plan::render::{Direction, Format, render};

use crate::common;

const HOSTILE: &[&str] = &[
    "it's",
    "say \"hi\"",
    "$(touch pwned)",
    "`touch pwned`",
    "a b  c",
    "${HOME}",
    "x;touch pwned;",
    "*",
    "\\",
    "-rf",
];

const MANIFEST: &str = r#"
[vars]
cgroup = "/sys/fs/cgroup/test"
pin_dir = "/sys/fs/bpf"
src = "sockops.c"

[[program]]
name = "bpf_sockops"
source = "${src}"
type = "sockops"
pin = "${pin_dir}/bpf_sockops"

[[map]]
name = "sock_ops_map"
program = "bpf_sockops"
pin = "${pin_dir}/sock_ops_map"

[[attach]]
program = "bpf_sockops"
type = "sock_ops"
cgroup = "${cgroup}"
"#;

/// A stand-in that records its words (NUL-separated, one record per call)
/// and answers the two JSON queries of `bpfplan_map_id`.
const FAKE: &str = r#"#!/bin/sh
{ printf '%s\0' "$(basename "$0")" "$@"; printf '\n'; } >> "$BPFPLAN_FAKE_LOG"
case "$1 $2 $3" in
  "-j prog show") echo '{"id":1,"map_ids":[7,9]}' ;;
  "-j map show") if [ "$5" = 9 ]; then echo '{"id":9,"name":"sock_ops_map"}'; else echo '{"id":7,"name":"other"}'; fi ;;
esac
"#;

fn calls(log: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split('\n')
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.trim_end_matches('\0')
                .split('\0')
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn hostile_pin_dirs_are_refused() {
    for bad in HOSTILE
        .iter()
        .chain(&["/sys/fs/bpf/a\nb", "/sys/fs/bpf/$(x)"])
    {
        let err =
            common::plan_text("m/x.toml".as_ref(), MANIFEST, &[("pin_dir", bad)]).expect_err(bad);
        assert!(err.contains("pin path"), "{bad:?}: {err}");
    }
}

#[test]
fn newlines_in_cgroup_paths_are_refused() {
    let err = common::plan_text(
        "m/x.toml".as_ref(),
        MANIFEST,
        &[("cgroup", "/sys/fs/cgroup/a\ntouch pwned")],
    )
    .expect_err("newline");
    assert!(err.contains("must not hold control characters"), "{err}");
}

#[test]
fn hostile_cgroup_and_source_paths_reach_the_commands_literally() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["bpftool", "clang"] {
        let p = bin.join(tool);
        std::fs::write(&p, FAKE).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    for (i, bad) in HOSTILE.iter().enumerate() {
        let cgroup = format!("/sys/fs/cgroup/{bad}");
        let src_name = format!("{bad}.c").replace(['/', '\\'], "_");
        std::fs::write(work.join(&src_name), "").unwrap();
        let manifest = work.join("m.toml");
        let plan = common::plan_text(
            &manifest,
            MANIFEST,
            &[("cgroup", &cgroup), ("src", &src_name)],
        )
        .unwrap_or_else(|e| panic!("{bad:?}: {e}"));
        let script = render(&plan, Format::Sh, Direction::Apply).unwrap();
        let log = dir.path().join(format!("log{i}"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(&work)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("BPFPLAN_FAKE_LOG", &log)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let calls = calls(&log);
        let source = work.join(&src_name).display().to_string();
        let compile = calls.iter().find(|c| c[0] == "clang").expect("clang ran");
        assert!(compile.contains(&source), "{bad:?}: {compile:?}");
        let attach = calls.last().unwrap();
        assert_eq!(
            attach,
            &[
                "bpftool",
                "cgroup",
                "attach",
                &cgroup,
                "sock_ops",
                "pinned",
                "/sys/fs/bpf/bpf_sockops",
                "multi"
            ],
            "{bad:?}"
        );
        // The map id came from the JSON, matched by name.
        assert!(
            calls
                .iter()
                .any(|c| c[..5] == ["bpftool", "map", "pin", "id", "9"])
        );
        assert!(!work.join("pwned").exists(), "{bad:?} ran a command");
        assert!(!dir.path().join("pwned").exists(), "{bad:?} ran a command");
    }
}
