//! The configuration of `isthmus-cp`: the data plane's file (`docs/config.md`), read whole by
//! the data plane's loader, plus its `[babel]` section, read here.
//!
//! Errors in `[babel]` look like the data plane's, from the same [`Source`]:
//!
//! ```text
//! gw.toml:31: babel.interface[0].class: unknown variant `wifi`, expected one of `wired`, `mesh`, `trunk`
//! ```
//!
//! Serde checks keys, types, enumerations and ranges; [`parse`] checks what depends on
//! other keys or on the data plane's part of the file.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use isthmus_dataplane::config::{
    check_str, ConfigError, DeviceConfig, IfName, InRange, Prefix, Source,
};
use isthmus_dataplane::keys::{decode_hex, read_secret_file, Key};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::babel::link::{link_params, MAX_INTERVAL};
pub use crate::babel::{Algorithm, Limits, MacKey};
pub use crate::babel::{CostModel, LinkClass, LinkOverrides, LinkParams};

/// The whole configuration of `isthmus-cp`.
#[derive(Debug, Clone)]
pub struct CpConfig {
    /// Everything but `[babel]`, as the data plane reads it.
    pub device: DeviceConfig,
    /// `[babel]`.
    pub babel: BabelConfig,
    /// The file it came from.
    pub path: PathBuf,
}

/// `[babel]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BabelConfig {
    /// `router_id = "02:00:00:00:00:00:00:01"`; `None`: the daemon derives one.
    pub router_id: Option<[u8; 8]>,
    /// Where `isthmusctl` talks to `isthmus-cp`; `None`: the daemon's default.
    pub control_socket: Option<PathBuf>,
    /// Prometheus endpoint; `None`: the daemon's default (unless `metrics_off`).
    pub metrics: Option<SocketAddr>,
    /// `metrics = "off"`: no metrics endpoint.
    pub metrics_off: bool,
    /// Install selected routes in the kernel (default true).
    pub kernel_routes: bool,
    /// Kernel routing table for them (default 254, `main`).
    pub kernel_table: u32,
    /// Retract our routes (announce them unreachable) when shutting down (default false).
    pub retract_on_shutdown: bool,
    /// Prefixes this gateway announces.
    pub originate: Vec<IpNet>,
    /// What to do with default routes.
    pub default_route: DefaultRoute,
    /// Our IPv4 next hop on tunnel-peer links.
    pub ipv4_next_hop: Option<Ipv4Addr>,
    /// Our link-local address on tunnel-peer links (within fe80::/10).
    pub link_local: Option<Ipv6Addr>,
    /// Per-class link parameters: built-in defaults overridden by `[babel.wired]`,
    /// `[babel.mesh]` and `[babel.trunk]`.
    pub classes: LinkClasses,
    /// `[[babel.interface]]`: plain interfaces Babel runs on by multicast.
    pub interfaces: Vec<BabelInterface>,
    /// Every `[[peer]]` of the file as a Babel link, in file order, with its
    /// `[[babel.peer]]` settings applied.
    pub peers: Vec<BabelPeer>,
    /// `[[babel.filter]]`, in order; the first match wins.
    pub filters: Vec<Filter>,
    /// `[[babel.key]]`: the MAC keys (RFC 8967) links may name, read from their files.
    pub keys: Vec<MacKey>,
    /// `max_neighbours`, `max_neighbours_per_link`, `max_routes`, `max_sources`,
    /// `max_pending_requests`, `max_resend`: the bounds of the router's tables.
    pub limits: Limits,
    /// `max_status_clients`: `isthmusctl` connections served at once (default 16).
    pub max_status_clients: usize,
}

/// Default of [`BabelConfig::max_status_clients`].
pub const MAX_STATUS_CLIENTS: usize = 16;

impl BabelConfig {
    /// The first filter matching a route, if any.
    pub fn first_filter(&self, dir: Direction, link: &str, prefix: &IpNet) -> Option<&Filter> {
        self.filters.iter().find(|f| f.matches(dir, link, prefix))
    }
}

/// `default_route`: what happens to 0.0.0.0/0 and ::/0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRoute {
    /// Learned default routes are filtered (the default).
    #[default]
    Ignore,
    /// Learned default routes are accepted like any other route.
    Accept,
    /// This gateway announces default routes (and ignores learned ones).
    Originate,
}

/// Link parameters of each class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClasses {
    /// `[babel.wired]`.
    pub wired: LinkParams,
    /// `[babel.mesh]`.
    pub mesh: LinkParams,
    /// `[babel.trunk]`.
    pub trunk: LinkParams,
}

impl Default for LinkClasses {
    fn default() -> Self {
        Self {
            wired: LinkParams::for_class(LinkClass::Wired),
            mesh: LinkParams::for_class(LinkClass::Mesh),
            trunk: LinkParams::for_class(LinkClass::Trunk),
        }
    }
}

impl LinkClasses {
    /// The parameters of one class.
    pub fn get(&self, class: LinkClass) -> &LinkParams {
        match class {
            LinkClass::Wired => &self.wired,
            LinkClass::Mesh => &self.mesh,
            LinkClass::Trunk => &self.trunk,
        }
    }
}

/// `[[babel.interface]]`: a plain interface Babel runs on by multicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BabelInterface {
    /// Kernel interface name.
    pub name: String,
    /// Its class (default wired).
    pub class: LinkClass,
    /// Its parameters: the class's, with this interface's overrides.
    pub params: LinkParams,
    /// `keys`: the MAC keys of its packets (none: Babel without authentication).
    pub keys: Vec<MacKey>,
}

/// A tunnel peer as a Babel link: a `[[peer]]`, with its `[[babel.peer]]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BabelPeer {
    /// The peer's `name`, or, for a peer without one, the first 8 characters of its public
    /// key (as the data plane labels it).
    pub name: String,
    /// The peer's public key.
    pub public_key: Key,
    /// `enabled = false` keeps Babel off this link (default true).
    pub enabled: bool,
    /// Its class: `[[babel.peer]] class`, else the `[[peer]]` class (mesh or trunk).
    pub class: LinkClass,
    /// Its parameters: the class's, with this peer's overrides.
    pub params: LinkParams,
    /// `[[babel.peer]] keys`: the MAC keys of its Babel packets.
    pub keys: Vec<MacKey>,
}

/// The direction a filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// `"in"`: routes learned from neighbours.
    In,
    /// `"out"`: routes announced to neighbours.
    Out,
}

/// What a matching filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// `action = "accept"`.
    Accept,
    /// `action = "deny"`.
    Deny,
    /// `metric = N`: accept, adding N to the metric.
    #[serde(skip)]
    AddMetric(u16),
}

/// `[[babel.filter]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `direction`.
    pub direction: Direction,
    /// `prefix`: routes within it are candidates.
    pub prefix: IpNet,
    /// `ge`: shortest prefix length matched.
    pub ge: Option<u8>,
    /// `le`: longest prefix length matched.
    pub le: Option<u8>,
    /// `link`: only routes on this interface or peer (by name).
    pub link: Option<String>,
    /// `action` or `metric`.
    pub action: FilterAction,
}

impl Filter {
    /// Whether this filter applies to `prefix` going `dir` over `link`. Lengths as in prefix
    /// lists: without `ge` and `le` only `self.prefix`'s own length matches; `ge` alone
    /// matches from `ge` to the family's maximum; `le` alone from the prefix's length to `le`.
    pub fn matches(&self, dir: Direction, link: &str, prefix: &IpNet) -> bool {
        if dir != self.direction {
            return false;
        }
        if self.link.as_deref().is_some_and(|l| l != link) {
            return false;
        }
        if !self.prefix.contains(prefix) {
            return false;
        }
        let own = self.prefix.prefix_len();
        let lo = self.ge.unwrap_or(own);
        let hi = self.le.unwrap_or(if self.ge.is_none() {
            own
        } else {
            self.prefix.max_prefix_len()
        });
        (lo..=hi).contains(&prefix.prefix_len())
    }
}

/// Load and validate a configuration file: everything the data plane reads, and `[babel]`.
pub fn load(path: &Path) -> Result<CpConfig, ConfigError> {
    parse(&isthmus_dataplane::config::read(path)?, path)
}

