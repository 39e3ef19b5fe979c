#![no_main]
//! The control channel's decoder (what isthmus-dp reads from isthmus-cp and isthmusctl, and
//! isthmus-cp from isthmus-dp): never panics, never allocates past what the body could hold,
//! and whatever it accepts encodes back to a body that decodes to the same message.
use isthmus_dataplane::ctl::proto::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(data) {
        let mut again = Vec::new();
        encode(&msg, &mut again);
        let back = decode(&again[4..]).expect("an encoded message decodes");
        assert_eq!(back, msg);
    }
});
