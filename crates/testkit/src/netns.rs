//! Network-namespace topologies for end-to-end tests (root only).
//!
//! A [`Topology`] is a star: one *router* namespace with IPv4 and IPv6 forwarding on, and one
//! namespace per node joined to it by a veth pair. Each node's subnet has the router at `.1` /
//! `::1` and default routes (v4 and v6) through it, so every node reaches every other across
//! the router. Routing stays inside our own router namespace: the host's netns, sysctls and
//! iptables are never touched (the Docker engine may set the host's FORWARD policy to DROP,
//! which a host-side bridge would trip over).
//!
//! ```text
//!   ue (10.10.1.2) ──veth── router ──veth── home (10.10.4.2, 10.10.4.3 …)
//!                             │  └──veth── dns
//!                             └──veth── visited
//! ```
//!
//! Names: namespaces are `<tag>-<pid>-<seq>-<node>` (tag and node: lowercase letters, digits,
//! `_`), so tests in parallel processes (nextest) or threads never collide. Inside a node the
//! veth end is [`NODE_IFACE`] (`eth0`); on the router it is `r-<node>` (so node names have at
//! most 13 characters: interface names are limited to 15). IPv6 duplicate address detection is
//! off (`accept_dad=0` and `nodad`), so v6 addresses work at once.
//!
//! Processes: [`Topology::spawn`] runs a program in a node (through `ip netns exec`, which
//! `exec`s it, so the child's pid is the program's) and returns an [`NsChild`] that is stopped
//! (SIGTERM, then SIGKILL) on drop. [`Topology::run`] is for one-shot commands,
//! [`Topology::enter`] runs a Rust closure on a thread that joined a node's namespace (sockets
//! created there stay in it), [`Topology::capture`] records a pcap with tcpdump (or tshark),
//! and [`Topology::ping`] pings once (iputils or busybox).
//!
//! Drop kills every process still inside the topology's namespaces (`ip netns pids`) and then
//! deletes the namespaces — also when the test panics (unwinding runs Drop). A run killed by a
//! signal leaves them behind: [`cleanup_stale`] (called by [`Topology::new`] for its tag) removes
//! namespaces whose creating pid is gone.

use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The name of a node's veth end inside its namespace.
pub const NODE_IFACE: &str = "eth0";

/// The namespace name of a topology's router.
const ROUTER: &str = "router";

