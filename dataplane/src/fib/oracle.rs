//! A naive FIB: a list of routes scanned linearly. Obviously correct; the reference the fast
//! table is checked against.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{NextHop, Route};

/// Linear-scan longest-prefix match.
#[derive(Debug, Clone, Default)]
pub struct NaiveFib {
    routes: BTreeMap<IpNet, NextHop>,
}

impl NaiveFib {
    /// Insert or replace; returns the previous next hop of that exact prefix.
    pub fn insert(&mut self, prefix: IpNet, next_hop: NextHop) -> Option<NextHop> {
        self.routes.insert(prefix.trunc(), next_hop)
    }

    /// Remove exactly this prefix.
    pub fn remove(&mut self, prefix: &IpNet) -> Option<NextHop> {
        self.routes.remove(&prefix.trunc())
    }

    /// Longest-prefix match by scanning every route.
    pub fn lookup(&self, addr: IpAddr) -> Option<NextHop> {
        self.routes
            .iter()
            .filter(|(p, _)| p.contains(&addr))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(_, nh)| *nh)
    }

    /// Number of IPv4 prefixes.
    pub fn len_v4(&self) -> usize {
        self.routes
            .keys()
            .filter(|p| matches!(p, IpNet::V4(_)))
            .count()
    }

    /// Number of IPv6 prefixes.
    pub fn len_v6(&self) -> usize {
        self.routes
            .keys()
            .filter(|p| matches!(p, IpNet::V6(_)))
            .count()
    }

    /// All routes.
    pub fn routes(&self) -> Vec<Route> {
        self.routes
            .iter()
            .map(|(p, nh)| Route {
                prefix: *p,
                next_hop: *nh,
            })
            .collect()
    }
}
