//! isthmus-cp (the isthmus Babel daemon) against the reference implementations, babeld and
//! BIRD 2, on a veth between two namespaces: prefixes learned both ways and installed in the
//! kernels, forwarding in both families, status and metrics; non-stop forwarding across a
//! kill -9 and a restart; the wildcard retraction of `retract_on_shutdown`; garbage packets;
//! MAC authentication (RFC 8967) with each, wrong keys and replays refused.
//!
//! Hello interval 1 s everywhere, so isthmus-cp's start-up hold (two hello intervals and a
//! second) is 3 s.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::init;
use isthmus_lab::{
    add_stub_iface, babel_key_table, kernel_routes, lab_tool_path, veth, wait_for_no_route,
    wait_for_route, wait_for_route_where, Babeld, Bird, IsthmusCp, KernelRoute, Lab, Netns,
    PingOpts, PingProbe,
};

const CONVERGE: Duration = Duration::from_secs(15);

/// isthmus-cp's prefixes (namespace A, on its stub interface) and the reference router's
/// (namespace B).
const CP_V4: &str = "10.74.1.1";
const CP_V6: &str = "fd74:1::1";
const REF_V4: &str = "10.74.2.1";
const REF_V6: &str = "fd74:2::1";
/// A fixed router id, as a gateway with a private key has (it is derived from the key): a
/// restart comes back under the same id, with its seqno starting over.
const CP_ROUTER_ID: &str = "02:00:00:00:00:74:00:01";

/// isthmus-cp's configuration: Babel on `va` (class wired, hello interval 1 s), originating
/// its stub prefixes; `babel_extra` goes into `[babel]`.
fn cp_config(babel_extra: &str) -> String {
    format!(
        "[interface]\nname = \"isth0\"\n\n[babel]\nrouter_id = \"{CP_ROUTER_ID}\"\n\
         originate = [\"{CP_V4}/32\", \"{CP_V6}/128\"]\n{babel_extra}\n\n\
         [babel.wired]\nhello_interval = 1\n\n[[babel.interface]]\nname = \"va\"\n"
    )
}

/// The babeld configuration: redistribute its stub's /32 and /128.
fn babeld_conf() -> String {
    format!(
        "redistribute local ip {REF_V4}/32 metric 128\nredistribute local ip {REF_V6}/128 metric 128"
    )
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    let out = ns.exec(&["ip", "-o", "link", "show", "dev", dev]).unwrap();
    out.split(':').next().unwrap().trim().parse().unwrap()
}

/// The lab, namespaces `cpTAGa` and `cpTAGb` and [`setup`] between them; returns B's
/// link-local address too.
fn lab_pair(tag: &str, ipv4_link: bool) -> (Lab, Netns, Netns, String) {
    init();
    let lab = Lab::new().unwrap();
    let a = Netns::new(&format!("cp{tag}a")).unwrap();
    let b = Netns::new(&format!("cp{tag}b")).unwrap();
    let ll_b = setup(&a, &b, ipv4_link);
    (lab, a, b, ll_b)
}

/// A has `va`, B has `vb`, both with usable link-local addresses; each has its stub prefixes
/// (`st0`). Returns B's link-local address (the reference router's, as isthmus-cp sees it).
fn setup(a: &Netns, b: &Netns, ipv4_link: bool) -> String {
    veth(a, "va", b, "vb").unwrap();
    if ipv4_link {
        a.add_addr("va", "10.74.0.1/30").unwrap();
        b.add_addr("vb", "10.74.0.2/30").unwrap();
    }
    add_stub_iface(a, "st0", &[&format!("{CP_V4}/32"), &format!("{CP_V6}/128")]).unwrap();
    add_stub_iface(
        b,
        "st0",
        &[&format!("{REF_V4}/32"), &format!("{REF_V6}/128")],
    )
    .unwrap();
    a.link_local("va").unwrap();
    b.link_local("vb").unwrap()
}

/// babeld in B and isthmus-cp in A (`cp_config("")`), each with the other's prefixes
/// installed.
fn babeld_and_cp_converged<'a>(
    a: &'a Netns,
    b: &'a Netns,
    lab: &Lab,
) -> (Babeld<'a>, IsthmusCp<'a>) {
    let bd = Babeld::start(b, lab, "b", &["vb"], &babeld_conf()).unwrap();
    let cp = IsthmusCp::start(a, lab, "a", &cp_config("")).unwrap();
    wait_cp_route(&cp, a, REF_V4);
    wait_cp_route(&cp, a, REF_V6);
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    bd.wait_for_route(CP_V6, CONVERGE).unwrap();
    (bd, cp)
}

/// Routes isthmus-cp installed (protocol 77).
fn cp_kernel_routes(ns: &Netns) -> Vec<KernelRoute> {
    kernel_routes(ns, "77").unwrap()
}

/// Waits until isthmus-cp's kernel route (protocol 77) to `prefix` exists.
fn wait_cp_route(cp: &IsthmusCp<'_>, ns: &Netns, prefix: &str) -> Duration {
    wait_for_route_where(ns, prefix, CONVERGE, " proto 77", |r| {
        r.proto.as_deref() == Some("77")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()))
}

/// Polls `cond` every 50 ms until it holds, for at most [`CONVERGE`]; then fails naming
/// `what`, with isthmus-cp's diagnostics. Returns how long it took.
fn poll(cp: &IsthmusCp<'_>, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < CONVERGE,
            "{what}: not within {CONVERGE:?}\n{}",
            cp.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Waits until `show babel` says the start-up hold is over.
fn wait_synced(cp: &IsthmusCp<'_>) {
    poll(cp, "isthmus-cp synchronised", || {
        cp.status("babel").is_ok_and(|s| s.contains("synchronised"))
    });
}

/// A log without ANSI colour sequences.
fn read_log(path: &std::path::Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap();
    let mut out = String::with_capacity(raw.len());
    let mut it = raw.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

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

/// Pings `dst` from `src` 5 times at 50 ms until a run loses nothing, for at most `within`.
fn ping_clean_within(ns: &Netns, src: &str, dst: &str, within: Duration) {
    ns.wait_ping(dst, within).unwrap();
    let deadline = std::time::Instant::now() + within;
    let opts = PingOpts {
        source: Some(src),
        interval: Some(0.05),
        ..Default::default()
    };
    loop {
        let r = ns.ping_with(dst, 5, &opts).unwrap();
        if r.lost() == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ping {src} -> {dst}: no clean run of 5 within {within:?}; the last:\n{}",
            r.output
        );
        eprintln!("ping {src} -> {dst}: {} of 5 lost, again", r.lost());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `(link, address, cost)` of each line of `isthmusctl show neighbours`.
fn cp_neighbours(cp: &IsthmusCp<'_>) -> Vec<(String, String, String)> {
    cp.status("neighbours")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() >= 6).then(|| (t[0].to_owned(), t[1].to_owned(), t[5].to_owned()))
        })
        .collect()
}

