#![no_main]
//! The Babel MAC trailer (RFC 8967): `verify` never panics on any packet, accepts nothing
//! without a right MAC for one of the keys, and accepts every packet that `seal` signed.
use std::net::Ipv6Addr;

use isthmus_controlplane::babel::auth::{seal, verify};
use isthmus_controlplane::babel::{Algorithm, MacKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = [
        MacKey::new("h", Algorithm::HmacSha256, vec![1; 32]).unwrap(),
        MacKey::new("b", Algorithm::Blake2s128, vec![2; 32]).unwrap(),
    ];
    let src: Ipv6Addr = "fe80::2".parse().unwrap();
    let ours: Ipv6Addr = "fe80::1".parse().unwrap();
    // Whatever the bytes, with no key nothing is accepted.
    assert!(verify(data, &[], src, ours).is_err());
    let _ = verify(data, &keys, src, ours);
    // The bytes as a body, sealed: accepted by the key it was sealed with, as multicast.
    if data.len() < 1400 {
        let mut packet = vec![42, 2];
        packet.extend_from_slice(&(data.len() as u16).to_be_bytes());
        packet.extend_from_slice(data);
        let which = usize::from(data.first().copied().unwrap_or(0) & 1);
        seal(&mut packet, 7, &[9; 8], &keys[which..=which], src, "ff02::1:6".parse().unwrap());
        assert_eq!(verify(&packet, &keys, src, ours), Ok(true));
        // Any one bit of the body flipped, and it is refused.
        if !data.is_empty() {
            let bit = usize::from(data[0]) * 7 % (data.len() * 8);
            let mut bad = packet.clone();
            bad[4 + bit / 8] ^= 1 << (bit % 8);
            assert!(verify(&bad, &keys, src, ours).is_err());
        }
    }
});
