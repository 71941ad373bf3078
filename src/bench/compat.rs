//! `bpfplan doctor --compat`: on this kernel, each socket behaviour an
//! application may rely on, tried over plain TCP and over the bypass, in a
//! cgroup and pin directory of its own (removed after, even on failure):
//! the two answers, whether they differ, and the fix when they do.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::process::Command;

use super::{Subject, World, machine, run_quiet};

/// One behaviour, both ways.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub probe: String,
    /// What the receiver saw over plain TCP, and over the bypass.
    pub plain: String,
    pub bypassed: String,
    pub differs: bool,
    /// What to do when it differs.
    pub fix: Option<String>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct CompatReport {
    /// CPU, cores and kernel: the answers are this kernel's.
    pub machine: String,
    pub probes: Vec<Probe>,
}

impl CompatReport {
    pub fn differing(&self) -> usize {
        self.probes.iter().filter(|p| p.differs).count()
    }
}

/// What an application relying on each behaviour should do.
fn what(probe: &str) -> &'static str {
    match probe {
        "msg_oob" => "urgent data (MSG_OOB)",
        "msg_waitall" => "MSG_WAITALL reads",
        "so_rcvlowat" => "SO_RCVLOWAT",
        "eintr" => "EINTR from a blocking read",
        "splice" => "splice(2) from the socket",
        "tcp_info" => "TCP_INFO byte counters",
        "half_close" => "half-close",
        "msg_peek" => "MSG_PEEK",
        "fionread" => "FIONREAD",
        _ => "this behaviour",
    }
}

#[derive(serde::Deserialize)]
struct Answers {
    probes: Vec<Answer>,
}

#[derive(serde::Deserialize)]
struct Answer {
    probe: String,
    result: String,
}

fn answers(traffic: &Path, cgroup: &Path) -> Result<Vec<Answer>> {
    let out = Command::new(traffic)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("compat")
        .output()
        .with_context(|| format!("running {}", traffic.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "bpfplan-traffic compat failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = text.lines().last().unwrap_or("");
    let a: Answers = serde_json::from_str(last).context("reading the compat answers")?;
    Ok(a.probes)
}

/// Run every probe in a plain cgroup and a bypassed one.
pub fn compat(target: &Subject) -> Result<CompatReport> {
    let (world, traffic) = World::new("bpfplan-compat", target, None, None)?;
    let plain = answers(&traffic, &world.plain)?;
    run_quiet(world.bpfplan(&["apply"]), "bpfplan apply")?;
    let bypassed = answers(&traffic, &world.bypass)?;
    run_quiet(world.bpfplan(&["destroy"]), "bpfplan destroy")?;
    drop(world);
    let probes = plain
        .into_iter()
        .zip(bypassed)
        .map(|(p, b)| {
            let differs = p.result != b.result;
            Probe {
                fix: differs.then(|| {
                    format!(
                        "keep the ports of applications that rely on {} out with skip_ports, or \
                         list only the others in only_ports",
                        what(&p.probe)
                    )
                }),
                probe: p.probe,
                plain: p.result,
                bypassed: b.result,
                differs,
            }
        })
        .collect();
    Ok(CompatReport {
        machine: machine(),
        probes,
    })
}

/// The report for people.
pub fn text(r: &CompatReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "socket behaviour over plain TCP and over the bypass, on {}:",
        r.machine
    );
    for p in &r.probes {
        let mark = if p.differs { "DIFFERS" } else { "same" };
        let _ = writeln!(out, "\n{mark:<8}{}", p.probe);
        let _ = writeln!(out, "        plain TCP: {}", p.plain);
        let _ = writeln!(out, "        bypass:    {}", p.bypassed);
        if let Some(fix) = &p.fix {
            let _ = writeln!(out, "        fix:       {fix}");
        }
    }
    let _ = writeln!(
        out,
        "\n{} of {} behaviours differ on this kernel",
        r.differing(),
        r.probes.len()
    );
    out
}
