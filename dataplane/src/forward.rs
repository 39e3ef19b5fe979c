//! The forwarding core, without I/O.
//!
//! [`Core`] holds the state shared by all workers: identity, peers, FIB, allowed-IPs table,
//! handshake admission, counters. A [`Worker`] runs the pipeline of DESIGN.md over batches handed
//! to it by a backend (UDP + TUN, or the in-memory loopback) and hands its output batches to
//! a [`Sink`]. Nothing here opens a socket or reads a file; the clock is read only inside
//! boringtun.
//!
//! Copies: a datagram is decrypted by boringtun straight from the receive slot into a slot of
//! the TUN output batch (the AEAD does the copy), and encrypted from there into a slot of the
//! UDP output batch when it is relayed. No other copy is made.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::TunnResult;
use crossbeam::channel::{Receiver, Sender, TrySendError};
use ipnet::IpNet;

use crate::buf::{Batch, Slot, SLOT_SIZE};
use crate::fib::{Fib, FibHandle, NextHop, PeerId, PrefixMap, Route};
use crate::keys::Key;
use crate::stats::{DropReason, Path, PeerSample, Sample, Totals, WorkerCounters};
use crate::tunnel::guard::{Admit, HandshakeGuard, Refusal};
use crate::tunnel::index::IndexCipher;
use crate::tunnel::{Identity, Peer, PeerMap, PeerSettings, PeerState, MAX_PEER_ID};
use crate::wire::{self, IcmpError};

/// Where a route came from; a prefix present in several sources is taken from the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteOrigin {
    /// A peer's allowed IPs.
    AllowedIps,
    /// An address of the interface itself.
    Connected,
    /// A `[[route]]` of the config file.
    Static,
    /// Pushed by the control plane.
    Control,
}

/// Events the core reports (to the control channel).
#[derive(Debug, Clone)]
pub enum CoreEvent {
    /// A handshake with the peer completed.
    HandshakeUp(Key),
    /// The peer's endpoint changed (roaming).
    EndpointChanged(Key, SocketAddr),
    /// A Babel packet arrived inside the peer's tunnel.
    Punt(Key, Vec<u8>),
}

/// Receives core events. Called from the hot path for punts: must not block.
pub type EventSink = Arc<dyn Fn(CoreEvent) -> bool + Send + Sync>;

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inner MTU of the tunnels: larger relayed packets get "packet too big".
    pub mtu: u16,
    /// Clamp the MSS of TCP SYNs going into tunnels to fit `mtu`.
    pub mss_clamp: bool,
    /// Source address of ICMPv4 errors we generate.
    pub icmp_src_v4: Option<Ipv4Addr>,
    /// Source address of ICMPv6 errors we generate.
    pub icmp_src_v6: Option<Ipv6Addr>,
    /// Deliver decrypted packets that match no route to the TUN device, as wireguard-go
    /// does (drop-in mode). When false they are dropped as `no_route` with an ICMP error.
    pub unrouted_local: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mtu: 1420,
            mss_clamp: true,
            icmp_src_v4: None,
            icmp_src_v6: None,
            unrouted_local: true,
        }
    }
}

/// Configuration of one peer as the UAPI or the config file give it.
#[derive(Debug, Clone, Default)]
pub struct PeerSpec {
    /// Public key.
    pub public_key: Key,
    /// Endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Everything else.
    pub settings: PeerSettings,
}

/// One change of the peer table, for [`Core::apply_peer_changes`].
#[derive(Debug, Clone)]
pub enum PeerChange {
    /// Add the peer, or update it if its key is known (as [`Core::upsert_peer`]).
    Upsert(PeerSpec),
    /// Remove the peer with this key, if there is one.
    Remove(Key),
    /// Remove every peer (the UAPI's `replace_peers`).
    RemoveAll,
}

/// What a batch of peer changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers created.
    pub added: usize,
    /// Existing peers updated.
    pub updated: usize,
    /// Peers removed.
    pub removed: usize,
}

/// A batch of peer changes stopped at a change that failed. The changes before it were
/// applied (and published); it and the ones after it were not.
#[derive(Debug, thiserror::Error)]
#[error("peer {key}: {error}", key = crate::tunnel::key_b64(.public_key))]
pub struct PeerChangeError {
    /// Position of the failed change in the batch: also the number of changes applied.
    pub index: usize,
    /// The peer it names.
    pub public_key: Key,
    /// What was wrong.
    pub error: CoreError,
}

/// A set of prefixes, with the FIB's fast hasher.
type PrefixSet = HashSet<IpNet, std::hash::BuildHasherDefault<crate::fib::PrefixHasher>>;

/// A change to the FIB: the prefix now maps to this next hop, or (None) has no route.
type FibOp = (IpNet, Option<NextHop>);

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
struct Routes {
    /// Host routes for the interface's own addresses.
    connected: PrefixSet,
    /// Static routes by prefix, duplicates in config order (the last that resolves wins).
    statics: PrefixMap<IpNet, Vec<StaticVia>>,
    /// Control-plane routes by prefix.
    control: PrefixMap<IpNet, ControlVia>,
    /// The peers' allowed IPs by prefix (the last peer claiming one wins).
    allowed: PrefixMap<IpNet, NextHop>,
    /// What the published FIB holds, and where each route came from.
    merged: PrefixMap<IpNet, (RouteOrigin, NextHop)>,
    /// The previously published FIB, to be brought up to date and published next.
    spare: Option<Arc<Fib>>,
    /// Ops the published FIB has and `spare` does not.
    lag: Vec<FibOp>,
}

/// Resolve a static or control route target against the peer table.
fn resolve(peers: &PeerMap, via: &StaticVia) -> Option<NextHop> {
    match via {
        StaticVia::Peer(k) => peers.by_key(k).map(|p| NextHop::Peer(p.id)),
        StaticVia::Local => Some(NextHop::Local),
        StaticVia::Blackhole => Some(NextHop::Blackhole),
    }
}

