//! WireGuard's cross-platform userspace API (`get=1` / `set=1` on a Unix socket), served as
//! wireguard-go serves it, so that `wg`, `wg-quick` and anything else speaking the protocol
//! work unchanged. See <https://www.wireguard.com/xplatform/>.
//!
//! The socket is root's, but what arrives on it is still untrusted input: lines are read
//! at most [`MAX_LINE`] bytes at a time, a `set=1` request is decoded as it arrives and
//! may be at most [`MAX_SET_REQUEST`] bytes, clients are bounded by [`LIMITS`], and errors
//! name the line and the key at fault but never repeat a value the client sent (it may be
//! a private key).

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use ipnet::IpNet;

use crate::io::unix::{Limits, RateLimit, WhenFull};
use crate::keys::Key;

/// Where wg(8) looks for userspace sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The longest line read, without its newline. The longest line `wg` sends is a key
/// (`preshared_key=` and 64 hex digits, 78 bytes) or an endpoint with an IPv6 scope, so
/// this is far more than any valid line needs; a longer one ends the connection
/// (EMSGSIZE) without being buffered.
pub const MAX_LINE: usize = 4096;

/// The largest `set=1` body, in bytes. `wg addconf` of 10,000 peers, each with a preshared
/// key, an endpoint and a few allowed IPs, is 2–5 MB; this leaves room for far larger
/// configurations while bounding what one request can make us hold (the decoded request
/// is at most about twice its text). A larger request ends the connection (EMSGSIZE).
pub const MAX_SET_REQUEST: usize = 64 << 20;

/// The UAPI socket's clients: `wg` and `wg-quick` open one connection per command and
/// close it, so 32 at once is plenty, one idle for 30 s is gone, and when 32 are open the
/// oldest makes room for a new one (idle clients cannot lock `wg` out).
pub const LIMITS: Limits = Limits {
    max_conns: 32,
    idle_timeout: Some(Duration::from_secs(30)),
    when_full: WhenFull::EvictOldest,
};

/// At most one failed request logged per this long (the others are counted).
pub const ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

/// A `set=1` request, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key`: `Some(None)` removes the key (all zeros).
    pub private_key: Option<Option<Key>>,
    /// `listen_port`.
    pub listen_port: Option<u16>,
    /// `fwmark` (0: none).
    pub fwmark: Option<u32>,
    /// `replace_peers=true`.
    pub replace_peers: bool,
    /// Peer sections, in order.
    pub peers: Vec<PeerSet>,
}

/// One `public_key=` section of a set request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// The peer.
    pub public_key: Key,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: do not create the peer.
    pub update_only: bool,
    /// `preshared_key`: `Some(None)` removes it.
    pub preshared_key: Option<Option<Key>>,
    /// `endpoint`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval` (0: off).
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`.
    pub replace_allowed_ips: bool,
    /// `allowed_ip` lines.
    pub allowed_ips: Vec<IpNet>,
}

/// The device as `get=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Private key.
    pub private_key: Option<Key>,
    /// UDP port.
    pub listen_port: u16,
    /// fwmark (0: none).
    pub fwmark: u32,
    /// Peers.
    pub peers: Vec<crate::tunnel::PeerInfo>,
}

/// A failed request: an errno for the client and, for our log, what was wrong and where.
///
/// It never holds a value the client sent (which may be a private key): the key is one of
/// the protocol's own names, and the parser's reasons are fixed text (`&'static str`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{reason} (errno {errno})", Where(*.line, "set=1 line "), Where(*.key, ""))]
pub struct UapiError {
    /// Positive errno; sent negated, as wireguard-go does.
    pub errno: i32,
    /// The line of the `set=1` body at fault (1: the first after `set=1`).
    pub line: Option<usize>,
    /// The key at fault, by its protocol name.
    pub key: Option<&'static str>,
    /// What was wrong, in our words.
    pub reason: Cow<'static, str>,
}

/// `PREFIX{value}: `, or nothing.
struct Where<T>(Option<T>, &'static str);

impl<T: std::fmt::Display> std::fmt::Display for Where<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => write!(f, "{}{v}: ", self.1),
            None => Ok(()),
        }
    }
}

