//! WireGuard implementations started inside namespaces and configured with `wg`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::babel::send_signal;
use crate::lab::{built_binary, lab_tool_path, log_tail, run, unique_name, Lab};
use crate::metrics::{parse_prometheus, Metrics};
use crate::netns::Netns;

/// Where isthmus-dp serves Prometheus metrics inside its namespace in the lab.
pub const METRICS_ADDR: &str = "127.0.0.1:9586";

/// A WireGuard implementation that speaks the cross-platform userspace API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgImpl {
    /// `isthmus-dp -f IFNAME`: `$ISTHMUS_DP`, else the workspace's `target/{release,debug}/isthmus-dp`.
    Isthmus,
    /// `wireguard-go -f IFNAME`.
    WireguardGo,
    /// `boringtun-cli --foreground --disable-drop-privileges IFNAME`.
    Boringtun,
    /// The kernel's WireGuard (`ip link add IFNAME type wireguard`): no process.
    Kernel,
}

impl WgImpl {
    /// The path of the `isthmus-dp` binary the lab runs: `$ISTHMUS_DP` if set, else the
    /// workspace's built one.
    ///
    /// # Errors
    /// When neither exists.
    pub fn isthmus_binary() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("ISTHMUS_DP") {
            let p = PathBuf::from(p);
            if p.components().count() == 1 {
                // A bare name: look it up on PATH.
                let found = run(Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {}", p.display())))
                .with_context(|| format!("ISTHMUS_DP={} is not on PATH", p.display()))?;
                return Ok(PathBuf::from(found.trim()));
            }
            return Ok(p);
        }
        built_binary("isthmus-dp").context(
            "isthmus-dp not found in target/release or target/debug: run `cargo build --release -p isthmus-dataplane` or set ISTHMUS_DP",
        )
    }

    /// The binary this implementation runs.
    ///
    /// # Errors
    /// When it cannot be found, or it is the kernel's (no binary).
    pub fn binary(self) -> Result<PathBuf> {
        match self {
            Self::Isthmus => Self::isthmus_binary(),
            Self::WireguardGo => Ok(PathBuf::from("wireguard-go")),
            Self::Boringtun => Ok(PathBuf::from("boringtun-cli")),
            Self::Kernel => bail!("the kernel's WireGuard runs no program"),
        }
    }

    /// What the binary actually is. `Isthmus` may be overridden by `ISTHMUS_DP` with
    /// wireguard-go or boringtun-cli to exercise the lab; then this says so.
    #[must_use]
    pub fn flavour(self) -> Self {
        match self {
            Self::Isthmus => {
                let name = Self::isthmus_binary()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                if name.contains("wireguard-go") {
                    Self::WireguardGo
                } else if name.contains("boringtun") {
                    Self::Boringtun
                } else {
                    Self::Isthmus
                }
            }
            other => other,
        }
    }

    /// True when this is isthmus-dp for real (has isthmus metrics, control socket...).
    #[must_use]
    pub fn is_real_isthmus(self) -> bool {
        self.flavour() == Self::Isthmus
    }

    /// A short label for logs.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Isthmus => "isthmus-dp",
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun-cli",
            Self::Kernel => "kernel WireGuard",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Isthmus => "i",
            Self::WireguardGo => "g",
            Self::Boringtun => "b",
            Self::Kernel => "k",
        }
    }
}

/// Panics, with a message that says why, unless `ISTHMUS_DP` is really isthmus-dp. For the
/// tests whose assertions read isthmus-specific metrics: they must fail, not skip, when run
/// against a stand-in.
pub fn require_isthmus(what: &str) {
    assert!(
        WgImpl::Isthmus.is_real_isthmus(),
        "{what}: this test asserts isthmus-specific behaviour (metrics), but the binary under test ({}) is not isthmus-dp",
        WgImpl::isthmus_binary().map_or_else(|e| e.to_string(), |p| p.display().to_string())
    );
}

/// A WireGuard key pair (base64, as `wg genkey` / `wg pubkey` print them).
#[derive(Debug, Clone)]
pub struct Keypair {
    /// Private key.
    pub private: String,
    /// Public key.
    pub public: String,
}

