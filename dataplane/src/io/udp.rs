//! The UDP underlay: one dual-stack socket per worker on the same port (SO_REUSEPORT, so the
//! kernel spreads peers over workers), read with recvmmsg and written with sendmmsg.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::buf::{Batch, Slot, BATCH_SIZE, SLOT_SIZE};

/// Open `count` non-blocking dual-stack UDP sockets bound to `[::]:port` with SO_REUSEPORT.
/// Port 0 picks a free port for the first and binds the others to the same one.
pub fn bind(port: u16, count: usize, fwmark: u32) -> io::Result<(Vec<Socket>, u16)> {
    let mut socks = Vec::with_capacity(count);
    let mut port = port;
    if port != 0 {
        // SO_REUSEPORT would let us share a port another root process holds with the same
        // option, silently splitting its traffic: first make sure the port is free.
        let probe = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        probe.set_only_v6(false)?;
        probe.bind(&SockAddr::from(SocketAddrV6::new(
            Ipv6Addr::UNSPECIFIED,
            port,
            0,
            0,
        )))?;
    }
    for _ in 0..count.max(1) {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        // Room for bursts: a 64-packet batch per worker is far below this.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        if fwmark != 0 {
            s.set_mark(fwmark)?;
        }
        // Receive coalesced datagrams (GRO) when the kernel can: see `GroArea`. Workers
        // read these sockets with 64 KiB buffers then; ISTHMUS_NO_GRO turns both off.
        let one: libc::c_int = i32::from(std::env::var_os("ISTHMUS_NO_GRO").is_none());
        // SAFETY: setsockopt with a valid int option value.
        let _ = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                SOL_UDP,
                UDP_GRO,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        s.bind(&SockAddr::from(SocketAddrV6::new(
            Ipv6Addr::UNSPECIFIED,
            port,
            0,
            0,
        )))?;
        if port == 0 {
            port = s.local_addr()?.as_socket().map_or(0, |a| a.port());
        }
        socks.push(s);
    }
    Ok((socks, port))
}

/// Unmap `::ffff:a.b.c.d` to an IPv4 address.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The sender of a received datagram, IPv4 unmapped.
fn source_of(a: &libc::sockaddr_in6) -> Option<SocketAddr> {
    (a.sin6_family == libc::AF_INET6 as u16).then(|| {
        unmap(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(a.sin6_addr.s6_addr),
            u16::from_be(a.sin6_port),
            0,
            a.sin6_scope_id,
        )))
    })
}

/// Map an IPv4 destination into the dual-stack socket's address family.
fn to_v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        SocketAddr::V6(v6) => v6,
    }
}

/// `SOL_UDP` / `UDP_SEGMENT` (Linux 4.18): send one buffer as several datagrams.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (Linux 5.0): receive coalesced datagrams with their segment size.
const UDP_GRO: libc::c_int = 104;
/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (a UDP datagram's limit over IPv6 with headers).
const MAX_GSO_BYTES: usize = 65_000;

/// Control-message space for one `UDP_SEGMENT` (a cmsghdr and a u16, aligned).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct GsoCmsg([u8; 24]);

/// Scratch for one recvmmsg/sendmmsg call, allocated once per worker.
pub struct MmsgScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in6>,
    cmsgs: Vec<GsoCmsg>,
    /// Whether UDP GSO is used; turned off for good if the kernel refuses it.
    pub gso: bool,
}

// SAFETY: the raw pointers inside are rebuilt before every call and only point into buffers
// owned by the calling thread for the duration of that call.
unsafe impl Send for MmsgScratch {}

impl Default for MmsgScratch {
    fn default() -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_in6 = unsafe { MaybeUninit::zeroed().assume_init() };
        Self {
            hdrs: vec![zero_hdr; BATCH_SIZE],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH_SIZE
            ],
            addrs: vec![zero_addr; BATCH_SIZE],
            cmsgs: vec![GsoCmsg([0; 24]); BATCH_SIZE],
            gso: std::env::var_os("ISTHMUS_NO_GSO").is_none(),
        }
    }
}

