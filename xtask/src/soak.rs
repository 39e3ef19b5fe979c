//! `cargo xtask soak --minutes N`: the demo's islands under churn while traffic flows, with
//! the daemons' resources sampled.
//!
//! Every few seconds one change, in turn: a peer added over the UAPI to a gateway (and
//! removed at the next turn), a subnet announced by babeld on island 2 (an address added to
//! r2's host interface; withdrawn at the next turn), a trunk cut (restored at the next turn),
//! an isthmus-cp killed with SIGKILL (restarted at the next turn). A ping runs from h1 to h2
//! throughout. Every 5 s the resident memory, open file descriptors and threads of every
//! isthmus-dp and isthmus-cp are read from /proc. At the end the churn stops, everything is
//! restored, and every route must come back: the islands' subnets on both routers and on
//! every gateway, and h1 ↔ h2 over IPv4 and IPv6. Prints per daemon the first and last
//! sample and the slope of the resident memory (least squares, after the first minute's
//! warm-up when the run is long enough), and fails on a lost route, a dead daemon, or file
//! descriptors or threads that grew.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use isthmus_lab::babel_islands::{BabelIslands, IslandsSpec};
use isthmus_lab::{Keypair, PingProbe};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the soak started.
    at: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn read_sample(pid: u32, at: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Sample {
        at,
        rss_kib: field("VmRSS:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
        threads: field("Threads:")?,
    })
}

