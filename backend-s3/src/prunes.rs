//! The prune registry, the leases of running prunes, and which commit
//! markers are seals: the argument of "Sealing and pruning" in the crate
//! docs lives here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use laminar_state_api::StateBackendError;

use crate::backend::MAX_RESTARTS;
use crate::client::{Condition, Failure, Listed};
use crate::frame::{FORMAT, Kind, MARKER_FORMAT, frame, frame_as, unframe, unframe_as, utf8};
use crate::layout::stamp;
use crate::store::Shared;

/// How far apart the clocks of the machines sharing a store may be: a
/// prune's lease is over for everyone once their clock is this far past
/// the lease's end.
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

/// A lease lasts this many request bounds (see [`Shared::request_bound`]).
pub(crate) const LEASE_BOUNDS: u32 = 4;

/// The most steps the registry keeps (see [`Registry::steps`]); past it the
/// two oldest are merged, conservatively.
pub(crate) const MAX_STEPS: usize = 256;

/// A prune that has not finished: its bound, and when its lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruning {
    pub(crate) bound: u64,
    /// Milliseconds since the Unix epoch, by the pruner's clock.
    pub(crate) expires_ms: u64,
}

impl Pruning {
    /// Whether the lease is over for a reader whose clock reads `now_ms`:
    /// past its end by more than [`MAX_CLOCK_SKEW`].
    pub(crate) fn ended(&self, now_ms: u64) -> bool {
        now_ms > self.expires_ms.saturating_add(millis(MAX_CLOCK_SKEW))
    }
}

/// The prune registry, `P/prunes`: replaced only by compare-and-swap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Registry {
    /// Raised by every change, so a cached copy can tell it is older, and a
    /// registry that went back (was deleted) is detected.
    pub(crate) version: u64,
    /// How many prunes ever began (registered).
    pub(crate) began: u64,
    /// `(n, bound)`, `n` ascending and `bound` strictly descending: the
    /// `n`-th prune to begin had `bound`, and every prune that began after
    /// it a lower one. So the highest bound of the prunes that began after
    /// the first `c` is the bound of the first step with `n > c`
    /// ([`Registry::pruned_since`]). A prune whose bound is at least an
    /// earlier step's replaces that step; with bounds that rise over time
    /// (an engine pruning what it no longer needs) there is one step.
    pub(crate) steps: Vec<(u64, u64)>,
    /// Unfinished prunes by id.
    pub(crate) pruning: BTreeMap<String, Pruning>,
}

impl Registry {
    /// Register prune `id`: one more began, with `bound`.
    pub(crate) fn begin(&mut self, id: &str, bound: u64, expires_ms: u64) {
        self.began += 1;
        self.pruning
            .insert(id.to_owned(), Pruning { bound, expires_ms });
        self.steps.retain(|&(_, b)| b > bound);
        self.steps.push((self.began, bound));
        if self.steps.len() > MAX_STEPS {
            // (n1, b1), (n2, b2) become (n2, b1): the markers whose gate
            // read a count in n1..n2 are judged against b1 instead of b2, a
            // higher bound, so a seal may be lost but never a marker without
            // partials taken for one.
            let (_, oldest) = self.steps.remove(0);
            self.steps[0].1 = oldest;
        }
    }

    /// The highest bound of the prunes that began after the first `began`
    /// (0 if none): those may have deleted partials a gate counted after
    /// reading `began`.
    pub(crate) fn pruned_since(&self, began: u64) -> u64 {
        self.steps
            .iter()
            .find(|&&(n, _)| n > began)
            .map_or(0, |&(_, bound)| bound)
    }

    /// The highest bound of any prune ever begun: a marker at or above it
    /// is a seal whatever count its gate read.
    pub(crate) fn highest_bound(&self) -> u64 {
        self.steps.first().map_or(0, |&(_, bound)| bound)
    }

    /// Whether an unfinished prune whose lease is not over deletes `epoch`.
    /// Only as true as the copy's lease ends: a running prune renews its
    /// lease, so an old copy can show a lease over that was extended since
    /// (see [`Registry::lists_unfinished`]).
    pub(crate) fn blocking(&self, epoch: u64, now_ms: u64) -> bool {
        self.pruning
            .values()
            .any(|p| p.bound > epoch && !p.ended(now_ms))
    }

    /// Whether this copy lists an unfinished prune that deletes `epoch`,
    /// whatever lease end it gives (a renewal may have moved it since).
    pub(crate) fn lists_unfinished(&self, epoch: u64) -> bool {
        self.pruning.values().any(|p| p.bound > epoch)
    }

