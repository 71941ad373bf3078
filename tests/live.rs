//! Changes reach live connections, and the bypass cannot hurt the host, on
//! the real kernel: a policy change after replaces reaches connections made
//! before them (the maps are kept), counters survive a replace, destroy
//! turns established connections into plain TCP with every byte intact
//! through stalled and slow readers in both directions, and a reader that
//! stops holds its sender back instead of filling the host's memory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout};

use crate::common::sandbox::{Sandbox, next_event, report, spawn_piped};
use crate::common::{self, stderr};

const MIB: u64 = 1 << 20;

/// A traffic process driven line by line: its stdin and its events.
struct Driven {
    child: Child,
    stdin: ChildStdin,
    events: BufReader<ChildStdout>,
}

impl Driven {
    fn new(sb: &Sandbox, args: &[&str]) -> Driven {
        let (mut child, events) = spawn_piped(sb.traffic(args));
        let stdin = child.stdin.take().unwrap();
        Driven {
            child,
            stdin,
            events,
        }
    }

    fn event(&mut self) -> serde_json::Value {
        next_event(&mut self.events)
    }

    /// One line on its stdin (the next phase, or one more message).
    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// `talk`: send one message and report what it met.
    fn say(&mut self) -> serde_json::Value {
        self.go();
        let e = self.event();
        assert_eq!(e["event"], "said", "{e}");
        e
    }

    fn end(mut self) {
        drop(self.stdin);
        let mut rest = String::new();
        let _ = self.events.read_line(&mut rest);
        assert!(self.child.wait().unwrap().success());
    }
}

fn denied(e: &serde_json::Value) -> bool {
    e["send_error"]
        .as_str()
        .is_some_and(|s| s.contains("Permission denied"))
        && e["received"] == 0
}

fn delivered(e: &serde_json::Value) -> bool {
    e["send_error"].is_null() && e["received"] == 1024
}

fn counter(sb: &Sandbox, name: &str, extra: &[&str]) -> u64 {
    let (_, st) = sb.status(extra);
    Sandbox::gauge(&st, "bypass_stats", name)
}

#[test]
fn a_policy_change_after_replaces_reaches_connections_made_before_them() {
    let (dir, manifest) = common::checkout("bypass-policy.toml");
    let Some(sb) = Sandbox::new("policy_live", manifest.to_str().unwrap()) else {
        return;
    };
    let deny = |port: &str| vec!["--var".to_string(), format!("deny_port={port}")];
    let deny_args = |port: &str| deny(port);
    let args = deny_args("20061");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.must_with("apply", &a);
    // Connection A, to a port the policy allows, and B, to the denied port
    // (it sends nothing yet), made now.
    let mut a_conn = Driven::new(&sb, &["talk", "--port", "20062"]);
    assert_eq!(a_conn.event()["event"], "talking");
    assert!(delivered(&a_conn.say()));
    let mut b_conn = Driven::new(&sb, &["talk", "--port", "20061"]);
    assert_eq!(b_conn.event()["event"], "talking");
    let redirected = counter(&sb, "redirected_msgs", &a);
    assert!(redirected >= 1);

    // Two replaces: edited programs, loaded beside the running ones.
    let redir = dir.path().join("bpf/redir.c");
    for marker in [1, 2] {
        common::append(
            &redir,
            &format!(
                "static __attribute__((used)) int bpfplan_live_{marker}(void) {{ return {marker}; }}\n"
            ),
        );
        let log = sb.must_with("apply", &a);
        assert!(log.contains("replacing the deployment"), "{log}");
        assert!(!log.contains("is not kept"), "{log}");
        assert!(
            log.contains("live on"),
            "the old programs are held by A and B: {log}"
        );
    }
    // Counters survived both replaces: the kept map is the same one.
    assert!(counter(&sb, "redirected_msgs", &a) >= redirected);

    // The policy changes (entries only): A and B, made before both
    // replaces, run the first programs, and meet the new policy: A is
    // denied, B is allowed.
    let args = deny_args("20062");
    let b: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = sb.must_with("apply", &b);
    assert!(log.contains("no program is reloaded"), "{log}");
    let e = a_conn.say();
    assert!(
        denied(&e),
        "a connection made before the replaces was not denied: {e}"
    );
    let e = b_conn.say();
    assert!(
        delivered(&e),
        "a lifted deny did not reach a connection made before: {e}"
    );
    a_conn.end();
    b_conn.end();
    sb.must("destroy");
}

