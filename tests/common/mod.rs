//! Helpers shared by the integration tests.

pub mod sandbox;

use std::path::{Path, PathBuf};

use bpfplan::host::HostFacts;
use bpfplan::manifest::diag::Source;
use bpfplan::manifest::validate::{self, Env};
use bpfplan::plan::{Plan, PlanOptions};

/// A command's standard error, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command's standard output, as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host with the unified layout, so snapshots do not depend on the machine.
pub fn fixed_host() -> HostFacts {
    HostFacts {
        cgroup2: Some(PathBuf::from("/sys/fs/cgroup")),
        bpffs: vec![PathBuf::from("/sys/fs/bpf")],
    }
}

/// Every step of a plan, its entry steps made.
pub fn steps(plan: &Plan) -> Vec<bpfplan::plan::step::Step> {
    plan.steps().map(|s| s.into_owned()).collect()
}

/// Validate and plan a manifest file against `fixed_host`; on failure, the
/// rendered diagnostics.
pub fn plan_file(path: &Path, overrides: &[(&str, &str)]) -> Result<Plan, String> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    plan_text(path, &text, overrides)
}

pub fn plan_text(path: &Path, text: &str, overrides: &[(&str, &str)]) -> Result<Plan, String> {
    let host = fixed_host();
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = Env {
        host: &host,
        overrides: &overrides,
        exists: &|p: &Path| p.is_file(),
    };
    // As bpfplan does: resolve against the canonical path, show the given one.
    let canonical = std::path::absolute(path).unwrap();
    let src = Source::new(&canonical, text.to_string()).shown_as(path);
    match validate::validate(&src, &env) {
        Ok(checked) => Ok(bpfplan::plan::plan(
            &checked.model,
            &PlanOptions {
                build_dir: PathBuf::from("target/bpf"),
                include: vec![PathBuf::from("/usr/include/x86_64-linux-gnu")],
            },
        )),
        Err(diags) => Err(diags
            .iter()
            .map(|d| src.render(d))
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

/// insta settings: snapshots in the top-level `snapshots/`, no module
/// prefix, and the checkout's place (plans name files by canonical paths)
/// shown as `[REPO]`.
pub fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    s.set_prepend_module_to_snapshot(false);
    let repo = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
    s.add_filter(&regex_escape(&repo.display().to_string()), "[REPO]");
    // The default build directory is named by a hash of the manifest's path.
    s.add_filter(
        r"/var/cache/bpfplan/build/([a-z-]+)-[0-9a-f]{16}",
        "/var/cache/bpfplan/build/$1-[HASH]",
    );
    s
}

/// A literal string as a regex.
pub fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// The bpfplan binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bpfplan")
}

/// `bpfplan` with its build cache and object store under cargo's temporary
/// directory for tests, never the host's `/var/cache/bpfplan`.
pub fn bpfplan() -> std::process::Command {
    let mut cmd = std::process::Command::new(bin());
    cmd.env(
        "BPFPLAN_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("bpfplan-cache"),
    );
    cmd
}

/// The traffic generator, built beside bpfplan (it is its own package in
/// the workspace, so cargo does not name it for these tests).
pub fn traffic_bin() -> PathBuf {
    let path = Path::new(bin()).with_file_name("bpfplan-traffic");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p bpfplan-traffic` (make test does)",
        path.display()
    );
    path
}

/// Every manifest in `manifests/`, sorted.
pub fn manifests() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir("manifests")
        .expect("manifests/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| PathBuf::from("manifests").join(p.file_name().expect("name")))
        .collect();
    all.sort();
    all
}

/// A copy of the checkout's manifests and C sources in a temporary
/// directory, for tests that edit them; returns it with the path of the
/// named manifest in it.
pub fn checkout(manifest: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["manifests", "bpf"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(sub).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
        }
    }
    let path = dir.path().join("manifests").join(manifest);
    (dir, path)
}

/// Append text to a file.
pub fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

/// Set the entries of map `map` in a manifest to `key = value` pairs.
pub fn set_entries(manifest: &Path, map: &str, entries: &[(u32, u32)]) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let at = text.find(&format!("name = \"{map}\"")).unwrap();
    let start = at + text[at..].find("entries = [").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let list: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{{ key = {k}, value = {v} }}"))
        .collect();
    let new = format!(
        "{}entries = [{}]{}",
        &text[..start],
        list.join(", "),
        &text[end..]
    );
    std::fs::write(manifest, new).unwrap();
}
