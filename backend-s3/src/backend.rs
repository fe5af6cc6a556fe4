//! [`S3Backend`]: a handle with its own instance id, and the
//! [`StateBackend`] implementation, in the trait's order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError, seal_outcome};

use crate::client::{Condition, Failure, Listed};
use crate::config::S3Config;
use crate::fence::FenceState;
use crate::frame::{Kind, frame, unframe};
use crate::prunes::{Marker, Registry, now_ms};
use crate::store::S3Store;

/// Times a write is redone in a newer period, or an operation restarted
/// after racing a prune or a raise, before giving up.
pub(crate) const MAX_RESTARTS: usize = 8;

/// A handle on an [`S3Store`], with its own instance id.
pub struct S3Backend {
    pub(crate) store: S3Store,
    pub(crate) instance_id: String,
    pub(crate) limits: InputLimits,
    /// The highest version this handle was told.
    pub(crate) told: AtomicU64,
    /// The highest version this handle has made durable in the bucket.
    pub(crate) carried: AtomicU64,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("bucket", &self.store.shared.bucket)
            .field("prefix", &self.store.shared.layout.prefix)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// Connect with `config` and return a handle.
    pub async fn connect(
        config: &S3Config,
        instance_id: impl Into<String>,
        vnode_capacity: u32,
    ) -> Result<Self, StateBackendError> {
        Ok(S3Store::connect(config)
            .await?
            .handle(instance_id, vnode_capacity))
    }

    /// The store this handle uses.
    pub fn store(&self) -> &S3Store {
        &self.store
    }

    /// Carry a raise made on this handle to the bucket before its next write
    /// or seal, as the contract requires.
    async fn carry_fence(&self) -> Result<(), StateBackendError> {
        let told = self.told.load(Ordering::Acquire);
        if told > self.carried.load(Ordering::Acquire) {
            self.store.shared.raise(told).await?;
            self.carried.fetch_max(told, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The sealed epochs above `after`, ascending; only the highest when
    /// `highest`. The markers are listed, then the prune registry is read
    /// (so a prune that deleted a listed marker's partials began before the
    /// read, and shows), and each marker is judged under it (see "Sealing
    /// and pruning" in the crate docs).
    async fn sealed(
        &self,
        what: &str,
        after: Option<u64>,
        highest: bool,
    ) -> Result<Vec<u64>, StateBackendError> {
        let shared = &self.store.shared;
        let start_after = after.map(|a| shared.layout.marker(a));
        'listing: for _ in 0..MAX_RESTARTS {
            let markers = shared
                .list(what, &shared.layout.markers(), start_after.as_deref())
                .await?;
            if markers.is_empty() {
                return Ok(Vec::new());
            }
            let registry = shared.read_registry(what).await?;
            let mut sealed = Vec::new();
            let mut order: Vec<&Listed> = markers.iter().collect();
            if highest {
                order.reverse();
            }
            for listed in order {
                let epoch = shared.layout.parse_marker(&listed.key)?;
                match shared
                    .listed_marker_seals(what, listed, epoch, &registry.registry)
                    .await?
                {
                    Some(true) => {
                        sealed.push(epoch);
                        if highest {
                            break;
                        }
                    }
                    Some(false) => {}
                    // Replaced or deleted since the listing.
                    None => continue 'listing,
                }
            }
            return Ok(sealed);
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the markers kept changing between listing and reading"
        )))
    }

    /// Refuse a handle told a version below `fence`: a deposed leader.
    fn refuse_deposed(&self, fence: &FenceState) -> Result<(), StateBackendError> {
        let told = self.told.load(Ordering::Acquire);
        if told > 0 && told < fence.value {
            return Err(Self::stale(told, fence.value));
        }
        Ok(())
    }

    fn stale(caller: u64, authoritative: u64) -> StateBackendError {
        StateBackendError::StaleVersion {
            caller,
            authoritative,
        }
    }
}

