//! `isthmus-cp`: the Babel daemon. It owns every piece of I/O around the sans-I/O
//! [`Router`]: sockets on mesh interfaces, the data plane's control channel (punted Babel
//! packets in, injected ones out, FIB snapshots and updates), netlink for kernel routes,
//! timers, the status socket for `isthmusctl` and the Prometheus endpoint.
//!
//! One thread runs the router; readers (interface sockets, the control channel, the status
//! socket, metrics, signals) feed it through one channel, so the router needs no locks.
//!
//! Non-stop forwarding: after a start, nothing is pushed to the data plane or the kernel until
//! the neighbours have had time to send their tables (two hello intervals and a second); the
//! data plane forwards on its last table, marked stale, meanwhile. Then one snapshot replaces
//! the table without a flush, and changes follow incrementally. When and what to write is
//! [`reconcile`]'s (sans I/O, one [`reconcile::Reconciler`] per table); the daemon only feeds it
//! the routes, the time and the tables ([`tables`]: the kernel, the data plane's FIB).

mod links;
pub mod reconcile;
pub mod status;
mod tables;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ipnet::IpNet;
use isthmus_dataplane::ctl::proto::{
    read_msg, write_msg, CtlRoute, Msg, PeerEvent, PROTOCOL_VERSION,
};
use isthmus_dataplane::fib::{self, RouteOrigin};
use isthmus_dataplane::io::ifaddr;
use isthmus_dataplane::io::privs::{self, Cap, User};
use isthmus_dataplane::io::unix::RateLimit;
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::tunnel::{short_key, PeerInfo};
use isthmus_dataplane::DEFAULT_MTU;
use tracing::{debug, info, warn};

pub use links::{unwrap, wrap};

use crate::babel::packet::{RouterId, MULTICAST};
use crate::babel::{self, Event, LinkConfig, LinkId, Router, Selected};
use crate::config::{self, CpConfig, DefaultRoute, Direction, FilterAction};
use crate::kernel::{Kernel, KernelRoute, RTPROT_ISTHMUS};
use reconcile::{Phase, Reconciler, Report, TableRoute, Timing};
use tables::FibChannel;

/// Default Prometheus address of `isthmus-cp`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9587";
/// Where sockets live: the data plane's run directory.
pub const SOCKET_DIR: &str = isthmus_dataplane::ctl::RUN_DIR;

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Control channel of the data plane.
    pub ctl_socket: Option<PathBuf>,
    /// Status socket for `isthmusctl`.
    pub status_socket: Option<PathBuf>,
    /// Metrics address; `Some(None)` turns metrics off.
    pub metrics: Option<Option<SocketAddr>>,
    /// The configuration file, read again on `SIGHUP` and `isthmusctl reload`.
    pub config_file: Option<PathBuf>,
    /// The user to run as once set up (else `[interface] user`).
    pub user: Option<String>,
}

/// What the router thread is told.
pub enum Input {
    /// A Babel packet from a kernel interface.
    Packet {
        /// Link.
        link: LinkId,
        /// Source address.
        from: IpAddr,
        /// UDP payload.
        bytes: Vec<u8>,
    },
    /// The control channel connected: where to write.
    CtlUp(UnixStream),
    /// A message from the data plane.
    Ctl(Msg),
    /// The control channel went away.
    CtlDown(String),
    /// A status query (`neighbours`, `routes`, `babel`, `metrics`) and where to answer.
    Query(String, Sender<String>),
    /// The kernel announced a link or address change: follow the interfaces.
    Interfaces,
    /// SIGHUP: read the configuration file again.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

/// How a Babel link is reached.
#[derive(Debug, Clone)]
enum Via {
    /// A WireGuard peer of the data plane.
    Peer(Key),
    /// A kernel interface.
    Iface { ifindex: u32 },
}

struct LinkInfo {
    name: String,
    class: config::LinkClass,
    via: Via,
    cfg: LinkConfig,
}

/// The tunnel peers' Babel links follow the data plane's peers: a peer is a link from the
/// moment the data plane has it (and an endpoint for it) until it is removed, however it came
/// (the configuration file, `wg set`, `wg syncconf`). The data plane says when its peers
/// change (`PeerEvent`); the daemon then asks for the whole list (`GetPeers`) and makes the
/// links match it, so a lost event costs nothing that the next one does not repair.
struct PeerLinks {
    /// `[[peer]]`s of the configuration file: name, class, overrides, Babel on or off.
    configured: HashMap<Key, config::BabelPeer>,
    /// Parameters of a peer that the file does not name: its class's.
    classes: config::LinkClasses,
    /// Our addresses on tunnel links.
    address: Ipv6Addr,
    ipv4: Option<Ipv4Addr>,
    max_packet: usize,
    /// Peers without an endpoint yet: quiet (no hellos into the void) until they get one.
    waiting: HashSet<Key>,
    /// A `GetPeers` is on its way; `again`: the peers changed since it was sent.
    asked: bool,
    again: bool,
}

/// A `[[babel.interface]]` that is there: what its link was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IfaceLink {
    id: LinkId,
    ifindex: u32,
    link_local: Ipv6Addr,
    ipv4: Option<Ipv4Addr>,
}

/// Import/export policy from `[[babel.filter]]` and `default_route`.
struct ConfigPolicy {
    filters: Vec<config::Filter>,
    default_route: DefaultRoute,
}

impl ConfigPolicy {
    fn decide(&self, dir: Direction, link: &str, prefix: &IpNet) -> Option<u16> {
        if prefix.prefix_len() == 0 && self.default_route != DefaultRoute::Accept {
            // Default routes: ignored when learned unless accepted; ours go out when we
            // originate them.
            if dir == Direction::In || self.default_route == DefaultRoute::Ignore {
                return None;
            }
        }
        match self.filters.iter().find(|f| f.matches(dir, link, prefix)) {
            None => Some(0),
            Some(f) => match f.action {
                FilterAction::Accept => Some(0),
                FilterAction::Deny => None,
                FilterAction::AddMetric(m) => Some(m),
            },
        }
    }
}

impl babel::Policy for ConfigPolicy {
    fn import(&self, link: &str, prefix: &IpNet) -> Option<u16> {
        self.decide(Direction::In, link, prefix)
    }
    fn export(&self, link: &str, prefix: &IpNet) -> Option<u16> {
        self.decide(Direction::Out, link, prefix)
    }
}

