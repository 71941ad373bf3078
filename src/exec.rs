//! The one place that starts processes: preflight, apply (with rollback from
//! each step's undo), destroy, and the no-op check against the live kernel.

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::drift::{self, Changes};
use crate::host::{DEFAULT_BPFFS, HostFacts};
use crate::inspect;
use crate::plan::Plan;
use crate::render::display_argv;
use crate::state::{self, LoadedProgram, State, Status, Store};
use crate::step::{Arg, Step};

/// How long a second apply or destroy waits for the first.
fn lock_timeout() -> Duration {
    let secs = std::env::var("BPFPLAN_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// How long destroy waits for the kernel to free programs and maps.
const FREE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed command, with what it printed (the verifier log matters).
fn command_error(argv: &[String], stderr: &[u8], code: Option<i32>) -> anyhow::Error {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let shown = shlex::try_join(words).unwrap_or_else(|_| argv.join(" "));
    let stderr = String::from_utf8_lossy(stderr);
    let code = code.map_or("a signal".to_string(), |c| format!("exit code {c}"));
    anyhow!(
        "`{shown}` failed with {code}\n{}",
        if stderr.trim().is_empty() {
            "(it printed nothing on stderr)".to_string()
        } else {
            stderr.trim_end().to_string()
        }
    )
}

/// Run one command; its stderr goes into the error.
fn run_argv(argv: &[String]) -> Result<()> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = duct::cmd(prog, args)
        .before_spawn(|cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    // A killed bpfplan must not leave a bpftool running on
                    // its own, racing the next run's recovery.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            Ok(())
        })
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| match prog.as_str() {
            "bpftool" | "clang" => format!("`{prog}` could not be started: run `make deps`"),
            _ => format!("`{prog}` could not be started"),
        })?;
    if !out.status.success() {
        return Err(command_error(argv, &out.stderr, out.status.code()));
    }
    Ok(())
}

/// Fill in the words known only at run time (map ids).
fn resolve(argv: &[Arg]) -> Result<Vec<String>> {
    argv.iter()
        .map(|a| match a {
            Arg::Lit(s) => Ok(s.clone()),
            Arg::MapId { program_pin, map } => {
                inspect::map_id_of(program_pin.as_str(), map.as_str()).map(|id| id.to_string())
            }
        })
        .collect()
}

/// Checks that change nothing (but mounting bpffs where none is): any
/// failure here leaves the kernel as it was.
pub fn preflight(plan: &Plan) -> Result<()> {
    check_privileges()?;
    let compiles = plan.steps.iter().any(|s| matches!(s, Step::Compile { .. }));
    for (tool, needed) in [("bpftool", true), ("clang", compiles)] {
        if needed && which::which(tool).is_err() {
            bail!(
                "`{tool}` not found in PATH: run `make deps` (apt-get install clang bpftool libbpf-dev)"
            );
        }
    }
    let mut host = HostFacts::read().context("reading /proc/self/mountinfo")?;
    let pin_dirs: BTreeSet<PathBuf> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::LoadProgram { pin, .. } => {
                Path::new(pin.as_str()).parent().map(Path::to_path_buf)
            }
            Step::PinMap { pin, .. } => Path::new(pin.as_str()).parent().map(Path::to_path_buf),
            _ => None,
        })
        .collect();
    for dir in &pin_dirs {
        if host.bpffs_for(dir).is_none() && dir.starts_with(DEFAULT_BPFFS) {
            mount_bpffs(&host)?;
            host = HostFacts::read().context("reading /proc/self/mountinfo")?;
        }
        if host.bpffs_for(dir).is_none() {
            bail!("pin directory {} is not on a bpf filesystem", dir.display());
        }
        if !dir.is_dir() {
            bail!(
                "pin directory {} does not exist: create it with `mkdir -p {}`",
                dir.display(),
                dir.display()
            );
        }
    }
    for step in &plan.steps {
        match step {
            Step::AttachCgroup { cgroup, .. } => check_cgroup2(Path::new(cgroup.as_str()))?,
            Step::AttachXdp { iface, .. }
                if !Path::new("/sys/class/net").join(iface.as_str()).exists() =>
            {
                bail!("interface {iface} does not exist");
            }
            Step::LoadProgram { object, .. }
                if !object.is_file()
                    && !plan
                        .steps
                        .iter()
                        .any(|s| matches!(s, Step::Compile { object: o, .. } if o == object)) =>
            {
                bail!("object file {} does not exist", object.display());
            }
            _ => {}
        }
    }
    Ok(())
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Loading, pinning and attaching need CAP_SYS_ADMIN, or CAP_BPF with
/// CAP_NET_ADMIN (kernel 5.8+): read them from the effective set.
pub fn check_privileges() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = effective_caps(&status).context("no CapEff in /proc/self/status")?;
    if !has_bpf_privileges(caps) {
        bail!(
            "bpfplan needs root (CAP_SYS_ADMIN, or CAP_BPF and CAP_NET_ADMIN) to load and attach \
             BPF programs; effective capabilities are {caps:#x}"
        );
    }
    Ok(())
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_bpf_privileges(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN))
}

