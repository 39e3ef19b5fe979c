//! Forged handshake messages against a gateway, on the loopback backend.
//!
//! The attack: push the handshake budget over its limit with messages that carry a valid
//! mac1 (which needs only the gateway's public key), then send forged responses, initiations,
//! cookie replies and transport data naming a real peer's receiver index, from another
//! address. Nothing a forged message does may change the peer: not its endpoint, not its
//! counters, not its handshake count, no events; and its traffic keeps flowing.

mod common;

use common::{key, public};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use etherparse::PacketBuilder;
use isthmus_dataplane::forward::{Core, CoreEvent, PeerSpec, Settings};
use isthmus_dataplane::io::loopback::LoopbackNet;
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::stats::DropReason;
use isthmus_dataplane::tunnel::guard::{HANDSHAKE_BUDGET, PER_SOURCE_BURST, PER_SOURCE_RATE};
use isthmus_dataplane::tunnel::macs::MacKeys;
use isthmus_dataplane::tunnel::{Peer, PeerSettings};
use isthmus_dataplane::wire::wg;

fn udp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(4000, 5000)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 51820))
}

/// The attacker's address.
fn attacker() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(203, 0, 113, 66), 40000))
}

fn peer(public_key: Key, endpoint: SocketAddr, allowed: &str) -> PeerSpec {
    PeerSpec {
        public_key,
        endpoint: Some(endpoint),
        settings: PeerSettings {
            allowed_ips: vec![allowed.parse().unwrap()],
            ..Default::default()
        },
    }
}

/// Deterministic filler: a small xorshift generator.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *x = self.0 as u8;
        }
    }
}

/// A handshake message of type `ty` (an initiation or a response, of its size) with a random
/// body, `receiver` at its receiver field (responses) and a valid mac1 for the owner of `to`.
fn forged(ty: u8, receiver: Option<u32>, to: &Key, noise: &mut Noise) -> Vec<u8> {
    let len = match ty {
        wg::INITIATION => wg::INITIATION_LEN,
        wg::RESPONSE => wg::RESPONSE_LEN,
        _ => unreachable!("not a handshake message type: {ty}"),
    };
    let mut m = vec![0u8; len];
    noise.fill(&mut m[4..]);
    m[..4].copy_from_slice(&[ty, 0, 0, 0]);
    if let Some(r) = receiver {
        m[8..12].copy_from_slice(&r.to_le_bytes());
    }
    m[len - 16..].fill(0);
    MacKeys::new(&to.0).set_mac1(&mut m);
    m
}

/// A's view of B: what forged packets must not change.
#[derive(Debug, PartialEq, Eq)]
struct View {
    endpoint: Option<SocketAddr>,
    rx_bytes: u64,
    rx_packets: u64,
    handshakes: u64,
}

fn view(p: &Peer) -> View {
    View {
        endpoint: p.endpoint(),
        rx_bytes: p.counters.rx_bytes.load(Relaxed),
        rx_packets: p.counters.rx_packets.load(Relaxed),
        handshakes: p.counters.handshakes.load(Relaxed),
    }
}

struct Lab {
    net: LoopbackNet,
    ka: Key,
    kb: Key,
    /// Events of A.
    events: Arc<Mutex<Vec<String>>>,
}

/// A (10.0.0.1) and B (10.0.0.2), peered; A's events recorded.
fn lab() -> Lab {
    let (ka, kb) = (key(1), key(2));
    let a = Core::new("a", Settings::default());
    let b = Core::new("b", Settings::default());
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    a.upsert_peer(peer(public(kb), addr(2), "10.0.0.2/32"))
        .unwrap();
    b.upsert_peer(peer(public(ka), addr(1), "10.0.0.1/32"))
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    a.set_event_sink(Arc::new(move |e: CoreEvent| {
        if !matches!(e, CoreEvent::Punt(..)) {
            ev.lock().unwrap().push(format!("{e:?}"));
        }
        true
    }));
    let mut net = LoopbackNet::new();
    net.add(a, addr(1));
    net.add(b, addr(2));
    net.nodes[0].keep_tun = true;
    net.nodes[1].keep_tun = true;
    Lab {
        net,
        ka,
        kb,
        events,
    }
}

