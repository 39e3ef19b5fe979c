//! `isthmus-tunnel-bench`: the side-by-side tunnel benchmark in network namespaces (needs
//! root). `cargo xtask bench` builds and runs it; run it directly for a partial run:
//!
//! ```text
//! isthmus-tunnel-bench [--duration SECS] [--repeat N] [--pings N] [--isthmus-dp PATH]
//!     [--wireguard-go-upstream PATH] [--only ID,ID] [--no-relay] [--no-tunnels]
//!     [--no-floods | --only-floods] [--flood-secs SECS] [--flood-rate PPS] [--lab-tool PATH]
//!     [--no-capacity | --only-capacity] [--no-failover | --only-failover] [--capacity-secs SECS] [--capacity-rate PPS] [--wggen PATH]
//!     [--criterion DIR --criterion-since UNIX_SECS] [--out DIR]
//! ```
//!
//! Implementation ids: kernel, kernel-wg, wg-go-deb, wg-go-up, boringtun, isthmus, isthmus-afxdp (kernel
//! and wg-go-deb are the baselines and always run); wg-go-up is the wireguard-go binary given with
//! `--wireguard-go-upstream` (one you built), and is not measured without it. The report says
//! which build every column is. The handshake floods (`--only-floods` for
//! them alone) need `lab-tool` (default: next to this binary); the capacity part
//! (relay, tunnel → mesh, mesh → tunnel; `--only-capacity` for it alone) needs `isthmus-wggen` (default: next to this binary). Writes `report.md` and
//! `report.json` in `--out` (default `target/bench`) and prints the markdown.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use isthmus_benches::{interrupt, report, tunnel};

fn main() {
    if let Err(e) = run() {
        eprintln!("isthmus-tunnel-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut o = tunnel::Options {
        duration: 3,
        repeat: 3,
        pings: 200,
        isthmus_dp: None,
        upstream_wireguard_go: None,
        only: Vec::new(),
        no_relay: false,
        floods: true,
        only_floods: false,
        flood_secs: None,
        flood_rate: 200_000,
        lab_tool: None,
        capacity: true,
        only_capacity: false,
        failover: true,
        only_failover: false,
        capacity_secs: None,
        capacity_rate: 1_000_000,
        wggen: None,
        work_dir: PathBuf::from("target/bench"),
    };
    let mut criterion: Option<PathBuf> = None;
    let mut since = UNIX_EPOCH;
    let mut tunnels = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--duration" => {
                o.duration = val("--duration")?.parse().context("--duration: seconds")?
            }
            "--repeat" => o.repeat = val("--repeat")?.parse().context("--repeat: a count")?,
            "--pings" => o.pings = val("--pings")?.parse().context("--pings: a count")?,
            "--isthmus-dp" => o.isthmus_dp = Some(val("--isthmus-dp")?.into()),
            "--wireguard-go-upstream" => {
                o.upstream_wireguard_go = Some(val("--wireguard-go-upstream")?.into())
            }
            "--only" => o.only = val("--only")?.split(',').map(str::to_owned).collect(),
            "--no-relay" => o.no_relay = true,
            "--no-tunnels" => tunnels = false,
            "--no-floods" => o.floods = false,
            "--only-floods" => o.only_floods = true,
            "--flood-secs" => {
                o.flood_secs = Some(
                    val("--flood-secs")?
                        .parse()
                        .context("--flood-secs: seconds")?,
                )
            }
            "--flood-rate" => {
                o.flood_rate = val("--flood-rate")?
                    .parse()
                    .context("--flood-rate: messages per second")?
            }
            "--lab-tool" => o.lab_tool = Some(val("--lab-tool")?.into()),
            "--no-capacity" => o.capacity = false,
            "--only-capacity" => o.only_capacity = true,
            "--no-failover" => o.failover = false,
            "--only-failover" => o.only_failover = true,
            "--capacity-secs" => {
                o.capacity_secs = Some(
                    val("--capacity-secs")?
                        .parse()
                        .context("--capacity-secs: seconds")?,
                )
            }
            "--capacity-rate" => {
                o.capacity_rate = val("--capacity-rate")?
                    .parse()
                    .context("--capacity-rate: packets per second")?
            }
            "--wggen" => o.wggen = Some(val("--wggen")?.into()),
            "--criterion" => criterion = Some(val("--criterion")?.into()),
            "--criterion-since" => {
                since = UNIX_EPOCH
                    + Duration::from_secs(
                        val("--criterion-since")?
                            .parse()
                            .context("--criterion-since: unix seconds")?,
                    )
            }
            "--out" => o.work_dir = val("--out")?.into(),
            "-h" | "--help" => {
                println!("usage: isthmus-tunnel-bench [--duration SECS] [--repeat N] [--pings N] [--isthmus-dp PATH] [--wireguard-go-upstream PATH] [--only ID,ID] [--no-relay] [--no-tunnels] [--no-floods | --only-floods] [--flood-secs SECS] [--flood-rate PPS] [--lab-tool PATH] [--no-capacity | --only-capacity] [--capacity-secs SECS] [--capacity-rate PPS] [--wggen PATH] [--criterion DIR --criterion-since UNIX_SECS] [--out DIR]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if o.repeat == 0 || o.duration == 0 {
        bail!("--repeat and --duration must be at least 1");
    }
    if o.only_capacity && (!o.capacity || o.only_floods) {
        bail!("--only-capacity contradicts --no-capacity and --only-floods");
    }
    if o.only_floods && !o.floods {
        bail!("--only-floods and --no-floods contradict each other");
    }
    interrupt::install_handler()?;
    let results = if tunnels {
        Some(tunnel::run(&o)?)
    } else {
        None
    };
    let crit = criterion
        .as_ref()
        .map(|d| report::read_criterion(d, since))
        .unwrap_or_default();
    let extras = criterion
        .as_ref()
        .map(|d| report::read_extras(d, since))
        .unwrap_or_default();
    let md = report::markdown(results.as_ref(), &crit, &extras);
    std::fs::create_dir_all(&o.work_dir)?;
    let md_path = o.work_dir.join("report.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let json = serde_json::json!({ "tunnels": results, "criterion": crit, "extras": extras, "written": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) });
    let json_path = o.work_dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("{md}");
    eprintln!("report: {} and {}", md_path.display(), json_path.display());
    Ok(())
}
