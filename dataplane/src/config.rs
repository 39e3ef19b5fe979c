//! The TOML configuration file of `isthmus-dp --config FILE`. See `docs/config.md` for the
//! reference and `docs/isthmus.example.toml` for a commented example.
//!
//! Every error names the file, the line and the key (`isthmus.toml:12: peer[1].endpoint:
//! ...`), and never contains key material. Serde checks what it can — unknown keys, types,
//! enumerations and ranges, through the value types below — and [`Source`] names the key at
//! the span of its error; the loader checks the rest (parsing, uniqueness, keys that depend
//! on each other). `isthmus-cp` reads its `[babel]` section the same way, with the same
//! [`Source`] and value types.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml_edit::{Item, TableLike, Value};

use crate::fib::Via;
use crate::keys::{read_private_key_file, Key};

/// A link's class. A tunnel peer (`[[peer]] class`) is mesh or trunk: its label in metrics,
/// and the defaults of its Babel parameters in the control plane, where a plain interface
/// (`[[babel.interface]]`) may also be wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkClass {
    /// A wired LAN (control plane only: the default for Babel interfaces).
    Wired,
    /// A link inside a mesh island (the default for peers).
    #[default]
    Mesh,
    /// A trunk between islands.
    Trunk,
}

impl LinkClass {
    /// `wired`, `mesh` or `trunk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wired => "wired",
            Self::Mesh => "mesh",
            Self::Trunk => "trunk",
        }
    }
}

impl fmt::Display for LinkClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a decrypted packet that matches no route (`unrouted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unrouted {
    /// It goes to the kernel through the TUN device, as with wireguard-go (the default).
    #[default]
    Local,
    /// It is dropped, counted as `no_route`, and answered with ICMP unreachable.
    Drop,
}

impl Unrouted {
    /// `local` or `drop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Drop => "drop",
        }
    }
}

/// How the underlay is served (`backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel's UDP sockets (the default; works everywhere).
    #[default]
    Udp,
    /// AF_XDP sockets on the underlay interfaces, the kernel's UDP stack bypassed.
    Afxdp,
}

impl Backend {
    /// `udp` or `afxdp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Afxdp => "afxdp",
        }
    }
}

/// `xdp_mode`: where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native where the driver has it, else generic.
    #[default]
    Auto,
    /// In the driver.
    Native,
    /// On the generic path (any interface).
    Generic,
}

/// `xsk_mode`: how the XDP sockets are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XskModeChoice {
    /// Zero-copy where the driver has it, else copy.
    #[default]
    Auto,
    /// Zero-copy.
    Zerocopy,
    /// Copy.
    Copy,
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
    /// Also export the per-peer series under mdlayher/wireguard_exporter's names (default
    /// true), for the dashboards built on it.
    pub metrics_wireguard_exporter: bool,
    /// Clamp TCP MSS of forwarded SYNs to the tunnel MTU.
    pub mss_clamp: bool,
    /// ICMP errors sent a second, at most (0: no limit; default 1000, the kernel's
    /// `net.ipv4.icmp_msgs_per_sec`).
    pub icmp_rate: u32,
    /// ICMP errors that may go at once (default 50, the kernel's `net.ipv4.icmp_msgs_burst`).
    pub icmp_burst: u32,
    /// Peers at most, from the file and the UAPI together (default 65536).
    pub max_peers: usize,
    /// UAPI clients at once (default 32).
    pub max_uapi_clients: usize,
    /// Control-channel clients at once (default 64).
    pub max_control_clients: usize,
    /// The largest control-channel message taken from a client, in bytes (default 64 MiB).
    pub max_control_message: usize,
    /// Worker threads (default 2).
    pub threads: Option<usize>,
    /// Decrypted packets that match no route (default local).
    pub unrouted: Option<Unrouted>,
    /// Control socket path.
    pub control_socket: Option<PathBuf>,
    /// How the underlay is served.
    pub backend: Backend,
    /// AF_XDP: the underlay interfaces (empty: those of the routes to the endpoints).
    pub underlay: Vec<String>,
    /// AF_XDP: the mesh interfaces, whose neighbours (FIB next hops `via ADDR dev IF`) are
    /// reached through XSKs instead of the TUN device.
    pub mesh: Vec<String>,
    /// AF_XDP: native or generic XDP.
    pub xdp_mode: XdpModeChoice,
    /// AF_XDP: zero-copy or copy mode.
    pub xsk_mode: XskModeChoice,
    /// AF_XDP: busy-poll the queues for this many µs (0 or absent: off).
    pub busy_poll_us: Option<u32>,
    /// The user both daemons become after set-up (`--user`).
    pub user: Option<String>,
}