impl Lab {
    fn b_at_a(&self) -> Arc<Peer> {
        self.net.nodes[0]
            .core
            .peers()
            .by_key(&public(self.kb))
            .unwrap()
            .clone()
    }

    /// Traffic both ways gets through.
    fn traffic_flows(&mut self, what: &str) {
        self.net.nodes[0].tun_delivered.clear();
        self.net.nodes[1].tun_delivered.clear();
        self.net
            .send_from_tun(0, &udp4([10, 0, 0, 1], [10, 0, 0, 2], what.as_bytes()));
        self.net.run(16);
        self.net
            .send_from_tun(1, &udp4([10, 0, 0, 2], [10, 0, 0, 1], what.as_bytes()));
        self.net.run(16);
        assert_eq!(self.net.nodes[1].tun_delivered.len(), 1, "A → B: {what}");
        assert_eq!(self.net.nodes[0].tun_delivered.len(), 1, "B → A: {what}");
    }

    /// Push A over its handshake budget with initiations that have a valid mac1.
    fn overload_a(&mut self, noise: &mut Noise) {
        for i in 0..HANDSHAKE_BUDGET as u32 + 50 {
            let m = forged(wg::INITIATION, None, &public(self.ka), noise);
            let from = SocketAddr::from((Ipv4Addr::from(0xc612_0000 + i), 1000));
            self.net.inject_datagram(from, addr(1), &m);
        }
        self.net.run(8);
        assert!(self.net.nodes[0].core.handshakes_under_load());
    }
}

#[test]
fn forged_responses_for_a_pending_handshake_change_nothing() {
    let mut lab = lab();
    let mut noise = Noise(0x5eed);
    // A starts a handshake; its initiation is on the wire, not yet answered.
    lab.net
        .send_from_tun(0, &udp4([10, 0, 0, 1], [10, 0, 0, 2], b"queued"));
    lab.net.flush_tun(0);
    let init = lab.net.in_flight().pop().expect("A's initiation").2;
    assert_eq!(init[0], wg::INITIATION);
    let pending = u32::from_le_bytes(init[4..8].try_into().unwrap());
    let before = view(&lab.b_at_a());
    // Forged responses naming the pending handshake, from the attacker: they reach A
    // before B's real response does.
    for _ in 0..20 {
        let m = forged(wg::RESPONSE, Some(pending), &public(lab.ka), &mut noise);
        lab.net.inject_datagram(attacker(), addr(1), &m);
    }
    lab.net.run(1);
    assert_eq!(
        view(&lab.b_at_a()),
        before,
        "forged responses changed B's state at A"
    );
    assert!(lab.events.lock().unwrap().is_empty(), "{:?}", lab.events);
    let t = lab.net.nodes[0].core.totals();
    assert_eq!(t.dropped(DropReason::HandshakeFailed), 20, "{t:?}");
    // The real handshake still completes, once, with B's real address.
    lab.net.run(16);
    let after = view(&lab.b_at_a());
    assert_eq!(after.endpoint, Some(addr(2)));
    assert_eq!(after.handshakes, 1);
    assert_eq!(lab.net.nodes[1].tun_delivered.len(), 1, "the queued packet");
    assert_eq!(
        lab.events.lock().unwrap().as_slice(),
        [format!("HandshakeUp({:?})", public(lab.kb))]
    );
    // The receiver index on the wire is not boringtun's `peer id << 8 | n`.
    assert_ne!(pending >> 8, lab.b_at_a().id);
    lab.traffic_flows("after forged responses");
}