    /// Whether a prune that deletes `epoch` may have deleted an object that
    /// landed after `sent_ms`, judged from `before` (a registry read before
    /// then) and `now` (read after): one that began since `before`, or one
    /// unfinished in `before` whose lease, by its newest end (`now`'s:
    /// renewals only move it later), was not over at `sent_ms`; one `now`
    /// no longer lists may have finished at any moment since.
    pub(crate) fn pruned_after(before: &Self, now: &Self, epoch: u64, sent_ms: u64) -> bool {
        now.pruned_since(before.began) > epoch
            || before.pruning.iter().any(|(id, p)| {
                p.bound > epoch
                    && now
                        .pruning
                        .get(id)
                        .is_none_or(|newest| !newest.ended(sent_ms))
            })
    }

    /// Forget the prunes whose lease is over (everyone ignores them).
    pub(crate) fn forget_ended(&mut self, now_ms: u64) {
        self.pruning.retain(|_, p| !p.ended(now_ms));
    }

    pub(crate) fn render(&self) -> String {
        let mut text = format!("version {}\nbegan {}\n", self.version, self.began);
        for (n, bound) in &self.steps {
            text.push_str(&format!("step {n} {bound}\n"));
        }
        for (id, p) in &self.pruning {
            text.push_str(&format!("pruning {id} {} {}\n", p.bound, p.expires_ms));
        }
        text
    }

    pub(crate) fn parse(key: &str, text: &str) -> Result<Self, StateBackendError> {
        let bad = |line: &str| {
            StateBackendError::Serialization(format!(
                "the prune registry {key:?} has a bad line {line:?}"
            ))
        };
        let mut registry = Self::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |at: usize| -> Result<u64, StateBackendError> {
                fields
                    .get(at)
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| bad(line))
            };
            match (fields[0], fields.len()) {
                ("version", 2) => registry.version = number(1)?,
                ("began", 2) => registry.began = number(1)?,
                ("step", 3) => registry.steps.push((number(1)?, number(2)?)),
                ("pruning", 4) => {
                    registry.pruning.insert(
                        fields[1].to_owned(),
                        Pruning {
                            bound: number(2)?,
                            expires_ms: number(3)?,
                        },
                    );
                }
                _ => return Err(bad(line)),
            }
        }
        let ordered = registry
            .steps
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1);
        if !ordered
            || registry
                .steps
                .last()
                .is_some_and(|&(n, _)| n > registry.began)
        {
            return Err(StateBackendError::Serialization(format!(
                "the prune registry {key:?} has steps out of order"
            )));
        }
        Ok(registry)
    }
}

/// The registry as some read or write of this process saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub(crate) registry: Registry,
    /// Whether the object exists (a store no prune ever ran on has none).
    pub(crate) exists: bool,
    /// Its ETag, to swap it against.
    pub(crate) etag: Option<String>,
}

/// A commit marker: who sealed, and how many prunes had begun when the
/// sealing gate read the registry (before it listed the partials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) began: u64,
    pub(crate) committer: String,
}

impl Marker {
    pub(crate) fn frame(began: u64, committer: &str) -> Bytes {
        frame_as(
            Kind::Marker,
            MARKER_FORMAT,
            format!("{began} {committer}").as_bytes(),
        )
    }

    /// A marker of either format; one of [`FORMAT`] (written before the
    /// registry existed) counts as read at 0 prunes begun.
    pub(crate) fn parse(key: &str, framed: Bytes) -> Result<Self, StateBackendError> {
        let (format, body) = unframe_as(Kind::Marker, &[FORMAT, MARKER_FORMAT], key, framed)?;
        let text = utf8(key, &body)?;
        if format == FORMAT {
            return Ok(Self {
                began: 0,
                committer: text,
            });
        }
        text.split_once(' ')
            .and_then(|(began, committer)| {
                Some(Self {
                    began: began.parse().ok()?,
                    committer: committer.to_owned(),
                })
            })
            .ok_or_else(|| {
                StateBackendError::Serialization(format!(
                    "object {key:?} is not a valid Marker: no prune count"
                ))
            })
    }
}

/// What a change to the registry decided.
pub(crate) enum Change<T> {
    /// Write the changed registry, then answer this.
    Write(T),
    /// Nothing to write: answer this.
    Done(T),
}

/// The time by this machine's clock, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A running prune's lease: it sends no request that could land after the
/// lease ends, by its own monotonic clock.
pub(crate) struct Lease {
    /// When the lease ends, at the latest (taken before the registration
    /// or renewal that set it was sent, so never later than the end it
    /// stored).
    deadline: Instant,
    length: Duration,
    /// How late a request may land after it was sent.
    bound: Duration,
}

