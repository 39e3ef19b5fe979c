//! The control channel's messages and their encoding.
//!
//! A frame is a 4-byte big-endian body length followed by the body; a body is a 1-byte
//! message type followed by its fields, in order, encoded as:
//!
//! | field            | encoding                                                     |
//! |------------------|--------------------------------------------------------------|
//! | `u8/u16/u32/u64` | big-endian                                                   |
//! | string, bytes    | `u32` length, then the bytes (strings are UTF-8)             |
//! | key              | 32 bytes                                                     |
//! | `Option<T>`      | `u8` option tag (none or some), then `T`                     |
//! | `Vec<T>`         | `u32` count, then the items                                  |
//! | prefix           | `u8` family, 4 or 16 address bytes, `u8` length              |
//! | socket address   | `u8` family, address bytes, `u16` port                       |
//! | next hop         | `u8` kind (peer, local, blackhole), then the key for a peer  |
//! | fieldless enum   | `u8` code                                                    |
//!
//! The first message on a connection is `Hello` with [`PROTOCOL_VERSION`]; the data plane
//! answers `HelloAck`, or `Error` and closes when the versions differ. Bodies over
//! [`MAX_MESSAGE`] are refused before they are read. Decoding never panics.
//!
//! Every code of every enum on the wire (message [`Tag`], option, address family, next hop, link
//! class, route origin, event) is written once, in a `wire_tags!` table below, from which both
//! the encoder and the decoder are made; the numbers are not repeated anywhere else.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use std::time::UNIX_EPOCH;

use crate::config::LinkClass;
use crate::fib::{RouteOrigin, Via};
use crate::keys::Key;
use crate::tunnel::PeerInfo;

/// Version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 5;

/// Largest body accepted by default (a full table of a million routes fits); the data plane
/// takes `[interface] max_control_message` from its clients.
pub const MAX_MESSAGE: usize = 64 << 20;

/// The most bytes one route of a FIB snapshot or update takes (an IPv6 prefix via a peer),
/// to tell what a message bound holds.
pub const MAX_ROUTE_BYTES: usize = 51;

/// A route pushed by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtlRoute {
    /// Destination.
    pub prefix: IpNet,
    /// Next hop.
    pub next_hop: Via,
}

/// A FIB route as the data plane reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination.
    pub prefix: IpNet,
    /// Next hop.
    pub next_hop: Via,
    /// Origin.
    pub origin: RouteOrigin,
}

/// Something that happened to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A handshake completed.
    HandshakeUp {
        /// The peer.
        peer: Key,
    },
    /// The peer's endpoint changed.
    EndpointChanged {
        /// The peer.
        peer: Key,
        /// Its new endpoint.
        endpoint: SocketAddr,
    },
    /// The peer was added (UAPI `set`, a configuration file, the control channel). Sent after
    /// the change is published: a `GetPeers` that follows sees it.
    Added {
        /// The peer.
        peer: Key,
    },
    /// The peer's settings were set again (endpoint, allowed IPs, keepalive, keys, class).
    Changed {
        /// The peer.
        peer: Key,
    },
    /// The peer was removed.
    Removed {
        /// The peer.
        peer: Key,
    },
    /// The peer's liveness probe hears it (again).
    Up {
        /// The peer.
        peer: Key,
    },
    /// The peer's liveness probe heard nothing authenticated from it for its detection time.
    Down {
        /// The peer.
        peer: Key,
    },
}

