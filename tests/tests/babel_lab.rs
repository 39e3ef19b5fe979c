//! The reference Babel routers the control plane's interop tests run against: babeld and
//! BIRD 2 in namespaces, learning each other's prefixes and forwarding, and a failover
//! measured with a continuous ping.

mod common;

use std::time::{Duration, SystemTime};

use common::init;
use isthmus_lab::{
    add_stub_iface, kernel_routes, veth, wait_for_no_route, wait_for_route, Babeld, Bird, Lab,
    Netns, PingOpts, PingProbe,
};

const CONVERGE: Duration = Duration::from_secs(15);

fn ping_from(ns: &Netns, src: &str, dst: &str) {
    ns.wait_ping(dst, Duration::from_secs(10)).unwrap();
    let opts = PingOpts {
        source: Some(src),
        interval: Some(0.05),
        ..Default::default()
    };
    let r = ns.ping_with(dst, 5, &opts).unwrap();
    assert_eq!(r.lost(), 0, "ping {src} -> {dst}:\n{}", r.output);
}

/// Two babelds on a veth without IPv4 addresses: IPv4 routes go v4-via-v6.
#[test]
fn babeld_pair_learns_prefixes_and_forwards() {
    init();
    let lab = Lab::new().unwrap();
    let a = Netns::new("baba").unwrap();
    let b = Netns::new("babb").unwrap();
    veth(&a, "va", &b, "vb").unwrap();
    add_stub_iface(&a, "st0", &["10.71.1.1/24", "fd71:1::1/128"]).unwrap();
    add_stub_iface(&b, "st0", &["10.71.2.1/32", "fd71:2::1/128"]).unwrap();
    // A announces the connected /24 and the /128 (main-table routes) by interface; B its
    // local /32 and /128 addresses.
    let ba = Babeld::start(&a, &lab, "a", &["va"], "redistribute if st0 metric 128").unwrap();
    let bb = Babeld::start(
        &b,
        &lab,
        "b",
        &["vb"],
        "redistribute local ip 10.71.2.1/32 metric 128\nredistribute local ip fd71:2::1/128 metric 128",
    )
    .unwrap();

    let t = ba.wait_for_route("10.71.2.1", CONVERGE).unwrap();
    ba.wait_for_route("fd71:2::1", CONVERGE).unwrap();
    bb.wait_for_route("10.71.1.0/24", CONVERGE).unwrap();
    bb.wait_for_route("fd71:1::1", CONVERGE).unwrap();
    eprintln!("A learned B's IPv4 prefix in {t:?}");

    let ka = kernel_routes(&a, "babel").unwrap();
    let r4 = ka
        .iter()
        .find(|r| r.dst == "10.71.2.1")
        .unwrap_or_else(|| panic!("no proto babel route to 10.71.2.1 in A: {ka:#?}"));
    assert_eq!(r4.dev.as_deref(), Some("va"), "{r4:?}");
    assert!(
        r4.via.as_deref().is_some_and(|v| v.starts_with("fe80:")),
        "IPv4 route without IPv4 on the link should be v4-via-v6: {r4:?}"
    );
    let kb = kernel_routes(&b, "babel").unwrap();
    for p in ["10.71.1.0/24", "fd71:1::1"] {
        assert!(
            kb.iter()
                .any(|r| r.dst == p && r.dev.as_deref() == Some("vb")),
            "no proto babel route to {p} in B: {kb:#?}"
        );
    }

    let na = ba.neighbours().unwrap();
    assert_eq!(na.len(), 1, "{na:#?}");
    assert_eq!(na[0].iface, "va");
    assert!(na[0].reach != 0 && na[0].cost < 0xffff, "{na:#?}");
    let da = ba.dump_all().unwrap();
    assert!(
        da.routes
            .iter()
            .any(|r| r.prefix == "10.71.2.1/32" && r.installed && r.iface == "va"),
        "{da:#?}"
    );
    assert!(da.xroutes.iter().any(|x| x == "10.71.1.0/24"), "{da:#?}");

    ping_from(&a, "10.71.1.1", "10.71.2.1");
    ping_from(&b, "fd71:2::1", "fd71:1::1");

    // kill -9 leaves babeld's kernel routes behind; a restart under the same name works.
    ba.kill();
    assert!(!ba.alive());
    assert!(
        kernel_routes(&a, "babel")
            .unwrap()
            .iter()
            .any(|r| r.dst == "10.71.2.1"),
        "babeld killed with SIGKILL should leave its routes"
    );
    let ba2 = Babeld::start(&a, &lab, "a", &["va"], "redistribute if st0 metric 128").unwrap();
    ba2.wait_installed("10.71.2.1/32", CONVERGE).unwrap();
    ping_from(&a, "10.71.1.1", "10.71.2.1");

    // SIGTERM: babeld removes its own kernel routes.
    bb.stop();
    wait_for_no_route(&b, "10.71.1.0/24", Duration::from_secs(5)).unwrap();
}

