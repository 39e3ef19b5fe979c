//! The longest-prefix-match structure behind [`super::Fib`].
//!
//! A multibit trie with controlled prefix expansion, stored in flat arrays (indices, not
//! pointers), with small buckets at the fringe so that sparse tables (random IPv6 prefixes)
//! do not cost a 256-slot chunk per prefix:
//!
//! - the root is a direct array of `2^16` slots indexed by the first 16 bits of the key;
//! - below it, chunks of 256 slots, each consuming 8 more bits;
//! - a slot is a *leaf* (a next-hop code), a *chunk* (descend) or a *bucket*: up to
//!   [`BUCKET_CAP`] prefixes longer than the slot, scanned longest first, plus the slot's own
//!   leaf value as the default.
//!
//! Keys are `u128`, left-aligned: an IPv4 address is `u128::from(addr) << 96`. A table holds
//! prefixes of one family; `bits` is 32 or 128.
//!
//! Every leaf remembers the length of the prefix it came from (`depth` = length + 1, 0 = no
//! route), kept in parallel arrays that lookups never touch. Inserting a prefix overwrites
//! the slots whose depth is not longer; removing it restores the covering route (found by the
//! caller in its source-of-truth map) in the slots whose depth is exactly its own.

/// Bits consumed by the root array.
const ROOT_BITS: u32 = 16;
/// Bits consumed by each chunk below the root.
const STRIDE: u32 = 8;
/// Slots per chunk.
const CHUNK: usize = 1 << STRIDE;
/// Prefixes a bucket holds before it bursts into a chunk.
pub(crate) const BUCKET_CAP: usize = 4;

/// Slot tag: leaf, payload is a next-hop code.
const TAG_LEAF: u32 = 0;
/// Slot tag: chunk, payload is a chunk index.
const TAG_CHUNK: u32 = 1;
/// Slot tag: bucket, payload is a bucket index.
const TAG_BUCKET: u32 = 2;
/// Payload mask (30 bits).
pub(crate) const PAYLOAD: u32 = (1 << 30) - 1;

#[inline]
fn tag(slot: u32) -> u32 {
    slot >> 30
}

#[inline]
fn make(tag: u32, payload: u32) -> u32 {
    debug_assert!(payload <= PAYLOAD);
    (tag << 30) | payload
}

/// Mask of the first `len` bits of a left-aligned key.
#[inline]
pub(crate) fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// Index of `key` in a table at level `[start, end)`.
#[inline]
fn index(key: u128, start: u32, end: u32) -> usize {
    // `end - start` is at most 16, so the cast keeps every bit that the mask keeps.
    ((key >> (128 - end)) as usize) & ((1usize << (end - start)) - 1)
}

/// Up to [`BUCKET_CAP`] prefixes longer than their slot, sorted longest first, plus the
/// slot's leaf value as default.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    keys: [u128; BUCKET_CAP],
    codes: [u32; BUCKET_CAP],
    lens: [u8; BUCKET_CAP],
    count: u8,
    default_depth: u8,
    default: u32,
}

impl Bucket {
    #[inline]
    fn lookup(&self, key: u128) -> u32 {
        for i in 0..usize::from(self.count).min(BUCKET_CAP) {
            if key & mask(self.lens[i]) == self.keys[i] {
                return self.codes[i];
            }
        }
        self.default
    }

    fn position(&self, key: u128, len: u8) -> Option<usize> {
        (0..usize::from(self.count)).find(|&i| self.lens[i] == len && self.keys[i] == key)
    }

    /// Insert keeping longest-first order. The caller checks that there is room.
    fn push(&mut self, key: u128, len: u8, code: u32) {
        let n = usize::from(self.count);
        let mut i = n;
        while i > 0 && self.lens[i - 1] < len {
            self.keys[i] = self.keys[i - 1];
            self.lens[i] = self.lens[i - 1];
            self.codes[i] = self.codes[i - 1];
            i -= 1;
        }
        self.keys[i] = key;
        self.lens[i] = len;
        self.codes[i] = code;
        self.count += 1;
    }

