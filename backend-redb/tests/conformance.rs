//! The conformance suite against the redb backend.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, Damage, TestStore};
use laminar_state_redb::{RedbConfig, RedbStore};
use redb::TableDefinition;

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
        const PARTIALS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("partials");
        const MARKERS: TableDefinition<u64, &[u8]> = TableDefinition::new("markers");
        let store = self.store().await?;
        let io = |e: redb::Error| StateBackendError::Io(e.to_string());
        store.with_raw_database(|db| {
            let txn = db.begin_write().map_err(|e| io(e.into()))?;
            match what {
                // A valid header whose checksum does not match the body.
                Damage::Partial { vnode, epoch } => {
                    let mut table = txn.open_table(PARTIALS).map_err(|e| io(e.into()))?;
                    table
                        .insert((epoch, vnode), &[1u8, 0, 0, 0, 0, 42][..])
                        .map_err(|e| io(e.into()))?;
                }
                Damage::Marker { epoch } => {
                    let mut table = txn.open_table(MARKERS).map_err(|e| io(e.into()))?;
                    table
                        .insert(epoch, &[9u8, 9][..])
                        .map_err(|e| io(e.into()))?;
                }
            }
            txn.commit().map_err(|e| io(e.into()))
        })?
    }
}

laminar_state_conformance::conformance_tests!(redb_store, RedbFactory);
