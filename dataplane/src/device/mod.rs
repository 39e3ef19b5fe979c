//! The running device: TUN queues, UDP sockets, worker threads (each polling its backend,
//! `udp_tun.rs`), the handshake and timer threads, and the adapters of the local servers:
//! the WireGuard UAPI (`uapi.rs`) and the control channel (`ctl.rs`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mio::Waker;
use socket2::Socket;

use crate::forward::{Core, PeerChange, PeerSpec, Settings, Worker};
use crate::io::backend;
use crate::io::ifaddr;
use crate::io::tun::{self, TunQueue};
use crate::io::udp::{self, MmsgScratch};

mod afxdp;
mod ctl;
mod uapi;
mod udp_tun;
mod window;

pub use afxdp::AfXdpOptions;
pub use ctl::serve_ctl;
use udp_tun::{RealSink, UdpTun};

/// Nice value of the handshake thread (the workers run at 0).
const HANDSHAKE_NICE: i32 = 10;

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
    /// Serve the underlay through AF_XDP (`None`: the kernel's UDP sockets only).
    pub afxdp: Option<AfXdpOptions>,
    /// Bounds of the local servers: UAPI and control-channel clients, control messages.
    pub local: LocalLimits,
}

/// Bounds of the local servers (`[interface] max_uapi_clients`, `max_control_clients`,
/// `max_control_message`), read at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLimits {
    /// UAPI clients at once; beyond, the oldest is closed.
    pub uapi_clients: usize,
    /// Control-channel clients at once; beyond, new ones are closed.
    pub control_clients: usize,
    /// The largest control-channel message taken from a client, in bytes.
    pub control_message: usize,
}

impl Default for LocalLimits {
    fn default() -> Self {
        Self {
            uapi_clients: crate::uapi::LIMITS.max_conns,
            control_clients: crate::ctl::server::LIMITS.max_conns,
            control_message: crate::ctl::proto::MAX_MESSAGE,
        }
    }
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
            afxdp: None,
            local: LocalLimits::default(),
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
    /// The AF_XDP interfaces, underlay and mesh (their programs detach when the last
    /// reference goes; the FIB's route observer holds one).
    xdp_ifaces: Arc<Vec<afxdp::Attached>>,
    /// The configuration file and what of it runs, for [`Device::reload`].
    config_file: Mutex<Option<(std::path::PathBuf, crate::config::DeviceConfig)>>,
    /// Drops by reason over the last minute (`isthmusctl show`), sampled by the timer thread.
    drops: Mutex<window::Window>,
    /// Bounds of the UAPI and control-channel servers.
    local: LocalLimits,
}

impl Device {
    /// Drops so far, by reason ([`crate::stats::DropReason::ALL`]'s order).
    fn drop_totals(&self) -> Vec<u64> {
        let t = self.core.totals();
        crate::stats::DropReason::ALL
            .iter()
            .map(|&r| t.dropped(r))
            .collect()
    }

