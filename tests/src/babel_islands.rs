//! The demo's topology with Babel: two mesh islands run by babeld, joined by isthmus gateways
//! (isthmus-dp + isthmus-cp) over one or more WireGuard trunks, with no static routes.
//!
//! ```text
//!  h1 ── r1 ──┬── g1a ══ trunk a ══ g2a ──┬── r2 ── h2
//!             └── g1b ══ trunk b ══ g2b ──┘
//! ```
//!
//! Island 1 is `10.1.1.0/24`, `fd00:1:1::/64` (host h1 `.2`, router r1 `.1`), island 2 the
//! same with 2. r1 and r2 are babeld routers that redistribute their host subnet; their links
//! to the gateways carry only IPv6 link-local addresses (IPv4 routes go v4-via-v6). Each
//! gateway's isthmus-cp speaks Babel to its island router on that veth and to the gateway
//! across its trunk through the data plane; trunk `k`'s underlay is `10.10{k}.0.{1,2}/24`.
//!
//! The gateways' helpers ([`show_fib`], [`fib_has`], [`gateway_diagnostics`]) also serve a
//! gateway started on its own: an isthmus-dp from [`WgIface::start_config`] and its
//! [`IsthmusCp::start_gateway`].

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::babel::{Babeld, IsthmusCp};
use crate::lab::log_tail;
use crate::topology::{endpoint, Topology};
use crate::wg::{ConfigPeer, IsthmusConfig, Keypair, WgIface, WgImpl};

/// One isthmus gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Node name (`g1a`, `g2b`, ...).
    pub node: String,
    /// 1 or 2.
    pub island: u8,
    /// Trunk index (0 = a).
    pub trunk: usize,
    /// The name of its trunk peer in its configuration (`gw-2a` on `g1a`): the next hop its
    /// FIB shows for the other island.
    pub trunk_peer: String,
    /// The veth towards the island router.
    pub island_if: String,
    /// The underlay veth of its trunk.
    pub underlay_if: String,
    /// Its control plane, reading the data plane's configuration file.
    pub cp: IsthmusCp<'static>,
}

/// How to build [`BabelIslands`].
#[derive(Debug, Clone, Default)]
pub struct IslandsSpec {
    /// Gateway pairs (trunks a, b, ...).
    pub trunks: usize,
    /// Hello interval everywhere, in seconds.
    pub hello: u32,
    /// `[babel.trunk] cost` of trunk `k` on both its gateways; isthmus-cp's default where
    /// there is no entry. Unequal costs make the cheapest trunk the preferred one.
    pub trunk_costs: Vec<u32>,
    /// Run the gateways' data planes on the AF_XDP backend with this `xdp_mode` ("native",
    /// "generic" or "auto"): the trunk's veth as underlay, the island's as mesh interface.
    pub afxdp: Option<String>,
    /// The trunk peers' fast liveness probe, both ends: `(interval in seconds, misses)`.
    pub liveness: Option<(f64, u32)>,
}

/// The topology, built and running (except the island routers: see [`BabelIslands::routers`]).
pub struct BabelIslands {
    /// Gateways, island 1 first, by trunk (before `t`: they stop before the namespaces go).
    pub gateways: Vec<Gateway>,
    /// Namespaces, links and data planes.
    pub t: Topology,
    /// r1's and r2's interfaces towards their gateways (by trunk), and towards their host.
    pub router_ifs: [(Vec<String>, String); 2],
    /// Hello interval everywhere, in seconds.
    pub hello: u32,
}

impl BabelIslands {
    /// Builds the islands with `trunks` gateway pairs, `hello` seconds between hellos.
    ///
    /// # Errors
    /// When any step fails.
    pub fn build(trunks: usize, hello: u32) -> Result<Self> {
        Self::build_spec(&IslandsSpec {
            trunks,
            hello,
            ..IslandsSpec::default()
        })
    }