/// babeld and BIRD 2 on a veth. BIRD 2.0.12 needs IPv4 addresses on its Babel interface to
/// carry IPv4 routes (no v4-via-v6), so the link has a /30.
#[test]
fn babeld_and_bird_learn_prefixes_and_forward() {
    init();
    let lab = Lab::new().unwrap();
    let a = Netns::new("bbda").unwrap();
    let b = Netns::new("bbdb").unwrap();
    veth(&a, "va", &b, "vb").unwrap();
    a.add_addr("va", "10.72.0.1/30").unwrap();
    b.add_addr("vb", "10.72.0.2/30").unwrap();
    add_stub_iface(&a, "st0", &["10.72.1.1/32", "fd72:1::1/128"]).unwrap();
    add_stub_iface(&b, "st0", &["10.72.2.1/24", "fd72:2::1/128"]).unwrap();
    let babeld = Babeld::start(
        &a,
        &lab,
        "a",
        &["va"],
        "redistribute local ip 10.72.1.1/32 metric 128\nredistribute local ip fd72:1::1/128 metric 128",
    )
    .unwrap();
    let bird = Bird::start(
        &b,
        &lab,
        "b",
        &["vb"],
        "protocol direct { ipv4; ipv6; interface \"st0\"; }",
    )
    .unwrap();

    let t = babeld.wait_for_route("10.72.2.0/24", CONVERGE).unwrap();
    babeld.wait_for_route("fd72:2::1", CONVERGE).unwrap();
    bird.wait_babel_route("10.72.1.1/32", CONVERGE).unwrap();
    bird.wait_babel_route("fd72:1::1/128", CONVERGE).unwrap();
    wait_for_route(&b, "10.72.1.1", CONVERGE).unwrap();
    wait_for_route(&b, "fd72:1::1", CONVERGE).unwrap();
    eprintln!("babeld learned BIRD's IPv4 prefix in {t:?}");

    // babeld installs BIRD's prefixes with IPv4 next hops on an interface with IPv4.
    let ka = kernel_routes(&a, "babel").unwrap();
    let r = ka
        .iter()
        .find(|r| r.dst == "10.72.2.0/24")
        .unwrap_or_else(|| panic!("{ka:#?}"));
    assert_eq!(r.via.as_deref(), Some("10.72.0.2"), "{r:?}");
    // BIRD's kernel protocol installs babeld's prefixes as proto bird.
    let kb = kernel_routes(&b, "bird").unwrap();
    let r = kb
        .iter()
        .find(|r| r.dst == "10.72.1.1")
        .unwrap_or_else(|| panic!("{kb:#?}"));
    assert_eq!(r.via.as_deref(), Some("10.72.0.1"), "{r:?}");
    assert_eq!(r.dev.as_deref(), Some("vb"));
    assert!(kb.iter().any(|r| r.dst == "fd72:1::1"), "{kb:#?}");

    let routes = bird.routes().unwrap();
    let r = routes
        .iter()
        .find(|r| r.prefix == "10.72.1.1/32")
        .unwrap_or_else(|| panic!("{routes:#?}"));
    assert!(r.proto.starts_with("babel") && r.primary, "{r:?}");
    assert_eq!(r.next_hop.as_deref(), Some("10.72.0.1"));
    assert_eq!(r.iface.as_deref(), Some("vb"));
    assert_eq!(bird.babel_neighbours().unwrap().len(), 1);
    let n = babeld.neighbours().unwrap();
    assert!(n.len() == 1 && n[0].reach != 0, "{n:#?}");

    ping_from(&a, "10.72.1.1", "10.72.2.1");
    ping_from(&b, "fd72:2::1", "fd72:1::1");

    // babeld retracts its prefixes when it stops; BIRD removes them from the kernel.
    babeld.stop();
    wait_for_no_route(&b, "10.72.1.1", Duration::from_secs(10)).unwrap();
    assert!(bird.alive());
    bird.stop();
    assert!(!bird.alive());
}

