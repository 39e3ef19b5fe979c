//! The Babel routing protocol (RFC 8966), sans I/O.
//!
//! A [`Router`] is driven from outside, in the style of quinn-proto: [`Router::handle`] a
//! received packet, [`Router::handle_timeout`] when [`Router::poll_timeout`] says so, and
//! drain [`Router::poll_transmit`] (packets to send on a link) and [`Router::poll_event`]
//! (selected routes that changed). It never reads a clock, opens a socket or spawns a thread:
//! time is the `now` passed in, randomness (jitter) comes from a generator seeded with the
//! router-id. The daemon (`crate::daemon`) and the simulator (`crate::sim`) are its drivers.
//!
//! Files follow the RFC's concepts: [`packet`] (§4), [`neighbour`] (§3.4, Appendix A),
//! [`auth`] (RFC 8967: MACs, packet counters, challenges),
//! [`link`] (a link's parameters and class: Appendix A's costs, the intervals),
//! [`source`] (§3.5.1), [`route`] (§3.2.6, §3.6), [`request`] (§3.8), [`limits`] (the
//! bounds of every table that neighbours can grow), and this module, the node that ties
//! them together (§3.5.4 update processing, §3.7 route acquisition and triggered updates,
//! §3.8 requests, §4.6.2 acknowledgments).

pub mod auth;
pub mod limits;
pub mod link;
pub mod neighbour;
pub mod packet;
pub mod request;
mod resend;
pub mod route;
pub mod source;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

pub use auth::{Algorithm, AuthCounters, MacKey, Refused};
pub use limits::{Limits, Table};
pub use link::{CostModel, LinkClass, LinkOverrides, LinkParams};
use neighbour::{cs, to_cs, Neighbour};
use packet::{Msg, RouterId, Writer, INFINITY};
pub use route::RouteInfo;
use route::{Choice, NeighKey};
use source::{seqno_gt, Sources};

/// A link, as numbered by the driver (an interface or a tunnel peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u32);

/// A link's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Name (interface or peer), for filters and display.
    pub name: String,
    /// Parameters.
    pub params: LinkParams,
    /// Our link-local address on it (packets leave from it; IHUs are addressed to it).
    pub address: Ipv6Addr,
    /// Our IPv4 address on it, announced as next hop for IPv4 routes.
    pub ipv4: Option<Ipv4Addr>,
    /// Without an IPv4 address, announce IPv4 routes with an IPv6 next hop (RFC 9229).
    pub v4_via_v6: bool,
    /// Largest Babel packet (UDP payload) on the link.
    pub max_packet: usize,
    /// MAC keys (RFC 8967): when there are any, every packet sent is signed with each, and
    /// a packet received is processed only with a right MAC for one of them and a fresh
    /// packet counter.
    pub keys: Vec<MacKey>,
}

/// Import and export policy: `None` refuses, `Some(extra)` accepts adding `extra` to the metric.
pub trait Policy {
    /// A route learned on `link`.
    fn import(&self, link: &str, prefix: &IpNet) -> Option<u16>;
    /// A route about to be advertised on `link`.
    fn export(&self, link: &str, prefix: &IpNet) -> Option<u16>;
}

/// Accepts everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl Policy for AcceptAll {
    fn import(&self, _: &str, _: &IpNet) -> Option<u16> {
        Some(0)
    }
    fn export(&self, _: &str, _: &IpNet) -> Option<u16> {
        Some(0)
    }
}

/// A packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// On which link.
    pub link: LinkId,
    /// To whom: `None` for the multicast group (ff02::1:6), else a neighbour.
    pub dest: Option<Ipv6Addr>,
    /// The Babel packet (UDP payload).
    pub bytes: Vec<u8>,
}

/// The route selected for a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// Link of the next hop.
    pub link: LinkId,
    /// Next hop address.
    pub next_hop: IpAddr,
    /// Metric.
    pub metric: u16,
    /// Originator.
    pub router_id: RouterId,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The selected route for `prefix` changed (`None`: no route any more).
    Route {
        /// Destination.
        prefix: IpNet,
        /// The new route.
        route: Option<Selected>,
    },
    /// A neighbour appeared or went away.
    Neighbour {
        /// Its link.
        link: LinkId,
        /// Its address.
        address: Ipv6Addr,
        /// Appeared.
        up: bool,
    },
}

/// A neighbour as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourInfo {
    /// Link.
    pub link: LinkId,
    /// Link-local address.
    pub address: Ipv6Addr,
    /// Multicast hello history (most recent in the top bit).
    pub reach: u16,
    /// Unicast hello history.
    pub unicast_reach: u16,
    /// Our cost of hearing it.
    pub rxcost: u16,
    /// Its cost of hearing us.
    pub txcost: u16,
    /// Smoothed RTT.
    pub rtt: Option<Duration>,
    /// RTT penalty in the cost.
    pub rtt_penalty: u16,
    /// Link cost used by routes.
    pub cost: u16,
}

/// Counters of what the node did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Packets received and accepted.
    pub packets_rx: u64,
    /// Packets refused (bad header, non-link-local source, unknown link).
    pub packets_bad: u64,
    /// Packets sent.
    pub packets_tx: u64,
    /// TLVs received by type.
    pub tlv_rx: [u64; packet::tlv::COUNT],
    /// TLVs sent by type.
    pub tlv_tx: [u64; packet::tlv::COUNT],
    /// TLVs skipped: unknown type.
    pub tlv_unknown: u64,
    /// TLVs skipped: unknown mandatory sub-TLV.
    pub tlv_mandatory: u64,
    /// TLVs skipped: malformed.
    pub tlv_malformed: u64,
    /// Updates refused as unfeasible.
    pub updates_unfeasible: u64,
    /// Updates refused by the import policy.
    pub updates_filtered: u64,
    /// Seqno requests forwarded.
    pub requests_forwarded: u64,
    /// Seqno requests suppressed as duplicates.
    pub requests_duplicate: u64,
    /// Urgent updates resent.
    pub resends: u64,
    /// Acks received for our requests.
    pub acks_rx: u64,
    /// Selected-route changes.
    pub route_changes: u64,
    /// Authentication (RFC 8967) on links with keys.
    pub auth: AuthCounters,
    /// New entries refused at a table's bound, by [`Table`] (in [`Table::ALL`]'s order).
    pub limit_reached: [u64; Table::COUNT],
}

impl Counters {
    /// New entries of `table` refused at its bound.
    pub fn limit_reached(&self, table: Table) -> u64 {
        self.limit_reached[table as usize]
    }
}

