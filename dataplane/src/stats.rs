//! Counters and their Prometheus text exposition.
//!
//! Global counters are per worker thread: one writer each, so an increment is a relaxed load
//! and store, no locked read-modify-write and no shared cache line between workers. A scrape
//! sums the workers. Per-peer counters live in the peer (see `tunnel::PeerCounters`).
//!
//! The exposition is written directly in the Prometheus text format: the `prometheus` crate's
//! registry model (one registered metric per series, updated in place) does not fit per-thread
//! counters summed at scrape time, and the text format is small and stable.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a packet was dropped. Each is a value of the `reason` label of `isthmus_drops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not a WireGuard message: unknown type, wrong size, garbage.
    BadPacket,
    /// Datagram larger than the receive buffer.
    Oversized,
    /// Transport/response/cookie message for a receiver index we do not have.
    UnknownIndex,
    /// Handshake initiation from a key that is not a configured peer.
    UnknownPeer,
    /// Handshake message failed (bad MAC, bad decryption, stale timestamp).
    HandshakeFailed,
    /// Handshake refused under load (a cookie reply was sent instead).
    HandshakeRateLimited,
    /// Transport data failed authentication.
    DecryptFailed,
    /// Transport data with a counter already seen or too old.
    Replay,
    /// No current session for the receiver index (expired keys).
    NoSession,
    /// Decrypted packet's source not in the sending peer's allowed IPs.
    SpoofedSource,
    /// Decrypted packet is not IPv4/IPv6 or its header is malformed.
    BadInnerPacket,
    /// No route for the destination.
    NoRoute,
    /// Route is a blackhole.
    Blackhole,
    /// TTL / hop limit ran out while relaying.
    TtlExceeded,
    /// Larger than the next hop's MTU.
    TooBig,
    /// Destination peer has no endpoint yet.
    NoEndpoint,
    /// Destination peer is the one the packet came from (would loop).
    Loop,
    /// The control plane is not listening for punted packets.
    PuntDropped,
    /// A write to the UDP socket or TUN device failed.
    TxError,
    /// No private key configured.
    NoKey,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 20] = [
        Self::BadPacket,
        Self::Oversized,
        Self::UnknownIndex,
        Self::UnknownPeer,
        Self::HandshakeFailed,
        Self::HandshakeRateLimited,
        Self::DecryptFailed,
        Self::Replay,
        Self::NoSession,
        Self::SpoofedSource,
        Self::BadInnerPacket,
        Self::NoRoute,
        Self::Blackhole,
        Self::TtlExceeded,
        Self::TooBig,
        Self::NoEndpoint,
        Self::Loop,
        Self::PuntDropped,
        Self::TxError,
        Self::NoKey,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadPacket => "bad_packet",
            Self::Oversized => "oversized",
            Self::UnknownIndex => "unknown_index",
            Self::UnknownPeer => "unknown_peer",
            Self::HandshakeFailed => "handshake_failed",
            Self::HandshakeRateLimited => "handshake_rate_limited",
            Self::DecryptFailed => "decrypt_failed",
            Self::Replay => "replay",
            Self::NoSession => "no_session",
            Self::SpoofedSource => "spoofed_source",
            Self::BadInnerPacket => "bad_inner_packet",
            Self::NoRoute => "no_route",
            Self::Blackhole => "blackhole",
            Self::TtlExceeded => "ttl_exceeded",
            Self::TooBig => "too_big",
            Self::NoEndpoint => "no_endpoint",
            Self::Loop => "loop",
            Self::PuntDropped => "punt_dropped",
            Self::TxError => "tx_error",
            Self::NoKey => "no_key",
        }
    }
}

/// How a packet was forwarded: a value of the `path` label of `isthmus_forwarded_packets_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Path {
    /// From one peer to another, decrypted and re-encrypted in user space.
    Relay,
    /// From a peer to the TUN device.
    ToLocal,
    /// From the TUN device to a peer.
    FromLocal,
    /// From a peer to the control plane (Babel).
    Punt,
    /// From a peer to a neighbour on a mesh interface, as a frame through its XSK.
    ToMesh,
    /// From a mesh interface's XSK to a peer.
    FromMesh,
}

impl Path {
    /// Every path.
    pub const ALL: [Path; 6] = [
        Self::Relay,
        Self::ToLocal,
        Self::FromLocal,
        Self::Punt,
        Self::ToMesh,
        Self::FromMesh,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::ToLocal => "to_local",
            Self::FromLocal => "from_local",
            Self::Punt => "punt",
            Self::ToMesh => "to_mesh",
            Self::FromMesh => "from_mesh",
        }
    }
}

