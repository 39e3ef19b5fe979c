//! The longest-prefix-match structure behind [`super::Fib`].
//!
//! A multibit trie with controlled prefix expansion, stored in flat arrays (indices, not
//! pointers), with small buckets at the fringe so that sparse tables (random IPv6 prefixes)
//! do not cost a 256-slot chunk per prefix:
//!
//! - the root is a direct array of `2^16` slots indexed by the first 16 bits of the key;
//! - below it, chunks of 256 slots, each consuming 8 more bits;
//! - a slot is a *leaf* (a next-hop code), a *chunk* (descend) or a *bucket*: a few prefixes
//!   longer than the slot, scanned longest first, plus the slot's own leaf value as the
//!   default. A small bucket (2 prefixes) is one cache line; when full it grows into a big
//!   one (5 prefixes, two lines), and a full big bucket bursts into a chunk.
//!
//! Keys are `u128`, left-aligned: an IPv4 address is `u128::from(addr) << 96`. A trie holds
//! prefixes of one family.
//!
//! Lookups are bound by memory latency, and how many lookups the CPU overlaps depends on how
//! few instructions each takes: that is why the bucket scan is branch-free with one shift per
//! entry, and why [`Lpm::lookup_batch`] walks many keys level by level.
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
/// Entries of a small bucket (2 prefixes and the default): one cache line.
const SMALL: usize = 3;
/// Entries of a big bucket (5 prefixes and the default): two cache lines. A full small bucket
/// grows into a big one, a full big one bursts into a chunk.
const BIG: usize = 6;

/// Slot tag: leaf, payload is a next-hop code.
const TAG_LEAF: u32 = 0;
/// Slot tag: chunk, payload is a chunk index.
const TAG_CHUNK: u32 = 1;
/// Slot tag: small bucket, payload is an index in `small`.
const TAG_SMALL: u32 = 2;
/// Slot tag: big bucket, payload is an index in `big`.
const TAG_BIG: u32 = 3;
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

/// Up to `N - 1` prefixes longer than their slot, sorted longest first, then the slot's own
/// leaf value (the default) as a last entry (key 0, length 0). `Bucket<3>` is one cache line,
/// `Bucket<6>` two.
///
/// Unused entries are copies of the default entry, so a lookup tests all `N - 1` entries
/// without looking at `count` (no data-dependent branch, few instructions): it starts from the
/// default and scans from the back, each match overwriting the answer, so the longest (first)
/// match wins. A default copy can only give the default's own code.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket<const N: usize> {
    keys: [u128; N],
    codes: [u32; N],
    lens: [u8; N],
    count: u8,
}

const _: () = assert!(std::mem::size_of::<Bucket<SMALL>>() == 64);
const _: () = assert!(std::mem::size_of::<Bucket<BIG>>() == 128);

/// Mask of the first `len` bits for `len` in 1..=128, in one shift. For `len == 0` it gives
/// all ones instead of zero; bucket lookups rely on that only for unused entries, which are
/// copies of the default entry (key 0, length 0) and so at most match key 0 with the default's
/// own code, which is the answer anyway when nothing else matches.
#[inline]
fn mask_bucket(len: u8) -> u128 {
    u128::MAX.wrapping_shl(128 - u32::from(len))
}

impl<const N: usize> Bucket<N> {
    /// Prefixes this bucket holds besides its default.
    const CAP: usize = N - 1;

    fn with_default(code: u32) -> Self {
        Self {
            keys: [0; N],
            codes: [code; N],
            lens: [0; N],
            count: 0,
        }
    }

    #[inline]
    fn lookup(&self, key: u128) -> u32 {
        let mut code = self.codes[N - 1];
        for i in (0..N - 1).rev() {
            if key & mask_bucket(self.lens[i]) == self.keys[i] {
                code = self.codes[i];
            }
        }
        code
    }

    fn default_code(&self) -> u32 {
        self.codes[N - 1]
    }

    fn set_default(&mut self, code: u32) {
        for i in usize::from(self.count)..N {
            self.codes[i] = code;
        }
    }

    fn is_full(&self) -> bool {
        usize::from(self.count) == Self::CAP
    }

    fn position(&self, key: u128, len: u8) -> Option<usize> {
        (0..usize::from(self.count)).find(|&i| self.lens[i] == len && self.keys[i] == key)
    }

    /// Insert keeping longest-first order. The caller checks that there is room.
    fn push(&mut self, key: u128, len: u8, code: u32) {
        debug_assert!(!self.is_full());
        let mut i = usize::from(self.count);
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
        // The freed entry becomes a copy of the default entry.
        self.keys[n - 1] = 0;
        self.lens[n - 1] = 0;
        self.codes[n - 1] = self.codes[N - 1];
        self.count -= 1;
    }

    fn entries(&self) -> impl Iterator<Item = (u128, u8, u32)> + '_ {
        (0..usize::from(self.count)).map(|i| (self.keys[i], self.lens[i], self.codes[i]))
    }
}

