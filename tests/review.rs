//! What was reviewed is what runs, and every change is on record: saved
//! plans (applied exactly, refused when stale, once), `show`, the JSON event
//! stream, the audit log, and adopting a deployment made by the sh script.

use std::process::{Command, Output};

use crate::common::checkout;
use crate::common::sandbox::{Sandbox, bpftool_json, report};

use crate::common::{stderr, stdout};

/// `bpfplan VERB` in the sandbox with extra arguments.
fn run(sb: &Sandbox, verb: &str, extra: &[&str]) -> Output {
    sb.bpfplan_cmd(verb, &sb.manifest.clone())
        .args(extra)
        .output()
        .unwrap()
}

/// `bpfplan apply --plan FILE` (no manifest, no variables: all in the file).
fn apply_plan_cmd(sb: &Sandbox, file: &std::path::Path) -> Command {
    let mut cmd = crate::common::bpfplan();
    cmd.args(["apply", "--plan"])
        .arg(file)
        .env("BPFPLAN_STATE_DIR", sb.state_dir())
        .env("BPFPLAN_AUDIT_LOG", sb.audit_log());
    cmd
}

fn apply_plan(sb: &Sandbox, file: &std::path::Path, extra: &[&str]) -> Output {
    apply_plan_cmd(sb, file).args(extra).output().unwrap()
}