/// Prefixes `isthmusctl show routes` marks selected (`*`).
fn cp_selected(cp: &IsthmusCp<'_>) -> Vec<String> {
    cp.status("routes")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.first() == Some(&"*") && t.len() > 1).then(|| t[1].to_owned())
        })
        .collect()
}

/// Waits until isthmus-cp has selected the reference router's prefixes again. babeld ignores a
/// wildcard route request that comes within a few seconds of its last full update (its guard
/// against boot-time update storms), so a restarted daemon may have to wait for babeld's next
/// periodic update (four hello intervals, 16 s with the defaults).
fn wait_selected(cp: &IsthmusCp<'_>) {
    let wait = Duration::from_secs(25);
    let deadline = Instant::now() + wait;
    loop {
        let sel = cp_selected(cp);
        if [format!("{REF_V4}/32"), format!("{REF_V6}/128")]
            .iter()
            .all(|p| sel.contains(p))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reference prefixes not selected within {wait:?}: {sel:?}\n{}",
            cp.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status and metrics isthmus-cp reports with one reference neighbour on `va` whose
/// prefixes it selected.
fn assert_cp_status(cp: &IsthmusCp<'_>, neighbour: &str) {
    let n = cp_neighbours(cp);
    let ours = n
        .iter()
        .find(|(link, addr, _)| link == "va" && addr == neighbour)
        .unwrap_or_else(|| {
            panic!(
                "no neighbour {neighbour} on va: {n:?}\n{}",
                cp.diagnostics()
            )
        });
    let cost: u32 = ours
        .2
        .parse()
        .unwrap_or_else(|_| panic!("cost of {neighbour} not finite: {ours:?}"));
    assert!(cost < 0xffff, "{ours:?}");
    let sel = cp_selected(cp);
    for p in [format!("{REF_V4}/32"), format!("{REF_V6}/128")] {
        assert!(
            sel.contains(&p),
            "{p} not selected: {sel:?}\n{}",
            cp.diagnostics()
        );
    }
    let m = cp.metrics().unwrap();
    let selected = m.get("isthmus_babel_routes", &[("state", "selected")]);
    assert!(
        selected >= 2.0,
        "isthmus_babel_routes{{state=selected}} = {selected}"
    );
    let c = m
        .sum(
            "isthmus_babel_neighbour_cost",
            &[("link", "va"), ("address", neighbour)],
        )
        .unwrap_or_else(|| panic!("no isthmus_babel_neighbour_cost for {neighbour}"));
    assert!(c > 0.0 && c < 65535.0, "isthmus_babel_neighbour_cost = {c}");
    assert_eq!(m.get("isthmus_babel_originated_routes", &[]), 2.0);
}

/// isthmus-cp and babeld on a veth without IPv4 addresses: IPv4 goes v4-via-v6 both ways.
#[test]
fn cp_and_babeld_on_veth() {
    let t0 = Instant::now();
    let (lab, a, b, ll_b) = lab_pair("b", false);
    let ll_a = a.link_local("va").unwrap();
    let bd = Babeld::start(&b, &lab, "b", &["vb"], &babeld_conf()).unwrap();
    let cp = IsthmusCp::start(&a, &lab, "a", &cp_config("")).unwrap();

    let t4 = wait_cp_route(&cp, &a, REF_V4);
    wait_cp_route(&cp, &a, REF_V6);
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    bd.wait_for_route(CP_V6, CONVERGE).unwrap();
    eprintln!("isthmus-cp installed babeld's IPv4 prefix {t4:?} after start (hold 3 s)");

    let ka = cp_kernel_routes(&a);
    let r4 = ka
        .iter()
        .find(|r| r.dst == REF_V4)
        .unwrap_or_else(|| panic!("{ka:#?}"));
    assert_eq!(r4.dev.as_deref(), Some("va"), "{r4:?}");
    assert_eq!(r4.via.as_deref(), Some(ll_b.as_str()), "v4-via-v6: {r4:?}");
    let r6 = ka
        .iter()
        .find(|r| r.dst == REF_V6)
        .unwrap_or_else(|| panic!("{ka:#?}"));
    assert_eq!(r6.via.as_deref(), Some(ll_b.as_str()), "{r6:?}");
    assert_eq!(ka.len(), 2, "only babeld's prefixes: {ka:#?}");
    // The kernel metric is the Babel metric, for other daemons on the box to compare.
    let routes = cp.status("routes").unwrap();
    for (r, p) in [(r4, REF_V4), (r6, REF_V6)] {
        let babel_metric: u32 = routes
            .lines()
            .find(|l| l.starts_with('*') && l.contains(&format!("{p}/")))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no selected route to {p}:\n{routes}"));
        assert_eq!(r.metric, Some(babel_metric), "{r:?}\n{routes}");
    }

    let kb = kernel_routes(&b, "babel").unwrap();
    for p in [CP_V4, CP_V6] {
        let r = kb
            .iter()
            .find(|r| r.dst == p)
            .unwrap_or_else(|| panic!("no proto babel route to {p} in B: {kb:#?}"));
        assert_eq!(r.via.as_deref(), Some(ll_a.as_str()), "{r:?}");
        assert_eq!(r.dev.as_deref(), Some("vb"), "{r:?}");
    }
    let n = bd.neighbours().unwrap();
    assert!(
        n.len() == 1 && n[0].address == ll_a && n[0].cost < 0xffff,
        "{n:#?}"
    );

    ping_from(&a, CP_V4, REF_V4);
    ping_from(&a, CP_V6, REF_V6);
    ping_from(&b, REF_V4, CP_V4);
    ping_from(&b, REF_V6, CP_V6);

    assert_cp_status(&cp, &ll_b);
    let m = cp.metrics().unwrap();
    assert!(m.get("isthmus_build_info", &[("daemon", "isthmus-cp")]) == 1.0);
    assert!(m.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.get("isthmus_babel_fib_push_seconds_bucket", &[("le", "+Inf")]) >= 0.0);
    m.promtool_check().unwrap();
    assert!(cp.alive() && bd.alive());
    eprintln!("cp_and_babeld_on_veth took {:?}", t0.elapsed());
}

/// isthmus-cp and BIRD 2 on a veth with a /30 (BIRD 2.0.12 has no v4-via-v6).
#[test]
fn cp_and_bird_on_veth() {
    let t0 = Instant::now();
    let (lab, a, b, ll_b) = lab_pair("i", true);
    let ll_a = a.link_local("va").unwrap();
    let bird = Bird::start(
        &b,
        &lab,
        "b",
        &["vb"],
        "protocol direct { ipv4; ipv6; interface \"st0\"; }",
    )
    .unwrap();
    let cp = IsthmusCp::start(&a, &lab, "a", &cp_config("")).unwrap();

    let t4 = wait_cp_route(&cp, &a, REF_V4);
    wait_cp_route(&cp, &a, REF_V6);
    bird.wait_babel_route(&format!("{CP_V4}/32"), CONVERGE)
        .unwrap();
    bird.wait_babel_route(&format!("{CP_V6}/128"), CONVERGE)
        .unwrap();
    wait_for_route(&b, CP_V4, CONVERGE).unwrap();
    wait_for_route(&b, CP_V6, CONVERGE).unwrap();
    eprintln!("isthmus-cp installed BIRD's IPv4 prefix {t4:?} after start (hold 3 s)");

    // IPv4 next hops both ways on a link with IPv4 addresses.
    let ka = cp_kernel_routes(&a);
    let r4 = ka
        .iter()
        .find(|r| r.dst == REF_V4)
        .unwrap_or_else(|| panic!("{ka:#?}"));
    assert_eq!(r4.via.as_deref(), Some("10.74.0.2"), "{r4:?}");
    assert_eq!(r4.dev.as_deref(), Some("va"), "{r4:?}");
    let r6 = ka
        .iter()
        .find(|r| r.dst == REF_V6)
        .unwrap_or_else(|| panic!("{ka:#?}"));
    assert_eq!(r6.via.as_deref(), Some(ll_b.as_str()), "{r6:?}");

    let kb = kernel_routes(&b, "bird").unwrap();
    let r = kb
        .iter()
        .find(|r| r.dst == CP_V4)
        .unwrap_or_else(|| panic!("{kb:#?}"));
    assert_eq!(r.via.as_deref(), Some("10.74.0.1"), "{r:?}");
    assert_eq!(r.dev.as_deref(), Some("vb"), "{r:?}");
    let r = kb
        .iter()
        .find(|r| r.dst == CP_V6)
        .unwrap_or_else(|| panic!("{kb:#?}"));
    assert_eq!(r.via.as_deref(), Some(ll_a.as_str()), "{r:?}");
    let routes = bird.routes().unwrap();
    let r = routes
        .iter()
        .find(|r| r.prefix == format!("{CP_V4}/32"))
        .unwrap_or_else(|| panic!("{routes:#?}"));
    assert!(r.proto.starts_with("babel") && r.primary, "{r:?}");
    assert_eq!(bird.babel_neighbours().unwrap(), vec![ll_a.clone()]);

    ping_from(&a, CP_V4, REF_V4);
    ping_from(&a, CP_V6, REF_V6);
    ping_from(&b, REF_V4, CP_V4);
    ping_from(&b, REF_V6, CP_V6);

    assert_cp_status(&cp, &ll_b);
    assert!(cp.alive() && bird.alive());
    eprintln!("cp_and_bird_on_veth took {:?}", t0.elapsed());
}

/// Non-stop forwarding: after kill -9 isthmus-cp's kernel routes stay; a restart (same router
/// id, seqno starting over) reconciles them without ever removing the one to babeld's prefix;
/// traffic keeps flowing. Then a SIGTERM with `retract_on_shutdown = true` removes its kernel
/// routes and retracts its prefixes from babeld at once.
#[test]
fn cp_restart_keeps_kernel_routes() {
    let t0 = Instant::now();
    let (lab, a, b, _) = lab_pair("r", false);
    let (bd, cp) = babeld_and_cp_converged(&a, &b, &lab);
    ping_from(&a, CP_V4, REF_V4);
    let before = cp_kernel_routes(&a);
    assert_eq!(before.len(), 2, "{before:#?}");

    let probe = PingProbe::start_from(&a, Some(CP_V4), REF_V4, 20).unwrap();
    probe.wait_replies(10, Duration::from_secs(5)).unwrap();

    // Poll isthmus-cp's kernel routes every 50 ms from before the kill until well after the
    // restarted daemon's start-up hold.
    let done = AtomicBool::new(false);
    let (samples, cp2) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut samples: Vec<(Duration, Vec<KernelRoute>)> = Vec::new();
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                samples.push((start.elapsed(), cp_kernel_routes(&a)));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        std::thread::sleep(Duration::from_millis(200));
        cp.kill();
        assert!(!cp.alive());
        // kill -9: nothing removed its routes; babeld still has the cp's prefix.
        assert_eq!(
            cp_kernel_routes(&a),
            before,
            "kill -9 must leave the routes"
        );
        let kb = kernel_routes(&b, "babel").unwrap();
        assert!(
            kb.iter().any(|r| r.dst == CP_V4 && r.usable()),
            "babeld lost {CP_V4} at once: {kb:#?}"
        );
        let restarted = Instant::now();
        let cp2 = IsthmusCp::start(&a, &lab, "a", &cp_config("")).unwrap();
        wait_synced(&cp2);
        eprintln!(
            "restarted isthmus-cp synchronised {:?} after the restart",
            restarted.elapsed()
        );
        // A little longer, so that route changes after the reconciliation are seen too.
        std::thread::sleep(Duration::from_millis(1500));
        done.store(true, Ordering::Relaxed);
        (poller.join().unwrap(), cp2)
    });
    assert!(samples.len() > 40, "only {} samples", samples.len());
    for (t, rs) in &samples {
        for p in [REF_V4, REF_V6] {
            assert!(
                rs.iter().any(|r| r.dst == p),
                "proto 77 route to {p} missing {t:?} into the restart window: {rs:#?}\n{}",
                cp2.diagnostics()
            );
        }
    }
    assert_eq!(cp_kernel_routes(&a), before, "{}", cp2.diagnostics());
    let log = read_log(cp2.log_path());
    assert!(
        log.contains("kernel routes reconciled found=2 changes=0"),
        "{log}"
    );
    let r = probe.finish().unwrap();
    eprintln!(
        "ping across kill -9 and restart: {} sent, {} received, longest gap {:?}",
        r.sent, r.received, r.longest_gap
    );
    // Non-stop forwarding: the kernel routes on A never go, and babeld keeps its route back
    // to A's prefix because the restarted daemon's hellos continue the seqno sequence (they
    // follow the wall clock) and it sends no IHU before it hears babeld again.
    assert_eq!(r.lost(), 0, "pings lost across the restart:\n{}", r.output);
    assert!(
        r.longest_gap < Duration::from_millis(500),
        "ping stopped for {:?} across the restart:\n{}\n{}",
        r.longest_gap,
        cp2.diagnostics(),
        bd.diagnostics()
    );
    wait_selected(&cp2);
    assert_cp_status(&cp2, &b.link_local("vb").unwrap());
    ping_from(&a, CP_V6, REF_V6);
    ping_from(&b, REF_V4, CP_V4);

    // A plain SIGTERM leaves the routes too; a daemon with retract_on_shutdown retracts.
    cp2.stop();
    assert_eq!(
        cp_kernel_routes(&a),
        before,
        "SIGTERM must leave the routes"
    );
    let cp3 = IsthmusCp::start(&a, &lab, "a", &cp_config("retract_on_shutdown = true")).unwrap();
    wait_synced(&cp3);
    assert_eq!(cp_kernel_routes(&a), before, "{}", cp3.diagnostics());
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    let stopped = Instant::now();
    cp3.stop();
    assert!(!cp3.alive());
    let left = cp_kernel_routes(&a);
    assert!(left.is_empty(), "retract_on_shutdown left {left:#?}");
    // The wildcard retraction, not the loss of the neighbour (which takes at least two
    // missed hellos, 2 s), makes babeld drop the prefixes.
    let gone = wait_for_no_route(&b, CP_V4, Duration::from_secs(5)).unwrap();
    wait_for_no_route(&b, CP_V6, Duration::from_secs(5)).unwrap();
    let gone6 = stopped.elapsed();
    eprintln!("babeld dropped the retracted prefixes {gone:?} / {gone6:?} after SIGTERM");
    assert!(
        gone6 < Duration::from_millis(1800),
        "babeld took {gone6:?} to drop the retracted prefixes:\n{}",
        bd.diagnostics()
    );
    let log = read_log(cp3.log_path());
    assert!(log.contains("retracting our routes"), "{log}");
    eprintln!("cp_restart_keeps_kernel_routes took {:?}", t0.elapsed());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Babel packet (magic 42, version 2) around `body`.
fn babel_packet(body: &[u8]) -> Vec<u8> {
    let mut p = vec![42, 2];
    p.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// Sends UDP payloads from B with lab-tool.
fn udp_send(b: &Netns, bind: Option<&str>, to: &str, payloads: &[Vec<u8>]) {
    let tool = lab_tool_path().unwrap();
    let tool = tool.to_string_lossy().into_owned();
    let hexes: Vec<String> = payloads.iter().map(|p| hex(p)).collect();
    let mut args = vec![tool.as_str(), "udp-send"];
    if let Some(bind) = bind {
        args.extend(["--bind", bind]);
    }
    args.push(to);
    args.extend(hexes.iter().map(String::as_str));
    b.exec(&args).unwrap();
}

/// Garbage on the Babel port, multicast and unicast: refused packets are counted, malformed
/// TLVs skipped, and nothing else changes.
#[test]
fn bad_babel_packets_are_counted_not_fatal() {
    let t0 = Instant::now();
    let (lab, a, b, ll_b) = lab_pair("g", false);
    let ll_a = a.link_local("va").unwrap();
    // A global address on B's end, to send a Babel packet from (babeld keeps using its
    // link-local address: it must have one before babeld starts, so no second one here).
    b.add_addr("vb", "fd74:99::2/64").unwrap();
    let (bd, cp) = babeld_and_cp_converged(&a, &b, &lab);
    let routes_before = cp_kernel_routes(&a);
    let refused0 = cp
        .metrics()
        .unwrap()
        .get("isthmus_babel_packets_total", &[("direction", "refused")]);

    let idx = ifindex(&b, "vb");
    let group = format!("[ff02::1:6%{idx}]:6696");
    let unicast = format!("[{ll_a}%{idx}]:6696");
    // Not Babel packets at all: refused.
    let mut long_body = babel_packet(&[0; 64]);
    long_body[2..4].copy_from_slice(&1000u16.to_be_bytes());
    let refused: Vec<Vec<u8>> = vec![
        b"garbage, not babel".to_vec(),
        vec![42],
        vec![42, 2, 0],
        vec![42, 3, 0, 0],
        vec![43, 2, 0, 0],
        long_body,
        vec![0xff; 1200],
    ];
    // Babel packets with malformed TLVs, from babeld's own address: parsed, the bad TLVs
    // skipped, the neighbour undisturbed.
    let malformed: Vec<Vec<u8>> = vec![
        // Update: AE 2 with plen 200; AE 1 with plen 33; omitted beyond plen; AE 9.
        babel_packet(&[8, 10, 0, 2, 200, 0, 0, 100, 0, 1, 0, 96]),
        babel_packet(&[8, 14, 0, 1, 33, 0, 0, 100, 0, 1, 0, 96, 10, 74]),
        babel_packet(&[8, 10, 0, 2, 128, 20, 0, 100, 0, 1, 0, 96]),
        babel_packet(&[8, 10, 0, 9, 8, 0, 0, 100, 0, 1, 0, 96]),
        // Update with a mandatory sub-TLV, and with sub-TLVs overrunning the TLV.
        babel_packet(&[8, 15, 0, 1, 8, 0, 0, 100, 0, 1, 0, 96, 10, 0x80, 1, 0]),
        babel_packet(&[8, 15, 0, 1, 8, 0, 0, 100, 0, 1, 0, 96, 10, 2, 9, 0]),
        // Hello too short; IHU with AE 7; router id too short; next hop AE 1 too short.
        babel_packet(&[4, 2, 0, 0]),
        babel_packet(&[5, 6, 7, 0, 0, 96, 1, 144]),
        babel_packet(&[6, 4, 0, 0, 1, 2]),
        babel_packet(&[7, 3, 1, 0, 10]),
        // A TLV longer than the body; an unknown TLV; a seqno request for prefix length 255.
        babel_packet(&[8, 200, 0, 1]),
        babel_packet(&[99, 2, 0, 0]),
        babel_packet(&[10, 14, 0, 1, 0, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for to in [&group, &unicast] {
        udp_send(&b, None, to, &refused);
        udp_send(&b, None, to, &malformed);
    }
    // A well-formed packet from a global address: refused (RFC 8966: link-local only).
    let hello = babel_packet(&[4, 6, 0, 0, 0, 1, 0, 100]);
    udp_send(
        &b,
        Some("[fd74:99::2]:0"),
        &unicast,
        std::slice::from_ref(&hello),
    );
    b.del_addr("vb", "fd74:99::2/64").unwrap();
    let expected = refused0 + 2.0 * refused.len() as f64 + 1.0;

    let deadline = Instant::now() + Duration::from_secs(5);
    let refused_now = loop {
        let m = cp.metrics().unwrap();
        let n = m.get("isthmus_babel_packets_total", &[("direction", "refused")]);
        if n >= expected || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refused_now >= expected,
        "refused packets {refused0} -> {refused_now}, expected at least {expected}\n{}",
        cp.diagnostics()
    );
    let m = cp.metrics().unwrap();
    let dropped = m.get("isthmus_babel_tlv_dropped_total", &[]);
    eprintln!("refused packets {refused0} -> {refused_now}; TLVs dropped {dropped}");
    assert!(
        dropped > 0.0,
        "no malformed TLV counted:\n{}",
        cp.diagnostics()
    );

    // Two more hello intervals: the daemon runs, the neighbour and routes are unchanged.
    std::thread::sleep(Duration::from_secs(2));
    assert!(cp.alive(), "isthmus-cp died:\n{}", cp.log_tail());
    assert!(bd.alive());
    assert_eq!(cp_kernel_routes(&a), routes_before, "{}", cp.diagnostics());
    assert_cp_status(&cp, &ll_b);
    bd.wait_for_route(CP_V4, Duration::from_secs(1)).unwrap();
    bd.wait_for_route(CP_V6, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()));
    ping_from(&a, CP_V4, REF_V4);
    ping_from(&b, REF_V6, CP_V6);
    eprintln!(
        "bad_babel_packets_are_counted_not_fatal took {:?}",
        t0.elapsed()
    );
}

/// Connects A's `va` to the switch namespace's bridge through a new veth (`sw_port` on the
/// switch side) and waits for its link-local address.
fn plug_va(a: &Netns, sw: &Netns, sw_port: &str) {
    veth(a, "va", sw, sw_port).unwrap();
    sw.exec(&["ip", "link", "set", sw_port, "master", "br0"])
        .unwrap();
    sw.link_up(sw_port).unwrap();
    a.link_local("va").unwrap();
}

/// Whether isthmus-cp has a neighbour on `va`.
fn has_va_neighbour(cp: &IsthmusCp<'_>) -> bool {
    cp_neighbours(cp).iter().any(|(link, _, _)| link == "va")
}

fn wait_no_va_neighbour(cp: &IsthmusCp<'_>, what: &str) {
    poll(cp, &format!("{what}: no neighbour on va"), || {
        !has_va_neighbour(cp)
    });
}

/// Mesh interfaces are followed through the kernel's link and address events, as babeld and
/// BIRD follow theirs: a configured interface absent at start is waited for (isthmus-cp does
/// not exit), one deleted and created again under babeld traffic gets its socket and hellos
/// back on its new index, and one taken down and up resumes. A reaches babeld (in B) through
/// a bridge in a third namespace, so A's interface can go without taking B's with it.
#[test]
fn interfaces_that_come_and_go() {
    init();
    let lab = Lab::new().unwrap();
    let a = Netns::new("cpia").unwrap();
    let b = Netns::new("cpib").unwrap();
    let sw = Netns::new("cpis").unwrap();
    sw.exec(&["ip", "link", "add", "br0", "type", "bridge"])
        .unwrap();
    sw.link_up("br0").unwrap();
    veth(&b, "vb", &sw, "pb").unwrap();
    sw.exec(&["ip", "link", "set", "pb", "master", "br0"])
        .unwrap();
    sw.link_up("pb").unwrap();
    add_stub_iface(
        &a,
        "st0",
        &[&format!("{CP_V4}/32"), &format!("{CP_V6}/128")],
    )
    .unwrap();
    add_stub_iface(
        &b,
        "st0",
        &[&format!("{REF_V4}/32"), &format!("{REF_V6}/128")],
    )
    .unwrap();
    b.link_local("vb").unwrap();
    let bd = Babeld::start(&b, &lab, "b", &["vb"], &babeld_conf()).unwrap();

    // 1. va does not exist yet: isthmus-cp starts, says it waits, and keeps running.
    let cp = IsthmusCp::start(&a, &lab, "a", &cp_config("")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(cp.alive(), "isthmus-cp exited:\n{}", cp.diagnostics());
    assert!(
        read_log(cp.log_path()).contains("waiting for the interface"),
        "{}",
        cp.diagnostics()
    );
    plug_va(&a, &sw, "pa1");
    let t = wait_cp_route(&cp, &a, REF_V4);
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    eprintln!("va created after the start: babeld's route installed {t:?} later");

    // 2. Deleted and created again (a new index) while babeld keeps talking.
    let old = ifindex(&a, "va");
    a.exec(&["ip", "link", "del", "va"]).unwrap();
    wait_no_va_neighbour(&cp, "va deleted");
    wait_for_no_route(&a, REF_V4, CONVERGE).unwrap();
    plug_va(&a, &sw, "pa2");
    assert_ne!(ifindex(&a, "va"), old, "the new va should have a new index");
    let t = wait_cp_route(&cp, &a, REF_V4);
    wait_cp_route(&cp, &a, REF_V6);
    eprintln!("va deleted and created again: babeld's routes back {t:?} later");
    ping_from(&a, CP_V4, REF_V4);

    // 3. Down (the kernel takes its IPv6 addresses) and up again.
    a.exec(&["ip", "link", "set", "va", "down"]).unwrap();
    wait_no_va_neighbour(&cp, "va down");
    a.link_up("va").unwrap();
    a.link_local("va").unwrap();
    let t = wait_cp_route(&cp, &a, REF_V4);
    eprintln!("va down and up: babeld's route back {t:?} later");
    // Both directions of the IPv6 path before the ping: isthmus-cp's route to babeld's
    // prefix and babeld's back (it too lost the neighbour while va was down).
    wait_cp_route(&cp, &a, REF_V6);
    bd.wait_for_route(CP_V6, CONVERGE).unwrap();
    // Twice in CI (of many runs) the path lost 1 or 2 of 5 pings just after both routes
    // were there (a flap as the links settle, not yet explained): what this step shows is
    // that the link comes back, so a clean run of 5 within 10 s is asked here.
    ping_clean_within(&a, CP_V6, REF_V6, Duration::from_secs(10));
    assert!(cp.alive() && bd.alive());
}

/// `SIGHUP` makes isthmus-cp read its file again and apply the difference without a flap: a
/// prefix added to `originate` reaches babeld, one removed is retracted there, a new `deny`
/// filter drops the route it names (isthmus-cp asks for the table again, and the denied
/// update retracts the route), an invalid file is refused with its `FILE:LINE: KEY` error;
/// meanwhile a 10 ms ping over the route that every version of the file keeps loses nothing.
/// Writes `text` as isthmus-cp's configuration file and sends it SIGHUP.
fn sighup_with(cp: &IsthmusCp<'_>, text: &str) {
    std::fs::write(cp.conf_path(), text).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &cp.pid().to_string()])
        .status()
        .unwrap();
}

#[test]
fn sighup_reloads_isthmus_cp_without_a_flap() {
    let (lab, a, b, _) = lab_pair("r", false);
    let (bd, cp) = babeld_and_cp_converged(&a, &b, &lab);
    let probe = PingProbe::start_from(&a, Some(CP_V4), REF_V4, 10).unwrap();
    probe.wait_replies(20, Duration::from_secs(5)).unwrap();
    let hup = |text: &str| sighup_with(&cp, text);
    let reloads = || read_log(cp.log_path()).matches("reloaded").count();

    // 1. One more originated prefix.
    let extra = "10.74.1.99/32";
    hup(&cp_config("").replace(
        &format!("originate = [\"{CP_V4}/32\""),
        &format!("originate = [\"{extra}\", \"{CP_V4}/32\""),
    ));
    bd.wait_for_route("10.74.1.99", CONVERGE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()));
    assert_eq!(reloads(), 1, "{}", cp.diagnostics());

    // 2. Back to the first file: babeld loses the prefix; and a filter that denies babeld's
    //    IPv6 prefix, which goes.
    let deny = format!(
        "[[babel.filter]]\ndirection = \"in\"\nprefix = \"{REF_V6}/128\"\naction = \"deny\"\n"
    );
    hup(&format!("{}\n{deny}", cp_config("")));
    let gone = Instant::now();
    wait_for_no_route(&b, "10.74.1.99", CONVERGE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()));
    wait_for_no_route(&a, REF_V6, CONVERGE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()));
    eprintln!(
        "reload: a withdrawn prefix and a newly denied route gone after {:?}",
        gone.elapsed()
    );

    // 3. An invalid file: refused, named by file, line and key; the running state stays.
    hup(&cp_config("").replace("originate = [", "originate = [\"10.74.1.0/33\", "));
    poll(&cp, "the reload refused", || {
        read_log(cp.log_path()).contains("reload refused")
    });
    let log = read_log(cp.log_path());
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        line.contains(&format!("{}:", cp.conf_path().display())) && line.contains("originate"),
        "{line}"
    );
    assert!(cp.alive());
    ping_from(&a, CP_V4, REF_V4);

    let r = probe.finish().unwrap();
    eprintln!(
        "ping over the kept route across three reloads: {} sent, {} lost, longest gap {:?}",
        r.sent,
        r.lost(),
        r.longest_gap
    );
    assert_eq!(r.lost(), 0, "{}\n{}", r.output, cp.diagnostics());
}

