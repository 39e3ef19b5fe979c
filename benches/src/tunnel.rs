//! The side-by-side tunnel benchmark in network namespaces, built on the lab crate
//! ([`isthmus_lab`]: namespaces, veth links, the WireGuard implementations, ping, iperf3).
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
//! forwarding and against Debian's wireguard-go measured in the same run. Logs and keys live
//! in the lab's temporary directory (kept with `ISTHMUS_LAB_KEEP=1`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use isthmus_lab::{
    veth, IperfLoad, Keypair, Lab, Netns, PeerSpec, PingOpts, WgIface, WgImpl, WgSpec,
};
use serde::Serialize;

use crate::interrupt;

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
    /// A build of upstream wireguard-go that the user supplies (`--wireguard-go-upstream`);
    /// without it that column is not measured.
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
    /// Run the relay capacity measurements ([`crate::capacity`]).
    pub capacity: bool,
    /// Run only them (no line or relay topology, no floods).
    pub only_capacity: bool,
    /// Measure the failover table (`--no-failover` turns it off).
    pub failover: bool,
    /// Only the failover table.
    pub only_failover: bool,
    /// Seconds per capacity run (default: `duration`).
    pub capacity_secs: Option<u32>,
    /// The capacity generator's rate cap, packets per second.
    pub capacity_rate: u64,
    /// The `isthmus-wggen` binary (default: next to this binary); without it no capacity.
    pub wggen: Option<PathBuf>,
    /// Where the report goes.
    pub work_dir: PathBuf,
}

/// How an implementation is brought up.
#[derive(Debug, Clone, Serialize)]
pub enum Kind {
    /// No tunnel: the kernel forwards plain IP (the ceiling).
    Plain,
    /// A WireGuard implementation, started by the lab.
    Wg {
        /// Which one.
        #[serde(serialize_with = "wg_label")]
        imp: WgImpl,
        /// The program it runs (none for the kernel's).
        binary: Option<PathBuf>,
    },
}

fn wg_label<S: serde::Serializer>(imp: &WgImpl, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(imp.label())
}

/// One implementation under test.
#[derive(Debug, Clone, Serialize)]
pub struct Impl {
    /// Short id (`kernel`, `wg-go-deb`, ...).
    pub id: String,
    /// Column title with version.
    pub label: String,
    /// Which build it is: the program's path and version, or the kernel's release.
    pub build: String,
    /// How to run it.
    pub kind: Kind,
    /// Why it is not measured, if it is not.
    pub unavailable: Option<String>,
}

impl Impl {
    /// Whether its work is done by a process of its own (so that its CPU can be counted):
    /// not for plain forwarding or the kernel's WireGuard.
    #[must_use]
    pub fn in_a_process(&self) -> bool {
        matches!(&self.kind, Kind::Wg { imp, .. } if *imp != WgImpl::Kernel)
    }
}

/// Id of the kernel baseline.
pub const KERNEL: &str = "kernel";
/// Id of the Debian wireguard-go baseline.
pub const WG_GO_DEB: &str = "wg-go-deb";
/// Id of isthmus-dp on its UDP backend.
pub const ISTHMUS: &str = "isthmus";
/// Id of the upstream wireguard-go the user supplies.
pub const WG_GO_UP: &str = "wg-go-up";
/// The port of every topology's iperf3 server.
const IPERF_PORT: u16 = 5201;

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

/// The second word of `BIN --version`'s first line (`wireguard-go v0.0.2022…` → `v0.0.2022…`).
fn version_of(bin: &Path) -> String {
    version_line(&[&bin.display().to_string(), "--version"])
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// isthmus-dp on its AF_XDP backend, on every interface of its namespace.
pub const ISTHMUS_AFXDP: &str = "isthmus-afxdp";

/// The interfaces of `ns` other than loopback: a tunnel end's underlay (and, for a
/// gateway, its mesh side, where the XDP program takes nothing).
fn underlay_interfaces(ns: &Netns) -> Result<String> {
    let out = ns.exec(&["ip", "-o", "link", "show"])?;
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| *n != "lo")
        .collect();
    Ok(names.join(","))
}

