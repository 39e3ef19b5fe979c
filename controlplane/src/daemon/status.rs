//! What `isthmusctl show neighbours|routes|babel` prints and what Prometheus scrapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::babel::packet::{tlv, INFINITY};
use crate::babel::{LinkId, Refused, Router, Table};

use super::IoStats;

/// A link as shown.
pub struct LinkView {
    /// Peer or interface name.
    pub name: String,
    /// `wired`, `mesh`, `trunk`.
    pub class: &'static str,
    /// `peer` or `interface`.
    pub kind: &'static str,
}

/// Everything a page needs.
pub struct View<'a> {
    /// The router.
    pub router: &'a Router,
    /// Links by id.
    pub links: BTreeMap<LinkId, LinkView>,
    /// The daemon's I/O counters.
    pub io: &'a IoStats,
    /// Since start.
    pub uptime: Duration,
    /// The data plane's interface.
    pub ifname: &'a str,
    /// Now.
    pub now: Instant,
}

impl View<'_> {
    fn link(&self, id: LinkId) -> &str {
        self.links.get(&id).map_or("?", |l| l.name.as_str())
    }
}

fn rid(b: &[u8; 8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn metric(m: u16) -> String {
    if m == INFINITY {
        "inf".into()
    } else {
        m.to_string()
    }
}

/// `isthmusctl show neighbours`.
pub fn neighbours(v: &View) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<26} {:>6} {:>6} {:>6} {:>6} {:>9} {:>5}",
        "LINK", "ADDRESS", "REACH", "RXCOST", "TXCOST", "COST", "RTT", "PEN"
    );
    for n in v.router.neighbours(v.now) {
        let rtt = n
            .rtt
            .map_or("-".into(), |r| format!("{:.1}ms", r.as_secs_f64() * 1000.0));
        let _ = writeln!(
            s,
            "{:<16} {:<26} {:>6} {:>6} {:>6} {:>6} {:>9} {:>5}",
            v.link(n.link),
            n.address.to_string(),
            format!("{:04x}", n.reach),
            metric(n.rxcost),
            metric(n.txcost),
            metric(n.cost),
            rtt,
            n.rtt_penalty
        );
    }
    s
}

/// `isthmusctl show routes`.
pub fn routes(v: &View) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<3} {:<24} {:>6} {:>6} {:<16} {:<26} {:<23} {:>5} FEASIBLE",
        "", "PREFIX", "METRIC", "REF", "LINK", "NEXT HOP", "ROUTER-ID", "SEQNO"
    );
    for (p, m) in v.router.xroutes() {
        let _ = writeln!(
            s,
            "{:<3} {:<24} {:>6} {:>6} {:<16} {:<26} {:<23} {:>5} yes",
            "L",
            p.to_string(),
            m,
            "-",
            "local",
            "-",
            rid(&v.router.router_id()),
            v.router.seqno()
        );
    }
    for r in v.router.routes(v.now) {
        let _ = writeln!(
            s,
            "{:<3} {:<24} {:>6} {:>6} {:<16} {:<26} {:<23} {:>5} {}",
            if r.selected { "*" } else { "" },
            r.prefix.to_string(),
            metric(r.metric),
            metric(r.refmetric),
            v.link(r.link),
            r.next_hop.to_string(),
            rid(&r.router_id),
            r.seqno,
            if r.feasible { "yes" } else { "no" }
        );
    }
    s.push_str("* selected, L originated here\n");
    s
}

/// How many neighbours each link has.
fn neighbours_per_link(v: &View) -> BTreeMap<LinkId, usize> {
    let mut per_link = BTreeMap::new();
    for n in v.router.neighbours(v.now) {
        *per_link.entry(n.link).or_default() += 1;
    }
    per_link
}

/// `isthmusctl show neighbours --json`.
pub fn neighbours_json(v: &View) -> String {
    let list: Vec<serde_json::Value> = (v.router.neighbours(v.now).iter())
        .map(|n| {
            serde_json::json!({
                "link": v.link(n.link),
                "address": n.address.to_string(),
                "reach": n.reach,
                "unicast_reach": n.unicast_reach,
                "rxcost": n.rxcost,
                "txcost": n.txcost,
                "cost": n.cost,
                "rtt_seconds": n.rtt.map(|r| r.as_secs_f64()),
                "rtt_penalty": n.rtt_penalty,
            })
        })
        .collect();
    format!("{}\n", serde_json::Value::Array(list))
}

