//! Interface addresses and indices: the one reader of both crates (the data plane follows its
//! TUN device's addresses, the control plane finds a mesh interface's link-local address and
//! the connected subnets that decide `RTNH_F_ONLINK`).
//!
//! Addresses come from `getifaddrs(3)`, which asks the kernel by an `RTM_GETADDR` dump and
//! reports, like `ip address`, the interface's own address (`IFA_LOCAL` on point-to-point
//! links) and its prefix length (from the netmask). IPv4 addresses with a label (`eth0:1`) are
//! reported under their interface's name: an interface name cannot contain `:`.

use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub ifname: String,
    /// Interface index ([`ifindex`]).
    pub ifindex: u32,
    /// The interface's own address.
    pub addr: IpAddr,
    /// Length of the connected subnet's prefix.
    pub prefix_len: u8,
}

impl IfAddr {
    /// The address with its prefix length (host bits kept).
    #[must_use]
    pub fn net(&self) -> IpNet {
        IpNet::new(self.addr, self.prefix_len).unwrap_or_else(|_| IpNet::from(self.addr))
    }

    /// The connected subnet (host bits cleared).
    #[must_use]
    pub fn subnet(&self) -> IpNet {
        self.net().trunc()
    }
}

/// The interface index of `name` (`if_nametoindex`).
///
/// # Errors
/// When there is no such interface (the error names it).
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} contains a NUL byte"),
        )
    })?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        let msg = e.to_string();
        let msg = msg.rfind(" (os error ").map_or(msg.as_str(), |i| &msg[..i]);
        return Err(io::Error::new(e.kind(), format!("interface {name}: {msg}")));
    }
    Ok(index)
}

/// Every IPv4 and IPv6 address on every interface, in the order the kernel lists them.
///
/// # Errors
/// When `getifaddrs` fails.
pub fn all() -> io::Result<Vec<IfAddr>> {
    read(None)
}

/// The addresses on interface `ifname`, in the order the kernel lists them (IPv6 link-local
/// addresses included); none when there is no such interface.
///
/// # Errors
/// When `getifaddrs` fails.
pub fn addresses(ifname: &str) -> io::Result<Vec<IfAddr>> {
    read(Some(ifname))
}

fn read(only: Option<&str>) -> io::Result<Vec<IfAddr>> {
    let mut out = Vec::new();
    // Interface names seen, with their indices (`None`: gone since the list was made).
    let mut indices: Vec<(String, Option<u32>)> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names; the
        // netmask, when non-null, is a sockaddr of the same family.
        let Some((addr, prefix_len)) = (unsafe { address_and_prefix(ifa) }) else {
            continue;
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let label = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        let name = label.split(':').next().unwrap_or_default();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let index = match indices.iter().find(|(n, _)| n == name) {
            Some(&(_, i)) => i,
            None => {
                let i = ifindex(name).ok();
                indices.push((name.to_string(), i));
                i
            }
        };
        if let Some(ifindex) = index {
            out.push(IfAddr {
                ifname: name.to_string(),
                ifindex,
                addr,
                prefix_len,
            });
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The address of an IPv4 or IPv6 entry and the prefix length of its netmask (the full length
/// when there is none).
///
/// # Safety
/// `ifa.ifa_addr` is non-null and points to a sockaddr of the family it names; `ifa_netmask`
/// is null or points to a sockaddr of the same family.
unsafe fn address_and_prefix(ifa: &libc::ifaddrs) -> Option<(IpAddr, u8)> {
    // SAFETY: the caller guarantees ifa_addr points to a sockaddr.
    let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
    let mask = ifa.ifa_netmask;
    if family == libc::AF_INET {
        // SAFETY: family is AF_INET, so this is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let len = if mask.is_null() {
            32
        } else {
            // SAFETY: a non-null netmask of an AF_INET entry is a sockaddr_in.
            let m = unsafe { &*mask.cast::<libc::sockaddr_in>() };
            prefix_len(&m.sin_addr.s_addr.to_ne_bytes())
        };
        Some((IpAddr::V4(addr), len))
    } else if family == libc::AF_INET6 {
        // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
        let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
        let addr = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        let len = if mask.is_null() {
            128
        } else {
            // SAFETY: a non-null netmask of an AF_INET6 entry is a sockaddr_in6.
            let m = unsafe { &*mask.cast::<libc::sockaddr_in6>() };
            prefix_len(&m.sin6_addr.s6_addr)
        };
        Some((IpAddr::V6(addr), len))
    } else {
        None
    }
}

/// The number of leading one bits of a netmask (in network byte order).
fn prefix_len(mask: &[u8]) -> u8 {
    let mut n = 0u32;
    for &b in mask {
        n += b.leading_ones();
        if b != 0xff {
            break;
        }
    }
    u8::try_from(n).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_prefix_lengths() {
        assert_eq!(prefix_len(&[255, 255, 255, 0]), 24);
        assert_eq!(prefix_len(&[255, 255, 240, 0]), 20);
        assert_eq!(prefix_len(&[0; 4]), 0);
        assert_eq!(prefix_len(&[255; 16]), 128);
        let mut m = [0u8; 16];
        m[..8].fill(255);
        assert_eq!(prefix_len(&m), 64);
    }

    #[test]
    fn loopback_addresses_and_index() {
        let lo = ifindex("lo").unwrap();
        assert!(lo > 0);
        let addrs = addresses("lo").unwrap();
        let v4 = addrs
            .iter()
            .find(|a| a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("127.0.0.1 on lo");
        assert_eq!(
            (v4.ifindex, v4.prefix_len, v4.ifname.as_str()),
            (lo, 8, "lo")
        );
        assert_eq!(v4.subnet(), "127.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(addrs.iter().all(|a| a.ifindex == lo && a.ifname == "lo"));
        // The unfiltered list holds the same entries.
        let every = all().unwrap();
        assert!(addrs.iter().all(|a| every.contains(a)));
        assert!(addresses("isthmus-nonesuch").unwrap().is_empty());
    }

    #[test]
    fn missing_interface_is_named() {
        let e = ifindex("isthmus-nonesuch").unwrap_err();
        assert!(e.to_string().contains("isthmus-nonesuch"), "{e}");
    }
}
