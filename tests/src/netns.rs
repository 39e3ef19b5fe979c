//! Network namespaces and the processes the lab runs inside them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::{run, unique_name};

/// Default bound on a command run with [`Netns::exec`].
const EXEC_TIMEOUT_SECS: u32 = 60;

/// A network namespace named `il<pid>x<n>-<tag>`, with `lo` up. On drop it stops every process
/// it spawned (SIGTERM, then SIGKILL, by PID), kills whatever else is still inside it (only
/// processes the lab started can be there), removes the files registered with
/// [`Netns::remove_on_drop`] and deletes the namespace.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<(String, Child)>>,
    cleanup: Mutex<Vec<PathBuf>>,
}

impl Netns {
    /// Creates a namespace; `tag` only makes the name readable (`ip netns list`).
    ///
    /// # Errors
    /// When `ip netns add` fails (not root?).
    pub fn new(tag: &str) -> Result<Self> {
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let name = format!("{}-{tag}", unique_name("il"));
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating network namespace {name} (are you root?)"))?;
        let ns = Self {
            name,
            children: Mutex::new(Vec::new()),
            cleanup: Mutex::new(Vec::new()),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec NAME program`).
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `args` inside the namespace, bounded by `timeout_secs`, and returns its output
    /// whatever the exit status.
    ///
    /// # Errors
    /// When the command cannot be started.
    pub fn output_timeout(&self, args: &[&str], timeout_secs: u32) -> Result<Output> {
        let mut c = self.command("timeout");
        c.args(["-k", "2", &timeout_secs.to_string()]).args(args);
        c.stdin(Stdio::null());
        c.output()
            .with_context(|| format!("running {args:?} in {}", self.name))
    }

    /// Runs `args` inside the namespace (bounded to 60 s) and returns its stdout.
    ///
    /// # Errors
    /// When it exits unsuccessfully; the error carries its stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        self.exec_timeout(args, EXEC_TIMEOUT_SECS)
    }

    /// Like [`Netns::exec`] with an explicit bound in seconds.
    ///
    /// # Errors
    /// When it exits unsuccessfully or times out.
    pub fn exec_timeout(&self, args: &[&str], timeout_secs: u32) -> Result<String> {
        let out = self.output_timeout(args, timeout_secs)?;
        if !out.status.success() {
            bail!(
                "{args:?} in netns {} failed ({}): {} {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `args` inside the namespace in the background with extra environment variables,
    /// stdout and stderr to `log`. Returns its PID; the namespace stops it on drop.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn_env(&self, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Result<u32> {
        let out = File::create(log).with_context(|| format!("creating log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut c = self.command(args[0]);
        c.args(&args[1..])
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = c
            .spawn()
            .with_context(|| format!("starting {args:?} in netns {}", self.name))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((args.join(" "), child));
        Ok(pid)
    }

    /// [`Netns::spawn_env`] without extra environment.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Result<u32> {
        self.spawn_env(args, &[], log)
    }

    /// Whether a process spawned by this namespace is still running.
    #[must_use]
    pub fn alive(&self, pid: u32) -> bool {
        matches!(self.try_wait(pid), Some(Ok(None)))
    }

    /// `try_wait` of the spawned process `pid`; `None` when it is not (or no more) ours.
    fn try_wait(&self, pid: u32) -> Option<std::io::Result<Option<ExitStatus>>> {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        children
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .map(|(_, c)| c.try_wait())
    }

    /// Waits up to `timeout` for a process this namespace spawned to exit. True when it has
    /// exited (or was stopped already), false while it still runs.
    #[must_use]
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The exit status of a process this namespace spawned, once it has exited.
    #[must_use]
    pub fn exit_status(&self, pid: u32) -> Option<ExitStatus> {
        self.try_wait(pid).and_then(|r| r.ok().flatten())
    }

    /// Stops a process this namespace spawned: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, pid: u32, grace: Duration) {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pos) = children.iter().position(|(_, c)| c.id() == pid) {
            let (_, mut child) = children.remove(pos);
            stop_child(&mut child, grace);
        }
    }

    /// PIDs of all processes currently inside the namespace.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        run(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// User plus system CPU seconds that the processes now inside the namespace have used
    /// (from `/proc/PID/stat`, in `USER_HZ` = 100 ticks per second on Linux). The difference
    /// of two readings is what the namespace's daemons spent in between.
    #[must_use]
    pub fn cpu_seconds(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| {
                // Fields after the command name (which may contain spaces) start at ")".
                let rest = stat.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11)?.parse().ok()?;
                let stime: f64 = f.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .sum()
    }

    /// Deletes the namespaces that a lab process killed with SIGKILL left behind (it had no
    /// chance to drop them): those whose tag starts with `tag_prefix` and whose creator is no
    /// longer running.
    pub fn remove_stale(tag_prefix: &str) {
        let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else {
            return;
        };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some((pid, tag)) = name
                .strip_prefix("il")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(id, tag)| Some((id.split_once('x')?.0, tag)))
            else {
                continue;
            };
            let Ok(pid) = u32::from_str_radix(pid, 16) else {
                continue;
            };
            if tag.starts_with(tag_prefix) && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }

    /// Registers a file (a UAPI socket, say) to remove when the namespace is dropped.
    pub fn remove_on_drop(&self, path: PathBuf) {
        self.cleanup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(path);
    }

    /// Adds an address (`10.0.0.1/24`, `fd00::1/64`) to an interface; IPv6 ones with `nodad`.
    ///
    /// # Errors
    /// When `ip addr add` fails.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.exec(&["ip", "-6", "addr", "add", cidr, "dev", ifname, "nodad"])?;
        } else {
            self.exec(&["ip", "addr", "add", cidr, "dev", ifname])?;
        }
        Ok(())
    }

    /// Removes an address from an interface.
    ///
    /// # Errors
    /// When `ip addr del` fails.
    pub fn del_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.exec(&["ip", "addr", "del", cidr, "dev", ifname])?;
        Ok(())
    }

    /// The usable link-local address of `dev`, once duplicate address detection is done.
    ///
    /// # Errors
    /// When `dev` has none within 10 s.
    pub fn link_local(&self, dev: &str) -> Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.exec(&[
                "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
            ])?;
            let ready = out
                .lines()
                .find(|l| !l.contains("tentative"))
                .and_then(|l| {
                    let t: Vec<&str> = l.split_whitespace().collect();
                    let i = t.iter().position(|x| *x == "inet6")?;
                    t.get(i + 1)?.split('/').next().map(str::to_owned)
                });
            if let Some(a) = ready {
                return Ok(a);
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{dev} in {} has no usable link-local address: {out}",
                    self.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until no XDP program is attached to `dev` (at most 5 s); whether none is.
    ///
    /// # Errors
    /// When `ip link show` fails.
    pub fn wait_no_xdp(&self, dev: &str) -> Result<bool> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if !self.exec(&["ip", "link", "show", dev])?.contains("xdp") {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets an interface up.
    ///
    /// # Errors
    /// When `ip link set up` fails.
    pub fn link_up(&self, ifname: &str) -> Result<()> {
        self.exec(&["ip", "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Adds a route: `ns.route(&["10.2.0.0/16", "dev", "wg0"])`, `ns.route(&["default",
    /// "via", "fd00:1::1"])`. The family is the destination's, or for `default` the gateway's.
    ///
    /// # Errors
    /// When `ip route add` fails.
    pub fn route(&self, spec: &[&str]) -> Result<()> {
        let v6 = match spec {
            ["default", "via", gw, ..] => gw.contains(':'),
            [dst, ..] => dst.contains(':'),
            [] => false,
        };
        let mut args = vec!["ip", if v6 { "-6" } else { "-4" }, "route", "add"];
        args.extend_from_slice(spec);
        self.exec(&args)?;
        Ok(())
    }

    /// Sets a sysctl inside the namespace.
    ///
    /// # Errors
    /// When `sysctl -w` fails.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Turns IPv4 and IPv6 forwarding in the kernel of this namespace on or off.
    ///
    /// # Errors
    /// When the sysctls cannot be set.
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        let v = if on { "1" } else { "0" };
        self.sysctl("net.ipv4.ip_forward", v)?;
        self.sysctl("net.ipv6.conf.all.forwarding", v)
    }
}

fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // `ip netns exec` execs the program, so the child's PID is the program's own.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .output();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Netns {
    fn drop(&mut self) {
        let children = std::mem::take(
            self.children
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (_, mut child) in children {
            stop_child(&mut child, Duration::from_secs(2));
        }
        // Daemons that forked away from us (wg-quick runs the implementation without -f) are
        // still inside the namespace: everything in it was started by the lab.
        for _ in 0..3 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for p in self
            .cleanup
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = std::fs::remove_file(p);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair between two namespaces, `a_if` in `a` and `b_if` in `b`, both up.
/// The pair is created inside `a`, so nothing ever appears in the root namespace.
///
/// # Errors
/// When `ip link add` fails.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.exec(&[
        "ip",
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.link_up(a_if)?;
    b.link_up(b_if)?;
    Ok(())
}
