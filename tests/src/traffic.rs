//! Traffic: ping and iperf3, run inside namespaces, bounded in count and time: the tests'
//! checks and the benchmark's measurements.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::Lab;
use crate::netns::Netns;

/// The outcome of one `ping` run.
#[derive(Debug, Clone)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// How long ping ran, in ms, as its summary says (`time 804ms`).
    pub elapsed_ms: Option<f64>,
    /// Everything ping printed.
    pub output: String,
}

impl PingResult {
    /// Requests without a reply.
    #[must_use]
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }

    /// The round-trip time of every reply, in ms, in the order they came.
    #[must_use]
    pub fn rtts(&self) -> Vec<f64> {
        self.output
            .lines()
            .filter_map(|l| l.split("time=").nth(1))
            .filter_map(|t| t.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// The outcome of one iperf3 TCP transfer.
#[derive(Debug, Clone)]
pub struct IperfResult {
    /// Receiver's throughput in Mbit/s.
    pub mbits_per_sec: f64,
    /// The receiver summary line.
    pub summary: String,
}

/// Options for [`Netns::ping_with`].
#[derive(Debug, Clone, Default)]
pub struct PingOpts<'a> {
    /// Source address (`-I`).
    pub source: Option<&'a str>,
    /// TTL / hop limit (`-t`).
    pub ttl: Option<u8>,
    /// Interval in seconds (`-i`); default 0.2.
    pub interval: Option<f32>,
    /// Payload size (`-s`).
    pub size: Option<u16>,
    /// Stop after this many seconds whatever the count (`-w`); with a count of 1 ping then
    /// keeps sending until one reply comes back.
    pub deadline: Option<u32>,
}

/// What a timed iperf3 run ([`Netns::iperf_timed`]) sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IperfLoad {
    /// TCP over this many parallel streams (`-P`).
    Tcp(u32),
    /// UDP at full rate with payloads of this many bytes (`-u -l LEN -b 0`).
    Udp(u16),
}

/// What the receiving end of a run of [`Netns::iperf_timed`] counted (iperf3's `end.sum_received`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfTotals {
    /// Throughput.
    pub bits_per_second: f64,
    /// Payload bytes received.
    pub bytes: f64,
    /// Over how long.
    pub seconds: f64,
}

/// Reads `end.sum_received` from iperf3's JSON output.
fn parse_iperf_json(text: &str) -> Result<IperfTotals> {
    let v: serde_json::Value = serde_json::from_str(text).context("parsing iperf3 JSON")?;
    if let Some(e) = v.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3: {e}");
    }
    let num = |key: &str| -> Result<f64> {
        v.pointer(&format!("/end/sum_received/{key}"))
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("iperf3 JSON has no number end.sum_received.{key}"))
    };
    Ok(IperfTotals {
        bits_per_second: num("bits_per_second")?,
        bytes: num("bytes")?,
        seconds: num("seconds")?,
    })
}

/// `(transmitted, received, time in ms)` from ping's summary line
/// ("5 packets transmitted, 5 received, 0% packet loss, time 804ms").
fn parse_ping(output: &str) -> Result<(u32, u32, Option<f64>)> {
    // "5 packets transmitted, 5 received, 0% packet loss, time 804ms"
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in: {output}"))?;
    let mut nums = line.split(',').map(|part| {
        part.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    });
    let tx = nums
        .next()
        .flatten()
        .with_context(|| format!("bad ping summary {line:?}"))?;
    let rx = nums
        .next()
        .flatten()
        .with_context(|| format!("bad ping summary {line:?}"))?;
    let ms = line
        .rsplit_once("time ")
        .and_then(|(_, t)| t.trim().strip_suffix("ms")?.parse().ok());
    Ok((tx, rx, ms))
}

