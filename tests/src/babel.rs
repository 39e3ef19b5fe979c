//! Reference Babel routers (babeld, BIRD 2) run inside namespaces, kernel routing-table
//! helpers, and a continuous ICMP probe that measures outages.
//!
//! Everything a daemon writes (configuration, log, state, PID file, control socket) lives in
//! the [`Lab`] directory under a per-daemon name, so several daemons coexist. The daemons run
//! in the foreground, spawned through their [`Netns`], which stops them by PID when it is
//! dropped; [`Babeld`] and [`Bird`] also stop theirs when dropped.
//!
//! Versions this was written against (Debian 12): babeld 1.12.1 and BIRD 2.0.12.
//! - babeld announces IPv4 routes with an IPv6 (link-local) next hop ("v4-via-v6", RFC 9229)
//!   when the interface has no IPv4 address, and installs them as
//!   `10.0.0.0/24 via inet6 fe80::… dev X proto babel onlink`; with an IPv4 address on the
//!   interface it announces IPv4 next hops.
//! - BIRD 2.0.12 has no v4-via-v6: it needs an IPv4 address on its Babel interfaces to carry
//!   IPv4 routes (it logs `Missing IPv4 next hop address for X`) and ignores v4-via-v6 updates.
//! - babeld's `redistribute if X` matches main-table routes only: an IPv4 `/32` address (which
//!   has no main-table route) needs `redistribute local ip A/32`; IPv6 `/128` addresses do get
//!   a main-table route and are matched.
//! - babeld gives a newly learned route a smoothed metric of 32767 that halves every
//!   `smoothing-half-life` (4 s): with the default it takes ~40 s to move to a better route
//!   that appears late (a restored link). [`Babeld::start`] sets `smoothing-half-life 0`.
//! - babeld and BIRD keep a retracted prefix as an `unreachable` kernel route for a while;
//!   the route waits below only count usable (unicast) routes.
//! - babeld ignores an interface without an IPv6 link-local address ("Interface tun0 has no
//!   link-local address"), which is the case of tun/WireGuard interfaces: add one
//!   (`fe80::…/64`) first.
//! - The kernel here has no `dummy` module; [`add_stub_iface`] falls back to a veth pair.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::ops::Deref;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::lab::{log_tail, unique_name, Lab};
use crate::netns::Netns;

/// How long a daemon gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a daemon's log quoted in error messages.
const LOG_LINES: usize = 30;

static BIRD_IDS: AtomicU32 = AtomicU32::new(1);

pub(crate) fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .output();
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// The namespace a daemon runs in: borrowed from the test, or shared with the topology that
/// holds the driver ([`crate::babel_islands::BabelIslands`]'s gateways).
#[derive(Debug)]
enum NsRef<'a> {
    Borrowed(&'a Netns),
    Shared(Arc<Netns>),
}

impl Deref for NsRef<'_> {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        match self {
            Self::Borrowed(ns) => ns,
            Self::Shared(ns) => ns,
        }
    }
}

/// One daemon process in a namespace, what the [`Babeld`], [`Bird`] and [`IsthmusCp`]
/// drivers are built on (each dereferences to its `Daemon`): started in the background from a
/// configuration file, with stdout and stderr in a log file (the previous run's kept as
/// `LOG.old`), waited for until it answers, stopped (SIGTERM, then SIGKILL after 2 s) when
/// dropped.
#[derive(Debug)]
pub struct Daemon<'a> {
    ns: NsRef<'a>,
    pid: u32,
    /// `babeld r1`, `BIRD a`, `isthmus-cp g1a`: for messages.
    what: String,
    conf: PathBuf,
    /// The socket it answers on.
    sock: PathBuf,
    /// Its stdout and stderr.
    out: PathBuf,
    /// The log it writes itself, when that is another file (BIRD's).
    own_log: Option<PathBuf>,
}

impl<'a> Daemon<'a> {
    /// A daemon, not started yet: `what` names it in messages (`babeld r1`), `conf` is its
    /// configuration (quoted when it does not come up), `sock` the socket it answers on,
    /// `out` where its stdout and stderr go.
    fn new(ns: NsRef<'a>, what: String, conf: PathBuf, sock: PathBuf, out: PathBuf) -> Self {
        Self {
            ns,
            pid: 0,
            what,
            conf,
            sock,
            out,
            own_log: None,
        }
    }

    /// Starts `args` with the extra environment `envs` (after removing the socket, which a
    /// killed daemon leaves behind, and keeping the previous log as `LOG.old`), makes the
    /// driver `wrap` builds around it, and polls every 50 ms until the socket exists and
    /// `answers(&driver)`, at most [`START_TIMEOUT`]. Fails when the process exits first or
    /// time runs out, quoting its configuration and its log.
    fn start<T: Deref<Target = Daemon<'a>>>(
        mut self,
        args: &[&str],
        envs: &[(&str, &str)],
        wrap: impl FnOnce(Self) -> T,
        answers: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let _ = std::fs::remove_file(&self.sock);
        if self.out.exists() {
            let mut old = self.out.clone().into_os_string();
            old.push(".old");
            let _ = std::fs::rename(&self.out, old);
        }
        self.pid = self.ns.spawn_env(args, envs, &self.out)?;
        let driver = wrap(self);
        let d: &Daemon<'a> = &driver;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let failed = if !d.alive() {
                "exited at startup".to_owned()
            } else if d.sock.exists() && answers(&driver) {
                return Ok(driver);
            } else if Instant::now() > deadline {
                let sock = d.sock.display();
                format!("did not answer on {sock} within {START_TIMEOUT:?}")
            } else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            bail!(
                "{} in {} {failed}; config {}:\n{}\nlog:\n{}",
                d.what,
                d.ns.name(),
                d.conf.display(),
                std::fs::read_to_string(&d.conf).unwrap_or_default(),
                d.log_tail()
            );
        }
    }

    /// Polls `query` every 100 ms until `found` holds for what it returns, at most
    /// `timeout`; returns how long that took. On timeout the error says what it did not have
    /// (`missing`) and quotes the last answer and its log.
    fn wait_for<T: std::fmt::Debug>(
        &self,
        timeout: Duration,
        missing: &str,
        query: impl Fn() -> Result<T>,
        found: impl Fn(&T) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let r = query();
            if r.as_ref().is_ok_and(&found) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} in {} has {missing} after {timeout:?}; it says: {r:#?}\nlog:\n{}",
                    self.what,
                    self.ns.name(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its PID.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The namespace it runs in.
    #[must_use]
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Whether it is still running.
    #[must_use]
    pub fn alive(&self) -> bool {
        self.ns.alive(self.pid)
    }

    /// Path of its configuration file.
    #[must_use]
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// Path of its log (stdout and stderr).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.out
    }

    /// The last 30 lines of its log (of the one it writes itself, then of its stdout and
    /// stderr, where those differ).
    #[must_use]
    pub fn log_tail(&self) -> String {
        let out = log_tail(&self.out, LOG_LINES);
        match &self.own_log {
            Some(own) => format!("{}\n{out}", log_tail(own, LOG_LINES)),
            None => out,
        }
    }

    /// Stops it with SIGTERM (babeld and BIRD retract their routes and remove them from the
    /// kernel) and waits for it to exit (SIGKILL after 5 s).
    pub fn stop(&self) {
        self.ns.stop(self.pid, Duration::from_secs(5));
    }

    /// Kills it with SIGKILL (its kernel routes stay behind) and waits for it to exit (5 s
    /// at most).
    pub fn kill(&self) {
        send_signal(self.pid, "KILL");
        let _ = self.ns.wait_exit(self.pid, Duration::from_secs(5));
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        // Not started (pid 0): nothing to stop.
        self.ns.stop(self.pid, Duration::from_secs(2));
    }
}

