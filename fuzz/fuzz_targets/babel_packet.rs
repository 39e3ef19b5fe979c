#![no_main]
//! Babel packets: `parse` never panics, and whatever it decodes re-encodes with `Writer` to
//! packets that parse back to the same messages (split over several packets only if the
//! re-encoding is larger than 64 KiB).
use isthmus_controlplane::babel::packet::{parse, Writer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((msgs, _)) = parse(data) else {
        return;
    };
    let mut packets = Vec::new();
    let mut w = Writer::new(65535);
    for m in &msgs {
        if !w.push(m) {
            packets.push(std::mem::replace(&mut w, Writer::new(65535)).finish());
            assert!(w.push(m), "a parsed message must fit a fresh packet: {m:?}");
        }
    }
    packets.push(w.finish());
    let mut again = Vec::new();
    for p in &packets {
        let (m, skipped) = parse(p).expect("our own packet parses");
        assert_eq!(skipped.unknown_tlv, 0);
        assert_eq!(skipped.mandatory, 0);
        assert!(!skipped.overrun);
        again.extend(m);
    }
    assert_eq!(again, msgs);
});