/// babeld's `unicast` option on both sides (`unicast = true` in isthmus-cp's class table):
/// hellos still go to ff02::1:6, everything else to each neighbour by unicast; the routes are
/// learned both ways as before.
#[test]
fn cp_and_babeld_with_unicast() {
    init();
    let lab = Lab::new().unwrap();
    let a = std::sync::Arc::new(Netns::new("cpua").unwrap());
    let b = Netns::new("cpub").unwrap();
    let ll_b = setup(&a, &b, false);
    let ll_a = a.link_local("va").unwrap();
    let cap = isthmus_lab::Capture::start(&a, &lab, "udp port 6696").unwrap();
    let bd = Babeld::start(
        &b,
        &lab,
        "b",
        &[],
        &format!(
            "interface vb hello-interval 1 unicast true\n{}",
            babeld_conf()
        ),
    )
    .unwrap();
    let cfg = cp_config("").replace(
        "[babel.wired]\nhello_interval = 1\n",
        "[babel.wired]\nhello_interval = 1\nunicast = true\n",
    );
    assert!(cfg.contains("unicast = true"), "{cfg}");
    let cp = IsthmusCp::start(&a, &lab, "a", &cfg).unwrap();
    wait_cp_route(&cp, &a, REF_V4);
    wait_cp_route(&cp, &a, REF_V6);
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    bd.wait_for_route(CP_V6, CONVERGE).unwrap();
    ping_from(&a, CP_V4, REF_V4);
    let sent: Vec<_> = cap
        .stop()
        .unwrap()
        .into_iter()
        .filter(|d| d.src.ip().to_string() == ll_a)
        .collect();
    let to = |dst: &str| {
        sent.iter()
            .filter(|d| d.dst.ip().to_string() == dst)
            .count()
    };
    let (multicast, unicast) = (to("ff02::1:6"), to(&ll_b));
    eprintln!("isthmus-cp sent {multicast} packets to ff02::1:6 and {unicast} to babeld");
    assert!(unicast > 0 && multicast > 0, "{multicast} / {unicast}");
    // Multicast packets carry a hello and nothing else: the body (its length at bytes 2-3)
    // is one TLV of type 4.
    for d in sent
        .iter()
        .filter(|d| d.dst.ip().to_string() == "ff02::1:6")
    {
        let p = &d.payload;
        let body = usize::from(u16::from_be_bytes([p[2], p[3]]));
        assert!(
            p.len() >= 6 && p[4] == 4 && body == 2 + usize::from(p[5]),
            "a multicast packet that is not a lone hello: {p:?}"
        );
    }
}

