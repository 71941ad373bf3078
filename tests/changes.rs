//! Day-two changes on the real kernel: a change that fails never takes down
//! what runs, a replace loses no byte, where bpfplan runs from changes
//! nothing, and records and directories are trusted only when they are
//! root's own. Each test works in its own cgroup and pin directory.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::sandbox::{Sandbox, assert_redirected, next_event, report, spawn_piped};
use crate::common::{self, append, checkout};

const MIB: u64 = 1 << 20;
const POLICY_PINS: [&str; 10] = [
    "bpf_sockops",
    "bpf_tcpip_bypass",
    "bypass_bounds",
    "bypass_ctl",
    "bypass_stats",
    "deny_ports",
    "local_addrs",
    "only_ports",
    "skip_ports",
    "sock_ops_map",
];

use crate::common::stderr;

/// Whether the policy still denies `port`: the sender gets EACCES.
fn denied(sb: &Sandbox, port: u16) -> bool {
    let r = report(sb.traffic(&["send-once", "--port", &port.to_string()]));
    r["received"] == 0
        && r["send_error"]
            .as_str()
            .is_some_and(|e| e.contains("Permission denied"))
}

/// An edit that compiles but that the verifier rejects: a read far past
/// the end of the sk_msg context.
const REJECTED: &str = "\nSEC(\"sk_msg\")\nint bpf_redir_v2(struct sk_msg_md *msg)\n{\n\treturn *(volatile __u32 *)((char *)msg + 4000) ? SK_DROP : SK_PASS;\n}\n";

