//! The control plane over WireGuard trunks: `isthmus-dp` and `isthmus-cp` on gateways, talking
//! Babel to babeld through a wireguard-go tunnel, joining two babeld islands through a trunk,
//! failing over between two trunks, and surviving a `kill -9` of `isthmus-cp` without losing a
//! packet (non-stop forwarding). The islands are the lab's [`BabelIslands`].
//!
//! Every wait is bounded; on failure the error carries `isthmus-cp`'s log, `isthmusctl show
//! routes|neighbours|fib`, babeld's dump and the kernel's routes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::init;
use isthmus_dataplane::io::privs::Creds;
use isthmus_lab::babel_islands::{gateway_diagnostics, show_fib, BabelIslands, IslandsSpec};
use isthmus_lab::{
    babel_key_table, kernel_routes, veth, Babeld, ConfigPeer, IsthmusConfig, IsthmusCp, Keypair,
    Lab, Netns, PeerSpec, PingOpts, PingProbe, WgIface, WgImpl, WgSpec,
};

/// Bound on every convergence wait.
const CONVERGE: Duration = Duration::from_secs(25);

/// Polls `cond` every 50 ms for at most `timeout`; returns the time it took, or panics with
/// `diag()`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `ns` has a usable route to `dst` installed by `proto` whose device is `dev` (any
/// device when `None`).
fn has_route(ns: &Netns, proto: &str, dst: &str, dev: Option<&str>) -> bool {
    kernel_routes(ns, proto).is_ok_and(|rs| {
        rs.iter()
            .any(|r| r.dst == dst && r.usable() && dev.is_none_or(|d| r.dev.as_deref() == Some(d)))
    })
}

fn ping_ok(ns: &Netns, src: &str, dst: &str, diag: impl Fn() -> String) {
    if let Err(e) = ns.wait_ping(dst, Duration::from_secs(10)) {
        panic!("{e:#}\n{}", diag());
    }
    let opts = PingOpts {
        source: Some(src),
        interval: Some(0.05),
        ..Default::default()
    };
    let r = ns.ping_with(dst, 5, &opts).unwrap();
    assert_eq!(
        r.lost(),
        0,
        "ping {src} -> {dst} from {}:\n{}\n{}",
        ns.name(),
        r.output,
        diag()
    );
}

/// A namespace without duplicate address detection, so link-local addresses are usable at
/// once.
fn node(tag: &str) -> Arc<Netns> {
    let ns = Arc::new(Netns::new(tag).unwrap());
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
    ns
}

// ---------------------------------------------------------------------------------------------
// 1. A gateway and babeld over a wireguard-go tunnel
// ---------------------------------------------------------------------------------------------

/// Two nodes on a veth underlay (192.168.77.0/24), X with 10.10.0.1 and fd10::1 on its
/// loopback, Y with 10.20.0.1 and fd20::1.
fn two_nodes() -> (Arc<Netns>, Arc<Netns>) {
    let x = node("trx");
    let y = node("try");
    veth(&x, "ux", &y, "uy").unwrap();
    x.add_addr("ux", "192.168.77.1/24").unwrap();
    y.add_addr("uy", "192.168.77.2/24").unwrap();
    for (ns, a4, a6) in [
        (&x, "10.10.0.1/32", "fd10::1/128"),
        (&y, "10.20.0.1/32", "fd20::1/128"),
    ] {
        ns.add_addr("lo", a4).unwrap();
        ns.add_addr("lo", a6).unwrap();
    }
    (x, y)
}

/// Y: wireguard-go (10.99.0.2, fe80::2) peered with X's key at `x_endpoint`, and babeld on
/// the tunnel (hello 1 s) announcing the local addresses `announce`.
fn babeld_behind_wireguard_go<'a>(
    y: &'a Arc<Netns>,
    lab: &Lab,
    keys: (&Keypair, &Keypair),
    x_endpoint: &str,
    announce: &[&str],
) -> (WgIface, Babeld<'a>) {
    babeld_behind_wireguard_go_with(y, lab, keys, x_endpoint, announce, None)
}

/// [`babeld_behind_wireguard_go`], with babeld's tunnel interface signing and checking Babel
/// MACs with `mac_key` (BLAKE2s-128) when given.
fn babeld_behind_wireguard_go_with<'a>(
    y: &'a Arc<Netns>,
    lab: &Lab,
    (ky, kx): (&Keypair, &Keypair),
    x_endpoint: &str,
    announce: &[&str],
    mac_key: Option<&[u8]>,
) -> (WgIface, Babeld<'a>) {
    let wg = WgIface::start(
        y,
        lab,
        WgImpl::WireguardGo,
        &WgSpec {
            listen_port: 51820,
            addresses: vec!["10.99.0.2/24".into(), "fe80::2/64".into()],
            keys: Some(ky.clone()),
            ..WgSpec::default()
        },
    )
    .unwrap();
    wg.add_peer(&PeerSpec {
        public_key: kx.public.clone(),
        endpoint: Some(x_endpoint.into()),
        allowed_ips: vec!["0.0.0.0/0".into(), "::/0".into()],
        keepalive: Some(5),
    })
    .unwrap();
    let mut conf = String::new();
    if let Some(k) = mac_key {
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        conf.push_str(&format!("key id t type blake2s128 value {hex}\n"));
    }
    conf.push_str(&format!(
        "interface {} type tunnel hello-interval 1{}",
        wg.ifname,
        if mac_key.is_some() { " key t" } else { "" }
    ));
    for a in announce {
        conf.push_str(&format!("\nredistribute local ip {a}"));
    }
    let babeld = Babeld::start(y, lab, "y", &[], &conf).unwrap();
    (wg, babeld)
}

