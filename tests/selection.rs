//! Which connections the bypass takes, chosen live: `skip_ports` keeps a
//! port's connections on plain TCP, `only_ports` (when it lists any port)
//! bypasses only those; changing either reloads nothing and leaves
//! established connections as they were. A full sockhash is counted and
//! `status` says so.

use crate::common::sandbox::{
    Sandbox, assert_not_redirected, assert_redirected, next_event, report, spawn_piped,
};
use crate::common::{checkout, set_entries};

const MIB: u64 = 1 << 20;

fn stream(sb: &Sandbox, port: u16) -> serde_json::Value {
    report(sb.traffic(&[
        "stream",
        "--bytes",
        &(4 * MIB).to_string(),
        "--port",
        &port.to_string(),
    ]))
}

#[test]
fn skipped_and_only_ports_choose_what_is_bypassed_live() {
    let (_dir, manifest) = checkout("bypass.toml");
    let Some(sb) = Sandbox::new("selection", manifest.to_str().unwrap()) else {
        return;
    };
    set_entries(&manifest, "skip_ports", &[(20_051, 1)]);
    sb.must("apply");
    let ids = sb.prog_ids();
    // A skipped port's bytes cross lo, intact; another port is bypassed.
    assert_not_redirected(&stream(&sb, 20_051));
    assert_redirected(&stream(&sb, 20_052));
    let (_, st) = sb.status(&[]);
    assert_eq!(
        Sandbox::gauge(&st, "bypass_stats", "skipped_selection"),
        2,
        "{st}"
    );

    // A connection established before a change keeps its decision.
    let (mut held, mut lines) = spawn_piped(sb.traffic(&["hold"]));
    let ev = next_event(&mut lines);
    let held_port = ev["server_port"].as_u64().unwrap() as u32;
    assert_eq!(sb.map_len("sock_ops_map"), 2);

    // only_ports: just those connections are bypassed. Entries only: no
    // program is reloaded.
    set_entries(&manifest, "skip_ports", &[(held_port, 1)]);
    set_entries(&manifest, "only_ports", &[(20_053, 1)]);
    let log = sb.must("apply");
    assert!(log.contains("no program is reloaded"), "{log}");
    assert_eq!(sb.prog_ids(), ids, "a program was reloaded");
    assert_eq!(
        sb.map_len("sock_ops_map"),
        2,
        "the held connection lost its bypass"
    );
    assert_redirected(&stream(&sb, 20_053));
    assert_not_redirected(&stream(&sb, 20_054));
    drop(held.stdin.take());
    let _ = held.wait();

    // Back to everything.
    set_entries(&manifest, "skip_ports", &[]);
    set_entries(&manifest, "only_ports", &[]);
    sb.must("apply");
    assert_redirected(&stream(&sb, 20_054));
    assert_eq!(sb.prog_ids(), ids);
    assert_eq!(sb.status(&[]).0, 0);
}

#[test]
fn a_full_sockhash_is_counted_and_reported() {
    let Some(sb) = Sandbox::new("full", "tests/fixtures/kernel/small-sockhash.toml") else {
        return;
    };
    sb.must("apply");
    // Three connections, six sockets, room for four.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (child, mut lines) = spawn_piped(sb.traffic(&["hold"]));
        assert_eq!(next_event(&mut lines)["event"], "holding");
        held.push((child, lines));
    }
    assert_eq!(sb.map_len("sock_ops_map"), 4);
    let (code, st) = sb.status(&[]);
    assert_eq!(code, 0, "a full sockhash is not drift: {st}");
    assert_eq!(
        Sandbox::gauge(&st, "bypass_stats", "insert_failed"),
        2,
        "{st}"
    );
    let warnings = st["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("sockhash was full")),
        "{st}"
    );
    let text = sb.must("status");
    assert!(
        text.contains("warning: bypass_stats.insert_failed is 2"),
        "{text}"
    );
    for (mut child, _) in held {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
