#![no_main]
//! The userspace API's set parser on arbitrary text.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = isthmus_dataplane::uapi::parse_set(s);
    }
});
