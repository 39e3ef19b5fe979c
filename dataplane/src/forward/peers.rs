//! Changes to the peer table, in batches: one copy of the table and one rebuild of the
//! route tables per batch, whatever its size.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use std::sync::Arc;

use super::{Core, CoreError, CoreEvent, PeerSpec};
use crate::fib::PeerId;
use crate::keys::Key;
use crate::tunnel::guard::HandshakeGuard;
use crate::tunnel::{Identity, Peer, PeerMap, MAX_PEER_ID};

/// One change of the peer table, for [`Core::apply_peer_changes`].
#[derive(Debug, Clone)]
pub enum PeerChange {
    /// Add the peer, or update it if its key is known (as [`Core::upsert_peer`]).
    Upsert(PeerSpec),
    /// Remove the peer with this key, if there is one.
    Remove(Key),
    /// Remove every peer (the UAPI's `replace_peers`).
    RemoveAll,
}

/// What a batch of peer changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers created.
    pub added: usize,
    /// Existing peers updated.
    pub updated: usize,
    /// Peers removed.
    pub removed: usize,
}

/// A batch of peer changes stopped at a change that failed. The changes before it were
/// applied (and published); it and the ones after it were not.
#[derive(Debug, thiserror::Error)]
#[error("peer {key}: {error}", key = crate::tunnel::key_b64(.public_key))]
pub struct PeerChangeError {
    /// Position of the failed change in the batch: also the number of changes applied.
    pub index: usize,
    /// The peer it names.
    pub public_key: Key,
    /// What was wrong.
    pub error: CoreError,
}

impl Core {
    /// Set or clear the private key. Sessions are reset; a peer with the device's own public
    /// key is removed (as wireguard-go does).
    pub fn set_private_key(&self, key: Option<Key>) {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let identity = key
            .filter(|k| k.0 != [0; 32])
            .map(|k| Arc::new(Identity::new(k)));
        if identity.as_ref().map(|i| i.private_key) == self.private_key() {
            return;
        }
        let zero = boringtun::x25519::PublicKey::from([0u8; 32]);
        self.guard.store(Arc::new(HandshakeGuard::new(
            identity.as_ref().map_or(&zero, |i| &i.public),
        )));
        self.identity.store(identity.clone());
        let mut map = self.peers_to_change();
        let mut removed_own = false;
        if let Some(id) = &identity {
            let own = id.public_key();
            removed_own = map.remove(&own).is_some();
            for p in map.iter() {
                p.reset_session(id);
            }
        }
        self.peers.store(Arc::new(map));
        self.rebuild_tables();
        if let (true, Some(id)) = (removed_own, &identity) {
            self.emit(CoreEvent::PeerRemoved(id.public_key()));
        }
    }

    /// Add a peer or update an existing one. A changed preshared key or keepalive resets
    /// the session; everything else is kept. (A batch of one change.)
    pub fn upsert_peer(&self, spec: PeerSpec) -> Result<PeerId, CoreError> {
        let mut id = 0;
        self.change_peers([PeerChange::Upsert(spec)], |i| id = i)
            .map_err(|e| e.error)?;
        Ok(id)
    }

    /// Remove a peer. Returns whether it existed. (A batch of one change.)
    pub fn remove_peer(&self, key: &Key) -> bool {
        self.apply_peer_changes([PeerChange::Remove(*key)])
            .is_ok_and(|c| c.removed > 0)
    }

    /// Remove every peer. (A batch of one change.)
    pub fn clear_peers(&self) {
        // Removals cannot fail.
        let _ = self.apply_peer_changes([PeerChange::RemoveAll]);
    }

    /// Apply a batch of peer changes, in order, as one change of the tables: the peer map is
    /// copied once and the allowed-IPs table and the FIB are rebuilt and published once, so
    /// a batch of n changes costs O(peers + n), not O(peers × n). An upsert behaves as
    /// [`Core::upsert_peer`].
    ///
    /// The batch stops at the first change that fails (as wireguard-go applies a `set`
    /// line by line until the first error): the changes before it are applied and published,
    /// the failing one and those after it are not, and the error says which one failed.
    pub fn apply_peer_changes(
        &self,
        changes: impl IntoIterator<Item = PeerChange>,
    ) -> Result<PeerChanges, PeerChangeError> {
        self.change_peers(changes, |_| {})
    }