impl Default for InterfaceConfig {
    /// An empty `[interface]`: what the loader makes of it.
    fn default() -> Self {
        let cx = Ctx {
            src: Source::defaults(),
        };
        cx.interface(RawInterface::default())
            .expect("no key, no error")
    }
}

/// `[[peer]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The fast liveness probe (`liveness_interval`, `liveness_misses`), if on.
    pub liveness: Option<crate::forward::Liveness>,
}

impl PeerConfig {
    /// The settings a peer of this configuration gets.
    pub fn settings(&self) -> crate::tunnel::PeerSettings {
        crate::tunnel::PeerSettings {
            name: self.name.clone(),
            class: self.class,
            preshared_key: self.preshared_key,
            persistent_keepalive: self.persistent_keepalive,
            allowed_ips: self.allowed_ips.clone(),
            liveness: self.liveness,
        }
    }
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

/// An integer in `LO..=HI`; serde refuses any other with `N is out of range (LO..=HI)`.
/// It converts into each integer type the range fits (checked when compiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InRange<const LO: i64, const HI: i64>(i64);

impl<'de, const LO: i64, const HI: i64> Deserialize<'de> for InRange<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const LO: i64, const HI: i64>;
        impl<const LO: i64, const HI: i64> Visitor<'_> for V<LO, HI> {
            type Value = InRange<LO, HI>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                if !(LO..=HI).contains(&n) {
                    return Err(E::custom(format!("{n} is out of range ({LO}..={HI})")));
                }
                Ok(InRange(n))
            }
        }
        d.deserialize_i64(V)
    }
}

macro_rules! in_range_into {
    ($($t:ty),*) => {$(
        impl<const LO: i64, const HI: i64> From<InRange<LO, HI>> for $t {
            fn from(v: InRange<LO, HI>) -> $t {
                const { assert!(LO >= <$t>::MIN as i64 && HI as u64 <= <$t>::MAX as u64) };
                v.0 as $t
            }
        }
    )*};
}
in_range_into!(u8, u16, u32, usize);

/// A prefix with no host bits set (`10.1.0.0/16`); serde refuses a malformed one, and one
/// with host bits set with the prefix it was probably meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix(pub IpNet);

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        check_str(d, |s| {
            let net: IpNet = s
                .parse()
                .map_err(|_| format!("invalid prefix {s:?} (expected ADDRESS/LENGTH)"))?;
            if net.trunc() != net {
                return Err(format!(
                    "{net} has host bits set; did you mean {}?",
                    net.trunc()
                ));
            }
            Ok(Self(net))
        })
    }
}

/// A network interface name: 1-15 characters without '/' or spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfName(pub String);

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        check_str(d, |s| {
            if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
                return Err("must be 1-15 characters without '/' or spaces".into());
            }
            Ok(Self(s.to_string()))
        })
    }
}

