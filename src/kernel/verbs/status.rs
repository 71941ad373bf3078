//! `bpfplan status`: the live kernel against the manifest and the record,
//! object by object, plus sockhash sizes and counters. The report is
//! computed purely from one observation.

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::kernel::act::seam::Kernel;
use crate::kernel::decide::{self, Finding, Health, ObjectKind};
use crate::kernel::look::inspect::PinState;
use crate::kernel::look::observe::{Observed, Query};
use crate::kernel::remember::build;
use crate::kernel::remember::record::{Connection, Deployed, FileHash, Found, Lingering, Store};
use crate::kernel::verbs::preflight;
use crate::plan::step::Step;
use crate::plan::{Plan, Spec};

/// Live figures worth a glance: sockhash sizes and counter arrays.
#[derive(Debug, Clone, Serialize)]
pub struct Gauge {
    pub map: String,
    /// `entries` for a sockmap or sockhash; a counter's label otherwise.
    pub name: String,
    pub value: u64,
}

/// A program of the manifest as the kernel has it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveProgram {
    pub name: String,
    pub pin: String,
    pub id: u32,
    pub tag: String,
    /// The kernel's program type (`sock_ops`, `sk_msg`, ...).
    #[serde(rename = "type")]
    pub prog_type: String,
    /// Where the manifest attaches it, one line each.
    pub attach: Vec<String>,
}

/// A map of the manifest as the kernel has it.
#[derive(Debug, Clone, Serialize)]
pub struct LiveMap {
    pub name: String,
    pub pin: String,
    pub id: u32,
    #[serde(rename = "type")]
    pub map_type: String,
    pub max_entries: u32,
    /// How many entries it holds, when status read them (maps with entries
    /// or counters in the manifest, sockhashes).
    pub entries: Option<u64>,
}

/// What the deployment's programs ran during a window of `--stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramStats {
    /// How long the kernel's run statistics were on.
    pub seconds: f64,
    pub programs: Vec<ProgramRuns>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramRuns {
    pub name: String,
    pub id: u32,
    #[serde(rename = "type")]
    pub prog_type: String,
    /// Runs during the window.
    pub runs: u64,
    /// Nanoseconds spent in those runs.
    pub run_time_ns: u64,
    /// `run_time_ns / runs`, when it ran.
    pub ns_per_run: Option<f64>,
}

/// Turn the kernel's BPF run statistics on for `window` only (an fd of
/// `BPF_ENABLE_STATS`, closed at the end; `kernel.bpf_stats_enabled` is
/// never written), and count what each program ran meanwhile.
pub fn program_runs(programs: &[LiveProgram], window: std::time::Duration) -> Result<ProgramStats> {
    use crate::kernel::look::sys;
    let on = sys::enable_run_stats()?;
    let started = std::time::Instant::now();
    let before: Vec<sys::RunStats> = programs
        .iter()
        .map(|p| sys::prog_run_stats(p.id).unwrap_or_default())
        .collect();
    say!(
        "counting the programs' runs for {:.1} s (BPF run statistics on for this window only)",
        window.as_secs_f64()
    );
    std::thread::sleep(window);
    let after: Vec<Option<sys::RunStats>> =
        programs.iter().map(|p| sys::prog_run_stats(p.id)).collect();
    let seconds = started.elapsed().as_secs_f64();
    drop(on);
    let programs = programs
        .iter()
        .zip(before)
        .zip(after)
        // A program replaced meanwhile has no figure worth reporting.
        .filter_map(|((p, b), a)| Some(ProgramRuns::between(p, b, a?)))
        .collect();
    Ok(ProgramStats { seconds, programs })
}

impl ProgramRuns {
    /// What a program ran between two readings of its run statistics.
    pub(crate) fn between(
        p: &LiveProgram,
        before: crate::kernel::look::sys::RunStats,
        after: crate::kernel::look::sys::RunStats,
    ) -> ProgramRuns {
        let runs = after.run_cnt.saturating_sub(before.run_cnt);
        let run_time_ns = after.run_time_ns.saturating_sub(before.run_time_ns);
        ProgramRuns {
            name: p.name.clone(),
            id: p.id,
            prog_type: p.prog_type.clone(),
            runs,
            run_time_ns,
            ns_per_run: (runs > 0).then(|| run_time_ns as f64 / runs as f64),
        }
    }
}

/// How the last apply of the deployment ended, from the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// Seconds since the epoch.
    pub unix: f64,
    /// `changed`, `no_changes`, `failed` or `stale`.
    pub outcome: String,
    pub exit: i32,
}

