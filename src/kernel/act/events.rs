//! `apply` and `destroy --format json`: one JSON object per line on stdout
//! for each run, step start, step end, rollback and note, so CI systems and
//! fleet tools follow progress without scraping text. The command adds a
//! last `result` line.

use serde_json::{Value, json};
use std::io::Write;

use crate::kernel::act::exec::{Event, Listener, Outcome};

/// Writes each event as a line of JSON on stdout, stamped with the
/// milliseconds since the command began (`t_ms`).
pub(crate) struct JsonLines {
    start: std::time::Instant,
}

impl JsonLines {
    pub fn new() -> Self {
        JsonLines {
            start: std::time::Instant::now(),
        }
    }

    fn line(v: &Value) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop a run between two kernel steps.
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A warning already printed on stderr, as an event line only.
    pub fn quiet_warning(&self, text: &str) {
        let mut v = to_json(&Event::Warning { text });
        v["t_ms"] = json!(self.t_ms());
        Self::line(&v);
    }

    /// The last line: how the command ended.
    pub fn result(&self, verb: &str, ok: bool, outcome: &str, error: Option<&str>) {
        Self::line(&json!({
            "t_ms": self.t_ms(),
            "event": "result",
            "command": verb,
            "ok": ok,
            "outcome": outcome,
            "error": error,
        }));
    }
}

/// The JSON form of an event.
pub(crate) fn to_json(e: &Event<'_>) -> Value {
    match e {
        Event::Begin { stage, total } => {
            json!({"event": "begin", "run": stage.word(), "steps": total})
        }
        Event::Started {
            n,
            total,
            step,
            argv,
            batched,
        } => json!({
            "event": "started",
            "step": n,
            "of": total,
            "summary": step.summary(),
            "op": step.op(),
            "argv": argv,
            "batched": batched,
        }),
        Event::Finished {
            n,
            total,
            step,
            argv,
            elapsed,
            outcome,
            batched,
        } => {
            let mut v = json!({
                "event": "finished",
                "step": n,
                "of": total,
                "summary": step.summary(),
                "op": step.op(),
                "argv": argv,
                "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                "batched": batched,
            });
            match outcome {
                Outcome::Done => {
                    v["outcome"] = json!("done");
                    v["exit_code"] = json!(0);
                }
                Outcome::Skipped(why) => {
                    v["outcome"] = json!("skipped");
                    v["reason"] = json!(why);
                }
                Outcome::Failed { exit, error } => {
                    v["outcome"] = json!("failed");
                    v["exit_code"] = json!(exit);
                    v["error"] = json!(error);
                }
            }
            v
        }
        Event::Batch {
            argv,
            lines,
            elapsed,
            failed,
        } => json!({
            "event": "batch",
            "argv": argv,
            "lines": lines,
            "duration_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            "failed_line": failed.map(|k| k + 1),
        }),
        Event::BatchStarted { argv, lines } => {
            json!({"event": "batch_started", "argv": argv, "lines": lines})
        }
        Event::Rollback { count } => json!({"event": "rollback", "steps": count}),
        Event::Note { text } => json!({"event": "note", "text": text}),
        Event::Warning { text } => json!({"event": "warning", "text": text}),
    }
}

impl JsonLines {
    fn t_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3
    }
}

impl Listener for JsonLines {
    fn event(&mut self, e: &Event<'_>) -> anyhow::Result<()> {
        if matches!(e, Event::BatchStarted { .. }) {
            return Ok(());
        }
        if let Event::Warning { text } = e {
            // People running `--format json` read warnings on stderr too.
            let _ = writeln!(std::io::stderr(), "warning: {text}");
        }
        let mut v = to_json(e);
        v["t_ms"] = json!(self.t_ms());
        Self::line(&v);
        Ok(())
    }
}
