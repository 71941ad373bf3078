//! Every manifest in `tests/fixtures/invalid/` is refused (or, for `warn_*`,
//! accepted with warnings), and its diagnostics are snapshotted.

use std::path::{Path, PathBuf};

use bpfplan::manifest::diag::Source;
use bpfplan::manifest::validate::{self, Env};

use crate::common;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new("tests/fixtures/invalid");
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| dir.join(e.unwrap().file_name()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    all.sort();
    all
}

/// All diagnostics of a fixture, rendered, and whether it was refused.
fn diagnose(path: &Path) -> (bool, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let host = common::fixed_host();
    let env = Env {
        host: &host,
        overrides: &[],
        exists: &|p: &Path| p.is_file(),
    };
    let src = Source::new(path, text);
    match validate::validate(&src, &env) {
        Ok(checked) => (
            false,
            checked
                .warnings
                .iter()
                .map(|d| src.render(d))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Err(diags) => (
            true,
            diags
                .iter()
                .map(|d| src.render(d))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    }
}

#[test]
fn every_invalid_manifest_is_refused_with_a_located_error() {
    let all = fixtures();
    assert!(
        all.len() >= 15,
        "want at least 15 invalid fixtures, have {}",
        all.len()
    );
    for path in all {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let (refused, out) = diagnose(&path);
        if stem.starts_with("warn_") {
            assert!(!refused, "{stem} should only warn:\n{out}");
            assert!(out.starts_with("warning: "), "{stem}:\n{out}");
        } else {
            assert!(refused, "{stem} was accepted");
            assert!(out.starts_with("error: "), "{stem}:\n{out}");
        }
        // Every diagnostic names the file, a line and a column.
        let located = format!("--> {}:", path.display());
        assert!(out.contains(&located), "{stem} has no location:\n{out}");
        common::settings().bind(|| insta::assert_snapshot!(format!("error-{stem}"), out));
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let (refused, out) = diagnose(Path::new("tests/fixtures/invalid/many_errors.toml"));
    assert!(refused);
    assert_eq!(out.matches("error: ").count(), 4, "{out}");
    for needle in [
        "source file `bpf/missing.c` does not exist",
        "program `bpf_sockops` is defined twice",
        "unknown variable `nope`",
        "no program named `ghost`",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}
