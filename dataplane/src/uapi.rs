//! WireGuard's cross-platform userspace API (`get=1` / `set=1` on a Unix socket), served as
//! wireguard-go serves it, so that `wg`, `wg-quick` and anything else speaking the protocol
//! work unchanged. See <https://www.wireguard.com/xplatform/>.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::io::unix::Limits;
use crate::keys::Key;

/// Where wg(8) looks for userspace sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The UAPI socket's clients: `wg` and `wg-quick` open one connection per command and
/// close it, so 32 at once is plenty, and one idle for 30 s is gone.
pub const LIMITS: Limits = Limits {
    max_conns: 32,
    idle_timeout: Some(Duration::from_secs(30)),
};

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
    pub peers: Vec<PeerState>,
}

/// One peer as `get=1` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// Public key.
    pub public_key: Key,
    /// Preshared key.
    pub preshared_key: Option<Key>,
    /// Endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Persistent keepalive interval.
    pub persistent_keepalive: Option<u16>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

/// A failed request: an errno for the client and a message for our log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct UapiError {
    /// Positive errno; sent negated, as wireguard-go does.
    pub errno: i32,
    /// What was wrong.
    pub message: String,
}

impl UapiError {
    /// EINVAL: a bad key or value.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            errno: libc::EINVAL,
            message: message.into(),
        }
    }

    /// EPROTO: the request is not the protocol.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self {
            errno: libc::EPROTO,
            message: message.into(),
        }
    }

    /// EIO: the device could not do it (e.g. bind).
    pub fn io(message: impl Into<String>) -> Self {
        Self {
            errno: libc::EIO,
            message: message.into(),
        }
    }

    /// EADDRINUSE: the port is taken.
    pub fn port_in_use(message: impl Into<String>) -> Self {
        Self {
            errno: libc::EADDRINUSE,
            message: message.into(),
        }
    }
}

/// What serves the API: the device.
pub trait UapiHandler: Send + Sync {
    /// The state for `get=1`.
    fn get(&self) -> DeviceState;
    /// Apply a `set=1`.
    fn set(&self, req: SetRequest) -> Result<(), UapiError>;
}

fn parse_bool(key: &str, v: &str) -> Result<bool, UapiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(UapiError::invalid(format!(
            "{key}: expected true or false, got {v:?}"
        ))),
    }
}

fn parse_key(key: &str, v: &str) -> Result<Key, UapiError> {
    Key::from_hex(v).map_err(|_| UapiError::invalid(format!("{key}: not a 64-digit hex key")))
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, UapiError> {
    v.parse()
        .map_err(|_| UapiError::invalid(format!("{key}: invalid number {v:?}")))
}

/// Decode the body of a `set=1` request (the lines after `set=1`, without the blank line).
pub fn parse_set(text: &str) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| UapiError::protocol(format!("line without '=': {line:?}")))?;
        if k == "public_key" {
            req.peers.push(PeerSet {
                public_key: parse_key(k, v)?,
                ..PeerSet::default()
            });
            continue;
        }
        if let Some(peer) = req.peers.last_mut() {
            match k {
                "remove" => peer.remove = parse_bool(k, v)?,
                "update_only" => peer.update_only = parse_bool(k, v)?,
                "preshared_key" => {
                    let key = parse_key(k, v)?;
                    peer.preshared_key = Some((!key.is_zero()).then_some(key));
                }
                "endpoint" => {
                    peer.endpoint = Some(v.parse().map_err(|_| {
                        UapiError::invalid(format!("endpoint: invalid address {v:?}"))
                    })?);
                }
                "persistent_keepalive_interval" => {
                    peer.persistent_keepalive = Some(parse_num(k, v)?)
                }
                "replace_allowed_ips" => peer.replace_allowed_ips = parse_bool(k, v)?,
                "allowed_ip" => {
                    let net: IpNet = v.parse().map_err(|_| {
                        UapiError::invalid(format!("allowed_ip: invalid prefix {v:?}"))
                    })?;
                    peer.allowed_ips.push(net.trunc());
                }
                "protocol_version" => {
                    if v != "1" {
                        return Err(UapiError::invalid(format!(
                            "protocol_version {v} is not supported"
                        )));
                    }
                }
                _ => return Err(UapiError::invalid(format!("unknown peer key {k:?}"))),
            }
            continue;
        }
        match k {
            "private_key" => {
                let key = parse_key(k, v)?;
                req.private_key = Some((!key.is_zero()).then_some(key));
            }
            "listen_port" => req.listen_port = Some(parse_num(k, v)?),
            "fwmark" => req.fwmark = Some(parse_num(k, v)?),
            "replace_peers" => req.replace_peers = parse_bool(k, v)?,
            _ => return Err(UapiError::invalid(format!("unknown device key {k:?}"))),
        }
    }
    Ok(req)
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

/// Serve one connection: any number of requests until the client closes.
fn serve_conn(stream: UnixStream, handler: &dyn UapiHandler) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let op = line.trim_end_matches('\n');
        let result = match op {
            "get=1" => {
                // The request ends with a blank line.
                line.clear();
                reader.read_line(&mut line)?;
                let body = format_get(&handler.get());
                out.write_all(body.as_bytes())?;
                Ok(())
            }
            "set=1" => {
                let mut body = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line == "\n" {
                        break;
                    }
                    body.push_str(&line);
                }
                parse_set(&body).and_then(|req| handler.set(req))
            }
            "" => continue,
            other => Err(UapiError::protocol(format!("unknown operation {other:?}"))),
        };
        let errno = match &result {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!("userspace API: {e}");
                -e.errno
            }
        };
        write!(out, "errno={errno}\n\n")?;
        if matches!(&result, Err(e) if e.errno == libc::EPROTO) {
            return Ok(());
        }
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

/// Serve the API at `path` (mode 0600), within [`LIMITS`].
pub fn serve_at(path: &Path, handler: Arc<dyn UapiHandler>) -> io::Result<UapiServer> {
    crate::io::unix::UnixServer::start(path, "isthmus-uapi", LIMITS, move |conn| {
        if let Err(e) = serve_conn(conn, &*handler) {
            tracing::debug!("userspace API connection: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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
    struct Memory(Mutex<DeviceState>);

    impl UapiHandler for Memory {
        fn get(&self) -> DeviceState {
            self.0.lock().unwrap().clone()
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
                s.peers.push(PeerState {
                    public_key: p.public_key,
                    preshared_key: p.preshared_key.flatten(),
                    endpoint: p.endpoint,
                    last_handshake: Some(UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5)),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
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
}