/// Mount bpffs at its default place, but never over a bpffs that is there
/// already: each mount is a fresh, empty instance that would hide the pins.
pub fn mount_bpffs(host: &HostFacts) -> Result<()> {
    if host.bpffs.iter().any(|m| m == Path::new(DEFAULT_BPFFS)) {
        return Ok(());
    }
    let argv: Vec<String> = ["mount", "-t", "bpf", "bpf", DEFAULT_BPFFS]
        .iter()
        .map(|s| s.to_string())
        .collect();
    println!("bpffs is not mounted at {DEFAULT_BPFFS}: mounting it");
    println!("      $ {}", argv.join(" "));
    run_argv(&argv).context("mounting bpffs")
}

fn check_cgroup2(path: &Path) -> Result<()> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("cgroup path holds a NUL byte")?;
    // SAFETY: statfs fills a plain C struct; `c` is a valid C string and
    // `buf` a zeroed, writable statfs.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cgroup {} cannot be used: {e}", path.display());
    }
    #[allow(clippy::unnecessary_cast)]
    if buf.f_type as i64 != CGROUP2_SUPER_MAGIC || !path.is_dir() {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(())
}

/// What apply did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The kernel already matched the manifest; nothing ran.
    NoChanges,
    /// The plan ran.
    Changed,
}