/// Each driver is its daemon (PID, log, stop, kill) and more.
macro_rules! deref_to_daemon {
    ($($driver:ident),*) => {$(
        impl<'a> Deref for $driver<'a> {
            type Target = Daemon<'a>;

            fn deref(&self) -> &Daemon<'a> {
                &self.d
            }
        }
    )*};
}

deref_to_daemon!(Babeld, Bird, IsthmusCp);

/// Creates an always-up interface `name` in `ns` holding `addrs` (`10.9.1.1/32`,
/// `fd09:1::1/128`), standing for a LAN or loopback prefix a router redistributes. It is a
/// `dummy` interface where the kernel has the module, else one end of a veth pair whose other
/// end (`{name}p`) stays in the same namespace (kernels without `dummy`, like this CI's).
///
/// # Errors
/// When the interface or an address cannot be added.
pub fn add_stub_iface(ns: &Netns, name: &str, addrs: &[&str]) -> Result<()> {
    if ns
        .exec(&["ip", "link", "add", name, "type", "dummy"])
        .is_err()
    {
        let peer = format!("{name}p");
        ns.exec(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
        ])
        .with_context(|| format!("adding stub interface {name} (no dummy, no veth either)"))?;
        ns.link_up(&peer)?;
    }
    ns.link_up(name)?;
    for a in addrs {
        ns.add_addr(name, a)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// babeld
// ---------------------------------------------------------------------------------------------

/// One route from babeld's `dump` (an `add route …` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BabelRoute {
    /// Destination prefix, `10.9.2.0/24`.
    pub prefix: String,
    /// Source prefix (source-specific routing), `0.0.0.0/0` or `::/0` when none.
    pub from: String,
    /// Whether babeld selected it and installed it into the kernel (a retracted route stays
    /// installed for a while, as an `unreachable` kernel route with metric 65535).
    pub installed: bool,
    /// Router id of the originator, `04:b6:c5:2a:5d:81:0f:35`.
    pub id: String,
    /// Metric through this neighbour.
    pub metric: u32,
    /// Metric the neighbour announced.
    pub refmetric: u32,
    /// The neighbour's address (link-local IPv6), also for IPv4 routes with an IPv4 next hop.
    pub via: String,
    /// Interface it was learned on.
    pub iface: String,
}

/// One neighbour from babeld's `dump` (an `add neighbour …` line).
#[derive(Debug, Clone, PartialEq)]
pub struct BabelNeighbour {
    /// Its (link-local) address.
    pub address: String,
    /// Interface.
    pub iface: String,
    /// Hello history, a bitmap (`fffe`: last 15 of 16 received).
    pub reach: u16,
    /// Unicast hello history.
    pub ureach: u16,
    /// Our receive cost from it.
    pub rxcost: u32,
    /// Its receive cost from us (from its IHU).
    pub txcost: u32,
    /// Smoothed RTT in ms, when timestamps are enabled on the interface.
    pub rtt: Option<f64>,
    /// Link cost.
    pub cost: u32,
}

/// Everything babeld's `dump` reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BabelDump {
    /// Routes learned from neighbours (selected or not).
    pub routes: Vec<BabelRoute>,
    /// Neighbours.
    pub neighbours: Vec<BabelNeighbour>,
    /// Prefixes it redistributes itself (`add xroute` lines).
    pub xroutes: Vec<String>,
    /// Interfaces it runs on and whether they are up (`add interface X up true …`).
    pub interfaces: Vec<(String, bool)>,
}

/// `key value` pairs of a babeld local-interface line after its `add KIND ID` head.
fn kv_pairs(tokens: &[&str]) -> Vec<(String, String)> {
    tokens
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_owned(), c[1].to_owned()))
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn num<T: std::str::FromStr>(kv: &[(String, String)], key: &str, line: &str) -> Result<T> {
    get(kv, key)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no numeric {key:?} in babeld line {line:?}"))
}

fn text(kv: &[(String, String)], key: &str, line: &str) -> Result<String> {
    get(kv, key)
        .map(str::to_owned)
        .with_context(|| format!("no {key:?} in babeld line {line:?}"))
}

/// Parses the output of babeld's `dump` command (lines `add route|neighbour|xroute|interface`;
/// `change` lines, as `monitor` prints them, count as `add`; everything else is skipped).
///
/// # Errors
/// When a route or neighbour line lacks a field.
pub fn parse_babel_dump(output: &str) -> Result<BabelDump> {
    let mut d = BabelDump::default();
    for line in output.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 3 || !(t[0] == "add" || t[0] == "change") {
            continue;
        }
        match t[1] {
            "route" => {
                // add route ID prefix P from S installed yes id ID metric M refmetric R via V if I
                let kv = kv_pairs(&t[3..]);
                d.routes.push(BabelRoute {
                    prefix: text(&kv, "prefix", line)?,
                    from: get(&kv, "from").unwrap_or("").to_owned(),
                    installed: get(&kv, "installed") == Some("yes"),
                    id: text(&kv, "id", line)?,
                    metric: num(&kv, "metric", line)?,
                    refmetric: num(&kv, "refmetric", line)?,
                    via: text(&kv, "via", line)?,
                    iface: text(&kv, "if", line)?,
                });
            }
            "neighbour" => {
                // add neighbour ID address A if I reach R ureach U rxcost X txcost Y [rtt T rttcost C] cost C
                let kv = kv_pairs(&t[3..]);
                let hex = |key: &str| -> Result<u16> {
                    let v = get(&kv, key).unwrap_or("0");
                    u16::from_str_radix(v, 16)
                        .with_context(|| format!("bad {key} {v:?} in babeld line {line:?}"))
                };
                d.neighbours.push(BabelNeighbour {
                    address: text(&kv, "address", line)?,
                    iface: text(&kv, "if", line)?,
                    reach: hex("reach")?,
                    ureach: hex("ureach")?,
                    rxcost: num(&kv, "rxcost", line)?,
                    txcost: num(&kv, "txcost", line)?,
                    rtt: get(&kv, "rtt").and_then(|v| v.parse().ok()),
                    cost: num(&kv, "cost", line)?,
                });
            }
            "xroute" => {
                let kv = kv_pairs(&t[3..]);
                d.xroutes.push(text(&kv, "prefix", line)?);
            }
            "interface" => {
                // add interface X up true [ipv6 A] [ipv4 B]
                let kv = kv_pairs(&t[3..]);
                d.interfaces
                    .push((t[2].to_owned(), get(&kv, "up") == Some("true")));
            }
            _ => {}
        }
    }
    Ok(d)
}

/// A babeld running in a namespace, configured through a file in the lab directory and
/// queried through its local (read-write) interface on a UNIX socket in the lab directory.
/// Dropping it stops it (SIGTERM, so it removes its kernel routes). PID, log, stop and kill:
/// see [`Daemon`].
#[derive(Debug)]
pub struct Babeld<'a> {
    d: Daemon<'a>,
}

