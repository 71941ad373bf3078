//! `status --format prometheus`: the status report in Prometheus' text
//! exposition format (0.0.4), for node_exporter's textfile collector
//! (`status --textfile DIR`) or any scraper. Every series carries the
//! deployment as a label, so the files of several deployments on one host
//! never collide. Names follow the Prometheus conventions: counters end in
//! `_total`, units are base units in the name (`_bytes`, `_seconds`),
//! `_info` series are 1 with their facts as labels.

use std::fmt::Write as _;

use super::status::StatusReport;

/// One metric family: its samples, as label sets and values.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }

    fn render(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let set: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {}", self.name, set.join(","), number(*value));
        }
    }
}

/// A label value as the exposition format spells it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The host's page size, for `tcp_mem` (counted in pages).
fn page_size() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as f64 } else { 4096.0 }
}

/// The report as Prometheus text.
pub fn prometheus(r: &StatusReport) -> String {
    let dep = || vec![("deployment", r.deployment.clone())];
    let with = |more: Vec<(&'static str, String)>| {
        let mut l = dep();
        l.extend(more);
        l
    };
    let mut in_sync = Family::new(
        "bpfplan_in_sync",
        "gauge",
        "Whether the kernel holds exactly what the manifest declares (1) or not (0).",
    );
    in_sync.add(dep(), f64::from(u8::from(r.in_sync)));
    let mut drift = Family::new(
        "bpfplan_drift_findings",
        "gauge",
        "Findings of status that differ from the manifest.",
    );
    drift.add(dep(), r.drift.len() as f64);
    let mut programs = Family::new(
        "bpfplan_program_info",
        "gauge",
        "A program of the deployment as the kernel holds it (always 1).",
    );
    for p in &r.programs {
        programs.add(
            with(vec![
                ("program", p.name.clone()),
                ("id", p.id.to_string()),
                ("tag", p.tag.clone()),
                ("type", p.prog_type.clone()),
                ("attach", p.attach.join("; ")),
            ]),
            1.0,
        );
    }
    let mut maps = Family::new(
        "bpfplan_map_info",
        "gauge",
        "A map of the deployment as the kernel holds it (always 1).",
    );
    let mut max_entries = Family::new(
        "bpfplan_map_max_entries",
        "gauge",
        "The most entries a map of the deployment can hold.",
    );
    let mut entries = Family::new(
        "bpfplan_map_entries",
        "gauge",
        "Entries a map of the deployment holds (sockhashes: sockets bypassed now).",
    );
    for m in &r.maps {
        let who = || with(vec![("map", m.name.clone())]);
        maps.add(
            with(vec![
                ("map", m.name.clone()),
                ("id", m.id.to_string()),
                ("type", m.map_type.clone()),
            ]),
            1.0,
        );
        max_entries.add(who(), f64::from(m.max_entries));
        if let Some(n) = m.entries {
            entries.add(who(), n as f64);
        }
    }
    let sockmaps: Vec<&str> = r
        .maps
        .iter()
        .filter(|m| m.map_type == "sockhash" || m.map_type == "sockmap")
        .map(|m| m.name.as_str())
        .collect();
    let mut counters = Family::new(
        "bpfplan_map_stat_total",
        "counter",
        "A labelled counter of a counter array of the deployment (bypass_stats), summed over CPUs.",
    );
    for g in r
        .gauges
        .iter()
        .filter(|g| !(g.name == "entries" && sockmaps.contains(&g.map.as_str())))
    {
        counters.add(
            with(vec![("map", g.map.clone()), ("stat", g.name.clone())]),
            g.value as f64,
        );
    }
    let mut stalled = Family::new(
        "bpfplan_stalled_connections",
        "gauge",
        "Bypassed sockets whose receive side holds more than their receive buffer.",
    );
    stalled.add(dep(), r.stalled.len() as f64);
    let mut lingering = Family::new(
        "bpfplan_lingering_programs",
        "gauge",
        "Programs of this deployment destroyed or replaced that the kernel still holds.",
    );
    lingering.add(
        dep(),
        r.lingering.as_ref().map_or(0, |l| l.programs.len()) as f64,
    );
    let mut tcp = Family::new(
        "bpfplan_host_tcp_memory_bytes",
        "gauge",
        "The host's TCP memory in use, and its tcp_mem thresholds (level: used, low, pressure, high).",
    );
    if let Some(m) = r.tcp_memory {
        let page = page_size();
        for (level, pages) in [
            ("used", m.pages),
            ("low", m.low),
            ("pressure", m.pressure),
            ("high", m.high),
        ] {
            tcp.add(with(vec![("level", level.into())]), pages as f64 * page);
        }
    }
    let mut last_time = Family::new(
        "bpfplan_last_apply_timestamp_seconds",
        "gauge",
        "When the last apply of the deployment ended, from the audit log.",
    );
    let mut last_ok = Family::new(
        "bpfplan_last_apply_success",
        "gauge",
        "Whether the last apply of the deployment succeeded (1) or failed (0).",
    );
    if let Some(l) = &r.last_apply {
        last_time.add(dep(), l.unix);
        last_ok.add(
            with(vec![("outcome", l.outcome.clone())]),
            f64::from(u8::from(l.exit == 0)),
        );
    }
    let mut window = Family::new(
        "bpfplan_stats_window_seconds",
        "gauge",
        "How long status --stats had the kernel's BPF run statistics on.",
    );
    let mut runs = Family::new(
        "bpfplan_program_window_runs",
        "gauge",
        "Runs of a program during the status --stats window.",
    );
    let mut run_time = Family::new(
        "bpfplan_program_window_run_time_seconds",
        "gauge",
        "Time a program ran during the status --stats window.",
    );
    if let Some(st) = &r.program_stats {
        window.add(dep(), st.seconds);
        for p in &st.programs {
            let who = || with(vec![("program", p.name.clone()), ("id", p.id.to_string())]);
            runs.add(who(), p.runs as f64);
            run_time.add(who(), p.run_time_ns as f64 / 1e9);
        }
    }
    let mut out = String::new();
    for f in [
        &in_sync,
        &drift,
        &programs,
        &maps,
        &max_entries,
        &entries,
        &counters,
        &stalled,
        &lingering,
        &tcp,
        &last_time,
        &last_ok,
        &window,
        &runs,
        &run_time,
    ] {
        f.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_integers_print_whole() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(1.5), "1.5");
        let mut f = Family::new("x_total", "counter", "X.");
        f.add(vec![("deployment", "we\"ird".into())], 7.0);
        let mut out = String::new();
        f.render(&mut out);
        assert_eq!(
            out,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{deployment=\"we\\\"ird\"} 7\n"
        );
        // A family without samples says nothing.
        let mut out = String::new();
        Family::new("y", "gauge", "Y.").render(&mut out);
        assert!(out.is_empty());
    }
}
