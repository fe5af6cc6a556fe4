//! The tracing layer: one span per call, and an event for each refusal or
//! failure, with the `tracing` crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError, redact_url};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::operation::{Operation, Outcome};

/// The `DEBUG` span of one call: `operation`, `backend` and `instance`,
/// then the call's own fields, then `outcome` (recorded by `finish`).
macro_rules! call_span {
    ($layer:ident, $operation:literal, $($fields:tt)*) => {
        tracing::debug_span!(
            "state_backend",
            operation = $operation,
            backend = &*$layer.backend,
            instance = &*$layer.instance,
            $($fields)*,
            outcome = Empty,
        )
    };
}

/// A [`StateBackend`] that traces every call of the backend inside it.
///
/// Each call runs in a span named `state_backend` at `DEBUG` level
/// (`authoritative_version`, a getter, at `TRACE`), with these fields:
///
/// | field | value |
/// |---|---|
/// | `operation` | the method: `write_partial`, `read_partial`, `epoch_complete`, `prune_before`, `set_authoritative_version`, `authoritative_version`, `latest_committed_epoch`, `sealed_epochs`, `persist_authoritative_version` |
/// | `backend` | the backend's name given to [`new`](Self::new) (a URL's credentials are removed) |
/// | `instance` | the handle's instance id |
/// | `vnode` | `write_partial`, `read_partial` |
/// | `epoch` | `write_partial`, `read_partial`, `epoch_complete`; the bound of `prune_before` and `sealed_epochs` |
/// | `version` | the assignment version of `write_partial`; the fence of the fence calls |
/// | `vnodes` | how many vnodes `epoch_complete` was asked about |
/// | `bytes` | the payload length written, or read (never the bytes themselves) |
/// | `outcome` | `ok`, `io`, `serialization`, `not_found`, `stale_version`, `split_brain` |
/// | `sealed` | `epoch_complete`'s answer when it is `Ok` |
///
/// Besides the spans, these events are logged (with the operation, backend,
/// instance and keys as fields, so they read on their own when spans are
/// filtered out):
///
/// - `StaleVersion` at `WARN`, with `caller` and `authoritative`;
/// - `SplitBrainCommit` at `WARN`, with `committer` and `self_id`;
/// - `Io` at `WARN` and `Serialization` at `ERROR`, with the error's
///   message (backends keep credentials out of their messages);
/// - a fence raise (`set_authoritative_version`,
///   `persist_authoritative_version`) at `INFO`.
///
/// Payload bytes never appear in a span or an event, only their length.
///
/// With no subscriber installed (or everything filtered out: the global
/// maximum level is `OFF`), `write_partial`, `read_partial` and
/// `epoch_complete` hand the call straight to the backend inside, with no
/// span and no wrapping future: one atomic load.
pub struct TracingLayer<B: ?Sized = dyn StateBackend> {
    inner: Arc<B>,
    backend: Arc<str>,
    instance: Arc<str>,
}

impl<B: ?Sized> TracingLayer<B> {
    /// Trace `inner`, naming it `backend` (e.g. `redb`; a URL is shown
    /// without its credentials) and its handle's `instance_id` in every span.
    pub fn new(inner: Arc<B>, backend: &str, instance_id: &str) -> Self {
        Self {
            inner,
            backend: Arc::from(redact_url(backend)),
            instance: Arc::from(instance_id),
        }
    }

    /// The backend inside.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }
}

impl<B: ?Sized> std::fmt::Debug for TracingLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingLayer")
            .field("backend", &self.backend)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The keys of one call, repeated on its events.
#[derive(Clone, Copy)]
struct Keys {
    op: Operation,
    vnode: Option<u32>,
    epoch: Option<u64>,
}

impl Keys {
    const fn of(op: Operation, vnode: Option<u32>, epoch: Option<u64>) -> Self {
        Keys { op, vnode, epoch }
    }
}

