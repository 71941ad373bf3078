//! The operator features of the bypass on the real kernel: port policy and
//! its live update, local-only redirect (a peer in a network namespace is
//! left alone), IPv6 and IPv4-mapped connections, counters, and every kind
//! of drift detected by `status` and repaired by `apply`.

use std::process::Command;

use crate::common::sandbox::{
    Netns, Sandbox, assert_not_redirected, assert_redirected, next_event, report, spawn_piped,
};

const MIB: u64 = 1 << 20;

fn send_once(sb: &Sandbox, port: u16) -> serde_json::Value {
    report(sb.traffic(&["send-once", "--port", &port.to_string()]))
}

#[test]
fn a_denied_port_gets_nothing_and_its_sender_an_error() {
    let Some(sb) = Sandbox::new("policy", "manifests/bypass-policy.toml") else {
        return;
    };
    sb.must_with("apply", &["--var", "deny_port=20001"]);
    let denied = send_once(&sb, 20001);
    assert_eq!(denied["received"], 0, "{denied}");
    let err = denied["send_error"].as_str().unwrap_or("");
    assert!(
        err.contains("Permission denied"),
        "the sender sees EACCES: {denied}"
    );
    let allowed = send_once(&sb, 20002);
    assert_eq!(allowed["received"], 1024, "{allowed}");
    assert!(allowed["send_error"].is_null(), "{allowed}");
    let (code, st) = sb.status(&["--var", "deny_port=20001"]);
    assert_eq!(code, 0, "{st}");
    // What a fleet tool aggregates.
    assert_eq!(st["in_sync"], true, "{st}");
    assert_eq!(st["drift"], serde_json::json!([]), "{st}");
    assert!(!st["host"].as_str().unwrap().is_empty(), "{st}");
    assert!(
        st["deployment"]
            .as_str()
            .unwrap()
            .starts_with("bypass-policy-"),
        "{st}"
    );
    let programs = st["programs"].as_array().unwrap();
    assert_eq!(programs.len(), 2, "{st}");
    assert!(
        programs
            .iter()
            .all(|p| p["id"].as_u64().unwrap() > 0 && p["tag"].as_str().unwrap().len() == 16),
        "{st}"
    );
    assert_eq!(Sandbox::gauge(&st, "bypass_stats", "dropped"), 1);
    assert_eq!(
        Sandbox::gauge(&st, "bypass_stats", "redirected_bytes"),
        1024
    );
}

