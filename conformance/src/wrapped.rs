//! The suite through a wrapper: any factory's stores, every handle wrapped
//! in middleware (layers, a client-side cache, a proxy of your own) before
//! the properties see it. A wrapper that forwards a method wrongly fails
//! the same property a backend with that bug would.
//!
//! ```
//! use std::sync::Arc;
//! use laminar_state_api::StateBackend;
//! use laminar_state_conformance::{Wrapped, Wrapper};
//!
//! /// Middleware that changes nothing: the suite must pass through it.
//! struct Nothing;
//!
//! impl Wrapper for Nothing {
//!     fn name(&self) -> String {
//!         "nothing".into()
//!     }
//!
//!     fn wrap(
//!         &self,
//!         backend: Arc<dyn StateBackend>,
//!         _instance_id: &str,
//!         _max_payload_len: usize,
//!     ) -> Arc<dyn StateBackend> {
//!         backend
//!     }
//! }
//!
//! # fn factory<F: laminar_state_conformance::BackendFactory>(inner: F) {
//! // In a test file: laminar_state_conformance::conformance_tests!(through_nothing, Wrapped::new(inner, Nothing));
//! let _wrapped = Wrapped::new(inner, Nothing);
//! # }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::{BackendFactory, Capabilities, Damage, TestStore};

/// Middleware put around every handle the suite opens.
pub trait Wrapper: Send + Sync + 'static {
    /// The wrapper's name; the factory's name is the inner one's, then `+`,
    /// then this.
    fn name(&self) -> String;

    /// Wrap `backend`, the handle of `instance_id`, whose callers may write
    /// up to `max_payload_len` bytes (the inner store's limit less
    /// [`overhead`](Self::overhead)).
    fn wrap(
        &self,
        backend: Arc<dyn StateBackend>,
        instance_id: &str,
        max_payload_len: usize,
    ) -> Arc<dyn StateBackend>;

    /// The most bytes the wrapper adds to a payload on its way down
    /// (headers, nonces, tags), so the suite's oversize checks aim at the
    /// wrapper's limit, not at the inner store's.
    fn overhead(&self) -> usize {
        0
    }

    /// How many proptest cases to run, given what the inner factory would
    /// run: a wrapper over a slow remote store may lower it.
    fn proptest_cases(&self, inner: u32) -> u32 {
        inner
    }
}

/// A [`BackendFactory`] whose stores are `F`'s, with every handle wrapped
/// by `W`. It claims exactly `F`'s capabilities: a wrapper must keep them
/// all.
pub struct Wrapped<F, W> {
    inner: F,
    wrapper: Arc<W>,
}

impl<F: BackendFactory, W: Wrapper> Wrapped<F, W> {
    /// `inner`'s stores, seen through `wrapper`.
    pub fn new(inner: F, wrapper: W) -> Self {
        Self {
            inner,
            wrapper: Arc::new(wrapper),
        }
    }

    fn store(&self, inner: Box<dyn TestStore>) -> Box<dyn TestStore> {
        Box::new(WrappedStore {
            inner,
            wrapper: Arc::clone(&self.wrapper),
        })
    }
}

#[async_trait]
impl<F: BackendFactory, W: Wrapper> BackendFactory for Wrapped<F, W> {
    fn name(&self) -> String {
        format!("{}+{}", self.inner.name(), self.wrapper.name())
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(self.store(self.inner.create_store().await?))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(self.store(self.inner.attach_store(locator).await?))
    }

    fn proptest_cases(&self, requested: u32) -> u32 {
        self.wrapper
            .proptest_cases(self.inner.proptest_cases(requested))
    }

    fn race_rounds(&self, requested: u32) -> u32 {
        self.inner.race_rounds(requested)
    }

    fn crash_kills(&self, requested: u32) -> u32 {
        self.inner.crash_kills(requested)
    }
}

struct WrappedStore<W> {
    inner: Box<dyn TestStore>,
    wrapper: Arc<W>,
}

#[async_trait]
impl<W: Wrapper> TestStore for WrappedStore<W> {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        let handle = self.inner.open(instance_id, vnode_capacity).await?;
        Ok(self
            .wrapper
            .wrap(handle, instance_id, self.max_payload_len()))
    }

    fn max_payload_len(&self) -> usize {
        self.inner
            .max_payload_len()
            .saturating_sub(self.wrapper.overhead())
    }

    async fn reopen(&self) -> Result<(), StateBackendError> {
        self.inner.reopen().await
    }

    fn locator(&self) -> Option<String> {
        self.inner.locator()
    }

    /// The inner store's damage: whatever framing the wrapper adds, bytes
    /// the inner store no longer vouches for must come back as an error.
    async fn damage(&self, what: Damage) -> Result<(), StateBackendError> {
        self.inner.damage(what).await
    }
}
