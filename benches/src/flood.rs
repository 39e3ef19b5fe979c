//! Handshake floods against a hub, in network namespaces: what a stock peer of the hub
//! notices while an attacker that knows only the hub's public key floods it with handshake
//! initiations.
//!
//! ```text
//! peer 10.30.0.1 ══ 192.168.103.0/24 ══ hub 10.30.0.254
//!                                         │ 192.168.104.0/24
//!                                       attacker 192.168.104.2 (lab-tool wg-attack)
//! ```
//!
//! The peer is a stock wireguard-go ([`crate::tunnel`]'s relay spokes: upstream if given,
//! else Debian's); the hub is each implementation in turn. Scenarios, each against the same
//! established session:
//!
//! - no flood: the baseline of the same run;
//! - `flood`: initiations with random bodies and a valid mac1, from one address, as fast as
//!   the tool goes (up to `--flood-rate`);
//! - `flood --answer-cookies`: the same from a source that reads its cookie replies and sends
//!   valid mac2 from then on (it owns its address: only a per-source limit stops it);
//! - `garbage`: datagrams of random type and length alternating with transport messages to
//!   an index nobody holds (what the classifier and the index lookup must drop cheaply).
//!
//! Per scenario, each phase under its own attack of `secs` seconds:
//!
//! 1. a 10 ms ping from the peer to the hub's tunnel address: loss; the hub's CPU seconds
//!    (its processes, as in the relay table) over the attack ÷ the messages the attacker
//!    sent: CPU per bogus message;
//! 2. iperf3 TCP, one stream, peer → hub through the tunnel: throughput, and its ratio to
//!    the same run without flood;
//! 3. a new handshake: the peer forgets its session (`wg set … peer … remove`, then added
//!    again) and pings; the time until the first answer is the handshake's.
//!
//! One run of each (floods are long; no repetition). Nothing here asserts a speed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use isthmus_lab::{Keypair, Lab, Netns, PeerSpec, PingOpts, WgIface};
use serde::Serialize;

use crate::interrupt;
use crate::tunnel::{
    bring_up, iperf_tcp, link, netns, stock_peer, take_down, wait_reachable, End, Impl, Kind,
    Options, Server,
};

/// The hub's tunnel address (the peer pings it and runs iperf3 to it).
const HUB_TUNNEL: &str = "10.30.0.254";
/// Where the attacker sends: the hub's address on the attacker's link.
const ATTACK_TARGET: &str = "192.168.104.1:51820";
/// The hub's endpoint as the peer knows it.
const HUB_ENDPOINT: &str = "192.168.103.1:51820";
/// The peer's allowed-ips for the hub.
const PEER_ALLOWED: &str = "10.30.0.0/24";
/// How long a new handshake may take before it counts as not completed.
pub const HANDSHAKE_TIMEOUT_S: u32 = 20;
/// Time the flood has before a measurement starts (to put the hub under load).
const WARMUP: Duration = Duration::from_millis(500);

/// One attack scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scenario {
    /// Stable id.
    pub id: &'static str,
    /// Human title.
    pub title: &'static str,
    /// `wg-attack` arguments (none: no attacker).
    pub args: &'static [&'static str],
}

/// Id of the scenario without flood.
pub const BASELINE: &str = "none";

/// The scenarios, in order (the baseline first: the others' TCP ratios need it).
pub const SCENARIOS: [Scenario; 4] = [
    Scenario {
        id: BASELINE,
        title: "no flood",
        args: &[],
    },
    Scenario {
        id: "flood",
        title: "initiation flood (valid mac1)",
        args: &["--kinds", "flood"],
    },
    Scenario {
        id: "flood-cookies",
        title: "initiation flood, cookie-answering source",
        args: &["--kinds", "flood", "--answer-cookies"],
    },
    Scenario {
        id: "garbage",
        title: "garbage and unknown-index transport",
        args: &["--kinds", "garbage,transport"],
    },
];

