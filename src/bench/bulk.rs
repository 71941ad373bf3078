//! `bench --bulk-bytes LIST`: calibrate the manifest's `bulk_bytes`, the run
//! a receiver may take unanswered before its connection counts as a bulk
//! transfer and leaves the redirect for TCP. In every round, after the
//! three paths, the bypass is measured again under each candidate bound
//! (an entries-only apply between them), and the verdict's own counters say
//! how many request/response and stream connections each bound demoted.
//! The bound to set is the smallest that demoted no request/response
//! connection: it lets bulk leave soonest without costing the exchanges
//! the bypass is for.

use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

use super::{Measurement, Spec, Stat, Workload, World, measure, run_quiet};

/// The bypass under one candidate bound.
#[derive(Debug, Clone, Serialize)]
pub struct BulkRow {
    /// The candidate (0: never).
    pub bulk_bytes: u64,
    /// Per workload, in the report's order: the bypass under this bound.
    pub cells: Vec<BulkCell>,
    /// Request/response connections this bound sent back to TCP as bulk,
    /// over every round (each measurement is one connection).
    pub rr_demoted: u64,
    /// Stream connections it sent back to TCP as bulk.
    pub stream_demoted: u64,
    /// Stream connections backpressure sent back to TCP first (their
    /// receiver fell behind by more than `max_queued` before the bound).
    pub stream_backpressure: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkCell {
    pub workload: String,
    pub bypass: Stat,
    /// This bypass median / the loopback median of the same rounds.
    pub vs_loopback: f64,
    pub higher_is_better: bool,
}

/// The calibration, and what it advises.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub rows: Vec<BulkRow>,
    /// The smallest nonzero bound that demoted no request/response connection.
    pub recommended: Option<u64>,
    pub advice: String,
}

/// What one round measured under one bound.
pub(super) struct Sampled {
    pub(super) per_spec: Vec<Vec<Measurement>>,
    pub(super) rr_demoted: u64,
    pub(super) stream_demoted: u64,
    pub(super) stream_backpressure: u64,
}

impl Sampled {
    pub(super) fn new(specs: usize) -> Sampled {
        Sampled {
            per_spec: (0..specs).map(|_| Vec::new()).collect(),
            rr_demoted: 0,
            stream_demoted: 0,
            stream_backpressure: 0,
        }
    }
}

