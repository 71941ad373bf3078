//! `bpfplan bench`: apply a manifest in cgroups of its own, run the same
//! workloads over plain loopback TCP, over the bypass and over Unix sockets,
//! interleaved and repeated, then destroy; and time the control plane next to
//! the exported sh script.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod bulk;
pub(crate) mod compat;
mod verdict;

use crate::sandbox::Sandbox;
pub use bulk::Calibration;
pub use verdict::Verdict;

/// What `bpfplan-traffic measure` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Request/response latency.
    Rr,
    /// One-way stream throughput.
    Stream,
    /// Connect, one exchange, close: connections per second.
    Connect,
}

impl Workload {
    fn arg(self) -> &'static str {
        match self {
            Workload::Rr => "rr",
            Workload::Stream => "stream",
            Workload::Connect => "connect",
        }
    }
}

/// One measurement, as `bpfplan-traffic measure` prints it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Measurement {
    value: f64,
    p99: Option<f64>,
    unit: String,
}

/// How much to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rounds of A B C interleaving.
    pub rounds: usize,
    /// Tiny durations, to prove the harness works (tests).
    pub quick: bool,
    /// Where bench makes its cgroups (default: the cgroup v2 mount).
    pub cgroup_parent: Option<PathBuf>,
    /// Where bench makes its pin directory (default: /sys/fs/bpf).
    pub pin_parent: Option<PathBuf>,
    /// Write an SVG chart here.
    pub chart: Option<PathBuf>,
    /// The workloads to run (all when empty).
    pub workloads: Vec<Workload>,
    /// Message sizes to measure instead of the defaults (the operator's own).
    pub sizes: Vec<usize>,
    /// Candidate `bulk_bytes` bounds to calibrate (none: no calibration).
    pub bulk: Vec<u64>,
}

/// The three ways the same bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Path3 {
    Loopback,
    Bypass,
    Unix,
}

const PATHS: [Path3; 3] = [Path3::Loopback, Path3::Bypass, Path3::Unix];

#[derive(Debug, Clone, Copy)]
struct Spec {
    workload: Workload,
    size: usize,
}

/// What to measure: request/response and stream at each size (by default
/// 64 B, 1 KiB, 16 KiB and 256 B, 4 KiB, 64 KiB), and the connection rate.
fn specs(opts: &BenchOptions) -> Vec<Spec> {
    let wanted = |w: Workload| opts.workloads.is_empty() || opts.workloads.contains(&w);
    let (rr, stream) = if opts.sizes.is_empty() {
        (vec![64, 1024, 16384], vec![256, 4096, 65536])
    } else {
        (opts.sizes.clone(), opts.sizes.clone())
    };
    let mut out = Vec::new();
    if wanted(Workload::Rr) {
        out.extend(rr.into_iter().map(|size| Spec {
            workload: Workload::Rr,
            size,
        }));
    }
    if wanted(Workload::Stream) {
        out.extend(stream.into_iter().map(|size| Spec {
            workload: Workload::Stream,
            size,
        }));
    }
    if wanted(Workload::Connect) {
        out.push(Spec {
            workload: Workload::Connect,
            size: 64,
        });
    }
    out
}

