//! Fast twins of the kernel tests, on the fake kernel: fresh, entries,
//! replace, repair, destroy with and without a record, a failure at every
//! step of a replace, a kill before and after every step, and a step that
//! takes effect before it fails. Each run's commands are compared with what
//! the plan showed just before it (map ids aside), as the root test does
//! with the audit log. Milliseconds, no root; `tests/` runs the same on the
//! real kernel.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::host::HostFacts;
use crate::kernel::act::carry::Applied;
use crate::kernel::act::exec::Executor;
use crate::kernel::act::fake::{Fake, Object};
use crate::kernel::act::seam::{At, BatchEnd, Faults, Kernel, Moment, Ran, StepError};
use crate::kernel::decide::intent;
use crate::kernel::look::observe::Observed;
use crate::kernel::remember::build::Built;
use crate::kernel::remember::record::{FileHash, Store};
use crate::kernel::verbs::apply::{self, Inputs, Pre, read_record};
use crate::kernel::verbs::destroy::{self, Destroyed};
use crate::manifest::diag::Source;
use crate::manifest::model::{KernelMapType, MapShape};
use crate::manifest::validate;
use crate::plan::step::{Arg, BatchLines, Step};
use crate::plan::{DecisionKind, Plan, PlanOptions, Review};

const MANIFEST: &str = r#"
[vars]
port = "1000"
cgroup = "/sys/fs/cgroup/twin"
[[program]]
name = "ops"
object = "ops.o"
type = "sockops"
pin = "/sys/fs/bpf/twin/ops"
[[map]]
name = "socks"
program = "ops"
pin = "/sys/fs/bpf/twin/socks"
[[program]]
name = "redir"
object = "redir.o"
type = "sk_msg"
pin = "/sys/fs/bpf/twin/redir"
maps = ["socks"]
[[map]]
name = "deny"
program = "redir"
pin = "/sys/fs/bpf/twin/deny"
key = "u32"
value = "u8"
entries = [{ key = "${port}", value = 1 }, { key = "7", value = 1 }]
[[attach]]
program = "redir"
type = "msg_verdict"
map = "socks"
[[attach]]
program = "ops"
type = "sock_ops"
cgroup = "${cgroup}"
"#;

/// Pins (with ids), the cgroup's programs and the policy map's entries.
type State = (Vec<String>, Vec<u32>, Option<Vec<(Vec<u8>, Vec<u8>)>>);

/// The fake, a state directory of its own and the objects' tags.
struct Twin {
    fake: Fake,
    state: tempfile::TempDir,
    /// The tag of redir.o (a new one stands for an edited program).
    redir: String,
    /// The shape redir.o gives its policy map.
    deny: MapShape,
}

fn shape(map_type: KernelMapType, key_size: u32, value_size: u32, max_entries: u32) -> MapShape {
    MapShape {
        map_type,
        key_size,
        value_size,
        max_entries,
        flags: 0,
    }
}

/// The host facts records are checked against (the cgroup must be under
/// this host's cgroup v2 mount).
fn host() -> HostFacts {
    let mut h = HostFacts::read().unwrap_or(HostFacts {
        cgroup2: None,
        bpffs: Vec::new(),
    });
    h.cgroup2.get_or_insert_with(|| "/sys/fs/cgroup".into());
    h
}

fn plan(port: &str) -> Plan {
    plan_at("/m/twin.toml", port)
}

/// The same manifest's text at another path: another deployment.
fn plan_at(manifest: &str, port: &str) -> Plan {
    let host = host();
    let cg = host.cgroup2.clone().unwrap_or_default().join("twin");
    let vars = vec![
        ("port".to_string(), port.to_string()),
        ("cgroup".to_string(), cg.display().to_string()),
    ];
    let env = validate::Env {
        host: &host,
        overrides: &vars,
        exists: &|_| true,
    };
    let src = Source::new(Path::new(manifest), MANIFEST.to_string());
    let checked = validate::validate(&src, &env).expect("valid");
    crate::plan::plan(
        &checked.model,
        &PlanOptions {
            build_dir: "/b".into(),
            include: vec![],
        },
    )
}