/// Writes a Babel MAC key (RFC 8967) for isthmus-cp: `key`'s bytes as hex, mode 0600, in
/// `babel-ID.key` in the lab directory. Returns the `[[babel.key]]` table that names it.
///
/// # Panics
/// When the file cannot be written.
#[must_use]
pub fn babel_key_table(lab: &Lab, id: &str, algorithm: &str, key: &[u8]) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = lab.dir().join(format!("babel-{id}.key"));
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex).expect("writing a key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600 of a key file");
    format!(
        "\n[[babel.key]]\nid = \"{id}\"\nalgorithm = \"{algorithm}\"\nfile = \"{}\"\n",
        path.display()
    )
}

/// The babeld configuration [`Babeld::start`] writes.
#[must_use]
pub fn babeld_config(lab_dir: &Path, name: &str, ifaces: &[&str], extra_conf: &str) -> String {
    let p = |ext: &str| lab_dir.join(format!("babeld-{name}.{ext}"));
    let mut c = String::from("# written by isthmus-lab\n");
    let _ = writeln!(c, "state-file {}", p("state").display());
    let _ = writeln!(c, "pid-file {}", p("pid").display());
    let _ = writeln!(c, "local-path-readwrite {}", p("sock").display());
    // A new route starts with a smoothed metric of 32767 that halves every half-life (4 s by
    // default), so babeld would take ~40 s to prefer a better route that appears late (a
    // restored link); tests want the switch at once. extra_conf may set it again.
    c.push_str("smoothing-half-life 0\n");
    for i in ifaces {
        let _ = writeln!(c, "interface {i} hello-interval 1");
    }
    c.push_str(extra_conf.trim_end());
    c.push('\n');
    // Filters are first-match: any `redistribute local …` allow in extra_conf comes first and
    // wins; this only stops the default (redistribute every local address).
    c.push_str("redistribute local deny\n");
    c
}

impl<'a> Babeld<'a> {
    /// Writes `babeld-NAME.conf` in the lab directory (hello interval 1 s on each of `ifaces`,
    /// local read-write interface on `babeld-NAME.sock`, state and PID files next to it,
    /// `extra_conf` verbatim, then `redistribute local deny`), starts babeld in `ns` with
    /// its log in `babeld-NAME.log`, and waits until its local interface answers.
    ///
    /// Restarting under the same name (after [`Daemon::kill`]) reuses the state file.
    ///
    /// # Errors
    /// When babeld exits or does not answer within 10 s; the error quotes its log.
    pub fn start(
        ns: &'a Netns,
        lab: &Lab,
        name: &str,
        ifaces: &[&str],
        extra_conf: &str,
    ) -> Result<Self> {
        let conf = babeld_config(lab.dir(), name, ifaces, extra_conf);
        Self::launch(NsRef::Borrowed(ns), lab, name, &conf)
    }

    /// [`Babeld::start`] in a namespace the driver shares, so that it does not borrow the
    /// topology that holds the namespace.
    ///
    /// # Errors
    /// As [`Babeld::start`].
    pub fn start_shared(
        ns: &Arc<Netns>,
        lab: &Lab,
        name: &str,
        ifaces: &[&str],
        extra_conf: &str,
    ) -> Result<Babeld<'static>> {
        let conf = babeld_config(lab.dir(), name, ifaces, extra_conf);
        Babeld::launch(NsRef::Shared(Arc::clone(ns)), lab, name, &conf)
    }

    /// Starts babeld with the configuration `text`.
    fn launch(ns: NsRef<'a>, lab: &Lab, name: &str, text: &str) -> Result<Self> {
        let conf = lab.path(&format!("babeld-{name}.conf"));
        let sock = lab.path(&format!("babeld-{name}.sock"));
        let pidfile = lab.path(&format!("babeld-{name}.pid"));
        if let Ok(old) = std::fs::read_to_string(&pidfile) {
            let old = old.trim();
            if Path::new("/proc").join(old).exists()
                && ns.pids().iter().any(|p| p.to_string() == old)
            {
                bail!(
                    "babeld {name} is already running in {} (pid {old})",
                    ns.name()
                );
            }
        }
        // A babeld killed with SIGKILL leaves it behind (and its socket), and refuses to
        // start over them.
        let _ = std::fs::remove_file(&pidfile);
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let conf_s = conf.to_string_lossy().into_owned();
        let log = lab.path(&format!("babeld-{name}.log"));
        let d = Daemon::new(ns, format!("babeld {name}"), conf, sock, log);
        d.start(
            &["babeld", "-c", &conf_s],
            &[],
            |d| Self { d },
            |b| b.command("dump").is_ok(),
        )
    }

    /// Sends one request on the local interface (`dump`, a configuration directive,
    /// `flush interface X`) and returns the reply lines before the final `ok`.
    ///
    /// # Errors
    /// When babeld cannot be reached, answers `no`/`bad`, or takes more than 5 s.
    pub fn command(&self, request: &str) -> Result<String> {
        let what = || format!("{} local socket {}", self.d.what, self.d.sock.display());
        let s = UnixStream::connect(&self.d.sock).with_context(what)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s.try_clone()?);
        // Greeting: "BABEL 1.0", version, host, my-id, "ok".
        read_reply(&mut r).with_context(|| format!("greeting of {}", what()))?;
        (&s).write_all(format!("{request}\n").as_bytes())?;
        let reply = read_reply(&mut r).with_context(|| format!("{request:?} on {}", what()))?;
        let _ = (&s).write_all(b"quit\n");
        Ok(reply)
    }

    /// Its routing state (`dump`).
    ///
    /// # Errors
    /// When babeld cannot be queried or prints something unparsable.
    pub fn dump_all(&self) -> Result<BabelDump> {
        parse_babel_dump(&self.command("dump")?)
    }

    /// Routes it learned from neighbours (`dump`).
    ///
    /// # Errors
    /// When babeld cannot be queried.
    pub fn dump(&self) -> Result<Vec<BabelRoute>> {
        Ok(self.dump_all()?.routes)
    }

    /// Its neighbours (`dump`).
    ///
    /// # Errors
    /// When babeld cannot be queried.
    pub fn neighbours(&self) -> Result<Vec<BabelNeighbour>> {
        Ok(self.dump_all()?.neighbours)
    }

    /// Waits until it has installed a route for `prefix` (babeld's own table), at most
    /// `timeout`; returns how long that took.
    ///
    /// # Errors
    /// On timeout, with its dump and log tail.
    pub fn wait_installed(&self, prefix: &str, timeout: Duration) -> Result<Duration> {
        self.d.wait_for(
            timeout,
            &format!("installed no route to {prefix}"),
            || self.dump_all(),
            |d| d.routes.iter().any(|r| r.prefix == prefix && r.installed),
        )
    }

    /// Its dump (raw) and log tail, for error messages.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        format!(
            "{} in {} dump:\n{}\n{} log:\n{}",
            self.d.what,
            self.d.ns.name(),
            self.command("dump").unwrap_or_else(|e| format!("{e:#}")),
            self.d.what,
            self.log_tail()
        )
    }

    /// [`wait_for_route`] in its namespace, with its dump and log tail in the error.
    ///
    /// # Errors
    /// On timeout.
    pub fn wait_for_route(&self, prefix: &str, timeout: Duration) -> Result<Duration> {
        wait_for_route(&self.d.ns, prefix, timeout).map_err(|e| e.context(self.diagnostics()))
    }

    /// [`wait_for_route_dev`] in its namespace, with its dump and log tail in the error.
    ///
    /// # Errors
    /// On timeout.
    pub fn wait_for_route_dev(
        &self,
        prefix: &str,
        dev: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        wait_for_route_dev(&self.d.ns, prefix, dev, timeout)
            .map_err(|e| e.context(self.diagnostics()))
    }
}

