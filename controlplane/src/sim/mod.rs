//! A deterministic network simulator for the Babel core.
//!
//! Hundreds of [`Router`]s on one thread, a fake clock, point-to-point links with delay and
//! loss drawn from a seeded generator: the same seed gives the same run, packet for packet.
//! After every step the simulator can follow the next hops of every prefix whose selected
//! route changed, from every node, and report a forwarding loop the moment one exists.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::babel::{Config, Event, LinkConfig, LinkId, LinkParams, Router, Transmit};

/// Index of a node.
pub type NodeId = usize;

/// One side of a link.
#[derive(Debug, Clone, Copy)]
struct End {
    node: NodeId,
    link: LinkId,
    addr: Ipv6Addr,
}

/// A point-to-point link.
#[derive(Debug, Clone)]
pub struct SimLink {
    ends: [End; 2],
    /// Carries packets.
    pub up: bool,
    /// One-way delay.
    pub delay: Duration,
    /// Probability of losing a packet, in 1/1000.
    pub loss_permille: u32,
    /// Arrival time of the last packet each way: links jitter but do not reorder.
    last: [Option<Instant>; 2],
}

/// A node: its router and the forwarding table its events built.
pub struct SimNode {
    /// The Babel core.
    pub router: Router,
    /// Selected routes, as the driver would install them: prefix → link.
    pub fib: HashMap<IpNet, LinkId>,
    /// Link of this node → simulator link index.
    links: HashMap<LinkId, usize>,
    next_timeout: Option<Instant>,
}

/// A packet in flight (or copied by [`Sim::tap`]).
#[derive(Debug, Clone)]
pub struct Packet {
    to: NodeId,
    link: LinkId,
    from: Ipv6Addr,
    bytes: Vec<u8>,
}

/// A forwarding loop found by [`Sim::check_loops`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// Destination.
    pub prefix: IpNet,
    /// Nodes on the cycle, in order.
    pub nodes: Vec<NodeId>,
    /// Simulated time since the start.
    pub at: Duration,
}

/// Statistics of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimStats {
    /// Packets delivered.
    pub delivered: u64,
    /// Packets lost (loss or link down).
    pub lost: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Route events handled.
    pub route_events: u64,
    /// Loop checks made (prefix × start node).
    pub loop_checks: u64,
}

/// The simulator.
pub struct Sim {
    start: Instant,
    now: Instant,
    rng: u64,
    seq: u64,
    /// Nodes.
    pub nodes: Vec<SimNode>,
    /// Links.
    pub links: Vec<SimLink>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The link whose delivered packets are copied into `tapped`.
    tap: Option<usize>,
    /// Copies of the packets delivered on the tapped link, in order.
    pub tapped: Vec<Packet>,
    packets: HashMap<u64, Packet>,
    changed: BTreeSet<IpNet>,
    /// Follow next hops of changed prefixes after every step.
    pub check_every_step: bool,
    /// Loops seen.
    pub loops: Vec<Loop>,
    /// Counters.
    pub stats: SimStats,
    origin: HashMap<IpNet, NodeId>,
}

impl Sim {
    /// An empty network; `seed` drives loss and jitter.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            rng: seed | 1,
            seq: 0,
            nodes: Vec::new(),
            links: Vec::new(),
            queue: BinaryHeap::new(),
            tap: None,
            tapped: Vec::new(),
            packets: HashMap::new(),
            changed: BTreeSet::new(),
            check_every_step: true,
            loops: Vec::new(),
            stats: SimStats::default(),
            origin: HashMap::new(),
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The simulated clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a node; its router-id is derived from its index.
    pub fn add_node(&mut self) -> NodeId {
        let id = self.nodes.len();
        let mut rid = [0u8; 8];
        rid[0] = 0x02;
        rid[4..].copy_from_slice(&(id as u32 + 1).to_be_bytes());
        let router = Router::new(Config::new(rid), self.now);
        self.nodes.push(SimNode {
            router,
            fib: HashMap::new(),
            links: HashMap::new(),
            next_timeout: None,
        });
        self.refresh_timeout(id);
        id
    }

    /// Adds `n` nodes.
    pub fn add_nodes(&mut self, n: usize) -> Vec<NodeId> {
        (0..n).map(|_| self.add_node()).collect()
    }

