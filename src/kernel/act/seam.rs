//! The seam between bpfplan and the kernel: one interface to look (observe)
//! and to act (run a step, run a batch of entry steps). `Live` is the real
//! kernel, through bpf(2) reads and bpftool; `fake::Fake` (tests) models
//! the effect of every step kind; `Faults` wraps either one to fail a step
//! or to die at one, which is how the failure and kill matrices are driven.
//! Nothing above this module starts a process or reads the kernel.

use anyhow::{Context, Result};

use crate::kernel::act::cmd;
use crate::kernel::look::inspect;
use crate::kernel::look::observe::{self, Observed, Query};
use crate::kernel::look::sockets::{self, Socket};
use crate::kernel::remember::build;
use crate::plan::step::{Arg, BatchLines, Step};

/// Where a step stands in its run: faults are aimed by these.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    /// The 0-based index of the op in its run.
    pub index: usize,
    /// Whether the run is journaled (the record's run): a kill at a step
    /// is only meaningful there.
    pub journaled: bool,
}

/// How a step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    Done,
    /// Nothing to do (a compile whose inputs are unchanged).
    Skipped(&'static str),
}

/// A step that failed: the exit code of its command (none when it did not
/// run, timed out or a signal ended it) and the error, with its stderr.
#[derive(Debug)]
pub(crate) struct StepError {
    pub exit: Option<i32>,
    pub error: anyhow::Error,
}

impl StepError {
    fn new(error: anyhow::Error) -> Self {
        StepError { exit: None, error }
    }
}

/// How a batch of entry steps ended.
#[derive(Debug)]
pub(crate) enum BatchEnd {
    /// Every line ran.
    Done,
    /// Line `k` (0-based) failed; bpftool runs none after it.
    Failed(usize, anyhow::Error),
    /// bpftool stopped where it could not say (a time limit, unreadable
    /// output): which lines ran is unknown.
    Uncertain(anyhow::Error),
}

/// The kernel, as bpfplan sees it.
pub(crate) trait Kernel {
    /// One look at what a query names.
    fn observe(&mut self, q: &Query) -> Result<Observed>;
    /// The id of the map named `map` among the maps of the program at
    /// `program_pin` (a word known only at run time).
    fn map_id(&mut self, program_pin: &str, map: &str) -> Result<u32>;
    /// Run one step, whose words are `argv`.
    fn execute(&mut self, at: At, step: &Step, argv: &[String]) -> Result<Ran, StepError>;
    /// Run map entry steps as the lines of one `bpftool batch file -`.
    fn batch(&mut self, at: At, steps: &[&Step], lines: &BatchLines) -> BatchEnd;
    /// The TCP sockets of these cookies that still exist (the connections a
    /// sockhash holds).
    fn sockets(&mut self, cookies: &[u64]) -> Result<Vec<Socket>>;
}

/// The words of a step with the run-time ones filled in.
pub(crate) fn resolve(kernel: &mut dyn Kernel, argv: Vec<Arg>) -> Result<Vec<String>> {
    argv.into_iter()
        .map(|a| match a {
            Arg::Lit(s) => Ok(s),
            Arg::MapId { program_pin, map } => kernel
                .map_id(program_pin.as_str(), map.as_str())
                .map(|id| id.to_string())
                .with_context(|| format!("finding map `{map}` of {program_pin}")),
        })
        .collect()
}