/// `bpfplan plan --out NAME` in the sandbox's directory.
fn save_plan(sb: &Sandbox, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let file = sb.tmp.path().join(name);
    let mut args = vec!["--out", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(sb, "plan", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    file
}

fn received(sb: &Sandbox, port: u16) -> u64 {
    report(sb.traffic(&["send-once", "--port", &port.to_string()]))["received"]
        .as_u64()
        .unwrap_or(0)
}

/// An edit that passes the verifier but drops every message.
const DROP_ALL: (&str, &str) = (
    "int bpf_redir(struct sk_msg_md *msg)\n{",
    "int bpf_redir(struct sk_msg_md *msg)\n{\n\tif (msg->size)\n\t\treturn SK_DROP;",
);

#[test]
fn a_saved_plan_loads_what_was_reviewed_once() {
    let (dir, manifest) = checkout("bypass-policy.toml");
    let Some(sb) = Sandbox::new("saved", manifest.to_str().unwrap()) else {
        return;
    };
    let file = save_plan(&sb, "reviewed.json", &[]);

    // After the review, the source changes so that every message is dropped.
    let redir = dir.path().join("bpf/redir.c");
    let text = std::fs::read_to_string(&redir).unwrap();
    assert!(text.contains(DROP_ALL.0));
    std::fs::write(&redir, text.replace(DROP_ALL.0, DROP_ALL.1)).unwrap();
    // And is built (the build cache now holds the edited object).
    sb.must("build");

    let out = apply_plan(&sb, &file, &[]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("loading the reviewed objects"),
        "{}",
        stdout(&out)
    );
    // The reviewed program runs: a message to an allowed port arrives.
    assert_eq!(received(&sb, 20_031), 1024);
    assert_eq!(received(&sb, 1000), 0, "the reviewed policy holds");
    // status says the source no longer is what was applied.
    let (code, st) = sb.status(&[]);
    assert_eq!(code, 2, "{st}");
    assert!(st.to_string().contains("changed since apply"), "{st}");

    // A saved plan applies once.
    let again = apply_plan(&sb, &file, &[]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("applied already"),
        "{}",
        stderr(&again)
    );

    // The edited source, applied the usual way, does drop: the reviewed
    // object put in place is not taken for the edited source's build.
    let log = sb.must("apply");
    assert!(log.contains("a program changed"), "{log}");
    assert_eq!(received(&sb, 20_031), 0);
}

#[test]
fn show_shows_what_plan_showed() {
    let Some(sb) = Sandbox::new("show", "manifests/bypass-policy.toml") else {
        return;
    };
    for format in ["text", "sh", "json"] {
        let file = sb.tmp.path().join(format!("p-{format}.json"));
        let planned = run(
            &sb,
            "plan",
            &["--out", file.to_str().unwrap(), "--format", format],
        );
        assert!(planned.status.success(), "{}", stderr(&planned));
        let shown = crate::common::bpfplan()
            .args(["show", "--format", format])
            .arg(&file)
            .output()
            .unwrap();
        assert!(shown.status.success(), "{}", stderr(&shown));
        assert_eq!(stdout(&shown), stdout(&planned), "{format}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
            assert_eq!(v["applicable"], true, "{v}");
            assert_eq!(v["changes"]["decision"], "fresh", "{v}");
            // What `apply --plan` runs: the objects are built and kept in
            // the file, so no build step; 2 loads, 8 map pins, 2 attaches,
            // 4 entries set.
            assert_eq!(v["summary"]["create"], 12, "{v}");
            assert_eq!(v["summary"]["update"], 4, "{v}");
            assert_eq!(v["steps"][3]["object"]["kind"], "program", "{v}");
            // And what `plan` without --out shows: the build, then the same
            // kernel steps.
            let looked = run(&sb, "plan", &["--format", "json"]);
            let l: serde_json::Value = serde_json::from_slice(&looked.stdout).unwrap();
            let argv = |v: &serde_json::Value, build: bool| -> Vec<serde_json::Value> {
                v["changes"]["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| {
                        build
                            == matches!(
                                s["step"]["op"].as_str(),
                                Some("make_build_dir" | "compile")
                            )
                    })
                    .map(|s| s["argv"].clone())
                    .collect()
            };
            assert_eq!(argv(&l, false), argv(&v, false));
            assert_eq!(argv(&l, true).len(), 3);
            assert!(argv(&v, true).is_empty());
        }
    }
}

#[test]
fn a_stale_saved_plan_is_refused_and_changes_nothing() {
    let Some(sb) = Sandbox::new("stale", "manifests/bypass-policy.toml") else {
        return;
    };
    let save = |name: &str, extra: &[&str]| save_plan(&sb, name, extra);
    // Made before any apply; another apply comes in between.
    let before = save("before.json", &[]);
    sb.must("apply");
    let ids = sb.prog_ids();
    let out = apply_plan(&sb, &before, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("record: was none"),
        "{}",
        stderr(&out)
    );

    // Made, then someone detaches the sockops program by hand.
    let policy = save("policy.json", &["--var", "deny_port=20041"]);
    let cg = sb.cgroup.display().to_string();
    sb.detach_sockops_by_hand();
    let out = apply_plan(&sb, &policy, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cgroup {cg}: was programs")),
        "{}",
        stderr(&out)
    );
    assert_eq!(sb.prog_ids(), ids, "a stale plan changed the kernel");
    assert_eq!(sb.attachments().len(), 0);
    sb.must("apply");

    // Made, then the policy changes by another apply.
    let policy = save("policy2.json", &["--var", "deny_port=20042"]);
    sb.must_with("apply", &["--var", "deny_port=20043"]);
    let out = apply_plan(&sb, &policy, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("entries {}", sb.pin("deny_ports"))),
        "{}",
        stderr(&out)
    );
    let last: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "stale", "{last}");
    assert_eq!(
        received(&sb, 20_042),
        1024,
        "the stale plan's policy was applied"
    );
}