impl Lease {
    /// Before each request: go on if the lease leaves room for it (a
    /// request lands within one bound of being sent), renew it if less than
    /// two bounds are left, stop if one is.
    pub(crate) async fn keep(
        &mut self,
        shared: &Shared,
        what: &str,
        id: &str,
    ) -> Result<(), StateBackendError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left > 2 * self.bound {
            return Ok(());
        }
        if left <= self.bound {
            return Err(StateBackendError::Io(format!(
                "s3 {what}: the prune's lease ({:?}) ran out before it finished, so it stops \
                 here; seals below its bound answer false until the lease is over, and a later \
                 prune_before finishes the job",
                self.length
            )));
        }
        let sent = Instant::now();
        let length = millis(self.length);
        shared
            .update_registry(what, |registry, now| match registry.pruning.get_mut(id) {
                Some(pruning) => {
                    pruning.expires_ms = now.saturating_add(length);
                    Ok(Change::Write(()))
                }
                None => Err(StateBackendError::Io(format!(
                    "s3 {what}: the prune's registration is gone (its lease was over), so it \
                     stops here; a later prune_before finishes the job"
                ))),
            })
            .await?;
        self.deadline = sent + self.length;
        Ok(())
    }
}

impl Shared {
    /// The newest registry this process saw, or the empty one a store
    /// starts with: a registry as it was at some moment before now, which
    /// is all a gate needs before it lists (see the crate docs).
    pub(crate) fn cached_registry(&self) -> Arc<Observed> {
        Arc::clone(&self.registry.lock().expect("registry cache lock"))
    }

    fn remember(&self, observed: Arc<Observed>) {
        let mut cached = self.registry.lock().expect("registry cache lock");
        if observed.registry.version >= cached.registry.version {
            *cached = observed;
        }
    }

    /// The registry as stored now: one GET (404: no prune ever began).
    pub(crate) async fn read_registry(
        &self,
        what: &str,
    ) -> Result<Arc<Observed>, StateBackendError> {
        let key = self.layout.prunes();
        // A read that starts after this process saw a version must see it
        // or a later one.
        let floor = self.cached_registry().registry.version;
        let observed = match self.get(what, &key).await {
            Ok((framed, etag)) => {
                let body = unframe(Kind::Prunes, &key, framed)?;
                Observed {
                    registry: Registry::parse(&key, &utf8(&key, &body)?)?,
                    exists: true,
                    etag,
                }
            }
            Err(Failure::Missing(_)) => Observed::default(),
            Err(other) => return Err(other.into()),
        };
        if observed.registry.version < floor {
            return Err(StateBackendError::Serialization(format!(
                "the prune registry {key:?} holds version {} after this process read version \
                 {floor}: it was deleted or replaced (a lifecycle rule or a clean-up?), and which \
                 commit markers are seals is unknown",
                observed.registry.version
            )));
        }
        let observed = Arc::new(observed);
        self.remember(Arc::clone(&observed));
        Ok(observed)
    }

    /// Change the registry by compare-and-swap: `change` gets a copy of the
    /// registry (prunes whose lease is over already forgotten) and this
    /// machine's time, and decides. It starts from the cached copy and
    /// reads the registry again when the swap fails, or when it would
    /// decide without writing on a copy it did not just read.
    pub(crate) async fn update_registry<T>(
        &self,
        what: &str,
        mut change: impl FnMut(&mut Registry, u64) -> Result<Change<T>, StateBackendError>,
    ) -> Result<T, StateBackendError> {
        let key = self.layout.prunes();
        let mut current = self.cached_registry();
        let mut fresh = false;
        for _ in 0..MAX_RESTARTS * 4 {
            if current.exists && current.etag.is_none() && !fresh {
                current = self.read_registry(what).await?;
                fresh = true;
            }
            let now = now_ms();
            let mut next = current.registry.clone();
            next.forget_ended(now);
            let answer = match change(&mut next, now) {
                Ok(Change::Write(answer)) => answer,
                Ok(Change::Done(answer)) if fresh => return Ok(answer),
                Err(e) if fresh => return Err(e),
                Ok(Change::Done(_)) | Err(_) => {
                    current = self.read_registry(what).await?;
                    fresh = true;
                    continue;
                }
            };
            next.version = current.registry.version + 1;
            let etag = current.etag.clone();
            let condition = match (&etag, current.exists) {
                (_, false) => Condition::Absent,
                (Some(etag), true) => Condition::Matches(etag),
                (None, true) => {
                    return Err(StateBackendError::Io(format!(
                        "s3 {what}: the store answered no ETag for the prune registry {key:?}, \
                         so it cannot be swapped"
                    )));
                }
            };
            let framed = frame(Kind::Prunes, next.render().as_bytes());
            match self.put(what, &key, framed, condition).await {
                Ok(etag) => {
                    self.remember(Arc::new(Observed {
                        registry: next,
                        exists: true,
                        etag,
                    }));
                    return Ok(answer);
                }
                // Changed by someone else, or by this very swap on an
                // attempt whose answer was lost: read it and decide again.
                Err(Failure::Precondition(_) | Failure::Missing(_)) => {
                    current = self.read_registry(what).await?;
                    fresh = true;
                }
                Err(Failure::Error(e)) => return Err(e),
            }
        }
        Err(StateBackendError::Io(format!(
            "s3 {what}: the prune registry kept changing under this update"
        )))
    }

