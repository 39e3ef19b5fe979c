#![no_main]
//! IP parsing, fragmenting and in-place rewriting on arbitrary bytes.
use isthmus_dataplane::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = data.to_vec();
    if let Ok(m) = wire::parse_ip(&p) {
        assert!(m.total_len <= p.len());
        let _ = wire::is_babel(&m, &p);
    }
    // The MTU from the first two bytes (68 and up is the interesting range, below refused).
    let mtu = usize::from(u16::from_be_bytes([
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    ]) % 1600);
    let mut scratch = [0u8; 2048];
    let mut total = 0;
    if let Ok(n) = wire::fragment_ipv4(&p, mtu, &mut scratch, |f| {
        assert!(f.len() <= mtu);
        assert!(wire::parse_ip(f).is_ok());
        total += 1;
    }) {
        assert_eq!(n, total);
    }
    let _ = wire::clamp_tcp_mss(&mut p, 1380);
    let _ = wire::decrement_ttl(&mut p);
});
