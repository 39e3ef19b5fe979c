//! Helpers shared by the loopback tests.
#![allow(dead_code)]

use isthmus_dataplane::keys::Key;

/// A clamped private key made of one repeated byte (deterministic tests).
pub fn key(seed: u8) -> Key {
    Key::from_seed(seed)
}

/// The public key of `k`.
pub fn public(k: Key) -> Key {
    k.public_key()
}
