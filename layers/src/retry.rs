//! The retry layer: `Io` errors retried with exponential backoff and jitter.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::operation::Operation;

/// How the [`RetryLayer`] retries.
///
/// Retry `n` (1 for the first) waits a random time between half and all of
/// `min(max_backoff, initial_backoff * 2^(n-1))` ("equal jitter", so
/// handles that failed together do not retry together), and no retry starts
/// once `max_elapsed` would be passed by its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `0` turns retrying off. Default 3.
    pub max_retries: u32,
    /// The first backoff. Default 50 ms.
    pub initial_backoff: Duration,
    /// The longest backoff. Default 2 s.
    pub max_backoff: Duration,
    /// The time after which no retry starts, from the first attempt.
    /// Default 10 s.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_retries` retries.
    pub fn with_retries(max_retries: u32) -> Self {
        Self {
            max_retries,
            ..Self::default()
        }
    }

    /// The ceiling of the wait before retry `retry` (1 for the first).
    fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The wait before retry `retry`: between half the ceiling and all of it.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(random_below(spread.saturating_add(1)))
    }
}

/// A random number below `bound` (not for cryptography: jitter only).
/// `RandomState` draws fresh keys per call from the OS-seeded per-thread
/// state, so no random-number crate is needed.
fn random_below(bound: u64) -> u64 {
    if bound <= 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(bound);
    hasher.finish() % bound
}

/// A [`StateBackend`] that retries the `Io` errors of the backend inside it,
/// with exponential backoff and jitter, bounded by a number of retries and a
/// total time ([`RetryPolicy`]). Only `Io` is ever retried.
///
/// When it gives up, the last `Io` error is returned with the number of
/// attempts and the time spent added to its message. With the `tracing`
/// feature each retry is logged at `INFO`; with `metrics` and
/// [`with_metrics`](Self::with_metrics), counted.
///
/// # Why every operation is safe to retry
///
/// An `Io` error means the caller does not know whether the call took
/// effect: it may have failed before reaching the store, or applied and lost
/// its answer (a timeout, a reset connection). A retry is safe only if
/// applying the call twice is the same as applying it once, and the contract
/// makes every operation so:
///
/// | operation | why a retry is safe |
/// |---|---|
/// | `write_partial` | writes are idempotent (P2): the same bytes for the same `(vnode, epoch)` may arrive any number of times, before or after the seal, with no further effect. The layer resends the very bytes it was given (it sits below compression and encryption in [`layer`](crate::layer), so a retried encrypted write is byte-identical). A retry that meets a fence raised in between is refused with `StaleVersion`; the layer answers that as an `Io` error (outcome unknown), since the failed attempt before it may have landed before the raise, and a refused write must never have been visible (P7). The caller is a deposed leader either way. The same holds for a seal's retry. |
/// | `read_partial`, `read_partials`, `latest_committed_epoch`, `sealed_epochs`, `partials` | reads change nothing. |
/// | `epoch_complete` | the seal is decided by the marker: once an attempt has sealed the epoch for this instance, asking again answers `Ok(true)` (the contract's "asking again as the winner", `seal_outcome`), so a seal whose first answer was lost comes back won, never as split-brain. As a guard against a backend that gets this wrong, a `SplitBrainCommit` whose committer *is* the asking instance, after an attempt that failed with `Io`, is answered `Ok(true)`: the marker names us, so we sealed. |
/// | `prune_before` | deleting what is below a bound twice deletes the same (P11: a second prune changes nothing). |
/// | `persist_authoritative_version` | the fence only rises: raising it to the same version again changes nothing (P4). |
/// | `set_authoritative_version`, `authoritative_version` | synchronous and infallible: forwarded, never retried. |
///
/// `StaleVersion`, `SplitBrainCommit`, `Serialization` and `NotFound` are
/// answers, not failures: retrying cannot change them, so they are returned
/// at once.
pub struct RetryLayer<B: ?Sized = dyn StateBackend> {
    inner: Arc<B>,
    policy: RetryPolicy,
    #[cfg(feature = "metrics")]
    retries: Option<Vec<metrics::Key>>,
}