/// Parse and validate configuration text; `path` names it in errors and anchors relative
/// paths.
pub fn parse(text: &str, path: &Path) -> Result<CpConfig, ConfigError> {
    let device = isthmus_dataplane::config::parse(text, path)?;
    let cx = Ctx {
        src: Source::new(path, text),
        device: &device,
    };
    let raw: RawFile = cx.src.deserialize()?;
    let babel = cx.babel(&raw.babel.unwrap_or_default())?;
    Ok(CpConfig {
        device,
        babel,
        path: path.to_path_buf(),
    })
}

#[derive(Deserialize)]
struct RawFile {
    // Not deny_unknown_fields: the data plane's loader has checked everything else. Not
    // Spanned: toml cannot span an implicit table (`[babel.wired]` without `[babel]`).
    babel: Option<RawBabel>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBabel {
    #[serde(default, deserialize_with = "router_id")]
    router_id: Option<[u8; 8]>,
    control_socket: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    metrics_public: bool,
    kernel_routes: Option<bool>,
    kernel_table: Option<Spanned<InRange<1, 4_294_967_295>>>,
    retract_on_shutdown: Option<bool>,
    #[serde(default)]
    originate: Vec<Spanned<Prefix>>,
    default_route: Option<DefaultRoute>,
    #[serde(default, deserialize_with = "ipv4_next_hop")]
    ipv4_next_hop: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "link_local")]
    link_local: Option<Ipv6Addr>,
    wired: Option<LinkOverrides>,
    mesh: Option<LinkOverrides>,
    trunk: Option<LinkOverrides>,
    #[serde(default)]
    interface: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    filter: Vec<Spanned<RawFilter>>,
    #[serde(default)]
    key: Vec<Spanned<RawKey>>,
    max_neighbours: Option<InRange<1, 1_000_000>>,
    max_neighbours_per_link: Option<InRange<1, 1_000_000>>,
    max_routes: Option<InRange<1, 100_000_000>>,
    max_sources: Option<InRange<1, 100_000_000>>,
    max_pending_requests: Option<InRange<1, 10_000_000>>,
    max_resend: Option<InRange<1, 100_000_000>>,
    max_status_clients: Option<InRange<1, 1024>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
}