/// Counters of the daemon's own I/O.
#[derive(Debug, Default, Clone)]
pub struct IoStats {
    /// Punted packets that were not Babel (by reason).
    pub punt_errors: BTreeMap<&'static str, u64>,
    /// Send failures (interface or control channel).
    pub send_errors: u64,
    /// FIB messages sent (snapshots, updates).
    pub fib_snapshots: u64,
    /// Incremental FIB updates sent.
    pub fib_updates: u64,
    /// Routes in the data plane's control table.
    pub fib_routes: u64,
    /// FIB push latencies (send to the data plane's Ok), seconds.
    pub fib_push: isthmus_dataplane::io::metrics::Histogram,
    /// Neighbours that appeared / went away.
    pub neighbours_up: u64,
    /// Neighbours that went away (hello timeout, link down, link removed).
    pub neighbours_down: u64,
    /// Liveness-probe reports: peer links down / up (failovers at the tunnel's speed).
    pub probe_down: u64,
    /// Peer links reported up again by the liveness probe.
    pub probe_up: u64,
    /// Last push latency.
    pub fib_push_last: Option<Duration>,
    /// Kernel routes installed by us.
    pub kernel_routes: u64,
    /// Kernel route operations that failed.
    pub kernel_errors: u64,
    /// Control channel connected.
    pub ctl_connected: bool,
    /// Times the control channel (re)connected.
    pub ctl_connects: u64,
    /// Synchronised with the data plane and the kernel (after the start-up hold).
    pub synced: bool,
    /// Received packets dropped: the router thread's input queue was full.
    pub input_dropped: u64,
    /// Status-socket clients closed to make room (`max_status_clients`).
    pub status_evicted: u64,
}

/// The running daemon's state, on the router thread.
pub struct Daemon {
    cfg: CpConfig,
    router: Router,
    links: BTreeMap<LinkId, LinkInfo>,
    /// The next link's id (ids are not reused).
    next_link: u32,
    by_key: HashMap<Key, LinkId>,
    peers: PeerLinks,
    ifaces: HashMap<LinkId, links::IfaceSocket>,
    /// `[[babel.interface]]` by name: its link, while the interface is there with a link-local
    /// address.
    iface_links: HashMap<String, IfaceLink>,
    /// Configured interfaces not there (yet): logged once.
    waiting_ifaces: HashSet<String>,
    /// For the interface sockets' readers.
    tx: Sender<Input>,
    /// Bytes of received packets the readers may queue for the router thread.
    budget: Arc<InputBudget>,
    /// Status-socket clients closed to make room for a new one.
    status_evicted: Arc<AtomicU64>,
    /// The router's refusals at its tables' bounds as last logged.
    limits_seen: [u64; babel::Table::COUNT],
    /// The configuration file, for reloads.
    config_file: Option<PathBuf>,
    /// The control channel's writing half: the data plane's FIB, injected packets.
    dp: FibChannel,
    ifname: String,
    tun_ifindex: Option<u32>,
    /// The data plane's FIB: what it should hold, what it holds.
    fib: Reconciler<CtlRoute>,
    /// The kernel's routing table and its reconciler, with `kernel_routes`.
    kernel: Option<(Kernel, Reconciler<KernelRoute>)>,
    started: Instant,
    stats: IoStats,
    status_path: PathBuf,
    /// Rate limits of the warnings that can repeat.
    warnings: Warnings,
}

fn derive_router_id(pk: Option<&Key>) -> RouterId {
    let mut id = [0u8; 8];
    match pk {
        Some(k) => id.copy_from_slice(&k.0[..8]),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            id = (t ^ u64::from(std::process::id())).to_be_bytes();
        }
    }
    id[0] = (id[0] & 0xfc) | 0x02;
    if id == [0xff; 8] {
        id[7] = 0xfe;
    }
    id
}

fn derive_link_local(pk: Option<&Key>) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    if let Some(k) = pk {
        a[8..].copy_from_slice(&k.0[8..16]);
    } else {
        a[15] = 1;
    }
    a[8] &= 0xfd;
    Ipv6Addr::from(a)
}

