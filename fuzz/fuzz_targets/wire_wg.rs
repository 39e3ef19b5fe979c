#![no_main]
//! WireGuard message classification.
use isthmus_dataplane::wire::wg::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(m) = Message::classify(data) {
        assert_eq!(m.message_type(), data[0]);
        let _ = m.receiver_index();
    }
});
