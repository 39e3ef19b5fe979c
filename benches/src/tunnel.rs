//! The side-by-side tunnel benchmark in network namespaces.
//!
//! Two topologies, each measured with every implementation in the same run (and, in
//! [`crate::flood`], handshake floods against a hub):
//!
//! ```text
//! line:   ha 10.10.1.2 ── ga ══ trunk 192.168.100.0/24 ══ gb ── hb 10.10.2.2
//!                          (tunnel between ga and gb, or plain kernel forwarding)
//! relay:  pa 10.20.0.1 ══ 192.168.101.0/24 ══ hub ══ 192.168.102.0/24 ══ pb 10.20.0.2
//!                          (pa and pb are wireguard-go peers of the hub only)
//! ```
//!
//! Per implementation and topology: iperf3 TCP with one and four streams, iperf3 UDP with
//! 64-byte payloads at full rate (received packets per second), and ping latency. Every
//! measurement is repeated and the median is reported; ratios are against the kernel's plain
//! forwarding and against Debian's wireguard-go measured in the same run.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::netns::{self, Lab, ProcId};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds per iperf3 run.
    pub duration: u32,
    /// Repetitions of every measurement (the median is reported).
    pub repeat: usize,
    /// Pings per latency measurement (at 10 ms intervals).
    pub pings: u32,
    /// The `isthmus-dp` binary, if built.
    pub isthmus_dp: Option<PathBuf>,
    /// An upstream wireguard-go binary, if built.
    pub upstream_wireguard_go: Option<PathBuf>,
    /// Only these implementation ids (all when empty).
    pub only: Vec<String>,
    /// Skip the relay topology.
    pub no_relay: bool,
    /// Run the handshake floods ([`crate::flood`]).
    pub floods: bool,
    /// Run only the handshake floods (no line or relay topology).
    pub only_floods: bool,
    /// Seconds per flood measurement (default: 10 s × `duration` ÷ 3, at least 2).
    pub flood_secs: Option<u32>,
    /// Rate the attacker is asked for, messages per second (it reports what it reached).
    pub flood_rate: u64,
    /// The `lab-tool` binary (its `wg-attack` is the attacker); without it no floods.
    pub lab_tool: Option<PathBuf>,
    /// Where logs and key files go.
    pub work_dir: PathBuf,
}

/// How an implementation is brought up.
#[derive(Debug, Clone, Serialize)]
pub enum Kind {
    /// No tunnel: the kernel forwards plain IP (the ceiling).
    Plain,
    /// The kernel's WireGuard module.
    KernelWg,
    /// A userspace daemon that serves the UAPI socket: argv before the interface name.
    Userspace {
        /// Program and arguments; the interface name is appended.
        argv: Vec<String>,
        /// Extra environment.
        env: Vec<(String, String)>,
    },
}

/// One implementation under test.
#[derive(Debug, Clone, Serialize)]
pub struct Impl {
    /// Short id (`kernel`, `wg-go-deb`, ...).
    pub id: String,
    /// Column title with version.
    pub label: String,
    /// How to run it.
    pub kind: Kind,
    /// Why it is not measured, if it is not.
    pub unavailable: Option<String>,
}

/// Id of the kernel baseline.
pub const KERNEL: &str = "kernel";
/// Id of the Debian wireguard-go baseline.
pub const WG_GO_DEB: &str = "wg-go-deb";

fn version_line(argv: &[&str]) -> Option<String> {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .ok()?;
    let s =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    s.lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Default location of the upstream wireguard-go that `scripts/build-upstream-wireguard-go.sh`
/// builds.
pub fn default_upstream_wireguard_go() -> PathBuf {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) => PathBuf::from(x),
        None if Path::new("/work/cache").is_dir() => PathBuf::from("/work/cache"),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/isthmus"),
    };
    cache.join("wireguard-go-upstream/wireguard-go")
}

