//! isthmus-dp with the AF_XDP underlay (`--backend afxdp`) against other WireGuard
//! implementations, on veth: native XDP (copy mode, veth has no zero-copy) and generic XDP.
//! The same traffic as the UDP backend's interop tests, plus what only this backend can get
//! wrong: the kernel's UDP stack must not see the tunnel's datagrams, everything else on
//! the interface must still reach the kernel, and a killed data plane must leave no program
//! attached.

mod common;

use common::{init, ping_ok};
use isthmus_lab::{Family, Netns, Topology, WgImpl};

/// `a` is isthmus-dp on AF_XDP over its underlay `to-b1`, `b` is `peer`. isthmus-dp runs as
/// `nobody` once set up (CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_IPC_LOCK and
/// CAP_BPF kept), as the packaged unit runs it.
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
            "--user",
            "nobody",
        ],
    )
    .unwrap();
    let log = t.wg("a").log_tail(40);
    assert!(
        log.contains("running as an unprivileged user, keeping CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_IPC_LOCK CAP_BPF"),
        "isthmus-dp did not drop to nobody:\n{log}"
    );
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

/// wireguard-go initiates and isthmus-dp answers through the XSK (it has no endpoint for
/// the peer until the authenticated initiation gives it one).
#[test]
fn wireguard_go_initiates_over_af_xdp() {
    init();
    let t = Topology::pair_responder(
        WgImpl::Isthmus,
        WgImpl::WireguardGo,
        Family::V4,
        &[
            "--backend",
            "afxdp",
            "--underlay",
            "to-b1",
            "--xdp-mode",
            "native",
        ],
    )
    .unwrap();
    let b = t.ns("b");
    let before = udp_in_datagrams(t.ns("a"));
    ping_ok(b, "10.10.0.1", 5);
    ping_ok(t.ns("a"), "fd10::2", 3);
    let dump = t.wg("a").dump().unwrap();
    assert!(
        dump.iter()
            .any(|p| p.latest_handshake > 0 && p.endpoint.is_some()),
        "isthmus-dp should have learned the endpoint from the handshake: {dump:?}"
    );
    assert_eq!(
        udp_in_datagrams(t.ns("a")),
        before,
        "the tunnel's datagrams should not reach the kernel's UDP stack"
    );
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
    assert!(
        a.wait_no_xdp("to-b1").unwrap(),
        "a program is still attached after kill -9:\n{}",
        a.exec(&["ip", "link", "show", "to-b1"]).unwrap()
    );
    let _ = flood.wait_with_output();
    ping_ok(b, "10.200.0.1", 3);
    ping_ok(a, "10.200.0.2", 3);
}