/// `isthmusctl show routes --json`: originated prefixes (`"link": "local"`) and learned
/// routes.
pub fn routes_json(v: &View) -> String {
    let rid_ = rid(&v.router.router_id());
    let mut list: Vec<serde_json::Value> = (v.router.xroutes())
        .map(|(p, m)| {
            serde_json::json!({
                "prefix": p.to_string(), "metric": m, "link": "local",
                "router_id": rid_, "seqno": v.router.seqno(), "originated": true,
                "selected": true, "feasible": true,
            })
        })
        .collect();
    list.extend(v.router.routes(v.now).iter().map(|r| {
        serde_json::json!({
            "prefix": r.prefix.to_string(),
            "metric": r.metric,
            "refmetric": r.refmetric,
            "link": v.link(r.link),
            "neighbour": r.neighbour.to_string(),
            "next_hop": r.next_hop.to_string(),
            "router_id": rid(&r.router_id),
            "seqno": r.seqno,
            "originated": false,
            "selected": r.selected,
            "feasible": r.feasible,
        })
    }));
    format!("{}\n", serde_json::Value::Array(list))
}

/// `isthmusctl show babel --json`.
pub fn babel_json(v: &View) -> String {
    let c = v.router.counters();
    let (prefixes, sources) = v.router.table_sizes();
    let per_link = neighbours_per_link(v);
    let links: Vec<serde_json::Value> = (v.links.iter())
        .map(|(id, l)| {
            let n = per_link.get(id).copied().unwrap_or(0);
            serde_json::json!({"name": l.name, "kind": l.kind, "class": l.class, "neighbours": n})
        })
        .collect();
    let refused: serde_json::Map<String, serde_json::Value> = (Refused::ALL.iter())
        .map(|w| (w.as_str().to_string(), c.auth.refused(*w).into()))
        .collect();
    let limits: serde_json::Map<String, serde_json::Value> = (v.router.table_usage().iter())
        .map(|&(t, n, max)| {
            let refused = c.limit_reached(t);
            let entry = serde_json::json!({"entries": n, "limit": max, "refused": refused});
            (t.as_str().to_string(), entry)
        })
        .collect();
    let page = serde_json::json!({
        "router_id": rid(&v.router.router_id()),
        "seqno": v.router.seqno(),
        "uptime_seconds": v.uptime.as_secs_f64(),
        "interface": v.ifname,
        "dataplane_connected": v.io.ctl_connected,
        "synced": v.io.synced,
        "routes": {
            "selected": v.router.selected().count(),
            "prefixes": prefixes,
            "originated": v.router.xroutes().count(),
            "sources": sources,
        },
        "fib_routes": v.io.fib_routes,
        "kernel_routes": v.io.kernel_routes,
        "kernel_errors": v.io.kernel_errors,
        "packets": {"rx": c.packets_rx, "tx": c.packets_tx, "refused": c.packets_bad},
        "auth_refused": refused,
        "limits": limits,
        "input_dropped": v.io.input_dropped,
        "links": links,
    });
    format!("{page}\n")
}

