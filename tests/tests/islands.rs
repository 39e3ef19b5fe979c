//! The demo's topology: hosts on two mesh islands reach each other across two isthmus trunk
//! gateways, which relay in user space. The gateways start from `isthmus-dp --config FILE`.

mod common;

use common::{init, ping_ok};
use isthmus_lab::{require_isthmus, PingOpts, Topology, WgImpl};

#[test]
fn hosts_reach_each_other_across_the_trunk() {
    init();
    let t = Topology::islands(WgImpl::Isthmus, WgImpl::WireguardGo).unwrap();
    let (h1, h2) = (t.ns("h1"), t.ns("h2"));
    ping_ok(h1, "10.2.1.2", 1);
    ping_ok(h2, "fd00:1:1::2", 1);
    let real = WgImpl::Isthmus.is_real_isthmus();
    let before: Vec<_> = ["g1", "g2"]
        .iter()
        .map(|g| real.then(|| t.wg(g).metrics().unwrap()))
        .collect();
    const N: u32 = 20;
    let fast = PingOpts {
        interval: Some(0.05),
        ..Default::default()
    };
    for (from, to) in [(h1, "10.2.1.2"), (h2, "10.1.1.2"), (h1, "fd00:2:1::2")] {
        let r = from.ping_with(to, N, &fast).unwrap();
        assert_eq!(r.lost(), 0, "{}", r.output);
    }
    let (up, down) = h1.tcp_both_ways(&t.lab, h2, "10.2.1.2", 5206).unwrap();
    eprintln!("h1->h2 {}; h2->h1 {}", up.summary, down.summary);
    assert!(t.wg("g1").alive() && t.wg("g2").alive());

    require_isthmus("trunk relay counters");
    for (i, g) in ["g1", "g2"].iter().enumerate() {
        let after = t.wg(g).metrics().unwrap();
        let b = before[i].as_ref().unwrap();
        let relay = after.get("isthmus_forwarded_packets_total", &[("path", "relay")])
            - b.get("isthmus_forwarded_packets_total", &[("path", "relay")]);
        assert!(relay >= f64::from(6 * N), "{g}: relay grew by {relay}");
        // Started from a configuration file: peers carry their names and classes.
        let other = if *g == "g1" { "gw-2" } else { "gw-1" };
        let island = if *g == "g1" { "island-1" } else { "island-2" };
        for (peer, class) in [(other, "trunk"), (island, "mesh")] {
            let rx = after.get(
                "isthmus_peer_rx_packets_total",
                &[("peer", peer), ("class", class)],
            );
            assert!(
                rx > f64::from(N),
                "{g}: peer {peer} ({class}) received {rx} packets\n{}",
                after.excerpt("isthmus_peer_rx")
            );
        }
    }
}
