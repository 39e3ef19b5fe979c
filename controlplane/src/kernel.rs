//! The control plane's seam to the kernel's routing table: rtnetlink over a raw `NETLINK_ROUTE`
//! socket (through `libc`, no netlink crate).
//!
//! A [`Kernel`] installs, removes and lists the routes of one protocol number (by default
//! [`RTPROT_ISTHMUS`]) in one routing table. It never removes a route carrying another protocol
//! number: deletions name our protocol, and the kernel only matches routes that carry it.
//!
//! Mind the kernel's key for a route: (table, prefix, TOS, metric). [`Kernel::replace`] sends
//! `NLM_F_CREATE | NLM_F_REPLACE`, so it overwrites whatever route has the same prefix and metric
//! in our table, *whatever its protocol*, and a replace with a new metric adds a second route
//! next to the old one: to move a route to another metric, [`Kernel::apply`]
//! `[Replace(new), Remove(old)]`.
//!
//! Requests are acknowledged one by one (`NLM_F_ACK`) and matched to their sequence numbers;
//! [`Kernel::apply`] pipelines hundreds of requests per `sendto` and collects the acks with
//! `recvmmsg`. Errors name the route (`replace 10.1.0.0/24 via fe80::1 dev 5 metric 0: No such
//! device`) and keep the errno, which [`errno`] recovers.

use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipnet::IpNet;
use isthmus_dataplane::io::ifaddr::{self, IfAddr};
use libc::{
    NETLINK_CAP_ACK, NETLINK_EXT_ACK, RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_OIF, RTA_PRIORITY,
    RTA_TABLE, RTA_VIA, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWROUTE, RTN_UNICAST, RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE, RT_SCOPE_UNIVERSE, RT_TABLE_COMPAT, SOL_NETLINK,
};

/// Routing protocol number isthmus installs its routes under (see /etc/iproute2/rt_protos; pick an unused one: 77).
pub const RTPROT_ISTHMUS: u8 = 77;

/// The kernel's main routing table (`ip route` without `table`).
pub const RT_TABLE_MAIN: u32 = libc::RT_TABLE_MAIN as u32;

// --- netlink and rtnetlink constants (linux/netlink.h, linux/rtnetlink.h) ---------------------
//
// From libc. libc declares the netlink message types and flags as `c_int`; the header fields they
// go in are `u16`, so they are narrowed here, once. libc lacks the last three.

const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLMSG_OVERRUN: u16 = libc::NLMSG_OVERRUN as u16;

const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
const NLM_F_REPLACE: u16 = libc::NLM_F_REPLACE as u16;
const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
/// In an ack: extended-ack TLVs follow the (possibly capped) original header.
const NLM_F_ACK_TLVS: u16 = libc::NLM_F_ACK_TLVS as u16;
/// In an ack: the original message was not echoed, only its header.
const NLM_F_CAPPED: u16 = libc::NLM_F_CAPPED as u16;
/// An attribute's type without its `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` bits.
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

const NLMSG_HDRLEN: usize = 16;
const NLMSGERR_ATTR_MSG: u16 = 1;
const RTNH_F_ONLINK: u32 = 4;

/// Size of `struct rtmsg`.
const RTMSG_LEN: usize = 12;
/// Size of `struct rtnexthop`.
const RTNEXTHOP_LEN: usize = 8;

// --- buffer sizing -------------------------------------------------------------------------------

/// Receive area shared by ack batches and dump batches.
const RECV_AREA: usize = 1 << 20;
/// One ack datagram's slot. An ack is a header, an errno, the request's header (the socket asks
/// for capped acks) and perhaps an extended-ack message: well under this. A longer one is
/// truncated, which loses only the tail of its message.
const ACK_SLOT: usize = 2048;
/// One dump datagram's slot. The kernel sizes dump datagrams to at most
/// `SKB_WITH_OVERHEAD(32768)` bytes.
const DUMP_SLOT: usize = 32 * 1024;
/// Receive buffer the socket asks for (`SO_RCVBUFFORCE`, then `SO_RCVBUF`): acks of a whole
/// pipelined batch must fit, or the kernel drops them (ENOBUFS).
const WANT_RCVBUF: libc::c_int = 4 << 20;
/// Conservative memory an ack costs in the receive queue (skb truesize).
const ACK_TRUESIZE: usize = 2048;
/// Most requests in one `sendto`.
const MAX_BATCH: usize = 1024;
/// Most bytes in one `sendto` (the kernel refuses more than the send buffer).
const MAX_SEND_BYTES: usize = 64 * 1024;
/// How long to wait for the kernel's answer before giving up on it.
const RECV_TIMEOUT_SECS: libc::time_t = 10;
/// Dumps restarted after an interruption (`NLM_F_DUMP_INTR`) or a lost datagram, at most.
const DUMP_ATTEMPTS: usize = 5;

