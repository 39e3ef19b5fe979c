//! Reconciliation: keeping a route table equal to the routes the Babel router selected, across
//! restarts of `isthmus-cp`, without a flush and without a gap (non-stop forwarding).
//!
//! Sans I/O, like the Babel core: the clock is an argument, timers are data
//! ([`Reconciler::poll_timeout`]), the table sits behind [`RouteTable`] (as babeld's kernel sits
//! behind `kernel.h`), and what happened comes out as [`Report`]s for the daemon to log. The
//! daemon has one [`Reconciler`] per table: the data plane's FIB (over the control channel) and
//! the kernel's routing table (over rtnetlink); the tests here drive it with a mocked table.
//!
//! A reconciler goes through four [`Phase`]s:
//!
//! - [`Phase::Holding`], the start-up hold (two hello intervals and a second): nothing is
//!   written. The routes a previous run left in the table ([`Reconciler::found`]) stay where
//!   they are while the neighbours send their tables again.
//! - [`Phase::Merged`], from the end of the hold: the table is made equal to the selected routes
//!   plus the previous run's routes that were not relearned (kept, stale), in one step where the
//!   table has one (the data plane's snapshot, which also ends its stale mark), otherwise by the
//!   difference, installations before removals. Changes then go out incrementally; a prefix that
//!   changes is exact from then on, stale or not.
//! - [`Phase::Synced`], after the clean-up delay (neighbours resend everything within
//!   max(update, IHU interval) + hello): the stale leftovers are removed, and from then on the
//!   table holds exactly the selected routes.
//! - [`Phase::Stopped`]: with `retract`, every route of ours the table holds is removed;
//!   without, the table keeps everything (non-stop forwarding) and the next run finds it.
//!
//! A table that cannot be reached (the data plane's control channel is down) gets nothing, and
//! when it is back it gets the whole table again. A change the table refuses is reported with
//! its route; the reconciler then still believes what the table holds, so the change is tried
//! again the next time its prefix changes, and at the clean-up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use isthmus_dataplane::ctl::proto::CtlRoute;

use crate::kernel::KernelRoute;

/// A route as one table stores it.
pub trait TableRoute: Copy + Eq + fmt::Debug {
    /// Its destination.
    fn prefix(&self) -> IpNet;

    /// Whether installing `self` overwrites `other` in the table, rather than adding a route
    /// next to it: the table's key for a route is the same.
    fn overwrites(&self, other: &Self) -> bool;
}

/// The kernel's key for a route is (table, prefix, TOS, metric): a route with another metric
/// goes in next to the old one.
impl TableRoute for KernelRoute {
    fn prefix(&self) -> IpNet {
        self.prefix
    }

    fn overwrites(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.metric == other.metric
    }
}

/// The data plane holds one control-plane route per prefix.
impl TableRoute for CtlRoute {
    fn prefix(&self) -> IpNet {
        self.prefix
    }

    fn overwrites(&self, other: &Self) -> bool {
        self.prefix == other.prefix
    }
}

/// One change to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp<R> {
    /// Install the route, overwriting the route of ours with the same key.
    Replace(R),
    /// Remove the route.
    Remove(R),
}

impl<R> RouteOp<R> {
    /// The route it installs or removes.
    pub fn route(&self) -> &R {
        match self {
            Self::Replace(r) | Self::Remove(r) => r,
        }
    }
}

/// Why a table did not take a change.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The table cannot be reached (the data plane's control channel is down): nothing of this
    /// call was applied, and the table is out of step until it is reached again.
    #[error("{0}")]
    Unreachable(String),
    /// The table refused this change (the kernel's error names the route).
    #[error(transparent)]
    Refused(#[from] io::Error),
}

/// A table of routes we own a part of: the kernel's routing table (rtnetlink), the data plane's
/// FIB (the control channel), or a mock in tests. The one seam between reconciliation and I/O.
pub trait RouteTable {
    /// A route as this table stores it.
    type Route: TableRoute;

    /// Applies `ops` in order and answers one result per op.
    fn apply(&mut self, ops: &[RouteOp<Self::Route>]) -> Vec<Result<(), TableError>>;

    /// Replaces every route of ours in the table by `routes` in one step, if the table has such
    /// a step (the data plane's snapshot); `None` if it has not (the kernel), and then the
    /// reconciler applies the difference with [`RouteTable::apply`].
    fn replace_all(&mut self, routes: &[Self::Route]) -> Option<Result<(), TableError>> {
        let _ = routes;
        None
    }
}

/// How long the phases last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The start-up hold: nothing is written before it ends.
    pub hold: Duration,
    /// From the end of the hold until a previous run's routes that were not relearned go.
    pub cleanup: Duration,
}

/// Where a [`Reconciler`] is in its life (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Start-up hold: nothing written, a previous run's routes kept.
    Holding,
    /// Selected routes pushed, merged with a previous run's not relearned yet.
    Merged,
    /// The table holds exactly the selected routes.
    Synced,
    /// Shut down: retracted, or left as it was.
    Stopped,
}

/// Something the daemon should know (and log).
#[derive(Debug)]
pub enum Report<R> {
    /// The table was replaced in one step by this many routes.
    Replaced {
        /// Routes in the table now.
        routes: usize,
    },
    /// End of the hold for a table without a whole-table step: what it held, what changed.
    Reconciled {
        /// Routes a previous run left ([`Reconciler::found`]).
        found: usize,
        /// Changes applied (installations and removals).
        changes: usize,
        /// A previous run's routes kept until the clean-up.
        kept: usize,
        /// Changes the table refused.
        failed: usize,
    },
    /// The clean-up: this many routes of a previous run were not relearned and are gone.
    CleanedUp {
        /// Routes removed.
        removed: usize,
    },
    /// The table refused a change; it keeps what it had for that prefix.
    Failed {
        /// The change.
        op: RouteOp<R>,
        /// The table's answer.
        error: TableError,
    },
    /// The table refused to be replaced in one step.
    ReplaceFailed {
        /// Routes that were to replace its own.
        routes: usize,
        /// The table's answer.
        error: TableError,
    },
    /// The table went out of reach; it gets the whole table when it is back.
    Lost {
        /// Why.
        error: TableError,
    },
}

