//! Capacity: how many packets per second a gateway on one core forwards, driven by the
//! packet generator and sink of [`crate::wggen`] (`isthmus-wggen`) instead of wireguard-go
//! spokes, so that the spokes are not the limit. Three cases ([`Case`]), each with every
//! implementation:
//!
//! ```text
//! cgen 192.168.105.2 ══ chub 192.168.105.1 | 192.168.106.1 ══ csink 192.168.106.2
//!                       chub 10.50.0.1 (to-mesh) ── cmesh 10.50.0.2 (mesh)
//! relay:     wggen send (peer A, 10.40.0.1) → gateway → wggen sink (peer B, 10.40.0.2)
//! to mesh:   wggen send (peer A, 10.40.0.1) → gateway → wggen sink --plain (cmesh 10.50.0.2)
//! from mesh: wggen send --plain (cmesh 10.50.0.2) → gateway → wggen sink (peer B, 10.40.0.2)
//! ```
//!
//! The gateway's mesh side is a plain interface (a veth to `cmesh`). isthmus-dp on AF_XDP
//! serves it (`--mesh to-mesh`, the underlay being the two other veths) and reaches the mesh
//! host by a static route to a neighbour (`via = "10.50.0.2 dev to-mesh"`, in a config file
//! given to both isthmus-dp columns; on the UDP backend it means the TUN device and the
//! kernel's route). wireguard-go and boringtun-cli, and isthmus-dp on the UDP backend, go
//! through the kernel: TUN ⇄ IP forwarding ⇄ the veth.
//!
//! The gateway's processes are pinned to the last CPU (`taskset -a -p`), generator and sink
//! to the others. The generator sends with UDP GSO (runs of packets cross the veth as one
//! buffer, as a NIC's GRO would hand them over), capped at [`Options::capacity_rate`];
//! the sink counts what its namespace's kernel took in (`/proc/net/snmp`, so that a sink
//! that falls behind does not lower the number) and decrypts one packet in 64. Per
//! implementation and inner size: packets per second at the sink; the gateway's CPU per
//! packet (its processes' utime + stime, `/proc/PID/stat`, over the run ÷ packets); and the
//! gateway core's busy time per packet (`/proc/stat`, which also counts the softirq work
//! of the packets' receive and transmit paths that runs on that core outside the process).
//! The reference is a ChaCha20-Poly1305 ceiling: open + seal of one packet per relayed
//! packet, measured by `isthmus-wggen ceiling` pinned to the same core, with ring (the AEAD
//! of boringtun, so of isthmus-dp and boringtun-cli; the ratios use it) and with the
//! chacha20poly1305 crate (shown too; its portable build is much slower here). Ratios, not
//! claims.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use isthmus_lab::{write_private_key, Keypair, Lab, Netns};
use serde::Serialize;

use crate::interrupt;
use crate::tunnel::{bring_up_with, link, netns, take_down, End, Extra, Impl, Options};
use crate::wggen::{SendReport, SinkReport};

/// Inner sizes measured.
pub const SIZES: [usize; 2] = [64, 1420];
const GEN_ADDR: &str = "192.168.105.2";
const SINK_ADDR: &str = "192.168.106.2";
const INNER_SRC: &str = "10.40.0.1:4000";
const INNER_DST: &str = "10.40.0.2:9";
/// The gateway's mesh interface, and the host behind it.
const MESH_IF: &str = "to-mesh";
const MESH_HOST: &str = "10.50.0.2";
const MESH_SINK: &str = "10.50.0.2:9";
const MESH_SRC: &str = "10.50.0.2:4000";

/// What is measured: where the packets come from and go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Peer A → gateway → peer B (decrypt, re-encrypt).
    Relay,
    /// Peer A → gateway → a host on the mesh interface, plain UDP (decrypt, forward).
    ToMesh,
    /// A host on the mesh interface, plain UDP → gateway → peer B (forward, encrypt).
    FromMesh,
}

impl Case {
    /// Every case, in report order.
    pub const ALL: [Self; 3] = [Self::Relay, Self::ToMesh, Self::FromMesh];