impl UapiError {
    fn new(errno: i32, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            errno,
            line: None,
            key: None,
            reason: reason.into(),
        }
    }

    /// EINVAL: a bad key or value.
    pub fn invalid(reason: &'static str) -> Self {
        Self::new(libc::EINVAL, reason)
    }

    /// EPROTO: the request is not the protocol; the connection is closed.
    pub fn protocol(reason: &'static str) -> Self {
        Self::new(libc::EPROTO, reason)
    }

    /// EMSGSIZE: a line or a request over our limits; the connection is closed.
    pub fn too_long(reason: &'static str) -> Self {
        Self::new(libc::EMSGSIZE, reason)
    }

    /// EINVAL: the device refused a well-formed request. `message` is the device's, not
    /// the client's: it must not repeat a secret the client sent.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message.into())
    }

    /// EIO: the device could not do it (e.g. bind). `message` as for [`Self::rejected`].
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(libc::EIO, message.into())
    }

    /// ENOSPC: a table is full (`max_peers`). `message` as for [`Self::rejected`].
    pub fn no_space(message: impl Into<String>) -> Self {
        Self::new(libc::ENOSPC, message.into())
    }

    /// EADDRINUSE: the port is taken. `message` as for [`Self::rejected`].
    pub fn port_in_use(message: impl Into<String>) -> Self {
        Self::new(libc::EADDRINUSE, message.into())
    }

    /// Whether the stream is out of step after this error, so the connection must close.
    pub fn ends_connection(&self) -> bool {
        matches!(self.errno, libc::EPROTO | libc::EMSGSIZE)
    }

    fn at_line(self, line: usize) -> Self {
        Self {
            line: Some(line),
            ..self
        }
    }

    fn at_key(self, key: Field) -> Self {
        Self {
            key: Some(key.name()),
            ..self
        }
    }
}

/// What serves the API: the device.
pub trait UapiHandler: Send + Sync {
    /// The state for `get=1`.
    fn get(&self) -> DeviceState;
    /// Apply a `set=1`.
    fn set(&self, req: SetRequest) -> Result<(), UapiError>;
    /// Clients served at once (`[interface] max_uapi_clients`); beyond, the oldest is closed.
    fn max_clients(&self) -> usize {
        LIMITS.max_conns
    }
    /// A bound was reached: a client closed at [`UapiHandler::max_clients`], a line or a
    /// request over its size. (For the metrics; the server logs it.)
    fn limit_reached(&self, limit: crate::limits::Limit) {
        let _ = limit;
    }
}

/// The keys a `set=1` request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    PrivateKey,
    ListenPort,
    Fwmark,
    ReplacePeers,
    PublicKey,
    Remove,
    UpdateOnly,
    PresharedKey,
    Endpoint,
    PersistentKeepaliveInterval,
    ReplaceAllowedIps,
    AllowedIp,
    ProtocolVersion,
}

impl Field {
    const ALL: [Field; 13] = [
        Field::PrivateKey,
        Field::ListenPort,
        Field::Fwmark,
        Field::ReplacePeers,
        Field::PublicKey,
        Field::Remove,
        Field::UpdateOnly,
        Field::PresharedKey,
        Field::Endpoint,
        Field::PersistentKeepaliveInterval,
        Field::ReplaceAllowedIps,
        Field::AllowedIp,
        Field::ProtocolVersion,
    ];

    /// The key as the protocol spells it.
    fn name(self) -> &'static str {
        match self {
            Field::PrivateKey => "private_key",
            Field::ListenPort => "listen_port",
            Field::Fwmark => "fwmark",
            Field::ReplacePeers => "replace_peers",
            Field::PublicKey => "public_key",
            Field::Remove => "remove",
            Field::UpdateOnly => "update_only",
            Field::PresharedKey => "preshared_key",
            Field::Endpoint => "endpoint",
            Field::PersistentKeepaliveInterval => "persistent_keepalive_interval",
            Field::ReplaceAllowedIps => "replace_allowed_ips",
            Field::AllowedIp => "allowed_ip",
            Field::ProtocolVersion => "protocol_version",
        }
    }

    fn from_name(name: &str) -> Option<Field> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

// The value decoders: their errors are fixed text, so no value can reach a log.

fn boolean(v: &str) -> Result<bool, &'static str> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false"),
    }
}

fn hex_key(v: &str) -> Result<Key, &'static str> {
    Key::from_hex(v).map_err(|_| "not a 64-digit hex key")
}