/// The `demoted_bulk` and `demoted_backpressure` counters, as `status`
/// reads them under `bound`.
fn demoted(world: &World, bound: u64) -> Result<(u64, u64)> {
    let out = world
        .bpfplan_with(&["status", "--format", "json"], &[("bulk_bytes", bound)])
        .output()
        .context("running bpfplan status")?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading bpfplan status --format json")?;
    let counter = |name: &str| {
        report["gauges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["map"] == "bypass_stats" && g["name"] == name)
            .and_then(|g| g["value"].as_u64())
            .with_context(|| {
                format!("the manifest has no bypass_stats counter `{name}` to calibrate with")
            })
    };
    Ok((counter("demoted_bulk")?, counter("demoted_backpressure")?))
}

/// One round under every candidate: apply it (an entries-only change),
/// measure the bypass at every workload, count what it demoted.
pub(super) fn round(
    world: &World,
    traffic: &Path,
    specs: &[Spec],
    candidates: &[u64],
    seconds: f64,
    count: usize,
    into: &mut [Sampled],
) -> Result<()> {
    for (bound, sampled) in candidates.iter().zip(into.iter_mut()) {
        run_quiet(
            world.bpfplan_with(&["apply"], &[("bulk_bytes", *bound)]),
            "bpfplan apply (a bulk_bytes candidate)",
        )?;
        for (i, spec) in specs.iter().enumerate() {
            let (bulk0, back0) = demoted(world, *bound)?;
            let m = measure(traffic, &world.bypass, "tcp", spec, seconds, count)?;
            let (bulk1, back1) = demoted(world, *bound)?;
            let (bulk, back) = (bulk1.saturating_sub(bulk0), back1.saturating_sub(back0));
            match spec.workload {
                Workload::Rr => sampled.rr_demoted += bulk,
                _ => {
                    sampled.stream_demoted += bulk;
                    sampled.stream_backpressure += back;
                }
            }
            sampled.per_spec[i].push(m);
        }
    }
    // Back to the manifest's own bound for the next round's three paths.
    run_quiet(world.bpfplan(&["apply"]), "bpfplan apply")?;
    Ok(())
}

/// The table rows, and the advice, from every round's samples.
pub(super) fn calibration(
    specs: &[Spec],
    candidates: &[u64],
    sampled: Vec<Sampled>,
    loopback_medians: &[f64],
    stat: impl Fn(&[Measurement]) -> Stat,
) -> Calibration {
    let rows: Vec<BulkRow> = candidates
        .iter()
        .zip(sampled)
        .map(|(bound, s)| BulkRow {
            bulk_bytes: *bound,
            cells: specs
                .iter()
                .zip(&s.per_spec)
                .zip(loopback_medians)
                .map(|((spec, ms), lo)| {
                    let bypass = stat(ms);
                    BulkCell {
                        workload: spec.label(),
                        vs_loopback: bypass.median / lo,
                        higher_is_better: spec.higher_is_better(),
                        bypass,
                    }
                })
                .collect(),
            rr_demoted: s.rr_demoted,
            stream_demoted: s.stream_demoted,
            stream_backpressure: s.stream_backpressure,
        })
        .collect();
    let recommended = recommend(&rows);
    let advice = advise(&rows, recommended);
    Calibration {
        rows,
        recommended,
        advice,
    }
}

/// The smallest nonzero bound that demoted no request/response connection.
fn recommend(rows: &[BulkRow]) -> Option<u64> {
    rows.iter()
        .filter(|r| r.bulk_bytes > 0 && r.rr_demoted == 0)
        .map(|r| r.bulk_bytes)
        .min()
}

fn advise(rows: &[BulkRow], recommended: Option<u64>) -> String {
    let Some(bound) = recommended else {
        return "every bound tried sent request/response connections back to TCP: try larger \
                ones (or leave bulk_bytes at 0 and keep bulk ports out with skip_ports)"
            .into();
    };
    let Some(row) = rows.iter().find(|r| r.bulk_bytes == bound) else {
        return String::new();
    };
    let streams: Vec<String> = row
        .cells
        .iter()
        .filter(|c| c.higher_is_better)
        .map(|c| format!("{} {:.2}x", c.workload, c.vs_loopback))
        .collect();
    let caught = format!(
        "it sent {} stream connection(s) back to TCP as bulk ({} more left by backpressure \
         first) and no request/response one",
        row.stream_demoted, row.stream_backpressure
    );
    format!(
        "set bulk_bytes = \"{bound}\" (`--var bulk_bytes={bound}`): the smallest bound tried that \
         kept every request/response connection on the bypass; {caught}; streams under it, \
         against loopback: {}",
        streams.join(", ")
    )
}

/// The calibration table.
pub(super) fn text(c: &Calibration, out: &mut String) {
    let Some(first) = c.rows.first() else { return };
    let _ = writeln!(
        out,
        "\nbulk_bytes calibration: the bypass under each bound, against loopback TCP (same rounds)"
    );
    let widths: Vec<usize> = first
        .cells
        .iter()
        .map(|c| c.workload.len().max(6))
        .collect();
    let _ = write!(out, "{:<12}", "bulk_bytes");
    for (cell, w) in first.cells.iter().zip(&widths) {
        let _ = write!(out, " {:>w$}", cell.workload);
    }
    let _ = writeln!(
        out,
        " {:>10} {:>14} {:>22}",
        "rr as bulk", "streams as bulk", "streams by backpressure"
    );
    for row in &c.rows {
        let name = if row.bulk_bytes == 0 {
            "0 (never)".to_string()
        } else {
            row.bulk_bytes.to_string()
        };
        let _ = write!(out, "{name:<12}");
        for (cell, w) in row.cells.iter().zip(&widths) {
            let _ = write!(out, " {:>w$}", format!("{:.2}x", cell.vs_loopback));
        }
        let _ = writeln!(
            out,
            " {:>10} {:>14} {:>22}",
            row.rr_demoted, row.stream_demoted, row.stream_backpressure
        );
    }
    let _ = writeln!(out, "  => {}", c.advice);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bound: u64, rr: u64, streams: u64) -> BulkRow {
        BulkRow {
            bulk_bytes: bound,
            cells: Vec::new(),
            rr_demoted: rr,
            stream_demoted: streams,
            stream_backpressure: 0,
        }
    }

    #[test]
    fn the_bound_advised_is_the_smallest_that_kept_request_response() {
        let rows = [
            row(0, 0, 0),
            row(65536, 3, 5),
            row(1 << 20, 0, 5),
            row(4 << 20, 0, 5),
        ];
        let best = recommend(&rows);
        assert_eq!(best, Some(1 << 20));
        assert!(advise(&rows, best).contains("set bulk_bytes = \"1048576\""));
        assert!(advise(&rows, None).contains("try larger"));
        assert_eq!(recommend(&[row(0, 0, 0), row(65536, 1, 0)]), None);
    }
}
