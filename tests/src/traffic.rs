//! Traffic: ping and iperf3, run inside namespaces, bounded in count and time.

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
    /// Everything ping printed.
    pub output: String,
}

impl PingResult {
    /// Requests without a reply.
    #[must_use]
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
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
}

fn parse_ping(output: &str) -> Result<(u32, u32)> {
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
    Ok((tx, rx))
}

impl Netns {
    /// Pings `dst` `count` times, 0.2 s apart, waiting 1 s for the last reply.
    ///
    /// # Errors
    /// When ping cannot run or prints no summary.
    pub fn ping(&self, dst: &str, count: u32) -> Result<PingResult> {
        self.ping_with(dst, count, &PingOpts::default())
    }

    /// Pings with options.
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
        args.push(dst);
        // Float to integer: a bound in whole seconds, generous.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let bound = (count as f32 * interval) as u32 + 10;
        let out = self.output_timeout(&args, bound)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (transmitted, received) = parse_ping(&text)?;
        Ok(PingResult {
            transmitted,
            received,
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

    /// Starts an iperf3 server bound to `addr:port`; it is stopped with the namespace.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn iperf_server(&self, lab: &Lab, addr: &str, port: u16) -> Result<u32> {
        let log = lab.path(&format!("iperf3-{}-{port}.log", self.name()));
        self.spawn(&["iperf3", "-s", "-B", addr, "-p", &port.to_string()], &log)
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
        let mut last = String::new();
        for _ in 0..10 {
            let out = self.output_timeout(&args, 30)?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
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
                return Ok(IperfResult {
                    mbits_per_sec: mbits,
                    summary,
                });
            }
            last = text;
            if !(last.contains("refused") || last.contains("busy")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!(
            "iperf3 to {addr}:{port} from netns {} failed: {last}",
            self.name()
        )
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
        let pid = server.iperf_server(lab, addr, port)?;
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
        assert_eq!(parse_ping(out).unwrap(), (5, 3));
        let out = "10 packets transmitted, 0 received, +10 errors, 100% packet loss, time 9000ms";
        assert_eq!(parse_ping(out).unwrap(), (10, 0));
        assert!(parse_ping("nothing").is_err());
    }
}
