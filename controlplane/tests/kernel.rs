//! The rtnetlink seam against the real kernel. Needs root: every test makes its own network
//! namespace (`isthmus-kt-<pid>-<n>`), runs the `Kernel` code on a thread that has entered it
//! with `setns`, checks the result with `ip -n NAME -j route`, and deletes the namespace on the
//! way out, panics included. Nothing touches the root namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ipnet::IpNet;
use isthmus_controlplane::kernel::{
    errno, Kernel, KernelChange, KernelRoute, RTPROT_ISTHMUS, RT_TABLE_MAIN,
};
use isthmus_dataplane::io::ifaddr::{self, ifindex};
use serde_json::Value;

/// A network namespace with a veth pair `va`/`vb` (both ends inside, up); `va` holds
/// 10.0.0.1/24 and 2001:db8::1/64. Deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to create network namespaces");
            return None;
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "isthmus-kt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "va"]);
        ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "va", "nodad"]);
        ns.ip(&["link", "set", "va", "up"]);
        ns.ip(&["link", "set", "vb", "up"]);
        Some(ns)
    }

    /// `ip -n NAME args...`, which must succeed; returns stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Our routes as `ip` sees them: `ip -n NAME [-6] -j route show proto 77` (main table),
    /// normalised to text like `10.1.0.0/24 via 10.0.0.2 dev va metric 5 onlink`.
    fn routes(&self, v6: bool) -> BTreeSet<String> {
        self.routes_matching(v6, &["proto", "77"])
    }

    fn routes_matching(&self, v6: bool, filter: &[&str]) -> BTreeSet<String> {
        let mut args = vec![if v6 { "-6" } else { "-4" }, "-j", "route", "show"];
        args.extend_from_slice(filter);
        let out = self.ip(&args);
        let json: Value = serde_json::from_str(&out).expect("ip -j output is JSON");
        json.as_array()
            .expect("a JSON array of routes")
            .iter()
            .map(describe)
            .collect()
    }

    /// Runs `f` on a thread inside the namespace and returns its result (re-raising a panic).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                let file = File::open(&path).expect("open the namespace file");
                // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One route of `ip -j route` output as text.
fn describe(r: &Value) -> String {
    let mut s = r["dst"].as_str().expect("dst").to_string();
    if s == "default" {
        s = "0.0.0.0/0".into();
    }
    if !s.contains('/') {
        s += if s.contains(':') { "/128" } else { "/32" };
    }
    if let Some(gw) = r["gateway"].as_str() {
        s += &format!(" via {gw}");
    }
    if let Some(via) = r["via"]["host"].as_str() {
        s += &format!(" via {via}");
    }
    if let Some(dev) = r["dev"].as_str() {
        s += &format!(" dev {dev}");
    }
    s += &format!(" metric {}", r["metric"].as_u64().unwrap_or(0));
    if let Some(flags) = r["flags"].as_array() {
        for f in flags {
            s += &format!(" {}", f.as_str().unwrap_or("?"));
        }
    }
    s
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

fn route(prefix: &str, gateway: Option<&str>, ifindex: u32, metric: u32) -> KernelRoute {
    KernelRoute {
        prefix: prefix.parse().expect("prefix"),
        gateway: gateway.map(|g| g.parse::<IpAddr>().expect("gateway")),
        ifindex,
        metric,
    }
}

fn open() -> Kernel {
    Kernel::open(RTPROT_ISTHMUS, RT_TABLE_MAIN).expect("open rtnetlink")
}

#[test]
fn replace_and_remove_ipv4_and_ipv6_with_and_without_gateway() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    let routes = [
        route("10.9.0.0/24", None, va, 10),
        route("10.10.0.0/24", Some("10.0.0.2"), va, 10),
        route("2001:db8:9::/48", None, va, 10),
        route("2001:db8:10::/48", Some("fe80::1"), va, 10),
    ];
    ns.run(|| {
        let mut k = open();
        for r in &routes {
            k.replace(r).unwrap();
        }
    });
    assert_eq!(
        ns.routes(false),
        set(&[
            "10.10.0.0/24 via 10.0.0.2 dev va metric 10",
            "10.9.0.0/24 dev va metric 10",
        ])
    );
    assert_eq!(
        ns.routes(true),
        set(&[
            "2001:db8:10::/48 via fe80::1 dev va metric 10",
            "2001:db8:9::/48 dev va metric 10",
        ])
    );
    ns.run(|| {
        let mut k = open();
        let mut dumped = k.dump_own().unwrap();
        dumped.sort_by_key(|r| r.prefix.to_string());
        let mut want = routes.to_vec();
        want.sort_by_key(|r| r.prefix.to_string());
        assert_eq!(dumped, want);
        for r in &routes {
            k.remove(r).unwrap();
        }
        // Already gone: still Ok.
        for r in &routes {
            k.remove(r).unwrap();
        }
        assert!(k.dump_own().unwrap().is_empty());
    });
    assert!(ns.routes(false).is_empty());
    assert!(ns.routes(true).is_empty());
}

