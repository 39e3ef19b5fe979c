//! MAC authentication of Babel packets (RFC 8967), sans-I/O.
//!
//! A sender on a link with keys ends each packet's body with a PC TLV (a packet counter
//! and an index chosen afresh when the counter starts over) and appends one MAC TLV per key
//! in the trailer; the MAC covers a pseudo-header (source address and port, destination
//! address and port), the packet header and the body. A receiver accepts a packet when one
//! MAC matches one of the link's keys (several keys at once make a rollover), and then only
//! when its PC is newer than the last one seen from that neighbour under the same index
//! (multicast and unicast counted apart, as babeld does, since the two may be reordered).
//! A neighbour seen for the first time, or with a new index (it restarted), is sent a
//! Challenge Request with a fresh nonce; its packets count from the one carrying the
//! matching Challenge Reply. Everything refused is counted by reason ([`AuthCounters`]).
//!
//! Byte-compatible with babeld (`hmac.c`) and BIRD (`babel/packets.c`): the ports in the
//! pseudo-header are both 6696, the source is the sender's link-local address, the
//! destination ff02::1:6 or the neighbour's link-local address.

use std::fmt;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::Mac as _;
use blake2::{Blake2s256, Blake2sMac, Digest as _};
use hmac::Hmac;
use sha2::Sha256;

use super::packet::{tlv, Msg, HEADER_LEN, MULTICAST, PORT};

/// How long a Challenge Request waits for its reply (babeld: 30 s).
pub const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one Challenge Request, and one Challenge Reply, to a neighbour this often.
pub const CHALLENGE_INTERVAL: Duration = Duration::from_millis(300);
/// Bytes of the index we send (babeld's length).
pub const INDEX_LEN: usize = 8;
/// Bytes of the nonces we send.
pub const NONCE_LEN: usize = 16;
/// Size of our PC TLV.
const PC_TLV_LEN: usize = 2 + 4 + INDEX_LEN;

/// A MAC algorithm of RFC 8967 §4.1 (the two it names as mandatory / recommended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256: 32-byte MACs; keys of 1 to 64 bytes (babeld takes exactly 64).
    HmacSha256,
    /// Keyed BLAKE2s with 16-byte output; keys of 1 to 32 bytes.
    Blake2s128,
}

impl Algorithm {
    /// Both, as the configuration names them.
    pub const ALL: [Algorithm; 2] = [Algorithm::HmacSha256, Algorithm::Blake2s128];

    /// The name in configuration files (babeld's).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::Blake2s128 => "blake2s128",
        }
    }

    /// Length of its MACs.
    pub fn mac_len(self) -> usize {
        match self {
            Algorithm::HmacSha256 => 32,
            Algorithm::Blake2s128 => 16,
        }
    }

    /// Longest key it takes.
    pub fn max_key_len(self) -> usize {
        match self {
            Algorithm::HmacSha256 => 64,
            Algorithm::Blake2s128 => 32,
        }
    }
}

