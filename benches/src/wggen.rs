//! A WireGuard packet generator and sink for capacity benchmarks: real WireGuard peers of the
//! gateway under test (boringtun's noise, [`boringtun::noise::Tunn`]) that need no TUN and
//! no kernel stack for the inner packets, so that what limits a run is the gateway and not
//! its spokes. The `isthmus-wggen` binary runs them inside namespaces (`send`, `sink`);
//! a capacity benchmark drives it.
//!
//! ```text
//! generator (peer A) ══ gateway under test ══ sink (peer B)       relay: sink decrypts a sample
//! generator (peer A) ══ gateway ── plain interface ── sink        tunnel → mesh: plain UDP
//! plain generator ── plain interface ── gateway ══ sink (peer B)  mesh → tunnel
//! ```
//!
//! **Generator** ([`send`]). Completes a handshake with the gateway, then encrypts inner
//! IPv4/UDP packets (each distinct: a sequence number in the payload) with the session in
//! advance, into a pool, and sends the pool with `sendmmsg` in batches. Every WireGuard
//! packet carries a counter the gateway's replay window has not seen, so the pool cannot be
//! replayed: its size is the run's budget. It is sized for the whole run when it fits in the
//! memory given (`rate × duration` with a rate cap, else [`DEFAULT_POOL_MB`]); when it runs out
//! before the end, the generator goes on encrypting each batch just before sending it (in
//! line, on the same thread, re-using the pool's first slots), and reports how many packets
//! each phase sent and at what rate, so that a run whose generator became encryption-bound
//! says so. A second encrypting thread would not help on a two-core machine where the
//! gateway owns the other core. Nothing is answered during the run: runs are meant to be
//! shorter than `REKEY_AFTER_TIME` (120 s), and the gateway, the session's responder, never
//! rekeys it by itself.
//!
//! **Plain generator** ([`send_plain`]). A host on the gateway's mesh side: plain UDP to an
//! address the gateway routes into a tunnel, whose peer is the sink (mesh → tunnel). The
//! datagrams carry the same payload as the inner packets above, so the sink checks them
//! the same way once decrypted.
//!
//! **Sink** ([`sink`]). Either a second peer of the gateway (its own handshake; the gateway
//! relays A → B because B's allowed IPs cover the inner destination) that counts every
//! datagram with `recvmmsg` and decrypts one in [`SinkOptions::sample`] with its session, checking
//! the inner packet (addresses, ports, length, the generator's marker and sequence number); or
//! (`plain`) a UDP socket on the inner destination, for the gateway's tunnel → mesh path. It
//! also reports what the kernel of its namespace received for UDP (`/proc/net/snmp`: datagrams
//! delivered plus those dropped for a full socket buffer), which counts what the gateway
//! delivered even when the sink itself falls behind.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use isthmus_dataplane::io::mmsg::Mmsg;
use isthmus_dataplane::keys::{read_private_key_file, Key};
use serde::{Deserialize, Serialize};

/// Marker at the start of every inner payload the generator makes.
pub const MAGIC: [u8; 8] = *b"ISTHMUSG";
/// Smallest inner packet: IPv4 (20) + UDP (8) + marker (8) + sequence number (8).
pub const MIN_INNER: usize = 44;
/// Largest inner packet (the usual WireGuard MTU).
pub const MAX_INNER: usize = 1420;
/// Transport header (type, receiver, counter) plus the AEAD tag.
pub const WG_OVERHEAD: usize = 32;
/// Memory for the pre-encrypted pool when neither a rate cap nor `--pool` sizes it, MiB.
pub const DEFAULT_POOL_MB: usize = 512;

/// The inner packets: IPv4/UDP from `src` to `dst`, `size` bytes in all (IP header
/// included), padded with zeros to a multiple of 16 before encryption as the protocol asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inner {
    /// Inner source (within the generator's allowed IPs at the gateway).
    pub src: SocketAddrV4,
    /// Inner destination (routed by the gateway to the sink).
    pub dst: SocketAddrV4,
    /// Bytes of the IP packet.
    pub size: usize,
}

impl Inner {
    /// Checks the size.
    ///
    /// # Errors
    /// When it is outside [`MIN_INNER`]..=[`MAX_INNER`].
    pub fn check(&self) -> Result<()> {
        if !(MIN_INNER..=MAX_INNER).contains(&self.size) {
            bail!(
                "inner size {} is outside {MIN_INNER}..={MAX_INNER} bytes",
                self.size
            );
        }
        Ok(())
    }

    /// The plaintext length: the size rounded up to 16 (the padding of the protocol).
    #[must_use]
    pub fn padded(&self) -> usize {
        self.size.div_ceil(16) * 16
    }

    /// Bytes on the wire (UDP payload) of one transport packet.
    #[must_use]
    pub fn wire_len(&self) -> usize {
        self.padded() + WG_OVERHEAD
    }

