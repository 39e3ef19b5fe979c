//! recvmmsg/sendmmsg over buffers the caller owns, on a connected UDP socket: for tools that
//! move datagrams in bulk without the pool's slots (the benchmark's WireGuard packet
//! generator and sink, `isthmus-benches`' `wggen`). The data plane's own path is `udp.rs`.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// Headers and iovecs for batches of up to `capacity` datagrams, allocated once.
pub struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers inside are rebuilt before every call and only point into buffers
// the caller lends for the duration of that call.
unsafe impl Send for Mmsg {}

impl Mmsg {
    /// Room for `capacity` datagrams per call (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // SAFETY: all-zero is a valid value of this plain C struct.
        let zero: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        Self {
            hdrs: vec![zero; capacity],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                capacity
            ],
        }
    }

    /// Most datagrams per call.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends the datagrams `bufs` yields (up to [`Mmsg::capacity`]) with one `sendmmsg` on
    /// the connected socket `fd`. Returns how many the kernel took (possibly fewer: the
    /// caller sends the rest again). With `block`, waits for room in the socket's buffer.
    ///
    /// # Errors
    /// The kernel's error when it took none (`WouldBlock` without `block`).
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        bufs: impl IntoIterator<Item = &'a [u8]>,
        block: bool,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (i, b) in bufs.into_iter().take(self.hdrs.len()).enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            };
            n = i + 1;
        }
        for i in 0..n {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        if n == 0 {
            return Ok(0);
        }
        let flags = if block { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: hdrs[..n] point to n iovecs that point into buffers borrowed for 'a, which
        // outlives the call; the kernel only reads them.
        let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, flags) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Receives up to one datagram per buffer `bufs` yields (up to [`Mmsg::capacity`]) with
    /// one `recvmmsg` on `fd`, waiting for the first one unless the socket is non-blocking.
    /// Returns how many; [`Mmsg::len`] gives each one's length.
    ///
    /// # Errors
    /// The kernel's error (`WouldBlock` on a non-blocking socket with nothing queued, or when
    /// its receive timeout passes).
    pub fn recv<'a>(
        &mut self,
        fd: RawFd,
        bufs: impl IntoIterator<Item = &'a mut [u8]>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (i, b) in bufs.into_iter().take(self.hdrs.len()).enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            };
            n = i + 1;
        }
        for i in 0..n {
            let m = &mut self.hdrs[i];
            m.msg_len = 0;
            let h = &mut m.msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: hdrs[..n] point to n iovecs over buffers mutably borrowed for 'a, which
        // outlives the call; the kernel writes at most iov_len bytes into each.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// The length of datagram `i` of the last [`Mmsg::recv`] (truncated to its buffer).
    #[must_use]
    pub fn len(&self, i: usize) -> usize {
        let h = &self.hdrs[i];
        (h.msg_len as usize).min(self.iovs[i].iov_len)
    }
}

/// Sets `UDP_SEGMENT` on a UDP socket: from then on, every datagram sent longer than `size`
/// is cut by the kernel (or the device) into datagrams of `size` bytes (UDP GSO, Linux 4.18;
/// at most 64 segments and 64 KiB per send). 0 turns it off.
///
/// # Errors
/// The kernel's error (`ENOPROTOOPT` on a kernel without UDP GSO).
pub fn set_udp_segment(fd: RawFd, size: u16) -> io::Result<()> {
    let v = libc::c_int::from(size);
    // SAFETY: setsockopt with a valid int option value that lives for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sends_and_receives_batches_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let msgs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut m = Mmsg::new(8);
        let sent = m
            .send(a.as_raw_fd(), msgs.iter().map(Vec::as_slice), true)
            .unwrap();
        assert_eq!(sent, 8, "capacity bounds a call");
        let sent2 = m
            .send(a.as_raw_fd(), msgs[8..].iter().map(Vec::as_slice), true)
            .unwrap();
        assert_eq!(sent2, 2);
        let mut bufs = vec![vec![0u8; 64]; 16];
        let mut got = Vec::new();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        while got.len() < 10 {
            let mut r = Mmsg::new(16);
            let n = r
                .recv(b.as_raw_fd(), bufs.iter_mut().map(Vec::as_mut_slice))
                .unwrap();
            for (i, buf) in bufs.iter().enumerate().take(n) {
                got.push(buf[..r.len(i)].to_vec());
            }
        }
        assert_eq!(got, msgs);

        // With UDP_SEGMENT, one 30-byte send arrives as three datagrams of 10.
        set_udp_segment(a.as_raw_fd(), 10).unwrap();
        let chunk = [5u8; 30];
        assert_eq!(m.send(a.as_raw_fd(), [&chunk[..]], true).unwrap(), 1);
        let mut r = Mmsg::new(16);
        let mut n = 0;
        while n < 3 {
            let k = r
                .recv(b.as_raw_fd(), bufs.iter_mut().map(Vec::as_mut_slice))
                .unwrap();
            assert!((0..k).all(|i| r.len(i) == 10));
            n += k;
        }
    }
}
