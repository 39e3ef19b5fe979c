//! Convergence, loop freedom and failure recovery on simulated networks of 100+ nodes.

use std::time::Duration;

use super::*;
use crate::babel::LinkParams;

const MS: Duration = Duration::from_millis(1);

fn wired() -> LinkParams {
    LinkParams::wired()
}

fn converge(sim: &mut Sim, limit: Duration) -> Duration {
    let t = sim
        .run_until_pred(limit, Duration::from_millis(500), |s| s.converged())
        .unwrap_or_else(|| panic!("no convergence within {limit:?}"));
    assert!(
        sim.loops.is_empty(),
        "forwarding loops: {:?}",
        &sim.loops[..sim.loops.len().min(5)]
    );
    t
}

#[test]
fn line_of_100_converges_without_loops() {
    let mut sim = Sim::new(1);
    let nodes = sim.line(100, wired(), 2 * MS, 0);
    sim.originate_one_each();
    let t = converge(&mut sim, Duration::from_secs(120));
    eprintln!("line of 100: converged in {t:?} simulated, {:?}", sim.stats);
    // Shortest paths on a line: end to end is 99 hops.
    let p = sim.path(nodes[0], "10.0.99.0/24".parse().unwrap()).unwrap();
    assert_eq!(p.len(), 100);
}

