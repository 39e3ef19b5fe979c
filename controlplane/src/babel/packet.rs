//! Babel packets and TLVs (RFC 8966 §4, RFC 9229 v4-via-v6, RFC 9616 timestamps).
//!
//! Parsing is the first of two passes: [`parse`] decodes a whole packet into [`Msg`]s with
//! the packet's parser state already applied (router-id, next hop, default prefixes for
//! compression), and the protocol core acts on the list afterwards. [`Writer`] is the inverse:
//! it emits Router-Id and Next Hop TLVs only when they change and compresses prefixes against
//! the previous update of the same address family, so `parse(write(msgs)) == msgs`.
//!
//! Unknown TLVs are skipped; a TLV carrying an unknown sub-TLV with the mandatory bit is
//! ignored as a whole; a TLV that overruns the packet ends parsing (what came before is
//! kept). Nothing here panics on any input: the fuzz target `babel_packet` checks that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Babel's magic number.
pub const MAGIC: u8 = 42;
/// The protocol version.
pub const VERSION: u8 = 2;
/// UDP port.
pub const PORT: u16 = isthmus_dataplane::wire::BABEL_PORT;
/// Link-local multicast group.
pub const MULTICAST: Ipv6Addr = isthmus_dataplane::wire::BABEL_GROUP;
/// Metric value meaning "unreachable".
pub const INFINITY: u16 = 0xFFFF;
/// Size of the packet header.
pub const HEADER_LEN: usize = 4;

/// A router identifier.
pub type RouterId = [u8; 8];

/// TLV type numbers.
pub mod tlv {
    /// Pad1.
    pub const PAD1: u8 = 0;
    /// PadN.
    pub const PADN: u8 = 1;
    /// Acknowledgment Request.
    pub const ACK_REQ: u8 = 2;
    /// Acknowledgment.
    pub const ACK: u8 = 3;
    /// Hello.
    pub const HELLO: u8 = 4;
    /// IHU.
    pub const IHU: u8 = 5;
    /// Router-Id.
    pub const ROUTER_ID: u8 = 6;
    /// Next Hop.
    pub const NEXT_HOP: u8 = 7;
    /// Update.
    pub const UPDATE: u8 = 8;
    /// Route Request.
    pub const ROUTE_REQUEST: u8 = 9;
    /// Seqno Request.
    pub const SEQNO_REQUEST: u8 = 10;
    /// MAC (RFC 8967), in the packet trailer.
    pub const MAC: u8 = 16;
    /// Packet counter and index (RFC 8967).
    pub const PC: u8 = 17;
    /// Challenge Request (RFC 8967).
    pub const CHALLENGE_REQUEST: u8 = 18;
    /// Challenge Reply (RFC 8967).
    pub const CHALLENGE_REPLY: u8 = 19;
    /// Number of TLV types counted by [`super::Msg::kind`] (indexed by type).
    pub const COUNT: usize = 20;
}

mod sub {
    pub const PAD1: u8 = 0;
    pub const PADN: u8 = 1;
    pub const TIMESTAMP: u8 = 3;
    pub const MANDATORY: u8 = 0x80;
}

/// Address encodings.
mod ae {
    pub const WILDCARD: u8 = 0;
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const LINK_LOCAL: u8 = 3;
    pub const V4_VIA_V6: u8 = 4;
}

const FLAG_DEFAULT_PREFIX: u8 = 0x80;
const FLAG_ROUTER_ID: u8 = 0x40;
const HELLO_UNICAST: u16 = 0x8000;