/// A MAC key. `Debug` shows its id and algorithm, never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey {
    id: String,
    algorithm: Algorithm,
    value: Vec<u8>,
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl MacKey {
    /// A key, if `value` has a length the algorithm takes.
    pub fn new(id: &str, algorithm: Algorithm, value: Vec<u8>) -> Result<Self, String> {
        let max = algorithm.max_key_len();
        if value.is_empty() || value.len() > max {
            return Err(format!(
                "a {} key has 1 to {max} bytes, this one {}",
                algorithm.as_str(),
                value.len()
            ));
        }
        Ok(Self {
            id: id.to_string(),
            algorithm,
            value,
        })
    }

    /// Its name in the configuration.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The MAC of `packet` (header and body, no trailer) sent from `src` to `dst`.
    fn compute(&self, src: Ipv6Addr, dst: Ipv6Addr, packet: &[u8]) -> ([u8; 32], usize) {
        let port = PORT.to_be_bytes();
        let parts: [&[u8]; 5] = [&src.octets(), &port, &dst.octets(), &port, packet];
        let mut out = [0u8; 32];
        match self.algorithm {
            Algorithm::HmacSha256 => {
                let mut m = <Hmac<Sha256>>::new_from_slice(&self.value).expect("any key length");
                parts.iter().for_each(|p| m.update(p));
                out.copy_from_slice(&m.finalize().into_bytes());
            }
            Algorithm::Blake2s128 => {
                let mut m = <Blake2sMac<U16>>::new_from_slice(&self.value)
                    .expect("key length checked in new");
                parts.iter().for_each(|p| m.update(p));
                out[..16].copy_from_slice(&m.finalize().into_bytes());
            }
        }
        (out, self.algorithm.mac_len())
    }

    /// Whether `mac` is the MAC of `packet` from `src` to `dst` (in constant time).
    fn verify(&self, src: Ipv6Addr, dst: Ipv6Addr, packet: &[u8], mac: &[u8]) -> bool {
        let (want, len) = self.compute(src, dst, packet);
        mac.len() == len && constant_time_eq(&want[..len], mac)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bytes a packet on a link with `keys` needs beyond its messages: our PC TLV and the MACs.
pub fn overhead(keys: &[MacKey]) -> usize {
    if keys.is_empty() {
        return 0;
    }
    PC_TLV_LEN
        + keys
            .iter()
            .map(|k| 2 + k.algorithm.mac_len())
            .sum::<usize>()
}

/// Ends `packet` (a finished packet: header and body, no trailer) with a PC TLV and one
/// MAC TLV per key, for sending from `src` to `dst`.
pub fn seal(
    packet: &mut Vec<u8>,
    counter: u32,
    index: &[u8; INDEX_LEN],
    keys: &[MacKey],
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    packet.extend_from_slice(&[tlv::PC, (4 + INDEX_LEN) as u8]);
    packet.extend_from_slice(&counter.to_be_bytes());
    packet.extend_from_slice(index);
    let body = u16::try_from(packet.len() - HEADER_LEN).unwrap_or(u16::MAX);
    packet[2..4].copy_from_slice(&body.to_be_bytes());
    let end = packet.len();
    for k in keys {
        let (mac, len) = k.compute(src, dst, &packet[..end]);
        packet.extend_from_slice(&[tlv::MAC, len as u8]);
        packet.extend_from_slice(&mac[..len]);
    }
}

/// Why a packet on a link with keys was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No MAC TLV in its trailer.
    NoMac,
    /// MAC TLVs, none of them right for any key of the link.
    BadMac,
    /// Authentic, but without a PC TLV.
    NoPc,
    /// Authentic, from a neighbour whose index we do not know (new, or restarted): held
    /// until it answers our Challenge Request.
    UnknownIndex,
    /// Authentic, with a packet counter not newer than the last one: a replay (or
    /// reordering).
    Replay,
}

impl Refused {
    /// Every reason, for metrics.
    pub const ALL: [Refused; 5] = [
        Refused::NoMac,
        Refused::BadMac,
        Refused::NoPc,
        Refused::UnknownIndex,
        Refused::Replay,
    ];

    /// Its metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::NoMac => "no_mac",
            Refused::BadMac => "bad_mac",
            Refused::NoPc => "no_pc",
            Refused::UnknownIndex => "unknown_index",
            Refused::Replay => "replay",
        }
    }
}

/// What authentication did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuthCounters {
    /// Packets refused, by [`Refused`] (in the order of [`Refused::ALL`]).
    pub refused: [u64; 5],
    /// Challenge Requests sent.
    pub challenges_tx: u64,
    /// Challenge Replies sent.
    pub replies_tx: u64,
    /// Challenges answered right (the neighbour's index and counter were learned).
    pub challenges_ok: u64,
    /// Challenge Replies that matched no pending challenge (late, or not ours).
    pub challenges_bad: u64,
}

impl AuthCounters {
    /// Packets refused for `why`.
    pub fn refused(&self, why: Refused) -> u64 {
        self.refused[why as usize]
    }

    /// Counts a packet refused for `why`.
    pub(crate) fn count(&mut self, why: Refused) {
        self.refused[why as usize] += 1;
    }
}