impl Keypair {
    /// Generates a key pair with `wg genkey` and `wg pubkey`.
    ///
    /// # Errors
    /// When `wg` is missing or fails.
    pub fn generate() -> Result<Self> {
        let private = run(Command::new("wg").arg("genkey"))?.trim().to_owned();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running wg pubkey")?;
        child
            .stdin
            .take()
            .context("wg pubkey stdin")?
            .write_all(format!("{private}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("wg pubkey failed");
        }
        Ok(Self {
            private,
            public: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        })
    }
}

/// How to start one interface.
#[derive(Debug, Clone, Default)]
pub struct WgSpec {
    /// UDP listen port.
    pub listen_port: u16,
    /// Addresses on the interface (`10.0.0.1/24`, `fd00::1/64`).
    pub addresses: Vec<String>,
    /// Key pair; generated when `None`.
    pub keys: Option<Keypair>,
    /// Extra command-line arguments, passed only to a real isthmus-dp (`--unrouted drop`,
    /// `--metrics off`).
    pub isthmus_args: Vec<String>,
    /// The program to run instead of the implementation's usual one (`$ISTHMUS_DP`,
    /// `wireguard-go` or `boringtun-cli` on `PATH`): a build of its own, which is then taken
    /// to be that implementation whatever its name.
    pub binary: Option<PathBuf>,
    /// The interface's MTU; the implementation's default when `None`.
    pub mtu: Option<u16>,
}

/// A peer to add to an interface.
#[derive(Debug, Clone, Default)]
pub struct PeerSpec {
    /// The peer's public key.
    pub public_key: String,
    /// `IP:PORT` or `[IPv6]:PORT`.
    pub endpoint: Option<String>,
    /// Allowed IPs.
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive in seconds.
    pub keepalive: Option<u16>,
}

/// One peer line of `wg show IF dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPeer {
    /// Public key.
    pub public_key: String,
    /// Current endpoint, if any.
    pub endpoint: Option<String>,
    /// Allowed IPs.
    pub allowed_ips: Vec<String>,
    /// Latest handshake, seconds since the epoch (0 = never).
    pub latest_handshake: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
}

/// A running WireGuard interface in a namespace. The namespace stops its process when it is
/// dropped; [`WgIface::stop`] takes it down before that.
#[derive(Debug)]
pub struct WgIface {
    /// The namespace it runs in.
    pub ns: Arc<Netns>,
    /// Interface name (unique on the machine: the UAPI socket path is global).
    pub ifname: String,
    /// Its key pair.
    pub keys: Keypair,
    /// Its UDP port.
    pub listen_port: u16,
    /// Which implementation was asked for.
    pub imp: WgImpl,
    /// The process's PID (0 for the kernel's WireGuard).
    pub pid: u32,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// The configuration file it was started from ([`WgIface::start_config`]), if any.
    pub config: Option<PathBuf>,
}

impl WgIface {
    /// Starts `imp` in `ns` (or creates the kernel's interface), waits for its UAPI socket,
    /// sets key and port with `wg set`, adds the addresses, sets the MTU and brings the
    /// interface up. What it started is taken down again when a step fails.
    ///
    /// # Errors
    /// When the process dies or its socket does not appear within 10 s (the error carries the
    /// end of its log), or a step of the configuration fails.
    pub fn start(ns: &Arc<Netns>, lab: &Lab, imp: WgImpl, spec: &WgSpec) -> Result<Self> {
        let ifname = unique_name(imp.prefix());
        let log = lab.path(&format!("{ifname}.log"));
        let pid = match spec.binary.as_ref().map_or_else(|| imp.flavour(), |_| imp) {
            WgImpl::Kernel => {
                ns.exec(&["ip", "link", "add", &ifname, "type", "wireguard"])
                    .context("creating a kernel WireGuard interface")?;
                0
            }
            flavour => {
                let bin = match &spec.binary {
                    Some(b) => b.clone(),
                    None => imp.binary()?,
                };
                let bin_s = bin.to_string_lossy().into_owned();
                let mut args: Vec<&str> = vec![&bin_s];
                let envs: &[(&str, &str)] = match flavour {
                    WgImpl::Isthmus => {
                        args.extend(["-f", &ifname, "--metrics", METRICS_ADDR]);
                        args.extend(spec.isthmus_args.iter().map(String::as_str));
                        &[("RUST_LOG", "info")]
                    }
                    WgImpl::Boringtun => {
                        args.extend(["--foreground", "--disable-drop-privileges", &ifname]);
                        &[("WG_LOG_LEVEL", "error")]
                    }
                    // wireguard-go (the kernel's runs no program)
                    _ => {
                        args.extend(["-f", &ifname]);
                        &[("LOG_LEVEL", "error"), ("WG_PROCESS_FOREGROUND", "1")]
                    }
                };
                spawn_and_wait(ns, imp, &ifname, &args, envs, &log)?
            }
        };
        let iface = Self {
            ns: Arc::clone(ns),
            ifname,
            keys: match &spec.keys {
                Some(k) => k.clone(),
                None => Keypair::generate()?,
            },
            listen_port: spec.listen_port,
            imp,
            pid,
            log,
            config: None,
        };
        if let Err(e) = iface.configure(lab, spec) {
            iface.stop();
            return Err(e);
        }
        Ok(iface)
    }

