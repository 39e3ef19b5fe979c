//! The router's bounded tables under floods from made-up neighbours, driven through
//! [`Router::handle`] as a mesh interface would feed it: each table stops at its bound, the
//! refusals are counted, and what the node had keeps working.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv6Net};

use super::auth::INDEX_LEN;
use super::packet::{Msg, RouterId, Writer, INFINITY, MULTICAST};
use super::*;

const OURS: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const MAX_PACKET: usize = 1400;

fn link_cfg(name: &str, keys: Vec<MacKey>) -> LinkConfig {
    LinkConfig {
        name: name.into(),
        params: LinkParams::wired(),
        address: OURS,
        ipv4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        v4_via_v6: false,
        max_packet: MAX_PACKET,
        keys,
    }
}

/// A router with `links` links (ids 0..links) and the given bounds.
fn router(links: u32, limits: Limits, now: Instant) -> Router {
    let mut cfg = Config::new([2, 0, 0, 0, 0, 0, 0, 0xaa]);
    cfg.limits = limits;
    let mut r = Router::new(cfg, now);
    for l in 0..links {
        r.add_link(LinkId(l), link_cfg(&format!("eth{l}"), Vec::new()), now);
    }
    r
}

/// Neighbour `i`'s link-local address.
fn addr(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xbad, (i >> 16) as u16, i as u16)
}

/// `msgs` as packets of at most [`MAX_PACKET`] bytes.
fn packets(msgs: &[Msg]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = Writer::new(MAX_PACKET);
    for m in msgs {
        if !w.push(m) {
            out.push(std::mem::replace(&mut w, Writer::new(MAX_PACKET)).finish());
            assert!(w.push(m));
        }
    }
    if !w.is_empty() {
        out.push(w.finish());
    }
    out
}

fn hello(seqno: u16) -> Msg {
    Msg::Hello {
        unicast: false,
        seqno,
        interval: 400,
        timestamp: None,
    }
}

fn ihu() -> Msg {
    Msg::Ihu {
        rxcost: 96,
        interval: 1200,
        address: Some(IpAddr::V6(OURS)),
        timestamp: None,
    }
}

/// Prefix `k`: a /48 in 2001:db8::/32.
fn prefix(k: u32) -> IpNet {
    let a = Ipv6Addr::new(0x2001, 0xdb8, k as u16, 0, 0, 0, 0, 0);
    IpNet::V6(Ipv6Net::new(a, 48).unwrap())
}

fn update(p: IpNet, seqno: u16, metric: u16, router_id: RouterId) -> Msg {
    Msg::Update {
        prefix: Some(p),
        v4_via_v6: false,
        interval: 400,
        seqno,
        metric,
        router_id,
        next_hop: None,
    }
}

fn send(r: &mut Router, now: Instant, link: u32, from: Ipv6Addr, msgs: &[Msg]) {
    for p in packets(msgs) {
        r.handle(now, LinkId(link), IpAddr::V6(from), &p);
    }
}

/// Makes `from` a neighbour on `link` that we hear and that hears us (a finite cost).
fn befriend(r: &mut Router, now: Instant, link: u32, from: Ipv6Addr) {
    send(r, now, link, from, &[hello(1)]);
    send(r, now, link, from, &[hello(2), ihu()]);
}

fn on_link(r: &Router, now: Instant, link: u32) -> usize {
    let n = r.neighbours(now);
    n.iter().filter(|n| n.link == LinkId(link)).count()
}

fn usage(r: &Router, t: Table) -> usize {
    r.table_usage()[t as usize].1
}

/// Every transmitted update, drained: (prefix, metric).
fn sent_updates(r: &mut Router) -> Vec<(IpNet, u16)> {
    let mut v = Vec::new();
    while let Some(t) = r.poll_transmit() {
        let (msgs, _) = packet::parse(&t.bytes).expect("ours parse");
        for m in msgs {
            if let Msg::Update {
                prefix: Some(p),
                metric,
                ..
            } = m
            {
                v.push((p, metric));
            }
        }
    }
    v
}

