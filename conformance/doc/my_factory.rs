// The README's `MyFactory` (its examples after the first include this file,
// so that they compile as doc tests): the first example's factory, on the
// memory backend.
use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};
use laminar_state_memory::MemoryStore;

const MAX_PAYLOAD: usize = 1 << 20;

pub struct MyFactory;

impl MyFactory {
    /// The README's second factory (over TLS, for a networked backend).
    pub fn tls() -> Self {
        MyFactory
    }
}

#[async_trait]
impl BackendFactory for MyFactory {
    fn name(&self) -> String {
        "mine".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .fenced_seal()
            .recovery_queries()
            .atomic_prune()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(MyStore(MemoryStore::with_max_payload_len(
            MAX_PAYLOAD,
        ))))
    }
}

struct MyStore(MemoryStore);

#[async_trait]
impl TestStore for MyStore {
    async fn open(
        &self,
        instance_id: &str,
        vnodes: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(Arc::new(self.0.open(instance_id, vnodes)))
    }

    fn max_payload_len(&self) -> usize {
        MAX_PAYLOAD
    }
}
