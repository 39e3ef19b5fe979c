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
       isthmusctl show peers|fib|stats [IFNAME | --socket PATH]      (isthmus-dp)
       isthmusctl show neighbours|routes|babel [IFNAME | --socket PATH]  (isthmus-cp)
       isthmusctl reload [IFNAME]
       isthmusctl --version

genkey and pubkey are interchangeable with `wg genkey` and `wg pubkey`.
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
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
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
            print!(
                "{}",
                isthmus_controlplane::daemon::query(&path, what)
                    .context("is isthmus-cp running?")?
            );
            Ok(())
        }
        ["show", "routes", rest @ ..] if socket_of(rest, "cp").is_ok_and(|p| p.exists()) => {
            let path = socket_of(rest, "cp")?;
            print!(
                "{}",
                isthmus_controlplane::daemon::query(&path, "routes")
                    .context("is isthmus-cp running?")?
            );
            Ok(())
        }
        ["show", what, rest @ ..] => {
            let path = socket(rest)?;
            let mut c = CtlClient::connect(&path, "isthmusctl")
                .with_context(|| "is isthmus-dp running?".to_string())?;
            match *what {
                "peers" => show_peers(&mut c),
                // Without a running isthmus-cp, `routes` shows the data plane's table.
                "routes" | "fib" => show_routes(&mut c),
                "stats" => show_stats(&mut c),
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

fn show_peers(c: &mut CtlClient) -> anyhow::Result<()> {
    let Msg::Peers(peers) = c.request(&Msg::GetPeers)? else {
        bail!("unexpected answer")
    };
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

fn show_routes(c: &mut CtlClient) -> anyhow::Result<()> {
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
    table(&["PREFIX", "NEXT HOP", "ORIGIN"], &rows);
    Ok(())
}

fn show_stats(c: &mut CtlClient) -> anyhow::Result<()> {
    let Msg::Stats(stats) = c.request(&Msg::GetStats)? else {
        bail!("unexpected answer")
    };
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
