//! WireGuard peers: boringtun sessions, the receiver-index demultiplexer, handshake admission
//! and per-peer counters.
//!
//! A peer's local index is its [`PeerId`]; boringtun puts it in the top 24 bits of every
//! receiver index it hands out (the low 8 bits number sessions). On the wire those indices
//! are replaced by their image under a secret permutation ([`index`]), so they cannot be
//! guessed, and a transport message is still demultiplexed without a table: invert, shift,
//! one array load. Ids are never reused while the process runs, so a stale index can never
//! reach a new peer.
//!
//! Handshake messages are admitted by [`guard`] (mac1, cookies under load, a per-source
//! rate) before boringtun spends a Diffie-Hellman on them; the MACs of what we send and the
//! cookies peers send us are in [`macs`].

pub mod guard;
pub mod index;
pub mod macs;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
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
}

/// The mutable per-peer state the hot path touches, behind one lock: the session and the
/// endpoint it talks to.
pub struct PeerState {
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
}

/// One WireGuard peer.
pub struct Peer {
    /// Local index.
    pub id: PeerId,
    /// Public key.
    pub public_key: Key,
    /// Name for metrics and the CLI: the configured name, or the first 8 base64 characters of
    /// the key.
    pub label: String,
    /// MAC keys of messages to this peer.
    pub macs: MacKeys,
    /// Session and endpoint.
    state: Mutex<PeerState>,
    /// Settings (read off the hot path).
    pub settings: Mutex<PeerSettings>,
    /// Counters.
    pub counters: PeerCounters,
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
        let label = settings
            .name
            .clone()
            .unwrap_or_else(|| short_key(&public_key));
        Self {
            id,
            public_key,
            label,
            macs: MacKeys::new(&public_key.0),
            state: Mutex::new(PeerState {
                tunn,
                endpoint,
                cookies: CookieState::default(),
                unconfirmed: None,
            }),
            settings: Mutex::new(settings),
            counters: PeerCounters::default(),
        }
    }

    /// Lock the session. Held for one packet at a time.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
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
    }

    /// A copy of the settings.
    pub fn settings(&self) -> PeerSettings {
        self.settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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

    /// Time since the last completed handshake.
    pub fn since_handshake(&self) -> Option<Duration> {
        self.lock().tunn.time_since_last_handshake()
    }
}

fn new_tunn(
    id: PeerId,
    identity: &Identity,
    public_key: &Key,
    settings: &PeerSettings,
) -> Tunn {
    Tunn::new(
        identity.secret.clone(),
        PublicKey::from(public_key.0),
        settings.preshared_key.map(|k| k.0),
        settings.persistent_keepalive.filter(|&k| k > 0),
        id,
        Some(identity.session_limiter.clone()),
    )
}

/// First 8 characters of the base64 key, as a default label.
pub fn short_key(key: &Key) -> String {
    let b64 = key_b64(key);
    b64[..8].to_string()
}

/// An immutable snapshot of all peers, published whole (arc-swap) when peers change.
#[derive(Default, Clone)]
pub struct PeerMap {
    by_id: Vec<Option<Arc<Peer>>>,
    by_key: std::collections::HashMap<Key, PeerId>,
}

impl PeerMap {
    /// Peer by local id.
    #[inline]
    pub fn get(&self, id: PeerId) -> Option<&Arc<Peer>> {
        self.by_id.get(id as usize)?.as_ref()
    }

    /// Peer owning a receiver index (from a transport, response or cookie message).
    #[inline]
    pub fn by_receiver_index(&self, idx: u32) -> Option<&Arc<Peer>> {
        self.get(idx >> 8)
    }

    /// Peer by public key.
    pub fn by_key(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.get(*self.by_key.get(key)?)
    }

    /// All peers in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_id.iter().flatten()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No peers.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The id the next inserted peer gets.
    pub fn next_id(&self) -> PeerId {
        // Id 0 is never used, so that an all-zero receiver index matches nobody.
        (self.by_id.len() as PeerId).max(1)
    }

    /// Insert (ids must come from `next_id`).
    pub fn insert(&mut self, peer: Arc<Peer>) {
        let id = peer.id as usize;
        if self.by_id.len() <= id {
            self.by_id.resize(id + 1, None);
        }
        self.by_key.insert(peer.public_key, peer.id);
        self.by_id[id] = Some(peer);
    }

    /// Remove by key.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Peer>> {
        let id = self.by_key.remove(key)?;
        self.by_id.get_mut(id as usize)?.take()
    }
}

/// Base64 of a key, as `wg` prints it.
pub fn key_b64(key: &Key) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.0)
}
