//! The TOML configuration file of `isthmus-dp --config FILE`. See `docs/config.md` for the
//! reference and `docs/isthmus.example.toml` for a commented example.
//!
//! Every error names the file, the line and the key (`isthmus.toml:12: peer[1].endpoint:
//! ...`), and never contains key material.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::fib::Via;
use toml::Spanned;

use crate::keys::{read_private_key_file, Key};

/// Role of a peer's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkClass {
    /// A link inside a mesh island.
    #[default]
    Mesh,
    /// A trunk between islands.
    Trunk,
}

impl LinkClass {
    /// `mesh` or `trunk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mesh => "mesh",
            Self::Trunk => "trunk",
        }
    }
}

/// A whole, validated device configuration.
#[derive(Debug, Clone, Default)]
pub struct DeviceConfig {
    /// `[interface]`.
    pub interface: InterfaceConfig,
    /// `[[peer]]`.
    pub peers: Vec<PeerConfig>,
    /// `[[route]]`: static routes on top of allowed-IPs.
    pub routes: Vec<StaticRoute>,
}

/// `[interface]`.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    /// TUN device name.
    pub name: Option<String>,
    /// Private key (from `private_key` or `private_key_file`).
    pub private_key: Option<Key>,
    /// UDP listen port; random when absent.
    pub listen_port: Option<u16>,
    /// fwmark on the UDP socket.
    pub fwmark: Option<u32>,
    /// Addresses to put on the TUN device.
    pub address: Vec<IpNet>,
    /// TUN MTU (default 1420).
    pub mtu: Option<u16>,
    /// Prometheus listen address (default 127.0.0.1:9586).
    pub metrics: Option<SocketAddr>,
    /// Clamp TCP MSS of forwarded SYNs to the tunnel MTU.
    pub mss_clamp: bool,
    /// Worker threads (default 2).
    pub threads: Option<usize>,
    /// Decrypted packets that match no route: "local" or "drop".
    pub unrouted: Option<String>,
    /// Control socket path.
    pub control_socket: Option<PathBuf>,
}

impl Default for InterfaceConfig {
    fn default() -> Self {
        Self {
            name: None,
            private_key: None,
            listen_port: None,
            fwmark: None,
            address: Vec::new(),
            mtu: None,
            metrics: None,
            mss_clamp: true,
            threads: None,
            unrouted: None,
            control_socket: None,
        }
    }
}

/// `[[peer]]`.
#[derive(Debug, Clone, Default)]
pub struct PeerConfig {
    /// Human name, used in metrics and `isthmusctl`.
    pub name: Option<String>,
    /// Public key.
    pub public_key: Key,
    /// Preshared key.
    pub preshared_key: Option<Key>,
    /// Endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs: source filter and routes to this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
    /// Link class.
    pub class: LinkClass,
}

/// `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination prefix.
    pub prefix: IpNet,
    /// Next hop.
    pub via: Via,
}

/// A configuration error: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Key path, e.g. `peer[1].endpoint`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    interface: Option<Spanned<RawInterface>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    /// `[babel]` belongs to the control plane (`isthmus-cp`), which reads the same file and
    /// validates it; the data plane accepts and ignores it.
    #[serde(rename = "babel")]
    _babel: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Option<Spanned<String>>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    listen_port: Option<Spanned<i64>>,
    fwmark: Option<Spanned<i64>>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    metrics: Option<Spanned<String>>,
    metrics_public: Option<Spanned<bool>>,
    mss_clamp: Option<Spanned<bool>>,
    threads: Option<Spanned<i64>>,
    unrouted: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
    preshared_key: Option<Spanned<String>>,
    preshared_key_file: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    #[serde(default)]
    allowed_ips: Vec<Spanned<String>>,
    persistent_keepalive: Option<Spanned<i64>>,
    class: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Option<Spanned<String>>,
    via: Option<Spanned<String>>,
}

/// A configuration text being validated: turns spans into `FILE:LINE: KEY: message` errors
/// and checks the values both daemons read. Shared with `isthmus-cp`'s `[babel]` parser.
pub struct Source<'a> {
    /// The file, as errors name it.
    pub file: String,
    /// Its text.
    pub text: &'a str,
}

