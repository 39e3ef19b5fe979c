//! Bounds on the tables that neighbours can grow: neighbours (in all and per link), their
//! packet counters (RFC 8967), learned routes, sources, seqno requests in flight and urgent
//! updates being resent. At a bound the new entry is refused, never an old one evicted (as
//! babeld and BIRD's limits do): what the node has keeps working, and the refusal is counted
//! in [`super::Counters::limit_reached`] for the driver to export and log.

/// A bounded table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Neighbours on all links together (`max_neighbours`).
    Neighbours,
    /// Neighbours on one link (`max_neighbours_per_link`).
    LinkNeighbours,
    /// Packet counters of neighbours on links with MAC keys (`max_neighbours`).
    AuthPeers,
    /// Learned routes, one per prefix and neighbour (`max_routes`).
    Routes,
    /// The source table, one entry per prefix and router-id advertised (`max_sources`).
    Sources,
    /// Seqno requests in flight, originated or forwarded (`max_pending_requests`).
    Requests,
    /// Urgent updates being resent, one per link and prefix (`max_resend`).
    Resends,
}

impl Table {
    /// Every table, in the order of [`super::Counters::limit_reached`].
    pub const ALL: [Table; 7] = [
        Table::Neighbours,
        Table::LinkNeighbours,
        Table::AuthPeers,
        Table::Routes,
        Table::Sources,
        Table::Requests,
        Table::Resends,
    ];

    /// Number of tables.
    pub const COUNT: usize = Self::ALL.len();

    /// Its name in metrics (`table` label) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Neighbours => "neighbours",
            Table::LinkNeighbours => "neighbours_per_link",
            Table::AuthPeers => "auth_peers",
            Table::Routes => "routes",
            Table::Sources => "sources",
            Table::Requests => "pending_requests",
            Table::Resends => "resend",
        }
    }

    /// The configuration key (in `[babel]`) that bounds it.
    pub fn key(self) -> &'static str {
        match self {
            Table::Neighbours | Table::AuthPeers => "max_neighbours",
            Table::LinkNeighbours => "max_neighbours_per_link",
            Table::Routes => "max_routes",
            Table::Sources => "max_sources",
            Table::Requests => "max_pending_requests",
            Table::Resends => "max_resend",
        }
    }
}

/// The bounds. A bound lowered on a running node applies to new entries: the entries over it
/// stay until they go by themselves (a neighbour's hellos stop, a route expires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Neighbours on all links together; also the packet counters kept on links with keys.
    pub neighbours: usize,
    /// Neighbours on one link: a flood of Hellos from made-up addresses on one mesh
    /// interface fills this, not the node's whole table.
    pub neighbours_per_link: usize,
    /// Learned routes (one per prefix and neighbour that announced it).
    pub routes: usize,
    /// Source table entries. A prefix whose source cannot be recorded is not advertised
    /// (advertising it unrecorded would void the feasibility condition); our own prefixes
    /// are advertised all the same.
    pub sources: usize,
    /// Seqno requests in flight (originated and forwarded); a request over the bound is
    /// not sent or forwarded.
    pub pending_requests: usize,
    /// Urgent updates being made reliable; an urgent update over the bound is sent once,
    /// not resent.
    pub resend: usize,
}

impl Limits {
    /// Default of [`Limits::neighbours`].
    pub const NEIGHBOURS: usize = 16_384;
    /// Default of [`Limits::neighbours_per_link`].
    pub const NEIGHBOURS_PER_LINK: usize = 256;
    /// Default of [`Limits::routes`].
    pub const ROUTES: usize = 250_000;
    /// Default of [`Limits::sources`].
    pub const SOURCES: usize = 250_000;
    /// Default of [`Limits::pending_requests`].
    pub const PENDING_REQUESTS: usize = 8_192;
    /// Default of [`Limits::resend`].
    pub const RESEND: usize = 65_536;

    /// The bound of `table`.
    pub fn of(&self, table: Table) -> usize {
        match table {
            Table::Neighbours | Table::AuthPeers => self.neighbours,
            Table::LinkNeighbours => self.neighbours_per_link,
            Table::Routes => self.routes,
            Table::Sources => self.sources,
            Table::Requests => self.pending_requests,
            Table::Resends => self.resend,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            neighbours: Self::NEIGHBOURS,
            neighbours_per_link: Self::NEIGHBOURS_PER_LINK,
            routes: Self::ROUTES,
            sources: Self::SOURCES,
            pending_requests: Self::PENDING_REQUESTS,
            resend: Self::RESEND,
        }
    }
}
