//! The fast [`Fib`] against the [`NaiveFib`] oracle, plus edge cases.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::oracle::NaiveFib;
use super::{Fib, NextHop, Route};

fn v4(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn a4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peer(id: u32) -> Option<NextHop> {
    Some(NextHop::Peer(id))
}

// ---- edge cases ----------------------------------------------------------------------------

#[test]
fn empty_table_matches_nothing() {
    let fib = Fib::new();
    assert_eq!(fib.lookup(a4("1.2.3.4")), None);
    assert_eq!(fib.lookup(a4("::1")), None);
    assert_eq!(fib.lookup(a4("0.0.0.0")), None);
    assert_eq!(fib.lookup(a4("255.255.255.255")), None);
    assert_eq!((fib.len_v4(), fib.len_v6()), (0, 0));
    assert!(fib.routes().is_empty());
    assert!(fib.is_empty());
}

#[test]
fn default_routes_and_host_routes() {
    let mut fib = Fib::new();
    fib.insert(v4("0.0.0.0/0"), NextHop::Local);
    fib.insert(v4("::/0"), NextHop::Blackhole);
    fib.insert(v4("10.1.2.3/32"), NextHop::Peer(7));
    fib.insert(v4("2001:db8::1/128"), NextHop::Peer(8));
    assert_eq!(fib.lookup(a4("8.8.8.8")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("255.255.255.255")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("10.1.2.3")), peer(7));
    assert_eq!(fib.lookup(a4("10.1.2.2")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("10.1.2.4")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("2001:db8::1")), peer(8));
    assert_eq!(fib.lookup(a4("2001:db8::2")), Some(NextHop::Blackhole));
    assert_eq!(fib.lookup(a4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), Some(NextHop::Blackhole));
    // The families do not leak into each other.
    assert_eq!(fib.remove(&v4("0.0.0.0/0")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("8.8.8.8")), None);
    assert_eq!(fib.lookup(a4("::8")), Some(NextHop::Blackhole));
    assert_eq!((fib.len_v4(), fib.len_v6()), (1, 2));
}

#[test]
fn longest_prefix_wins_in_every_order() {
    let prefixes = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25", "10.1.2.129/32"];
    // Every permutation of insertion order gives the same answers.
    let mut order: Vec<usize> = (0..prefixes.len()).collect();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..50 {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let mut fib = Fib::new();
        for &i in &order {
            fib.insert(v4(prefixes[i]), NextHop::Peer(i as u32));
        }
        assert_eq!(fib.lookup(a4("10.200.0.1")), peer(0));
        assert_eq!(fib.lookup(a4("10.1.200.1")), peer(1));
        assert_eq!(fib.lookup(a4("10.1.2.1")), peer(2));
        assert_eq!(fib.lookup(a4("10.1.2.130")), peer(3));
        assert_eq!(fib.lookup(a4("10.1.2.129")), peer(4));
        assert_eq!(fib.lookup(a4("11.0.0.0")), None);
    }
}

#[test]
fn remove_restores_the_covering_route() {
    let mut fib = Fib::new();
    fib.insert(v4("10.0.0.0/8"), NextHop::Peer(1));
    fib.insert(v4("10.1.0.0/16"), NextHop::Peer(2));
    fib.insert(v4("10.1.2.0/24"), NextHop::Peer(3));
    fib.insert(v4("10.1.2.3/32"), NextHop::Peer(4));
    assert_eq!(fib.remove(&v4("10.1.0.0/16")), peer(2));
    assert_eq!(fib.lookup(a4("10.1.9.9")), peer(1));
    assert_eq!(fib.lookup(a4("10.1.2.9")), peer(3));
    assert_eq!(fib.remove(&v4("10.1.2.0/24")), peer(3));
    assert_eq!(fib.lookup(a4("10.1.2.9")), peer(1));
    assert_eq!(fib.lookup(a4("10.1.2.3")), peer(4));
    assert_eq!(fib.remove(&v4("10.1.2.3/32")), peer(4));
    assert_eq!(fib.lookup(a4("10.1.2.3")), peer(1));
    assert_eq!(fib.remove(&v4("10.0.0.0/8")), peer(1));
    assert_eq!(fib.lookup(a4("10.1.2.3")), None);
    assert!(fib.is_empty());
    // Everything collapsed back: no chunk, no bucket.
    let stats = fib.stats();
    assert_eq!((stats.chunks, stats.buckets), ((0, 0), (0, 0)));
}

#[test]
fn remove_of_absent_prefix_changes_nothing() {
    let mut fib = Fib::new();
    fib.insert(v4("10.0.0.0/8"), NextHop::Local);
    assert_eq!(fib.remove(&v4("10.0.0.0/9")), None);
    assert_eq!(fib.remove(&v4("10.1.2.3/32")), None);
    assert_eq!(fib.remove(&v4("::/0")), None);
    assert_eq!(fib.lookup(a4("10.1.2.3")), Some(NextHop::Local));
    assert_eq!(fib.len_v4(), 1);
}

#[test]
fn insert_replaces_and_returns_previous() {
    let mut fib = Fib::new();
    assert_eq!(fib.insert(v4("192.168.0.0/16"), NextHop::Peer(1)), None);
    assert_eq!(fib.insert(v4("192.168.0.0/16"), NextHop::Peer(1)), peer(1));
    assert_eq!(fib.insert(v4("192.168.0.0/16"), NextHop::Blackhole), peer(1));
    assert_eq!(fib.lookup(a4("192.168.3.4")), Some(NextHop::Blackhole));
    assert_eq!(fib.len_v4(), 1);
    // Host bits are ignored: this is the same prefix.
    assert_eq!(fib.insert(v4("192.168.77.1/16"), NextHop::Local), Some(NextHop::Blackhole));
    assert_eq!(fib.routes(), vec![Route { prefix: v4("192.168.0.0/16"), next_hop: NextHop::Local }]);
    assert_eq!(fib.remove(&v4("192.168.1.1/16")), Some(NextHop::Local));
    assert!(fib.is_empty());
}

#[test]
fn peer_ids_use_the_whole_u32_range() {
    let mut fib = Fib::new();
    fib.insert(v4("1.0.0.0/8"), NextHop::Peer(u32::MAX));
    fib.insert(v4("2.0.0.0/8"), NextHop::Peer(0));
    fib.insert(v4("2001::/16"), NextHop::Peer(u32::MAX - 1));
    assert_eq!(fib.lookup(a4("1.2.3.4")), peer(u32::MAX));
    assert_eq!(fib.lookup(a4("2.2.3.4")), peer(0));
    assert_eq!(fib.lookup(a4("2001::1")), peer(u32::MAX - 1));
}

#[test]
fn many_long_prefixes_in_one_slot_burst_and_collapse() {
    // 300 /32s and /128s under one /16 root slot: buckets burst into chunks, then removal
    // collapses everything again.
    let mut fib = Fib::new();
    fib.insert(v4("10.1.0.0/16"), NextHop::Local);
    fib.insert(v4("2001:db8::/32"), NextHop::Local);
    for i in 0..300u32 {
        let a = Ipv4Addr::from(0x0a01_0000 | (i * 37 % 65536));
        fib.insert(IpNet::V4(Ipv4Net::new(a, 32).unwrap()), NextHop::Peer(i));
        let b = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 20);
        fib.insert(IpNet::V6(Ipv6Net::new(b, 128).unwrap()), NextHop::Peer(i));
    }
    for i in 0..300u32 {
        let a = Ipv4Addr::from(0x0a01_0000 | (i * 37 % 65536));
        assert_eq!(fib.lookup_v4(a), peer(i));
        assert_eq!(fib.lookup_v4(Ipv4Addr::from(u32::from(a) ^ 1)), Some(NextHop::Local));
        let b = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 20);
        assert_eq!(fib.lookup_v6(b), peer(i));
        assert_eq!(fib.lookup_v6(Ipv6Addr::from(u128::from(b) ^ 1)), Some(NextHop::Local));
    }
    let stats = fib.stats();
    assert!(stats.chunks.0 > 0 && stats.chunks.1 > 0, "{stats:?}");
    for i in 0..300u32 {
        let a = Ipv4Addr::from(0x0a01_0000 | (i * 37 % 65536));
        assert_eq!(fib.remove(&IpNet::V4(Ipv4Net::new(a, 32).unwrap())), peer(i));
        let b = Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 20);
        assert_eq!(fib.remove(&IpNet::V6(Ipv6Net::new(b, 128).unwrap())), peer(i));
    }
    assert_eq!(fib.lookup(a4("10.1.0.0")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("2001:db8::")), Some(NextHop::Local));
    // The /32 still needs a chunk below the root (a leaf at bit 32); removing the two covering
    // routes empties the trie completely.
    assert_eq!(fib.remove(&v4("10.1.0.0/16")), Some(NextHop::Local));
    assert_eq!(fib.remove(&v4("2001:db8::/32")), Some(NextHop::Local));
    assert_eq!(fib.lookup(a4("2001:db8::")), None);
    let stats = fib.stats();
    assert_eq!((stats.chunks, stats.buckets), ((0, 0), (0, 0)), "{stats:?}");
}

