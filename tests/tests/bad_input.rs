//! Bad input at an isthmus hub: garbage, truncated and oversized messages, unknown indices,
//! handshakes from unknown keys, replayed and forged data packets, spoofed inner sources,
//! unroutable destinations, expiring TTLs. Each is dropped and counted under its reason,
//! while a ping between two other peers through the same hub loses nothing and the process
//! keeps running.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{init, ping_ok};
use isthmus_lab::pcap::UdpDatagram;
use isthmus_lab::{
    lab_tool_path, require_isthmus, Capture, Metrics, Netns, PingOpts, Topology, WgImpl,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A WireGuard-looking message: type byte, three reserved zero bytes, then `len - 4` filler bytes.
fn msg(ty: u8, len: usize) -> Vec<u8> {
    let mut v = vec![ty, 0, 0, 0];
    v.extend((4..len).map(|i| (i * 7 + 13) as u8));
    v.truncate(len);
    v
}

fn send(from: &Netns, to: &str, payloads: &[Vec<u8>], repeat: u32) {
    let tool = lab_tool_path().unwrap();
    let hexes: Vec<String> = payloads.iter().map(|p| hex(p)).collect();
    let repeat_s = repeat.to_string();
    let mut args = vec![
        tool.to_str().unwrap(),
        "udp-send",
        "--repeat",
        &repeat_s,
        to,
    ];
    args.extend(hexes.iter().map(String::as_str));
    from.exec(&args).unwrap();
}

/// Drop counters of the hub, or nothing when the hub is a stand-in for isthmus-dp.
struct Drops<'a> {
    t: &'a Topology,
    last: Option<Metrics>,
    failures: Vec<String>,
}

impl<'a> Drops<'a> {
    fn new(t: &'a Topology) -> Self {
        let mut d = Self {
            t,
            last: None,
            failures: Vec::new(),
        };
        d.last = d.scrape();
        d
    }

    fn scrape(&self) -> Option<Metrics> {
        // Let the hub's workers finish with what was just sent.
        std::thread::sleep(std::time::Duration::from_millis(300));
        WgImpl::Isthmus
            .is_real_isthmus()
            .then(|| self.t.wg("hub").metrics().unwrap())
    }

    /// Asserts (or records, to report all at once) that the drops under `reasons` (summed)
    /// grew by at least `min` since the last check.
    fn expect(&mut self, what: &str, reasons: &[&str], min: f64) {
        let now = self.scrape();
        if let (Some(before), Some(after)) = (&self.last, &now) {
            let grew: f64 = reasons
                .iter()
                .map(|r| {
                    after.get("isthmus_drops_total", &[("reason", r)])
                        - before.get("isthmus_drops_total", &[("reason", r)])
                })
                .sum();
            eprintln!("{what}: drops{reasons:?} +{grew}");
            if grew < min {
                let all = after.excerpt("isthmus_drops_total");
                self.failures.push(format!("{what}: isthmus_drops_total{reasons:?} grew by {grew}, expected at least {min}\n{all}"));
            }
        }
        self.last = now;
    }
}

/// Sets the flag when dropped, also during a panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Data packets (type 4, longer than a keepalive) in a capture.
fn data_packets(caught: &[UdpDatagram]) -> Vec<Vec<u8>> {
    caught
        .iter()
        .filter(|d| d.payload.first() == Some(&4) && d.payload.len() > 32)
        .map(|d| d.payload.clone())
        .collect()
}

#[test]
fn bad_input_is_dropped_counted_and_harmless() {
    bad_input(false);
}

/// The same, with the hub's underlay on AF_XDP: what arrives through an XSK is counted by
/// the same reasons as what arrives through the UDP socket.
#[test]
fn bad_input_through_af_xdp_is_dropped_counted_and_harmless() {
    bad_input(true);
}

