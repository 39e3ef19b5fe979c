//! `isthmus-dp`: the data plane daemon (being wired up).
fn main() {}
