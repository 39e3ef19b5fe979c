//! Packet captures with tcpdump inside a namespace.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::lab::{log_tail, unique_name, Lab};
use crate::netns::Netns;
use crate::pcap::{read_udp, UdpDatagram};

/// A running `tcpdump -i any -U -w FILE FILTER` in a namespace.
#[derive(Debug)]
pub struct Capture {
    ns: Arc<Netns>,
    pid: u32,
    file: PathBuf,
}

impl Capture {
    /// Starts a capture with a pcap `filter` and waits until tcpdump listens.
    ///
    /// # Errors
    /// When tcpdump does not start within 5 s.
    pub fn start(ns: &Arc<Netns>, lab: &Lab, filter: &str) -> Result<Self> {
        let name = unique_name("cap");
        let file = lab.path(&format!("{name}.pcap"));
        let log = lab.path(&format!("{name}.log"));
        let file_s = file.to_string_lossy().into_owned();
        let mut args = vec!["tcpdump", "-i", "any", "-U", "-n", "-w", &file_s];
        args.extend(filter.split_whitespace());
        let pid = ns.spawn(&args, &log)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline || !ns.alive(pid) {
                bail!(
                    "tcpdump did not start in {}: {}",
                    ns.name(),
                    log_tail(&log, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            ns: Arc::clone(ns),
            pid,
            file,
        })
    }

    /// Stops tcpdump and returns the UDP datagrams it saw.
    ///
    /// # Errors
    /// When the capture file cannot be read.
    pub fn stop(self) -> Result<Vec<UdpDatagram>> {
        std::thread::sleep(Duration::from_millis(200));
        self.ns.stop(self.pid, Duration::from_secs(2));
        read_udp(&self.file)
    }
}
