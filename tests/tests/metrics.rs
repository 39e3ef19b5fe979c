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
    ] {
        let (before, after) = (m0.get(name, &key), m1.get(name, &key));
        assert!(
            after > before,
            "{name}{{public_key={peer_key}}} did not grow: {before} -> {after}\n{}",
            m1.excerpt("isthmus_peer")
        );
    }
    // isthmus-dp initiates at start, without waiting for traffic: the handshake may be done
    // before the first scrape, so it is counted by then or since.
    let hs_count = m1.get("isthmus_peer_handshakes_total", &key);
    assert!(
        hs_count >= 1.0 && hs_count >= m0.get("isthmus_peer_handshakes_total", &key),
        "{}",
        m1.excerpt("isthmus_peer")
    );
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
    // Every per-peer series names the interface; the info series has endpoint and allowed
    // IPs.
    let ifname = isth.ifname.as_str();
    for s in m1
        .samples
        .iter()
        .filter(|s| s.name.starts_with("isthmus_peer_"))
    {
        assert_eq!(
            s.labels.get("interface").map(String::as_str),
            Some(ifname),
            "{s:?}"
        );
    }
    let info = m1
        .samples
        .iter()
        .find(|s| s.name == "isthmus_peer_info" && s.labels["public_key"] == peer_key)
        .unwrap_or_else(|| panic!("no isthmus_peer_info:\n{}", m1.excerpt("isthmus_peer")));
    assert!(info.labels["endpoint"].contains(':'), "{info:?}");
    assert!(
        info.labels["allowed_ips"].contains("10.10.0.2/32"),
        "{info:?}"
    );
    // The same per-peer numbers under wireguard_exporter's names (the default), keyed by
    // device and public key, as the dashboards built on it query them.
    let wg_key = [("device", ifname), ("public_key", peer_key.as_str())];
    for (ours, theirs) in [
        (
            "isthmus_peer_rx_bytes_total",
            "wireguard_peer_receive_bytes_total",
        ),
        (
            "isthmus_peer_tx_bytes_total",
            "wireguard_peer_transmit_bytes_total",
        ),
    ] {
        assert_eq!(m1.get(ours, &key), m1.get(theirs, &wg_key), "{theirs}");
    }
    assert_eq!(
        m1.get("wireguard_peer_last_handshake_seconds", &wg_key),
        hs.floor()
    );
    assert!(m1.has("wireguard_device_info") && m1.has("wireguard_peer_info"));
    // Build and process series, and the whole page passes promtool's lint.
    assert!(m1.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m1.get("process_open_fds", &[]) > 3.0);
    assert!(m1.get("isthmus_build_info", &[("daemon", "isthmus-dp")]) == 1.0);
    // isthmus-dp initiated (at start, without waiting for traffic): the handshake latency
    // histogram has it, within reason on a veth.
    let n = m1.get("isthmus_handshake_seconds_count", &[]);
    assert!(n >= 1.0, "{}", m1.excerpt("isthmus_handshake"));
    assert_eq!(
        m1.get("isthmus_handshake_seconds_bucket", &[("le", "+Inf")]),
        n
    );
    let mean = m1.get("isthmus_handshake_seconds_sum", &[]) / n;
    assert!(
        mean > 0.0 && mean < 1.0,
        "{}",
        m1.excerpt("isthmus_handshake")
    );
    m1.promtool_check().unwrap();

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
