//! The configuration of `isthmus-cp`: the data plane's file (`docs/config.md`), read whole by
//! the data plane's loader, plus its `[babel]` section, read here.
//!
//! Errors in `[babel]` look like the data plane's: `gw.toml:31: babel.interface[0].class:
//! expected "wired", "mesh" or "trunk", got "wifi"`.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use isthmus_dataplane::config::{ConfigError, DeviceConfig, Source};
use isthmus_dataplane::keys::Key;
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The longest interval Babel can carry: intervals travel as centiseconds in 16 bits.
pub const MAX_INTERVAL: Duration = Duration::from_secs(655);

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
}

impl Default for BabelConfig {
    fn default() -> Self {
        Self {
            router_id: None,
            control_socket: None,
            metrics: None,
            metrics_off: false,
            kernel_routes: true,
            kernel_table: 254,
            retract_on_shutdown: false,
            originate: Vec::new(),
            default_route: DefaultRoute::Ignore,
            ipv4_next_hop: None,
            link_local: None,
            classes: LinkClasses::default(),
            interfaces: Vec::new(),
            peers: Vec::new(),
            filters: Vec::new(),
        }
    }
}

impl BabelConfig {
    /// The first filter matching a route, if any.
    pub fn first_filter(&self, dir: Direction, link: &str, prefix: &IpNet) -> Option<&Filter> {
        self.filters.iter().find(|f| f.matches(dir, link, prefix))
    }
}

/// `default_route`: what happens to 0.0.0.0/0 and ::/0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultRoute {
    /// Learned default routes are filtered (the default).
    #[default]
    Ignore,
    /// Learned default routes are accepted like any other route.
    Accept,
    /// This gateway announces default routes (and ignores learned ones).
    Originate,
}

/// A Babel link class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LinkClass {
    /// A wired LAN (the default for interfaces).
    #[default]
    Wired,
    /// A lossy wireless mesh link.
    Mesh,
    /// A long-haul trunk between islands.
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

/// How a link's cost is computed from hello receptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostModel {
    /// `"2-out-of-3"` (RFC 8966 A.2.1): `cost` if two of the last three hellos arrived.
    TwoOutOfThree,
    /// `"etx"` (RFC 8966 A.2.2): `cost` scaled by the expected transmission count.
    Etx,
}

impl CostModel {
    /// `2-out-of-3` or `etx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TwoOutOfThree => "2-out-of-3",
            Self::Etx => "etx",
        }
    }
}

/// Parameters of one link (or class of links).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkParams {
    /// `hello_interval` (default 4 s).
    pub hello_interval: Duration,
    /// `update_interval` (default 4 × hello_interval).
    pub update_interval: Duration,
    /// `ihu_interval` (default 3 × hello_interval).
    pub ihu_interval: Duration,
    /// `cost`: the nominal receive cost (wired 96, mesh 256, trunk 96).
    pub rxcost: u16,
    /// `cost_model` (wired and trunk 2-out-of-3, mesh etx).
    pub cost_model: CostModel,
    /// `timestamps`: RFC 9616 timestamps for RTT (trunk true, otherwise false).
    pub timestamps: bool,
    /// `rtt_min` (default 10 ms): RTTs up to this add no cost.
    pub rtt_min: Duration,
    /// `rtt_max` (default 120 ms): RTTs from this add `max_rtt_penalty`.
    pub rtt_max: Duration,
    /// `max_rtt_penalty` (trunk 150, otherwise 0).
    pub max_rtt_penalty: u16,
}

impl Default for LinkParams {
    /// The wired defaults.
    fn default() -> Self {
        Self::for_class(LinkClass::Wired)
    }
}

