//! The XDP program of the AF_XDP backend, and its maps.
//!
//! On an underlay interface it redirects to the XSK of the receiving queue exactly the
//! frames the UDP socket would have received: untagged Ethernet, IPv4 without options and
//! not a fragment, or IPv6 whose next header is UDP, addressed to one of the gateway's own
//! addresses *and* the WireGuard port (one hash lookup: the key is address + port). Every
//! other frame (ARP, NDP, ICMP, TCP to the box, Babel multicast, other UDP, VLANs,
//! fragments, IP options, extension headers) passes to the kernel untouched, and so does a
//! matching frame on a queue that has no XSK: the kernel's UDP socket still serves the port.
//!
//! ```text
//! r6 = ctx; r2 = data; r3 = data_end
//! ethertype 0x0800 → v4 | 0x86dd → v6 | else pass
//! v4: 42 bytes | ver/ihl 0x45 | proto 17 | no MF, offset 0 | key {daddr, dport} ∈ local4
//! v6: 62 bytes | next header 17 | key {daddr, dport} ∈ local6
//! redirect: bpf_redirect_map(xsks, rx_queue_index, XDP_PASS)
//! pass: XDP_PASS
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::bpf::{
    action, helper, Asm, Cond, Label, Map, MapType, Program, Size, R0, R1, R10, R2, R3, R4, R5, R6,
    R7, R8, R9,
};

/// Key of `local4`: address, port (network order), two zero bytes.
const KEY4: u32 = 8;
/// Key of `local6`: address, port (network order), two zero bytes.
const KEY6: u32 = 20;
/// Own address + port pairs per family.
const MAX_LOCAL: u32 = 1024;

/// The program and its maps, loaded (not yet attached).
#[derive(Debug)]
pub struct XdpProgram {
    /// Queue index → XSK.
    pub xsks: Map,
    local4: Map,
    local6: Map,
    /// The loaded program.
    pub prog: Program,
}

/// Offsets into the frame (untagged Ethernet).
mod off {
    pub const ETHERTYPE: i16 = 12;
    pub const V4_VER_IHL: i16 = 14;
    pub const V4_FRAG: i16 = 20;
    pub const V4_PROTO: i16 = 23;
    pub const V4_DADDR: i16 = 30;
    pub const V4_DPORT: i16 = 36;
    pub const V4_MIN: i32 = 42;
    pub const V6_NEXT: i16 = 20;
    pub const V6_DADDR: i16 = 38;
    pub const V6_DPORT: i16 = 56;
    pub const V6_MIN: i32 = 62;
}

/// `htons(x)` as the little- or big-endian load of a `u16` sees it.
fn be16(x: u16) -> i32 {
    i32::from(u16::from_ne_bytes(x.to_be_bytes()))
}

impl XdpProgram {
    /// Create the maps (`queues` XSK slots) and load the program. `miss` is the action
    /// for a matching frame on a queue with no XSK (`XDP_PASS`; tests use another to see
    /// the match).
    pub fn load(queues: u32, miss: u32) -> io::Result<XdpProgram> {
        let xsks = Map::create(MapType::XskMap, 4, 4, queues.max(1), 0, "isthmus_xsks")?;
        let local4 = Map::create(MapType::Hash, KEY4, 4, MAX_LOCAL, 0, "isthmus_local4")?;
        let local6 = Map::create(MapType::Hash, KEY6, 4, MAX_LOCAL, 0, "isthmus_local6")?;
        let mut a = Asm::default();
        let (pass, v4, redirect) = (a.label(), a.label(), a.label());

        a.mov(R6, R1);
        a.load(Size::W, R2, R1, 0); // data
        a.load(Size::W, R3, R1, 4); // data_end
        a.mov(R4, R2);
        a.add_imm(R4, off::V4_MIN);
        a.jump_reg(Cond::Gt, R4, R3, pass);
        a.load(Size::H, R5, R2, off::ETHERTYPE);
        a.jump_imm(Cond::Eq, R5, be16(0x0800), v4);
        a.jump_imm(Cond::Ne, R5, be16(0x86dd), pass);

        // IPv6.
        a.mov(R4, R2);
        a.add_imm(R4, off::V6_MIN);
        a.jump_reg(Cond::Gt, R4, R3, pass);
        a.load(Size::B, R5, R2, off::V6_NEXT);
        a.jump_imm(Cond::Ne, R5, 17, pass);
        a.copy_words(R2, off::V6_DADDR, 4, -24);
        a.load(Size::H, R5, R2, off::V6_DPORT);
        a.store(Size::W, R10, -8, R5);
        a.map_lookup(&local6, -24);
        a.jump_imm(Cond::Eq, R0, 0, pass);
        a.jump(redirect);

        // IPv4.
        a.bind(v4);
        a.load(Size::B, R5, R2, off::V4_VER_IHL);
        a.jump_imm(Cond::Ne, R5, 0x45, pass);
        a.load(Size::B, R5, R2, off::V4_PROTO);
        a.jump_imm(Cond::Ne, R5, 17, pass);
        a.load(Size::H, R5, R2, off::V4_FRAG);
        a.and_imm(R5, be16(0x3fff));
        a.jump_imm(Cond::Ne, R5, 0, pass);
        a.copy_words(R2, off::V4_DADDR, 1, -8);
        a.load(Size::H, R5, R2, off::V4_DPORT);
        a.store(Size::W, R10, -4, R5);
        a.map_lookup(&local4, -8);
        a.jump_imm(Cond::Eq, R0, 0, pass);

        a.bind(redirect);
        redirect_else_pass(&mut a, &xsks, miss, pass);

        let prog = Program::load_xdp("isthmus_xdp", &a.finish())?;
        Ok(XdpProgram {
            xsks,
            local4,
            local6,
            prog,
        })
    }

