//! 100,000 routes in the simulator: every node learns every prefix, with no loops.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// CPU time of this thread (the test's), which unlike wall time does not depend on what
/// else the machine runs.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::*;
use crate::babel::LinkParams;

/// Prefix `k` of node `node`: even `k` an IPv4 /24 in (10 + node).0.0.0/8, odd `k` an IPv6
/// /48 in 2001:(db8 + node)::/32.
fn prefix(node: usize, k: usize) -> IpNet {
    if k.is_multiple_of(2) {
        let i = (k / 2) as u32;
        let a = Ipv4Addr::from(((10 + node as u32) << 24) | (i << 8));
        IpNet::V4(Ipv4Net::new(a, 24).expect("valid /24"))
    } else {
        let i = (k / 2) as u16;
        let a = Ipv6Addr::new(0x2001, 0x0db8 + node as u16, i, 0, 0, 0, 0, 0);
        IpNet::V6(Ipv6Net::new(a, 48).expect("valid /48"))
    }
}

#[test]
fn line_of_10_with_100k_routes_converges_without_loops() {
    const NODES: usize = 10;
    const PER_NODE: usize = 10_000;
    let wall = Instant::now();
    let cpu = thread_cpu();
    let mut sim = Sim::new(100);
    let nodes = sim.line(NODES, LinkParams::wired(), Duration::from_millis(2), 0);
    // Loops are checked on a sample at the end: following 100k prefixes from every node at
    // every step is the simulator's cost, not the router's.
    sim.check_every_step = false;
    for &n in &nodes {
        for k in 0..PER_NODE {
            sim.originate(n, prefix(n, k));
        }
    }
    let total = NODES * PER_NODE;
    // Every node has every prefix but its own.
    let t = sim
        .run_until_pred(Duration::from_secs(120), Duration::from_millis(250), |s| {
            s.nodes.iter().all(|n| n.fib.len() == total - PER_NODE)
        })
        .unwrap_or_else(|| {
            let sizes: Vec<usize> = sim.nodes.iter().map(|n| n.fib.len()).collect();
            panic!("not every node has all {total} prefixes after 120 s: {sizes:?}")
        });
    let wall_converge = wall.elapsed();
    eprintln!(
        "line of {NODES}, {total} routes: every node has every prefix after {t:?} simulated, \
         {wall_converge:?} wall; {:?}",
        sim.stats
    );
    // Paths and loops on a sample of prefixes (every 97th of each node's).
    let mut checked = 0;
    for &n in &nodes {
        for k in (0..PER_NODE).step_by(97) {
            let p = prefix(n, k);
            assert_eq!(sim.find_loop(p), None, "loop for {p}");
            for &from in &nodes {
                let path = sim
                    .path(from, p)
                    .unwrap_or_else(|| panic!("no path from {from} to {p}"));
                assert_eq!(path.len(), from.abs_diff(n) + 1, "shortest path on a line");
            }
            checked += 1;
        }
    }
    // Stays put: a periodic full dump of 100k routes (every 12–16 s) changes nothing.
    sim.check_every_step = true;
    let before = sim.stats.route_events;
    sim.run_for(Duration::from_secs(16));
    assert!(
        sim.loops.is_empty(),
        "loops: {:?}",
        &sim.loops[..sim.loops.len().min(3)]
    );
    assert_eq!(
        sim.stats.route_events, before,
        "no route changes once converged"
    );
    let sizes: Vec<(usize, usize)> = sim.nodes.iter().map(|n| n.router.table_sizes()).collect();
    let cpu = thread_cpu() - cpu;
    eprintln!(
        "checked {checked} prefixes from every node; table sizes (prefixes, sources): {sizes:?}; \
         total wall {:?}, CPU {cpu:?}",
        wall.elapsed()
    );
    // Wall time depends on the machine's load; the CPU time this thread used does not.
    assert!(cpu < Duration::from_secs(45), "took {cpu:?} of CPU");
}
