//! Servers started once per conformance factory, and the conformance
//! [`TestStore`] of a networked backend: it is named by its URL, connects
//! on its first [`open`](TestStore::open), and drops its connection on
//! [`reopen`](TestStore::reopen) (restarting the servers, for a backend
//! whose durability is its server's), so the next handle reads everything
//! afresh.
//!
//! A backend's test supplies the few lines that differ in a
//! [`Connector`]: how a URL becomes a config, a config a connected store,
//! and a store a handle.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{Damage, TestStore};
use tokio::sync::OnceCell;

/// Servers a store needs kept alive, and what a reopen does to them.
pub trait Servers: Send + 'static {
    /// Called by [`TestStore::reopen`] once the store's connection is
    /// dropped (off the async runtime: it may block). Nothing by default.
    fn on_reopen(&mut self) {}
}

/// Servers running in their own temporary directory, which goes when they
/// do.
#[derive(Debug)]
pub struct Running<S> {
    servers: Mutex<S>,
    // Dropped after the servers.
    dir: tempfile::TempDir,
}

impl<S: Servers> Running<S> {
    /// Start servers in a new temporary directory (blocking).
    pub fn start(start: impl FnOnce(&Path) -> S) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            servers: Mutex::new(start(dir.path())),
            dir,
        }
    }

    /// Their directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Call `f` with the servers.
    pub fn with<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        f(&mut self.servers.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Servers started by the first store that needs them, off the async
/// runtime, and shared by every store of the factory after it.
#[derive(Debug)]
pub struct Shared<S> {
    running: OnceCell<Arc<Running<S>>>,
}

impl<S> Default for Shared<S> {
    fn default() -> Self {
        Self {
            running: OnceCell::new(),
        }
    }
}

impl<S: Servers> Shared<S> {
    /// None started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The servers, started with `start` (in their directory) on the first
    /// call.
    pub async fn get(
        &self,
        start: impl FnOnce(&Path) -> S + Send + 'static,
    ) -> Result<Arc<Running<S>>, StateBackendError> {
        self.running
            .get_or_try_init(|| async {
                tokio::task::spawn_blocking(|| Arc::new(Running::start(start)))
                    .await
                    .map_err(|e| StateBackendError::Io(format!("starting the servers failed: {e}")))
            })
            .await
            .cloned()
    }
}

/// What differs between networked backends' test stores.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The backend's config.
    type Config: Send + Sync;
    /// A connected store, from which handles are opened.
    type Store: Send + Sync;

    /// The config a store's URL names (the backend's `from_url`).
    fn config(url: &str) -> Result<Self::Config, StateBackendError>;

    /// Connect.
    async fn connect(config: &Self::Config) -> Result<Self::Store, StateBackendError>;

    /// A handle on the store.
    async fn open(
        store: &Self::Store,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError>;

    /// Damage stored data, for the corruption property.
    async fn damage(_store: &Self::Store, what: Damage) -> Result<(), StateBackendError> {
        Err(StateBackendError::Io(format!(
            "this test store cannot inject {what:?}"
        )))
    }
}

/// Keeps servers alive and restarts them on reopen, whatever they are.
trait Keep: Send + Sync {
    fn on_reopen(&self);
}

impl<S: Servers> Keep for Running<S> {
    fn on_reopen(&self) {
        self.with(Servers::on_reopen);
    }
}

/// The store a URL names, connected on first use (see the module docs).
pub struct LazyStore<C: Connector> {
    url: String,
    config: C::Config,
    max_payload_len: usize,
    store: tokio::sync::Mutex<Option<C::Store>>,
    servers: Option<Arc<dyn Keep>>,
}

impl<C: Connector> LazyStore<C> {
    /// The store at `url`, whose handles accept partials of up to
    /// `max_payload_len` bytes (the limit the URL sets). Parsing the URL is
    /// all it does now; a child process attaches with this alone.
    pub fn new(url: &str, max_payload_len: usize) -> Result<Self, StateBackendError> {
        Ok(Self {
            url: url.to_owned(),
            config: C::config(url)?,
            max_payload_len,
            store: tokio::sync::Mutex::new(None),
            servers: None,
        })
    }

    /// Keep `servers` running as long as the store, and call their
    /// [`Servers::on_reopen`] on every reopen.
    pub fn on<S: Servers>(mut self, servers: Arc<Running<S>>) -> Self {
        self.servers = Some(servers);
        self
    }

    /// The connected store, connecting first if need be, under its lock.
    async fn connected(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<C::Store>>, StateBackendError> {
        let mut store = self.store.lock().await;
        if store.is_none() {
            *store = Some(C::connect(&self.config).await?);
        }
        Ok(store)
    }
}

#[async_trait]
impl<C: Connector> TestStore for LazyStore<C> {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        let store = self.connected().await?;
        C::open(
            store.as_ref().expect("connected"),
            instance_id,
            vnode_capacity,
        )
        .await
    }

    fn max_payload_len(&self) -> usize {
        self.max_payload_len
    }

    async fn reopen(&self) -> Result<(), StateBackendError> {
        *self.store.lock().await = None;
        if let Some(servers) = &self.servers {
            let servers = Arc::clone(servers);
            tokio::task::spawn_blocking(move || servers.on_reopen())
                .await
                .map_err(|e| {
                    StateBackendError::Io(format!("restarting the servers failed: {e}"))
                })?;
        }
        Ok(())
    }

    fn locator(&self) -> Option<String> {
        Some(self.url.clone())
    }

    async fn damage(&self, what: Damage) -> Result<(), StateBackendError> {
        let store = self.connected().await?;
        C::damage(store.as_ref().expect("connected"), what).await
    }
}
