//! `isthmus-dp`: the isthmus data plane daemon.
//!
//! A drop-in for wireguard-go: `isthmus-dp [-f] IFNAME` creates the TUN device and serves
//! WireGuard's userspace API on `/var/run/wireguard/IFNAME.sock`; without `-f` it detaches
//! once the device is ready, as wg-quick expects. `isthmus-dp --config FILE` starts from an
//! isthmus TOML configuration instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use isthmus_dataplane::config::{self, DeviceConfig};
use isthmus_dataplane::ctl;
use isthmus_dataplane::device::{self, AfXdpOptions, Device, DeviceOptions, LocalLimits};
use isthmus_dataplane::forward::Settings;
use isthmus_dataplane::io::bpf::XdpMode;
use isthmus_dataplane::io::notify::notify;
use isthmus_dataplane::io::privs::{self, Cap, User};
use isthmus_dataplane::io::xsk::BindMode;
use isthmus_dataplane::logging;

const USAGE: &str = "\
usage: isthmus-dp [options] IFNAME
       isthmus-dp [options] --config FILE

Creates TUN device IFNAME and serves WireGuard's userspace API on
/var/run/wireguard/IFNAME.sock (configure it with wg(8) or wg-quick(8)).

options:
  -f, --foreground       stay in the foreground (also: WG_PROCESS_FOREGROUND=1)
  -c, --config FILE      isthmus TOML configuration (see docs/config.md)
      --metrics ADDR     Prometheus endpoint (default $ISTHMUS_METRICS, else the file's,
                         else 127.0.0.1:9586; 'off' to disable); one that cannot be
                         bound is a start-up error
      --threads N        worker threads (default 2)
      --unrouted MODE    decrypted packets matching no route: 'local' (default, as
                         wireguard-go: hand to the kernel) or 'drop' (count and send
                         ICMP unreachable)
      --ctl-socket PATH  control socket (default /var/run/isthmus/IFNAME.ctl)
      --backend B        underlay I/O: 'udp' (default, the kernel's UDP sockets) or
                         'afxdp' (AF_XDP sockets, the kernel's UDP stack bypassed)
      --underlay IF[,IF] AF_XDP: the underlay interfaces (default: those of the
                         routes to the configured peers' endpoints)
      --mesh IF[,IF]     AF_XDP: mesh interfaces, whose neighbours (routes 'via ADDR
                         dev IF' from isthmus-cp) are reached without the TUN device
      --xdp-mode M       AF_XDP: 'native' or 'generic' XDP (default: native where
                         the driver has it)
      --user NAME        after set-up, run as user NAME (the package's: isthmus), keeping
                         only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (with AF_XDP also
                         CAP_NET_RAW, CAP_IPC_LOCK, CAP_BPF); also [interface] user
      --log-format F     'text' (default; colours only on a terminal) or 'json' (one
                         object per line; also $ISTHMUS_LOG_FORMAT); levels: $ISTHMUS_LOG
                         (error, warn, info (default), debug, trace)
  -V, --version          print the version
  -h, --help             this text";

#[derive(Debug, Default)]
struct Args {
    foreground: bool,
    ifname: Option<String>,
    config: Option<PathBuf>,
    metrics: Option<String>,
    threads: Option<usize>,
    unrouted: Option<String>,
    ctl_socket: Option<PathBuf>,
    backend: Option<config::Backend>,
    underlay: Vec<String>,
    mesh: Vec<String>,
    xdp_mode: Option<config::XdpModeChoice>,
    log_format: Option<String>,
    user: Option<String>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut a = Args {
        foreground: std::env::var_os("WG_PROCESS_FOREGROUND").is_some_and(|v| v == "1"),
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-f" | "--foreground" => a.foreground = true,
            "-c" | "--config" => a.config = Some(value(&arg)?.into()),
            "--metrics" => a.metrics = Some(value(&arg)?),
            "--log-format" => a.log_format = Some(value(&arg)?),
            "--user" => a.user = Some(value(&arg)?),
            "--threads" => {
                let v = value(&arg)?;
                a.threads = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| (1..=64).contains(&n))
                        .with_context(|| {
                            format!("--threads: {v:?} is not a number from 1 to 64")
                        })?,
                );
            }
            "--unrouted" => a.unrouted = Some(value(&arg)?),
            "--ctl-socket" => a.ctl_socket = Some(value(&arg)?.into()),
            "--backend" => {
                a.backend = Some(match value(&arg)?.as_str() {
                    "udp" => config::Backend::Udp,
                    "afxdp" => config::Backend::Afxdp,
                    v => bail!("--backend: expected 'udp' or 'afxdp', got {v:?}"),
                })
            }
            "--xdp-mode" => {
                a.xdp_mode = Some(match value(&arg)?.as_str() {
                    "auto" => config::XdpModeChoice::Auto,
                    "native" => config::XdpModeChoice::Native,
                    "generic" => config::XdpModeChoice::Generic,
                    v => bail!("--xdp-mode: expected 'auto', 'native' or 'generic', got {v:?}"),
                })
            }
            "--underlay" => a.underlay.extend(
                value(&arg)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "--mesh" => a.mesh.extend(
                value(&arg)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "-V" | "--version" => {
                println!("isthmus-dp {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s => {
                if a.ifname.is_some() {
                    bail!("more than one interface name given\n{USAGE}");
                }
                a.ifname = Some(s.to_string());
            }
        }
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-dp: {e:#}");
            return ExitCode::from(2);
        }
    };
    let format = match logging::Format::from_option(args.log_format.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("isthmus-dp: --log-format: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(format, "info,boringtun=off");
    let result = if args.foreground {
        run(&args)
    } else {
        daemonize(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-dp: {e:#}");
            // A detached daemon's stderr goes nowhere: tell the parent waiting for it why.
            if let Some(path) = std::env::var_os(STARTUP_ERROR_ENV) {
                let _ = std::fs::write(path, format!("{e:#}"));
            }
            ExitCode::FAILURE
        }
    }
}

/// Where a daemon started by [`daemonize`] writes why it failed to start.
const STARTUP_ERROR_ENV: &str = "ISTHMUS_STARTUP_ERROR_FILE";

/// Load and check everything that can be checked before touching the system.
fn load_config(args: &Args) -> anyhow::Result<(String, Option<DeviceConfig>)> {
    let cfg = match &args.config {
        Some(path) => Some(config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let ifname = match (
        args.ifname.clone(),
        cfg.as_ref().and_then(|c| c.interface.name.clone()),
    ) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => bail!("no interface name given\n{USAGE}"),
    };
    Ok((ifname, cfg))
}

/// A second instance for an interface that a daemon already serves must touch nothing of
/// the running one (not even attach queues to its TUN device), and fail.
fn not_running(ifname: &str) -> anyhow::Result<()> {
    let uapi = Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));
    if std::os::unix::net::UnixStream::connect(&uapi).is_ok() {
        bail!(
            "{ifname} is already served by a running daemon ({} answers)",
            uapi.display()
        );
    }
    Ok(())
}

/// Start a detached copy of ourselves in the foreground and return once its UAPI socket is
/// up (as wireguard-go does, so that `wg-quick` can go on configuring the interface).
fn daemonize(args: &Args) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let (ifname, _) = load_config(args)?;
    // Before spawning: the running daemon's socket would pass for the new one's.
    not_running(&ifname)?;
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1)).arg("--foreground");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // As wireguard-go: a detached daemon is silent unless logging was asked for.
    if std::env::var_os("ISTHMUS_LOG").is_none() {
        cmd.stderr(std::process::Stdio::null());
    }
    cmd.process_group(0);
    let err_file =
        std::env::temp_dir().join(format!("isthmus-dp-{}-{}.err", std::process::id(), ifname));
    cmd.env(STARTUP_ERROR_ENV, &err_file);
    let mut child = cmd.spawn().context("starting the daemon")?;
    let why = |status: std::process::ExitStatus| {
        let text = std::fs::read_to_string(&err_file).unwrap_or_default();
        let _ = std::fs::remove_file(&err_file);
        if text.is_empty() {
            anyhow::anyhow!("daemon exited during start-up ({status})")
        } else {
            anyhow::anyhow!("{text}")
        }
    };
    let sock = Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(why(status));
        }
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("daemon did not come up within 10 s")
}

/// The AF_XDP options, when that backend is chosen. Without an underlay list, the
/// interfaces of the kernel's routes to the configured endpoints.
fn afxdp_options(
    args: &Args,
    iface: &config::InterfaceConfig,
    cfg: Option<&DeviceConfig>,
) -> anyhow::Result<Option<AfXdpOptions>> {
    if args.backend.unwrap_or(iface.backend) != config::Backend::Afxdp {
        if !args.mesh.is_empty() || !iface.mesh.is_empty() {
            bail!(
                "mesh interfaces are served over AF_XDP: they need backend afxdp (--backend afxdp)"
            );
        }
        return Ok(None);
    }
    let mut underlay = if args.underlay.is_empty() {
        iface.underlay.clone()
    } else {
        args.underlay.clone()
    };
    if underlay.is_empty() {
        let mut nl = isthmus_dataplane::io::netlink::Netlink::open()?;
        let names = isthmus_dataplane::io::ifaddr::all()?;
        for ep in cfg.iter().flat_map(|c| &c.peers).filter_map(|p| p.endpoint) {
            let r = nl
                .route_to(ep.ip(), iface.fwmark.unwrap_or(0))
                .with_context(|| format!("no route to the endpoint {ep}"))?;
            if let Some(a) = names.iter().find(|a| a.ifindex == r.ifindex) {
                if !underlay.contains(&a.ifname) {
                    underlay.push(a.ifname.clone());
                }
            }
        }
        if underlay.is_empty() {
            bail!("backend afxdp: name the underlay interfaces (underlay = [...] or --underlay IF); no configured endpoint tells them");
        }
    }
    let mesh = if args.mesh.is_empty() {
        iface.mesh.clone()
    } else {
        args.mesh.clone()
    };
    Ok(Some(AfXdpOptions {
        underlay,
        mesh,
        xdp_mode: match args.xdp_mode.unwrap_or(iface.xdp_mode) {
            config::XdpModeChoice::Auto => None,
            config::XdpModeChoice::Native => Some(XdpMode::Native),
            config::XdpModeChoice::Generic => Some(XdpMode::Generic),
        },
        bind_mode: match iface.xsk_mode {
            config::XskModeChoice::Auto => None,
            config::XskModeChoice::Zerocopy => Some(BindMode::ZeroCopy),
            config::XskModeChoice::Copy => Some(BindMode::Copy),
        },
        busy_poll_us: iface.busy_poll_us,
    }))
}

/// Becomes `user` for good: the control socket is given to it first (so that an isthmus-cp
/// running as the same user can connect), and a configuration file it cannot read is said
/// now rather than at the first reload.
fn drop_privileges(
    user: &User,
    ctl_path: &Path,
    afxdp: bool,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    privs::give_socket(user, ctl_path)?;
    let mut keep = vec![Cap::NetAdmin, Cap::NetBindService];
    if afxdp {
        keep.extend([Cap::NetRaw, Cap::IpcLock, Cap::Bpf]);
    }
    let kept = privs::drop_to(user, &keep).context("dropping privileges")?;
    let kept: Vec<&str> = kept.iter().map(|c| c.name()).collect();
    tracing::info!(user = %user.name, uid = user.uid, "running as an unprivileged user, keeping {}", kept.join(" "));
    if let Some(path) = config {
        if let Err(e) = config::load(path) {
            tracing::warn!(
                "a reload could not read the configuration as user {}: {e} (make the file \
                 and its key files readable by {0}: chown {0} KEYFILE)",
                user.name
            );
        }
    }
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<()> {
    let (ifname, cfg) = load_config(args)?;
    not_running(&ifname)?;
    let iface = cfg
        .as_ref()
        .map(|c| c.interface.clone())
        .unwrap_or_default();
    let unrouted_local = match args
        .unrouted
        .as_deref()
        .or(iface.unrouted.map(config::Unrouted::as_str))
    {
        None | Some("local") => true,
        Some("drop") => false,
        Some(other) => bail!("--unrouted: expected 'local' or 'drop', got {other:?}"),
    };
    // Looked up first: an unknown user is a start-up error before anything is created.
    let user = match args.user.as_deref().or(iface.user.as_deref()) {
        Some(name) => {
            let u = User::lookup(name).with_context(|| format!("--user {name}"))?;
            privs::check_can_become(&u).with_context(|| format!("--user {name}"))?;
            Some(u)
        }
        None => None,
    };
    let opts = DeviceOptions {
        threads: args.threads.or(iface.threads).unwrap_or(2),
        listen_port: iface.listen_port.unwrap_or(0),
        fwmark: iface.fwmark.unwrap_or(0),
        mtu: iface.mtu.unwrap_or(isthmus_dataplane::DEFAULT_MTU),
        settings: Settings {
            mss_clamp: iface.mss_clamp,
            unrouted_local,
            icmp_rate: iface.icmp_rate,
            icmp_burst: iface.icmp_burst,
            max_peers: iface.max_peers,
            ..Settings::default()
        },
        offload: std::env::var_os("ISTHMUS_NO_OFFLOAD").is_none(),
        afxdp: afxdp_options(args, &iface, cfg.as_ref())?,
        local: LocalLimits {
            uapi_clients: iface.max_uapi_clients,
            control_clients: iface.max_control_clients,
            control_message: iface.max_control_message,
        },
    };
    let afxdp = opts.afxdp.is_some();
    let dev = Device::start(&ifname, opts).with_context(|| format!("starting device {ifname}"))?;
    if let Some(cfg) = &cfg {
        dev.apply_config(cfg)
            .context("applying the configuration")?;
    }

    // --metrics, else $ISTHMUS_METRICS (for wg-quick, which passes no options), else the
    // file, else 127.0.0.1:9586.
    let from_env = std::env::var("ISTHMUS_METRICS").ok();
    let metrics = match args.metrics.as_deref().or(from_env.as_deref()) {
        Some("off") => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .with_context(|| format!("--metrics: {a:?} is not an address:port"))?,
        ),
        None => Some(
            iface
                .metrics
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9586))),
        ),
    };
    if let Some(addr) = metrics {
        // Not a warning nobody reads (under wg-quick): a gateway without the metrics it was
        // asked for does not start.
        let compat = iface.metrics_wireguard_exporter;
        let a = device::serve_metrics(addr, dev.core.clone(), compat).with_context(|| {
            format!(
                "metrics on {addr} (another isthmus-dp on this host? give each its own \
                 address with --metrics ADDR or ISTHMUS_METRICS=ADDR, or 'off')"
            )
        })?;
        tracing::info!("metrics on http://{a}/metrics");
    }
    let ctl_path = args
        .ctl_socket
        .clone()
        .or(iface.control_socket.clone())
        .unwrap_or_else(|| Path::new(ctl::RUN_DIR).join(format!("{ifname}.ctl")));
    let ctl = device::serve_ctl(&dev, &ctl_path)
        .with_context(|| format!("serving the control socket {}", ctl_path.display()))?;
    // Last: the UAPI socket's appearing is what a parent without -f (and wg-quick) takes as
    // "started", so nothing may fail after it.
    let uapi = isthmus_dataplane::uapi::serve(&ifname, dev.clone())
        .context("serving the WireGuard userspace API")?;
    // The drop comes after (the socket is made in root's /var/run/wireguard); what could
    // make it fail was checked at start (`check_can_become`).
    if let Some(user) = &user {
        drop_privileges(user, &ctl_path, afxdp, args.config.as_deref())?;
    }
    notify(&format!("READY=1\nSTATUS=serving {ifname}"));

    let d: Arc<Device> = dev.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let sig_handle = signals.handle();
    if let (Some(path), Some(cfg)) = (&args.config, cfg) {
        dev.set_config_file(path.clone(), cfg);
    }
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                // Logged by the device, which also answers `isthmusctl reload`.
                let _ = d.reload();
                continue;
            }
            notify("STOPPING=1");
            tracing::info!(sig, "signal received, shutting down");
            d.shutdown();
            break;
        }
    });
    let uapi_path = Path::new("/var/run/wireguard").join(format!("{ifname}.sock"));
    while !dev.is_shutting_down() {
        std::thread::sleep(Duration::from_millis(100));
        // As wireguard-go: deleting the UAPI socket stops the daemon (`wg` could no longer
        // see it, and it would run on invisible).
        if !uapi_path.exists() {
            tracing::info!(socket = %uapi_path.display(), "UAPI socket deleted, shutting down");
            dev.shutdown();
        }
    }
    sig_handle.close();
    drop(uapi);
    drop(ctl);
    dev.join();
    Ok(())
}
