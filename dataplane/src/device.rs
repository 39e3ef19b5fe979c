//! The running device: TUN queues, UDP sockets, worker threads, the timer thread and the
//! metrics endpoint around a forwarding [`Core`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::Socket;

use crate::buf::Batch;
use crate::forward::{Core, PeerChange, PeerSpec, Settings, Sink, Worker};
use crate::io::tun::{self, TunQueue};
use crate::io::udp::{self, MmsgScratch};
use crate::stats::{DropReason, WorkerCounters};

/// Nice value of the handshake thread (the workers run at 0).
const HANDSHAKE_NICE: i32 = 10;

const UDP: Token = Token(0);
const TUN: Token = Token(1);
const WAKE: Token = Token(2);

/// Options for starting a device.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Worker threads (each with a TUN queue and a UDP socket).
    pub threads: usize,
    /// UDP port (0: any).
    pub listen_port: u16,
    /// fwmark for the UDP sockets (0: none).
    pub fwmark: u32,
    /// TUN MTU.
    pub mtu: u16,
    /// Forwarding settings.
    pub settings: Settings,
    /// TUN offloads (TSO, checksum): one read for up to 64 KiB of TCP.
    pub offload: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            listen_port: 0,
            fwmark: 0,
            mtu: crate::DEFAULT_MTU,
            settings: Settings::default(),
            offload: true,
        }
    }
}

struct Net {
    port: u16,
    fwmark: u32,
}

/// A running device.
pub struct Device {
    /// The forwarding core (peers, FIB, counters).
    pub core: Arc<Core>,
    ifname: String,
    threads: usize,
    net: Mutex<Net>,
    sockets: ArcSwap<Vec<Socket>>,
    generation: AtomicU64,
    wakers: Mutex<Vec<Arc<Waker>>>,
    shutdown: AtomicBool,
    icmp_src_fixed: bool,
    handles: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl Device {
    /// Create the TUN device, bind the sockets and start the workers and the timer thread.
    pub fn start(ifname: &str, opts: DeviceOptions) -> io::Result<Arc<Device>> {
        let threads = opts.threads.max(1);
        let queues = tun::open(ifname, threads, opts.offload)?;
        if let Err(e) = tun::set_mtu(ifname, opts.mtu) {
            tracing::warn!(%e, "could not set MTU of {ifname}");
        }
        let (socks, port) = udp::bind(opts.listen_port, threads, opts.fwmark)?;
        let icmp_src_fixed =
            opts.settings.icmp_src_v4.is_some() || opts.settings.icmp_src_v6.is_some();
        let core = Core::new(
            ifname,
            Settings {
                mtu: opts.mtu,
                ..opts.settings
            },
        );
        let dev = Arc::new(Device {
            core,
            ifname: ifname.to_string(),
            threads,
            net: Mutex::new(Net {
                port,
                fwmark: opts.fwmark,
            }),
            sockets: ArcSwap::from_pointee(socks),
            generation: AtomicU64::new(1),
            wakers: Mutex::new(Vec::new()),
            shutdown: AtomicBool::new(false),
            icmp_src_fixed,
            handles: Mutex::new(Vec::new()),
        });
        let mut handles = Vec::new();
        for (i, q) in queues.into_iter().enumerate() {
            let d = dev.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            handles.push(
                thread::Builder::new()
                    .name(format!("isthmus-w{i}"))
                    .spawn(move || d.worker_loop(i, q, &tx))?,
            );
            // Wait until the worker registered its waker, so shutdown can reach it.
            rx.recv()
                .map_err(|_| io::Error::other("worker thread failed to start"))??;
        }
        let d = dev.clone();
        handles.push(
            thread::Builder::new()
                .name("isthmus-timers".into())
                .spawn(move || d.timer_loop())?,
        );
        let d = dev.clone();
        let queued = dev.core.handshake_queue();
        handles.push(
            thread::Builder::new()
                .name("isthmus-handshakes".into())
                .spawn(move || d.handshake_loop(&queued))?,
        );
        *dev.handles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = handles;
        tracing::info!(ifname, port, threads, "device up");
        Ok(dev)
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The UDP port in use.
    pub fn listen_port(&self) -> u16 {
        self.net
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .port
    }

    /// The fwmark in use (0: none).
    pub fn fwmark(&self) -> u32 {
        self.net
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fwmark
    }

    /// Rebind the UDP sockets to another port and/or fwmark. Port 0 picks a free port.
    pub fn rebind(&self, port: Option<u16>, fwmark: Option<u32>) -> io::Result<()> {
        let mut net = self
            .net
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let port = port.unwrap_or(net.port);
        let fwmark = fwmark.unwrap_or(net.fwmark);
        if port == net.port && fwmark == net.fwmark && port != 0 {
            return Ok(());
        }
        if port == net.port && port != 0 {
            // Same port: only the mark changes, on the sockets we have.
            for sock in self.sockets.load().iter() {
                sock.set_mark(fwmark)?;
            }
            net.fwmark = fwmark;
            return Ok(());
        }
        let (socks, bound) = udp::bind(port, self.threads, fwmark)?;
        self.sockets.store(Arc::new(socks));
        self.generation.fetch_add(1, SeqCst);
        self.wake_all();
        net.port = bound;
        net.fwmark = fwmark;
        tracing::info!(port = bound, fwmark, "UDP sockets bound");
        Ok(())
    }

    fn wake_all(&self) {
        for w in self
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = w.wake();
        }
    }

    /// Ask every thread to stop.
    pub fn shutdown(&self) {
        self.shutdown.store(true, SeqCst);
        self.wake_all();
    }

    /// Whether the device is shutting down (signal, or the TUN device went away).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(SeqCst)
    }

