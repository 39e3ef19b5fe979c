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

use ipnet::IpNet;

use crate::fib::NextHop;
use crate::io::bpf::{action, Link, XdpMode};
use crate::io::ifaddr;
use crate::io::netlink::Netlink;
use crate::io::xdp_prog::{MeshProgram, MeshRoute, XdpProgram};
use crate::io::xsk::{self, BindMode, XskOwner, XskRx, XskTx};
use crate::stats::{DropReason, WorkerCounters, XskDrop};
use crate::wire::ether::{self, Macs};

/// How the AF_XDP backend is set up (`[interface] backend = "afxdp"` and its keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfXdpOptions {
    /// Underlay interfaces; empty: the interfaces of the routes to the peers' endpoints
    /// (resolved by the caller before start).
    pub underlay: Vec<String>,
    /// Mesh interfaces: packets to and from neighbours there (FIB next hops `via ADDR dev
    /// IF`) go through XSKs instead of the TUN device and the kernel's forwarding.
    pub mesh: Vec<String>,
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

/// What an interface's program redirects.
enum Role {
    /// The WireGuard port on our addresses.
    Underlay(XdpProgram),
    /// Packets routed into a tunnel.
    Mesh(MeshProgram),
}

impl Role {
    fn prog(&self) -> &crate::io::bpf::Program {
        match self {
            Role::Underlay(p) => &p.prog,
            Role::Mesh(p) => &p.prog,
        }
    }

    fn set_xsk(&self, queue: u32, fd: i32) -> io::Result<()> {
        match self {
            Role::Underlay(p) => p.set_xsk(queue, fd),
            Role::Mesh(p) => p.set_xsk(queue, fd),
        }
    }
}

/// One interface with its program attached.
pub(super) struct Attached {
    pub(super) name: String,
    role: Role,
    /// Detaches the program when dropped.
    _link: Link,
}

impl Attached {
    /// Keep the program current: an underlay's redirects exactly `port` on the interface's
    /// current addresses; a mesh interface's never redirects what is for one of `own` (the
    /// box's addresses) and leaves packets longer than `mtu` (the tunnel's) to the kernel.
    pub(super) fn follow(&self, port: u16, own: &[IpAddr], mtu: u16) -> io::Result<()> {
        match &self.role {
            Role::Underlay(p) => {
                let want: Vec<SocketAddr> = ifaddr::addresses(&self.name)?
                    .into_iter()
                    .map(|a| SocketAddr::new(a.addr, port))
                    .collect();
                p.set_locals(&want)
            }
            Role::Mesh(p) => {
                p.set_own(own)?;
                p.set_mtu(mtu)
            }
        }
    }

    /// The FIB changed: a mesh program's tunnel table follows (an underlay's has none).
    /// Every op is tried; the first error is returned with the number that failed. A
    /// tunnel route missing from the table (it is full) is harmless: its packets pass to
    /// the kernel, which routes them through the TUN device.
    pub(super) fn follow_routes(&self, ops: &[(IpNet, Option<NextHop>)]) -> io::Result<()> {
        let Role::Mesh(p) = &self.role else {
            return Ok(());
        };
        let mut failed = 0usize;
        let mut first = None;
        for (prefix, hop) in ops {
            let route = hop.map(|h| match h {
                NextHop::Peer(_) => MeshRoute::Tunnel,
                _ => MeshRoute::Other,
            });
            if let Err(e) = p.set_route(prefix, route) {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "{failed} of {} route changes failed, the first: {e}",
                    ops.len()
                ),
            )),
        }
    }

    /// Whether this is a mesh interface.
    pub(super) fn is_mesh(&self) -> bool {
        matches!(self.role, Role::Mesh(_))
    }
}