/// A userspace implementation run from `binary`, if there is one.
fn userspace(imp: WgImpl, binary: Option<&Path>) -> Kind {
    Kind::Wg {
        imp,
        binary: binary.map(Path::to_path_buf),
    }
}

/// The implementations, in column order, with availability worked out.
pub fn implementations(o: &Options) -> Vec<Impl> {
    let linux = kernel_release();
    let mut v = vec![
        Impl {
            id: KERNEL.into(),
            label: "kernel forwarding (no tunnel)".into(),
            build: format!("IP forwarding of Linux {linux}"),
            kind: Kind::Plain,
            unavailable: None,
        },
        Impl {
            id: "kernel-wg".into(),
            label: "kernel WireGuard".into(),
            build: format!("the wireguard module of Linux {linux}"),
            kind: userspace(WgImpl::Kernel, None),
            unavailable: None,
        },
    ];
    let deb = Path::new("/usr/bin/wireguard-go");
    let deb_version = version_line(&["dpkg-query", "-W", "-f", "${Version}", "wireguard-go"])
        .unwrap_or_else(|| "not from a package".into());
    v.push(Impl {
        id: WG_GO_DEB.into(),
        label: format!("wireguard-go {} (Debian)", version_of(deb)),
        build: format!("{} (Debian package {deb_version})", deb.display()),
        kind: userspace(WgImpl::WireguardGo, Some(deb)),
        unavailable: (!deb.is_file()).then(|| {
            "/usr/bin/wireguard-go is not installed (apt-get install wireguard-go)".to_owned()
        }),
    });
    let up = o.upstream_wireguard_go.as_deref();
    let up_version = up
        .filter(|p| p.is_file())
        .map(version_of)
        .unwrap_or_default();
    v.push(Impl {
        id: WG_GO_UP.into(),
        label: format!("wireguard-go {up_version} (upstream)").replace("  ", " "),
        build: up.map_or_else(String::new, |p| {
            format!("{} (given with --wireguard-go-upstream)", p.display())
        }),
        kind: userspace(WgImpl::WireguardGo, up),
        unavailable: match up {
            None => Some("no build given (--wireguard-go-upstream PATH)".into()),
            Some(p) if !p.is_file() => Some(format!("{} does not exist", p.display())),
            Some(_) => None,
        },
    });
    let bt = find_in_path("boringtun-cli");
    v.push(Impl {
        id: "boringtun".into(),
        label: format!(
            "boringtun-cli {}",
            bt.as_deref().map(version_of).unwrap_or_default()
        ),
        build: bt
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string()),
        kind: userspace(WgImpl::Boringtun, bt.as_deref()),
        unavailable: bt
            .is_none()
            .then(|| "boringtun-cli not found (cargo install boringtun-cli)".to_owned()),
    });
    let dp = o.isthmus_dp.as_deref();
    v.push(Impl {
        id: ISTHMUS.into(),
        label: "isthmus-dp".into(),
        build: dp.map_or_else(String::new, |p| p.display().to_string()),
        kind: userspace(WgImpl::Isthmus, dp),
        unavailable: match dp {
            Some(p) if p.is_file() => None,
            Some(p) => Some(format!("{} does not exist", p.display())),
            None => Some("no isthmus-dp binary given (--isthmus-dp)".into()),
        },
    });
    let mut afxdp = v.last().expect("isthmus is listed").clone();
    afxdp.id = ISTHMUS_AFXDP.into();
    afxdp.label = "isthmus-dp (AF_XDP)".into();
    v.push(afxdp);
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
    /// Relay capacity with the packet generator, unless skipped.
    pub capacity: Option<crate::capacity::Capacity>,
    /// Failover outages, unless skipped.
    pub failover: Option<crate::failover::Failover>,
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

