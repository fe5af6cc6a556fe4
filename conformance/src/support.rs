//! Small helpers shared by the properties.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::factory::{BackendFactory, TestStore};
use crate::runner::splitmix64;

/// Turn a backend error into a check failure that says which call failed.
pub(crate) trait Context<T> {
    fn ctx(self, call: impl FnOnce() -> String) -> Result<T, String>;
}

impl<T> Context<T> for Result<T, StateBackendError> {
    fn ctx(self, call: impl FnOnce() -> String) -> Result<T, String> {
        self.map_err(|error| format!("{} failed: {error}", call()))
    }
}

/// A fresh store from the factory.
pub(crate) async fn fresh_store(
    factory: &dyn BackendFactory,
) -> Result<Box<dyn TestStore>, String> {
    factory.create_store().await.ctx(|| "create_store()".into())
}

/// A handle on `store`.
pub(crate) async fn open(
    store: &dyn TestStore,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, String> {
    store
        .open(instance_id, vnode_capacity)
        .await
        .ctx(|| format!("open({instance_id:?}, {vnode_capacity})"))
}

/// An instance-id prefix unique within this process run.
pub(crate) fn unique_tag(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `len` deterministic bytes derived from `seed`, different for different
/// seeds.
pub(crate) fn payload(seed: u64, len: usize) -> Bytes {
    let mut bytes = Vec::with_capacity(len);
    let mut state = seed;
    while bytes.len() < len {
        state = splitmix64(state);
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    Bytes::from(bytes)
}

/// Read `(vnode, epoch)` through `handle`, as a check.
pub(crate) async fn read(
    handle: &Arc<dyn StateBackend>,
    vnode: u32,
    epoch: u64,
) -> Result<Option<Bytes>, String> {
    handle
        .read_partial(vnode, epoch)
        .await
        .ctx(|| format!("read_partial({vnode}, {epoch})"))
}

/// Write through `handle`, as a check.
pub(crate) async fn write(
    handle: &Arc<dyn StateBackend>,
    vnode: u32,
    epoch: u64,
    version: u64,
    bytes: &Bytes,
) -> Result<(), String> {
    handle
        .write_partial(vnode, epoch, version, bytes.clone())
        .await
        .ctx(|| {
            format!(
                "write_partial({vnode}, {epoch}, version {version}, {} bytes)",
                bytes.len()
            )
        })
}

/// Whether `result` is exactly `StaleVersion { caller, authoritative }`.
pub(crate) fn is_stale<T>(
    result: &Result<T, StateBackendError>,
    caller: u64,
    authoritative: u64,
) -> bool {
    matches!(result, Err(StateBackendError::StaleVersion { caller: c, authoritative: a })
        if *c == caller && *a == authoritative)
}

/// A short description of a result, for failure messages.
pub(crate) fn describe<T: std::fmt::Debug>(result: &Result<T, StateBackendError>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(error) => format!("Err({error:?})"),
    }
}
