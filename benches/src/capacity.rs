//! Relay capacity: how many packets per second a gateway on one core relays from one
//! WireGuard peer to another, driven by the packet generator and sink of [`crate::wggen`]
//! (`isthmus-wggen`) instead of wireguard-go spokes, so that the spokes are not the limit.
//!
//! ```text
//! cgen 192.168.105.2 ══ chub 192.168.105.1 | 192.168.106.1 ══ csink 192.168.106.2
//! wggen send (peer A, 10.40.0.1) → gateway under test → wggen sink (peer B, 10.40.0.2)
//! ```
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
use crate::tunnel::{bring_up, link, netns, take_down, End, Impl, Options};
use crate::wggen::{SendReport, SinkReport};

/// Inner sizes measured.
pub const SIZES: [usize; 2] = [64, 1420];
const GEN_ADDR: &str = "192.168.105.2";
const SINK_ADDR: &str = "192.168.106.2";
const INNER_SRC: &str = "10.40.0.1:4000";
const INNER_DST: &str = "10.40.0.2:9";

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
    /// Implementation id → inner size → row.
    pub rows: BTreeMap<String, BTreeMap<usize, Row>>,
    /// Implementation id → why it has no numbers.
    pub failed: BTreeMap<String, String>,
    /// Why nothing was measured, if nothing was.
    pub skipped: Option<String>,
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
    size: usize,
    rep: usize,
) -> Result<(f64, f64, f64, f64, u64, u64)> {
    interrupt::check()?;
    let size_s = size.to_string();
    let sink_log = c.lab.path(&format!("cap-sink-{}-{size}-{rep}.log", imp.id));
    let gen_log = c.lab.path(&format!("cap-gen-{}-{size}-{rep}.log", imp.id));
    let sink_pid = c.sink.spawn(
        &[
            "taskset",
            "-c",
            &c.others,
            &c.tool,
            "sink",
            "--gateway",
            "192.168.106.1:51820",
            "--key",
            &c.sink_key,
            "--gateway-key",
            &c.hub_pub,
            "--bind",
            &format!("{SINK_ADDR}:51820"),
            "--src",
            INNER_SRC,
            "--dst",
            INNER_DST,
            "--size",
            &size_s,
            "--wait",
            "30",
            "--idle",
            "1",
        ],
        &sink_log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(&sink_log).unwrap_or_default();
        if log.contains("wggen sink: ready") {
            break;
        }
        if !c.sink.alive(sink_pid) || Instant::now() > deadline {
            c.sink.stop(sink_pid, Duration::from_secs(1));
            bail!("the sink did not come up: {}", log.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu0 = c.hub.cpu_seconds();
    let core0 = core_ticks(c.core);
    let rate = c.rate.to_string();
    let secs = c.secs.to_string();
    let gen_pid = c.gen.spawn(
        &[
            "taskset",
            "-c",
            &c.others,
            &c.tool,
            "send",
            "--gateway",
            "192.168.105.1:51820",
            "--key",
            &c.gen_key,
            "--gateway-key",
            &c.hub_pub,
            "--bind",
            &format!("{GEN_ADDR}:51820"),
            "--src",
            INNER_SRC,
            "--dst",
            INNER_DST,
            "--size",
            &size_s,
            "--duration",
            &secs,
            "--rate",
            &rate,
            "--gso",
            "--pool-mb",
            "512",
        ],
        &gen_log,
    )?;
    let limit = Duration::from_secs(u64::from(c.secs) + 40);
    let gen_done = c.gen.wait_exit(gen_pid, limit);
    let sink_done = c.sink.wait_exit(sink_pid, Duration::from_secs(35));
    let cpu = c.hub.cpu_seconds() - cpu0;
    let core = core_ticks(c.core)
        .zip(core0)
        .map(|(b, a)| b.saturating_sub(a));
    if !gen_done || !sink_done {
        c.gen.stop(gen_pid, Duration::from_secs(1));
        c.sink.stop(sink_pid, Duration::from_secs(1));
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
        "  capacity/{:<10} {size:>4} B run {}: sent {} ({:.0} pps), sink {:.0} pps, gateway {cpu_us:.2} µs/pkt process, {core_us:.2} µs/pkt core; samples {}/{} valid",
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
        "== relay capacity: wggen send ══ gateway (pinned to CPU {}) ══ wggen sink ({} s per run, generator capped at {} pps)",
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
    let (gen, hub, sink) = (netns("cgen")?, netns("chub")?, netns("csink")?);
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
    // wireguard-go and boringtun relay through the kernel (TUN out, TUN in).
    hub.sysctl("net.ipv4.ip_forward", "1")?;
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
        let mut rows = BTreeMap::new();
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
            bring_up(lab, imp, &h, &mut up)?;
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
            for size in SIZES {
                let mut row = Row::default();
                let (mut offered, mut cpu, mut core) = (Vec::new(), Vec::new(), Vec::new());
                for rep in 0..o.repeat {
                    match one_run(&ctx, imp, size, rep) {
                        Ok((pps, off, c, k, valid, invalid)) => {
                            row.pps.push(pps);
                            offered.push(off);
                            cpu.push(c);
                            core.push(k);
                            row.valid += valid;
                            row.invalid += invalid;
                        }
                        Err(e) => {
                            interrupt::check()?;
                            eprintln!(
                                "  capacity/{} {size} B run {}: FAILED: {e:#}",
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
                rows.insert(size, row);
            }
            Ok(())
        })();
        take_down(up);
        interrupt::check()?;
        if let Err(e) = r {
            eprintln!("  {}: FAILED: {e:#}", imp.label);
            cap.failed.insert(imp.id.clone(), format!("{e:#}"));
        }
        if !rows.is_empty() {
            cap.rows.insert(imp.id.clone(), rows);
        }
    }
    Ok(cap)
}
