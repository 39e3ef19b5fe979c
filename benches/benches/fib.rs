#![allow(missing_docs)] // criterion_group! generates an undocumented public function
//! FIB lookup on random 1M-prefix tables (IPv4 and IPv6), ns per lookup.
//!
//! Prefix lengths follow a rough BGP-like distribution (IPv4 mostly /16-/24 with some
//! /25-/32; IPv6 mostly /32-/64 under 2000::/3 with some /65-/128). Lookup addresses are
//! pregenerated: half fall inside a random inserted prefix (host bits random), half are
//! random. The baseline is one dependent-free random load from a 64 MiB array per address,
//! the memory-latency floor of any table this size, measured in the same run.
//!
//! `FIB_QUICK=1 cargo bench -p isthmus-benches --bench fib` skips criterion and prints the
//! minimum over 30 passes instead (useful on a noisy shared machine; the measurements take
//! turns, 3 passes at a time), plus IPv6 hits and misses separately, and the ratios to the
//! baseline.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isthmus_dataplane::fib::{Fib, NextHop};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PREFIXES: usize = 1_000_000;
const PROBES: usize = 1 << 16;

fn hop(rng: &mut StdRng) -> NextHop {
    match rng.gen_range(0..100) {
        0 => NextHop::Local,
        1 => NextHop::Blackhole,
        _ => NextHop::Peer(rng.gen_range(0..1000)),
    }
}

fn len_v4(rng: &mut StdRng) -> u8 {
    match rng.gen_range(0..100) {
        0..=54 => 24,
        55..=84 => rng.gen_range(16..24),
        85..=89 => rng.gen_range(8..16),
        _ => rng.gen_range(25..=32),
    }
}

fn len_v6(rng: &mut StdRng) -> u8 {
    match rng.gen_range(0..100) {
        0..=39 => 48,
        40..=69 => rng.gen_range(32..48),
        70..=89 => rng.gen_range(49..=64),
        _ => rng.gen_range(65..=128),
    }
}

fn v6_addr(rng: &mut StdRng) -> u128 {
    // Global unicast, 2000::/3.
    (rng.gen::<u128>() >> 3) | (1u128 << 125)
}

fn table_v4(rng: &mut StdRng) -> (Vec<Ipv4Net>, Vec<NextHop>) {
    (0..PREFIXES)
        .map(|_| {
            let p = Ipv4Net::new(Ipv4Addr::from(rng.gen::<u32>()), len_v4(rng))
                .unwrap()
                .trunc();
            (p, hop(rng))
        })
        .unzip()
}