/// An interface address with its prefix length, e.g. `10.10.1.2/24` or `fd00:10:1::2/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `addr/prefix`; panics with the text on malformed input (test code).
    pub fn parse(s: &str) -> IpNet {
        let (a, p) = s
            .split_once('/')
            .unwrap_or_else(|| panic!("{s:?}: expected addr/prefix"));
        let addr: IpAddr = a.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let prefix: u8 = p.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let max = if addr.is_ipv4() { 32 } else { 128 };
        assert!(prefix <= max, "{s:?}: prefix longer than {max}");
        IpNet { addr, prefix }
    }

    /// The first host address of the subnet (network + 1): the router's address there.
    pub fn gateway(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from((u32::from(a) & mask) + 1))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from((u128::from(a) & mask) + 1))
            }
        }
    }

    /// The same subnet with the gateway address (`10.10.1.1/24`).
    pub fn gateway_net(&self) -> IpNet {
        IpNet {
            addr: self.gateway(),
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One node of a topology.
#[derive(Clone, Debug)]
pub struct Node {
    /// The short name given to [`Topology::add_node`].
    pub name: String,
    /// The namespace name (`ip netns exec <ns> ...`).
    pub ns: String,
    /// The veth end on the router side (`r-<name>`).
    pub router_iface: String,
    /// Every address of the node's veth, the first v4 and first v6 being the primary ones.
    pub addrs: Vec<IpNet>,
}

impl Node {
    /// The node's first IPv4 address.
    pub fn v4(&self) -> Ipv4Addr {
        self.addrs
            .iter()
            .find_map(|n| match n.addr {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .unwrap_or_else(|| panic!("node {} has no IPv4 address", self.name))
    }

    /// The node's first IPv6 address.
    pub fn v6(&self) -> Ipv6Addr {
        self.addrs
            .iter()
            .find_map(|n| match n.addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .unwrap_or_else(|| panic!("node {} has no IPv6 address", self.name))
    }
}

/// A router namespace and the node namespaces around it; all deleted on drop.
pub struct Topology {
    prefix: String,
    router: String,
    nodes: Vec<Node>,
    dir: PathBuf,
    spawned: AtomicU32,
}

/// The `ip` binary's path.
fn ip_bin() -> &'static str {
    "ip"
}

/// Runs a command, panicking with its output when it fails.
fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip <args>` must succeed.
fn ip(args: &[&str]) -> Output {
    must(Command::new(ip_bin()).args(args))
}

/// `ip -n <ns> <args>` must succeed.
fn ip_in(ns: &str, args: &[&str]) -> Output {
    must(Command::new(ip_bin()).args(["-n", ns]).args(args))
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Writes sysctls inside a namespace (through `ip netns exec`, which is what makes
/// `/proc/sys/net` the namespace's own). `keys` are paths under `/proc/sys/`.
fn sysctl_in(ns: &str, keys: &[(&str, &str)]) {
    let script: String = keys
        .iter()
        .map(|(k, v)| format!("echo {v} > /proc/sys/{k} && "))
        .collect::<String>()
        + "true";
    must(Command::new(ip_bin()).args(["netns", "exec", ns, "sh", "-c", &script]));
}

/// Every namespace name `ip netns list` shows.
pub fn list_namespaces() -> Vec<String> {
    let out = Command::new(ip_bin())
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kills every process inside namespace `ns` (SIGKILL) and deletes it. Errors are ignored:
/// this is cleanup.
fn kill_and_delete(ns: &str) {
    for _ in 0..50 {
        let pids = Command::new(ip_bin())
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new(ip_bin())
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// The network-namespace inode of process `pid` (`/proc/<pid>/ns/net` reads `net:[<inode>]`).
pub fn net_inode_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let text = link.to_string_lossy();
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces named `<tag>-<pid>-…` (as [`Topology`] names them) whose pid is no
/// longer running, killing what still runs inside them: leftovers of a run that was killed
/// before its Drop ran. Namespaces of live processes (parallel tests) are left alone.
/// Returns the names removed.
pub fn cleanup_stale(tag: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let want = format!("{tag}-");
    for ns in list_namespaces() {
        let Some(rest) = ns.strip_prefix(&want) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        kill_and_delete(&ns);
        removed.push(ns);
    }
    removed
}

impl Topology {
    /// Creates the router namespace of a new topology (IPv4 and IPv6 forwarding on, `lo` up).
    /// `tag` is a short label (lowercase letters, digits, `_`), e.g. the test's name; stale
    /// namespaces of the same tag from a crashed run are removed first.
    pub fn new(tag: &str) -> Topology {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        assert!(
            valid_label(tag),
            "tag {tag:?}: use lowercase letters, digits and _"
        );
        cleanup_stale(tag);
        let prefix = format!(
            "{tag}-{}-{}-",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let router = format!("{prefix}{ROUTER}");
        let topo = Topology {
            prefix,
            router: router.clone(),
            nodes: Vec::new(),
            dir: crate::scratch_dir(&format!("netns-{tag}")),
            spawned: AtomicU32::new(0),
        };
        topo.create_ns(&router);
        sysctl_in(
            &router,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        );
        topo
    }

    /// Adds a namespace, `lo` up, DAD off. Callers record the name (router, or a node pushed
    /// first) before calling, so Drop deletes the namespace even if a step here panics.
    fn create_ns(&self, ns: &str) {
        ip(&["netns", "add", ns]);
        ip_in(ns, &["link", "set", "lo", "up"]);
        sysctl_in(
            ns,
            &[
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        );
    }

    /// The router namespace's name.
    pub fn router_ns(&self) -> &str {
        &self.router
    }

    /// The scratch directory of this topology (spawned programs' logs, captures).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every namespace this topology created (router first).
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.router.clone())
            .chain(self.nodes.iter().map(|n| n.ns.clone()))
            .collect()
    }

    /// Adds node `name` (≤ 13 characters: lowercase letters, digits, `_`) with addresses `v4`
    /// (e.g. `"10.10.1.2/24"`) and `v6` (e.g. `"fd00:10:1::2/64"`) on its `eth0`, a veth to
    /// the router, whose end gets the subnets' first addresses (`10.10.1.1`, `fd00:10:1::1`);
    /// the node's default routes (v4, v6) point there.
    pub fn add_node(&mut self, name: &str, v4: &str, v6: &str) -> &Node {
        assert!(
            valid_label(name) && name.len() <= 13,
            "node name {name:?}: at most 13 of lowercase letters, digits and _"
        );
        assert!(
            self.nodes.iter().all(|n| n.name != name) && name != ROUTER,
            "node {name:?} exists"
        );
        let v4 = IpNet::parse(v4);
        let v6 = IpNet::parse(v6);
        assert!(v4.addr.is_ipv4() && v6.addr.is_ipv6(), "v4 then v6");
        let ns = format!("{}{name}", self.prefix);
        let router_iface = format!("r-{name}");
        // Record the node first: Drop then deletes its namespace whatever fails below.
        self.nodes.push(Node {
            name: name.to_string(),
            ns: ns.clone(),
            router_iface: router_iface.clone(),
            addrs: Vec::new(),
        });
        self.create_ns(&ns);
        // Both ends are created directly in their namespaces: no name ever exists on the host.
        ip_in(
            &self.router,
            &[
                "link",
                "add",
                &router_iface,
                "type",
                "veth",
                "peer",
                "name",
                NODE_IFACE,
                "netns",
                &ns,
            ],
        );
        ip_in(&self.router, &["link", "set", &router_iface, "up"]);
        ip_in(&ns, &["link", "set", NODE_IFACE, "up"]);
        self.add_address(name, &v4.to_string());
        self.add_address(name, &v6.to_string());
        ip_in(
            &ns,
            &[
                "-4",
                "route",
                "add",
                "default",
                "via",
                &v4.gateway().to_string(),
            ],
        );
        ip_in(
            &ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &v6.gateway().to_string(),
            ],
        );
        self.node(name)
    }

    /// Adds another address (`"10.10.3.3/24"`, `"fd00:10:3::3/64"`) to node `name`'s veth,
    /// e.g. for a second daemon in the same namespace. When the subnet is new to this node,
    /// the router's end of the veth gets the subnet's first address too, so it routes there.
    pub fn add_address(&mut self, name: &str, cidr: &str) {
        let net = IpNet::parse(cidr);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?}"));
        let gw = net.gateway_net();
        let subnet_known = node
            .addrs
            .iter()
            .any(|a| a.gateway_net() == gw && a.addr.is_ipv4() == net.addr.is_ipv4());
        let mut args = vec!["addr", "add"];
        let text = net.to_string();
        args.push(&text);
        args.extend(["dev", NODE_IFACE]);
        if net.addr.is_ipv6() {
            args.push("nodad");
        }
        ip_in(&node.ns, &args);
        node.addrs.push(net);
        if !subnet_known {
            let gw_text = gw.to_string();
            let mut args = vec!["addr", "add", &gw_text, "dev", &node.router_iface];
            if net.addr.is_ipv6() {
                args.push("nodad");
            }
            ip_in(&self.router, &args);
        }
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?}"))
    }

    /// The namespace of node `name`, or of the router for `"router"`.
    pub fn ns(&self, name: &str) -> &str {
        if name == ROUTER {
            &self.router
        } else {
            &self.node(name).ns
        }
    }

    /// The command prefix that runs a program in node `name`: `["ip", "netns", "exec", ns]`.
    pub fn exec_prefix(&self, name: &str) -> Vec<String> {
        vec![
            ip_bin().to_string(),
            "netns".to_string(),
            "exec".to_string(),
            self.ns(name).to_string(),
        ]
    }

    /// A `Command` for `program` inside node `name` (`ip netns exec <ns> <program>`); add
    /// arguments and stdio to it, then `spawn` and wrap it in [`NsChild::new`].
    pub fn command(&self, name: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(ip_bin());
        c.args(["netns", "exec", self.ns(name)]).arg(program);
        c
    }

    /// Runs `cmd` (program, arguments, environment and working directory are taken from it)
    /// inside node `name`, stdin from /dev/null and stdout+stderr into a log file under
    /// [`Topology::dir`] ([`NsChild::log`]). The process is stopped when the handle drops.
    pub fn spawn(&self, name: &str, cmd: &Command) -> NsChild {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let prog = Path::new(cmd.get_program())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = self.dir.join(format!("{name}-{n}-{prog}.log"));
        let mut c = self.command(name, cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        let out = std::fs::File::create(&log).expect("create the log file");
        let err = out.try_clone().expect("clone the log file handle");
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {name}: {e}"));
        // Return only once the process has joined the namespace (`ip` setns()es, then execs).
        let want = self.ns_inode(name);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if net_inode_of(child.id()) == Some(want) || child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        NsChild {
            child,
            log: Some(log),
            what: format!("{name}: {cmd:?}"),
        }
    }

    /// The inode of node `name`'s network namespace (as in `/proc/<pid>/ns/net`).
    pub fn ns_inode(&self, name: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let path = format!("/run/netns/{}", self.ns(name));
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .ino()
    }

    /// Runs `args[0]` with `args[1..]` inside node `name` to completion and returns its output
    /// (whatever its exit status).
    pub fn run(&self, name: &str, args: &[&str]) -> Output {
        let (prog, rest) = args.split_first().expect("a program to run");
        self.command(name, prog)
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {args:?} in {name}: {e}"))
    }

    /// Like [`Topology::run`] but panics, with the output, unless the command succeeds.
    pub fn run_ok(&self, name: &str, args: &[&str]) -> Output {
        let out = self.run(name, args);
        assert!(
            out.status.success(),
            "{args:?} in {name} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `f` on a new thread that joined node `name`'s network namespace (setns), and
    /// returns its result. Sockets created there stay in that namespace after `f` returns, so
    /// this is how a test binds a listener "inside" a node.
    pub fn enter<T, F>(&self, name: &str, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let path = format!("/run/netns/{}", self.ns(name));
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Pings `dst` once from node `name` (`ping`, or busybox's where iputils is missing;
    /// both take v4 and v6 literals) and returns the output.
    pub fn ping(&self, name: &str, dst: &str) -> Output {
        if crate::which("ping").is_some() {
            self.run(name, &["ping", "-c1", "-W", "3", dst])
        } else {
            self.run(name, &["busybox", "ping", "-c1", "-W", "3", dst])
        }
    }

    /// Starts a capture in node `name` on `iface` (`"any"` for all of them) into the pcap
    /// file `path`, and returns once it is capturing: tcpdump (`-U`, packet-buffered), or
    /// tshark (`-F pcap`) where tcpdump is missing. [`Capture::stop`] (or drop) ends it so
    /// the file is complete. With `any` the link type is Linux cooked capture (SLL/SLL2).
    pub fn capture(&self, name: &str, iface: &str, path: &Path) -> Capture {
        let tcpdump = crate::which("tcpdump").is_some();
        let (mut cmd, ready) = if tcpdump {
            let mut c = self.command(name, "tcpdump");
            // -Z root: Debian's tcpdump otherwise drops to user tcpdump, which cannot write
            // into a root-owned scratch directory. --immediate-mode: without it libpcap
            // (TPACKET_V3) hands packets over in blocks retired up to 1 s later, and the
            // packets of a block still open when tcpdump is stopped never reach the file.
            // -B 16384 (KiB): in immediate mode libpcap's ring has a slot per packet sized by
            // the snapshot length (up to 64 KiB on loopback), so the default 2 MiB holds few
            // packets. With three Kamailio chains at once on 2 cores, captures in a busy
            // namespace lost a burst of packets from their middle (1 run in 5); with 16 MiB,
            // none in the runs since.
            c.args([
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-B",
                "16384",
                "-s",
                "0",
                "-Z",
                "root",
            ]);
            c.arg("-w");
            (c, "listening on")
        } else {
            let mut c = self.command(name, "tshark");
            c.args(["-i", iface, "-n", "-q", "-F", "pcap", "-w"]);
            (c, "Capturing on")
        };
        let mut child = cmd
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn a capture in {name}: {e}"));
        // The tool reports on stderr once its socket is bound; until then packets would be
        // missed. Read stderr on a thread so a silent tool cannot hang the test.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut told = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                seen.push_str(&line);
                seen.push('\n');
                if !told && line.contains(ready) {
                    told = true;
                    let _ = tx.send(seen.clone());
                }
            }
            if !told {
                let _ = tx.send(seen);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if !first.contains(ready) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the capture in {name} did not start: {first}");
        }
        Capture {
            child: Some(child),
            path: path.to_path_buf(),
            // dumpcap has no immediate mode: let its last buffer block (≤ 1 s) be retired.
            linger: Duration::from_millis(if tcpdump { 100 } else { 1200 }),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Nodes first (their processes, then the namespace), the router last.
        for node in self.nodes.iter().rev() {
            kill_and_delete(&node.ns);
        }
        kill_and_delete(&self.router);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A process running inside a namespace; stopped (SIGTERM, 2 s grace, SIGKILL) on drop.
pub struct NsChild {
    child: Child,
    log: Option<PathBuf>,
    what: String,
}

impl NsChild {
    /// Wraps a child spawned from [`Topology::command`].
    pub fn new(child: Child, what: &str) -> NsChild {
        NsChild {
            child,
            log: None,
            what: what.to_string(),
        }
    }

    /// The process id (the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Where stdout and stderr go, for processes started by [`Topology::spawn`].
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The log so far (empty when there is none).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `timeout` for the process to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` to the process (ignored if it has already been reaped).
    pub fn signal(&self, sig: Signal) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), sig);
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`; returns its exit status.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        self.signal(Signal::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return st;
        }
        let _ = self.child.kill();
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.what))
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(2));
    }
}

/// A running capture (tcpdump or tshark); [`Capture::stop`] ends it cleanly so the pcap is
/// complete.
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
    linger: Duration,
}

impl Capture {
    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the capture (SIGINT, as Ctrl-C: it flushes and closes the file), waits for it,
    /// and returns the pcap's path.
    pub fn stop(mut self) -> PathBuf {
        self.finish();
        self.path.clone()
    }

    fn finish(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // A short pause first: packets just sent may still be on their way in.
            std::thread::sleep(self.linger);
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}