/// `isthmusctl show babel`.
pub fn babel(v: &View) -> String {
    let c = v.router.counters();
    let (prefixes, sources) = v.router.table_sizes();
    let selected = v.router.selected().count();
    let mut s = String::new();
    let _ = writeln!(s, "router-id   {}", rid(&v.router.router_id()));
    let _ = writeln!(s, "seqno       {}", v.router.seqno());
    let _ = writeln!(s, "uptime      {:.0?}", v.uptime);
    let _ = writeln!(
        s,
        "data plane  {} ({}), {}",
        v.ifname,
        if v.io.ctl_connected {
            "connected"
        } else {
            "not connected"
        },
        if v.io.synced {
            "synchronised"
        } else {
            "start-up hold: not pushing yet"
        }
    );
    let _ = writeln!(
        s,
        "routes      {selected} selected of {prefixes} prefixes, {} originated, {sources} sources, {} pending requests",
        v.router.xroutes().count(),
        v.router.pending_requests()
    );
    let _ = writeln!(
        s,
        "fib         {} routes pushed, {} snapshots, {} updates, last push {}",
        v.io.fib_routes,
        v.io.fib_snapshots,
        v.io.fib_updates,
        v.io.fib_push_last
            .map_or("-".into(), |d| format!("{:.2}ms", d.as_secs_f64() * 1000.0))
    );
    let _ = writeln!(
        s,
        "kernel      {} routes (proto 77), {} errors",
        v.io.kernel_routes, v.io.kernel_errors
    );
    let _ = writeln!(
        s,
        "packets     {} in, {} out, {} refused",
        c.packets_rx, c.packets_tx, c.packets_bad
    );
    let a = &c.auth;
    if v.router.links().any(|(_, l)| !l.keys.is_empty()) {
        let refused: Vec<String> = (Refused::ALL.iter())
            .map(|w| format!("{} {}", a.refused(*w), w.as_str()))
            .collect();
        let _ = writeln!(
            s,
            "auth        {} challenges answered; refused: {}",
            a.challenges_ok,
            refused.join(", ")
        );
    }
    let usage: Vec<String> = (v.router.table_usage().iter())
        .map(|&(t, n, max)| {
            let refused = c.limit_reached(t);
            if refused > 0 {
                format!("{} {n}/{max} ({refused} refused)", t.as_str())
            } else {
                format!("{} {n}/{max}", t.as_str())
            }
        })
        .collect();
    let _ = writeln!(s, "limits      {}", usage.join(", "));
    if v.io.input_dropped > 0 {
        let _ = writeln!(
            s,
            "            {} received packets dropped (input queue full)",
            v.io.input_dropped
        );
    }
    let _ = writeln!(s, "links");
    let per_link = neighbours_per_link(v);
    for (id, l) in &v.links {
        let n = per_link.get(id).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "  {:<16} {:<9} {:<6} {} neighbour(s)",
            l.name, l.kind, l.class, n
        );
    }
    s
}

/// The TLV types we count, by their number.
const TLV_NAMES: [(u8, &str); 15] = [
    (tlv::PAD1, "pad1"),
    (tlv::PADN, "padn"),
    (tlv::ACK_REQ, "ack_request"),
    (tlv::ACK, "ack"),
    (tlv::HELLO, "hello"),
    (tlv::IHU, "ihu"),
    (tlv::ROUTER_ID, "router_id"),
    (tlv::NEXT_HOP, "next_hop"),
    (tlv::UPDATE, "update"),
    (tlv::ROUTE_REQUEST, "route_request"),
    (tlv::SEQNO_REQUEST, "seqno_request"),
    (tlv::MAC, "mac"),
    (tlv::PC, "pc"),
    (tlv::CHALLENGE_REQUEST, "challenge_request"),
    (tlv::CHALLENGE_REPLY, "challenge_reply"),
];