    /// Key, port, addresses, MTU; then up.
    fn configure(&self, lab: &Lab, spec: &WgSpec) -> Result<()> {
        let key_file = write_private_key(lab, &self.ifname, &self.keys.private)?;
        self.wg(&[
            "set",
            &self.ifname,
            "private-key",
            &key_file.to_string_lossy(),
            "listen-port",
            &spec.listen_port.to_string(),
        ])?;
        for a in &spec.addresses {
            self.ns.add_addr(&self.ifname, a)?;
        }
        if let Some(mtu) = spec.mtu {
            self.ns
                .exec(&["ip", "link", "set", &self.ifname, "mtu", &mtu.to_string()])?;
        }
        self.ns.link_up(&self.ifname)
    }

    /// Takes the interface down: stops its process (SIGTERM, then SIGKILL after 2 s), deletes
    /// the interface if it is still there (the kernel's always is) and removes the UAPI
    /// socket. The namespace is ready for another implementation on the same port.
    pub fn stop(&self) {
        self.ns.stop(self.pid, Duration::from_secs(2));
        if self.ns.exec(&["ip", "link", "show", &self.ifname]).is_ok() {
            let _ = self.ns.exec(&["ip", "link", "del", &self.ifname]);
        }
        let _ = std::fs::remove_file(uapi_socket(&self.ifname));
    }

    /// Starts a real isthmus-dp from a TOML configuration file (`isthmus-dp -f --config FILE`),
    /// waits for its UAPI socket and sets the interface up (isthmus-dp adds the addresses).
    ///
    /// # Errors
    /// When the binary under test is not isthmus-dp, or it does not start.
    pub fn start_config(ns: &Arc<Netns>, lab: &Lab, cfg: &IsthmusConfig) -> Result<Self> {
        let imp = WgImpl::Isthmus;
        if !imp.is_real_isthmus() {
            bail!("--config needs isthmus-dp, and the binary under test is a stand-in");
        }
        let ifname = unique_name(imp.prefix());
        let bin_s = imp.binary()?.to_string_lossy().into_owned();
        let log = lab.path(&format!("{ifname}.log"));
        let keys = match &cfg.keys {
            Some(k) => k.clone(),
            None => Keypair::generate()?,
        };
        let key_file = write_private_key(lab, &ifname, &keys.private)?;
        let conf = lab.path(&format!("{ifname}.toml"));
        std::fs::write(&conf, cfg.to_toml(&ifname, &key_file))
            .with_context(|| format!("writing {}", conf.display()))?;
        let conf_s = conf.to_string_lossy().into_owned();
        let args = [bin_s.as_str(), "-f", "--config", &conf_s];
        // Its control socket, left behind when it is killed.
        ns.remove_on_drop(Path::new(isthmus_dataplane::ctl::RUN_DIR).join(format!("{ifname}.ctl")));
        // Plain text logs: tracing colours its output unless NO_COLOR is set.
        let envs = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
        let pid = spawn_and_wait(ns, imp, &ifname, &args, &envs, &log)?;
        let iface = Self {
            ns: Arc::clone(ns),
            ifname,
            keys,
            listen_port: cfg.listen_port,
            imp,
            pid,
            log,
            config: Some(conf),
        };
        ns.link_up(&iface.ifname)?;
        Ok(iface)
    }