/// A key where all zeros means none.
fn maybe_key(v: &str) -> Result<Option<Key>, &'static str> {
    hex_key(v).map(|k| (!k.is_zero()).then_some(k))
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, &'static str> {
    v.parse().map_err(|_| "not a number in range")
}

fn set_device(req: &mut SetRequest, field: Field, v: &str) -> Result<(), &'static str> {
    match field {
        Field::PrivateKey => req.private_key = Some(maybe_key(v)?),
        Field::ListenPort => req.listen_port = Some(number(v)?),
        Field::Fwmark => req.fwmark = Some(number(v)?),
        Field::ReplacePeers => req.replace_peers = boolean(v)?,
        _ => return Err("a peer key before any public_key"),
    }
    Ok(())
}

fn set_peer(peer: &mut PeerSet, field: Field, v: &str) -> Result<(), &'static str> {
    match field {
        Field::Remove => peer.remove = boolean(v)?,
        Field::UpdateOnly => peer.update_only = boolean(v)?,
        Field::PresharedKey => peer.preshared_key = Some(maybe_key(v)?),
        Field::Endpoint => peer.endpoint = Some(v.parse().map_err(|_| "not an address:port")?),
        Field::PersistentKeepaliveInterval => peer.persistent_keepalive = Some(number(v)?),
        Field::ReplaceAllowedIps => peer.replace_allowed_ips = boolean(v)?,
        Field::AllowedIp => {
            let net: IpNet = v.parse().map_err(|_| "not an address/prefix length")?;
            peer.allowed_ips.push(net.trunc());
        }
        Field::ProtocolVersion if v != "1" => return Err("only version 1 is supported"),
        Field::ProtocolVersion => {}
        _ => return Err("a device key after a public_key"),
    }
    Ok(())
}

/// Decodes a `set=1` body line by line, so that a server holds the decoded request and
/// not its text.
#[derive(Debug, Default)]
pub struct SetParser {
    req: SetRequest,
    line: usize,
}

impl SetParser {
    /// A parser at the first line of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode the next line (without its newline, and not the blank line that ends the
    /// body). Errors say which line and which key, never what the value was.
    pub fn line(&mut self, line: &[u8]) -> Result<(), UapiError> {
        self.line += 1;
        self.apply(line).map_err(|e| e.at_line(self.line))
    }

    fn apply(&mut self, line: &[u8]) -> Result<(), UapiError> {
        let line = std::str::from_utf8(line).map_err(|_| UapiError::invalid("not UTF-8"))?;
        let (k, v) = line
            .split_once('=')
            .ok_or(UapiError::protocol("a line without '='"))?;
        let Some(field) = Field::from_name(k) else {
            return Err(UapiError::invalid("unknown key"));
        };
        let req = &mut self.req;
        let set = if field == Field::PublicKey {
            hex_key(v).map(|public_key| {
                req.peers.push(PeerSet {
                    public_key,
                    ..PeerSet::default()
                });
            })
        } else if let Some(peer) = req.peers.last_mut() {
            set_peer(peer, field, v)
        } else {
            set_device(req, field, v)
        };
        set.map_err(|reason| UapiError::invalid(reason).at_key(field))
    }

    /// The request decoded so far.
    pub fn finish(self) -> SetRequest {
        self.req
    }
}

/// Decode the body of a `set=1` request (the lines after `set=1`, up to a blank line).
pub fn parse_set(text: &str) -> Result<SetRequest, UapiError> {
    let mut parser = SetParser::new();
    for line in text.lines().take_while(|l| !l.is_empty()) {
        parser.line(line.as_bytes())?;
    }
    Ok(parser.finish())
}

/// Encode the answer to `get=1` (without the final `errno=0` and blank line).
pub fn format_get(state: &DeviceState) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if let Some(k) = &state.private_key {
        let _ = writeln!(o, "private_key={}", k.to_hex());
    }
    if state.listen_port != 0 {
        let _ = writeln!(o, "listen_port={}", state.listen_port);
    }
    if state.fwmark != 0 {
        let _ = writeln!(o, "fwmark={}", state.fwmark);
    }
    for p in &state.peers {
        let _ = writeln!(o, "public_key={}", p.public_key.to_hex());
        let _ = writeln!(
            o,
            "preshared_key={}",
            p.preshared_key.unwrap_or_default().to_hex()
        );
        let _ = writeln!(o, "protocol_version=1");
        if let Some(e) = p.endpoint {
            let _ = writeln!(o, "endpoint={e}");
        }
        let t = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(o, "last_handshake_time_sec={}", t.as_secs());
        let _ = writeln!(o, "last_handshake_time_nsec={}", t.subsec_nanos());
        let _ = writeln!(o, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(o, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            o,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive.unwrap_or(0)
        );
        for a in &p.allowed_ips {
            let _ = writeln!(o, "allowed_ip={a}");
        }
    }
    o
}

