//! The handle and the trait, in the trait's order.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError};
use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::OrRedb;
use crate::committer::Request;
use crate::frame::unframe;
use crate::prune::prune;
use crate::store::RedbStore;
use crate::{MARKERS, PARTIALS};

/// A handle on a [`RedbStore`], with its own instance id.
#[derive(Clone)]
pub struct RedbBackend {
    pub(crate) store: RedbStore,
    pub(crate) instance_id: Arc<str>,
    pub(crate) limits: InputLimits,
    /// The highest version this handle (and its clones) was told; a handle
    /// told less than the fence is a deposed leader and may not seal.
    pub(crate) told: Arc<AtomicU64>,
}

impl RedbBackend {
    /// Open the store at `path` (see [`RedbStore::open`]) and return a handle
    /// on it. Blocking.
    pub fn open(
        path: impl Into<PathBuf>,
        instance_id: impl Into<String>,
        vnode_capacity: u32,
    ) -> Result<Self, StateBackendError> {
        Ok(RedbStore::open(path)?.handle(instance_id, vnode_capacity))
    }

    /// The store this handle writes to.
    pub fn store(&self) -> &RedbStore {
        &self.store
    }
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend")
            .field("path", &self.store.inner.core.path)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StateBackend for RedbBackend {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.limits.check_write(vnode, &bytes)?;
        let (reply, answer) = oneshot::channel();
        let request = Request::Write {
            vnode,
            epoch,
            version: assignment_version,
            bytes,
            reply,
        };
        self.store.submit(request, answer).await
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        // On the caller's task, not the blocking pool: see "Reads" in the
        // crate docs for why, and what it costs.
        let core = &self.store.inner.core;
        let what = || format!("read_partial({vnode}, {epoch})");
        core.with_db(what, |db| {
            let txn = db.begin_read().or_redb(what)?;
            let table = txn.open_table(PARTIALS).or_redb(what)?;
            let stored = table.get((epoch, vnode)).or_redb(what)?;
            stored
                .map(|frame| unframe(frame.value(), &what).map(Bytes::copy_from_slice))
                .transpose()
        })
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        let (reply, answer) = oneshot::channel();
        let request = Request::Seal {
            epoch,
            vnodes: vnodes.to_vec(),
            instance_id: Arc::clone(&self.instance_id),
            told: self.told.load(Ordering::Acquire),
            reply,
        };
        self.store.submit(request, answer).await
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let what = format!("prune_before({before})");
        self.store
            .blocking(what, move |core, what| prune(core, what, before))
            .await
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
        // No lock, no wait: the committer checks every request against the
        // fence as it is when it applies that request.
        self.store
            .inner
            .core
            .fence
            .fetch_max(version, Ordering::AcqRel);
    }

    fn authoritative_version(&self) -> u64 {
        self.store.inner.core.fence.load(Ordering::Acquire)
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.store
            .blocking_read("latest_committed_epoch()".to_owned(), |txn, what| {
                let markers = txn.open_table(MARKERS).or_redb(what)?;
                let last = markers.last().or_redb(what)?;
                Ok(last.map(|(epoch, _)| epoch.value()))
            })
            .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.store
            .blocking_read(format!("sealed_epochs({after})"), move |txn, what| {
                let markers = txn.open_table(MARKERS).or_redb(what)?;
                markers
                    .range::<u64>((Bound::Excluded(after), Bound::Unbounded))
                    .or_redb(what)?
                    .map(|entry| entry.map(|(epoch, _)| epoch.value()).or_redb(what))
                    .collect()
            })
            .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        self.store
            .blocking_read(format!("partials({epoch})"), move |txn, what| {
                let table = txn.open_table(PARTIALS).or_redb(what)?;
                table
                    .range((epoch, 0)..=(epoch, u32::MAX))
                    .or_redb(what)?
                    .map(|entry| entry.map(|(key, _)| key.value().1).or_redb(what))
                    .collect::<Result<Vec<u32>, _>>()
                    .map(Some)
            })
            .await
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.set_authoritative_version(version);
        let (reply, answer) = oneshot::channel();
        self.store
            .submit(Request::PersistFence { reply }, answer)
            .await
    }

    /// One read transaction for all of them, on the caller's task (see
    /// "Reads"): a consistent view of one commit, one B-tree descent per
    /// vnode.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.limits.check_vnodes(vnodes)?;
        let core = &self.store.inner.core;
        let what = || format!("read_partials({epoch}, {} vnodes)", vnodes.len());
        core.with_db(what, |db| {
            let txn = db.begin_read().or_redb(what)?;
            let table = txn.open_table(PARTIALS).or_redb(what)?;
            vnodes
                .iter()
                .map(|&vnode| {
                    let what = || format!("read_partials({epoch}, ...): vnode {vnode}");
                    let stored = table.get((epoch, vnode)).or_redb(what)?;
                    stored
                        .map(|frame| unframe(frame.value(), &what).map(Bytes::copy_from_slice))
                        .transpose()
                })
                .collect()
        })
    }
}
