//! The route table: the sources of routes (allowed IPs, connected addresses, static routes,
//! the control plane), their merge by precedence, and the publication of the FIB.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ipnet::IpNet;

use super::Core;
use crate::fib::{Fib, NextHop, PrefixMap, Route, RouteOrigin, Via};
use crate::keys::Key;
use crate::tunnel::PeerMap;

/// A set of prefixes, with the FIB's fast hasher.
pub(super) type PrefixSet = HashSet<IpNet, std::hash::BuildHasherDefault<crate::fib::PrefixHasher>>;

/// A change to the FIB: the prefix now maps to this next hop, or (None) has no route.
pub(super) type FibOp = (IpNet, Option<NextHop>);

/// The route sources, the merged table they give, and the writer's spare FIB. Changed only
/// under `Core::config_lock`.
///
/// `merged` is exactly what the published FIB holds, with each prefix's origin: a change to
/// some prefixes recomputes just those prefixes from the sources (connected > control >
/// static > allowed IPs) and turns the differences into [`FibOp`]s. The ops are applied to
/// `spare` — the table published before the current one, which readers have let go of by
/// then — after the ops of the previous change (`lag`) that it has not seen yet; then it is
/// published whole, and the table it replaces becomes the spare. So a change of k prefixes
/// costs O(k) (amortised over consecutive changes), not a rebuild.
#[derive(Default)]
pub(super) struct Routes {
    /// Host routes for the interface's own addresses.
    connected: PrefixSet,
    /// Static routes by prefix, duplicates in config order (the last that resolves wins).
    statics: PrefixMap<IpNet, Vec<Via>>,
    /// Control-plane routes by prefix.
    control: PrefixMap<IpNet, Via>,
    /// The peers' allowed IPs by prefix (the last peer claiming one wins).
    allowed: PrefixMap<IpNet, NextHop>,
    /// What the published FIB holds, and where each route came from.
    merged: PrefixMap<IpNet, (RouteOrigin, NextHop)>,
    /// The previously published FIB, to be brought up to date and published next.
    spare: Option<Arc<Fib>>,
    /// Ops the published FIB has and `spare` does not.
    lag: Vec<FibOp>,
}

impl Routes {
    /// The route for `prefix` (truncated) that the sources give, by precedence.
    fn compute(&self, peers: &PeerMap, prefix: &IpNet) -> Option<(RouteOrigin, NextHop)> {
        if self.connected.contains(prefix) {
            return Some((RouteOrigin::Connected, NextHop::Local));
        }
        if let Some(nh) = self.control.get(prefix).and_then(|v| peers.resolve(v)) {
            return Some((RouteOrigin::Control, nh));
        }
        if let Some(nh) = self
            .statics
            .get(prefix)
            .and_then(|vias| vias.iter().rev().find_map(|v| peers.resolve(v)))
        {
            return Some((RouteOrigin::Static, nh));
        }
        self.allowed
            .get(prefix)
            .map(|&nh| (RouteOrigin::AllowedIps, nh))
    }

    /// Recompute `prefixes` (truncated) into `merged`; push an op for each whose next hop
    /// changed (an origin change alone needs none).
    fn refresh<'a>(
        &mut self,
        peers: &PeerMap,
        prefixes: impl IntoIterator<Item = &'a IpNet>,
        ops: &mut Vec<FibOp>,
    ) {
        for p in prefixes {
            let new = self.compute(peers, p);
            let old = match new {
                Some(e) => self.merged.insert(*p, e),
                None => self.merged.remove(p),
            };
            if old.map(|e| e.1) != new.map(|e| e.1) {
                ops.push((*p, new.map(|e| e.1)));
            }
        }
    }
}

/// Apply ops to a FIB.
pub(super) fn apply_ops(fib: &mut Fib, ops: &[FibOp]) {
    for (p, nh) in ops {
        match nh {
            Some(nh) => {
                fib.insert(*p, *nh);
            }
            None => {
                fib.remove(p);
            }
        }
    }
}