/// Starts the daemon and runs it until SIGTERM/SIGINT.
pub fn run(cfg: CpConfig, opts: Options) -> anyhow::Result<()> {
    let now = Instant::now();
    let ifname = cfg
        .device
        .interface
        .name
        .clone()
        .unwrap_or_else(|| "isthmus0".into());
    let public = cfg
        .device
        .interface
        .private_key
        .as_ref()
        .map(Key::public_key);
    let router_id = cfg
        .babel
        .router_id
        .unwrap_or_else(|| derive_router_id(public.as_ref()));
    let mut bcfg = babel::Config::new(router_id);
    bcfg.wall_clock_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64);
    // PC indices and challenge nonces must be unpredictable (RFC 8967 §4.1, §4.3).
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    bcfg.auth_seed = Some(seed);
    bcfg.limits = cfg.babel.limits;
    warn_if_snapshot_too_large(&cfg);
    let mut router = Router::new(bcfg, now);
    router.set_policy(Box::new(ConfigPolicy {
        filters: cfg.babel.filters.clone(),
        default_route: cfg.babel.default_route,
    }));
    let (tx, rx) = mpsc::channel::<Input>();

    let mtu = usize::from(cfg.device.interface.mtu.unwrap_or(DEFAULT_MTU));
    let link_local = cfg
        .babel
        .link_local
        .or_else(|| {
            cfg.device
                .interface
                .address
                .iter()
                .find_map(|n| match n.addr() {
                    IpAddr::V6(a) if a.is_unicast_link_local() => Some(a),
                    _ => None,
                })
        })
        .unwrap_or_else(|| derive_link_local(public.as_ref()));
    let ipv4 = cfg.babel.ipv4_next_hop.or_else(|| {
        cfg.device
            .interface
            .address
            .iter()
            .find_map(|n| match n.addr() {
                IpAddr::V4(a) => Some(a),
                _ => None,
            })
    });

    // Tunnel peers become links when the data plane reports them (`Daemon::sync_peers`).
    let peers = PeerLinks {
        configured: (cfg.babel.peers.iter())
            .map(|p| (p.public_key, p.clone()))
            .collect(),
        classes: cfg.babel.classes.clone(),
        address: link_local,
        ipv4,
        max_packet: mtu.saturating_sub(48).max(512),
        waiting: HashSet::new(),
        asked: false,
        again: false,
    };
    for p in &cfg.babel.originate {
        router.originate(*p, 0, now);
    }
    if cfg.babel.default_route == DefaultRoute::Originate {
        router.originate("0.0.0.0/0".parse().expect("valid"), 0, now);
        router.originate("::/0".parse().expect("valid"), 0, now);
    }

    let kernel = if cfg.babel.kernel_routes {
        Some(Kernel::open(RTPROT_ISTHMUS, cfg.babel.kernel_table)?)
    } else {
        None
    };
    let ctl_path = opts
        .ctl_socket
        .clone()
        .or_else(|| cfg.device.interface.control_socket.clone())
        .unwrap_or_else(|| Path::new(SOCKET_DIR).join(format!("{ifname}.ctl")));
    let status_path = opts
        .status_socket
        .clone()
        .or_else(|| cfg.babel.control_socket.clone())
        .unwrap_or_else(|| Path::new(SOCKET_DIR).join(format!("{ifname}.cp")));
    let metrics = match opts.metrics {
        Some(m) => m,
        None if cfg.babel.metrics_off => None,
        None => Some(
            cfg.babel
                .metrics
                .unwrap_or_else(|| DEFAULT_METRICS.parse().expect("valid")),
        ),
    };

    let user = match opts
        .user
        .as_deref()
        .or(cfg.device.interface.user.as_deref())
    {
        Some(name) => {
            let u = User::lookup(name).with_context(|| format!("--user {name}"))?;
            privs::check_can_become(&u).with_context(|| format!("--user {name}"))?;
            Some(u)
        }
        None => None,
    };
    let budget = Arc::new(InputBudget::default());
    spawn_ctl(ctl_path.clone(), tx.clone(), budget.clone())?;
    let status_evicted = Arc::new(AtomicU64::new(0));
    let _status = spawn_status(
        &status_path,
        tx.clone(),
        cfg.babel.max_status_clients,
        status_evicted.clone(),
    )?;
    if let Some(addr) = metrics {
        let bound = spawn_metrics(addr, tx.clone())?;
        info!(%bound, "metrics");
    }
    spawn_signals(tx.clone())?;

    // The links we expect: the interfaces and the configured peers (those added at run time
    // have their class's timers, which the configuration also sets).
    let expected: Vec<babel::LinkParams> = (cfg.babel.interfaces.iter().map(|i| i.params))
        .chain(
            peers
                .configured
                .values()
                .filter(|p| p.enabled)
                .map(|p| p.params),
        )
        .collect();
    let hold = (expected.iter())
        .map(|p| p.hello_interval)
        .max()
        .unwrap_or(Duration::from_secs(4))
        * 2
        + Duration::from_secs(1);
    // Neighbours send IHUs every IHU interval and full tables every update interval: routes
    // not relearned after both are really gone.
    let cleanup = (expected.iter())
        .map(|p| p.update_interval.max(p.ihu_interval) + p.hello_interval)
        .max()
        .unwrap_or(Duration::from_secs(20));
    info!(
        router_id = %hex(&router_id),
        interfaces = cfg.babel.interfaces.len(),
        configured_peers = peers.configured.len(),
        ctl = %ctl_path.display(),
        status = %status_path.display(),
        "isthmus-cp started; first push to the data plane in {hold:?}"
    );
    let tun_ifindex = ifaddr::ifindex(&ifname).ok();
    let timing = Timing { hold, cleanup };
    let kernel = kernel.map(|mut k| {
        let mut routes = Reconciler::new(now, timing);
        // Routes a previous run installed stay until replaced or until the clean-up: no
        // flush, and no gap while neighbours are still being heard.
        match k.dump_own() {
            Ok(found) => routes.found(found),
            Err(e) => warn!("kernel: cannot list a previous run's routes: {e}"),
        }
        routes.connected(&mut k);
        (k, routes)
    });
    let mut d = Daemon {
        cfg,
        router,
        links: BTreeMap::new(),
        next_link: 0,
        by_key: HashMap::new(),
        peers,
        ifaces: HashMap::new(),
        iface_links: HashMap::new(),
        waiting_ifaces: HashSet::new(),
        tx: tx.clone(),
        budget,
        status_evicted,
        limits_seen: [0; babel::Table::COUNT],
        config_file: opts.config_file.clone(),
        dp: FibChannel::default(),
        ifname,
        tun_ifindex,
        fib: Reconciler::new(now, timing),
        kernel,
        started: now,
        stats: IoStats::default(),
        status_path,
        warnings: Warnings::default(),
    };
    // Interfaces: those there now become links; the others are waited for. One that is
    // there but just came up gets its link-local address after duplicate address detection:
    // give it a moment, so that the first hellos leave from a usable address.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && d.cfg.babel.interfaces.iter().any(|i| {
            ifaddr::ifindex(&i.name).is_ok_and(|ifindex| {
                !ifaddr::all().unwrap_or_default().iter().any(|a| {
                    a.ifindex == ifindex
                        && matches!(a.addr, IpAddr::V6(v) if v.is_unicast_link_local())
                })
            })
        })
    {
        thread::sleep(Duration::from_millis(200));
    }
    d.follow_interfaces(Instant::now());
    spawn_link_watch(tx)?;
    if let Some(user) = &user {
        drop_privileges(user, &d.status_path, d.config_file.as_deref())?;
    }
    isthmus_dataplane::io::notify::notify("READY=1");
    // Our own prefixes go to the data plane as local routes.
    for (prefix, _) in d.router.xroutes().collect::<Vec<_>>() {
        d.fib.want(
            prefix,
            Some(CtlRoute {
                prefix,
                next_hop: fib::Via::Local,
            }),
        );
    }
    d.run(rx)
}

/// The kernel metric of a route with Babel metric `metric`: the same number, so that other
/// daemons on the box (and `ip route`) can compare our routes with theirs, as babeld's
/// `reflect-kernel-metric` does. (The kernel stores IPv6 metric 0 as 1024; a learned route's
/// metric is never 0, but use that so dumps compare equal.)
fn kernel_metric(p: &IpNet, metric: u16) -> u32 {
    match (p, metric) {
        (IpNet::V6(_), 0) => 1024,
        _ => u32::from(metric),
    }
}

/// The kernel route for a prefix reached through a tunnel peer: into the TUN.
fn tun_route(prefix: IpNet, ifindex: u32, metric: u16) -> KernelRoute {
    KernelRoute {
        prefix,
        gateway: None,
        ifindex,
        metric: kernel_metric(&prefix, metric),
    }
}

/// A full table of `max_routes` routes must fit one control-channel message of the data
/// plane's `max_control_message`, or the data plane refuses the snapshot.
fn warn_if_snapshot_too_large(cfg: &CpConfig) {
    let routes = cfg.babel.limits.routes + cfg.babel.originate.len() + 2;
    let bytes = routes.saturating_mul(isthmus_dataplane::ctl::proto::MAX_ROUTE_BYTES) + 64;
    let max = cfg.device.interface.max_control_message;
    if bytes > max {
        warn!(
            "a full table of babel.max_routes = {} routes takes up to {bytes} bytes, more than \
             interface.max_control_message = {max}: the data plane would refuse it; raise \
             max_control_message or lower max_routes",
            cfg.babel.limits.routes
        );
    }
}

/// At most one warning of a kind per this long: those that outside events can repeat (route
/// churn from Babel neighbours, interfaces flapping) must not flood the journal.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The rate limits of the warnings that can repeat, one per kind.
#[derive(Default)]
struct Warnings(HashMap<&'static str, RateLimit>);

impl Warnings {
    /// `Some(n)` when a warning of kind `what` may be logged now: `n` of them occurred since
    /// the last one logged (this one included).
    fn hit(&mut self, what: &'static str) -> Option<u64> {
        self.hit_n(what, 1)
    }

    /// [`Warnings::hit`] for `n` occurrences at once.
    fn hit_n(&mut self, what: &'static str, n: u64) -> Option<u64> {
        (self.0.entry(what))
            .or_insert_with(|| RateLimit::new(WARN_EVERY))
            .hit_n(Instant::now(), n)
    }
}

/// Bytes of received Babel packets (from interfaces, punted by the data plane) that may wait
/// for the router thread: under a flood faster than the router, the packets beyond are
/// dropped and counted (`isthmus_babel_limit_reached_total{table="input_queue"}`) instead of
/// queued without end.
pub const INPUT_QUEUE_BYTES: usize = 16 << 20;

/// The bytes of packets queued for the router thread, within [`INPUT_QUEUE_BYTES`].
#[derive(Debug, Default)]
pub struct InputBudget {
    queued: AtomicUsize,
    dropped: AtomicU64,
}

impl InputBudget {
    /// Room for a packet of `n` bytes: false (and counted) when there is none.
    pub fn take(&self, n: usize) -> bool {
        let room = self
            .queued
            .fetch_update(Relaxed, Relaxed, |q| {
                (q + n <= INPUT_QUEUE_BYTES).then_some(q + n)
            })
            .is_ok();
        if !room {
            self.dropped.fetch_add(1, Relaxed);
        }
        room
    }

    /// A packet of `n` bytes left the queue.
    pub fn give(&self, n: usize) {
        let _ = (self.queued).fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(n)));
    }

    /// Packets dropped for want of room.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// Logs what a reconciler reports, in the words of `table`; failures at most once per
