//! The control channel on a device: peers, routes and counters for `isthmusctl` and
//! isthmus-cp, FIB pushes from isthmus-cp, injected packets, and the core's events.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use super::{Device, RealSink};
use crate::forward::Worker;
use crate::io::udp::MmsgScratch;

/// The control channel's view of a device.
struct CtlGlue {
    dev: Arc<Device>,
    inject: Mutex<(Worker, MmsgScratch)>,
}

impl crate::ctl::server::CtlBackend for CtlGlue {
    fn hello(&self) -> (String, Option<crate::keys::Key>) {
        (self.dev.ifname.clone(), self.dev.core.public_key())
    }

    fn peers(&self) -> Vec<crate::tunnel::PeerInfo> {
        self.dev.core.peers().iter().map(|p| p.info()).collect()
    }

    fn routes(&self) -> Vec<crate::ctl::proto::RouteInfo> {
        use crate::ctl::proto::RouteInfo;
        let peers = self.dev.core.peers();
        let mut out: Vec<RouteInfo> = self
            .dev
            .core
            .fib_routes()
            .into_iter()
            .filter_map(|(r, origin)| {
                Some(RouteInfo {
                    prefix: r.prefix,
                    next_hop: peers.via(r.next_hop)?,
                    origin,
                })
            })
            .collect();
        out.sort_by_key(|r| r.prefix);
        out
    }

    fn stats(&self) -> Vec<(String, u64)> {
        let t = self.dev.core.totals();
        let mut v = Vec::new();
        for p in crate::stats::Path::ALL {
            v.push((format!("forwarded_{}", p.label()), t.forwarded_on(p)));
        }
        for r in crate::stats::DropReason::ALL {
            v.push((format!("drop_{}", r.label()), t.dropped(r)));
        }
        let minute = self.dev.drops_last_minute();
        for (r, n) in crate::stats::DropReason::ALL.iter().zip(minute) {
            v.push((format!("minute_drop_{}", r.label()), n));
        }
        v.push(("fib_stale".into(), u64::from(self.dev.core.fib_stale())));
        for (l, n) in self.dev.core.limits().all() {
            v.push((format!("limit_{}", l.label()), n));
        }
        v.push(("icmp_sent".into(), t.icmp_sent));
        v.push(("icmp_ratelimited".into(), t.icmp_ratelimited));
        v.push(("fragmented".into(), t.fragmented));
        v.push(("fragments".into(), t.fragments));
        v.push(("cookies_sent".into(), t.cookies_sent));
        v.push(("mss_clamped".into(), t.mss_clamped));
        v.push(("xdp_rx".into(), t.xdp_rx));
        v.push(("xdp_tx".into(), t.xdp_tx));
        v.push(("xdp_neigh_fallback".into(), t.xdp_neigh_fallback));
        for r in crate::stats::XskDrop::ALL {
            v.push((
                format!("xdp_kernel_drop_{}", r.label()),
                t.xdp_kernel_drops[r as usize],
            ));
        }
        v
    }

    fn fib_snapshot(&self, routes: Vec<crate::ctl::proto::CtlRoute>) -> Result<(), String> {
        self.dev
            .core
            .set_control_routes(routes.iter().map(|r| (r.prefix, r.next_hop)).collect());
        Ok(())
    }

    fn fib_update(
        &self,
        add: Vec<crate::ctl::proto::CtlRoute>,
        remove: Vec<ipnet::IpNet>,
    ) -> Result<(), String> {
        self.dev.core.update_control_routes(
            add.iter().map(|r| (r.prefix, r.next_hop)).collect(),
            &remove,
        );
        Ok(())
    }

    fn inject(&self, peer: crate::keys::Key, packet: Vec<u8>) -> Result<(), String> {
        let socks = self.dev.sockets.load_full();
        let Some(s) = socks.first() else {
            return Err("no UDP socket bound".into());
        };
        let mut g = self
            .inject
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (worker, scratch) = &mut *g;
        let counters = worker.counters();
        let mut sink = RealSink {
            udp_fd: s.as_raw_fd(),
            tun: None,
            scratch,
            counters: &counters,
            xdp: None,
        };
        if worker.inject(&peer, &packet, &mut sink) {
            Ok(())
        } else {
            Err("no such peer".into())
        }
    }

    fn reload(&self) -> Result<(), String> {
        self.dev.reload().map(|_| ())
    }

    fn max_clients(&self) -> usize {
        self.dev.local.control_clients
    }

    fn max_message(&self) -> usize {
        self.dev.local.control_message
    }

    fn limit_reached(&self, limit: crate::limits::Limit) {
        self.dev.core.limits().hit(limit);
    }

    fn disconnected(&self, was_subscriber: bool) {
        if was_subscriber {
            // The control plane went away: keep forwarding on its routes, marked stale,
            // until it comes back with a fresh snapshot.
            self.dev.core.set_fib_stale(true);
        }
    }
}

/// Serve the control channel of `dev` at `path`, and route the core's events (handshakes,
/// roaming, punted Babel packets) to its subscribers.
pub fn serve_ctl(
    dev: &Arc<Device>,
    path: &std::path::Path,
) -> io::Result<crate::ctl::server::CtlServer> {
    use crate::ctl::proto::{Msg, PeerEvent};
    use crate::forward::CoreEvent;
    let bus = crate::ctl::server::EventBus::new();
    let b = bus.clone();
    dev.core.set_event_sink(Arc::new(move |ev| {
        if !b.has_subscribers() {
            return false;
        }
        b.publish(match ev {
            CoreEvent::HandshakeUp(peer) => Msg::Event(PeerEvent::HandshakeUp { peer }),
            CoreEvent::EndpointChanged(peer, endpoint) => {
                Msg::Event(PeerEvent::EndpointChanged { peer, endpoint })
            }
            CoreEvent::Punt(peer, packet) => Msg::Punt { peer, packet },
            CoreEvent::PeerAdded(peer) => Msg::Event(PeerEvent::Added { peer }),
            CoreEvent::PeerChanged(peer) => Msg::Event(PeerEvent::Changed { peer }),
            CoreEvent::PeerRemoved(peer) => Msg::Event(PeerEvent::Removed { peer }),
            CoreEvent::PeerUp(peer) => Msg::Event(PeerEvent::Up { peer }),
            CoreEvent::PeerDown(peer) => Msg::Event(PeerEvent::Down { peer }),
        })
    }));
    let glue = Arc::new(CtlGlue {
        dev: dev.clone(),
        inject: Mutex::new((Worker::new(dev.core.clone()), MmsgScratch::default())),
    });
    crate::ctl::server::serve(path, glue, bus)
}
