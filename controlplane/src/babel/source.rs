//! The source table and the feasibility condition (RFC 8966 §3.5.1, §3.7.3).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::packet::{RouterId, INFINITY};

/// How long a source entry outlives its last update (RFC 8966 §3.7.3 suggests 3 minutes).
pub const SOURCE_GC: Duration = Duration::from_secs(180);

/// `a` is newer than `b` in seqno arithmetic (RFC 8966 §3.2.1).
pub fn seqno_gt(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// A feasibility distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Seqno of the distance.
    pub seqno: u16,
    /// Metric of the distance.
    pub metric: u16,
    /// Last time it was updated.
    pub time: Instant,
}

/// The source table: feasibility distances per (prefix, router-id).
#[derive(Debug, Default)]
pub struct Sources {
    map: HashMap<(IpNet, RouterId), Source>,
    /// No entry is older than this (a lower bound), so that [`Sources::gc`] walks the table
    /// only when something may have aged out.
    oldest: Option<Instant>,
}

impl Sources {
    /// Is an update (seqno, metric) for (prefix, router-id) feasible? Retractions always are.
    pub fn feasible(
        &self,
        prefix: IpNet,
        id: RouterId,
        seqno: u16,
        metric: u16,
        now: Instant,
    ) -> bool {
        if metric == INFINITY {
            return true;
        }
        match self.map.get(&(prefix, id)) {
            None => true,
            Some(s) if now.saturating_duration_since(s.time) > SOURCE_GC => true,
            Some(s) => seqno_gt(seqno, s.seqno) || (seqno == s.seqno && metric < s.metric),
        }
    }

    /// Records that we advertised (seqno, metric) for (prefix, router-id). A new entry is
    /// refused (false) when the table holds `max` already: the caller must then not
    /// advertise the route, whose feasibility distance could not be kept.
    pub fn advertised(
        &mut self,
        prefix: IpNet,
        id: RouterId,
        seqno: u16,
        metric: u16,
        now: Instant,
        max: usize,
    ) -> bool {
        if metric == INFINITY {
            return true;
        }
        if self.map.len() >= max && !self.map.contains_key(&(prefix, id)) {
            return false;
        }
        self.oldest = Some(self.oldest.map_or(now, |t| t.min(now)));
        let e = self.map.entry((prefix, id)).or_insert(Source {
            seqno,
            metric,
            time: now,
        });
        if seqno_gt(seqno, e.seqno) || now.saturating_duration_since(e.time) > SOURCE_GC {
            *e = Source {
                seqno,
                metric,
                time: now,
            };
        } else if seqno == e.seqno {
            e.metric = e.metric.min(metric);
            e.time = now;
        }
        true
    }

    /// The entry, if any.
    pub fn get(&self, prefix: IpNet, id: RouterId) -> Option<&Source> {
        self.map.get(&(prefix, id))
    }

    /// Drops entries older than [`SOURCE_GC`].
    pub fn gc(&mut self, now: Instant) {
        if self
            .oldest
            .is_none_or(|t| now.saturating_duration_since(t) <= SOURCE_GC)
        {
            return;
        }
        let mut oldest: Option<Instant> = None;
        self.map.retain(|_, s| {
            let keep = now.saturating_duration_since(s.time) <= SOURCE_GC;
            if keep {
                oldest = Some(oldest.map_or(s.time, |t| t.min(s.time)));
            }
            keep
        });
        self.oldest = oldest;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqno_arithmetic_wraps() {
        assert!(seqno_gt(1, 0));
        assert!(seqno_gt(0, 0xFFFF));
        assert!(!seqno_gt(0x8000, 0));
        assert!(!seqno_gt(5, 5));
    }

    #[test]
    fn feasibility_condition() {
        let now = Instant::now();
        let p: IpNet = "10.0.0.0/24".parse().unwrap();
        let id = [1; 8];
        let mut s = Sources::default();
        assert!(s.feasible(p, id, 7, 500, now), "no source: feasible");
        assert!(s.advertised(p, id, 7, 300, now, usize::MAX));
        assert!(s.feasible(p, id, 7, 299, now));
        assert!(
            !s.feasible(p, id, 7, 300, now),
            "equal metric is not feasible"
        );
        assert!(!s.feasible(p, id, 6, 10, now), "older seqno");
        assert!(s.feasible(p, id, 8, 60000, now), "newer seqno");
        assert!(s.feasible(p, id, 6, INFINITY, now), "retractions always");
        s.advertised(p, id, 7, 200, now, usize::MAX);
        assert_eq!(s.get(p, id).unwrap().metric, 200);
        s.advertised(p, id, 8, 900, now, usize::MAX);
        assert_eq!(s.get(p, id).unwrap().seqno, 8);
        assert!(s.feasible(p, id, 8, 100, now + SOURCE_GC + Duration::from_secs(1)));
        s.gc(now + SOURCE_GC + Duration::from_secs(1));
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_table_refuses_new_entries_and_keeps_updating_its_own() {
        let now = Instant::now();
        let p = |i: u8| -> IpNet { format!("10.0.{i}.0/24").parse().unwrap() };
        let id = [1; 8];
        let mut s = Sources::default();
        assert!(s.advertised(p(0), id, 1, 100, now, 2));
        assert!(s.advertised(p(1), id, 1, 100, now, 2));
        assert!(!s.advertised(p(2), id, 1, 100, now, 2), "full");
        assert!(
            s.advertised(p(2), id, 1, INFINITY, now, 2),
            "a retraction records nothing"
        );
        assert_eq!(s.len(), 2);
        assert!(
            s.advertised(p(0), id, 2, 50, now, 2),
            "an entry it has is updated"
        );
        assert_eq!(s.get(p(0), id).unwrap().seqno, 2);
        assert!(s.get(p(2), id).is_none());
    }
}
