//! The TUN device (Linux): one multi-queue file descriptor per worker.
//!
//! Opened directly with the TUNSETIFF ioctl rather than through the `tun-tap` crate, which
//! has no multi-queue support and is unmaintained; the whole of it is these few calls.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::offload::{
    coalesce, finish_checksum, TsoLayout, VnetHdr, F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN,
};
use crate::buf::{Batch, Slot, SLOT_SIZE};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// Room for the largest super-packet the kernel hands over with TSO.
const BIG: usize = 65536 + 256;

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqMtu {
    name: [u8; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

/// One queue of a TUN device.
pub struct TunQueue {
    file: File,
    /// Offloads on: every packet carries a virtio-net header.
    vnet: bool,
    /// Where the tail of a super-packet lands; the head is read straight into a slot.
    big: Box<[u8]>,
    /// A super-packet being split across calls: its length in `big`, layout, next segment.
    pending: Option<(usize, TsoLayout, usize)>,
    /// Offloaded packets we could not split or finish (counted by the caller).
    pub malformed: u64,
    /// The last [`TunQueue::read_batch`] emptied the queue (it stopped at `EAGAIN` with
    /// nothing of a super-packet left): an edge-triggered poll can wait without reading
    /// again, since the next packet is a new edge.
    pub drained: bool,
}

fn ifname_bytes(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1-15 characters, no '/' or spaces)"),
        ));
    }
    let mut b = [0u8; libc::IFNAMSIZ];
    b[..name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

/// Create (or attach to) TUN device `name` with `queues` queues, non-blocking. With
/// `offload`, TSO and checksum offload are enabled (see [`super::offload`]); if the kernel
/// refuses, the device works without.
pub fn open(name: &str, queues: usize, offload: bool) -> io::Result<Vec<TunQueue>> {
    let ifname = ifname_bytes(name)?;
    let mut out = Vec::with_capacity(queues);
    for _ in 0..queues.max(1) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let vnet_flag = if offload { IFF_VNET_HDR } else { 0 };
        let mut req = IfReqFlags {
            name: ifname,
            flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | vnet_flag,
            _pad: [0; 22],
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReqFlags` lays out
        // (name, then the flags member of the union, padded to the full size).
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("creating TUN device {name}: {e}"),
            ));
        }
        let mut vnet = offload;
        if offload {
            let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes the flags as an unsigned long argument by value.
            let r =
                unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
            if r < 0 {
                // The fd still carries virtio headers, just never offloaded ones.
                tracing::debug!("TUN offloads refused: {}", io::Error::last_os_error());
            }
            vnet = true;
        }
        out.push(TunQueue {
            file,
            vnet,
            big: vec![0u8; BIG].into_boxed_slice(),
            pending: None,
            malformed: 0,
            drained: false,
        });
    }
    Ok(out)
}

impl TunQueue {
    /// The fd, for polling.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Read packets until the batch is full or the device has none. Returns the number read;
    /// `Err(WouldBlock)` when none was ready. Super-packets are split into segments here; a
    /// split that does not fit the batch goes on at the next call.
    pub fn read_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        let start = batch.len();
        self.drained = false;
        loop {
            if let Some((len, layout, next)) = self.pending.take() {
                let mut i = next;
                while i < layout.segments() {
                    let Some(slot) = batch.next_free() else {
                        self.pending = Some((len, layout, i));
                        return Ok(batch.len() - start);
                    };
                    slot.len = layout.segment(&self.big[..len], i, &mut slot.buf_mut()[..]);
                    slot.addr = None;
                    slot.truncated = false;
                    batch.commit();
                    i += 1;
                }
            }
            let Some(slot) = batch.next_free() else { break };
            let n = if self.vnet {
                let mut hdr = [0u8; VNET_HDR_LEN];
                let iov = [
                    libc::iovec {
                        iov_base: hdr.as_mut_ptr().cast(),
                        iov_len: VNET_HDR_LEN,
                    },
                    libc::iovec {
                        iov_base: slot.buf_mut().as_mut_ptr().cast(),
                        iov_len: SLOT_SIZE,
                    },
                    libc::iovec {
                        iov_base: self.big[SLOT_SIZE..].as_mut_ptr().cast(),
                        iov_len: BIG - SLOT_SIZE,
                    },
                ];
                // SAFETY: three iovecs over buffers we own, each with its true length.
                let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), 3) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    let n = (n as usize).saturating_sub(VNET_HDR_LEN);
                    let h = VnetHdr::decode(&hdr).unwrap_or_default();
                    if h.gso_type == GSO_NONE {
                        if n > SLOT_SIZE
                            || (h.flags & F_NEEDS_CSUM != 0
                                && finish_checksum(&mut slot.buf_mut()[..n], &h).is_err())
                        {
                            self.malformed += 1;
                            continue;
                        }
                        Ok(n)
                    } else {
                        // A super-packet: make it contiguous in `big` and split it.
                        self.big[..SLOT_SIZE].copy_from_slice(&slot.buf_mut()[..]);
                        match TsoLayout::parse(&self.big[..n], &h) {
                            Ok(l) if l.max_segment_len() <= SLOT_SIZE => {
                                self.pending = Some((n, l, 0))
                            }
                            _ => self.malformed += 1,
                        }
                        continue;
                    }
                }
            } else {
                // SAFETY: reads at most SLOT_SIZE bytes into a buffer of SLOT_SIZE bytes.
                let n =
                    unsafe { libc::read(self.fd(), slot.buf_mut().as_mut_ptr().cast(), SLOT_SIZE) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            };
            match n {
                Ok(n) => {
                    let slot = batch.next_free().expect("checked above");
                    slot.len = n;
                    slot.addr = None;
                    slot.truncated = false;
                    batch.commit();
                }
                Err(e) if batch.len() > start && e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = self.pending.is_none();
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(batch.len() - start)
    }

    /// Write every packet of the batch (empty slots are skipped). Returns how many failed. With offloads, runs of
    /// segments of one TCP flow are coalesced into one write (GRO).
    pub fn write_batch(&mut self, batch: &Batch) -> usize {
        let fd = self.file.as_raw_fd();
        let mut failed = 0;
        if self.vnet {
            coalesce(
                batch
                    .used()
                    .iter()
                    .map(Slot::data)
                    .filter(|d| !d.is_empty()),
                &mut self.big[..65535],
                |hdr, d| {
                    let iov = [
                        libc::iovec {
                            iov_base: hdr.as_ptr().cast_mut().cast(),
                            iov_len: VNET_HDR_LEN,
                        },
                        libc::iovec {
                            iov_base: d.as_ptr().cast_mut().cast(),
                            iov_len: d.len(),
                        },
                    ];
                    // SAFETY: two iovecs over live buffers; the kernel only reads them.
                    if unsafe { libc::writev(fd, iov.as_ptr(), 2) } < 0 {
                        failed += 1;
                    }
                },
            );
        } else {
            for s in batch.used() {
                let d = s.data();
                if d.is_empty() {
                    continue; // sent another way (a mesh neighbour's frame)
                }
                // SAFETY: writes `d.len()` bytes from a valid slice.
                if unsafe { libc::write(fd, d.as_ptr().cast(), d.len()) } < 0 {
                    failed += 1;
                }
            }
        }
        failed
    }
}

fn ctl_socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned immediately.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Set the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u16) -> io::Result<()> {
    let s = ctl_socket()?;
    let mut req = IfReqMtu {
        name: ifname_bytes(name)?,
        mtu: libc::c_int::from(mtu),
        _pad: [0; 20],
    };
    // SAFETY: SIOCSIFMTU reads a `struct ifreq` with the mtu member set.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface's MTU.
pub fn mtu(name: &str) -> io::Result<u16> {
    let s = ctl_socket()?;
    let mut req = IfReqMtu {
        name: ifname_bytes(name)?,
        mtu: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFMTU writes the mtu member of a `struct ifreq`.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::try_from(req.mtu).unwrap_or(u16::MAX))
}

/// `struct ifreq` with its `ifr_data` member.
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let s = ctl_socket()?;
    let mut v = EthtoolValue { cmd, data };
    let mut req = IfReqData {
        name: ifname_bytes(name)?,
        data: std::ptr::addr_of_mut!(v).cast(),
        _pad: [0; 16],
    };
    // SAFETY: SIOCETHTOOL reads the `struct ifreq` whose `ifr_data` points at `v`, a live
    // `struct ethtool_value`, which the kernel reads and (for a get) writes.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.data)
}

/// Turn generic receive offload of interface `name` off; whether it was on.
pub fn disable_gro(name: &str) -> io::Result<bool> {
    let was = ethtool_value(name, ETHTOOL_GGRO, 0)? != 0;
    if was {
        ethtool_value(name, ETHTOOL_SGRO, 0)?;
    }
    Ok(was)
}