/// Counters of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Replacements of the whole table (data plane snapshots).
    pub replaced: u64,
    /// Batches of changes applied (data plane updates).
    pub batches: u64,
    /// Changes and replacements the table refused.
    pub errors: u64,
}

/// Keeps one table equal to the routes we want (see the module documentation).
#[derive(Debug)]
pub struct Reconciler<R: TableRoute> {
    phase: Phase,
    sync_at: Instant,
    cleanup_at: Instant,
    /// What the table should hold, by prefix.
    wanted: BTreeMap<IpNet, R>,
    /// What the table holds of ours, as far as we know: normally one route per prefix, but a
    /// previous run (or version) may have left several.
    held: BTreeMap<IpNet, Vec<R>>,
    /// The routes a previous run left, until the clean-up; a prefix leaves when it changes after
    /// the hold (it is exact from then on).
    previous: BTreeMap<IpNet, Vec<R>>,
    /// How many routes [`Reconciler::found`] was given last.
    found: usize,
    /// Prefixes changed since the last push.
    dirty: BTreeSet<IpNet>,
    /// Whether the table can be written to now.
    reachable: bool,
    stats: TableStats,
    reports: VecDeque<Report<R>>,
}

/// The changes that make a table holding `held` (for one prefix) hold `want`: installations
/// first, then removals of what the installations did not overwrite.
fn diff<R: TableRoute>(want: &[R], held: &[R], ops: &mut Vec<RouteOp<R>>) {
    for w in want {
        // Held alone under its key, or one of several routes under it (the next hops of a
        // multipath route): then installing it makes it the only one.
        let alone = held.contains(w) && !held.iter().any(|h| h != w && w.overwrites(h));
        if !alone {
            ops.push(RouteOp::Replace(*w));
        }
    }
    for h in held {
        if !want.contains(h) && !want.iter().any(|w| w.overwrites(h)) {
            ops.push(RouteOp::Remove(*h));
        }
    }
}

/// Installations before removals (stable), so that a route is never missing.
fn order<R>(ops: &mut [RouteOp<R>]) {
    ops.sort_by_key(|op| matches!(op, RouteOp::Remove(_)));
}

fn by_prefix<R: TableRoute>(routes: impl IntoIterator<Item = R>) -> BTreeMap<IpNet, Vec<R>> {
    let mut m: BTreeMap<IpNet, Vec<R>> = BTreeMap::new();
    for r in routes {
        let v = m.entry(r.prefix()).or_default();
        if !v.contains(&r) {
            v.push(r);
        }
    }
    m
}

impl<R: TableRoute> Reconciler<R> {
    /// A reconciler started at `now`, holding; its table is out of reach until
    /// [`Reconciler::connected`].
    #[must_use]
    pub fn new(now: Instant, timing: Timing) -> Self {
        Self {
            phase: Phase::Holding,
            sync_at: now + timing.hold,
            cleanup_at: now + timing.hold + timing.cleanup,
            wanted: BTreeMap::new(),
            held: BTreeMap::new(),
            previous: BTreeMap::new(),
            found: 0,
            dirty: BTreeSet::new(),
            reachable: false,
            stats: TableStats::default(),
            reports: VecDeque::new(),
        }
    }