#[test]
fn after_destroy_established_connections_are_plain_tcp_and_lose_nothing() {
    let Some(sb) = Sandbox::new("destroy_live", "manifests/bypass-policy.toml") else {
        return;
    };
    // The backpressure bound as shipped: no queue grows past what TCP
    // would hold, so the switch to TCP at destroy finds room.
    let vars = ["--var", "deny_port=20071", "--var", "max_queued=0"];
    sb.must_with("apply", &vars);
    let ids = sb.prog_ids();
    // A stream both ways with stalled readers: data waits at each receiver.
    let mut stream = Driven::new(
        &sb,
        &[
            "across",
            "--before",
            &(4 * MIB).to_string(),
            "--after",
            &(8 * MIB).to_string(),
        ],
    );
    let q = stream.event();
    assert_eq!(q["event"], "queued", "{q}");
    assert!(
        q["client_error"].is_null() && q["server_error"].is_null(),
        "{q}"
    );
    assert!(q["client_sent"].as_u64().unwrap() > 0, "{q}");
    // The port is denied; a connection to it, made now, has sent nothing
    // (the kernel keeps denying a connection once one of its sends was).
    let probe = crate::common::sandbox::report(sb.traffic(&["send-once", "--port", "20071"]));
    assert!(denied(&probe), "{probe}");
    let mut blocked = Driven::new(&sb, &["talk", "--port", "20071"]);
    assert_eq!(blocked.event()["event"], "talking");

    let out = sb
        .bpfplan_cmd("destroy", &sb.manifest)
        .args(vars)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    // destroy says what the kernel still holds, and why.
    assert!(err.contains("still holds program ids"), "{err}");
    assert!(err.contains("connection(s) (ports"), "{err}");
    assert!(err.contains("over TCP"), "{err}");
    let (_, st) = sb.status(&vars);
    assert!(
        st["lingering"]["connections"]
            .as_array()
            .is_some_and(|c| c.len() >= 2),
        "{st}"
    );

    // No deny any more, and the bytes take TCP (they are counted on `lo`).
    let e = blocked.say();
    assert!(delivered(&e), "{e}");
    assert!(e["lo_bytes"].as_u64().unwrap() >= 1024, "{e}");
    // The stream carries on: slow readers read what was queued, then what
    // came by TCP, every byte once and in order, both ways.
    stream.go();
    let done = stream.event();
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["intact"], true, "{done}");
    assert!(
        done["client_error"].is_null() && done["server_error"].is_null(),
        "{done}"
    );
    assert!(
        done["lo_bytes_after"].as_u64().unwrap() >= 2 * 8 * MIB,
        "{done}"
    );
    stream.end();
    blocked.end();
    // Once they closed, the kernel frees it all, and status says nothing.
    sb.assert_freed(&ids);
    let (_, st) = sb.status(&vars);
    assert!(st["lingering"].is_null(), "{st}");
}

/// TCP's memory-pressure counter, host-wide.
fn memory_pressures() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == "TCPMemoryPressures")
            .unwrap();
        return values.split_whitespace().nth(i).unwrap().parse().unwrap();
    }
    panic!("no TcpExt in /proc/net/netstat")
}