/// Deserializes a string through `check`. The check runs inside serde's visit, where toml
/// gives its error the value's own span (an error raised after deserializing would get the
/// span of the enclosing array).
pub fn check_str<'de, D: Deserializer<'de>, T>(
    d: D,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
            (self.0)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    interface: Option<RawInterface>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    /// `[babel]` belongs to the control plane (`isthmus-cp`), which reads the same file and
    /// validates it; the data plane accepts and ignores it.
    #[serde(rename = "babel")]
    _babel: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Option<IfName>,
    private_key: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    listen_port: Option<InRange<0, 65535>>,
    fwmark: Option<InRange<0, 4_294_967_295>>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    mtu: Option<InRange<1280, 9000>>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    metrics_public: bool,
    metrics_wireguard_exporter: Option<bool>,
    mss_clamp: Option<bool>,
    icmp_rate: Option<InRange<0, 1_000_000>>,
    icmp_burst: Option<InRange<1, 1_000_000>>,
    max_peers: Option<InRange<1, 16_777_215>>,
    max_uapi_clients: Option<InRange<1, 1024>>,
    max_control_clients: Option<InRange<1, 1024>>,
    max_control_message: Option<InRange<1_048_576, 1_073_741_824>>,
    threads: Option<InRange<1, 64>>,
    unrouted: Option<Unrouted>,
    control_socket: Option<PathBuf>,
    #[serde(default)]
    backend: Backend,
    #[serde(default)]
    underlay: Vec<IfName>,
    #[serde(default)]
    mesh: Vec<IfName>,
    #[serde(default)]
    xdp_mode: XdpModeChoice,
    #[serde(default)]
    xsk_mode: XskModeChoice,
    busy_poll_us: Option<InRange<0, 1_000_000>>,
    user: Option<String>,
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
    allowed_ips: Vec<Spanned<Prefix>>,
    persistent_keepalive: Option<InRange<0, 65535>>,
    class: Option<Spanned<LinkClass>>,
    liveness_interval: Option<Spanned<f64>>,
    liveness_misses: Option<Spanned<InRange<1, 100>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Option<Prefix>,
    via: Option<Spanned<String>>,
}

/// A configuration text being validated: deserializes it, and turns spans into
/// `FILE:LINE: KEY: message` errors. Shared with `isthmus-cp`'s `[babel]` loader.
pub struct Source<'a> {
    /// The file, as errors name it.
    pub file: String,
    /// Its text.
    pub text: &'a str,
    /// Its directory: relative paths in it (key files) are relative to this.
    pub dir: PathBuf,
}

impl<'a> Source<'a> {
    /// `text`, read from `path`.
    pub fn new(path: &Path, text: &'a str) -> Self {
        Self {
            file: path.display().to_string(),
            text,
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    /// No text: the source of the defaults, which the loaders make from empty tables.
    pub fn defaults() -> Source<'static> {
        Source {
            file: "(defaults)".into(),
            text: "",
            dir: PathBuf::new(),
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

    /// The whole text as `T`. A serde error (bad syntax, an unknown key, a value of the
    /// wrong type, an unknown variant, a value a value type refuses) names the key at its
    /// span: ``babel.interface[1].class: unknown variant `wifi`, expected one of ...``.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(self.text, span.start).unwrap_or_else(|| "(syntax)".into());
            // toml's message may go on with context lines; the first says it all.
            let msg = e.message().lines().next().unwrap_or("syntax error");
            self.err(span, key, msg)
        })
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

/// The dotted path (`babel.interface[1].cost`) of the key or value at byte `pos` of a TOML
/// document, from the parser's own spans; `None` if the text does not parse.
fn key_at(text: &str, pos: usize) -> Option<String> {
    fn within(span: Option<Range<usize>>, pos: usize) -> bool {
        span.is_some_and(|s| s.contains(&pos))
    }
    /// Pushes `seg` and runs `f`; keeps `seg` only if `f` found `pos`.
    fn step(path: &mut Vec<String>, seg: String, f: impl FnOnce(&mut Vec<String>) -> bool) -> bool {
        path.push(seg);
        let hit = f(path);
        if !hit {
            path.pop();
        }
        hit
    }
    fn table(t: &dyn TableLike, pos: usize, path: &mut Vec<String>) -> bool {
        t.iter().any(|(k, _)| {
            let Some((key, v)) = t.get_key_value(k) else {
                return false;
            };
            step(path, format!(".{k}"), |path| {
                within(key.span(), pos) || item(v, pos, path)
            })
        })
    }
    fn item(it: &Item, pos: usize, path: &mut Vec<String>) -> bool {
        match it {
            Item::None => false,
            Item::Value(v) => value(v, pos, path),
            Item::Table(t) => table(t, pos, path) || within(t.span(), pos),
            Item::ArrayOfTables(a) => a.iter().enumerate().any(|(n, t)| {
                step(path, format!("[{n}]"), |path| {
                    table(t, pos, path) || within(t.span(), pos)
                })
            }),
        }
    }
    fn value(v: &Value, pos: usize, path: &mut Vec<String>) -> bool {
        let inner = match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .any(|(n, v)| step(path, format!("[{n}]"), |path| value(v, pos, path))),
            Value::InlineTable(t) => table(t, pos, path),
            _ => false,
        };
        inner || within(v.span(), pos)
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut path = Vec::new();
    table(doc.as_table(), pos, &mut path).then(|| path.concat().trim_start_matches('.').to_string())
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
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = Source<'a>;
    fn deref(&self) -> &Source<'a> {
        &self.src
    }
}

impl Ctx<'_> {
    fn key(&self, v: &Spanned<String>, key: &str) -> Result<Key, ConfigError> {
        Key::from_base64(v.get_ref()).map_err(|e| self.err(v.span(), key, e.to_string()))
    }