impl<'a> Source<'a> {
    /// `text`, read from `path`.
    pub fn new(path: &Path, text: &'a str) -> Self {
        Self {
            file: path.display().to_string(),
            text,
        }
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// An error at `span`.
    pub fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line(span),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A prefix with no host bits set.
    pub fn prefix(&self, v: &Spanned<String>, key: &str) -> Result<IpNet, ConfigError> {
        let net: IpNet = v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!("invalid prefix {:?} (expected ADDRESS/LENGTH)", v.get_ref()),
            )
        })?;
        if net.trunc() != net {
            return Err(self.err(
                v.span(),
                key,
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        Ok(net)
    }

    /// A metrics address: `IP:PORT`, on loopback unless `public`. `expected` describes the
    /// accepted spellings in the error.
    pub fn metrics_addr(
        &self,
        v: &Spanned<String>,
        key: &str,
        public: bool,
        expected: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let a: SocketAddr = v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "invalid socket address {:?} (expected {expected})",
                    v.get_ref()
                ),
            )
        })?;
        if !a.ip().is_loopback() && !public {
            return Err(self.err(
                v.span(),
                key,
                format!("{a} is not a loopback address; set metrics_public = true to expose metrics beyond this host"),
            ));
        }
        Ok(a)
    }
}

/// Reads a configuration file; a failure is an error naming the file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        key: "(file)".into(),
        message: e.to_string(),
    })
}

struct Ctx<'a> {
    src: Source<'a>,
    dir: PathBuf,
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = Source<'a>;
    fn deref(&self) -> &Source<'a> {
        &self.src
    }
}

impl Ctx<'_> {
    fn int<T: TryFrom<i64>>(
        &self,
        v: &Spanned<i64>,
        key: &str,
        range: Range<i64>,
    ) -> Result<T, ConfigError> {
        let n = *v.get_ref();
        if !range.contains(&n) {
            return Err(self.err(
                v.span(),
                key,
                format!("{n} is out of range ({}..={})", range.start, range.end - 1),
            ));
        }
        T::try_from(n).map_err(|_| self.err(v.span(), key, format!("{n} is out of range")))
    }

    fn key(&self, v: &Spanned<String>, key: &str) -> Result<Key, ConfigError> {
        Key::from_base64(v.get_ref()).map_err(|e| self.err(v.span(), key, e.to_string()))
    }

    fn key_file(&self, v: &Spanned<String>, key: &str) -> Result<Key, ConfigError> {
        let p = Path::new(v.get_ref());
        let p = if p.is_relative() {
            self.dir.join(p)
        } else {
            p.to_path_buf()
        };
        read_private_key_file(&p).map_err(|e| self.err(v.span(), key, e.to_string()))
    }
}

/// Load and validate a configuration file.
pub fn load(path: &Path) -> Result<DeviceConfig, ConfigError> {
    parse(&read(path)?, path)
}