#[test]
fn a_reader_that_stops_holds_its_sender_back() {
    let Some(sb) = Sandbox::new("backpressure", "manifests/bypass.toml") else {
        return;
    };
    // The bound as shipped: the receiver's own buffer.
    let shipped = ["--var", "max_queued=0"];
    sb.must_with("apply", &shipped);
    let pressures = memory_pressures();
    // Both ends write 64 MiB while neither reads: without backpressure the
    // bypass would queue all of it at the receivers.
    let mut stream = Driven::new(
        &sb,
        &[
            "across",
            "--before",
            &(64 * MIB).to_string(),
            "--after",
            &MIB.to_string(),
        ],
    );
    let q = stream.event();
    assert_eq!(q["event"], "queued", "{q}");
    for end in ["client", "server"] {
        let sent = q[format!("{end}_sent")].as_u64().unwrap();
        assert!(
            sent <= 16 * MIB,
            "the {end} queued {sent} bytes at a stalled reader: {q}"
        );
        assert!(q[format!("{end}_error")].is_null(), "never ENOMEM: {q}");
    }
    assert!(counter(&sb, "demoted_backpressure", &shipped) >= 2);
    assert_eq!(
        memory_pressures(),
        pressures,
        "the host's TCP memory went under pressure"
    );
    // The readers resume: every byte arrives, in order.
    stream.go();
    let done = stream.event();
    assert_eq!(done["intact"], true, "{done}");
    stream.end();
    sb.must_with("destroy", &shipped);
}

/// Run `plan --manifest-only --format sh [--destroy]` of `manifest` with the
/// sandbox's variables, then the script.
fn by_sh(sb: &Sandbox, manifest: &str, destroy: bool) {
    let mut c = common::bpfplan();
    c.args(["plan", manifest, "--manifest-only", "--format", "sh"])
        .args(sb.vars_for(manifest.as_ref()));
    if destroy {
        c.arg("--destroy");
    }
    let script = c.output().unwrap();
    assert!(script.status.success(), "{}", stderr(&script));
    let path = sb.tmp.path().join("by.sh");
    std::fs::write(&path, &script.stdout).unwrap();
    let out = std::process::Command::new("sh")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn adopt_takes_over_only_what_the_manifest_makes() {
    let Some(mut sb) = Sandbox::new("adopt_lookalike", "manifests/bypass.toml") else {
        return;
    };
    // A lookalike: the same programs (same tags) with a sockhash of 4.
    by_sh(&sb, "tests/fixtures/kernel/small-sockhash.toml", false);
    let out = sb.bpfplan("adopt");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "map `sock_ops_map` is not as the manifest's object makes it (max_entries 4 -> 65535)"
        ),
        "{err}"
    );
    by_sh(&sb, "tests/fixtures/kernel/small-sockhash.toml", true);
    assert_eq!(sb.pins(), Vec::<String>::new());

    // The real thing, but its sockops program also attached elsewhere.
    by_sh(&sb, "manifests/bypass.toml", false);
    let elsewhere = sb.child_cgroup("elsewhere");
    let hand = |verb: &str| {
        let out = std::process::Command::new("bpftool")
            .args(["cgroup", verb])
            .arg(&elsewhere)
            .args(["sock_ops", "pinned", &sb.pin("bpf_sockops")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    hand("attach");
    let out = sb.bpfplan("adopt");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "is also attached to cgroup {}",
            elsewhere.display()
        )),
        "{err}"
    );
    hand("detach");
    let out = sb.bpfplan("adopt");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sb.status(&[]).0, 0);
    sb.must("destroy");
    sb.assert_clean(&[]);
}

#[test]
fn a_destroy_without_a_record_leaves_another_deployments_objects() {
    let (dir, manifest) = common::checkout("bypass.toml");
    let Some(sb) = Sandbox::new("claims", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    let (pins, ids) = (sb.pins(), sb.prog_ids());
    // The same manifest at another path: another deployment, with the very
    // same pins, objects and tags, and no record of its own.
    let twin = dir.path().join("manifests/twin.toml");
    std::fs::copy(&manifest, &twin).unwrap();
    let out = sb.bpfplan_cmd("destroy", &twin).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("it is the deployment of"), "{err}");
    assert_eq!(sb.pins(), pins, "another deployment's pins were removed");
    assert_eq!(sb.prog_ids(), ids);
    assert_eq!(sb.attachments().len(), 1);
    assert_eq!(sb.status(&[]).0, 0);
    sb.must("destroy");
    sb.assert_clean(&ids);
}

