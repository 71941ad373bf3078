//! The one executor. It runs a list of ops through the kernel seam under a
//! policy (a transaction that rolls back from each op's undo, or best
//! effort for teardown), notes each op in the journal before it runs, and
//! reports every step's start and outcome, every note and every warning to
//! its listeners: the one place where printing, JSON events and the audit
//! log hear what happened. It decides nothing; when a step fails it looks
//! at the kernel again to judge what the step did.

use anyhow::Result;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::kernel::act::seam::{self, At, BatchEnd, Kernel, Ran};
use crate::kernel::decide::recovery::Simulated;
use crate::kernel::look::observe::{self, Observed, Query};
use crate::kernel::remember::record::Journal;
use crate::plan::step::{BatchLines, Step};
use crate::plan::{Op, Stage};

use crate::plan::render::BATCH_MAX;

fn is_entry(step: &Step) -> bool {
    matches!(
        step,
        Step::UpdateMapEntry { .. } | Step::DeleteMapEntry { .. }
    )
}

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
    /// A run of `total` steps begins; `stage` says what it is for.
    Begin { stage: Stage, total: usize },
    /// A step is about to run `argv`.
    Started {
        n: usize,
        total: usize,
        step: &'a Step,
        argv: Words<'a>,
        /// It runs as a line of the next `Batch`.
        batched: bool,
    },
    /// A step ended.
    Finished {
        n: usize,
        total: usize,
        step: &'a Step,
        argv: Words<'a>,
        elapsed: Duration,
        outcome: Outcome<'a>,
        /// It ran as a line of the last `Batch` (whose time is its time).
        batched: bool,
    },
    /// The steps just started are about to run as the lines of one bpftool
    /// batch.
    BatchStarted {
        argv: &'a [String],
        lines: &'a BatchLines,
    },
    /// The steps just started ran as the lines of one bpftool batch.
    Batch {
        argv: &'a [String],
        lines: &'a BatchLines,
        elapsed: Duration,
        /// The line that failed (bpftool runs none after it).
        failed: Option<usize>,
    },
    /// A transaction failed: `count` undo steps follow.
    Rollback { count: usize },
    /// Something people should know (a decision, what was found).
    Note { text: &'a str },
    /// Something wrong that did not stop the command.
    Warning { text: &'a str },
}

/// The command an event names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Words<'a> {
    /// Its words.
    Argv(&'a [String]),
    /// A line of a bpftool batch: the command is `bpftool` and its words.
    BatchLine(&'a str),
}

impl<'a> Words<'a> {
    /// The words, in order.
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        let (argv, line): (&[String], Option<&str>) = match self {
            Words::Argv(argv) => (argv, None),
            Words::BatchLine(line) => (&[], Some(line)),
        };
        argv.iter().map(String::as_str).chain(
            line.into_iter()
                .flat_map(|l| std::iter::once("bpftool").chain(l.split(' '))),
        )
    }

    pub fn to_vec(self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

impl serde::Serialize for Words<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
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
/// ignored. The lines of a batch are written together; of a long batch,
/// the first few steps and the last (every line is in the audit log, and in
/// `bpfplan plan --format sh`): a million entries are not a million lines
/// of progress.
#[derive(Default)]
pub(crate) struct Printer {
    pending: String,
    /// Steps of the batch being gathered, and the last one not shown.
    batched: usize,
    unshown: Option<(usize, usize, Step)>,
}

/// How many steps of a batch the progress shows before it counts the rest.
const BATCH_SHOWN: usize = 3;

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
                batched: true,
                ..
            } if self.batched >= BATCH_SHOWN => {
                self.batched += 1;
                // Shown only if it is the last: kept, not formatted.
                self.unshown = Some((*n, *total, (*step).clone()));
                hold = true;
            }
            Event::Started {
                n,
                total,
                step,
                argv,
                batched,
            } => {
                if *batched {
                    self.batched += 1;
                }
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
            Event::Warning { text } => {
                // People read warnings on stderr, apart from the progress.
                let _ = std::io::stderr().write_all(format!("warning: {text}\n").as_bytes());
            }
            Event::BatchStarted { .. } => hold = true,
            Event::Batch { lines, elapsed, .. } => {
                if let Some((n, total, last)) = self.unshown.take() {
                    let more = self.batched - BATCH_SHOWN;
                    let _ = writeln!(
                        out,
                        "      ... {more} more step(s) like these, the last:\n[{n}/{total}] {}",
                        last.summary()
                    );
                }
                self.batched = 0;
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

/// Where a run's steps are numbered from, for people reading the output:
/// a command's stages are numbered on, one after the other, as its plan
/// numbers them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Numbering {
    /// The number of the first step.
    pub first: usize,
    /// The total shown.
    pub total: usize,
}

impl Numbering {
    /// A run numbered on its own.
    pub fn alone(ops: &[Op]) -> Numbering {
        Numbering {
            first: 1,
            total: ops.len(),
        }
    }
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
    /// What a look at the kernel after the rollback found different from
    /// the look the run was decided on: empty when nothing is left behind;
    /// `None` when there was no such look.
    pub left: Option<Vec<String>>,
}

impl Failed {
    /// A failure before any kernel step of the run: nothing to undo.
    pub fn before_any(label: &str, error: anyhow::Error) -> Failed {
        Failed {
            label: label.to_string(),
            error,
            undone: 0,
            rollback_failures: Vec::new(),
            committed: false,
            left: None,
        }
    }

    /// What became of the kernel, in words for the error message.
    pub fn aftermath(&self) -> String {
        match &self.left {
            Some(left) if left.is_empty() => {
                "a look at the kernel afterwards found it as it was before the run: nothing is \
                 left behind"
                    .to_string()
            }
            Some(left) => format!(
                "a look at the kernel afterwards found it not as before the run: {}",
                left.join("; ")
            ),
            None => "the kernel was not looked at afterwards".to_string(),
        }
    }
}

/// What a run is: its stage, its ops and how failures are treated.
pub(crate) struct Batch<'o> {
    pub stage: Stage,
    pub ops: &'o [Op],
    pub policy: Policy,
    pub numbering: Numbering,
    /// The look the ops were decided on: a failed step is judged against it
    /// (did it take effect?) and so is the kernel after a rollback.
    pub decided_on: Option<&'o Observed>,
}

/// How a group of ops stopped.
enum Stop {
    /// Op `k` of the group failed.
    At(usize, anyhow::Error),
    /// bpftool ended a batch unclearly: nothing is undone blindly.
    Uncertain(anyhow::Error),
}

/// The executor, the kernel it acts on and who listens to it.
pub(crate) struct Executor<'a, 'k> {
    listeners: Vec<&'a mut dyn Listener>,
    kernel: &'k mut dyn Kernel,
    /// Whether the steps now running put the kernel back (a rollback or a
    /// recovery): those run even when a listener (the audit log) cannot
    /// record them first, since leaving a half-made change is worse.
    restoring: bool,
}

impl<'a, 'k> Executor<'a, 'k> {
    pub fn new(kernel: &'k mut dyn Kernel, listeners: Vec<&'a mut dyn Listener>) -> Self {
        Executor {
            listeners,
            kernel,
            restoring: false,
        }
    }

    /// One look at the kernel.
    pub fn observe(&mut self, q: &Query) -> Result<Observed> {
        self.kernel.observe(q)
    }

    /// The kernel, for a look the executor does not make itself.
    pub fn kernel(&mut self) -> &mut dyn Kernel {
        &mut *self.kernel
    }

    /// Tell the listeners something.
    pub fn note(&mut self, text: &str) {
        self.tell(&Event::Note { text });
    }

    /// Warn every listener (stderr, the JSON events, the audit log).
    pub fn warn(&mut self, text: &str) {
        self.tell(&Event::Warning { text });
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
                self.warn(&format!(
                    "{err:#}; running it anyway, to put the kernel back"
                ));
                Ok(())
            }
            other => other,
        }
    }

    /// An event after the fact: a listener that fails is reported (on
    /// stderr, the one place left), and the run goes on: what happened
    /// already happened.
    fn tell(&mut self, e: &Event<'_>) {
        if let Err(err) = self.emit(e) {
            say!("warning: {err:#}");
        }
    }

    /// Run a batch of ops in order under its policy. Best effort, and past
    /// a commit point, failures are returned, not raised.
    pub fn run(
        &mut self,
        b: Batch<'_>,
        journal: Option<&mut Journal>,
    ) -> Result<Vec<String>, Failed> {
        let restoring = std::mem::replace(&mut self.restoring, b.stage.restores());
        let result = self.run_ops(&b, journal);
        self.restoring = restoring;
        result
    }

    fn run_ops(
        &mut self,
        b: &Batch<'_>,
        mut journal: Option<&mut Journal>,
    ) -> Result<Vec<String>, Failed> {
        let ops = b.ops;
        self.tell(&Event::Begin {
            stage: b.stage,
            total: b.numbering.total,
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
            if let Some(j) = journal.as_deref_mut()
                && let Err(error) = j.started(i + len - 1)
            {
                let label = label(ops, i, b.numbering);
                return Err(self.fail(b, i, label, error, false));
            }
            let at = At {
                index: i,
                journaled: journal.is_some(),
            };
            let result = if len > 1 {
                self.batch(
                    at,
                    &ops[i..i + len],
                    b.numbering.first + i,
                    b.numbering.total,
                )
            } else {
                self.step(at, &ops[i].step, b.numbering.first + i, b.numbering.total)
                    .map_err(|e| Stop::At(0, e))
            };
            let (k, e, uncertain) = match result {
                Ok(()) => {
                    i += len;
                    continue;
                }
                Err(Stop::At(k, e)) => (k, e, false),
                Err(Stop::Uncertain(e)) => (0, e, true),
            };
            let failed_at = i + k;
            let committed = match b.policy {
                Policy::BestEffort => true,
                Policy::Transaction { commit_at } => commit_at.is_some_and(|c| failed_at >= c),
            };
            if !committed && uncertain {
                return Err(Failed {
                    label: label(ops, failed_at, b.numbering),
                    error: e,
                    undone: 0,
                    rollback_failures: vec![
                        "bpftool ended the batch unclearly, so nothing was undone blindly: the next apply looks at the map and ends the run".into(),
                    ],
                    committed: false,
                    left: None,
                });
            }
            if !committed {
                let label = label(ops, failed_at, b.numbering);
                return Err(self.fail(b, failed_at, label, e, true));
            }
            failures.push(format!("{}: {e:#}", ops[failed_at].step.summary()));
            i = failed_at + 1;
        }
        Ok(failures)
    }

    /// Run map entry changes as the lines of one `bpftool batch file -`
    /// (still one plain bpftool command per entry, made as the sh script
    /// makes it: `Step::batch_line`). bpftool stops at the first failing
    /// line; the kernel tells which one it was, so the error names the
    /// entry.
    fn batch(&mut self, at: At, group: &[Op], first: usize, total: usize) -> Result<(), Stop> {
        let mut lines = BatchLines::default();
        for (k, op) in group.iter().enumerate() {
            if !lines.push(&op.step) {
                return Err(Stop::At(
                    k,
                    anyhow::anyhow!("internal error: {} is not a batch line", op.step.summary()),
                ));
            }
            self.emit_first(&Event::Started {
                n: first + k,
                total,
                step: &op.step,
                argv: Words::BatchLine(lines.last().unwrap_or_default()),
                batched: true,
            })
            .map_err(|e| Stop::At(0, e))?;
        }
        let argv = seam::batch_argv();
        self.emit_first(&Event::BatchStarted {
            argv: &argv,
            lines: &lines,
        })
        .map_err(|e| Stop::At(0, e))?;
        let steps: Vec<&Step> = group.iter().map(|op| &op.step).collect();
        let started = Instant::now();
        let end = self.kernel.batch(at, &steps, &lines);
        let elapsed = started.elapsed();
        let failed_at = match &end {
            BatchEnd::Done => None,
            BatchEnd::Failed(k, _) => Some(*k),
            BatchEnd::Uncertain(_) => Some(0),
        };
        self.tell(&Event::Batch {
            argv: &argv,
            lines: &lines,
            elapsed,
            failed: failed_at,
        });
        let error = match &end {
            BatchEnd::Failed(_, e) | BatchEnd::Uncertain(e) => Some(format!("{e:#}")),
            BatchEnd::Done => None,
        };
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
                argv: Words::Argv(&[]),
                elapsed: Duration::ZERO,
                outcome,
                batched: true,
            });
        }
        match end {
            BatchEnd::Done => Ok(()),
            BatchEnd::Failed(k, e) => Err(Stop::At(k, e)),
            BatchEnd::Uncertain(e) => Err(Stop::Uncertain(e)),
        }
    }

    /// Roll back the ops before `index`, and the failed one too when a
    /// fresh look shows it took effect (a bpftool that attached, then timed
    /// out); a step that failed without effect is not undone, as undoing it
    /// could remove what it collided with. Then look again at what the run
    /// touched, to say what is left.
    fn fail(
        &mut self,
        b: &Batch<'_>,
        index: usize,
        label: String,
        error: anyhow::Error,
        ran: bool,
    ) -> Failed {
        let ops = b.ops;
        let mut undo: Vec<Step> = Vec::new();
        if matches!(b.policy, Policy::Transaction { .. }) {
            if ran && self.took_effect(b, index) {
                self.note(&format!(
                    "a look at the kernel shows that the failed step {} took effect: it is undone too",
                    b.numbering.first + index
                ));
                undo.extend(ops[index].undo.as_deref().cloned());
            }
            undo.extend(
                ops[..index]
                    .iter()
                    .rev()
                    .filter_map(|op| op.undo.as_deref().cloned()),
            );
        }
        let undo: Vec<Op> = undo
            .into_iter()
            .map(|step| Op { step, undo: None })
            .collect();
        let mut rollback_failures = Vec::new();
        if !undo.is_empty() {
            self.tell(&Event::Rollback { count: undo.len() });
            let rollback = Batch {
                stage: Stage::Rollback,
                ops: &undo,
                policy: Policy::BestEffort,
                numbering: Numbering::alone(&undo),
                decided_on: None,
            };
            match self.run(rollback, None) {
                Ok(failures) => rollback_failures = failures,
                Err(f) => rollback_failures.push(format!("{:#}", f.error)),
            }
        }
        let left = b.decided_on.and_then(|before| {
            let mut q = Query::default();
            q.ops(ops);
            match self.kernel.observe(&q) {
                Ok(after) => Some(observe::differences(&q, before, &after)),
                Err(e) => {
                    self.warn(&format!(
                        "looking at the kernel after the rollback failed: {e:#}"
                    ));
                    None
                }
            }
        });
        Failed {
            label,
            error,
            undone: undo.len(),
            rollback_failures,
            committed: false,
            left,
        }
    }

    /// Whether the failed op at `index` changed the kernel: it was needed
    /// in the kernel the ops before it left (simulated from the look the run
    /// was decided on) and a fresh look finds it no longer needed.
    fn took_effect(&mut self, b: &Batch<'_>, index: usize) -> bool {
        let Some(before) = b.decided_on else {
            return false;
        };
        let op = &b.ops[index];
        if op.undo.is_none() || is_entry(&op.step) {
            // Entry lines bpftool reported failed did not land.
            return false;
        }
        let mut sim = Simulated::new(before);
        for prior in &b.ops[..index] {
            sim.effect(&prior.step);
        }
        if !sim.needed(&op.step) {
            return false;
        }
        let mut q = Query::default();
        q.ops(std::slice::from_ref(op));
        match self.kernel.observe(&q) {
            Ok(now) => !Simulated::new(&now).needed(&op.step),
            Err(e) => {
                self.warn(&format!(
                    "looking at what the failed step did failed: {e:#}; it is not undone"
                ));
                false
            }
        }
    }

    /// Run one step and report it.
    fn step(&mut self, at: At, step: &Step, n: usize, total: usize) -> Result<()> {
        let started = Instant::now();
        let argv = match seam::resolve(self.kernel, step.argv()) {
            Ok(argv) => argv,
            Err(e) => {
                self.report_failure(step, (n, total), &[], started, None, &e);
                return Err(e);
            }
        };
        if let Err(e) = self.emit_first(&Event::Started {
            n,
            total,
            step,
            argv: Words::Argv(&argv),
            batched: false,
        }) {
            let e = e.context("not run: it could not be put on record first");
            self.report_failure(step, (n, total), &argv, started, None, &e);
            return Err(e);
        }
        match self.kernel.execute(at, step, &argv) {
            Ok(ran) => {
                self.tell(&Event::Finished {
                    n,
                    total,
                    step,
                    argv: Words::Argv(&argv),
                    elapsed: started.elapsed(),
                    outcome: match ran {
                        Ran::Skipped(why) => Outcome::Skipped(why),
                        Ran::Done => Outcome::Done,
                    },
                    batched: false,
                });
                Ok(())
            }
            Err(f) => {
                self.report_failure(step, (n, total), &argv, started, f.exit, &f.error);
                Err(f.error)
            }
        }
    }

    fn report_failure(
        &mut self,
        step: &Step,
        (n, total): (usize, usize),
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
            argv: Words::Argv(argv),
            elapsed: started.elapsed(),
            outcome: Outcome::Failed {
                exit,
                error: &error,
            },
            batched: false,
        });
    }
}