/// Wait until nobody but the caller holds `fib` (readers drop their tables after a batch),
/// for at most [`SPARE_WAIT`]. Returns whether they did.
pub(super) fn wait_exclusive(fib: &mut Arc<Fib>) -> bool {
    let deadline = std::time::Instant::now() + SPARE_WAIT;
    loop {
        if Arc::get_mut(fib).is_some() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Changes of at least this many routes (and a good part of the table) are "large": they
/// re-lay the table in huge pages ([`Fib::settle`]; a copy of the lookup arrays), or take
/// the cheaper way of a rebuild or a copy (see `Core::publish_ops`).
/// (Small in unit tests, so that their small tables take every path.)
pub(super) const SETTLE_MIN_OPS: usize = if cfg!(test) { 8 } else { 4096 };

/// How long a change waits for readers to let go of the spare FIB before copying the
/// published one instead. Workers hold a table for one batch.
pub(super) const SPARE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

impl Core {
    /// Origin of a FIB prefix.
    pub fn route_origin(&self, prefix: &IpNet) -> Option<RouteOrigin> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .merged
            .get(&prefix.trunc())
            .map(|e| e.0)
    }

    /// Every FIB route with its origin, read consistently (no change is applied meanwhile).
    pub fn fib_routes(&self) -> Vec<(Route, RouteOrigin)> {
        let r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.fib
            .load()
            .routes()
            .into_iter()
            .map(|route| {
                let origin = r
                    .merged
                    .get(&route.prefix)
                    .map_or(RouteOrigin::AllowedIps, |e| e.0);
                (route, origin)
            })
            .collect()
    }

    /// Mark the control-plane routes stale (kept, but their source went away) or fresh.
    pub fn set_fib_stale(&self, stale: bool) {
        self.fib_stale.store(stale, Relaxed);
    }

    /// The FIB is kept from a control plane that went away.
    pub fn fib_stale(&self) -> bool {
        self.fib_stale.load(Relaxed)
    }

    /// Replace the static routes.
    pub fn set_static_routes(&self, routes: Vec<(IpNet, Via)>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut statics: PrefixMap<IpNet, Vec<Via>> = PrefixMap::default();
        for (p, v) in routes {
            statics.entry(p.trunc()).or_default().push(v);
        }
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .statics = statics;
        self.rebuild_tables();
    }

    /// Set the interface's own addresses: each becomes a host route to the TUN device.
    pub fn set_local_addresses(&self, addrs: &[IpAddr]) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connected = addrs.iter().map(|a| IpNet::from(*a)).collect();
        self.rebuild_tables();
    }

    /// Replace all control-plane routes (a full snapshot; of duplicate prefixes the last
    /// wins, as in an update) and
    /// mark the FIB fresh. Only the prefixes that differ from the current set touch the FIB.
    pub fn set_control_routes(&self, routes: Vec<(IpNet, Via)>) {
        let mut new: PrefixMap<IpNet, Via> =
            PrefixMap::with_capacity_and_hasher(routes.len(), Default::default());
        for (p, v) in routes {
            new.insert(p.trunc(), v);
        }
        self.fib_stale.store(false, Relaxed);
        self.change_control_routes(|control| {
            let old = std::mem::replace(control, new);
            control
                .iter()
                .filter(|(p, v)| old.get(p) != Some(v))
                .map(|(p, _)| *p)
                .chain(old.keys().filter(|p| !control.contains_key(p)).copied())
                .collect()
        });
    }

    /// Change the control-plane routes with `f`, which returns the prefixes it touched
    /// (truncated); only those are recomputed and published.
    fn change_control_routes(&self, f: impl FnOnce(&mut PrefixMap<IpNet, Via>) -> Vec<IpNet>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let peers = self.peers.load_full();
        let mut r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let touched = f(&mut r.control);
        let mut ops = Vec::new();
        r.refresh(&peers, &touched, &mut ops);
        self.publish_ops(&mut r, ops);
    }

    /// Apply an incremental control-plane update: withdraw `remove`, then add or replace
    /// `add`. Costs O(changed routes), not O(table).
    pub fn update_control_routes(&self, add: Vec<(IpNet, Via)>, remove: &[IpNet]) {
        self.change_control_routes(|control| {
            let mut touched = Vec::with_capacity(add.len() + remove.len());
            for p in remove {
                let p = p.trunc();
                control.remove(&p);
                touched.push(p);
            }
            for (p, v) in add {
                let p = p.trunc();
                control.insert(p, v);
                touched.push(p);
            }
            touched
        });
    }

    /// After a change of the private key or of static or connected routes: rebuild and
    /// publish the allowed-IPs table, recompute every prefix of the merged table and apply
    /// the differences to the FIB.
    pub(super) fn rebuild_tables(&self) {
        let peers = self.peers.load_full();
        let (allowed, allowed_map) = allowed_tables(&peers);
        let mut r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.allowed = allowed_map;
        let mut all: PrefixSet = r.merged.keys().copied().collect();
        all.extend(r.control.keys());
        all.extend(r.statics.keys());
        all.extend(r.connected.iter());
        all.extend(r.allowed.keys());
        let mut ops = Vec::new();
        r.refresh(&peers, &all, &mut ops);
        self.allowed.publish(allowed);
        self.publish_ops(&mut r, ops);
    }

    /// After a batch of peer changes that added or removed the peers `touched` (and may have
    /// changed any peer's allowed IPs): rebuild and publish the allowed-IPs table, and
    /// recompute only the prefixes that can have changed — those whose allowed-IPs owner
    /// changed, and the static and control routes that name a touched peer (the others
    /// resolve as before: an updated peer keeps its id).
    pub(super) fn refresh_peer_routes(&self, touched: &HashSet<Key>) {
        let peers = self.peers.load_full();
        let (allowed, allowed_map) = allowed_tables(&peers);
        let mut r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = std::mem::replace(&mut r.allowed, allowed_map);
        let mut changed: Vec<IpNet> = r
            .allowed
            .iter()
            .filter(|(p, nh)| old.get(p) != Some(nh))
            .map(|(p, _)| *p)
            .chain(old.keys().filter(|p| !r.allowed.contains_key(p)).copied())
            .collect();
        if !touched.is_empty() {
            let names = |v: &Via| matches!(v, Via::Peer(k) if touched.contains(k));
            changed.extend(r.control.iter().filter(|(_, v)| names(v)).map(|(p, _)| *p));
            changed.extend(
                r.statics
                    .iter()
                    .filter(|(_, vias)| vias.iter().any(names))
                    .map(|(p, _)| *p),
            );
        }
        // A prefix listed twice is recomputed twice, the second time without an op.
        let mut ops = Vec::new();
        r.refresh(&peers, &changed, &mut ops);
        self.allowed.publish(allowed);
        self.publish_ops(&mut r, ops);
    }

    /// Tell `observer` the whole FIB now, and then every change of it, in order, before the
    /// changed table is published (the AF_XDP mesh programs keep their tunnel tables so).
    /// Only one observer can be set; a second call returns `false` and changes nothing.
    pub fn observe_routes(&self, observer: super::RouteObserver) -> bool {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: Vec<FibOp> = r.merged.iter().map(|(p, e)| (*p, Some(e.1))).collect();
        observer(&now);
        self.route_observer.set(observer).is_ok()
    }

    /// Make `ops` live: bring the spare FIB up to date, apply them, publish it whole.
    ///
    /// Large changes are cheaper another way: a change of half the table or more builds the
    /// new FIB from `merged` (inserts into an empty table beat removals), and a spare that
    /// lags by an eighth of the table or more is replaced by a copy of the live one.
    pub(super) fn publish_ops(&self, r: &mut Routes, ops: Vec<FibOp>) {
        if ops.is_empty() {
            return;
        }
        if let Some(observe) = self.route_observer.get() {
            observe(&ops);
        }
        let table = r.merged.len();
        let big = |n: usize| n >= SETTLE_MIN_OPS && n * 8 >= table;
        let lag = std::mem::take(&mut r.lag);
        let next = if ops.len() >= SETTLE_MIN_OPS && ops.len() * 2 >= table {
            Arc::new(Fib::from_routes(r.merged.iter().map(|(p, e)| Route {
                prefix: *p,
                next_hop: e.1,
            })))
        } else {
            let spare = r.spare.take().filter(|_| !big(lag.len()));
            let spare = spare.and_then(|mut spare| {
                let free = wait_exclusive(&mut spare);
                free.then_some(spare)
            });
            let mut next = match spare {
                Some(mut spare) => {
                    let fib = Arc::get_mut(&mut spare).expect("checked exclusive");
                    apply_ops(fib, &lag);
                    if big(lag.len() + ops.len()) {
                        fib.settle();
                    }
                    spare
                }
                // The spare lags too far, a reader still holds it, or there is none yet: copy
                // the live table.
                None => Arc::new(self.fib.load().settled_clone()),
            };
            apply_ops(Arc::get_mut(&mut next).expect("not yet shared"), &ops);
            next
        };
        r.spare = Some(self.fib.swap(next));
        r.lag = ops;
    }
}

