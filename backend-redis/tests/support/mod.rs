//! The conformance factory of the redis backend's tests, shared by the
//! matrix (`conformance.rs`) and the TLS and ACL tests (`tls_acl.rs`):
//! which servers a store lives on, and how its URL reaches them.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};
use laminar_state_redis::{RedisBackend, RedisConfig, RedisStore};
use laminar_state_test_support::fresh_prefix;
use laminar_state_test_support::lazy::{Connector, LazyStore, Running, Shared};
use laminar_state_test_support::redis::{RedisCluster, RedisServer, RedisServers};
use laminar_state_test_support::tls::TestCertificates;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

/// A store is a namespace, reached by its URL. Its durability is the
/// server's: a reopen restarts the servers (SIGKILL, then the same data).
pub struct Redis;

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

/// The servers a factory's stores live on, and how they are reached.
#[derive(Debug, Clone)]
pub enum Deployment {
    /// One server, plain TCP.
    Standalone,
    /// A 3-node Redis Cluster.
    Cluster,
    /// One server that speaks only TLS, with a CA generated at test time;
    /// the URL is `rediss://` and trusts that CA (`tls_ca_file`).
    Tls,
    /// One server whose ACL users are `users` (lines of an aclfile),
    /// reached as `credentials`.
    Acl {
        /// `user NAME on >PASSWORD ...` lines.
        users: Vec<String>,
        /// `user:password`, put in the URL.
        credentials: String,
    },
}

impl Deployment {
    fn start(&self, dir: &Path) -> RedisServers {
        match self {
            Deployment::Standalone => RedisServers::start(dir, false),
            Deployment::Cluster => RedisServers::start(dir, true),
            Deployment::Tls => {
                let certificates = TestCertificates::generate(&dir.join("certs"));
                RedisServers::Standalone(RedisServer::start_tls(
                    &dir.join("server"),
                    &certificates,
                    &[],
                ))
            }
            Deployment::Acl { users, .. } => {
                let aclfile = dir.join("users.acl");
                std::fs::write(&aclfile, users.join("\n") + "\n").expect("write the aclfile");
                let aclfile = aclfile.display().to_string();
                RedisServers::Standalone(RedisServer::start(
                    &dir.join("server"),
                    &["--aclfile", &aclfile],
                ))
            }
        }
    }

    fn url(&self, servers: &RedisServers) -> String {
        let url = servers.url();
        match self {
            Deployment::Acl { credentials, .. } => {
                url.replacen("://", &format!("://{credentials}@"), 1)
            }
            _ => url,
        }
    }
}

/// Fresh namespaces on servers of one [`Deployment`], started by the first
/// store.
pub struct RedisFactory {
    deployment: Deployment,
    servers: Shared<RedisServers>,
}

impl RedisFactory {
    /// Stores on servers of `deployment`.
    pub fn new(deployment: Deployment) -> Self {
        Self {
            deployment,
            servers: Shared::new(),
        }
    }

    /// The URL of a fresh namespace, starting the servers if need be.
    pub async fn fresh_url(
        &self,
    ) -> Result<(String, Arc<Running<RedisServers>>), StateBackendError> {
        let deployment = self.deployment.clone();
        let running = self.servers.get(move |dir| deployment.start(dir)).await?;
        let url = locator(
            &running.with(|servers| self.deployment.url(servers)),
            &fresh_prefix("t"),
        );
        Ok((url, running))
    }
}

/// The URL of namespace `namespace` on the servers at `url`.
pub fn locator(url: &str, namespace: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}namespace={namespace}&max_payload_len={TEST_MAX_PAYLOAD}")
}

#[async_trait]
impl BackendFactory for RedisFactory {
    fn name(&self) -> String {
        match self.deployment {
            Deployment::Standalone => "redis".into(),
            Deployment::Cluster => "redis-cluster".into(),
            Deployment::Tls => "redis-tls".into(),
            Deployment::Acl { .. } => "redis-acl".into(),
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
        let (url, running) = self.fresh_url().await?;
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

/// A redis-server in a temporary directory of its own, removed once the
/// server has stopped.
pub struct TempServer {
    // Declared first, so dropped (stopped) before the directory goes.
    server: RedisServer,
    _dir: tempfile::TempDir,
}

impl TempServer {
    /// Start a server with the `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self {
            server: RedisServer::start(dir.path(), extra),
            _dir: dir,
        }
    }
}

impl std::ops::Deref for TempServer {
    type Target = RedisServer;

    fn deref(&self) -> &RedisServer {
        &self.server
    }
}

impl std::ops::DerefMut for TempServer {
    fn deref_mut(&mut self) -> &mut RedisServer {
        &mut self.server
    }
}

/// A 3-node Redis Cluster in a temporary directory of its own, removed once
/// the cluster has stopped.
pub struct TempCluster {
    // Declared first, so dropped (stopped) before the directory goes.
    cluster: RedisCluster,
    _dir: tempfile::TempDir,
}

impl TempCluster {
    /// Start the cluster (off the runtime's threads: it takes a while).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().to_path_buf();
        let cluster = tokio::task::spawn_blocking(move || RedisCluster::start(&path))
            .await
            .expect("starting the cluster");
        Self { cluster, _dir: dir }
    }
}

impl std::ops::Deref for TempCluster {
    type Target = RedisCluster;

    fn deref(&self) -> &RedisCluster {
        &self.cluster
    }
}

/// Write `bytes` as the partial of every one of `vnodes` in `epoch`, at
/// version 0.
pub async fn write_epoch(handle: &RedisBackend, epoch: u64, vnodes: &[u32], bytes: bytes::Bytes) {
    for &vnode in vnodes {
        handle
            .write_partial(vnode, epoch, 0, bytes.clone())
            .await
            .unwrap();
    }
}
