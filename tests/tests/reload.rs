//! `SIGHUP` makes isthmus-dp re-read its configuration file and apply the difference, with
//! `wg syncconf`'s meaning: a changed peer is updated in place (no new handshake), an added
//! peer is there, a removed one is gone, and a file that does not load is refused with its
//! `FILE:LINE: KEY` error while the running state stays. A 10 ms ping through a peer that no
//! reload touches loses nothing during all of it.

mod common;

use std::time::{Duration, Instant};

use common::{init, ping_ok};
use isthmus_lab::{endpoint, ConfigPeer, IsthmusConfig, Keypair, PingProbe, Topology, WgImpl};

/// Spoke `name` on link `i`: wireguard-go at 10.20{i}.0.2, inner address 10.10.0.{10 + i}.
fn spoke(t: &mut Topology, name: &str, i: u8) -> ConfigPeer {
    t.add_node(name).unwrap();
    t.link(
        "a",
        &[&format!("10.20{i}.0.1/24")],
        name,
        &[&format!("10.20{i}.0.2/24")],
    )
    .unwrap();
    let inner = format!("10.10.0.{}", 10 + i);
    t.add_wg(name, WgImpl::WireguardGo, 51820, &[&format!("{inner}/24")])
        .unwrap();
    ConfigPeer {
        name: name.into(),
        class: "mesh".into(),
        public_key: t.wg(name).keys.public.clone(),
        endpoint: Some(endpoint(&format!("10.20{i}.0.2"), 51820)),
        allowed_ips: vec![format!("{inner}/32")],
        keepalive: None,
        extra: String::new(),
    }
}

/// Waits until `cond` holds (at most 10 s), else panics with `what` and the hub's log.
fn wait(t: &Topology, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 10 s\n{}",
            t.wg("a").log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_the_difference_without_a_flap() {
    init();
    let mut t = Topology::new().unwrap();
    t.add_node("a").unwrap();
    let peers: Vec<ConfigPeer> = [("b", 1), ("c", 2), ("d", 3), ("e", 4)]
        .into_iter()
        .map(|(n, i)| spoke(&mut t, n, i))
        .collect();
    let (b, c, d, e) = (&peers[0], &peers[1], &peers[2], &peers[3]);
    let mut cfg = IsthmusConfig {
        listen_port: 51820,
        addresses: vec!["10.10.0.1/24".into()],
        keys: Some(Keypair::generate().unwrap()),
        // d comes with the first reload.
        peers: vec![b.clone(), c.clone(), e.clone()],
        ..Default::default()
    };
    t.add_isthmus_config("a", &cfg).unwrap();
    for (n, i) in [("b", 1), ("c", 2), ("d", 3), ("e", 4)] {
        t.peer(
            n,
            "a",
            Some(endpoint(&format!("10.20{i}.0.1"), 51820)),
            &["10.10.0.0/24"],
            None,
        )
        .unwrap();
    }
    let ns = |n: &str| std::sync::Arc::clone(t.ns(n));
    let (na, nb, nc) = (ns("a"), ns("b"), ns("c"));
    ping_ok(&na, "10.10.0.11", 2);
    ping_ok(&na, "10.10.0.12", 2);
    ping_ok(&na, "10.10.0.14", 2);
    let handshake_of = |key: &str| {
        t.wg("a")
            .dump()
            .unwrap()
            .into_iter()
            .find(|p| p.public_key == key)
            .map(|p| p.latest_handshake)
    };
    let c_handshake = handshake_of(&c.public_key).unwrap();
    let probe = PingProbe::start(&nb, "10.10.0.1", 10).unwrap();
    probe.wait_replies(20, Duration::from_secs(5)).unwrap();
    let hub = t.wg("a");
    let reloaded = |n: usize| hub.log_tail(200).matches("reloaded").count() >= n;

    // 1. c changed (a second address routed to it), d added, e removed.
    nc.add_addr(&t.wg("c").ifname, "10.10.0.32/32").unwrap();
    let mut c2 = c.clone();
    c2.allowed_ips.push("10.10.0.32/32".into());
    cfg.peers = vec![b.clone(), c2, d.clone()];
    hub.reload_config(&t.lab, &cfg).unwrap();
    wait(&t, "the first reload", || reloaded(1));
    let log = hub.log_tail(20);
    // Peers are named in logs by name and short key.
    let named = |p: &isthmus_lab::ConfigPeer, what: &str| {
        format!("peer {} ({}) {what}", p.name, &p.public_key[..8])
    };
    assert!(
        log.contains(&named(c, "changed"))
            && log.contains(&named(d, "added"))
            && log.contains(&named(e, "removed")),
        "{log}"
    );
    ping_ok(&na, "10.10.0.32", 3);
    ping_ok(&na, "10.10.0.13", 3);
    wait(&t, "e gone from wg show", || {
        handshake_of(&e.public_key).is_none()
    });
    assert_eq!(
        handshake_of(&c.public_key),
        Some(c_handshake),
        "c's session should have been kept (no new handshake)"
    );

    // 2. A file that does not load: refused, named by file, line and key; nothing changes.
    let conf = hub.config.clone().unwrap();
    let good = std::fs::read_to_string(&conf).unwrap();
    let bad = good.replacen("listen_port = 51820", "listen_port = \"many\"", 1);
    std::fs::write(&conf, &bad).unwrap();
    // This time through `isthmusctl reload`, which says why it failed.
    let ctl = isthmus_lab::IsthmusCp::ctl_binary().unwrap();
    let out = na
        .command(&ctl)
        .args(["reload", &hub.ifname])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "isthmusctl reload should fail: {err}"
    );
    assert!(
        err.contains(&format!("{}:", conf.display())) && err.contains("listen_port"),
        "isthmusctl should print FILE:LINE: KEY: {err}"
    );
    wait(&t, "the refusal", || {
        hub.log_tail(50).contains("reload refused")
    });
    let log = hub.log_tail(50);
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        line.contains(&format!("{}:", conf.display())) && line.contains("listen_port"),
        "the error should name the file, the line and the key: {line}"
    );
    ping_ok(&na, "10.10.0.13", 2);
    assert!(handshake_of(&d.public_key).is_some());

    // 3. The same file again: nothing to do.
    std::fs::write(&conf, &good).unwrap();
    isthmus_lab::run(na.command(&ctl).args(["reload", &hub.ifname])).unwrap();
    wait(&t, "the third reload", || {
        hub.log_tail(50).contains("reloaded: nothing changed")
    });

    let r = probe.finish().unwrap();
    eprintln!(
        "ping through the untouched peer across three reloads: {} sent, {} lost, longest gap {:?}",
        r.sent,
        r.lost(),
        r.longest_gap
    );
    assert_eq!(r.lost(), 0, "{}", r.output);
    assert!(hub.alive());
}
