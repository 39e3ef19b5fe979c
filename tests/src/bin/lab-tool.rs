//! `lab-tool`: small network helpers that the lab runs inside namespaces with `ip netns exec`.
//!
//! ```text
//! lab-tool http-get ADDR PATH                 GET http://ADDR/PATH, print the body (exit 1 unless 200)
//! lab-tool udp-send [--bind ADDR] [--repeat N] TO HEX...
//!                                             send each hex payload as one datagram to TO
//! ```
#![deny(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("lab-tool: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("http-get") => {
            let [_, addr, path] = args.as_slice() else {
                bail!("usage: lab-tool http-get ADDR PATH")
            };
            http_get(addr, path)
        }
        Some("udp-send") => udp_send(&args[1..]),
        _ => bail!(
            "usage: lab-tool http-get ADDR PATH | udp-send [--bind ADDR] [--repeat N] TO HEX..."
        ),
    }
}

fn http_get(addr: &str, path: &str) -> Result<()> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr:?}"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header from {addr}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET http://{addr}{path}: {status}");
    }
    print!("{body}");
    Ok(())
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    if s.len() & 1 == 1 {
        bail!("odd-length hex {s:?}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .with_context(|| format!("bad hex at {i} in payload"))
        })
        .collect()
}

fn udp_send(args: &[String]) -> Result<()> {
    let mut bind: Option<String> = None;
    let mut repeat = 1u32;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bind" => bind = Some(it.next().context("--bind needs an address")?.clone()),
            "--repeat" => {
                repeat = it
                    .next()
                    .context("--repeat needs a number")?
                    .parse()
                    .context("--repeat")?
            }
            _ => rest.push(a.clone()),
        }
    }
    let Some((to, payloads)) = rest.split_first() else {
        bail!("udp-send: no destination")
    };
    let to: SocketAddr = to
        .parse()
        .with_context(|| format!("bad destination {to:?}"))?;
    let local = bind.unwrap_or_else(|| {
        if to.is_ipv4() {
            "0.0.0.0:0".into()
        } else {
            "[::]:0".into()
        }
    });
    let sock = UdpSocket::bind(&local).with_context(|| format!("binding {local}"))?;
    let payloads: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| decode_hex(p))
        .collect::<Result<_>>()?;
    for _ in 0..repeat {
        for p in &payloads {
            sock.send_to(p, to)
                .with_context(|| format!("sending {} bytes to {to}", p.len()))?;
            // Pace a little so that a burst does not overflow the receiver's socket buffer.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(())
}
