//! The benchmark's WireGuard packet generator and sink (`isthmus-wggen`, from
//! `isthmus-benches`) through isthmus-dp as a relay: generator peer → isthmus-dp → sink
//! peer, each with its own handshake; the sink decrypts a sample with its session and every
//! sampled packet must be the generator's. A two-second run at a modest rate.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::init;
use isthmus_lab::{
    veth, wggen_path, write_private_key, Keypair, Lab, Netns, PeerSpec, WgIface, WgImpl, WgSpec,
};

fn last_json(log: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in {}:\n{text}", log.display()));
    serde_json::from_str(line).unwrap()
}

#[test]
fn generator_to_sink_through_isthmus_relay() {
    init();
    let tool = wggen_path().unwrap().display().to_string();
    let lab = Lab::new().unwrap();
    let gen = Arc::new(Netns::new("gen-gen").unwrap());
    let hub = Arc::new(Netns::new("gen-hub").unwrap());
    let sink = Arc::new(Netns::new("gen-sink").unwrap());
    veth(&gen, "uplink", &hub, "to-gen").unwrap();
    veth(&sink, "uplink", &hub, "to-sink").unwrap();
    gen.add_addr("uplink", "192.168.107.2/24").unwrap();
    hub.add_addr("to-gen", "192.168.107.1/24").unwrap();
    sink.add_addr("uplink", "192.168.108.2/24").unwrap();
    hub.add_addr("to-sink", "192.168.108.1/24").unwrap();
    if !WgImpl::Isthmus.is_real_isthmus() {
        hub.set_forwarding(true).unwrap(); // a stand-in relays through the kernel
    }
    let (kg, ks) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let h = WgIface::start(
        &hub,
        &lab,
        WgImpl::Isthmus,
        &WgSpec {
            listen_port: 51820,
            addresses: vec!["10.40.0.254/24".into()],
            isthmus_args: vec!["--metrics".into(), "off".into()],
            mtu: Some(1420),
            ..WgSpec::default()
        },
    )
    .unwrap();
    for (k, ep, allowed) in [
        (&kg, "192.168.107.2:51820", "10.40.0.1/32"),
        (&ks, "192.168.108.2:51820", "10.40.0.2/32"),
    ] {
        h.add_peer(&PeerSpec {
            public_key: k.public.clone(),
            endpoint: Some(ep.into()),
            allowed_ips: vec![allowed.into()],
            keepalive: None,
        })
        .unwrap();
    }
    let gk = write_private_key(&lab, "wggen-gen", &kg.private).unwrap();
    let sk = write_private_key(&lab, "wggen-sink", &ks.private).unwrap();
    let (gk, sk) = (gk.display().to_string(), sk.display().to_string());
    let inner = ["--src", "10.40.0.1:4000", "--dst", "10.40.0.2:9"];
    for size in ["64", "1420"] {
        let sink_log = lab.path(&format!("sink-{size}.log"));
        let mut argv = vec![
            tool.as_str(),
            "sink",
            "--gateway",
            "192.168.108.1:51820",
            "--key",
            &sk,
            "--gateway-key",
            &h.keys.public,
            "--bind",
            "192.168.108.2:51820",
            "--size",
            size,
            "--sample",
            "16",
            "--wait",
            "20",
        ];
        argv.extend(inner);
        let sink_pid = sink.spawn(&argv, &sink_log).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !std::fs::read_to_string(&sink_log)
            .unwrap_or_default()
            .contains("wggen sink: ready")
        {
            assert!(
                Instant::now() < deadline && sink.alive(sink_pid),
                "the sink did not come up:\n{}\nhub:\n{}",
                std::fs::read_to_string(&sink_log).unwrap_or_default(),
                h.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let gen_log = lab.path(&format!("gen-{size}.log"));
        let mut argv = vec![
            tool.as_str(),
            "send",
            "--gateway",
            "192.168.107.1:51820",
            "--key",
            &gk,
            "--gateway-key",
            &h.keys.public,
            "--bind",
            "192.168.107.2:51820",
            "--size",
            size,
            "--duration",
            "2",
            "--rate",
            "20000",
        ];
        argv.extend(inner);
        let gen_pid = gen.spawn(&argv, &gen_log).unwrap();
        assert!(gen.wait_exit(gen_pid, Duration::from_secs(30)));
        assert!(sink.wait_exit(sink_pid, Duration::from_secs(30)));
        let g = last_json(&gen_log);
        let s = last_json(&sink_log);
        eprintln!("{size} B: generator {g}\n{size} B: sink {s}");
        let sent = g["sent"].as_u64().unwrap();
        let received = s["received"].as_u64().unwrap();
        let valid = s["valid"].as_u64().unwrap();
        assert!(sent > 10_000, "the generator sent only {sent}");
        assert_eq!(s["invalid"].as_u64(), Some(0), "invalid samples: {s}");
        assert!(valid > 0 && valid >= received / 16 - 1, "samples: {s}");
        assert!(
            received * 100 >= sent * 95 && received <= sent,
            "{received} of {sent} arrived"
        );
    }
    assert!(h.alive(), "isthmus-dp died:\n{}", h.log_tail(30));
}
