//! isthmus-dp with the AF_XDP underlay (`--backend afxdp`) against other WireGuard
//! implementations, on veth: native XDP (copy mode, veth has no zero-copy) and generic XDP.
//! The same traffic as the UDP backend's interop tests, plus what only this backend can get
//! wrong: the kernel's UDP stack must not see the tunnel's datagrams, everything else on
//! the interface must still reach the kernel, and a killed data plane must leave no program
//! attached.

mod common;

use common::{init, ping_ok};
use isthmus_lab::{Family, Netns, Topology, WgImpl};

/// `a` is isthmus-dp on AF_XDP over its underlay `to-b1`, `b` is `peer`.
fn pair(peer: WgImpl, underlay: Family, mode: &str) -> Topology {
    init();
    let t = Topology::pair_with(
        WgImpl::Isthmus,
        peer,
        underlay,
        &[
            "--backend",
            "afxdp",
            "--underlay",
            "to-b1",
            "--xdp-mode",
            mode,
        ],
    )
    .unwrap();
    let log = t.wg("a").log_tail(40);
    assert!(
        log.contains(&format!(
            "AF_XDP on to-b1: {mode} XDP, copy mode, 1 queue(s)"
        )),
        "no AF_XDP line in the log:\n{log}"
    );
    t
}

/// The kernel's count of UDP datagrams received in `ns` (`/proc/net/snmp`, `Udp:
/// InDatagrams`).
fn udp_in_datagrams(ns: &Netns) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]).unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InDatagrams")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn traffic(t: &Topology, peer: WgImpl, underlay: Family) {
    let (a, b) = (t.ns("a"), t.ns("b"));
    ping_ok(a, "10.10.0.2", 5);
    ping_ok(b, "10.10.0.1", 5);
    ping_ok(a, "fd10::2", 5);
    ping_ok(b, "fd10::1", 5);
    let udp_before = udp_in_datagrams(a);
    let (up, down) = a.tcp_both_ways(&t.lab, b, "10.10.0.2", 5201).unwrap();
    eprintln!(
        "{} over {underlay:?} (AF_XDP), inner IPv4: a->b {}; b->a {}",
        peer.label(),
        up.summary,
        down.summary
    );
    let (up, down) = b.tcp_both_ways(&t.lab, a, "fd10::1", 5202).unwrap();
    eprintln!(
        "{} over {underlay:?} (AF_XDP), inner IPv6: b->a {}; a->b {}",
        peer.label(),
        up.summary,
        down.summary
    );
    let udp_after = udp_in_datagrams(a);
    let m = t.wg("a").metrics().unwrap();
    let (rx, tx) = (
        m.get("isthmus_xdp_rx_frames_total", &[]),
        m.get("isthmus_xdp_tx_frames_total", &[]),
    );
    eprintln!("XSK frames: rx {rx}, tx {tx}; kernel UDP InDatagrams {udp_before} -> {udp_after}");
    assert!(
        rx > 1_000.0 && tx > 1_000.0,
        "the TCP runs did not go through the XSKs"
    );
    // iperf3's control connection is TCP and the tunnel's datagrams came through the XSK:
    // the kernel's UDP stack saw (almost) none of the tens of thousands of datagrams. A few
    // may arrive before the XSK map was filled, or be the handshake's retries.
    assert!(
        udp_after - udp_before < 50,
        "the kernel received {} UDP datagrams during the TCP runs",
        udp_after - udp_before
    );
    assert_eq!(
        m.get("isthmus_drops_total", &[("reason", "bad_packet")]),
        0.0
    );
    assert!(
        t.wg("a").alive(),
        "isthmus-dp died:\n{}",
        t.wg("a").log_tail(30)
    );
    assert!(t.wg("b").alive(), "{} died", peer.label());
    // What is not the tunnel still reaches the kernel on the same interface: ICMP and
    // ARP/NDP (the ping over the underlay), and TCP to the gateway's own address.
    let (ua, ub) = match underlay {
        Family::V4 => ("10.200.0.1", "10.200.0.2"),
        Family::V6 => ("fd00:200::1", "fd00:200::2"),
    };
    ping_ok(b, ua, 2);
    ping_ok(a, ub, 2);
    let (up, _) = b.tcp_both_ways(&t.lab, a, ua, 5203).unwrap();
    eprintln!("TCP to the gateway's underlay address: {}", up.summary);
}

#[test]
fn native_with_wireguard_go_over_ipv4() {
    let t = pair(WgImpl::WireguardGo, Family::V4, "native");
    traffic(&t, WgImpl::WireguardGo, Family::V4);
}

#[test]
fn native_with_wireguard_go_over_ipv6() {
    let t = pair(WgImpl::WireguardGo, Family::V6, "native");
    traffic(&t, WgImpl::WireguardGo, Family::V6);
}

#[test]
fn generic_with_boringtun_over_ipv4() {
    let t = pair(WgImpl::Boringtun, Family::V4, "generic");
    traffic(&t, WgImpl::Boringtun, Family::V4);
}

#[test]
fn generic_with_boringtun_over_ipv6() {
    let t = pair(WgImpl::Boringtun, Family::V6, "generic");
    traffic(&t, WgImpl::Boringtun, Family::V6);
}

/// `kill -9` under traffic: the BPF link dies with the process, so no XDP program is left
/// on the interface, and the interface passes traffic to the kernel as before.
#[test]
fn kill_9_leaves_no_program_attached() {
    let t = pair(WgImpl::WireguardGo, Family::V4, "native");
    let (a, b) = (t.ns("a"), t.ns("b"));
    ping_ok(a, "10.10.0.2", 3);
    let shown = a.exec(&["ip", "link", "show", "to-b1"]).unwrap();
    assert!(
        shown.contains("xdp"),
        "no program attached while running:\n{shown}"
    );
    let flood = b
        .command("ping")
        .args(["-f", "-w", "3", "10.10.0.1"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = t.wg("a").pid.to_string();
    a.exec(&["kill", "-9", &pid]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let shown = loop {
        let shown = a.exec(&["ip", "link", "show", "to-b1"]).unwrap();
        if !shown.contains("xdp") || std::time::Instant::now() > deadline {
            break shown;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        !shown.contains("xdp"),
        "a program is still attached after kill -9:\n{shown}"
    );
    let _ = flood.wait_with_output();
    ping_ok(b, "10.200.0.1", 3);
    ping_ok(a, "10.200.0.2", 3);
}
