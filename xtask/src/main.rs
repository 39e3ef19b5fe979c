//! Project automation: `cargo xtask demo | test | bench`.
fn main() {}