/// Receive up to a batch of datagrams. Returns how many (0 never: WouldBlock instead).
pub fn recv_batch(fd: RawFd, batch: &mut Batch, sc: &mut MmsgScratch) -> io::Result<usize> {
    let n = batch.capacity().min(BATCH_SIZE);
    for i in 0..n {
        let slot = batch.slot_mut(i);
        sc.iovs[i] = libc::iovec {
            iov_base: slot.buf_mut().as_mut_ptr().cast(),
            iov_len: SLOT_SIZE,
        };
        let h = &mut sc.hdrs[i];
        h.msg_hdr.msg_name = (&raw mut sc.addrs[i]).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        h.msg_hdr.msg_iov = &raw mut sc.iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = std::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
        h.msg_len = 0;
    }
    // SAFETY: `hdrs[..n]` point to `n` valid iovecs and sockaddr buffers that live for the
    // call; the kernel writes at most `iov_len`/`msg_namelen` bytes into them.
    let got = unsafe {
        libc::recvmmsg(
            fd,
            sc.hdrs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    for i in 0..got {
        let h = &sc.hdrs[i];
        let len = h.msg_len as usize;
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let a = &sc.addrs[i];
        let addr = source_of(a);
        let slot = batch.slot_mut(i);
        slot.len = len.min(SLOT_SIZE);
        slot.addr = addr;
        slot.truncated = truncated;
    }
    batch.set_len(got);
    Ok(got)
}

/// Send every datagram of the batch. Returns how many could not be sent.
///
/// With GSO, each run of datagrams to the same destination whose sizes are equal (the last
/// may be shorter) goes as one message: its slots become the iovecs of one `sendmsg` with a
/// `UDP_SEGMENT` control message, and the kernel cuts it back into datagrams. Nothing is
/// copied.
pub fn send_batch(fd: RawFd, batch: &Batch, sc: &mut MmsgScratch) -> usize {
    let slots = batch.used();
    let slots = &slots[..slots.len().min(BATCH_SIZE)];
    // msgs[k] = (first slot, slot count, segment size) of message k.
    let mut msgs = [(0usize, 0usize, 0usize); BATCH_SIZE];
    let mut n = 0;
    let mut unaddressed = 0;
    let mut i = 0;
    while i < slots.len() {
        let Some(to) = slots[i].addr else {
            unaddressed += 1;
            i += 1;
            continue;
        };
        let seg = slots[i].len;
        let mut j = i + 1;
        if sc.gso {
            let mut total = seg;
            while j < slots.len()
                && j - i < MAX_GSO_SEGMENTS
                && slots[j].addr == Some(to)
                && slots[j].len <= seg
                && total + slots[j].len <= MAX_GSO_BYTES
            {
                total += slots[j].len;
                j += 1;
                if slots[j - 1].len < seg {
                    break; // a short one ends the run
                }
            }
        }
        msgs[n] = (i, j - i, seg);
        n += 1;
        i = j;
    }
    for (k, &(first, count, seg)) in msgs[..n].iter().enumerate() {
        let v6 = to_v6(
            slots[first]
                .addr
                .unwrap_or(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::UNSPECIFIED,
                    0,
                    0,
                    0,
                ))),
        );
        let a = &mut sc.addrs[k];
        a.sin6_family = libc::AF_INET6 as u16;
        a.sin6_port = v6.port().to_be();
        a.sin6_flowinfo = 0;
        a.sin6_addr.s6_addr = v6.ip().octets();
        a.sin6_scope_id = v6.scope_id();
        for (o, s) in slots[first..first + count].iter().enumerate() {
            sc.iovs[first + o] = libc::iovec {
                iov_base: s.data().as_ptr().cast_mut().cast(),
                iov_len: s.len,
            };
        }
        let h = &mut sc.hdrs[k];
        h.msg_hdr.msg_name = (&raw mut sc.addrs[k]).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        h.msg_hdr.msg_iov = &raw mut sc.iovs[first];
        h.msg_hdr.msg_iovlen = count;
        h.msg_hdr.msg_flags = 0;
        if count > 1 {
            let c = &mut sc.cmsgs[k];
            // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic.
            let (len, space) =
                unsafe { (libc::CMSG_LEN(2) as usize, libc::CMSG_SPACE(2) as usize) };
            let hdr = libc::cmsghdr {
                cmsg_len: len,
                cmsg_level: SOL_UDP,
                cmsg_type: UDP_SEGMENT,
            };
            let hsz = std::mem::size_of::<libc::cmsghdr>();
            // SAFETY: `c` is 24 bytes, 8-aligned: room for the 16-byte header and the u16.
            unsafe { std::ptr::write_unaligned(c.0.as_mut_ptr().cast::<libc::cmsghdr>(), hdr) };
            c.0[hsz..hsz + 2].copy_from_slice(&(seg as u16).to_ne_bytes());
            h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = space;
        } else {
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
        }
    }
    let mut sent = 0; // messages
    let mut failed = 0; // datagrams
    let mut retries = 0;
    while sent < n {
        // SAFETY: hdrs[sent..n] point to iovecs, addresses and control messages that live
        // for the call; the iovecs point into the batch's slots, which the kernel only reads.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                sc.hdrs[sent..].as_mut_ptr(),
                (n - sent) as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if retries < 200 => {
                retries += 1;
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 5) };
            }
            Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP) if sc.gso && msgs[sent].1 > 1 => {
                // The kernel or the device cannot segment: send the rest one by one.
                tracing::info!("UDP GSO refused ({err}); sending datagrams one by one");
                sc.gso = false;
                let rest: Vec<usize> = msgs[sent..n]
                    .iter()
                    .flat_map(|&(f, c, _)| f..f + c)
                    .collect();
                failed += send_each(fd, slots, &rest);
                sent = n;
            }
            _ => {
                // Unreachable destination or similar: skip this message, keep the rest.
                failed += msgs[sent].1;
                sent += 1;
                if retries >= 200 {
                    failed += msgs[sent..n].iter().map(|m| m.1).sum::<usize>();
                    break;
                }
            }
        }
    }
    failed + unaddressed
}