/// Prometheus text exposition.
pub fn metrics(v: &View) -> String {
    let c = v.router.counters();
    let ifname = isthmus_dataplane::io::metrics::escape_label(v.ifname);
    let mut s = isthmus_dataplane::io::metrics::build_info(
        "isthmus-cp",
        &format!("interface=\"{ifname}\""),
    );
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        "isthmus_babel_neighbour_rxcost",
        "gauge",
        "Cost of receiving from the neighbour (65535: unreachable).",
    );
    family(
        "isthmus_babel_neighbour_txcost",
        "gauge",
        "Cost the neighbour reports for hearing us.",
    );
    family(
        "isthmus_babel_neighbour_cost",
        "gauge",
        "Link cost used by routes, RTT penalty included.",
    );
    family(
        "isthmus_babel_neighbour_rtt_seconds",
        "gauge",
        "Smoothed RTT (RFC 9616 timestamps).",
    );
    family(
        "isthmus_babel_neighbour_reachability",
        "gauge",
        "Fraction of the last 16 hellos received.",
    );
    let mut out = s;
    for n in v.router.neighbours(v.now) {
        let l = format!(
            "link=\"{}\",address=\"{}\"",
            isthmus_dataplane::io::metrics::escape_label(v.link(n.link)),
            n.address
        );
        let _ = writeln!(out, "isthmus_babel_neighbour_rxcost{{{l}}} {}", n.rxcost);
        let _ = writeln!(out, "isthmus_babel_neighbour_txcost{{{l}}} {}", n.txcost);
        let _ = writeln!(out, "isthmus_babel_neighbour_cost{{{l}}} {}", n.cost);
        if let Some(r) = n.rtt {
            let _ = writeln!(
                out,
                "isthmus_babel_neighbour_rtt_seconds{{{l}}} {}",
                r.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "isthmus_babel_neighbour_reachability{{{l}}} {}",
            f64::from(n.reach.count_ones().max(n.unicast_reach.count_ones())) / 16.0
        );
    }
    let mut states: BTreeMap<&str, u64> = BTreeMap::from([
        ("selected", 0),
        ("feasible", 0),
        ("unfeasible", 0),
        ("retracted", 0),
    ]);
    for r in v.router.routes(v.now) {
        let st = if r.selected {
            "selected"
        } else if r.refmetric == INFINITY || r.metric == INFINITY {
            "retracted"
        } else if r.feasible {
            "feasible"
        } else {
            "unfeasible"
        };
        *states.entry(st).or_default() += 1;
    }
    let _ = writeln!(out, "# HELP isthmus_babel_routes Routes in the table by state.\n# TYPE isthmus_babel_routes gauge");
    for (st, n) in &states {
        let _ = writeln!(out, "isthmus_babel_routes{{state=\"{st}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP isthmus_babel_originated_routes Prefixes originated here.\n# TYPE isthmus_babel_originated_routes gauge");
    let _ = writeln!(
        out,
        "isthmus_babel_originated_routes {}",
        v.router.xroutes().count()
    );
    let _ = writeln!(out, "# HELP isthmus_babel_packets_total Babel packets.\n# TYPE isthmus_babel_packets_total counter");
    let _ = writeln!(
        out,
        "isthmus_babel_packets_total{{direction=\"rx\"}} {}",
        c.packets_rx
    );
    let _ = writeln!(
        out,
        "isthmus_babel_packets_total{{direction=\"tx\"}} {}",
        c.packets_tx
    );
    let _ = writeln!(
        out,
        "isthmus_babel_packets_total{{direction=\"refused\"}} {}",
        c.packets_bad
    );
    let _ = writeln!(out, "# HELP isthmus_babel_tlvs_total TLVs by type and direction (updates, requests, ...).\n# TYPE isthmus_babel_tlvs_total counter");
    for (i, name) in TLV_NAMES.map(|(t, n)| (usize::from(t), n)) {
        let _ = writeln!(
            out,
            "isthmus_babel_tlvs_total{{type=\"{name}\",direction=\"rx\"}} {}",
            c.tlv_rx[i]
        );
        let _ = writeln!(
            out,
            "isthmus_babel_tlvs_total{{type=\"{name}\",direction=\"tx\"}} {}",
            c.tlv_tx[i]
        );
    }
    let _ = writeln!(out, "# HELP isthmus_babel_tlv_dropped_total TLVs skipped, by reason.\n# TYPE isthmus_babel_tlv_dropped_total counter");
    for (reason, n) in [
        ("unknown_type", c.tlv_unknown),
        ("mandatory_sub_tlv", c.tlv_mandatory),
        ("malformed", c.tlv_malformed),
        ("unfeasible", c.updates_unfeasible),
        ("filtered", c.updates_filtered),
    ] {
        let _ = writeln!(
            out,
            "isthmus_babel_tlv_dropped_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let a = &c.auth;
    let _ = writeln!(out, "# HELP isthmus_babel_auth_refused_total Packets refused by MAC authentication (RFC 8967), by reason.\n# TYPE isthmus_babel_auth_refused_total counter");
    for why in Refused::ALL {
        let _ = writeln!(
            out,
            "isthmus_babel_auth_refused_total{{reason=\"{}\"}} {}",
            why.as_str(),
            a.refused(why)
        );
    }
    let _ = writeln!(out, "# HELP isthmus_babel_auth_challenges_total Challenges (RFC 8967): requests and replies sent, requests answered right or not.\n# TYPE isthmus_babel_auth_challenges_total counter");
    for (what, n) in [
        ("request_sent", a.challenges_tx),
        ("reply_sent", a.replies_tx),
        ("answered", a.challenges_ok),
        ("bad_reply", a.challenges_bad),
    ] {
        let _ = writeln!(
            out,
            "isthmus_babel_auth_challenges_total{{event=\"{what}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP isthmus_babel_requests_total Seqno requests forwarded or suppressed.\n# TYPE isthmus_babel_requests_total counter");
    let _ = writeln!(
        out,
        "isthmus_babel_requests_total{{action=\"forwarded\"}} {}",
        c.requests_forwarded
    );
    let _ = writeln!(
        out,
        "isthmus_babel_requests_total{{action=\"duplicate\"}} {}",
        c.requests_duplicate
    );
    let _ = writeln!(out, "# HELP isthmus_babel_resends_total Urgent updates resent.\n# TYPE isthmus_babel_resends_total counter");
    let _ = writeln!(out, "isthmus_babel_resends_total {}", c.resends);
    let _ = writeln!(out, "# HELP isthmus_babel_route_changes_total Selected-route changes.\n# TYPE isthmus_babel_route_changes_total counter");
    let _ = writeln!(out, "isthmus_babel_route_changes_total {}", c.route_changes);
    let _ = writeln!(out, "# HELP isthmus_babel_neighbour_events_total Neighbours that appeared or went away.\n# TYPE isthmus_babel_neighbour_events_total counter");
    for (event, n) in [("up", v.io.neighbours_up), ("down", v.io.neighbours_down)] {
        let _ = writeln!(
            out,
            "isthmus_babel_neighbour_events_total{{event=\"{event}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP isthmus_babel_liveness_events_total The data plane's liveness probe: peer links reported down (a failover) or up.\n# TYPE isthmus_babel_liveness_events_total counter");
    for (event, n) in [("down", v.io.probe_down), ("up", v.io.probe_up)] {
        let _ = writeln!(
            out,
            "isthmus_babel_liveness_events_total{{event=\"{event}\"}} {n}"
        );
    }
    out.push_str(&v.io.fib_push.render(
        "isthmus_babel_fib_push_seconds",
        "Time from a FIB push to the data plane's acknowledgment.",
    ));
    let _ = writeln!(out, "# HELP isthmus_babel_fib_pushes_total FIB messages sent to the data plane.\n# TYPE isthmus_babel_fib_pushes_total counter");
    let _ = writeln!(
        out,
        "isthmus_babel_fib_pushes_total{{kind=\"snapshot\"}} {}",
        v.io.fib_snapshots
    );
    let _ = writeln!(
        out,
        "isthmus_babel_fib_pushes_total{{kind=\"update\"}} {}",
        v.io.fib_updates
    );
    let _ = writeln!(out, "# HELP isthmus_babel_fib_routes Routes in the data plane's control table.\n# TYPE isthmus_babel_fib_routes gauge");
    let _ = writeln!(out, "isthmus_babel_fib_routes {}", v.io.fib_routes);
    let _ = writeln!(out, "# HELP isthmus_babel_kernel_routes Kernel routes installed with protocol 77.\n# TYPE isthmus_babel_kernel_routes gauge");
    let _ = writeln!(out, "isthmus_babel_kernel_routes {}", v.io.kernel_routes);
    let _ = writeln!(out, "# HELP isthmus_babel_kernel_errors_total Failed kernel route operations.\n# TYPE isthmus_babel_kernel_errors_total counter");
    let _ = writeln!(
        out,
        "isthmus_babel_kernel_errors_total {}",
        v.io.kernel_errors
    );
    let _ = writeln!(out, "# HELP isthmus_babel_punt_errors_total Punted packets that were not Babel, by reason.\n# TYPE isthmus_babel_punt_errors_total counter");
    for (reason, n) in &v.io.punt_errors {
        let _ = writeln!(
            out,
            "isthmus_babel_punt_errors_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP isthmus_babel_dataplane_connected Control channel to the data plane is up.\n# TYPE isthmus_babel_dataplane_connected gauge");
    let _ = writeln!(
        out,
        "isthmus_babel_dataplane_connected {}",
        u8::from(v.io.ctl_connected)
    );
    let _ = writeln!(out, "# HELP isthmus_babel_synced Start-up hold over, tables pushed.\n# TYPE isthmus_babel_synced gauge");
    let _ = writeln!(out, "isthmus_babel_synced {}", u8::from(v.io.synced));
    limit_metrics(v, &mut out);
    out
}

/// The bounded tables: new entries refused at a bound, entries held, bounds.
fn limit_metrics(v: &View, out: &mut String) {
    let c = v.router.counters();
    let usage = v.router.table_usage();
    let _ = writeln!(out, "# HELP isthmus_babel_limit_reached_total New entries refused because their table was full (the [babel] max_* keys), received packets dropped because the router's input queue was full, status clients closed for a new one.\n# TYPE isthmus_babel_limit_reached_total counter");
    for t in Table::ALL {
        let _ = writeln!(
            out,
            "isthmus_babel_limit_reached_total{{table=\"{}\"}} {}",
            t.as_str(),
            c.limit_reached(t)
        );
    }
    let _ = writeln!(
        out,
        "isthmus_babel_limit_reached_total{{table=\"input_queue\"}} {}",
        v.io.input_dropped
    );
    let _ = writeln!(
        out,
        "isthmus_babel_limit_reached_total{{table=\"status_clients\"}} {}",
        v.io.status_evicted
    );
    let _ = writeln!(out, "# HELP isthmus_babel_table_entries Entries in each bounded table (neighbours_per_link: the link with the most).\n# TYPE isthmus_babel_table_entries gauge");
    for (t, n, _) in usage {
        let _ = writeln!(
            out,
            "isthmus_babel_table_entries{{table=\"{}\"}} {n}",
            t.as_str()
        );
    }
    let _ = writeln!(out, "# HELP isthmus_babel_table_limit The bound of each table.\n# TYPE isthmus_babel_table_limit gauge");
    for (t, _, max) in usage {
        let _ = writeln!(
            out,
            "isthmus_babel_table_limit{{table=\"{}\"}} {max}",
            t.as_str()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::babel::{Config, Limits};

    #[test]
    fn metrics_show_each_bounded_table_its_bound_and_its_refusals() {
        let now = Instant::now();
        let mut cfg = Config::new([2, 0, 0, 0, 0, 0, 0, 1]);
        cfg.limits = Limits {
            routes: 123,
            ..Limits::default()
        };
        let router = Router::new(cfg, now);
        let io = IoStats {
            input_dropped: 4,
            status_evicted: 2,
            ..IoStats::default()
        };
        let v = View {
            router: &router,
            links: BTreeMap::new(),
            io: &io,
            uptime: Duration::from_secs(1),
            ifname: "isthmus0",
            now,
        };
        let m = metrics(&v);
        for t in Table::ALL {
            let name = t.as_str();
            assert!(
                m.contains(&format!(
                    "isthmus_babel_limit_reached_total{{table=\"{name}\"}} 0\n"
                )),
                "{name}"
            );
            assert!(m.contains(&format!(
                "isthmus_babel_table_entries{{table=\"{name}\"}} 0\n"
            )));
        }
        assert!(m.contains("isthmus_babel_limit_reached_total{table=\"input_queue\"} 4\n"));
        assert!(m.contains("isthmus_babel_limit_reached_total{table=\"status_clients\"} 2\n"));
        assert!(m.contains("isthmus_babel_table_limit{table=\"routes\"} 123\n"));
        assert!(m.contains("isthmus_babel_table_limit{table=\"neighbours\"} 16384\n"));
        assert!(babel(&v).contains("routes 0/123"));
        let json: serde_json::Value = serde_json::from_str(&babel_json(&v)).unwrap();
        assert_eq!(json["limits"]["routes"]["limit"], 123);
        assert_eq!(json["input_dropped"], 4);
    }
}