    /// Wait for the threads to end (after [`Device::shutdown`]).
    pub fn join(&self) {
        let handles = std::mem::take(
            &mut *self
                .handles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for h in handles {
            let _ = h.join();
        }
    }

    fn worker_loop(
        &self,
        idx: usize,
        mut tunq: TunQueue,
        ready: &std::sync::mpsc::Sender<io::Result<()>>,
    ) {
        let setup = (|| -> io::Result<(Poll, Arc<Waker>)> {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let tfd = tunq.fd();
            poll.registry()
                .register(&mut SourceFd(&tfd), TUN, Interest::READABLE)?;
            Ok((poll, waker))
        })();
        let (mut poll, waker) = match setup {
            Ok(v) => v,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(waker);
        let _ = ready.send(Ok(()));

        let mut fwd = Worker::new(self.core.clone());
        let counters = fwd.counters();
        let mut events = Events::with_capacity(64);
        let mut rx_udp = Batch::default();
        let mut rx_tun = Batch::default();
        let mut scratch = MmsgScratch::default();
        // GRO receive buffers (1 MiB) unless turned off.
        let gro = std::env::var_os("ISTHMUS_NO_GRO").is_none();
        let mut gro_area = if gro {
            udp::GroArea::default()
        } else {
            udp::GroArea::empty()
        };
        let mut gen = 0;
        let mut socks: Arc<Vec<Socket>> = Arc::new(Vec::new());
        let mut udp_fd: Option<i32> = None;
        let (mut udp_ready, mut tun_ready) = (false, true);
        let mut warn = RateLimitedWarn::default();
        while !self.shutdown.load(Relaxed) {
            let g = self.generation.load(SeqCst);
            if g != gen {
                if let Some(fd) = udp_fd.take() {
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                }
                socks = self.sockets.load_full();
                if !socks.is_empty() {
                    let fd = socks[idx % socks.len()].as_raw_fd();
                    if poll
                        .registry()
                        .register(&mut SourceFd(&fd), UDP, Interest::READABLE)
                        .is_ok()
                    {
                        udp_fd = Some(fd);
                        udp_ready = true;
                    }
                }
                gen = g;
            }
            if !udp_ready && !tun_ready {
                if let Err(e) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        warn.warn(&format!("poll: {e}"));
                    }
                    continue;
                }
                for ev in &events {
                    match ev.token() {
                        UDP => udp_ready = true,
                        TUN => tun_ready = true,
                        _ => {}
                    }
                }
            }
            // Edge-triggered: drain both to WouldBlock, a batch from each in turn.
            if udp_ready {
                if let Some(fd) = udp_fd {
                    let got = if gro {
                        gro_area.recv(fd)
                    } else {
                        udp::recv_batch(fd, &mut rx_udp, &mut scratch)
                    };
                    match got {
                        Ok(_) => {
                            let mut sink = RealSink {
                                udp_fd: fd,
                                tun: Some(&mut tunq),
                                scratch: &mut scratch,
                                counters: &counters,
                            };
                            if gro {
                                fwd.handle_segments(gro_area.segments(), &mut sink);
                            } else {
                                fwd.handle_datagrams(&mut rx_udp, &mut sink);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => udp_ready = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // ICMP errors surface as ECONNREFUSED etc.; keep going.
                        Err(e) => warn.warn(&format!("udp receive: {e}")),
                    }
                } else {
                    udp_ready = false;
                }
            }
            if tun_ready {
                let res = tunq.read_batch(&mut rx_tun);
                if tunq.malformed > 0 {
                    counters.drops[DropReason::BadInnerPacket as usize].add(tunq.malformed);
                    tunq.malformed = 0;
                }
                match res {
                    Ok(_) => {
                        let fd = udp_fd.unwrap_or(-1);
                        let mut sink = RealSink {
                            udp_fd: fd,
                            tun: Some(&mut tunq),
                            scratch: &mut scratch,
                            counters: &counters,
                        };
                        fwd.handle_tun(&mut rx_tun, &mut sink);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tun_ready = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::info!(ifname = %self.ifname, %e, "TUN device gone; shutting down");
                        self.shutdown();
                    }
                }
            }
        }
        drop(socks);
    }

    /// Handshake messages that the workers admitted, with their Diffie-Hellman, on a thread
    /// of lower priority than the workers: a flood of them costs this thread's time, not the
    /// time in which transport data is forwarded.
    fn handshake_loop(
        &self,
        queued: &crossbeam::channel::Receiver<crate::forward::QueuedHandshake>,
    ) {
        if !crate::sys::lower_thread_priority(HANDSHAKE_NICE) {
            tracing::debug!("could not lower the handshake thread's priority");
        }
        let mut fwd = Worker::new(self.core.clone());
        let counters = fwd.counters();
        let mut scratch = MmsgScratch::default();
        while !self.shutdown.load(Relaxed) {
            let Ok(first) = queued.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            let socks = self.sockets.load_full();
            let Some(s) = socks.first() else { continue };
            let mut sink = RealSink {
                udp_fd: s.as_raw_fd(),
                tun: None,
                scratch: &mut scratch,
                counters: &counters,
            };
            let batch = std::iter::once(first).chain(queued.try_iter().take(63));
            fwd.handle_handshakes(batch, &mut sink);
        }
    }

    fn timer_loop(&self) {
        let mut fwd = Worker::new(self.core.clone());
        let counters = fwd.counters();
        let mut scratch = MmsgScratch::default();
        let mut last_reset = Instant::now();
        let mut last_addr = Instant::now() - Duration::from_secs(10);
        let mut local_addrs = Vec::new();
        while !self.shutdown.load(Relaxed) {
            thread::sleep(Duration::from_millis(100));
            let socks = self.sockets.load_full();
            if let Some(s) = socks.first() {
                let mut sink = RealSink {
                    udp_fd: s.as_raw_fd(),
                    tun: None,
                    scratch: &mut scratch,
                    counters: &counters,
                };
                fwd.tick(&mut sink);
            }
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.core.reset_rate_limiter();
                last_reset = Instant::now();
            }
            if last_addr.elapsed() >= Duration::from_secs(1) {
                // Follow what wg-quick or the operator do to the interface: its MTU bounds
                // relayed packets, its addresses source our ICMP errors.
                last_addr = Instant::now();
                let cur = self.core.settings();
                let mut next = (*cur).clone();
                if let Ok(mtu) = tun::mtu(&self.ifname) {
                    next.mtu = mtu;
                }
                let addrs = tun::addresses(&self.ifname);
                if addrs != local_addrs {
                    // The interface's own addresses are delivered locally, whatever else
                    // the FIB says (they matter when unrouted packets are dropped).
                    self.core.set_local_addresses(&addrs);
                    local_addrs = addrs;
                }
                if !self.icmp_src_fixed {
                    next.icmp_src_v4 = local_addrs.iter().find_map(|a| match a {
                        std::net::IpAddr::V4(v4) => Some(*v4),
                        std::net::IpAddr::V6(_) => None,
                    });
                    next.icmp_src_v6 = local_addrs.iter().find_map(|a| match a {
                        std::net::IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(*v6),
                        _ => None,
                    });
                }
                if next.mtu != cur.mtu
                    || next.icmp_src_v4 != cur.icmp_src_v4
                    || next.icmp_src_v6 != cur.icmp_src_v6
                {
                    self.core.set_settings(next);
                }
            }
        }
    }
}

/// Output of a worker (or of the timer and inject paths, which have no TUN queue).
struct RealSink<'a> {
    udp_fd: i32,
    tun: Option<&'a mut TunQueue>,
    scratch: &'a mut MmsgScratch,
    counters: &'a WorkerCounters,
}