/// X's trunk peer: Y's wireguard-go at 192.168.77.2, with its tunnel address and the
/// link-local range (Babel).
fn yside(ky: &Keypair) -> ConfigPeer {
    ConfigPeer {
        name: "yside".into(),
        class: "trunk".into(),
        public_key: ky.public.clone(),
        endpoint: Some("192.168.77.2:51820".into()),
        allowed_ips: vec!["10.99.0.2/32".into(), "fe80::/64".into()],
        keepalive: None,
        extra: String::new(),
    }
}

/// X's gateway configuration: 10.99.0.1 and fe80::1 on the tunnel, `peers`, X's prefixes
/// originated, hello 1 s.
fn gateway_config(kx: &Keypair, peers: Vec<ConfigPeer>) -> IsthmusConfig {
    IsthmusConfig {
        listen_port: 51820,
        addresses: vec!["10.99.0.1/24".into(), "fe80::1/64".into()],
        keys: Some(kx.clone()),
        peers,
        routes: Vec::new(),
        babel: Some(
            "[babel]\noriginate = [\"10.10.0.1/32\", \"fd10::1/128\"]\n\n\
             [babel.trunk]\nhello_interval = 1\ncost = 96\n\n\
             [babel.mesh]\nhello_interval = 1\n\n\
             [babel.wired]\nhello_interval = 1\n"
                .into(),
        ),
        interface_extra: String::new(),
    }
}

#[test]
fn gateway_peers_with_babeld_over_wireguard_go() {
    peers_with_babeld_over_wireguard_go(None);
}

/// The same with Babel MACs (RFC 8967) on the tunnel link: `[[babel.peer]] keys` on the
/// gateway, `interface wg0 ... key` on babeld.
#[test]
fn gateway_peers_with_babeld_over_wireguard_go_with_babel_macs() {
    peers_with_babeld_over_wireguard_go(Some(b"tunnel-link Babel key, 32 bytes"));
}

fn peers_with_babeld_over_wireguard_go(mac_key: Option<&[u8]>) {
    init();
    let lab = Lab::new().unwrap();
    let (x, y) = two_nodes();
    let (kx, ky) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let started = Instant::now();
    x.set_forwarding(true).unwrap();
    let mut config = gateway_config(&kx, vec![yside(&ky)]);
    if let (Some(k), Some(babel)) = (mac_key, config.babel.as_mut()) {
        babel.push_str("\n[[babel.peer]]\nname = \"yside\"\nkeys = [\"t\"]\n");
        babel.push_str(&babel_key_table(&lab, "t", "blake2s128", k));
    }
    let dp = WgIface::start_config(&x, &lab, &config).unwrap();
    let cp = IsthmusCp::start_gateway(&x, &lab, "x", dp.config.as_ref().unwrap()).unwrap();
    let (wg, by) = babeld_behind_wireguard_go_with(
        &y,
        &lab,
        (&ky, &kx),
        "192.168.77.1:51820",
        &["10.20.0.1/32", "fd20::1/128"],
        mac_key,
    );
    let wg0 = wg.ifname.clone();
    let diag = || {
        format!(
            "{}\n{}",
            gateway_diagnostics("x", &dp, &cp),
            by.diagnostics()
        )
    };

    // Both sides learn the other's prefixes.
    let t_x = wait_until(
        "X: proto 77 routes to 10.20.0.1 and fd20::1 via the tunnel",
        CONVERGE,
        || {
            has_route(&x, "77", "10.20.0.1", Some(&dp.ifname))
                && has_route(&x, "77", "fd20::1", Some(&dp.ifname))
        },
        diag,
    );
    let t_x = started.elapsed().max(t_x);
    wait_until(
        "Y: babel routes to 10.10.0.1 and fd10::1 via wg0",
        CONVERGE,
        || {
            has_route(&y, "babel", "10.10.0.1", Some(&wg0))
                && has_route(&y, "babel", "fd10::1", Some(&wg0))
        },
        diag,
    );
    let t_y = started.elapsed();
    eprintln!(
        "convergence: X has Y's prefixes {:.1}s and Y has X's {:.1}s after the daemons started",
        t_x.as_secs_f64(),
        t_y.as_secs_f64()
    );
    let ky_routes = kernel_routes(&y, "babel").unwrap();
    let r = ky_routes.iter().find(|r| r.dst == "10.10.0.1").unwrap();
    assert_eq!(r.via.as_deref(), Some("10.99.0.1"), "{r:?}");

    ping_ok(&x, "10.10.0.1", "10.20.0.1", diag);
    ping_ok(&y, "10.20.0.1", "10.10.0.1", diag);
    ping_ok(&x, "fd10::1", "fd20::1", diag);
    ping_ok(&y, "fd20::1", "fd10::1", diag);

    // The babeld neighbour with an RTT (timestamps on both sides: trunk class, tunnel type).
    let mut shown = String::new();
    wait_until(
        "isthmusctl show neighbours: babeld on yside with an RTT",
        Duration::from_secs(15),
        || {
            shown = cp.status("neighbours").unwrap_or_else(|e| format!("{e:#}"));
            shown.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 8 && f[0] == "yside" && f[1].starts_with("fe80:") && f[6].ends_with("ms")
            })
        },
        diag,
    );
    eprintln!("X's neighbours:\n{shown}");
    let fib = show_fib(&dp).unwrap();
    assert!(
        fib.lines()
            .any(|l| l.contains("10.20.0.1/32") && l.contains("yside") && l.contains("babel")),
        "X's FIB should route 10.20.0.1/32 to yside from babel:\n{fib}"
    );
    if mac_key.is_some() {
        let m = cp.metrics().unwrap();
        let answered = m.get(
            "isthmus_babel_auth_challenges_total",
            &[("event", "answered")],
        );
        let refused = m.get("isthmus_babel_auth_refused_total", &[("reason", "bad_mac")])
            + m.get("isthmus_babel_auth_refused_total", &[("reason", "no_mac")]);
        assert!(answered >= 1.0 && refused == 0.0, "{}", diag());
    }
}

