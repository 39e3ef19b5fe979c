//! Failover: how long a 10 ms ping between the demo's two islands stops when the trunk that
//! carries it is cut ([`isthmus_lab::babel_islands::BabelIslands::failover`]), with Babel's
//! hellos alone (1 s and 4 s) and with the data plane's liveness probe (100 ms, down after 2
//! misses, hellos 1 s); and how long a `kill -9` of isthmus-dp and its restart from its file
//! stop a ping from a wireguard-go peer. Outages are the longest gap between replies; the
//! ratio column compares each with Babel's 1 s hellos, measured in the same run.

use std::time::Duration;

use anyhow::Result;
use isthmus_lab::babel_islands::{BabelIslands, IslandsSpec};
use isthmus_lab::Topology;
use serde::Serialize;

use crate::tunnel::Options;

/// One measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverRow {
    /// What was measured.
    pub case: String,
    /// Longest gap between replies, seconds.
    pub outage_s: Option<f64>,
    /// Pings sent and lost during the run.
    pub sent: u32,
    /// Lost.
    pub lost: u32,
    /// Detail (the restart time, the trunks).
    pub detail: String,
    /// Why there is no number.
    pub error: Option<String>,
}

/// The failover table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failover {
    /// Rows, in order.
    pub rows: Vec<FailoverRow>,
}

/// Runs every case; a case that fails is recorded with its error.
///
/// # Errors
/// Never for a case; only when the binaries cannot be found.
pub fn run(o: &Options) -> Result<Failover> {
    if let Some(dp) = &o.isthmus_dp {
        std::env::set_var("ISTHMUS_DP", dp);
        let cp = dp.with_file_name("isthmus-cp");
        if cp.is_file() {
            std::env::set_var("ISTHMUS_CP", cp);
        }
    }
    let mut rows = Vec::new();
    for (case, hello, liveness) in [
        ("Babel hellos, 1 s", 1, None),
        ("Babel hellos, 4 s", 4, None),
        (
            "liveness probe 100 ms × 2 misses, hellos 1 s",
            1,
            Some((0.1, 2)),
        ),
    ] {
        eprintln!("== failover: {case}");
        rows.push(match islands_failover(hello, liveness) {
            Ok(r) => r,
            Err(e) => FailoverRow {
                error: Some(format!("{e:#}")),
                ..FailoverRow::default()
            },
        });
        rows.last_mut().expect("pushed").case = case.into();
    }
    eprintln!("== failover: isthmus-dp kill -9 and restart");
    let mut r = restart_outage().unwrap_or_else(|e| FailoverRow {
        error: Some(format!("{e:#}")),
        ..FailoverRow::default()
    });
    r.case = "isthmus-dp kill -9 + restart from its file, ping from wireguard-go".into();
    rows.push(r);
    Ok(Failover { rows })
}

fn islands_failover(hello: u32, liveness: Option<(f64, u32)>) -> Result<FailoverRow> {
    let isl = BabelIslands::build_spec(&IslandsSpec {
        trunks: 2,
        hello,
        liveness,
        ..IslandsSpec::default()
    })?;
    let _routers = isl.routers()?;
    let (cut, after, r) = isl.failover(Duration::from_secs(60))?;
    let name = |k: Option<usize>| k.map_or('?', |k| char::from(b'a' + k as u8));
    Ok(FailoverRow {
        outage_s: Some(r.longest_gap.as_secs_f64()),
        sent: r.sent,
        lost: r.lost(),
        detail: format!(
            "trunk {} cut, traffic on trunk {}",
            name(Some(cut)),
            name(after)
        ),
        ..FailoverRow::default()
    })
}

fn restart_outage() -> Result<FailoverRow> {
    let mut t = Topology::file_gateway_and_wireguard_go()?;
    let (restart, r) = t.restart_under_ping("a", "b", "10.10.0.1")?;
    Ok(FailoverRow {
        outage_s: Some(r.longest_gap.as_secs_f64()),
        sent: r.sent,
        lost: r.lost(),
        detail: format!(
            "restart {:.0} ms; {:.0} ms beyond it",
            restart.as_secs_f64() * 1e3,
            r.longest_gap.saturating_sub(restart).as_secs_f64() * 1e3
        ),
        ..FailoverRow::default()
    })
}
