#![no_main]
//! The AF_XDP frame parsers (what the XDP programs redirect to the XSKs): never a panic, the
//! ranges they return lie in the frame, and a datagram they find builds back into a frame
//! that parses to the same addresses and payload.
use isthmus_dataplane::wire::ether::{build_udp, parse_ip, parse_udp, Macs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(r) = parse_ip(frame) {
        assert!(r.start <= r.end && r.end <= frame.len());
    }
    if let Ok(d) = parse_udp(frame) {
        let (a, b) = d.payload;
        assert!(a <= b && b <= frame.len());
        let payload = &frame[a..b];
        let mut buf = vec![0u8; frame.len() + 64];
        let macs = Macs {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
        };
        let n = build_udp(&mut buf, macs, d.src, d.dst, payload);
        if n > 0 {
            let again = parse_udp(&buf[..n]).expect("a built frame parses");
            assert_eq!((again.src, again.dst), (d.src, d.dst));
            assert_eq!(&buf[again.payload.0..again.payload.1], payload);
        }
    }
});
