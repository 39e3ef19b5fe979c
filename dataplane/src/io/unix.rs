//! Private Unix stream sockets for local control (the WireGuard UAPI, the control channel):
//! created with mode 0600 from the start, a stale socket replaced only when nothing answers
//! on it, one thread per connection up to a limit, an optional idle timeout, and the file
//! removed when the server is dropped.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the accept loop pauses after a failed accept (EMFILE, ENFILE, ENOMEM, …), so
/// that a process out of descriptors waits for some to be freed instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one warning per this long about refused connections or failing accepts.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// How many clients a server takes at once and how long it waits on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; a connection beyond them is closed as soon as it is
    /// accepted (and the refusal logged, rate-limited).
    pub max_conns: usize,
    /// Read and write timeout of every connection: a read or a write blocked this long fails
    /// (`WouldBlock`), so the handler returns and the connection closes. `None` for
    /// connections that may rightly stay quiet for ever, such as the control channel's
    /// subscribers.
    pub idle_timeout: Option<Duration>,
    /// What a connection beyond `max_conns` does.
    pub when_full: WhenFull,
}

/// What happens to a connection that arrives when all places are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// It is closed: the ones being served keep their places (the control channel, whose
    /// oldest connection is the control plane itself).
    Refuse,
    /// The oldest connection is shut down to make room, so that idle clients holding every
    /// place cannot lock a new one out (the UAPI, whose clients are one command each).
    EvictOldest,
}

/// A listening socket served by a background thread.
pub struct UnixServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl UnixServer {
    /// Bind `path` (mode 0600) and call `on_conn` on a new thread for every connection,
    /// within `limits`.
    pub fn start(
        path: &Path,
        name: &str,
        limits: Limits,
        on_conn: impl Fn(UnixStream) + Send + Sync + 'static,
    ) -> io::Result<UnixServer> {
        Self::start_counted(path, name, limits, Arc::new(|| {}), on_conn)
    }