/// What `bpfplan status` reports; in JSON, what a fleet tool aggregates.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// This host's name.
    pub host: String,
    pub manifest: PathBuf,
    /// The deployment's record name (manifest and pin directories).
    pub deployment: String,
    /// Whether the kernel matches the manifest.
    pub in_sync: bool,
    /// Why not, one line a finding (empty when in sync).
    pub drift: Vec<String>,
    /// The programs behind the manifest's pins, with their ids and tags.
    pub programs: Vec<LiveProgram>,
    /// The maps behind the manifest's pins.
    pub maps: Vec<LiveMap>,
    /// The last apply of this deployment the audit log holds.
    pub last_apply: Option<LastRun>,
    /// With `--stats SECONDS`: what each program ran in that window.
    pub program_stats: Option<ProgramStats>,
    /// What bpfplan recorded: `applied`, `applying` (a run was
    /// interrupted), `unreadable`, or none.
    pub recorded: Option<&'static str>,
    pub findings: Vec<Finding>,
    pub gauges: Vec<Gauge>,
    /// What the counters say went wrong (a counter named `*_failed` above
    /// zero: a full sockhash, say), and what the kernel still holds of an
    /// earlier deployment.
    pub warnings: Vec<String>,
    /// Programs and maps of this deployment that destroy or a replace
    /// removed from bpffs but the kernel still holds (connections made
    /// during the bypass hold them until they close), as a look found them.
    pub lingering: Option<Lingering>,
    /// Sockets in the deployment's sockhashes whose receive side holds more
    /// than their receive buffer: a reader that fell behind (the bypass
    /// checks no receive-buffer limit of its own).
    pub stalled: Vec<Connection>,
    /// The host's TCP memory against its limits (`tcp_mem`), in pages.
    pub tcp_memory: Option<TcpMemory>,
}

/// `TCP: mem` of /proc/net/sockstat against /proc/sys/net/ipv4/tcp_mem.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TcpMemory {
    pub pages: u64,
    pub low: u64,
    pub pressure: u64,
    pub high: u64,
}

/// The host's TCP memory now, if the kernel says.
fn tcp_memory() -> Option<TcpMemory> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "mem")?;
    let pages = words.get(at + 1)?.parse().ok()?;
    let limits = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    let mut l = limits.split_whitespace().filter_map(|w| w.parse().ok());
    Some(TcpMemory {
        pages,
        low: l.next()?,
        pressure: l.next()?,
        high: l.next()?,
    })
}

/// The sockets of the deployment's sockhashes (and sockmaps) that hold
/// more than their receive buffer.
fn stalled(plan: &Plan, obs: &Observed, kernel: &mut dyn Kernel) -> Result<Vec<Connection>> {
    let ids: Vec<u32> = plan
        .spec
        .maps
        .iter()
        .filter_map(|m| match obs.pins.get(m.pin.as_str()) {
            Some(PinState::Map(info)) if info.map_type.is_sockmap() => Some(info.id),
            _ => None,
        })
        .collect();
    let mut q = Query::default();
    q.ids(&[], &ids);
    let maps = kernel.observe(&q)?;
    Ok(
        crate::kernel::look::observe::connections(kernel, &maps, &ids)?
            .into_iter()
            .filter(|c| c.rcvbuf > 0 && c.rmem_alloc > c.rcvbuf)
            .collect(),
    )
}

/// Compare the live kernel with the manifest's plan; with `stats`, also
/// count what its programs run for that long.
pub(crate) fn status(
    plan: &Plan,
    kernel: &mut dyn Kernel,
    stats: Option<std::time::Duration>,
) -> Result<StatusReport> {
    preflight::inspect()?;
    let store = Store::for_plan(plan)?;
    let found = store.load();
    let mut q = Query::default();
    q.spec(&plan.spec, true).gauges(&plan.spec);
    if let Found::Ok(l) = &found {
        q.record(&l.record);
    }
    let obs = kernel.observe(&q)?;
    let sources = build::source_hashes(plan)?;
    let mut r = report(plan, &found, &obs, &sources);
    r.stalled = stalled(plan, &obs, kernel)?;
    for c in &r.stalled {
        r.warnings.push(format!(
            "the socket on port {} (peer {}) holds {} bytes, more than its {}-byte receive buffer: \
             its reader fell behind",
            c.local_port, c.remote_port, c.rmem_alloc, c.rcvbuf
        ));
    }
    r.tcp_memory = tcp_memory();
    if let Some(m) = r.tcp_memory
        && m.pages >= m.pressure
    {
        r.warnings.push(format!(
            "the host's TCP memory is under pressure: {} pages in use, pressure from {}, limit {}",
            m.pages, m.pressure, m.high
        ));
    }
    if let Some(l) = store.lingering() {
        let mut q = Query::default();
        q.ids(&l.programs, &l.maps);
        let now = kernel.observe(&q)?;
        let programs: Vec<u32> = l
            .programs
            .iter()
            .copied()
            .filter(|id| now.programs.contains_key(id))
            .collect();
        let maps: Vec<u32> = l
            .maps
            .iter()
            .copied()
            .filter(|id| now.maps.contains_key(id))
            .collect();
        let connections = crate::kernel::look::observe::connections(kernel, &now, &maps)?;
        let live = Lingering {
            programs,
            maps,
            connections,
        };
        if !live.is_empty() {
            r.warnings.push(format!(
                "the kernel still holds program ids {:?} and map ids {:?} of this deployment, \
                 destroyed or replaced since: {}",
                live.programs,
                live.maps,
                if live.connections.is_empty() {
                    "something else references them".to_string()
                } else {
                    format!("{} hold them until they close", live.describe_connections())
                }
            ));
            r.lingering = Some(live);
        }
    }
    r.deployment = store
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(window) = stats {
        r.program_stats = Some(program_runs(&r.programs, window)?);
    }
    let log = crate::kernel::remember::audit::log_path();
    r.last_apply =
        crate::kernel::remember::audit::last_finish(&log, &r.deployment, "apply").map(|l| {
            LastRun {
                unix: l.unix,
                outcome: l.outcome.unwrap_or_default(),
                exit: l.exit.unwrap_or(1),
            }
        });
    Ok(r)
}