/// The implementations, in column order, with availability worked out.
pub fn implementations(o: &Options) -> Vec<Impl> {
    let wg_env = vec![
        (
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD".to_owned(),
            "1".to_owned(),
        ),
        ("LOG_LEVEL".to_owned(), "error".to_owned()),
    ];
    let mut v = vec![
        Impl {
            id: KERNEL.into(),
            label: "kernel forwarding (no tunnel)".into(),
            kind: Kind::Plain,
            unavailable: None,
        },
        Impl {
            id: "kernel-wg".into(),
            label: "kernel WireGuard".into(),
            kind: Kind::KernelWg,
            unavailable: None,
        },
    ];
    let deb = Path::new("/usr/bin/wireguard-go");
    v.push(Impl {
        id: WG_GO_DEB.into(),
        label: format!(
            "wireguard-go {} (Debian)",
            version_line(&["/usr/bin/wireguard-go", "--version"])
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
                .unwrap_or_default()
        ),
        kind: Kind::Userspace {
            argv: vec![deb.display().to_string(), "-f".into()],
            env: wg_env.clone(),
        },
        unavailable: (!deb.is_file()).then(|| {
            "/usr/bin/wireguard-go is not installed (apt-get install wireguard-go)".to_owned()
        }),
    });
    let up = o
        .upstream_wireguard_go
        .clone()
        .unwrap_or_else(default_upstream_wireguard_go);
    let up_s = up.display().to_string();
    let up_ver = up
        .is_file()
        .then(|| version_line(&[&up_s, "--version"]))
        .flatten()
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    v.push(Impl {
        id: "wg-go-up".into(),
        label: if up_ver.is_empty() { "wireguard-go (upstream)".to_owned() } else { format!("wireguard-go {up_ver} (upstream)") },
        kind: Kind::Userspace { argv: vec![up_s.clone(), "-f".into()], env: wg_env },
        unavailable: (!up.is_file()).then(|| {
            let attempt = fs::read_to_string(o.work_dir.join("build-upstream-wireguard-go.log"))
                .ok()
                .and_then(|l| l.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned))
                .map_or_else(String::new, |l| format!("; the build attempt of this run said: {l}"));
            format!("not available here: {up_s} is missing (scripts/build-upstream-wireguard-go.sh builds it; it needs Go and either the Go module proxy or local mirrors of its dependencies){attempt}")
        }),
    });
    let bt = find_in_path("boringtun-cli");
    v.push(Impl {
        id: "boringtun".into(),
        label: format!(
            "boringtun-cli {}",
            bt.as_ref()
                .and_then(|p| version_line(&[&p.display().to_string(), "--version"]))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
                .unwrap_or_default()
        ),
        kind: Kind::Userspace {
            argv: vec![
                bt.as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                "--foreground".into(),
                "--disable-drop-privileges".into(),
            ],
            env: vec![],
        },
        unavailable: bt
            .is_none()
            .then(|| "boringtun-cli not found (cargo install boringtun-cli)".to_owned()),
    });
    let dp = o.isthmus_dp.clone();
    v.push(Impl {
        id: "isthmus".into(),
        label: "isthmus-dp".into(),
        kind: Kind::Userspace {
            argv: vec![
                dp.as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                "-f".into(),
                "--metrics".into(),
                "off".into(),
            ],
            env: vec![],
        },
        unavailable: match &dp {
            Some(p) if p.is_file() => None,
            Some(p) => Some(format!("{} does not exist", p.display())),
            None => Some("no isthmus-dp binary given (--isthmus-dp)".into()),
        },
    });
    if !o.only.is_empty() {
        for i in &mut v {
            if i.unavailable.is_none()
                && !o.only.contains(&i.id)
                && i.id != KERNEL
                && i.id != WG_GO_DEB
            {
                i.unavailable = Some("not selected (--only)".into());
            }
        }
    }
    v
}

/// One measurement row.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metric {
    /// Stable id.
    pub id: &'static str,
    /// Human title.
    pub title: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Whether larger numbers are better.
    pub higher_is_better: bool,
}

/// The rows measured on each topology, in order.
pub const METRICS: [Metric; 7] = [
    Metric {
        id: "tcp1",
        title: "TCP, 1 stream",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    Metric {
        id: "tcp4",
        title: "TCP, 4 streams",
        unit: "Gbit/s",
        higher_is_better: true,
    },
    Metric {
        id: "udp64",
        title: "UDP 64-byte payload, received",
        unit: "kpps",
        higher_is_better: true,
    },
    Metric {
        id: "hub_cpu",
        title: "hub CPU per relayed UDP 64-byte packet",
        unit: "µs",
        higher_is_better: false,
    },
    Metric {
        id: "ping_avg",
        title: "ping RTT avg",
        unit: "ms",
        higher_is_better: false,
    },
    Metric {
        id: "ping_p50",
        title: "ping RTT p50",
        unit: "ms",
        higher_is_better: false,
    },
    Metric {
        id: "ping_p99",
        title: "ping RTT p99",
        unit: "ms",
        higher_is_better: false,
    },
];

/// All samples of one metric for one implementation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cell {
    /// Every successful run.
    pub samples: Vec<f64>,
    /// Their median.
    pub median: Option<f64>,
    /// The last failure, if any run failed.
    pub error: Option<String>,
}

