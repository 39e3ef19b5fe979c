//! The Prometheus endpoint: a minimal HTTP/1.1 server on its own thread that answers
//! `GET /metrics` (and `/`) with the text `render` returns, everything else with 404.
//! Shared by `isthmus-dp` and `isthmus-cp`.
//!
//! One thread runs a non-blocking `mio` loop over many connections, so a slow or idle client
//! (slowloris) cannot hold up a scrape. Every connection is bounded:
//! - one deadline from accept for the whole exchange (request head in, response out), not per
//!   read: 10 s;
//! - a request head of at most 8 KiB; a client that sends more without the blank line that
//!   ends it is closed;
//! - at most 64 connections at once. When full, a new connection evicts the
//!   *oldest* one rather than being refused: an attacker who holds many connections then only
//!   churns its own slots, and a fresh scrape always gets in (refusing would let 64 idle
//!   sockets, reopened as they expire, lock scrapes out for good).
//!
//! `render` runs on the loop thread once a request head is complete; the response is buffered
//! per connection and written as the socket accepts it, then the connection is closed.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Bounds on what one client may cost the endpoint.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Time from accept to the last byte of the response. Prometheus' default
    /// `scrape_timeout` is 10 s: a scrape that takes longer is abandoned by the scraper anyway.
    deadline: Duration,
    /// Longest request head (request line and headers, up to `\r\n\r\n`).
    max_head: usize,
    /// Connections served at once; a new one beyond it evicts the oldest.
    max_conns: usize,
}

impl Limits {
    const DEFAULT: Self = Self {
        deadline: Duration::from_secs(10),
        max_head: 8192,
        max_conns: 64,
    };
}

/// Binds `addr` and serves `render()`'s text, followed by the standard `process_*` series
/// ([`process_metrics`]), on a thread named `name`; returns the bound address. Binds exactly
/// `addr`: the callers' configured address, loopback by default.
///
/// # Errors
///
/// Binding the address, creating the poller or spawning the thread failed.
pub fn serve(
    addr: SocketAddr,
    name: &str,
    render: impl Fn() -> String + Send + 'static,
) -> io::Result<SocketAddr> {
    serve_with(addr, name, Limits::DEFAULT, move || {
        let mut text = render();
        text.push_str(&process_metrics());
        text
    })
}

/// A label value in the text format: backslash, double quote and newline escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A Prometheus histogram: cumulative counts over fixed upper bounds, the sum and the count.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    /// A latency histogram ([`Histogram::LATENCY`]).
    fn default() -> Self {
        Self::new(Self::LATENCY)
    }
}

impl Histogram {
    /// Bounds for latencies from half a millisecond to ten seconds.
    pub const LATENCY: &'static [f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ];

    /// Empty, with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records `v`.
    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The family `name` in the text format: `_bucket` series with `le`, `_sum`, `_count`.
    pub fn render(&self, name: &str, help: &str) -> String {
        let mut o = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            o.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {c}\n"));
        }
        o.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", self.count));
        o.push_str(&format!(
            "{name}_sum {}\n{name}_count {}\n",
            self.sum, self.count
        ));
        o
    }
}

