//! isthmus control plane. The Babel core arrives with the control-plane issue; today this
//! crate holds the CLI, `isthmusctl`.

pub mod config;
