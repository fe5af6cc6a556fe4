#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! A [`MemoryStore`] holds:
//!
//! - partials in [`SHARD_COUNT`] shards, picked by vnode, each under its own
//!   lock (so writers to different vnodes rarely meet): its epochs in
//!   order, each with its vnodes' partials sorted by vnode, so a new epoch
//!   appends and a prune pops whole epochs from the front;
//! - commit markers, `epoch -> committer instance id`, in one ordered map;
//! - the fence, one `u64` shared by every handle on the store.
//!
//! Each [`MemoryBackend`] handle carries its own instance id and vnode
//! capacity, so one process can host several "leaders" on one store, which
//! is what the split-brain and shared-fence scenarios need.
//!
//! # Why no write checked against an old fence lands after a raise
//!
//! The fence is an atomic, but a write reads it only while holding its
//! shard's lock, and inserts before letting go; a raise stores the new
//! value, then takes and releases every shard's lock in turn. A write that
//! read the old value therefore still held its shard's lock when the raise
//! stored, and the raise waits for that lock: the write has landed before
//! the raise returns. A write that takes its shard's lock after the raise
//! passed that shard reads the new value (the lock orders the store before
//! the read). A bare atomic checked outside the lock would let a writer
//! check, be preempted, and insert after the raise was acknowledged.
//! Writes to different shards never touch a shared lock, so they stay
//! parallel; the raise, rare, pays one lock round trip per shard.
//!
//! The gate checks the fence again while it holds the read locks of every
//! shard its vnodes live in, and seals there: a raise cannot pass those
//! locks meanwhile, so a seal that finds the fence not deposing it takes
//! effect before any raise returns, and cannot count a partial written
//! after one.
//!
//! Lock order, to rule out deadlock: markers, then shards. Only a gate
//! holds several shard locks at once (read locks, each taken once), and
//! only while it holds markers; everything else holds one at a time.
//!
//! # Configuration
//!
//! [`MemoryConfig`] (in `config.rs`) picks the store, private or shared by
//! name within the process, from a URL: `memory://` or `memory://NAME`,
//! with `?max_payload_len=BYTES`.

use std::collections::{BTreeMap, VecDeque};
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

/// One shard's partials: its epochs in order, each with its vnodes'
/// partials sorted by vnode. A new epoch appends at the back, a prune pops
/// from the front, and a lookup is a binary search over the epochs (a few
/// dozen, contiguous), then over the epoch's vnodes of this shard. The
/// vectors of pruned epochs are kept, emptied, for the epochs to come: in
/// steady state, checkpoints allocate and free nothing here. What is kept
/// is bounded by the most epochs the shard ever held at once, at 40 bytes a
/// partial (the payloads themselves are freed by the prune).
#[derive(Default)]
struct Shard {
    epochs: VecDeque<(u64, Vec<(u32, Bytes)>)>,
    spare: Vec<Vec<(u32, Bytes)>>,
}

impl Shard {
    fn insert(&mut self, epoch: u64, vnode: u32, bytes: Bytes) {
        let at = match self.find_epoch(epoch) {
            Ok(at) => at,
            Err(at) => {
                let partials = self.spare.pop().unwrap_or_default();
                self.epochs.insert(at, (epoch, partials));
                at
            }
        };
        let partials = &mut self.epochs[at].1;
        // Engines write vnodes in order more often than not: append.
        if partials.last().is_none_or(|&(last, _)| last < vnode) {
            partials.push((vnode, bytes));
            return;
        }
        match partials.binary_search_by_key(&vnode, |&(v, _)| v) {
            Ok(found) => partials[found].1 = bytes,
            Err(slot) => partials.insert(slot, (vnode, bytes)),
        }
    }

    fn get(&self, epoch: u64, vnode: u32) -> Option<&Bytes> {
        let partials = &self.epochs[self.find_epoch(epoch).ok()?].1;
        // This shard's vnodes are `vnode % SHARD_COUNT` apart: where every
        // one is present, the vnode's place is known without a search.
        let guess = vnode as usize / SHARD_COUNT;
        if let Some((found, bytes)) = partials.get(guess)
            && *found == vnode
        {
            return Some(bytes);
        }
        let at = partials.binary_search_by_key(&vnode, |&(v, _)| v).ok()?;
        Some(&partials[at].1)
    }

