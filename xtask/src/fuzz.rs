//! `cargo xtask fuzz [--time SECS] [TARGET...]`: every cargo-fuzz target of `fuzz/` (or
//! those named) for SECS seconds each, on the committed seeds (`fuzz/seeds/TARGET/`), the
//! crash regressions (`fuzz/regressions/TARGET/`, run first, every time) and the working
//! corpus (`fuzz/corpus/TARGET/`, not committed), with `fuzz/dict/TARGET.dict` when there is
//! one. Prints runs, executions per second, coverage and the corpus size per target; an
//! input that crashes a target is copied into its regressions (commit it with the fix) and
//! the run fails.
//!
//! Needs the nightly toolchain (libFuzzer's sanitizers); cargo-fuzz is installed from
//! crates.io when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use isthmus_lab::workspace_root;

/// How one target's run went.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Target name.
    pub target: String,
    /// Inputs executed.
    pub runs: u64,
    /// Seconds it ran.
    pub secs: u64,
    /// libFuzzer's last `exec/s`.
    pub execs_per_sec: u64,
    /// libFuzzer's last `cov:` (coverage points).
    pub cov: u64,
    /// Inputs in the corpus at the end.
    pub corpus: u64,
    /// The crashing input, copied into the regressions, when it crashed.
    pub crash: Option<PathBuf>,
}

impl Outcome {
    /// Its row of the table.
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.target,
            self.runs,
            self.secs,
            self.execs_per_sec,
            self.cov,
            self.corpus,
            self.crash
                .as_ref()
                .map_or("ok".to_string(), |c| format!("crash: {}", c.display()))
        )
    }
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// The targets `fuzz/Cargo.toml` declares.
pub fn targets() -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name = ") {
                names.push(v.trim_matches('"').to_string());
            }
        }
    }
    Ok(names)
}

fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(fuzz_dir());
    // The workspace's own CARGO/RUSTC would pin the stable toolchain.
    c.env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Whether the nightly toolchain is there (what the fuzz targets need).
pub fn have_nightly() -> bool {
    nightly_cargo()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs cargo-fuzz from crates.io if `cargo +nightly fuzz` does not run.
fn ensure_cargo_fuzz() -> Result<()> {
    let ok = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("==> cargo install cargo-fuzz --locked");
        let s = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("running cargo install")?;
        if !s.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// The `cargo xtask fuzz` command line.
pub fn run(args: &[String]) -> Result<()> {
    let mut secs = 60u64;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => {
                secs = it
                    .next()
                    .context("--time needs seconds")?
                    .parse()
                    .context("--time: seconds")?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask fuzz [--time SECS] [TARGET...]\ntargets: {}",
                    targets()?.join(" ")
                );
                return Ok(());
            }
            t => names.push(t.to_string()),
        }
    }
    let all = targets()?;
    if let Some(bad) = names.iter().find(|n| !all.contains(n)) {
        bail!("no fuzz target {bad:?}; there are: {}", all.join(" "));
    }
    if names.is_empty() {
        names = all;
    }
    let outcomes = fuzz(&names, secs)?;
    let crashed = outcomes.iter().filter(|o| o.crash.is_some()).count();
    if crashed > 0 {
        bail!("{crashed} target(s) crashed");
    }
    Ok(())
}

/// Builds the targets and runs each of `names` for `secs` seconds; prints the table.
pub fn fuzz(names: &[String], secs: u64) -> Result<Vec<Outcome>> {
    if !have_nightly() {
        bail!("the fuzz targets need the nightly toolchain (rustup toolchain install nightly)");
    }
    ensure_cargo_fuzz()?;
    eprintln!("==> cargo +nightly fuzz build ({} targets)", names.len());
    let s = nightly_cargo().args(["fuzz", "build"]).status()?;
    if !s.success() {
        bail!("cargo fuzz build failed");
    }
    let mut outcomes = Vec::new();
    for t in names {
        let o = fuzz_one(t, secs)?;
        eprintln!("    {}", o.row());
        outcomes.push(o);
    }
    println!("\n| target | runs | s | exec/s | coverage | corpus | result |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for o in &outcomes {
        println!("{}", o.row());
    }
    Ok(outcomes)
}