#[test]
fn a_hello_flood_fills_the_neighbour_tables_to_their_bounds_only() {
    let t0 = Instant::now();
    let limits = Limits {
        neighbours: 100,
        neighbours_per_link: 40,
        ..Limits::default()
    };
    let mut r = router(4, limits, t0);
    // A real neighbour, heard before the flood, with a route.
    let real = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
    befriend(&mut r, t0, 3, real);
    send(&mut r, t0, 3, real, &[update(prefix(1), 1, 0, [9; 8])]);
    assert_eq!(r.selected().count(), 1);
    // 5,000 made-up neighbours (50 times the bound), each a Hello: 2,000 on link 0, then
    // 3,000 on links 1 and 2 in turn.
    for i in 0..2000 {
        send(&mut r, t0, 0, addr(i), &[hello(1)]);
    }
    assert_eq!(on_link(&r, t0, 0), 40, "one link holds its bound");
    assert_eq!(r.counters().limit_reached(Table::LinkNeighbours), 1960);
    for i in 2000..5000 {
        send(&mut r, t0, 1 + i % 2, addr(i), &[hello(1)]);
    }
    let n = r.neighbours(t0);
    assert_eq!(n.len(), 100, "the table holds its bound");
    for l in 0..3 {
        assert!(on_link(&r, t0, l) <= 40, "link {l}: {}", on_link(&r, t0, l));
    }
    let c = r.counters();
    assert_eq!(c.limit_reached(Table::LinkNeighbours), 1960);
    assert_eq!(
        c.limit_reached(Table::Neighbours),
        3000 - 59,
        "every made-up neighbour not taken is counted"
    );
    assert_eq!(usage(&r, Table::Neighbours), 100);
    assert_eq!(usage(&r, Table::LinkNeighbours), 40);
    // The real neighbour keeps working: its hellos count, its route stays and follows it.
    let t1 = t0 + Duration::from_secs(4);
    send(
        &mut r,
        t1,
        3,
        real,
        &[hello(3), ihu(), update(prefix(1), 2, 10, [9; 8])],
    );
    r.handle_timeout(t1);
    let me = r.neighbours(t1).into_iter().find(|n| n.address == real);
    assert_eq!(me.map(|n| n.reach), Some(0xE000));
    let (_, sel) = r.selected().next().expect("its route");
    assert_eq!((sel.metric, sel.next_hop), (10 + 96, IpAddr::V6(real)));
    // The made-up ones go when their hellos stop; then there is room again.
    let t2 = t0 + Duration::from_secs(120);
    send(&mut r, t2, 3, real, &[hello(4), ihu()]);
    r.handle_timeout(t2);
    assert_eq!(r.neighbours(t2).len(), 1, "only the real one is left");
    send(&mut r, t2, 0, addr(9999), &[hello(1)]);
    assert_eq!(on_link(&r, t2, 0), 1);
}

#[test]
fn a_lowered_neighbour_bound_applies_to_new_neighbours() {
    let t0 = Instant::now();
    let mut r = router(1, Limits::default(), t0);
    for i in 0..30 {
        befriend(&mut r, t0, 0, addr(i));
    }
    r.set_limits(Limits {
        neighbours_per_link: 10,
        ..Limits::default()
    });
    assert_eq!(r.limits().neighbours_per_link, 10);
    send(&mut r, t0, 0, addr(100), &[hello(1)]);
    assert_eq!(on_link(&r, t0, 0), 30, "none evicted, the new one refused");
    assert_eq!(r.counters().limit_reached(Table::LinkNeighbours), 1);
    // Those it has are still heard.
    send(&mut r, t0, 0, addr(0), &[hello(3)]);
    assert_eq!(r.counters().limit_reached(Table::LinkNeighbours), 1);
}

