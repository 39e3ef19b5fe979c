//! The AF_XDP underlay: the WireGuard port served through XSKs instead of the kernel's UDP
//! stack.
//!
//! Per underlay interface ([`Underlay`]): the XDP program (`io::xdp_prog`) attached through
//! a BPF link (native XDP, else generic), one XSK per receive queue (zero-copy, else copy
//! mode), the queues dealt out to the workers in turn. Per worker ([`XdpWorker`]): its XSKs
//! and a cache of where each destination goes ([`Resolver`]: the kernel's route and
//! neighbour tables over netlink). The kernel's UDP socket stays bound: it serves what the
//! program passes (a queue without an XSK, IP options, fragments) and sends a datagram
//! whose next hop has no link-layer address yet, which makes the kernel resolve it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::io::bpf::{action, Link, XdpMode};
use crate::io::ifaddr;
use crate::io::netlink::Netlink;
use crate::io::xdp_prog::XdpProgram;
use crate::io::xsk::{self, BindMode, XskOwner, XskRx, XskTx};
use crate::stats::{DropReason, WorkerCounters, XskDrop};
use crate::wire::ether::{self, Macs};

/// How the AF_XDP backend is set up (`[interface] backend = "afxdp"` and its keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfXdpOptions {
    /// Underlay interfaces; empty: the interfaces of the routes to the peers' endpoints
    /// (resolved by the caller before start).
    pub underlay: Vec<String>,
    /// Force native or generic XDP (default: native where the driver has it).
    pub xdp_mode: Option<XdpMode>,
    /// Force zero-copy or copy mode (default: zero-copy where the driver has it).
    pub bind_mode: Option<BindMode>,
    /// Busy-poll the queues for this many µs (`SO_PREFER_BUSY_POLL`), off by default.
    pub busy_poll_us: Option<u32>,
}

/// Received frames taken per XSK per poll.
const RX_BATCH: usize = 64;
/// How long a resolved path is used before it is looked up again.
const PATH_TTL: Duration = Duration::from_secs(1);
/// How long a destination with an unresolved neighbour goes through the kernel before we
/// look again.
const UNRESOLVED_TTL: Duration = Duration::from_millis(50);
/// Destinations cached per worker (peers' endpoints; the cache is reset when full).
const MAX_PATHS: usize = 65_536;

/// One underlay interface with its program attached.
pub(super) struct Underlay {
    pub(super) name: String,
    prog: XdpProgram,
    /// Detaches the program when dropped.
    _link: Link,
}

impl Underlay {
    /// Make the program redirect exactly `port` on the interface's current addresses.
    pub(super) fn follow_addresses(&self, port: u16) -> io::Result<()> {
        let want: Vec<SocketAddr> = ifaddr::addresses(&self.name)?
            .into_iter()
            .map(|a| SocketAddr::new(a.addr, port))
            .collect();
        self.prog.set_locals(&want)
    }
}

/// The sending half of one XSK of a worker, and where it leads.
struct Port {
    tx: XskTx,
    ifindex: u32,
    mac: [u8; 6],
}

/// A worker's XSKs, as the setup deals them out.
#[derive(Default)]
struct Dealt {
    rx: Vec<XskRx>,
    tx: Vec<Port>,
    owners: Vec<XskOwner>,
}

fn mac_of(name: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| io::Error::other(format!("{name} has no Ethernet address")))?;
    }
    Ok(mac)
}