/// A pool of buckets of one size, with the depth of each bucket's default (updates only).
#[derive(Debug, Clone)]
struct Pool<const N: usize> {
    items: Vec<Bucket<N>>,
    depth: Vec<u8>,
    free: Vec<u32>,
}

impl<const N: usize> Pool<N> {
    /// A pool whose index 0 is a dummy bucket that is never handed out (no prefixes, default
    /// code 0), so a lookup may scan `items[0]` for a slot that is a leaf.
    fn new() -> Self {
        Self {
            items: vec![Bucket::with_default(0)],
            depth: vec![0],
            free: Vec::new(),
        }
    }

    fn alloc(&mut self, bucket: Bucket<N>, default_depth: u8) -> u32 {
        if let Some(b) = self.free.pop() {
            self.items[b as usize] = bucket;
            self.depth[b as usize] = default_depth;
            b
        } else {
            let b = self.items.len() as u32;
            assert!(b <= PAYLOAD, "FIB trie out of bucket indices");
            self.items.push(bucket);
            self.depth.push(default_depth);
            b
        }
    }

    /// A covering prefix of `depth` now maps to `code`: take it as default if not shorter.
    fn set_down(&mut self, b: usize, code: u32, depth: u8) {
        if self.depth[b] <= depth {
            self.items[b].set_default(code);
            self.depth[b] = depth;
        }
    }

    /// The covering prefix of `depth` is gone: if it was the default, take `cover`.
    fn clear_down(&mut self, b: usize, depth: u8, cover: (u32, u8)) {
        if self.depth[b] == depth {
            self.items[b].set_default(cover.0);
            self.depth[b] = cover.1;
        }
    }

    /// Remove `(key, len)`; if the bucket is now empty, free it and return its default.
    fn remove(&mut self, b: usize, key: u128, len: u8) -> Option<(u32, u8)> {
        let bucket = &mut self.items[b];
        let at = bucket.position(key, len)?;
        bucket.remove_at(at);
        if bucket.count > 0 {
            return None;
        }
        self.free.push(b as u32);
        Some((bucket.default_code(), self.depth[b]))
    }

    fn in_use(&self) -> usize {
        self.items.len() - 1 - self.free.len()
    }

