//! WireGuard peers: boringtun sessions, the receiver-index demultiplexer, handshake admission
//! and per-peer counters.
//!
//! A peer's local index is its [`PeerId`]; boringtun puts it in the top 24 bits of every
//! receiver index it hands out (the low 8 bits number sessions). On the wire those indices
//! are replaced by their image under a secret permutation ([`index`]), so they cannot be
//! guessed, and a transport message is still demultiplexed without a table: invert, shift,
//! one array load. The ids of removed peers are reused, oldest first and only once nothing
//! can still reach the removed peer by them (see [`PeerMap`]), so that peer churn never
//! exhausts the 24 bits; a stale receiver index that reaches the new owner of an id is
//! harmless (it names a session that does not exist or fails authentication).
//!
//! Handshake messages are admitted by [`guard`] (mac1, cookies under load, a per-source
//! rate) before boringtun spends a Diffie-Hellman on them; the MACs of what we send and the
//! cookies peers send us are in [`macs`].

pub mod guard;
pub mod index;
pub mod macs;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::config::LinkClass;
use crate::fib::PeerId;
use crate::keys::Key;
use macs::{CookieState, MacKeys};

/// Largest peer id: boringtun keeps 24 bits for it.
pub const MAX_PEER_ID: PeerId = (1 << 24) - 1;

/// The device's own key pair.
pub struct Identity {
    /// Private key.
    pub secret: StaticSecret,
    /// Public key.
    pub public: PublicKey,
    /// The private key as configured (for `wg show`; never logged).
    pub private_key: Key,
    /// MAC keys of messages to us: a handshake response whose receiver index we rewrite
    /// gets its `mac1` recomputed with these before boringtun checks it.
    pub macs: MacKeys,
    /// The limiter handed to boringtun's sessions. Admission is done before a message reaches
    /// a session ([`guard::HandshakeGuard`]), so this one is never over its budget: a session
    /// never answers with a cookie, and its `WriteToNetwork` always means that the message
    /// authenticated.
    pub session_limiter: Arc<RateLimiter>,
}

impl Identity {
    /// Derive the key pair from a private key.
    pub fn new(private_key: Key) -> Self {
        let secret = StaticSecret::from(private_key.0);
        let public = PublicKey::from(&secret);
        Self {
            macs: MacKeys::new(public.as_bytes()),
            session_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            secret,
            public,
            private_key,
        }
    }

    /// The public key.
    pub fn public_key(&self) -> Key {
        Key(*self.public.as_bytes())
    }
}

/// Per-peer counters, shared by the workers (relaxed atomic adds).
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Bytes received (whole WireGuard datagrams, as `wg` counts).
    pub rx_bytes: AtomicU64,
    /// Bytes sent (whole datagrams).
    pub tx_bytes: AtomicU64,
    /// Datagrams received and authenticated.
    pub rx_packets: AtomicU64,
    /// Datagrams sent.
    pub tx_packets: AtomicU64,
    /// Completed handshakes.
    pub handshakes: AtomicU64,
}

impl PeerCounters {
    /// Count a received datagram.
    #[inline]
    pub fn rx(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
        self.rx_packets.fetch_add(1, Relaxed);
    }

    /// Count a sent datagram.
    #[inline]
    pub fn tx(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Relaxed);
        self.tx_packets.fetch_add(1, Relaxed);
    }
}

/// Settings of a peer that the session does not own.
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Human name.
    pub name: Option<String>,
    /// Link class.
    pub class: LinkClass,
    /// Preshared key.
    pub preshared_key: Option<Key>,
    /// Persistent keepalive interval.
    pub persistent_keepalive: Option<u16>,
    /// Allowed IPs (source filter and routes).
    pub allowed_ips: Vec<IpNet>,
    /// The fast liveness probe, if on (see [`crate::forward::Liveness`]).
    pub liveness: Option<crate::forward::Liveness>,
}