    fn find_epoch(&self, epoch: u64) -> Result<usize, usize> {
        let Some(&(first, _)) = self.epochs.front() else {
            return Err(0);
        };
        // Epochs are checkpoint numbers, consecutive as a rule: where none
        // is missing, the epoch's place is known without a search.
        if let Some(guess) = epoch.checked_sub(first)
            && let Ok(guess) = usize::try_from(guess)
            && self.epochs.get(guess).is_some_and(|&(e, _)| e == epoch)
        {
            return Ok(guess);
        }
        match self.epochs.back() {
            Some(&(last, _)) if last < epoch => Err(self.epochs.len()),
            _ => self.epochs.binary_search_by_key(&epoch, |&(e, _)| e),
        }
    }

    fn vnodes(&self, epoch: u64) -> Vec<u32> {
        self.find_epoch(epoch).map_or_else(
            |_| Vec::new(),
            |at| self.epochs[at].1.iter().map(|&(vnode, _)| vnode).collect(),
        )
    }

    fn prune_before(&mut self, before: u64) {
        while self
            .epochs
            .front()
            .is_some_and(|&(epoch, _)| epoch < before)
        {
            if let Some((_, mut partials)) = self.epochs.pop_front() {
                partials.clear();
                self.spare.push(partials);
            }
        }
    }
}

/// One in-memory store. Cheap to clone: clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Box<[CacheLine<RwLock<Shard>>]>,
    markers: Mutex<BTreeMap<u64, Arc<str>>>,
    /// Read by writes under their shard's lock: see "Why no write checked
    /// against an old fence lands after a raise".
    fence: AtomicU64,
    max_payload_len: usize,
}

/// A value alone on its cache line (128 bytes: two 64-byte lines, as
/// adjacent-line prefetchers pull pairs), so that writers of neighbouring
/// shards on different cores do not invalidate each other's locks.
#[repr(align(128))]
#[derive(Default)]
struct CacheLine<T>(T);

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
                shards: (0..SHARD_COUNT).map(|_| CacheLine::default()).collect(),
                markers: Mutex::default(),
                fence: AtomicU64::new(0),
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

impl MemoryBackend {
    /// `StaleVersion` if a raise above what this handle was told has taken
    /// effect: it is a deposed leader, which may not seal.
    fn check_not_deposed(&self) -> Result<(), StateBackendError> {
        let fence = self.shared.fence.load(Ordering::Acquire);
        let told = self.told.load(Ordering::Acquire);
        if told > 0 && told < fence {
            return Err(StateBackendError::StaleVersion {
                caller: told,
                authoritative: fence,
            });
        }
        Ok(())
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
        let mut shard = write(self.shared.shard(vnode));
        let fence = self.shared.fence.load(Ordering::Acquire);
        if fence > 0 && assignment_version < fence {
            return Err(StateBackendError::StaleVersion {
                caller: assignment_version,
                authoritative: fence,
            });
        }
        shard.insert(epoch, vnode, bytes);
        Ok(())
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        Ok(read(self.shared.shard(vnode)).get(epoch, vnode).cloned())
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        // Holding the marker lock across the gate keeps a concurrent prune
        // from removing partials between the check and the seal.
        let mut markers = lock(&self.shared.markers);
        // Refused at once if already deposed; checked again below, where it
        // counts.
        self.check_not_deposed()?;
        // The seal takes effect while every listed vnode's shard lock is
        // held: a raise must pass each of those locks before it returns,
        // so if the fence still reads as not deposing us here, no raise has
        // returned, and no partial written after one can be among those
        // found. (Checked only before the partials, a deposed leader could
        // seal with a partial its successor wrote after the raise.)
        self.shared
            .with_all_present(epoch, vnodes, || {
                self.check_not_deposed()?;
                let committer = markers
                    .entry(epoch)
                    .or_insert_with(|| Arc::from(self.instance_id.as_str()));
                seal_outcome(committer, &self.instance_id)
            })
            .unwrap_or(Ok(false))
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        let mut markers = lock(&self.shared.markers);
        *markers = markers.split_off(&before);
        for shard in self.shared.shards.iter() {
            write(&shard.0).prune_before(before);
        }
        Ok(())
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
        self.shared.fence.fetch_max(version, Ordering::AcqRel);
        // Wait out every write that read the old value under its shard's
        // lock (see the crate docs): each lock taken here was let go by it.
        for shard in self.shared.shards.iter() {
            drop(write(&shard.0));
        }
    }