#[test]
fn changing_only_the_policy_updates_it_live() {
    let Some(sb) = Sandbox::new("live_policy", "manifests/bypass-policy.toml") else {
        return;
    };
    sb.must_with("apply", &["--var", "deny_port=20003"]);
    let ids = sb.prog_ids();
    let (mut child, mut lines) =
        spawn_piped(sb.traffic(&["flow", "--conns", "4", "--seconds", "2", "--echo"]));
    assert_eq!(next_event(&mut lines)["event"], "flowing");

    // What apply would change: the entry, nothing else.
    let out = sb
        .bpfplan_cmd("plan", &sb.manifest)
        .args(["--detailed-exitcode", "--var", "deny_port=20004"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(shown.contains("2 changing the kernel"), "{shown}");
    assert!(shown.contains("only map contents differ"), "{shown}");
    assert!(shown.contains("set `deny_ports`[20004] = 1"), "{shown}");
    assert!(shown.contains("remove `deny_ports`[20003]"), "{shown}");

    let log = sb.must_with("apply", &["--var", "deny_port=20004"]);
    assert!(log.contains("no program is reloaded"), "{log}");
    assert!(!log.contains("prog load"), "{log}");
    assert_eq!(sb.prog_ids(), ids, "programs were reloaded");

    // The established connections carried on, every byte intact.
    let end = next_event(&mut lines);
    assert!(child.wait().unwrap().success());
    assert_eq!(end["intact"], true, "{end}");

    // And the new policy holds.
    assert!(send_once(&sb, 20004)["send_error"].is_string());
    assert_eq!(send_once(&sb, 20003)["received"], 1024);
    let out = sb
        .bpfplan_cmd("plan", &sb.manifest)
        .args(["--detailed-exitcode", "--var", "deny_port=20004"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_peer_in_another_namespace_is_not_redirected() {
    let Some(sb) = Sandbox::new("netns", "manifests/bypass.toml") else {
        return;
    };
    let ns = Netns::new("peer");
    sb.must("apply");
    let mut listen = ns.command(crate::common::traffic_bin());
    listen.args(["listen", "--bind", &format!("{}:0", Netns::PEER_IP)]);
    let (mut server, mut server_lines) = spawn_piped(listen);
    let port = next_event(&mut server_lines)["port"].as_u64().unwrap();

    let to = format!("{}:{port}", Netns::PEER_IP);
    let (mut remote, mut remote_lines) = spawn_piped(sb.traffic(&["hold", "--connect", &to]));
    assert_eq!(next_event(&mut remote_lines)["event"], "holding");
    assert_eq!(
        sb.map_len("sock_ops_map"),
        0,
        "the remote connection was inserted"
    );

    // A loopback connection at the same time is redirected.
    let (mut local, mut local_lines) = spawn_piped(sb.traffic(&["hold"]));
    assert_eq!(next_event(&mut local_lines)["event"], "holding");
    assert_eq!(sb.map_len("sock_ops_map"), 2);

    let (_, st) = sb.status(&[]);
    assert_eq!(
        Sandbox::gauge(&st, "bypass_stats", "skipped_remote"),
        1,
        "{st}"
    );
    assert_eq!(Sandbox::gauge(&st, "bypass_stats", "inserted"), 2, "{st}");
    for child in [&mut remote, &mut local, &mut server] {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}

#[test]
fn a_seeded_local_address_is_redirected_and_unseeded_is_not() {
    let Some(sb) = Sandbox::new("seeded", "tests/fixtures/kernel/bypass-seeded.toml") else {
        return;
    };
    let _ns = Netns::new("seed"); // gives this host 198.18.0.1
    let stream = |sb: &Sandbox| {
        report(sb.traffic(&[
            "stream",
            "--bytes",
            &(8 * MIB).to_string(),
            "--bind",
            Netns::HOST_IP,
        ]))
    };
    sb.must("apply");
    assert_redirected(&stream(&sb));
    // Seed another address instead: 198.18.0.1 is no longer local.
    sb.must_with("apply", &["--var", "local_ip=198.18.0.9"]);
    assert_not_redirected(&stream(&sb));
}

#[test]
fn ipv6_and_ipv4_mapped_connections_are_redirected_intact() {
    let Some(sb) = Sandbox::new("ipv6", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let bytes = (16 * MIB).to_string();
    for (bind, connect) in [
        ("::1", "::1"),
        ("::", "::ffff:127.0.0.1"),
        ("::", "127.0.0.1"),
    ] {
        let r = report(sb.traffic(&[
            "stream",
            "--bytes",
            &bytes,
            "--echo",
            "--bind",
            bind,
            "--connect",
            connect,
        ]));
        assert_redirected(&r);
    }
    // Both ends of a live IPv6 connection are in the sockhash.
    let (mut child, mut lines) = spawn_piped(sb.traffic(&["hold", "--bind", "::1"]));
    assert_eq!(next_event(&mut lines)["event"], "holding");
    assert_eq!(sb.map_len("sock_ops_map"), 2);
    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn counters_rise_by_what_was_sent() {
    let Some(sb) = Sandbox::new("counters", "manifests/bypass.toml") else {
        return;
    };
    sb.must("apply");
    let (_, before) = sb.status(&[]);
    let r = report(sb.traffic(&["stream", "--conns", "4", "--bytes", &MIB.to_string()]));
    assert_eq!(r["intact"], true);
    let (code, after) = sb.status(&[]);
    assert_eq!(code, 0, "{after}");
    let delta = |name: &str| {
        Sandbox::gauge(&after, "bypass_stats", name) - Sandbox::gauge(&before, "bypass_stats", name)
    };
    assert_eq!(delta("inserted"), 8, "two sockets per connection");
    // The payload, and each server's one-byte ready signal.
    assert_eq!(delta("redirected_bytes"), 4 * MIB + 4);
    assert!(delta("redirected_msgs") >= 4 * MIB / (64 * 1024));
    assert_eq!(delta("misses"), 0);
    assert_eq!(delta("dropped"), 0);
    assert_eq!(delta("skipped_remote"), 0);
}

/// Every kind of drift `status` reports, each repaired by `apply`.
#[test]
fn every_drift_is_detected_and_repaired() {
    let Some(sb) = Sandbox::new("drift_kinds", "manifests/bypass-policy.toml") else {
        return;
    };
    sb.must("apply");
    assert_eq!(sb.status(&[]).0, 0);
    let build = sb.tmp.path().join("build");
    let cg = sb.cgroup.display().to_string();
    let run = |argv: &[&str]| {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let sockops_pin = sb.pin("bpf_sockops");
    let redir_pin = sb.pin("bpf_tcpip_bypass");
    let map_pin = sb.pin("sock_ops_map");
    let deny_pin = sb.pin("deny_ports");
    let stats_pin = sb.pin("bypass_stats");
    let other = build.join("bpf_sockops.o").display().to_string();
    // (what, how to make the drift, the finding's name, whether apply fixes
    // it with map updates alone)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "attachment removed by hand",
            Box::new(|| {
                run(&[
                    "bpftool",
                    "cgroup",
                    "detach",
                    &cg,
                    "sock_ops",
                    "pinned",
                    &sockops_pin,
                ])
            }),
            "bpf_sockops (sock_ops)",
            "repair",
        ),
        (
            "verdict detached by hand",
            Box::new(|| {
                run(&[
                    "bpftool",
                    "prog",
                    "detach",
                    "pinned",
                    &redir_pin,
                    "msg_verdict",
                    "pinned",
                    &map_pin,
                ])
            }),
            "bpf_redir (msg_verdict)",
            "repair",
        ),
        (
            "pin deleted",
            Box::new(|| run(&["rm", &stats_pin])),
            "bypass_stats",
            "repair",
        ),
        (
            // The program stays attached to the cgroup through its link; the
            // repair must find it by the id apply recorded and detach it.
            "program pin deleted",
            Box::new(|| run(&["rm", &sockops_pin])),
            "bpf_sockops",
            "repair",
        ),
        (
            "program replaced behind its pin",
            Box::new(|| {
                run(&[
                    "bpftool",
                    "cgroup",
                    "detach",
                    &cg,
                    "sock_ops",
                    "pinned",
                    &sockops_pin,
                ]);
                run(&["rm", &sockops_pin]);
                run(&[
                    "bpftool",
                    "prog",
                    "load",
                    &other,
                    &sockops_pin,
                    "type",
                    "sockops",
                ]);
                run(&[
                    "bpftool",
                    "cgroup",
                    "attach",
                    &cg,
                    "sock_ops",
                    "pinned",
                    &sockops_pin,
                    "multi",
                ]);
            }),
            "bpf_sockops",
            "replace",
        ),
        (
            "map entry changed",
            Box::new(|| {
                run(&[
                    "bpftool", "map", "update", "pinned", &deny_pin, "key", "hex", "e8", "03",
                    "00", "00", "value", "hex", "07",
                ])
            }),
            "deny_ports",
            "entries",
        ),
        (
            "map entry added",
            Box::new(|| {
                run(&[
                    "bpftool", "map", "update", "pinned", &deny_pin, "key", "hex", "50", "00",
                    "00", "00", "value", "hex", "01",
                ])
            }),
            "deny_ports",
            "entries",
        ),
    ];
    for (what, make_drift, name, how) in cases {
        let (progs_before, maps_before) = (sb.prog_ids(), sb.map_ids());
        make_drift();
        let (code, st) = sb.status(&[]);
        assert_eq!(code, 2, "{what} not detected: {st}");
        assert_eq!(st["in_sync"], false, "{st}");
        assert!(
            st["drift"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d.as_str().unwrap().contains(name)),
            "{what}: drift does not say why: {st}"
        );
        let finding = st["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name && f["health"]["state"] != "present")
            .unwrap_or_else(|| panic!("{what}: no finding for {name}: {st}"));
        let ids = sb.prog_ids();
        let log = sb.must("apply");
        match how {
            "entries" => {
                assert!(log.contains("no program is reloaded"), "{what}: {log}");
                assert_eq!(sb.prog_ids(), ids, "{what}: programs reloaded");
            }
            // Only what drifted is put back: the same programs and maps
            // (so the counters go on), pinned where they were.
            "repair" => {
                assert!(
                    log.contains("putting back only what drifted"),
                    "{what}: {log}"
                );
                assert!(!log.contains("prog load"), "{what}: {log}");
                assert_eq!(sb.prog_ids(), progs_before, "{what}: programs reloaded");
                assert_eq!(sb.map_ids(), maps_before, "{what}: maps replaced");
            }
            _ => assert!(log.contains("replacing the deployment"), "{what}: {log}"),
        }
        let (code, st) = sb.status(&[]);
        assert_eq!(code, 0, "{what} ({finding}) not repaired: {st}");
        assert_eq!(
            sb.attachments().len(),
            1,
            "{what}: an old program is still attached"
        );
    }
    assert_redirected(&report(sb.traffic(&[
        "stream",
        "--bytes",
        &(4 * MIB).to_string(),
    ])));
}

/// A program's source edited after apply: `status` reports it, and `apply`
/// either finds the object unchanged (a comment) or replaces the program (a
/// code change); either way `status` is in sync afterwards.
#[test]
fn an_edited_source_is_reported_and_settled_by_apply() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    std::fs::create_dir_all(dir.path().join("bpf")).unwrap();
    std::fs::copy(
        "manifests/bypass.toml",
        dir.path().join("manifests/bypass.toml"),
    )
    .unwrap();
    for f in ["sockops.c", "redir.c", "sock_key.h"] {
        std::fs::copy(format!("bpf/{f}"), dir.path().join("bpf").join(f)).unwrap();
    }
    let manifest = dir.path().join("manifests/bypass.toml");
    let Some(sb) = Sandbox::new("edited", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    let redir = dir.path().join("bpf/redir.c");
    let edit = |extra: &str| {
        let mut text = std::fs::read_to_string(&redir).unwrap();
        text.push_str(extra);
        std::fs::write(&redir, text).unwrap();
    };

    edit("/* a comment at the end changes no instruction */\n");
    let (code, st) = sb.status(&[]);
    assert_eq!(code, 2, "{st}");
    assert!(st.to_string().contains("changed since apply"), "{st}");
    sb.must("apply");
    assert_eq!(sb.status(&[]).0, 0);

    edit("static __attribute__((used)) int bpfplan_test_marker(void) { return 7; }\n");
    assert_eq!(sb.status(&[]).0, 2);
    let ids = sb.prog_ids();
    let log = sb.must("apply");
    assert!(
        log.contains("a program changed: replacing the deployment"),
        "{log}"
    );
    assert_ne!(sb.prog_ids(), ids);
    assert_eq!(sb.status(&[]).0, 0);
}