    fn key(addr: SocketAddr) -> (bool, Vec<u8>) {
        let mut k = match addr.ip() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        k.extend_from_slice(&addr.port().to_be_bytes());
        k.extend_from_slice(&[0, 0]);
        (addr.is_ipv4(), k)
    }

    /// Make the set of local address + port pairs exactly `want`: frames to them go to the
    /// XSKs.
    pub fn set_locals(&self, want: &[SocketAddr]) -> io::Result<()> {
        let keys: Vec<(bool, Vec<u8>)> = want.iter().map(|&a| Self::key(a)).collect();
        set_keys(&self.local4, &self.local6, &keys)
    }

    /// Bind queue `queue`'s slot to the XSK `fd`.
    pub fn set_xsk(&self, queue: u32, fd: i32) -> io::Result<()> {
        self.xsks
            .update(&queue.to_ne_bytes(), &(fd as u32).to_ne_bytes())
    }
}

/// Emit the end of a program: redirect to the XSK of the receiving queue (`miss` when it has
/// none; r6 is the context), and the `pass` label's `XDP_PASS`.
fn redirect_else_pass(a: &mut Asm, xsks: &Map, miss: u32, pass: Label) {
    a.load(Size::W, R2, R6, 16); // rx_queue_index
    a.load_map(R1, xsks);
    a.mov_imm(R3, miss as i32);
    a.call(helper::REDIRECT_MAP);
    a.exit();
    a.bind(pass);
    a.mov_imm(R0, action::PASS as i32);
    a.exit();
}

/// Emit the mesh program's route check for a destination address of `words` 32-bit words at
/// `r7 + daddr`: on to the next instruction when its longest match in `tunnel` is a tunnel
/// route (value 1) and it is not in `own`, else to `pass`. The LPM key {prefix length =
/// the address's bits, address} goes to the stack's top, the address alone right after the
/// length word (own's key). r1-r5 clobbered.
fn tunnel_route_not_ours(
    a: &mut Asm,
    daddr: i16,
    words: i16,
    tunnel: &Map,
    own: &Map,
    pass: Label,
) {
    let key = -4 * (words + 1);
    a.mov_imm(R5, i32::from(words) * 32);
    a.store(Size::W, R10, key, R5);
    a.copy_words(R7, daddr, words, key + 4);
    a.map_lookup(tunnel, key);
    a.jump_imm(Cond::Eq, R0, 0, pass);
    a.load(Size::W, R5, R0, 0);
    a.jump_imm(Cond::Eq, R5, 0, pass);
    a.map_lookup(own, key + 4);
    a.jump_imm(Cond::Ne, R0, 0, pass);
}

/// Make a pair of hash maps (IPv4 keys in `v4`, IPv6 keys in `v6`) hold exactly `keys`
/// (family, key bytes), each with the value 1.
fn set_keys(v4: &Map, v6: &Map, keys: &[(bool, Vec<u8>)]) -> io::Result<()> {
    for (is_v4, map) in [(true, v4), (false, v6)] {
        for k in map.keys()? {
            if !keys.iter().any(|(f, w)| *f == is_v4 && *w == k) {
                map.delete(&k)?;
            }
        }
    }
    for (is_v4, k) in keys {
        let map = if *is_v4 { v4 } else { v6 };
        map.update(k, &1u32.to_ne_bytes())?;
    }
    Ok(())
}