    /// [`UnixServer::start`], calling `at_limit` for every connection refused, or closed to
    /// make room, because `limits.max_conns` were open (for a metric).
    pub fn start_counted(
        path: &Path,
        name: &str,
        limits: Limits,
        at_limit: Arc<dyn Fn() + Send + Sync>,
        on_conn: impl Fn(UnixStream) + Send + Sync + 'static,
    ) -> io::Result<UnixServer> {
        let listener = bind_private(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = AcceptLoop {
            listener,
            stop: stop.clone(),
            limits,
            name: name.to_string(),
            active: Arc::new(Mutex::new(Active::default())),
            on_conn: Arc::new(on_conn),
            at_limit,
        };
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || accept.run())?;
        Ok(UnixServer {
            path: path.to_path_buf(),
            stop,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept loop so that it sees `stop` and closes the listener.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `path` with mode 0600, replacing a stale socket that nothing answers on.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask(2) cannot fail; it is process-wide, so a file another thread creates
    // in this window is made with stricter permissions, never looser ones.
    let old = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener =
        bound.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

type Handler = dyn Fn(UnixStream) + Send + Sync;

/// The accept thread's state.
struct AcceptLoop {
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    limits: Limits,
    name: String,
    /// Connections being served.
    active: Arc<Mutex<Active>>,
    on_conn: Arc<Handler>,
    /// Told of every connection refused or evicted at `limits.max_conns`.
    at_limit: Arc<dyn Fn() + Send + Sync>,
}

impl AcceptLoop {
    fn run(self) {
        let mut refused = RateLimit::new(WARN_EVERY);
        let mut evicted = RateLimit::new(WARN_EVERY);
        let mut failed = RateLimit::new(WARN_EVERY);
        loop {
            let accepted = self.listener.accept();
            if self.stop.load(SeqCst) {
                return;
            }
            match accepted {
                Ok((conn, _)) => {
                    let evict = self.limits.when_full == WhenFull::EvictOldest;
                    match Slot::take(&self.active, &conn, self.limits.max_conns, evict) {
                        Some((slot, closed)) => {
                            if closed > 0 {
                                for _ in 0..closed {
                                    (self.at_limit)();
                                }
                                if let Some(n) = evicted.hit_n(Instant::now(), closed as u64) {
                                    tracing::warn!(
                                        "{}: closed the oldest of {} connection(s) for a new one \
                                         ({n} time(s))",
                                        self.name,
                                        self.limits.max_conns
                                    );
                                }
                            }
                            self.serve(conn, slot);
                        }
                        None => {
                            (self.at_limit)();
                            drop(conn);
                            if let Some(n) = refused.hit(Instant::now()) {
                                tracing::warn!(
                                    "{}: refused {n} connection(s): {} already open",
                                    self.name,
                                    self.limits.max_conns
                                );
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Some(n) = failed.hit(Instant::now()) {
                        tracing::warn!("{}: accept failed ({n} time(s)): {e}", self.name);
                    }
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Serve `conn` on its own thread, which gives `slot` back when it ends.
    fn serve(&self, conn: UnixStream, slot: Slot) {
        let timeout = self.limits.idle_timeout;
        if let Err(e) = conn
            .set_read_timeout(timeout)
            .and_then(|()| conn.set_write_timeout(timeout))
        {
            tracing::debug!("{}: connection timeouts: {e}", self.name);
            return;
        }
        let f = self.on_conn.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-conn", self.name))
            .spawn(move || {
                let _slot = slot;
                f(conn);
            });
        // A thread that could not be made drops its closure: the slot and the connection.
        if let Err(e) = spawned {
            tracing::debug!("{}: connection thread: {e}", self.name);
        }
    }
}

/// The connections being served, oldest first, each with a handle to shut it down.
#[derive(Default)]
struct Active {
    conns: std::collections::VecDeque<(u64, UnixStream)>,
    next_id: u64,
}

/// One of a server's `max_conns` places, given back when dropped (also on a panic).
struct Slot {
    active: Arc<Mutex<Active>>,
    id: u64,
}

impl Slot {
    /// A place for `conn`, and how many connections were shut down for it: when all are
    /// taken, the oldest connection's if `evict` (it is shut down, so its handler sees the
    /// end of its stream and returns), else none.
    fn take(
        active: &Arc<Mutex<Active>>,
        conn: &UnixStream,
        max: usize,
        evict: bool,
    ) -> Option<(Slot, usize)> {
        let handle = conn.try_clone().ok()?;
        let mut a = active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut closed = 0;
        while a.conns.len() >= max {
            if !evict || max == 0 {
                return None;
            }
            if let Some((_, oldest)) = a.conns.pop_front() {
                let _ = oldest.shutdown(std::net::Shutdown::Both);
                closed += 1;
            }
        }
        let id = a.next_id;
        a.next_id += 1;
        a.conns.push_back((id, handle));
        let slot = Slot {
            active: active.clone(),
            id,
        };
        Some((slot, closed))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.conns.retain(|(id, _)| *id != self.id);
    }
}

/// Lets a repeated warning through at most once per period and counts the occurrences
/// in between, so that the one logged can say how many there were.
#[derive(Debug, Clone)]
pub struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    count: u64,
}

impl RateLimit {
    /// At most one warning per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            count: 0,
        }
    }

    /// Record one occurrence at `now`. `Some(n)` when it is to be logged: `n` occurrences
    /// (this one included) since the last one logged.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.hit_n(now, 1)
    }

    /// Record `n` occurrences at `now`, as [`RateLimit::hit`] records one.
    pub fn hit_n(&mut self, now: Instant, n: u64) -> Option<u64> {
        self.count += n;
        let recent = |last: Instant| now.duration_since(last) < self.period;
        if self.last.is_some_and(recent) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Create directory `dir` with `mode` if it does not exist.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};

    /// A socket path in a directory of its own under the temp dir.
    fn socket_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("isthmus-unix-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    /// A server that echoes lines back.
    fn echo(path: &Path, limits: Limits) -> UnixServer {
        echo_counted(path, limits).0
    }

    /// [`echo`], with the count of connections refused or evicted at the limit.
    fn echo_counted(
        path: &Path,
        limits: Limits,
    ) -> (UnixServer, Arc<std::sync::atomic::AtomicU64>) {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let m = n.clone();
        let at_limit = Arc::new(move || {
            m.fetch_add(1, SeqCst);
        });
        let server = UnixServer::start_counted(path, "test-echo", limits, at_limit, |conn| {
            let mut out = conn.try_clone().unwrap();
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { return };
                if writeln!(out, "{line}").is_err() {
                    return;
                }
            }
        })
        .unwrap();
        (server, n)
    }

    /// A client whose reads give up after 5 s rather than hang the test.
    fn connect(path: &Path) -> UnixStream {
        let c = UnixStream::connect(path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// Whether the server answers `c` (an echo of one line).
    fn served(c: &mut UnixStream) -> bool {
        if c.write_all(b"ping\n").is_err() {
            return false;
        }
        let mut got = [0u8; 5];
        c.read_exact(&mut got).is_ok() && &got == b"ping\n"
    }

    /// Whether the server closed `c` without a word.
    fn closed(c: &mut UnixStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(c.read(&mut buf), Ok(0))
    }

    fn until(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_and_served_again_once_others_leave() {
        let path = socket_path("limit");
        let (server, at_limit) = echo_counted(
            &path,
            Limits {
                max_conns: 2,
                idle_timeout: None,
                when_full: WhenFull::Refuse,
            },
        );
        let mut a = connect(&path);
        let mut b = connect(&path);
        assert!(served(&mut a) && served(&mut b));
        let mut extra = connect(&path);
        assert!(closed(&mut extra), "the third connection is closed at once");
        assert!(served(&mut a) && served(&mut b), "the first two still work");
        assert_eq!(at_limit.load(SeqCst), 1, "counted");
        drop((a, b));
        // The slots come back when the handlers see the clients go.
        assert!(until(|| served(&mut connect(&path))));
        drop(server);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn with_evict_oldest_a_new_connection_takes_the_oldest_place() {
        let path = socket_path("evict");
        let (server, at_limit) = echo_counted(
            &path,
            Limits {
                max_conns: 2,
                idle_timeout: None,
                when_full: WhenFull::EvictOldest,
            },
        );
        let mut a = connect(&path);
        let mut b = connect(&path);
        assert!(served(&mut a) && served(&mut b));
        let mut c = connect(&path);
        assert!(served(&mut c), "the new connection is served");
        assert!(closed(&mut a), "the oldest was shut down for it");
        assert!(served(&mut b) && served(&mut c));
        assert_eq!(at_limit.load(SeqCst), 1, "counted");
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_idle_connection_is_closed_after_the_timeout() {
        let path = socket_path("idle");
        let server = echo(
            &path,
            Limits {
                max_conns: 1,
                idle_timeout: Some(Duration::from_millis(200)),
                when_full: WhenFull::Refuse,
            },
        );
        let mut idle = connect(&path);
        assert!(served(&mut idle));
        let t = Instant::now();
        assert!(closed(&mut idle));
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        // Its slot is free again.
        assert!(until(|| served(&mut connect(&path))));
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
        let path = socket_path("stale");
        let limits = Limits {
            max_conns: 1,
            idle_timeout: None,
            when_full: WhenFull::Refuse,
        };
        let server = echo(&path, limits);
        let again = UnixServer::start(&path, "test-echo", limits, |_| {});
        assert_eq!(again.err().unwrap().kind(), io::ErrorKind::AddrInUse);
        drop(server);
        // A socket file left behind by a dead process.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = echo(&path, limits);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(served(&mut connect(&path)));
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn rate_limit_lets_one_through_per_period_and_counts_the_rest() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.hit(t), Some(1));
        assert_eq!(r.hit(t + Duration::from_secs(1)), None);
        assert_eq!(r.hit(t + Duration::from_secs(9)), None);
        assert_eq!(r.hit(t + Duration::from_secs(10)), Some(3));
        assert_eq!(r.hit(t + Duration::from_secs(11)), None);
    }
}
