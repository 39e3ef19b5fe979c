//! The packet pipeline: what a [`Worker`] does with each batch a backend hands it.
//!
//! From the underlay (`Worker::handle_datagrams`, `handle_segments`), per datagram:
//!
//! 1. classify by type and size (`wire::wg::Message::classify`); anything else is
//!    `bad_packet`;
//! 2. handshake initiation or response: admission (`tunnel::guard`: mac1; under load, mac2
//!    or a cookie reply, and the source's rate), then queued for the handshake thread
//!    (`handle_handshakes`) or, without one, processed here: the initiator found by its
//!    static key (initiation) or the receiver index (response), boringtun's answer sealed
//!    with the wire index and our MACs (`seal_outgoing`) and sent;
//! 3. cookie reply: checked and kept for the next handshake message's mac2
//!    (`tunnel::macs`); nothing else changes;
//! 4. transport data: the receiver index opened (`tunnel::index`) to find the peer,
//!    decrypted by boringtun straight into the next TUN output slot (the one copy, fused
//!    with the AEAD);
//! 5. authenticated: counted, the endpoint follows the source (roaming), a responder's
//!    session confirmed (`HandshakeUp`);
//! 6. the inner packet: Babel to the control plane (punt); source filter (allowed IPs or a
//!    route back to the same peer); FIB lookup → local (TUN output batch), another peer
//!    (`relay`: TTL, MTU — IPv4 without DF fragmented, the rest "packet too big" —, MSS
//!    clamp, encrypted into the UDP output batch), blackhole, or no route (ICMP unreachable
//!    back).
//!
//! ICMP errors (`make_icmp`) pass the device's rate limit (`ratelimit.rs`), one token
//! bucket shared by every worker, before they are written.
//!
//! From the TUN device (`handle_tun`), per packet: parse, FIB lookup, MSS clamp, encrypt for
//! the peer (or queue it in the session while a handshake is made). Timers (`tick`):
//! handshake retries, rekeys and keepalives, sealed like every handshake message we send.
//!
//! Output is batched (`udp_out`, `tun_out`) and flushed to the backend's [`Sink`] when a
//! batch fills and at the end of each input batch. Only a message that authenticated
//! changes a peer's state; every drop is counted with its reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::TunnResult;
use crossbeam::channel::TrySendError;

use super::{Core, CoreEvent, Settings};
use crate::buf::{Batch, Slot, SLOT_SIZE};
use crate::fib::{Fib, NextHop};
use crate::keys::Key;
use crate::stats::{DropReason, Path, WorkerCounters};
use crate::tunnel::guard::{Admit, Refusal};
use crate::tunnel::index::IndexCipher;
use crate::tunnel::{Peer, PeerMap, Session};
use crate::wire::{self, IcmpError};

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
    /// Returns how many could not be sent (counted as `tx_error` by the sink).
    fn send_udp(&mut self, batch: &mut Batch) -> usize;
    /// Write every packet of `batch` to the local side, then clear it: to the TUN device, or,
    /// for a slot with a `neighbour`, as a frame to that neighbour.
    fn write_tun(&mut self, batch: &mut Batch);
    /// Whether this sink sends frames to `addr` on mesh interface `ifindex` itself (AF_XDP,
    /// the neighbour's link-layer address known), and if so the interface's MTU. `None`:
    /// packets for that neighbour go through the TUN device, and the kernel, which holds the
    /// same route, forwards them.
    fn mesh_link(&mut self, _ifindex: u32, _addr: IpAddr) -> Option<u16> {
        None
    }
}

/// One worker's pipeline state: output batches and scratch space, allocated once.
pub struct Worker {
    pub(super) core: Arc<Core>,
    pub(super) counters: Arc<WorkerCounters>,
    /// Datagrams to send.
    pub(super) udp_out: Batch,
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