    /// [`Core::apply_peer_changes`], calling `upserted` with the id of every peer upserted.
    pub(super) fn change_peers(
        &self,
        changes: impl IntoIterator<Item = PeerChange>,
        mut upserted: impl FnMut(PeerId),
    ) -> Result<PeerChanges, PeerChangeError> {
        let _g = self
            .config_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let identity = self.identity.load_full();
        // Without a private key sessions are made with a throwaway identity and replaced
        // when the key is set.
        let placeholder = identity.is_none().then(|| Identity::new(Key([1; 32])));
        let ident = identity
            .as_deref()
            .or(placeholder.as_ref())
            .expect("one of them");
        let own = identity.as_ref().map(|i| i.public_key());
        let max_peers = self.settings().max_peers;
        let mut map = self.peers_to_change();
        let mut done = PeerChanges::default();
        // For the control plane, sent once the change is published.
        let mut events = Vec::new();
        // Keys added or removed: the static and control routes that name them resolve anew.
        let mut touched: HashSet<Key> = HashSet::new();
        let mut failed = None;
        // Who holds each allowed IP, built when a batch first needs it and kept current.
        let mut owners: Option<HashMap<IpNet, Key>> = None;
        for (index, change) in changes.into_iter().enumerate() {
            match change {
                PeerChange::Upsert(spec) => {
                    let key = spec.public_key;
                    let existing = map.by_key(&key).is_some();
                    // A new peer that cannot be added is refused before it takes anything
                    // from the others.
                    let refused = if existing {
                        None
                    } else if own == Some(key) {
                        Some(CoreError::OwnKey)
                    } else if map.len() >= max_peers {
                        // Refused, not another peer evicted: the ones there keep working.
                        self.limits.hit(crate::limits::Limit::Peers);
                        Some(CoreError::PeerLimit(max_peers))
                    } else if map.next_id() > MAX_PEER_ID {
                        Some(CoreError::TooManyPeers)
                    } else {
                        None
                    };
                    if let Some(error) = refused {
                        failed = Some(PeerChangeError {
                            index,
                            public_key: key,
                            error,
                        });
                        break;
                    }
                    // WireGuard's ownership rule: the allowed IPs this peer is given are
                    // taken from any other peer that had them.
                    if !spec.settings.allowed_ips.is_empty() {
                        let owners = owners.get_or_insert_with(|| owner_index(&map));
                        for other in
                            take_allowed_ips(&map, owners, &key, &spec.settings.allowed_ips)
                        {
                            events.push(CoreEvent::PeerChanged(other));
                        }
                    }
                    if let Some(peer) = map.by_key(&key) {
                        update_peer(peer, spec, identity.as_deref());
                        upserted(peer.id);
                        events.push(CoreEvent::PeerChanged(key));
                        done.updated += 1;
                        continue;
                    }
                    let id = map.next_id();
                    let peer = Arc::new(Peer::new(id, ident, key, spec.settings, spec.endpoint));
                    if let Some(k) = peer.settings().persistent_keepalive.filter(|&k| k > 0) {
                        tracing::debug!(peer = %peer.label, keepalive = k, "persistent keepalive");
                    }
                    map.insert(peer);
                    touched.insert(key);
                    events.push(CoreEvent::PeerAdded(key));
                    upserted(id);
                    done.added += 1;
                }
                PeerChange::Remove(key) => {
                    if map.remove(&key).is_some() {
                        touched.insert(key);
                        events.push(CoreEvent::PeerRemoved(key));
                        done.removed += 1;
                    }
                }
                PeerChange::RemoveAll => {
                    for p in map.clear() {
                        touched.insert(p.public_key);
                        events.push(CoreEvent::PeerRemoved(p.public_key));
                        done.removed += 1;
                    }
                }
            }
        }
        if done != PeerChanges::default() {
            self.peers.store(Arc::new(map));
            self.refresh_peer_routes(&touched);
        }
        for ev in events {
            if !self.emit(ev) {
                // Nobody listens (or the subscriber's queue is full: its next event, or its
                // own GetPeers, brings it up to date).
                break;
            }
        }
        failed.map_or(Ok(done), Err)
    }

    /// A copy of the peer map to change and publish (see [`PeerMap`]).
    pub(super) fn peers_to_change(&self) -> PeerMap {
        let mut map = (**self.peers.load()).clone();
        map.reclaim_ids();
        map
    }

    /// Set an existing peer's endpoint.
    pub fn set_endpoint(&self, key: &Key, endpoint: SocketAddr) -> bool {
        match self.peers.load().by_key(key) {
            Some(p) => {
                p.lock().endpoint = Some(endpoint);
                true
            }
            None => false,
        }
    }
}