    /// Where it is.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// The routes we want in the table.
    pub fn wanted(&self) -> impl Iterator<Item = &R> + '_ {
        self.wanted.values()
    }

    /// The routes of ours the table holds, as far as we know.
    pub fn held(&self) -> impl Iterator<Item = &R> + '_ {
        self.held.values().flatten()
    }

    /// How many routes of ours the table holds, as far as we know.
    #[must_use]
    pub fn held_count(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    /// When [`Reconciler::poll`] has something to do without any input: the end of the hold,
    /// then the clean-up.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Holding => Some(self.sync_at),
            Phase::Merged => Some(self.cleanup_at),
            Phase::Synced | Phase::Stopped => None,
        }
    }

    /// The next report, oldest first.
    pub fn poll_report(&mut self) -> Option<Report<R>> {
        self.reports.pop_front()
    }

    /// Whether the routes a previous run left are still of use (until the clean-up): the daemon
    /// asks the data plane for them whenever it connects.
    #[must_use]
    pub fn wants_previous(&self) -> bool {
        matches!(self.phase, Phase::Holding | Phase::Merged)
    }

    /// The routes of ours the table held when we reached it: a previous run's. They are kept
    /// until the clean-up unless relearned. Each call replaces the last one's; after the
    /// clean-up they are of no use and ignored.
    pub fn found(&mut self, routes: impl IntoIterator<Item = R>) {
        if !self.wants_previous() {
            return;
        }
        let routes: Vec<R> = routes.into_iter().collect();
        self.found = routes.len();
        self.previous = by_prefix(routes);
        if self.phase == Phase::Holding {
            // Nothing was written yet: this is what the table holds. Later, what we pushed
            // since is what it holds.
            self.held.clone_from(&self.previous);
        }
    }

    /// The route we want for `prefix` now (`None`: no route). Pushed by the next
    /// [`Reconciler::poll`] after the hold.
    pub fn want(&mut self, prefix: IpNet, route: Option<R>) {
        if self.phase == Phase::Stopped {
            return;
        }
        if let Some(r) = route {
            debug_assert_eq!(r.prefix(), prefix, "a route wanted for another prefix");
        }
        if self.phase == Phase::Merged {
            // Changed after the hold: exact from now on, whatever a previous run left.
            self.previous.remove(&prefix);
        }
        match route {
            Some(r) => self.wanted.insert(prefix, r),
            None => self.wanted.remove(&prefix),
        };
        self.dirty.insert(prefix);
    }

    /// The table lost what it held for `prefix` by itself (the kernel deletes the routes of a
    /// device that goes away): the next push installs the wanted route without removing
    /// anything first.
    pub fn forget(&mut self, prefix: IpNet) {
        self.held.remove(&prefix);
        self.previous.remove(&prefix);
        self.dirty.insert(prefix);
    }

    /// The table can be reached (again). After the hold it gets the whole table at once: it may
    /// have lost everything (the data plane restarted) or kept it (stale).
    pub fn connected<T: RouteTable<Route = R>>(&mut self, table: &mut T) {
        self.reachable = true;
        if matches!(self.phase, Phase::Merged | Phase::Synced) {
            let target = self.target();
            self.resync(table, target, true);
        }
    }

    /// The table cannot be reached any more; what it holds is unknown until it is back.
    pub fn disconnected(&mut self) {
        self.reachable = false;
        self.held.clear();
        self.dirty.clear();
    }

    /// Does what is due at `now`: the end of the hold, pending changes, the clean-up.
    pub fn poll<T: RouteTable<Route = R>>(&mut self, now: Instant, table: &mut T) {
        if self.phase == Phase::Holding && now >= self.sync_at {
            self.end_hold(table);
        }
        if matches!(self.phase, Phase::Merged | Phase::Synced) {
            self.push(table);
        }
        if self.phase == Phase::Merged && now >= self.cleanup_at {
            self.clean_up(table);
        }
    }

    /// Shuts down. With `retract`, every route of ours the table holds goes (a previous run's
    /// too, and during the hold as well); without, the table keeps them all.
    pub fn shut_down<T: RouteTable<Route = R>>(&mut self, retract: bool, table: &mut T) {
        self.phase = Phase::Stopped;
        self.dirty.clear();
        if retract {
            self.wanted.clear();
            self.previous.clear();
            self.resync(table, BTreeMap::new(), true);
        }
    }

    /// What the table should hold as a whole: the wanted routes, and until the clean-up the
    /// previous run's routes for prefixes nobody relearned.
    fn target(&self) -> BTreeMap<IpNet, Vec<R>> {
        let mut target: BTreeMap<IpNet, Vec<R>> =
            self.wanted.iter().map(|(p, r)| (*p, vec![*r])).collect();
        if self.phase == Phase::Merged {
            for (p, rs) in &self.previous {
                target.entry(*p).or_insert_with(|| rs.clone());
            }
        }
        target
    }

    fn end_hold<T: RouteTable<Route = R>>(&mut self, table: &mut T) {
        self.phase = Phase::Merged;
        let target = self.target();
        let kept = self
            .previous
            .iter()
            .filter(|(p, _)| !self.wanted.contains_key(p))
            .map(|(_, rs)| rs.len())
            .sum();
        if let Some((changes, failed)) = self.resync(table, target, true) {
            self.reports.push_back(Report::Reconciled {
                found: self.found,
                changes,
                kept,
                failed,
            });
        }
    }

    fn clean_up<T: RouteTable<Route = R>>(&mut self, table: &mut T) {
        self.phase = Phase::Synced;
        self.previous.clear();
        let removed = self
            .held
            .iter()
            .filter(|(p, _)| !self.wanted.contains_key(p))
            .map(|(_, rs)| rs.len())
            .sum();
        let target = self.target();
        self.resync(table, target, false);
        self.reports.push_back(Report::CleanedUp { removed });
    }

    /// Pushes the changes of the prefixes that changed since the last push.
    fn push<T: RouteTable<Route = R>>(&mut self, table: &mut T) {
        let dirty = std::mem::take(&mut self.dirty);
        if !self.reachable {
            // It gets the whole table when it is back.
            return;
        }
        let mut ops = Vec::new();
        for p in &dirty {
            diff(
                self.wanted
                    .get(p)
                    .map(std::slice::from_ref)
                    .unwrap_or_default(),
                self.held.get(p).map(Vec::as_slice).unwrap_or_default(),
                &mut ops,
            );
        }
        order(&mut ops);
        self.apply(table, ops);
    }

    /// Makes the table hold `target`: in one step if the table has one and `force` is set or
    /// something differs, otherwise by the difference. Returns the number of changes and of
    /// failures when it went by the difference.
    fn resync<T: RouteTable<Route = R>>(
        &mut self,
        table: &mut T,
        target: BTreeMap<IpNet, Vec<R>>,
        force: bool,
    ) -> Option<(usize, usize)> {
        self.dirty.clear();
        if !self.reachable {
            return None;
        }
        let mut ops = Vec::new();
        let prefixes: BTreeSet<IpNet> = target.keys().chain(self.held.keys()).copied().collect();
        for p in &prefixes {
            diff(
                target.get(p).map(Vec::as_slice).unwrap_or_default(),
                self.held.get(p).map(Vec::as_slice).unwrap_or_default(),
                &mut ops,
            );
        }
        if force || !ops.is_empty() {
            let routes: Vec<R> = target.values().flatten().copied().collect();
            match table.replace_all(&routes) {
                None => {}
                Some(Ok(())) => {
                    self.held = target;
                    self.stats.replaced += 1;
                    self.reports.push_back(Report::Replaced {
                        routes: routes.len(),
                    });
                    return None;
                }
                Some(Err(error @ TableError::Unreachable(_))) => {
                    self.lose(error);
                    return None;
                }
                Some(Err(error)) => {
                    self.stats.errors += 1;
                    self.reports.push_back(Report::ReplaceFailed {
                        routes: routes.len(),
                        error,
                    });
                    return None;
                }
            }
        }
        order(&mut ops);
        let changes = ops.len();
        let failed = self.apply(table, ops);
        Some((changes, failed))
    }

    /// Applies `ops` and keeps what the table holds up to date with what it took: the one place
    /// where a table's answers are read. Returns how many ops it refused.
    fn apply<T: RouteTable<Route = R>>(&mut self, table: &mut T, ops: Vec<RouteOp<R>>) -> usize {
        if ops.is_empty() {
            return 0;
        }
        let mut results = table.apply(&ops).into_iter();
        let mut failed = 0;
        let mut lost = None;
        for op in ops {
            let result = results.next().unwrap_or_else(|| {
                Err(TableError::Unreachable(format!(
                    "the table did not answer {op:?}"
                )))
            });
            match result {
                Ok(()) => self.record(op),
                Err(error @ TableError::Unreachable(_)) => {
                    lost.get_or_insert(error);
                }
                Err(error) => {
                    failed += 1;
                    self.stats.errors += 1;
                    self.reports.push_back(Report::Failed { op, error });
                }
            }
        }
        match lost {
            Some(error) => self.lose(error),
            None => self.stats.batches += 1,
        }
        failed
    }

    /// The table took `op`.
    fn record(&mut self, op: RouteOp<R>) {
        match op {
            RouteOp::Replace(w) => {
                let v = self.held.entry(w.prefix()).or_default();
                v.retain(|h| !w.overwrites(h));
                v.push(w);
            }
            RouteOp::Remove(r) => {
                if let Some(v) = self.held.get_mut(&r.prefix()) {
                    v.retain(|h| *h != r);
                    if v.is_empty() {
                        self.held.remove(&r.prefix());
                    }
                }
            }
        }
    }

    fn lose(&mut self, error: TableError) {
        self.disconnected();
        self.reports.push_back(Report::Lost { error });
    }
}