#[test]
fn a_change_the_verifier_rejects_leaves_the_running_deployment() {
    let (dir, manifest) = checkout("bypass-policy.toml");
    let Some(sb) = Sandbox::new("rejected_change", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must_with("apply", &["--var", "deny_port=20011"]);
    let ids = sb.prog_ids();
    assert!(denied(&sb, 20011));

    // The source now holds a second sk_msg program the verifier rejects;
    // libbpf loads every program of the object, so the new load fails.
    let redir = dir.path().join("bpf/redir.c");
    let original = std::fs::read_to_string(&redir).unwrap();
    append(&redir, REJECTED);
    let out = sb
        .bpfplan_cmd("apply", &manifest)
        .args(["--var", "deny_port=20011"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the previous deployment still runs"), "{err}");
    assert!(err.contains("-- BEGIN PROG LOAD LOG --"), "{err}");

    // What ran before runs on, untouched: same programs, same pins, the
    // policy still denies.
    assert_eq!(sb.prog_ids(), ids);
    assert_eq!(sb.pins(), POLICY_PINS);
    assert_eq!(sb.attachments().len(), 1);
    assert!(denied(&sb, 20011));
    std::fs::write(&redir, original).unwrap();
    let (code, st) = sb.status(&["--var", "deny_port=20011"]);
    assert_eq!(code, 0, "{st}");
}

#[test]
fn a_failure_at_any_step_of_a_replace_restores_the_old_deployment() {
    let Some(mut sb) = Sandbox::new("replace_fail", "manifests/bypass-policy.toml") else {
        return;
    };
    let inner = sb.child_cgroup("inner");
    let to_inner = format!("cgroup={}", inner.display());
    sb.must_with("apply", &["--var", "deny_port=20012"]);
    let ids = sb.prog_ids();
    let pin = |name: &str| sb.pin(name);
    // One step of each kind a replace runs, in order: staging (the maps are
    // kept, their entries changed in place), the new verdict on the kept
    // sockhash, the new cgroup attachment, the old one off, the program
    // pins swapped.
    let steps = [
        format!(
            "load sockops program `bpf_sockops` and pin it at {}~new",
            pin("bpf_sockops")
        ),
        "set `deny_ports`[20013] = 1".to_string(),
        "remove `deny_ports`[20012]".to_string(),
        "attach program `bpf_redir` to map `sock_ops_map`".to_string(),
        format!("attach program `bpf_sockops` to cgroup {}", inner.display()),
        format!(
            "detach program `bpf_sockops` (sock_ops) from cgroup {}",
            sb.cgroup.display()
        ),
        format!("move program `bpf_sockops` from {} to", pin("bpf_sockops")),
        format!(
            "move program `bpf_redir` from {} to",
            pin("bpf_tcpip_bypass")
        ),
        format!("move program `bpf_sockops` from {}~new", pin("bpf_sockops")),
        format!(
            "move program `bpf_redir` from {}~new",
            pin("bpf_tcpip_bypass")
        ),
    ];
    let maps = sb.map_ids();
    for step in &steps {
        let out = sb
            .bpfplan_cmd("apply", &sb.manifest)
            .args(["--var", "deny_port=20013", "--var", &to_inner])
            .env("BPFPLAN_FAIL_STEP", step)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{step}: {err}");
        assert!(err.contains("failed on purpose"), "{step}: {err}");
        assert!(
            err.contains("the previous deployment still runs"),
            "{step}: {err}"
        );
        assert_eq!(sb.prog_ids(), ids, "{step}");
        assert_eq!(sb.map_ids(), maps, "{step}");
        assert_eq!(sb.pins(), POLICY_PINS, "{step}");
        assert_eq!(sb.attachments().len(), 1, "{step}");
        let (code, st) = sb.status(&["--var", "deny_port=20012"]);
        assert_eq!(code, 0, "{step}: {st}");
    }
    assert!(denied(&sb, 20012));
    assert!(!denied(&sb, 20013));

    // Past the point of no return a failure leaves the new deployment
    // running; the next apply removes what is left of the old one.
    let out = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .args(["--var", "deny_port=20012", "--var", &to_inner])
        .env(
            "BPFPLAN_FAIL_STEP",
            format!("unpin program `bpf_sockops` at {}~old", pin("bpf_sockops")),
        )
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the new deployment runs"), "{err}");
    let log = sb.must_with("apply", &["--var", "deny_port=20012", "--var", &to_inner]);
    assert!(log.contains("finishing"), "{log}");
    assert_eq!(sb.pins(), POLICY_PINS);
    let (code, st) = sb.status_of(&inner, &["--var", "deny_port=20012"]);
    assert_eq!(code, 0, "{st}");
    // The old programs are gone from the kernel, the old attachment too.
    sb.assert_freed(&ids);
    assert_eq!(sb.attachments().len(), 0);
}

/// A kill at any step of a replace (before the step runs, or after it),
/// then an apply: the run is undone or finished, and the deployment asked
/// for runs, with no staged or set-aside pin left and nothing stuck.
#[test]
fn a_replace_killed_at_any_step_is_recovered_by_the_next_apply() {
    let Some(mut sb) = Sandbox::new("replace_killed", "manifests/bypass-policy.toml") else {
        return;
    };
    let inner = sb.child_cgroup("inner");
    let to_inner = format!("cgroup={}", inner.display());
    let old = ["--var", "deny_port=20013"];
    let new = ["--var", "deny_port=20014", "--var", to_inner.as_str()];
    sb.must_with("apply", &old);
    let mut kills = 0;
    for moment in ["before", "after"] {
        for n in 1..=200 {
            let out = sb
                .bpfplan_cmd("apply", &sb.manifest)
                .args(new)
                .env("BPFPLAN_DIE_AT", format!("{moment}:{n}"))
                .output()
                .unwrap();
            if out.status.success() {
                // Past the last step: the replace ran whole. Back to the
                // old deployment for the next moment.
                sb.must_with("apply", &old);
                break;
            }
            assert_eq!(
                out.status.code(),
                Some(137),
                "{moment}:{n}: {}",
                stderr(&out)
            );
            kills += 1;
            let log = sb.must_with("apply", &new);
            assert!(log.contains("interrupted"), "{moment}:{n}: {log}");
            assert_eq!(sb.pins(), POLICY_PINS, "{moment}:{n}: {log}");
            assert_eq!(sb.attachments().len(), 0, "{moment}:{n}: {log}");
            let (code, st) = sb.status_of(&inner, &["--var", "deny_port=20014"]);
            assert_eq!(code, 0, "{moment}:{n}: {st}");
            assert!(sb.must_with("apply", &new).contains("No changes"));
            sb.must_with("apply", &old);
            assert_eq!(sb.attachments().len(), 1, "{moment}:{n}");
        }
    }
    assert!(
        kills > 20,
        "only {kills} kill points: is BPFPLAN_DIE_AT honoured?"
    );
    assert!(denied(&sb, 20013));

    // An entries run killed before its batch ran, and after: the next
    // apply undoes only what landed, then writes the new entries.
    for die in ["before:1", "after:1"] {
        let out = sb
            .bpfplan_cmd("apply", &sb.manifest)
            .args(["--var", "deny_port=20015"])
            .env("BPFPLAN_DIE_AT", die)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(137), "{die}: {}", stderr(&out));
        let log = sb.must_with("apply", &["--var", "deny_port=20015"]);
        assert!(log.contains("interrupted"), "{die}: {log}");
        let (code, st) = sb.status(&["--var", "deny_port=20015"]);
        assert_eq!(code, 0, "{die}: {st}");
        assert!(denied(&sb, 20015), "{die}");
        sb.must_with("apply", &old);
    }
}

#[test]
fn nothing_is_lost_during_a_replace() {
    let (dir, manifest) = checkout("bypass.toml");
    let Some(sb) = Sandbox::new("replace_live", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    let ids = sb.prog_ids();
    let (mut child, mut lines) =
        spawn_piped(sb.traffic(&["flow", "--conns", "4", "--seconds", "3", "--echo"]));
    assert_eq!(next_event(&mut lines)["event"], "flowing");
    append(
        &dir.path().join("bpf/redir.c"),
        "static __attribute__((used)) int bpfplan_replace_marker(void) { return 3; }\n",
    );
    let log = sb.must("apply");
    assert!(
        log.contains("a program changed: replacing the deployment"),
        "{log}"
    );
    let end = next_event(&mut lines);
    assert!(child.wait().unwrap().success());
    assert_eq!(end["intact"], true, "{end}");
    assert!(end["bytes_per_conn"].as_u64().unwrap() > 0, "{end}");
    assert_ne!(sb.prog_ids(), ids);
    sb.assert_freed(&ids);
    assert_eq!(sb.status(&[]).0, 0);
    // New connections take the new deployment's bypass.
    assert_redirected(&report(sb.traffic(&[
        "stream",
        "--bytes",
        &(8 * MIB).to_string(),
    ])));
}

#[test]
fn where_bpfplan_runs_from_changes_nothing() {
    let Some(sb) = Sandbox::new("cwd", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let absolute = std::fs::canonicalize(&sb.manifest).unwrap();
    let from_root = |verb: &str, extra: &[&str]| {
        sb.bpfplan_cmd(verb, &absolute)
            .args(extra)
            .current_dir("/")
            .output()
            .unwrap()
    };
    let st = from_root("status", &[]);
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    let pending = from_root("plan", &["--detailed-exitcode"]);
    assert_eq!(pending.status.code(), Some(0), "{}", stderr(&pending));
    let again = from_root("apply", &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("No changes"));

    // Without --build-dir, objects go to the cache (here BPFPLAN_CACHE_DIR),
    // never to the working directory.
    let cache = sb.tmp.path().join("cache");
    let vars = [
        "--var".to_string(),
        format!("cgroup={}", sb.cgroup.display()),
        "--var".to_string(),
        format!("pin_dir={}", sb.pin_dir.display()),
    ];
    let out = common::bpfplan()
        .arg("plan")
        .arg(&absolute)
        .args(&vars)
        .env("BPFPLAN_CACHE_DIR", &cache)
        .current_dir("/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}/build/bypass-", cache.display())),
        "{text}"
    );
    assert!(!Path::new("/target").exists(), "something wrote /target");
}

#[test]
fn editing_the_manifest_replaces_its_deployment_and_orphans_nothing() {
    let (_dir, manifest) = checkout("bypass.toml");
    let Some(sb) = Sandbox::new("rename_pin", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    let ids = sb.prog_ids();
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("/bpf_tcpip_bypass\"", "/bpf_redir_v2\""),
    )
    .unwrap();
    let log = sb.must("apply");
    assert!(
        log.contains("the manifest changed: replacing the deployment"),
        "{log}"
    );
    assert_eq!(
        sb.pins(),
        [
            "bpf_redir_v2",
            "bpf_sockops",
            "bypass_bounds",
            "bypass_ctl",
            "bypass_stats",
            "local_addrs",
            "only_ports",
            "skip_ports",
            "sock_ops_map"
        ]
    );
    assert_eq!(sb.attachments().len(), 1);
    sb.assert_freed(&ids);
    assert_eq!(sb.status(&[]).0, 0);
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);
}

#[test]
fn a_corrupt_record_is_reported_and_destroy_still_cleans_up() {
    let Some(sb) = Sandbox::new("corrupt", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let ids = sb.prog_ids();
    let store = sb.store();
    let record = std::fs::read(&store.path).unwrap();
    std::fs::write(&store.path, &record[..record.len() / 2]).unwrap();

    let out = sb.bpfplan("apply");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot be used") && err.contains("bpfplan destroy"),
        "{err}"
    );
    assert_eq!(sb.prog_ids(), ids, "apply guessed");
    let (code, st) = sb.status(&[]);
    assert_eq!(code, 2, "{st}");
    assert_eq!(st["recorded"], "unreadable", "{st}");

    let out = sb.bpfplan("destroy");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: the record"),
        "{}",
        stderr(&out)
    );
    sb.assert_clean(&ids);
    assert!(!store.path.exists());
    let aside = std::fs::read_dir(sb.state_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count();
    assert_eq!(aside, 1, "the unusable record was not kept aside");

    // A record that parses but names a path outside bpffs is refused too.
    sb.must("apply");
    let ids = sb.prog_ids();
    let text = std::fs::read_to_string(&store.path).unwrap();
    let tampered = text.replace(&sb.pin("local_addrs"), "/etc/bpfplan-victim");
    assert_ne!(text, tampered);
    std::fs::write(&store.path, tampered).unwrap();
    let out = sb.bpfplan("apply");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/etc/bpfplan-victim") && err.contains("not on a bpf filesystem"),
        "{err}"
    );
    assert_eq!(sb.prog_ids(), ids);
}