    /// Short id (logs, file names).
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::ToMesh => "to-mesh",
            Self::FromMesh => "from-mesh",
        }
    }
}

/// One implementation at one size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// Packets per second the sink's namespace received, per run.
    pub pps: Vec<f64>,
    /// Their median.
    pub pps_median: Option<f64>,
    /// Gateway process CPU per packet, µs (median).
    pub cpu_us: Option<f64>,
    /// Gateway core busy time per packet, µs (median).
    pub core_us: Option<f64>,
    /// What the generator sent, packets per second (median).
    pub offered_pps: Option<f64>,
    /// Valid decrypted samples at the sink (all runs).
    pub valid: u64,
    /// Invalid samples (all runs).
    pub invalid: u64,
    /// The last failure.
    pub error: Option<String>,
}

/// Results of the capacity part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Capacity {
    /// Seconds per run.
    pub secs: u32,
    /// The generator's rate cap.
    pub rate: u64,
    /// The core the gateway was pinned to.
    pub core: usize,
    /// Inner size → ChaCha20-Poly1305 open + seal ceiling with ring (boringtun's AEAD, the
    /// reference of the ratios), packets per second.
    pub ceiling: BTreeMap<usize, f64>,
    /// The same with the chacha20poly1305 crate.
    pub ceiling_rustcrypto: BTreeMap<usize, f64>,
    /// Relay (peer → peer): implementation id → inner size → row.
    pub rows: BTreeMap<String, BTreeMap<usize, Row>>,
    /// Tunnel → mesh interface (peer → plain host): the same.
    pub to_mesh: BTreeMap<String, BTreeMap<usize, Row>>,
    /// Mesh interface → tunnel (plain host → peer): the same.
    pub from_mesh: BTreeMap<String, BTreeMap<usize, Row>>,
    /// Implementation id → why it has no numbers.
    pub failed: BTreeMap<String, String>,
    /// Why nothing was measured, if nothing was.
    pub skipped: Option<String>,
}

impl Capacity {
    /// The rows of `case`.
    #[must_use]
    pub fn case(&self, case: Case) -> &BTreeMap<String, BTreeMap<usize, Row>> {
        match case {
            Case::Relay => &self.rows,
            Case::ToMesh => &self.to_mesh,
            Case::FromMesh => &self.from_mesh,
        }
    }

    fn case_mut(&mut self, case: Case) -> &mut BTreeMap<String, BTreeMap<usize, Row>> {
        match case {
            Case::Relay => &mut self.rows,
            Case::ToMesh => &mut self.to_mesh,
            Case::FromMesh => &mut self.from_mesh,
        }
    }
}

/// `v` as the `&[&str]` that `Netns::spawn` takes.
fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn wggen_path(o: &Options) -> Result<PathBuf> {
    let p = match &o.wggen {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("isthmus-wggen"),
    };
    if !p.is_file() {
        bail!(
            "the generator {} is missing (cargo build --release -p isthmus-benches --bin isthmus-wggen)",
            p.display()
        );
    }
    p.canonicalize()
        .with_context(|| format!("resolving {}", p.display()))
}

/// Busy (non-idle, non-iowait) ticks of CPU `core` from `/proc/stat`.
fn core_ticks(core: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
}

/// The last JSON line of a log, as `T`.
fn last_json<T: serde::de::DeserializeOwned>(log: &Path) -> Result<T> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no report in {}: {}", log.display(), text.trim()))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// What the relay needs for one run.
struct Ctx<'a> {
    lab: &'a Lab,
    tool: String,
    gen: &'a Netns,
    hub: &'a Netns,
    sink: &'a Netns,
    mesh: &'a Netns,
    gen_key: String,
    sink_key: String,
    hub_pub: String,
    others: String,
    core: usize,
    secs: u32,
    rate: u64,
}

