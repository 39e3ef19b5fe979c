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

use super::bpf::{
    action, helper, Asm, Cond, Map, MapType, Program, Size, R0, R1, R10, R2, R3, R4, R5, R6,
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
        a.load(Size::DW, R5, R2, off::V6_DADDR);
        a.store(Size::DW, R10, -24, R5);
        a.load(Size::DW, R5, R2, off::V6_DADDR + 8);
        a.store(Size::DW, R10, -16, R5);
        a.load(Size::H, R5, R2, off::V6_DPORT);
        a.store(Size::W, R10, -8, R5);
        a.load_map(R1, &local6);
        a.mov(R2, R10);
        a.add_imm(R2, -24);
        a.call(helper::MAP_LOOKUP_ELEM);
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
        a.load(Size::W, R5, R2, off::V4_DADDR);
        a.store(Size::W, R10, -8, R5);
        a.load(Size::H, R5, R2, off::V4_DPORT);
        a.store(Size::W, R10, -4, R5);
        a.load_map(R1, &local4);
        a.mov(R2, R10);
        a.add_imm(R2, -8);
        a.call(helper::MAP_LOOKUP_ELEM);
        a.jump_imm(Cond::Eq, R0, 0, pass);

        a.bind(redirect);
        a.load(Size::W, R2, R6, 16); // rx_queue_index
        a.load_map(R1, &xsks);
        a.mov_imm(R3, miss as i32);
        a.call(helper::REDIRECT_MAP);
        a.exit();

        a.bind(pass);
        a.mov_imm(R0, action::PASS as i32);
        a.exit();

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

    /// Frames to `addr` (one of our addresses and the WireGuard port) go to the XSKs.
    pub fn add_local(&self, addr: SocketAddr) -> io::Result<()> {
        let (v4, k) = Self::key(addr);
        let map = if v4 { &self.local4 } else { &self.local6 };
        map.update(&k, &1u32.to_ne_bytes())
    }

    /// Make the set of local address + port pairs exactly `want`.
    pub fn set_locals(&self, want: &[SocketAddr]) -> io::Result<()> {
        let keys: Vec<(bool, Vec<u8>)> = want.iter().map(|&a| Self::key(a)).collect();
        for (v4, map) in [(true, &self.local4), (false, &self.local6)] {
            for k in map.keys()? {
                if !keys.iter().any(|(f, w)| *f == v4 && *w == k) {
                    map.delete(&k)?;
                }
            }
        }
        for &a in want {
            self.add_local(a)?;
        }
        Ok(())
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
}