/// The credentials of every thread of process `pid`.
fn thread_creds(pid: u32) -> Vec<(String, Creds)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid = e.ok()?.file_name().into_string().ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let name = status.lines().next().unwrap_or("").to_string();
            Some((format!("{tid} {name}"), Creds::parse(&status)))
        })
        .collect()
}

/// Both daemons run as user `nobody` once set up (`[interface] user`), every thread of each
/// with only the capabilities it needs: isthmus-dp CAP_NET_ADMIN and CAP_NET_BIND_SERVICE,
/// isthmus-cp CAP_NET_ADMIN and CAP_NET_RAW. And they keep working as root did: isthmus-cp
/// installs the kernel routes it learns after the drop, `wg set` adds a peer and moves the
/// port below 1024 and back, and reloads of both daemons apply; a reload that cannot read a
/// root-only key file is refused with the reason (and said at start), the daemon running on.
#[test]
fn both_daemons_drop_to_an_unprivileged_user_and_keep_working() {
    use isthmus_dataplane::io::privs::{mask, Cap, User};
    init();
    let lab = Lab::new().unwrap();
    // The user must reach the configuration file for reloads.
    std::fs::set_permissions(
        lab.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let nobody = User::lookup("nobody").unwrap();
    let (x, y) = two_nodes();
    let (kx, ky) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    x.set_forwarding(true).unwrap();
    let mut config = gateway_config(&kx, vec![yside(&ky)]);
    config.interface_extra = "user = \"nobody\"\n".into();
    let mut dp = WgIface::start_config(&x, &lab, &config).unwrap();
    let conf = dp.config.clone().unwrap();
    let cp = IsthmusCp::start_gateway(&x, &lab, "x", &conf).unwrap();
    let (wg, by) = babeld_behind_wireguard_go(
        &y,
        &lab,
        (&ky, &kx),
        "192.168.77.1:51820",
        &["10.20.0.1/32", "fd20::1/128"],
    );
    let wg0 = wg.ifname.clone();
    let diag = || {
        format!(
            "{}\n{}",
            gateway_diagnostics("x", &dp, &cp),
            by.diagnostics()
        )
    };

    // Every thread of both daemons dropped, with exactly the capabilities kept.
    for (what, pid, keep) in [
        (
            "isthmus-dp",
            dp.pid,
            mask(&[Cap::NetAdmin, Cap::NetBindService]),
        ),
        ("isthmus-cp", cp.pid(), mask(&[Cap::NetAdmin, Cap::NetRaw])),
    ] {
        let threads = thread_creds(pid);
        assert!(threads.len() > 2, "{what}: {threads:?}");
        for (thread, c) in &threads {
            assert_eq!(c.uids, [nobody.uid; 4], "{what} thread {thread}: {c:?}");
            assert_eq!(c.gids, [nobody.gid; 4], "{what} thread {thread}: {c:?}");
            assert!(c.groups.is_empty(), "{what} thread {thread}: {c:?}");
            assert_eq!(
                (c.effective, c.permitted, c.bounding),
                (keep, keep, keep),
                "{what} thread {thread}: {c:?}"
            );
            assert!(c.no_new_privs, "{what} thread {thread}: {c:?}");
        }
        eprintln!(
            "{what}: {} threads, all uid {} with caps {keep:#x}",
            threads.len(),
            nobody.uid
        );
    }
    // The key file is root's (0600): said at start, before any reload fails on it.
    for (what, log) in [
        ("isthmus-dp", dp.log_tail(100)),
        ("isthmus-cp", cp.log_tail()),
    ] {
        assert!(
            log.contains("a reload could not read the configuration as user nobody"),
            "{what} should warn that it cannot read the key file:\n{log}"
        );
    }

    // Routes both ways, learned after the drop (isthmus-cp holds its first push 3 s).
    wait_until(
        "X: proto 77 routes to 10.20.0.1 and fd20::1 via the tunnel",
        CONVERGE,
        || {
            has_route(&x, "77", "10.20.0.1", Some(&dp.ifname))
                && has_route(&x, "77", "fd20::1", Some(&dp.ifname))
        },
        diag,
    );
    wait_until(
        "Y: babel routes to 10.10.0.1 and fd10::1 via wg0",
        CONVERGE,
        || {
            has_route(&y, "babel", "10.10.0.1", Some(&wg0))
                && has_route(&y, "babel", "fd10::1", Some(&wg0))
        },
        diag,
    );
    ping_ok(&x, "10.10.0.1", "10.20.0.1", diag);
    ping_ok(&y, "fd20::1", "fd10::1", diag);

    // `wg set` after the drop: a peer added, a port below 1024 and back, a fwmark.
    let extra = Keypair::generate().unwrap();
    dp.wg(&[
        "set",
        &dp.ifname,
        "listen-port",
        "443",
        "fwmark",
        "0x77",
        "peer",
        &extra.public,
        "allowed-ips",
        "10.98.0.0/24",
    ])
    .unwrap();
    assert_eq!(
        dp.wg(&["show", &dp.ifname, "listen-port"]).unwrap().trim(),
        "443"
    );
    assert_eq!(
        dp.wg(&["show", &dp.ifname, "fwmark"]).unwrap().trim(),
        "0x77"
    );
    assert!(dp
        .wg(&["show", &dp.ifname, "peers"])
        .unwrap()
        .contains(&extra.public));
    dp.wg(&["set", &dp.ifname, "listen-port", "51820", "fwmark", "off"])
        .unwrap();
    assert_eq!(
        dp.wg(&["show", &dp.ifname, "listen-port"]).unwrap().trim(),
        "51820"
    );
    ping_ok(&x, "10.10.0.1", "10.20.0.1", diag);
    // Its own process series, read from /proc/self after the drop.
    let m = dp.metrics().unwrap();
    assert!(
        m.get("process_open_fds", &[]) > 10.0,
        "process_open_fds after the drop"
    );

    // Reloads: refused while the key file is root's, applied once it is the user's.
    let ctl = IsthmusCp::ctl_binary().unwrap();
    let reload_dp = || {
        x.command(&ctl)
            .args(["reload", &dp.ifname])
            .output()
            .unwrap()
    };
    let out = reload_dp();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(".key") && err.contains("ermission denied"),
        "a reload as nobody with a root-only key file should be refused with the reason: {err}"
    );
    let key_file = lab.path(&format!("{}.key", dp.ifname));
    std::os::unix::fs::chown(&key_file, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    let added = Keypair::generate().unwrap();
    std::fs::write(
        &conf,
        text.replacen(
            "\n[[peer]]",
            &format!(
                "\n[[peer]]\nname = \"later\"\nclass = \"trunk\"\npublic_key = {:?}\n\
                 allowed_ips = [\"10.97.0.0/24\"]\n\n[[peer]]",
                added.public
            ),
            1,
        )
        .replacen("originate = [", "originate = [\"10.10.9.0/24\", ", 1),
    )
    .unwrap();
    let out = reload_dp();
    assert!(
        out.status.success(),
        "reload as nobody: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dp
        .wg(&["show", &dp.ifname, "peers"])
        .unwrap()
        .contains(&added.public));
    isthmus_lab::run(x.command("kill").args(["-HUP", &cp.pid().to_string()])).unwrap();
    wait_until(
        "isthmus-cp reloaded: Y learns 10.10.9.0/24",
        CONVERGE,
        || has_route(&y, "babel", "10.10.9.0/24", Some(&wg0)),
        diag,
    );
    assert!(
        cp.log_tail().contains("reloaded: originates 10.10.9.0/24"),
        "{}",
        diag()
    );
    ping_ok(&y, "10.20.0.1", "10.10.0.1", diag);

    // isthmus-dp crashes and comes back: isthmus-cp, still nobody, reconnects to the new
    // one's control socket and pushes its routes again.
    dp.crash_and_restart().unwrap();
    let diag = || {
        format!(
            "{}\n{}",
            gateway_diagnostics("x", &dp, &cp),
            by.diagnostics()
        )
    };
    wait_until(
        "the restarted isthmus-dp gets Y's routes from isthmus-cp",
        CONVERGE,
        || {
            show_fib(&dp).is_ok_and(|f| {
                f.lines()
                    .any(|l| l.contains("10.20.0.1/32") && l.contains("babel"))
            })
        },
        diag,
    );
    assert!(thread_creds(dp.pid)
        .iter()
        .all(|(_, c)| c.uids == [nobody.uid; 4]));
    ping_ok(&x, "10.10.0.1", "10.20.0.1", diag);
}

/// A peer added with `wg set` to a running gateway is a Babel link at once: no restart, its
/// routes learned within two hello intervals; `wg set ... remove` retracts them at once.
#[test]
fn a_peer_added_at_run_time_is_a_babel_link_and_its_removal_retracts_its_routes() {
    init();
    let lab = Lab::new().unwrap();
    let (x, y) = two_nodes();
    let (kx, ky) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    x.set_forwarding(true).unwrap();
    // No peer in the file: Y comes later, over the UAPI.
    let dp = WgIface::start_config(&x, &lab, &gateway_config(&kx, Vec::new())).unwrap();
    let cp = IsthmusCp::start_gateway(&x, &lab, "x", dp.config.as_ref().unwrap()).unwrap();
    let (wg, by) = babeld_behind_wireguard_go(
        &y,
        &lab,
        (&ky, &kx),
        "192.168.77.1:51820",
        &["10.20.0.1/32", "fd20::1/128"],
    );
    let diag = || {
        format!(
            "{}\n{}",
            gateway_diagnostics("x", &dp, &cp),
            by.diagnostics()
        )
    };
    // Both daemons have been running for a while (a link added now is not the start-up's).
    wait_until(
        "isthmus-cp has pushed its first table",
        CONVERGE,
        || {
            cp.metrics()
                .is_ok_and(|m| m.get("isthmus_babel_synced", &[]) == 1.0)
        },
        diag,
    );
    let hello = Duration::from_secs(1);
    // A peer without an endpoint: quiet (no hellos into a tunnel that has nowhere to go)
    // until it has one.
    let kz = Keypair::generate().unwrap();
    dp.add_peer(&PeerSpec {
        public_key: kz.public.clone(),
        endpoint: None,
        allowed_ips: vec!["10.99.0.3/32".into()],
        keepalive: None,
    })
    .unwrap();

    let t0 = Instant::now();
    dp.add_peer(&PeerSpec {
        public_key: ky.public.clone(),
        endpoint: Some("192.168.77.2:51820".into()),
        allowed_ips: vec!["10.99.0.2/32".into(), "fe80::/64".into()],
        keepalive: None,
    })
    .unwrap();
    let learned = wait_until(
        "X: routes to 10.20.0.1 and fd20::1 into the tunnel, learned from the new peer",
        CONVERGE,
        || {
            has_route(&x, "77", "10.20.0.1", Some(&dp.ifname))
                && has_route(&x, "77", "fd20::1", Some(&dp.ifname))
        },
        diag,
    );
    let learned = learned.max(t0.elapsed());
    wait_until(
        "Y: babel routes to X's prefixes via the tunnel",
        CONVERGE,
        || {
            has_route(&y, "babel", "10.10.0.1", Some(&wg.ifname))
                && has_route(&y, "babel", "fd10::1", Some(&wg.ifname))
        },
        diag,
    );
    ping_ok(&x, "10.10.0.1", "10.20.0.1", diag);
    let shown = cp.status("neighbours").unwrap();
    let label = &ky.public[..8];
    assert!(
        shown.lines().any(|l| l.starts_with(label)),
        "the new peer should be a neighbour (link {label}):\n{shown}"
    );
    eprintln!("peer added with wg set: its routes learned after {learned:?} (hello {hello:?})");
    assert!(
        learned <= 2 * hello + Duration::from_millis(500),
        "routes through a peer added at run time took {learned:?}, more than two hellos\n{}",
        diag()
    );

    let t1 = Instant::now();
    dp.wg(&["set", &dp.ifname, "peer", &ky.public, "remove"])
        .unwrap();
    let retracted = wait_until(
        "X: no route to 10.20.0.1 or fd20::1 any more",
        CONVERGE,
        || !has_route(&x, "77", "10.20.0.1", None) && !has_route(&x, "77", "fd20::1", None),
        diag,
    )
    .max(t1.elapsed());
    let fib = show_fib(&dp).unwrap();
    assert!(
        !fib.contains("10.20.0.1/32"),
        "the FIB still routes 10.20.0.1/32:\n{fib}"
    );
    let shown = cp.status("neighbours").unwrap();
    assert!(
        !shown.lines().any(|l| l.starts_with(label)),
        "the removed peer is still a neighbour:\n{shown}"
    );
    eprintln!("peer removed with wg set: its routes retracted after {retracted:?}");
    let log = std::fs::read_to_string(cp.log_path()).unwrap();
    assert!(
        log.contains("has no endpoint yet") && !log.contains("no such peer"),
        "the peer without an endpoint should wait quietly:\n{log}"
    );
    assert!(
        retracted < hello,
        "retracting the routes of a removed peer took {retracted:?}\n{}",
        diag()
    );
}

// ---------------------------------------------------------------------------------------------
// Islands: h — r (babeld) — g (isthmus) ═ trunk ═ g (isthmus) — r (babeld) — h
// ---------------------------------------------------------------------------------------------

/// The lab's [`BabelIslands`] with `trunks` gateway pairs and hello interval `hello`; trunk
/// `k` costs `96 + 32 k`, so the first is preferred.
fn islands(trunks: usize, hello: u32) -> BabelIslands {
    islands_probed(trunks, hello, None)
}

/// [`islands`] with the trunk peers' liveness probe `(interval, misses)`.
fn islands_probed(trunks: usize, hello: u32, liveness: Option<(f64, u32)>) -> BabelIslands {
    BabelIslands::build_spec(&IslandsSpec {
        liveness,
        trunks,
        hello,
        trunk_costs: (0..trunks)
            .map(|k| 96 + 32 * u32::try_from(k).unwrap())
            .collect(),
        ..IslandsSpec::default()
    })
    .unwrap()
}

/// babeld's dumps and logs, then the islands' state.
fn islands_diag(babelds: &[Babeld<'_>; 2], isl: &BabelIslands) -> String {
    format!(
        "{}\n{}\n{}",
        babelds[0].diagnostics(),
        babelds[1].diagnostics(),
        isl.diagnostics()
    )
}

/// Router `r{island}`'s interface towards its gateway on trunk `k`.
fn router_if(isl: &BabelIslands, island: usize, k: usize) -> &str {
    &isl.router_ifs[island - 1].0[k]
}

/// Whether the gateway of `island` on trunk `k` routes `prefix` in its FIB to its trunk peer.
fn gw_fib_has(isl: &BabelIslands, island: u8, k: usize, prefix: &str) -> bool {
    let g = isl.gateway_of(island, k);
    isl.fib_has(&g.node, prefix, &g.trunk_peer)
}

/// Both island routers route the other island through trunk `k`.
fn routers_use_trunk(isl: &BabelIslands, k: usize) -> bool {
    has_route(
        isl.t.ns("r1"),
        "babel",
        "10.2.1.0/24",
        Some(router_if(isl, 1, k)),
    ) && has_route(
        isl.t.ns("r2"),
        "babel",
        "10.1.1.0/24",
        Some(router_if(isl, 2, k)),
    )
}

/// The data plane's `isthmus_fib_stale` gauge on a gateway.
fn fib_stale(isl: &BabelIslands, node: &str) -> f64 {
    isl.t
        .wg(node)
        .metrics()
        .unwrap_or_else(|e| panic!("scraping {node}'s isthmus-dp: {e:#}"))
        .get("isthmus_fib_stale", &[])
}

// ---------------------------------------------------------------------------------------------
// 2. Two babeld islands through two isthmus gateways
// ---------------------------------------------------------------------------------------------

#[test]
fn islands_route_through_two_gateways_without_static_routes() {
    init();
    let started = Instant::now();
    let isl = islands(1, 1);
    let routers = isl.routers().unwrap();
    let diag = || islands_diag(&routers, &isl);
    let (h1, h2) = (isl.t.ns("h1"), isl.t.ns("h2"));

    // The gateways' data planes carry the other island to the trunk peer, their kernels too.
    let t_fib = wait_until(
        "g1a's FIB routes 10.2.1.0/24 and fd00:2:1::/64 to g2a, g2a's 10.1.1.0/24 to g1a",
        CONVERGE,
        || {
            gw_fib_has(&isl, 1, 0, "10.2.1.0/24")
                && gw_fib_has(&isl, 1, 0, "fd00:2:1::/64")
                && gw_fib_has(&isl, 2, 0, "10.1.1.0/24")
                && gw_fib_has(&isl, 2, 0, "fd00:1:1::/64")
        },
        diag,
    );
    let t_fib = t_fib.max(started.elapsed());
    wait_until(
        "island routers learn the other island",
        CONVERGE,
        || {
            routers_use_trunk(&isl, 0)
                && has_route(
                    isl.t.ns("r1"),
                    "babel",
                    "fd00:2:1::/64",
                    Some(router_if(&isl, 1, 0)),
                )
                && has_route(
                    isl.t.ns("r2"),
                    "babel",
                    "fd00:1:1::/64",
                    Some(router_if(&isl, 2, 0)),
                )
        },
        diag,
    );
    eprintln!(
        "convergence: gateways' FIBs {:.1}s, island routers {:.1}s after start",
        t_fib.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let g1 = isl.gateway_of(1, 0);
    let g1_ns = isl.t.ns(&g1.node);
    let tunnel = isl.t.wg(&g1.node).ifname.as_str();
    for (dst, dev) in [
        ("10.2.1.0/24", tunnel),
        ("fd00:2:1::/64", tunnel),
        ("10.1.1.0/24", g1.island_if.as_str()),
        ("fd00:1:1::/64", g1.island_if.as_str()),
    ] {
        assert!(
            has_route(g1_ns, "77", dst, Some(dev)),
            "g1a: no proto 77 route to {dst} dev {dev}\n{}",
            diag()
        );
    }
    let k = kernel_routes(g1_ns, "77").unwrap();
    let r = k.iter().find(|r| r.dst == "10.1.1.0/24").unwrap();
    assert!(
        r.via.as_deref().is_some_and(|v| v.starts_with("fe80:")),
        "g1a's route into its island should be v4-via-v6: {r:?}"
    );

    ping_ok(h1, "10.1.1.2", "10.2.1.2", diag);
    ping_ok(h2, "10.2.1.2", "10.1.1.2", diag);
    ping_ok(h1, "fd00:1:1::2", "fd00:2:1::2", diag);
    ping_ok(h2, "fd00:2:1::2", "fd00:1:1::2", diag);
    eprintln!(
        "g1a's FIB:\n{}",
        isl.show(&g1.node, "fib")
            .unwrap_or_else(|e| format!("{e:#}"))
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Two trunks: failover
// ---------------------------------------------------------------------------------------------

#[test]
fn two_trunks_failover() {
    // Babel's timers: 2 hellos + the IHU hold time.
    failover(None, Duration::from_millis(12_500));
}

/// The data plane's liveness probe (100 ms, 2 misses) on both trunks: the gateways drop the
/// dead trunk's neighbour as soon as the probe says so, not when Babel's hellos time out.
/// (Target: under 300 ms of a 10 ms ping lost; the bound here is generous for a loaded
/// machine, and still far below what hellos need.)
#[test]
fn two_trunks_failover_with_the_liveness_probe() {
    failover(Some((0.1, 2)), Duration::from_millis(1_500));
}

/// Cuts the preferred of two trunks under a 10 ms ping between the islands' hosts; the
/// longest gap in the replies must be below `target`.
fn failover(liveness: Option<(f64, u32)>, target: Duration) {
    init();
    let isl = islands_probed(2, 1, liveness);
    let routers = isl.routers().unwrap();
    let diag = || islands_diag(&routers, &isl);
    let h1 = isl.t.ns("h1");

    // Both trunks up; the cheaper one (a) carries both directions.
    wait_until(
        "both island routers route the other island through trunk a, gateways of b know it too",
        CONVERGE,
        || {
            routers_use_trunk(&isl, 0)
                && gw_fib_has(&isl, 1, 1, "10.2.1.0/24")
                && gw_fib_has(&isl, 2, 1, "10.1.1.0/24")
        },
        diag,
    );
    ping_ok(h1, "10.1.1.2", "10.2.1.2", diag);

    let probe = PingProbe::start_from(h1, Some("10.1.1.2"), "10.2.1.2", 10).unwrap();
    probe.wait_replies(50, Duration::from_secs(5)).unwrap();
    let before = probe.replies_so_far();
    let cut = Instant::now();
    isl.set_trunk(0, false).unwrap();
    if let Err(e) = probe.wait_replies(before + 100, Duration::from_secs(20)) {
        panic!("traffic did not resume over trunk b: {e:#}\n{}", diag());
    }
    let resumed = cut.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let result = probe.finish().unwrap();
    eprintln!(
        "failover (probe {liveness:?}): longest gap {:.2}s (bound {:.1}s); traffic resumed {:.2}s after the cut; {} of {} lost",
        result.longest_gap.as_secs_f64(),
        target.as_secs_f64(),
        resumed.as_secs_f64(),
        result.lost(),
        result.sent
    );
    assert!(
        routers_use_trunk(&isl, 1),
        "after the cut both routers should route through trunk b\n{}",
        diag()
    );
    assert!(
        result.longest_gap < target,
        "outage {:?} is not below {target:?}\n{}",
        result.longest_gap,
        diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. kill -9 of isthmus-cp: the data plane keeps forwarding
// ---------------------------------------------------------------------------------------------

/// The data plane keeps its table (stale) while isthmus-cp is dead; the restarted isthmus-cp
/// keeps a previous run's routes, in the data plane and the kernel, until its neighbours have
/// had time to resend everything (babeld answers route requests only with its periodic
/// updates), so nothing is withdrawn in between.
#[test]
fn kill_9_of_isthmus_cp_loses_no_packets() {
    init();
    const HELLO: u32 = 2;
    let mut isl = islands(1, HELLO);
    let routers = isl.routers().unwrap();
    let hold = Duration::from_secs(u64::from(2 * HELLO + 1));
    let h1 = Arc::clone(isl.t.ns("h1"));
    let g1 = isl.gateway_of(1, 0).node.clone();

    {
        let diag = || islands_diag(&routers, &isl);
        wait_until(
            "islands converge",
            CONVERGE,
            || {
                gw_fib_has(&isl, 1, 0, "10.2.1.0/24")
                    && gw_fib_has(&isl, 2, 0, "10.1.1.0/24")
                    && routers_use_trunk(&isl, 0)
            },
            diag,
        );
        ping_ok(&h1, "10.1.1.2", "10.2.1.2", diag);
        assert_eq!(fib_stale(&isl, &g1), 0.0);
    }

    let probe = PingProbe::start_from(&h1, Some("10.1.1.2"), "10.2.1.2", 20).unwrap();
    probe.wait_replies(25, Duration::from_secs(5)).unwrap();
    let killed = Instant::now();
    isl.kill_cp(&g1);
    assert!(!isl.gateway(&g1).cp.alive(), "isthmus-cp survived SIGKILL");
    // The data plane notices its control plane is gone and marks its table stale.
    let mut stale = 0.0;
    while killed.elapsed() < Duration::from_secs(1) {
        stale = fib_stale(&isl, &g1);
        if stale == 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stale_after = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed()));
    let dead_for = killed.elapsed();
    isl.restart_cp(&g1).unwrap();
    std::thread::sleep(hold + Duration::from_secs(3));
    let diag = || islands_diag(&routers, &isl);
    let stale_now = fib_stale(&isl, &g1);
    let result = probe.finish().unwrap();
    eprintln!(
        "kill -9: isthmus-cp dead for {:.2}s; fib_stale {stale} {:.2}s after the kill, {stale_now} after the restart; ping: {} sent, {} lost, longest gap {:.3}s",
        dead_for.as_secs_f64(),
        stale_after.as_secs_f64(),
        result.sent,
        result.lost(),
        result.longest_gap.as_secs_f64()
    );
    assert_eq!(
        stale,
        1.0,
        "isthmus_fib_stale should be 1 while isthmus-cp is dead\n{}",
        diag()
    );
    assert_eq!(
        stale_now,
        0.0,
        "isthmus_fib_stale should be 0 after the restarted isthmus-cp's snapshot\n{}",
        diag()
    );
    assert!(
        gw_fib_has(&isl, 1, 0, "10.2.1.0/24"),
        "g1a's FIB lost island 2\n{}",
        diag()
    );
    assert!(result.sent > 300, "{}", result.output);
    assert_eq!(
        result.lost(),
        0,
        "packets lost across the restart of isthmus-cp (longest gap {:?})\n{}",
        result.longest_gap,
        diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 of isthmus-dp: restarted from its file, isthmus-cp resynchronises it
// ---------------------------------------------------------------------------------------------

/// The babel routes in `node`'s data-plane FIB (`isthmusctl show fib`): prefix and next hop.
fn babel_fib(isl: &BabelIslands, node: &str) -> Vec<String> {
    isl.show(node, "fib")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with("babel"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// A gateway's data plane killed and restarted from its file (a supervisor's restart): its
/// FIB starts empty, isthmus-cp reconnects and pushes its table again, with no route missing,
/// and the kernel's routes into the new TUN device are back; a ping across the islands loses
/// only about the restart.
#[test]
fn kill_9_of_isthmus_dp_is_resynchronised_by_isthmus_cp() {
    init();
    let mut isl = islands(1, 1);
    let routers = isl.routers().unwrap();
    let h1 = Arc::clone(isl.t.ns("h1"));
    let g1 = isl.gateway_of(1, 0).node.clone();
    {
        let diag = || islands_diag(&routers, &isl);
        wait_until(
            "islands converge",
            CONVERGE,
            || {
                gw_fib_has(&isl, 1, 0, "10.2.1.0/24")
                    && gw_fib_has(&isl, 1, 0, "fd00:2:1::/64")
                    && gw_fib_has(&isl, 2, 0, "10.1.1.0/24")
                    && routers_use_trunk(&isl, 0)
            },
            diag,
        );
        ping_ok(&h1, "10.1.1.2", "10.2.1.2", diag);
    }
    let before = babel_fib(&isl, &g1);
    let probe = PingProbe::start_from(&h1, Some("10.1.1.2"), "10.2.1.2", 10).unwrap();
    probe.wait_replies(50, Duration::from_secs(5)).unwrap();
    let restart = isl.t.wg_mut(&g1).crash_and_restart().unwrap();
    let t0 = Instant::now();
    let diag = || islands_diag(&routers, &isl);
    let resynced = wait_until(
        "g1a's FIB has every babel route again",
        CONVERGE,
        || babel_fib(&isl, &g1) == before,
        diag,
    );
    let replies = probe.replies_so_far();
    if let Err(e) = probe.wait_replies(replies + 100, CONVERGE) {
        panic!("{e:#}\n{}", diag());
    }
    let r = probe.finish().unwrap();
    eprintln!(
        "isthmus-dp kill -9 + restart ({restart:?}): FIB resynchronised {resynced:?} later ({} routes); ping lost {} of {}, longest gap {:?}",
        before.len(),
        r.lost(),
        r.sent,
        r.longest_gap
    );
    assert!(
        has_route(
            isl.t.ns(&g1),
            "77",
            "10.2.1.0/24",
            Some(&isl.t.wg(&g1).ifname)
        ),
        "the kernel route into the new TUN device is missing\n{}",
        diag()
    );
    let _ = t0;
    assert!(
        r.longest_gap < restart + Duration::from_secs(3),
        "outage {:?} for a restart of {restart:?}\n{}",
        r.longest_gap,
        diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A probed trunk beside a wireguard-go + babeld gateway: hellos stay the fallback
// ---------------------------------------------------------------------------------------------

/// X has two trunks to gateways that both announce 10.30.0.1/32: to YB, a wireguard-go +
/// babeld gateway (no liveness probe: it could not answer one), preferred; and to YA, an
/// isthmus gateway, both ends running the 100 ms probe. Cutting trunk b, X falls back to
/// trunk a by Babel's hellos, and the probe on trunk a never calls it down meanwhile.
#[test]
fn hellos_fail_over_from_a_wireguard_go_and_babeld_gateway_beside_a_probed_trunk() {
    init();
    let lab = Lab::new().unwrap();
    let (x, ya, yb) = (node("tfx"), node("tfa"), node("tfb"));
    veth(&x, "ua", &ya, "ux").unwrap();
    veth(&x, "ub", &yb, "ux").unwrap();
    for (ns, dev, a) in [
        (&x, "ua", "192.168.81.1/24"),
        (&ya, "ux", "192.168.81.2/24"),
        (&x, "ub", "192.168.82.1/24"),
        (&yb, "ux", "192.168.82.2/24"),
        (&x, "lo", "10.10.0.1/32"),
        (&yb, "lo", "10.30.0.1/32"),
    ] {
        ns.add_addr(dev, a).unwrap();
    }
    let (kx, ka, kb) = (
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
        Keypair::generate().unwrap(),
    );
    let probe = "liveness_interval = 0.1\nliveness_misses = 2\n".to_string();
    let trunk = |name: &str, key: &Keypair, ep: &str, allowed: &[&str], extra: &str| ConfigPeer {
        name: name.into(),
        class: "trunk".into(),
        public_key: key.public.clone(),
        endpoint: Some(ep.into()),
        allowed_ips: allowed.iter().map(|s| (*s).to_owned()).collect(),
        keepalive: None,
        extra: extra.into(),
    };
    let babel = |originate: &str, extra: &str| {
        Some(format!(
            "[babel]\noriginate = [\"{originate}\"]\n\n[babel.trunk]\nhello_interval = 1\n{extra}"
        ))
    };
    x.set_forwarding(true).unwrap();
    let dp_x = WgIface::start_config(
        &x,
        &lab,
        &IsthmusConfig {
            listen_port: 51820,
            addresses: vec!["10.99.0.1/24".into(), "fe80::1/64".into()],
            keys: Some(kx.clone()),
            peers: vec![
                trunk(
                    "ya",
                    &ka,
                    "192.168.81.2:51820",
                    &["10.99.0.3/32", "fe80::a/128"],
                    &probe,
                ),
                trunk(
                    "yb",
                    &kb,
                    "192.168.82.2:51820",
                    &["10.99.0.2/32", "fe80::2/128"],
                    "",
                ),
            ],
            routes: Vec::new(),
            // Trunk a costs more: trunk b carries the traffic until it is cut.
            babel: babel(
                "10.10.0.1/32",
                "\n[[babel.peer]]\nname = \"ya\"\ncost = 300\n",
            ),
            interface_extra: String::new(),
        },
    )
    .unwrap();
    let cp_x = IsthmusCp::start_gateway(&x, &lab, "x", dp_x.config.as_ref().unwrap()).unwrap();
    let dp_a = WgIface::start_config(
        &ya,
        &lab,
        &IsthmusConfig {
            listen_port: 51820,
            addresses: vec!["10.99.0.3/24".into(), "fe80::a/64".into()],
            keys: Some(ka.clone()),
            peers: vec![trunk(
                "x",
                &kx,
                "192.168.81.1:51820",
                &["10.10.0.1/32", "fe80::1/128"],
                &probe,
            )],
            routes: Vec::new(),
            babel: babel("10.30.0.1/32", ""),
            interface_extra: String::new(),
        },
    )
    .unwrap();
    let cp_a = IsthmusCp::start_gateway(&ya, &lab, "ya", dp_a.config.as_ref().unwrap()).unwrap();
    let (_wg, bd) = babeld_behind_wireguard_go(
        &yb,
        &lab,
        (&kb, &kx),
        "192.168.82.1:51820",
        &["10.30.0.1/32"],
    );
    let diag = || {
        format!(
            "{}\n{}\n{}",
            gateway_diagnostics("x", &dp_x, &cp_x),
            gateway_diagnostics("ya", &dp_a, &cp_a),
            bd.diagnostics()
        )
    };
    let fib_via = |via: &str| isthmus_lab::babel_islands::fib_has(&dp_x, "10.30.0.1/32", via);
    wait_until(
        "X routes 10.30.0.1 through trunk b (yb)",
        CONVERGE,
        || fib_via("yb"),
        diag,
    );
    // Let both trunks settle (the probe on trunk a up, RTT samples in).
    std::thread::sleep(Duration::from_secs(2));
    let cut = Instant::now();
    yb.exec(&["ip", "link", "set", "ux", "down"]).unwrap();
    let t = wait_until(
        "X falls back to trunk a (ya) by hellos",
        CONVERGE,
        || fib_via("ya"),
        diag,
    );
    eprintln!("trunk b (wireguard-go + babeld) cut: X routes through trunk a {t:?} later");
    assert!(
        t.max(cut.elapsed()) < Duration::from_millis(12_500),
        "{}",
        diag()
    );
    let log = std::fs::read_to_string(cp_x.log_path()).unwrap();
    assert!(
        !log.contains("liveness probe: peer down"),
        "the probe on trunk a should never have called it down:\n{log}"
    );
}