/// A route in the kernel: destination prefix, next hop (a gateway, or none for a route straight
/// out of the interface), outgoing interface and metric (`RTA_PRIORITY`).
///
/// An IPv4 prefix may have an IPv6 gateway (installed with `RTA_VIA`). The kernel stores an IPv6
/// metric of 0 as 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelRoute {
    /// Destination.
    pub prefix: IpNet,
    /// Next hop; `None` for a directly connected destination.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index ([`ifaddr::ifindex`]).
    pub ifindex: u32,
    /// Route metric (lower wins).
    pub metric: u32,
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev {} metric {}", self.ifindex, self.metric)
    }
}

/// One change for [`Kernel::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChange {
    /// Add or replace this route ([`Kernel::replace`]).
    Replace(KernelRoute),
    /// Delete this route ([`Kernel::remove`]).
    Remove(KernelRoute),
}

impl KernelChange {
    fn route(&self) -> &KernelRoute {
        match self {
            Self::Replace(r) | Self::Remove(r) => r,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            Self::Replace(_) => "replace",
            Self::Remove(_) => "remove",
        }
    }
}

/// The error a kernel request came back with, inside the `io::Error`s this module returns.
#[derive(Debug)]
struct KernelError {
    errno: i32,
    what: String,
    extack: Option<String>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            strip_os_suffix(&io::Error::from_raw_os_error(self.errno))
        )?;
        if let Some(m) = &self.extack {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelError {}

/// `io::Error`'s display of an OS error without the " (os error N)" suffix.
fn strip_os_suffix(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn kernel_error(errno: i32, what: String, extack: Option<String>) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        KernelError {
            errno,
            what,
            extack,
        },
    )
}

/// The errno behind an error from this module (or any OS error), if there is one.
#[must_use]
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<KernelError>())
            .map(|k| k.errno)
    })
}

/// A negative answer from the kernel to one request.
#[derive(Debug, Clone)]
struct Nack {
    errno: i32,
    extack: Option<String>,
}

impl Nack {
    fn os(e: &io::Error) -> Self {
        Self {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            extack: e.raw_os_error().is_none().then(|| e.to_string()),
        }
    }
}

/// A handle on one routing table for one routing protocol number.
pub struct Kernel {
    sock: Socket,
    proto: u8,
    table: u32,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("fd", &self.sock.fd.as_raw_fd())
            .field("proto", &self.proto)
            .field("table", &self.table)
            .finish()
    }
}

