//! Project automation: `cargo xtask test | demo [--keep] [--afxdp] | bench | package`.
//!
//! - `test`: builds the release binaries, runs every unit, property and loopback test of the
//!   workspace, then the tests in network namespaces (root only) against the built
//!   `isthmus-dp`, and prints `N passed, N failed`.
//! - `demo`: two mesh islands joined by two isthmus trunk gateways, in namespaces; traffic
//!   across, `wg show`, routes and metrics; cleans up unless `--keep`; `--afxdp` runs the
//!   gateways' data planes on the AF_XDP backend (trunk underlay and island interface).
//! - `bench`: the side-by-side tunnel benchmark and the criterion micro-benchmarks, with a
//!   table of ratios (see `bench.rs`).
//! - `package`: the Debian package (`isthmus_lab::package`).
//! - `soak [--minutes N]`: the islands under churn with traffic, resources sampled (see
//!   `soak.rs`); `test` runs it for `ISTHMUS_SOAK_MINUTES` (default 2).
//! - `fuzz [--time SECS] [TARGET...]`: the cargo-fuzz targets (see `fuzz.rs`); `test` runs
//!   each for a short smoke (`ISTHMUS_FUZZ_SECS`, default 6 s).
#![deny(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod bench;
mod fuzz;
mod soak;