/// What one implementation did in one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// Messages the attacker sent during the ping phase.
    pub sent: Option<u64>,
    /// For how long it sent them, seconds.
    pub attack_seconds: Option<f64>,
    /// Cookie replies the attacker received (and, with `--answer-cookies`, used).
    pub cookies_received: Option<u64>,
    /// `sent` ÷ `attack_seconds`.
    pub msgs_per_s: Option<f64>,
    /// Pings the peer sent to the hub's tunnel address.
    pub pings_sent: Option<u32>,
    /// Pings answered.
    pub pings_received: Option<u32>,
    /// Loss in percent.
    pub loss_pct: Option<f64>,
    /// iperf3 TCP, one stream, peer → hub, Gbit/s.
    pub tcp_gbps: Option<f64>,
    /// `tcp_gbps` ÷ the same without flood.
    pub tcp_ratio: Option<f64>,
    /// Time from the first ping of a fresh session to its first answer, ms.
    pub handshake_ms: Option<f64>,
    /// No answer within [`HANDSHAKE_TIMEOUT_S`].
    pub handshake_timed_out: bool,
    /// CPU seconds of the hub's processes over the ping phase (with its attack).
    pub hub_cpu_seconds: Option<f64>,
    /// The same as a share of one core (1.0 = one core busy).
    pub hub_cpu_share: Option<f64>,
    /// `hub_cpu_seconds` ÷ `sent`, µs.
    pub cpu_us_per_msg: Option<f64>,
    /// What failed.
    pub errors: Vec<String>,
}

/// Results of the flood part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Floods {
    /// The peer's implementation (label).
    pub peer: String,
    /// Seconds per phase.
    pub secs: u32,
    /// Rate the attacker was asked for.
    pub rate: u64,
    /// [`HANDSHAKE_TIMEOUT_S`].
    pub handshake_timeout_s: u32,
    /// implementation id → scenario id → row.
    pub rows: BTreeMap<String, BTreeMap<String, Row>>,
    /// implementation id → why it stopped early (its rows so far are kept).
    pub failed: BTreeMap<String, String>,
    /// Why nothing was measured, if nothing was.
    pub skipped: Option<String>,
}

/// Seconds per phase: `--flood-secs`, else 10 s scaled by `--duration` (3 s: 10 s).
pub fn phase_secs(o: &Options) -> u32 {
    o.flood_secs
        .unwrap_or_else(|| (o.duration * 10).div_ceil(3))
        .max(2)
}

fn lab_tool(o: &Options) -> Result<PathBuf> {
    let p = match &o.lab_tool {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("lab-tool"),
    };
    if !p.is_file() {
        bail!(
            "the attacker {} is missing (cargo build --release -p isthmus-lab --bin lab-tool)",
            p.display()
        );
    }
    p.canonicalize()
        .with_context(|| format!("resolving {}", p.display()))
}

/// Everything a scenario needs about the current hub.
struct Ctx<'a> {
    lab: &'a Lab,
    imp: &'a Impl,
    /// The stock peer's interface.
    peer: &'a WgIface,
    hub_ns: &'a Netns,
    att_ns: &'a Netns,
    hub_key: &'a str,
    tool: String,
    secs: u32,
    rate: u64,
}

/// An attacker started by [`Ctx::attack`].
struct Attacker {
    pid: u32,
    log: PathBuf,
    secs: f64,
}

impl Ctx<'_> {
    /// Start the attacker for `secs` seconds.
    fn attack(&self, s: &Scenario, phase: &str, secs: f64) -> Result<Attacker> {
        interrupt::check()?;
        let (rate, secs_s) = (self.rate.to_string(), format!("{secs:.1}"));
        let mut argv = vec![
            self.tool.as_str(),
            "wg-attack",
            "--to",
            ATTACK_TARGET,
            "--key",
            self.hub_key,
            "--rate",
            &rate,
            "--secs",
            &secs_s,
        ];
        argv.extend(s.args);
        let log = self
            .lab
            .path(&format!("attack-{}-{}-{phase}.log", self.imp.id, s.id));
        let pid = self.att_ns.spawn(&argv, &log)?;
        Ok(Attacker { pid, log, secs })
    }

    /// Wait for an attacker to finish by itself (it is stopped if it overruns by 20 s) and
    /// read its report.
    fn finish(&self, a: &Attacker) -> Result<Attack> {
        let done = self
            .att_ns
            .wait_exit(a.pid, Duration::from_secs_f64(a.secs + 20.0));
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        if !done {
            self.att_ns.stop(a.pid, Duration::from_secs(2));
            bail!("wg-attack did not finish within {:.0} s", a.secs + 20.0);
        }
        match self.att_ns.exit_status(a.pid) {
            Some(st) if st.success() => parse_attack(&log),
            st => bail!("wg-attack exited ({st:?}): {}", log.trim()),
        }
    }

    /// Stop an attacker before its time.
    fn stop(&self, a: &Attacker) {
        self.att_ns.stop(a.pid, Duration::from_secs(2));
    }
}

/// What `wg-attack` reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Attack {
    sent: u64,
    secs: f64,
    send_errors: u64,
    cookies: u64,
}

