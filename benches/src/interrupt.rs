//! Ctrl-C during the tunnel benchmark: instead of dying with namespaces and daemons left
//! behind, the driver notes the signal and stops at the next step; the error unwinds through
//! the lab's `Drop` guards ([`isthmus_lab::Netns`]), which stop the daemons and delete the
//! namespaces. A run killed with SIGKILL leaves its namespaces to the next run
//! ([`isthmus_lab::Netns::remove_stale`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Catch SIGINT, SIGTERM and SIGHUP (see the module's documentation).
///
/// # Errors
/// When the handlers cannot be registered.
pub fn install_handler() -> Result<()> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
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
    FLAG.get()
        .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
}

/// Fails with "interrupted" once a termination signal arrived.
///
/// # Errors
/// When interrupted.
pub fn check() -> Result<()> {
    if interrupted() {
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
        check()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}
