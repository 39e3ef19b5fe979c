//! Seqno requests in flight (RFC 8966 §3.8.2): the ones we originate on starvation, resent
//! with backoff until an update satisfies them, and the ones we forward, remembered for
//! duplicate suppression.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::packet::{Msg, RouterId};
use super::source::seqno_gt;
use super::LinkId;

/// How long a request is remembered (and duplicates suppressed).
pub const REQUEST_HOLD: Duration = Duration::from_secs(3);
/// First resend delay; doubles each time.
pub const REQUEST_RESEND: Duration = Duration::from_millis(500);
/// Resends of a request we originated.
pub const REQUEST_RESENDS: u8 = 2;

#[derive(Debug)]
struct Req {
    seqno: u16,
    sent: Instant,
    next: Instant,
    delay: Duration,
    left: u8,
    targets: Vec<(LinkId, Option<Ipv6Addr>, Msg)>,
}

/// Requests in flight, by (prefix, router-id).
#[derive(Debug, Default)]
pub struct Pending {
    map: HashMap<(IpNet, RouterId), Req>,
}

impl Pending {
    fn fresh(&self, prefix: IpNet, id: RouterId, seqno: u16, now: Instant) -> bool {
        match self.map.get(&(prefix, id)) {
            Some(r) if now.saturating_duration_since(r.sent) < REQUEST_HOLD => {
                seqno_gt(seqno, r.seqno)
            }
            _ => true,
        }
    }

    /// We want to send a request; false if an equal or newer one is already in flight.
    pub fn originate(&mut self, prefix: IpNet, id: RouterId, seqno: u16, now: Instant) -> bool {
        if !self.fresh(prefix, id, seqno, now) {
            return false;
        }
        self.map.insert(
            (prefix, id),
            Req {
                seqno,
                sent: now,
                next: now + REQUEST_RESEND,
                delay: REQUEST_RESEND,
                left: REQUEST_RESENDS,
                targets: Vec::new(),
            },
        );
        true
    }

    /// Remembers where an originated request went, for resends.
    pub fn track(&mut self, link: LinkId, dest: Option<Ipv6Addr>, msg: Msg) {
        if let Msg::SeqnoRequest {
            prefix, router_id, ..
        } = msg
        {
            if let Some(r) = self.map.get_mut(&(prefix, router_id)) {
                r.targets.push((link, dest, msg));
            }
        }
    }

    /// A request to forward; false if it duplicates one forwarded recently.
    pub fn forward(&mut self, prefix: IpNet, id: RouterId, seqno: u16, now: Instant) -> bool {
        if !self.fresh(prefix, id, seqno, now) {
            return false;
        }
        self.map.insert(
            (prefix, id),
            Req {
                seqno,
                sent: now,
                next: now,
                delay: REQUEST_RESEND,
                left: 0,
                targets: Vec::new(),
            },
        );
        true
    }

    /// An update with (router-id, seqno) arrived: requests it answers are done.
    pub fn satisfied(&mut self, prefix: IpNet, id: RouterId, seqno: u16) {
        if let Some(r) = self.map.get(&(prefix, id)) {
            if !seqno_gt(r.seqno, seqno) {
                self.map.remove(&(prefix, id));
            }
        }
    }

    /// Resends that are due; forgets old requests.
    pub fn due(&mut self, now: Instant) -> Vec<(LinkId, Option<Ipv6Addr>, Msg)> {
        let mut out = Vec::new();
        self.map.retain(|_, r| {
            if r.left > 0 && r.next <= now {
                r.left -= 1;
                r.delay *= 2;
                r.next = now + r.delay;
                out.extend(r.targets.iter().cloned());
            }
            r.left > 0 || now.saturating_duration_since(r.sent) < REQUEST_HOLD
        });
        out
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// None remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_suppressed_and_updates_satisfy() {
        let now = Instant::now();
        let p: IpNet = "10.0.0.0/8".parse().unwrap();
        let id = [2; 8];
        let mut q = Pending::default();
        assert!(q.forward(p, id, 5, now));
        assert!(!q.forward(p, id, 5, now), "same request twice");
        assert!(!q.forward(p, id, 4, now), "older request");
        assert!(q.forward(p, id, 6, now), "newer request");
        q.satisfied(p, id, 5);
        assert_eq!(q.len(), 1, "seqno 5 does not satisfy a request for 6");
        q.satisfied(p, id, 6);
        assert!(q.is_empty());
        assert!(q.forward(p, id, 6, now));
        q.due(now + REQUEST_HOLD);
        assert!(q.is_empty(), "forgotten after the hold time");
    }

    #[test]
    fn originated_requests_are_resent_with_backoff() {
        let now = Instant::now();
        let p: IpNet = "2001:db8::/32".parse().unwrap();
        let id = [3; 8];
        let mut q = Pending::default();
        assert!(q.originate(p, id, 9, now));
        let msg = Msg::SeqnoRequest {
            prefix: p,
            seqno: 9,
            hop_count: 64,
            router_id: id,
        };
        q.track(LinkId(1), None, msg.clone());
        assert!(q.due(now).is_empty());
        assert_eq!(q.due(now + REQUEST_RESEND).len(), 1);
        assert!(
            q.due(now + REQUEST_RESEND * 2).is_empty(),
            "backoff doubles"
        );
        assert_eq!(q.due(now + REQUEST_RESEND * 3).len(), 1);
        assert!(q.due(now + REQUEST_RESEND * 20).is_empty(), "gives up");
    }
}
