//! Forwarding information base: longest-prefix match for IPv4 and IPv6.
//!
//! [`Fib`] is the table the hot path reads. It is built off the hot path and published whole
//! through [`FibHandle`] (arc-swap), so readers never take a lock. [`oracle::NaiveFib`] is the
//! slow, obviously-correct linear scan that the fast table is tested against.

mod lpm;
pub mod oracle;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A fast hasher for prefixes and prefix keys: a multiply-xor per word and a full 64-bit
/// finaliser (murmur3's `fmix64`), so keys that differ only in their high bits (IPv4 keys
/// are left-aligned in a `u128`) still spread over every bucket. Several times faster than
/// SipHash on these keys. Not keyed: the keys come from the configuration and the control
/// plane, which are trusted.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixHasher(u64);

impl PrefixHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for PrefixHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.add(u64::from(x));
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.add(u64::from(x));
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }

    #[inline]
    fn write_u128(&mut self, x: u128) {
        // Truncations keep the low and the high half.
        self.add(x as u64);
        self.add((x >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A hash map keyed by prefixes, with [`PrefixHasher`].
pub type PrefixMap<K, V> = HashMap<K, V, BuildHasherDefault<PrefixHasher>>;

/// Index of a peer in the device's peer table.
pub type PeerId = u32;

/// Where a matched packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Encrypt and send to this WireGuard peer.
    Peer(PeerId),
    /// Deliver to the local network stack through the TUN device.
    Local,
    /// Drop (counted as `blackhole`).
    Blackhole,
    /// A neighbour on a mesh interface (what the control plane learns from a Babel router
    /// there): sent as an Ethernet frame through the interface's XSK when the data plane
    /// serves it over AF_XDP, else delivered like [`NextHop::Local`] (the kernel holds the
    /// same route).
    Neighbour {
        /// The interface's index.
        ifindex: u32,
        /// The neighbour's address (IPv6 link-local, or IPv4).
        addr: IpAddr,
    },
}

/// Where a configured or pushed route goes: a [`NextHop`] that names its peer by public key.
/// Static routes, control-plane routes and the control channel use it; it is resolved to a
/// [`NextHop`] when the FIB is built, so it survives the peer's removal and re-creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A WireGuard peer, by public key.
    Peer(crate::keys::Key),
    /// The TUN device.
    Local,
    /// Drop.
    Blackhole,
    /// A neighbour on a mesh interface (see [`NextHop::Neighbour`]).
    Neighbour {
        /// The interface's index.
        ifindex: u32,
        /// The neighbour's address (IPv6 link-local, or IPv4).
        addr: IpAddr,
    },
}

/// Where a FIB route came from; a prefix present in several sources is taken from the
/// highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteOrigin {
    /// A peer's allowed IPs.
    AllowedIps,
    /// An address of the interface itself.
    Connected,
    /// A `[[route]]` of the config file.
    Static,
    /// Pushed by the control plane.
    Control,
}

/// One route: a prefix and its next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix (host bits are zero).
    pub prefix: IpNet,
    /// Next hop.
    pub next_hop: NextHop,
}

/// A longest-prefix-match table for IPv4 and IPv6.
///
/// Inserting a prefix that is present replaces its next hop. Host bits of inserted prefixes
/// are ignored (the prefix is truncated).
///
/// Inside: per family, a multibit trie (16-bit root, 8-bit chunks, small buckets of long
/// prefixes at the fringe; see `lpm.rs`) that lookups read, and a map per prefix length that
/// is the source of truth for `routes`, `remove` and the lengths. Next hops are interned as
/// small codes so the trie's slots are 32-bit words.
#[derive(Debug, Clone, Default)]
pub struct Fib {
    v4: Family,
    v6: Family,
    hops: Hops,
}

/// Memory and shape of a [`Fib`], for reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FibStats {
    /// Bytes held by the IPv4 lookup structure (not counting the route maps).
    pub v4_trie_bytes: usize,
    /// Bytes held by the IPv6 lookup structure (not counting the route maps).
    pub v6_trie_bytes: usize,
    /// 256-slot chunks in use (IPv4, IPv6).
    pub chunks: (usize, usize),
    /// One-cache-line buckets (up to 2 long prefixes) in use (IPv4, IPv6).
    pub buckets: (usize, usize),
    /// Two-cache-line buckets (up to 5 long prefixes) in use (IPv4, IPv6).
    pub big_buckets: (usize, usize),
}

/// One address family: the source-of-truth maps and the trie.
#[derive(Debug, Clone, Default)]
struct Family {
    /// `by_len[l]`: left-aligned prefix key of length `l` -> next-hop code.
    by_len: Vec<PrefixMap<u128, u32>>,
    len: usize,
    trie: lpm::Lpm,
}

impl Family {
    fn ensure_maps(&mut self, bits: u8) {
        if self.by_len.is_empty() {
            self.by_len = (0..=bits).map(|_| PrefixMap::default()).collect();
        }
    }

