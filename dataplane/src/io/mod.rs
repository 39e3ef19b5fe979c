//! I/O backends: the UDP underlay and the TUN device (Linux), and the in-memory loopback.
//! `unsafe` is allowed here and only here, each block with a `// SAFETY:` comment.

#![allow(unsafe_code)]

pub mod loopback;
pub mod metrics;
pub mod offload;
pub mod tun;
pub mod udp;
pub mod unix;