/// Every message, both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// client → dp: first message.
    Hello {
        /// Protocol version.
        version: u16,
        /// Who is speaking (for logs).
        client: String,
    },
    /// dp → client: answer to `Hello`.
    HelloAck {
        /// Protocol version.
        version: u16,
        /// Interface name.
        ifname: String,
        /// The device's public key, if it has one.
        public_key: Option<Key>,
    },
    /// client → dp: list peers.
    GetPeers,
    /// client → dp: list FIB routes.
    GetRoutes,
    /// client → dp: counters.
    GetStats,
    /// client → dp: read the configuration file again and apply the difference (`Ok`, or
    /// `Error` with why).
    Reload,
    /// client → dp: replace all control-plane routes.
    FibSnapshot {
        /// The new set.
        routes: Vec<CtlRoute>,
    },
    /// client → dp: change some control-plane routes.
    FibUpdate {
        /// Added or replaced.
        add: Vec<CtlRoute>,
        /// Withdrawn.
        remove: Vec<IpNet>,
    },
    /// client → dp: send me events and punted packets.
    Subscribe,
    /// client → dp: send an IP packet into a peer's tunnel.
    Inject {
        /// The peer.
        peer: Key,
        /// The IP packet.
        packet: Vec<u8>,
    },
    /// dp → client.
    Peers(Vec<PeerInfo>),
    /// dp → client.
    Routes(Vec<RouteInfo>),
    /// dp → client: counter name and value.
    Stats(Vec<(String, u64)>),
    /// dp → client: done.
    Ok,
    /// dp → client: refused, and why.
    Error(String),
    /// dp → subscriber.
    Event(PeerEvent),
    /// dp → subscriber: a control packet that arrived in a peer's tunnel.
    Punt {
        /// The peer it came from.
        peer: Key,
        /// The IP packet.
        packet: Vec<u8>,
    },
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The body ended early.
    #[error("truncated message")]
    Truncated,
    /// Unknown message type or tag.
    #[error("unknown {what} {value}")]
    Unknown {
        /// What kind of tag.
        what: &'static str,
        /// Its value.
        value: u8,
    },
    /// A field holds an impossible value.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Frame over [`MAX_MESSAGE`] (or the bound of [`read_msg_within`]).
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The one table of a wire enum: each variant and its code, written once, from which both the
/// encoder ([`WireTag::code`]) and the decoder ([`WireTag::from_code`]) are generated. The first
/// form defines a new fieldless enum; the second gives codes to an existing fieldless enum.
macro_rules! wire_tags {
    (
        $(#[$m:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$vm:meta])* $v:ident = $n:literal,)+
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vm])* $v,)+
        }
        wire_tags!(impl $name ($what) { $($v = $n,)+ });
        impl TryFrom<u8> for $name {
            type Error = ProtoError;
            fn try_from(v: u8) -> Result<Self, ProtoError> {
                <Self as WireTag>::from_code(v)
            }
        }
        impl From<$name> for u8 {
            fn from(t: $name) -> u8 {
                t.code()
            }
        }
    };
    (impl $name:ident ($what:literal) { $($v:ident = $n:literal,)+ }) => {
        impl WireTag for $name {
            #[cfg(test)]
            const ALL: &'static [Self] = &[$($name::$v,)+];
            fn code(self) -> u8 {
                match self {
                    $($name::$v => $n,)+
                }
            }
            fn from_code(v: u8) -> Result<Self, ProtoError> {
                match v {
                    $($n => Ok($name::$v),)+
                    _ => Err(ProtoError::Unknown { what: $what, value: v }),
                }
            }
        }
    };
}

/// A fieldless enum sent as a one-byte code.
trait WireTag: Sized + Copy + 'static {
    /// Every variant (for the tests).
    #[cfg(test)]
    const ALL: &'static [Self];
    /// Its code on the wire.
    fn code(self) -> u8;
    /// The variant of a code; [`ProtoError::Unknown`] for an unknown one.
    fn from_code(v: u8) -> Result<Self, ProtoError>;
}

wire_tags! {
    /// A message's type, its body's first byte.
    pub enum Tag("message type") {
        /// [`Msg::Hello`].
        Hello = 1,
        /// [`Msg::HelloAck`].
        HelloAck = 2,
        /// [`Msg::GetPeers`].
        GetPeers = 3,
        /// [`Msg::GetRoutes`].
        GetRoutes = 4,
        /// [`Msg::GetStats`].
        GetStats = 5,
        /// [`Msg::FibSnapshot`].
        FibSnapshot = 6,
        /// [`Msg::FibUpdate`].
        FibUpdate = 7,
        /// [`Msg::Subscribe`].
        Subscribe = 8,
        /// [`Msg::Inject`].
        Inject = 9,
        /// [`Msg::Peers`].
        Peers = 10,
        /// [`Msg::Routes`].
        Routes = 11,
        /// [`Msg::Stats`].
        Stats = 12,
        /// [`Msg::Ok`].
        Ok = 13,
        /// [`Msg::Error`].
        Error = 14,
        /// [`Msg::Event`].
        Event = 15,
        /// [`Msg::Punt`].
        Punt = 16,
        /// [`Msg::Reload`].
        Reload = 17,
    }
}

wire_tags! {
    /// Whether an `Option` holds a value.
    enum OptTag("option tag") {
        None = 0,
        Some = 1,
    }
}

wire_tags! {
    /// An address's family.
    enum Family("address family") {
        V4 = 4,
        V6 = 6,
    }
}

wire_tags! {
    /// The kind of a [`Via`].
    enum HopTag("next hop") {
        Peer = 1,
        Local = 2,
        Blackhole = 3,
        Neighbour = 4,
    }
}

wire_tags! {
    /// The kind of a [`PeerEvent`].
    enum EventTag("event") {
        HandshakeUp = 1,
        EndpointChanged = 2,
        Added = 3,
        Changed = 4,
        Removed = 5,
        Up = 6,
        Down = 7,
    }
}