#[test]
fn replace_is_idempotent_and_changes_gateway_and_metric() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    ns.run(|| {
        let mut k = open();
        let a = route("10.20.0.0/24", Some("10.0.0.2"), va, 5);
        let a6 = route("2001:db8:20::/48", Some("fe80::1"), va, 5);
        for _ in 0..3 {
            k.replace(&a).unwrap();
            k.replace(&a6).unwrap();
        }
    });
    assert_eq!(
        ns.routes(false),
        set(&["10.20.0.0/24 via 10.0.0.2 dev va metric 5"])
    );
    assert_eq!(
        ns.routes(true),
        set(&["2001:db8:20::/48 via fe80::1 dev va metric 5"])
    );

    // Same prefix and metric, new gateway (or none): replaced in place.
    ns.run(|| {
        let mut k = open();
        k.replace(&route("10.20.0.0/24", Some("10.0.0.3"), va, 5))
            .unwrap();
        k.replace(&route("2001:db8:20::/48", Some("fe80::2"), va, 5))
            .unwrap();
    });
    assert_eq!(
        ns.routes(false),
        set(&["10.20.0.0/24 via 10.0.0.3 dev va metric 5"])
    );
    assert_eq!(
        ns.routes(true),
        set(&["2001:db8:20::/48 via fe80::2 dev va metric 5"])
    );
    ns.run(|| {
        let mut k = open();
        k.replace(&route("2001:db8:20::/48", None, va, 5)).unwrap();
    });
    assert_eq!(ns.routes(true), set(&["2001:db8:20::/48 dev va metric 5"]));

    // The kernel keys routes by prefix *and metric*: a new metric is a second route, so a
    // metric change is Replace(new) + Remove(old), in one apply.
    ns.run(|| {
        let mut k = open();
        let old = route("10.20.0.0/24", Some("10.0.0.3"), va, 5);
        let new = route("10.20.0.0/24", Some("10.0.0.3"), va, 9);
        k.replace(&new).unwrap();
        assert_eq!(
            k.dump_own().unwrap().len(),
            3,
            "old and new metric side by side"
        );
        let old6 = route("2001:db8:20::/48", None, va, 5);
        let new6 = route("2001:db8:20::/48", Some("fe80::2"), va, 9);
        let results = k.apply(&[
            KernelChange::Replace(new6),
            KernelChange::Remove(old6),
            KernelChange::Remove(old),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    });
    assert_eq!(
        ns.routes(false),
        set(&["10.20.0.0/24 via 10.0.0.3 dev va metric 9"])
    );
    assert_eq!(
        ns.routes(true),
        set(&["2001:db8:20::/48 via fe80::2 dev va metric 9"])
    );
}

#[test]
fn ipv4_gateway_outside_connected_subnets_is_onlink() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    ns.run(|| {
        let mut k = open();
        k.replace(&route("10.30.0.0/24", Some("192.168.77.1"), va, 0))
            .unwrap();
        k.replace(&route("10.31.0.0/24", Some("10.0.0.2"), va, 0))
            .unwrap();
    });
    assert_eq!(
        ns.routes(false),
        set(&[
            "10.30.0.0/24 via 192.168.77.1 dev va metric 0 onlink",
            "10.31.0.0/24 via 10.0.0.2 dev va metric 0",
        ])
    );
}

/// v4-via-v6 (RFC 5549 style: an IPv4 prefix with an IPv6 link-local next hop, `RTA_VIA`).
/// Kernels since 5.2 accept it; should this one refuse, the test says so instead of failing.
#[test]
fn ipv4_route_via_ipv6_gateway() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    let r = route("10.40.0.0/24", Some("fe80::1"), va, 3);
    let result = ns.run(|| open().replace(&r));
    match result {
        Ok(()) => {
            assert_eq!(
                ns.routes(false),
                set(&["10.40.0.0/24 via fe80::1 dev va metric 3"])
            );
            let dumped = ns.run(|| open().dump_own().unwrap());
            assert_eq!(dumped, vec![r]);
            ns.run(|| open().remove(&r).unwrap());
            assert!(ns.routes(false).is_empty());
        }
        Err(e) => {
            eprintln!("this kernel refuses v4-via-v6 routes: {e}");
            assert!(e.to_string().contains("10.40.0.0/24 via fe80::1"), "{e}");
        }
    }
}

