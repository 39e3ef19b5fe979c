//! A crashed data plane comes back fast: isthmus-dp, killed with SIGKILL under a ping from a
//! wireguard-go peer and restarted from its configuration file, initiates the handshake itself
//! instead of waiting for the peer's old session to time out (10-15 s in wireguard-go, which
//! keeps sending on a session the restarted gateway no longer has).

mod common;

use std::time::Duration;

use common::{init, ping_ok};
use isthmus_lab::{endpoint, ConfigPeer, IsthmusConfig, Keypair, PingProbe, Topology, WgImpl};

#[test]
fn kill_9_and_restart_under_a_ping_from_wireguard_go() {
    init();
    let mut t = Topology::new().unwrap();
    t.add_node("a").unwrap();
    t.add_node("b").unwrap();
    t.link("a", &["10.200.0.1/24"], "b", &["10.200.0.2/24"])
        .unwrap();
    t.add_wg("b", WgImpl::WireguardGo, 51820, &["10.10.0.2/24"])
        .unwrap();
    let keys = Keypair::generate().unwrap();
    let cfg = IsthmusConfig {
        listen_port: 51820,
        addresses: vec!["10.10.0.1/24".into()],
        keys: Some(keys),
        peers: vec![ConfigPeer {
            name: "b".into(),
            class: "trunk".into(),
            public_key: t.wg("b").keys.public.clone(),
            endpoint: Some(endpoint("10.200.0.2", 51820)),
            allowed_ips: vec!["10.10.0.2/32".into()],
            keepalive: None,
            extra: String::new(),
        }],
        ..Default::default()
    };
    t.add_isthmus_config("a", &cfg).unwrap();
    t.peer(
        "b",
        "a",
        Some(endpoint("10.200.0.1", 51820)),
        &["10.10.0.1/32"],
        None,
    )
    .unwrap();
    let b = std::sync::Arc::clone(t.ns("b"));
    ping_ok(&b, "10.10.0.1", 3);

    let probe = PingProbe::start(&b, "10.10.0.1", 10).unwrap();
    probe.wait_replies(50, Duration::from_secs(5)).unwrap();
    let restart = t.wg_mut("a").crash_and_restart().unwrap();
    let before = probe.replies_so_far();
    probe
        .wait_replies(before + 50, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", t.wg("a").log_tail(30)));
    let result = probe.finish().unwrap();
    let beyond = result.longest_gap.saturating_sub(restart);
    eprintln!(
        "restart {restart:?}, longest gap in replies {:?}: {beyond:?} beyond the restart",
        result.longest_gap
    );
    // The target is under 1 s beyond the restart; the bound here is generous for a loaded CI
    // machine, and still far below the 10-15 s a gateway that waits for traffic needs.
    assert!(
        beyond < Duration::from_secs(3),
        "the ping was down {:?} for a restart of {restart:?}\n{}",
        result.longest_gap,
        t.wg("a").log_tail(30)
    );
}