#[test]
fn status_sees_a_reader_that_fell_behind() {
    let Some(sb) = Sandbox::new("stalled", "manifests/bypass.toml") else {
        return;
    };
    // A bound above the receivers' buffers: data waits at stalled readers.
    let bound = format!("max_queued={}", 8 * MIB);
    let vars = ["--var", bound.as_str()];
    sb.must_with("apply", &vars);
    let (_, st) = sb.status(&vars);
    assert_eq!(st["stalled"], serde_json::json!([]), "{st}");
    assert!(st["tcp_memory"]["pressure"].as_u64().unwrap() > 0, "{st}");
    let mut stream = Driven::new(
        &sb,
        &["across", "--before", &(2 * MIB).to_string(), "--after", "0"],
    );
    let q = stream.event();
    assert_eq!(q["event"], "queued", "{q}");
    let (code, st) = sb.status(&vars);
    // Both ends hold what the other sent and nobody read.
    let stalled = st["stalled"].as_array().unwrap();
    assert_eq!(stalled.len(), 2, "{st}");
    for s in stalled {
        assert!(
            s["rmem_alloc"].as_u64().unwrap() > s["rcvbuf"].as_u64().unwrap(),
            "{s}"
        );
    }
    assert!(
        st["warnings"]
            .to_string()
            .contains("its reader fell behind"),
        "{st}"
    );
    assert_eq!(code, 0, "a stall is not drift: {st}");
    stream.go();
    let done = stream.event();
    assert_eq!(done["intact"], true, "{done}");
    stream.end();
    let (_, st) = sb.status(&vars);
    assert_eq!(st["stalled"], serde_json::json!([]), "{st}");
    sb.must_with("destroy", &vars);
}

#[test]
fn doctor_compat_says_what_the_bypass_changes_and_leaves_nothing() {
    // The sandbox only holds the kernel tests' lock: doctor makes its own.
    let Some(_sb) = Sandbox::new("compat", "manifests/bypass.toml") else {
        return;
    };
    let out = common::bpfplan()
        .args([
            "doctor",
            "--compat",
            "manifests/bypass.toml",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["machine"].as_str().unwrap().contains("kernel"), "{r}");
    let probe = |name: &str| {
        r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["probe"] == name)
            .unwrap_or_else(|| panic!("no probe {name}: {r}"))
            .clone()
    };
    // What tcp_bpf changes on the kernels measured, and what it does not.
    for differs in ["msg_oob", "msg_waitall", "tcp_info"] {
        let p = probe(differs);
        assert_eq!(p["differs"], true, "{p}");
        assert!(p["fix"].as_str().unwrap().contains("skip_ports"), "{p}");
    }
    for same in ["half_close", "msg_peek", "fionread"] {
        let p = probe(same);
        assert_eq!(p["differs"], false, "{p}");
        assert!(p["fix"].is_null(), "{p}");
    }
    // Nothing of its own sandbox is left.
    let left = |dir: &str| {
        std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("bpfplan-compat")
        })
    };
    assert!(!left("/sys/fs/bpf"), "pins left behind");
    let host = bpfplan::host::HostFacts::read().unwrap();
    assert!(
        !left(host.cgroup2.unwrap().to_str().unwrap()),
        "a cgroup left behind"
    );
}

#[test]
fn every_message_size_crosses_backpressure_and_destroy_intact() {
    let Some(sb) = Sandbox::new("sizes", "manifests/bypass.toml") else {
        return;
    };
    let shipped = ["--var", "max_queued=0"];
    // (bytes per write, bytes each way before and after the change)
    for (size, total) in [(1, 64 * 1024), (4096, 2 * MIB), (MIB, 8 * MIB)] {
        for destroy in [false, true] {
            sb.must_with("apply", &shipped);
            let mut stream = Driven::new(
                &sb,
                &[
                    "across",
                    "--write-size",
                    &size.to_string(),
                    "--before",
                    &total.to_string(),
                    "--after",
                    &total.to_string(),
                ],
            );
            let q = stream.event();
            assert_eq!(q["event"], "queued", "{size}: {q}");
            assert!(
                q["client_error"].is_null() && q["server_error"].is_null(),
                "{size}: {q}"
            );
            if destroy {
                sb.must_with("destroy", &shipped);
            }
            stream.go();
            let done = stream.event();
            assert_eq!(
                done["intact"], true,
                "{size} B writes, destroy {destroy}: {done}"
            );
            assert_eq!(done["client_received"], 2 * total, "{size}: {done}");
            assert_eq!(done["server_received"], 2 * total, "{size}: {done}");
            stream.end();
            if !destroy {
                sb.must_with("destroy", &shipped);
            }
        }
    }
}