    /// Writes packet number `seq` into `buf[..self.padded()]` (zero padding included).
    ///
    /// # Panics
    /// When `buf` is shorter than [`Inner::padded`].
    pub fn build(&self, seq: u64, buf: &mut [u8]) {
        let buf = &mut buf[..self.padded()];
        buf.fill(0);
        let total = self.size as u16;
        buf[0] = 0x45;
        buf[2..4].copy_from_slice(&total.to_be_bytes());
        buf[4..6].copy_from_slice(&(seq as u16).to_be_bytes()); // identification
        buf[6] = 0x40; // don't fragment
        buf[8] = 64; // TTL
        buf[9] = 17; // UDP
        buf[12..16].copy_from_slice(&self.src.ip().octets());
        buf[16..20].copy_from_slice(&self.dst.ip().octets());
        let csum = ipv4_checksum(&buf[..20]);
        buf[10..12].copy_from_slice(&csum.to_be_bytes());
        let udp = &mut buf[20..self.size];
        udp[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&(total - 20).to_be_bytes());
        // UDP checksum 0: none (allowed over IPv4; nobody on the path needs one).
        udp[8..16].copy_from_slice(&MAGIC);
        udp[16..24].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in udp[24..].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(i as u8);
        }
    }

    /// The sequence number of an inner IP packet this generator made with this `Inner`
    /// (its TTL may have been decremented by forwarding hops), or why it is not one.
    ///
    /// # Errors
    /// A short description of the first mismatch.
    pub fn check_ip(&self, pkt: &[u8]) -> Result<u64, &'static str> {
        if pkt.len() < self.size {
            return Err("short");
        }
        if pkt[0] != 0x45 || pkt[9] != 17 {
            return Err("not IPv4/UDP");
        }
        if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != self.size {
            return Err("IP length");
        }
        if ipv4_checksum(&pkt[..20]) != 0 {
            return Err("IP checksum");
        }
        if pkt[12..16] != self.src.ip().octets() || pkt[16..20] != self.dst.ip().octets() {
            return Err("addresses");
        }
        self.check_udp_payload(&pkt[20..self.size], true)
    }

    /// The sequence number in a UDP datagram (`with_header`: starting at the UDP header;
    /// else its payload as a socket returns it).
    ///
    /// # Errors
    /// A short description of the first mismatch.
    pub fn check_udp_payload(&self, udp: &[u8], with_header: bool) -> Result<u64, &'static str> {
        let p = if with_header {
            if udp.len() < 8
                || udp[0..2] != self.src.port().to_be_bytes()
                || udp[2..4] != self.dst.port().to_be_bytes()
            {
                return Err("ports");
            }
            &udp[8..]
        } else {
            udp
        };
        if p.len() != self.size - 28 {
            return Err("UDP length");
        }
        if p[0..8] != MAGIC {
            return Err("marker");
        }
        let seq = u64::from_be_bytes(p[8..16].try_into().expect("8 bytes"));
        if p[16..]
            .iter()
            .enumerate()
            .any(|(i, b)| *b != (seq as u8).wrapping_add(i as u8))
        {
            return Err("payload");
        }
        Ok(seq)
    }
}

/// The IPv4 header checksum (0 over a header that carries a correct one).
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The identity of one end: its private key and the gateway's public key.
pub struct Identity {
    /// Our private key.
    pub private: StaticSecret,
    /// The gateway's public key.
    pub gateway: PublicKey,
}

impl Identity {
    /// Reads the private key from a 0600 file (base64, as `wg genkey` writes it) and parses the
    /// gateway's public key (base64).
    ///
    /// # Errors
    /// When the file cannot be read or a key does not parse.
    pub fn load(private_key_file: &Path, gateway_public: &str) -> Result<Self> {
        let k = read_private_key_file(private_key_file)?;
        let g = Key::from_base64(gateway_public.trim())
            .with_context(|| format!("gateway public key {gateway_public:?}"))?;
        Ok(Self {
            private: StaticSecret::from(k.0),
            gateway: PublicKey::from(g.0),
        })
    }
}

/// A UDP socket bound to `bind` and connected to `gateway`, with large buffers.
fn socket(bind: SocketAddr, gateway: SocketAddr) -> Result<UdpSocket> {
    let s = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    s.connect(gateway)
        .with_context(|| format!("connecting to {gateway}"))?;
    let r = socket2::SockRef::from(&s);
    let _ = r.set_send_buffer_size(8 << 20);
    let _ = r.set_recv_buffer_size(32 << 20);
    Ok(s)
}

/// Runs the handshake as the initiator over `sock` (connected to the gateway): an initiation,
/// every 1 s until a response, up to `timeout`. Also answers what boringtun asks to send
/// (the keepalive that confirms the session to the responder). Returns the time it took.
///
/// # Errors
/// When no response came within `timeout`.
pub fn handshake(sock: &UdpSocket, tunn: &mut Tunn, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let mut force = false;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    while start.elapsed() < timeout {
        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut out, force) {
            sock.send(p).context("sending a handshake initiation")?;
        }
        force = true;
        let round = Instant::now();
        while round.elapsed() < Duration::from_secs(1) {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                // ECONNREFUSED from an ICMP error: the gateway is not up yet.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e).context("receiving the handshake response"),
            };
            let peer = sock.peer_addr().ok().map(|a| a.ip());
            let mut r = tunn.decapsulate(peer, &buf[..n], &mut out);
            while let TunnResult::WriteToNetwork(p) = r {
                sock.send(p)?;
                r = tunn.decapsulate(None, &[], &mut out);
            }
            if session_up(tunn) {
                sock.set_read_timeout(None)?;
                return Ok(start.elapsed());
            }
        }
    }
    bail!(
        "no handshake response from {} within {timeout:?}",
        sock.peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    )
}

