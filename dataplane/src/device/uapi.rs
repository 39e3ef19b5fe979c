//! The WireGuard UAPI on a device: `get` from the peer table, `set` as one batch of peer
//! changes.

use std::io;

use super::Device;
use crate::forward::{PeerChange, PeerSpec};

impl crate::uapi::UapiHandler for Device {
    fn get(&self) -> crate::uapi::DeviceState {
        let peers = self.core.peers();
        crate::uapi::DeviceState {
            private_key: self.core.private_key(),
            listen_port: self.listen_port(),
            fwmark: self.fwmark(),
            // Oldest first, as the kernel lists them.
            peers: peers.iter_by_age().map(|p| p.info()).collect(),
        }
    }

    fn max_clients(&self) -> usize {
        self.local.uapi_clients
    }

    fn limit_reached(&self, limit: crate::limits::Limit) {
        self.core.limits().hit(limit);
    }

    fn set(&self, req: crate::uapi::SetRequest) -> Result<(), crate::uapi::UapiError> {
        if let Some(k) = req.private_key {
            self.core.set_private_key(k);
        }
        if req.listen_port.is_some() || req.fwmark.is_some() {
            self.rebind(req.listen_port, req.fwmark).map_err(|e| {
                let msg = format!("binding UDP port {}: {e}", req.listen_port.unwrap_or(0));
                if e.kind() == io::ErrorKind::AddrInUse {
                    crate::uapi::UapiError::port_in_use(msg)
                } else {
                    crate::uapi::UapiError::io(msg)
                }
            })?;
        }
        set_peers(&self.core, req.replace_peers, req.peers)
    }
}

/// The peer sections of a `set=1` (and `replace_peers`), applied to `core` as one batch.
/// As in wireguard-go, the sections before a failing one stay applied; a full peer table
/// is ENOSPC, which wg(8) reports as "No space left on device".
fn set_peers(
    core: &crate::forward::Core,
    replace_peers: bool,
    peers: Vec<crate::uapi::PeerSet>,
) -> Result<(), crate::uapi::UapiError> {
    // A peer with the device's own public key is ignored, as wireguard-go ignores it, not
    // an error for the whole request.
    let own = core.private_key().map(|k| k.public_key());
    let sections = (peers.into_iter())
        .filter(|p| {
            let mine = Some(p.public_key) == own;
            if mine {
                tracing::debug!("uapi: a peer with our own public key, ignored");
            }
            !mine
        })
        .collect();
    let changes = uapi_peer_changes(&core.peers(), replace_peers, sections);
    core.apply_peer_changes(changes)
        .map_err(|e| match e.error {
            crate::forward::CoreError::PeerLimit(_) => {
                crate::uapi::UapiError::no_space(e.to_string())
            }
            _ => crate::uapi::UapiError::rejected(e.to_string()),
        })?;
    Ok(())
}