/// Reads lines up to a terminating `ok` (returns the lines before it) or `no`/`bad` (error).
fn read_reply(r: &mut impl BufRead) -> Result<String> {
    let mut out = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed after {out:?}");
        }
        match line.trim_end() {
            "ok" => return Ok(out),
            l @ ("no" | "bad") => bail!("babeld answered {l:?} after {out:?}"),
            l if l.starts_with("no ") || l.starts_with("bad ") => {
                bail!("babeld answered {l:?} after {out:?}")
            }
            _ => out.push_str(&line),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BIRD 2
// ---------------------------------------------------------------------------------------------

/// One route from `birdc show route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdRoute {
    /// Table (`master4`, `master6`).
    pub table: String,
    /// Prefix, `10.9.1.1/32`.
    pub prefix: String,
    /// Route type (`unicast`, `unreachable`, …).
    pub kind: String,
    /// Protocol instance that supplied it (`babel1`, `direct1`, `static1`).
    pub proto: String,
    /// Whether it is the selected route (`*`).
    pub primary: bool,
    /// Next hop address (`via X`), none for device routes.
    pub next_hop: Option<String>,
    /// Outgoing interface (`on IF` / `dev IF`).
    pub iface: Option<String>,
    /// The `(pref/metric)` field as printed, `130/224`.
    pub metric: String,
}

/// Parses `birdc show route` output (BIRD 2.0).
#[must_use]
pub fn parse_bird_routes(output: &str) -> Vec<BirdRoute> {
    let mut routes: Vec<BirdRoute> = Vec::new();
    let mut table = String::new();
    let mut prefix = String::new();
    for line in output.lines() {
        if line.trim().is_empty() || line.starts_with("BIRD ") {
            continue;
        }
        if let Some(t) = line.strip_prefix("Table ") {
            t.trim_end_matches(':').clone_into(&mut table);
            continue;
        }
        let indented = line.starts_with(char::is_whitespace);
        let toks: Vec<&str> = line.split_whitespace().collect();
        // Next-hop lines: "\tvia 10.9.0.1 on vb", "\tdev st0".
        if indented && matches!(toks.first(), Some(&"via") | Some(&"dev")) {
            if let Some(r) = routes.last_mut() {
                if toks[0] == "via" {
                    r.next_hop = toks.get(1).map(|s| (*s).to_owned());
                    r.iface = toks
                        .iter()
                        .position(|t| *t == "on")
                        .and_then(|i| toks.get(i + 1))
                        .map(|s| (*s).to_owned());
                } else {
                    r.iface = toks.get(1).map(|s| (*s).to_owned());
                }
            }
            continue;
        }
        // Route lines: "PREFIX KIND [proto ...] * (pref/metric) ..." or, for a further route
        // of the same prefix, the same without PREFIX, indented.
        let rest: &[&str] = if indented {
            &toks
        } else {
            match toks.split_first() {
                Some((p, rest)) => {
                    (*p).clone_into(&mut prefix);
                    rest
                }
                None => continue,
            }
        };
        let Some(kind) = rest.first() else { continue };
        let proto = rest
            .iter()
            .find_map(|t| t.strip_prefix('['))
            .unwrap_or("")
            .to_owned();
        let metric = rest
            .iter()
            .find_map(|t| t.strip_prefix('(').and_then(|m| m.strip_suffix(')')))
            .unwrap_or("")
            .to_owned();
        routes.push(BirdRoute {
            table: table.clone(),
            prefix: prefix.clone(),
            kind: (*kind).to_owned(),
            proto,
            primary: rest.contains(&"*"),
            next_hop: None,
            iface: None,
            metric,
        });
    }
    routes
}

/// The BIRD 2 configuration [`Bird::start`] writes.
#[must_use]
pub fn bird_config(log: &Path, router_id: &str, ifaces: &[&str], extra_conf: &str) -> String {
    let mut c = String::from("# written by isthmus-lab\n");
    let _ = writeln!(c, "log \"{}\" all;", log.display());
    if !extra_conf.contains("router id") {
        let _ = writeln!(c, "router id {router_id};");
    }
    c.push_str("protocol device { scan time 1; }\n");
    for v in ["4", "6"] {
        let _ = writeln!(
            c,
            "protocol kernel kernel{v} {{ ipv{v} {{ import none; export where source != RTS_DEVICE; }}; }}"
        );
    }
    if !extra_conf.contains("protocol babel") {
        c.push_str("protocol babel babel1 {\n  ipv4 { import all; export all; };\n  ipv6 { import all; export all; };\n");
        for i in ifaces {
            let _ = writeln!(
                c,
                "  interface \"{i}\" {{ type wired; hello interval 1 s; }};"
            );
        }
        c.push_str("}\n");
    }
    c.push_str(extra_conf);
    c.push('\n');
    c
}

/// A BIRD 2 running in a namespace with a Babel protocol, kernel protocols and a control
/// socket in the lab directory. Dropping it stops it. PID, log, stop and kill: see
/// [`Daemon`].
#[derive(Debug)]
pub struct Bird<'a> {
    /// BIRD, writing its log to `bird-NAME.log`, its stdout and stderr to `bird-NAME.out`.
    d: Daemon<'a>,
}

impl<'a> Bird<'a> {
    /// Writes `bird-NAME.conf` in the lab directory and starts BIRD in `ns` (foreground, control
    /// socket `bird-NAME.ctl`): a unique `router id` (unless `extra_conf` has one), device
    /// protocol, kernel protocols `kernel4`/`kernel6` exporting everything to the main table
    /// (BIRD exports no device routes to the kernel), and protocol `babel1` on `ifaces`
    /// (type wired, hello interval 1 s, IPv4 and IPv6 channels importing and exporting all)
    /// unless `extra_conf` defines its own `protocol babel`. `extra_conf` is appended; to
    /// announce an interface's prefixes use `protocol direct { ipv4; ipv6; interface "X"; }`.
    ///
    /// BIRD 2.0.12 carries IPv4 routes only on interfaces that have an IPv4 address.
    ///
    /// # Errors
    /// When the configuration does not parse, or BIRD exits or does not answer within 10 s.
    pub fn start(
        ns: &'a Netns,
        lab: &Lab,
        name: &str,
        ifaces: &[&str],
        extra_conf: &str,
    ) -> Result<Self> {
        let conf = lab.path(&format!("bird-{name}.conf"));
        let log = lab.path(&format!("bird-{name}.log"));
        let sock = lab.path(&format!("bird-{name}.ctl"));
        let pidfile = lab.path(&format!("bird-{name}.pid"));
        let n = BIRD_IDS.fetch_add(1, Ordering::Relaxed);
        let router_id = format!("10.255.{}.{}", (n >> 8) & 0xff, n & 0xff);
        let text = bird_config(&log, &router_id, ifaces, extra_conf);
        std::fs::write(&conf, &text).with_context(|| format!("writing {}", conf.display()))?;
        let conf_s = conf.to_string_lossy().into_owned();
        let check = ns.output_timeout(&["bird", "-p", "-c", &conf_s], 10)?;
        if !check.status.success() {
            bail!(
                "BIRD rejects {}: {}{}\n{text}",
                conf.display(),
                String::from_utf8_lossy(&check.stderr),
                String::from_utf8_lossy(&check.stdout)
            );
        }
        let sock_s = sock.to_string_lossy().into_owned();
        let pid_s = pidfile.to_string_lossy().into_owned();
        let out = lab.path(&format!("bird-{name}.out"));
        let mut d = Daemon::new(NsRef::Borrowed(ns), format!("BIRD {name}"), conf, sock, out);
        d.own_log = Some(log);
        let args = ["bird", "-f", "-c", &conf_s, "-s", &sock_s, "-P", &pid_s];
        d.start(
            &args,
            &[],
            |d| Self { d },
            |b| {
                b.birdc(&["show", "status"])
                    .is_ok_and(|s| s.contains("Daemon is up and running"))
            },
        )
    }