    /// Process IP packets received on a mesh interface (the XDP program redirected them
    /// because the FIB routes their destination into a tunnel), in caller-owned buffers.
    pub fn handle_mesh<'a>(
        &mut self,
        packets: impl IntoIterator<Item = &'a mut [u8]>,
        sink: &mut impl Sink,
    ) {
        self.counters.rx_batches.add(1);
        let n = self.with_ctx(sink, |ctx| {
            let mut n = 0;
            for pkt in packets {
                n += 1;
                ctx.mesh_packet(pkt);
            }
            n
        });
        self.counters.rx_packets.add(n);
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

    /// Run every peer's timers (handshake retries, rekey, keepalives) and start the
    /// handshakes that wait for no traffic ([`Session::initiate`]). Call every ~100 ms.
    pub fn tick(&mut self, sink: &mut impl Sink) {
        let peers = self.core.peers.load_full();
        // Without a private key, sessions belong to a placeholder identity: nothing to send.
        let keyed = self.core.private_key().is_some();
        for p in peers.iter() {
            if self.udp_out.is_full() {
                sink.send_udp(&mut self.udp_out);
            }
            let mut st = p.lock();
            let endpoint = st.endpoint;
            let Some(slot) = self.udp_out.next_free() else {
                continue;
            };
            let initiate = std::mem::take(&mut st.initiate)
                && keyed
                && endpoint.is_some()
                && st.tunn.time_since_last_handshake().is_none();
            let out = if initiate {
                tracing::debug!(peer = %p.label, "initiating a handshake without waiting for traffic");
                st.tunn
                    .format_handshake_initiation(&mut slot.buf_mut()[..], false)
            } else {
                st.tunn.update_timers(&mut slot.buf_mut()[..])
            };
            match out {
                TunnResult::WriteToNetwork(out) => {
                    let n = out.len();
                    seal_outgoing(&self.core.index, &mut st, &p.macs, &mut out[..n]);
                    if let Some(ep) = endpoint {
                        slot.len = n;
                        slot.addr = Some(ep);
                        self.udp_out.commit();
                        drop(st);
                        // Sent on its own, so that only what left counts as transmitted (as
                        // `wg` shows it: an initiation to an unreachable endpoint is not),
                        // and its loss is the peer's. Timer traffic is a few datagrams a
                        // second, not a batch worth keeping.
                        if sink.send_udp(&mut self.udp_out) == 0 {
                            p.counters.tx(n);
                        }
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
        let mut reply = [0u8; wire::wg::COOKIE_REPLY_LEN];
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
            Admit::Drop(Refusal::SourcesFull) => {
                self.core.limits.hit(crate::limits::Limit::HandshakeSources);
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
                self.core.limits.hit(crate::limits::Limit::HandshakeQueue);
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
        let Session { cookies, .. } = &mut *st;
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
        let latency = (ty == wire::wg::RESPONSE)
            .then(|| st.initiated_at.take())
            .flatten()
            .map(|t| t.elapsed());
        self.flush_queued(peer, &mut st, src);
        drop(st);
        if let Some(d) = latency {
            (self.core.handshake_seconds.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .observe(d.as_secs_f64());
        }
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
    fn flush_queued(&mut self, peer: &Peer, st: &mut Session, to: SocketAddr) {
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
        let link_local_src = matches!(meta.src, IpAddr::V6(a) if a.is_unicast_link_local());
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
            Some(NextHop::Local) => self.deliver_local(meta.total_len),
            Some(NextHop::Neighbour { ifindex, addr }) => {
                self.deliver_neighbour(ifindex, addr, meta.total_len);
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

    /// Deliver the packet in `tun_out`'s next free slot through the TUN device.
    fn deliver_local(&mut self, len: usize) {
        let slot = self.tun_out.next_free().expect("slot checked by caller");
        slot.neighbour = None;
        self.counters.forwarded(Path::ToLocal, len);
        self.tun_out.commit();
    }

    /// Send the packet in `tun_out`'s next free slot to a neighbour on a mesh interface: as
    /// a frame, where the sink serves that interface, forwarded as the kernel would (TTL,
    /// MTU, ICMP errors); else through the TUN device, to the kernel, which holds the same
    /// route (and does the same).
    fn deliver_neighbour(&mut self, ifindex: u32, addr: IpAddr, len: usize) {
        let Some(mtu) = self.sink.mesh_link(ifindex, addr) else {
            return self.deliver_local(len);
        };
        let slot = self.tun_out.next_free().expect("slot checked by caller");
        if len > usize::from(mtu) {
            if wire::may_fragment(slot.data()) {
                // IPv4 without DF: the kernel fragments it.
                return self.deliver_local(len);
            }
            self.drop(DropReason::TooBig);
            return self.icmp_back(IcmpError::PacketTooBig { mtu });
        }
        if !wire::decrement_ttl(slot.data_mut()) {
            self.drop(DropReason::TtlExceeded);
            return self.icmp_back(IcmpError::TimeExceeded);
        }
        slot.neighbour = Some((ifindex, addr));
        self.counters.forwarded(Path::ToMesh, len);
        self.tun_out.commit();
    }

    /// Relay the packet in `tun_out`'s next free slot from one peer to another. One longer
    /// than the tunnel MTU is fragmented if it is IPv4 without DF (its TTL decremented and its
    /// MSS clamped once, before), else dropped with "packet too big".
    fn relay(&mut self, _from: &Arc<Peer>, to: &Arc<Peer>) {
        let mtu = usize::from(self.settings.mtu);
        let slot = self.tun_out.next_free().expect("slot checked by caller");
        let len = slot.len;
        if !wire::decrement_ttl(slot.data_mut()) {
            self.drop(DropReason::TtlExceeded);
            return self.icmp_back(IcmpError::TimeExceeded);
        }
        let too_big = len > mtu;
        if too_big && !wire::may_fragment(slot.data()) {
            self.drop(DropReason::TooBig);
            return self.icmp_back(IcmpError::PacketTooBig {
                mtu: self.settings.mtu,
            });
        }
        let mss = mss_for(self.settings.mtu, slot.data());
        if self.settings.mss_clamp && wire::clamp_tcp_mss(slot.data_mut(), mss) {
            self.counters.mss_clamped.add(1);
        }
        if too_big {
            self.send_fragments(to, None, Path::Relay);
            return;
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
    /// dropped), if one is due and the rate limit lets it go, and route it back toward the
    /// packet's source (see [`Ctx::route_icmp`]).
    fn icmp_back(&mut self, kind: IcmpError) {
        let Some(slot) = self.tun_out.next_free() else {
            return;
        };
        let (core, settings, counters) = (self.core, self.settings, self.counters);
        if let Some(n) = make_icmp(
            core,
            settings,
            counters,
            kind,
            slot.data(),
            &mut self.scratch[..],
        ) {
            self.route_icmp(n);
        }
    }

    /// Route the ICMP error in `scratch[..n]` toward its destination: into a peer's tunnel,
    /// or to the TUN device (in `tun_out`'s next free slot: in place of a dropped packet that
    /// sat there).
    fn route_icmp(&mut self, n: usize) {
        let Ok(meta) = wire::parse_ip(&self.scratch[..n]) else {
            return;
        };
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
            // To the kernel, which routes it (to a mesh neighbour too).
            Some(NextHop::Local | NextHop::Neighbour { .. }) => {
                if self.tun_out.is_full() {
                    self.sink.write_tun(self.tun_out);
                }
                if let Some(slot) = self.tun_out.next_free() {
                    slot.fill(&self.scratch[..n], None);
                    self.tun_out.commit();
                }
            }
            _ => {}
        }
    }

    /// Encrypt an IPv4 packet without DF that is longer than the tunnel MTU for `to`, in
    /// fragments that fit it (`wire::fragment_ipv4`, each copied into the scratch buffer and
    /// encrypted from there): `packet`, or, without one, the packet in `tun_out`'s next free
    /// slot. Counted as forwarded on `path` when every fragment went; a packet that cannot be
    /// fragmented is dropped.
    fn send_fragments(&mut self, to: &Peer, packet: Option<&[u8]>, path: Path) {
        let Ctx {
            core,
            counters,
            settings,
            udp_out,
            tun_out,
            scratch,
            sink,
            ..
        } = self;
        let pkt = match packet {
            Some(p) => p,
            None => match tun_out.next_free() {
                Some(slot) => slot.data(),
                None => return,
            },
        };
        let mut sent = 0;
        let r = wire::fragment_ipv4(pkt, usize::from(settings.mtu), &mut scratch[..], |frag| {
            if udp_out.is_full() {
                sink.send_udp(udp_out);
            }
            if encapsulate_into(&core.index, udp_out, counters, to, frag) {
                sent += 1;
            }
        });
        match r {
            Ok(n) => {
                counters.fragmented.add(1);
                counters.fragments.add(n as u64);
                if sent == n {
                    counters.forwarded(path, pkt.len());
                }
            }
            Err(wire::FragmentError::DontFragment) => counters.drop(DropReason::TooBig),
            Err(_) => counters.drop(DropReason::BadInnerPacket),
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
            // The kernel sent us what we would send back to it.
            Some(NextHop::Local | NextHop::Neighbour { .. }) => self.drop(DropReason::Loop),
            Some(NextHop::Blackhole) => self.drop(DropReason::Blackhole),
            None => {
                self.drop(DropReason::NoRoute);
                let kind = IcmpError::NoRoute;
                let (core, settings, counters) = (self.core, self.settings, self.counters);
                // Back to the kernel, which sent it.
                if let Some(n) =
                    make_icmp(core, settings, counters, kind, pkt, &mut self.scratch[..])
                {
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

    /// A packet from a mesh interface's XSK. It is forwarded as the kernel would have
    /// forwarded it into the TUN device and the TUN path would have sent it on: TTL, MSS
    /// clamp, encrypted to the peer. (The XDP program leaves the packets that need an ICMP
    /// error or fragments — TTL 1, longer than the tunnel's MTU — to the kernel; one longer
    /// than the MTU still comes here while the program's MTU is a step behind the device's,
    /// and is fragmented or refused as `relay` does.) A packet that the FIB does not route
    /// into a tunnel any more (the program's table is a step behind) goes to the kernel
    /// through the TUN device, unchanged.
    fn mesh_packet(&mut self, pkt: &mut [u8]) {
        let meta = match wire::parse_ip(pkt) {
            Ok(m) => m,
            Err(_) => return self.drop(DropReason::BadInnerPacket),
        };
        let pkt = &mut pkt[..meta.total_len];
        let peer = match self.fib.lookup(meta.dst) {
            Some(NextHop::Peer(to)) => self.peers.get(to).cloned(),
            _ => None,
        };
        let Some(peer) = peer else {
            if self.tun_out.is_full() {
                self.sink.write_tun(self.tun_out);
            }
            if let Some(s) = self.tun_out.next_free() {
                s.fill(pkt, None); // a rare path: the tables disagree for a moment
                self.tun_out.commit();
            }
            return;
        };
        if !wire::decrement_ttl(pkt) {
            self.drop(DropReason::TtlExceeded);
            return;
        }
        let too_big = meta.total_len > usize::from(self.settings.mtu);
        if too_big && !wire::may_fragment(pkt) {
            self.drop(DropReason::TooBig);
            let kind = IcmpError::PacketTooBig {
                mtu: self.settings.mtu,
            };
            let (core, settings, counters) = (self.core, self.settings, self.counters);
            if let Some(n) = make_icmp(core, settings, counters, kind, pkt, &mut self.scratch[..]) {
                self.route_icmp(n);
            }
            return;
        }
        // What the kernel would have done on its way into the TUN device.
        if wire::complete_partial_checksum(pkt, &meta) {
            self.counters.checksum_completed.add(1);
        }
        let mss = mss_for(self.settings.mtu, pkt);
        if self.settings.mss_clamp && wire::clamp_tcp_mss(pkt, mss) {
            self.counters.mss_clamped.add(1);
        }
        if too_big {
            return self.send_fragments(&peer, Some(pkt), Path::FromMesh);
        }
        if self.encapsulate_to(&peer, pkt) {
            self.counters.forwarded(Path::FromMesh, meta.total_len);
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

/// An ICMP error of `kind` about `offending`, from the device's address of its family,
/// written into `out` if one is due and the rate limit (shared by every worker) lets it go:
/// its length. Counted as sent, or as rate-limited; an error RFC 1812 / RFC 4443 forbid
/// (about an ICMP error, to multicast ...) is neither, and spends no token.
fn make_icmp(
    core: &Core,
    settings: &Settings,
    counters: &WorkerCounters,
    kind: IcmpError,
    offending: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let from = match offending.first().map(|b| b >> 4) {
        Some(4) => settings.icmp_src_v4.map(IpAddr::V4),
        Some(6) => settings.icmp_src_v6.map(IpAddr::V6),
        _ => None,
    }?;
    let reply = wire::IcmpReply::about(kind, offending, from)?;
    let now = std::time::Instant::now();
    if !core
        .icmp_limit
        .take(now, settings.icmp_rate, settings.icmp_burst)
    {
        counters.icmp_ratelimited.add(1);
        return None;
    }
    let n = reply.write(offending, out)?;
    counters.icmp_sent.add(1);
    Some(n)
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
fn authenticated(peer: &Peer, st: &mut Session, len: usize, src: SocketAddr) -> bool {
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
    st: &mut Session,
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
        if msg[0] == INITIATION {
            st.initiated_at = Some(std::time::Instant::now());
        }
    }
}

/// Encrypt `pkt` for `to` into the next free slot of `udp_out` (which has room).
pub(super) fn encapsulate_into(
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
const _: () = assert!(SLOT_SIZE >= 1500 + 32 && SLOT_SIZE >= wire::wg::INITIATION_LEN);
