//! This machine's presence: its lease, renewed every third of the TTL; the link to etcd as
//! the renewals find it; the fencing moment; the hold after registering.
//!
//! Timing, all from when a renewal (or the registration) was *sent* — etcd keeps the lease
//! at least until then + TTL:
//! - a renewal is due every TTL/3; one that gets no answer within TTL/3 has failed;
//! - fenced units stop at TTL/2 without a successful renewal (the other half of the TTL is
//!   for them to stop before etcd may expire the lease and the engine place them elsewhere);
//! - a whole TTL without one is reported once (fleet's server monitor);
//! - after registering while units are here, units merely unscheduled meanwhile are held
//!   for [`HOLD`] (and for as long as renewals fail).
//!
//! The tests at the end run on paused time against the in-memory store.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_model::Machine;
use fleet_store::{KvStore, Registry};
use tokio::time::Instant;

use crate::Error;

/// After registering anew, how long units the engine unscheduled while this machine was
/// away keep running here, waiting to be scheduled back (pinned units would otherwise be
/// stopped and started again on every reconnection). The engine places them back as soon
/// as it sees the machine — which, after an etcd election, can take its session a few
/// seconds — and a unit it places elsewhere is not held; so the hold is generous.
pub(super) const HOLD: Duration = Duration::from_secs(15);

/// What renewing the presence lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tended {
    /// Renewed (or not due), as before.
    Quiet,
    /// Renewed after failures: etcd is reachable again with the lease intact.
    Recovered,
    /// The lease had lapsed: this machine registered again under a new lease.
    Regained,
    /// etcd could not be reached; the lease stands until it expires.
    Failed,
}

/// The link to etcd, as the renewals found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// The last renewal due succeeded (or none has been due since registering).
    Up,
    /// Renewals fail. `reported`: a whole TTL has passed without one and that was said
    /// (fleet's server monitor), once per outage.
    Failing { reported: bool },
}

/// This machine's presence. Long passes call [`Presence::tend`] between units, so a busy
/// agent never lets its lease lapse.
pub(super) struct Presence {
    pub(super) lease: i64,
    pub(super) ttl: i64,
    period: Duration,
    /// When the next renewal is due.
    pub(super) next: Instant,
    /// When the last successful renewal or registration was sent, in milliseconds since
    /// `epoch`. Shared with the fencing timer, which watches it while a pass runs.
    renewed: Arc<AtomicU64>,
    epoch: Instant,
    pub(super) link: Link,
    /// Until when merely-unscheduled units are held (see [`HOLD`]).
    hold_until: Option<Instant>,
}

/// What the fencing timer watches: the last renewal (shared with [`Presence`]), its epoch,
/// and the TTL.
#[derive(Debug, Clone)]
pub(super) struct FenceClock {
    renewed: Arc<AtomicU64>,
    epoch: Instant,
    ttl: i64,
}

impl FenceClock {
    /// When fenced units must stop if no renewal succeeds first.
    fn at(&self) -> Instant {
        self.epoch
            + Duration::from_millis(self.renewed.load(Ordering::SeqCst))
            + Duration::from_millis(self.ttl.max(1) as u64 * 500)
    }

    /// Resolves once the fencing moment passes with no renewal in between.
    async fn due(self) {
        loop {
            let at = self.at();
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

impl Presence {
    /// A presence registered under `lease`, the registration sent at `sent`.
    pub(super) fn new(lease: i64, ttl: i64, sent: Instant) -> Self {
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
        Self {
            lease,
            ttl,
            period,
            next: sent + period,
            renewed: Arc::new(AtomicU64::new(0)),
            epoch: sent,
            link: Link::Up,
            hold_until: None,
        }
    }

    fn mark(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.epoch).as_millis() as u64;
        self.renewed.fetch_max(ms, Ordering::SeqCst);
    }

    /// When the last successful renewal (or the registration) was sent.
    fn last_renewed(&self) -> Instant {
        self.epoch + Duration::from_millis(self.renewed.load(Ordering::SeqCst))
    }

    /// Renews the lease if due, waiting at most one renewal period; after a lapse registers
    /// again (and holds).
    pub(super) async fn tend<S: KvStore>(
        &mut self,
        reg: &Registry<S>,
        me: &Machine,
    ) -> Result<Tended, Error> {
        let now = Instant::now();
        if now < self.next {
            return Ok(Tended::Quiet);
        }
        self.next = now + self.period;
        match tokio::time::timeout(self.period, reg.store().keep_alive(self.lease)).await {
            Ok(Ok(true)) => {
                self.mark(now);
                let was = std::mem::replace(&mut self.link, Link::Up);
                if was == Link::Up {
                    return Ok(Tended::Quiet);
                }
                tracing::info!(machine = %me.id, "etcd reachable again; presence renewed");
                Ok(Tended::Recovered)
            }
            Ok(Ok(false)) => {
                self.regain(reg, me).await?;
                Ok(Tended::Regained)
            }
            Ok(Err(e)) if e.is_lease_lost() => {
                self.regain(reg, me).await?;
                Ok(Tended::Regained)
            }
            failure => {
                if self.link == Link::Up {
                    let why = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.period),
                    };
                    tracing::warn!(machine = %me.id, "cannot renew presence: {why}");
                    self.link = Link::Failing { reported: false };
                }
                // fleet's server monitor fired when no heartbeat succeeded for a whole TTL
                // (and restarted the server); here the agent simply keeps trying.
                let whole_ttl = Duration::from_secs(self.ttl.max(1) as u64);
                if self.link == (Link::Failing { reported: false })
                    && now.saturating_duration_since(self.last_renewed()) >= whole_ttl
                {
                    self.link = Link::Failing { reported: true };
                    tracing::warn!(
                        "Server monitor triggered: Monitor timed out before successful heartbeat"
                    );
                }
                Ok(Tended::Failed)
            }
        }
    }

