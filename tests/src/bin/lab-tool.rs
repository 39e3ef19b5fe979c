//! `lab-tool`: small network helpers that the lab runs inside namespaces with `ip netns exec`.
//!
//! ```text
//! lab-tool http-get ADDR PATH                 GET http://ADDR/PATH, print the body (exit 1 unless 200)
//! lab-tool udp-send [--bind ADDR] [--repeat N] TO HEX...
//!                                             send each hex payload as one datagram to TO
//! lab-tool babel-capture IFNAME IFINDEX COUNT SECS
//!                                             print COUNT Babel packets sent to ff02::1:6 on
//!                                             IFNAME as "SOURCE HEX" lines (beside the daemon)
//! lab-tool wg-attack --to ADDR --key PUBKEY [--index N] [--kinds K,...] [--rate PPS]
//!                    [--secs S] [--answer-cookies]
//!                                             forged WireGuard messages (see `wg_attack`)
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
        Some("babel-capture") => {
            let [_, name, index, count, secs] = args.as_slice() else {
                bail!("usage: lab-tool babel-capture IFNAME IFINDEX COUNT SECS")
            };
            babel_capture(name, index.parse()?, count.parse()?, secs.parse()?)
        }
        Some("wg-attack") => wg_attack(&args[1..]),
        _ => bail!(
            "usage: lab-tool http-get ADDR PATH | udp-send [--bind ADDR] [--repeat N] TO HEX... | wg-attack ..."
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
    isthmus_dataplane::keys::decode_hex(s).with_context(|| format!("bad hex payload {s:?}"))
}

/// Receives Babel multicast packets on an interface beside the daemon that owns port 6696
/// there (both sockets have SO_REUSEADDR, so each gets every multicast datagram).
fn babel_capture(name: &str, ifindex: u32, count: usize, secs: u64) -> Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(name.as_bytes()))
        .with_context(|| format!("SO_BINDTODEVICE {name}"))?;
    let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 6696, 0, 0);
    s.bind(&any.into()).context("bind [::]:6696")?;
    s.join_multicast_v6(&"ff02::1:6".parse()?, ifindex)
        .context("join ff02::1:6")?;
    let sock: UdpSocket = s.into();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 65536];
    let mut got = 0;
    while got < count {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            bail!("{got} of {count} packets within {secs} s");
        }
        sock.set_read_timeout(Some(left))?;
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
        println!("{} {hex}", from.ip());
        got += 1;
    }
    Ok(())
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

/// Deterministic filler for forged bodies (xorshift; nothing here needs to be secret).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// `wg-attack`: forged WireGuard messages to a gateway whose public key is known, from this
/// namespace's address, as the attack tests and the flood benchmark need them:
///
/// - `flood`: handshake initiations with a random body and a valid mac1 (all the public key
///   gives): they count against the gateway's handshake budget and, under load, are answered
///   with cookie replies;
/// - `response`: handshake responses with a random body, a valid mac1 and `--index` as the
///   receiver (a real peer's index, captured);
/// - `cookie`: cookie replies to `--index`; `transport`: transport data to `--index`.
///
/// With `--answer-cookies` it reads the cookie replies it gets and from then on sends
/// initiations with a valid mac2, as an attacker that owns its address can: the load that
/// only a per-source limit stops. Prints what it sent and received.
fn wg_attack(args: &[String]) -> Result<()> {
    use base64::Engine as _;
    use isthmus_dataplane::tunnel::macs::{CookieState, MacKeys};
    use isthmus_dataplane::wire::wg;

    let mut to: Option<SocketAddr> = None;
    let mut key: Option<[u8; 32]> = None;
    let mut index = 0u32;
    let mut kinds = vec!["flood".to_string()];
    let mut rate = 1000u64;
    let mut secs = 5.0f64;
    let mut answer = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--to" => to = Some(val()?.parse().context("--to")?),
            "--key" => {
                let k = base64::engine::general_purpose::STANDARD
                    .decode(val()?)
                    .context("--key: base64")?;
                key = Some(k.try_into().ok().context("--key: 32 bytes")?);
            }
            "--index" => index = val()?.parse().context("--index")?,
            "--kinds" => kinds = val()?.split(',').map(str::to_string).collect(),
            "--rate" => rate = val()?.parse().context("--rate")?,
            "--secs" => secs = val()?.parse().context("--secs")?,
            "--answer-cookies" => answer = true,
            other => bail!("wg-attack: unknown argument {other:?}"),
        }
    }
    let to = to.context("wg-attack: --to")?;
    let keys = MacKeys::new(&key.context("wg-attack: --key")?);
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    sock.set_nonblocking(true)?;
    let mut noise = Noise(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64
            | 1,
    );
    let mut cookies = CookieState::default();
    let sender = noise.next() as u32;
    let (mut sent, mut got_cookies, mut failed) = (0u64, 0u64, 0u64);
    let start = std::time::Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut next = start;
    let mut buf = [0u8; 256];
    let mut k = 0usize;
    while std::time::Instant::now() < end {
        if answer {
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if buf[0] == wg::COOKIE_REPLY && cookies.consume(&keys, sender, &buf[..n]) {
                    got_cookies += 1;
                }
            }
        }
        let kind = kinds[k % kinds.len()].as_str();
        k += 1;
        let mut m = match kind {
            "flood" | "initiation" => vec![0u8; wg::INITIATION_LEN],
            "response" => vec![0u8; wg::RESPONSE_LEN],
            "cookie" => vec![0u8; wg::COOKIE_REPLY_LEN],
            "transport" => vec![0u8; 96],
            "garbage" => vec![0u8; 4 + (noise.next() % 1400) as usize],
            other => bail!("wg-attack: unknown kind {other:?}"),
        };
        noise.fill(&mut m[4..]);
        m[1..4].fill(0);
        match kind {
            "flood" | "initiation" => {
                m[0] = wg::INITIATION;
                let s = if answer { sender } else { noise.next() as u32 };
                m[4..8].copy_from_slice(&s.to_le_bytes());
                cookies.seal(&keys, s, &mut m);
            }
            "response" => {
                m[0] = wg::RESPONSE;
                m[8..12].copy_from_slice(&index.to_le_bytes());
                m[76..].fill(0);
                keys.set_mac1(&mut m);
            }
            "cookie" => {
                m[0] = wg::COOKIE_REPLY;
                m[4..8].copy_from_slice(&index.to_le_bytes());
            }
            // Any type byte (the header's zeros too, 1 in 256 times).
            "garbage" => m[0] = noise.next() as u8,
            _ => {
                m[0] = wg::DATA;
                m[4..8].copy_from_slice(&index.to_le_bytes());
            }
        }
        match sock.send_to(&m, to) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
        next += gap;
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_millis(100) {
            next = now; // fell behind: do not burst to catch up
        }
    }
    println!(
        "sent {sent} in {:.1} s ({failed} send errors), cookies received {got_cookies}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