/// Whether `tunn` has a session to send with: an empty encapsulation gives a transport
/// packet (type 4) only then. (It costs one keepalive's counter, nothing else.)
fn session_up(tunn: &mut Tunn) -> bool {
    let mut out = [0u8; 256];
    matches!(tunn.encapsulate(&[], &mut out), TunnResult::WriteToNetwork(p) if p[0] == 4)
}

/// What the generator does.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The gateway's WireGuard endpoint.
    pub gateway: SocketAddr,
    /// Our UDP address (the endpoint the gateway knows us by).
    pub bind: SocketAddr,
    /// Inner packets.
    pub inner: Inner,
    /// How long to send.
    pub duration: Duration,
    /// Packets per second at most (none: as fast as it goes).
    pub rate: Option<u64>,
    /// Datagrams per `sendmmsg`.
    pub batch: usize,
    /// Packets to encrypt in advance (none: sized from the rate, else [`DEFAULT_POOL_MB`]).
    pub pool: Option<usize>,
    /// Memory the pool may take, MiB.
    pub pool_mb: usize,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
    /// Send with UDP GSO: runs of up to 64 packets (and 64 KiB) as one send that the kernel
    /// cuts into datagrams (they cross a veth as one buffer, as NIC GRO would hand them to a
    /// gateway). Off: one datagram per `sendmmsg` message.
    pub gso: bool,
}

/// What the generator did (printed as one JSON line by `isthmus-wggen send`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SendReport {
    /// Transport packets sent (the kernel took them).
    pub sent: u64,
    /// Seconds from the first to the last send.
    pub secs: f64,
    /// `sent ÷ secs`.
    pub pps: f64,
    /// Of `sent`, those from the pre-encrypted pool.
    pub pool_sent: u64,
    /// The pool phase's rate.
    pub pool_pps: f64,
    /// Of `sent`, those encrypted in line after the pool ran out.
    pub inline_sent: u64,
    /// The in-line phase's rate (0 when there was none).
    pub inline_pps: f64,
    /// Packets in the pool.
    pub pool_packets: u64,
    /// Seconds the pre-encryption took.
    pub prepare_secs: f64,
    /// Handshake time, ms.
    pub handshake_ms: f64,
    /// `sendmmsg` calls that failed (e.g. ENOBUFS, ECONNREFUSED), their datagrams not sent.
    pub send_errors: u64,
    /// Bytes per datagram (UDP payload).
    pub wire_len: usize,
    /// Inner packet size.
    pub inner_size: usize,
    /// Packets per send with UDP GSO (1: no GSO).
    pub gso_segments: usize,
}

/// A pool of transport packets of one length, contiguous.
struct Pool {
    buf: Vec<u8>,
    stride: usize,
    len: usize,
}

impl Pool {
    /// Slots `first..first + count`, as one contiguous buffer.
    fn run(&self, first: usize, count: usize) -> &[u8] {
        &self.buf[first * self.stride..(first + count) * self.stride]
    }
}

/// Encrypts packets `seq..seq + count` into pool slots `first..`.
fn encrypt_into(
    tunn: &mut Tunn,
    inner: &Inner,
    pool: &mut Pool,
    first: usize,
    seq: u64,
    count: usize,
    plain: &mut [u8],
) -> Result<()> {
    let stride = pool.stride;
    let padded = inner.padded();
    for k in 0..count {
        inner.build(seq + k as u64, plain);
        let i = first + k;
        let dst = &mut pool.buf[i * stride..(i + 1) * stride];
        match tunn.encapsulate(&plain[..padded], dst) {
            TunnResult::WriteToNetwork(p) if p[0] == 4 && p.len() == stride => {}
            _ => bail!("the session is gone (encapsulation did not give a transport packet)"),
        }
    }
    Ok(())
}

/// How many packets the pool holds for these options.
#[must_use]
pub fn pool_size(o: &SendOptions) -> usize {
    let stride = o.inner.wire_len();
    let budget = (o.pool_mb << 20) / stride;
    let want = match (o.pool, o.rate) {
        (Some(n), _) => n,
        (None, Some(r)) => {
            // The whole run at the capped rate, plus a little.
            (r as f64 * o.duration.as_secs_f64() * 1.02) as usize + o.batch
        }
        (None, None) => budget,
    };
    want.min(budget).max(o.batch)
}