/// A counter with a single writer thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning thread may call this (one writer, so load+store is exact).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Set to `v`: for counters that mirror one the kernel keeps. Only the owning thread.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
}

/// Why the kernel dropped a frame on its way to an XSK (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskDrop {
    /// The rx ring was full: the worker did not keep up.
    RxRingFull,
    /// The fill ring was empty: no frame to copy into.
    FillRingEmpty,
    /// The socket's other drops (`rx_dropped` and invalid descriptors; in copy mode the
    /// kernel counts a frame lost to an empty fill ring here too).
    Other,
}

impl XskDrop {
    /// Every reason, in index order.
    pub const ALL: [XskDrop; 3] = [Self::RxRingFull, Self::FillRingEmpty, Self::Other];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RxRingFull => "rx_ring_full",
            Self::FillRingEmpty => "fill_ring_empty",
            Self::Other => "other",
        }
    }
}

/// The counters of one worker thread.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Drops by reason (index: `DropReason as usize`).
    pub drops: [Counter; DropReason::ALL.len()],
    /// Forwarded packets by path.
    pub forwarded: [Counter; Path::ALL.len()],
    /// Forwarded bytes by path.
    pub forwarded_bytes: [Counter; Path::ALL.len()],
    /// ICMP errors generated.
    pub icmp_sent: Counter,
    /// ICMP errors not sent: over the rate limit (`icmp_rate`, `icmp_burst`).
    pub icmp_ratelimited: Counter,
    /// IPv4 packets fragmented to fit the tunnel MTU (the kernel's `FragOKs`).
    pub fragmented: Counter,
    /// Fragments made of them (the kernel's `FragCreates`).
    pub fragments: Counter,
    /// Cookie replies sent under load.
    pub cookies_sent: Counter,
    /// TCP SYNs whose MSS was clamped.
    pub mss_clamped: Counter,
    /// Receive batches and the packets they carried (batch efficiency).
    pub rx_batches: Counter,
    /// Packets received (UDP + TUN).
    pub rx_packets: Counter,
    /// Frames received through an XSK (AF_XDP backend; underlay and mesh interfaces).
    pub xdp_rx: Counter,
    /// Packets from a mesh interface whose TCP/UDP checksum the sender had left to the
    /// device (a virtual link's checksum offload), completed before encryption.
    pub checksum_completed: Counter,
    /// Frames sent through an XSK.
    pub xdp_tx: Counter,
    /// Packets the AF_XDP backend sent through the kernel instead (the UDP socket, or the
    /// TUN device for a mesh neighbour): the next hop's link-layer address was not resolved
    /// yet (sending makes the kernel resolve it).
    pub xdp_neigh_fallback: Counter,
    /// Frames the kernel dropped before they reached this worker's XSKs, by [`XskDrop`]
    /// (the sockets' own counters, refreshed by the worker).
    pub xdp_kernel_drops: [Counter; XskDrop::ALL.len()],
}

impl WorkerCounters {
    /// Count a drop.
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason as usize].add(1);
    }

    /// Count a forwarded packet.
    #[inline]
    pub fn forwarded(&self, path: Path, bytes: usize) {
        self.forwarded[path as usize].add(1);
        self.forwarded_bytes[path as usize].add(bytes as u64);
    }
}

/// Sum of all workers' counters at one moment.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Drops by reason.
    pub drops: [u64; DropReason::ALL.len()],
    /// Forwarded packets by path.
    pub forwarded: [u64; Path::ALL.len()],
    /// Forwarded bytes by path.
    pub forwarded_bytes: [u64; Path::ALL.len()],
    /// ICMP errors generated.
    pub icmp_sent: u64,
    /// ICMP errors over the rate limit, not sent.
    pub icmp_ratelimited: u64,
    /// IPv4 packets fragmented.
    pub fragmented: u64,
    /// Fragments made.
    pub fragments: u64,
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// MSS clamps.
    pub mss_clamped: u64,
    /// Receive batches.
    pub rx_batches: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Frames received through XSKs.
    pub xdp_rx: u64,
    /// See [`WorkerCounters::checksum_completed`].
    pub checksum_completed: u64,
    /// Frames sent through XSKs.
    pub xdp_tx: u64,
    /// Datagrams sent by the kernel for an unresolved neighbour.
    pub xdp_neigh_fallback: u64,
    /// Frames the kernel dropped on their way to an XSK, by [`XskDrop`].
    pub xdp_kernel_drops: [u64; XskDrop::ALL.len()],
}