/// Apply a plan: recover from a killed run, skip when in sync, else run every
/// step and roll back on failure.
pub fn apply(plan: &Plan) -> Result<Applied> {
    preflight(plan)?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout())?;
    let started = Instant::now();

    // Build first (no kernel change): compile steps decide whether objects changed.
    let total = plan.steps.len();
    for (i, step) in plan.steps.iter().enumerate() {
        if !step.touches_kernel() {
            print_step(i, total, step)?;
            let t = Instant::now();
            let note = run_build_step(step)
                .with_context(|| format!("step {}/{total} failed: {}", i + 1, step.summary()))?;
            print_done(t, note);
        }
    }
    let objects = state::object_hashes(plan)?;

    if let Some(old) = store.load()? {
        match old.status {
            Status::Applying => {
                println!(
                    "an earlier apply of this deployment was interrupted: undoing its {} started step(s)",
                    old.started
                );
                teardown(
                    &old.started_steps()
                        .iter()
                        .rev()
                        .filter_map(Step::undo)
                        .collect::<Vec<_>>(),
                    &old.programs,
                )?;
                store.remove()?;
            }
            Status::Applied => match drift::changes(plan, &old, &objects)? {
                Changes::None => {
                    // A source edit that compiles to the same object changes
                    // nothing; record the new hashes so `status` agrees.
                    let sources = state::source_hashes(plan)?;
                    if sources != old.sources {
                        store.save(&State { sources, ..old })?;
                    }
                    println!(
                        "No changes: the kernel matches {} ({} ms)",
                        plan.manifest.display(),
                        started.elapsed().as_millis()
                    );
                    return Ok(Applied::NoChanges);
                }
                Changes::Entries(steps) => {
                    println!(
                        "only map contents differ: {} update(s), no program is reloaded",
                        steps.len()
                    );
                    run_steps(&steps)?;
                    let st = State {
                        plan: plan.clone(),
                        started: plan.steps.len(),
                        sources: state::source_hashes(plan)?,
                        ..old
                    };
                    store.save(&st)?;
                    print_applied(plan, started);
                    return Ok(Applied::Changed);
                }
                Changes::Full(reason) => {
                    println!("{reason}: replacing the deployment");
                    teardown(&old.plan.destroy().steps, &old.programs)?;
                    wait_freed(&old.programs);
                    store.remove()?;
                }
            },
        }
    } else {
        for other in store.others(plan) {
            let pins: Vec<String> = other
                .plan
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::LoadProgram { pin, .. } => Some(pin.0.clone()),
                    _ => None,
                })
                .collect();
            eprintln!(
                "warning: {} has another deployment, with programs pinned at {}; it stays in \
                 place (a deployment is its manifest and its pins): destroy it with the \
                 variables it was applied with if it should go",
                plan.manifest.display(),
                pins.join(", ")
            );
        }
        // A fresh deployment must not take over pins it did not create.
        for step in &plan.steps {
            if let Step::LoadProgram { pin, .. } = step {
                refuse_existing(pin.as_str())?;
            }
            if let Step::PinMap { pin, .. } = step {
                refuse_existing(pin.as_str())?;
            }
        }
    }

    let mut st = State {
        manifest: std::fs::canonicalize(&plan.manifest).unwrap_or(plan.manifest.clone()),
        status: Status::Applying,
        plan: plan.clone(),
        started: 0,
        sources: state::source_hashes(plan)?,
        objects,
        programs: Vec::new(),
    };
    for (i, step) in plan.steps.iter().enumerate() {
        if !step.touches_kernel() {
            continue;
        }
        // Record the step as started before it runs: a kill between the two
        // leaves it to be undone (tolerantly) by the next run.
        st.started = i + 1;
        store.save(&st)?;
        print_step(i, total, step)?;
        let t = Instant::now();
        let result = resolve(&step.argv()).and_then(|argv| run_argv(&argv));
        if let Err(e) = result {
            println!("      FAILED");
            // The failed step itself is not undone: it did not take effect,
            // and undoing it could remove what it collided with.
            let done: Vec<Step> = plan.steps[..i]
                .iter()
                .rev()
                .filter_map(Step::undo)
                .collect();
            let rollback = teardown(&done, &[]);
            return Err(match rollback {
                Ok(()) => {
                    store.remove()?;
                    e.context(format!(
                        "step {}/{total} failed: {}; undid the {} kernel change(s) before it, nothing is left behind",
                        i + 1,
                        step.summary(),
                        done.len()
                    ))
                }
                Err(r) => {
                    st.started = i;
                    store.save(&st)?;
                    e.context(format!(
                        "step {}/{total} failed: {}; rollback failed too ({r:#}); run `bpfplan destroy` to retry",
                        i + 1,
                        step.summary()
                    ))
                }
            });
        }
        print_done(t, None);
    }
    st.status = Status::Applied;
    st.programs = loaded_programs(plan)?;
    store.save(&st)?;
    print_applied(plan, started);
    Ok(Applied::Changed)
}

fn print_applied(plan: &Plan, started: Instant) {
    println!(
        "applied {} in {} ms",
        plan.manifest.display(),
        started.elapsed().as_millis()
    );
}

fn refuse_existing(pin: &str) -> Result<()> {
    if Path::new(pin).exists() {
        bail!(
            "{pin} already exists and bpfplan has no record of creating it: choose another \
             pin directory, or, if it is this manifest's own deployment (made by the sh \
             script, say), remove it first with `bpfplan destroy` and the same variables"
        );
    }
    Ok(())
}

