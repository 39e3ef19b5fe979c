//! What the outside can grow, and the bounds it meets: peers (the UAPI can add them), the
//! local servers' clients and request sizes, the handshake queue and the handshake
//! admission's per-source state. At a bound the new entry is refused (a UAPI client: the
//! oldest makes room), counted in `isthmus_limit_reached_total{table}` and logged, at most
//! once per [`LOG_EVERY`] per table with the count since the last line.
//!
//! Counting is one relaxed atomic add; the log check takes a lock only when it can have it
//! at once, so a flood that hits a bound on every packet (the handshake queue, the sources)
//! never makes workers wait for each other here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per table per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A bounded table (or queue) of the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Peers (`[interface] max_peers`): a UAPI `set` or a reload that would add more fails.
    Peers,
    /// UAPI connections at once (`max_uapi_clients`): the oldest is closed for a new one.
    UapiClients,
    /// A UAPI line over 4096 bytes or a `set` request over 64 MiB: refused, connection closed.
    UapiRequest,
    /// Control-channel connections at once (`max_control_clients`): a new one is closed.
    ControlClients,
    /// A control-channel message over `max_control_message`: refused, connection closed.
    ControlMessage,
    /// Admitted handshake messages waiting for the handshake thread (1024): dropped beyond.
    HandshakeQueue,
    /// Sources tracked by handshake admission under load (65536): a new one is refused.
    HandshakeSources,
}

impl Limit {
    /// Every limit, in the order of the counters.
    pub const ALL: [Limit; 7] = [
        Limit::Peers,
        Limit::UapiClients,
        Limit::UapiRequest,
        Limit::ControlClients,
        Limit::ControlMessage,
        Limit::HandshakeQueue,
        Limit::HandshakeSources,
    ];

    /// Its `table` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Peers => "peers",
            Limit::UapiClients => "uapi_clients",
            Limit::UapiRequest => "uapi_request",
            Limit::ControlClients => "control_clients",
            Limit::ControlMessage => "control_message",
            Limit::HandshakeQueue => "handshake_queue",
            Limit::HandshakeSources => "handshake_sources",
        }
    }

    /// What happened, for the log line; `None` where it is logged where it happens (the
    /// accept loop of `io::unix` for clients, the UAPI's error log for its requests).
    fn what(self) -> Option<&'static str> {
        Some(match self {
            Limit::UapiClients | Limit::ControlClients | Limit::UapiRequest => return None,
            Limit::Peers => "peer table full (interface.max_peers): new peers refused",
            Limit::ControlMessage => {
                "control-channel message over interface.max_control_message: refused"
            }
            Limit::HandshakeQueue => "handshake queue full: handshake messages dropped",
            Limit::HandshakeSources => {
                "handshake sources table full: handshakes from new sources dropped"
            }
        })
    }
}

/// The count of each limit reached, and when each was last logged.
#[derive(Debug)]
pub struct LimitCounters {
    counts: [AtomicU64; Limit::ALL.len()],
    /// Per limit: when it was last logged and its count then.
    logged: [Mutex<(Option<Instant>, u64)>; Limit::ALL.len()],
}

impl Default for LimitCounters {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            logged: std::array::from_fn(|_| Mutex::new((None, 0))),
        }
    }
}

impl LimitCounters {
    /// Counts `limit` reached once, and logs it if its last line is [`LOG_EVERY`] old.
    pub fn hit(&self, limit: Limit) {
        let i = limit as usize;
        let n = self.counts[i].fetch_add(1, Relaxed) + 1;
        let Some(what) = limit.what() else {
            return;
        };
        let Ok(mut last) = self.logged[i].try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        let occurrences = n - last.1;
        *last = (Some(now), n);
        tracing::warn!(table = limit.label(), occurrences, "{what}");
    }

    /// How often `limit` was reached.
    pub fn get(&self, limit: Limit) -> u64 {
        self.counts[limit as usize].load(Relaxed)
    }

    /// Every limit with its count, in [`Limit::ALL`]'s order.
    pub fn all(&self) -> [(Limit, u64); Limit::ALL.len()] {
        Limit::ALL.map(|l| (l, self.get(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_limit_on_its_own() {
        let c = LimitCounters::default();
        for _ in 0..3 {
            c.hit(Limit::Peers);
        }
        c.hit(Limit::HandshakeQueue);
        assert_eq!(c.get(Limit::Peers), 3);
        assert_eq!(c.get(Limit::HandshakeQueue), 1);
        assert_eq!(c.get(Limit::UapiClients), 0);
        let all = c.all();
        assert_eq!(all[0], (Limit::Peers, 3));
        for (i, l) in Limit::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i, "ALL is in declaration order");
        }
        // The first hit was logged; the next ones within the period are only counted.
        assert_eq!(c.logged[0].lock().unwrap().1, 1);
    }
}
