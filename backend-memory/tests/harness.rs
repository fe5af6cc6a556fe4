//! The conformance suite against the memory backend, through the suite's
//! `harness = false` entry point: every property is a trial; those that
//! need a capability the memory backend does not claim (durability, cross
//! process, corruption detection) are reported ignored with the missing
//! capability, and each property's time is printed after the run.
//!
//! `cargo test -p laminar-state-memory --test harness` (or nextest), with
//! libtest's usual arguments: a filter, `--exact`, `--list`, `--ignored`.

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};
use laminar_state_memory::MemoryStore;

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

struct MemoryFactory;

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

laminar_state_conformance::conformance_main!(memory, MemoryFactory);
