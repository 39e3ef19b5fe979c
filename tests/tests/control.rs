//! The control channel against a running isthmus-dp hub with two wireguard-go spokes:
//! `isthmusctl show`, routes pushed by a control client steering real traffic, non-stop
//! forwarding when that client dies (routes kept, marked stale), Babel packets from a spoke
//! punted to the subscriber with the spoke's identity, and packets injected into a spoke's
//! tunnel arriving there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{init, ping_ok};
use isthmus_dataplane::ctl::proto::{CtlRoute, Msg};
use isthmus_dataplane::ctl::server::CtlClient;
use isthmus_dataplane::ctl::RUN_DIR;
use isthmus_dataplane::fib::{RouteOrigin, Via};
use isthmus_dataplane::keys::Key;
use isthmus_lab::{require_isthmus, Topology, WgImpl};

fn isthmusctl() -> PathBuf {
    let t = isthmus_lab::target_dir();
    ["release", "debug"]
        .iter()
        .map(|p| t.join(p).join("isthmusctl"))
        .find(|p| p.exists())
        .expect("isthmusctl built")
}

fn ctl_path(ifname: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{ifname}.ctl"))
}

fn key(b64: &str) -> Key {
    Key::from_base64(b64).unwrap()
}

/// A UDP datagram sent from inside a namespace with python3 (bound to a device).
fn send_udp6(ns: &isthmus_lab::Netns, dev: &str, dst: &str, port: u16, payload: &str) {
    let script = format!(
        "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{dev}'); \
         idx=socket.if_nametoindex('{dev}'); \
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx); \
         s.sendto(b'{payload}', ('{dst}', {port}, 0, idx))"
    );
    ns.exec(&["python3", "-c", &script]).unwrap();
}

#[test]
fn control_channel_drives_a_running_data_plane() {
    init();
    require_isthmus("the control channel");
    let t = Topology::star(WgImpl::Isthmus, &[WgImpl::WireguardGo, WgImpl::WireguardGo]).unwrap();
    let (hub, s0, s1) = (t.wg("hub"), t.wg("s0"), t.wg("s1"));
    ping_ok(t.ns("s0"), "10.20.0.1", 1);
    ping_ok(t.ns("s1"), "10.20.0.1", 1);

    // isthmusctl sees both peers and their allowed-IPs routes.
    let out = Command::new(isthmusctl())
        .args(["show", "peers", &hub.ifname])
        .output()
        .unwrap();
    let peers = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        peers.contains(&s0.keys.public) && peers.contains(&s1.keys.public),
        "{peers}"
    );
    let out = Command::new(isthmusctl())
        .args(["show", "routes", &hub.ifname])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(
        routes.contains("10.20.0.2/32") && routes.contains("allowed-ips"),
        "{routes}"
    );

    // A control-plane route: 10.99.0.0/24 lives behind s1 (which has no allowed-IP for it at
    // the hub). s0 routes it into its tunnel.
    t.ns("s1")
        .exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", &s1.ifname])
        .unwrap();
    s0.wg(&[
        "set",
        &s0.ifname,
        "peer",
        &t.wg("hub").keys.public,
        "allowed-ips",
        "10.20.0.0/24,fd20::/64,10.99.0.0/24,fe80::/64,ff02::1:6/128",
    ])
    .unwrap();
    t.ns("s0")
        .exec(&["ip", "route", "add", "10.99.0.0/24", "dev", &s0.ifname])
        .unwrap();
    let mut cp = CtlClient::connect(&ctl_path(&hub.ifname), "test-cp").unwrap();
    let Msg::HelloAck {
        ifname, public_key, ..
    } = &cp.hello
    else {
        panic!("{:?}", cp.hello)
    };
    assert_eq!(ifname, &hub.ifname);
    assert_eq!(public_key.unwrap(), key(&hub.keys.public));
    let route = CtlRoute {
        prefix: "10.99.0.0/24".parse().unwrap(),
        next_hop: Via::Peer(key(&s1.keys.public)),
    };
    assert_eq!(
        cp.request(&Msg::FibSnapshot {
            routes: vec![route]
        })
        .unwrap(),
        Msg::Ok
    );
    let Msg::Routes(rs) = cp.request(&Msg::GetRoutes).unwrap() else {
        panic!()
    };
    assert!(rs.iter().any(|r| r.prefix == route.prefix
        && r.origin == RouteOrigin::Control
        && r.next_hop == route.next_hop));
    ping_ok(t.ns("s0"), "10.99.0.1", 3);

    // Subscribe, then a Babel hello from s0 (link-local source, to ff02::1:6 port 6696).
    assert_eq!(cp.request(&Msg::Subscribe).unwrap(), Msg::Ok);
    t.ns("s0")
        .exec(&["ip", "addr", "add", "fe80::2/64", "dev", &s0.ifname])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut punted = None;
    while punted.is_none() && Instant::now() < deadline {
        send_udp6(t.ns("s0"), &s0.ifname, "ff02::1:6", 6696, "babel-hello");
        // Events (handshakes) may come first; look for the punt.
        for _ in 0..20 {
            match cp.recv().unwrap() {
                Msg::Punt { peer, packet } => {
                    punted = Some((peer, packet));
                    break;
                }
                _ => continue,
            }
        }
    }
    let (peer, packet) = punted.expect("Babel packet punted to the subscriber");
    assert_eq!(peer, key(&s0.keys.public), "punt carries the sending peer");
    assert!(packet.ends_with(b"babel-hello"));
    assert_eq!(
        &packet[24..40],
        &"ff02::1:6".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );

    // Inject: a UDP packet from the hub's side into s0's tunnel, to a listener on s0.
    let mut listener = t
        .ns("s0")
        .command("python3")
        .args([
            "-c",
            &format!(
                "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); \
                 s.bind(('fe80::2', 6696, 0, socket.if_nametoindex('{}'))); s.settimeout(10); \
                 print('ready', flush=True); print(s.recv(100).decode())",
                s0.ifname
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Inject only once the listener is bound (a loaded machine can take its time).
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(listener.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut pkt = Vec::new();
    etherparse::PacketBuilder::ipv6(
        "fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        "fe80::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        1,
    )
    .udp(6696, 6696)
    .write(&mut pkt, b"babel-from-cp")
    .unwrap();
    cp.send(&Msg::Inject {
        peer: key(&s0.keys.public),
        packet: pkt,
    })
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap().trim(), "babel-from-cp");
    listener.wait().unwrap();

    // The control plane dies: its routes stay (non-stop forwarding), marked stale.
    drop(cp);
    std::thread::sleep(Duration::from_millis(300));
    let m = hub.metrics().unwrap();
    assert_eq!(m.get("isthmus_fib_stale", &[]), 1.0);
    ping_ok(t.ns("s0"), "10.99.0.1", 3);
    // It comes back with a snapshot: fresh again.
    let mut cp = CtlClient::connect(&ctl_path(&hub.ifname), "test-cp").unwrap();
    assert_eq!(
        cp.request(&Msg::FibSnapshot {
            routes: vec![route]
        })
        .unwrap(),
        Msg::Ok
    );
    assert_eq!(hub.metrics().unwrap().get("isthmus_fib_stale", &[]), 0.0);
    assert!(hub.alive());
}