#[test]
fn under_load_forged_messages_get_cookies_and_change_nothing() {
    let mut lab = lab();
    let mut noise = Noise(0xa77ac);
    lab.traffic_flows("before");
    let b_at_a = lab.b_at_a();
    assert_eq!(view(&b_at_a).handshakes, 1);
    lab.events.lock().unwrap().clear();
    // A real index of A's session with B: the receiver index of B's transport packets.
    lab.net
        .send_from_tun(1, &udp4([10, 0, 0, 2], [10, 0, 0, 1], b"capture"));
    lab.net.flush_tun(1);
    let data = lab.net.in_flight().pop().unwrap().2;
    assert_eq!(data[0], wg::DATA);
    let index = u32::from_le_bytes(data[4..8].try_into().unwrap());
    lab.net.run(4);

    lab.overload_a(&mut noise);
    let before = view(&b_at_a);
    let t0 = lab.net.nodes[0].core.totals();
    let mut sent = 0u64;
    for round in 0..10 {
        let mut batch = vec![
            // Responses naming the live session, and naming guessable indices.
            forged(wg::RESPONSE, Some(index), &public(lab.ka), &mut noise),
            forged(
                wg::RESPONSE,
                Some(b_at_a.id << 8 | 1),
                &public(lab.ka),
                &mut noise,
            ),
            // Initiations (random body).
            forged(wg::INITIATION, None, &public(lab.ka), &mut noise),
        ];
        // A cookie reply and transport data naming the live index.
        let mut cookie = vec![wg::COOKIE_REPLY, 0, 0, 0];
        cookie.extend_from_slice(&index.to_le_bytes());
        cookie.resize(wg::COOKIE_REPLY_LEN, 0);
        noise.fill(&mut cookie[8..]);
        batch.push(cookie);
        let mut transport = vec![wg::DATA, 0, 0, 0];
        transport.extend_from_slice(&index.to_le_bytes());
        transport.extend_from_slice(&(1_000_000u64 + round).to_le_bytes());
        transport.resize(16 + 64, 0);
        noise.fill(&mut transport[16..]);
        batch.push(transport);
        // A replay of B's real transport packet from the attacker.
        batch.push(data.clone());
        for m in &batch {
            lab.net.inject_datagram(attacker(), addr(1), m);
            sent += 1;
        }
        lab.net.run(4);
    }
    assert_eq!(
        view(&b_at_a),
        before,
        "forged messages changed B's state at A"
    );
    assert!(lab.events.lock().unwrap().is_empty(), "{:?}", lab.events);
    let t = lab.net.nodes[0].core.totals();
    let dropped: u64 = t.drops.iter().sum::<u64>() - t0.drops.iter().sum::<u64>();
    assert_eq!(
        dropped, sent,
        "every forged message is dropped and counted: {t:?}"
    );
    // The handshake messages were answered with cookies, counted as rate limited.
    let limited =
        t.dropped(DropReason::HandshakeRateLimited) - t0.dropped(DropReason::HandshakeRateLimited);
    assert_eq!(limited, 30, "{t:?}");
    assert_eq!(t.cookies_sent - t0.cookies_sent, 30);
    // The legitimate peer's traffic flows all along.
    lab.traffic_flows("under load");
    assert_eq!(view(&b_at_a).endpoint, Some(addr(2)));
}

