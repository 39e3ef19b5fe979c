#![no_main]
//! The configuration loaders of both daemons on arbitrary text: never a panic, and an error
//! always names the file (FILE:LINE: KEY, what an operator is shown).
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/isthmus/fuzz.toml");
    match isthmus_dataplane::config::parse(text, path) {
        Ok(cfg) => {
            // Allowed IPs have one owner each (a prefix on two peers is refused).
            let mut seen = std::collections::HashSet::new();
            for p in &cfg.peers {
                for a in &p.allowed_ips {
                    assert!(seen.insert(*a), "{a} on two peers");
                }
            }
        }
        Err(e) => assert!(e.to_string().starts_with("/etc/isthmus/fuzz.toml"), "{e}"),
    }
    if let Err(e) = isthmus_controlplane::config::parse(text, path) {
        assert!(e.to_string().starts_with("/etc/isthmus/fuzz.toml"), "{e}");
    }
});
