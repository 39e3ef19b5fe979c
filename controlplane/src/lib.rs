//! isthmus control plane: the Babel routing protocol ([`babel`], sans I/O), its
//! deterministic simulator ([`sim`]), the daemon `isthmus-cp` that drives it, and the CLI
//! `isthmusctl`.

pub mod babel;