/// Routes per family that the mesh program's tunnel table holds at most.
pub const MAX_TUNNEL_ROUTES: u32 = 1 << 20;

/// The XDP program of a mesh interface, and its maps.
///
/// It redirects to the XSK of the receiving queue the IP packets that the gateway routes into
/// a tunnel: unicast to the interface's MAC address, IPv4 without options or IPv6, TTL / hop
/// limit above 1, no longer than the tunnel MTU, to a destination that is not multicast,
/// link-local or one of the box's own addresses, and whose longest match in `tunnel4` /
/// `tunnel6` (kept equal to the FIB by the data plane) is a tunnel route. Everything else
/// passes to the kernel untouched: ARP, NDP, Babel, traffic to the box, packets that need an
/// ICMP error (TTL 1, too big), routes that stay in the kernel.
///
/// ```text
/// r6 = ctx; r7 = data; r8 = data_end
/// 34 bytes | dst MAC = ours | ethertype 0x0800 → v4 | 0x86dd → v6 | else pass
/// v4: ver/ihl 0x45 | ttl > 1 | daddr < 224.0.0.0 | r9 = total length
///     tunnel4[{32, daddr}] == 1 | daddr ∉ own4
/// v6: 54 bytes | hop limit > 1 | daddr not ff00::/8, not fe80::/10 | r9 = 40 + payload length
///     tunnel6[{128, daddr}] == 1 | daddr ∉ own6
/// r9 <= cfg[0] (the MTU) → redirect: bpf_redirect_map(xsks, rx_queue_index, XDP_PASS)
/// ```
#[derive(Debug)]
pub struct MeshProgram {
    /// Queue index → XSK.
    pub xsks: Map,
    tunnel4: Map,
    tunnel6: Map,
    own4: Map,
    own6: Map,
    cfg: Map,
    /// The loaded program.
    pub prog: Program,
}

/// Where each kind of prefix leads in the mesh program's tunnel tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshRoute {
    /// Into a tunnel: redirect.
    Tunnel,
    /// Elsewhere (local, another mesh neighbour, blackhole): pass to the kernel. Kept in the
    /// table so that it shadows a shorter tunnel route, as in the FIB.
    Other,
}

/// Offsets into the frame (untagged Ethernet), for the mesh program.
mod moff {
    pub const V4_TOTAL_LEN: i16 = 16;
    pub const V4_TTL: i16 = 22;
    pub const V6_PAYLOAD_LEN: i16 = 18;
    pub const V6_HOP_LIMIT: i16 = 21;
    pub const V6_MIN: i32 = 54;
    pub const V4_MIN: i32 = 34;
}