/// The peer changes of a `set=1` request, in order: `replace_peers`, then one change per
/// peer section. A section starts from the peer's settings as the request's earlier
/// sections leave them (`peers`, the current table, for a peer the request has not touched
/// yet), so that the changes can be applied as one batch.
fn uapi_peer_changes(
    peers: &crate::tunnel::PeerMap,
    replace_peers: bool,
    sections: Vec<crate::uapi::PeerSet>,
) -> Vec<PeerChange> {
    use crate::tunnel::PeerSettings;
    use std::collections::HashMap;
    let mut changes = Vec::with_capacity(sections.len() + 1);
    if replace_peers {
        changes.push(PeerChange::RemoveAll);
    }
    // What the request did so far to the peers it named: `None`, removed.
    let mut seen: HashMap<crate::keys::Key, Option<PeerSettings>> = HashMap::new();
    for ps in sections {
        if ps.remove {
            seen.insert(ps.public_key, None);
            changes.push(PeerChange::Remove(ps.public_key));
            continue;
        }
        let existing = match seen.get(&ps.public_key) {
            Some(s) => s.clone(),
            None if replace_peers => None,
            None => peers.by_key(&ps.public_key).map(|p| p.settings()),
        };
        if ps.update_only && existing.is_none() {
            continue;
        }
        let mut settings = existing.unwrap_or_default();
        if let Some(psk) = ps.preshared_key {
            settings.preshared_key = psk;
        }
        if let Some(k) = ps.persistent_keepalive {
            settings.persistent_keepalive = (k > 0).then_some(k);
        }
        if ps.replace_allowed_ips {
            settings.allowed_ips.clear();
        }
        let mut have: std::collections::HashSet<ipnet::IpNet> =
            settings.allowed_ips.iter().copied().collect();
        for net in ps.allowed_ips {
            if have.insert(net) {
                settings.allowed_ips.push(net);
            }
        }
        seen.insert(ps.public_key, Some(settings.clone()));
        changes.push(PeerChange::Upsert(PeerSpec {
            public_key: ps.public_key,
            endpoint: ps.endpoint,
            settings,
        }));
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::time::Instant;

    use super::*;
    use crate::forward::{Core, Settings};
    use crate::keys::Key;

    /// The body of a `set=1` that adds `n` peers, each with an endpoint and a /32.
    fn addconf_text(n: u32) -> String {
        let mut text = String::from("private_key=");
        text.push_str(&Key::generate_private().to_hex());
        text.push_str("\nreplace_peers=true\n");
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = write!(
                text,
                "public_key={}\nendpoint=192.0.2.1:{}\nreplace_allowed_ips=true\nallowed_ip={ip}/32\n",
                Key::generate_private().public_key().to_hex(),
                1024 + i % 60000,
            );
        }
        text
    }

    /// Times the `wg addconf` path without the socket: parse the request, turn it into one
    /// batch, apply it; and, as the baseline, the same peers applied one change at a time
    /// (as `set` did before batches) for a tenth of them.
    #[test]
    fn time_an_addconf_of_many_peers() {
        let n: u32 = std::env::var("ISTHMUS_TIMING_PEERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        let t = Instant::now();
        let text = addconf_text(n);
        eprintln!("generate {n} keys: {:?}", t.elapsed());
        let t = Instant::now();
        let req = crate::uapi::parse_set(&text).unwrap();
        eprintln!(
            "parse_set of {n} peers ({} bytes): {:?}",
            text.len(),
            t.elapsed()
        );
        let core = Core::new("t0", Settings::default());
        core.set_private_key(req.private_key.flatten());
        let t = Instant::now();
        let changes = uapi_peer_changes(&core.peers(), req.replace_peers, req.peers.clone());
        let done = core.apply_peer_changes(changes).unwrap();
        eprintln!("apply {n} peers in one batch: {:?}", t.elapsed());
        assert_eq!(done.added, n as usize);
        assert_eq!(core.peers().len(), n as usize);
        assert_eq!(core.fib().len(), n as usize);
        let base = (n / 10).max(1) as usize;
        let core = Core::new("t0", Settings::default());
        core.set_private_key(req.private_key.flatten());
        let t = Instant::now();
        for ps in req.peers.into_iter().take(base) {
            for c in uapi_peer_changes(&core.peers(), false, vec![ps]) {
                core.apply_peer_changes([c]).unwrap();
            }
        }
        eprintln!(
            "baseline: apply {base} peers one change at a time: {:?}",
            t.elapsed()
        );
        assert_eq!(core.peers().len(), base);
    }

    fn section(key: Key) -> crate::uapi::PeerSet {
        crate::uapi::PeerSet {
            public_key: key,
            ..Default::default()
        }
    }

    #[test]
    fn a_set_request_becomes_one_batch_that_sees_its_own_earlier_sections() {
        let core = Core::new("t0", Settings::default());
        let (a, b, c) = (Key([1; 32]), Key([2; 32]), Key([3; 32]));
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let mut spec = PeerSpec {
            public_key: a,
            ..Default::default()
        };
        spec.settings.allowed_ips = vec![net("10.0.0.0/24")];
        spec.settings.persistent_keepalive = Some(25);
        core.upsert_peer(spec).unwrap();
        let sections = vec![
            // Adds to a's allowed IPs, keeping its keepalive.
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.0.1.0/24"), net("10.0.0.0/24")],
                ..section(a)
            },
            // b is new; its second section sees the first.
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.1.0.0/24")],
                ..section(b)
            },
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.1.1.0/24")],
                persistent_keepalive: Some(0),
                ..section(b)
            },
            // update_only: c does not exist, so nothing.
            crate::uapi::PeerSet {
                update_only: true,
                ..section(c)
            },
        ];
        core.apply_peer_changes(uapi_peer_changes(&core.peers(), false, sections))
            .unwrap();
        let peers = core.peers();
        let sa = peers.by_key(&a).unwrap().settings();
        assert_eq!(sa.allowed_ips, [net("10.0.0.0/24"), net("10.0.1.0/24")]);
        assert_eq!(sa.persistent_keepalive, Some(25));
        let sb = peers.by_key(&b).unwrap().settings();
        assert_eq!(sb.allowed_ips, [net("10.1.0.0/24"), net("10.1.1.0/24")]);
        assert!(peers.by_key(&c).is_none());
        // replace_peers: a removed; b re-created from nothing, then removed again; c added.
        let sections = vec![
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.2.0.0/24")],
                ..section(b)
            },
            crate::uapi::PeerSet {
                remove: true,
                ..section(b)
            },
            crate::uapi::PeerSet {
                update_only: true,
                ..section(b)
            },
            crate::uapi::PeerSet {
                update_only: true,
                ..section(a)
            },
            crate::uapi::PeerSet {
                allowed_ips: vec![net("10.3.0.0/24")],
                ..section(c)
            },
        ];
        core.apply_peer_changes(uapi_peer_changes(&core.peers(), true, sections))
            .unwrap();
        let peers = core.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers.by_key(&c).unwrap().settings().allowed_ips,
            [net("10.3.0.0/24")]
        );
        let routes: Vec<_> = core.fib().routes().into_iter().map(|r| r.prefix).collect();
        assert_eq!(routes, [net("10.3.0.0/24")]);
    }
}