impl Kernel {
    /// Opens an rtnetlink socket for routes of protocol `proto` (normally [`RTPROT_ISTHMUS`]) in
    /// table `table` (normally [`RT_TABLE_MAIN`]), in the calling thread's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open(proto: u8, table: u32) -> io::Result<Self> {
        Ok(Self {
            sock: Socket::open()?,
            proto,
            table,
        })
    }

    /// Add or replace (NLM_F_CREATE|NLM_F_REPLACE), acked. An IPv4 prefix with an IPv6 gateway uses RTA_VIA (v4-via-v6); an IPv4 gateway outside any connected subnet gets RTNH_F_ONLINK.
    ///
    /// The kernel replaces the route with the same prefix and metric in our table, whatever its
    /// protocol (see the module documentation).
    ///
    /// # Errors
    /// The kernel's refusal, naming the route.
    pub fn replace(&mut self, r: &KernelRoute) -> io::Result<()> {
        self.apply(&[KernelChange::Replace(*r)])
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Delete one of our routes; a route that is already gone (ESRCH) is Ok.
    ///
    /// The kernel matches prefix, metric, gateway, interface (when not 0) and our protocol.
    ///
    /// # Errors
    /// The kernel's refusal, naming the route.
    pub fn remove(&mut self, r: &KernelRoute) -> io::Result<()> {
        self.apply(&[KernelChange::Remove(*r)])
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Many changes in few syscalls (pipeline many requests per sendmsg, then read all acks); returns one result per change in order.
    ///
    /// Changes are applied in order. When the kernel dropped acks (ENOBUFS), the changes whose
    /// fate is unknown are sent again one by one; both kinds are idempotent.
    pub fn apply(&mut self, changes: &[KernelChange]) -> Vec<io::Result<()>> {
        // Connected subnets decide RTNH_F_ONLINK for IPv4 gateways; look them up once.
        let needs_subnets = changes.iter().any(|c| {
            matches!(c, KernelChange::Replace(r)
                if matches!((r.prefix, r.gateway), (IpNet::V4(_), Some(IpAddr::V4(_)))))
        });
        let subnets = if needs_subnets {
            // Without the addresses every IPv4 gateway counts as on a connected subnet: the
            // kernel then refuses the ones it cannot reach, which names the problem.
            ifaddr::all().unwrap_or_default()
        } else {
            Vec::new()
        };
        let requests: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| match c {
                KernelChange::Replace(r) => {
                    let onlink = match (r.prefix, r.gateway) {
                        (IpNet::V4(_), Some(gw @ IpAddr::V4(_))) => {
                            !subnets.is_empty() && !on_connected_subnet(&subnets, r.ifindex, gw)
                        }
                        _ => false,
                    };
                    self.route_request(RTM_NEWROUTE, r, onlink)
                }
                KernelChange::Remove(r) => self.route_request(RTM_DELROUTE, r, false),
            })
            .collect();
        self.sock
            .transact(requests)
            .into_iter()
            .zip(changes)
            .map(|(answer, change)| match answer {
                Ok(()) => Ok(()),
                Err(n) if n.errno == libc::ESRCH && matches!(change, KernelChange::Remove(_)) => {
                    Ok(())
                }
                Err(n) => Err(kernel_error(
                    n.errno,
                    format!("{} {}", change.verb(), change.route()),
                    n.extack,
                )),
            })
            .collect()
    }

    /// Every route in our table with our protocol number (IPv4 and IPv6), nothing else.
    ///
    /// A multipath route comes back as one [`KernelRoute`] per next hop; a route without a
    /// next hop (blackhole, unreachable) with ifindex 0.
    ///
    /// # Errors
    /// When the dump fails.
    pub fn dump_own(&mut self) -> io::Result<Vec<KernelRoute>> {
        Ok(self
            .dump_raw()?
            .iter()
            .flat_map(RawRoute::kernel_routes)
            .collect())
    }

    /// Remove all of ours; returns how many. Never touches a route with another protocol.
    ///
    /// Counts the routes (next hops, for a multipath route) the kernel removed.
    ///
    /// # Errors
    /// When the dump fails, or a deletion fails for another reason than the route being gone.
    pub fn flush_own(&mut self) -> io::Result<usize> {
        let mut removed = 0;
        // The first round deletes each next hop exactly; anything that survives it (an IPv4
        // multipath route, which cannot be deleted hop by hop) is deleted by prefix and metric.
        for exact in [true, false] {
            let raws = self.dump_raw()?;
            if raws.is_empty() {
                break;
            }
            let mut routes = Vec::new();
            for raw in &raws {
                if exact {
                    routes.extend(raw.kernel_routes());
                } else if let Some(prefix) = raw.prefix() {
                    routes.push(KernelRoute {
                        prefix,
                        gateway: None,
                        ifindex: 0,
                        metric: raw.priority,
                    });
                }
            }
            let requests = routes
                .iter()
                .map(|r| self.route_request(RTM_DELROUTE, r, false))
                .collect();
            for (answer, r) in self.sock.transact(requests).into_iter().zip(&routes) {
                match answer {
                    Ok(()) => removed += 1,
                    Err(n) if n.errno == libc::ESRCH => {}
                    Err(n) => {
                        return Err(kernel_error(
                            n.errno,
                            format!("flush: remove {r}"),
                            n.extack,
                        ))
                    }
                }
            }
        }
        Ok(removed)
    }

    /// For tests of the overflow path: pipeline `batch` requests per datagram into a receive
    /// buffer of about `rcvbuf` bytes, so that the kernel has to drop acks (ENOBUFS).
    ///
    /// # Errors
    /// When the socket refuses the buffer size.
    #[doc(hidden)]
    pub fn squeeze_for_test(&mut self, batch: usize, rcvbuf: i32) -> io::Result<()> {
        self.sock.batch = batch.max(1);
        setsockopt_int(&self.sock.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf)
    }

    /// Dump both families, keep our table and protocol.
    fn dump_raw(&mut self) -> io::Result<Vec<RawRoute>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut body = [0u8; RTMSG_LEN];
            body[0] = family;
            let (proto, table) = (self.proto, self.table);
            self.sock
                .dump(RTM_GETROUTE, &body, "dump routes", |ty, payload| {
                    if ty != RTM_NEWROUTE {
                        return;
                    }
                    if let Some(raw) = RawRoute::parse(payload) {
                        if raw.protocol == proto && raw.table == table {
                            out.push(raw);
                        }
                    }
                })?;
        }
        Ok(out)
    }

    fn route_request(&self, kind: u16, r: &KernelRoute, onlink: bool) -> Vec<u8> {
        let v4 = matches!(r.prefix, IpNet::V4(_));
        let flags = if kind == RTM_NEWROUTE {
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        let mut m = Msg::new(kind, flags);
        let mut rtm = [0u8; RTMSG_LEN];
        rtm[0] = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
        rtm[1] = r.prefix.prefix_len();
        rtm[4] = u8::try_from(self.table).unwrap_or(RT_TABLE_COMPAT);
        rtm[5] = self.proto;
        if kind == RTM_NEWROUTE {
            rtm[6] = if r.gateway.is_none() && v4 {
                RT_SCOPE_LINK
            } else {
                RT_SCOPE_UNIVERSE
            };
            rtm[7] = RTN_UNICAST;
            if onlink {
                rtm[8..12].copy_from_slice(&RTNH_F_ONLINK.to_ne_bytes());
            }
        } else {
            // Any scope, any type; the protocol restricts the deletion to our routes.
            rtm[6] = RT_SCOPE_NOWHERE;
        }
        m.put(&rtm);
        m.attr(RTA_TABLE, &self.table.to_ne_bytes());
        if r.prefix.prefix_len() > 0 {
            m.attr(RTA_DST, &ip_bytes(r.prefix.addr()));
        }
        if r.ifindex != 0 {
            m.attr(RTA_OIF, &r.ifindex.to_ne_bytes());
        }
        m.attr(RTA_PRIORITY, &r.metric.to_ne_bytes());
        match (r.prefix, r.gateway) {
            (_, None) => {}
            (IpNet::V4(_), Some(IpAddr::V4(g))) => m.attr(RTA_GATEWAY, &g.octets()),
            (IpNet::V6(_), Some(IpAddr::V6(g))) => m.attr(RTA_GATEWAY, &g.octets()),
            (_, Some(g)) => {
                // struct rtvia { __kernel_sa_family_t rtvia_family; __u8 rtvia_addr[]; }
                let family = match g {
                    IpAddr::V4(_) => libc::AF_INET,
                    IpAddr::V6(_) => libc::AF_INET6,
                } as u16;
                let mut via = family.to_ne_bytes().to_vec();
                via.extend_from_slice(&ip_bytes(g));
                m.attr(RTA_VIA, &via);
            }
        }
        m.finish()
    }
}

