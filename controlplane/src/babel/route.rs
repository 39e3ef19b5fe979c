//! The route table (RFC 8966 §3.2.6) and route selection (§3.6).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use ipnet::IpNet;

use super::packet::{RouterId, INFINITY};
use super::source::Sources;
use super::LinkId;

/// A neighbour, as routes refer to it.
pub type NeighKey = (LinkId, Ipv6Addr);

/// A route learned from a neighbour.
#[derive(Debug, Clone)]
pub struct Route {
    /// Who advertised it.
    pub neighbour: NeighKey,
    /// Originator.
    pub router_id: RouterId,
    /// Seqno.
    pub seqno: u16,
    /// Metric advertised by the neighbour (plus any import filter metric).
    pub refmetric: u16,
    /// Next hop to install.
    pub next_hop: IpAddr,
    /// When it expires (retracts, then disappears).
    pub expires: Instant,
}

/// Everything known about one prefix.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Routes, one per neighbour.
    pub routes: Vec<Route>,
    /// Index into `routes` of the selected route.
    pub selected: Option<usize>,
    /// The selection as it was last reported (to tell what changed).
    pub last: Option<Choice>,
}

/// What selection decided for a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Neighbour of the route.
    pub neighbour: NeighKey,
    /// Next hop.
    pub next_hop: IpAddr,
    /// Metric (refmetric + link cost).
    pub metric: u16,
    /// Originator.
    pub router_id: RouterId,
    /// Seqno.
    pub seqno: u16,
}

/// Switch away from the selected route only for a route this much better (hysteresis).
pub const HYSTERESIS: u16 = 16;

/// Metric of a route: refmetric plus the cost of its neighbour.
pub fn metric(refmetric: u16, cost: u16) -> u16 {
    if refmetric == INFINITY || cost == INFINITY {
        INFINITY
    } else {
        u16::try_from(u32::from(refmetric) + u32::from(cost)).unwrap_or(INFINITY)
    }
}

impl Entry {
    /// The route from `n`, if any.
    pub fn find(&self, n: NeighKey) -> Option<usize> {
        self.routes.iter().position(|r| r.neighbour == n)
    }

    /// The selected route as a [`Choice`].
    pub fn choice(&self, cost: &impl Fn(NeighKey) -> u16) -> Option<Choice> {
        let r = &self.routes[self.selected?];
        Some(Choice {
            neighbour: r.neighbour,
            next_hop: r.next_hop,
            metric: metric(r.refmetric, cost(r.neighbour)),
            router_id: r.router_id,
            seqno: r.seqno,
        })
    }

    /// Runs route selection: the feasible route of smallest finite metric, keeping the
    /// current one unless another is better by [`HYSTERESIS`]. Returns the new selection.
    pub fn select(
        &mut self,
        prefix: IpNet,
        sources: &Sources,
        cost: &impl Fn(NeighKey) -> u16,
        now: Instant,
    ) -> Option<Choice> {
        let usable = |r: &Route| {
            let m = metric(r.refmetric, cost(r.neighbour));
            (m != INFINITY && sources.feasible(prefix, r.router_id, r.seqno, r.refmetric, now))
                .then_some(m)
        };
        let mut best: Option<(usize, u16)> = None;
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(m) = usable(r) {
                if best.is_none_or(|(_, bm)| m < bm) {
                    best = Some((i, m));
                }
            }
        }
        let current = self
            .selected
            .filter(|&i| i < self.routes.len())
            .and_then(|i| usable(&self.routes[i]).map(|m| (i, m)));
        self.selected = match (current, best) {
            (Some((ci, cm)), Some((_, bm)))
                if u32::from(bm) + u32::from(HYSTERESIS) > u32::from(cm) =>
            {
                Some(ci)
            }
            (_, b) => b.map(|(i, _)| i),
        };
        self.last = self.choice(cost);
        self.last
    }
}

/// The route table.
pub type Table = HashMap<IpNet, Entry>;

/// A route as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination.
    pub prefix: IpNet,
    /// Link it was learned on.
    pub link: LinkId,
    /// The neighbour's address.
    pub neighbour: Ipv6Addr,
    /// Next hop.
    pub next_hop: IpAddr,
    /// Originator.
    pub router_id: RouterId,
    /// Seqno.
    pub seqno: u16,
    /// Advertised metric.
    pub refmetric: u16,
    /// Metric through this neighbour.
    pub metric: u16,
    /// Satisfies the feasibility condition.
    pub feasible: bool,
    /// Selected.
    pub selected: bool,
}