impl LinkParams {
    /// The built-in defaults of a class.
    pub fn for_class(class: LinkClass) -> Self {
        let hello = Duration::from_secs(4);
        Self {
            hello_interval: hello,
            update_interval: hello * 4,
            ihu_interval: hello * 3,
            rxcost: match class {
                LinkClass::Mesh => 256,
                LinkClass::Wired | LinkClass::Trunk => 96,
            },
            cost_model: match class {
                LinkClass::Mesh => CostModel::Etx,
                LinkClass::Wired | LinkClass::Trunk => CostModel::TwoOutOfThree,
            },
            timestamps: class == LinkClass::Trunk,
            rtt_min: Duration::from_millis(10),
            rtt_max: Duration::from_millis(120),
            max_rtt_penalty: if class == LinkClass::Trunk { 150 } else { 0 },
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
}

/// The direction a filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `"in"`: routes learned from neighbours.
    In,
    /// `"out"`: routes announced to neighbours.
    Out,
}

/// What a matching filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    /// `action = "accept"`.
    Accept,
    /// `action = "deny"`.
    Deny,
    /// `metric = N`: accept, adding N to the metric.
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
    let cx = Ctx(Source::new(path, text));
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("syntax error")
            .to_string();
        cx.err(span.clone(), key_path_at(text, span), msg)
    })?;
    let babel = match &raw.babel {
        Some(b) => cx.babel(b, &device)?,
        None => cx.babel(&RawBabel::default(), &device)?,
    };
    Ok(CpConfig {
        device,
        babel,
        path: path.to_path_buf(),
    })
}

/// The dotted key path of the key or value at `span`, from the table headers above it:
/// `babel.interface[1].colour`.
fn key_path_at(text: &str, span: Range<usize>) -> String {
    let start = span.start.min(text.len());
    let mut table = String::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        // Headers up to and including the line of the error.
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = seen.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
        if line_start + line.len() > start {
            break;
        }
        line_start += line.len();
    }
    let line = text[line_start..].lines().next().unwrap_or("");
    let at = text.get(span.clone()).unwrap_or("");
    let is_key = !at.is_empty()
        && at
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    let key = if is_key && line.trim_start().starts_with(at) {
        at.to_string()
    } else {
        match line.split_once('=') {
            Some((k, _)) if !line.trim_start().starts_with('[') => k.trim().to_string(),
            _ => String::new(),
        }
    };
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(syntax)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// A number of seconds, written as an integer or a float.
struct Seconds(f64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
        }
        d.deserialize_any(V)
    }
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
    router_id: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    metrics_public: Option<Spanned<bool>>,
    kernel_routes: Option<Spanned<bool>>,
    kernel_table: Option<Spanned<i64>>,
    retract_on_shutdown: Option<Spanned<bool>>,
    #[serde(default)]
    originate: Vec<Spanned<String>>,
    default_route: Option<Spanned<String>>,
    ipv4_next_hop: Option<Spanned<String>>,
    link_local: Option<Spanned<String>>,
    wired: Option<RawClass>,
    mesh: Option<RawClass>,
    trunk: Option<RawClass>,
    #[serde(default)]
    interface: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    filter: Vec<Spanned<RawFilter>>,
}

/// Borrowed link-parameter keys of one table.
#[derive(Clone, Copy, Default)]
struct Overrides<'a> {
    hello_interval: Option<&'a Spanned<Seconds>>,
    update_interval: Option<&'a Spanned<Seconds>>,
    ihu_interval: Option<&'a Spanned<Seconds>>,
    cost: Option<&'a Spanned<i64>>,
    cost_model: Option<&'a Spanned<String>>,
    timestamps: Option<&'a Spanned<bool>>,
    rtt_min: Option<&'a Spanned<Seconds>>,
    rtt_max: Option<&'a Spanned<Seconds>>,
    max_rtt_penalty: Option<&'a Spanned<i64>>,
}

