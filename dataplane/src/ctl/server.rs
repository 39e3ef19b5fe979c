//! The control-channel server: one thread per connection reading requests, one writer thread
//! per connection sending answers, and — for subscribers — events and punted packets from an
//! [`EventBus`] that the data plane publishes to without ever blocking.

use std::io::{self, BufReader};

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use ipnet::IpNet;

use super::proto::{
    read_msg, read_msg_within, write_msg, CtlRoute, Msg, ProtoError, RouteInfo, MAX_MESSAGE,
    PROTOCOL_VERSION,
};
use crate::io::unix::{Limits, WhenFull};
use crate::keys::Key;
use crate::tunnel::PeerInfo;

/// Events and punts a subscriber may have queued before it loses some.
const SUBSCRIBER_QUEUE: usize = 4096;

/// The control channel's clients: the control plane, connected for as long as both run
/// and quiet between events, and short `isthmusctl` requests. There is no idle timeout,
/// since a subscriber may rightly say nothing for hours; a client that never says Hello is
/// dropped after [`HELLO_TIMEOUT`] instead.
pub const LIMITS: Limits = Limits {
    max_conns: 64,
    idle_timeout: None,
    when_full: WhenFull::Refuse,
};

/// How long a new connection may take to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control channel serves: the data plane.
pub trait CtlBackend: Send + Sync + 'static {
    /// Interface name and public key.
    fn hello(&self) -> (String, Option<Key>);
    /// Peers.
    fn peers(&self) -> Vec<PeerInfo>;
    /// FIB routes.
    fn routes(&self) -> Vec<RouteInfo>;
    /// Counters.
    fn stats(&self) -> Vec<(String, u64)>;
    /// Replace all control-plane routes.
    fn fib_snapshot(&self, routes: Vec<CtlRoute>) -> Result<(), String>;
    /// Change some control-plane routes.
    fn fib_update(&self, add: Vec<CtlRoute>, remove: Vec<IpNet>) -> Result<(), String>;
    /// Send a packet into a peer's tunnel.
    fn inject(&self, peer: Key, packet: Vec<u8>) -> Result<(), String>;
    /// Read the configuration file again and apply the difference.
    fn reload(&self) -> Result<(), String> {
        Err("this data plane has no configuration file to reload".into())
    }
    /// A connection closed; `was_subscriber` tells whether it had subscribed (the control
    /// plane going away).
    fn disconnected(&self, was_subscriber: bool) {
        let _ = was_subscriber;
    }
    /// Clients served at once (`[interface] max_control_clients`); beyond, new ones are
    /// closed.
    fn max_clients(&self) -> usize {
        LIMITS.max_conns
    }
    /// The largest message taken from a client (`[interface] max_control_message`).
    fn max_message(&self) -> usize {
        MAX_MESSAGE
    }
    /// A bound was reached: a client refused at [`CtlBackend::max_clients`], or a message
    /// over [`CtlBackend::max_message`]. (For the metrics.)
    fn limit_reached(&self, limit: crate::limits::Limit) {
        let _ = limit;
    }
}

#[derive(Default)]
struct BusInner {
    subs: Mutex<Vec<(u64, Sender<Msg>)>>,
    count: AtomicUsize,
    next: AtomicU64,
    lost: AtomicU64,
}

/// Fans events out to subscribed connections. Publishing never blocks: a subscriber whose
/// queue is full loses the message, and the loss is counted.
#[derive(Clone, Default)]
pub struct EventBus(Arc<BusInner>);