#[test]
fn dump_own_returns_exactly_ours() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    // Others' routes: another protocol in our table, and our protocol in another table.
    ns.ip(&[
        "route",
        "add",
        "10.60.0.0/24",
        "dev",
        "va",
        "proto",
        "static",
    ]);
    ns.ip(&["route", "add", "10.61.0.0/24", "dev", "va", "proto", "42"]);
    ns.ip(&[
        "route",
        "add",
        "10.62.0.0/24",
        "dev",
        "va",
        "proto",
        "77",
        "table",
        "100",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:62::/48",
        "dev",
        "va",
        "proto",
        "77",
        "table",
        "100",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:60::/48",
        "dev",
        "va",
        "proto",
        "static",
    ]);
    let ours = [
        route("10.63.0.0/24", Some("10.0.0.2"), va, 1),
        route("10.64.0.0/16", None, va, 2),
        route("2001:db8:63::/48", Some("fe80::1"), va, 3),
        route("2001:db8:64::1/128", None, va, 4),
        route("0.0.0.0/0", Some("10.0.0.254"), va, 100),
    ];
    let dumped = ns.run(|| {
        let mut k = open();
        for r in &ours {
            k.replace(r).unwrap();
        }
        k.dump_own().unwrap()
    });
    let got: BTreeSet<String> = dumped.iter().map(ToString::to_string).collect();
    let want: BTreeSet<String> = ours.iter().map(ToString::to_string).collect();
    assert_eq!(got, want);
    assert_eq!(dumped.len(), ours.len());
    // A Kernel on table 100 sees only the routes there.
    let in_100 = ns.run(|| {
        Kernel::open(RTPROT_ISTHMUS, 100)
            .unwrap()
            .dump_own()
            .unwrap()
    });
    let got: BTreeSet<String> = in_100.iter().map(|r| r.prefix.to_string()).collect();
    assert_eq!(got, set(&["10.62.0.0/24", "2001:db8:62::/48"]));
}

#[test]
fn flush_own_leaves_other_protocols_alone() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    // Same prefixes as ours, other protocol and metric, so a sloppy delete would hit them.
    ns.ip(&[
        "route",
        "add",
        "10.70.0.0/24",
        "dev",
        "va",
        "proto",
        "static",
        "metric",
        "50",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:70::/48",
        "dev",
        "va",
        "proto",
        "static",
        "metric",
        "50",
    ]);
    let before_static_v4 = ns.routes_matching(false, &["proto", "static"]);
    let before_static_v6 = ns.routes_matching(true, &["proto", "static"]);
    let removed = ns.run(|| {
        let mut k = open();
        let results = k.apply(&[
            KernelChange::Replace(route("10.70.0.0/24", Some("10.0.0.2"), va, 1)),
            KernelChange::Replace(route("10.71.0.0/24", None, va, 1)),
            KernelChange::Replace(route("2001:db8:70::/48", Some("fe80::1"), va, 1)),
            KernelChange::Replace(route("2001:db8:71::/48", None, va, 1)),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let removed = k.flush_own().unwrap();
        assert!(k.dump_own().unwrap().is_empty());
        assert_eq!(k.flush_own().unwrap(), 0, "nothing left to flush");
        removed
    });
    assert_eq!(removed, 4);
    assert!(ns.routes(false).is_empty());
    assert!(ns.routes(true).is_empty());
    assert_eq!(
        before_static_v4,
        set(&["10.70.0.0/24 dev va metric 50"]),
        "the static route was there"
    );
    assert_eq!(
        ns.routes_matching(false, &["proto", "static"]),
        before_static_v4
    );
    assert_eq!(
        ns.routes_matching(true, &["proto", "static"]),
        before_static_v6
    );
    // The kernel's own routes (connected subnets) are untouched too.
    assert!(ns
        .routes_matching(false, &["proto", "kernel"])
        .contains("10.0.0.0/24 dev va metric 0"));
}

#[test]
fn apply_ten_thousand_routes() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    let routes: Vec<KernelRoute> = (0..10_000u32)
        .map(|i| {
            if i % 2 == 0 {
                let prefix = IpNet::new(
                    IpAddr::from([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                    32,
                )
                .unwrap();
                KernelRoute {
                    prefix,
                    gateway: Some("10.0.0.2".parse().unwrap()),
                    ifindex: va,
                    metric: 20,
                }
            } else {
                let prefix: IpNet = format!("2001:db8:1:{:x}::/64", i).parse().unwrap();
                KernelRoute {
                    prefix,
                    gateway: Some("fe80::1".parse().unwrap()),
                    ifindex: va,
                    metric: 20,
                }
            }
        })
        .collect();
    let changes: Vec<KernelChange> = routes.iter().copied().map(KernelChange::Replace).collect();
    let (install, dump_len, again, flushed, flush_time) = ns.run(|| {
        let mut k = open();
        let t = Instant::now();
        let results = k.apply(&changes);
        let install = t.elapsed();
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} failed, first: {:?}",
            failed.len(),
            failed[0]
        );
        let dump_len = k.dump_own().unwrap().len();
        let t = Instant::now();
        let results = k.apply(&changes);
        let again = t.elapsed();
        assert!(results.iter().all(Result::is_ok));
        let t = Instant::now();
        let flushed = k.flush_own().unwrap();
        (install, dump_len, again, flushed, t.elapsed())
    });
    eprintln!(
        "apply of 10,000 routes (5,000 IPv4 + 5,000 IPv6): {install:?}; again (all replaces): \
         {again:?}; flush_own: {flush_time:?}"
    );
    assert_eq!(dump_len, 10_000);
    assert_eq!(flushed, 10_000);
    assert!(ns.routes(false).is_empty());
    assert!(ns.routes(true).is_empty());
}

