//! The default backend: the worker's UDP socket on the underlay (one per worker, all bound
//! to the WireGuard port with `SO_REUSEPORT`) and its queue of the multi-queue TUN device,
//! both edge-triggered in one `mio` poll, drained a batch from each in turn.
//!
//! With the AF_XDP underlay (`afxdp.rs`) the worker's XSKs join the same poll: datagrams
//! arrive through them, and leave through them whenever the next hop is resolved; the UDP
//! socket then carries only what the XDP program passed to the kernel and what goes out
//! before a neighbour is resolved.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::Socket;

use super::afxdp::{Frames, XdpTx, XdpWorker};
use super::{Device, RateLimitedWarn};
use crate::buf::Batch;
use crate::forward::{Sink, Worker};
use crate::io::backend::{Backend, Polled};
use crate::io::tun::TunQueue;
use crate::io::udp::{self, MmsgScratch};
use crate::stats::{DropReason, WorkerCounters};

const UDP: Token = Token(0);
const TUN: Token = Token(1);
const WAKE: Token = Token(2);
/// XSK `i` of the worker is `Token(XSK + i)`.
const XSK: usize = 3;

/// One worker's UDP socket and TUN queue.
pub(super) struct UdpTun {
    dev: Arc<Device>,
    /// Which of the device's sockets is ours.
    idx: usize,
    poll: Poll,
    events: Events,
    tunq: TunQueue,
    rx_udp: Batch,
    rx_tun: Batch,
    scratch: MmsgScratch,
    /// GRO receive buffers (1 MiB), unless `ISTHMUS_NO_GRO` is set.
    gro: Option<udp::GroArea>,
    /// The device's socket generation we are registered for (a rebind bumps it).
    gen: u64,
    socks: Arc<Vec<Socket>>,
    udp_fd: Option<i32>,
    udp_ready: bool,
    tun_ready: bool,
    warn: RateLimitedWarn,
    counters: Arc<WorkerCounters>,
    /// The worker's XSKs (AF_XDP backend), with a ready flag each.
    xdp: Option<XdpWorker>,
    xsk_ready: Vec<bool>,
    /// XSK batches since the kernel's XSK counters were last copied.
    xsk_batches: u32,
    /// The WireGuard port and fwmark, as of the last rebind.
    port: u16,
    fwmark: u32,
}

impl UdpTun {
    /// The backend of worker `idx`, with the waker that interrupts its poll.
    pub(super) fn new(
        dev: Arc<Device>,
        idx: usize,
        tunq: TunQueue,
        counters: Arc<WorkerCounters>,
        xdp: Option<XdpWorker>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let tfd = tunq.fd();
        poll.registry()
            .register(&mut SourceFd(&tfd), TUN, Interest::READABLE)?;
        let xsk_fds = xdp.as_ref().map(XdpWorker::fds).unwrap_or_default();
        for (i, fd) in xsk_fds.iter().enumerate() {
            poll.registry()
                .register(&mut SourceFd(fd), Token(XSK + i), Interest::READABLE)?;
        }
        let gro = std::env::var_os("ISTHMUS_NO_GRO")
            .is_none()
            .then(udp::GroArea::default);
        Ok((
            Self {
                dev,
                idx,
                poll,
                events: Events::with_capacity(64),
                tunq,
                rx_udp: Batch::default(),
                rx_tun: Batch::default(),
                scratch: MmsgScratch::default(),
                gro,
                gen: 0,
                socks: Arc::new(Vec::new()),
                udp_fd: None,
                udp_ready: false,
                tun_ready: true,
                warn: RateLimitedWarn::default(),
                counters,
                xdp,
                xsk_ready: vec![true; xsk_fds.len()],
                xsk_batches: 0,
                port: 0,
                fwmark: 0,
            },
            waker,
        ))
    }