/// Runs the generator: handshake, pre-encryption, then `sendmmsg` for `o.duration`.
///
/// # Errors
/// When the socket cannot be opened, the handshake fails or the session disappears.
pub fn send(id: Identity, o: &SendOptions) -> Result<SendReport> {
    o.inner.check()?;
    if o.batch == 0 {
        bail!("the batch size must be at least 1");
    }
    let sock = socket(o.bind, o.gateway)?;
    let mut tunn = Tunn::new(id.private, id.gateway, None, None, rand_index(), None);
    let hs = handshake(&sock, &mut tunn, o.handshake_timeout)?;
    eprintln!(
        "wggen send: handshake with {} in {:.1} ms",
        o.gateway,
        hs.as_secs_f64() * 1e3
    );

    let stride = o.inner.wire_len();
    let n = pool_size(o);
    let t0 = Instant::now();
    let mut pool = Pool {
        buf: vec![0u8; n * stride],
        stride,
        len: n,
    };
    let mut plain = vec![0u8; o.inner.padded()];
    encrypt_into(&mut tunn, &o.inner, &mut pool, 0, 0, n, &mut plain)?;
    let prepare = t0.elapsed();
    eprintln!(
        "wggen send: {n} packets of {} B ({} B on the wire) encrypted in {:.2} s ({:.0} MiB)",
        o.inner.size,
        stride,
        prepare.as_secs_f64(),
        (n * stride) as f64 / f64::from(1 << 20)
    );

    let fd = sock.as_raw_fd();
    // Packets per message: 1, or with GSO as many as fit in one send.
    let seg = if o.gso {
        let seg = (65_000 / stride).clamp(1, 64);
        isthmus_dataplane::io::mmsg::set_udp_segment(fd, stride as u16)
            .context("UDP GSO (UDP_SEGMENT) is not available")?;
        seg
    } else {
        1
    };
    let mut mm = Mmsg::new(o.batch.div_ceil(seg));
    let mut r = SendReport {
        pool_packets: n as u64,
        prepare_secs: prepare.as_secs_f64(),
        handshake_ms: hs.as_secs_f64() * 1e3,
        wire_len: stride,
        inner_size: o.inner.size,
        gso_segments: seg,
        ..SendReport::default()
    };
    let start = Instant::now();
    let end = start + o.duration;
    let mut next_seq = n as u64;
    let mut idx = 0usize; // next pool slot (pool phase)
    let mut inline_start: Option<Instant> = None;
    let mut pending = 0usize; // in-line phase: slots 0..pending encrypted, not yet sent
    let mut pending_off = 0usize;
    let gap = o
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
    let mut last = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Pace: the packets sent so far may not be ahead of the rate's schedule.
        if ahead_of_rate(gap, start, now, r.sent) {
            continue;
        }
        let (first, count) = if idx < pool.len {
            (idx, (pool.len - idx).min(o.batch))
        } else {
            if pending == 0 {
                if inline_start.is_none() {
                    inline_start = Some(now);
                    eprintln!(
                        "wggen send: the pool ran out after {:.2} s; encrypting in line",
                        (now - start).as_secs_f64()
                    );
                }
                let b = o.batch.min(pool.len);
                encrypt_into(&mut tunn, &o.inner, &mut pool, 0, next_seq, b, &mut plain)?;
                next_seq += b as u64;
                pending = b;
                pending_off = 0;
            }
            (pending_off, pending - pending_off)
        };
        let pool_ref = &pool;
        let msgs = (first..first + count)
            .step_by(seg)
            .map(|i| pool_ref.run(i, seg.min(first + count - i)));
        let sent = match mm.send(fd, msgs, true) {
            Ok(k) => (k * seg).min(count),
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(_) => {
                // Skip what failed (the gateway's ICMP errors, a full device queue).
                r.send_errors += 1;
                count
            }
        };
        if idx < pool.len {
            idx += sent;
            r.pool_sent += sent as u64;
        } else {
            pending_off += sent;
            if pending_off >= pending {
                pending = 0;
            }
            r.inline_sent += sent as u64;
        }
        r.sent += sent as u64;
        last = Instant::now();
    }
    let secs = (last - start).as_secs_f64();
    r.secs = secs;
    r.pps = rate(r.sent, secs);
    match inline_start {
        Some(t) => {
            r.pool_pps = rate(r.pool_sent, (t - start).as_secs_f64());
            r.inline_pps = rate(r.inline_sent, (last - t).as_secs_f64());
        }
        None => r.pool_pps = r.pps,
    }
    Ok(r)
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Datagrams in the plain generator's pool (it cycles through them; see [`send_plain`]).
pub const PLAIN_POOL: usize = 4096;