#[test]
fn a_source_that_answers_cookies_is_held_to_its_rate() {
    // The attacker owns its address: it takes our cookie and sends initiations with a valid
    // mac2. Without a per-source limit each one would cost a handshake's worth of
    // Diffie-Hellman; with it, only the source's burst gets through to boringtun.
    let mut lab = lab();
    let mut noise = Noise(0xc00c1e);
    lab.traffic_flows("before");
    lab.overload_a(&mut noise);
    let ka_pub = public(lab.ka);
    let keys = MacKeys::new(&ka_pub.0);
    let mut state = isthmus_dataplane::tunnel::macs::CookieState::default();
    let mut m = forged(wg::INITIATION, None, &ka_pub, &mut noise);
    let sender = u32::from_le_bytes(m[4..8].try_into().unwrap());
    state.seal(&keys, sender, &mut m);
    lab.net.inject_datagram(attacker(), addr(1), &m);
    // Catch the cookie reply A sends to the attacker.
    let cookie = loop {
        let Some((_, to, d)) = lab
            .net
            .in_flight()
            .into_iter()
            .find(|(_, to, _)| *to == attacker())
        else {
            lab.net.run(1);
            continue;
        };
        assert_eq!(to, attacker());
        break d;
    };
    assert!(
        state.consume(&keys, sender, &cookie),
        "a cookie for the attacker"
    );
    let t0 = lab.net.nodes[0].core.totals();
    let started = std::time::Instant::now();
    for _ in 0..500 {
        let mut m = forged(wg::INITIATION, None, &ka_pub, &mut noise);
        m[4..8].copy_from_slice(&sender.to_le_bytes());
        state.seal(&keys, sender, &mut m);
        lab.net.inject_datagram(attacker(), addr(1), &m);
    }
    lab.net.run(8);
    // The source earns its rate back as time passes (slowly, in a debug build).
    let earned = (started.elapsed().as_secs_f64() * PER_SOURCE_RATE as f64).ceil() as u64;
    let t = lab.net.nodes[0].core.totals();
    let failed = t.dropped(DropReason::HandshakeFailed) - t0.dropped(DropReason::HandshakeFailed);
    let limited =
        t.dropped(DropReason::HandshakeRateLimited) - t0.dropped(DropReason::HandshakeRateLimited);
    assert!(
        failed <= PER_SOURCE_BURST + earned,
        "at most the source's burst and rate reach boringtun: {failed} (earned {earned})"
    );
    assert_eq!(failed + limited, 500, "{t:?}");
    assert_eq!(
        t.cookies_sent, t0.cookies_sent,
        "mac2 was valid: no more cookies"
    );
    // The legitimate peer's session is untouched.
    lab.traffic_flows("after the attack");
}

#[test]
fn a_handshake_counts_when_the_session_is_confirmed_not_when_answered() {
    let mut lab = lab();
    let b_events = Arc::new(Mutex::new(Vec::new()));
    let ev = b_events.clone();
    lab.net.nodes[1]
        .core
        .set_event_sink(Arc::new(move |e: CoreEvent| {
            if matches!(e, CoreEvent::HandshakeUp(_)) {
                ev.lock().unwrap().push(format!("{e:?}"));
            }
            true
        }));
    let a_at_b_peer = lab_peer(&lab.net.nodes[1].core, &public(lab.ka));
    let a_at_b = || a_at_b_peer.counters.handshakes.load(Relaxed);
    // A initiates (a packet queued behind the handshake); B receives it and answers.
    lab.net
        .send_from_tun(0, &udp4([10, 0, 0, 1], [10, 0, 0, 2], b"first"));
    lab.net.flush_tun(0);
    lab.net.run(1);
    let answer = lab.net.in_flight();
    assert!(
        answer
            .iter()
            .any(|(_, to, d)| *to == addr(1) && d[0] == wg::RESPONSE),
        "B's response"
    );
    assert_eq!(a_at_b(), 0, "answering an initiation completes nothing");
    assert!(b_events.lock().unwrap().is_empty());
    // A gets the response (its handshake is complete) and sends the queued packet on the new
    // session, which confirms it for B.
    lab.net.run(16);
    assert_eq!(view(&lab.b_at_a()).handshakes, 1);
    assert_eq!(a_at_b(), 1);
    assert_eq!(b_events.lock().unwrap().len(), 1);
    assert_eq!(lab.net.nodes[1].tun_delivered.len(), 1);
}

fn lab_peer(core: &Core, key: &Key) -> Arc<Peer> {
    core.peers().by_key(key).unwrap().clone()
}
