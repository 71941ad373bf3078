//! A kernel test's own world: a child cgroup v2 and a pin directory (the
//! library's `Sandbox`, shared with `bpfplan bench`), a state directory and a
//! build directory, all removed on drop, even on failure. Kernel tests run
//! one at a time (they share `lo`'s byte counters).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bpfplan::host::HostFacts;

static KERNEL: Mutex<()> = Mutex::new(());

pub struct Sandbox {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub tmp: tempfile::TempDir,
    pub manifest: PathBuf,
    /// Dropped after `bpfplan destroy` ran: removes what is left.
    _world: bpfplan::sandbox::Sandbox,
    _serial: MutexGuard<'static, ()>,
}

/// Why kernel tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["bpftool", "clang"] {
        if which::which(tool).is_err() {
            return Some(format!("`{tool}` not installed (run `make deps`)"));
        }
    }
    match HostFacts::read() {
        Ok(h) if h.cgroup2.is_some() => None,
        _ => Some("no cgroup v2 mount".into()),
    }
}

fn run_ok(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sandbox {
    /// A fresh sandbox for `manifest`, or `None` (with the reason printed)
    /// when this machine cannot run kernel tests and CI did not require them.
    pub fn new(name: &str, manifest: &str) -> Option<Sandbox> {
        let serial = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = missing_prerequisite() {
            if std::env::var("BPFPLAN_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
                panic!("BPFPLAN_REQUIRE_KERNEL=1 but kernel tests cannot run: {why}");
            }
            eprintln!("skipping kernel test {name}: {why}");
            return None;
        }
        let world =
            bpfplan::sandbox::Sandbox::create(&format!("bpfplan-test-{name}"), None, None).unwrap();
        Some(Sandbox {
            cgroup: world.cgroup.clone(),
            pin_dir: world.pin_dir.clone(),
            tmp: tempfile::tempdir().unwrap(),
            manifest: PathBuf::from(manifest),
            _world: world,
            _serial: serial,
        })
    }

    /// `--var cgroup=` (when the manifest declares it), `--var pin_dir=` and
    /// `--build-dir`, all pointing into this sandbox.
    pub fn vars(&self) -> Vec<String> {
        self.vars_for(&self.manifest)
    }

    /// `vars` for another manifest: only the variables it declares.
    pub fn vars_for(&self, manifest: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(manifest).unwrap_or_default();
        let mut v = Vec::new();
        if text.lines().any(|l| l.starts_with("cgroup = ")) {
            v.extend(["--var".into(), format!("cgroup={}", self.cgroup.display())]);
        }
        // Tests of the redirect itself raise the backpressure bound, so a
        // fast stream is not sent back to TCP the moment its receiver holds
        // more than its buffer (tests/live.rs tests the bound as shipped).
        if text.lines().any(|l| l.starts_with("max_queued = ")) {
            v.extend(["--var".into(), format!("max_queued={}", raised_bound())]);
        }
        v.extend([
            "--var".into(),
            format!("pin_dir={}", self.pin_dir.display()),
            "--build-dir".into(),
            self.tmp.path().join("build").display().to_string(),
        ]);
        v
    }

    /// A child cgroup of the sandbox's, removed with it.
    pub fn child_cgroup(&mut self, name: &str) -> PathBuf {
        self._world.child(name).unwrap()
    }

    /// `bpfplan status --format json` with `--var cgroup=CGROUP` and extra
    /// arguments: its exit code and report.
    pub fn status_of(&self, cgroup: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
        let var = format!("cgroup={}", cgroup.display());
        let mut args = vec!["--var", var.as_str()];
        args.extend_from_slice(extra);
        self.status(&args)
    }

    /// The plan bpfplan makes of this sandbox's manifest.
    pub fn plan(&self) -> bpfplan::plan::Plan {
        // The variables `vars` passes, as (name, value).
        let words = self.vars();
        let vars = words
            .iter()
            .zip(words.iter().skip(1))
            .filter(|(flag, _)| *flag == "--var")
            .filter_map(|(_, v)| v.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let target = bpfplan::cli::Target {
            manifest: self.manifest.clone(),
            vars,
            build_dir: Some(self.tmp.path().join("build")),
        };
        bpfplan::load_plan(&target).unwrap_or_else(|_| panic!("planning {:?}", self.manifest))
    }

    /// The state store bpfplan uses for this sandbox's deployment.
    pub fn store(&self) -> bpfplan::kernel::record::Store {
        bpfplan::kernel::record::Store::in_dir(&self.state_dir(), &self.plan()).unwrap()
    }

    /// Run bpfplan and insist on an exit code; returns stdout and stderr.
    pub fn expect_exit(&self, verb: &str, code: i32) -> (String, String) {
        let out = self.bpfplan(verb);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(code), "bpfplan {verb}:\n{o}{e}");
        (o, e)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// This sandbox's audit log (never the host's).
    pub fn audit_log(&self) -> PathBuf {
        self.tmp.path().join("log").join("audit.jsonl")
    }

    /// `bpfplan VERB MANIFEST` with this sandbox's variables.
    pub fn bpfplan_cmd(&self, verb: &str, manifest: &Path) -> Command {
        let mut c = crate::common::bpfplan();
        c.arg(verb)
            .arg(manifest)
            .args(self.vars())
            .env("BPFPLAN_STATE_DIR", self.state_dir())
            .env("BPFPLAN_AUDIT_LOG", self.audit_log());
        c
    }

    /// Run bpfplan with extra arguments (`--var K=V`, ...), insisting it succeeds.
    pub fn must_with(&self, verb: &str, extra: &[&str]) -> String {
        let out = self
            .bpfplan_cmd(verb, &self.manifest.clone())
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "bpfplan {verb} {extra:?} failed:\n{text}"
        );
        text
    }

    /// `bpfplan status --format json`: its exit code and report.
    pub fn status(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let out = self
            .bpfplan_cmd("status", &self.manifest.clone())
            .args(["--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, v)
    }

    /// A counter or gauge from a status report.
    pub fn gauge(report: &serde_json::Value, map: &str, name: &str) -> u64 {
        report["gauges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["map"] == map && g["name"] == name)
            .and_then(|g| g["value"].as_u64())
            .unwrap_or_else(|| panic!("no gauge {map}.{name} in {report}"))
    }

    pub fn bpfplan(&self, verb: &str) -> Output {
        self.bpfplan_cmd(verb, &self.manifest.clone())
            .output()
            .unwrap()
    }

    /// Run bpfplan and insist it succeeds.
    pub fn must(&self, verb: &str) -> String {
        let out = self.bpfplan(verb);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "bpfplan {verb} failed:\n{text}");
        text
    }

    /// bpfplan-traffic inside this sandbox's cgroup.
    pub fn traffic(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::common::traffic_bin());
        c.arg("--cgroup").arg(&self.cgroup).args(args);
        c
    }

    pub fn pin(&self, name: &str) -> String {
        self.pin_dir.join(name).display().to_string()
    }

    /// Files in the pin directory, sorted.
    pub fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.pin_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// (program name, attach type) attached to the sandbox cgroup, sorted.
    pub fn attachments(&self) -> Vec<(String, String)> {
        let v: serde_json::Value =
            bpftool_json(&["cgroup", "show", &self.cgroup.display().to_string()]);
        let mut out: Vec<(String, String)> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["name"].as_str().unwrap_or("").to_string(),
                    a["attach_type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Detach the sockops program from the sandbox cgroup by hand, as an
    /// operator might (drift).
    pub fn detach_sockops_by_hand(&self) {
        let out = Command::new("bpftool")
            .args(["cgroup", "detach"])
            .arg(&self.cgroup)
            .args(["sock_ops", "pinned", &self.pin("bpf_sockops")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Number of entries in a pinned map.
    pub fn map_len(&self, pin: &str) -> usize {
        let v: serde_json::Value = bpftool_json(&["map", "dump", "pinned", &self.pin(pin)]);
        v.as_array().map_or(0, Vec::len)
    }

    /// Assert nothing of ours is left in the kernel (freed objects may linger
    /// a moment: poll).
    pub fn assert_clean(&self, prog_ids: &[u64]) {
        assert_eq!(self.pins(), Vec::<String>::new(), "pins left behind");
        assert_eq!(
            self.attachments(),
            Vec::<(String, String)>::new(),
            "attachments left behind"
        );
        self.assert_freed(prog_ids);
    }

    /// Assert the kernel has freed these programs (poll: freeing lags).
    pub fn assert_freed(&self, prog_ids: &[u64]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in prog_ids {
            while prog_alive(*id) {
                assert!(Instant::now() < deadline, "program {id} still loaded");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Ids of the programs pinned in the sandbox.
    pub fn prog_ids(&self) -> Vec<u64> {
        self.ids_of("prog")
    }

    /// The ids of the maps pinned in the pin directory, in pin order.
    pub fn map_ids(&self) -> Vec<u64> {
        self.ids_of("map")
    }

    fn ids_of(&self, kind: &str) -> Vec<u64> {
        self.pins()
            .iter()
            .filter_map(|p| {
                let out = Command::new("bpftool")
                    .args(["-j", kind, "show", "pinned", &self.pin(p)])
                    .output()
                    .ok()?;
                if !out.status.success() {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                v["id"].as_u64()
            })
            .collect()
    }
}

pub fn prog_alive(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `cgroup show` prints nothing for a cgroup without programs.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Wait for the next JSON line of a child's stdout.
pub fn next_event(lines: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    let n = lines.read_line(&mut line).unwrap();
    assert!(n > 0, "the traffic process ended early");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Spawn with piped stdin/stdout; returns the child and a line reader.
pub fn spawn_piped(mut cmd: Command) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout))
}

/// Run a traffic command to completion and parse its last JSON line.
pub fn report(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "traffic failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // First the tool's own teardown; `_world` then removes whatever it
        // missed.
        let _ = self.bpfplan("destroy");
    }
}

/// A network namespace of our own joined to this host by a veth pair,
/// addressed from 198.18.0.0/15 (the benchmarking range): the host end is
/// 198.18.0.1/30, the namespace end 198.18.0.2/30. Removed on drop.
pub struct Netns {
    pub name: String,
    /// The veth end on this host's side.
    pub host_if: String,
}

impl Netns {
    pub const HOST_IP: &'static str = "198.18.0.1";
    pub const PEER_IP: &'static str = "198.18.0.2";

    pub fn new(tag: &str) -> Netns {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("bpfplan-{tag}-{pid}"),
            host_if: format!("bph{}", pid % 1_000_000),
        };
        let peer_if = format!("bpn{}", pid % 1_000_000);
        run_ok(&["ip", "netns", "add", &ns.name]);
        run_ok(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        run_ok(&["ip", "link", "set", &peer_if, "netns", &ns.name]);
        run_ok(&["ip", "addr", "add", "198.18.0.1/30", "dev", &ns.host_if]);
        run_ok(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec_ok(&["ip", "addr", "add", "198.18.0.2/30", "dev", &peer_if]);
        ns.exec_ok(&["ip", "link", "set", &peer_if, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec_ok(&self, argv: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run_ok(&full);
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it ours.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A traffic report whose bytes arrived intact and stayed off `lo` (under
/// 1% of the payload): the bypass carried them.
#[track_caller]
pub fn assert_redirected(r: &serde_json::Value) {
    assert_eq!(r["intact"], true, "{r}");
    let (lo, payload) = (
        r["lo_bytes"].as_u64().unwrap(),
        r["payload_bytes"].as_u64().unwrap(),
    );
    assert!(
        lo * 100 < payload,
        "{lo} bytes crossed lo for {payload} of payload: {r}"
    );
}

/// A traffic report whose bytes arrived intact over TCP/IP (more bytes on
/// `lo` than the payload: headers and ACKs on top).
#[track_caller]
pub fn assert_not_redirected(r: &serde_json::Value) {
    assert_eq!(r["intact"], true, "{r}");
    let (lo, payload) = (
        r["lo_bytes"].as_u64().unwrap(),
        r["payload_bytes"].as_u64().unwrap(),
    );
    assert!(
        lo > payload,
        "only {lo} bytes crossed lo for {payload} of payload: {r}"
    );
}

/// The backpressure bound the redirect tests run with: 256 MiB per
/// receiver, or an eighth of the host's TCP memory before pressure
/// (`tcp_mem`'s first value) when that is less. Four echo connections hold
/// up to eight receivers' bounds at once; on a small machine (the 2 GiB
/// guest of tests/vm: 87 MB before pressure) 256 MiB each would put TCP
/// under pressure and fail sends with ENOMEM, the very harm the bound is
/// there to prevent.
pub fn raised_bound() -> u64 {
    const PAGE: u64 = 4096;
    let before_pressure = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(u64::MAX, |pages| pages * PAGE);
    (256u64 << 20).min(before_pressure / 8)
}