/// Checks the MACs of `packet` (header, body, trailer) from `src`: accepted when one of its
/// MAC TLVs is right for one of `keys` and one of the destinations the packet may have had
/// (ff02::1:6 or our own address `ours`). Returns whether it was sent to the group.
///
/// The destination is tried rather than read from the socket: a packet whose MAC holds for
/// the other destination than the one it came to is an authentic packet redirected, which
/// the packet counter then refuses as a replay of its own kind (multicast or unicast).
pub fn verify(
    packet: &[u8],
    keys: &[MacKey],
    src: Ipv6Addr,
    ours: Ipv6Addr,
) -> Result<bool, Refused> {
    let [_, _, hi, lo, ..] = *packet else {
        return Err(Refused::NoMac);
    };
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    let signed = packet.get(..HEADER_LEN + body).ok_or(Refused::NoMac)?;
    let mut trailer = &packet[signed.len()..];
    let mut any = false;
    while let [t, rest @ ..] = trailer {
        if *t == tlv::PAD1 {
            trailer = rest;
            continue;
        }
        let Some((&len, rest)) = rest.split_first() else {
            break;
        };
        let Some(value) = rest.get(..usize::from(len)) else {
            break;
        };
        trailer = &rest[usize::from(len)..];
        if *t != tlv::MAC {
            continue;
        }
        any = true;
        for k in keys {
            for (dst, multicast) in [(MULTICAST, true), (ours, false)] {
                if k.verify(src, dst, signed, value) {
                    return Ok(multicast);
                }
            }
        }
    }
    Err(if any { Refused::BadMac } else { Refused::NoMac })
}

/// Our sending state on a link: the packet counter and its index.
#[derive(Debug, Clone)]
pub struct Sender {
    counter: u32,
    index: [u8; INDEX_LEN],
}

impl Sender {
    /// A fresh index from `rng`, the counter at 0.
    pub fn new(rng: &mut Random) -> Self {
        Self {
            counter: 0,
            index: rng.index(),
        }
    }

    /// The counter and index for the next packet; a new index when the counter wraps.
    pub fn next(&mut self, rng: &mut Random) -> (u32, [u8; INDEX_LEN]) {
        let c = self.counter;
        let i = self.index;
        self.counter = self.counter.wrapping_add(1);
        if self.counter == 0 {
            self.index = rng.index();
        }
        (c, i)
    }
}

/// What we know of a neighbour's packets (by link and address), created once one of its
/// packets had a right MAC.
#[derive(Debug, Clone)]
pub struct Peer {
    index: Option<Vec<u8>>,
    last_multicast: u32,
    last_unicast: u32,
    /// The nonce of our pending Challenge Request and its deadline.
    challenge: Option<([u8; NONCE_LEN], Instant)>,
    next_request: Option<Instant>,
    next_reply: Option<Instant>,
    /// Last packet with a right MAC (for ageing out).
    pub seen: Instant,
}

/// What [`Peer::check`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Process the packet.
    pub accept: Option<Refused>,
    /// Send this Challenge Request (unicast to the neighbour).
    pub request: Option<[u8; NONCE_LEN]>,
    /// Send this Challenge Reply (unicast to the neighbour).
    pub reply: Option<Vec<u8>>,
    /// The neighbour answered our challenge: its index and counter are known from now on.
    pub learned: bool,
}

impl Peer {
    /// A neighbour heard for the first time.
    pub fn new(now: Instant) -> Self {
        Self {
            index: None,
            last_multicast: 0,
            last_unicast: 0,
            challenge: None,
            next_request: None,
            next_reply: None,
            seen: now,
        }
    }