/// A namespace of the benchmark: `bench<name>`, so that a run killed with SIGKILL can be
/// cleaned up by the next ([`Netns::remove_stale`]).
pub(crate) fn netns(name: &str) -> Result<Arc<Netns>> {
    Ok(Arc::new(Netns::new(&format!("bench{name}"))?))
}

/// A veth pair between `a` and `b` with an address on each end.
pub(crate) fn link(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<()> {
    veth(a, a_if, b, b_if)?;
    a.add_addr(a_if, a_addr)?;
    b.add_addr(b_if, b_addr)
}

/// A WireGuard end: one interface in one namespace.
pub(crate) struct End<'a> {
    pub(crate) ns: &'a Arc<Netns>,
    pub(crate) keys: &'a Keypair,
    pub(crate) addr: &'a str,
    /// (public key, endpoint, allowed-ips)
    pub(crate) peers: Vec<(&'a str, Option<String>, &'a str)>,
    pub(crate) routes: Vec<&'a str>,
}

/// Starts `imp` for `end` on port 51820 (MTU 1420, isthmus-dp without its metrics endpoint)
/// and adds its peers and routes; pushes the interface onto `up`, which the caller takes
/// down after the implementation's turn.
pub(crate) fn bring_up(lab: &Lab, imp: &Impl, end: &End<'_>, up: &mut Vec<WgIface>) -> Result<()> {
    bring_up_with(lab, imp, end, &Extra::default(), up)
}

/// What a gateway may have beyond an [`End`] (the capacity bench's mesh side).
#[derive(Debug, Default)]
pub(crate) struct Extra<'a> {
    /// Its mesh interfaces: isthmus-dp on AF_XDP serves them (`--mesh`) and leaves them out
    /// of its underlay; the others forward to them through the kernel.
    pub(crate) mesh: &'a [&'a str],
    /// A configuration file for isthmus-dp (both backends), next to the command line
    /// (`--config`: static routes; key and peers still come through the UAPI).
    pub(crate) isthmus_config: Option<&'a Path>,
}

/// [`bring_up`] with [`Extra`].
pub(crate) fn bring_up_with(
    lab: &Lab,
    imp: &Impl,
    end: &End<'_>,
    extra: &Extra<'_>,
    up: &mut Vec<WgIface>,
) -> Result<()> {
    let Kind::Wg { imp: wg, binary } = &imp.kind else {
        bail!("plain forwarding has no tunnel end");
    };
    let mut isthmus_args = vec!["--metrics".to_owned(), "off".to_owned()];
    if let Some(c) = extra.isthmus_config {
        isthmus_args.extend(["--config".into(), c.display().to_string()]);
    }
    if imp.id == ISTHMUS_AFXDP {
        let underlay: Vec<String> = underlay_interfaces(end.ns)?
            .split(',')
            .filter(|i| !extra.mesh.contains(i))
            .map(str::to_owned)
            .collect();
        isthmus_args.extend(["--backend".into(), "afxdp".into(), "--underlay".into()]);
        isthmus_args.push(underlay.join(","));
        if !extra.mesh.is_empty() {
            isthmus_args.extend(["--mesh".into(), extra.mesh.join(",")]);
        }
    }
    let spec = WgSpec {
        listen_port: 51820,
        addresses: vec![end.addr.to_owned()],
        keys: Some(end.keys.clone()),
        isthmus_args,
        binary: binary.clone(),
        mtu: Some(1420),
    };
    let iface = WgIface::start(end.ns, lab, *wg, &spec)
        .with_context(|| format!("{} did not come up", imp.label))?;
    up.push(iface);
    let iface = up.last().expect("just pushed");
    for (public, endpoint, allowed) in &end.peers {
        iface.add_peer(&PeerSpec {
            public_key: (*public).to_owned(),
            endpoint: endpoint.clone(),
            allowed_ips: allowed.split(',').map(str::to_owned).collect(),
            keepalive: None,
        })?;
    }
    for r in &end.routes {
        end.ns
            .exec(&["ip", "route", "replace", r, "dev", &iface.ifname])?;
    }
    Ok(())
}

