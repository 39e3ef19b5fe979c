//! `isthmusctl`: keys, configuration checks, and a view of a running data plane through its
//! control socket.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use isthmus_controlplane::config::{BabelConfig, DefaultRoute};
use isthmus_dataplane::ctl::proto::{Msg, RouteInfo};
use isthmus_dataplane::ctl::server::CtlClient;
use isthmus_dataplane::ctl::RUN_DIR;
use isthmus_dataplane::fib::{RouteOrigin, Via};
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::tunnel::PeerInfo;

const USAGE: &str = "\
usage: isthmusctl genkey
       isthmusctl pubkey < private.key
       isthmusctl check-config FILE
       isthmusctl show [IFNAME | --socket PATH] [--cp-socket PATH]   (the gateway on one screen)
       isthmusctl show peers|fib|stats [IFNAME | --socket PATH]      (isthmus-dp)
       isthmusctl show neighbours|routes|babel [IFNAME | --socket PATH]  (isthmus-cp)
       isthmusctl reload [IFNAME]
       isthmusctl up|down WG-QUICK-FILE                           (wg-quick with isthmus-dp)
       isthmusctl --version

genkey and pubkey are interchangeable with `wg genkey` and `wg pubkey`.
`show` without a page samples the gateway for a second: the interface, each peer (class,
endpoint, handshake age, rates, liveness probe), the Babel neighbours, route counts, the
FIB's staleness and the drops of that second and of the last minute. `--json` after any `show` prints JSON for scripts.
up and down run wg-quick(8) on its own file format (Address, DNS, MTU, Table, FwMark,
Pre/PostUp/Down, SaveConfig) with isthmus-dp as the device, also on a host whose kernel has
WireGuard (where wg-quick itself never falls back to a userspace implementation); wg-quick
then says it is 'falling back to slow userspace': that is isthmus-dp.
show talks to a running isthmus-dp through /var/run/isthmus/IFNAME.ctl and to isthmus-cp
through /var/run/isthmus/IFNAME.cp; without IFNAME, the only socket there is used. Without a
running isthmus-cp, `show routes` shows the data plane's table (`show fib`).
reload makes isthmus-dp, then isthmus-cp if it runs, read their configuration file again and
apply the difference (as SIGHUP does); an invalid file is refused with its FILE:LINE: KEY
error and the running configuration stays.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmusctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let json = args.iter().any(|a| a == "--json");
    let mut a: Vec<&str> = (args.iter())
        .map(String::as_str)
        .filter(|a| *a != "--json")
        .collect();
    // `show`'s overview: isthmus-cp's socket when it is not /var/run/isthmus/IFNAME.cp.
    let cp_socket = match a.iter().position(|x| *x == "--cp-socket") {
        Some(i) if i + 1 < a.len() => {
            let p = PathBuf::from(a[i + 1]);
            a.drain(i..=i + 1);
            Some(p)
        }
        Some(_) => bail!("--cp-socket needs a path\n{USAGE}"),
        None => None,
    };
    match a.as_slice() {
        ["genkey"] => {
            println!("{}", Key::generate_private().to_base64());
            Ok(())
        }
        ["pubkey"] => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading stdin")?;
            let k = Key::from_base64(&s).context("Key is not the correct length or format")?;
            println!("{}", k.public_key().to_base64());
            Ok(())
        }
        ["check-config", file] => {
            let cfg = isthmus_controlplane::config::load(Path::new(file))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{file}: OK ({} peers, {} routes)",
                cfg.device.peers.len(),
                cfg.device.routes.len()
            );
            println!("{}", babel_summary(&cfg.babel));
            Ok(())
        }
        ["show", what @ ("neighbours" | "neighbors" | "babel"), rest @ ..] => {
            let path = socket_of(rest, "cp")?;
            print!("{}", cp_page(&path, what, json)?);
            Ok(())
        }
        ["show", "routes", rest @ ..] if socket_of(rest, "cp").is_ok_and(|p| p.exists()) => {
            let path = socket_of(rest, "cp")?;
            print!("{}", cp_page(&path, "routes", json)?);
            Ok(())
        }
        ["show"] | ["show", "--socket", _] => show_overview(&a[1..], cp_socket, json),
        ["show", ifname] if !PAGES.contains(ifname) => show_overview(&a[1..], cp_socket, json),
        ["show", what, rest @ ..] => {
            let path = socket(rest)?;
            let mut c = CtlClient::connect(&path, "isthmusctl")
                .with_context(|| "is isthmus-dp running?".to_string())?;
            match *what {
                "peers" => show_peers(&mut c, json),
                // Without a running isthmus-cp, `routes` shows the data plane's table.
                "routes" | "fib" => show_routes(&mut c, json),
                "stats" => show_stats(&mut c, json),
                other => bail!("unknown: show {other}\n{USAGE}"),
            }
        }
        ["reload", rest @ ..] => {
            let path = socket(rest)?;
            let mut c = CtlClient::connect(&path, "isthmusctl")
                .with_context(|| "is isthmus-dp running?".to_string())?;
            match c.request(&Msg::Reload)? {
                Msg::Ok => println!("isthmus-dp: reloaded (its log says what changed)"),
                Msg::Error(e) => bail!("isthmus-dp: {e}"),
                other => bail!("isthmus-dp: unexpected answer {other:?}"),
            }
            let cp = socket_of(rest, "cp").ok().filter(|p| p.exists());
            if let Some(cp) = cp {
                let answer = isthmus_controlplane::daemon::query(&cp, "reload")
                    .context("is isthmus-cp running?")?;
                let answer = answer.trim_end();
                if let Some(e) = answer.strip_prefix("error: ") {
                    bail!("isthmus-cp: {e}");
                }
                println!("isthmus-cp: {answer}");
            }
            Ok(())
        }
        [action @ ("up" | "down"), file] => wg_quick(action, file),
        ["-V" | "--version"] => {
            println!("isthmusctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// A program on `$PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// isthmus-dp: `$ISTHMUS_DP`, else next to isthmusctl, else the package's, else on `$PATH`.
fn isthmus_dp() -> PathBuf {
    if let Some(p) = std::env::var_os("ISTHMUS_DP") {
        return p.into();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("isthmus-dp")))
        .filter(|p| p.is_file());
    sibling
        .or_else(|| Some(PathBuf::from("/usr/sbin/isthmus-dp")).filter(|p| p.is_file()))
        .or_else(|| on_path("isthmus-dp"))
        .unwrap_or_else(|| "isthmus-dp".into())
}

/// `isthmusctl up|down FILE`: wg-quick with isthmus-dp as the device. wg-quick creates a
/// kernel WireGuard link when it can, and when the module is loaded it does not fall back at
/// all; so `up` runs it in a private mount namespace where /sys/module is hidden, with an
/// `ip` on PATH that refuses `type wireguard`. Everything else (addresses, routes, Table,
/// FwMark, DNS, hooks) is wg-quick's own doing. `down` is plain `wg-quick down`.
fn wg_quick(action: &str, file: &str) -> anyhow::Result<()> {
    let status = if action == "down" {
        std::process::Command::new("wg-quick")
            .args(["down", file])
            .status()
            .context("running wg-quick (package wireguard-tools)")?
    } else {
        use std::os::unix::fs::PermissionsExt as _;
        let real_ip = on_path("ip").context("no `ip` on PATH (package iproute2)")?;
        let shim = std::env::temp_dir().join(format!("isthmusctl-up-{}", std::process::id()));
        std::fs::create_dir_all(&shim)?;
        let ip = shim.join("ip");
        std::fs::write(
            &ip,
            format!(
                "#!/bin/sh\n# isthmusctl up: the device is isthmus-dp, never kernel WireGuard.\n\
                 for a in \"$@\"; do [ \"$a\" = wireguard ] && exit 2; done\n\
                 exec '{}' \"$@\"\n",
                real_ip.display()
            ),
        )?;
        std::fs::set_permissions(&ip, std::fs::Permissions::from_mode(0o755))?;
        let path = std::env::join_paths(
            std::iter::once(shim.clone()).chain(
                std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
        )?;
        let status = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs isthmusctl /sys/module 2>/dev/null; exec wg-quick up \"$1\"")
            .args(["sh", file])
            .env("PATH", path)
            .env("WG_QUICK_USERSPACE_IMPLEMENTATION", isthmus_dp())
            .status()
            .context("running unshare and wg-quick (packages util-linux, wireguard-tools)");
        let _ = std::fs::remove_dir_all(&shim);
        status?
    };
    if !status.success() {
        bail!("wg-quick {action} {file}: {status}");
    }
    Ok(())
}

/// The pages of `show`.
const PAGES: [&str; 8] = [
    "peers",
    "fib",
    "stats",
    "routes",
    "neighbours",
    "neighbors",
    "babel",
    "--socket",
];

/// A page of isthmus-cp (its JSON form with `json`).
fn cp_page(path: &Path, what: &str, json: bool) -> anyhow::Result<String> {
    let query = if json {
        format!("{what}.json")
    } else {
        what.to_string()
    };
    isthmus_controlplane::daemon::query(path, &query).context("is isthmus-cp running?")
}

fn peer_json(p: &PeerInfo) -> serde_json::Value {
    let unix = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    serde_json::json!({
        "name": p.label(),
        "public_key": p.public_key.to_base64(),
        "class": p.class.as_str(),
        "endpoint": p.endpoint.map(|e| e.to_string()),
        "latest_handshake": unix(p.last_handshake),
        "rx_bytes": p.rx_bytes,
        "tx_bytes": p.tx_bytes,
        "rx_packets": p.rx_packets,
        "tx_packets": p.tx_packets,
        "handshakes": p.handshakes,
        "persistent_keepalive": p.persistent_keepalive,
        "allowed_ips": p.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "liveness": p.liveness.map(|up| if up { "up" } else { "down" }),
    })
}

/// The liveness probe's verdict for a table: up, down, or - without a probe.
fn liveness(p: &PeerInfo) -> &'static str {
    match p.liveness {
        Some(true) => "up",
        Some(false) => "down",
        None => "-",
    }
}