#[test]
fn apply_reports_result_per_change_and_errors_name_the_route() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    ns.run(|| {
        let mut k = open();
        let bad = route("10.1.0.0/24", Some("fe80::1"), 9999, 0);
        let e = k.replace(&bad).unwrap_err();
        eprintln!("error for a missing interface: {e}");
        assert_eq!(errno(&e), Some(libc::ENODEV), "{e}");
        assert!(
            e.to_string()
                .starts_with("replace 10.1.0.0/24 via fe80::1 dev 9999 metric 0: No such device"),
            "{e}"
        );

        let bad6 = route("2001:db8:80::/48", None, 9999, 0);
        let results = k.apply(&[
            KernelChange::Replace(route("10.80.0.0/24", None, va, 0)),
            KernelChange::Replace(bad6),
            KernelChange::Replace(route("10.81.0.0/24", None, va, 0)),
            KernelChange::Remove(route("10.99.0.0/24", None, va, 0)),
        ]);
        assert!(results[0].is_ok());
        let e = results[1].as_ref().unwrap_err();
        assert!(e.to_string().contains("2001:db8:80::/48 dev 9999"), "{e}");
        assert!(results[2].is_ok());
        assert!(results[3].is_ok(), "removing a missing route is fine");
        assert_eq!(k.dump_own().unwrap().len(), 2);
    });
}

#[test]
fn addresses_and_ifindex_inside_the_namespace() {
    let Some(ns) = Ns::new() else { return };
    let (va, addrs) = ns.run(|| (ifindex("va").unwrap(), ifaddr::all().unwrap()));
    assert!(addrs.iter().any(|a| a.ifindex == va
        && a.addr == "10.0.0.1".parse::<IpAddr>().unwrap()
        && a.prefix_len == 24));
    assert!(addrs.iter().any(|a| a.ifindex == va
        && a.addr == "2001:db8::1".parse::<IpAddr>().unwrap()
        && a.prefix_len == 64));
    let e = ns.run(|| ifindex("eth-nonesuch").unwrap_err());
    assert!(e.to_string().contains("eth-nonesuch"), "{e}");
}

/// The kernel drops acks that do not fit the receive buffer (ENOBUFS); apply then asks again
/// for the changes whose fate it does not know, and still reports one result per change.
#[test]
fn apply_recovers_from_dropped_acks() {
    let Some(ns) = Ns::new() else { return };
    let va = ns.run(|| ifindex("va").unwrap());
    let changes: Vec<KernelChange> = (0..2_000u32)
        .map(|i| {
            KernelChange::Replace(KernelRoute {
                prefix: IpNet::new(IpAddr::from([10, 200, (i >> 8) as u8, i as u8]), 32).unwrap(),
                gateway: None,
                ifindex: va,
                metric: 1,
            })
        })
        .collect();
    let (n, dumped) = ns.run(|| {
        let mut k = open();
        k.squeeze_for_test(1024, 4096).unwrap();
        let results = k.apply(&changes);
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} failed, first: {:?}",
            failed.len(),
            failed[0]
        );
        (results.len(), k.dump_own().unwrap().len())
    });
    assert_eq!(n, 2_000);
    assert_eq!(dumped, 2_000);
    assert_eq!(ns.routes(false).len(), 2_000);
}
