//! The pipeline's MTU and ICMP paths over the loopback backend: relayed IPv4 without DF is
//! fragmented, the rest gets "packet too big", and ICMP errors keep to their rate limit.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use etherparse::PacketBuilder;

use super::{Core, PeerSpec, Settings};
use crate::fib::Via;
use crate::io::loopback::LoopbackNet;
use crate::keys::Key;
use crate::stats::{DropReason, Path};
use crate::tunnel::PeerSettings;
use crate::wire::{self, checksum};

fn key(seed: u8) -> Key {
    Key::from_seed(seed)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 51820))
}

fn peer(k: Key, endpoint: SocketAddr, allowed: &[&str]) -> PeerSpec {
    PeerSpec {
        public_key: k.public_key(),
        endpoint: Some(endpoint),
        settings: PeerSettings {
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        },
    }
}

/// An IPv4 UDP packet of `len` bytes; DF as asked.
fn udp4(src: [u8; 4], dst: [u8; 4], ttl: u8, len: usize, df: bool) -> Vec<u8> {
    let mut p = Vec::new();
    let payload: Vec<u8> = (0..len - 28).map(|i| i as u8).collect();
    (PacketBuilder::ipv4(src, dst, ttl).udp(4000, 5000))
        .write(&mut p, &payload)
        .unwrap();
    if !df {
        p[6] &= !0x40;
        fix_v4_checksum(&mut p);
    }
    p
}

/// An IPv6 UDP packet of `len` bytes.
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    (PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(4000, 5000))
        .write(&mut p, &vec![7; len - 48])
        .unwrap();
    p
}

fn fix_v4_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// `p` one hop later: TTL decremented.
fn hop(p: &[u8]) -> Vec<u8> {
    let mut p = p.to_vec();
    p[8] -= 1;
    fix_v4_checksum(&mut p);
    p
}

const A: [u8; 4] = [10, 0, 1, 1];
const B: [u8; 4] = [10, 0, 2, 1];
const H_ICMP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const HUB_MTU: u16 = 1280;

fn a6() -> Ipv6Addr {
    "fd00:1::1".parse().unwrap()
}

fn b6() -> Ipv6Addr {
    "fd00:2::1".parse().unwrap()
}

/// A (node 0, 10.0.1.1) — H (node 2, the hub, tunnel MTU 1280) — B (node 1, 10.0.2.1), with
/// both sessions up and nothing delivered yet.
fn hub() -> LoopbackNet {
    let (ka, kb, kh) = (key(1), key(2), key(3));
    let a = Core::new("a", Settings::default());
    let b = Core::new("b", Settings::default());
    let h = Core::new(
        "h",
        Settings {
            mtu: HUB_MTU,
            icmp_src_v4: Some(H_ICMP),
            icmp_src_v6: Some("fd00::fe".parse().unwrap()),
            ..Settings::default()
        },
    );
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    h.set_private_key(Some(kh));
    for c in [&a, &b] {
        c.upsert_peer(peer(kh, addr(3), &["10.0.0.0/8", "fd00::/16"]))
            .unwrap();
    }
    h.upsert_peer(peer(ka, addr(1), &["10.0.1.0/24", "fd00:1::/64"]))
        .unwrap();
    h.upsert_peer(peer(kb, addr(2), &["10.0.2.0/24", "fd00:2::/64"]))
        .unwrap();
    let mut net = LoopbackNet::new();
    net.add(a, addr(1));
    net.add(b, addr(2));
    net.add(h, addr(3));
    net.send_from_tun(0, &udp4(A, B, 64, 100, true));
    net.run(32);
    net.send_from_tun(1, &udp4(B, A, 64, 100, true));
    net.run(32);
    assert_eq!(net.nodes[0].tun_delivered.len(), 1, "B to A");
    assert_eq!(net.nodes[1].tun_delivered.len(), 1, "A to B");
    for n in &mut net.nodes {
        n.tun_delivered.clear();
    }
    net
}

fn hub_settings(net: &LoopbackNet, f: impl FnOnce(&mut Settings)) {
    let core = &net.nodes[2].core;
    let mut s = (*core.settings()).clone();
    f(&mut s);
    core.set_settings(s);
}

