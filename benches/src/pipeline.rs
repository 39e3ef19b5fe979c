//! The forwarding pipeline on the loopback backend, set up for benchmarks.
//!
//! Two set-ups, both with sessions established before anything is measured:
//! - [`Pair`]: A and B peered; packets go from A's TUN, encrypted, to B, decrypted, to B's TUN.
//! - [`Relay`]: A — H — B where A and B know only the hub H; packets from A's TUN are
//!   decrypted and re-encrypted by H in user space and delivered to B's TUN.

use std::net::{Ipv4Addr, SocketAddr};

use isthmus_dataplane::forward::{Core, PeerSpec, Settings};
use isthmus_dataplane::io::loopback::LoopbackNet;
use isthmus_dataplane::keys::Key;
use isthmus_dataplane::tunnel::PeerSettings;

/// A valid IPv4/UDP packet of exactly `len` bytes (at least 28) from `src` to `dst`, with a
/// correct header checksum (UDP checksum 0, which IPv4 allows).
#[must_use]
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let len = len.clamp(28, usize::from(u16::MAX));
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&u16::try_from(len - 20).unwrap_or(u16::MAX).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn key(seed: u8) -> Key {
    Key::from_seed(seed)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 51820))
}

fn node(name: &str, seed: u8) -> std::sync::Arc<Core> {
    let c = Core::new(name, Settings::default());
    c.set_private_key(Some(key(seed)));
    c
}

fn peer(core: &Core, endpoint: Option<SocketAddr>, allowed: &[&str]) -> PeerSpec {
    PeerSpec {
        public_key: core.public_key().unwrap_or_default(),
        endpoint,
        settings: PeerSettings {
            allowed_ips: allowed.iter().filter_map(|a| a.parse().ok()).collect(),
            ..Default::default()
        },
    }
}

/// Errors while setting a pipeline up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The data plane refused a peer.
    #[error("configuring peer on {node}: {source}")]
    Peer {
        /// Which node.
        node: &'static str,
        /// Why.
        source: isthmus_dataplane::forward::CoreError,
    },
    /// The handshake did not complete in memory.
    #[error("no session after the handshake: {0}")]
    NoSession(&'static str),
}

fn upsert(c: &Core, node: &'static str, spec: PeerSpec) -> Result<(), SetupError> {
    c.upsert_peer(spec)
        .map(|_| ())
        .map_err(|source| SetupError::Peer { node, source })
}

/// Two data planes, A (10.0.0.1) and B (10.0.0.2), with an established session.
pub struct Pair {
    /// The network; node 0 is A, node 1 is B.
    pub net: LoopbackNet,
    packet: Vec<u8>,
}

impl Pair {
    /// Build the pair, handshake, and prepare `len`-byte packets from A to B.
    ///
    /// # Errors
    /// When a peer is refused or the handshake does not complete.
    pub fn new(len: usize) -> Result<Self, SetupError> {
        let (a, b) = (node("a", 1), node("b", 2));
        upsert(&a, "a", peer(&b, Some(addr(2)), &["10.0.0.2/32"]))?;
        upsert(&b, "b", peer(&a, Some(addr(1)), &["10.0.0.1/32"]))?;
        let mut net = LoopbackNet::new();
        net.add(a, addr(1));
        net.add(b, addr(2));
        let packet = ipv4_udp(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), len);
        net.send_from_tun(0, &packet);
        net.run(16);
        if net.nodes[1].tun_count != 1 {
            return Err(SetupError::NoSession("A to B"));
        }
        for n in &mut net.nodes {
            n.keep_tun = false;
        }
        Ok(Self { net, packet })
    }

    /// Send `n` packets from A's TUN and run until B has them. Returns how many B delivered.
    pub fn send(&mut self, n: usize) -> u64 {
        let before = self.net.nodes[1].tun_count;
        for _ in 0..n {
            self.net.send_from_tun(0, &self.packet);
        }
        self.net.run(usize::MAX);
        self.net.nodes[1].tun_count - before
    }
}