impl Sink for RealSink<'_> {
    fn send_udp(&mut self, batch: &mut Batch) {
        let failed = if self.udp_fd >= 0 {
            udp::send_batch(self.udp_fd, batch, self.scratch)
        } else {
            batch.len()
        };
        if failed > 0 {
            self.counters.drops[DropReason::TxError as usize].add(failed as u64);
        }
        batch.clear();
    }

    fn write_tun(&mut self, batch: &mut Batch) {
        let failed = self.tun.as_mut().map_or(0, |t| t.write_batch(batch));
        if failed > 0 {
            self.counters.drops[DropReason::TxError as usize].add(failed as u64);
        }
        batch.clear();
    }
}

/// A warning printed at most once every 10 seconds, with the count of suppressed ones.
#[derive(Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    fn warn(&mut self, msg: &str) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(suppressed = self.suppressed, "{msg}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Serve Prometheus metrics over HTTP on `addr` in a background thread.
pub fn serve_metrics(addr: SocketAddr, core: Arc<Core>) -> io::Result<SocketAddr> {
    crate::io::metrics::serve(addr, "isthmus-metrics", move || {
        crate::stats::render(&core.sample())
    })
}

impl crate::uapi::UapiHandler for Device {
    fn get(&self) -> crate::uapi::DeviceState {
        let peers = self.core.peers();
        crate::uapi::DeviceState {
            private_key: self.core.private_key(),
            listen_port: self.listen_port(),
            fwmark: self.fwmark(),
            // Oldest first, as the kernel lists them.
            peers: peers
                .iter_by_age()
                .map(|p| {
                    let s = p.settings();
                    crate::uapi::PeerState {
                        public_key: p.public_key,
                        preshared_key: s.preshared_key,
                        endpoint: p.endpoint(),
                        last_handshake: p.last_handshake(),
                        rx_bytes: p.counters.rx_bytes.load(Relaxed),
                        tx_bytes: p.counters.tx_bytes.load(Relaxed),
                        persistent_keepalive: s.persistent_keepalive,
                        allowed_ips: s.allowed_ips,
                    }
                })
                .collect(),
        }
    }

