//! Babel MAC authentication (RFC 8967) between simulated routers: neighbours form only
//! through a completed challenge, keys roll over without losing a route, a wrong key and a
//! replayed packet are refused and counted, a restarted neighbour is challenged again.

use std::time::Duration;

use super::*;
use crate::babel::{Algorithm, LinkParams, MacKey, Refused};

const MS: Duration = Duration::from_millis(1);

fn key(id: &str, algorithm: Algorithm, byte: u8) -> MacKey {
    MacKey::new(id, algorithm, vec![byte; algorithm.max_key_len()]).unwrap()
}

/// Two nodes on one link with `keys` at each end, each originating a prefix.
fn pair(keys: [Vec<MacKey>; 2]) -> Sim {
    let mut sim = Sim::new(11);
    sim.line(2, LinkParams::wired(), 2 * MS, 0);
    for (end, k) in keys.into_iter().enumerate() {
        sim.set_keys(0, end, k);
    }
    sim.originate_one_each();
    sim
}

fn auth(sim: &Sim, node: NodeId) -> &crate::babel::AuthCounters {
    &sim.nodes[node].router.counters().auth
}

#[test]
fn keyed_neighbours_converge_through_a_challenge_each_way() {
    for alg in Algorithm::ALL {
        let k = key("k", alg, 7);
        let mut sim = pair([vec![k.clone()], vec![k]]);
        let t = sim
            .run_until_pred(Duration::from_secs(30), 10 * MS, |s| s.converged())
            .expect("converges");
        eprintln!("{}: converged in {t:?}", alg.as_str());
        for n in 0..2 {
            let a = auth(&sim, n);
            assert!(a.challenges_ok >= 1 && a.challenges_tx >= 1, "{a:?}");
            assert_eq!(a.refused(Refused::BadMac), 0);
            assert_eq!(a.refused(Refused::Replay), 0, "{a:?}");
        }
    }
}

#[test]
fn a_wrong_key_or_none_makes_no_neighbour_and_is_counted() {
    let mut sim = pair([
        vec![key("a", Algorithm::HmacSha256, 1)],
        vec![key("a", Algorithm::HmacSha256, 2)],
    ]);
    sim.run_for(Duration::from_secs(20));
    assert!(sim.nodes[0].router.neighbours(sim.now()).is_empty());
    assert!(auth(&sim, 0).refused(Refused::BadMac) >= 3);
    assert!(!sim.converged());
    // An end without keys: its packets have no MAC, and it ignores ours' trailer but
    // cannot answer a challenge, so no neighbour forms at the keyed end.
    let mut sim = pair([vec![key("a", Algorithm::Blake2s128, 1)], vec![]]);
    sim.run_for(Duration::from_secs(20));
    assert!(sim.nodes[0].router.neighbours(sim.now()).is_empty());
    assert!(auth(&sim, 0).refused(Refused::NoMac) >= 3);
}

#[test]
fn keys_roll_over_without_losing_the_neighbour() {
    let old = key("old", Algorithm::HmacSha256, 1);
    let new = key("new", Algorithm::Blake2s128, 2);
    let mut sim = pair([vec![old.clone()], vec![old.clone()]]);
    sim.run_until_pred(Duration::from_secs(30), 10 * MS, |s| s.converged())
        .expect("converges");
    // Both keys on one end, then on the other, then the old one dropped at each end: at
    // every step some MAC of the sender is a key of the receiver.
    for (end, keys) in [
        (0, vec![old.clone(), new.clone()]),
        (1, vec![new.clone(), old.clone()]),
        (0, vec![new.clone()]),
        (1, vec![new.clone()]),
    ] {
        sim.set_keys(0, end, keys);
        sim.run_for(Duration::from_secs(10));
        assert!(sim.converged(), "after a step at end {end}");
        for n in 0..2 {
            assert_eq!(sim.nodes[n].router.neighbours(sim.now()).len(), 1);
        }
    }
    assert_eq!(auth(&sim, 0).refused(Refused::BadMac), 0);
    assert_eq!(auth(&sim, 1).refused(Refused::BadMac), 0);
}

#[test]
fn replayed_packets_are_refused_and_a_restarted_neighbour_is_challenged_again() {
    let k = key("k", Algorithm::HmacSha256, 9);
    let mut sim = pair([vec![k.clone()], vec![k]]);
    sim.tap(0);
    sim.run_until_pred(Duration::from_secs(30), 10 * MS, |s| s.converged())
        .expect("converges");
    sim.run_for(Duration::from_secs(5));
    let old: Vec<Packet> = sim.tapped.drain(..).collect();
    assert!(old.len() > 4);
    let before = (auth(&sim, 0).refused(Refused::Replay)) + auth(&sim, 1).refused(Refused::Replay);
    for p in &old {
        sim.replay(p);
    }
    let after = auth(&sim, 0).refused(Refused::Replay) + auth(&sim, 1).refused(Refused::Replay);
    // Every replayed packet was refused: its counter is not newer than the last one of its
    // kind (the index is known by now, so none is merely challenged).
    assert_eq!(after - before, old.len() as u64);
    assert!(sim.converged());
    // Node 1 restarts its end: a new index, counter from 0. Node 0 challenges it and takes
    // its packets again.
    let ok = auth(&sim, 0).challenges_ok;
    sim.restart_end(0, 1);
    sim.run_until_pred(Duration::from_secs(30), 10 * MS, |s| {
        s.converged() && s.nodes[1].router.neighbours(s.now()).len() == 1
    })
    .expect("back after the restart");
    assert!(auth(&sim, 0).challenges_ok > ok);
}