/// A — H — B: two spokes that only know the hub, with sessions established both ways.
pub struct Relay {
    /// The network; node 0 is A, node 1 is B, node 2 is the hub H.
    pub net: LoopbackNet,
    packet: Vec<u8>,
    b: Option<isthmus_dataplane::io::loopback::Node>,
}

impl Relay {
    /// Build the relay, handshake A–H and H–B, and prepare `len`-byte packets from A to B.
    ///
    /// # Errors
    /// When a peer is refused or a handshake does not complete.
    pub fn new(len: usize) -> Result<Self, SetupError> {
        let (a, b, h) = (node("a", 1), node("b", 2), node("h", 3));
        upsert(&a, "a", peer(&h, Some(addr(3)), &["10.0.0.0/16"]))?;
        upsert(&b, "b", peer(&h, Some(addr(3)), &["10.0.0.0/16"]))?;
        upsert(&h, "h", peer(&a, Some(addr(1)), &["10.0.1.0/24"]))?;
        upsert(&h, "h", peer(&b, Some(addr(2)), &["10.0.2.0/24"]))?;
        let mut net = LoopbackNet::new();
        net.add(a, addr(1));
        net.add(b, addr(2));
        net.add(h, addr(3));
        let packet = ipv4_udp(Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 2, 1), len);
        let back = ipv4_udp(Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 1, 1), len);
        net.send_from_tun(0, &packet);
        net.run(64);
        net.send_from_tun(1, &back);
        net.run(64);
        net.send_from_tun(0, &packet);
        net.run(64);
        if net.nodes[1].tun_count == 0 {
            return Err(SetupError::NoSession("A to B through the hub"));
        }
        if net.nodes[0].tun_count == 0 {
            return Err(SetupError::NoSession("B to A through the hub"));
        }
        for n in &mut net.nodes {
            n.keep_tun = false;
        }
        Ok(Self {
            net,
            packet,
            b: None,
        })
    }

    /// End to end: send `n` packets from A's TUN and run until B has them. Returns how many B
    /// delivered.
    pub fn send(&mut self, n: usize) -> u64 {
        self.attach_b();
        let before = self.net.nodes[1].tun_count;
        for _ in 0..n {
            self.net.send_from_tun(0, &self.packet);
        }
        self.net.run(usize::MAX);
        self.net.nodes[1].tun_count - before
    }

    /// Encrypt `n` packets at A and leave them on the wire to the hub, unprocessed; B is taken
    /// off the network so that what the hub sends goes nowhere (counted as lost).
    pub fn prepare_for_hub(&mut self, n: usize) {
        self.detach_b();
        for _ in 0..n {
            self.net.send_from_tun(0, &self.packet);
        }
        self.net.flush_tun(0);
    }

    /// Let the hub decrypt, route and re-encrypt what [`Relay::prepare_for_hub`] left on the
    /// wire. Returns the number of datagrams the hub sent towards B.
    pub fn run_hub(&mut self) -> u64 {
        let before = self.net.lost();
        self.net.run(usize::MAX);
        self.net.lost() - before
    }

    fn detach_b(&mut self) {
        if self.b.is_none() {
            // Node 1 is B; removing it keeps A at 0 and moves the hub to 1.
            self.b = Some(self.net.nodes.remove(1));
        }
    }

    fn attach_b(&mut self) {
        if let Some(b) = self.b.take() {
            self.net.nodes.insert(1, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_delivers_every_packet() {
        for len in [64, 1420] {
            let mut p = Pair::new(len).unwrap();
            assert_eq!(p.send(1000), 1000);
        }
    }

    #[test]
    fn relay_delivers_every_packet_and_hub_alone_forwards_all() {
        for len in [64, 1420] {
            let mut r = Relay::new(len).unwrap();
            assert_eq!(r.send(500), 500);
            r.prepare_for_hub(500);
            assert_eq!(r.run_hub(), 500);
            // And B can be put back: the session still works.
            assert_eq!(r.send(10), 10);
        }
    }
}