    fn remove_at(&mut self, at: usize) {
        let n = usize::from(self.count);
        for i in at..n - 1 {
            self.keys[i] = self.keys[i + 1];
            self.lens[i] = self.lens[i + 1];
            self.codes[i] = self.codes[i + 1];
        }
        self.keys[n - 1] = 0;
        self.lens[n - 1] = 0;
        self.codes[n - 1] = 0;
        self.count -= 1;
    }
}

/// Where a slot lives.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Root(usize),
    Chunk(usize),
}

/// The trie for one address family.
#[derive(Debug, Clone)]
pub(crate) struct Lpm {
    root: Vec<u32>,
    root_depth: Vec<u8>,
    chunks: Vec<u32>,
    chunk_depth: Vec<u8>,
    free_chunks: Vec<u32>,
    buckets: Vec<Bucket>,
    free_buckets: Vec<u32>,
}

impl Default for Lpm {
    fn default() -> Self {
        Self::new()
    }
}

impl Lpm {
    /// An empty trie: every slot is a leaf with code 0 (no route).
    pub(crate) fn new() -> Self {
        Self {
            root: vec![0; 1 << ROOT_BITS],
            root_depth: vec![0; 1 << ROOT_BITS],
            chunks: Vec::new(),
            chunk_depth: Vec::new(),
            free_chunks: Vec::new(),
            buckets: Vec::new(),
            free_buckets: Vec::new(),
        }
    }

    /// The next-hop code of the longest prefix containing `key` (0 = none).
    #[inline]
    pub(crate) fn lookup(&self, key: u128) -> u32 {
        let mut slot = self.root[(key >> (128 - ROOT_BITS)) as usize];
        let mut shift = 128 - ROOT_BITS;
        loop {
            match tag(slot) {
                TAG_LEAF => return slot,
                TAG_CHUNK => {
                    // A chunk is never created below the last level, so `shift >= STRIDE`.
                    shift -= STRIDE;
                    let i = ((slot & PAYLOAD) as usize) << STRIDE
                        | ((key >> shift) as usize & (CHUNK - 1));
                    slot = self.chunks[i];
                }
                _ => return self.buckets[(slot & PAYLOAD) as usize].lookup(key),
            }
        }
    }