/// The mutable per-peer state the hot path touches, behind one lock: the session and the
/// endpoint it talks to.
pub struct Session {
    /// The boringtun session (handshake, keys, timers, replay window).
    pub tunn: Tunn,
    /// Where to send; updated on every authenticated datagram (roaming).
    pub endpoint: Option<SocketAddr>,
    /// Our side of the peer's cookies, and the MACs of what we last sent it.
    pub cookies: CookieState,
    /// boringtun's index of the session we made as responder and the peer has not used yet.
    /// The handshake counts as completed when the first packet arrives on it, as in
    /// WireGuard: answering an initiation proves nothing about the peer's receiving it.
    pub unconfirmed: Option<u32>,
    /// Initiate a handshake at the next timer tick, without waiting for traffic: set for a
    /// new peer that has an endpoint, for one that gets its first, and for a reset session.
    /// A gateway that (re)starts is then reachable at once, instead of when the other side's
    /// old session times out (wireguard-go waits for traffic that never comes from it).
    pub initiate: bool,
    /// When our last handshake initiation left, until its response arrives (for the
    /// handshake latency histogram).
    pub initiated_at: Option<std::time::Instant>,
}

/// A peer as the tools see it: its configuration and its counters at one moment. The one
/// view of a peer, for the UAPI (`wg show`), the control channel (`isthmusctl show peers`)
/// and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Public key.
    pub public_key: Key,
    /// Configured name.
    pub name: Option<String>,
    /// Link class.
    pub class: LinkClass,
    /// Current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Preshared key (for the UAPI only: the control channel does not carry it).
    pub preshared_key: Option<Key>,
    /// Persistent keepalive interval, seconds.
    pub persistent_keepalive: Option<u16>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received (whole datagrams, as `wg` counts).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received and authenticated.
    pub rx_packets: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// The liveness probe's verdict: `Some(true)` up, `Some(false)` down (or not heard yet),
    /// `None` without a probe.
    pub liveness: Option<bool>,
}

impl PeerInfo {
    /// Name for metrics and the CLI: the configured name, or the first 8 base64 characters
    /// of the key.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| short_key(&self.public_key))
    }
}

/// One WireGuard peer.
pub struct Peer {
    /// Local index.
    pub id: PeerId,
    /// Public key.
    pub public_key: Key,
    /// Name in logs: the configured name and the first 8 base64 characters of the key
    /// (`trunk-a (xTIBA5rb)`), or those characters alone.
    pub label: String,
    /// MAC keys of messages to this peer.
    pub macs: MacKeys,
    /// Session and endpoint.
    state: Mutex<Session>,
    /// Settings (read off the hot path).
    pub settings: Mutex<PeerSettings>,
    /// Counters.
    pub counters: PeerCounters,
    /// The liveness probe's verdict (the timer thread's [`crate::forward::Probes`] sets it).
    pub live: AtomicBool,
}

impl Peer {
    /// A new peer with a fresh session.
    pub fn new(
        id: PeerId,
        identity: &Identity,
        public_key: Key,
        settings: PeerSettings,
        endpoint: Option<SocketAddr>,
    ) -> Self {
        let tunn = new_tunn(id, identity, &public_key, &settings);
        let label = log_name(settings.name.as_deref(), &public_key);
        Self {
            id,
            public_key,
            label,
            macs: MacKeys::new(&public_key.0),
            state: Mutex::new(Session {
                tunn,
                endpoint,
                cookies: CookieState::default(),
                unconfirmed: None,
                initiate: endpoint.is_some(),
                initiated_at: None,
            }),
            settings: Mutex::new(settings),
            counters: PeerCounters::default(),
            live: AtomicBool::new(false),
        }
    }

    /// Lock the session. Held for one packet at a time.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replace the session (new key, preshared key or keepalive), keeping the endpoint.
    pub fn reset_session(&self, identity: &Identity) {
        let settings = self.settings();
        let tunn = new_tunn(self.id, identity, &self.public_key, &settings);
        let mut st = self.lock();
        st.tunn = tunn;
        st.unconfirmed = None;
        st.initiate = st.endpoint.is_some();
    }

    /// A copy of the settings.
    pub fn settings(&self) -> PeerSettings {
        self.settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Its liveness probe settings, if it has a probe.
    pub fn liveness(&self) -> Option<crate::forward::Liveness> {
        self.settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .liveness
    }

    /// Current endpoint.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.lock().endpoint
    }

    /// Wall-clock time of the last completed handshake.
    pub fn last_handshake(&self) -> Option<SystemTime> {
        let since = self.lock().tunn.time_since_last_handshake()?;
        SystemTime::now().checked_sub(since)
    }

