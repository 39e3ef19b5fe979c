//! isthmus data plane: terminates and relays WireGuard tunnels in user space and forwards
//! by a longest-prefix-match FIB. See `DESIGN.md` for the packet path.

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
pub mod stats;
pub mod sys;
pub mod tunnel;
pub mod uapi;
pub mod wire;
