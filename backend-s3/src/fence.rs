//! The fence object, the snapshots, and which objects are visible: the
//! argument of "Why no fenced-out write is ever visible" in the crate docs
//! lives here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use bytes::Bytes;
use laminar_state_api::StateBackendError;
use tokio::sync::oneshot;

use crate::backend::MAX_RESTARTS;
use crate::client::{Condition, Failure, Listed, classify};
use crate::frame::{FENCE_METADATA, Kind, frame, parse_fence, render_fence, unframe, utf8};
use crate::store::{Shared, copy_error};

/// The fence as stored: its value, the value before it (whose snapshot the
/// next one builds on), and the ETag to swap it against.
#[derive(Debug, Clone, Default)]
pub(crate) struct FenceState {
    pub(crate) value: u64,
    pub(crate) previous: u64,
    pub(crate) etag: Option<String>,
}

/// The partials of periods below one fence that stay visible: key (below
/// the prefix) to ETag.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) visible: HashMap<String, String>,
}

impl Snapshot {
    /// Whether an object of `period` (key below the prefix `relative`, ETag
    /// `etag`) is visible under fence `fence`, whose snapshot is `snapshot`:
    /// the current period always is, an older one only if named.
    pub(crate) fn shows(
        snapshot: Option<&Snapshot>,
        fence: u64,
        period: u64,
        relative: &str,
        etag: &str,
    ) -> bool {
        period >= fence
            || snapshot.is_some_and(|s| s.visible.get(relative).is_some_and(|e| e == etag))
    }

    pub(crate) fn parse(key: &str, body: &[u8]) -> Result<Self, StateBackendError> {
        let text = utf8(key, body)?;
        let mut visible = HashMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (object, etag) = line.split_once(' ').ok_or_else(|| {
                StateBackendError::Serialization(format!("snapshot {key:?} has a bad line"))
            })?;
            visible.insert(object.to_owned(), etag.to_owned());
        }
        Ok(Self { visible })
    }

    pub(crate) fn render(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.visible.iter().collect();
        entries.sort();
        let mut text = String::new();
        for (object, etag) in entries {
            text.push_str(object);
            text.push(' ');
            text.push_str(etag);
            text.push('\n');
        }
        text.into_bytes()
    }
}

impl Shared {
    /// The fence as stored now: one HEAD, since the values travel in the
    /// object's metadata (a HEAD skips the data read a GET makes, which is
    /// most of a small GET's time on SeaweedFS).
    pub(crate) async fn read_fence(&self) -> Result<FenceState, StateBackendError> {
        let key = self.layout.fence();
        let state = match self.head_fence("fence read").await {
            Ok(object) => {
                let text = object
                    .metadata()
                    .and_then(|m| m.get(FENCE_METADATA))
                    .ok_or_else(|| {
                        StateBackendError::Serialization(format!(
                            "the fence object {key:?} has no {FENCE_METADATA} metadata"
                        ))
                    })?;
                let (value, previous) = parse_fence(text).ok_or_else(|| {
                    StateBackendError::Serialization(format!(
                        "the fence object {key:?} holds {text:?}, not a valid fence"
                    ))
                })?;
                FenceState {
                    value,
                    previous,
                    etag: object.e_tag().map(str::to_owned),
                }
            }
            // Connecting made sure it exists (see `check_fence`): gone
            // since, it was deleted, and the fence it held is unknown.
            Err(Failure::Missing(_)) => return Err(self.fence_missing("")),
            Err(other) => return Err(other.into()),
        };
        self.seen.fetch_max(state.value, Ordering::AcqRel);
        Ok(state)
    }