/// Results of one topology.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Topology {
    /// Title.
    pub title: String,
    /// metric id → implementation id → cell.
    pub cells: BTreeMap<String, BTreeMap<String, Cell>>,
    /// implementation id → why it has no numbers (set-up failed).
    pub failed: BTreeMap<String, String>,
    /// What the table's columns and fixed parts are (printed above it).
    pub note: String,
}

/// Everything the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Implementations in column order.
    pub impls: Vec<Impl>,
    /// Line topology (gateway to gateway), unless skipped (`--only-floods`).
    pub line: Option<Topology>,
    /// Relay topology (hub between two peers), unless skipped.
    pub relay: Option<Topology>,
    /// Handshake floods against a hub, unless skipped.
    pub floods: Option<crate::flood::Floods>,
    /// Seconds per iperf3 run.
    pub duration: u32,
    /// Repetitions.
    pub repeat: usize,
    /// Pings per latency run.
    pub pings: u32,
    /// Load average before the run (from /proc/loadavg).
    pub loadavg_before: String,
    /// CPUs and kernel release of the machine.
    pub machine: String,
    /// Wall time of the whole namespace part.
    pub wall_seconds: f64,
}

/// A key pair as base64 strings, with the private key in a 0600 file.
pub(crate) struct Keys {
    pub(crate) private_file: PathBuf,
    pub(crate) public: String,
}

pub(crate) fn keypair(dir: &Path, name: &str) -> Result<Keys> {
    let private = netns::host(&["wg", "genkey"], Duration::from_secs(10))?;
    let private_file = dir.join(format!("{name}.key"));
    fs::write(&private_file, private.trim())
        .with_context(|| format!("writing {}", private_file.display()))?;
    fs::set_permissions(&private_file, fs::Permissions::from_mode(0o600))?;
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running wg pubkey")?;
    std::io::Write::write_all(
        child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("wg pubkey stdin"))?,
        private.trim().as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed");
    }
    Ok(Keys {
        private_file,
        public: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    })
}

/// A WireGuard end: one interface in one namespace.
pub(crate) struct End<'a> {
    pub(crate) ns: &'a str,
    pub(crate) ifname: String,
    pub(crate) keys: &'a Keys,
    pub(crate) addr: &'a str,
    /// (public key, endpoint, allowed-ips)
    pub(crate) peers: Vec<(&'a str, Option<String>, &'a str)>,
    pub(crate) routes: Vec<&'a str>,
}

/// What to tear down after an implementation's turn.
#[derive(Default)]
pub(crate) struct Up {
    procs: Vec<ProcId>,
    links: Vec<(String, String)>,
    socks: Vec<PathBuf>,
}

impl Up {
    pub(crate) fn down(self, lab: &mut Lab) {
        for p in self.procs {
            lab.stop(p);
        }
        for (ns, ifname) in self.links {
            let _ = lab.ip(&ns, &format!("link del {ifname}"));
        }
        for s in self.socks {
            let _ = fs::remove_file(s);
        }
    }
}