#[cfg(test)]
mod limit_tests {
    //! The peer bound through the UAPI socket, as `wg set` meets it.

    use std::io::{Read as _, Write as _};
    use std::sync::Arc;

    use super::set_peers;
    use crate::forward::{Core, Settings};
    use crate::keys::Key;
    use crate::limits::Limit;
    use crate::uapi::{DeviceState, SetRequest, UapiError, UapiHandler};

    /// The UAPI over a bare core, with the device's `set` of peers.
    struct CoreHandler(Arc<Core>);

    impl UapiHandler for CoreHandler {
        fn get(&self) -> DeviceState {
            DeviceState {
                private_key: self.0.private_key(),
                peers: self.0.peers().iter_by_age().map(|p| p.info()).collect(),
                ..DeviceState::default()
            }
        }
        fn set(&self, req: SetRequest) -> Result<(), UapiError> {
            set_peers(&self.0, req.replace_peers, req.peers)
        }
        fn limit_reached(&self, limit: Limit) {
            self.0.limits().hit(limit);
        }
    }

    fn set_request(keys: impl Iterator<Item = u8>) -> String {
        let mut s = String::from("set=1\n");
        for k in keys {
            let pk = Key::generate_private().public_key();
            s.push_str(&format!(
                "public_key={}\nallowed_ip=10.0.{k}.0/24\n",
                pk.to_hex()
            ));
        }
        s.push('\n');
        s
    }

    fn exchange(path: &std::path::Path, request: &str) -> String {
        let mut c = std::os::unix::net::UnixStream::connect(path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        c.write_all(request.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_set_past_max_peers_gets_enospc_and_is_counted() {
        let core = Core::new(
            "t0",
            Settings {
                max_peers: 3,
                ..Settings::default()
            },
        );
        core.set_private_key(Some(Key::generate_private()));
        let dir = std::env::temp_dir().join(format!("isthmus-uapi-max-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t0.sock");
        let server = crate::uapi::serve_at(&path, Arc::new(CoreHandler(core.clone()))).unwrap();
        assert_eq!(exchange(&path, &set_request(0..2)), "errno=0\n\n");
        // Five more: the first fits, the second finds the table full.
        let reply = exchange(&path, &set_request(2..7));
        assert_eq!(reply, format!("errno=-{}\n\n", libc::ENOSPC));
        assert_eq!(core.peers().len(), 3);
        assert_eq!(core.limits().get(Limit::Peers), 1);
        // wg show still works, and lists the three.
        let got = exchange(&path, "get=1\n\n");
        assert_eq!(got.matches("public_key=").count(), 3, "{got}");
        // replace_peers with three new ones fits (the old go first).
        let replace = set_request(7..10).replace("set=1\n", "set=1\nreplace_peers=true\n");
        assert_eq!(exchange(&path, &replace), "errno=0\n\n");
        assert_eq!(core.peers().len(), 3);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