    /// Insert; returns the previous code of exactly this prefix.
    fn insert(&mut self, bits: u8, key: u128, len: u8, code: u32) -> Option<u32> {
        self.ensure_maps(bits);
        let old = self.by_len[usize::from(len)].insert(key, code);
        if old.is_none() {
            self.len += 1;
        }
        if old != Some(code) {
            self.trie.insert(key, len, code);
        }
        old
    }

    fn remove(&mut self, key: u128, len: u8) -> Option<u32> {
        let old = self.by_len.get_mut(usize::from(len))?.remove(&key)?;
        self.len -= 1;
        let cover = (0..len)
            .rev()
            .find_map(|l| {
                let map = &self.by_len[usize::from(l)];
                if map.is_empty() {
                    return None;
                }
                map.get(&(key & lpm::mask(l))).map(|&code| (code, l + 1))
            })
            .unwrap_or((0, 0));
        self.trie.remove(key, len, cover);
        Some(old)
    }

    fn routes(&self) -> impl Iterator<Item = (u8, u128, u32)> + '_ {
        self.by_len.iter().enumerate().flat_map(|(l, map)| {
            // `by_len` has at most 129 entries.
            let l = l as u8;
            map.iter().map(move |(&key, &code)| (l, key, code))
        })
    }
}

/// Interned next hops: code 0 is "no route", codes from 1 index `table`.
#[derive(Debug, Clone)]
struct Hops {
    /// `table[code]`; `None` at 0 and at free codes.
    table: Vec<Option<NextHop>>,
    /// Routes using each code.
    refs: Vec<u32>,
    codes: HashMap<NextHop, u32>,
    free: Vec<u32>,
}

impl Default for Hops {
    fn default() -> Self {
        Self {
            table: vec![None],
            refs: vec![0],
            codes: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl Hops {
    /// The code for `hop`, counting one more route that uses it.
    fn acquire(&mut self, hop: NextHop) -> u32 {
        let code = match self.codes.get(&hop) {
            Some(&code) => code,
            None => {
                let code = match self.free.pop() {
                    Some(code) => {
                        self.table[code as usize] = Some(hop);
                        code
                    }
                    None => {
                        let code = u32::try_from(self.table.len())
                            .ok()
                            .filter(|&c| c <= lpm::PAYLOAD)
                            .expect("more than 2^30 distinct next hops");
                        self.table.push(Some(hop));
                        self.refs.push(0);
                        code
                    }
                };
                self.codes.insert(hop, code);
                code
            }
        };
        self.refs[code as usize] += 1;
        code
    }

    /// One route fewer uses `code`.
    fn release(&mut self, code: u32) {
        let c = code as usize;
        self.refs[c] -= 1;
        if self.refs[c] == 0 {
            if let Some(hop) = self.table[c].take() {
                self.codes.remove(&hop);
            }
            self.free.push(code);
        }
    }

    #[inline]
    fn get(&self, code: u32) -> Option<NextHop> {
        match self.table.get(code as usize) {
            Some(hop) => *hop,
            None => None,
        }
    }

    fn hop(&self, code: u32) -> NextHop {
        self.get(code).expect("route with a released next-hop code")
    }
}

const V4_BITS: u8 = 32;
const V6_BITS: u8 = 128;

#[inline]
fn key_v4(addr: Ipv4Addr) -> u128 {
    u128::from(u32::from(addr)) << 96
}

#[inline]
fn key_v6(addr: Ipv6Addr) -> u128 {
    u128::from(addr)
}

impl Fib {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a table from routes; later duplicates win.
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut fib = Self::new();
        for r in routes {
            fib.insert(r.prefix, r.next_hop);
        }
        fib.settle();
        fib
    }

    /// After bulk changes: lay the lookup arrays out in huge-page-backed memory (fewer TLB
    /// misses on large tables). Lookups are correct either way.
    pub fn settle(&mut self) {
        self.v4.trie.settle();
        self.v6.trie.settle();
    }

    /// A copy laid out like [`Fib::settle`] leaves a table, made in one copy (cheaper than
    /// `clone` and `settle`).
    pub fn settled_clone(&self) -> Self {
        let family = |f: &Family| Family {
            by_len: f.by_len.clone(),
            len: f.len,
            trie: f.trie.settled_clone(),
        };
        Self {
            v4: family(&self.v4),
            v6: family(&self.v6),
            hops: self.hops.clone(),
        }
    }

    /// Number of prefixes, both families.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Insert or replace a route. Returns the previous next hop of that exact prefix.
    pub fn insert(&mut self, prefix: IpNet, next_hop: NextHop) -> Option<NextHop> {
        let code = self.hops.acquire(next_hop);
        let old = match prefix.trunc() {
            IpNet::V4(p) => self
                .v4
                .insert(V4_BITS, key_v4(p.network()), p.prefix_len(), code),
            IpNet::V6(p) => self
                .v6
                .insert(V6_BITS, key_v6(p.network()), p.prefix_len(), code),
        }?;
        let hop = self.hops.hop(old);
        self.hops.release(old);
        Some(hop)
    }

    /// Remove the route for exactly this prefix.
    pub fn remove(&mut self, prefix: &IpNet) -> Option<NextHop> {
        let old = match prefix.trunc() {
            IpNet::V4(p) => self.v4.remove(key_v4(p.network()), p.prefix_len()),
            IpNet::V6(p) => self.v6.remove(key_v6(p.network()), p.prefix_len()),
        }?;
        let hop = self.hops.hop(old);
        self.hops.release(old);
        Some(hop)
    }

    /// Longest-prefix match.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<NextHop> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// Longest-prefix match for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<NextHop> {
        self.hops.get(self.v4.trie.lookup(key_v4(addr)))
    }

    /// Longest-prefix match for an IPv6 address.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<NextHop> {
        self.hops.get(self.v6.trie.lookup(key_v6(addr)))
    }

