//! The one executor. It runs a list of ops under a policy (a transaction
//! that rolls back from each op's undo, or best effort for teardown), notes
//! each op in the journal before it runs, and reports every step's start and
//! outcome to its listeners: the one place where printing, JSON events and
//! the audit log hear what happened. It decides nothing.

use anyhow::{Context, Result};
use std::io::Write;
use std::time::{Duration, Instant};

use super::record::Journal;
use super::{build, cmd, inspect};
use crate::plan::Op;
use crate::plan::step::{Arg, Step};

/// At most this many entries go to one bpftool process.
const BATCH_MAX: usize = 50_000;

fn is_entry(step: &Step) -> bool {
    matches!(
        step,
        Step::UpdateMapEntry { .. } | Step::DeleteMapEntry { .. }
    )
}

/// Run `bpftool -j batch file -` over `count` lines; `Some((k, error))`
/// when line `k` failed (bpftool ran none after it).
fn run_batch(argv: &[String], input: &[u8], count: usize) -> Option<(usize, anyhow::Error)> {
    #[derive(serde::Deserialize)]
    struct Line {
        output: Option<serde_json::Value>,
    }
    // bpftool stopped (a time limit) or said nothing readable: which
    // lines ran is unknown.
    let uncertain =
        |e: anyhow::Error| Some((0, anyhow::Error::new(UncertainBatch(format!("{e:#}")))));
    let out = match cmd::run(argv, Some(input)) {
        Ok(out) => out,
        Err(e) => return uncertain(e),
    };
    let lines: Vec<Line> = match serde_json::from_slice(&out.stdout) {
        Ok(lines) => lines,
        Err(e) => {
            return uncertain(
                anyhow::Error::new(e)
                    .context(cmd::failure(argv, &out))
                    .context("reading bpftool batch output"),
            );
        }
    };
    let failed = lines
        .iter()
        .position(|l| l.output.as_ref().is_some_and(|o| o.get("error").is_some()));
    match failed {
        Some(k) => {
            let why = lines[k]
                .output
                .as_ref()
                .and_then(|o| o.get("error"))
                .and_then(|e| e.as_str())
                .unwrap_or("failed")
                .to_string();
            Some((k, anyhow::anyhow!("bpftool batch, line {}: {why}", k + 1)))
        }
        None if out.success() && lines.len() == count => None,
        // No line failed, yet not all ran (or bpftool failed otherwise):
        // the first that did not run is the culprit.
        None => Some((
            lines.len().min(count.saturating_sub(1)),
            cmd::failure(argv, &out),
        )),
    }
}

/// A batch that stopped where bpftool could not say: some of its lines may
/// have run. Nothing is undone blindly; the run stays on record and the next
/// apply or destroy, which looks at the map, ends it.
#[derive(Debug)]
pub(crate) struct UncertainBatch(String);

impl std::fmt::Display for UncertainBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for UncertainBatch {}

/// How a run treats a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Stop at the first failure and undo what ran, last first. From
    /// `commit_at` on (a point of no return) a failure is reported and the
    /// run goes on.
    Transaction { commit_at: Option<usize> },
    /// Try every step and report each failure (teardown, recovery).
    BestEffort,
}

/// How a step ended.
#[derive(Debug)]
pub(crate) enum Outcome<'a> {
    Done,
    /// Nothing to do (a compile whose inputs are unchanged).
    Skipped(&'a str),
    /// The error, with the command's stderr in it.
    Failed {
        exit: Option<i32>,
        error: &'a str,
    },
}