wire_tags!(impl LinkClass("link class") {
    Mesh = 1,
    Trunk = 2,
    Wired = 3,
});

wire_tags!(impl RouteOrigin("route origin") {
    AllowedIps = 1,
    Connected = 2,
    Static = 3,
    Control = 4,
});

impl Msg {
    /// The message's type on the wire.
    #[must_use]
    pub fn tag(&self) -> Tag {
        match self {
            Msg::Hello { .. } => Tag::Hello,
            Msg::HelloAck { .. } => Tag::HelloAck,
            Msg::GetPeers => Tag::GetPeers,
            Msg::GetRoutes => Tag::GetRoutes,
            Msg::GetStats => Tag::GetStats,
            Msg::Reload => Tag::Reload,
            Msg::FibSnapshot { .. } => Tag::FibSnapshot,
            Msg::FibUpdate { .. } => Tag::FibUpdate,
            Msg::Subscribe => Tag::Subscribe,
            Msg::Inject { .. } => Tag::Inject,
            Msg::Peers(_) => Tag::Peers,
            Msg::Routes(_) => Tag::Routes,
            Msg::Stats(_) => Tag::Stats,
            Msg::Ok => Tag::Ok,
            Msg::Error(_) => Tag::Error,
            Msg::Event(_) => Tag::Event,
            Msg::Punt { .. } => Tag::Punt,
        }
    }
}

impl PeerEvent {
    fn tag(&self) -> EventTag {
        match self {
            PeerEvent::HandshakeUp { .. } => EventTag::HandshakeUp,
            PeerEvent::EndpointChanged { .. } => EventTag::EndpointChanged,
            PeerEvent::Added { .. } => EventTag::Added,
            PeerEvent::Changed { .. } => EventTag::Changed,
            PeerEvent::Removed { .. } => EventTag::Removed,
            PeerEvent::Up { .. } => EventTag::Up,
            PeerEvent::Down { .. } => EventTag::Down,
        }
    }
}

fn hop_tag(h: &Via) -> HopTag {
    match h {
        Via::Peer(_) => HopTag::Peer,
        Via::Local => HopTag::Local,
        Via::Blackhole => HopTag::Blackhole,
        Via::Neighbour { .. } => HopTag::Neighbour,
    }
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn tag(&mut self, t: impl WireTag) {
        self.u8(t.code());
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn key(&mut self, k: &Key) {
        self.0.extend_from_slice(&k.0);
    }
    fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.tag(OptTag::Some);
                f(self, v);
            }
            None => self.tag(OptTag::None),
        }
    }
    fn ip(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => {
                self.tag(Family::V4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.tag(Family::V6);
                self.0.extend_from_slice(&a.octets());
            }
        }
    }
    fn prefix(&mut self, p: &IpNet) {
        self.ip(p.addr());
        self.u8(p.prefix_len());
    }
    fn sockaddr(&mut self, a: &SocketAddr) {
        self.ip(a.ip());
        self.u16(a.port());
    }
    fn hop(&mut self, h: &Via) {
        self.tag(hop_tag(h));
        match h {
            Via::Peer(k) => self.key(k),
            &Via::Neighbour { ifindex, addr } => {
                self.u32(ifindex);
                self.ip(addr);
            }
            Via::Local | Via::Blackhole => {}
        }
    }
    fn route(&mut self, r: &CtlRoute) {
        self.prefix(&r.prefix);
        self.hop(&r.next_hop);
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn tag<T: WireTag>(&mut self) -> Result<T, ProtoError> {
        T::from_code(self.u8()?)
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(
            self.take(2)?
                .try_into()
                .map_err(|_| ProtoError::Truncated)?,
        ))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| ProtoError::Truncated)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(
            self.take(8)?
                .try_into()
                .map_err(|_| ProtoError::Truncated)?,
        ))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?).map_err(|_| ProtoError::Invalid("UTF-8 string"))
    }
    fn key(&mut self) -> Result<Key, ProtoError> {
        Ok(Key(self
            .take(32)?
            .try_into()
            .map_err(|_| ProtoError::Truncated)?))
    }
    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ProtoError>,
    ) -> Result<Option<T>, ProtoError> {
        match self.tag()? {
            OptTag::None => Ok(None),
            OptTag::Some => Ok(Some(f(self)?)),
        }
    }
    /// A vector whose items take at least `min_item` bytes (bounds the allocation).
    fn vec<T>(
        &mut self,
        min_item: usize,
        mut f: impl FnMut(&mut Self) -> Result<T, ProtoError>,
    ) -> Result<Vec<T>, ProtoError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.0.len() {
            return Err(ProtoError::Truncated);
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }
    fn ip(&mut self) -> Result<IpAddr, ProtoError> {
        match self.tag()? {
            Family::V4 => Ok(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(self.take(4)?).map_err(|_| ProtoError::Truncated)?,
            ))),
            Family::V6 => Ok(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(self.take(16)?).map_err(|_| ProtoError::Truncated)?,
            ))),
        }
    }
    fn prefix(&mut self) -> Result<IpNet, ProtoError> {
        let a = self.ip()?;
        let l = self.u8()?;
        IpNet::new(a, l).map_err(|_| ProtoError::Invalid("prefix length"))
    }
    fn sockaddr(&mut self) -> Result<SocketAddr, ProtoError> {
        let a = self.ip()?;
        Ok(SocketAddr::new(a, self.u16()?))
    }
    fn hop(&mut self) -> Result<Via, ProtoError> {
        Ok(match self.tag()? {
            HopTag::Peer => Via::Peer(self.key()?),
            HopTag::Local => Via::Local,
            HopTag::Blackhole => Via::Blackhole,
            HopTag::Neighbour => Via::Neighbour {
                ifindex: self.u32()?,
                addr: self.ip()?,
            },
        })
    }
    fn route(&mut self) -> Result<CtlRoute, ProtoError> {
        Ok(CtlRoute {
            prefix: self.prefix()?,
            next_hop: self.hop()?,
        })
    }
}

