//! The fast liveness probe of trunk peers, as BFD does it for a link: when nothing was sent to
//! a probed peer for an interval, an authenticated keepalive goes out; when nothing
//! authenticated came from it for `misses` intervals, it is *down*, and the first
//! authenticated packet after that makes it *up* again. Both are core events
//! ([`CoreEvent::PeerDown`], [`CoreEvent::PeerUp`]), so the control plane drops the
//! neighbours of that link at once instead of waiting for Babel's hellos to time out.
//!
//! It costs the hot path nothing: sent and received packets are read from the peer's counters
//! (which count only what authenticated), compared with what the last run saw.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::{CoreEvent, Sink, Worker};
use crate::keys::Key;

/// A peer's probe settings: `liveness_interval` and `liveness_misses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// A keepalive goes out when nothing else did for this long.
    pub interval: Duration,
    /// Down after this many intervals without an authenticated packet.
    pub misses: u32,
}

impl Liveness {
    /// BFD's detection multiplier.
    pub const DEFAULT_MISSES: u32 = 3;

    /// How long without an authenticated packet makes the peer down.
    pub fn detection_time(&self) -> Duration {
        self.interval * self.misses
    }
}

/// One probed peer, as the last run saw it.
#[derive(Debug)]
struct Probe {
    rx_seen: u64,
    heard: Instant,
    tx_seen: u64,
    sent: Instant,
    up: bool,
}

/// The probes of one worker (the timer thread's).
#[derive(Debug, Default)]
pub struct Probes {
    by_key: HashMap<Key, Probe>,
}

impl Worker {
    /// Runs the liveness probes at `now`: keepalives to the probed peers that need one, up and
    /// down events for those whose state changed. Returns the shortest probe interval, if any
    /// peer has a probe (the caller runs this at a fraction of it).
    pub fn probe(
        &mut self,
        probes: &mut Probes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Option<Duration> {
        let peers = self.core.peers.load_full();
        let mut shortest: Option<Duration> = None;
        let mut events = Vec::new();
        let mut probed = 0;
        for p in peers.iter() {
            let Some(l) = p.liveness() else {
                continue;
            };
            probed += 1;
            shortest = Some(shortest.map_or(l.interval, |s| s.min(l.interval)));
            let (rx, tx) = (
                p.counters.rx_packets.load(Relaxed),
                p.counters.tx_packets.load(Relaxed),
            );
            let probe = probes.by_key.entry(p.public_key).or_insert(Probe {
                rx_seen: rx,
                heard: now,
                tx_seen: tx,
                // Nothing sent yet: the first run sends.
                sent: now.checked_sub(l.interval).unwrap_or(now),
                up: false,
            });
            if rx != probe.rx_seen {
                probe.rx_seen = rx;
                probe.heard = now;
                if !probe.up {
                    probe.up = true;
                    p.live.store(true, Relaxed);
                    events.push(CoreEvent::PeerUp(p.public_key));
                    tracing::info!(peer = %p.label, "liveness: up");
                }
            } else if probe.up && now.duration_since(probe.heard) >= l.detection_time() {
                probe.up = false;
                p.live.store(false, Relaxed);
                events.push(CoreEvent::PeerDown(p.public_key));
                tracing::info!(
                    peer = %p.label,
                    after = ?now.duration_since(probe.heard),
                    "liveness: nothing authenticated from the peer, down"
                );
            }
            if tx != probe.tx_seen {
                probe.tx_seen = tx;
                probe.sent = now;
            }
            // Nowhere to send yet (no endpoint): nothing to probe, and nothing to count.
            if now.duration_since(probe.sent) >= l.interval && p.endpoint().is_some() {
                if self.udp_out.is_full() {
                    sink.send_udp(&mut self.udp_out);
                }
                // An empty transport message: a keepalive (or, without a session, a
                // handshake initiation, which boringtun paces itself).
                super::pipeline::encapsulate_into(
                    &self.core.index,
                    &mut self.udp_out,
                    &self.counters,
                    p,
                    &[],
                );
                probe.sent = now;
                probe.tx_seen = p.counters.tx_packets.load(Relaxed);
            }
        }
        if probes.by_key.len() > probed {
            // Peers removed, or their probe turned off.
            (probes.by_key).retain(|k, _| peers.by_key(k).is_some_and(|p| p.liveness().is_some()));
        }
        self.flush(sink);
        for ev in events {
            self.core.emit(ev);
        }
        shortest
    }
}