/// What listeners hear.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A run of `total` steps begins; `title` says what it is for.
    Begin { title: &'a str, total: usize },
    /// A step is about to run `argv`.
    Started {
        n: usize,
        total: usize,
        step: &'a Step,
        argv: &'a [String],
        /// It runs as a line of the next `Batch`.
        batched: bool,
    },
    /// A step ended.
    Finished {
        n: usize,
        total: usize,
        step: &'a Step,
        argv: &'a [String],
        elapsed: Duration,
        outcome: Outcome<'a>,
        /// It ran as a line of the last `Batch` (whose time is its time).
        batched: bool,
    },
    /// The steps just started are about to run as the lines of one bpftool
    /// batch.
    BatchStarted {
        argv: &'a [String],
        lines: &'a [String],
    },
    /// The steps just started ran as the lines of one bpftool batch.
    Batch {
        argv: &'a [String],
        lines: &'a [String],
        elapsed: Duration,
        /// The line that failed (bpftool runs none after it).
        failed: Option<usize>,
    },
    /// A transaction failed: `count` undo steps follow.
    Rollback { count: usize },
    /// Something people should know (a decision, a warning).
    Note { text: &'a str },
}

/// Something that hears every step.
pub(crate) trait Listener {
    /// Hear an event. An error before a step runs (a `Started` or a
    /// `BatchStarted` that could not be written to the audit log) keeps the
    /// step from running.
    fn event(&mut self, e: &Event<'_>) -> Result<()>;
}

/// Step-by-step progress for people, on stdout. A closed stdout (`apply |
/// head`) must not stop a run between two kernel steps, so write errors are
/// ignored. The lines of a batch are written together.
#[derive(Default)]
pub(crate) struct Printer {
    pending: String,
}

impl Listener for Printer {
    fn event(&mut self, e: &Event<'_>) -> Result<()> {
        use std::fmt::Write as _;
        let out = &mut self.pending;
        let mut hold = false;
        match e {
            Event::Begin { .. } => {}
            Event::Started {
                n,
                total,
                step,
                argv,
                batched,
            } => {
                let _ = write!(out, "[{n}/{total}] {}\n      $", step.summary());
                for word in argv.iter() {
                    let quoted = shlex::try_quote(word).unwrap_or(std::borrow::Cow::Borrowed("?"));
                    let _ = write!(out, " {quoted}");
                }
                out.push('\n');
                hold = *batched;
            }
            Event::Finished {
                elapsed,
                outcome,
                batched,
                ..
            } => {
                let ms = elapsed.as_secs_f64() * 1000.0;
                match outcome {
                    // A batched step's time is the batch's, printed once.
                    Outcome::Done if *batched => {}
                    Outcome::Done => {
                        let _ = writeln!(out, "      done ({ms:.0} ms)");
                    }
                    Outcome::Skipped(why) => {
                        let _ = writeln!(out, "      {why} ({ms:.0} ms)");
                    }
                    Outcome::Failed { error, .. } => {
                        let first = error.lines().next().unwrap_or("");
                        let _ = writeln!(out, "      FAILED: {first}");
                    }
                }
                hold = *batched;
            }
            Event::Rollback { count } => {
                let _ = writeln!(out, "rolling back: undoing {count} change(s), last first");
            }
            Event::Note { text } => {
                let _ = writeln!(out, "{text}");
            }
            Event::BatchStarted { .. } => hold = true,
            Event::Batch { lines, elapsed, .. } => {
                let _ = writeln!(
                    out,
                    "      ^ {} step(s) ran as the lines of one `bpftool batch file -` ({:.0} ms)",
                    lines.len(),
                    elapsed.as_secs_f64() * 1000.0
                );
            }
        }
        if !hold {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(self.pending.as_bytes());
            let _ = stdout.flush();
            self.pending.clear();
        }
        Ok(())
    }
}

/// Where a run's steps are numbered from, for people reading the output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Numbering {
    /// The number of the first step.
    pub first: usize,
    /// The total shown.
    pub total: usize,
}

/// A transaction that failed.
#[derive(Debug)]
pub(crate) struct Failed {
    /// `step N/TOTAL failed: SUMMARY`.
    pub label: String,
    pub error: anyhow::Error,
    /// How many undo steps ran.
    pub undone: usize,
    /// The undo steps that failed.
    pub rollback_failures: Vec<String>,
    /// The run was past its point of no return: nothing was undone.
    pub committed: bool,
}

/// The executor and who listens to it.
pub(crate) struct Executor<'a> {
    listeners: Vec<&'a mut dyn Listener>,
    /// `BPFPLAN_FAIL_STEP`: the first step whose summary holds this text
    /// fails before it runs, once (for testing rollback at any step).
    fail_step: Option<String>,
    /// `BPFPLAN_DIE_AT=before:N|after:N`: the process exits at once, as if
    /// killed, when op N (from 1) of a journaled run has been put on record
    /// (`before` it runs) or has run (`after`); for testing recovery from a
    /// kill at any step.
    die_at: Option<(Moment, usize)>,
    /// Whether the steps now running put the kernel back (a rollback or a
    /// recovery): those run even when a listener (the audit log) cannot
    /// record them first, since leaving a half-made change is worse.
    restoring: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    Before,
    After,
}

fn die_at() -> Option<(Moment, usize)> {
    let v = std::env::var("BPFPLAN_DIE_AT").ok()?;
    let (when, n) = v.split_once(':')?;
    let when = match when {
        "before" => Moment::Before,
        "after" => Moment::After,
        _ => return None,
    };
    Some((when, n.parse().ok()?))
}

