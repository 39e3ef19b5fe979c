#![allow(missing_docs)] // criterion_group! generates an undocumented public function
//! The Babel control plane (`isthmus_controlplane::babel`, `::sim`):
//!
//! - `babel/converge_grid_10x10`: the deterministic simulator, 100 routers in a 10 × 10 grid
//!   of wired links (2 ms), one or two prefixes each, from cold start until every node
//!   reaches every prefix. Wall time per run; the simulated time (the same every run) is
//!   printed and written to the report's extras.
//! - `babel/updates_new_10k`: a router whose neighbour has completed the hello/IHU exchange
//!   receives 10,000 updates (IPv4 /24 and IPv6 /48 from 10 originators, packed 1400-byte
//!   packets as `packet::Writer` builds them) for prefixes it does not know, then flushes its
//!   triggered updates to a second link. Throughput in updates.
//! - `babel/updates_refresh_10k`: the same updates again to a router that holds them (the
//!   periodic refresh of a converged network).
//! - `babel/updates_refresh_10k_one_link_mac_{none,hmac-sha256,blake2s128}`: the refresh on
//!   a router with one link, without a MAC key and with one (RFC 8967): every packet sealed
//!   by the neighbour (outside the timing) and checked by the router (MAC, then packet
//!   counter). The ratios to `..._none` are the cost of authentication.
//! - memory (not a criterion bench, measured once at start): resident memory growth of a
//!   router learning 100,000 prefixes from one neighbour, then from a second one as well
//!   (`VmRSS` in `/proc/self/status`), printed as bytes per route and written to the extras.
//!
//! Extras (simulated seconds, bytes) go to `<target>/criterion/extra/babel.json`, which
//! `cargo xtask bench` puts in its report.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isthmus_benches::report::{write_extras, Extra};
use isthmus_controlplane::babel::auth::seal;
use isthmus_controlplane::babel::packet::{parse, MULTICAST};
use isthmus_controlplane::babel::packet::{Msg, Writer};
use isthmus_controlplane::babel::{
    Algorithm, Config, LinkConfig, LinkId, LinkParams, MacKey, Router,
};
use isthmus_controlplane::sim::Sim;

const UPDATES: usize = 10_000;
const MEMORY_ROUTES: usize = 100_000;

/// Prefix `k`: even `k` an IPv4 /24 in 10.0.0.0/8 and beyond, odd `k` an IPv6 /48.
fn prefix(k: usize) -> IpNet {
    let i = (k / 2) as u32;
    if k.is_multiple_of(2) {
        let a = Ipv4Addr::from((10u32 << 24) + (i << 8));
        IpNet::V4(Ipv4Net::new(a, 24).expect("valid /24"))
    } else {
        let a = Ipv6Addr::new(0x2001, 0x0db8 + (i >> 16) as u16, i as u16, 0, 0, 0, 0, 0);
        IpNet::V6(Ipv6Net::new(a, 48).expect("valid /48"))
    }
}

fn our_addr(link: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, link as u16)
}

fn neighbour_addr(link: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 2, link as u16)
}

/// Packets of everything in `msgs`, as a neighbour would send them.
fn packets(msgs: &[Msg]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = Writer::new(1400);
    for m in msgs {
        if !w.push(m) {
            out.push(std::mem::replace(&mut w, Writer::new(1400)).finish());
            assert!(w.push(m), "a message fits an empty packet: {m:?}");
        }
    }
    if !w.is_empty() {
        out.push(w.finish());
    }
    out
}

/// Updates for prefixes `0..n` from 10 originators, as one neighbour announces them.
fn updates(n: usize, metric: u16) -> Vec<Vec<u8>> {
    let mut msgs: Vec<Msg> = (0..n)
        .map(|k| Msg::Update {
            prefix: Some(prefix(k)),
            v4_via_v6: k % 2 == 0,
            interval: 1600,
            seqno: 1,
            metric,
            router_id: [2, 0, 0, 0, 0, 0, 0, 1 + (k % 10) as u8],
            next_hop: None,
        })
        .collect();
    // Grouped by originator, as a Babel speaker sends them.
    msgs.sort_by_key(|m| match m {
        Msg::Update { router_id, .. } => *router_id,
        _ => [0; 8],
    });
    packets(&msgs)
}