/// Parse "sent N in S s (E send errors), cookies received C".
fn parse_attack(log: &str) -> Result<Attack> {
    let line = log
        .lines()
        .find(|l| l.starts_with("sent "))
        .ok_or_else(|| anyhow!("wg-attack printed no summary: {}", log.trim()))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| -> Result<&str> {
        w.get(i)
            .copied()
            .ok_or_else(|| anyhow!("unexpected wg-attack summary {line:?}"))
    };
    let bad = || anyhow!("unexpected wg-attack summary {line:?}");
    Ok(Attack {
        sent: n(1)?.parse().map_err(|_| bad())?,
        secs: n(3)?.parse().map_err(|_| bad())?,
        send_errors: n(5)?.trim_start_matches('(').parse().map_err(|_| bad())?,
        cookies: w.last().ok_or_else(bad)?.parse().map_err(|_| bad())?,
    })
}

/// `count` pings at 10 ms to the hub's tunnel address: (sent, received, ms it took).
fn ping_loss(ns: &Netns, count: u32) -> Result<(u32, u32, f64)> {
    interrupt::check()?;
    let opts = PingOpts {
        interval: Some(0.01),
        ..PingOpts::default()
    };
    let r = ns.ping_with(HUB_TUNNEL, count, &opts)?;
    let ms = r
        .elapsed_ms
        .ok_or_else(|| anyhow!("no time in ping's summary: {:?}", r.output.trim()))?;
    Ok((r.transmitted, r.received, ms))
}