impl<'a> Executor<'a> {
    pub fn new(listeners: Vec<&'a mut dyn Listener>) -> Self {
        Executor {
            listeners,
            fail_step: std::env::var("BPFPLAN_FAIL_STEP")
                .ok()
                .filter(|s| !s.is_empty()),
            die_at: die_at(),
            restoring: false,
        }
    }

    /// Tell the listeners something.
    pub fn note(&mut self, text: &str) {
        self.tell(&Event::Note { text });
    }

    /// Every listener hears the event; the first error is returned.
    fn emit(&mut self, e: &Event<'_>) -> Result<()> {
        let mut first = Ok(());
        for l in self.listeners.iter_mut() {
            if let Err(err) = l.event(e)
                && first.is_ok()
            {
                first = Err(err);
            }
        }
        first
    }

    /// An event before the fact: an error stops the step, unless the step
    /// puts the kernel back (then it is a warning).
    fn emit_first(&mut self, e: &Event<'_>) -> Result<()> {
        match self.emit(e) {
            Err(err) if self.restoring => {
                eprintln!("warning: {err:#}; running it anyway, to put the kernel back");
                Ok(())
            }
            other => other,
        }
    }

    /// An event after the fact: a listener that fails is reported, and the
    /// run goes on (what happened already happened).
    fn tell(&mut self, e: &Event<'_>) {
        if let Err(err) = self.emit(e) {
            eprintln!("warning: {err:#}");
        }
    }

    /// Run `ops` in order under `policy`. Best effort, and past a commit
    /// point, failures are returned, not raised.
    pub fn run(
        &mut self,
        title: &str,
        ops: &[Op],
        policy: Policy,
        journal: Option<&mut Journal>,
        numbering: Numbering,
    ) -> Result<Vec<String>, Failed> {
        let restoring =
            std::mem::replace(&mut self.restoring, matches!(title, "rollback" | "recover"));
        let result = self.run_ops(title, ops, policy, journal, numbering);
        self.restoring = restoring;
        result
    }

