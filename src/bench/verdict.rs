//! What a benchmark means on this machine, in plain words: per workload,
//! whether the bypass wins, loses, is within noise or is inconclusive, and
//! the `skip_ports`/`only_ports` setting that follows. Rounds are
//! interleaved, so each pairs the two paths under the same conditions: the
//! bypass wins when it did better in at least 4 rounds of 5 (80%) and its
//! median by 3% or more, loses likewise; when the medians differ by 3% or
//! more but the rounds disagree, the verdict is inconclusive (rerun with more
//! rounds), never "no difference"; within noise is for medians closer than
//! 3%. One outlier round does not decide. Pure, table-tested.

use serde::Serialize;

use super::Row;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub workload: String,
    /// wins, loses, within_noise or inconclusive.
    pub outcome: &'static str,
    /// How much better the bypass is, in percent (negative: worse).
    pub change_pct: f64,
    pub advice: String,
}

/// The verdict of one row.
pub fn verdict(row: &Row) -> Verdict {
    let (b, l) = (&row.bypass, &row.loopback);
    let change = if row.higher_is_better {
        b.median / l.median - 1.0
    } else {
        1.0 - b.median / l.median
    };
    let pct = (change * 1000.0).round() / 10.0;
    let n = row.rounds.max(1);
    let (better, worse) = (row.better_rounds * 5 >= n * 4, row.better_rounds * 5 <= n);
    let outcome = if !change.is_finite() || change.abs() < 0.03 {
        "within_noise"
    } else if change > 0.0 && better {
        "wins"
    } else if change < 0.0 && worse {
        "loses"
    } else {
        "inconclusive"
    };
    let what = describe(row);
    let advice = match (outcome, row.kind.as_str()) {
        ("inconclusive", _) => format!(
            "{what}: inconclusive: the medians differ by {pct}% ({} vs {}, bypass \
             {}..{}, loopback {}..{}) but the bypass did better in only {} of {} rounds: rerun \
             with --rounds {} or more on a quiet machine before deciding",
            figure(b.median, &b.unit),
            figure(l.median, &l.unit),
            short(b.min, &b.unit),
            short(b.max, &b.unit),
            short(l.min, &l.unit),
            short(l.max, &l.unit),
            row.better_rounds,
            row.rounds,
            (row.rounds * 3).max(15)
        ),
        ("within_noise", _) => format!(
            "{what}: no difference beyond the noise here ({} vs {}; better in {} of {} rounds)",
            figure(b.median, &b.unit),
            figure(l.median, &l.unit),
            row.better_rounds,
            row.rounds
        ),
        ("wins", "rr") => format!(
            "{what}: the bypass answers {pct}% faster (p50 {} vs {} us): keep such services \
             bypassed (list their ports in only_ports if you restrict the bypass)",
            short(b.median, &b.unit),
            short(l.median, &l.unit)
        ),
        ("loses", "rr") => format!(
            "{what}: {}% slower here: keep such ports out with skip_ports",
            -pct
        ),
        ("wins", "stream") => {
            format!("{what}: {pct}% more throughput with the bypass: keep them bypassed")
        }
        ("loses", "stream") => format!(
            "{what}: {}% slower here: keep bulk-transfer ports out with skip_ports",
            -pct
        ),
        ("wins", _) => format!("{what}: {pct}% more with the bypass"),
        _ => format!(
            "{what}: {}% slower here: short-lived connections gain nothing; keep their ports out \
             with skip_ports",
            -pct
        ),
    };
    Verdict {
        workload: row.workload.clone(),
        outcome,
        change_pct: pct,
        advice,
    }
}

fn describe(row: &Row) -> String {
    match row.kind.as_str() {
        "rr" => format!("request/response of {}", size(row.size)),
        "stream" => format!("streams of {} writes", size(row.size)),
        _ => "connect, one exchange, close".to_string(),
    }
}