use anyhow::{bail, Context, Result};
use isthmus_lab::babel_islands::{BabelIslands, IslandsSpec};
use isthmus_lab::{is_root, target_dir, workspace_root, PingOpts, PingProbe, WgImpl};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test            build, run the unit tests, then the network-namespace tests (needs root)
  demo [--keep] [--afxdp]
                  two mesh islands joined by two isthmus trunk gateways (needs root);
                  --keep leaves the namespaces and processes running; --afxdp runs
                  the gateways on the AF_XDP backend (trunk and island interfaces)
  bench [--help]  side-by-side tunnel benchmark and criterion benches (needs root)
  package         the Debian package, target/package/isthmus_VERSION_ARCH.deb
  soak [--minutes N]
                  the islands under churn (peers, routes, trunks, isthmus-cp restarts) with
                  traffic for N minutes (default 10), RSS/fds/threads sampled (needs root)
  fuzz [--time SECS] [TARGET...]
                  every cargo-fuzz target (nightly) for SECS (default 60) each, on the
                  committed seeds and crash regressions; prints execs/s and coverage";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(
            args.iter().any(|a| a == "--keep"),
            args.iter().any(|a| a == "--afxdp"),
        ),
        Some("bench") => bench::run(&args[1..]),
        Some("package") => package(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the release binaries and the Debian package from them.
fn package() -> Result<()> {
    build_release()?;
    let deb = isthmus_lab::package::build_deb()?;
    let size = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    println!("{} ({} KiB)", deb.display(), size / 1024);
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// Builds the release binaries the lab runs.
fn build_release() -> Result<()> {
    eprintln!("==> cargo build --release (isthmus-dp, isthmusctl, lab-tool, isthmus-wggen)");
    let status = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "isthmus-dataplane",
            "-p",
            "isthmus-controlplane",
            "-p",
            "isthmus-lab",
            "-p",
            "isthmus-benches",
            "--bins",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}

/// Totals of `test result:` lines.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs a `cargo test ...` command, echoing its output, and adds up its `test result:` lines.
/// A run that fails without reporting a failed test (a build error, a crashed test binary)
/// counts as one failure.
fn run_tests(what: &str, mut cmd: Command) -> Result<Tally> {
    eprintln!("==> {what}");
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let out = child.stdout.take().context("test stdout")?;
    let mut t = Tally::default();
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(kind)) = (w.next(), w.next()) {
                    let Ok(n) = n.parse::<u64>() else { continue };
                    match kind {
                        "passed" => t.passed += n,
                        "failed" => t.failed += n,
                        "ignored" => t.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && t.failed == 0 {
        eprintln!("xtask: {what} failed ({status}) without a failed test: counted as one failure");
        t.failed += 1;
    }
    Ok(t)
}

fn test() -> Result<()> {
    let started = Instant::now();
    let mut total = Tally::default();
    let add = |total: &mut Tally, t: Tally| {
        total.passed += t.passed;
        total.failed += t.failed;
        total.ignored += t.ignored;
    };

    let built = build_release();
    if let Err(e) = &built {
        eprintln!("xtask: {e:#}");
        total.failed += 1;
    }

    // Unit, property and loopback tests of every crate, and the lab's own unit tests.
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--exclude",
        "isthmus-lab",
    ]);
    add(
        &mut total,
        run_tests("unit and property tests (cargo test --workspace)", unit)?,
    );
    let mut lab_unit = cargo();
    lab_unit.args(["test", "-p", "isthmus-lab", "--lib", "--bins"]);
    add(&mut total, run_tests("lab unit tests", lab_unit)?);

    // The fuzz smoke: every target a few seconds, so that they keep building and running
    // (and every crash regression runs again).
    add(&mut total, fuzz_smoke());

    // Tests in network namespaces.
    if !is_root() {
        eprintln!(
            "xtask: ERROR: the network-namespace tests need root (ip netns add) and were NOT run; \
             run `cargo xtask test` as root (CI does)"
        );
        total.failed += 1;
    } else if built.is_ok() {
        let mut ns = cargo();
        ns.args([
            "test",
            "-p",
            "isthmus-lab",
            "--no-fail-fast",
            "--test",
            "*",
            "--",
            "--test-threads=2",
        ]);
        if std::env::var_os("ISTHMUS_DP").is_none() {
            ns.env("ISTHMUS_DP", release_bin("isthmus-dp"));
        }
        if std::env::var_os("ISTHMUS_LAB_TOOL").is_none() {
            ns.env("ISTHMUS_LAB_TOOL", release_bin("lab-tool"));
        }
        if std::env::var_os("ISTHMUS_WGGEN").is_none() {
            ns.env("ISTHMUS_WGGEN", release_bin("isthmus-wggen"));
        }
        if std::env::var_os("ISTHMUS_CP").is_none() {
            ns.env("ISTHMUS_CP", release_bin("isthmus-cp"));
        }
        eprintln!(
            "xtask: isthmus-dp under test: {}",
            std::env::var("ISTHMUS_DP")
                .unwrap_or_else(|_| release_bin("isthmus-dp").display().to_string())
        );
        add(
            &mut total,
            run_tests("network-namespace tests (tests/tests/*.rs)", ns)?,
        );
    }

    // The churn soak, short.
    if is_root() && built.is_ok() {
        let minutes: f64 = std::env::var("ISTHMUS_SOAK_MINUTES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0);
        eprintln!("==> soak: {minutes} min of churn (cargo xtask soak)");
        use_release_binaries();
        match soak::run(minutes) {
            Ok(()) => total.passed += 1,
            Err(e) => {
                eprintln!("xtask: soak: {e:#}");
                total.failed += 1;
            }
        }
    }

    eprintln!("xtask: tests took {:.0?}", started.elapsed());
    if total.ignored > 0 {
        println!(
            "{} passed, {} failed, {} skipped",
            total.passed, total.failed, total.ignored
        );
    } else {
        println!("{} passed, {} failed", total.passed, total.failed);
    }
    if total.failed > 0 {
        bail!("{} test(s) failed", total.failed);
    }
    Ok(())
}

/// Points the lab at the release binaries (unless the environment names others).
fn use_release_binaries() {
    for (var, bin) in [
        ("ISTHMUS_DP", "isthmus-dp"),
        ("ISTHMUS_CP", "isthmus-cp"),
        ("ISTHMUS_LAB_TOOL", "lab-tool"),
        ("ISTHMUS_WGGEN", "isthmus-wggen"),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, release_bin(bin));
        }
    }
}

/// `cargo xtask soak [--minutes N]`.
fn soak(args: &[String]) -> Result<()> {
    let minutes = match args {
        [] => 10.0,
        [flag, n] if flag == "--minutes" => n.parse().context("--minutes: a number")?,
        _ => bail!("usage: cargo xtask soak [--minutes N]"),
    };
    if !is_root() {
        bail!("the soak builds network namespaces and needs root");
    }
    ensure_deps()?;
    // Binaries given (ISTHMUS_DP and ISTHMUS_CP): those, as they are; else the build's.
    if std::env::var_os("ISTHMUS_DP").is_none() || std::env::var_os("ISTHMUS_CP").is_none() {
        build_release()?;
    }
    use_release_binaries();
    soak::run(minutes)
}