/// Append `msg` as one frame (length and body) to `out`.
pub fn encode(msg: &Msg, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut w = W(out);
    w.tag(msg.tag());
    match msg {
        Msg::GetPeers | Msg::GetRoutes | Msg::GetStats | Msg::Reload | Msg::Subscribe | Msg::Ok => {
        }
        Msg::Hello { version, client } => {
            w.u16(*version);
            w.str(client);
        }
        Msg::HelloAck {
            version,
            ifname,
            public_key,
        } => {
            w.u16(*version);
            w.str(ifname);
            w.opt(public_key.as_ref(), W::key);
        }
        Msg::FibSnapshot { routes } => {
            w.len(routes.len());
            routes.iter().for_each(|r| w.route(r));
        }
        Msg::FibUpdate { add, remove } => {
            w.len(add.len());
            add.iter().for_each(|r| w.route(r));
            w.len(remove.len());
            remove.iter().for_each(|p| w.prefix(p));
        }
        Msg::Inject { peer, packet } | Msg::Punt { peer, packet } => {
            w.key(peer);
            w.bytes(packet);
        }
        Msg::Peers(peers) => {
            w.len(peers.len());
            for p in peers {
                w.key(&p.public_key);
                w.opt(p.name.as_deref(), W::str);
                w.tag(p.class);
                w.opt(p.endpoint.as_ref(), W::sockaddr);
                // Whole seconds since the Unix epoch; the preshared key is not sent.
                let handshake = p
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                w.opt(handshake, |w, t| w.u64(t.as_secs()));
                w.u16(p.persistent_keepalive.unwrap_or(0));
                w.u64(p.rx_bytes);
                w.u64(p.tx_bytes);
                w.u64(p.rx_packets);
                w.u64(p.tx_packets);
                w.u64(p.handshakes);
                w.len(p.allowed_ips.len());
                p.allowed_ips.iter().for_each(|a| w.prefix(a));
                w.opt(p.liveness, |w, up| w.u8(u8::from(up)));
            }
        }
        Msg::Routes(routes) => {
            w.len(routes.len());
            for r in routes {
                w.prefix(&r.prefix);
                w.hop(&r.next_hop);
                w.tag(r.origin);
            }
        }
        Msg::Stats(stats) => {
            w.len(stats.len());
            for (k, v) in stats {
                w.str(k);
                w.u64(*v);
            }
        }
        Msg::Error(e) => w.str(e),
        Msg::Event(ev) => {
            w.tag(ev.tag());
            match ev {
                PeerEvent::HandshakeUp { peer }
                | PeerEvent::Added { peer }
                | PeerEvent::Changed { peer }
                | PeerEvent::Removed { peer }
                | PeerEvent::Up { peer }
                | PeerEvent::Down { peer } => w.key(peer),
                PeerEvent::EndpointChanged { peer, endpoint } => {
                    w.key(peer);
                    w.sockaddr(endpoint);
                }
            }
        }
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decode one body (without the length prefix).
pub fn decode(body: &[u8]) -> Result<Msg, ProtoError> {
    let mut r = R(body);
    let msg = match r.tag()? {
        Tag::Hello => Msg::Hello {
            version: r.u16()?,
            client: r.str()?,
        },
        Tag::HelloAck => Msg::HelloAck {
            version: r.u16()?,
            ifname: r.str()?,
            public_key: r.opt(R::key)?,
        },
        Tag::GetPeers => Msg::GetPeers,
        Tag::GetRoutes => Msg::GetRoutes,
        Tag::GetStats => Msg::GetStats,
        Tag::Reload => Msg::Reload,
        Tag::FibSnapshot => Msg::FibSnapshot {
            routes: r.vec(7, R::route)?,
        },
        Tag::FibUpdate => Msg::FibUpdate {
            add: r.vec(7, R::route)?,
            remove: r.vec(6, R::prefix)?,
        },
        Tag::Subscribe => Msg::Subscribe,
        Tag::Inject => Msg::Inject {
            peer: r.key()?,
            packet: r.bytes()?,
        },
        Tag::Peers => Msg::Peers(r.vec(32 + 46, |r| {
            Ok(PeerInfo {
                public_key: r.key()?,
                name: r.opt(R::str)?,
                class: r.tag()?,
                endpoint: r.opt(R::sockaddr)?,
                // A time the clock cannot hold is refused, not a panic (found by fuzzing).
                last_handshake: r
                    .opt(R::u64)?
                    .map(|t| {
                        UNIX_EPOCH
                            .checked_add(std::time::Duration::from_secs(t))
                            .ok_or(ProtoError::Invalid("handshake time"))
                    })
                    .transpose()?,
                preshared_key: None,
                persistent_keepalive: Some(r.u16()?).filter(|&k| k > 0),
                rx_bytes: r.u64()?,
                tx_bytes: r.u64()?,
                rx_packets: r.u64()?,
                tx_packets: r.u64()?,
                handshakes: r.u64()?,
                allowed_ips: r.vec(6, R::prefix)?,
                liveness: r.opt(R::u8)?.map(|up| up != 0),
            })
        })?),
        Tag::Routes => Msg::Routes(r.vec(8, |r| {
            Ok(RouteInfo {
                prefix: r.prefix()?,
                next_hop: r.hop()?,
                origin: r.tag()?,
            })
        })?),
        Tag::Stats => Msg::Stats(r.vec(12, |r| Ok((r.str()?, r.u64()?)))?),
        Tag::Ok => Msg::Ok,
        Tag::Error => Msg::Error(r.str()?),
        Tag::Event => Msg::Event(match r.tag()? {
            EventTag::HandshakeUp => PeerEvent::HandshakeUp { peer: r.key()? },
            EventTag::Added => PeerEvent::Added { peer: r.key()? },
            EventTag::Changed => PeerEvent::Changed { peer: r.key()? },
            EventTag::Removed => PeerEvent::Removed { peer: r.key()? },
            EventTag::Up => PeerEvent::Up { peer: r.key()? },
            EventTag::Down => PeerEvent::Down { peer: r.key()? },
            EventTag::EndpointChanged => PeerEvent::EndpointChanged {
                peer: r.key()?,
                endpoint: r.sockaddr()?,
            },
        }),
        Tag::Punt => Msg::Punt {
            peer: r.key()?,
            packet: r.bytes()?,
        },
    };
    if !r.0.is_empty() {
        return Err(ProtoError::Trailing(r.0.len()));
    }
    Ok(msg)
}

/// Read one frame and decode it.
pub fn read_msg(r: &mut impl Read) -> Result<Msg, ProtoError> {
    read_msg_within(r, MAX_MESSAGE)
}

/// Read one frame of at most `max` bytes and decode it; a larger one is refused before its
/// body is read.
pub fn read_msg_within(r: &mut impl Read, max: usize) -> Result<Msg, ProtoError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(ProtoError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// Encode and write one frame.
pub fn write_msg(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    let mut buf = Vec::new();
    encode(msg, &mut buf);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_route_takes_more_than_max_route_bytes() {
        let size = |routes: Vec<CtlRoute>| {
            let mut v = Vec::new();
            encode(&Msg::FibSnapshot { routes }, &mut v);
            v.len()
        };
        let empty = size(Vec::new());
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        let hops = [
            Via::Peer(Key([1; 32])),
            Via::Local,
            Via::Blackhole,
            Via::Neighbour {
                ifindex: 7,
                addr: "fe80::1".parse().unwrap(),
            },
        ];
        let most = (hops.iter())
            .map(|&next_hop| {
                size(vec![CtlRoute {
                    prefix: v6,
                    next_hop,
                }]) - empty
            })
            .max();
        assert_eq!(most, Some(MAX_ROUTE_BYTES));
    }

    #[test]
    fn a_frame_over_the_bound_is_refused_before_its_body_is_read() {
        let mut v = Vec::new();
        encode(
            &Msg::Hello {
                version: 1,
                client: "x".repeat(100),
            },
            &mut v,
        );
        let mut r: &[u8] = &v;
        assert!(matches!(
            read_msg_within(&mut r, 50),
            Err(ProtoError::TooLarge(_))
        ));
        assert_eq!(r.len(), v.len() - 4, "only the length was read");
        let mut r: &[u8] = &v;
        assert!(read_msg_within(&mut r, 200).is_ok());
    }

    fn key() -> impl Strategy<Value = Key> {
        any::<[u8; 32]>().prop_map(Key)
    }
    fn prefix() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| IpNet::new(IpAddr::from(a), l).unwrap()),
            (any::<[u8; 16]>(), 0u8..=128)
                .prop_map(|(a, l)| IpNet::new(IpAddr::from(a), l).unwrap()),
        ]
    }
    fn sockaddr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::from(a), p)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(a, p)| SocketAddr::new(IpAddr::from(a), p)),
        ]
    }
    fn hop() -> impl Strategy<Value = Via> {
        prop_oneof![
            key().prop_map(Via::Peer),
            Just(Via::Local),
            Just(Via::Blackhole),
            (any::<u32>(), any::<[u8; 16]>()).prop_map(|(ifindex, a)| Via::Neighbour {
                ifindex,
                addr: IpAddr::from(a),
            }),
        ]
    }
    fn route() -> impl Strategy<Value = CtlRoute> {
        (prefix(), hop()).prop_map(|(prefix, next_hop)| CtlRoute { prefix, next_hop })
    }
    fn peer() -> impl Strategy<Value = PeerInfo> {
        (
            key(),
            proptest::option::of(".{0,12}"),
            prop_oneof![
                Just(LinkClass::Mesh),
                Just(LinkClass::Trunk),
                Just(LinkClass::Wired)
            ],
            proptest::option::of(sockaddr()),
            proptest::option::of(0..u64::from(u32::MAX)),
            any::<u16>(),
            any::<[u64; 5]>(),
            proptest::collection::vec(prefix(), 0..4),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(
                |(
                    public_key,
                    name,
                    class,
                    endpoint,
                    handshake,
                    keepalive,
                    c,
                    allowed_ips,
                    liveness,
                )| {
                    PeerInfo {
                        public_key,
                        name,
                        class,
                        endpoint,
                        // The channel carries whole seconds and no preshared key.
                        last_handshake: handshake
                            .map(|t| UNIX_EPOCH + std::time::Duration::from_secs(t)),
                        preshared_key: None,
                        persistent_keepalive: Some(keepalive).filter(|&k| k > 0),
                        rx_bytes: c[0],
                        tx_bytes: c[1],
                        rx_packets: c[2],
                        tx_packets: c[3],
                        handshakes: c[4],
                        allowed_ips,
                        liveness,
                    }
                },
            )
    }
    fn origin() -> impl Strategy<Value = RouteOrigin> {
        prop_oneof![
            Just(RouteOrigin::AllowedIps),
            Just(RouteOrigin::Connected),
            Just(RouteOrigin::Static),
            Just(RouteOrigin::Control)
        ]
    }
    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u16>(), ".{0,20}").prop_map(|(version, client)| Msg::Hello { version, client }),
            (any::<u16>(), "[a-z0-9]{1,15}", proptest::option::of(key())).prop_map(
                |(version, ifname, public_key)| Msg::HelloAck {
                    version,
                    ifname,
                    public_key
                }
            ),
            Just(Msg::GetPeers),
            Just(Msg::GetRoutes),
            Just(Msg::GetStats),
            Just(Msg::Reload),
            proptest::collection::vec(route(), 0..20)
                .prop_map(|routes| Msg::FibSnapshot { routes }),
            (
                proptest::collection::vec(route(), 0..10),
                proptest::collection::vec(prefix(), 0..10)
            )
                .prop_map(|(add, remove)| Msg::FibUpdate { add, remove }),
            Just(Msg::Subscribe),
            (key(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(peer, packet)| Msg::Inject { peer, packet }),
            proptest::collection::vec(peer(), 0..5).prop_map(Msg::Peers),
            proptest::collection::vec((prefix(), hop(), origin()), 0..10).prop_map(
                |v| Msg::Routes(
                    v.into_iter()
                        .map(|(prefix, next_hop, origin)| RouteInfo {
                            prefix,
                            next_hop,
                            origin
                        })
                        .collect()
                )
            ),
            proptest::collection::vec((".{0,10}", any::<u64>()), 0..10).prop_map(Msg::Stats),
            Just(Msg::Ok),
            ".{0,40}".prop_map(Msg::Error),
            key().prop_map(|peer| Msg::Event(PeerEvent::HandshakeUp { peer })),
            key().prop_map(|peer| Msg::Event(PeerEvent::Added { peer })),
            key().prop_map(|peer| Msg::Event(PeerEvent::Changed { peer })),
            key().prop_map(|peer| Msg::Event(PeerEvent::Removed { peer })),
            key().prop_map(|peer| Msg::Event(PeerEvent::Up { peer })),
            key().prop_map(|peer| Msg::Event(PeerEvent::Down { peer })),
            (key(), sockaddr()).prop_map(|(peer, endpoint)| Msg::Event(
                PeerEvent::EndpointChanged { peer, endpoint }
            )),
            (key(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(peer, packet)| Msg::Punt { peer, packet }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in msg()) {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            let back = read_msg(&mut &buf[..]).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn truncated_frames_are_errors(m in msg(), cut in any::<usize>()) {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            let cut = cut % buf.len();
            prop_assert!(read_msg(&mut &buf[..cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
            let _ = read_msg(&mut &b[..]);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let frame = (u32::MAX).to_be_bytes();
        assert!(matches!(
            read_msg(&mut &frame[..]),
            Err(ProtoError::TooLarge(_))
        ));
        // A huge count with few bytes behind it does not allocate.
        let mut body = vec![6u8];
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&body), Err(ProtoError::Truncated)));
    }

    /// One message of each kind, each enum code used at least once.
    fn pinned_messages() -> Vec<Msg> {
        let k = Key([0xab; 32]);
        let v4: IpNet = "10.1.0.0/16".parse().unwrap();
        let v6: IpNet = "fd00::/8".parse().unwrap();
        let ep: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let peer = |class: LinkClass, with: bool| PeerInfo {
            public_key: k,
            name: with.then(|| "a".to_string()),
            class,
            endpoint: with.then_some(ep),
            last_handshake: with.then(|| UNIX_EPOCH + std::time::Duration::from_secs(258)),
            preshared_key: None,
            persistent_keepalive: with.then_some(25),
            rx_bytes: 1,
            tx_bytes: 2,
            rx_packets: 3,
            tx_packets: 4,
            handshakes: 5,
            allowed_ips: vec![v4],
            liveness: with.then_some(true),
        };
        vec![
            Msg::Hello {
                version: 2,
                client: "c".into(),
            },
            Msg::HelloAck {
                version: 2,
                ifname: "i".into(),
                public_key: Some(k),
            },
            Msg::HelloAck {
                version: 2,
                ifname: "i".into(),
                public_key: None,
            },
            Msg::GetPeers,
            Msg::GetRoutes,
            Msg::GetStats,
            Msg::Reload,
            Msg::FibSnapshot {
                routes: vec![CtlRoute {
                    prefix: v4,
                    next_hop: Via::Local,
                }],
            },
            Msg::FibUpdate {
                add: vec![CtlRoute {
                    prefix: v6,
                    next_hop: Via::Peer(k),
                }],
                remove: vec![v4],
            },
            Msg::FibUpdate {
                add: vec![CtlRoute {
                    prefix: v4,
                    next_hop: Via::Neighbour {
                        ifindex: 7,
                        addr: "fe80::1".parse().unwrap(),
                    },
                }],
                remove: vec![],
            },
            Msg::Subscribe,
            Msg::Inject {
                peer: k,
                packet: vec![0x45],
            },
            Msg::Peers(vec![
                peer(LinkClass::Mesh, true),
                peer(LinkClass::Trunk, false),
                peer(LinkClass::Wired, false),
            ]),
            Msg::Routes(vec![
                RouteInfo {
                    prefix: v4,
                    next_hop: Via::Blackhole,
                    origin: RouteOrigin::AllowedIps,
                },
                RouteInfo {
                    prefix: v4,
                    next_hop: Via::Local,
                    origin: RouteOrigin::Connected,
                },
                RouteInfo {
                    prefix: v6,
                    next_hop: Via::Local,
                    origin: RouteOrigin::Static,
                },
                RouteInfo {
                    prefix: v6,
                    next_hop: Via::Local,
                    origin: RouteOrigin::Control,
                },
            ]),
            Msg::Stats(vec![("s".into(), 9)]),
            Msg::Ok,
            Msg::Error("e".into()),
            Msg::Event(PeerEvent::HandshakeUp { peer: k }),
            Msg::Event(PeerEvent::EndpointChanged {
                peer: k,
                endpoint: ep,
            }),
            Msg::Event(PeerEvent::Added { peer: k }),
            Msg::Event(PeerEvent::Changed { peer: k }),
            Msg::Event(PeerEvent::Removed { peer: k }),
            Msg::Event(PeerEvent::Up { peer: k }),
            Msg::Event(PeerEvent::Down { peer: k }),
            Msg::Punt {
                peer: k,
                packet: vec![0x60],
            },
        ]
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The bytes of [`pinned_messages`] as the previous encoders wrote them (`K` for the key):
    /// a change here changes the protocol and needs a new [`PROTOCOL_VERSION`].
    const PINNED: &[&str] = &[
        "000000080100020000000163",
        "00000029020002000000016901K",
        "00000009020002000000016900",
        "0000000103",
        "0000000104",
        "0000000105",
        "0000000111",
        "0000000c0600000001040a0100001002",
        "00000042070000000106fd0000000000000000000000000000000801K00000001040a01000010",
        "000000250700000001040a01000010040000000706fe80000000000000000000000000000100000000",
        "0000000108",
        "0000002609K0000000145",
        "000001250a00000003K010000000161010104c0000201ca6c01000000000000010200190000000000000001000000000000000200000000000000030000000000000004000000000000000500000001040a010000100101K0002000000000000000000000001000000000000000200000000000000030000000000000004000000000000000500000001040a0100001000K0003000000000000000000000001000000000000000200000000000000030000000000000004000000000000000500000001040a0100001000",
        "0000003d0b00000004040a010000100301040a01000010020206fd00000000000000000000000000000008020306fd000000000000000000000000000000080204",
        "000000120c0000000100000001730000000000000009",
        "000000010d",
        "000000060e0000000165",
        "000000220f01K",
        "000000290f02K04c0000201ca6c",
        "000000220f03K",
        "000000220f04K",
        "000000220f05K",
        "000000220f06K",
        "000000220f07K",
        "0000002610K0000000160",
    ];

    /// fuzz/regressions/ctl_decode: a handshake time past what `SystemTime` holds.
    #[test]
    fn a_handshake_time_out_of_range_is_an_error() {
        let peers = pinned_messages()
            .into_iter()
            .find(|m| matches!(m, Msg::Peers(_)))
            .unwrap();
        let mut buf = Vec::new();
        encode(&peers, &mut buf);
        // The first peer's handshake, 258 s after the epoch: made 2^64 - 1 s.
        let at = (buf.windows(8))
            .position(|w| w == 258u64.to_be_bytes())
            .unwrap();
        buf[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        let r = decode(&buf[4..]);
        assert!(matches!(r, Err(ProtoError::Invalid(_))), "{r:?}");
    }

    #[test]
    fn wire_format_is_pinned() {
        let msgs = pinned_messages();
        assert_eq!(msgs.len(), PINNED.len());
        for (m, want) in msgs.iter().zip(PINNED) {
            let mut buf = Vec::new();
            encode(m, &mut buf);
            let want = want.replace('K', &"ab".repeat(32));
            assert_eq!(hex(&buf), want, "{m:?}");
            assert_eq!(&decode(&buf[4..]).unwrap(), m);
        }
        // Every message type is pinned.
        let tags: std::collections::HashSet<Tag> = msgs.iter().map(Msg::tag).collect();
        assert_eq!(tags.len(), Tag::ALL.len());
    }

    /// Every code of `T` maps back to its variant, and every other byte is `Unknown`.
    fn check_table<T: WireTag + PartialEq + std::fmt::Debug>(what: &str) {
        let mut seen = 0;
        for v in 0..=u8::MAX {
            match T::from_code(v) {
                Ok(t) => {
                    assert_eq!(t.code(), v, "{what} {t:?}");
                    seen += 1;
                }
                Err(ProtoError::Unknown { what: w, value }) => {
                    assert_eq!((w, value), (what, v));
                }
                Err(e) => panic!("{what} {v}: {e}"),
            }
        }
        // Each variant has its own code.
        assert_eq!(seen, T::ALL.len(), "{what}");
        for &t in T::ALL {
            assert_eq!(T::from_code(t.code()).unwrap(), t, "{what}");
        }
    }

    #[test]
    fn every_tag_round_trips_through_u8() {
        for &t in Tag::ALL {
            assert_eq!(Tag::try_from(u8::from(t)).unwrap(), t);
        }
        assert!(matches!(
            Tag::try_from(0),
            Err(ProtoError::Unknown {
                what: "message type",
                value: 0
            })
        ));
        assert!(matches!(
            decode(&[200]),
            Err(ProtoError::Unknown {
                what: "message type",
                value: 200
            })
        ));
        check_table::<Tag>("message type");
        check_table::<OptTag>("option tag");
        check_table::<Family>("address family");
        check_table::<HopTag>("next hop");
        check_table::<EventTag>("event");
        check_table::<LinkClass>("link class");
        check_table::<RouteOrigin>("route origin");
    }
}
