//! WireGuard's own tools against isthmus-dp: `wg show`, `wg show dump`, `wg set`, and
//! `wg-quick` with isthmus-dp as the userspace implementation.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{init, ping_ok};
use isthmus_lab::{endpoint, uapi_socket, unique_ifname, Family, Keypair, Topology, WgImpl};

#[test]
fn wg_show_dump_reports_peer_handshake_and_counters() {
    init();
    let t = Topology::pair(WgImpl::Isthmus, WgImpl::WireguardGo, Family::V4).unwrap();
    let (a, b) = (t.ns("a"), t.ns("b"));
    let (isth, peer) = (t.wg("a"), t.wg("b"));

    let before = isth.dump().unwrap();
    assert_eq!(before.len(), 1, "one peer expected: {before:?}");
    assert_eq!(before[0].public_key, peer.keys.public);
    assert_eq!(before[0].allowed_ips.len(), 2, "{before:?}");

    ping_ok(a, "10.10.0.2", 5);
    let mid = isth.dump().unwrap();
    ping_ok(b, "fd10::1", 5);
    a.tcp_both_ways(&t.lab, b, "10.10.0.2", 5203).unwrap();
    let after = isth.dump().unwrap();

    let p = &after[0];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        p.latest_handshake > 0,
        "no handshake time in wg show dump: {p:?}"
    );
    assert!(
        now.abs_diff(p.latest_handshake) < 120,
        "handshake time {} is not recent (now {now})",
        p.latest_handshake
    );
    assert_eq!(p.endpoint.as_deref(), Some("10.200.0.2:51820"));
    assert!(
        p.rx_bytes > mid[0].rx_bytes && p.tx_bytes > mid[0].tx_bytes,
        "counters did not grow: {:?} -> {p:?}",
        mid[0]
    );
    assert!(
        p.rx_bytes > 2_000_000 && p.tx_bytes > 2_000_000,
        "a 4 MB transfer each way (of which iperf3 counts at least 2 MB delivered) should show: {p:?}"
    );

    // The human-readable form and the per-field queries.
    let show = isth.wg(&["show", &isth.ifname]).unwrap();
    assert!(
        show.contains(&format!("peer: {}", peer.keys.public)),
        "{show}"
    );
    assert!(show.contains("latest handshake"), "{show}");
    assert!(show.contains("transfer"), "{show}");
    let pubkey = isth.wg(&["show", &isth.ifname, "public-key"]).unwrap();
    assert_eq!(pubkey.trim(), isth.keys.public);
    let port = isth.wg(&["show", &isth.ifname, "listen-port"]).unwrap();
    assert_eq!(port.trim(), "51820");

    // wg set: change the allowed IPs, then remove the peer.
    isth.wg(&[
        "set",
        &isth.ifname,
        "peer",
        &peer.keys.public,
        "allowed-ips",
        "10.10.0.2/32",
    ])
    .unwrap();
    let d = isth.dump().unwrap();
    assert_eq!(d[0].allowed_ips, vec!["10.10.0.2/32".to_owned()]);
    isth.wg(&["set", &isth.ifname, "peer", &peer.keys.public, "remove"])
        .unwrap();
    assert!(
        isth.dump().unwrap().is_empty(),
        "peer still listed after remove"
    );
    assert!(isth.alive());
}