#[test]
fn an_update_flood_fills_the_route_table_to_its_bound_only() {
    let t0 = Instant::now();
    let limits = Limits {
        routes: 1000,
        ..Limits::default()
    };
    let mut r = router(2, limits, t0);
    let (a, b) = (addr(1), addr(2));
    befriend(&mut r, t0, 0, a);
    befriend(&mut r, t0, 1, b);
    // A legitimate route first, from b.
    send(&mut r, t0, 1, b, &[update(prefix(0), 1, 0, [8; 8])]);
    // a announces 10,000 prefixes (10 times the bound).
    let flood: Vec<Msg> = (1..=10_000)
        .map(|k| update(prefix(k), 1, 0, [7; 8]))
        .collect();
    send(&mut r, t0, 0, a, &flood);
    assert_eq!(usage(&r, Table::Routes), 1000);
    assert_eq!(r.table_sizes().0, 1000, "one prefix per route here");
    assert_eq!(r.routes(t0).len(), 1000);
    assert_eq!(r.selected().count(), 1000);
    assert_eq!(r.counters().limit_reached(Table::Routes), 9001);
    // b's route still works: it is updated in place, full table or not.
    send(&mut r, t0, 1, b, &[update(prefix(0), 2, 50, [8; 8])]);
    let sel: HashMap<IpNet, Selected> = r.selected().collect();
    assert_eq!(sel[&prefix(0)].metric, 50 + 96);
    // b cannot add a second route (another neighbour's, for a prefix a holds).
    send(&mut r, t0, 1, b, &[update(prefix(5), 1, 0, [8; 8])]);
    assert_eq!(usage(&r, Table::Routes), 1000);
    assert_eq!(r.counters().limit_reached(Table::Routes), 9002);
    // A retraction of a refused prefix needs no room and changes nothing.
    send(
        &mut r,
        t0,
        0,
        a,
        &[update(prefix(5000), 1, INFINITY, [7; 8])],
    );
    assert_eq!(r.counters().limit_reached(Table::Routes), 9002);
    // a goes: its 999 routes with it, and the table has room again.
    r.link_down(LinkId(0), t0);
    assert_eq!(usage(&r, Table::Routes), 1);
    assert_eq!(r.routes(t0).len(), 1);
    send(&mut r, t0, 1, b, &[update(prefix(5), 1, 0, [8; 8])]);
    assert_eq!(usage(&r, Table::Routes), 2);
}

#[test]
fn expired_routes_leave_room() {
    let t0 = Instant::now();
    let limits = Limits {
        routes: 10,
        ..Limits::default()
    };
    let mut r = router(1, limits, t0);
    let a = addr(1);
    befriend(&mut r, t0, 0, a);
    let ups: Vec<Msg> = (0..20).map(|k| update(prefix(k), 1, 0, [7; 8])).collect();
    send(&mut r, t0, 0, a, &ups);
    assert_eq!(usage(&r, Table::Routes), 10);
    // Their hold time (3.5 update intervals of 4 s) passes while the neighbour stays: they
    // are retracted, then forgotten a minute later.
    let mut t = t0;
    for s in 1..=100 {
        t = t0 + Duration::from_secs(s);
        if s % 4 == 0 {
            send(&mut r, t, 0, a, &[hello(2 + (s / 4) as u16), ihu()]);
        }
        r.handle_timeout(t);
    }
    assert_eq!(usage(&r, Table::Routes), 0, "{:?}", r.routes(t));
    assert_eq!(r.routes(t).len(), 0);
    send(&mut r, t, 0, a, &ups[10..]);
    assert_eq!(usage(&r, Table::Routes), 10);
}

#[test]
fn a_full_source_table_keeps_learned_prefixes_from_being_advertised() {
    let t0 = Instant::now();
    let limits = Limits {
        sources: 50,
        ..Limits::default()
    };
    let mut r = router(2, limits, t0);
    let (a, b) = (addr(1), addr(2));
    befriend(&mut r, t0, 0, a);
    befriend(&mut r, t0, 1, b);
    r.originate("192.0.2.0/24".parse().unwrap(), 0, t0);
    let ups: Vec<Msg> = (0..200).map(|k| update(prefix(k), 1, 0, [7; 8])).collect();
    send(&mut r, t0, 0, a, &ups);
    assert_eq!(r.selected().count(), 200);
    let t1 = t0 + Duration::from_secs(1);
    r.handle_timeout(t1);
    let sent = sent_updates(&mut r);
    assert_eq!(r.table_sizes().1, 50, "the source table holds its bound");
    let learned: std::collections::HashSet<IpNet> = (sent.iter())
        .filter(|(p, m)| *m != INFINITY && p.addr() != "192.0.2.0".parse::<IpAddr>().unwrap())
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(
        learned.len(),
        49,
        "only the prefixes with a source are advertised (our own has the 50th)"
    );
    assert!(
        sent.iter()
            .any(|(p, m)| p.to_string() == "192.0.2.0/24" && *m == 0),
        "our own prefix goes out with a full source table"
    );
    assert!(r.counters().limit_reached(Table::Sources) >= 150);
    // The full dump a minute later: no growth, the same 50.
    r.handle_timeout(t0 + Duration::from_secs(30));
    let _ = sent_updates(&mut r);
    assert_eq!(r.table_sizes().1, 50);
}