impl MeshProgram {
    /// Create the maps (`queues` XSK slots) and load the program for an interface whose
    /// link-layer address is `mac`. `miss` is the action for a matching frame on a queue
    /// with no XSK (`XDP_PASS`; tests use another to see the match).
    pub fn load(mac: [u8; 6], queues: u32, miss: u32) -> io::Result<MeshProgram> {
        let xsks = Map::create(MapType::XskMap, 4, 4, queues.max(1), 0, "isthmus_mxsks")?;
        let lpm = |len: u32, name: &str| {
            Map::create(
                MapType::LpmTrie,
                4 + len,
                4,
                MAX_TUNNEL_ROUTES,
                super::bpf::F_NO_PREALLOC,
                name,
            )
        };
        let tunnel4 = lpm(4, "isthmus_tun4")?;
        let tunnel6 = lpm(16, "isthmus_tun6")?;
        let own4 = Map::create(MapType::Hash, 4, 4, MAX_LOCAL, 0, "isthmus_own4")?;
        let own6 = Map::create(MapType::Hash, 16, 4, MAX_LOCAL, 0, "isthmus_own6")?;
        let cfg = Map::create(MapType::Array, 4, 4, 1, 0, "isthmus_mcfg")?;
        let mut a = Asm::default();
        let (pass, v4, check_mtu) = (a.label(), a.label(), a.label());

        a.mov(R6, R1);
        a.load(Size::W, R7, R1, 0); // data
        a.load(Size::W, R8, R1, 4); // data_end
        a.mov(R4, R7);
        a.add_imm(R4, moff::V4_MIN);
        a.jump_reg(Cond::Gt, R4, R8, pass);
        // Unicast to us.
        a.load(Size::W, R5, R7, 0);
        a.jump32_imm(
            Cond::Ne,
            R5,
            i32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]),
            pass,
        );
        a.load(Size::H, R5, R7, 4);
        a.jump_imm(
            Cond::Ne,
            R5,
            i32::from(u16::from_ne_bytes([mac[4], mac[5]])),
            pass,
        );
        a.load(Size::H, R5, R7, off::ETHERTYPE);
        a.jump_imm(Cond::Eq, R5, be16(0x0800), v4);
        a.jump_imm(Cond::Ne, R5, be16(0x86dd), pass);

        // IPv6.
        a.mov(R4, R7);
        a.add_imm(R4, moff::V6_MIN);
        a.jump_reg(Cond::Gt, R4, R8, pass);
        a.load(Size::B, R5, R7, moff::V6_HOP_LIMIT);
        a.jump_imm(Cond::Lt, R5, 2, pass);
        a.load(Size::B, R5, R7, off::V6_DADDR);
        a.jump_imm(Cond::Eq, R5, 0xff, pass);
        a.load(Size::H, R5, R7, off::V6_DADDR);
        a.and_imm(R5, be16(0xffc0));
        a.jump_imm(Cond::Eq, R5, be16(0xfe80), pass);
        a.load(Size::H, R9, R7, moff::V6_PAYLOAD_LEN);
        a.be16(R9);
        a.add_imm(R9, 40);
        tunnel_route_not_ours(&mut a, off::V6_DADDR, 4, &tunnel6, &own6, pass);
        a.jump(check_mtu);

        // IPv4.
        a.bind(v4);
        a.load(Size::B, R5, R7, off::V4_VER_IHL);
        a.jump_imm(Cond::Ne, R5, 0x45, pass);
        a.load(Size::B, R5, R7, moff::V4_TTL);
        a.jump_imm(Cond::Lt, R5, 2, pass);
        a.load(Size::B, R5, R7, off::V4_DADDR);
        a.jump_imm(Cond::Ge, R5, 224, pass);
        a.load(Size::H, R9, R7, moff::V4_TOTAL_LEN);
        a.be16(R9);
        tunnel_route_not_ours(&mut a, off::V4_DADDR, 1, &tunnel4, &own4, pass);

        // Longer than the tunnel MTU: the kernel sends the ICMP error (or fragments).
        a.bind(check_mtu);
        a.mov_imm(R5, 0);
        a.store(Size::W, R10, -24, R5);
        a.map_lookup(&cfg, -24);
        a.jump_imm(Cond::Eq, R0, 0, pass);
        a.load(Size::W, R5, R0, 0);
        a.jump_reg(Cond::Gt, R9, R5, pass);

        redirect_else_pass(&mut a, &xsks, miss, pass);

        let prog = Program::load_xdp("isthmus_mesh", &a.finish())?;
        let p = MeshProgram {
            xsks,
            tunnel4,
            tunnel6,
            own4,
            own6,
            cfg,
            prog,
        };
        p.set_mtu(0)?;
        Ok(p)
    }

    fn lpm_key(prefix: &IpNet) -> (bool, Vec<u8>) {
        let mut k = u32::from(prefix.prefix_len()).to_ne_bytes().to_vec();
        match prefix.trunc().addr() {
            IpAddr::V4(a) => k.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => k.extend_from_slice(&a.octets()),
        }
        (prefix.addr().is_ipv4(), k)
    }

    /// Set (`Some`) or remove (`None`) the route for `prefix` in the tunnel tables.
    pub fn set_route(&self, prefix: &IpNet, route: Option<MeshRoute>) -> io::Result<()> {
        let (v4, k) = Self::lpm_key(prefix);
        let map = if v4 { &self.tunnel4 } else { &self.tunnel6 };
        match route {
            Some(r) => map.update(&k, &u32::from(r == MeshRoute::Tunnel).to_ne_bytes()),
            None => map.delete(&k).map(|_| ()),
        }
    }

    /// Packets longer than `mtu` (the tunnel's) pass to the kernel; 0 passes everything.
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        self.cfg
            .update(&0u32.to_ne_bytes(), &u32::from(mtu).to_ne_bytes())
    }

    /// Make the set of the box's own addresses (never redirected) exactly `want`.
    pub fn set_own(&self, want: &[IpAddr]) -> io::Result<()> {
        let keys: Vec<(bool, Vec<u8>)> = want
            .iter()
            .map(|a| match a {
                IpAddr::V4(a) => (true, a.octets().to_vec()),
                IpAddr::V6(a) => (false, a.octets().to_vec()),
            })
            .collect();
        set_keys(&self.own4, &self.own6, &keys)
    }

    /// Bind queue `queue`'s slot to the XSK `fd`.
    pub fn set_xsk(&self, queue: u32, fd: i32) -> io::Result<()> {
        self.xsks
            .update(&queue.to_ne_bytes(), &(fd as u32).to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_v4(dst: [u8; 4], proto: u8, dport: u16, frag: u16, ihl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 32];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x40 | ihl;
        f[20..22].copy_from_slice(&frag.to_be_bytes());
        f[23] = proto;
        f[26..30].copy_from_slice(&[10, 0, 0, 2]);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&12345u16.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn frame_v6(dst: std::net::Ipv6Addr, next: u8, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8 + 32];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14] = 0x60;
        f[20] = next;
        f[38..54].copy_from_slice(&dst.octets());
        f[56..58].copy_from_slice(&dport.to_be_bytes());
        f
    }

    /// Loads the real program (needs root / CAP_BPF) and runs it on crafted frames: a match
    /// on a queue without an XSK takes the `miss` action (DROP here), everything else PASS.
    #[test]
    fn redirects_only_our_port_on_our_addresses() {
        let p = match XdpProgram::load(4, action::DROP) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped: loading BPF programs needs CAP_BPF ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let ours4: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let ours6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        p.set_locals(&[ours4, ours6, "192.0.2.9:1".parse().unwrap()])
            .unwrap();
        p.set_locals(&[ours4, ours6]).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f, 1, 0).unwrap();
        let (matched, pass) = (action::DROP, action::PASS);

        assert_eq!(run(&frame_v4([192, 0, 2, 1], 17, 51820, 0, 5)), matched);
        assert_eq!(
            run(&frame_v4([192, 0, 2, 1], 17, 51821, 0, 5)),
            pass,
            "other port"
        );
        assert_eq!(
            run(&frame_v4([192, 0, 2, 2], 17, 51820, 0, 5)),
            pass,
            "not ours"
        );
        assert_eq!(run(&frame_v4([192, 0, 2, 9], 17, 1, 0, 5)), pass, "removed");
        assert_eq!(run(&frame_v4([192, 0, 2, 1], 6, 51820, 0, 5)), pass, "TCP");
        assert_eq!(
            run(&frame_v4([192, 0, 2, 1], 17, 51820, 0x2000, 5)),
            pass,
            "MF"
        );
        assert_eq!(
            run(&frame_v4([192, 0, 2, 1], 17, 51820, 0x0010, 5)),
            pass,
            "offset"
        );
        assert_eq!(
            run(&frame_v4([192, 0, 2, 1], 17, 51820, 0x4000, 5)),
            matched,
            "DF"
        );
        assert_eq!(
            run(&frame_v4([192, 0, 2, 1], 17, 51820, 0, 6)),
            pass,
            "options"
        );
        let mut arp = frame_v4([192, 0, 2, 1], 17, 51820, 0, 5);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&arp), pass, "ARP");
        assert_eq!(run(&arp[..30]), pass, "short");

        let me6 = "2001:db8::1".parse().unwrap();
        assert_eq!(run(&frame_v6(me6, 17, 51820)), matched);
        assert_eq!(run(&frame_v6(me6, 17, 6696)), pass, "Babel port");
        assert_eq!(run(&frame_v6(me6, 58, 51820)), pass, "ICMPv6");
        assert_eq!(run(&frame_v6(me6, 44, 51820)), pass, "fragment header");
        let other6 = "ff02::1:6".parse().unwrap();
        assert_eq!(run(&frame_v6(other6, 17, 51820)), pass, "multicast");
        assert_eq!(run(&frame_v6(me6, 17, 51820)[..60]), pass, "short v6");
    }

    const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

    /// An IPv4 or IPv6 packet to `dst` in a frame to `mac`, with this TTL and length.
    fn mesh_frame(mac: [u8; 6], dst: IpAddr, ttl: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + len];
        f[0..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        match dst {
            IpAddr::V4(d) => {
                f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                f[14] = 0x45;
                f[16..18].copy_from_slice(&(len as u16).to_be_bytes());
                f[22] = ttl;
                f[23] = 6;
                f[26..30].copy_from_slice(&[10, 1, 1, 2]);
                f[30..34].copy_from_slice(&d.octets());
            }
            IpAddr::V6(d) => {
                f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                f[14] = 0x60;
                f[18..20].copy_from_slice(&((len - 40) as u16).to_be_bytes());
                f[20] = 6;
                f[21] = ttl;
                f[22..38].copy_from_slice(
                    &"fd00:1:1::2"
                        .parse::<std::net::Ipv6Addr>()
                        .unwrap()
                        .octets(),
                );
                f[38..54].copy_from_slice(&d.octets());
            }
        }
        f
    }

    /// The mesh program redirects exactly what the tunnel table routes into a tunnel, and
    /// leaves the rest to the kernel.
    #[test]
    fn mesh_redirects_only_tunnel_routes() {
        let p = match MeshProgram::load(MAC, 2, action::DROP) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped: loading BPF programs needs CAP_BPF ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        p.set_route(&net("10.2.0.0/16"), Some(MeshRoute::Tunnel))
            .unwrap();
        p.set_route(&net("10.2.5.0/24"), Some(MeshRoute::Other))
            .unwrap();
        p.set_route(&net("0.0.0.0/0"), Some(MeshRoute::Tunnel))
            .unwrap();
        p.set_route(&net("0.0.0.0/0"), None).unwrap();
        p.set_route(&net("fd00:2::/32"), Some(MeshRoute::Tunnel))
            .unwrap();
        p.set_route(&net("::/0"), Some(MeshRoute::Tunnel)).unwrap();
        p.set_own(&["10.2.0.1".parse().unwrap(), "fd00:2::1".parse().unwrap()])
            .unwrap();
        p.set_mtu(1420).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f, 1, 0).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (matched, pass) = (action::DROP, action::PASS);

        assert_eq!(run(&mesh_frame(MAC, ip("10.2.1.2"), 64, 100)), matched);
        assert_eq!(
            run(&mesh_frame(MAC, ip("10.2.5.2"), 64, 100)),
            pass,
            "longer non-tunnel route"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("10.3.0.1"), 64, 100)),
            pass,
            "no route (removed default)"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("10.2.0.1"), 64, 100)),
            pass,
            "our own address"
        );
        assert_eq!(run(&mesh_frame(MAC, ip("10.2.1.2"), 1, 100)), pass, "TTL 1");
        assert_eq!(
            run(&mesh_frame(MAC, ip("10.2.1.2"), 2, 1420)),
            matched,
            "MTU"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("10.2.1.2"), 64, 1421)),
            pass,
            "over the MTU"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("224.0.0.5"), 64, 100)),
            pass,
            "multicast"
        );
        let mut other_mac = MAC;
        other_mac[5] ^= 1;
        assert_eq!(
            run(&mesh_frame(other_mac, ip("10.2.1.2"), 64, 100)),
            pass,
            "not to us"
        );
        let mut opts = mesh_frame(MAC, ip("10.2.1.2"), 64, 100);
        opts[14] = 0x46;
        assert_eq!(run(&opts), pass, "IP options");
        let mut arp = mesh_frame(MAC, ip("10.2.1.2"), 64, 100);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(run(&arp), pass, "ARP");
        assert_eq!(
            run(&mesh_frame(MAC, ip("10.2.1.2"), 64, 100)[..30]),
            pass,
            "short"
        );

        assert_eq!(run(&mesh_frame(MAC, ip("fd00:2::5"), 64, 100)), matched);
        assert_eq!(
            run(&mesh_frame(MAC, ip("2001:db8::1"), 64, 100)),
            matched,
            "v6 default"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("fd00:2::1"), 64, 100)),
            pass,
            "our own v6"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("ff02::1:6"), 64, 100)),
            pass,
            "Babel multicast"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("fe80::1"), 64, 100)),
            pass,
            "link-local"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("fd00:2::5"), 1, 100)),
            pass,
            "hop limit 1"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("fd00:2::5"), 64, 1500)),
            pass,
            "over the MTU"
        );
        assert_eq!(
            run(&mesh_frame(MAC, ip("fd00:2::5"), 64, 100)[..50]),
            pass,
            "short v6"
        );
    }
}
