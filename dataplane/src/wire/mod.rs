//! Zero-copy views of the headers the data plane touches: IPv4, IPv6, UDP, ICMP/ICMPv6,
//! TCP (for the MSS option) and WireGuard messages, in the style of smoltcp's `wire`:
//! views that check lengths before they read, and parsers that never panic on any input.
//!
//! The fixed headers are `#[repr(C)]` structs ([`headers`]) that zerocopy lays over the
//! buffer; the functions here are what the forwarding path needs from them.

pub mod checksum;
pub mod ether;
pub mod headers;
pub mod wg;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use headers::{view, view_mut, IcmpHeader, Ipv4Header, Ipv6Header, TcpHeader};
use zerocopy::IntoBytes;

/// IP protocol numbers used here.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Babel's UDP port (RFC 8966 §5).
pub const BABEL_PORT: u16 = 6696;
/// Babel's link-local multicast group, ff02::1:6 (RFC 8966 §5).
pub const BABEL_GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 6);

/// ICMP (IPv4) types and codes used here (RFC 792, RFC 1812).
pub mod icmpv4 {
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (deprecated, still an error message).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect.
    pub const REDIRECT: u8 = 5;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;

    /// Destination unreachable: network unreachable.
    pub const CODE_NET_UNREACHABLE: u8 = 0;
    /// Destination unreachable: fragmentation needed and DF set (carries the next-hop MTU).
    pub const CODE_FRAG_NEEDED: u8 = 4;
    /// Destination unreachable: communication administratively prohibited (RFC 1812).
    pub const CODE_ADMIN_PROHIBITED: u8 = 13;
    /// Time exceeded: TTL exceeded in transit.
    pub const CODE_TTL_EXCEEDED: u8 = 0;
}

/// ICMPv6 types and codes used here (RFC 4443).
pub mod icmpv6 {
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big (carries the next-hop MTU).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// The first informational type: types below it are errors.
    pub const INFORMATIONAL: u8 = 128;

    /// Destination unreachable: no route to destination.
    pub const CODE_NO_ROUTE: u8 = 0;
    /// Destination unreachable: communication with destination administratively prohibited.
    pub const CODE_ADMIN_PROHIBITED: u8 = 1;
    /// Time exceeded: hop limit exceeded in transit.
    pub const CODE_HOP_LIMIT_EXCEEDED: u8 = 0;
}

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the header or the length it claims.
    #[error("truncated packet")]
    Truncated,
    /// IP version is neither 4 nor 6.
    #[error("unknown IP version")]
    BadVersion,
    /// A header field is inconsistent (IHL, total length).
    #[error("malformed header")]
    Malformed,
}

/// What the forwarding path needs to know about an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpMeta {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 next header (first header after the fixed one).
    pub proto: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Length of the IP packet as its header says (may be shorter than the buffer, which
    /// WireGuard pads).
    pub total_len: usize,
    /// Length of the IP header (IPv4 with options; 40 for IPv6).
    pub header_len: usize,
}

/// Parse the IP header at the start of `pkt`.
#[inline]
pub fn parse_ip(pkt: &[u8]) -> Result<IpMeta, WireError> {
    match pkt.first().ok_or(WireError::Truncated)? >> 4 {
        4 => {
            let h: &Ipv4Header = view(pkt)?;
            let ihl = usize::from(h.version_ihl & 0x0f) * 4;
            let total = usize::from(h.total_len.get());
            if ihl < 20 || total < ihl {
                return Err(WireError::Malformed);
            }
            if pkt.len() < total {
                return Err(WireError::Truncated);
            }
            Ok(IpMeta {
                src: IpAddr::V4(Ipv4Addr::from(h.src)),
                dst: IpAddr::V4(Ipv4Addr::from(h.dst)),
                proto: h.protocol,
                ttl: h.ttl,
                total_len: total,
                header_len: ihl,
            })
        }
        6 => {
            let h: &Ipv6Header = view(pkt)?;
            let total = 40 + usize::from(h.payload_len.get());
            if pkt.len() < total {
                return Err(WireError::Truncated);
            }
            Ok(IpMeta {
                src: IpAddr::V6(Ipv6Addr::from(h.src)),
                dst: IpAddr::V6(Ipv6Addr::from(h.dst)),
                proto: h.next_header,
                ttl: h.hop_limit,
                total_len: total,
                header_len: 40,
            })
        }
        _ => Err(WireError::BadVersion),
    }
}