/// Every fuzz target for `ISTHMUS_FUZZ_SECS` (default 6) seconds: one failure per target
/// that crashed, one if they could not be built; skipped (loudly) without a nightly toolchain.
fn fuzz_smoke() -> Tally {
    let secs = std::env::var("ISTHMUS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("==> fuzz smoke: every target {secs} s (cargo xtask fuzz)");
    let targets = match fuzz::targets() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xtask: fuzz targets: {e:#}");
            return Tally {
                failed: 1,
                ..Tally::default()
            };
        }
    };
    if !fuzz::have_nightly() {
        eprintln!(
            "xtask: WARNING: no nightly toolchain: the {} fuzz targets were NOT run (skipped)",
            targets.len()
        );
        return Tally {
            ignored: targets.len() as u64,
            ..Tally::default()
        };
    }
    match fuzz::fuzz(&targets, secs) {
        Ok(outcomes) => {
            let failed = outcomes.iter().filter(|o| o.crash.is_some()).count() as u64;
            Tally {
                passed: outcomes.len() as u64 - failed,
                failed,
                ignored: 0,
            }
        }
        Err(e) => {
            eprintln!("xtask: fuzz smoke: {e:#}");
            Tally {
                failed: 1,
                ..Tally::default()
            }
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the system packages when a tool the demo needs is missing.
fn ensure_deps() -> Result<()> {
    if ["wg", "wireguard-go", "iperf3", "ping", "ip"]
        .iter()
        .all(|c| have(c))
    {
        return Ok(());
    }
    eprintln!("==> installing what the demo needs (scripts/install-deps.sh)");
    let status = Command::new("bash")
        .arg(workspace_root().join("scripts/install-deps.sh"))
        .status()
        .context("running scripts/install-deps.sh")?;
    if !status.success() {
        bail!("scripts/install-deps.sh failed");
    }
    Ok(())
}

fn section(title: &str) {
    println!(
        "\n=== {title} {}",
        "=".repeat(70usize.saturating_sub(title.len()))
    );
}

/// Removes the trunk peers of `nodes` (the two ends of a trunk) with `wg set ... remove` and
/// adds them back with `wg set`, as an operator adds a trunk on two running gateways; prints
/// how long `prefix` took to leave and to come back to the first one's FIB through its peer.
fn peers_at_run_time(isl: &BabelIslands, nodes: [&str; 2], prefix: &str) -> Result<()> {
    let mut peers = Vec::new();
    for node in nodes {
        let wg = isl.t.wg(node);
        let peer = wg.dump()?.into_iter().next().context("no trunk peer")?;
        peers.push((wg, peer));
    }
    let (wg, node) = (peers[0].0, nodes[0]);
    // Through the peer, not through a neighbour on the island (`fe80::… dev …`), where the
    // route goes while the peer is away.
    let in_fib = || {
        isthmus_lab::babel_islands::show_fib(wg).is_ok_and(|f| {
            f.lines()
                .any(|l| l.starts_with(prefix) && !l.contains(" dev "))
        })
    };
    let wait = |want: bool| -> Result<Duration> {
        let t0 = Instant::now();
        while in_fib() != want {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!(
                    "{prefix} through the peer still {}in {node}'s FIB after 20 s",
                    if want { "not " } else { "" }
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(t0.elapsed())
    };
    for (wg, p) in &peers {
        wg.wg(&["set", &wg.ifname, "peer", &p.public_key, "remove"])?;
    }
    let gone = wait(false)?;
    println!(
        "wg set ... peer ... remove on {} and {}: {node}'s FIB routes {prefix} through the island after {} ms",
        nodes[0],
        nodes[1],
        gone.as_millis()
    );
    for (wg, p) in &peers {
        let endpoint = p
            .endpoint
            .clone()
            .context("the trunk peer has no endpoint")?;
        wg.wg(&[
            "set",
            &wg.ifname,
            "peer",
            &p.public_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &p.allowed_ips.join(","),
        ])?;
    }
    let back = wait(true)?;
    println!(
        "wg set ... peer ... endpoint ... on both: a Babel link again, {prefix} through it after {} ms \
         (hello interval 1 s)",
        back.as_millis()
    );
    Ok(())
}

fn demo(keep: bool, afxdp: bool) -> Result<()> {
    if !is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    ensure_deps()?;
    build_release()?;
    if std::env::var_os("ISTHMUS_DP").is_none() {
        std::env::set_var("ISTHMUS_DP", release_bin("isthmus-dp"));
    }
    if std::env::var_os("ISTHMUS_LAB_TOOL").is_none() {
        std::env::set_var("ISTHMUS_LAB_TOOL", release_bin("lab-tool"));
    }
    let dp = WgImpl::isthmus_binary()?;
    let real = WgImpl::Isthmus.is_real_isthmus();

    section("topology");
    println!(
        "  h1 ── r1 ──┬── g1a ══ trunk a ══ g2a ──┬── r2 ── h2\n\
         \x20            └── g1b ══ trunk b ══ g2b ──┘\n\n\
         island 1: 10.1.1.0/24, fd00:1:1::/64   host h1 .2, babeld router r1 .1\n\
         island 2: 10.2.1.0/24, fd00:2:1::/64   host h2 .2, babeld router r2 .1\n\
         gateways: isthmus-dp ({}) + isthmus-cp, WireGuard trunks over 10.100.0.0/24 and\n\
         10.101.0.0/24; Babel everywhere (hello 1 s), no static routes, no allowed-IPs routes;\n\
         the trunk peers run the data plane's liveness probe (100 ms, down after 2 misses)",
        dp.display()
    );
    if !real {
        bail!("the demo needs the real isthmus-dp (ISTHMUS_DP points at a stand-in)");
    }
    if std::env::var_os("ISTHMUS_CP").is_none() {
        std::env::set_var("ISTHMUS_CP", release_bin("isthmus-cp"));
    }
    let isl = BabelIslands::build_spec(&IslandsSpec {
        trunks: 2,
        hello: 1,
        afxdp: afxdp.then(|| "auto".to_string()),
        liveness: Some((0.1, 2)),
        ..IslandsSpec::default()
    })
    .context("building the islands")?;
    if afxdp {
        section("AF_XDP: the mode each gateway interface got");
        for g in &isl.gateways {
            for l in isl
                .t
                .wg(&g.node)
                .log_tail(80)
                .lines()
                .filter(|l| l.contains("AF_XDP on") || l.contains("GRO"))
            {
                let msg = l.split("afxdp: ").nth(1).unwrap_or(l);
                println!("  {}: {msg}", g.node);
            }
        }
    }
    let routers = isl.routers().context("starting babeld on r1 and r2")?;
    let t = &isl.t;
    for n in t.node_names() {
        println!("  netns {}", t.ns(n).name());
    }

    section("Babel: every router learns every route");
    let learned = Instant::now();
    for (node, prefix) in [
        ("r1", "10.2.1.0/24"),
        ("r2", "10.1.1.0/24"),
        ("r1", "fd00:2:1::/64"),
        ("g1a", "10.2.1.0/24"),
        ("g2b", "10.1.1.0/24"),
    ] {
        match isl.wait_route(node, prefix, Duration::from_secs(40)) {
            Ok(_) => println!("{node}: route to {prefix} after {:.1?}", learned.elapsed()),
            Err(e) => println!("{node}: {e:#}"),
        }
    }
    section("traffic: ping across the islands");
    let (h1, h2) = (t.ns("h1"), t.ns("h2"));
    for (from, name, to) in [
        (h1, "h1", "10.2.1.2"),
        (h2, "h2", "10.1.1.2"),
        (h1, "h1", "fd00:2:1::2"),
    ] {
        if let Err(e) = from.wait_ping(to, Duration::from_secs(20)) {
            println!("{name} -> {to}: {e:#}");
            continue;
        }
        let r = from.ping_with(
            to,
            10,
            &PingOpts {
                interval: Some(0.1),
                ..Default::default()
            },
        )?;
        let rtt = r
            .output
            .lines()
            .find(|l| l.starts_with("rtt"))
            .unwrap_or("")
            .to_owned();
        println!(
            "{name} -> {to}: {}/{} replies  {rtt}",
            r.received, r.transmitted
        );
    }

    section("traffic: iperf3 TCP h1 <-> h2 (4 MB each way)");
    match h1.tcp_both_ways(&t.lab, h2, "10.2.1.2", 5201) {
        Ok((up, down)) => {
            println!(
                "h1 -> h2: {:.0} Mbit/s   ({})",
                up.mbits_per_sec, up.summary
            );
            println!(
                "h2 -> h1: {:.0} Mbit/s   ({})",
                down.mbits_per_sec, down.summary
            );
        }
        Err(e) => println!("iperf3 failed: {e:#}"),
    }

    for (g, what) in [
        ("g1a", "neighbours"),
        ("g1a", "routes"),
        ("g1a", "babel"),
        ("g1a", "fib"),
    ] {
        section(&format!("{g}: isthmusctl show {what}"));
        match isl.show(g, what) {
            Ok(s) => println!("{}", s.trim_end()),
            Err(e) => println!("failed: {e:#}"),
        }
    }
    section("r1: babeld's kernel routes");
    println!(
        "{}",
        t.ns("r1")
            .exec(&["ip", "route", "show", "proto", "babel"])
            .unwrap_or_default()
            .trim_end()
    );

    section("failover: cut the trunk in use under a 10 ms ping");
    match isl.trunk_in_use() {
        None => println!("r1 has no route to island 2; skipping"),
        Some(k) => {
            let probe = PingProbe::start(h1, "10.2.1.2", 10)?;
            std::thread::sleep(Duration::from_secs(2));
            let cut = Instant::now();
            isl.set_trunk(k, false)?;
            println!(
                "trunk {} cut (ip link set down on both ends)",
                (b'a' + k as u8) as char
            );
            let resumed = probe.wait_replies(probe.replies_so_far() + 50, Duration::from_secs(40));
            std::thread::sleep(Duration::from_secs(2));
            let r = probe.finish()?;
            match resumed {
                Ok(()) => println!(
                    "traffic moved to trunk {}: outage {:.2} s (longest gap between replies), \
                     {} of {} pings lost; target with the 100 ms liveness probe: < 0.3 s \
                     (by hellos alone, 2 hello intervals and more)",
                    isl.trunk_in_use().map_or('?', |k| (b'a' + k as u8) as char),
                    r.longest_gap.as_secs_f64(),
                    r.lost(),
                    r.sent
                ),
                Err(e) => println!("traffic did not resume within 40 s of the cut: {e:#}"),
            }
            let _ = cut;
            isl.set_trunk(k, true)?;
        }
    }

    section("a trunk's peers removed and added again at run time (wg set), no restart");
    if let Err(e) = peers_at_run_time(&isl, ["g1b", "g2b"], "10.2.1.0/24") {
        println!("failed: {e:#}");
    }

    section("gateways: how the data planes forwarded (isthmus_forwarded_packets_total)");
    for g in &isl.gateways {
        let m = t.ns(&g.node).exec(&[
            &release_bin("lab-tool").to_string_lossy(),
            "http-get",
            "127.0.0.1:9586",
            "/metrics",
        ]);
        let paths: Vec<String> = m
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("isthmus_forwarded_packets_total{path=\""))
            .filter_map(|l| l.split_once("\"} "))
            .filter(|(_, v)| *v != "0")
            .map(|(p, v)| format!("{p} {v}"))
            .collect();
        println!("  {}: {}", g.node, paths.join(", "));
    }
    if afxdp {
        println!(
            "  (to_mesh / from_mesh: between a tunnel and the island's interface through AF_XDP,\n   without the TUN device; to_local / from_local: through the TUN device)"
        );
    }

    section("g1a: isthmus-cp metrics (isthmus_babel_*)");
    let m = t.ns("g1a").exec(&[
        &release_bin("lab-tool").to_string_lossy(),
        "http-get",
        "127.0.0.1:9587",
        "/metrics",
    ]);
    match m {
        Ok(text) => {
            for l in text.lines().filter(|l| {
                !l.starts_with('#')
                    && (l.starts_with("isthmus_babel_neighbour_cost")
                        || l.starts_with("isthmus_babel_neighbour_rtt")
                        || l.starts_with("isthmus_babel_routes")
                        || l.starts_with("isthmus_babel_fib")
                        || l.starts_with("isthmus_babel_kernel_routes"))
            }) {
                println!("{l}");
            }
        }
        Err(e) => println!("no metrics: {e:#}"),
    }
    drop(routers);
    let t = isl.t;

    if keep {
        section("kept running (--keep)");
        let mut pids = Vec::new();
        let mut names = Vec::new();
        for n in t.node_names() {
            pids.extend(t.ns(n).pids());
            names.push(t.ns(n).name().to_owned());
        }
        println!(
            "explore with: ip netns exec {} ping 10.2.1.2",
            t.ns("h1").name()
        );
        println!("logs and keys: {}", t.lab.dir().display());
        println!(
            "clean up with: kill {} ; for n in {}; do ip netns del $n; done; rm -rf {}",
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            names.join(" "),
            t.lab.dir().display()
        );
        std::env::set_var("ISTHMUS_LAB_KEEP", "1");
        std::mem::forget(t);
    } else {
        section("cleaning up");
        drop(t);
        println!("done: namespaces deleted, processes stopped");
    }
    Ok(())
}