#[allow(clippy::too_many_lines)]
fn bad_input(afxdp: bool) {
    init();
    let mut t = Topology::star_with(
        WgImpl::Isthmus,
        &[
            WgImpl::WireguardGo,
            WgImpl::WireguardGo,
            WgImpl::WireguardGo,
        ],
        |ifs| {
            if afxdp {
                ["--backend", "afxdp", "--underlay", &ifs.join(",")]
                    .map(String::from)
                    .to_vec()
            } else {
                Vec::new()
            }
        },
    )
    .unwrap();
    if afxdp {
        let log = t.wg("hub").log_tail(40);
        assert_eq!(log.matches("XDP, copy mode").count(), 3, "{log}");
    }
    if !WgImpl::Isthmus.is_real_isthmus() {
        t.ns("hub").set_forwarding(true).unwrap();
    }
    // A stranger: a wireguard-go whose key the hub does not know.
    t.add_node("x").unwrap();
    t.link("hub", &["10.204.0.1/24"], "x", &["10.204.0.2/24"])
        .unwrap();
    t.add_wg("x", WgImpl::WireguardGo, 51820, &["10.20.0.50/24"])
        .unwrap();
    t.peer(
        "x",
        "hub",
        Some("10.204.0.1:51820".into()),
        &["10.20.0.0/24"],
        None,
    )
    .unwrap();

    let hub = Arc::clone(t.ns("hub"));
    let (s0, s1, s2) = (
        Arc::clone(t.ns("s0")),
        Arc::clone(t.ns("s1")),
        Arc::clone(t.ns("s2")),
    );
    let (s0v4, s1v4) = (Topology::spoke_v4(0), Topology::spoke_v4(1));
    ping_ok(&s0, "10.20.0.1", 1);
    ping_ok(&s1, &s0v4, 1);
    ping_ok(&s2, "10.20.0.1", 1);

    // Capture some of s0's data packets to the hub, to replay and forge later (on s0's
    // side: the hub's XDP program takes them before a capture there would see them).
    let cap = Capture::start(
        &s0,
        &t.lab,
        "udp and src host 10.201.0.2 and dst port 51820",
    )
    .unwrap();
    ping_ok(&s0, "10.20.0.1", 5);
    let captured = data_packets(&cap.stop().unwrap());
    assert!(
        captured.len() >= 5,
        "captured only {} data packets from s0",
        captured.len()
    );

    // A ping between two other peers, through the hub, for as long as the bad input lasts.
    let stop = AtomicBool::new(false);
    let mut drops = Drops::new(&t);
    let hub_addr = "10.201.2.1:51820"; // the hub as s2 (the attacker) sees it
    let (sent, lost) = std::thread::scope(|scope| {
        // If an assertion below fails, stop the bystander so that the scope can end.
        let _stop_guard = StopOnDrop(&stop);
        let bystander = scope.spawn(|| {
            let (mut sent, mut lost, mut outputs) = (0, 0, String::new());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let r = s1
                    .ping_with(
                        &s0v4,
                        20,
                        &PingOpts {
                            interval: Some(0.05),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                sent += r.transmitted;
                lost += r.lost();
                if r.lost() > 0 {
                    outputs.push_str(&r.output);
                }
            }
            (sent, lost, outputs)
        });

        // Garbage, truncated and oversized messages.
        let garbage = vec![
            vec![0xff; 64], // unknown message type
            vec![0],        // one byte
            msg(7, 2000),   // unknown type, large
            msg(1, 100),    // truncated handshake initiation (148)
            msg(1, 200),    // oversized handshake initiation
            msg(2, 60),     // truncated handshake response (92)
            msg(2, 150),    // oversized handshake response
            msg(3, 40),     // truncated cookie reply (64)
            msg(4, 16),     // data shorter than its header and tag
            {
                let mut m = msg(1, 148); // initiation with nonzero reserved bytes
                m[1] = 0xaa;
                m
            },
        ];
        send(&s2, hub_addr, &garbage, 3);
        // A datagram larger than the data plane's receive buffer may be counted as `oversized`.
        drops.expect(
            "garbage/truncated/oversized",
            &["bad_packet", "oversized"],
            3.0 * garbage.len() as f64,
        );

        // Transport data for a receiver index nobody has.
        let mut unknown = msg(4, 96);
        unknown[4..8].copy_from_slice(&0x5eed_beefu32.to_le_bytes());
        send(&s2, hub_addr, &[unknown], 10);
        drops.expect("unknown receiver index", &["unknown_index"], 10.0);

        // An oversized data message (bigger than any MTU): dropped, as malformed or unknown.
        let mut huge = msg(4, 9000);
        huge[4..8].copy_from_slice(&0x5eed_beefu32.to_le_bytes());
        send(&s2, hub_addr, &[huge], 3);
        drops.expect(
            "oversized data",
            &["bad_packet", "oversized", "unknown_index"],
            3.0,
        );

        // Replayed data packets: valid, but already received.
        send(&s0, "10.201.0.1:51820", &captured, 1);
        drops.expect("replayed data", &["replay"], captured.len() as f64);

        // Forged data packets: a fresh counter with the old ciphertext fails authentication.
        let forged: Vec<Vec<u8>> = captured
            .iter()
            .map(|p| {
                let mut f = p.clone();
                let c = u64::from_le_bytes(f[8..16].try_into().unwrap()) + (1 << 20);
                f[8..16].copy_from_slice(&c.to_le_bytes());
                f
            })
            .collect();
        send(&s0, "10.201.0.1:51820", &forged, 1);
        drops.expect("forged data", &["decrypt_failed"], forged.len() as f64);

        // Handshakes from a key the hub does not know.
        let r = t
            .ns("x")
            .ping_with("10.20.0.1", 2, &PingOpts::default())
            .unwrap();
        assert_eq!(
            r.received, 0,
            "a stranger got through the hub:\n{}",
            r.output
        );
        drops.expect(
            "handshake from unknown key",
            &["unknown_peer", "handshake_rate_limited"],
            1.0,
        );

        // Inner source outside the sender's allowed IPs: s2 may claim the whole /24 towards
        // the hub, but the hub allows it only 10.20.0.4.
        let s2if = t.wg("s2").ifname.clone();
        s2.add_addr(&s2if, "10.20.0.99/32").unwrap();
        let r = s2
            .ping_with(
                "10.20.0.1",
                5,
                &PingOpts {
                    source: Some("10.20.0.99"),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.received, 0, "spoofed source got answers:\n{}", r.output);
        drops.expect("spoofed inner source", &["spoofed_source"], 5.0);

        // Destinations the hub has no route for: from a peer... In drop-in mode (the
        // default, as wireguard-go) isthmus hands what matches no peer route to the kernel
        // through the TUN, so this is either a `no_route` drop or a `to_local` delivery; it
        // must never reach another peer.
        let hub_key = t.wg("hub").keys.public.clone();
        t.wg("s2")
            .wg(&[
                "set",
                &s2if,
                "peer",
                &hub_key,
                "allowed-ips",
                "10.20.0.0/24,fd20::/64,10.99.0.0/24",
            ])
            .unwrap();
        s2.route(&["10.99.0.0/24", "dev", &s2if]).unwrap();
        let to_local = |m: &Option<Metrics>| {
            m.as_ref().map_or(0.0, |m| {
                m.get("isthmus_forwarded_packets_total", &[("path", "to_local")])
            })
        };
        let local_before = to_local(&drops.last);
        let r = s2.ping_with("10.99.0.1", 5, &PingOpts::default()).unwrap();
        assert_eq!(r.received, 0, "{}", r.output);
        let local_grew = to_local(&drops.scrape()) - local_before;
        drops.expect(
            "unroutable from a peer",
            &["no_route"],
            if local_grew >= 5.0 { 0.0 } else { 5.0 },
        );
        // ... and from the hub's own TUN.
        let hubif = t.wg("hub").ifname.clone();
        hub.route(&["10.98.0.0/24", "dev", &hubif]).unwrap();
        let r = hub.ping_with("10.98.0.1", 3, &PingOpts::default()).unwrap();
        assert_eq!(r.received, 0, "{}", r.output);
        drops.expect("unroutable from the TUN", &["no_route"], 3.0);

        // TTL expiring at the hub on the relay path.
        let r = s0
            .ping_with(
                &s1v4,
                3,
                &PingOpts {
                    ttl: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.received, 0, "{}", r.output);
        assert!(
            r.output.contains("Time to live exceeded"),
            "no ICMP time exceeded came back:\n{}",
            r.output
        );
        drops.expect("TTL exceeded", &["ttl_exceeded"], 3.0);

        stop.store(true, Ordering::Relaxed);
        let (sent, lost, outputs) = bystander.join().unwrap();
        assert_eq!(
            lost, 0,
            "the bystanders' ping lost {lost} of {sent}:\n{outputs}"
        );
        (sent, lost)
    });
    eprintln!("bystander ping: {sent} sent, {lost} lost");
    assert!(
        t.wg("hub").alive(),
        "the hub died:\n{}",
        t.wg("hub").log_tail(30)
    );
    ping_ok(&s1, &s0v4, 3);

    require_isthmus("drop counters by reason");
    assert!(drops.failures.is_empty(), "{}", drops.failures.join("\n"));
}

/// With `--unrouted drop`, a packet from a peer that matches no route is dropped as `no_route`
/// and an ICMP "unreachable" goes back, instead of being handed to the kernel; the hub's own
/// addresses stay reachable.
#[test]
fn unroutable_from_a_peer_with_unrouted_drop() {
    init();
    let mut t = Topology::new().unwrap();
    t.add_node("hub").unwrap();
    t.add_node("s0").unwrap();
    t.link("hub", &["10.201.0.1/24"], "s0", &["10.201.0.2/24"])
        .unwrap();
    let spec = isthmus_lab::WgSpec {
        listen_port: 51820,
        addresses: vec!["10.20.0.1/24".into(), "fd20::1/64".into()],
        isthmus_args: vec!["--unrouted".into(), "drop".into()],
        ..Default::default()
    };
    t.add_wg_spec("hub", WgImpl::Isthmus, &spec).unwrap();
    t.add_wg(
        "s0",
        WgImpl::WireguardGo,
        51820,
        &["10.20.0.2/24", "fd20::2/64"],
    )
    .unwrap();
    t.peer("hub", "s0", None, &["10.20.0.2/32", "fd20::2/128"], None)
        .unwrap();
    t.peer(
        "s0",
        "hub",
        Some("10.201.0.1:51820".into()),
        &["10.20.0.0/24", "fd20::/64", "10.99.0.0/24", "fd99::/64"],
        None,
    )
    .unwrap();
    let s0 = Arc::clone(t.ns("s0"));
    let s0if = t.wg("s0").ifname.clone();
    s0.route(&["10.99.0.0/24", "dev", &s0if]).unwrap();
    s0.route(&["fd99::/64", "dev", &s0if]).unwrap();
    ping_ok(&s0, "10.20.0.1", 3);
    ping_ok(&s0, "fd20::1", 3);

    let mut drops = Drops::new(&t);
    let r4 = s0.ping_with("10.99.0.1", 5, &PingOpts::default()).unwrap();
    let r6 = s0.ping_with("fd99::1", 5, &PingOpts::default()).unwrap();
    assert_eq!(r4.received + r6.received, 0, "{}{}", r4.output, r6.output);
    assert!(
        t.wg("hub").alive(),
        "the hub died:\n{}",
        t.wg("hub").log_tail(30)
    );
    require_isthmus("--unrouted drop");
    assert!(
        r4.output.contains("Unreachable") && r6.output.contains("unreachable"),
        "no ICMP unreachable came back:\n{}\n{}",
        r4.output,
        r6.output
    );
    drops.expect(
        "unroutable from a peer (--unrouted drop)",
        &["no_route"],
        10.0,
    );
    assert!(drops.failures.is_empty(), "{}", drops.failures.join("\n"));
}
