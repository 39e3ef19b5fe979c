//! A small network-namespace lab for the tunnel benchmark: namespaces, veth links, commands
//! and supervised processes inside them, all removed again when the [`Lab`] is dropped — on
//! success, on error, on panic, and after Ctrl-C (see [`install_interrupt_handler`]).
//!
//! Scope: only what `isthmus-tunnel-bench` needs. Namespaces are named
//! `isb<pid>-<name>` so that several runs (and other labs) never collide, and namespaces
//! left behind by a run that was killed with SIGKILL are removed by the next run
//! ([`remove_stale`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this module creates.
pub const PREFIX: &str = "isb";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Catch SIGINT, SIGTERM and SIGHUP: instead of dying with namespaces and daemons left
/// behind, the process notes the signal; every wait in this module then fails with
/// "interrupted", and the error unwinds through the [`Lab`]'s `Drop`, which cleans up.
///
/// # Errors
/// When the handlers cannot be registered.
pub fn install_interrupt_handler() -> Result<()> {
    let flag = HANDLER.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, flag.clone()).context("registering a signal handler")?;
    }
    Ok(())
}

/// Whether a termination signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed) || HANDLER.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        INTERRUPTED.store(true, Ordering::Relaxed);
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep in small steps, failing early on interruption.
///
/// # Errors
/// When interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Run a command on the host (not in a namespace) and return its stdout; fails with its
/// stderr if it exits non-zero.
///
/// # Errors
/// When it cannot be started, exits non-zero or runs longer than `timeout`.
pub fn host(argv: &[&str], timeout: Duration) -> Result<String> {
    run_argv(argv.iter().map(|s| (*s).to_owned()).collect(), &[], timeout)
}

fn run_argv(argv: Vec<String>, env: &[(&str, &str)], timeout: Duration) -> Result<String> {
    check_interrupted()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", argv.join(" ")))?;
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if interrupted() || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            bail!("`{}` did not finish within {timeout:?}", argv.join(" "));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let detail = if err.trim().is_empty() {
            out.trim()
        } else {
            err.trim()
        };
        let detail: String = detail.chars().take(2000).collect();
        bail!("`{}` failed ({status}): {detail}", argv.join(" "));
    }
    Ok(out)
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

/// Delete namespaces left by earlier runs whose process is gone.
pub fn remove_stale() {
    let Ok(list) = host(&["ip", "netns", "list"], Duration::from_secs(10)) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = host(&["ip", "netns", "del", name], Duration::from_secs(10));
        }
    }
}

/// A process started by the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId(usize);

struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
}

/// Namespaces, links and processes; everything is removed on drop.
pub struct Lab {
    tag: String,
    namespaces: Vec<String>,
    procs: BTreeMap<ProcId, Proc>,
    next: usize,
    cleanup_files: Vec<PathBuf>,
    log_dir: PathBuf,
}

