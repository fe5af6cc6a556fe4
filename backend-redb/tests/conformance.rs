//! The conformance suite against the redb backend.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, Damage, TestStore};
use laminar_state_redb::{DamagedRecord, RedbConfig, RedbStore};

/// A small limit keeps the oversize checks cheap.
const TEST_MAX_PAYLOAD: usize = 1 << 20;

struct RedbFactory;

struct RedbTestStore {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl RedbTestStore {
    async fn store(&self) -> Result<RedbStore, StateBackendError> {
        let config = RedbConfig {
            max_payload_len: TEST_MAX_PAYLOAD,
            ..RedbConfig::new(&self.path)
        };
        tokio::task::spawn_blocking(move || RedbStore::open_with(config))
            .await
            .map_err(|e| StateBackendError::Io(e.to_string()))?
    }
}

#[async_trait]
impl BackendFactory for RedbFactory {
    fn name(&self) -> String {
        "redb".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .fenced_seal()
            .cross_process_reopen()
            .recovery_queries()
            .corruption_detection()
            .atomic_prune()
            .list_partials()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        let dir = tempfile::tempdir().map_err(|e| StateBackendError::Io(e.to_string()))?;
        Ok(Box::new(RedbTestStore {
            path: dir.path().join("state.redb"),
            _dir: Some(dir),
        }))
    }

    async fn attach_store(&self, locator: &str) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(RedbTestStore {
            path: PathBuf::from(locator),
            _dir: None,
        }))
    }
}

#[async_trait]
impl TestStore for RedbTestStore {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(Arc::new(
            self.store().await?.handle(instance_id, vnode_capacity),
        ))
    }

    fn max_payload_len(&self) -> usize {
        TEST_MAX_PAYLOAD
    }

    fn locator(&self) -> Option<String> {
        Some(self.path.display().to_string())
    }

    async fn damage(&self, what: Damage) -> Result<(), StateBackendError> {
        self.store().await?.store_damaged(damaged_record(what))
    }
}

/// The redb record a conformance [`Damage`] names.
fn damaged_record(what: Damage) -> DamagedRecord {
    match what {
        Damage::Partial { vnode, epoch } => DamagedRecord::Partial { vnode, epoch },
        Damage::Marker { epoch } => DamagedRecord::Marker { epoch },
    }
}

laminar_state_conformance::conformance_tests!(redb_store, RedbFactory);