/// The plain generator: UDP datagrams from `o.inner.src` (bound here) to `o.inner.dst`, no
/// WireGuard — a host on a mesh interface whose traffic the gateway routes into a tunnel.
/// The payloads are the inner packets' UDP payloads (marker and sequence number, so that the
/// peer that decrypts them can check them), built in advance into a pool of
/// [`PLAIN_POOL`] (or `o.pool`) datagrams that it sends over and over (nothing on the path
/// refuses a repeated datagram), with `sendmmsg` and, with `o.gso`, UDP GSO, paced as
/// [`send`] is. `o.gateway` is not used: the kernel routes to the destination.
///
/// # Errors
/// When the socket cannot be opened or UDP GSO is asked for and missing.
pub fn send_plain(o: &SendOptions) -> Result<SendReport> {
    o.inner.check()?;
    if o.batch == 0 {
        bail!("the batch size must be at least 1");
    }
    let sock = socket(SocketAddr::V4(o.inner.src), SocketAddr::V4(o.inner.dst))?;
    let stride = o.inner.size - 28;
    let n = o.pool.unwrap_or(PLAIN_POOL).max(o.batch);
    let t0 = Instant::now();
    let mut pool = vec![0u8; n * stride];
    let mut ip = vec![0u8; o.inner.padded()];
    for (i, d) in pool.chunks_exact_mut(stride).enumerate() {
        o.inner.build(i as u64, &mut ip);
        d.copy_from_slice(&ip[28..o.inner.size]);
    }
    let fd = sock.as_raw_fd();
    let seg = if o.gso {
        isthmus_dataplane::io::mmsg::set_udp_segment(fd, stride as u16)
            .context("UDP GSO (UDP_SEGMENT) is not available")?;
        (65_000 / stride).clamp(1, 64)
    } else {
        1
    };
    let mut mm = Mmsg::new(o.batch.div_ceil(seg));
    let mut r = SendReport {
        pool_packets: n as u64,
        prepare_secs: t0.elapsed().as_secs_f64(),
        wire_len: stride,
        inner_size: o.inner.size,
        gso_segments: seg,
        ..SendReport::default()
    };
    let gap = o
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
    let start = Instant::now();
    let end = start + o.duration;
    let (mut idx, mut last) = (0usize, start);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if ahead_of_rate(gap, start, now, r.sent) {
            continue;
        }
        let count = (n - idx).min(o.batch);
        let pool_ref = &pool;
        let msgs = (idx..idx + count)
            .step_by(seg)
            .map(|i| &pool_ref[i * stride..(i + seg.min(idx + count - i)) * stride]);
        let sent = match mm.send(fd, msgs, true) {
            Ok(k) => (k * seg).min(count),
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(_) => {
                // Skip what failed (an ICMP error of the path, a full device queue).
                r.send_errors += 1;
                count
            }
        };
        idx = (idx + sent) % n;
        r.sent += sent as u64;
        last = Instant::now();
    }
    r.secs = (last - start).as_secs_f64();
    r.pps = rate(r.sent, r.secs);
    r.pool_sent = r.sent;
    r.pool_pps = r.pps;
    Ok(r)
}

/// A random local index for boringtun (it keeps 24 bits).
fn rand_index() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos());
    (t ^ std::process::id().rotate_left(12)) & 0x00ff_ffff
}

/// Where the sink gets its packets.
#[derive(Debug, Clone)]
pub enum SinkMode {
    /// A WireGuard peer of the gateway: handshake, then transport packets.
    Peer {
        /// The gateway's endpoint.
        gateway: SocketAddr,
    },
    /// Plain UDP to the inner destination (the gateway's tunnel → mesh path).
    Plain,
}

/// What the sink does.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Where the packets come from.
    pub mode: SinkMode,
    /// Our address: our WireGuard endpoint (peer), or the inner destination (plain).
    pub bind: SocketAddr,
    /// The generator's inner packets, to check what is decrypted.
    pub inner: Inner,
    /// Check one packet in this many (peer mode: decrypt it). Plain mode checks every packet
    /// when this is 1.
    pub sample: u64,
    /// Stop this long after the first data packet.
    pub duration: Duration,
    /// Stop when nothing came for this long after the first data packet.
    pub idle: Duration,
    /// Stop when no data packet came at all within this long.
    pub wait: Duration,
    /// Datagrams per `recvmmsg`.
    pub batch: usize,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
}

/// What the sink saw (printed as one JSON line by `isthmus-wggen sink`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkReport {
    /// Datagrams read that look like the generator's (transport packets, or plain
    /// datagrams of the inner length).
    pub received: u64,
    /// Seconds from the first to the last of them.
    pub secs: f64,
    /// `received ÷ secs`.
    pub pps: f64,
    /// Bytes of those datagrams.
    pub bytes: u64,
    /// Other datagrams (handshake messages, keepalives, strangers).
    pub other: u64,
    /// Sampled packets checked.
    pub samples: u64,
    /// Of them, those that decrypted (peer mode) and held the generator's inner packet.
    pub valid: u64,
    /// Of them, those that did not (the first reason is in `first_error`).
    pub invalid: u64,
    /// Why the first invalid sample was invalid.
    pub first_error: Option<String>,
    /// Highest sequence number seen in a valid sample.
    pub max_seq: Option<u64>,
    /// UDP datagrams the kernel of this namespace took in over the run, including those it
    /// dropped for a full socket buffer (`/proc/net/snmp`: Δ InDatagrams + Δ RcvbufErrors).
    pub host_udp_in: Option<u64>,
    /// Of them, dropped for a full socket buffer (Δ RcvbufErrors).
    pub host_rcvbuf_errors: Option<u64>,
    /// Handshake time, ms (peer mode).
    pub handshake_ms: Option<f64>,
}

