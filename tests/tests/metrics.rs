//! isthmus-dp's Prometheus endpoint: a scrape before and after traffic shows the counters
//! of the peer and of the paths move.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{init, ping_ok};
use isthmus_lab::{require_isthmus, Family, Topology, WgImpl};

#[test]
fn metrics_scrape_shows_counters_moving() {
    init();
    require_isthmus("metrics scrape");
    let t = Topology::pair(WgImpl::Isthmus, WgImpl::WireguardGo, Family::V4).unwrap();
    let (a, b) = (t.ns("a"), t.ns("b"));
    let isth = t.wg("a");
    let peer_key = t.wg("b").keys.public.clone();
    let key = [("public_key", peer_key.as_str())];

    let m0 = isth.metrics().unwrap();
    assert!(
        m0.has("isthmus_build_info"),
        "no isthmus_build_info:\n{}",
        m0.excerpt("isthmus_")
    );
    assert!(
        m0.get("isthmus_fib_routes", &[("family", "ipv4")]) >= 1.0,
        "{}",
        m0.excerpt("isthmus_fib")
    );
    assert!(
        m0.get("isthmus_fib_routes", &[("family", "ipv6")]) >= 1.0,
        "{}",
        m0.excerpt("isthmus_fib")
    );

    ping_ok(a, "10.10.0.2", 5);
    ping_ok(b, "fd10::1", 5);
    a.tcp_both_ways(&t.lab, b, "10.10.0.2", 5205).unwrap();
    let m1 = isth.metrics().unwrap();

    for name in [
        "isthmus_peer_rx_bytes_total",
        "isthmus_peer_tx_bytes_total",
        "isthmus_peer_rx_packets_total",
        "isthmus_peer_tx_packets_total",
        "isthmus_peer_handshakes_total",
    ] {
        let (before, after) = (m0.get(name, &key), m1.get(name, &key));
        assert!(
            after > before,
            "{name}{{public_key={peer_key}}} did not grow: {before} -> {after}\n{}",
            m1.excerpt("isthmus_peer")
        );
    }
    assert!(
        m1.get("isthmus_peer_rx_bytes_total", &key) > 2.0e6,
        "{}",
        m1.excerpt("isthmus_peer")
    );
    assert!(
        m1.get("isthmus_peer_tx_bytes_total", &key) > 2.0e6,
        "{}",
        m1.excerpt("isthmus_peer")
    );
    let hs = m1.get("isthmus_peer_last_handshake_seconds", &key);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - hs).abs() < 120.0,
        "last handshake {hs} is not recent (now {now})"
    );
    for path in ["to_local", "from_local"] {
        let (before, after) = (
            m0.get("isthmus_forwarded_packets_total", &[("path", path)]),
            m1.get("isthmus_forwarded_packets_total", &[("path", path)]),
        );
        assert!(
            after >= before + 20.0,
            "forwarded{{path={path}}}: {before} -> {after}"
        );
    }
}