#[test]
fn clone_is_independent() {
    let mut a = Fib::new();
    a.insert(v4("10.0.0.0/8"), NextHop::Peer(1));
    let b = a.clone();
    a.insert(v4("10.0.0.0/8"), NextHop::Peer(2));
    a.remove(&v4("10.0.0.0/8"));
    assert_eq!(b.lookup(a4("10.9.9.9")), peer(1));
    assert_eq!(a.lookup(a4("10.9.9.9")), None);
}

#[test]
fn fib_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Fib>();
}

#[test]
fn handle_publishes_whole_tables() {
    let handle = super::FibHandle::new(Fib::from_routes([Route {
        prefix: v4("0.0.0.0/0"),
        next_hop: NextHop::Local,
    }]));
    assert_eq!(handle.load().lookup(a4("1.1.1.1")), Some(NextHop::Local));
    handle.publish(Fib::new());
    assert_eq!(handle.load().lookup(a4("1.1.1.1")), None);
}

// ---- random tables against the oracle --------------------------------------------------------

/// Random prefixes that overlap a lot: addresses come from a few random bases with some
/// bits flipped, lengths cover the whole range including 0 and the full length.
struct Gen {
    rng: StdRng,
    bases4: Vec<u32>,
    bases6: Vec<u128>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bases4 = (0..4).map(|_| rng.gen()).collect();
        let bases6 = (0..4).map(|_| rng.gen()).collect();
        Self { rng, bases4, bases6 }
    }

    fn addr4(&mut self) -> u32 {
        if self.rng.gen_bool(0.1) {
            return self.rng.gen();
        }
        let base = self.bases4[self.rng.gen_range(0..self.bases4.len())];
        // Flip a few random bits, mostly low ones, so prefixes nest and collide.
        let mut a = base;
        for _ in 0..self.rng.gen_range(0..4) {
            a ^= 1 << self.rng.gen_range(0..32u32).min(self.rng.gen_range(0..32u32));
        }
        a
    }

    fn addr6(&mut self) -> u128 {
        if self.rng.gen_bool(0.1) {
            return self.rng.gen();
        }
        let base = self.bases6[self.rng.gen_range(0..self.bases6.len())];
        let mut a = base;
        for _ in 0..self.rng.gen_range(0..4) {
            a ^= 1 << self.rng.gen_range(0..128u32).min(self.rng.gen_range(0..128u32));
        }
        a
    }

    fn hop(&mut self) -> NextHop {
        match self.rng.gen_range(0..10) {
            0 => NextHop::Local,
            1 => NextHop::Blackhole,
            _ => NextHop::Peer(self.rng.gen_range(0..20)),
        }
    }

    fn prefix(&mut self) -> IpNet {
        if self.rng.gen_bool(0.5) {
            let len = match self.rng.gen_range(0..10) {
                0 => 0,
                1 => 32,
                _ => self.rng.gen_range(0..=32),
            };
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(self.addr4()), len).unwrap()).trunc()
        } else {
            let len = match self.rng.gen_range(0..10) {
                0 => 0,
                1 => 128,
                _ => self.rng.gen_range(0..=128),
            };
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(self.addr6()), len).unwrap()).trunc()
        }
    }

    /// A lookup address: mostly inside one of `inside`, sometimes anywhere near the bases.
    fn probe(&mut self, inside: &[IpNet]) -> IpAddr {
        if !inside.is_empty() && self.rng.gen_bool(0.7) {
            let p = inside[self.rng.gen_range(0..inside.len())];
            match p {
                IpNet::V4(p) => {
                    let host = self.rng.gen::<u32>() & !u32::from(p.netmask());
                    IpAddr::V4(Ipv4Addr::from(u32::from(p.network()) | host))
                }
                IpNet::V6(p) => {
                    let host = self.rng.gen::<u128>() & !u128::from(p.netmask());
                    IpAddr::V6(Ipv6Addr::from(u128::from(p.network()) | host))
                }
            }
        } else if self.rng.gen_bool(0.5) {
            IpAddr::V4(Ipv4Addr::from(self.addr4()))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.addr6()))
        }
    }
}

