//! The report of `cargo xtask bench`: tables with ratios (markdown, also printed) and JSON.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::capacity::{Capacity, Case, Row};
use crate::flood::{Floods, BASELINE, SCENARIOS};
use crate::tunnel::{Impl, Results, Topology, ISTHMUS, KERNEL, METRICS, WG_GO_DEB};

/// One criterion benchmark's headline.
#[derive(Debug, Clone, Serialize)]
pub struct CriterionResult {
    /// Full id (`group/function/parameter`).
    pub id: String,
    /// Median time per iteration, ns.
    pub median_ns: f64,
    /// Elements per iteration, if the bench declared `Throughput::Elements`.
    pub elements: Option<u64>,
    /// Bytes per iteration, if the bench declared `Throughput::Bytes`.
    pub bytes: Option<u64>,
}

impl CriterionResult {
    /// Nanoseconds per element (or per iteration).
    pub fn ns_per_element(&self) -> f64 {
        self.median_ns / self.elements.map_or(1.0, |e| e as f64)
    }
}

/// Read criterion's `new/benchmark.json` + `new/estimates.json` under `dir`, keeping those
/// written at or after `since` (so that results of earlier runs are not reported as new).
pub fn read_criterion(dir: &Path, since: SystemTime) -> Vec<CriterionResult> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.file_name().and_then(|n| n.to_str()) != Some("estimates.json")
                || p.parent()
                    .and_then(|x| x.file_name())
                    .and_then(|n| n.to_str())
                    != Some("new")
            {
                continue;
            }
            if e.metadata()
                .and_then(|m| m.modified())
                .map_or(true, |m| m < since)
            {
                continue;
            }
            let Some(parsed) = parse_one(&p) else {
                continue;
            };
            out.push(parsed);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// A measurement a bench makes besides criterion's timings (simulated seconds, bytes):
/// benches write them with [`write_extras`], the report reads them with [`read_extras`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Extra {
    /// Id (`group/name`).
    pub id: String,
    /// Value, in `unit`.
    pub value: f64,
    /// Unit (`s`, `bytes`, …).
    pub unit: String,
    /// What was measured.
    pub note: String,
}

impl Extra {
    /// An extra measurement.
    pub fn new(id: &str, value: f64, unit: &str, note: &str) -> Self {
        Self {
            id: id.to_owned(),
            value,
            unit: unit.to_owned(),
            note: note.to_owned(),
        }
    }
}

/// Writes `extras` to `<criterion_dir>/extra/<name>.json`.
pub fn write_extras(criterion_dir: &Path, name: &str, extras: &[Extra]) -> std::io::Result<()> {
    let dir = criterion_dir.join("extra");
    fs::create_dir_all(&dir)?;
    let json = serde_json::to_string_pretty(extras).map_err(std::io::Error::other)?;
    fs::write(dir.join(format!("{name}.json")), json)
}

/// Reads the extras under `<criterion_dir>/extra/` written at or after `since`.
pub fn read_extras(criterion_dir: &Path, since: SystemTime) -> Vec<Extra> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(criterion_dir.join("extra")) else {
        return out;
    };
    for e in rd.flatten() {
        let fresh = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= since);
        if !fresh {
            continue;
        }
        if let Some(v) = fs::read_to_string(e.path())
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<Extra>>(&t).ok())
        {
            out.extend(v);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn parse_one(estimates: &Path) -> Option<CriterionResult> {
    let est: serde_json::Value = serde_json::from_str(&fs::read_to_string(estimates).ok()?).ok()?;
    let bench: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(estimates.with_file_name("benchmark.json")).ok()?)
            .ok()?;
    Some(CriterionResult {
        id: bench.get("full_id")?.as_str()?.to_owned(),
        median_ns: est.get("median")?.get("point_estimate")?.as_f64()?,
        elements: bench
            .get("throughput")
            .and_then(|t| t.get("Elements"))
            .and_then(serde_json::Value::as_u64),
        bytes: bench
            .get("throughput")
            .and_then(|t| t.get("Bytes"))
            .and_then(serde_json::Value::as_u64),
    })
}

