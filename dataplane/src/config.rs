//! The TOML configuration file of `isthmus-dp --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::keys::Key;

/// Role of a peer's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkClass {
    /// A link inside a mesh island.
    #[default]
    Mesh,
    /// A trunk between islands.
    Trunk,
}

/// A whole, validated device configuration.
#[derive(Debug, Clone, Default)]
pub struct DeviceConfig {
    /// `[interface]`.
    pub interface: InterfaceConfig,
    /// `[[peer]]`.
    pub peers: Vec<PeerConfig>,
    /// `[[route]]`: static routes on top of allowed-IPs.
    pub routes: Vec<StaticRoute>,
}

/// `[interface]`.
#[derive(Debug, Clone, Default)]
pub struct InterfaceConfig {
    /// TUN device name.
    pub name: Option<String>,
    /// Private key (from `private_key` or `private_key_file`).
    pub private_key: Option<Key>,
    /// UDP listen port; random when absent.
    pub listen_port: Option<u16>,
    /// fwmark on the UDP socket.
    pub fwmark: Option<u32>,
    /// Addresses to put on the TUN device.
    pub address: Vec<IpNet>,
    /// TUN MTU (default 1420).
    pub mtu: Option<u16>,
    /// Prometheus listen address (default 127.0.0.1:9586).
    pub metrics: Option<SocketAddr>,
    /// Clamp TCP MSS of forwarded SYNs to the path MTU.
    pub mss_clamp: bool,
    /// Worker threads (default 2).
    pub threads: Option<usize>,
    /// Decrypted packets that match no route: "local" or "drop".
    pub unrouted: Option<String>,
    /// Control socket path.
    pub control_socket: Option<PathBuf>,
}

/// `[[peer]]`.
#[derive(Debug, Clone, Default)]
pub struct PeerConfig {
    /// Human name, used in metrics and `isthmusctl`.
    pub name: Option<String>,
    /// Public key.
    pub public_key: Key,
    /// Preshared key.
    pub preshared_key: Option<Key>,
    /// Endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs: source filter and routes to this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Link class.
    pub class: LinkClass,
}

/// Where a static route goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVia {
    /// A peer, by name or base64 public key.
    Peer(String),
    /// The TUN device.
    Local,
    /// Drop.
    Blackhole,
}

/// `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination prefix.
    pub prefix: IpNet,
    /// Next hop.
    pub via: RouteVia,
}

#[allow(dead_code)]
fn _unused(_: PathBuf) {}

/// Load a configuration file.
pub fn load(path: &std::path::Path) -> Result<DeviceConfig, String> {
    Err(format!("{}: configuration files are not supported yet", path.display()))
}
