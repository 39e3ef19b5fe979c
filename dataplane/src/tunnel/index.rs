//! Receiver indices on the wire: a secret permutation of boringtun's.
//!
//! boringtun numbers a peer's handshakes `peer id << 8 | counter`, which makes demultiplexing
//! one shift, but also makes the index of a pending handshake easy to guess (the peer id is
//! small, the counter starts at 1). WireGuard's indices are random per handshake; ours are
//! the image of boringtun's under a keyed permutation of the 32-bit space, chosen at random
//! when the device starts. Every index on the wire is therefore unpredictable to whoever has
//! not seen it (a different input gives an unrelated output), and the peer is still found
//! without a table: invert the permutation, shift.
//!
//! The permutation is a balanced Feistel network on two 16-bit halves whose round functions
//! are tables of random 16-bit values (Luby-Rackoff with truly random functions), six
//! rounds. Per packet, inverting it is six table loads.

use rand_core::{OsRng, RngCore};

/// Feistel rounds.
const ROUNDS: usize = 6;

/// A secret permutation of `u32`: boringtun's index ↔ the index on the wire.
pub struct IndexCipher {
    /// Round functions, `ROUNDS` tables of 2^16 entries.
    f: Box<[[u16; 1 << 16]; ROUNDS]>,
}

impl IndexCipher {
    /// A new random permutation (from the operating system's generator).
    pub fn random() -> Self {
        let mut f: Box<[[u16; 1 << 16]; ROUNDS]> = vec![[0u16; 1 << 16]; ROUNDS]
            .into_boxed_slice()
            .try_into()
            .expect("ROUNDS tables");
        let mut bytes = [0u8; 2 << 16];
        for table in f.iter_mut() {
            OsRng.fill_bytes(&mut bytes);
            for (v, b) in table.iter_mut().zip(bytes.chunks_exact(2)) {
                *v = u16::from_le_bytes([b[0], b[1]]);
            }
        }
        Self { f }
    }

    /// The wire index of boringtun's `index`.
    #[inline]
    pub fn seal(&self, index: u32) -> u32 {
        let (mut l, mut r) = ((index >> 16) as u16, index as u16);
        for t in self.f.iter() {
            (l, r) = (r, l ^ t[usize::from(r)]);
        }
        u32::from(l) << 16 | u32::from(r)
    }

    /// boringtun's index of the wire index `wire`.
    #[inline]
    pub fn open(&self, wire: u32) -> u32 {
        let (mut l, mut r) = ((wire >> 16) as u16, wire as u16);
        for t in self.f.iter().rev() {
            (l, r) = (r ^ t[usize::from(l)], l);
        }
        u32::from(l) << 16 | u32::from(r)
    }
}

#[cfg(test)]
mod tests {
    use super::IndexCipher;

    #[test]
    fn open_inverts_seal() {
        let c = IndexCipher::random();
        for i in (0..u32::MAX)
            .step_by(65_521)
            .chain([0, 1, 0x100, 0x101, u32::MAX])
        {
            assert_eq!(c.open(c.seal(i)), i);
            assert_eq!(c.seal(c.open(i)), i);
        }
    }

    #[test]
    fn neighbouring_indices_are_unrelated_on_the_wire() {
        // The first handshakes of the first peers: what an attacker would guess.
        let c = IndexCipher::random();
        let wire: Vec<u32> = (1..64u32)
            .flat_map(|id| (1..4u32).map(move |n| id << 8 | n))
            .map(|i| c.seal(i))
            .collect();
        let mut sorted = wire.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), wire.len(), "a permutation has no collisions");
        // The top 24 bits no longer name the peer: almost all differ.
        let mut tops: Vec<u32> = wire.iter().map(|w| w >> 8).collect();
        tops.sort_unstable();
        tops.dedup();
        assert!(
            tops.len() > wire.len() * 9 / 10,
            "{} distinct of {}",
            tops.len(),
            wire.len()
        );
        // Two devices choose different permutations.
        let d = IndexCipher::random();
        let same = (1..9u32).filter(|n| c.seal(1 << 8 | n) == d.seal(1 << 8 | n));
        assert!(same.count() < 2);
    }
}
