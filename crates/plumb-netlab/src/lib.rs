//! A network on one machine, for tests: hosts are network namespaces, links are
//! veth pairs with an MTU, each host can carry nftables rules, routes and its own
//! sysctls, and everything a [`Lab`] created is torn down when it drops — also when
//! the test panics. Processes started in a host are killed by PID; a namespace's
//! remaining processes are found with `ip netns pids` and killed before it is
//! deleted. A test process killed outright (SIGKILL, a CI timeout) runs no
//! teardown: its lab processes get SIGKILL from the kernel (`setpriv
//! --pdeathsig`), and the next [`Lab::new`] on the machine deletes every lab
//! namespace, `/etc/netns` entry and temporary directory whose owning process no
//! longer exists.
//!
//! Traffic stays between the lab's own namespaces: their addresses are assigned
//! here, and no host has a link to the machine's own network.
//!
//! ```no_run
//! use plumb_netlab::Lab;
//! use std::time::Duration;
//! let Some(lab) = Lab::new("example") else { return }; // printed why it skipped
//! let client = lab.host("client");
//! let server = lab.host("server");
//! lab.link(&client, "10.9.0.1/24", &server, "10.9.0.2/24", 1500);
//! server.nft("table inet t {\n chain in { type filter hook input priority 0; tcp dport 9 drop; }\n}");
//! let ran = client.run(&["ping", "-c", "1", "10.9.0.2"], Duration::from_secs(5));
//! assert!(ran.ok(), "{ran}");
//! ```
//!
//! Needs root, `ip` and `ss` (iproute2), `nft` (nftables), `curl` and `python3`;
//! [`Lab::new`] returns `None` after printing `SKIPPED: ...` when one is missing.

#![warn(missing_docs)]
#![allow(
    clippy::disallowed_types,
    clippy::expect_used,
    reason = "a test harness: wall-clock deadlines bound waits on other processes, and a \
              panic (with what failed) is how it reports"
)]

pub mod peers;

use std::cell::RefCell;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every lab namespace is named `plab-<pid>-<n>-<host>`: the owning process's id
/// tells a later run whether the namespace is stale.
const PREFIX: &str = "plab";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A set of hosts and links, torn down on drop.
#[derive(Debug)]
pub struct Lab {
    scenario: String,
    id: String,
    dir: PathBuf,
    namespaces: RefCell<Vec<String>>,
    children: RefCell<Vec<(String, Child)>>,
}

/// A process started with [`Host::spawn`]; the lab kills it on drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pid(pub u32);

/// One host of a lab: a network namespace.
#[derive(Debug, Clone)]
pub struct Host<'l> {
    lab: &'l Lab,
    name: String,
    ns: String,
}

/// How a command run with [`Host::run`] ended.
#[derive(Debug)]
pub struct Ran {
    /// The exit code; `None` when killed (also on timeout).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// From start to exit (or to the kill).
    pub elapsed: Duration,
    /// Whether it was killed for running past its timeout.
    pub timed_out: bool,
}

impl Ran {
    /// Exited 0 in time.
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}{} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(tool);
            f.is_file()
        })
    })
}

