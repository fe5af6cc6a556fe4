#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! A [`MemoryStore`] holds:
//!
//! - partials in [`SHARD_COUNT`] shards, picked by vnode; each shard is a
//!   `BTreeMap<(epoch, vnode), Bytes>` under its own lock, so writers to
//!   different vnodes rarely meet and pruning cuts each shard at an epoch
//!   boundary in one `split_off`;
//! - commit markers, `epoch -> committer instance id`, in one ordered map;
//! - the fence, one `u64` shared by every handle on the store.
//!
//! Each [`MemoryBackend`] handle carries its own instance id and vnode
//! capacity, so one process can host several "leaders" on one store, which
//! is what the split-brain and shared-fence scenarios need.
//!
//! # Why the fence is a lock, not an atomic
//!
//! A write checks the fence and inserts while holding the fence's read lock;
//! a raise takes the write lock. A raise therefore waits for writes that
//! already passed the check to land, and no write that checked the old value
//! can land after the raise returns. With a bare atomic, a writer could
//! check, be preempted, and insert after the raise was acknowledged.
//! Readers of the lock never block each other, so writes stay parallel.
//!
//! Lock order, to rule out deadlock: markers, then fence, then a shard.
//!
//! # Configuration
//!
//! [`MemoryConfig`] (in `config.rs`) picks the store, private or shared by
//! name within the process, from a URL: `memory://` or `memory://NAME`,
//! with `?max_payload_len=BYTES`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError, seal_outcome};

mod config;

pub use config::MemoryConfig;

/// The number of partial shards in a store.
pub const SHARD_COUNT: usize = 64;

/// The default largest partial a store accepts: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;

type Shard = BTreeMap<(u64, u32), Bytes>;

/// One in-memory store. Cheap to clone: clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Box<[RwLock<Shard>]>,
    markers: Mutex<BTreeMap<u64, Arc<str>>>,
    fence: RwLock<u64>,
    max_payload_len: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_payload_len", &self.shared.max_payload_len)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with the default payload limit.
    pub fn new() -> Self {
        Self::with_max_payload_len(DEFAULT_MAX_PAYLOAD_LEN)
    }

    /// An empty store that refuses partials longer than `max_payload_len`.
    pub fn with_max_payload_len(max_payload_len: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                shards: (0..SHARD_COUNT).map(|_| RwLock::default()).collect(),
                markers: Mutex::default(),
                fence: RwLock::new(0),
                max_payload_len,
            }),
        }
    }

    /// A handle on this store for `instance_id`, serving vnodes
    /// `0..vnode_capacity`.
    pub fn open(&self, instance_id: impl Into<String>, vnode_capacity: u32) -> MemoryBackend {
        MemoryBackend {
            limits: InputLimits::new(vnode_capacity, self.shared.max_payload_len),
            shared: Arc::clone(&self.shared),
            instance_id: instance_id.into(),
            told: AtomicU64::new(0),
        }
    }
}

/// A handle on a [`MemoryStore`], with its own instance id.
pub struct MemoryBackend {
    shared: Arc<Shared>,
    instance_id: String,
    limits: InputLimits,
    /// The highest version this handle was told; a handle told less than
    /// the store's fence is a deposed leader and may not seal.
    told: AtomicU64,
}

impl MemoryBackend {
    /// A handle on a new, private store.
    pub fn new(instance_id: impl Into<String>, vnode_capacity: u32) -> Self {
        MemoryStore::new().open(instance_id, vnode_capacity)
    }

    /// The store this handle writes to, for opening more handles on it.
    pub fn store(&self) -> MemoryStore {
        MemoryStore {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The instance id this handle records in the commit markers it wins.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("instance_id", &self.instance_id)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StateBackend for MemoryBackend {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.limits.check_write(vnode, &bytes)?;
        let fence = read(&self.shared.fence);
        if *fence > 0 && assignment_version < *fence {
            return Err(StateBackendError::StaleVersion {
                caller: assignment_version,
                authoritative: *fence,
            });
        }
        write(self.shared.shard(vnode)).insert((epoch, vnode), bytes);
        Ok(())
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        Ok(read(self.shared.shard(vnode)).get(&(epoch, vnode)).cloned())
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        // Holding the marker lock across the gate keeps a concurrent prune
        // from removing partials between the check and the seal.
        let mut markers = lock(&self.shared.markers);
        let fence = *read(&self.shared.fence);
        let told = self.told.load(Ordering::Acquire);
        if told > 0 && told < fence {
            return Err(StateBackendError::StaleVersion {
                caller: told,
                authoritative: fence,
            });
        }
        let all_present = vnodes
            .iter()
            .all(|&vnode| read(self.shared.shard(vnode)).contains_key(&(epoch, vnode)));
        if !all_present {
            return Ok(false);
        }
        let committer = markers
            .entry(epoch)
            .or_insert_with(|| Arc::from(self.instance_id.as_str()));
        seal_outcome(committer, &self.instance_id)
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let mut markers = lock(&self.shared.markers);
        *markers = markers.split_off(&before);
        for shard in self.shared.shards.iter() {
            let mut shard = write(shard);
            *shard = shard.split_off(&(before, 0));
        }
        Ok(())
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
        let mut fence = write(&self.shared.fence);
        *fence = (*fence).max(version);
    }

    fn authoritative_version(&self) -> u64 {
        *read(&self.shared.fence)
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        Ok(lock(&self.shared.markers).keys().next_back().copied())
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        Ok(lock(&self.shared.markers)
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(&epoch, _)| epoch)
            .collect())
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        let mut vnodes: Vec<u32> = self
            .shared
            .shards
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .range((epoch, 0)..=(epoch, u32::MAX))
                    .map(|(&(_, vnode), _)| vnode)
                    .collect::<Vec<_>>()
            })
            .collect();
        vnodes.sort_unstable();
        Ok(Some(vnodes))
    }
}

impl Shared {
    fn shard(&self, vnode: u32) -> &RwLock<Shard> {
        &self.shards[vnode as usize % SHARD_COUNT]
    }
}

// No code path panics while holding a lock, but if a caller's task is torn
// down mid-operation the data is still consistent: every mutation is a single
// map operation. So a poisoned lock is taken over rather than propagated.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}