/// What [`read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A line, now in the buffer without its newline (the stream's last may lack one).
    Text,
    /// A line longer than [`MAX_LINE`]: what was read of it is dropped, the rest is unread.
    TooLong,
    /// The client closed its side.
    Eof,
}

/// Read one line into `buf`, reading at most [`MAX_LINE`] bytes and the newline: a longer
/// line is reported, never buffered whole.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let limit = MAX_LINE + 1;
    if r.by_ref().take(limit as u64).read_until(b'\n', buf)? == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() == limit {
        buf.clear();
        return Ok(Line::TooLong);
    }
    Ok(Line::Text)
}

/// Serve one connection: any number of requests until the client closes, a read or a
/// write fails (as it does after the idle timeout), or an error leaves the stream out of
/// step. Failed requests are logged, at most one per [`ERROR_LOG_EVERY`] (`errors`).
fn serve_conn(
    reader: &mut impl BufRead,
    out: &mut impl Write,
    handler: &dyn UapiHandler,
    errors: &Mutex<RateLimit>,
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        let result = match read_line(reader, &mut line)? {
            Line::Eof => return Ok(()),
            Line::TooLong => Err(UapiError::too_long("operation line too long")),
            Line::Text => match line.as_slice() {
                b"" => continue,
                b"get=1" => get(reader, out, &mut line, handler)?,
                b"set=1" => read_set(reader, &mut line)?.and_then(|req| handler.set(req)),
                _ => Err(UapiError::protocol("unknown operation")),
            },
        };
        let errno = match &result {
            Ok(()) => 0,
            Err(e) => {
                if e.errno == libc::EMSGSIZE {
                    handler.limit_reached(crate::limits::Limit::UapiRequest);
                }
                log_error(e, errors);
                -e.errno
            }
        };
        write!(out, "errno={errno}\n\n")?;
        out.flush()?;
        if result.is_err_and(|e| e.ends_connection()) {
            return Ok(());
        }
    }
}

/// Answer `get=1`, whose request ends with a blank line.
fn get(
    reader: &mut impl BufRead,
    out: &mut impl Write,
    line: &mut Vec<u8>,
    handler: &dyn UapiHandler,
) -> io::Result<Result<(), UapiError>> {
    match read_line(reader, line)? {
        Line::TooLong => return Ok(Err(UapiError::too_long("line too long after get=1"))),
        Line::Text if !line.is_empty() => return Ok(Err(UapiError::invalid("text after get=1"))),
        Line::Text | Line::Eof => {}
    }
    out.write_all(format_get(&handler.get()).as_bytes())?;
    Ok(Ok(()))
}

/// Read and decode a `set=1` body, up to its blank line or the end of the stream. After a
/// bad line the rest of the body is still read, so that the next request starts in step,
/// but no longer decoded. A line over [`MAX_LINE`] or a body over [`MAX_SET_REQUEST`]
/// stops the reading there (the connection then closes).
fn read_set(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
) -> io::Result<Result<SetRequest, UapiError>> {
    let mut parser = SetParser::new();
    let mut first_error = None;
    let mut size = 0;
    for n in 1.. {
        match read_line(reader, line)? {
            Line::Eof => break,
            Line::TooLong => return Ok(Err(UapiError::too_long("line too long").at_line(n))),
            Line::Text => {}
        }
        size += line.len() + 1;
        // As wireguard-go (and `str::lines`) does, a line may end in "\r\n".
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            break;
        }
        if size > MAX_SET_REQUEST {
            return Ok(Err(UapiError::too_long("request too large").at_line(n)));
        }
        if first_error.is_none() {
            first_error = parser.line(line).err();
        }
    }
    Ok(first_error.map_or_else(|| Ok(parser.finish()), Err))
}