pub(crate) fn bring_up(lab: &mut Lab, imp: &Impl, end: &End<'_>, up: &mut Up) -> Result<()> {
    match &imp.kind {
        Kind::Plain => bail!("plain forwarding has no tunnel end"),
        Kind::KernelWg => {
            lab.ip(end.ns, &format!("link add {} type wireguard", end.ifname))
                .context("creating a kernel WireGuard interface")?;
            up.links.push((end.ns.to_owned(), end.ifname.clone()));
        }
        Kind::Userspace { argv, env } => {
            let sock = PathBuf::from(format!("/var/run/wireguard/{}.sock", end.ifname));
            let _ = fs::remove_file(&sock);
            let mut a: Vec<&str> = argv.iter().map(String::as_str).collect();
            a.push(&end.ifname);
            let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let id = lab.spawn(end.ns, &format!("{}-{}", imp.id, end.ifname), &a, &e)?;
            up.procs.push(id);
            up.links.push((end.ns.to_owned(), end.ifname.clone()));
            up.socks.push(sock.clone());
            lab.remove_on_drop(sock.clone());
            lab.wait_for_path(id, &sock, Duration::from_secs(10))
                .with_context(|| format!("{} did not come up", imp.label))?;
        }
    }
    let key = end.keys.private_file.display().to_string();
    let mut wg: Vec<String> = vec![
        "wg".into(),
        "set".into(),
        end.ifname.clone(),
        "private-key".into(),
        key,
        "listen-port".into(),
        "51820".into(),
    ];
    for (public, endpoint, allowed) in &end.peers {
        wg.extend([
            "peer".into(),
            (*public).to_owned(),
            "allowed-ips".into(),
            (*allowed).to_owned(),
        ]);
        if let Some(ep) = endpoint {
            wg.extend(["endpoint".into(), ep.clone()]);
        }
    }
    let wg: Vec<&str> = wg.iter().map(String::as_str).collect();
    lab.exec(end.ns, &wg, Duration::from_secs(10))
        .with_context(|| format!("configuring {} in {}", end.ifname, end.ns))?;
    lab.ip(end.ns, &format!("addr add {} dev {}", end.addr, end.ifname))?;
    lab.ip(end.ns, &format!("link set {} mtu 1420 up", end.ifname))?;
    for r in &end.routes {
        lab.ip(end.ns, &format!("route replace {r} dev {}", end.ifname))?;
    }
    Ok(())
}

/// Ping until one answer comes back (the first packets trigger the handshake).
pub(crate) fn wait_reachable(lab: &Lab, ns: &str, dst: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        match lab.exec(
            ns,
            &["ping", "-c", "1", "-W", "1", dst],
            Duration::from_secs(5),
        ) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                return Err(e.context(format!("{dst} unreachable from {ns} after 10 s")))
            }
            Err(_) => netns::sleep(Duration::from_millis(200))?,
        }
    }
}

fn json(s: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(s).context("parsing iperf3 JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn num(v: &serde_json::Value, path: &[&str]) -> Result<f64> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| anyhow!("iperf3 JSON lacks {}", path.join(".")))?;
    }
    cur.as_f64()
        .ok_or_else(|| anyhow!("iperf3 JSON {} is not a number", path.join(".")))
}

pub(crate) fn iperf_tcp(lab: &Lab, ns: &str, dst: &str, streams: u32, secs: u32) -> Result<f64> {
    let (p, t) = (streams.to_string(), secs.to_string());
    let out = lab.exec(
        ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-J",
            "-t",
            &t,
            "-P",
            &p,
            "--connect-timeout",
            "3000",
        ],
        Duration::from_secs(u64::from(secs) + 20),
    )?;
    Ok(num(&json(&out)?, &["end", "sum_received", "bits_per_second"])? / 1e9)
}

/// User + system CPU seconds of every process in network namespace `ns` (from
/// `/proc/PID/stat`, in USER_HZ = 100 ticks per second on Linux).
pub(crate) fn ns_cpu_seconds(ns: &str) -> f64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output();
    let Ok(out) = out else { return 0.0 };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may contain spaces) start at ")".
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .sum()
}

fn iperf_udp64(lab: &Lab, ns: &str, dst: &str, secs: u32) -> Result<f64> {
    let t = secs.to_string();
    let out = lab.exec(
        ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-J",
            "-t",
            &t,
            "-u",
            "-l",
            "64",
            "-b",
            "0",
            "--connect-timeout",
            "3000",
        ],
        Duration::from_secs(u64::from(secs) + 20),
    )?;
    let v = json(&out)?;
    let bytes = num(&v, &["end", "sum_received", "bytes"])?;
    let seconds = num(&v, &["end", "sum_received", "seconds"])?;
    if seconds <= 0.0 {
        bail!("iperf3 reported a zero-length UDP run");
    }
    Ok(bytes / 64.0 / seconds / 1000.0)
}

