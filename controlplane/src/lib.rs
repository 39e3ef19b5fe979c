//! isthmus control plane: the Babel routing protocol ([`babel`], sans I/O), its
//! deterministic simulator ([`sim`]), the daemon `isthmus-cp` that drives it, its
//! configuration ([`config`]), [`kernel`] (the seam to the kernel's routing table), and the
//! CLI `isthmusctl`.

pub mod babel;
pub mod config;
pub mod daemon;
pub mod kernel;
pub mod sim;