impl Spec {
    fn label(&self) -> String {
        let size = if self.size >= 1024 && self.size.is_multiple_of(1024) {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        match self.workload {
            Workload::Rr => format!("rr {size}"),
            Workload::Stream => format!("stream {size} writes"),
            Workload::Connect => "connect+exchange+close".to_string(),
        }
    }

    /// Whether a bigger figure is better (throughput) or worse (latency).
    fn higher_is_better(&self) -> bool {
        !matches!(self.workload, Workload::Rr)
    }
}

/// Median and spread of one workload over one path.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median p99, for request/response.
    pub p99: Option<f64>,
    pub unit: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    /// rr, stream or connect.
    pub kind: String,
    /// The message size, bytes.
    pub size: usize,
    /// In how many of the (interleaved) rounds the bypass did better.
    pub better_rounds: usize,
    pub rounds: usize,
    pub loopback: Stat,
    pub bypass: Stat,
    pub unix: Stat,
    /// bypass median / loopback median.
    pub bypass_vs_loopback: f64,
    /// bypass median / unix median.
    pub bypass_vs_unix: f64,
    pub higher_is_better: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlRow {
    pub what: String,
    pub bpfplan_ms: f64,
    pub sh_script_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub rounds: usize,
    pub rows: Vec<Row>,
    /// What the rows mean on this machine, in plain words.
    pub verdicts: Vec<Verdict>,
    /// The skip_ports/only_ports setting that follows.
    pub advice: String,
    /// `--bulk-bytes`: the bypass under each candidate bound.
    pub bulk: Option<Calibration>,
    /// What the programs ran over the bypass rounds (the kernel's BPF run
    /// statistics, on for the rounds only).
    pub program_runs: Vec<crate::kernel::verbs::status::ProgramRuns>,
    /// Why they were not measured, if they were not.
    pub program_runs_unmeasured: Option<String>,
    pub control_plane: Vec<ControlRow>,
}

/// The benchmark's sandbox (a cgroup with `bypass` and `plain` children, a
/// pin directory) and how to run bpfplan in it.
pub(crate) struct World {
    pub(crate) bypass: PathBuf,
    pub(crate) plain: PathBuf,
    tmp: tempfile::TempDir,
    manifest: PathBuf,
    bpfplan: PathBuf,
    /// The user's `--var`s (bench sets `cgroup` and `pin_dir` itself).
    user_vars: Vec<(String, String)>,
    build_dir: Option<PathBuf>,
    // Last: dropped after the deployment in it is destroyed.
    sandbox: Sandbox,
}

impl World {
    fn vars(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (k, val) in &self.user_vars {
            if k != "cgroup" && k != "pin_dir" {
                v.extend(["--var".to_string(), format!("{k}={val}")]);
            }
        }
        v.extend([
            "--var".into(),
            format!("cgroup={}", self.bypass.display()),
            "--var".into(),
            format!("pin_dir={}", self.sandbox.pin_dir.display()),
        ]);
        if let Some(dir) = &self.build_dir {
            v.extend(["--build-dir".into(), dir.display().to_string()]);
        }
        v
    }

    pub(crate) fn bpfplan(&self, args: &[&str]) -> Command {
        self.bpfplan_with(args, &[])
    }