/// Every allowed IP of `map` and the peer that holds it.
fn owner_index(map: &PeerMap) -> HashMap<IpNet, Key> {
    let mut owners = HashMap::new();
    for p in map.iter() {
        for net in p.settings().allowed_ips {
            owners.insert(net, p.public_key);
        }
    }
    owners
}

/// Gives `nets` to `owner`: each is removed from the peer that held it, if another (an
/// exact prefix: a narrower or wider one stays, as in WireGuard's table). Returns the peers
/// that lost one. `owners` is kept current.
fn take_allowed_ips(
    map: &PeerMap,
    owners: &mut HashMap<IpNet, Key>,
    owner: &Key,
    nets: &[IpNet],
) -> Vec<Key> {
    let mut losers: Vec<Key> = Vec::new();
    for net in nets {
        let Some(prev) = owners.insert(*net, *owner).filter(|k| k != owner) else {
            continue;
        };
        let Some(p) = map.by_key(&prev) else {
            continue;
        };
        let mut settings = p
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = settings.allowed_ips.len();
        settings.allowed_ips.retain(|n| n != net);
        if settings.allowed_ips.len() != before && !losers.contains(&prev) {
            tracing::debug!(peer = %p.label, %net, "allowed IP taken by another peer");
            losers.push(prev);
        }
    }
    losers
}

/// Update an existing peer to `spec`. A changed preshared key or keepalive resets the
/// session (when there is a private key); everything else is kept.
fn update_peer(peer: &Peer, spec: PeerSpec, identity: Option<&Identity>) {
    let reset = {
        let mut settings = peer
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reset = settings.preshared_key != spec.settings.preshared_key
            || settings.persistent_keepalive != spec.settings.persistent_keepalive;
        *settings = spec.settings;
        reset
    };
    if let Some(ep) = spec.endpoint {
        let mut st = peer.lock();
        st.initiate |= st.endpoint.is_none();
        st.endpoint = Some(ep);
    }
    if reset {
        if let Some(id) = identity {
            peer.reset_session(id);
        }
    }
}

#[cfg(test)]
mod peer_change_tests {
    //! Batches of peer changes: one rebuild for many peers, id reuse, errors mid-batch.

    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Instant;

    use ipnet::IpNet;

    use crate::fib::{NextHop, RouteOrigin};
    use crate::forward::{Core, CoreError, PeerChange, PeerChanges, PeerSpec, Settings};
    use crate::keys::Key;

    /// A distinct public key per `i`.
    fn key(i: u32) -> Key {
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        Key(k)
    }

    fn host(i: u32) -> IpNet {
        IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
    }

    fn spec(i: u32) -> PeerSpec {
        let mut s = PeerSpec {
            public_key: key(i),
            ..Default::default()
        };
        s.settings.allowed_ips = vec![host(i)];
        s
    }

    fn upsert(i: u32) -> PeerChange {
        PeerChange::Upsert(spec(i))
    }

    #[test]
    fn ten_thousand_upserts_in_one_batch_route_to_each_peer() {
        const N: u32 = 10_000;
        let core = Core::new("t0", Settings::default());
        core.set_private_key(Some(Key([0x42; 32])));
        let t = Instant::now();
        let done = core.apply_peer_changes((0..N).map(upsert)).unwrap();
        eprintln!(
            "apply_peer_changes: {N} new peers in one batch: {:?}",
            t.elapsed()
        );
        assert_eq!(
            done,
            PeerChanges {
                added: N as usize,
                ..Default::default()
            }
        );
        let peers = core.peers();
        assert_eq!(peers.len(), N as usize);
        let fib = core.fib();
        let allowed = core.allowed.load();
        for i in 0..N {
            let p = peers.by_key(&key(i)).expect("peer exists");
            let addr = host(i).addr();
            assert_eq!(
                fib.lookup(addr),
                Some(NextHop::Peer(p.id)),
                "route of {addr}"
            );
            assert_eq!(
                allowed.lookup(addr),
                Some(NextHop::Peer(p.id)),
                "filter of {addr}"
            );
            assert_eq!(core.route_origin(&host(i)), Some(RouteOrigin::AllowedIps));
        }
        // The same batch again updates every peer and changes no route.
        let t = Instant::now();
        let done = core.apply_peer_changes((0..N).map(upsert)).unwrap();
        eprintln!(
            "apply_peer_changes: {N} unchanged peers in one batch: {:?}",
            t.elapsed()
        );
        assert_eq!(done.updated, N as usize);
        assert_eq!(core.fib().len(), N as usize);
        // One more peer alone: a batch of one.
        let t = Instant::now();
        let id = core.upsert_peer(spec(N)).unwrap();
        eprintln!("upsert_peer: one more peer beside {N}: {:?}", t.elapsed());
        assert_eq!(core.fib().lookup(host(N).addr()), Some(NextHop::Peer(id)));
        let t = Instant::now();
        core.clear_peers();
        eprintln!("clear_peers: {} peers: {:?}", N + 1, t.elapsed());
        assert!(core.peers().is_empty() && core.fib().is_empty());
    }