/// The allowed-IPs table and map of `peers`. Peers are read oldest first, so that an
/// allowed IP belongs to the newest peer claiming it (as in WireGuard, the last to claim).
pub(super) fn allowed_tables(peers: &PeerMap) -> (Fib, PrefixMap<IpNet, NextHop>) {
    let mut fib = Fib::new();
    let mut map = PrefixMap::default();
    for p in peers.iter_by_age() {
        let settings = p
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for net in &settings.allowed_ips {
            fib.insert(net.trunc(), NextHop::Peer(p.id));
            map.insert(net.trunc(), NextHop::Peer(p.id));
        }
    }
    (fib, map)
}

#[cfg(test)]
mod route_tests {
    //! The incrementally maintained FIB against a full rebuild from the sources (the code
    //! this replaced), after random sequences of snapshots, updates and peer, static and
    //! connected changes.

    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use ipnet::IpNet;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use crate::fib::oracle::NaiveFib;
    use crate::fib::{Fib, NextHop, RouteOrigin, Via};
    use crate::forward::{Core, CoreError, PeerChange, PeerSpec, Settings};
    use crate::keys::Key;
    use crate::tunnel::PeerMap;

    const KEYS: u8 = 5;

    fn key(i: u8) -> Key {
        Key([i + 1; 32])
    }