/// Decrement the TTL / hop limit in place (fixing the IPv4 checksum incrementally).
/// Returns `false`, leaving the packet untouched, when the packet must not be forwarded
/// because its TTL is 0 or 1 (time exceeded) or it is not IP.
#[inline]
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(h) = view_mut::<Ipv4Header>(pkt) else {
                return false;
            };
            if h.ttl <= 1 {
                return false;
            }
            // TTL is the high byte of the 16-bit word it shares with the protocol.
            let old = u16::from_be_bytes([h.ttl, h.protocol]);
            h.ttl -= 1;
            let new = u16::from_be_bytes([h.ttl, h.protocol]);
            h.checksum.set(checksum::update(h.checksum.get(), old, new));
            true
        }
        Some(6) => {
            let Ok(h) = view_mut::<Ipv6Header>(pkt) else {
                return false;
            };
            if h.hop_limit <= 1 {
                return false;
            }
            h.hop_limit -= 1;
            true
        }
        _ => false,
    }
}

/// Complete a TCP or UDP checksum that the sender left to "hardware": a packet that a local
/// stack sent over a virtual link (veth, a container's interface) with checksum offload
/// carries only the pseudo-header's sum in its checksum field (`CHECKSUM_PARTIAL`), which the
/// kernel completes when it forwards the packet to a real device, or to a tunnel. A frame
/// taken from such a link by an XDP socket has no such mark, so the mark is read from the
/// packet: a checksum field that equals the pseudo-header's sum and does not verify is
/// completed. A corrupted packet matches that by chance once in 65,536; one with a
/// correct checksum is never changed. Returns whether the field was rewritten.
pub fn complete_partial_checksum(pkt: &mut [u8], meta: &IpMeta) -> bool {
    let at = match meta.proto {
        6 => 16,
        17 => 6,
        _ => return false,
    };
    if meta.header_len + at + 2 > meta.total_len || meta.total_len > pkt.len() {
        return false;
    }
    // An IPv4 fragment's checksum covers the whole datagram: nothing to check here.
    if pkt[0] >> 4 == 4 && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return false;
    }
    let l4 = &mut pkt[meta.header_len..meta.total_len];
    let field = u16::from_be_bytes([l4[at], l4[at + 1]]);
    let pseudo = checksum::pseudo_header(meta.src, meta.dst, meta.proto, l4.len());
    if field != !checksum::finish(pseudo) || checksum::finish(checksum::sum(pseudo, l4)) == 0 {
        return false;
    }
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let mut c = checksum::finish(checksum::sum(pseudo, l4));
    if meta.proto == 17 && c == 0 {
        c = 0xffff; // UDP: zero means "no checksum"
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Whether a router may fragment `pkt`: IPv4 without DF (IPv6 is never fragmented on the
/// way). See [`fragment_ipv4`].
pub fn may_fragment(pkt: &[u8]) -> bool {
    pkt.len() >= 20 && pkt[0] >> 4 == 4 && pkt[6] & 0x40 == 0
}

/// ICMP / ICMPv6 errors the data plane generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// TTL / hop limit exceeded in transit.
    TimeExceeded,
    /// No route to the destination (network unreachable / ICMPv6 no route).
    NoRoute,
    /// Administratively prohibited.
    Prohibited,
    /// Packet too big for the next hop: IPv4 fragmentation needed (DF set) or ICMPv6
    /// packet too big, carrying the next-hop MTU.
    PacketTooBig {
        /// MTU of the next hop.
        mtu: u16,
    },
}

/// Is this ICMP (IPv4) type an error message (RFC 1812 4.3.2.7: no error about an error)?
fn is_icmpv4_error(ty: u8) -> bool {
    use icmpv4::{DEST_UNREACHABLE, PARAMETER_PROBLEM, REDIRECT, SOURCE_QUENCH, TIME_EXCEEDED};
    matches!(
        ty,
        DEST_UNREACHABLE | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM
    )
}

/// Is this address one an ICMP error must never be sent to (RFC 1812 4.3.2.7, RFC 4443 2.4)?
fn bad_error_target(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback()
        }
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast() || a.is_loopback(),
    }
}