/// Node-wide configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our router-id.
    pub router_id: RouterId,
    /// Hop count of the seqno requests we originate.
    pub request_hops: u8,
    /// Wall-clock milliseconds at start, if the driver has a clock. Seeds the route seqno
    /// and the hello seqnos from time, so that after a restart neighbours see our hellos
    /// continue where they left off (their hello history survives) and our routes as newer.
    pub wall_clock_ms: Option<u64>,
    /// Secret seed of the PC indices and challenge nonces (RFC 8967); the daemon takes it
    /// from the OS. `None`: derived from the router-id (the simulator's repeatable runs).
    pub auth_seed: Option<[u8; 32]>,
    /// Bounds of the tables neighbours can grow ([`Router::set_limits`] changes them).
    pub limits: Limits,
}

impl Config {
    /// Defaults with the given router-id.
    pub fn new(router_id: RouterId) -> Self {
        Self {
            router_id,
            request_hops: 64,
            wall_clock_ms: None,
            auth_seed: None,
            limits: Limits::default(),
        }
    }
}

struct Link {
    cfg: LinkConfig,
    /// Our packet counter and index on the link (used when it has keys).
    sender: auth::Sender,
    hello_seqno: u16,
    next_hello: Instant,
    next_update: Instant,
}

/// Messages waiting to go out on a link.
#[derive(Default)]
struct Outbox {
    /// Hello, IHUs, requests, acks, in order.
    msgs: Vec<Msg>,
    /// Prefixes to announce (current state is read when flushing).
    updates: BTreeSet<IpNet>,
    /// Announce everything.
    full: bool,
}

const FLUSH_DELAY: Duration = Duration::from_millis(10);
const HOUSEKEEPING: Duration = Duration::from_millis(250);
const RESEND_DELAY: Duration = Duration::from_millis(500);
const URGENT_RESENDS: u8 = 2;
/// A tracked neighbour silent this long is forgotten (it is challenged if it comes back).
const AUTH_PEER_IDLE: Duration = Duration::from_secs(600);