/// `InDatagrams` and `RcvbufErrors` of `/proc/net/snmp`'s `Udp:` line (this namespace's).
#[must_use]
pub fn udp_snmp() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let vals: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |n: &str| -> Option<u64> {
        let i = names.iter().position(|x| *x == n)?;
        vals.get(i)?.parse().ok()
    };
    Some((get("InDatagrams")?, get("RcvbufErrors")?))
}

/// Runs the sink until the traffic stops (see [`SinkOptions`]). `ready` is called once it
/// can receive (after its handshake in peer mode).
///
/// # Errors
/// When the socket cannot be opened or the handshake fails.
pub fn sink(id: Option<Identity>, o: &SinkOptions, ready: impl FnOnce()) -> Result<SinkReport> {
    o.inner.check()?;
    let mut r = SinkReport::default();
    let (sock, mut tunn) = match &o.mode {
        SinkMode::Peer { gateway } => {
            let id = id.context("the peer sink needs keys")?;
            let sock = socket(o.bind, *gateway)?;
            let mut tunn = Tunn::new(id.private, id.gateway, None, None, rand_index(), None);
            let hs = handshake(&sock, &mut tunn, o.handshake_timeout)?;
            r.handshake_ms = Some(hs.as_secs_f64() * 1e3);
            eprintln!(
                "wggen sink: handshake with {gateway} in {:.1} ms",
                hs.as_secs_f64() * 1e3
            );
            (sock, Some(tunn))
        }
        SinkMode::Plain => {
            let s = UdpSocket::bind(o.bind).with_context(|| format!("binding {}", o.bind))?;
            let _ = socket2::SockRef::from(&s).set_recv_buffer_size(32 << 20);
            (s, None)
        }
    };
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    // The gateway may pad the inner packet to 16 bytes, within its MTU, or not at all
    // (boringtun does not): any length from unpadded to padded is the generator's.
    let expect = if tunn.is_some() {
        o.inner.size + WG_OVERHEAD..=o.inner.wire_len()
    } else {
        o.inner.size - 28..=o.inner.size - 28
    };
    let batch = o.batch.max(1);
    let mut bufs = vec![vec![0u8; 2048]; batch];
    let mut out = vec![0u8; 2048];
    let mut mm = Mmsg::new(batch);
    let fd = sock.as_raw_fd();
    let snmp0 = udp_snmp();
    ready();
    let started = Instant::now();
    let (mut first, mut last): (Option<Instant>, Instant) = (None, started);
    let sample = o.sample.max(1);
    loop {
        let now = Instant::now();
        match first {
            None if now - started > o.wait => break,
            Some(f) if now - f > o.duration || now - last > o.idle => break,
            _ => {}
        }
        let n = match mm.recv(fd, bufs.iter_mut().map(Vec::as_mut_slice)) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock
                        | ErrorKind::TimedOut
                        | ErrorKind::Interrupted
                        | ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("recvmmsg"),
        };
        let t = Instant::now();
        for (i, buf) in bufs.iter().enumerate().take(n) {
            let len = mm.len(i);
            let pkt = &buf[..len];
            let ours = expect.contains(&len) && (tunn.is_none() || pkt[0] == 4);
            if !ours {
                r.other += 1;
                // Handshake traffic from the gateway (a new session it wants): answer it.
                if let Some(tn) = tunn.as_mut() {
                    answer(&sock, tn, pkt, &mut out);
                }
                continue;
            }
            r.received += 1;
            r.bytes += len as u64;
            if first.is_none() {
                first = Some(t);
            }
            last = t;
            if r.received % sample != 0 {
                continue;
            }
            r.samples += 1;
            let checked = match tunn.as_mut() {
                Some(tn) => match tn.decapsulate(None, pkt, &mut out) {
                    TunnResult::WriteToTunnelV4(ip, _) => o.inner.check_ip(ip),
                    TunnResult::Err(_) => Err("did not decrypt"),
                    _ => Err("not a data packet"),
                },
                None => o.inner.check_udp_payload(pkt, false),
            };
            match checked {
                Ok(seq) => {
                    r.valid += 1;
                    r.max_seq = Some(r.max_seq.map_or(seq, |m| m.max(seq)));
                }
                Err(why) => {
                    r.invalid += 1;
                    r.first_error.get_or_insert_with(|| why.to_owned());
                }
            }
        }
    }
    if let (Some((in0, e0)), Some((in1, e1))) = (snmp0, udp_snmp()) {
        r.host_rcvbuf_errors = Some(e1.saturating_sub(e0));
        r.host_udp_in = Some(in1.saturating_sub(in0) + e1.saturating_sub(e0));
    }
    if let Some(f) = first {
        r.secs = (last - f).as_secs_f64();
        r.pps = rate(r.received, r.secs);
    }
    Ok(r)
}

/// Hands a non-data datagram to the session and sends what it answers.
fn answer(sock: &UdpSocket, tunn: &mut Tunn, pkt: &[u8], out: &mut [u8]) {
    let peer = sock.peer_addr().ok().map(|a| a.ip());
    let mut res = tunn.decapsulate(peer, pkt, out);
    while let TunnResult::WriteToNetwork(p) = res {
        let _ = sock.send(p);
        res = tunn.decapsulate(None, &[], out);
    }
}

