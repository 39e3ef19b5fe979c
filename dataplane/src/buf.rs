//! Packet buffers and batches.
//!
//! Every worker owns a fixed set of batches allocated once at start; packets are read into
//! their slots, transformed into slots of an output batch and written out, so the steady state
//! allocates nothing. A slot is big enough for the largest datagram we accept; a larger one is
//! truncated by the kernel and dropped as `oversized`.

use std::net::SocketAddr;

/// Bytes per slot: the largest WireGuard datagram we accept (inner MTU up to 1500 plus 32
/// bytes of WireGuard overhead, rounded up) with room to spare.
pub const SLOT_SIZE: usize = 2048;

/// Packets per batch: how many datagrams one recvmmsg/sendmmsg moves.
pub const BATCH_SIZE: usize = 64;

/// One packet buffer.
pub struct Slot {
    buf: Box<[u8; SLOT_SIZE]>,
    /// Bytes of `buf` in use.
    pub len: usize,
    /// Peer address (source on receive, destination on send), for UDP batches.
    pub addr: Option<SocketAddr>,
    /// The datagram did not fit the slot (reported by the backend).
    pub truncated: bool,
    /// For packets to the local side: leave as a frame to this neighbour on a mesh interface
    /// (interface index, address) instead of through the TUN device.
    pub neighbour: Option<(u32, std::net::IpAddr)>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            buf: Box::new([0; SLOT_SIZE]),
            len: 0,
            addr: None,
            truncated: false,
            neighbour: None,
        }
    }
}

impl Slot {
    /// The packet.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The packet, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// The whole buffer, for a backend or an encoder to write into.
    #[inline]
    pub fn buf_mut(&mut self) -> &mut [u8; SLOT_SIZE] {
        &mut self.buf
    }

    /// Copy `bytes` in (used only off the hot path: tests, injected packets).
    pub fn fill(&mut self, bytes: &[u8], addr: Option<SocketAddr>) {
        let n = bytes.len().min(SLOT_SIZE);
        self.buf[..n].copy_from_slice(&bytes[..n]);
        self.len = n;
        self.addr = addr;
        self.truncated = n < bytes.len();
        self.neighbour = None;
    }
}

/// A batch of slots, of which the first `len` hold packets.
pub struct Batch {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new(BATCH_SIZE)
    }
}

impl Batch {
    /// A batch of `capacity` slots, allocated now.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            len: 0,
        }
    }

    /// Slots in use.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// No slot in use.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Every slot is in use.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    /// Forget all packets (slots are kept).
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Mark the first `n` slots as holding packets (after a backend filled them).
    #[inline]
    pub fn set_len(&mut self, n: usize) {
        self.len = n.min(self.slots.len());
    }

    /// The next free slot, not yet counted; call [`Batch::commit`] to keep what was written.
    /// `None` when full.
    #[inline]
    pub fn next_free(&mut self) -> Option<&mut Slot> {
        self.slots.get_mut(self.len)
    }

    /// Keep the slot last returned by [`Batch::next_free`].
    #[inline]
    pub fn commit(&mut self) {
        debug_assert!(self.len < self.slots.len());
        self.len += 1;
    }

    /// The packets.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots[..self.len].iter()
    }

    /// All slots, used or not, for a backend to fill.
    #[inline]
    pub fn slots_mut(&mut self) -> &mut [Slot] {
        &mut self.slots
    }

    /// The used slots.
    #[inline]
    pub fn used(&self) -> &[Slot] {
        &self.slots[..self.len]
    }

    /// Slot `i` (used or not).
    #[inline]
    pub fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }
}
