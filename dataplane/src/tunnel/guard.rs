//! Admission of handshake messages, before any Diffie-Hellman is spent on them, in the manner
//! of wireguard-go (`device/receive.go`, `ratelimiter/`):
//!
//! 1. `mac1` must be valid (it proves the sender knows our public key, nothing more);
//!    these messages are the device's load;
//! 2. while the device is *under load* — more handshake messages this second than the
//!    budget, and for a second after that — `mac2` must be valid too, which proves the sender receives at its source
//!    address; otherwise it gets a cookie reply and the message is dropped;
//! 3. while under load, each source address (an IPv4 address, an IPv6 /64) may then
//!    have [`PER_SOURCE_RATE`] handshakes a second, with bursts of [`PER_SOURCE_BURST`], so that one
//!    address that answers cookies cannot make us compute thousands of handshakes a second.
//!
//! A cookie reply we send proves nothing about the message it answers: the message is
//! dropped, counted as `handshake_rate_limited`, and changes no state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::TunnResult;
use boringtun::x25519::PublicKey;

use crate::wire::wg::COOKIE_REPLY_LEN;

/// Handshake messages a second (all sources together) before cookies are required.
pub const HANDSHAKE_BUDGET: u64 = 100;

/// Handshakes a second that one source may have while the device is under load.
pub const PER_SOURCE_RATE: u64 = 20;

/// Burst allowance of one source, in handshakes.
pub const PER_SOURCE_BURST: u64 = 5;

/// Sources tracked at most (only sources that proved their address with `mac2` get in).
pub const MAX_SOURCES: usize = 1 << 16;

/// What to do with a handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Process it.
    Pass,
    /// Send the cookie reply of this length (written to the caller's buffer), drop the
    /// message.
    Cookie(usize),
    /// Drop it.
    Drop(Refusal),
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `mac1` is wrong: not for us.
    BadMac,
    /// Under load, over its source's rate.
    RateLimited,
    /// Under load, from a new source while [`MAX_SOURCES`] are tracked.
    SourcesFull,
    /// Not a handshake message boringtun can parse.
    Malformed,
}

/// The device-wide admission state.
pub struct HandshakeGuard {
    /// boringtun's limiter that checks mac1 only (its budget is unlimited).
    mac1_only: RateLimiter,
    /// boringtun's limiter that always requires mac2 (its budget is zero) and writes the
    /// cookie replies; it holds the cookie secret.
    mac2_required: RateLimiter,
    /// Handshake messages with a valid mac1 this second: the device's load.
    seen: AtomicU64,
    /// Under load until this many nanoseconds after `epoch`, whatever `seen` says: a flood
    /// does not get the first [`HANDSHAKE_BUDGET`] messages of every second for free (as
    /// wireguard-go's `UnderLoadAfterTime`).
    load_until: AtomicU64,
    epoch: Instant,
    sources: Mutex<Sources>,
}

/// How long the device stays under load after its budget was spent.
const UNDER_LOAD_FOR: Duration = Duration::from_secs(1);