#[cfg(test)]
mod tests {
    //! The reconciler against a mocked table: restart, non-stop forwarding, clean-up,
    //! retraction and failures, without root or namespaces.

    use std::net::IpAddr;

    use isthmus_dataplane::fib::Via;
    use isthmus_dataplane::keys::Key;
    use proptest::prelude::*;

    use super::*;

    const HOLD: Duration = Duration::from_secs(9);
    const CLEANUP: Duration = Duration::from_secs(20);
    const TIMING: Timing = Timing {
        hold: HOLD,
        cleanup: CLEANUP,
    };

    /// What a table was asked to do.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call<R> {
        Apply(Vec<RouteOp<R>>),
        ReplaceAll(Vec<R>),
    }

    /// A table in memory: it holds routes (ours, and perhaps others' that we must never touch),
    /// records every call, refuses ops on chosen prefixes, and can be out of reach. With
    /// `whole`, it replaces all of ours in one step, like the data plane; without, it has only
    /// per-route ops, like the kernel.
    #[derive(Debug)]
    struct MockTable<R> {
        ours: Vec<R>,
        others: Vec<R>,
        whole: bool,
        calls: Vec<Call<R>>,
        refuse: BTreeSet<IpNet>,
        unreachable: bool,
    }

    impl<R: TableRoute> MockTable<R> {
        fn new(whole: bool, ours: &[R]) -> Self {
            // A table holds a route once.
            let mut unique = Vec::new();
            for r in ours {
                if !unique.contains(r) {
                    unique.push(*r);
                }
            }
            Self {
                ours: unique,
                others: Vec::new(),
                whole,
                calls: Vec::new(),
                refuse: BTreeSet::new(),
                unreachable: false,
            }
        }

        /// Ours, sorted by prefix.
        fn holds(&self) -> Vec<R> {
            let mut v = self.ours.clone();
            v.sort_by_key(TableRoute::prefix);
            v
        }

        fn take_calls(&mut self) -> Vec<Call<R>> {
            std::mem::take(&mut self.calls)
        }

        fn holds_prefix(&self, p: IpNet) -> bool {
            self.ours.iter().any(|r| r.prefix() == p)
        }
    }

    impl<R: TableRoute> RouteTable for MockTable<R> {
        type Route = R;

        fn apply(&mut self, ops: &[RouteOp<R>]) -> Vec<Result<(), TableError>> {
            self.calls.push(Call::Apply(ops.to_vec()));
            ops.iter()
                .map(|op| {
                    if self.unreachable {
                        return Err(TableError::Unreachable("mock: out of reach".into()));
                    }
                    if self.refuse.contains(&op.route().prefix()) {
                        return Err(TableError::Refused(io::Error::other(format!(
                            "mock: refused {op:?}"
                        ))));
                    }
                    match *op {
                        RouteOp::Replace(w) => {
                            self.ours.retain(|h| !w.overwrites(h));
                            self.ours.push(w);
                        }
                        RouteOp::Remove(r) => self.ours.retain(|h| *h != r),
                    }
                    Ok(())
                })
                .collect()
        }

        fn replace_all(&mut self, routes: &[R]) -> Option<Result<(), TableError>> {
            if !self.whole {
                return None;
            }
            self.calls.push(Call::ReplaceAll(routes.to_vec()));
            if self.unreachable {
                return Some(Err(TableError::Unreachable("mock: out of reach".into())));
            }
            self.ours = routes.to_vec();
            Some(Ok(()))
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// A kernel route to `prefix` via `gw` with the kernel's default metric for the family.
    fn kr(prefix: &str, gw: &str) -> KernelRoute {
        kr_metric(prefix, gw, if prefix.contains(':') { 1024 } else { 0 })
    }

    fn kr_metric(prefix: &str, gw: &str, metric: u32) -> KernelRoute {
        KernelRoute {
            prefix: net(prefix),
            gateway: Some(gw.parse::<IpAddr>().unwrap()),
            ifindex: 7,
            metric,
        }
    }

    /// A data plane route to `prefix` via peer number `peer`.
    fn fr(prefix: &str, peer: u8) -> CtlRoute {
        CtlRoute {
            prefix: net(prefix),
            next_hop: Via::Peer(Key([peer; 32])),
        }
    }

    fn kernel_with(
        now: Instant,
        previous: &[KernelRoute],
    ) -> (Reconciler<KernelRoute>, MockTable<KernelRoute>) {
        let mut table = MockTable::new(false, previous);
        let mut r = Reconciler::new(now, TIMING);
        r.found(previous.iter().copied());
        r.connected(&mut table);
        (r, table)
    }

    fn fib_with(
        now: Instant,
        previous: &[CtlRoute],
    ) -> (Reconciler<CtlRoute>, MockTable<CtlRoute>) {
        let mut table = MockTable::new(true, previous);
        let mut r = Reconciler::new(now, TIMING);
        r.connected(&mut table);
        // The data plane's answer to GetRoutes comes a little later.
        r.found(previous.iter().copied());
        (r, table)
    }

    fn want<R: TableRoute>(r: &mut Reconciler<R>, route: R) {
        r.want(route.prefix(), Some(route));
    }

    fn reports<R: TableRoute>(r: &mut Reconciler<R>) -> Vec<Report<R>> {
        std::iter::from_fn(|| r.poll_report()).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // --- restart: a previous run's routes -------------------------------------------------

    #[test]
    fn during_the_hold_nothing_is_written_and_a_previous_runs_routes_stay() {
        let t0 = Instant::now();
        let previous = [kr("10.1.0.0/24", "10.0.0.1"), kr("fd01::/64", "fe80::1")];
        let (mut k, mut kt) = kernel_with(t0, &previous);
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1)]);
        // Neighbours are heard again: one route comes back changed, one does not come back.
        want(&mut k, kr("10.1.0.0/24", "10.0.0.2"));
        k.want(net("fd01::/64"), None);
        want(&mut f, fr("10.1.0.0/24", 2));
        for t in [ms(0), ms(1000), HOLD - ms(1)] {
            k.poll(t0 + t, &mut kt);
            f.poll(t0 + t, &mut ft);
        }
        assert_eq!(kt.take_calls(), vec![]);
        assert_eq!(ft.take_calls(), vec![]);
        assert_eq!(kt.holds(), previous);
        assert_eq!(k.phase(), Phase::Holding);
    }

    #[test]
    fn a_restart_that_relearns_every_route_changes_nothing() {
        // kill -9 and restart: the kernel still holds our routes, the neighbours send the
        // same ones again. The namespace test reads "kernel routes reconciled found=2
        // changes=0" in the log.
        let t0 = Instant::now();
        let previous = [kr("10.1.0.0/24", "10.0.0.1"), kr("fd01::/64", "fe80::1")];
        let (mut k, mut kt) = kernel_with(t0, &previous);
        for r in previous {
            want(&mut k, r);
        }
        k.poll(t0 + HOLD, &mut kt);
        assert_eq!(kt.take_calls(), vec![]);
        assert!(matches!(
            reports(&mut k)[..],
            [Report::Reconciled {
                found: 2,
                changes: 0,
                kept: 0,
                failed: 0
            }]
        ));
        assert_eq!(k.phase(), Phase::Merged);
        k.poll(t0 + HOLD + CLEANUP, &mut kt);
        assert_eq!(kt.take_calls(), vec![]);
        assert_eq!(kt.holds(), previous);
        assert_eq!(k.held_count(), 2);
    }

    #[test]
    fn at_the_end_of_the_hold_a_changed_route_is_replaced_in_place_and_the_others_kept() {
        let t0 = Instant::now();
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let b = kr("10.2.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[a, b]);
        let a2 = kr("10.1.0.0/24", "10.0.0.2");
        want(&mut k, a2);
        k.poll(t0 + HOLD, &mut kt);
        // One replace, no flush, no removal: b was not relearned yet but stays.
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Replace(a2)])]
        );
        assert_eq!(kt.holds(), vec![a2, b]);
        assert!(matches!(
            reports(&mut k)[..],
            [Report::Reconciled {
                found: 2,
                changes: 1,
                kept: 1,
                failed: 0
            }]
        ));
    }

    #[test]
    fn a_previous_runs_route_under_another_metric_is_removed_after_its_replacement() {
        let t0 = Instant::now();
        let old = kr_metric("fd01::/64", "fe80::1", 0);
        let (mut k, mut kt) = kernel_with(t0, &[old]);
        let new = kr("fd01::/64", "fe80::1");
        want(&mut k, new);
        k.poll(t0 + HOLD, &mut kt);
        // Another metric is another kernel route: install the new one first, never a gap.
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![
                RouteOp::Replace(new),
                RouteOp::Remove(old)
            ])]
        );
        assert_eq!(kt.holds(), vec![new]);
    }

    #[test]
    fn a_previous_runs_multipath_route_is_replaced_by_the_single_route_relearned() {
        // A multipath route is dumped as one route per next hop, all under one key.
        let t0 = Instant::now();
        let hop1 = kr("10.1.0.0/24", "10.0.0.1");
        let hop2 = kr("10.1.0.0/24", "10.0.0.2");
        let (mut k, mut kt) = kernel_with(t0, &[hop1, hop2]);
        want(&mut k, hop1);
        k.poll(t0 + HOLD, &mut kt);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Replace(hop1)])]
        );
        assert_eq!(kt.holds(), vec![hop1]);
        assert_eq!(k.held_count(), 1);
    }

    #[test]
    fn a_previous_runs_routes_are_merged_into_the_first_snapshot() {
        let t0 = Instant::now();
        // The data plane kept three routes of the previous run.
        let (mut f, mut ft) = fib_with(
            t0,
            &[
                fr("10.1.0.0/24", 1),
                fr("10.2.0.0/24", 1),
                fr("10.3.0.0/24", 1),
            ],
        );
        // Relearned: 10.1 through another peer; new: 10.4; not yet: 10.2 and 10.3.
        want(&mut f, fr("10.1.0.0/24", 2));
        want(&mut f, fr("10.4.0.0/24", 2));
        f.poll(t0 + HOLD, &mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![
                fr("10.1.0.0/24", 2),
                fr("10.2.0.0/24", 1),
                fr("10.3.0.0/24", 1),
                fr("10.4.0.0/24", 2),
            ])]
        );
        assert!(matches!(
            reports(&mut f)[..],
            [Report::Replaced { routes: 4 }]
        ));
        assert_eq!(f.stats().replaced, 1);
    }

    #[test]
    fn the_first_snapshot_goes_out_even_when_the_data_plane_kept_exactly_our_table() {
        // The snapshot also ends the data plane's stale mark.
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1)]);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![fr("10.1.0.0/24", 1)])]
        );
    }

    #[test]
    fn a_previous_runs_routes_are_asked_for_until_the_clean_up_and_ignored_after() {
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[]);
        assert!(f.wants_previous());
        f.poll(t0 + HOLD, &mut ft);
        assert!(f.wants_previous());
        f.poll(t0 + HOLD + CLEANUP, &mut ft);
        assert!(!f.wants_previous());
        ft.take_calls();
        // A late answer changes nothing.
        f.found([fr("10.9.0.0/24", 1)]);
        f.disconnected();
        f.connected(&mut ft);
        assert_eq!(ft.take_calls(), vec![Call::ReplaceAll(vec![])]);
    }

    // --- the clean-up -----------------------------------------------------------------------

    #[test]
    fn stale_routes_leave_after_the_clean_up_delay_and_only_those_not_relearned() {
        let t0 = Instant::now();
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let b = kr("10.2.0.0/24", "10.0.0.1");
        let c = kr("10.3.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[a, b, c]);
        want(&mut k, a);
        k.poll(t0 + HOLD, &mut kt);
        // b is relearned late, after the hold but before the clean-up: no change, it is there.
        want(&mut k, b);
        k.poll(t0 + HOLD + ms(500), &mut kt);
        k.poll(t0 + HOLD + CLEANUP - ms(1), &mut kt);
        assert_eq!(kt.take_calls(), vec![]);
        assert_eq!(kt.holds(), vec![a, b, c]);
        assert_eq!(k.poll_timeout(), Some(t0 + HOLD + CLEANUP));
        k.poll(t0 + HOLD + CLEANUP, &mut kt);
        assert_eq!(kt.take_calls(), vec![Call::Apply(vec![RouteOp::Remove(c)])]);
        assert_eq!(kt.holds(), vec![a, b]);
        assert_eq!(k.phase(), Phase::Synced);
        assert!(matches!(
            reports(&mut k)[..],
            [
                Report::Reconciled { kept: 2, .. },
                Report::CleanedUp { removed: 1 }
            ]
        ));
    }

    #[test]
    fn the_data_plane_is_cleaned_up_with_one_snapshot_of_the_selected_routes() {
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1), fr("10.2.0.0/24", 1)]);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        ft.take_calls();
        f.poll(t0 + HOLD + CLEANUP, &mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![fr("10.1.0.0/24", 1)])]
        );
    }

    #[test]
    fn a_clean_up_with_nothing_stale_writes_nothing() {
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1)]);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        ft.take_calls();
        f.poll(t0 + HOLD + CLEANUP, &mut ft);
        assert_eq!(ft.take_calls(), vec![]);
        assert!(matches!(
            reports(&mut f)[..],
            [Report::Replaced { .. }, Report::CleanedUp { removed: 0 }]
        ));
    }

    #[test]
    fn timers_are_the_end_of_the_hold_then_the_clean_up_then_none() {
        let t0 = Instant::now();
        let (mut k, mut kt) = kernel_with(t0, &[]);
        assert_eq!(k.poll_timeout(), Some(t0 + HOLD));
        k.poll(t0 + HOLD, &mut kt);
        assert_eq!(k.poll_timeout(), Some(t0 + HOLD + CLEANUP));
        k.poll(t0 + HOLD + CLEANUP, &mut kt);
        assert_eq!(k.poll_timeout(), None);
    }

    // --- after the hold: changes and withdrawals -------------------------------------------

    #[test]
    fn after_the_hold_changes_go_out_incrementally_installations_first() {
        let t0 = Instant::now();
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let b = kr("10.2.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[]);
        want(&mut k, a);
        want(&mut k, b);
        k.poll(t0 + HOLD, &mut kt);
        kt.take_calls();
        k.want(a.prefix, None);
        let b2 = kr("10.2.0.0/24", "10.0.0.2");
        want(&mut k, b2);
        k.poll(t0 + HOLD + ms(10), &mut kt);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Replace(b2), RouteOp::Remove(a)])]
        );
        assert_eq!(kt.holds(), vec![b2]);
        // The same route again is no change.
        want(&mut k, b2);
        k.poll(t0 + HOLD + ms(20), &mut kt);
        assert_eq!(kt.take_calls(), vec![]);
    }

    #[test]
    fn a_withdrawal_after_the_hold_removes_the_route_at_once_even_a_previous_runs() {
        let t0 = Instant::now();
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let b = kr("10.2.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[a, b]);
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1), fr("10.2.0.0/24", 1)]);
        want(&mut k, a);
        want(&mut f, fr("10.1.0.0/24", 1));
        k.poll(t0 + HOLD, &mut kt);
        f.poll(t0 + HOLD, &mut ft);
        kt.take_calls();
        ft.take_calls();
        // After the hold a withdrawal is a withdrawal: no waiting for the clean-up.
        k.want(a.prefix, None);
        k.want(b.prefix, None);
        f.want(net("10.2.0.0/24"), None);
        k.poll(t0 + HOLD + ms(10), &mut kt);
        f.poll(t0 + HOLD + ms(10), &mut ft);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Remove(a), RouteOp::Remove(b)])]
        );
        assert_eq!(
            ft.take_calls(),
            vec![Call::Apply(vec![RouteOp::Remove(fr("10.2.0.0/24", 1))])]
        );
        // And a reconnection does not bring the previous run's route back.
        f.disconnected();
        f.connected(&mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![fr("10.1.0.0/24", 1)])]
        );
    }

    // --- shutdown -----------------------------------------------------------------------------

    #[test]
    fn without_retraction_shutdown_leaves_every_table_as_it_is() {
        // Non-stop forwarding: SIGTERM (or kill -9, which never gets here) leaves the routes.
        let t0 = Instant::now();
        let previous = [kr("10.1.0.0/24", "10.0.0.1")];
        for after in [ms(0), HOLD, HOLD + CLEANUP] {
            let (mut k, mut kt) = kernel_with(t0, &previous);
            let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1)]);
            want(&mut k, kr("10.2.0.0/24", "10.0.0.1"));
            want(&mut f, fr("10.2.0.0/24", 1));
            k.poll(t0 + after, &mut kt);
            f.poll(t0 + after, &mut ft);
            let (kheld, fheld) = (kt.holds(), ft.holds());
            kt.take_calls();
            ft.take_calls();
            k.shut_down(false, &mut kt);
            f.shut_down(false, &mut ft);
            assert_eq!(kt.take_calls(), vec![], "{after:?}");
            assert_eq!(ft.take_calls(), vec![], "{after:?}");
            assert_eq!((kt.holds(), ft.holds()), (kheld, fheld));
            assert_eq!(k.phase(), Phase::Stopped);
            // Stopped is stopped.
            want(&mut k, kr("10.3.0.0/24", "10.0.0.1"));
            k.poll(t0 + HOLD + CLEANUP + CLEANUP, &mut kt);
            assert_eq!(kt.take_calls(), vec![]);
        }
    }

    #[test]
    fn retraction_removes_exactly_our_routes_from_the_kernel() {
        let t0 = Instant::now();
        let previous = kr("10.1.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[previous]);
        // Somebody else's route (another protocol number) in the same table.
        let theirs = kr("10.9.0.0/24", "10.0.0.9");
        kt.others.push(theirs);
        let ours = kr("10.2.0.0/24", "10.0.0.1");
        want(&mut k, ours);
        k.poll(t0 + HOLD, &mut kt);
        kt.take_calls();
        k.shut_down(true, &mut kt);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![
                RouteOp::Remove(previous),
                RouteOp::Remove(ours)
            ])]
        );
        assert_eq!(kt.holds(), vec![]);
        assert_eq!(kt.others, vec![theirs]);
        assert_eq!(k.held_count(), 0);
    }

    #[test]
    fn retraction_during_the_hold_removes_the_previous_runs_routes_too() {
        let t0 = Instant::now();
        let previous = kr("10.1.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[previous]);
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1)]);
        k.poll(t0 + ms(100), &mut kt);
        k.shut_down(true, &mut kt);
        f.shut_down(true, &mut ft);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Remove(previous)])]
        );
        assert_eq!(ft.take_calls(), vec![Call::ReplaceAll(vec![])]);
    }

    #[test]
    fn retraction_empties_the_data_plane_with_one_empty_snapshot() {
        // The previous run's routes go too, as the kernel's do (docs: "remove ... the data
        // plane's control routes").
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1)]);
        want(&mut f, fr("10.2.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        ft.take_calls();
        f.shut_down(true, &mut ft);
        assert_eq!(ft.take_calls(), vec![Call::ReplaceAll(vec![])]);
        assert_eq!(ft.holds(), vec![]);
    }

    #[test]
    fn retraction_writes_nothing_to_a_data_plane_out_of_reach() {
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[]);
        f.disconnected();
        f.shut_down(true, &mut ft);
        assert_eq!(ft.take_calls(), vec![]);
    }

    // --- a table out of reach ---------------------------------------------------------------

    #[test]
    fn a_data_plane_out_of_reach_gets_nothing_then_the_whole_table_when_it_is_back() {
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[]);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        ft.take_calls();
        f.disconnected();
        want(&mut f, fr("10.2.0.0/24", 1));
        f.want(net("10.1.0.0/24"), None);
        f.poll(t0 + HOLD + ms(10), &mut ft);
        assert_eq!(ft.take_calls(), vec![]);
        // It may have restarted (empty) or kept the old table (stale): a snapshot either way.
        ft.ours.clear();
        f.connected(&mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![fr("10.2.0.0/24", 1)])]
        );
        assert_eq!(f.held_count(), 1);
    }

    #[test]
    fn a_data_plane_that_connects_after_the_hold_gets_a_snapshot_at_once() {
        let t0 = Instant::now();
        let mut ft = MockTable::new(true, &[]);
        let mut f = Reconciler::new(t0, TIMING);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        assert_eq!(ft.take_calls(), vec![]);
        assert_eq!(f.phase(), Phase::Merged);
        f.connected(&mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![fr("10.1.0.0/24", 1)])]
        );
    }

    #[test]
    fn a_write_that_fails_loses_the_data_plane_until_it_is_back() {
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[]);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        ft.take_calls();
        ft.unreachable = true;
        want(&mut f, fr("10.2.0.0/24", 1));
        f.poll(t0 + HOLD + ms(10), &mut ft);
        assert_eq!(ft.take_calls().len(), 1);
        assert!(matches!(
            reports(&mut f)[..],
            [
                Report::Replaced { .. },
                Report::Lost {
                    error: TableError::Unreachable(_)
                }
            ]
        ));
        // No more writes until it is reached again; then the whole table.
        want(&mut f, fr("10.3.0.0/24", 1));
        f.poll(t0 + HOLD + ms(20), &mut ft);
        assert_eq!(ft.take_calls(), vec![]);
        ft.unreachable = false;
        f.connected(&mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![
                fr("10.1.0.0/24", 1),
                fr("10.2.0.0/24", 1),
                fr("10.3.0.0/24", 1)
            ])]
        );
    }

    #[test]
    fn a_data_plane_restarted_before_the_clean_up_still_loses_the_previous_runs_routes() {
        // The first snapshot carried a previous run's route; the data plane restarts and
        // answers GetRoutes with nothing; the route we pushed again must still go at the
        // clean-up.
        let t0 = Instant::now();
        let (mut f, mut ft) = fib_with(t0, &[fr("10.1.0.0/24", 1), fr("10.2.0.0/24", 1)]);
        want(&mut f, fr("10.1.0.0/24", 1));
        f.poll(t0 + HOLD, &mut ft);
        f.disconnected();
        ft.ours.clear();
        f.connected(&mut ft);
        f.found([]);
        assert_eq!(ft.holds(), vec![fr("10.1.0.0/24", 1), fr("10.2.0.0/24", 1)]);
        ft.take_calls();
        f.poll(t0 + HOLD + CLEANUP, &mut ft);
        assert_eq!(
            ft.take_calls(),
            vec![Call::ReplaceAll(vec![fr("10.1.0.0/24", 1)])]
        );
    }

    // --- a table that refuses changes -------------------------------------------------------

    #[test]
    fn a_refused_installation_is_reported_with_its_route_and_the_old_route_stays_held() {
        let t0 = Instant::now();
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[a]);
        kt.refuse.insert(a.prefix);
        let a2 = kr("10.1.0.0/24", "10.0.0.2");
        want(&mut k, a2);
        k.poll(t0 + HOLD, &mut kt);
        let reps = reports(&mut k);
        assert!(
            matches!(
                &reps[..],
                [
                    Report::Failed { op: RouteOp::Replace(r), error: TableError::Refused(_) },
                    Report::Reconciled { changes: 1, failed: 1, .. }
                ] if *r == a2
            ),
            "{reps:?}"
        );
        assert_eq!(k.stats().errors, 1);
        // What the reconciler believes is what the table holds.
        assert_eq!(k.held().copied().collect::<Vec<_>>(), vec![a]);
        assert_eq!(kt.holds(), vec![a]);
    }

    #[test]
    fn a_refused_installation_is_tried_again_when_its_prefix_changes_and_at_the_clean_up() {
        let t0 = Instant::now();
        let (mut k, mut kt) = kernel_with(t0, &[]);
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let b = kr("10.2.0.0/24", "10.0.0.1");
        kt.refuse.insert(a.prefix);
        kt.refuse.insert(b.prefix);
        want(&mut k, a);
        want(&mut k, b);
        k.poll(t0 + HOLD, &mut kt);
        kt.take_calls();
        kt.refuse.clear();
        // The router says a again (a metric change, say): tried again.
        want(&mut k, a);
        k.poll(t0 + HOLD + ms(10), &mut kt);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Replace(a)])]
        );
        // b is tried again at the clean-up.
        k.poll(t0 + HOLD + CLEANUP, &mut kt);
        assert_eq!(
            kt.take_calls(),
            vec![Call::Apply(vec![RouteOp::Replace(b)])]
        );
        assert_eq!(kt.holds(), vec![a, b]);
    }

    #[test]
    fn a_refused_removal_leaves_the_route_held_and_is_tried_again_at_the_clean_up() {
        let t0 = Instant::now();
        let a = kr("10.1.0.0/24", "10.0.0.1");
        let (mut k, mut kt) = kernel_with(t0, &[]);
        want(&mut k, a);
        k.poll(t0 + HOLD, &mut kt);
        kt.refuse.insert(a.prefix);
        k.want(a.prefix, None);
        k.poll(t0 + HOLD + ms(10), &mut kt);
        assert!(matches!(
            reports(&mut k)[..],
            [
                Report::Reconciled { .. },
                Report::Failed {
                    op: RouteOp::Remove(_),
                    ..
                }
            ]
        ));
        assert_eq!(k.held_count(), 1);
        kt.refuse.clear();
        kt.take_calls();
        k.poll(t0 + HOLD + CLEANUP, &mut kt);
        assert_eq!(kt.take_calls(), vec![Call::Apply(vec![RouteOp::Remove(a)])]);
        assert_eq!(kt.holds(), vec![]);
        assert_eq!(k.held_count(), 0);
    }

    // --- non-stop forwarding, on random restarts ------------------------------------------

    fn arb_kernel_route() -> impl Strategy<Value = KernelRoute> {
        (0u8..12, 1u8..4, prop::bool::ANY).prop_map(|(net, gw, old_metric)| KernelRoute {
            prefix: IpNet::new(IpAddr::from([10, net, 0, 0]), 16).unwrap(),
            gateway: Some(IpAddr::from([10, 0, 0, gw])),
            ifindex: 7,
            metric: if old_metric { 5 } else { 0 },
        })
    }

    #[derive(Debug, Clone)]
    enum Step {
        Want(KernelRoute),
        Withdraw(u8),
        Wait(u64),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            arb_kernel_route().prop_map(Step::Want),
            (0u8..12).prop_map(Step::Withdraw),
            (0u64..8_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Whatever a previous run left and whatever the neighbours say: nothing is written
        /// during the hold; a prefix the table held is never without a route before the
        /// clean-up unless it was withdrawn after the hold; after the clean-up the table holds
        /// exactly the selected routes.
        #[test]
        fn a_restart_never_leaves_a_gap_and_ends_exact(
            previous in prop::collection::vec(arb_kernel_route(), 0..8),
            steps in prop::collection::vec(arb_step(), 0..40),
        ) {
            let t0 = Instant::now();
            let (mut k, mut kt) = kernel_with(t0, &previous);
            let before = kt.holds();
            let mut now = t0;
            let mut withdrawn_after_hold = BTreeSet::new();
            for step in steps {
                match step {
                    Step::Want(r) => want(&mut k, r),
                    Step::Withdraw(n) => {
                        let p = IpNet::new(IpAddr::from([10, n, 0, 0]), 16).unwrap();
                        if k.phase() != Phase::Holding {
                            withdrawn_after_hold.insert(p);
                        }
                        k.want(p, None);
                    }
                    Step::Wait(ms) => now += Duration::from_millis(ms),
                }
                k.poll(now, &mut kt);
                match k.phase() {
                    Phase::Holding => prop_assert_eq!(kt.holds(), before.clone()),
                    Phase::Merged => {
                        for r in &previous {
                            if !withdrawn_after_hold.contains(&r.prefix) {
                                prop_assert!(kt.holds_prefix(r.prefix), "{:?} lost", r.prefix);
                            }
                        }
                    }
                    Phase::Synced | Phase::Stopped => {}
                }
            }
            k.poll(t0 + HOLD + CLEANUP, &mut kt);
            let mut wanted: Vec<KernelRoute> = k.wanted().copied().collect();
            wanted.sort_by_key(|r| r.prefix);
            prop_assert_eq!(kt.holds(), wanted);
            prop_assert_eq!(k.held_count(), kt.ours.len());
        }
    }
}
