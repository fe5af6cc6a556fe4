//! The conformance suite against a real S3-compatible server (SeaweedFS),
//! started by this test process on free loopback ports. Every store is a
//! fresh prefix in the server's bucket.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, Damage, TestStore};
use laminar_state_s3::{S3Config, S3Store};
use laminar_state_test_support::lazy::{Connector, LazyStore, Shared};
use support::SeaweedServer;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

/// A store is a prefix, reached by its URL. Its durability is the
/// bucket's: a reopen drops the client, its caches and its connections, so
/// the next handle reads everything from the server.
struct S3;

#[async_trait]
impl Connector for S3 {
    type Config = S3Config;
    type Store = S3Store;

    fn config(url: &str) -> Result<S3Config, StateBackendError> {
        S3Config::from_url(url)
    }

    async fn connect(config: &S3Config) -> Result<S3Store, StateBackendError> {
        S3Store::connect(config).await
    }

    async fn open(
        store: &S3Store,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(Arc::new(store.handle(instance_id, vnode_capacity)))
    }

    /// Overwrite the newest object of the partial, or the marker, with
    /// bytes that are no laminar-state frame (the key layout is documented
    /// in the crate docs).
    async fn damage(store: &S3Store, what: Damage) -> Result<(), StateBackendError> {
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

struct S3Factory {
    server: Shared<SeaweedServer>,
}

impl S3Factory {
    fn new() -> Self {
        Self {
            server: Shared::new(),
        }
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
            .list_partials()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let running = self.server.get(SeaweedServer::start).await?;
        let url = locator(
            &running.with(|server| server.endpoint()),
            &support::fresh_prefix("c"),
        );
        Ok(Box::new(
            LazyStore::<S3>::new(&url, TEST_MAX_PAYLOAD)?.on(running),
        ))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(LazyStore::<S3>::new(locator, TEST_MAX_PAYLOAD)?))
    }
}

laminar_state_conformance::conformance_tests!(s3, S3Factory::new());
// The suite through every layer of laminar-state-layers at once, with a
// quarter of the proptest cases: the plain column covers the cases, this
// one every call forwarded through every layer.
laminar_state_conformance::conformance_tests!(
    layered_s3,
    laminar_state_conformance::Wrapped::new(
        S3Factory::new(),
        laminar_state_test_support::layered::EveryLayer::over("s3").with_fewer_cases(4)
    )
);
