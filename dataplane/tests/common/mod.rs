//! Helpers shared by the loopback tests.
#![allow(dead_code)]

use isthmus_dataplane::keys::Key;

/// A clamped private key made of one repeated byte (deterministic tests).
pub fn key(seed: u8) -> Key {
    let mut k = [seed; 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    Key(k)
}

/// The public key of `k`.
pub fn public(k: Key) -> Key {
    k.public_key()
}