/// A router with `links` wired links, each with one neighbour that has completed the
/// hello/IHU exchange (link cost 96).
fn router(links: u32, now: Instant) -> Router {
    let mut r = Router::new(Config::new([1, 0, 0, 0, 0, 0, 0, 1]), now);
    for l in 0..links {
        r.add_link(
            LinkId(l),
            LinkConfig {
                name: format!("l{l}"),
                params: LinkParams::wired(),
                address: our_addr(l),
                ipv4: None,
                v4_via_v6: true,
                max_packet: 1400,
                keys: Vec::new(),
            },
            now,
        );
    }
    // Neighbours on links 0 and 1 only (link 2 and above have none: a downstream side).
    for l in 0..links.min(2) {
        for seqno in 1..=2u16 {
            let hello = packets(&[
                Msg::Hello {
                    unicast: false,
                    seqno,
                    interval: 400,
                    timestamp: None,
                },
                Msg::Ihu {
                    rxcost: 96,
                    interval: 1200,
                    address: Some(IpAddr::V6(our_addr(l))),
                    timestamp: None,
                },
            ]);
            r.handle(now, LinkId(l), IpAddr::V6(neighbour_addr(l)), &hello[0]);
        }
    }
    drain(&mut r);
    r
}

/// The neighbour's PC index in the keyed benches.
const INDEX: [u8; 8] = [9; 8];

/// `packet` as the neighbour on link 0 sends it: sealed with `counter` when there is a key.
fn sealed(packet: &[u8], counter: u32, key: Option<&MacKey>) -> Vec<u8> {
    let mut p = packet.to_vec();
    if let Some(k) = key {
        let keys = std::slice::from_ref(k);
        seal(&mut p, counter, &INDEX, keys, neighbour_addr(0), MULTICAST);
    }
    p
}

/// A router with one wired link, keyed with `key` if any, whose neighbour has completed the
/// hello/IHU exchange (with a key, after answering the router's challenge); the neighbour's
/// packet counter is at 3.
fn one_link_router(key: Option<&MacKey>, now: Instant) -> Router {
    let mut r = Router::new(Config::new([1, 0, 0, 0, 0, 0, 0, 1]), now);
    let cfg = LinkConfig {
        name: "l0".into(),
        params: LinkParams::wired(),
        address: our_addr(0),
        ipv4: None,
        v4_via_v6: true,
        max_packet: 1400,
        keys: key.into_iter().cloned().collect(),
    };
    r.add_link(LinkId(0), cfg, now);
    let hello = |seqno| Msg::Hello {
        unicast: false,
        seqno,
        interval: 400,
        timestamp: None,
    };
    let ihu = Msg::Ihu {
        rxcost: 96,
        interval: 1200,
        address: Some(IpAddr::V6(our_addr(0))),
        timestamp: None,
    };
    let from = IpAddr::V6(neighbour_addr(0));
    r.handle(
        now,
        LinkId(0),
        from,
        &sealed(&packets(&[hello(1), ihu.clone()])[0], 1, key),
    );
    let mut nonce = None;
    r.handle_timeout(now);
    while let Some(t) = r.poll_transmit() {
        for m in parse(&t.bytes).map(|(m, _)| m).unwrap_or_default() {
            if let Msg::ChallengeRequest { nonce: n } = m {
                nonce = Some(n);
            }
        }
    }
    assert_eq!(
        nonce.is_some(),
        key.is_some(),
        "a new neighbour is challenged"
    );
    let mut second = vec![hello(2), ihu.clone()];
    second.extend(nonce.map(|nonce| Msg::ChallengeReply { nonce }));
    r.handle(now, LinkId(0), from, &sealed(&packets(&second)[0], 2, key));
    r.handle(
        now,
        LinkId(0),
        from,
        &sealed(&packets(&[hello(3), ihu])[0], 3, key),
    );
    drain(&mut r);
    assert_eq!(r.neighbours(now).len(), 1, "the neighbour is up");
    r
}

