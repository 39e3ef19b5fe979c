//! The Internet checksum (RFC 1071), its incremental update (RFC 1624), and the IPv4/IPv6
//! pseudo-headers of TCP, UDP and ICMPv6.

use std::net::IpAddr;

/// One's-complement sum of `data` as big-endian 16-bit words, continuing from `sum`
/// (not folded, not inverted). An odd last byte is padded with zero.
#[inline]
pub fn sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early enough that 64 KiB never overflows.
        if sum > 0xfff0_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
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
}
