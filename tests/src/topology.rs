//! A builder for namespace topologies, shared by the tests and `cargo xtask demo`.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::lab::Lab;
use crate::netns::{veth, Netns};
use crate::wg::{ConfigPeer, IsthmusConfig, Keypair, PeerSpec, WgIface, WgImpl, WgSpec};

/// Underlay or inner address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Named namespaces, links between them and WireGuard interfaces in them. Dropping it stops
/// every process and deletes every namespace (interfaces first, then namespaces, then the
/// temporary directory).
#[derive(Debug)]
pub struct Topology {
    ifaces: BTreeMap<String, WgIface>,
    nodes: BTreeMap<String, Arc<Netns>>,
    links: u32,
    /// The lab's temporary directory (keys, logs).
    pub lab: Lab,
}

/// `[a]:p` for IPv6 addresses, `a:p` otherwise; strips a `/len` suffix.
#[must_use]
pub fn endpoint(addr: &str, port: u16) -> String {
    let ip = addr.split('/').next().unwrap_or(addr);
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The address part of `10.0.0.1/24`.
#[must_use]
pub fn ip_of(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

impl Topology {
    /// An empty topology.
    ///
    /// # Errors
    /// When the temporary directory cannot be made.
    pub fn new() -> Result<Self> {
        Ok(Self {
            ifaces: BTreeMap::new(),
            nodes: BTreeMap::new(),
            links: 0,
            lab: Lab::new()?,
        })
    }

    /// Creates a namespace called `name` in this topology.
    ///
    /// # Errors
    /// When `ip netns add` fails.
    pub fn add_node(&mut self, name: &str) -> Result<Arc<Netns>> {
        let ns = Arc::new(Netns::new(name)?);
        self.nodes.insert(name.to_owned(), Arc::clone(&ns));
        Ok(ns)
    }

    /// The namespace called `name`.
    ///
    /// # Panics
    /// When there is none (a bug in the test).
    #[must_use]
    pub fn ns(&self, name: &str) -> &Arc<Netns> {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node {name} in the topology"))
    }

    /// Names of the namespaces.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Links two nodes with a veth pair and puts the addresses on each end. Returns the
    /// interface names `(in a, in b)`.
    ///
    /// # Errors
    /// When the link or an address cannot be added.
    pub fn link(
        &mut self,
        a: &str,
        a_addrs: &[&str],
        b: &str,
        b_addrs: &[&str],
    ) -> Result<(String, String)> {
        self.links += 1;
        let a_if = format!("to-{}{}", short(b), self.links);
        let b_if = format!("to-{}{}", short(a), self.links);
        let (na, nb) = (Arc::clone(self.ns(a)), Arc::clone(self.ns(b)));
        veth(&na, &a_if, &nb, &b_if).with_context(|| format!("linking {a} and {b}"))?;
        for x in a_addrs {
            na.add_addr(&a_if, x)?;
        }
        for x in b_addrs {
            nb.add_addr(&b_if, x)?;
        }
        Ok((a_if, b_if))
    }

    /// Starts a WireGuard implementation on `node` (one per node).
    ///
    /// # Errors
    /// When it does not start.
    pub fn add_wg(
        &mut self,
        node: &str,
        imp: WgImpl,
        listen_port: u16,
        addrs: &[&str],
    ) -> Result<&WgIface> {
        let spec = WgSpec {
            listen_port,
            addresses: addrs.iter().map(|s| (*s).to_owned()).collect(),
            ..WgSpec::default()
        };
        self.add_wg_spec(node, imp, &spec)
    }

    /// Starts isthmus-dp on `node` from a configuration file.
    ///
    /// # Errors
    /// When it does not start (or the binary under test is not isthmus-dp).
    pub fn add_isthmus_config(&mut self, node: &str, cfg: &IsthmusConfig) -> Result<&WgIface> {
        let ns = Arc::clone(self.ns(node));
        let iface = WgIface::start_config(&ns, &self.lab, cfg)
            .with_context(|| format!("starting isthmus-dp --config on {node}"))?;
        self.ifaces.insert(node.to_owned(), iface);
        Ok(&self.ifaces[node])
    }

    /// Starts a WireGuard implementation on `node` from a full [`WgSpec`].
    ///
    /// # Errors
    /// When it does not start.
    pub fn add_wg_spec(&mut self, node: &str, imp: WgImpl, spec: &WgSpec) -> Result<&WgIface> {
        let ns = Arc::clone(self.ns(node));
        let iface = WgIface::start(&ns, &self.lab, imp, spec)
            .with_context(|| format!("starting {} on {node}", imp.label()))?;
        self.ifaces.insert(node.to_owned(), iface);
        Ok(&self.ifaces[node])
    }

    /// The WireGuard interface on `node`.
    ///
    /// # Panics
    /// When there is none (a bug in the test).
    #[must_use]
    pub fn wg(&self, node: &str) -> &WgIface {
        self.ifaces
            .get(node)
            .unwrap_or_else(|| panic!("no WireGuard interface on {node}"))
    }

    /// The WireGuard interface on `node`, to change (restart it).
    ///
    /// # Panics
    /// When there is none (a bug in the test).
    pub fn wg_mut(&mut self, node: &str) -> &mut WgIface {
        self.ifaces
            .get_mut(node)
            .unwrap_or_else(|| panic!("no WireGuard interface on {node}"))
    }

    /// Makes `to` a peer of `from`: `from` sends to `endpoint` (if any) and accepts `allowed`.
    ///
    /// # Errors
    /// When `wg set` fails.
    pub fn peer(
        &self,
        from: &str,
        to: &str,
        endpoint: Option<String>,
        allowed: &[&str],
        keepalive: Option<u16>,
    ) -> Result<()> {
        let peer = self.wg(to);
        self.wg(from).add_peer(&PeerSpec {
            public_key: peer.keys.public.clone(),
            endpoint,
            allowed_ips: allowed.iter().map(|s| (*s).to_owned()).collect(),
            keepalive,
        })
    }

    /// Two nodes `a` and `b` on one veth link (underlay `10.200.0.{1,2}/24` or
    /// `fd00:200::{1,2}/64`), each running a WireGuard implementation on port 51820 with inner
    /// addresses `10.10.0.{1,2}/24` and `fd10::{1,2}/64`, peered with each other.
    ///
    /// # Errors
    /// When any step fails.
    pub fn pair(a: WgImpl, b: WgImpl, underlay: Family) -> Result<Self> {
        Self::pair_with(a, b, underlay, &[])
    }

    /// [`Topology::pair`], with extra command-line arguments for `a` when it is isthmus-dp
    /// (`--backend afxdp --underlay to-b1`: its underlay interface is `to-b1`).
    ///
    /// # Errors
    /// When any step fails.
    pub fn pair_with(a: WgImpl, b: WgImpl, underlay: Family, a_args: &[&str]) -> Result<Self> {
        Self::pair_full(a, b, underlay, a_args, true)
    }

    /// [`Topology::pair_with`] where `a` does not know `b`'s endpoint: `b` initiates, `a`
    /// answers (and learns the endpoint from the authenticated handshake).
    ///
    /// # Errors
    /// When any step fails.
    pub fn pair_responder(a: WgImpl, b: WgImpl, underlay: Family, a_args: &[&str]) -> Result<Self> {
        Self::pair_full(a, b, underlay, a_args, false)
    }

    fn pair_full(
        a: WgImpl,
        b: WgImpl,
        underlay: Family,
        a_args: &[&str],
        a_knows_b: bool,
    ) -> Result<Self> {
        let mut t = Self::new()?;
        t.add_node("a")?;
        t.add_node("b")?;
        let (ua, ub) = match underlay {
            Family::V4 => ("10.200.0.1/24", "10.200.0.2/24"),
            Family::V6 => ("fd00:200::1/64", "fd00:200::2/64"),
        };
        t.link("a", &[ua], "b", &[ub])?;
        let spec = WgSpec {
            listen_port: 51820,
            addresses: vec!["10.10.0.1/24".into(), "fd10::1/64".into()],
            isthmus_args: a_args.iter().map(|s| (*s).to_owned()).collect(),
            ..WgSpec::default()
        };
        t.add_wg_spec("a", a, &spec)?;
        t.add_wg("b", b, 51820, &["10.10.0.2/24", "fd10::2/64"])?;
        t.peer(
            "a",
            "b",
            a_knows_b.then(|| endpoint(ub, 51820)),
            &["10.10.0.2/32", "fd10::2/128"],
            None,
        )?;
        t.peer(
            "b",
            "a",
            Some(endpoint(ua, 51820)),
            &["10.10.0.1/32", "fd10::1/128"],
            None,
        )?;
        Ok(t)
    }

    /// `a`: isthmus-dp from a configuration file (10.10.0.1, its peer `b` with an endpoint);
    /// `b`: wireguard-go (10.10.0.2) with `a`'s endpoint; a veth underlay 10.200.0.0/24. What
    /// a supervisor restarts ([`Topology::restart_under_ping`]).
    ///
    /// # Errors
    /// When any step fails.
    pub fn file_gateway_and_wireguard_go() -> Result<Self> {
        let mut t = Self::new()?;
        t.add_node("a")?;
        t.add_node("b")?;
        t.link("a", &["10.200.0.1/24"], "b", &["10.200.0.2/24"])?;
        t.add_wg("b", WgImpl::WireguardGo, 51820, &["10.10.0.2/24"])?;
        let cfg = IsthmusConfig {
            listen_port: 51820,
            addresses: vec!["10.10.0.1/24".into()],
            keys: Some(Keypair::generate()?),
            peers: vec![ConfigPeer {
                name: "b".into(),
                class: "trunk".into(),
                public_key: t.wg("b").keys.public.clone(),
                endpoint: Some(endpoint("10.200.0.2", 51820)),
                allowed_ips: vec!["10.10.0.2/32".into()],
                keepalive: None,
                extra: String::new(),
            }],
            ..Default::default()
        };
        t.add_isthmus_config("a", &cfg)?;
        t.peer(
            "b",
            "a",
            Some(endpoint("10.200.0.1", 51820)),
            &["10.10.0.1/32"],
            None,
        )?;
        t.ns("b")
            .wait_ping("10.10.0.1", std::time::Duration::from_secs(10))?;
        Ok(t)
    }

    /// Pings `dst` from `from` every 10 ms, kills `node`'s isthmus-dp with SIGKILL and
    /// restarts it from its file ([`WgIface::crash_and_restart`]), and waits for 50 more
    /// replies (at most 30 s). Returns the restart time and the ping's result (its longest
    /// gap is the outage).
    ///
    /// # Errors
    /// When the restart fails or the replies do not come back (with the daemon's log).
    pub fn restart_under_ping(
        &mut self,
        node: &str,
        from: &str,
        dst: &str,
    ) -> Result<(std::time::Duration, crate::babel::ProbeResult)> {
        use std::time::Duration;
        let ns = Arc::clone(self.ns(from));
        let probe = crate::babel::PingProbe::start(&ns, dst, 10)?;
        probe.wait_replies(50, Duration::from_secs(5))?;
        let restart = self.wg_mut(node).crash_and_restart()?;
        let before = probe.replies_so_far();
        let resumed = probe.wait_replies(before + 50, Duration::from_secs(30));
        let result = probe.finish()?;
        resumed.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.wg(node).log_tail(30)))?;
        Ok((restart, result))
    }

    /// A hub `hub` running `hub_imp` and spokes `s0`, `s1`, ... each on its own veth link to
    /// the hub (underlay `10.201.<i>.1/24` at the hub, `.2` at the spoke). Inner addresses:
    /// hub `10.20.0.1/24` and `fd20::1/64`, spoke *i* `10.20.0.<i+2>/24` and `fd20::<i+2>/64`.
    /// Each spoke knows only the hub, with allowed-IPs covering the whole inner subnet (so
    /// spokes reach each other through the hub); the hub allows each spoke its own addresses.
    /// Spokes have a persistent keepalive of 1 s so that the hub learns their endpoints.
    ///
    /// # Errors
    /// When any step fails.
    pub fn star(hub_imp: WgImpl, spokes: &[WgImpl]) -> Result<Self> {
        Self::star_with(hub_imp, spokes, |_| Vec::new())
    }

    /// [`Topology::star`], with extra command-line arguments for the hub when it is
    /// isthmus-dp, made from the names of the hub's underlay interfaces (the links exist
    /// before the hub starts).
    ///
    /// # Errors
    /// When any step fails.
    pub fn star_with(
        hub_imp: WgImpl,
        spokes: &[WgImpl],
        hub_args: impl FnOnce(&[String]) -> Vec<String>,
    ) -> Result<Self> {
        let mut t = Self::new()?;
        t.add_node("hub")?;
        let mut hub_ifs = Vec::new();
        for i in 0..spokes.len() {
            let name = format!("s{i}");
            t.add_node(&name)?;
            let hub_u = format!("10.201.{i}.1/24");
            let spoke_u = format!("10.201.{i}.2/24");
            hub_ifs.push(t.link("hub", &[&hub_u], &name, &[&spoke_u])?.0);
        }
        let spec = WgSpec {
            listen_port: 51820,
            addresses: vec!["10.20.0.1/24".into(), "fd20::1/64".into()],
            isthmus_args: hub_args(&hub_ifs),
            ..WgSpec::default()
        };
        t.add_wg_spec("hub", hub_imp, &spec)?;
        for (i, imp) in spokes.iter().enumerate() {
            let name = format!("s{i}");
            let hub_u = format!("10.201.{i}.1/24");
            let v4 = format!("10.20.0.{}", i + 2);
            let v6 = format!("fd20::{}", i + 2);
            t.add_wg(
                &name,
                *imp,
                51820,
                &[&format!("{v4}/24"), &format!("{v6}/64")],
            )?;
            t.peer(
                "hub",
                &name,
                None,
                &[&format!("{v4}/32"), &format!("{v6}/128")],
                None,
            )?;
            t.peer(
                &name,
                "hub",
                Some(endpoint(&hub_u, 51820)),
                &["10.20.0.0/24", "fd20::/64"],
                Some(1),
            )?;
        }
        Ok(t)
    }

    /// The demo's topology: two mesh islands joined by two trunk gateways.
    ///
    /// ```text
    ///  h1 ──── p1 ═══════ g1 ═════════ g2 ═══════ p2 ──── h2
    ///  host    island     gateway  trunk  gateway    island   host
    ///          peer       (gateway_imp)            peer
    /// ```
    ///
    /// Island 1 is `10.1.0.0/16` and `fd00:1::/32`, island 2 `10.2.0.0/16` and `fd00:2::/32`.
    /// Hosts `h1` (`10.1.1.2`, `fd00:1:1::2`) and `h2` (`10.2.1.2`, `fd00:2:1::2`) sit behind
    /// their island's WireGuard peer `p1`/`p2` (`island_imp`, kernel forwarding on), which
    /// has one peer: its gateway. Each gateway has two peers on one UDP port: its island's peer
    /// (mesh, named `island-N`) and the other gateway (trunk, named `gw-N`), over the trunk
    /// veth `10.100.0.{1,2}`; a real isthmus-dp gateway is started from a TOML configuration
    /// file (`--config`) with those names and classes, a stand-in through the UAPI. Traffic
    /// between the hosts crosses p1 → g1 → g2 → p2; an isthmus gateway relays it in user
    /// space (its kernel does not forward). A stand-in gateway gets kernel forwarding.
    ///
    /// # Errors
    /// When any step fails.
    pub fn islands(gateway_imp: WgImpl, island_imp: WgImpl) -> Result<Self> {
        let mut t = Self::new()?;
        for n in ["h1", "p1", "g1", "g2", "p2", "h2"] {
            t.add_node(n)?;
        }
        t.link("g1", &["10.100.0.1/24"], "g2", &["10.100.0.2/24"])?;
        let gw_keys = [Keypair::generate()?, Keypair::generate()?];
        let peer_keys = [Keypair::generate()?, Keypair::generate()?];
        let island = |i: u8| {
            (
                format!("10.{i}.0.0/16"),
                format!("fd00:{i}::/32"),
                format!("10.10{i}.0.1/24"),
                format!("10.10{i}.0.2/24"),
            )
        };
        // Hosts and island peers first, so that gateways can name their keys.
        for i in 1..=2u8 {
            let (h, p, g) = (format!("h{i}"), format!("p{i}"), format!("g{i}"));
            let (_, _, underlay_g, underlay_p) = island(i);
            t.link(
                &h,
                &[&format!("10.{i}.1.2/24"), &format!("fd00:{i}:1::2/64")],
                &p,
                &[&format!("10.{i}.1.1/24"), &format!("fd00:{i}:1::1/64")],
            )?;
            t.link(&p, &[&underlay_p], &g, &[&underlay_g])?;
            let spec = WgSpec {
                listen_port: 51820,
                addresses: vec![format!("10.{i}.0.2/24"), format!("fd00:{i}::2/64")],
                keys: Some(peer_keys[usize::from(i - 1)].clone()),
                ..WgSpec::default()
            };
            t.add_wg_spec(&p, island_imp, &spec)?;
        }
        for i in 1..=2u8 {
            let (p, g) = (format!("p{i}"), format!("g{i}"));
            let (other_v4, other_v6, _, _) = island(3 - i);
            let (_, _, own_g, own_p) = island(i);
            let mesh_allowed = vec![
                format!("10.{i}.0.2/32"),
                format!("fd00:{i}::2/128"),
                format!("10.{i}.1.0/24"),
                format!("fd00:{i}:1::/64"),
            ];
            let trunk_endpoint = endpoint(&format!("10.100.0.{}", 3 - i), 51820);
            let addresses = vec![format!("10.{i}.0.1/24"), format!("fd00:{i}::1/64")];
            let me = usize::from(i - 1);
            if gateway_imp.is_real_isthmus() {
                // A real gateway starts from its configuration file: named peers, classes.
                let cfg = IsthmusConfig {
                    listen_port: 51820,
                    addresses,
                    keys: Some(gw_keys[me].clone()),
                    peers: vec![
                        ConfigPeer {
                            name: format!("island-{i}"),
                            class: "mesh".into(),
                            public_key: peer_keys[me].public.clone(),
                            endpoint: Some(endpoint(&own_p, 51820)),
                            allowed_ips: mesh_allowed,
                            keepalive: None,
                            extra: String::new(),
                        },
                        ConfigPeer {
                            name: format!("gw-{}", 3 - i),
                            class: "trunk".into(),
                            public_key: gw_keys[1 - me].public.clone(),
                            endpoint: Some(trunk_endpoint),
                            allowed_ips: vec![other_v4.clone(), other_v6.clone()],
                            keepalive: Some(10),
                            extra: String::new(),
                        },
                    ],
                    routes: Vec::new(),
                    babel: None,
                    interface_extra: String::new(),
                };
                t.add_isthmus_config(&g, &cfg)?;
            } else {
                let spec = WgSpec {
                    listen_port: 51820,
                    addresses,
                    keys: Some(gw_keys[me].clone()),
                    ..WgSpec::default()
                };
                t.add_wg_spec(&g, gateway_imp, &spec)?;
                let gw = t.wg(&g);
                gw.add_peer(&PeerSpec {
                    public_key: peer_keys[me].public.clone(),
                    endpoint: Some(endpoint(&own_p, 51820)),
                    allowed_ips: mesh_allowed,
                    keepalive: None,
                })?;
                gw.add_peer(&PeerSpec {
                    public_key: gw_keys[1 - me].public.clone(),
                    endpoint: Some(trunk_endpoint),
                    allowed_ips: vec![other_v4.clone(), other_v6.clone()],
                    keepalive: Some(10),
                })?;
                t.ns(&g).set_forwarding(true)?;
            }
            // Island peer: its gateway carries the other island.
            t.wg(&p).add_peer(&PeerSpec {
                public_key: gw_keys[me].public.clone(),
                endpoint: Some(endpoint(&own_g, 51820)),
                allowed_ips: vec![
                    format!("10.{i}.0.1/32"),
                    format!("fd00:{i}::1/128"),
                    other_v4.clone(),
                    other_v6.clone(),
                ],
                keepalive: Some(5),
            })?;
            let pns = Arc::clone(t.ns(&p));
            pns.set_forwarding(true)?;
            let pif = t.wg(&p).ifname.clone();
            pns.route(&[&other_v4, "dev", &pif])?;
            pns.route(&[&other_v6, "dev", &pif])?;
            let hns = t.ns(&format!("h{i}"));
            hns.route(&["default", "via", &format!("10.{i}.1.1")])?;
            hns.route(&["default", "via", &format!("fd00:{i}:1::1")])?;
            // Kernel routes on the gateway, for its own traffic into the islands.
            let gns = Arc::clone(t.ns(&g));
            let gif = t.wg(&g).ifname.clone();
            for prefix in [
                format!("10.{i}.1.0/24"),
                format!("fd00:{i}:1::/64"),
                other_v4,
                other_v6,
            ] {
                gns.route(&[&prefix, "dev", &gif])?;
            }
        }
        Ok(t)
    }

    /// Inner IPv4 address of spoke `i` in a [`Topology::star`].
    #[must_use]
    pub fn spoke_v4(i: usize) -> String {
        format!("10.20.0.{}", i + 2)
    }

    /// Inner IPv6 address of spoke `i` in a [`Topology::star`].
    #[must_use]
    pub fn spoke_v6(i: usize) -> String {
        format!("fd20::{}", i + 2)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (node, iface) in &self.ifaces {
                eprintln!(
                    "--- {} on {node} ({}, pid {}, alive: {}), log tail:\n{}",
                    iface.imp.label(),
                    iface.ifname,
                    iface.pid,
                    iface.alive(),
                    iface.log_tail(30)
                );
            }
        }
    }
}

fn short(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect()
}