fn drain(r: &mut Router) -> usize {
    let mut n = 0;
    while let Some(t) = r.poll_transmit() {
        n += t.bytes.len();
    }
    while r.poll_event().is_some() {
        n += 1;
    }
    n
}

fn feed(r: &mut Router, link: u32, now: Instant, pkts: &[Vec<u8>]) {
    for p in pkts {
        r.handle(now, LinkId(link), IpAddr::V6(neighbour_addr(link)), p);
    }
    // Triggered updates go out after the flush delay.
    r.handle_timeout(now + Duration::from_millis(20));
    black_box(drain(r));
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `<target>/criterion`: the bench binary is `<target>/<profile>/deps/babel-…`.
fn criterion_dir() -> Option<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => std::env::current_exe().ok()?.ancestors().nth(3)?.to_owned(),
    };
    Some(target.join("criterion"))
}

/// Runs the router's timers for `d` (urgent updates are resent, then given up on: nobody
/// acknowledges them here).
fn settle(r: &mut Router, from: Instant, d: Duration) {
    let mut t = from;
    while t <= from + d {
        r.handle_timeout(t);
        black_box(drain(r));
        t += Duration::from_millis(250);
    }
}

/// Heap bytes in use (glibc's count of allocated chunks), which fragmentation does not blur.
fn heap() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as u64
}

/// Gives freed heap back to the kernel, so that RSS shows what is in use.
fn trim() {
    // SAFETY: malloc_trim only walks and releases glibc's free lists; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn memory(extras: &mut Vec<Extra>) {
    let now = Instant::now();
    let a = updates(MEMORY_ROUTES, 100);
    // The second neighbour's routes must be feasible (refmetric below the distance we
    // advertise, 196) to be kept, and not better by the hysteresis, to stay unselected.
    let b = updates(MEMORY_ROUTES, 90);
    let mut r = router(3, now);
    trim();
    let (base, heap0) = (rss(), heap());
    feed(&mut r, 0, now, &a);
    let (peak, heap_peak) = (rss(), heap());
    settle(&mut r, now, Duration::from_secs(2));
    trim();
    let (one, heap1) = (rss(), heap());
    feed(&mut r, 1, now + Duration::from_secs(2), &b);
    settle(&mut r, now + Duration::from_secs(2), Duration::from_secs(2));
    trim();
    let (two, heap2) = (rss(), heap());
    let (prefixes, sources) = r.table_sizes();
    assert_eq!(prefixes, MEMORY_ROUTES, "every prefix learned");
    let n = MEMORY_ROUTES as f64;
    let mib = |b: u64| b as f64 / 1048576.0;
    let per1 = heap1.saturating_sub(heap0) as f64 / n;
    let per2 = heap2.saturating_sub(heap1) as f64 / n;
    eprintln!(
        "babel memory: {MEMORY_ROUTES} prefixes from one neighbour: RSS +{:.1} MiB right after \
         learning them (heap in use +{:.1} MiB, urgent updates in flight on 3 links); once \
         settled heap in use +{:.1} MiB ({per1:.0} B per route, {sources} sources), RSS +{:.1} \
         MiB; a second route for each from another neighbour: heap +{:.1} MiB ({per2:.0} B per \
         route); process RSS {:.1} MiB",
        mib(peak.saturating_sub(base)),
        mib(heap_peak.saturating_sub(heap0)),
        mib(heap1.saturating_sub(heap0)),
        mib(one.saturating_sub(base)),
        mib(heap2.saturating_sub(heap1)),
        mib(two)
    );
    extras.push(Extra::new(
        "babel/memory_100k_routes_learning",
        peak.saturating_sub(base) as f64,
        "bytes",
        "RSS growth right after a router learns 100,000 prefixes from one neighbour (with the \
         urgent updates for 3 links in flight)",
    ));
    extras.push(Extra::new(
        "babel/memory_100k_routes_one_neighbour",
        one.saturating_sub(base) as f64,
        "bytes",
        "RSS growth for 100,000 prefixes once the urgent updates are done (heap trimmed; \
         freed chunks between live ones stay resident)",
    ));
    extras.push(Extra::new(
        "babel/memory_per_route",
        per1,
        "bytes",
        "heap in use per prefix (one route) once settled",
    ));
    extras.push(Extra::new(
        "babel/memory_per_extra_route",
        per2,
        "bytes",
        "heap in use per second (unselected) route to a prefix, from another neighbour",
    ));
    extras.push(Extra::new(
        "babel/rss_with_100k_prefixes",
        two as f64,
        "bytes",
        "whole bench process RSS holding the router with 100k prefixes × 2 routes",
    ));
    drop(black_box(r));
}

