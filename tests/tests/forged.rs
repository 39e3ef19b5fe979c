//! Forged handshake messages against an isthmus hub, with a real wireguard-go peer.
//!
//! The attacker (another namespace, another address) knows the hub's public key and a real
//! receiver index of the hub (captured from the peer's transport packets). It keeps the
//! hub's handshake budget spent with initiations that carry a valid mac1, and sends forged
//! handshake responses naming the index, then forged initiations, cookie replies and
//! transport data. Throughout, a 10 ms ping from the peer through the tunnel loses nothing,
//! and the hub keeps the peer's real endpoint, its handshake count and its session. Then it
//! answers the cookie replies it gets (it owns its address) and floods initiations with a
//! valid mac2: the per-source limit holds it, and another peer still completes a new
//! handshake meanwhile.

mod common;

use std::sync::Arc;

use common::{init, ping_ok};
use isthmus_lab::{lab_tool_path, require_isthmus, Capture, Netns, PingOpts, Topology, WgImpl};

/// The hub's view of a peer: endpoint (from `wg`), handshakes and received packets (metrics).
fn hub_view(t: &Topology, key: &str) -> (String, f64) {
    let hub = t.wg("hub");
    let out = hub
        .wg(&["show", &hub.ifname, "endpoints"])
        .expect("wg show endpoints");
    let endpoint = out
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|e| e.trim().to_string()))
        .unwrap_or_default();
    let handshakes = hub
        .metrics()
        .expect("metrics")
        .get("isthmus_peer_handshakes_total", &[("public_key", key)]);
    (endpoint, handshakes)
}

/// Runs `lab-tool wg-attack` against the hub for `secs` seconds from `from`; returns what it
/// printed.
fn wg_attack(from: &Netns, hub_key: &str, args: &[&str], secs: u32) -> String {
    let tool = lab_tool_path().unwrap();
    let secs_s = secs.to_string();
    let mut argv = vec![
        tool.to_str().unwrap(),
        "wg-attack",
        "--to",
        "10.204.0.1:51820",
        "--key",
        hub_key,
        "--secs",
        &secs_s,
    ];
    argv.extend_from_slice(args);
    from.exec_timeout(&argv, secs + 20).unwrap()
}