/// Build an ICMP (for IPv4) or ICMPv6 (for IPv6) error about `offending` into `out`, sent
/// from `from`, addressed to the offending packet's source. Returns the length written, or
/// `None` where RFC 1812 / RFC 4443 forbid an error (offending packet is itself an ICMP
/// error, multicast/broadcast, a non-first fragment, unparsable), `from` is of the other
/// family, or `out` is too small. ([`IcmpReply::about`] then [`IcmpReply::write`].)
pub fn icmp_error(
    kind: IcmpError,
    offending: &[u8],
    from: IpAddr,
    out: &mut [u8],
) -> Option<usize> {
    IcmpReply::about(kind, offending, from)?.write(offending, out)
}

/// An ICMP / ICMPv6 error found due about a packet, not written yet: between the two, the
/// forwarding path asks its rate limit, which a packet that gets no error (an error about an
/// error, a multicast destination) must not spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReply {
    ty: u8,
    code: u8,
    rest: [u8; 4],
    src: IpAddr,
    dst: IpAddr,
    /// Bytes of the offending packet quoted.
    quote: usize,
}

impl IcmpReply {
    /// The error of `kind` due about `offending`, sent from `from`; `None` where RFC 1812 /
    /// RFC 4443 forbid one (see [`icmp_error`]) or `from` is of the other family.
    pub fn about(kind: IcmpError, offending: &[u8], from: IpAddr) -> Option<Self> {
        let meta = parse_ip(offending).ok()?;
        if bad_error_target(meta.src) {
            return None;
        }
        let payload = &offending[meta.header_len..meta.total_len];
        match (meta.src, from) {
            (IpAddr::V4(_), IpAddr::V4(_)) => {
                let h: &Ipv4Header = view(offending).ok()?;
                // Not for non-first fragments, not for ICMP errors, not to multicast traffic.
                if h.flags_frag.get() & 0x1fff != 0
                    || meta.dst.is_multicast()
                    || Ipv4Addr::from(h.dst).is_broadcast()
                {
                    return None;
                }
                if meta.proto == proto::ICMP && payload.first().is_some_and(|&t| is_icmpv4_error(t))
                {
                    return None;
                }
                let (ty, code, rest) = match kind {
                    IcmpError::TimeExceeded => {
                        (icmpv4::TIME_EXCEEDED, icmpv4::CODE_TTL_EXCEEDED, [0; 4])
                    }
                    IcmpError::NoRoute => (
                        icmpv4::DEST_UNREACHABLE,
                        icmpv4::CODE_NET_UNREACHABLE,
                        [0; 4],
                    ),
                    IcmpError::Prohibited => (
                        icmpv4::DEST_UNREACHABLE,
                        icmpv4::CODE_ADMIN_PROHIBITED,
                        [0; 4],
                    ),
                    IcmpError::PacketTooBig { mtu } => {
                        let m = mtu.to_be_bytes();
                        (
                            icmpv4::DEST_UNREACHABLE,
                            icmpv4::CODE_FRAG_NEEDED,
                            [0, 0, m[0], m[1]],
                        )
                    }
                };
                Some(Self {
                    ty,
                    code,
                    rest,
                    src: from,
                    dst: meta.src,
                    // RFC 1812 4.3.2.3: as much of the original as fits in 576 bytes.
                    quote: meta.total_len.min(576 - 28),
                })
            }
            (IpAddr::V6(_), IpAddr::V6(_)) => {
                let too_big = matches!(kind, IcmpError::PacketTooBig { .. });
                if meta.dst.is_multicast() && !too_big {
                    return None;
                }
                if meta.proto == proto::ICMPV6
                    && payload.first().is_some_and(|&t| t < icmpv6::INFORMATIONAL)
                {
                    return None;
                }
                let (ty, code, rest) = match kind {
                    IcmpError::TimeExceeded => (
                        icmpv6::TIME_EXCEEDED,
                        icmpv6::CODE_HOP_LIMIT_EXCEEDED,
                        [0; 4],
                    ),
                    IcmpError::NoRoute => (icmpv6::DEST_UNREACHABLE, icmpv6::CODE_NO_ROUTE, [0; 4]),
                    IcmpError::Prohibited => (
                        icmpv6::DEST_UNREACHABLE,
                        icmpv6::CODE_ADMIN_PROHIBITED,
                        [0; 4],
                    ),
                    IcmpError::PacketTooBig { mtu } => {
                        (icmpv6::PACKET_TOO_BIG, 0, u32::from(mtu).to_be_bytes())
                    }
                };
                Some(Self {
                    ty,
                    code,
                    rest,
                    src: from,
                    dst: meta.src,
                    // RFC 4443 2.4 (c): as much as fits in the minimum MTU.
                    quote: meta.total_len.min(1280 - 48),
                })
            }
            _ => None,
        }
    }

