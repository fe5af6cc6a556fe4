//! Faults for any backend: wrappers that turn a backend under test into a
//! faulty one, so a property (ours, or a backend author's own test) can
//! check what happens when the store or the network misbehaves.
//!
//! - [`LostAnswers`]: every call reaches the store and applies, but some
//!   answers are lost on the way back: the caller sees
//!   [`StateBackendError::Io`] for a call that took effect, as after a
//!   timeout or a connection reset right after the store applied it.
//! - [`Stalls`]: chosen calls stall (are held, not polled) before they
//!   reach the store, part-way through, or before their answer reaches the
//!   caller, as a slow network, a paused process or a long GC does. The
//!   fence raise (`persist_authoritative_version`, and the first write or
//!   seal after `set_authoritative_version`, which carries the raise) and
//!   the seal (`epoch_complete`) can be chosen on their own.
//!
//! Both draw their schedule from a seed, so a failure replays. A store
//! that ignores create-if-absent cannot be made from a `StateBackend`
//! wrapper (the condition lives inside the backend); the suite's teeth
//! tests build one and show P9 catching it.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use tokio::sync::watch;

use crate::runner::splitmix64;

/// A backend whose calls all apply, but whose answers are lost (replaced by
/// [`StateBackendError::Io`]) one time in `every`, on a schedule drawn from
/// a seed, so a failure replays. The synchronous fence calls are passed
/// through untouched.
pub struct LostAnswers {
    inner: Arc<dyn StateBackend>,
    seed: u64,
    every: u64,
    calls: AtomicU64,
    lost: AtomicU64,
}

impl LostAnswers {
    /// Wrap `inner`: each answer is lost with probability `1 / every`
    /// (`every` = 1: all of them), on a schedule drawn from `seed`.
    pub fn new(inner: Arc<dyn StateBackend>, seed: u64, every: u64) -> Self {
        Self {
            inner,
            seed,
            every: every.max(1),
            calls: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// How many answers were lost so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The answer the caller gets for a call named `what` that the store
    /// answered with `answer`.
    fn deliver<T>(
        &self,
        what: impl FnOnce() -> String,
        answer: Result<T, StateBackendError>,
    ) -> Result<T, StateBackendError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let draw = splitmix64(self.seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if !draw.is_multiple_of(self.every) {
            return answer;
        }
        self.lost.fetch_add(1, Ordering::Relaxed);
        Err(StateBackendError::Io(format!(
            "fault injected: the answer to {} was lost after the store applied it (it answered {})",
            what(),
            match &answer {
                Ok(_) => "Ok".to_owned(),
                Err(e) => format!("{e:?}"),
            }
        )))
    }
}

#[async_trait]
impl StateBackend for LostAnswers {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        let answer = self
            .inner
            .write_partial(vnode, epoch, assignment_version, bytes)
            .await;
        self.deliver(|| format!("write_partial({vnode}, {epoch})"), answer)
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        let answer = self.inner.read_partial(vnode, epoch).await;
        self.deliver(|| format!("read_partial({vnode}, {epoch})"), answer)
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        let answer = self.inner.epoch_complete(epoch, vnodes).await;
        self.deliver(|| format!("epoch_complete({epoch})"), answer)
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let answer = self.inner.prune_before(before).await;
        self.deliver(|| format!("prune_before({before})"), answer)
    }

    fn set_authoritative_version(&self, version: u64) {
        self.inner.set_authoritative_version(version);
    }

    fn authoritative_version(&self) -> u64 {
        self.inner.authoritative_version()
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        let answer = self.inner.latest_committed_epoch().await;
        self.deliver(|| "latest_committed_epoch()".to_owned(), answer)
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        let answer = self.inner.sealed_epochs(after).await;
        self.deliver(|| format!("sealed_epochs({after})"), answer)
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        let answer = self.inner.partials(epoch).await;
        self.deliver(|| format!("partials({epoch})"), answer)
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        let answer = self.inner.persist_authoritative_version(version).await;
        self.deliver(
            || format!("persist_authoritative_version({version})"),
            answer,
        )
    }
}

/// Where a call chosen by a [`Stalls`] wrapper is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallPoint {
    /// Before the call reaches the backend: the request is slow to leave,
    /// so the store sees it only when the stall ends.
    BeforeCall,
    /// Part-way through the backend's call: once its future has returned
    /// `Pending` this many times (it awaits the store: a look at the fence
    /// or the marker, a round trip, a reply), it is not polled again until
    /// the stall ends. Whatever the backend started meanwhile (a request
    /// already sent, a thread already working) goes on; only the call's own
    /// next step waits. A call that finishes sooner is held before its
    /// answer instead. `Inside(0)` counts as `Inside(1)`.
    Inside(u32),
    /// After the backend answered, before the caller sees the answer.
    BeforeAnswer,
}