/// `isthmusctl up|down` with a wg-quick file: wg-quick's own work (addresses, routes) with
/// isthmus-dp as the device, whether or not the kernel has WireGuard (a kernel link is
/// refused, /sys/module hidden, as `isthmusctl up` does it).
#[test]
fn wg_quick_up_and_down_with_isthmus_as_userspace_implementation() {
    init();
    let mut t = Topology::new().unwrap();
    let q = t.add_node("quick").unwrap();
    t.add_node("peer").unwrap();
    t.link("quick", &["10.202.0.1/24"], "peer", &["10.202.0.2/24"])
        .unwrap();
    t.add_wg(
        "peer",
        WgImpl::WireguardGo,
        51820,
        &["10.30.0.2/24", "fd30::2/64"],
    )
    .unwrap();
    let peer = t.wg("peer");

    let keys = Keypair::generate().unwrap();
    let ifname = unique_ifname("q");
    let conf = t.lab.path(&format!("{ifname}.conf"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&conf)
        .unwrap();
    write!(
        f,
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\nAddress = 10.30.0.1/24, fd30::1/64\n\n\
         [Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = 10.30.0.2/32, fd30::2/128\n",
        keys.private,
        peer.keys.public,
        endpoint("10.202.0.2", 51820)
    )
    .unwrap();
    drop(f);
    peer.add_peer(&isthmus_lab::PeerSpec {
        public_key: keys.public.clone(),
        endpoint: Some(endpoint("10.202.0.1", 51820)),
        allowed_ips: vec!["10.30.0.1/32".into(), "fd30::1/128".into()],
        keepalive: None,
    })
    .unwrap();
    q.remove_on_drop(uapi_socket(&ifname));

    let conf_s = conf.to_string_lossy().into_owned();
    let up = wg_quick(&q, "up", &conf_s);
    assert!(
        up.status.success(),
        "wg-quick up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        uapi_socket(&ifname).exists(),
        "wg-quick did not use the userspace implementation (no {}): {}",
        uapi_socket(&ifname).display(),
        String::from_utf8_lossy(&up.stderr)
    );

    ping_ok(&q, "10.30.0.2", 5);
    ping_ok(&q, "fd30::2", 3);
    ping_ok(t.ns("peer"), "10.30.0.1", 3);
    let show = q.exec(&["wg", "show", &ifname]).unwrap();
    assert!(show.contains(&peer.keys.public), "{show}");

    let down = wg_quick(&q, "down", &conf_s);
    assert!(
        down.status.success(),
        "wg-quick down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        q.exec(&["ip", "link", "show", &ifname]).is_err(),
        "{ifname} still exists after wg-quick down"
    );
    // Like wireguard-go, the daemon exits when its interface is deleted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.pids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the userspace implementation is still running 5 s after wg-quick down: pids {:?}",
            q.pids()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `isthmusctl ACTION CONF` (up or down) in `ns`, with the isthmus-dp under test.
fn wg_quick(ns: &isthmus_lab::Netns, action: &str, conf: &str) -> std::process::Output {
    let ctl = isthmus_lab::IsthmusCp::ctl_binary().unwrap();
    let dp = WgImpl::Isthmus.binary().unwrap();
    ns.command(&ctl)
        .args([action, conf])
        .env("ISTHMUS_DP", &dp)
        .output()
        .unwrap()
}

/// A peer whose endpoint cannot be reached (no route to it): the handshake initiations that
/// isthmus-dp tries are not sent, so `wg show` counts no transmitted bytes for it (as with
/// wireguard-go), and the failures are counted as `tx_error` drops.
#[test]
fn initiations_that_cannot_be_sent_are_not_transmitted_bytes() {
    init();
    let t = Topology::pair(WgImpl::Isthmus, WgImpl::WireguardGo, Family::V4).unwrap();
    let isth = t.wg("a");
    let ghost = Keypair::generate().unwrap();
    // 203.0.113.0/24 (TEST-NET-3): no route in the namespace, so every send fails.
    isth.wg(&[
        "set",
        &isth.ifname,
        "peer",
        &ghost.public,
        "endpoint",
        "203.0.113.7:51820",
        "allowed-ips",
        "10.77.0.0/24",
    ])
    .unwrap();
    // Started at once (fast restart: no traffic needed), and failed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let m = isth.metrics().unwrap();
        let n = m.get("isthmus_drops_total", &[("reason", "tx_error")]);
        if n >= 1.0 {
            break n;
        }
        assert!(Instant::now() < deadline, "{}", m.excerpt("isthmus_drops"));
        std::thread::sleep(Duration::from_millis(100));
    };
    let dump = isth.dump().unwrap();
    let p = dump
        .iter()
        .find(|p| p.public_key == ghost.public)
        .unwrap_or_else(|| panic!("{dump:?}"));
    assert_eq!(
        (p.tx_bytes, p.rx_bytes),
        (0, 0),
        "{p:?} after {failed} failed sends"
    );
}

/// WireGuard's ownership rule for allowed IPs, checked side by side with wireguard-go: the
/// same `wg set` session on both, and after each step `wg show allowed-ips` must say the same
/// (a prefix set on a second peer is taken from the first; removed from the second, it is
/// nobody's).
#[test]
fn allowed_ips_have_one_owner_as_in_wireguard_go() {
    init();
    let t = Topology::pair(WgImpl::Isthmus, WgImpl::WireguardGo, Family::V4).unwrap();
    let (p1, p2) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let show = |w: &isthmus_lab::WgIface| -> Vec<String> {
        let out = w.wg(&["show", &w.ifname, "allowed-ips"]).unwrap();
        let mut lines: Vec<String> = out
            .lines()
            .filter(|l| l.starts_with(&p1.public) || l.starts_with(&p2.public))
            .map(|l| {
                let mut f: Vec<&str> = l.split_whitespace().collect();
                f[1..].sort_unstable();
                f.join(" ")
            })
            .collect();
        lines.sort();
        lines
    };
    let steps: [&[&str]; 4] = [
        &[
            "peer",
            &p1.public,
            "allowed-ips",
            "10.77.0.0/24,10.77.1.0/24,10.78.0.0/16",
        ],
        &["peer", &p2.public, "allowed-ips", "10.77.1.0/24"],
        &[
            "peer",
            &p2.public,
            "allowed-ips",
            "10.77.1.0/24,10.78.0.0/16,10.78.5.0/24",
        ],
        &["peer", &p2.public, "allowed-ips", ""],
    ];
    for (i, step) in steps.iter().enumerate() {
        let mut results = Vec::new();
        for w in [t.wg("a"), t.wg("b")] {
            let mut args = vec!["set", w.ifname.as_str()];
            args.extend_from_slice(step);
            w.wg(&args).unwrap();
            results.push(show(w));
        }
        assert_eq!(
            results[0], results[1],
            "step {i} {step:?}: isthmus (left) and wireguard-go (right) differ"
        );
    }
    // After the last step: the prefix B took and gave up is on no peer.
    let last = show(t.wg("a"));
    assert!(last.iter().all(|l| !l.contains("10.77.1.0/24")), "{last:?}");
}
