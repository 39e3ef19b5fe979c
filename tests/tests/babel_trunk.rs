//! The control plane over WireGuard trunks: `isthmus-dp` and `isthmus-cp` on gateways, talking
//! Babel to babeld through a wireguard-go tunnel, joining two babeld islands through a trunk,
//! failing over between two trunks, and surviving a `kill -9` of `isthmus-cp` without losing a
//! packet (non-stop forwarding).
//!
//! Every wait is bounded; on failure the error carries `isthmus-cp`'s log, `isthmusctl show
//! routes|neighbours|fib`, babeld's dump and the kernel's routes.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::init;
use isthmus_dataplane::ctl::RUN_DIR;
use isthmus_lab::{
    kernel_routes, scrape, unique_ifname, veth, write_private_key, Babeld, IsthmusCp, Keypair, Lab,
    Netns, PeerSpec, PingOpts, PingProbe, WgIface, WgImpl, WgSpec, METRICS_ADDR,
};

/// Bound on every convergence wait.
const CONVERGE: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------------------------------------
// A gateway: isthmus-dp and isthmus-cp from one configuration file
// ---------------------------------------------------------------------------------------------

fn isthmusctl(args: &[&str]) -> String {
    let bin = IsthmusCp::ctl_binary().unwrap();
    match Command::new(&bin).args(args).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("running {} {args:?}: {e}", bin.display()),
    }
}

/// A `[[peer]]` of a gateway.
struct Peer {
    name: String,
    class: &'static str,
    public_key: String,
    endpoint: Option<String>,
    allowed_ips: Vec<String>,
}

/// An isthmus gateway: data plane and control plane in one namespace, one file.
struct Gateway {
    ns: Arc<Netns>,
    name: String,
    ifname: String,
    conf: PathBuf,
    dp_pid: u32,
    dp_log: PathBuf,
    cp_pid: u32,
    cp_log: PathBuf,
    cp_runs: u32,
    lab_dir: PathBuf,
}

fn toml_list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", q.join(", "))
}

