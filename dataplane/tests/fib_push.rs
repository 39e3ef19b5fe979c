//! End to end: a control client pushes a 100,000-route `FibSnapshot` to a running device over
//! the real control socket, then one-route `FibUpdate`s; prints how long each took until the
//! routes were live (the server answers `Ok` after publishing the new FIB) and until
//! `GetRoutes` showed them.
//!
//! Needs root (a TUN device); runs in a private network namespace of its own (only this
//! test's threads enter it, and it disappears with them). Run in release for real numbers:
//! `cargo test --release -p isthmus-dataplane --test fib_push -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isthmus_dataplane::ctl::proto::{CtlRoute, Msg};
use isthmus_dataplane::ctl::server::CtlClient;
use isthmus_dataplane::device::{serve_ctl, Device, DeviceOptions};
use isthmus_dataplane::fib::{RouteOrigin, Via};
use isthmus_dataplane::forward::PeerSpec;
use isthmus_dataplane::keys::Key;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUTES: usize = 100_000;
const PEERS: u8 = 4;

fn peer_key(i: u8) -> Key {
    Key([i + 1; 32])
}

/// `n` distinct routes: IPv4 /16–/32 and IPv6 /32–/128, over the peers and Local.
fn routes(rng: &mut StdRng, n: usize) -> Vec<CtlRoute> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let prefix = if rng.gen_bool(0.6) {
            let len = rng.gen_range(16..=32);
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(rng.gen::<u32>()), len)
                    .unwrap()
                    .trunc(),
            )
        } else {
            let len = rng.gen_range(32..=128);
            let a = (rng.gen::<u128>() >> 3) | (1u128 << 125);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc())
        };
        if !seen.insert(prefix) {
            continue;
        }
        let next_hop = if rng.gen_range(0..100) < 5 {
            Via::Local
        } else {
            Via::Peer(peer_key(rng.gen_range(0..PEERS)))
        };
        out.push(CtlRoute { prefix, next_hop });
    }
    out
}

fn control_routes(c: &mut CtlClient) -> HashMap<IpNet, Via> {
    let Msg::Routes(rs) = c.request(&Msg::GetRoutes).unwrap() else {
        panic!("GetRoutes answered with something else")
    };
    rs.into_iter()
        .filter(|r| r.origin == RouteOrigin::Control)
        .map(|r| (r.prefix, r.next_hop))
        .collect()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[test]
fn snapshot_of_100k_routes_over_the_control_socket() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a TUN device");
        return;
    }
    // A private network namespace for this thread and the device threads it starts.
    // SAFETY: unshare(CLONE_NEWNET) only changes this thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let dev = Device::start(
        "istfib0",
        DeviceOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("start device");
    for i in 0..PEERS {
        let mut spec = PeerSpec {
            public_key: peer_key(i),
            ..Default::default()
        };
        spec.settings.allowed_ips = vec![format!("10.200.{i}.0/24").parse().unwrap()];
        dev.core.upsert_peer(spec).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("isthmus-fib-push-{}", std::process::id()));
    let path = dir.join("istfib0.ctl");
    let server = serve_ctl(&dev, &path).expect("serve ctl");
    let mut c = CtlClient::connect(&path, "fib-push-test").unwrap();

    let mut rng = StdRng::seed_from_u64(0x05ee_df1b);
    let snap = routes(&mut rng, ROUTES);
    let msg = Msg::FibSnapshot {
        routes: snap.clone(),
    };
    let t = Instant::now();
    assert_eq!(c.request(&msg).unwrap(), Msg::Ok);
    let live = ms(t);
    let fib = dev.core.fib();
    assert_eq!(fib.len_v4() + fib.len_v6(), ROUTES + usize::from(PEERS));
    let shown = control_routes(&mut c);
    let visible = ms(t);
    assert_eq!(shown.len(), ROUTES);
    for r in &snap {
        assert_eq!(shown.get(&r.prefix), Some(&r.next_hop), "{}", r.prefix);
    }
    eprintln!(
        "fib_push e2e: FibSnapshot of {ROUTES} routes: Ok (FIB live) after {live:.1} ms, \
         GetRoutes showed them after {visible:.1} ms"
    );

    // A second, different snapshot replacing the first.
    let snap2 = routes(&mut rng, ROUTES);
    let t = Instant::now();
    assert_eq!(
        c.request(&Msg::FibSnapshot {
            routes: snap2.clone()
        })
        .unwrap(),
        Msg::Ok
    );
    let live2 = ms(t);
    let shown = control_routes(&mut c);
    assert_eq!(shown.len(), snap2.len());
    eprintln!("fib_push e2e: replacing snapshot of {ROUTES} routes: Ok after {live2:.1} ms");

    // One-route updates: add, then withdraw, each timed from request to Ok.
    let extra = routes(&mut rng, 20);
    let mut times = Vec::new();
    for r in &extra {
        let t = Instant::now();
        assert_eq!(
            c.request(&Msg::FibUpdate {
                add: vec![*r],
                remove: vec![],
            })
            .unwrap(),
            Msg::Ok
        );
        times.push(ms(t));
        let want = dev.core.peers().resolve(&r.next_hop).unwrap();
        assert_eq!(
            dev.core.fib().lookup(r.prefix.network()),
            Some(want),
            "{} not live",
            r.prefix
        );
        let t = Instant::now();
        assert_eq!(
            c.request(&Msg::FibUpdate {
                add: vec![],
                remove: vec![r.prefix],
            })
            .unwrap(),
            Msg::Ok
        );
        times.push(ms(t));
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    eprintln!(
        "fib_push e2e: one-route FibUpdate in a {ROUTES}-route table: first {first:.3} ms, \
         median {:.3} ms, max {:.3} ms ({} updates)",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    let shown = control_routes(&mut c);
    assert_eq!(shown.len(), snap2.len());

    drop(c);
    drop(server);
    dev.shutdown();
    dev.join();
    let _ = std::fs::remove_dir_all(&dir);
}
