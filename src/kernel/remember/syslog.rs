//! Every audit line also goes where auditors look: the systemd journal,
//! with structured fields (`BPFPLAN_DEPLOYMENT`, `BPFPLAN_COMMAND`,
//! `BPFPLAN_ARGV`, `BPFPLAN_OUTCOME`, `BPFPLAN_EXIT`, `BPFPLAN_USER`,
//! `BPFPLAN_HOST`...), by the native journal protocol when a journal is
//! present; or, when asked (`BPFPLAN_AUDIT_SYSLOG=SOCKET`, `/dev/log` say),
//! syslog in RFC 5424 with the same fields as structured data. The file
//! stays the record `bpfplan log` reads: a journal or syslog that cannot
//! take a line is said once on stderr and changes nothing else.
//!
//! The journal side is the `libsystemd` crate (pure Rust, from the systemd
//! ecosystem): it speaks the native protocol including the sealed-memfd
//! path an entry needs when it is larger than a datagram (a verifier log).
//! RFC 5424 is one line over a Unix datagram socket, written here.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::audit::AuditLine;

/// Where the lines go besides the file.
#[derive(Debug)]
pub(crate) enum Sink {
    Journal,
    Syslog(PathBuf),
}

impl Sink {
    /// `BPFPLAN_AUDIT_SYSLOG=SOCKET` asks for syslog; `BPFPLAN_AUDIT_JOURNAL=0`
    /// for neither; otherwise the journal, when its socket is there.
    pub(crate) fn from_env() -> Option<Sink> {
        if let Some(path) = std::env::var_os("BPFPLAN_AUDIT_SYSLOG").filter(|p| !p.is_empty()) {
            return Some(Sink::Syslog(PathBuf::from(path)));
        }
        if std::env::var("BPFPLAN_AUDIT_JOURNAL").is_ok_and(|v| v == "0") {
            return None;
        }
        Path::new(libsystemd::logging::SD_JOURNAL_SOCK_PATH)
            .exists()
            .then_some(Sink::Journal)
    }

    /// Send one line.
    pub(crate) fn send(&self, l: &AuditLine, host: &str) -> Result<(), String> {
        let fields = fields(l, host);
        match self {
            Sink::Journal => {
                use libsystemd::logging::{Priority, journal_send};
                let priority = match severity(l) {
                    3 => Priority::Error,
                    4 => Priority::Warning,
                    _ => Priority::Info,
                };
                let mut vars = fields;
                vars.push(("SYSLOG_IDENTIFIER", "bpfplan".into()));
                journal_send(priority, &message(l), vars.iter().map(|(k, v)| (*k, v)))
                    .map_err(|e| format!("the journal did not take an audit line: {e}"))
            }
            Sink::Syslog(path) => {
                let line = rfc5424(l, host, &fields);
                UnixDatagram::unbound()
                    .and_then(|s| s.send_to(line.as_bytes(), path))
                    .map(|_| ())
                    .map_err(|e| {
                        format!(
                            "syslog at {} did not take an audit line: {e}",
                            path.display()
                        )
                    })
            }
        }
    }
}

/// 3 (err) for a failure, 4 (warning) for a warning, 6 (info) otherwise.
fn severity(l: &AuditLine) -> u8 {
    if l.outcome.as_deref() == Some("failed") || l.error.is_some() {
        3
    } else if l.phase == "warning" {
        4
    } else {
        6
    }
}

/// One line for people: who did what to which deployment.
fn message(l: &AuditLine) -> String {
    let what = l
        .summary
        .clone()
        .or_else(|| l.note.clone())
        .or_else(|| (!l.argv.is_empty()).then(|| l.argv.join(" ")))
        .unwrap_or_default();
    let how = match (&l.outcome, l.exit) {
        (Some(o), Some(e)) => format!(" ({o}, exit {e})"),
        (Some(o), None) => format!(" ({o})"),
        _ => String::new(),
    };
    format!(
        "bpfplan {} {} by {}: {}{what}{how}",
        l.command,
        l.deployment,
        l.user,
        if l.phase == "note" {
            String::new()
        } else {
            format!("{} ", l.phase)
        }
    )
}