    /// A new lease and presence record, after the old lease lapsed; units unscheduled
    /// meanwhile are held.
    pub(super) async fn regain<S: KvStore>(
        &mut self,
        reg: &Registry<S>,
        me: &Machine,
    ) -> Result<(), Error> {
        tracing::warn!(machine = %me.id, "presence lease lost; registering again");
        let sent = Instant::now();
        let lease = reg.store().grant_lease(self.ttl).await?;
        reg.register_machine(me, lease).await?;
        self.lease = lease;
        self.mark(sent);
        self.link = Link::Up;
        self.next = Instant::now() + self.period;
        self.hold();
        Ok(())
    }

    /// Holds merely-unscheduled units for [`HOLD`] from now.
    pub(super) fn hold(&mut self) {
        self.hold_until = Some(Instant::now() + HOLD);
    }

    /// When the hold ends, if one is on.
    pub(super) fn hold_ends(&self) -> Option<Instant> {
        self.hold_until
    }

    /// The hold is over.
    pub(super) fn end_hold(&mut self) {
        self.hold_until = None;
    }

    /// Whether merely-unscheduled units are held now: while renewals fail (the lease may
    /// have lapsed without a renewal having said so yet) and during the hold.
    pub(super) fn holding(&self) -> bool {
        self.link != Link::Up || self.hold_until.is_some_and(|h| Instant::now() < h)
    }

    /// Whether etcd answered the last renewal due.
    pub(super) fn reachable(&self) -> bool {
        self.link == Link::Up
    }

    /// The fencing timer's clock.
    pub(super) fn fence_clock(&self) -> FenceClock {
        FenceClock {
            renewed: self.renewed.clone(),
            epoch: self.epoch,
            ttl: self.ttl,
        }
    }

    /// When fenced units must stop if no renewal succeeds first: half the TTL after the
    /// last renewal was sent.
    pub(super) fn fence_at(&self) -> Instant {
        self.fence_clock().at()
    }
}