/// The command every batch runs.
pub(crate) fn batch_argv() -> Vec<String> {
    ["bpftool", "batch", "file", "-"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The real kernel; with the dumps a command made ahead of its first look
/// (`look::prefetch`).
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub prefetch: Option<crate::kernel::look::prefetch::Prefetch>,
}

impl Kernel for Live {
    fn sockets(&mut self, cookies: &[u64]) -> Result<Vec<Socket>> {
        sockets::by_cookie(cookies)
    }

    fn observe(&mut self, q: &Query) -> Result<Observed> {
        observe::observe_with(q, self.prefetch.as_mut())
    }

    fn map_id(&mut self, program_pin: &str, map: &str) -> Result<u32> {
        inspect::map_id_of(program_pin, map)
    }

    fn execute(&mut self, _: At, step: &Step, argv: &[String]) -> Result<Ran, StepError> {
        match step {
            Step::Compile { object, .. } if build::up_to_date(argv, object) => {
                return Ok(Ran::Skipped("up to date"));
            }
            Step::MakeBuildDir { dir } if dir.is_dir() => return Ok(Ran::Skipped("exists")),
            // A pin directory bpfplan made goes once empty; something else
            // pinned there keeps it (and is not bpfplan's to remove).
            Step::RemovePinDir { dir }
                if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) =>
            {
                return Ok(Ran::Skipped(
                    "not empty: other pins live there, so it stays",
                ));
            }
            _ => {}
        }
        let out = cmd::run(argv, None).map_err(StepError::new)?;
        if !out.success() {
            return Err(StepError {
                exit: out.code,
                error: cmd::failure(argv, &out),
            });
        }
        if let Step::Compile { object, .. } = step {
            build::stamp(argv, object).map_err(StepError::new)?;
        }
        Ok(Ran::Done)
    }

    fn batch(&mut self, _: At, steps: &[&Step], lines: &BatchLines) -> BatchEnd {
        run_batch(&batch_argv(), lines.text().as_bytes(), steps)
    }
}

/// Run `bpftool batch file -` over the lines of `steps`, exactly as the
/// plan's sh script does. bpftool stops at the first line that fails and
/// does not say which (its JSON mode would, at an eighth more time per
/// line), so when it fails the kernel is read instead: every line changes
/// its key (a decision only writes what differs), lines run in order, so
/// the first line whose change is not in the map is the one that failed,
/// and the ones before it landed. bpftool killed mid-batch is read the
/// same way.
fn run_batch(argv: &[String], input: &[u8], steps: &[&Step]) -> BatchEnd {
    let out = match cmd::run(argv, Some(input)) {
        Ok(out) => out,
        Err(e) => return BatchEnd::Uncertain(e),
    };
    if out.success() {
        return BatchEnd::Done;
    }
    let error = cmd::failure(argv, &out);
    match first_not_landed(steps) {
        Some(k) => BatchEnd::Failed(
            k,
            error.context(format!(
                "bpftool batch, line {}: its change is not in the map (the lines before it are)",
                k + 1
            )),
        ),
        None => BatchEnd::Uncertain(
            error.context("bpftool batch failed, yet every line's change is in the kernel"),
        ),
    }
}

/// A map's contents by key (none: the map could not be opened).
type Contents = Option<std::collections::HashMap<Vec<u8>, Vec<u8>>>;

/// The first entry step whose change the kernel does not hold, read with
/// one dump of each map the steps name.
fn first_not_landed(steps: &[&Step]) -> Option<usize> {
    let mut maps: std::collections::BTreeMap<&str, Contents> = std::collections::BTreeMap::new();
    for step in steps {
        if let Step::UpdateMapEntry { pin, .. } | Step::DeleteMapEntry { pin, .. } = step
            && !maps.contains_key(pin.as_str())
        {
            // A map that cannot be opened holds none of its lines' changes.
            let dump = inspect::map_dump(pin.as_str()).ok().map(|d| {
                d.into_iter()
                    .map(|e| (e.key.to_vec(), e.first().to_vec()))
                    .collect()
            });
            maps.insert(pin.as_str(), dump);
        }
    }
    steps.iter().position(|step| match step {
        Step::UpdateMapEntry { pin, entry, .. } => maps
            .get(pin.as_str())
            .and_then(Option::as_ref)
            .is_none_or(|m| m.get(entry.key()).map(Vec::as_slice) != Some(entry.value())),
        Step::DeleteMapEntry { pin, entry, .. } => maps
            .get(pin.as_str())
            .and_then(Option::as_ref)
            .is_none_or(|m| m.contains_key(entry.key())),
        _ => true,
    })
}

/// When a fault strikes a step: before it runs, or once it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moment {
    Before,
    After,
}

/// Faults for testing, around any kernel: the first step whose summary
/// holds `fail_step` fails before it runs (once; in a batch, the lines
/// before it run, as bpftool does); with `die_at`, the process exits at
/// once, as if killed, before or after op N (from 1) of a journaled run.
pub(crate) struct Faults<K> {
    pub inner: K,
    pub fail_step: Option<String>,
    pub die_at: Option<(Moment, usize)>,
    /// What dying does: exit like SIGKILL (the binary), or panic (tests of
    /// the fake, which catch it and look at what was left).
    pub die: fn() -> !,
}