    /// What the test told the core, kept the way the full rebuild read it.
    #[derive(Default)]
    struct Model {
        connected: Vec<IpNet>,
        statics: Vec<(IpNet, Via)>,
        control: HashMap<IpNet, Via>,
        /// The peers' keys, oldest first.
        peers: Vec<Key>,
    }

    impl Model {
        /// A peer change applied to the model; false if the core must refuse it.
        fn change(&mut self, c: &PeerChange, own: Key) -> bool {
            match c {
                PeerChange::Upsert(spec) if spec.public_key == own => return false,
                PeerChange::Upsert(spec) => {
                    if !self.peers.contains(&spec.public_key) {
                        self.peers.push(spec.public_key);
                    }
                }
                PeerChange::Remove(k) => self.peers.retain(|p| p != k),
                PeerChange::RemoveAll => self.peers.clear(),
            }
            true
        }
    }

    /// The full rebuild: allowed IPs (of the peers oldest first: the newest claim wins),
    /// then static, then control, then connected, each overriding the previous for the same
    /// prefix.
    fn rebuild(peers: &PeerMap, m: &Model) -> HashMap<IpNet, (RouteOrigin, NextHop)> {
        let mut e = HashMap::new();
        for k in &m.peers {
            let p = peers.by_key(k).expect("the model's peers exist");
            for net in p.settings().allowed_ips {
                e.insert(net.trunc(), (RouteOrigin::AllowedIps, NextHop::Peer(p.id)));
            }
        }
        for (net, via) in &m.statics {
            if let Some(nh) = peers.resolve(via) {
                e.insert(net.trunc(), (RouteOrigin::Static, nh));
            }
        }
        for (net, via) in &m.control {
            if let Some(nh) = peers.resolve(via) {
                e.insert(net.trunc(), (RouteOrigin::Control, nh));
            }
        }
        for net in &m.connected {
            e.insert(*net, (RouteOrigin::Connected, NextHop::Local));
        }
        e
    }

    /// Overlapping prefixes: few distinct high bits, many lengths, some host bits set.
    fn pool(rng: &mut StdRng) -> Vec<IpNet> {
        let mut v = Vec::new();
        for _ in 0..80 {
            let a = Ipv4Addr::new(10, rng.gen_range(0..3), rng.gen_range(0..3), rng.gen());
            let len = *[8u8, 12, 16, 20, 24, 25, 28, 31, 32].choose(rng).unwrap();
            v.push(IpNet::new(IpAddr::V4(a), len).unwrap());
        }
        for _ in 0..60 {
            let a = Ipv6Addr::new(0xfd00, rng.gen_range(0..3), 0, 0, 0, 0, 0, rng.gen());
            let len = *[8u8, 16, 32, 48, 64, 96, 120, 127, 128]
                .choose(rng)
                .unwrap();
            v.push(IpNet::new(IpAddr::V6(a), len).unwrap());
        }
        v
    }

