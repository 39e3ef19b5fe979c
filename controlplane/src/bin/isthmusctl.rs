//! `isthmusctl`: keys, configuration checks and a view of a running data plane.
fn main() {}
