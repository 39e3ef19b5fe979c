//! Fixed headers as zero-copy views: `#[repr(C)]` structs of byte-order-aware fields that
//! zerocopy lays over a packet buffer without copying or unsafe code.

use zerocopy::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::WireError;

/// The IPv4 header without options (RFC 791).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv4Header {
    /// Version (4) and header length in 32-bit words.
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length.
    pub total_len: U16,
    /// Identification.
    pub id: U16,
    /// Flags (DF, MF) and fragment offset.
    pub flags_frag: U16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol.
    pub protocol: u8,
    /// Header checksum.
    pub checksum: U16,
    /// Source.
    pub src: [u8; 4],
    /// Destination.
    pub dst: [u8; 4],
}

/// The IPv6 fixed header (RFC 8200).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Ipv6Header {
    /// Version (6), traffic class, flow label.
    pub version_tc_flow: U32,
    /// Payload length.
    pub payload_len: U16,
    /// Next header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source.
    pub src: [u8; 16],
    /// Destination.
    pub dst: [u8; 16],
}

/// The UDP header (RFC 768).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Length of header and data.
    pub len: U16,
    /// Checksum.
    pub checksum: U16,
}

/// The fixed part of the TCP header (RFC 9293).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Sequence number.
    pub seq: U32,
    /// Acknowledgment number.
    pub ack: U32,
    /// Data offset (high nibble).
    pub data_offset: u8,
    /// Flags (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    /// Window.
    pub window: U16,
    /// Checksum.
    pub checksum: U16,
    /// Urgent pointer.
    pub urgent: U16,
}

/// The ICMP / ICMPv6 header: type, code, checksum and the 4-byte rest-of-header.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IcmpHeader {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// Checksum.
    pub checksum: U16,
    /// Rest of header (unused, MTU, pointer, id/sequence).
    pub rest: [u8; 4],
}

/// The header every WireGuard message starts with: type and three reserved zero bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct WgHeader {
    /// Message type (1..=4).
    pub ty: u8,
    /// Must be zero.
    pub reserved: [u8; 3],
}

/// View the start of `buf` as `T`, or say it is too short.
#[inline]
pub fn view<T: FromBytes + KnownLayout + Immutable + Unaligned>(
    buf: &[u8],
) -> Result<&T, WireError> {
    T::ref_from_prefix(buf)
        .map(|(h, _)| h)
        .map_err(|_| WireError::Truncated)
}

/// View the start of `buf` as a mutable `T`.
#[inline]
pub fn view_mut<T: FromBytes + IntoBytes + KnownLayout + Unaligned>(
    buf: &mut [u8],
) -> Result<&mut T, WireError> {
    T::mut_from_prefix(buf)
        .map(|(h, _)| h)
        .map_err(|_| WireError::Truncated)
}