impl Twin {
    fn new() -> Twin {
        let mut t = Twin {
            fake: Fake::default(),
            state: tempfile::tempdir().unwrap(),
            redir: "bb01".into(),
            deny: shape(KernelMapType::Hash, 4, 1, 4),
        };
        t.objects();
        t
    }

    fn objects(&mut self) {
        self.fake.object(
            "/m/ops.o",
            Object {
                tag: "aa01".into(),
                maps: vec![("socks".into(), shape(KernelMapType::Sockhash, 40, 8, 16))],
            },
        );
        self.fake.object(
            "/m/redir.o",
            Object {
                tag: self.redir.clone(),
                maps: vec![("deny".into(), self.deny)],
            },
        );
    }

    /// A program edited: redir.o loads with another tag.
    fn edit_redir(&mut self, tag: &str) {
        self.redir = tag.into();
        self.objects();
    }

    fn store(&self, plan: &Plan) -> Store {
        Store::in_dir(self.state.path(), plan).unwrap()
    }

    /// The objects as built: their hashes, and the maps each defines.
    fn hashes(&self) -> Built {
        let mut maps = std::collections::BTreeMap::new();
        maps.insert(
            PathBuf::from("/m/ops.o"),
            [(
                "socks".to_string(),
                shape(KernelMapType::Sockhash, 40, 8, 16),
            )]
            .into(),
        );
        maps.insert(
            PathBuf::from("/m/redir.o"),
            [("deny".to_string(), self.deny)].into(),
        );
        Built {
            hashes: vec![
                FileHash {
                    path: "/m/ops.o".into(),
                    sha256: "aa01".into(),
                },
                FileHash {
                    path: "/m/redir.o".into(),
                    sha256: self.redir.clone(),
                },
            ],
            maps,
        }
    }

    /// What `plan` shows for apply now.
    fn plan_apply(&mut self, plan: &Plan) -> Review {
        let store = self.store(plan);
        let loaded = read_record(&store).unwrap();
        let obs = self
            .fake
            .observe(&apply::query(plan, loaded.as_ref()))
            .unwrap();
        let i = intent::apply(
            plan,
            None,
            Vec::new(),
            loaded.as_ref(),
            &obs,
            &self.hashes(),
        )
        .adopting(plan, loaded.as_ref(), &obs, &store.claims());
        let deployed = loaded.as_ref().and_then(|l| l.record.deployed.as_ref());
        intent::apply_review(plan, &i, deployed, &obs)
    }

    /// What `plan --destroy` shows now.
    fn plan_destroy(&mut self, plan: &Plan) -> Review {
        let store = self.store(plan);
        let loaded = read_record(&store).unwrap();
        let obs = self
            .fake
            .observe(&apply::query(plan, loaded.as_ref()))
            .unwrap();
        let claims = store.claims();
        intent::destroy_review(&intent::destroy(
            plan,
            loaded.as_ref(),
            &obs,
            &built(),
            &claims,
        ))
    }

    fn apply_with(&mut self, plan: &Plan, kernel: &mut dyn Kernel) -> anyhow::Result<Applied> {
        let store = self.store(plan);
        let loaded = read_record(&store)?;
        let hashes = self.hashes();
        let mut exec = Executor::new(kernel, Vec::new());
        let obs = exec.observe(&apply::query(plan, loaded.as_ref()))?;
        let inputs = Inputs {
            built: hashes,
            sources: Vec::new(),
            last_plan: None,
            started: Instant::now(),
        };
        apply::carry_out(
            &mut exec,
            &store,
            &std::sync::Arc::new(plan.clone()),
            Pre::default(),
            loaded,
            obs,
            inputs,
            None,
        )
    }

    fn apply(&mut self, plan: &Plan) -> anyhow::Result<Applied> {
        let mut fake = std::mem::take(&mut self.fake);
        let out = self.apply_with(plan, &mut fake);
        self.fake = fake;
        out
    }