/// Least-squares slope of RSS over time, KiB per minute.
fn slope_kib_per_min(s: &[Sample]) -> f64 {
    let n = s.len() as f64;
    if s.len() < 2 {
        return 0.0;
    }
    let mx = s.iter().map(|x| x.at).sum::<f64>() / n;
    let my = s.iter().map(|x| x.rss_kib as f64).sum::<f64>() / n;
    let num: f64 = s
        .iter()
        .map(|x| (x.at - mx) * (x.rss_kib as f64 - my))
        .sum();
    let den: f64 = s.iter().map(|x| (x.at - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}

/// The churn's steps, in turn.
const STEPS: [&str; 4] = ["peer", "route", "trunk", "control plane"];

/// Runs the soak for `minutes` (fractions allowed).
pub fn run(minutes: f64) -> Result<()> {
    let isl_spec = IslandsSpec {
        trunks: 2,
        hello: 1,
        liveness: Some((0.1, 3)),
        ..IslandsSpec::default()
    };
    let mut isl = BabelIslands::build_spec(&isl_spec).context("building the islands")?;
    let routers = isl.routers().context("starting babeld on r1 and r2")?;
    for (node, prefix) in [("r1", "10.2.1.0/24"), ("r2", "10.1.1.0/24")] {
        isl.wait_route(node, prefix, Duration::from_secs(40))?;
    }
    let started = Instant::now();
    let length = Duration::from_secs_f64(minutes * 60.0);
    // By process: "isthmus-dp g1a" / "isthmus-cp g1a (pid)", its samples.
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let sample_all = |isl: &BabelIslands, samples: &mut BTreeMap<String, Vec<Sample>>| {
        let at = started.elapsed().as_secs_f64();
        for g in &isl.gateways {
            let dp = isl.t.wg(&g.node).pid;
            let cp = g.cp.pid();
            for (name, pid) in [
                (format!("isthmus-dp {}", g.node), dp),
                (format!("isthmus-cp {} ({cp})", g.node), cp),
            ] {
                if let Some(s) = read_sample(pid, at) {
                    samples.entry(name).or_default().push(s);
                }
            }
        }
    };
    let h2_if = isl.router_ifs[1].1.clone();
    let (h1, r2) = (
        std::sync::Arc::clone(isl.t.ns("h1")),
        std::sync::Arc::clone(isl.t.ns("r2")),
    );
    let probe = PingProbe::start_from(&h1, Some("10.1.1.2"), "10.2.1.2", 50)?;
    let mut turn = 0usize;
    let mut pending: Option<(usize, String)> = None;
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    let mut last_step = Instant::now();
    let mut changes = 0u32;
    eprintln!("soak: {minutes} min of churn ({})", STEPS.join(", "));
    while started.elapsed() < length {
        if last_sample.elapsed() >= Duration::from_secs(5) {
            sample_all(&isl, &mut samples);
            last_sample = Instant::now();
        }
        if last_step.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        last_step = Instant::now();
        // Undo the previous change, then make the next one.
        if let Some((step, what)) = pending.take() {
            undo(&mut isl, step, &what, &h2_if)?;
        }
        let step = turn % STEPS.len();
        let gw = isl.gateways[(turn / STEPS.len()) % isl.gateways.len()]
            .node
            .clone();
        let what = match step {
            0 => {
                let k = Keypair::generate()?;
                let dp = isl.t.wg(&gw);
                dp.wg(&[
                    "set",
                    &dp.ifname,
                    "peer",
                    &k.public,
                    "allowed-ips",
                    &format!("10.250.{}.0/24", turn % 250),
                ])?;
                format!("{gw} {}", k.public)
            }
            1 => {
                let addr = format!("10.2.{}.1/24", 100 + turn % 100);
                r2.exec(&["ip", "addr", "add", &addr, "dev", &h2_if])?;
                addr
            }
            2 => {
                let k = (turn / STEPS.len()) % 2;
                isl.set_trunk(k, false)?;
                k.to_string()
            }
            _ => {
                isl.kill_cp(&gw);
                gw
            }
        };
        pending = Some((step, what));
        turn += 1;
        changes += 1;
    }
    if let Some((step, what)) = pending.take() {
        undo(&mut isl, step, &what, &h2_if)?;
    }
    sample_all(&isl, &mut samples);
    let result = probe.finish()?;
    eprintln!(
        "soak: {changes} changes in {:.0?}; ping h1 -> h2 every 50 ms: {} of {} answered, longest gap {:.2?}",
        started.elapsed(),
        result.received,
        result.sent,
        result.longest_gap
    );

    // Every route back.
    let mut lost = Vec::new();
    let mut wanted = vec![
        ("r1".to_string(), "10.2.1.0/24"),
        ("r2".to_string(), "10.1.1.0/24"),
        ("r1".to_string(), "fd00:2:1::/64"),
        ("r2".to_string(), "fd00:1:1::/64"),
    ];
    for g in &isl.gateways {
        let other = if g.island == 1 {
            "10.2.1.0/24"
        } else {
            "10.1.1.0/24"
        };
        wanted.push((g.node.clone(), other));
    }
    for (node, prefix) in &wanted {
        if let Err(e) = isl.wait_route(node, prefix, Duration::from_secs(40)) {
            lost.push(format!("{node} {prefix}: {e:#}"));
        }
    }
    for (from, to) in [
        ("h1", "10.2.1.2"),
        ("h2", "10.1.1.2"),
        ("h1", "fd00:2:1::2"),
    ] {
        if let Err(e) = isl.t.ns(from).wait_ping(to, Duration::from_secs(20)) {
            lost.push(format!("{from} -> {to}: {e:#}"));
        }
    }
    drop(routers);

    // The resources table.
    let warmup = if minutes >= 5.0 { 60.0 } else { 20.0 };
    let mut grew = Vec::new();
    println!("\n| process | samples | RSS first | RSS last | RSS slope | fds first → last | threads first → last |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, s) in &samples {
        let (first, last) = (s[0], s[s.len() - 1]);
        let steady: Vec<Sample> = s.iter().copied().filter(|x| x.at >= warmup).collect();
        let slope = slope_kib_per_min(if steady.len() >= 3 { &steady } else { s });
        println!(
            "| {name} | {} | {} KiB | {} KiB | {slope:+.1} KiB/min | {} → {} | {} → {} |",
            s.len(),
            first.rss_kib,
            last.rss_kib,
            first.fds,
            last.fds,
            first.threads,
            last.threads
        );
        // A process that lived through the churn must not hold more descriptors or threads
        // than it started with (a few for connections in flight).
        if s.len() >= 3 && (last.fds > first.fds + 4 || last.threads > first.threads + 2) {
            grew.push(name.clone());
        }
    }
    for g in &isl.gateways {
        if !isl.t.wg(&g.node).alive() {
            lost.push(format!("isthmus-dp on {} died", g.node));
        }
    }
    if !grew.is_empty() {
        bail!("descriptors or threads grew: {}", grew.join(", "));
    }
    if !lost.is_empty() {
        bail!("after the soak:\n{}", lost.join("\n"));
    }
    println!("soak: every route back, every daemon alive");
    Ok(())
}

/// Undoes the change `what` of step `step`.
fn undo(isl: &mut BabelIslands, step: usize, what: &str, h2_if: &str) -> Result<()> {
    match step {
        0 => {
            let (gw, key) = what.split_once(' ').context("peer step")?;
            let dp = isl.t.wg(gw);
            dp.wg(&["set", &dp.ifname, "peer", key, "remove"])?;
        }
        1 => {
            isl.t
                .ns("r2")
                .exec(&["ip", "addr", "del", what, "dev", h2_if])?;
        }
        2 => isl.set_trunk(what.parse()?, true)?,
        _ => isl.restart_cp(what)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                at: f64::from(i) * 6.0,
                rss_kib: 1000 + u64::try_from(i).unwrap() * 10,
                fds: 0,
                threads: 0,
            })
            .collect();
        // 10 KiB every 6 s.
        assert!((slope_kib_per_min(&s) - 100.0).abs() < 1e-9);
        assert_eq!(slope_kib_per_min(&s[..1]), 0.0);
    }
}