    /// Its configuration and counters now.
    pub fn info(&self) -> PeerInfo {
        let s = self.settings();
        let c = &self.counters;
        PeerInfo {
            public_key: self.public_key,
            name: s.name,
            class: s.class,
            endpoint: self.endpoint(),
            preshared_key: s.preshared_key,
            persistent_keepalive: s.persistent_keepalive,
            allowed_ips: s.allowed_ips,
            last_handshake: self.last_handshake(),
            rx_bytes: c.rx_bytes.load(Relaxed),
            tx_bytes: c.tx_bytes.load(Relaxed),
            rx_packets: c.rx_packets.load(Relaxed),
            tx_packets: c.tx_packets.load(Relaxed),
            handshakes: c.handshakes.load(Relaxed),
            liveness: s.liveness.map(|_| self.live.load(Relaxed)),
        }
    }

    /// Time since the last completed handshake.
    pub fn since_handshake(&self) -> Option<Duration> {
        self.lock().tunn.time_since_last_handshake()
    }
}

fn new_tunn(id: PeerId, identity: &Identity, public_key: &Key, settings: &PeerSettings) -> Tunn {
    Tunn::new(
        identity.secret.clone(),
        PublicKey::from(public_key.0),
        settings.preshared_key.map(|k| k.0),
        settings.persistent_keepalive.filter(|&k| k > 0),
        id,
        Some(identity.session_limiter.clone()),
    )
}

/// How logs name a peer: its configured name and the first 8 base64 characters of its key
/// (`trunk-a (xTIBA5rb)`), or those characters alone.
pub fn log_name(name: Option<&str>, key: &Key) -> String {
    match name {
        Some(n) => format!("{n} ({})", short_key(key)),
        None => short_key(key),
    }
}

/// First 8 characters of the base64 key, as a default label.
pub fn short_key(key: &Key) -> String {
    let b64 = key_b64(key);
    b64[..8].to_string()
}

/// An immutable snapshot of all peers, published whole (arc-swap) when peers change.
///
/// A change clones the published map (O(peers), once per batch of changes), calls
/// [`PeerMap::reclaim_ids`], modifies the clone and publishes it.
///
/// # Peer ids
///
/// Ids index `by_id`; id 0 is never used, so that an all-zero receiver index matches nobody.
/// A removed peer's id is *retired*: it becomes free for reuse only in a later change (by
/// then the tables published with the removal — FIB, allowed IPs — no longer name it, and a
/// worker loads the peer map before the tables, so it never pairs a map that has the id's
/// new peer with a table that still means the old one), and only once no copy of a map in
/// which the id means the removed peer is left (a reader may hold one for a while). Free ids
/// are reused first in, first out, so an id is reused as late as possible; the table grows
/// only when none is free.
///
/// A datagram carrying a stale receiver index (a session of the id's old peer) that reaches
/// the id's new peer is harmless: it names a session the new peer does not have, or one of
/// the new peer's sessions whose keys do not authenticate it, and is dropped.
///
/// Besides ids, the map numbers peers in creation order ([`PeerMap::iter_by_age`]): an
/// allowed IP claimed by several peers belongs to the newest (as when ids were never reused,
/// and id order was creation order).
#[derive(Default, Clone)]
pub struct PeerMap {
    by_id: Vec<Option<Slot>>,
    /// Id and creation number of each peer.
    by_key: HashMap<Key, (PeerId, u64)>,
    /// Ids by creation number.
    by_age: BTreeMap<u64, PeerId>,
    /// The next creation number.
    next_age: u64,
    /// Ids free for reuse, in the order they were freed.
    free: VecDeque<PeerId>,
    /// Ids of removed peers not free yet, in the order they were removed; with their
    /// slots' tokens, to see when no map has them any more.
    retired: Vec<(PeerId, Weak<()>)>,
}

/// A peer in a [`PeerMap`], with a token that every copy of the map holding the peer holds
/// (a few bytes, unlike the peer: a retired id keeps only the token's allocation).
#[derive(Clone)]
struct Slot {
    peer: Arc<Peer>,
    token: Arc<()>,
}

