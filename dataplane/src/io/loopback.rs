//! The loopback backend: several data planes wired together in memory.
//!
//! Each node has a UDP address on a virtual underlay and a virtual TUN. Datagrams a node
//! sends are copied into the receive batch of the node that owns the destination address;
//! packets a node writes to its TUN are collected. Everything runs on the caller's thread,
//! deterministically, so tests and benchmarks drive the whole pipeline without namespaces.
//! Each node's side of the wire is a [`Backend`] like any other; the network polls the
//! nodes one after another instead of running a worker loop per node.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::buf::{Batch, SLOT_SIZE};
use crate::forward::{Core, Sink, Worker};
use crate::io::backend::{Backend, Polled};

/// One data plane on the virtual network.
pub struct Node {
    /// Its shared state (configure peers and keys here).
    pub core: Arc<Core>,
    /// Its underlay address.
    pub addr: SocketAddr,
    worker: Worker,
    udp_in: Batch,
    tun_in: Batch,
    mesh_in: Vec<Vec<u8>>,
    /// Packets written to this node's TUN (kept only when `keep_tun` is set).
    pub tun_delivered: Vec<Vec<u8>>,
    /// Count of packets written to this node's TUN.
    pub tun_count: u64,
    /// Keep copies of TUN packets in `tun_delivered`.
    pub keep_tun: bool,
    /// Mesh interfaces this node sends to itself (as the AF_XDP backend does): index and
    /// MTU. Packets for neighbours on other interfaces go to the TUN.
    pub mesh_links: Vec<(u32, u16)>,
    /// Packets sent to mesh neighbours: interface, neighbour, packet.
    pub mesh_delivered: Vec<(u32, IpAddr, Vec<u8>)>,
}

/// Datagrams in flight: (from, to, bytes in a reusable buffer, length). Buffers are boxed so
/// that moving them between the queue and the spare list moves a pointer, not 2 KiB.
#[allow(clippy::vec_box)]
struct Wire {
    queue: VecDeque<(SocketAddr, SocketAddr, Box<[u8; SLOT_SIZE]>, usize)>,
    spare: Vec<Box<[u8; SLOT_SIZE]>>,
    /// Datagrams to unknown addresses.
    lost: u64,
}

struct NodeSink<'a> {
    from: SocketAddr,
    wire: &'a mut Wire,
    tun_delivered: &'a mut Vec<Vec<u8>>,
    tun_count: &'a mut u64,
    keep_tun: bool,
    mesh_links: &'a [(u32, u16)],
    mesh_delivered: &'a mut Vec<(u32, IpAddr, Vec<u8>)>,
}

impl Sink for NodeSink<'_> {
    fn send_udp(&mut self, batch: &mut Batch) -> usize {
        for s in batch.used() {
            let Some(to) = s.addr else { continue };
            let mut buf = self
                .wire
                .spare
                .pop()
                .unwrap_or_else(|| Box::new([0; SLOT_SIZE]));
            buf[..s.len].copy_from_slice(s.data());
            self.wire.queue.push_back((self.from, to, buf, s.len));
        }
        batch.clear();
        0
    }

    fn write_tun(&mut self, batch: &mut Batch) {
        for s in batch.used() {
            match s.neighbour {
                Some((ifindex, addr)) => {
                    self.mesh_delivered.push((ifindex, addr, s.data().to_vec()));
                }
                None => {
                    *self.tun_count += 1;
                    if self.keep_tun {
                        self.tun_delivered.push(s.data().to_vec());
                    }
                }
            }
        }
        batch.clear();
    }

    fn mesh_link(&mut self, ifindex: u32, _addr: IpAddr) -> Option<u16> {
        self.mesh_links.iter().find(|l| l.0 == ifindex).map(|l| l.1)
    }
}

/// One node's side of the wire, as a backend: its receive batches in, its sends onto the
/// wire and its TUN writes into the node's records.
struct Port<'a> {
    udp_in: &'a mut Batch,
    tun_in: &'a mut Batch,
    mesh_in: &'a mut Vec<Vec<u8>>,
    sink: NodeSink<'a>,
}

impl Backend for Port<'_> {
    fn poll(
        &mut self,
        worker: &mut Worker,
        _timeout: std::time::Duration,
    ) -> std::io::Result<Polled> {
        let mut polled = Polled::Idle;
        if !self.udp_in.is_empty() {
            worker.handle_datagrams(self.udp_in, &mut self.sink);
            polled = Polled::Busy;
        }
        if !self.tun_in.is_empty() {
            worker.handle_tun(self.tun_in, &mut self.sink);
            polled = Polled::Busy;
        }
        if !self.mesh_in.is_empty() {
            worker.handle_mesh(
                self.mesh_in.iter_mut().map(Vec::as_mut_slice),
                &mut self.sink,
            );
            self.mesh_in.clear();
            polled = Polled::Busy;
        }
        Ok(polled)
    }
}

/// Hand a node's pending input to its worker, through its [`Port`].
fn poll_node(node: &mut Node, wire: &mut Wire) {
    let Node {
        addr,
        worker,
        udp_in,
        tun_in,
        tun_delivered,
        tun_count,
        keep_tun,
        mesh_links,
        mesh_delivered,
        mesh_in,
        ..
    } = node;
    let mut port = Port {
        udp_in,
        tun_in,
        mesh_in,
        sink: NodeSink {
            from: *addr,
            wire,
            tun_delivered,
            tun_count,
            keep_tun: *keep_tun,
            mesh_links,
            mesh_delivered,
        },
    };
    let _ = port.poll(worker, std::time::Duration::ZERO);
}

