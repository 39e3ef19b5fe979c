//! The forwarding core, without I/O.
//!
//! [`Core`] holds the state shared by all workers: identity, peers, FIB, allowed-IPs table,
//! handshake admission, counters. A [`Worker`] runs the packet pipeline (`pipeline.rs`,
//! its stages listed at the top) over batches handed to it by a backend (UDP + TUN, or the
//! in-memory loopback) and hands its output batches to a [`Sink`]. The route table and the
//! publication of the FIB are in `routes.rs`, batched peer changes in `peers.rs`, the ICMP
//! errors' rate limit in `ratelimit.rs`. Nothing here opens a socket or reads a file; the
//! clock is read only inside boringtun, for handshake admission under load (in
//! `tunnel::guard`), and when an ICMP error is due (its rate limit).
//!
//! Copies: a datagram is decrypted by boringtun straight from the receive slot into a slot of
//! the TUN output batch (the AEAD does the copy), and encrypted from there into a slot of the
//! UDP output batch when it is relayed. No other copy is made, but for the rare IPv4 packet
//! without DF that is longer than the tunnel MTU: its fragments are copied into scratch space
//! one by one and encrypted from there.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam::channel::{Receiver, Sender};

use ipnet::IpNet;

use crate::fib::{Fib, FibHandle};
use crate::keys::Key;
use crate::stats::{Sample, Totals, WorkerCounters};
use crate::tunnel::guard::HandshakeGuard;
use crate::tunnel::index::IndexCipher;
use crate::tunnel::{Identity, PeerMap, PeerSettings, MAX_PEER_ID};

mod liveness;
mod peers;
mod pipeline;
mod ratelimit;
mod routes;
#[cfg(test)]
mod tests;

pub use liveness::{Liveness, Probes};
pub use peers::{PeerChange, PeerChangeError, PeerChanges};
pub use pipeline::{QueuedHandshake, Sink, Worker, HANDSHAKE_QUEUE};
use routes::Routes;

/// Events the core reports (to the control channel).
#[derive(Debug, Clone)]
pub enum CoreEvent {
    /// A handshake with the peer completed.
    HandshakeUp(Key),
    /// The peer's endpoint changed (roaming).
    EndpointChanged(Key, SocketAddr),
    /// A Babel packet arrived inside the peer's tunnel.
    Punt(Key, Vec<u8>),
    /// A peer was added (after the change was published).
    PeerAdded(Key),
    /// A peer's settings were set again.
    PeerChanged(Key),
    /// A peer was removed.
    PeerRemoved(Key),
    /// The peer's liveness probe heard it again (or for the first time).
    PeerUp(Key),
    /// The peer's liveness probe heard nothing authenticated for its detection time.
    PeerDown(Key),
}

/// Receives core events. Called from the hot path for punts: must not block.
pub type EventSink = Arc<dyn Fn(CoreEvent) -> bool + Send + Sync>;

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inner MTU of the tunnels: larger relayed IPv4 packets without DF are fragmented, other
    /// larger relayed packets get "packet too big".
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
    /// ICMP errors the device may send a second, all workers together (0: no limit); the
    /// kernel's `net.ipv4.icmp_msgs_per_sec`.
    pub icmp_rate: u32,
    /// ICMP errors that may go at once after a quiet time; the kernel's
    /// `net.ipv4.icmp_msgs_burst`.
    pub icmp_burst: u32,
    /// Peers at most (`[interface] max_peers`): a change that would add one more fails with
    /// [`CoreError::PeerLimit`]. Lowered, it applies to peers added from then on.
    pub max_peers: usize,
}

impl Settings {
    /// The default of [`Settings::icmp_rate`], the kernel's.
    pub const DEFAULT_ICMP_RATE: u32 = 1000;
    /// The default of [`Settings::icmp_burst`], the kernel's.
    pub const DEFAULT_ICMP_BURST: u32 = 50;
    /// The default of [`Settings::max_peers`], wireguard-go's `MaxPeers`.
    pub const DEFAULT_MAX_PEERS: usize = 1 << 16;
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mtu: crate::DEFAULT_MTU,
            mss_clamp: true,
            icmp_src_v4: None,
            icmp_src_v6: None,
            unrouted_local: true,
            icmp_rate: Self::DEFAULT_ICMP_RATE,
            icmp_burst: Self::DEFAULT_ICMP_BURST,
            max_peers: Self::DEFAULT_MAX_PEERS,
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
    /// Time from our handshake initiation to the peer's response (off the hot path: a
    /// handshake is a rare event).
    pub(crate) handshake_seconds: Mutex<crate::io::metrics::Histogram>,
    /// Told every change of the FIB, in order, before it is published (see
    /// [`Core::observe_routes`]).
    route_observer: std::sync::OnceLock<RouteObserver>,
    /// The ICMP errors' rate limit, shared by every worker (its rate and burst are in the
    /// settings).
    icmp_limit: ratelimit::TokenBucket,
    /// The bounds reached (peers, clients, the handshake queue, ...), for the metrics.
    limits: crate::limits::LimitCounters,
}

/// Told each change of the FIB: a prefix and its new next hop (`None`: removed).
pub type RouteObserver = Box<dyn Fn(&[(IpNet, Option<crate::fib::NextHop>)]) + Send + Sync>;

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
            handshake_seconds: Mutex::new(crate::io::metrics::Histogram::default()),
            route_observer: std::sync::OnceLock::new(),
            icmp_limit: ratelimit::TokenBucket::new(std::time::Instant::now()),
            limits: crate::limits::LimitCounters::default(),
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

    /// The bounds reached so far; [`crate::limits::LimitCounters::hit`] counts (and logs)
    /// one more.
    pub fn limits(&self) -> &crate::limits::LimitCounters {
        &self.limits
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
            peers: peers.iter().map(|p| p.info()).collect(),
            fib_v4: fib.len_v4(),
            fib_v6: fib.len_v6(),
            fib_stale: self.fib_stale.load(Relaxed),
            public_key: self.public_key(),
            handshake_seconds: self
                .handshake_seconds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            limits: self.limits.all().to_vec(),
            max_peers: self.settings().max_peers,
        }
    }
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
    /// The peer table holds `max_peers` already.
    #[error("the peer table is full ({0} peers, interface.max_peers)")]
    PeerLimit(usize),
}