    /// RFC 8967 §4.3 for a packet whose MAC was right: its PC against the neighbour's
    /// last one, a Challenge Reply against our pending challenge, a Challenge Request to
    /// answer (only in a unicast packet, and not in one refused as a replay). `accept` is
    /// `None` when the packet is to be processed, else why it is refused.
    pub fn check(
        &mut self,
        msgs: &[Msg],
        multicast: bool,
        now: Instant,
        counters: &mut AuthCounters,
        rng: &mut Random,
    ) -> Checked {
        self.seen = now;
        let mut pc = None;
        let mut nonce = None;
        let mut answered = false;
        for m in msgs {
            match m {
                // Only the first PC TLV counts.
                Msg::Pc { counter, index } if pc.is_none() => pc = Some((*counter, index)),
                Msg::ChallengeRequest { nonce: n } if !multicast => nonce = Some(n),
                Msg::ChallengeReply { nonce: n } => match self.challenge {
                    Some((ours, deadline)) if now <= deadline && n[..] == ours[..] => {
                        self.challenge = None;
                        answered = true;
                        counters.challenges_ok += 1;
                    }
                    _ => counters.challenges_bad += 1,
                },
                _ => {}
            }
        }
        let mut out = Checked::default();
        let verdict = match pc {
            None => Some(Refused::NoPc),
            Some((counter, index)) if answered => {
                out.learned = true;
                self.index = Some(index.clone());
                self.last_multicast = counter;
                self.last_unicast = counter;
                None
            }
            Some((_, index)) if self.index.as_deref() != Some(&index[..]) => {
                if self.next_request.is_none_or(|t| now >= t) {
                    let n = rng.nonce();
                    self.challenge = Some((n, now + CHALLENGE_TIMEOUT));
                    self.next_request = Some(now + CHALLENGE_INTERVAL);
                    counters.challenges_tx += 1;
                    out.request = Some(n);
                }
                Some(Refused::UnknownIndex)
            }
            Some((counter, _)) => {
                let last = if multicast {
                    &mut self.last_multicast
                } else {
                    &mut self.last_unicast
                };
                if counter <= *last {
                    // No reply either: a replayed request must not make us talk.
                    nonce = None;
                    Some(Refused::Replay)
                } else {
                    *last = counter;
                    None
                }
            }
        };
        if let Some(why) = verdict {
            counters.count(why);
        }
        if let Some(n) = nonce {
            if self.next_reply.is_none_or(|t| now >= t) {
                self.next_reply = Some(now + CHALLENGE_INTERVAL);
                counters.replies_tx += 1;
                out.reply = Some(n.clone());
            }
        }
        out.accept = verdict;
        out
    }
}

/// Unpredictable bytes for indices and nonces: BLAKE2s of a secret seed and a counter.
pub struct Random {
    seed: [u8; 32],
    n: u64,
}

impl fmt::Debug for Random {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Random(..)")
    }
}