/// Run `f` with a node's worker and a sink onto the wire and the node's outputs (for the
/// timers, which take no input).
fn with_worker(node: &mut Node, wire: &mut Wire, f: impl FnOnce(&mut Worker, &mut NodeSink<'_>)) {
    let mut sink = NodeSink {
        from: node.addr,
        wire,
        tun_delivered: &mut node.tun_delivered,
        tun_count: &mut node.tun_count,
        keep_tun: node.keep_tun,
        mesh_links: &node.mesh_links,
        mesh_delivered: &mut node.mesh_delivered,
    };
    f(&mut node.worker, &mut sink);
}

/// A virtual underlay joining several nodes.
pub struct LoopbackNet {
    /// The nodes, in creation order.
    pub nodes: Vec<Node>,
    wire: Wire,
}

impl Default for LoopbackNet {
    fn default() -> Self {
        Self::new()
    }
}

impl LoopbackNet {
    /// An empty network.
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            wire: Wire {
                queue: VecDeque::new(),
                spare: Vec::new(),
                lost: 0,
            },
        }
    }

    /// Add a node with this core at this underlay address; returns its index.
    pub fn add(&mut self, core: Arc<Core>, addr: SocketAddr) -> usize {
        self.nodes.push(Node {
            worker: Worker::new(core.clone()),
            core,
            addr,
            udp_in: Batch::default(),
            tun_in: Batch::default(),
            mesh_in: Vec::new(),
            tun_delivered: Vec::new(),
            tun_count: 0,
            keep_tun: true,
            mesh_links: Vec::new(),
            mesh_delivered: Vec::new(),
        });
        self.nodes.len() - 1
    }

    /// Datagrams sent to addresses no node has.
    pub fn lost(&self) -> u64 {
        self.wire.lost
    }

    /// Inject a raw datagram onto the wire (to test bad input).
    pub fn inject_datagram(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let mut buf = Box::new([0; SLOT_SIZE]);
        let n = bytes.len().min(SLOT_SIZE);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.wire.queue.push_back((from, to, buf, n));
    }

    /// A copy of every datagram currently in flight (to capture and replay).
    pub fn in_flight(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.wire
            .queue
            .iter()
            .map(|(f, t, b, n)| (*f, *t, b[..*n].to_vec()))
            .collect()
    }

    /// Write an IP packet into node `i`'s TUN (as if the kernel routed it there) and process
    /// it.
    pub fn send_from_tun(&mut self, i: usize, packet: &[u8]) {
        let node = &mut self.nodes[i];
        if let Some(s) = node.tun_in.next_free() {
            s.fill(packet, None);
            node.tun_in.commit();
        }
        if node.tun_in.is_full() {
            self.flush_tun(i);
        }
    }

    /// An IP packet arrives at node `i` from a mesh interface (as the AF_XDP mesh program
    /// redirects one) and is processed.
    pub fn send_from_mesh(&mut self, i: usize, packet: &[u8]) {
        self.nodes[i].mesh_in.push(packet.to_vec());
        poll_node(&mut self.nodes[i], &mut self.wire);
    }

    /// Process node `i`'s pending TUN input.
    pub fn flush_tun(&mut self, i: usize) {
        poll_node(&mut self.nodes[i], &mut self.wire);
    }

    /// Run every node's timers once.
    pub fn tick(&mut self) {
        for node in &mut self.nodes {
            with_worker(node, &mut self.wire, |w, sink| w.tick(sink));
        }
    }

    /// Run every node's liveness probes once, at `now` (each node keeps its own probe
    /// state in `probes`, by index).
    pub fn probe(&mut self, probes: &mut Vec<crate::forward::Probes>, now: std::time::Instant) {
        probes.resize_with(self.nodes.len(), Default::default);
        for (node, probes) in self.nodes.iter_mut().zip(probes.iter_mut()) {
            with_worker(node, &mut self.wire, |w, sink| {
                w.probe(probes, now, sink);
            });
        }
    }

    /// Drop everything in flight (a cut link); returns how many datagrams.
    pub fn cut(&mut self) -> usize {
        let n = self.wire.queue.len();
        self.wire.queue.clear();
        n
    }

    /// Deliver datagrams until the wire is quiet (or `max_rounds` passes). Returns the number
    /// of datagrams delivered.
    pub fn run(&mut self, max_rounds: usize) -> usize {
        let mut delivered = 0;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].tun_in.is_empty() {
                self.flush_tun(i);
            }
        }
        for _ in 0..max_rounds {
            if self.wire.queue.is_empty() {
                break;
            }
            // Move everything in flight into the receivers' batches, then process.
            while let Some((from, to, buf, n)) = self.wire.queue.pop_front() {
                match self.nodes.iter_mut().position(|nd| nd.addr == to) {
                    Some(j) => {
                        let node = &mut self.nodes[j];
                        if node.udp_in.is_full() {
                            self.wire.queue.push_front((from, to, buf, n));
                            break;
                        }
                        if let Some(s) = node.udp_in.next_free() {
                            s.buf_mut()[..n].copy_from_slice(&buf[..n]);
                            s.len = n;
                            s.addr = Some(from);
                            s.truncated = false;
                            node.udp_in.commit();
                        }
                        delivered += 1;
                    }
                    None => self.wire.lost += 1,
                }
                self.wire.spare.push(buf);
            }
            for node in &mut self.nodes {
                poll_node(node, &mut self.wire);
            }
        }
        delivered
    }
}
