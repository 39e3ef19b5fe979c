//! Starting like the daemons it replaces: a second isthmus-dp for an interface that one
//! already serves fails with a non-zero status and leaves the running one alone; without
//! `-f`, a start-up failure prints its reason (the detached daemon's stderr goes nowhere);
//! `--version` on the three binaries.

mod common;

use std::sync::Arc;

use common::init;
use isthmus_lab::{IsthmusCp, Lab, Netns, WgIface, WgImpl, WgSpec};

/// isthmus-dp on port 51820 in `ns`, with 10.10.0.1/24 on its device.
fn isthmus(ns: &Arc<Netns>, lab: &Lab) -> WgIface {
    let spec = WgSpec {
        listen_port: 51820,
        addresses: vec!["10.10.0.1/24".into()],
        ..WgSpec::default()
    };
    WgIface::start(ns, lab, WgImpl::Isthmus, &spec).unwrap()
}

#[test]
fn a_second_instance_fails_and_leaves_the_first_alone() {
    init();
    let lab = Lab::new().unwrap();
    let ns = Arc::new(Netns::new("su1").unwrap());
    let first = isthmus(&ns, &lab);
    let bin = WgImpl::Isthmus.binary().unwrap();
    let out = ns
        .command(&bin)
        .args([first.ifname.as_str(), "--metrics", "off"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second instance started: {err}");
    assert!(err.contains("already served"), "{err}");
    assert!(first.alive(), "the first instance died");
    let shown = first.wg(&["show", &first.ifname, "listen-port"]).unwrap();
    assert_eq!(shown.trim(), "51820");
    // Its TUN device has only its own queues: the second never opened it.
    let log = first.log_tail(20);
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn a_startup_failure_without_f_prints_its_reason() {
    init();
    let ns = Netns::new("su2").unwrap();
    let bin = WgImpl::Isthmus.binary().unwrap();
    let ifname = isthmus_lab::unique_ifname("isu");
    // The control socket cannot be made under a regular file.
    let out = ns
        .command(&bin)
        .args([
            ifname.as_str(),
            "--metrics",
            "off",
            "--ctl-socket",
            "/proc/version/x.ctl",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("control socket /proc/version/x.ctl"),
        "the reason should be printed, not only an exit status: {err}"
    );
    assert!(
        ns.exec(&["ip", "link", "show", &ifname]).is_err(),
        "the failed daemon left its device behind"
    );
}

#[test]
fn every_binary_prints_its_version() {
    init();
    for (bin, name) in [
        (WgImpl::Isthmus.binary().unwrap(), "isthmus-dp"),
        (IsthmusCp::binary().unwrap(), "isthmus-cp"),
        (IsthmusCp::ctl_binary().unwrap(), "isthmusctl"),
    ] {
        let out = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --version failed");
        assert!(
            text.starts_with(&format!("{name} {}", env!("CARGO_PKG_VERSION"))),
            "{name}: {text}"
        );
    }
}

/// A `wg set` naming the device's own public key as a peer: that section is ignored, as
/// wireguard-go ignores it, and the rest of the request still applies.
#[test]
fn a_peer_with_our_own_key_is_ignored_not_an_error() {
    init();
    let lab = Lab::new().unwrap();
    let ns = Arc::new(Netns::new("su3").unwrap());
    let dp = isthmus(&ns, &lab);
    let other = isthmus_lab::Keypair::generate().unwrap();
    dp.wg(&[
        "set",
        &dp.ifname,
        "peer",
        &dp.keys.public,
        "allowed-ips",
        "10.9.9.1/32",
        "peer",
        &other.public,
        "allowed-ips",
        "10.9.9.2/32",
    ])
    .unwrap();
    let peers = dp.dump().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].public_key, other.public);
}

/// As wireguard-go: deleting the UAPI socket stops the daemon (and its device goes). And a
/// log that is not a terminal has no colour codes.
#[test]
fn deleting_the_uapi_socket_stops_the_daemon_and_logs_are_plain() {
    init();
    let lab = Lab::new().unwrap();
    let ns = Arc::new(Netns::new("su4").unwrap());
    let dp = isthmus(&ns, &lab);
    std::fs::remove_file(isthmus_lab::uapi_socket(&dp.ifname)).unwrap();
    assert!(
        ns.wait_exit(dp.pid, std::time::Duration::from_secs(3)),
        "isthmus-dp runs on without its UAPI socket"
    );
    assert!(ns.exec(&["ip", "link", "show", &dp.ifname]).is_err());
    let log = std::fs::read_to_string(&dp.log).unwrap();
    assert!(log.contains("UAPI socket deleted"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
}

/// Two isthmus-dp in one namespace (one host): the second cannot have the first's metrics
/// address, and says so instead of running on without metrics; `ISTHMUS_METRICS` (what
/// wg-quick users set) gives it its own.
#[test]
fn a_metrics_address_in_use_is_a_startup_error() {
    init();
    let lab = Lab::new().unwrap();
    let ns = Arc::new(Netns::new("su5").unwrap());
    let first = isthmus(&ns, &lab);
    let bin = WgImpl::Isthmus.binary().unwrap();
    let second = isthmus_lab::unique_ifname("ism");
    let out = ns
        .command(&bin)
        .args([second.as_str(), "--metrics", isthmus_lab::METRICS_ADDR])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its metrics: {err}");
    assert!(
        err.contains(&format!("metrics on {}", isthmus_lab::METRICS_ADDR)),
        "{err}"
    );
    assert!(first.alive());
    isthmus_lab::run(
        ns.command(&bin)
            .arg(&second)
            .env("ISTHMUS_METRICS", "127.0.0.1:9599"),
    )
    .unwrap();
    let m = isthmus_lab::scrape(&ns, "127.0.0.1:9599").unwrap();
    assert!(
        m.has("isthmus_build_info"),
        "no metrics from the second daemon"
    );
    // The detached second daemon stops when its UAPI socket goes.
    let _ = std::fs::remove_file(isthmus_lab::uapi_socket(&second));
}

/// `--log-format json`: every log line is one JSON object with a level and its fields (the
/// same `logging::init` serves isthmus-cp); a bad value is a usage error.
#[test]
fn logs_as_json_lines_for_log_shippers() {
    init();
    let ns = Netns::new("su5").unwrap();
    let bin = WgImpl::Isthmus.binary().unwrap();
    let ifname = isthmus_lab::unique_ifname("isj");
    // A start that fails after logging: the lines before the failure are what we read.
    let out = ns
        .command(&bin)
        .args([
            ifname.as_str(),
            "-f",
            "--metrics",
            "off",
            "--log-format",
            "json",
            "--ctl-socket",
            "/proc/version/x.ctl",
        ])
        .env("ISTHMUS_LOG", "debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    let logged: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with('{'))
        .collect();
    assert!(!logged.is_empty(), "no JSON lines: {err}");
    for l in &logged {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    // A bad value is refused before anything runs.
    let out = ns
        .command(&bin)
        .args(["--log-format", "yaml", ifname.as_str()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected \"text\" or \"json\""));
}