/// `isthmus_build_info` for `daemon`, with `labels` (`key="value",...`, already escaped)
/// after the version and the daemon's name.
pub fn build_info(daemon: &str, labels: &str) -> String {
    let sep = if labels.is_empty() { "" } else { "," };
    format!(
        "# HELP isthmus_build_info Build information.\n# TYPE isthmus_build_info gauge\n\
         isthmus_build_info{{version=\"{}\",daemon=\"{daemon}\"{sep}{labels}}} 1\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The standard process series of Prometheus' client libraries (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
/// `process_max_fds`, `process_start_time_seconds`), read from `/proc/self`. A value that
/// cannot be read is left out.
pub fn process_metrics() -> String {
    // /proc counts CPU time and start time in USER_HZ, which is 100 on Linux whatever the
    // kernel's HZ (as Prometheus' procfs assumes too).
    const USER_HZ: f64 = 100.0;
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
    };
    // Fields after the command name (which may hold spaces and parentheses): state is
    // field 3 of stat(5), so field n is at index n - 3.
    let stat = read("/proc/self/stat");
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / USER_HZ);
    series(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    let status = read("/proc/self/status");
    let rss = status.as_deref().and_then(|s| {
        let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        l.split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|kb| kb * 1024.0)
    });
    series(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        rss,
    );
    series(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        field(23),
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    series(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        fds,
    );
    let max_fds = read("/proc/self/limits").and_then(|s| {
        let l = s.lines().find(|l| l.starts_with("Max open files"))?;
        l.split_whitespace().nth(3)?.parse::<f64>().ok()
    });
    series(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds,
    );
    let btime = read("/proc/stat").and_then(|s| {
        let l = s.lines().find(|l| l.starts_with("btime "))?;
        l[6..].trim().parse::<f64>().ok()
    });
    let start = btime.zip(field(22)).map(|(b, t)| b + t / USER_HZ);
    series(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        start,
    );
    out
}

fn serve_with(
    addr: SocketAddr,
    name: &str,
    limits: Limits,
    render: impl Fn() -> String + Send + 'static,
) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let mut server = Server::new(TcpListener::from_std(listener), limits)?;
    thread::Builder::new()
        .name(name.into())
        .spawn(move || server.run(&render))?;
    Ok(local)
}

const LISTENER: Token = Token(0);

/// The event loop's state. Every connection has the same time to live, so the oldest is the
/// one with the nearest deadline; with at most `max_conns` of them, finding it is a scan.
struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<Token, Conn>,
    /// The token of the next connection. It wraps (on 32-bit targets) without harm: a
    /// connection lives for one deadline, far less than 2^32 accepts, and a stale event for
    /// a closed connection at most wakes another one spuriously.
    next: usize,
    limits: Limits,
}

impl Server {
    fn new(mut listener: TcpListener, limits: Limits) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            poll,
            listener,
            conns: HashMap::new(),
            next: LISTENER.0 + 1,
            limits,
        })
    }

    fn run(&mut self, render: &dyn Fn() -> String) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .oldest()
                .map(|(_, deadline)| deadline.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!("metrics endpoint stops: poll failed: {e}");
                return;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(),
                    token => self.drive(token, render),
                }
            }
            self.expire(Instant::now());
        }
    }

    /// Accepts every pending connection (the listener is edge-triggered).
    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    // E.g. out of file descriptors: try again on the next connection.
                    tracing::debug!("metrics endpoint: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream) {
        if self.conns.len() >= self.limits.max_conns {
            if let Some((token, _)) = self.oldest() {
                self.close(token);
            }
        }
        let token = Token(self.next);
        self.next = self.next.wrapping_add(1).max(LISTENER.0 + 1);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, token, interest)
            .is_ok()
        {
            let deadline = Instant::now() + self.limits.deadline;
            self.conns.insert(token, Conn::new(stream, deadline));
        }
    }

    /// Advances one connection on any readiness event, and closes it when it is done.
    fn drive(&mut self, token: Token, render: &dyn Fn() -> String) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.advance(self.limits.max_head, render) == Step::Done {
            self.close(token);
        }
    }

    /// The oldest connection and its deadline.
    fn oldest(&self) -> Option<(Token, Instant)> {
        self.conns
            .iter()
            .map(|(token, c)| (*token, c.deadline))
            .min_by_key(|&(_, deadline)| deadline)
    }

    /// Closes every connection whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        while let Some((token, deadline)) = self.oldest() {
            if deadline > now {
                return;
            }
            self.close(token);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What a connection needs next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for the socket: more of the head to read, or room to write.
    Wait,
    /// Finished or failed: close it.
    Done,
}

/// One client: reading its request head, then writing its response.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    state: State,
}

enum State {
    /// The request head so far.
    Reading(Vec<u8>),
    /// The whole response and how much of it the socket took.
    Writing { out: Vec<u8>, sent: usize },
}

impl Conn {
    fn new(stream: TcpStream, deadline: Instant) -> Self {
        Self {
            stream,
            deadline,
            state: State::Reading(Vec::with_capacity(1024)),
        }
    }

