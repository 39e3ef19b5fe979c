//! Neighbours (RFC 8966 §3.4): hello history, IHU, link cost (Appendix A) and RTT (RFC 9616).

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use super::packet::INFINITY;
use super::{CostModel, LinkId, LinkParams};

/// Centiseconds to a duration.
pub(crate) fn cs(v: u16) -> Duration {
    Duration::from_millis(u64::from(v) * 10)
}

/// A duration in centiseconds, saturating.
pub(crate) fn to_cs(d: Duration) -> u16 {
    u16::try_from(d.as_millis() / 10).unwrap_or(u16::MAX)
}

/// Hello history for one kind of hello (multicast or unicast), RFC 8966 Appendix A.1.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// Most recent hello in the top bit.
    pub reach: u16,
    /// The seqno we expect next.
    pub expected: Option<u16>,
    /// Advertised interval.
    pub interval: Duration,
    /// When the next hello counts as missed.
    pub timer: Option<Instant>,
}

impl History {
    /// Records a hello; returns true if it was new (not a late duplicate).
    ///
    /// An unscheduled hello (interval 0: babeld's unicast hello beside an IHU, for the RTT)
    /// counts only in a history that scheduled hellos keep, and leaves its timer alone
    /// (RFC 8966 §3.4.1); alone, it would make a reach that never decays.
    pub fn hello(&mut self, seqno: u16, interval_cs: u16, now: Instant) -> bool {
        if interval_cs == 0 && self.timer.is_none() {
            return false;
        }
        match self.expected {
            Some(exp) => {
                let d = seqno.wrapping_sub(exp) as i16;
                if !(-16..=16).contains(&d) {
                    // The neighbour rebooted and lost its seqno.
                    self.reach = 0x8000;
                } else if d < 0 {
                    // Late: undo the misses the timer already counted.
                    self.reach = self.reach.checked_shl((-d) as u32).unwrap_or(0);
                    self.reach = (self.reach >> 1) | 0x8000;
                } else {
                    self.reach = ((u32::from(self.reach) >> (d as u32 + 1)) as u16) | 0x8000;
                }
            }
            None => self.reach = 0x8000,
        }
        self.expected = Some(seqno.wrapping_add(1));
        if interval_cs > 0 {
            self.interval = cs(interval_cs);
            self.timer = Some(now + self.interval * 3 / 2);
        }
        true
    }

    /// Counts a missed hello if the timer expired.
    pub fn tick(&mut self, now: Instant) -> bool {
        match self.timer {
            Some(t) if t <= now => {
                self.reach >>= 1;
                self.expected = self.expected.map(|e| e.wrapping_add(1));
                self.timer = (self.reach != 0).then(|| t + self.interval);
                true
            }
            _ => false,
        }
    }

    fn rxcost(&self, p: &LinkParams) -> u16 {
        match p.cost_model {
            CostModel::TwoOutOfThree => {
                if (self.reach & 0xE000).count_ones() >= 2 {
                    p.rxcost
                } else {
                    INFINITY
                }
            }
            CostModel::Etx => {
                match (u32::from(p.rxcost.max(1)) * 16).checked_div(self.reach.count_ones()) {
                    None => INFINITY,
                    Some(c) => u16::try_from(c).unwrap_or(INFINITY - 1).min(INFINITY - 1),
                }
            }
        }
    }
}

/// A neighbour on a link.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    pub link: LinkId,
    pub address: Ipv6Addr,
    pub multicast: History,
    pub unicast: History,
    /// Cost the neighbour reports for hearing us (from its IHU).
    pub txcost: u16,
    pub ihu_expires: Option<Instant>,
    /// Last hello's origin timestamp and when we received it (our clock, µs).
    pub hello_ts: Option<(u32, u32)>,
    /// Smoothed RTT.
    pub rtt: Option<Duration>,
    pub rtt_time: Option<Instant>,
    /// The cost used by routes, as last computed.
    pub cost: u16,
    /// We have heard it well enough once (finite rxcost).
    pub ever_up: bool,
    /// Our rxcost for it, as last computed: when it turns finite the neighbour is told at once.
    pub rxcost_told: u16,
    /// Seqno of our last unicast hello to it.
    pub unicast_seqno: u16,
}

impl Neighbour {
    pub fn new(link: LinkId, address: Ipv6Addr) -> Self {
        Self {
            link,
            address,
            multicast: History::default(),
            unicast: History::default(),
            txcost: INFINITY,
            ihu_expires: None,
            hello_ts: None,
            rtt: None,
            rtt_time: None,
            cost: INFINITY,
            ever_up: false,
            rxcost_told: INFINITY,
            unicast_seqno: 0,
        }
    }

    /// Our cost of receiving from the neighbour.
    pub fn rxcost(&self, p: &LinkParams) -> u16 {
        self.multicast.rxcost(p).min(self.unicast.rxcost(p))
    }

