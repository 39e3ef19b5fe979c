//! The isthmus lab: network namespaces, veth links, WireGuard implementations started inside
//! them, traffic generators, a Prometheus scraper, and reference Babel routers (babeld, BIRD)
//! with routing-table helpers for the control plane's interop tests.
//!
//! Everything here cleans up after itself through `Drop` guards, also when a test panics:
//! a [`Netns`] kills every process it spawned (by PID, and then every process still inside the
//! namespace, all of which the lab started) and deletes the namespace; a [`Lab`] removes its
//! temporary directory.
//!
//! The tests in `tests/tests/` and `cargo xtask demo` are built on this crate. All of it needs
//! root (`ip netns add`), and the tools installed by `scripts/install-deps.sh`.
#![deny(unsafe_code)]

mod babel;
pub mod babel_islands;
mod capture;
mod lab;
mod metrics;
mod netns;
pub mod package;
pub mod pcap;
mod topology;
mod traffic;
mod wg;

pub use babel::{
    add_stub_iface, babel_key_table, babeld_config, bird_config, kernel_routes, parse_babel_dump,
    parse_bird_routes, parse_ip_routes, routes_to, wait_for_no_route, wait_for_route,
    wait_for_route_dev, wait_for_route_where, BabelDump, BabelNeighbour, BabelRoute, Babeld, Bird,
    BirdRoute, Daemon, IsthmusCp, KernelRoute, PingProbe, ProbeResult, CP_METRICS_ADDR,
};
pub use capture::Capture;
pub use lab::{
    is_root, lab_tool_path, run, target_dir, unique_ifname, wggen_path, workspace_root, Lab,
};
pub use metrics::{parse_prometheus, Metrics, Sample};
pub use netns::{veth, Netns};
pub use topology::{endpoint, ip_of, Family, Topology};
pub use traffic::{IperfLoad, IperfResult, IperfTotals, PingOpts, PingResult};
pub use wg::{
    parse_dump, require_isthmus, scrape, uapi_socket, write_private_key, ConfigPeer, DumpPeer,
    IsthmusConfig, Keypair, PeerSpec, WgIface, WgImpl, WgSpec, METRICS_ADDR,
};
