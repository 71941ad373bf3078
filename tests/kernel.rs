//! apply and destroy on the real kernel, proven with real TCP traffic. Each
//! test works in its own child cgroup and pin directory (see `Sandbox`).

use std::process::Command;
use std::time::Duration;

use crate::common::sandbox::{
    Sandbox, assert_not_redirected, assert_redirected, bpftool_json, next_event, report,
    spawn_piped,
};

const MIB: u64 = 1 << 20;
const BYPASS_PINS: [&str; 9] = [
    "bpf_sockops",
    "bpf_tcpip_bypass",
    "bypass_bounds",
    "bypass_ctl",
    "bypass_stats",
    "local_addrs",
    "only_ports",
    "skip_ports",
    "sock_ops_map",
];

use crate::common::stderr;

#[test]
fn apply_then_destroy_leaves_nothing() {
    let Some(sb) = Sandbox::new("basic", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    assert_eq!(sb.pins(), BYPASS_PINS);
    assert_eq!(
        sb.attachments(),
        [("bpf_sockops".to_string(), "cgroup_sock_ops".to_string())]
    );
    let ids = sb.prog_ids();
    assert_eq!(ids.len(), 2);
    sb.must("destroy");
    sb.assert_clean(&ids);
    // Idempotent: a second destroy has nothing to do and succeeds.
    sb.must("destroy");
}

#[test]
fn sockhash_holds_both_sockets_of_a_live_connection() {
    let Some(sb) = Sandbox::new("sockhash", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    assert_eq!(sb.map_len("sock_ops_map"), 0);
    let (mut child, mut lines) = spawn_piped(sb.traffic(&["hold"]));
    let ev = next_event(&mut lines);
    assert_eq!(ev["event"], "holding");
    assert_eq!(sb.map_len("sock_ops_map"), 2, "both ends of the connection");
    drop(child.stdin.take()); // let it close the connection
    assert!(child.wait().unwrap().success());
    // Closed sockets leave the sockhash.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sb.map_len("sock_ops_map") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "closed sockets stayed in the sockhash"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bypass_keeps_the_payload_off_loopback() {
    let Some(sb) = Sandbox::new("lo_bytes", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let bytes = (64 * MIB).to_string();
    let inside = report(sb.traffic(&["stream", "--bytes", &bytes]));
    assert_eq!(inside["payload_bytes"].as_u64().unwrap(), 64 * MIB);
    assert_redirected(&inside);

    // The same transfer from outside the cgroup takes the TCP/IP path.
    let mut outside = Command::new(crate::common::traffic_bin());
    outside.args(["stream", "--bytes", &bytes]);
    assert_not_redirected(&report(outside));
}

#[test]
fn thirty_two_connections_echo_intact() {
    let Some(sb) = Sandbox::new("integrity", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let bytes = (4 * MIB).to_string();
    let r = report(sb.traffic(&["stream", "--conns", "32", "--bytes", &bytes, "--echo"]));
    assert_eq!(r["conns"], 32);
    assert_eq!(r["payload_bytes"].as_u64().unwrap(), 32 * 4 * MIB * 2);
    assert_redirected(&r);
}

#[test]
fn destroy_while_streaming_loses_nothing() {
    let Some(sb) = Sandbox::new("live_destroy", "manifests/bypass.toml") else {
        return;
    };
    // The backpressure bound as shipped (the receivers' buffers): streams
    // that switch to TCP at destroy find room there.
    let shipped = ["--var", "max_queued=0"];
    sb.must_with("apply", &shipped);
    let (mut child, mut lines) =
        spawn_piped(sb.traffic(&["flow", "--conns", "4", "--seconds", "3", "--echo"]));
    assert_eq!(next_event(&mut lines)["event"], "flowing");
    std::thread::sleep(Duration::from_millis(300));
    let ids = sb.prog_ids();
    sb.must_with("destroy", &shipped);
    sb.assert_clean(&ids);
    let end = next_event(&mut lines);
    assert!(child.wait().unwrap().success());
    assert_eq!(end["intact"], true, "{end}");
    assert!(end["bytes_per_conn"].as_u64().unwrap() > 0);
}

#[test]
fn a_program_the_verifier_rejects_rolls_back_everything() {
    let Some(sb) = Sandbox::new("verifier", "tests/fixtures/kernel/rejected.toml") else {
        return;
    };
    let (_, err) = sb.expect_exit("apply", 1);
    assert!(
        err.contains("step 6/7 failed: load sockops program `rejected`"),
        "{err}"
    );
    assert!(
        err.contains("undid the 2 kernel change(s) before it"),
        "{err}"
    );
    // The verifier's own words reach the operator.
    assert!(err.contains("-- BEGIN PROG LOAD LOG --"), "{err}");
    assert!(err.contains("invalid bpf_context access"), "{err}");
    sb.assert_clean(&[]);
    assert!(
        !sb.state_dir()
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().path().extension().is_some_and(|x| x == "json") })
    );
}

#[test]
fn a_failure_after_kernel_changes_undoes_them() {
    let Some(sb) = Sandbox::new("halfway", "tests/fixtures/kernel/missing_map.toml") else {
        return;
    };
    let (log, err) = sb.expect_exit("apply", 1);
    assert!(err.contains("load sk_msg program `bpf_redir`"), "{err}");
    assert!(
        err.contains("bpftool prog load"),
        "the failing command is shown: {err}"
    );
    assert!(log.contains("unpin map `egress_stats`"), "{log}");
    assert!(log.contains("unpin program `count_egress`"), "{log}");
    sb.assert_clean(&[]);
}

#[test]
fn reapply_changes_nothing_and_a_concurrent_apply_waits() {
    let Some(sb) = Sandbox::new("reapply", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let ids = sb.prog_ids();
    let again = sb.must("apply");
    assert!(again.contains("No changes"), "{again}");
    assert!(!again.contains("bpftool prog load"), "{again}");
    assert_eq!(sb.prog_ids(), ids, "programs were reloaded");

    // Hold the deployment's lock as another apply would.
    let store = sb.store();
    let lock = store.lock(Some(Duration::from_secs(1))).unwrap();
    let out = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .env("BPFPLAN_LOCK_TIMEOUT", "0.3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another bpfplan apply or destroy"),
        "{}",
        stderr(&out)
    );
    drop(lock);
    assert!(sb.must("apply").contains("No changes"));
}

#[test]
fn drift_is_repaired_by_apply() {
    let Some(sb) = Sandbox::new("drift", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    // Someone detaches the sockops program by hand.
    sb.detach_sockops_by_hand();
    let log = sb.must("apply");
    assert!(
        log.contains("drift: attachment `bpf_sockops (sock_ops)`"),
        "{log}"
    );
    assert_eq!(sb.attachments().len(), 1);
    let again = sb.must("apply");
    assert!(again.contains("No changes"), "{again}");

    // Someone detaches the sk_msg program from the sockhash (bpftool cannot
    // show this attachment; bpfplan asks the kernel with BPF_PROG_QUERY).
    let out = Command::new("bpftool")
        .args(["prog", "detach", "pinned", &sb.pin("bpf_tcpip_bypass")])
        .args(["msg_verdict", "pinned", &sb.pin("sock_ops_map")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = sb.must("apply");
    assert!(
        log.contains("drift: attachment `bpf_redir (msg_verdict)`"),
        "{log}"
    );
    assert_redirected(&report(sb.traffic(&[
        "stream",
        "--bytes",
        &(8 * MIB).to_string(),
    ])));
    assert!(sb.must("apply").contains("No changes"));
}

#[test]
fn a_killed_apply_is_cleaned_up_by_the_next_run() {
    let Some(sb) = Sandbox::new("killed", "manifests/bypass.toml") else {
        return;
    };
    // Warm the build cache so the kills land in the kernel steps.
    sb.must("apply");
    sb.must("destroy");
    for delay_ms in [0u64, 2, 5, 10, 15, 20, 30, 45, 60] {
        let mut child = sb
            .bpfplan_cmd("apply", &sb.manifest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The next apply finishes the job...
        let log = sb.must("apply");
        assert_eq!(sb.pins(), BYPASS_PINS, "{log}");
        assert_eq!(sb.attachments().len(), 1, "{log}");
        // ...and destroy leaves nothing.
        let ids = sb.prog_ids();
        sb.must("destroy");
        sb.assert_clean(&ids);
    }
    // A kill followed directly by destroy also leaves nothing.
    let mut child = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(25));
    let _ = child.kill();
    let _ = child.wait();
    sb.must("destroy");
    sb.assert_clean(&[]);
}

#[test]
fn the_sh_script_reaches_the_same_state_as_apply() {
    let Some(sb) = Sandbox::new("sh_script", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let applied = (sb.pins(), sb.attachments(), sb.map_len("sock_ops_map"));
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);

    let script = sb
        .bpfplan_cmd("plan", &sb.manifest)
        .args(["--format", "sh"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let path = sb.tmp.path().join("apply.sh");
    std::fs::write(&path, &script.stdout).unwrap();
    let out = Command::new("sh").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        (sb.pins(), sb.attachments(), sb.map_len("sock_ops_map")),
        applied
    );

    // The bypass the script set up really redirects.
    assert_redirected(&report(sb.traffic(&[
        "stream",
        "--bytes",
        &(8 * MIB).to_string(),
    ])));

    // destroy (with no record of an apply) tears down what the script made.
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);
}

#[test]
fn the_egress_counter_counts_the_cgroups_traffic() {
    let Some(sb) = Sandbox::new("egress", "manifests/egress-counter.toml") else {
        return;
    };
    sb.must("apply");
    assert_eq!(
        sb.attachments(),
        [("count_egress".to_string(), "cgroup_inet_egress".to_string())]
    );
    let r = report(sb.traffic(&["stream", "--bytes", &MIB.to_string()]));
    assert_eq!(r["intact"], true);
    let dump = bpftool_json(&["map", "dump", "pinned", &sb.pin("egress_stats")]);
    let value = |k: u64| -> u64 {
        dump.as_array()
            .unwrap()
            .iter()
            .find(|e| e["formatted"]["key"].as_u64() == Some(k))
            .and_then(|e| e["formatted"]["value"].as_u64())
            .unwrap_or(0)
    };
    assert!(value(0) > 0, "no packets counted: {dump}");
    assert!(value(1) >= MIB, "fewer bytes counted than sent: {dump}");
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);
}

/// A cgroup/sock program with its own attach type (`cgroup/post_bind4`):
/// loaded as such, attached, and run by the cgroup's binds (its counter
/// moves with the stream's listener and client).
#[test]
fn a_post_bind4_program_loads_attaches_and_runs() {
    let Some(sb) = Sandbox::new("post_bind", "tests/fixtures/kernel/post-bind.toml") else {
        return;
    };
    sb.must("apply");
    assert_eq!(
        sb.attachments(),
        [(
            "bind_guard".to_string(),
            "cgroup_inet4_post_bind".to_string()
        )]
    );
    let r = report(sb.traffic(&["stream", "--bytes", "1024"]));
    assert_eq!(r["intact"], true);
    let (code, st) = sb.status(&[]);
    assert_eq!(code, 0, "{st}");
    assert!(Sandbox::gauge(&st, "binds", "binds") >= 1, "{st}");
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);
}

#[test]
fn preflight_failures_change_nothing() {
    let Some(sb) = Sandbox::new("preflight", "manifests/bypass.toml") else {
        return;
    };
    // A cgroup that does not exist.
    let mut cmd = sb.bpfplan_cmd("apply", &sb.manifest);
    cmd.args(["--var", &format!("cgroup={}/nope", sb.cgroup.display())]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot be used"), "{}", stderr(&out));
    sb.assert_clean(&[]);
    // A pin directory that does not exist is made (private to root),
    // recorded, and removed by destroy.
    let missing = sb.pin_dir.join("team_a");
    let var = format!("pin_dir={}", missing.display());
    sb.must_with("apply", &["--var", &var]);
    let mode = std::fs::metadata(&missing).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    sb.must_with("destroy", &["--var", &var]);
    assert!(!missing.exists(), "destroy left the pin directory it made");
    sb.assert_clean(&[]);

    // When someone else pins into that directory, destroy leaves it (and
    // their pin) and still completes.
    sb.must_with("apply", &["--var", &var]);
    let foreign = missing.join("foreign");
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&foreign)
        .args([
            "type", "hash", "key", "4", "value", "4", "entries", "1", "name", "foreign",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let log = sb.must_with("destroy", &["--var", &var]);
    assert!(log.contains("not empty"), "{log}");
    assert!(foreign.exists(), "destroy removed a pin it did not make");
    let records: Vec<_> = std::fs::read_dir(sb.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(records.is_empty(), "destroy left its record: {records:?}");
    std::fs::remove_file(&foreign).unwrap();
    std::fs::remove_dir(&missing).unwrap();
    sb.assert_clean(&[]);

    // Two levels missing: each is made private to root, and each goes.
    let deep = sb.pin_dir.join("team_b").join("web");
    let var = format!("pin_dir={}", deep.display());
    sb.must_with("apply", &["--var", &var]);
    for dir in [deep.as_path(), deep.parent().unwrap()] {
        let mode = std::fs::metadata(dir).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700,
            "{}",
            dir.display()
        );
    }
    sb.must_with("destroy", &["--var", &var]);
    assert!(
        !deep.parent().unwrap().exists(),
        "destroy left a directory it made"
    );
    sb.assert_clean(&[]);
}

/// A kill after step N, made exactly: run the first N steps by hand, record
/// them as started the way apply does, then let the next run recover.
#[test]
fn an_apply_interrupted_after_any_step_is_recovered() {
    let Some(sb) = Sandbox::new("interrupted", "manifests/bypass.toml") else {
        return;
    };
    let plan = sb.plan();
    let store = sb.store();
    for n in 1..=plan.len() {
        for step in &crate::common::steps(&plan)[..n] {
            let argv: Vec<String> = step
                .argv()
                .iter()
                .map(|a| match a {
                    bpfplan::plan::step::Arg::Lit(s) => s.clone(),
                    bpfplan::plan::step::Arg::MapId { program_pin, map } => {
                        bpfplan::kernel::inspect::map_id_of(program_pin.as_str(), map.as_str())
                            .unwrap()
                            .to_string()
                    }
                })
                .collect();
            let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
            assert!(out.status.success(), "{argv:?}: {}", stderr(&out));
        }
        // The record apply writes before its first kernel step, and the
        // journal lines it appends before each one.
        let ops: Vec<bpfplan::plan::Op> = crate::common::steps(&plan)
            .iter()
            .filter(|s| s.touches_kernel())
            .cloned()
            .map(bpfplan::plan::Op::of)
            .collect();
        use bpfplan::kernel::record::{FORMAT_VERSION, Record, Run, RunKind};
        store
            .save(&Record {
                format_version: FORMAT_VERSION,
                manifest: plan.manifest.clone(),
                deployed: None,
                run: Some(Run {
                    kind: RunKind::Fresh,
                    plan: std::sync::Arc::new(plan.clone()),
                    ops,
                    commit_at: None,
                    sources: Vec::new(),
                    objects: Vec::new(),
                    pin_dirs: Vec::new(),
                }),
                last_plan: None,
            })
            .unwrap();
        let kernel_steps = crate::common::steps(&plan)[..n]
            .iter()
            .filter(|s| s.touches_kernel())
            .count();
        let mut journal = store.journal().unwrap();
        for i in 0..kernel_steps {
            journal.started(i).unwrap();
        }
        if n % 2 == 0 {
            // The next apply undoes the partial run and applies anew.
            let log = sb.must("apply");
            if kernel_steps > 0 {
                assert!(log.contains("was interrupted"), "{log}");
            }
            assert_eq!(sb.pins(), BYPASS_PINS);
            assert_eq!(sb.attachments().len(), 1);
            assert!(sb.must("apply").contains("No changes"));
        }
        // Odd n: destroy alone cleans up the partial run.
        let ids = sb.prog_ids();
        sb.must("destroy");
        sb.assert_clean(&ids);
    }
}

/// `bpfplan bench --quick --format json` of the bypass, in the sandbox.
fn quick_bench(sb: &Sandbox) -> Command {
    let mut cmd = crate::common::bpfplan();
    cmd.args([
        "bench",
        "manifests/bypass.toml",
        "--quick",
        "--format",
        "json",
    ])
    .arg("--cgroup-parent")
    .arg(&sb.cgroup)
    .arg("--pin-parent")
    .arg(&sb.pin_dir);
    cmd
}

/// `--bulk-bytes` measures the bypass under each bound and counts, from the
/// verdict's own counters, what each bound demoted: a bound of 1 byte
/// sends every connection back to TCP, request/response too, so it is not
/// advised; 0 demotes nothing. Counts, not timings, are checked.
#[test]
fn bench_calibrates_bulk_bytes_from_the_demotion_counters() {
    let Some(sb) = Sandbox::new("bench_bulk", "manifests/bypass.toml") else {
        return;
    };
    let out = quick_bench(&sb)
        .args([
            "--workload",
            "rr,stream",
            "--sizes",
            "1k",
            "--bulk-bytes",
            "0,1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bulk = &report["bulk"];
    let rows = bulk["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{bulk}");
    assert_eq!(rows[0]["bulk_bytes"], 0);
    assert_eq!(rows[0]["rr_demoted"], 0, "{bulk}");
    assert_eq!(rows[0]["stream_demoted"], 0, "{bulk}");
    assert!(rows[1]["rr_demoted"].as_u64().unwrap() >= 1, "{bulk}");
    assert!(rows[1]["stream_demoted"].as_u64().unwrap() >= 1, "{bulk}");
    for row in rows {
        for cell in row["cells"].as_array().unwrap() {
            assert!(
                cell["vs_loopback"].as_f64().is_some_and(f64::is_finite),
                "{cell}"
            );
        }
    }
    assert!(bulk["recommended"].is_null(), "{bulk}");
    assert!(
        bulk["advice"].as_str().unwrap().contains("try larger"),
        "{bulk}"
    );
}

/// The bench harness runs end to end (tiny durations); only that figures
/// were produced is checked, never their values.
#[test]
fn bench_smoke_produces_every_figure() {
    let Some(sb) = Sandbox::new("bench", "manifests/bypass.toml") else {
        return;
    };
    let chart = sb.tmp.path().join("chart.svg");
    let out = quick_bench(&sb)
        .arg("--chart")
        .arg(&chart)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    for row in rows {
        for path in ["loopback", "bypass", "unix"] {
            let median = row[path]["median"].as_f64().unwrap_or(f64::NAN);
            assert!(median.is_finite() && median > 0.0, "{row}");
        }
        assert!(
            row["bypass_vs_loopback"]
                .as_f64()
                .is_some_and(f64::is_finite),
            "{row}"
        );
    }
    assert_eq!(report["control_plane"].as_array().unwrap().len(), 4);
    // What the programs ran over the bypass rounds, from the kernel's run
    // statistics (the bypass rounds send through the verdict).
    assert!(report["program_runs_unmeasured"].is_null(), "{report}");
    let redir = report["program_runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bpf_redir")
        .unwrap_or_else(|| panic!("no bpf_redir in {}", report["program_runs"]));
    assert!(redir["runs"].as_u64().unwrap() > 0, "{redir}");
    // A verdict in plain words for each workload, and what to do about it.
    let verdicts = report["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 7);
    for v in verdicts {
        assert!(
            ["wins", "loses", "within_noise", "inconclusive"]
                .contains(&v["outcome"].as_str().unwrap()),
            "{v}"
        );
        assert!(!v["advice"].as_str().unwrap().is_empty(), "{v}");
    }
    assert!(!report["advice"].as_str().unwrap().is_empty());
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"));
    // A bar and a min..max whisker per workload and path, a legend, the
    // machine and kernel in the title, latency apart from throughput.
    assert_eq!(svg.matches("<rect x=").count(), 7 * 3, "bars");
    assert_eq!(svg.matches("class=\"whisker\"").count(), 7 * 3, "whiskers");
    assert_eq!(svg.matches("class=\"legend\"").count(), 3, "legend");
    let machine = report["machine"].as_str().unwrap();
    assert!(
        svg.contains(&format!("bpfplan bench on {machine}")),
        "title"
    );
    assert!(svg.contains("lower is better") && svg.contains("higher is better"));
    // The bench removed its own cgroups and pins.
    assert_eq!(
        std::fs::read_dir(&sb.cgroup)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        0
    );
    assert_eq!(sb.pins(), Vec::<String>::new());

    // The operator's own sizes, one workload: only that is measured.
    let out = quick_bench(&sb)
        .args(["--workload", "rr", "--sizes", "300,2k"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workloads: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(workloads, ["rr 300 B", "rr 2 KiB"]);
    assert_eq!(report["control_plane"], serde_json::json!([]));
}

#[test]
fn the_xdp_counter_counts_packets_on_a_veth() {
    let Some(sb) = Sandbox::new("xdp", "manifests/xdp-counter.toml") else {
        return;
    };
    let ns = crate::common::sandbox::Netns::new("xdp");
    let iface = format!("interface={}", ns.host_if);
    sb.must_with("apply", &["--var", &iface]);
    let xdp_id = |dev: &str| bpftool_json(&["net", "show", "dev", dev])[0]["xdp"][0]["id"].as_u64();
    let ids = sb.prog_ids();
    assert_eq!(xdp_id(&ns.host_if), Some(ids[0]), "not attached");

    // Packets from the namespace arrive on the host end of the veth.
    let mut listen = ns.command(crate::common::traffic_bin());
    listen.args(["listen", "--bind", "198.18.0.2:0"]);
    let (mut server, mut lines) = spawn_piped(listen);
    let port = next_event(&mut lines)["port"].as_u64().unwrap();
    let to = format!("198.18.0.2:{port}");
    let (mut client, mut client_lines) = spawn_piped(sb.traffic(&["hold", "--connect", &to]));
    assert_eq!(next_event(&mut client_lines)["event"], "holding");
    let dump = bpftool_json(&["map", "dump", "pinned", &sb.pin("xdp_packets")]);
    let counted: u64 = dump[0]["formatted"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["value"].as_u64())
        .sum();
    assert!(counted >= 1, "no packet counted: {dump}");
    for child in [&mut client, &mut server] {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    sb.must_with("destroy", &["--var", &iface]);
    assert_eq!(xdp_id(&ns.host_if), None, "still attached");
    sb.assert_clean(&ids);
}

/// bpfplan reads programs and maps with bpf(2) itself; what it reads must
/// be what bpftool reports.
#[test]
fn what_bpfplan_reads_is_what_bpftool_shows() {
    let Some(sb) = Sandbox::new("inspect", "manifests/bypass-policy.toml") else {
        return;
    };
    sb.must("apply");
    // Some traffic, so the per-CPU counters and the sockhash hold something.
    let (mut child, mut lines) = spawn_piped(sb.traffic(&["hold"]));
    assert_eq!(next_event(&mut lines)["event"], "holding");
    use bpfplan::kernel::inspect::{self, PinState};
    for pin in sb.pins() {
        let path = sb.pin(&pin);
        match inspect::pinned(&path).unwrap() {
            Some(PinState::Program(p)) => {
                let b = bpftool_json(&["prog", "show", "pinned", &path]);
                assert_eq!(b["id"].as_u64(), Some(p.id.into()), "{pin}");
                assert_eq!(b["tag"], p.tag, "{pin}");
                assert_eq!(b["type"], p.prog_type.word().as_ref(), "{pin}");
                assert_eq!(b["name"], p.name, "{pin}");
                let ids: Vec<u64> = b["map_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(
                    ids,
                    p.map_ids.iter().map(|&i| u64::from(i)).collect::<Vec<_>>(),
                    "{pin}"
                );
            }
            Some(PinState::Map(m)) => {
                let b = bpftool_json(&["map", "show", "pinned", &path]);
                assert_eq!(b["id"].as_u64(), Some(m.id.into()), "{pin}");
                assert_eq!(b["type"], m.map_type.word().as_ref(), "{pin}");
                assert_eq!(b["name"], m.name, "{pin}");
                // Contents read in batches equal bpftool's dump.
                let hex = |v: &serde_json::Value| -> Vec<u8> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|h| {
                            u8::from_str_radix(h.as_str().unwrap().trim_start_matches("0x"), 16)
                                .unwrap()
                        })
                        .collect()
                };
                let mut theirs: Vec<(Vec<u8>, Vec<Vec<u8>>)> =
                    bpftool_json(&["map", "dump", "pinned", &path])
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| {
                            let values = match e.get("values") {
                                Some(per_cpu) => per_cpu
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|c| hex(&c["value"]))
                                    .collect(),
                                None => vec![hex(&e["value"])],
                            };
                            (hex(&e["key"]), values)
                        })
                        .collect();
                let mut ours: Vec<(Vec<u8>, Vec<Vec<u8>>)> = inspect::map_dump(&path)
                    .unwrap()
                    .into_iter()
                    .map(|e| {
                        (
                            e.key.to_vec(),
                            e.values.iter().map(|v| v.to_vec()).collect(),
                        )
                    })
                    .collect();
                theirs.sort();
                ours.sort();
                // A sockhash's values are socket cookies: compare the keys.
                if m.map_type == bpfplan::manifest::model::KernelMapType::Sockhash {
                    assert_eq!(ours.len(), 2, "{pin}");
                    theirs
                        .iter_mut()
                        .chain(ours.iter_mut())
                        .for_each(|e| e.1.clear());
                }
                assert_eq!(ours, theirs, "{pin}");
            }
            other => panic!("{pin}: {other:?}"),
        }
    }
    assert_eq!(inspect::pinned(&sb.pin("nothing_here")).unwrap(), None);
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Objects built once (`bpfplan build`, or any apply) are kept in the
/// build cache: an apply whose objects are current runs without clang, as
/// at boot.
#[test]
fn after_a_build_apply_needs_no_compiler() {
    let Some(sb) = Sandbox::new("no_clang", "manifests/bypass.toml") else {
        return;
    };
    let log = sb.must("build");
    assert!(log.contains("compile program `bpf_sockops`"), "{log}");
    // A PATH with what apply runs, and no compiler.
    let bin = sb.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["bpftool", "mv", "rm", "mkdir", "rmdir", "mount"] {
        let path = which::which(tool).unwrap();
        std::os::unix::fs::symlink(path, bin.join(tool)).unwrap();
    }
    let out = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    assert_eq!(sb.status(&[]).0, 0);
    let doctor = sb
        .bpfplan_cmd("doctor", &sb.manifest)
        .env("PATH", &bin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("apply needs no compiler"), "{text}");
    // A stale object does need one, and says so before changing anything.
    sb.must("destroy");
    std::fs::remove_file(sb.tmp.path().join("build/bpf_redir.o")).unwrap();
    let out = sb
        .bpfplan_cmd("apply", &sb.manifest)
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`clang` not found in PATH"),
        "{}",
        stderr(&out)
    );
    sb.assert_clean(&[]);
}

/// doctor on a host without bpftool, or without privileges, gives advice,
/// not a stack trace, and exits 1.
#[test]
fn doctor_explains_what_is_missing() {
    let ok = crate::common::bpfplan()
        .args(["doctor", "--format", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    if unsafe { libc::geteuid() } == 0 && which::which("bpftool").is_ok() {
        assert_eq!(ok.status.code(), Some(0), "{report}");
        assert_eq!(report["ok"], true, "{report}");
    }
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "privileges",
        "bpftool",
        "bpffs",
        "cgroup v2",
        "BTF",
        "kernel version",
    ] {
        assert!(names.contains(&name), "{name} not checked: {names:?}");
    }
    let empty = tempfile::tempdir().unwrap();
    let out = crate::common::bpfplan()
        .arg("doctor")
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  bpftool") && text.contains("fix: apt-get install bpftool"),
        "{text}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(crate::common::bin())
        .arg("doctor")
        .output();
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("FAIL  privileges") && text.contains("run bpfplan as root"),
            "{text}"
        );
    }
}