impl Lab {
    /// A new, empty lab whose process logs go to `log_dir`.
    ///
    /// # Errors
    /// When `log_dir` cannot be created.
    pub fn new(log_dir: &Path) -> Result<Self> {
        fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            tag: format!("{PREFIX}{}", std::process::id()),
            namespaces: Vec::new(),
            procs: BTreeMap::new(),
            next: 0,
            cleanup_files: Vec::new(),
            log_dir: log_dir.to_owned(),
        })
    }

    /// This run's unique tag (`isb<pid>`), also usable in interface names.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Create namespace `<tag>-<name>` with loopback up; returns its full name.
    ///
    /// # Errors
    /// When `ip netns add` fails.
    pub fn netns(&mut self, name: &str) -> Result<String> {
        let full = format!("{}-{name}", self.tag);
        host(&["ip", "netns", "add", &full], Duration::from_secs(10))?;
        self.namespaces.push(full.clone());
        self.ip(&full, "link set lo up")?;
        Ok(full)
    }

    /// Delete a namespace created by [`Lab::netns`] (stop its processes first).
    pub fn remove_netns(&mut self, ns: &str) {
        let ok = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        if ok.is_ok_and(|s| s.success()) {
            self.namespaces.retain(|n| n != ns);
        }
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up, with the given `addr/len` each.
    ///
    /// # Errors
    /// When an `ip` command fails.
    pub fn veth(
        &self,
        a: &str,
        a_if: &str,
        a_addr: &str,
        b: &str,
        b_if: &str,
        b_addr: &str,
    ) -> Result<()> {
        self.ip(
            a,
            &format!("link add {a_if} type veth peer name {b_if} netns {b}"),
        )?;
        self.ip(a, &format!("addr add {a_addr} dev {a_if}"))?;
        self.ip(b, &format!("addr add {b_addr} dev {b_if}"))?;
        self.ip(a, &format!("link set {a_if} up"))?;
        self.ip(b, &format!("link set {b_if} up"))?;
        Ok(())
    }

    /// `ip <args>` inside `ns`.
    ///
    /// # Errors
    /// When it fails.
    pub fn ip(&self, ns: &str, args: &str) -> Result<String> {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend(args.split_whitespace());
        host(&argv, Duration::from_secs(10))
    }

    /// Set a sysctl inside `ns`.
    ///
    /// # Errors
    /// When it fails.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.exec(
            ns,
            &["sysctl", "-qw", &format!("{key}={value}")],
            Duration::from_secs(10),
        )
        .map(drop)
    }

    /// Run a command inside `ns` to completion; returns stdout, fails with stderr.
    ///
    /// # Errors
    /// When it fails, or runs longer than `timeout`, or on interruption.
    pub fn exec(&self, ns: &str, argv: &[&str], timeout: Duration) -> Result<String> {
        self.exec_env(ns, argv, &[], timeout)
    }

    /// [`Lab::exec`] with extra environment variables.
    ///
    /// # Errors
    /// As [`Lab::exec`].
    pub fn exec_env(
        &self,
        ns: &str,
        argv: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<String> {
        let mut full: Vec<String> = ["ip", "netns", "exec", ns]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        full.extend(argv.iter().map(|s| (*s).to_owned()));
        run_argv(full, env, timeout)
    }

    /// Start a long-running process inside `ns`; its output goes to `<log_dir>/<label>.log`.
    /// `ip netns exec` execs the command, so the child's PID is the process itself.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn(
        &mut self,
        ns: &str,
        label: &str,
        argv: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ProcId> {
        check_interrupted()?;
        let log = self.log_dir.join(format!("{label}.log"));
        let f = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}` in {ns}", argv.join(" ")))?;
        let id = ProcId(self.next);
        self.next += 1;
        self.procs.insert(
            id,
            Proc {
                what: format!("{} (in {ns})", argv.join(" ")),
                child,
                log,
            },
        );
        Ok(id)
    }

    /// If the process has exited: a description with the tail of its log.
    pub fn exited(&mut self, id: ProcId) -> Option<String> {
        let p = self.procs.get_mut(&id)?;
        match p.child.try_wait() {
            Ok(Some(status)) => {
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Some(format!(
                    "`{}` exited ({status}); log {}:\n{}",
                    p.what,
                    p.log.display(),
                    tail.join("\n")
                ))
            }
            _ => None,
        }
    }

    /// Wait until `path` exists, failing if process `id` exits first or `timeout` passes.
    ///
    /// # Errors
    /// On timeout, exit of the process, or interruption.
    pub fn wait_for_path(&mut self, id: ProcId, path: &Path, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !path.exists() {
            check_interrupted()?;
            if let Some(why) = self.exited(id) {
                bail!("{why}");
            }
            if start.elapsed() > timeout {
                bail!("{} did not appear within {timeout:?}", path.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Wait until process `id` exits by itself and return its log (stdout and stderr); it
    /// is stopped if it runs longer than `timeout`.
    ///
    /// # Errors
    /// When it exits non-zero, on timeout (the process is then stopped) or interruption.
    pub fn wait(&mut self, id: ProcId, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let Some(p) = self.procs.get_mut(&id) else {
                bail!("no such process (already stopped)");
            };
            if let Some(status) = p.child.try_wait()? {
                let p = self.procs.remove(&id).expect("present");
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                if !status.success() {
                    bail!("`{}` exited ({status}): {}", p.what, log.trim());
                }
                return Ok(log);
            }
            if interrupted() || start.elapsed() > timeout {
                let what = p.what.clone();
                self.stop(id);
                check_interrupted()?;
                bail!("`{what}` did not finish within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remove this file when the lab is dropped (e.g. a UAPI socket a killed daemon left).
    pub fn remove_on_drop(&mut self, path: PathBuf) {
        self.cleanup_files.push(path);
    }

    /// Stop a process: SIGTERM, then SIGKILL after two seconds.
    pub fn stop(&mut self, id: ProcId) {
        if let Some(mut p) = self.procs.remove(&id) {
            terminate(&mut p.child);
        }
    }

    fn stop_all(&mut self) {
        let ids: Vec<ProcId> = self.procs.keys().copied().collect();
        // Signal all first, then wait, so that shutdowns overlap.
        for id in &ids {
            if let Some(p) = self.procs.get(id) {
                let _ = Command::new("kill")
                    .args(["-TERM", &p.child.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for id in ids {
            self.stop(id);
        }
    }
}

fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_all();
        for ns in std::mem::take(&mut self.namespaces) {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        for f in std::mem::take(&mut self.cleanup_files) {
            let _ = fs::remove_file(f);
        }
    }
}
