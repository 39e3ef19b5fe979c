//! Benchmarks of isthmus.
//!
//! - [`pipeline`]: in-memory set-ups of the forwarding pipeline on the loopback backend (a
//!   pair, and a relay through a hub) that the criterion bench `benches/pipeline.rs` drives.
//! - [`tunnel`], [`report`]: the side-by-side tunnel benchmark in network namespaces
//!   (kernel forwarding, kernel WireGuard, wireguard-go, boringtun-cli, isthmus-dp), run by
//!   the `isthmus-tunnel-bench` binary that `cargo xtask bench` builds and runs. The
//!   namespaces, links, implementations and traffic tools are the lab crate's
//!   ([`isthmus_lab`]); [`interrupt`] stops a run cleanly on Ctrl-C.
//! - [`flood`]: handshake floods against a hub in namespaces (`lab-tool wg-attack`), run by
//!   the same binary.
//! - [`capacity`]: relay capacity of each implementation on one core, driven by [`wggen`],
//!   with a ChaCha20-Poly1305 ceiling as the reference; run by the same binary.
//! - [`wggen`]: a WireGuard packet generator and sink (boringtun sessions, pre-encrypted
//!   transport packets, sendmmsg/recvmmsg), run inside namespaces by the `isthmus-wggen`
//!   binary, so that a gateway's relay capacity is measured without wireguard-go spokes.

pub mod capacity;
pub mod failover;
pub mod flood;
pub mod interrupt;
pub mod pipeline;
pub mod report;
pub mod tunnel;
pub mod wggen;
