//! The Babel codec against hand-built wire images (RFC 8966 §4.6, RFC 9229, RFC 9616),
//! exact encodings, and round-trip / no-panic properties.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

use super::*;

const RID: RouterId = [1, 2, 3, 4, 5, 6, 7, 8];
const RID2: RouterId = [9, 9, 9, 9, 9, 9, 9, 9];

/// A packet: header with the body length, then `body`.
fn pkt(body: &[u8]) -> Vec<u8> {
    let mut p = vec![MAGIC, VERSION];
    p.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn ok(body: &[u8]) -> (Vec<Msg>, Skipped) {
    parse(&pkt(body)).expect("valid header")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Writes `msgs` into one packet, every push must succeed.
fn write(msgs: &[Msg]) -> Vec<u8> {
    let mut w = Writer::new(65535);
    for m in msgs {
        assert!(w.push(m), "push refused {m:?}");
    }
    w.finish()
}

/// Re-encodes parsed messages into as many packets as needed and parses them back: what the
/// fuzz target checks.
fn reencode(msgs: &[Msg]) -> Vec<Msg> {
    let mut packets = Vec::new();
    let mut w = Writer::new(65535);
    for m in msgs {
        if !w.push(m) {
            packets.push(std::mem::replace(&mut w, Writer::new(65535)).finish());
            assert!(w.push(m), "a parsed message must fit a fresh packet: {m:?}");
        }
    }
    packets.push(w.finish());
    let mut out = Vec::new();
    for p in packets {
        let (m, s) = parse(&p).expect("our own packet parses");
        assert_eq!((s.unknown_tlv, s.mandatory, s.overrun), (0, 0, false));
        out.extend(m);
    }
    out
}

fn update(prefix: &str, metric: u16, router_id: RouterId, next_hop: Option<IpAddr>) -> Msg {
    Msg::Update {
        prefix: Some(net(prefix)),
        v4_via_v6: false,
        interval: 400,
        seqno: 7,
        metric,
        router_id,
        next_hop,
    }
}

fn router_id_tlv(id: RouterId) -> Vec<u8> {
    let mut t = vec![tlv::ROUTER_ID, 10, 0, 0];
    t.extend_from_slice(&id);
    t
}

/// Update TLV: AE, flags, plen, omitted, interval 400, seqno 7, `metric`, prefix bytes.
fn update_tlv(ae_: u8, flags: u8, plen: u8, omitted: u8, metric: u16, prefix: &[u8]) -> Vec<u8> {
    let mut t = vec![
        tlv::UPDATE,
        10 + prefix.len() as u8,
        ae_,
        flags,
        plen,
        omitted,
    ];
    t.extend_from_slice(&400u16.to_be_bytes());
    t.extend_from_slice(&7u16.to_be_bytes());
    t.extend_from_slice(&metric.to_be_bytes());
    t.extend_from_slice(prefix);
    t
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------
// Header

#[test]
fn header_errors() {
    assert_eq!(parse(&[]), Err(ParseError::Truncated));
    assert_eq!(parse(&[42, 2, 0]), Err(ParseError::Truncated));
    assert_eq!(parse(&[43, 2, 0, 0]), Err(ParseError::Magic));
    assert_eq!(parse(&[42, 1, 0, 0]), Err(ParseError::Version));
    assert_eq!(parse(&[42, 3, 0, 0]), Err(ParseError::Version));
    // Body length beyond the datagram.
    assert_eq!(parse(&[42, 2, 0, 5, 3, 2, 0]), Err(ParseError::Truncated));
    assert_eq!(parse(&[42, 2, 0, 0]), Ok((vec![], Skipped::default())));
}

#[test]
fn trailer_after_body_is_ignored() {
    // Body: Ack; then a trailer (RFC 8966 §4.2) that would be an overrunning TLV.
    let mut p = pkt(&[3, 2, 0, 9]);
    p.extend_from_slice(&[4, 200, 1]);
    assert_eq!(
        parse(&p),
        Ok((vec![Msg::Ack { opaque: 9 }], Skipped::default()))
    );
}

// ---------------------------------------------------------------------------------------
// Hand-built TLVs, RFC 8966 §4.6.x layouts

#[test]
fn pad1_and_padn() {
    // §4.6.1 Pad1 is a lone zero byte; §4.6.2 PadN is type 1, length, MBZ.
    assert_eq!(ok(&[0, 0, 0]), (vec![], Skipped::default()));
    assert_eq!(ok(&[1, 3, 0, 0, 0]), (vec![], Skipped::default()));
    assert_eq!(
        ok(&[0, 1, 0, 0, 3, 2, 0x12, 0x34]).0,
        vec![Msg::Ack { opaque: 0x1234 }]
    );
}

#[test]
fn ack_request_and_ack() {
    // §4.6.3: Reserved(2) Opaque(2) Interval(2).
    assert_eq!(
        ok(&[2, 6, 0, 0, 0xAB, 0xCD, 0x01, 0x90]).0,
        vec![Msg::AckReq {
            opaque: 0xABCD,
            interval: 400
        }]
    );
    // §4.6.4: Opaque(2).
    assert_eq!(ok(&[3, 2, 0xAB, 0xCD]).0, vec![Msg::Ack { opaque: 0xABCD }]);
    // Too short: malformed, skipped.
    let (m, s) = ok(&[2, 4, 0, 0, 0xAB, 0xCD, 3, 2, 0, 1]);
    assert_eq!(m, vec![Msg::Ack { opaque: 1 }]);
    assert_eq!(s.malformed, 1);
}

#[test]
fn hello_plain_unicast_timestamp() {
    // §4.6.5: Flags(2) Seqno(2) Interval(2).
    assert_eq!(
        ok(&[4, 6, 0, 0, 0x12, 0x34, 0x01, 0x90]).0,
        vec![Msg::Hello {
            unicast: false,
            seqno: 0x1234,
            interval: 400,
            timestamp: None
        }]
    );
    // Unicast flag 0x8000.
    assert_eq!(
        ok(&[4, 6, 0x80, 0, 0, 1, 0, 0]).0,
        vec![Msg::Hello {
            unicast: true,
            seqno: 1,
            interval: 0,
            timestamp: None
        }]
    );
    // Reserved flag bits are ignored.
    assert_eq!(
        ok(&[4, 6, 0x7F, 0xFF, 0, 1, 0, 0]).0,
        vec![Msg::Hello {
            unicast: false,
            seqno: 1,
            interval: 0,
            timestamp: None
        }]
    );
    // RFC 9616 Timestamp sub-TLV (type 3, length 4) after a Pad1 and a PadN sub-TLV.
    assert_eq!(
        ok(&[4, 16, 0, 0, 0, 2, 0, 100, 0, 1, 1, 0, 3, 4, 0xDE, 0xAD, 0xBE, 0xEF]).0,
        vec![Msg::Hello {
            unicast: false,
            seqno: 2,
            interval: 100,
            timestamp: Some(0xDEADBEEF)
        }]
    );
}

fn ihu_tlv(ae_: u8, addr: &[u8], ts: Option<(u32, u32)>) -> Vec<u8> {
    let mut t = vec![tlv::IHU, 0, ae_, 0, 0, 96, 0x04, 0xB0];
    t.extend_from_slice(addr);
    if let Some((o, r)) = ts {
        t.extend_from_slice(&[3, 8]);
        t.extend_from_slice(&o.to_be_bytes());
        t.extend_from_slice(&r.to_be_bytes());
    }
    t[1] = (t.len() - 2) as u8;
    t
}

#[test]
fn ihu_every_address_encoding() {
    // §4.6.6: AE(1) Reserved(1) Rxcost(2) Interval(2) Address.
    let ihu = |address, timestamp| Msg::Ihu {
        rxcost: 96,
        interval: 1200,
        address,
        timestamp,
    };
    assert_eq!(ok(&ihu_tlv(0, &[], None)).0, vec![ihu(None, None)]);
    assert_eq!(
        ok(&ihu_tlv(1, &[192, 0, 2, 1], None)).0,
        vec![ihu(Some(IpAddr::V4(v4("192.0.2.1"))), None)]
    );
    assert_eq!(
        ok(&ihu_tlv(2, &v6("2001:db8::1").octets(), Some((5, 6)))).0,
        vec![ihu(Some(IpAddr::V6(v6("2001:db8::1"))), Some((5, 6)))]
    );
    assert_eq!(
        ok(&ihu_tlv(
            3,
            &[0, 0, 0, 0, 0, 0, 0, 1],
            Some((0xFFFF_FFFF, 1))
        ))
        .0,
        vec![ihu(Some(IpAddr::V6(v6("fe80::1"))), Some((0xFFFF_FFFF, 1)))]
    );
    // Timestamps on a wildcard IHU too.
    assert_eq!(
        ok(&ihu_tlv(0, &[], Some((1, 2)))).0,
        vec![ihu(None, Some((1, 2)))]
    );
    // AE 4 is not an IHU address; an unknown AE neither; a short address is malformed.
    for bad in [
        ihu_tlv(4, &[0; 16], None),
        ihu_tlv(9, &[], None),
        ihu_tlv(2, &[0; 8], None),
    ] {
        let (m, s) = ok(&bad);
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

#[test]
fn router_id_and_next_hops_apply_to_updates() {
    // §4.6.7 Router-Id: Reserved(2) Router-Id(8); §4.6.8 Next Hop: AE(1) Reserved(1) address.
    let body = cat(&[
        &router_id_tlv(RID),
        &[7, 6, 1, 0, 192, 0, 2, 1],
        &update_tlv(1, 0, 24, 0, 5, &[10, 1, 2]),
        &[7, 18, 2, 0],
        &v6("2001:db8::9").octets(),
        &update_tlv(2, 0, 48, 0, 5, &[0x20, 0x01, 0x0d, 0xb8, 0, 1]),
        &[7, 10, 3, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        &update_tlv(2, 0, 48, 0, 5, &[0x20, 0x01, 0x0d, 0xb8, 0, 2]),
    ]);
    let (m, s) = ok(&body);
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![
            update("10.1.2.0/24", 5, RID, Some(IpAddr::V4(v4("192.0.2.1")))),
            update(
                "2001:db8:1::/48",
                5,
                RID,
                Some(IpAddr::V6(v6("2001:db8::9")))
            ),
            update("2001:db8:2::/48", 5, RID, Some(IpAddr::V6(v6("fe80::7")))),
        ]
    );
}

#[test]
fn invalid_router_id_drops_the_router_id() {
    for bad in [[0u8; 8], [0xFF; 8]] {
        let body = cat(&[
            &router_id_tlv(RID),
            &router_id_tlv(bad),
            &update_tlv(2, 0, 16, 0, 5, &[0x20, 0x01]),
            // A retraction needs no router-id.
            &update_tlv(2, 0, 16, 0, INFINITY, &[0x20, 0x02]),
        ]);
        let (m, s) = ok(&body);
        assert_eq!(s.malformed, 2);
        assert_eq!(m, vec![update("2002::/16", INFINITY, [0; 8], None)]);
    }
}

#[test]
fn next_hop_bad_encodings() {
    // AE 0 and AE 4 are not next hops; short addresses are malformed.
    for bad in [
        vec![7, 2, 0, 0],
        cat(&[&[7, 18, 4, 0], &[0; 16]]),
        vec![7, 4, 1, 0, 1, 2],
    ] {
        let (m, s) = ok(&bad);
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

#[test]
fn update_wildcard_retraction() {
    // §4.6.9: AE 0 with an infinite metric retracts everything; router-id is not used.
    let (m, s) = ok(&cat(&[
        &router_id_tlv(RID),
        &update_tlv(0, 0, 0, 0, INFINITY, &[]),
    ]));
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![Msg::Update {
            prefix: None,
            v4_via_v6: false,
            interval: 400,
            seqno: 7,
            metric: INFINITY,
            router_id: [0; 8],
            next_hop: None
        }]
    );
    // Finite metric, or Plen / Omitted not 0: ignored.
    for bad in [
        update_tlv(0, 0, 0, 0, 5, &[]),
        update_tlv(0, 0, 8, 0, INFINITY, &[]),
        update_tlv(0, 0, 0, 1, INFINITY, &[]),
    ] {
        let (m, s) = ok(&cat(&[&router_id_tlv(RID), &bad]));
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

#[test]
fn update_ipv4_compression() {
    let nh = Some(IpAddr::V4(v4("192.0.2.1")));
    let body = cat(&[
        &router_id_tlv(RID),
        &[7, 6, 1, 0, 192, 0, 2, 1],
        // P flag: 10.1.0.0/16 becomes the AE 1 default prefix.
        &update_tlv(1, 0x80, 16, 0, 10, &[10, 1]),
        // Two bytes omitted: 10.1 + 2 → 10.1.2.0/24.
        &update_tlv(1, 0, 24, 2, 10, &[2]),
        // All omitted.
        &update_tlv(1, 0, 16, 2, 10, &[]),
        // Host bits are masked: 10.1.3.255/24 → 10.1.3.0/24.
        &update_tlv(1, 0, 24, 2, 10, &[3]),
        &update_tlv(1, 0, 20, 2, 10, &[0xFF]),
        // Default route.
        &update_tlv(1, 0, 0, 0, 10, &[]),
    ]);
    let (m, s) = ok(&body);
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![
            update("10.1.0.0/16", 10, RID, nh),
            update("10.1.2.0/24", 10, RID, nh),
            update("10.1.0.0/16", 10, RID, nh),
            update("10.1.3.0/24", 10, RID, nh),
            update("10.1.240.0/20", 10, RID, nh),
            update("0.0.0.0/0", 10, RID, nh),
        ]
    );
}

#[test]
fn update_compression_errors() {
    let head = cat(&[&router_id_tlv(RID), &[7, 6, 1, 0, 192, 0, 2, 1]]);
    for bad in [
        // Omitted without a default prefix.
        update_tlv(1, 0, 24, 2, 10, &[2]),
        // Omitted more than the prefix has.
        update_tlv(1, 0x80, 8, 2, 10, &[]),
        // Plen beyond the family.
        update_tlv(1, 0, 33, 0, 10, &[1, 2, 3, 4, 5]),
        update_tlv(2, 0, 129, 0, 10, &[0; 17]),
        // Prefix shorter than plen says.
        update_tlv(1, 0, 24, 0, 10, &[10, 1]),
        // Unknown AE.
        update_tlv(5, 0, 0, 0, 10, &[]),
    ] {
        let (m, s) = ok(&cat(&[&head, &bad]));
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

#[test]
fn update_ae4_has_its_own_default_prefix() {
    // RFC 9229: AE 4 updates compress against the previous AE 4 default, not AE 1's.
    let head = cat(&[
        &router_id_tlv(RID),
        &[7, 6, 1, 0, 192, 0, 2, 1],
        &update_tlv(1, 0x80, 16, 0, 10, &[10, 1]),
    ]);
    let (m, s) = ok(&cat(&[&head, &update_tlv(4, 0, 24, 2, 10, &[2])]));
    assert_eq!((m.len(), s.malformed), (1, 1));
    let (m, s) = ok(&cat(&[
        &head,
        &update_tlv(4, 0x80, 16, 0, 10, &[172, 16]),
        &update_tlv(4, 0, 24, 2, 10, &[2]),
        &update_tlv(1, 0, 24, 2, 10, &[2]),
    ]));
    assert_eq!(s, Skipped::default());
    let via6 = |p: &str| Msg::Update {
        prefix: Some(net(p)),
        v4_via_v6: true,
        interval: 400,
        seqno: 7,
        metric: 10,
        router_id: RID,
        next_hop: None,
    };
    assert_eq!(
        m[1..],
        [
            via6("172.16.0.0/16"),
            via6("172.16.2.0/24"),
            update("10.1.2.0/24", 10, RID, Some(IpAddr::V4(v4("192.0.2.1")))),
        ]
    );
}

#[test]
fn update_v4_via_v6_uses_the_ipv6_next_hop() {
    let body = cat(&[
        &router_id_tlv(RID),
        &[7, 6, 1, 0, 192, 0, 2, 1],
        &[7, 10, 3, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        &update_tlv(4, 0, 24, 0, 10, &[10, 9, 9]),
    ]);
    assert_eq!(
        ok(&body).0,
        vec![Msg::Update {
            prefix: Some(net("10.9.9.0/24")),
            v4_via_v6: true,
            interval: 400,
            seqno: 7,
            metric: 10,
            router_id: RID,
            next_hop: Some(IpAddr::V6(v6("fe80::5"))),
        }]
    );
}

#[test]
fn update_ipv4_without_ipv4_next_hop() {
    // The source is IPv6: an AE 1 route needs a Next Hop TLV (§4.6.9); a retraction does not.
    let (m, s) = ok(&cat(&[
        &router_id_tlv(RID),
        &update_tlv(1, 0, 24, 0, 10, &[10, 9, 9]),
        &update_tlv(1, 0, 24, 0, INFINITY, &[10, 9, 9]),
    ]));
    assert_eq!(s.malformed, 1);
    assert_eq!(m, vec![update("10.9.9.0/24", INFINITY, RID, None)]);
}

#[test]
fn update_router_id_from_prefix() {
    // R flag (0x40), IPv6: the last 8 bytes of the prefix.
    let mut p = v6("2001:db8::").octets().to_vec();
    p[8..].copy_from_slice(&RID2);
    let (m, s) = ok(&cat(&[
        &router_id_tlv(RID),
        &update_tlv(2, 0xC0, 128, 0, 3, &p),
        // Following updates use it, and the P flag made this prefix the default.
        &update_tlv(2, 0, 64, 8, 3, &[]),
    ]));
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![
            update(
                &format!(
                    "{}/128",
                    Ipv6Addr::from(<[u8; 16]>::try_from(&p[..]).unwrap())
                ),
                3,
                RID2,
                None
            ),
            update("2001:db8::/64", 3, RID2, None),
        ]
    );
    // IPv4: four zero bytes, then the address.
    let (m, _) = ok(&cat(&[
        &[7, 6, 1, 0, 192, 0, 2, 1],
        &update_tlv(1, 0x40, 32, 0, 3, &[10, 0, 0, 1]),
    ]));
    assert_eq!(
        m,
        vec![update(
            "10.0.0.1/32",
            3,
            [0, 0, 0, 0, 10, 0, 0, 1],
            Some(IpAddr::V4(v4("192.0.2.1")))
        )]
    );
    // A prefix giving an all-zeros router-id drops it: the route is ignored.
    let (m, s) = ok(&cat(&[
        &router_id_tlv(RID),
        &update_tlv(2, 0x40, 0, 0, 3, &[]),
        &update_tlv(2, 0, 16, 0, 3, &[0x20, 0x01]),
    ]));
    assert_eq!((m, s.malformed), (vec![], 2));
}

#[test]
fn update_link_local_prefix() {
    // AE 3: fe80::/64 implied, ceil(plen/8) - 8 bytes carried, Omitted must be 0.
    let (m, s) = ok(&cat(&[
        &router_id_tlv(RID),
        &update_tlv(3, 0, 128, 0, 3, &[0, 0, 0, 0, 0, 0, 0, 1]),
        &update_tlv(3, 0, 64, 0, 3, &[]),
        &update_tlv(3, 0, 72, 0, 3, &[0xAB]),
    ]));
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![
            update("fe80::1/128", 3, RID, None),
            update("fe80::/64", 3, RID, None),
            update("fe80:0:0:0:ab00::/72", 3, RID, None),
        ]
    );
    for bad in [
        update_tlv(3, 0, 48, 0, 3, &[]),
        update_tlv(3, 0, 128, 1, 3, &[0; 7]),
        update_tlv(3, 0, 128, 0, 3, &[0; 7]),
    ] {
        let (m, s) = ok(&cat(&[&router_id_tlv(RID), &bad]));
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

#[test]
fn route_requests() {
    // §4.6.10: AE(1) Plen(1) Prefix.
    assert_eq!(
        ok(&[9, 2, 0, 0]).0,
        vec![Msg::RouteRequest { prefix: None }]
    );
    assert_eq!(
        ok(&[9, 5, 1, 24, 10, 1, 2]).0,
        vec![Msg::RouteRequest {
            prefix: Some(net("10.1.2.0/24"))
        }]
    );
    // AE 4 names an IPv4 prefix too.
    assert_eq!(
        ok(&[9, 5, 4, 24, 10, 1, 2]).0,
        vec![Msg::RouteRequest {
            prefix: Some(net("10.1.2.0/24"))
        }]
    );
    assert_eq!(
        ok(&[9, 6, 2, 32, 0x20, 0x01, 0x0d, 0xb8]).0,
        vec![Msg::RouteRequest {
            prefix: Some(net("2001:db8::/32"))
        }]
    );
    // Host bits masked.
    assert_eq!(
        ok(&[9, 4, 1, 12, 10, 0x1F]).0,
        vec![Msg::RouteRequest {
            prefix: Some(net("10.16.0.0/12"))
        }]
    );
    // AE 0 with a plen, short prefix, plen too long: malformed.
    for bad in [
        vec![9, 2, 0, 8],
        vec![9, 4, 1, 24, 10, 1],
        vec![9, 7, 1, 40, 1, 2, 3, 4, 5],
    ] {
        let (m, s) = ok(&bad);
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

fn seqno_request_tlv(ae_: u8, plen: u8, hop: u8, prefix: &[u8]) -> Vec<u8> {
    let mut t = vec![tlv::SEQNO_REQUEST, 0, ae_, plen, 0x01, 0x02, hop, 0];
    t.extend_from_slice(&RID);
    t.extend_from_slice(prefix);
    t[1] = (t.len() - 2) as u8;
    t
}

#[test]
fn seqno_requests() {
    // §4.6.11: AE Plen Seqno(2) HopCount Reserved RouterId(8) Prefix.
    assert_eq!(
        ok(&seqno_request_tlv(
            2,
            64,
            64,
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1]
        ))
        .0,
        vec![Msg::SeqnoRequest {
            prefix: net("2001:db8:0:1::/64"),
            seqno: 0x0102,
            hop_count: 64,
            router_id: RID
        }]
    );
    assert_eq!(
        ok(&seqno_request_tlv(1, 32, 1, &[10, 0, 0, 1])).0,
        vec![Msg::SeqnoRequest {
            prefix: net("10.0.0.1/32"),
            seqno: 0x0102,
            hop_count: 1,
            router_id: RID
        }]
    );
    // AE 0 has no prefix to ask for; hop count 0 is invalid.
    for bad in [
        seqno_request_tlv(0, 0, 5, &[]),
        seqno_request_tlv(1, 8, 0, &[10]),
    ] {
        let (m, s) = ok(&bad);
        assert_eq!((m, s.malformed), (vec![], 1), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Sub-TLVs, unknown TLVs, overruns

#[test]
fn unknown_sub_tlv_skipped_mandatory_ignores_the_tlv() {
    // Non-mandatory unknown sub-TLV (type 5): the Hello is used.
    let (m, s) = ok(&[4, 9, 0, 0, 0, 1, 0, 10, 5, 1, 0xAA]);
    assert_eq!(s, Skipped::default());
    assert_eq!(m.len(), 1);
    // Mandatory (type >= 128): the Hello is ignored, the following Ack is used.
    let (m, s) = ok(&[4, 9, 0, 0, 0, 1, 0, 10, 0x85, 1, 0xAA, 3, 2, 0, 7]);
    assert_eq!(m, vec![Msg::Ack { opaque: 7 }]);
    assert_eq!(
        s,
        Skipped {
            mandatory: 1,
            ..Skipped::default()
        }
    );
    // A sub-TLV overrunning its TLV makes the TLV malformed, not the packet.
    let (m, s) = ok(&[4, 8, 0, 0, 0, 1, 0, 10, 3, 4, 3, 2, 0, 7]);
    assert_eq!(m, vec![Msg::Ack { opaque: 7 }]);
    assert_eq!(s.malformed, 1);
}

#[test]
fn mandatory_sub_tlv_still_updates_parser_state() {
    // RFC 8966 §4.4/§4.6.7-9: Router-Id, Next Hop and the P/R flags of an Update apply
    // even when a mandatory sub-TLV makes the TLV itself ignored.
    let mand = [0x80u8, 0];
    let mut rid = router_id_tlv(RID);
    rid[1] += 2;
    rid.extend_from_slice(&mand);
    let mut nh = vec![7, 8, 1, 0, 192, 0, 2, 1];
    nh.extend_from_slice(&mand);
    let mut up = update_tlv(1, 0x80, 16, 0, 10, &[10, 1]);
    up[1] += 2;
    up.extend_from_slice(&mand);
    let (m, s) = ok(&cat(&[&rid, &nh, &up, &update_tlv(1, 0, 24, 2, 10, &[2])]));
    assert_eq!(s.mandatory, 3);
    assert_eq!(
        m,
        vec![update(
            "10.1.2.0/24",
            10,
            RID,
            Some(IpAddr::V4(v4("192.0.2.1")))
        )]
    );
}

#[test]
fn unknown_tlv_types_are_skipped() {
    let (m, s) = ok(&[200, 3, 1, 2, 3, 11, 0, 3, 2, 0, 7]);
    assert_eq!(m, vec![Msg::Ack { opaque: 7 }]);
    assert_eq!(
        s,
        Skipped {
            unknown_tlv: 2,
            ..Skipped::default()
        }
    );
}

#[test]
fn overrunning_tlv_ends_parsing() {
    // The Hello claims 10 bytes, 2 remain: what came before is kept.
    let (m, s) = ok(&[3, 2, 0, 7, 4, 10, 0, 0]);
    assert_eq!(m, vec![Msg::Ack { opaque: 7 }]);
    assert!(s.overrun);
    // Only a type byte left.
    let (m, s) = ok(&[3, 2, 0, 7, 4]);
    assert_eq!(m, vec![Msg::Ack { opaque: 7 }]);
    assert!(s.overrun);
}

// ---------------------------------------------------------------------------------------
// A capture-like packet as babeld 1.12 sends it

#[test]
fn babeld_hello_ihu_packet() {
    let p = [
        42, 2, 0, 24, // magic, version, body length
        4, 6, 0, 0, 0xA1, 0x5E, 0x01, 0x90, // Hello: flags 0, seqno, interval 400
        5, 14, 3, 0, 0, 96, 0x04, 0xB0, // IHU: AE 3, rxcost 96, interval 1200
        0x02, 0x11, 0x22, 0xFF, 0xFE, 0x33, 0x44, 0x55, // interface id
    ];
    let (m, s) = parse(&p).unwrap();
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![
            Msg::Hello {
                unicast: false,
                seqno: 0xA15E,
                interval: 400,
                timestamp: None
            },
            Msg::Ihu {
                rxcost: 96,
                interval: 1200,
                address: Some(IpAddr::V6(v6("fe80::211:22ff:fe33:4455"))),
                timestamp: None
            },
        ]
    );
    // We encode the same two messages to the same bytes.
    assert_eq!(write(&m), p);
}

// ---------------------------------------------------------------------------------------
// Exact encodings

#[test]
fn encode_hello_ihu_ack_exact() {
    let b = write(&[
        Msg::Hello {
            unicast: true,
            seqno: 1,
            interval: 400,
            timestamp: Some(0x01020304),
        },
        Msg::Ihu {
            rxcost: 256,
            interval: 1200,
            address: Some(IpAddr::V4(v4("192.0.2.7"))),
            timestamp: Some((1, 2)),
        },
        Msg::AckReq {
            opaque: 5,
            interval: 100,
        },
        Msg::Ack { opaque: 5 },
    ]);
    assert_eq!(
        b,
        pkt(&[
            4, 12, 0x80, 0, 0, 1, 1, 0x90, 3, 4, 1, 2, 3, 4, // Hello + timestamp
            5, 20, 1, 0, 1, 0, 4, 0xB0, 192, 0, 2, 7, 3, 8, 0, 0, 0, 1, 0, 0, 0, 2, // IHU
            2, 6, 0, 0, 0, 5, 0, 100, // AckReq
            3, 2, 0, 5, // Ack
        ])
    );
}

#[test]
fn encode_updates_exact() {
    let nh = Some(IpAddr::V4(v4("192.0.2.1")));
    let b = write(&[
        update("10.1.0.0/16", 10, RID, nh),
        update("10.1.2.0/24", 10, RID, nh),
        update("10.1.3.0/24", INFINITY, RID, nh),
        Msg::Update {
            prefix: None,
            v4_via_v6: false,
            interval: 0,
            seqno: 0,
            metric: INFINITY,
            router_id: [0; 8],
            next_hop: None,
        },
    ]);
    assert_eq!(
        b,
        pkt(&cat(&[
            &router_id_tlv(RID),
            &[7, 6, 1, 0, 192, 0, 2, 1],
            &update_tlv(1, 0x80, 16, 0, 10, &[10, 1]),
            &update_tlv(1, 0x80, 24, 2, 10, &[2]),
            &update_tlv(1, 0x80, 24, 2, INFINITY, &[3]),
            &[8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF],
        ]))
    );
    // Requests: never compressed.
    assert_eq!(
        write(&[
            Msg::RouteRequest { prefix: None },
            Msg::RouteRequest {
                prefix: Some(net("2001:db8::/32"))
            },
            Msg::SeqnoRequest {
                prefix: net("10.1.2.0/24"),
                seqno: 0x0102,
                hop_count: 3,
                router_id: RID
            },
        ]),
        pkt(&cat(&[
            &[9, 2, 0, 0],
            &[9, 6, 2, 32, 0x20, 0x01, 0x0d, 0xb8],
            &seqno_request_tlv(1, 24, 3, &[10, 1, 2]),
        ]))
    );
}

#[test]
fn compression_really_compresses() {
    let nh = Some(IpAddr::V4(v4("192.0.2.1")));
    let msgs: Vec<Msg> = (0..100)
        .map(|i| update(&format!("10.0.{i}.0/24"), 10, RID, nh))
        .collect();
    let compressed = write(&msgs);
    // The same updates, none compressed.
    let mut plain = cat(&[&router_id_tlv(RID), &[7, 6, 1, 0, 192, 0, 2, 1]]);
    for i in 0..100u8 {
        plain.extend(update_tlv(1, 0, 24, 0, 10, &[10, 0, i]));
    }
    let plain = pkt(&plain);
    assert_eq!(parse(&plain).unwrap().0, msgs);
    assert_eq!(parse(&compressed).unwrap().0, msgs);
    // 12 + 8 + (12 + 3) + 99 × (12 + 1) vs 20 + 100 × 15.
    assert_eq!(compressed.len(), HEADER_LEN + 20 + 15 + 99 * 13);
    assert_eq!(plain.len(), HEADER_LEN + 20 + 100 * 15);
    // IPv6 /64s under one /48: 1 byte carried instead of 8.
    let msgs6: Vec<Msg> = (0..100)
        .map(|i| update(&format!("2001:db8:1:{i:x}::/64"), 10, RID, None))
        .collect();
    let c6 = write(&msgs6);
    assert_eq!(parse(&c6).unwrap().0, msgs6);
    assert_eq!(c6.len(), HEADER_LEN + 12 + 20 + 99 * 13);
    assert!(c6.len() * 10 < (HEADER_LEN + 12 + 100 * 20) * 7);
}

#[test]
fn router_id_and_next_hop_only_on_change() {
    let nh_a = Some(IpAddr::V6(v6("fe80::a")));
    let nh_b = Some(IpAddr::V6(v6("fe80::b")));
    let msgs = [
        update("2001:db8:1::/48", 1, RID, nh_a),
        update("2001:db8:2::/48", 1, RID, nh_a),
        update("2001:db8:3::/48", 1, RID2, nh_a),
        update("2001:db8:4::/48", 1, RID2, nh_b),
    ];
    let b = write(&msgs);
    let count = |t: u8| {
        let mut i = HEADER_LEN;
        let mut n = 0;
        while i < b.len() {
            n += usize::from(b[i] == t);
            i += 2 + usize::from(b[i + 1]);
        }
        n
    };
    assert_eq!((count(tlv::ROUTER_ID), count(tlv::NEXT_HOP)), (2, 2));
    assert_eq!(parse(&b).unwrap().0, msgs);
}

// ---------------------------------------------------------------------------------------
// Writer limits

#[test]
fn writer_respects_max_and_refusal_leaves_the_packet_intact() {
    let hello = Msg::Hello {
        unicast: false,
        seqno: 1,
        interval: 400,
        timestamp: None,
    };
    let mut w = Writer::new(100);
    let mut accepted = Vec::new();
    while w.push(&hello) {
        accepted.push(hello.clone());
    }
    // 4 + 12 × 8 = 100.
    assert_eq!((w.len(), accepted.len()), (100, 12));
    let mut w = Writer::new(60);
    assert!(w.push(&hello));
    assert!(w.push(&hello));
    assert!(w.push(&hello));
    // 28 bytes used: Router-Id (12) + Next Hop (8) + Update (15) do not fit in the 32 left.
    let up = update("10.1.2.0/24", 1, RID, Some(IpAddr::V4(v4("192.0.2.1"))));
    let before = w.len();
    assert!(!w.push(&up));
    assert_eq!(w.len(), before);
    // Smaller things still go in, and the packet parses to exactly what was accepted.
    assert!(w.push(&Msg::Ack { opaque: 1 }));
    let b = w.finish();
    assert!(b.len() <= 60);
    let (m, s) = parse(&b).unwrap();
    assert_eq!(s, Skipped::default());
    assert_eq!(
        m,
        vec![hello.clone(), hello.clone(), hello, Msg::Ack { opaque: 1 }]
    );
}

#[test]
fn writer_refuses_what_it_cannot_represent() {
    let mut w = Writer::new(1000);
    let v4nh = Some(IpAddr::V4(v4("192.0.2.1")));
    let v6nh = Some(IpAddr::V6(v6("fe80::1")));
    let refused = [
        // Host bits set.
        update("10.1.2.3/24", 1, RID, v4nh),
        // Next hop of the wrong family.
        update("2001:db8::/32", 1, RID, v4nh),
        update("10.0.0.0/8", 1, RID, v6nh),
        // IPv4 route without an IPv4 next hop and not v4-via-v6.
        update("10.0.0.0/8", 1, RID, None),
        // Invalid router-ids on a route.
        update("10.0.0.0/8", 1, [0; 8], v4nh),
        update("10.0.0.0/8", INFINITY, [0xFF; 8], v4nh),
        Msg::Update {
            prefix: Some(net("2001:db8::/32")),
            v4_via_v6: true,
            interval: 1,
            seqno: 1,
            metric: 1,
            router_id: RID,
            next_hop: None,
        },
        Msg::Update {
            prefix: None,
            v4_via_v6: false,
            interval: 1,
            seqno: 1,
            metric: 1,
            router_id: [0; 8],
            next_hop: None,
        },
        Msg::SeqnoRequest {
            prefix: net("10.0.0.0/8"),
            seqno: 1,
            hop_count: 0,
            router_id: RID,
        },
        Msg::RouteRequest {
            prefix: Some(net("10.0.0.1/8")),
        },
    ];
    for m in &refused {
        assert!(!w.push(m), "{m:?}");
    }
    assert!(w.is_empty());
    // None (the packet's source) after an explicit next hop: this packet cannot say it, a
    // fresh one can.
    assert!(w.push(&update("2001:db8::/32", 1, RID, v6nh)));
    let src = update("2001:db8:1::/48", 1, RID, None);
    assert!(!w.push(&src));
    assert!(Writer::new(1000).push(&src));
}

#[test]
fn retraction_without_router_id_round_trips() {
    let v4nh = Some(IpAddr::V4(v4("192.0.2.1")));
    let msgs = [
        update("10.1.0.0/16", 1, RID, v4nh),
        update("10.2.0.0/16", INFINITY, [0; 8], v4nh),
        update("10.3.0.0/16", 1, RID, v4nh),
    ];
    let (m, s) = parse(&write(&msgs)).unwrap();
    assert_eq!(m, msgs);
    // The all-zeros Router-Id that clears the receiver's is counted as malformed.
    assert_eq!(s.malformed, 1);
}

// ---------------------------------------------------------------------------------------
// Properties

fn arb_v4net() -> impl Strategy<Value = Ipv4Net> {
    let addr = prop_oneof![
        any::<u32>(),
        (0u32..4, any::<u16>()).prop_map(|(b, low)| 0x0A00_0000 | (b << 16) | u32::from(low)),
    ];
    (addr, 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
}

fn arb_v6net() -> impl Strategy<Value = Ipv6Net> {
    let addr = prop_oneof![
        any::<u128>(),
        (0u128..4, any::<u64>())
            .prop_map(|(b, low)| (0x2001_0db8u128 << 96) | (b << 80) | u128::from(low) << 16),
        any::<u64>().prop_map(|iid| (0xfe80u128 << 112) | u128::from(iid)),
    ];
    (addr, 0u8..=128).prop_map(|(a, l)| Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc())
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        arb_v4net().prop_map(IpNet::V4),
        arb_v6net().prop_map(IpNet::V6)
    ]
}

fn arb_v6addr() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        any::<u64>().prop_map(|iid| Ipv6Addr::from((0xfe80u128 << 112) | u128::from(iid))),
    ]
}

fn arb_rid() -> impl Strategy<Value = RouterId> {
    prop_oneof![
        Just(RID),
        Just(RID2),
        any::<[u8; 8]>().prop_filter("valid", valid_router_id),
    ]
}

fn arb_simple() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (any::<u16>(), any::<u16>())
            .prop_map(|(opaque, interval)| Msg::AckReq { opaque, interval }),
        any::<u16>().prop_map(|opaque| Msg::Ack { opaque }),
        (
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
            any::<Option<u32>>()
        )
            .prop_map(|(unicast, seqno, interval, timestamp)| Msg::Hello {
                unicast,
                seqno,
                interval,
                timestamp
            }),
        (
            any::<u16>(),
            any::<u16>(),
            prop_oneof![
                Just(None),
                any::<[u8; 4]>().prop_map(|a| Some(IpAddr::V4(a.into()))),
                arb_v6addr().prop_map(|a| Some(IpAddr::V6(a))),
            ],
            any::<Option<(u32, u32)>>()
        )
            .prop_map(|(rxcost, interval, address, timestamp)| Msg::Ihu {
                rxcost,
                interval,
                address,
                timestamp
            }),
        prop::option::of(arb_net()).prop_map(|prefix| Msg::RouteRequest { prefix }),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..=32))
            .prop_map(|(counter, index)| Msg::Pc { counter, index }),
        prop::collection::vec(any::<u8>(), 0..=192)
            .prop_map(|nonce| Msg::ChallengeRequest { nonce }),
        prop::collection::vec(any::<u8>(), 0..=192).prop_map(|nonce| Msg::ChallengeReply { nonce }),
        (arb_net(), any::<u16>(), 1u8..=255, any::<[u8; 8]>()).prop_map(
            |(prefix, seqno, hop_count, router_id)| Msg::SeqnoRequest {
                prefix,
                seqno,
                hop_count,
                router_id
            }
        ),
        (any::<u16>(), any::<u16>()).prop_map(|(interval, seqno)| Msg::Update {
            prefix: None,
            v4_via_v6: false,
            interval,
            seqno,
            metric: INFINITY,
            router_id: [0; 8],
            next_hop: None,
        }),
    ]
}

/// Updates whose next hops follow one per-family plan for the whole packet: IPv4 always
/// has one (from `nh4`), IPv6 (and v4-via-v6) always or never (`nh6`).
fn arb_update(nh4: Vec<Ipv4Addr>, nh6: Option<Vec<Ipv6Addr>>) -> impl Strategy<Value = Msg> {
    (
        arb_net(),
        any::<bool>(),
        any::<u16>(),
        any::<u16>(),
        prop_oneof![any::<u16>(), Just(INFINITY)],
        prop_oneof![4 => arb_rid(), 1 => Just([0u8; 8])],
        any::<usize>(),
    )
        .prop_map(move |(prefix, via6, interval, seqno, metric, rid, k)| {
            let v4_via_v6 = via6 && prefix.addr().is_ipv4();
            let metric = if rid == [0; 8] { INFINITY } else { metric };
            let next_hop = match prefix {
                IpNet::V4(_) if !v4_via_v6 => Some(IpAddr::V4(nh4[k % nh4.len()])),
                _ => nh6.as_ref().map(|v| IpAddr::V6(v[k % v.len()])),
            };
            Msg::Update {
                prefix: Some(prefix),
                v4_via_v6,
                interval,
                seqno,
                metric,
                router_id: rid,
                next_hop,
            }
        })
}

fn arb_msgs() -> impl Strategy<Value = Vec<Msg>> {
    (
        prop::collection::vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 1..3),
        prop::option::of(prop::collection::vec(arb_v6addr(), 1..3)),
    )
        .prop_flat_map(|(nh4, nh6)| {
            prop::collection::vec(prop_oneof![arb_simple(), arb_update(nh4, nh6)], 0..60)
        })
}

/// Anything of the right shape, representable or not.
fn arb_any_msg() -> impl Strategy<Value = Msg> {
    let any_addr = prop_oneof![
        Just(None),
        any::<[u8; 4]>().prop_map(|a| Some(IpAddr::V4(a.into()))),
        arb_v6addr().prop_map(|a| Some(IpAddr::V6(a))),
    ];
    let any_net = prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a.into(), l).unwrap())),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a.into(), l).unwrap())),
        arb_net(),
    ];
    prop_oneof![
        arb_simple(),
        (
            prop::option::of(any_net),
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
            prop_oneof![any::<u16>(), Just(INFINITY)],
            prop_oneof![arb_rid(), Just([0u8; 8]), Just([0xFF; 8])],
            any_addr,
        )
            .prop_map(
                |(prefix, v4_via_v6, interval, seqno, metric, router_id, next_hop)| {
                    Msg::Update {
                        prefix,
                        v4_via_v6,
                        interval,
                        seqno,
                        metric,
                        router_id,
                        next_hop,
                    }
                }
            ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(msgs in arb_msgs()) {
        let b = write(&msgs);
        let (m, s) = parse(&b).unwrap();
        prop_assert_eq!((s.unknown_tlv, s.mandatory, s.overrun), (0, 0, false));
        prop_assert_eq!(m, msgs);
    }

    #[test]
    fn accepted_messages_round_trip_under_any_max(
        msgs in prop::collection::vec(arb_any_msg(), 0..60),
        max in 36usize..400,
    ) {
        let mut w = Writer::new(max);
        let mut accepted = Vec::new();
        for m in &msgs {
            let before = w.len();
            if w.push(m) {
                accepted.push(m.clone());
            } else {
                prop_assert_eq!(w.len(), before);
            }
            prop_assert!(w.len() <= max);
        }
        let b = w.finish();
        prop_assert!(b.len() <= max);
        prop_assert_eq!(parse(&b).unwrap().0, accepted);
    }

    #[test]
    fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse(&bytes);
        // And with a valid header in front, so the TLV walk runs.
        let p = pkt(&bytes);
        if let Ok((m, _)) = parse(&p) {
            prop_assert_eq!(reencode(&m), m);
        }
    }

    #[test]
    fn mutated_packets_parse_and_reencode(
        msgs in arb_msgs(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut b = write(&msgs);
        for (i, v) in edits {
            let i = HEADER_LEN + i % (b.len() - HEADER_LEN + 1).max(1);
            if i < b.len() {
                b[i] = v;
            }
        }
        // Keep the header's length consistent, or cut the body short.
        let body = (b.len() - HEADER_LEN) as u16;
        b[2..4].copy_from_slice(&body.to_be_bytes());
        if let Ok((m, _)) = parse(&b) {
            prop_assert_eq!(reencode(&m), m);
        }
        let cut = HEADER_LEN + cut % (b.len() - HEADER_LEN + 1);
        let p = pkt(&b[HEADER_LEN..cut]);
        if let Ok((m, _)) = parse(&p) {
            prop_assert_eq!(reencode(&m), m);
        }
    }
}
