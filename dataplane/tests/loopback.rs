//! The whole pipeline on the loopback backend: handshakes, traffic both ways, relay through
//! a hub, and bad input — all in memory, deterministic.

mod common;

use common::{key, public};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use etherparse::{icmpv4, IpNumber, PacketBuilder};
use isthmus_dataplane::forward::{Core, PeerSpec, Settings};
use isthmus_dataplane::io::loopback::LoopbackNet;
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::stats::{DropReason, Path};
use isthmus_dataplane::tunnel::PeerSettings;
use isthmus_dataplane::wire::wg;

fn udp4(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, ttl).udp(4000, 5000);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src, dst, 64).udp(4000, 5000);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
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

/// Two nodes A (10.0.0.1, fd00::1) and B (10.0.0.2, fd00::2) peered with each other.
fn pair() -> (LoopbackNet, Key, Key) {
    let (ka, kb) = (key(1), key(2));
    let a = Core::new("a", Settings::default());
    let b = Core::new("b", Settings::default());
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    a.upsert_peer(peer(
        public(kb),
        Some(addr(2)),
        &["10.0.0.2/32", "fd00::2/128"],
    ))
    .unwrap();
    b.upsert_peer(peer(
        public(ka),
        Some(addr(1)),
        &["10.0.0.1/32", "fd00::1/128"],
    ))
    .unwrap();
    let mut net = LoopbackNet::new();
    net.add(a, addr(1));
    net.add(b, addr(2));
    (net, ka, kb)
}

