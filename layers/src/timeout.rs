//! The timeout layer: each call is bounded; a call over its limit is
//! abandoned and answered with an `Io` error naming the operation and the
//! limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::operation::Operation;

/// A [`StateBackend`] that bounds each asynchronous call of the backend
/// inside it. A call over its operation's limit is dropped (as a caller's
/// own timeout would drop it) and answered with
/// [`StateBackendError::Io`]: `write_partial(vnode 3, epoch 7) timed out
/// after 2s (the timeout layer's limit for write_partial)`.
///
/// An abandoned call may still have taken effect (the contract's P7 makes
/// the backend keep the fence even then), so a timeout is an `Io` error like
/// any lost answer, and the [`RetryLayer`](crate::RetryLayer) may retry it.
/// The synchronous fence calls are forwarded unbounded.
///
/// Needs a tokio runtime with its time driver enabled.
pub struct TimeoutLayer<B: ?Sized = dyn StateBackend> {
    inner: Arc<B>,
    limits: [Option<Duration>; Operation::ALL.len()],
    #[cfg(feature = "metrics")]
    timeouts: Option<Vec<metrics::Key>>,
}

impl<B: ?Sized> TimeoutLayer<B> {
    /// Bound every asynchronous call of `inner` by `limit`.
    pub fn new(inner: Arc<B>, limit: Duration) -> Self {
        let mut limits = [None; Operation::ALL.len()];
        for op in Operation::ASYNC {
            limits[op.index()] = Some(limit);
        }
        Self {
            inner,
            limits,
            #[cfg(feature = "metrics")]
            timeouts: None,
        }
    }

    /// Bound `op` by `limit` instead (`None`: unbounded). The synchronous
    /// operations are never bounded.
    pub fn with_limit(mut self, op: Operation, limit: Option<Duration>) -> Self {
        if Operation::ASYNC.contains(&op) {
            self.limits[op.index()] = limit;
        }
        self
    }

    /// The limit of `op`, if it has one.
    pub fn limit(&self, op: Operation) -> Option<Duration> {
        self.limits[op.index()]
    }

    /// Count timeouts in `laminar_state_timeouts_total`, labelled with this
    /// `backend` name and `instance_id` (with the `metrics` feature; without
    /// it this does nothing).
    pub fn with_metrics(self, backend: &str, instance_id: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                timeouts: Some(crate::metrics_layer::per_operation(
                    crate::metrics_layer::TIMEOUTS,
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

    /// The backend inside.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    async fn bound<T>(
        &self,
        op: Operation,
        what: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, StateBackendError>>,
    ) -> Result<T, StateBackendError> {
        let Some(limit) = self.limits[op.index()] else {
            return call.await;
        };
        match tokio::time::timeout(limit, call).await {
            Ok(answer) => answer,
            Err(_) => {
                #[cfg(feature = "metrics")]
                if let Some(keys) = &self.timeouts {
                    crate::metrics_layer::count(&keys[op.index()], 1);
                }
                Err(StateBackendError::Io(format!(
                    "{} timed out after {limit:?} (the timeout layer's limit for {op})",
                    what()
                )))
            }
        }
    }
}

impl<B: ?Sized> std::fmt::Debug for TimeoutLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits: Vec<String> = Operation::ALL
            .iter()
            .filter_map(|op| Some(format!("{op}: {:?}", self.limits[op.index()]?)))
            .collect();
        f.debug_struct("TimeoutLayer")
            .field("limits", &limits)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: StateBackend + ?Sized> StateBackend for TimeoutLayer<B> {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.bound(
            Operation::WritePartial,
            || format!("write_partial(vnode {vnode}, epoch {epoch})"),
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
        self.bound(
            Operation::ReadPartial,
            || format!("read_partial(vnode {vnode}, epoch {epoch})"),
            self.inner.read_partial(vnode, epoch),
        )
        .await
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.bound(
            Operation::EpochComplete,
            || format!("epoch_complete(epoch {epoch})"),
            self.inner.epoch_complete(epoch, vnodes),
        )
        .await
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        self.bound(
            Operation::PruneBefore,
            || format!("prune_before({before})"),
            self.inner.prune_before(before),
        )
        .await
    }

    fn set_authoritative_version(&self, version: u64) {
        self.inner.set_authoritative_version(version);
    }

    fn authoritative_version(&self) -> u64 {
        self.inner.authoritative_version()
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.bound(
            Operation::LatestCommittedEpoch,
            || "latest_committed_epoch()".to_owned(),
            self.inner.latest_committed_epoch(),
        )
        .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.bound(
            Operation::SealedEpochs,
            || format!("sealed_epochs({after})"),
            self.inner.sealed_epochs(after),
        )
        .await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.bound(
            Operation::ReadPartials,
            || format!("read_partials(epoch {epoch}, {} vnodes)", vnodes.len()),
            self.inner.read_partials(epoch, vnodes),
        )
        .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        self.bound(
            Operation::Partials,
            || format!("partials({epoch})"),
            self.inner.partials(epoch),
        )
        .await
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.bound(
            Operation::PersistAuthoritativeVersion,
            || format!("persist_authoritative_version({version})"),
            self.inner.persist_authoritative_version(version),
        )
        .await
    }
}