    fn destroy(&mut self, plan: &Plan) -> anyhow::Result<Destroyed> {
        let store = self.store(plan);
        let mut exec = Executor::new(&mut self.fake, Vec::new());
        destroy::destroy_on(&mut exec, &store, plan, &built())
    }

    /// Apply, and check that what ran is what the plan showed just before.
    #[track_caller]
    fn apply_as_planned(&mut self, plan: &Plan) -> Review {
        let review = self.plan_apply(plan);
        let from = self.fake.ran.len();
        self.apply(plan).unwrap();
        assert_eq!(
            ran(&self.fake, from),
            shown(&review),
            "apply ran what plan did not show"
        );
        review
    }

    /// Destroy, and check that what ran is what `plan --destroy` showed.
    #[track_caller]
    fn destroy_as_planned(&mut self, plan: &Plan) -> (Review, Destroyed) {
        let review = self.plan_destroy(plan);
        let from = self.fake.ran.len();
        let d = self.destroy(plan).unwrap();
        assert_eq!(
            ran(&self.fake, from),
            shown(&review),
            "destroy ran what plan did not show"
        );
        (review, d)
    }

    /// What an observer compares before and after a failed run.
    fn state(&self) -> State {
        let cg = host().cgroup2.unwrap_or_default().join("twin");
        (
            self.fake.pins(),
            self.fake.cgroup(&cg.display().to_string()),
            self.fake
                .entries("/sys/fs/bpf/twin/deny")
                .map(|e| e.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        )
    }
}

fn built() -> std::collections::BTreeSet<PathBuf> {
    ["/m/ops.o".into(), "/m/redir.o".into()].into()
}

/// A command line with the map ids aside.
fn aside(words: Vec<String>) -> String {
    let mut out = Vec::new();
    let mut after_id = false;
    for w in words {
        out.push(if after_id {
            "<id>".to_string()
        } else {
            w.clone()
        });
        after_id = w == "id";
    }
    out.join(" ")
}

fn ran(fake: &Fake, from: usize) -> Vec<String> {
    fake.ran[from..].iter().cloned().map(aside).collect()
}

fn shown(review: &Review) -> Vec<String> {
    review
        .changes
        .iter()
        .map(|s| {
            let words = s.argv().into_iter().map(|a| match a {
                Arg::Lit(w) => w,
                Arg::MapId { .. } => "<id>".to_string(),
            });
            aside(words.collect())
        })
        .collect()
}

#[test]
fn fresh_apply_and_destroy_run_what_plan_showed_and_leave_nothing() {
    let mut t = Twin::new();
    let p = plan("1000");
    let review = t.apply_as_planned(&p);
    assert_eq!(review.decision, DecisionKind::Fresh);
    // The missing pin directory is made first, and shown.
    assert!(
        matches!(review.changes[0], Step::MakePinDir { .. }),
        "{:?}",
        review.changes[0]
    );
    assert_eq!(t.plan_apply(&p).decision, DecisionKind::Nothing);
    let (review, d) = t.destroy_as_planned(&p);
    assert_eq!(review.decision, DecisionKind::Destroy);
    assert!(
        review
            .changes
            .iter()
            .any(|s| matches!(s, Step::RemovePinDir { .. }))
    );
    assert_eq!(d, Destroyed::Freed);
    assert!(t.fake.is_empty(), "{:?}", t.fake.pins());
    // A second destroy has nothing to do and says so.
    let (review, d) = t.destroy_as_planned(&p);
    assert_eq!(review.decision, DecisionKind::NothingToDestroy);
    assert_eq!(d, Destroyed::Nothing);
}

#[test]
fn an_entries_change_runs_only_map_updates() {
    let mut t = Twin::new();
    t.apply(&plan("1000")).unwrap();
    let ids = t.fake.ids();
    let review = t.apply_as_planned(&plan("2000"));
    assert_eq!(review.decision, DecisionKind::Entries);
    assert_eq!(review.changes.len(), 2, "{:?}", review.changes);
    assert_eq!(t.fake.ids(), ids, "programs were reloaded");
}

#[test]
fn a_replace_and_a_repair_run_what_plan_showed() {
    let mut t = Twin::new();
    let p = plan("1000");
    t.apply(&p).unwrap();
    let maps = |t: &Twin| -> Vec<String> {
        t.fake
            .pins()
            .into_iter()
            .filter(|p| p.contains(" map "))
            .collect()
    };
    let before = maps(&t);
    t.edit_redir("bb02");
    let review = t.apply_as_planned(&p);
    assert_eq!(review.decision, DecisionKind::Replace);
    assert_eq!(t.plan_apply(&p).decision, DecisionKind::Nothing);
    // Same shapes: the sockhash and the policy are kept, ids and all.
    assert_eq!(maps(&t), before);
    assert!(review.notes.is_empty(), "{:?}", review.notes);
    // A hand detach is drift: repaired as planned.
    let cg = host()
        .cgroup2
        .unwrap_or_default()
        .join("twin")
        .display()
        .to_string();
    let ops = t.fake.cgroup(&cg)[0];
    t.fake.detach_by_hand(&cg, ops);
    let review = t.apply_as_planned(&p);
    assert_ne!(review.decision, DecisionKind::Nothing);
    assert_eq!(t.plan_apply(&p).decision, DecisionKind::Nothing);
    t.destroy_as_planned(&p);
    assert!(t.fake.is_empty(), "{:?}", t.fake.pins());
}

#[test]
fn a_record_less_destroy_probes_then_removes_what_is_its_own() {
    let mut t = Twin::new();
    let p = plan("1000");
    t.apply(&p).unwrap();
    t.store(&p).remove().unwrap();
    let (review, d) = t.destroy_as_planned(&p);
    let probes = review
        .changes
        .iter()
        .filter(|s| matches!(s, Step::LoadProgram { pin, .. } if pin.as_str().ends_with("~probe")))
        .count();
    assert_eq!(probes, 2, "{:?}", review.changes);
    assert_eq!(d, Destroyed::Freed);
    // Without a record the pin directory is not known to be ours: it stays.
    assert_eq!(t.fake.pins(), Vec::<String>::new());
    assert_eq!(t.fake.ids(), (vec![], vec![]));
}

#[test]
fn a_record_less_apply_adopts_exactly_this_deployment_and_refuses_another() {
    let mut t = Twin::new();
    let p = plan("1000");
    t.apply(&p).unwrap();
    let ids = t.fake.ids();
    // The record is lost (a new /run): apply probes, adopts, changes nothing.
    t.store(&p).remove().unwrap();
    let review = t.apply_as_planned(&p);
    assert_eq!(review.decision, DecisionKind::Adopt, "{review:?}");
    assert_eq!(t.fake.ids(), ids, "the running programs were replaced");
    assert!(read_record(&t.store(&p)).unwrap().is_some(), "not recorded");
    // Recorded now: the next apply has nothing to do.
    assert_eq!(t.plan_apply(&p).decision, DecisionKind::Nothing);
    // Another deny policy at the same pins is not this manifest's
    // deployment: refused, and nothing changes.
    t.store(&p).remove().unwrap();
    let other = plan("2000");
    let before = t.fake.ids();
    let err = t.apply(&other).unwrap_err();
    assert!(
        format!("{err:#}").contains("nothing was adopted"),
        "{err:#}"
    );
    assert_eq!(t.fake.ids(), before);
}

#[test]
fn a_failure_at_any_step_of_a_replace_restores_the_old_deployment() {
    let mut t = Twin::new();
    let p = plan("1000");
    t.apply(&p).unwrap();
    let before = t.state();
    t.edit_redir("bb02");
    let review = t.plan_apply(&p);
    assert_eq!(review.decision, DecisionKind::Replace);
    // Every step up to the point of no return (the unpins of the old
    // objects come after it and are finished, not undone).
    let steps: Vec<String> = review
        .changes
        .iter()
        .filter(|s| !matches!(s, Step::UnpinProgram { pin, .. } if pin.as_str().ends_with("~old")))
        .filter(|s| !matches!(s, Step::UnpinMap { pin, .. } if pin.as_str().ends_with("~old")))
        .map(Step::summary)
        .collect();
    assert!(steps.len() >= 9, "{steps:?}");
    for summary in &steps {
        let mut fake = std::mem::take(&mut t.fake);
        let mut faults = Faults {
            inner: &mut fake,
            fail_step: Some(summary.clone()),
            die_at: None,
            die: || panic!("no kill here"),
        };
        let out = t.apply_with(&p, &mut faults);
        t.fake = fake;
        let e = format!("{:#}", out.expect_err(summary));
        assert!(e.contains("failed on purpose"), "{summary}: {e}");
        assert!(
            e.contains("the previous deployment still runs"),
            "{summary}: {e}"
        );
        assert!(e.contains("nothing is left behind"), "{summary}: {e}");
        assert_eq!(t.state(), before, "{summary}");
    }
    t.apply_as_planned(&p);
    assert_eq!(t.plan_apply(&p).decision, DecisionKind::Nothing);
}

fn killed() -> ! {
    panic!("killed")
}

#[test]
fn a_kill_before_or_after_any_step_is_recovered_by_the_next_apply() {
    let base = {
        let mut t = Twin::new();
        t.apply(&plan("1000")).unwrap();
        t
    };
    let p = plan("1000");
    let mut probe = Twin {
        fake: base.fake.clone(),
        state: tempfile::tempdir().unwrap(),
        redir: base.redir.clone(),
        deny: base.deny,
    };
    copy_state(&base, &probe);
    probe.edit_redir("bb02");
    let n = probe.plan_apply(&p).changes.len();
    for moment in [Moment::Before, Moment::After] {
        for k in 1..=n {
            let mut t = Twin {
                fake: base.fake.clone(),
                state: tempfile::tempdir().unwrap(),
                redir: base.redir.clone(),
                deny: base.deny,
            };
            copy_state(&base, &t);
            t.edit_redir("bb02");
            let mut fake = std::mem::take(&mut t.fake);
            let mut faults = Faults {
                inner: &mut fake,
                fail_step: None,
                die_at: Some((moment, k)),
                die: killed,
            };
            let died = catch_unwind(AssertUnwindSafe(|| t.apply_with(&p, &mut faults)));
            t.fake = fake;
            assert!(died.is_err(), "{moment:?} {k}: not killed");
            // The next apply ends the killed run and finishes the change,
            // running what its plan showed.
            let review = t.apply_as_planned(&p);
            assert_ne!(review.decision, DecisionKind::Nothing, "{moment:?} {k}");
            assert_eq!(
                t.plan_apply(&p).decision,
                DecisionKind::Nothing,
                "{moment:?} {k}"
            );
            t.destroy(&p).unwrap();
            assert!(t.fake.is_empty(), "{moment:?} {k}: {:?}", t.fake.pins());
        }
    }
}

/// The record of one twin, copied to another's state directory.
fn copy_state(from: &Twin, to: &Twin) {
    for e in std::fs::read_dir(from.state.path()).unwrap().flatten() {
        std::fs::copy(e.path(), to.state.path().join(e.file_name())).unwrap();
    }
}

/// A kernel whose cgroup attach takes effect and then reports a failure
/// (a bpftool that timed out after the kernel did the work); with `stuck`,
/// the detach that would undo it fails too.
struct LateFailure<'f> {
    fake: &'f mut Fake,
    stuck: bool,
}