#[test]
fn json_events_follow_every_step() {
    let Some(sb) = Sandbox::new("events", "manifests/bypass.toml") else {
        return;
    };
    let plan = sb.plan();
    let out = run(&sb, "apply", &["--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "started")
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    let finished: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "finished")
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    let steps: Vec<String> = crate::common::steps(&plan)
        .iter()
        .map(|s| s.summary())
        .collect();
    assert_eq!(started, steps);
    assert_eq!(finished, steps);
    assert!(
        events
            .iter()
            .filter(|e| e["event"] == "finished")
            .all(|e| e["duration_ms"].is_number())
    );
    let last = events.last().unwrap();
    assert_eq!(
        (&last["event"], &last["ok"], &last["outcome"]),
        (&"result".into(), &true.into(), &"changed".into())
    );

    // A failing apply: the failure, the rollback and the outcome.
    drop(sb);
    let Some(sb) = Sandbox::new("events_fail", "tests/fixtures/kernel/rejected.toml") else {
        return;
    };
    let out = run(&sb, "apply", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed = events
        .iter()
        .find(|e| e["event"] == "finished" && e["outcome"] == "failed")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("BEGIN PROG LOAD LOG"),
        "{failed}"
    );
    assert!(events.iter().any(|e| e["event"] == "rollback"));
    assert_eq!(events.last().unwrap()["ok"], false);
}

#[test]
fn the_audit_log_holds_every_command_root_ran() {
    let Some(sb) = Sandbox::new("audit", "manifests/bypass-policy.toml") else {
        return;
    };
    let out = run(&sb, "apply", &["--format", "json"]);
    assert!(out.status.success());
    let ran: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "finished" && e["outcome"] == "done")
        .map(|e| serde_json::from_value(e["argv"].clone()).unwrap())
        // A step run as a line of a batch is logged with its batch.
        .filter(|a: &Vec<String>| !a.is_empty())
        .collect();
    sb.must("destroy");
    let log = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = crate::common::bpfplan()
            .args(["log", "--format", "json"])
            .args(extra)
            .env("BPFPLAN_AUDIT_LOG", sb.audit_log())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let lines = log(&[]);
    // Every command apply ran is there, before (start) and after (end, with
    // its exit status).
    for argv in ran.iter().filter(|a| a[0] == "bpftool") {
        for phase in ["start", "end"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l["phase"] == phase && l["argv"] == serde_json::json!(argv)),
                "{phase} of {argv:?} is not in the log"
            );
        }
    }
    let ends = lines.iter().filter(|l| l["phase"] == "end").count();
    assert!(ends >= ran.len(), "{ends} ends for {} commands", ran.len());
    assert!(
        lines
            .iter()
            .all(|l| l["user"] == "root" && l["plan_hash"].as_str().unwrap().len() == 64)
    );
    assert!(
        lines.iter().any(|l| l["command"] == "destroy"
            && l["summary"].as_str().unwrap_or("").starts_with("unpin"))
    );
    let mode = std::fs::metadata(sb.audit_log()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // A failed step and its rollback are on record too.
    let failing = crate::common::bpfplan()
        .args(["apply", "tests/fixtures/kernel/rejected.toml"])
        .args(sb.vars_for("tests/fixtures/kernel/rejected.toml".as_ref()))
        .env("BPFPLAN_STATE_DIR", sb.state_dir())
        .env("BPFPLAN_AUDIT_LOG", sb.audit_log())
        .output()
        .unwrap();
    assert_eq!(failing.status.code(), Some(1));
    let lines = log(&["--deployment", "rejected", "--since", "1h"]);
    let failed = lines
        .iter()
        .find(|l| l["phase"] == "end" && l["outcome"] == "failed")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("BEGIN PROG LOAD LOG"),
        "{failed}"
    );
    assert_ne!(failed["exit"], 0);
    assert!(
        lines
            .iter()
            .any(|l| l["note"].as_str().unwrap_or("").starts_with("rolling back"))
    );
    assert!(
        lines
            .iter()
            .all(|l| l["manifest"].as_str().unwrap().ends_with("rejected.toml"))
    );
    let all = log(&["--since", "2000-01-01T00:00:00Z"]);
    assert!(all.len() > lines.len());
    // A torn line (a kill mid-write) is skipped with a warning; the rest
    // still reads.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(sb.audit_log())
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"time\":\"2026-11-\n").unwrap();
    drop(f);
    let out = crate::common::bpfplan()
        .args(["log", "--format", "json"])
        .env("BPFPLAN_AUDIT_LOG", sb.audit_log())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an audit line"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out).lines().count(), all.len());
    sb.assert_clean(&[]);
}

