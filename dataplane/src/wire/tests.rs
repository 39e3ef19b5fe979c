use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{icmpv4 as ep4, icmpv6 as ep6};
use etherparse::{
    Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header as EpV4, PacketBuilder, SlicedPacket,
    TcpOptionElement, TransportSlice,
};
use proptest::prelude::*;
use zerocopy::IntoBytes;

use super::headers::{Ipv4Header, Ipv6Header};
use super::*;

fn v4_udp(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, ttl)
        .udp(1000, 2000)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn v6_udp(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), hop)
        .udp(1000, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

proptest! {
    #[test]
    fn ipv4_view_round_trips_through_parse(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), ttl in any::<u8>(), proto in any::<u8>(), pad in 0usize..64) {
        let h = Ipv4Header {
            version_ihl: 0x45, tos: 0, total_len: ((20 + pad) as u16).into(), id: 7.into(),
            flags_frag: 0x4000.into(), ttl, protocol: proto, checksum: 0.into(), src, dst,
        };
        let mut pkt = h.as_bytes().to_vec();
        pkt.resize(20 + pad + 3, 0); // WireGuard padding beyond total_len
        let m = parse_ip(&pkt).unwrap();
        prop_assert_eq!(m.src, IpAddr::V4(Ipv4Addr::from(src)));
        prop_assert_eq!(m.dst, IpAddr::V4(Ipv4Addr::from(dst)));
        prop_assert_eq!((m.ttl, m.proto, m.total_len, m.header_len), (ttl, proto, 20 + pad, 20));
        // And etherparse, an independent decoder, agrees.
        let (e, _) = EpV4::from_slice(&pkt).unwrap();
        prop_assert_eq!(e.source, src);
        prop_assert_eq!(usize::from(e.total_len), m.total_len);
    }

    #[test]
    fn ipv6_view_round_trips_through_parse(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), hop in any::<u8>(), nh in any::<u8>(), len in 0usize..100) {
        let h = Ipv6Header { version_tc_flow: (6u32 << 28).into(), payload_len: (len as u16).into(), next_header: nh, hop_limit: hop, src, dst };
        let mut pkt = h.as_bytes().to_vec();
        pkt.resize(40 + len, 0);
        let m = parse_ip(&pkt).unwrap();
        prop_assert_eq!((m.src, m.dst), (IpAddr::V6(src.into()), IpAddr::V6(dst.into())));
        prop_assert_eq!((m.ttl, m.proto, m.total_len), (hop, nh, 40 + len));
        pkt.truncate(39 + len);
        prop_assert_eq!(parse_ip(&pkt), Err(WireError::Truncated));
    }

    #[test]
    fn parsers_never_panic(mut d in proptest::collection::vec(any::<u8>(), 0..200), mss in any::<u16>()) {
        let _ = parse_ip(&d);
        let from4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let from6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let mut out = [0u8; 1500];
        for k in [IcmpError::TimeExceeded, IcmpError::NoRoute, IcmpError::PacketTooBig { mtu: 1280 }] {
            if let Some(n) = icmp_error(k, &d, from4, &mut out) { prop_assert!(n <= 576); }
            let _ = icmp_error(k, &d, from6, &mut out);
        }
        if let Ok(m) = parse_ip(&d) { let _ = is_babel(&m, &d); }
        let _ = clamp_tcp_mss(&mut d, mss);
        let _ = decrement_ttl(&mut d);
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid(ttl in 2u8.., payload in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut p = v4_udp([10, 1, 2, 3], [192, 0, 2, 9], ttl, &payload);
        prop_assert!(decrement_ttl(&mut p));
        prop_assert_eq!(p[8], ttl - 1);
        // A valid header sums to zero (all ones before inversion).
        prop_assert_eq!(checksum::checksum(&p[..20]), 0);
        let (e, _) = EpV4::from_slice(&p).unwrap();
        prop_assert_eq!(e.header_checksum, e.calc_header_checksum());
    }
}

