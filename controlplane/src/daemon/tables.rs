//! The daemon's two route tables behind [`RouteTable`]: the kernel's routing table over
//! rtnetlink ([`Kernel`]) and the data plane's FIB over the control channel ([`FibChannel`]).
//! Only I/O here; what to write and when is [`super::reconcile`]'s.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use isthmus_dataplane::ctl::proto::{write_msg, CtlRoute, Msg};
use isthmus_dataplane::keys::Key;

use super::reconcile::{RouteOp, RouteTable, TableError};
use crate::kernel::{Kernel, KernelChange, KernelRoute};

/// Routes of our protocol number in our kernel table, one netlink request per op (pipelined).
impl RouteTable for Kernel {
    type Route = KernelRoute;

    fn apply(&mut self, ops: &[RouteOp<KernelRoute>]) -> Vec<Result<(), TableError>> {
        let changes: Vec<KernelChange> = ops
            .iter()
            .map(|op| match *op {
                RouteOp::Replace(r) => KernelChange::Replace(r),
                RouteOp::Remove(r) => KernelChange::Remove(r),
            })
            .collect();
        Kernel::apply(self, &changes)
            .into_iter()
            .map(|r| r.map_err(TableError::Refused))
            .collect()
    }
}

/// The writing half of the control channel to the data plane: FIB snapshots and updates (the
/// [`RouteTable`]), injected Babel packets, and the ledger that matches the data plane's
/// answers to what was sent.
#[derive(Debug, Default)]
pub(super) struct FibChannel {
    stream: Option<UnixStream>,
    /// One entry per message awaiting the data plane's `Ok` or `Error`, oldest first: the send
    /// time of a FIB push, `None` for an injected packet.
    awaiting: VecDeque<Option<Instant>>,
}

impl FibChannel {
    /// The control channel is up: write there.
    pub(super) fn connect(&mut self, stream: UnixStream) {
        self.stream = Some(stream);
        self.awaiting.clear();
    }

    /// The control channel went down; whether it was up.
    pub(super) fn disconnect(&mut self) -> bool {
        self.stream.take().is_some()
    }

    pub(super) fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Asks for the data plane's routes (answered with `Routes`, not `Ok`).
    pub(super) fn ask_routes(&mut self) -> io::Result<()> {
        match self.stream.as_mut() {
            Some(s) => write_msg(s, &Msg::GetRoutes),
            None => Ok(()),
        }
    }

    /// Asks for the data plane's peers (answered with `Peers`, not `Ok`).
    pub(super) fn ask_peers(&mut self) -> io::Result<()> {
        match self.stream.as_mut() {
            Some(s) => write_msg(s, &Msg::GetPeers),
            None => Ok(()),
        }
    }

    /// Sends a Babel packet into `peer`'s tunnel; nothing when the channel is down.
    pub(super) fn inject(&mut self, peer: Key, packet: Vec<u8>) -> io::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        write_msg(s, &Msg::Inject { peer, packet })?;
        self.awaiting.push_back(None);
        Ok(())
    }

    /// The data plane answered the oldest message (`Ok` or `Error`): how long it took, if that
    /// was a FIB push it took.
    pub(super) fn answered(&mut self, ok: bool) -> Option<Duration> {
        let sent = self.awaiting.pop_front().flatten()?;
        ok.then(|| sent.elapsed())
    }

    /// Sends a FIB push. A write that fails takes the channel down (the reader sees it too and
    /// reconnects).
    fn push(&mut self, msg: &Msg) -> Result<(), String> {
        let Some(s) = self.stream.as_mut() else {
            return Err("control channel down".into());
        };
        match write_msg(s, msg) {
            Ok(()) => {
                self.awaiting.push_back(Some(Instant::now()));
                Ok(())
            }
            Err(e) => {
                self.stream = None;
                Err(format!("control channel write: {e}"))
            }
        }
    }
}

/// The data plane's control-plane routes: a batch of ops is one `FibUpdate`, a replacement one
/// `FibSnapshot` (which also ends the data plane's stale mark).
impl RouteTable for FibChannel {
    type Route = CtlRoute;

    fn apply(&mut self, ops: &[RouteOp<CtlRoute>]) -> Vec<Result<(), TableError>> {
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for op in ops {
            match op {
                RouteOp::Replace(r) => add.push(*r),
                RouteOp::Remove(r) => remove.push(r.prefix),
            }
        }
        let sent = self.push(&Msg::FibUpdate { add, remove });
        ops.iter()
            .map(|_| sent.clone().map_err(TableError::Unreachable))
            .collect()
    }

    fn replace_all(&mut self, routes: &[CtlRoute]) -> Option<Result<(), TableError>> {
        Some(
            self.push(&Msg::FibSnapshot {
                routes: routes.to_vec(),
            })
            .map_err(TableError::Unreachable),
        )
    }
}
