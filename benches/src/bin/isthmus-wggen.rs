//! `isthmus-wggen`: the WireGuard packet generator and sink of the capacity benchmark
//! ([`isthmus_benches::wggen`]), run inside namespaces.
//!
//! ```text
//! isthmus-wggen send --gateway IP:PORT --key FILE --gateway-key B64 --src IP:PORT --dst IP:PORT
//!     [--bind IP:PORT] [--size BYTES] [--duration SECS] [--rate PPS] [--batch N]
//!     [--pool PACKETS] [--pool-mb MIB] [--gso]
//! isthmus-wggen send --plain --src IP:PORT --dst IP:PORT [--size BYTES] [--duration SECS]
//!     [--rate PPS] [--batch N] [--pool PACKETS] [--gso]
//! isthmus-wggen sink (--gateway IP:PORT --key FILE --gateway-key B64 | --plain)
//!     --bind IP:PORT --src IP:PORT --dst IP:PORT [--size BYTES] [--sample N]
//!     [--duration SECS] [--idle SECS] [--wait SECS] [--batch N]
//! isthmus-wggen ceiling [--size BYTES] [--secs SECS]
//! ```
//!
//! `send` handshakes with the gateway as the owner of `--key` (a 0600 file with a base64
//! private key), pre-encrypts inner IPv4/UDP packets `--src` → `--dst` of `--size` bytes
//! (default 64) and sends them for `--duration` seconds (default 3), in `sendmmsg` batches of
//! `--batch` (default 64), at most `--rate` per second; with `--gso`, runs of up to 64 packets
//! go as one UDP GSO send each (the gateway gets them as one coalesced buffer). `send --plain`
//! sends plain UDP from `--src` (bound) to `--dst` with the same payloads, from a pool of
//! `--pool` datagrams (default 4096) sent over and over: a host on a mesh interface. `sink` is either a second peer of the
//! gateway (same key options; `--bind` is its endpoint) that counts the transport packets and
//! decrypts one in `--sample` (default 64), or with `--plain` a UDP socket on `--bind` (the
//! inner destination) that checks every `--sample`th datagram; it prints `wggen sink: ready`
//! on stderr once it can receive, and stops `--duration` seconds after the first packet,
//! `--idle` seconds (default 1) after the last, or `--wait` seconds (default 30) if none
//! comes. `ceiling` measures ChaCha20-Poly1305 open + seal per packet on one core (the chacha20poly1305
//! crate, and ring as boringtun uses it). Each prints
//! one JSON line on stdout (its report) and progress on stderr.

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use isthmus_benches::wggen::{self, Identity, Inner, SendOptions, SinkMode, SinkOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("isthmus-wggen: {e:#}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: isthmus-wggen send --gateway IP:PORT --key FILE --gateway-key B64 --src IP:PORT --dst IP:PORT [--bind IP:PORT] [--size BYTES] [--duration SECS] [--rate PPS] [--batch N] [--pool PACKETS] [--pool-mb MIB] [--gso]
       isthmus-wggen send --plain --src IP:PORT --dst IP:PORT [--size BYTES] [--duration SECS] [--rate PPS] [--batch N] [--pool PACKETS] [--gso]
       isthmus-wggen sink (--gateway IP:PORT --key FILE --gateway-key B64 | --plain) --bind IP:PORT --src IP:PORT --dst IP:PORT [--size BYTES] [--sample N] [--duration SECS] [--idle SECS] [--wait SECS] [--batch N]
       isthmus-wggen ceiling [--size BYTES] [--secs SECS]";

/// Every option of the three commands (each takes the ones it knows).
#[derive(Default)]
struct Args {
    gateway: Option<SocketAddr>,
    key: Option<PathBuf>,
    gateway_key: Option<String>,
    bind: Option<SocketAddr>,
    src: Option<SocketAddrV4>,
    dst: Option<SocketAddrV4>,
    size: Option<usize>,
    duration: Option<f64>,
    rate: Option<u64>,
    batch: Option<usize>,
    pool: Option<usize>,
    pool_mb: Option<usize>,
    plain: bool,
    gso: bool,
    sample: Option<u64>,
    idle: Option<f64>,
    wait: Option<f64>,
    secs: Option<f64>,
}

fn parse(words: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let mut val = || {
            it.next()
                .map(String::as_str)
                .with_context(|| format!("{w} needs a value"))
        };
        fn num<T: std::str::FromStr>(w: &str, v: &str) -> Result<T> {
            v.parse()
                .ok()
                .with_context(|| format!("{w}: bad value {v:?}"))
        }
        match w.as_str() {
            "--gateway" => a.gateway = Some(num(w, val()?)?),
            "--key" => a.key = Some(val()?.into()),
            "--gateway-key" => a.gateway_key = Some(val()?.to_owned()),
            "--bind" => a.bind = Some(num(w, val()?)?),
            "--src" => a.src = Some(num(w, val()?)?),
            "--dst" => a.dst = Some(num(w, val()?)?),
            "--size" => a.size = Some(num(w, val()?)?),
            "--duration" => a.duration = Some(num(w, val()?)?),
            "--rate" => a.rate = Some(num(w, val()?)?),
            "--batch" => a.batch = Some(num(w, val()?)?),
            "--pool" => a.pool = Some(num(w, val()?)?),
            "--pool-mb" => a.pool_mb = Some(num(w, val()?)?),
            "--plain" => a.plain = true,
            "--gso" => a.gso = true,
            "--sample" => a.sample = Some(num(w, val()?)?),
            "--idle" => a.idle = Some(num(w, val()?)?),
            "--wait" => a.wait = Some(num(w, val()?)?),
            "--secs" => a.secs = Some(num(w, val()?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

impl Args {
    fn inner(&self) -> Result<Inner> {
        let i = Inner {
            src: self
                .src
                .context("--src IP:PORT (the inner source) is needed")?,
            dst: self
                .dst
                .context("--dst IP:PORT (the inner destination) is needed")?,
            size: self.size.unwrap_or(64),
        };
        i.check()?;
        Ok(i)
    }

    fn identity(&self) -> Result<Identity> {
        let key = self.key.as_deref().context("--key FILE is needed")?;
        let gw = self
            .gateway_key
            .as_deref()
            .context("--gateway-key B64 (the gateway's public key) is needed")?;
        Identity::load(key, gw)
    }

    fn secs(v: Option<f64>, default: f64, what: &str) -> Result<Duration> {
        let s = v.unwrap_or(default);
        if !(s.is_finite() && s > 0.0) {
            bail!("{what} must be a positive number of seconds");
        }
        Ok(Duration::from_secs_f64(s))
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(v)?)?;
    out.flush()?;
    Ok(())
}

fn run() -> Result<()> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = words.split_first() else {
        bail!("{USAGE}");
    };
    let a = parse(rest)?;
    match cmd.as_str() {
        "send" => {
            let o = SendOptions {
                gateway: if a.plain {
                    wggen::any_v4(0)
                } else {
                    a.gateway
                        .context("--gateway IP:PORT is needed (or --plain)")?
                },
                bind: a.bind.unwrap_or_else(|| wggen::any_v4(0)),
                inner: a.inner()?,
                duration: Args::secs(a.duration, 3.0, "--duration")?,
                rate: a.rate.filter(|r| *r > 0),
                batch: a.batch.unwrap_or(64),
                pool: a.pool,
                pool_mb: a.pool_mb.unwrap_or(wggen::DEFAULT_POOL_MB),
                handshake_timeout: Duration::from_secs(10),
                gso: a.gso,
            };
            let r = if a.plain {
                wggen::send_plain(&o)?
            } else {
                wggen::send(a.identity()?, &o)?
            };
            eprintln!(
                "wggen send: sent {} in {:.2} s = {:.0} pps ({} from the pool at {:.0} pps, {} encrypted in line at {:.0} pps, {} send errors)",
                r.sent, r.secs, r.pps, r.pool_sent, r.pool_pps, r.inline_sent, r.inline_pps, r.send_errors
            );
            print_json(&r)
        }
        "sink" => {
            let (mode, id) = if a.plain {
                (SinkMode::Plain, None)
            } else {
                let gateway = a
                    .gateway
                    .context("--gateway IP:PORT is needed (or --plain)")?;
                (SinkMode::Peer { gateway }, Some(a.identity()?))
            };
            let o = SinkOptions {
                mode,
                bind: a.bind.context("--bind IP:PORT is needed")?,
                inner: a.inner()?,
                sample: a.sample.unwrap_or(64),
                duration: Args::secs(a.duration, 3600.0, "--duration")?,
                idle: Args::secs(a.idle, 1.0, "--idle")?,
                wait: Args::secs(a.wait, 30.0, "--wait")?,
                batch: a.batch.unwrap_or(64),
                handshake_timeout: Duration::from_secs(10),
            };
            let r = wggen::sink(id, &o, || {
                eprintln!("wggen sink: ready");
            })?;
            eprintln!(
                "wggen sink: received {} in {:.2} s = {:.0} pps; samples {} valid, {} invalid{}",
                r.received,
                r.secs,
                r.pps,
                r.valid,
                r.invalid,
                r.first_error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(" (first: {e})"))
            );
            print_json(&r)
        }
        "ceiling" => {
            let inner = Inner {
                src: "10.0.0.1:1".parse()?,
                dst: "10.0.0.2:2".parse()?,
                size: a.size.unwrap_or(64),
            };
            inner.check()?;
            let secs = Args::secs(a.secs, 1.0, "--secs")?.as_secs_f64();
            let pps = wggen::aead_ceiling(&inner, secs);
            let ring = wggen::aead_ceiling_ring(&inner, secs);
            eprintln!(
                "wggen ceiling: open + seal of {} B: {pps:.0} packets/s (chacha20poly1305 crate), {ring:.0} packets/s (ring)",
                inner.size
            );
            print_json(&serde_json::json!({ "size": inner.size, "pps": pps, "ring_pps": ring }))
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