/// [`WARN_EVERY`] each.
fn log_reports<R: TableRoute>(table: &str, routes: &mut Reconciler<R>, warnings: &mut Warnings) {
    while let Some(report) = routes.poll_report() {
        match report {
            Report::Replaced { routes } => info!(routes, "pushed a full table to the {table}"),
            Report::Reconciled {
                found,
                changes,
                kept,
                failed,
            } => info!(
                found,
                changes,
                kept_until_cleanup = kept,
                failed,
                "{table} routes reconciled"
            ),
            Report::CleanedUp { removed } => info!(
                routes = removed,
                "{table}: removed routes of a previous run that were not relearned"
            ),
            Report::Failed { op, error } => {
                if let Some(n) = warnings.hit("route_failed") {
                    warn!(?op, occurrences = n, "{table}: {error}");
                }
            }
            Report::ReplaceFailed { routes, error } => {
                if let Some(n) = warnings.hit("table_refused") {
                    warn!(
                        routes,
                        occurrences = n,
                        "{table}: a full table refused: {error}"
                    );
                }
            }
            Report::Lost { error } => {
                if let Some(n) = warnings.hit("table_lost") {
                    warn!(occurrences = n, "{table}: {error}");
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Daemon {
    fn run(&mut self, rx: mpsc::Receiver<Input>) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            let deadline = [
                self.fib.poll_timeout(),
                self.kernel.as_ref().and_then(|(_, r)| r.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .fold(
                self.router
                    .poll_timeout()
                    .unwrap_or(now + Duration::from_secs(1)),
                Instant::min,
            );
            let wait = deadline.saturating_duration_since(now);
            let first = match rx.recv_timeout(wait) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut batch: Vec<Input> = first.into_iter().collect();
            while let Ok(i) = rx.try_recv() {
                batch.push(i);
                if batch.len() > 1024 {
                    break;
                }
            }
            for input in batch {
                if !self.input(input) {
                    self.shutdown();
                    return Ok(());
                }
            }
            let now = Instant::now();
            if self.router.poll_timeout().is_some_and(|t| t <= now) {
                self.router.handle_timeout(now);
            }
            self.drain();
            self.log_limits();
            self.fib.poll(now, &mut self.dp);
            if let Some((k, routes)) = self.kernel.as_mut() {
                routes.poll(now, k);
            }
            self.log_reports();
        }
    }

    /// Logs the refusals at the tables' bounds since the last call: at most one warning per
    /// table and [`WARN_EVERY`], with the count since the last one.
    fn log_limits(&mut self) {
        let c = self.router.counters().limit_reached;
        let limits = self.router.limits();
        for t in babel::Table::ALL {
            let grew = c[t as usize] - self.limits_seen[t as usize];
            if grew == 0 {
                continue;
            }
            self.limits_seen[t as usize] = c[t as usize];
            if let Some(n) = self.warnings.hit_n(t.as_str(), grew) {
                warn!(
                    table = t.as_str(),
                    occurrences = n,
                    "Babel table full ({} = {}): new entries refused",
                    t.key(),
                    limits.of(t)
                );
            }
        }
        let dropped = self.budget.dropped();
        if dropped > self.stats.input_dropped {
            let grew = dropped - self.stats.input_dropped;
            self.stats.input_dropped = dropped;
            if let Some(n) = self.warnings.hit_n("input_queue", grew) {
                warn!(
                    table = "input_queue",
                    occurrences = n,
                    "received Babel packets dropped: {INPUT_QUEUE_BYTES} bytes already wait for the router"
                );
            }
        }
    }

    fn log_reports(&mut self) {
        log_reports("data plane", &mut self.fib, &mut self.warnings);
        if let Some((_, routes)) = self.kernel.as_mut() {
            log_reports("kernel", routes, &mut self.warnings);
        }
    }

    fn input(&mut self, input: Input) -> bool {
        let now = Instant::now();
        match &input {
            Input::Packet { bytes, .. } => self.budget.give(bytes.len()),
            Input::Ctl(Msg::Punt { packet, .. }) => self.budget.give(packet.len()),
            _ => {}
        }
        match input {
            Input::Packet { link, from, bytes } => self.router.handle(now, link, from, &bytes),
            Input::CtlUp(stream) => {
                info!("control channel to the data plane up");
                self.dp.connect(stream);
                // The data plane's TUN device: new when the data plane started after us or
                // restarted (its old device, and the kernel's routes into it, are gone).
                let tun = ifaddr::ifindex(&self.ifname).ok();
                if tun != self.tun_ifindex {
                    // A restart (not our first sight of the device): the kernel took the
                    // routes into the old one with it.
                    let replaced = self.tun_ifindex.is_some();
                    self.tun_ifindex = tun;
                    if let (Some(ifindex), Some((_, kroutes))) = (tun, self.kernel.as_mut()) {
                        for (prefix, sel) in self.router.selected() {
                            let via_peer = self
                                .links
                                .get(&sel.link)
                                .is_some_and(|l| matches!(l.via, Via::Peer(_)));
                            if via_peer {
                                if replaced {
                                    kroutes.forget(prefix);
                                }
                                kroutes.want(prefix, Some(tun_route(prefix, ifindex, sel.metric)));
                            }
                        }
                    }
                }
                self.stats.ctl_connects += 1;
                // The peers are the links: learn them (and what changed while we were away).
                self.peers.asked = false;
                self.ask_peers();
                if self.fib.wants_previous() {
                    // Learn what a previous run left in the data plane, to keep it until
                    // the clean-up (its answer is a `Routes` message).
                    let _ = self.dp.ask_routes();
                }
                // After the hold: the data plane may have restarted (empty table) or kept ours
                // (stale); a snapshot is right either way.
                self.fib.connected(&mut self.dp);
                self.log_reports();
            }
            Input::CtlDown(why) => {
                if self.dp.disconnect() {
                    warn!("control channel down: {why}");
                }
                self.fib.disconnected();
                self.peers.asked = false;
            }
            Input::Ctl(msg) => self.ctl_msg(msg, now),
            Input::Query(what, reply) => {
                let answer = if what.trim() == "reload" {
                    match self.reload(now) {
                        Ok(s) => format!("{s}\n"),
                        Err(e) => format!("error: {e}\n"),
                    }
                } else {
                    self.query(&what)
                };
                let _ = reply.send(answer);
            }
            Input::Interfaces => self.follow_interfaces(now),
            Input::Reload => {
                let _ = self.reload(now);
            }
            Input::Stop => {
                isthmus_dataplane::io::notify::notify("STOPPING=1");
                return false;
            }
        }
        true
    }

    fn ctl_msg(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Punt { peer, packet } => {
                let Some(&link) = self.by_key.get(&peer) else {
                    *self.stats.punt_errors.entry("unknown_peer").or_default() += 1;
                    return;
                };
                match links::unwrap(&packet) {
                    Ok((src, payload)) => self.router.handle(now, link, IpAddr::V6(src), payload),
                    Err(e) => {
                        let reason = match e {
                            links::UnwrapError::NotUdp6 => "not_udp6",
                            links::UnwrapError::Truncated => "truncated",
                            links::UnwrapError::Port => "port",
                            links::UnwrapError::Checksum => "checksum",
                        };
                        *self.stats.punt_errors.entry(reason).or_default() += 1;
                    }
                }
            }
            Msg::Ok => {
                if let Some(d) = self.dp.answered(true) {
                    self.stats.fib_push_last = Some(d);
                    self.stats.fib_push.observe(d.as_secs_f64());
                }
            }
            Msg::Error(e) => {
                self.dp.answered(false);
                if let Some(n) = self.warnings.hit("dp_refused") {
                    warn!(occurrences = n, "data plane refused a message: {e}");
                }
            }
            Msg::Event(ev) => {
                debug!(?ev, "data plane event");
                match ev {
                    PeerEvent::Added { .. } | PeerEvent::Changed { .. } => self.ask_peers(),
                    PeerEvent::Removed { peer } => {
                        self.peers.waiting.remove(&peer);
                        self.remove_peer_link(&peer, now);
                    }
                    PeerEvent::Down { peer } => {
                        if let Some(&id) = self.by_key.get(&peer) {
                            let name = self.links.get(&id).map_or("?", |l| l.name.as_str());
                            info!(
                                link = name,
                                "liveness probe: peer down, its neighbours and their routes go now"
                            );
                            self.router.link_down(id, now);
                            self.stats.probe_down += 1;
                        }
                    }
                    PeerEvent::Up { peer } => {
                        if let Some(&id) = self.by_key.get(&peer) {
                            let name = self.links.get(&id).map_or("?", |l| l.name.as_str());
                            info!(
                                link = name,
                                "liveness probe: peer up, hello and table request sent"
                            );
                            self.router.link_up(id, now);
                            self.stats.probe_up += 1;
                        }
                    }
                    PeerEvent::EndpointChanged { peer, .. } | PeerEvent::HandshakeUp { peer } => {
                        if self.peers.waiting.contains(&peer) {
                            self.ask_peers();
                        }
                    }
                }
            }
            Msg::Peers(list) => {
                self.peers.asked = false;
                self.sync_peers(&list, now);
                if std::mem::take(&mut self.peers.again) {
                    self.ask_peers();
                }
            }
            Msg::Routes(rs) if self.fib.wants_previous() => {
                let ours: Vec<CtlRoute> = rs
                    .into_iter()
                    .filter(|r| r.origin == RouteOrigin::Control)
                    .map(|r| CtlRoute {
                        prefix: r.prefix,
                        next_hop: r.next_hop,
                    })
                    .collect();
                if !ours.is_empty() {
                    info!(
                        routes = ours.len(),
                        "the data plane kept a previous run's routes"
                    );
                }
                self.fib.found(ours);
            }
            _ => {}
        }
    }

    /// Makes the links of the `[[babel.interface]]`s match the interfaces the kernel has now,
    /// as babeld and BIRD follow theirs: one that appeared (or got its link-local address back
    /// after coming up) gets a socket, the multicast group and hellos; one that went away (or
    /// down: the kernel takes its IPv6 addresses) loses its link, its neighbours and their
    /// routes at once; one deleted and created again gets a new socket on its new index.
    fn follow_interfaces(&mut self, now: Instant) {
        let addrs = ifaddr::all().unwrap_or_default();
        let wanted = self.cfg.babel.interfaces.clone();
        // Interfaces no longer in the file (a reload): their links go.
        let dropped: Vec<String> = (self.iface_links.keys())
            .filter(|n| !wanted.iter().any(|i| &i.name == *n))
            .cloned()
            .collect();
        for name in dropped {
            if let Some(c) = self.iface_links.remove(&name) {
                self.ifaces.remove(&c.id);
                self.links.remove(&c.id);
                self.router.remove_link(c.id, now);
                info!(interface = %name, "no longer in the configuration: its Babel link is gone");
            }
        }
        self.waiting_ifaces
            .retain(|n| wanted.iter().any(|i| &i.name == n));
        for i in &wanted {
            let found = ifaddr::ifindex(&i.name).ok().and_then(|ifindex| {
                let ll = addrs.iter().find_map(|a| match a.addr {
                    IpAddr::V6(v) if a.ifindex == ifindex && v.is_unicast_link_local() => Some(v),
                    _ => None,
                })?;
                let v4 = addrs.iter().find_map(|a| match a.addr {
                    IpAddr::V4(v) if a.ifindex == ifindex => Some(v),
                    _ => None,
                });
                Some((ifindex, ll, v4))
            });
            let current = self.iface_links.get(&i.name).copied();
            match (current, found) {
                (Some(c), Some((ifindex, ll, v4)))
                    if c.ifindex == ifindex && c.link_local == ll =>
                {
                    if let Some(l) = self.links.get_mut(&c.id) {
                        if l.cfg.params != i.params || l.class != i.class || l.cfg.keys != i.keys {
                            // Changed in the file (a reload): new timers, costs or MAC keys,
                            // same link (neighbours and their packet counters stay).
                            l.cfg.params = i.params;
                            l.cfg.keys = i.keys.clone();
                            l.class = i.class;
                            self.router.add_link(c.id, l.cfg.clone(), now);
                            info!(interface = %i.name, "interface's Babel parameters changed");
                        }
                    }
                    if c.ipv4 != v4 {
                        // A new IPv4 address: announced as our next hop from now on.
                        if let Some(l) = self.links.get_mut(&c.id) {
                            l.cfg.ipv4 = v4;
                            l.cfg.v4_via_v6 = v4.is_none();
                            self.router.add_link(c.id, l.cfg.clone(), now);
                        }
                        self.iface_links
                            .insert(i.name.clone(), IfaceLink { ipv4: v4, ..c });
                    }
                }
                (current, found) => {
                    if let Some(c) = current {
                        self.iface_links.remove(&i.name);
                        self.ifaces.remove(&c.id);
                        self.links.remove(&c.id);
                        self.router.remove_link(c.id, now);
                        info!(interface = %i.name, "interface gone, down or re-created: its Babel link, neighbours and their routes are gone");
                    }
                    match found {
                        Some((ifindex, ll, v4)) => self.open_iface(i, ifindex, ll, v4, now),
                        None => {
                            if self.waiting_ifaces.insert(i.name.clone()) {
                                info!(interface = %i.name, "waiting for the interface (absent, down, or without an IPv6 link-local address yet)");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Starts Babel on interface `i`, there now with index `ifindex`.
    fn open_iface(
        &mut self,
        i: &config::BabelInterface,
        ifindex: u32,
        link_local: Ipv6Addr,
        ipv4: Option<Ipv4Addr>,
        now: Instant,
    ) {
        let id = LinkId(self.next_link);
        let sock = match links::IfaceSocket::open(&i.name, ifindex) {
            Ok(s) => s,
            Err(e) => {
                if let Some(n) = self.warnings.hit("iface_socket") {
                    warn!(interface = %i.name, occurrences = n, "cannot speak Babel there yet: {e}");
                }
                self.waiting_ifaces.insert(i.name.clone());
                return;
            }
        };
        if let Err(e) = sock.spawn_reader(id, self.tx.clone(), self.budget.clone()) {
            if let Some(n) = self.warnings.hit("iface_reader") {
                warn!(interface = %i.name, occurrences = n, "cannot start its reader: {e}");
            }
            return;
        }
        self.next_link += 1;
        self.waiting_ifaces.remove(&i.name);
        self.ifaces.insert(id, sock);
        let cfg = LinkConfig {
            name: i.name.clone(),
            params: i.params,
            address: link_local,
            ipv4,
            v4_via_v6: ipv4.is_none(),
            max_packet: 1452,
            keys: i.keys.clone(),
        };
        self.links.insert(
            id,
            LinkInfo {
                name: i.name.clone(),
                class: i.class,
                via: Via::Iface { ifindex },
                cfg: cfg.clone(),
            },
        );
        self.iface_links.insert(
            i.name.clone(),
            IfaceLink {
                id,
                ifindex,
                link_local,
                ipv4,
            },
        );
        self.router.add_link(id, cfg, now);
        info!(interface = %i.name, ifindex, %link_local, "Babel on the interface");
    }

    /// Reads the configuration file again and applies the difference, without a flap: links
    /// that stay keep their neighbours (new timers or costs apply in place), interfaces and
    /// peers that come or go are added or removed, originated prefixes are announced or
    /// withdrawn, filters apply to what is learned from now on (a table request on every link
    /// makes the neighbours resend at once). A file that does not load is refused with its
    /// `FILE:LINE: KEY` error, and the running configuration stays.
    fn reload(&mut self, now: Instant) -> Result<String, String> {
        let Some(path) = self.config_file.clone() else {
            return Err("started without a configuration file".into());
        };
        let new = match config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                warn!("reload refused, the running configuration stays: {e}");
                return Err(format!("reload refused: {e}"));
            }
        };
        let mut changes = Vec::new();
        let (old_b, new_b) = (&self.cfg.babel, &new.babel);
        for p in new_b
            .originate
            .iter()
            .filter(|p| !old_b.originate.contains(p))
        {
            self.router.originate(*p, 0, now);
            self.fib.want(
                *p,
                Some(CtlRoute {
                    prefix: *p,
                    next_hop: fib::Via::Local,
                }),
            );
            changes.push(format!("originates {p}"));
        }
        for p in old_b
            .originate
            .iter()
            .filter(|p| !new_b.originate.contains(p))
        {
            self.router.withdraw(*p, now);
            self.fib.want(*p, None);
            changes.push(format!("withdraws {p}"));
        }
        let policy_changed =
            old_b.filters != new_b.filters || old_b.default_route != new_b.default_route;
        if policy_changed {
            self.router.set_policy(Box::new(ConfigPolicy {
                filters: new_b.filters.clone(),
                default_route: new_b.default_route,
            }));
            changes.push("filters".into());
        }
        warn_if_snapshot_too_large(&new);
        if old_b.limits != new_b.limits {
            // A lowered bound applies to new entries.
            self.router.set_limits(new_b.limits);
            changes.push("table limits".into());
        }
        if old_b.interfaces != new_b.interfaces {
            changes.push("interfaces".into());
        }
        if old_b.peers != new_b.peers || old_b.classes != new_b.classes {
            changes.push("peers' Babel settings".into());
        }
        let restart_only: Vec<&str> = [
            ("router_id", old_b.router_id != new_b.router_id),
            ("link_local", old_b.link_local != new_b.link_local),
            ("ipv4_next_hop", old_b.ipv4_next_hop != new_b.ipv4_next_hop),
            ("kernel_routes", old_b.kernel_routes != new_b.kernel_routes),
            ("kernel_table", old_b.kernel_table != new_b.kernel_table),
            ("metrics", old_b.metrics != new_b.metrics),
            (
                "control_socket",
                old_b.control_socket != new_b.control_socket,
            ),
            (
                "max_status_clients",
                old_b.max_status_clients != new_b.max_status_clients,
            ),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        self.peers.configured = (new_b.peers.iter())
            .map(|p| (p.public_key, p.clone()))
            .collect();
        self.peers.classes = new_b.classes.clone();
        self.cfg = new;
        // Interfaces added, removed or changed; then the peers' links, from the data plane's
        // list with the new settings.
        self.follow_interfaces(now);
        self.ask_peers();
        if policy_changed {
            let ids: Vec<LinkId> = self.links.keys().copied().collect();
            for id in ids {
                self.router.link_up(id, now);
            }
        }
        if !restart_only.is_empty() {
            warn!(
                keys = %restart_only.join(", "),
                "changed in the file; they take effect at the next start"
            );
        }
        let summary = if changes.is_empty() {
            "reloaded: nothing changed".to_string()
        } else {
            format!("reloaded: {}", changes.join(", "))
        };
        info!(file = %path.display(), "{summary}");
        Ok(summary)
    }

    /// Asks the data plane for its peers, one request at a time: a change while one is on its
    /// way asks again when it is answered.
    fn ask_peers(&mut self) {
        if self.peers.asked {
            self.peers.again = true;
            return;
        }
        match self.dp.ask_peers() {
            Ok(()) => self.peers.asked = self.dp.is_connected(),
            Err(e) => debug!("asking for the peers: {e}"),
        }
    }

    /// Makes the tunnel links match the data plane's peers.
    fn sync_peers(&mut self, list: &[PeerInfo], now: Instant) {
        let present: HashSet<Key> = list.iter().map(|p| p.public_key).collect();
        let gone: Vec<Key> = (self.by_key.keys())
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.remove_peer_link(&k, now);
        }
        self.peers.waiting.retain(|k| present.contains(k));
        for p in list {
            self.peer_link(p, now);
        }
    }

    /// Makes peer `p` a Babel link, or updates its link (name, class, parameters); unless
    /// Babel is off for it, or it has no endpoint yet.
    fn peer_link(&mut self, p: &PeerInfo, now: Instant) {
        let key = p.public_key;
        let configured = self.peers.configured.get(&key);
        if configured.is_some_and(|c| !c.enabled) {
            // Babel off for this peer (perhaps since a reload).
            self.remove_peer_link(&key, now);
            return;
        }
        if p.endpoint.is_none() && !self.by_key.contains_key(&key) {
            if self.peers.waiting.insert(key) {
                info!(peer = %p.label(), "tunnel peer has no endpoint yet: its Babel link waits for one");
            }
            return;
        }
        self.peers.waiting.remove(&key);
        let (name, class, params, keys) = match configured {
            Some(c) => (c.name.clone(), c.class, c.params, c.keys.clone()),
            None => (
                p.name.clone().unwrap_or_else(|| short_key(&key)),
                p.class,
                *self.peers.classes.get(p.class),
                Vec::new(),
            ),
        };
        let cfg = LinkConfig {
            name: name.clone(),
            // A tunnel peer is a point-to-point link: split horizon is safe whatever its class.
            params: babel::LinkParams {
                split_horizon: true,
                ..params
            },
            address: self.peers.address,
            ipv4: self.peers.ipv4,
            v4_via_v6: self.peers.ipv4.is_none(),
            max_packet: self.peers.max_packet,
            keys,
        };
        if let Some(&id) = self.by_key.get(&key) {
            let Some(l) = self.links.get_mut(&id) else {
                return;
            };
            if l.cfg != cfg || l.class != class {
                info!(link = %name, class = class.as_str(), "tunnel peer's Babel link changed");
                l.name = name;
                l.class = class;
                l.cfg = cfg.clone();
                self.router.add_link(id, cfg, now);
            }
            return;
        }
        let id = LinkId(self.next_link);
        self.next_link += 1;
        info!(link = %name, class = class.as_str(), "tunnel peer is a Babel link");
        self.by_key.insert(key, id);
        self.links.insert(
            id,
            LinkInfo {
                name,
                class,
                via: Via::Peer(key),
                cfg: cfg.clone(),
            },
        );
        self.router.add_link(id, cfg, now);
    }

    /// Peer `key` is gone: its link goes, and with its neighbours the routes through them
    /// (switched to a feasible alternative or retracted, in this step).
    fn remove_peer_link(&mut self, key: &Key, now: Instant) {
        let Some(id) = self.by_key.remove(key) else {
            return;
        };
        if let Some(l) = self.links.remove(&id) {
            info!(link = %l.name, "tunnel peer removed: its Babel link goes, and the routes through it");
        }
        self.router.remove_link(id, now);
    }

    /// Sends what the router produced and applies its route changes to our wanted state.
    fn drain(&mut self) {
        while let Some(t) = self.router.poll_transmit() {
            let Some(l) = self.links.get(&t.link) else {
                continue;
            };
            let res = match &l.via {
                Via::Iface { .. } => match self.ifaces.get(&t.link) {
                    Some(s) => s.send(t.dest, &t.bytes),
                    None => Ok(()),
                },
                Via::Peer(key) => {
                    let pkt = links::wrap(l.cfg.address, t.dest.unwrap_or(MULTICAST), &t.bytes);
                    self.dp.inject(*key, pkt)
                }
            };
            if let Err(e) = res {
                self.stats.send_errors += 1;
                debug!(link = %l.name, "send: {e}");
            }
        }
        while let Some(e) = self.router.poll_event() {
            match e {
                Event::Route { prefix, route } => self.route_changed(prefix, route),
                Event::Neighbour { link, address, up } => {
                    let name = self.links.get(&link).map_or("?", |l| l.name.as_str());
                    info!(link = name, %address, up, "neighbour");
                    if up {
                        self.stats.neighbours_up += 1;
                    } else {
                        self.stats.neighbours_down += 1;
                    }
                }
            }
        }
    }

    /// The router selected `route` for `prefix` (`None`: no route any more): what the data
    /// plane and the kernel should hold for it.
    fn route_changed(&mut self, prefix: IpNet, route: Option<Selected>) {
        if self.router.originates(&prefix) {
            return;
        }
        let (next_hop, kroute) = match route {
            None => (None, None),
            Some(r) => {
                let Some(l) = self.links.get(&r.link) else {
                    return;
                };
                match &l.via {
                    Via::Peer(key) => (
                        Some(fib::Via::Peer(*key)),
                        self.tun_ifindex
                            .map(|ifindex| tun_route(prefix, ifindex, r.metric)),
                    ),
                    // The data plane sends to the neighbour itself where it serves the
                    // interface (AF_XDP), else through its TUN device to the kernel, which
                    // holds the same route.
                    Via::Iface { ifindex } => (
                        Some(fib::Via::Neighbour {
                            ifindex: *ifindex,
                            addr: r.next_hop,
                        }),
                        Some(KernelRoute {
                            prefix,
                            gateway: Some(r.next_hop),
                            ifindex: *ifindex,
                            metric: kernel_metric(&prefix, r.metric),
                        }),
                    ),
                }
            }
        };
        self.fib.want(
            prefix,
            next_hop.map(|next_hop| CtlRoute { prefix, next_hop }),
        );
        if let Some((_, kroutes)) = self.kernel.as_mut() {
            kroutes.want(prefix, kroute);
        }
    }

    fn shutdown(&mut self) {
        let _ = std::fs::remove_file(&self.status_path);
        let retract = self.cfg.babel.retract_on_shutdown;
        if retract {
            info!("retracting our routes (retract_on_shutdown)");
            self.router.retract_all(Instant::now());
            self.drain();
        } else {
            info!("stopping; the data plane and the kernel keep our routes (non-stop forwarding)");
        }
        self.fib.shut_down(retract, &mut self.dp);
        if let Some((k, routes)) = self.kernel.as_mut() {
            routes.shut_down(retract, k);
        }
        self.log_reports();
    }

    /// The daemon's counters, with the tables' from their reconcilers.
    fn io_stats(&self) -> IoStats {
        let mut io = self.stats.clone();
        let fib = self.fib.stats();
        io.fib_snapshots = fib.replaced;
        io.fib_updates = fib.batches;
        io.fib_routes = self.fib.held_count() as u64;
        if let Some((_, routes)) = &self.kernel {
            io.kernel_routes = routes.held_count() as u64;
            io.kernel_errors = routes.stats().errors;
        }
        io.ctl_connected = self.dp.is_connected();
        io.input_dropped = self.budget.dropped();
        io.status_evicted = self.status_evicted.load(Relaxed);
        io.synced = self.fib.phase() != Phase::Holding;
        io
    }
    fn query(&self, what: &str) -> String {
        let now = Instant::now();
        let io = self.io_stats();
        let view = status::View {
            router: &self.router,
            links: self
                .links
                .iter()
                .map(|(id, l)| {
                    (
                        *id,
                        status::LinkView {
                            name: l.name.clone(),
                            class: l.class.as_str(),
                            kind: match l.via {
                                Via::Peer(_) => "peer",
                                Via::Iface { .. } => "interface",
                            },
                        },
                    )
                })
                .collect(),
            io: &io,
            uptime: now - self.started,
            ifname: &self.ifname,
            now,
        };
        match what.trim() {
            "neighbours" | "neighbors" => status::neighbours(&view),
            "routes" => status::routes(&view),
            "babel" => status::babel(&view),
            "neighbours.json" | "neighbors.json" => status::neighbours_json(&view),
            "routes.json" => status::routes_json(&view),
            "babel.json" => status::babel_json(&view),
            "metrics" => status::metrics(&view),
            other => {
                format!("error: unknown query {other:?} (neighbours, routes, babel, metrics)\n")
            }
        }
    }
}

/// Keeps a connection to the data plane's control channel, reconnecting forever.
/// Becomes `user` for good, keeping what the daemon does at run time: kernel routes
/// (`CAP_NET_ADMIN`) and Babel sockets bound to interfaces that appear later
/// (`CAP_NET_RAW`). The status socket is given to the user; a configuration it cannot read is
/// said now rather than at the first reload.
fn drop_privileges(user: &User, status: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    privs::give_socket(user, status)?;
    let kept =
        privs::drop_to(user, &[Cap::NetAdmin, Cap::NetRaw]).context("dropping privileges")?;
    let kept: Vec<&str> = kept.iter().map(|c| c.name()).collect();
    info!(user = %user.name, uid = user.uid, "running as an unprivileged user, keeping {}", kept.join(" "));
    if let Some(path) = config {
        if let Err(e) = crate::config::load(path) {
            warn!(
                "a reload could not read the configuration as user {}: {e} (make the file \
                 and its key files readable by {0}: chown {0} KEYFILE)",
                user.name
            );
        }
    }
    Ok(())
}

fn spawn_ctl(path: PathBuf, tx: Sender<Input>, budget: Arc<InputBudget>) -> io::Result<()> {
    thread::Builder::new().name("ctl".into()).spawn(move || {
        let mut logged = false;
        loop {
            match connect_ctl(&path) {
                Ok((reader, writer)) => {
                    logged = false;
                    if tx.send(Input::CtlUp(writer)).is_err() {
                        return;
                    }
                    let mut reader = reader;
                    let why = loop {
                        match read_msg(&mut reader) {
                            Ok(Msg::Punt { packet, .. }) if !budget.take(packet.len()) => {}
                            Ok(m) => {
                                if tx.send(Input::Ctl(m)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => break e.to_string(),
                        }
                    };
                    if tx.send(Input::CtlDown(why)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !logged {
                        info!("waiting for the data plane at {}: {e}", path.display());
                        logged = true;
                    }
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    })?;
    Ok(())
}

fn connect_ctl(path: &Path) -> io::Result<(BufReader<UnixStream>, UnixStream)> {
    let mut s = UnixStream::connect(path)?;
    let mut r = BufReader::new(s.try_clone()?);
    let io_err = |e: isthmus_dataplane::ctl::proto::ProtoError| io::Error::other(e.to_string());
    write_msg(
        &mut s,
        &Msg::Hello {
            version: PROTOCOL_VERSION,
            client: format!("isthmus-cp {}", env!("CARGO_PKG_VERSION")),
        },
    )?;
    match read_msg(&mut r).map_err(io_err)? {
        Msg::HelloAck { .. } => {}
        Msg::Error(e) => return Err(io::Error::other(format!("data plane refused: {e}"))),
        other => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
    write_msg(&mut s, &Msg::Subscribe)?;
    match read_msg(&mut r).map_err(io_err)? {
        Msg::Ok => {}
        other => return Err(io::Error::other(format!("subscribe: unexpected {other:?}"))),
    }
    Ok((r, s))
}

/// The status socket: one line in (`neighbours`, `routes`, `babel`, `metrics`), text out.
/// Mode 0600 in a 0700 directory: only root asks.
fn spawn_status(
    path: &Path,
    tx: Sender<Input>,
    max_conns: usize,
    evicted: Arc<AtomicU64>,
) -> io::Result<isthmus_dataplane::io::unix::UnixServer> {
    if let Some(dir) = path.parent() {
        isthmus_dataplane::io::unix::ensure_dir(dir, 0o700)?;
    }
    let tx = std::sync::Mutex::new(tx);
    let limits = isthmus_dataplane::io::unix::Limits {
        max_conns,
        idle_timeout: Some(Duration::from_secs(5)),
        when_full: isthmus_dataplane::io::unix::WhenFull::EvictOldest,
    };
    let at_limit = Arc::new(move || {
        evicted.fetch_add(1, Relaxed);
    });
    use isthmus_dataplane::io::unix::UnixServer;
    UnixServer::start_counted(path, "status", limits, at_limit, move |conn: UnixStream| {
        // A query is one short line: read no more than a page of it.
        let mut r = BufReader::new(io::Read::take(&conn, 4096));
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return;
        }
        let (rtx, rrx) = mpsc::channel();
        let sent = tx
            .lock()
            .is_ok_and(|t| t.send(Input::Query(line, rtx)).is_ok());
        if !sent {
            return;
        }
        if let Ok(answer) = rrx.recv_timeout(Duration::from_secs(10)) {
            let mut w = &conn;
            let _ = w.write_all(answer.as_bytes());
        }
    })
}

fn spawn_metrics(addr: SocketAddr, tx: Sender<Input>) -> io::Result<SocketAddr> {
    let tx = std::sync::Mutex::new(tx);
    isthmus_dataplane::io::metrics::serve(addr, "metrics", move || {
        // The router thread renders; an answer it never gives is an empty page.
        let (rtx, rrx) = mpsc::channel();
        let sent = tx
            .lock()
            .is_ok_and(|t| t.send(Input::Query("metrics".into(), rtx)).is_ok());
        if !sent {
            return String::new();
        }
        rrx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    })
    .map_err(|e| io::Error::new(e.kind(), format!("metrics on {addr}: {e}")))
}

/// Wakes the router thread when the kernel announces a link or address change.
fn spawn_link_watch(tx: Sender<Input>) -> io::Result<()> {
    let mut watch = crate::kernel::LinkWatch::open()?;
    thread::Builder::new()
        .name("link-watch".into())
        .spawn(move || loop {
            match watch.wait() {
                Ok(true) => {
                    if tx.send(Input::Interfaces).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    warn!("link and address events: {e}; interfaces are no longer followed");
                    return;
                }
            }
        })?;
    Ok(())
}

fn spawn_signals(tx: Sender<Input>) -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let hup = sig == signal_hook::consts::SIGHUP;
                if tx
                    .send(if hup { Input::Reload } else { Input::Stop })
                    .is_err()
                    || !hup
                {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Asks a running `isthmus-cp` for a status page.
pub fn query(path: &Path, what: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    writeln!(s, "{what}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    io::Read::read_to_string(&mut s, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_budget_drops_and_counts_what_does_not_fit() {
        let b = InputBudget::default();
        let n = INPUT_QUEUE_BYTES / 4;
        assert!((0..4).all(|_| b.take(n)));
        assert!(!b.take(1), "full");
        assert!(!b.take(n));
        assert_eq!(b.dropped(), 2);
        b.give(n);
        assert!(b.take(n), "room again once the router took one");
        assert!(!b.take(1));
        assert_eq!(b.dropped(), 3);
    }

    #[test]
    fn warnings_of_many_occurrences_say_how_many() {
        let mut w = Warnings::default();
        assert_eq!(w.hit_n("routes", 5), Some(5));
        assert_eq!(w.hit_n("routes", 7), None, "within the period");
        assert_eq!(w.hit("neighbours"), Some(1), "each kind its own");
    }
}
