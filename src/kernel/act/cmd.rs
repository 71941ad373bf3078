//! Where every process of the kernel side starts (bpftool, clang, mount,
//! mkdir, mv, rm): with a time limit, killed with bpfplan, and an error that
//! names the command and carries what it printed on stderr.

use anyhow::{Context, Result, anyhow, bail};
use std::time::Duration;

/// What a finished command left.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// How long one command may run (`BPFPLAN_COMMAND_TIMEOUT`, seconds, default
/// 300, `inf` for no limit): a wedged bpftool must not hold the lock forever.
fn command_timeout() -> Result<Option<Duration>> {
    crate::util::env_seconds("BPFPLAN_COMMAND_TIMEOUT", 300.0)
}

/// The command line as a reviewer reads it (sh-quoted).
pub(crate) fn shown(argv: &[String]) -> String {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    shlex::try_join(words).unwrap_or_else(|_| argv.join(" "))
}

/// Run a command to its end (or its time limit), capturing its output.
/// A failed exit is not an error here; see [`run_checked`].
pub(crate) fn run(argv: &[String], stdin: Option<&[u8]>) -> Result<Finished> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut expr = duct::cmd(prog, args)
        .before_spawn(|cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    // A killed bpfplan must not leave a bpftool running on
                    // its own, racing the next run's recovery.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            Ok(())
        })
        .stdout_capture()
        .stderr_capture()
        .unchecked();
    expr = match stdin {
        Some(bytes) => expr.stdin_bytes(bytes.to_vec()),
        None => expr.stdin_null(),
    };
    let timeout = command_timeout()?;
    let handle = expr.start().with_context(|| match prog.as_str() {
        "bpftool" | "clang" => format!(
            "`{prog}` could not be started: install it (`make deps`, or apt-get install {})",
            if prog == "clang" {
                "clang libbpf-dev"
            } else {
                "bpftool"
            }
        ),
        _ => format!("`{prog}` could not be started"),
    })?;
    let output = match timeout {
        None => handle.wait().map(Some),
        Some(limit) => handle.wait_timeout(limit),
    }
    .with_context(|| format!("waiting for `{}`", shown(argv)))?;
    let Some(output) = output else {
        let _ = handle.kill();
        bail!(
            "`{}` did not finish within {:.0}s and was killed (raise BPFPLAN_COMMAND_TIMEOUT \
             if it needs longer)",
            shown(argv),
            timeout.map_or(0.0, |t| t.as_secs_f64())
        );
    };
    Ok(Finished {
        code: output.status.code(),
        stdout: output.stdout.clone(),
        stderr: output.stderr.clone(),
    })
}

/// Run a command; a failed exit is an error with its stderr.
pub(crate) fn run_checked(argv: &[String], stdin: Option<&[u8]>) -> Result<Finished> {
    let out = run(argv, stdin)?;
    if !out.success() {
        return Err(failure(argv, &out));
    }
    Ok(out)
}

/// A failed command, with what it printed (the verifier log matters).
pub(crate) fn failure(argv: &[String], out: &Finished) -> anyhow::Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out
        .code
        .map_or("a signal".to_string(), |c| format!("exit code {c}"));
    anyhow!(
        "`{}` failed with {code}\n{}",
        shown(argv),
        if stderr.trim().is_empty() {
            "(it printed nothing on stderr)".to_string()
        } else {
            stderr.trim_end().to_string()
        }
    )
}

/// Run `bpftool -j ARGS` and parse its JSON (an empty output reads as null).
/// Why `bpftool -j` failed: with `-j` it prints its error as JSON on stdout
/// (`{"error":"..."}`) and often nothing on stderr.
fn json_failure(stdout: &[u8], stderr: &[u8]) -> String {
    let err = String::from_utf8_lossy(stderr).trim().to_string();
    let said = serde_json::from_slice::<serde_json::Value>(stdout)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string));
    match (said, err.is_empty()) {
        (Some(e), true) => e,
        (Some(e), false) => format!("{e} ({err})"),
        (None, false) => err,
        (None, true) => {
            let out = String::from_utf8_lossy(stdout).trim().to_string();
            if out.is_empty() {
                "no error message".into()
            } else {
                out
            }
        }
    }
}

pub(crate) fn bpftool_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T> {
    let mut argv = vec!["bpftool".to_string(), "-j".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = run(&argv, None)?;
    if !out.success() {
        bail!(
            "`bpftool -j {}` failed: {}",
            args.join(" "),
            json_failure(&out.stdout, &out.stderr)
        );
    }
    let text = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        &b"null"[..]
    } else {
        &out.stdout[..]
    };
    serde_json::from_slice(text)
        .with_context(|| format!("parsing the JSON of `bpftool -j {}`", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_error_of_bpftool_is_said() {
        assert_eq!(
            json_failure(br#"{"error":"can't probe: EPERM"}"#, b""),
            "can't probe: EPERM"
        );
        assert_eq!(json_failure(b"", b"oops"), "oops");
        assert_eq!(json_failure(b"", b""), "no error message");
    }
}