    fn run_ops(
        &mut self,
        title: &str,
        ops: &[Op],
        policy: Policy,
        mut journal: Option<&mut Journal>,
        numbering: Numbering,
    ) -> Result<Vec<String>, Failed> {
        self.tell(&Event::Begin {
            title,
            total: numbering.total,
        });
        let mut failures = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            // Consecutive map entry changes run in one bpftool process.
            let len = ops[i..]
                .iter()
                .take(BATCH_MAX)
                .take_while(|op| is_entry(&op.step))
                .count()
                .max(1);
            let group = &ops[i..i + len];
            if let Some(j) = journal.as_deref_mut()
                && let Err(error) = j.started(i + len - 1)
            {
                let label = self.label(ops, i, numbering);
                return Err(self.fail(ops, i, label, error, policy));
            }
            if journal.is_some() {
                self.maybe_die(Moment::Before, i..i + len);
            }
            let result = if len > 1 {
                self.batch(group, numbering.first + i, numbering.total)
            } else {
                self.step(&group[0].step, numbering.first + i, numbering.total)
                    .map_err(|e| (0, e))
            };
            match result {
                Ok(()) => {
                    if journal.is_some() {
                        self.maybe_die(Moment::After, i..i + len);
                    }
                    i += len
                }
                Err((k, e)) => {
                    let at = i + k;
                    let committed = match policy {
                        Policy::BestEffort => true,
                        Policy::Transaction { commit_at } => commit_at.is_some_and(|c| at >= c),
                    };
                    if !committed && e.downcast_ref::<UncertainBatch>().is_some() {
                        return Err(Failed {
                            label: self.label(ops, at, numbering),
                            error: e,
                            undone: 0,
                            rollback_failures: vec![
                                "bpftool stopped mid-batch, so which entries landed is unknown"
                                    .into(),
                            ],
                            committed: false,
                        });
                    }
                    if !committed {
                        let label = self.label(ops, at, numbering);
                        return Err(self.fail(ops, at, label, e, policy));
                    }
                    failures.push(format!("{}: {e:#}", ops[at].step.summary()));
                    i = at + 1;
                }
            }
        }
        Ok(failures)
    }

    /// `BPFPLAN_DIE_AT`: exit without a word or a rollback, like SIGKILL.
    fn maybe_die(&self, moment: Moment, group: std::ops::Range<usize>) {
        if let Some((when, n)) = self.die_at
            && when == moment
            && n >= 1
            && group.contains(&(n - 1))
        {
            std::process::exit(137);
        }
    }

    fn label(&self, ops: &[Op], at: usize, numbering: Numbering) -> String {
        format!(
            "step {}/{} failed: {}",
            numbering.first + at,
            numbering.total,
            ops[at].step.summary()
        )
    }

    /// Run map entry changes as the lines of one `bpftool batch file -`
    /// (still one plain bpftool command per entry). bpftool stops at the
    /// first failing line; its JSON output says which one, so the error
    /// names the entry: `Err((index in the group, error))`.
    fn batch(
        &mut self,
        group: &[Op],
        first: usize,
        total: usize,
    ) -> Result<(), (usize, anyhow::Error)> {
        let mut lines = Vec::with_capacity(group.len());
        for (k, op) in group.iter().enumerate() {
            let argv = resolve(&op.step.argv()).map_err(|e| (k, e))?;
            self.emit_first(&Event::Started {
                n: first + k,
                total,
                step: &op.step,
                argv: &argv,
                batched: true,
            })
            .map_err(|e| (0, e))?;
            lines.push(argv[1..].join(" "));
        }
        let argv: Vec<String> = ["bpftool", "-j", "batch", "file", "-"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.emit_first(&Event::BatchStarted {
            argv: &argv,
            lines: &lines,
        })
        .map_err(|e| (0, e))?;
        let mut input = lines.join("\n");
        input.push('\n');
        let started = Instant::now();
        let failed = match self.fail_step.take_if(|text| {
            group
                .iter()
                .any(|op| op.step.summary().contains(text.as_str()))
        }) {
            Some(text) => {
                // As bpftool does: the lines before the failing one run.
                let k = group
                    .iter()
                    .position(|op| op.step.summary().contains(text.as_str()))
                    .unwrap_or(0);
                let mut before = lines[..k].join("\n");
                before.push('\n');
                match k {
                    0 => None,
                    _ => run_batch(&argv, before.as_bytes(), k),
                }
                .or_else(|| {
                    Some((
                        k,
                        anyhow::anyhow!("failed on purpose: BPFPLAN_FAIL_STEP={text:?}"),
                    ))
                })
            }
            None => run_batch(&argv, input.as_bytes(), group.len()),
        };
        let elapsed = started.elapsed();
        self.tell(&Event::Batch {
            argv: &argv,
            lines: &lines,
            elapsed,
            failed: failed.as_ref().map(|(k, _)| *k),
        });
        let failed_at = failed.as_ref().map(|(k, _)| *k);
        let error = failed.as_ref().map(|(_, e)| format!("{e:#}"));
        for (k, op) in group.iter().enumerate() {
            let outcome = match (failed_at, &error) {
                (Some(f), Some(error)) if f == k => Outcome::Failed { exit: None, error },
                (Some(f), _) if k > f => Outcome::Skipped("not run: an earlier line failed"),
                _ => Outcome::Done,
            };
            self.tell(&Event::Finished {
                n: first + k,
                total,
                step: &op.step,
                argv: &[],
                elapsed: Duration::ZERO,
                outcome,
                batched: true,
            });
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Roll back the ops before `index` (the failed one did not take effect,
    /// and undoing it could remove what it collided with).
    fn fail(
        &mut self,
        ops: &[Op],
        index: usize,
        label: String,
        error: anyhow::Error,
        policy: Policy,
    ) -> Failed {
        let undo: Vec<Op> = match policy {
            Policy::BestEffort => Vec::new(),
            Policy::Transaction { .. } => ops[..index]
                .iter()
                .rev()
                .filter_map(|op| op.undo.clone())
                .map(|step| Op { step, undo: None })
                .collect(),
        };
        let mut rollback_failures = Vec::new();
        if !undo.is_empty() {
            self.tell(&Event::Rollback { count: undo.len() });
            let numbering = Numbering {
                first: 1,
                total: undo.len(),
            };
            match self.run("rollback", &undo, Policy::BestEffort, None, numbering) {
                Ok(failures) => rollback_failures = failures,
                Err(f) => rollback_failures.push(format!("{:#}", f.error)),
            }
        }
        Failed {
            label,
            error,
            undone: undo.len(),
            rollback_failures,
            committed: false,
        }
    }

    /// Run one step and report it.
    fn step(&mut self, step: &Step, n: usize, total: usize) -> Result<()> {
        let started = Instant::now();
        let argv = match resolve(&step.argv()) {
            Ok(argv) => argv,
            Err(e) => {
                let words: Vec<String> = Vec::new();
                self.report_failure(step, n, total, &words, started, None, &e);
                return Err(e);
            }
        };
        if let Err(e) = self.emit_first(&Event::Started {
            n,
            total,
            step,
            argv: &argv,
            batched: false,
        }) {
            let e = e.context("not run: it could not be put on record first");
            self.report_failure(step, n, total, &argv, started, None, &e);
            return Err(e);
        }
        let result = self.execute(step, &argv);
        let elapsed = started.elapsed();
        match result {
            Ok(skip) => {
                self.tell(&Event::Finished {
                    n,
                    total,
                    step,
                    argv: &argv,
                    elapsed,
                    outcome: match skip {
                        Some(why) => Outcome::Skipped(why),
                        None => Outcome::Done,
                    },
                    batched: false,
                });
                Ok(())
            }
            Err((exit, e)) => {
                self.report_failure(step, n, total, &argv, started, exit, &e);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report_failure(
        &mut self,
        step: &Step,
        n: usize,
        total: usize,
        argv: &[String],
        started: Instant,
        exit: Option<i32>,
        e: &anyhow::Error,
    ) {
        let error = format!("{e:#}");
        self.tell(&Event::Finished {
            n,
            total,
            step,
            argv,
            elapsed: started.elapsed(),
            outcome: Outcome::Failed {
                exit,
                error: &error,
            },
            batched: false,
        });
    }

    /// Run the command; `Some(reason)` when there was nothing to do.
    fn execute(
        &mut self,
        step: &Step,
        argv: &[String],
    ) -> Result<Option<&'static str>, (Option<i32>, anyhow::Error)> {
        if let Some(text) = self
            .fail_step
            .take_if(|text| step.summary().contains(text.as_str()))
        {
            return Err((
                None,
                anyhow::anyhow!("failed on purpose: BPFPLAN_FAIL_STEP={text:?}"),
            ));
        }
        if let Step::Compile { object, .. } = step
            && build::up_to_date(argv, object)
        {
            return Ok(Some("up to date"));
        }
        if let Step::MakeBuildDir { dir } = step
            && dir.is_dir()
        {
            return Ok(Some("exists"));
        }
        // A pin directory bpfplan made goes once empty; something else
        // pinned there keeps it (and is not bpfplan's to remove).
        if let Step::RemovePinDir { dir } = step
            && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
        {
            return Ok(Some("not empty: other pins live there, so it stays"));
        }
        let out = cmd::run(argv, None).map_err(|e| (None, e))?;
        if !out.success() {
            return Err((out.code, cmd::failure(argv, &out)));
        }
        if let Step::Compile { object, .. } = step {
            build::stamp(argv, object).map_err(|e| (None, e))?;
        }
        Ok(None)
    }
}

/// Fill in the words known only at run time (map ids).
fn resolve(argv: &[Arg]) -> Result<Vec<String>> {
    argv.iter()
        .map(|a| match a {
            Arg::Lit(s) => Ok(s.clone()),
            Arg::MapId { program_pin, map } => {
                inspect::map_id_of(program_pin.as_str(), map.as_str())
                    .map(|id| id.to_string())
                    .with_context(|| format!("finding map `{map}` of {program_pin}"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that records its first `ok` events, then fails (a full
    /// disk under the audit log).
    struct FullDisk {
        ok: usize,
    }

    impl Listener for FullDisk {
        fn event(&mut self, _: &Event<'_>) -> Result<()> {
            match self.ok.checked_sub(1) {
                Some(left) => {
                    self.ok = left;
                    Ok(())
                }
                None => anyhow::bail!("the audit log is full"),
            }
        }
    }

    /// A step that cannot be put on record does not run, but the rollback
    /// still puts things back when the log fails: the directory the first
    /// step made is removed again.
    #[test]
    fn a_rollback_runs_when_the_audit_log_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("made");
        let never = tmp.path().join("never");
        let ops = vec![
            Op::of(Step::MakePinDir { dir: made.clone() }),
            Op::of(Step::MakePinDir { dir: never.clone() }),
        ];
        // `Begin` and the first `Started` are recorded; nothing after.
        let mut log = FullDisk { ok: 2 };
        let mut exec = Executor::new(vec![&mut log]);
        let failed = exec
            .run(
                "apply",
                &ops,
                Policy::Transaction { commit_at: None },
                None,
                Numbering { first: 1, total: 2 },
            )
            .unwrap_err();
        assert!(
            format!("{:#}", failed.error).contains("could not be put on record"),
            "{:#}",
            failed.error
        );
        assert!(!never.exists(), "a step ran that was not on record");
        assert!(!made.exists(), "the rollback did not run");
        assert!(failed.rollback_failures.is_empty());
    }
}
