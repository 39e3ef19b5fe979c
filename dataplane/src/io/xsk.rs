//! AF_XDP sockets: a UMEM (one mapping of equal frames shared with the kernel) and the four
//! single-producer single-consumer rings around it.
//!
//! ```text
//!            fill ring ──► kernel writes a received frame ──► rx ring
//!  user space                                                     user space
//!            tx ring   ──► kernel sends the frame         ──► completion ring
//! ```
//!
//! One XSK ([`open`]: an [`XskRx`], an [`XskTx`] and their [`XskOwner`]) per (interface, queue), each with its own UMEM, owned by one worker: no locks,
//! and the only atomics are the rings' producer and consumer indices (acquire on the other
//! side's index, release on our own). Frames are [`FRAME`] bytes; half of them are lent to
//! the kernel for receiving, half are ours for sending.
//!
//! Written against `<linux/if_xdp.h>` directly: the ring protocol is a few loads and stores,
//! and the crates that wrap it either bring C libraries through bindgen (xsk-rs → libxdp) or
//! a copyleft licence into this BSD project (xdpilone, EUPL-1.2).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// Bytes per UMEM frame (a power of two; the largest frame we send or take is 1518 bytes
/// plus headroom).
pub const FRAME: usize = 2048;
/// Frames per UMEM: half for receiving, half for sending.
pub const FRAMES: usize = 4096;
/// Entries of each ring.
const RING: u32 = 2048;

/// How the socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// The NIC's DMA writes straight into the UMEM.
    ZeroCopy,
    /// The kernel copies between its buffers and the UMEM.
    Copy,
}