#[test]
fn a_deployment_made_by_the_sh_script_is_adopted_by_apply_and_a_changed_one_refused() {
    let Some(sb) = Sandbox::new("adopt", "manifests/bypass-policy.toml") else {
        return;
    };
    let script = run(&sb, "plan", &["--format", "sh"]);
    let path = sb.tmp.path().join("apply.sh");
    std::fs::write(&path, &script.stdout).unwrap();
    let sh = |path: &std::path::Path| {
        let out = Command::new("sh").arg(path).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    sh(&path);
    // No record, and the kernel holds exactly what the manifest makes (the
    // sh script, or pins that outlived a lost /run): plan says apply adopts,
    // and apply does, saying so in the audit log, without reloading.
    let ids = sb.prog_ids();
    let shown = run(&sb, "plan", &[]);
    assert!(
        stdout(&shown).contains("apply probes the programs' tags, adopts the deployment"),
        "{}",
        stdout(&shown)
    );
    let out = run(&sb, "apply", &[]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("takes over program `bpf_sockops`"),
        "{}",
        stdout(&out)
    );
    assert_eq!(sb.prog_ids(), ids);
    let log = std::fs::read_to_string(sb.audit_log()).unwrap();
    assert!(log.contains("adopted "), "no adoption in the audit log");
    assert!(sb.must("apply").contains("No changes"));
    assert_eq!(sb.status(&[]).0, 0);
    sb.must("destroy");
    sb.assert_clean(&ids);
    // The adopt verb does the same.
    sh(&path);
    let ids = sb.prog_ids();
    let out = run(&sb, "adopt", &[]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(sb.prog_ids(), ids);
    sb.must("destroy");
    sb.assert_clean(&ids);

    // Altered by hand after the script: the verdict detached, an entry
    // changed. Refused, with both differences, and nothing recorded.
    sh(&path);
    let out = Command::new("bpftool")
        .args(["prog", "detach", "pinned", &sb.pin("bpf_tcpip_bypass")])
        .args(["msg_verdict", "pinned", &sb.pin("sock_ops_map")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let update = Command::new("bpftool")
        .args(["map", "update", "pinned", &sb.pin("deny_ports")])
        .args(["key", "hex", "e8", "03", "00", "00", "value", "hex", "07"])
        .output()
        .unwrap();
    assert!(update.status.success());
    // apply refuses it the same way as adopt.
    for verb in ["apply", "adopt"] {
        let out = run(&sb, verb, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{verb}: {err}");
        assert!(err.contains("nothing was adopted"), "{verb}: {err}");
    }
    let out = run(&sb, "adopt", &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was adopted"), "{err}");
    assert!(
        err.contains("program `bpf_redir` is not attached to map `sock_ops_map`"),
        "{err}"
    );
    assert!(err.contains("set `deny_ports`[1000] = 1"), "{err}");
    assert!(
        !sb.store().path.exists(),
        "a refused adoption left a record"
    );
    let dump = bpftool_json(&["map", "dump", "pinned", &sb.pin("deny_ports")]);
    assert_eq!(dump[0]["formatted"]["value"], 7, "adopt changed an entry");
}

/// Root acts on a saved plan only when it holds up: root's own file, the
/// plan its manifest and variables make today, its objects the ones that
/// plan loads, and what apply would run what the file shows. Anything else
/// is refused before a file is written or the kernel touched.
#[test]
fn a_saved_plan_that_does_not_hold_up_is_refused_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, manifest) = checkout("bypass-policy.toml");
    let Some(sb) = Sandbox::new("tampered", manifest.to_str().unwrap()) else {
        return;
    };
    let file = save_plan(&sb, "reviewed.json", &[]);
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let precious = sb.tmp.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let evil = sb.tmp.path().join("evil.o");
    std::fs::write(&evil, "not a reviewed object").unwrap();

    let tampered = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = original.clone();
        edit(&mut v);
        let path = sb.tmp.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        path
    };
    let evil_s = evil.display().to_string();
    let precious_s = precious.display().to_string();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            // The reviewed object written over another file.
            tampered("object-path.json", &|v| {
                v["objects"][0]["path"] = precious_s.clone().into();
            }),
            "not the objects its plan loads",
        ),
        (
            // A step that loads an object nobody reviewed.
            tampered("load-step.json", &|v| {
                for s in v["plan"]["steps"].as_array_mut().unwrap() {
                    if s["op"] == "load_program" {
                        s["object"] = evil_s.clone().into();
                    }
                }
                for o in v["objects"].as_array_mut().unwrap() {
                    o["path"] = evil_s.clone().into();
                }
            }),
            "not the objects its plan loads",
        ),
        (
            // The reviewed objects swapped between the programs: each is
            // still in the store under its own hash.
            tampered("swapped.json", &|v| {
                let objects = v["objects"].as_array_mut().unwrap();
                let (first, second) = (objects[0].clone(), objects[1].clone());
                for key in ["sha256", "kept"] {
                    objects[0][key] = second[key].clone();
                    objects[1][key] = first[key].clone();
                }
            }),
            "the objects were swapped or replaced",
        ),
        (
            // A kept object named by another hash.
            tampered("renamed.json", &|v| {
                v["objects"][0]["sha256"] = "0".repeat(64).into();
            }),
            "is not kept as",
        ),
        (
            // A kept object whose bytes are no longer what was reviewed.
            tampered("rehashed.json", &|v| {
                let kept = std::path::PathBuf::from(v["objects"][0]["kept"].as_str().unwrap());
                let fake = "f".repeat(64);
                let planted = kept.with_file_name(format!("{fake}.o"));
                std::fs::copy(&kept, &planted).unwrap();
                v["objects"][0]["sha256"] = fake.into();
                v["objects"][0]["kept"] = planted.display().to_string().into();
            }),
            "no longer has the hash",
        ),
        (
            // An extra step the manifest never asked for.
            tampered("extra-step.json", &|v| {
                let steps = v["plan"]["steps"].as_array_mut().unwrap();
                steps.push(serde_json::json!({"op": "mount_bpffs", "dir": "/sys/fs/bpf"}));
            }),
            "no longer makes the plan",
        ),
        (
            // A review that hides what apply would run.
            tampered("review.json", &|v| {
                v["review"]["changes"] = serde_json::json!([]);
            }),
            "not what the saved plan shows",
        ),
    ];
    for (path, want) in &cases {
        let out = apply_plan(&sb, path, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{}: {err}", path.display());
        assert!(err.contains(want), "{}: {err}", path.display());
        assert_eq!(sb.pins(), Vec::<String>::new(), "{}", path.display());
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
        if !want.contains("shows") {
            // show refuses it too.
            let shown = crate::common::bpfplan()
                .arg("show")
                .arg(path)
                .output()
                .unwrap();
            assert!(!shown.status.success(), "show {}", path.display());
        }
    }

    // A file someone else could have written.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = apply_plan(&sb, &file, &[]);
    assert!(
        stderr(&out).contains("writable by group or others"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
    let out = apply_plan(&sb, &file, &[]);
    assert!(stderr(&out).contains("not by root"), "{}", stderr(&out));
    std::os::unix::fs::chown(&file, Some(0), None).unwrap();
    assert_eq!(sb.pins(), Vec::<String>::new());

    // The manifest changed since the review.
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("bpf_sockops", "bpf_sockopz")).unwrap();
    let out = apply_plan(&sb, &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no longer makes the plan"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sb.pins(), Vec::<String>::new());

    // The file as it was made, with the manifest as it was, applies.
    std::fs::write(&manifest, text).unwrap();
    let out = apply_plan(&sb, &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sb.pins().len(), 10);
}

/// A saved plan whose run failed and was rolled back was not applied: it
/// can be retried, and then it applies once.
#[test]
fn a_saved_plan_that_failed_can_be_retried() {
    let Some(sb) = Sandbox::new("retried", "manifests/bypass-policy.toml") else {
        return;
    };
    sb.must_with("apply", &["--var", "deny_port=20051"]);
    let file = save_plan(&sb, "entries.json", &["--var", "deny_port=20052"]);
    let failed = apply_plan_cmd(&sb, &file)
        .env("BPFPLAN_FAIL_STEP", "remove `deny_ports`")
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert_eq!(received(&sb, 20_051), 0, "rolled back: 20051 still denied");
    let out = apply_plan(&sb, &file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(received(&sb, 20_052), 0);
    assert_eq!(received(&sb, 20_051), 1024);
    let again = apply_plan(&sb, &file, &[]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("applied already"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn plan_out_never_writes_through_a_link() {
    let Some(sb) = Sandbox::new("out_link", "manifests/bypass.toml") else {
        return;
    };
    // A root-only file, and a link to it where the plan is to go.
    let victim = sb.tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = sb.tmp.path().join("plan.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = run(&sb, "plan", &["--out", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // A plain path gets the plan, by a new file renamed into place.
    let file = sb.tmp.path().join("fine.json");
    let out = run(&sb, "plan", &["--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"plan\""));
    assert_eq!(sb.pins(), Vec::<String>::new());
}