/// The frames of one receive, parsed.
pub(super) enum Frames<'a, 'b> {
    /// WireGuard datagrams from the underlay, with their sources.
    Datagrams(&'a mut dyn Iterator<Item = (&'b mut [u8], SocketAddr)>),
    /// IP packets from a mesh interface.
    Packets(&'a mut dyn Iterator<Item = &'b mut [u8]>),
}

/// The sending half of one XSK of a worker, and where it leads.
struct Port {
    tx: XskTx,
    ifindex: u32,
    mac: [u8; 6],
    /// The interface's MTU (as of the start).
    mtu: u16,
}

/// A worker's XSKs, as the setup deals them out.
#[derive(Default)]
struct Dealt {
    rx: Vec<(XskRx, RxKind)>,
    tx: Vec<Port>,
    owners: Vec<XskOwner>,
}

/// What the frames of a receiving XSK carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxKind {
    /// WireGuard datagrams (underlay).
    Datagrams,
    /// IP packets to route into tunnels (mesh interface).
    Packets,
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

fn mtu_of(name: &str) -> u16 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1500)
}

/// Attach to every underlay and mesh interface and open its XSKs; the XSKs are returned per
/// worker.
pub(super) fn setup(
    opts: &AfXdpOptions,
    workers: usize,
    port: u16,
) -> io::Result<(Vec<Attached>, Vec<XdpWorker>)> {
    if opts.underlay.is_empty() {
        return Err(io::Error::other(
            "backend afxdp: no underlay interface (name them with `underlay`, or give the peers endpoints)",
        ));
    }
    if let Some(both) = opts.mesh.iter().find(|m| opts.underlay.contains(m)) {
        return Err(io::Error::other(format!(
            "backend afxdp: {both} is named both as underlay and as mesh interface (an interface has one XDP program: give the trunk its own interface)"
        )));
    }
    let mut dealt: Vec<Dealt> = (0..workers).map(|_| Dealt::default()).collect();
    let mut ifaces = Vec::new();
    let named = opts
        .underlay
        .iter()
        .map(|n| (n, RxKind::Datagrams))
        .chain(opts.mesh.iter().map(|n| (n, RxKind::Packets)));
    for (name, kind) in named {
        ifaces.push(attach(opts, name, kind, workers, &mut dealt)?);
    }
    for i in &ifaces {
        i.follow(port, &[], 0).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: setting up the XDP maps: {e}", i.name),
            )
        })?;
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