    fn set(&self, req: crate::uapi::SetRequest) -> Result<(), crate::uapi::UapiError> {
        if let Some(k) = req.private_key {
            self.core.set_private_key(k);
        }
        if req.listen_port.is_some() || req.fwmark.is_some() {
            self.rebind(req.listen_port, req.fwmark).map_err(|e| {
                let msg = format!("binding UDP port {}: {e}", req.listen_port.unwrap_or(0));
                if e.kind() == io::ErrorKind::AddrInUse {
                    crate::uapi::UapiError::port_in_use(msg)
                } else {
                    crate::uapi::UapiError::io(msg)
                }
            })?;
        }
        // replace_peers and every peer section in one batch; as in wireguard-go, the
        // sections before a failing one stay applied.
        let changes = uapi_peer_changes(&self.core.peers(), req.replace_peers, req.peers);
        self.core
            .apply_peer_changes(changes)
            .map_err(|e| crate::uapi::UapiError::rejected(e.to_string()))?;
        Ok(())
    }
}

/// The peer changes of a `set=1` request, in order: `replace_peers`, then one change per
/// peer section. A section starts from the peer's settings as the request's earlier
/// sections leave them (`peers`, the current table, for a peer the request has not touched
/// yet), so that the changes can be applied as one batch.
fn uapi_peer_changes(
    peers: &crate::tunnel::PeerMap,
    replace_peers: bool,
    sections: Vec<crate::uapi::PeerSet>,
) -> Vec<PeerChange> {
    use crate::tunnel::PeerSettings;
    use std::collections::HashMap;
    let mut changes = Vec::with_capacity(sections.len() + 1);
    if replace_peers {
        changes.push(PeerChange::RemoveAll);
    }
    // What the request did so far to the peers it named: `None`, removed.
    let mut seen: HashMap<crate::keys::Key, Option<PeerSettings>> = HashMap::new();
    for ps in sections {
        if ps.remove {
            seen.insert(ps.public_key, None);
            changes.push(PeerChange::Remove(ps.public_key));
            continue;
        }
        let existing = match seen.get(&ps.public_key) {
            Some(s) => s.clone(),
            None if replace_peers => None,
            None => peers.by_key(&ps.public_key).map(|p| p.settings()),
        };
        if ps.update_only && existing.is_none() {
            continue;
        }
        let mut settings = existing.unwrap_or_default();
        if let Some(psk) = ps.preshared_key {
            settings.preshared_key = psk;
        }
        if let Some(k) = ps.persistent_keepalive {
            settings.persistent_keepalive = (k > 0).then_some(k);
        }
        if ps.replace_allowed_ips {
            settings.allowed_ips.clear();
        }
        let mut have: std::collections::HashSet<ipnet::IpNet> =
            settings.allowed_ips.iter().copied().collect();
        for net in ps.allowed_ips {
            if have.insert(net) {
                settings.allowed_ips.push(net);
            }
        }
        seen.insert(ps.public_key, Some(settings.clone()));
        changes.push(PeerChange::Upsert(PeerSpec {
            public_key: ps.public_key,
            endpoint: ps.endpoint,
            settings,
        }));
    }
    changes
}