    /// Runs `birdc -s SOCK ARGS…` (bounded to 10 s) and returns its output.
    ///
    /// # Errors
    /// When birdc fails.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let sock = self.d.sock.to_string_lossy().into_owned();
        let mut a = vec!["birdc", "-s", &sock];
        a.extend_from_slice(args);
        self.d.ns.exec_timeout(&a, 10)
    }

    /// `show route`, parsed.
    ///
    /// # Errors
    /// When birdc fails.
    pub fn routes(&self) -> Result<Vec<BirdRoute>> {
        Ok(parse_bird_routes(&self.birdc(&["show", "route"])?))
    }

    /// Addresses of its Babel neighbours (`show babel neighbors`).
    ///
    /// # Errors
    /// When birdc fails.
    pub fn babel_neighbours(&self) -> Result<Vec<String>> {
        let out = self.birdc(&["show", "babel", "neighbors"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|a| a.contains(':') && a.parse::<std::net::IpAddr>().is_ok())
            .map(str::to_owned)
            .collect())
    }

    /// Waits until BIRD has a route for `prefix` from its Babel protocol; returns how long
    /// that took.
    ///
    /// # Errors
    /// On timeout, with its routes and log tail.
    pub fn wait_babel_route(&self, prefix: &str, timeout: Duration) -> Result<Duration> {
        self.d.wait_for(
            timeout,
            &format!("no Babel route to {prefix}"),
            || self.routes(),
            |r| {
                r.iter()
                    .any(|x| x.prefix == prefix && x.proto.starts_with("babel"))
            },
        )
    }
}

impl Drop for Bird<'_> {
    fn drop(&mut self) {
        self.d.ns.stop(self.d.pid, Duration::from_secs(2));
        let _ = std::fs::remove_file(&self.d.sock);
    }
}

// ---------------------------------------------------------------------------------------------
// isthmus-cp
// ---------------------------------------------------------------------------------------------

/// Where [`IsthmusCp`] serves Prometheus metrics inside its namespace.
pub const CP_METRICS_ADDR: &str = "127.0.0.1:9587";

/// Finds a binary: `$VAR` if set (a path, or a bare name on `PATH`), else the workspace's.
fn binary_from_env(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        if p.components().count() == 1 {
            let found = crate::lab::run(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {}", p.display())),
            )
            .with_context(|| format!("{var}={} is not on PATH", p.display()))?;
            return Ok(PathBuf::from(found.trim()));
        }
        return Ok(p);
    }
    crate::lab::built_binary(name).with_context(|| {
        format!("{name} not found in target/release or target/debug: build it or set {var}")
    })
}

/// An `isthmus-cp` (the isthmus Babel daemon) running in a namespace: it speaks Babel on its
/// `[[babel.interface]]`s and installs kernel routes (protocol 77). Its log and status socket
/// live in the lab directory under `cp-NAME.*`. Started with [`IsthmusCp::start`] it runs
/// without a data plane (its configuration `cp-NAME.toml`, an unused control socket
/// `cp-NAME.ctl`, metrics on [`CP_METRICS_ADDR`] in its namespace); started with
/// [`IsthmusCp::start_gateway`] it is the control plane of an isthmus-dp, reading the data
/// plane's own file. Dropping it stops it with SIGTERM. PID, log, stop and kill: see
/// [`Daemon`].
#[derive(Debug)]
pub struct IsthmusCp<'a> {
    /// isthmus-cp, answering on its status socket.
    d: Daemon<'a>,
}

impl<'a> IsthmusCp<'a> {
    /// The `isthmus-cp` binary: `$ISTHMUS_CP`, else the one built in the target directory.
    ///
    /// # Errors
    /// When neither exists.
    pub fn binary() -> Result<PathBuf> {
        binary_from_env("ISTHMUS_CP", "isthmus-cp")
    }

    /// The `isthmusctl` binary: `$ISTHMUSCTL`, else the one next to `isthmus-cp`, else the
    /// one built in the target directory.
    ///
    /// # Errors
    /// When none exists.
    pub fn ctl_binary() -> Result<PathBuf> {
        if std::env::var_os("ISTHMUSCTL").is_none() {
            if let Some(p) = Self::binary()
                .ok()
                .and_then(|b| b.parent().map(|d| d.join("isthmusctl")))
                .filter(|p| p.is_file())
            {
                return Ok(p);
            }
        }
        binary_from_env("ISTHMUSCTL", "isthmusctl")
    }

    /// Writes `config` (isthmus TOML with an `[interface]` and a `[babel]` section) to
    /// `cp-NAME.toml` in the lab directory and starts `isthmus-cp` in `ns` with its status
    /// socket `cp-NAME.cp`, a control socket `cp-NAME.ctl` that nothing serves, and metrics on
    /// [`CP_METRICS_ADDR`]; waits until its status socket answers. Restarting under the same
    /// name (after [`Daemon::kill`] or [`Daemon::stop`]) keeps the previous log as
    /// `cp-NAME.log.old`.
    ///
    /// # Errors
    /// When it exits or does not answer within 10 s; the error quotes its log.
    pub fn start(ns: &'a Netns, lab: &Lab, name: &str, config: &str) -> Result<Self> {
        let conf = lab.path(&format!("cp-{name}.toml"));
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        let ctl = lab
            .path(&format!("cp-{name}.ctl"))
            .to_string_lossy()
            .into_owned();
        Self::launch(
            NsRef::Borrowed(ns),
            lab,
            name,
            conf,
            &["--ctl-socket", &ctl, "--metrics", CP_METRICS_ADDR],
        )
    }