#[test]
fn a_seqno_request_flood_fills_the_pending_table_to_its_bound_only() {
    let t0 = Instant::now();
    let limits = Limits {
        pending_requests: 10,
        ..Limits::default()
    };
    let mut r = router(2, limits, t0);
    let (a, b) = (addr(1), addr(2));
    befriend(&mut r, t0, 0, a);
    befriend(&mut r, t0, 1, b);
    let ups: Vec<Msg> = (0..100).map(|k| update(prefix(k), 1, 0, [7; 8])).collect();
    send(&mut r, t0, 0, a, &ups);
    let _ = sent_updates(&mut r);
    // b asks for newer seqnos of all 100, then of 100 made-up originators of one prefix:
    // each is to be forwarded to a.
    let mut reqs: Vec<Msg> = (0..100)
        .map(|k| Msg::SeqnoRequest {
            prefix: prefix(k),
            seqno: 2,
            hop_count: 10,
            router_id: [7; 8],
        })
        .collect();
    reqs.extend((0..100u8).map(|i| Msg::SeqnoRequest {
        prefix: prefix(0),
        seqno: 2,
        hop_count: 10,
        router_id: [i, 1, 1, 1, 1, 1, 1, 1],
    }));
    send(&mut r, t0, 1, b, &reqs);
    assert_eq!(r.pending_requests(), 10);
    assert_eq!(r.counters().requests_forwarded, 10);
    assert_eq!(r.counters().limit_reached(Table::Requests), 190);
    // Three seconds on, they are forgotten and new ones go.
    let t1 = t0 + Duration::from_secs(4);
    r.handle_timeout(t1);
    assert_eq!(r.pending_requests(), 0);
    send(&mut r, t1, 1, b, &reqs[50..51]);
    assert_eq!(r.pending_requests(), 1);
}

#[test]
fn retracting_a_flood_fills_the_resend_queue_to_its_bound_only() {
    let t0 = Instant::now();
    let limits = Limits {
        resend: 5,
        ..Limits::default()
    };
    let mut r = router(2, limits, t0);
    let (a, b) = (addr(1), addr(2));
    befriend(&mut r, t0, 0, a);
    befriend(&mut r, t0, 1, b);
    let ups: Vec<Msg> = (0..50).map(|k| update(prefix(k), 1, 0, [7; 8])).collect();
    send(&mut r, t0, 0, a, &ups);
    r.handle_timeout(t0 + Duration::from_millis(100));
    let _ = sent_updates(&mut r);
    // a retracts everything: 50 urgent retractions on each of the two links.
    let wildcard = Msg::Update {
        prefix: None,
        v4_via_v6: false,
        interval: 400,
        seqno: 0,
        metric: INFINITY,
        router_id: [0; 8],
        next_hop: None,
    };
    send(&mut r, t0, 0, a, &[wildcard]);
    assert_eq!(usage(&r, Table::Resends), 5);
    assert_eq!(r.counters().limit_reached(Table::Resends), 95);
    // Every retraction still goes out once.
    r.handle_timeout(t0 + Duration::from_millis(200));
    let sent = sent_updates(&mut r);
    let retracted: std::collections::HashSet<IpNet> = (sent.iter())
        .filter(|(_, m)| *m == INFINITY)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(retracted.len(), 50);
}