    /// Whether `marker`, stored (or about to be) at `key` for `epoch`, is a
    /// seal under `registry`: no prune that deletes `epoch` began after its
    /// gate read the registry before listing.
    pub(crate) fn seals(
        &self,
        registry: &Registry,
        key: &str,
        epoch: u64,
        marker: &Marker,
    ) -> Result<bool, StateBackendError> {
        if marker.began > registry.began {
            return Err(StateBackendError::Serialization(format!(
                "the commit marker {key:?} was made after {} prunes began, but the prune \
                 registry {:?} counts {}: the registry was deleted or replaced (a lifecycle rule \
                 or a clean-up?)",
                marker.began,
                self.layout.prunes(),
                registry.began
            )));
        }
        Ok(registry.pruned_since(marker.began) <= epoch)
    }

    /// For the recovery queries: whether the marker `listed` (of `epoch`)
    /// is a seal under `registry`, read after the listing. `None` when the
    /// key no longer holds the listed object (list again).
    pub(crate) async fn listed_marker_seals(
        &self,
        what: &str,
        listed: &Listed,
        epoch: u64,
        registry: &Registry,
    ) -> Result<Option<bool>, StateBackendError> {
        if epoch >= registry.highest_bound() {
            return Ok(Some(true));
        }
        match self.get(what, &listed.key).await {
            Ok((framed, etag)) => {
                let same = etag
                    .as_deref()
                    .is_none_or(|e| e.trim_matches('"') == listed.etag.trim_matches('"'));
                if !same {
                    return Ok(None);
                }
                let marker = Marker::parse(&listed.key, framed)?;
                self.seals(registry, &listed.key, epoch, &marker).map(Some)
            }
            Err(Failure::Missing(_)) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    /// `prune_before(before)`, run to the end by its own task: register,
    /// delete the markers below the bound, then the partials, then the
    /// markers again (those that landed meanwhile), and unregister. Every
    /// request is sent within the lease.
    pub(crate) async fn prune(self: Arc<Self>, before: u64) -> Result<(), StateBackendError> {
        let what = format!("prune_before({before})");
        let id = stamp();
        let mut lease = self.register(&what, &id, before).await?;
        let markers = (self.layout.markers(), self.layout.marker(before));
        let partials = (self.layout.partials(), self.layout.epoch_partials(before));
        for (prefix, bound) in [markers.clone(), partials, markers] {
            lease.keep(&self, &what, &id).await?;
            let mut page = self.list_page(&what, &prefix, None, None).await?;
            loop {
                let below: Vec<String> = page
                    .objects
                    .iter()
                    .map(|o| o.key.clone())
                    .take_while(|k| *k < bound)
                    .collect();
                let more = below.len() == page.objects.len() && page.next.is_some();
                lease.keep(&self, &what, &id).await?;
                if !more {
                    self.delete_batch(&what, below).await?;
                    break;
                }
                // Delete this page while listing the next.
                let (deleted, next) = tokio::join!(
                    self.delete_batch(&what, below),
                    self.list_page(&what, &prefix, None, page.next.take())
                );
                deleted?;
                page = next?;
            }
        }
        self.update_registry(&what, |registry, _| {
            Ok(match registry.pruning.remove(&id) {
                Some(_) => Change::Write(()),
                // Its lease was over and someone forgot it.
                None => Change::Done(()),
            })
        })
        .await
    }

    /// Register prune `id` with `bound`, and start its lease.
    async fn register(&self, what: &str, id: &str, bound: u64) -> Result<Lease, StateBackendError> {
        let length = self.request_bound * LEASE_BOUNDS;
        let sent = Instant::now();
        self.update_registry(what, |registry, now| {
            if registry.pruning.contains_key(id) {
                // An attempt whose answer was lost landed.
                return Ok(Change::Done(()));
            }
            registry.begin(id, bound, now.saturating_add(millis(length)));
            Ok(Change::Write(()))
        })
        .await?;
        Ok(Lease {
            deadline: sent + length,
            length,
            bound: self.request_bound,
        })
    }
}