    /// Builds the islands as `spec` says.
    ///
    /// # Errors
    /// When any step fails.
    pub fn build_spec(spec: &IslandsSpec) -> Result<Self> {
        if !WgImpl::Isthmus.is_real_isthmus() {
            bail!("the Babel islands need the real isthmus-dp");
        }
        let hello = spec.hello;
        let mut t = Topology::new()?;
        for n in ["h1", "r1", "r2", "h2"] {
            t.add_node(n)?;
        }
        let mut router_ifs: [(Vec<String>, String); 2] = Default::default();
        for i in 1..=2u8 {
            let (h, r) = (format!("h{i}"), format!("r{i}"));
            let (_, r_if) = t.link(
                &h,
                &[&format!("10.{i}.1.2/24"), &format!("fd00:{i}:1::2/64")],
                &r,
                &[&format!("10.{i}.1.1/24"), &format!("fd00:{i}:1::1/64")],
            )?;
            router_ifs[usize::from(i - 1)].1 = r_if;
            let hn = t.ns(&h).clone();
            hn.route(&["default", "via", &format!("10.{i}.1.1")])?;
            hn.route(&["default", "via", &format!("fd00:{i}:1::1")])?;
            t.ns(&r).set_forwarding(true)?;
        }
        let mut gateways = Vec::new();
        for k in 0..spec.trunks {
            let letter = char::from(b'a' + u8::try_from(k).context("too many trunks")?);
            let (g1, g2) = (format!("g1{letter}"), format!("g2{letter}"));
            t.add_node(&g1)?;
            t.add_node(&g2)?;
            let (u1, u2) = t.link(
                &g1,
                &[&format!("10.10{k}.0.1/24")],
                &g2,
                &[&format!("10.10{k}.0.2/24")],
            )?;
            let keys = [Keypair::generate()?, Keypair::generate()?];
            let cost = spec
                .trunk_costs
                .get(k)
                .map_or_else(String::new, |c| format!("cost = {c}\n"));
            for (i, g, under) in [(1u8, &g1, &u1), (2u8, &g2, &u2)] {
                let r = format!("r{i}");
                let (r_if, g_if) = t.link(&r, &[], g, &[])?;
                if spec.afxdp.as_deref() == Some("generic") {
                    // A veth hands its peer TSO super-packets, which a wire never carries
                    // and generic XDP sees whole: the router sends frames of the MTU, as
                    // over a real link.
                    t.ns(&r)
                        .exec(&["ethtool", "-K", &r_if, "tso", "off", "gso", "off"])?;
                }
                router_ifs[usize::from(i - 1)].0.push(r_if);
                t.ns(g).set_forwarding(true)?;
                let me = usize::from(i - 1);
                let babel = format!(
                    "[babel]\nmetrics = \"127.0.0.1:9587\"\n\
                     [babel.wired]\nhello_interval = {hello}\n\
                     [babel.trunk]\nhello_interval = {hello}\n{cost}\
                     [[babel.interface]]\nname = \"{g_if}\"\n"
                );
                let trunk_peer = format!("gw-{}{letter}", 3 - i);
                let cfg = IsthmusConfig {
                    listen_port: 51820,
                    addresses: vec![format!("fe80::{i}{letter}/64")],
                    keys: Some(keys[me].clone()),
                    peers: vec![ConfigPeer {
                        name: trunk_peer.clone(),
                        class: "trunk".into(),
                        public_key: keys[1 - me].public.clone(),
                        endpoint: Some(endpoint(&format!("10.10{k}.0.{}", 3 - i), 51820)),
                        allowed_ips: vec!["fe80::/64".into()],
                        keepalive: Some(5),
                        extra: spec.liveness.map_or_else(String::new, |(i, m)| {
                            format!("liveness_interval = {i}\nliveness_misses = {m}\n")
                        }),
                    }],
                    routes: Vec::new(),
                    babel: Some(babel),
                    interface_extra: spec.afxdp.as_ref().map_or_else(String::new, |mode| {
                        format!(
                            "backend = \"afxdp\"\nunderlay = [{under:?}]\nmesh = [{g_if:?}]\nxdp_mode = {mode:?}\n"
                        )
                    }),
                };
                let config = t
                    .add_isthmus_config(g, &cfg)?
                    .config
                    .clone()
                    .context("isthmus-dp started without its file")?;
                let cp = IsthmusCp::start_gateway(t.ns(g), &t.lab, g, &config)?;
                gateways.push(Gateway {
                    node: g.clone(),
                    island: i,
                    trunk: k,
                    trunk_peer,
                    island_if: g_if,
                    underlay_if: under.clone(),
                    cp,
                });
            }
        }
        gateways.sort_by_key(|g| (g.island, g.trunk));
        Ok(Self {
            gateways,
            t,
            router_ifs,
            hello,
        })
    }

