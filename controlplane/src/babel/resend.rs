//! Urgent updates being made reliable (RFC 8966 §3.7.2), indexed so that a table of
//! 100,000 routes does not make every announcement or acknowledgment a linear scan.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::time::Instant;

use ipnet::IpNet;

use super::LinkId;

/// One urgent update: resent a few times on multicast, or until acknowledged on unicast.
#[derive(Debug, Clone)]
pub(crate) struct Resend {
    pub link: LinkId,
    pub dest: Option<Ipv6Addr>,
    pub prefix: IpNet,
    pub left: u8,
    pub at: Instant,
    pub opaque: Option<u16>,
}

/// The urgent updates in flight: at most one per (link, prefix), kept in the order they
/// were made.
#[derive(Debug, Default)]
pub(crate) struct Resends {
    /// By insertion number.
    list: BTreeMap<u64, Resend>,
    /// (link, prefix) → insertion number.
    by_key: HashMap<(LinkId, IpNet), u64>,
    /// Opaque of the acknowledgment request → insertion numbers (opaques wrap, so several).
    by_opaque: HashMap<u16, Vec<u64>>,
    next: u64,
}

impl Resends {
    fn unlink(&mut self, seq: u64) -> Option<Resend> {
        let r = self.list.remove(&seq)?;
        self.by_key.remove(&(r.link, r.prefix));
        if let Some(o) = r.opaque {
            if let Some(v) = self.by_opaque.get_mut(&o) {
                v.retain(|&s| s != seq);
                if v.is_empty() {
                    self.by_opaque.remove(&o);
                }
            }
        }
        Some(r)
    }

    /// Whether an update for (`link`, `prefix`) can be added while at most `max` are in
    /// flight: one for the same link and prefix is replaced, so there is always room for it.
    pub fn has_room(&self, link: LinkId, prefix: IpNet, max: usize) -> bool {
        self.list.len() < max || self.by_key.contains_key(&(link, prefix))
    }

    /// Adds `r`, replacing the one for the same link and prefix.
    pub fn insert(&mut self, r: Resend) {
        if let Some(&old) = self.by_key.get(&(r.link, r.prefix)) {
            self.unlink(old);
        }
        let seq = self.next;
        self.next += 1;
        self.by_key.insert((r.link, r.prefix), seq);
        if let Some(o) = r.opaque {
            self.by_opaque.entry(o).or_default().push(seq);
        }
        self.list.insert(seq, r);
    }

    /// Forgets those on `link`.
    pub fn remove_link(&mut self, link: LinkId) {
        let gone: Vec<u64> = self
            .list
            .iter()
            .filter(|(_, r)| r.link == link)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.unlink(s);
        }
    }

    /// An acknowledgment: forgets those that asked for it; true if there were any.
    pub fn acked(&mut self, opaque: u16) -> bool {
        let Some(seqs) = self.by_opaque.remove(&opaque) else {
            return false;
        };
        for s in seqs {
            self.unlink(s);
        }
        true
    }

    /// Those due at `now`, newest first: the ones with resends left are returned (with
    /// `left` already decremented and `at` moved to `next`), the others forgotten.
    pub fn due(&mut self, now: Instant, next: Instant) -> Vec<Resend> {
        let due: Vec<u64> = self
            .list
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(s, _)| *s)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for s in due.into_iter().rev() {
            let Some(r) = self.list.get_mut(&s) else {
                continue;
            };
            if r.left == 0 {
                self.unlink(s);
                continue;
            }
            r.left -= 1;
            r.at = next;
            out.push(r.clone());
        }
        out
    }

    /// Number in flight.
    pub fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn r(link: u32, prefix: &str, opaque: Option<u16>, at: Instant) -> Resend {
        Resend {
            link: LinkId(link),
            dest: None,
            prefix: prefix.parse().unwrap(),
            left: 2,
            at,
            opaque,
        }
    }

    #[test]
    fn one_per_link_and_prefix_acks_by_opaque_and_expiry() {
        let t0 = Instant::now();
        let mut q = Resends::default();
        q.insert(r(0, "10.0.0.0/24", Some(1), t0));
        q.insert(r(1, "10.0.0.0/24", Some(2), t0));
        q.insert(r(0, "10.0.0.0/24", Some(3), t0));
        assert_eq!(q.len(), 2, "the second on link 0 replaced the first");
        assert!(!q.acked(1), "replaced: its opaque is gone");
        assert!(q.acked(3));
        assert_eq!(q.len(), 1);
        q.insert(r(0, "10.0.1.0/24", None, t0 + Duration::from_secs(1)));
        let d = q.due(t0, t0 + Duration::from_millis(500));
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].link, d[0].left), (LinkId(1), 1));
        q.due(t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        q.due(t0 + Duration::from_secs(2), t0 + Duration::from_secs(3));
        assert_eq!(
            q.len(),
            1,
            "link 1's is done, link 0's last resend is pending"
        );
        q.remove_link(LinkId(0));
        assert_eq!(q.len(), 0);
        assert!(q.by_key.is_empty() && q.by_opaque.is_empty());
    }
}