impl<B: ?Sized> RetryLayer<B> {
    /// Retry the `Io` errors of `inner` per `policy`.
    pub fn new(inner: Arc<B>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            #[cfg(feature = "metrics")]
            retries: None,
        }
    }

    /// Count retries in `laminar_state_retries_total`, labelled with this
    /// `backend` name and `instance_id` (with the `metrics` feature; without
    /// it this does nothing).
    pub fn with_metrics(self, backend: &str, instance_id: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                retries: Some(crate::metrics_layer::per_operation(
                    crate::metrics_layer::RETRIES,
                    backend,
                    instance_id,
                )),
                ..self
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (backend, instance_id);
            self
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The backend inside.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// Run `call` until it answers with anything but `Io`, or the policy
    /// gives up.
    async fn run<T, F, Fut>(&self, op: Operation, mut call: F) -> Result<T, StateBackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StateBackendError>>,
    {
        let started = Instant::now();
        let mut retry = 0;
        loop {
            let message = match call().await {
                Err(StateBackendError::Io(message)) => message,
                // A refusal after an attempt whose outcome is unknown says
                // only that the retry wrote nothing: the earlier attempt
                // may have landed before the fence rose (and been read, or
                // sealed), so "refused" would not be true of the call.
                Err(StateBackendError::StaleVersion {
                    caller,
                    authoritative,
                }) if retry > 0
                    && matches!(op, Operation::WritePartial | Operation::EpochComplete) =>
                {
                    return Err(StateBackendError::Io(format!(
                        "{op}: an attempt failed with an I/O error and its retry was refused \
                         (version {caller} is below the fence {authoritative}), so whether the \
                         earlier attempt took effect before the fence rose is unknown"
                    )));
                }
                answer => return answer,
            };
            retry += 1;
            let wait = self.policy.backoff(retry);
            if retry > self.policy.max_retries || started.elapsed() + wait > self.policy.max_elapsed
            {
                return Err(StateBackendError::Io(format!(
                    "{message} (the retry layer gave up on {op} after {retry} attempts in {} ms)",
                    started.elapsed().as_millis()
                )));
            }
            #[cfg(feature = "tracing")]
            tracing::info!(
                operation = op.name(),
                retry,
                backoff_ms = wait.as_millis() as u64,
                error = message.as_str(),
                "retrying after an I/O error"
            );
            #[cfg(feature = "metrics")]
            if let Some(keys) = &self.retries {
                crate::metrics_layer::count(&keys[op.index()], 1);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl<B: ?Sized> std::fmt::Debug for RetryLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: StateBackend + ?Sized> StateBackend for RetryLayer<B> {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.run(Operation::WritePartial, || {
            self.inner
                .write_partial(vnode, epoch, assignment_version, bytes.clone())
        })
        .await
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.run(Operation::ReadPartial, || {
            self.inner.read_partial(vnode, epoch)
        })
        .await
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        let mut failed_before = false;
        self.run(Operation::EpochComplete, || {
            let attempt = self.inner.epoch_complete(epoch, vnodes);
            let retried = failed_before;
            failed_before = true;
            async move {
                match attempt.await {
                    // A lost answer, then a marker naming us: we sealed.
                    Err(StateBackendError::SplitBrainCommit { committer, self_id })
                        if retried && committer == self_id =>
                    {
                        Ok(true)
                    }
                    answer => answer,
                }
            }
        })
        .await
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        self.run(Operation::PruneBefore, || self.inner.prune_before(before))
            .await
    }

    fn set_authoritative_version(&self, version: u64) {
        self.inner.set_authoritative_version(version);
    }

    fn authoritative_version(&self) -> u64 {
        self.inner.authoritative_version()
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.run(Operation::LatestCommittedEpoch, || {
            self.inner.latest_committed_epoch()
        })
        .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.run(Operation::SealedEpochs, || self.inner.sealed_epochs(after))
            .await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.run(Operation::ReadPartials, || {
            self.inner.read_partials(epoch, vnodes)
        })
        .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        self.run(Operation::Partials, || self.inner.partials(epoch))
            .await
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.run(Operation::PersistAuthoritativeVersion, || {
            self.inner.persist_authoritative_version(version)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let policy = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(1),
        };
        for (retry, ceiling) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (40, 100)] {
            let ceiling = Duration::from_millis(ceiling);
            assert_eq!(policy.ceiling(retry), ceiling);
            let waits: Vec<Duration> = (0..64).map(|_| policy.backoff(retry)).collect();
            assert!(
                waits.iter().all(|w| *w >= ceiling / 2 && *w <= ceiling),
                "retry {retry}: {waits:?}"
            );
            assert!(
                waits.iter().any(|w| *w != waits[0]),
                "retry {retry}: no jitter in {waits:?}"
            );
        }
    }
}
