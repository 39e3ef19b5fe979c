#![no_main]
//! IP parsing and in-place rewriting on arbitrary bytes.
use isthmus_dataplane::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = data.to_vec();
    if let Ok(m) = wire::parse_ip(&p) {
        assert!(m.total_len <= p.len());
        let _ = wire::is_babel(&m, &p);
    }
    let _ = wire::clamp_tcp_mss(&mut p, 1380);
    let _ = wire::decrement_ttl(&mut p);
});
