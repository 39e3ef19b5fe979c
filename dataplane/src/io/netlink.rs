//! The kernel's route and neighbour tables, as the AF_XDP backend needs them: for a
//! destination, the interface, source address and next hop the kernel would use
//! (`ip route get`), and the next hop's link-layer address (`ip neigh get`).
//!
//! Requests are single `RTM_GETROUTE` / `RTM_GETNEIGH` gets on a blocking `NETLINK_ROUTE`
//! socket with a short receive timeout; callers cache the answers ([`Resolver`] in the
//! backend), so a lookup costs one round trip per destination per refresh.

use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_MARK: u16 = 16;
const RTA_VIA: u16 = 18;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states with a usable link-layer address.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80; // REACHABLE STALE DELAY PROBE PERMANENT

/// Where the kernel would send a packet to some destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    /// Output interface.
    pub ifindex: u32,
    /// Source address it would choose.
    pub src: Option<IpAddr>,
    /// The next hop: the gateway, or the destination itself when it is on link.
    pub next_hop: IpAddr,
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterator over the (type, payload) of netlink attributes.
pub struct Attrs<'a>(pub &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        self.0 = b.get(align4(len)..).unwrap_or(&[]);
        Some((ty, &b[4..len]))
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// A `NETLINK_ROUTE` socket for gets.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open the socket (100 ms receive timeout).
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: `tv` is a live timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Netlink {
            fd,
            seq: 1,
            buf: vec![0; 16384],
        })
    }

    /// Send one request (`ty`, fixed header `body`, then attributes) and return the payload
    /// of the answer of type `want`.
    fn get(
        &mut self,
        ty: u16,
        body: &[u8],
        attrs: &[(u16, &[u8])],
        want: u16,
    ) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align4(m.len()), 0);
        for (t, d) in attrs {
            m.extend_from_slice(&(4 + d.len() as u16).to_ne_bytes());
            m.extend_from_slice(&t.to_ne_bytes());
            m.extend_from_slice(d);
            m.resize(align4(m.len()), 0);
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        // SAFETY: sends our buffer on our socket; the kernel is the default destination.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: receives into our buffer, of the size passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut d = &self.buf[..n as usize];
            while d.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(d[..4].try_into().expect("4 bytes")) as usize;
                if mlen < NLMSG_HDRLEN || mlen > d.len() {
                    break;
                }
                let mty = u16::from_ne_bytes([d[4], d[5]]);
                let mseq = u32::from_ne_bytes(d[8..12].try_into().expect("4 bytes"));
                let payload = &d[NLMSG_HDRLEN..mlen];
                if mseq == self.seq {
                    if mty == NLMSG_ERROR {
                        let e = payload
                            .get(..4)
                            .map_or(libc::EIO, |b| -i32::from_ne_bytes(b.try_into().expect("4")));
                        return Err(io::Error::from_raw_os_error(e));
                    }
                    if mty == want {
                        return Ok(payload.to_vec());
                    }
                }
                d = d.get(align4(mlen)..).unwrap_or(&[]);
            }
        }
    }

    /// `ip route get DST [mark MARK]`.
    pub fn route_to(&mut self, dst: IpAddr, mark: u32) -> io::Result<RouteTo> {
        let bits = if dst.is_ipv4() { 32 } else { 128 };
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type; flags }
        let mut rtm = [0u8; 12];
        rtm[0] = family(dst);
        rtm[1] = bits;
        let d = ip_bytes(dst);
        let mark_b = mark.to_ne_bytes();
        let mut attrs: Vec<(u16, &[u8])> = vec![(RTA_DST, &d)];
        if mark != 0 {
            attrs.push((RTA_MARK, &mark_b));
        }
        let p = self.get(RTM_GETROUTE, &rtm, &attrs, RTM_NEWROUTE)?;
        let (mut oif, mut src, mut gw) = (None, None, None);
        for (ty, data) in Attrs(p.get(12..).unwrap_or(&[])) {
            match ty {
                RTA_OIF if data.len() == 4 => {
                    oif = Some(u32::from_ne_bytes(data.try_into().expect("4 bytes")));
                }
                RTA_PREFSRC => src = parse_ip(data),
                RTA_GATEWAY => gw = parse_ip(data),
                // struct rtvia { family u16; addr[] }: an IPv4 route via an IPv6 next hop.
                RTA_VIA if data.len() > 2 => gw = parse_ip(&data[2..]),
                _ => {}
            }
        }
        let ifindex = oif.ok_or_else(|| io::Error::other("route without output interface"))?;
        Ok(RouteTo {
            ifindex,
            src,
            next_hop: gw.unwrap_or(dst),
        })
    }

    /// The link-layer address of neighbour `ip` on `ifindex`, if the kernel has a usable one.
    pub fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
        // struct ndmsg { family u8, pad u8, pad u16, ifindex i32, state u16, flags u8, type u8 }
        let mut ndm = [0u8; 12];
        ndm[0] = family(ip);
        ndm[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        let d = ip_bytes(ip);
        let p = match self.get(RTM_GETNEIGH, &ndm, &[(NDA_DST, &d)], RTM_NEWNEIGH) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = p.get(8..10).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        if state & NUD_USABLE == 0 {
            return Ok(None);
        }
        Ok(Attrs(p.get(12..).unwrap_or(&[]))
            .find(|(ty, d)| *ty == NDA_LLADDR && d.len() == 6)
            .map(|(_, d)| d.try_into().expect("6 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_route() {
        let mut nl = Netlink::open().unwrap();
        let r = nl.route_to("127.0.0.1".parse().unwrap(), 0).unwrap();
        assert_eq!(r.ifindex, 1, "{r:?}");
        assert_eq!(r.next_hop, "127.0.0.1".parse::<IpAddr>().unwrap());
        // No neighbour entries on lo.
        assert_eq!(nl.neighbour(1, "127.0.0.9".parse().unwrap()).unwrap(), None);
    }
}
