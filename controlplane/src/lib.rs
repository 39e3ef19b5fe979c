//! isthmus control plane. The Babel core arrives with the control-plane issue; today this
//! crate holds the CLI, `isthmusctl`, and [`kernel`], the seam to the kernel's routing table.

pub mod kernel;
