//! The forwarding core, without I/O.
//!
//! [`Core`] holds the state shared by all workers: identity, peers, FIB, allowed-IPs table,
//! rate limiter, counters. A [`Worker`] runs the pipeline of DESIGN.md over batches handed
//! to it by a backend (UDP + TUN, or the in-memory loopback) and hands its output batches to
//! a [`Sink`]. Nothing here opens a socket or reads a file; the clock is read only inside
//! boringtun.
//!
//! Copies: a datagram is decrypted by boringtun straight from the receive slot into a slot of
//! the TUN output batch (the AEAD does the copy), and encrypted from there into a slot of the
//! UDP output batch when it is relayed. No other copy is made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use ipnet::IpNet;

use crate::buf::{Batch, Slot, SLOT_SIZE};
use crate::fib::{Fib, FibHandle, NextHop, PeerId, Route};
use crate::keys::Key;
use crate::stats::{DropReason, Path, PeerSample, Sample, Totals, WorkerCounters};
use crate::tunnel::{Identity, Peer, PeerMap, PeerSettings, HANDSHAKE_RATE_LIMIT, MAX_PEER_ID};
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

#[derive(Default)]
struct Routes {
    /// Host routes for the interface's own addresses.
    connected: Vec<IpNet>,
    statics: Vec<(IpNet, StaticVia)>,
    control: Vec<(IpNet, ControlVia)>,
}

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
    origins: ArcSwap<std::collections::HashMap<IpNet, RouteOrigin>>,
    limiter: ArcSwap<RateLimiter>,
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
            origins: ArcSwap::from_pointee(Default::default()),
            limiter: ArcSwap::from_pointee(RateLimiter::new(&zero, HANDSHAKE_RATE_LIMIT)),
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

    /// Origin of each FIB prefix.
    pub fn route_origin(&self, prefix: &IpNet) -> Option<RouteOrigin> {
        self.origins.load().get(prefix).copied()
    }

    /// Mark the control-plane routes stale (kept, but their source went away) or fresh.
    pub fn set_fib_stale(&self, stale: bool) {
        self.fib_stale.store(stale, Relaxed);
    }

    /// Reset the handshake rate limiter's count; call once a second.
    pub fn reset_rate_limiter(&self) {
        self.limiter.load().reset_count();
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
        let limiter = Arc::new(RateLimiter::new(
            identity.as_ref().map_or(&zero, |i| &i.public),
            HANDSHAKE_RATE_LIMIT,
        ));
        self.limiter.store(limiter.clone());
        self.identity.store(identity.clone());
        let mut map = (**self.peers.load()).clone();
        if let Some(id) = &identity {
            let own = id.public_key();
            map.remove(&own);
            for p in map.iter() {
                p.reset_session(id, limiter.clone());
            }
        }
        self.peers.store(Arc::new(map));
        self.rebuild_tables();
    }

    /// Add a peer or update an existing one. A changed preshared key or keepalive resets
    /// the session; everything else is kept.
    pub fn upsert_peer(&self, spec: PeerSpec) -> Result<PeerId, CoreError> {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let identity = self.identity.load_full();
        let mut map = (**self.peers.load()).clone();
        if let Some(peer) = map.by_key(&spec.public_key) {
            let old = peer.settings();
            let reset = old.preshared_key != spec.settings.preshared_key
                || old.persistent_keepalive != spec.settings.persistent_keepalive;
            *peer
                .settings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = spec.settings.clone();
            if let Some(ep) = spec.endpoint {
                peer.lock().endpoint = Some(ep);
            }
            if reset {
                if let Some(id) = &identity {
                    peer.reset_session(id, self.limiter.load_full());
                }
            }
            let id = peer.id;
            drop(map);
            self.rebuild_tables();
            return Ok(id);
        }
        if identity
            .as_ref()
            .is_some_and(|i| i.public_key() == spec.public_key)
        {
            return Err(CoreError::OwnKey);
        }
        let id = map.next_id();
        if id > MAX_PEER_ID {
            return Err(CoreError::TooManyPeers);
        }
        // Without a private key the session is made with a throwaway identity and replaced
        // when the key is set.
        let placeholder;
        let ident = match &identity {
            Some(i) => i.as_ref(),
            None => {
                placeholder = Identity::new(Key([1; 32]));
                &placeholder
            }
        };
        let peer = Arc::new(Peer::new(
            id,
            ident,
            spec.public_key,
            spec.settings,
            spec.endpoint,
            self.limiter.load_full(),
        ));
        if let Some(k) = peer.settings().persistent_keepalive.filter(|&k| k > 0) {
            tracing::debug!(peer = %peer.label, keepalive = k, "persistent keepalive");
        }
        map.insert(peer);
        self.peers.store(Arc::new(map));
        self.rebuild_tables();
        Ok(id)
    }

    /// Remove a peer. Returns whether it existed.
    pub fn remove_peer(&self, key: &Key) -> bool {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map = (**self.peers.load()).clone();
        let existed = map.remove(key).is_some();
        self.peers.store(Arc::new(map));
        self.rebuild_tables();
        existed
    }

    /// Remove every peer.
    pub fn clear_peers(&self) {
        let keys: Vec<Key> = self.peers.load().iter().map(|p| p.public_key).collect();
        for k in keys {
            self.remove_peer(&k);
        }
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
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .statics = routes;
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

    /// Replace all control-plane routes (a full snapshot) and mark the FIB fresh.
    pub fn set_control_routes(&self, routes: Vec<(IpNet, ControlVia)>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .control = routes;
        self.fib_stale.store(false, Relaxed);
        self.rebuild_tables();
    }

    /// Apply an incremental control-plane update.
    pub fn update_control_routes(&self, add: Vec<(IpNet, ControlVia)>, remove: &[IpNet]) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut r = self
                .routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut map: std::collections::HashMap<IpNet, ControlVia> =
                r.control.drain(..).collect();
            for p in remove {
                map.remove(&p.trunc());
            }
            for (p, v) in add {
                map.insert(p.trunc(), v);
            }
            r.control = map.into_iter().collect();
        }
        self.rebuild_tables();
    }

    /// Rebuild the allowed-IPs table and the FIB from peers and routes, and publish both.
    fn rebuild_tables(&self) {
        let peers = self.peers.load_full();
        let mut allowed = Fib::new();
        let mut entries: std::collections::HashMap<IpNet, (RouteOrigin, NextHop)> =
            std::collections::HashMap::new();
        for p in peers.iter() {
            for net in p.settings().allowed_ips {
                // As in WireGuard, an allowed IP belongs to the last peer that claimed it.
                allowed.insert(net.trunc(), NextHop::Peer(p.id));
                entries.insert(net.trunc(), (RouteOrigin::AllowedIps, NextHop::Peer(p.id)));
            }
        }
        let resolve = |via: &StaticVia| match via {
            StaticVia::Peer(k) => peers.by_key(k).map(|p| NextHop::Peer(p.id)),
            StaticVia::Local => Some(NextHop::Local),
            StaticVia::Blackhole => Some(NextHop::Blackhole),
        };
        {
            let r = self
                .routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (origin, list) in [
                (RouteOrigin::Static, &r.statics),
                (RouteOrigin::Control, &r.control),
            ] {
                for (net, via) in list {
                    if let Some(nh) = resolve(via) {
                        entries.insert(net.trunc(), (origin, nh));
                    }
                }
            }
            // Own addresses last: nothing overrides them.
            for net in &r.connected {
                entries.insert(*net, (RouteOrigin::Connected, NextHop::Local));
            }
        }
        let fib = Fib::from_routes(entries.iter().map(|(p, (_, nh))| Route {
            prefix: *p,
            next_hop: *nh,
        }));
        self.origins.store(Arc::new(
            entries.into_iter().map(|(p, (o, _))| (p, o)).collect(),
        ));
        self.allowed.publish(allowed);
        self.fib.publish(fib);
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
                        class: match p.settings().class {
                            crate::config::LinkClass::Mesh => "mesh",
                            crate::config::LinkClass::Trunk => "trunk",
                        },
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
        self.with_ctx(sink, |ctx| {
            for slot in rx.used() {
                ctx.datagram(slot);
            }
        });
        rx.clear();
    }

    /// Process datagrams that sit in caller-owned buffers (e.g. the segments of a
    /// GRO-coalesced receive), each with its source.
    pub fn handle_segments<'a>(
        &mut self,
        segments: impl IntoIterator<Item = (&'a [u8], SocketAddr)>,
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
    fn datagram(&mut self, slot: &Slot) {
        let Some(src) = slot.addr else {
            return self.drop(DropReason::BadPacket);
        };
        if slot.truncated {
            return self.drop(DropReason::Oversized);
        }
        self.datagram_bytes(slot.data(), src);
    }

    fn datagram_bytes(&mut self, data: &[u8], src: SocketAddr) {
        match wire::wg::Message::classify(data) {
            Some(wire::wg::Message::Initiation { .. }) => self.handshake_init(data, src),
            Some(m) => {
                let idx = m
                    .receiver_index()
                    .expect("every other message has a receiver");
                self.by_index(idx, data, src);
            }
            None => self.drop(DropReason::BadPacket),
        }
    }

    fn handshake_init(&mut self, data: &[u8], src: SocketAddr) {
        let Some(identity) = self.core.identity.load_full() else {
            return self.drop(DropReason::NoKey);
        };
        let limiter = self.core.limiter.load();
        let mut cookie = [0u8; 64];
        let half = match limiter.verify_packet(Some(src.ip()), data, &mut cookie) {
            Ok(Packet::HandshakeInit(p)) => {
                parse_handshake_anon(&identity.secret, &identity.public, &p)
            }
            Ok(_) => return self.drop(DropReason::BadPacket),
            Err(TunnResult::WriteToNetwork(reply)) => {
                let n = reply.len();
                self.counters.cookies_sent.add(1);
                self.drop(DropReason::HandshakeRateLimited);
                let mut tmp = [0u8; 64];
                tmp[..n].copy_from_slice(reply);
                return self.send_raw(&tmp[..n], src);
            }
            Err(TunnResult::Err(e)) => return self.drop(drop_reason(&e)),
            Err(_) => return self.drop(DropReason::BadPacket),
        };
        let Ok(half) = half else {
            return self.drop(DropReason::HandshakeFailed);
        };
        let Some(peer) = self.peers.by_key(&Key(half.peer_static_public)).cloned() else {
            return self.drop(DropReason::UnknownPeer);
        };
        self.session_packet(&peer, data, src);
    }

    fn by_index(&mut self, idx: u32, data: &[u8], src: SocketAddr) {
        let Some(peer) = self.peers.by_receiver_index(idx).cloned() else {
            return self.drop(DropReason::UnknownIndex);
        };
        self.session_packet(&peer, data, src);
    }

    /// Hand a datagram to the peer's session. Transport data is decrypted straight into
    /// `tun_out`'s next free slot and routed from there; handshake messages are answered
    /// straight into `udp_out`.
    fn session_packet(&mut self, peer: &Arc<Peer>, data: &[u8], src: SocketAddr) {
        let ty = data[0];
        let mut st = peer.lock();
        let mut inner_len = 0;
        if ty == 4 {
            if self.tun_out.is_full() {
                self.sink.write_tun(self.tun_out);
            }
            let Some(slot) = self.tun_out.next_free() else {
                return;
            };
            match st
                .tunn
                .decapsulate(Some(src.ip()), data, &mut slot.buf_mut()[..])
            {
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    inner_len = p.len();
                }
                TunnResult::Done | TunnResult::WriteToNetwork(_) => {} // keepalive
                TunnResult::Err(e) => {
                    drop(st);
                    return self.drop(drop_reason(&e));
                }
            }
        } else {
            // Handshake initiation/response or cookie reply. Answers (a response, a
            // keepalive, packets queued while the handshake was pending) go out at once.
            let mut first = true;
            loop {
                if self.udp_out.is_full() {
                    self.sink.send_udp(self.udp_out);
                }
                let Some(slot) = self.udp_out.next_free() else {
                    break;
                };
                let res = if first {
                    st.tunn
                        .decapsulate(Some(src.ip()), data, &mut slot.buf_mut()[..])
                } else {
                    st.tunn.decapsulate(None, &[], &mut slot.buf_mut()[..])
                };
                match res {
                    TunnResult::WriteToNetwork(p) => {
                        let n = p.len();
                        slot.len = n;
                        slot.addr = Some(src);
                        slot.truncated = false;
                        self.udp_out.commit();
                        peer.counters.tx(n);
                    }
                    TunnResult::Err(e) if first => {
                        drop(st);
                        return self.drop(drop_reason(&e));
                    }
                    _ => break,
                }
                first = false;
            }
        }
        // Authenticated: count it, and this is where the peer is now (roaming). A cookie
        // reply moves nothing: as in WireGuard, only handshakes and data do.
        peer.counters.rx(data.len());
        let moved = ty != 3 && st.endpoint != Some(src);
        if moved {
            st.endpoint = Some(src);
        }
        drop(st);
        if ty == 1 || ty == 2 {
            peer.counters.handshakes.fetch_add(1, Relaxed);
            self.core.emit(CoreEvent::HandshakeUp(peer.public_key));
        }
        if moved {
            self.core
                .emit(CoreEvent::EndpointChanged(peer.public_key, src));
        }
        if inner_len > 0 {
            self.route_from_peer(peer, inner_len);
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
        if encapsulate_into(self.udp_out, self.counters, to, pkt) {
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
                    encapsulate_into(self.udp_out, self.counters, &p, &self.scratch[..n]);
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
        encapsulate_into(self.udp_out, self.counters, to, pkt)
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

/// Encrypt `pkt` for `to` into the next free slot of `udp_out` (which has room).
fn encapsulate_into(udp_out: &mut Batch, counters: &WorkerCounters, to: &Peer, pkt: &[u8]) -> bool {
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