    #[test]
    fn the_peer_table_stops_at_max_peers_and_what_it_has_keeps_working() {
        use crate::limits::Limit;
        let core = Core::new(
            "t0",
            Settings {
                max_peers: 10,
                ..Settings::default()
            },
        );
        core.set_private_key(Some(Key([0x42; 32])));
        // 100 peers asked for in one batch (ten times the bound): the first 10 are added,
        // the batch stops at the 11th.
        let e = core.apply_peer_changes((0..100).map(upsert)).unwrap_err();
        assert_eq!(e.index, 10);
        assert!(matches!(e.error, CoreError::PeerLimit(10)), "{e}");
        assert!(e.to_string().contains("max_peers"), "{e}");
        assert_eq!(core.peers().len(), 10);
        assert_eq!(core.limits().get(Limit::Peers), 1);
        // One at a time, each refused and counted; the table does not grow.
        for i in 100..190 {
            assert!(matches!(
                core.upsert_peer(spec(i)),
                Err(CoreError::PeerLimit(10))
            ));
        }
        assert_eq!(core.peers().len(), 10);
        assert_eq!(core.limits().get(Limit::Peers), 91);
        let metrics = crate::stats::render(&core.sample(), false);
        for line in [
            "isthmus_limit_reached_total{table=\"peers\"} 91\n",
            "isthmus_limit_reached_total{table=\"handshake_queue\"} 0\n",
            "isthmus_table_entries{table=\"peers\"} 10\n",
            "isthmus_table_limit{table=\"peers\"} 10\n",
        ] {
            assert!(metrics.contains(line), "{line}");
        }
        // A refused peer takes no allowed IP from the peers there.
        let mut thief = spec(500);
        thief.settings.allowed_ips = vec![host(3)];
        assert!(core.upsert_peer(thief).is_err());
        let p3 = core.peers().by_key(&key(3)).unwrap().id;
        assert_eq!(core.fib().lookup(host(3).addr()), Some(NextHop::Peer(p3)));
        assert_eq!(
            core.peers().by_key(&key(3)).unwrap().settings().allowed_ips,
            [host(3)]
        );
        // The peers there are updated as ever, full table or not.
        let mut s5 = spec(5);
        s5.settings
            .allowed_ips
            .push("10.99.0.0/16".parse().unwrap());
        assert!(core.upsert_peer(s5).is_ok());
        assert_eq!(core.peers().len(), 10);
        // A removal makes room, in the same batch.
        let done = core
            .apply_peer_changes([PeerChange::Remove(key(0)), upsert(200)])
            .unwrap();
        assert_eq!((done.removed, done.added), (1, 1));
        // A lowered bound applies to new peers: none of the 10 goes.
        core.set_settings(Settings {
            max_peers: 4,
            ..Settings::default()
        });
        assert_eq!(core.peers().len(), 10);
        assert!(core.upsert_peer(spec(300)).is_err());
        assert_eq!(core.sample().max_peers, 4);
    }