/// MAC keys (RFC 8967) as ASCII text: BIRD takes a password string, babeld and isthmus-cp
/// the same bytes in hex. 64 bytes for HMAC-SHA256 (babeld takes only that length), 32 for
/// BLAKE2s-128.
const SHA_KEY: &str = "isthmus-lab HMAC-SHA256 key for the Babel MAC interop tests.....";
const B2_KEY: &str = "isthmus-lab BLAKE2s-128 key: 32B";

/// `cp_config("")` with `[[babel.key]]`s for `keys` (id, algorithm, text; each written
/// 0600 to a file in the lab directory) and the interface `va` using all of them.
fn cp_config_with_keys(lab: &Lab, keys: &[(&str, &str, &str)]) -> String {
    let ids: Vec<String> = keys.iter().map(|(id, _, _)| format!("\"{id}\"")).collect();
    let mut c = format!("{}keys = [{}]\n", cp_config(""), ids.join(", "));
    for (id, algorithm, text) in keys {
        c.push_str(&babel_key_table(lab, id, algorithm, text.as_bytes()));
    }
    c
}

/// babeld's key `sha` on `vb`, with `text` as its value.
fn babeld_conf_with_key(text: &str) -> String {
    format!(
        "key id sha type hmac-sha256 value {}\ninterface vb key sha\n{}",
        hex(text.as_bytes()),
        babeld_conf()
    )
}

