//! The hot path allocates nothing in steady state: after the handshake, thousands of packets
//! relayed through a hub and delivered cause zero heap allocations (counted by a global
//! allocator wrapper).

mod common;

use common::{key, public};

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use etherparse::PacketBuilder;
use isthmus_dataplane::forward::{Core, PeerSpec, Settings};
use isthmus_dataplane::io::loopback::LoopbackNet;
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::stats::Path;
use isthmus_dataplane::tunnel::PeerSettings;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn spec(public_key: Key, endpoint: Option<SocketAddr>, allowed: &str) -> PeerSpec {
    PeerSpec {
        public_key,
        endpoint,
        settings: PeerSettings {
            allowed_ips: vec![allowed.parse().unwrap()],
            ..Default::default()
        },
    }
}

#[test]
fn relay_and_delivery_allocate_nothing_in_steady_state() {
    let addr = |i: u8| SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 51820));
    let (ka, kb, kh) = (key(1), key(2), key(3));
    let (a, b, h) = (
        Core::new("a", Settings::default()),
        Core::new("b", Settings::default()),
        Core::new("h", Settings::default()),
    );
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    h.set_private_key(Some(kh));
    a.upsert_peer(spec(public(kh), Some(addr(3)), "10.0.0.0/16"))
        .unwrap();
    b.upsert_peer(spec(public(kh), Some(addr(3)), "10.0.0.0/16"))
        .unwrap();
    h.upsert_peer(spec(public(ka), Some(addr(1)), "10.0.1.0/24"))
        .unwrap();
    h.upsert_peer(spec(public(kb), Some(addr(2)), "10.0.2.0/24"))
        .unwrap();
    let mut net = LoopbackNet::new();
    for (core, i) in [(a, 1), (b, 2), (h, 3)] {
        let n = net.add(core, addr(i));
        net.nodes[n].keep_tun = false;
    }
    let mut pkt = Vec::new();
    PacketBuilder::ipv4([10, 0, 1, 1], [10, 0, 2, 1], 64)
        .udp(1000, 2000)
        .write(&mut pkt, &[0x55; 1000])
        .unwrap();
    let mut back = Vec::new();
    PacketBuilder::ipv4([10, 0, 2, 1], [10, 0, 1, 1], 64)
        .udp(2000, 1000)
        .write(&mut back, &[0x55; 100])
        .unwrap();
    // Warm up: handshakes, session confirmation both ways, buffers in the virtual wire.
    for _ in 0..3 {
        for _ in 0..64 {
            net.send_from_tun(0, &pkt);
            net.send_from_tun(1, &back);
        }
        net.run(64);
    }
    let delivered_before = net.nodes[1].tun_count;
    let before = ALLOCS.load(Relaxed);
    for _ in 0..50 {
        for _ in 0..64 {
            net.send_from_tun(0, &pkt);
        }
        net.run(64);
    }
    let allocs = ALLOCS.load(Relaxed) - before;
    assert_eq!(net.nodes[1].tun_count - delivered_before, 50 * 64);
    assert!(net.nodes[2].core.totals().forwarded_on(Path::Relay) >= 50 * 64);
    assert_eq!(allocs, 0, "{allocs} allocations for {} packets", 50 * 64);
}
