//! TUN offloads (`IFF_VNET_HDR`): the kernel hands us TCP super-packets of up to 64 KiB
//! (TSO) and packets whose checksum it left for us to finish; we segment and finish them here,
//! so that one read replaces dozens. Every packet we write carries an empty virtio-net header.
//!
//! The segmentation follows the kernel's own rules (and wireguard-go's `tun/offload_linux.go`):
//! each segment gets the headers of the super-packet with the IPv4 total length and id, or the
//! IPv6 payload length, and the TCP sequence number advanced; FIN and PSH stay on the last
//! segment only, CWR on the first; IPv4 and TCP checksums are computed in full.

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_*`.
pub const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// The parts of `struct virtio_net_hdr` we use (little-endian on x86 and arm64 hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// Flags (`NEEDS_CSUM`).
    pub flags: u8,
    /// GSO type.
    pub gso_type: u8,
    /// Length of the headers to copy to every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decode from the first 10 bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    /// Encode.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Why a super-packet could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Headers are not what the GSO type says, or lengths are inconsistent.
    #[error("malformed offloaded packet")]
    Malformed,
    /// A GSO type we did not enable.
    #[error("unsupported GSO type {0}")]
    Unsupported(u8),
}

/// One's-complement sum of `data` (not folded, not inverted), continuing from `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Finish a checksum the kernel left partial (`NEEDS_CSUM`): the field already holds the
/// pseudo-header sum; sum from `csum_start` to the end and store the result.
pub fn finish_checksum(pkt: &mut [u8], h: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > pkt.len() {
        return Err(OffloadError::Malformed);
    }
    let mut c = fold(sum16(0, &pkt[start..]));
    if h.csum_offset == 6 && c == 0 {
        c = 0xffff; // UDP: zero means "no checksum"
    }
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Header layout of a TCP super-packet.
#[derive(Debug, Clone, Copy)]
pub struct TsoLayout {
    v6: bool,
    ip_len: usize,
    hdr_len: usize,
    mss: usize,
    payload: usize,
}

impl TsoLayout {
    /// Check the headers of a TSO packet (without its virtio header).
    pub fn parse(pkt: &[u8], h: &VnetHdr) -> Result<Self, OffloadError> {
        let v6 = match h.gso_type & !GSO_ECN {
            GSO_TCPV4 => false,
            GSO_TCPV6 => true,
            GSO_NONE => return Err(OffloadError::Malformed),
            t => return Err(OffloadError::Unsupported(t)),
        };
        let ip_len = if v6 {
            if pkt.len() < 40 || pkt[0] >> 4 != 6 || pkt[6] != 6 {
                return Err(OffloadError::Malformed);
            }
            40
        } else {
            if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
                return Err(OffloadError::Malformed);
            }
            usize::from(pkt[0] & 0x0f) * 4
        };
        if pkt.len() < ip_len + 20 {
            return Err(OffloadError::Malformed);
        }
        let tcp_len = usize::from(pkt[ip_len + 12] >> 4) * 4;
        let hdr_len = ip_len + tcp_len;
        let mss = usize::from(h.gso_size);
        if tcp_len < 20 || pkt.len() < hdr_len || mss == 0 {
            return Err(OffloadError::Malformed);
        }
        Ok(Self { v6, ip_len, hdr_len, mss, payload: pkt.len() - hdr_len })
    }

    /// Length of the largest segment.
    pub fn max_segment_len(&self) -> usize {
        self.hdr_len + self.mss
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// Write segment `i` of `pkt` into `out`; returns its length. `out` must hold
    /// `hdr_len + mss` bytes.
    pub fn segment(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> usize {
        let n = self.segments();
        let off = i * self.mss;
        let chunk = self.mss.min(self.payload - off.min(self.payload));
        let len = self.hdr_len + chunk;
        out[..self.hdr_len].copy_from_slice(&pkt[..self.hdr_len]);
        out[self.hdr_len..len].copy_from_slice(&pkt[self.hdr_len + off..self.hdr_len + off + chunk]);
        let ip = self.ip_len;
        if self.v6 {
            let pl = u16::try_from(len - 40).unwrap_or(u16::MAX);
            out[4..6].copy_from_slice(&pl.to_be_bytes());
        } else {
            out[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
            let id = u16::from_be_bytes([pkt[4], pkt[5]]).wrapping_add(i as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let c = fold(sum16(0, &out[..ip]));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let seq = u32::from_be_bytes([pkt[ip + 4], pkt[ip + 5], pkt[ip + 6], pkt[ip + 7]]);
        out[ip + 4..ip + 8].copy_from_slice(&seq.wrapping_add(off as u32).to_be_bytes());
        let flags = pkt[ip + 13];
        let mut f = flags;
        if i + 1 < n {
            f &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            f &= !0x80; // CWR only on the first
        }
        out[ip + 13] = f;
        // Full TCP checksum over the pseudo-header and the segment.
        out[ip + 16..ip + 18].copy_from_slice(&[0, 0]);
        let tcp_len = len - ip;
        let mut s = if self.v6 { sum16(0, &out[8..40]) } else { sum16(0, &out[12..20]) };
        s += 6 + tcp_len as u32;
        s = sum16(s, &out[ip..len]);
        out[ip + 16..ip + 18].copy_from_slice(&fold(s).to_be_bytes());
        len
    }
}

/// A TCP segment's layout, for coalescing (GRO on the write side).
#[derive(Debug, Clone, Copy)]
struct Seg {
    v6: bool,
    ip_len: usize,
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

impl Seg {
    /// Plain TCP over IPv4 (no options, not fragmented) or IPv6 (no extension headers),
    /// with payload and only ACK (and PSH) set.
    fn parse(p: &[u8]) -> Option<Seg> {
        let (v6, ip_len, total) = match p.first()? >> 4 {
            4 if p.len() >= 20 && p[0] & 0x0f == 5 && p[9] == 6 && p[6] & 0x3f == 0 && p[7] == 0 => {
                (false, 20, usize::from(u16::from_be_bytes([p[2], p[3]])))
            }
            6 if p.len() >= 40 && p[6] == 6 => (true, 40, 40 + usize::from(u16::from_be_bytes([p[4], p[5]]))),
            _ => return None,
        };
        if total != p.len() || p.len() < ip_len + 20 {
            return None;
        }
        let hdr_len = ip_len + usize::from(p[ip_len + 12] >> 4) * 4;
        let flags = p[ip_len + 13];
        if hdr_len > p.len() || hdr_len < ip_len + 20 || flags & !0x18 != 0 || flags & 0x10 == 0 {
            return None;
        }
        let seq = u32::from_be_bytes([p[ip_len + 4], p[ip_len + 5], p[ip_len + 6], p[ip_len + 7]]);
        Some(Seg { v6, ip_len, hdr_len, seq, flags, payload: p.len() - hdr_len })
    }

    /// Can `next` (with layout `n`) follow `self` (the first of a run of `count`, whose
    /// latest segment is `prev`) in one super-packet?
    fn accepts(&self, first: &[u8], prev: &Seg, n: &Seg, next: &[u8], count: usize, total: usize) -> bool {
        let ip = self.ip_len;
        n.v6 == self.v6
            && n.hdr_len == self.hdr_len
            && prev.flags & 0x08 == 0 // nothing after a PSH
            && prev.payload == self.payload // only the last may be short
            && n.payload <= self.payload
            && n.payload > 0
            && n.seq == prev.seq.wrapping_add(prev.payload as u32)
            && total + n.payload <= 65535
            && if self.v6 {
                first[..4] == next[..4] && first[6..40] == next[6..40]
            } else {
                first[..2] == next[..2]
                    && first[6..10] == next[6..10]
                    && first[12..20] == next[12..20]
                    && u16::from_be_bytes([next[4], next[5]])
                        == u16::from_be_bytes([first[4], first[5]]).wrapping_add(count as u16)
            }
            && first[ip..ip + 4] == next[ip..ip + 4] // ports
            && first[ip + 8..ip + 13] == next[ip + 8..ip + 13] // ack, data offset
            && first[ip + 14..ip + 16] == next[ip + 14..ip + 16] // window
            && first[ip + 18..self.hdr_len] == next[ip + 18..self.hdr_len] // urgent, options
    }
}

/// Coalesce runs of consecutive segments of one TCP flow, as the kernel's GRO would, and
/// hand each output packet to `emit` with its virtio-net header: super-packets with GSO set
/// and the checksum left partial for the kernel, other packets unchanged with an empty
/// header. `buf` must hold 65535 bytes.
pub fn coalesce<'a>(pkts: impl Iterator<Item = &'a [u8]> + Clone, buf: &mut [u8], mut emit: impl FnMut(&[u8; VNET_HDR_LEN], &[u8])) {
    let none = [0u8; VNET_HDR_LEN];
    let mut it = pkts.peekable();
    while let Some(p) = it.next() {
        let Some(first) = Seg::parse(p).filter(|s| s.payload > 0) else {
            emit(&none, p);
            continue;
        };
        // Extend the run as far as it goes.
        let mut prev = first;
        let mut count = 1;
        let mut total = p.len();
        let mut run_end = it.clone();
        let mut pieces = 1;
        while let Some(q) = run_end.peek().copied() {
            match Seg::parse(q) {
                Some(n) if first.accepts(p, &prev, &n, q, count, total) => {
                    prev = n;
                    count += 1;
                    total += n.payload;
                    pieces += 1;
                    run_end.next();
                }
                _ => break,
            }
        }
        if pieces == 1 {
            emit(&none, p);
            continue;
        }
        // Build the super-packet: first headers, all payloads.
        buf[..p.len()].copy_from_slice(p);
        let mut len = p.len();
        let mut last_flags = first.flags;
        for _ in 1..pieces {
            let q = it.next().expect("counted above");
            let n = Seg::parse(q).expect("parsed above");
            buf[len..len + n.payload].copy_from_slice(&q[n.hdr_len..]);
            len += n.payload;
            last_flags = n.flags;
        }
        let ip = first.ip_len;
        buf[ip + 13] = last_flags;
        if first.v6 {
            buf[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            buf[10..12].copy_from_slice(&[0, 0]);
            let c = fold(sum16(0, &buf[..20]));
            buf[10..12].copy_from_slice(&c.to_be_bytes());
        }
        // Partial checksum: the pseudo-header sum, folded but not inverted.
        let mut s = if first.v6 { sum16(0, &buf[8..40]) } else { sum16(0, &buf[12..20]) };
        s += 6 + (len - ip) as u32;
        let partial = !fold(s);
        buf[ip + 16..ip + 18].copy_from_slice(&partial.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if first.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: first.hdr_len as u16,
            gso_size: first.payload as u16,
            csum_start: ip as u16,
            csum_offset: 16,
        };
        emit(&h.encode(), &buf[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn super_packet(v6: bool, payload: &[u8], flags_fin_psh: bool) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 64)
        } else {
            PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut t = b.tcp(1234, 80, 1_000_000, 65000).ack(77).cwr();
        if flags_fin_psh {
            t = t.fin().psh();
        }
        let mut out = Vec::new();
        t.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn tso_segments_are_valid_tcp_with_advancing_sequence_numbers() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let pkt = super_packet(v6, &payload, true);
            let h = VnetHdr { gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, gso_size: 1400, ..Default::default() };
            let l = TsoLayout::parse(&pkt, &h).unwrap();
            assert_eq!(l.segments(), 8);
            let mut joined = Vec::new();
            for i in 0..l.segments() {
                let mut out = vec![0u8; 2048];
                let n = l.segment(&pkt, i, &mut out);
                let s = SlicedPacket::from_ip(&out[..n]).unwrap();
                let Some(TransportSlice::Tcp(tcp)) = s.transport else { panic!("not tcp") };
                assert_eq!(tcp.sequence_number(), 1_000_000 + (i as u32) * 1400);
                assert_eq!(tcp.fin(), i == 7);
                assert_eq!(tcp.psh(), i == 7);
                assert_eq!(tcp.cwr(), i == 0);
                // Checksums verified by recomputing them independently.
                let expect = match &s.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        assert!(ip.header().to_header().calc_header_checksum() == ip.header().header_checksum());
                        tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload()).unwrap()
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => {
                        tcp.to_header().calc_checksum_ipv6(&ip.header().to_header(), tcp.payload()).unwrap()
                    }
                    _ => unreachable!(),
                };
                assert_eq!(tcp.checksum(), expect);
                joined.extend_from_slice(tcp.payload());
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn partial_checksum_is_finished() {
        let mut pkt = super_packet(false, b"hello world", false);
        let want = u16::from_be_bytes([pkt[36], pkt[37]]);
        // Replace the checksum by the pseudo-header sum, as the kernel leaves it.
        let mut s = sum16(0, &pkt[12..20]);
        s += 6 + (pkt.len() - 20) as u32;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        pkt[36..38].copy_from_slice(&(s as u16).to_be_bytes());
        let h = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() };
        finish_checksum(&mut pkt, &h).unwrap();
        assert_eq!(u16::from_be_bytes([pkt[36], pkt[37]]), want);
    }

    #[test]
    fn garbage_never_panics() {
        use proptest::prelude::*;
        proptest!(|(pkt in proptest::collection::vec(any::<u8>(), 0..200), gso in 0u8..6, mss in 0u16..100)| {
            let h = VnetHdr { gso_type: gso, gso_size: mss, ..Default::default() };
            if let Ok(l) = TsoLayout::parse(&pkt, &h) {
                let mut out = vec![0u8; 70_000];
                for i in 0..l.segments().min(50) {
                    let _ = l.segment(&pkt, i, &mut out);
                }
            }
            let mut p = pkt.clone();
            let _ = finish_checksum(&mut p, &VnetHdr { flags: F_NEEDS_CSUM, csum_start: mss, csum_offset: u16::from(gso), ..Default::default() });
        });
    }

    #[test]
    fn coalescing_inverts_segmentation() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
            let mut pkt = super_packet(v6, &payload, false);
            // A pure-ACK super-packet (no CWR) so every segment is coalescable.
            let ip = if v6 { 40 } else { 20 };
            pkt[ip + 13] = 0x10;
            let h = VnetHdr { gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, gso_size: 1300, ..Default::default() };
            let l = TsoLayout::parse(&pkt, &h).unwrap();
            let segs: Vec<Vec<u8>> = (0..l.segments())
                .map(|i| {
                    let mut o = vec![0u8; 2048];
                    let n = l.segment(&pkt, i, &mut o);
                    o.truncate(n);
                    o
                })
                .collect();
            // An unrelated packet in the middle breaks the run in two.
            let mut input: Vec<&[u8]> = segs.iter().map(Vec::as_slice).collect();
            let other = super_packet(!v6, b"x", false);
            input.insert(5, &other);
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65535];
            coalesce(input.iter().copied(), &mut buf, |h, p| out.push((VnetHdr::decode(h).unwrap(), p.to_vec())));
            assert_eq!(out.len(), 3);
            assert_eq!(out[0].0.gso_size, 1300);
            assert_eq!(out[1].0, VnetHdr::default());
            // Splitting what we coalesced gives back the original segments.
            let mut again = Vec::new();
            for (h, p) in [&out[0], &out[2]] {
                let l = TsoLayout::parse(p, h).unwrap();
                for i in 0..l.segments() {
                    let mut o = vec![0u8; 2048];
                    let n = l.segment(p, i, &mut o);
                    o.truncate(n);
                    again.push(o);
                }
            }
            assert_eq!(again, segs);
        }
    }

    #[test]
    fn header_round_trips() {
        let h = VnetHdr { flags: 1, gso_type: 4, hdr_len: 60, gso_size: 1380, csum_start: 40, csum_offset: 16 };
        assert_eq!(VnetHdr::decode(&h.encode()), Some(h));
    }
}
