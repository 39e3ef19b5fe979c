//! WireGuard keys: base64 (as `wg` prints them) and hex (as the UAPI carries them),
//! generation, and private-key files that must not be readable by others.

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;

/// A 32-byte key (private, public or preshared). `Debug` never prints the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 44 characters of base64 for 32 bytes.
    #[error("invalid base64 key (expected 44 characters encoding 32 bytes)")]
    Base64,
    /// Not 64 hex digits.
    #[error("invalid hex key (expected 64 hex digits)")]
    Hex,
    /// The key file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error("{path}: key file has mode {mode:04o}; it must not be accessible by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// The file does not hold a key.
    #[error("{path}: {inner}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with its content.
        inner: Box<KeyError>,
    },
}

impl Key {
    /// Parse standard base64 (`wg genkey` output).
    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let s = s.trim();
        if s.len() != 44 {
            return Err(KeyError::Base64);
        }
        let v = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| KeyError::Base64)?;
        Ok(Key(v.try_into().map_err(|_| KeyError::Base64)?))
    }

    /// Standard base64, as `wg` prints keys.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parse 64 hex digits (the UAPI's form).
    pub fn from_hex(s: &str) -> Result<Key, KeyError> {
        let b = decode_hex(s).ok_or(KeyError::Hex)?;
        Ok(Key(b.try_into().map_err(|_| KeyError::Hex)?))
    }

    /// Lowercase hex (the UAPI's form).
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// All zeros (the UAPI's "no key").
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// A new random private key, clamped as `wg genkey` does.
    pub fn generate_private() -> Key {
        let mut k = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
        Key::clamped(k)
    }

    /// A deterministic private key: `seed` repeated, clamped (tests, benchmarks, fuzzing).
    pub fn from_seed(seed: u8) -> Key {
        Key::clamped([seed; 32])
    }

    /// `k` clamped as an X25519 private key.
    fn clamped(mut k: [u8; 32]) -> Key {
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        Key(k)
    }

    /// The X25519 public key of this private key.
    pub fn public_key(&self) -> Key {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        Key(*x25519_dalek::PublicKey::from(&secret).as_bytes())
    }
}

/// Bytes from hex digits (either case, an even number of them); `None` if `s` is not that.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// The text of a secret file (a private key, a Babel MAC key) that only its owner can
/// access: refused, naming the fix, when group or others may read or write it.
pub fn read_secret_file(path: &Path) -> Result<String, KeyError> {
    let p = path.display().to_string();
    let io = |source| KeyError::Io {
        path: p.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: p, mode });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Read a base64 private key from a file that only its owner can access.
pub fn read_private_key_file(path: &Path) -> Result<Key, KeyError> {
    let text = read_secret_file(path)?;
    Key::from_base64(&text).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        inner: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private =
            Key::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        assert_eq!(
            private.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn base64_and_hex_round_trip_and_reject_garbage() {
        let k = Key::generate_private();
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert!(Key::from_base64("short").is_err());
        assert!(Key::from_base64(&"A".repeat(44)).is_err());
        assert!(Key::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(k.0[0] & 7, 0);
        assert_eq!(k.0[31] & 0xc0, 0x40);
        assert_eq!(format!("{k:?}"), "Key(..)");
    }

    #[test]
    fn matches_wg_pubkey() {
        let Ok(out) = std::process::Command::new("wg").arg("genkey").output() else {
            panic!("the wg tool is required (scripts/install-deps.sh installs it)");
        };
        let private = String::from_utf8(out.stdout).unwrap();
        let mut child = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), private.as_bytes()).unwrap();
        let public = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(
            Key::from_base64(&private).unwrap().public_key().to_base64(),
            public.trim()
        );
    }

    #[test]
    fn key_file_permissions_are_enforced() {
        let dir = std::env::temp_dir().join(format!("isthmus-keytest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("private");
        let k = Key::generate_private();
        std::fs::write(&f, format!("{}\n", k.to_base64())).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private_key_file(&f).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("private"), "{e}");
        assert!(!e.contains(&k.to_base64()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_key_file(&f).unwrap(), k);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