/// The report, from what was found.
fn report(plan: &Plan, found: &Found, obs: &Observed, sources: &[FileHash]) -> StatusReport {
    let (deployed, recorded, mut extra) = match found {
        Found::Missing => (None, None, Vec::new()),
        Found::Corrupt(why) => (
            None,
            Some("unreadable"),
            vec![Finding {
                kind: ObjectKind::Record,
                name: "record".into(),
                place: why.clone(),
                health: Health::Different("unreadable: `bpfplan destroy` clears it".into()),
            }],
        ),
        Found::Ok(l) if l.record.run.is_some() => {
            (l.record.deployed.as_ref(), Some("applying"), Vec::new())
        }
        Found::Ok(l) => (l.record.deployed.as_ref(), Some("applied"), Vec::new()),
    };
    let mut findings = decide::findings(&plan.spec, deployed, obs);
    if let Some(d) = deployed {
        changed_since_apply(plan, d, sources, &mut findings);
    }
    findings.extend(entry_findings(&plan.spec, deployed, obs));
    findings.append(&mut extra);
    let in_sync =
        findings.iter().all(|f| f.health == Health::Present) && recorded != Some("applying");
    let mut drift: Vec<String> = findings
        .iter()
        .filter(|f| f.health != Health::Present)
        .map(|f| {
            format!(
                "{} `{}` at {}: {}",
                f.kind,
                f.name,
                f.place,
                f.health.describe()
            )
        })
        .collect();
    if recorded == Some("applying") {
        drift.push("an apply was interrupted: run `bpfplan apply` or `bpfplan destroy`".into());
    }
    let programs = plan
        .spec
        .programs
        .iter()
        .filter_map(|p| {
            obs.program_at(p.pin.as_str()).map(|info| LiveProgram {
                name: p.name.0.clone(),
                pin: p.pin.0.clone(),
                id: info.id,
                tag: info.tag.clone(),
                prog_type: info.prog_type.word().to_string(),
                attach: plan
                    .spec
                    .attachments
                    .iter()
                    .filter(|a| a.program == p.name)
                    .map(|a| a.place())
                    .collect(),
            })
        })
        .collect();
    let maps = plan
        .spec
        .maps
        .iter()
        .filter_map(|m| match obs.pins.get(m.pin.as_str()) {
            Some(PinState::Map(info)) => Some(LiveMap {
                name: m.name.to_string(),
                pin: m.pin.to_string(),
                id: info.id,
                map_type: info.map_type.word().to_string(),
                max_entries: info.max_entries,
                entries: obs.contents.get(m.pin.as_str()).map(|d| d.len() as u64),
            }),
            _ => None,
        })
        .collect();
    let gauges = gauges(&plan.spec, obs);
    let warnings = gauges
        .iter()
        .filter(|g| g.name.ends_with("_failed") && g.value > 0)
        .map(|g| {
            format!(
                "{}.{} is {}: {}",
                g.map,
                g.name,
                g.value,
                if g.name == "insert_failed" {
                    "the sockhash was full (or refused a socket) that many times; those \
                     connections took plain TCP. Raise its max_entries, or leave ports out \
                     with skip_ports"
                } else {
                    "something failed that many times"
                }
            )
        })
        .collect();
    StatusReport {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        manifest: plan.manifest.clone(),
        deployment: String::new(),
        in_sync,
        drift,
        programs,
        maps,
        last_apply: None,
        program_stats: None,
        recorded,
        findings,
        gauges,
        warnings,
        lingering: None,
        stalled: Vec::new(),
        tcp_memory: None,
    }
}