fn print_step(i: usize, total: usize, step: &Step) -> Result<()> {
    println!("[{}/{total}] {}", i + 1, step.summary());
    println!("      $ {}", display_argv(&step.argv())?);
    Ok(())
}

fn print_done(t: Instant, note: Option<&str>) {
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    match note {
        Some(n) => println!("      {n} ({ms:.0} ms)"),
        None => println!("      done ({ms:.0} ms)"),
    }
}

/// Build steps; a compile whose inputs are unchanged is skipped.
fn run_build_step(step: &Step) -> Result<Option<&'static str>> {
    let argv = resolve(&step.argv())?;
    if let Step::Compile { object, .. } = step {
        let stamp = stamp_path(object);
        if let Some(key) = compile_key(&argv, object)
            && object.is_file()
            && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key)
        {
            return Ok(Some("up to date"));
        }
        run_argv(&argv)?;
        if let Some(key) = compile_key(&argv, object) {
            std::fs::write(&stamp, key).with_context(|| format!("writing {}", stamp.display()))?;
        }
        return Ok(None);
    }
    run_argv(&argv)?;
    Ok(None)
}

fn stamp_path(object: &Path) -> PathBuf {
    let mut s = object.as_os_str().to_owned();
    s.push(".stamp");
    PathBuf::from(s)
}

/// The hash of the command and of every file clang read (from the depfile
/// `-MD` writes), so a changed header recompiles too. `None` when the
/// depfile is missing (then the object is rebuilt).
fn compile_key(argv: &[String], object: &Path) -> Option<String> {
    let depfile = object.with_extension("d");
    let deps = std::fs::read_to_string(depfile).ok()?;
    let mut h = Sha256::new();
    for a in argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    for file in state::parse_depfile(&deps) {
        h.update(file.as_bytes());
        h.update(std::fs::read(&file).ok()?);
    }
    Some(state::hex(&h.finalize()))
}

fn loaded_programs(plan: &Plan) -> Result<Vec<LoadedProgram>> {
    let mut out = Vec::new();
    for step in &plan.steps {
        if let Step::LoadProgram { pin, .. } = step {
            let info = inspect::pinned_prog(pin.as_str())?
                .with_context(|| format!("program pinned at {pin} vanished after apply"))?;
            out.push(LoadedProgram {
                pin: pin.0.clone(),
                id: info.id,
                tag: info.tag,
                map_ids: info.map_ids,
            });
        }
    }
    Ok(out)
}

/// What apply would change, without building or changing anything: a
/// changed source counts as a changed program.
pub fn pending(plan: &Plan) -> Result<Changes> {
    check_privileges()?;
    let store = Store::for_plan(plan)?;
    let Some(old) = store.load()? else {
        return Ok(Changes::Full("not applied yet".into()));
    };
    if state::source_hashes(plan)? != old.sources {
        return Ok(Changes::Full(
            "a program's source, header or object changed".into(),
        ));
    }
    let objects = old.objects.clone();
    drift::changes(plan, &old, &objects)
}

/// Run steps in order, stopping at the first failure. Map updates are
/// idempotent: after a failure the next apply writes them again.
fn run_steps(steps: &[Step]) -> Result<()> {
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        print_step(i, total, step)?;
        let t = Instant::now();
        resolve(&step.argv())
            .and_then(|argv| run_argv(&argv))
            .with_context(|| format!("step {}/{total} failed: {}", i + 1, step.summary()))?;
        print_done(t, None);
    }
    Ok(())
}

