//! The MACs of handshake messages and the initiator's side of cookies (whitepaper 5.4.4,
//! 5.4.7).
//!
//! isthmus rewrites the sender index of every handshake message boringtun produces (see
//! [`super::index`]), so it computes their `mac1` and `mac2` itself: `mac1` with the peer's
//! key, `mac2` with the last cookie the peer sent us, if it is fresh. For the same reason
//! cookie replies are consumed here, not by boringtun: their AEAD's associated data is the
//! `mac1` we sent, which only this module knows.

use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput as _, Update as _};
use blake2::{Blake2s256, Blake2sMac, Digest as _};
use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::wire::wg::COOKIE_REPLY_LEN;

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";

/// A cookie is usable for this long after it arrived (`REKEY_TIMEOUT` × … in the whitepaper:
/// 120 s, less a margin for the responder's clock).
const COOKIE_LIFETIME: Duration = Duration::from_secs(120 - 5);

type Mac16 = Blake2sMac<blake2::digest::consts::U16>;

/// `MAC(key, data)`: keyed BLAKE2s, 16 bytes.
fn mac(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = <Mac16 as blake2::digest::KeyInit>::new_from_slice(key).expect("key ≤ 32 bytes");
    m.update(data);
    m.finalize_fixed().into()
}

/// `HASH(label || key)`.
fn hash(label: &[u8], key: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    blake2::Digest::update(&mut h, label);
    blake2::Digest::update(&mut h, key);
    h.finalize().into()
}

/// The keys a static public key implies for messages sent to its owner.
#[derive(Clone)]
pub struct MacKeys {
    /// `HASH(LABEL_MAC1 || public)`.
    mac1: [u8; 32],
    /// `HASH(LABEL_COOKIE || public)`: encrypts the cookies its owner sends.
    cookie: [u8; 32],
}

impl MacKeys {
    /// Keys for messages to the owner of `public`.
    pub fn new(public: &[u8; 32]) -> Self {
        Self {
            mac1: hash(LABEL_MAC1, public),
            cookie: hash(LABEL_COOKIE, public),
        }
    }

    /// Recompute `mac1` of a handshake message (the last 32 bytes are `mac1 || mac2`) after
    /// its body changed, and return it. `mac2` is left as it is.
    pub fn set_mac1(&self, msg: &mut [u8]) -> [u8; 16] {
        let off = msg.len() - 32;
        let m = mac(&self.mac1, &msg[..off]);
        msg[off..off + 16].copy_from_slice(&m);
        m
    }
}

/// The initiator's cookie state toward one peer: what we last sent and the cookie we hold.
#[derive(Default)]
pub struct CookieState {
    /// Wire index and `mac1` of the last handshake message we sent: a cookie reply must
    /// name the one and is authenticated with the other.
    sent: Option<(u32, [u8; 16])>,
    /// The peer's last cookie and when it arrived.
    cookie: Option<([u8; 16], Instant)>,
}

impl CookieState {
    /// Finish a handshake message for the wire: `mac1` with the peer's keys, `mac2` with a
    /// fresh cookie or zeros. `wire_index` is its (rewritten) sender index.
    pub fn seal(&mut self, keys: &MacKeys, wire_index: u32, msg: &mut [u8]) {
        let m1 = keys.set_mac1(msg);
        let off = msg.len() - 16;
        let m2 = match self.cookie {
            Some((c, at)) if at.elapsed() < COOKIE_LIFETIME => mac(&c, &msg[..off]),
            _ => [0; 16],
        };
        msg[off..].copy_from_slice(&m2);
        self.sent = Some((wire_index, m1));
    }

    /// Take a cookie reply (64 bytes) addressed to `wire_index`. Returns whether it
    /// authenticated; only then is the cookie kept.
    pub fn consume(&mut self, keys: &MacKeys, wire_index: u32, reply: &[u8]) -> bool {
        let Some((sent_index, sent_mac1)) = self.sent else {
            return false;
        };
        if sent_index != wire_index || reply.len() != COOKIE_REPLY_LEN {
            return false;
        }
        let nonce = XNonce::from_slice(&reply[8..32]);
        let mut cookie: [u8; 16] = reply[32..48].try_into().expect("16 bytes");
        let tag = chacha20poly1305::Tag::from_slice(&reply[48..COOKIE_REPLY_LEN]);
        let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new((&keys.cookie).into());
        if cipher
            .decrypt_in_place_detached(nonce, &sent_mac1, &mut cookie, tag)
            .is_err()
        {
            return false;
        }
        self.cookie = Some((cookie, Instant::now()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::wg;

    #[test]
    fn mac1_matches_boringtun() {
        // A message boringtun made and MAC'd for a peer: recomputing mac1 over the same body
        // must give the same bytes.
        use boringtun::noise::{Tunn, TunnResult};
        use boringtun::x25519::{PublicKey, StaticSecret};
        let a = StaticSecret::random_from_rng(rand_core::OsRng);
        let b = StaticSecret::random_from_rng(rand_core::OsRng);
        let b_pub = PublicKey::from(&b);
        let mut t = Tunn::new(a, b_pub, None, None, 1, None);
        let mut buf = [0u8; 256];
        let TunnResult::WriteToNetwork(init) = t.format_handshake_initiation(&mut buf, false)
        else {
            panic!("no initiation");
        };
        let mut msg = init.to_vec();
        let want: [u8; 16] = msg[116..132].try_into().unwrap();
        let keys = MacKeys::new(b_pub.as_bytes());
        msg[116..132].fill(0);
        assert_eq!(keys.set_mac1(&mut msg), want);
        assert_eq!(msg[116..132], want);
    }

    #[test]
    fn cookie_replies_from_boringtun_are_consumed_and_used_for_mac2() {
        use boringtun::noise::rate_limiter::RateLimiter;
        use boringtun::noise::TunnResult;
        use boringtun::x25519::{PublicKey, StaticSecret};
        let responder = PublicKey::from(&StaticSecret::random_from_rng(rand_core::OsRng));
        let keys = MacKeys::new(responder.as_bytes());
        // A limiter over its budget at once: every message needs a cookie.
        let limiter = RateLimiter::new(&responder, 0);
        let mut msg = vec![0u8; wg::INITIATION_LEN];
        msg[0] = wg::INITIATION;
        msg[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        let mut st = CookieState::default();
        st.seal(&keys, 0xdead_beef, &mut msg);
        assert_eq!(msg[132..], [0; 16], "no cookie yet: mac2 is zero");
        let src = "192.0.2.7".parse().unwrap();
        let mut out = [0u8; wg::COOKIE_REPLY_LEN];
        let reply = match limiter.verify_packet(Some(src), &msg, &mut out) {
            Err(TunnResult::WriteToNetwork(r)) => r.to_vec(),
            _ => panic!("expected a cookie reply"),
        };
        // Addressed to another index: ignored.
        assert!(!st.consume(&keys, 0x1234, &reply));
        // Tampered: ignored.
        let mut bad = reply.clone();
        bad[40] ^= 1;
        assert!(!st.consume(&keys, 0xdead_beef, &bad));
        assert!(st.consume(&keys, 0xdead_beef, &reply));
        // The next message carries a mac2 that the responder accepts.
        st.seal(&keys, 0xdead_beef, &mut msg);
        assert_ne!(msg[132..], [0; 16]);
        assert!(limiter.verify_packet(Some(src), &msg, &mut out).is_ok());
        // From another address the cookie is worthless.
        let other = "192.0.2.8".parse().unwrap();
        assert!(limiter.verify_packet(Some(other), &msg, &mut out).is_err());
    }
}