    fn address(node: NodeId, link: LinkId) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            0,
            (node >> 16) as u16,
            node as u16,
            link.0 as u16,
        )
    }

    /// Connects two nodes with a point-to-point link; returns the link's index.
    pub fn connect(
        &mut self,
        a: NodeId,
        b: NodeId,
        params: LinkParams,
        delay: Duration,
        loss_permille: u32,
    ) -> usize {
        let idx = self.links.len();
        let mut ends = [End {
            node: a,
            link: LinkId(0),
            addr: Ipv6Addr::UNSPECIFIED,
        }; 2];
        for (i, node) in [a, b].into_iter().enumerate() {
            let link = LinkId(self.nodes[node].links.len() as u32);
            let addr = Self::address(node, link);
            ends[i] = End { node, link, addr };
            self.nodes[node].links.insert(link, idx);
            let cfg = LinkConfig {
                name: format!("l{idx}"),
                params,
                address: addr,
                ipv4: None,
                v4_via_v6: true,
                max_packet: 1400,
                keys: Vec::new(),
            };
            let now = self.now;
            self.nodes[node].router.add_link(link, cfg, now);
            self.refresh_timeout(node);
        }
        self.links.push(SimLink {
            ends,
            up: true,
            delay,
            loss_permille,
            last: [None; 2],
        });
        idx
    }

    /// Sets the MAC keys (RFC 8967) of link `link` at end `end` (0 or 1), in place.
    pub fn set_keys(&mut self, link: usize, end: usize, keys: Vec<crate::babel::MacKey>) {
        let e = self.links[link].ends[end];
        let now = self.now;
        let router = &mut self.nodes[e.node].router;
        let Some((_, cfg)) = router.links().find(|(id, _)| *id == e.link) else {
            return;
        };
        let cfg = LinkConfig {
            keys,
            ..cfg.clone()
        };
        router.add_link(e.link, cfg, now);
        self.drain(e.node);
    }

    /// The router at end `end` of link `link` forgets the link and gets it back, as after a
    /// restart: a new neighbour table on it and, with keys, a new packet-counter index.
    pub fn restart_end(&mut self, link: usize, end: usize) {
        let e = self.links[link].ends[end];
        let now = self.now;
        let router = &mut self.nodes[e.node].router;
        let Some((_, cfg)) = router.links().find(|(id, _)| *id == e.link) else {
            return;
        };
        let cfg = cfg.clone();
        router.remove_link(e.link, now);
        router.add_link(e.link, cfg, now);
        self.drain(e.node);
    }

    /// Copies every packet delivered on link `link` into [`Sim::tapped`].
    pub fn tap(&mut self, link: usize) {
        self.tap = Some(link);
    }

    /// Delivers a copy of a tapped packet again, now (an attacker's replay).
    pub fn replay(&mut self, p: &Packet) {
        let now = self.now;
        self.nodes[p.to]
            .router
            .handle(now, p.link, IpAddr::V6(p.from), &p.bytes);
        self.drain(p.to);
    }

    /// Makes `node` originate `prefix`.
    pub fn originate(&mut self, node: NodeId, prefix: IpNet) {
        let now = self.now;
        self.origin.insert(prefix.trunc(), node);
        self.nodes[node].router.originate(prefix, 0, now);
        self.drain(node);
    }

    /// Stops originating.
    pub fn withdraw(&mut self, node: NodeId, prefix: IpNet) {
        let now = self.now;
        self.origin.remove(&prefix.trunc());
        self.nodes[node].router.withdraw(prefix, now);
        self.drain(node);
    }

    /// Brings a link up or down (down: every packet is lost).
    pub fn set_link_up(&mut self, link: usize, up: bool) {
        self.links[link].up = up;
    }

    /// A liveness probe (the data plane's, on a tunnel) reports link `link` down at both
    /// ends: their routers drop its neighbours now, not when hellos time out. The link stays
    /// configured; it carries nothing until [`Sim::set_link_up`].
    pub fn link_down_reported(&mut self, link: usize) {
        self.links[link].up = false;
        let now = self.now;
        for end in self.links[link].ends {
            self.nodes[end.node].router.link_down(end.link, now);
            self.drain(end.node);
        }
    }

    /// Link `link` is removed at both ends at run time (a peer deleted): its neighbours and
    /// their routes go at once.
    pub fn remove_link(&mut self, link: usize) {
        self.links[link].up = false;
        let now = self.now;
        for end in self.links[link].ends {
            self.nodes[end.node].router.remove_link(end.link, now);
            self.nodes[end.node].links.remove(&end.link);
            self.drain(end.node);
        }
    }

    fn refresh_timeout(&mut self, node: NodeId) {
        self.nodes[node].next_timeout = self.nodes[node].router.poll_timeout();
    }

    fn drain(&mut self, node: NodeId) {
        while let Some(t) = self.nodes[node].router.poll_transmit() {
            self.send(node, t);
        }
        while let Some(e) = self.nodes[node].router.poll_event() {
            if let Event::Route { prefix, route } = e {
                self.stats.route_events += 1;
                match route {
                    Some(r) => self.nodes[node].fib.insert(prefix, r.link),
                    None => self.nodes[node].fib.remove(&prefix),
                };
                self.changed.insert(prefix);
            }
        }
        self.refresh_timeout(node);
    }

    fn send(&mut self, node: NodeId, t: Transmit) {
        let Some(&li) = self.nodes[node].links.get(&t.link) else {
            return;
        };
        let (up, delay, loss) = {
            let l = &self.links[li];
            (l.up, l.delay, l.loss_permille)
        };
        let l = &self.links[li];
        let (dir, me, other) = if l.ends[0].node == node && l.ends[0].link == t.link {
            (0, l.ends[0], l.ends[1])
        } else {
            (1, l.ends[1], l.ends[0])
        };
        if t.dest.is_some_and(|d| d != other.addr) {
            self.stats.lost += 1;
            return;
        }
        let lost = !up || (loss > 0 && (self.rand() % 1000) < u64::from(loss));
        if lost {
            self.stats.lost += 1;
            return;
        }
        let jitter = Duration::from_micros(self.rand() % 1000);
        let mut at = self.now + delay + jitter;
        if let Some(prev) = self.links[li].last[dir] {
            at = at.max(prev);
        }
        self.links[li].last[dir] = Some(at);
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.packets.insert(
            self.seq,
            Packet {
                to: other.node,
                link: other.link,
                from: me.addr,
                bytes: t.bytes,
            },
        );
    }

    /// The next packet arrival or timer, if any.
    fn next_event(&self) -> Option<Instant> {
        let next_packet = self.queue.peek().map(|Reverse((t, _))| *t);
        let next_timer = self.nodes.iter().filter_map(|n| n.next_timeout).min();
        [next_packet, next_timer].into_iter().flatten().min()
    }

    /// Runs one step (all packets and timers due at the next instant). False if idle.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > now {
                break;
            }
            self.queue.pop();
            let Some(p) = self.packets.remove(&seq) else {
                continue;
            };
            self.stats.delivered += 1;
            if self
                .tap
                .is_some_and(|l| self.nodes[p.to].links.get(&p.link) == Some(&l))
            {
                self.tapped.push(p.clone());
            }
            self.stats.bytes += p.bytes.len() as u64;
            self.nodes[p.to]
                .router
                .handle(now, p.link, IpAddr::V6(p.from), &p.bytes);
            self.drain(p.to);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].next_timeout.is_some_and(|x| x <= now) {
                self.nodes[i].router.handle_timeout(now);
                self.drain(i);
            }
        }
        if self.check_every_step && !self.changed.is_empty() {
            let changed = std::mem::take(&mut self.changed);
            for p in changed {
                if let Some(l) = self.find_loop(p) {
                    self.loops.push(l);
                }
            }
        } else {
            self.changed.clear();
        }
        true
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Runs until the clock reaches `end`.
    pub fn run_until(&mut self, end: Instant) {
        loop {
            match self.next_event() {
                Some(t) if t <= end => {
                    self.step();
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
    }

    /// Runs until `pred` holds, checking every `every`, for at most `limit`; returns the
    /// simulated time it took.
    pub fn run_until_pred(
        &mut self,
        limit: Duration,
        every: Duration,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now - start <= limit {
            if pred(self) {
                return Some(self.now - start);
            }
            self.run_for(every);
        }
        None
    }

    /// The neighbour a node's link leads to.
    pub fn peer_of(&self, node: NodeId, link: LinkId) -> Option<NodeId> {
        let li = *self.nodes[node].links.get(&link)?;
        let l = &self.links[li];
        Some(if l.ends[0].node == node && l.ends[0].link == link {
            l.ends[1].node
        } else {
            l.ends[0].node
        })
    }

    /// Follows next hops from every node towards `prefix`; returns a cycle if there is one.
    pub fn find_loop(&mut self, prefix: IpNet) -> Option<Loop> {
        let n = self.nodes.len();
        // 0 = unknown, 1 = on the current path, 2 = known loop-free.
        let mut state = vec![0u8; n];
        for start in 0..n {
            let mut path = Vec::new();
            let mut cur = start;
            loop {
                self.stats.loop_checks += 1;
                if state[cur] == 2 {
                    break;
                }
                if state[cur] == 1 {
                    let pos = path.iter().position(|&x| x == cur).unwrap_or(0);
                    return Some(Loop {
                        prefix,
                        nodes: path[pos..].to_vec(),
                        at: self.elapsed(),
                    });
                }
                state[cur] = 1;
                path.push(cur);
                let next = self.nodes[cur]
                    .fib
                    .get(&prefix)
                    .and_then(|&l| self.peer_of(cur, l));
                match next {
                    Some(nx) => cur = nx,
                    None => break,
                }
            }
            for p in path {
                state[p] = 2;
            }
        }
        None
    }

    /// The hop path from `from` to `prefix`'s originator, if the next hops lead there.
    pub fn path(&self, from: NodeId, prefix: IpNet) -> Option<Vec<NodeId>> {
        let target = *self.origin.get(&prefix)?;
        let mut path = vec![from];
        let mut cur = from;
        while cur != target {
            let l = *self.nodes[cur].fib.get(&prefix)?;
            cur = self.peer_of(cur, l)?;
            if path.len() > self.nodes.len() {
                return None;
            }
            path.push(cur);
        }
        Some(path)
    }

    /// Every node reaches every originated prefix (its own excepted).
    pub fn converged(&self) -> bool {
        self.origin
            .keys()
            .all(|p| (0..self.nodes.len()).all(|n| self.path(n, *p).is_some()))
    }

    /// Nodes `a` can reach through up links (ground truth for partitions).
    pub fn reachable(&self, a: NodeId) -> BTreeSet<NodeId> {
        let mut seen = BTreeSet::from([a]);
        let mut stack = vec![a];
        while let Some(x) = stack.pop() {
            for l in self.links.iter().filter(|l| l.up) {
                for (i, e) in l.ends.iter().enumerate() {
                    if e.node == x && seen.insert(l.ends[1 - i].node) {
                        stack.push(l.ends[1 - i].node);
                    }
                }
            }
        }
        seen
    }

    /// Every node reaches exactly the originated prefixes its partition holds.
    pub fn converged_partitioned(&self) -> bool {
        (0..self.nodes.len()).all(|n| {
            let reach = self.reachable(n);
            self.origin.iter().all(|(p, o)| {
                let ok = self.path(n, *p).is_some();
                ok == reach.contains(o)
            })
        })
    }

    /// Builds a line of `n` nodes; returns the nodes.
    pub fn line(
        &mut self,
        n: usize,
        params: LinkParams,
        delay: Duration,
        loss: u32,
    ) -> Vec<NodeId> {
        let nodes = self.add_nodes(n);
        for w in nodes.windows(2) {
            self.connect(w[0], w[1], params, delay, loss);
        }
        nodes
    }

    /// Builds a ring of `n` nodes.
    pub fn ring(
        &mut self,
        n: usize,
        params: LinkParams,
        delay: Duration,
        loss: u32,
    ) -> Vec<NodeId> {
        let nodes = self.line(n, params, delay, loss);
        self.connect(nodes[n - 1], nodes[0], params, delay, loss);
        nodes
    }

    /// Builds a `w` × `h` grid.
    pub fn grid(
        &mut self,
        w: usize,
        h: usize,
        params: LinkParams,
        delay: Duration,
        loss: u32,
    ) -> Vec<NodeId> {
        let nodes = self.add_nodes(w * h);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if x + 1 < w {
                    self.connect(nodes[i], nodes[i + 1], params, delay, loss);
                }
                if y + 1 < h {
                    self.connect(nodes[i], nodes[i + w], params, delay, loss);
                }
            }
        }
        nodes
    }

    /// A /32 (IPv4) or /64 (IPv6) per node, originated by it.
    pub fn originate_one_each(&mut self) {
        for i in 0..self.nodes.len() {
            let v4: IpNet = IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32 * 256), 24)
                    .expect("valid"),
            );
            self.originate(i, v4);
            if i % 2 == 0 {
                let v6 = IpNet::V6(
                    ipnet::Ipv6Net::new(
                        Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 0),
                        64,
                    )
                    .expect("valid"),
                );
                self.originate(i, v6);
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod scale_tests;

#[cfg(test)]
mod auth_tests;
