//! The operator's kit, tested: the Prometheus alerting rules (`promtool check rules` and
//! `promtool test rules`), and the Grafana dashboard, whose every panel's PromQL is evaluated
//! by Debian's real Prometheus scraping a lab gateway (isthmus-dp and isthmus-cp of the
//! islands topology, with the liveness probe, after a trunk failover under traffic): each
//! expression must be valid and return data.

mod common;

use std::time::{Duration, Instant};

use common::init;
use isthmus_lab::babel_islands::{BabelIslands, IslandsSpec};
use isthmus_lab::{lab_tool_path, workspace_root, Netns};

/// `promtool ARGS` in `dir`, which must succeed (its output is in the error otherwise).
fn promtool(dir: &std::path::Path, args: &[&str]) {
    let mut cmd = std::process::Command::new("promtool");
    cmd.args(args).current_dir(dir);
    if let Err(e) = isthmus_lab::run(&mut cmd) {
        panic!("{e:#} (scripts/install-deps.sh installs Debian's prometheus)");
    }
}

#[test]
fn alerting_rules_check_and_pass_their_unit_tests() {
    init();
    let dir = workspace_root().join("contrib/prometheus");
    promtool(&dir, &["check", "rules", "isthmus.rules.yml"]);
    promtool(&dir, &["test", "rules", "isthmus.rules.test.yml"]);
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` from Prometheus on 127.0.0.1:9090 in `ns`, as JSON.
fn prom_get(ns: &Netns, path: &str) -> anyhow::Result<serde_json::Value> {
    let tool = lab_tool_path()?;
    let body = ns.exec_timeout(
        &[&tool.to_string_lossy(), "http-get", "127.0.0.1:9090", path],
        10,
    )?;
    Ok(serde_json::from_str(&body)?)
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    init();
    // Trunk a is the cheaper: it carries the traffic, and it is the one cut.
    let isl = BabelIslands::build_spec(&IslandsSpec {
        trunks: 2,
        hello: 1,
        liveness: Some((0.1, 3)),
        trunk_costs: vec![96, 160],
        ..IslandsSpec::default()
    })
    .unwrap();
    let _routers = isl.routers().unwrap();
    let g = isl.gateway_of(1, 0).node.clone();
    let ns = isl.t.ns(&g);
    let dir = isl.t.lab.dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = workspace_root().join("contrib/prometheus/isthmus.rules.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: isthmus-dp\n    static_configs:\n      - targets: ['127.0.0.1:9586']\n\
             \x20 - job_name: isthmus-cp\n    static_configs:\n      - targets: ['127.0.0.1:9587']\n",
            rules.display()
        ),
    )
    .unwrap();
    let pid = ns
        .spawn(
            &[
                "prometheus",
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                "--web.listen-address=127.0.0.1:9090",
            ],
            &dir.join("prometheus.log"),
        )
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Ready, and both daemons scraped (their counters' zeros recorded before the failover).
    let scraped = || {
        prom_get(ns, "/api/v1/query?query=up%20%3D%3D%201")
            .ok()
            .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
            == Some(2)
    };
    while !scraped() {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Babel settles on the cheaper trunk a before it is cut.
    let deadline = Instant::now() + Duration::from_secs(30);
    while isl.trunk_in_use() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "trunk a not in use:\n{}",
            isl.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Traffic and a failover (trunk a cut and restored under a ping), then time for the
    // scrapes and the rate windows.
    let (cut, after, probe) = isl.failover(Duration::from_secs(20)).unwrap();
    eprintln!(
        "failover: trunk {cut} cut, then {after:?} in use; longest gap {:?}",
        probe.longest_gap
    );
    assert_eq!(cut, 0, "trunk a carried the traffic");
    let h1 = isl.t.ns("h1");
    h1.wait_ping("10.2.1.2", Duration::from_secs(20)).unwrap();
    let ping = isthmus_lab::PingProbe::start_from(h1, Some("10.1.1.2"), "10.2.1.2", 20).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    ping.finish().unwrap();

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("contrib/grafana/isthmus.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 15, "{} panels", panels.len());
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let q = expr
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*");
            let answer = prom_get(ns, &format!("/api/v1/query?query={}", urlencode(&q)));
            let series = match &answer {
                Ok(v) if v["status"] == "success" => v["data"]["result"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .map(|s| {
                                let labels = s["metric"]
                                    .as_object()
                                    .map(|m| {
                                        m.iter()
                                            .filter(|(k, _)| k.as_str() != "instance")
                                            .map(|(k, v)| {
                                                format!("{k}={}", v.as_str().unwrap_or(""))
                                            })
                                            .collect::<Vec<_>>()
                                            .join(",")
                                    })
                                    .unwrap_or_default();
                                format!("{{{labels}}} {}", s["value"][1].as_str().unwrap_or("?"))
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            if series.is_empty() {
                failures.push(format!("{title}: {expr}\n  -> {answer:?}"));
            }
            // What the failover must show: a probe-driven failover, FIB pushes timed.
            let first = series.first().map(String::as_str).unwrap_or_default();
            let value: f64 = first
                .rsplit(' ')
                .next()
                .unwrap_or("NaN")
                .parse()
                .unwrap_or(f64::NAN);
            let expect_value = title.starts_with("Failovers")
                || title.starts_with("FIB push")
                || title.starts_with("Handshake latency");
            if expect_value && value.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                failures.push(format!("{title}: {expr} = {first}, expected > 0"));
            }
            report.push(format!(
                "{title} [{}]: {} series: {}",
                t["refId"].as_str().unwrap_or("?"),
                series.len(),
                series.join("; ")
            ));
        }
    }
    eprintln!(
        "dashboard panels against Prometheus:\n{}",
        report.join("\n")
    );
    // The same gateway on one screen, and as JSON, from isthmusctl.
    let gw = isl.gateway_of(1, 0);
    let dp_if = isl.t.wg(&g).ifname.clone();
    let ctl = isthmus_lab::IsthmusCp::ctl_binary().unwrap();
    let ctl = ctl.to_string_lossy();
    let cp_sock = gw.cp.status_path().to_string_lossy().into_owned();
    // Five datagrams that are no WireGuard message, for the minute's drops.
    let tool = lab_tool_path().unwrap();
    ns.exec_timeout(
        &[
            &tool.to_string_lossy(),
            "udp-send",
            "10.100.0.1:51820",
            "ff00",
            "--repeat",
            "5",
        ],
        10,
    )
    .unwrap();
    let screen = ns
        .exec_timeout(&[&ctl, "show", &dp_if, "--cp-socket", &cp_sock], 10)
        .unwrap();
    eprintln!("isthmusctl show:\n{screen}");
    for want in [
        "gw-2a",
        "trunk",
        "HANDSHAKE",
        "babel: router-id",
        "NEIGHBOUR",
        "LIVENESS",
        "drops in the last minute: ",
    ] {
        assert!(screen.contains(want), "{want}: {screen}");
    }
    let page: serde_json::Value = serde_json::from_str(
        &ns.exec_timeout(
            &[&ctl, "show", &dp_if, "--cp-socket", &cp_sock, "--json"],
            10,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(page["peers"][0]["name"], "gw-2a", "{page}");
    assert!(
        page["peers"][0]["rx_bytes_per_second"].as_f64().is_some(),
        "{page}"
    );
    assert_eq!(
        page["neighbours"].as_array().map(Vec::len),
        Some(2),
        "{page}"
    );
    assert_eq!(page["babel"]["synced"], true, "{page}");
    // The trunk's liveness probe saw it back up after the failover.
    assert_eq!(page["peers"][0]["liveness"], "up", "{page}");
    let minute: u64 = (page["drops_last_minute"].as_object().unwrap().values())
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert!(
        minute >= 5,
        "the five bad datagrams in the minute's drops: {page}"
    );
    let peers: serde_json::Value = serde_json::from_str(
        &ns.exec_timeout(&[&ctl, "show", "peers", &dp_if, "--json"], 10)
            .unwrap(),
    )
    .unwrap();
    assert!(
        peers[0]["latest_handshake"].as_u64().unwrap_or(0) > 0,
        "{peers}"
    );
    let routes: serde_json::Value = serde_json::from_str(
        &ns.exec_timeout(
            &[&ctl, "show", "routes", "--socket", &cp_sock, "--json"],
            10,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        (routes.as_array().unwrap().iter())
            .any(|r| r["selected"] == true && r["originated"] == false),
        "{routes}"
    );

    // The rules loaded and evaluate.
    let rules = prom_get(ns, "/api/v1/rules").unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    let loaded: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 5, "{rules}");
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
    ns.stop(pid, Duration::from_secs(5));
    assert!(
        failures.is_empty(),
        "panels without data:\n{}\n\n{}",
        failures.join("\n"),
        isl.diagnostics()
    );
}