/// The peers and counters of one moment.
type Sample = (Vec<PeerInfo>, Vec<(String, u64)>);

/// `isthmusctl show [IFNAME]`: the gateway on one screen, from two samples a second apart
/// (rates and drops are of that second).
fn show_overview(rest: &[&str], cp_socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let path = socket(rest)?;
    let mut c = CtlClient::connect(&path, "isthmusctl").context("is isthmus-dp running?")?;
    let sample = |c: &mut CtlClient| -> anyhow::Result<Sample> {
        let Msg::Peers(peers) = c.request(&Msg::GetPeers)? else {
            bail!("unexpected answer")
        };
        let Msg::Stats(stats) = c.request(&Msg::GetStats)? else {
            bail!("unexpected answer")
        };
        Ok((peers, stats))
    };
    let (p0, s0) = sample(&mut c)?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (p1, s1) = sample(&mut c)?;
    let secs = t0.elapsed().as_secs_f64().max(0.001);
    let Msg::Routes(routes) = c.request(&Msg::GetRoutes)? else {
        bail!("unexpected answer")
    };
    let ifname = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let stat = |s: &[(String, u64)], k: &str| s.iter().find(|(n, _)| n == k).map_or(0, |x| x.1);
    let drops: Vec<(String, f64)> = (s1.iter())
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(k, v)| (k.clone(), v.saturating_sub(stat(&s0, k)) as f64 / secs))
        .filter(|(_, r)| *r > 0.0)
        .collect();
    let minute: Vec<(String, u64)> = (s1.iter())
        .filter_map(|(k, v)| Some((k.strip_prefix("minute_")?.to_string(), *v)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // Bounds reached since the data plane started (README: Limits).
    let limits: Vec<(String, u64)> = (s1.iter())
        .filter_map(|(k, v)| Some((k.strip_prefix("limit_")?.to_string(), *v)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let rate = |p: &PeerInfo, f: fn(&PeerInfo) -> u64| {
        let before = p0
            .iter()
            .find(|q| q.public_key == p.public_key)
            .map_or(f(p), f);
        f(p).saturating_sub(before) as f64 / secs
    };
    let fresh = |p: &PeerInfo| {
        p.last_handshake
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|d| d.as_secs() < 180)
    };
    let cp = cp_socket.or_else(|| socket_of(rest, "cp").ok().filter(|p| p.exists()));
    let babel = cp.as_ref().and_then(|p| cp_page(p, "babel", true).ok());
    let neighbours = cp
        .as_ref()
        .and_then(|p| cp_page(p, "neighbours", true).ok());
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
    };
    let (babel, neighbours) = (parse(&babel), parse(&neighbours));
    let stale = stat(&s1, "fib_stale") > 0;
    if json {
        let peers: Vec<serde_json::Value> = (p1.iter())
            .map(|p| {
                let mut v = peer_json(p);
                v["rx_bytes_per_second"] = rate(p, |p| p.rx_bytes).into();
                v["tx_bytes_per_second"] = rate(p, |p| p.tx_bytes).into();
                v
            })
            .collect();
        let page = serde_json::json!({
            "interface": ifname,
            "peers": peers,
            "fib_routes": routes.len(),
            "fib_stale": stale,
            "drops_per_second": drops.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "drops_last_minute": minute.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "limits_reached": limits.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "babel": babel,
            "neighbours": neighbours,
        });
        println!("{page}");
        return Ok(());
    }
    println!(
        "{ifname}: {} peers, {} with a handshake in the last 3 min; FIB {} routes{}",
        p1.len(),
        p1.iter().filter(|p| fresh(p)).count(),
        routes.len(),
        if stale {
            " (stale: isthmus-cp is gone)"
        } else {
            ""
        }
    );
    let rows: Vec<Vec<String>> = (p1.iter())
        .map(|p| {
            vec![
                p.label(),
                p.class.as_str().into(),
                p.endpoint.map_or("-".into(), |e| e.to_string()),
                ago(p.last_handshake),
                format!("{}/s", bytes(rate(p, |p| p.rx_bytes) as u64)),
                format!("{}/s", bytes(rate(p, |p| p.tx_bytes) as u64)),
                liveness(p).into(),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "CLASS",
            "ENDPOINT",
            "HANDSHAKE",
            "RX",
            "TX",
            "LIVENESS",
        ],
        &rows,
    );
    match (&babel, &neighbours) {
        (Some(b), Some(serde_json::Value::Array(ns))) => {
            println!(
                "\nbabel: router-id {}, {} selected routes of {} prefixes, {} originated; {}",
                b["router_id"].as_str().unwrap_or("?"),
                b["routes"]["selected"],
                b["routes"]["prefixes"],
                b["routes"]["originated"],
                if b["synced"] == true {
                    "synchronised"
                } else {
                    "start-up hold"
                }
            );
            let rows: Vec<Vec<String>> = (ns.iter())
                .map(|n| {
                    vec![
                        n["link"].as_str().unwrap_or("?").into(),
                        n["address"].as_str().unwrap_or("?").into(),
                        n["cost"].to_string(),
                        n["rtt_seconds"]
                            .as_f64()
                            .map_or("-".into(), |r| format!("{:.1}ms", r * 1e3)),
                    ]
                })
                .collect();
            table(&["LINK", "NEIGHBOUR", "COST", "RTT"], &rows);
        }
        _ => println!("\nbabel: isthmus-cp is not running"),
    }
    let list: Vec<String> = drops.iter().map(|(k, r)| format!("{k} {r:.0}/s")).collect();
    println!(
        "\ndrops in the last second: {}",
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    );
    let list: Vec<String> = minute.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "drops in the last minute: {}",
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    );
    if !limits.is_empty() {
        let list: Vec<String> = limits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("limits reached since start: {}", list.join(", "));
    }
    Ok(())
}

/// One line: `babel: interfaces eth1 (wired), wlan0 (mesh); 3 of 3 peers; originates 10.10.0.0/16, fd10::/48; 2 filters`.
fn babel_summary(b: &BabelConfig) -> String {
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let ifaces = list(
        b.interfaces
            .iter()
            .map(|i| format!("{} ({})", i.name, i.class))
            .collect(),
    );
    let mut originate: Vec<String> = b.originate.iter().map(ToString::to_string).collect();
    if b.default_route == DefaultRoute::Originate {
        originate.push("default".into());
    }
    let enabled = b.peers.iter().filter(|p| p.enabled).count();
    format!(
        "babel: interfaces {ifaces}; {enabled} of {} peers; originates {}; {} filters",
        b.peers.len(),
        list(originate),
        b.filters.len()
    )
}

fn socket(rest: &[&str]) -> anyhow::Result<PathBuf> {
    socket_of(rest, "ctl")
}

/// The socket of a data plane (`ctl`) or control plane (`cp`) by interface name.
fn socket_of(rest: &[&str], ext: &str) -> anyhow::Result<PathBuf> {
    match rest {
        ["--socket", p] => Ok(PathBuf::from(p)),
        [ifname] if !ifname.starts_with('-') => {
            Ok(Path::new(RUN_DIR).join(format!("{ifname}.{ext}")))
        }
        [] => {
            let found: Vec<PathBuf> = std::fs::read_dir(RUN_DIR)
                .with_context(|| format!("no isthmus-dp is running ({RUN_DIR} does not exist)"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect();
            match found.as_slice() {
                [one] => Ok(one.clone()),
                [] => bail!("no isthmus-dp control socket in {RUN_DIR}"),
                _ => bail!(
                    "several isthmus-dp are running; name one: {}",
                    names(&found)
                ),
            }
        }
        _ => bail!("{USAGE}"),
    }
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ago(t: Option<SystemTime>) -> String {
    let Some(t) = t else { return "never".into() };
    let s = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Print rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn show_peers(c: &mut CtlClient, json: bool) -> anyhow::Result<()> {
    let Msg::Peers(peers) = c.request(&Msg::GetPeers)? else {
        bail!("unexpected answer")
    };
    if json {
        let list: Vec<serde_json::Value> = peers.iter().map(peer_json).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.label(),
                p.public_key.to_base64(),
                p.class.as_str().into(),
                p.endpoint.map_or("-".into(), |e| e.to_string()),
                ago(p.last_handshake),
                format!("{} / {}", bytes(p.rx_bytes), bytes(p.tx_bytes)),
                p.allowed_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "PUBLIC KEY",
            "CLASS",
            "ENDPOINT",
            "HANDSHAKE",
            "RX / TX",
            "ALLOWED IPS",
        ],
        &rows,
    );
    Ok(())
}

fn show_routes(c: &mut CtlClient, json: bool) -> anyhow::Result<()> {
    let Msg::Peers(peers) = c.request(&Msg::GetPeers)? else {
        bail!("unexpected answer")
    };
    let Msg::Routes(routes) = c.request(&Msg::GetRoutes)? else {
        bail!("unexpected answer")
    };
    let ifaces = isthmus_dataplane::io::ifaddr::all().unwrap_or_default();
    let label = |r: &RouteInfo| match r.next_hop {
        Via::Peer(k) => peers
            .iter()
            .find(|p| p.public_key == k)
            .map_or_else(|| k.to_base64()[..8].to_string(), PeerInfo::label),
        Via::Local => "local".into(),
        Via::Blackhole => "blackhole".into(),
        Via::Neighbour { ifindex, addr } => format!("{addr} dev {}", ifname(&ifaces, ifindex)),
    };
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let origin = match r.origin {
                RouteOrigin::AllowedIps => "allowed-ips",
                RouteOrigin::Connected => "connected",
                RouteOrigin::Static => "static",
                RouteOrigin::Control => "babel",
            };
            vec![r.prefix.to_string(), label(r), origin.into()]
        })
        .collect();
    if json {
        let list: Vec<serde_json::Value> = (rows.iter())
            .map(|r| serde_json::json!({"prefix": r[0], "next_hop": r[1], "origin": r[2]}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    table(&["PREFIX", "NEXT HOP", "ORIGIN"], &rows);
    Ok(())
}

fn show_stats(c: &mut CtlClient, json: bool) -> anyhow::Result<()> {
    let Msg::Stats(stats) = c.request(&Msg::GetStats)? else {
        bail!("unexpected answer")
    };
    if json {
        let map: serde_json::Map<String, serde_json::Value> = (stats.iter())
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = stats
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    table(&["COUNTER", "VALUE"], &rows);
    Ok(())
}

/// The name of interface `ifindex` among `ifaces` (its number when it has none any more).
fn ifname(ifaces: &[isthmus_dataplane::io::ifaddr::IfAddr], ifindex: u32) -> String {
    ifaces
        .iter()
        .find(|a| a.ifindex == ifindex)
        .map_or_else(|| format!("#{ifindex}"), |a| a.ifname.clone())
}