#[test]
fn relayed_ipv4_without_df_is_fragmented_to_the_mtu() {
    let mut net = hub();
    let relayed = net.nodes[2].core.totals().forwarded_on(Path::Relay);
    for len in [1281, 1400, 1420] {
        let p = udp4(A, B, 64, len, false);
        net.send_from_tun(0, &p);
        net.run(32);
        let frags = std::mem::take(&mut net.nodes[1].tun_delivered);
        assert_eq!(frags.len(), 2, "{len} bytes over a 1280-byte tunnel");
        assert!(frags.iter().all(|f| f.len() <= usize::from(HUB_MTU)));
        assert!(frags
            .iter()
            .all(|f| etherparse::Ipv4Slice::from_slice(f).is_ok()));
        // The TTL was decremented once, before fragmenting.
        assert_eq!(wire::tests::reassemble_v4(&frags), hop(&p));
    }
    let t = net.nodes[2].core.totals();
    assert_eq!((t.fragmented, t.fragments), (3, 6), "{t:?}");
    assert_eq!(t.forwarded_on(Path::Relay), relayed + 3);
    assert_eq!(t.dropped(DropReason::TooBig), 0);
    assert_eq!(t.icmp_sent, 0);
    // At the MTU: whole.
    let p = udp4(A, B, 64, usize::from(HUB_MTU), false);
    net.send_from_tun(0, &p);
    net.run(32);
    assert_eq!(net.nodes[1].tun_delivered, vec![hop(&p)]);
    assert_eq!(net.nodes[2].core.totals().fragmented, 3);
}

#[test]
fn relayed_packets_with_df_or_ipv6_get_packet_too_big() {
    let mut net = hub();
    net.send_from_tun(0, &udp4(A, B, 64, 1400, true));
    net.run(32);
    assert!(net.nodes[1].tun_delivered.is_empty());
    let icmp = net.nodes[0].tun_delivered.pop().expect("an ICMP error");
    assert_eq!(&icmp[12..16], &H_ICMP.octets());
    assert_eq!(
        (icmp[9], icmp[20], icmp[21]),
        (
            wire::proto::ICMP,
            wire::icmpv4::DEST_UNREACHABLE,
            wire::icmpv4::CODE_FRAG_NEEDED
        )
    );
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), HUB_MTU);

    net.send_from_tun(0, &udp6(a6(), b6(), 1400));
    net.run(32);
    assert!(net.nodes[1].tun_delivered.is_empty());
    let icmp = net.nodes[0].tun_delivered.pop().expect("an ICMPv6 error");
    assert_eq!(
        (icmp[6], icmp[40]),
        (wire::proto::ICMPV6, wire::icmpv6::PACKET_TOO_BIG)
    );
    assert_eq!(
        u32::from_be_bytes(icmp[44..48].try_into().unwrap()),
        u32::from(HUB_MTU)
    );
    let t = net.nodes[2].core.totals();
    assert_eq!(t.dropped(DropReason::TooBig), 2, "{t:?}");
    assert_eq!((t.icmp_sent, t.fragmented), (2, 0), "{t:?}");
}

#[test]
fn mesh_packets_over_the_mtu_are_fragmented_or_refused() {
    let mut net = hub();
    // The hub's mesh side: 10.0.3.0/24, through its TUN.
    net.nodes[2]
        .core
        .set_static_routes(vec![("10.0.3.0/24".parse().unwrap(), Via::Local)]);
    let p = udp4([10, 0, 3, 3], B, 64, 1400, false);
    net.send_from_mesh(2, &p);
    net.run(32);
    let frags = std::mem::take(&mut net.nodes[1].tun_delivered);
    assert_eq!(frags.len(), 2);
    assert_eq!(wire::tests::reassemble_v4(&frags), hop(&p));
    let t = net.nodes[2].core.totals();
    assert_eq!((t.fragmented, t.fragments), (1, 2), "{t:?}");
    assert_eq!(t.forwarded_on(Path::FromMesh), 1);

    net.send_from_mesh(2, &udp4([10, 0, 3, 3], B, 64, 1400, true));
    net.run(32);
    assert!(net.nodes[1].tun_delivered.is_empty());
    let icmp = net.nodes[2]
        .tun_delivered
        .pop()
        .expect("an ICMP error, to the mesh");
    assert_eq!(&icmp[16..20], &[10, 0, 3, 3]);
    assert_eq!(
        (icmp[20], icmp[21]),
        (
            wire::icmpv4::DEST_UNREACHABLE,
            wire::icmpv4::CODE_FRAG_NEEDED
        )
    );
    let t = net.nodes[2].core.totals();
    assert_eq!(t.dropped(DropReason::TooBig), 1, "{t:?}");
}

