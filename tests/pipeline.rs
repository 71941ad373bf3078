//! The account is the truth, on the real kernel: for each kind of run
//! (fresh with missing pin directories, entries only, replace, repair after
//! a hand detach, recovery after a kill, destroy, destroy without a record)
//! the commands the audit log records equal, in order, the commands `plan`
//! showed just before (map ids aside). The fake kernel's twins
//! (`src/kernel/twins.rs`) run the same matrix without root; this keeps
//! the fake honest. And the sh export of a decision runs as apply does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::sandbox::Sandbox;
use crate::common::{self, stderr, stdout};

/// A deployment of `manifest` into `pin_dir` inside the sandbox.
struct Deployment<'a> {
    sb: &'a Sandbox,
    manifest: PathBuf,
    pin_dir: PathBuf,
}

/// A command line with the map ids aside: the word after `id` is one
/// only the kernel knows when the step runs.
fn aside(words: &[String]) -> String {
    let mut out = Vec::new();
    let mut after_id = false;
    for w in words {
        out.push(if after_id { "<id>" } else { w.as_str() });
        after_id = w == "id";
    }
    out.join(" ")
}

impl Deployment<'_> {
    fn cmd(&self, verb: &str, extra: &[&str]) -> Command {
        let mut c = common::bpfplan();
        c.arg(verb)
            .arg(&self.manifest)
            .arg("--var")
            .arg(format!("cgroup={}", self.sb.cgroup.display()))
            .arg("--var")
            .arg(format!("pin_dir={}", self.pin_dir.display()))
            .arg("--build-dir")
            .arg(self.sb.tmp.path().join("build"))
            .args(extra)
            .env("BPFPLAN_STATE_DIR", self.sb.state_dir())
            .env("BPFPLAN_AUDIT_LOG", self.sb.audit_log());
        c
    }

    /// The commands `plan` shows (as JSON, numbered as the run numbers
    /// them), and its decision.
    fn planned(&self, extra: &[&str]) -> (String, Vec<String>) {
        let out = self
            .cmd("plan", &[&["--format", "json"], extra].concat())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let steps = v["changes"]["steps"]
            .as_array()
            .expect("a look at the kernel");
        let commands = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                assert_eq!(s["index"], i + 1, "{s}");
                let words: Vec<String> = s["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().map_or("<id>".to_string(), str::to_string))
                    .collect();
                aside(&words)
            })
            .collect();
        (
            v["changes"]["decision"].as_str().unwrap().to_string(),
            commands,
        )
    }

    /// Lines in the audit log so far.
    fn logged(&self) -> usize {
        std::fs::read_to_string(self.sb.audit_log())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// The commands the audit log recorded as started after line `from`
    /// (a batch's lines each as the bpftool command it is).
    fn ran_since(&self, from: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.sb.audit_log()).unwrap();
        let mut out = Vec::new();
        for line in text.lines().skip(from) {
            let l: serde_json::Value = serde_json::from_str(line).unwrap();
            if l["phase"] != "start" {
                continue;
            }
            let argv: Vec<String> = serde_json::from_value(l["argv"].clone()).unwrap();
            match l["lines"].as_array() {
                Some(lines) if !lines.is_empty() => {
                    for b in lines {
                        let mut words = vec!["bpftool".to_string()];
                        words.extend(b.as_str().unwrap().split(' ').map(str::to_string));
                        out.push(aside(&words));
                    }
                }
                _ => out.push(aside(&argv)),
            }
        }
        out
    }

    /// Run `verb` as `plan` showed it just before: the same commands, in
    /// order. Returns the decision and the commands.
    #[track_caller]
    fn as_planned(&self, verb: &str, extra: &[&str]) -> (String, Vec<String>) {
        let plan_extra: Vec<&str> = match verb {
            "destroy" => [extra, &["--destroy"]].concat(),
            _ => extra.to_vec(),
        };
        let (decision, shown) = self.planned(&plan_extra);
        let from = self.logged();
        let out = self.cmd(verb, extra).output().unwrap();
        assert!(
            out.status.success(),
            "{verb}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(
            self.ran_since(from),
            shown,
            "{verb} ran what plan did not show ({decision})"
        );
        (decision, shown)
    }

    /// `status` exits 0: the kernel is as the manifest says.
    #[track_caller]
    fn in_sync(&self, extra: &[&str]) {
        let out = self.cmd("status", extra).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

fn edit(path: &Path, marker: u32) {
    common::append(
        path,
        &format!(
            "static __attribute__((used)) int bpfplan_marker_{marker}(void) {{ return {marker}; }}\n"
        ),
    );
}

#[test]
fn every_run_is_the_commands_its_plan_showed() {
    let (dir, manifest) = common::checkout("bypass-policy.toml");
    let Some(sb) = Sandbox::new("as_planned", manifest.to_str().unwrap()) else {
        return;
    };
    let d = Deployment {
        sb: &sb,
        manifest: manifest.clone(),
        pin_dir: sb.pin_dir.join("team").join("web"),
    };
    // Fresh, into pin directories that do not exist: each is made, and shown.
    let (decision, shown) = d.as_planned("apply", &[]);
    assert_eq!(decision, "fresh");
    let mkdirs: Vec<&String> = shown
        .iter()
        .filter(|c| c.starts_with("mkdir -m 0700"))
        .collect();
    assert_eq!(mkdirs.len(), 2, "{shown:?}");
    d.in_sync(&[]);

    // Entries only.
    let (decision, _) = d.as_planned("apply", &["--var", "deny_port=20098"]);
    assert_eq!(decision, "entries");

    // A replace: an edited program.
    let redir = dir.path().join("bpf/redir.c");
    edit(&redir, 1);
    let (decision, _) = d.as_planned("apply", &["--var", "deny_port=20098"]);
    assert_eq!(decision, "replace");
    d.in_sync(&["--var", "deny_port=20098"]);

    // Repair after a hand detach.
    let out = Command::new("bpftool")
        .args(["cgroup", "detach"])
        .arg(&sb.cgroup)
        .args(["sock_ops", "pinned"])
        .arg(d.pin_dir.join("bpf_sockops"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (decision, _) = d.as_planned("apply", &["--var", "deny_port=20098"]);
    assert_ne!(decision, "nothing");
    d.in_sync(&["--var", "deny_port=20098"]);

    // Recovery after a kill in the middle of a replace.
    edit(&redir, 2);
    let killed = d
        .cmd("apply", &["--var", "deny_port=20098"])
        .env("BPFPLAN_DIE_AT", "after:9")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), Some(137), "{}", stderr(&killed));
    let (decision, shown) = d.as_planned("apply", &["--var", "deny_port=20098"]);
    assert_eq!(decision, "recover", "{shown:?}");
    d.in_sync(&["--var", "deny_port=20098"]);

    // Destroy, as shown; then there is nothing left to show or do.
    let (decision, shown) = d.as_planned("destroy", &["--var", "deny_port=20098"]);
    assert_eq!(decision, "destroy");
    assert!(shown.iter().any(|c| c.starts_with("rmdir")), "{shown:?}");
    assert!(
        !d.pin_dir.exists(),
        "the pin directories made by apply are gone"
    );
    let (decision, shown) = d.as_planned("destroy", &["--var", "deny_port=20098"]);
    assert_eq!((decision.as_str(), shown.len()), ("nothing_to_destroy", 0));

    // Destroy without a record: the probe, then the teardown, as shown.
    d.as_planned("apply", &[]);
    let records: Vec<PathBuf> = std::fs::read_dir(sb.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    std::fs::remove_file(&records[0]).unwrap();
    let (_, shown) = d.as_planned("destroy", &[]);
    assert!(shown.iter().any(|c| c.contains("~probe")), "{shown:?}");
    assert_eq!(std::fs::read_dir(&d.pin_dir).unwrap().count(), 0);
    std::fs::remove_dir(&d.pin_dir).unwrap();
    std::fs::remove_dir(d.pin_dir.parent().unwrap()).unwrap();
    sb.assert_clean(&[]);
}

#[test]
fn the_sh_export_of_a_plan_runs_where_apply_would() {
    let Some(sb) = Sandbox::new("sh_export", "manifests/bypass.toml") else {
        return;
    };
    let d = Deployment {
        sb: &sb,
        manifest: PathBuf::from("manifests/bypass.toml"),
        pin_dir: sb.pin_dir.join("made").join("by_sh"),
    };
    // The pin directories do not exist: the script makes them, as apply would.
    let script = d.cmd("plan", &["--format", "sh"]).output().unwrap();
    assert!(script.status.success(), "{}", stderr(&script));
    let path = sb.tmp.path().join("apply.sh");
    std::fs::write(&path, &script.stdout).unwrap();
    let out = Command::new("sh").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let by_sh: Vec<String> = std::fs::read_dir(&d.pin_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(by_sh.len(), 9, "{by_sh:?}");
    assert_eq!(sb.attachments().len(), 1);
    // What the script made is what the manifest makes: adopt takes it over.
    let out = d.cmd("adopt", &[]).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    d.in_sync(&[]);
    d.as_planned("destroy", &[]);
    // Directories the script made are not on bpfplan's record: they stay.
    std::fs::remove_dir(&d.pin_dir).unwrap();
    std::fs::remove_dir(d.pin_dir.parent().unwrap()).unwrap();
    sb.assert_clean(&[]);
}