/// Is `gw` inside a subnet of an IPv4 address on interface `ifindex`?
fn on_connected_subnet(subnets: &[IfAddr], ifindex: u32, gw: IpAddr) -> bool {
    subnets
        .iter()
        .any(|a| a.ifindex == ifindex && a.addr.is_ipv4() && a.subnet().contains(&gw))
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), b.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

fn u32_at(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// A route as dumped, before it is split into next hops.
#[derive(Debug)]
struct RawRoute {
    family: u8,
    dst_len: u8,
    dst: Option<IpAddr>,
    table: u32,
    protocol: u8,
    priority: u32,
    /// (gateway, ifindex) per next hop; empty for a route without one.
    hops: Vec<(Option<IpAddr>, u32)>,
}

impl RawRoute {
    fn parse(p: &[u8]) -> Option<Self> {
        if p.len() < RTMSG_LEN {
            return None;
        }
        let family = p[0];
        let mut r = Self {
            family,
            dst_len: p[1],
            dst: None,
            table: u32::from(p[4]),
            protocol: p[5],
            priority: 0,
            hops: Vec::new(),
        };
        let mut gateway = None;
        let mut oif = None;
        for (ty, data) in Attrs(&p[RTMSG_LEN..]) {
            match ty {
                RTA_DST => r.dst = parse_ip(family, data),
                RTA_TABLE => r.table = u32_at(data).unwrap_or(r.table),
                RTA_PRIORITY => r.priority = u32_at(data).unwrap_or(0),
                RTA_OIF => oif = u32_at(data),
                RTA_GATEWAY => gateway = parse_ip(family, data),
                RTA_VIA => gateway = parse_via(data),
                RTA_MULTIPATH => r.hops.extend(parse_multipath(family, data)),
                _ => {}
            }
        }
        if r.hops.is_empty() && (oif.is_some() || gateway.is_some()) {
            r.hops.push((gateway, oif.unwrap_or(0)));
        }
        Some(r)
    }

    fn prefix(&self) -> Option<IpNet> {
        let dst = self.dst.or(match i32::from(self.family) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            _ => None,
        })?;
        IpNet::new(dst, self.dst_len).ok()
    }

    fn kernel_routes(&self) -> Vec<KernelRoute> {
        let Some(prefix) = self.prefix() else {
            return Vec::new();
        };
        let route = |(gateway, ifindex): (Option<IpAddr>, u32)| KernelRoute {
            prefix,
            gateway,
            ifindex,
            metric: self.priority,
        };
        if self.hops.is_empty() {
            vec![route((None, 0))]
        } else {
            self.hops.iter().copied().map(route).collect()
        }
    }
}