/// One decoded message, with the packet's parser state applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Please acknowledge within `interval` centiseconds.
    AckReq {
        /// Echoed in the Ack.
        opaque: u16,
        /// Deadline in centiseconds.
        interval: u16,
    },
    /// Acknowledgment.
    Ack {
        /// From the request.
        opaque: u16,
    },
    /// Hello.
    Hello {
        /// Sent by unicast.
        unicast: bool,
        /// Hello seqno.
        seqno: u16,
        /// Interval to the next hello in centiseconds (0: none scheduled).
        interval: u16,
        /// RFC 9616 origin timestamp (µs, sender's clock).
        timestamp: Option<u32>,
    },
    /// I Heard You.
    Ihu {
        /// The sender's rxcost from the addressee.
        rxcost: u16,
        /// Interval to the next IHU in centiseconds.
        interval: u16,
        /// The addressee (None: wildcard).
        address: Option<IpAddr>,
        /// RFC 9616: origin timestamp of the last hello heard from the addressee, and when it
        /// was received (sender's clock).
        timestamp: Option<(u32, u32)>,
    },
    /// Update (router-id and next hop resolved from the packet state).
    Update {
        /// Destination; `None` for a wildcard retraction (AE 0).
        prefix: Option<IpNet>,
        /// Carried with AE 4 (IPv4 prefix, IPv6 next hop).
        v4_via_v6: bool,
        /// Interval to the next update in centiseconds.
        interval: u16,
        /// Route seqno.
        seqno: u16,
        /// Metric ([`INFINITY`]: retraction).
        metric: u16,
        /// Originator.
        router_id: RouterId,
        /// Next hop from a Next Hop TLV; `None` means the packet's source.
        next_hop: Option<IpAddr>,
    },
    /// Route Request (`None`: full dump).
    RouteRequest {
        /// Prefix asked for.
        prefix: Option<IpNet>,
    },
    /// Seqno Request.
    SeqnoRequest {
        /// Prefix.
        prefix: IpNet,
        /// Seqno asked for.
        seqno: u16,
        /// Remaining hops.
        hop_count: u8,
        /// Originator asked for.
        router_id: RouterId,
    },
    /// Packet counter and index of an authenticated packet (RFC 8967 §4.1).
    Pc {
        /// Increases with every packet the sender sends on the interface.
        counter: u32,
        /// Chosen afresh when the counter starts over (at most 32 bytes).
        index: Vec<u8>,
    },
    /// Challenge Request: prove freshness by echoing `nonce` (RFC 8967 §4.3).
    ChallengeRequest {
        /// At most 192 bytes.
        nonce: Vec<u8>,
    },
    /// Challenge Reply: the nonce of a Challenge Request.
    ChallengeReply {
        /// At most 192 bytes.
        nonce: Vec<u8>,
    },
}

/// Longest PC index and challenge nonce a TLV may carry (RFC 8967; babeld's limits).
pub const MAX_INDEX: usize = 32;
/// Longest challenge nonce.
pub const MAX_NONCE: usize = 192;

impl Msg {
    /// The TLV type this message is carried in.
    pub fn kind(&self) -> u8 {
        match self {
            Msg::AckReq { .. } => tlv::ACK_REQ,
            Msg::Ack { .. } => tlv::ACK,
            Msg::Hello { .. } => tlv::HELLO,
            Msg::Ihu { .. } => tlv::IHU,
            Msg::Update { .. } => tlv::UPDATE,
            Msg::RouteRequest { .. } => tlv::ROUTE_REQUEST,
            Msg::SeqnoRequest { .. } => tlv::SEQNO_REQUEST,
            Msg::Pc { .. } => tlv::PC,
            Msg::ChallengeRequest { .. } => tlv::CHALLENGE_REQUEST,
            Msg::ChallengeReply { .. } => tlv::CHALLENGE_REPLY,
        }
    }
}

/// Why a packet or a TLV was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the header or the body length.
    #[error("truncated packet")]
    Truncated,
    /// Not 42.
    #[error("bad magic")]
    Magic,
    /// Not version 2.
    #[error("unsupported version")]
    Version,
}

/// What [`parse`] skipped, for counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// TLVs of an unknown type.
    pub unknown_tlv: u32,
    /// TLVs with an unknown mandatory sub-TLV.
    pub mandatory: u32,
    /// Malformed TLVs (bad length, address encoding or prefix).
    pub malformed: u32,
    /// The packet ended inside a TLV.
    pub overrun: bool,
}

/// Decodes a packet (header, body; a trailer after the body is ignored).
///
/// Errors only for a bad header; bad TLVs are counted in [`Skipped`] and the rest of the
/// packet is used. Parser state follows RFC 8966 §4.5: a Router-Id, Next Hop or Update TLV
/// ignored for an unknown mandatory sub-TLV still updates it.
pub fn parse(bytes: &[u8]) -> Result<(Vec<Msg>, Skipped), ParseError> {
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    if bytes[0] != MAGIC {
        return Err(ParseError::Magic);
    }
    if bytes[1] != VERSION {
        return Err(ParseError::Version);
    }
    let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let body = bytes
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(ParseError::Truncated)?;
    let mut st = ParseState::default();
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    let mut i = 0;
    while i < body.len() {
        let t = body[i];
        if t == tlv::PAD1 {
            i += 1;
            continue;
        }
        let Some(&l) = body.get(i + 1) else {
            skipped.overrun = true;
            break;
        };
        let Some(v) = body.get(i + 2..i + 2 + usize::from(l)) else {
            skipped.overrun = true;
            break;
        };
        i += 2 + usize::from(l);
        match st.tlv(t, v, &mut out) {
            Ok(()) => {}
            Err(TlvError::Unknown) => skipped.unknown_tlv += 1,
            Err(TlvError::Mandatory) => skipped.mandatory += 1,
            Err(TlvError::Malformed) => skipped.malformed += 1,
        }
    }
    Ok((out, skipped))
}

enum TlvError {
    Unknown,
    Mandatory,
    Malformed,
}