    /// Link cost (Appendix A.2, as babeld computes it), plus the RTT penalty.
    pub fn compute_cost(&self, p: &LinkParams, now: Instant) -> u16 {
        let tx = self.txcost;
        let rx = self.rxcost(p);
        if tx == INFINITY || rx == INFINITY {
            return INFINITY;
        }
        let base = match p.cost_model {
            CostModel::TwoOutOfThree => u32::from(tx.max(rx)),
            CostModel::Etx => {
                let (a, b) = (u32::from(tx.max(256)), u32::from(rx.max(256)));
                (a * b + 128) >> 8
            }
        };
        let total = base + u32::from(self.rtt_penalty(p, now));
        u16::try_from(total)
            .unwrap_or(INFINITY - 1)
            .min(INFINITY - 1)
    }

    /// RFC 9616 §5 as babeld does it: linear between rtt_min and rtt_max.
    pub fn rtt_penalty(&self, p: &LinkParams, now: Instant) -> u16 {
        if !p.timestamps || p.max_rtt_penalty == 0 {
            return 0;
        }
        let (Some(rtt), Some(at)) = (self.rtt, self.rtt_time) else {
            return 0;
        };
        if now.saturating_duration_since(at) > Duration::from_secs(180) {
            return 0;
        }
        if rtt <= p.rtt_min {
            0
        } else if rtt >= p.rtt_max {
            p.max_rtt_penalty
        } else {
            let span = (p.rtt_max - p.rtt_min).as_micros().max(1);
            let over = (rtt - p.rtt_min).as_micros();
            u16::try_from(u128::from(p.max_rtt_penalty) * over / span).unwrap_or(p.max_rtt_penalty)
        }
    }

    /// Adds an RTT sample.
    pub fn rtt_sample(&mut self, sample: Duration, now: Instant) {
        self.rtt = Some(match self.rtt {
            Some(old) => (old * 3 + sample) / 4,
            None => sample,
        });
        self.rtt_time = Some(now);
    }

    /// The next instant this neighbour needs attention.
    pub fn next_timer(&self) -> Option<Instant> {
        [self.multicast.timer, self.unicast.timer, self.ihu_expires]
            .into_iter()
            .flatten()
            .min()
    }

    /// Nothing heard for 16 hellos and no IHU: forget it.
    pub fn is_dead(&self) -> bool {
        self.multicast.reach == 0 && self.unicast.reach == 0 && self.txcost == INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wired() -> LinkParams {
        LinkParams::wired()
    }

    #[test]
    fn history_counts_hellos_and_misses() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.hello(10, 400, t0);
        assert_eq!(h.reach, 0x8000);
        h.hello(11, 400, t0);
        assert_eq!(h.reach, 0xC000);
        // One lost (12), then 13.
        h.hello(13, 400, t0);
        assert_eq!(h.reach, 0xB000);
        // Late duplicate is folded back.
        assert!(h.tick(t0 + Duration::from_secs(6)));
        assert_eq!(h.reach, 0x5800);
        h.hello(14, 400, t0 + Duration::from_secs(6));
        assert_eq!(h.reach, 0xD800, "late hello undoes the counted miss");
        // A big jump resets.
        h.hello(1000, 400, t0);
        assert_eq!(h.reach, 0x8000);
    }

    #[test]
    fn two_out_of_three() {
        let p = wired();
        let t0 = Instant::now();
        let mut n = Neighbour::new(LinkId(0), Ipv6Addr::LOCALHOST);
        n.multicast.hello(1, 400, t0);
        assert_eq!(n.rxcost(&p), INFINITY, "one hello is not enough");
        n.multicast.hello(2, 400, t0);
        assert_eq!(n.rxcost(&p), 96);
        n.txcost = 96;
        assert_eq!(n.compute_cost(&p, t0), 96);
        n.multicast.tick(t0 + Duration::from_secs(10));
        assert_eq!(n.rxcost(&p), 96, "two of the last three");
        n.multicast.tick(t0 + Duration::from_secs(20));
        assert_eq!(n.rxcost(&p), INFINITY);
    }

    #[test]
    fn etx_grows_with_loss() {
        let mut p = wired();
        p.cost_model = CostModel::Etx;
        p.rxcost = 256;
        let t0 = Instant::now();
        let mut n = Neighbour::new(LinkId(0), Ipv6Addr::LOCALHOST);
        for s in 0..16u16 {
            if s % 2 == 0 {
                n.multicast.hello(s, 400, t0);
            }
        }
        assert_eq!(n.rxcost(&p), 512, "half the hellos: ETX 2");
        n.txcost = 256;
        assert_eq!(n.compute_cost(&p, t0), 512);
    }

    #[test]
    fn rtt_penalty_is_linear_between_bounds() {
        let mut p = wired();
        p.timestamps = true;
        p.max_rtt_penalty = 150;
        let t0 = Instant::now();
        let mut n = Neighbour::new(LinkId(0), Ipv6Addr::LOCALHOST);
        n.rtt_sample(Duration::from_millis(5), t0);
        assert_eq!(n.rtt_penalty(&p, t0), 0);
        n.rtt = Some(Duration::from_millis(65));
        assert_eq!(n.rtt_penalty(&p, t0), 75);
        n.rtt = Some(Duration::from_millis(500));
        assert_eq!(n.rtt_penalty(&p, t0), 150);
        assert_eq!(
            n.rtt_penalty(&p, t0 + Duration::from_secs(200)),
            0,
            "stale RTT"
        );
    }
}