/// Packets through `ifname`, a TUN device: (written into the kernel by the data plane, read
/// from the kernel by it), from `/sys/class/net/IF/statistics`.
fn tun_packets(ns: &Netns, ifname: &str) -> (u64, u64) {
    let read = |f: &str| {
        ns.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{f}")])
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    (read("rx_packets"), read("tx_packets"))
}

/// An AF_XDP hub relays between two wireguard-go spokes, v4 and v6 inside and TCP both ways,
/// while neither its TUN device nor its kernel's UDP stack sees a packet of it.
#[test]
fn hub_relays_without_the_kernel_udp_stack_or_the_tun() {
    init();
    let t = Topology::star_with(
        WgImpl::Isthmus,
        &[WgImpl::WireguardGo, WgImpl::WireguardGo],
        |ifs| {
            ["--backend", "afxdp", "--underlay", &ifs.join(",")]
                .map(String::from)
                .to_vec()
        },
    )
    .unwrap();
    let (hub, s0, s1) = (t.ns("hub"), t.ns("s0"), t.ns("s1"));
    let log = t.wg("hub").log_tail(40);
    assert_eq!(log.matches("native XDP, copy mode").count(), 2, "{log}");
    // Sessions up on both legs (the spokes' keepalives also do this).
    ping_ok(s0, "10.20.0.1", 1);
    ping_ok(s1, "10.20.0.1", 1);
    ping_ok(s0, &Topology::spoke_v4(1), 1);
    let hub_if = t.wg("hub").ifname.clone();
    let (udp0, tun0) = (udp_in_datagrams(hub), tun_packets(hub, &hub_if));
    let before = t.wg("hub").metrics().unwrap();
    ping_ok(s0, &Topology::spoke_v4(1), 10);
    ping_ok(s1, &Topology::spoke_v6(0), 10);
    let (up, down) = s0
        .tcp_both_ways(&t.lab, s1, &Topology::spoke_v4(1), 5201)
        .unwrap();
    eprintln!("relay s0->s1 {}; s1->s0 {}", up.summary, down.summary);
    let after = t.wg("hub").metrics().unwrap();
    let (udp1, tun1) = (udp_in_datagrams(hub), tun_packets(hub, &hub_if));
    let relayed = after.get("isthmus_forwarded_packets_total", &[("path", "relay")])
        - before.get("isthmus_forwarded_packets_total", &[("path", "relay")]);
    eprintln!(
        "relayed {relayed}; hub UDP InDatagrams {udp0} -> {udp1}; hub TUN packets (in, out) {tun0:?} -> {tun1:?}"
    );
    assert!(relayed > 1_000.0, "relayed only {relayed}");
    assert_eq!(udp1 - udp0, 0, "the hub's kernel received UDP datagrams");
    // Relayed packets would be written into the hub's kernel and read back; the kernel's own
    // few packets (an IPv6 router solicitation) may still be read.
    assert_eq!(
        tun1.0 - tun0.0,
        0,
        "relayed packets were written into the hub's TUN"
    );
    assert!(
        tun1.1 - tun0.1 <= 3,
        "relayed packets were read from the hub's TUN"
    );
    assert!(t.wg("hub").alive(), "{}", t.wg("hub").log_tail(30));
}

/// The first datagram to a peer whose MAC the kernel does not know yet goes out through the
/// kernel's UDP socket (which resolves it) and is counted; then the XSK takes over.
#[test]
fn unresolved_neighbour_goes_through_the_kernel_once() {
    let t = pair(WgImpl::WireguardGo, Family::V4, "native");
    let (a, b) = (t.ns("a"), t.ns("b"));
    // A session first (its handshake resolves 10.200.0.2), then the peer moves to an address
    // of b that a's kernel has never resolved.
    ping_ok(a, "10.10.0.2", 1);
    b.add_addr("to-a1", "10.200.0.3/24").unwrap();
    let peer = t.wg("b").keys.public.clone();
    t.wg("a")
        .wg(&[
            "set",
            &t.wg("a").ifname,
            "peer",
            &peer,
            "endpoint",
            "10.200.0.3:51820",
        ])
        .unwrap();
    let before = t.wg("a").metrics().unwrap();
    ping_ok(a, "10.10.0.2", 3);
    let after = t.wg("a").metrics().unwrap();
    let d = |m: &str| after.get(m, &[]) - before.get(m, &[]);
    let (fallback, tx) = (
        d("isthmus_xdp_neighbour_fallback_total"),
        d("isthmus_xdp_tx_frames_total"),
    );
    eprintln!("neighbour fallback {fallback}, XSK tx {tx}");
    assert!(
        fallback >= 1.0,
        "nothing went through the kernel for the unresolved neighbour"
    );
    assert!(
        tx >= 1.0,
        "the XSK did not take over once the neighbour was resolved"
    );
    let neigh = a.exec(&["ip", "neigh", "show", "dev", "to-b1"]).unwrap();
    assert!(
        neigh.contains("10.200.0.3"),
        "the kernel did not resolve it: {neigh}"
    );
}

/// The demo's islands with both gateways on AF_XDP, trunk underlay and island interface
/// alike: babeld and isthmus-cp learn every route over the XSK-served interfaces; traffic
/// between the islands' hosts (v4 and v6, ping and TCP both ways) crosses each gateway from
/// its island interface into the tunnel and out of the tunnel onto the island interface
/// without touching its TUN device; and the gateway's own traffic on the island interface
/// (Babel, NDP, a TCP connection to its own address) still reaches its kernel.
fn islands_on_afxdp(mode: &str) {
    use isthmus_lab::babel_islands::{BabelIslands, IslandsSpec};
    init();
    let isl = BabelIslands::build_spec(&IslandsSpec {
        trunks: 1,
        hello: 1,
        afxdp: Some(mode.into()),
        ..IslandsSpec::default()
    })
    .unwrap();
    let routers = isl.routers().unwrap();
    let diag = || {
        format!(
            "{}\n{}",
            isl.diagnostics(),
            routers.iter().map(|r| r.diagnostics()).collect::<String>()
        )
    };
    for g in &isl.gateways {
        let log = isl.t.wg(&g.node).log_tail(60);
        for (ifname, role) in [
            (&g.underlay_if, "underlay"),
            (&g.island_if, "mesh interface"),
        ] {
            assert!(
                log.contains(&format!(
                    "AF_XDP on {ifname}: {mode} XDP, copy mode, 1 queue(s), {role}"
                )),
                "{}: no AF_XDP line for {ifname}:\n{log}",
                g.node
            );
        }
    }
    for (node, prefix) in [
        ("g1a", "10.2.1.0/24"),
        ("g2a", "10.1.1.0/24"),
        ("g1a", "10.1.1.0/24"),
        ("g2a", "fd00:2:1::/64"),
        ("r1", "10.2.1.0/24"),
        ("r2", "fd00:1:1::/64"),
    ] {
        isl.wait_route(node, prefix, std::time::Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    }
    // The island's routes go to the neighbour on the mesh interface in the data plane's FIB.
    let g1 = isl.gateway_of(1, 0);
    let fib = isl.show(&g1.node, "fib").unwrap();
    let line = fib
        .lines()
        .find(|l| l.contains("10.1.1.0/24"))
        .unwrap_or_else(|| panic!("no 10.1.1.0/24 in g1a's FIB:\n{fib}"));
    assert!(
        line.contains(&format!("dev {}", g1.island_if)) && line.contains("fe80:"),
        "10.1.1.0/24 should go via a neighbour on {}: {line}",
        g1.island_if
    );

    let (h1, h2) = (isl.t.ns("h1"), isl.t.ns("h2"));
    ping_ok(h1, "10.2.1.2", 3);
    ping_ok(h2, "fd00:1:1::2", 3);
    let tuns: Vec<(String, (u64, u64))> = isl
        .gateways
        .iter()
        .map(|g| {
            let tun = isl.t.wg(&g.node).ifname.clone();
            let c = tun_packets(isl.t.ns(&g.node), &tun);
            (tun, c)
        })
        .collect();
    let before: Vec<_> = isl
        .gateways
        .iter()
        .map(|g| isl.t.wg(&g.node).metrics().unwrap())
        .collect();
    ping_ok(h1, "10.2.1.2", 20);
    ping_ok(h2, "10.1.1.2", 20);
    ping_ok(h1, "fd00:2:1::2", 20);
    let (up, down) = h1.tcp_both_ways(&isl.t.lab, h2, "10.2.1.2", 5201).unwrap();
    eprintln!("h1 -> h2 {}; h2 -> h1 {}", up.summary, down.summary);
    let (up6, down6) = h2
        .tcp_both_ways(&isl.t.lab, h1, "fd00:1:1::2", 5202)
        .unwrap();
    eprintln!("h2 -> h1 (v6) {}; back {}", up6.summary, down6.summary);
    for (k, g) in isl.gateways.iter().enumerate() {
        let after = isl.t.wg(&g.node).metrics().unwrap();
        let d = |path: &str| {
            after.get("isthmus_forwarded_packets_total", &[("path", path)])
                - before[k].get("isthmus_forwarded_packets_total", &[("path", path)])
        };
        let (to_mesh, from_mesh, to_local, from_local) =
            (d("to_mesh"), d("from_mesh"), d("to_local"), d("from_local"));
        let (tun, c0) = &tuns[k];
        let c1 = tun_packets(isl.t.ns(&g.node), tun);
        eprintln!(
            "{}: to_mesh {to_mesh}, from_mesh {from_mesh}, to_local {to_local}, from_local {from_local}; TUN (in, out) {c0:?} -> {c1:?}",
            g.node
        );
        assert!(
            to_mesh > 1_000.0 && from_mesh > 1_000.0,
            "{}: the island traffic did not go through the mesh XSK\n{}",
            g.node,
            diag()
        );
        // The kernel's own few packets (router solicitations, Babel on the tunnel's
        // link-local) may still cross the TUN; the island traffic may not.
        assert!(
            c1.0 - c0.0 <= 20 && c1.1 - c0.1 <= 20,
            "{}: island traffic crossed the TUN: {c0:?} -> {c1:?}",
            g.node
        );
    }

    // The gateway's own traffic on the mesh interface still reaches its kernel: NDP and
    // ICMP to its link-local address, and a TCP connection to it.
    let r1 = isl.t.ns("r1");
    let g1_ns = isl.t.ns(&g1.node);
    let g1_ll = g1_ns.link_local(&g1.island_if).unwrap();
    let r1_if = &isl.router_ifs[0].0[0];
    ping_ok(r1, &format!("{g1_ll}%{r1_if}"), 3);
    let pid = g1_ns.iperf_server(&isl.t.lab, None, 5203).unwrap();
    let tcp = r1.iperf(&format!("{g1_ll}%{r1_if}"), 5203, "1M", false);
    g1_ns.stop(pid, std::time::Duration::from_millis(500));
    let tcp = tcp.unwrap_or_else(|e| panic!("TCP to the gateway's own address: {e:#}"));
    eprintln!("r1 -> g1a's own address: {}", tcp.summary);
    // Babel on the same interface: the routes are still there after all of it.
    isl.wait_route("r1", "10.2.1.0/24", std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    for g in &isl.gateways {
        assert!(isl.t.wg(&g.node).alive(), "{} died", g.node);
    }

    // `kill -9`: both programs go with the process, and the island interface passes
    // traffic to the kernel as before.
    let pid = isl.t.wg(&g1.node).pid.to_string();
    g1_ns.exec(&["kill", "-9", &pid]).unwrap();
    for dev in [&g1.island_if, &g1.underlay_if] {
        assert!(
            g1_ns.wait_no_xdp(dev).unwrap(),
            "a program is still attached to {dev} after kill -9:\n{}",
            g1_ns.exec(&["ip", "link", "show", dev]).unwrap()
        );
    }
    ping_ok(r1, &format!("{g1_ll}%{r1_if}"), 3);
}

#[test]
fn islands_on_afxdp_native() {
    islands_on_afxdp("native");
}

#[test]
fn islands_on_afxdp_generic() {
    islands_on_afxdp("generic");
}

/// The peer moves to another address on the same link: the AF_XDP hub learns the new
/// endpoint from its authenticated packets (which arrive through the XSK), answers there,
/// and the kernel's UDP stack still sees none of it.
#[test]
fn peer_roams_to_a_new_address_on_the_underlay() {
    let t = pair(WgImpl::WireguardGo, Family::V4, "native");
    let (a, b) = (t.ns("a"), t.ns("b"));
    ping_ok(a, "10.10.0.2", 2);
    ping_ok(b, "10.10.0.1", 2);
    let peer = t.wg("b").keys.public.clone();
    let endpoint = || {
        t.wg("a")
            .dump()
            .unwrap()
            .into_iter()
            .find(|p| p.public_key == peer)
            .and_then(|p| p.endpoint)
    };
    assert_eq!(endpoint().as_deref(), Some("10.200.0.2:51820"));
    // (Deleting a primary address takes the secondaries of its subnet with it: delete first.)
    b.del_addr("to-a1", "10.200.0.2/24").unwrap();
    b.add_addr("to-a1", "10.200.0.7/24").unwrap();
    // Setting the endpoint again clears wireguard-go's cached source address (its sticky
    // socket would keep sending from the address that is gone).
    let hub = t.wg("a").keys.public.clone();
    t.wg("b")
        .wg(&[
            "set",
            &t.wg("b").ifname,
            "peer",
            &hub,
            "endpoint",
            "10.200.0.1:51820",
        ])
        .unwrap();
    let udp_before = udp_in_datagrams(a);
    // b's wireguard-go now sends from its new address.
    ping_ok(b, "10.10.0.1", 5);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while endpoint().as_deref() != Some("10.200.0.7:51820") {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub still shows {:?} for the roamed peer",
            endpoint()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ping_ok(a, "10.10.0.2", 5);
    let (up, down) = a.tcp_both_ways(&t.lab, b, "10.10.0.2", 5201).unwrap();
    eprintln!("after roaming: a->b {}; b->a {}", up.summary, down.summary);
    assert_eq!(
        udp_in_datagrams(a) - udp_before,
        0,
        "the hub's kernel received the roamed peer's datagrams"
    );
}