impl Netns {
    /// Pings `dst` `count` times, 0.2 s apart, waiting 1 s for the last reply.
    ///
    /// # Errors
    /// When ping cannot run or prints no summary.
    pub fn ping(&self, dst: &str, count: u32) -> Result<PingResult> {
        self.ping_with(dst, count, &PingOpts::default())
    }

    /// Pings with options, bounded to three times the nominal length (or the deadline) plus
    /// 10 s: a busy machine sends slower than asked.
    ///
    /// # Errors
    /// When ping cannot run or prints no summary.
    pub fn ping_with(&self, dst: &str, count: u32, opts: &PingOpts<'_>) -> Result<PingResult> {
        let interval = opts.interval.unwrap_or(0.2);
        let count_s = count.to_string();
        let interval_s = format!("{interval}");
        let mut args = vec!["ping", "-n", "-c", &count_s, "-i", &interval_s, "-W", "1"];
        let ttl_s;
        let size_s;
        let deadline_s;
        if let Some(src) = opts.source {
            args.extend(["-I", src]);
        }
        if let Some(t) = opts.ttl {
            ttl_s = t.to_string();
            args.extend(["-t", &ttl_s]);
        }
        if let Some(s) = opts.size {
            size_s = s.to_string();
            args.extend(["-s", &size_s]);
        }
        if let Some(w) = opts.deadline {
            deadline_s = w.to_string();
            args.extend(["-w", &deadline_s]);
        }
        args.push(dst);
        // Float to integer: a bound in whole seconds, generous.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let nominal = (count as f32 * interval) as u32;
        let bound = opts.deadline.unwrap_or(3 * nominal) + 10;
        let out = self.output_timeout(&args, bound)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (transmitted, received, elapsed_ms) = parse_ping(&text)?;
        Ok(PingResult {
            transmitted,
            received,
            elapsed_ms,
            output: text,
        })
    }

    /// Pings `dst` once a second until a reply comes back (the first packets start the
    /// handshake), for at most `timeout`.
    ///
    /// # Errors
    /// When no reply came back in time.
    pub fn wait_ping(&self, dst: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output_timeout(&["ping", "-n", "-c", "1", "-W", "1", dst], 5)?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no ping reply from {dst} in netns {} within {timeout:?}: {}",
                    self.name(),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }

    /// Starts an iperf3 server on `port`, bound to `bind` when given (on every address
    /// otherwise), that resets itself after 30 s idle (`--idle-timeout`, in case a failed run
    /// wedged it); it is stopped with the namespace.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn iperf_server(&self, lab: &Lab, bind: Option<&str>, port: u16) -> Result<u32> {
        let log = lab.path(&format!("iperf3-{}-{port}.log", self.name()));
        let port_s = port.to_string();
        let mut args = vec!["iperf3", "-s", "-p", &port_s, "--idle-timeout", "30"];
        if let Some(addr) = bind {
            args.extend(["-B", addr]);
        }
        self.spawn(&args, &log)
    }

    /// Runs the iperf3 client `args` (bounded to `bound_secs`), retrying while the server is
    /// not listening yet; returns its stdout.
    fn iperf_client(&self, args: &[&str], bound_secs: u32, to: &str) -> Result<String> {
        let mut last = String::new();
        for _ in 0..10 {
            let out = self.output_timeout(args, bound_secs)?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                return Ok(stdout);
            }
            last = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            if !(last.contains("refused") || last.contains("busy")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!("iperf3 to {to} from netns {} failed: {last}", self.name())
    }

    /// Runs one bounded iperf3 TCP transfer of `bytes` (`4M`) to a server at `addr:port`;
    /// `reverse` makes the server send. Retries while the server is not listening yet.
    ///
    /// # Errors
    /// When the transfer fails.
    pub fn iperf(&self, addr: &str, port: u16, bytes: &str, reverse: bool) -> Result<IperfResult> {
        let port_s = port.to_string();
        let mut args = vec![
            "iperf3",
            "-c",
            addr,
            "-p",
            &port_s,
            "-n",
            bytes,
            "-f",
            "m",
            "--connect-timeout",
            "3000",
        ];
        if reverse {
            args.push("-R");
        }
        let text = self.iperf_client(&args, 30, &format!("{addr}:{port}"))?;
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("receiver"))
            .with_context(|| format!("no receiver line in iperf3 output: {text}"))?
            .trim()
            .to_owned();
        let mbits = summary
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[1] == "Mbits/sec")
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0.0);
        Ok(IperfResult {
            mbits_per_sec: mbits,
            summary,
        })
    }

    /// Runs iperf3 with `load` for `secs` seconds (`-t`, JSON output) against the server at
    /// `addr:port`, bounded to its length plus 20 s, and returns what the receiver counted.
    ///
    /// # Errors
    /// When the run fails or iperf3 reports an error.
    pub fn iperf_timed(
        &self,
        addr: &str,
        port: u16,
        secs: u32,
        load: IperfLoad,
    ) -> Result<IperfTotals> {
        let (port_s, secs_s) = (port.to_string(), secs.to_string());
        let mut args = vec!["iperf3", "-c", addr, "-p", &port_s, "-J", "-t", &secs_s];
        args.extend(["--connect-timeout", "3000"]);
        let n;
        match load {
            IperfLoad::Tcp(streams) => {
                n = streams.to_string();
                args.extend(["-P", &n]);
            }
            IperfLoad::Udp(len) => {
                n = len.to_string();
                args.extend(["-u", "-l", &n, "-b", "0"]);
            }
        }
        let text = self.iperf_client(&args, secs + 20, &format!("{addr}:{port}"))?;
        parse_iperf_json(&text)
    }

    /// A TCP transfer both ways between this namespace (client) and a server it starts in
    /// `server` at `addr:port`: first client → server, then server → client (`-R`).
    ///
    /// # Errors
    /// When either transfer fails.
    pub fn tcp_both_ways(
        &self,
        lab: &Lab,
        server: &Netns,
        addr: &str,
        port: u16,
    ) -> Result<(IperfResult, IperfResult)> {
        let pid = server.iperf_server(lab, Some(addr), port)?;
        let up = self.iperf(addr, port, "4M", false);
        let down = self.iperf(addr, port, "4M", true);
        server.stop(pid, Duration::from_millis(500));
        Ok((up?, down?))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ping;

    #[test]
    fn parses_ping_summary() {
        let out =
            "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\n--- 10.0.0.2 ping statistics ---\n\
                   5 packets transmitted, 3 received, 40% packet loss, time 804ms\n";
        assert_eq!(parse_ping(out).unwrap(), (5, 3, Some(804.0)));
        let out = "10 packets transmitted, 0 received, +10 errors, 100% packet loss, time 9000ms";
        assert_eq!(parse_ping(out).unwrap(), (10, 0, Some(9000.0)));
        assert_eq!(
            parse_ping("3 packets transmitted, 3 received").unwrap(),
            (3, 3, None)
        );
        assert!(parse_ping("nothing").is_err());
        let r = super::PingResult {
            transmitted: 2,
            received: 2,
            elapsed_ms: None,
            output: "64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.071 ms\n\
                     64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=1.5 ms\n"
                .into(),
        };
        assert_eq!(r.rtts(), vec![0.071, 1.5]);
    }

    #[test]
    fn parses_iperf_json() {
        let out = r#"{"start": {}, "end": {"sum_received": {"bytes": 6400, "seconds": 2.0, "bits_per_second": 25600}}}"#;
        let t = super::parse_iperf_json(out).unwrap();
        assert_eq!(
            (t.bytes, t.seconds, t.bits_per_second),
            (6400.0, 2.0, 25600.0)
        );
        let err = r#"{"start": {}, "end": {}, "error": "unable to connect to server"}"#;
        assert!(super::parse_iperf_json(err).is_err());
        assert!(super::parse_iperf_json(r#"{"end": {}}"#).is_err());
    }
}