impl Kernel for LateFailure<'_> {
    fn sockets(&mut self, c: &[u64]) -> anyhow::Result<Vec<crate::kernel::look::sockets::Socket>> {
        self.fake.sockets(c)
    }
    fn observe(&mut self, q: &crate::kernel::look::observe::Query) -> anyhow::Result<Observed> {
        self.fake.observe(q)
    }
    fn map_id(&mut self, pin: &str, map: &str) -> anyhow::Result<u32> {
        self.fake.map_id(pin, map)
    }
    fn execute(&mut self, at: At, step: &Step, argv: &[String]) -> Result<Ran, StepError> {
        let cgroup = |s: &Step| matches!(s, Step::Attach(a) | Step::Detach(a) if matches!(a.point, crate::plan::step::AttachPoint::Cgroup { .. }));
        if self.stuck && matches!(step, Step::Detach(_)) && cgroup(step) {
            return Err(StepError {
                exit: Some(255),
                error: anyhow::anyhow!("detach failed"),
            });
        }
        let ran = self.fake.execute(at, step, argv)?;
        if matches!(step, Step::Attach(_)) && cgroup(step) {
            return Err(StepError {
                exit: None,
                error: anyhow::anyhow!("did not finish within 300s and was killed"),
            });
        }
        Ok(ran)
    }
    fn batch(&mut self, at: At, steps: &[&Step], lines: &BatchLines) -> BatchEnd {
        self.fake.batch(at, steps, lines)
    }
}