fn exit_killed() -> ! {
    std::process::exit(137)
}

impl<K: Kernel> Faults<K> {
    /// The faults `BPFPLAN_FAIL_STEP` and `BPFPLAN_DIE_AT=before:N|after:N`
    /// ask for (read here, once, and nowhere else).
    pub fn from_env(inner: K) -> Self {
        let die_at = std::env::var("BPFPLAN_DIE_AT").ok().and_then(|v| {
            let (when, n) = v.split_once(':')?;
            let when = match when {
                "before" => Moment::Before,
                "after" => Moment::After,
                _ => return None,
            };
            Some((when, n.parse().ok()?))
        });
        Faults {
            inner,
            fail_step: std::env::var("BPFPLAN_FAIL_STEP")
                .ok()
                .filter(|s| !s.is_empty()),
            die_at,
            die: exit_killed,
        }
    }

    fn maybe_die(&self, moment: Moment, at: At, len: usize) {
        if let Some((when, n)) = self.die_at
            && at.journaled
            && when == moment
            && n >= 1
            && (at.index..at.index + len).contains(&(n - 1))
        {
            (self.die)();
        }
    }

    fn take_fail(&mut self, step: &Step) -> Option<String> {
        self.fail_step
            .take_if(|text| step.summary().contains(text.as_str()))
    }
}

fn on_purpose(text: &str) -> anyhow::Error {
    anyhow::anyhow!("failed on purpose: BPFPLAN_FAIL_STEP={text:?}")
}

impl<K: Kernel> Kernel for Faults<K> {
    fn sockets(&mut self, cookies: &[u64]) -> Result<Vec<Socket>> {
        self.inner.sockets(cookies)
    }

    fn observe(&mut self, q: &Query) -> Result<Observed> {
        self.inner.observe(q)
    }

    fn map_id(&mut self, program_pin: &str, map: &str) -> Result<u32> {
        self.inner.map_id(program_pin, map)
    }

    fn execute(&mut self, at: At, step: &Step, argv: &[String]) -> Result<Ran, StepError> {
        self.maybe_die(Moment::Before, at, 1);
        if let Some(text) = self.take_fail(step) {
            return Err(StepError::new(on_purpose(&text)));
        }
        let ran = self.inner.execute(at, step, argv)?;
        self.maybe_die(Moment::After, at, 1);
        Ok(ran)
    }

    fn batch(&mut self, at: At, steps: &[&Step], lines: &BatchLines) -> BatchEnd {
        self.maybe_die(Moment::Before, at, steps.len());
        let failing = self.fail_step.as_ref().and_then(|text| {
            steps
                .iter()
                .position(|s| s.summary().contains(text.as_str()))
        });
        if let Some(k) = failing {
            let text = self.fail_step.take().unwrap_or_default();
            // As bpftool does: the lines before the failing one run.
            if k > 0 {
                match self.inner.batch(at, &steps[..k], &lines.prefix(k)) {
                    BatchEnd::Done => {}
                    other => return other,
                }
            }
            return BatchEnd::Failed(k, on_purpose(&text));
        }
        let end = self.inner.batch(at, steps, lines);
        if matches!(end, BatchEnd::Done) {
            self.maybe_die(Moment::After, at, steps.len());
        }
        end
    }
}

/// A kernel lent out (a fault wrapper around a fake the test keeps).
impl<K: Kernel + ?Sized> Kernel for &mut K {
    fn sockets(&mut self, cookies: &[u64]) -> Result<Vec<Socket>> {
        (**self).sockets(cookies)
    }

    fn observe(&mut self, q: &Query) -> Result<Observed> {
        (**self).observe(q)
    }

    fn map_id(&mut self, program_pin: &str, map: &str) -> Result<u32> {
        (**self).map_id(program_pin, map)
    }

    fn execute(&mut self, at: At, step: &Step, argv: &[String]) -> Result<Ran, StepError> {
        (**self).execute(at, step, argv)
    }

    fn batch(&mut self, at: At, steps: &[&Step], lines: &BatchLines) -> BatchEnd {
        (**self).batch(at, steps, lines)
    }
}
