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

/// An IPv4 packet with these options (padded with zeros to a multiple of 4), flags and
/// offset field, and `payload_len` bytes of a counting pattern; its checksum valid.
fn v4_with(options: &[u8], flags_frag: u16, payload_len: usize) -> Vec<u8> {
    let ihl = 20 + options.len().next_multiple_of(4);
    let total = ihl + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[1] = 0x2e; // DSCP/ECN, kept
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0xbeefu16.to_be_bytes());
    p[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    p[8] = 63;
    p[9] = proto::UDP;
    p[12..16].copy_from_slice(&[10, 0, 1, 1]);
    p[16..20].copy_from_slice(&[10, 0, 2, 1]);
    p[20..20 + options.len()].copy_from_slice(options);
    for (i, b) in p[ihl..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let c = checksum::checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// The fragments [`fragment_ipv4`] makes of `pkt` for `mtu`.
fn fragments(pkt: &[u8], mtu: usize) -> Result<Vec<Vec<u8>>, FragmentError> {
    let mut scratch = [0u8; 2048];
    let mut out = Vec::new();
    let n = fragment_ipv4(pkt, mtu, &mut scratch, |f| out.push(f.to_vec()))?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// Reassemble the fragments made of one IPv4 packet (in the order they were made), checking
/// each on the way — total length, header checksum, DF clear, the same identifying fields,
/// contiguous offsets, MF on all but the last, payloads of all but the last a multiple of 8 —
/// into the packet they were made of (header of the first, the last one's MF).
pub(crate) fn reassemble_v4(frags: &[Vec<u8>]) -> Vec<u8> {
    if let [one] = frags {
        return one.clone();
    }
    let first = &frags[0];
    let ihl = usize::from(first[0] & 0x0f) * 4;
    let flags = |f: &[u8]| u16::from_be_bytes([f[6], f[7]]);
    let start = usize::from(flags(first) & 0x1fff) * 8;
    let mut payload = Vec::new();
    for (k, f) in frags.iter().enumerate() {
        let hl = usize::from(f[0] & 0x0f) * 4;
        assert_eq!(f[0] >> 4, 4);
        assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len());
        assert_eq!(
            checksum::checksum(&f[..hl]),
            0,
            "header checksum of fragment {k}"
        );
        assert_eq!(f[1], first[1], "TOS");
        assert_eq!(&f[4..6], &first[4..6], "identification");
        assert_eq!(&f[8..10], &first[8..10], "TTL and protocol");
        assert_eq!(&f[12..20], &first[12..20], "addresses");
        let ff = flags(f);
        assert_eq!(
            ff & 0xc000,
            flags(first) & 0xc000,
            "DF and the reserved flag"
        );
        assert_eq!(ff & 0x4000, 0, "DF");
        assert_eq!(
            usize::from(ff & 0x1fff) * 8,
            start + payload.len(),
            "offset {k}"
        );
        if k + 1 < frags.len() {
            assert_ne!(ff & 0x2000, 0, "MF on fragment {k}");
            assert_eq!((f.len() - hl) % 8, 0, "payload of fragment {k}");
        }
        payload.extend_from_slice(&f[hl..]);
    }
    let mut out = first[..ihl].to_vec();
    out.extend_from_slice(&payload);
    let len = out.len() as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let last_mf = flags(frags.last().unwrap()) & 0x2000;
    let ff = (flags(first) & !0x2000) | last_mf;
    out[6..8].copy_from_slice(&ff.to_be_bytes());
    out[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&out[..ihl]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out
}

/// The options of an IPv4 header, up to the end of the list (padding dropped).
fn options_of(p: &[u8]) -> &[u8] {
    &p[20..usize::from(p[0] & 0x0f) * 4]
}

/// Checks of every fragmentation: sizes, etherparse's reading of each fragment, the options
/// of the later ones, and (for a whole packet) etherparse's reassembly.
fn check_fragments(orig: &[u8], mtu: usize, frags: &[Vec<u8>], copied: &[u8]) {
    assert_eq!(reassemble_v4(frags), orig, "mtu {mtu}");
    if orig.len() <= mtu {
        assert_eq!(frags.len(), 1);
        return;
    }
    assert!(frags.len() >= 2);
    let orig_ihl = usize::from(orig[0] & 0x0f) * 4;
    for (k, f) in frags.iter().enumerate() {
        assert!(f.len() <= mtu, "fragment {k}: {} > {mtu}", f.len());
        let (h, rest) = EpV4::from_slice(f).expect("etherparse reads the fragment");
        assert_eq!(usize::from(h.total_len), f.len());
        assert!(rest.is_empty() || h.is_fragmenting_payload());
        assert!(etherparse::Ipv4Slice::from_slice(f).is_ok());
        if k == 0 {
            assert_eq!(
                &f[20..orig_ihl],
                &orig[20..orig_ihl],
                "the first keeps every option"
            );
        } else {
            let opts = options_of(f);
            assert_eq!(
                &opts[..copied.len()],
                copied,
                "fragment {k}: the copied options"
            );
            assert!(opts[copied.len()..].iter().all(|&b| b == 0), "then padding");
            assert!(opts.len() - copied.len() < 4);
        }
        // Each fragment leaves no room unused: a non-last one is as long as the MTU allows.
        if k + 1 < frags.len() {
            let hl = usize::from(f[0] & 0x0f) * 4;
            assert_eq!(f.len() - hl, (mtu - hl) / 8 * 8, "fragment {k} is full");
        }
    }
    // etherparse's own reassembly agrees on the payload of a packet that was whole.
    if u16::from_be_bytes([orig[6], orig[7]]) & 0x3fff == 0 {
        let mut pool = etherparse::defrag::IpDefragPool::<(), ()>::new();
        let mut done = None;
        for f in frags {
            let s = SlicedPacket::from_ip(f).unwrap();
            if let Some(p) = pool.process_sliced_packet(&s, (), ()).unwrap() {
                done = Some(p.payload);
            }
        }
        assert_eq!(
            done.as_deref(),
            Some(&orig[orig_ihl..]),
            "etherparse's reassembly"
        );
    }
}

/// Options: record route (not copied), no-operations, loose source route (copied), end of
/// list, padding.
const OPTIONS: [u8; 20] = [
    0x07, 7, 4, 0, 0, 0, 0, // record route, room for one address
    0x01, 0x01, // two no-operations
    0x83, 7, 4, 192, 0, 2, 1, // loose source route, copied
    0x00, 0, 0, 0, // end of the list and padding
];

#[test]
fn fragments_reassemble_to_the_original() {
    let no_options: &[u8] = &[];
    for (opts, copied) in [
        (no_options, no_options),
        (&OPTIONS[..], &OPTIONS[9..16]),
        // Security (copied, 11 bytes) and a timestamp (not copied).
        (
            &[
                0x82, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x44, 8, 5, 0, 0, 0, 0, 0,
            ][..],
            &[0x82, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9][..],
        ),
        // 40 bytes of copied options: every fragment carries the longest header.
        (
            &[
                0x94, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
            .repeat(2)[..],
            &[
                0x94, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]
            .repeat(2)[..],
        ),
    ] {
        for payload in [0, 1, 7, 8, 9, 100, 1000, 1380, 1400, 1480, 2000] {
            for mtu in [68, 69, 75, 76, 100, 576, 1280, 1420, 1500] {
                let p = v4_with(opts, 0, payload);
                let frags = fragments(&p, mtu).unwrap();
                let expected = if p.len() <= mtu {
                    1
                } else {
                    let ihl = p.len() - payload;
                    let later_ihl = 20 + copied.len().next_multiple_of(4);
                    let first = (mtu - ihl) / 8 * 8;
                    1 + (payload - first).div_ceil((mtu - later_ihl) / 8 * 8)
                };
                assert_eq!(frags.len(), expected, "payload {payload}, mtu {mtu}");
                check_fragments(&p, mtu, &frags, copied);
            }
        }
    }
}

#[test]
fn copied_options_alone_go_into_later_fragments() {
    let p = v4_with(&OPTIONS, 0, 1000);
    let frags = fragments(&p, 576).unwrap();
    assert_eq!(frags.len(), 2);
    // The first: the original header (40 bytes), 536 bytes of payload.
    assert_eq!(frags[0].len(), 576);
    assert_eq!(&frags[0][20..40], &OPTIONS);
    // The second: the loose source route and one byte of end-of-options padding.
    assert_eq!(frags[1][0], 0x47);
    assert_eq!(options_of(&frags[1]), &[0x83, 7, 4, 192, 0, 2, 1, 0]);
    assert_eq!(frags[1].len(), 28 + 1000 - 536);
    assert_eq!(u16::from_be_bytes([frags[1][6], frags[1][7]]), 536 / 8);
    check_fragments(&p, 576, &frags, &OPTIONS[9..16]);
}

#[test]
fn a_fragment_is_fragmented_in_its_place() {
    for mf in [0, 0x2000] {
        // The part at 800 bytes of a bigger datagram: the last one, or one in the middle.
        let p = v4_with(&[], mf | 100, 1400);
        let frags = fragments(&p, 576).unwrap();
        assert_eq!(frags.len(), 3);
        let offsets: Vec<u16> = (frags.iter())
            .map(|f| u16::from_be_bytes([f[6], f[7]]))
            .collect();
        assert_eq!(
            offsets,
            [0x2000 | 100, 0x2000 | (100 + 69), mf | (100 + 138)],
            "offsets added, the input's MF on the last"
        );
        check_fragments(&p, 576, &frags, &[]);
    }
    // The reserved flag is kept.
    let p = v4_with(&[], 0x8000, 1000);
    let frags = fragments(&p, 576).unwrap();
    assert!(frags.iter().all(|f| f[6] & 0x80 != 0));
    check_fragments(&p, 576, &frags, &[]);
}

#[test]
fn what_is_not_fragmented() {
    let mut scratch = [0u8; 2048];
    let mut none = |_: &[u8]| panic!("nothing may be emitted");
    // DF set.
    let df = v4_with(&[], 0x4000, 1400);
    assert_eq!(
        fragment_ipv4(&df, 1280, &mut scratch, &mut none),
        Err(FragmentError::DontFragment)
    );
    // ... unless it fits: then it goes whole, unchanged.
    assert_eq!(fragments(&df, 1420).unwrap(), vec![df.clone()]);
    // An MTU below 68.
    let p = v4_with(&[], 0, 1400);
    assert_eq!(
        fragment_ipv4(&p, 67, &mut scratch, &mut none),
        Err(FragmentError::MtuTooSmall)
    );
    // A bad header checksum.
    let mut bad = p.clone();
    bad[10] ^= 1;
    assert_eq!(
        fragment_ipv4(&bad, 576, &mut scratch, &mut none),
        Err(FragmentError::Malformed)
    );
    // IPv6, truncated, an IHL below 5, a total length past the buffer.
    let v6 = v6_udp(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 9, 9, &[0; 1400]);
    for bad in [&v6[..], &p[..19], &[0x44; 40][..], &p[..1000]] {
        assert_eq!(
            fragment_ipv4(bad, 576, &mut scratch, &mut none),
            Err(FragmentError::Malformed)
        );
    }
    // An option running past the header, an option length of 1.
    for opts in [
        &[0x83, 9, 4, 0][..],
        &[0x83, 1, 0, 0][..],
        &[0x01, 0x01, 0x01, 0x83][..],
    ] {
        let p = v4_with(opts, 0, 1000);
        assert_eq!(
            fragment_ipv4(&p, 576, &mut scratch, &mut none),
            Err(FragmentError::Malformed),
            "{opts:?}"
        );
    }
    // A fragment whose pieces' offsets would not fit 13 bits.
    let far = v4_with(&[], 0x1fff, 1000);
    assert_eq!(
        fragment_ipv4(&far, 576, &mut scratch, &mut none),
        Err(FragmentError::Malformed)
    );
    // A scratch buffer smaller than a fragment.
    assert_eq!(
        fragment_ipv4(&p, 1280, &mut scratch[..1000], &mut none),
        Err(FragmentError::BufferTooSmall)
    );
    // WireGuard's padding past the total length is not part of the packet.
    let mut padded = v4_with(&[], 0, 1000);
    padded.extend_from_slice(&[0xee; 12]);
    let frags = fragments(&padded, 576).unwrap();
    check_fragments(&padded[..1020], 576, &frags, &[]);
}

/// One IPv4 option: a no-operation, or a type (not 0 or 1) with up to 8 bytes of data.
fn option() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![1u8]),
        (2u8.., proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(ty, data)| {
            let mut o = vec![ty, (data.len() + 2) as u8];
            o.extend(data);
            o
        }),
    ]
}

proptest! {
    #[test]
    fn fragmenting_reassembles_exactly(
        opts in proptest::collection::vec(option(), 0..8),
        eol in any::<bool>(),
        payload in 0usize..3000,
        mtu in 0usize..2000,
        offset in 0u16..0x1fff,
        mf in any::<bool>(),
        reserved in any::<bool>(),
        df in any::<bool>(),
    ) {
        // At most 40 bytes of options.
        let mut o: Vec<u8> = Vec::new();
        for opt in opts {
            if o.len() + opt.len() <= 40 {
                o.extend(opt);
            }
        }
        if eol && o.len() < 40 {
            o.push(0);
        }
        let copied: Vec<u8> = {
            let (mut c, mut i) = (Vec::new(), 0);
            while i < o.len() && o[i] != 0 {
                if o[i] == 1 { i += 1; continue; }
                let l = usize::from(o[i + 1]);
                if o[i] & 0x80 != 0 { c.extend_from_slice(&o[i..i + l]); }
                i += l;
            }
            c
        };
        let flags = u16::from(reserved) << 15 | u16::from(df) << 14 | u16::from(mf) << 13 | offset;
        let p = v4_with(&o, flags, payload);
        let last_start = |ihl: usize, later_ihl: usize| {
            let first = (mtu - ihl) / 8 * 8;
            let later = (mtu - later_ihl) / 8 * 8;
            first + (payload - first - 1) / later * later
        };
        match fragments(&p, mtu) {
            Ok(frags) => {
                prop_assert!(mtu >= 68);
                prop_assert!(!df || p.len() <= mtu);
                check_fragments(&p, mtu, &frags, &copied);
            }
            Err(FragmentError::MtuTooSmall) => prop_assert!(mtu < 68),
            Err(FragmentError::DontFragment) => prop_assert!(df && p.len() > mtu),
            Err(FragmentError::Malformed) => {
                // Only offsets past 13 bits.
                let ihl = p.len() - payload;
                let later_ihl = 20 + copied.len().next_multiple_of(4);
                prop_assert!(usize::from(offset) * 8 + last_start(ihl, later_ihl) > 0x1fff * 8);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn fragmenting_never_panics(d in proptest::collection::vec(any::<u8>(), 0..1600), mtu in 0usize..1700, fix in any::<bool>()) {
        let mut d = d;
        // Random bytes rarely get past the version, length and checksum checks: half of the
        // time, make those right, to go on into the options and the fragmenting.
        if fix && d.len() >= 20 {
            d[0] = 0x40 | (d[0] & 0x0f);
            let len = d.len() as u16;
            d[2..4].copy_from_slice(&len.to_be_bytes());
            let ihl = (usize::from(d[0] & 0x0f) * 4).max(20);
            if ihl <= d.len() {
                d[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&d[..ihl]);
                d[10..12].copy_from_slice(&c.to_be_bytes());
            }
        }
        let mut scratch = [0u8; 1600];
        let mut emitted = 0;
        if let Ok(n) = fragment_ipv4(&d, mtu, &mut scratch, |f| {
            assert!(f.len() <= mtu);
            emitted += 1;
        }) {
            prop_assert_eq!(n, emitted);
        }
    }
}
