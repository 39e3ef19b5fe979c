//! The control channel: a Unix stream socket owned by the data plane, with versioned,
//! length-prefixed messages ([`proto`]), served by [`server`]. `isthmusctl` uses it today; the
//! control plane will use it to push routes and exchange Babel packets with tunnel peers.

pub mod proto;
pub mod server;