fn label(ops: &[Op], at: usize, numbering: Numbering) -> String {
    format!(
        "step {}/{} failed: {}",
        numbering.first + at,
        numbering.total,
        ops[at].step.summary()
    )
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
        let made = std::path::PathBuf::from("/sys/fs/bpf/made");
        let never = std::path::PathBuf::from("/sys/fs/bpf/never");
        let ops = vec![
            Op::of(Step::MakePinDir { dir: made.clone() }),
            Op::of(Step::MakePinDir { dir: never.clone() }),
        ];
        let mut fake = crate::kernel::act::fake::Fake::default();
        // `Begin` and the first `Started` are recorded; nothing after.
        let mut log = FullDisk { ok: 2 };
        let mut exec = Executor::new(&mut fake, vec![&mut log]);
        let b = Batch {
            stage: Stage::Apply,
            ops: &ops,
            policy: Policy::Transaction { commit_at: None },
            numbering: Numbering::alone(&ops),
            decided_on: None,
        };
        let failed = exec.run(b, None).unwrap_err();
        assert!(
            format!("{:#}", failed.error).contains("could not be put on record"),
            "{:#}",
            failed.error
        );
        assert!(failed.rollback_failures.is_empty());
        let ran: Vec<String> = fake.ran.iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            ran,
            [
                "mkdir -m 0700 -- /sys/fs/bpf/made",
                "rmdir -- /sys/fs/bpf/made"
            ],
            "a step ran that was not on record, or the rollback did not run"
        );
        assert!(fake.is_empty());
    }
}
