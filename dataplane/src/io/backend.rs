//! The seam between the forwarding core and the I/O: a [`Backend`] owns its queues (UDP
//! sockets and a TUN queue; XSK rings; the loopback's in-memory wire), waits for input and
//! hands it to a [`Worker`] in batches, and takes the worker's output batches back out
//! (it is the worker's [`crate::forward::Sink`] while it polls). The worker loop, [`run`],
//! is the same for every backend; the loopback network calls [`Backend::poll`] itself, one
//! node after another, to stay deterministic.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use crate::forward::Worker;

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Input was handed to the worker.
    Busy,
    /// Nothing arrived within the timeout.
    Idle,
    /// The backend is gone for good (its device was deleted): stop.
    Closed,
}

/// An I/O backend for one worker.
pub trait Backend {
    /// Wait at most `timeout` for input, then hand what is ready to `worker`: a batch from
    /// each source that has one (the caller polls again at once while it is busy, so that
    /// sources take turns and a stop request is seen between batches).
    ///
    /// # Errors
    /// Only for errors the worker cannot go on after; transient ones are counted or
    /// logged (rate-limited) by the backend.
    fn poll(&mut self, worker: &mut Worker, timeout: Duration) -> io::Result<Polled>;
}

/// The worker loop: poll `backend` until `stop` is set or the backend closes.
///
/// # Errors
/// The backend's.
pub fn run(worker: &mut Worker, backend: &mut impl Backend, stop: &AtomicBool) -> io::Result<()> {
    while !stop.load(Relaxed) {
        if backend.poll(worker, Duration::from_secs(1))? == Polled::Closed {
            break;
        }
    }
    Ok(())
}