/// Run teardown steps, skipping objects already gone, trying every step and
/// reporting each failure. `recorded` are the programs apply loaded: a
/// program whose pin was removed by hand is still found by its id.
pub fn teardown(steps: &[Step], recorded: &[LoadedProgram]) -> Result<()> {
    let total = steps.len();
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        print_step(i, total, step)?;
        let t = Instant::now();
        match teardown_step(step, recorded) {
            Ok(true) => print_done(t, None),
            Ok(false) => print_done(t, Some("already gone")),
            Err(e) => {
                println!("      FAILED: {e:#}");
                failures.push(format!("{}: {e:#}", step.summary()));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} teardown step(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        )
    }
}

/// The ids of our program behind `pin`: the one pinned there now, and the one
/// apply recorded there (if the pin was removed or replaced by hand).
fn our_ids(pin: &str, recorded: &[LoadedProgram]) -> Result<Vec<(u32, bool)>> {
    let mut ids = Vec::new();
    if let Some(p) = inspect::pinned_prog(pin)? {
        ids.push((p.id, true));
    }
    for r in recorded.iter().filter(|r| r.pin == pin) {
        if !ids.iter().any(|(id, _)| *id == r.id) && inspect::prog_exists(r.id) {
            ids.push((r.id, false));
        }
    }
    Ok(ids)
}

/// Detach each of our programs that is `attached`: with the step's own
/// command when it is the pinned one, else by id. Ok(false) when none was.
fn detach_ours(
    ours: Vec<(u32, bool)>,
    attached: &[u32],
    run: impl Fn() -> Result<()>,
    by_id: impl Fn(&str) -> Vec<String>,
) -> Result<bool> {
    let mut done = false;
    for (id, pinned) in ours {
        if !attached.contains(&id) {
            continue;
        }
        if pinned {
            run()?;
        } else {
            run_instead(&by_id(&id.to_string()))?;
        }
        done = true;
    }
    Ok(done)
}

/// Run a command that stands in for a step's own (its pin is gone), showing it.
fn run_instead(argv: &[String]) -> Result<()> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    println!(
        "      the pin is gone; by id instead: $ {}",
        shlex::try_join(words).unwrap_or_else(|_| argv.join(" "))
    );
    run_argv(argv)
}

/// Ok(true) when the step ran, Ok(false) when its object was already gone.
fn teardown_step(step: &Step, recorded: &[LoadedProgram]) -> Result<bool> {
    let run = || resolve(&step.argv()).and_then(|argv| run_argv(&argv));
    let words = |w: &[&str]| -> Vec<String> { w.iter().map(|s| s.to_string()).collect() };
    match step {
        Step::UnpinProgram { pin, .. } if !Path::new(pin.as_str()).exists() => Ok(false),
        Step::UnpinMap { pin, .. } if !Path::new(pin.as_str()).exists() => Ok(false),
        Step::DetachCgroup {
            program_pin,
            cgroup,
            kind,
            ..
        } => {
            let attached: Vec<u32> = inspect::cgroup_attachments(cgroup.as_str())?
                .iter()
                .map(|a| a.id)
                .collect();
            detach_ours(
                our_ids(program_pin.as_str(), recorded)?,
                &attached,
                run,
                |id| {
                    words(&[
                        "bpftool",
                        "cgroup",
                        "detach",
                        cgroup.as_str(),
                        kind,
                        "id",
                        id,
                    ])
                },
            )
        }
        Step::DetachMap {
            program_pin,
            map_pin,
            kind,
            ..
        } => {
            if !Path::new(map_pin.as_str()).exists() {
                return Ok(false);
            }
            let attached = inspect::map_attached_prog_ids(map_pin.as_str(), kind)?;
            detach_ours(
                our_ids(program_pin.as_str(), recorded)?,
                &attached,
                run,
                |id| {
                    words(&[
                        "bpftool",
                        "prog",
                        "detach",
                        "id",
                        id,
                        kind,
                        "pinned",
                        map_pin.as_str(),
                    ])
                },
            )
        }
        Step::DetachXdp {
            program_pin, iface, ..
        } => {
            // Detach only our program: another tool's XDP program on the
            // interface is not ours to remove.
            let on_iface = inspect::xdp_prog_ids(iface.as_str())?;
            let ours = our_ids(program_pin.as_str(), recorded)?;
            if !ours.iter().any(|(id, _)| on_iface.contains(id)) {
                return Ok(false);
            }
            run().map(|()| true)
        }
        _ => run().map(|()| true),
    }
}