/// Runs a command to completion; panics with its output if it fails.
fn must(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kill -SIGNAL PID` through the shell's builtin (no procps needed).
fn kill(signal: &str, pid: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "kill -\"$0\" \"$1\"", signal, pid]);
    c
}

/// Kills every process left in `ns` (by PID) and deletes it.
fn teardown_namespace(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            let _ = kill("KILL", pid).stderr(Stdio::null()).status();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}

/// The names in `dir` of labs (`plab-<pid>-...`) whose owning process is gone.
/// (A reused PID hides a stale lab until that process ends too.)
fn stale_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            let mut parts = name.split('-');
            parts.next() == Some(PREFIX)
                && parts
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

/// Deletes what labs of dead test processes left: namespaces (and what still
/// runs in them), their /etc/netns files, their temporary directories.
fn sweep_stale() {
    for name in stale_in(Path::new("/run/netns")) {
        eprintln!("netlab: deleting stale namespace {name} (its test process is gone)");
        teardown_namespace(&name);
    }
    for name in stale_in(Path::new("/etc/netns")) {
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
    }
    let tmp = std::env::temp_dir();
    for name in stale_in(&tmp) {
        let _ = fs::remove_dir_all(tmp.join(name));
    }
}

impl Lab {
    /// A new, empty lab for the test `scenario`, or `None` (after printing
    /// `SKIPPED: scenario: reason`) when this machine cannot run one.
    pub fn new(scenario: &str) -> Option<Lab> {
        let skip = |why: &str| {
            eprintln!("SKIPPED: {scenario}: {why}");
            None
        };
        if !is_root() {
            return skip("needs root to create network namespaces");
        }
        for (tool, package) in [
            ("ip", "iproute2"),
            ("ss", "iproute2"),
            ("nft", "nftables"),
            ("curl", "curl"),
        ] {
            if !on_path(tool) {
                return skip(&format!(
                    "{tool} is not installed (scripts/test installs {package} as root)"
                ));
            }
        }
        if !on_path("python3") {
            return skip("python3 is not installed (the lab's peers are Python programs)");
        }
        sweep_stale();
        let id = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        if let Err(e) = fs::create_dir_all(&dir) {
            return skip(&format!("cannot create {}: {e}", dir.display()));
        }
        Some(Lab {
            scenario: scenario.to_string(),
            id,
            dir,
            namespaces: RefCell::new(Vec::new()),
            children: RefCell::new(Vec::new()),
        })
    }

    /// A directory for the test's files (configs, logs), removed with the lab.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `text` to `name` in the lab's directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// A new host: a namespace with its loopback up. Its name appears in interface
    /// names of its links, so keep it short (up to 12 characters).
    pub fn host(&self, name: &str) -> Host<'_> {
        assert!(
            !name.is_empty() && name.len() <= 12 && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "host name {name:?}: 1 to 12 letters or digits"
        );
        let ns = format!("{}-{name}", self.id);
        must(
            Command::new("ip").args(["netns", "add", &ns]),
            &format!("create namespace {ns}"),
        );
        self.namespaces.borrow_mut().push(ns.clone());
        let host = Host {
            lab: self,
            name: name.to_string(),
            ns,
        };
        host.ip(&["link", "set", "lo", "up"]);
        host
    }

    /// A host that forwards IPv4 packets between its links.
    pub fn router(&self, name: &str) -> Host<'_> {
        let r = self.host(name);
        r.sysctl("net.ipv4.ip_forward", "1");
        r
    }

    /// Joins `a` and `b` with a veth pair of this MTU, addresses given with their
    /// prefix length (`"10.0.1.1/24"`), both ends up. The interface in `a` is named
    /// after `b` and the other way round (`to-b`), so a host has one link per peer.
    pub fn link(&self, a: &Host<'_>, a_addr: &str, b: &Host<'_>, b_addr: &str, mtu: u32) {
        let a_if = format!("to-{}", b.name);
        let b_if = format!("to-{}", a.name);
        let mtu = mtu.to_string();
        must(
            Command::new("ip").args([
                "link", "add", &a_if, "netns", &a.ns, "mtu", &mtu, "type", "veth", "peer", "name",
                &b_if, "netns", &b.ns, "mtu", &mtu,
            ]),
            &format!("link {}–{}", a.name, b.name),
        );
        for (h, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
            h.ip(&["addr", "add", addr, "dev", ifname]);
            h.ip(&["link", "set", ifname, "up"]);
        }
    }

    /// Sends `signal` (`"TERM"`, `"STOP"`, `"CONT"`, `"KILL"`...) to a process the
    /// lab started.
    pub fn signal(&self, pid: Pid, signal: &str) {
        must(
            &mut kill(signal, &pid.0.to_string()),
            &format!("kill -{signal} {}", pid.0),
        );
    }

    /// Waits up to `within` for a process the lab started to exit; its exit code,
    /// or `None` if it is still running (or was killed by a signal).
    pub fn wait(&self, pid: Pid, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut children = self.children.borrow_mut();
                let child = children
                    .iter_mut()
                    .find(|(_, c)| c.id() == pid.0)
                    .map(|(_, c)| c)
                    .unwrap_or_else(|| panic!("process {} was not started by this lab", pid.0));
                if let Ok(Some(status)) = child.try_wait() {
                    return status.code();
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What a process the lab started has printed so far (stdout and stderr).
    pub fn log(&self, pid: Pid) -> String {
        fs::read_to_string(self.dir.join(format!("{}.log", pid.0))).unwrap_or_default()
    }

    fn dump_logs(&self) {
        for (label, child) in self.children.borrow().iter() {
            let log = self.log(Pid(child.id()));
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- {} / {label} (pid {}), last {} lines:",
                self.scenario,
                child.id(),
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for (_, child) in self.children.borrow_mut().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.borrow().iter().rev() {
            teardown_namespace(ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Host<'_> {
    /// The host's name in the lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// A command that runs `program` inside this host. Proxy variables are
    /// removed: a proxy is not reachable from a lab, and lab traffic must not try.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        for var in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// Like [`Host::command`], for the processes the lab starts: when util-linux's
    /// `setpriv` is there, the process gets SIGKILL if the test process dies
    /// without running the lab's teardown (killed by CI, say).
    fn child_command(&self, program: &str) -> Command {
        if on_path("setpriv") {
            let mut c = self.command("setpriv");
            c.args(["--pdeathsig", "KILL", program]);
            c
        } else {
            self.command(program)
        }
    }

    /// Runs `ip ARGS` on this host; panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        must(
            Command::new("ip").args(["-n", &self.ns]).args(args),
            &format!("{}: ip {}", self.name, args.join(" ")),
        );
    }

    /// Adds a route: `route("default", "10.0.1.2")`, `route("10.0.2.0/24", ...)`.
    pub fn route(&self, dest: &str, via: &str) {
        self.ip(&["route", "add", dest, "via", via]);
    }

    /// Sets a sysctl in this host's namespace (the per-namespace ones: net.ipv4.*,
    /// net.core.somaxconn, net.netfilter.* once conntrack is loaded...).
    pub fn sysctl(&self, key: &str, value: &str) {
        // Written to /proc/sys from inside the namespace (no procps needed).
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        must(
            self.command("sh")
                .args(["-c", "printf '%s' \"$1\" > \"$0\"", &path, value]),
            &format!("{}: sysctl {key}={value}", self.name),
        );
    }

    /// Loads nftables rules (`nft -f -` syntax) into this host.
    pub fn nft(&self, rules: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .and_then(|()| stdin.write_all(b"\n"))
                .unwrap_or_else(|e| panic!("nft stdin: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        assert!(
            out.status.success(),
            "{}: nft refused the rules: {}\n{rules}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The host's `/etc/hosts`, as programs started in it see it (`ip netns exec`
    /// mounts `/etc/netns/<namespace>/hosts` over it): `localhost` and these lines.
    pub fn hosts_file(&self, lines: &str) {
        let dir = Path::new("/etc/netns").join(&self.ns);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let text = format!("127.0.0.1 localhost\n::1 localhost\n{lines}");
        fs::write(dir.join("hosts"), text).unwrap_or_else(|e| panic!("hosts file: {e}"));
    }

    /// Starts `args` in this host in the background, output to a log
    /// ([`Lab::log`]); killed when the lab drops. `label` names it in failure
    /// reports.
    pub fn spawn(&self, label: &str, args: &[&str]) -> Pid {
        let (program, rest) = args.split_first().expect("spawn: a program to run");
        // The log is named after the PID, known only after the spawn: write to a
        // temporary name, then rename (the open descriptor follows the file).
        let tmp = self
            .lab
            .dir
            .join(format!("spawn-{}.log", SEQ.fetch_add(1, Ordering::Relaxed)));
        let log = fs::File::create(&tmp).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        let err = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = self
            .child_command(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn {label}: {e}", self.name));
        let pid = Pid(child.id());
        let _ = fs::rename(&tmp, self.lab.dir.join(format!("{}.log", pid.0)));
        self.lab
            .children
            .borrow_mut()
            .push((format!("{}:{label}", self.name), child));
        pid
    }

    /// Starts one of [`peers`]' Python programs in this host with these arguments.
    pub fn python(&self, label: &str, program: &str, args: &[&str]) -> Pid {
        let mut all = vec!["python3", "-u", "-c", program];
        all.extend_from_slice(args);
        self.spawn(label, &all)
    }

    /// Runs `args` in this host to completion or for at most `timeout` (then kills
    /// it), collecting its output.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Ran {
        let (program, rest) = args.split_first().expect("run: a program to run");
        let started = Instant::now();
        let mut child = self
            .child_command(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: run {program}: {e}", self.name));
        // Each pipe is read on its own thread; the result comes back on a channel
        // so that a grandchild still holding the pipe cannot hold this up.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut s = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut s);
                }
                let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
            });
            rx
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = started + timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        let elapsed = started.elapsed();
        Ran {
            code: status.and_then(|s| s.code()),
            stdout: out.recv_timeout(Duration::from_secs(2)).unwrap_or_default(),
            stderr: err.recv_timeout(Duration::from_secs(2)).unwrap_or_default(),
            elapsed,
            timed_out,
        }
    }

    /// Waits until something in this host listens on TCP `port`; panics after
    /// `within`, with the logs of the lab's processes.
    pub fn wait_listening(&self, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        let filter = format!("sport = :{port}");
        loop {
            let out = self
                .command("ss")
                .args(["-Hltn", &filter])
                .stderr(Stdio::null())
                .output();
            if out.is_ok_and(|o| !o.stdout.is_empty()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: nothing listens on port {port} after {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
