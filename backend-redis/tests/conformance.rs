//! The conformance suite against real redis-server processes: a standalone
//! server, and a 3-node Redis Cluster. Each test starts its own servers on
//! free loopback ports; every store is a fresh namespace on them.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};
use laminar_state_redis::{RedisConfig, RedisStore};
use support::{RedisCluster, RedisServer};
use tokio::sync::OnceCell;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

enum Servers {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Servers {
    fn url(&self) -> String {
        match self {
            Servers::Standalone(server) => format!("{}/", server.url()),
            Servers::Cluster(cluster) => cluster.url(),
        }
    }

    fn restart(&mut self) {
        match self {
            Servers::Standalone(server) => server.restart(),
            Servers::Cluster(cluster) => cluster.restart(),
        }
    }
}

struct Running {
    servers: Mutex<Servers>,
    url: String,
    _dir: tempfile::TempDir,
}

struct RedisFactory {
    cluster: bool,
    running: OnceCell<Arc<Running>>,
}

impl RedisFactory {
    fn standalone() -> Self {
        Self {
            cluster: false,
            running: OnceCell::new(),
        }
    }

    fn cluster() -> Self {
        Self {
            cluster: true,
            running: OnceCell::new(),
        }
    }

    async fn running(&self) -> Result<Arc<Running>, StateBackendError> {
        let cluster = self.cluster;
        self.running
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let servers = if cluster {
                        Servers::Cluster(RedisCluster::start(dir.path()))
                    } else {
                        Servers::Standalone(RedisServer::start(dir.path(), &[]))
                    };
                    let url = servers.url();
                    Arc::new(Running {
                        servers: Mutex::new(servers),
                        url,
                        _dir: dir,
                    })
                })
                .await
                .map_err(|e| StateBackendError::Io(format!("starting redis failed: {e}")))
            })
            .await
            .cloned()
    }
}

fn fresh_namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

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
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let running = self.running().await?;
        let locator = locator(&running.url, &fresh_namespace());
        Ok(Box::new(RedisTestStore::new(&locator, Some(running))?))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(RedisTestStore::new(locator, None)?))
    }
}

struct RedisTestStore {
    locator: String,
    config: RedisConfig,
    store: tokio::sync::Mutex<Option<RedisStore>>,
    running: Option<Arc<Running>>,
}

impl RedisTestStore {
    fn new(locator: &str, running: Option<Arc<Running>>) -> Result<Self, StateBackendError> {
        Ok(Self {
            locator: locator.to_owned(),
            config: RedisConfig::from_url(locator)?,
            store: tokio::sync::Mutex::new(None),
            running,
        })
    }
}

#[async_trait]
impl TestStore for RedisTestStore {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        let mut store = self.store.lock().await;
        if store.is_none() {
            *store = Some(RedisStore::connect(&self.config).await?);
        }
        let store = store.as_ref().expect("connected above");
        Ok(Arc::new(store.handle(instance_id, vnode_capacity).await?))
    }

    fn max_payload_len(&self) -> usize {
        TEST_MAX_PAYLOAD
    }

    /// Durability is the server's: kill it with SIGKILL and start it again
    /// on the same data, then reconnect.
    async fn reopen(&self) -> Result<(), StateBackendError> {
        *self.store.lock().await = None;
        if let Some(running) = &self.running {
            let running = Arc::clone(running);
            tokio::task::spawn_blocking(move || running.servers.lock().unwrap().restart())
                .await
                .map_err(|e| StateBackendError::Io(format!("restarting redis failed: {e}")))?;
        }
        Ok(())
    }

    fn locator(&self) -> Option<String> {
        Some(self.locator.clone())
    }
}

laminar_state_conformance::conformance_tests!(redis_standalone, RedisFactory::standalone());
laminar_state_conformance::conformance_tests!(redis_cluster, RedisFactory::cluster());