    /// One HEAD of the fence object, for the request `what` names.
    async fn head_fence(&self, what: &str) -> Result<HeadObjectOutput, Failure> {
        let key = self.layout.fence();
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| classify(what, &key, e))
    }

    pub(crate) fn fence_missing(&self, why: &str) -> StateBackendError {
        StateBackendError::Serialization(format!(
            "the fence object {:?} is missing{why}: it exists from the first connect on, so it \
             was deleted (a lifecycle rule or a clean-up?) and the fence it held is unknown; \
             refusing to treat it as fence 0",
            self.layout.fence()
        ))
    }

    /// At connect: the fence object exists, or the store is new (no
    /// snapshot was ever written) and the fence object is created at 0, so
    /// that from then on a missing fence object is known damage. A missing
    /// fence with snapshots is damage now. The value read is not recorded:
    /// a handle learns the fence from its operations.
    pub(crate) async fn check_fence(&self) -> Result<(), StateBackendError> {
        let key = self.layout.fence();
        match self.head_fence("fence check").await {
            Ok(_) => return Ok(()),
            Err(Failure::Missing(_)) => {}
            Err(other) => return Err(other.into()),
        }
        let snapshots = format!("{}snapshots/", self.layout.prefix);
        let page = self
            .list_page("fence check", &snapshots, None, None)
            .await?;
        if let Some(first) = page.objects.first() {
            return Err(self.fence_missing(&format!(" while snapshot {:?} exists", first.key)));
        }
        let fence = render_fence(0, 0);
        match self
            .put_with_fence(
                "fence creation",
                &key,
                frame(Kind::Fence, fence.as_bytes()),
                Condition::Absent,
                Some(fence),
            )
            .await
        {
            // Created, or another process created it first.
            Ok(_) | Err(Failure::Precondition(_)) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    /// The fence, read by a request that started after this call: what a
    /// write needs after its object landed. Callers that arrive while a read
    /// is in flight share the next one, so concurrent writers cost one HEAD
    /// per round rather than one each.
    pub(crate) async fn fresh_fence(self: &Arc<Self>) -> Result<FenceState, StateBackendError> {
        let (answer, result) = oneshot::channel();
        let start = {
            let mut reads = self.fence_reads.lock().expect("fence reads lock");
            reads.waiting.push(answer);
            !std::mem::replace(&mut reads.running, true)
        };
        if start {
            // A task, not this caller, runs the rounds: the caller may be
            // cancelled, the others still need their answer.
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut reads = shared.fence_reads.lock().expect("fence reads lock");
                        if reads.waiting.is_empty() {
                            reads.running = false;
                            return;
                        }
                        std::mem::take(&mut reads.waiting)
                    };
                    let state = shared.read_fence().await;
                    for waiter in waiting {
                        let _ = waiter.send(match &state {
                            Ok(state) => Ok(state.clone()),
                            Err(e) => Err(copy_error(e)),
                        });
                    }
                }
            });
        }
        result
            .await
            .map_err(|_| StateBackendError::Io("s3: the fence reader stopped".into()))?
    }

    /// Make the stored fence at least `version`, with its snapshot written.
    pub(crate) async fn raise(self: &Arc<Self>, version: u64) -> Result<(), StateBackendError> {
        let key = self.layout.fence();
        for _ in 0..MAX_RESTARTS * 4 {
            let state = self.read_fence().await?;
            // The snapshot of the fence in force must exist before the fence
            // moves on: the next snapshot builds on it.
            self.snapshot(&state).await?;
            if state.value >= version {
                return Ok(());
            }
            let fence = render_fence(version, state.value);
            let condition = match &state.etag {
                Some(etag) => Condition::Matches(etag),
                None => Condition::Absent,
            };
            match self
                .put_with_fence(
                    "fence raise",
                    &key,
                    frame(Kind::Fence, fence.as_bytes()),
                    condition,
                    Some(fence.clone()),
                )
                .await
            {
                Ok(_) => {
                    self.seen.fetch_max(version, Ordering::AcqRel);
                    let raised = FenceState {
                        value: version,
                        previous: state.value,
                        etag: None,
                    };
                    self.snapshot(&raised).await?;
                    return Ok(());
                }
                // Another raise won the swap, or this one landed on an
                // earlier attempt: read the fence again.
                Err(Failure::Precondition(_) | Failure::Missing(_)) => continue,
                Err(Failure::Error(e)) => return Err(e),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 fence raise to {version}: the fence kept changing under this raise"
        )))
    }

    /// The snapshot of `fence` (`None` for fence 0, which hides nothing),
    /// building it if the raise that set the fence did not get to.
    pub(crate) async fn snapshot(
        &self,
        fence: &FenceState,
    ) -> Result<Option<Arc<Snapshot>>, StateBackendError> {
        if fence.value == 0 {
            return Ok(None);
        }
        if let Some(stored) = self.stored_snapshot(fence.value).await? {
            return Ok(Some(stored));
        }
        // Build it: everything listed now (after the swap) of an older
        // period that was visible under the fence before.
        let before = if fence.previous == 0 {
            None
        } else {
            Some(self.stored_snapshot(fence.previous).await?.ok_or_else(|| {
                StateBackendError::Serialization(format!(
                    "snapshot {:?} is missing: the fence history is damaged",
                    self.layout.snapshot(fence.previous)
                ))
            })?)
        };
        let key = self.layout.snapshot(fence.value);
        let mut snapshot = Snapshot::default();
        for object in self.list("snapshot", &self.layout.partials(), None).await? {
            let Some((_, _, period)) = self.layout.parse_partial(&object.key) else {
                continue;
            };
            let relative = &object.key[self.layout.prefix.len()..];
            let was_visible = Snapshot::shows(
                before.as_deref(),
                fence.previous,
                period,
                relative,
                &object.etag,
            );
            if period < fence.value && was_visible {
                snapshot
                    .visible
                    .insert(relative.to_owned(), object.etag.clone());
            }
        }
        let framed = frame(Kind::Snapshot, &snapshot.render());
        match self
            .put("snapshot write", &key, framed, Condition::Absent)
            .await
        {
            Ok(_) => {
                let snapshot = Arc::new(snapshot);
                self.cache_snapshot(fence.value, Arc::clone(&snapshot));
                Ok(Some(snapshot))
            }
            // Another handle wrote it first: everyone uses that one.
            Err(Failure::Precondition(_)) => {
                let (framed, _) = self.get("snapshot read", &key).await?;
                self.keep_snapshot(fence.value, &key, framed).map(Some)
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The snapshot of `fence` if it was written: from the cache, else
    /// from the bucket.
    pub(crate) async fn stored_snapshot(
        &self,
        fence: u64,
    ) -> Result<Option<Arc<Snapshot>>, StateBackendError> {
        let cached = self
            .snapshots
            .lock()
            .expect("snapshot cache lock")
            .get(&fence)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let key = self.layout.snapshot(fence);
        match self.get("snapshot read", &key).await {
            Ok((framed, _)) => self.keep_snapshot(fence, &key, framed).map(Some),
            Err(Failure::Missing(_)) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    pub(crate) fn keep_snapshot(
        &self,
        fence: u64,
        key: &str,
        framed: Bytes,
    ) -> Result<Arc<Snapshot>, StateBackendError> {
        let snapshot = Arc::new(Snapshot::parse(
            key,
            &unframe(Kind::Snapshot, key, framed)?,
        )?);
        self.cache_snapshot(fence, Arc::clone(&snapshot));
        Ok(snapshot)
    }

    pub(crate) fn cache_snapshot(&self, fence: u64, snapshot: Arc<Snapshot>) {
        let mut cache = self.snapshots.lock().expect("snapshot cache lock");
        // Only the newest fences are ever asked for again.
        if cache.len() >= 4
            && let Some(&oldest) = cache.keys().min()
        {
            cache.remove(&oldest);
        }
        cache.insert(fence, snapshot);
    }

    /// Whether the snapshot of `fence` (built if the raise did not get to
    /// it) names the partial `key` with ETag `etag` (the key alone when the
    /// store answered no ETag: keys are unique to a write, and a retried PUT
    /// stores the same bytes).
    pub(crate) async fn names(
        &self,
        fence: &FenceState,
        key: &str,
        etag: Option<&str>,
    ) -> Result<bool, StateBackendError> {
        let Some(snapshot) = self.snapshot(fence).await? else {
            return Ok(false);
        };
        let relative = &key[self.layout.prefix.len()..];
        Ok(snapshot.visible.get(relative).is_some_and(|named| {
            etag.is_none_or(|etag| named.trim_matches('"') == etag.trim_matches('"'))
        }))
    }

    /// The listed partials that are visible under `fence`, by vnode, each
    /// vnode's newest last.
    pub(crate) async fn visible(
        &self,
        listed: Vec<Listed>,
        fence: &FenceState,
    ) -> Result<HashMap<u32, Vec<Listed>>, StateBackendError> {
        let mut parsed = Vec::with_capacity(listed.len());
        let mut older = false;
        for object in listed {
            if let Some((_, vnode, period)) = self.layout.parse_partial(&object.key) {
                older |= period < fence.value;
                parsed.push((vnode, period, object));
            }
        }
        let snapshot = if older {
            self.snapshot(fence).await?
        } else {
            None
        };
        let mut visible: HashMap<u32, Vec<Listed>> = HashMap::new();
        for (vnode, period, object) in parsed {
            let relative = &object.key[self.layout.prefix.len()..];
            if Snapshot::shows(
                snapshot.as_deref(),
                fence.value,
                period,
                relative,
                &object.etag,
            ) {
                visible.entry(vnode).or_default().push(object);
            }
        }
        Ok(visible)
    }
}
