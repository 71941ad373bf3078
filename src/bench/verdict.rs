//! What a benchmark means on this machine, in plain words: per workload,
//! whether the bypass wins, loses or is within noise (from the medians and
//! the min..max spread of the rounds), and the `skip_ports`/`only_ports`
//! setting that follows. Pure, table-tested.

use serde::Serialize;

use super::Row;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub workload: String,
    /// wins, loses or within_noise.
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
    // The rounds' ranges overlap: what differs is noise.
    let overlap = b.min <= l.max && l.min <= b.max;
    let outcome = if !change.is_finite() || overlap {
        "within_noise"
    } else if change > 0.0 {
        "wins"
    } else {
        "loses"
    };
    let what = describe(row);
    let advice = match (outcome, row.kind.as_str()) {
        ("within_noise", _) => format!(
            "{what}: no difference beyond the noise here ({} vs {} {}, the rounds' ranges overlap)",
            short(b.median),
            short(l.median),
            b.unit
        ),
        ("wins", "rr") => format!(
            "{what}: the bypass answers {pct}% faster (p50 {} vs {} us): keep such services \
             bypassed (list their ports in only_ports if you restrict the bypass)",
            short(b.median),
            short(l.median)
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

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}e9", v / 1e9)
    } else {
        format!("{v:.1}")
    }
}

/// One line for all: what to bypass on this machine.
pub fn summary(verdicts: &[Verdict], rows: &[Row]) -> String {
    let kinds = |outcome: &str, kind: &str| {
        verdicts
            .iter()
            .zip(rows)
            .any(|(v, r)| v.outcome == outcome && r.kind == kind)
    };
    let rr_wins = kinds("wins", "rr");
    let stream_loses = kinds("loses", "stream");
    let connect_loses = kinds("loses", "connect");
    match (rr_wins, stream_loses || connect_loses) {
        (true, true) => "on this machine the bypass pays for request/response and costs bulk \
                         streams (or connection setup): bypass request/response services \
                         (only_ports), or keep bulk-transfer ports out (skip_ports)"
            .into(),
        (true, false) => "on this machine the bypass pays for request/response and costs \
                          nothing measured: bypass everything"
            .into(),
        (false, true) => "on this machine the bypass gains no request/response latency and costs \
                          streams: bypass only the ports you measured a gain for, if any"
            .into(),
        (false, false) => "on this machine the bypass makes no difference beyond the noise".into(),
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

    fn row(kind: &str, size: usize, lo: Stat, by: Stat) -> Row {
        Row {
            workload: format!("{kind} {size}"),
            kind: kind.into(),
            size,
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
        // The Intel Xeon run of the issue: rr wins, 4 KiB streams lose.
        case(
            row(
                "rr",
                64,
                stat(24.0, 23.0, 25.0, "us"),
                stat(19.0, 18.5, 19.6, "us"),
            ),
            "wins",
            20.8,
            "answers 20.8% faster",
        );
        case(
            row(
                "stream",
                4096,
                stat(1.0e9, 0.95e9, 1.05e9, "B/s"),
                stat(0.78e9, 0.75e9, 0.8e9, "B/s"),
            ),
            "loses",
            -22.0,
            "keep bulk-transfer ports out with skip_ports",
        );
        case(
            row(
                "stream",
                65536,
                stat(3.0e9, 2.8e9, 3.3e9, "B/s"),
                stat(3.1e9, 2.9e9, 3.4e9, "B/s"),
            ),
            "within_noise",
            3.3,
            "no difference beyond the noise",
        );
        case(
            row(
                "connect",
                64,
                stat(14000.0, 13800.0, 14200.0, "conn/s"),
                stat(12000.0, 11900.0, 12100.0, "conn/s"),
            ),
            "loses",
            -14.3,
            "short-lived connections gain nothing",
        );
    }

    #[test]
    fn the_summary_follows_the_verdicts() {
        let rows = vec![
            row(
                "rr",
                64,
                stat(24.0, 23.0, 25.0, "us"),
                stat(19.0, 18.5, 19.6, "us"),
            ),
            row(
                "stream",
                4096,
                stat(1.0e9, 0.95e9, 1.05e9, "B/s"),
                stat(0.78e9, 0.75e9, 0.8e9, "B/s"),
            ),
        ];
        let v: Vec<Verdict> = rows.iter().map(verdict).collect();
        assert!(summary(&v, &rows).contains("only_ports"));
        assert!(summary(&v[..1], &rows[..1]).contains("bypass everything"));
    }
}
