//! The memory backend as the conformance suite sees it, shared by the
//! suite's two entry points (`conformance.rs`: one test per property, what
//! `cargo xtask conformance` runs; `harness.rs`: the libtest-mimic runner).

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};
use laminar_state_memory::MemoryStore;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

pub(crate) struct MemoryFactory;

#[async_trait]
impl BackendFactory for MemoryFactory {
    fn name(&self) -> String {
        "memory".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .fenced_seal()
            .recovery_queries()
            .atomic_prune()
            .list_partials()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(MemoryTestStore(
            MemoryStore::with_max_payload_len(TEST_MAX_PAYLOAD),
        )))
    }
}

struct MemoryTestStore(MemoryStore);

#[async_trait]
impl TestStore for MemoryTestStore {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(Arc::new(self.0.open(instance_id, vnode_capacity)))
    }

    fn max_payload_len(&self) -> usize {
        TEST_MAX_PAYLOAD
    }
}