impl<B: ?Sized> TracingLayer<B> {
    /// Record how the call ended on its span, and log what deserves it.
    fn finish<T>(&self, span: &Span, keys: Keys, result: &Result<T, StateBackendError>) {
        let outcome = Outcome::of(result);
        span.record("outcome", outcome.name());
        let (operation, backend, instance) = (keys.op.name(), &*self.backend, &*self.instance);
        let (vnode, epoch) = (keys.vnode, keys.epoch);
        match result {
            Ok(_) => {}
            Err(StateBackendError::StaleVersion {
                caller,
                authoritative,
            }) => tracing::warn!(
                parent: span,
                operation,
                backend,
                instance,
                vnode,
                epoch,
                caller,
                authoritative,
                "refused: assignment version below the fence (a deposed leader?)"
            ),
            Err(StateBackendError::SplitBrainCommit { committer, self_id }) => tracing::warn!(
                parent: span,
                operation,
                backend,
                instance,
                epoch,
                committer = committer.as_str(),
                self_id = self_id.as_str(),
                "split-brain commit: the epoch is sealed by another instance"
            ),
            Err(StateBackendError::Io(message)) => tracing::warn!(
                parent: span,
                operation,
                backend,
                instance,
                vnode,
                epoch,
                error = message.as_str(),
                "state backend I/O error"
            ),
            Err(StateBackendError::Serialization(message)) => tracing::error!(
                parent: span,
                operation,
                backend,
                instance,
                vnode,
                epoch,
                error = message.as_str(),
                "state backend refused the input or found damaged data"
            ),
            Err(StateBackendError::NotFound { .. }) => tracing::debug!(
                parent: span,
                operation,
                backend,
                instance,
                vnode,
                epoch,
                "not found"
            ),
        }
    }
}

/// The traced forms of the hot methods; the trait's methods call them only
/// when some subscriber listens (see [`quiet`]).
impl<B: StateBackend + ?Sized> TracingLayer<B> {
    async fn traced_write(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        let span = call_span!(
            self,
            "write_partial",
            vnode,
            epoch,
            version = assignment_version,
            bytes = bytes.len()
        );
        let call = self
            .inner
            .write_partial(vnode, epoch, assignment_version, bytes);
        let keys = Keys::of(Operation::WritePartial, Some(vnode), Some(epoch));
        self.traced(span, keys, call, |_, ()| {}).await
    }

    async fn traced_read(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        let span = call_span!(self, "read_partial", vnode, epoch, bytes = Empty);
        let call = self.inner.read_partial(vnode, epoch);
        let keys = Keys::of(Operation::ReadPartial, Some(vnode), Some(epoch));
        self.traced(span, keys, call, |span, read| {
            if let Some(bytes) = read {
                span.record("bytes", bytes.len());
            }
        })
        .await
    }

    async fn traced_seal(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        let span = call_span!(
            self,
            "epoch_complete",
            epoch,
            vnodes = vnodes.len(),
            sealed = Empty
        );
        let call = self.inner.epoch_complete(epoch, vnodes);
        let keys = Keys::of(Operation::EpochComplete, None, Some(epoch));
        self.traced(span, keys, call, |span, sealed| {
            span.record("sealed", *sealed);
        })
        .await
    }

    /// Run `call` in `span`; on success let `on_ok` record what the answer
    /// adds to the span; then the outcome and its event (see `finish`).
    async fn traced<T>(
        &self,
        span: Span,
        keys: Keys,
        call: impl Future<Output = Result<T, StateBackendError>>,
        on_ok: impl FnOnce(&Span, &T),
    ) -> Result<T, StateBackendError> {
        let result = call.instrument(span.clone()).await;
        if let Ok(answer) = &result {
            on_ok(&span, answer);
        }
        self.finish(&span, keys, &result);
        result
    }
}

/// Whether no subscriber enables even `ERROR` (the global maximum level is
/// `OFF`: nothing is installed, or everything is filtered out). Then the hot
/// methods hand the call straight to the backend inside, with no span, no
/// wrapping future and no allocation: one atomic load.
fn quiet() -> bool {
    !tracing::level_enabled!(tracing::Level::ERROR)
}