fn sig(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn value(t: &Topology, metric: &str, imp: &str) -> Option<f64> {
    t.cells.get(metric)?.get(imp)?.median
}

fn topology_table(out: &mut String, t: &Topology, impls: &[Impl], repeat: usize) {
    // Columns: every implementation, except kernel WireGuard where this kernel lacks it (it
    // is an extra reference, not one of the compared implementations).
    let cols: Vec<&Impl> = impls
        .iter()
        .filter(|i| i.id != "kernel-wg" || i.unavailable.is_none())
        .collect();
    let _ = writeln!(out, "### {}\n", t.title);
    let _ = write!(out, "| test | unit |");
    for c in &cols {
        let _ = write!(out, " {} |", c.label);
    }
    let _ = write!(out, "\n|---|---|");
    for _ in &cols {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for m in METRICS.iter().filter(|m| t.cells.contains_key(m.id)) {
        let arrow = if m.higher_is_better { "↑" } else { "↓" };
        let _ = write!(out, "| {} {arrow} | {} |", m.title, m.unit);
        let k = value(t, m.id, KERNEL);
        let w = value(t, m.id, WG_GO_DEB);
        for c in &cols {
            let cell = if c.unavailable.is_some() {
                "n/a".to_owned()
            } else if t.failed.contains_key(&c.id) {
                "failed".to_owned()
            } else if let Some(v) = value(t, m.id, &c.id) {
                let mut ratios = Vec::new();
                if c.id != KERNEL {
                    ratios.push(k.map_or_else(|| "–".to_owned(), |k| format!("{}×", sig(v / k))));
                }
                if c.id != KERNEL && c.id != WG_GO_DEB {
                    ratios.push(w.map_or_else(|| "–".to_owned(), |w| format!("{}×", sig(v / w))));
                }
                if ratios.is_empty() {
                    sig(v)
                } else {
                    format!("{} ({})", sig(v), ratios.join(" / "))
                }
            } else {
                let err = t
                    .cells
                    .get(m.id)
                    .and_then(|r| r.get(&c.id))
                    .and_then(|c| c.error.clone())
                    .unwrap_or_default();
                if err.is_empty() {
                    "–".to_owned()
                } else {
                    "failed".to_owned()
                }
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nMedian of {repeat} runs. In parentheses: ratio to the kernel's plain forwarding / ratio to Debian's wireguard-go, same run. ↑ higher is better, ↓ lower is better."
    );
    for c in &cols {
        if let Some(why) = &t.failed.get(&c.id) {
            let _ = writeln!(out, "- **{}** failed: {}", c.label, one_line(why));
        }
        for m in METRICS {
            if let Some(e) = t
                .cells
                .get(m.id)
                .and_then(|r| r.get(&c.id))
                .and_then(|c| c.error.as_ref())
            {
                let _ = writeln!(
                    out,
                    "- {} / {}: a run failed: {}",
                    c.label,
                    m.title,
                    one_line(e)
                );
            }
        }
    }
    out.push('\n');
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 400 {
        s.chars().take(400).collect::<String>() + "…"
    } else {
        s
    }
}

fn ratio_line(out: &mut String, what: &str, t: &Topology, num: &str, den: &str, target: f64) {
    for m in ["tcp1", "tcp4", "udp64", "hub_cpu"] {
        if !t.cells.contains_key(m) && !t.cells.is_empty() {
            continue;
        }
        let title = METRICS
            .iter()
            .find(|x| x.id == m)
            .map_or(m.to_owned(), |x| {
                if m == "hub_cpu" {
                    format!("{} (inverse: the other's CPU ÷ isthmus's)", x.title)
                } else {
                    x.title.to_owned()
                }
            });
        // For CPU per packet lower is better: the ratio is how many times less isthmus needs.
        let (num_v, den_v) = if m == "hub_cpu" {
            (value(t, m, den), value(t, m, num))
        } else {
            (value(t, m, num), value(t, m, den))
        };
        match (num_v, den_v) {
            (Some(a), Some(b)) if b > 0.0 => {
                let r = a / b;
                let ok = if r >= target { "met" } else { "NOT met" };
                let _ = writeln!(out, "| {what}: {title} | {} | ≥ {target} | {ok} |", sig(r));
            }
            _ => {
                let _ = writeln!(out, "| {what}: {title} | not measured | ≥ {target} | – |");
            }
        }
    }
}

fn human_bytes(b: f64) -> String {
    if b >= 1048576.0 {
        format!("{} MiB", sig(b / 1048576.0))
    } else if b >= 1024.0 {
        format!("{} KiB", sig(b / 1024.0))
    } else {
        format!("{} B", sig(b))
    }
}

/// The control-plane table: Babel convergence, update processing, memory, FIB pushes.
fn control_plane_table(out: &mut String, crit: &[CriterionResult], extras: &[Extra]) {
    let c = |id: &str| crit.iter().find(|c| c.id == id);
    let x = |id: &str| extras.iter().find(|x| x.id == id);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let ms = |c: &CriterionResult| format!("{} ms", sig(c.median_ns / 1e6));
    if let Some(e) = x("babel/converge_grid_10x10_simulated") {
        rows.push((
            "Babel: 100 routers (10×10 grid, wired) converge from cold start".into(),
            format!("{} s simulated", sig(e.value)),
            "simulated time until every node reaches every prefix".into(),
        ));
    }
    if let Some(r) = c("babel/converge_grid_10x10") {
        rows.push((
            "Babel: the same, simulator wall time per run".into(),
            ms(r),
            "100 routers on one thread".into(),
        ));
    }
    for (id, what) in [
        ("babel/updates_new_10k", "new routes"),
        ("babel/updates_refresh_10k", "refreshes of known routes"),
    ] {
        if let Some(r) = c(id) {
            let per_s = r.elements.unwrap_or(1) as f64 / r.median_ns * 1e9;
            rows.push((
                format!("Babel: updates processed, {what}"),
                format!("{} k updates/s", sig(per_s / 1e3)),
                format!(
                    "{} ns per update, including triggered updates out",
                    sig(r.ns_per_element())
                ),
            ));
        }
    }
    if let Some(e) = x("babel/memory_per_route") {
        rows.push((
            "Babel: heap in use per route (100,000 prefixes)".into(),
            human_bytes(e.value),
            x("babel/memory_100k_routes_one_neighbour").map_or(String::new(), |t| {
                format!("RSS growth for 100k prefixes: {}", human_bytes(t.value))
            }),
        ));
    }
    if let Some(e) = x("babel/memory_100k_routes_learning") {
        rows.push((
            "Babel: RSS growth right after learning 100,000 prefixes".into(),
            human_bytes(e.value),
            "peak, with urgent updates to 3 links in flight".into(),
        ));
    }
    if let Some(e) = x("babel/memory_per_extra_route") {
        rows.push((
            "Babel: heap in use per second route to a prefix".into(),
            human_bytes(e.value),
            "a backup route from another neighbour".into(),
        ));
    }
    if let Some(e) = x("babel/rss_with_100k_prefixes") {
        rows.push((
            "Babel: process RSS holding 100k prefixes × 2 routes".into(),
            human_bytes(e.value),
            format!(
                "target for the whole isthmus-cp: < 200 MiB ({})",
                if e.value < 200.0 * 1048576.0 {
                    "met"
                } else {
                    "NOT met"
                }
            ),
        ));
    }
    for (id, what) in [
        (
            "fib_push/snapshot_100k_into_empty",
            "FIB: full push of 100k routes (into an empty FIB)",
        ),
        (
            "fib_push/snapshot_100k_replace",
            "FIB: full push of 100k routes (replacing 100k others)",
        ),
        (
            "fib_push/snapshot_100k_same",
            "FIB: full push of the same 100k routes",
        ),
        (
            "fib_push/update_1_in_100k",
            "FIB: 1-route update in a 100k table",
        ),
        (
            "fib_push/update_1000_in_100k",
            "FIB: 1000-route update in a 100k table",
        ),
    ] {
        if let Some(r) = c(id) {
            let v = if r.median_ns >= 1e6 {
                ms(r)
            } else {
                format!("{} µs", sig(r.median_ns / 1e3))
            };
            rows.push((what.into(), v, "per push (median)".into()));
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Control plane

| measure | value | note |
|---|---:|---|"
    );
    for (a, b, n) in rows {
        let _ = writeln!(out, "| {a} | {b} | {n} |");
    }
    out.push('\n');
}

/// `v` with its ratio to `base` in parentheses, when both exist and the ratio means
/// something (`base` > 0).
fn with_ratio(v: Option<f64>, base: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{} ({}×)", fmt(v), sig(v / b)),
        (Some(v), _) => fmt(v),
        (None, _) => "–".to_owned(),
    }
}

fn pct(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else {
        sig(v)
    }
}

/// The handshake-flood table: one row per hub implementation and scenario.
fn floods_table(out: &mut String, f: &Floods, impls: &[Impl]) {
    let _ = writeln!(out, "## Handshake floods\n");
    if let Some(why) = &f.skipped {
        let _ = writeln!(out, "Not measured: {}\n", one_line(why));
        return;
    }
    let _ = writeln!(
        out,
        "A {peer} peer ══ hub, and an attacker on its own link to the hub (`lab-tool wg-attack`, which knows only the hub's public key; asked for {rate} msgs/s, it reports what it reached). \
Each phase lasts {secs} s under its own attack; one run each. \
*ping loss*: 10 ms pings from the peer to the hub's tunnel address. \
*TCP*: iperf3, 1 stream, peer → hub through the tunnel; in parentheses ÷ the same without flood. \
*new handshake*: the peer drops its session (`wg set … remove`, added again) and pings; time to the first answer (wireguard-go's peer retries after a cookie reply only after 5 s). \
*hub CPU*: the hub's processes over the attack ÷ the attacker's messages (not for kernel WireGuard, whose work is in no process), and as a share of one core. \
In parentheses after another hub's loss and CPU per message: ratio to Debian's wireguard-go in the same scenario (when it is above zero). ↓ lower is better, ↑ higher.\n",
        peer = f.peer,
        rate = f.rate,
        secs = f.secs,
    );
    let _ = writeln!(
        out,
        "| hub | attack | attacker msgs/s | ping loss % ↓ | TCP Gbit/s ↑ | new handshake ↓ | hub CPU per message ↓ | hub CPU, % of a core |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    let wg = f.rows.get(WG_GO_DEB);
    for imp in impls {
        let Some(rows) = f.rows.get(&imp.id) else {
            continue;
        };
        for s in &SCENARIOS {
            let Some(row) = rows.get(s.id) else {
                continue;
            };
            let base = if imp.id == WG_GO_DEB {
                None
            } else {
                wg.and_then(|w| w.get(s.id))
            };
            let loss = with_ratio(row.loss_pct, base.and_then(|b| b.loss_pct), pct);
            let cpu = with_ratio(
                row.cpu_us_per_msg,
                base.and_then(|b| b.cpu_us_per_msg),
                |v| format!("{} µs", sig(v)),
            );
            let cpu = if s.id == BASELINE || !imp.in_a_process() {
                "–".to_owned()
            } else {
                cpu
            };
            let tcp = match (row.tcp_gbps, row.tcp_ratio) {
                (Some(g), Some(r)) => format!("{} ({}×)", sig(g), sig(r)),
                (Some(g), None) => sig(g),
                _ => "–".to_owned(),
            };
            let hs = match row.handshake_ms {
                Some(ms) if ms >= 1000.0 => format!("{} s", sig(ms / 1000.0)),
                Some(ms) => format!("{} ms", sig(ms)),
                None if row.handshake_timed_out => format!("none in {} s", f.handshake_timeout_s),
                None => "–".to_owned(),
            };
            let share = row
                .hub_cpu_share
                .map_or_else(|| "–".to_owned(), |c| format!("{:.0} %", c * 100.0));
            let msgs = row
                .msgs_per_s
                .map_or_else(|| "–".to_owned(), |m| format!("{} k", sig(m / 1e3)));
            let _ = writeln!(
                out,
                "| {} | {} | {msgs} | {loss} | {tcp} | {hs} | {cpu} | {share} |",
                imp.label, s.title
            );
        }
    }
    out.push('\n');
    // The headline ratios, spelled out.
    if let (Some(is), Some(wg)) = (f.rows.get("isthmus"), wg) {
        for s in SCENARIOS.iter().filter(|s| s.id != BASELINE) {
            let (Some(a), Some(b)) = (is.get(s.id), wg.get(s.id)) else {
                continue;
            };
            let mut parts = Vec::new();
            if let (Some(x), Some(y)) = (a.cpu_us_per_msg, b.cpu_us_per_msg) {
                if y > 0.0 {
                    parts.push(format!("hub CPU per message {}×", sig(x / y)));
                }
            }
            if let (Some(x), Some(y)) = (a.loss_pct, b.loss_pct) {
                let r = if y > 0.0 {
                    format!(" ({}×)", sig(x / y))
                } else {
                    String::new()
                };
                parts.push(format!("ping loss {} % vs {} %{r}", pct(x), pct(y)));
            }
            if let (Some(x), Some(y)) = (a.tcp_ratio, b.tcp_ratio) {
                parts.push(format!(
                    "TCP kept {} % vs {} %",
                    sig(x * 100.0),
                    sig(y * 100.0)
                ));
            }
            if !parts.is_empty() {
                let _ = writeln!(
                    out,
                    "- isthmus ÷ wireguard-go (Debian), {}: {}",
                    s.title,
                    parts.join("; ")
                );
            }
        }
    }
    for imp in impls {
        if let Some(why) = f.failed.get(&imp.id) {
            let _ = writeln!(out, "- **{}** stopped early: {}", imp.label, one_line(why));
        }
        for (sid, row) in f.rows.get(&imp.id).into_iter().flatten() {
            for e in &row.errors {
                let _ = writeln!(out, "- {} / {sid}: {}", imp.label, one_line(e));
            }
        }
    }
    out.push('\n');
}

/// The failover table: the outage of each case, and its ratio to Babel's 1 s hellos (the
/// first row) measured in the same run.
fn failover_table(out: &mut String, f: &crate::failover::Failover) {
    let _ = writeln!(
        out,
        "## Failover
"
    );
    let _ = writeln!(
        out,
        "A 10 ms ping between the demo's islands while the trunk carrying it is cut (two trunks, \
         both gateways isthmus-dp + isthmus-cp, babeld routers on the islands); and a 10 ms ping \
         from a wireguard-go peer while isthmus-dp is killed (SIGKILL) and restarted from its \
         file. Outage: the longest gap between replies.\n"
    );
    let _ = writeln!(
        out,
        "| case | outage | vs hellos 1 s | lost / sent | detail |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let base = f.rows.first().and_then(|r| r.outage_s);
    for r in &f.rows {
        match (r.outage_s, &r.error) {
            (Some(s), _) => {
                // The trunk cuts compare with each other; the restart is another event.
                let ratio = base
                    .filter(|_| r.detail.contains("trunk"))
                    .map_or_else(String::new, |b| format!("{:.2}×", s / b));
                let _ = writeln!(
                    out,
                    "| {} | {:.0} ms | {ratio} | {} / {} | {} |",
                    r.case,
                    s * 1e3,
                    r.lost,
                    r.sent,
                    r.detail
                );
            }
            (None, e) => {
                let _ = writeln!(
                    out,
                    "| {} | failed: {} | | | |",
                    r.case,
                    e.as_deref().unwrap_or("?").lines().next().unwrap_or("")
                );
            }
        }
    }
    out.push('\n');
}

/// The relay-capacity table: one row per implementation and inner size.
fn capacity_table(out: &mut String, c: &Capacity, impls: &[Impl]) {
    let _ = writeln!(out, "## Relay capacity (one core)\n");
    if let Some(why) = &c.skipped {
        let _ = writeln!(out, "Not measured: {}\n", one_line(why));
        return;
    }
    let _ = writeln!(
        out,
        "`isthmus-wggen send` (peer A) ══ gateway ══ `isthmus-wggen sink` (peer B): the gateway relays A → B, pinned to CPU {core}; generator and sink on the other CPUs. \
The generator completed a real handshake, pre-encrypted its packets (unique counters) and sent them with UDP GSO, capped at {rate} pps, for {secs} s per run; the sink completed its own handshake, counted what its namespace received and decrypted one packet in 64. \
*pps*: received at the sink (median); in parentheses ÷ the ChaCha20-Poly1305 ceiling with ring, boringtun's AEAD (open + seal of one packet per relayed packet, on the same core; the chacha20poly1305 crate's is shown too). \
*process CPU*: the gateway's processes (utime + stime) ÷ packets received; *core busy*: the gateway core's non-idle time (`/proc/stat`, softirq included) ÷ packets. Ratios in brackets: ÷ Debian's wireguard-go at the same size. ↑ higher is better, ↓ lower.\n",
        core = c.core,
        rate = c.rate,
        secs = c.secs,
    );
    capacity_rows(out, c, impls, &c.rows, WG_GO_DEB);
    for (id, why) in &c.failed {
        let _ = writeln!(out, "\n{id}: failed: {}", one_line(why));
    }
    out.push('\n');
    for case in [Case::ToMesh, Case::FromMesh] {
        let (title, what) = match case {
            Case::ToMesh => (
                "Tunnel → mesh interface capacity (one core)",
                "`isthmus-wggen send` (peer A) ══ gateway ── mesh interface ── `isthmus-wggen sink --plain`: the gateway decrypts and forwards to a host on its mesh-side veth, plain UDP (isthmus-dp: a `[[route]]` via that neighbour; on AF_XDP the veth is a `mesh` interface and the packets leave through its XDP socket; the others, and isthmus-dp on the UDP backend, hand them to the kernel through the TUN device). The sink counts what its namespace received and checks one datagram in 64.",
            ),
            Case::FromMesh | Case::Relay => (
                "Mesh interface → tunnel capacity (one core)",
                "`isthmus-wggen send --plain` (a host on the gateway's mesh-side veth) ── gateway ══ `isthmus-wggen sink` (peer B): plain UDP to an address the gateway routes into the tunnel, encrypted to the sink (isthmus-dp on AF_XDP: redirected by the mesh interface's XDP program; the others, and isthmus-dp on the UDP backend: the kernel's forwarding into the TUN device). The sink completed its own handshake, counted what its namespace received and decrypted one packet in 64.",
            ),
        };
        let _ = writeln!(out, "## {title}\n");
        let _ = writeln!(
            out,
            "{what} Gateway, generator, sink, rate cap ({rate} pps, UDP GSO) and run length ({secs} s) as in the relay table; the same ceiling is shown for reference, although these paths do one ChaCha20-Poly1305 operation per packet (open, or seal), not two, so a ratio to it above 1 is possible. On veths the receiving side's kernel work (IP forwarding into the TUN device; or the XDP program and the copy into the XDP socket) runs in the sending CPU's softirq, so *core busy* leaves it out for every column alike. Ratios in brackets: ÷ isthmus-dp on the UDP backend at the same size.\n",
            rate = c.rate,
            secs = c.secs,
        );
        capacity_rows(out, c, impls, c.case(case), ISTHMUS);
        out.push('\n');
    }
}

/// A capacity table: the ceilings, then one row per implementation and inner size, with
/// ratios to `baseline`'s row at the same size.
fn capacity_rows(
    out: &mut String,
    c: &Capacity,
    impls: &[Impl],
    rows: &std::collections::BTreeMap<String, std::collections::BTreeMap<usize, Row>>,
    baseline: &str,
) {
    let _ = writeln!(
        out,
        "| gateway | inner size | pps ↑ | offered pps | process CPU µs/pkt ↓ | core busy µs/pkt ↓ | samples valid/invalid |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (what, ceiling) in [
        ("ring", &c.ceiling),
        ("chacha20poly1305 crate", &c.ceiling_rustcrypto),
    ] {
        for (size, pps) in ceiling {
            let _ = writeln!(
                out,
                "| ChaCha20-Poly1305 ceiling ({what}) | {size} B | {} | – | {} | – | – |",
                sig(*pps),
                sig(1e6 / pps)
            );
        }
    }
    let base_rows = rows.get(baseline);
    for imp in impls {
        let Some(by_size) = rows.get(&imp.id) else {
            continue;
        };
        let is_base = imp.id == baseline;
        for (size, r) in by_size {
            let base = base_rows.and_then(|w| w.get(size));
            let ceil = c.ceiling.get(size).copied();
            let pps = match (r.pps_median, ceil) {
                (Some(p), Some(cl)) if cl > 0.0 => format!("{} ({}× ceiling)", sig(p), sig(p / cl)),
                (Some(p), _) => sig(p),
                (None, _) => r
                    .error
                    .as_deref()
                    .map_or_else(|| "–".into(), |e| format!("failed: {}", one_line(e))),
            };
            let pps = match (r.pps_median, base.and_then(|b| b.pps_median)) {
                (Some(p), Some(b)) if b > 0.0 && !is_base => {
                    format!("{pps} [{}×]", sig(p / b))
                }
                _ => pps,
            };
            let us = |v: Option<f64>, b: Option<f64>| match (v, b) {
                (Some(v), Some(b)) if b > 0.0 && !is_base => {
                    format!("{} [{}×]", sig(v), sig(v / b))
                }
                (Some(v), _) => sig(v),
                (None, _) => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {size} B | {pps} | {} | {} | {} | {}/{} |",
                imp.label,
                r.offered_pps.map_or_else(|| "–".into(), sig),
                us(r.cpu_us, base.and_then(|b| b.cpu_us)),
                us(r.core_us, base.and_then(|b| b.core_us)),
                r.valid,
                r.invalid
            );
        }
    }
}

/// The whole report as markdown.
pub fn markdown(r: Option<&Results>, crit: &[CriterionResult], extras: &[Extra]) -> String {
    let mut out = String::from("# isthmus benchmark\n\n");
    if let Some(r) = r {
        let runs = if r.line.is_some() || r.relay.is_some() {
            format!(
                "iperf3 runs of {} s, {} repetitions each, {} pings at 10 ms per latency run; ",
                r.duration, r.repeat, r.pings
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}; {runs}load average before: {}; namespace part took {:.0} s.\n",
            r.machine, r.loadavg_before, r.wall_seconds
        );
        let _ = writeln!(out, "Columns, and the build each one is:");
        for i in r.impls.iter().filter(|i| !i.build.is_empty()) {
            let _ = writeln!(out, "- **{}** (`{}`): {}", i.label, i.id, i.build);
        }
        out.push('\n');
        if r.line.is_some() || r.relay.is_some() {
            let _ = writeln!(out, "## Tunnels side by side\n");
        }
        if let Some(line) = &r.line {
            topology_table(&mut out, line, &r.impls, r.repeat);
        }
        if let Some(relay) = &r.relay {
            let _ = writeln!(out, "{}\n", relay.note);
            topology_table(&mut out, relay, &r.impls, r.repeat);
        }
        if let Some(f) = &r.floods {
            floods_table(&mut out, f, &r.impls);
        }
        if let Some(c) = &r.capacity {
            capacity_table(&mut out, c, &r.impls);
        }
        if let Some(f) = &r.failover {
            failover_table(&mut out, f);
        }
        let missing: Vec<&Impl> = r.impls.iter().filter(|i| i.unavailable.is_some()).collect();
        if !missing.is_empty() {
            let _ = writeln!(out, "Not measured:");
            for i in missing {
                let _ = writeln!(
                    out,
                    "- {}: {}",
                    i.label,
                    i.unavailable.as_deref().unwrap_or("")
                );
            }
            out.push('\n');
        }
    }
    control_plane_table(&mut out, crit, extras);
    if !crit.is_empty() {
        let _ = writeln!(out, "## Criterion micro-benchmarks\n\n| bench | time / iteration | per element | throughput |\n|---|---:|---:|---:|");
        for c in crit {
            let (per, thr) = match (c.elements, c.bytes) {
                (Some(e), _) => (
                    format!("{} ns", sig(c.ns_per_element())),
                    format!("{} M elem/s", sig(e as f64 / c.median_ns * 1e3)),
                ),
                (None, Some(b)) => (
                    "–".to_owned(),
                    format!("{} GB/s", sig(b as f64 / c.median_ns)),
                ),
                _ => ("–".to_owned(), "–".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {} | {} µs | {per} | {thr} |",
                c.id,
                sig(c.median_ns / 1e3)
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "## Targets (issue 3)\n\n| target | measured | wanted | |\n|---|---:|---:|---|"
    );
    if let Some(r) = r {
        if let Some(line) = &r.line {
            ratio_line(
                &mut out,
                "terminating, isthmus ÷ boringtun-cli",
                line,
                "isthmus",
                "boringtun",
                1.0,
            );
        }
        if let Some(relay) = &r.relay {
            ratio_line(
                &mut out,
                "relay hub, isthmus ÷ wireguard-go",
                relay,
                "isthmus",
                WG_GO_DEB,
                2.0,
            );
        }
    }
    let fib: Vec<&CriterionResult> = crit
        .iter()
        .filter(|c| {
            let l = c.id.to_lowercase();
            l.contains("fib") && l.contains("lookup")
        })
        .collect();
    if fib.is_empty() {
        let _ = writeln!(out, "| FIB lookup | not measured | < 30 ns | – |");
    }
    for c in fib {
        let ns = c.ns_per_element();
        let _ = writeln!(
            out,
            "| FIB lookup: {} | {} ns | < 30 ns | {} |",
            c.id,
            sig(ns),
            if ns < 30.0 { "met" } else { "NOT met" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::Row;
    use crate::tunnel::{Cell, Kind};
    use isthmus_lab::WgImpl;
    use std::collections::BTreeMap;

    fn imp(id: &str, unavailable: Option<&str>) -> Impl {
        Impl {
            id: id.into(),
            label: id.into(),
            build: format!("/opt/{id}"),
            kind: Kind::Wg {
                imp: WgImpl::WireguardGo,
                binary: None,
            },
            unavailable: unavailable.map(Into::into),
        }
    }

    #[test]
    fn table_shows_ratios_to_both_baselines_and_marks_missing_columns() {
        let impls = vec![
            imp(KERNEL, None),
            imp(WG_GO_DEB, None),
            imp("isthmus", None),
            imp("wg-go-up", Some("not built")),
        ];
        let mut line = Topology {
            title: "line".into(),
            ..Topology::default()
        };
        for (id, v) in [(KERNEL, 10.0), (WG_GO_DEB, 1.0), ("isthmus", 2.5)] {
            let c = Cell {
                samples: vec![v],
                median: Some(v),
                error: None,
            };
            line.cells
                .entry("tcp1".into())
                .or_default()
                .insert(id.into(), c);
        }
        let r = Results {
            impls,
            line: Some(line),
            relay: None,
            floods: None,
            capacity: None,
            failover: None,
            duration: 1,
            repeat: 1,
            pings: 10,
            loadavg_before: String::new(),
            machine: String::new(),
            wall_seconds: 0.0,
        };
        let md = markdown(Some(&r), &[], &[]);
        let row = md
            .lines()
            .find(|l| l.starts_with("| TCP, 1 stream"))
            .unwrap();
        assert!(row.contains("| 10.0 |"), "{row}");
        assert!(row.contains("| 1.00 (0.100×) |"), "{row}");
        assert!(row.contains("| 2.50 (0.250× / 2.50×) |"), "{row}");
        assert!(row.ends_with("| n/a |"), "{row}");
        assert!(md.contains("- wg-go-up: not built"));
        assert!(
            md.contains("- **isthmus** (`isthmus`): /opt/isthmus\n"),
            "the report names every column's build:\n{md}"
        );
    }

    #[test]
    fn capacity_tables_for_the_mesh_cases_compare_with_isthmus_on_udp() {
        let impls = vec![
            imp(WG_GO_DEB, None),
            imp(ISTHMUS, None),
            imp("isthmus-afxdp", None),
        ];
        let row = |pps: f64, cpu: f64| crate::capacity::Row {
            pps: vec![pps],
            pps_median: Some(pps),
            cpu_us: Some(cpu),
            core_us: Some(cpu * 2.0),
            offered_pps: Some(1e6),
            valid: 10,
            ..crate::capacity::Row::default()
        };
        let mut c = Capacity {
            secs: 2,
            rate: 1_000_000,
            core: 1,
            ..Capacity::default()
        };
        c.ceiling.insert(64, 1e6);
        for (id, pps, cpu) in [
            (WG_GO_DEB, 100e3, 8.0),
            (ISTHMUS, 200e3, 4.0),
            ("isthmus-afxdp", 500e3, 1.0),
        ] {
            c.rows
                .insert(id.into(), BTreeMap::from([(64, row(pps, cpu))]));
            c.to_mesh
                .insert(id.into(), BTreeMap::from([(64, row(pps * 2.0, cpu))]));
        }
        c.from_mesh.insert(
            ISTHMUS.into(),
            BTreeMap::from([(
                64,
                crate::capacity::Row {
                    error: Some("the sink did not come up".into()),
                    ..crate::capacity::Row::default()
                },
            )]),
        );
        let mut md = String::new();
        capacity_table(&mut md, &c, &impls);
        let section = |title: &str| {
            let start = md.find(title).unwrap_or_else(|| panic!("{title}:\n{md}"));
            md[start..].split("\n## ").next().unwrap().to_owned()
        };
        let relay = section("## Relay capacity");
        assert!(
            relay.contains("| isthmus | 64 B | 200000 (0.200× ceiling) [2.00×] |"),
            "the relay compares with wireguard-go:\n{relay}"
        );
        let to = section("## Tunnel → mesh interface capacity");
        assert!(
            to.contains("| isthmus-afxdp | 64 B | 1000000 (1.00× ceiling) [2.50×] | 1000000 | 1.00 [0.250×] | 2.00 [0.250×] | 10/0 |"),
            "{to}"
        );
        assert!(
            to.contains(
                "| isthmus | 64 B | 400000 (0.400× ceiling) | 1000000 | 4.00 | 8.00 | 10/0 |"
            ),
            "the baseline has no ratio:\n{to}"
        );
        assert!(
            to.contains("| wg-go-deb | 64 B | 200000 (0.200× ceiling) [0.500×] |"),
            "{to}"
        );
        let from = section("## Mesh interface → tunnel capacity");
        assert!(
            from.contains("| isthmus | 64 B | failed: the sink did not come up |"),
            "{from}"
        );
        assert!(!from.contains("| wg-go-deb |"), "{from}");
    }

    #[test]
    fn flood_table_shows_ratios_to_wireguard_go_and_the_tcp_share() {
        let impls = vec![imp(WG_GO_DEB, None), imp("isthmus", None)];
        let row = |loss: f64, cpu: f64, tcp: f64| Row {
            msgs_per_s: Some(150_000.0),
            loss_pct: Some(loss),
            tcp_gbps: Some(tcp),
            tcp_ratio: Some(tcp / 2.0),
            handshake_ms: Some(5100.0),
            cpu_us_per_msg: Some(cpu),
            hub_cpu_share: Some(0.5),
            ..Row::default()
        };
        let mut f = Floods {
            peer: "wireguard-go".into(),
            secs: 10,
            rate: 200_000,
            handshake_timeout_s: 20,
            ..Floods::default()
        };
        for (id, loss, cpu) in [(WG_GO_DEB, 4.0, 2.0), ("isthmus", 1.0, 0.5)] {
            let mut rows = BTreeMap::new();
            rows.insert(
                BASELINE.to_owned(),
                Row {
                    tcp_gbps: Some(2.0),
                    handshake_ms: Some(1.5),
                    loss_pct: Some(0.0),
                    ..Row::default()
                },
            );
            rows.insert("flood".to_owned(), row(loss, cpu, 1.0));
            rows.insert(
                "flood-cookies".to_owned(),
                Row {
                    handshake_ms: None,
                    handshake_timed_out: true,
                    ..row(loss, cpu, 1.5)
                },
            );
            f.rows.insert(id.to_owned(), rows);
        }
        let mut out = String::new();
        floods_table(&mut out, &f, &impls);
        let line = |hub: &str, attack: &str| {
            out.lines()
                .find(|l| l.starts_with(&format!("| {hub} | {attack} |")))
                .unwrap_or_else(|| panic!("no row {hub}/{attack} in\n{out}"))
                .to_owned()
        };
        let r = line("isthmus", "initiation flood (valid mac1)");
        assert_eq!(
            r,
            "| isthmus | initiation flood (valid mac1) | 150 k | 1.00 (0.250×) | 1.00 (0.500×) | 5.10 s | 0.500 µs (0.250×) | 50 % |"
        );
        let r = line(WG_GO_DEB, "no flood");
        assert!(r.contains("| 1.50 ms | – |"), "{r}");
        let r = line(WG_GO_DEB, "initiation flood, cookie-answering source");
        assert!(r.contains("| none in 20 s |"), "{r}");
        assert!(
            out.contains("- isthmus ÷ wireguard-go (Debian), initiation flood (valid mac1): hub CPU per message 0.250×; ping loss 1.00 % vs 4.00 % (0.250×); TCP kept 50.0 % vs 50.0 %"),
            "{out}"
        );
        f.skipped = Some("no lab-tool".into());
        let mut out = String::new();
        floods_table(&mut out, &f, &impls);
        assert!(out.contains("Not measured: no lab-tool"), "{out}");
    }

    #[test]
    fn control_plane_table_has_units_and_the_rss_target() {
        let crit = vec![
            CriterionResult {
                id: "babel/updates_new_10k".into(),
                median_ns: 100e6,
                elements: Some(10_000),
                bytes: None,
            },
            CriterionResult {
                id: "fib_push/snapshot_100k_into_empty".into(),
                median_ns: 25e6,
                elements: None,
                bytes: None,
            },
        ];
        let extras = vec![
            Extra::new("babel/converge_grid_10x10_simulated", 3.9, "s", ""),
            Extra::new(
                "babel/rss_with_100k_prefixes",
                150.0 * 1048576.0,
                "bytes",
                "",
            ),
        ];
        let md = markdown(None, &crit, &extras);
        assert!(md.contains("| 3.90 s simulated |"), "{md}");
        assert!(md.contains("| 100 k updates/s |"), "{md}");
        assert!(
            md.contains("full push of 100k routes (into an empty FIB) | 25.0 ms |"),
            "{md}"
        );
        assert!(
            md.contains("| 150 MiB | target for the whole isthmus-cp: < 200 MiB (met) |"),
            "{md}"
        );
        let dir = std::env::temp_dir().join(format!("isthmus-extras-{}", std::process::id()));
        write_extras(&dir, "t", &extras).unwrap();
        let back = read_extras(&dir, SystemTime::UNIX_EPOCH);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].id, "babel/converge_grid_10x10_simulated");
    }
}