/// isthmus-cp's authentication counter `name` (`isthmus_babel_auth_refused_total` by
/// reason, or `isthmus_babel_auth_challenges_total` by event).
fn auth_count(cp: &IsthmusCp<'_>, name: &str, label: (&str, &str)) -> f64 {
    cp.metrics().unwrap().get(name, &[label])
}

fn refused(cp: &IsthmusCp<'_>, reason: &str) -> f64 {
    auth_count(cp, "isthmus_babel_auth_refused_total", ("reason", reason))
}

/// Waits until isthmus-cp has refused more than `before` packets for `reason`.
fn wait_refused(cp: &IsthmusCp<'_>, reason: &str, before: f64) -> f64 {
    poll(cp, &format!("a packet refused for {reason}"), || {
        refused(cp, reason) > before
    });
    refused(cp, reason)
}

/// HMAC with babeld 1.12, both ways: isthmus-cp signs with two keys (a BLAKE2s-128 key
/// babeld does not have, as in a rollover, and babeld's HMAC-SHA256 key) and verifies
/// babeld's MACs; each challenges the other. A replayed babeld packet is refused as a
/// replay and changes nothing; babeld restarted with a wrong key is refused (counted) and
/// loses the routes both ways.
#[test]
fn cp_and_babeld_with_hmac() {
    let t0 = Instant::now();
    let (lab, a, b, ll_b) = lab_pair("h", false);
    let bd = Babeld::start(&b, &lab, "b", &["vb"], &babeld_conf_with_key(SHA_KEY)).unwrap();
    let keys = [
        ("b2", "blake2s128", B2_KEY),
        ("sha", "hmac-sha256", SHA_KEY),
    ];
    let cp = IsthmusCp::start(&a, &lab, "a", &cp_config_with_keys(&lab, &keys)).unwrap();
    let t4 = wait_cp_route(&cp, &a, REF_V4);
    wait_cp_route(&cp, &a, REF_V6);
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    bd.wait_for_route(CP_V6, CONVERGE).unwrap();
    eprintln!("HMAC with babeld: routes both ways, isthmus-cp's after {t4:?}");
    let challenged = auth_count(
        &cp,
        "isthmus_babel_auth_challenges_total",
        ("event", "answered"),
    );
    assert!(challenged >= 1.0, "{}", cp.diagnostics());
    for why in ["bad_mac", "no_mac", "replay"] {
        assert_eq!(refused(&cp, why), 0.0, "{why}:\n{}", cp.diagnostics());
    }
    ping_from(&a, CP_V4, REF_V4);
    ping_from(&b, REF_V6, CP_V6);
    assert!(cp.status("babel").unwrap().contains("challenges answered"));

    // Replay: babeld's multicast packets, captured beside isthmus-cp in A, sent again from
    // babeld's address in B.
    let tool = lab_tool_path().unwrap();
    let tool = tool.to_string_lossy().into_owned();
    let idx_a = ifindex(&a, "va").to_string();
    let captured = a
        .exec(&[&tool, "babel-capture", "va", &idx_a, "3", "10"])
        .unwrap();
    let packets: Vec<Vec<u8>> = captured
        .lines()
        .map(|l| {
            let (src, hex) = l.split_once(' ').unwrap();
            assert_eq!(src, ll_b, "{l}");
            isthmus_dataplane::keys::decode_hex(hex).unwrap()
        })
        .collect();
    assert_eq!(packets.len(), 3);
    let before = refused(&cp, "replay");
    let idx_b = ifindex(&b, "vb");
    udp_send(
        &b,
        Some(&format!("[{ll_b}%{idx_b}]:0")),
        &format!("[ff02::1:6%{idx_b}]:6696"),
        &packets,
    );
    let after = wait_refused(&cp, "replay", before);
    std::thread::sleep(Duration::from_millis(300));
    let after = after.max(refused(&cp, "replay"));
    assert_eq!(after - before, 3.0, "{}", cp.diagnostics());
    assert_eq!(refused(&cp, "bad_mac"), 0.0);
    assert_eq!(cp_neighbours(&cp).len(), 1, "{}", cp.diagnostics());

    // Rollover by reload: the BLAKE2s key goes, then comes back; a ping over babeld's route
    // loses nothing and the neighbour stays.
    let probe = PingProbe::start_from(&a, Some(CP_V4), REF_V4, 10).unwrap();
    probe.wait_replies(10, Duration::from_secs(5)).unwrap();
    for keys in [&keys[1..], &keys[..]] {
        let n = read_log(cp.log_path()).matches("reloaded").count();
        sighup_with(&cp, &cp_config_with_keys(&lab, keys));
        poll(&cp, "the reload", || {
            read_log(cp.log_path()).matches("reloaded").count() > n
        });
        std::thread::sleep(Duration::from_secs(2));
    }
    let r = probe.finish().unwrap();
    eprintln!(
        "key rollover by reload: {} pings, {} lost",
        r.sent,
        r.lost()
    );
    assert_eq!(r.lost(), 0, "{}\n{}", r.output, cp.diagnostics());
    assert_eq!(cp_neighbours(&cp).len(), 1, "{}", cp.diagnostics());
    assert_eq!(refused(&cp, "bad_mac"), 0.0);
    let log = read_log(cp.log_path());
    assert_eq!(
        log.matches("interface's Babel parameters changed").count(),
        2,
        "{log}"
    );

    // babeld restarts (a new index, its counter from 0): challenged again, and back.
    let answered = |cp: &IsthmusCp<'_>| {
        auth_count(
            cp,
            "isthmus_babel_auth_challenges_total",
            ("event", "answered"),
        )
    };
    let before = answered(&cp);
    drop(bd);
    let bd = Babeld::start(&b, &lab, "b", &["vb"], &babeld_conf_with_key(SHA_KEY)).unwrap();
    let restarted = Instant::now();
    let challenged = poll(&cp, "a new challenge answered", || answered(&cp) > before);
    bd.wait_for_route(CP_V4, CONVERGE).unwrap();
    eprintln!(
        "babeld restarted: it answered a new challenge {challenged:?} and had isthmus-cp's \
         route {:?} after its start",
        restarted.elapsed()
    );
    wait_cp_route(&cp, &a, REF_V4);

    // babeld comes back with another key: its packets are refused, and the routes go both
    // ways once the neighbours time out.
    drop(bd);
    let before = refused(&cp, "bad_mac");
    let wrong = SHA_KEY.replace("key", "KEY");
    let bd = Babeld::start(&b, &lab, "b", &["vb"], &babeld_conf_with_key(&wrong)).unwrap();
    wait_refused(&cp, "bad_mac", before);
    wait_for_no_route(&a, REF_V4, CONVERGE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()));
    std::thread::sleep(Duration::from_secs(3));
    let routes = bd.dump().unwrap();
    assert!(
        !routes.iter().any(|r| r.prefix.starts_with(CP_V4)),
        "babeld took a route from a peer with another key: {routes:#?}"
    );
    // babeld refused ours too: no neighbour at all (it makes one only of a packet that
    // passed its MAC check).
    let n = bd.neighbours().unwrap();
    assert!(n.is_empty(), "{n:#?}");
    assert!(cp.alive() && bd.alive());
    eprintln!("cp_and_babeld_with_hmac took {:?}", t0.elapsed());
}