#[test]
fn untrusted_state_and_build_directories_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let Some(sb) = Sandbox::new("trust", "manifests/bypass.toml") else {
        return;
    };
    let open = sb.tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = sb.tmp.path().join("link");
    std::os::unix::fs::symlink(sb.tmp.path(), &link).unwrap();
    for (what, env, arg) in [
        ("a world-writable state directory", Some(&open), None),
        ("a symlinked state directory", Some(&link), None),
        ("a world-writable build directory", None, Some(&open)),
    ] {
        let mut cmd = common::bpfplan();
        cmd.arg("apply")
            .arg(&sb.manifest)
            .args(["--var", &format!("cgroup={}", sb.cgroup.display())])
            .args(["--var", &format!("pin_dir={}", sb.pin_dir.display())])
            .arg("--build-dir")
            .arg(arg.unwrap_or(&sb.tmp.path().join("build")))
            .env("BPFPLAN_STATE_DIR", env.unwrap_or(&sb.state_dir()))
            .env("BPFPLAN_AUDIT_LOG", sb.audit_log());
        let out = cmd.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("does not trust it") || err.contains("does not follow it"),
            "{what}: {err}"
        );
        assert_eq!(
            sb.pins(),
            Vec::<String>::new(),
            "{what}: something was applied"
        );
    }
}

