//! The conformance suite against real redis-server processes: a standalone
//! server, and a 3-node Redis Cluster. Each test starts its own servers on
//! free loopback ports; every store is a fresh namespace on them.

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};
use laminar_state_redis::{RedisConfig, RedisStore};
use laminar_state_test_support::fresh_prefix;
use laminar_state_test_support::lazy::{Connector, LazyStore, Shared};
use laminar_state_test_support::redis::RedisServers;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

/// A store is a namespace, reached by its URL. Its durability is the
/// server's: a reopen restarts the servers (SIGKILL, then the same data).
struct Redis;

#[async_trait]
impl Connector for Redis {
    type Config = RedisConfig;
    type Store = RedisStore;

    fn config(url: &str) -> Result<RedisConfig, StateBackendError> {
        RedisConfig::from_url(url)
    }

    async fn connect(config: &RedisConfig) -> Result<RedisStore, StateBackendError> {
        RedisStore::connect(config).await
    }

    async fn open(
        store: &RedisStore,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(Arc::new(store.handle(instance_id, vnode_capacity).await?))
    }
}

struct RedisFactory {
    cluster: bool,
    servers: Shared<RedisServers>,
}

impl RedisFactory {
    fn standalone() -> Self {
        Self {
            cluster: false,
            servers: Shared::new(),
        }
    }

    fn cluster() -> Self {
        Self {
            cluster: true,
            servers: Shared::new(),
        }
    }
}

/// The URL of namespace `namespace` on the servers at `url`.
fn locator(url: &str, namespace: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}namespace={namespace}&max_payload_len={TEST_MAX_PAYLOAD}")
}

#[async_trait]
impl BackendFactory for RedisFactory {
    fn name(&self) -> String {
        if self.cluster {
            "redis-cluster".into()
        } else {
            "redis".into()
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .fenced_seal()
            .cross_process()
            .cross_process_reopen()
            .recovery_queries()
            .atomic_prune()
            .list_partials()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let cluster = self.cluster;
        let running = self
            .servers
            .get(move |dir| RedisServers::start(dir, cluster))
            .await?;
        let url = locator(&running.with(|servers| servers.url()), &fresh_prefix("t"));
        Ok(Box::new(
            LazyStore::<Redis>::new(&url, TEST_MAX_PAYLOAD)?.on(running),
        ))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(LazyStore::<Redis>::new(
            locator,
            TEST_MAX_PAYLOAD,
        )?))
    }
}

laminar_state_conformance::conformance_tests!(redis_standalone, RedisFactory::standalone());
laminar_state_conformance::conformance_tests!(redis_cluster, RedisFactory::cluster());
// The suite through every layer of laminar-state-layers at once (on the
// standalone server: the layers see one handle whatever the deployment),
// with a quarter of the proptest cases: the plain column covers the cases,
// this one every call forwarded through every layer.
laminar_state_conformance::conformance_tests!(
    layered_redis,
    laminar_state_conformance::Wrapped::new(
        RedisFactory::standalone(),
        laminar_state_test_support::layered::EveryLayer::over("redis").with_fewer_cases(4)
    )
);
