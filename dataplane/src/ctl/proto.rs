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
//! | `Option<T>`      | `u8` 0 (none) or 1, then `T`                                 |
//! | `Vec<T>`         | `u32` count, then the items                                  |
//! | prefix           | `u8` family (4 or 6), 4 or 16 address bytes, `u8` length     |
//! | socket address   | `u8` family, address bytes, `u16` port                       |
//! | next hop         | `u8` 1 peer (then key), 2 local, 3 blackhole                 |
//!
//! The first message on a connection is `Hello` with [`PROTOCOL_VERSION`]; the data plane
//! answers `HelloAck`, or `Error` and closes when the versions differ. Bodies over
//! [`MAX_MESSAGE`] are refused before they are read. Decoding never panics.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use std::time::UNIX_EPOCH;

use crate::config::LinkClass;
use crate::fib::{RouteOrigin, Via};
use crate::keys::Key;
use crate::tunnel::PeerInfo;

/// Version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest body accepted (a full table of a million routes fits).
pub const MAX_MESSAGE: usize = 64 << 20;

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
    /// Frame over [`MAX_MESSAGE`].
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
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
    fn ip(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
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
        match h {
            Via::Peer(k) => {
                self.u8(1);
                self.key(k);
            }
            Via::Local => self.u8(2),
            Via::Blackhole => self.u8(3),
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
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(f(self)?)),
            v => Err(ProtoError::Unknown {
                what: "option tag",
                value: v,
            }),
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
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(self.take(4)?).map_err(|_| ProtoError::Truncated)?,
            ))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(self.take(16)?).map_err(|_| ProtoError::Truncated)?,
            ))),
            v => Err(ProtoError::Unknown {
                what: "address family",
                value: v,
            }),
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
        match self.u8()? {
            1 => Ok(Via::Peer(self.key()?)),
            2 => Ok(Via::Local),
            3 => Ok(Via::Blackhole),
            v => Err(ProtoError::Unknown {
                what: "next hop",
                value: v,
            }),
        }
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
    match msg {
        Msg::Hello { version, client } => {
            w.u8(1);
            w.u16(*version);
            w.str(client);
        }
        Msg::HelloAck {
            version,
            ifname,
            public_key,
        } => {
            w.u8(2);
            w.u16(*version);
            w.str(ifname);
            match public_key {
                Some(k) => {
                    w.u8(1);
                    w.key(k);
                }
                None => w.u8(0),
            }
        }
        Msg::GetPeers => w.u8(3),
        Msg::GetRoutes => w.u8(4),
        Msg::GetStats => w.u8(5),
        Msg::FibSnapshot { routes } => {
            w.u8(6);
            w.len(routes.len());
            routes.iter().for_each(|r| w.route(r));
        }
        Msg::FibUpdate { add, remove } => {
            w.u8(7);
            w.len(add.len());
            add.iter().for_each(|r| w.route(r));
            w.len(remove.len());
            remove.iter().for_each(|p| w.prefix(p));
        }
        Msg::Subscribe => w.u8(8),
        Msg::Inject { peer, packet } => {
            w.u8(9);
            w.key(peer);
            w.bytes(packet);
        }
        Msg::Peers(peers) => {
            w.u8(10);
            w.len(peers.len());
            for p in peers {
                w.key(&p.public_key);
                match &p.name {
                    Some(n) => {
                        w.u8(1);
                        w.str(n);
                    }
                    None => w.u8(0),
                }
                w.u8(match p.class {
                    LinkClass::Mesh => 1,
                    LinkClass::Trunk => 2,
                    LinkClass::Wired => 3,
                });
                match &p.endpoint {
                    Some(e) => {
                        w.u8(1);
                        w.sockaddr(e);
                    }
                    None => w.u8(0),
                }
                // Whole seconds since the Unix epoch; the preshared key is not sent.
                match p
                    .last_handshake
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                {
                    Some(t) => {
                        w.u8(1);
                        w.u64(t.as_secs());
                    }
                    None => w.u8(0),
                }
                w.u16(p.persistent_keepalive.unwrap_or(0));
                w.u64(p.rx_bytes);
                w.u64(p.tx_bytes);
                w.u64(p.rx_packets);
                w.u64(p.tx_packets);
                w.u64(p.handshakes);
                w.len(p.allowed_ips.len());
                p.allowed_ips.iter().for_each(|a| w.prefix(a));
            }
        }
        Msg::Routes(routes) => {
            w.u8(11);
            w.len(routes.len());
            for r in routes {
                w.prefix(&r.prefix);
                w.hop(&r.next_hop);
                w.u8(match r.origin {
                    RouteOrigin::AllowedIps => 1,
                    RouteOrigin::Connected => 2,
                    RouteOrigin::Static => 3,
                    RouteOrigin::Control => 4,
                });
            }
        }
        Msg::Stats(stats) => {
            w.u8(12);
            w.len(stats.len());
            for (k, v) in stats {
                w.str(k);
                w.u64(*v);
            }
        }
        Msg::Ok => w.u8(13),
        Msg::Error(e) => {
            w.u8(14);
            w.str(e);
        }
        Msg::Event(ev) => {
            w.u8(15);
            match ev {
                PeerEvent::HandshakeUp { peer } => {
                    w.u8(1);
                    w.key(peer);
                }
                PeerEvent::EndpointChanged { peer, endpoint } => {
                    w.u8(2);
                    w.key(peer);
                    w.sockaddr(endpoint);
                }
            }
        }
        Msg::Punt { peer, packet } => {
            w.u8(16);
            w.key(peer);
            w.bytes(packet);
        }
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decode one body (without the length prefix).
pub fn decode(body: &[u8]) -> Result<Msg, ProtoError> {
    let mut r = R(body);
    let msg = match r.u8()? {
        1 => Msg::Hello {
            version: r.u16()?,
            client: r.str()?,
        },
        2 => Msg::HelloAck {
            version: r.u16()?,
            ifname: r.str()?,
            public_key: r.opt(R::key)?,
        },
        3 => Msg::GetPeers,
        4 => Msg::GetRoutes,
        5 => Msg::GetStats,
        6 => Msg::FibSnapshot {
            routes: r.vec(7, R::route)?,
        },
        7 => Msg::FibUpdate {
            add: r.vec(7, R::route)?,
            remove: r.vec(6, R::prefix)?,
        },
        8 => Msg::Subscribe,
        9 => Msg::Inject {
            peer: r.key()?,
            packet: r.bytes()?,
        },
        10 => Msg::Peers(r.vec(32 + 45, |r| {
            Ok(PeerInfo {
                public_key: r.key()?,
                name: r.opt(R::str)?,
                class: match r.u8()? {
                    1 => LinkClass::Mesh,
                    2 => LinkClass::Trunk,
                    3 => LinkClass::Wired,
                    v => {
                        return Err(ProtoError::Unknown {
                            what: "link class",
                            value: v,
                        })
                    }
                },
                endpoint: r.opt(R::sockaddr)?,
                last_handshake: r
                    .opt(R::u64)?
                    .map(|t| UNIX_EPOCH + std::time::Duration::from_secs(t)),
                preshared_key: None,
                persistent_keepalive: Some(r.u16()?).filter(|&k| k > 0),
                rx_bytes: r.u64()?,
                tx_bytes: r.u64()?,
                rx_packets: r.u64()?,
                tx_packets: r.u64()?,
                handshakes: r.u64()?,
                allowed_ips: r.vec(6, R::prefix)?,
            })
        })?),
        11 => Msg::Routes(r.vec(8, |r| {
            let prefix = r.prefix()?;
            let next_hop = r.hop()?;
            let origin = match r.u8()? {
                1 => RouteOrigin::AllowedIps,
                2 => RouteOrigin::Connected,
                3 => RouteOrigin::Static,
                4 => RouteOrigin::Control,
                v => {
                    return Err(ProtoError::Unknown {
                        what: "route origin",
                        value: v,
                    })
                }
            };
            Ok(RouteInfo {
                prefix,
                next_hop,
                origin,
            })
        })?),
        12 => Msg::Stats(r.vec(12, |r| Ok((r.str()?, r.u64()?)))?),
        13 => Msg::Ok,
        14 => Msg::Error(r.str()?),
        15 => Msg::Event(match r.u8()? {
            1 => PeerEvent::HandshakeUp { peer: r.key()? },
            2 => PeerEvent::EndpointChanged {
                peer: r.key()?,
                endpoint: r.sockaddr()?,
            },
            v => {
                return Err(ProtoError::Unknown {
                    what: "event",
                    value: v,
                })
            }
        }),
        16 => Msg::Punt {
            peer: r.key()?,
            packet: r.bytes()?,
        },
        v => {
            return Err(ProtoError::Unknown {
                what: "message type",
                value: v,
            })
        }
    };
    if !r.0.is_empty() {
        return Err(ProtoError::Trailing(r.0.len()));
    }
    Ok(msg)
}

/// Read one frame and decode it.
pub fn read_msg(r: &mut impl Read) -> Result<Msg, ProtoError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_MESSAGE {
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
            Just(Via::Blackhole)
        ]
    }
    fn route() -> impl Strategy<Value = CtlRoute> {
        (prefix(), hop()).prop_map(|(prefix, next_hop)| CtlRoute { prefix, next_hop })
    }
    fn peer() -> impl Strategy<Value = PeerInfo> {
        (
            key(),
            proptest::option::of(".{0,12}"),
            any::<bool>(),
            proptest::option::of(sockaddr()),
            proptest::option::of(0..u64::from(u32::MAX)),
            any::<u16>(),
            any::<[u64; 5]>(),
            proptest::collection::vec(prefix(), 0..4),
        )
            .prop_map(
                |(public_key, name, trunk, endpoint, handshake, keepalive, c, allowed_ips)| {
                    PeerInfo {
                        public_key,
                        name,
                        class: if trunk {
                            LinkClass::Trunk
                        } else {
                            LinkClass::Mesh
                        },
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
}