fn table_v6(rng: &mut StdRng) -> (Vec<Ipv6Net>, Vec<NextHop>) {
    (0..PREFIXES)
        .map(|_| {
            let p = Ipv6Net::new(Ipv6Addr::from(v6_addr(rng)), len_v6(rng))
                .unwrap()
                .trunc();
            (p, hop(rng))
        })
        .unzip()
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn build(routes: impl Iterator<Item = (IpNet, NextHop)>, what: &str) -> Fib {
    let before = rss_mib();
    let t = Instant::now();
    let mut fib = Fib::new();
    for (p, h) in routes {
        fib.insert(p, h);
    }
    // What the data plane does after building a table (`Fib::from_routes`).
    if std::env::var_os("FIB_NO_SETTLE").is_none() {
        fib.settle();
    }
    let stats = fib.stats();
    eprintln!(
        "fib: built {what} ({} v4 + {} v6 distinct prefixes) in {:.2} s; trie {:.1} MiB v4 + {:.1} MiB v6; \
         chunks {:?}, buckets {:?}, big buckets {:?}; process RSS grew {:.0} MiB (tries + route maps)",
        fib.len_v4(),
        fib.len_v6(),
        t.elapsed().as_secs_f64(),
        stats.v4_trie_bytes as f64 / (1 << 20) as f64,
        stats.v6_trie_bytes as f64 / (1 << 20) as f64,
        stats.chunks,
        stats.buckets,
        stats.big_buckets,
        rss_mib() - before,
    );
    fib
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0x0157_4305);
    let (p4, h4) = table_v4(&mut rng);
    let (p6, h6) = table_v6(&mut rng);

    let fib4 = build(
        p4.iter().map(|&p| IpNet::V4(p)).zip(h4.iter().copied()),
        "1M IPv4",
    );
    let fib6 = build(
        p6.iter().map(|&p| IpNet::V6(p)).zip(h6.iter().copied()),
        "1M IPv6",
    );
    drop((fib4, fib6));
    // One table with both families, as the data plane holds it.
    let fib = build(
        p4.iter()
            .map(|&p| IpNet::V4(p))
            .zip(h4.iter().copied())
            .chain(p6.iter().map(|&p| IpNet::V6(p)).zip(h6.iter().copied())),
        "1M IPv4 + 1M IPv6",
    );

    let probes4: Vec<Ipv4Addr> = (0..PROBES)
        .map(|_| {
            if rng.gen_bool(0.5) {
                let p = p4[rng.gen_range(0..p4.len())];
                Ipv4Addr::from(
                    u32::from(p.network()) | (rng.gen::<u32>() & !u32::from(p.netmask())),
                )
            } else {
                Ipv4Addr::from(rng.gen::<u32>())
            }
        })
        .collect();
    let probes6: Vec<Ipv6Addr> = (0..PROBES)
        .map(|_| {
            if rng.gen_bool(0.5) {
                let p = p6[rng.gen_range(0..p6.len())];
                Ipv6Addr::from(
                    u128::from(p.network()) | (rng.gen::<u128>() & !u128::from(p.netmask())),
                )
            } else {
                Ipv6Addr::from(v6_addr(&mut rng))
            }
        })
        .collect();
    let hits4 = probes4
        .iter()
        .filter(|a| fib.lookup_v4(**a).is_some())
        .count();
    let hits6 = probes6
        .iter()
        .filter(|a| fib.lookup_v6(**a).is_some())
        .count();
    eprintln!(
        "fib: probe hit rate v4 {:.0}%, v6 {:.0}%",
        100.0 * hits4 as f64 / PROBES as f64,
        100.0 * hits6 as f64 / PROBES as f64
    );

    if std::env::var_os("FIB_QUICK").is_some() {
        // Min-of-passes timing, robust against a noisy shared machine. The passes of all
        // measurements are interleaved (10 rounds of 3 passes of each), so that a slow spell
        // of the machine hits them all alike instead of one measurement; within a round the
        // passes follow each other, so the caches hold what the previous pass left (the same
        // probes every pass), as in one run of 30.
        let big: Vec<u32> = (0..1u32 << 24).collect();
        let out = std::cell::RefCell::new(vec![None; PROBES]);
        let (inside6, random6): (Vec<Ipv6Addr>, Vec<Ipv6Addr>) =
            probes6.iter().partition(|a| fib.lookup_v6(**a).is_some());
        let passes: [(&str, usize, &dyn Fn()); 7] = [
            ("v4", PROBES, &|| {
                probes4.iter().for_each(|&a| {
                    black_box(fib.lookup_v4(black_box(a)));
                })
            }),
            ("v6", PROBES, &|| {
                probes6.iter().for_each(|&a| {
                    black_box(fib.lookup_v6(black_box(a)));
                })
            }),
            ("baseline", PROBES, &|| {
                probes4.iter().for_each(|a| {
                    black_box(big[black_box((u32::from(*a) >> 8) as usize)]);
                })
            }),
            ("v4 batch", PROBES, &|| {
                let mut out = out.borrow_mut();
                fib.lookup_v4_batch(&probes4, &mut out);
                black_box(&*out);
            }),
            ("v6 batch", PROBES, &|| {
                let mut out = out.borrow_mut();
                fib.lookup_v6_batch(&probes6, &mut out);
                black_box(&*out);
            }),
            ("v6 hits", inside6.len(), &|| {
                inside6.iter().for_each(|&a| {
                    black_box(fib.lookup_v6(black_box(a)));
                })
            }),
            ("v6 misses", random6.len(), &|| {
                random6.iter().for_each(|&a| {
                    black_box(fib.lookup_v6(black_box(a)));
                })
            }),
        ];
        let mut min = [f64::INFINITY; 7];
        for _ in 0..10 {
            for (m, (_, n, f)) in min.iter_mut().zip(&passes) {
                for _ in 0..3 {
                    let t = Instant::now();
                    f();
                    *m = m.min(t.elapsed().as_nanos() as f64 / *n as f64);
                }
            }
        }
        let [v4, v6, base, v4b, v6b, hit, miss] = min;
        eprintln!("fib quick batch: v4 {v4b:.1} ns, v6 {v6b:.1} ns");
        eprintln!("fib quick v6 hits {hit:.1} ns, misses {miss:.1} ns");
        eprintln!("fib quick (min of 30 passes): v4 {v4:.1} ns, v6 {v6:.1} ns, baseline {base:.1} ns per lookup");
        eprintln!(
            "fib quick ratios to the baseline: v4 {:.2}, v6 {:.2}, v4 batch {:.2}, v6 batch {:.2}",
            v4 / base,
            v6 / base,
            v4b / base,
            v6b / base
        );
        return;
    }
    let mut g = c.benchmark_group("fib");
    g.throughput(Throughput::Elements(PROBES as u64));
    g.bench_function("lookup_v4_1M", |b| {
        b.iter(|| {
            // `black_box` on each result instead of branching on it: a branch on the answer
            // would mispredict on a mix of hits and misses and measure the consumer.
            for &a in &probes4 {
                black_box(fib.lookup_v4(black_box(a)));
            }
        })
    });
    g.bench_function("lookup_v6_1M", |b| {
        b.iter(|| {
            for &a in &probes6 {
                black_box(fib.lookup_v6(black_box(a)));
            }
        })
    });
    let mut out = vec![None; PROBES];
    g.bench_function("lookup_v4_1M_batch", |b| {
        b.iter(|| {
            fib.lookup_v4_batch(black_box(&probes4), &mut out);
            black_box(&out);
        })
    });
    g.bench_function("lookup_v6_1M_batch", |b| {
        b.iter(|| {
            fib.lookup_v6_batch(black_box(&probes6), &mut out);
            black_box(&out);
        })
    });
    // Baseline: one random 4-byte load per address from a 64 MiB array.
    let big: Vec<u32> = (0..1u32 << 24).collect();
    let idx: Vec<usize> = probes4
        .iter()
        .map(|a| (u32::from(*a) >> 8) as usize)
        .collect();
    g.bench_function("baseline_random_load_64MiB", |b| {
        b.iter(|| {
            for &i in &idx {
                black_box(big[black_box(i)]);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

criterion_main!(benches);