/// Load and attach the program of one interface and bind an XSK to each of its queues.
fn attach(
    opts: &AfXdpOptions,
    name: &str,
    kind: RxKind,
    workers: usize,
    dealt: &mut [Dealt],
) -> io::Result<Attached> {
    let fail = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{name}: {what}: {e}"));
    let ifindex = ifaddr::ifindex(name).map_err(|e| fail("no such interface", e))?;
    let mac = mac_of(name).map_err(|e| fail("link-layer address", e))?;
    let queues = rx_queues(name);
    let role = match kind {
        RxKind::Datagrams => XdpProgram::load(queues, action::PASS).map(Role::Underlay),
        RxKind::Packets => MeshProgram::load(mac, queues, action::PASS).map(Role::Mesh),
    }
    .map_err(|e| fail("loading the XDP program", e))?;
    let modes = match opts.xdp_mode {
        Some(m) => vec![m],
        None => vec![XdpMode::Native, XdpMode::Generic],
    };
    let mut attached = None;
    let mut last = None;
    for m in modes {
        match role.prog().attach_xdp(ifindex, m) {
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
    if kind == RxKind::Packets && xdp_mode == XdpMode::Generic {
        // Generic XDP runs after GRO: a coalesced packet is longer than the tunnel MTU, so
        // the program passes it to the kernel, and the flow then takes two paths. On 6.x
        // kernels the passed super-packets did not make it through (TCP stalled in
        // retransmissions in the lab). Frames as they came off the wire, then.
        match crate::io::tun::disable_gro(name) {
            Ok(true) => tracing::info!("{name}: generic XDP: receive offload (GRO) turned off"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%e, "{name}: generic XDP: could not turn GRO off"),
        }
    }
    let mtu = mtu_of(name);
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
        role.set_xsk(q, owner.raw_fd())
            .map_err(|e| fail("adding the socket to the XSK map", e))?;
        // Queue q of every interface goes to worker q % workers, so that a worker that
        // receives on an interface's queue q can also send on the others' queue q: on
        // single-queue links (veth, small boxes) one worker holds all the XSKs.
        let w = &mut dealt[q as usize % workers];
        w.rx.push((rx, kind));
        w.tx.push(Port {
            tx,
            ifindex,
            mac,
            mtu,
        });
        w.owners.push(owner);
    }
    if (queues as usize) < workers {
        tracing::info!(
            "{name}: {queues} queue(s) for {workers} workers: workers {}..{} send to it through the kernel",
            queues,
            workers - 1
        );
    }
    tracing::info!(
        "AF_XDP on {name}: {} XDP, {} mode, {queues} queue(s), {}",
        xdp_mode.as_str(),
        bound.as_str(),
        match kind {
            RxKind::Datagrams => "underlay",
            RxKind::Packets => "mesh interface",
        }
    );
    Ok(Attached {
        name: name.to_string(),
        role,
        _link: link,
    })
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

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<crate::fib::PrefixHasher>>;

/// A neighbour's link-layer address (`None`: not resolved) and until when to believe it.
type Resolved = (Instant, Option<[u8; 6]>);

/// Per-worker cache of the kernel's answer for each destination.
///
/// The maps use the FIB's fast unkeyed hasher: their keys are peers' endpoints (moved only by
/// authenticated packets) and the FIB's mesh next hops, not addresses a stranger picks.
#[derive(Default)]
struct Resolver {
    nl: Option<Netlink>,
    cache: FastMap<IpAddr, (Instant, Hop)>,
    /// Link-layer addresses of mesh neighbours by interface and address (`None`: not
    /// resolved yet).
    neighbours: FastMap<(u32, IpAddr), Resolved>,
    /// The last neighbour asked for: a batch goes mostly to one, and each of its packets is
    /// asked for twice (`mesh_link`, then `send_frames`).
    last: Option<((u32, IpAddr), Resolved)>,
}

impl Resolver {
    /// The link-layer address of `addr` on `ifindex`, from the kernel's neighbour table.
    fn neighbour(&mut self, ifindex: u32, addr: IpAddr, now: Instant) -> Option<[u8; 6]> {
        if let Some((key, (until, mac))) = self.last {
            if key == (ifindex, addr) && until > now {
                return mac;
            }
        }
        if let Some(&(until, mac)) = self.neighbours.get(&(ifindex, addr)) {
            if until > now {
                self.last = Some(((ifindex, addr), (until, mac)));
                return mac;
            }
        }
        if self.nl.is_none() {
            self.nl = Netlink::open().ok();
        }
        let mac = self
            .nl
            .as_mut()
            .and_then(|nl| nl.neighbour(ifindex, addr).ok().flatten());
        let ttl = if mac.is_some() {
            PATH_TTL
        } else {
            UNRESOLVED_TTL
        };
        if self.neighbours.len() >= MAX_PATHS {
            self.neighbours.clear();
        }
        self.neighbours.insert((ifindex, addr), (now + ttl, mac));
        self.last = Some(((ifindex, addr), (now + ttl, mac)));
        mac
    }

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
    rx: Vec<(XskRx, RxKind)>,
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
    /// Publish what was queued on the ports whose bit (index mod 64) is set in `used`.
    fn flush(&mut self, used: u64) {
        for (k, p) in self.ports.iter_mut().enumerate() {
            if used & (1 << (k % 64)) != 0 {
                p.tx.flush();
            }
        }
    }

    /// The MTU of mesh interface `ifindex` if this worker has an XSK on it and `addr`'s
    /// link-layer address is known (else the packet goes through the TUN device, which makes
    /// the kernel resolve it: counted).
    pub(super) fn mesh_link(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        counters: &WorkerCounters,
    ) -> Option<u16> {
        let port = self.ports.iter().find(|p| p.ifindex == ifindex)?;
        let mtu = port.mtu;
        match self.resolver.neighbour(ifindex, addr, Instant::now()) {
            Some(_) => Some(mtu),
            None => {
                counters.xdp_neigh_fallback.add(1);
                None
            }
        }
    }

    /// Send the packets of a local batch that carry a neighbour as frames through the
    /// XSKs (the copy into the frame is the second of this path: the first is the AEAD's);
    /// their slots are emptied (`len` 0), so that the TUN path skips them. A packet whose
    /// XSK ring is full is dropped and counted. Returns how many slots were taken.
    pub(super) fn send_frames(
        &mut self,
        batch: &mut crate::buf::Batch,
        counters: &WorkerCounters,
    ) -> usize {
        let now = Instant::now();
        let (mut taken, mut sent) = (0, 0u64);
        let mut used = 0u64;
        for i in 0..batch.len() {
            let slot = batch.slot_mut(i);
            let Some((ifindex, addr)) = slot.neighbour.take() else {
                continue;
            };
            taken += 1;
            let port = self.ports.iter().position(|p| p.ifindex == ifindex);
            let mac = self.resolver.neighbour(ifindex, addr, now);
            let ok = match (port, mac) {
                (Some(k), Some(dst)) => {
                    let macs = Macs {
                        src: self.ports[k].mac,
                        dst,
                    };
                    let data = slot.data();
                    used |= 1 << (k % 64);
                    self.ports[k]
                        .tx
                        .send_with(|buf| ether::build_ip(buf, macs, data))
                }
                _ => false,
            };
            if ok {
                sent += 1;
            } else {
                counters.drop(DropReason::TxError);
            }
            slot.len = 0;
        }
        self.flush(used);
        counters.xdp_tx.add(sent);
        taken
    }

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
        self.flush(used);
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

    /// One batch from XSK `i`, to `handle` with our sending half: underlay frames as
    /// datagrams (the UDP payloads, with their sources), mesh frames as IP packets.
    /// The frames are parsed on the way; a malformed one is counted and skipped. `false`
    /// when the socket's rx ring is empty now (a short batch, or none): the next frame is a
    /// new edge for the poll.
    pub(super) fn receive(
        &mut self,
        i: usize,
        counters: &WorkerCounters,
        port: u16,
        fwmark: u32,
        handle: impl FnOnce(Frames<'_, '_>, XdpTx<'_>),
    ) -> bool {
        let (rx, kind) = &mut self.rx[i];
        let n = rx.receive(RX_BATCH);
        if n == 0 {
            return false;
        }
        counters.xdp_rx.add(n as u64);
        let tx = XdpTx {
            ports: &mut self.ports,
            resolver: &mut self.resolver,
            port,
            fwmark,
        };
        match kind {
            RxKind::Datagrams => {
                let mut segs = rx
                    .frames()
                    .filter_map(|frame| match ether::parse_udp(frame) {
                        Ok(f) => Some((&mut frame[f.payload.0..f.payload.1], f.src)),
                        Err(_) => {
                            counters.drop(DropReason::BadPacket);
                            None
                        }
                    });
                handle(Frames::Datagrams(&mut segs), tx);
            }
            RxKind::Packets => {
                let mut pkts = rx
                    .frames()
                    .filter_map(|frame| match ether::parse_ip(frame) {
                        Ok(r) => Some(&mut frame[r]),
                        Err(_) => {
                            counters.drop(DropReason::BadInnerPacket);
                            None
                        }
                    });
                handle(Frames::Packets(&mut pkts), tx);
            }
        }
        rx.recycle();
        n == RX_BATCH
    }
}