    /// A crash and a supervisor's restart: kills the process with SIGKILL, waits until it is
    /// gone, and starts it again from the same configuration file (what a
    /// [`WgIface::start_config`] started). Returns the restart time: from the kill until the
    /// new process serves its UAPI socket and its interface is up.
    ///
    /// # Errors
    /// When it was not started from a configuration file, or does not come back.
    pub fn crash_and_restart(&mut self) -> Result<Duration> {
        let Some(conf) = self.config.clone() else {
            bail!("{}: not started from a configuration file", self.ifname);
        };
        let t0 = Instant::now();
        send_signal(self.pid, "KILL");
        if !self.ns.wait_exit(self.pid, Duration::from_secs(5)) {
            bail!("{} (pid {}) survived SIGKILL", self.ifname, self.pid);
        }
        // The dead process's socket is stale; the new one replaces it, and its appearing is
        // how we know the new process is ready.
        let _ = std::fs::remove_file(uapi_socket(&self.ifname));
        let bin_s = self.imp.binary()?.to_string_lossy().into_owned();
        let conf_s = conf.to_string_lossy().into_owned();
        let args = [bin_s.as_str(), "-f", "--config", &conf_s];
        let log = self.log.with_extension("restarted.log");
        let envs = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
        self.pid = spawn_and_wait(&self.ns, self.imp, &self.ifname, &args, &envs, &log)?;
        self.log = log;
        self.ns.link_up(&self.ifname)?;
        Ok(t0.elapsed())
    }

    /// Writes `cfg` over the configuration file it was started from (same key) and sends
    /// `SIGHUP`, as `systemctl reload` does.
    ///
    /// # Errors
    /// When it was not started from a file, or the file cannot be written.
    pub fn reload_config(&self, lab: &Lab, cfg: &IsthmusConfig) -> Result<()> {
        let Some(conf) = &self.config else {
            bail!("{}: not started from a configuration file", self.ifname);
        };
        let key_file = write_private_key(lab, &self.ifname, &self.keys.private)?;
        std::fs::write(conf, cfg.to_toml(&self.ifname, &key_file))
            .with_context(|| format!("writing {}", conf.display()))?;
        send_signal(self.pid, "HUP");
        Ok(())
    }

    /// Runs `wg ARGS` inside the namespace.
    ///
    /// # Errors
    /// When `wg` fails.
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["wg"];
        v.extend_from_slice(args);
        self.ns
            .exec(&v)
            .with_context(|| format!("{} ({})", self.ifname, self.imp.label()))
    }

    /// Adds (or updates) a peer with `wg set`.
    ///
    /// # Errors
    /// When `wg set` fails.
    pub fn add_peer(&self, peer: &PeerSpec) -> Result<()> {
        let allowed = peer.allowed_ips.join(",");
        let ka = peer.keepalive.map(|k| k.to_string());
        let mut args = vec!["set", &self.ifname, "peer", &peer.public_key];
        if !allowed.is_empty() {
            args.extend(["allowed-ips", &allowed]);
        }
        if let Some(e) = &peer.endpoint {
            args.extend(["endpoint", e]);
        }
        if let Some(k) = &ka {
            args.extend(["persistent-keepalive", k]);
        }
        self.wg(&args).map(|_| ())
    }

    /// Sets this interface's peer `peer` to reach it at `endpoint` with `allowed_ips`.
    ///
    /// # Errors
    /// When `wg set` fails.
    pub fn peer_with(
        &self,
        peer: &Self,
        endpoint: Option<String>,
        allowed_ips: &[&str],
    ) -> Result<()> {
        self.add_peer(&PeerSpec {
            public_key: peer.keys.public.clone(),
            endpoint,
            allowed_ips: allowed_ips.iter().map(|s| (*s).to_owned()).collect(),
            keepalive: None,
        })
    }

    /// Parses `wg show IF dump`.
    ///
    /// # Errors
    /// When `wg show` fails or prints something unexpected.
    pub fn dump(&self) -> Result<Vec<DumpPeer>> {
        let text = self.wg(&["show", &self.ifname, "dump"])?;
        parse_dump(&text)
    }

    /// Whether the process is still running (for the kernel's: whether the interface is
    /// there).
    #[must_use]
    pub fn alive(&self) -> bool {
        if self.imp == WgImpl::Kernel {
            return self.ns.exec(&["ip", "link", "show", &self.ifname]).is_ok();
        }
        self.ns.alive(self.pid)
    }

    /// The last lines of the process's log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Scrapes this implementation's Prometheus endpoint (isthmus-dp only), from inside its
    /// namespace.
    ///
    /// # Errors
    /// When nothing answers (not isthmus-dp?) or the text does not parse.
    pub fn metrics(&self) -> Result<Metrics> {
        // The endpoint may come up a moment after the UAPI socket.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut result = scrape(&self.ns, METRICS_ADDR);
        while result.is_err() && Instant::now() < deadline && self.alive() {
            std::thread::sleep(Duration::from_millis(100));
            result = scrape(&self.ns, METRICS_ADDR);
        }
        result.with_context(|| {
            format!(
                "scraping {} metrics of {} ({})",
                self.imp.label(),
                self.ifname,
                self.ns.name()
            )
        })
    }
}

