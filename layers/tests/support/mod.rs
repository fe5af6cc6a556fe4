//! Conformance factories for layered backends: memory or redb inside, one
//! layer or the whole stack outside.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, Damage, TestStore};
use laminar_state_layers::{
    CompressionLayer, EncryptionLayer, MetricsLayer, RetryLayer, RetryPolicy, Target, TimeoutLayer,
    TracingLayer, layer_with_keyring,
};
use laminar_state_memory::MemoryStore;
use laminar_state_redb::{DamagedRecord, RedbConfig, RedbStore};

/// The payload limit the suite sees; small, so the oversize checks are
/// cheap.
pub const LIMIT: usize = 1 << 20;

/// The test stacks stretch payloads this many times (see [`Stretch`]), so
/// the limit below them is this much larger.
pub const STRETCH: usize = 2;

/// [`Stretch`] repeats each block of this many bytes (well inside LZ4's
/// 64 KiB window, so the copy compresses to a few bytes).
const BLOCK: usize = 4096;

/// What the backends inside accept: room for stretched payloads and every
/// layer's framing.
pub const INNER_LIMIT: usize = LIMIT * STRETCH + 1024;

pub use laminar_state_test_support::layered::keyring;

/// The backend inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inner {
    Memory,
    Redb,
}

/// The layers outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Every layer, built by `layer_with_keyring` from a `LayerConfig`.
    All,
    Tracing,
    Metrics,
    Retry,
    Timeout,
    Compression,
    Encryption,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::All => "all-layers",
            Stack::Tracing => "tracing",
            Stack::Metrics => "metrics",
            Stack::Retry => "retry",
            Stack::Timeout => "timeout",
            Stack::Compression => "compression",
            Stack::Encryption => "encryption",
        }
    }

    /// What the backend inside accepts: the suite's limit for layers that
    /// pass bytes through unchanged (the backend's own check is the one the
    /// suite sees), more for those that stretch or frame them.
    fn inner_limit(self) -> usize {
        match self {
            Stack::All | Stack::Compression | Stack::Encryption => INNER_LIMIT,
            _ => LIMIT,
        }
    }

    fn encrypts(self) -> bool {
        matches!(self, Stack::All | Stack::Encryption)
    }

    /// Whether payloads are stretched (made compressible) above the stack,
    /// so the suite's random payloads go through LZ4 frames for real. Not
    /// for the compression layer alone, whose own payload limit P12 checks.
    fn stretches(self) -> bool {
        self == Stack::All
    }
}

/// The configuration of [`Stack::All`]: every layer on.
pub use laminar_state_test_support::layered::every_layer_config as all_layers;

/// Wrap `raw` (a handle of `inner`) in `stack`.
pub fn wrap(
    raw: Arc<dyn StateBackend>,
    inner: Inner,
    stack: Stack,
    instance_id: &str,
) -> Arc<dyn StateBackend> {
    let name = match inner {
        Inner::Memory => "memory",
        Inner::Redb => "redb",
    };
    let below = if stack.stretches() {
        LIMIT * STRETCH
    } else {
        LIMIT
    };
    let wrapped: Arc<dyn StateBackend> = match stack {
        Stack::All => layer_with_keyring(
            raw,
            &all_layers(),
            &Target::new(name, instance_id, below),
            keyring(),
        )
        .expect("every layer is compiled in"),
        Stack::Tracing => Arc::new(TracingLayer::new(raw, name, instance_id)),
        Stack::Metrics => Arc::new(MetricsLayer::new(raw, name, instance_id)),
        Stack::Retry => Arc::new(RetryLayer::new(
            raw,
            RetryPolicy {
                max_retries: 3,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
                max_elapsed: Duration::from_secs(2),
            },
        )),
        Stack::Timeout => Arc::new(TimeoutLayer::new(raw, Duration::from_secs(60))),
        Stack::Compression => Arc::new(CompressionLayer::new(raw, Some(below)).with_min_size(0)),
        Stack::Encryption => Arc::new(EncryptionLayer::new(raw, keyring(), Some(below))),
    };
    if stack.stretches() {
        Arc::new(Stretch(wrapped))
    } else {
        wrapped
    }
}

/// A test adapter above the whole stack: each 4 KiB block of a payload is
/// written twice, so the suite's random payloads compress (about 2 times
/// with LZ4) and every write and read of the suite goes
/// through real LZ4 frames, not just the stored-as-is path. It enforces
/// [`LIMIT`] on the caller's payload, as a backend would.
pub struct Stretch(pub Arc<dyn StateBackend>);

#[async_trait]
impl laminar_state_api::ForwardingBackend for Stretch {
    type Inner = dyn StateBackend;

    fn inner(&self) -> &Self::Inner {
        &*self.0
    }

    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        if bytes.len() > LIMIT {
            return Err(StateBackendError::Serialization(format!(
                "payload of {} bytes for vnode {vnode} exceeds the backend's limit of {LIMIT} bytes",
                bytes.len()
            )));
        }
        let mut stretched = Vec::with_capacity(bytes.len() * STRETCH);
        for block in bytes.chunks(BLOCK) {
            stretched.extend_from_slice(block);
            stretched.extend_from_slice(block);
        }
        self.0
            .write_partial(vnode, epoch, assignment_version, stretched.into())
            .await
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        let Some(stored) = self.0.read_partial(vnode, epoch).await? else {
            return Ok(None);
        };
        let damaged = || {
            StateBackendError::Serialization(format!(
                "stretched partial of vnode {vnode} epoch {epoch} is damaged"
            ))
        };
        let mut payload = Vec::with_capacity(stored.len() / STRETCH);
        let mut rest = &stored[..];
        while !rest.is_empty() {
            let n = if rest.len() >= 2 * BLOCK {
                BLOCK
            } else if rest.len() % 2 == 0 {
                rest.len() / 2
            } else {
                return Err(damaged());
            };
            if rest[..n] != rest[n..2 * n] {
                return Err(damaged());
            }
            payload.extend_from_slice(&rest[..n]);
            rest = &rest[2 * n..];
        }
        Ok(Some(payload.into()))
    }

    // Batch reads go through this wrapper's own single reads.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        laminar_state_api::read_each(self, epoch, vnodes).await
    }
}