impl Device {
    /// Apply a configuration file: key, peers (with names and classes), static routes, and
    /// the interface's addresses (set with iproute2, then the link is brought up).
    pub fn apply_config(&self, cfg: &crate::config::DeviceConfig) -> io::Result<()> {
        use crate::fib::Via;
        use crate::tunnel::PeerSettings;
        self.core.set_private_key(cfg.interface.private_key);
        let changes = cfg.peers.iter().map(|p| {
            PeerChange::Upsert(PeerSpec {
                public_key: p.public_key,
                endpoint: p.endpoint,
                settings: PeerSettings {
                    name: p.name.clone(),
                    class: p.class,
                    preshared_key: p.preshared_key,
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_ips: p.allowed_ips.clone(),
                },
            })
        });
        self.core.apply_peer_changes(changes).map_err(|e| {
            io::Error::other(format!(
                "peer {}: {}",
                cfg.peers[e.index].name.as_deref().unwrap_or("(unnamed)"),
                e.error
            ))
        })?;
        let mut routes: Vec<(ipnet::IpNet, Via)> =
            cfg.routes.iter().map(|r| (r.prefix, r.via)).collect();
        // The interface's own addresses are local, whatever else is routed.
        for a in &cfg.interface.address {
            let host = ipnet::IpNet::new(a.addr(), a.max_prefix_len()).map_err(io::Error::other)?;
            routes.push((host, Via::Local));
        }
        self.core.set_static_routes(routes);
        for a in &cfg.interface.address {
            run_ip(&["address", "add", &a.to_string(), "dev", &self.ifname])?;
        }
        run_ip(&["link", "set", "dev", &self.ifname, "up"])?;
        Ok(())
    }
}

/// Run `ip ARGS...` (iproute2), failing with its error output.
fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The control channel's view of a device.
struct CtlGlue {
    dev: Arc<Device>,
    inject: Mutex<(Worker, MmsgScratch)>,
}

impl crate::ctl::server::CtlBackend for CtlGlue {
    fn hello(&self) -> (String, Option<crate::keys::Key>) {
        (self.dev.ifname.clone(), self.dev.core.public_key())
    }

    fn peers(&self) -> Vec<crate::ctl::proto::PeerInfo> {
        self.dev
            .core
            .peers()
            .iter()
            .map(|p| {
                let s = p.settings();
                crate::ctl::proto::PeerInfo {
                    public_key: p.public_key,
                    name: s.name.clone(),
                    class: s.class.as_str().into(),
                    endpoint: p.endpoint(),
                    last_handshake_unix: p
                        .last_handshake()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: p.counters.rx_bytes.load(Relaxed),
                    tx_bytes: p.counters.tx_bytes.load(Relaxed),
                    rx_packets: p.counters.rx_packets.load(Relaxed),
                    tx_packets: p.counters.tx_packets.load(Relaxed),
                    allowed_ips: s.allowed_ips,
                }
            })
            .collect()
    }