/// One measurement: (pps at the sink, offered pps, process µs/pkt, core µs/pkt, valid, invalid).
fn one_run(
    c: &Ctx<'_>,
    imp: &Impl,
    case: Case,
    size: usize,
    rep: usize,
) -> Result<(f64, f64, f64, f64, u64, u64)> {
    interrupt::check()?;
    let size_s = size.to_string();
    let tag = format!("{}-{}-{size}-{rep}", case.id(), imp.id);
    let sink_log = c.lab.path(&format!("cap-sink-{tag}.log"));
    let gen_log = c.lab.path(&format!("cap-gen-{tag}.log"));
    let (src, dst) = match case {
        Case::Relay => (INNER_SRC, INNER_DST),
        Case::ToMesh => (INNER_SRC, MESH_SINK),
        Case::FromMesh => (MESH_SRC, INNER_DST),
    };
    let peer = |gateway: &str, key: &str, bind: String| -> Vec<String> {
        [
            "--gateway",
            gateway,
            "--key",
            key,
            "--gateway-key",
            &c.hub_pub,
            "--bind",
            &bind,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut sink_args: Vec<String> = ["taskset", "-c", &c.others, &c.tool, "sink"]
        .map(str::to_owned)
        .to_vec();
    let sink_ns = if case == Case::ToMesh {
        sink_args.extend(["--plain", "--bind", MESH_SINK].map(str::to_owned));
        c.mesh
    } else {
        sink_args.extend(peer(
            "192.168.106.1:51820",
            &c.sink_key,
            format!("{SINK_ADDR}:51820"),
        ));
        c.sink
    };
    sink_args.extend(
        [
            "--src", src, "--dst", dst, "--size", &size_s, "--wait", "30", "--idle", "1",
        ]
        .map(str::to_owned),
    );
    let sink_pid = sink_ns.spawn(&argv(&sink_args), &sink_log)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(&sink_log).unwrap_or_default();
        if log.contains("wggen sink: ready") {
            break;
        }
        if !sink_ns.alive(sink_pid) || Instant::now() > deadline {
            sink_ns.stop(sink_pid, Duration::from_secs(1));
            bail!("the sink did not come up: {}", log.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = c.rate.to_string();
    let secs = c.secs.to_string();
    let mut gen_args: Vec<String> = ["taskset", "-c", &c.others, &c.tool, "send"]
        .map(str::to_owned)
        .to_vec();
    let gen_ns = if case == Case::FromMesh {
        gen_args.push("--plain".into());
        c.mesh
    } else {
        gen_args.extend(peer(
            "192.168.105.1:51820",
            &c.gen_key,
            format!("{GEN_ADDR}:51820"),
        ));
        gen_args.extend(["--pool-mb", "512"].map(str::to_owned));
        c.gen
    };
    gen_args.extend(
        [
            "--src",
            src,
            "--dst",
            dst,
            "--size",
            &size_s,
            "--duration",
            &secs,
            "--rate",
            &rate,
            "--gso",
        ]
        .map(str::to_owned),
    );
    let cpu0 = c.hub.cpu_seconds();
    let core0 = core_ticks(c.core);
    let gen_pid = gen_ns.spawn(&argv(&gen_args), &gen_log)?;
    let limit = Duration::from_secs(u64::from(c.secs) + 40);
    let gen_done = gen_ns.wait_exit(gen_pid, limit);
    let sink_done = sink_ns.wait_exit(sink_pid, Duration::from_secs(35));
    let cpu = c.hub.cpu_seconds() - cpu0;
    let core = core_ticks(c.core)
        .zip(core0)
        .map(|(b, a)| b.saturating_sub(a));
    if !gen_done || !sink_done {
        gen_ns.stop(gen_pid, Duration::from_secs(1));
        sink_ns.stop(sink_pid, Duration::from_secs(1));
        bail!("the generator or the sink did not finish");
    }
    let g: SendReport = last_json(&gen_log)?;
    let s: SinkReport = last_json(&sink_log)?;
    let delivered = s.host_udp_in.unwrap_or(0).max(s.received) as f64;
    if s.received == 0 || s.secs <= 0.0 {
        bail!("nothing reached the sink (generator sent {})", g.sent);
    }
    let pps = delivered / s.secs;
    let cpu_us = cpu * 1e6 / delivered;
    let core_us = core.map_or(0.0, |t| t as f64 / 100.0 * 1e6 / delivered);
    eprintln!(
        "  capacity/{}/{:<10} {size:>4} B run {}: sent {} ({:.0} pps), sink {:.0} pps, gateway {cpu_us:.2} µs/pkt process, {core_us:.2} µs/pkt core; samples {}/{} valid",
        case.id(),
        imp.id,
        rep + 1,
        g.sent,
        g.pps,
        pps,
        s.valid,
        s.samples
    );
    Ok((pps, g.pps, cpu_us, core_us, s.valid, s.invalid))
}

/// `repeat` runs of one case at one size, as a row (a failed run is recorded in it).
///
/// # Errors
/// On interruption only.
fn measure(c: &Ctx<'_>, imp: &Impl, case: Case, size: usize, repeat: usize) -> Result<Row> {
    let mut row = Row::default();
    let (mut offered, mut cpu, mut core) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..repeat {
        match one_run(c, imp, case, size, rep) {
            Ok((pps, off, u, k, valid, invalid)) => {
                row.pps.push(pps);
                offered.push(off);
                cpu.push(u);
                core.push(k);
                row.valid += valid;
                row.invalid += invalid;
            }
            Err(e) => {
                interrupt::check()?;
                eprintln!(
                    "  capacity/{}/{} {size} B run {}: FAILED: {e:#}",
                    case.id(),
                    imp.id,
                    rep + 1
                );
                row.error = Some(format!("{e:#}"));
            }
        }
    }
    row.pps_median = median(&mut row.pps.clone());
    row.offered_pps = median(&mut offered);
    row.cpu_us = median(&mut cpu);
    row.core_us = median(&mut core);
    Ok(row)
}

/// Run the capacity measurements against every available implementation in a process.
///
/// # Errors
/// When the lab cannot be built or on interruption; a failing implementation is recorded.
pub fn run(lab: &Lab, o: &Options, impls: &[Impl]) -> Result<Capacity> {
    let ncpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut cap = Capacity {
        secs: o.capacity_secs.unwrap_or(o.duration).max(1),
        rate: o.capacity_rate,
        core: ncpu - 1,
        ..Capacity::default()
    };
    if ncpu < 2 {
        cap.skipped = Some("needs at least 2 CPUs (one for the gateway)".into());
        return Ok(cap);
    }
    let tool = match wggen_path(o) {
        Ok(t) => t.display().to_string(),
        Err(e) => {
            cap.skipped = Some(format!("{e:#}"));
            return Ok(cap);
        }
    };
    let others = if ncpu == 2 {
        "0".to_owned()
    } else {
        format!("0-{}", ncpu - 2)
    };
    eprintln!(
        "== capacity: relay, tunnel → mesh, mesh → tunnel through a gateway pinned to CPU {} ({} s per run, generators capped at {} pps)",
        cap.core, cap.secs, cap.rate
    );
    for size in SIZES {
        let core = cap.core.to_string();
        let log = lab.path(&format!("ceiling-{size}.log"));
        let probe = netns("cceil")?;
        let pid = probe.spawn(
            &[
                "taskset",
                "-c",
                &core,
                &tool,
                "ceiling",
                "--size",
                &size.to_string(),
                "--secs",
                "1",
            ],
            &log,
        )?;
        if probe.wait_exit(pid, Duration::from_secs(20)) {
            if let Ok(v) = last_json::<serde_json::Value>(&log) {
                let get = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
                if let (Some(rc), Some(r)) = (get("pps"), get("ring_pps")) {
                    eprintln!("  capacity/ceiling   {size:>4} B: {r:.0} pps with ring, {rc:.0} pps with the chacha20poly1305 crate (open + seal)");
                    cap.ceiling.insert(size, r);
                    cap.ceiling_rustcrypto.insert(size, rc);
                }
            }
        }
    }
    let (gen, hub, sink, mesh) = (
        netns("cgen")?,
        netns("chub")?,
        netns("csink")?,
        netns("cmesh")?,
    );
    link(
        &gen,
        "uplink",
        &format!("{GEN_ADDR}/24"),
        &hub,
        "to-gen",
        "192.168.105.1/24",
    )?;
    link(
        &sink,
        "uplink",
        &format!("{SINK_ADDR}/24"),
        &hub,
        "to-sink",
        "192.168.106.1/24",
    )?;
    link(
        &mesh,
        "mesh",
        &format!("{MESH_HOST}/24"),
        &hub,
        MESH_IF,
        "10.50.0.1/24",
    )?;
    mesh.route(&["10.40.0.0/24", "via", "10.50.0.1"])?;
    // wireguard-go and boringtun relay through the kernel (TUN out, TUN in), and every
    // implementation but isthmus-dp on AF_XDP reaches the mesh side through it.
    hub.sysctl("net.ipv4.ip_forward", "1")?;
    // isthmus-dp's route to the mesh host: a neighbour on the mesh interface (what isthmus-cp
    // would push for a route learned there).
    let isthmus_config = lab.path("cap-isthmus.toml");
    std::fs::write(
        &isthmus_config,
        format!("[[route]]\nprefix = \"10.50.0.0/24\"\nvia = \"{MESH_HOST} dev {MESH_IF}\"\n"),
    )
    .context("writing isthmus-dp's configuration")?;
    let (kg, ks, kh) = (
        Keypair::generate()?,
        Keypair::generate()?,
        Keypair::generate()?,
    );
    let ctx = Ctx {
        lab,
        tool,
        gen: &gen,
        hub: &hub,
        sink: &sink,
        mesh: &mesh,
        gen_key: write_private_key(lab, "cap-gen", &kg.private)?
            .display()
            .to_string(),
        sink_key: write_private_key(lab, "cap-sink", &ks.private)?
            .display()
            .to_string(),
        hub_pub: kh.public.clone(),
        others,
        core: cap.core,
        secs: cap.secs,
        rate: cap.rate,
    };
    for imp in impls
        .iter()
        .filter(|i| i.unavailable.is_none() && i.in_a_process())
    {
        eprintln!("-- gateway: {}", imp.label);
        let mut up = Vec::new();
        let mut rows: Vec<(Case, BTreeMap<usize, Row>)> = Vec::new();
        let r = (|| -> Result<()> {
            let h = End {
                ns: &hub,
                keys: &kh,
                addr: "10.40.0.254/24",
                peers: vec![
                    (
                        &kg.public,
                        Some(format!("{GEN_ADDR}:51820")),
                        "10.40.0.1/32",
                    ),
                    (
                        &ks.public,
                        Some(format!("{SINK_ADDR}:51820")),
                        "10.40.0.2/32",
                    ),
                ],
                routes: vec![],
            };
            let extra = Extra {
                mesh: &[MESH_IF],
                isthmus_config: Some(&isthmus_config),
            };
            bring_up_with(lab, imp, &h, &extra, &mut up)?;
            let pid = up.last().expect("just started").pid;
            hub.exec(&[
                "taskset",
                "-a",
                "-p",
                "-c",
                &cap.core.to_string(),
                &pid.to_string(),
            ])
            .context("pinning the gateway")?;
            // The mesh host's MAC address, known before the first packet to it.
            hub.exec(&["ping", "-c", "1", "-W", "2", MESH_HOST])
                .context("the mesh host does not answer")?;
            for case in Case::ALL {
                let mut by_size = BTreeMap::new();
                for size in SIZES {
                    by_size.insert(size, measure(&ctx, imp, case, size, o.repeat)?);
                }
                rows.push((case, by_size));
            }
            Ok(())
        })();
        take_down(up);
        interrupt::check()?;
        if let Err(e) = r {
            eprintln!("  {}: FAILED: {e:#}", imp.label);
            cap.failed.insert(imp.id.clone(), format!("{e:#}"));
        }
        for (case, by_size) in rows {
            cap.case_mut(case).insert(imp.id.clone(), by_size);
        }
    }
    Ok(cap)
}