// The tables with link-parameter keys besides their own (serde's `flatten` cannot be
// combined with `deny_unknown_fields` or `Spanned`).
link_params!(table RawInterface {
    name: Option<Spanned<IfName>>,
    class: Option<LinkClass>,
    keys: Option<Vec<Spanned<String>>>,
});
link_params!(table RawPeer {
    name: Option<Spanned<String>>,
    enabled: Option<bool>,
    class: Option<LinkClass>,
    keys: Option<Vec<Spanned<String>>>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    direction: Option<Direction>,
    prefix: Option<Prefix>,
    ge: Option<Spanned<i64>>,
    le: Option<Spanned<i64>>,
    link: Option<Spanned<String>>,
    action: Option<FilterAction>,
    metric: Option<Spanned<InRange<0, 65535>>>,
}

/// `router_id`: eight hex bytes, colon-separated; not all zeros or all ones (RFC 8966 4.1.3).
fn router_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 8]>, D::Error> {
    check_str(d, |s| {
        let bad = || {
            format!(
                "invalid router id {s:?} (expected eight hex bytes like \"02:00:00:00:00:00:00:01\")"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 8 || parts.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        for (b, p) in id.iter_mut().zip(parts) {
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if id == [0; 8] || id == [0xff; 8] {
            return Err(format!("{s} is reserved (all zeros or all ones)"));
        }
        Ok(Some(id))
    })
}

/// `ipv4_next_hop`: a unicast IPv4 address.
fn ipv4_next_hop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    address(d, "IPv4", |a: &Ipv4Addr| {
        (a.is_unspecified() || a.is_multicast() || a.is_broadcast())
            .then_some("is not a unicast address")
    })
}

/// `link_local`: an IPv6 address within fe80::/10.
fn link_local<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv6Addr>, D::Error> {
    address(d, "IPv6", |a: &Ipv6Addr| {
        (!a.is_unicast_link_local()).then_some("is not a link-local address (fe80::/10)")
    })
}

/// An address of the `family`, which `refuse` may refuse, saying why.
fn address<'de, D: Deserializer<'de>, A: FromStr + fmt::Display>(
    d: D,
    family: &str,
    refuse: impl FnOnce(&A) -> Option<&'static str>,
) -> Result<Option<A>, D::Error> {
    check_str(d, |s| {
        let a: A = s
            .parse()
            .map_err(|_| format!("invalid {family} address {s:?}"))?;
        match refuse(&a) {
            Some(why) => Err(format!("{a} {why}")),
            None => Ok(Some(a)),
        }
    })
}

/// The checks serde cannot make: ranges that depend on another key, uniqueness, names that
/// must match the data plane's, keys that go together.
struct Ctx<'a> {
    src: Source<'a>,
    device: &'a DeviceConfig,
}

impl Ctx<'_> {
    fn babel(&self, b: &RawBabel) -> Result<BabelConfig, ConfigError> {
        let metrics = match &b.metrics {
            Some(v) if v.get_ref() != "off" => Some(self.src.metrics_addr(
                v,
                "babel.metrics",
                b.metrics_public,
                "IP:PORT or \"off\"",
            )?),
            _ => None,
        };
        let kernel_table = match &b.kernel_table {
            Some(v) if u32::from(*v.get_ref()) == 255 => {
                return Err(self.src.err(
                    v.span(),
                    "babel.kernel_table",
                    "255 is the kernel's local table; choose another",
                ))
            }
            Some(v) => (*v.get_ref()).into(),
            None => 254,
        };
        let class = |c| self.resolve(c, &layers(b, c, None));
        let classes = LinkClasses {
            wired: class(LinkClass::Wired)?,
            mesh: class(LinkClass::Mesh)?,
            trunk: class(LinkClass::Trunk)?,
        };
        let keys = self.keys(b)?;
        let interfaces = self.interfaces(b, &keys)?;
        let peers = self.peers(b, &keys)?;
        let is_link =
            |s: &str| interfaces.iter().any(|i| i.name == s) || peers.iter().any(|p| p.name == s);
        let filters = (b.filter.iter().enumerate())
            .map(|(n, f)| self.filter(n, f, is_link))
            .collect::<Result<_, _>>()?;
        Ok(BabelConfig {
            router_id: b.router_id,
            control_socket: b.control_socket.clone(),
            metrics,
            metrics_off: b.metrics.as_ref().is_some_and(|v| v.get_ref() == "off"),
            kernel_routes: b.kernel_routes.unwrap_or(true),
            kernel_table,
            retract_on_shutdown: b.retract_on_shutdown.unwrap_or(false),
            originate: self.originate(&b.originate)?,
            default_route: b.default_route.unwrap_or_default(),
            ipv4_next_hop: b.ipv4_next_hop,
            link_local: b.link_local,
            classes,
            interfaces,
            peers,
            filters,
            keys,
            limits: Limits {
                neighbours: b.max_neighbours.map_or(Limits::NEIGHBOURS, Into::into),
                neighbours_per_link: (b.max_neighbours_per_link)
                    .map_or(Limits::NEIGHBOURS_PER_LINK, Into::into),
                routes: b.max_routes.map_or(Limits::ROUTES, Into::into),
                sources: b.max_sources.map_or(Limits::SOURCES, Into::into),
                pending_requests: (b.max_pending_requests)
                    .map_or(Limits::PENDING_REQUESTS, Into::into),
                resend: b.max_resend.map_or(Limits::RESEND, Into::into),
            },
            max_status_clients: b.max_status_clients.map_or(MAX_STATUS_CLIENTS, Into::into),
        })
    }

    /// `[[babel.key]]`: each read from its file (hex digits, mode 0600 like a private key,
    /// relative to the configuration file), its length checked against its algorithm.
    fn keys(&self, b: &RawBabel) -> Result<Vec<MacKey>, ConfigError> {
        let mut out: Vec<MacKey> = Vec::new();
        for (n, k) in b.key.iter().enumerate() {
            let table = format!("babel.key[{n}]");
            let k_ = k.get_ref();
            let (Some(id), Some(algorithm), Some(file)) = (&k_.id, &k_.algorithm, &k_.file) else {
                let m = "id, algorithm and file are required";
                return Err(self.src.err(k.span(), table, m));
            };
            if let Some(dup) = out.iter().position(|x| x.id() == id.get_ref()) {
                let m = format!("{:?} is already babel.key[{dup}]", id.get_ref());
                return Err(self.src.err(id.span(), format!("{table}.id"), m));
            }
            let Some(alg) = Algorithm::ALL
                .into_iter()
                .find(|a| a.as_str() == algorithm.get_ref())
            else {
                let m = format!(
                    "unknown algorithm {:?}, expected \"hmac-sha256\" or \"blake2s128\"",
                    algorithm.get_ref()
                );
                return Err(self
                    .src
                    .err(algorithm.span(), format!("{table}.algorithm"), m));
            };
            let err = |m: String| self.src.err(file.span(), format!("{table}.file"), m);
            let path = self.src.dir.join(file.get_ref());
            let text = read_secret_file(&path).map_err(|e| err(e.to_string()))?;
            let value = decode_hex(text.trim()).ok_or_else(|| {
                err(format!(
                    "{}: expected the key as hex digits (as babeld's `key ... value`)",
                    path.display()
                ))
            })?;
            let key = MacKey::new(id.get_ref(), alg, value)
                .map_err(|m| err(format!("{}: {m}", path.display())))?;
            out.push(key);
        }
        Ok(out)
    }

    /// A link's `keys`: names of `[[babel.key]]`s, each at most once.
    fn link_keys(
        &self,
        table: &str,
        names: Option<&Vec<Spanned<String>>>,
        keys: &[MacKey],
    ) -> Result<Vec<MacKey>, ConfigError> {
        let mut out: Vec<MacKey> = Vec::new();
        for (i, name) in names.into_iter().flatten().enumerate() {
            let at = format!("{table}.keys[{i}]");
            let s = name.get_ref();
            let Some(k) = keys.iter().find(|k| k.id() == s) else {
                let m = format!("{s:?} is not the id of a [[babel.key]]");
                return Err(self.src.err(name.span(), at, m));
            };
            if out.iter().any(|o| o.id() == s) {
                let m = format!("{s:?} is named twice");
                return Err(self.src.err(name.span(), at, m));
            }
            out.push(k.clone());
        }
        Ok(out)
    }

    fn originate(&self, list: &[Spanned<Prefix>]) -> Result<Vec<IpNet>, ConfigError> {
        let mut out: Vec<IpNet> = Vec::new();
        for (n, v) in list.iter().enumerate() {
            let net = v.get_ref().0;
            let wrong = if net.prefix_len() == 0 {
                "default routes are announced with default_route = \"originate\"".into()
            } else if let Some(dup) = out.iter().position(|o| *o == net) {
                format!("{net} is already babel.originate[{dup}]")
            } else {
                out.push(net);
                continue;
            };
            return Err(self
                .src
                .err(v.span(), format!("babel.originate[{n}]"), wrong));
        }
        Ok(out)
    }

    /// The parameters of a link of `class`: built-in defaults, then each layer's overrides
    /// (the class table, then the link's own, each with its table's key). An
    /// `update_interval` or `ihu_interval` set in no layer follows the resulting
    /// `hello_interval`.
    fn resolve(
        &self,
        class: LinkClass,
        layers: &[(String, LinkOverrides)],
    ) -> Result<LinkParams, ConfigError> {
        let mut p = LinkParams::for_class(class);
        for (_, o) in layers {
            p.apply(o);
        }
        let at = |t: &str, f: &str, v: Range<usize>| (v, format!("{t}.{f}"));
        let hello = p.hello_interval;
        for (factor, name, slot, set) in [
            (
                4,
                "update_interval",
                &mut p.update_interval,
                layers.iter().any(|(_, o)| o.update_interval.is_some()),
            ),
            (
                3,
                "ihu_interval",
                &mut p.ihu_interval,
                layers.iter().any(|(_, o)| o.ihu_interval.is_some()),
            ),
        ] {
            if set {
                continue;
            }
            *slot = hello * factor;
            if *slot > MAX_INTERVAL {
                // Blame the hello_interval that won.
                let (span, key) = (layers.iter().rev())
                    .find_map(|(t, o)| {
                        Some(at(t, "hello_interval", o.hello_interval.as_ref()?.span()))
                    })
                    .unwrap_or((0..0, "hello_interval".into()));
                return Err(self.src.err(
                    span,
                    key,
                    format!(
                        "{name} defaults to {factor} × hello_interval = {} s, more than {} s; set {name} explicitly",
                        slot.as_secs_f64(),
                        MAX_INTERVAL.as_secs()
                    ),
                ));
            }
        }
        if p.rtt_min >= p.rtt_max {
            // Blame the later of rtt_min and rtt_max in the most specific layer that sets
            // either.
            let (span, key) = (layers.iter().rev())
                .find_map(|(t, o)| {
                    let min = o.rtt_min.as_ref().map(|v| at(t, "rtt_min", v.span()));
                    let max = o.rtt_max.as_ref().map(|v| at(t, "rtt_max", v.span()));
                    min.into_iter().chain(max).max_by_key(|(s, _)| s.start)
                })
                .unwrap_or((0..0, "rtt_min".into()));
            return Err(self.src.err(
                span,
                key,
                format!(
                    "rtt_min ({} ms) must be less than rtt_max ({} ms)",
                    p.rtt_min.as_secs_f64() * 1e3,
                    p.rtt_max.as_secs_f64() * 1e3
                ),
            ));
        }
        Ok(p)
    }

    fn interfaces(
        &self,
        b: &RawBabel,
        keys: &[MacKey],
    ) -> Result<Vec<BabelInterface>, ConfigError> {
        let mut out: Vec<BabelInterface> = Vec::new();
        for (n, i) in b.interface.iter().enumerate() {
            let table = format!("babel.interface[{n}]");
            let Some(name) = &i.get_ref().name else {
                return Err(self.src.err(i.span(), table, "name is required"));
            };
            let s = &name.get_ref().0;
            let peer = (self.device.peers.iter()).position(|p| p.name.as_ref() == Some(s));
            let clash = if let Some(dup) = out.iter().position(|x| x.name == *s) {
                Some(format!("{s:?} is already babel.interface[{dup}]"))
            } else if self.device.interface.name.as_ref() == Some(s) {
                Some(format!(
                    "{s:?} is the tunnel device; Babel runs on its peers, each a link of its own"
                ))
            } else {
                peer.map(|p| {
                    format!("{s:?} is also the name of peer[{p}]; filter links would be ambiguous")
                })
            };
            if let Some(m) = clash {
                return Err(self.src.err(name.span(), format!("{table}.name"), m));
            }
            let class = i.get_ref().class.unwrap_or(LinkClass::Wired);
            let keys = self.link_keys(&table, i.get_ref().keys.as_ref(), keys)?;
            let own = (table, i.get_ref().overrides());
            out.push(BabelInterface {
                name: s.clone(),
                class,
                params: self.resolve(class, &layers(b, class, Some(own)))?,
                keys,
            });
        }
        Ok(out)
    }

    /// Every `[[peer]]`, with its `[[babel.peer]]` entry if it has one.
    fn peers(&self, b: &RawBabel, keys: &[MacKey]) -> Result<Vec<BabelPeer>, ConfigError> {
        let peers = &self.device.peers;
        let mut entry: Vec<Option<(usize, &RawPeer)>> = vec![None; peers.len()];
        for (n, p) in b.peer.iter().enumerate() {
            let key = format!("babel.peer[{n}].name");
            let Some(name) = &p.get_ref().name else {
                return Err(self
                    .src
                    .err(p.span(), format!("babel.peer[{n}]"), "name is required"));
            };
            let s = name.get_ref();
            let Some(idx) = peers.iter().position(|d| d.name.as_ref() == Some(s)) else {
                let m = format!("{s:?} is not the name of a [[peer]]");
                return Err(self.src.err(name.span(), key, m));
            };
            if let Some((dup, _)) = entry[idx] {
                let m = format!("{s:?} is already babel.peer[{dup}]");
                return Err(self.src.err(name.span(), key, m));
            }
            entry[idx] = Some((n, p.get_ref()));
        }
        let mut out = Vec::new();
        for (d, e) in peers.iter().zip(entry) {
            let dp_class = d.class;
            let (class, enabled, own, keys) = match e {
                None => (dp_class, true, None, Vec::new()),
                Some((n, p)) => {
                    let table = format!("babel.peer[{n}]");
                    (
                        p.class.unwrap_or(dp_class),
                        p.enabled.unwrap_or(true),
                        Some((table.clone(), p.overrides())),
                        self.link_keys(&table, p.keys.as_ref(), keys)?,
                    )
                }
            };
            out.push(BabelPeer {
                // As the data plane labels a peer.
                name: (d.name.clone()).unwrap_or_else(|| d.public_key.to_base64()[..8].to_string()),
                public_key: d.public_key,
                enabled,
                class,
                params: self.resolve(class, &layers(b, class, own))?,
                keys,
            });
        }
        Ok(out)
    }

    /// `babel.filter[n]`, whose `link`, if any, must satisfy `is_link`.
    fn filter(
        &self,
        n: usize,
        f: &Spanned<RawFilter>,
        is_link: impl Fn(&str) -> bool,
    ) -> Result<Filter, ConfigError> {
        let (span, f) = (f.span(), f.get_ref());
        let table = format!("babel.filter[{n}]");
        let k = |x: &str| format!("{table}.{x}");
        let Some(direction) = f.direction else {
            let m = "direction is required (\"in\" or \"out\")";
            return Err(self.src.err(span, table, m));
        };
        let Some(Prefix(prefix)) = f.prefix else {
            let m = "prefix is required (\"0.0.0.0/0\" with le = 32 matches every IPv4 route)";
            return Err(self.src.err(span, table, m));
        };
        // ge and le are lengths from the prefix's own to the family's maximum.
        let (own, max) = (prefix.prefix_len(), prefix.max_prefix_len());
        let length = |v: &Option<Spanned<i64>>, key: &str| {
            let Some(v) = v else { return Ok(None) };
            let n = *v.get_ref();
            match u8::try_from(n) {
                Ok(l) if (own..=max).contains(&l) => Ok(Some((l, v.span()))),
                _ => {
                    let m = format!("{n} is out of range ({own}..={max})");
                    Err(self.src.err(v.span(), k(key), m))
                }
            }
        };
        let (ge, le) = (length(&f.ge, "ge")?, length(&f.le, "le")?);
        if let (Some((g, _)), Some((l, at))) = (&ge, &le) {
            if g > l {
                let m = format!("le ({l}) is less than ge ({g})");
                return Err(self.src.err(at.clone(), k("le"), m));
            }
        }
        if let Some(v) = f.link.as_ref().filter(|v| !is_link(v.get_ref())) {
            let m = format!("{:?} is not a babel.interface or a peer", v.get_ref());
            return Err(self.src.err(v.span(), k("link"), m));
        }
        let action = match (f.action, &f.metric) {
            (None, None) => {
                let m = "action = \"accept\" | \"deny\", or metric = N, is required";
                return Err(self.src.err(span, table, m));
            }
            (Some(FilterAction::Deny), Some(m)) => {
                let msg = "a metric with action = \"deny\" means nothing";
                return Err(self.src.err(m.span(), k("metric"), msg));
            }
            (_, Some(m)) => FilterAction::AddMetric((*m.get_ref()).into()),
            (Some(a), None) => a,
        };
        Ok(Filter {
            direction,
            prefix,
            ge: ge.map(|(l, _)| l),
            le: le.map(|(l, _)| l),
            link: f.link.as_ref().map(|v| v.get_ref().clone()),
            action,
        })
    }
}