impl PeerMap {
    /// Peer by local id.
    #[inline]
    pub fn get(&self, id: PeerId) -> Option<&Arc<Peer>> {
        self.by_id.get(id as usize)?.as_ref().map(|s| &s.peer)
    }

    /// Peer owning a receiver index (from a transport, response or cookie message).
    #[inline]
    pub fn by_receiver_index(&self, idx: u32) -> Option<&Arc<Peer>> {
        self.get(idx >> 8)
    }

    /// The by-key form of a next hop (`None` for a peer id that is not in the table).
    pub fn via(&self, nh: crate::fib::NextHop) -> Option<crate::fib::Via> {
        use crate::fib::{NextHop, Via};
        Some(match nh {
            NextHop::Peer(id) => Via::Peer(self.get(id)?.public_key),
            NextHop::Local => Via::Local,
            NextHop::Blackhole => Via::Blackhole,
            NextHop::Neighbour { ifindex, addr } => Via::Neighbour { ifindex, addr },
        })
    }

    /// The next hop a by-key route target resolves to (`None` for a peer not in the table).
    pub fn resolve(&self, via: &crate::fib::Via) -> Option<crate::fib::NextHop> {
        use crate::fib::{NextHop, Via};
        match via {
            Via::Peer(k) => self.by_key(k).map(|p| NextHop::Peer(p.id)),
            Via::Local => Some(NextHop::Local),
            Via::Blackhole => Some(NextHop::Blackhole),
            &Via::Neighbour { ifindex, addr } => Some(NextHop::Neighbour { ifindex, addr }),
        }
    }

    /// Peer by public key.
    pub fn by_key(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.get(self.by_key.get(key)?.0)
    }

    /// All peers in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_id.iter().flatten().map(|s| &s.peer)
    }

    /// All peers in the order they were created (oldest first).
    pub fn iter_by_age(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_age.values().filter_map(|&id| self.get(id))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No peers.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Start a change of this (cloned) map: ids retired by earlier changes that no map
    /// holds any more become free.
    pub fn reclaim_ids(&mut self) {
        let free = &mut self.free;
        self.retired.retain(|(id, token)| {
            let held = token.strong_count() > 0;
            if !held {
                free.push_back(*id);
            }
            held
        });
    }

    /// The id the next inserted peer gets: the oldest free id, or a new one. May exceed
    /// [`MAX_PEER_ID`]; the caller checks.
    pub fn next_id(&self) -> PeerId {
        match self.free.front() {
            Some(&id) => id,
            None => (self.by_id.len() as PeerId).max(1),
        }
    }

    /// Insert a new peer, whose id must come from [`PeerMap::next_id`]. A peer with the same
    /// key is replaced (removed first).
    pub fn insert(&mut self, peer: Arc<Peer>) {
        assert_eq!(peer.id, self.next_id(), "peer ids come from next_id");
        self.remove(&peer.public_key);
        let id = peer.id;
        if self.free.front() == Some(&id) {
            self.free.pop_front();
        }
        let i = id as usize;
        if self.by_id.len() <= i {
            // Amortised: the Vec grows by doubling.
            self.by_id.resize(i + 1, None);
        }
        let age = self.next_age;
        self.next_age += 1;
        self.by_key.insert(peer.public_key, (id, age));
        self.by_age.insert(age, id);
        self.by_id[i] = Some(Slot {
            peer,
            token: Arc::new(()),
        });
    }

    /// Remove by key; its id is retired.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Peer>> {
        let (id, age) = self.by_key.remove(key)?;
        self.by_age.remove(&age);
        let slot = self.by_id.get_mut(id as usize)?.take()?;
        self.retired.push((id, Arc::downgrade(&slot.token)));
        Some(slot.peer)
    }

    /// Remove every peer (oldest first); their ids are retired.
    pub fn clear(&mut self) -> Vec<Arc<Peer>> {
        let ids: Vec<PeerId> = std::mem::take(&mut self.by_age).into_values().collect();
        self.by_key.clear();
        let mut removed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(slot) = self.by_id.get_mut(id as usize).and_then(Option::take) {
                self.retired.push((id, Arc::downgrade(&slot.token)));
                removed.push(slot.peer);
            }
        }
        removed
    }
}

/// Base64 of a key, as `wg` prints it.
pub fn key_b64(key: &Key) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.0)
}