#[test]
fn ttl_of_one_is_not_forwarded() {
    let mut p = v4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1, b"x");
    let before = p.clone();
    assert!(!decrement_ttl(&mut p));
    assert_eq!(p, before);
    let mut q = v6_udp(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 9, b"x");
    assert!(!decrement_ttl(&mut q));
    let mut r = v6_udp(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 9, 9, b"x");
    assert!(decrement_ttl(&mut r));
    assert_eq!(r[7], 8);
}

#[test]
fn icmpv4_errors_are_well_formed() {
    let offending = v4_udp([10, 0, 1, 1], [10, 0, 2, 1], 1, &[0xab; 1000]);
    let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 254));
    let mut out = [0u8; 2048];
    for (kind, ty) in [
        (
            IcmpError::TimeExceeded,
            (
                ep4::TYPE_TIME_EXCEEDED,
                ep4::CODE_TIME_EXCEEDED_TTL_EXCEEDED_IN_TRANSIT,
            ),
        ),
        (
            IcmpError::NoRoute,
            (ep4::TYPE_DEST_UNREACH, ep4::CODE_DST_UNREACH_NET),
        ),
        (
            IcmpError::Prohibited,
            (ep4::TYPE_DEST_UNREACH, ep4::CODE_DST_UNREACH_FILTER_PROHIB),
        ),
        (
            IcmpError::PacketTooBig { mtu: 1380 },
            (ep4::TYPE_DEST_UNREACH, ep4::CODE_DST_UNREACH_NEED_FRAG),
        ),
    ] {
        let n = icmp_error(kind, &offending, from, &mut out).unwrap();
        assert_eq!(n, 576);
        let s = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(ip.header().source(), [10, 0, 0, 254]);
        assert_eq!(ip.header().destination(), [10, 0, 1, 1]);
        assert_eq!(
            ip.header().to_header().calc_header_checksum(),
            ip.header().header_checksum()
        );
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), ty);
        assert_eq!(checksum::checksum(&out[20..n]), 0, "ICMP checksum");
        if let Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
        ) = icmp.icmp_type()
        {
            assert_eq!(next_hop_mtu, 1380);
        }
        // The quote starts with the offending header.
        assert_eq!(&out[28..48], &offending[..20]);
    }
}

#[test]
fn icmpv6_errors_are_well_formed() {
    let src: Ipv6Addr = "fd00:1::1".parse().unwrap();
    let dst: Ipv6Addr = "fd00:2::1".parse().unwrap();
    let offending = v6_udp(src, dst, 1, 9, &[7; 2000]);
    let from = IpAddr::V6("fd00::fe".parse().unwrap());
    let mut out = [0u8; 2048];
    for (kind, ty) in [
        (
            IcmpError::TimeExceeded,
            (
                ep6::TYPE_TIME_EXCEEDED,
                ep6::CODE_TIME_EXCEEDED_HOP_LIMIT_EXCEEDED,
            ),
        ),
        (
            IcmpError::NoRoute,
            (ep6::TYPE_DST_UNREACH, ep6::CODE_DST_UNREACH_NO_ROUTE),
        ),
        (
            IcmpError::Prohibited,
            (ep6::TYPE_DST_UNREACH, ep6::CODE_DST_UNREACH_PROHIBITED),
        ),
        (
            IcmpError::PacketTooBig { mtu: 1400 },
            (ep6::TYPE_PACKET_TOO_BIG, 0),
        ),
    ] {
        let n = icmp_error(kind, &offending, from, &mut out).unwrap();
        assert_eq!(n, 1280);
        let s = SlicedPacket::from_ip(&out[..n]).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), ty);
        let Some(etherparse::NetSlice::Ipv6(ip)) = &s.net else {
            panic!()
        };
        let expect = icmp
            .header()
            .icmp_type
            .calc_checksum(
                ip.header().source(),
                ip.header().destination(),
                icmp.payload(),
            )
            .unwrap();
        assert_eq!(icmp.checksum(), expect);
        if let Icmpv6Type::PacketTooBig { mtu } = icmp.icmp_type() {
            assert_eq!(mtu, 1400);
        }
    }
}