#[async_trait]
impl<B: StateBackend + ?Sized> StateBackend for TracingLayer<B> {
    // The hot methods are written out as `async_trait` expands them, so that
    // with no subscriber they return the inner backend's future as is.
    fn write_partial<'life0, 'async_trait>(
        &'life0 self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<(), StateBackendError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if quiet() {
            return self
                .inner
                .write_partial(vnode, epoch, assignment_version, bytes);
        }
        Box::pin(self.traced_write(vnode, epoch, assignment_version, bytes))
    }

    fn read_partial<'life0, 'async_trait>(
        &'life0 self,
        vnode: u32,
        epoch: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, StateBackendError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if quiet() {
            return self.inner.read_partial(vnode, epoch);
        }
        Box::pin(self.traced_read(vnode, epoch))
    }

    fn epoch_complete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        epoch: u64,
        vnodes: &'life1 [u32],
    ) -> Pin<Box<dyn Future<Output = Result<bool, StateBackendError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if quiet() {
            return self.inner.epoch_complete(epoch, vnodes);
        }
        Box::pin(self.traced_seal(epoch, vnodes))
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let span = call_span!(self, "prune_before", epoch = before);
        let keys = Keys::of(Operation::PruneBefore, None, Some(before));
        let call = self.inner.prune_before(before);
        self.traced(span, keys, call, |_, ()| {}).await
    }

    fn set_authoritative_version(&self, version: u64) {
        let span = tracing::debug_span!(
            "state_backend",
            operation = "set_authoritative_version",
            backend = &*self.backend,
            instance = &*self.instance,
            version,
            outcome = Empty,
        );
        let _entered = span.enter();
        self.inner.set_authoritative_version(version);
        span.record("outcome", Outcome::Ok.name());
        tracing::info!(
            operation = "set_authoritative_version",
            backend = &*self.backend,
            instance = &*self.instance,
            version,
            "fence raised"
        );
    }

    fn authoritative_version(&self) -> u64 {
        let span = tracing::trace_span!(
            "state_backend",
            operation = "authoritative_version",
            backend = &*self.backend,
            instance = &*self.instance,
            version = Empty,
        );
        let _entered = span.enter();
        let version = self.inner.authoritative_version();
        span.record("version", version);
        version
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        let span = call_span!(self, "latest_committed_epoch", epoch = Empty);
        let keys = Keys::of(Operation::LatestCommittedEpoch, None, None);
        let call = self.inner.latest_committed_epoch();
        self.traced(span, keys, call, |span, latest| {
            if let Some(epoch) = latest {
                span.record("epoch", *epoch);
            }
        })
        .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        let span = call_span!(self, "sealed_epochs", epoch = after, count = Empty);
        let keys = Keys::of(Operation::SealedEpochs, None, Some(after));
        let call = self.inner.sealed_epochs(after);
        self.traced(span, keys, call, |span, epochs| {
            span.record("count", epochs.len());
        })
        .await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        let span = call_span!(
            self,
            "read_partials",
            epoch,
            count = vnodes.len(),
            bytes = Empty
        );
        let keys = Keys::of(Operation::ReadPartials, None, Some(epoch));
        let call = self.inner.read_partials(epoch, vnodes);
        self.traced(span, keys, call, |span, partials| {
            span.record(
                "bytes",
                partials.iter().flatten().map(Bytes::len).sum::<usize>(),
            );
        })
        .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        let span = call_span!(self, "partials", epoch, count = Empty);
        let keys = Keys::of(Operation::Partials, None, Some(epoch));
        let call = self.inner.partials(epoch);
        self.traced(span, keys, call, |span, listed| {
            if let Some(vnodes) = listed {
                span.record("count", vnodes.len());
            }
        })
        .await
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        let span = call_span!(self, "persist_authoritative_version", version);
        let keys = Keys::of(Operation::PersistAuthoritativeVersion, None, None);
        let call = self.inner.persist_authoritative_version(version);
        let result = self.traced(span.clone(), keys, call, |_, ()| {}).await;
        if result.is_ok() {
            tracing::info!(
                parent: &span,
                operation = "persist_authoritative_version",
                backend = &*self.backend,
                instance = &*self.instance,
                version,
                "fence raised and persisted"
            );
        }
        result
    }
}