    /// Starts babeld on r1 and r2 (redistributing their host subnets). They share their
    /// namespaces, so the islands can still be changed ([`BabelIslands::restart_cp`]) while
    /// they run.
    ///
    /// # Errors
    /// When babeld does not start.
    pub fn routers(&self) -> Result<[Babeld<'static>; 2]> {
        let start = |i: usize| {
            let (ifs, host_if) = &self.router_ifs[i];
            let mut names: Vec<&str> = ifs.iter().map(String::as_str).collect();
            names.push(host_if);
            let hello = self.hello;
            let extra = format!(
                "{}redistribute if {host_if} metric 128\n",
                ifs.iter()
                    .map(|f| format!("interface {f} hello-interval {hello}\n"))
                    .collect::<String>()
            );
            Babeld::start_shared(
                self.t.ns(&format!("r{}", i + 1)),
                &self.t.lab,
                &format!("r{}", i + 1),
                &names,
                &extra,
            )
        };
        Ok([start(0)?, start(1)?])
    }

    /// A gateway by node name.
    ///
    /// # Panics
    /// When there is none.
    #[must_use]
    pub fn gateway(&self, node: &str) -> &Gateway {
        self.gateways
            .iter()
            .find(|g| g.node == node)
            .unwrap_or_else(|| panic!("no gateway {node}"))
    }

    /// The gateway of `island` (1 or 2) on trunk `k`.
    ///
    /// # Panics
    /// When there is none.
    #[must_use]
    pub fn gateway_of(&self, island: u8, k: usize) -> &Gateway {
        self.gateways
            .iter()
            .find(|g| g.island == island && g.trunk == k)
            .unwrap_or_else(|| panic!("no gateway of island {island} on trunk {k}"))
    }

    /// `isthmusctl show WHAT` against a gateway's isthmus-cp (or `fib`: its data plane).
    ///
    /// # Errors
    /// When isthmusctl fails.
    pub fn show(&self, node: &str, what: &str) -> Result<String> {
        if what == "fib" {
            return show_fib(self.t.wg(node));
        }
        self.gateway(node).cp.status(what)
    }

    /// Whether a gateway's FIB routes `prefix` to the peer `via` by Babel.
    #[must_use]
    pub fn fib_has(&self, node: &str, prefix: &str, via: &str) -> bool {
        fib_has(self.t.wg(node), prefix, via)
    }

    /// Takes trunk `k`'s underlay down (both ends) or up.
    ///
    /// # Errors
    /// When `ip link` fails.
    pub fn set_trunk(&self, k: usize, up: bool) -> Result<()> {
        for g in self.gateways.iter().filter(|g| g.trunk == k) {
            self.t.ns(&g.node).exec(&[
                "ip",
                "link",
                "set",
                &g.underlay_if,
                if up { "up" } else { "down" },
            ])?;
        }
        Ok(())
    }

    /// The trunk r1 currently routes island 2's IPv4 subnet through, if any.
    #[must_use]
    pub fn trunk_in_use(&self) -> Option<usize> {
        let out = self
            .t
            .ns("r1")
            .exec(&["ip", "route", "show", "10.2.1.0/24"])
            .ok()?;
        let dev = out.split_whitespace().skip_while(|w| *w != "dev").nth(1)?;
        self.router_ifs[0].0.iter().position(|f| f == dev)
    }