impl EventBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether anyone listens.
    #[inline]
    pub fn has_subscribers(&self) -> bool {
        self.0.count.load(Relaxed) > 0
    }

    /// Send `msg` to every subscriber; returns whether at least one took it.
    pub fn publish(&self, msg: Msg) -> bool {
        if !self.has_subscribers() {
            return false;
        }
        let subs = self
            .0
            .subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut delivered = false;
        for (_, tx) in subs.iter() {
            match tx.try_send(msg.clone()) {
                Ok(()) => delivered = true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.0.lost.fetch_add(1, Relaxed);
                }
            }
        }
        delivered
    }

    /// Messages lost to full subscriber queues.
    pub fn lost(&self) -> u64 {
        self.0.lost.load(Relaxed)
    }

    fn subscribe(&self, tx: Sender<Msg>) -> u64 {
        let id = self.0.next.fetch_add(1, Relaxed);
        let mut subs = self
            .0
            .subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subs.push((id, tx));
        self.0.count.store(subs.len(), Relaxed);
        id
    }

    fn unsubscribe(&self, id: u64) {
        let mut subs = self
            .0
            .subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subs.retain(|(i, _)| *i != id);
        self.0.count.store(subs.len(), Relaxed);
    }
}

/// A listening control socket; removed when dropped.
pub type CtlServer = crate::io::unix::UnixServer;

/// Serve the control channel at `path` (its directory is created with mode 0700, the
/// socket gets 0600), within [`LIMITS`].
pub fn serve(path: &Path, backend: Arc<dyn CtlBackend>, bus: EventBus) -> io::Result<CtlServer> {
    let limits = Limits {
        max_conns: backend.max_clients(),
        ..LIMITS
    };
    serve_within(path, backend, bus, limits, HELLO_TIMEOUT)
}

fn serve_within(
    path: &Path,
    backend: Arc<dyn CtlBackend>,
    bus: EventBus,
    limits: Limits,
    hello_timeout: Duration,
) -> io::Result<CtlServer> {
    if let Some(dir) = path.parent() {
        crate::io::unix::ensure_dir(dir, 0o700)?;
    }
    let b = backend.clone();
    let at_limit = Arc::new(move || b.limit_reached(crate::limits::Limit::ControlClients));
    crate::io::unix::UnixServer::start_counted(path, "isthmus-ctl", limits, at_limit, move |conn| {
        if let Err(e) = connection(conn, &*backend, &bus, hello_timeout) {
            tracing::debug!("control connection: {e}");
        }
    })
}