#[test]
fn forged_messages_under_load_leave_a_wireguard_go_peer_untouched() {
    init();
    require_isthmus("the attack is against isthmus-dp's handshake path");
    let mut t =
        Topology::star(WgImpl::Isthmus, &[WgImpl::WireguardGo, WgImpl::WireguardGo]).unwrap();
    // The attacker: its own namespace and address, linked to the hub.
    t.add_node("x").unwrap();
    t.link("hub", &["10.204.0.1/24"], "x", &["10.204.0.2/24"])
        .unwrap();
    let hub = Arc::clone(t.ns("hub"));
    let s0 = Arc::clone(t.ns("s0"));
    let s1 = Arc::clone(t.ns("s1"));
    let attacker = Arc::clone(t.ns("x"));
    ping_ok(&s0, "10.20.0.1", 1);
    ping_ok(&s1, "10.20.0.1", 1);

    // The hub's receiver index of s0's session: in s0's transport packets.
    let cap = Capture::start(
        &hub,
        &t.lab,
        "udp and src host 10.201.0.2 and dst port 51820",
    )
    .unwrap();
    ping_ok(&s0, "10.20.0.1", 5);
    let caught = cap.stop().unwrap();
    let index = caught
        .iter()
        .find(|d| d.payload.first() == Some(&4) && d.payload.len() > 32)
        .map(|d| u32::from_le_bytes(d.payload[4..8].try_into().unwrap()))
        .unwrap_or_else(|| {
            panic!(
                "no transport packet from s0 in {:?}",
                caught
                    .iter()
                    .map(|d| (d.payload.len(), d.payload.first()))
                    .collect::<Vec<_>>()
            )
        });

    let s0_key = t.wg("s0").keys.public.clone();
    let hub_key = t.wg("hub").keys.public.clone();
    let before = hub_view(&t, &s0_key);
    assert_eq!(before.0, "10.201.0.2:51820", "s0's endpoint at the hub");
    let m0 = t.wg("hub").metrics().unwrap();

    let index_s = index.to_string();
    for (kinds, secs) in [
        ("flood,response", 10),
        ("flood,initiation", 4),
        ("flood,cookie", 4),
        ("flood,transport", 4),
    ] {
        let pings = secs * 100 - 50;
        let (ping, attack) = std::thread::scope(|scope| {
            let ping = scope.spawn(|| {
                s0.ping_with(
                    "10.20.0.1",
                    pings,
                    &PingOpts {
                        interval: Some(0.01),
                        ..Default::default()
                    },
                )
                .unwrap()
            });
            let attack = wg_attack(
                &attacker,
                &hub_key,
                &["--index", &index_s, "--kinds", kinds, "--rate", "2000"],
                secs,
            );
            (ping.join().unwrap(), attack)
        });
        eprintln!(
            "{kinds}: attacker {}; ping {}/{} received",
            attack.trim(),
            ping.received,
            ping.transmitted
        );
        assert_eq!(
            ping.lost(),
            0,
            "{kinds}: the peer's ping lost {} of {}:\n{}",
            ping.lost(),
            ping.transmitted,
            ping.output
        );
        assert_eq!(
            hub_view(&t, &s0_key),
            before,
            "{kinds}: the forged messages changed s0's endpoint or handshake count at the hub"
        );
    }
    let m = t.wg("hub").metrics().unwrap();
    let grew = |name: &str, filter: &[(&str, &str)]| m.get(name, filter) - m0.get(name, filter);
    let limited = grew(
        "isthmus_drops_total",
        &[("reason", "handshake_rate_limited")],
    );
    let cookies = grew("isthmus_cookie_replies_sent_total", &[]);
    eprintln!("hub: {limited} handshake messages refused under load, {cookies} cookie replies");
    assert!(
        limited > 1000.0,
        "the attack kept the hub under load: {limited}"
    );
    assert!(cookies > 1000.0, "{cookies}");
    assert!(
        grew("isthmus_drops_total", &[("reason", "unknown_index")])
            + grew("isthmus_drops_total", &[("reason", "decrypt_failed")])
            + grew("isthmus_drops_total", &[("reason", "handshake_failed")])
            > 1000.0,
        "forged cookie replies and transport data were refused"
    );
    assert!(t.wg("hub").alive(), "{}", t.wg("hub").log_tail(30));
    // s0's own view: the session with the hub still works.
    ping_ok(&s0, "10.20.0.1", 3);

    // A source that answers cookies: its initiations carry a valid mac2, and only the
    // per-source rate stops them. Meanwhile s1 makes a new handshake: its first initiation
    // gets a cookie (the hub is under load), its retry (wireguard-go: 5 s later) gets in.
    let m1 = t.wg("hub").metrics().unwrap();
    let s1if = t.wg("s1").ifname.clone();
    let s1_peer_args = [
        "set",
        &s1if,
        "peer",
        &hub_key,
        "endpoint",
        "10.201.1.1:51820",
        "allowed-ips",
        "10.20.0.0/24,fd20::/64",
        "persistent-keepalive",
        "1",
    ];
    let (handshake, attack) = std::thread::scope(|scope| {
        let attack = scope.spawn(|| {
            wg_attack(
                &attacker,
                &hub_key,
                &["--kinds", "flood", "--answer-cookies", "--rate", "20000"],
                20,
            )
        });
        std::thread::sleep(std::time::Duration::from_secs(2));
        let w = t.wg("s1");
        w.wg(&["set", &s1if, "peer", &hub_key, "remove"]).unwrap();
        w.wg(&s1_peer_args).unwrap();
        let started = std::time::Instant::now();
        let up = s1.wait_ping("10.20.0.1", std::time::Duration::from_secs(16));
        (up.map(|()| started.elapsed()), attack.join().unwrap())
    });
    eprintln!("cookie-answering flood: attacker {}", attack.trim());
    let handshake = handshake.expect("s1's new handshake completed during the flood");
    eprintln!(
        "s1's new handshake during the flood: {:.1} s",
        handshake.as_secs_f64()
    );
    let m = t.wg("hub").metrics().unwrap();
    let grew = |name: &str, filter: &[(&str, &str)]| m.get(name, filter) - m1.get(name, filter);
    let failed = grew("isthmus_drops_total", &[("reason", "handshake_failed")]);
    let limited = grew(
        "isthmus_drops_total",
        &[("reason", "handshake_rate_limited")],
    );
    eprintln!("hub: {failed} attacker initiations reached boringtun, {limited} refused");
    assert!(attack.contains("cookies received") && !attack.contains("cookies received 0"));
    // The budget of the first second, then 20 a second (+ a burst) for 20 s: the rest never
    // cost a Diffie-Hellman.
    assert!(
        failed <= 100.0 + 20.0 * 22.0 + 5.0,
        "{failed} initiations reached boringtun"
    );
    assert!(limited > 10.0 * failed, "{limited} refused");
    ping_ok(&s0, "10.20.0.1", 3);
}