#[test]
fn two_nodes_handshake_and_exchange_both_ways() {
    let (mut net, _, _) = pair();
    let p = udp4([10, 0, 0, 1], [10, 0, 0, 2], 64, b"hello b");
    net.send_from_tun(0, &p);
    net.run(16);
    // The first packet was queued during the handshake and delivered after it.
    assert_eq!(net.nodes[1].tun_delivered, vec![p.clone()]);
    let back = udp6(
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        b"hello a",
    );
    net.send_from_tun(1, &back);
    net.run(16);
    assert_eq!(net.nodes[0].tun_delivered, vec![back]);
    for _ in 0..200 {
        net.send_from_tun(0, &p);
    }
    net.run(64);
    assert_eq!(net.nodes[1].tun_delivered.len(), 201);
    let ta = net.nodes[0].core.totals();
    assert_eq!(ta.forwarded_on(Path::FromLocal), 201);
    let tb = net.nodes[1].core.totals();
    assert_eq!(tb.forwarded_on(Path::ToLocal), 201);
    let peer_b = net.nodes[0].core.peers().iter().next().unwrap().clone();
    assert!(peer_b.last_handshake().is_some());
    assert!(
        peer_b
            .counters
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn hub_relays_between_spokes_without_local_delivery() {
    // A (10.0.1.1) — H — B (10.0.2.1): A and B only know H.
    let (ka, kb, kh) = (key(1), key(2), key(3));
    let (a, b, h) = (
        Core::new("a", Settings::default()),
        Core::new("b", Settings::default()),
        Core::new("h", Settings::default()),
    );
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    h.set_private_key(Some(kh));
    a.upsert_peer(peer(public(kh), Some(addr(3)), &["10.0.0.0/16"]))
        .unwrap();
    b.upsert_peer(peer(public(kh), Some(addr(3)), &["10.0.0.0/16"]))
        .unwrap();
    h.upsert_peer(peer(public(ka), None, &["10.0.1.0/24"]))
        .unwrap();
    h.upsert_peer(peer(public(kb), None, &["10.0.2.0/24"]))
        .unwrap();
    let mut net = LoopbackNet::new();
    net.add(a, addr(1));
    net.add(b, addr(2));
    net.add(h, addr(3));
    // B must have talked to H first so H knows B's endpoint.
    net.send_from_tun(1, &udp4([10, 0, 2, 1], [10, 0, 1, 1], 64, b"b to a"));
    net.run(32);
    assert_eq!(
        net.nodes[0].tun_delivered.len(),
        0,
        "H does not know A's endpoint yet"
    );
    net.send_from_tun(0, &udp4([10, 0, 1, 1], [10, 0, 2, 1], 64, b"a to b"));
    net.run(32);
    net.send_from_tun(1, &udp4([10, 0, 2, 1], [10, 0, 1, 1], 64, b"b to a again"));
    net.run(32);
    assert_eq!(net.nodes[1].tun_delivered.len(), 1);
    assert_eq!(net.nodes[0].tun_delivered.len(), 1);
    // TTL was decremented by exactly one hop.
    assert_eq!(net.nodes[1].tun_delivered[0][8], 63);
    let th = net.nodes[2].core.totals();
    assert!(th.forwarded_on(Path::Relay) >= 2, "{th:?}");
    assert_eq!(th.forwarded_on(Path::ToLocal), 0);
    assert_eq!(
        net.nodes[2].tun_count, 0,
        "relay must not touch the hub's TUN"
    );
}

#[test]
fn bad_input_is_dropped_counted_and_harmless() {
    let (mut net, _, _) = pair();
    let p = udp4([10, 0, 0, 1], [10, 0, 0, 2], 64, b"x");
    net.send_from_tun(0, &p);
    net.run(16);
    assert_eq!(net.nodes[1].tun_delivered.len(), 1);
    // Capture a data packet in flight to replay it.
    net.send_from_tun(0, &p);
    net.flush_tun(0);
    let captured = net.in_flight();
    assert_eq!(captured.len(), 1);
    net.run(16);
    let evil = addr(66);
    net.inject_datagram(evil, addr(2), b"garbage that is not wireguard");
    net.inject_datagram(evil, addr(2), &[wg::DATA, 0, 0, 0, 1, 2]);
    net.inject_datagram(evil, addr(2), &[wg::INITIATION, 0, 0, 0]);
    let mut bogus = vec![wg::DATA, 0, 0, 0];
    bogus.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    bogus.resize(64, 0);
    net.inject_datagram(evil, addr(2), &bogus);
    // Replay from the real source and from elsewhere.
    net.inject_datagram(captured[0].0, addr(2), &captured[0].2);
    net.inject_datagram(evil, addr(2), &captured[0].2);
    // Tampered ciphertext with a valid index.
    let mut tampered = captured[0].2.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    tampered[8] = tampered[8].wrapping_add(100);
    net.inject_datagram(captured[0].0, addr(2), &tampered);
    // Handshake initiation from an unknown key: a real one, made by a stranger.
    let stranger = Core::new("s", Settings::default());
    stranger.set_private_key(Some(key(9)));
    stranger
        .upsert_peer(peer(public(key(2)), Some(addr(2)), &["10.0.0.2/32"]))
        .unwrap();
    let mut other = LoopbackNet::new();
    other.add(stranger, evil);
    other.send_from_tun(0, &p);
    other.flush_tun(0);
    for (_, _, d) in other.in_flight() {
        net.inject_datagram(evil, addr(2), &d);
    }
    net.run(16);
    let t = net.nodes[1].core.totals();
    assert_eq!(t.dropped(DropReason::BadPacket), 3, "{t:?}");
    assert_eq!(t.dropped(DropReason::UnknownIndex), 1, "{t:?}");
    assert!(t.dropped(DropReason::Replay) >= 2, "{t:?}");
    assert!(
        t.dropped(DropReason::DecryptFailed) + t.dropped(DropReason::Replay) >= 3,
        "{t:?}"
    );
    assert_eq!(t.dropped(DropReason::UnknownPeer), 1, "{t:?}");
    // Spoofed inner source: A sends from an address B doesn't allow for A.
    net.send_from_tun(0, &udp4([10, 9, 9, 9], [10, 0, 0, 2], 64, b"spoof"));
    net.run(16);
    assert_eq!(
        net.nodes[1]
            .core
            .totals()
            .dropped(DropReason::SpoofedSource),
        1
    );
    // The real peer still gets through, and its endpoint was not hijacked by the replays.
    let before = net.nodes[1].tun_delivered.len();
    net.send_from_tun(0, &p);
    net.run(16);
    assert_eq!(net.nodes[1].tun_delivered.len(), before + 1);
    let pa = net.nodes[1].core.peers().iter().next().unwrap().endpoint();
    assert_eq!(pa, Some(addr(1)));
}

#[test]
fn unroutable_relay_gets_icmp_and_ttl_expiry_is_reported() {
    let (ka, kh) = (key(1), key(3));
    let a = Core::new("a", Settings::default());
    let h = Core::new(
        "h",
        Settings {
            unrouted_local: false,
            icmp_src_v4: Some(Ipv4Addr::new(10, 0, 0, 254)),
            ..Settings::default()
        },
    );
    a.set_private_key(Some(ka));
    h.set_private_key(Some(kh));
    a.upsert_peer(peer(public(kh), Some(addr(3)), &["0.0.0.0/0"]))
        .unwrap();
    h.upsert_peer(peer(public(ka), Some(addr(1)), &["10.0.1.0/24"]))
        .unwrap();
    h.upsert_peer(peer(public(key(2)), None, &["10.0.2.0/24"]))
        .unwrap();
    let mut net = LoopbackNet::new();
    net.add(a, addr(1));
    net.add(h, addr(3));
    net.send_from_tun(0, &udp4([10, 0, 1, 1], [198, 51, 100, 7], 64, b"nowhere"));
    net.run(32);
    let t = net.nodes[1].core.totals();
    assert_eq!(t.dropped(DropReason::NoRoute), 1);
    assert_eq!(t.icmp_sent, 1);
    // A net-unreachable from the hub's address came back through the tunnel to A's TUN.
    let icmp = net.nodes[0]
        .tun_delivered
        .last()
        .expect("ICMP error delivered")
        .clone();
    assert_eq!(
        (icmp[9], icmp[20], icmp[21]),
        (
            IpNumber::ICMP.0,
            icmpv4::TYPE_DEST_UNREACH,
            icmpv4::CODE_DST_UNREACH_NET
        ),
        "ICMP type 3 code 0"
    );
    assert_eq!(&icmp[12..16], &[10, 0, 0, 254]);
    // TTL 1 through the hub: time exceeded.
    net.send_from_tun(0, &udp4([10, 0, 1, 1], [10, 0, 2, 9], 1, b"short-lived"));
    net.run(32);
    let t = net.nodes[1].core.totals();
    assert_eq!(t.dropped(DropReason::TtlExceeded), 1, "{t:?}");
    let icmp = net.nodes[0].tun_delivered.last().unwrap().clone();
    assert_eq!(
        (icmp[20], icmp[21]),
        (
            icmpv4::TYPE_TIME_EXCEEDED,
            icmpv4::CODE_TIME_EXCEEDED_TTL_EXCEEDED_IN_TRANSIT
        ),
        "ICMP time exceeded"
    );
    // Arc keeps `Arc` import used in all configurations.
    let _ = Arc::strong_count(&net.nodes[0].core);
}

#[test]
fn handshake_floods_get_cookies_and_real_peers_still_connect() {
    let (mut net, _, _) = pair();
    // Capture a genuine initiation from A and replay it as a flood from many addresses.
    net.send_from_tun(0, &udp4([10, 0, 0, 1], [10, 0, 0, 2], 64, b"x"));
    net.flush_tun(0);
    let init = net
        .in_flight()
        .into_iter()
        .find(|(_, _, d)| d[0] == wg::INITIATION)
        .expect("an initiation")
        .2;
    for i in 0..600u32 {
        let from = SocketAddr::from((
            Ipv4Addr::from(0xc633_6400 + (i % 200)),
            40000 + (i % 7) as u16,
        ));
        net.inject_datagram(from, addr(2), &init);
    }
    net.run(64);
    let t = net.nodes[1].core.totals();
    assert!(t.cookies_sent > 0, "{t:?}");
    assert_eq!(t.cookies_sent, t.dropped(DropReason::HandshakeRateLimited));
    // Below the limit the replays reached the session and were refused as stale.
    assert!(t.dropped(DropReason::HandshakeFailed) > 0, "{t:?}");
    // A new second: the limiter resets, and traffic between the real peers flows.
    net.nodes[1].core.reset_rate_limiter();
    net.nodes[0].tun_delivered.clear();
    net.nodes[1].tun_delivered.clear();
    let p = udp4([10, 0, 0, 1], [10, 0, 0, 2], 64, b"after the flood");
    net.send_from_tun(0, &p);
    net.run(16);
    net.send_from_tun(1, &udp4([10, 0, 0, 2], [10, 0, 0, 1], 64, b"reply"));
    net.run(16);
    assert_eq!(net.nodes[0].tun_delivered.len(), 1);
}

/// IPv4 header checksum, recomputed after an edit.
fn fix_v4_checksum(p: &mut [u8]) {
    p[10] = 0;
    p[11] = 0;
    let mut sum = 0u32;
    for w in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A tunnel peer's traffic to a neighbour on a mesh interface, and back: the FIB next hop
/// `via fe80::9 dev #5` sends frames there where the backend serves the interface (TTL
/// decremented, the link's MTU enforced), else through the TUN; packets from the mesh go into
/// the tunnel (TTL decremented), or to the kernel when the FIB does not route them there.
#[test]
fn tunnel_to_mesh_neighbour_and_back() {
    use isthmus_dataplane::fib::Via;
    let (mut net, _, kb) = pair();
    let nb: std::net::IpAddr = "fe80::9".parse().unwrap();
    let island: ipnet::IpNet = "10.9.0.0/16".parse().unwrap();
    let other: ipnet::IpNet = "10.8.0.0/16".parse().unwrap();
    net.nodes[0].core.set_static_routes(vec![
        (island, Via::Peer(public(kb))),
        (other, Via::Peer(public(kb))),
    ]);
    net.nodes[1].core.set_control_routes(vec![
        (
            island,
            Via::Neighbour {
                ifindex: 5,
                addr: nb,
            },
        ),
        (
            other,
            Via::Neighbour {
                ifindex: 6,
                addr: nb,
            },
        ),
    ]);
    net.nodes[1].mesh_links = vec![(5, 1500)];

    // Tunnel → mesh, TTL 64 → 63, not through B's TUN.
    let p = udp4([10, 0, 0, 1], [10, 9, 1, 1], 64, b"to the island");
    net.send_from_tun(0, &p);
    net.run(16);
    let b = &net.nodes[1];
    assert_eq!(b.tun_count, 0, "{:?}", b.tun_delivered);
    assert_eq!(b.mesh_delivered.len(), 1);
    let (ifindex, to, got) = &b.mesh_delivered[0];
    assert_eq!((*ifindex, *to), (5, nb));
    assert_eq!(got[8], 63, "TTL decremented");
    let mut want = p.clone();
    want[8] = 63;
    fix_v4_checksum(&mut want);
    assert_eq!(got, &want, "checksum updated");
    assert_eq!(b.core.totals().forwarded_on(Path::ToMesh), 1);

    // TTL 1: dropped and counted (and not sent on).
    net.send_from_tun(0, &udp4([10, 0, 0, 1], [10, 9, 1, 1], 1, b"x"));
    net.run(16);
    assert_eq!(net.nodes[1].mesh_delivered.len(), 1);
    assert_eq!(
        net.nodes[1].core.totals().dropped(DropReason::TtlExceeded),
        1
    );

    // Bigger than the mesh link: IPv4 without DF goes to the kernel (which fragments it),
    // with DF it is dropped as too big.
    net.nodes[1].mesh_links = vec![(5, 100)];
    let mut big = udp4([10, 0, 0, 1], [10, 9, 1, 1], 64, &[7; 200]);
    big[6] &= !0x40;
    fix_v4_checksum(&mut big);
    net.send_from_tun(0, &big);
    net.run(16);
    assert_eq!(
        net.nodes[1].tun_delivered,
        vec![big.clone()],
        "untouched, to the kernel"
    );
    big[6] |= 0x40;
    fix_v4_checksum(&mut big);
    net.send_from_tun(0, &big);
    net.run(16);
    assert_eq!(net.nodes[1].core.totals().dropped(DropReason::TooBig), 1);
    assert_eq!(net.nodes[1].mesh_delivered.len(), 1);
    net.nodes[1].mesh_links = vec![(5, 1500)];

    // A neighbour on an interface the backend does not serve: through the TUN, untouched.
    let q = udp4([10, 0, 0, 1], [10, 8, 1, 1], 64, b"kernel's");
    net.send_from_tun(0, &q);
    net.run(16);
    assert_eq!(net.nodes[1].tun_delivered.last(), Some(&q));
    assert_eq!(net.nodes[1].core.totals().forwarded_on(Path::ToLocal), 2);

    // Mesh → tunnel: B encrypts it to A, TTL decremented.
    let back = udp4([10, 9, 1, 1], [10, 0, 0, 1], 64, b"from the island");
    net.send_from_mesh(1, &back);
    net.run(16);
    let mut want = back.clone();
    want[8] = 63;
    fix_v4_checksum(&mut want);
    assert_eq!(net.nodes[0].tun_delivered.last(), Some(&want));
    assert_eq!(net.nodes[1].core.totals().forwarded_on(Path::FromMesh), 1);

    // Mesh → not a tunnel route (the program's table was behind): to the kernel, untouched.
    let stray = udp4([10, 9, 1, 1], [10, 8, 1, 1], 64, b"stray");
    let before = net.nodes[1].tun_count;
    net.send_from_mesh(1, &stray);
    assert_eq!(net.nodes[1].tun_count, before + 1);
    assert_eq!(net.nodes[1].tun_delivered.last(), Some(&stray));

    // Garbage from the mesh: dropped, counted.
    net.send_from_mesh(1, &[0x45, 0, 0]);
    assert_eq!(
        net.nodes[1]
            .core
            .totals()
            .dropped(DropReason::BadInnerPacket),
        1
    );
}

#[test]
fn peers_with_an_endpoint_handshake_at_the_first_tick_without_traffic() {
    let (mut net, _, kb) = pair();
    // A third node knows A but A has no endpoint for it: A must not initiate to it.
    let c = Core::new("c", Settings::default());
    c.set_private_key(Some(key(3)));
    net.nodes[0]
        .core
        .upsert_peer(peer(public(key(3)), None, &["10.0.0.3/32"]))
        .unwrap();
    net.add(c, addr(3));
    net.tick();
    net.run(16);
    let a_peers = net.nodes[0].core.peers();
    let to_b = a_peers.by_key(&public(kb)).unwrap();
    assert!(
        to_b.last_handshake().is_some(),
        "no handshake with B after one tick"
    );
    let to_c = a_peers.by_key(&public(key(3))).unwrap();
    assert!(to_c.last_handshake().is_none());
    assert_eq!(
        to_c.counters
            .tx_packets
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Once: the next ticks start no other handshake.
    let before = to_b
        .counters
        .handshakes
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        net.tick();
        net.run(16);
    }
    assert_eq!(
        to_b.counters
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
}

/// The liveness probe: keepalives both ways while nothing else is sent, "up" at the first
/// authenticated packet, "down" after `misses` intervals of silence, "up" again when the
/// link comes back; nothing for a peer without a probe.
#[test]
fn liveness_probe_reports_up_down_and_up_again() {
    use isthmus_dataplane::forward::{CoreEvent, Liveness};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    let (mut net, ka, kb) = pair();
    let probe = Liveness {
        interval: Duration::from_millis(100),
        misses: 3,
    };
    for (i, other) in [(0, kb), (1, ka)] {
        let core = &net.nodes[i].core;
        let mut spec = peer(public(other), Some(addr(2 - i as u8)), &[]);
        spec.settings = core.peers().by_key(&public(other)).unwrap().settings();
        spec.settings.liveness = Some(probe);
        core.upsert_peer(spec).unwrap();
    }
    let events: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    for i in 0..2 {
        let ev = Arc::clone(&events);
        net.nodes[i].core.set_event_sink(Arc::new(move |e| {
            match e {
                CoreEvent::PeerUp(_) => ev.lock().unwrap().push((i, "up".into())),
                CoreEvent::PeerDown(_) => ev.lock().unwrap().push((i, "down".into())),
                _ => {}
            }
            true
        }));
    }
    let take = || std::mem::take(&mut *events.lock().unwrap());
    net.tick();
    net.run(16);
    let mut probes = Vec::new();
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // The first run sends keepalives; the peer is up when one of the other's arrives.
    net.probe(&mut probes, ms(0));
    assert_eq!(take(), vec![]);
    net.run(16);
    net.probe(&mut probes, ms(10));
    assert_eq!(take(), vec![(0, "up".into()), (1, "up".into())]);
    // Silence on the wire while both probe: keepalives every interval keep it up.
    for t in (20..=1000).step_by(10) {
        net.run(16);
        net.probe(&mut probes, ms(t));
    }
    assert_eq!(take(), vec![]);
    let sent = |net: &LoopbackNet, i: usize, other: Key| {
        let peers = net.nodes[i].core.peers();
        let p = peers.by_key(&public(other)).unwrap();
        p.counters
            .tx_packets
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = sent(&net, 0, kb);
    // Cut: nothing arrives; down after 3 intervals (and not before).
    let mut down_at = None;
    for t in (1010..=1600).step_by(10) {
        net.cut();
        net.probe(&mut probes, ms(t));
        let e = take();
        if !e.is_empty() {
            assert_eq!(e, vec![(0, "down".into()), (1, "down".into())]);
            down_at = Some(t);
            break;
        }
    }
    let down_at = down_at.expect("no down event within 600 ms of silence");
    assert!(
        (1200..=1310).contains(&down_at),
        "down at {down_at} ms: 3 intervals after the last keepalive heard (900-1000 ms)"
    );
    assert!(
        sent(&net, 0, kb) > before,
        "keepalives go on while the link is cut"
    );
    // The link comes back: the next keepalives make both up again.
    for t in (down_at + 10..=down_at + 300).step_by(10) {
        net.run(16);
        net.probe(&mut probes, ms(t));
    }
    assert_eq!(take(), vec![(0, "up".into()), (1, "up".into())]);
}