#[async_trait]
impl StateBackend for S3Backend {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.limits.check_write(vnode, &bytes)?;
        self.carry_fence().await?;
        let shared = &self.store.shared;
        let version = assignment_version;
        // The period is the fence this store last read; a write never
        // carries a period above its own version.
        let mut period = shared.seen.load(Ordering::Acquire);
        let told = self.told.load(Ordering::Acquire);
        if version < told.max(period) {
            // Refused without writing; the refusal names the fence in force
            // now, which may be higher than this handle last saw.
            let fence = shared.fresh_fence().await?.value;
            return Err(Self::stale(
                version,
                fence.max(self.authoritative_version()),
            ));
        }
        let body = frame(Kind::Partial, &bytes);
        let what = format!("write_partial({vnode}, {epoch})");
        for _ in 0..MAX_RESTARTS {
            let key = shared.layout.partial(epoch, vnode, period);
            // The prune registry as it was before the PUT went out, and when.
            let (before, sent_ms) = (shared.cached_registry(), now_ms());
            let etag = shared
                .put(&what, &key, body.clone(), Condition::None)
                .await
                .map_err(StateBackendError::from)?;
            // A fence read that started after the object landed.
            let fence = shared.fresh_fence().await?;
            if period >= fence.value {
                // Its period is current (and `version >= period`): visible
                // now, and named by the next raise's snapshot, whose listing
                // follows the swap.
                return Ok(());
            }
            // The fence rose past the period: the object is visible if and
            // only if the snapshot of that fence names it (readers judge it
            // the same way, and every later snapshot keeps what this one
            // shows). Named: it landed before the raise's listing, so the
            // write took effect before the raise.
            if shared.names(&fence, &key, etag.as_deref()).await? {
                return Ok(());
            }
            // Not named. If the object was stored from the moment it landed
            // until now, it was no part of the snapshot's listing, or was
            // listed invisible: invisible now and under every later fence.
            // But a prune of the epoch may have deleted it, after readers
            // saw it (it may have landed before the raise) and before that
            // listing; and a retry of the PUT (its first answer lost, or
            // this process paused past the attempt timeout) may have stored
            // it again since, so finding it proves nothing. Only a prune of
            // the epoch deletes a partial: one unfinished when the PUT went
            // out (listed by the registry this process saw before, its
            // lease, by its newest end, not over then), or one that began
            // since, makes the answer unknown; as does the object being
            // gone.
            let now = shared.read_registry(&what).await?;
            let pruned = Registry::pruned_after(&before.registry, &now.registry, epoch, sent_ms);
            if pruned || !shared.exists(&what, &key).await? {
                return Err(StateBackendError::Io(format!(
                    "s3 {what}: the fence rose past this write's period ({period}) and the \
                     epoch was pruned while the write was being decided; whether it took effect \
                     before the raise is unknown (the fence is {} now)",
                    fence.value
                )));
            }
            // The answer below is true whether or not this delete succeeds;
            // it only keeps the bucket clean.
            shared.discard(&key).await;
            if version < fence.value {
                return Err(Self::stale(version, fence.value));
            }
            // The writer's version still satisfies the fence: write again in
            // the new period.
            period = fence.value;
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the fence kept rising during the write"
        )))
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        let shared = &self.store.shared;
        let what = format!("read_partial({vnode}, {epoch})");
        let prefix = shared.layout.vnode_partials(epoch, vnode);
        for _ in 0..MAX_RESTARTS {
            let listed = shared.list(&what, &prefix, None).await?;
            // Nothing listed: nothing was stored when the listing was
            // answered, whatever the fence.
            let Some(newest) = listed.last().map(|o| o.key.clone()) else {
                return Ok(None);
            };
            // The listed objects are judged under a fence read that starts
            // after the listing was answered (an object listed then landed
            // before that read, so a raise the read does not show had not
            // swapped the fence when it landed). Meanwhile the newest
            // listed object, usually the answer, is fetched.
            let (fence, fetched) = tokio::join!(shared.fresh_fence(), shared.get(&what, &newest));
            let mut visible = shared.visible(listed, &fence?).await?;
            let Some(chosen) = visible.remove(&vnode).and_then(|mut v| v.pop()) else {
                return Ok(None);
            };
            let fetched = if chosen.key == newest {
                fetched
            } else {
                shared.get(&what, &chosen.key).await
            };
            match fetched {
                Ok((framed, _)) => return unframe(Kind::Partial, &chosen.key, framed).map(Some),
                // Pruned, or a refused write deleted, since the listing.
                Err(Failure::Missing(_)) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the partial kept vanishing between listing and reading"
        )))
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        self.carry_fence().await?;
        let shared = &self.store.shared;
        let what = format!("epoch_complete({epoch})");
        let key = shared.layout.marker(epoch);
        // The prune registry as it was at some moment before the listing
        // (see "Sealing and pruning" in the crate docs): the newest copy
        // this process saw, read again only when it shows a prune of this
        // epoch.
        let mut before = shared.cached_registry();
        // The ETag of a marker found at the key that is no seal: replaced,
        // not created.
        let mut occupant: Option<String> = None;
        for _ in 0..MAX_RESTARTS {
            // Whatever lease end the copy gives: a running prune renews its
            // lease, so only a fresh read tells whether it is over.
            if before.registry.lists_unfinished(epoch) {
                before = shared.read_registry(&what).await?;
                if before.registry.blocking(epoch, now_ms()) {
                    // A prune of this epoch is running: ordered after it,
                    // the seal finds its partials gone.
                    return Ok(false);
                }
            }
            let listed = shared.list_epoch(&what, epoch, vnodes).await?;
            // Judged under a fence read that starts after the listing was
            // answered (see `read_partial`). A deposed leader is refused on
            // that read, as a best effort: the check cannot be atomic with
            // the marker PUT (see "Sealing and the fence" in the crate docs).
            if !shared.layout.names_every(&listed, vnodes) {
                // A vnode has no object at all: not complete, whatever the
                // fence shows.
                self.refuse_deposed(&shared.fresh_fence().await?)?;
                return Ok(false);
            }
            // The registry read the seal needs (below) goes out with the
            // fence read, saving a round trip: each only needs to start
            // after the listing was answered. Their answers are judged in
            // this order.
            let (fence, now) = tokio::join!(shared.fresh_fence(), shared.read_registry(&what));
            let fence = fence?;
            self.refuse_deposed(&fence)?;
            let present = shared.visible(listed, &fence).await?;
            if !vnodes.iter().all(|v| present.contains_key(v)) {
                return Ok(false);
            }
            let marker = Marker {
                began: before.registry.began,
                committer: self.instance_id.clone(),
            };
            // Read after the listing was answered and before the marker
            // goes out: a prune of this epoch that began since `before` may
            // be deleting what was just counted, so start over from this
            // registry. One that began later is ordered after this seal
            // (see "Sealing and pruning" in the crate docs).
            let now = now?;
            if !shared.seals(&now.registry, &key, epoch, &marker)? {
                before = now;
                continue;
            }
            let condition = match &occupant {
                Some(etag) => Condition::Matches(etag),
                None => Condition::Absent,
            };
            let body = Marker::frame(marker.began, &marker.committer);
            match shared.put(&what, &key, body, condition).await {
                // Sealed: no prune of the epoch had begun since `before` when
                // `now` was read, after the listing. A prune that began
                // since is ordered after the seal: the marker is a seal for
                // every reader until it shows, and no seal once it does.
                Ok(_) => return Ok(true),
                Err(Failure::Precondition(_) | Failure::Missing(_)) => {}
                Err(other) => return Err(other.into()),
            }
            // Sealed already, perhaps by this very instance on an attempt
            // whose answer was lost: the marker names the committer, if it
            // is a seal.
            match shared.get(&what, &key).await {
                Ok((framed, etag)) => {
                    let found = Marker::parse(&key, framed)?;
                    // Its gate created it after a registry read that showed
                    // no prune of the epoch since its count, so it was a
                    // seal before any prune `now` does not show: judged
                    // under `now` (no second read) unless its gate read a
                    // newer registry than `now`.
                    let judge = if found.began <= now.registry.began {
                        now
                    } else {
                        shared.read_registry(&what).await?
                    };
                    if shared.seals(&judge.registry, &key, epoch, &found)? {
                        return seal_outcome(&found.committer, &self.instance_id);
                    }
                    // Left by a gate that raced a prune of this epoch (a seal
                    // before that prune, or none): no seal now. Start over,
                    // and replace it if the epoch can be sealed again.
                    occupant = etag;
                    before = judge;
                }
                // Pruned between the two requests, and the partials with it
                // (prune deletes markers first): start over from the
                // listing, never create the marker again unchecked.
                Err(Failure::Missing(_)) => occupant = None,
                Err(other) => return Err(other.into()),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the marker kept appearing and vanishing, or prunes of the epoch kept \
             beginning"
        )))
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        if before == 0 {
            return Ok(());
        }
        // Its own task: a caller that gives up (drops this future) does not
        // cut the prune short, so it still unregisters and blocks no seal.
        let task = tokio::spawn(Arc::clone(&self.store.shared).prune(before));
        task.await.map_err(|e| {
            StateBackendError::Io(format!(
                "s3 prune_before({before}): the prune task failed: {e}"
            ))
        })?
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
    }

    fn authoritative_version(&self) -> u64 {
        self.told
            .load(Ordering::Acquire)
            .max(self.store.shared.seen.load(Ordering::Acquire))
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        Ok(self
            .sealed("latest_committed_epoch()", None, true)
            .await?
            .pop())
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.sealed(&format!("sealed_epochs({after})"), Some(after), false)
            .await
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        let shared = &self.store.shared;
        let what = format!("partials({epoch})");
        let listed = shared
            .list(&what, &shared.layout.epoch_partials(epoch), None)
            .await?;
        if listed.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // As `read_partial` does: the listed objects are judged under a
        // fence read that starts after the listing was answered, so an
        // object a fenced-out write left behind (invisible to every read)
        // is not listed either.
        let fence = shared.fresh_fence().await?;
        let mut vnodes: Vec<u32> = shared
            .visible(listed, &fence)
            .await?
            .into_iter()
            .filter(|(_, objects)| !objects.is_empty())
            .map(|(vnode, _)| vnode)
            .collect();
        vnodes.sort_unstable();
        Ok(Some(vnodes))
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.set_authoritative_version(version);
        self.carry_fence().await
    }

    /// One listing of the whole epoch (one LIST per 1000 objects; in key
    /// ranges of 512 asked vnodes, 16 at once, when more are asked), judged
    /// under one fence read that starts after it, as `read_partial` judges
    /// its own; then one GET per distinct vnode asked, at most
    /// 32 at a time. An object deleted between the listing and
    /// its GET (a prune, a refused write's clean-up) restarts the batch.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.limits.check_vnodes(vnodes)?;
        if vnodes.is_empty() {
            return Ok(Vec::new());
        }
        let shared = &self.store.shared;
        let what = format!("read_partials({epoch}, {} vnodes)", vnodes.len());
        'restart: for _ in 0..MAX_RESTARTS {
            let listed = shared.list_epoch(&what, epoch, vnodes).await?;
            if listed.is_empty() {
                return Ok(vec![None; vnodes.len()]);
            }
            let fence = shared.fresh_fence().await?;
            let mut visible = shared.visible(listed, &fence).await?;
            let mut chosen: Vec<(u32, String)> = Vec::new();
            for &vnode in vnodes {
                if let Some(newest) = visible.remove(&vnode).and_then(|mut v| v.pop()) {
                    chosen.push((vnode, newest.key));
                }
            }
            let mut found: HashMap<u32, Bytes> = HashMap::with_capacity(chosen.len());
            let mut gets = tokio::task::JoinSet::new();
            let mut chosen = chosen.into_iter();
            loop {
                while gets.len() < BATCH_GETS {
                    let Some((vnode, key)) = chosen.next() else {
                        break;
                    };
                    let (shared, what) = (Arc::clone(shared), what.clone());
                    gets.spawn(async move {
                        let fetched = shared.get(&what, &key).await;
                        (vnode, key, fetched)
                    });
                }
                let Some(done) = gets.join_next().await else {
                    break;
                };
                let (vnode, key, fetched) = done.map_err(|e| {
                    StateBackendError::Io(format!("s3 {what}: a GET task failed: {e}"))
                })?;
                match fetched {
                    Ok((framed, _)) => {
                        found.insert(vnode, unframe(Kind::Partial, &key, framed)?);
                    }
                    Err(Failure::Missing(_)) => continue 'restart,
                    Err(other) => return Err(other.into()),
                }
            }
            return Ok(vnodes
                .iter()
                .map(|vnode| found.get(vnode).cloned())
                .collect());
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: partials kept vanishing between listing and reading"
        )))
    }
}

/// The most GETs one [`read_partials`](StateBackend::read_partials) keeps
/// in flight.
pub(crate) const BATCH_GETS: usize = 32;