impl HandshakeGuard {
    /// A guard for the device whose public key is `public`.
    pub fn new(public: &PublicKey) -> Self {
        Self {
            mac1_only: RateLimiter::new(public, u64::MAX),
            mac2_required: RateLimiter::new(public, 0),
            seen: AtomicU64::new(0),
            load_until: AtomicU64::new(0),
            epoch: Instant::now(),
            sources: Mutex::new(Sources::default()),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Check a handshake message (initiation or response) from `src`; `backlog` says that
    /// the device is under load for another reason (its handshake queue is filling). A cookie
    /// reply, if one is due, is written to `reply`.
    pub fn admit(
        &self,
        src: SocketAddr,
        msg: &[u8],
        backlog: bool,
        reply: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Admit {
        self.admit_at(Instant::now(), src, msg, backlog, reply)
    }

    fn admit_at(
        &self,
        now: Instant,
        src: SocketAddr,
        msg: &[u8],
        backlog: bool,
        reply: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Admit {
        let over_budget = backlog || self.seen.load(Relaxed) >= HANDSHAKE_BUDGET;
        if over_budget {
            self.load_until
                .fetch_max(self.nanos(now + UNDER_LOAD_FOR), Relaxed);
        }
        let under_load = over_budget || self.nanos(now) < self.load_until.load(Relaxed);
        let limiter = if under_load {
            &self.mac2_required
        } else {
            &self.mac1_only
        };
        match limiter.verify_packet(Some(src.ip()), msg, reply) {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(c)) => {
                self.seen.fetch_add(1, Relaxed);
                return Admit::Cookie(c.len());
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                return Admit::Drop(Refusal::BadMac)
            }
            Err(_) => return Admit::Drop(Refusal::Malformed),
        }
        self.seen.fetch_add(1, Relaxed);
        if under_load {
            match self.lock().allow(src.ip(), now) {
                Allow::Yes => {}
                Allow::OverRate => return Admit::Drop(Refusal::RateLimited),
                Allow::Full => return Admit::Drop(Refusal::SourcesFull),
            }
        }
        Admit::Pass
    }

    /// Whether this second's budget is spent, or was less than a second ago.
    pub fn under_load(&self) -> bool {
        self.seen.load(Relaxed) >= HANDSHAKE_BUDGET
            || self.nanos(Instant::now()) < self.load_until.load(Relaxed)
    }

    /// Start a new second: reset the load, forget idle sources. Call once a second.
    pub fn tick(&self) {
        self.seen.store(0, Relaxed);
        self.lock().expire(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A source for rate limiting: an IPv4 address, or an IPv6 /64 (one host's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.into()),
                None => Self::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// Token buckets per source, in nanoseconds of credit (wireguard-go's scheme).
#[derive(Default)]
struct Sources {
    buckets: HashMap<SourceKey, Bucket>,
}

struct Bucket {
    tokens: u64,
    last: Instant,
}

/// Credit one handshake costs.
const COST: u64 = 1_000_000_000 / PER_SOURCE_RATE;
/// Most credit a source can save up.
const MAX_TOKENS: u64 = COST * PER_SOURCE_BURST;
/// A source idle this long is forgotten.
const IDLE: Duration = Duration::from_secs(1);

/// What [`Sources::allow`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allow {
    Yes,
    /// The source spent its credit.
    OverRate,
    /// A new source, and [`MAX_SOURCES`] are tracked.
    Full,
}

impl Sources {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> Allow {
        let key = SourceKey::from(ip);
        if let Some(b) = self.buckets.get_mut(&key) {
            let earned =
                u64::try_from(now.saturating_duration_since(b.last).as_nanos()).unwrap_or(u64::MAX);
            b.tokens = b.tokens.saturating_add(earned).min(MAX_TOKENS);
            b.last = now;
            if b.tokens >= COST {
                b.tokens -= COST;
                return Allow::Yes;
            }
            return Allow::OverRate;
        }
        if self.buckets.len() >= MAX_SOURCES {
            return Allow::Full;
        }
        self.buckets.insert(
            key,
            Bucket {
                tokens: MAX_TOKENS - COST,
                last: now,
            },
        );
        Allow::Yes
    }

    fn expire(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::wg;
    use boringtun::x25519::StaticSecret;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut s = Sources::default();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = Instant::now();
        let burst = (0..100).filter(|_| s.allow(ip, t0) == Allow::Yes).count() as u64;
        assert_eq!(burst, PER_SOURCE_BURST);
        // One second later: one second's worth, no more.
        let t1 = t0 + Duration::from_secs(1);
        let more = (0..100).filter(|_| s.allow(ip, t1) == Allow::Yes).count() as u64;
        assert_eq!(more, PER_SOURCE_BURST.min(PER_SOURCE_RATE));
        // Other sources are not affected; an IPv6 /64 is one source.
        assert_eq!(s.allow("198.51.100.2".parse().unwrap(), t1), Allow::Yes);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let n = (0..50)
            .filter(|i| s.allow(if i % 2 == 0 { a } else { b }, t1) == Allow::Yes)
            .count() as u64;
        assert_eq!(n, PER_SOURCE_BURST);
        s.expire(t1 + IDLE);
        assert!(s.buckets.is_empty());
    }

    #[test]
    fn a_full_sources_table_refuses_new_sources_and_keeps_the_old_ones() {
        let mut s = Sources::default();
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..MAX_SOURCES as u32 {
            assert_eq!(s.allow(ip(i), t0), Allow::Yes);
        }
        assert_eq!(s.allow(ip(MAX_SOURCES as u32), t0), Allow::Full);
        assert_eq!(s.buckets.len(), MAX_SOURCES);
        assert_eq!(
            s.allow(ip(7), t0),
            Allow::Yes,
            "a tracked source still gets its burst"
        );
        s.expire(t0 + IDLE);
        assert_eq!(s.allow(ip(MAX_SOURCES as u32), t0 + IDLE), Allow::Yes);
    }

    #[test]
    fn under_load_mac2_is_required_then_the_source_is_limited() {
        let secret = StaticSecret::random_from_rng(rand_core::OsRng);
        let public = PublicKey::from(&secret);
        let guard = HandshakeGuard::new(&public);
        let keys = super::super::macs::MacKeys::new(public.as_bytes());
        let mut msg = vec![0u8; wg::INITIATION_LEN];
        msg[0] = wg::INITIATION;
        msg[4..8].copy_from_slice(&7u32.to_le_bytes());
        let mut st = super::super::macs::CookieState::default();
        st.seal(&keys, 7, &mut msg);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        // A bad mac1 is refused before anything else.
        let mut bad = msg.clone();
        bad[20] ^= 1;
        assert_eq!(
            guard.admit(src, &bad, false, &mut reply),
            Admit::Drop(Refusal::BadMac)
        );
        for _ in 0..HANDSHAKE_BUDGET {
            assert_eq!(guard.admit(src, &msg, false, &mut reply), Admit::Pass);
        }
        assert!(guard.under_load());
        // Still refused for a bad mac1, with no cookie.
        assert_eq!(
            guard.admit(src, &bad, false, &mut reply),
            Admit::Drop(Refusal::BadMac)
        );
        let Admit::Cookie(n) = guard.admit(src, &msg, false, &mut reply) else {
            panic!("under load without mac2: a cookie");
        };
        assert!(st.consume(&keys, 7, &reply[..n]));
        st.seal(&keys, 7, &mut msg);
        let passed = (0..50)
            .filter(|_| guard.admit(src, &msg, false, &mut reply) == Admit::Pass)
            .count() as u64;
        assert_eq!(
            passed, PER_SOURCE_BURST,
            "mac2 valid, then the source's burst only"
        );
        // A new second: still under load for a second after the budget was spent, and the
        // source has had its share.
        guard.tick();
        assert!(guard.under_load());
        assert_eq!(
            guard.admit(src, &msg, false, &mut reply),
            Admit::Drop(Refusal::RateLimited)
        );
        // Then a quiet second: no longer under load.
        let later = Instant::now() + UNDER_LOAD_FOR * 2;
        assert_eq!(
            guard.admit_at(later, src, &msg, false, &mut reply),
            Admit::Pass
        );
    }
}