    fn authoritative_version(&self) -> u64 {
        self.shared.fence.load(Ordering::Acquire)
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
            .flat_map(|shard| read(&shard.0).vnodes(epoch))
            .collect();
        vnodes.sort_unstable();
        Ok(Some(vnodes))
    }
}

impl Shared {
    fn shard(&self, vnode: u32) -> &RwLock<Shard> {
        &self.shards[vnode as usize % SHARD_COUNT].0
    }

    /// `then()`, run while every one of `vnodes` is seen to have a partial
    /// at `epoch` (their shards' read locks still held); `None` if one has
    /// none. Each shard's read lock is taken once, when its first vnode
    /// comes up: 256 vnodes cost 64 lock round trips, not 256. Holding
    /// several read locks cannot deadlock: writers, raises and the other
    /// readers hold one shard lock at a time, and the only other holder of
    /// several, another gate, or a prune, waits for the markers lock the
    /// caller holds.
    fn with_all_present<T>(
        &self,
        epoch: u64,
        vnodes: &[u32],
        then: impl FnOnce() -> T,
    ) -> Option<T> {
        let mut held: [Option<RwLockReadGuard<'_, Shard>>; SHARD_COUNT] =
            std::array::from_fn(|_| None);
        let all_present = vnodes.iter().all(|&vnode| {
            let index = vnode as usize % SHARD_COUNT;
            held[index]
                .get_or_insert_with(|| read(&self.shards[index].0))
                .get(epoch, vnode)
                .is_some()
        });
        all_present.then(then)
    }
}

// No code path panics while holding a lock (and the code under a lock never
// awaits, so a cancelled caller cannot stop it half-way); were one to panic,
// the data would still read consistently: the worst a mutation cut short
// leaves is an epoch with no partials in a shard, which reads as absent. So
// a poisoned lock is taken over rather than propagated.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard against an ordered map of the same writes and prunes, in an
    /// order that defeats both fast paths (epochs with gaps and out of
    /// order, vnodes missing and out of order, overwrites).
    #[test]
    fn a_shard_holds_what_an_ordered_map_holds() {
        let (mut shard, mut model) = (Shard::default(), BTreeMap::new());
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = |bound: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound
        };
        for step in 0..20_000u64 {
            let epoch = next(40) + if next(8) == 0 { 1_000 } else { 0 };
            let vnode = (next(12) * SHARD_COUNT as u64) as u32 + 3;
            if next(100) == 0 {
                let before = next(45);
                shard.prune_before(before);
                model.retain(|&(e, _), _| e >= before);
            } else {
                let bytes = Bytes::from(step.to_le_bytes().to_vec());
                shard.insert(epoch, vnode, bytes.clone());
                model.insert((epoch, vnode), bytes);
            }
            let (e, v) = (next(45), (next(13) * SHARD_COUNT as u64) as u32 + 3);
            assert_eq!(
                shard.get(e, v),
                model.get(&(e, v)),
                "step {step}: ({e}, {v})"
            );
            let listed: Vec<u32> = model
                .range((e, 0)..=(e, u32::MAX))
                .map(|(&(_, v), _)| v)
                .collect();
            assert_eq!(shard.vnodes(e), listed, "step {step}: vnodes of {e}");
        }
        assert!(shard.epochs.iter().all(|(_, p)| !p.is_empty()));
    }
}