    /// Reads and writes as far as the socket allows without blocking.
    fn advance(&mut self, max_head: usize, render: &dyn Fn() -> String) -> Step {
        if let State::Reading(head) = &mut self.state {
            match read_head(&mut self.stream, head, max_head) {
                Ok(true) => {
                    self.state = State::Writing {
                        out: respond(head, render),
                        sent: 0,
                    }
                }
                Ok(false) => return Step::Wait,
                Err(_) => return Step::Done,
            }
        }
        let State::Writing { out, sent } = &mut self.state else {
            return Step::Wait;
        };
        match write_out(&mut self.stream, out, sent) {
            Ok(false) => Step::Wait,
            Ok(true) => {
                let _ = self.stream.shutdown(Shutdown::Write);
                Step::Done
            }
            Err(_) => Step::Done,
        }
    }
}

/// Reads into `head` until it holds a complete request head (`Ok(true)`) or the socket has
/// nothing more for now (`Ok(false)`). End of stream before the head is complete, or a head
/// of `max_head` bytes without its end, is an error.
fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>, max_head: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 1024];
    loop {
        let room = max_head.saturating_sub(head.len()).min(chunk.len());
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let n = match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Look for the end only where the new bytes can complete it.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(true);
        }
    }
}

/// Writes `out[*sent..]` until all of it is sent (`Ok(true)`) or the socket is full
/// (`Ok(false)`).
fn write_out(stream: &mut TcpStream, out: &[u8], sent: &mut usize) -> io::Result<bool> {
    while *sent < out.len() {
        match stream.write(&out[*sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The whole HTTP response to a request head: `render()`'s text for `/metrics` and `/`, 404
/// for any other path.
fn respond(head: &[u8], render: &dyn Fn() -> String) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if path == "/metrics" || path == "/" {
        ("200 OK", render())
    } else {
        ("404 Not Found", "not found\n".to_string())
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn process_series_are_read_and_plausible() {
        let text = process_metrics();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} {now}"
        );
        assert_eq!(text.matches("# TYPE").count(), 6);
        let mut h = Histogram::new(&[0.01, 0.1]);
        for v in [0.005, 0.05, 0.5] {
            h.observe(v);
        }
        let r = h.render("x_seconds", "X.");
        assert!(r.contains("x_seconds_bucket{le=\"0.01\"} 1\nx_seconds_bucket{le=\"0.1\"} 2\nx_seconds_bucket{le=\"+Inf\"} 3\nx_seconds_sum 0.555\nx_seconds_count 3\n"), "{r}");
        let info = build_info("isthmus-dp", "interface=\"wg0\"");
        assert!(info.contains(&format!(
            "isthmus_build_info{{version=\"{}\",daemon=\"isthmus-dp\",interface=\"wg0\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server without the process series appended, so bodies compare exactly.
    fn raw(
        addr: SocketAddr,
        render: impl Fn() -> String + Send + 'static,
    ) -> io::Result<SocketAddr> {
        serve_with(addr, "metrics-test", Limits::DEFAULT, render)
    }
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

    /// Any free port on loopback.
    fn local() -> SocketAddr {
        (std::net::Ipv4Addr::LOCALHOST, 0).into()
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s
    }

    /// Reads a whole response to end of stream; panics on a client-side timeout.
    fn read_response(mut s: StdStream) -> (String, Vec<u8>) {
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .expect("the whole response before the client timeout");
        split_response(&all)
    }

    /// The status line and the body, checked against Content-Length.
    fn split_response(all: &[u8]) -> (String, Vec<u8>) {
        let end = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8(all[..end].to_vec()).unwrap();
        let body = all[end + 4..].to_vec();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(body.len(), len, "body length against Content-Length");
        (head.lines().next().unwrap().to_string(), body)
    }

    fn get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
        let mut s = connect(addr);
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        read_response(s)
    }

    /// Whether the server closed `s`: end of stream or a reset, within the client timeout.
    fn closed_by_server(s: &mut StdStream) -> bool {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    /// Whether `s` is still open on the server's side right now (nothing to read, no end).
    fn still_open(s: &StdStream) -> bool {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let open = matches!(s.peek(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        open
    }

    #[test]
    fn metrics_scrape_succeeds_among_100_slowloris_clients() {
        let addr = raw(local(), || "up 1\n".into()).unwrap();
        let slow: Vec<StdStream> = (0..100).map(|_| connect(addr)).collect();
        // Half of them trickle a request byte now and then, the others send nothing.
        let stop = Arc::new(AtomicBool::new(false));
        let trickle: Vec<StdStream> = slow
            .iter()
            .step_by(2)
            .map(|s| s.try_clone().unwrap())
            .collect();
        let trickler = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut trickle = trickle;
                while !stop.load(Ordering::Relaxed) {
                    for s in &mut trickle {
                        let _ = s.write(b"G");
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            })
        };
        thread::sleep(Duration::from_millis(300));

        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"up 1\n");
        // The cap (64) evicted the oldest slow clients, but the newest are still held open.
        assert!(
            slow[60..].iter().all(still_open),
            "newest slow clients still connected"
        );

        stop.store(true, Ordering::Relaxed);
        trickler.join().unwrap();
    }

    #[test]
    fn slow_clients_are_closed_at_the_deadline() {
        let limits = Limits {
            deadline: Duration::from_millis(300),
            ..Limits::DEFAULT
        };
        let addr = serve_with(local(), "metrics-test", limits, || "up 1\n".into()).unwrap();
        let start = Instant::now();
        let mut silent = connect(addr);
        let mut trickler = connect(addr);
        let writer = {
            let mut w = trickler.try_clone().unwrap();
            thread::spawn(move || {
                // One byte every 50 ms: each read is quick, the head never completes.
                while w.write_all(b"G").is_ok() && start.elapsed() < Duration::from_secs(2) {
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        assert!(closed_by_server(&mut silent), "silent client closed");
        assert!(closed_by_server(&mut trickler), "trickling client closed");
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "not before the deadline"
        );
        writer.join().unwrap();
    }

    #[test]
    fn large_body_arrives_whole_to_a_slow_reader_without_blocking_others() {
        let page: String = ('a'..='z').cycle().take(2 * 1024 * 1024).collect();
        let expected = page.clone().into_bytes();
        let addr = raw(local(), move || page.clone()).unwrap();

        let mut slow = connect(addr);
        slow.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut got = vec![0u8; 16 * 1024];
        let n = slow.read(&mut got).unwrap();
        got.truncate(n);

        // While the slow reader stalls, another scrape gets its whole page.
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body == expected, "fast scrape: whole body");

        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let n = slow.read(&mut chunk).expect("slow reader: no timeout");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            thread::sleep(Duration::from_millis(5));
        }
        let (status, body) = split_response(&got);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body == expected, "slow reader: whole body");
    }

    #[test]
    fn other_paths_are_404() {
        let addr = raw(local(), || "up 1\n".into()).unwrap();
        let (status, body) = get(addr, "/nope");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(body, b"not found\n");
        assert_eq!(get(addr, "/").0, "HTTP/1.1 200 OK");
    }

    #[test]
    fn head_beyond_8_kib_without_its_end_is_closed() {
        let addr = raw(local(), || "up 1\n".into()).unwrap();
        let mut s = connect(addr);
        let _ = s.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(9000)).as_bytes());
        let mut got = Vec::new();
        // End of stream or a reset (the server never read the rest), and no response.
        let closed = match s.read_to_end(&mut got) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        assert!(closed, "closed, not timed out");
        assert!(got.is_empty(), "no response to an overlong head");
    }

    #[test]
    fn a_full_table_evicts_the_oldest_connection() {
        let limits = Limits {
            max_conns: 2,
            ..Limits::DEFAULT
        };
        let addr = serve_with(local(), "metrics-test", limits, || "up 1\n".into()).unwrap();
        let mut oldest = connect(addr);
        let newer = connect(addr);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(get(addr, "/metrics").1, b"up 1\n");
        assert!(closed_by_server(&mut oldest), "oldest evicted");
        assert!(still_open(&newer), "newer kept");
    }
}
