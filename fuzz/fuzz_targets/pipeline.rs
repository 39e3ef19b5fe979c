#![no_main]
//! The forwarding core as a whole, on the loopback backend: spokes A (10.0.1.0/24) and B
//! (10.0.2.0/24) and hub H between them, fed an arbitrary sequence of TUN packets (well-formed
//! or not), garbage datagrams, forged copies (a byte changed) and replays of what is in flight,
//! wire runs and timer ticks. Invariants: no panic; every packet a TUN receives was written
//! into a TUN somewhere, at most as often as it was written (so nothing forged or replayed is
//! ever delivered; compared without TTL and header checksum, which a relay changes); and each
//! node's TUN deliveries are what its counters call forwarded to local.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use isthmus_dataplane::forward::{Core, PeerSpec, Settings};
use isthmus_dataplane::io::loopback::LoopbackNet;
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::stats::Path;
use isthmus_dataplane::tunnel::PeerSettings;
use libfuzzer_sys::fuzz_target;

fn key(seed: u8) -> Key {
    Key::from_seed(seed)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 51820))
}

fn peer(public_key: Key, endpoint: Option<SocketAddr>, allowed: &[&str]) -> PeerSpec {
    PeerSpec {
        public_key,
        endpoint,
        settings: PeerSettings {
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        },
    }
}

/// A packet as it is compared: without what a hop changes (TTL or hop limit, and the IPv4
/// header checksum).
fn normal(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    match v.first().map(|b| b >> 4) {
        Some(4) if v.len() >= 20 => {
            v[8] = 0;
            v[10] = 0;
            v[11] = 0;
        }
        Some(6) if v.len() >= 40 => v[7] = 0,
        _ => {}
    }
    v
}

/// A well-formed IPv4 UDP packet from `src` to `dst` (checksums right).
fn udp4(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = ttl;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum: u32 = 0;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fuzz_target!(|data: &[u8]| {
    let (ka, kb, kh) = (key(1), key(2), key(3));
    let settings = Settings {
        mss_clamp: false,
        ..Settings::default()
    };
    let (a, b, h) = (
        Core::new("a", settings.clone()),
        Core::new("b", settings.clone()),
        Core::new("h", settings),
    );
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    h.set_private_key(Some(kh));
    a.upsert_peer(peer(kh.public_key(), Some(addr(3)), &["10.0.0.0/16"])).unwrap();
    b.upsert_peer(peer(kh.public_key(), Some(addr(3)), &["10.0.0.0/16"])).unwrap();
    h.upsert_peer(peer(ka.public_key(), Some(addr(1)), &["10.0.1.0/24"])).unwrap();
    h.upsert_peer(peer(kb.public_key(), Some(addr(2)), &["10.0.2.0/24"])).unwrap();
    let mut net = LoopbackNet::new();
    net.add(a, addr(1));
    net.add(b, addr(2));
    net.add(h, addr(3));

    // What was written into a TUN, by normalised packet: how many times.
    let mut sent: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut it = data.iter().copied();
    let mut ops = 0;
    while let Some(op) = it.next() {
        ops += 1;
        if ops > 64 {
            break;
        }
        let node = usize::from(op >> 4) % 3;
        match op % 7 {
            // Raw bytes into a TUN.
            0 => {
                let len = usize::from(it.next().unwrap_or(0)) * 4;
                let p: Vec<u8> = it.by_ref().take(len).collect();
                *sent.entry(normal(&p)).or_default() += 1;
                net.send_from_tun(node, &p);
            }
            // A well-formed packet from one spoke's range to the other's.
            1 | 2 => {
                let n = it.next().unwrap_or(0);
                let (src, dst) = if node == 0 {
                    ([10, 0, 1, 1], [10, 0, 2, n])
                } else {
                    ([10, 0, 2, 1], [10, 0, 1, n])
                };
                let p = udp4(src, dst, 64, &[n; 24]);
                *sent.entry(normal(&p)).or_default() += 1;
                net.send_from_tun(if node == 0 { 0 } else { 1 }, &p);
            }
            // Garbage on the wire.
            3 => {
                let len = usize::from(it.next().unwrap_or(0));
                let p: Vec<u8> = it.by_ref().take(len).collect();
                net.inject_datagram(addr(9), addr(node as u8 + 1), &p);
            }
            // A replay, or a forgery, of a datagram in flight.
            4 => {
                let flight = net.in_flight();
                if !flight.is_empty() {
                    let i = usize::from(it.next().unwrap_or(0)) % flight.len();
                    let (from, to, mut bytes) = flight[i].clone();
                    let at = usize::from(it.next().unwrap_or(0));
                    let x = it.next().unwrap_or(0);
                    if x != 0 && !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] ^= x;
                    }
                    net.inject_datagram(from, to, &bytes);
                }
            }
            5 => {
                net.run(usize::from(it.next().unwrap_or(8) % 32));
            }
            _ => net.tick(),
        }
    }
    net.run(64);

    let mut delivered: HashMap<Vec<u8>, usize> = HashMap::new();
    for n in &net.nodes {
        for p in &n.tun_delivered {
            *delivered.entry(normal(p)).or_default() += 1;
        }
        let t = n.core.totals();
        assert_eq!(
            n.tun_count,
            t.forwarded_on(Path::ToLocal),
            "TUN deliveries and the to-local counter of {}",
            n.addr
        );
    }
    for (p, times) in &delivered {
        let written = sent.get(p).copied().unwrap_or(0);
        assert!(
            *times <= written,
            "delivered {times} times, written {written} times: {p:02x?}"
        );
    }
});