fn sorted(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort_by_key(|r| (r.prefix, format!("{:?}", r.next_hop)));
    routes
}

fn check_same(fib: &Fib, naive: &NaiveFib, gen: &mut Gen, inside: &[IpNet], probes: usize) {
    for _ in 0..probes {
        let addr = gen.probe(inside);
        assert_eq!(fib.lookup(addr), naive.lookup(addr), "lookup {addr}");
    }
    assert_eq!(fib.len_v4(), naive.len_v4());
    assert_eq!(fib.len_v6(), naive.len_v6());
    assert_eq!(sorted(fib.routes()), sorted(naive.routes()));
}

#[test]
fn seeded_random_tables_match_the_oracle() {
    for seed in 0..8u64 {
        let mut gen = Gen::new(seed);
        let mut fib = Fib::new();
        let mut naive = NaiveFib::default();
        let mut present: Vec<IpNet> = Vec::new();
        for round in 0..6 {
            // Inserts, with duplicates and replacements.
            for _ in 0..300 {
                let p = if !present.is_empty() && gen.rng.gen_bool(0.15) {
                    present[gen.rng.gen_range(0..present.len())]
                } else {
                    gen.prefix()
                };
                let hop = gen.hop();
                assert_eq!(fib.insert(p, hop), naive.insert(p, hop), "insert {p}");
                present.push(p);
            }
            check_same(&fib, &naive, &mut gen, &present, 2000);
            // Removals interleaved with inserts, some of absent prefixes.
            for _ in 0..200 {
                if gen.rng.gen_bool(0.7) && !present.is_empty() {
                    let i = gen.rng.gen_range(0..present.len());
                    let p = present.swap_remove(i);
                    assert_eq!(fib.remove(&p), naive.remove(&p), "remove {p}");
                } else if gen.rng.gen_bool(0.5) {
                    let p = gen.prefix();
                    assert_eq!(fib.remove(&p), naive.remove(&p), "remove {p}");
                } else {
                    let (p, hop) = (gen.prefix(), gen.hop());
                    assert_eq!(fib.insert(p, hop), naive.insert(p, hop), "insert {p}");
                    present.push(p);
                }
            }
            check_same(&fib, &naive, &mut gen, &present, 2000);
            let _ = round;
        }
        // Remove everything: the trie goes back to empty.
        let all: HashSet<IpNet> = present.into_iter().collect();
        for p in &all {
            fib.remove(p);
            naive.remove(p);
        }
        check_same(&fib, &naive, &mut gen, &[], 500);
        assert!(fib.is_empty());
        let stats = fib.stats();
        assert_eq!((stats.chunks, stats.buckets), ((0, 0), (0, 0)), "seed {seed}: {stats:?}");
    }
}