#[test]
fn ring_of_120_converges_to_shortest_paths() {
    let mut sim = Sim::new(2);
    let nodes = sim.ring(120, wired(), 2 * MS, 0);
    sim.originate_one_each();
    let t = converge(&mut sim, Duration::from_secs(120));
    eprintln!("ring of 120: converged in {t:?} simulated");
    // Node 0 to node 60's prefix: 60 hops either way; to node 10: 10 hops.
    let p = sim.path(nodes[0], "10.0.10.0/24".parse().unwrap()).unwrap();
    assert_eq!(p.len(), 11, "path {p:?}");
    let p = sim
        .path(nodes[0], "10.0.110.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(p.len(), 11, "the short way round: {p:?}");
}

#[test]
fn grid_of_110_with_loss_converges_without_loops() {
    let mut sim = Sim::new(3);
    let nodes = sim.grid(11, 10, LinkParams::mesh(), 5 * MS, 50);
    sim.originate_one_each();
    let t = converge(&mut sim, Duration::from_secs(300));
    eprintln!(
        "11x10 grid, 5% loss, ETX: converged in {t:?} simulated; {:?}",
        sim.stats
    );
    // Manhattan distance bounds the hop count from corner to corner (ETX may detour a bit).
    let far = "10.0.109.0/24".parse().unwrap();
    let p = sim.path(nodes[0], far).unwrap();
    assert!(p.len() >= 20 && p.len() <= 36, "path length {}", p.len());
    sim.run_for(Duration::from_secs(30));
    assert!(
        sim.loops.is_empty(),
        "loops under loss: {:?}",
        &sim.loops[..sim.loops.len().min(3)]
    );
    assert!(sim.converged(), "stays converged under 5% loss");
}

#[test]
fn link_failure_reroutes_within_bound_and_without_loops() {
    let mut sim = Sim::new(4);
    let nodes = sim.ring(100, wired(), 2 * MS, 0);
    sim.originate_one_each();
    converge(&mut sim, Duration::from_secs(120));
    let prefix: IpNet = "10.0.1.0/24".parse().unwrap();
    assert_eq!(sim.path(nodes[0], prefix).unwrap(), vec![0, 1]);
    // Cut 0-1: node 0 must go the long way round (99 hops).
    sim.set_link_up(0, false);
    let t = sim
        .run_until_pred(Duration::from_secs(60), 100 * MS, |s| {
            s.path(0, prefix).is_some_and(|p| p.len() == 100) && s.converged()
        })
        .expect("reroutes");
    // Detection: two missed hellos (2-out-of-3) at 1.5 and 2.5 hello intervals after the
    // last hello, then propagation round the ring.
    let hello = wired().hello_interval;
    eprintln!("ring of 100: rerouted around a cut link in {t:?} simulated");
    assert!(t <= hello * 2 + wired().ihu_interval * 7 / 2, "took {t:?}");
    assert!(
        sim.loops.is_empty(),
        "loops: {:?}",
        &sim.loops[..sim.loops.len().min(3)]
    );
}

/// The data plane's liveness probe reports the cut 200 ms after it happens (a 100 ms probe,
/// 2 misses): the neighbours go at once, so the reroute takes the probe's detection time and a
/// seqno request round the ring (about 3 s here), not two hello intervals and more.
#[test]
fn liveness_driven_link_loss_reroutes_fast_and_without_loops() {
    let mut sim = Sim::new(7);
    let nodes = sim.ring(100, LinkParams::trunk(), 2 * MS, 0);
    sim.originate_one_each();
    converge(&mut sim, Duration::from_secs(120));
    let prefix: IpNet = "10.0.1.0/24".parse().unwrap();
    assert_eq!(sim.path(nodes[0], prefix).unwrap(), vec![0, 1]);
    let cut = sim.now();
    sim.set_link_up(0, false);
    let detection = 200 * MS;
    sim.run_for(detection);
    sim.link_down_reported(0);
    sim.run_until_pred(Duration::from_secs(60), 10 * MS, |s| {
        s.path(0, prefix).is_some_and(|p| p.len() == 100) && s.converged()
    })
    .expect("reroutes");
    let t = sim.now() - cut;
    eprintln!("ring of 100: liveness-driven reroute in {t:?} simulated (detection {detection:?})");
    // Hellos alone would not even have noticed the cut before two hello intervals.
    let hello = LinkParams::trunk().hello_interval;
    assert!(t < 2 * hello, "took {t:?} (hello {hello:?})");
    assert!(
        sim.loops.is_empty(),
        "loops: {:?}",
        &sim.loops[..sim.loops.len().min(3)]
    );
}

/// Links added and removed at run time (peers added with `wg set`, removed): a shortcut across
/// a line of 100 is used as soon as it exists and given up at once when it is removed, with no
/// loop at any step.
#[test]
fn links_added_and_removed_at_run_time() {
    let mut sim = Sim::new(8);
    let nodes = sim.line(100, wired(), 2 * MS, 0);
    sim.originate_one_each();
    converge(&mut sim, Duration::from_secs(120));
    let far: IpNet = "10.0.99.0/24".parse().unwrap();
    assert_eq!(sim.path(nodes[0], far).unwrap().len(), 100);
    let shortcut = sim.connect(nodes[0], nodes[99], wired(), 2 * MS, 0);
    let t = sim
        .run_until_pred(Duration::from_secs(60), 10 * MS, |s| {
            s.path(0, far).is_some_and(|p| p.len() == 2) && s.converged()
        })
        .expect("the new link is used");
    eprintln!("line of 100: a link added at run time used after {t:?} simulated");
    let hello = wired().hello_interval;
    assert!(t <= hello * 3, "took {t:?}");
    sim.remove_link(shortcut);
    let t = sim
        .run_until_pred(Duration::from_secs(60), 10 * MS, |s| {
            s.path(0, far).is_some_and(|p| p.len() == 100) && s.converged()
        })
        .expect("the removed link is given up");
    eprintln!(
        "line of 100: a removed link given up, routes back the long way, after {t:?} simulated"
    );
    assert!(t <= hello * 3, "took {t:?}");
    assert!(
        sim.loops.is_empty(),
        "loops: {:?}",
        &sim.loops[..sim.loops.len().min(3)]
    );
}

#[test]
fn partition_and_healing() {
    let mut sim = Sim::new(5);
    let nodes = sim.line(100, wired(), 2 * MS, 0);
    sim.originate_one_each();
    converge(&mut sim, Duration::from_secs(120));
    // Split in the middle: each half must lose the other's routes (retractions and
    // expiry), and never loop meanwhile.
    sim.set_link_up(49, false);
    let t = sim
        .run_until_pred(Duration::from_secs(200), Duration::from_secs(1), |s| {
            s.converged_partitioned()
        })
        .expect("partition detected");
    eprintln!("line of 100 split: routes across the cut gone after {t:?} simulated");
    assert!(sim
        .path(nodes[0], "10.0.99.0/24".parse().unwrap())
        .is_none());
    assert!(sim
        .path(nodes[0], "10.0.48.0/24".parse().unwrap())
        .is_some());
    sim.set_link_up(49, true);
    let t = converge(&mut sim, Duration::from_secs(120));
    eprintln!("healed in {t:?} simulated");
    assert!(sim.loops.is_empty());
}

#[test]
fn withdrawn_prefix_disappears_everywhere() {
    let mut sim = Sim::new(6);
    sim.grid(10, 10, wired(), 2 * MS, 0);
    sim.originate_one_each();
    converge(&mut sim, Duration::from_secs(120));
    let p: IpNet = "10.0.55.0/24".parse().unwrap();
    sim.withdraw(55, p);
    let t = sim
        .run_until_pred(Duration::from_secs(120), 100 * MS, |s| {
            s.nodes.iter().all(|n| !n.fib.contains_key(&p))
        })
        .expect("retraction propagates");
    eprintln!("retraction reached 100 nodes in {t:?} simulated");
    assert!(
        t < Duration::from_secs(5),
        "a retraction is a triggered update: {t:?}"
    );
    assert!(sim.loops.is_empty());
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(seed);
        sim.grid(5, 5, LinkParams::mesh(), 3 * MS, 100);
        sim.originate_one_each();
        sim.run_for(Duration::from_secs(40));
        (sim.stats.delivered, sim.stats.lost, sim.stats.bytes)
    };
    assert_eq!(run(9), run(9));
}