/// Takes down what [`bring_up`] started.
pub(crate) fn take_down(up: Vec<WgIface>) {
    for iface in up {
        iface.stop();
    }
}

/// Ping until one answer comes back (the first packets trigger the handshake).
pub(crate) fn wait_reachable(ns: &Netns, dst: &str) -> Result<()> {
    interrupt::check()?;
    ns.wait_ping(dst, Duration::from_secs(10))
}

pub(crate) fn iperf_tcp(ns: &Netns, dst: &str, streams: u32, secs: u32) -> Result<f64> {
    interrupt::check()?;
    let t = ns.iperf_timed(dst, IPERF_PORT, secs, IperfLoad::Tcp(streams))?;
    Ok(t.bits_per_second / 1e9)
}

fn iperf_udp64(ns: &Netns, dst: &str, secs: u32) -> Result<f64> {
    interrupt::check()?;
    let t = ns.iperf_timed(dst, IPERF_PORT, secs, IperfLoad::Udp(64))?;
    if t.seconds <= 0.0 {
        bail!("iperf3 reported a zero-length UDP run");
    }
    Ok(t.bytes / 64.0 / t.seconds / 1000.0)
}

/// avg, p50, p99 in ms.
fn ping(ns: &Netns, dst: &str, count: u32) -> Result<(f64, f64, f64)> {
    interrupt::check()?;
    let opts = PingOpts {
        interval: Some(0.01),
        ..PingOpts::default()
    };
    let mut rtts = ns.ping_with(dst, count, &opts)?.rtts();
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
    o: &Options,
    client: &Netns,
    dst: &str,
    what: &str,
    server: &mut Server<'_>,
    tcp4: bool,
    cpu_ns: Option<&Netns>,
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
        if interrupt::interrupted() {
            break;
        }
        let tcp: &[(&str, u32)] = if tcp4 {
            &[("tcp1", 1), ("tcp4", 4)]
        } else {
            &[("tcp1", 1)]
        };
        for &(id, streams) in tcp {
            let r = iperf_tcp(client, dst, streams, o.duration);
            report_progress(what, id, rep, &r);
            if r.is_err() {
                server.restart();
            }
            record(&mut cells, id, &r);
            let _ = interrupt::sleep(Duration::from_millis(300));
        }
        let cpu_before = cpu_ns.map(Netns::cpu_seconds);
        let r = iperf_udp64(client, dst, o.duration);
        report_progress(what, "udp64", rep, &r);
        if let (Some(ns), Some(before), Ok(kpps)) = (cpu_ns, cpu_before, &r) {
            // CPU the hub's processes spent, per packet that made it through.
            let packets = kpps * 1000.0 * f64::from(o.duration);
            if packets > 0.0 {
                let us = (ns.cpu_seconds() - before) * 1e6 / packets;
                report_progress(what, "hub cpu µs/pkt", rep, &Ok(us));
                record(&mut cells, "hub_cpu", &Ok(us));
            }
        }
        if r.is_err() {
            server.restart();
        }
        record(&mut cells, "udp64", &r);
        let _ = interrupt::sleep(Duration::from_millis(500));
        match ping(client, dst, o.pings) {
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
pub(crate) struct Server<'a> {
    ns: &'a Netns,
    lab: &'a Lab,
    pid: Option<u32>,
}

impl<'a> Server<'a> {
    pub(crate) fn start(ns: &'a Netns, lab: &'a Lab) -> Result<Self> {
        let mut s = Self { ns, lab, pid: None };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        self.pid = Some(self.ns.iperf_server(self.lab, None, IPERF_PORT)?);
        interrupt::sleep(Duration::from_millis(300))
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        let _ = self.spawn();
    }

    pub(crate) fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.ns.stop(pid, Duration::from_secs(2));
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
    Netns::remove_stale("bench");
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
    let lab = Lab::new()?;

    // Kernel WireGuard: only if the module is there.
    if netns("probe")?
        .exec(&["ip", "link", "add", "wgprobe", "type", "wireguard"])
        .is_err()
    {
        impls[1].unavailable = Some("this kernel has no WireGuard module".into());
    }

    let only = o.only_floods || o.only_capacity || o.only_failover;
    let line = if only {
        None
    } else {
        Some(line_topology(&lab, o, &impls)?)
    };
    let relay = if o.no_relay || only {
        None
    } else {
        Some(relay_topology(&lab, o, &impls)?)
    };
    let floods = if (o.floods && !only) || o.only_floods {
        Some(crate::flood::run(&lab, o, &impls)?)
    } else {
        None
    };
    let capacity = if (o.capacity && !only) || o.only_capacity {
        Some(crate::capacity::run(&lab, o, &impls)?)
    } else {
        None
    };
    let failover = if (o.failover && !only) || o.only_failover {
        Some(crate::failover::run(o)?)
    } else {
        None
    };
    drop(lab);
    Ok(Results {
        impls,
        line,
        relay,
        floods,
        capacity,
        failover,
        duration: o.duration,
        repeat: o.repeat,
        pings: o.pings,
        loadavg_before,
        machine: format!(
            "{} CPUs, Linux {}",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            kernel_release()
        ),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

fn line_topology(lab: &Lab, o: &Options, impls: &[Impl]) -> Result<Topology> {
    eprintln!("== line topology: ha — ga ══ gb — hb");
    let (ha, ga, gb, hb) = (netns("ha")?, netns("ga")?, netns("gb")?, netns("hb")?);
    link(&ha, "eth0", "10.10.1.2/24", &ga, "lan", "10.10.1.1/24")?;
    link(
        &ga,
        "trunk",
        "192.168.100.1/24",
        &gb,
        "trunk",
        "192.168.100.2/24",
    )?;
    link(&gb, "lan", "10.10.2.1/24", &hb, "eth0", "10.10.2.2/24")?;
    ha.route(&["default", "via", "10.10.1.1"])?;
    hb.route(&["default", "via", "10.10.2.1"])?;
    for g in [&ga, &gb] {
        g.sysctl("net.ipv4.ip_forward", "1")?;
    }
    let (ka, kb) = (Keypair::generate()?, Keypair::generate()?);
    let mut server = Server::start(&hb, lab)?;
    let mut topo = Topology {
        title: "host — gateway ══ gateway — host".into(),
        ..Topology::default()
    };
    for imp in impls.iter().filter(|i| i.unavailable.is_none()) {
        eprintln!("-- {}", imp.label);
        let what = format!("line/{}", imp.id);
        let mut up = Vec::new();
        let r = (|| -> Result<BTreeMap<String, Cell>> {
            if let Kind::Plain = imp.kind {
                ga.route(&["10.10.2.0/24", "via", "192.168.100.2"])?;
                gb.route(&["10.10.1.0/24", "via", "192.168.100.1"])?;
            } else {
                let a = End {
                    ns: &ga,
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
            wait_reachable(&ha, "10.10.2.2")?;
            Ok(measure(o, &ha, "10.10.2.2", &what, &mut server, true, None))
        })();
        take_down(up);
        if let Kind::Plain = imp.kind {
            let _ = ga.exec(&["ip", "route", "del", "10.10.2.0/24"]);
            let _ = gb.exec(&["ip", "route", "del", "10.10.1.0/24"]);
        }
        interrupt::check()?;
        take_turn(&mut topo, imp, r);
    }
    server.stop();
    Ok(topo)
}

/// The stock peer of the hub topologies: the fastest wireguard-go there is (upstream, with
/// its offloads) when the user gave one, else Debian's (which may itself be unavailable).
pub(crate) fn stock_peer(impls: &[Impl]) -> Option<&Impl> {
    impls
        .iter()
        .find(|i| i.id == WG_GO_UP && i.unavailable.is_none())
        .or_else(|| impls.iter().find(|i| i.id == WG_GO_DEB))
}

fn relay_topology(lab: &Lab, o: &Options, impls: &[Impl]) -> Result<Topology> {
    // The spokes should not be the bottleneck, or the table measures them instead of the
    // hub: use the fastest wireguard-go there is.
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
    let (pa, hub, pb) = (netns("pa")?, netns("hub")?, netns("pb")?);
    link(
        &pa,
        "uplink",
        "192.168.101.2/24",
        &hub,
        "to-pa",
        "192.168.101.1/24",
    )?;
    link(
        &pb,
        "uplink",
        "192.168.102.2/24",
        &hub,
        "to-pb",
        "192.168.102.1/24",
    )?;
    // wireguard-go as a hub relays through the kernel: the packet leaves its TUN and comes
    // back in. isthmus relays in user space and does not need this.
    hub.sysctl("net.ipv4.ip_forward", "1")?;
    let (kpa, kpb, kh) = (
        Keypair::generate()?,
        Keypair::generate()?,
        Keypair::generate()?,
    );
    let mut server = Server::start(&pb, lab)?;
    for imp in impls.iter().filter(|i| i.unavailable.is_none()) {
        eprintln!("-- hub: {}", imp.label);
        let what = format!("relay/{}", imp.id);
        let mut up = Vec::new();
        let r = (|| -> Result<BTreeMap<String, Cell>> {
            if let Kind::Plain = imp.kind {
                pa.add_addr("lo", "10.20.0.1/32")?;
                pb.add_addr("lo", "10.20.0.2/32")?;
                pa.route(&["10.20.0.2/32", "via", "192.168.101.1", "src", "10.20.0.1"])?;
                pb.route(&["10.20.0.1/32", "via", "192.168.102.1", "src", "10.20.0.2"])?;
                hub.route(&["10.20.0.1/32", "via", "192.168.101.2"])?;
                hub.route(&["10.20.0.2/32", "via", "192.168.102.2"])?;
            } else {
                let h = End {
                    ns: &hub,
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
                for (ns, keys, addr, ep) in [
                    (&pa, &kpa, "10.20.0.1/24", "192.168.101.1:51820"),
                    (&pb, &kpb, "10.20.0.2/24", "192.168.102.1:51820"),
                ] {
                    let e = End {
                        ns,
                        keys,
                        addr,
                        peers: vec![(&kh.public, Some(ep.into()), "10.20.0.0/24")],
                        routes: vec![],
                    };
                    bring_up(lab, &spoke, &e, &mut up)?;
                }
            }
            wait_reachable(&pa, "10.20.0.2")?;
            // Four streams add little through a hub and cost a minute: not measured there.
            let cpu_ns = (!matches!(imp.kind, Kind::Plain)).then_some(&*hub);
            Ok(measure(
                o,
                &pa,
                "10.20.0.2",
                &what,
                &mut server,
                false,
                cpu_ns,
            ))
        })();
        take_down(up);
        if let Kind::Plain = imp.kind {
            let _ = pa.del_addr("lo", "10.20.0.1/32");
            let _ = pb.del_addr("lo", "10.20.0.2/32");
            let _ = hub.exec(&["ip", "route", "del", "10.20.0.1/32"]);
            let _ = hub.exec(&["ip", "route", "del", "10.20.0.2/32"]);
        }
        interrupt::check()?;
        take_turn(&mut topo, imp, r);
    }
    server.stop();
    Ok(topo)
}