#[test]
fn without_a_record_destroy_removes_only_what_is_its_own() {
    let Some(sb) = Sandbox::new("foreign", "manifests/bypass.toml") else {
        return;
    };
    // Set up by the sh script (no record), then a map of someone else's
    // takes one of the pins.
    let script = sb
        .bpfplan_cmd("plan", &sb.manifest)
        .args(["--format", "sh"])
        .output()
        .unwrap();
    let path = sb.tmp.path().join("apply.sh");
    std::fs::write(&path, &script.stdout).unwrap();
    let out = Command::new("sh").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let theirs = sb.pin("local_addrs");
    std::fs::remove_file(&theirs).unwrap();
    let out = Command::new("bpftool")
        .args([
            "map", "create", &theirs, "type", "hash", "key", "4", "value", "4",
        ])
        .args(["entries", "4", "name", "not_ours"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = sb.prog_ids();
    let out = sb.bpfplan("destroy");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("not_ours") && err.contains("left in place"),
        "{err}"
    );
    assert_eq!(sb.pins(), ["local_addrs"]);
    assert_eq!(sb.attachments().len(), 0);
    sb.assert_freed(&ids);
}

#[test]
fn output_cut_short_and_bad_settings_never_leave_a_half_applied_deployment() {
    let Some(sb) = Sandbox::new("small", "manifests/bypass.toml") else {
        return;
    };
    // `apply | head -1`: the reader goes away after the first line.
    let mut child = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "apply died with its reader: {status:?}");
    assert_eq!(sb.status(&[]).0, 0);
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);

    for (var, value, says) in [
        ("BPFPLAN_LOCK_TIMEOUT", "soon", "not a number of seconds"),
        ("BPFPLAN_COMMAND_TIMEOUT", "0", "did not finish within"),
    ] {
        let out = sb
            .bpfplan_cmd("apply", &sb.manifest)
            .env(var, value)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{var}={value}: {err}");
        assert!(err.contains(says), "{var}={value}: {err}");
        sb.assert_clean(&[]);
    }
    // `inf` waits as long as it takes.
    let out = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .env("BPFPLAN_LOCK_TIMEOUT", "inf")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
