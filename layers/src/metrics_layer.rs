//! The metrics layer: counters and latency histograms through the `metrics`
//! facade, recorded by whatever recorder the application installed (none:
//! nothing is recorded, at the cost of a few branches per call).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};

use crate::operation::{Operation, Outcome};

/// Every metric the layers record, with its kind, labels and meaning (the
/// crate README has the same table). Each also carries the labels
/// `backend` and `instance`.
pub const METRIC_NAMES: &[(&str, &str, &str, &str)] = &[
    (
        OPERATIONS,
        "counter",
        "operation, outcome",
        "calls, by method and by how they ended (ok, io, serialization, not_found, stale_version, split_brain)",
    ),
    (
        DURATION,
        "histogram",
        "operation",
        "seconds from call to answer, every outcome included",
    ),
    (
        WRITTEN_BYTES,
        "counter",
        "",
        "payload bytes of acknowledged writes, as the caller passed them (before compression or encryption)",
    ),
    (
        READ_BYTES,
        "counter",
        "",
        "payload bytes returned by reads, as the caller gets them",
    ),
    (
        FENCE_REJECTIONS,
        "counter",
        "operation",
        "StaleVersion refusals: writes (write_partial) or seals (epoch_complete) below the fence",
    ),
    (
        SPLIT_BRAIN,
        "counter",
        "",
        "SplitBrainCommit answers: the epoch was sealed by another instance",
    ),
    (
        SEALS,
        "counter",
        "result",
        "commit-gate answers: won (Ok(true)), incomplete (Ok(false)), lost (SplitBrainCommit)",
    ),
    (
        PRUNES,
        "counter",
        "",
        "successful prune_before calls (the trait does not say how many partials a prune removed)",
    ),
    (
        FENCE_VERSION,
        "gauge",
        "",
        "the fence this handle enforces, after its last raise",
    ),
    (
        RETRIES,
        "counter",
        "operation",
        "retries the retry layer made after an Io error (first attempts not counted)",
    ),
    (
        TIMEOUTS,
        "counter",
        "operation",
        "calls the timeout layer cut off at their limit",
    ),
];

const OPERATIONS: &str = "laminar_state_operations_total";
const DURATION: &str = "laminar_state_operation_duration_seconds";
const WRITTEN_BYTES: &str = "laminar_state_written_bytes_total";
const READ_BYTES: &str = "laminar_state_read_bytes_total";
const FENCE_REJECTIONS: &str = "laminar_state_fence_rejections_total";
const SPLIT_BRAIN: &str = "laminar_state_split_brain_total";
const SEALS: &str = "laminar_state_seals_total";
const PRUNES: &str = "laminar_state_prunes_total";
const FENCE_VERSION: &str = "laminar_state_fence_version";
pub(crate) const RETRIES: &str = "laminar_state_retries_total";
pub(crate) const TIMEOUTS: &str = "laminar_state_timeouts_total";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Describe every metric (unit and help text) to the installed recorder.
/// [`MetricsLayer::new`] calls it; call it again after installing a
/// recorder if layers were built before it.
pub fn describe_metrics() {
    metrics::with_recorder(|recorder| {
        for &(name, kind, _, help) in METRIC_NAMES {
            let unit = if name.ends_with("_seconds") {
                Some(Unit::Seconds)
            } else if name.ends_with("_bytes_total") {
                Some(Unit::Bytes)
            } else {
                None
            };
            match kind {
                "counter" => recorder.describe_counter(name.into(), unit, help.into()),
                "gauge" => recorder.describe_gauge(name.into(), unit, help.into()),
                _ => recorder.describe_histogram(name.into(), unit, help.into()),
            }
        }
    });
}

/// A metric key with the `backend` and `instance` labels and `extra`.
/// One key of the counter `name` per [`Operation`], in `Operation::ALL`'s
/// order, labelled with `backend` (its URL redacted) and `instance_id`: the
/// retry and timeout layers' counters.
pub(crate) fn per_operation(name: &'static str, backend: &str, instance_id: &str) -> Vec<Key> {
    let (backend, instance) = (
        Arc::from(laminar_state_api::redact_url(backend)),
        Arc::from(instance_id),
    );
    Operation::ALL
        .iter()
        .map(|op| key(name, &backend, &instance, &[("operation", op.name())]))
        .collect()
}

pub(crate) fn key(
    name: &'static str,
    backend: &Arc<str>,
    instance: &Arc<str>,
    extra: &[(&'static str, &'static str)],
) -> Key {
    let mut labels = vec![
        Label::new(
            "backend",
            metrics::SharedString::from_shared(Arc::clone(backend)),
        ),
        Label::new(
            "instance",
            metrics::SharedString::from_shared(Arc::clone(instance)),
        ),
    ];
    labels.extend(
        extra
            .iter()
            .map(|&(name, value)| Label::from_static_parts(name, value)),
    );
    Key::from_parts(name, labels)
}

