#![allow(missing_docs)] // criterion_group! generates an undocumented public function
//! Control-plane route pushes into the data plane's FIB (`Core`), as the ctl server applies
//! `FibSnapshot` and `FibUpdate` messages:
//!
//! - `snapshot_100k_into_empty`: `Core::set_control_routes` of 100,000 routes (IPv4 /16–/32,
//!   IPv6 /32–/128, next hops over 4 peers and Local) into a core with no control routes;
//! - `snapshot_100k_replace`: the same, replacing a different 100,000-route snapshot;
//! - `snapshot_100k_same`: the same snapshot again (a control plane reconnecting);
//! - `update_1_in_100k`, `update_1000_in_100k`: `Core::update_control_routes` adding, then
//!   (next iteration) withdrawing k routes of a 100k table: one call per iteration.
//!
//! The quick mode also times the first one-route update after a snapshot, which copies the
//! live table into the spare (see `Core::publish_ops`).
//!
//! `FIB_PUSH_QUICK=1 cargo bench -p isthmus-benches --bench fib_push` skips criterion and
//! prints min / median of a few plain-timed runs (useful on a noisy shared machine).

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isthmus_dataplane::fib::Via;
use isthmus_dataplane::forward::{Core, PeerSpec, Settings};
use isthmus_dataplane::keys::Key;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUTES: usize = 100_000;
const PEERS: u8 = 4;

fn peer_key(i: u8) -> Key {
    Key([i + 1; 32])
}

/// `n` distinct routes: 60 % IPv4 /16–/32, 40 % IPv6 /32–/128 under 2000::/3; next hops
/// spread over the peers, 5 % Local.
fn routes(rng: &mut StdRng, n: usize) -> Vec<(IpNet, Via)> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let prefix = if rng.gen_bool(0.6) {
            let len = match rng.gen_range(0..100) {
                0..=59 => 24,
                60..=89 => rng.gen_range(16..24),
                _ => rng.gen_range(25..=32),
            };
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(rng.gen::<u32>()), len)
                    .unwrap()
                    .trunc(),
            )
        } else {
            let len = match rng.gen_range(0..100) {
                0..=39 => 48,
                40..=69 => rng.gen_range(32..48),
                70..=89 => rng.gen_range(49..=64),
                _ => rng.gen_range(65..=128),
            };
            let a = (rng.gen::<u128>() >> 3) | (1u128 << 125);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc())
        };
        if !seen.insert(prefix) {
            continue;
        }
        let via = if rng.gen_range(0..100) < 5 {
            Via::Local
        } else {
            Via::Peer(peer_key(rng.gen_range(0..PEERS)))
        };
        out.push((prefix, via));
    }
    out
}

/// A core with the peers (each with a small allowed-IPs range) and no control routes.
fn core() -> Arc<Core> {
    let core = Core::new("bench0", Settings::default());
    for i in 0..PEERS {
        let mut spec = PeerSpec {
            public_key: peer_key(i),
            ..Default::default()
        };
        spec.settings.allowed_ips = vec![format!("10.200.{i}.0/24").parse().unwrap()];
        core.upsert_peer(spec).unwrap();
    }
    core
}

fn quick(name: &str, runs: usize, mut f: impl FnMut() -> Duration) {
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    eprintln!(
        "fib_push: {name}: min {:.3} ms, median {:.3} ms ({runs} runs)",
        t[0].as_secs_f64() * 1e3,
        t[runs / 2].as_secs_f64() * 1e3
    );
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0xf1b_0005);
    let a = routes(&mut rng, ROUTES);
    let b = routes(&mut rng, ROUTES);
    let extra = routes(&mut rng, 1000);
    let base = core();
    base.set_control_routes(a.clone());

    if std::env::var_os("FIB_PUSH_QUICK").is_some() {
        quick("snapshot_100k_into_empty", 5, || {
            let c = core();
            let r = a.clone();
            let t = Instant::now();
            c.set_control_routes(r);
            t.elapsed()
        });
        let c2 = core();
        c2.set_control_routes(a.clone());
        let mut flip = false;
        quick("snapshot_100k_replace", 6, || {
            flip = !flip;
            let r = if flip { b.clone() } else { a.clone() };
            let t = Instant::now();
            c2.set_control_routes(r);
            t.elapsed()
        });
        let mut flip = false;
        quick("update_1_right_after_a_snapshot", 6, || {
            flip = !flip;
            c2.set_control_routes(if flip { b.clone() } else { a.clone() });
            let t = Instant::now();
            c2.update_control_routes(extra[..1].to_vec(), &[]);
            t.elapsed()
        });
        quick("snapshot_100k_same", 5, || {
            let r = a.clone();
            let t = Instant::now();
            base.set_control_routes(r);
            t.elapsed()
        });
        let live = base.fib();
        quick("Fib::settle of the 100k table", 5, || {
            let mut f = (*live).clone();
            let t = Instant::now();
            f.settle();
            t.elapsed()
        });
        quick("Fib::settled_clone of the 100k table", 5, || {
            let t = Instant::now();
            let f = live.settled_clone();
            let d = t.elapsed();
            drop(black_box(f));
            d
        });
        drop(live);
        for k in [1usize, 1000] {
            let mut add = true;
            quick(&format!("update_{k}_in_100k"), 41, || {
                let t = Instant::now();
                if add {
                    base.update_control_routes(extra[..k].to_vec(), &[]);
                } else {
                    let rm: Vec<IpNet> = extra[..k].iter().map(|r| r.0).collect();
                    base.update_control_routes(Vec::new(), &rm);
                }
                add = !add;
                t.elapsed()
            });
        }
        return;
    }

    let mut g = c.benchmark_group("fib_push");
    g.sample_size(10);
    g.bench_function("snapshot_100k_into_empty", |bn| {
        bn.iter_batched(
            || (core(), a.clone()),
            |(c, r)| {
                c.set_control_routes(r);
                c
            },
            BatchSize::PerIteration,
        )
    });
    let c2 = core();
    c2.set_control_routes(a.clone());
    let mut flip = false;
    g.bench_function("snapshot_100k_replace", |bn| {
        bn.iter_batched(
            || {
                flip = !flip;
                if flip {
                    b.clone()
                } else {
                    a.clone()
                }
            },
            |r| c2.set_control_routes(r),
            BatchSize::PerIteration,
        )
    });
    drop(c2);
    g.bench_function("snapshot_100k_same", |bn| {
        bn.iter_batched(
            || a.clone(),
            |r| base.set_control_routes(r),
            BatchSize::PerIteration,
        )
    });
    g.sample_size(50);
    for k in [1usize, 1000] {
        let adds = extra[..k].to_vec();
        let removes: Vec<IpNet> = adds.iter().map(|r| r.0).collect();
        let mut add = true;
        g.bench_function(format!("update_{k}_in_100k"), |bn| {
            bn.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let v = if add { adds.clone() } else { Vec::new() };
                    let t = Instant::now();
                    if add {
                        base.update_control_routes(v, &[]);
                    } else {
                        base.update_control_routes(v, black_box(&removes));
                    }
                    total += t.elapsed();
                    add = !add;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