    fn routes(&self) -> Vec<crate::ctl::proto::RouteInfo> {
        use crate::ctl::proto::RouteInfo;
        let peers = self.dev.core.peers();
        let mut out: Vec<RouteInfo> = self
            .dev
            .core
            .fib_routes()
            .into_iter()
            .filter_map(|(r, origin)| {
                Some(RouteInfo {
                    prefix: r.prefix,
                    next_hop: peers.via(r.next_hop)?,
                    origin,
                })
            })
            .collect();
        out.sort_by_key(|r| r.prefix);
        out
    }

    fn stats(&self) -> Vec<(String, u64)> {
        let t = self.dev.core.totals();
        let mut v = Vec::new();
        for p in crate::stats::Path::ALL {
            v.push((format!("forwarded_{}", p.label()), t.forwarded_on(p)));
        }
        for r in crate::stats::DropReason::ALL {
            v.push((format!("drop_{}", r.label()), t.dropped(r)));
        }
        v.push(("icmp_sent".into(), t.icmp_sent));
        v.push(("cookies_sent".into(), t.cookies_sent));
        v.push(("mss_clamped".into(), t.mss_clamped));
        v
    }

    fn fib_snapshot(&self, routes: Vec<crate::ctl::proto::CtlRoute>) -> Result<(), String> {
        self.dev
            .core
            .set_control_routes(routes.iter().map(|r| (r.prefix, r.next_hop)).collect());
        Ok(())
    }

    fn fib_update(
        &self,
        add: Vec<crate::ctl::proto::CtlRoute>,
        remove: Vec<ipnet::IpNet>,
    ) -> Result<(), String> {
        self.dev.core.update_control_routes(
            add.iter().map(|r| (r.prefix, r.next_hop)).collect(),
            &remove,
        );
        Ok(())
    }

    fn inject(&self, peer: crate::keys::Key, packet: Vec<u8>) -> Result<(), String> {
        let socks = self.dev.sockets.load_full();
        let Some(s) = socks.first() else {
            return Err("no UDP socket bound".into());
        };
        let mut g = self
            .inject
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (worker, scratch) = &mut *g;
        let counters = worker.counters();
        let mut sink = RealSink {
            udp_fd: s.as_raw_fd(),
            tun: None,
            scratch,
            counters: &counters,
        };
        if worker.inject(&peer, &packet, &mut sink) {
            Ok(())
        } else {
            Err("no such peer".into())
        }
    }

    fn disconnected(&self, was_subscriber: bool) {
        if was_subscriber {
            // The control plane went away: keep forwarding on its routes, marked stale,
            // until it comes back with a fresh snapshot.
            self.dev.core.set_fib_stale(true);
        }
    }
}

