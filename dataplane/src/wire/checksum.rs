//! The Internet checksum (RFC 1071), its incremental update (RFC 1624), and the IPv4/IPv6
//! pseudo-headers of TCP, UDP and ICMPv6.

use std::net::IpAddr;

/// One's-complement sum of `data` as big-endian 16-bit words, continuing from `sum`
/// (not folded to 16 bits, not inverted). An odd last byte is padded with zero.
///
/// Eight bytes at a time: the one's-complement sum of 64-bit words, carries added back in,
/// folds to the same 16-bit sum as the 16-bit words would (2^16 ≡ 1 mod 0xffff), at a
/// quarter of the additions. It runs over every datagram the AF_XDP backend frames.
#[inline]
pub fn sum(sum: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc = fold64(acc) + u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc = fold64(acc) + (u64::from(*last) << 8);
    }
    // Fits a u32 after folding: a partial sum the callers may continue.
    fold64(fold64(acc)) as u32
}

/// Fold a 64-bit one's-complement sum to at most 17 bits, keeping its value mod 0xffff.
#[inline]
fn fold64(x: u64) -> u64 {
    let x = (x & 0xffff_ffff) + (x >> 32); // at most 33 bits
    let x = (x & 0xffff_ffff) + (x >> 32); // at most 32 bits
    (x & 0xffff) + (x >> 16) // at most 17 bits
}

/// Fold a sum to 16 bits and invert it: the value to store in a checksum field.
#[inline]
pub fn finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `data`.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// Sum of the pseudo-header for an upper-layer packet of `len` bytes and protocol `proto`.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut s = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => sum(sum(0, &a.octets()), &b.octets()),
        (a, b) => {
            let a = match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let b = match b {
                IpAddr::V6(b) => b.octets(),
                IpAddr::V4(b) => b.to_ipv6_mapped().octets(),
            };
            sum(sum(0, &a), &b)
        }
    };
    s = s.wrapping_add(u32::from(proto));
    s = s
        .wrapping_add((len as u32) >> 16)
        .wrapping_add((len as u32) & 0xffff);
    s
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word changed from `old` to `new`.
#[inline]
pub fn update(check: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!check) + u32::from(!old) + u32::from(new);
    finish(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &d)), !0xddf2);
    }

    proptest::proptest! {
        #[test]
        fn incremental_update_equals_recompute(mut data in proptest::collection::vec(0u8.., 2..200), idx in 0usize..100, new in 0u16..) {
            let i = (idx % (data.len() / 2)) * 2;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let full = checksum(&data);
            let inc = update(before, old, new);
            // 0x0000 and 0xffff are the same value in one's complement.
            proptest::prop_assert!(inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff));
        }
    }

    /// The 16-bit-word sum of RFC 1071, as written in it: the oracle of [`sum`].
    fn naive(data: &[u8]) -> u16 {
        let mut s = 0u64;
        for w in data.chunks(2) {
            s += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    proptest::proptest! {
        #[test]
        fn wide_sum_equals_the_rfc_1071_sum(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000), start in 0u32..0x2_0000) {
            proptest::prop_assert_eq!(checksum(&data), naive(&data));
            // Continuing from a partial sum (a pseudo-header's) is the same as one pass.
            let mut both = start.to_be_bytes().to_vec();
            both.extend_from_slice(&data);
            let lead = u32::from(u16::from_be_bytes([both[0], both[1]])) + u32::from(u16::from_be_bytes([both[2], both[3]]));
            proptest::prop_assert_eq!(finish(sum(lead, &data)), naive(&both));
        }
    }

    #[test]
    fn all_ones_does_not_overflow() {
        let data = vec![0xffu8; 65_536];
        assert_eq!(checksum(&data), naive(&data));
        assert_eq!(finish(sum(u32::MAX, &data)), {
            let mut s = u64::from(u32::MAX);
            for w in data.chunks(2) {
                s += u64::from(u16::from_be_bytes([w[0], w[1]]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            !(s as u16)
        });
    }
}