/// Destroy: teardown of what was applied (or, with no record, of what the
/// manifest declares), then wait until the kernel has freed it.
pub fn destroy(plan: &Plan) -> Result<()> {
    preflight_destroy()?;
    let store = Store::for_plan(plan)?;
    let _lock = store.lock(lock_timeout())?;
    let (steps, mut programs) = match store.load()? {
        Some(st) => {
            let steps: Vec<Step> = st
                .started_steps()
                .iter()
                .rev()
                .filter_map(Step::undo)
                .collect();
            (steps, st.programs)
        }
        None => (plan.destroy().steps, Vec::new()),
    };
    // Note what is live now, to wait for it to be freed afterwards.
    for step in &plan.steps {
        if let Step::LoadProgram { pin, .. } = step
            && let Some(info) = inspect::pinned_prog(pin.as_str())?
            && !programs.iter().any(|p| p.id == info.id)
        {
            programs.push(LoadedProgram {
                pin: pin.0.clone(),
                id: info.id,
                tag: info.tag,
                map_ids: info.map_ids,
            });
        }
    }
    if steps.is_empty() {
        println!("nothing to destroy");
    }
    teardown(&steps, &programs)?;
    store.remove()?;
    wait_freed(&programs);
    println!("destroyed {}", plan.manifest.display());
    Ok(())
}

fn preflight_destroy() -> Result<()> {
    check_privileges()?;
    if which::which("bpftool").is_err() {
        bail!("`bpftool` not found in PATH: run `make deps`");
    }
    Ok(())
}

/// Poll until the programs and their maps are freed (the kernel releases them
/// a moment after the last reference goes); warn if something still holds them.
fn wait_freed(programs: &[LoadedProgram]) {
    let start = Instant::now();
    let prog_ids: Vec<u32> = programs.iter().map(|p| p.id).collect();
    let map_ids: BTreeSet<u32> = programs
        .iter()
        .flat_map(|p| p.map_ids.iter().copied())
        .collect();
    loop {
        let live_progs: Vec<u32> = prog_ids
            .iter()
            .copied()
            .filter(|id| inspect::prog_exists(*id))
            .collect();
        let live_maps: Vec<u32> = map_ids
            .iter()
            .copied()
            .filter(|id| inspect::map_exists(*id))
            .collect();
        if live_progs.is_empty() && live_maps.is_empty() {
            return;
        }
        if start.elapsed() > FREE_TIMEOUT {
            eprintln!(
                "warning: after {}s the kernel still holds program ids {live_progs:?} and map ids {live_maps:?}: \
                 something else references them",
                FREE_TIMEOUT.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn caps(status: &str, want: Option<bool>) {
        assert_eq!(effective_caps(status).map(has_bpf_privileges), want);
    }

    #[test]
    fn privileges() {
        caps("Name:\tx\nCapEff:\t000001ffffffffff\n", Some(true));
        caps("CapEff:\t0000000000200000\n", Some(true)); // CAP_SYS_ADMIN
        caps("CapEff:\t0000008000001000\n", Some(true)); // CAP_BPF + CAP_NET_ADMIN
        caps("CapEff:\t0000008000000000\n", Some(false)); // CAP_BPF alone
        caps("CapEff:\t0000000000000000\n", Some(false));
        caps("Name:\tx\n", None);
    }

    #[test]
    fn depfile() {
        let d = "target/bpf/x.o: bpf/x.c /usr/include/linux/bpf.h \\\n  bpf/my\\ key.h\n";
        assert_eq!(
            state::parse_depfile(d),
            ["bpf/x.c", "/usr/include/linux/bpf.h", "bpf/my key.h"]
        );
        assert!(state::parse_depfile("").is_empty());
    }
}
