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
    },
    /// A step ended.
    Finished {
        n: usize,
        total: usize,
        step: &'a Step,
        argv: &'a [String],
        elapsed: Duration,
        outcome: Outcome<'a>,
    },
    /// A transaction failed: `count` undo steps follow.
    Rollback { count: usize },
    /// Something people should know (a decision, a warning).
    Note { text: &'a str },
}

/// Something that hears every step.
pub(crate) trait Listener {
    fn event(&mut self, e: &Event<'_>);
}

/// Step-by-step progress for people, on stdout. A closed stdout (`apply |
/// head`) must not stop a run between two kernel steps, so write errors are
/// ignored.
pub(crate) struct Printer;

impl Listener for Printer {
    fn event(&mut self, e: &Event<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = match e {
            Event::Begin { .. } => Ok(()),
            Event::Started { n, total, step, .. } => {
                let shown = crate::plan::render::display_argv(&step.argv())
                    .unwrap_or_else(|_| "(unprintable)".into());
                writeln!(out, "[{n}/{total}] {}\n      $ {shown}", step.summary())
            }
            Event::Finished {
                elapsed, outcome, ..
            } => {
                let ms = elapsed.as_secs_f64() * 1000.0;
                match outcome {
                    Outcome::Done => writeln!(out, "      done ({ms:.0} ms)"),
                    Outcome::Skipped(why) => writeln!(out, "      {why} ({ms:.0} ms)"),
                    Outcome::Failed { error, .. } => {
                        let first = error.lines().next().unwrap_or("");
                        writeln!(out, "      FAILED: {first}")
                    }
                }
            }
            Event::Rollback { count } => {
                writeln!(out, "rolling back: undoing {count} change(s), last first")
            }
            Event::Note { text } => writeln!(out, "{text}"),
        };
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
}

impl<'a> Executor<'a> {
    pub fn new(listeners: Vec<&'a mut dyn Listener>) -> Self {
        Executor {
            listeners,
            fail_step: std::env::var("BPFPLAN_FAIL_STEP")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    /// Tell the listeners something.
    pub fn note(&mut self, text: &str) {
        self.emit(&Event::Note { text });
    }

    fn emit(&mut self, e: &Event<'_>) {
        for l in self.listeners.iter_mut() {
            l.event(e);
        }
    }

    /// Run `ops` in order under `policy`. Best effort, and past a commit
    /// point, failures are returned, not raised.
    pub fn run(
        &mut self,
        title: &str,
        ops: &[Op],
        policy: Policy,
        mut journal: Option<&mut Journal>,
        numbering: Numbering,
    ) -> Result<Vec<String>, Failed> {
        self.emit(&Event::Begin {
            title,
            total: numbering.total,
        });
        let mut failures = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let n = numbering.first + i;
            let label = format!("step {n}/{} failed: {}", numbering.total, op.step.summary());
            if let Some(j) = journal.as_deref_mut()
                && let Err(error) = j.started(i)
            {
                return Err(self.fail(ops, i, label, error, policy));
            }
            match self.step(&op.step, n, numbering.total) {
                Ok(()) => {}
                Err(e) => {
                    let committed = match policy {
                        Policy::BestEffort => true,
                        Policy::Transaction { commit_at } => commit_at.is_some_and(|c| i >= c),
                    };
                    if committed {
                        failures.push(format!("{}: {e:#}", op.step.summary()));
                    } else {
                        return Err(self.fail(ops, i, label, e, policy));
                    }
                }
            }
        }
        Ok(failures)
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
            self.emit(&Event::Rollback { count: undo.len() });
            let total = undo.len();
            for (i, op) in undo.iter().enumerate() {
                if let Err(e) = self.step(&op.step, i + 1, total) {
                    rollback_failures.push(format!("{}: {e:#}", op.step.summary()));
                }
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
        self.emit(&Event::Started {
            n,
            total,
            step,
            argv: &argv,
        });
        let result = self.execute(step, &argv);
        let elapsed = started.elapsed();
        match result {
            Ok(skip) => {
                self.emit(&Event::Finished {
                    n,
                    total,
                    step,
                    argv: &argv,
                    elapsed,
                    outcome: match skip {
                        Some(why) => Outcome::Skipped(why),
                        None => Outcome::Done,
                    },
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
        self.emit(&Event::Finished {
            n,
            total,
            step,
            argv,
            elapsed: started.elapsed(),
            outcome: Outcome::Failed {
                exit,
                error: &error,
            },
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
