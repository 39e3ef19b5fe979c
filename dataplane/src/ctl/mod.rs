//! The control channel: a Unix stream socket owned by the data plane, with versioned,
//! length-prefixed messages ([`proto`]), served by [`server`]. `isthmusctl` uses it today; the
//! control plane will use it to push routes and exchange Babel packets with tunnel peers.

pub mod proto;
pub mod server;

/// Where isthmus keeps its sockets by default: the data plane's control socket
/// (`IFNAME.ctl`) and the control plane's status socket (`IFNAME.cp`).
pub const RUN_DIR: &str = "/var/run/isthmus";
