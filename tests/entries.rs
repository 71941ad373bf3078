//! Many map entries on the real kernel: consecutive entry changes run as the
//! lines of one `bpftool batch file -` (in apply and in the sh script), a
//! failing entry is named, and what apply does then is tested: a fresh apply
//! rolls back, an entries-only update restores the entries it had changed.

use std::process::Command;

use crate::common::checkout;
use crate::common::sandbox::Sandbox;

/// `bypass-policy.toml` with `deny_ports` holding these ports.
fn with_ports(manifest: &std::path::Path, ports: impl Iterator<Item = u32>) {
    let entries: Vec<(u32, u32)> = ports.map(|p| (p, 1)).collect();
    crate::common::set_entries(manifest, "deny_ports", &entries);
}

fn deny_keys(sb: &Sandbox) -> Vec<u32> {
    let dump =
        crate::common::sandbox::bpftool_json(&["map", "dump", "pinned", &sb.pin("deny_ports")]);
    let mut keys: Vec<u32> = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["formatted"]["key"].as_u64().unwrap() as u32)
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn many_entries_go_through_one_bpftool_batch() {
    let (_dir, manifest) = checkout("bypass-policy.toml");
    with_ports(&manifest, 20_000..20_300);
    let Some(sb) = Sandbox::new("batch", manifest.to_str().unwrap()) else {
        return;
    };
    // The sh script feeds the same lines to one bpftool through a here-document.
    let script = sb
        .bpfplan_cmd("plan", &manifest)
        .args(["--format", "sh"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&script.stdout).into_owned();
    assert!(
        text.contains("bpftool batch file - <<'BPFPLAN_ENTRIES'"),
        "{text}"
    );
    let deny_lines = format!("\nmap update pinned {} ", sb.pin("deny_ports"));
    assert_eq!(text.matches(&deny_lines).count(), 300);
    let path = sb.tmp.path().join("apply.sh");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new("sh").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(deny_keys(&sb), (20_000..20_300).collect::<Vec<_>>());
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);

    let log = sb.must("apply");
    assert!(
        log.contains("300 step(s) ran as the lines of one `bpftool batch file -`"),
        "{log}"
    );
    assert_eq!(deny_keys(&sb), (20_000..20_300).collect::<Vec<_>>());
    assert_eq!(sb.status(&[]).0, 0);
}

#[test]
fn entries_beyond_max_entries_are_refused_before_anything_changes() {
    let (_dir, manifest) = checkout("bypass-policy.toml");
    // deny_ports holds 1,024 entries (max_entries in redir.c's object).
    with_ports(&manifest, 30_000..31_100);
    let Some(sb) = Sandbox::new("too_many", manifest.to_str().unwrap()) else {
        return;
    };
    let out = sb.bpfplan("apply");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("map `deny_ports` holds at most 1024 entries (max_entries in its object) and the manifest lists 1100"),
        "{err}"
    );
    // Located at the 1,025th entry, as the manifest's other errors are.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let at = text.find("key = 31024").expect("the 1,025th entry");
    let line = text[..at].matches('\n').count() + 1;
    assert!(
        err.contains(&format!("{}:{line}:", manifest.display())),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    // Nothing ran: no program loaded, no pin, no bpftool command on record.
    sb.assert_clean(&[]);
    assert!(!err.contains("$ bpftool"), "a command ran:\n{err}");

    // Deployed with entries that fit, the same refusal leaves them as they are.
    with_ports(&manifest, 30_000..31_000);
    sb.must("apply");
    let ids = sb.prog_ids();
    with_ports(&manifest, 30_000..31_200);
    let out = sb.bpfplan("apply");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(deny_keys(&sb), (30_000..31_000).collect::<Vec<_>>());
    assert_eq!(sb.prog_ids(), ids, "a program was reloaded");
}

#[test]
fn a_failing_entry_is_named_and_rolled_back() {
    let (_dir, manifest) = checkout("bypass-policy.toml");
    with_ports(&manifest, 30_000..31_000);
    let Some(sb) = Sandbox::new("batch_fail", manifest.to_str().unwrap()) else {
        return;
    };
    // A fresh apply whose 1,001st update fails rolls back everything.
    let fail = |sb: &Sandbox, step: &str| {
        sb.bpfplan_cmd("apply", &sb.manifest.clone())
            .env("BPFPLAN_FAIL_STEP", step)
            .output()
            .unwrap()
    };
    with_ports(&manifest, 30_000..31_020);
    let out = fail(&sb, "set `deny_ports`[31000] = 1");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed: set `deny_ports`[31000] = 1"), "{err}");
    assert!(err.contains("nothing is left behind"), "{err}");
    sb.assert_clean(&[]);

    // An entries-only update that fails restores the entries it changed.
    with_ports(&manifest, 30_000..31_000);
    sb.must("apply");
    let ids = sb.prog_ids();
    with_ports(&manifest, 30_000..31_020);
    let out = fail(&sb, "set `deny_ports`[31010] = 1");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("restored the 10 entries it had changed"),
        "{err}"
    );
    assert_eq!(deny_keys(&sb), (30_000..31_000).collect::<Vec<_>>());
    assert_eq!(sb.prog_ids(), ids, "a program was reloaded");
    with_ports(&manifest, 30_000..31_000);
    assert_eq!(sb.status(&[]).0, 0);
}