/// Starts `args` in `ns` and waits up to 10 s for the UAPI socket of `ifname`.
fn spawn_and_wait(
    ns: &Arc<Netns>,
    imp: WgImpl,
    ifname: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    log: &Path,
) -> Result<u32> {
    let bin_s = args[0];
    let pid = ns.spawn_env(args, envs, log)?;
    let sock = uapi_socket(ifname);
    ns.remove_on_drop(sock.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if !ns.alive(pid) {
            bail!(
                "{} ({bin_s}) exited before serving {}:\n{}",
                imp.label(),
                sock.display(),
                log_tail(log, 20)
            );
        }
        if Instant::now() > deadline {
            ns.stop(pid, Duration::from_secs(2));
            bail!(
                "{} ({bin_s}) did not create {} within 10 s:\n{}",
                imp.label(),
                sock.display(),
                log_tail(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// A peer in an isthmus TOML configuration.
#[derive(Debug, Clone, Default)]
pub struct ConfigPeer {
    /// `name`: shown in metrics labels and by isthmusctl.
    pub name: String,
    /// `class`: `"mesh"` or `"trunk"`.
    pub class: String,
    /// `public_key`.
    pub public_key: String,
    /// `endpoint`.
    pub endpoint: Option<String>,
    /// `allowed_ips`.
    pub allowed_ips: Vec<String>,
    /// `persistent_keepalive`.
    pub keepalive: Option<u16>,
    /// Raw TOML lines added to the `[[peer]]` table (`liveness_interval = 0.1`, ...).
    pub extra: String,
}

/// An isthmus-dp configuration file (`isthmus-dp --config FILE`), written by the lab.
#[derive(Debug, Clone, Default)]
pub struct IsthmusConfig {
    /// `listen_port`.
    pub listen_port: u16,
    /// `address`: put on the TUN device by isthmus-dp itself.
    pub addresses: Vec<String>,
    /// Key pair; generated when `None`. The private key goes to a 0600 file.
    pub keys: Option<Keypair>,
    /// `[[peer]]` tables.
    pub peers: Vec<ConfigPeer>,
    /// `[[route]]` tables: `(prefix, via)`.
    pub routes: Vec<(String, String)>,
    /// Raw TOML appended at the end (a `[babel]` section for isthmus-cp).
    pub babel: Option<String>,
    /// Raw TOML lines of `[interface]` (`backend = "afxdp"`, ...).
    pub interface_extra: String,
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl IsthmusConfig {
    /// The TOML text for interface `ifname` with its private key in `key_file`.
    #[must_use]
    pub fn to_toml(&self, ifname: &str, key_file: &Path) -> String {
        let mut t = format!(
            "[interface]\nname = {ifname:?}\nprivate_key_file = {:?}\nlisten_port = {}\naddress = {}\nmetrics = {METRICS_ADDR:?}\n",
            key_file.to_string_lossy(),
            self.listen_port,
            toml_list(&self.addresses)
        );
        t.push_str(&self.interface_extra);
        for p in &self.peers {
            t.push_str(&format!(
                "\n[[peer]]\nname = {:?}\nclass = {:?}\npublic_key = {:?}\nallowed_ips = {}\n",
                p.name,
                p.class,
                p.public_key,
                toml_list(&p.allowed_ips)
            ));
            if let Some(e) = &p.endpoint {
                t.push_str(&format!("endpoint = {e:?}\n"));
            }
            if let Some(k) = p.keepalive {
                t.push_str(&format!("persistent_keepalive = {k}\n"));
            }
            t.push_str(&p.extra);
        }
        for (prefix, via) in &self.routes {
            t.push_str(&format!(
                "\n[[route]]\nprefix = {prefix:?}\nvia = {via:?}\n"
            ));
        }
        if let Some(b) = &self.babel {
            t.push('\n');
            t.push_str(b);
        }
        t
    }
}

/// Scrapes `http://ADDR/metrics` from inside `ns` with the `lab-tool` helper.
///
/// # Errors
/// When the GET fails or the text does not parse.
pub fn scrape(ns: &Netns, addr: &str) -> Result<Metrics> {
    let tool = lab_tool_path()?;
    let text = ns.exec_timeout(&[&tool.to_string_lossy(), "http-get", addr, "/metrics"], 10)?;
    parse_prometheus(&text)
}

/// `/var/run/wireguard/IFNAME.sock`.
#[must_use]
pub fn uapi_socket(ifname: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{ifname}.sock"))
}

/// Writes a private key to `<lab>/<name>.key` with mode 0600.
///
/// # Errors
/// When the file cannot be written.
pub fn write_private_key(lab: &Lab, name: &str, private: &str) -> Result<PathBuf> {
    let path = lab.path(&format!("{name}.key"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{private}")?;
    Ok(path)
}

/// Parses the output of `wg show IF dump`.
///
/// # Errors
/// When a peer line does not have 8 tab-separated fields.
pub fn parse_dump(text: &str) -> Result<Vec<DumpPeer>> {
    let mut peers = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 8 {
            bail!(
                "wg show dump line {}: expected 8 fields, got {}: {line:?}",
                i + 1,
                f.len()
            );
        }
        let num = |s: &str, what: &str| -> Result<u64> {
            s.parse()
                .with_context(|| format!("wg show dump line {}: bad {what} {s:?}", i + 1))
        };
        peers.push(DumpPeer {
            public_key: f[0].to_owned(),
            endpoint: (f[2] != "(none)").then(|| f[2].to_owned()),
            allowed_ips: if f[3] == "(none)" {
                Vec::new()
            } else {
                f[3].split(',').map(str::to_owned).collect()
            },
            latest_handshake: num(f[4], "latest-handshake")?,
            rx_bytes: num(f[5], "rx bytes")?,
            tx_bytes: num(f[6], "tx bytes")?,
        });
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::parse_dump;

    #[test]
    fn parses_wg_show_dump() {
        let text = "cHJpdg==\tcHVi\t51820\toff\n\
                    UEVFUg==\t(none)\t10.0.0.2:51820\t10.0.0.2/32,fd00::2/128\t1700000000\t1234\t5678\toff\n\
                    T1RIRVI=\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";
        let peers = parse_dump(text).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, "UEVFUg==");
        assert_eq!(peers[0].endpoint.as_deref(), Some("10.0.0.2:51820"));
        assert_eq!(peers[0].allowed_ips, vec!["10.0.0.2/32", "fd00::2/128"]);
        assert_eq!(
            (
                peers[0].latest_handshake,
                peers[0].rx_bytes,
                peers[0].tx_bytes
            ),
            (1_700_000_000, 1234, 5678)
        );
        assert_eq!(peers[1].endpoint, None);
        assert!(peers[1].allowed_ips.is_empty());
        assert!(parse_dump("if\nshort\tline\n").is_err());
        assert!(parse_dump("if\na\tb\tc\td\tNaN\t0\t0\toff\n").is_err());
    }
}