/// Log a failed request, unless one was logged less than [`ERROR_LOG_EVERY`] ago.
fn log_error(e: &UapiError, errors: &Mutex<RateLimit>) {
    let due = errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .hit(Instant::now());
    match due {
        Some(1) => tracing::warn!("userspace API: {e}"),
        Some(n) => tracing::warn!(
            "userspace API: {e} (and {} more failed requests before it)",
            n - 1
        ),
        None => {}
    }
}

/// A listening UAPI socket; the socket file is removed when this is dropped.
pub type UapiServer = crate::io::unix::UnixServer;

/// Serve the API for `ifname` at `/var/run/wireguard/IFNAME.sock`.
pub fn serve(ifname: &str, handler: Arc<dyn UapiHandler>) -> io::Result<UapiServer> {
    let dir = Path::new(SOCKET_DIR);
    crate::io::unix::ensure_dir(dir, 0o755)?;
    serve_at(&dir.join(format!("{ifname}.sock")), handler)
}

/// Serve the API at `path` (mode 0600), within [`LIMITS`] but for the handler's
/// [`UapiHandler::max_clients`].
pub fn serve_at(path: &Path, handler: Arc<dyn UapiHandler>) -> io::Result<UapiServer> {
    let limits = Limits {
        max_conns: handler.max_clients(),
        ..LIMITS
    };
    serve_within(path, handler, limits)
}

