//! Reads the UDP datagrams out of a classic pcap file written by `tcpdump -w` (Ethernet, Linux
//! cooked captures v1 and v2, raw IP; IPv4 and IPv6), for the replay tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One captured UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Reads every UDP datagram of a pcap file; frames that are not UDP are skipped.
///
/// # Errors
/// When the file cannot be read or is not a pcap file.
pub fn read_udp(path: &Path) -> Result<Vec<UdpDatagram>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_udp(&data).with_context(|| format!("parsing {}", path.display()))
}

/// Parses pcap bytes (see [`read_udp`]).
///
/// # Errors
/// When the header is not a pcap header.
pub fn parse_udp(data: &[u8]) -> Result<Vec<UdpDatagram>> {
    if data.len() < 24 {
        bail!("too short for a pcap header");
    }
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => bail!("not a pcap file (magic {m:#x})"),
    };
    let rd32 = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = rd32(&data[20..24]);
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = rd32(&data[off + 8..off + 12]) as usize;
        let start = off + 16;
        let Some(frame) = data.get(start..start + incl) else {
            break;
        };
        off = start + incl;
        let l3 = match linktype {
            1 => frame
                .get(12..14)
                .map(|t| (u16::from_be_bytes([t[0], t[1]]), 14)),
            113 => frame
                .get(14..16)
                .map(|t| (u16::from_be_bytes([t[0], t[1]]), 16)),
            276 => frame
                .get(0..2)
                .map(|t| (u16::from_be_bytes([t[0], t[1]]), 20)),
            101 => frame
                .first()
                .map(|v| (if v >> 4 == 6 { 0x86dd } else { 0x0800 }, 0)),
            _ => None,
        };
        let Some((ethertype, hdr)) = l3 else { continue };
        if let Some(d) = frame.get(hdr..).and_then(|ip| parse_ip(ethertype, ip)) {
            out.push(d);
        }
    }
    Ok(out)
}

fn parse_ip(ethertype: u16, ip: &[u8]) -> Option<UdpDatagram> {
    let (src, dst, udp) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 17 {
                return None;
            }
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        0x86dd => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                ip.get(40..(40 + plen).min(ip.len()))?,
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let payload = udp.get(8..len.min(udp.len()))?.to_vec();
    Some(UdpDatagram {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_ethernet_ipv4_udp_frame() {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&[
            2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
        ]);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let payload = [4u8, 0, 0, 0, 9, 9];
        let total = 20 + 8 + payload.len();
        #[allow(clippy::cast_possible_truncation)]
        let ip = [
            0x45,
            0,
            0,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
        ];
        frame.extend_from_slice(&ip);
        #[allow(clippy::cast_possible_truncation)]
        frame.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, (8 + payload.len()) as u8, 0, 0]);
        frame.extend_from_slice(&payload);
        #[allow(clippy::cast_possible_truncation)]
        let n = frame.len() as u32;
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&n.to_le_bytes());
        f.extend_from_slice(&n.to_le_bytes());
        f.extend_from_slice(&frame);
        let d = parse_udp(&f).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].src, "10.0.0.1:12345".parse().unwrap());
        assert_eq!(d[0].dst, "10.0.0.2:53".parse().unwrap());
        assert_eq!(d[0].payload, payload);
        assert!(parse_udp(b"garbage garbage garbage garbage").is_err());
    }
}