impl Totals {
    /// Sum `workers`.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Self {
        let mut t = Totals::default();
        for w in workers {
            for (a, c) in t.drops.iter_mut().zip(&w.drops) {
                *a += c.get();
            }
            for (a, c) in t.forwarded.iter_mut().zip(&w.forwarded) {
                *a += c.get();
            }
            for (a, c) in t.forwarded_bytes.iter_mut().zip(&w.forwarded_bytes) {
                *a += c.get();
            }
            t.icmp_sent += w.icmp_sent.get();
            t.icmp_ratelimited += w.icmp_ratelimited.get();
            t.fragmented += w.fragmented.get();
            t.fragments += w.fragments.get();
            t.cookies_sent += w.cookies_sent.get();
            t.mss_clamped += w.mss_clamped.get();
            t.rx_batches += w.rx_batches.get();
            t.rx_packets += w.rx_packets.get();
            t.xdp_rx += w.xdp_rx.get();
            t.checksum_completed += w.checksum_completed.get();
            t.xdp_tx += w.xdp_tx.get();
            t.xdp_neigh_fallback += w.xdp_neigh_fallback.get();
            for (a, c) in t.xdp_kernel_drops.iter_mut().zip(&w.xdp_kernel_drops) {
                *a += c.get();
            }
        }
        t
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Forwarded packets on one path.
    pub fn forwarded_on(&self, path: Path) -> u64 {
        self.forwarded[path as usize]
    }
}

/// Everything a scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Interface name.
    pub ifname: String,
    /// Worker totals.
    pub totals: Totals,
    /// Peers.
    pub peers: Vec<crate::tunnel::PeerInfo>,
    /// IPv4 / IPv6 FIB sizes.
    pub fib_v4: usize,
    /// IPv6 FIB size.
    pub fib_v6: usize,
    /// FIB marked stale (control plane gone).
    pub fib_stale: bool,
    /// The device's public key, once it has a private key.
    pub public_key: Option<crate::keys::Key>,
    /// Handshake latencies (our initiation to the peer's response).
    pub handshake_seconds: crate::io::metrics::Histogram,
    /// How often each bound was reached.
    pub limits: Vec<(crate::limits::Limit, u64)>,
    /// The peer table's bound (`max_peers`).
    pub max_peers: usize,
}

use crate::io::metrics::escape_label as escape;

/// A peer's endpoint as a label value ("" without one, as wireguard_exporter shows it).
fn endpoint(p: &crate::tunnel::PeerInfo) -> String {
    p.endpoint.map(|e| e.to_string()).unwrap_or_default()
}

/// A peer's allowed IPs as one label value, comma-separated.
fn allowed_ips(p: &crate::tunnel::PeerInfo) -> String {
    let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
    ips.join(",")
}

/// The series of mdlayher/wireguard_exporter (its names, labels and help texts): per-peer
/// series keyed by `device` and `public_key`, so that dashboards made for it (grafana.com
/// 12177 and its like) work unchanged.
fn wireguard_exporter_series(o: &mut String, s: &Sample, device: &str) {
    let own = s
        .public_key
        .map(|k| crate::tunnel::key_b64(&k))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "# HELP wireguard_device_info Metadata about a device.\n# TYPE wireguard_device_info gauge\n\
         wireguard_device_info{{device=\"{device}\",public_key=\"{own}\"}} 1"
    );
    let _ = writeln!(
        o,
        "# HELP wireguard_peer_info Metadata about a peer. The public_key label on peer metrics refers to the peer's public key; not the device's public key.\n# TYPE wireguard_peer_info gauge"
    );
    let key = |p: &crate::tunnel::PeerInfo| crate::tunnel::key_b64(&p.public_key);
    for p in &s.peers {
        let _ = writeln!(
            o,
            "wireguard_peer_info{{device=\"{device}\",public_key=\"{}\",allowed_ips=\"{}\",endpoint=\"{}\",name=\"{}\"}} 1",
            key(p),
            allowed_ips(p),
            endpoint(p),
            escape(p.name.as_deref().unwrap_or_default())
        );
    }
    type Value = fn(&crate::tunnel::PeerInfo) -> u64;
    let series: [(&str, &str, &str, Value); 3] = [
        (
            "wireguard_peer_receive_bytes_total",
            "counter",
            "Number of bytes received from a given peer.",
            |p| p.rx_bytes,
        ),
        (
            "wireguard_peer_transmit_bytes_total",
            "counter",
            "Number of bytes transmitted to a given peer.",
            |p| p.tx_bytes,
        ),
        (
            "wireguard_peer_last_handshake_seconds",
            "gauge",
            "UNIX timestamp for the last handshake with a given peer.",
            |p| {
                (p.last_handshake)
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs())
            },
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in &s.peers {
            let _ = writeln!(
                o,
                "{name}{{device=\"{device}\",public_key=\"{}\"}} {}",
                key(p),
                get(p)
            );
        }
    }
}

