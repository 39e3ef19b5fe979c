//! isthmus data plane: terminates and relays WireGuard tunnels in user space and forwards
//! by a longest-prefix-match FIB. See `ARCHITECTURE.md` for the packet path and the code map.

#![deny(unsafe_code)]
#![allow(clippy::module_name_repetitions)]

pub mod buf;
pub mod config;
pub mod ctl;
pub mod device;
pub mod fib;
pub mod forward;
pub mod io;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod stats;
pub mod sys;
pub mod tunnel;
pub mod uapi;
pub mod wire;

/// Default MTU of the TUN device and of relayed packets (`mtu` in the config): what fits a
/// 1500-byte underlay, less IPv6 (40), UDP (8) and WireGuard's transport overhead (32), as
/// wg-quick and wireguard-go default to.
pub const DEFAULT_MTU: u16 = 1420;
const _: () = assert!(DEFAULT_MTU as usize == 1500 - 40 - 8 - wire::wg::DATA_MIN_LEN);