    /// A failover: waits until r1 routes island 2 through a trunk, pings h2 from h1 every
    /// 10 ms, cuts that trunk (its underlay down at both ends), waits until 100 more replies
    /// came (at most `timeout`), and brings the trunk back. Returns the trunk cut, the one
    /// in use afterwards, and the probe's result (its longest gap is the outage).
    ///
    /// # Errors
    /// When no trunk carries the traffic, or it does not resume within `timeout`.
    pub fn failover(
        &self,
        timeout: Duration,
    ) -> Result<(usize, Option<usize>, crate::babel::ProbeResult)> {
        let h1 = self.t.ns("h1");
        let deadline = Instant::now() + Duration::from_secs(60);
        let k = loop {
            if let Some(k) = self.trunk_in_use() {
                if h1.wait_ping("10.2.1.2", Duration::from_secs(5)).is_ok() {
                    break k;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no trunk carries island 2's traffic\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let probe = crate::babel::PingProbe::start_from(h1, Some("10.1.1.2"), "10.2.1.2", 10)?;
        probe.wait_replies(50, Duration::from_secs(5))?;
        let before = probe.replies_so_far();
        self.set_trunk(k, false)?;
        let resumed = probe.wait_replies(before + 100, timeout);
        let after = self.trunk_in_use();
        let result = probe.finish()?;
        self.set_trunk(k, true)?;
        resumed.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.diagnostics()))?;
        Ok((k, after, result))
    }

    /// Kills a gateway's isthmus-cp with SIGKILL and waits for it to exit.
    pub fn kill_cp(&self, node: &str) {
        self.gateway(node).cp.kill();
    }

    /// Starts a gateway's isthmus-cp again (after [`BabelIslands::kill_cp`]).
    ///
    /// # Errors
    /// When it does not start.
    pub fn restart_cp(&mut self, node: &str) -> Result<()> {
        let config = self
            .t
            .wg(node)
            .config
            .clone()
            .context("isthmus-dp started without its file")?;
        let i = self
            .gateways
            .iter()
            .position(|g| g.node == node)
            .with_context(|| format!("no gateway {node}"))?;
        self.gateways[i].cp =
            IsthmusCp::start_gateway(self.t.ns(node), &self.t.lab, node, &config)?;
        Ok(())
    }

    /// Every gateway's state ([`gateway_diagnostics`]) and the island routers' kernel
    /// routes, for error messages.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for r in ["r1", "r2"] {
            let _ = writeln!(
                s,
                "===== router {r} ({}) kernel routes:\n{}",
                self.t.ns(r).name(),
                kernel_tables(self.t.ns(r))
            );
        }
        for g in &self.gateways {
            s.push_str(&gateway_diagnostics(&g.node, self.t.wg(&g.node), &g.cp));
        }
        s
    }

    /// Waits until `ns` has a usable route to `prefix`.
    ///
    /// # Errors
    /// On timeout, with every gateway's view.
    pub fn wait_route(&self, node: &str, prefix: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let family = if prefix.contains(':') { "-6" } else { "-4" };
            let out = self
                .t
                .ns(node)
                .exec(&["ip", family, "route", "show", prefix])?;
            if !out.trim().is_empty() && !out.contains("unreachable") {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{node}: no route to {prefix} after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `isthmusctl show fib IFNAME` against an isthmus-dp.
///
/// # Errors
/// When isthmusctl fails.
pub fn show_fib(dp: &WgIface) -> Result<String> {
    let ctl = IsthmusCp::ctl_binary()?;
    dp.ns
        .exec_timeout(&[&ctl.to_string_lossy(), "show", "fib", &dp.ifname], 10)
}

/// Whether an isthmus-dp's FIB routes `prefix` to the peer named `via`, learned by Babel.
#[must_use]
pub fn fib_has(dp: &WgIface, prefix: &str, via: &str) -> bool {
    show_fib(dp).is_ok_and(|fib| {
        fib.lines()
            .any(|l| l.split_whitespace().eq([prefix, via, "babel"]))
    })
}

fn kernel_tables(ns: &crate::netns::Netns) -> String {
    ns.exec(&["sh", "-c", "ip -4 route; ip -6 route"])
        .unwrap_or_else(|e| format!("{e:#}"))
}

/// Everything worth printing about a gateway `name` (its data plane `dp`, its control plane
/// `cp`) when something fails: isthmus-cp's status pages and log, the FIB, the kernel's
/// routes, the end of isthmus-dp's log.
#[must_use]
pub fn gateway_diagnostics(name: &str, dp: &WgIface, cp: &IsthmusCp<'_>) -> String {
    format!(
        "===== gateway {name} ({}, {}; isthmus-dp alive: {}) =====\n{}\n--- show fib:\n{}--- kernel routes:\n{}--- isthmus-dp log tail:\n{}\n",
        dp.ns.name(),
        dp.ifname,
        dp.alive(),
        cp.diagnostics(),
        show_fib(dp).unwrap_or_else(|e| format!("{e:#}\n")),
        kernel_tables(&dp.ns),
        log_tail(&dp.log, 15)
    )
}
