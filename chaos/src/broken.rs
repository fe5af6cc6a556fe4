//! Deliberately broken backends, to show the checker has teeth: each wraps
//! a real backend and breaks one promise.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

/// Which promise to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakage {
    /// Writes ignore the fence: every write is sent at the highest version,
    /// so a deposed leader's writes land.
    Fence,
    /// The gate is not checked: `epoch_complete` answers `Ok(true)` to
    /// anyone, without looking at partials or markers.
    Seal,
    /// One write in 16 is acknowledged without being stored.
    Lose,
}

impl Breakage {
    /// Parse `fence`, `seal`, `lose`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "fence" => Ok(Breakage::Fence),
            "seal" => Ok(Breakage::Seal),
            "lose" => Ok(Breakage::Lose),
            other => Err(format!("unknown breakage {other:?}: fence, seal or lose")),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Breakage::Fence => "fence",
            Breakage::Seal => "seal",
            Breakage::Lose => "lose",
        }
    }
}

/// A backend with one promise broken.
pub struct Broken {
    inner: Arc<dyn StateBackend>,
    breakage: Breakage,
    writes: AtomicU64,
}

impl Broken {
    /// Wrap `inner`.
    pub fn wrap(inner: Arc<dyn StateBackend>, breakage: Breakage) -> Arc<dyn StateBackend> {
        Arc::new(Self {
            inner,
            breakage,
            writes: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl laminar_state_api::ForwardingBackend for Broken {
    type Inner = dyn StateBackend;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        match self.breakage {
            Breakage::Fence => {
                self.inner
                    .write_partial(vnode, epoch, u64::MAX, bytes)
                    .await
            }
            Breakage::Lose if self.writes.fetch_add(1, Ordering::Relaxed) % 16 == 15 => Ok(()),
            _ => {
                self.inner
                    .write_partial(vnode, epoch, assignment_version, bytes)
                    .await
            }
        }
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.inner.read_partial(vnode, epoch).await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.inner.read_partials(epoch, vnodes).await
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        match self.breakage {
            Breakage::Seal => Ok(true),
            _ => self.inner.epoch_complete(epoch, vnodes).await,
        }
    }
}