/// Render a sample in the Prometheus text exposition format (version 0.0.4); with
/// `wireguard_exporter`, the per-peer series also under the names and labels of
/// mdlayher/wireguard_exporter, which most WireGuard dashboards are built on.
pub fn render(s: &Sample, wireguard_exporter: bool) -> String {
    let mut o = String::with_capacity(4096);
    let iface = escape(&s.ifname);
    o.push_str(&crate::io::metrics::build_info(
        "isthmus-dp",
        &format!("interface=\"{iface}\""),
    ));

    type PeerField = fn(&crate::tunnel::PeerInfo) -> u64;
    let peer_counters: [(&str, &str, PeerField); 5] = [
        (
            "isthmus_peer_rx_bytes_total",
            "Bytes received from the peer.",
            |p| p.rx_bytes,
        ),
        (
            "isthmus_peer_tx_bytes_total",
            "Bytes sent to the peer.",
            |p| p.tx_bytes,
        ),
        (
            "isthmus_peer_rx_packets_total",
            "Packets received from the peer.",
            |p| p.rx_packets,
        ),
        (
            "isthmus_peer_tx_packets_total",
            "Packets sent to the peer.",
            |p| p.tx_packets,
        ),
        (
            "isthmus_peer_handshakes_total",
            "Completed handshakes with the peer.",
            |p| p.handshakes,
        ),
    ];
    // Each peer's labels, once.
    let labels: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            format!(
                "interface=\"{iface}\",peer=\"{}\",public_key=\"{}\",class=\"{}\"",
                escape(&p.label()),
                crate::tunnel::key_b64(&p.public_key),
                p.class.as_str()
            )
        })
        .collect();
    for (name, help, get) in peer_counters {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (p, l) in s.peers.iter().zip(&labels) {
            let _ = writeln!(o, "{name}{{{l}}} {}", get(p));
        }
    }
    let name = "isthmus_peer_info";
    let _ = writeln!(
        o,
        "# HELP {name} A peer's endpoint and allowed IPs (comma-separated).\n# TYPE {name} gauge"
    );
    for (p, l) in s.peers.iter().zip(&labels) {
        let _ = writeln!(
            o,
            "{name}{{{l},endpoint=\"{}\",allowed_ips=\"{}\"}} 1",
            endpoint(p),
            allowed_ips(p)
        );
    }
    let name = "isthmus_peer_last_handshake_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Unix time of the last completed handshake (0: never)."
    );
    let _ = writeln!(o, "# TYPE {name} gauge");
    for (p, l) in s.peers.iter().zip(&labels) {
        let t = p
            .last_handshake
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(o, "{name}{{{l}}} {t}");
    }

    if wireguard_exporter {
        wireguard_exporter_series(&mut o, s, &iface);
    }

    let _ = writeln!(
        o,
        "# HELP isthmus_forwarded_packets_total Packets forwarded, by path."
    );
    let _ = writeln!(o, "# TYPE isthmus_forwarded_packets_total counter");
    for p in Path::ALL {
        let v = s.totals.forwarded[p as usize];
        let _ = writeln!(
            o,
            "isthmus_forwarded_packets_total{{path=\"{}\"}} {v}",
            p.label()
        );
    }
    let _ = writeln!(
        o,
        "# HELP isthmus_forwarded_bytes_total Bytes forwarded, by path."
    );
    let _ = writeln!(o, "# TYPE isthmus_forwarded_bytes_total counter");
    for p in Path::ALL {
        let v = s.totals.forwarded_bytes[p as usize];
        let _ = writeln!(
            o,
            "isthmus_forwarded_bytes_total{{path=\"{}\"}} {v}",
            p.label()
        );
    }
    let _ = writeln!(o, "# HELP isthmus_drops_total Packets dropped, by reason.");
    let _ = writeln!(o, "# TYPE isthmus_drops_total counter");
    for r in DropReason::ALL {
        let v = s.totals.drops[r as usize];
        let _ = writeln!(o, "isthmus_drops_total{{reason=\"{}\"}} {v}", r.label());
    }
    let simple: [(&str, &str, &str, u64); 12] = [
        (
            "isthmus_icmp_errors_sent_total",
            "counter",
            "ICMP errors generated.",
            s.totals.icmp_sent,
        ),
        (
            "isthmus_icmp_errors_ratelimited_total",
            "counter",
            "ICMP errors not sent: over the rate limit (icmp_rate, icmp_burst).",
            s.totals.icmp_ratelimited,
        ),
        (
            "isthmus_fragmented_packets_total",
            "counter",
            "IPv4 packets without DF fragmented to fit the tunnel MTU.",
            s.totals.fragmented,
        ),
        (
            "isthmus_fragments_created_total",
            "counter",
            "Fragments made of them.",
            s.totals.fragments,
        ),
        (
            "isthmus_cookie_replies_sent_total",
            "counter",
            "Cookie replies sent under load.",
            s.totals.cookies_sent,
        ),
        (
            "isthmus_mss_clamped_total",
            "counter",
            "TCP SYNs whose MSS was clamped.",
            s.totals.mss_clamped,
        ),
        (
            "isthmus_rx_batches_total",
            "counter",
            "Receive batches processed.",
            s.totals.rx_batches,
        ),
        (
            "isthmus_rx_packets_total",
            "counter",
            "Packets received from UDP and TUN.",
            s.totals.rx_packets,
        ),
        (
            "isthmus_checksum_completed_total",
            "counter",
            "Packets from a mesh interface whose TCP/UDP checksum was left to the device by the sender (checksum offload on a virtual link), completed before encryption.",
            s.totals.checksum_completed,
        ),
        (
            "isthmus_xdp_rx_frames_total",
            "counter",
            "Frames received through AF_XDP sockets (underlay and mesh interfaces).",
            s.totals.xdp_rx,
        ),
        (
            "isthmus_xdp_tx_frames_total",
            "counter",
            "Frames sent through AF_XDP sockets (underlay and mesh interfaces).",
            s.totals.xdp_tx,
        ),
        (
            "isthmus_xdp_neighbour_fallback_total",
            "counter",
            "Packets sent through the kernel because the next hop's MAC was not resolved yet.",
            s.totals.xdp_neigh_fallback,
        ),
    ];
    for (name, kind, help, v) in simple {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP isthmus_xdp_kernel_drops_total Frames the kernel dropped on their way to an AF_XDP socket, by reason.\n# TYPE isthmus_xdp_kernel_drops_total counter"
    );
    for r in XskDrop::ALL {
        let _ = writeln!(
            o,
            "isthmus_xdp_kernel_drops_total{{reason=\"{}\"}} {}",
            r.label(),
            s.totals.xdp_kernel_drops[r as usize]
        );
    }
    o.push_str(&s.handshake_seconds.render(
        "isthmus_handshake_seconds",
        "Time from a handshake initiation we sent to the peer's response.",
    ));
    let _ = writeln!(o, "# HELP isthmus_fib_routes Routes in the FIB, by family.");
    let _ = writeln!(o, "# TYPE isthmus_fib_routes gauge");
    let _ = writeln!(o, "isthmus_fib_routes{{family=\"ipv4\"}} {}", s.fib_v4);
    let _ = writeln!(o, "isthmus_fib_routes{{family=\"ipv6\"}} {}", s.fib_v6);
    let _ = writeln!(
        o,
        "# HELP isthmus_fib_stale 1 while the FIB is kept from a control plane that went away."
    );
    let _ = writeln!(o, "# TYPE isthmus_fib_stale gauge");
    let _ = writeln!(o, "isthmus_fib_stale {}", u8::from(s.fib_stale));
    let _ = writeln!(o, "# HELP isthmus_limit_reached_total New entries refused (a UAPI client: the oldest closed) because a bounded table or queue was full, by table.");
    let _ = writeln!(o, "# TYPE isthmus_limit_reached_total counter");
    for (l, n) in &s.limits {
        let _ = writeln!(
            o,
            "isthmus_limit_reached_total{{table=\"{}\"}} {n}",
            l.label()
        );
    }
    let _ = writeln!(
        o,
        "# HELP isthmus_table_entries Entries in a bounded table."
    );
    let _ = writeln!(o, "# TYPE isthmus_table_entries gauge");
    let _ = writeln!(
        o,
        "isthmus_table_entries{{table=\"peers\"}} {}",
        s.peers.len()
    );
    let _ = writeln!(o, "# HELP isthmus_table_limit The bound of a table.");
    let _ = writeln!(o, "# TYPE isthmus_table_limit gauge");
    let _ = writeln!(o, "isthmus_table_limit{{table=\"peers\"}} {}", s.max_peers);
    o
}