fn fuzz_one(target: &str, secs: u64) -> Result<Outcome> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    // The binary `cargo fuzz build` made: run as it is, so that nothing rebuilds between
    // the targets (or under a long run).
    let bin = built_binary(target)?;
    let mut cmd = Command::new(&bin);
    cmd.current_dir(&dir).arg(&corpus);
    // Regressions first: every crash found so far runs again before anything new.
    for extra in ["regressions", "seeds"] {
        let d = dir.join(extra).join(target);
        if d.is_dir() {
            cmd.arg(d);
        }
    }
    cmd.arg(format!("-max_total_time={secs}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = dir.join("dict").join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut o = parse_log(target, &log);
    if !out.status.success() {
        let written = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(|p| PathBuf::from(p.trim()));
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "{target} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        o.crash = Some(match written {
            Some(p) => keep_regression(target, &p)?,
            None => PathBuf::from("(no input written: see the log above)"),
        });
    }
    o.corpus = count_files(&corpus);
    Ok(o)
}

/// `fuzz/target/TRIPLE/release/TARGET`, as `cargo fuzz build` leaves it.
fn built_binary(target: &str) -> Result<PathBuf> {
    let dir = fuzz_dir().join("target");
    std::fs::read_dir(&dir)
        .with_context(|| format!("{}: not built", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("release").join(target))
        .find(|p| p.is_file())
        .with_context(|| format!("no built fuzz target {target} under {}", dir.display()))
}

/// Copies a crashing input into `fuzz/regressions/TARGET/`, where every later run starts.
fn keep_regression(target: &str, input: &Path) -> Result<PathBuf> {
    let dir = fuzz_dir().join("regressions").join(target);
    std::fs::create_dir_all(&dir)?;
    let name = input.file_name().context("crash input without a name")?;
    let to = dir.join(name);
    std::fs::copy(input, &to).with_context(|| format!("copying {}", input.display()))?;
    Ok(to)
}

fn count_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count() as u64)
}

/// Reads libFuzzer's status lines (`#N ... cov: C ... exec/s: E`) and its `Done N runs in S
/// second(s)`.
fn parse_log(target: &str, log: &str) -> Outcome {
    let mut o = Outcome {
        target: target.to_string(),
        ..Outcome::default()
    };
    let field = |line: &str, key: &str| -> Option<u64> {
        let mut w = line.split_whitespace();
        w.find(|x| *x == key)?;
        w.next()?.parse().ok()
    };
    for line in log.lines() {
        if line.starts_with('#') {
            if let Some(c) = field(line, "cov:") {
                o.cov = c;
            }
            if let Some(e) = field(line, "exec/s:") {
                o.execs_per_sec = e;
            }
        }
        if let Some(rest) = line.strip_prefix("Done ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", s, ..] = w.as_slice() {
                o.runs = runs.parse().unwrap_or(0);
                o.secs = s.parse().unwrap_or(0);
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 12 ft: 13 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #169503\tDONE   cov: 265 ft: 945 corp: 129/19Kb lim: 922 exec/s: 18833 rss: 238Mb\n\
                   Done 169503 runs in 9 second(s)\n";
        let o = parse_log("t", log);
        assert_eq!(
            (o.runs, o.secs, o.execs_per_sec, o.cov),
            (169_503, 9, 18_833, 265)
        );
    }

    #[test]
    fn lists_the_targets() {
        let t = targets().unwrap();
        for want in [
            "wire_ip",
            "babel_punt",
            "ctl_decode",
            "config_toml",
            "xdp_frame",
            "babel_auth",
        ] {
            assert!(t.iter().any(|x| x == want), "{want} in {t:?}");
        }
    }
}