    fn via(rng: &mut StdRng) -> Via {
        match rng.gen_range(0..11) {
            0 => Via::Local,
            1 => Via::Blackhole,
            2 => Via::Neighbour {
                ifindex: rng.gen_range(1..3),
                addr: IpAddr::from([0xfe80, 0, 0, 0, 0, 0, 0, rng.gen_range(1..3)]),
            },
            // Keys up to KEYS: one more than ever exists, so some routes do not resolve.
            _ => Via::Peer(key(rng.gen_range(0..=KEYS))),
        }
    }

    fn some_routes(rng: &mut StdRng, pool: &[IpNet], n: usize) -> Vec<(IpNet, Via)> {
        (0..n)
            .map(|_| (*pool.choose(rng).unwrap(), via(rng)))
            .collect()
    }

    /// Addresses to look up: every prefix's first and last address, and random ones.
    fn probes(rng: &mut StdRng, pool: &[IpNet]) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = pool
            .iter()
            .flat_map(|p| [p.network(), p.broadcast()])
            .collect();
        for _ in 0..40 {
            v.push(IpAddr::V4(Ipv4Addr::new(
                10,
                rng.gen_range(0..3),
                rng.gen_range(0..3),
                rng.gen(),
            )));
            v.push(IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                rng.gen_range(0..3),
                0,
                0,
                0,
                0,
                0,
                rng.gen(),
            )));
        }
        v
    }

    fn check(core: &Core, m: &Model, probes: &[IpAddr], step: usize) {
        let peers = core.peers();
        assert_eq!(peers.len(), m.peers.len(), "step {step}: peer count");
        let mut ids = std::collections::HashSet::new();
        for p in peers.iter() {
            assert!(
                p.id != 0 && ids.insert(p.id),
                "step {step}: id {} reused",
                p.id
            );
            assert_eq!(peers.by_key(&p.public_key).map(|q| q.id), Some(p.id));
        }
        let want = rebuild(&peers, m);
        let fib = core.fib();
        let got: HashMap<IpNet, NextHop> = fib
            .routes()
            .into_iter()
            .map(|r| (r.prefix, r.next_hop))
            .collect();
        let want_hops: HashMap<IpNet, NextHop> = want.iter().map(|(p, e)| (*p, e.1)).collect();
        assert_eq!(
            got, want_hops,
            "step {step}: FIB routes differ from a rebuild"
        );
        let with_origin: HashMap<IpNet, (RouteOrigin, NextHop)> = core
            .fib_routes()
            .into_iter()
            .map(|(r, o)| (r.prefix, (o, r.next_hop)))
            .collect();
        assert_eq!(
            with_origin, want,
            "step {step}: origins differ from a rebuild"
        );
        for (p, e) in &want {
            assert_eq!(
                core.route_origin(p),
                Some(e.0),
                "step {step}: origin of {p}"
            );
        }
        let mut naive = NaiveFib::default();
        for (p, e) in &want {
            naive.insert(*p, e.1);
        }
        for a in probes {
            assert_eq!(fib.lookup(*a), naive.lookup(*a), "step {step}: lookup {a}");
        }
    }

    #[test]
    fn incremental_fib_equals_a_full_rebuild_after_random_changes() {
        for seed in 0..4u64 {
            let mut rng = StdRng::seed_from_u64(0xf1b ^ seed);
            let pool = pool(&mut rng);
            let probes = probes(&mut rng, &pool);
            let core = Core::new("t0", Settings::default());
            // An observer (as the AF_XDP mesh programs' tables) that must end up equal to the
            // FIB after every change.
            let observed = Arc::new(std::sync::Mutex::new(HashMap::new()));
            let o = observed.clone();
            assert!(core.observe_routes(Box::new(move |ops| {
                let mut o = o.lock().unwrap();
                for (p, nh) in ops {
                    match nh {
                        Some(nh) => o.insert(*p, *nh),
                        None => o.remove(p),
                    };
                }
            })));
            let mut m = Model::default();
            // Tables a reader holds across changes, with what they held when loaded.
            let mut held: Vec<(Arc<Fib>, usize, Vec<crate::fib::Route>)> = Vec::new();
            let mut held_peers: Vec<(Arc<PeerMap>, usize)> = Vec::new();
            // A private key, so that a batch can name the device's own key.
            let private = Key([0x42; 32]);
            core.set_private_key(Some(private));
            let own = private.public_key();
            for step in 0..300 {
                match rng.gen_range(0..100) {
                    0..=14 => {
                        let n = rng.gen_range(0..60);
                        let routes = some_routes(&mut rng, &pool, n);
                        m.control = routes.iter().map(|(p, v)| (p.trunc(), *v)).collect();
                        core.set_control_routes(routes);
                    }
                    15..=54 => {
                        let n = rng.gen_range(0..6);
                        let add = some_routes(&mut rng, &pool, n);
                        let remove: Vec<IpNet> = (0..rng.gen_range(0..6))
                            .map(|_| *pool.choose(&mut rng).unwrap())
                            .collect();
                        for p in &remove {
                            m.control.remove(&p.trunc());
                        }
                        for (p, v) in &add {
                            m.control.insert(p.trunc(), *v);
                        }
                        core.update_control_routes(add, &remove);
                    }
                    55..=64 => {
                        let n = rng.gen_range(0..10);
                        m.statics = some_routes(&mut rng, &pool, n);
                        core.set_static_routes(m.statics.clone());
                    }
                    65..=69 => {
                        let addrs: Vec<IpAddr> = (0..rng.gen_range(0..3))
                            .map(|_| pool.choose(&mut rng).unwrap().network())
                            .collect();
                        m.connected = addrs.iter().map(|a| IpNet::from(*a)).collect();
                        core.set_local_addresses(&addrs);
                    }
                    70..=79 => {
                        let spec = peer_spec(&mut rng, &pool);
                        m.change(&PeerChange::Upsert(spec.clone()), own);
                        core.upsert_peer(spec).unwrap();
                    }
                    80..=86 => {
                        let k = key(rng.gen_range(0..KEYS));
                        m.change(&PeerChange::Remove(k), own);
                        core.remove_peer(&k);
                    }
                    87..=93 => {
                        // A batch; now and then with the device's own key, which stops it.
                        let changes: Vec<PeerChange> = (0..rng.gen_range(0..12))
                            .map(|_| match rng.gen_range(0..20) {
                                0 => PeerChange::RemoveAll,
                                1 => PeerChange::Upsert(PeerSpec {
                                    public_key: own,
                                    ..Default::default()
                                }),
                                2..=7 => PeerChange::Remove(key(rng.gen_range(0..KEYS))),
                                _ => PeerChange::Upsert(peer_spec(&mut rng, &pool)),
                            })
                            .collect();
                        let applied = changes.iter().take_while(|c| m.change(c, own)).count();
                        match core.apply_peer_changes(changes.clone()) {
                            Ok(_) => assert_eq!(applied, changes.len(), "step {step}"),
                            Err(e) => {
                                assert_eq!(e.index, applied, "step {step}: failed change");
                                assert!(matches!(e.error, CoreError::OwnKey), "step {step}");
                                assert_eq!(e.public_key, own);
                            }
                        }
                    }
                    94 => {
                        m.change(&PeerChange::RemoveAll, own);
                        core.clear_peers();
                    }
                    _ => {
                        // A reader keeps the current tables for a few changes.
                        let fib = core.fib();
                        let routes = fib.routes();
                        held.push((fib, step + rng.gen_range(1..5), routes));
                        held_peers.push((core.peers(), step + rng.gen_range(1..8)));
                    }
                }
                check(&core, &m, &probes, step);
                let fib: HashMap<IpNet, NextHop> = core
                    .fib_routes()
                    .into_iter()
                    .map(|(r, _)| (r.prefix, r.next_hop))
                    .collect();
                assert_eq!(*observed.lock().unwrap(), fib, "step {step}: the observer");
                held.retain(|(fib, until, routes)| {
                    // A published table never changes under its readers.
                    assert_eq!(&fib.routes(), routes, "step {step}: a held table changed");
                    *until > step
                });
                // An id is not reused while a reader holds a map in which it means another
                // peer.
                let now = core.peers();
                held_peers.retain(|(map, until)| {
                    for p in map.iter() {
                        if let Some(q) = now.get(p.id) {
                            assert!(Arc::ptr_eq(p, q), "step {step}: id {} reused early", p.id);
                        }
                    }
                    *until > step
                });
            }
        }
    }

    fn peer_spec(rng: &mut StdRng, pool: &[IpNet]) -> PeerSpec {
        let mut spec = PeerSpec {
            public_key: key(rng.gen_range(0..KEYS)),
            ..Default::default()
        };
        spec.settings.allowed_ips = (0..rng.gen_range(0..4))
            .map(|_| *pool.choose(rng).unwrap())
            .collect();
        spec
    }

    #[test]
    fn precedence_and_uncovering() {
        let core = Core::new("t0", Settings::default());
        let p: IpNet = "10.0.0.0/24".parse().unwrap();
        let host: IpNet = "10.0.0.5/32".parse().unwrap();
        let mut spec = PeerSpec {
            public_key: key(0),
            ..Default::default()
        };
        spec.settings.allowed_ips = vec![p];
        let a = core.upsert_peer(spec).unwrap();
        let b = core
            .upsert_peer(PeerSpec {
                public_key: key(1),
                ..Default::default()
            })
            .unwrap();
        let c = core
            .upsert_peer(PeerSpec {
                public_key: key(2),
                ..Default::default()
            })
            .unwrap();
        let route = |net: &IpNet| (core.fib().lookup(net.network()), core.route_origin(net));
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(a)), Some(RouteOrigin::AllowedIps))
        );
        core.set_static_routes(vec![(p, Via::Peer(key(1)))]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(b)), Some(RouteOrigin::Static))
        );
        core.set_control_routes(vec![(p, Via::Peer(key(2))), (host, Via::Peer(key(2)))]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(c)), Some(RouteOrigin::Control))
        );
        core.set_local_addresses(&["10.0.0.5".parse().unwrap()]);
        assert_eq!(
            route(&host),
            (Some(NextHop::Local), Some(RouteOrigin::Connected))
        );
        // Withdrawing the control route uncovers the static one, then the allowed IP.
        core.update_control_routes(vec![], &[p]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(b)), Some(RouteOrigin::Static))
        );
        core.set_static_routes(vec![]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(a)), Some(RouteOrigin::AllowedIps))
        );
        // A control route via a peer that does not exist does not override.
        core.update_control_routes(vec![(p, Via::Peer(key(4)))], &[]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(a)), Some(RouteOrigin::AllowedIps))
        );
        // Removing the peer it names drops a control route, uncovering what lies below.
        core.set_static_routes(vec![(p, Via::Blackhole)]);
        core.update_control_routes(vec![(p, Via::Peer(key(2)))], &[]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(c)), Some(RouteOrigin::Control))
        );
        core.remove_peer(&key(2));
        assert_eq!(
            route(&p),
            (Some(NextHop::Blackhole), Some(RouteOrigin::Static))
        );
        // The connected host route survives everything else going away.
        core.set_control_routes(vec![]);
        core.set_static_routes(vec![]);
        core.remove_peer(&key(0));
        assert_eq!(route(&p), (None, None));
        assert_eq!(
            route(&host),
            (Some(NextHop::Local), Some(RouteOrigin::Connected))
        );
    }

    #[test]
    fn concurrent_readers_see_whole_snapshots_only() {
        let core = Core::new("t0", Settings::default());
        let prefixes: Vec<IpNet> = (0..500u32)
            .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8))), 24).unwrap())
            .collect();
        let snapshot = |via: Via| prefixes.iter().map(|p| (*p, via)).collect::<Vec<_>>();
        core.set_control_routes(snapshot(Via::Local));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (core, stop, prefixes) = (core.clone(), stop.clone(), prefixes.clone());
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let fib = core.fib.load();
                        let first = fib.lookup(prefixes[0].network());
                        for p in &prefixes {
                            assert_eq!(fib.lookup(p.network()), first, "a half-applied table");
                        }
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        for i in 0..200 {
            let via = if i % 2 == 0 {
                Via::Blackhole
            } else {
                Via::Local
            };
            if i % 4 < 2 {
                core.set_control_routes(snapshot(via));
            } else {
                core.update_control_routes(snapshot(via), &[]);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }

    #[test]
    fn stale_is_cleared_by_a_snapshot_only() {
        let core = Core::new("t0", Settings::default());
        let p: IpNet = "10.9.0.0/16".parse().unwrap();
        core.set_control_routes(vec![(p, Via::Local)]);
        assert!(!core.sample().fib_stale);
        core.set_fib_stale(true);
        core.update_control_routes(vec![(p, Via::Blackhole)], &[]);
        assert!(core.sample().fib_stale, "an update keeps the FIB stale");
        assert_eq!(
            core.fib().lookup(p.network()),
            Some(NextHop::Blackhole),
            "stale routes are kept and still updated"
        );
        // The same snapshot again changes no route but marks the FIB fresh.
        core.set_control_routes(vec![(p, Via::Blackhole)]);
        assert!(!core.sample().fib_stale);
    }
}
