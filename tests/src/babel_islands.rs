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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::babel::{Babeld, IsthmusCp};
use crate::topology::{endpoint, Topology};
use crate::wg::{ConfigPeer, IsthmusConfig, Keypair, WgImpl};

/// One isthmus gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Node name (`g1a`, `g2b`, ...).
    pub node: String,
    /// 1 or 2.
    pub island: u8,
    /// Trunk index (0 = a).
    pub trunk: usize,
    /// Its configuration file (shared by isthmus-dp and isthmus-cp).
    pub config: PathBuf,
    /// isthmus-cp's status socket.
    pub status: PathBuf,
    /// isthmus-cp's log.
    pub cp_log: PathBuf,
    /// isthmus-cp's PID.
    pub cp_pid: u32,
    /// The veth towards the island router.
    pub island_if: String,
    /// The underlay veth of its trunk.
    pub underlay_if: String,
}

/// The topology, built and running (except the island routers: see [`BabelIslands::routers`]).
pub struct BabelIslands {
    /// Namespaces, links and data planes.
    pub t: Topology,
    /// Gateways, island 1 first, by trunk.
    pub gateways: Vec<Gateway>,
    /// r1's and r2's interfaces towards their gateways, and towards their host.
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
        if !WgImpl::Isthmus.is_real_isthmus() {
            bail!("the Babel islands need the real isthmus-dp");
        }
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
            hn.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{i}.1.1"),
            ])?;
            hn.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{i}:1::1"),
            ])?;
            t.ns(&r).set_forwarding(true)?;
        }
        let cp = IsthmusCp::binary()?;
        let mut gateways = Vec::new();
        for k in 0..trunks {
            let letter = (b'a' + k as u8) as char;
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
            for (i, g, under) in [(1u8, &g1, &u1), (2u8, &g2, &u2)] {
                let r = format!("r{i}");
                let (r_if, g_if) = t.link(&r, &[], g, &[])?;
                router_ifs[usize::from(i - 1)].0.push(r_if);
                t.ns(g).set_forwarding(true)?;
                let me = usize::from(i - 1);
                let babel = format!(
                    "[babel]\nmetrics = \"127.0.0.1:9587\"\n\
                     [babel.wired]\nhello_interval = {hello}\n\
                     [babel.trunk]\nhello_interval = {hello}\n\
                     [[babel.interface]]\nname = \"{g_if}\"\n"
                );
                let cfg = IsthmusConfig {
                    listen_port: 51820,
                    addresses: vec![format!("fe80::{i}{letter}/64")],
                    keys: Some(keys[me].clone()),
                    peers: vec![ConfigPeer {
                        name: format!("gw-{}{letter}", 3 - i),
                        class: "trunk".into(),
                        public_key: keys[1 - me].public.clone(),
                        endpoint: Some(endpoint(&format!("10.10{k}.0.{}", 3 - i), 51820)),
                        allowed_ips: vec!["fe80::/64".into()],
                        keepalive: Some(5),
                    }],
                    routes: Vec::new(),
                    babel: Some(babel),
                };
                let ifname = t.add_isthmus_config(g, &cfg)?.ifname.clone();
                let config = t.lab.path(&format!("{ifname}.toml"));
                let status = t.lab.path(&format!("{ifname}.cp"));
                let cp_log = t.lab.path(&format!("{ifname}-cp.log"));
                let mut gw = Gateway {
                    node: g.clone(),
                    island: i,
                    trunk: k,
                    config,
                    status,
                    cp_log,
                    cp_pid: 0,
                    island_if: g_if,
                    underlay_if: under.clone(),
                };
                gw.cp_pid = start_cp(&t, &gw, &cp)?;
                gateways.push(gw);
            }
        }
        gateways.sort_by_key(|g| (g.island, g.trunk));
        Ok(Self {
            t,
            gateways,
            router_ifs,
            hello,
        })
    }

    /// Starts babeld on r1 and r2 (redistributing their host subnets).
    ///
    /// # Errors
    /// When babeld does not start.
    pub fn routers(&self) -> Result<[Babeld<'_>; 2]> {
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
            Babeld::start(
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

    /// `isthmusctl show WHAT` against a gateway's isthmus-cp (or `fib`: its data plane).
    ///
    /// # Errors
    /// When isthmusctl fails.
    pub fn show(&self, node: &str, what: &str) -> Result<String> {
        let g = self.gateway(node);
        let ctl = IsthmusCp::ctl_binary()?;
        let ctl = ctl.to_string_lossy().into_owned();
        if what == "fib" {
            let ifname = self.t.wg(node).ifname.clone();
            return self
                .t
                .ns(node)
                .exec_timeout(&[&ctl, "show", "fib", &ifname], 10);
        }
        let status = g.status.to_string_lossy().into_owned();
        self.t
            .ns(node)
            .exec_timeout(&[&ctl, "show", what, "--socket", &status], 10)
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

    /// Kills a gateway's isthmus-cp with SIGKILL.
    pub fn kill_cp(&self, node: &str) {
        let g = self.gateway(node);
        let _ = self.t.ns(node).exec(&["kill", "-9", &g.cp_pid.to_string()]);
    }

    /// Starts a gateway's isthmus-cp again (after [`BabelIslands::kill_cp`]).
    ///
    /// # Errors
    /// When it does not start.
    pub fn restart_cp(&mut self, node: &str) -> Result<()> {
        let cp = IsthmusCp::binary()?;
        let i = self
            .gateways
            .iter()
            .position(|g| g.node == node)
            .with_context(|| format!("no gateway {node}"))?;
        let _ = std::fs::remove_file(&self.gateways[i].status);
        let pid = start_cp(&self.t, &self.gateways[i], &cp)?;
        self.gateways[i].cp_pid = pid;
        Ok(())
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
                let mut diag = String::new();
                for g in &self.gateways {
                    diag.push_str(&format!(
                        "--- {} routes:\n{}\n--- {} log:\n{}\n",
                        g.node,
                        self.show(&g.node, "routes")
                            .unwrap_or_else(|e| e.to_string()),
                        g.node,
                        tail(&g.cp_log, 15)
                    ));
                }
                bail!("{node}: no route to {prefix} after {timeout:?}\n{diag}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(path: &std::path::Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn start_cp(t: &Topology, g: &Gateway, cp: &std::path::Path) -> Result<u32> {
    let cp = cp.to_string_lossy().into_owned();
    let config = g.config.to_string_lossy().into_owned();
    let status = g.status.to_string_lossy().into_owned();
    let ns = t.ns(&g.node);
    let pid = ns.spawn_env(
        &[&cp, "--config", &config, "--status-socket", &status],
        &[("ISTHMUS_LOG", "info")],
        &g.cp_log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.status.exists() {
        if !ns.alive(pid) {
            bail!("isthmus-cp on {} exited:\n{}", g.node, tail(&g.cp_log, 20));
        }
        if Instant::now() > deadline {
            bail!("isthmus-cp on {} did not open its status socket", g.node);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}