/// A conformance factory: `inner` wrapped in `stack`. It claims exactly
/// the capabilities of the backend inside, as a layer must keep them all.
pub struct LayeredFactory {
    pub inner: Inner,
    pub stack: Stack,
}

impl LayeredFactory {
    pub const fn new(inner: Inner, stack: Stack) -> Self {
        Self { inner, stack }
    }
}

#[async_trait]
impl BackendFactory for LayeredFactory {
    fn name(&self) -> String {
        format!(
            "{}+{}",
            match self.inner {
                Inner::Memory => "memory",
                Inner::Redb => "redb",
            },
            self.stack.name()
        )
    }

    fn capabilities(&self) -> Capabilities {
        // The same claims as backend-memory's and backend-redb's own
        // conformance tests.
        match self.inner {
            Inner::Memory => Capabilities::NONE
                .fenced_seal()
                .recovery_queries()
                .atomic_prune()
                .list_partials(),
            Inner::Redb => Capabilities::NONE
                .fenced_seal()
                .cross_process_reopen()
                .recovery_queries()
                .corruption_detection()
                .atomic_prune()
                .list_partials(),
        }
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let inner = match self.inner {
            Inner::Memory => {
                InnerStore::Memory(MemoryStore::with_max_payload_len(self.stack.inner_limit()))
            }
            Inner::Redb => {
                let dir = tempfile::tempdir().map_err(|e| StateBackendError::Io(e.to_string()))?;
                InnerStore::Redb {
                    path: dir.path().join("state.redb"),
                    limit: self.stack.inner_limit(),
                    _dir: Some(dir),
                }
            }
        };
        Ok(Box::new(LayeredStore {
            inner,
            kind: self.inner,
            stack: self.stack,
        }))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(LayeredStore {
            inner: InnerStore::Redb {
                path: PathBuf::from(locator),
                limit: self.stack.inner_limit(),
                _dir: None,
            },
            kind: self.inner,
            stack: self.stack,
        }))
    }
}

enum InnerStore {
    Memory(MemoryStore),
    Redb {
        path: PathBuf,
        limit: usize,
        _dir: Option<tempfile::TempDir>,
    },
}

impl InnerStore {
    async fn redb(path: &std::path::Path, limit: usize) -> Result<RedbStore, StateBackendError> {
        let config = RedbConfig {
            max_payload_len: limit,
            ..RedbConfig::new(path)
        };
        tokio::task::spawn_blocking(move || RedbStore::open_with(config))
            .await
            .map_err(|e| StateBackendError::Io(e.to_string()))?
    }

    /// A handle with no layer on this store.
    async fn raw(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(match self {
            InnerStore::Memory(store) => Arc::new(store.open(instance_id, vnode_capacity)),
            InnerStore::Redb { path, limit, .. } => Arc::new(
                Self::redb(path, *limit)
                    .await?
                    .handle(instance_id, vnode_capacity),
            ),
        })
    }
}

/// One store of a [`LayeredFactory`].
pub struct LayeredStore {
    inner: InnerStore,
    kind: Inner,
    stack: Stack,
}

impl LayeredStore {
    /// A handle with no layer on this store.
    pub async fn raw(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        self.inner.raw(instance_id, vnode_capacity).await
    }
}

#[async_trait]
impl TestStore for LayeredStore {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        let raw = self.inner.raw(instance_id, vnode_capacity).await?;
        Ok(wrap(raw, self.kind, self.stack, instance_id))
    }

    fn max_payload_len(&self) -> usize {
        LIMIT
    }

    fn locator(&self) -> Option<String> {
        match &self.inner {
            InnerStore::Memory(_) => None,
            InnerStore::Redb { path, .. } => Some(path.display().to_string()),
        }
    }

    async fn damage(&self, what: Damage) -> Result<(), StateBackendError> {
        // With encryption, a partial is damaged as an attacker or a bad disk
        // would: one bit of its ciphertext flipped, written back through a
        // handle with no layer (so the backend's own checksum is valid and
        // only the encryption layer can notice).
        if let (true, Damage::Partial { vnode, epoch }) = (self.stack.encrypts(), what) {
            let raw = self.inner.raw("damage", vnode + 1).await?;
            let mut stored = raw
                .read_partial(vnode, epoch)
                .await?
                .ok_or(StateBackendError::NotFound { vnode, epoch })?
                .to_vec();
            let at = stored.len() - 20;
            stored[at] ^= 0x10;
            return raw
                .write_partial(vnode, epoch, u64::MAX, stored.into())
                .await;
        }
        let InnerStore::Redb { path, limit, .. } = &self.inner else {
            return Err(StateBackendError::Io(format!(
                "the memory store cannot inject {what:?}"
            )));
        };
        let record = match what {
            Damage::Partial { vnode, epoch } => DamagedRecord::Partial { vnode, epoch },
            Damage::Marker { epoch } => DamagedRecord::Marker { epoch },
        };
        InnerStore::redb(path, *limit).await?.store_damaged(record)
    }
}
