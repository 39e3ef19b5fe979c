//! I/O backends behind one seam ([`backend::Backend`]): the UDP underlay and the TUN device
//! (Linux), the AF_XDP underlay's pieces, and the in-memory loopback; and the local servers
//! (UAPI and control sockets, metrics).
//! `unsafe` is allowed here and only here, each block with a `// SAFETY:` comment.

#![allow(unsafe_code)]

pub mod backend;
pub mod bpf;
pub mod ifaddr;
pub mod loopback;
pub mod metrics;
pub mod mmsg;
pub mod netlink;
pub mod notify;
pub mod offload;
pub mod privs;
pub mod tun;
pub mod udp;
pub mod unix;
pub mod xdp_prog;
pub mod xsk;