impl Gateway {
    /// Writes `NAME.toml` (interface, peers, then `babel` verbatim), starts isthmus-dp, waits
    /// for its control socket, then starts isthmus-cp. Kernel forwarding is turned on.
    fn start(
        ns: &Arc<Netns>,
        lab: &Lab,
        name: &str,
        keys: &Keypair,
        addresses: &[&str],
        peers: &[Peer],
        babel: &str,
    ) -> Self {
        ns.set_forwarding(true).unwrap();
        let ifname = unique_ifname("i");
        let key_file = write_private_key(lab, &ifname, &keys.private).unwrap();
        let mut t = format!(
            "[interface]\nname = {ifname:?}\nprivate_key_file = {:?}\nlisten_port = 51820\naddress = {}\nmetrics = {METRICS_ADDR:?}\n",
            key_file.to_string_lossy(),
            toml_list(&addresses.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        );
        for p in peers {
            let _ = write!(
                t,
                "\n[[peer]]\nname = {:?}\nclass = {:?}\npublic_key = {:?}\nallowed_ips = {}\n",
                p.name,
                p.class,
                p.public_key,
                toml_list(&p.allowed_ips)
            );
            if let Some(e) = &p.endpoint {
                let _ = writeln!(t, "endpoint = {e:?}");
            }
        }
        t.push('\n');
        t.push_str(babel);
        let conf = lab.path(&format!("{name}.toml"));
        std::fs::write(&conf, &t).unwrap();
        let ctl = Path::new(RUN_DIR).join(format!("{ifname}.ctl"));
        ns.remove_on_drop(ctl.clone());
        ns.remove_on_drop(Path::new(RUN_DIR).join(format!("{ifname}.cp")));
        ns.remove_on_drop(isthmus_lab::uapi_socket(&ifname));
        let dp = WgImpl::isthmus_binary().unwrap();
        let dp_log = lab.path(&format!("{name}-dp.log"));
        let dp_pid = ns
            .spawn_env(
                &[
                    &dp.to_string_lossy(),
                    "-f",
                    "--config",
                    &conf.to_string_lossy(),
                ],
                &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
                &dp_log,
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctl.exists() {
            assert!(
                ns.alive(dp_pid) && Instant::now() < deadline,
                "isthmus-dp on {name} did not create {} within 10 s:\n{t}\n{}",
                ctl.display(),
                std::fs::read_to_string(&dp_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ns.link_up(&ifname).unwrap();
        let mut g = Self {
            ns: Arc::clone(ns),
            name: name.to_owned(),
            ifname,
            conf,
            dp_pid,
            dp_log,
            cp_pid: 0,
            cp_log: PathBuf::new(),
            cp_runs: 0,
            lab_dir: lab.dir().to_owned(),
        };
        g.start_cp();
        g
    }

    /// Starts (or restarts) isthmus-cp and waits for its status socket.
    fn start_cp(&mut self) {
        self.cp_runs += 1;
        let cp = IsthmusCp::binary().unwrap();
        self.cp_log = self
            .lab_dir
            .join(format!("{}-cp{}.log", self.name, self.cp_runs));
        let status = self.status_socket();
        let _ = std::fs::remove_file(&status);
        self.cp_pid = self
            .ns
            .spawn_env(
                &[
                    &cp.to_string_lossy(),
                    "--config",
                    &self.conf.to_string_lossy(),
                ],
                &[("ISTHMUS_LOG", "info"), ("NO_COLOR", "1")],
                &self.cp_log,
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !status.exists() {
            assert!(
                self.ns.alive(self.cp_pid) && Instant::now() < deadline,
                "isthmus-cp on {} did not create {} within 10 s:\n{}",
                self.name,
                status.display(),
                self.cp_log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of isthmus-cp.
    fn kill_cp(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.cp_pid.to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.ns.alive(self.cp_pid) {
            assert!(Instant::now() < deadline, "isthmus-cp survived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status_socket(&self) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}.cp", self.ifname))
    }

    fn ctl_socket(&self) -> String {
        format!("{RUN_DIR}/{}.ctl", self.ifname)
    }

    fn cp_log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.cp_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `isthmusctl show WHAT` against isthmus-cp (neighbours, routes, babel).
    fn show_cp(&self, what: &str) -> String {
        isthmusctl(&[
            "show",
            what,
            "--socket",
            &self.status_socket().to_string_lossy(),
        ])
    }

    /// `isthmusctl show fib` against isthmus-dp.
    fn show_fib(&self) -> String {
        isthmusctl(&["show", "fib", "--socket", &self.ctl_socket()])
    }

    /// Everything worth printing when something fails.
    fn diagnostics(&self) -> String {
        let routes = self
            .ns
            .exec(&["sh", "-c", "ip -4 route; ip -6 route"])
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "===== gateway {} ({}, {}; isthmus-dp alive: {}) =====\n--- isthmus-cp log (run {}):\n{}\n--- show neighbours:\n{}--- show routes:\n{}--- show fib:\n{}--- kernel routes:\n{routes}--- isthmus-dp log tail:\n{}\n",
            self.name,
            self.ns.name(),
            self.ifname,
            self.ns.alive(self.dp_pid),
            self.cp_runs,
            self.cp_log_text(),
            self.show_cp("neighbours"),
            self.show_cp("routes"),
            self.show_fib(),
            {
                let t = std::fs::read_to_string(&self.dp_log).unwrap_or_default();
                let l: Vec<&str> = t.lines().collect();
                l[l.len().saturating_sub(15)..].join("\n")
            }
        )
    }

    /// The data plane's `isthmus_fib_stale` gauge.
    fn fib_stale(&self) -> f64 {
        scrape(&self.ns, METRICS_ADDR)
            .unwrap_or_else(|e| panic!("scraping {}'s isthmus-dp: {e:#}", self.name))
            .get("isthmus_fib_stale", &[])
    }
}

/// Polls `cond` every 50 ms for at most `timeout`; returns the time it took, or panics with
/// `diag()`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `ns` has a usable route to `dst` installed by `proto` whose device is `dev` (any
/// device when `None`).
fn has_route(ns: &Netns, proto: &str, dst: &str, dev: Option<&str>) -> bool {
    kernel_routes(ns, proto).is_ok_and(|rs| {
        rs.iter()
            .any(|r| r.dst == dst && r.usable() && dev.is_none_or(|d| r.dev.as_deref() == Some(d)))
    })
}

fn ping_ok(ns: &Netns, src: &str, dst: &str, diag: impl Fn() -> String) {
    if let Err(e) = ns.wait_ping(dst, Duration::from_secs(10)) {
        panic!("{e:#}\n{}", diag());
    }
    let opts = PingOpts {
        source: Some(src),
        interval: Some(0.05),
        ..Default::default()
    };
    let r = ns.ping_with(dst, 5, &opts).unwrap();
    assert_eq!(
        r.lost(),
        0,
        "ping {src} -> {dst} from {}:\n{}\n{}",
        ns.name(),
        r.output,
        diag()
    );
}

/// Turns off duplicate address detection, so link-local addresses are usable at once.
fn no_dad(ns: &Netns) {
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
}

fn node(tag: &str) -> Arc<Netns> {
    let ns = Arc::new(Netns::new(tag).unwrap());
    no_dad(&ns);
    ns
}

/// The `[babel]` part of a gateway's file: hello interval `hello` everywhere, the given
/// `[[babel.interface]]`s (wired), and a trunk cost.
fn babel_section(hello: u32, originate: &[&str], ifaces: &[&str], trunk_cost: u32) -> String {
    let originate: Vec<String> = originate.iter().map(|s| (*s).to_owned()).collect();
    let mut s = format!(
        "[babel]\noriginate = {}\n\n[babel.trunk]\nhello_interval = {hello}\ncost = {trunk_cost}\n\n[babel.wired]\nhello_interval = {hello}\n",
        toml_list(&originate)
    );
    for i in ifaces {
        let _ = write!(
            s,
            "\n[[babel.interface]]\nname = {i:?}\nclass = \"wired\"\n"
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// 1. A gateway and babeld over a wireguard-go tunnel
// ---------------------------------------------------------------------------------------------

#[test]
fn gateway_peers_with_babeld_over_wireguard_go() {
    init();
    let lab = Lab::new().unwrap();
    let x = node("trx");
    let y = node("try");
    veth(&x, "ux", &y, "uy").unwrap();
    x.add_addr("ux", "192.168.77.1/24").unwrap();
    y.add_addr("uy", "192.168.77.2/24").unwrap();
    for (ns, a4, a6) in [
        (&x, "10.10.0.1/32", "fd10::1/128"),
        (&y, "10.20.0.1/32", "fd20::1/128"),
    ] {
        ns.add_addr("lo", a4).unwrap();
        ns.add_addr("lo", a6).unwrap();
    }
    let (kx, ky) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());

    // Y: wireguard-go and babeld on its tunnel.
    let wg = WgIface::start(
        &y,
        &lab,
        WgImpl::WireguardGo,
        &WgSpec {
            listen_port: 51820,
            addresses: vec!["10.99.0.2/24".into(), "fe80::2/64".into()],
            keys: Some(ky.clone()),
            ..WgSpec::default()
        },
    )
    .unwrap();
    wg.add_peer(&PeerSpec {
        public_key: kx.public.clone(),
        endpoint: Some("192.168.77.1:51820".into()),
        allowed_ips: vec!["0.0.0.0/0".into(), "::/0".into()],
        keepalive: Some(5),
    })
    .unwrap();
    let wg0 = wg.ifname.clone();

    let started = Instant::now();
    let gx = Gateway::start(
        &x,
        &lab,
        "x",
        &kx,
        &["10.99.0.1/24", "fe80::1/64"],
        &[Peer {
            name: "yside".into(),
            class: "trunk",
            public_key: ky.public.clone(),
            endpoint: Some("192.168.77.2:51820".into()),
            allowed_ips: vec!["10.99.0.2/32".into(), "fe80::/64".into()],
        }],
        &babel_section(1, &["10.10.0.1/32", "fd10::1/128"], &[], 96),
    );
    let by = Babeld::start(
        &y,
        &lab,
        "y",
        &[],
        &format!(
            "interface {wg0} type tunnel hello-interval 1\nredistribute local ip 10.20.0.1/32\nredistribute local ip fd20::1/128"
        ),
    )
    .unwrap();
    let diag = || format!("{}\n{}", gx.diagnostics(), by.diagnostics());

    // Both sides learn the other's prefixes.
    let t_x = wait_until(
        "X: proto 77 routes to 10.20.0.1 and fd20::1 via the tunnel",
        CONVERGE,
        || {
            has_route(&x, "77", "10.20.0.1", Some(&gx.ifname))
                && has_route(&x, "77", "fd20::1", Some(&gx.ifname))
        },
        diag,
    );
    let t_x = started.elapsed().max(t_x);
    wait_until(
        "Y: babel routes to 10.10.0.1 and fd10::1 via wg0",
        CONVERGE,
        || {
            has_route(&y, "babel", "10.10.0.1", Some(&wg0))
                && has_route(&y, "babel", "fd10::1", Some(&wg0))
        },
        diag,
    );
    let t_y = started.elapsed();
    eprintln!(
        "convergence: X has Y's prefixes {:.1}s and Y has X's {:.1}s after the daemons started",
        t_x.as_secs_f64(),
        t_y.as_secs_f64()
    );
    let ky_routes = kernel_routes(&y, "babel").unwrap();
    let r = ky_routes.iter().find(|r| r.dst == "10.10.0.1").unwrap();
    assert_eq!(r.via.as_deref(), Some("10.99.0.1"), "{r:?}");

    ping_ok(&x, "10.10.0.1", "10.20.0.1", diag);
    ping_ok(&y, "10.20.0.1", "10.10.0.1", diag);
    ping_ok(&x, "fd10::1", "fd20::1", diag);
    ping_ok(&y, "fd20::1", "fd10::1", diag);

    // The babeld neighbour with an RTT (timestamps on both sides: trunk class, tunnel type).
    let mut shown = String::new();
    wait_until(
        "isthmusctl show neighbours: babeld on yside with an RTT",
        Duration::from_secs(15),
        || {
            shown = gx.show_cp("neighbours");
            shown.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 8 && f[0] == "yside" && f[1].starts_with("fe80:") && f[6].ends_with("ms")
            })
        },
        diag,
    );
    eprintln!("X's neighbours:\n{shown}");
    let fib = gx.show_fib();
    assert!(
        fib.lines()
            .any(|l| l.contains("10.20.0.1/32") && l.contains("yside") && l.contains("babel")),
        "X's FIB should route 10.20.0.1/32 to yside from babel:\n{fib}"
    );
}

// ---------------------------------------------------------------------------------------------
// Islands: h — r (babeld) — g (isthmus) ═ trunk ═ g (isthmus) — r (babeld) — h
// ---------------------------------------------------------------------------------------------

/// Host `h{i}` (`10.{i}.1.2/24`, `fd0{i}:1::2/64`) behind router `r{i}` (`.1`), which will
/// redistribute the host subnet. Returns the host and router namespaces.
fn island_nodes(i: u8) -> (Arc<Netns>, Arc<Netns>) {
    let h = node(&format!("h{i}"));
    let r = node(&format!("r{i}"));
    veth(&r, "host", &h, "eth0").unwrap();
    h.add_addr("eth0", &format!("10.{i}.1.2/24")).unwrap();
    h.add_addr("eth0", &format!("fd0{i}:1::2/64")).unwrap();
    r.add_addr("host", &format!("10.{i}.1.1/24")).unwrap();
    r.add_addr("host", &format!("fd0{i}:1::1/64")).unwrap();
    h.route(&["default", "via", &format!("10.{i}.1.1")])
        .unwrap();
    h.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("fd0{i}:1::1"),
    ])
    .unwrap();
    r.set_forwarding(true).unwrap();
    (h, r)
}

/// babeld on an island router: its gateway links (`g{a,b,..}`, wired) and the host subnet
/// redistributed.
fn island_babeld<'a>(r: &'a Netns, lab: &Lab, name: &str, trunks: usize, hello: u32) -> Babeld<'a> {
    let mut conf = String::new();
    for k in 0..trunks {
        let _ = writeln!(
            conf,
            "interface g{} type wired hello-interval {hello}",
            trunk_tag(k)
        );
    }
    conf.push_str("redistribute if host metric 128\n");
    Babeld::start(r, lab, name, &[], &conf).unwrap()
}

fn trunk_tag(k: usize) -> char {
    char::from(b'a' + u8::try_from(k).expect("few trunks"))
}

/// The gateway pairs of a trunk: `(island-1 side, island-2 side)`, and its underlay ends.
struct Trunk {
    g1: Gateway,
    g2: Gateway,
    underlay: [(Arc<Netns>, &'static str); 2],
}

/// `trunks` gateway pairs `g1a`–`g2a`, `g1b`–`g2b`, ... between island routers `r1` and `r2`:
/// each router has a veth `g{tag}` to its gateway's `island` (link-local addresses only, so
/// IPv4 routes go v4-via-v6), and each pair a WireGuard trunk over an underlay veth
/// `192.168.{80+k}.0/24`, tunnel addresses `10.99.{k}.{1,2}/24` and `fe80::{1,2}/64`, and
/// allowed IPs holding only the other end's tunnel addresses. Trunk `k` costs `96 + 32 k`, so
/// the first is preferred.
fn build_trunks(lab: &Lab, r: [&Arc<Netns>; 2], trunks: usize, hello: u32) -> Vec<Trunk> {
    let mut out = Vec::new();
    for k in 0..trunks {
        let tag = trunk_tag(k);
        let g = [node(&format!("g1{tag}")), node(&format!("g2{tag}"))];
        for i in 0..2 {
            veth(r[i], &format!("g{tag}"), &g[i], "island").unwrap();
        }
        let n = 80 + k;
        veth(&g[0], "under1", &g[1], "under2").unwrap();
        g[0].add_addr("under1", &format!("192.168.{n}.1/24"))
            .unwrap();
        g[1].add_addr("under2", &format!("192.168.{n}.2/24"))
            .unwrap();
        let keys = [Keypair::generate().unwrap(), Keypair::generate().unwrap()];
        let cost = 96 + 32 * u32::try_from(k).unwrap();
        let babel = babel_section(hello, &[], &["island"], cost);
        let gw = |i: usize| {
            let other = 1 - i;
            Gateway::start(
                &g[i],
                lab,
                &format!("g{}{tag}", i + 1),
                &keys[i],
                &[
                    &format!("10.99.{k}.{}/24", i + 1),
                    &format!("fe80::{}/64", i + 1),
                ],
                &[Peer {
                    name: format!("g{}{tag}", other + 1),
                    class: "trunk",
                    public_key: keys[other].public.clone(),
                    endpoint: Some(format!("192.168.{n}.{}:51820", other + 1)),
                    allowed_ips: vec![
                        format!("10.99.{k}.{}/32", other + 1),
                        format!("fe80::{}/128", other + 1),
                    ],
                }],
                &babel,
            )
        };
        let (g1, g2) = (gw(0), gw(1));
        let [n1, n2] = g;
        out.push(Trunk {
            g1,
            g2,
            underlay: [(n1, "under1"), (n2, "under2")],
        });
    }
    out
}

fn islands_diag(babelds: &[&Babeld<'_>], routers: &[&Arc<Netns>], trunks: &[Trunk]) -> String {
    let mut s = String::new();
    for b in babelds {
        s.push_str(&b.diagnostics());
        s.push('\n');
    }
    for r in routers {
        let _ = writeln!(
            s,
            "router {} routes:\n{}",
            r.name(),
            r.exec(&["sh", "-c", "ip -4 route; ip -6 route"])
                .unwrap_or_default()
        );
    }
    for t in trunks {
        s.push_str(&t.g1.diagnostics());
        s.push_str(&t.g2.diagnostics());
    }
    s
}

fn fib_has(g: &Gateway, prefix: &str, via: &str) -> bool {
    g.show_fib()
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == [prefix, via, "babel"])
}

// ---------------------------------------------------------------------------------------------
// 2. Two babeld islands through two isthmus gateways
// ---------------------------------------------------------------------------------------------

#[test]
fn islands_route_through_two_gateways_without_static_routes() {
    init();
    let lab = Lab::new().unwrap();
    let (h1, r1) = island_nodes(1);
    let (h2, r2) = island_nodes(2);
    let started = Instant::now();
    let trunks = build_trunks(&lab, [&r1, &r2], 1, 1);
    let b1 = island_babeld(&r1, &lab, "r1", 1, 1);
    let b2 = island_babeld(&r2, &lab, "r2", 1, 1);
    let diag = || islands_diag(&[&b1, &b2], &[&r1, &r2], &trunks);
    let t = &trunks[0];

    // The gateways' data planes carry the other island to the trunk peer, their kernels too.
    let t_fib = wait_until(
        "g1a's FIB routes 10.2.1.0/24 and fd02:1::/64 to g2a, g2a's 10.1.1.0/24 to g1a",
        CONVERGE,
        || {
            fib_has(&t.g1, "10.2.1.0/24", "g2a")
                && fib_has(&t.g1, "fd02:1::/64", "g2a")
                && fib_has(&t.g2, "10.1.1.0/24", "g1a")
                && fib_has(&t.g2, "fd01:1::/64", "g1a")
        },
        diag,
    );
    let t_fib = t_fib.max(started.elapsed());
    wait_until(
        "island routers learn the other island",
        CONVERGE,
        || {
            has_route(&r1, "babel", "10.2.1.0/24", Some("ga"))
                && has_route(&r2, "babel", "10.1.1.0/24", Some("ga"))
                && has_route(&r1, "babel", "fd02:1::/64", Some("ga"))
                && has_route(&r2, "babel", "fd01:1::/64", Some("ga"))
        },
        diag,
    );
    eprintln!(
        "convergence: gateways' FIBs {:.1}s, island routers {:.1}s after start",
        t_fib.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let g1 = &t.g1;
    for (dst, dev) in [
        ("10.2.1.0/24", g1.ifname.as_str()),
        ("fd02:1::/64", g1.ifname.as_str()),
        ("10.1.1.0/24", "island"),
        ("fd01:1::/64", "island"),
    ] {
        assert!(
            has_route(&g1.ns, "77", dst, Some(dev)),
            "g1a: no proto 77 route to {dst} dev {dev}\n{}",
            diag()
        );
    }
    let k = kernel_routes(&g1.ns, "77").unwrap();
    let r = k.iter().find(|r| r.dst == "10.1.1.0/24").unwrap();
    assert!(
        r.via.as_deref().is_some_and(|v| v.starts_with("fe80:")),
        "g1a's route into its island should be v4-via-v6: {r:?}"
    );

    ping_ok(&h1, "10.1.1.2", "10.2.1.2", diag);
    ping_ok(&h2, "10.2.1.2", "10.1.1.2", diag);
    ping_ok(&h1, "fd01:1::2", "fd02:1::2", diag);
    ping_ok(&h2, "fd02:1::2", "fd01:1::2", diag);
    eprintln!("g1a's FIB:\n{}", g1.show_fib());
}

// ---------------------------------------------------------------------------------------------
// 3. Two trunks: failover
// ---------------------------------------------------------------------------------------------

#[test]
fn two_trunks_failover() {
    init();
    let lab = Lab::new().unwrap();
    let (h1, r1) = island_nodes(1);
    let (_h2, r2) = island_nodes(2);
    let trunks = build_trunks(&lab, [&r1, &r2], 2, 1);
    let b1 = island_babeld(&r1, &lab, "r1", 2, 1);
    let b2 = island_babeld(&r2, &lab, "r2", 2, 1);
    let diag = || islands_diag(&[&b1, &b2], &[&r1, &r2], &trunks);

    // Both trunks up; the cheaper one (a) carries both directions.
    wait_until(
        "both island routers route the other island through trunk a, gateways of b know it too",
        CONVERGE,
        || {
            has_route(&r1, "babel", "10.2.1.0/24", Some("ga"))
                && has_route(&r2, "babel", "10.1.1.0/24", Some("ga"))
                && fib_has(&trunks[1].g1, "10.2.1.0/24", "g2b")
                && fib_has(&trunks[1].g2, "10.1.1.0/24", "g1b")
        },
        diag,
    );
    ping_ok(&h1, "10.1.1.2", "10.2.1.2", diag);

    let probe = PingProbe::start_from(&h1, Some("10.1.1.2"), "10.2.1.2", 10).unwrap();
    probe.wait_replies(50, Duration::from_secs(5)).unwrap();
    let before = probe.replies_so_far();
    let cut = Instant::now();
    for (ns, ifname) in &trunks[0].underlay {
        ns.exec(&["ip", "link", "set", ifname, "down"]).unwrap();
    }
    if let Err(e) = probe.wait_replies(before + 100, Duration::from_secs(20)) {
        panic!("traffic did not resume over trunk b: {e:#}\n{}", diag());
    }
    let resumed = cut.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let result = probe.finish().unwrap();
    let target = Duration::from_millis(12_500);
    eprintln!(
        "failover: longest gap {:.2}s (target < {:.1}s: 2 hellos + IHU hold time); traffic resumed {:.2}s after the cut; {} of {} lost",
        result.longest_gap.as_secs_f64(),
        target.as_secs_f64(),
        resumed.as_secs_f64(),
        result.lost(),
        result.sent
    );
    assert!(
        has_route(&r1, "babel", "10.2.1.0/24", Some("gb"))
            && has_route(&r2, "babel", "10.1.1.0/24", Some("gb")),
        "after the cut both routers should route through trunk b\n{}",
        diag()
    );
    assert!(
        result.longest_gap < target,
        "outage {:?} is not below {target:?}\n{}",
        result.longest_gap,
        diag()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. kill -9 of isthmus-cp: the data plane keeps forwarding
// ---------------------------------------------------------------------------------------------

/// The data plane keeps its table (stale) while isthmus-cp is dead; the restarted isthmus-cp
/// keeps a previous run's routes, in the data plane and the kernel, until its neighbours have
/// had time to resend everything (babeld answers route requests only with its periodic
/// updates), so nothing is withdrawn in between.
#[test]
fn kill_9_of_isthmus_cp_loses_no_packets() {
    init();
    const HELLO: u32 = 2;
    let lab = Lab::new().unwrap();
    let (h1, r1) = island_nodes(1);
    let (_h2, r2) = island_nodes(2);
    let mut trunks = build_trunks(&lab, [&r1, &r2], 1, HELLO);
    let b1 = island_babeld(&r1, &lab, "r1", 1, HELLO);
    let b2 = island_babeld(&r2, &lab, "r2", 1, HELLO);
    let hold = Duration::from_secs(u64::from(2 * HELLO + 1));

    {
        let diag = || islands_diag(&[&b1, &b2], &[&r1, &r2], &trunks);
        wait_until(
            "islands converge",
            CONVERGE,
            || {
                fib_has(&trunks[0].g1, "10.2.1.0/24", "g2a")
                    && fib_has(&trunks[0].g2, "10.1.1.0/24", "g1a")
                    && has_route(&r1, "babel", "10.2.1.0/24", Some("ga"))
                    && has_route(&r2, "babel", "10.1.1.0/24", Some("ga"))
            },
            diag,
        );
        ping_ok(&h1, "10.1.1.2", "10.2.1.2", diag);
        assert_eq!(trunks[0].g1.fib_stale(), 0.0);
    }

    let probe = PingProbe::start_from(&h1, Some("10.1.1.2"), "10.2.1.2", 20).unwrap();
    probe.wait_replies(25, Duration::from_secs(5)).unwrap();
    let killed = Instant::now();
    trunks[0].g1.kill_cp();
    // The data plane notices its control plane is gone and marks its table stale.
    let mut stale = 0.0;
    while killed.elapsed() < Duration::from_secs(1) {
        stale = trunks[0].g1.fib_stale();
        if stale == 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stale_after = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed()));
    let dead_for = killed.elapsed();
    trunks[0].g1.start_cp();
    std::thread::sleep(hold + Duration::from_secs(3));
    let g1 = &trunks[0].g1;
    let diag = || islands_diag(&[&b1, &b2], &[&r1, &r2], &trunks);
    let stale_now = g1.fib_stale();
    let result = probe.finish().unwrap();
    eprintln!(
        "kill -9: isthmus-cp dead for {:.2}s; fib_stale {stale} {:.2}s after the kill, {stale_now} after the restart; ping: {} sent, {} lost, longest gap {:.3}s",
        dead_for.as_secs_f64(),
        stale_after.as_secs_f64(),
        result.sent,
        result.lost(),
        result.longest_gap.as_secs_f64()
    );
    assert_eq!(
        stale,
        1.0,
        "isthmus_fib_stale should be 1 while isthmus-cp is dead\n{}",
        diag()
    );
    assert_eq!(
        stale_now,
        0.0,
        "isthmus_fib_stale should be 0 after the restarted isthmus-cp's snapshot\n{}",
        diag()
    );
    assert!(
        fib_has(g1, "10.2.1.0/24", "g2a"),
        "g1a's FIB lost island 2\n{}",
        diag()
    );
    assert!(result.sent > 300, "{}", result.output);
    assert_eq!(
        result.lost(),
        0,
        "packets lost across the restart of isthmus-cp (longest gap {:?})\n{}",
        result.longest_gap,
        diag()
    );
}