    fn key_file(&self, v: &Spanned<String>, key: &str) -> Result<Key, ConfigError> {
        // An absolute path replaces the directory in `join`.
        let p = self.src.dir.join(v.get_ref());
        read_private_key_file(&p).map_err(|e| self.err(v.span(), key, e.to_string()))
    }

    /// A key given inline or in a file, not both.
    fn key_or_file(
        &self,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        key: &str,
    ) -> Result<Option<Key>, ConfigError> {
        match (inline, file) {
            (Some(k), Some(_)) => Err(self.err(
                k.span(),
                key,
                format!(
                    "give {0} or {0}_file, not both",
                    key.rsplit('.').next().unwrap_or(key)
                ),
            )),
            (Some(k), None) => self.key(k, key).map(Some),
            (None, Some(f)) => self.key_file(f, &format!("{key}_file")).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn interface(&self, i: RawInterface) -> Result<InterfaceConfig, ConfigError> {
        let mut address = Vec::new();
        for (n, a) in i.address.iter().enumerate() {
            address.push(a.get_ref().parse().map_err(|_| {
                self.err(
                    a.span(),
                    format!("interface.address[{n}]"),
                    format!(
                        "invalid address {:?} (expected ADDRESS/LENGTH)",
                        a.get_ref()
                    ),
                )
            })?);
        }
        let metrics = i
            .metrics
            .as_ref()
            .map(|v| self.metrics_addr(v, "interface.metrics", i.metrics_public, "IP:PORT"));
        Ok(InterfaceConfig {
            name: i.name.map(|n| n.0),
            private_key: self.key_or_file(
                i.private_key.as_ref(),
                i.private_key_file.as_ref(),
                "interface.private_key",
            )?,
            listen_port: i.listen_port.map(Into::into),
            fwmark: i.fwmark.map(Into::into),
            address,
            mtu: i.mtu.map(Into::into),
            metrics: metrics.transpose()?,
            metrics_wireguard_exporter: i.metrics_wireguard_exporter.unwrap_or(true),
            mss_clamp: i.mss_clamp.unwrap_or(true),
            icmp_rate: i
                .icmp_rate
                .map_or(crate::forward::Settings::DEFAULT_ICMP_RATE, Into::into),
            icmp_burst: i
                .icmp_burst
                .map_or(crate::forward::Settings::DEFAULT_ICMP_BURST, Into::into),
            max_peers: (i.max_peers)
                .map_or(crate::forward::Settings::DEFAULT_MAX_PEERS, Into::into),
            max_uapi_clients: (i.max_uapi_clients)
                .map_or(crate::uapi::LIMITS.max_conns, Into::into),
            max_control_clients: (i.max_control_clients)
                .map_or(crate::ctl::server::LIMITS.max_conns, Into::into),
            max_control_message: (i.max_control_message)
                .map_or(crate::ctl::proto::MAX_MESSAGE, Into::into),
            threads: i.threads.map(Into::into),
            unrouted: i.unrouted,
            control_socket: i.control_socket,
            backend: i.backend,
            underlay: i.underlay.into_iter().map(|n| n.0).collect(),
            mesh: i.mesh.into_iter().map(|n| n.0).collect(),
            xdp_mode: i.xdp_mode,
            xsk_mode: i.xsk_mode,
            busy_poll_us: i.busy_poll_us.map(Into::into).filter(|&us: &u32| us > 0),
            user: i.user,
        })
    }

    /// `peer[n]`, given the peers before it and the device's own public key.
    fn peer(
        &self,
        n: usize,
        p: &Spanned<RawPeer>,
        before: &[PeerConfig],
        own_public: Option<Key>,
    ) -> Result<PeerConfig, ConfigError> {
        let span = p.span();
        let p = p.get_ref();
        let k = |f: &str| format!("peer[{n}].{f}");
        let Some(pk) = &p.public_key else {
            return Err(self.err(span, format!("peer[{n}]"), "public_key is required"));
        };
        let public_key = self.key(pk, &k("public_key"))?;
        if Some(public_key) == own_public {
            return Err(self.err(
                pk.span(),
                k("public_key"),
                "this is the interface's own public key",
            ));
        }
        if let Some(dup) = before.iter().position(|q| q.public_key == public_key) {
            return Err(self.err(
                pk.span(),
                k("public_key"),
                format!("same public key as peer[{dup}]"),
            ));
        }
        if let Some(nm) = &p.name {
            let s = nm.get_ref();
            if s.is_empty()
                || s.len() > 64
                || s == "local"
                || s == "blackhole"
                || s.contains(['"', '\\', '\n'])
            {
                return Err(self.err(nm.span(), k("name"), "must be 1-64 characters, not \"local\" or \"blackhole\", without quotes or backslashes"));
            }
            if let Some(dup) = before.iter().position(|q| q.name.as_deref() == Some(s)) {
                return Err(self.err(nm.span(), k("name"), format!("same name as peer[{dup}]")));
            }
        }
        // WireGuard's rule: an allowed IP belongs to one peer (setting it on another takes
        // it away), so the same prefix on two peers of a file is a mistake, not a choice.
        for (i, a) in p.allowed_ips.iter().enumerate() {
            let net = a.get_ref().0;
            if let Some((dup, q)) =
                (before.iter().enumerate()).find(|(_, q)| q.allowed_ips.contains(&net))
            {
                let other = q.name.as_ref().map_or(format!("peer[{dup}]"), |name| {
                    format!("peer[{dup}] ({name:?})")
                });
                let m = format!(
                    "{net} is also an allowed IP of {other}; an allowed IP belongs to one peer"
                );
                return Err(self.err(a.span(), k(&format!("allowed_ips[{i}]")), m));
            }
        }
        let endpoint = p.endpoint.as_ref().map(|e| {
            e.get_ref().parse::<SocketAddr>().map_err(|_| {
                let hint = if e
                    .get_ref()
                    .rsplit_once(':')
                    .is_some_and(|(h, _)| h.parse::<IpAddr>().is_err() && !h.starts_with('['))
                {
                    " (host names are not resolved: give a numeric address)"
                } else {
                    " (expected IP:PORT or [IPv6]:PORT)"
                };
                self.err(
                    e.span(),
                    k("endpoint"),
                    format!("invalid socket address {:?}{hint}", e.get_ref()),
                )
            })
        });
        let class = p
            .class
            .as_ref()
            .map_or(LinkClass::default(), |c| *c.get_ref());
        if class == LinkClass::Wired {
            let m = "a tunnel peer is \"mesh\" or \"trunk\"; \"wired\" is a Babel class only, for [[babel.interface]] and [[babel.peer]]";
            return Err(self.err(p.class.as_ref().map_or(span, Spanned::span), k("class"), m));
        }
        let liveness = match (&p.liveness_interval, &p.liveness_misses) {
            (None, None) => None,
            (None, Some(m)) => {
                let msg = "needs liveness_interval (the probe is off without it)";
                return Err(self.err(m.span(), k("liveness_misses"), msg));
            }
            (Some(i), misses) => {
                let secs = *i.get_ref();
                if !(0.01..=60.0).contains(&secs) {
                    let msg = format!("{secs} s is out of range (0.01 to 60 seconds)");
                    return Err(self.err(i.span(), k("liveness_interval"), msg));
                }
                Some(crate::forward::Liveness {
                    interval: std::time::Duration::from_micros((secs * 1e6).round() as u64),
                    misses: misses
                        .as_ref()
                        .map_or(crate::forward::Liveness::DEFAULT_MISSES, |m| {
                            u32::from(*m.get_ref())
                        }),
                })
            }
        };
        Ok(PeerConfig {
            liveness,
            name: p.name.as_ref().map(|n| n.get_ref().clone()),
            public_key,
            preshared_key: self.key_or_file(
                p.preshared_key.as_ref(),
                p.preshared_key_file.as_ref(),
                &k("preshared_key"),
            )?,
            endpoint: endpoint.transpose()?,
            allowed_ips: p.allowed_ips.iter().map(|a| a.get_ref().0).collect(),
            persistent_keepalive: p
                .persistent_keepalive
                .map(Into::into)
                .filter(|&s: &u16| s > 0),
            class,
        })
    }

    /// `route[n]`, whose `via` names one of `peers`, or a neighbour on an interface that
    /// exists now (its index is taken here, once).
    fn route(
        &self,
        n: usize,
        r: &Spanned<RawRoute>,
        peers: &[PeerConfig],
    ) -> Result<StaticRoute, ConfigError> {
        let (Some(prefix), Some(via)) = (&r.get_ref().prefix, &r.get_ref().via) else {
            return Err(self.err(
                r.span(),
                format!("route[{n}]"),
                "prefix and via are required",
            ));
        };
        let key = || format!("route[{n}].via");
        let via = match via.get_ref().as_str() {
            "local" => Via::Local,
            "blackhole" => Via::Blackhole,
            s if s.split_whitespace().nth(1) == Some("dev") => {
                let (addr, dev) = neighbour_via(s)
                    .ok_or_else(|| self.err(via.span(), key(), format!("{s:?}: expected ADDRESS dev INTERFACE (an IPv4 or IPv6 neighbour on a mesh interface)")))?;
                let ifindex = crate::io::ifaddr::ifindex(dev)
                    .map_err(|e| self.err(via.span(), key(), e.to_string()))?;
                Via::Neighbour { ifindex, addr }
            }
            name => {
                let by_name = peers.iter().find(|p| p.name.as_deref() == Some(name));
                let by_key = Key::from_base64(name)
                    .ok()
                    .and_then(|k| peers.iter().find(|p| p.public_key == k));
                let Some(p) = by_name.or(by_key) else {
                    return Err(self.err(
                        via.span(),
                        key(),
                        format!("{name:?} is not \"local\", \"blackhole\", the name or public key of a peer, or ADDRESS dev INTERFACE"),
                    ));
                };
                Via::Peer(p.public_key)
            }
        };
        Ok(StaticRoute {
            prefix: prefix.0,
            via,
        })
    }
}

/// `ADDRESS dev INTERFACE` (a route's neighbour next hop, as `ip route` writes it): the
/// address and the interface name, or `None` when `s` is not of that form.
fn neighbour_via(s: &str) -> Option<(IpAddr, &str)> {
    let mut w = s.split_whitespace();
    let (Some(addr), Some("dev"), Some(dev), None) = (w.next(), w.next(), w.next(), w.next())
    else {
        return None;
    };
    let ok =
        (1..=15).contains(&dev.len()) && !dev.contains(['/', ':']) && dev != "." && dev != "..";
    Some((addr.parse().ok()?, dev)).filter(|_| ok)
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
    };
    let raw: RawFile = cx.deserialize()?;
    let mut cfg = DeviceConfig::default();
    if let Some(i) = raw.interface {
        cfg.interface = cx.interface(i)?;
    }
    let own_public = cfg.interface.private_key.map(|k| k.public_key());
    for (n, p) in raw.peer.iter().enumerate() {
        if n == cfg.interface.max_peers {
            let m = format!(
                "more than interface.max_peers ({}) peers",
                cfg.interface.max_peers
            );
            return Err(cx.err(p.span(), format!("peer[{n}]"), m));
        }
        let peer = cx.peer(n, p, &cfg.peers, own_public)?;
        cfg.peers.push(peer);
    }
    for (n, r) in raw.route.iter().enumerate() {
        let route = cx.route(n, r, &cfg.peers)?;
        cfg.routes.push(route);
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
    fn a_route_via_a_neighbour_takes_the_interface_index() {
        let (text, _, _, _) = valid();
        let lo = crate::io::ifaddr::ifindex("lo").unwrap();
        let c =
            parse_str(&text.replace("via = \"blackhole\"", "via = \"10.9.0.2 dev lo\"")).unwrap();
        assert_eq!(
            c.routes[1].via,
            Via::Neighbour {
                ifindex: lo,
                addr: "10.9.0.2".parse().unwrap()
            }
        );
        let c = parse_str(&text.replace("via = \"blackhole\"", "via = \"  fe80::1  dev lo \""))
            .unwrap();
        assert_eq!(
            c.routes[1].via,
            Via::Neighbour {
                ifindex: lo,
                addr: "fe80::1".parse().unwrap()
            }
        );
        for bad in [
            "10.9.0.x dev lo",
            "10.9.0.2 dev",
            "10.9.0.2 dev lo extra",
            "10.9.0.2 dev a/b",
            "10.9.0.2 dev averyveryverylongname",
        ] {
            let e = err_of(&text.replace("via = \"blackhole\"", &format!("via = {bad:?}")));
            assert_eq!((e.line, e.key.as_str()), (30, "route[1].via"), "{e}");
            assert!(e.message.contains("expected ADDRESS dev INTERFACE"), "{e}");
        }
        let e = err_of(&text.replace(
            "via = \"blackhole\"",
            "via = \"10.9.0.2 dev isthmus-nope9\"",
        ));
        assert_eq!((e.line, e.key.as_str()), (30, "route[1].via"), "{e}");
        assert!(e.message.contains("interface isthmus-nope9"), "{e}");
    }

    #[test]
    fn liveness_probe_keys() {
        let (text, _, _, _) = valid();
        let c = parse_str(&text).unwrap();
        assert_eq!(c.peers[0].liveness, None);
        let on = text.replace(
            "class = \"trunk\"",
            "class = \"trunk\"\nliveness_interval = 0.1\nliveness_misses = 2",
        );
        let c = parse_str(&on).unwrap();
        assert_eq!(
            c.peers[0].liveness,
            Some(crate::forward::Liveness {
                interval: std::time::Duration::from_millis(100),
                misses: 2
            })
        );
        let default_misses = text.replace(
            "class = \"trunk\"",
            "class = \"trunk\"\nliveness_interval = 1",
        );
        let l = parse_str(&default_misses).unwrap().peers[0]
            .liveness
            .unwrap();
        assert_eq!(l.misses, crate::forward::Liveness::DEFAULT_MISSES);
        assert_eq!(l.interval, std::time::Duration::from_secs(1));
        for (extra, key, msg) in [
            (
                "liveness_interval = 0.001",
                "peer[0].liveness_interval",
                "out of range",
            ),
            (
                "liveness_interval = 61",
                "peer[0].liveness_interval",
                "out of range",
            ),
            (
                "liveness_misses = 2",
                "peer[0].liveness_misses",
                "needs liveness_interval",
            ),
            (
                "liveness_interval = 0.1\nliveness_misses = 0",
                "peer[0].liveness_misses",
                "out of range",
            ),
        ] {
            let bad = text.replace("class = \"trunk\"", &format!("class = \"trunk\"\n{extra}"));
            let e = err_of(&bad);
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(e.to_string().contains(msg), "{extra}: {e}");
            assert!(e.line >= 17, "{extra}: {e}");
        }
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

        // One prefix on two peers: refused at the second, naming the first.
        let e = err_of(&text.replace(
            "allowed_ips = [\"10.0.5.0/24\", \"fd00:5::/64\"]",
            "allowed_ips = [\"10.0.5.0/24\", \"10.1.0.0/16\"]",
        ));
        assert!(e.key.ends_with(".allowed_ips[1]"), "{e}");
        assert!(
            e.message
                .contains("10.1.0.0/16 is also an allowed IP of peer[0]"),
            "{e}"
        );

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
        assert!(
            e.message
                .contains("unknown variant `backbone`, expected one of `wired`, `mesh`, `trunk`"),
            "{e}"
        );
        let e = err_of(&text.replace("class = \"trunk\"", "class = \"wired\""));
        assert_eq!((e.line, e.key.as_str()), (16, "peer[0].class"));
        assert!(e.message.contains("\"mesh\" or \"trunk\""), "{e}");

        let e = err_of(&text.replace("name = \"mesh-a\"", "name = \"trunk-north\""));
        assert_eq!((e.line, e.key.as_str()), (19, "peer[1].name"));
        assert!(e.message.contains("peer[0]"));

        let e = err_of(&text.replace("threads = 2", "threads = 2\ncolour = \"blue\""));
        assert_eq!((e.line, e.key.as_str()), (9, "interface.colour"), "{e}");
        assert!(e.message.starts_with("unknown field `colour`"), "{e}");

        let e = err_of(&text.replace("threads = 2", "threads = 2\nunrouted = \"sometimes\""));
        assert_eq!((e.line, e.key.as_str()), (9, "interface.unrouted"), "{e}");
        assert!(
            e.message
                .contains("unknown variant `sometimes`, expected `local` or `drop`"),
            "{e}"
        );
        let c = parse_str(&text.replace("threads = 2", "threads = 2\nunrouted = \"drop\""));
        assert_eq!(c.unwrap().interface.unrouted, Some(Unrouted::Drop));

        let e = err_of(&text.replace("mtu = 1420", "mtu = 1420 1420"));
        assert_eq!((e.line, e.key.as_str()), (6, "(syntax)"), "{e}");

        let e = err_of(&text.replace("private_key = ", "private_key_file = \"k\"\nprivate_key = "));
        assert_eq!(e.key, "interface.private_key");
        let e = err_of(&text.replace(&own.to_base64(), "bm90IGEga2V5"));
        assert_eq!((e.line, e.key.as_str()), (3, "interface.private_key"));
    }

    #[test]
    fn icmp_rate_limit_keys() {
        let (text, _, _, _) = valid();
        let c = parse_str(&text).unwrap();
        assert_eq!((c.interface.icmp_rate, c.interface.icmp_burst), (1000, 50));
        let c =
            parse_str(&text.replace("threads = 2", "threads = 2\nicmp_rate = 0\nicmp_burst = 5"))
                .unwrap();
        assert_eq!((c.interface.icmp_rate, c.interface.icmp_burst), (0, 5));
        for (extra, key) in [
            ("icmp_rate = -1", "interface.icmp_rate"),
            ("icmp_rate = 1000001", "interface.icmp_rate"),
            ("icmp_burst = 0", "interface.icmp_burst"),
            ("icmp_burst = \"many\"", "interface.icmp_burst"),
        ] {
            let e = err_of(&text.replace("threads = 2", &format!("threads = 2\n{extra}")));
            assert_eq!((e.line, e.key.as_str()), (9, key), "{extra}: {e}");
        }
    }

    #[test]
    fn bound_keys_have_defaults_and_ranges() {
        let (text, _, _, _) = valid();
        let i = parse_str(&text).unwrap().interface;
        assert_eq!(
            (
                i.max_peers,
                i.max_uapi_clients,
                i.max_control_clients,
                i.max_control_message
            ),
            (65536, 32, 64, 64 << 20)
        );
        let set = "threads = 2\nmax_peers = 2\nmax_uapi_clients = 4\nmax_control_clients = 5\n\
                   max_control_message = 1048576";
        let i = parse_str(&text.replace("threads = 2", set))
            .unwrap()
            .interface;
        assert_eq!(
            (
                i.max_peers,
                i.max_uapi_clients,
                i.max_control_clients,
                i.max_control_message
            ),
            (2, 4, 5, 1 << 20)
        );
        for (extra, key) in [
            ("max_peers = 0", "interface.max_peers"),
            ("max_peers = 16777216", "interface.max_peers"),
            ("max_uapi_clients = 0", "interface.max_uapi_clients"),
            (
                "max_control_clients = 2000",
                "interface.max_control_clients",
            ),
            (
                "max_control_message = 1000",
                "interface.max_control_message",
            ),
        ] {
            let e = err_of(&text.replace("threads = 2", &format!("threads = 2\n{extra}")));
            assert_eq!((e.line, e.key.as_str()), (9, key), "{extra}: {e}");
        }
        // A file with more peers than max_peers is refused at the first one too many.
        let e = err_of(&text.replace("threads = 2", "threads = 2\nmax_peers = 1"));
        assert_eq!(e.key, "peer[1]", "{e}");
        assert!(e.message.contains("max_peers (1)"), "{e}");
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
        // Its bounds are the defaults, written out.
        let default = InterfaceConfig::default();
        let bounds = |i: &InterfaceConfig| {
            let b = (i.max_peers, i.max_uapi_clients);
            (b, i.max_control_clients, i.max_control_message)
        };
        assert_eq!(bounds(&c.interface), bounds(&default));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
