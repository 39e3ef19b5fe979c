//! The forwarding pipeline on the loopback backend, in memory: packets per second from A's
//! TUN to B's TUN (encrypt at A, decrypt at B), and through a hub (decrypt and re-encrypt in
//! user space), for 64- and 1420-byte IP packets. Sessions are established before measuring.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use isthmus_benches::pipeline::{Pair, Relay};

/// Packets per measured iteration: a few full batches, so batching is exercised.
const N: usize = 256;
const SIZES: [usize; 2] = [64, 1420];

fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/pair");
    g.throughput(Throughput::Elements(N as u64));
    for len in SIZES {
        let mut p = Pair::new(len).expect("pair set-up");
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| {
                let got = p.send(N);
                assert_eq!(got, N as u64, "B must deliver every packet");
            });
        });
    }
    g.finish();
}

fn relay(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/relay_e2e");
    g.throughput(Throughput::Elements(N as u64));
    for len in SIZES {
        let mut r = Relay::new(len).expect("relay set-up");
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| {
                let got = r.send(N);
                assert_eq!(got, N as u64, "B must deliver every packet");
            });
        });
    }
    g.finish();

    // The hub alone: A's encryption happens outside the timed region.
    let mut g = c.benchmark_group("pipeline/relay_hub");
    g.throughput(Throughput::Elements(N as u64));
    for len in SIZES {
        let mut r = Relay::new(len).expect("relay set-up");
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    r.prepare_for_hub(N);
                    let t = Instant::now();
                    let got = r.run_hub();
                    total += t.elapsed();
                    assert_eq!(got, N as u64, "the hub must relay every packet");
                }
                total
            });
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = pair, relay }
criterion_main!(benches);
