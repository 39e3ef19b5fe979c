#![no_main]
//! Punted packets (IPv6/UDP from a tunnel, as the data plane hands them to isthmus-cp) and
//! the Babel router fed with them: `unwrap` never panics, and neither does the router, whatever
//! the payload, including on the timers that follow.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use isthmus_controlplane::babel::{Config, LinkConfig, LinkId, LinkParams, Router};
use isthmus_controlplane::daemon::unwrap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut r = Router::new(Config::new([2, 0, 0, 0, 0, 0, 0, 1]), now);
    r.add_link(
        LinkId(0),
        LinkConfig {
            name: "fuzz".into(),
            params: LinkParams::trunk(),
            address: "fe80::1".parse().unwrap(),
            ipv4: None,
            v4_via_v6: true,
            max_packet: 1400,
        },
        now,
    );
    let payload = match unwrap(data) {
        Ok((src, payload)) => {
            r.handle(now, LinkId(0), IpAddr::V6(src), payload);
            payload
        }
        Err(_) => data,
    };
    // The raw bytes as a Babel packet from a link-local neighbour, twice, then time passes.
    r.handle(now, LinkId(0), "fe80::2".parse().unwrap(), payload);
    r.handle(now, LinkId(0), "fe80::2".parse().unwrap(), payload);
    for s in [1, 5, 30, 300] {
        let t = now + Duration::from_secs(s);
        r.handle_timeout(t);
        while r.poll_transmit().is_some() {}
        while r.poll_event().is_some() {}
        let _ = r.routes(t);
        let _ = r.neighbours(t);
    }
});
