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

/// Whether a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes: it is remembered.
    New,
    /// No: an equal or newer one is in flight.
    Duplicate,
    /// No: the table holds its bound of requests already.
    Full,
}

impl Pending {
    fn admit(&self, prefix: IpNet, id: RouterId, seqno: u16, now: Instant, max: usize) -> Admit {
        match self.map.get(&(prefix, id)) {
            Some(r) if now.saturating_duration_since(r.sent) < REQUEST_HOLD => {
                if seqno_gt(seqno, r.seqno) {
                    Admit::New
                } else {
                    Admit::Duplicate
                }
            }
            Some(_) => Admit::New,
            None if self.map.len() >= max => Admit::Full,
            None => Admit::New,
        }
    }

    /// We want to send a request; refused if an equal or newer one is already in flight,
    /// or if `max` are.
    pub fn originate(
        &mut self,
        prefix: IpNet,
        id: RouterId,
        seqno: u16,
        now: Instant,
        max: usize,
    ) -> Admit {
        self.admit_new(prefix, id, seqno, now, max, REQUEST_RESENDS)
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

    /// A request to forward; refused if it duplicates one forwarded recently, or if `max`
    /// are in flight.
    pub fn forward(
        &mut self,
        prefix: IpNet,
        id: RouterId,
        seqno: u16,
        now: Instant,
        max: usize,
    ) -> Admit {
        self.admit_new(prefix, id, seqno, now, max, 0)
    }

    /// Admits a request and, if it is new, keeps it with `resends` resends to come (the
    /// first one [`REQUEST_RESEND`] from now).
    fn admit_new(
        &mut self,
        prefix: IpNet,
        id: RouterId,
        seqno: u16,
        now: Instant,
        max: usize,
        resends: u8,
    ) -> Admit {
        let admit = self.admit(prefix, id, seqno, now, max);
        if admit == Admit::New {
            let req = Req {
                seqno,
                sent: now,
                next: if resends > 0 {
                    now + REQUEST_RESEND
                } else {
                    now
                },
                delay: REQUEST_RESEND,
                left: resends,
                targets: Vec::new(),
            };
            self.map.insert((prefix, id), req);
        }
        admit
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
        let m = usize::MAX;
        assert_eq!(q.forward(p, id, 5, now, m), Admit::New);
        assert_eq!(
            q.forward(p, id, 5, now, m),
            Admit::Duplicate,
            "same request twice"
        );
        assert_eq!(
            q.forward(p, id, 4, now, m),
            Admit::Duplicate,
            "older request"
        );
        assert_eq!(q.forward(p, id, 6, now, m), Admit::New, "newer request");
        q.satisfied(p, id, 5);
        assert_eq!(q.len(), 1, "seqno 5 does not satisfy a request for 6");
        q.satisfied(p, id, 6);
        assert!(q.is_empty());
        assert_eq!(q.forward(p, id, 6, now, m), Admit::New);
        q.due(now + REQUEST_HOLD);
        assert!(q.is_empty(), "forgotten after the hold time");
    }

    #[test]
    fn originated_requests_are_resent_with_backoff() {
        let now = Instant::now();
        let p: IpNet = "2001:db8::/32".parse().unwrap();
        let id = [3; 8];
        let mut q = Pending::default();
        assert_eq!(q.originate(p, id, 9, now, usize::MAX), Admit::New);
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

    #[test]
    fn a_full_table_refuses_new_requests_but_not_newer_seqnos_of_its_own() {
        let now = Instant::now();
        let p = |i: u8| -> IpNet { format!("10.{i}.0.0/16").parse().unwrap() };
        let id = [4; 8];
        let mut q = Pending::default();
        assert_eq!(q.forward(p(0), id, 1, now, 2), Admit::New);
        assert_eq!(q.originate(p(1), id, 1, now, 2), Admit::New);
        assert_eq!(q.forward(p(2), id, 1, now, 2), Admit::Full);
        assert_eq!(q.originate(p(2), id, 1, now, 2), Admit::Full);
        assert_eq!(q.forward(p(0), id, 1, now, 2), Admit::Duplicate);
        assert_eq!(
            q.forward(p(0), id, 2, now, 2),
            Admit::New,
            "replaces its own entry"
        );
        assert_eq!(q.len(), 2);
        for i in 1..10 {
            q.due(now + REQUEST_HOLD * i);
        }
        assert!(q.is_empty(), "they age out");
        assert_eq!(
            q.forward(p(2), id, 1, now + REQUEST_HOLD * 4, 2),
            Admit::New
        );
    }
}