#[test]
fn icmp_errors_keep_to_the_rate_limit() {
    let mut net = hub();
    // One a second after a burst of 5: whatever the test's speed, at most a few more than 5.
    hub_settings(&net, |s| (s.icmp_rate, s.icmp_burst) = (1, 5));
    let start = Instant::now();
    for _ in 0..30 {
        net.send_from_tun(0, &udp4(A, B, 1, 100, true)); // time exceeded at the hub
        net.send_from_tun(0, &udp4(A, B, 64, 1400, true)); // too big for the hub's tunnel
    }
    net.run(64);
    let refill = start.elapsed().as_secs() + 1;
    let t = net.nodes[2].core.totals();
    assert_eq!(t.dropped(DropReason::TtlExceeded), 30, "{t:?}");
    assert_eq!(t.dropped(DropReason::TooBig), 30, "{t:?}");
    assert_eq!(t.icmp_sent + t.icmp_ratelimited, 60, "{t:?}");
    assert!(t.icmp_sent >= 5, "the burst goes: {t:?}");
    assert!(t.icmp_sent <= 5 + refill, "then one a second: {t:?}");
    let errors = &net.nodes[0].tun_delivered;
    assert_eq!(errors.len() as u64, t.icmp_sent);
    assert!(errors.iter().all(|e| e[9] == wire::proto::ICMP));
    assert!(net.nodes[1].tun_delivered.is_empty());

    // 0: no limit.
    hub_settings(&net, |s| s.icmp_rate = 0);
    for _ in 0..20 {
        net.send_from_tun(0, &udp4(A, B, 1, 100, true));
    }
    net.run(64);
    let u = net.nodes[2].core.totals();
    assert_eq!(u.icmp_sent, t.icmp_sent + 20, "{u:?}");
    assert_eq!(u.icmp_ratelimited, t.icmp_ratelimited);
}

#[test]
fn packets_that_get_no_error_spend_no_token() {
    let mut net = hub();
    // A burst of one, refilled once an hour: one error, ever, in this test.
    hub_settings(&net, |s| (s.icmp_rate, s.icmp_burst) = (1, 1));
    // An ICMP error with a TTL of 1 gets no error about it (RFC 1812 4.3.2.7)...
    let about = udp4(B, A, 64, 100, true);
    let mut err = [0u8; 600];
    let from = std::net::IpAddr::V4(Ipv4Addr::from(A));
    let n = wire::icmp_error(wire::IcmpError::NoRoute, &about, from, &mut err).unwrap();
    let mut err = err[..n].to_vec();
    err[16..20].copy_from_slice(&B); // toward B, through the hub
    err[8] = 1;
    fix_v4_checksum(&mut err);
    for _ in 0..10 {
        net.send_from_tun(0, &err);
    }
    net.run(32);
    let t = net.nodes[2].core.totals();
    assert_eq!(t.dropped(DropReason::TtlExceeded), 10, "{t:?}");
    assert_eq!((t.icmp_sent, t.icmp_ratelimited), (0, 0), "{t:?}");
    // ... so the one token is still there for a packet that does.
    for _ in 0..3 {
        net.send_from_tun(0, &udp4(A, B, 1, 100, true));
    }
    net.run(32);
    let t = net.nodes[2].core.totals();
    assert_eq!((t.icmp_sent, t.icmp_ratelimited), (1, 2), "{t:?}");
    assert_eq!(net.nodes[0].tun_delivered.len(), 1);
}
