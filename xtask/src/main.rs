//! Project automation: `cargo xtask demo | test | bench`.

mod bench;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r.to_vec()),
        None => ("", Vec::new()),
    };
    let result = match cmd {
        "bench" => bench::run(&rest),
        _ => {
            eprintln!("usage: cargo xtask <bench> [args]");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask {cmd}: {e:#}");
        std::process::exit(1);
    }
}