#[test]
fn no_errors_about_errors_multicast_fragments_or_across_families() {
    let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 254));
    let mut out = [0u8; 2048];
    // An ICMP error about something.
    let inner = v4_udp([10, 0, 1, 1], [10, 0, 2, 1], 1, b"x");
    let n = icmp_error(IcmpError::TimeExceeded, &inner, from, &mut out).unwrap();
    let err = out[..n].to_vec();
    assert_eq!(icmp_error(IcmpError::NoRoute, &err, from, &mut out), None);
    // But an echo request does get one.
    let mut echo = Vec::new();
    PacketBuilder::ipv4([10, 0, 1, 1], [10, 0, 2, 1], 1)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    assert!(icmp_error(IcmpError::TimeExceeded, &echo, from, &mut out).is_some());
    // Multicast destination, multicast source.
    assert_eq!(
        icmp_error(
            IcmpError::NoRoute,
            &v4_udp([10, 0, 1, 1], [224, 0, 0, 5], 1, b"x"),
            from,
            &mut out
        ),
        None
    );
    assert_eq!(
        icmp_error(
            IcmpError::NoRoute,
            &v4_udp([224, 0, 0, 1], [10, 0, 0, 5], 1, b"x"),
            from,
            &mut out
        ),
        None
    );
    // A non-first fragment.
    let mut frag = v4_udp([10, 0, 1, 1], [10, 0, 2, 1], 1, b"x");
    frag[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(
        icmp_error(IcmpError::TimeExceeded, &frag, from, &mut out),
        None
    );
    // Family mismatch, output too small.
    assert_eq!(
        icmp_error(
            IcmpError::TimeExceeded,
            &inner,
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            &mut out
        ),
        None
    );
    assert_eq!(
        icmp_error(IcmpError::TimeExceeded, &inner, from, &mut out[..40]),
        None
    );
    // IPv6: packet too big is allowed toward a multicast destination, others are not.
    let m = v6_udp(
        "fd00::1".parse().unwrap(),
        "ff0e::1".parse().unwrap(),
        1,
        9,
        b"x",
    );
    let from6 = IpAddr::V6("fd00::fe".parse().unwrap());
    assert!(icmp_error(IcmpError::PacketTooBig { mtu: 1280 }, &m, from6, &mut out).is_some());
    assert_eq!(
        icmp_error(IcmpError::TimeExceeded, &m, from6, &mut out),
        None
    );
}

fn syn(v6: bool, mss: u16, extra_nop: bool) -> Vec<u8> {
    let b = if v6 {
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
    } else {
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
    };
    let mut opts = vec![];
    if extra_nop {
        opts.push(TcpOptionElement::Noop);
    }
    opts.push(TcpOptionElement::MaximumSegmentSize(mss));
    opts.push(TcpOptionElement::WindowScale(7));
    let mut out = Vec::new();
    b.tcp(1234, 80, 1, 65535)
        .syn()
        .options(&opts)
        .unwrap()
        .write(&mut out, &[])
        .unwrap();
    out
}

#[test]
fn mss_is_clamped_with_a_valid_checksum() {
    for v6 in [false, true] {
        for nop in [false, true] {
            let mut p = syn(v6, 1460, nop);
            assert!(clamp_tcp_mss(&mut p, 1380));
            let s = SlicedPacket::from_ip(&p).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = &s.transport else {
                panic!()
            };
            let mss = tcp.options_iterator().find_map(|o| match o {
                Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                _ => None,
            });
            assert_eq!(mss, Some(1380));
            let expect = match &s.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => tcp
                    .to_header()
                    .calc_checksum_ipv4(&ip.header().to_header(), &[])
                    .unwrap(),
                Some(etherparse::NetSlice::Ipv6(ip)) => tcp
                    .to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), &[])
                    .unwrap(),
                _ => unreachable!(),
            };
            assert_eq!(tcp.checksum(), expect, "v6={v6} nop={nop}");
            // Already small enough: untouched.
            let mut q = syn(v6, 1200, nop);
            let before = q.clone();
            assert!(!clamp_tcp_mss(&mut q, 1380));
            assert_eq!(q, before);
        }
    }
    // Not a SYN, not TCP.
    let mut u = v4_udp([10, 0, 0, 1], [10, 0, 0, 2], 64, &[2, 4, 5, 0xb4]);
    assert!(!clamp_tcp_mss(&mut u, 1000));
    let _ = IpNumber::TCP;
}