impl BindMode {
    /// As logged and in config (`zerocopy`, `copy`).
    pub fn as_str(self) -> &'static str {
        match self {
            BindMode::ZeroCopy => "zerocopy",
            BindMode::Copy => "copy",
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct xdp_desc`: a frame in the UMEM.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Desc {
    /// Offset of the data in the UMEM.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    options: u32,
}

/// One mapped ring of `T` (descriptors or frame addresses).
struct Ring<T> {
    map: NonNull<libc::c_void>,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    /// Our copy of our own index, and the last seen value of the other side's.
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: &RingOffset, pgoff: libc::off_t) -> io::Result<Ring<T>> {
        let map_len = off.desc as usize + RING as usize * std::mem::size_of::<T>();
        // SAFETY: a shared read/write mapping of the ring the kernel created for `fd`; the
        // result is checked, and the mapping is unmapped in `drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        // SAFETY: the offsets come from the kernel (XDP_MMAP_OFFSETS) and lie inside the
        // mapping; the indices are u32s the kernel updates atomically.
        let ring = unsafe {
            Ring {
                map: NonNull::new_unchecked(p),
                map_len,
                producer: base.add(off.producer as usize).cast(),
                consumer: base.add(off.consumer as usize).cast(),
                flags: base.add(off.flags as usize).cast(),
                descs: base.add(off.desc as usize).cast(),
                mask: RING - 1,
                cached_prod: 0,
                cached_cons: 0,
            }
        };
        let mut ring = ring;
        ring.cached_prod = ring.producer().load(Ordering::Relaxed);
        ring.cached_cons = ring.consumer().load(Ordering::Relaxed);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping (see `map`), aligned by the kernel.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as `producer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    // ---- as producer (fill, tx) ----

    /// Entries we may write now, at least `want` if the ring has room for them: the cached
    /// consumer index is refreshed when it shows fewer (a count from a stale index is too
    /// small, never too large).
    fn free(&mut self, want: u32) -> u32 {
        let free = RING - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= want {
            return free;
        }
        self.cached_cons = self.consumer().load(Ordering::Acquire);
        RING - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Write one entry (after [`Ring::free`] said there is room); published by `submit`.
    fn push(&mut self, v: T) {
        // SAFETY: the slot at our producer index is ours until we publish it (free() > 0),
        // and the index is masked into the ring.
        unsafe {
            self.descs
                .add((self.cached_prod & self.mask) as usize)
                .write(v)
        };
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }

    fn submit(&self) {
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    // ---- as consumer (rx, completion) ----

    /// Entries ready to read, refreshing the cached producer index when it shows fewer
    /// than `want`.
    fn ready(&mut self, want: u32) -> u32 {
        let n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n >= want {
            return n;
        }
        self.cached_prod = self.producer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    fn take(&mut self) -> T {
        // SAFETY: ready() > 0: the kernel published this slot and will not touch it until
        // we release it.
        let v = unsafe {
            self.descs
                .add((self.cached_cons & self.mask) as usize)
                .read()
        };
        self.cached_cons = self.cached_cons.wrapping_add(1);
        v
    }

    fn release(&self) {
        self.consumer().store(self.cached_cons, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing uses after this.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// The UMEM: `FRAMES` frames of `FRAME` bytes, anonymous memory registered with the socket.
struct Umem {
    base: NonNull<u8>,
    len: usize,
}

impl Umem {
    fn new() -> io::Result<Umem> {
        let len = FRAME * FRAMES;
        // SAFETY: a private anonymous mapping; checked, unmapped in drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Umem {
            // SAFETY: mmap succeeded, so `p` is not null.
            base: unsafe { NonNull::new_unchecked(p.cast()) },
            len,
        })
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unused after this: the halves that point into it
        // are dropped first (see `XskOwner`); the kernel keeps its own reference to the pages
        // until the socket closes.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Kernel statistics of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct XskStats {
    /// Dropped for reasons other than a full rx ring or an empty fill ring.
    pub rx_dropped: u64,
    /// Dropped because a descriptor was invalid.
    pub rx_invalid_descs: u64,
    /// Invalid tx descriptors.
    pub tx_invalid_descs: u64,
    /// Dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Frames the kernel could not take because the fill ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the tx ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// The socket and its UMEM; dropped after the [`XskRx`] and [`XskTx`] made with it (keep it
/// in a field after theirs).
pub struct XskOwner {
    fd: OwnedFd,
    _umem: Umem,
}

impl XskOwner {
    /// The socket, for poll and the XSK map.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Ask the kernel to busy-poll this socket's queue (`SO_PREFER_BUSY_POLL`, with
    /// `SO_BUSY_POLL` µs and a budget of `budget` packets).
    pub fn busy_poll(&self, usecs: u32, budget: u32) -> io::Result<()> {
        let raw = self.raw_fd();
        setsockopt(raw, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, &1i32)?;
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_BUSY_POLL, &(usecs as i32))?;
        setsockopt(raw, libc::SOL_SOCKET, SO_BUSY_POLL_BUDGET, &(budget as i32))
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> io::Result<XskStats> {
        let mut s = XskStats::default();
        let mut len = std::mem::size_of::<XskStats>() as libc::socklen_t;
        // SAFETY: `s` is a live buffer of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                self.raw_fd(),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut s as *mut XskStats).cast(),
                &mut len,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(s)
        }
    }
}

/// The receiving half: rx and fill rings, and the frames of the batch last received.
pub struct XskRx {
    rx: Ring<Desc>,
    fill: Ring<u64>,
    base: NonNull<u8>,
    fd: RawFd,
    /// The frames taken by the last [`XskRx::receive`], ours until [`XskRx::recycle`].
    got: Vec<Desc>,
    /// Frames of ours that did not fit in the fill ring yet (see `recycle`).
    unfilled: Vec<u64>,
}

/// The sending half: tx and completion rings, and our free frames.
pub struct XskTx {
    tx: Ring<Desc>,
    comp: Ring<u64>,
    base: NonNull<u8>,
    fd: RawFd,
    /// Frames of ours that are free for sending.
    free: Vec<u64>,
    /// Descriptors queued on the tx ring since the last kick.
    pending: u32,
}

// SAFETY: each half is owned and used by one thread at a time (a worker); its raw pointers
// point into mappings that its `XskOwner` keeps alive, and the kernel side is synchronised
// through the rings' atomics. The two halves touch disjoint frames (the rx frames were never
// on the tx free list and vice versa).
unsafe impl Send for XskRx {}
// SAFETY: as for `XskRx`.
unsafe impl Send for XskTx {}
// SAFETY: the owner's UMEM pointer is never dereferenced through it.
unsafe impl Send for XskOwner {}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Open an XSK on queue `queue` of interface `ifindex`, bound in `mode`, with its own UMEM:
/// half the frames lent to the kernel for receiving, half free for sending.
pub fn open(ifindex: u32, queue: u32, mode: BindMode) -> io::Result<(XskRx, XskTx, XskOwner)> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    let umem = Umem::new()?;

    #[repr(C)]
    struct UmemReg {
        addr: u64,
        len: u64,
        chunk_size: u32,
        headroom: u32,
        flags: u32,
        tx_metadata_len: u32,
    }
    let reg = UmemReg {
        addr: umem.base.as_ptr() as u64,
        len: umem.len as u64,
        chunk_size: FRAME as u32,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(raw, SOL_XDP, XDP_UMEM_REG, &reg)?;
    for opt in [
        XDP_UMEM_FILL_RING,
        XDP_UMEM_COMPLETION_RING,
        XDP_RX_RING,
        XDP_TX_RING,
    ] {
        setsockopt(raw, SOL_XDP, opt, &RING)?;
    }
    let mut off = MmapOffsets::default();
    let mut len = std::mem::size_of::<MmapOffsets>() as libc::socklen_t;
    // SAFETY: `off` is a live buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            raw,
            SOL_XDP,
            XDP_MMAP_OFFSETS,
            (&mut off as *mut MmapOffsets).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let rx = Ring::map(raw, &off.rx, XDP_PGOFF_RX_RING)?;
    let tx = Ring::map(raw, &off.tx, XDP_PGOFF_TX_RING)?;
    let fill = Ring::map(raw, &off.fr, XDP_UMEM_PGOFF_FILL_RING)?;
    let comp = Ring::map(raw, &off.cr, XDP_UMEM_PGOFF_COMPLETION_RING)?;

    #[repr(C)]
    struct SockaddrXdp {
        family: u16,
        flags: u16,
        ifindex: u32,
        queue_id: u32,
        shared_umem_fd: u32,
    }
    let sa = SockaddrXdp {
        family: AF_XDP as u16,
        flags: XDP_USE_NEED_WAKEUP
            | match mode {
                BindMode::ZeroCopy => XDP_ZEROCOPY,
                BindMode::Copy => XDP_COPY,
            },
        ifindex,
        queue_id: queue,
        shared_umem_fd: 0,
    };
    // SAFETY: `sa` is a live sockaddr_xdp of the size passed.
    let r = unsafe {
        libc::bind(
            raw,
            (&sa as *const SockaddrXdp).cast(),
            std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let base = umem.base;
    let mut rx = XskRx {
        rx,
        fill,
        base,
        fd: raw,
        got: Vec::with_capacity(64),
        unfilled: Vec::new(),
    };
    // Lend the first half of the frames to the kernel for receiving.
    let n = (FRAMES / 2).min(rx.fill.free(RING) as usize);
    for i in 0..n {
        rx.fill.push((i * FRAME) as u64);
    }
    rx.fill.submit();
    let tx = XskTx {
        tx,
        comp,
        base,
        fd: raw,
        free: (FRAMES / 2..FRAMES).map(|i| (i * FRAME) as u64).collect(),
        pending: 0,
    };
    Ok((rx, tx, XskOwner { fd, _umem: umem }))
}

fn in_umem(d: Desc) -> bool {
    (d.addr as usize)
        .checked_add(d.len as usize)
        .is_some_and(|end| end <= FRAME * FRAMES)
        && d.len as usize <= FRAME
}

impl XskRx {
    /// Take up to `max` received frames (returning those of the previous batch first);
    /// how many.
    pub fn receive(&mut self, max: usize) -> usize {
        self.recycle();
        let n = (self.rx.ready(max as u32) as usize).min(max);
        for _ in 0..n {
            let d = self.rx.take();
            // The kernel never hands out a descriptor outside the UMEM; should one appear,
            // its frame is lost rather than trusted.
            if in_umem(d) {
                self.got.push(d);
            }
        }
        if n > 0 {
            self.rx.release();
        }
        self.got.len()
    }

    /// The frames of the last batch, each borrowed mutably once.
    pub fn frames(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        let base = self.base;
        self.got.iter().map(move |d| {
            // SAFETY: each descriptor of `got` is a distinct frame inside the UMEM (checked in
            // `receive`) that the kernel handed us and will not touch until `recycle`, which
            // needs `&mut self` and so cannot run while these slices live; the tx half never
            // writes rx frames.
            unsafe {
                std::slice::from_raw_parts_mut(base.as_ptr().add(d.addr as usize), d.len as usize)
            }
        })
    }

    /// Give the last batch's frames back to the kernel.
    pub fn recycle(&mut self) {
        if self.got.is_empty() && self.unfilled.is_empty() {
            return;
        }
        self.unfilled
            .extend(self.got.drain(..).map(|d| d.addr & !(FRAME as u64 - 1)));
        // We lend RING frames, so once the consumer index is fresh they all fit; a frame that
        // did not would be lost to the kernel for good, so it waits for the next call.
        let want = self.unfilled.len() as u32;
        let n = self.unfilled.len().min(self.fill.free(want) as usize);
        debug_assert_eq!(
            n,
            self.unfilled.len(),
            "the fill ring is smaller than our frames"
        );
        for &a in &self.unfilled[..n] {
            self.fill.push(a);
        }
        self.fill.submit();
        self.unfilled.drain(..n);
        if self.fill.needs_wakeup() {
            // Zero-copy drivers want a wake-up to use the new fill entries.
            // SAFETY: a zero-length, non-blocking receive on our socket.
            unsafe {
                libc::recvfrom(
                    self.fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }
}

impl XskTx {
    /// Reclaim frames whose transmission completed.
    fn reclaim(&mut self) {
        let n = self.comp.ready(RING);
        for _ in 0..n {
            let a = self.comp.take();
            self.free.push(a & !(FRAME as u64 - 1));
        }
        if n > 0 {
            self.comp.release();
        }
    }

    /// Build one frame with `fill` (given a `FRAME`-byte buffer, it returns the frame's
    /// length, 0 for none) and queue it; `false` when no frame or ring slot is free.
    pub fn send_with(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.free.is_empty() {
            self.reclaim();
        }
        if self.tx.free(1) == 0 {
            self.kick();
            if self.tx.free(1) == 0 {
                return false;
            }
        }
        let Some(addr) = self.free.pop() else {
            return false;
        };
        // SAFETY: `addr` is a frame of our free list (inside the UMEM, FRAME bytes), which
        // neither the kernel nor the rx half uses until we queue it.
        let buf =
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(addr as usize), FRAME) };
        let len = fill(buf);
        if len == 0 || len > FRAME {
            self.free.push(addr);
            return len == 0;
        }
        self.tx.push(Desc {
            addr,
            len: len as u32,
            options: 0,
        });
        self.pending += 1;
        true
    }

    /// Publish the queued frames and wake the kernel to send them.
    pub fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.kick();
        self.reclaim();
    }

    fn kick(&mut self) {
        self.tx.submit();
        self.pending = 0;
        if !self.tx.needs_wakeup() {
            return;
        }
        // In copy mode the kernel sends at most 32 frames per call and says EAGAIN while
        // more are queued.
        for _ in 0..RING / 32 + 1 {
            // SAFETY: a zero-length send on our socket: the XSK "wake up and transmit".
            let r = unsafe {
                libc::sendto(
                    self.fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r >= 0 {
                break;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                // ENOBUFS, EBUSY, ENETDOWN: the frames stay queued for the next kick.
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, with the kernel's side played by the test.
    struct FakeRing {
        prod: AtomicU32,
        cons: AtomicU32,
        flags: AtomicU32,
        slots: Vec<u64>,
    }

    fn ring(f: &mut FakeRing) -> std::mem::ManuallyDrop<Ring<u64>> {
        // Never dropped: there is no mapping to unmap.
        std::mem::ManuallyDrop::new(Ring {
            map: NonNull::dangling(),
            map_len: 0,
            producer: &f.prod,
            consumer: &f.cons,
            flags: &f.flags,
            descs: f.slots.as_mut_ptr(),
            mask: RING - 1,
            cached_prod: 0,
            cached_cons: 0,
        })
    }

    /// A producer whose cached view of the consumer is stale must still see room for a
    /// whole batch once the consumer has made it: a count from the stale index once lost
    /// the rest of every batch of rx frames, until the fill ring ran dry.
    #[test]
    fn free_refreshes_a_stale_consumer_index_for_a_batch() {
        let mut f = FakeRing {
            prod: AtomicU32::new(0),
            cons: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            slots: vec![0; RING as usize],
        };
        let mut r = ring(&mut f);
        // Fill all but one entry; the consumer ("kernel") then takes 64 of them.
        for i in 0..RING - 1 {
            assert!(r.free(1) >= 1);
            r.push(u64::from(i));
        }
        r.submit();
        assert_eq!(r.free(1), 1, "one entry left, cached");
        f.cons.store(64, Ordering::Release);
        assert_eq!(
            r.free(64),
            65,
            "the consumer's progress is seen when a batch needs it"
        );
        // And a consumer view: entries ready, refreshed when fewer than wanted are cached.
        f.prod.store(RING - 1, Ordering::Release);
        let mut c = ring(&mut f);
        (c.cached_prod, c.cached_cons) = (64, 64);
        assert_eq!(c.ready(1), RING - 1 - 64);
    }
}