/// Add `value` to the counter `key` of the current recorder.
pub(crate) fn count(key: &Key, value: u64) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(value));
}

/// Whether a recorder listens on this thread: the no-op recorder `metrics`
/// falls back to is a zero-sized type, real recorders hold state. (A
/// zero-sized recorder of one's own is taken for no recorder.) One
/// thread-local read and one atomic load.
fn recording() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// A [`StateBackend`] that records metrics of every call of the backend
/// inside it, with the `metrics` facade.
///
/// The names, kinds and labels are in [`METRIC_NAMES`] and the crate
/// README; every metric carries `backend` and `instance` labels. The keys
/// are built when the layer is; the handles are registered with the
/// recorder once, at the first call made while one is installed, so a call
/// then costs two clock reads and a few atomic additions. With no recorder
/// installed, a call goes straight to the backend inside: no clock read,
/// no wrapping future, no allocation.
pub struct MetricsLayer<B: ?Sized = dyn StateBackend> {
    inner: Arc<B>,
    keys: Box<Keys>,
    handles: OnceLock<Box<Handles>>,
}

/// The keys of every metric, or their handles once registered.
struct Metrics<C, H, G> {
    operations: Vec<C>,
    durations: Vec<H>,
    written: C,
    read: C,
    rejections: Vec<C>,
    split_brain: C,
    won: C,
    lost: C,
    incomplete: C,
    prunes: C,
    fence: G,
}

type Keys = Metrics<Key, Key, Key>;
type Handles = Metrics<Counter, Histogram, Gauge>;

impl Keys {
    fn register(&self, recorder: &dyn Recorder) -> Handles {
        let counter = |key: &Key| recorder.register_counter(key, &METADATA);
        Metrics {
            operations: self.operations.iter().map(counter).collect(),
            durations: self
                .durations
                .iter()
                .map(|key| recorder.register_histogram(key, &METADATA))
                .collect(),
            written: counter(&self.written),
            read: counter(&self.read),
            rejections: self.rejections.iter().map(counter).collect(),
            split_brain: counter(&self.split_brain),
            won: counter(&self.won),
            lost: counter(&self.lost),
            incomplete: counter(&self.incomplete),
            prunes: counter(&self.prunes),
            fence: recorder.register_gauge(&self.fence, &METADATA),
        }
    }
}

impl<B: ?Sized> MetricsLayer<B> {
    /// Record metrics of `inner`, labelled with its `backend` name and the
    /// handle's `instance_id`.
    pub fn new(inner: Arc<B>, backend: &str, instance_id: &str) -> Self {
        describe_metrics();
        let (backend, instance): (Arc<str>, Arc<str>) = (
            Arc::from(laminar_state_api::redact_url(backend)),
            Arc::from(instance_id),
        );
        let key =
            |name, extra: &[(&'static str, &'static str)]| key(name, &backend, &instance, extra);
        let operations = Operation::ALL
            .iter()
            .flat_map(|op| {
                Outcome::ALL
                    .iter()
                    .map(move |outcome| (op.name(), outcome.name()))
            })
            .map(|(op, outcome)| key(OPERATIONS, &[("operation", op), ("outcome", outcome)]))
            .collect();
        let per_op = |name| {
            Operation::ALL
                .iter()
                .map(|op| key(name, &[("operation", op.name())]))
                .collect()
        };
        let keys = Metrics {
            operations,
            durations: per_op(DURATION),
            written: key(WRITTEN_BYTES, &[]),
            read: key(READ_BYTES, &[]),
            rejections: per_op(FENCE_REJECTIONS),
            split_brain: key(SPLIT_BRAIN, &[]),
            won: key(SEALS, &[("result", "won")]),
            lost: key(SEALS, &[("result", "lost")]),
            incomplete: key(SEALS, &[("result", "incomplete")]),
            prunes: key(PRUNES, &[]),
            fence: key(FENCE_VERSION, &[]),
        };
        Self {
            inner,
            keys: Box::new(keys),
            handles: OnceLock::new(),
        }
    }

    /// The backend inside.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// The handles, registered with the current recorder on first use; `None`
    /// when no recorder is installed.
    fn handles(&self) -> Option<&Handles> {
        if !recording() {
            return None;
        }
        Some(
            self.handles
                .get_or_init(|| Box::new(metrics::with_recorder(|r| self.keys.register(r)))),
        )
    }

    /// Record one call of `op` that took since `started` and ended with
    /// `result`; `more` adds the operation's own metrics.
    fn record<T>(
        handles: &Handles,
        op: Operation,
        started: Instant,
        result: &Result<T, StateBackendError>,
        more: impl FnOnce(&Handles),
    ) {
        let outcome = Outcome::of(result);
        handles.operations[op.index() * Outcome::ALL.len() + outcome.index()].increment(1);
        handles.durations[op.index()].record(started.elapsed().as_secs_f64());
        if outcome == Outcome::StaleVersion {
            handles.rejections[op.index()].increment(1);
        }
        more(handles);
    }