/// A Babel node.
pub struct Router {
    cfg: Config,
    epoch: Instant,
    seqno: u16,
    rng: u64,
    links: BTreeMap<LinkId, Link>,
    neighbours: BTreeMap<NeighKey, Neighbour>,
    /// Packet counters and challenges of neighbours on links with keys.
    auth_peers: BTreeMap<NeighKey, auth::Peer>,
    random: auth::Random,
    routes: route::Table,
    /// Learned routes in `routes` (the sum of their entries' lengths), for
    /// [`Limits::routes`].
    n_routes: usize,
    /// No route expires before this (a lower bound; `None`: no routes), so that
    /// housekeeping walks the table only when something may have expired.
    next_expiry: Option<Instant>,
    sources: Sources,
    xroutes: BTreeMap<IpNet, u16>,
    requests: request::Pending,
    resends: resend::Resends,
    out: BTreeMap<(LinkId, Option<Ipv6Addr>), Outbox>,
    flush_at: Option<Instant>,
    housekeeping_at: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_opaque: u16,
    counters: Counters,
    policy: Box<dyn Policy + Send>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("router_id", &self.cfg.router_id)
            .field("links", &self.links.len())
            .field("neighbours", &self.neighbours.len())
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl Router {
    /// A node with no links yet.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let rng = u64::from_be_bytes(cfg.router_id) | 1;
        let seed = cfg.auth_seed.unwrap_or_else(|| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&cfg.router_id);
            s
        });
        Self {
            auth_peers: BTreeMap::new(),
            random: auth::Random::new(seed),
            seqno: cfg.wall_clock_ms.map_or(0, |ms| (ms / 4000) as u16),
            epoch: now,
            rng,
            links: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            routes: route::Table::new(),
            n_routes: 0,
            next_expiry: None,
            sources: Sources::default(),
            xroutes: BTreeMap::new(),
            requests: request::Pending::default(),
            resends: resend::Resends::default(),
            out: BTreeMap::new(),
            flush_at: None,
            housekeeping_at: now + HOUSEKEEPING,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_opaque: 1,
            counters: Counters::default(),
            policy: Box::new(AcceptAll),
            cfg,
        }
    }

    /// Replaces the import/export policy.
    pub fn set_policy(&mut self, policy: Box<dyn Policy + Send>) {
        self.policy = policy;
    }

    /// Our router-id.
    pub fn router_id(&self) -> RouterId {
        self.cfg.router_id
    }

    /// Our current seqno.
    pub fn seqno(&self) -> u16 {
        self.seqno
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The bounds of the tables.
    pub fn limits(&self) -> Limits {
        self.cfg.limits
    }

    /// Changes the bounds (a reload). A lowered bound applies to new entries; what a table
    /// holds over it stays until it goes by itself.
    pub fn set_limits(&mut self, limits: Limits) {
        self.cfg.limits = limits;
    }

    /// Entries in each bounded table, with its bound, in [`Table::ALL`]'s order.
    pub fn table_usage(&self) -> [(Table, usize, usize); Table::COUNT] {
        let busiest_link = {
            let mut most = 0;
            let mut run = (None, 0);
            for k in self.neighbours.keys() {
                run = if run.0 == Some(k.0) {
                    (run.0, run.1 + 1)
                } else {
                    (Some(k.0), 1)
                };
                most = most.max(run.1);
            }
            most
        };
        Table::ALL.map(|t| {
            let n = match t {
                Table::Neighbours => self.neighbours.len(),
                Table::LinkNeighbours => busiest_link,
                Table::AuthPeers => self.auth_peers.len(),
                Table::Routes => self.n_routes,
                Table::Sources => self.sources.len(),
                Table::Requests => self.requests.len(),
                Table::Resends => self.resends.len(),
            };
            (t, n, self.cfg.limits.of(t))
        })
    }

    /// Counts a new entry of `table` refused at its bound.
    fn refuse(&mut self, table: Table) {
        self.counters.limit_reached[table as usize] += 1;
    }

    fn jitter(&mut self, d: Duration, fraction: u32) -> Duration {
        // xorshift64: deterministic per router-id.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = d / fraction;
        let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX).max(1);
        d - span + Duration::from_nanos(self.rng % nanos)
    }

    /// Our clock for RFC 9616 timestamps: microseconds since the node started, wrapping.
    fn timestamp(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_micros() & 0xFFFF_FFFF) as u32
    }

    /// Adds a link (or replaces its configuration) and starts speaking on it.
    pub fn add_link(&mut self, id: LinkId, cfg: LinkConfig, now: Instant) {
        let first_update = now + self.jitter(Duration::from_millis(100), 1);
        match self.links.get_mut(&id) {
            Some(l) => l.cfg = cfg,
            None => {
                let hello_seqno = match self.cfg.wall_clock_ms {
                    Some(ms) => {
                        let iv = cfg.params.hello_interval.as_millis().max(1) as u64;
                        (ms / iv) as u16
                    }
                    None => (self.rng & 0xFFFF) as u16,
                };
                self.links.insert(
                    id,
                    Link {
                        cfg,
                        sender: auth::Sender::new(&mut self.random),
                        hello_seqno,
                        next_hello: now,
                        next_update: first_update,
                    },
                );
                // Ask for everything straight away.
                self.queue(id, None, Msg::RouteRequest { prefix: None }, now);
            }
        }
    }

    /// Removes a link: its neighbours and their routes go.
    pub fn remove_link(&mut self, id: LinkId, now: Instant) {
        if self.links.remove(&id).is_none() {
            return;
        }
        self.link_down(id, now);
        self.auth_peers.retain(|k, _| k.0 != id);
        self.out.retain(|k, _| k.0 != id);
        self.resends.remove_link(id);
    }

    /// The link is known to be down (the data plane's liveness probe said so): its neighbours
    /// go now, as if their hellos had timed out, and with them their routes, each switched to
    /// the best feasible alternative or retracted in this step (triggered updates follow).
    /// A neighbour heard again on the link comes back as a new one.
    pub fn link_down(&mut self, id: LinkId, now: Instant) {
        let gone: Vec<NeighKey> = self
            .neighbours
            .keys()
            .filter(|k| k.0 == id)
            .copied()
            .collect();
        for k in gone {
            self.drop_neighbour(k, now);
        }
    }

    /// The link works again: a hello goes out now and the whole table is requested, instead
    /// of waiting for the next hello and update intervals.
    pub fn link_up(&mut self, id: LinkId, now: Instant) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        l.next_hello = now;
        self.queue(id, None, Msg::RouteRequest { prefix: None }, now);
    }

    /// The configured links.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, &LinkConfig)> {
        self.links.iter().map(|(id, l)| (*id, &l.cfg))
    }

    /// Originates `prefix` with `metric` (usually 0).
    pub fn originate(&mut self, prefix: IpNet, metric: u16, now: Instant) {
        let prefix = prefix.trunc();
        if self.xroutes.insert(prefix, metric) != Some(metric) {
            if self
                .routes
                .get(&prefix)
                .is_some_and(|e| e.selected.is_some())
            {
                // Our own origination takes over from a learned route.
                if let Some(e) = self.routes.get_mut(&prefix) {
                    e.selected = None;
                    e.last = None;
                }
                self.events.push_back(Event::Route {
                    prefix,
                    route: None,
                });
            }
            self.announce(prefix, true, now);
        }
    }

    /// Stops originating `prefix` (retracting it, unless a learned route takes over).
    pub fn withdraw(&mut self, prefix: IpNet, now: Instant) {
        let prefix = prefix.trunc();
        if self.xroutes.remove(&prefix).is_some() {
            self.reselect(prefix, now);
            self.announce(prefix, true, now);
        }
    }

    /// Whether we originate `prefix`.
    pub fn originates(&self, prefix: &IpNet) -> bool {
        self.xroutes.contains_key(prefix)
    }

    /// Prefixes we originate.
    pub fn xroutes(&self) -> impl Iterator<Item = (IpNet, u16)> + '_ {
        self.xroutes.iter().map(|(p, m)| (*p, *m))
    }

    /// Retracts everything we announce (clean shutdown); flushes at once.
    pub fn retract_all(&mut self, now: Instant) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            // A wildcard retraction withdraws every route we advertised on the link.
            self.queue(
                id,
                None,
                Msg::Update {
                    prefix: None,
                    v4_via_v6: false,
                    interval: 0,
                    seqno: 0,
                    metric: INFINITY,
                    router_id: [0; 8],
                    next_hop: None,
                },
                now,
            );
        }
        self.xroutes.clear();
        self.flush(now);
    }

    /// When [`Router::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.housekeeping_at;
        if let Some(f) = self.flush_at {
            t = t.min(f);
        }
        for l in self.links.values() {
            t = t.min(l.next_hello).min(l.next_update);
        }
        for n in self.neighbours.values() {
            if let Some(x) = n.next_timer() {
                t = t.min(x);
            }
        }
        Some(t)
    }

    /// A packet to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// An event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            let Some(l) = self.links.get(&id) else {
                continue;
            };
            let (hello_due, update_due) = (l.next_hello <= now, l.next_update <= now);
            if hello_due {
                self.send_hello(id, now);
            }
            if update_due {
                let iv = self.links[&id].cfg.params.update_interval;
                let next = now + self.jitter(iv, 4);
                if let Some(l) = self.links.get_mut(&id) {
                    l.next_update = next;
                }
                self.out.entry((id, None)).or_default().full = true;
                self.schedule_flush(now);
            }
        }
        // Neighbour timers: missed hellos, IHU expiry.
        let keys: Vec<NeighKey> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.next_timer().is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(n) = self.neighbours.get_mut(&k) {
                while n.multicast.tick(now) {}
                while n.unicast.tick(now) {}
                if n.ihu_expires.is_some_and(|t| t <= now) {
                    n.ihu_expires = None;
                    n.txcost = INFINITY;
                }
                if n.is_dead() {
                    self.drop_neighbour(k, now);
                } else {
                    self.update_cost(k, now);
                }
            }
        }
        if self.housekeeping_at <= now {
            self.housekeeping_at = now + HOUSEKEEPING;
            self.housekeeping(now);
        }
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush(now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.auth_peers
            .retain(|_, p| now.saturating_duration_since(p.seen) < AUTH_PEER_IDLE);
        // Route expiry: first retract, later forget.
        if self.next_expiry.is_some_and(|t| t <= now) {
            let mut touched = Vec::new();
            let mut next: Option<Instant> = None;
            let mut removed = 0;
            for (p, e) in self.routes.iter_mut() {
                let sel = e.selected.map(|i| e.routes[i].neighbour);
                let mut changed = false;
                let before = e.routes.len();
                e.routes.retain_mut(|r| {
                    if r.expires > now {
                        next = Some(next.map_or(r.expires, |t| t.min(r.expires)));
                        return true;
                    }
                    changed = true;
                    if r.refmetric != INFINITY {
                        r.refmetric = INFINITY;
                        r.expires = now + Duration::from_secs(60);
                        next = Some(next.map_or(r.expires, |t| t.min(r.expires)));
                        true
                    } else {
                        false
                    }
                });
                removed += before - e.routes.len();
                e.selected = sel.and_then(|s| e.find(s));
                if changed {
                    touched.push(*p);
                }
            }
            self.n_routes -= removed;
            self.next_expiry = next;
            for p in touched {
                self.reselect(p, now);
            }
            self.routes.retain(|_, e| !e.routes.is_empty());
        }
        self.sources.gc(now);
        // Our own seqno requests: resend with backoff, give up after a few.
        for (link, dest, msg) in self.requests.due(now) {
            self.queue(link, dest, msg, now);
        }
        // Urgent updates.
        for r in self.resends.due(now, now + RESEND_DELAY) {
            let (link, dest, prefix, opaque) = (r.link, r.dest, r.prefix, r.opaque);
            self.counters.resends += 1;
            if let Some(o) = opaque {
                self.queue(
                    link,
                    dest,
                    Msg::AckReq {
                        opaque: o,
                        interval: to_cs(RESEND_DELAY),
                    },
                    now,
                );
            }
            self.out
                .entry((link, dest))
                .or_default()
                .updates
                .insert(prefix);
            self.schedule_flush(now);
        }
    }

    fn schedule_flush(&mut self, now: Instant) {
        let at = now + FLUSH_DELAY;
        self.flush_at = Some(self.flush_at.map_or(at, |t| t.min(at)));
    }

    fn queue(&mut self, link: LinkId, dest: Option<Ipv6Addr>, msg: Msg, now: Instant) {
        self.out.entry((link, dest)).or_default().msgs.push(msg);
        self.schedule_flush(now);
    }

    fn send_hello(&mut self, id: LinkId, now: Instant) {
        let ts = self.timestamp(now);
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        l.hello_seqno = l.hello_seqno.wrapping_add(1);
        let p = l.cfg.params;
        let seqno = l.hello_seqno;
        let hello = Msg::Hello {
            unicast: false,
            seqno,
            interval: to_cs(p.hello_interval),
            timestamp: p.timestamps.then_some(ts),
        };
        // Jitter around the interval, not below it, so hellos keep pace with the clock.
        let next = now + self.jitter(p.hello_interval, 8) + p.hello_interval / 16;
        if let Some(l) = self.links.get_mut(&id) {
            l.next_hello = next;
        }
        let mut msgs = vec![hello];
        for n in self.neighbours.values().filter(|n| n.link == id) {
            // Never claim a neighbour unreachable before we have heard it enough to know:
            // after our restart, the neighbour's txcost then survives until we do.
            if !n.ever_up && n.rxcost(&p) == INFINITY {
                continue;
            }
            msgs.push(Msg::Ihu {
                rxcost: n.rxcost(&p),
                interval: to_cs(p.ihu_interval),
                address: Some(IpAddr::V6(n.address)),
                timestamp: if p.timestamps { n.hello_ts } else { None },
            });
        }
        let ob = self.out.entry((id, None)).or_default();
        // Hello and IHUs go first in the packet, so RTT samples pair them.
        ob.msgs.splice(0..0, msgs);
        self.flush_at = Some(now);
    }

    /// Handles a Babel packet received on `link` from `from` (the UDP source address).
    pub fn handle(&mut self, now: Instant, link: LinkId, from: IpAddr, bytes: &[u8]) {
        let IpAddr::V6(src) = from else {
            self.counters.packets_bad += 1;
            return;
        };
        if !src.is_unicast_link_local() || !self.links.contains_key(&link) {
            // RFC 8966 §4: only link-local sources.
            self.counters.packets_bad += 1;
            return;
        }
        let (msgs, skipped) = match packet::parse(bytes) {
            Ok(x) => x,
            Err(_) => {
                self.counters.packets_bad += 1;
                return;
            }
        };
        if !self.links[&link].cfg.keys.is_empty()
            && !self.authenticate(now, link, src, bytes, &msgs)
        {
            return;
        }
        self.counters.packets_rx += 1;
        self.counters.tlv_unknown += u64::from(skipped.unknown_tlv);
        self.counters.tlv_mandatory += u64::from(skipped.mandatory);
        self.counters.tlv_malformed += u64::from(skipped.malformed) + u64::from(skipped.overrun);
        for m in &msgs {
            self.counters.tlv_rx[usize::from(m.kind())] += 1;
        }
        let key = (link, src);
        let params = self.links[&link].cfg.params;
        let mut fresh = false;
        if !self.neighbours.contains_key(&key) {
            // Only a Hello makes a neighbour (anything else from a stranger is ignored), so
            // stray packets cannot grow the table.
            if !msgs
                .iter()
                .any(|m| matches!(m, Msg::Hello { interval, .. } if *interval > 0))
            {
                return;
            }
            // A neighbour over a bound is ignored (it cannot make routes, we send it no
            // IHU): the ones we have keep working.
            let limits = self.cfg.limits;
            let on_link = || {
                let lo = (link, Ipv6Addr::UNSPECIFIED);
                let hi = (link, Ipv6Addr::from(u128::MAX));
                self.neighbours.range(lo..=hi).count()
            };
            let refused = if self.neighbours.len() >= limits.neighbours {
                Some(Table::Neighbours)
            } else if on_link() >= limits.neighbours_per_link {
                Some(Table::LinkNeighbours)
            } else {
                None
            };
            if let Some(t) = refused {
                self.refuse(t);
                return;
            }
            self.neighbours.insert(key, Neighbour::new(link, src));
            fresh = true;
        }
        // Pass 1: hellos (so IHUs and updates in the same packet see the neighbour's state).
        let mut hello_ts = None;
        for m in &msgs {
            if let Msg::Hello {
                unicast,
                seqno,
                interval,
                timestamp,
            } = *m
            {
                let ts_now = self.timestamp(now);
                let n = self.neighbours.get_mut(&key).expect("inserted above");
                if unicast {
                    n.unicast.hello(seqno, interval, now);
                } else {
                    n.multicast.hello(seqno, interval, now);
                }
                if let Some(t) = timestamp {
                    n.hello_ts = Some((t, ts_now));
                    hello_ts = Some(t);
                }
            }
        }
        let our = self.links[&link].cfg.address;
        let our4 = self.links[&link].cfg.ipv4;
        let now_ts = self.timestamp(now);
        // Pass 2: the rest, in order.
        for m in msgs {
            match m {
                // Hellos were pass 1; authentication's TLVs were read before.
                Msg::Hello { .. }
                | Msg::Pc { .. }
                | Msg::ChallengeRequest { .. }
                | Msg::ChallengeReply { .. } => {}
                Msg::Ihu {
                    rxcost,
                    interval,
                    address,
                    timestamp,
                } => {
                    let for_us = match address {
                        None => true,
                        Some(IpAddr::V6(a)) => a == our,
                        Some(IpAddr::V4(a)) => Some(a) == our4,
                    };
                    if !for_us {
                        continue;
                    }
                    let n = self.neighbours.get_mut(&key).expect("inserted above");
                    n.txcost = rxcost;
                    let hold = cs(interval).max(Duration::from_millis(100)) * 7 / 2;
                    n.ihu_expires = Some(now + hold);
                    if let (Some((origin, recv)), Some(sent), true) =
                        (timestamp, hello_ts, params.timestamps)
                    {
                        // RFC 9616 §3.2: (t4 - t1) - (t3 - t2).
                        let total = now_ts.wrapping_sub(origin);
                        let held = sent.wrapping_sub(recv);
                        let rtt = total.wrapping_sub(held);
                        if origin != 0 && total < 60_000_000 && rtt < total.max(1) + 1 {
                            n.rtt_sample(Duration::from_micros(u64::from(rtt)), now);
                        }
                    }
                }
                Msg::AckReq { opaque, .. } => {
                    self.queue(link, Some(src), Msg::Ack { opaque }, now);
                    self.flush_at = Some(now);
                }
                Msg::Ack { opaque } => {
                    if self.resends.acked(opaque) {
                        self.counters.acks_rx += 1;
                    }
                }
                Msg::Update {
                    prefix,
                    v4_via_v6: _,
                    interval,
                    seqno,
                    metric,
                    router_id,
                    next_hop,
                } => self.on_update(
                    now, key, prefix, interval, seqno, metric, router_id, next_hop,
                ),
                Msg::RouteRequest { prefix } => {
                    let ob = self.out.entry((link, None)).or_default();
                    match prefix {
                        None => ob.full = true,
                        Some(p) => {
                            ob.updates.insert(p);
                        }
                    }
                    self.schedule_flush(now);
                }
                Msg::SeqnoRequest {
                    prefix,
                    seqno,
                    hop_count,
                    router_id,
                } => self.on_seqno_request(now, key, prefix, seqno, hop_count, router_id),
            }
        }
        if fresh {
            self.events.push_back(Event::Neighbour {
                link,
                address: src,
                up: true,
            });
            // Tell it we hear it, and ask for its routes, without waiting for timers.
            self.send_hello(link, now);
            self.queue(link, Some(src), Msg::RouteRequest { prefix: None }, now);
        }
        self.update_cost(key, now);
    }

    /// RFC 8967 on a link with keys: the MAC first, then the neighbour's packet counter and
    /// our challenges. Queues what must be answered (a Challenge Request or Reply, unicast,
    /// sent at once) and says whether the packet is to be processed.
    fn authenticate(
        &mut self,
        now: Instant,
        link: LinkId,
        src: Ipv6Addr,
        bytes: &[u8],
        msgs: &[Msg],
    ) -> bool {
        let cfg = &self.links[&link].cfg;
        let multicast = match auth::verify(bytes, &cfg.keys, src, cfg.address) {
            Ok(m) => m,
            Err(why) => {
                self.counters.auth.count(why);
                return false;
            }
        };
        let key = (link, src);
        if !self.auth_peers.contains_key(&key)
            && self.auth_peers.len() >= self.cfg.limits.neighbours
        {
            self.refuse(Table::AuthPeers);
            return false;
        }
        let peer = self
            .auth_peers
            .entry(key)
            .or_insert_with(|| auth::Peer::new(now));
        let checked = peer.check(
            msgs,
            multicast,
            now,
            &mut self.counters.auth,
            &mut self.random,
        );
        if let Some(nonce) = checked.request {
            let nonce = nonce.to_vec();
            self.queue(link, Some(src), Msg::ChallengeRequest { nonce }, now);
            self.flush_at = Some(now);
        }
        if let Some(nonce) = checked.reply {
            self.queue(link, Some(src), Msg::ChallengeReply { nonce }, now);
            self.flush_at = Some(now);
        }
        if checked.learned {
            // Its earlier hellos were refused while it was a stranger: a hello now, which it
            // answers with its own at once if we are new to it, saves a hello interval.
            self.send_hello(link, now);
        }
        checked.accept.is_none()
    }

    /// Recomputes a neighbour's cost and reselects its routes if it changed.
    fn update_cost(&mut self, key: NeighKey, now: Instant) {
        let Some(params) = self.links.get(&key.0).map(|l| l.cfg.params) else {
            return;
        };
        let Some(n) = self.neighbours.get_mut(&key) else {
            return;
        };
        let cost = n.compute_cost(&params, now);
        let rxcost = n.rxcost(&params);
        if rxcost != INFINITY && n.rxcost_told == INFINITY {
            // We hear it now: tell it in an IHU at once, not with our next hello (up to a
            // hello interval later), so that it can use us, and we its routes, a hello
            // interval sooner.
            let ihu = Msg::Ihu {
                rxcost,
                interval: to_cs(params.ihu_interval),
                address: Some(IpAddr::V6(n.address)),
                timestamp: if params.timestamps { n.hello_ts } else { None },
            };
            self.out.entry((key.0, None)).or_default().msgs.push(ihu);
            self.flush_at = Some(now);
        }
        let Some(n) = self.neighbours.get_mut(&key) else {
            return;
        };
        n.rxcost_told = rxcost;
        if cost == n.cost {
            return;
        }
        let was_up = n.cost != INFINITY;
        n.cost = cost;
        if n.rxcost(&params) != INFINITY {
            n.ever_up = true;
        }
        if !was_up && cost != INFINITY {
            // A neighbour that became usable: give it our table.
            self.out.entry((key.0, None)).or_default().full = true;
            self.schedule_flush(now);
        }
        let prefixes = self.prefixes_via(key);
        for p in prefixes {
            self.reselect(p, now);
        }
    }

    fn drop_neighbour(&mut self, key: NeighKey, now: Instant) {
        if self.neighbours.remove(&key).is_none() {
            return;
        }
        self.events.push_back(Event::Neighbour {
            link: key.0,
            address: key.1,
            up: false,
        });
        let prefixes = self.prefixes_via(key);
        for p in prefixes {
            if let Some(e) = self.routes.get_mut(&p) {
                let sel = e.selected.map(|i| e.routes[i].neighbour);
                let before = e.routes.len();
                e.routes.retain(|r| r.neighbour != key);
                self.n_routes -= before - e.routes.len();
                e.selected = sel.and_then(|s| e.find(s));
            }
            self.reselect(p, now);
        }
        self.routes.retain(|_, e| !e.routes.is_empty());
    }

    fn cost_of(neighbours: &BTreeMap<NeighKey, Neighbour>) -> impl Fn(NeighKey) -> u16 + '_ {
        move |k| neighbours.get(&k).map_or(INFINITY, |n| n.cost)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_update(
        &mut self,
        now: Instant,
        key: NeighKey,
        prefix: Option<IpNet>,
        interval: u16,
        seqno: u16,
        metric: u16,
        router_id: RouterId,
        next_hop: Option<IpAddr>,
    ) {
        let Some(prefix) = prefix else {
            // Wildcard retraction: everything from this neighbour.
            let prefixes: Vec<IpNet> = self
                .routes
                .iter_mut()
                .filter_map(|(p, e)| {
                    let mut hit = false;
                    for r in e.routes.iter_mut().filter(|r| r.neighbour == key) {
                        r.refmetric = INFINITY;
                        hit = true;
                    }
                    hit.then_some(*p)
                })
                .collect();
            for p in prefixes {
                self.reselect(p, now);
            }
            return;
        };
        if router_id == self.cfg.router_id || martian(&prefix) {
            return;
        }
        let next_hop = match (prefix, next_hop) {
            (_, Some(nh)) => nh,
            (IpNet::V6(_), None) => IpAddr::V6(key.1),
            // IPv4 without a next hop: only via the IPv6 source (RFC 9229).
            (IpNet::V4(_), None) => IpAddr::V6(key.1),
        };
        let link_name = self.links[&key.0].cfg.name.clone();
        let metric = match self.policy.import(&link_name, &prefix) {
            Some(extra) if metric != INFINITY => route::metric(metric, extra),
            Some(_) => metric,
            None => {
                self.counters.updates_filtered += 1;
                INFINITY
            }
        };
        let feasible = self.sources.feasible(prefix, router_id, seqno, metric, now);
        let hold = if interval == 0 {
            Duration::from_secs(60)
        } else {
            cs(interval) * 7 / 2
        };
        let expires = now + hold;
        let entry = self.routes.entry(prefix).or_default();
        let idx = entry.find(key);
        match idx {
            None => {
                if metric == INFINITY {
                    if entry.routes.is_empty() {
                        self.routes.remove(&prefix);
                    }
                    return;
                }
                if !feasible {
                    self.counters.updates_unfeasible += 1;
                    let have_route = entry.selected.is_some();
                    if entry.routes.is_empty() {
                        self.routes.remove(&prefix);
                    }
                    if !have_route {
                        // §3.8.2.2: without a route, ask this neighbour's source for a
                        // seqno that makes its route feasible.
                        self.request_seqno(Some(key), prefix, router_id, now);
                    }
                    return;
                }
                if self.n_routes >= self.cfg.limits.routes {
                    // Refused, as babeld refuses: the routes the node has keep working.
                    if entry.routes.is_empty() {
                        self.routes.remove(&prefix);
                    }
                    self.refuse(Table::Routes);
                    return;
                }
                // Most prefixes have one or two routes: grow by one, not to Vec's minimum
                // of 4 (a 100k-route table would carry ~20 MB of empty slots).
                entry.routes.reserve_exact(1);
                self.n_routes += 1;
                entry.routes.push(route::Route {
                    neighbour: key,
                    router_id,
                    seqno,
                    refmetric: metric,
                    next_hop,
                    expires,
                });
            }
            Some(i) => {
                if !feasible {
                    self.counters.updates_unfeasible += 1;
                }
                let r = &mut entry.routes[i];
                r.router_id = router_id;
                r.seqno = seqno;
                r.refmetric = metric;
                r.next_hop = next_hop;
                r.expires = expires;
            }
        }
        self.next_expiry = Some(self.next_expiry.map_or(expires, |t| t.min(expires)));
        if metric != INFINITY {
            self.requests.satisfied(prefix, router_id, seqno);
        }
        self.reselect(prefix, now);
    }

    /// Prefixes with a route from neighbour `key`.
    fn prefixes_via(&self, key: NeighKey) -> Vec<IpNet> {
        self.routes
            .iter()
            .filter(|(_, e)| e.routes.iter().any(|r| r.neighbour == key))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Asks for a seqno of (`prefix`, `id`) newer than our feasibility distance: unicast to
    /// `to`, or on every link when `None`. Resent by [`request::Pending`] until satisfied;
    /// nothing is sent while an equal request is in flight.
    fn request_seqno(&mut self, to: Option<NeighKey>, prefix: IpNet, id: RouterId, now: Instant) {
        let seqno = self
            .sources
            .get(prefix, id)
            .map_or(0, |s| s.seqno)
            .wrapping_add(1);
        match (self.requests).originate(prefix, id, seqno, now, self.cfg.limits.pending_requests) {
            request::Admit::New => {}
            request::Admit::Duplicate => return,
            request::Admit::Full => {
                self.refuse(Table::Requests);
                return;
            }
        }
        let msg = Msg::SeqnoRequest {
            prefix,
            seqno,
            hop_count: self.cfg.request_hops,
            router_id: id,
        };
        let dests: Vec<(LinkId, Option<Ipv6Addr>)> = match to {
            Some((link, addr)) => vec![(link, Some(addr))],
            None => self.links.keys().map(|l| (*l, None)).collect(),
        };
        for (link, dest) in dests {
            self.requests.track(link, dest, msg.clone());
            self.queue(link, dest, msg.clone(), now);
        }
    }

    fn on_seqno_request(
        &mut self,
        now: Instant,
        from: NeighKey,
        prefix: IpNet,
        seqno: u16,
        hop_count: u8,
        router_id: RouterId,
    ) {
        if self.xroutes.contains_key(&prefix) {
            if router_id == self.cfg.router_id && seqno_gt(seqno, self.seqno) {
                self.seqno = self.seqno.wrapping_add(1);
            }
            self.announce(prefix, false, now);
            return;
        }
        let choice = {
            let cost = Self::cost_of(&self.neighbours);
            self.routes.get(&prefix).and_then(|e| e.choice(&cost))
        };
        let Some(choice) = choice else {
            return;
        };
        if choice.router_id == router_id && !seqno_gt(seqno, choice.seqno) {
            // We can satisfy it.
            self.out
                .entry((from.0, None))
                .or_default()
                .updates
                .insert(prefix);
            self.schedule_flush(now);
            return;
        }
        if hop_count < 2 || choice.neighbour == from {
            return;
        }
        let max = self.cfg.limits.pending_requests;
        match self.requests.forward(prefix, router_id, seqno, now, max) {
            request::Admit::New => {}
            request::Admit::Duplicate => {
                self.counters.requests_duplicate += 1;
                return;
            }
            request::Admit::Full => {
                self.refuse(Table::Requests);
                return;
            }
        }
        self.counters.requests_forwarded += 1;
        self.queue(
            choice.neighbour.0,
            Some(choice.neighbour.1),
            Msg::SeqnoRequest {
                prefix,
                seqno,
                hop_count: hop_count - 1,
                router_id,
            },
            now,
        );
    }

    /// Route selection for one prefix, with the consequences: events, triggered updates,
    /// seqno requests on starvation.
    fn reselect(&mut self, prefix: IpNet, now: Instant) {
        if self.xroutes.contains_key(&prefix) {
            return;
        }
        let (before, after, starving_for) = {
            let cost = Self::cost_of(&self.neighbours);
            let Some(entry) = self.routes.get_mut(&prefix) else {
                return;
            };
            let before = entry.last;
            let after = entry.select(prefix, &self.sources, &cost, now);
            // Starvation (§3.8.2.1): the selected route is gone, or routes exist but none is
            // feasible. Ask the source for a new seqno (babeld does the same on route loss).
            let starving = after.is_none()
                && (before.is_some()
                    || entry
                        .routes
                        .iter()
                        .any(|r| route::metric(r.refmetric, cost(r.neighbour)) != INFINITY));
            let starving_for = if starving {
                before.map(|b| b.router_id).or_else(|| {
                    entry
                        .routes
                        .iter()
                        .filter(|r| r.refmetric != INFINITY)
                        .map(|r| r.router_id)
                        .next()
                })
            } else {
                None
            };
            (before, after, starving_for)
        };
        if before != after {
            self.on_selection_change(prefix, before, after, now);
        }
        if let Some(id) = starving_for {
            self.request_seqno(None, prefix, id, now);
        }
    }

    fn on_selection_change(
        &mut self,
        prefix: IpNet,
        before: Option<Choice>,
        after: Option<Choice>,
        now: Instant,
    ) {
        let route_of = |c: Choice| Selected {
            link: c.neighbour.0,
            next_hop: c.next_hop,
            metric: c.metric,
            router_id: c.router_id,
        };
        let (b, a) = (before.map(route_of), after.map(route_of));
        if b != a {
            self.counters.route_changes += 1;
            self.events.push_back(Event::Route { prefix, route: a });
        }
        // Urgent (made reliable): retractions and router-id changes (RFC 8966 §3.7.2). A new
        // route is announced promptly but not resent: periodic updates cover a loss.
        let urgent = match (before, after) {
            (Some(b), Some(a)) => b.router_id != a.router_id,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let significant = match (before, after) {
            (Some(b), Some(a)) => {
                b.seqno != a.seqno
                    || b.metric.abs_diff(a.metric) >= 256
                    || b.neighbour != a.neighbour
            }
            _ => true,
        };
        if urgent || significant {
            self.announce(prefix, urgent, now);
        }
    }

    /// Queues an update for `prefix` on every link; urgent ones are made reliable.
    fn announce(&mut self, prefix: IpNet, urgent: bool, now: Instant) {
        let ids: Vec<(LinkId, Option<Ipv6Addr>)> = self
            .links
            .keys()
            .map(|id| {
                // On a link with exactly one neighbour, urgent updates go unicast with an
                // acknowledgment request; elsewhere they are repeated.
                let mut ns = self.neighbours.keys().filter(|k| k.0 == *id);
                let dest = match (ns.next(), ns.next()) {
                    (Some(k), None) if urgent => Some(k.1),
                    _ => None,
                };
                (*id, dest)
            })
            .collect();
        for (id, dest) in ids {
            self.out
                .entry((id, dest))
                .or_default()
                .updates
                .insert(prefix);
            if urgent && !self.resends.has_room(id, prefix, self.cfg.limits.resend) {
                // Sent once, not made reliable.
                self.refuse(Table::Resends);
            } else if urgent {
                let opaque = dest.map(|_| {
                    let o = self.next_opaque;
                    self.next_opaque = self.next_opaque.wrapping_add(1).max(1);
                    o
                });
                if let Some(o) = opaque {
                    self.out
                        .entry((id, dest))
                        .or_default()
                        .msgs
                        .push(Msg::AckReq {
                            opaque: o,
                            interval: to_cs(RESEND_DELAY),
                        });
                }
                self.resends.insert(resend::Resend {
                    link: id,
                    dest,
                    prefix,
                    left: URGENT_RESENDS,
                    at: now + RESEND_DELAY,
                    opaque,
                });
            }
        }
        self.schedule_flush(now);
    }

    /// What we would advertise for `prefix` on `link`: (metric, seqno, router-id).
    fn advertisement(&self, prefix: IpNet, link: LinkId) -> Option<(u16, u16, RouterId)> {
        if let Some(&m) = self.xroutes.get(&prefix) {
            return Some((m, self.seqno, self.cfg.router_id));
        }
        let e = self.routes.get(&prefix)?;
        let cost = Self::cost_of(&self.neighbours);
        let c = e.choice(&cost)?;
        let params = self.links.get(&link)?.cfg.params;
        if params.split_horizon && c.neighbour.0 == link {
            return None;
        }
        Some((c.metric, c.seqno, c.router_id))
    }

    fn flush(&mut self, now: Instant) {
        self.flush_at = None;
        let out = std::mem::take(&mut self.out);
        for ((link, dest), ob) in out {
            let Some(l) = self.links.get(&link) else {
                continue;
            };
            let cfg = l.cfg.clone();
            let mut msgs = ob.msgs;
            let prefixes: Vec<IpNet> = if ob.full {
                let mut all: BTreeSet<IpNet> = self.xroutes.keys().copied().collect();
                all.extend(
                    self.routes
                        .iter()
                        .filter(|(_, e)| e.selected.is_some())
                        .map(|(p, _)| *p),
                );
                all.extend(ob.updates);
                all.into_iter().collect()
            } else {
                ob.updates.into_iter().collect()
            };
            let interval = to_cs(cfg.params.update_interval);
            let mut updates = Vec::with_capacity(prefixes.len());
            for p in prefixes {
                let (metric, seqno, rid) = match self.advertisement(p, link) {
                    Some(a) => a,
                    None if ob.full => continue,
                    None => (INFINITY, self.seqno, self.cfg.router_id),
                };
                let Some(extra) = self.policy.export(&cfg.name, &p) else {
                    continue;
                };
                let metric = route::metric(metric, extra);
                let (next_hop, v4_via_v6) = match p {
                    IpNet::V6(_) => (None, false),
                    IpNet::V4(_) => match (cfg.ipv4, cfg.v4_via_v6) {
                        (Some(a), _) => (Some(IpAddr::V4(a)), false),
                        (None, true) => (None, true),
                        (None, false) => continue,
                    },
                };
                let max = self.cfg.limits.sources;
                if !self.sources.advertised(p, rid, seqno, metric, now, max)
                    && rid != self.cfg.router_id
                {
                    // No room to record its feasibility distance: not advertised. (Our
                    // own prefixes go out all the same: no route of ours comes back to us.)
                    self.refuse(Table::Sources);
                    continue;
                }
                updates.push(Msg::Update {
                    prefix: Some(p),
                    v4_via_v6,
                    interval,
                    seqno,
                    metric,
                    router_id: rid,
                    next_hop,
                });
            }
            // Group by router-id so each gets one Router-Id TLV.
            updates.sort_by_key(|m| match m {
                Msg::Update { router_id, .. } => *router_id,
                _ => [0; 8],
            });
            msgs.extend(updates);
            if cfg.params.unicast && dest.is_none() {
                // Hellos to the group (they find new neighbours); everything else to each
                // neighbour, with only its own IHU.
                let (hellos, rest): (Vec<Msg>, Vec<Msg>) = msgs
                    .into_iter()
                    .partition(|m| matches!(m, Msg::Hello { .. }));
                if !hellos.is_empty() {
                    self.packetize(link, None, cfg.max_packet, &hellos);
                }
                let addrs: Vec<Ipv6Addr> = (self.neighbours.keys())
                    .filter(|k| k.0 == link)
                    .map(|k| k.1)
                    .collect();
                let ts = self.timestamp(now);
                for a in addrs {
                    let mut theirs: Vec<Msg> = (rest.iter())
                        .filter(|m| match m {
                            Msg::Ihu { address, .. } => *address == Some(IpAddr::V6(a)),
                            _ => true,
                        })
                        .cloned()
                        .collect();
                    let rtt_ihu = theirs.iter().any(|m| {
                        matches!(
                            m,
                            Msg::Ihu {
                                timestamp: Some(_),
                                ..
                            }
                        )
                    });
                    if let (true, Some(n)) = (rtt_ihu, self.neighbours.get_mut(&(link, a))) {
                        // An IHU with RTT data needs a Hello in its packet (RFC 9616 §3.1);
                        // by unicast that is an unscheduled unicast Hello, as babeld sends.
                        n.unicast_seqno = n.unicast_seqno.wrapping_add(1);
                        let hello = Msg::Hello {
                            unicast: true,
                            seqno: n.unicast_seqno,
                            interval: 0,
                            timestamp: Some(ts),
                        };
                        theirs.insert(0, hello);
                    }
                    if !theirs.is_empty() {
                        self.packetize(link, Some(a), cfg.max_packet, &theirs);
                    }
                }
                continue;
            }
            self.packetize(link, dest, cfg.max_packet, &msgs);
        }
    }

    fn packetize(&mut self, link: LinkId, dest: Option<Ipv6Addr>, max: usize, msgs: &[Msg]) {
        // Room for the PC TLV and the MACs that `emit` adds.
        let max = max.saturating_sub(
            self.links
                .get(&link)
                .map_or(0, |l| auth::overhead(&l.cfg.keys)),
        );
        let mut w = Writer::new(max);
        for m in msgs {
            if !w.push(m) {
                let full = std::mem::replace(&mut w, Writer::new(max));
                self.emit(link, dest, full.finish());
                if !w.push(m) {
                    continue;
                }
            }
            self.counters.tlv_tx[usize::from(m.kind())] += 1;
        }
        if !w.is_empty() {
            self.emit(link, dest, w.finish());
        }
    }

    fn emit(&mut self, link: LinkId, dest: Option<Ipv6Addr>, mut bytes: Vec<u8>) {
        if let Some(l) = self.links.get_mut(&link) {
            if !l.cfg.keys.is_empty() {
                let (counter, index) = l.sender.next(&mut self.random);
                let to = dest.unwrap_or(packet::MULTICAST);
                auth::seal(&mut bytes, counter, &index, &l.cfg.keys, l.cfg.address, to);
            }
        }
        self.counters.packets_tx += 1;
        self.transmits.push_back(Transmit { link, dest, bytes });
    }

    /// Neighbours, for display.
    pub fn neighbours(&self, now: Instant) -> Vec<NeighbourInfo> {
        self.neighbours
            .values()
            .map(|n| {
                let p = self.links[&n.link].cfg.params;
                NeighbourInfo {
                    link: n.link,
                    address: n.address,
                    reach: n.multicast.reach,
                    unicast_reach: n.unicast.reach,
                    rxcost: n.rxcost(&p),
                    txcost: n.txcost,
                    rtt: n.rtt,
                    rtt_penalty: n.rtt_penalty(&p, now),
                    cost: n.cost,
                }
            })
            .collect()
    }

    /// Every route in the table.
    pub fn routes(&self, now: Instant) -> Vec<RouteInfo> {
        let cost = Self::cost_of(&self.neighbours);
        let mut v = Vec::new();
        for (p, e) in &self.routes {
            for (i, r) in e.routes.iter().enumerate() {
                v.push(RouteInfo {
                    prefix: *p,
                    link: r.neighbour.0,
                    neighbour: r.neighbour.1,
                    next_hop: r.next_hop,
                    router_id: r.router_id,
                    seqno: r.seqno,
                    refmetric: r.refmetric,
                    metric: route::metric(r.refmetric, cost(r.neighbour)),
                    feasible: self
                        .sources
                        .feasible(*p, r.router_id, r.seqno, r.refmetric, now),
                    selected: e.selected == Some(i),
                });
            }
        }
        v.sort_by_key(|r| (r.prefix, !r.selected, r.metric));
        v
    }

    /// The selected route for every prefix.
    pub fn selected(&self) -> impl Iterator<Item = (IpNet, Selected)> + '_ {
        let cost = Self::cost_of(&self.neighbours);
        self.routes.iter().filter_map(move |(p, e)| {
            e.choice(&cost).map(|c| {
                (
                    *p,
                    Selected {
                        link: c.neighbour.0,
                        next_hop: c.next_hop,
                        metric: c.metric,
                        router_id: c.router_id,
                    },
                )
            })
        })
    }

    /// Number of prefixes in the route table, and of sources.
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.routes.len(), self.sources.len())
    }

    /// Pending seqno requests we originated or forwarded.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }
}

/// Prefixes never routed: link-local, multicast, loopback.
fn martian(p: &IpNet) -> bool {
    match p {
        IpNet::V4(n) => {
            n.addr().is_loopback() || n.addr().is_multicast() || n.addr().is_link_local()
        }
        IpNet::V6(n) => {
            n.addr().is_loopback() || n.addr().is_multicast() || n.addr().is_unicast_link_local()
        }
    }
}

#[cfg(test)]
mod tests;