/// A raw table with its own fields plus the link-parameter keys (serde's `flatten` cannot be
/// combined with `deny_unknown_fields` or `Spanned`).
macro_rules! with_link_params {
    ($name:ident { $($(#[$fm:meta])* $f:ident : $t:ty,)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($(#[$fm])* $f: $t,)*
            hello_interval: Option<Spanned<Seconds>>,
            update_interval: Option<Spanned<Seconds>>,
            ihu_interval: Option<Spanned<Seconds>>,
            cost: Option<Spanned<i64>>,
            cost_model: Option<Spanned<String>>,
            timestamps: Option<Spanned<bool>>,
            rtt_min: Option<Spanned<Seconds>>,
            rtt_max: Option<Spanned<Seconds>>,
            max_rtt_penalty: Option<Spanned<i64>>,
        }

        impl $name {
            fn overrides(&self) -> Overrides<'_> {
                Overrides {
                    hello_interval: self.hello_interval.as_ref(),
                    update_interval: self.update_interval.as_ref(),
                    ihu_interval: self.ihu_interval.as_ref(),
                    cost: self.cost.as_ref(),
                    cost_model: self.cost_model.as_ref(),
                    timestamps: self.timestamps.as_ref(),
                    rtt_min: self.rtt_min.as_ref(),
                    rtt_max: self.rtt_max.as_ref(),
                    max_rtt_penalty: self.max_rtt_penalty.as_ref(),
                }
            }
        }
    };
}

with_link_params!(RawClass {});
with_link_params!(RawInterface {
    name: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
});
with_link_params!(RawPeer {
    name: Option<Spanned<String>>,
    enabled: Option<Spanned<bool>>,
    class: Option<Spanned<String>>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    direction: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    ge: Option<Spanned<i64>>,
    le: Option<Spanned<i64>>,
    link: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    metric: Option<Spanned<i64>>,
}

struct Ctx<'a>(Source<'a>);

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = Source<'a>;
    fn deref(&self) -> &Source<'a> {
        &self.0
    }
}