#[test]
fn from_routes_matches_incremental_build() {
    let mut gen = Gen::new(99);
    let routes: Vec<Route> =
        (0..3000).map(|_| Route { prefix: gen.prefix(), next_hop: gen.hop() }).collect();
    let built = Fib::from_routes(routes.iter().copied());
    let mut naive = NaiveFib::default();
    for r in &routes {
        naive.insert(r.prefix, r.next_hop);
    }
    let inside: Vec<IpNet> = routes.iter().map(|r| r.prefix).collect();
    check_same(&built, &naive, &mut gen, &inside, 5000);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(IpNet, NextHop),
    Remove(IpNet),
}

/// Prefixes from a small universe so that operations hit the same prefixes often.
fn arb_prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0..4u32, any::<u16>(), 0u8..=32).prop_map(|(hi, lo, len)| {
            let a = Ipv4Addr::from(0x0a00_0000 | hi << 16 | u32::from(lo & 0x0f0f) << 4);
            IpNet::V4(Ipv4Net::new(a, len).unwrap()).trunc()
        }),
        (0..4u128, any::<u16>(), 0u8..=128).prop_map(|(hi, lo, len)| {
            let a = Ipv6Addr::from(0x2001_0db8_u128 << 96 | hi << 80 | u128::from(lo) << 60 | u128::from(lo));
            IpNet::V6(Ipv6Net::new(a, len).unwrap()).trunc()
        }),
    ]
}

fn arb_hop() -> impl Strategy<Value = NextHop> {
    prop_oneof![Just(NextHop::Local), Just(NextHop::Blackhole), (0..8u32).prop_map(NextHop::Peer)]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (arb_prefix(), arb_hop()).prop_map(|(p, h)| Op::Insert(p, h)),
        1 => arb_prefix().prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn proptest_matches_the_oracle(ops in prop::collection::vec(arb_op(), 1..200), seed in any::<u64>()) {
        let mut fib = Fib::new();
        let mut naive = NaiveFib::default();
        let mut inside = Vec::new();
        for op in ops {
            match op {
                Op::Insert(p, h) => {
                    prop_assert_eq!(fib.insert(p, h), naive.insert(p, h));
                    inside.push(p);
                }
                Op::Remove(p) => prop_assert_eq!(fib.remove(&p), naive.remove(&p)),
            }
        }
        let mut gen = Gen::new(seed);
        for _ in 0..300 {
            let addr = gen.probe(&inside);
            prop_assert_eq!(fib.lookup(addr), naive.lookup(addr), "lookup {}", addr);
        }
        prop_assert_eq!(fib.len_v4(), naive.len_v4());
        prop_assert_eq!(fib.len_v6(), naive.len_v6());
        prop_assert_eq!(sorted(fib.routes()), sorted(naive.routes()));
    }
}