/// With `unicast` (everything but hellos to each neighbour by unicast), a grid converges to
/// the same routes, without loops.
#[test]
fn grid_with_unicast_converges_without_loops() {
    let mut sim = Sim::new(10);
    let params = LinkParams {
        unicast: true,
        ..wired()
    };
    let nodes = sim.grid(6, 6, params, 2 * MS, 0);
    sim.originate_one_each();
    let t = converge(&mut sim, Duration::from_secs(120));
    eprintln!("6x6 grid, unicast: converged in {t:?} simulated");
    let far = "10.0.35.0/24".parse().unwrap();
    assert_eq!(sim.path(nodes[0], far).unwrap().len(), 11);
}

#[test]
fn unicast_links_measure_rtt_with_unscheduled_unicast_hellos() {
    // Timestamps on (the trunk class) and unicast: IHUs go by unicast, each with an
    // unscheduled unicast Hello in its packet, so RTT samples pair as on multicast.
    for unicast in [false, true] {
        let mut sim = Sim::new(12);
        let params = LinkParams {
            unicast,
            hello_interval: Duration::from_secs(1),
            ..LinkParams::trunk()
        };
        sim.line(2, params, 5 * MS, 0);
        sim.originate_one_each();
        converge(&mut sim, Duration::from_secs(30));
        sim.run_for(Duration::from_secs(10));
        for node in 0..2 {
            let n = sim.nodes[node].router.neighbours(sim.now());
            let rtt = n[0]
                .rtt
                .unwrap_or_else(|| panic!("unicast {unicast}: no RTT: {n:?}"));
            // 5 ms each way plus up to 1 ms of jitter.
            assert!(
                rtt >= 9 * MS && rtt <= 13 * MS,
                "unicast {unicast}: {rtt:?}"
            );
            // Unscheduled hellos keep no unicast history of their own.
            assert_eq!(
                sim.nodes[node].router.neighbours(sim.now())[0].unicast_reach,
                0
            );
        }
    }
}