#[derive(Default)]
struct ParseState {
    router_id: Option<RouterId>,
    nh4: Option<Ipv4Addr>,
    nh6: Option<Ipv6Addr>,
    /// Default prefixes (P flag), one per AE: 1, 4 (RFC 9229 keeps its own) and 2.
    default4: Option<[u8; 4]>,
    default4v6: Option<[u8; 4]>,
    default6: Option<[u8; 16]>,
}

fn u16_at(v: &[u8], i: usize) -> Result<u16, TlvError> {
    v.get(i..i + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(TlvError::Malformed)
}

fn u32_at(v: &[u8], i: usize) -> Option<u32> {
    v.get(i..i + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Walks sub-TLVs; returns the timestamp payload if any. Unknown mandatory → error.
fn sub_tlvs(v: &[u8]) -> Result<Option<&[u8]>, TlvError> {
    let mut ts = None;
    let mut i = 0;
    while i < v.len() {
        let t = v[i];
        if t == sub::PAD1 {
            i += 1;
            continue;
        }
        let l = usize::from(*v.get(i + 1).ok_or(TlvError::Malformed)?);
        let body = v.get(i + 2..i + 2 + l).ok_or(TlvError::Malformed)?;
        i += 2 + l;
        match t {
            sub::PADN => {}
            sub::TIMESTAMP => ts = Some(body),
            t if t & sub::MANDATORY != 0 => return Err(TlvError::Mandatory),
            _ => {}
        }
    }
    Ok(ts)
}

/// Decodes a network prefix of `plen` bits with `omitted` leading bytes from `default`;
/// returns the masked prefix and the number of bytes read from `v`.
fn prefix_bytes<const N: usize>(
    v: &[u8],
    plen: u8,
    omitted: u8,
    default: Option<&[u8; N]>,
) -> Result<([u8; N], usize), TlvError> {
    if usize::from(plen) > N * 8 {
        return Err(TlvError::Malformed);
    }
    let total = usize::from(plen).div_ceil(8);
    let omitted = usize::from(omitted);
    // RFC 8966 §4.6.9: the prefix field is ceil(plen/8) - omitted bytes long, so more
    // omitted bytes than that is malformed (babeld rejects it too), and so is compression
    // before a default prefix was set.
    if omitted > total {
        return Err(TlvError::Malformed);
    }
    let carried = total - omitted;
    let src = v.get(..carried).ok_or(TlvError::Malformed)?;
    let mut out = [0u8; N];
    if omitted > 0 {
        let d = default.ok_or(TlvError::Malformed)?;
        out[..omitted].copy_from_slice(&d[..omitted]);
    }
    out[omitted..total].copy_from_slice(src);
    mask::<N>(&mut out, plen);
    Ok((out, carried))
}

/// AE 3 prefix: `fe80::/64` is implied, the field holds ceil(plen/8) - 8 bytes, `plen` is at
/// least 64 and nothing may be omitted.
fn link_local_prefix(v: &[u8], plen: u8, omitted: u8) -> Result<(IpNet, usize), TlvError> {
    if !(64..=128).contains(&plen) || omitted != 0 {
        return Err(TlvError::Malformed);
    }
    let carried = usize::from(plen).div_ceil(8) - 8;
    let src = v.get(..carried).ok_or(TlvError::Malformed)?;
    let mut b = [0u8; 16];
    b[0] = 0xfe;
    b[1] = 0x80;
    b[8..8 + carried].copy_from_slice(src);
    mask::<16>(&mut b, plen);
    Ok((net6(b, plen)?, carried))
}

fn mask<const N: usize>(b: &mut [u8; N], plen: u8) {
    let plen = usize::from(plen);
    for (i, byte) in b.iter_mut().enumerate() {
        let bits = plen.saturating_sub(i * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xFFu8 << (8 - bits) };
    }
}

fn net4(b: [u8; 4], plen: u8) -> Result<IpNet, TlvError> {
    Ipv4Net::new(Ipv4Addr::from(b), plen)
        .map(IpNet::V4)
        .map_err(|_| TlvError::Malformed)
}

fn net6(b: [u8; 16], plen: u8) -> Result<IpNet, TlvError> {
    Ipv6Net::new(Ipv6Addr::from(b), plen)
        .map(IpNet::V6)
        .map_err(|_| TlvError::Malformed)
}

fn link_local(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..].copy_from_slice(b);
    Ipv6Addr::from(a)
}

/// RFC 8966 §4.6.7: all zeros and all ones are not router-ids.
fn valid_router_id(id: &RouterId) -> bool {
    *id != [0; 8] && *id != [0xFF; 8]
}

/// Reads a full (uncompressed) address with the given AE; returns it and its length.
fn address(ae_: u8, v: &[u8]) -> Result<(Option<IpAddr>, usize), TlvError> {
    match ae_ {
        ae::WILDCARD => Ok((None, 0)),
        ae::IPV4 => {
            let b: [u8; 4] = v
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(TlvError::Malformed)?;
            Ok((Some(IpAddr::V4(b.into())), 4))
        }
        ae::IPV6 | ae::V4_VIA_V6 => {
            let b: [u8; 16] = v
                .get(..16)
                .and_then(|b| b.try_into().ok())
                .ok_or(TlvError::Malformed)?;
            Ok((Some(IpAddr::V6(b.into())), 16))
        }
        ae::LINK_LOCAL => {
            let b = v.get(..8).ok_or(TlvError::Malformed)?;
            Ok((Some(IpAddr::V6(link_local(b))), 8))
        }
        _ => Err(TlvError::Malformed),
    }
}

impl ParseState {
    fn tlv(&mut self, t: u8, v: &[u8], out: &mut Vec<Msg>) -> Result<(), TlvError> {
        match t {
            tlv::PADN => Ok(()),
            tlv::ACK_REQ => {
                let opaque = u16_at(v, 2)?;
                let interval = u16_at(v, 4)?;
                sub_tlvs(&v[6..])?;
                out.push(Msg::AckReq { opaque, interval });
                Ok(())
            }
            tlv::ACK => {
                let opaque = u16_at(v, 0)?;
                sub_tlvs(&v[2..])?;
                out.push(Msg::Ack { opaque });
                Ok(())
            }
            tlv::HELLO => {
                let flags = u16_at(v, 0)?;
                let seqno = u16_at(v, 2)?;
                let interval = u16_at(v, 4)?;
                let ts = sub_tlvs(&v[6..])?;
                out.push(Msg::Hello {
                    unicast: flags & HELLO_UNICAST != 0,
                    seqno,
                    interval,
                    timestamp: ts.and_then(|t| u32_at(t, 0)),
                });
                Ok(())
            }
            tlv::IHU => {
                let ae_ = *v.first().ok_or(TlvError::Malformed)?;
                let rxcost = u16_at(v, 2)?;
                let interval = u16_at(v, 4)?;
                if ae_ == ae::V4_VIA_V6 {
                    return Err(TlvError::Malformed);
                }
                let (address, n) = address(ae_, &v[6..])?;
                let ts = sub_tlvs(&v[6 + n..])?;
                let timestamp = ts.and_then(|t| Some((u32_at(t, 0)?, u32_at(t, 4)?)));
                out.push(Msg::Ihu {
                    rxcost,
                    interval,
                    address,
                    timestamp,
                });
                Ok(())
            }
            tlv::ROUTER_ID => {
                let id: RouterId = v
                    .get(2..10)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(TlvError::Malformed)?;
                // The router-id applies even if a mandatory sub-TLV makes us ignore the
                // TLV (RFC 8966 §4.4). An invalid one drops the router-id so that following
                // updates with a finite metric are ignored.
                self.router_id = valid_router_id(&id).then_some(id);
                sub_tlvs(&v[10..])?;
                if self.router_id.is_none() {
                    return Err(TlvError::Malformed);
                }
                Ok(())
            }
            tlv::NEXT_HOP => {
                let ae_ = *v.first().ok_or(TlvError::Malformed)?;
                let (a, n) = address(ae_, v.get(2..).ok_or(TlvError::Malformed)?)?;
                // Applies even if a mandatory sub-TLV makes us ignore the TLV (§4.4).
                match (ae_, a) {
                    (ae::IPV4, Some(IpAddr::V4(a))) => self.nh4 = Some(a),
                    (ae::IPV6 | ae::LINK_LOCAL, Some(IpAddr::V6(a))) => self.nh6 = Some(a),
                    _ => return Err(TlvError::Malformed),
                }
                sub_tlvs(&v[2 + n..])?;
                Ok(())
            }
            tlv::UPDATE => self.update(v, out),
            tlv::ROUTE_REQUEST => {
                let ae_ = *v.first().ok_or(TlvError::Malformed)?;
                let plen = *v.get(1).ok_or(TlvError::Malformed)?;
                let (prefix, n) = request_prefix(ae_, plen, &v[2..])?;
                sub_tlvs(&v[2 + n..])?;
                out.push(Msg::RouteRequest { prefix });
                Ok(())
            }
            tlv::SEQNO_REQUEST => {
                let ae_ = *v.first().ok_or(TlvError::Malformed)?;
                let plen = *v.get(1).ok_or(TlvError::Malformed)?;
                let seqno = u16_at(v, 2)?;
                let hop_count = *v.get(4).ok_or(TlvError::Malformed)?;
                let router_id: RouterId = v
                    .get(6..14)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(TlvError::Malformed)?;
                let (prefix, n) = request_prefix(ae_, plen, &v[14..])?;
                let prefix = prefix.ok_or(TlvError::Malformed)?;
                sub_tlvs(&v[14 + n..])?;
                if hop_count == 0 {
                    return Err(TlvError::Malformed);
                }
                out.push(Msg::SeqnoRequest {
                    prefix,
                    seqno,
                    hop_count,
                    router_id,
                });
                Ok(())
            }
            tlv::PC => {
                let counter = u32_at(v, 0).ok_or(TlvError::Malformed)?;
                let index = &v[4..];
                if index.len() > MAX_INDEX {
                    return Err(TlvError::Malformed);
                }
                out.push(Msg::Pc {
                    counter,
                    index: index.to_vec(),
                });
                Ok(())
            }
            tlv::CHALLENGE_REQUEST | tlv::CHALLENGE_REPLY => {
                if v.len() > MAX_NONCE {
                    return Err(TlvError::Malformed);
                }
                let nonce = v.to_vec();
                out.push(if t == tlv::CHALLENGE_REQUEST {
                    Msg::ChallengeRequest { nonce }
                } else {
                    Msg::ChallengeReply { nonce }
                });
                Ok(())
            }
            _ => Err(TlvError::Unknown),
        }
    }

    fn update(&mut self, v: &[u8], out: &mut Vec<Msg>) -> Result<(), TlvError> {
        if v.len() < 10 {
            return Err(TlvError::Malformed);
        }
        let (ae_, flags, plen, omitted) = (v[0], v[1], v[2], v[3]);
        let interval = u16_at(v, 4)?;
        let seqno = u16_at(v, 6)?;
        let metric = u16_at(v, 8)?;
        let rest = &v[10..];
        let (prefix, n) = match ae_ {
            ae::WILDCARD => {
                // §4.6.9: only as a retraction, with Plen and Omitted 0.
                if metric != INFINITY || plen != 0 || omitted != 0 {
                    return Err(TlvError::Malformed);
                }
                (None, 0)
            }
            ae::IPV4 | ae::V4_VIA_V6 => {
                let default = if ae_ == ae::IPV4 {
                    &mut self.default4
                } else {
                    &mut self.default4v6
                };
                let (b, n) = prefix_bytes::<4>(rest, plen, omitted, default.as_ref())?;
                if flags & FLAG_DEFAULT_PREFIX != 0 {
                    *default = Some(b);
                }
                (Some(net4(b, plen)?), n)
            }
            ae::IPV6 => {
                let (b, n) = prefix_bytes::<16>(rest, plen, omitted, self.default6.as_ref())?;
                if flags & FLAG_DEFAULT_PREFIX != 0 {
                    self.default6 = Some(b);
                }
                (Some(net6(b, plen)?), n)
            }
            // No default prefix for AE 3 (Omitted must be 0).
            ae::LINK_LOCAL => {
                let (p, n) = link_local_prefix(rest, plen, omitted)?;
                (Some(p), n)
            }
            _ => return Err(TlvError::Malformed),
        };
        if let (Some(p), true) = (prefix, flags & FLAG_ROUTER_ID != 0) {
            // §4.6.9 R flag: the last 8 bytes of the address, or an IPv4 address after 4
            // zero bytes.
            let mut id = [0; 8];
            match p {
                IpNet::V4(n) => id[4..].copy_from_slice(&n.addr().octets()),
                IpNet::V6(n) => id.copy_from_slice(&n.addr().octets()[8..]),
            }
            // An invalid one drops the router-id: a retraction still goes through.
            self.router_id = valid_router_id(&id).then_some(id);
        }
        sub_tlvs(&rest[n..])?;
        let next_hop = match (prefix, ae_) {
            (None, _) => None,
            (Some(_), ae::V4_VIA_V6) => self.nh6.map(IpAddr::V6),
            (Some(IpNet::V4(_)), _) => self.nh4.map(IpAddr::V4),
            (Some(IpNet::V6(_)), _) => self.nh6.map(IpAddr::V6),
        };
        // An IPv4 route (AE 1) without an IPv4 next hop would go via the packet's source,
        // which is IPv6 here: §4.6.9 says to ignore it (AE 4 exists for that).
        if ae_ == ae::IPV4 && next_hop.is_none() && metric != INFINITY {
            return Err(TlvError::Malformed);
        }
        // The router-id matters for routes only (§4.6.9): retractions need none, and a
        // wildcard retraction has none.
        let router_id = match (prefix, self.router_id) {
            (None, _) => [0; 8],
            (Some(_), Some(id)) => id,
            (Some(_), None) if metric == INFINITY => [0; 8],
            (Some(_), None) => return Err(TlvError::Malformed),
        };
        out.push(Msg::Update {
            prefix,
            v4_via_v6: ae_ == ae::V4_VIA_V6,
            interval,
            seqno,
            metric,
            router_id,
            next_hop,
        });
        Ok(())
    }
}

/// The prefix of a Route or Seqno Request (never compressed).
fn request_prefix(ae_: u8, plen: u8, v: &[u8]) -> Result<(Option<IpNet>, usize), TlvError> {
    match ae_ {
        ae::WILDCARD if plen == 0 => Ok((None, 0)),
        // AE 4 in a request names an IPv4 prefix, as AE 1 does (babeld reads it so too).
        ae::IPV4 | ae::V4_VIA_V6 => {
            let (b, n) = prefix_bytes::<4>(v, plen, 0, None)?;
            Ok((Some(net4(b, plen)?), n))
        }
        ae::IPV6 => {
            let (b, n) = prefix_bytes::<16>(v, plen, 0, None)?;
            Ok((Some(net6(b, plen)?), n))
        }
        ae::LINK_LOCAL => {
            let (p, n) = link_local_prefix(v, plen, 0)?;
            Ok((Some(p), n))
        }
        _ => Err(TlvError::Malformed),
    }
}

/// Builds one packet of at most `max` bytes, compressing as it goes.
///
/// What the parser would make of the packet so far is tracked, so that
/// `parse(finish()) == ` the messages `push` accepted, exactly.
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
    max: usize,
    st: WriterState,
}

/// The receiver's parser state after the bytes written so far.
#[derive(Debug, Default, Clone, Copy)]
struct WriterState {
    router_id: Option<RouterId>,
    nh4: Option<Ipv4Addr>,
    nh6: Option<Ipv6Addr>,
    default4: Option<[u8; 4]>,
    default4v6: Option<[u8; 4]>,
    default6: Option<[u8; 16]>,
}

impl Writer {
    /// An empty packet of at most `max` bytes (header included; at least 36, at most 65535).
    pub fn new(max: usize) -> Self {
        let mut buf = Vec::with_capacity(max.min(1 << 16));
        buf.extend_from_slice(&[MAGIC, VERSION, 0, 0]);
        Self {
            buf,
            max: max.clamp(HEADER_LEN + 32, usize::from(u16::MAX)),
            st: WriterState::default(),
        }
    }

    /// No message yet.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Appends `msg`; `false` (and nothing written) when it does not fit, or when this packet
    /// cannot carry it so that it parses back equal:
    ///
    /// - an update whose `next_hop` is `None` (the packet's source) after one of the same
    ///   family with a next hop (a fresh packet takes it);
    /// - never representable: a prefix with host bits set, an update whose next hop is of the
    ///   wrong family (IPv4 for an IPv6 prefix or for `v4_via_v6`, IPv6 for an AE 1 IPv4
    ///   prefix), `v4_via_v6` on an IPv6 prefix, an IPv4 route (finite metric, not
    ///   `v4_via_v6`) without an IPv4 next hop, a route with an all-zeros or all-ones
    ///   router-id (a retraction may carry `[0; 8]`, "none"), a wildcard retraction that is
    ///   not `metric: INFINITY, router_id: [0; 8], next_hop: None, v4_via_v6: false`, and a
    ///   Seqno Request with `hop_count` 0.
    pub fn push(&mut self, msg: &Msg) -> bool {
        if !self.representable(msg) {
            return false;
        }
        let mark = self.buf.len();
        let saved = self.st;
        self.encode(msg);
        if self.buf.len() > self.max {
            self.buf.truncate(mark);
            self.st = saved;
            return false;
        }
        true
    }

    /// The finished packet.
    pub fn finish(mut self) -> Vec<u8> {
        let body = u16::try_from(self.buf.len() - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
        self.buf
    }

    fn representable(&self, msg: &Msg) -> bool {
        let canonical = |p: &IpNet| p.trunc() == *p;
        match *msg {
            Msg::Update {
                prefix: None,
                v4_via_v6,
                metric,
                router_id,
                next_hop,
                ..
            } => metric == INFINITY && router_id == [0; 8] && next_hop.is_none() && !v4_via_v6,
            Msg::Update {
                prefix: Some(p),
                v4_via_v6,
                metric,
                router_id,
                next_hop,
                ..
            } => {
                let id_ok =
                    valid_router_id(&router_id) || (metric == INFINITY && router_id == [0; 8]);
                let nh_ok = match (p, v4_via_v6, next_hop) {
                    (IpNet::V6(_), true, _) => false,
                    // AE 1: the IPv4 next hop.
                    (IpNet::V4(_), false, None) => metric == INFINITY && self.st.nh4.is_none(),
                    (IpNet::V4(_), false, Some(nh)) => nh.is_ipv4(),
                    // AE 2 and AE 4: the IPv6 next hop.
                    (_, _, None) => self.st.nh6.is_none(),
                    (_, _, Some(nh)) => nh.is_ipv6(),
                };
                canonical(&p) && id_ok && nh_ok
            }
            Msg::RouteRequest { prefix } => prefix.as_ref().is_none_or(canonical),
            Msg::SeqnoRequest {
                prefix, hop_count, ..
            } => canonical(&prefix) && hop_count != 0,
            Msg::Pc { ref index, .. } => index.len() <= MAX_INDEX,
            Msg::ChallengeRequest { ref nonce } | Msg::ChallengeReply { ref nonce } => {
                nonce.len() <= MAX_NONCE
            }
            Msg::AckReq { .. } | Msg::Ack { .. } | Msg::Hello { .. } | Msg::Ihu { .. } => true,
        }
    }

    fn tlv(&mut self, t: u8, f: impl FnOnce(&mut Vec<u8>)) {
        self.buf.push(t);
        let at = self.buf.len();
        self.buf.push(0);
        f(&mut self.buf);
        let len = self.buf.len() - at - 1;
        // Every TLV we emit is far below 256 bytes.
        self.buf[at] = u8::try_from(len).unwrap_or(u8::MAX);
    }

    fn encode(&mut self, msg: &Msg) {
        match *msg {
            Msg::AckReq { opaque, interval } => self.tlv(tlv::ACK_REQ, |b| {
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&opaque.to_be_bytes());
                b.extend_from_slice(&interval.to_be_bytes());
            }),
            Msg::Ack { opaque } => {
                self.tlv(tlv::ACK, |b| b.extend_from_slice(&opaque.to_be_bytes()))
            }
            Msg::Hello {
                unicast,
                seqno,
                interval,
                timestamp,
            } => self.tlv(tlv::HELLO, |b| {
                let flags = if unicast { HELLO_UNICAST } else { 0 };
                b.extend_from_slice(&flags.to_be_bytes());
                b.extend_from_slice(&seqno.to_be_bytes());
                b.extend_from_slice(&interval.to_be_bytes());
                if let Some(t) = timestamp {
                    b.extend_from_slice(&[sub::TIMESTAMP, 4]);
                    b.extend_from_slice(&t.to_be_bytes());
                }
            }),
            Msg::Ihu {
                rxcost,
                interval,
                address,
                timestamp,
            } => self.tlv(tlv::IHU, |b| {
                match address {
                    None => b.extend_from_slice(&[ae::WILDCARD, 0]),
                    Some(IpAddr::V4(_)) => b.extend_from_slice(&[ae::IPV4, 0]),
                    Some(IpAddr::V6(a)) if is_link_local(a) => {
                        b.extend_from_slice(&[ae::LINK_LOCAL, 0])
                    }
                    Some(IpAddr::V6(_)) => b.extend_from_slice(&[ae::IPV6, 0]),
                }
                b.extend_from_slice(&rxcost.to_be_bytes());
                b.extend_from_slice(&interval.to_be_bytes());
                match address {
                    None => {}
                    Some(IpAddr::V4(a)) => b.extend_from_slice(&a.octets()),
                    Some(IpAddr::V6(a)) if is_link_local(a) => {
                        b.extend_from_slice(&a.octets()[8..])
                    }
                    Some(IpAddr::V6(a)) => b.extend_from_slice(&a.octets()),
                }
                if let Some((o, r)) = timestamp {
                    b.extend_from_slice(&[sub::TIMESTAMP, 8]);
                    b.extend_from_slice(&o.to_be_bytes());
                    b.extend_from_slice(&r.to_be_bytes());
                }
            }),
            Msg::Update {
                prefix,
                v4_via_v6,
                interval,
                seqno,
                metric,
                router_id,
                next_hop,
            } => self.update(
                prefix, v4_via_v6, interval, seqno, metric, router_id, next_hop,
            ),
            Msg::RouteRequest { prefix } => self.tlv(tlv::ROUTE_REQUEST, |b| match prefix {
                None => b.extend_from_slice(&[ae::WILDCARD, 0]),
                Some(p) => {
                    b.extend_from_slice(&[ae_of(&p), p.prefix_len()]);
                    b.extend_from_slice(&net_bytes(&p)[..usize::from(p.prefix_len()).div_ceil(8)]);
                }
            }),
            Msg::SeqnoRequest {
                prefix,
                seqno,
                hop_count,
                router_id,
            } => self.tlv(tlv::SEQNO_REQUEST, |b| {
                b.extend_from_slice(&[ae_of(&prefix), prefix.prefix_len()]);
                b.extend_from_slice(&seqno.to_be_bytes());
                b.extend_from_slice(&[hop_count, 0]);
                b.extend_from_slice(&router_id);
                b.extend_from_slice(
                    &net_bytes(&prefix)[..usize::from(prefix.prefix_len()).div_ceil(8)],
                );
            }),
            Msg::Pc { counter, ref index } => self.tlv(tlv::PC, |b| {
                b.extend_from_slice(&counter.to_be_bytes());
                b.extend_from_slice(index);
            }),
            Msg::ChallengeRequest { ref nonce } => {
                self.tlv(tlv::CHALLENGE_REQUEST, |b| b.extend_from_slice(nonce))
            }
            Msg::ChallengeReply { ref nonce } => {
                self.tlv(tlv::CHALLENGE_REPLY, |b| b.extend_from_slice(nonce))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        prefix: Option<IpNet>,
        v4_via_v6: bool,
        interval: u16,
        seqno: u16,
        metric: u16,
        router_id: RouterId,
        next_hop: Option<IpAddr>,
    ) {
        let Some(p) = prefix else {
            self.tlv(tlv::UPDATE, |b| {
                b.extend_from_slice(&[ae::WILDCARD, 0, 0, 0]);
                b.extend_from_slice(&interval.to_be_bytes());
                b.extend_from_slice(&seqno.to_be_bytes());
                b.extend_from_slice(&metric.to_be_bytes());
            });
            return;
        };
        if router_id == [0; 8] {
            // A retraction without a router-id: clear the receiver's with an invalid one.
            if self.st.router_id.is_some() {
                self.tlv(tlv::ROUTER_ID, |b| b.extend_from_slice(&[0; 10]));
                self.st.router_id = None;
            }
        } else if self.st.router_id != Some(router_id) {
            self.tlv(tlv::ROUTER_ID, |b| {
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&router_id);
            });
            self.st.router_id = Some(router_id);
        }
        match next_hop {
            Some(IpAddr::V4(a)) if self.st.nh4 != Some(a) => {
                self.tlv(tlv::NEXT_HOP, |b| {
                    b.extend_from_slice(&[ae::IPV4, 0]);
                    b.extend_from_slice(&a.octets());
                });
                self.st.nh4 = Some(a);
            }
            Some(IpAddr::V6(a)) if self.st.nh6 != Some(a) => {
                self.tlv(tlv::NEXT_HOP, |b| {
                    if is_link_local(a) {
                        b.extend_from_slice(&[ae::LINK_LOCAL, 0]);
                        b.extend_from_slice(&a.octets()[8..]);
                    } else {
                        b.extend_from_slice(&[ae::IPV6, 0]);
                        b.extend_from_slice(&a.octets());
                    }
                });
                self.st.nh6 = Some(a);
            }
            _ => {}
        }
        let plen = p.prefix_len();
        let bytes = net_bytes(&p);
        let total = usize::from(plen).div_ceil(8);
        let (ae_, default): (u8, Option<&[u8]>) = match p {
            IpNet::V4(_) if v4_via_v6 => {
                (ae::V4_VIA_V6, self.st.default4v6.as_ref().map(|d| &d[..]))
            }
            IpNet::V4(_) => (ae::IPV4, self.st.default4.as_ref().map(|d| &d[..])),
            IpNet::V6(_) => (ae::IPV6, self.st.default6.as_ref().map(|d| &d[..])),
        };
        let omitted = common(default, &bytes[..total]);
        self.tlv(tlv::UPDATE, |b| {
            // `omitted <= total <= 16`.
            b.extend_from_slice(&[ae_, FLAG_DEFAULT_PREFIX, plen, omitted as u8]);
            b.extend_from_slice(&interval.to_be_bytes());
            b.extend_from_slice(&seqno.to_be_bytes());
            b.extend_from_slice(&metric.to_be_bytes());
            b.extend_from_slice(&bytes[omitted..total]);
        });
        let mut d4 = [0; 4];
        d4.copy_from_slice(&bytes[..4]);
        match ae_ {
            ae::V4_VIA_V6 => self.st.default4v6 = Some(d4),
            ae::IPV4 => self.st.default4 = Some(d4),
            _ => self.st.default6 = Some(bytes),
        }
    }
}

/// Leading bytes shared with the default prefix (compression).
fn common(default: Option<&[u8]>, bytes: &[u8]) -> usize {
    let Some(d) = default else { return 0 };
    d.iter().zip(bytes).take_while(|(a, b)| a == b).count()
}

fn ae_of(p: &IpNet) -> u8 {
    match p {
        IpNet::V4(_) => ae::IPV4,
        IpNet::V6(_) => ae::IPV6,
    }
}

/// The prefix's network bytes, zero-padded to 16.
fn net_bytes(p: &IpNet) -> [u8; 16] {
    let mut b = [0u8; 16];
    match p.trunc() {
        IpNet::V4(n) => b[..4].copy_from_slice(&n.network().octets()),
        IpNet::V6(n) => b = n.network().octets(),
    }
    b
}

/// `fe80::/64`, the only link-local prefix AE 3 can carry.
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[..4] == [0xfe80, 0, 0, 0]
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod packet_tests;
