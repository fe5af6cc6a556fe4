//! Faults for any backend: wrappers that turn a backend under test into a
//! faulty one, so a property (ours, or a backend author's own test) can
//! check what happens when the store or the network misbehaves.
//!
//! - [`LostAnswers`]: every call reaches the store and applies, but some
//!   answers are lost on the way back: the caller sees
//!   [`StateBackendError::Io`] for a call that took effect, as after a
//!   timeout or a connection reset right after the store applied it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

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

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        let answer = self.inner.persist_authoritative_version(version).await;
        self.deliver(
            || format!("persist_authoritative_version({version})"),
            answer,
        )
    }
}