impl Routes {
    /// The route for `prefix` (truncated) that the sources give, by precedence.
    fn compute(&self, peers: &PeerMap, prefix: &IpNet) -> Option<(RouteOrigin, NextHop)> {
        if self.connected.contains(prefix) {
            return Some((RouteOrigin::Connected, NextHop::Local));
        }
        if let Some(nh) = self.control.get(prefix).and_then(|v| resolve(peers, v)) {
            return Some((RouteOrigin::Control, nh));
        }
        if let Some(nh) = self
            .statics
            .get(prefix)
            .and_then(|vias| vias.iter().rev().find_map(|v| resolve(peers, v)))
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
fn apply_ops(fib: &mut Fib, ops: &[FibOp]) {
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
fn wait_exclusive(fib: &mut Arc<Fib>) -> bool {
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
const SETTLE_MIN_OPS: usize = if cfg!(test) { 8 } else { 4096 };

/// How long a change waits for readers to let go of the spare FIB before copying the
/// published one instead. Workers hold a table for one batch.
const SPARE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Static route target, by key so that it survives peer re-creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticVia {
    /// A peer.
    Peer(Key),
    /// The TUN device.
    Local,
    /// Drop.
    Blackhole,
}

/// Control-plane route target.
pub type ControlVia = StaticVia;

/// State shared by every worker of one device.
pub struct Core {
    ifname: String,
    identity: ArcSwapOption<Identity>,
    peers: ArcSwap<PeerMap>,
    fib: FibHandle,
    allowed: FibHandle,
    /// Admission of handshake messages (depends on our public key).
    guard: ArcSwap<HandshakeGuard>,
    /// boringtun's receiver indices ↔ the wire's.
    index: IndexCipher,
    /// Where admitted handshake messages go when a handshake thread serves them (see
    /// [`Core::handshake_queue`]); without one they are processed where they arrive.
    handshake_tx: ArcSwapOption<Sender<QueuedHandshake>>,
    settings: ArcSwap<Settings>,
    workers: Mutex<Vec<Arc<WorkerCounters>>>,
    routes: Mutex<Routes>,
    /// Serialises configuration changes (peer table, routes, key).
    config_lock: Mutex<()>,
    events: ArcSwapOption<EventSinkBox>,
    fib_stale: AtomicBool,
}

struct EventSinkBox(EventSink);

impl Core {
    /// A device core with no key and no peers.
    pub fn new(ifname: &str, settings: Settings) -> Arc<Self> {
        let zero = boringtun::x25519::PublicKey::from([0u8; 32]);
        Arc::new(Self {
            ifname: ifname.to_string(),
            identity: ArcSwapOption::empty(),
            peers: ArcSwap::from_pointee(PeerMap::default()),
            fib: FibHandle::new(Fib::new()),
            allowed: FibHandle::new(Fib::new()),
            guard: ArcSwap::from_pointee(HandshakeGuard::new(&zero)),
            index: IndexCipher::random(),
            handshake_tx: ArcSwapOption::empty(),
            settings: ArcSwap::from_pointee(settings),
            workers: Mutex::new(Vec::new()),
            routes: Mutex::new(Routes::default()),
            config_lock: Mutex::new(()),
            events: ArcSwapOption::empty(),
            fib_stale: AtomicBool::new(false),
        })
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Where events go.
    pub fn set_event_sink(&self, sink: EventSink) {
        self.events.store(Some(Arc::new(EventSinkBox(sink))));
    }

    fn emit(&self, ev: CoreEvent) -> bool {
        match &*self.events.load() {
            Some(s) => (s.0)(ev),
            None => false,
        }
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replace the settings.
    pub fn set_settings(&self, s: Settings) {
        self.settings.store(Arc::new(s));
    }

    /// The private key, if set.
    pub fn private_key(&self) -> Option<Key> {
        self.identity.load().as_ref().map(|i| i.private_key)
    }

    /// The public key, if a private key is set.
    pub fn public_key(&self) -> Option<Key> {
        self.identity.load().as_ref().map(|i| i.public_key())
    }

    /// The peer table.
    pub fn peers(&self) -> Arc<PeerMap> {
        self.peers.load_full()
    }

    /// The FIB.
    pub fn fib(&self) -> Arc<Fib> {
        self.fib.load_full()
    }

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

    /// Start a new second of handshake admission (load, per-source rates); call once a
    /// second.
    pub fn reset_rate_limiter(&self) {
        self.guard.load().tick();
    }

    /// Whether more handshake messages arrived this second than the budget (cookies are
    /// required).
    pub fn handshakes_under_load(&self) -> bool {
        self.guard.load().under_load() || self.handshake_backlog()
    }

    /// From now on, admitted handshake initiations and responses are not processed by the
    /// worker that received them but queued (at most [`HANDSHAKE_QUEUE`]; beyond, dropped as
    /// `handshake_rate_limited`) for whoever drains the returned receiver with
    /// [`Worker::handle_handshakes`]: a thread of their own, so that their Diffie-Hellman
    /// never delays transport data. A queue an eighth full puts the device under load, as in
    /// wireguard-go.
    pub fn handshake_queue(&self) -> Receiver<QueuedHandshake> {
        let (tx, rx) = crossbeam::channel::bounded(HANDSHAKE_QUEUE);
        self.handshake_tx.store(Some(Arc::new(tx)));
        rx
    }

    fn handshake_backlog(&self) -> bool {
        self.handshake_tx
            .load()
            .as_ref()
            .is_some_and(|tx| tx.len() >= HANDSHAKE_QUEUE / 8)
    }

    /// Set or clear the private key. Sessions are reset; a peer with the device's own public
    /// key is removed (as wireguard-go does).
    pub fn set_private_key(&self, key: Option<Key>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let identity = key
            .filter(|k| k.0 != [0; 32])
            .map(|k| Arc::new(Identity::new(k)));
        if identity.as_ref().map(|i| i.private_key) == self.private_key() {
            return;
        }
        let zero = boringtun::x25519::PublicKey::from([0u8; 32]);
        self.guard.store(Arc::new(HandshakeGuard::new(
            identity.as_ref().map_or(&zero, |i| &i.public),
        )));
        self.identity.store(identity.clone());
        let mut map = self.peers_to_change();
        if let Some(id) = &identity {
            let own = id.public_key();
            map.remove(&own);
            for p in map.iter() {
                p.reset_session(id);
            }
        }
        self.peers.store(Arc::new(map));
        self.rebuild_tables();
    }

    /// Add a peer or update an existing one. A changed preshared key or keepalive resets
    /// the session; everything else is kept. (A batch of one change.)
    pub fn upsert_peer(&self, spec: PeerSpec) -> Result<PeerId, CoreError> {
        let mut id = 0;
        self.change_peers([PeerChange::Upsert(spec)], |i| id = i)
            .map_err(|e| e.error)?;
        Ok(id)
    }

    /// Remove a peer. Returns whether it existed. (A batch of one change.)
    pub fn remove_peer(&self, key: &Key) -> bool {
        self.apply_peer_changes([PeerChange::Remove(*key)])
            .is_ok_and(|c| c.removed > 0)
    }

    /// Remove every peer. (A batch of one change.)
    pub fn clear_peers(&self) {
        // Removals cannot fail.
        let _ = self.apply_peer_changes([PeerChange::RemoveAll]);
    }

    /// Apply a batch of peer changes, in order, as one change of the tables: the peer map is
    /// copied once and the allowed-IPs table and the FIB are rebuilt and published once, so
    /// a batch of n changes costs O(peers + n), not O(peers × n). An upsert behaves as
    /// [`Core::upsert_peer`].
    ///
    /// The batch stops at the first change that fails (as wireguard-go applies a `set`
    /// line by line until the first error): the changes before it are applied and published,
    /// the failing one and those after it are not, and the error says which one failed.
    pub fn apply_peer_changes(
        &self,
        changes: impl IntoIterator<Item = PeerChange>,
    ) -> Result<PeerChanges, PeerChangeError> {
        self.change_peers(changes, |_| {})
    }

    /// [`Core::apply_peer_changes`], calling `upserted` with the id of every peer upserted.
    fn change_peers(
        &self,
        changes: impl IntoIterator<Item = PeerChange>,
        mut upserted: impl FnMut(PeerId),
    ) -> Result<PeerChanges, PeerChangeError> {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let identity = self.identity.load_full();
        // Without a private key sessions are made with a throwaway identity and replaced
        // when the key is set.
        let placeholder = identity.is_none().then(|| Identity::new(Key([1; 32])));
        let ident = identity
            .as_deref()
            .or(placeholder.as_ref())
            .expect("one of them");
        let own = identity.as_ref().map(|i| i.public_key());
        let mut map = self.peers_to_change();
        let mut done = PeerChanges::default();
        // Keys added or removed: the static and control routes that name them resolve anew.
        let mut touched: HashSet<Key> = HashSet::new();
        let mut failed = None;
        for (index, change) in changes.into_iter().enumerate() {
            match change {
                PeerChange::Upsert(spec) => {
                    let key = spec.public_key;
                    if let Some(peer) = map.by_key(&key) {
                        update_peer(peer, spec, identity.as_deref());
                        upserted(peer.id);
                        done.updated += 1;
                        continue;
                    }
                    let id = map.next_id();
                    let error = if own == Some(key) {
                        CoreError::OwnKey
                    } else if id > MAX_PEER_ID {
                        CoreError::TooManyPeers
                    } else {
                        let peer =
                            Arc::new(Peer::new(id, ident, key, spec.settings, spec.endpoint));
                        if let Some(k) = peer.settings().persistent_keepalive.filter(|&k| k > 0) {
                            tracing::debug!(peer = %peer.label, keepalive = k, "persistent keepalive");
                        }
                        map.insert(peer);
                        touched.insert(key);
                        upserted(id);
                        done.added += 1;
                        continue;
                    };
                    failed = Some(PeerChangeError {
                        index,
                        public_key: key,
                        error,
                    });
                    break;
                }
                PeerChange::Remove(key) => {
                    if map.remove(&key).is_some() {
                        touched.insert(key);
                        done.removed += 1;
                    }
                }
                PeerChange::RemoveAll => {
                    for p in map.clear() {
                        touched.insert(p.public_key);
                        done.removed += 1;
                    }
                }
            }
        }
        if done != PeerChanges::default() {
            self.peers.store(Arc::new(map));
            self.refresh_peer_routes(&touched);
        }
        failed.map_or(Ok(done), Err)
    }

    /// A copy of the peer map to change and publish (see [`PeerMap`]).
    fn peers_to_change(&self) -> PeerMap {
        let mut map = (**self.peers.load()).clone();
        map.reclaim_ids();
        map
    }

    /// Set an existing peer's endpoint.
    pub fn set_endpoint(&self, key: &Key, endpoint: SocketAddr) -> bool {
        match self.peers.load().by_key(key) {
            Some(p) => {
                p.lock().endpoint = Some(endpoint);
                true
            }
            None => false,
        }
    }

    /// Replace the static routes.
    pub fn set_static_routes(&self, routes: Vec<(IpNet, StaticVia)>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut statics: PrefixMap<IpNet, Vec<StaticVia>> = PrefixMap::default();
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
    pub fn set_control_routes(&self, routes: Vec<(IpNet, ControlVia)>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let peers = self.peers.load_full();
        let mut r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new: PrefixMap<IpNet, ControlVia> =
            PrefixMap::with_capacity_and_hasher(routes.len(), Default::default());
        for (p, v) in routes {
            new.insert(p.trunc(), v);
        }
        let old = std::mem::replace(&mut r.control, new);
        let changed: Vec<IpNet> = r
            .control
            .iter()
            .filter(|(p, v)| old.get(p) != Some(v))
            .map(|(p, _)| *p)
            .chain(old.keys().filter(|p| !r.control.contains_key(p)).copied())
            .collect();
        let mut ops = Vec::new();
        r.refresh(&peers, &changed, &mut ops);
        self.fib_stale.store(false, Relaxed);
        self.publish_ops(&mut r, ops);
    }

    /// Apply an incremental control-plane update: withdraw `remove`, then add or replace
    /// `add`. Costs O(changed routes), not O(table).
    pub fn update_control_routes(&self, add: Vec<(IpNet, ControlVia)>, remove: &[IpNet]) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let peers = self.peers.load_full();
        let mut r = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut touched = Vec::with_capacity(add.len() + remove.len());
        for p in remove {
            let p = p.trunc();
            r.control.remove(&p);
            touched.push(p);
        }
        for (p, v) in add {
            let p = p.trunc();
            r.control.insert(p, v);
            touched.push(p);
        }
        let mut ops = Vec::new();
        r.refresh(&peers, &touched, &mut ops);
        self.publish_ops(&mut r, ops);
    }

    /// After a change of the private key or of static or connected routes: rebuild and
    /// publish the allowed-IPs table, recompute every prefix of the merged table and apply
    /// the differences to the FIB.
    fn rebuild_tables(&self) {
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
    fn refresh_peer_routes(&self, touched: &HashSet<Key>) {
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
            let names = |v: &StaticVia| matches!(v, StaticVia::Peer(k) if touched.contains(k));
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

    /// Make `ops` live: bring the spare FIB up to date, apply them, publish it whole.
    ///
    /// Large changes are cheaper another way: a change of half the table or more builds the
    /// new FIB from `merged` (inserts into an empty table beat removals), and a spare that
    /// lags by an eighth of the table or more is replaced by a copy of the live one.
    fn publish_ops(&self, r: &mut Routes, ops: Vec<FibOp>) {
        if ops.is_empty() {
            return;
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

    /// Register a worker's counters (for scrapes).
    fn register_worker(&self) -> Arc<WorkerCounters> {
        let c = Arc::new(WorkerCounters::default());
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(c.clone());
        c
    }

    /// Sum of the workers' counters.
    pub fn totals(&self) -> Totals {
        let w = self
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Totals::sum(w.iter().map(|c| &**c))
    }

    /// Everything a metrics scrape shows.
    pub fn sample(&self) -> Sample {
        let fib = self.fib.load();
        let peers = self.peers.load();
        Sample {
            ifname: self.ifname.clone(),
            totals: self.totals(),
            peers: peers
                .iter()
                .map(|p| {
                    let c = &p.counters;
                    PeerSample {
                        name: p.label.clone(),
                        public_key: crate::tunnel::key_b64(&p.public_key),
                        class: p.settings().class.as_str(),
                        rx_bytes: c.rx_bytes.load(Relaxed),
                        tx_bytes: c.tx_bytes.load(Relaxed),
                        rx_packets: c.rx_packets.load(Relaxed),
                        tx_packets: c.tx_packets.load(Relaxed),
                        handshakes: c.handshakes.load(Relaxed),
                        last_handshake: p.last_handshake().and_then(|t| {
                            t.duration_since(SystemTime::UNIX_EPOCH)
                                .ok()
                                .map(|d| d.as_secs_f64())
                        }),
                    }
                })
                .collect(),
            fib_v4: fib.len_v4(),
            fib_v6: fib.len_v6(),
            fib_stale: self.fib_stale.load(Relaxed),
        }
    }
}

/// Update an existing peer to `spec`. A changed preshared key or keepalive resets the
/// session (when there is a private key); everything else is kept.
fn update_peer(peer: &Peer, spec: PeerSpec, identity: Option<&Identity>) {
    let reset = {
        let mut settings = peer
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reset = settings.preshared_key != spec.settings.preshared_key
            || settings.persistent_keepalive != spec.settings.persistent_keepalive;
        *settings = spec.settings;
        reset
    };
    if let Some(ep) = spec.endpoint {
        peer.lock().endpoint = Some(ep);
    }
    if reset {
        if let Some(id) = identity {
            peer.reset_session(id);
        }
    }
}

/// The allowed-IPs table and map of `peers`. Peers are read oldest first, so that an
/// allowed IP belongs to the newest peer claiming it (as in WireGuard, the last to claim).
fn allowed_tables(peers: &PeerMap) -> (Fib, PrefixMap<IpNet, NextHop>) {
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

/// Errors of configuration changes on the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The peer's public key is the device's own.
    #[error("peer public key is this device's own public key")]
    OwnKey,
    /// No more peer ids.
    #[error("too many peers (at most {MAX_PEER_ID})")]
    TooManyPeers,
}

/// Capacity of the handshake queue (wireguard-go's `QueueHandshakeSize`).
pub const HANDSHAKE_QUEUE: usize = 1024;

/// An admitted handshake message waiting for the handshake thread.
pub struct QueuedHandshake {
    bytes: [u8; wire::wg::INITIATION_LEN],
    len: usize,
    src: SocketAddr,
}

impl QueuedHandshake {
    fn new(data: &[u8], src: SocketAddr) -> Self {
        let mut bytes = [0; wire::wg::INITIATION_LEN];
        let len = data.len().min(bytes.len());
        bytes[..len].copy_from_slice(&data[..len]); // off the hot path: one handshake
        Self { bytes, len, src }
    }
}

/// Where a worker's output goes.
pub trait Sink {
    /// Send every datagram of `batch` (each slot's `addr` is the destination), then clear it.
    fn send_udp(&mut self, batch: &mut Batch);
    /// Write every packet of `batch` to the local side (TUN), then clear it.
    fn write_tun(&mut self, batch: &mut Batch);
}

/// One worker's pipeline state: output batches and scratch space, allocated once.
pub struct Worker {
    core: Arc<Core>,
    counters: Arc<WorkerCounters>,
    /// Datagrams to send.
    udp_out: Batch,
    /// Packets for the TUN device. Decryption writes into its next free slot.
    tun_out: Batch,
    /// Scratch for generated ICMP errors and handshake flushes.
    scratch: Box<[u8; SLOT_SIZE]>,
}

impl Worker {
    /// A worker of `core`, with its own counters.
    pub fn new(core: Arc<Core>) -> Self {
        let counters = core.register_worker();
        Self {
            core,
            counters,
            udp_out: Batch::default(),
            tun_out: Batch::default(),
            scratch: Box::new([0; SLOT_SIZE]),
        }
    }

    /// This worker's counters.
    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }

    /// Flush both output batches.
    pub fn flush(&mut self, sink: &mut impl Sink) {
        if !self.udp_out.is_empty() {
            sink.send_udp(&mut self.udp_out);
        }
        if !self.tun_out.is_empty() {
            sink.write_tun(&mut self.tun_out);
        }
    }

    /// Run `f` with the state of one batch (tables loaded once, output batches borrowed),
    /// then flush what it produced.
    fn with_ctx<S: Sink, R>(&mut self, sink: &mut S, f: impl FnOnce(&mut Ctx<'_, S>) -> R) -> R {
        // The peer map before the tables: a table is then never older than the map, which a
        // reused peer id needs (see `PeerMap`).
        let peers = self.core.peers.load();
        let fib = self.core.fib.load();
        let allowed = self.core.allowed.load();
        let settings = self.core.settings.load();
        let mut ctx = Ctx {
            core: &self.core,
            counters: &self.counters,
            peers: &peers,
            fib: &fib,
            allowed: &allowed,
            settings: &settings,
            udp_out: &mut self.udp_out,
            tun_out: &mut self.tun_out,
            scratch: &mut self.scratch,
            sink,
        };
        let r = f(&mut ctx);
        self.flush(sink);
        r
    }

    /// Process a batch of received UDP datagrams (slot `addr` = source). Output is flushed
    /// to `sink` whenever a batch fills and at the end.
    pub fn handle_datagrams(&mut self, rx: &mut Batch, sink: &mut impl Sink) {
        self.counters.rx_batches.add(1);
        self.counters.rx_packets.add(rx.len() as u64);
        let n = rx.len();
        self.with_ctx(sink, |ctx| {
            for slot in &mut rx.slots_mut()[..n] {
                ctx.datagram(slot);
            }
        });
        rx.clear();
    }

    /// Process datagrams that sit in caller-owned buffers (e.g. the segments of a
    /// GRO-coalesced receive), each with its source.
    pub fn handle_segments<'a>(
        &mut self,
        segments: impl IntoIterator<Item = (&'a mut [u8], SocketAddr)>,
        sink: &mut impl Sink,
    ) {
        self.counters.rx_batches.add(1);
        let n = self.with_ctx(sink, |ctx| {
            let mut n = 0;
            for (data, src) in segments {
                n += 1;
                if data.len() > SLOT_SIZE {
                    ctx.drop(DropReason::Oversized);
                } else {
                    ctx.datagram_bytes(data, src);
                }
            }
            n
        });
        self.counters.rx_packets.add(n);
    }

    /// Process a batch of IP packets read from the TUN device.
    pub fn handle_tun(&mut self, rx: &mut Batch, sink: &mut impl Sink) {
        self.counters.rx_batches.add(1);
        self.counters.rx_packets.add(rx.len() as u64);
        let n = rx.len();
        self.with_ctx(sink, |ctx| {
            for slot in &mut rx.slots_mut()[..n] {
                ctx.local_packet(slot.data_mut());
            }
        });
        rx.clear();
    }

    /// Inject an IP packet into a peer's tunnel (control plane → peer).
    pub fn inject(&mut self, peer: &Key, packet: &[u8], sink: &mut impl Sink) -> bool {
        let Some(p) = self.core.peers.load().by_key(peer).cloned() else {
            return false;
        };
        self.with_ctx(sink, |ctx| ctx.encapsulate_to(&p, packet))
    }

    /// Process queued handshake messages (see [`Core::handshake_queue`]); their answers go
    /// to `sink`.
    pub fn handle_handshakes(
        &mut self,
        queued: impl IntoIterator<Item = QueuedHandshake>,
        sink: &mut impl Sink,
    ) {
        self.with_ctx(sink, |ctx| {
            for mut q in queued {
                let (data, src) = (&mut q.bytes[..q.len], q.src);
                match data[0] {
                    wire::wg::INITIATION => ctx.initiation_admitted(data, src),
                    _ => ctx.response_admitted(data, src),
                }
            }
        });
    }

    /// Run every peer's timers (handshake retries, rekey, keepalives). Call every ~100 ms.
    pub fn tick(&mut self, sink: &mut impl Sink) {
        let peers = self.core.peers.load_full();
        for p in peers.iter() {
            if self.udp_out.is_full() {
                sink.send_udp(&mut self.udp_out);
            }
            let mut st = p.lock();
            let endpoint = st.endpoint;
            let Some(slot) = self.udp_out.next_free() else {
                continue;
            };
            match st.tunn.update_timers(&mut slot.buf_mut()[..]) {
                TunnResult::WriteToNetwork(out) => {
                    let n = out.len();
                    seal_outgoing(&self.core.index, &mut st, &p.macs, &mut out[..n]);
                    if let Some(ep) = endpoint {
                        slot.len = n;
                        slot.addr = Some(ep);
                        self.udp_out.commit();
                        p.counters.tx(n);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                TunnResult::Err(e) => tracing::trace!(peer = %p.label, ?e, "timer"),
                _ => {}
            }
        }
        self.flush(sink);
    }
}

/// Borrowed state for one batch.
struct Ctx<'a, S: Sink> {
    core: &'a Core,
    counters: &'a WorkerCounters,
    peers: &'a PeerMap,
    fib: &'a Fib,
    allowed: &'a Fib,
    settings: &'a Settings,
    udp_out: &'a mut Batch,
    tun_out: &'a mut Batch,
    scratch: &'a mut [u8; SLOT_SIZE],
    sink: &'a mut S,
}

fn drop_reason(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::InvalidAeadTag => DropReason::DecryptFailed,
        E::InvalidCounter | E::DuplicateCounter => DropReason::Replay,
        E::NoCurrentSession | E::ConnectionExpired => DropReason::NoSession,
        E::WrongIndex => DropReason::UnknownIndex,
        E::UnderLoad => DropReason::HandshakeRateLimited,
        E::InvalidMac
        | E::WrongKey
        | E::InvalidTai64nTimestamp
        | E::WrongTai64nTimestamp
        | E::UnexpectedPacket => DropReason::HandshakeFailed,
        _ => DropReason::BadPacket,
    }
}

impl<S: Sink> Ctx<'_, S> {
    #[inline]
    fn drop(&self, r: DropReason) {
        self.counters.drop(r);
    }

    /// One received datagram.
    fn datagram(&mut self, slot: &mut Slot) {
        let Some(src) = slot.addr else {
            return self.drop(DropReason::BadPacket);
        };
        if slot.truncated {
            return self.drop(DropReason::Oversized);
        }
        self.datagram_bytes(slot.data_mut(), src);
    }

    /// Classify a datagram and hand it to its path. The datagram is mutable because the
    /// receiver index on the wire is rewritten to boringtun's in place.
    ///
    /// The rule of every path (WireGuard's): only a message that authenticated — a handshake
    /// message that passed boringtun's checks, transport data that decrypted — counts as
    /// received, moves the endpoint, or completes a handshake. A message we answer with a
    /// cookie reply changes nothing.
    fn datagram_bytes(&mut self, data: &mut [u8], src: SocketAddr) {
        use wire::wg::Message;
        match Message::classify(data) {
            Some(Message::Initiation { .. }) => self.handshake_initiation(data, src),
            Some(Message::Response { .. }) => self.handshake_response(data, src),
            Some(Message::CookieReply { receiver }) => self.cookie_reply(receiver, data),
            Some(Message::Data { receiver, .. }) => self.transport(receiver, data, src),
            None => self.drop(DropReason::BadPacket),
        }
    }

    /// Admission of a handshake message (mac1; under load, mac2 and the source's rate).
    /// Answers with a cookie reply where one is due. Returns whether to go on; an admitted
    /// message is queued for the handshake thread if there is one, and then this returns
    /// false too.
    fn admit_handshake(&mut self, data: &[u8], src: SocketAddr) -> bool {
        if self.core.identity.load().is_none() {
            self.drop(DropReason::NoKey);
            return false;
        }
        let queue = self.core.handshake_tx.load_full();
        let backlog = queue
            .as_ref()
            .is_some_and(|q| q.len() >= HANDSHAKE_QUEUE / 8);
        let mut reply = [0u8; 64];
        match self.core.guard.load().admit(src, data, backlog, &mut reply) {
            Admit::Pass => {}
            Admit::Cookie(n) => {
                self.counters.cookies_sent.add(1);
                self.drop(DropReason::HandshakeRateLimited);
                self.send_raw(&reply[..n], src);
                return false;
            }
            Admit::Drop(Refusal::RateLimited) => {
                self.drop(DropReason::HandshakeRateLimited);
                return false;
            }
            Admit::Drop(Refusal::BadMac | Refusal::Malformed) => {
                self.drop(DropReason::HandshakeFailed);
                return false;
            }
        }
        let Some(queue) = queue else {
            return true;
        };
        match queue.try_send(QueuedHandshake::new(data, src)) {
            Ok(()) => false,
            Err(TrySendError::Full(_)) => {
                self.drop(DropReason::HandshakeRateLimited);
                false
            }
            // The handshake thread is gone (the device is stopping): do it here.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }

    /// The peer that owns a wire receiver index, and boringtun's index, which is written over
    /// the wire's in `field`.
    fn open_index(&self, wire: u32, field: &mut [u8]) -> Option<(Arc<Peer>, u32)> {
        let index = self.core.index.open(wire);
        let peer = self.peers.by_receiver_index(index)?.clone();
        field.copy_from_slice(&index.to_le_bytes());
        Some((peer, index))
    }

    fn handshake_initiation(&mut self, data: &[u8], src: SocketAddr) {
        if self.admit_handshake(data, src) {
            self.initiation_admitted(data, src);
        }
    }

    fn handshake_response(&mut self, data: &mut [u8], src: SocketAddr) {
        if self.admit_handshake(data, src) {
            self.response_admitted(data, src);
        }
    }

    /// An admitted initiation: find the peer by the static key it carries (one
    /// Diffie-Hellman), then let its session answer.
    fn initiation_admitted(&mut self, data: &[u8], src: SocketAddr) {
        let Some(identity) = self.core.identity.load_full() else {
            return self.drop(DropReason::NoKey);
        };
        let Ok(boringtun::noise::Packet::HandshakeInit(init)) =
            boringtun::noise::Tunn::parse_incoming_packet(data)
        else {
            return self.drop(DropReason::BadPacket);
        };
        let Ok(half) = parse_handshake_anon(&identity.secret, &identity.public, &init) else {
            return self.drop(DropReason::HandshakeFailed);
        };
        let Some(peer) = self.peers.by_key(&Key(half.peer_static_public)).cloned() else {
            return self.drop(DropReason::UnknownPeer);
        };
        self.handshake(&peer, data, src);
    }

    /// An admitted response: the peer by its receiver index.
    fn response_admitted(&mut self, data: &mut [u8], src: SocketAddr) {
        let Some(identity) = self.core.identity.load_full() else {
            return self.drop(DropReason::NoKey);
        };
        let wire = u32::from_le_bytes(data[8..12].try_into().expect("a response"));
        let Some((peer, _)) = self.open_index(wire, &mut data[8..12]) else {
            return self.drop(DropReason::UnknownIndex);
        };
        // mac1 covers the receiver index: redo it over boringtun's, which checks it again.
        identity.macs.set_mac1(data);
        self.handshake(&peer, data, src);
    }

    /// A cookie reply to a handshake message we sent: kept for the next one's mac2. It moves
    /// nothing and is not counted as received from the peer (anyone who saw our message and
    /// knows the peer's public key can make one).
    fn cookie_reply(&mut self, wire: u32, data: &[u8]) {
        let Some(peer) = self
            .peers
            .by_receiver_index(self.core.index.open(wire))
            .cloned()
        else {
            return self.drop(DropReason::UnknownIndex);
        };
        let mut st = peer.lock();
        let PeerState { cookies, .. } = &mut *st;
        if !cookies.consume(&peer.macs, wire, data) {
            drop(st);
            self.drop(DropReason::HandshakeFailed);
        }
    }

    /// An admitted handshake initiation or response for `peer`. boringtun's answer (our
    /// response, or the keepalive that confirms a session we initiated) goes out at once, then
    /// whatever the session queued while it had no keys.
    fn handshake(&mut self, peer: &Arc<Peer>, data: &[u8], src: SocketAddr) {
        let ty = data[0];
        let mut st = peer.lock();
        if self.udp_out.is_full() {
            self.sink.send_udp(self.udp_out);
        }
        let Some(slot) = self.udp_out.next_free() else {
            return;
        };
        match st
            .tunn
            .decapsulate(Some(src.ip()), data, &mut slot.buf_mut()[..])
        {
            // The session's limiter is never over budget, so this is an answer, never a
            // cookie: the message authenticated.
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                if ty == wire::wg::INITIATION {
                    // Our response names the new session; it is confirmed by its first use.
                    st.unconfirmed = p
                        .get(4..8)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
                }
                seal_outgoing(&self.core.index, &mut st, &peer.macs, &mut p[..n]);
                commit_datagram(self.udp_out, n, src);
                peer.counters.tx(n);
            }
            // Whatever boringtun found wrong (a MAC, the AEAD, the timestamp, the state), the
            // message failed as a handshake.
            _ => {
                drop(st);
                return self.drop(DropReason::HandshakeFailed);
            }
        }
        let moved = authenticated(peer, &mut st, data.len(), src);
        self.flush_queued(peer, &mut st, src);
        drop(st);
        if ty == wire::wg::RESPONSE {
            // We initiated; the response completed the handshake.
            self.handshake_up(peer);
        }
        if moved {
            self.core
                .emit(CoreEvent::EndpointChanged(peer.public_key, src));
        }
    }

    /// Send what the session queued while it waited for a handshake.
    fn flush_queued(&mut self, peer: &Peer, st: &mut PeerState, to: SocketAddr) {
        loop {
            if self.udp_out.is_full() {
                self.sink.send_udp(self.udp_out);
            }
            let Some(slot) = self.udp_out.next_free() else {
                return;
            };
            let TunnResult::WriteToNetwork(p) =
                st.tunn.decapsulate(None, &[], &mut slot.buf_mut()[..])
            else {
                return;
            };
            let n = p.len();
            seal_outgoing(&self.core.index, st, &peer.macs, &mut p[..n]);
            commit_datagram(self.udp_out, n, to);
            peer.counters.tx(n);
        }
    }

    fn handshake_up(&self, peer: &Peer) {
        peer.counters.handshakes.fetch_add(1, Relaxed);
        self.core.emit(CoreEvent::HandshakeUp(peer.public_key));
    }

    /// Transport data: decrypted straight into `tun_out`'s next free slot and routed from
    /// there.
    fn transport(&mut self, wire: u32, data: &mut [u8], src: SocketAddr) {
        let Some((peer, index)) = self.open_index(wire, &mut data[4..8]) else {
            return self.drop(DropReason::UnknownIndex);
        };
        if self.tun_out.is_full() {
            self.sink.write_tun(self.tun_out);
        }
        let Some(slot) = self.tun_out.next_free() else {
            return;
        };
        let mut st = peer.lock();
        let inner_len = match st
            .tunn
            .decapsulate(Some(src.ip()), data, &mut slot.buf_mut()[..])
        {
            TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => p.len(),
            TunnResult::Done => 0, // an authenticated keepalive
            TunnResult::Err(e) => {
                drop(st);
                return self.drop(drop_reason(&e));
            }
            TunnResult::WriteToNetwork(_) => {
                // Not an answer boringtun gives to transport data; whatever it is, it
                // authenticated nothing.
                drop(st);
                return self.drop(DropReason::BadPacket);
            }
        };
        let moved = authenticated(&peer, &mut st, data.len(), src);
        let confirmed = st.unconfirmed == Some(index);
        if confirmed {
            st.unconfirmed = None;
        }
        drop(st);
        if confirmed {
            // The initiator used the session we answered with: the handshake is complete.
            self.handshake_up(&peer);
        }
        if moved {
            self.core
                .emit(CoreEvent::EndpointChanged(peer.public_key, src));
        }
        if inner_len > 0 {
            self.route_from_peer(&peer, inner_len);
        }
    }

    /// A decrypted packet of `len` bytes sits in `tun_out`'s next free slot: filter and route.
    fn route_from_peer(&mut self, from: &Arc<Peer>, len: usize) {
        let slot = self.tun_out.next_free().expect("slot checked by caller");
        slot.len = len;
        let meta = match wire::parse_ip(slot.data()) {
            Ok(m) => m,
            Err(_) => return self.drop(DropReason::BadInnerPacket),
        };
        slot.len = meta.total_len; // drop WireGuard's padding
                                   // Babel from a tunnel peer: the peer is authenticated by its session, and its
                                   // link-local source names the point-to-point link, not a routed address, so it
                                   // needs no allowed-IP: hand it to the control plane.
        let link_local_src =
            matches!(meta.src, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
        if link_local_src && wire::is_babel(&meta, slot.data()) {
            let pkt = slot.data().to_vec(); // off the hot path: control traffic
            if self.core.emit(CoreEvent::Punt(from.public_key, pkt)) {
                self.counters.forwarded(Path::Punt, meta.total_len);
            } else {
                self.drop(DropReason::PuntDropped);
            }
            return;
        }
        // Source filter: the peer's allowed IPs, as in WireGuard, or (strict reverse-path
        // check) a source the FIB routes back to this same peer, so that routes learned by
        // the control plane or configured statically carry traffic both ways.
        let from_hop = Some(NextHop::Peer(from.id));
        if self.allowed.lookup(meta.src) != from_hop && self.fib.lookup(meta.src) != from_hop {
            return self.drop(DropReason::SpoofedSource);
        }
        // In drop-in mode (as in wireguard-go) whatever is not routed to another peer goes to
        // the kernel, which owns the rest of the routing decision.
        let drop_in = self.settings.unrouted_local;
        let next_hop = match self.fib.lookup(meta.dst) {
            Some(NextHop::Peer(to)) if to == from.id && drop_in => Some(NextHop::Local),
            None if drop_in => Some(NextHop::Local),
            nh => nh,
        };
        match next_hop {
            Some(NextHop::Local) => {
                self.counters.forwarded(Path::ToLocal, meta.total_len);
                self.tun_out.commit();
            }
            Some(NextHop::Peer(to)) if to == from.id => self.drop(DropReason::Loop),
            Some(NextHop::Peer(to)) => {
                let Some(to_peer) = self.peers.get(to).cloned() else {
                    return self.drop(DropReason::NoRoute);
                };
                self.relay(from, &to_peer);
            }
            Some(NextHop::Blackhole) => self.drop(DropReason::Blackhole),
            None => {
                self.drop(DropReason::NoRoute);
                self.icmp_back(IcmpError::NoRoute);
            }
        }
    }

    /// Relay the packet in `tun_out`'s next free slot from one peer to another.
    fn relay(&mut self, _from: &Arc<Peer>, to: &Arc<Peer>) {
        let mtu = usize::from(self.settings.mtu);
        let slot = self.tun_out.next_free().expect("slot checked by caller");
        let len = slot.len;
        if !wire::decrement_ttl(slot.data_mut()) {
            self.drop(DropReason::TtlExceeded);
            return self.icmp_back(IcmpError::TimeExceeded);
        }
        if len > mtu {
            self.drop(DropReason::TooBig);
            return self.icmp_back(IcmpError::PacketTooBig {
                mtu: self.settings.mtu,
            });
        }
        let mss = mss_for(self.settings.mtu, slot.data());
        if self.settings.mss_clamp && wire::clamp_tcp_mss(slot.data_mut(), mss) {
            self.counters.mss_clamped.add(1);
        }
        // Encrypt from the TUN slot into a UDP slot: boringtun's AEAD is the copy.
        if self.udp_out.is_full() {
            self.sink.send_udp(self.udp_out);
        }
        let src = self.tun_out.next_free().expect("slot checked by caller");
        let pkt = &src.buf_mut()[..len];
        if encapsulate_into(&self.core.index, self.udp_out, self.counters, to, pkt) {
            self.counters.forwarded(Path::Relay, len);
        }
    }

    /// Generate an ICMP error about the packet in `tun_out`'s next free slot (which is being
    /// dropped) and route it back toward the packet's source: into a peer's tunnel, or to the
    /// TUN device in place of the dropped packet.
    fn icmp_back(&mut self, kind: IcmpError) {
        let Some(slot) = self.tun_out.next_free() else {
            return;
        };
        let from = match slot.data().first().map(|b| b >> 4) {
            Some(4) => self.settings.icmp_src_v4.map(IpAddr::V4),
            Some(6) => self.settings.icmp_src_v6.map(IpAddr::V6),
            _ => None,
        };
        let Some(from) = from else { return };
        let Some(n) = wire::icmp_error(kind, slot.data(), from, &mut self.scratch[..]) else {
            return;
        };
        let Ok(meta) = wire::parse_ip(&self.scratch[..n]) else {
            return;
        };
        self.counters.icmp_sent.add(1);
        match self.fib.lookup(meta.dst) {
            Some(NextHop::Peer(to)) => {
                if let Some(p) = self.peers.get(to).cloned() {
                    if self.udp_out.is_full() {
                        self.sink.send_udp(self.udp_out);
                    }
                    encapsulate_into(
                        &self.core.index,
                        self.udp_out,
                        self.counters,
                        &p,
                        &self.scratch[..n],
                    );
                }
            }
            Some(NextHop::Local) => {
                slot.fill(&self.scratch[..n], None);
                self.tun_out.commit();
            }
            _ => {}
        }
    }

    /// Encrypt `pkt` for `to` into the UDP output batch.
    fn encapsulate_to(&mut self, to: &Arc<Peer>, pkt: &[u8]) -> bool {
        if self.udp_out.is_full() {
            self.sink.send_udp(self.udp_out);
        }
        encapsulate_into(&self.core.index, self.udp_out, self.counters, to, pkt)
    }

    /// A packet from the TUN device.
    fn local_packet(&mut self, pkt: &mut [u8]) {
        let meta = match wire::parse_ip(pkt) {
            Ok(m) => m,
            Err(_) => return self.drop(DropReason::BadInnerPacket),
        };
        let pkt = &mut pkt[..meta.total_len];
        match self.fib.lookup(meta.dst) {
            Some(NextHop::Peer(to)) => {
                let Some(peer) = self.peers.get(to).cloned() else {
                    return self.drop(DropReason::NoRoute);
                };
                let mss = mss_for(self.settings.mtu, pkt);
                if self.settings.mss_clamp && wire::clamp_tcp_mss(pkt, mss) {
                    self.counters.mss_clamped.add(1);
                }
                if self.encapsulate_to(&peer, pkt) {
                    self.counters.forwarded(Path::FromLocal, meta.total_len);
                }
            }
            Some(NextHop::Local) => self.drop(DropReason::Loop),
            Some(NextHop::Blackhole) => self.drop(DropReason::Blackhole),
            None => {
                self.drop(DropReason::NoRoute);
                let from = match meta.dst {
                    IpAddr::V4(_) => self.settings.icmp_src_v4.map(IpAddr::V4),
                    IpAddr::V6(_) => self.settings.icmp_src_v6.map(IpAddr::V6),
                };
                if let Some(from) = from {
                    if let Some(n) =
                        wire::icmp_error(IcmpError::NoRoute, pkt, from, &mut self.scratch[..])
                    {
                        self.counters.icmp_sent.add(1);
                        if self.tun_out.is_full() {
                            self.sink.write_tun(self.tun_out);
                        }
                        if let Some(s) = self.tun_out.next_free() {
                            s.fill(&self.scratch[..n], None);
                            self.tun_out.commit();
                        }
                    }
                }
            }
        }
    }

    fn send_raw(&mut self, bytes: &[u8], to: SocketAddr) {
        if self.udp_out.is_full() {
            self.sink.send_udp(self.udp_out);
        }
        if let Some(s) = self.udp_out.next_free() {
            s.fill(bytes, Some(to));
            self.udp_out.commit();
        }
    }
}

/// MSS that fits a tunnel MTU for this packet's family.
fn mss_for(mtu: u16, pkt: &[u8]) -> u16 {
    let overhead = if pkt.first().map(|b| b >> 4) == Some(6) {
        60
    } else {
        40
    };
    mtu.saturating_sub(overhead)
}

/// A datagram of `len` bytes from `src` authenticated as the peer's: count it, and move the
/// peer's endpoint there (roaming). Returns whether it moved.
fn authenticated(peer: &Peer, st: &mut PeerState, len: usize, src: SocketAddr) -> bool {
    peer.counters.rx(len);
    let moved = st.endpoint != Some(src);
    st.endpoint = Some(src);
    moved
}

/// Commit the next free slot of `batch`, into which `n` bytes were written, as a datagram to
/// `to`.
fn commit_datagram(batch: &mut Batch, n: usize, to: SocketAddr) {
    if let Some(slot) = batch.next_free() {
        slot.len = n;
        slot.addr = Some(to);
        slot.truncated = false;
        batch.commit();
    }
}

/// Make a message boringtun wrote ready for the wire: a handshake initiation or response gets
/// the wire form of its sender index and, since that changed the body, its MACs anew (mac2
/// from the peer's cookie, if we hold a fresh one). Other messages carry the peer's index,
/// not ours, and go as they are.
fn seal_outgoing(
    index: &IndexCipher,
    st: &mut PeerState,
    macs: &crate::tunnel::macs::MacKeys,
    msg: &mut [u8],
) {
    use wire::wg::{INITIATION, INITIATION_LEN, RESPONSE, RESPONSE_LEN};
    if matches!(
        (msg[0], msg.len()),
        (INITIATION, INITIATION_LEN) | (RESPONSE, RESPONSE_LEN)
    ) {
        let ours = u32::from_le_bytes(msg[4..8].try_into().expect("4 bytes"));
        let wire = index.seal(ours);
        msg[4..8].copy_from_slice(&wire.to_le_bytes());
        st.cookies.seal(macs, wire, msg);
    }
}

/// Encrypt `pkt` for `to` into the next free slot of `udp_out` (which has room).
fn encapsulate_into(
    index: &IndexCipher,
    udp_out: &mut Batch,
    counters: &WorkerCounters,
    to: &Peer,
    pkt: &[u8],
) -> bool {
    let mut st = to.lock();
    let Some(endpoint) = st.endpoint else {
        counters.drop(DropReason::NoEndpoint);
        return false;
    };
    let Some(slot) = udp_out.next_free() else {
        counters.drop(DropReason::TxError);
        return false;
    };
    match st.tunn.encapsulate(pkt, &mut slot.buf_mut()[..]) {
        TunnResult::WriteToNetwork(out) => {
            let n = out.len();
            seal_outgoing(index, &mut st, &to.macs, &mut out[..n]);
            slot.len = n;
            slot.addr = Some(endpoint);
            slot.truncated = false;
            udp_out.commit();
            to.counters.tx(n);
            true
        }
        // Queued inside the session until the handshake completes.
        TunnResult::Done => true,
        TunnResult::Err(_) => {
            counters.drop(DropReason::NoSession);
            false
        }
        _ => false,
    }
}

/// Size check: boringtun needs `src.len() + 32` bytes of output and at least 148.
const _: () = assert!(SLOT_SIZE >= 1500 + 32 && SLOT_SIZE >= 148);

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

    use super::{
        resolve, ControlVia, Core, CoreError, PeerChange, PeerSpec, RouteOrigin, Settings,
        StaticVia,
    };
    use crate::fib::oracle::NaiveFib;
    use crate::fib::{Fib, NextHop};
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
        statics: Vec<(IpNet, StaticVia)>,
        control: HashMap<IpNet, ControlVia>,
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
            if let Some(nh) = resolve(peers, via) {
                e.insert(net.trunc(), (RouteOrigin::Static, nh));
            }
        }
        for (net, via) in &m.control {
            if let Some(nh) = resolve(peers, via) {
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

    fn via(rng: &mut StdRng) -> StaticVia {
        match rng.gen_range(0..10) {
            0 => StaticVia::Local,
            1 => StaticVia::Blackhole,
            // Keys up to KEYS: one more than ever exists, so some routes do not resolve.
            _ => StaticVia::Peer(key(rng.gen_range(0..=KEYS))),
        }
    }

    fn some_routes(rng: &mut StdRng, pool: &[IpNet], n: usize) -> Vec<(IpNet, StaticVia)> {
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
        core.set_static_routes(vec![(p, StaticVia::Peer(key(1)))]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(b)), Some(RouteOrigin::Static))
        );
        core.set_control_routes(vec![
            (p, ControlVia::Peer(key(2))),
            (host, ControlVia::Peer(key(2))),
        ]);
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
        core.update_control_routes(vec![(p, ControlVia::Peer(key(4)))], &[]);
        assert_eq!(
            route(&p),
            (Some(NextHop::Peer(a)), Some(RouteOrigin::AllowedIps))
        );
        // Removing the peer it names drops a control route, uncovering what lies below.
        core.set_static_routes(vec![(p, StaticVia::Blackhole)]);
        core.update_control_routes(vec![(p, ControlVia::Peer(key(2)))], &[]);
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
        let snapshot = |via: ControlVia| prefixes.iter().map(|p| (*p, via)).collect::<Vec<_>>();
        core.set_control_routes(snapshot(ControlVia::Local));
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
                ControlVia::Blackhole
            } else {
                ControlVia::Local
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
        core.set_control_routes(vec![(p, ControlVia::Local)]);
        assert!(!core.sample().fib_stale);
        core.set_fib_stale(true);
        core.update_control_routes(vec![(p, ControlVia::Blackhole)], &[]);
        assert!(core.sample().fib_stale, "an update keeps the FIB stale");
        assert_eq!(
            core.fib().lookup(p.network()),
            Some(NextHop::Blackhole),
            "stale routes are kept and still updated"
        );
        // The same snapshot again changes no route but marks the FIB fresh.
        core.set_control_routes(vec![(p, ControlVia::Blackhole)]);
        assert!(!core.sample().fib_stale);
    }
}

#[cfg(test)]
mod peer_change_tests {
    //! Batches of peer changes: one rebuild for many peers, id reuse, errors mid-batch.

    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Instant;

    use ipnet::IpNet;

    use super::{Core, CoreError, PeerChange, PeerChanges, PeerSpec, RouteOrigin, Settings};
    use crate::fib::NextHop;
    use crate::keys::Key;

    /// A distinct public key per `i`.
    fn key(i: u32) -> Key {
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        Key(k)
    }

    fn host(i: u32) -> IpNet {
        IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
    }

    fn spec(i: u32) -> PeerSpec {
        let mut s = PeerSpec {
            public_key: key(i),
            ..Default::default()
        };
        s.settings.allowed_ips = vec![host(i)];
        s
    }

    fn upsert(i: u32) -> PeerChange {
        PeerChange::Upsert(spec(i))
    }

    #[test]
    fn ten_thousand_upserts_in_one_batch_route_to_each_peer() {
        const N: u32 = 10_000;
        let core = Core::new("t0", Settings::default());
        core.set_private_key(Some(Key([0x42; 32])));
        let t = Instant::now();
        let done = core.apply_peer_changes((0..N).map(upsert)).unwrap();
        eprintln!(
            "apply_peer_changes: {N} new peers in one batch: {:?}",
            t.elapsed()
        );
        assert_eq!(
            done,
            PeerChanges {
                added: N as usize,
                ..Default::default()
            }
        );
        let peers = core.peers();
        assert_eq!(peers.len(), N as usize);
        let fib = core.fib();
        let allowed = core.allowed.load();
        for i in 0..N {
            let p = peers.by_key(&key(i)).expect("peer exists");
            let addr = host(i).addr();
            assert_eq!(
                fib.lookup(addr),
                Some(NextHop::Peer(p.id)),
                "route of {addr}"
            );
            assert_eq!(
                allowed.lookup(addr),
                Some(NextHop::Peer(p.id)),
                "filter of {addr}"
            );
            assert_eq!(core.route_origin(&host(i)), Some(RouteOrigin::AllowedIps));
        }
        // The same batch again updates every peer and changes no route.
        let t = Instant::now();
        let done = core.apply_peer_changes((0..N).map(upsert)).unwrap();
        eprintln!(
            "apply_peer_changes: {N} unchanged peers in one batch: {:?}",
            t.elapsed()
        );
        assert_eq!(done.updated, N as usize);
        assert_eq!(core.fib().len(), N as usize);
        // One more peer alone: a batch of one.
        let t = Instant::now();
        let id = core.upsert_peer(spec(N)).unwrap();
        eprintln!("upsert_peer: one more peer beside {N}: {:?}", t.elapsed());
        assert_eq!(core.fib().lookup(host(N).addr()), Some(NextHop::Peer(id)));
        let t = Instant::now();
        core.clear_peers();
        eprintln!("clear_peers: {} peers: {:?}", N + 1, t.elapsed());
        assert!(core.peers().is_empty() && core.fib().is_empty());
    }

    #[test]
    fn removed_ids_are_reused_oldest_first_and_not_while_held() {
        let core = Core::new("t0", Settings::default());
        let ids: Vec<_> = (0..4).map(|i| core.upsert_peer(spec(i)).unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        // Ids freed by a batch are not reused in that batch (its tables still name them
        // until it is published).
        core.apply_peer_changes([
            PeerChange::Remove(key(1)),
            PeerChange::Remove(key(0)),
            upsert(10),
        ])
        .unwrap();
        assert_eq!(core.peers().by_key(&key(10)).unwrap().id, 5);
        // Later, oldest freed first, then new ids.
        let ids: Vec<_> = (11..14)
            .map(|i| core.upsert_peer(spec(i)).unwrap())
            .collect();
        assert_eq!(ids, [2, 1, 6]);
        // Not while a reader holds a map in which the id means the removed peer.
        let held = core.peers();
        let gone = std::sync::Arc::downgrade(held.by_key(&key(2)).unwrap());
        assert!(core.remove_peer(&key(2)));
        assert_eq!(core.upsert_peer(spec(20)).unwrap(), 7);
        drop(held);
        // The removed peer is dropped with the last map that has it; its id waits for reuse
        // without it.
        assert!(gone.upgrade().is_none(), "a removed peer is kept alive");
        assert_eq!(core.upsert_peer(spec(21)).unwrap(), 3);
        // Routes follow the new owner of a reused id.
        assert_eq!(core.fib().lookup(host(21).addr()), Some(NextHop::Peer(3)));
        assert_eq!(core.fib().lookup(host(2).addr()), None);
        // Removing and re-adding a key gives it a new id; a removal of nobody is no change.
        assert!(!core.remove_peer(&key(99)));
        core.apply_peer_changes([PeerChange::Remove(key(21)), upsert(21)])
            .unwrap();
        assert_eq!(core.peers().by_key(&key(21)).unwrap().id, 8);
    }

    #[test]
    fn a_batch_stops_at_the_devices_own_key() {
        let core = Core::new("t0", Settings::default());
        let private = Key([0x42; 32]);
        core.set_private_key(Some(private));
        let own = private.public_key();
        let err = core
            .apply_peer_changes([
                upsert(1),
                PeerChange::Upsert(PeerSpec {
                    public_key: own,
                    ..Default::default()
                }),
                upsert(2),
            ])
            .unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.public_key, own);
        assert!(matches!(err.error, CoreError::OwnKey));
        assert!(
            err.to_string().contains(&crate::tunnel::key_b64(&own)),
            "{err}"
        );
        // The change before it is applied and routed; the one after it is not.
        let peers = core.peers();
        assert_eq!(peers.len(), 1);
        let p = peers.by_key(&key(1)).unwrap();
        assert_eq!(core.fib().lookup(host(1).addr()), Some(NextHop::Peer(p.id)));
        assert!(peers.by_key(&key(2)).is_none());
        assert_eq!(core.fib().lookup(host(2).addr()), None);
        // upsert_peer reports the same error.
        assert!(matches!(
            core.upsert_peer(PeerSpec {
                public_key: own,
                ..Default::default()
            }),
            Err(CoreError::OwnKey)
        ));
    }
}
