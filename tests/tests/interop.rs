//! isthmus-dp against other WireGuard implementations: ping and TCP both ways, IPv4 and IPv6
//! inside, over an IPv4 and over an IPv6 underlay.

mod common;

use common::{init, ping_ok};
use isthmus_lab::{Family, Topology, WgImpl};

fn interop(peer: WgImpl, underlay: Family) {
    init();
    let t = Topology::pair(WgImpl::Isthmus, peer, underlay).unwrap();
    let (a, b) = (t.ns("a"), t.ns("b"));
    // Both directions start a handshake at some point: isthmus initiates first here.
    ping_ok(a, "10.10.0.2", 5);
    ping_ok(b, "10.10.0.1", 5);
    ping_ok(a, "fd10::2", 5);
    ping_ok(b, "fd10::1", 5);
    let (up, down) = a.tcp_both_ways(&t.lab, b, "10.10.0.2", 5201).unwrap();
    eprintln!(
        "{} over {underlay:?}, inner IPv4: a->b {}; b->a {}",
        peer.label(),
        up.summary,
        down.summary
    );
    let (up, down) = b.tcp_both_ways(&t.lab, a, "fd10::1", 5202).unwrap();
    eprintln!(
        "{} over {underlay:?}, inner IPv6: b->a {}; a->b {}",
        peer.label(),
        up.summary,
        down.summary
    );
    assert!(
        t.wg("a").alive(),
        "isthmus-dp died:\n{}",
        t.wg("a").log_tail(30)
    );
    assert!(t.wg("b").alive(), "{} died", peer.label());
}

#[test]
fn with_wireguard_go_over_ipv4() {
    interop(WgImpl::WireguardGo, Family::V4);
}

#[test]
fn with_wireguard_go_over_ipv6() {
    interop(WgImpl::WireguardGo, Family::V6);
}

#[test]
fn with_boringtun_over_ipv4() {
    interop(WgImpl::Boringtun, Family::V4);
}

#[test]
fn with_boringtun_over_ipv6() {
    interop(WgImpl::Boringtun, Family::V6);
}

/// The peer initiates the first handshake (isthmus as responder: it has no endpoint for
/// the peer, so it cannot initiate).
#[test]
fn wireguard_go_initiates() {
    init();
    let t =
        Topology::pair_responder(WgImpl::Isthmus, WgImpl::WireguardGo, Family::V4, &[]).unwrap();
    ping_ok(t.ns("b"), "10.10.0.1", 5);
    ping_ok(t.ns("a"), "fd10::2", 3);
}
