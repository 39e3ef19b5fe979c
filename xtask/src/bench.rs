//! `cargo xtask bench`: criterion micro-benchmarks and the side-by-side tunnel benchmark.
//!
//! 1. builds `isthmus-dp` and the driver `isthmus-tunnel-bench` in release mode;
//! 2. unless `--no-criterion`, runs `cargo bench -p isthmus-benches` (loopback pipeline,
//!    FIB lookups, FIB pushes of 100k routes, the Babel control plane: simulator
//!    convergence, updates per second, memory per route);
//! 3. unless `--no-tunnels`, runs the driver as root: host — gateway ══ gateway — host and
//!    the relay topology in network namespaces, with the kernel's plain forwarding, Debian's
//!    wireguard-go, upstream wireguard-go (the binary given with `--wireguard-go-upstream
//!    PATH`, if any), boringtun-cli and isthmus-dp; then, unless `--no-floods`, handshake
//!    floods against each as a hub (`lab-tool wg-attack`, built here too) while a wireguard-go
//!    peer pings, runs TCP and makes a new handshake; then, unless `--no-capacity`, the
//!    capacity of each on one core — relay (peer → peer), tunnel → mesh interface and mesh
//!    interface → tunnel — driven by the packet generator and sink `isthmus-wggen` (built
//!    here too), against a ChaCha20-Poly1305 ceiling;
//! 4. prints one report with ratios and writes it to `target/bench/report.md` (+ `.json`):
//!    which build each column is, the tunnels, a control-plane table (from criterion's results and the measurements
//!    benches leave in `target/criterion/extra/`), every criterion bench, the targets.
//!
//! Options: `--no-criterion`, `--no-tunnels`, `--quick` (1 s runs, no repetition, 4 s flood
//! phases), `--only-floods` (only the floods: no criterion, no line or relay topology),
//! `--only-capacity` (only the capacity part: no criterion, no line or relay topology, no
//! floods), `--no-capacity`, and,
//! passed to the driver, `--duration SECS`, `--repeat N`, `--pings N`, `--only ID,ID`,
//! `--no-relay`, `--no-floods`, `--flood-secs SECS`, `--flood-rate PPS`, `--capacity-secs SECS`,
//! `--capacity-rate PPS`,
//! `--wireguard-go-upstream PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask bench [--no-criterion] [--no-tunnels] [--quick] [--duration SECS] [--repeat N] [--pings N] [--only ID,ID] [--no-relay] [--no-floods | --only-floods] [--flood-secs SECS] [--flood-rate PPS] [--no-capacity | --only-capacity] [--no-failover | --only-failover] [--capacity-secs SECS] [--capacity-rate PPS] [--wireguard-go-upstream PATH]
implementation ids: kernel, kernel-wg, wg-go-deb, wg-go-up, boringtun, isthmus, isthmus-afxdp";

/// Run the benchmarks; `args` are the words after `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<()> {
    let mut criterion = true;
    let mut tunnels = true;
    let mut floods = true;
    let mut capacity = true;
    let mut driver_args: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-criterion" => criterion = false,
            "--no-tunnels" => tunnels = false,
            "--quick" => driver_args
                .extend(["--duration", "1", "--repeat", "1", "--pings", "50"].map(String::from)),
            "--no-relay" => driver_args.push(a.clone()),
            "--no-floods" => {
                floods = false;
                driver_args.push(a.clone());
            }
            "--only-floods" | "--only-capacity" => {
                criterion = false;
                driver_args.push(a.clone());
            }
            "--no-capacity" => {
                capacity = false;
                driver_args.push(a.clone());
            }
            "--no-failover" => driver_args.push(a.clone()),
            "--only-failover" => {
                criterion = false;
                driver_args.push(a.clone());
            }
            "--duration"
            | "--repeat"
            | "--pings"
            | "--only"
            | "--wireguard-go-upstream"
            | "--flood-secs"
            | "--flood-rate"
            | "--capacity-secs"
            | "--capacity-rate" => {
                let v = it
                    .next()
                    .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
                driver_args.extend([a.clone(), v.clone()]);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_owned();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    eprintln!("== building the tunnel benchmark driver and isthmus-dp (release)");
    cmd(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "isthmus-benches",
        "--bin",
        "isthmus-tunnel-bench",
    ]))?;
    let dp = target.join("release/isthmus-dp");
    match cmd(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "isthmus-dataplane",
        "--bin",
        "isthmus-dp",
    ])) {
        Ok(()) => driver_args.extend(["--isthmus-dp".to_owned(), dp.display().to_string()]),
        Err(e) => eprintln!("warning: isthmus-dp did not build, the bench runs without it: {e:#}"),
    }
    // The control plane of the failover table's gateways (found next to isthmus-dp).
    if let Err(e) = cmd(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "isthmus-controlplane",
        "--bin",
        "isthmus-cp",
    ])) {
        eprintln!("warning: isthmus-cp did not build, the failover table will fail: {e:#}");
    }
    if tunnels && floods {
        // The attacker of the handshake floods.
        match cmd(Command::new(&cargo).current_dir(&root).args([
            "build",
            "--release",
            "-p",
            "isthmus-lab",
            "--bin",
            "lab-tool",
        ])) {
            Ok(()) => driver_args.extend([
                "--lab-tool".to_owned(),
                target.join("release/lab-tool").display().to_string(),
            ]),
            Err(e) => eprintln!(
                "warning: lab-tool did not build, the bench runs without the handshake floods: {e:#}"
            ),
        }
    }

    if tunnels && capacity {
        // The packet generator and sink of the capacity measurements.
        match cmd(Command::new(&cargo).current_dir(&root).args([
            "build",
            "--release",
            "-p",
            "isthmus-benches",
            "--bin",
            "isthmus-wggen",
        ])) {
            Ok(()) => driver_args.extend([
                "--wggen".to_owned(),
                target.join("release/isthmus-wggen").display().to_string(),
            ]),
            Err(e) => eprintln!(
                "warning: isthmus-wggen did not build, the bench runs without the capacity part: {e:#}"
            ),
        }
    }

    if criterion {
        eprintln!("== criterion micro-benchmarks (cargo bench -p isthmus-benches)");
        cmd(Command::new(&cargo).current_dir(&root).args([
            "bench",
            "-p",
            "isthmus-benches",
            "--benches",
        ]))?;
        driver_args.extend([
            "--criterion".to_owned(),
            target.join("criterion").display().to_string(),
            "--criterion-since".to_owned(),
            since.to_string(),
        ]);
    }
    if tunnels {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .context("running id -u")?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            bail!("the tunnel benchmark needs root (network namespaces); run as root, or pass --no-tunnels");
        }
    } else {
        driver_args.push("--no-tunnels".to_owned());
    }
    driver_args.extend([
        "--out".to_owned(),
        target.join("bench").display().to_string(),
    ]);

    // The driver cleans up its namespaces and daemons on Ctrl-C; wait for it rather than die
    // first and leave the terminal to it.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, interrupted.clone())
            .context("registering a signal handler")?;
    }
    eprintln!("== tunnel benchmark");
    let driver = target.join("release/isthmus-tunnel-bench");
    let status = Command::new(&driver)
        .current_dir(&root)
        .args(&driver_args)
        .status()
        .with_context(|| format!("running {}", driver.display()))?;
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    if !status.success() {
        bail!("{} failed ({status})", driver.display());
    }
    Ok(())
}

fn cmd(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}