    /// Starts `isthmus-cp --config CONFIG` in `ns` as the control plane of the isthmus-dp
    /// that runs there from the same file (it connects to that data plane's control socket
    /// and serves metrics where the file's `[babel]` says), with its status socket
    /// `cp-NAME.cp` in the lab directory; waits until that answers. The driver shares `ns`,
    /// so a topology can hold it; restarting under the same name keeps the previous log as
    /// `cp-NAME.log.old`.
    ///
    /// # Errors
    /// When it exits or does not answer within 10 s; the error quotes its log.
    pub fn start_gateway(
        ns: &Arc<Netns>,
        lab: &Lab,
        name: &str,
        config: &Path,
    ) -> Result<IsthmusCp<'static>> {
        IsthmusCp::launch(
            NsRef::Shared(Arc::clone(ns)),
            lab,
            name,
            config.to_owned(),
            &[],
        )
    }

    fn launch(
        ns: NsRef<'a>,
        lab: &Lab,
        name: &str,
        conf: PathBuf,
        extra_args: &[&str],
    ) -> Result<Self> {
        let status = lab.path(&format!("cp-{name}.cp"));
        let bin = Self::binary()?.to_string_lossy().into_owned();
        let conf_s = conf.to_string_lossy().into_owned();
        let status_s = status.to_string_lossy().into_owned();
        let mut args = vec![
            bin.as_str(),
            "--config",
            &conf_s,
            "--status-socket",
            &status_s,
        ];
        args.extend_from_slice(extra_args);
        let log = lab.path(&format!("cp-{name}.log"));
        let d = Daemon::new(ns, format!("isthmus-cp {name}"), conf, status, log);
        // Plain text logs: tracing colours its output unless NO_COLOR is set.
        let envs = [("NO_COLOR", "1")];
        d.start(
            &args,
            &envs,
            |d| Self { d },
            |cp| cp.status("babel").is_ok(),
        )
    }

    /// Path of its status socket.
    #[must_use]
    pub fn status_path(&self) -> &Path {
        &self.d.sock
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.d.pid()
    }

    /// The end of its log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        self.d.log_tail()
    }

    /// `isthmusctl show WHAT --socket STATUS` (`neighbours`, `routes`, `babel`).
    ///
    /// # Errors
    /// When isthmusctl fails (the daemon is not answering).
    pub fn status(&self, what: &str) -> Result<String> {
        let ctl = Self::ctl_binary()?;
        let status = self.d.sock.to_string_lossy().into_owned();
        crate::lab::run(Command::new(&ctl).args(["show", what, "--socket", &status]))
            .with_context(|| format!("{} status {what}", self.d.what))
    }

    /// Scrapes its metrics.
    ///
    /// # Errors
    /// When the GET fails or the text does not parse.
    pub fn metrics(&self) -> Result<crate::metrics::Metrics> {
        crate::wg::scrape(&self.d.ns, CP_METRICS_ADDR)
    }

    /// Its status pages and log tail, for error messages.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        let page = |w: &str| self.status(w).unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "{} in {}:\n{}\n{}\n{}\nlog:\n{}",
            self.d.what,
            self.d.ns.name(),
            page("babel"),
            page("neighbours"),
            page("routes"),
            self.log_tail()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel routes
// ---------------------------------------------------------------------------------------------

/// One route of `ip route show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination as `ip` prints it (`10.9.1.1`, `10.9.2.0/24`, `default`).
    pub dst: String,
    /// Route type when not unicast (`unreachable`, `blackhole`, …).
    pub kind: Option<String>,
    /// Gateway (`via`), IPv4 or IPv6 (for v4-via-v6 routes: `via inet6 fe80::…`).
    pub via: Option<String>,
    /// Outgoing device.
    pub dev: Option<String>,
    /// Protocol (`babel`, `bird`, `kernel`, a number).
    pub proto: Option<String>,
    /// Metric (priority).
    pub metric: Option<u32>,
    /// Flags (`onlink`, `linkdown`).
    pub flags: Vec<String>,
    /// Further next hops of a multipath route, `(via, dev)`.
    pub nexthops: Vec<(Option<String>, Option<String>)>,
}

impl KernelRoute {
    /// Whether packets can follow it: a unicast route, not `unreachable`/`blackhole`/… (babeld
    /// and BIRD keep retracted prefixes as `unreachable` routes for a while).
    #[must_use]
    pub fn usable(&self) -> bool {
        !matches!(self.kind.as_deref(), Some(k) if k != "unicast")
    }
}

const ROUTE_TYPES: &[&str] = &[
    "unicast",
    "unreachable",
    "blackhole",
    "prohibit",
    "throw",
    "local",
    "broadcast",
    "multicast",
    "anycast",
    "nat",
];

/// Parses the text output of `ip route show` (one route per line, `nexthop` lines of a
/// multipath route attached to it).
#[must_use]
pub fn parse_ip_routes(output: &str) -> Vec<KernelRoute> {
    let mut routes: Vec<KernelRoute> = Vec::new();
    for line in output.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.is_empty() {
            continue;
        }
        if t[0] == "nexthop" {
            if let Some(r) = routes.last_mut() {
                let after = |k: &str| {
                    t.iter()
                        .position(|x| *x == k)
                        .and_then(|i| t.get(i + 1))
                        .map(|s| (*s).to_owned())
                };
                let via = t.iter().position(|x| *x == "via").and_then(|i| {
                    let v = t.get(i + 1)?;
                    if *v == "inet6" || *v == "inet" {
                        t.get(i + 2)
                    } else {
                        Some(v)
                    }
                });
                r.nexthops
                    .push((via.map(|s| (*s).to_owned()), after("dev")));
            }
            continue;
        }
        let mut r = KernelRoute::default();
        let mut i = 0;
        if ROUTE_TYPES.contains(&t[0]) && t.len() > 1 {
            r.kind = Some(t[0].to_owned());
            i = 1;
        }
        r.dst = t[i].to_owned();
        i += 1;
        while i < t.len() {
            let next = t.get(i + 1).map(|s| (*s).to_owned());
            match t[i] {
                "via" => {
                    if matches!(t.get(i + 1), Some(&"inet6") | Some(&"inet")) {
                        i += 1;
                    }
                    r.via = t.get(i + 1).map(|s| (*s).to_owned());
                    i += 2;
                }
                "dev" => {
                    r.dev = next;
                    i += 2;
                }
                "proto" => {
                    r.proto = next;
                    i += 2;
                }
                "metric" => {
                    r.metric = next.and_then(|m| m.parse().ok());
                    i += 2;
                }
                "src" | "scope" | "pref" | "table" | "expires" | "mtu" | "advmss" | "realm"
                | "error" | "hoplimit" | "initcwnd" | "initrwnd" | "rto_min" | "quickack" => {
                    i += 2;
                }
                "onlink" | "linkdown" | "dead" | "pervasive" | "offload" | "trap" | "notify"
                | "rt_offload" => {
                    r.flags.push(t[i].to_owned());
                    i += 1;
                }
                _ => i += 1,
            }
        }
        routes.push(r);
    }
    routes
}

fn family_flag(prefix: &str) -> &'static str {
    if prefix.contains(':') {
        "-6"
    } else {
        "-4"
    }
}

/// Routes in `ns`'s main table with exactly this destination (`ip route show PREFIX`).
///
/// # Errors
/// When `ip` fails.
pub fn routes_to(ns: &Netns, prefix: &str) -> Result<Vec<KernelRoute>> {
    let out = ns.exec_timeout(&["ip", family_flag(prefix), "route", "show", prefix], 10)?;
    Ok(parse_ip_routes(&out))
}

/// IPv4 and IPv6 routes of `ns`'s main table installed by protocol `proto` (`babel`, `bird`,
/// `kernel`, `static`, a number): `ip route show proto PROTO`.
///
/// # Errors
/// When `ip` fails.
pub fn kernel_routes(ns: &Netns, proto: &str) -> Result<Vec<KernelRoute>> {
    let mut all = Vec::new();
    for fam in ["-4", "-6"] {
        let out = ns.exec_timeout(&["ip", fam, "route", "show", "proto", proto], 10)?;
        let mut rs = parse_ip_routes(&out);
        for r in &mut rs {
            // `ip` leaves out the protocol it was asked to filter on.
            r.proto.get_or_insert_with(|| proto.to_owned());
        }
        all.extend(rs);
    }
    Ok(all)
}

fn routing_tables(ns: &Netns) -> String {
    let v4 = ns
        .exec_timeout(&["ip", "-4", "route"], 5)
        .unwrap_or_default();
    let v6 = ns
        .exec_timeout(&["ip", "-6", "route"], 5)
        .unwrap_or_default();
    format!("{v4}{v6}")
}

