//! `isthmus-dp`: the data plane daemon.
fn main() {}