fn parse_via(data: &[u8]) -> Option<IpAddr> {
    let family = u16::from_ne_bytes(data.get(..2)?.try_into().ok()?);
    parse_ip(u8::try_from(family).ok()?, &data[2..])
}

/// The `struct rtnexthop` records of an `RTA_MULTIPATH` attribute.
fn parse_multipath(family: u8, mut data: &[u8]) -> Vec<(Option<IpAddr>, u32)> {
    let mut hops = Vec::new();
    while data.len() >= RTNEXTHOP_LEN {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        if len < RTNEXTHOP_LEN || len > data.len() {
            break;
        }
        let ifindex = u32_at(&data[4..8]).unwrap_or(0);
        let mut gateway = None;
        for (ty, a) in Attrs(&data[RTNEXTHOP_LEN..len]) {
            match ty {
                RTA_GATEWAY => gateway = parse_ip(family, a),
                RTA_VIA => gateway = parse_via(a),
                _ => {}
            }
        }
        hops.push((gateway, ifindex));
        data = data.get(align4(len)..).unwrap_or(&[]);
    }
    hops
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterator over the (type, payload) of netlink attributes.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        self.0 = b.get(align4(len)..).unwrap_or(&[]);
        Some((ty, &b[4..len]))
    }
}

/// A netlink message under construction; the sequence number is filled in when it is sent.
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq, set by Socket::transact
        b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills in ours
        Self(b)
    }

    fn put(&mut self, body: &[u8]) {
        self.0.extend_from_slice(body);
        self.0.resize(align4(self.0.len()), 0);
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("netlink attribute fits in 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.put(data);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).expect("netlink message fits in 4 GiB");
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn set_seq(msg: &mut [u8], seq: u32) {
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
}

/// A received netlink message: header fields and payload (possibly cut short when the datagram
/// was truncated).
struct Received<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The netlink messages in one datagram.
fn messages(mut d: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    while d.len() >= NLMSG_HDRLEN {
        let len = u32_at(d).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN {
            break;
        }
        let end = len.min(d.len());
        out.push(Received {
            ty: u16::from_ne_bytes([d[4], d[5]]),
            flags: u16::from_ne_bytes([d[6], d[7]]),
            seq: u32_at(&d[8..12]).unwrap_or(0),
            payload: &d[NLMSG_HDRLEN..end],
        });
        d = d.get(align4(len)..).unwrap_or(&[]);
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ack) and its extended-ack message, if any.
fn parse_error(flags: u16, p: &[u8]) -> (i32, Option<String>) {
    let Some(raw) = p.get(..4) else {
        return (libc::EIO, Some("truncated netlink error".into()));
    };
    let errno = -i32::from_ne_bytes(raw.try_into().expect("4 bytes"));
    let mut extack = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // struct nlmsgerr { int error; struct nlmsghdr msg; } then the echoed payload unless
        // capped, then the TLVs.
        let echoed = u32_at(p.get(4..).unwrap_or(&[])).unwrap_or(0) as usize;
        let skip = if flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            4 + align4(echoed.max(NLMSG_HDRLEN))
        };
        for (ty, data) in Attrs(p.get(skip..).unwrap_or(&[])) {
            if ty == NLMSGERR_ATTR_MSG {
                let text = data.split(|&b| b == 0).next().unwrap_or(&[]);
                let text = String::from_utf8_lossy(text).trim().to_string();
                if !text.is_empty() {
                    extack = Some(text);
                }
            }
        }
    }
    (errno, extack)
}

/// A `NETLINK_ROUTE` socket with its sequence counter and receive area.
struct Socket {
    fd: OwnedFd,
    seq: u32,
    area: Vec<u8>,
    /// Requests whose acks fit the receive buffer at once.
    batch: usize,
}

/// The kernel's announcements of link and address changes (`RTMGRP_LINK`,
/// `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`): an interface created, deleted, up, down, an
/// address added or removed. What changed is read again from the kernel by whoever is woken.
pub struct LinkWatch {
    sock: Socket,
}

impl LinkWatch {
    /// Subscribes.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or bound.
    pub fn open() -> io::Result<Self> {
        const GROUPS: u32 = 0x1 | 0x10 | 0x100; // RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        Ok(Self {
            sock: Socket::open_groups(GROUPS)?,
        })
    }

    /// Waits for announcements (at most the socket's receive timeout) and reads all that are
    /// queued; whether any came. An overflowed queue (`ENOBUFS`: some were lost) counts as
    /// a change.
    ///
    /// # Errors
    /// When the socket fails otherwise.
    pub fn wait(&mut self) -> io::Result<bool> {
        let mut any = false;
        let mut flags = 0;
        loop {
            // SAFETY: `area` is a valid, writable buffer of its length for the whole call.
            let n = unsafe {
                libc::recv(
                    self.sock.fd.as_raw_fd(),
                    self.sock.area.as_mut_ptr().cast(),
                    self.sock.area.len(),
                    flags,
                )
            };
            if n > 0 {
                any = true;
                flags = libc::MSG_DONTWAIT;
                continue;
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(any),
                Some(libc::ENOBUFS) => Ok(true),
                _ if n == 0 => Ok(any),
                _ => Err(e),
            };
        }
    }
}