fn serve_within(
    path: &Path,
    handler: Arc<dyn UapiHandler>,
    limits: Limits,
) -> io::Result<UapiServer> {
    let errors = Mutex::new(RateLimit::new(ERROR_LOG_EVERY));
    let h = handler.clone();
    let at_limit = Arc::new(move || h.limit_reached(crate::limits::Limit::UapiClients));
    crate::io::unix::UnixServer::start_counted(
        path,
        "isthmus-uapi",
        limits,
        at_limit,
        move |conn| {
            let served = conn.try_clone().and_then(|out| {
                serve_conn(&mut BufReader::new(conn), &mut &out, &*handler, &errors)
            });
            if let Err(e) = served {
                tracing::debug!("userspace API connection: {e}");
            }
        },
    )
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn parses_what_wg_sends() {
        let text = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
                    listen_port=12912\nfwmark=0\nreplace_peers=true\n\
                    public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
                    preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52\n\
                    replace_allowed_ips=true\nallowed_ip=192.168.4.4/32\n\
                    public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
                    update_only=true\nendpoint=[abcd:23::33%2]:51820\npersistent_keepalive_interval=111\n\
                    public_key=662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58\n\
                    endpoint=182.122.22.19:3233\nallowed_ip=192.168.4.6/32\nallowed_ip=192.168.4.10/31\n\
                    public_key=e818b58db5274087fcc1be5dc728cf53d3b5726b4cef6b9bab8f8f8c2452c25c\nremove=true\n";
        let r = parse_set(text).unwrap();
        assert_eq!(r.listen_port, Some(12912));
        assert_eq!(r.fwmark, Some(0));
        assert!(r.replace_peers);
        assert_eq!(r.peers.len(), 4);
        assert!(r.peers[0].preshared_key.unwrap().is_some());
        assert_eq!(r.peers[1].endpoint.unwrap().port(), 51820);
        assert!(r.peers[1].update_only);
        assert_eq!(r.peers[1].persistent_keepalive, Some(111));
        // Host bits are masked, as wireguard-go does.
        assert_eq!(r.peers[2].allowed_ips[1].to_string(), "192.168.4.10/31");
        assert!(r.peers[3].remove);
    }

    #[test]
    fn rejects_bad_input_with_errno() {
        assert_eq!(parse_set("bogus=1\n").unwrap_err().errno, libc::EINVAL);
        assert_eq!(
            parse_set("listen_port=70000\n").unwrap_err().errno,
            libc::EINVAL
        );
        assert_eq!(
            parse_set("private_key=xyz\n").unwrap_err().errno,
            libc::EINVAL
        );
        assert_eq!(
            parse_set("no equals sign\n").unwrap_err().errno,
            libc::EPROTO
        );
        let pk = format!("public_key={}\n", "ab".repeat(32));
        assert!(parse_set(&format!("{pk}allowed_ip=10.0.0.0/33\n")).is_err());
        assert!(parse_set(&format!("{pk}endpoint=nonsense\n")).is_err());
        assert!(parse_set(&format!("{pk}protocol_version=2\n")).is_err());
    }

    #[test]
    fn zero_keys_mean_removal() {
        let z = "0".repeat(64);
        let r = parse_set(&format!(
            "private_key={z}\npublic_key={}\npreshared_key={z}\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!(r.private_key, Some(None));
        assert_eq!(r.peers[0].preshared_key, Some(None));
    }

    /// An in-memory device that applies set requests the simple way: a fixture for driving
    /// the real `wg` tool against the protocol code.
    #[derive(Default)]
    struct Memory(Mutex<DeviceState>, crate::limits::LimitCounters);

    impl UapiHandler for Memory {
        fn get(&self) -> DeviceState {
            self.0.lock().unwrap().clone()
        }
        fn limit_reached(&self, limit: crate::limits::Limit) {
            self.1.hit(limit);
        }
        fn set(&self, req: SetRequest) -> Result<(), UapiError> {
            let mut s = self.0.lock().unwrap();
            if let Some(k) = req.private_key {
                s.private_key = k;
            }
            if let Some(p) = req.listen_port {
                s.listen_port = p;
            }
            for p in req.peers {
                s.peers.retain(|q| q.public_key != p.public_key);
                if p.remove {
                    continue;
                }
                s.peers.push(crate::tunnel::PeerInfo {
                    public_key: p.public_key,
                    name: None,
                    class: crate::config::LinkClass::Mesh,
                    preshared_key: p.preshared_key.flatten(),
                    endpoint: p.endpoint,
                    last_handshake: Some(UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5)),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
                    rx_packets: 0,
                    tx_packets: 0,
                    handshakes: 0,
                    liveness: None,
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_ips: p.allowed_ips,
                });
            }
            Ok(())
        }
    }

    fn wg(args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new("wg")
            .args(args)
            .output()
            .expect("wg tool installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    #[test]
    fn the_wg_tool_configures_and_reads_through_our_socket() {
        let ifname = format!("ut{}", std::process::id() % 100_000);
        let dev = Arc::new(Memory::default());
        let server = serve(&ifname, dev.clone()).unwrap();
        let dir = std::env::temp_dir().join(format!("isthmus-uapi-{ifname}"));
        std::fs::create_dir_all(&dir).unwrap();
        let keyfile = dir.join("key");
        let private = Key::generate_private();
        std::fs::write(&keyfile, private.to_base64()).unwrap();
        let peer = Key::generate_private().public_key();
        let (ok, _, err) = wg(&[
            "set",
            &ifname,
            "private-key",
            keyfile.to_str().unwrap(),
            "listen-port",
            "51999",
            "peer",
            &peer.to_base64(),
            "allowed-ips",
            "10.0.0.0/24,fd00::/64",
            "endpoint",
            "127.0.0.1:5000",
            "persistent-keepalive",
            "25",
        ]);
        assert!(ok, "{err}");
        let s = dev.get();
        assert_eq!(s.private_key, Some(private));
        assert_eq!(s.listen_port, 51999);
        assert_eq!(s.peers[0].public_key, peer);
        assert_eq!(s.peers[0].allowed_ips.len(), 2);
        assert_eq!(s.peers[0].persistent_keepalive, Some(25));
        let (ok, dump, err) = wg(&["show", &ifname, "dump"]);
        assert!(ok, "{err}");
        let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines[0][0], private.to_base64());
        assert_eq!(lines[0][1], private.public_key().to_base64());
        assert_eq!(lines[0][2], "51999");
        assert_eq!(lines[1][0], peer.to_base64());
        assert_eq!(lines[1][2], "127.0.0.1:5000");
        assert_eq!(lines[1][3], "10.0.0.0/24,fd00::/64");
        assert_eq!(lines[1][4], "1700000000");
        assert_eq!(lines[1][5], "1234");
        assert_eq!(lines[1][6], "5678");
        assert_eq!(lines[1][7], "25");
        // An invalid request is refused with the errno wg reports.
        let (ok, _, err) = wg(&[
            "set",
            &ifname,
            "peer",
            &peer.to_base64(),
            "allowed-ips",
            "10.0.0.0/99",
        ]);
        assert!(!ok, "{err}");
        let (ok, conf, _) = wg(&["showconf", &ifname]);
        assert!(ok && conf.contains("ListenPort = 51999"), "{conf}");
        let path = server.path().to_path_buf();
        drop(server);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What `f` logs on this thread, at every level, as text.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = sink.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    /// Serve `input` as one connection's bytes: the reply, the log, and how many bytes of
    /// the input were read.
    fn exchange(handler: &dyn UapiHandler, input: &[u8]) -> (String, String, usize) {
        let mut reader = io::Cursor::new(input);
        let mut out = Vec::new();
        let errors = Mutex::new(RateLimit::new(ERROR_LOG_EVERY));
        let log = logged(|| serve_conn(&mut reader, &mut out, handler, &errors).unwrap());
        let read = usize::try_from(reader.position()).unwrap();
        (String::from_utf8(out).unwrap(), log, read)
    }

    #[test]
    fn errors_name_the_line_and_the_key_but_never_the_value() {
        let secret = Key::generate_private().to_hex();
        let public = Key::generate_private().public_key().to_hex();
        let dev = Memory::default();
        let cases = [
            (
                format!("set=1\nlisten_port=1\nprivate_key={secret}0\n\n"),
                "errno=-22",
                "line 2: private_key: not a 64-digit hex key",
            ),
            (
                format!("set=1\npublic_key={public}\npreshared_key=x{secret}\n\n"),
                "errno=-22",
                "line 2: preshared_key: not a 64-digit hex key",
            ),
            (
                format!("set=1\nprivate_key {secret}\n\n"),
                "errno=-71",
                "line 1: a line without '='",
            ),
            (
                format!("set=1\n{secret}={secret}\n\n"),
                "errno=-22",
                "line 1: unknown key",
            ),
            (
                format!("set=1\nlisten_port={secret}\n\n"),
                "errno=-22",
                "line 1: listen_port: not a number in range",
            ),
            (format!("{secret}\n\n"), "errno=-71", "unknown operation"),
        ];
        for (input, errno, says) in cases {
            let (reply, log, _) = exchange(&dev, input.as_bytes());
            assert_eq!(reply, format!("{errno}\n\n"), "{input}");
            assert!(log.contains(says), "{log}");
            assert!(!log.contains(&secret[..16]), "{log}");
        }
        assert_eq!(dev.get().private_key, None);
    }

    #[test]
    fn a_long_line_is_refused_unread_and_unlogged() {
        let dev = Memory::default();
        let long = "A".repeat(1 << 20);
        for input in [
            format!("set=1\nprivate_key={long}\n\nget=1\n\n"),
            format!("{long}\nget=1\n\n"),
            format!("get=1\n{long}\n"),
        ] {
            let (reply, log, read) = exchange(&dev, input.as_bytes());
            // EMSGSIZE, and the connection ends: the get=1 after it is not answered.
            assert_eq!(reply, format!("errno=-{}\n\n", libc::EMSGSIZE));
            assert!(read <= "set=1\n".len() + MAX_LINE + 1, "{read} bytes read");
            assert!(log.contains("too long") && !log.contains("AAAA"), "{log}");
            assert!(log.len() < 500, "{} bytes of log", log.len());
        }
    }

    #[test]
    fn a_request_over_the_size_limit_is_refused() {
        let line = format!("bogus={}\n", "y".repeat(MAX_LINE - 6));
        let body = line.repeat(MAX_SET_REQUEST / line.len() + 1);
        let m = Memory::default();
        let (reply, log, read) = exchange(&m, format!("set=1\n{body}\n").as_bytes());
        assert_eq!(reply, format!("errno=-{}\n\n", libc::EMSGSIZE));
        assert_eq!(m.1.get(crate::limits::Limit::UapiRequest), 1, "counted");
        assert!(log.contains("request too large"), "{log}");
        assert!(read <= "set=1\n".len() + MAX_SET_REQUEST + line.len());
    }

    /// Counts what it is asked to set.
    #[derive(Default)]
    struct Count(Mutex<(usize, usize)>);

    impl UapiHandler for Count {
        fn get(&self) -> DeviceState {
            DeviceState::default()
        }
        fn set(&self, req: SetRequest) -> Result<(), UapiError> {
            let mut c = self.0.lock().unwrap();
            c.0 += req.peers.len();
            c.1 += req.peers.iter().map(|p| p.allowed_ips.len()).sum::<usize>();
            Ok(())
        }
    }

    #[test]
    fn ten_thousand_peers_fit_in_one_request() {
        use std::fmt::Write as _;
        let mut req = String::from("set=1\nreplace_peers=true\n");
        for i in 0..10_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let _ = write!(
                req,
                "public_key={}\npreshared_key={}\nreplace_allowed_ips=true\n\
                 endpoint=[2001:db8::{i:x}]:51820\npersistent_keepalive_interval=25\n\
                 allowed_ip=10.{a}.{b}.0/24\nallowed_ip=fd00:{i:x}::/64\n",
                "ab".repeat(32),
                "cd".repeat(32),
            );
        }
        req.push('\n');
        assert!(req.len() > 2_000_000, "{}", req.len());
        let dev = Count::default();
        let (reply, _, _) = exchange(&dev, req.as_bytes());
        assert_eq!(reply, "errno=0\n\n");
        assert_eq!(*dev.0.lock().unwrap(), (10_000, 20_000));
    }

    #[test]
    fn a_bad_request_leaves_the_connection_in_step() {
        let dev = Memory::default();
        let input = "set=1\nbogus=1\nlisten_port=7\n\nset=1\nlisten_port=9\n\nget=1\n\n";
        let (reply, _, _) = exchange(&dev, input.as_bytes());
        assert_eq!(reply, "errno=-22\n\nerrno=0\n\nlisten_port=9\nerrno=0\n\n");
        // Body lines may end in "\r\n", as wireguard-go allows.
        let (reply, _, _) = exchange(&dev, b"set=1\nlisten_port=8\r\n\r\nget=1\n\n");
        assert_eq!(reply, "errno=0\n\nlisten_port=8\nerrno=0\n\n");
    }

    /// A temp dir for a test's socket.
    fn socket_path(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("isthmus-uapi-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("u.sock")
    }

    fn connect(path: &Path) -> UnixStream {
        let c = UnixStream::connect(path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        c
    }

    /// Everything the server sends until it closes (or resets) the connection.
    fn read_all(c: &mut UnixStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = c.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into()
    }

    /// `get=1` on a new connection.
    fn get_on(path: &Path) -> String {
        let mut c = connect(path);
        // A client refused may find the connection closed before it writes.
        let _ = c.write_all(b"get=1\n\n");
        let _ = c.shutdown(std::net::Shutdown::Write);
        read_all(&mut c)
    }

    #[test]
    fn a_megabyte_line_closes_the_connection_and_the_next_client_is_served() {
        let path = socket_path("long");
        let server = serve_at(&path, Arc::new(Memory::default())).unwrap();
        let mut c = connect(&path);
        let mut request = b"set=1\nprivate_key=".to_vec();
        request.resize(request.len() + (1 << 20), b'a');
        // The server stops reading and hangs up, so the write (likely) fails part way.
        let _ = c.write_all(&request);
        assert_eq!(read_all(&mut c), format!("errno=-{}\n\n", libc::EMSGSIZE));
        assert_eq!(get_on(&path), "errno=0\n\n");
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn clients_beyond_the_limit_are_closed_and_idle_ones_time_out() {
        let path = socket_path("limits");
        let limits = Limits {
            max_conns: 1,
            idle_timeout: Some(std::time::Duration::from_millis(300)),
            when_full: crate::io::unix::WhenFull::Refuse,
        };
        let m = Arc::new(Memory::default());
        let server = serve_within(&path, m.clone(), limits).unwrap();
        let mut idle = connect(&path);
        // Served: it has the only place.
        idle.write_all(b"get=1\n\n").unwrap();
        let mut reply = [0u8; 9];
        idle.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"errno=0\n\n");
        // A second client is closed at once, unanswered, and counted.
        assert_eq!(get_on(&path), "");
        assert_eq!(m.1.get(crate::limits::Limit::UapiClients), 1);
        // The idle one is dropped after the timeout, and its place is free again.
        let t = Instant::now();
        assert_eq!(read_all(&mut idle), "");
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
        // (The place comes back just after the close the client sees: try a few times.)
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut reply = get_on(&path);
        while reply.is_empty() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            reply = get_on(&path);
        }
        assert_eq!(reply, "errno=0\n\n");
        drop(server);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