fn bench(c: &mut Criterion) {
    let mut extras = Vec::new();
    memory(&mut extras);

    let mut g = c.benchmark_group("babel");
    g.sample_size(10);

    // (a) Convergence of 100 routers.
    let converge = || {
        let mut sim = Sim::new(7);
        sim.check_every_step = false;
        sim.grid(10, 10, LinkParams::wired(), Duration::from_millis(2), 0);
        sim.originate_one_each();
        let t = sim
            .run_until_pred(Duration::from_secs(120), Duration::from_millis(50), |s| {
                s.converged()
            })
            .expect("a 10x10 grid converges within 120 s simulated");
        (t, sim.stats)
    };
    let wall = Instant::now();
    let (sim_t, stats) = converge();
    let wall = wall.elapsed();
    eprintln!(
        "babel: 10x10 grid converged in {:.2} s simulated ({:?} wall, first run); {stats:?}",
        sim_t.as_secs_f64(),
        wall
    );
    extras.push(Extra::new(
        "babel/converge_grid_10x10_simulated",
        sim_t.as_secs_f64(),
        "s",
        "simulated time from cold start until every node reaches every prefix (checked every 50 ms)",
    ));
    g.bench_function("converge_grid_10x10", |bn| {
        bn.iter(|| black_box(converge()))
    });

    // (b) Updates per second.
    let now = Instant::now();
    let pkts = updates(UPDATES, 100);
    g.throughput(Throughput::Elements(UPDATES as u64));
    g.bench_function("updates_new_10k", |bn| {
        bn.iter_batched(
            || router(3, now),
            |mut r| {
                feed(&mut r, 0, now, &pkts);
                r
            },
            BatchSize::PerIteration,
        )
    });
    let mut warm = router(3, now);
    feed(&mut warm, 0, now, &pkts);
    g.bench_function("updates_refresh_10k", |bn| {
        bn.iter(|| feed(&mut warm, 0, now, &pkts))
    });
    // (c) The same refresh on one link, without and with MACs.
    let keys = Algorithm::ALL.map(|a| MacKey::new(a.as_str(), a, vec![7; a.max_key_len()]));
    for key in [None]
        .into_iter()
        .chain(keys.iter().map(|k| k.as_ref().ok()))
    {
        let mut r = one_link_router(key, now);
        let mut counter = 3u32;
        let seal_all = |counter: &mut u32| -> Vec<Vec<u8>> {
            (pkts.iter())
                .map(|p| {
                    *counter += 1;
                    sealed(p, *counter, key)
                })
                .collect()
        };
        feed(&mut r, 0, now, &seal_all(&mut counter));
        let before = r.routes(now).len();
        assert!(before >= UPDATES, "the router took the updates: {before}");
        let name = key.map_or("none", |k| k.id());
        g.bench_function(format!("updates_refresh_10k_one_link_mac_{name}"), |bn| {
            bn.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let batch = seal_all(&mut counter);
                    let t = Instant::now();
                    feed(&mut r, 0, now, &batch);
                    spent += t.elapsed();
                }
                spent
            })
        });
        // Only the neighbour's first hello, before the challenge.
        let refused: u64 = r.counters().auth.refused.iter().sum();
        assert_eq!(refused, u64::from(key.is_some()), "{:?}", r.counters().auth);
    }
    g.finish();

    if let Some(dir) = criterion_dir() {
        if let Err(e) = write_extras(&dir, "babel", &extras) {
            eprintln!("babel: could not write the report extras: {e:#}");
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