/// The first reply of a ping at `interval_ms` that stopped at it: when it came, counted
/// from the first request, in ms. The first request's own round trip when it was answered;
/// else the later of ping's elapsed time (it stops at the reply; its clock advances at each
/// request, so this is short by up to one interval; `elapsed_ms`, from its summary) and
/// `(icmp_seq − 1) × interval + time` (short when ping sends slower than asked, as under load).
fn parse_first_reply(out: &str, interval_ms: f64, elapsed_ms: Option<f64>) -> Option<f64> {
    let line = out
        .lines()
        .find(|l| l.contains(" bytes from ") && l.contains("time="))?;
    let seq: f64 = line
        .split("icmp_seq=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let time: f64 = line
        .split("time=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    if seq <= 1.0 {
        return Some(time);
    }
    let by_seq = (seq - 1.0) * interval_ms + time;
    Some(elapsed_ms.map_or(by_seq, |ms| ms.max(by_seq)))
}

/// The peer forgets its session with the hub and pings: ms until the first answer.
fn new_handshake(c: &Ctx<'_>) -> Result<Option<f64>> {
    interrupt::check()?;
    c.peer
        .wg(&["set", &c.peer.ifname, "peer", c.hub_key, "remove"])?;
    c.peer.add_peer(&PeerSpec {
        public_key: c.hub_key.to_owned(),
        endpoint: Some(HUB_ENDPOINT.into()),
        allowed_ips: vec![PEER_ALLOWED.into()],
        keepalive: None,
    })?;
    // With a deadline, a count of 1 keeps sending until one reply came.
    let opts = PingOpts {
        interval: Some(0.01),
        deadline: Some(HANDSHAKE_TIMEOUT_S),
        ..PingOpts::default()
    };
    let r = c.peer.ns.ping_with(HUB_TUNNEL, 1, &opts)?;
    Ok(parse_first_reply(&r.output, 10.0, r.elapsed_ms))
}

fn progress(what: &str, m: &str, v: &str) {
    eprintln!("  {what:<34} {m:<14} {v}");
}

/// One scenario against the current hub.
fn scenario(
    c: &Ctx<'_>,
    server: &mut Server<'_>,
    s: &Scenario,
    baseline: Option<&Row>,
) -> Result<Row> {
    let mut row = Row::default();
    let flood = !s.args.is_empty();
    let what = format!("flood/{}/{}", c.imp.id, s.id);
    let secs = f64::from(c.secs);
    // CPU is only attributable to a process in user space.
    let cpu_counts = c.imp.in_a_process();

    // 1. ping loss, and the hub's CPU over the whole attack.
    let cpu0 = c.hub_ns.cpu_seconds();
    let t0 = Instant::now();
    // ping sends slower than asked when the CPUs are busy: the attack lasts longer than
    // the pings should, so that all of them are under it (a note says when not).
    let attack_secs = secs * 1.5 + 1.0;
    let att = if flood {
        Some(c.attack(s, "ping", attack_secs)?)
    } else {
        None
    };
    interrupt::sleep(WARMUP)?;
    let pings = ping_loss(&c.peer.ns, c.secs * 100);
    let attack = att.map(|a| c.finish(&a)).transpose();
    interrupt::sleep(Duration::from_millis(300))?; // the hub drains its socket
    let cpu = c.hub_ns.cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    match pings {
        Ok((tx, rx, ms)) => {
            row.pings_sent = Some(tx);
            row.pings_received = Some(rx);
            if tx > 0 {
                let loss = 100.0 * f64::from(tx - rx.min(tx)) / f64::from(tx);
                row.loss_pct = Some(loss);
                progress(
                    &what,
                    "ping loss %",
                    &format!("{loss:.2} ({rx}/{tx} in {:.1} s)", ms / 1000.0),
                );
            }
            let under = attack_secs - WARMUP.as_secs_f64();
            if flood && ms / 1000.0 > under {
                row.errors.push(format!(
                    "the pings took {:.1} s, longer than the {under:.1} s of attack around them",
                    ms / 1000.0
                ));
            }
        }
        Err(e) => row.errors.push(format!("ping: {e:#}")),
    }
    if cpu_counts {
        row.hub_cpu_seconds = Some(cpu);
        row.hub_cpu_share = Some(cpu / wall);
    }
    match attack {
        Ok(Some(a)) => {
            row.sent = Some(a.sent);
            row.attack_seconds = Some(a.secs);
            row.cookies_received = Some(a.cookies);
            if a.secs > 0.0 {
                row.msgs_per_s = Some(a.sent as f64 / a.secs);
            }
            if cpu_counts && a.sent > 0 {
                row.cpu_us_per_msg = Some(cpu * 1e6 / a.sent as f64);
            }
            let per_msg = row
                .cpu_us_per_msg
                .map_or_else(|| "–".to_owned(), |u| format!("{u:.3}"));
            progress(
                &what,
                "attacker",
                &format!(
                    "{} msgs in {:.1} s ({} send errors, {} cookies back); hub CPU {cpu:.2} s = {per_msg} µs/msg",
                    a.sent, a.secs, a.send_errors, a.cookies
                ),
            );
        }
        Ok(None) => progress(&what, "hub CPU", &format!("{cpu:.2} s in {wall:.1} s")),
        Err(e) => row.errors.push(format!("attacker: {e:#}")),
    }

    // 2. TCP through the tunnel.
    let att = if flood {
        let a = c.attack(s, "tcp", secs + 1.5)?;
        interrupt::sleep(WARMUP)?;
        Some(a)
    } else {
        None
    };
    let tcp = iperf_tcp(&c.peer.ns, HUB_TUNNEL, 1, c.secs);
    if let Some(a) = att {
        if let Err(e) = c.finish(&a) {
            row.errors.push(format!("attacker (TCP phase): {e:#}"));
        }
    }
    match tcp {
        Ok(g) => {
            row.tcp_gbps = Some(g);
            if flood {
                row.tcp_ratio = baseline
                    .and_then(|b| b.tcp_gbps)
                    .filter(|b| *b > 0.0)
                    .map(|b| g / b);
            }
            let r = row
                .tcp_ratio
                .map_or_else(String::new, |r| format!(" ({r:.2}× no flood)"));
            progress(&what, "TCP Gbit/s", &format!("{g:.3}{r}"));
        }
        Err(e) => {
            row.errors.push(format!("iperf3: {e:#}"));
            server.restart();
        }
    }

    // 3. A new handshake.
    let hs_secs = f64::from(HANDSHAKE_TIMEOUT_S) + 5.0;
    let att = if flood {
        let a = c.attack(s, "handshake", hs_secs)?;
        interrupt::sleep(Duration::from_secs(1))?;
        Some(a)
    } else {
        None
    };
    let hs = new_handshake(c);
    if let Some(a) = att {
        c.stop(&a);
    }
    match hs {
        Ok(Some(ms)) => {
            row.handshake_ms = Some(ms);
            progress(&what, "handshake ms", &format!("{ms:.1}"));
        }
        Ok(None) => {
            row.handshake_timed_out = true;
            progress(
                &what,
                "handshake",
                &format!("none within {HANDSHAKE_TIMEOUT_S} s"),
            );
        }
        Err(e) => row.errors.push(format!("new handshake: {e:#}")),
    }
    for e in &row.errors {
        progress(&what, "FAILED", e);
    }
    // The next scenario starts from a working session.
    wait_reachable(&c.peer.ns, HUB_TUNNEL).context("the session did not recover")?;
    Ok(row)
}

/// Run the flood scenarios against every available hub implementation.
///
/// # Errors
/// When the lab cannot be built or on interruption; a failing implementation is recorded.
pub fn run(lab: &Lab, o: &Options, impls: &[Impl]) -> Result<Floods> {
    let mut f = Floods {
        secs: phase_secs(o),
        rate: o.flood_rate,
        handshake_timeout_s: HANDSHAKE_TIMEOUT_S,
        ..Floods::default()
    };
    let Some(peer) = stock_peer(impls).cloned() else {
        f.skipped = Some("no wireguard-go for the peer".into());
        return Ok(f);
    };
    f.peer = peer.label.clone();
    if let Some(why) = &peer.unavailable {
        f.skipped = Some(format!("the peer needs wireguard-go: {why}"));
        return Ok(f);
    }
    let tool = match lab_tool(o) {
        Ok(t) => t.display().to_string(),
        Err(e) => {
            f.skipped = Some(format!("{e:#}"));
            return Ok(f);
        }
    };
    eprintln!(
        "== handshake floods: peer ══ hub ── attacker (peer: {}; {} s per phase, attacker asked for {} msgs/s)",
        peer.label, f.secs, f.rate
    );
    let (pn, hub, att) = (netns("fpeer")?, netns("fhub")?, netns("fatt")?);
    link(
        &pn,
        "uplink",
        "192.168.103.2/24",
        &hub,
        "to-peer",
        "192.168.103.1/24",
    )?;
    link(
        &att,
        "uplink",
        "192.168.104.2/24",
        &hub,
        "to-att",
        "192.168.104.1/24",
    )?;
    let (kp, kh) = (Keypair::generate()?, Keypair::generate()?);
    let mut server = Server::start(&hub, lab)?;
    for imp in impls {
        if imp.unavailable.is_some() || matches!(imp.kind, Kind::Plain) {
            continue;
        }
        eprintln!("-- hub: {}", imp.label);
        let mut up = Vec::new();
        let mut rows = BTreeMap::new();
        let r = (|| -> Result<()> {
            let h = End {
                ns: &hub,
                keys: &kh,
                addr: "10.30.0.254/24",
                peers: vec![(
                    &kp.public,
                    Some("192.168.103.2:51820".into()),
                    "10.30.0.1/32",
                )],
                routes: vec![],
            };
            bring_up(lab, imp, &h, &mut up)?;
            let p = End {
                ns: &pn,
                keys: &kp,
                addr: "10.30.0.1/24",
                peers: vec![(&kh.public, Some(HUB_ENDPOINT.into()), PEER_ALLOWED)],
                routes: vec![],
            };
            bring_up(lab, &peer, &p, &mut up)?;
            wait_reachable(&pn, HUB_TUNNEL)?;
            let c = Ctx {
                lab,
                imp,
                peer: up.last().expect("the peer is up"),
                hub_ns: &hub,
                att_ns: &att,
                hub_key: &kh.public,
                tool: tool.clone(),
                secs: f.secs,
                rate: f.rate,
            };
            for s in &SCENARIOS {
                let row = scenario(&c, &mut server, s, rows.get(BASELINE))?;
                rows.insert(s.id.to_owned(), row);
            }
            Ok(())
        })();
        take_down(up);
        interrupt::check()?;
        if let Err(e) = r {
            eprintln!("  {}: FAILED: {e:#}", imp.label);
            f.failed.insert(imp.id.clone(), format!("{e:#}"));
        }
        if !rows.is_empty() {
            f.rows.insert(imp.id.clone(), rows);
        }
    }
    server.stop();
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tools_outputs() {
        assert_eq!(
            parse_attack("noise\nsent 344513 in 2.0 s (3 send errors), cookies received 17\n")
                .unwrap(),
            Attack {
                sent: 344_513,
                secs: 2.0,
                send_errors: 3,
                cookies: 17
            }
        );
        assert!(parse_attack("lab-tool: boom").is_err());
        let reply = "64 bytes from 10.30.0.254: icmp_seq=1 ttl=64 time=1.25 ms\n";
        assert_eq!(parse_first_reply(reply, 10.0, Some(0.0)), Some(1.25));
        let late = "64 bytes from 10.30.0.254: icmp_seq=387 ttl=64 time=3.25 ms\n";
        assert_eq!(parse_first_reply(late, 10.0, Some(5102.0)), Some(5102.0));
        let no_summary = "64 bytes from 10.30.0.254: icmp_seq=501 ttl=64 time=3.25 ms\n";
        assert_eq!(parse_first_reply(no_summary, 10.0, None), Some(5003.25));
        assert_eq!(parse_first_reply("no answer", 10.0, None), None);
        let unreachable = "From 10.30.0.1 icmp_seq=1 Destination Host Unreachable\n64 bytes from 10.30.0.254: icmp_seq=2 ttl=64 time=1.00 ms\n";
        assert_eq!(parse_first_reply(unreachable, 10.0, None), Some(11.0));
    }
}
