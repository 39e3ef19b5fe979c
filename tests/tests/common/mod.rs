//! Shared setup for the namespace tests.
#![allow(dead_code)]

use std::time::Duration;

use isthmus_lab::{Netns, PingResult};

/// Every test calls this first: it fails loudly when not root (the tests need `ip netns`),
/// and points the lab at the `lab-tool` binary cargo built for these tests.
pub fn init() {
    assert!(
        isthmus_lab::is_root(),
        "the namespace tests need root (ip netns add); run them as root or through `cargo xtask test` in CI"
    );
    if std::env::var_os("ISTHMUS_LAB_TOOL").is_none() {
        std::env::set_var("ISTHMUS_LAB_TOOL", env!("CARGO_BIN_EXE_lab-tool"));
    }
}

/// Waits for the tunnel, then pings `count` times and asserts nothing was lost.
pub fn ping_ok(ns: &Netns, dst: &str, count: u32) -> PingResult {
    ns.wait_ping(dst, Duration::from_secs(15)).unwrap();
    let r = ns.ping(dst, count).unwrap();
    assert_eq!(
        r.lost(),
        0,
        "ping {dst} from {} lost packets:\n{}",
        ns.name(),
        r.output
    );
    r
}