    /// Write the error into `out`, quoting `offending` (the packet it was found due about).
    /// Returns its length, or `None` when `out` is too small (or `offending` shorter than
    /// the quote).
    pub fn write(&self, offending: &[u8], out: &mut [u8]) -> Option<usize> {
        let quoted = offending.get(..self.quote)?;
        let icmp = IcmpHeader {
            ty: self.ty,
            code: self.code,
            checksum: 0.into(),
            rest: self.rest,
        };
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let len = 28 + self.quote;
                let out = out.get_mut(..len)?;
                let ip = Ipv4Header {
                    version_ihl: 0x45,
                    tos: 0,
                    total_len: (len as u16).into(),
                    id: 0.into(),
                    flags_frag: 0.into(),
                    ttl: 64,
                    protocol: proto::ICMP,
                    checksum: 0.into(),
                    src: src.octets(),
                    dst: dst.octets(),
                };
                out[..20].copy_from_slice(ip.as_bytes());
                let c = checksum::checksum(&out[..20]);
                out[10..12].copy_from_slice(&c.to_be_bytes());
                out[20..28].copy_from_slice(icmp.as_bytes());
                out[28..].copy_from_slice(quoted);
                let c = checksum::checksum(&out[20..]);
                out[22..24].copy_from_slice(&c.to_be_bytes());
                Some(len)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let len = 48 + self.quote;
                let out = out.get_mut(..len)?;
                let ip = Ipv6Header {
                    version_tc_flow: (6u32 << 28).into(),
                    payload_len: ((len - 40) as u16).into(),
                    next_header: proto::ICMPV6,
                    hop_limit: 64,
                    src: src.octets(),
                    dst: dst.octets(),
                };
                out[..40].copy_from_slice(ip.as_bytes());
                out[40..48].copy_from_slice(icmp.as_bytes());
                out[48..].copy_from_slice(quoted);
                let s = checksum::pseudo_header(self.src, self.dst, proto::ICMPV6, len - 40);
                let c = checksum::finish(checksum::sum(s, &out[40..]));
                out[42..44].copy_from_slice(&c.to_be_bytes());
                Some(len)
            }
            _ => None,
        }
    }
}

/// The smallest MTU of an IPv4 link (RFC 791): the longest header (60 bytes) and 8 bytes
/// of data go through unfragmented.
pub const IPV4_MIN_MTU: usize = 68;

/// Why [`fragment_ipv4`] refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// Not IPv4, shorter than its header says, or its header is malformed (IHL, total
    /// length, an option's length, the header checksum, a fragment offset past 65,528).
    #[error("not a well-formed IPv4 packet")]
    Malformed,
    /// Longer than the MTU with DF set: the sender wants an ICMP error, not fragments.
    #[error("longer than the MTU with don't-fragment set")]
    DontFragment,
    /// The MTU is below [`IPV4_MIN_MTU`].
    #[error("MTU below 68")]
    MtuTooSmall,
    /// The scratch buffer cannot hold a fragment.
    #[error("scratch buffer smaller than a fragment")]
    BufferTooSmall,
}

