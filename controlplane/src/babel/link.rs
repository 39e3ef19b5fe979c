//! Link parameters (RFC 8966 Appendix A: costs and intervals) and link classes.
//!
//! [`LinkParams`] is defined once, here, from one list of parameters (`link_params!`):
//! the type, its configuration keys ([`LinkOverrides`], which `crate::config` reads from
//! `[babel.wired]`, `[[babel.interface]]` and the like), and the defaults of each class
//! ([`LinkParams::for_class`]). A new parameter is a line in that list, its default, and
//! its row in `docs/config.md`.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

/// The longest interval Babel can carry: intervals travel as centiseconds in 16 bits.
pub const MAX_INTERVAL: Duration = Duration::from_secs(655);

/// A link's class, which gives its parameters their defaults: the data plane's, shared with
/// its `[[peer]] class`.
pub use isthmus_dataplane::config::LinkClass;

/// How the cost of a link is computed (RFC 8966 Appendix A.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CostModel {
    /// `"2-out-of-3"` (A.2.1): k-out-of-j, for wired-like links.
    #[serde(rename = "2-out-of-3")]
    TwoOutOfThree,
    /// `"etx"` (A.2.2): expected transmission count, for lossy radio links.
    #[serde(rename = "etx")]
    Etx,
}

/// Calls back with the list of link parameters. Each is its doc, its field, its
/// configuration key in brackets when that is not the field's name, its type, and the type
/// its key is read as (one that checks the value's range and converts into the field's
/// type). `link_params!(types)` defines [`LinkParams`] and [`LinkOverrides`];
/// `link_params!(table Name { extra fields })` defines a configuration table `Name` with
/// the extra fields and every parameter's key, and `Name::overrides()`.
macro_rules! link_params {
    (@each $what:tt) => {
        $crate::babel::link::link_params! { @expand $what
            /// Hello interval (`hello_interval`).
            hello_interval: ::std::time::Duration = $crate::babel::link::Interval,
            /// Periodic full update interval (`update_interval`).
            update_interval: ::std::time::Duration = $crate::babel::link::Interval,
            /// IHU interval (`ihu_interval`; advertised, IHUs also ride on every hello).
            ihu_interval: ::std::time::Duration = $crate::babel::link::Interval,
            /// Nominal rxcost (`cost`).
            rxcost ["cost"]: u16 = ::isthmus_dataplane::config::InRange<1, 65535>,
            /// How hellos become a cost (`cost_model`).
            cost_model: $crate::babel::CostModel = $crate::babel::CostModel,
            /// Send and use RFC 9616 timestamps, to measure RTT (`timestamps`).
            timestamps: bool = bool,
            /// RTT below which there is no penalty (`rtt_min`).
            rtt_min: ::std::time::Duration = $crate::babel::link::Delay,
            /// RTT at and above which the full penalty applies (`rtt_max`).
            rtt_max: ::std::time::Duration = $crate::babel::link::Delay,
            /// Largest RTT penalty added to the cost (`max_rtt_penalty`).
            max_rtt_penalty: u16 = ::isthmus_dataplane::config::InRange<0, 65535>,
            /// Send every TLV but hellos to each neighbour by unicast instead of one multicast
            /// packet (`unicast`, babeld's option of that name: for links where multicast is
            /// lossy or expensive, as on Wi-Fi; with timestamps, an IHU goes with an unscheduled
            /// unicast hello, for the RTT).
            unicast: bool = bool,
        }
    };
    (@expand (types) $(
        $(#[doc = $doc:literal])* $field:ident $([$key:literal])?: $ty:ty = $via:ty,
    )*) => {
        /// Per-link protocol parameters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct LinkParams {
            $($(#[doc = $doc])* pub $field: $ty,)*
            /// Do not advertise a route on the link it was learned from (safe on wired and
            /// point-to-point links, not on radio meshes). Not a configuration key: the
            /// class decides it, and the daemon sets it on tunnel peers.
            pub split_horizon: bool,
        }

        /// The link-parameter keys of one configuration table, each optional; a value its
        /// type refuses is a serde error at its span.
        #[derive(Debug, Clone, Default, ::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LinkOverrides {
            $($(#[doc = $doc])* $(#[serde(rename = $key)])? pub $field: Option<::toml::Spanned<$via>>,)*
        }

        impl LinkParams {
            /// These parameters with the keys `o` sets replaced.
            pub fn apply(&mut self, o: &LinkOverrides) {
                $(if let Some(v) = &o.$field {
                    self.$field = (*v.get_ref()).into();
                })*
            }
        }
    };
    (@expand (table $name:ident { $($extra:tt)* }) $(
        $(#[doc = $doc:literal])* $field:ident $([$key:literal])?: $ty:ty = $via:ty,
    )*) => {
        #[derive(::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($extra)*
            $($(#[serde(rename = $key)])? $field: Option<::toml::Spanned<$via>>,)*
        }

        impl $name {
            /// Its link-parameter keys.
            fn overrides(&self) -> $crate::babel::LinkOverrides {
                $crate::babel::LinkOverrides { $($field: self.$field.clone(),)* }
            }
        }
    };
    ($($what:tt)*) => {
        $crate::babel::link::link_params! { @each ($($what)*) }
    };
}
pub(crate) use link_params;

link_params!(types);

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
            unicast: false,
            split_horizon: class != LinkClass::Mesh,
        }
    }

    /// A wired link: 4 s hellos, cost 96, 2-out-of-3.
    pub fn wired() -> Self {
        Self::for_class(LinkClass::Wired)
    }

    /// A lossy mesh link: cost 256, ETX, no split horizon.
    pub fn mesh() -> Self {
        Self::for_class(LinkClass::Mesh)
    }

    /// A trunk (tunnel): wired costs plus timestamps and an RTT penalty up to 150.
    pub fn trunk() -> Self {
        Self::for_class(LinkClass::Trunk)
    }
}

impl Default for LinkParams {
    /// The wired defaults.
    fn default() -> Self {
        Self::wired()
    }
}

/// An interval: 0.01 to 655 seconds, written as an integer or a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

/// A delay (an RTT bound): 0 to 655 seconds, written as an integer or a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay(pub Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let why = " (Babel carries intervals in centiseconds, in 16 bits)";
        d.deserialize_any(Seconds { min: 0.01, why }).map(Self)
    }
}

impl<'de> Deserialize<'de> for Delay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Seconds { min: 0.0, why: "" }).map(Self)
    }
}

impl From<Interval> for Duration {
    fn from(v: Interval) -> Duration {
        v.0
    }
}

impl From<Delay> for Duration {
    fn from(v: Delay) -> Duration {
        v.0
    }
}

/// Seconds from `min` to [`MAX_INTERVAL`], checked while visiting (so that the error has
/// the value's span).
struct Seconds {
    min: f64,
    why: &'static str,
}

impl Visitor<'_> for Seconds {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: serde::de::Error>(self, s: f64) -> Result<Duration, E> {
        let max = MAX_INTERVAL.as_secs_f64();
        if !(self.min..=max).contains(&s) {
            return Err(E::custom(format!(
                "{s} s is out of range: must be at least {} s and at most {max} s{}",
                self.min, self.why
            )));
        }
        Ok(Duration::from_micros((s * 1e6).round() as u64))
    }
}