    /// Bytes held by the arrays (capacity, not just length).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.root.capacity() * 4
            + self.root_depth.capacity()
            + self.chunks.capacity() * 4
            + self.chunk_depth.capacity()
            + self.free_chunks.capacity() * 4
            + self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self.free_buckets.capacity() * 4
    }

    fn get(&self, loc: Loc) -> (u32, u8) {
        match loc {
            Loc::Root(i) => (self.root[i], self.root_depth[i]),
            Loc::Chunk(i) => (self.chunks[i], self.chunk_depth[i]),
        }
    }

    fn set(&mut self, loc: Loc, slot: u32, depth: u8) {
        match loc {
            Loc::Root(i) => {
                self.root[i] = slot;
                self.root_depth[i] = depth;
            }
            Loc::Chunk(i) => {
                self.chunks[i] = slot;
                self.chunk_depth[i] = depth;
            }
        }
    }

    fn alloc_chunk(&mut self, code: u32, depth: u8) -> u32 {
        if let Some(c) = self.free_chunks.pop() {
            let base = (c as usize) << STRIDE;
            self.chunks[base..base + CHUNK].fill(code);
            self.chunk_depth[base..base + CHUNK].fill(depth);
            c
        } else {
            let c = (self.chunks.len() >> STRIDE) as u32;
            assert!(c <= PAYLOAD, "FIB trie out of chunk indices");
            self.chunks.extend(std::iter::repeat(code).take(CHUNK));
            self.chunk_depth.extend(std::iter::repeat(depth).take(CHUNK));
            c
        }
    }

    fn alloc_bucket(&mut self, bucket: Bucket) -> u32 {
        if let Some(b) = self.free_buckets.pop() {
            self.buckets[b as usize] = bucket;
            b
        } else {
            let b = self.buckets.len() as u32;
            assert!(b <= PAYLOAD, "FIB trie out of bucket indices");
            self.buckets.push(bucket);
            b
        }
    }

    /// Make `(key, len)` (key masked to `len`) map to `code`. The caller keeps the
    /// source-of-truth map; this only updates the expanded structure.
    pub(crate) fn insert(&mut self, key: u128, len: u8, code: u32) {
        debug_assert!(code <= PAYLOAD && code != 0);
        let d = u32::from(len);
        if d <= ROOT_BITS {
            let first = index(key, 0, ROOT_BITS);
            for i in first..first + (1usize << (ROOT_BITS - d)) {
                self.set_down(Loc::Root(i), code, len + 1);
            }
        } else {
            let loc = Loc::Root(index(key, 0, ROOT_BITS));
            self.insert_at(loc, ROOT_BITS, key, len, code);
        }
    }

    /// Insert into the subtree of chunk `c`, whose level starts at bit `start`.
    fn insert_below(&mut self, c: usize, start: u32, key: u128, len: u8, code: u32) {
        let d = u32::from(len);
        let end = start + STRIDE;
        let first = index(key, start, end);
        if d <= end {
            for i in first..first + (1usize << (end - d)) {
                self.set_down(Loc::Chunk((c << STRIDE) | i), code, len + 1);
            }
        } else {
            self.insert_at(Loc::Chunk((c << STRIDE) | first), end, key, len, code);
        }
    }

    /// Insert a prefix longer than `end` into the slot `loc`, whose level ends at `end`.
    fn insert_at(&mut self, loc: Loc, end: u32, key: u128, len: u8, code: u32) {
        let (slot, slot_depth) = self.get(loc);
        match tag(slot) {
            TAG_LEAF => {
                let mut b = Bucket { default: slot, default_depth: slot_depth, ..Bucket::default() };
                b.push(key, len, code);
                let b = self.alloc_bucket(b);
                self.set(loc, make(TAG_BUCKET, b), 0);
            }
            TAG_CHUNK => self.insert_below((slot & PAYLOAD) as usize, end, key, len, code),
            _ => {
                let bi = (slot & PAYLOAD) as usize;
                let b = &mut self.buckets[bi];
                if let Some(at) = b.position(key, len) {
                    b.codes[at] = code;
                } else if usize::from(b.count) < BUCKET_CAP {
                    b.push(key, len, code);
                } else {
                    // Burst: the bucket becomes a chunk one level down, filled with its
                    // default, and its prefixes go into that chunk.
                    let old = *b;
                    self.free_buckets.push(bi as u32);
                    let nc = self.alloc_chunk(old.default, old.default_depth);
                    self.set(loc, make(TAG_CHUNK, nc), 0);
                    for k in 0..usize::from(old.count) {
                        self.insert_below(nc as usize, end, old.keys[k], old.lens[k], old.codes[k]);
                    }
                    self.insert_below(nc as usize, end, key, len, code);
                }
            }
        }
    }

    /// A prefix of `depth` (length + 1) covering this slot entirely now maps to `code`:
    /// overwrite every leaf below it whose depth is not longer.
    fn set_down(&mut self, loc: Loc, code: u32, depth: u8) {
        let (slot, slot_depth) = self.get(loc);
        match tag(slot) {
            TAG_LEAF => {
                if slot_depth <= depth {
                    self.set(loc, code, depth);
                }
            }
            TAG_CHUNK => {
                let base = ((slot & PAYLOAD) as usize) << STRIDE;
                for i in base..base + CHUNK {
                    self.set_down(Loc::Chunk(i), code, depth);
                }
            }
            _ => {
                let b = &mut self.buckets[(slot & PAYLOAD) as usize];
                if b.default_depth <= depth {
                    b.default = code;
                    b.default_depth = depth;
                }
            }
        }
    }

    /// Remove `(key, len)`; the slots it filled get `cover` (code, depth) instead: the
    /// longest remaining prefix shorter than `len` that contains it (`(0, 0)` for none).
    pub(crate) fn remove(&mut self, key: u128, len: u8, cover: (u32, u8)) {
        self.remove_in(None, 0, ROOT_BITS, key, len, cover);
    }

    /// Remove within the table `chunk` (None = root) at level `[start, end)`.
    fn remove_in(
        &mut self,
        chunk: Option<usize>,
        start: u32,
        end: u32,
        key: u128,
        len: u8,
        cover: (u32, u8),
    ) {
        let d = u32::from(len);
        let at = |i: usize| match chunk {
            None => Loc::Root(i),
            Some(c) => Loc::Chunk((c << STRIDE) | i),
        };
        if d <= end {
            let first = index(key, start, end);
            for i in first..first + (1usize << (end - d)) {
                self.clear_down(at(i), end, len + 1, cover);
            }
            return;
        }
        let loc = at(index(key, start, end));
        let (slot, _) = self.get(loc);
        match tag(slot) {
            TAG_LEAF => {}
            TAG_CHUNK => {
                let c = (slot & PAYLOAD) as usize;
                self.remove_in(Some(c), end, end + STRIDE, key, len, cover);
                self.try_collapse(loc, end);
            }
            _ => {
                let bi = (slot & PAYLOAD) as usize;
                let b = &mut self.buckets[bi];
                if let Some(p) = b.position(key, len) {
                    b.remove_at(p);
                    if b.count == 0 {
                        let (code, depth) = (b.default, b.default_depth);
                        self.free_buckets.push(bi as u32);
                        self.set(loc, code, depth);
                    }
                }
            }
        }
    }

    /// The prefix of `depth` covering this slot (whose level ends at bit `end`) is gone:
    /// leaves that held it get `cover`.
    fn clear_down(&mut self, loc: Loc, end: u32, depth: u8, cover: (u32, u8)) {
        let (slot, slot_depth) = self.get(loc);
        match tag(slot) {
            TAG_LEAF => {
                if slot_depth == depth {
                    self.set(loc, cover.0, cover.1);
                }
            }
            TAG_CHUNK => {
                let base = ((slot & PAYLOAD) as usize) << STRIDE;
                for i in base..base + CHUNK {
                    self.clear_down(Loc::Chunk(i), end + STRIDE, depth, cover);
                }
                self.try_collapse(loc, end);
            }
            _ => {
                let b = &mut self.buckets[(slot & PAYLOAD) as usize];
                if b.default_depth == depth {
                    b.default = cover.0;
                    b.default_depth = cover.1;
                }
            }
        }
    }

    /// If the chunk in `loc` (a slot whose level ends at bit `end`) holds nothing but one
    /// prefix no longer than `end`, turn it back into a leaf.
    fn try_collapse(&mut self, loc: Loc, end: u32) {
        let (slot, _) = self.get(loc);
        if tag(slot) != TAG_CHUNK {
            return;
        }
        let c = slot & PAYLOAD;
        let base = (c as usize) << STRIDE;
        let first = self.chunks[base];
        let first_depth = self.chunk_depth[base];
        if tag(first) != TAG_LEAF || u32::from(first_depth) > end + 1 {
            return;
        }
        let same = (base..base + CHUNK)
            .all(|i| self.chunks[i] == first && self.chunk_depth[i] == first_depth);
        if same {
            self.free_chunks.push(c);
            self.set(loc, first, first_depth);
        }
    }

    /// Structure counts for reports and tests: (chunks in use, buckets in use).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            (self.chunks.len() >> STRIDE) - self.free_chunks.len(),
            self.buckets.len() - self.free_buckets.len(),
        )
    }
}