/// Triangle A–B–C with a direct A–C link: cutting A–C moves traffic to A–B–C, restoring it
/// moves it back. The outage is measured with a 10 ms ping and printed, not asserted.
#[test]
fn babeld_triangle_fails_over_and_back() {
    init();
    let lab = Lab::new().unwrap();
    let a = Netns::new("tria").unwrap();
    let b = Netns::new("trib").unwrap();
    let c = Netns::new("tric").unwrap();
    veth(&a, "ac", &c, "ca").unwrap();
    veth(&a, "ab", &b, "ba").unwrap();
    veth(&b, "bc", &c, "cb").unwrap();
    add_stub_iface(&a, "st0", &["10.73.1.1/32"]).unwrap();
    add_stub_iface(&c, "st0", &["10.73.3.1/32"]).unwrap();
    let ra = Babeld::start(
        &a,
        &lab,
        "a",
        &["ac", "ab"],
        "redistribute local ip 10.73.1.1/32 metric 128",
    )
    .unwrap();
    let rb = Babeld::start(&b, &lab, "b", &["ba", "bc"], "").unwrap();
    let rc = Babeld::start(
        &c,
        &lab,
        "c",
        &["ca", "cb"],
        "redistribute local ip 10.73.3.1/32 metric 128",
    )
    .unwrap();
    ra.wait_for_route_dev("10.73.3.1", "ac", CONVERGE).unwrap();
    rc.wait_for_route_dev("10.73.1.1", "ca", CONVERGE).unwrap();
    // B knows both, so A and C hold a feasible backup through it.
    rb.wait_for_route("10.73.1.1", CONVERGE).unwrap();
    rb.wait_for_route("10.73.3.1", CONVERGE).unwrap();

    let probe = PingProbe::start_from(&a, Some("10.73.1.1"), "10.73.3.1", 10).unwrap();
    probe.wait_replies(20, Duration::from_secs(5)).unwrap();
    let cut = SystemTime::now();
    a.exec(&["ip", "link", "set", "ac", "down"]).unwrap();
    let ta = ra.wait_for_route_dev("10.73.3.1", "ab", CONVERGE).unwrap();
    let tc = rc.wait_for_route_dev("10.73.1.1", "cb", CONVERGE).unwrap();
    let rerouted = SystemTime::now();
    let before = probe.replies_so_far();
    probe
        .wait_replies(before + 50, Duration::from_secs(10))
        .unwrap();
    let r = probe.finish().unwrap();
    eprintln!(
        "cut A-C: A rerouted in {ta:?}, C in {tc:?} (after A); probe sent {} received {} longest gap {:?}",
        r.sent, r.received, r.longest_gap
    );
    assert!(r.replies_after(cut) > 0 && r.replies_after(rerouted) >= 50);

    let probe = PingProbe::start_from(&a, Some("10.73.1.1"), "10.73.3.1", 10).unwrap();
    probe.wait_replies(20, Duration::from_secs(5)).unwrap();
    a.exec(&["ip", "link", "set", "ac", "up"]).unwrap();
    let ta = ra.wait_for_route_dev("10.73.3.1", "ac", CONVERGE).unwrap();
    let tc = rc.wait_for_route_dev("10.73.1.1", "ca", CONVERGE).unwrap();
    let back = SystemTime::now();
    let before = probe.replies_so_far();
    probe
        .wait_replies(before + 50, Duration::from_secs(10))
        .unwrap();
    let r = probe.finish().unwrap();
    eprintln!(
        "restore A-C: A back in {ta:?}, C in {tc:?} (after A); probe sent {} received {} longest gap {:?}",
        r.sent, r.received, r.longest_gap
    );
    assert!(r.replies_after(back) >= 50);
}