/// Polls `ns`'s routes to `prefix` every 50 ms until `done` holds for them, at most
/// `timeout`; returns the wait. On timeout the error is `failure` and the routing tables.
fn poll_routes(
    ns: &Netns,
    prefix: &str,
    timeout: Duration,
    done: impl Fn(&[KernelRoute]) -> bool,
    failure: &str,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if done(&routes_to(ns, prefix)?) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "{failure} in netns {} within {timeout:?}; routes:\n{}",
                ns.name(),
                routing_tables(ns)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls (every 50 ms) until `ns`'s main table holds a usable route ([`KernelRoute::usable`])
/// matching `pred` for `prefix`, at most `timeout`; returns the wait. `what` describes `pred`
/// in the error.
///
/// # Errors
/// On timeout, with the namespace's routing tables.
pub fn wait_for_route_where(
    ns: &Netns,
    prefix: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&KernelRoute) -> bool,
) -> Result<Duration> {
    poll_routes(
        ns,
        prefix,
        timeout,
        |rs| rs.iter().any(|r| r.usable() && pred(r)),
        &format!("no route to {prefix}{what}"),
    )
}

/// Waits until `ns` has a usable route to `prefix` (`10.9.1.1`, `10.9.2.0/24`, `fd09::1`,
/// exactly as `ip route` prints it) in its main table, at most `timeout`; returns the wait.
///
/// # Errors
/// On timeout, with the namespace's routing tables.
pub fn wait_for_route(ns: &Netns, prefix: &str, timeout: Duration) -> Result<Duration> {
    wait_for_route_where(ns, prefix, timeout, "", |_| true)
}

/// Waits until `ns`'s route to `prefix` goes out of `dev`.
///
/// # Errors
/// On timeout, with the namespace's routing tables.
pub fn wait_for_route_dev(
    ns: &Netns,
    prefix: &str,
    dev: &str,
    timeout: Duration,
) -> Result<Duration> {
    wait_for_route_where(ns, prefix, timeout, &format!(" via dev {dev}"), |r| {
        r.dev.as_deref() == Some(dev)
    })
}

/// Waits until `ns` has no usable route to `prefix` any more (none, or only `unreachable`
/// ones, which is how babeld and BIRD keep a retracted prefix for a while).
///
/// # Errors
/// On timeout, with the namespace's routing tables.
pub fn wait_for_no_route(ns: &Netns, prefix: &str, timeout: Duration) -> Result<Duration> {
    poll_routes(
        ns,
        prefix,
        timeout,
        |rs| !rs.iter().any(KernelRoute::usable),
        &format!("route to {prefix} still there"),
    )
}

// ---------------------------------------------------------------------------------------------
// Continuous ping
// ---------------------------------------------------------------------------------------------

/// What a [`PingProbe`] saw.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Echo requests sent.
    pub sent: u32,
    /// Echo replies received.
    pub received: u32,
    /// The longest time between two consecutive replies (the outage, plus one interval), or
    /// from the start to the first reply / the last reply to the end when longer.
    pub longest_gap: Duration,
    /// Replies as `(icmp_seq, unix time in seconds)`.
    pub replies: Vec<(u32, f64)>,
    /// Unix time the probe started and finished.
    pub started: f64,
    /// Unix time the probe was finished.
    pub finished: f64,
    /// Everything ping printed.
    pub output: String,
}

impl ProbeResult {
    /// Requests without a reply.
    #[must_use]
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }

    /// Replies received after `t`.
    #[must_use]
    pub fn replies_after(&self, t: SystemTime) -> usize {
        let t = unix_secs(t);
        self.replies.iter().filter(|(_, ts)| *ts > t).count()
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `(sent, received)` from ping's summary, if it printed one, and `(icmp_seq, unix time)` of
/// each reply.
type ProbeParse = (Option<(u32, u32)>, Vec<(u32, f64)>);

/// Parses `ping -D` output.
fn parse_probe_output(output: &str) -> ProbeParse {
    let mut replies = Vec::new();
    let mut summary = None;
    for line in output.lines() {
        if line.contains("packets transmitted") {
            let mut nums = line.split(',').map(|p| {
                p.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
            });
            if let (Some(Some(tx)), Some(Some(rx))) = (nums.next(), nums.next()) {
                summary = Some((tx, rx));
            }
            continue;
        }
        // "[1733090000.123456] 64 bytes from 10.9.2.1: icmp_seq=12 ttl=63 time=0.071 ms"
        if !line.contains(" bytes from ") {
            continue;
        }
        let ts = line
            .strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .and_then(|t| t.parse::<f64>().ok());
        let seq = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u32>().ok());
        if let (Some(ts), Some(seq)) = (ts, seq) {
            replies.push((seq, ts));
        }
    }
    (summary, replies)
}

fn longest_gap(replies: &[(u32, f64)], started: f64, finished: f64) -> Duration {
    let mut times: Vec<f64> = replies.iter().map(|(_, t)| *t).collect();
    times.sort_by(f64::total_cmp);
    let mut edges = vec![started];
    edges.extend(times);
    edges.push(finished);
    let gap = edges
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    Duration::from_secs_f64(gap.max(0.0))
}

/// A continuous ping (`ping -n -D -O -i INTERVAL DST`) running in the background in a
/// namespace, measuring the longest gap between replies: the outage of a failover.
#[derive(Debug)]
pub struct PingProbe<'a> {
    ns: &'a Netns,
    pid: u32,
    log: PathBuf,
    dst: String,
    started: f64,
    done: bool,
}

impl<'a> PingProbe<'a> {
    /// Starts pinging `dst` from `ns` every `interval_ms` milliseconds (at least 2; root may
    /// go below 200 ms).
    ///
    /// # Errors
    /// When ping cannot be started.
    pub fn start(ns: &'a Netns, dst: &str, interval_ms: u32) -> Result<Self> {
        Self::start_from(ns, None, dst, interval_ms)
    }