    fn record_fence(&self)
    where
        B: StateBackend,
    {
        if let Some(handles) = self.handles() {
            handles.fence.set(self.inner.authoritative_version() as f64);
        }
    }
}

impl<B: StateBackend + ?Sized> MetricsLayer<B> {
    async fn measured_write(
        &self,
        handles: &Handles,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        let len = bytes.len() as u64;
        let started = Instant::now();
        let result = self
            .inner
            .write_partial(vnode, epoch, assignment_version, bytes)
            .await;
        Self::record(handles, Operation::WritePartial, started, &result, |h| {
            if result.is_ok() {
                h.written.increment(len);
            }
        });
        result
    }

    async fn measured_read(
        &self,
        handles: &Handles,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        let started = Instant::now();
        let result = self.inner.read_partial(vnode, epoch).await;
        Self::record(handles, Operation::ReadPartial, started, &result, |h| {
            if let Ok(Some(bytes)) = &result {
                h.read.increment(bytes.len() as u64);
            }
        });
        result
    }

    async fn measured_seal(
        &self,
        handles: &Handles,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<bool, StateBackendError> {
        let started = Instant::now();
        let result = self.inner.epoch_complete(epoch, vnodes).await;
        Self::record(
            handles,
            Operation::EpochComplete,
            started,
            &result,
            |h| match &result {
                Ok(true) => h.won.increment(1),
                Ok(false) => h.incomplete.increment(1),
                Err(StateBackendError::SplitBrainCommit { .. }) => {
                    h.split_brain.increment(1);
                    h.lost.increment(1);
                }
                Err(_) => {}
            },
        );
        result
    }

    /// Time `call` as `op` if a recorder listens.
    async fn measured<T>(
        &self,
        op: Operation,
        call: impl Future<Output = Result<T, StateBackendError>>,
        more: impl FnOnce(&Handles, &Result<T, StateBackendError>),
    ) -> Result<T, StateBackendError> {
        let Some(handles) = self.handles() else {
            return call.await;
        };
        let started = Instant::now();
        let result = call.await;
        Self::record(handles, op, started, &result, |h| more(h, &result));
        result
    }
}

impl<B: ?Sized> std::fmt::Debug for MetricsLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer").finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: StateBackend + ?Sized> StateBackend for MetricsLayer<B> {
    // The hot methods are written out as `async_trait` expands them, so that
    // with no recorder they return the inner backend's future as is.
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
        match self.handles() {
            None => self
                .inner
                .write_partial(vnode, epoch, assignment_version, bytes),
            Some(handles) => {
                Box::pin(self.measured_write(handles, vnode, epoch, assignment_version, bytes))
            }
        }
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
        match self.handles() {
            None => self.inner.read_partial(vnode, epoch),
            Some(handles) => Box::pin(self.measured_read(handles, vnode, epoch)),
        }
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
        match self.handles() {
            None => self.inner.epoch_complete(epoch, vnodes),
            Some(handles) => Box::pin(self.measured_seal(handles, epoch, vnodes)),
        }
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        self.measured(
            Operation::PruneBefore,
            self.inner.prune_before(before),
            |h, result| {
                if result.is_ok() {
                    h.prunes.increment(1);
                }
            },
        )
        .await
    }

    fn set_authoritative_version(&self, version: u64) {
        let started = Instant::now();
        self.inner.set_authoritative_version(version);
        if let Some(handles) = self.handles() {
            let ok = Ok::<(), StateBackendError>(());
            Self::record(
                handles,
                Operation::SetAuthoritativeVersion,
                started,
                &ok,
                |_| {},
            );
        }
        self.record_fence();
    }

    fn authoritative_version(&self) -> u64 {
        // A getter, called often: counted, not timed.
        let version = self.inner.authoritative_version();
        if let Some(handles) = self.handles() {
            handles.operations[Operation::AuthoritativeVersion.index() * Outcome::ALL.len()
                + Outcome::Ok.index()]
            .increment(1);
        }
        version
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.measured(
            Operation::LatestCommittedEpoch,
            self.inner.latest_committed_epoch(),
            |_, _| {},
        )
        .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.measured(
            Operation::SealedEpochs,
            self.inner.sealed_epochs(after),
            |_, _| {},
        )
        .await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.measured(
            Operation::ReadPartials,
            self.inner.read_partials(epoch, vnodes),
            |h, result| {
                if let Ok(partials) = result {
                    let bytes: usize = partials.iter().flatten().map(Bytes::len).sum();
                    h.read.increment(bytes as u64);
                }
            },
        )
        .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        self.measured(Operation::Partials, self.inner.partials(epoch), |_, _| {})
            .await
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        let result = self
            .measured(
                Operation::PersistAuthoritativeVersion,
                self.inner.persist_authoritative_version(version),
                |_, _| {},
            )
            .await;
        if result.is_ok() {
            self.record_fence();
        }
        result
    }
}