    #[test]
    fn removed_ids_are_reused_oldest_first_and_not_while_held() {
        let core = Core::new("t0", Settings::default());
        let ids: Vec<_> = (0..4).map(|i| core.upsert_peer(spec(i)).unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        // Ids freed by a batch are not reused in that batch (its tables still name them
        // until it is published).
        core.apply_peer_changes([
            PeerChange::Remove(key(1)),
            PeerChange::Remove(key(0)),
            upsert(10),
        ])
        .unwrap();
        assert_eq!(core.peers().by_key(&key(10)).unwrap().id, 5);
        // Later, oldest freed first, then new ids.
        let ids: Vec<_> = (11..14)
            .map(|i| core.upsert_peer(spec(i)).unwrap())
            .collect();
        assert_eq!(ids, [2, 1, 6]);
        // Not while a reader holds a map in which the id means the removed peer.
        let held = core.peers();
        let gone = std::sync::Arc::downgrade(held.by_key(&key(2)).unwrap());
        assert!(core.remove_peer(&key(2)));
        assert_eq!(core.upsert_peer(spec(20)).unwrap(), 7);
        drop(held);
        // The removed peer is dropped with the last map that has it; its id waits for reuse
        // without it.
        assert!(gone.upgrade().is_none(), "a removed peer is kept alive");
        assert_eq!(core.upsert_peer(spec(21)).unwrap(), 3);
        // Routes follow the new owner of a reused id.
        assert_eq!(core.fib().lookup(host(21).addr()), Some(NextHop::Peer(3)));
        assert_eq!(core.fib().lookup(host(2).addr()), None);
        // Removing and re-adding a key gives it a new id; a removal of nobody is no change.
        assert!(!core.remove_peer(&key(99)));
        core.apply_peer_changes([PeerChange::Remove(key(21)), upsert(21)])
            .unwrap();
        assert_eq!(core.peers().by_key(&key(21)).unwrap().id, 8);
    }

    #[test]
    fn a_batch_stops_at_the_devices_own_key() {
        let core = Core::new("t0", Settings::default());
        let private = Key([0x42; 32]);
        core.set_private_key(Some(private));
        let own = private.public_key();
        let err = core
            .apply_peer_changes([
                upsert(1),
                PeerChange::Upsert(PeerSpec {
                    public_key: own,
                    ..Default::default()
                }),
                upsert(2),
            ])
            .unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.public_key, own);
        assert!(matches!(err.error, CoreError::OwnKey));
        assert!(
            err.to_string().contains(&crate::tunnel::key_b64(&own)),
            "{err}"
        );
        // The change before it is applied and routed; the one after it is not.
        let peers = core.peers();
        assert_eq!(peers.len(), 1);
        let p = peers.by_key(&key(1)).unwrap();
        assert_eq!(core.fib().lookup(host(1).addr()), Some(NextHop::Peer(p.id)));
        assert!(peers.by_key(&key(2)).is_none());
        assert_eq!(core.fib().lookup(host(2).addr()), None);
        // upsert_peer reports the same error.
        assert!(matches!(
            core.upsert_peer(PeerSpec {
                public_key: own,
                ..Default::default()
            }),
            Err(CoreError::OwnKey)
        ));
    }

    #[test]
    fn an_allowed_ip_set_on_another_peer_moves_to_it_and_is_not_given_back() {
        let core = Core::new("t0", Settings::default());
        core.set_private_key(Some(Key([0x42; 32])));
        let shared: IpNet = "10.9.0.0/24".parse().unwrap();
        let wider: IpNet = "10.9.0.0/16".parse().unwrap();
        let mut a = spec(1);
        a.settings.allowed_ips = vec![host(1), shared, wider];
        core.apply_peer_changes([PeerChange::Upsert(a)]).unwrap();
        let mut b = spec(2);
        b.settings.allowed_ips = vec![host(2), shared];
        core.apply_peer_changes([PeerChange::Upsert(b.clone())])
            .unwrap();
        let peers = core.peers();
        let (pa, pb) = (
            peers.by_key(&key(1)).unwrap(),
            peers.by_key(&key(2)).unwrap(),
        );
        // A keeps what B did not take (the wider prefix is another prefix).
        assert_eq!(pa.settings().allowed_ips, vec![host(1), wider]);
        assert_eq!(pb.settings().allowed_ips, vec![host(2), shared]);
        let inside = "10.9.0.7".parse().unwrap();
        assert_eq!(
            core.allowed.load().lookup(inside),
            Some(NextHop::Peer(pb.id))
        );
        assert_eq!(core.fib().lookup(inside), Some(NextHop::Peer(pb.id)));
        // B lets it go: it is not A's again (the wider prefix now covers the address).
        b.settings.allowed_ips = vec![host(2)];
        core.apply_peer_changes([PeerChange::Upsert(b)]).unwrap();
        assert_eq!(
            core.peers().by_key(&key(1)).unwrap().settings().allowed_ips,
            vec![host(1), wider]
        );
        assert_eq!(core.route_origin(&shared), None);
        assert_eq!(
            core.allowed.load().lookup(inside),
            Some(NextHop::Peer(pa.id))
        );
    }
}