/// MAC authentication with BIRD 2 (`authentication mac`), both ways: BIRD signs with two
/// passwords (HMAC-SHA256 and BLAKE2s-128), isthmus-cp has only the BLAKE2s one. Then BIRD
/// restarted with other passwords is refused (counted) and the routes go.
#[test]
fn cp_and_bird_with_mac() {
    let t0 = Instant::now();
    let (lab, a, b, _) = lab_pair("m", true);
    let bird_conf = |sha: &str, b2: &str| {
        format!(
            "protocol direct {{ ipv4; ipv6; interface \"st0\"; }}\n\
             protocol babel babel1 {{\n  ipv4 {{ import all; export all; }};\n  \
             ipv6 {{ import all; export all; }};\n  interface \"vb\" {{\n    type wired;\n    \
             hello interval 1 s;\n    authentication mac;\n    \
             password \"{sha}\" {{ algorithm hmac sha256; }};\n    \
             password \"{b2}\" {{ algorithm blake2s128; }};\n  }};\n}}\n"
        )
    };
    let bird = Bird::start(&b, &lab, "b", &["vb"], &bird_conf(SHA_KEY, B2_KEY)).unwrap();
    let keys = [("b2", "blake2s128", B2_KEY)];
    let cp = IsthmusCp::start(&a, &lab, "a", &cp_config_with_keys(&lab, &keys)).unwrap();
    let t4 = wait_cp_route(&cp, &a, REF_V4);
    wait_cp_route(&cp, &a, REF_V6);
    bird.wait_babel_route(&format!("{CP_V4}/32"), CONVERGE)
        .unwrap();
    bird.wait_babel_route(&format!("{CP_V6}/128"), CONVERGE)
        .unwrap();
    eprintln!("MAC with BIRD: routes both ways, isthmus-cp's after {t4:?}");
    assert!(
        auth_count(
            &cp,
            "isthmus_babel_auth_challenges_total",
            ("event", "answered")
        ) >= 1.0
    );
    assert_eq!(refused(&cp, "bad_mac"), 0.0, "{}", cp.diagnostics());
    ping_from(&a, CP_V4, REF_V4);
    ping_from(&b, REF_V6, CP_V6);

    drop(bird);
    let before = refused(&cp, "bad_mac");
    let wrong = (SHA_KEY.to_uppercase(), B2_KEY.to_uppercase());
    let bird = Bird::start(&b, &lab, "b", &["vb"], &bird_conf(&wrong.0, &wrong.1)).unwrap();
    wait_refused(&cp, "bad_mac", before);
    wait_for_no_route(&a, REF_V4, CONVERGE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnostics()));
    std::thread::sleep(Duration::from_secs(3));
    let routes = bird.routes().unwrap();
    assert!(
        !routes.iter().any(|r| r.prefix.starts_with(CP_V4)),
        "BIRD took a route from a peer with another key: {routes:#?}"
    );
    // BIRD refused ours too: no neighbour (it makes one only of an authenticated packet).
    assert_eq!(bird.babel_neighbours().unwrap(), Vec::<String>::new());
    assert!(cp.alive() && bird.alive());
    eprintln!("cp_and_bird_with_mac took {:?}", t0.elapsed());
}