impl StallPoint {
    /// The points a plan without a fixed point draws from.
    pub const ALL: [StallPoint; 4] = [
        StallPoint::BeforeCall,
        StallPoint::Inside(1),
        StallPoint::Inside(2),
        StallPoint::BeforeAnswer,
    ];
}

/// Which calls a [`Stalls`] wrapper holds, where and for how long. Built
/// with const builders, like [`Capabilities`](crate::Capabilities):
///
/// ```
/// use std::time::Duration;
/// use laminar_state_conformance::faults::{StallPlan, StallPoint};
/// // Every seal and every raise, held part-way for 1 to 5 ms.
/// const PLAN: StallPlan = StallPlan::NONE
///     .seals()
///     .raises()
///     .at(StallPoint::Inside(1))
///     .lasting(Duration::from_millis(1), Duration::from_millis(5));
/// assert!(PLAN.seals && PLAN.raises && !PLAN.writes);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallPlan {
    /// `write_partial`.
    pub writes: bool,
    /// `epoch_complete`.
    pub seals: bool,
    /// The fence raise: `persist_authoritative_version`, and the first
    /// `write_partial` or `epoch_complete` after `set_authoritative_version`
    /// through this wrapper (the call that carries the raise to the store).
    pub raises: bool,
    /// `read_partial`.
    pub reads: bool,
    /// `prune_before`.
    pub prunes: bool,
    /// `latest_committed_epoch` and `sealed_epochs`.
    pub queries: bool,
    /// A chosen kind of call stalls one time in `every` (1: every time), on
    /// a schedule drawn from the seed.
    pub every: u64,
    /// Where a stalled call is held; `None`: drawn from the seed among
    /// [`StallPoint::ALL`] for each stall.
    pub point: Option<StallPoint>,
    /// The shortest stall.
    pub shortest: Duration,
    /// The longest stall; each lasts a time drawn from the seed between
    /// the two, unless [`Stalls::release`] ends it sooner.
    pub longest: Duration,
}

impl StallPlan {
    /// Stall nothing (add kinds of call with the builders); when some are
    /// added: every time, at a drawn point, for up to 10 ms.
    pub const NONE: Self = Self {
        writes: false,
        seals: false,
        raises: false,
        reads: false,
        prunes: false,
        queries: false,
        every: 1,
        point: None,
        shortest: Duration::ZERO,
        longest: Duration::from_millis(10),
    };

    /// Stall writes.
    pub const fn writes(mut self) -> Self {
        self.writes = true;
        self
    }

    /// Stall seals.
    pub const fn seals(mut self) -> Self {
        self.seals = true;
        self
    }

    /// Stall fence raises (see [`raises`](Self::raises)).
    pub const fn raises(mut self) -> Self {
        self.raises = true;
        self
    }

    /// Stall reads.
    pub const fn reads(mut self) -> Self {
        self.reads = true;
        self
    }

    /// Stall prunes.
    pub const fn prunes(mut self) -> Self {
        self.prunes = true;
        self
    }

    /// Stall the recovery queries and the `partials` listing.
    pub const fn queries(mut self) -> Self {
        self.queries = true;
        self
    }

    /// Stall a chosen call one time in `every` (0 counts as 1).
    pub const fn every(mut self, every: u64) -> Self {
        self.every = if every == 0 { 1 } else { every };
        self
    }

    /// Hold every stalled call at `point`.
    pub const fn at(mut self, point: StallPoint) -> Self {
        self.point = Some(point);
        self
    }

    /// Make each stall last between `shortest` and `longest`.
    pub const fn lasting(mut self, shortest: Duration, longest: Duration) -> Self {
        self.shortest = shortest;
        self.longest = if longest.as_nanos() < shortest.as_nanos() {
            shortest
        } else {
            longest
        };
        self
    }
}

/// A backend whose chosen calls stall: held before they reach the store,
/// part-way through (see [`StallPoint::Inside`]) or before their answer
/// reaches the caller, on a schedule drawn from a seed (see [`StallPlan`]).
/// Nothing is lost or changed; calls are only late, as over a slow network
/// or from a paused process. The property can watch stalls begin
/// ([`until_stalled`](Self::until_stalled), [`stalling`](Self::stalling))
/// and end those in progress at a moment of its choosing
/// ([`release`](Self::release)), so "a call sent before the raise reaches
/// the store after it" is a schedule, not a hope.
///
/// A call that is held part-way keeps whatever it holds: a backend that
/// keeps an in-process lock across an await blocks its other callers until
/// the stall ends, so keep [`StallPlan::longest`] bounded.
pub struct Stalls {
    inner: Arc<dyn StateBackend>,
    seed: u64,
    plan: StallPlan,
    calls: AtomicU64,
    raise_pending: AtomicBool,
    /// Stalls begun so far.
    begun: watch::Sender<u64>,
    /// Stalls in progress now.
    stalling: AtomicU64,
    /// Bumped by [`Stalls::release`].
    releases: watch::Sender<u64>,
}

