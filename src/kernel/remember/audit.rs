//! The audit log: every command apply, destroy and adopt run as root is
//! appended before it runs and after it ends, to a root-only JSON-lines file
//! (`/var/log/bpfplan/audit.jsonl`, or `BPFPLAN_AUDIT_LOG`): when, who (and
//! `SUDO_USER`), which manifest and deployment, the hash of the plan, the
//! command, its exit status, duration and stderr on failure. Lines are only
//! ever appended (O_APPEND). `bpfplan log` reads them back, skipping a torn
//! line.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::kernel::act::exec::{Event, Listener, Outcome};
use crate::kernel::remember::{syslog, trust};
use crate::plan::step::BatchLines;

/// Where the log is kept unless `BPFPLAN_AUDIT_LOG` says otherwise.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/bpfplan/audit.jsonl";

pub fn log_path() -> PathBuf {
    std::env::var_os("BPFPLAN_AUDIT_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_LOG))
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditLine {
    /// RFC 3339, UTC.
    pub time: String,
    /// Seconds since the epoch (for `--since`).
    pub unix: f64,
    /// `start` before a command runs, `end` after; `note` for what is not a
    /// command (a rollback begins, an adoption); `warning` for something
    /// wrong that did not stop the command.
    pub phase: String,
    /// apply, destroy or adopt.
    pub command: String,
    pub user: String,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_user: Option<String>,
    pub manifest: PathBuf,
    /// The deployment's record name.
    pub deployment: String,
    /// sha256 of the plan applied (of the saved plan, with `--plan`).
    pub plan_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// The lines a `bpftool batch file -` read.
    /// A batch's lines, on its start line.
    #[serde(default, skip_serializing_if = "BatchLines::is_empty")]
    pub lines: BatchLines,
    /// How many lines a batch had, on its end line (they are on its start
    /// line: a batch of 50,000 lines is not logged twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_lines: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
    /// done, skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Who runs bpfplan and on what: the fields every line repeats.
#[derive(Debug, Clone)]
pub struct AuditContext {
    pub command: String,
    pub manifest: PathBuf,
    pub deployment: String,
    pub plan_hash: String,
}

impl AuditContext {
    /// The context of a command on a plan's deployment.
    pub fn for_plan(command: &str, plan: &crate::plan::Plan) -> Result<AuditContext> {
        let store = crate::kernel::remember::record::Store::for_plan(plan)?;
        // Hashed as it is encoded: a plan of a million entries is not held
        // twice.
        struct Hashing(sha2::Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                sha2::Digest::update(&mut self.0, b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hashing(<sha2::Sha256 as sha2::Digest>::new());
        serde_json::to_writer(std::io::BufWriter::new(&mut h), plan)
            .context("encoding the plan")?;
        Ok(AuditContext {
            command: command.into(),
            manifest: plan.manifest.clone(),
            deployment: store
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            plan_hash: crate::util::hex(&sha2::Digest::finalize(h.0)),
        })
    }
}

/// The user name of a uid, from /etc/passwd (the uid itself if none).
pub(crate) fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id = f.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// Appends to the audit log; a listener of every run.
pub(crate) struct AuditLog {
    file: File,
    ctx: AuditContext,
    uid: u32,
    user: String,
    sudo_user: Option<String>,
    /// The journal or syslog each line also goes to, if any.
    sink: Option<syslog::Sink>,
    host: String,
    /// Whether the sink already refused a line (said once).
    sink_failed: bool,
}

impl AuditLog {
    /// Open the log for appending: its directory must be root's own, the
    /// file is created 0600 and never followed through a symlink. bpfplan
    /// changes nothing it cannot put on record.
    pub fn open(ctx: AuditContext) -> Result<AuditLog> {
        AuditLog::open_at(&log_path(), ctx)
    }

    /// `open`, at a given path.
    pub(crate) fn open_at(path: &Path, ctx: AuditContext) -> Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.to_path_buf();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .context("the audit log needs a directory")?;
        trust::private_dir(dir, "audit log directory")?;
        let mut file = File::options()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        // A log others can write is no record: refused, like `bpfplan log`
        // refuses to read it.
        let meta = file
            .metadata()
            .with_context(|| format!("reading the audit log {}", path.display()))?;
        trust::private_file(&path, &meta)?;
        // A line torn by a kill or a full disk must not swallow the next
        // run's first line: end it first.
        let len = file.metadata().map_or(0, |m| m.len());
        let mut last = [0u8; 1];
        if len > 0
            && std::os::unix::fs::FileExt::read_at(&file, &mut last, len - 1).is_ok()
            && last[0] != b'\n'
        {
            file.write_all(b"\n")
                .with_context(|| format!("ending a torn line of {}", path.display()))?;
        }
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        Ok(AuditLog {
            file,
            user: user_name(uid),
            uid,
            sudo_user: std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()),
            ctx,
            sink: syslog::Sink::from_env(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            sink_failed: false,
        })
    }

    /// The command's last line: how it ended, with its exit code (0, or 1
    /// for an error), what `status` reports as the last apply.
    pub fn finish(&mut self, outcome: &str, exit: i32, error: Option<String>) -> Result<()> {
        let mut l = self.line("finish");
        l.outcome = Some(outcome.to_string());
        l.exit = Some(exit);
        l.error = error;
        self.append(&l)
    }

    fn line(&self, phase: &str) -> AuditLine {
        let now = SystemTime::now();
        AuditLine {
            time: humantime::format_rfc3339_millis(now).to_string(),
            unix: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            phase: phase.into(),
            command: self.ctx.command.clone(),
            user: self.user.clone(),
            uid: self.uid,
            sudo_user: self.sudo_user.clone(),
            manifest: self.ctx.manifest.clone(),
            deployment: self.ctx.deployment.clone(),
            plan_hash: self.ctx.plan_hash.clone(),
            summary: None,
            argv: Vec::new(),
            lines: BatchLines::default(),
            batch_lines: None,
            exit: None,
            outcome: None,
            duration_ms: None,
            error: None,
            note: None,
        }
    }

    /// Append one line (O_APPEND: lines of two writers do not interleave on
    /// a local filesystem; a kill mid-line can tear it).
    fn append(&mut self, line: &AuditLine) -> Result<()> {
        let mut bytes = serde_json::to_vec(line).context("encoding an audit line")?;
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .with_context(|| format!("writing the audit log {}", log_path().display()))?;
        if let Some(sink) = &self.sink
            && let Err(e) = sink.send(line, &self.host)
            && !self.sink_failed
        {
            self.sink_failed = true;
            say!("warning: {e} (the audit log file has every line)");
        }
        Ok(())
    }
}

impl Listener for AuditLog {
    fn event(&mut self, e: &Event<'_>) -> Result<()> {
        let line = match e {
            // A batched step is logged with its batch, once.
            Event::Started { batched: true, .. } | Event::Finished { batched: true, .. } => {
                return Ok(());
            }
            Event::Started { step, argv, .. } => {
                let mut l = self.line("start");
                l.summary = Some(step.summary());
                l.argv = argv.to_vec();
                l
            }
            Event::Finished {
                step,
                argv,
                elapsed,
                outcome,
                ..
            } => {
                let mut l = self.line("end");
                l.summary = Some(step.summary());
                l.argv = argv.to_vec();
                l.duration_ms = Some(ms(*elapsed));
                match outcome {
                    Outcome::Done => {
                        l.outcome = Some("done".into());
                        l.exit = Some(0);
                    }
                    Outcome::Skipped(why) => {
                        l.outcome = Some("skipped".into());
                        l.note = Some(why.to_string());
                    }
                    Outcome::Failed { exit, error } => {
                        l.outcome = Some("failed".into());
                        l.exit = *exit;
                        l.error = Some(error.to_string());
                    }
                }
                l
            }
            Event::BatchStarted { argv, lines } => {
                let mut l = self.line("start");
                l.argv = argv.to_vec();
                l.lines = (*lines).clone();
                l
            }
            Event::Batch {
                argv,
                lines,
                elapsed,
                failed,
            } => {
                let mut l = self.line("end");
                l.argv = argv.to_vec();
                l.batch_lines = Some(lines.len());
                l.duration_ms = Some(ms(*elapsed));
                l.outcome = Some(if failed.is_some() { "failed" } else { "done" }.into());
                l.exit = Some(if failed.is_some() { 255 } else { 0 });
                if let Some(k) = failed {
                    l.error = Some(format!("line {}: {}", k + 1, lines.get(*k).unwrap_or("")));
                }
                l
            }
            Event::Rollback { count } => {
                let mut l = self.line("note");
                l.note = Some(format!("rolling back: {count} undo step(s)"));
                l
            }
            // What bpfplan decided and why, between the commands.
            Event::Note { text } => {
                let mut l = self.line("note");
                l.note = Some(text.to_string());
                l
            }
            Event::Warning { text } => {
                let mut l = self.line("warning");
                l.note = Some(text.to_string());
                l
            }
            Event::Begin { .. } => return Ok(()),
        };
        self.append(&line)
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Read the log: lines whose manifest or deployment contains `deployment`
/// (when given) and that are not older than `since`.
pub fn read(path: &Path, deployment: Option<&str>, since: Option<f64>) -> Result<Vec<AuditLine>> {
    let bytes = match trust::read_private(path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (n, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A torn or foreign line is reported and skipped: the rest of the
        // record is still worth reading.
        let l: AuditLine = match serde_json::from_str(line) {
            Ok(l) => l,
            Err(e) => {
                say!(
                    "warning: {}:{}: not an audit line ({e}): skipped",
                    path.display(),
                    n + 1
                );
                continue;
            }
        };
        let matches = deployment
            .is_none_or(|d| l.deployment.contains(d) || l.manifest.to_string_lossy().contains(d));
        if matches && since.is_none_or(|s| l.unix >= s) {
            out.push(l);
        }
    }
    Ok(out)
}

/// The last `finish` line of `command` for exactly this deployment, if
/// the log is there and readable.
pub fn last_finish(path: &Path, deployment: &str, command: &str) -> Option<AuditLine> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = trust::open_private(path).ok()??;
    // Read back from the end, a block at a time: after an apply of a
    // million entries, a million batch lines come before its finish line.
    // Only a line that says "finish" is read as JSON.
    const BLOCK: u64 = 1 << 20;
    let mut end = file.seek(SeekFrom::End(0)).ok()?;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0u8; (end - start) as usize];
        file.seek(SeekFrom::Start(start)).ok()?;
        file.read_exact(&mut block).ok()?;
        block.extend_from_slice(&tail);
        // The first line of a block may go on before it: kept for the next.
        let whole = if start == 0 {
            &block[..]
        } else {
            let cut = block
                .iter()
                .position(|b| *b == b'\n')
                .map_or(block.len(), |i| i + 1);
            tail = block[..cut].to_vec();
            &block[cut..]
        };
        let found = whole
            .split(|b| *b == b'\n')
            .rev()
            .filter(|l| l.windows(8).any(|w| w == b"\"finish\""))
            .filter_map(|l| serde_json::from_slice::<AuditLine>(l).ok())
            .find(|l| l.phase == "finish" && l.command == command && l.deployment == deployment);
        if found.is_some() || start == 0 {
            return found;
        }
        end = start;
    }
}

/// `--since`: an RFC 3339 time (`2026-11-26T12:00:00Z`) or a duration ago
/// (`90s`, `15m`, `2h`, `1d`), as seconds since the epoch.
pub fn parse_since(text: &str) -> Result<f64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            Ok(now - ago.as_secs_f64())
        }
        Err(_) => bail!(
            "--since {text:?}: expected a time like 2026-11-26T12:00:00Z or a duration like 2h"
        ),
    }
}

/// The log for people: one line per command.
pub fn text(lines: &[AuditLine]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for l in lines {
        let who = match &l.sudo_user {
            Some(s) => format!("{} (sudo {s})", l.user),
            None => l.user.clone(),
        };
        let what = if !l.argv.is_empty() {
            let mut cmd = crate::kernel::act::cmd::shown(&l.argv);
            if let Some(n) = l
                .batch_lines
                .or((!l.lines.is_empty()).then(|| l.lines.len()))
            {
                cmd.push_str(&format!(" <<{n} line(s)>>"));
            }
            cmd
        } else {
            l.note.clone().unwrap_or_default()
        };
        let result = match (&l.phase[..], &l.outcome) {
            ("end", Some(o)) => format!(
                " -> {o}{}{}",
                l.exit.map_or(String::new(), |c| format!(", exit {c}")),
                l.duration_ms
                    .map_or(String::new(), |d| format!(", {d:.1} ms"))
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{} {who} {} {} {:<5} {what}{result}",
            l.time,
            l.command,
            l.manifest.display(),
            l.phase
        );
        if let Some(e) = &l.error {
            for line in e.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {

    /// The last finish line of a deployment is found from the end of the
    /// log, across blocks, past lines longer than a block (a batch's).
    #[test]
    fn the_last_finish_is_read_back_from_the_end() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line = |phase: &str, deployment: &str, exit: i32, lines: usize| {
            serde_json::json!({
                "time": "2026-12-01T00:00:00Z", "unix": exit as f64, "phase": phase,
                "command": "apply", "user": "root", "uid": 0, "manifest": "/m/x.toml",
                "deployment": deployment, "plan_hash": "h", "exit": exit,
                "lines": vec!["map update pinned /sys/fs/bpf/x key hex 01 value hex 01"; lines],
            })
            .to_string()
        };
        let mut text = String::new();
        for (phase, dep, exit, lines) in [
            ("finish", "x-1", 1, 0),
            ("finish", "x-1", 0, 0),
            ("finish", "y-2", 5, 0),
            // A batch line of about 3 MiB, then many short ones.
            ("batch", "x-1", 0, 50_000),
        ] {
            text.push_str(&line(phase, dep, exit, lines));
            text.push('\n');
        }
        for _ in 0..20_000 {
            text.push_str(&line("start", "x-1", 0, 0));
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(text.len() > 4 << 20, "more than a few blocks");
        let found = last_finish(&path, "x-1", "apply").expect("found");
        assert_eq!(found.exit, Some(0));
        assert_eq!(
            last_finish(&path, "y-2", "apply").and_then(|l| l.exit),
            Some(5)
        );
        assert!(last_finish(&path, "z-3", "apply").is_none());
    }

    /// A line torn by a kill (no newline at the end) does not swallow the
    /// next run's first line: `bpfplan log` shows every complete line.
    #[test]
    fn a_torn_line_is_ended_before_the_next_run_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"{\"time\":\"torn").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&path).unwrap().permissions(),
            0o600,
        );
        let ctx = AuditContext {
            command: "apply".into(),
            manifest: "/m/x.toml".into(),
            deployment: "x".into(),
            plan_hash: "h".into(),
        };
        let mut log = AuditLog::open_at(&path, ctx).unwrap();
        let line = log.line("note");
        log.append(&line).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let lines = read(&path, None, None).unwrap();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0].phase, "note");
    }
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        let t = parse_since("2026-11-26T12:00:00Z").unwrap();
        assert_eq!(t, 1_795_694_400.0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let ago = parse_since("2h").unwrap();
        assert!((now - ago - 7200.0).abs() < 5.0);
        assert!(parse_since("yesterday").is_err());
    }
}