impl Random {
    /// A generator from a secret seed (the daemon's comes from the OS; the simulator's
    /// from the router-id, for repeatable runs).
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed, n: 0 }
    }

    fn block(&mut self) -> [u8; 32] {
        self.n += 1;
        let mut h = Blake2s256::new();
        h.update(self.seed);
        h.update(self.n.to_le_bytes());
        h.finalize().into()
    }

    fn index(&mut self) -> [u8; INDEX_LEN] {
        let b = self.block();
        b[..INDEX_LEN].try_into().expect("32 > 8")
    }

    fn nonce(&mut self) -> [u8; NONCE_LEN] {
        let b = self.block();
        b[..NONCE_LEN].try_into().expect("32 > 16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_with_the_pseudo_header_as_data() {
        // HMAC-SHA256 is standard HMAC: RFC 4231 test case 2 ("Jefe"), fed as babeld
        // feeds it, the data split across pseudo-header and packet.
        let key = MacKey::new("k", Algorithm::HmacSha256, b"Jefe".to_vec()).unwrap();
        let data = b"what do ya want for nothing?";
        let mut m = <Hmac<Sha256>>::new_from_slice(b"Jefe").unwrap();
        m.update(data);
        let want = m.finalize().into_bytes();
        assert_eq!(
            hex(&want),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Our split computation equals one over the concatenation.
        let src = ll(1);
        let dst = MULTICAST;
        let pkt = [42u8, 2, 0, 0];
        let mut cat = Vec::new();
        cat.extend_from_slice(&src.octets());
        cat.extend_from_slice(&PORT.to_be_bytes());
        cat.extend_from_slice(&dst.octets());
        cat.extend_from_slice(&PORT.to_be_bytes());
        cat.extend_from_slice(&pkt);
        let mut m = <Hmac<Sha256>>::new_from_slice(b"Jefe").unwrap();
        m.update(&cat);
        let (got, len) = key.compute(src, dst, &pkt);
        assert_eq!(len, 32);
        assert_eq!(got[..], m.finalize().into_bytes()[..]);
    }

    #[test]
    fn blake2s128_is_keyed_blake2s_with_16_byte_output() {
        // BLAKE2s reference keyed vector (blake2s-kat.txt, empty input, key 00..1f),
        // truncated to 16 bytes is *not* the 16-byte-output hash: the output length is a
        // parameter. Check the parameter took: a 32-byte-output MAC differs.
        let key: Vec<u8> = (0u8..32).collect();
        let k = MacKey::new("k", Algorithm::Blake2s128, key.clone()).unwrap();
        let (m16, len) = k.compute(ll(1), ll(2), &[42, 2, 0, 0]);
        assert_eq!(len, 16);
        let mut m32 = <Blake2sMac<blake2::digest::consts::U32>>::new_from_slice(&key).unwrap();
        for p in [
            &ll(1).octets()[..],
            &PORT.to_be_bytes(),
            &ll(2).octets(),
            &PORT.to_be_bytes(),
            &[42, 2, 0, 0],
        ] {
            m32.update(p);
        }
        assert_ne!(m16[..16], m32.finalize().into_bytes()[..16]);
        // The 32-byte-output keyed vector of the reference, to pin the construction.
        let mut kat = <Blake2sMac<blake2::digest::consts::U32>>::new_from_slice(&key).unwrap();
        kat.update(&[]);
        assert_eq!(
            hex(&kat.finalize().into_bytes()),
            "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn key_lengths_are_checked() {
        assert!(MacKey::new("a", Algorithm::HmacSha256, vec![1; 64]).is_ok());
        assert!(MacKey::new("a", Algorithm::HmacSha256, vec![1; 65]).is_err());
        assert!(MacKey::new("a", Algorithm::Blake2s128, vec![1; 33]).is_err());
        assert!(MacKey::new("a", Algorithm::Blake2s128, vec![]).is_err());
        let k = MacKey::new("a", Algorithm::Blake2s128, vec![0xAB; 32]).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "));
    }

    fn packet() -> Vec<u8> {
        // Header and a PadN of 2.
        vec![42, 2, 0, 4, 1, 2, 0, 0]
    }

    #[test]
    fn sealed_packets_verify_under_any_of_the_keys_and_only_for_their_destination() {
        let a = MacKey::new("a", Algorithm::HmacSha256, vec![7; 64]).unwrap();
        let b = MacKey::new("b", Algorithm::Blake2s128, vec![9; 32]).unwrap();
        let c = MacKey::new("c", Algorithm::Blake2s128, vec![8; 32]).unwrap();
        let mut p = packet();
        seal(
            &mut p,
            5,
            &[1; 8],
            &[a.clone(), b.clone()],
            ll(1),
            MULTICAST,
        );
        assert_eq!(
            p.len(),
            8 + PC_TLV_LEN + overhead(&[a.clone(), b.clone()]) - PC_TLV_LEN
        );
        assert_eq!(verify(&p, std::slice::from_ref(&a), ll(1), ll(2)), Ok(true));
        assert_eq!(verify(&p, &[c.clone(), b.clone()], ll(1), ll(2)), Ok(true));
        assert_eq!(
            verify(&p, std::slice::from_ref(&c), ll(1), ll(2)),
            Err(Refused::BadMac)
        );
        assert_eq!(
            verify(&p, std::slice::from_ref(&a), ll(3), ll(2)),
            Err(Refused::BadMac)
        );
        assert_eq!(
            verify(&packet(), std::slice::from_ref(&a), ll(1), ll(2)),
            Err(Refused::NoMac)
        );
        // Unicast to ll(2): verifies as unicast there, not for another receiver.
        let mut u = packet();
        seal(&mut u, 6, &[1; 8], std::slice::from_ref(&a), ll(1), ll(2));
        assert_eq!(
            verify(&u, std::slice::from_ref(&a), ll(1), ll(2)),
            Ok(false)
        );
        assert_eq!(
            verify(&u, std::slice::from_ref(&a), ll(1), ll(4)),
            Err(Refused::BadMac)
        );
        // Any bit flipped in the signed part or the MAC fails.
        for i in 0..u.len() {
            let mut x = u.clone();
            x[i] ^= 0x10;
            assert!(
                verify(&x, std::slice::from_ref(&a), ll(1), ll(2)).is_err(),
                "byte {i}"
            );
        }
        // The PC TLV went into the body: it parses.
        let (msgs, _) = super::super::packet::parse(&u).unwrap();
        assert_eq!(
            msgs,
            vec![Msg::Pc {
                counter: 6,
                index: vec![1; 8]
            }]
        );
    }

    #[test]
    fn counter_index_and_challenges_follow_rfc8967() {
        let t0 = Instant::now();
        let mut rng = Random::new([3; 32]);
        let mut c = AuthCounters::default();
        let mut p = Peer::new(t0);
        let pc = |counter, index: u8| Msg::Pc {
            counter,
            index: vec![index; 8],
        };
        // First packet: unknown index, challenged.
        let r = p.check(&[pc(10, 1)], true, t0, &mut c, &mut rng);
        assert_eq!(r.accept, Some(Refused::UnknownIndex));
        let nonce = r.request.expect("challenge sent");
        // Rate limit: no second challenge within 300 ms.
        let r = p.check(&[pc(11, 1)], true, t0, &mut c, &mut rng);
        assert_eq!((r.accept, r.request), (Some(Refused::UnknownIndex), None));
        // A wrong reply does not open the door.
        let bad = Msg::ChallengeReply { nonce: vec![0; 16] };
        let r = p.check(&[pc(12, 1), bad], false, t0, &mut c, &mut rng);
        assert_eq!(r.accept, Some(Refused::UnknownIndex));
        // The right one does, and sets both counters.
        let good = Msg::ChallengeReply {
            nonce: nonce.to_vec(),
        };
        let r = p.check(&[pc(13, 1), good.clone()], false, t0, &mut c, &mut rng);
        assert_eq!(r.accept, None);
        assert_eq!(c.challenges_ok, 1);
        // Increasing counters pass, per kind; a repeat is a replay.
        assert_eq!(
            p.check(&[pc(14, 1)], true, t0, &mut c, &mut rng).accept,
            None
        );
        assert_eq!(
            p.check(&[pc(14, 1)], false, t0, &mut c, &mut rng).accept,
            None
        );
        let r = p.check(&[pc(14, 1)], true, t0, &mut c, &mut rng);
        assert_eq!(r.accept, Some(Refused::Replay));
        // A replayed reply does not work twice.
        let r = p.check(&[pc(2, 1), good], false, t0, &mut c, &mut rng);
        assert_eq!(r.accept, Some(Refused::Replay));
        // No PC: refused.
        assert_eq!(
            p.check(&[], true, t0, &mut c, &mut rng).accept,
            Some(Refused::NoPc)
        );
        // A challenge request in a unicast packet is answered, in a multicast one not, and
        // not in a replay.
        let req = Msg::ChallengeRequest { nonce: vec![5; 9] };
        let r = p.check(&[pc(20, 1), req.clone()], false, t0, &mut c, &mut rng);
        assert_eq!(r.reply, Some(vec![5; 9]));
        let later = t0 + CHALLENGE_INTERVAL;
        let r = p.check(&[pc(21, 1), req.clone()], true, later, &mut c, &mut rng);
        assert_eq!(r.reply, None);
        let r = p.check(&[pc(20, 1), req.clone()], false, later, &mut c, &mut rng);
        assert_eq!((r.accept, r.reply), (Some(Refused::Replay), None));
        // A restart (new index, counter from 0) is challenged again; an answer after the
        // deadline does not count.
        let r = p.check(&[pc(0, 2)], true, later, &mut c, &mut rng);
        let n2 = r.request.expect("challenged");
        let late = later + CHALLENGE_TIMEOUT + Duration::from_secs(1);
        let reply = Msg::ChallengeReply { nonce: n2.to_vec() };
        let r = p.check(&[pc(1, 2), reply], false, late, &mut c, &mut rng);
        assert_eq!(r.accept, Some(Refused::UnknownIndex));
        assert_eq!(c.refused(Refused::Replay), 3);
        assert_ne!(n2, nonce, "nonces are fresh");
    }

    #[test]
    fn the_sender_counts_and_changes_index_when_the_counter_wraps() {
        let mut rng = Random::new([1; 32]);
        let mut s = Sender::new(&mut rng);
        let (c0, i0) = s.next(&mut rng);
        let (c1, i1) = s.next(&mut rng);
        assert_eq!((c0, c1, i0), (0, 1, i1));
        s.counter = u32::MAX;
        let (c, i) = s.next(&mut rng);
        assert_eq!((c, i), (u32::MAX, i0));
        let (c, i) = s.next(&mut rng);
        assert_eq!(c, 0);
        assert_ne!(i, i0);
    }
}