impl Socket {
    fn open() -> io::Result<Self> {
        Self::open_groups(0)
    }

    /// A socket subscribed to the multicast `groups` (a bit mask of `RTMGRP_*`).
    fn open_groups(groups: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "opening rtnetlink socket",
            ));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "binding rtnetlink socket",
            ));
        }
        // Optional niceties: older kernels lack them, which costs only detail.
        let _ = setsockopt_int(&fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = setsockopt_int(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        if setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, WANT_RCVBUF).is_err() {
            let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, WANT_RCVBUF);
        }
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "setting rtnetlink receive timeout",
            ));
        }
        let rcvbuf = getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0);
        // SO_RCVBUF reports twice what was asked, the kernel's bookkeeping overhead included.
        let batch = (usize::try_from(rcvbuf).unwrap_or(0) / 2 / ACK_TRUESIZE).clamp(1, MAX_BATCH);
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(Self {
            fd,
            seq,
            area: vec![0; RECV_AREA],
            batch,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `bytes` (one or more netlink messages) to the kernel in one datagram.
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain old data; all-zero (pid 0) addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `bytes` is valid for `bytes.len()` bytes, `to` is a valid sockaddr_nl of
            // the given size; both outlive the call.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    std::ptr::addr_of!(to).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return if n as usize == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("netlink sendto sent {n} of {} bytes", bytes.len()),
                    ))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives up to `self.area.len() / slot` datagrams from the kernel with one `recvmmsg`,
    /// waiting for the first unless `nonblocking`; returns each datagram's (offset, length)
    /// in the receive area. Datagrams from anyone but the kernel are dropped. Retries EINTR.
    fn recv(&mut self, slot: usize, nonblocking: bool) -> io::Result<Vec<(usize, usize)>> {
        let count = self.area.len() / slot;
        let base = self.area.as_mut_ptr();
        let mut iovs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                // SAFETY: i * slot + slot <= area.len(), so the pointer stays inside `area`.
                iov_base: unsafe { base.add(i * slot) }.cast(),
                iov_len: slot,
            })
            .collect();
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut from: Vec<libc::sockaddr_nl> = vec![unsafe { mem::zeroed() }; count];
        let mut hdrs: Vec<libc::mmsghdr> = (0..count)
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_name = std::ptr::addr_of_mut!(from[i]).cast();
                h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
                h.msg_hdr.msg_iov = std::ptr::addr_of_mut!(iovs[i]);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let flags = if nonblocking {
            libc::MSG_DONTWAIT
        } else {
            libc::MSG_WAITFORONE
        };
        let n = loop {
            // SAFETY: `hdrs` holds `count` mmsghdrs whose name and iovec pointers point into
            // `from`, `iovs` and `self.area`, all alive and unaliased for the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    flags as _,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        Ok((0..n)
            .filter(|&i| from[i].nl_pid == 0)
            .map(|i| (i * slot, (hdrs[i].msg_len as usize).min(slot)))
            .collect())
    }

    /// Sends `requests` (each a finished netlink message with `NLM_F_ACK`) pipelined, many per
    /// datagram, and returns the kernel's answer to each, in order.
    fn transact(&mut self, mut requests: Vec<Vec<u8>>) -> Vec<Result<(), Nack>> {
        let mut answers: Vec<Option<Result<(), Nack>>> = vec![None; requests.len()];
        let mut start = 0;
        while start < requests.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < requests.len()
                && end - start < self.batch
                && (end == start || bytes + requests[end].len() <= MAX_SEND_BYTES)
            {
                bytes += requests[end].len();
                end += 1;
            }
            self.exchange(&mut requests[start..end], &mut answers[start..end]);
            // Acks the kernel had to drop (ENOBUFS): ask again, one request at a time. Both
            // replace and remove are idempotent, so repeating a done change is harmless.
            for i in start..end {
                for _ in 0..3 {
                    if answers[i].is_some() {
                        break;
                    }
                    self.exchange(&mut requests[i..=i], &mut answers[i..=i]);
                }
            }
            start = end;
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or(Err(Nack {
                    errno: libc::ENOBUFS,
                    extack: Some("the kernel's acknowledgement was lost".into()),
                }))
            })
            .collect()
    }

    /// One datagram of requests and their acks. Leaves an answer `None` when its ack was lost.
    fn exchange(&mut self, requests: &mut [Vec<u8>], answers: &mut [Option<Result<(), Nack>>]) {
        let first = self.seq.wrapping_add(1);
        let mut datagram = Vec::with_capacity(requests.iter().map(Vec::len).sum());
        for r in requests.iter_mut() {
            let seq = self.next_seq();
            set_seq(r, seq);
            datagram.extend_from_slice(r);
        }
        if let Err(e) = self.send(&datagram) {
            let nack = Nack::os(&e);
            for a in answers.iter_mut() {
                *a = Some(Err(nack.clone()));
            }
            return;
        }
        let mut pending = requests.len();
        let mut nonblocking = false;
        while pending > 0 {
            let datagrams = match self.recv(ACK_SLOT, nonblocking) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // The kernel dropped acks. It answered every request before sendto
                    // returned, so whatever survived is queued: drain without waiting.
                    nonblocking = true;
                    continue;
                }
                Err(e) if nonblocking && e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let nack = if e.kind() == io::ErrorKind::WouldBlock {
                        Nack {
                            errno: libc::ETIMEDOUT,
                            extack: Some("no answer from the kernel".into()),
                        }
                    } else {
                        Nack::os(&e)
                    };
                    for a in answers.iter_mut().filter(|a| a.is_none()) {
                        *a = Some(Err(nack.clone()));
                    }
                    return;
                }
            };
            for (off, len) in datagrams {
                for m in messages(&self.area[off..off + len]) {
                    if m.ty != NLMSG_ERROR {
                        continue;
                    }
                    let i = m.seq.wrapping_sub(first) as usize;
                    let Some(slot) = answers.get_mut(i) else {
                        continue; // a stale answer to an earlier request
                    };
                    if slot.is_some() {
                        continue;
                    }
                    let (errno, extack) = parse_error(m.flags, m.payload);
                    *slot = Some(if errno == 0 {
                        Ok(())
                    } else {
                        Err(Nack { errno, extack })
                    });
                    pending -= 1;
                }
            }
        }
    }

    /// Runs one dump (`NLM_F_DUMP` request of type `ty` with `body`), calling `each` with every
    /// message's type and payload. Restarts the dump when the kernel flags it as interrupted
    /// (the table changed under it) or a datagram was lost; `each` then sees only the last,
    /// complete run (earlier runs' messages are held back until a run completes).
    fn dump(
        &mut self,
        ty: u16,
        body: &[u8],
        what: &str,
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut m = Msg::new(ty, NLM_F_REQUEST | NLM_F_DUMP);
            m.put(body);
            let mut req = m.finish();
            let seq = self.next_seq();
            set_seq(&mut req, seq);
            self.send(&req).map_err(|e| with_context(e, what))?;
            let mut held: Vec<(u16, Vec<u8>)> = Vec::new();
            let mut clean = true;
            'run: loop {
                let datagrams = match self.recv(DUMP_SLOT, false) {
                    Ok(d) => d,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        clean = false;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{what}: no answer from the kernel"),
                        ))
                    }
                    Err(e) => return Err(with_context(e, what)),
                };
                for (off, len) in datagrams {
                    for m in messages(&self.area[off..off + len]) {
                        if m.seq != seq {
                            continue;
                        }
                        if m.flags & NLM_F_DUMP_INTR != 0 {
                            clean = false;
                        }
                        match m.ty {
                            NLMSG_DONE => {
                                let err = u32_at(m.payload).map_or(0, |v| v as i32);
                                if err < 0 {
                                    return Err(kernel_error(-err, what.to_string(), None));
                                }
                                break 'run;
                            }
                            NLMSG_ERROR => {
                                let (errno, extack) = parse_error(m.flags, m.payload);
                                if errno != 0 {
                                    return Err(kernel_error(errno, what.to_string(), extack));
                                }
                            }
                            NLMSG_NOOP | NLMSG_OVERRUN => {}
                            _ => held.push((m.ty, m.payload.to_vec())),
                        }
                    }
                }
            }
            if clean {
                for (t, p) in &held {
                    each(*t, p);
                }
                return Ok(());
            }
        }
        Err(kernel_error(
            libc::EINTR,
            format!("{what}: interrupted {DUMP_ATTEMPTS} times in a row by changes"),
            None,
        ))
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => kernel_error(errno, what.to_string(), None),
        None => io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds `value`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of_mut!(value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn request_layout_and_attributes() {
        let k = Kernel::open(RTPROT_ISTHMUS, RT_TABLE_MAIN).expect("netlink socket");
        let r = KernelRoute {
            prefix: "10.1.0.0/24".parse().unwrap(),
            gateway: Some("fe80::1".parse().unwrap()),
            ifindex: 5,
            metric: 7,
        };
        let b = k.route_request(RTM_NEWROUTE, &r, false);
        assert_eq!(u32_at(&b).unwrap() as usize, b.len());
        let msgs = messages(&b);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, RTM_NEWROUTE);
        let p = msgs[0].payload;
        assert_eq!(p[0], libc::AF_INET as u8);
        assert_eq!(p[1], 24);
        assert_eq!(p[5], RTPROT_ISTHMUS);
        let attrs: HashMap<u16, Vec<u8>> = Attrs(&p[RTMSG_LEN..])
            .map(|(t, d)| (t, d.to_vec()))
            .collect();
        assert_eq!(attrs[&RTA_DST], vec![10, 1, 0, 0]);
        assert_eq!(attrs[&RTA_OIF], 5u32.to_ne_bytes());
        assert_eq!(attrs[&RTA_PRIORITY], 7u32.to_ne_bytes());
        assert!(!attrs.contains_key(&RTA_GATEWAY));
        assert_eq!(
            parse_via(&attrs[&RTA_VIA]),
            Some("fe80::1".parse().unwrap())
        );
        // The request parses back (as a dump entry would) to the same route.
        let raw = RawRoute::parse(p).unwrap();
        assert_eq!(raw.kernel_routes(), vec![r]);
    }

    #[test]
    fn error_names_route_and_keeps_errno() {
        let e = kernel_error(
            libc::ENODEV,
            "replace 10.1.0.0/24 via fe80::1 dev 5 metric 0".into(),
            None,
        );
        assert_eq!(
            e.to_string(),
            "replace 10.1.0.0/24 via fe80::1 dev 5 metric 0: No such device"
        );
        assert_eq!(errno(&e), Some(libc::ENODEV));
    }
}