/// Parse and validate configuration text; `path` names it in errors and anchors relative
/// key-file paths.
pub fn parse(text: &str, path: &Path) -> Result<DeviceConfig, ConfigError> {
    let cx = Ctx {
        src: Source::new(path, text),
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        // The message names the unknown or invalid key; keep its first line.
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("syntax error")
            .to_string();
        let key = text
            .get(span.clone())
            .filter(|s| !s.contains('\n') && s.len() < 64)
            .unwrap_or("(syntax)");
        cx.err(span, key.trim().to_string(), msg)
    })?;

    let mut cfg = DeviceConfig::default();
    if let Some(iface) = &raw.interface {
        let i = iface.get_ref();
        let c = &mut cfg.interface;
        if let Some(n) = &i.name {
            let ok = !n.get_ref().is_empty()
                && n.get_ref().len() < 16
                && !n.get_ref().contains(['/', ' ']);
            if !ok {
                return Err(cx.err(
                    n.span(),
                    "interface.name",
                    "must be 1-15 characters without '/' or spaces",
                ));
            }
            c.name = Some(n.get_ref().clone());
        }
        match (&i.private_key, &i.private_key_file) {
            (Some(k), Some(_)) => {
                return Err(cx.err(
                    k.span(),
                    "interface.private_key",
                    "give private_key or private_key_file, not both",
                ));
            }
            (Some(k), None) => c.private_key = Some(cx.key(k, "interface.private_key")?),
            (None, Some(f)) => c.private_key = Some(cx.key_file(f, "interface.private_key_file")?),
            (None, None) => {}
        }
        if let Some(v) = &i.listen_port {
            c.listen_port = Some(cx.int(v, "interface.listen_port", 0..65536)?);
        }
        if let Some(v) = &i.fwmark {
            c.fwmark = Some(cx.int(v, "interface.fwmark", 0..(1 << 32))?);
        }
        for (n, a) in i.address.iter().enumerate() {
            let net: IpNet = a.get_ref().parse().map_err(|_| {
                cx.err(
                    a.span(),
                    format!("interface.address[{n}]"),
                    format!(
                        "invalid address {:?} (expected ADDRESS/LENGTH)",
                        a.get_ref()
                    ),
                )
            })?;
            c.address.push(net);
        }
        if let Some(v) = &i.mtu {
            c.mtu = Some(cx.int(v, "interface.mtu", 1280..9001)?);
        }
        if let Some(v) = &i.metrics {
            let public = i.metrics_public.as_ref().is_some_and(|p| *p.get_ref());
            c.metrics = Some(cx.metrics_addr(v, "interface.metrics", public, "IP:PORT")?);
        }
        if let Some(v) = &i.mss_clamp {
            c.mss_clamp = *v.get_ref();
        }
        if let Some(v) = &i.threads {
            c.threads = Some(cx.int(v, "interface.threads", 1..65)?);
        }
        if let Some(v) = &i.unrouted {
            if !matches!(v.get_ref().as_str(), "local" | "drop") {
                return Err(cx.err(
                    v.span(),
                    "interface.unrouted",
                    format!("expected \"local\" or \"drop\", got {:?}", v.get_ref()),
                ));
            }
            c.unrouted = Some(v.get_ref().clone());
        }
        c.control_socket = i
            .control_socket
            .as_ref()
            .map(|s| PathBuf::from(s.get_ref()));
    }
    let own_public = cfg.interface.private_key.map(|k| k.public_key());

    for (n, p) in raw.peer.iter().enumerate() {
        let span = p.span();
        let p = p.get_ref();
        let k = |f: &str| format!("peer[{n}].{f}");
        let Some(pk) = &p.public_key else {
            return Err(cx.err(span, format!("peer[{n}]"), "public_key is required"));
        };
        let public_key = cx.key(pk, &k("public_key"))?;
        if Some(public_key) == own_public {
            return Err(cx.err(
                pk.span(),
                k("public_key"),
                "this is the interface's own public key",
            ));
        }
        if let Some(dup) = cfg.peers.iter().position(|q| q.public_key == public_key) {
            return Err(cx.err(
                pk.span(),
                k("public_key"),
                format!("same public key as peer[{dup}]"),
            ));
        }
        let name = match &p.name {
            Some(nm) => {
                let s = nm.get_ref();
                if s.is_empty()
                    || s.len() > 64
                    || s == "local"
                    || s == "blackhole"
                    || s.contains(['"', '\\', '\n'])
                {
                    return Err(cx.err(nm.span(), k("name"), "must be 1-64 characters, not \"local\" or \"blackhole\", without quotes or backslashes"));
                }
                if let Some(dup) = cfg.peers.iter().position(|q| q.name.as_deref() == Some(s)) {
                    return Err(cx.err(nm.span(), k("name"), format!("same name as peer[{dup}]")));
                }
                Some(s.clone())
            }
            None => None,
        };
        let preshared_key = match (&p.preshared_key, &p.preshared_key_file) {
            (Some(v), Some(_)) => {
                return Err(cx.err(
                    v.span(),
                    k("preshared_key"),
                    "give preshared_key or preshared_key_file, not both",
                ))
            }
            (Some(v), None) => Some(cx.key(v, &k("preshared_key"))?),
            (None, Some(f)) => Some(cx.key_file(f, &k("preshared_key_file"))?),
            (None, None) => None,
        };
        let endpoint = match &p.endpoint {
            Some(e) => Some(e.get_ref().parse::<SocketAddr>().map_err(|_| {
                let hint = if e
                    .get_ref()
                    .rsplit_once(':')
                    .is_some_and(|(h, _)| h.parse::<IpAddr>().is_err() && !h.starts_with('['))
                {
                    " (host names are not resolved: give a numeric address)"
                } else {
                    " (expected IP:PORT or [IPv6]:PORT)"
                };
                cx.err(
                    e.span(),
                    k("endpoint"),
                    format!("invalid socket address {:?}{hint}", e.get_ref()),
                )
            })?),
            None => None,
        };
        let mut allowed_ips = Vec::new();
        for (j, a) in p.allowed_ips.iter().enumerate() {
            allowed_ips.push(cx.prefix(a, &k(&format!("allowed_ips[{j}]")))?);
        }
        let persistent_keepalive = match &p.persistent_keepalive {
            Some(v) => {
                Some(cx.int(v, &k("persistent_keepalive"), 0..65536)?).filter(|&s: &u16| s > 0)
            }
            None => None,
        };
        let class = match &p.class {
            None => LinkClass::Mesh,
            Some(c) => match c.get_ref().as_str() {
                "mesh" => LinkClass::Mesh,
                "trunk" => LinkClass::Trunk,
                other => {
                    return Err(cx.err(
                        c.span(),
                        k("class"),
                        format!("expected \"mesh\" or \"trunk\", got {other:?}"),
                    ))
                }
            },
        };
        cfg.peers.push(PeerConfig {
            name,
            public_key,
            preshared_key,
            endpoint,
            allowed_ips,
            persistent_keepalive,
            class,
        });
    }

    for (n, r) in raw.route.iter().enumerate() {
        let span = r.span();
        let r = r.get_ref();
        let (Some(prefix), Some(via)) = (&r.prefix, &r.via) else {
            return Err(cx.err(span, format!("route[{n}]"), "prefix and via are required"));
        };
        let prefix = cx.prefix(prefix, &format!("route[{n}].prefix"))?;
        let via = match via.get_ref().as_str() {
            "local" => Via::Local,
            "blackhole" => Via::Blackhole,
            name => {
                let by_name = cfg.peers.iter().find(|p| p.name.as_deref() == Some(name));
                let by_key = Key::from_base64(name)
                    .ok()
                    .and_then(|k| cfg.peers.iter().find(|p| p.public_key == k));
                match by_name.or(by_key) {
                    Some(p) => Via::Peer(p.public_key),
                    None => {
                        return Err(cx.err(
                            via.span(),
                            format!("route[{n}].via"),
                            format!("{name:?} is not \"local\", \"blackhole\", or the name or public key of a peer"),
                        ))
                    }
                }
            }
        };
        cfg.routes.push(StaticRoute { prefix, via });
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn keys() -> (Key, Key, Key) {
        (
            Key::generate_private(),
            Key::generate_private().public_key(),
            Key::generate_private().public_key(),
        )
    }

    fn parse_str(text: &str) -> Result<DeviceConfig, ConfigError> {
        parse(text, Path::new("/etc/isthmus/gw.toml"))
    }

    fn err_of(text: &str) -> ConfigError {
        parse_str(text).expect_err("config should be rejected")
    }

    fn valid() -> (String, Key, Key, Key) {
        let (own, a, b) = keys();
        let text = format!(
            r#"[interface]
name = "isthmus0"
private_key = "{}"
listen_port = 51820
address = ["10.0.0.1/24", "fd00::1/64"]
mtu = 1420
metrics = "127.0.0.1:9586"
threads = 2

[[peer]]
name = "trunk-north"
public_key = "{}"
endpoint = "192.0.2.1:51820"
allowed_ips = ["10.1.0.0/16"]
persistent_keepalive = 25
class = "trunk"

[[peer]]
name = "mesh-a"
public_key = "{}"
endpoint = "[2001:db8::1]:51820"
allowed_ips = ["10.0.5.0/24", "fd00:5::/64"]

[[route]]
prefix = "10.2.0.0/16"
via = "trunk-north"

[[route]]
prefix = "192.0.2.128/25"
via = "blackhole"
"#,
            own.to_base64(),
            a.to_base64(),
            b.to_base64()
        );
        (text, own, a, b)
    }

    #[test]
    fn a_full_config_parses() {
        let (text, own, a, b) = valid();
        let c = parse_str(&text).unwrap();
        assert_eq!(c.interface.private_key, Some(own));
        assert_eq!(c.interface.listen_port, Some(51820));
        assert_eq!(c.interface.address.len(), 2);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].class, LinkClass::Trunk);
        assert_eq!(c.peers[0].persistent_keepalive, Some(25));
        assert_eq!(c.peers[1].public_key, b);
        assert_eq!(c.peers[1].endpoint.unwrap().port(), 51820);
        assert_eq!(
            c.routes[0],
            StaticRoute {
                prefix: "10.2.0.0/16".parse().unwrap(),
                via: Via::Peer(a)
            }
        );
        assert_eq!(c.routes[1].via, Via::Blackhole);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let (text, own, _, _) = valid();
        let bad = text.replace("endpoint = \"192.0.2.1:51820\"", "endpoint = \"192.0.2.1\"");
        let e = err_of(&bad);
        assert_eq!((e.line, e.key.as_str()), (13, "peer[0].endpoint"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/isthmus/gw.toml:13: peer[0].endpoint: invalid socket address"),
            "{e}"
        );
        assert!(!e.to_string().contains(&own.to_base64()));

        let e = err_of(&text.replace(
            "endpoint = \"192.0.2.1:51820\"",
            "endpoint = \"gw.example.net:51820\"",
        ));
        assert!(e.message.contains("host names are not resolved"), "{e}");

        let e = err_of(&text.replace(
            "allowed_ips = [\"10.1.0.0/16\"]",
            "allowed_ips = [\"10.1.0.1/16\"]",
        ));
        assert_eq!((e.line, e.key.as_str()), (14, "peer[0].allowed_ips[0]"));
        assert!(e.message.contains("did you mean 10.1.0.0/16"), "{e}");

        let e = err_of(&text.replace("via = \"trunk-north\"", "via = \"trunk-south\""));
        assert_eq!((e.line, e.key.as_str()), (26, "route[0].via"), "{e}");

        let e = err_of(&text.replace("mtu = 1420", "mtu = 576"));
        assert_eq!((e.line, e.key.as_str()), (6, "interface.mtu"));

        let e = err_of(&text.replace("threads = 2", "threads = 0"));
        assert_eq!(e.key, "interface.threads");

        let e = err_of(&text.replace("listen_port = 51820", "listen_port = 70000"));
        assert_eq!((e.line, e.key.as_str()), (4, "interface.listen_port"));

        let e = err_of(&text.replace("metrics = \"127.0.0.1:9586\"", "metrics = \"0.0.0.0:9586\""));
        assert!(e.message.contains("metrics_public"), "{e}");
        assert!(parse_str(&text.replace(
            "metrics = \"127.0.0.1:9586\"",
            "metrics = \"0.0.0.0:9586\"\nmetrics_public = true"
        ))
        .is_ok());

        let e = err_of(&text.replace("class = \"trunk\"", "class = \"backbone\""));
        assert_eq!((e.line, e.key.as_str()), (16, "peer[0].class"));

        let e = err_of(&text.replace("name = \"mesh-a\"", "name = \"trunk-north\""));
        assert_eq!((e.line, e.key.as_str()), (19, "peer[1].name"));
        assert!(e.message.contains("peer[0]"));

        let e = err_of(&text.replace("threads = 2", "threads = 2\ncolour = \"blue\""));
        assert_eq!(e.line, 9, "{e}");
        assert!(e.message.contains("colour"), "{e}");

        let e = err_of(&text.replace("mtu = 1420", "mtu = 1420 1420"));
        assert_eq!(e.line, 6, "{e}");

        let e = err_of(&text.replace("private_key = ", "private_key_file = \"k\"\nprivate_key = "));
        assert_eq!(e.key, "interface.private_key");
        let e = err_of(&text.replace(&own.to_base64(), "bm90IGEga2V5"));
        assert_eq!((e.line, e.key.as_str()), (3, "interface.private_key"));
    }

    #[test]
    fn a_babel_section_is_ignored() {
        let (text, _, _, _) = valid();
        let with = format!("{text}\n[babel]\nrouter_id = \"02:00:00:00:00:00:00:01\"\n\n[[babel.interface]]\nname = \"eth1\"\nanything = [1, 2]\n");
        let c = parse_str(&with).unwrap();
        assert_eq!(c.peers.len(), 2);
        // Other unknown top-level tables are still refused.
        let e = err_of(&format!("{text}\n[bable]\nrouter_id = 1\n"));
        assert!(e.message.contains("bable"), "{e}");
    }

    #[test]
    fn duplicate_and_own_keys_are_refused() {
        let (text, own, a, b) = valid();
        let e = err_of(&text.replace(&b.to_base64(), &a.to_base64()));
        assert_eq!((e.line, e.key.as_str()), (20, "peer[1].public_key"), "{e}");
        let e = err_of(&text.replace(&b.to_base64(), &own.public_key().to_base64()));
        assert!(e.message.contains("own public key"), "{e}");
    }

    #[test]
    fn key_files_are_relative_to_the_config_and_permission_checked() {
        let dir = std::env::temp_dir().join(format!("isthmus-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = Key::generate_private();
        let f = dir.join("private.key");
        std::fs::write(&f, k.to_base64()).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let cfg_path = dir.join("gw.toml");
        std::fs::write(
            &cfg_path,
            "[interface]\nprivate_key_file = \"private.key\"\n",
        )
        .unwrap();
        let e = load(&cfg_path).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "interface.private_key_file"));
        assert!(e.message.contains("0640"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&cfg_path).unwrap().interface.private_key, Some(k));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../docs/isthmus.example.toml");
        let dir = std::env::temp_dir().join(format!("isthmus-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("private.key");
        std::fs::write(&f, Key::generate_private().to_base64()).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(text, &dir.join("isthmus.toml")).unwrap();
        assert!(c.peers.len() >= 3);
        assert!(c.peers.iter().any(|p| p.class == LinkClass::Trunk));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