fn connection(
    stream: UnixStream,
    backend: &dyn CtlBackend,
    bus: &EventBus,
    hello_timeout: Duration,
) -> Result<(), ProtoError> {
    // Until Hello only: after it, a subscriber may be quiet for as long as it likes.
    stream.set_read_timeout(Some(hello_timeout))?;
    let (tx, rx): (Sender<Msg>, Receiver<Msg>) = channel::bounded(SUBSCRIBER_QUEUE);
    let mut out = stream.try_clone()?;
    let writer = std::thread::Builder::new()
        .name("isthmus-ctl-write".into())
        .spawn(move || {
            for m in rx {
                if write_msg(&mut out, &m).is_err() {
                    break;
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Both);
        })?;
    let mut input = BufReader::new(stream);
    let mut sub: Option<u64> = None;
    let result = (|| -> Result<(), ProtoError> {
        let max = backend.max_message();
        match read_msg_within(&mut input, max) {
            Ok(Msg::Hello { version, client }) if version == PROTOCOL_VERSION => {
                input.get_ref().set_read_timeout(None)?;
                let (ifname, public_key) = backend.hello();
                tracing::debug!(%client, "control client connected");
                let _ = tx.send(Msg::HelloAck {
                    version: PROTOCOL_VERSION,
                    ifname,
                    public_key,
                });
            }
            Ok(Msg::Hello { version, .. }) => {
                let _ = tx.send(Msg::Error(format!(
                    "protocol version {version} is not supported (this data plane speaks {PROTOCOL_VERSION})"
                )));
                return Ok(());
            }
            Ok(_) => {
                let _ = tx.send(Msg::Error("the first message must be Hello".into()));
                return Ok(());
            }
            Err(ProtoError::Io(e)) => return Err(e.into()),
            Err(e) => {
                if let ProtoError::TooLarge(_) = e {
                    backend.limit_reached(crate::limits::Limit::ControlMessage);
                }
                let _ = tx.send(Msg::Error(format!("bad message: {e}")));
                return Ok(());
            }
        }
        loop {
            let reply = match read_msg_within(&mut input, max) {
                Ok(m) => match m {
                    Msg::GetPeers => Msg::Peers(backend.peers()),
                    Msg::GetRoutes => Msg::Routes(backend.routes()),
                    Msg::GetStats => {
                        let mut s = backend.stats();
                        s.push(("ctl_events_lost".into(), bus.lost()));
                        Msg::Stats(s)
                    }
                    Msg::FibSnapshot { routes } => ok_or(backend.fib_snapshot(routes)),
                    Msg::FibUpdate { add, remove } => ok_or(backend.fib_update(add, remove)),
                    Msg::Inject { peer, packet } => ok_or(backend.inject(peer, packet)),
                    Msg::Reload => ok_or(backend.reload()),
                    Msg::Subscribe => {
                        if sub.is_none() {
                            sub = Some(bus.subscribe(tx.clone()));
                        }
                        Msg::Ok
                    }
                    other => Msg::Error(format!("unexpected message {}", name(&other))),
                },
                Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(ProtoError::Io(e)) => return Err(e.into()),
                Err(e) => {
                    if let ProtoError::TooLarge(n) = e {
                        tracing::debug!(bytes = n, max, "control message over the limit");
                        backend.limit_reached(crate::limits::Limit::ControlMessage);
                    }
                    // The stream is out of step after a bad frame: say why and hang up.
                    let _ = tx.send(Msg::Error(format!("bad message: {e}")));
                    return Ok(());
                }
            };
            if tx.send(reply).is_err() {
                return Ok(());
            }
        }
    })();
    if let Some(id) = sub {
        bus.unsubscribe(id);
    }
    drop(tx);
    let _ = writer.join();
    backend.disconnected(sub.is_some());
    result
}

fn ok_or(r: Result<(), String>) -> Msg {
    match r {
        Ok(()) => Msg::Ok,
        Err(e) => Msg::Error(e),
    }
}

fn name(m: &Msg) -> &'static str {
    match m {
        Msg::Hello { .. } => "Hello",
        Msg::HelloAck { .. } => "HelloAck",
        Msg::Peers(_) => "Peers",
        Msg::Routes(_) => "Routes",
        Msg::Stats(_) => "Stats",
        Msg::Ok => "Ok",
        Msg::Error(_) => "Error",
        Msg::Event(_) => "Event",
        Msg::Punt { .. } => "Punt",
        _ => "request",
    }
}

/// A blocking client of the control channel.
pub struct CtlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The data plane's `HelloAck`.
    pub hello: Msg,
}