/// Send the given slots one datagram per call (the fallback when GSO is refused).
fn send_each(fd: RawFd, slots: &[Slot], which: &[usize]) -> usize {
    let mut failed = 0;
    for &i in which {
        let s = &slots[i];
        let Some(to) = s.addr else {
            failed += 1;
            continue;
        };
        let addr = SockAddr::from(to_v6(to));
        // SAFETY: a valid buffer and a valid socket address for the call's duration.
        let r = unsafe {
            libc::sendto(
                fd,
                s.data().as_ptr().cast(),
                s.len,
                libc::MSG_DONTWAIT,
                addr.as_ptr().cast(),
                addr.len(),
            )
        };
        if r < 0 {
            failed += 1;
        }
    }
    failed
}

/// The raw fd of a socket.
pub fn raw(s: &Socket) -> RawFd {
    s.as_raw_fd()
}

/// Messages per GRO receive call.
pub const GRO_MSGS: usize = 16;
/// Bytes per GRO receive buffer: the largest coalesced datagram.
const GRO_BUF: usize = 65_536;

/// Receive buffers for GRO: each message may be up to 64 KiB of datagrams of one size,
/// coalesced by the kernel (or never split, when a GSO sender sits on the same host).
pub struct GroArea {
    bufs: Vec<Box<[u8]>>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in6>,
    cmsgs: Vec<GsoCmsg>,
    /// Per message: length, source, segment size (0: not coalesced).
    got: Vec<(usize, Option<SocketAddr>, usize)>,
}

// SAFETY: as for `MmsgScratch`: pointers are rebuilt for each call into owned buffers.
unsafe impl Send for GroArea {}

impl Default for GroArea {
    fn default() -> Self {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_in6 = unsafe { MaybeUninit::zeroed().assume_init() };
        Self {
            bufs: (0..GRO_MSGS)
                .map(|_| vec![0u8; GRO_BUF].into_boxed_slice())
                .collect(),
            hdrs: vec![zero_hdr; GRO_MSGS],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                GRO_MSGS
            ],
            addrs: vec![zero_addr; GRO_MSGS],
            cmsgs: vec![GsoCmsg([0; 24]); GRO_MSGS],
            got: Vec::with_capacity(GRO_MSGS),
        }
    }
}

impl GroArea {
    /// Receive up to `GRO_MSGS` messages. `Err(WouldBlock)` when none is ready.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..GRO_MSGS {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: GRO_BUF,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            h.msg_hdr.msg_iov = &raw mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = self.cmsgs[i].0.len();
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points to a live buffer, address and control area of the
        // lengths given; the kernel writes within them.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                GRO_MSGS as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        self.got.clear();
        for i in 0..got as usize {
            let h = &self.hdrs[i];
            let len = (h.msg_len as usize).min(GRO_BUF);
            let a = &self.addrs[i];
            let addr = source_of(a);
            let mut seg = 0;
            if h.msg_hdr.msg_controllen >= std::mem::size_of::<libc::cmsghdr>() {
                // SAFETY: the kernel wrote a cmsghdr at the start of our control area.
                let c: libc::cmsghdr =
                    unsafe { std::ptr::read_unaligned(self.cmsgs[i].0.as_ptr().cast()) };
                if c.cmsg_level == SOL_UDP && c.cmsg_type == UDP_GRO {
                    let hsz = std::mem::size_of::<libc::cmsghdr>();
                    let b = &self.cmsgs[i].0[hsz..hsz + 4];
                    seg = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize;
                }
            }
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.got
                .push((if truncated { usize::MAX } else { len }, addr, seg));
        }
        Ok(got as usize)
    }

    /// The datagrams of the last receive, split at their segment size, with their sources.
    /// A truncated message yields one oversized slice (dropped by the caller as such).
    pub fn segments(&mut self) -> impl Iterator<Item = (&mut [u8], SocketAddr)> + '_ {
        self.got
            .iter()
            .zip(self.bufs.iter_mut())
            .filter_map(|(&(len, addr, seg), buf)| Some((buf, len, addr?, seg)))
            .flat_map(move |(buf, len, addr, seg)| {
                let (data, step) = if len == usize::MAX {
                    (&mut buf[..], GRO_BUF)
                } else {
                    (&mut buf[..len], if seg == 0 { len.max(1) } else { seg })
                };
                data.chunks_mut(step).map(move |c| (c, addr))
            })
    }
}