    /// Drops in the last minute, by reason ([`crate::stats::DropReason::ALL`]'s order).
    fn drops_last_minute(&self) -> Vec<u64> {
        let now = self.drop_totals();
        let w = self
            .drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.growth(&now)
    }

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
        let (xdp_ifaces, mut xdp_workers) = match &opts.afxdp {
            Some(x) => {
                let (u, w) = afxdp::setup(x, threads, port)?;
                (u, w.into_iter().map(Some).collect())
            }
            None => (Vec::new(), Vec::new()),
        };
        xdp_workers.resize_with(threads, || None);
        let core = Core::new(
            ifname,
            Settings {
                mtu: opts.mtu,
                ..opts.settings
            },
        );
        let xdp_ifaces = Arc::new(xdp_ifaces);
        if xdp_ifaces.iter().any(afxdp::Attached::is_mesh) {
            // The mesh programs' tunnel tables follow the FIB, change by change.
            let ifaces = xdp_ifaces.clone();
            core.observe_routes(Box::new(move |ops| {
                static WARN: std::sync::Mutex<RateLimitedWarn> =
                    std::sync::Mutex::new(RateLimitedWarn::new());
                for i in ifaces.iter() {
                    if let Err(e) = i.follow_routes(ops) {
                        let msg = format!("{}: could not update the XDP tunnel table: {e}", i.name);
                        WARN.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .warn(&msg);
                    }
                }
            }));
        }
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
            drops: Mutex::default(),
            xdp_ifaces,
            config_file: Mutex::new(None),
            local: opts.local,
        });
        let mut handles = Vec::new();
        for (i, (q, xdp)) in queues.into_iter().zip(xdp_workers).enumerate() {
            let d = dev.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            handles.push(
                thread::Builder::new()
                    .name(format!("isthmus-w{i}"))
                    .spawn(move || d.worker_loop(i, q, xdp, &tx))?,
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

    /// The UDP port and the fwmark in use.
    fn port_and_mark(&self) -> (u16, u32) {
        let net = self
            .net
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (net.port, net.fwmark)
    }

    /// Point the XDP programs at the current port, the underlay's current addresses, the
    /// box's own addresses and the tunnel MTU.
    fn follow_xdp(&self, port: u16) {
        if self.xdp_ifaces.is_empty() {
            return;
        }
        let own: Vec<std::net::IpAddr> = ifaddr::all()
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.addr)
            .collect();
        let mtu = self.core.settings().mtu;
        static WARN: std::sync::Mutex<RateLimitedWarn> =
            std::sync::Mutex::new(RateLimitedWarn::new());
        for u in self.xdp_ifaces.iter() {
            if let Err(e) = u.follow(port, &own, mtu) {
                let msg = format!("{}: could not update the XDP program's maps: {e}", u.name);
                WARN.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .warn(&msg);
            }
        }
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
        self.follow_xdp(bound);
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

    /// A worker: its UDP + TUN backend polled by the worker loop until shutdown.
    fn worker_loop(
        self: &Arc<Self>,
        idx: usize,
        tunq: TunQueue,
        xdp: Option<afxdp::XdpWorker>,
        ready: &std::sync::mpsc::Sender<io::Result<()>>,
    ) {
        let mut fwd = Worker::new(self.core.clone());
        let mut backend = match UdpTun::new(self.clone(), idx, tunq, fwd.counters(), xdp) {
            Ok((backend, waker)) => {
                self.wakers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(waker);
                let _ = ready.send(Ok(()));
                backend
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if let Err(e) = backend::run(&mut fwd, &mut backend, &self.shutdown) {
            tracing::warn!(ifname = %self.ifname, %e, "worker stopped");
        }
        // The TUN device is gone (or we were asked to stop): stop everything.
        self.shutdown();
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
                xdp: None,
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
        let mut probes = crate::forward::Probes::default();
        let mut last_tick = Instant::now();
        // The timers run every 100 ms; the liveness probes, when a peer has one, at a tenth
        // of the shortest probe interval.
        let mut pace = TICK;
        while !self.shutdown.load(Relaxed) {
            thread::sleep(pace);
            let socks = self.sockets.load_full();
            if let Some(s) = socks.first() {
                let mut sink = RealSink {
                    udp_fd: s.as_raw_fd(),
                    tun: None,
                    scratch: &mut scratch,
                    counters: &counters,
                    xdp: None,
                };
                let now = Instant::now();
                if now.duration_since(last_tick) >= TICK {
                    fwd.tick(&mut sink);
                    last_tick = now;
                }
                pace = fwd
                    .probe(&mut probes, now, &mut sink)
                    .map_or(TICK, |shortest| {
                        (shortest / 10).clamp(Duration::from_millis(2), TICK)
                    });
            }
            let now = Instant::now();
            let mut drops = self
                .drops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if drops.due(now) {
                drops.record(now, self.drop_totals());
            }
            drop(drops);
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.core.reset_rate_limiter();
                last_reset = Instant::now();
            }
            if last_addr.elapsed() >= Duration::from_secs(1) {
                // Follow what wg-quick or the operator do to the interface: its MTU bounds
                // relayed packets, its addresses source our ICMP errors. The XDP programs
                // follow the underlay's addresses.
                last_addr = Instant::now();
                self.follow_xdp(self.listen_port());
                let cur = self.core.settings();
                let mut next = (*cur).clone();
                if let Ok(mtu) = tun::mtu(&self.ifname) {
                    next.mtu = mtu;
                }
                let addrs: Vec<_> = ifaddr::addresses(&self.ifname)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.addr)
                    .collect();
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

/// The period of the peers' timers (handshake retries, rekeys, keepalives).
const TICK: Duration = Duration::from_millis(100);

/// A warning printed at most once every 10 seconds, with the count of suppressed ones.
#[derive(Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

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

/// Serve Prometheus metrics over HTTP on `addr` in a background thread; with
/// `wireguard_exporter`, the per-peer series under wireguard_exporter's names as well.
pub fn serve_metrics(
    addr: SocketAddr,
    core: Arc<Core>,
    wireguard_exporter: bool,
) -> io::Result<SocketAddr> {
    crate::io::metrics::serve(addr, "isthmus-metrics", move || {
        crate::stats::render(&core.sample(), wireguard_exporter)
    })
}

impl Device {
    /// Apply a configuration file: key, peers (with names and classes), static routes, and
    /// the interface's addresses (set with iproute2, then the link is brought up).
    pub fn apply_config(&self, cfg: &crate::config::DeviceConfig) -> io::Result<()> {
        self.core.set_private_key(cfg.interface.private_key);
        let changes = cfg.peers.iter().map(|p| {
            PeerChange::Upsert(PeerSpec {
                public_key: p.public_key,
                endpoint: p.endpoint,
                settings: p.settings(),
            })
        });
        self.core.apply_peer_changes(changes).map_err(|e| {
            io::Error::other(format!(
                "peer {}: {}",
                cfg.peers[e.index].name.as_deref().unwrap_or("(unnamed)"),
                e.error
            ))
        })?;
        self.core.set_static_routes(static_routes(cfg)?);
        for a in &cfg.interface.address {
            run_ip(&["address", "add", &a.to_string(), "dev", &self.ifname])?;
        }
        run_ip(&["link", "set", "dev", &self.ifname, "up"])?;
        Ok(())
    }
}

impl Device {
    /// Applies a re-read configuration file (`SIGHUP`, `isthmusctl reload`) as a difference
    /// from `old`, the one running, with `wg syncconf`'s meaning: the file says which peers
    /// there are. Peers added are added, peers gone (from the file, or added at run time and
    /// not in it) are removed, and peers changed are updated in place: an established session
    /// is kept unless its keys change (the preshared key, or the keepalive, which boringtun
    /// fixes per session); an endpoint is set only where the file's changed, so a peer that
    /// roamed keeps its current one. Static routes are replaced and the interface's addresses
    /// follow the file. Each table is published once, whole, so no route the new file keeps
    /// is missing at any moment. Returns what changed, and the keys that only a restart
    /// applies.
    pub fn reload_config(
        &self,
        old: &crate::config::DeviceConfig,
        new: &crate::config::DeviceConfig,
    ) -> io::Result<ReloadReport> {
        let mut report = ReloadReport::default();
        let (o, n) = (&old.interface, &new.interface);
        let restart_only = [
            ("name", o.name != n.name),
            ("listen_port", o.listen_port != n.listen_port),
            ("fwmark", o.fwmark != n.fwmark),
            ("threads", o.threads != n.threads),
            ("metrics", o.metrics != n.metrics),
            ("control_socket", o.control_socket != n.control_socket),
            ("backend", o.backend != n.backend),
            ("underlay", o.underlay != n.underlay),
            ("mesh", o.mesh != n.mesh),
            ("xdp_mode", o.xdp_mode != n.xdp_mode),
            ("xsk_mode", o.xsk_mode != n.xsk_mode),
            ("busy_poll_us", o.busy_poll_us != n.busy_poll_us),
            ("max_uapi_clients", o.max_uapi_clients != n.max_uapi_clients),
            (
                "max_control_clients",
                o.max_control_clients != n.max_control_clients,
            ),
            (
                "max_control_message",
                o.max_control_message != n.max_control_message,
            ),
        ];
        report.restart_only = (restart_only.iter())
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| format!("interface.{k}"))
            .collect();
        if n.private_key != o.private_key {
            // A new identity: every session starts over, as with `wg set private-key`.
            self.core.set_private_key(n.private_key);
            report
                .changes
                .push("private key (every session starts over)".into());
        }
        if n.max_peers != o.max_peers {
            // Before the peers: a raised bound lets the file's new peers in. A lowered one
            // applies to peers added from now on; none is removed for it.
            let mut s = (*self.core.settings()).clone();
            s.max_peers = n.max_peers;
            self.core.set_settings(s);
            report.changes.push(format!("max_peers {}", n.max_peers));
        }
        let before = self.core.peers();
        let mut changes = Vec::new();
        // Removals first, so that a file that swaps peers at max_peers fits.
        for peer in before.iter() {
            if !new.peers.iter().any(|p| p.public_key == peer.public_key) {
                report.changes.push(format!("peer {} removed", peer.label));
                changes.push(PeerChange::Remove(peer.public_key));
            }
        }
        for p in &new.peers {
            let was = old.peers.iter().find(|q| q.public_key == p.public_key);
            let present = before.by_key(&p.public_key).is_some();
            if present && was == Some(p) {
                continue;
            }
            let label = crate::tunnel::log_name(p.name.as_deref(), &p.public_key);
            report.changes.push(if present {
                format!("peer {label} changed")
            } else {
                format!("peer {label} added")
            });
            changes.push(PeerChange::Upsert(PeerSpec {
                public_key: p.public_key,
                // The file's endpoint where it is new or changed; else the current one stays.
                endpoint: p
                    .endpoint
                    .filter(|e| !present || was.is_none_or(|w| w.endpoint != Some(*e))),
                settings: p.settings(),
            }));
        }
        if !changes.is_empty() {
            self.core.apply_peer_changes(changes).map_err(|e| {
                io::Error::other(format!(
                    "peer {}: {}",
                    crate::tunnel::short_key(&e.public_key),
                    e.error
                ))
            })?;
        }
        if old.routes != new.routes || o.address != n.address {
            self.core.set_static_routes(static_routes(new)?);
            report.changes.push("static routes".into());
        }
        for a in n.address.iter().filter(|a| !o.address.contains(a)) {
            run_ip(&["address", "add", &a.to_string(), "dev", &self.ifname])?;
            report.changes.push(format!("address {a} added"));
        }
        for a in o.address.iter().filter(|a| !n.address.contains(a)) {
            run_ip(&["address", "del", &a.to_string(), "dev", &self.ifname])?;
            report.changes.push(format!("address {a} removed"));
        }
        if n.mtu != o.mtu {
            let mtu = n.mtu.unwrap_or(crate::DEFAULT_MTU).to_string();
            run_ip(&["link", "set", "dev", &self.ifname, "mtu", &mtu])?;
            report.changes.push(format!("mtu {mtu}"));
        }
        if n.mss_clamp != o.mss_clamp || n.unrouted != o.unrouted {
            let mut s = (*self.core.settings()).clone();
            s.mss_clamp = n.mss_clamp;
            s.unrouted_local = n.unrouted != Some(crate::config::Unrouted::Drop);
            self.core.set_settings(s);
            report.changes.push("mss_clamp / unrouted".into());
        }
        if (n.icmp_rate, n.icmp_burst) != (o.icmp_rate, o.icmp_burst) {
            let mut s = (*self.core.settings()).clone();
            (s.icmp_rate, s.icmp_burst) = (n.icmp_rate, n.icmp_burst);
            self.core.set_settings(s);
            report.changes.push("icmp_rate / icmp_burst".into());
        }
        Ok(report)
    }
}

impl Device {
    /// Remembers the configuration file `cfg` was read from (and applied), for
    /// [`Device::reload`].
    pub fn set_config_file(&self, path: std::path::PathBuf, cfg: crate::config::DeviceConfig) {
        *self
            .config_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((path, cfg));
    }

    /// Reads the configuration file again and applies the difference (`SIGHUP`, `isthmusctl
    /// reload`; see [`Device::reload_config`]). A file that does not load is refused with
    /// its `FILE:LINE: KEY` error and the running state is kept. Logs what it did.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        let mut guard = self
            .config_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((path, old)) = guard.as_mut() else {
            let e = "started without --config: there is no file to reload".to_string();
            tracing::warn!("reload: {e}");
            return Err(e);
        };
        let new = match crate::config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, the running configuration stays: {e}");
                return Err(e.to_string());
            }
        };
        match self.reload_config(old, &new) {
            Ok(report) => {
                if report.changes.is_empty() {
                    tracing::info!(file = %path.display(), "reloaded: nothing changed");
                } else {
                    tracing::info!(file = %path.display(), changes = %report.changes.join(", "), "reloaded");
                }
                if !report.restart_only.is_empty() {
                    tracing::warn!(
                        keys = %report.restart_only.join(", "),
                        "changed in the file; they take effect at the next start"
                    );
                }
                *old = new;
                Ok(report)
            }
            Err(e) => {
                // What was applied before the failure stays; the next reload compares with
                // the old file again and applies the rest (upserts are idempotent).
                tracing::error!("reload: {e}");
                Err(e.to_string())
            }
        }
    }
}

/// What a reload changed, and what it could not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The changes applied, in words.
    pub changes: Vec<String>,
    /// Keys that changed in the file but take effect only at the next start.
    pub restart_only: Vec<String>,
}

/// The static routes of a configuration: its `[[route]]`s and the interface's own addresses
/// (local, whatever else is routed).
fn static_routes(
    cfg: &crate::config::DeviceConfig,
) -> io::Result<Vec<(ipnet::IpNet, crate::fib::Via)>> {
    let mut routes: Vec<(ipnet::IpNet, crate::fib::Via)> =
        cfg.routes.iter().map(|r| (r.prefix, r.via)).collect();
    for a in &cfg.interface.address {
        let host = ipnet::IpNet::new(a.addr(), a.max_prefix_len()).map_err(io::Error::other)?;
        routes.push((host, crate::fib::Via::Local));
    }
    Ok(routes)
}

/// Run `ip ARGS...` (iproute2), failing with its error output.
///
/// Not rtnetlink: the netlink socket code (requests, acks, extended acks, dumps) lives in the
/// control plane's `kernel.rs`, whose crate depends on this one, and sharing it would move some
/// 650 lines here; `SIOCSIFADDR`/`SIOCSIFFLAGS` ioctls would be the smaller way off iproute2.
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