fn size(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

/// A figure without its unit, in the unit people read: GB/s for bytes per
/// second, as measured otherwise.
fn short(v: f64, unit: &str) -> String {
    match unit {
        "B/s" => format!("{:.2}", v / 1e9),
        _ => format!("{v:.1}"),
    }
}

/// A figure with its unit.
fn figure(v: f64, unit: &str) -> String {
    match unit {
        "B/s" => format!("{} GB/s", short(v, unit)),
        _ => format!("{} {unit}", short(v, unit)),
    }
}

/// One line for all: what to bypass on this machine.
pub fn summary(verdicts: &[Verdict], rows: &[Row]) -> String {
    let kinds = |outcome: &str| -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for (v, r) in verdicts.iter().zip(rows) {
            let name = match r.kind.as_str() {
                "rr" => "request/response",
                "stream" => "bulk transfers",
                _ => "short-lived connections",
            };
            if v.outcome == outcome && !out.contains(&name) {
                out.push(name);
            }
        }
        out
    };
    let (gain, cost) = (kinds("wins"), kinds("loses"));
    let unsure: Vec<&str> = {
        let mut out: Vec<&str> = Vec::new();
        for (v, r) in verdicts.iter().zip(rows) {
            if v.outcome == "inconclusive"
                && v.change_pct < 0.0
                && !out.contains(&r.workload.as_str())
            {
                out.push(r.workload.as_str());
            }
        }
        out
    };
    // A worse median whose rounds disagree is not "costs nothing".
    if !unsure.is_empty() {
        let gains = if gain.is_empty() {
            "gains nothing measured".to_string()
        } else {
            format!("pays for {}", gain.join(" and "))
        };
        let costs = if cost.is_empty() {
            String::new()
        } else {
            format!(", costs {}", cost.join(" and "))
        };
        return format!(
            "on this machine the bypass {gains}{costs}, and is inconclusive for {} (worse \
             medians, rounds that disagree): rerun with more rounds before bypassing them",
            unsure.join(", ")
        );
    }
    match (gain.is_empty(), cost.is_empty()) {
        (false, true) => format!(
            "on this machine the bypass pays for {} and costs nothing measured: bypass everything",
            gain.join(" and ")
        ),
        (false, false) => format!(
            "on this machine the bypass pays for {} and costs {}: keep the ports of {} out with \
             skip_ports (or list the others in only_ports)",
            gain.join(" and "),
            cost.join(" and "),
            cost.join(" and ")
        ),
        (true, false) => format!(
            "on this machine the bypass gains nothing measured and costs {}: bypass only ports \
             you measured a gain for, if any",
            cost.join(" and ")
        ),
        (true, true) => "on this machine the bypass makes no difference beyond the noise".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Stat;

    fn stat(median: f64, min: f64, max: f64, unit: &str) -> Stat {
        Stat {
            median,
            min,
            max,
            p99: None,
            unit: unit.into(),
        }
    }

    fn row(kind: &str, size: usize, lo: Stat, by: Stat, better: usize) -> Row {
        Row {
            workload: format!("{kind} {size}"),
            kind: kind.into(),
            size,
            better_rounds: better,
            rounds: 5,
            bypass_vs_loopback: by.median / lo.median,
            bypass_vs_unix: 1.0,
            higher_is_better: kind != "rr",
            unix: lo.clone(),
            loopback: lo,
            bypass: by,
        }
    }

    #[track_caller]
    fn case(r: Row, outcome: &str, pct: f64, says: &str) {
        let v = verdict(&r);
        assert_eq!((v.outcome, v.change_pct), (outcome, pct), "{v:?}");
        assert!(v.advice.contains(says), "{v:?}");
    }

    #[test]
    fn verdicts() {
        let us = |m, lo, hi| stat(m, lo, hi, "us");
        let bps = |m, lo, hi| stat(m, lo, hi, "B/s");
        // The Intel Xeon run of the issue: rr wins, 4 KiB streams lose.
        let r = row("rr", 64, us(24.0, 23.0, 25.0), us(19.0, 18.5, 19.6), 5);
        case(r, "wins", 20.8, "answers 20.8% faster");
        // One outlier round does not turn a clear win into noise.
        let r = row("rr", 64, us(12.8, 12.0, 40.0), us(7.1, 6.9, 41.0), 4);
        case(r, "wins", 44.5, "answers 44.5% faster");
        let r = row(
            "stream",
            4096,
            bps(1.0e9, 0.95e9, 1.05e9),
            bps(0.78e9, 0.75e9, 0.8e9),
            0,
        );
        case(
            r,
            "loses",
            -22.0,
            "keep bulk-transfer ports out with skip_ports",
        );
        // Better in 3 of 5 rounds: a coin toss, and said so.
        let r = row(
            "stream",
            65536,
            bps(3.0e9, 2.8e9, 3.3e9),
            bps(3.3e9, 2.9e9, 3.6e9),
            3,
        );
        case(
            r,
            "inconclusive",
            10.0,
            "better in only 3 of 5 rounds: rerun with --rounds 15",
        );
        // Always better, by under 3%.
        let r = row(
            "stream",
            256,
            bps(1.0e8, 0.99e8, 1.01e8),
            bps(1.02e8, 1.01e8, 1.03e8),
            5,
        );
        case(r, "within_noise", 2.0, "no difference beyond the noise");
        let conns = |m, lo, hi| stat(m, lo, hi, "conn/s");
        let r = row(
            "connect",
            64,
            conns(14e3, 13.8e3, 14.2e3),
            conns(12e3, 11.9e3, 12.1e3),
            0,
        );
        case(r, "loses", -14.3, "short-lived connections gain nothing");
    }

    #[test]
    fn the_summary_follows_the_verdicts() {
        let us = |m, lo, hi| stat(m, lo, hi, "us");
        let bps = |m, lo, hi| stat(m, lo, hi, "B/s");
        let rows = vec![
            row("rr", 64, us(24.0, 23.0, 25.0), us(19.0, 18.5, 19.6), 5),
            row(
                "stream",
                4096,
                bps(1.0e9, 0.95e9, 1.05e9),
                bps(0.78e9, 0.75e9, 0.8e9),
                0,
            ),
        ];
        let v: Vec<Verdict> = rows.iter().map(verdict).collect();
        assert_eq!(
            summary(&v, &rows),
            "on this machine the bypass pays for request/response and costs bulk transfers: keep \
             the ports of bulk transfers out with skip_ports (or list the others in only_ports)"
        );
        assert!(summary(&v[..1], &rows[..1]).contains("bypass everything"));
    }

    /// The AMD EPYC run of the issue: medians 0.53x and 0.70x of loopback
    /// for 256 B and 4 KiB streams, rounds too noisy for a verdict. The
    /// summary must not say the bypass costs nothing.
    #[test]
    fn a_worse_median_is_never_costs_nothing() {
        let us = |m, lo, hi| stat(m, lo, hi, "us");
        let bps = |m, lo, hi| stat(m, lo, hi, "B/s");
        let rows = vec![
            row("rr", 64, us(12.8, 12.0, 14.0), us(7.1, 6.9, 8.0), 5),
            row(
                "stream",
                256,
                bps(0.19e9, 0.06e9, 0.22e9),
                bps(0.10e9, 0.10e9, 0.11e9),
                2,
            ),
            row(
                "stream",
                4096,
                bps(2.31e9, 0.87e9, 2.39e9),
                bps(1.61e9, 1.36e9, 1.69e9),
                2,
            ),
        ];
        let v: Vec<Verdict> = rows.iter().map(verdict).collect();
        assert_eq!(v[1].outcome, "inconclusive");
        let s = summary(&v, &rows);
        assert!(!s.contains("costs nothing"), "{s}");
        assert!(
            s.contains("inconclusive for stream 256, stream 4096"),
            "{s}"
        );
        assert!(s.contains("rerun with more rounds"), "{s}");
    }
}