    /// After a rebind (new port or fwmark), register the new socket instead of the old.
    fn follow_rebind(&mut self) {
        let g = self.dev.generation.load(SeqCst);
        if g == self.gen {
            return;
        }
        if let Some(fd) = self.udp_fd.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        self.socks = self.dev.sockets.load_full();
        (self.port, self.fwmark) = self.dev.port_and_mark();
        if !self.socks.is_empty() {
            let fd = self.socks[self.idx % self.socks.len()].as_raw_fd();
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&fd), UDP, Interest::READABLE)
                .is_ok()
            {
                self.udp_fd = Some(fd);
                self.udp_ready = true;
            }
        }
        self.gen = g;
    }

    /// Wait for either source to become readable.
    fn wait(&mut self, timeout: Duration) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                self.warn.warn(&format!("poll: {e}"));
            }
            return;
        }
        for ev in &self.events {
            match ev.token() {
                UDP => self.udp_ready = true,
                TUN => self.tun_ready = true,
                Token(t) if t >= XSK && t - XSK < self.xsk_ready.len() => {
                    self.xsk_ready[t - XSK] = true;
                }
                _ => {}
            }
        }
    }

    /// One receive from the UDP socket, handed to the worker.
    fn udp_batch(&mut self, worker: &mut Worker) {
        let Some(fd) = self.udp_fd else {
            self.udp_ready = false;
            return;
        };
        let got = match &mut self.gro {
            Some(area) => area.recv(fd),
            None => udp::recv_batch(fd, &mut self.rx_udp, &mut self.scratch),
        };
        match got {
            Ok(n) => {
                // A short batch emptied the socket: the next datagram is a new edge, so
                // there is no need for a read that would only say EAGAIN (a syscall less
                // per wake-up, on the latency path).
                let full = match &self.gro {
                    Some(_) => udp::GRO_MSGS,
                    None => self.rx_udp.capacity().min(crate::buf::BATCH_SIZE),
                };
                if n < full {
                    self.udp_ready = false;
                }
                let mut sink = RealSink {
                    udp_fd: fd,
                    tun: Some(&mut self.tunq),
                    scratch: &mut self.scratch,
                    counters: &self.counters,
                    xdp: self.xdp.as_mut().map(|x| x.tx(self.port, self.fwmark)),
                };
                match &mut self.gro {
                    Some(area) => worker.handle_segments(area.segments(), &mut sink),
                    None => worker.handle_datagrams(&mut self.rx_udp, &mut sink),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.udp_ready = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ICMP errors surface as ECONNREFUSED etc.; keep going.
            Err(e) => self.warn.warn(&format!("udp receive: {e}")),
        }
    }

    /// One read from the TUN queue, handed to the worker. `false` when the device is gone.
    fn tun_batch(&mut self, worker: &mut Worker) -> bool {
        let res = self.tunq.read_batch(&mut self.rx_tun);
        if self.tunq.malformed > 0 {
            self.counters.drops[DropReason::BadInnerPacket as usize].add(self.tunq.malformed);
            self.tunq.malformed = 0;
        }
        match res {
            Ok(_) => {
                if self.tunq.drained {
                    self.tun_ready = false;
                }
                let mut sink = RealSink {
                    udp_fd: self.udp_fd.unwrap_or(-1),
                    tun: Some(&mut self.tunq),
                    scratch: &mut self.scratch,
                    counters: &self.counters,
                    xdp: self.xdp.as_mut().map(|x| x.tx(self.port, self.fwmark)),
                };
                worker.handle_tun(&mut self.rx_tun, &mut sink);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tun_ready = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::info!(ifname = %self.dev.ifname, %e, "TUN device gone; shutting down");
                return false;
            }
        }
        true
    }

    /// One batch from XSK `i`, handed to the worker.
    fn xsk_batch(&mut self, i: usize, worker: &mut Worker) {
        let Some(xdp) = self.xdp.as_mut() else {
            return;
        };
        let udp_fd = self.udp_fd.unwrap_or(-1);
        let (tunq, scratch, counters) = (&mut self.tunq, &mut self.scratch, &self.counters);
        let more = xdp.receive(i, counters, self.port, self.fwmark, |frames, tx| {
            let mut sink = RealSink {
                udp_fd,
                tun: Some(tunq),
                scratch,
                counters,
                xdp: Some(tx),
            };
            match frames {
                Frames::Datagrams(segs) => worker.handle_segments(segs, &mut sink),
                Frames::Packets(pkts) => worker.handle_mesh(pkts, &mut sink),
            }
        });
        if !more {
            self.xsk_ready[i] = false;
        }
        self.xsk_batches += 1;
        if self.xsk_batches >= 1024 {
            self.refresh_xsk_stats();
        }
    }

    /// Copy the kernel's XSK drop counters into ours (when idle, and every 1024 batches).
    fn refresh_xsk_stats(&mut self) {
        self.xsk_batches = 0;
        if let Some(x) = &self.xdp {
            x.refresh_stats(&self.counters);
        }
    }

    fn any_ready(&self) -> bool {
        self.udp_ready || self.tun_ready || self.xsk_ready.iter().any(|&r| r)
    }
}

impl Backend for UdpTun {
    fn poll(&mut self, worker: &mut Worker, timeout: Duration) -> io::Result<Polled> {
        self.follow_rebind();
        if !self.any_ready() {
            self.wait(timeout);
            if !self.any_ready() {
                self.refresh_xsk_stats();
                return Ok(Polled::Idle);
            }
        }
        for i in 0..self.xsk_ready.len() {
            if self.xsk_ready[i] {
                self.xsk_batch(i, worker);
            }
        }
        // Edge-triggered: each source is drained to WouldBlock over successive polls, a
        // batch from each in turn.
        if self.udp_ready {
            self.udp_batch(worker);
        }
        if self.tun_ready && !self.tun_batch(worker) {
            return Ok(Polled::Closed);
        }
        Ok(Polled::Busy)
    }
}

/// Output of a worker (or of the timer, handshake and inject paths, which have no TUN queue).
pub(super) struct RealSink<'a> {
    pub(super) udp_fd: i32,
    pub(super) tun: Option<&'a mut TunQueue>,
    pub(super) scratch: &'a mut MmsgScratch,
    pub(super) counters: &'a WorkerCounters,
    /// The worker's XSKs, on the AF_XDP backend.
    pub(super) xdp: Option<XdpTx<'a>>,
}