#[test]
fn a_bulk_transfer_leaves_the_redirect_and_request_response_stays() {
    let Some(sb) = Sandbox::new("bulk", "manifests/bypass.toml") else {
        return;
    };
    let bulk = ["--var", "bulk_bytes=1048576"];
    sb.must_with("apply", &bulk);
    let before = |name: &str| counter(&sb, name, &bulk);
    let (msgs, demoted) = (before("redirected_msgs"), before("demoted_bulk"));
    // 4,000 exchanges of 1 KiB on one connection move 4 MiB each way, four
    // times the bound, but every answer ends the run: no demotion, and
    // every message is redirected.
    let rr = report(sb.traffic(&["rr", "--size", "1024", "--count", "4000"]));
    assert!(rr["value"].as_f64().is_some(), "{rr}");
    assert_eq!(
        before("demoted_bulk"),
        demoted,
        "request/response taken for bulk"
    );
    assert!(before("redirected_msgs") >= msgs + 8000);
    // A one-way 16 MiB stream is bulk once its receiver took 1 MiB in a
    // row: its sender leaves for TCP (bytes on lo), and every byte arrives
    // in order.
    let s = report(sb.traffic(&["stream", "--bytes", &(16 * MIB).to_string()]));
    assert_eq!(s["intact"], true, "{s}");
    assert_eq!(before("demoted_bulk"), demoted + 1, "{s}");
    assert!(s["lo_bytes"].as_u64().unwrap() >= 14 * MIB, "{s}");
    sb.must_with("destroy", &bulk);
}

/// The kernel's BPF run statistics, host-wide (`kernel.bpf_stats_enabled`).
fn stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap()
}

/// How many times the kernel counted program `id` running (0 when it
/// counted nothing: bpftool leaves the field out).
fn run_cnt(id: u64) -> u64 {
    let v = crate::common::sandbox::bpftool_json(&["prog", "show", "id", &id.to_string()]);
    v["run_cnt"].as_u64().unwrap_or(0)
}

#[test]
fn status_stats_counts_runs_for_its_window_only() {
    let Some(sb) = Sandbox::new("stats", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let sysctl = stats_sysctl();
    let mut status = sb.bpfplan_cmd("status", &sb.manifest.clone());
    status
        .args(["--stats", "5", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = status.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("counting the programs' runs") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "status ended first");
    }
    // 2,000 exchanges: each is a send by either end through the verdict.
    let rr = report(sb.traffic(&["rr", "--size", "64", "--count", "2000"]));
    assert!(rr["value"].as_f64().is_some(), "{rr}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = &r["program_stats"];
    let prog = |name: &str| {
        st["programs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {st}"))
            .clone()
    };
    let redir = prog("bpf_redir");
    assert!(redir["runs"].as_u64().unwrap() >= 4000, "{st}");
    assert!(redir["ns_per_run"].as_f64().unwrap() > 0.0, "{st}");
    assert!(prog("bpf_sockops")["runs"].as_u64().unwrap() >= 2, "{st}");
    // Nothing stays on: the sysctl never moved, and once status ended the
    // kernel counts no more runs (unless someone turned it on host-wide).
    assert_eq!(stats_sysctl(), sysctl);
    if sysctl.trim() == "0" {
        let id = redir["id"].as_u64().unwrap();
        let before = run_cnt(id);
        report(sb.traffic(&["rr", "--size", "64", "--count", "200"]));
        assert_eq!(run_cnt(id), before, "run statistics stayed on");
    }
    sb.must("destroy");
}
