//! The two kinds of Babel link the daemon drives: kernel interfaces (a UDP socket bound to
//! the interface, multicast ff02::1:6) and tunnel peers (Babel packets wrapped in IPv6/UDP and
//! sent through the data plane's control channel, punted back the same way).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use isthmus_dataplane::wire::proto::UDP;
use socket2::{Domain, Protocol, Socket, Type};

use crate::babel::packet::{MULTICAST, PORT};
use crate::babel::LinkId;

use super::Input;

/// A UDP socket speaking Babel on one kernel interface. Its reader thread stops when it is
/// dropped (the interface went away, or was re-created with another index).
pub struct IfaceSocket {
    sock: std::net::UdpSocket,
    ifindex: u32,
    alive: Arc<AtomicBool>,
}

impl Drop for IfaceSocket {
    fn drop(&mut self) {
        self.alive.store(false, Relaxed);
    }
}

impl IfaceSocket {
    /// Binds `[::]:6696` on `name` and joins ff02::1:6 there.
    pub fn open(name: &str, ifindex: u32) -> io::Result<Self> {
        let ctx =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{name}: {what}: {e}"));
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| ctx("socket", e))?;
        s.set_only_v6(true).map_err(|e| ctx("IPV6_V6ONLY", e))?;
        s.set_reuse_address(true)
            .map_err(|e| ctx("SO_REUSEADDR", e))?;
        s.bind_device(Some(name.as_bytes()))
            .map_err(|e| ctx("SO_BINDTODEVICE", e))?;
        let any = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, PORT, 0, 0);
        s.bind(&any.into()).map_err(|e| ctx("bind [::]:6696", e))?;
        s.join_multicast_v6(&MULTICAST, ifindex)
            .map_err(|e| ctx("join ff02::1:6", e))?;
        s.set_multicast_if_v6(ifindex)
            .map_err(|e| ctx("IPV6_MULTICAST_IF", e))?;
        s.set_multicast_loop_v6(false)
            .map_err(|e| ctx("IPV6_MULTICAST_LOOP", e))?;
        s.set_multicast_hops_v6(1)
            .map_err(|e| ctx("IPV6_MULTICAST_HOPS", e))?;
        // The reader wakes up this often to see whether it should stop.
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| ctx("SO_RCVTIMEO", e))?;
        Ok(Self {
            sock: s.into(),
            ifindex,
            alive: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Sends a Babel packet to the group or to a neighbour.
    pub fn send(&self, dest: Option<Ipv6Addr>, bytes: &[u8]) -> io::Result<()> {
        let to = SocketAddrV6::new(dest.unwrap_or(MULTICAST), PORT, 0, self.ifindex);
        self.sock.send_to(bytes, to).map(|_| ())
    }

    /// Starts a thread feeding received packets to the daemon.
    /// Packets beyond `budget`'s room are dropped (and counted) instead of queued.
    pub fn spawn_reader(
        &self,
        link: LinkId,
        tx: Sender<Input>,
        budget: std::sync::Arc<super::InputBudget>,
    ) -> io::Result<()> {
        let sock = self.sock.try_clone()?;
        let alive = Arc::clone(&self.alive);
        thread::Builder::new()
            .name(format!("babel-rx-{}", link.0))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while alive.load(Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, SocketAddr::V6(_))) if !budget.take(n) => {}
                        Ok((n, SocketAddr::V6(from))) => {
                            let msg = Input::Packet {
                                link,
                                from: IpAddr::V6(*from.ip()),
                                bytes: buf[..n].to_vec(),
                            };
                            if tx.send(msg).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::Interrupted
                                    | io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(())
    }
}

const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;

/// Wraps a Babel packet in IPv6 and UDP (6696 → 6696, hop limit 1), checksummed, as it
/// would leave a kernel interface: what a babeld behind a WireGuard interface expects.
pub fn wrap(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = UDP_HEADER + payload.len();
    let mut p = Vec::with_capacity(IPV6_HEADER + udp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.push(UDP);
    p.push(1);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let sum = udp6_checksum(&src, &dst, &p[IPV6_HEADER..]);
    p[IPV6_HEADER + 6..IPV6_HEADER + 8].copy_from_slice(&sum.to_be_bytes());
    p
}

fn udp6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(udp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, UDP]);
    add(udp);
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    let s = !(sum as u16);
    if s == 0 {
        0xFFFF
    } else {
        s
    }
}

/// Why a punted packet was not a Babel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    /// Not IPv6 with UDP right after the fixed header.
    #[error("not IPv6/UDP")]
    NotUdp6,
    /// Shorter than its headers say.
    #[error("truncated")]
    Truncated,
    /// Not to port 6696.
    #[error("not to port 6696")]
    Port,
    /// The UDP checksum is wrong.
    #[error("bad UDP checksum")]
    Checksum,
}

/// Takes a punted IPv6/UDP packet apart: its source address and the Babel payload.
pub fn unwrap(pkt: &[u8]) -> Result<(Ipv6Addr, &[u8]), UnwrapError> {
    if pkt.len() < IPV6_HEADER + UDP_HEADER || pkt[0] >> 4 != 6 || pkt[6] != UDP {
        return Err(UnwrapError::NotUdp6);
    }
    let src =
        Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).map_err(|_| UnwrapError::Truncated)?);
    let dst =
        Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).map_err(|_| UnwrapError::Truncated)?);
    let udp = &pkt[IPV6_HEADER..];
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if len < UDP_HEADER || len > udp.len() {
        return Err(UnwrapError::Truncated);
    }
    if u16::from_be_bytes([udp[2], udp[3]]) != PORT {
        return Err(UnwrapError::Port);
    }
    let stored = u16::from_be_bytes([udp[6], udp[7]]);
    if stored != 0 {
        let mut copy = udp[..len].to_vec();
        copy[6] = 0;
        copy[7] = 0;
        if udp6_checksum(&src, &dst, &copy) != stored {
            return Err(UnwrapError::Checksum);
        }
    }
    Ok((src, &udp[UDP_HEADER..len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap_round_trip_with_checksum() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let pkt = wrap(src, MULTICAST, b"\x2a\x02\x00\x00");
        assert_eq!(pkt.len(), 40 + 8 + 4);
        let (s, payload) = unwrap(&pkt).unwrap();
        assert_eq!(s, src);
        assert_eq!(payload, b"\x2a\x02\x00\x00");
        let mut bad = pkt.clone();
        bad[50] ^= 1;
        assert_eq!(unwrap(&bad), Err(UnwrapError::Checksum));
        assert_eq!(unwrap(&pkt[..45]), Err(UnwrapError::NotUdp6));
        let mut port = pkt.clone();
        port[43] = 1;
        assert!(unwrap(&port).is_err());
    }
}
