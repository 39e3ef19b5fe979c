//! UDP datagrams in Ethernet frames, as the AF_XDP backend receives and sends them: parsed
//! (the frames the XDP program redirected) and built (with the next hop's MAC address).

use std::net::{IpAddr, SocketAddr};

use super::checksum;

/// Ethernet header length (untagged).
pub const ETH_LEN: usize = 14;
/// Bytes in front of the UDP payload: Ethernet + IPv4 + UDP.
pub const V4_OVERHEAD: usize = ETH_LEN + 20 + 8;
/// Bytes in front of the UDP payload: Ethernet + IPv6 + UDP.
pub const V6_OVERHEAD: usize = ETH_LEN + 40 + 8;

/// Why a frame is not a UDP datagram we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its headers say, or not IPv4/IPv6 UDP.
    Malformed,
}

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame {
    /// Sender.
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// The UDP payload: `frame[payload.0..payload.1]`.
    pub payload: (usize, usize),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parse an untagged Ethernet frame carrying IPv4 (no options) or IPv6 (no extension
/// headers) UDP. The UDP checksum is not verified: the payload is a WireGuard message,
/// authenticated by its AEAD, and a corrupted address or port only ever reaches the
/// pipeline as an unauthenticated source (which moves nothing).
pub fn parse_udp(frame: &[u8]) -> Result<UdpFrame, FrameError> {
    if frame.len() < V4_OVERHEAD {
        return Err(FrameError::Malformed);
    }
    let (src_ip, dst_ip, udp, ip_end): (IpAddr, IpAddr, usize, usize) = match be16(frame, 12) {
        0x0800 => {
            let ip = &frame[ETH_LEN..];
            if ip[0] != 0x45 || ip[9] != 17 || be16(ip, 6) & 0x3fff != 0 {
                return Err(FrameError::Malformed);
            }
            let total = usize::from(be16(ip, 2));
            if total < 28 || ETH_LEN + total > frame.len() {
                return Err(FrameError::Malformed);
            }
            let s: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
            let d: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
            (s.into(), d.into(), ETH_LEN + 20, ETH_LEN + total)
        }
        0x86dd => {
            if frame.len() < V6_OVERHEAD {
                return Err(FrameError::Malformed);
            }
            let ip = &frame[ETH_LEN..];
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return Err(FrameError::Malformed);
            }
            let plen = usize::from(be16(ip, 4));
            if plen < 8 || ETH_LEN + 40 + plen > frame.len() {
                return Err(FrameError::Malformed);
            }
            let s: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let d: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
            (s.into(), d.into(), ETH_LEN + 40, ETH_LEN + 40 + plen)
        }
        _ => return Err(FrameError::Malformed),
    };
    let ulen = usize::from(be16(frame, udp + 4));
    if ulen < 8 || udp + ulen > ip_end {
        return Err(FrameError::Malformed);
    }
    Ok(UdpFrame {
        src: SocketAddr::new(src_ip, be16(frame, udp)),
        dst: SocketAddr::new(dst_ip, be16(frame, udp + 2)),
        payload: (udp + 8, udp + ulen),
    })
}

/// Link-layer addressing of a frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Macs {
    /// Our interface's address.
    pub src: [u8; 6],
    /// The next hop's.
    pub dst: [u8; 6],
}