/// Runs `fut` unless the fencing moment passes first: then it is dropped and `None` says
/// to fence now. Every await of the agent's loop that can hang on etcd goes through this.
pub(super) async fn unless_fenced<T>(
    fut: impl Future<Output = T>,
    clock: Option<FenceClock>,
) -> Option<T> {
    match clock {
        None => Some(fut.await),
        Some(clock) => tokio::select! {
            r = fut => Some(r),
            _ = clock.due() => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_store::MemoryStore;

    const TTL: i64 = 3;

    fn machine() -> Machine {
        Machine {
            id: "m1".into(),
            public_ip: "127.0.0.1".into(),
            metadata: Default::default(),
            version: "test".into(),
        }
    }

    /// A machine registered on a store view that can be cut off; its presence.
    async fn registered() -> (MemoryStore, Registry<MemoryStore>, Presence) {
        let store = MemoryStore::new();
        let view = store.view();
        let reg = Registry::new(view.clone(), "/_coreos.com/fleet/");
        let sent = Instant::now();
        let lease = view.grant_lease(TTL).await.unwrap();
        assert!(reg.register_machine(&machine(), lease).await.unwrap());
        (view, reg, Presence::new(lease, TTL, sent))
    }

    /// Tends the presence at every due renewal until `until`, collecting what each gave
    /// and when (from `origin`).
    async fn tend_until(
        p: &mut Presence,
        reg: &Registry<MemoryStore>,
        origin: Instant,
        until: Instant,
    ) -> Vec<(Duration, Tended)> {
        let mut seen = Vec::new();
        loop {
            let next = p.next;
            if next > until {
                tokio::time::sleep_until(until).await;
                return seen;
            }
            tokio::time::sleep_until(next).await;
            let t = p.tend(reg, &machine()).await.unwrap();
            seen.push((next - origin, t));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_third_of_the_ttl_and_keeps_the_lease() {
        let (_view, reg, mut p) = registered().await;
        let lease = p.lease;
        let start = Instant::now();
        let seen = tend_until(&mut p, &reg, start, start + Duration::from_secs(10)).await;
        assert_eq!(seen.len(), 10, "{seen:?}");
        assert_eq!(seen[0].0, Duration::from_millis(1000));
        assert!(seen.iter().all(|(_, t)| *t == Tended::Quiet), "{seen:?}");
        assert_eq!(p.lease, lease, "the lease never changed");
        assert!(reg.store().keep_alive(lease).await.unwrap(), "still alive");
        assert!(!p.holding());
    }

    #[tokio::test(start_paused = true)]
    async fn fencing_comes_half_a_ttl_after_the_last_renewal_sent() {
        let (view, reg, mut p) = registered().await;
        let start = Instant::now();
        // Renewed at 1 s and 2 s; cut off from 2.5 s.
        tend_until(&mut p, &reg, start, start + Duration::from_millis(2500)).await;
        assert_eq!(p.fence_at(), start + Duration::from_millis(3500));
        view.set_reachable(false);
        let clock = p.fence_clock();
        let fenced = tokio::spawn(async move {
            clock.due().await;
            Instant::now()
        });
        let seen = tend_until(&mut p, &reg, start, start + Duration::from_millis(3400)).await;
        assert_eq!(seen, vec![(Duration::from_secs(3), Tended::Failed)]);
        assert_eq!(p.link, Link::Failing { reported: false });
        assert!(p.holding(), "units are held while renewals fail");
        assert!(!p.reachable());
        let at = fenced.await.unwrap();
        assert_eq!(at, start + Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_in_time_moves_the_fencing_moment() {
        let (_view, reg, mut p) = registered().await;
        let start = Instant::now();
        let clock = p.fence_clock();
        let fenced = tokio::spawn(async move {
            clock.due().await;
            Instant::now()
        });
        // Renewals at 1, 2, 3, 4 s; then none.
        tend_until(&mut p, &reg, start, start + Duration::from_millis(4100)).await;
        let at = fenced.await.unwrap();
        assert_eq!(at, start + Duration::from_millis(5500));
    }

    #[tokio::test(start_paused = true)]
    async fn back_before_the_lapse_is_a_recovery_with_the_same_lease() {
        let (view, reg, mut p) = registered().await;
        let lease = p.lease;
        let start = Instant::now();
        // Renewed at 1 s (the lease now lasts until 4 s); cut off at 1.5 s.
        tend_until(&mut p, &reg, start, start + Duration::from_millis(1500)).await;
        view.set_reachable(false);
        let seen = tend_until(&mut p, &reg, start, start + Duration::from_millis(2500)).await;
        assert_eq!(seen, vec![(Duration::from_secs(2), Tended::Failed)]);
        view.set_reachable(true);
        let seen = tend_until(&mut p, &reg, start, start + Duration::from_millis(3100)).await;
        assert_eq!(seen, vec![(Duration::from_secs(3), Tended::Recovered)]);
        assert_eq!(p.lease, lease);
        assert_eq!(p.link, Link::Up);
        assert!(!p.holding(), "no hold after a recovery");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapse_is_reported_once_then_registers_anew_and_holds() {
        let (view, reg, mut p) = registered().await;
        let lease = p.lease;
        let start = Instant::now();
        view.set_reachable(false);
        // Renewals fail at 1..5 s; the whole TTL without one passes at 3 s.
        tend_until(&mut p, &reg, start, start + Duration::from_millis(2900)).await;
        assert_eq!(p.link, Link::Failing { reported: false });
        tend_until(&mut p, &reg, start, start + Duration::from_millis(5500)).await;
        assert_eq!(p.link, Link::Failing { reported: true });
        // The lease lapsed at 3 s: coming back registers under a new one.
        view.set_reachable(true);
        let seen = tend_until(&mut p, &reg, start, start + Duration::from_millis(6100)).await;
        assert_eq!(seen.last().map(|(_, t)| *t), Some(Tended::Regained));
        assert_ne!(p.lease, lease);
        assert_eq!(p.link, Link::Up);
        assert!(p.holding());
        let ends = p.hold_ends().unwrap();
        assert_eq!(ends, start + Duration::from_secs(6) + HOLD);
        tokio::time::sleep_until(ends).await;
        assert!(!p.holding(), "the hold ends by itself");
        p.end_hold();
        assert_eq!(p.hold_ends(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unless_fenced_drops_work_that_outlasts_the_fencing_moment() {
        let (_view, _reg, p) = registered().await;
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(60));
        assert_eq!(unless_fenced(slow, Some(p.fence_clock())).await, None);
        assert_eq!(Instant::now(), start + Duration::from_millis(1500));
        assert_eq!(unless_fenced(async { 7 }, None).await, Some(7));
    }
}