    fn memory_bytes(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<Bucket<N>>()
            + self.depth.capacity()
            + self.free.capacity() * 4
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
    small: Pool<SMALL>,
    big: Pool<BIG>,
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
            small: Pool::new(),
            big: Pool::new(),
        }
    }

    /// Move the arrays lookups read into huge-page-backed memory (after a bulk build).
    pub(crate) fn settle(&mut self) {
        self.root = crate::sys::huge_page_copy(&self.root);
        self.chunks = crate::sys::huge_page_copy(&self.chunks);
        self.small.items = crate::sys::huge_page_copy(&self.small.items);
        self.big.items = crate::sys::huge_page_copy(&self.big.items);
    }

    /// A copy whose lookup arrays are laid out in huge-page-backed memory: a clone and a
    /// [`Lpm::settle`] in one copy.
    pub(crate) fn settled_clone(&self) -> Self {
        Self {
            root: crate::sys::huge_page_copy(&self.root),
            root_depth: self.root_depth.clone(),
            chunks: crate::sys::huge_page_copy(&self.chunks),
            chunk_depth: self.chunk_depth.clone(),
            free_chunks: self.free_chunks.clone(),
            small: Pool {
                items: crate::sys::huge_page_copy(&self.small.items),
                depth: self.small.depth.clone(),
                free: self.small.free.clone(),
            },
            big: Pool {
                items: crate::sys::huge_page_copy(&self.big.items),
                depth: self.big.depth.clone(),
                free: self.big.free.clone(),
            },
        }
    }

    /// The next-hop code of the longest prefix containing `key` (0 = none).
    #[inline(always)]
    pub(crate) fn lookup(&self, key: u128) -> u32 {
        let mut slot = self.root[(key >> (128 - ROOT_BITS)) as usize];
        let mut shift = 128 - ROOT_BITS;
        while tag(slot) == TAG_CHUNK {
            // A chunk is never created below the last level, so `shift >= STRIDE` here.
            shift -= STRIDE;
            let i = ((slot & PAYLOAD) as usize) << STRIDE | ((key >> shift) as usize & (CHUNK - 1));
            slot = self.chunks[i];
        }
        self.finish(slot, key)
    }

    /// The answer for a slot that is not a chunk: a leaf's own code, or a bucket scan. Leaves
    /// and small buckets share one code path (a leaf scans the dummy bucket 0 and keeps its
    /// own code), which measured faster on a random leaf/bucket mix than a three-way match.
    #[inline(always)]
    fn finish(&self, slot: u32, key: u128) -> u32 {
        let t = tag(slot);
        let p = (slot & PAYLOAD) as usize;
        if t == TAG_BIG {
            return self.big.items[p].lookup(key);
        }
        let is_small = t == TAG_SMALL;
        let code = self.small.items[if is_small { p } else { 0 }].lookup(key);
        if is_small {
            code
        } else {
            slot
        }
    }

    /// Look up many keys, level by level: the loads of one level are independent of each
    /// other, so their cache misses can overlap instead of forming one chain per key.
    /// `out[i]` gets the code for `keys[i]`.
    #[inline]
    pub(crate) fn lookup_batch(&self, keys: &[u128], out: &mut [u32]) {
        const B: usize = 16;
        for (keys, out) in keys.chunks(B).zip(out.chunks_mut(B)) {
            let n = keys.len().min(out.len());
            let mut slots = [0u32; B];
            for i in 0..n {
                slots[i] = self.root[(keys[i] >> (128 - ROOT_BITS)) as usize];
            }
            // Every chunk level has the same stride, so all keys still in a chunk consume the
            // same bits.
            let mut shift = 128 - ROOT_BITS;
            while shift >= STRIDE {
                shift -= STRIDE;
                let mut more = false;
                for i in 0..n {
                    let slot = slots[i];
                    if tag(slot) == TAG_CHUNK {
                        let j = ((slot & PAYLOAD) as usize) << STRIDE
                            | ((keys[i] >> shift) as usize & (CHUNK - 1));
                        slots[i] = self.chunks[j];
                        more = true;
                    }
                }
                if !more {
                    break;
                }
            }
            for i in 0..n {
                out[i] = self.finish(slots[i], keys[i]);
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
            + self.small.memory_bytes()
            + self.big.memory_bytes()
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
            self.chunks.resize(self.chunks.len() + CHUNK, code);
            self.chunk_depth
                .resize(self.chunk_depth.len() + CHUNK, depth);
            c
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
        let p = (slot & PAYLOAD) as usize;
        match tag(slot) {
            TAG_LEAF => {
                let mut b = Bucket::<SMALL>::with_default(slot);
                b.push(key, len, code);
                let b = self.small.alloc(b, slot_depth);
                self.set(loc, make(TAG_SMALL, b), 0);
            }
            TAG_CHUNK => self.insert_below(p, end, key, len, code),
            TAG_SMALL => {
                let b = &mut self.small.items[p];
                if let Some(at) = b.position(key, len) {
                    b.codes[at] = code;
                } else if !b.is_full() {
                    b.push(key, len, code);
                } else {
                    // Grow into a big bucket.
                    let old = *b;
                    let depth = self.small.depth[p];
                    self.small.free.push(p as u32);
                    let mut nb = Bucket::<BIG>::with_default(old.default_code());
                    for (k, l, c) in old.entries() {
                        nb.push(k, l, c);
                    }
                    nb.push(key, len, code);
                    let nb = self.big.alloc(nb, depth);
                    self.set(loc, make(TAG_BIG, nb), 0);
                }
            }
            _ => {
                let b = &mut self.big.items[p];
                if let Some(at) = b.position(key, len) {
                    b.codes[at] = code;
                } else if !b.is_full() {
                    b.push(key, len, code);
                } else {
                    // Burst: the bucket becomes a chunk one level down, filled with its
                    // default, and its prefixes go into that chunk.
                    let old = *b;
                    let depth = self.big.depth[p];
                    self.big.free.push(p as u32);
                    let nc = self.alloc_chunk(old.default_code(), depth);
                    self.set(loc, make(TAG_CHUNK, nc), 0);
                    for (k, l, c) in old.entries() {
                        self.insert_below(nc as usize, end, k, l, c);
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
            TAG_SMALL => self.small.set_down((slot & PAYLOAD) as usize, code, depth),
            _ => self.big.set_down((slot & PAYLOAD) as usize, code, depth),
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
            TAG_SMALL => {
                if let Some((code, depth)) = self.small.remove((slot & PAYLOAD) as usize, key, len)
                {
                    self.set(loc, code, depth);
                }
            }
            _ => {
                let p = (slot & PAYLOAD) as usize;
                if let Some((code, depth)) = self.big.remove(p, key, len) {
                    self.set(loc, code, depth);
                } else if usize::from(self.big.items[p].count) < SMALL {
                    // Shrink back into a small bucket (if the prefix was there at all, the
                    // big bucket had more than SMALL - 1 entries before).
                    let old = self.big.items[p];
                    let depth = self.big.depth[p];
                    self.big.free.push(p as u32);
                    let mut nb = Bucket::<SMALL>::with_default(old.default_code());
                    for (k, l, c) in old.entries() {
                        nb.push(k, l, c);
                    }
                    let nb = self.small.alloc(nb, depth);
                    self.set(loc, make(TAG_SMALL, nb), 0);
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
            TAG_SMALL => self
                .small
                .clear_down((slot & PAYLOAD) as usize, depth, cover),
            _ => self.big.clear_down((slot & PAYLOAD) as usize, depth, cover),
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

    /// Structure counts for reports and tests: (chunks, small buckets, big buckets) in use.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (
            (self.chunks.len() >> STRIDE) - self.free_chunks.len(),
            self.small.in_use(),
            self.big.in_use(),
        )
    }
}