/// Write an Ethernet frame carrying `payload` from `src` to `dst` (one family) into `buf`;
/// the frame's length, or 0 if it does not fit or the families differ. The UDP checksum is
/// computed (it is mandatory for IPv6, and cheap next to the AEAD that made the payload).
pub fn build_udp(
    buf: &mut [u8],
    macs: Macs,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> usize {
    let ulen = payload.len() + 8;
    let (hdr, ethertype) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (V4_OVERHEAD, 0x0800u16),
        (IpAddr::V6(_), IpAddr::V6(_)) => (V6_OVERHEAD, 0x86dd),
        _ => return 0,
    };
    let len = hdr + payload.len();
    if len > buf.len() || ulen > usize::from(u16::MAX) - 40 {
        return 0;
    }
    buf[0..6].copy_from_slice(&macs.dst);
    buf[6..12].copy_from_slice(&macs.src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
    let udp = hdr - 8;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = &mut buf[ETH_LEN..ETH_LEN + 20];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&((20 + ulen) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]); // id: DF is set, so no fragments to tell apart
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
            ip[8] = 64;
            ip[9] = 17;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum::checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = &mut buf[ETH_LEN..ETH_LEN + 40];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
            ip[6] = 17;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
        }
        _ => unreachable!("families checked above"),
    }
    buf[udp..udp + 2].copy_from_slice(&src.port().to_be_bytes());
    buf[udp + 2..udp + 4].copy_from_slice(&dst.port().to_be_bytes());
    buf[udp + 4..udp + 6].copy_from_slice(&(ulen as u16).to_be_bytes());
    buf[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
    buf[hdr..len].copy_from_slice(payload);
    let s = checksum::pseudo_header(src.ip(), dst.ip(), 17, ulen);
    let mut c = checksum::finish(checksum::sum(s, &buf[udp..len]));
    if c == 0 {
        c = 0xffff; // 0 means "no checksum" in UDP
    }
    buf[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
    len
}

/// The IP packet in an untagged Ethernet frame from a mesh interface (what the XDP program
/// redirected: IPv4 or IPv6 to a destination routed into a tunnel): `frame[range]`, cut to
/// the IP header's own length (a frame may be padded to the Ethernet minimum).
pub fn parse_ip(frame: &[u8]) -> Result<std::ops::Range<usize>, FrameError> {
    if frame.len() < ETH_LEN + 20 {
        return Err(FrameError::Malformed);
    }
    let ip = &frame[ETH_LEN..];
    let len = match (be16(frame, 12), ip[0] >> 4) {
        (0x0800, 4) => usize::from(be16(ip, 2)),
        (0x86dd, 6) if ip.len() >= 40 => 40 + usize::from(be16(ip, 4)),
        _ => return Err(FrameError::Malformed),
    };
    if len < 20 || len > ip.len() {
        return Err(FrameError::Malformed);
    }
    Ok(ETH_LEN..ETH_LEN + len)
}

/// Write an Ethernet frame carrying the IP packet `pkt` into `buf`; the frame's length, or
/// 0 if it does not fit or `pkt` is neither IPv4 nor IPv6.
pub fn build_ip(buf: &mut [u8], macs: Macs, pkt: &[u8]) -> usize {
    let ethertype: u16 = match pkt.first().map(|b| b >> 4) {
        Some(4) => 0x0800,
        Some(6) => 0x86dd,
        _ => return 0,
    };
    let len = ETH_LEN + pkt.len();
    if len > buf.len() {
        return 0;
    }
    buf[0..6].copy_from_slice(&macs.dst);
    buf[6..12].copy_from_slice(&macs.src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
    buf[ETH_LEN..len].copy_from_slice(pkt); // the copy into the frame (see device/afxdp.rs)
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketHeaders, TransportHeader};

    fn roundtrip(src: &str, dst: &str) {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let macs = Macs {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
        };
        let payload: Vec<u8> = (0..333u16).map(|i| i as u8).collect();
        let mut buf = [0u8; 2048];
        let n = build_udp(&mut buf, macs, src, dst, &payload);
        assert!(n > 0);
        let f = parse_udp(&buf[..n]).unwrap();
        assert_eq!((f.src, f.dst), (src, dst));
        assert_eq!(&buf[f.payload.0..f.payload.1], &payload[..]);
        // An independent parser agrees, checksums included.
        let h = PacketHeaders::from_ethernet_slice(&buf[..n]).unwrap();
        let Some(TransportHeader::Udp(u)) = h.transport else {
            panic!("not UDP")
        };
        let ok = match h.net.unwrap() {
            etherparse::NetHeaders::Ipv4(ip, _) => {
                assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                u.calc_checksum_ipv4(&ip, &payload).unwrap()
            }
            etherparse::NetHeaders::Ipv6(ip, _) => u.calc_checksum_ipv6(&ip, &payload).unwrap(),
        };
        assert_eq!(u.checksum, ok);
    }

    #[test]
    fn build_then_parse() {
        roundtrip("192.0.2.1:51820", "198.51.100.7:40000");
        roundtrip("[2001:db8::1]:51820", "[2001:db8:1::7]:1");
    }

    #[test]
    fn rejects_what_is_not_plain_udp() {
        let mut buf = [0u8; 2048];
        let macs = Macs {
            src: [0; 6],
            dst: [0; 6],
        };
        let n = build_udp(
            &mut buf,
            macs,
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
            &[1; 40],
        );
        for cut in 0..n - 40 {
            assert!(parse_udp(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = buf;
        bad[ETH_LEN + 20 + 4..ETH_LEN + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(
            parse_udp(&bad[..n]),
            Err(FrameError::Malformed),
            "UDP length past IP"
        );
        let mut frag = buf;
        frag[ETH_LEN + 6] = 0x20;
        assert!(parse_udp(&frag[..n]).is_err());
        assert_eq!(
            build_udp(
                &mut buf,
                macs,
                "192.0.2.1:1".parse().unwrap(),
                "[::1]:2".parse().unwrap(),
                &[]
            ),
            0
        );
    }

    #[test]
    fn ip_frames_round_trip() {
        let macs = Macs {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
        };
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&28u16.to_be_bytes());
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        for pkt in [&v4[..], &v6[..]] {
            let mut buf = [0u8; 128];
            let n = build_ip(&mut buf, macs, pkt);
            assert_eq!(n, ETH_LEN + pkt.len());
            assert_eq!(buf[0..6], macs.dst);
            // Padding after the packet is not part of it.
            let r = parse_ip(&buf[..n + 10]).unwrap();
            assert_eq!(&buf[r], pkt);
        }
        let mut buf = [0u8; 128];
        assert_eq!(build_ip(&mut buf, macs, &[0x10; 30]), 0, "not IP");
        assert_eq!(build_ip(&mut buf[..20], macs, &v4), 0, "too small");
        let n = build_ip(&mut buf, macs, &v4);
        assert!(parse_ip(&buf[..n - 1]).is_err(), "truncated");
        buf[12] = 0x08;
        buf[13] = 0x06;
        assert!(parse_ip(&buf[..n]).is_err(), "ARP");
    }

    proptest::proptest! {
        #[test]
        fn parse_ip_never_panics(frame in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_ip(&frame);
        }
    }
}