    /// `bpfplan` with some of the manifest's variables set otherwise (the
    /// last `--var` of a name wins).
    pub(crate) fn bpfplan_with(&self, args: &[&str], vars: &[(&str, u64)]) -> Command {
        let mut c = Command::new(&self.bpfplan);
        c.args(args)
            .arg(&self.manifest)
            .args(self.vars())
            .args(
                vars.iter()
                    .flat_map(|(k, v)| ["--var".to_string(), format!("{k}={v}")]),
            )
            .env("BPFPLAN_STATE_DIR", self.tmp.path().join("state"))
            .env("BPFPLAN_AUDIT_LOG", self.tmp.path().join("log/audit.jsonl"));
        c
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.bpfplan(&["destroy"]).output();
    }
}

pub(crate) fn run_quiet(mut cmd: Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

pub(crate) fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, kernel {}", kernel.trim())
}

/// What is benchmarked: a manifest, its variables and build directory.
pub struct Subject {
    pub manifest: PathBuf,
    pub vars: Vec<(String, String)>,
    pub build_dir: Option<PathBuf>,
}

impl World {
    /// A sandbox of its own (a cgroup with `bypass` and `plain` children,
    /// and a pin directory) for `target`, and the traffic tool's path.
    pub(crate) fn new(
        name: &str,
        target: &Subject,
        cgroup_parent: Option<&Path>,
        pin_parent: Option<&Path>,
    ) -> Result<(World, PathBuf)> {
        let exe = std::env::current_exe().context("locating the bpfplan binary")?;
        let traffic = exe.with_file_name("bpfplan-traffic");
        if !traffic.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release`",
                traffic.display()
            );
        }
        let mut sandbox = Sandbox::create(name, cgroup_parent, pin_parent)?;
        let world = World {
            bypass: sandbox.child("bypass")?,
            plain: sandbox.child("plain")?,
            tmp: tempfile::tempdir()?,
            manifest: target.manifest.clone(),
            bpfplan: exe,
            user_vars: target.vars.clone(),
            build_dir: target.build_dir.clone(),
            sandbox,
        };
        Ok((world, traffic))
    }
}

pub fn bench(target: &Subject, opts: &BenchOptions) -> Result<Report> {
    let (world, traffic) = World::new(
        "bpfplan-bench",
        target,
        opts.cgroup_parent.as_deref(),
        opts.pin_parent.as_deref(),
    )?;

    let rounds = if opts.quick { 1 } else { opts.rounds.max(1) };
    let specs = specs(opts);
    // A subset of workloads is a question about them: skip the rest.
    let control_plane = if opts.workloads.is_empty() && opts.sizes.is_empty() {
        control_plane(&world, rounds)?
    } else {
        Vec::new()
    };

    run_quiet(world.bpfplan(&["apply"]), "bpfplan apply")?;
    let runs = ProgramRunsWindow::start(&world);
    let (seconds, count) = if opts.quick { (0.05, 200) } else { (0.5, 5000) };
    // samples[spec][path] = measurements
    let mut samples: Vec<[Vec<Measurement>; 3]> =
        specs.iter().map(|_| Default::default()).collect();
    let mut bulk_samples: Vec<bulk::Sampled> = opts
        .bulk
        .iter()
        .map(|_| bulk::Sampled::new(specs.len()))
        .collect();
    for round in 0..rounds {
        say!("round {}/{rounds}", round + 1);
        for (i, spec) in specs.iter().enumerate() {
            for (j, path) in PATHS.iter().enumerate() {
                let (cgroup, transport) = match path {
                    Path3::Loopback => (&world.plain, "tcp"),
                    Path3::Bypass => (&world.bypass, "tcp"),
                    Path3::Unix => (&world.plain, "unix"),
                };
                samples[i][j].push(measure(&traffic, cgroup, transport, spec, seconds, count)?);
            }
        }
        if !opts.bulk.is_empty() {
            bulk::round(
                &world,
                &traffic,
                &specs,
                &opts.bulk,
                seconds,
                count,
                &mut bulk_samples,
            )?;
        }
    }
    let program_runs = runs.finish();
    run_quiet(world.bpfplan(&["destroy"]), "bpfplan destroy")?;
    let bulk = (!opts.bulk.is_empty()).then(|| {
        let loopback: Vec<f64> = samples.iter().map(|p| stat(&p[0]).median).collect();
        bulk::calibration(&specs, &opts.bulk, bulk_samples, &loopback, stat)
    });

    let rows: Vec<Row> = specs
        .iter()
        .zip(samples)
        .map(|(spec, per_path)| row(spec, &per_path))
        .collect();
    let verdicts: Vec<Verdict> = rows.iter().map(verdict::verdict).collect();
    let advice = verdict::summary(&verdicts, &rows);
    let report = Report {
        machine: machine(),
        rounds,
        rows,
        verdicts,
        advice,
        bulk,
        program_runs_unmeasured: program_runs.as_ref().err().cloned(),
        program_runs: program_runs.unwrap_or_default(),
        control_plane,
    };
    if let Some(chart) = &opts.chart {
        crate::kernel::remember::trust::write_new(chart, svg(&report).as_bytes())?;
    }
    Ok(report)
}

/// The median, spread and median p99 of one path's measurements.
fn stat(ms: &[Measurement]) -> Stat {
    let mut v: Vec<f64> = ms.iter().map(|m| m.value).collect();
    let mut p99: Vec<f64> = ms.iter().filter_map(|m| m.p99).collect();
    Stat {
        median: median(&mut v),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        p99: (!p99.is_empty()).then(|| median(&mut p99)),
        unit: ms.first().map_or(String::new(), |m| m.unit.clone()),
    }
}

/// The kernel's BPF run statistics over the rounds: only the bypass
/// cgroup runs the programs, so what they ran is the bypass rounds' cost.
struct ProgramRunsWindow {
    on: Result<
        (
            std::os::fd::OwnedFd,
            Vec<crate::kernel::verbs::status::LiveProgram>,
        ),
        String,
    >,
    before: Vec<crate::kernel::look::sys::RunStats>,
}

impl ProgramRunsWindow {
    fn start(world: &World) -> ProgramRunsWindow {
        use crate::kernel::look::sys;
        let on = programs(world).and_then(|p| {
            sys::enable_run_stats()
                .map(|fd| (fd, p))
                .map_err(|e| format!("{e:#}"))
        });
        let before = match &on {
            Ok((_, p)) => p
                .iter()
                .map(|p| sys::prog_run_stats(p.id).unwrap_or_default())
                .collect(),
            Err(_) => Vec::new(),
        };
        ProgramRunsWindow { on, before }
    }

    fn finish(self) -> Result<Vec<crate::kernel::verbs::status::ProgramRuns>, String> {
        let (fd, programs) = self.on?;
        let out = programs
            .iter()
            .zip(self.before)
            .map(|(p, b)| {
                let a = crate::kernel::look::sys::prog_run_stats(p.id).unwrap_or_default();
                crate::kernel::verbs::status::ProgramRuns::between(p, b, a)
            })
            .collect();
        drop(fd);
        Ok(out)
    }
}

/// The deployment's programs, as `status --format json` names them.
fn programs(world: &World) -> Result<Vec<crate::kernel::verbs::status::LiveProgram>, String> {
    let out = world
        .bpfplan(&["status", "--format", "json"])
        .output()
        .map_err(|e| format!("running bpfplan status: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading bpfplan status --format json: {e}"))?;
    Ok(v["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(crate::kernel::verbs::status::LiveProgram {
                name: p["name"].as_str()?.to_string(),
                pin: p["pin"].as_str()?.to_string(),
                id: u32::try_from(p["id"].as_u64()?).ok()?,
                tag: p["tag"].as_str()?.to_string(),
                prog_type: p["type"].as_str()?.to_string(),
                attach: Vec::new(),
            })
        })
        .collect())
}

/// One workload's figures over the three paths, and how many rounds the
/// bypass did better in.
fn row(spec: &Spec, per_path: &[Vec<Measurement>; 3]) -> Row {
    let [l, b, u] = per_path;
    // Rounds are interleaved, so each round pairs the two paths under the
    // same conditions.
    let better_rounds = l
        .iter()
        .zip(b)
        .filter(|(l, b)| {
            if spec.higher_is_better() {
                b.value > l.value
            } else {
                b.value < l.value
            }
        })
        .count();
    let (loopback, bypass, unix) = (stat(l), stat(b), stat(u));
    Row {
        better_rounds,
        rounds: l.len(),
        workload: spec.label(),
        kind: spec.workload.arg().to_string(),
        size: spec.size,
        bypass_vs_loopback: bypass.median / loopback.median,
        bypass_vs_unix: bypass.median / unix.median,
        higher_is_better: spec.higher_is_better(),
        loopback,
        bypass,
        unix,
    }
}

fn measure(
    traffic: &Path,
    cgroup: &Path,
    transport: &str,
    spec: &Spec,
    seconds: f64,
    count: usize,
) -> Result<Measurement> {
    let out = Command::new(traffic)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["measure", "--transport", transport])
        .args(["--workload", spec.workload.arg()])
        .args(["--size", &spec.size.to_string()])
        .args([
            "--seconds",
            &seconds.to_string(),
            "--count",
            &count.to_string(),
        ])
        .output()
        .context("running bpfplan-traffic")?;
    if !out.status.success() {
        bail!(
            "bpfplan-traffic failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing bpfplan-traffic output")
}

/// plan, apply, no-op apply and destroy, next to the sh script, interleaved.
fn control_plane(world: &World, rounds: usize) -> Result<Vec<ControlRow>> {
    let script = |destroy: bool| -> Result<PathBuf> {
        let mut c = world.bpfplan(&["plan", "--manifest-only", "--format", "sh"]);
        if destroy {
            c.arg("--destroy");
        }
        let out = c.output()?;
        if !out.status.success() {
            bail!(
                "bpfplan plan failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = world
            .tmp
            .path()
            .join(if destroy { "destroy.sh" } else { "apply.sh" });
        std::fs::write(&path, out.stdout)?;
        Ok(path)
    };
    let (apply_sh, destroy_sh) = (script(false)?, script(true)?);
    let sh = |p: &Path| {
        let mut c = Command::new("sh");
        c.arg(p);
        c
    };
    let n = rounds.max(3);
    let mut t: [Vec<f64>; 6] = Default::default();
    for _ in 0..n {
        t[0].push(run_quiet(world.bpfplan(&["plan"]), "bpfplan plan")?);
        t[1].push(run_quiet(world.bpfplan(&["apply"]), "bpfplan apply")?);
        t[2].push(run_quiet(
            world.bpfplan(&["apply"]),
            "bpfplan apply (no changes)",
        )?);
        t[3].push(run_quiet(world.bpfplan(&["destroy"]), "bpfplan destroy")?);
        t[4].push(run_quiet(sh(&apply_sh), "the apply sh script")?);
        t[5].push(run_quiet(sh(&destroy_sh), "the destroy sh script")?);
    }
    let [plan, apply, noop, destroy, sh_apply, sh_destroy] = &mut t;
    Ok(vec![
        ControlRow {
            what: "plan".into(),
            bpfplan_ms: median(plan),
            sh_script_ms: None,
        },
        ControlRow {
            what: "apply (build cached)".into(),
            bpfplan_ms: median(apply),
            sh_script_ms: Some(median(sh_apply)),
        },
        ControlRow {
            what: "apply, no changes".into(),
            bpfplan_ms: median(noop),
            sh_script_ms: None,
        },
        ControlRow {
            what: "destroy (waits for the kernel to free)".into(),
            bpfplan_ms: median(destroy),
            sh_script_ms: Some(median(sh_destroy)),
        },
    ])
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "us" => format!("{v:.1} us"),
        "B/s" => format!("{:.2} GB/s", v / 1e9),
        _ => format!("{v:.0}/s"),
    }
}

/// The table people read.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {}; {} round(s), medians (min..max)\n",
        r.machine, r.rounds
    );
    let _ = writeln!(
        out,
        "{:<24} {:>26} {:>26} {:>26} {:>9} {:>9}",
        "workload", "loopback TCP", "bypass", "unix socket", "byp/lo", "byp/unix"
    );
    for row in &r.rows {
        let cell = |s: &Stat| {
            let mut c = format!(
                "{} ({}..{})",
                fmt_value(s.median, &s.unit),
                short(s.min, &s.unit),
                short(s.max, &s.unit)
            );
            if let Some(p99) = s.p99 {
                c = format!("{} p99 {:.0}", fmt_value(s.median, &s.unit), p99);
            }
            c
        };
        let _ = writeln!(
            out,
            "{:<24} {:>26} {:>26} {:>26} {:>8.2}x {:>8.2}x",
            row.workload,
            cell(&row.loopback),
            cell(&row.bypass),
            cell(&row.unix),
            row.bypass_vs_loopback,
            row.bypass_vs_unix
        );
    }
    let _ = writeln!(out, "\nwhat it means on this machine:");
    for v in &r.verdicts {
        let _ = writeln!(out, "  - {}", v.advice);
    }
    let _ = writeln!(out, "  => {}", r.advice);
    match &r.program_runs_unmeasured {
        None => {
            let _ = writeln!(out, "\nwhat the programs ran over the bypass rounds:");
            for p in &r.program_runs {
                let per = p.ns_per_run.map_or("did not run".to_string(), |ns| {
                    format!("{ns:.0} ns per run")
                });
                let _ = writeln!(
                    out,
                    "  {:<16} {:<10} {:>12} runs  {per}",
                    p.name, p.prog_type, p.runs
                );
            }
        }
        Some(why) => {
            let _ = writeln!(out, "\nthe programs' run time was not measured: {why}");
        }
    }
    if let Some(c) = &r.bulk {
        bulk::text(c, &mut out);
    }
    if r.control_plane.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\ncontrol plane (median ms)      bpfplan   sh script");
    for c in &r.control_plane {
        let sh = c
            .sh_script_ms
            .map_or("-".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(out, "{:<30} {:>8.1} {:>11}", c.what, c.bpfplan_ms, sh);
    }
    out
}

fn short(v: f64, unit: &str) -> String {
    match unit {
        "us" => format!("{v:.1}"),
        "B/s" => format!("{:.2}", v / 1e9),
        _ => format!("{v:.0}"),
    }
}

/// Two panels of grouped bars, each workload's three paths relative to
/// loopback TCP (1.0): latency (lower is better) apart from throughput and
/// rate (higher is better), each bar with its min..max whisker, and the
/// machine and kernel in the title. A few dozen shapes need no plotting
/// library.
pub fn svg(r: &Report) -> String {
    let latency: Vec<&Row> = r.rows.iter().filter(|x| !x.higher_is_better).collect();
    let throughput: Vec<&Row> = r.rows.iter().filter(|x| x.higher_is_better).collect();
    let panels: Vec<(&str, Vec<&Row>)> = [
        ("latency p50 vs loopback TCP: lower is better", latency),
        (
            "throughput and rate vs loopback TCP: higher is better",
            throughput,
        ),
    ]
    .into_iter()
    .filter(|(_, rows)| !rows.is_empty())
    .collect();
    let (w, panel_h) = (980.0, 330.0);
    let h = 60.0 + panel_h * panels.len() as f64 + 30.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"20\" y=\"22\" font-size=\"14\">bpfplan bench on {}</text>\n\
         <text x=\"20\" y=\"40\">{} round(s); bars are medians, whiskers min..max, relative to the loopback TCP median</text>\n",
        xml(&r.machine),
        r.rounds
    );
    for (i, (title, rows)) in panels.iter().enumerate() {
        panel(&mut s, title, rows, 60.0 + panel_h * i as f64, w, panel_h);
    }
    let colors = ["#8c8c8c", "#2b7bb9", "#e08a1e"];
    for (j, name) in ["loopback TCP", "bypass", "unix socket"].iter().enumerate() {
        let x = w - 360.0 + 115.0 * j as f64;
        let _ = writeln!(
            s,
            "<rect class=\"legend\" x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            h - 24.0,
            colors[j],
            x + 16.0,
            h - 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Text for SVG.
fn xml(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel of the chart at `top`.
fn panel(s: &mut String, title: &str, rows: &[&Row], top: f64, w: f64, h: f64) {
    let (left, bottom) = (60.0, 90.0);
    let rel = |row: &Row, st: &Stat| {
        let lo = row.loopback.median;
        (st.median / lo, st.min / lo, st.max / lo)
    };
    let paths = |row: &Row| {
        [
            rel(row, &row.loopback),
            rel(row, &row.bypass),
            rel(row, &row.unix),
        ]
    };
    let max = rows
        .iter()
        .flat_map(|row| paths(row).into_iter().map(|(m, _, hi)| m.max(hi)))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.1;
    let y = |v: f64| top + 20.0 + (h - 20.0 - bottom) * (1.0 - v.clamp(0.0, max) / max);
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{:.1}\" font-size=\"13\">{title}</text>",
        top + 12.0
    );
    let step = if max > 4.0 { 1.0 } else { 0.5 };
    let mut v = 0.0;
    while v <= max {
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            yy = y(v)
        );
        v += step;
    }
    let group = (w - left - 110.0) / rows.len().max(1) as f64;
    let bar = group / 4.0;
    let colors = ["#8c8c8c", "#2b7bb9", "#e08a1e"];
    for (i, row) in rows.iter().enumerate() {
        let x0 = left + group * i as f64 + bar / 2.0;
        for (j, (m, lo, hi)) in paths(row).into_iter().enumerate() {
            let x = x0 + bar * j as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{m:.2} ({lo:.2}..{hi:.2})</title></rect>",
                y(m),
                bar - 2.0,
                y(0.0) - y(m),
                colors[j]
            );
            let cx = x + (bar - 2.0) / 2.0;
            if lo.is_finite() && hi.is_finite() {
                let _ = writeln!(
                    s,
                    "<line class=\"whisker\" x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                    y(lo),
                    y(hi)
                );
            }
        }
        let _ = writeln!(
            s,
            "<text transform=\"translate({:.1},{:.1}) rotate(30)\">{}</text>",
            x0,
            top + h - bottom + 16.0,
            xml(&row.workload)
        );
    }
}