#[test]
fn keyed_links_track_a_bounded_number_of_packet_counters() {
    let t0 = Instant::now();
    let key = MacKey::new("k", Algorithm::HmacSha256, vec![7; 32]).unwrap();
    let mut cfg = Config::new([2, 0, 0, 0, 0, 0, 0, 0xaa]);
    cfg.limits.neighbours = 10;
    let mut r = Router::new(cfg, t0);
    r.add_link(LinkId(0), link_cfg("mesh0", vec![key.clone()]), t0);
    // 100 senders that know the key (a compromised or misconfigured mesh), each with its
    // own packet counter.
    for i in 0..100 {
        let mut p = packets(&[hello(1)]).remove(0);
        auth::seal(
            &mut p,
            1,
            &[i as u8; INDEX_LEN],
            std::slice::from_ref(&key),
            addr(i),
            MULTICAST,
        );
        r.handle(t0, LinkId(0), IpAddr::V6(addr(i)), &p);
    }
    assert_eq!(usage(&r, Table::AuthPeers), 10);
    assert_eq!(r.counters().limit_reached(Table::AuthPeers), 90);
}

#[test]
fn table_usage_names_each_table_with_its_bound() {
    let t0 = Instant::now();
    let r = router(1, Limits::default(), t0);
    let u = r.table_usage();
    for (i, (t, n, max)) in u.iter().enumerate() {
        assert_eq!(*t, Table::ALL[i]);
        assert_eq!(*n, 0);
        assert_eq!(*max, Limits::default().of(*t));
        assert!(t.key().starts_with("max_"));
    }
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "neighbours",
            "neighbours_per_link",
            "auth_peers",
            "routes",
            "sources",
            "pending_requests",
            "resend"
        ]
    );
}

/// Prefix `k` of a large flood: a /64 in 2001:db8::/32.
fn flood_prefix(k: u32) -> IpNet {
    let a = Ipv6Addr::new(0x2001, 0xdb8, (k >> 16) as u16, k as u16, 0, 0, 0, 0);
    IpNet::V6(Ipv6Net::new(a, 64).unwrap())
}

#[test]
fn a_mesh_flood_of_neighbours_and_a_million_prefixes_stays_within_every_bound() {
    let t0 = Instant::now();
    let limits = Limits {
        neighbours: 64,
        neighbours_per_link: 64,
        routes: 10_000,
        sources: 10_000,
        pending_requests: 100,
        resend: 1_000,
    };
    let mut r = router(2, limits, t0);
    // A real neighbour on the other link, with a route.
    let real = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
    befriend(&mut r, t0, 1, real);
    send(&mut r, t0, 1, real, &[update(prefix(1), 1, 0, [9; 8])]);
    // 2,000 made-up neighbours on link 0, each with a Hello, an IHU and updates for 500
    // prefixes of its own: a million prefixes in all.
    let mut t = t0;
    for i in 0..2000u32 {
        let mut msgs = vec![hello(1), ihu()];
        msgs.extend((0..500).map(|k| update(flood_prefix(i * 500 + k), 1, 0, [7; 8])));
        send(&mut r, t, 0, addr(i), &msgs);
        if i % 100 == 99 {
            t += Duration::from_millis(300);
            r.handle_timeout(t);
            while r.poll_transmit().is_some() {}
            while r.poll_event().is_some() {}
        }
        for (table, n, max) in r.table_usage() {
            assert!(n <= max, "{} holds {n} > {max}", table.as_str());
        }
    }
    let c = r.counters();
    assert_eq!(r.neighbours(t).len(), 64);
    assert_eq!(usage(&r, Table::Routes), 10_000);
    assert_eq!(r.routes(t).len(), 10_000);
    assert_eq!(c.limit_reached(Table::Neighbours), 2000 - 63);
    // The 63 neighbours taken announced 31,500 routes, of which 9,999 found room.
    assert_eq!(c.limit_reached(Table::Routes), 63 * 500 - 9_999);
    assert!(usage(&r, Table::Sources) <= 10_000);
    assert!(usage(&r, Table::Resends) <= 1_000);
    // The real neighbour and its route still work.
    let t1 = t + Duration::from_secs(1);
    send(
        &mut r,
        t1,
        1,
        real,
        &[hello(3), ihu(), update(prefix(1), 2, 20, [9; 8])],
    );
    let sel: HashMap<IpNet, Selected> = r.selected().collect();
    assert_eq!(sel[&prefix(1)].next_hop, IpAddr::V6(real));
    assert_eq!(sel[&prefix(1)].metric, 20 + 96);
}