impl CtlClient {
    /// Connect and say hello.
    pub fn connect(path: &Path, client: &str) -> io::Result<CtlClient> {
        let stream = UnixStream::connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut c = CtlClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            hello: Msg::Ok,
        };
        let hello = c.request(&Msg::Hello {
            version: PROTOCOL_VERSION,
            client: client.to_string(),
        })?;
        if let Msg::Error(e) = &hello {
            return Err(io::Error::other(e.clone()));
        }
        c.hello = hello;
        Ok(c)
    }

    /// Send a request and wait for the next message (its answer, unless subscribed).
    pub fn request(&mut self, msg: &Msg) -> io::Result<Msg> {
        write_msg(&mut self.writer, msg)?;
        self.recv()
    }

    /// Send without waiting.
    pub fn send(&mut self, msg: &Msg) -> io::Result<()> {
        write_msg(&mut self.writer, msg)
    }

    /// Wait for the next message.
    pub fn recv(&mut self) -> io::Result<Msg> {
        read_msg(&mut self.reader).map_err(|e| match e {
            ProtoError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::PeerEvent;
    use super::*;
    use crate::fib::{RouteOrigin, Via};
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering::SeqCst;

    /// An in-memory backend: a fixture for the protocol, not a stand-in for a peer.
    #[derive(Default)]
    struct Fixture {
        routes: Mutex<Vec<CtlRoute>>,
        disconnects: AtomicUsize,
        /// `max_clients` and `max_message` (0: the defaults).
        bounds: (usize, usize),
        limits: crate::limits::LimitCounters,
    }

    impl CtlBackend for Fixture {
        fn hello(&self) -> (String, Option<Key>) {
            ("ist0".into(), Some(Key([7; 32])))
        }
        fn peers(&self) -> Vec<PeerInfo> {
            Vec::new()
        }
        fn routes(&self) -> Vec<RouteInfo> {
            self.routes
                .lock()
                .unwrap()
                .iter()
                .map(|r| RouteInfo {
                    prefix: r.prefix,
                    next_hop: r.next_hop,
                    origin: RouteOrigin::Control,
                })
                .collect()
        }
        fn stats(&self) -> Vec<(String, u64)> {
            vec![("x".into(), 1)]
        }
        fn fib_snapshot(&self, routes: Vec<CtlRoute>) -> Result<(), String> {
            *self.routes.lock().unwrap() = routes;
            Ok(())
        }
        fn fib_update(&self, add: Vec<CtlRoute>, remove: Vec<IpNet>) -> Result<(), String> {
            let mut r = self.routes.lock().unwrap();
            r.retain(|x| !remove.contains(&x.prefix));
            r.extend(add);
            Ok(())
        }
        fn inject(&self, _: Key, _: Vec<u8>) -> Result<(), String> {
            Err("no such peer".into())
        }
        fn disconnected(&self, was_subscriber: bool) {
            if was_subscriber {
                self.disconnects.fetch_add(1, SeqCst);
            }
        }
        fn max_clients(&self) -> usize {
            if self.bounds.0 > 0 {
                self.bounds.0
            } else {
                LIMITS.max_conns
            }
        }
        fn max_message(&self) -> usize {
            if self.bounds.1 > 0 {
                self.bounds.1
            } else {
                MAX_MESSAGE
            }
        }
        fn limit_reached(&self, limit: crate::limits::Limit) {
            self.limits.hit(limit);
        }
    }

    #[test]
    fn clients_and_messages_over_their_bounds_are_refused_and_counted() {
        use crate::limits::Limit;
        let path = socket_path("bounds");
        let fx = Arc::new(Fixture {
            bounds: (2, 4096),
            ..Fixture::default()
        });
        let server = serve(&path, fx.clone(), EventBus::new()).unwrap();
        let mut a = CtlClient::connect(&path, "a").unwrap();
        let mut b = CtlClient::connect(&path, "b").unwrap();
        // A third client is closed at once: its Hello gets no answer.
        assert!(CtlClient::connect(&path, "c").is_err());
        assert_eq!(fx.limits.get(Limit::ControlClients), 1);
        // A snapshot under the bound is taken; one over it is refused and the client dropped.
        let route = |i: u32| CtlRoute {
            prefix: IpNet::new(std::net::Ipv4Addr::from(i << 8).into(), 24).unwrap(),
            next_hop: Via::Local,
        };
        let small = Msg::FibSnapshot {
            routes: (0..10).map(route).collect(),
        };
        assert_eq!(a.request(&small).unwrap(), Msg::Ok);
        let big = Msg::FibSnapshot {
            routes: (0..1000).map(route).collect(),
        };
        let Msg::Error(e) = b.request(&big).unwrap() else {
            panic!("refused")
        };
        assert!(e.contains("over the limit"), "{e}");
        assert_eq!(fx.limits.get(Limit::ControlMessage), 1);
        assert_eq!(fx.routes.lock().unwrap().len(), 10, "the table is kept");
        // The other client carries on.
        assert!(matches!(
            a.request(&Msg::GetRoutes).unwrap(),
            Msg::Routes(_)
        ));
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("isthmus-ctl-{tag}-{}", std::process::id()))
            .join("c.ctl")
    }

    #[test]
    fn requests_subscriptions_and_bad_clients() {
        let path = socket_path("a");
        let fx = Arc::new(Fixture::default());
        let bus = EventBus::new();
        let server = serve(&path, fx.clone(), bus.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut c = CtlClient::connect(&path, "test").unwrap();
        assert_eq!(
            c.hello,
            Msg::HelloAck {
                version: PROTOCOL_VERSION,
                ifname: "ist0".into(),
                public_key: Some(Key([7; 32]))
            }
        );
        let r = CtlRoute {
            prefix: "10.0.0.0/8".parse().unwrap(),
            next_hop: Via::Local,
        };
        assert_eq!(
            c.request(&Msg::FibSnapshot { routes: vec![r] }).unwrap(),
            Msg::Ok
        );
        let Msg::Routes(rs) = c.request(&Msg::GetRoutes).unwrap() else {
            panic!()
        };
        assert_eq!(rs.len(), 1);
        assert!(matches!(
            c.request(&Msg::Inject {
                peer: Key([1; 32]),
                packet: vec![]
            })
            .unwrap(),
            Msg::Error(_)
        ));

        // Nobody subscribed: publishing reports it.
        assert!(!bus.publish(Msg::Ok));
        let mut s = CtlClient::connect(&path, "sub").unwrap();
        assert_eq!(s.request(&Msg::Subscribe).unwrap(), Msg::Ok);
        let ev = Msg::Event(PeerEvent::HandshakeUp { peer: Key([2; 32]) });
        assert!(bus.publish(ev.clone()));
        assert_eq!(s.recv().unwrap(), ev);

        // A client speaking garbage is told so and dropped; others carry on.
        let mut raw = UnixStream::connect(&path).unwrap();
        raw.write_all(b"\x00\x00\x00\x05\xffjunk").unwrap();
        let reply = read_msg(&mut raw).unwrap();
        assert!(matches!(reply, Msg::Error(_)), "{reply:?}");
        let mut old = UnixStream::connect(&path).unwrap();
        write_msg(
            &mut old,
            &Msg::Hello {
                version: 99,
                client: "old".into(),
            },
        )
        .unwrap();
        let Msg::Error(e) = read_msg(&mut old).unwrap() else {
            panic!()
        };
        assert!(e.contains("99"), "{e}");
        assert!(matches!(c.request(&Msg::GetStats).unwrap(), Msg::Stats(_)));

        // A subscriber that never reads loses messages without blocking the publisher.
        for _ in 0..(SUBSCRIBER_QUEUE * 3) {
            bus.publish(Msg::Punt {
                peer: Key([3; 32]),
                packet: vec![0; 1000],
            });
        }
        assert!(bus.lost() > 0);
        drop(s);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while fx.disconnects.load(SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(fx.disconnects.load(SeqCst), 1);
        assert!(!bus.has_subscribers());
        drop(server);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_silent_client_is_dropped_but_a_quiet_subscriber_stays() {
        use std::io::Read as _;
        let path = socket_path("quiet");
        let hello_timeout = Duration::from_millis(200);
        let bus = EventBus::new();
        let server = serve_within(
            &path,
            Arc::new(Fixture::default()),
            bus.clone(),
            LIMITS,
            hello_timeout,
        )
        .unwrap();
        let mut sub = CtlClient::connect(&path, "sub").unwrap();
        assert_eq!(sub.request(&Msg::Subscribe).unwrap(), Msg::Ok);
        let mut silent = UnixStream::connect(&path).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The silent one is hung up on after the Hello timeout...
        let t = std::time::Instant::now();
        assert_eq!(silent.read(&mut [0u8; 16]).unwrap(), 0);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        // ... and the subscriber, quiet for longer than that, still gets its events.
        std::thread::sleep(hello_timeout * 2);
        let ev = Msg::Event(PeerEvent::HandshakeUp { peer: Key([4; 32]) });
        assert!(bus.publish(ev.clone()));
        assert_eq!(sub.recv().unwrap(), ev);
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