impl Stalls {
    /// Wrap `inner`: the calls `plan` names stall, on a schedule drawn from
    /// `seed`.
    pub fn new(inner: Arc<dyn StateBackend>, seed: u64, plan: StallPlan) -> Self {
        Self {
            inner,
            seed,
            plan,
            calls: AtomicU64::new(0),
            raise_pending: AtomicBool::new(false),
            begun: watch::Sender::new(0),
            stalling: AtomicU64::new(0),
            releases: watch::Sender::new(0),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    /// How many stalls have begun so far.
    pub fn stalled(&self) -> u64 {
        *self.begun.borrow()
    }

    /// How many stalls are in progress now (begun, not yet ended). A call
    /// held [`BeforeCall`](StallPoint::BeforeCall) that is still stalling
    /// has not reached the store.
    pub fn stalling(&self) -> u64 {
        self.stalling.load(Ordering::Acquire)
    }

    /// Wait until at least `count` stalls have begun.
    pub async fn until_stalled(&self, count: u64) {
        let mut begun = self.begun.subscribe();
        let _ = begun.wait_for(|&n| n >= count).await;
    }

    /// End every stall in progress now; later stalls are not affected.
    pub fn release(&self) {
        self.releases.send_modify(|generation| *generation += 1);
    }

    /// Whether the next call of a chosen kind stalls, where and how long.
    fn draw(&self, chosen: bool) -> Option<(StallPoint, Duration)> {
        if !chosen {
            return None;
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let draw = splitmix64(self.seed ^ call.wrapping_mul(0xD1B5_4A32_D192_ED03));
        if !draw.is_multiple_of(self.plan.every) {
            return None;
        }
        let second = splitmix64(draw);
        let point = self
            .plan
            .point
            .unwrap_or(StallPoint::ALL[(second % 4) as usize]);
        let span = self.plan.longest.saturating_sub(self.plan.shortest);
        let extra = match u64::try_from(span.as_nanos()) {
            Ok(0) => 0,
            Ok(nanos) => (second >> 8) % (nanos + 1),
            Err(_) => second >> 8,
        };
        Some((point, self.plan.shortest + Duration::from_nanos(extra)))
    }

    /// Hold for `duration`, or until released.
    async fn stall(&self, duration: Duration) {
        let mut releases = self.releases.subscribe();
        releases.borrow_and_update();
        self.stalling.fetch_add(1, Ordering::AcqRel);
        self.begun.send_modify(|n| *n += 1);
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = releases.changed() => {}
        }
        self.stalling.fetch_sub(1, Ordering::AcqRel);
    }

    /// Run `call`, stalled if the schedule says so.
    async fn run<T>(&self, chosen: bool, call: impl Future<Output = T>) -> T {
        let Some((point, duration)) = self.draw(chosen) else {
            return call.await;
        };
        match point {
            StallPoint::BeforeCall => {
                self.stall(duration).await;
                call.await
            }
            StallPoint::BeforeAnswer => {
                let answer = call.await;
                self.stall(duration).await;
                answer
            }
            StallPoint::Inside(pendings) => {
                let mut call = pin!(call);
                let mut seen = 0;
                let early = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
                    Poll::Ready(answer) => Poll::Ready(Some(answer)),
                    Poll::Pending => {
                        seen += 1;
                        if seen >= pendings.max(1) {
                            Poll::Ready(None)
                        } else {
                            Poll::Pending
                        }
                    }
                })
                .await;
                self.stall(duration).await;
                match early {
                    Some(answer) => answer,
                    None => call.await,
                }
            }
        }
    }

    /// Whether this write or seal carries a raise made through this
    /// wrapper.
    fn carries_raise(&self) -> bool {
        self.raise_pending.swap(false, Ordering::AcqRel)
    }
}

#[async_trait]
impl StateBackend for Stalls {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        let chosen = self.plan.writes | (self.plan.raises & self.carries_raise());
        self.run(
            chosen,
            self.inner
                .write_partial(vnode, epoch, assignment_version, bytes),
        )
        .await
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.run(self.plan.reads, self.inner.read_partial(vnode, epoch))
            .await
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        let chosen = self.plan.seals | (self.plan.raises & self.carries_raise());
        self.run(chosen, self.inner.epoch_complete(epoch, vnodes))
            .await
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        self.run(self.plan.prunes, self.inner.prune_before(before))
            .await
    }

    fn set_authoritative_version(&self, version: u64) {
        self.inner.set_authoritative_version(version);
        self.raise_pending.store(true, Ordering::Release);
    }

    fn authoritative_version(&self) -> u64 {
        self.inner.authoritative_version()
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.run(self.plan.queries, self.inner.latest_committed_epoch())
            .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.run(self.plan.queries, self.inner.sealed_epochs(after))
            .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        self.run(self.plan.queries, self.inner.partials(epoch))
            .await
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.raise_pending.store(false, Ordering::Release);
        self.run(
            self.plan.raises,
            self.inner.persist_authoritative_version(version),
        )
        .await
    }
}
