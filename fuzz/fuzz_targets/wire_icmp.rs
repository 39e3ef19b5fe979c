#![no_main]
//! ICMP error generation about arbitrary offending packets.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use isthmus_dataplane::wire::{self, IcmpError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = [0u8; 2048];
    for from in [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
        for k in [IcmpError::TimeExceeded, IcmpError::NoRoute, IcmpError::PacketTooBig { mtu: 1280 }] {
            if let Some(n) = wire::icmp_error(k, data, from, &mut out) {
                assert!(wire::parse_ip(&out[..n]).is_ok());
            }
        }
    }
});
