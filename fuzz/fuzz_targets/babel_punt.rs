#![no_main]
//! Punted packets (IPv6/UDP from a tunnel, as the data plane hands them to isthmus-cp) and
//! the Babel router fed with them: `unwrap` never panics, and neither does the router, whatever
//! the payload, including on the timers that follow. A second link has a MAC key: the raw
//! payload exercises the trailer walk, and the payload sealed with the key (so that it passes
//! the MAC) the packet-counter and challenge logic of RFC 8967.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use isthmus_controlplane::babel::auth::seal;
use isthmus_controlplane::babel::{
    Algorithm, Config, LinkConfig, LinkId, LinkParams, MacKey, Router,
};
use isthmus_controlplane::daemon::unwrap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut r = Router::new(Config::new([2, 0, 0, 0, 0, 0, 0, 1]), now);
    let key = MacKey::new("k", Algorithm::Blake2s128, vec![7; 32]).unwrap();
    for (id, keys) in [(0, vec![]), (1, vec![key.clone()])] {
        r.add_link(
            LinkId(id),
            LinkConfig {
                name: format!("fuzz{id}"),
                params: LinkParams::trunk(),
                address: "fe80::1".parse().unwrap(),
                ipv4: None,
                v4_via_v6: true,
                max_packet: 1400,
                keys,
            },
            now,
        );
    }
    let payload = match unwrap(data) {
        Ok((src, payload)) => {
            r.handle(now, LinkId(0), IpAddr::V6(src), payload);
            payload
        }
        Err(_) => data,
    };
    // The raw bytes as a Babel packet from a link-local neighbour, twice, then time passes.
    let from: IpAddr = "fe80::2".parse().unwrap();
    r.handle(now, LinkId(0), from, payload);
    r.handle(now, LinkId(0), from, payload);
    r.handle(now, LinkId(1), from, payload);
    if payload.len() >= 4 && payload.len() < 60000 {
        let mut sealed = payload.to_vec();
        let body = (payload.len() - 4) as u16;
        sealed[2..4].copy_from_slice(&body.to_be_bytes());
        for (counter, to) in [(1, "ff02::1:6"), (2, "fe80::1"), (2, "fe80::1")] {
            let mut p = sealed.clone();
            let to = to.parse().unwrap();
            seal(
                &mut p,
                counter,
                &[1; 8],
                std::slice::from_ref(&key),
                "fe80::2".parse().unwrap(),
                to,
            );
            r.handle(now, LinkId(1), from, &p);
        }
    }
    for s in [1, 5, 30, 300] {
        let t = now + Duration::from_secs(s);
        r.handle_timeout(t);
        while r.poll_transmit().is_some() {}
        while r.poll_event().is_some() {}
        let _ = r.routes(t);
        let _ = r.neighbours(t);
    }
});