    /// Longest-prefix match for a batch of IPv4 addresses: `out[i]` gets the next hop of
    /// `addrs[i]`. Faster per address than [`Fib::lookup_v4`] on large tables, because the
    /// memory accesses of different addresses overlap. Processes `min(addrs.len(), out.len())`
    /// addresses; allocates nothing.
    #[inline]
    pub fn lookup_v4_batch(&self, addrs: &[Ipv4Addr], out: &mut [Option<NextHop>]) {
        const B: usize = 16;
        let mut keys = [0u128; B];
        let mut codes = [0u32; B];
        for (addrs, out) in addrs.chunks(B).zip(out.chunks_mut(B)) {
            let n = addrs.len().min(out.len());
            for (k, a) in keys.iter_mut().zip(addrs) {
                *k = key_v4(*a);
            }
            self.v4.trie.lookup_batch(&keys[..n], &mut codes[..n]);
            for (o, c) in out.iter_mut().zip(&codes[..n]) {
                *o = self.hops.get(*c);
            }
        }
    }

    /// Longest-prefix match for a batch of IPv6 addresses; see [`Fib::lookup_v4_batch`].
    #[inline]
    pub fn lookup_v6_batch(&self, addrs: &[Ipv6Addr], out: &mut [Option<NextHop>]) {
        const B: usize = 16;
        let mut keys = [0u128; B];
        let mut codes = [0u32; B];
        for (addrs, out) in addrs.chunks(B).zip(out.chunks_mut(B)) {
            let n = addrs.len().min(out.len());
            for (k, a) in keys.iter_mut().zip(addrs) {
                *k = key_v6(*a);
            }
            self.v6.trie.lookup_batch(&keys[..n], &mut codes[..n]);
            for (o, c) in out.iter_mut().zip(&codes[..n]) {
                *o = self.hops.get(*c);
            }
        }
    }

    /// Number of IPv4 prefixes.
    pub fn len_v4(&self) -> usize {
        self.v4.len
    }

    /// Number of IPv6 prefixes.
    pub fn len_v6(&self) -> usize {
        self.v6.len
    }

    /// True if the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.v4.len == 0 && self.v6.len == 0
    }

    /// All routes, in no particular order.
    pub fn routes(&self) -> Vec<Route> {
        let v4 = self.v4.routes().map(|(len, key, code)| {
            // Keys of the IPv4 family are 32-bit addresses shifted left by 96.
            let addr = Ipv4Addr::from((key >> 96) as u32);
            (
                IpNet::V4(Ipv4Net::new(addr, len).expect("stored IPv4 prefix length <= 32")),
                code,
            )
        });
        let v6 = self.v6.routes().map(|(len, key, code)| {
            let addr = Ipv6Addr::from(key);
            (
                IpNet::V6(Ipv6Net::new(addr, len).expect("stored IPv6 prefix length <= 128")),
                code,
            )
        });
        v4.chain(v6)
            .map(|(prefix, code)| Route {
                prefix,
                next_hop: self.hops.hop(code),
            })
            .collect()
    }

    /// Memory and shape of the lookup structures.
    pub fn stats(&self) -> FibStats {
        let (c4, b4, g4) = self.v4.trie.counts();
        let (c6, b6, g6) = self.v6.trie.counts();
        FibStats {
            v4_trie_bytes: self.v4.trie.memory_bytes(),
            v6_trie_bytes: self.v6.trie.memory_bytes(),
            chunks: (c4, c6),
            buckets: (b4, b6),
            big_buckets: (g4, g6),
        }
    }
}

/// The published FIB: one writer swaps whole tables in, readers load without locking.
#[derive(Debug, Default)]
pub struct FibHandle {
    current: ArcSwap<Fib>,
}

impl FibHandle {
    /// Publish `fib` as the initial table.
    pub fn new(fib: Fib) -> Self {
        Self {
            current: ArcSwap::from_pointee(fib),
        }
    }

    /// The current table. Cheap; keep the guard for a batch, not forever.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Fib>> {
        self.current.load()
    }

    /// A full reference to the current table.
    pub fn load_full(&self) -> Arc<Fib> {
        self.current.load_full()
    }

    /// Replace the table whole.
    pub fn publish(&self, fib: Fib) {
        self.current.store(Arc::new(fib));
    }

    /// Replace the table whole with `fib`; returns the table it replaced (which readers may
    /// still hold for a moment).
    pub fn swap(&self, fib: Arc<Fib>) -> Arc<Fib> {
        self.current.swap(fib)
    }
}