/// Serve the control channel of `dev` at `path`, and route the core's events (handshakes,
/// roaming, punted Babel packets) to its subscribers.
pub fn serve_ctl(
    dev: &Arc<Device>,
    path: &std::path::Path,
) -> io::Result<crate::ctl::server::CtlServer> {
    use crate::ctl::proto::{Msg, PeerEvent};
    use crate::forward::CoreEvent;
    let bus = crate::ctl::server::EventBus::new();
    let b = bus.clone();
    dev.core.set_event_sink(Arc::new(move |ev| {
        if !b.has_subscribers() {
            return false;
        }
        b.publish(match ev {
            CoreEvent::HandshakeUp(peer) => Msg::Event(PeerEvent::HandshakeUp { peer }),
            CoreEvent::EndpointChanged(peer, endpoint) => {
                Msg::Event(PeerEvent::EndpointChanged { peer, endpoint })
            }
            CoreEvent::Punt(peer, packet) => Msg::Punt { peer, packet },
        })
    }));
    let glue = Arc::new(CtlGlue {
        dev: dev.clone(),
        inject: Mutex::new((Worker::new(dev.core.clone()), MmsgScratch::default())),
    });
    crate::ctl::server::serve(path, glue, bus)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::time::Instant;

    use super::*;
    use crate::keys::Key;

    /// The body of a `set=1` that adds `n` peers, each with an endpoint and a /32.
    fn addconf_text(n: u32) -> String {
        let mut text = String::from("private_key=");
        text.push_str(&Key::generate_private().to_hex());
        text.push_str("\nreplace_peers=true\n");
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = write!(
                text,
                "public_key={}\nendpoint=192.0.2.1:{}\nreplace_allowed_ips=true\nallowed_ip={ip}/32\n",
                Key::generate_private().public_key().to_hex(),
                1024 + i % 60000,
            );
        }
        text
    }

    /// Times the `wg addconf` path without the socket: parse the request, turn it into one
    /// batch, apply it; and, as the baseline, the same peers applied one change at a time
    /// (as `set` did before batches) for a tenth of them.
    #[test]
    fn time_an_addconf_of_many_peers() {
        let n: u32 = std::env::var("ISTHMUS_TIMING_PEERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        let t = Instant::now();
        let text = addconf_text(n);
        eprintln!("generate {n} keys: {:?}", t.elapsed());
        let t = Instant::now();
        let req = crate::uapi::parse_set(&text).unwrap();
        eprintln!(
            "parse_set of {n} peers ({} bytes): {:?}",
            text.len(),
            t.elapsed()
        );
        let core = Core::new("t0", Settings::default());
        core.set_private_key(req.private_key.flatten());
        let t = Instant::now();
        let changes = uapi_peer_changes(&core.peers(), req.replace_peers, req.peers.clone());
        let done = core.apply_peer_changes(changes).unwrap();
        eprintln!("apply {n} peers in one batch: {:?}", t.elapsed());
        assert_eq!(done.added, n as usize);
        assert_eq!(core.peers().len(), n as usize);
        assert_eq!(core.fib().len(), n as usize);
        let base = (n / 10).max(1) as usize;
        let core = Core::new("t0", Settings::default());
        core.set_private_key(req.private_key.flatten());
        let t = Instant::now();
        for ps in req.peers.into_iter().take(base) {
            for c in uapi_peer_changes(&core.peers(), false, vec![ps]) {
                core.apply_peer_changes([c]).unwrap();
            }
        }
        eprintln!(
            "baseline: apply {base} peers one change at a time: {:?}",
            t.elapsed()
        );
        assert_eq!(core.peers().len(), base);
    }

    fn section(key: Key) -> crate::uapi::PeerSet {
        crate::uapi::PeerSet {
            public_key: key,
            ..Default::default()
        }
    }

    #[test]
    fn a_set_request_becomes_one_batch_that_sees_its_own_earlier_sections() {
        let core = Core::new("t0", Settings::default());
        let (a, b, c) = (Key([1; 32]), Key([2; 32]), Key([3; 32]));
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let mut spec = PeerSpec {
            public_key: a,
            ..Default::default()
        };
        spec.settings.allowed_ips = vec![net("10.0.0.0/24")];
        spec.settings.persistent_keepalive = Some(25);
        core.upsert_peer(spec).unwrap();
        let sections = vec![
            // Adds to a's allowed IPs, keeping its keepalive.
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.0.1.0/24"), net("10.0.0.0/24")],
                ..section(a)
            },
            // b is new; its second section sees the first.
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.1.0.0/24")],
                ..section(b)
            },
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.1.1.0/24")],
                persistent_keepalive: Some(0),
                ..section(b)
            },
            // update_only: c does not exist, so nothing.
            crate::uapi::PeerSet {
                update_only: true,
                ..section(c)
            },
        ];
        core.apply_peer_changes(uapi_peer_changes(&core.peers(), false, sections))
            .unwrap();
        let peers = core.peers();
        let sa = peers.by_key(&a).unwrap().settings();
        assert_eq!(sa.allowed_ips, [net("10.0.0.0/24"), net("10.0.1.0/24")]);
        assert_eq!(sa.persistent_keepalive, Some(25));
        let sb = peers.by_key(&b).unwrap().settings();
        assert_eq!(sb.allowed_ips, [net("10.1.0.0/24"), net("10.1.1.0/24")]);
        assert!(peers.by_key(&c).is_none());
        // replace_peers: a removed; b re-created from nothing, then removed again; c added.
        let sections = vec![
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.2.0.0/24")],
                ..section(b)
            },
            crate::uapi::PeerSet {
                remove: true,
                ..section(b)
            },
            crate::uapi::PeerSet {
                update_only: true,
                ..section(b)
            },
            crate::uapi::PeerSet {
                update_only: true,
                ..section(a)
            },
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.3.0.0/24")],
                ..section(c)
            },
        ];
        core.apply_peer_changes(uapi_peer_changes(&core.peers(), true, sections))
            .unwrap();
        let peers = core.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers.by_key(&c).unwrap().settings().allowed_ips,
            [net("10.3.0.0/24")]
        );
        let routes: Vec<_> = core.fib().routes().into_iter().map(|r| r.prefix).collect();
        assert_eq!(routes, [net("10.3.0.0/24")]);
    }
}