/// avg, p50, p99 in ms.
fn ping(lab: &Lab, ns: &str, dst: &str, count: u32) -> Result<(f64, f64, f64)> {
    let c = count.to_string();
    // ping exits 1 if some replies were lost; the replies that came are still good.
    let cmd = format!("ping -n -c {c} -i 0.01 -W 1 {dst}; exit 0");
    let out = lab.exec(
        ns,
        &["sh", "-c", &cmd],
        Duration::from_secs(u64::from(count) / 50 + 20),
    )?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if rtts.len() < (count as usize) / 2 {
        bail!("only {} of {count} pings answered", rtts.len());
    }
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| rtts[(((rtts.len() - 1) as f64) * p).round() as usize];
    Ok((
        rtts.iter().sum::<f64>() / rtts.len() as f64,
        pct(0.5),
        pct(0.99),
    ))
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Run the measurement set from `client` to `dst` (an iperf3 server listens there).
#[allow(clippy::too_many_arguments)] // one call per topology; a struct would only rename them
fn measure(
    lab: &mut Lab,
    o: &Options,
    client: &str,
    dst: &str,
    what: &str,
    server: &mut Server,
    tcp4: bool,
    cpu_ns: Option<&str>,
) -> BTreeMap<String, Cell> {
    let mut cells: BTreeMap<String, Cell> = METRICS
        .iter()
        .filter(|m| tcp4 || m.id != "tcp4")
        .filter(|m| cpu_ns.is_some() || m.id != "hub_cpu")
        .map(|m| (m.id.to_owned(), Cell::default()))
        .collect();
    let record = |cells: &mut BTreeMap<String, Cell>, id: &str, r: &Result<f64>| {
        let c = cells.entry(id.to_owned()).or_default();
        match r {
            Ok(v) => c.samples.push(*v),
            Err(e) => c.error = Some(format!("{e:#}")),
        }
    };
    for rep in 0..o.repeat {
        if netns::interrupted() {
            break;
        }
        let tcp: &[(&str, u32)] = if tcp4 {
            &[("tcp1", 1), ("tcp4", 4)]
        } else {
            &[("tcp1", 1)]
        };
        for &(id, streams) in tcp {
            let r = iperf_tcp(lab, client, dst, streams, o.duration);
            report_progress(what, id, rep, &r);
            if r.is_err() {
                server.restart(lab);
            }
            record(&mut cells, id, &r);
            let _ = netns::sleep(Duration::from_millis(300));
        }
        let cpu_before = cpu_ns.map(ns_cpu_seconds);
        let r = iperf_udp64(lab, client, dst, o.duration);
        report_progress(what, "udp64", rep, &r);
        if let (Some(ns), Some(before), Ok(kpps)) = (cpu_ns, cpu_before, &r) {
            // CPU the hub's processes spent, per packet that made it through.
            let packets = kpps * 1000.0 * f64::from(o.duration);
            if packets > 0.0 {
                let us = (ns_cpu_seconds(ns) - before) * 1e6 / packets;
                report_progress(what, "hub cpu µs/pkt", rep, &Ok(us));
                record(&mut cells, "hub_cpu", &Ok(us));
            }
        }
        if r.is_err() {
            server.restart(lab);
        }
        record(&mut cells, "udp64", &r);
        let _ = netns::sleep(Duration::from_millis(500));
        match ping(lab, client, dst, o.pings) {
            Ok((avg, p50, p99)) => {
                report_progress(what, "ping p50", rep, &Ok(p50));
                record(&mut cells, "ping_avg", &Ok(avg));
                record(&mut cells, "ping_p50", &Ok(p50));
                record(&mut cells, "ping_p99", &Ok(p99));
            }
            Err(e) => {
                let e = Err(e);
                report_progress(what, "ping", rep, &e);
                for id in ["ping_avg", "ping_p50", "ping_p99"] {
                    record(
                        &mut cells,
                        id,
                        &e.as_ref().map(|_| 0.0).map_err(|e| anyhow!("{e:#}")),
                    );
                }
            }
        }
    }
    for c in cells.values_mut() {
        c.median = median(&c.samples);
    }
    cells
}

fn report_progress(what: &str, id: &str, rep: usize, r: &Result<f64>) {
    match r {
        Ok(v) => eprintln!("  {what:<34} {id:<9} run {}: {v:.3}", rep + 1),
        Err(e) => eprintln!("  {what:<34} {id:<9} run {}: FAILED: {e:#}", rep + 1),
    }
}

/// The iperf3 server of a topology, restarted when a failed run may have wedged it.
pub(crate) struct Server {
    ns: String,
    label: String,
    id: Option<ProcId>,
}

impl Server {
    pub(crate) fn start(lab: &mut Lab, ns: &str, label: &str) -> Result<Self> {
        let mut s = Self {
            ns: ns.to_owned(),
            label: label.to_owned(),
            id: None,
        };
        s.spawn(lab)?;
        Ok(s)
    }

    fn spawn(&mut self, lab: &mut Lab) -> Result<()> {
        self.id = Some(lab.spawn(
            &self.ns,
            &self.label,
            &["iperf3", "-s", "--idle-timeout", "30"],
            &[],
        )?);
        netns::sleep(Duration::from_millis(300))
    }

    pub(crate) fn restart(&mut self, lab: &mut Lab) {
        if let Some(id) = self.id.take() {
            lab.stop(id);
        }
        let _ = self.spawn(lab);
    }

    pub(crate) fn stop(&mut self, lab: &mut Lab) {
        if let Some(id) = self.id.take() {
            lab.stop(id);
        }
    }
}

fn take_turn(topo: &mut Topology, imp: &Impl, r: Result<BTreeMap<String, Cell>>) {
    match r {
        Ok(cells) => {
            for (m, c) in cells {
                topo.cells.entry(m).or_default().insert(imp.id.clone(), c);
            }
        }
        Err(e) => {
            eprintln!("  {}: FAILED: {e:#}", imp.label);
            topo.failed.insert(imp.id.clone(), format!("{e:#}"));
        }
    }
}

/// Run the whole namespace benchmark.
///
/// # Errors
/// When the lab itself cannot be built (missing tools, no root) or on interruption; a failing
/// implementation is recorded in the results instead.
pub fn run(o: &Options) -> Result<Results> {
    netns::remove_stale();
    for tool in ["ip", "iperf3", "ping", "wg"] {
        if find_in_path(tool).is_none()
            && !Path::new("/usr/sbin").join(tool).is_file()
            && !Path::new("/sbin").join(tool).is_file()
        {
            bail!(
                "`{tool}` is not installed (scripts/install-deps.sh installs what the bench needs)"
            );
        }
    }
    let started = Instant::now();
    let loadavg_before = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut impls = implementations(o);
    let mut lab = Lab::new(&o.work_dir.join("logs"))?;
    let key_dir = o.work_dir.join("keys");
    fs::create_dir_all(&key_dir)?;
    fs::set_permissions(&key_dir, fs::Permissions::from_mode(0o700))?;

    // Kernel WireGuard: only if the module is there.
    {
        let probe = lab.netns("probe")?;
        if lab.ip(&probe, "link add wgprobe type wireguard").is_err() {
            impls[1].unavailable = Some("this kernel has no WireGuard module".into());
        }
        lab.remove_netns(&probe);
    }

    let tag = lab.tag().to_owned();
    let line = if o.only_floods {
        None
    } else {
        Some(line_topology(&mut lab, o, &impls, &key_dir, &tag)?)
    };
    let relay = if o.no_relay || o.only_floods {
        None
    } else {
        Some(relay_topology(&mut lab, o, &impls, &key_dir, &tag)?)
    };
    let floods = if o.floods || o.only_floods {
        Some(crate::flood::run(&mut lab, o, &impls, &key_dir, &tag)?)
    } else {
        None
    };
    let _ = fs::remove_dir_all(&key_dir);
    drop(lab);
    Ok(Results {
        impls,
        line,
        relay,
        floods,
        duration: o.duration,
        repeat: o.repeat,
        pings: o.pings,
        loadavg_before,
        machine: format!(
            "{} CPUs, Linux {}",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        ),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

fn line_topology(
    lab: &mut Lab,
    o: &Options,
    impls: &[Impl],
    key_dir: &Path,
    tag: &str,
) -> Result<Topology> {
    eprintln!("== line topology: ha — ga ══ gb — hb");
    let ha = lab.netns("ha")?;
    let ga = lab.netns("ga")?;
    let gb = lab.netns("gb")?;
    let hb = lab.netns("hb")?;
    lab.veth(&ha, "eth0", "10.10.1.2/24", &ga, "lan", "10.10.1.1/24")?;
    lab.veth(
        &ga,
        "trunk",
        "192.168.100.1/24",
        &gb,
        "trunk",
        "192.168.100.2/24",
    )?;
    lab.veth(&gb, "lan", "10.10.2.1/24", &hb, "eth0", "10.10.2.2/24")?;
    lab.ip(&ha, "route add default via 10.10.1.1")?;
    lab.ip(&hb, "route add default via 10.10.2.1")?;
    for g in [&ga, &gb] {
        lab.sysctl(g, "net.ipv4.ip_forward", "1")?;
    }
    let (ka, kb) = (keypair(key_dir, "ga")?, keypair(key_dir, "gb")?);
    let mut server = Server::start(lab, &hb, "iperf3-hb")?;
    let mut topo = Topology {
        title: "host — gateway ══ gateway — host".into(),
        ..Topology::default()
    };
    for (n, imp) in impls.iter().enumerate() {
        if imp.unavailable.is_some() {
            continue;
        }
        eprintln!("-- {}", imp.label);
        let what = format!("line/{}", imp.id);
        let mut up = Up::default();
        let r = (|| -> Result<BTreeMap<String, Cell>> {
            if let Kind::Plain = imp.kind {
                lab.ip(&ga, "route add 10.10.2.0/24 via 192.168.100.2")?;
                lab.ip(&gb, "route add 10.10.1.0/24 via 192.168.100.1")?;
            } else {
                let a = End {
                    ns: &ga,
                    ifname: format!("{tag}{n}a"),
                    keys: &ka,
                    addr: "10.99.0.1/30",
                    peers: vec![(
                        &kb.public,
                        Some("192.168.100.2:51820".into()),
                        "10.99.0.2/32,10.10.2.0/24",
                    )],
                    routes: vec!["10.10.2.0/24"],
                };
                let b = End {
                    ns: &gb,
                    ifname: format!("{tag}{n}b"),
                    keys: &kb,
                    addr: "10.99.0.2/30",
                    peers: vec![(
                        &ka.public,
                        Some("192.168.100.1:51820".into()),
                        "10.99.0.1/32,10.10.1.0/24",
                    )],
                    routes: vec!["10.10.1.0/24"],
                };
                bring_up(lab, imp, &a, &mut up)?;
                bring_up(lab, imp, &b, &mut up)?;
            }
            wait_reachable(lab, &ha, "10.10.2.2")?;
            Ok(measure(
                lab,
                o,
                &ha,
                "10.10.2.2",
                &what,
                &mut server,
                true,
                None,
            ))
        })();
        up.down(lab);
        if let Kind::Plain = imp.kind {
            let _ = lab.ip(&ga, "route del 10.10.2.0/24");
            let _ = lab.ip(&gb, "route del 10.10.1.0/24");
        }
        if netns::interrupted() {
            bail!("interrupted");
        }
        take_turn(&mut topo, imp, r);
    }
    for ns in [ha, ga, gb, hb] {
        lab.remove_netns(&ns);
    }
    Ok(topo)
}

/// The stock peer of the hub topologies: the fastest wireguard-go there is (upstream, with
/// its offloads) when it was built, else Debian's (which may itself be unavailable).
pub(crate) fn stock_peer(impls: &[Impl]) -> Option<&Impl> {
    impls
        .iter()
        .find(|i| i.id == "wg-go-up" && i.unavailable.is_none())
        .or_else(|| impls.iter().find(|i| i.id == WG_GO_DEB))
}

fn relay_topology(
    lab: &mut Lab,
    o: &Options,
    impls: &[Impl],
    key_dir: &Path,
    tag: &str,
) -> Result<Topology> {
    // The spokes should not be the bottleneck, or the table measures them instead of the
    // hub: use the fastest wireguard-go there is (upstream, with its offloads) when it was
    // built, else Debian's.
    let spoke = stock_peer(impls)
        .cloned()
        .ok_or_else(|| anyhow!("no wireguard-go"))?;
    eprintln!(
        "== relay topology: pa ══ hub ══ pb (spokes: {})",
        spoke.label
    );
    let mut topo = Topology {
        title: "peer ══ hub ══ peer (relay)".into(),
        note: format!(
            "Relay: two {} peers connected only to the hub; the column is the hub's implementation (\"kernel\": plain IP forwarding through the hub, no tunnel).",
            spoke.label
        ),
        ..Topology::default()
    };
    if let Some(why) = &spoke.unavailable {
        for i in impls {
            topo.failed
                .insert(i.id.clone(), format!("the spokes need wireguard-go: {why}"));
        }
        return Ok(topo);
    }
    let pa = lab.netns("pa")?;
    let hub = lab.netns("hub")?;
    let pb = lab.netns("pb")?;
    lab.veth(
        &pa,
        "uplink",
        "192.168.101.2/24",
        &hub,
        "to-pa",
        "192.168.101.1/24",
    )?;
    lab.veth(
        &pb,
        "uplink",
        "192.168.102.2/24",
        &hub,
        "to-pb",
        "192.168.102.1/24",
    )?;
    // wireguard-go as a hub relays through the kernel: the packet leaves its TUN and comes
    // back in. isthmus relays in user space and does not need this.
    lab.sysctl(&hub, "net.ipv4.ip_forward", "1")?;
    let (kpa, kpb, kh) = (
        keypair(key_dir, "pa")?,
        keypair(key_dir, "pb")?,
        keypair(key_dir, "hub")?,
    );
    let mut server = Server::start(lab, &pb, "iperf3-pb")?;
    for (n, imp) in impls.iter().enumerate() {
        if imp.unavailable.is_some() {
            continue;
        }
        eprintln!("-- hub: {}", imp.label);
        let what = format!("relay/{}", imp.id);
        let mut up = Up::default();
        let r = (|| -> Result<BTreeMap<String, Cell>> {
            if let Kind::Plain = imp.kind {
                lab.ip(&pa, "addr add 10.20.0.1/32 dev lo")?;
                lab.ip(&pb, "addr add 10.20.0.2/32 dev lo")?;
                lab.ip(
                    &pa,
                    "route add 10.20.0.2/32 via 192.168.101.1 src 10.20.0.1",
                )?;
                lab.ip(
                    &pb,
                    "route add 10.20.0.1/32 via 192.168.102.1 src 10.20.0.2",
                )?;
                lab.ip(&hub, "route add 10.20.0.1/32 via 192.168.101.2")?;
                lab.ip(&hub, "route add 10.20.0.2/32 via 192.168.102.2")?;
            } else {
                let h = End {
                    ns: &hub,
                    ifname: format!("{tag}{n}h"),
                    keys: &kh,
                    addr: "10.20.0.254/24",
                    peers: vec![
                        (
                            &kpa.public,
                            Some("192.168.101.2:51820".into()),
                            "10.20.0.1/32",
                        ),
                        (
                            &kpb.public,
                            Some("192.168.102.2:51820".into()),
                            "10.20.0.2/32",
                        ),
                    ],
                    routes: vec![],
                };
                bring_up(lab, imp, &h, &mut up)?;
                for (ns, keys, addr, ep, c) in [
                    (&pa, &kpa, "10.20.0.1/24", "192.168.101.1:51820", 'p'),
                    (&pb, &kpb, "10.20.0.2/24", "192.168.102.1:51820", 'q'),
                ] {
                    let e = End {
                        ns,
                        ifname: format!("{tag}{n}{c}"),
                        keys,
                        addr,
                        peers: vec![(&kh.public, Some(ep.into()), "10.20.0.0/24")],
                        routes: vec![],
                    };
                    bring_up(lab, &spoke, &e, &mut up)?;
                }
            }
            wait_reachable(lab, &pa, "10.20.0.2")?;
            // Four streams add little through a hub and cost a minute: not measured there.
            let cpu_ns = (!matches!(imp.kind, Kind::Plain)).then_some(hub.as_str());
            Ok(measure(
                lab,
                o,
                &pa,
                "10.20.0.2",
                &what,
                &mut server,
                false,
                cpu_ns,
            ))
        })();
        up.down(lab);
        if let Kind::Plain = imp.kind {
            let _ = lab.ip(&pa, "addr del 10.20.0.1/32 dev lo");
            let _ = lab.ip(&pb, "addr del 10.20.0.2/32 dev lo");
            let _ = lab.ip(&hub, "route del 10.20.0.1/32");
            let _ = lab.ip(&hub, "route del 10.20.0.2/32");
        }
        if netns::interrupted() {
            bail!("interrupted");
        }
        take_turn(&mut topo, imp, r);
    }
    for ns in [pa, hub, pb] {
        lab.remove_netns(&ns);
    }
    Ok(topo)
}