/// The override layers of a link of `class`: the class table, if any, then the link's own.
fn layers(
    b: &RawBabel,
    class: LinkClass,
    own: Option<(String, LinkOverrides)>,
) -> Vec<(String, LinkOverrides)> {
    let table = match class {
        LinkClass::Wired => &b.wired,
        LinkClass::Mesh => &b.mesh,
        LinkClass::Trunk => &b.trunk,
    };
    (table.clone())
        .map(|t| (format!("babel.{class}"), t))
        .into_iter()
        .chain(own)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FILE: &str = "/etc/isthmus/gw.toml";
    const SOUTH: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const ROOF: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
    const ANON: &str = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBksHo=";

    fn base() -> String {
        format!(
            r#"[interface]
name = "isthmus0"

[[peer]]
name = "trunk-south"
public_key = "{SOUTH}"
class = "trunk"

[[peer]]
name = "roof-12"
public_key = "{ROOF}"

[[peer]]
public_key = "{ANON}"
"#
        )
    }

    fn parse_str(text: &str) -> Result<CpConfig, ConfigError> {
        parse(text, Path::new(FILE))
    }

    fn with(snippet: &str) -> Result<BabelConfig, ConfigError> {
        parse_str(&format!("{}{snippet}\n", base())).map(|c| c.babel)
    }

    /// Asserts that `snippet`, appended to the base file, is refused at the snippet's line
    /// `rel_line` (1-based), naming `key`, with a message containing `msg`.
    #[track_caller]
    fn refused(snippet: &str, rel_line: usize, key: &str, msg: &str) {
        let e = with(snippet).expect_err(snippet);
        let line = base().lines().count() + rel_line;
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{FILE}:{line}: {key}: ")),
            "for {snippet:?}: got {text:?}, want {FILE}:{line}: {key}: ..."
        );
        assert!(
            e.message.contains(msg),
            "for {snippet:?}: {text:?} lacks {msg:?}"
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn class_defaults() {
        let w = LinkParams::for_class(LinkClass::Wired);
        let m = LinkParams::for_class(LinkClass::Mesh);
        let t = LinkParams::for_class(LinkClass::Trunk);
        for p in [&w, &m, &t] {
            assert_eq!(p.hello_interval, ms(4000));
            assert_eq!(p.update_interval, ms(16000));
            assert_eq!(p.ihu_interval, ms(12000));
            assert_eq!(p.rtt_min, ms(10));
            assert_eq!(p.rtt_max, ms(120));
        }
        assert_eq!((w.rxcost, m.rxcost, t.rxcost), (96, 256, 96));
        assert_eq!(w.cost_model, CostModel::TwoOutOfThree);
        assert_eq!(m.cost_model, CostModel::Etx);
        assert_eq!(t.cost_model, CostModel::TwoOutOfThree);
        assert_eq!(
            (w.timestamps, m.timestamps, t.timestamps),
            (false, false, true)
        );
        assert_eq!(
            (w.max_rtt_penalty, m.max_rtt_penalty, t.max_rtt_penalty),
            (0, 0, 150)
        );
        assert_eq!(LinkParams::default(), w);
        let c = LinkClasses::default();
        assert_eq!((&c.wired, &c.mesh, &c.trunk), (&w, &m, &t));
        assert_eq!(c.get(LinkClass::Mesh), &m);
    }

    #[test]
    fn a_file_without_babel_gets_every_default() {
        let c = parse_str(&base()).unwrap();
        assert_eq!(c.path, Path::new(FILE));
        assert_eq!(c.device.peers.len(), 3);
        let b = c.babel;
        assert_eq!(b.router_id, None);
        assert_eq!(b.control_socket, None);
        assert_eq!(b.metrics, None);
        assert!(!b.metrics_off);
        assert!(b.kernel_routes);
        assert_eq!(b.kernel_table, 254);
        assert!(!b.retract_on_shutdown);
        assert!(b.originate.is_empty());
        assert_eq!(b.default_route, DefaultRoute::Ignore);
        assert_eq!(b.ipv4_next_hop, None);
        assert_eq!(b.link_local, None);
        assert_eq!(b.classes, LinkClasses::default());
        assert!(b.interfaces.is_empty());
        assert!(b.filters.is_empty());
        // Every tunnel peer is a Babel link, classed as its [[peer]].
        let names: Vec<&str> = b.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["trunk-south", "roof-12", &ANON[..8]]);
        assert!(b.peers.iter().all(|p| p.enabled));
        assert_eq!(b.peers[0].class, LinkClass::Trunk);
        assert_eq!(b.peers[0].params, LinkParams::for_class(LinkClass::Trunk));
        assert_eq!(b.peers[1].class, LinkClass::Mesh);
        assert_eq!(b.peers[2].public_key, Key::from_base64(ANON).unwrap());
        // An empty [babel] is the same.
        assert_eq!(with("[babel]").unwrap(), b);
        // An interface's class defaults to wired, with the wired parameters.
        let b = with("[[babel.interface]]\nname = \"eth1\"").unwrap();
        assert_eq!(b.interfaces[0].class, LinkClass::Wired);
        assert_eq!(
            b.interfaces[0].params,
            LinkParams::for_class(LinkClass::Wired)
        );
    }

    #[test]
    fn table_limits_have_defaults_and_ranges() {
        let b = with("[babel]").unwrap();
        assert_eq!(b.limits, Limits::default());
        assert_eq!(b.max_status_clients, MAX_STATUS_CLIENTS);
        assert_eq!(
            (
                b.limits.neighbours,
                b.limits.neighbours_per_link,
                b.limits.routes
            ),
            (16_384, 256, 250_000)
        );
        let b = with(
            "[babel]\nmax_neighbours = 10\nmax_neighbours_per_link = 3\nmax_routes = 1000\n\
             max_sources = 2000\nmax_pending_requests = 50\nmax_resend = 60\nmax_status_clients = 2",
        )
        .unwrap();
        let want = Limits {
            neighbours: 10,
            neighbours_per_link: 3,
            routes: 1000,
            sources: 2000,
            pending_requests: 50,
            resend: 60,
        };
        assert_eq!((b.limits, b.max_status_clients), (want, 2));
        refused(
            "[babel]\nmax_routes = 0",
            2,
            "babel.max_routes",
            "out of range",
        );
        refused(
            "[babel]\nmax_neighbours = \"many\"",
            2,
            "babel.max_neighbours",
            "an integer",
        );
        refused(
            "[babel]\nmax_status_clients = 5000",
            2,
            "babel.max_status_clients",
            "out of range",
        );
    }

    #[test]
    fn derived_intervals_follow_the_effective_hello() {
        let b = with(
            "[babel.mesh]\nhello_interval = 2\n\n[babel.trunk]\nhello_interval = 1\nupdate_interval = 20\n\n\
             [[babel.interface]]\nname = \"wlan0\"\nclass = \"mesh\"\nhello_interval = 0.5\n\n\
             [[babel.interface]]\nname = \"wlan1\"\nclass = \"mesh\"\n\n\
             [[babel.peer]]\nname = \"trunk-south\"\nhello_interval = 10\n",
        )
        .unwrap();
        assert_eq!(b.classes.mesh.hello_interval, ms(2000));
        assert_eq!(b.classes.mesh.update_interval, ms(8000));
        assert_eq!(b.classes.mesh.ihu_interval, ms(6000));
        assert_eq!(b.classes.trunk.update_interval, ms(20000));
        assert_eq!(b.classes.trunk.ihu_interval, ms(3000));
        assert_eq!(b.classes.wired, LinkParams::for_class(LinkClass::Wired));
        let w0 = &b.interfaces[0].params;
        assert_eq!(
            (w0.hello_interval, w0.update_interval, w0.ihu_interval),
            (ms(500), ms(2000), ms(1500))
        );
        assert_eq!(w0.cost_model, CostModel::Etx);
        assert_eq!(b.interfaces[1].params, b.classes.mesh);
        // The class table's explicit update_interval stays; ihu follows the peer's hello.
        let t = &b.peers[0].params;
        assert_eq!(
            (t.hello_interval, t.update_interval, t.ihu_interval),
            (ms(10000), ms(20000), ms(30000))
        );
        // The mesh peer without [[babel.peer]] gets the [babel.mesh] parameters.
        assert_eq!(b.peers[1].params, b.classes.mesh);
    }

    const FULL: &str = r#"
[babel]
router_id = "02:00:00:00:00:00:00:01"
control_socket = "/run/isthmus/cp.ctl"
metrics = "192.0.2.7:9587"
metrics_public = true
kernel_routes = false
kernel_table = 100
retract_on_shutdown = true
originate = ["10.10.0.0/16", "fd10::/48"]
default_route = "originate"
ipv4_next_hop = "10.0.0.1"
link_local = "fe80::1"

[babel.wired]
cost = 64

[babel.mesh]
hello_interval = 2.5
cost_model = "2-out-of-3"

[babel.trunk]
timestamps = false
rtt_min = 0.02
rtt_max = 0.5
max_rtt_penalty = 200

[[babel.interface]]
name = "eth1"

[[babel.interface]]
name = "wlan0"
class = "mesh"
cost = 512
cost_model = "etx"
timestamps = true

[[babel.peer]]
name = "roof-12"
enabled = false

[[babel.peer]]
name = "trunk-south"
class = "mesh"
ihu_interval = 7

[[babel.filter]]
direction = "in"
prefix = "10.0.0.0/8"
le = 24
link = "trunk-south"
metric = 128

[[babel.filter]]
direction = "out"
prefix = "fd00::/8"
ge = 48
action = "deny"

[[babel.filter]]
direction = "in"
prefix = "0.0.0.0/0"
le = 32
action = "accept"
"#;

    #[test]
    fn a_full_babel_section_parses() {
        let b = with(FULL).unwrap();
        assert_eq!(b.router_id, Some([2, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(
            b.control_socket.as_deref(),
            Some(Path::new("/run/isthmus/cp.ctl"))
        );
        assert_eq!(b.metrics, Some("192.0.2.7:9587".parse().unwrap()));
        assert!(!b.metrics_off);
        assert!(!b.kernel_routes);
        assert_eq!(b.kernel_table, 100);
        assert!(b.retract_on_shutdown);
        assert_eq!(b.originate, [net("10.10.0.0/16"), net("fd10::/48")]);
        assert_eq!(b.default_route, DefaultRoute::Originate);
        assert_eq!(b.ipv4_next_hop, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(b.link_local, Some("fe80::1".parse().unwrap()));

        assert_eq!(b.classes.wired.rxcost, 64);
        assert_eq!(b.classes.mesh.hello_interval, ms(2500));
        assert_eq!(b.classes.mesh.update_interval, ms(10000));
        assert_eq!(b.classes.mesh.cost_model, CostModel::TwoOutOfThree);
        assert_eq!(b.classes.mesh.rxcost, 256);
        let t = &b.classes.trunk;
        assert!(!t.timestamps);
        assert_eq!(
            (t.rtt_min, t.rtt_max, t.max_rtt_penalty),
            (ms(20), ms(500), 200)
        );

        assert_eq!(b.interfaces.len(), 2);
        assert_eq!(
            b.interfaces[0],
            BabelInterface {
                name: "eth1".into(),
                class: LinkClass::Wired,
                params: b.classes.wired,
                keys: Vec::new(),
            }
        );
        let w = &b.interfaces[1];
        assert_eq!((w.name.as_str(), w.class), ("wlan0", LinkClass::Mesh));
        assert_eq!(
            w.params,
            LinkParams {
                rxcost: 512,
                cost_model: CostModel::Etx,
                timestamps: true,
                ..b.classes.mesh
            }
        );

        assert_eq!(b.peers.len(), 3);
        let south = &b.peers[0];
        assert_eq!(
            (south.name.as_str(), south.class, south.enabled),
            ("trunk-south", LinkClass::Mesh, true)
        );
        assert_eq!(
            south.params,
            LinkParams {
                ihu_interval: ms(7000),
                ..b.classes.mesh
            }
        );
        assert_eq!(south.public_key, Key::from_base64(SOUTH).unwrap());
        assert!(!b.peers[1].enabled);
        assert_eq!(b.peers[1].params, b.classes.mesh);
        assert!(b.peers[2].enabled);

        assert_eq!(
            b.filters,
            [
                Filter {
                    direction: Direction::In,
                    prefix: net("10.0.0.0/8"),
                    ge: None,
                    le: Some(24),
                    link: Some("trunk-south".into()),
                    action: FilterAction::AddMetric(128),
                },
                Filter {
                    direction: Direction::Out,
                    prefix: net("fd00::/8"),
                    ge: Some(48),
                    le: None,
                    link: None,
                    action: FilterAction::Deny,
                },
                Filter {
                    direction: Direction::In,
                    prefix: net("0.0.0.0/0"),
                    ge: None,
                    le: Some(32),
                    link: None,
                    action: FilterAction::Accept,
                },
            ]
        );
        let first = |d, l, p| b.first_filter(d, l, &net(p)).map(|f| f.action);
        assert_eq!(
            first(Direction::In, "trunk-south", "10.1.0.0/16"),
            Some(FilterAction::AddMetric(128))
        );
        assert_eq!(
            first(Direction::In, "roof-12", "10.1.0.0/16"),
            Some(FilterAction::Accept)
        );
        assert_eq!(
            first(Direction::Out, "eth1", "fd00:1:2::/48"),
            Some(FilterAction::Deny)
        );
        assert_eq!(first(Direction::Out, "eth1", "fd00::/32"), None);
        assert_eq!(first(Direction::In, "eth1", "fd00:1:2::/48"), None);
    }

    #[test]
    fn metrics_off_and_other_spellings() {
        let b = with("[babel]\nmetrics = \"off\"").unwrap();
        assert!(b.metrics_off);
        assert_eq!(b.metrics, None);
        let b = with("[babel]\nmetrics = \"[::1]:9587\"\ndefault_route = \"accept\"").unwrap();
        assert_eq!(b.metrics, Some("[::1]:9587".parse().unwrap()));
        assert_eq!(b.default_route, DefaultRoute::Accept);
        let b =
            with("[babel]\ndefault_route = \"ignore\"\nrouter_id = \"ff:ff:ff:ff:ff:ff:ff:fe\"")
                .unwrap();
        assert_eq!(b.default_route, DefaultRoute::Ignore);
        assert_eq!(
            b.router_id,
            Some([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])
        );
        // Integer and float seconds; hello at both ends of the range.
        let b = with("[babel.wired]\nhello_interval = 0.01\n[babel.trunk]\nhello_interval = 100\nupdate_interval = 655").unwrap();
        assert_eq!(b.classes.wired.hello_interval, ms(10));
        assert_eq!(b.classes.trunk.update_interval, Duration::from_secs(655));
        assert_eq!(b.classes.trunk.ihu_interval, Duration::from_secs(300));
    }

    #[test]
    fn filter_prefix_lengths_match_like_prefix_lists() {
        let f = |ge: Option<u8>, le: Option<u8>| Filter {
            direction: Direction::In,
            prefix: net("10.0.0.0/8"),
            ge,
            le,
            link: None,
            action: FilterAction::Deny,
        };
        let m = |f: &Filter, p: &str| f.matches(Direction::In, "eth1", &net(p));
        let exact = f(None, None);
        assert!(m(&exact, "10.0.0.0/8"));
        assert!(!m(&exact, "10.1.0.0/16"));
        let ge = f(Some(16), None);
        assert!(!m(&ge, "10.0.0.0/8"));
        assert!(m(&ge, "10.1.0.0/16"));
        assert!(m(&ge, "10.1.2.3/32"));
        let le = f(None, Some(24));
        assert!(m(&le, "10.0.0.0/8"));
        assert!(m(&le, "10.1.2.0/24"));
        assert!(!m(&le, "10.1.2.128/25"));
        let both = f(Some(16), Some(24));
        assert!(!m(&both, "10.0.0.0/8"));
        assert!(m(&both, "10.1.0.0/16"));
        assert!(m(&both, "10.1.2.0/24"));
        assert!(!m(&both, "10.1.2.0/25"));
        // Outside the prefix, the other family, the other direction, another link.
        assert!(!m(&le, "11.0.0.0/8"));
        assert!(!m(&le, "0.0.0.0/0"));
        assert!(!m(&le, "::/0"));
        assert!(!le.matches(Direction::Out, "eth1", &net("10.0.0.0/8")));
        let on = Filter {
            link: Some("eth1".into()),
            ..le.clone()
        };
        assert!(on.matches(Direction::In, "eth1", &net("10.0.0.0/8")));
        assert!(!on.matches(Direction::In, "eth2", &net("10.0.0.0/8")));
        let v6 = Filter {
            prefix: net("::/0"),
            ..f(None, Some(128))
        };
        assert!(m(&v6, "::/0"));
        assert!(m(&v6, "2001:db8::/32"));
        assert!(!m(&v6, "10.0.0.0/8"));
    }

    #[test]
    fn top_level_errors() {
        refused(
            "[babel]\nrouter_id = \"02:00\"",
            2,
            "babel.router_id",
            "invalid router id",
        );
        refused(
            "[babel]\nrouter_id = \"02:00:00:00:00:00:00:0g\"",
            2,
            "babel.router_id",
            "eight hex bytes",
        );
        refused(
            "[babel]\nrouter_id = \"02:00:00:00:00:00:00:01:00\"",
            2,
            "babel.router_id",
            "invalid router id",
        );
        refused(
            "[babel]\nrouter_id = \"00:00:00:00:00:00:00:00\"",
            2,
            "babel.router_id",
            "reserved",
        );
        refused(
            "[babel]\nrouter_id = \"ff:ff:ff:ff:ff:ff:ff:ff\"",
            2,
            "babel.router_id",
            "reserved",
        );
        refused(
            "[babel]\nmetrics = \"on\"",
            2,
            "babel.metrics",
            "invalid socket address \"on\" (expected IP:PORT or \"off\")",
        );
        refused(
            "[babel]\nmetrics = \"0.0.0.0:9587\"",
            2,
            "babel.metrics",
            "set metrics_public = true",
        );
        refused(
            "[babel]\nkernel_table = 0",
            2,
            "babel.kernel_table",
            "out of range (1..=4294967295)",
        );
        refused(
            "[babel]\nkernel_table = 4294967296",
            2,
            "babel.kernel_table",
            "out of range",
        );
        refused(
            "[babel]\nkernel_table = 255",
            2,
            "babel.kernel_table",
            "local table",
        );
        refused(
            "[babel]\ndefault_route = \"maybe\"",
            2,
            "babel.default_route",
            "unknown variant `maybe`, expected one of `ignore`, `accept`, `originate`",
        );
        refused(
            "[babel]\noriginate = [\"10.1.0.1/16\"]",
            2,
            "babel.originate[0]",
            "did you mean 10.1.0.0/16?",
        );
        refused(
            "[babel]\noriginate = [\"10.1.0.0/16\",\n  \"10.1.0.0/16\"]",
            3,
            "babel.originate[1]",
            "already babel.originate[0]",
        );
        refused(
            "[babel]\noriginate = [\"::/0\"]",
            2,
            "babel.originate[0]",
            "default_route = \"originate\"",
        );
        refused(
            "[babel]\noriginate = [\"10.1.0.0\"]",
            2,
            "babel.originate[0]",
            "invalid prefix",
        );
        refused(
            "[babel]\nipv4_next_hop = \"fe80::1\"",
            2,
            "babel.ipv4_next_hop",
            "invalid IPv4 address",
        );
        refused(
            "[babel]\nipv4_next_hop = \"224.0.0.1\"",
            2,
            "babel.ipv4_next_hop",
            "not a unicast address",
        );
        refused(
            "[babel]\nlink_local = \"2001:db8::1\"",
            2,
            "babel.link_local",
            "not a link-local address (fe80::/10)",
        );
        refused(
            "[babel]\nlink_local = \"10.0.0.1\"",
            2,
            "babel.link_local",
            "invalid IPv6 address",
        );
        refused(
            "[babel]\nkernel_routes = \"yes\"",
            2,
            "babel.kernel_routes",
            "invalid type",
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        refused(
            "[babel]\ncolour = 1",
            2,
            "babel.colour",
            "unknown field `colour`",
        );
        refused(
            "[babel.wired]\ncost = 10\ncolour = 1",
            3,
            "babel.wired.colour",
            "unknown field",
        );
        refused(
            "[babel.wifi]\ncost = 10",
            1,
            "babel.wifi",
            "unknown field `wifi`",
        );
        refused(
            "[[babel.interface]]\nname = \"eth1\"\n\n[[babel.interface]]\nname = \"eth2\"\ncolour = 1",
            6,
            "babel.interface[1].colour",
            "unknown field",
        );
        refused(
            "[[babel.peer]]\nname = \"roof-12\"\nenable = false",
            3,
            "babel.peer[0].enable",
            "unknown field",
        );
        refused(
            "[[babel.filter]]\ndirection = \"in\"\nprefix = \"::/0\"\naction = \"deny\"\nmatch = 1",
            5,
            "babel.filter[0].match",
            "unknown field",
        );
    }

    #[test]
    fn link_parameter_errors() {
        refused(
            "[babel.mesh]\ncost = \"high\"",
            2,
            "babel.mesh.cost",
            "invalid type",
        );
        refused(
            "[babel.wired]\nhello_interval = \"4s\"",
            2,
            "babel.wired.hello_interval",
            "expected a number of seconds",
        );
        refused(
            "[babel.wired]\nhello_interval = 0",
            2,
            "babel.wired.hello_interval",
            "out of range",
        );
        refused(
            "[babel.wired]\nhello_interval = 0.001",
            2,
            "babel.wired.hello_interval",
            "centiseconds",
        );
        refused(
            "[babel.wired]\nhello_interval = 656",
            2,
            "babel.wired.hello_interval",
            "at most 655 s",
        );
        refused(
            "[babel.wired]\nhello_interval = -1",
            2,
            "babel.wired.hello_interval",
            "out of range",
        );
        refused(
            "[babel.wired]\nhello_interval = nan",
            2,
            "babel.wired.hello_interval",
            "out of range",
        );
        refused(
            "[babel.trunk]\nupdate_interval = 1000",
            2,
            "babel.trunk.update_interval",
            "out of range",
        );
        refused(
            "[babel.trunk]\nihu_interval = 0",
            2,
            "babel.trunk.ihu_interval",
            "out of range",
        );
        refused(
            "[babel.trunk]\nhello_interval = 200",
            2,
            "babel.trunk.hello_interval",
            "update_interval defaults to 4 × hello_interval = 800 s, more than 655 s; set update_interval explicitly",
        );
        refused(
            "[babel.trunk]\nhello_interval = 220\nupdate_interval = 600",
            2,
            "babel.trunk.hello_interval",
            "ihu_interval defaults to 3 × hello_interval",
        );
        refused(
            "[babel.mesh]\ncost = 0",
            2,
            "babel.mesh.cost",
            "out of range (1..=65535)",
        );
        refused(
            "[babel.mesh]\ncost = 65536",
            2,
            "babel.mesh.cost",
            "out of range (1..=65535)",
        );
        refused(
            "[babel.mesh]\ncost_model = \"rtt\"",
            2,
            "babel.mesh.cost_model",
            "unknown variant `rtt`, expected `2-out-of-3` or `etx`",
        );
        refused(
            "[babel.trunk]\ntimestamps = 1",
            2,
            "babel.trunk.timestamps",
            "invalid type",
        );
        refused(
            "[babel.trunk]\nrtt_min = 0.2",
            2,
            "babel.trunk.rtt_min",
            "rtt_min (200 ms) must be less than rtt_max (120 ms)",
        );
        refused(
            "[babel.trunk]\nrtt_max = 0.05\nrtt_min = 0.05",
            3,
            "babel.trunk.rtt_min",
            "must be less than rtt_max",
        );
        refused(
            "[babel.trunk]\nrtt_max = 0",
            2,
            "babel.trunk.rtt_max",
            "rtt_min (10 ms) must be less than rtt_max (0 ms)",
        );
        refused(
            "[babel.trunk]\nrtt_min = -0.01",
            2,
            "babel.trunk.rtt_min",
            "out of range",
        );
        refused(
            "[babel.trunk]\nmax_rtt_penalty = -1",
            2,
            "babel.trunk.max_rtt_penalty",
            "out of range (0..=65535)",
        );
        refused(
            "[babel.trunk]\nmax_rtt_penalty = 65536",
            2,
            "babel.trunk.max_rtt_penalty",
            "out of range",
        );
        // A link's override is checked against the class's value.
        refused(
            "[babel.trunk]\nrtt_max = 0.3\n\n[[babel.peer]]\nname = \"trunk-south\"\nrtt_min = 0.3",
            6,
            "babel.peer[0].rtt_min",
            "must be less than rtt_max (300 ms)",
        );
    }

    #[test]
    fn mac_keys_come_from_permission_checked_files_and_links_name_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("isthmus-cp-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p.display().to_string()
        };
        let sha = file("sha.key", &format!("{}\n", "ab".repeat(64)), 0o600);
        let b2 = file("b2.key", &"0F".repeat(32), 0o400);
        let open = file("open.key", &"ab".repeat(32), 0o644);
        let junk = file("junk.key", "not hex", 0o600);
        let long = file("long.key", &"ab".repeat(33), 0o600);
        let keys = format!(
            "[[babel.key]]\nid = \"old\"\nalgorithm = \"hmac-sha256\"\nfile = \"{sha}\"\n\
             [[babel.key]]\nid = \"new\"\nalgorithm = \"blake2s128\"\nfile = \"{b2}\"\n"
        );
        let b = with(&format!(
            "{keys}[[babel.interface]]\nname = \"wlan0\"\nkeys = [\"old\", \"new\"]\n\
             [[babel.peer]]\nname = \"trunk-south\"\nkeys = [\"new\"]\n"
        ))
        .unwrap();
        let ids = |k: &[MacKey]| k.iter().map(|k| k.id().to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&b.interfaces[0].keys), ["old", "new"]);
        assert_eq!(b.interfaces[0].keys[1].algorithm(), Algorithm::Blake2s128);
        assert_eq!(ids(&b.peers[0].keys), ["new"]);
        assert!(b.peers[1].keys.is_empty() && b.peers[2].keys.is_empty());
        // The value never shows.
        assert!(!format!("{b:?}").contains("171"));

        let key = |alg: &str, path: &str| {
            format!("[[babel.key]]\nid = \"k\"\nalgorithm = \"{alg}\"\nfile = \"{path}\"")
        };
        refused(
            &key("blake2s128", &open),
            4,
            "babel.key[0].file",
            "mode 0644",
        );
        refused(
            &key("blake2s128", &open),
            4,
            "babel.key[0].file",
            "chmod 600",
        );
        refused(
            &key("blake2s128", &junk),
            4,
            "babel.key[0].file",
            "hex digits",
        );
        refused(
            &key("blake2s128", &long),
            4,
            "babel.key[0].file",
            "1 to 32 bytes, this one 33",
        );
        refused(
            &key("md5", &sha),
            3,
            "babel.key[0].algorithm",
            "unknown algorithm \"md5\"",
        );
        refused(
            &key("blake2s128", &dir.join("absent").display().to_string()),
            4,
            "babel.key[0].file",
            "No such file",
        );
        refused("[[babel.key]]\nid = \"k\"", 1, "babel.key[0]", "required");
        refused(
            &format!("{}\n{}", key("hmac-sha256", &sha), key("blake2s128", &b2)),
            6,
            "babel.key[1].id",
            "\"k\" is already babel.key[0]",
        );
        refused(
            &format!("{keys}[[babel.interface]]\nname = \"wlan0\"\nkeys = [\"old\", \"gone\"]"),
            11,
            "babel.interface[0].keys[1]",
            "\"gone\" is not the id of a [[babel.key]]",
        );
        refused(
            &format!("{keys}[[babel.peer]]\nname = \"roof-12\"\nkeys = [\"new\", \"new\"]"),
            11,
            "babel.peer[0].keys[1]",
            "named twice",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interface_errors() {
        refused(
            "[[babel.interface]]\nname = \"wlan0\"\nclass = \"wifi\"",
            3,
            "babel.interface[0].class",
            "unknown variant `wifi`, expected one of `wired`, `mesh`, `trunk`",
        );
        refused(
            "[[babel.interface]]\nclass = \"mesh\"",
            1,
            "babel.interface[0]",
            "name is required",
        );
        refused(
            "[[babel.interface]]\nname = \"a-very-long-name0\"",
            2,
            "babel.interface[0].name",
            "1-15 characters",
        );
        refused(
            "[[babel.interface]]\nname = \"\"",
            2,
            "babel.interface[0].name",
            "1-15 characters",
        );
        refused(
            "[[babel.interface]]\nname = \"eth/1\"",
            2,
            "babel.interface[0].name",
            "without '/'",
        );
        refused(
            "[[babel.interface]]\nname = \"eth1\"\n[[babel.interface]]\nname = \"eth1\"",
            4,
            "babel.interface[1].name",
            "\"eth1\" is already babel.interface[0]",
        );
        refused(
            "[[babel.interface]]\nname = \"isthmus0\"",
            2,
            "babel.interface[0].name",
            "is the tunnel device",
        );
        refused(
            "[[babel.interface]]\nname = \"roof-12\"",
            2,
            "babel.interface[0].name",
            "also the name of peer[1]",
        );
        refused(
            "[[babel.interface]]\nname = \"eth1\"\nhello_interval = 0",
            3,
            "babel.interface[0].hello_interval",
            "out of range",
        );
        refused(
            "[[babel.interface]]\nname = \"eth1\"\ncost = 0",
            3,
            "babel.interface[0].cost",
            "out of range",
        );
        refused(
            "[babel]\ninterface = \"eth1\"",
            2,
            "babel.interface",
            "invalid type",
        );
    }

    #[test]
    fn peer_errors() {
        refused(
            "[[babel.peer]]\nenabled = false",
            1,
            "babel.peer[0]",
            "name is required",
        );
        refused(
            "[[babel.peer]]\nname = \"roof-13\"",
            2,
            "babel.peer[0].name",
            "\"roof-13\" is not the name of a [[peer]]",
        );
        refused(
            "[[babel.peer]]\nname = \"roof-12\"\n[[babel.peer]]\nname = \"roof-12\"",
            4,
            "babel.peer[1].name",
            "already babel.peer[0]",
        );
        refused(
            "[[babel.peer]]\nname = \"roof-12\"\nclass = \"backbone\"",
            3,
            "babel.peer[0].class",
            "unknown variant `backbone`, expected one of `wired`, `mesh`, `trunk`",
        );
        refused(
            "[[babel.peer]]\nname = \"roof-12\"\nenabled = \"no\"",
            3,
            "babel.peer[0].enabled",
            "invalid type",
        );
        refused(
            "[[babel.peer]]\nname = \"roof-12\"\ncost_model = \"ETX\"",
            3,
            "babel.peer[0].cost_model",
            "unknown variant `ETX`",
        );
    }

    #[test]
    fn filter_errors() {
        let f = |rest: &str| format!("[[babel.filter]]\n{rest}");
        refused(
            &f("prefix = \"::/0\"\naction = \"deny\""),
            1,
            "babel.filter[0]",
            "direction is required",
        );
        refused(
            &f("direction = \"both\""),
            2,
            "babel.filter[0].direction",
            "unknown variant `both`, expected `in` or `out`",
        );
        refused(
            &f("direction = \"in\"\naction = \"deny\""),
            1,
            "babel.filter[0]",
            "prefix is required",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.1/8\""),
            3,
            "babel.filter[0].prefix",
            "did you mean 10.0.0.0/8?",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nge = 4"),
            4,
            "babel.filter[0].ge",
            "out of range (8..=32)",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nle = 33"),
            4,
            "babel.filter[0].le",
            "out of range (8..=32)",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"fd00::/8\"\nle = 129"),
            4,
            "babel.filter[0].le",
            "out of range (8..=128)",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nge = 24\nle = 16"),
            5,
            "babel.filter[0].le",
            "le (16) is less than ge (24)",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nlink = \"eth9\"\naction = \"deny\""),
            4,
            "babel.filter[0].link",
            "\"eth9\" is not a babel.interface or a peer",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\""),
            1,
            "babel.filter[0]",
            "action = \"accept\" | \"deny\", or metric = N, is required",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\naction = \"drop\""),
            4,
            "babel.filter[0].action",
            "unknown variant `drop`, expected `accept` or `deny`",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\naction = \"deny\"\nmetric = 10"),
            5,
            "babel.filter[0].metric",
            "means nothing",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nmetric = 65536"),
            4,
            "babel.filter[0].metric",
            "out of range (0..=65535)",
        );
        refused(
            &f("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nmetric = -1"),
            4,
            "babel.filter[0].metric",
            "out of range",
        );
        // A link may be a babel.interface or a peer (by its name, or its key prefix when nameless).
        let ok = f(&format!("direction = \"in\"\nprefix = \"10.0.0.0/8\"\nlink = \"{}\"\naction = \"accept\"\nmetric = 5", &ANON[..8]));
        assert_eq!(
            with(&ok).unwrap().filters[0].action,
            FilterAction::AddMetric(5)
        );
        let ok = format!("[[babel.interface]]\nname = \"eth1\"\n{}", f("direction = \"out\"\nprefix = \"10.0.0.0/8\"\nlink = \"eth1\"\naction = \"accept\""));
        assert_eq!(with(&ok).unwrap().filters[0].link.as_deref(), Some("eth1"));
    }

    #[test]
    fn data_plane_errors_come_first_and_unchanged() {
        let text = format!(
            "{}\n[babel]\ncolour = 1\n",
            base().replace("class = \"trunk\"", "class = \"backbone\"")
        );
        let e = parse_str(&text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (7, "peer[0].class"), "{e}");
        let e = parse_str("[bable]\n").unwrap_err();
        assert!(e.message.contains("bable"), "{e}");
    }

    #[test]
    fn the_documented_example_parses() {
        use std::os::unix::fs::PermissionsExt as _;
        let text = include_str!("../../docs/isthmus.example.toml");
        let dir = std::env::temp_dir().join(format!("isthmus-cp-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("private.key");
        std::fs::write(&f, Key::generate_private().to_base64()).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(text, &dir.join("isthmus.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        let b = c.unwrap().babel;
        assert_eq!(b.router_id, Some([2, 0, 0, 0, 0, 0, 0x0a, 1]));
        // Its bounds are the defaults, written out.
        assert_eq!(b.limits, Limits::default());
        assert_eq!(b.max_status_clients, MAX_STATUS_CLIENTS);
        assert_eq!(b.originate.len(), 2);
        assert_eq!(b.interfaces.len(), 2);
        assert_eq!(b.interfaces[1].params.rxcost, 384);
        assert_eq!(b.interfaces[1].params.hello_interval, ms(2000));
        assert_eq!(b.peers[0].params.hello_interval, ms(1000));
        assert_eq!(b.peers[0].params.rtt_max, ms(200));
        assert_eq!(b.filters.len(), 3);
        let first = |d, l, p| b.first_filter(d, l, &net(p)).map(|f| f.action);
        assert_eq!(
            first(Direction::In, "trunk-south", "10.20.0.0/16"),
            Some(FilterAction::AddMetric(128))
        );
        assert_eq!(
            first(Direction::In, "trunk-south", "10.20.1.128/25"),
            Some(FilterAction::Deny)
        );
        assert_eq!(first(Direction::In, "roof-12", "10.20.1.128/25"), None);
        assert_eq!(
            first(Direction::Out, "eth1", "10.10.99.0/24"),
            Some(FilterAction::Deny)
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("isthmus-cp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("gw.toml");
        std::fs::write(&f, format!("{}{FULL}", base())).unwrap();
        let c = load(&f).unwrap();
        assert_eq!(c.path, f);
        assert_eq!(c.babel.interfaces.len(), 2);
        std::fs::write(&f, format!("{}[babel]\nmetrics = \"x\"\n", base())).unwrap();
        let e = load(&f).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:16: babel.metrics: invalid socket address \"x\" (expected IP:PORT or \"off\")",
                f.display()
            )
        );
        let e = load(&dir.join("missing.toml")).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (0, "(file)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
