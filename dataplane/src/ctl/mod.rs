//! The control channel: a Unix stream socket owned by the data plane, with versioned,
//! length-prefixed messages, used by `isthmusctl` and the control plane.
