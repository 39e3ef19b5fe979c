//! An isthmus hub between two wireguard-go spokes: the spokes reach each other only through
//! the hub, which relays in user space (decrypt, FIB lookup, re-encrypt) without the TUN.
//! Endpoint roaming of a spoke.

mod common;

use std::time::{Duration, Instant};

use common::{init, ping_ok};
use isthmus_lab::{require_isthmus, Metrics, Topology, WgImpl};

/// With a stand-in hub (wireguard-go as ISTHMUS_DP), the kernel must forward for the relay
/// to work at all; isthmus-dp relays itself and the hub's kernel forwarding stays off (the
/// namespace default), so a relay through the TUN would fail.
fn hub_forwarding(t: &Topology) {
    if !WgImpl::Isthmus.is_real_isthmus() {
        t.ns("hub").set_forwarding(true).unwrap();
    }
}

fn metrics(t: &Topology) -> Option<Metrics> {
    WgImpl::Isthmus
        .is_real_isthmus()
        .then(|| t.wg("hub").metrics().unwrap())
}

#[test]
fn hub_relays_between_spokes_without_the_tun() {
    init();
    let t = Topology::star(WgImpl::Isthmus, &[WgImpl::WireguardGo, WgImpl::WireguardGo]).unwrap();
    hub_forwarding(&t);
    let (s0, s1) = (t.ns("s0"), t.ns("s1"));
    // Sessions up on both legs (the spokes' keepalives also do this).
    ping_ok(s0, "10.20.0.1", 1);
    ping_ok(s1, "10.20.0.1", 1);
    ping_ok(s0, &Topology::spoke_v4(1), 1);
    ping_ok(s1, &Topology::spoke_v6(0), 1);

    let before = metrics(&t);
    const N4: u32 = 20;
    const N6: u32 = 10;
    let r = s0
        .ping_with(
            &Topology::spoke_v4(1),
            N4,
            &isthmus_lab::PingOpts {
                interval: Some(0.05),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.lost(), 0, "{}", r.output);
    let r = s1
        .ping_with(
            &Topology::spoke_v6(0),
            N6,
            &isthmus_lab::PingOpts {
                interval: Some(0.05),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.lost(), 0, "{}", r.output);
    let after = metrics(&t);

    // TCP through the relay, both ways.
    let (up, down) = s0
        .tcp_both_ways(&t.lab, s1, &Topology::spoke_v4(1), 5204)
        .unwrap();
    eprintln!("relay TCP: s0->s1 {}; s1->s0 {}", up.summary, down.summary);
    assert!(
        t.wg("hub").alive(),
        "hub died:\n{}",
        t.wg("hub").log_tail(30)
    );

    require_isthmus("relay path counters");
    let (before, after) = (before.unwrap(), after.unwrap());
    let relay = after.get("isthmus_forwarded_packets_total", &[("path", "relay")])
        - before.get("isthmus_forwarded_packets_total", &[("path", "relay")]);
    let to_local = after.get("isthmus_forwarded_packets_total", &[("path", "to_local")])
        - before.get("isthmus_forwarded_packets_total", &[("path", "to_local")]);
    // Every echo request and every reply crosses the hub once.
    let pings = f64::from(N4 + N6);
    assert!(
        relay >= 2.0 * pings,
        "relay counter grew by {relay}, expected at least {}",
        2.0 * pings
    );
    assert!(
        to_local == 0.0,
        "to_local grew by {to_local} while only spoke-to-spoke traffic flowed"
    );
}

/// Spokes whose tunnels have a larger MTU (1500) than the hub's (1420): an IPv4 packet
/// without DF that does not fit the hub's tunnel MTU is relayed in fragments, which the far
/// spoke's kernel reassembles (pings of 1450 bytes both ways); with DF it is refused with
/// "fragmentation needed" back to the sender, as a router does.
#[test]
fn hub_fragments_relayed_ipv4_without_df() {
    init();
    require_isthmus("fragmentation of relayed packets");
    let t = Topology::star(WgImpl::Isthmus, &[WgImpl::WireguardGo, WgImpl::WireguardGo]).unwrap();
    let (s0, s1) = (t.ns("s0"), t.ns("s1"));
    for (ns, node) in [(s0, "s0"), (s1, "s1")] {
        ns.exec(&[
            "ip",
            "link",
            "set",
            "dev",
            &t.wg(node).ifname,
            "mtu",
            "1500",
        ])
        .unwrap();
    }
    ping_ok(s0, &Topology::spoke_v4(1), 1);
    let before = t.wg("hub").metrics().unwrap();
    let to = Topology::spoke_v4(1);
    let out = s0
        .exec(&[
            "ping", "-c", "5", "-i", "0.1", "-W", "2", "-M", "dont", "-s", "1450", &to,
        ])
        .unwrap_or_else(|e| {
            panic!(
                "1450-byte pings without DF through the hub: {e:#}\n{}",
                t.wg("hub").log_tail(20)
            )
        });
    assert!(out.contains(" 0% packet loss"), "{out}");
    let after = t.wg("hub").metrics().unwrap();
    let grew = |name: &str| after.get(name, &[]) - before.get(name, &[]);
    // Five requests and five replies, two fragments each.
    assert!(grew("isthmus_fragmented_packets_total") >= 10.0, "{out}");
    assert!(grew("isthmus_fragments_created_total") >= 20.0, "{out}");

    // With DF: refused, the sender told the hub's MTU.
    let df = s0.exec(&[
        "ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1450", &to,
    ]);
    let text = match &df {
        Ok(o) => o.clone(),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        text.contains("Frag needed and DF set (mtu = 1420)"),
        "pings with DF: the hub should answer fragmentation needed: {text}"
    );
    let last = t.wg("hub").metrics().unwrap();
    assert!(
        last.get("isthmus_drops_total", &[("reason", "too_big")])
            > after.get("isthmus_drops_total", &[("reason", "too_big")]),
        "{text}"
    );
}

#[test]
fn spoke_roams_to_a_new_address() {
    init();
    let mut t =
        Topology::star(WgImpl::Isthmus, &[WgImpl::WireguardGo, WgImpl::WireguardGo]).unwrap();
    hub_forwarding(&t);
    let s1v4 = Topology::spoke_v4(1);
    ping_ok(t.ns("s0"), &s1v4, 3);
    ping_ok(t.ns("s1"), "10.20.0.1", 1);
    let spoke_key = t.wg("s0").keys.public.clone();
    let endpoint_of_s0 = |t: &Topology| {
        t.wg("hub")
            .dump()
            .unwrap()
            .into_iter()
            .find(|p| p.public_key == spoke_key)
            .and_then(|p| p.endpoint)
    };
    assert_eq!(endpoint_of_s0(&t).as_deref(), Some("10.201.0.2:51820"));

    // Move s0 to a new link and address: the old one disappears.
    t.link("hub", &["10.203.0.1/24"], "s0", &["10.203.0.2/24"])
        .unwrap();
    t.ns("s0")
        .del_addr(&old_link_if(&t), "10.201.0.2/24")
        .unwrap();
    let s0 = t.wg("s0");
    s0.wg(&[
        "set",
        &s0.ifname,
        "peer",
        &t.wg("hub").keys.public,
        "endpoint",
        "10.203.0.1:51820",
    ])
    .unwrap();

    // Traffic continues both ways; the hub learns the new endpoint from authenticated packets.
    ping_ok(t.ns("s0"), &s1v4, 5);
    ping_ok(t.ns("s1"), &Topology::spoke_v4(0), 5);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let e = endpoint_of_s0(&t);
        if e.as_deref() == Some("10.203.0.2:51820") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hub still shows endpoint {e:?} for the roamed spoke"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The hub reaches the spoke at its new address by itself.
    ping_ok(t.ns("hub"), &Topology::spoke_v4(0), 3);
    assert!(t.wg("hub").alive());
}

/// The name of s0's first link (to the hub) inside s0.
fn old_link_if(t: &Topology) -> String {
    let out = t
        .ns("s0")
        .exec(&["ip", "-o", "-4", "addr", "show"])
        .unwrap();
    out.lines()
        .find(|l| l.contains("10.201.0.2/24"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|s| s.split('@').next().unwrap_or(s).to_owned())
        .expect("s0 has its first underlay address")
}