fn rx_queues(name: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// Attach to every underlay interface and open its XSKs; the XSKs are returned per worker.
pub(super) fn setup(
    opts: &AfXdpOptions,
    workers: usize,
    port: u16,
) -> io::Result<(Vec<Underlay>, Vec<XdpWorker>)> {
    if opts.underlay.is_empty() {
        return Err(io::Error::other(
            "backend afxdp: no underlay interface (name them with `underlay`, or give the peers endpoints)",
        ));
    }
    let mut dealt: Vec<Dealt> = (0..workers).map(|_| Dealt::default()).collect();
    let mut ifaces = Vec::new();
    for name in &opts.underlay {
        let fail =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{name}: {what}: {e}"));
        let ifindex = ifaddr::ifindex(name).map_err(|e| fail("no such interface", e))?;
        let mac = mac_of(name).map_err(|e| fail("link-layer address", e))?;
        let queues = rx_queues(name);
        let prog = XdpProgram::load(queues, action::PASS)
            .map_err(|e| fail("loading the XDP program", e))?;
        let modes = match opts.xdp_mode {
            Some(m) => vec![m],
            None => vec![XdpMode::Native, XdpMode::Generic],
        };
        let mut attached = None;
        let mut last = None;
        for m in modes {
            match prog.prog.attach_xdp(ifindex, m) {
                Ok(link) => {
                    attached = Some((link, m));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some((link, xdp_mode)) = attached else {
            return Err(fail(
                "attaching the XDP program",
                last.unwrap_or_else(|| io::Error::other("no mode")),
            ));
        };
        let binds = match (opts.bind_mode, xdp_mode) {
            (Some(b), _) => vec![b],
            // Generic XDP hands over SKBs: there is nothing to map zero-copy.
            (None, XdpMode::Generic) => vec![BindMode::Copy],
            (None, XdpMode::Native) => vec![BindMode::ZeroCopy, BindMode::Copy],
        };
        let mut bound = BindMode::Copy;
        for q in 0..queues {
            let mut got = None;
            let mut last = None;
            for &b in &binds {
                match xsk::open(ifindex, q, b) {
                    Ok(x) => {
                        got = Some((x, b));
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let ((rx, tx, owner), mode) = got.ok_or_else(|| {
                fail(
                    &format!("binding an XDP socket to queue {q}"),
                    last.unwrap_or_else(|| io::Error::other("no mode")),
                )
            })?;
            if let Some(us) = opts.busy_poll_us {
                if let Err(e) = owner.busy_poll(us, RX_BATCH as u32) {
                    tracing::warn!(%e, "{name}: busy polling not available");
                }
            }
            bound = mode;
            prog.set_xsk(q, owner.raw_fd())
                .map_err(|e| fail("adding the socket to the XSK map", e))?;
            // Queue q of every interface goes to worker q % workers, so that a worker that
            // receives on an interface's queue q can also send on the others' queue q: on
            // single-queue links (veth, small boxes) one worker holds all the XSKs.
            let w = &mut dealt[q as usize % workers];
            w.rx.push(rx);
            w.tx.push(Port { tx, ifindex, mac });
            w.owners.push(owner);
        }
        if (queues as usize) < workers {
            tracing::info!(
                "{name}: {queues} queue(s) for {workers} workers: workers {}..{} send to it through the kernel",
                queues,
                workers - 1
            );
        }
        let u = Underlay {
            name: name.clone(),
            prog,
            _link: link,
        };
        u.follow_addresses(port)
            .map_err(|e| fail("setting the local addresses", e))?;
        tracing::info!(
            "AF_XDP on {name}: {} XDP, {} mode, {queues} queue(s)",
            xdp_mode.as_str(),
            bound.as_str()
        );
        ifaces.push(u);
    }
    let workers = dealt
        .into_iter()
        .map(|d| XdpWorker {
            rx: d.rx,
            ports: d.tx,
            owners: d.owners,
            resolver: Resolver::default(),
        })
        .collect();
    Ok((ifaces, workers))
}

/// Where datagrams to one destination go.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// Through this worker's XSK `port`, from `src`.
    Xsk {
        port: usize,
        src: IpAddr,
        macs: Macs,
    },
    /// Through the kernel: not an underlay interface of this worker, or no source address.
    Kernel,
    /// Through the kernel, counted: the next hop's link-layer address is not known yet.
    Unresolved,
}

/// Per-worker cache of the kernel's answer for each destination.
#[derive(Default)]
struct Resolver {
    nl: Option<Netlink>,
    cache: HashMap<IpAddr, (Instant, Hop)>,
}

impl Resolver {
    fn hop(&mut self, dst: IpAddr, now: Instant, ports: &[Port], fwmark: u32) -> Hop {
        if let Some(&(until, hop)) = self.cache.get(&dst) {
            if until > now {
                return hop;
            }
        }
        let hop = self.look_up(dst, ports, fwmark);
        let ttl = if matches!(hop, Hop::Unresolved) {
            UNRESOLVED_TTL
        } else {
            PATH_TTL
        };
        if self.cache.len() >= MAX_PATHS {
            self.cache.clear();
        }
        self.cache.insert(dst, (now + ttl, hop));
        hop
    }

    fn look_up(&mut self, dst: IpAddr, ports: &[Port], fwmark: u32) -> Hop {
        if self.nl.is_none() {
            self.nl = Netlink::open().ok();
        }
        let Some(nl) = self.nl.as_mut() else {
            return Hop::Kernel;
        };
        let Ok(route) = nl.route_to(dst, fwmark) else {
            return Hop::Kernel;
        };
        let (Some(port), Some(src)) = (
            ports.iter().position(|p| p.ifindex == route.ifindex),
            route.src,
        ) else {
            return Hop::Kernel;
        };
        match nl.neighbour(route.ifindex, route.next_hop) {
            Ok(Some(mac)) => Hop::Xsk {
                port,
                src,
                macs: Macs {
                    src: ports[port].mac,
                    dst: mac,
                },
            },
            _ => Hop::Unresolved,
        }
    }
}

/// A worker's XSKs.
pub(super) struct XdpWorker {
    // Field order matters: the halves are dropped before their owners.
    rx: Vec<XskRx>,
    ports: Vec<Port>,
    owners: Vec<XskOwner>,
    resolver: Resolver,
}

impl XdpWorker {
    /// The XSKs' descriptors, for the worker's poll.
    pub(super) fn fds(&self) -> Vec<i32> {
        self.owners.iter().map(XskOwner::raw_fd).collect()
    }
}

/// The underlay side of a worker's sink on the AF_XDP backend.
pub(super) struct XdpTx<'a> {
    ports: &'a mut [Port],
    resolver: &'a mut Resolver,
    /// Our WireGuard port (the source port of what we send).
    pub(super) port: u16,
    pub(super) fwmark: u32,
}

impl XdpTx<'_> {
    /// Send what can go through an XSK; the slots sent are unaddressed afterwards (so that
    /// the kernel path skips them). Returns how many went out.
    pub(super) fn send(
        &mut self,
        batch: &mut crate::buf::Batch,
        counters: &WorkerCounters,
    ) -> usize {
        let now = Instant::now();
        let mut sent = 0;
        let mut used = 0u64;
        for i in 0..batch.len() {
            let slot = batch.slot_mut(i);
            let Some(dst) = slot.addr else { continue };
            match self.resolver.hop(dst.ip(), now, self.ports, self.fwmark) {
                Hop::Xsk { port, src, macs } => {
                    let src = SocketAddr::new(src, self.port);
                    let data = slot.data();
                    if self.ports[port]
                        .tx
                        .send_with(|buf| ether::build_udp(buf, macs, src, dst, data))
                    {
                        slot.addr = None;
                        sent += 1;
                        used |= 1 << (port % 64);
                    }
                }
                Hop::Kernel => {}
                Hop::Unresolved => counters.xdp_neigh_fallback.add(1),
            }
        }
        for (k, p) in self.ports.iter_mut().enumerate() {
            if used & (1 << (k % 64)) != 0 {
                p.tx.flush();
            }
        }
        counters.xdp_tx.add(sent as u64);
        sent
    }
}

impl XdpWorker {
    /// The sink half for the underlay.
    pub(super) fn tx(&mut self, port: u16, fwmark: u32) -> XdpTx<'_> {
        XdpTx {
            ports: &mut self.ports,
            resolver: &mut self.resolver,
            port,
            fwmark,
        }
    }

    /// Take a batch from XSK `i` and give `handle` its datagrams (slices of the received
    /// frames, which are parsed on the way; a malformed one is counted and skipped) and our
    /// sending half, then give the frames back. `false` when the XSK had nothing.
    /// Copy the kernel's drop counters of this worker's XSKs into `counters`.
    pub(super) fn refresh_stats(&self, counters: &WorkerCounters) {
        let mut sum = [0u64; XskDrop::ALL.len()];
        for o in &self.owners {
            if let Ok(s) = o.stats() {
                sum[XskDrop::RxRingFull as usize] += s.rx_ring_full;
                sum[XskDrop::FillRingEmpty as usize] += s.rx_fill_ring_empty_descs;
                sum[XskDrop::Other as usize] += s.rx_dropped + s.rx_invalid_descs;
            }
        }
        for (c, v) in counters.xdp_kernel_drops.iter().zip(sum) {
            c.set(v);
        }
    }

    /// One batch from XSK `i`, handed to `handle`. `false` when the socket's rx ring is
    /// empty now (a short batch, or none): the next frame is a new edge for the poll.
    pub(super) fn receive(
        &mut self,
        i: usize,
        counters: &WorkerCounters,
        port: u16,
        fwmark: u32,
        handle: impl FnOnce(&mut dyn Iterator<Item = (&mut [u8], SocketAddr)>, XdpTx<'_>),
    ) -> bool {
        let rx = &mut self.rx[i];
        let n = rx.receive(RX_BATCH);
        if n == 0 {
            return false;
        }
        counters.xdp_rx.add(n as u64);
        let mut segs = rx
            .frames()
            .filter_map(|frame| match ether::parse_udp(frame) {
                Ok(f) => Some((&mut frame[f.payload.0..f.payload.1], f.src)),
                Err(_) => {
                    counters.drop(DropReason::BadPacket);
                    None
                }
            });
        let tx = XdpTx {
            ports: &mut self.ports,
            resolver: &mut self.resolver,
            port,
            fwmark,
        };
        handle(&mut segs, tx);
        drop(segs);
        rx.recycle();
        n == RX_BATCH
    }
}
