//! The conformance suite against real S3-compatible servers, started by
//! this test process on free loopback ports: SeaweedFS (column `s3`) and
//! moto's server (column `s3_moto`). Every store is a fresh prefix in the
//! server's bucket.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, Damage, TestStore};
use laminar_state_s3::{S3Config, S3Store};
use laminar_state_test_support::lazy::{Connector, LazyStore, Shared};
use laminar_state_test_support::s3::{S3Kind, S3Server};

/// Proptest cases per property on moto, at most (the suite's default is
/// 64): see `S3Factory::proptest_cases`.
const MOTO_PROPTEST_CASES: u32 = 8;
/// Race rounds per race on moto, at most (the suite's default is 32).
const MOTO_RACE_ROUNDS: u32 = 4;
/// Child writers killed by P10's crash property on moto, at most (the
/// suite's default is 8).
const MOTO_CRASH_KILLS: u32 = 3;

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
        support::raw_put(store, &key, b"not a frame")
            .await
            .map_err(|e| StateBackendError::Io(format!("damaging: {e}")))
    }
}

struct S3Factory {
    kind: S3Kind,
    server: Shared<S3Server>,
}

impl S3Factory {
    fn new(kind: S3Kind) -> Self {
        Self {
            kind,
            server: Shared::new(),
        }
    }
}

/// The store's URL: what a child process attaches with.
fn locator(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!(
        "s3://{bucket}/{prefix}?endpoint={endpoint}&access_key_id={}&secret_access_key={}&max_payload_len={TEST_MAX_PAYLOAD}&attempt_timeout_ms=10000&timeout_ms=30000",
        support::ACCESS_KEY,
        support::SECRET_KEY
    )
}

#[async_trait]
impl BackendFactory for S3Factory {
    fn name(&self) -> String {
        match self.kind {
            S3Kind::SeaweedFs => "s3".into(),
            kind => format!("s3-{}", kind.name()),
        }
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

    /// moto, explicitly, runs fewer (cases, race rounds, crash kills): its
    /// server answers each request in a new connection, in Python, and a
    /// full run of its column took over 20 minutes, more than CI can give
    /// it. SeaweedFS runs what is asked.
    fn proptest_cases(&self, requested: u32) -> u32 {
        match self.kind {
            S3Kind::SeaweedFs => requested,
            S3Kind::Moto => requested.min(MOTO_PROPTEST_CASES),
        }
    }

    /// See [`proptest_cases`](Self::proptest_cases).
    fn race_rounds(&self, requested: u32) -> u32 {
        match self.kind {
            S3Kind::SeaweedFs => requested,
            S3Kind::Moto => requested.min(MOTO_RACE_ROUNDS),
        }
    }

    /// See [`proptest_cases`](Self::proptest_cases).
    fn crash_kills(&self, requested: u32) -> u32 {
        match self.kind {
            S3Kind::SeaweedFs => requested,
            S3Kind::Moto => requested.min(MOTO_CRASH_KILLS),
        }
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let kind = self.kind;
        let running = self
            .server
            .get(move |dir| S3Server::start(kind, dir))
            .await?;
        let prefix = support::fresh_prefix("c");
        let bucket = {
            let (running, name) = (Arc::clone(&running), prefix.clone());
            tokio::task::spawn_blocking(move || running.with(|server| server.bucket_for(&name)))
                .await
                .map_err(|e| StateBackendError::Io(format!("creating a bucket failed: {e}")))?
                .map_err(StateBackendError::Io)?
        };
        let url = locator(&running.with(|server| server.endpoint()), &bucket, &prefix);
        Ok(Box::new(
            LazyStore::<S3>::new(&url, TEST_MAX_PAYLOAD)?.on(running),
        ))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(LazyStore::<S3>::new(locator, TEST_MAX_PAYLOAD)?))
    }
}

laminar_state_conformance::conformance_tests!(s3, S3Factory::new(S3Kind::SeaweedFs));
laminar_state_conformance::conformance_tests!(s3_moto, S3Factory::new(S3Kind::Moto));
// The suite through every layer of laminar-state-layers at once, on
// SeaweedFS, with a quarter of the proptest cases: the plain column covers
// the cases, this one every call forwarded through every layer.
laminar_state_conformance::conformance_tests!(
    layered_s3,
    laminar_state_conformance::Wrapped::new(
        S3Factory::new(S3Kind::SeaweedFs),
        laminar_state_test_support::layered::EveryLayer::over("s3").with_fewer_cases(4)
    )
);