/// The structured fields of a line, journal-style names.
fn fields(l: &AuditLine, host: &str) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("BPFPLAN_PHASE", l.phase.clone()),
        ("BPFPLAN_COMMAND", l.command.clone()),
        ("BPFPLAN_DEPLOYMENT", l.deployment.clone()),
        ("BPFPLAN_MANIFEST", l.manifest.display().to_string()),
        ("BPFPLAN_PLAN_HASH", l.plan_hash.clone()),
        ("BPFPLAN_USER", l.user.clone()),
        ("BPFPLAN_UID", l.uid.to_string()),
        ("BPFPLAN_HOST", host.to_string()),
        ("BPFPLAN_TIME", l.time.clone()),
    ];
    let mut opt = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            f.push((k, v));
        }
    };
    opt("BPFPLAN_SUDO_USER", l.sudo_user.clone());
    opt("BPFPLAN_SUMMARY", l.summary.clone());
    opt(
        "BPFPLAN_ARGV",
        (!l.argv.is_empty()).then(|| {
            shlex::try_join(l.argv.iter().map(String::as_str)).unwrap_or_else(|_| l.argv.join(" "))
        }),
    );
    opt("BPFPLAN_OUTCOME", l.outcome.clone());
    opt("BPFPLAN_EXIT", l.exit.map(|e| e.to_string()));
    opt("BPFPLAN_DURATION_MS", l.duration_ms.map(|d| d.to_string()));
    opt("BPFPLAN_ERROR", l.error.clone());
    opt("BPFPLAN_NOTE", l.note.clone());
    opt(
        "BPFPLAN_BATCH",
        (!l.lines.is_empty()).then(|| l.lines.text().trim_end_matches('\n').to_string()),
    );
    f
}

/// An RFC 5424 message: `<PRI>1 TIME HOST bpfplan PID - [bpfplan@32473 ...] MSG`,
/// facility authpriv (10). A structured-data value escapes `"`, `\` and `]`.
fn rfc5424(l: &AuditLine, host: &str, fields: &[(&'static str, String)]) -> String {
    let pri = 10 * 8 + u32::from(severity(l));
    let sd: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let name = k.trim_start_matches("BPFPLAN_").to_ascii_lowercase();
            let value = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace(']', "\\]")
                .replace('\n', " ");
            format!("{name}=\"{value}\"")
        })
        .collect();
    let host = if host.is_empty() { "-" } else { host };
    format!(
        "<{pri}>1 {} {host} bpfplan {} - [bpfplan@32473 {}] {}",
        l.time,
        std::process::id(),
        sd.join(" "),
        message(l).replace('\n', " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> AuditLine {
        AuditLine {
            time: "2026-12-01T11:00:00.000Z".into(),
            unix: 0.0,
            phase: "end".into(),
            command: "apply".into(),
            user: "root".into(),
            uid: 0,
            sudo_user: Some("alice".into()),
            manifest: "/etc/bpfplan/bypass.toml".into(),
            deployment: "bypass-0123".into(),
            plan_hash: "ab".into(),
            summary: Some("load program `bpf_redir`".into()),
            argv: vec!["bpftool".into(), "prog".into(), "load".into(), "a b".into()],
            lines: Default::default(),
            batch_lines: None,
            exit: Some(0),
            outcome: Some("done".into()),
            duration_ms: Some(1.5),
            error: None,
            note: Some("say \"hi\" ]".into()),
        }
    }

    #[test]
    fn rfc5424_carries_every_field_as_structured_data() {
        let l = line();
        let text = rfc5424(&l, "host1", &fields(&l, "host1"));
        assert!(
            text.starts_with("<86>1 2026-12-01T11:00:00.000Z host1 bpfplan "),
            "{text}"
        );
        assert!(
            text.contains(
                "[bpfplan@32473 phase=\"end\" command=\"apply\" deployment=\"bypass-0123\""
            ),
            "{text}"
        );
        assert!(text.contains("sudo_user=\"alice\""), "{text}");
        assert!(text.contains("argv=\"bpftool prog load 'a b'\""), "{text}");
        assert!(text.contains("note=\"say \\\"hi\\\" \\]\""), "{text}");
        assert!(text.contains("exit=\"0\""), "{text}");
        let mut failed = line();
        failed.outcome = Some("failed".into());
        assert!(rfc5424(&failed, "h", &fields(&failed, "h")).starts_with("<83>1 "));
    }
}