#[test]
fn babel_is_recognised() {
    let ll: Ipv6Addr = "fe80::1".parse().unwrap();
    let group: Ipv6Addr = "ff02::1:6".parse().unwrap();
    for (dst, port, want) in [
        (group, 6696, true),
        (ll, 6696, true),
        (group, 6697, false),
        ("fd00::1".parse().unwrap(), 6696, false),
    ] {
        let p = v6_udp(ll, dst, 1, port, b"babel");
        assert_eq!(is_babel(&parse_ip(&p).unwrap(), &p), want, "{dst} {port}");
    }
}

fn tcp_packet(v6: bool, payload: &[u8]) -> Vec<u8> {
    let b = if v6 {
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
    } else {
        PacketBuilder::ipv4([10, 1, 1, 2], [10, 2, 1, 2], 64)
    };
    let mut out = Vec::new();
    b.tcp(40000, 5201, 1, 65535)
        .syn()
        .write(&mut out, payload)
        .unwrap();
    out
}

/// A checksum field holding just the pseudo-header's sum (what a stack with checksum offload
/// hands a virtual link) is completed; a correct or a corrupted checksum is left alone.
#[test]
fn partial_checksums_are_completed_and_nothing_else_is_touched() {
    for (v6, udp) in [(false, false), (true, false), (false, true), (true, true)] {
        let good = if udp {
            if v6 {
                v6_udp(
                    "fd00::1".parse().unwrap(),
                    "fd00::2".parse().unwrap(),
                    64,
                    9,
                    b"data!",
                )
            } else {
                v4_udp([10, 0, 0, 1], [10, 0, 0, 2], 64, b"data!")
            }
        } else {
            tcp_packet(v6, b"hello")
        };
        let meta = parse_ip(&good).unwrap();
        let at = meta.header_len + if udp { 6 } else { 16 };
        let l4_len = meta.total_len - meta.header_len;
        let pseudo = checksum::pseudo_header(meta.src, meta.dst, meta.proto, l4_len);
        let mut partial = good.clone();
        partial[at..at + 2].copy_from_slice(&(!checksum::finish(pseudo)).to_be_bytes());
        assert!(
            complete_partial_checksum(&mut partial, &meta),
            "v6 {v6} udp {udp}"
        );
        assert_eq!(partial, good, "v6 {v6} udp {udp}");

        let mut same = good.clone();
        assert!(!complete_partial_checksum(&mut same, &meta));
        assert_eq!(same, good);
        let mut corrupt = good.clone();
        corrupt[at] ^= 0x10;
        let kept = corrupt.clone();
        assert!(!complete_partial_checksum(&mut corrupt, &meta));
        assert_eq!(corrupt, kept, "a bad checksum stays bad");
    }
    // Short and non-TCP/UDP packets are left alone.
    let icmp = v4_udp([10, 0, 0, 1], [10, 0, 0, 2], 64, b"x");
    let mut m = parse_ip(&icmp).unwrap();
    m.proto = 1;
    assert!(!complete_partial_checksum(&mut icmp.clone(), &m));
}

proptest! {
    #[test]
    fn complete_partial_checksum_never_panics(mut pkt in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Ok(meta) = parse_ip(&pkt) {
            let _ = complete_partial_checksum(&mut pkt, &meta);
        }
    }
}