    /// Like [`PingProbe::start`] with a source address (`-I`).
    ///
    /// # Errors
    /// When ping cannot be started.
    pub fn start_from(
        ns: &'a Netns,
        source: Option<&str>,
        dst: &str,
        interval_ms: u32,
    ) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("isthmus-probe-{}.log", unique_name("")));
        ns.remove_on_drop(log.clone());
        let interval = format!("{:.3}", f64::from(interval_ms.max(2)) / 1000.0);
        let mut args = vec!["ping", "-n", "-D", "-O", "-i", &interval];
        if let Some(s) = source {
            args.extend(["-I", s]);
        }
        args.push(dst);
        let started = unix_secs(SystemTime::now());
        let pid = ns.spawn(&args, &log)?;
        Ok(Self {
            ns,
            pid,
            log,
            dst: dst.to_owned(),
            started,
            done: false,
        })
    }

    /// Replies received so far.
    #[must_use]
    pub fn replies_so_far(&self) -> usize {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        parse_probe_output(&out).1.len()
    }

    /// Waits until at least `n` replies came back in total, at most `timeout`.
    ///
    /// # Errors
    /// On timeout, with ping's output.
    pub fn wait_replies(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.replies_so_far() < n {
            if Instant::now() > deadline {
                bail!(
                    "ping probe to {} from {}: fewer than {n} replies within {timeout:?}:\n{}",
                    self.dst,
                    self.ns.name(),
                    log_tail(&self.log, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops ping (SIGINT, so it prints its summary) and returns what it saw.
    ///
    /// # Errors
    /// When its output cannot be read.
    pub fn finish(mut self) -> Result<ProbeResult> {
        self.done = true;
        let finished = unix_secs(SystemTime::now());
        send_signal(self.pid, "INT");
        if !self.ns.wait_exit(self.pid, Duration::from_secs(3)) {
            self.ns.stop(self.pid, Duration::from_secs(1));
        }
        let output = std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading ping probe output {}", self.log.display()))?;
        let (summary, replies) = parse_probe_output(&output);
        let (sent, received) = summary.unwrap_or_else(|| {
            let n = u32::try_from(replies.len()).unwrap_or(u32::MAX);
            let max_seq = replies.iter().map(|(s, _)| *s).max().unwrap_or(0);
            (max_seq, n)
        });
        Ok(ProbeResult {
            sent,
            received,
            longest_gap: longest_gap(&replies, self.started, finished),
            replies,
            started: self.started,
            finished,
            output,
        })
    }
}

impl Drop for PingProbe<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.ns.stop(self.pid, Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_babeld_dump() {
        let out = "add interface va up true ipv6 fe80::8c22:bcff:fea7:9ee7 ipv4 10.9.0.1\n\
            add neighbour 5579ac22ffa0 address fe80::341b:62ff:fe13:fbf6 if va reach fffe ureach 0000 rxcost 96 txcost 96 cost 96\n\
            add neighbour 5579ac22ffb0 address fe80::1 if wg0 reach ff00 ureach 0000 rxcost 96 txcost 100 rtt 12.345 rttcost 7 cost 103\n\
            add xroute 10.9.1.1/32-0.0.0.0/0 prefix 10.9.1.1/32 from 0.0.0.0/0 metric 128\n\
            add route 5579ac230ac0 prefix 10.9.2.0/24 from 0.0.0.0/0 installed yes id 00:00:00:00:0a:ff:00:02 metric 96 refmetric 0 via fe80::341b:62ff:fe13:fbf6 if va\n\
            add route 5579ac230a20 prefix fd09:2::1/128 from ::/0 installed no id 00:00:00:00:0a:ff:00:02 metric 65535 refmetric 0 via fe80::341b:62ff:fe13:fbf6 if va\n";
        let d = parse_babel_dump(out).unwrap();
        assert_eq!(d.interfaces, vec![("va".to_owned(), true)]);
        assert_eq!(d.xroutes, vec!["10.9.1.1/32".to_owned()]);
        assert_eq!(d.neighbours.len(), 2);
        assert_eq!(d.neighbours[0].reach, 0xfffe);
        assert_eq!(d.neighbours[0].rtt, None);
        assert_eq!(d.neighbours[1].rtt, Some(12.345));
        assert_eq!(d.neighbours[1].cost, 103);
        assert_eq!(d.neighbours[1].txcost, 100);
        assert_eq!(d.routes.len(), 2);
        let r = &d.routes[0];
        assert_eq!(r.prefix, "10.9.2.0/24");
        assert!(r.installed);
        assert_eq!((r.metric, r.refmetric), (96, 0));
        assert_eq!(r.iface, "va");
        assert_eq!(r.via, "fe80::341b:62ff:fe13:fbf6");
        assert!(!d.routes[1].installed);
        assert!(parse_babel_dump("add route 1 prefix 10.0.0.0/8").is_err());
    }

    #[test]
    fn parses_bird_routes() {
        let out = "BIRD 2.0.12 ready.\nTable master4:\n\
            10.9.2.0/24          unicast [direct1 22:19:05.369] * (240)\n\
            \tdev st0\n\
            10.9.1.1/32          unicast [babel1 22:19:14.154 from fe80::8c22:bcff:fea7:9ee7] * (130/224) [d0:33:ee:cd:c9:e6:d5:36]\n\
            \tvia 10.9.0.1 on vb\n\
            \x20                    unicast [babel1 22:19:15.000 from fe80::2] (130/320) [aa]\n\
            \tvia 10.9.0.5 on vc\n\n\
            Table master6:\n\
            fd09:1::1/128        unicast [babel1 22:19:08.535] * (130/224) [d0:33:ee:cd:c9:e6:d5:36]\n\
            \tvia fe80::8c22:bcff:fea7:9ee7 on vb\n";
        let r = parse_bird_routes(out);
        assert_eq!(r.len(), 4, "{r:#?}");
        assert_eq!(r[0].proto, "direct1");
        assert_eq!(r[0].iface.as_deref(), Some("st0"));
        assert_eq!(r[0].next_hop, None);
        assert_eq!(r[1].prefix, "10.9.1.1/32");
        assert_eq!(r[1].next_hop.as_deref(), Some("10.9.0.1"));
        assert_eq!(r[1].metric, "130/224");
        assert!(r[1].primary);
        assert_eq!(r[2].prefix, "10.9.1.1/32");
        assert!(!r[2].primary);
        assert_eq!(r[2].iface.as_deref(), Some("vc"));
        assert_eq!(r[3].table, "master6");
        assert_eq!(r[3].next_hop.as_deref(), Some("fe80::8c22:bcff:fea7:9ee7"));
    }

    #[test]
    fn parses_ip_routes() {
        let out = "10.9.2.0/24 via inet6 fe80::341b:62ff:fe13:fbf6 dev va proto babel onlink \n\
            10.9.1.1 via 10.9.0.1 dev vb proto bird metric 32 \n\
            10.9.0.0/30 dev vb proto kernel scope link src 10.9.0.2 linkdown\n\
            unreachable 10.8.0.0/16 proto static metric 5\n\
            10.7.0.0/16 proto static \n\tnexthop via 10.9.0.1 dev va weight 1 \n\tnexthop via inet6 fe80::1 dev vb weight 1 \n";
        let r = parse_ip_routes(out);
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].via.as_deref(), Some("fe80::341b:62ff:fe13:fbf6"));
        assert_eq!(r[0].dev.as_deref(), Some("va"));
        assert_eq!(r[0].proto.as_deref(), Some("babel"));
        assert_eq!(r[0].flags, vec!["onlink".to_owned()]);
        assert_eq!(r[1].metric, Some(32));
        assert_eq!(r[2].flags, vec!["linkdown".to_owned()]);
        assert_eq!(r[3].kind.as_deref(), Some("unreachable"));
        assert_eq!(r[3].dst, "10.8.0.0/16");
        assert_eq!(r[4].nexthops.len(), 2);
        assert_eq!(r[4].nexthops[1].0.as_deref(), Some("fe80::1"));
    }

    #[test]
    fn parses_probe_output_and_gap() {
        let out = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
            [100.000000] 64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.05 ms\n\
            [100.010000] 64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.05 ms\n\
            [100.020000] no answer yet for icmp_seq=3\n\
            [100.520000] 64 bytes from 10.0.0.2: icmp_seq=53 ttl=64 time=0.05 ms\n\
            \n--- 10.0.0.2 ping statistics ---\n\
            53 packets transmitted, 3 received, 94.3% packet loss, time 520ms\n";
        let (summary, replies) = parse_probe_output(out);
        assert_eq!(summary, Some((53, 3)));
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[2], (53, 100.52));
        let gap = longest_gap(&replies, 99.99, 100.6);
        assert!((gap.as_secs_f64() - 0.51).abs() < 1e-6, "{gap:?}");
    }

    #[test]
    fn babeld_config_ends_with_local_deny() {
        let c = babeld_config(
            Path::new("/tmp/x"),
            "a",
            &["va", "vb"],
            "redistribute local ip 10.0.0.1/32\n",
        );
        assert!(c.contains("interface va hello-interval 1\n"));
        assert!(c.contains("local-path-readwrite /tmp/x/babeld-a.sock\n"));
        assert!(c.contains("state-file /tmp/x/babeld-a.state\n"));
        assert!(c.ends_with("redistribute local ip 10.0.0.1/32\nredistribute local deny\n"));
    }
}