impl Sink for RealSink<'_> {
    fn mesh_link(&mut self, ifindex: u32, addr: std::net::IpAddr) -> Option<u16> {
        self.xdp.as_mut()?.mesh_link(ifindex, addr, self.counters)
    }

    fn send_udp(&mut self, batch: &mut Batch) -> usize {
        // Through the XSKs what can go there; those slots are unaddressed afterwards, and
        // the kernel's socket (which counts an unaddressed slot as failed) takes the rest.
        let by_xsk = match &mut self.xdp {
            Some(x) => x.send(batch, self.counters),
            None => 0,
        };
        if by_xsk == batch.len() {
            batch.clear();
            return 0;
        }
        let failed = if self.udp_fd >= 0 {
            udp::send_batch(self.udp_fd, batch, self.scratch)
        } else {
            batch.len()
        }
        .saturating_sub(by_xsk);
        if failed > 0 {
            self.counters.drops[DropReason::TxError as usize].add(failed as u64);
        }
        batch.clear();
        failed
    }

    fn write_tun(&mut self, batch: &mut Batch) {
        // Frames to mesh neighbours through the XSKs; the TUN device takes the rest.
        let by_xsk = match &mut self.xdp {
            Some(x) => x.send_frames(batch, self.counters),
            None => 0,
        };
        if by_xsk == batch.len() {
            batch.clear();
            return;
        }
        let failed = self.tun.as_mut().map_or(0, |t| t.write_batch(batch));
        if failed > 0 {
            self.counters.drops[DropReason::TxError as usize].add(failed as u64);
        }
        batch.clear();
    }
}