impl Ctx<'_> {
    fn int<T: TryFrom<i64>>(
        &self,
        v: &Spanned<i64>,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Result<T, ConfigError> {
        let n = *v.get_ref();
        let out = || {
            self.err(
                v.span(),
                key,
                format!("{n} is out of range ({}..={})", range.start(), range.end()),
            )
        };
        if !range.contains(&n) {
            return Err(out());
        }
        T::try_from(n).map_err(|_| out())
    }

    fn secs(
        &self,
        v: &Spanned<Seconds>,
        key: &str,
        min: f64,
        min_inclusive: bool,
        why: &str,
    ) -> Result<Duration, ConfigError> {
        let s = v.get_ref().0;
        let max = MAX_INTERVAL.as_secs_f64();
        let low_ok = if min_inclusive { s >= min } else { s > min };
        if !s.is_finite() || !low_ok || s > max {
            let lo = if min_inclusive {
                "at least"
            } else {
                "more than"
            };
            return Err(self.err(
                v.span(),
                key,
                format!("{s} s is out of range: must be {lo} {min} s and at most {max} s{why}"),
            ));
        }
        Ok(Duration::from_micros((s * 1e6).round() as u64))
    }

    fn interval(&self, v: &Spanned<Seconds>, key: &str) -> Result<Duration, ConfigError> {
        self.secs(
            v,
            key,
            0.01,
            true,
            " (Babel carries intervals in centiseconds, in 16 bits)",
        )
    }

    fn class(&self, v: &Spanned<String>, key: &str) -> Result<LinkClass, ConfigError> {
        match v.get_ref().as_str() {
            "wired" => Ok(LinkClass::Wired),
            "mesh" => Ok(LinkClass::Mesh),
            "trunk" => Ok(LinkClass::Trunk),
            other => Err(self.err(
                v.span(),
                key,
                format!("expected \"wired\", \"mesh\" or \"trunk\", got {other:?}"),
            )),
        }
    }

    /// The parameters of a link of `class`: built-in defaults, then each layer's overrides
    /// (the class table, then the link's own). `update_interval` and `ihu_interval` not set
    /// in any layer follow the resulting `hello_interval`.
    fn resolve(
        &self,
        class: LinkClass,
        layers: &[(String, Overrides<'_>)],
    ) -> Result<LinkParams, ConfigError> {
        let mut p = LinkParams::for_class(class);
        let mut hello_at: Option<(Range<usize>, String)> = None;
        let mut rtt_at: Option<(Range<usize>, String)> = None;
        let (mut update_set, mut ihu_set) = (false, false);
        for (table, o) in layers {
            let k = |f: &str| format!("{table}.{f}");
            if let Some(v) = o.hello_interval {
                p.hello_interval = self.interval(v, &k("hello_interval"))?;
                hello_at = Some((v.span(), k("hello_interval")));
            }
            if let Some(v) = o.update_interval {
                p.update_interval = self.interval(v, &k("update_interval"))?;
                update_set = true;
            }
            if let Some(v) = o.ihu_interval {
                p.ihu_interval = self.interval(v, &k("ihu_interval"))?;
                ihu_set = true;
            }
            if let Some(v) = o.cost {
                p.rxcost = self.int(v, &k("cost"), 1..=65535)?;
            }
            if let Some(v) = o.cost_model {
                p.cost_model = match v.get_ref().as_str() {
                    "2-out-of-3" => CostModel::TwoOutOfThree,
                    "etx" => CostModel::Etx,
                    other => {
                        return Err(self.err(
                            v.span(),
                            k("cost_model"),
                            format!("expected \"2-out-of-3\" or \"etx\", got {other:?}"),
                        ))
                    }
                };
            }
            if let Some(v) = o.timestamps {
                p.timestamps = *v.get_ref();
            }
            // The later of rtt_min and rtt_max in the most specific layer that sets either
            // is blamed if they end up in the wrong order.
            let mut layer_rtt: Option<(Range<usize>, String)> = None;
            let mut blame = |v: &Spanned<Seconds>, key: String| {
                if !matches!(&layer_rtt, Some((s, _)) if s.start > v.span().start) {
                    layer_rtt = Some((v.span(), key));
                }
            };
            if let Some(v) = o.rtt_min {
                p.rtt_min = self.secs(v, &k("rtt_min"), 0.0, true, "")?;
                blame(v, k("rtt_min"));
            }
            if let Some(v) = o.rtt_max {
                p.rtt_max = self.secs(v, &k("rtt_max"), 0.0, false, "")?;
                blame(v, k("rtt_max"));
            }
            if layer_rtt.is_some() {
                rtt_at = layer_rtt;
            }
            if let Some(v) = o.max_rtt_penalty {
                p.max_rtt_penalty = self.int(v, &k("max_rtt_penalty"), 0..=65535)?;
            }
        }
        for (set, factor, name) in [
            (update_set, 4, "update_interval"),
            (ihu_set, 3, "ihu_interval"),
        ] {
            if set {
                continue;
            }
            let derived = p.hello_interval * factor;
            if derived > MAX_INTERVAL {
                let (span, key) = hello_at.clone().unwrap_or((0..0, "hello_interval".into()));
                return Err(self.err(
                    span,
                    key,
                    format!(
                        "{name} defaults to {factor} × hello_interval = {} s, more than {} s; set {name} explicitly",
                        derived.as_secs_f64(),
                        MAX_INTERVAL.as_secs()
                    ),
                ));
            }
            if name == "update_interval" {
                p.update_interval = derived;
            } else {
                p.ihu_interval = derived;
            }
        }
        if p.rtt_min >= p.rtt_max {
            let (span, key) = rtt_at.unwrap_or((0..0, "rtt_min".into()));
            return Err(self.err(
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

    fn babel(&self, b: &RawBabel, device: &DeviceConfig) -> Result<BabelConfig, ConfigError> {
        let mut c = BabelConfig::default();
        if let Some(v) = &b.router_id {
            c.router_id = Some(
                parse_router_id(v.get_ref())
                    .map_err(|m| self.err(v.span(), "babel.router_id", m))?,
            );
        }
        c.control_socket = b
            .control_socket
            .as_ref()
            .map(|s| PathBuf::from(s.get_ref()));
        if let Some(v) = &b.metrics {
            if v.get_ref() == "off" {
                c.metrics_off = true;
            } else {
                let public = b.metrics_public.as_ref().is_some_and(|p| *p.get_ref());
                let a = self.metrics_addr(v, "babel.metrics", public, "IP:PORT or \"off\"")?;
                c.metrics = Some(a);
            }
        }
        if let Some(v) = &b.kernel_routes {
            c.kernel_routes = *v.get_ref();
        }
        if let Some(v) = &b.kernel_table {
            c.kernel_table = self.int(v, "babel.kernel_table", 1..=u32::MAX as i64)?;
            if c.kernel_table == 255 {
                return Err(self.err(
                    v.span(),
                    "babel.kernel_table",
                    "255 is the kernel's local table; choose another",
                ));
            }
        }
        if let Some(v) = &b.retract_on_shutdown {
            c.retract_on_shutdown = *v.get_ref();
        }
        if let Some(v) = &b.default_route {
            c.default_route = match v.get_ref().as_str() {
                "ignore" => DefaultRoute::Ignore,
                "accept" => DefaultRoute::Accept,
                "originate" => DefaultRoute::Originate,
                other => {
                    return Err(self.err(
                        v.span(),
                        "babel.default_route",
                        format!("expected \"ignore\", \"accept\" or \"originate\", got {other:?}"),
                    ))
                }
            };
        }
        for (n, v) in b.originate.iter().enumerate() {
            let key = format!("babel.originate[{n}]");
            let net = self.prefix(v, &key)?;
            if net.prefix_len() == 0 {
                return Err(self.err(
                    v.span(),
                    key,
                    "default routes are announced with default_route = \"originate\"",
                ));
            }
            if let Some(dup) = c.originate.iter().position(|o| *o == net) {
                return Err(self.err(
                    v.span(),
                    key,
                    format!("{net} is already babel.originate[{dup}]"),
                ));
            }
            c.originate.push(net);
        }
        if let Some(v) = &b.ipv4_next_hop {
            let a: Ipv4Addr = v.get_ref().parse().map_err(|_| {
                self.err(
                    v.span(),
                    "babel.ipv4_next_hop",
                    format!("invalid IPv4 address {:?}", v.get_ref()),
                )
            })?;
            if a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
                return Err(self.err(
                    v.span(),
                    "babel.ipv4_next_hop",
                    format!("{a} is not a unicast address"),
                ));
            }
            c.ipv4_next_hop = Some(a);
        }
        if let Some(v) = &b.link_local {
            let a: Ipv6Addr = v.get_ref().parse().map_err(|_| {
                self.err(
                    v.span(),
                    "babel.link_local",
                    format!("invalid IPv6 address {:?}", v.get_ref()),
                )
            })?;
            if !a.is_unicast_link_local() {
                return Err(self.err(
                    v.span(),
                    "babel.link_local",
                    format!("{a} is not a link-local address (fe80::/10)"),
                ));
            }
            c.link_local = Some(a);
        }

        let layers = |class, own| layers(b, class, own);
        c.classes = LinkClasses {
            wired: self.resolve(LinkClass::Wired, &layers(LinkClass::Wired, None))?,
            mesh: self.resolve(LinkClass::Mesh, &layers(LinkClass::Mesh, None))?,
            trunk: self.resolve(LinkClass::Trunk, &layers(LinkClass::Trunk, None))?,
        };

        let peer_label = |p: &isthmus_dataplane::config::PeerConfig| {
            p.name
                .clone()
                .unwrap_or_else(|| p.public_key.to_base64()[..8].to_string())
        };
        for (n, i) in b.interface.iter().enumerate() {
            let span = i.span();
            let i = i.get_ref();
            let k = |f: &str| format!("babel.interface[{n}].{f}");
            let Some(name) = &i.name else {
                return Err(self.err(span, format!("babel.interface[{n}]"), "name is required"));
            };
            let s = name.get_ref();
            if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
                return Err(self.err(
                    name.span(),
                    k("name"),
                    "must be 1-15 characters without '/' or spaces",
                ));
            }
            if let Some(dup) = c.interfaces.iter().position(|x| x.name == *s) {
                return Err(self.err(
                    name.span(),
                    k("name"),
                    format!("{s:?} is already babel.interface[{dup}]"),
                ));
            }
            if device.interface.name.as_deref() == Some(s) {
                return Err(self.err(
                    name.span(),
                    k("name"),
                    format!("{s:?} is the tunnel device; Babel runs on its peers, each a link of its own"),
                ));
            }
            if let Some(p) = device
                .peers
                .iter()
                .position(|p| p.name.as_deref() == Some(s))
            {
                return Err(self.err(
                    name.span(),
                    k("name"),
                    format!("{s:?} is also the name of peer[{p}]; filter links would be ambiguous"),
                ));
            }
            let class = match &i.class {
                Some(v) => self.class(v, &k("class"))?,
                None => LinkClass::Wired,
            };
            let params = self.resolve(
                class,
                &layers(
                    class,
                    Some((format!("babel.interface[{n}]"), i.overrides())),
                ),
            )?;
            c.interfaces.push(BabelInterface {
                name: s.clone(),
                class,
                params,
            });
        }

        let mut explicit: Vec<Option<(usize, &RawPeer)>> = vec![None; device.peers.len()];
        for (n, p) in b.peer.iter().enumerate() {
            let span = p.span();
            let p = p.get_ref();
            let Some(name) = &p.name else {
                return Err(self.err(span, format!("babel.peer[{n}]"), "name is required"));
            };
            let Some(idx) = device
                .peers
                .iter()
                .position(|d| d.name.as_deref() == Some(name.get_ref()))
            else {
                return Err(self.err(
                    name.span(),
                    format!("babel.peer[{n}].name"),
                    format!("{:?} is not the name of a [[peer]]", name.get_ref()),
                ));
            };
            if let Some((dup, _)) = explicit[idx] {
                return Err(self.err(
                    name.span(),
                    format!("babel.peer[{n}].name"),
                    format!("{:?} is already babel.peer[{dup}]", name.get_ref()),
                ));
            }
            explicit[idx] = Some((n, p));
        }
        for (d, e) in device.peers.iter().zip(&explicit) {
            let dp_class = match d.class {
                isthmus_dataplane::config::LinkClass::Mesh => LinkClass::Mesh,
                isthmus_dataplane::config::LinkClass::Trunk => LinkClass::Trunk,
            };
            let peer = match e {
                None => BabelPeer {
                    name: peer_label(d),
                    public_key: d.public_key,
                    enabled: true,
                    class: dp_class,
                    params: c.classes.get(dp_class).clone(),
                },
                Some((n, p)) => {
                    let class = match &p.class {
                        Some(v) => self.class(v, &format!("babel.peer[{n}].class"))?,
                        None => dp_class,
                    };
                    BabelPeer {
                        name: peer_label(d),
                        public_key: d.public_key,
                        enabled: !matches!(&p.enabled, Some(v) if !*v.get_ref()),
                        class,
                        params: self.resolve(
                            class,
                            &layers(class, Some((format!("babel.peer[{n}]"), p.overrides()))),
                        )?,
                    }
                }
            };
            c.peers.push(peer);
        }

        for (n, f) in b.filter.iter().enumerate() {
            let span = f.span();
            let f = f.get_ref();
            let k = |x: &str| format!("babel.filter[{n}].{x}");
            let Some(dir) = &f.direction else {
                return Err(self.err(
                    span,
                    format!("babel.filter[{n}]"),
                    "direction is required (\"in\" or \"out\")",
                ));
            };
            let direction = match dir.get_ref().as_str() {
                "in" => Direction::In,
                "out" => Direction::Out,
                other => {
                    return Err(self.err(
                        dir.span(),
                        k("direction"),
                        format!("expected \"in\" or \"out\", got {other:?}"),
                    ))
                }
            };
            let Some(prefix) = &f.prefix else {
                return Err(self.err(
                    span,
                    format!("babel.filter[{n}]"),
                    "prefix is required (\"0.0.0.0/0\" with le = 32 matches every IPv4 route)",
                ));
            };
            let prefix = self.prefix(prefix, &k("prefix"))?;
            let range = prefix.prefix_len() as i64..=prefix.max_prefix_len() as i64;
            let ge: Option<u8> = match &f.ge {
                Some(v) => Some(self.int(v, &k("ge"), range.clone())?),
                None => None,
            };
            let le: Option<u8> = match &f.le {
                Some(v) => Some(self.int(v, &k("le"), range.clone())?),
                None => None,
            };
            if let (Some(g), Some(l), Some(v)) = (ge, le, &f.le) {
                if g > l {
                    return Err(self.err(
                        v.span(),
                        k("le"),
                        format!("le ({l}) is less than ge ({g})"),
                    ));
                }
            }
            let link = match &f.link {
                Some(v) => {
                    let s = v.get_ref();
                    let known = c.interfaces.iter().any(|i| i.name == *s)
                        || c.peers.iter().any(|p| p.name == *s);
                    if !known {
                        return Err(self.err(
                            v.span(),
                            k("link"),
                            format!("{s:?} is not a babel.interface or a peer"),
                        ));
                    }
                    Some(s.clone())
                }
                None => None,
            };
            let action = match (&f.action, &f.metric) {
                (None, None) => {
                    return Err(self.err(
                        span,
                        format!("babel.filter[{n}]"),
                        "action = \"accept\" | \"deny\", or metric = N, is required",
                    ))
                }
                (Some(a), m) => match (a.get_ref().as_str(), m) {
                    ("accept", None) => FilterAction::Accept,
                    ("accept", Some(m)) => {
                        FilterAction::AddMetric(self.int(m, &k("metric"), 0..=65535)?)
                    }
                    ("deny", None) => FilterAction::Deny,
                    ("deny", Some(m)) => {
                        return Err(self.err(
                            m.span(),
                            k("metric"),
                            "a metric with action = \"deny\" means nothing",
                        ))
                    }
                    (other, _) => {
                        return Err(self.err(
                            a.span(),
                            k("action"),
                            format!("expected \"accept\" or \"deny\", got {other:?}"),
                        ))
                    }
                },
                (None, Some(m)) => FilterAction::AddMetric(self.int(m, &k("metric"), 0..=65535)?),
            };
            c.filters.push(Filter {
                direction,
                prefix,
                ge,
                le,
                link,
                action,
            });
        }
        Ok(c)
    }
}

/// The override layers of a link of `class`: the class table, if any, then the link's own.
fn layers<'a>(
    b: &'a RawBabel,
    class: LinkClass,
    own: Option<(String, Overrides<'a>)>,
) -> Vec<(String, Overrides<'a>)> {
    let table = match class {
        LinkClass::Wired => &b.wired,
        LinkClass::Mesh => &b.mesh,
        LinkClass::Trunk => &b.trunk,
    };
    table
        .as_ref()
        .map(|t| (format!("babel.{class}"), t.overrides()))
        .into_iter()
        .chain(own)
        .collect()
}

/// `02:00:00:00:00:00:00:01`: eight hex bytes, colon-separated; not all zeros or all ones
/// (RFC 8966 4.1.3).
fn parse_router_id(s: &str) -> Result<[u8; 8], String> {
    let bad = || {
        format!(
            "invalid router id {s:?} (expected eight hex bytes like \"02:00:00:00:00:00:00:01\")"
        )
    };
    let mut id = [0u8; 8];
    let mut parts = s.split(':');
    for b in &mut id {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if id == [0; 8] || id == [0xff; 8] {
        return Err(format!("{s} is reserved (all zeros or all ones)"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut empty = with("[babel]").unwrap();
        assert_eq!(empty, b);
        empty.peers.clear();
        assert_eq!(
            BabelConfig {
                peers: Vec::new(),
                ..BabelConfig::default()
            },
            empty
        );
        // An interface's class defaults to wired, with the wired parameters.
        let b = with("[[babel.interface]]\nname = \"eth1\"").unwrap();
        assert_eq!(b.interfaces[0].class, LinkClass::Wired);
        assert_eq!(
            b.interfaces[0].params,
            LinkParams::for_class(LinkClass::Wired)
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
                params: b.classes.wired.clone()
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
                ..b.classes.mesh.clone()
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
                ..b.classes.mesh.clone()
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
            "expected \"ignore\", \"accept\" or \"originate\", got \"maybe\"",
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
            "expected \"2-out-of-3\" or \"etx\", got \"rtt\"",
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
            "more than 0 s",
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
    fn interface_errors() {
        refused(
            "[[babel.interface]]\nname = \"wlan0\"\nclass = \"wifi\"",
            3,
            "babel.interface[0].class",
            "expected \"wired\", \"mesh\" or \"trunk\", got \"wifi\"",
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
            "expected \"wired\", \"mesh\" or \"trunk\"",
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
            "got \"ETX\"",
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
            "expected \"in\" or \"out\", got \"both\"",
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
            "expected \"accept\" or \"deny\", got \"drop\"",
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