/// The AEAD ceiling: ChaCha20-Poly1305 open + seal of one `inner`-sized packet per relayed
/// packet (the chacha20poly1305 crate), on this thread, for about `secs`. Returns packets
/// per second: what a relay on one core could do if it did nothing but its cryptography.
#[must_use]
pub fn aead_ceiling(inner: &Inner, secs: f64) -> f64 {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Nonce};
    fn nonce(c: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&c.to_le_bytes());
        n.into()
    }
    // Two sessions: a packet sealed under one is opened and sealed under the other, and the
    // next round goes back, so every round is exactly one open and one seal per packet.
    let keys = [
        ChaCha20Poly1305::new(&[7u8; 32].into()),
        ChaCha20Poly1305::new(&[9u8; 32].into()),
    ];
    let len = inner.padded();
    let mut counter = 0u64;
    let mut ring: Vec<(Vec<u8>, chacha20poly1305::Tag, u64)> = (0..64u64)
        .map(|i| {
            let mut b = vec![0u8; len];
            inner.build(i, &mut b);
            counter += 1;
            let tag = keys[0]
                .encrypt_in_place_detached(&nonce(counter), &[], &mut b)
                .expect("seal");
            (b, tag, counter)
        })
        .collect();
    let start = Instant::now();
    let (mut done, mut round) = (0u64, 0usize);
    while start.elapsed().as_secs_f64() < secs {
        let (from, to) = (&keys[round % 2], &keys[(round + 1) % 2]);
        for (b, tag, n) in &mut ring {
            let opened = from.decrypt_in_place_detached(&nonce(*n), &[], b, tag);
            assert!(opened.is_ok(), "the ceiling's own packets open");
            counter += 1;
            *tag = to
                .encrypt_in_place_detached(&nonce(counter), &[], b)
                .expect("seal");
            *n = counter;
        }
        done += ring.len() as u64;
        round += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// The same ceiling with ring's ChaCha20-Poly1305 (the assembly boringtun, and so isthmus-dp
/// and boringtun-cli, use; the chacha20poly1305 crate's portable build of [`aead_ceiling`]
/// is several times slower on x86-64 without `-C target-cpu`).
#[must_use]
pub fn aead_ceiling_ring(inner: &Inner, secs: f64) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let key = |b: u8| {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[b; 32]).expect("a 32-byte key"))
    };
    let keys = [key(7), key(9)];
    let nonce = |c: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&c.to_le_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let len = inner.padded();
    let mut counter = 0u64;
    let seal = |k: &LessSafeKey, c: u64, b: &mut Vec<u8>| {
        let tag = k
            .seal_in_place_separate_tag(nonce(c), Aad::empty(), &mut b[..len])
            .expect("seal");
        b[len..].copy_from_slice(tag.as_ref());
    };
    let mut ring: Vec<(Vec<u8>, u64)> = (0..64u64)
        .map(|i| {
            let mut b = vec![0u8; len + 16];
            inner.build(i, &mut b);
            counter += 1;
            seal(&keys[0], counter, &mut b);
            (b, counter)
        })
        .collect();
    let start = Instant::now();
    let (mut done, mut round) = (0u64, 0usize);
    while start.elapsed().as_secs_f64() < secs {
        let (from, to) = (&keys[round % 2], &keys[(round + 1) % 2]);
        for (b, n) in &mut ring {
            let opened = from.open_in_place(nonce(*n), Aad::empty(), b).is_ok();
            assert!(opened, "the ceiling's own packets open");
            counter += 1;
            seal(to, counter, b);
            *n = counter;
        }
        done += ring.len() as u64;
        round += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// `0.0.0.0:port`.
#[must_use]
pub fn any_v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// Pacing at one packet per `gap` from `start`: whether `sent` packets are ahead of the
/// schedule at `now`, after sleeping off most of the lead (a lead under 50 µs is spun).
fn ahead_of_rate(gap: Option<Duration>, start: Instant, now: Instant, sent: u64) -> bool {
    let Some(gap) = gap else { return false };
    let due = start + gap.mul_f64(sent as f64);
    if due <= now {
        return false;
    }
    let wait = due - now;
    if wait > Duration::from_micros(50) {
        std::thread::sleep(wait);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(size: usize) -> Inner {
        Inner {
            src: "10.40.0.1:4000".parse().unwrap(),
            dst: "10.40.0.2:9".parse().unwrap(),
            size,
        }
    }

    #[test]
    fn inner_packets_round_trip_and_are_checked() {
        for size in [MIN_INNER, 64, 100, 1420] {
            let i = inner(size);
            let mut b = vec![0xaa; i.padded()];
            i.build(77, &mut b);
            assert_eq!(i.check_ip(&b), Ok(77));
            assert_eq!(i.check_udp_payload(&b[28..size], false), Ok(77));
            assert!(b[size..].iter().all(|x| *x == 0), "padding is zero");
            let mut bad = b.clone();
            bad[size - 1] ^= 1;
            if size > MIN_INNER {
                assert_eq!(i.check_ip(&bad), Err("payload"));
            } else {
                assert_eq!(i.check_ip(&bad), Ok(76), "the last byte is the sequence's");
            }
            let mut bad = b.clone();
            bad[15] ^= 1;
            assert!(i.check_ip(&bad).is_err());
        }
        assert!(inner(20).check().is_err());
        assert!(inner(1421).check().is_err());
        assert_eq!(inner(64).wire_len(), 96);
        assert_eq!(inner(1420).wire_len(), 1456);
    }

    #[test]
    fn the_pool_fits_the_budget() {
        let mut o = SendOptions {
            gateway: any_v4(1),
            bind: any_v4(0),
            inner: inner(64),
            duration: Duration::from_secs(2),
            rate: Some(1000),
            batch: 64,
            pool: None,
            pool_mb: 1,
            handshake_timeout: Duration::from_secs(1),
            gso: false,
        };
        assert_eq!(pool_size(&o), 2040 + 64);
        o.rate = None;
        assert_eq!(pool_size(&o), (1 << 20) / 96);
        o.pool = Some(10);
        assert_eq!(pool_size(&o), 64, "at least one batch");
    }

    /// The generator's and the sink's sessions against a boringtun responder over loopback:
    /// what the generator sends decrypts at the responder.
    #[test]
    fn generator_packets_decrypt_at_a_boringtun_responder() {
        let gw = StaticSecret::random_from_rng(rand_core::OsRng);
        let me = StaticSecret::random_from_rng(rand_core::OsRng);
        let (gw_pub, me_pub) = (PublicKey::from(&gw), PublicKey::from(&me));
        let gsock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gaddr = gsock.local_addr().unwrap();
        let o = SendOptions {
            gateway: gaddr,
            bind: "127.0.0.1:0".parse().unwrap(),
            inner: inner(64),
            duration: Duration::from_millis(200),
            rate: Some(5000),
            batch: 64,
            pool: Some(200), // less than the run needs: the in-line phase runs too
            pool_mb: 16,
            handshake_timeout: Duration::from_secs(5),
            gso: true,
        };
        let responder = std::thread::spawn(move || {
            let mut t = Tunn::new(gw, me_pub, None, None, 1, None);
            let mut buf = vec![0u8; 2048];
            let mut out = vec![0u8; 2048];
            gsock
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let (mut ok, mut seqs) = (0u64, Vec::new());
            while let Ok((n, from)) = gsock.recv_from(&mut buf) {
                match t.decapsulate(Some(from.ip()), &buf[..n], &mut out) {
                    TunnResult::WriteToNetwork(p) => {
                        gsock.send_to(p, from).unwrap();
                    }
                    TunnResult::WriteToTunnelV4(ip, _) => {
                        seqs.push(inner(64).check_ip(ip).unwrap());
                        ok += 1;
                    }
                    _ => {}
                }
            }
            (ok, seqs)
        });
        let id = Identity {
            private: me,
            gateway: gw_pub,
        };
        let r = send(id, &o).unwrap();
        let (ok, seqs) = responder.join().unwrap();
        assert!(r.sent > 200 && r.inline_sent > 0, "{r:?}");
        assert_eq!(r.pool_sent, 200);
        assert_eq!(ok, r.sent, "every packet decrypted: {r:?}");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "in order");
    }

    /// The plain generator's datagrams, with and without GSO, arrive as the inner packets'
    /// UDP payloads.
    #[test]
    fn plain_datagrams_carry_the_inner_payload() {
        for gso in [false, true] {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let SocketAddr::V4(dst) = rx.local_addr().unwrap() else {
                unreachable!()
            };
            let i = Inner {
                src: "127.0.0.1:0".parse().unwrap(),
                dst,
                size: 100,
            };
            let o = SendOptions {
                gateway: any_v4(1),
                bind: any_v4(0),
                inner: i,
                duration: Duration::from_millis(100),
                rate: Some(2000),
                batch: 16,
                pool: Some(50), // fewer than the run sends: the pool cycles
                pool_mb: 1,
                handshake_timeout: Duration::from_secs(1),
                gso,
            };
            let r = send_plain(&o).unwrap();
            assert!(r.sent > 50 && r.send_errors == 0, "{r:?}");
            assert_eq!(r.gso_segments > 1, gso);
            let mut buf = [0u8; 2048];
            let mut seqs = Vec::new();
            while let Ok(n) = rx.recv(&mut buf) {
                seqs.push(i.check_udp_payload(&buf[..n], false).unwrap());
                if seqs.len() as u64 == r.sent {
                    break;
                }
            }
            assert_eq!(seqs.len() as u64, r.sent);
            assert_eq!(seqs[..52], (0..52).map(|k| k % 50).collect::<Vec<_>>()[..]);
        }
    }

    #[test]
    fn the_ceiling_is_positive() {
        assert!(aead_ceiling(&inner(64), 0.05) > 1000.0);
        assert!(aead_ceiling_ring(&inner(1420), 0.05) > 1000.0);
    }
}