/// A manifest changed since apply (another program type, attach point,
/// reused map...) is not what the kernel holds; nor is a program whose
/// source, headers or object changed.
fn changed_since_apply(
    plan: &Plan,
    d: &Deployed,
    sources: &[FileHash],
    findings: &mut Vec<Finding>,
) {
    if !d.plan.spec.same_structure(&plan.spec) {
        findings.push(Finding {
            kind: ObjectKind::Manifest,
            name: plan.manifest.display().to_string(),
            place: "the plan".into(),
            health: Health::Different("changed since apply".into()),
        });
    }
    for now in sources {
        if d.sources.contains(now) {
            continue;
        }
        let program = plan
            .spec
            .programs
            .iter()
            .find(|p| p.source.as_ref() == Some(&now.path) || p.object == now.path);
        if let Some(program) = program
            && let Some(f) = findings.iter_mut().find(|f| {
                f.kind == ObjectKind::Program
                    && f.name == program.name.0
                    && f.health == Health::Present
            })
        {
            f.health = Health::Different(format!(
                "{} (or a file it includes) changed since apply",
                now.path.display()
            ));
        }
    }
}

/// For each managed map: how many entries differ from the manifest.
fn entry_findings(spec: &Spec, deployed: Option<&Deployed>, obs: &Observed) -> Vec<Finding> {
    let mut differ: BTreeMap<&str, usize> = BTreeMap::new();
    let ops = decide::entry_ops(spec, obs, deployed);
    for op in &ops {
        if let Step::UpdateMapEntry { pin, .. } | Step::DeleteMapEntry { pin, .. } = &op.step {
            *differ.entry(pin.as_str()).or_default() += 1;
        }
    }
    spec.maps
        .iter()
        .filter(|m| m.entries.is_some())
        .map(|m| {
            let n = differ.get(m.pin.as_str()).copied().unwrap_or(0);
            let health = if !obs.pins.contains_key(m.pin.as_str()) {
                Health::Missing
            } else if n == 0 {
                Health::Present
            } else if n == 1 {
                Health::Different("1 entry differs from the manifest".into())
            } else {
                Health::Different(format!("{n} entries differ from the manifest"))
            };
            Finding {
                kind: ObjectKind::Entries,
                name: m.name.to_string(),
                place: m.pin.to_string(),
                health,
            }
        })
        .collect()
}

/// Sockhash sizes and labelled counters (summed over CPUs).
fn gauges(spec: &Spec, obs: &Observed) -> Vec<Gauge> {
    let mut out = Vec::new();
    for m in &spec.maps {
        let (Some(PinState::Map(info)), Some(dump)) = (
            obs.pins.get(m.pin.as_str()),
            obs.contents.get(m.pin.as_str()),
        ) else {
            continue;
        };
        match info.map_type {
            t if t.is_sockmap() => out.push(Gauge {
                map: m.name.to_string(),
                name: "entries".into(),
                value: dump.len() as u64,
            }),
            t if t.is_array() && !m.labels.is_empty() => {
                for e in dump {
                    let idx = le_u64(&e.key) as usize;
                    let sum = e
                        .values
                        .iter()
                        .map(|v| le_u64(v))
                        .fold(0u64, u64::wrapping_add);
                    out.push(Gauge {
                        map: m.name.to_string(),
                        name: m
                            .labels
                            .get(idx)
                            .cloned()
                            .unwrap_or_else(|| idx.to_string()),
                        value: sum,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The first (up to) 8 bytes as a native-endian number.
fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_ne_bytes(b)
}

/// The status report for people.
pub fn text(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verdict = if r.in_sync { "in sync" } else { "DRIFT" };
    let recorded = match r.recorded {
        Some("applied") => "applied by bpfplan",
        Some("applying") => "an apply was interrupted",
        Some(_) => "the record is unreadable",
        None => "no record of an apply",
    };
    let _ = writeln!(out, "{}: {verdict} ({recorded})", r.manifest.display());
    for f in &r.findings {
        let _ = writeln!(
            out,
            "  {:<10} {:<28} {:<44} {}",
            f.kind,
            f.name,
            f.place,
            f.health.describe()
        );
    }
    if !r.gauges.is_empty() {
        let _ = writeln!(out);
        for g in &r.gauges {
            let _ = writeln!(out, "  {:<16} {:<22} {}", g.map, g.name, g.value);
        }
    }
    if let Some(st) = &r.program_stats {
        let _ = writeln!(out, "\nprogram runs over {:.1} s:", st.seconds);
        for p in &st.programs {
            let per = p.ns_per_run.map_or("did not run".to_string(), |ns| {
                format!("{ns:.0} ns per run")
            });
            let _ = writeln!(
                out,
                "  {:<16} {:<10} id {:<6} {:>10} runs  {per}",
                p.name, p.prog_type, p.id, p.runs
            );
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "\nwarning: {w}");
    }
    out
}
