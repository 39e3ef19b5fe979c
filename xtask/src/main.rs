//! Project automation: `cargo xtask test | demo [--keep] | bench`.
//!
//! - `test`: builds the release binaries, runs every unit, property and loopback test of the
//!   workspace, then the tests in network namespaces (root only) against the built
//!   `isthmus-dp`, and prints `N passed, N failed`.
//! - `demo`: two mesh islands joined by two isthmus trunk gateways, in namespaces; traffic
//!   across, `wg show`, routes and metrics; cleans up unless `--keep`.
//! - `bench`: the side-by-side tunnel benchmark and the criterion micro-benchmarks, with a
//!   table of ratios (see `bench.rs`).
#![deny(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod bench;

use anyhow::{bail, Context, Result};
use isthmus_lab::{is_root, target_dir, workspace_root, PingOpts, Topology, WgImpl};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test            build, run the unit tests, then the network-namespace tests (needs root)
  demo [--keep]   two mesh islands joined by two isthmus trunk gateways (needs root);
                  --keep leaves the namespaces and processes running
  bench [--help]  side-by-side tunnel benchmark and criterion benches (needs root)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(args.iter().any(|a| a == "--keep")),
        Some("bench") => bench::run(&args[1..]),
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
    eprintln!("==> cargo build --release (isthmus-dp, isthmusctl, lab-tool)");
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

fn demo(keep: bool) -> Result<()> {
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
        "  h1 ── p1 ══ g1 ════ trunk ════ g2 ══ p2 ── h2\n\n\
         island 1: 10.1.0.0/16, fd00:1::/32   host h1 10.1.1.2   peer p1 (wireguard-go)\n\
         island 2: 10.2.0.0/16, fd00:2::/32   host h2 10.2.1.2   peer p2 (wireguard-go)\n\
         gateways g1, g2: {} (trunk veth 10.100.0.1 <-> 10.100.0.2, UDP 51820){}",
        dp.display(),
        if real {
            ""
        } else {
            "\n(stand-in for isthmus-dp: the gateways' kernels forward)"
        }
    );
    let t =
        Topology::islands(WgImpl::Isthmus, WgImpl::WireguardGo).context("building the islands")?;
    for n in t.node_names() {
        println!("  netns {}", t.ns(n).name());
    }

    section("traffic: ping across the trunk");
    let (h1, h2) = (t.ns("h1"), t.ns("h2"));
    for (from, name, to) in [
        (h1, "h1", "10.2.1.2"),
        (h2, "h2", "10.1.1.2"),
        (h1, "h1", "fd00:2:1::2"),
    ] {
        if let Err(e) = from.wait_ping(to, Duration::from_secs(15)) {
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

    for g in ["g1", "g2"] {
        let w = t.wg(g);
        section(&format!("{g}: wg show {}", w.ifname));
        match w.wg(&["show", &w.ifname]) {
            Ok(s) => println!("{}", s.trim_end()),
            Err(e) => println!("wg show failed: {e:#}"),
        }
        section(&format!("{g}: isthmusctl show peers"));
        isthmusctl_show(&t, g, "peers");
        section(&format!("{g}: isthmusctl show routes"));
        isthmusctl_show(&t, g, "routes");
        section(&format!("{g}: metrics (isthmus_*)"));
        match w.metrics() {
            Ok(m) => {
                let interesting = [
                    "isthmus_forwarded_packets_total",
                    "isthmus_peer_rx_packets_total",
                    "isthmus_peer_tx_packets_total",
                    "isthmus_peer_handshakes_total",
                    "isthmus_fib_routes",
                    "isthmus_build_info",
                ];
                for name in interesting {
                    print!(
                        "{}",
                        m.excerpt(name)
                            .lines()
                            .filter(|l| l.starts_with(&format!("{name}{{")))
                            .fold(String::new(), |a, l| a + l + "\n")
                    );
                }
                let drops: String = m
                    .excerpt("isthmus_drops_total")
                    .lines()
                    .filter(|l| !l.ends_with(" 0"))
                    .fold(String::new(), |a, l| a + l + "\n");
                print!("{drops}");
            }
            Err(e) => println!("no metrics: {e:#}"),
        }
    }

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

/// `isthmusctl show WHAT IFNAME` against a gateway's control socket. Errors are printed,
/// not fatal: the demo goes on.
fn isthmusctl_show(t: &Topology, g: &str, what: &str) {
    let w = t.wg(g);
    let ctl = release_bin("isthmusctl").to_string_lossy().into_owned();
    match w.ns.output_timeout(&[&ctl, "show", what, &w.ifname], 10) {
        Ok(o) if o.status.success() => {
            println!("{}", String::from_utf8_lossy(&o.stdout).trim_end())
        }
        Ok(o) => println!(
            "isthmusctl show {what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!("isthmusctl show {what} failed: {e:#}"),
    }
}
