// The README's `my_backend` (its "Test your own backend" example includes
// this file, so that the example compiles as a doc test): the memory backend
// under the names the README gives yours.
use laminar_state_api::StateBackendError;
use laminar_state_memory::{MemoryBackend, MemoryStore};

pub const MAX_PAYLOAD: usize = 1 << 20;

pub struct Store(MemoryStore);

impl Store {
    pub fn fresh() -> Result<Self, StateBackendError> {
        Ok(Store(MemoryStore::with_max_payload_len(MAX_PAYLOAD)))
    }

    pub fn handle(&self, instance_id: &str, vnodes: u32) -> MemoryBackend {
        self.0.open(instance_id, vnodes)
    }
}
