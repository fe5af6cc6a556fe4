//! The conformance suite against a real S3-compatible server (SeaweedFS),
//! started by this test process on free loopback ports. Every store is a
//! fresh prefix in the server's bucket.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, Damage, TestStore};
use laminar_state_s3::{S3Config, S3Store};
use support::SeaweedServer;
use tokio::sync::OnceCell;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

struct Running {
    endpoint: String,
    _server: SeaweedServer,
    _dir: tempfile::TempDir,
}

struct S3Factory {
    running: OnceCell<Arc<Running>>,
}

impl S3Factory {
    fn new() -> Self {
        Self {
            running: OnceCell::new(),
        }
    }

    async fn running(&self) -> Result<Arc<Running>, StateBackendError> {
        self.running
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(|| {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let server = SeaweedServer::start(dir.path());
                    Arc::new(Running {
                        endpoint: server.endpoint(),
                        _server: server,
                        _dir: dir,
                    })
                })
                .await
                .map_err(|e| StateBackendError::Io(format!("starting SeaweedFS failed: {e}")))
            })
            .await
            .cloned()
    }
}

/// The store's URL: what a child process attaches with.
fn locator(endpoint: &str, prefix: &str) -> String {
    format!(
        "s3://{}/{prefix}?endpoint={endpoint}&access_key_id={}&secret_access_key={}&max_payload_len={TEST_MAX_PAYLOAD}&attempt_timeout_ms=10000&timeout_ms=30000",
        support::BUCKET,
        support::ACCESS_KEY,
        support::SECRET_KEY
    )
}

#[async_trait]
impl BackendFactory for S3Factory {
    fn name(&self) -> String {
        "s3".into()
    }

    /// Not `fenced_seal`: the gate's fence check and its marker PUT are two
    /// requests, so a raise acknowledged between them does not stop a
    /// deposed leader's seal (see the crate docs, "Sealing and the fence").
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .shared_fence()
            .cross_process()
            .cross_process_reopen()
            .recovery_queries()
            .corruption_detection()
            .atomic_prune()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let running = self.running().await?;
        let locator = locator(&running.endpoint, &support::fresh_prefix("c"));
        Ok(Box::new(S3TestStore::new(&locator, Some(running))?))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(S3TestStore::new(locator, None)?))
    }
}

struct S3TestStore {
    locator: String,
    config: S3Config,
    store: tokio::sync::Mutex<Option<S3Store>>,
    _running: Option<Arc<Running>>,
}

impl S3TestStore {
    fn new(locator: &str, running: Option<Arc<Running>>) -> Result<Self, StateBackendError> {
        Ok(Self {
            locator: locator.to_owned(),
            config: S3Config::from_url(locator)?,
            store: tokio::sync::Mutex::new(None),
            _running: running,
        })
    }

    async fn store(&self) -> Result<S3Store, StateBackendError> {
        let mut store = self.store.lock().await;
        if store.is_none() {
            *store = Some(S3Store::connect(&self.config).await?);
        }
        Ok(store.clone().expect("connected above"))
    }
}

#[async_trait]
impl TestStore for S3TestStore {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(Arc::new(
            self.store().await?.handle(instance_id, vnode_capacity),
        ))
    }

    fn max_payload_len(&self) -> usize {
        TEST_MAX_PAYLOAD
    }

    /// Durability is the bucket's: drop the client, its caches and its
    /// connections, so the next handle reads everything from the server.
    async fn reopen(&self) -> Result<(), StateBackendError> {
        *self.store.lock().await = None;
        Ok(())
    }

    fn locator(&self) -> Option<String> {
        Some(self.locator.clone())
    }

    /// Overwrite the newest object of the partial, or the marker, with
    /// bytes that are no laminar-state frame (the key layout is documented
    /// in the crate docs).
    async fn damage(&self, what: Damage) -> Result<(), StateBackendError> {
        let store = self.store().await?;
        let key = match what {
            Damage::Partial { vnode, epoch } => {
                let listed = store
                    .client()
                    .list_objects_v2()
                    .bucket(store.bucket())
                    .prefix(format!("{}p/{epoch:020}/{vnode:010}.", store.prefix()))
                    .send()
                    .await
                    .map_err(|e| StateBackendError::Io(format!("listing for damage: {e}")))?;
                listed
                    .contents()
                    .last()
                    .and_then(|o| o.key())
                    .ok_or_else(|| StateBackendError::Io("no partial to damage".into()))?
                    .to_owned()
            }
            Damage::Marker { epoch } => format!("{}m/{epoch:020}", store.prefix()),
        };
        store
            .client()
            .put_object()
            .bucket(store.bucket())
            .key(key)
            .body(b"not a frame".to_vec().into())
            .send()
            .await
            .map_err(|e| StateBackendError::Io(format!("damaging: {e}")))?;
        Ok(())
    }
}

laminar_state_conformance::conformance_tests!(s3, S3Factory::new());