/// IPv4 flags: don't fragment.
const IPV4_DF: u16 = 0x4000;
/// IPv4 flags: more fragments.
const IPV4_MF: u16 = 0x2000;
/// IPv4: the fragment offset's bits (in 8-byte units).
const IPV4_OFFSET: u16 = 0x1fff;

/// Fragment the IPv4 packet at the start of `pkt` (bytes past its total length, such as
/// WireGuard's padding, are ignored) into fragments of at most `mtu` bytes, as a router does
/// (RFC 791 3.2, RFC 1812 5.2.6): each is written into `scratch` and handed to `emit`, in
/// order. Returns how many there were. No allocation.
///
/// A packet no longer than `mtu` is emitted whole and unchanged (DF or not). A longer one
/// must not have DF set. The first fragment keeps the header with every option; the others
/// carry only the options whose "copied" flag (type bit 0x80) is set, followed by
/// end-of-options padding (no-operations are not copied). Payload offsets are multiples of
/// 8; an input that is itself a fragment keeps its place: its offset is added, and its last
/// fragment carries the input's MF. Each fragment's total length and header checksum are
/// set; identification, TOS, TTL, protocol, addresses and the reserved flag are kept.
///
/// The header checksum is checked first: fragments get a new one, which must not make a
/// corrupted header look valid. Never panics.
pub fn fragment_ipv4(
    pkt: &[u8],
    mtu: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, FragmentError> {
    if mtu < IPV4_MIN_MTU {
        return Err(FragmentError::MtuTooSmall);
    }
    if pkt.first().map(|b| b >> 4) != Some(4) {
        return Err(FragmentError::Malformed);
    }
    let meta = parse_ip(pkt).map_err(|_| FragmentError::Malformed)?;
    let (ihl, total) = (meta.header_len, meta.total_len);
    let pkt = &pkt[..total];
    let header = &pkt[..ihl];
    if checksum::checksum(header) != 0 {
        return Err(FragmentError::Malformed);
    }
    if total <= mtu {
        emit(pkt);
        return Ok(1);
    }
    let flags_frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    if flags_frag & IPV4_DF != 0 {
        return Err(FragmentError::DontFragment);
    }
    // The header of the later fragments: the fixed part and the copied options.
    let mut later = [0u8; 60];
    later[..20].copy_from_slice(&header[..20]);
    let (mut i, mut at) = (20, 20);
    while i < ihl {
        match header[i] {
            0 => break,  // end of the option list; the rest is padding
            1 => i += 1, // no-operation: its copied flag is clear
            ty => {
                let len = usize::from(*header.get(i + 1).ok_or(FragmentError::Malformed)?);
                if len < 2 || i + len > ihl {
                    return Err(FragmentError::Malformed);
                }
                if ty & 0x80 != 0 {
                    later[at..at + len].copy_from_slice(&header[i..i + len]);
                    at += len;
                }
                i += len;
            }
        }
    }
    // Padded with zeros (end of options) to a multiple of 4 bytes; at most `ihl`.
    let later_ihl = at.next_multiple_of(4);
    later[0] = 0x40 | (later_ihl / 4) as u8;
    let later = &later[..later_ihl];

    let payload = &pkt[ihl..];
    // mtu >= 68 and ihl <= 60: at least 8 bytes each.
    let first_chunk = (mtu - ihl) & !7;
    let later_chunk = (mtu - later_ihl) & !7;
    // total > mtu, so the first fragment does not take everything.
    let rest = payload.len() - first_chunk;
    let last_start = first_chunk + (rest - 1) / later_chunk * later_chunk;
    let offset0 = usize::from(flags_frag & IPV4_OFFSET) * 8;
    if offset0 + last_start > usize::from(IPV4_OFFSET) * 8 {
        return Err(FragmentError::Malformed);
    }
    if scratch.len() < (ihl + first_chunk).max(later_ihl + later_chunk.min(rest)) {
        return Err(FragmentError::BufferTooSmall);
    }
    let keep = flags_frag & 0x8000; // the reserved flag
    let last_mf = flags_frag & IPV4_MF;
    let (mut pos, mut n) = (0, 0);
    while pos < payload.len() {
        let (hdr, chunk) = if pos == 0 {
            (header, first_chunk)
        } else {
            (later, later_chunk)
        };
        let end = (pos + chunk).min(payload.len());
        let mf = if end == payload.len() {
            last_mf
        } else {
            IPV4_MF
        };
        let (hl, len) = (hdr.len(), hdr.len() + end - pos);
        let out = &mut scratch[..len];
        out[..hl].copy_from_slice(hdr);
        out[hl..].copy_from_slice(&payload[pos..end]);
        // len <= total, and the offset fits 13 bits (checked above).
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let ff = keep | mf | ((offset0 + pos) / 8) as u16;
        out[6..8].copy_from_slice(&ff.to_be_bytes());
        out[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&out[..hl]);
        out[10..12].copy_from_slice(&c.to_be_bytes());
        emit(out);
        n += 1;
        pos = end;
    }
    Ok(n)
}

/// Clamp the MSS option of a TCP SYN in `pkt` (an IP packet) to `max_mss`, fixing the TCP
/// checksum incrementally. Returns whether the packet was changed.
pub fn clamp_tcp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    let Ok(meta) = parse_ip(pkt) else {
        return false;
    };
    if meta.proto != proto::TCP {
        return false;
    }
    // Only the first fragment carries the TCP header.
    if matches!(meta.src, IpAddr::V4(_)) && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff != 0 {
        return false;
    }
    let seg = &mut pkt[meta.header_len..meta.total_len];
    let Ok(tcp) = view::<TcpHeader>(seg) else {
        return false;
    };
    if tcp.flags & 0x02 == 0 {
        return false; // not a SYN
    }
    let hlen = usize::from(tcp.data_offset >> 4) * 4;
    if hlen < 20 || hlen > seg.len() {
        return false;
    }
    let mut i = 20;
    while i < hlen {
        match seg[i] {
            0 => break,  // end of options
            1 => i += 1, // no-op
            kind => {
                let Some(&l) = seg.get(i + 1) else {
                    return false;
                };
                let l = usize::from(l);
                if l < 2 || i + l > hlen {
                    return false;
                }
                if kind == 2 && l == 4 {
                    let old = u16::from_be_bytes([seg[i + 2], seg[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    seg[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    let Ok(tcp) = view_mut::<TcpHeader>(seg) else {
                        return false;
                    };
                    // The option may sit at an odd offset of its 16-bit word; i is even
                    // relative to the TCP header only when the option is aligned.
                    if i % 2 == 0 {
                        tcp.checksum
                            .set(checksum::update(tcp.checksum.get(), old, max_mss));
                    } else {
                        let c = full_tcp_checksum(meta.src, meta.dst, seg);
                        if let Ok(tcp) = view_mut::<TcpHeader>(seg) {
                            tcp.checksum.set(c);
                        }
                    }
                    return true;
                }
                i += l;
            }
        }
    }
    false
}

fn full_tcp_checksum(src: IpAddr, dst: IpAddr, seg: &mut [u8]) -> u16 {
    seg[16] = 0;
    seg[17] = 0;
    let s = checksum::pseudo_header(src, dst, proto::TCP, seg.len());
    checksum::finish(checksum::sum(s, seg))
}

/// Is this a Babel packet for the control plane (UDP port 6696 to a link-local unicast
/// address or to ff02::1:6)?
#[inline]
pub fn is_babel(meta: &IpMeta, pkt: &[u8]) -> bool {
    let IpAddr::V6(dst) = meta.dst else {
        return false;
    };
    if meta.proto != proto::UDP || pkt.len() < meta.header_len + 8 {
        return false;
    }
    let link_local = dst.is_unicast_link_local();
    let babel_group = dst == BABEL_GROUP;
    let dport = u16::from_be_bytes([pkt[meta.header_len + 2], pkt[meta.header_len + 3]]);
    (link_local || babel_group) && dport == BABEL_PORT
}

#[cfg(test)]
pub(crate) mod tests;