/// bpftool dies mid-batch (here: after 5 lines, by SIGKILL, through a
/// wrapper first on PATH). bpftool does not say which line it stopped at,
/// so apply reads the map: the first line whose change is not there is
/// named, the five before it are undone, and nothing is left behind. When
/// it dies after its last line, every change is in the map yet bpftool
/// failed: nothing is undone blindly, the run stays on record and the next
/// apply, looking at the map, ends it.
#[test]
fn a_batch_that_dies_midway_is_read_back_from_the_map() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, manifest) = checkout("bypass-policy.toml");
    with_ports(&manifest, 40_000..41_000);
    let Some(sb) = Sandbox::new("batch_died", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    let ids = sb.prog_ids();
    let real = which::which("bpftool").unwrap();
    let bin = sb.tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("bpftool");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let dying = |lines: &str| {
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ \"$1\" = batch ]; then\n  {lines} | {real} batch file - >/dev/null\n  kill -9 $$\nfi\nexec {real} \"$@\"\n",
                real = real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    };

    // An apply that fails, with the wrapper on PATH: its stderr.
    let failing = || {
        let out = sb
            .bpfplan_cmd("apply", &manifest)
            .env("PATH", &path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        err
    };

    // Half the keys go, ten come; bpftool dies after five lines.
    dying("head -n 5");
    with_ports(&manifest, 40_500..41_010);
    let err = failing();
    assert!(
        err.contains("bpftool batch, line 6: its change is not in the map"),
        "{err}"
    );
    assert!(err.contains("nothing is left behind"), "{err}");
    assert_eq!(
        deny_keys(&sb),
        (40_000..41_000).collect::<Vec<_>>(),
        "not undone"
    );

    // It dies after its last line: every change landed, bpftool failed.
    dying("cat");
    let err = failing();
    assert!(
        err.contains("yet every line's change is in the kernel"),
        "{err}"
    );
    assert!(err.contains("nothing was undone blindly"), "{err}");

    let log = sb.must("apply");
    assert!(log.contains("interrupted"), "{log}");
    assert_eq!(deny_keys(&sb), (40_500..41_010).collect::<Vec<_>>());
    assert_eq!(sb.prog_ids(), ids, "a program was reloaded");
    assert_eq!(sb.status(&[]).0, 0);
}

/// A map at its `max_entries` whose keys change: the keys that go are
/// deleted before the new ones are written, so the new ones fit (written
/// first, the first new key would fail with E2BIG).
#[test]
fn a_full_map_takes_new_keys_once_the_old_ones_are_gone() {
    let (_dir, manifest) = checkout("bypass-policy.toml");
    // `deny_ports` holds 1,024.
    with_ports(&manifest, 30_000..31_024);
    let Some(sb) = Sandbox::new("batch_full", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    let ids = sb.prog_ids();
    with_ports(&manifest, 30_010..31_034);
    let log = sb.must("apply");
    assert!(log.contains("remove `deny_ports`[30000]"), "{log}");
    assert_eq!(deny_keys(&sb), (30_010..31_034).collect::<Vec<_>>());
    assert_eq!(sb.prog_ids(), ids, "a program was reloaded");
    assert_eq!(sb.status(&[]).0, 0);
}

/// Entries changed by hand are seen alike whether apply, status and plan
/// read the map ahead, on another core while the manifest is read, or when
/// they look (`BPFPLAN_PREFETCH=0`), or find the deployment's lock held and
/// read nothing ahead.
#[test]
fn entries_read_ahead_are_the_entries_read_when_looking() {
    let (_dir, manifest) = checkout("bypass-policy.toml");
    with_ports(&manifest, 20_000..20_100);
    let Some(sb) = Sandbox::new("ahead", manifest.to_str().unwrap()) else {
        return;
    };
    sb.must("apply");
    assert_eq!(sb.status(&[]).0, 0);
    // Port 20,000 (key 20 4e 00 00) removed by hand.
    let pin = sb.pin("deny_ports");
    crate::common::sandbox::bpftool_json(&[
        "map", "delete", "pinned", &pin, "key", "hex", "20", "4e", "00", "00",
    ]);
    let status = |env: Option<&str>| {
        let mut c = sb.bpfplan_cmd("status", &manifest);
        c.args(["--format", "json"]);
        if let Some(v) = env {
            c.env("BPFPLAN_PREFETCH", v);
        }
        let out = c.output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v["in_sync"].clone(), v["drift"].clone())
    };
    let ahead = status(None);
    assert_eq!(ahead.1, false, "{ahead:?}");
    assert!(ahead.2.to_string().contains("deny_ports"), "{ahead:?}");
    assert_eq!(status(Some("0")), ahead);
    // The lock held (as by a run of this deployment): nothing is read ahead.
    let lock = std::fs::read_dir(sb.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "lock"))
        .unwrap();
    let held = std::fs::File::open(&lock).unwrap();
    held.lock().unwrap();
    assert_eq!(status(None), ahead);
    drop(held);
    // plan shows the same change either way, and apply puts it back.
    let plan = |env: &str| {
        let out = sb
            .bpfplan_cmd("plan", &manifest)
            .args(["--format", "json"])
            .env("BPFPLAN_PREFETCH", env)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["changes"].clone()
    };
    let changes = plan("1");
    assert!(changes.to_string().contains("deny_ports"), "{changes}");
    assert_eq!(plan("0"), changes);
    sb.must("apply");
    assert_eq!(deny_keys(&sb), (20_000..20_100).collect::<Vec<_>>());
    assert_eq!(sb.status(&[]).0, 0);
    let ids = sb.prog_ids();
    sb.must("destroy");
    sb.assert_clean(&ids);
}