#[test]
fn a_step_that_took_effect_before_it_failed_is_undone_and_what_is_left_is_said() {
    let mut t = Twin::new();
    let p = plan("1000");
    let mut fake = std::mem::take(&mut t.fake);
    let out = t.apply_with(
        &p,
        &mut LateFailure {
            fake: &mut fake,
            stuck: false,
        },
    );
    let e = format!("{:#}", out.unwrap_err());
    assert!(e.contains("nothing is left behind"), "{e}");
    assert!(fake.is_empty(), "{:?}", fake.pins());

    // When the undo fails as well, the message says what a look found.
    let out = t.apply_with(
        &p,
        &mut LateFailure {
            fake: &mut fake,
            stuck: true,
        },
    );
    let e = format!("{:#}", out.unwrap_err());
    assert!(!e.contains("nothing is left behind"), "{e}");
    assert!(e.contains("rollback failed too"), "{e}");
}

#[test]
fn a_map_whose_shape_changed_is_not_kept_and_the_plan_says_why() {
    let mut t = Twin::new();
    let p = plan("1000");
    t.apply(&p).unwrap();
    let socks = t
        .fake
        .pins()
        .into_iter()
        .find(|p| p.contains("/socks "))
        .unwrap();
    let deny = t
        .fake
        .pins()
        .into_iter()
        .find(|p| p.contains("/deny "))
        .unwrap();
    t.deny = shape(KernelMapType::Hash, 4, 1, 8);
    t.edit_redir("bb03");
    let review = t.apply_as_planned(&p);
    assert_eq!(review.decision, DecisionKind::Replace);
    assert!(
        review
            .notes
            .iter()
            .any(|n| n.contains("map `deny` is not kept (max_entries 4 -> 8)")),
        "{:?}",
        review.notes
    );
    let pins = t.fake.pins();
    assert!(pins.contains(&socks), "the sockhash is kept: {pins:?}");
    assert!(!pins.contains(&deny), "the policy map is new: {pins:?}");
    assert_eq!(t.plan_apply(&p).decision, DecisionKind::Nothing);
}

#[test]
fn a_destroy_without_a_record_leaves_what_another_deployment_claims() {
    let mut t = Twin::new();
    let a = plan("1000");
    t.apply(&a).unwrap();
    let pins = t.fake.pins();
    // Manifest B declares the very same pins (and objects) but has no
    // record: A's record claims them, so B's destroy removes nothing.
    let b = plan_at("/m/twin-b.toml", "1000");
    let (review, d) = t.destroy_as_planned(&b);
    assert_eq!(
        review.decision,
        DecisionKind::NothingToDestroy,
        "{:?}",
        review.changes
    );
    assert!(
        review
            .notes
            .iter()
            .any(|n| n.contains("it is the deployment of /m/twin.toml")),
        "{:?}",
        review.notes
    );
    assert_eq!(d, Destroyed::Nothing);
    assert_eq!(t.fake.pins(), pins);
    assert_eq!(t.plan_apply(&a).decision, DecisionKind::Nothing);
}
