//! WireGuard keys: base64 (as `wg` prints them) and hex (as the UAPI carries them),
//! generation, and private-key files that must not be readable by others.

use std::fmt;

/// A 32-byte key (private, public or preshared). `Debug` never prints the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}
