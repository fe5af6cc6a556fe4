//! The durable embedded [`StateBackend`]: one redb file, no server.
//!
//! # Layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `partials` | `(epoch: u64, vnode: u32)` | frame of the partial's bytes |
//! | `markers` | `epoch: u64` | frame of the committer's instance id (UTF-8) |
//! | `meta` | `"fence"`, `"format"` | `u64` |
//!
//! A frame is `[format: u8 = 1][crc32 of the body: u32 LE][body]`, so damage
//! to stored bytes is reported as [`StateBackendError::Serialization`]
//! instead of being handed to an operator as state. Keys lead with the epoch,
//! so pruning deletes one contiguous key range.
//!
//! # One database per file per process
//!
//! redb locks the file for one process. Every [`RedbStore::open`] of the same
//! path in one process returns the same store (a process-wide registry), so
//! any number of handles, each with its own instance id, share its data, its
//! fence and its commit markers. A second process gets a clear
//! [`StateBackendError::Io`] naming the lock, never a hang or corruption.
//!
//! # Writes: group commit on one thread
//!
//! Writes and seals go to a committer thread. It takes everything queued,
//! applies it in one write transaction, commits once (fsync) and only then
//! answers each caller: many concurrent writers share one fsync, and an
//! acknowledged write is on disk. Each request in a batch succeeds or fails
//! on its own (a write refused by the fence does not fail its neighbours); a
//! failed commit fails the whole batch, since none of it is on disk. redb's
//! blocking calls stay off the async runtime: writes on the committer
//! thread, reads and prunes on tokio's blocking pool.
//!
//! # The fence
//!
//! The fence lives in memory, shared by every handle on the store, and in
//! `meta`. The committer holds the fence's read lock for a whole batch (check,
//! apply, commit) and writes the fence into `meta` in the same transaction
//! whenever it has risen. A raise takes the write lock, so it waits for the
//! batch in flight (at most one fsync) and every write checked after it sees
//! the new value: no write checked against the old fence can land after
//! [`StateBackend::set_authoritative_version`] returns. The raise is durable
//! with the next committed batch, or at once with
//! [`StateBackend::persist_authoritative_version`].

use std::collections::HashMap;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

const PARTIALS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("partials");
const MARKERS: TableDefinition<u64, &[u8]> = TableDefinition::new("markers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FENCE_KEY: &str = "fence";
const FORMAT_KEY: &str = "format";
const FORMAT: u64 = 1;

const FRAME_FORMAT: u8 = 1;
const FRAME_HEADER: usize = 5;

/// The default largest partial: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;

/// Requests one transaction takes at most.
const MAX_BATCH_REQUESTS: usize = 4096;
/// Payload bytes one transaction takes at most (the first request always
/// goes in, whatever its size).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// How long the committer waits for returning callers to fill a batch.
const GATHER_WAIT: Duration = Duration::from_micros(200);
/// Partials one prune transaction deletes at most.
const PRUNE_CHUNK: usize = 8192;

/// How to open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedbConfig {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// The largest partial, in bytes, the store accepts.
    pub max_payload_len: usize,
    /// Verify every page checksum when the file is opened, so a damaged
    /// file is refused at open with a typed error. Costs one read of the
    /// whole file per open; on by default.
    pub verify_on_open: bool,
}

impl RedbConfig {
    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
            verify_on_open: true,
        }
    }
}

/// One open database file, shared by every handle on it in this process.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters on drop: the sender goes first, which lets the
    // committer thread finish, then `_committer` joins it, then the database
    // closes with the last `Arc<Core>`.
    requests: mpsc::Sender<Request>,
    _committer: JoinOnDrop,
    core: Arc<Core>,
    path: PathBuf,
}

struct Core {
    db: Database,
    /// Read-locked by the committer for a whole batch; write-locked by a raise.
    fence: RwLock<u64>,
    /// The same value, readable without waiting for a batch.
    fence_now: AtomicU64,
    /// The highest fence committed to `meta`.
    fence_on_disk: AtomicU64,
    max_payload_len: usize,
    transactions: AtomicU64,
    requests: AtomicU64,
}

struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

enum Request {
    Write {
        vnode: u32,
        epoch: u64,
        version: u64,
        bytes: Bytes,
        reply: oneshot::Sender<Result<(), StateBackendError>>,
    },
    Seal {
        epoch: u64,
        vnodes: Vec<u32>,
        instance_id: Arc<str>,
        told: u64,
        reply: oneshot::Sender<Result<bool, StateBackendError>>,
    },
    PersistFence {
        reply: oneshot::Sender<Result<(), StateBackendError>>,
    },
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    OPEN.get_or_init(Mutex::default)
}

impl RedbStore {
    /// Open (or create) the store at `path` with default settings.
    ///
    /// Blocking: it may read and repair the file. Call it from
    /// `spawn_blocking` in async code.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StateBackendError> {
        Self::open_with(RedbConfig::new(path))
    }

    /// Open (or create) the store described by `config`. If this process
    /// already has the file open, the existing store is returned and
    /// `config`'s other settings are ignored.
    pub fn open_with(config: RedbConfig) -> Result<Self, StateBackendError> {
        let path = absolute(&config.path)?;
        let mut open = registry().lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, store| store.strong_count() > 0);
        if let Some(inner) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(Self { inner });
        }
        let core = Arc::new(Core::open(&path, &config)?);
        let (requests, queue) = mpsc::channel();
        let committer_core = Arc::clone(&core);
        let committer = std::thread::Builder::new()
            .name("laminar-redb-commit".into())
            .spawn(move || commit_loop(&committer_core, &queue))
            .map_err(|e| StateBackendError::Io(format!("cannot start the commit thread: {e}")))?;
        let inner = Arc::new(Inner {
            requests,
            _committer: JoinOnDrop(Some(committer)),
            core,
            path: path.clone(),
        });
        open.insert(path, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// A handle on this store for `instance_id`, serving vnodes
    /// `0..vnode_capacity`.
    pub fn handle(&self, instance_id: impl Into<String>, vnode_capacity: u32) -> RedbBackend {
        RedbBackend {
            limits: InputLimits::new(vnode_capacity, self.inner.core.max_payload_len),
            store: self.clone(),
            instance_id: Arc::from(instance_id.into()),
            told: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many group-commit transactions this store has committed, and how
    /// many write, seal and fence requests they carried, since it was opened.
    pub fn commit_stats(&self) -> CommitStats {
        let core = &self.inner.core;
        CommitStats {
            transactions: core.transactions.load(Ordering::Relaxed),
            requests: core.requests.load(Ordering::Relaxed),
        }
    }

    /// The underlying database, for maintenance and for tests that damage
    /// stored bytes on purpose. Writing to this store's tables directly
    /// bypasses the fence and the framing.
    #[doc(hidden)]
    pub fn raw_database(&self) -> &Database {
        &self.inner.core.db
    }

    async fn submit<T>(
        &self,
        request: Request,
        reply: oneshot::Receiver<Result<T, StateBackendError>>,
    ) -> Result<T, StateBackendError> {
        self.inner
            .requests
            .send(request)
            .map_err(|_| StateBackendError::Io("the redb commit thread has stopped".into()))?;
        reply.await.unwrap_or_else(|_| {
            Err(StateBackendError::Io(
                "the redb commit thread stopped before answering".into(),
            ))
        })
    }

    /// Run a blocking read or prune on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Core) -> Result<T, StateBackendError> + Send + 'static,
    ) -> Result<T, StateBackendError> {
        let core = Arc::clone(&self.inner.core);
        tokio::task::spawn_blocking(move || work(&core))
            .await
            .map_err(|e| StateBackendError::Io(format!("a redb task failed: {e}")))?
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn open(path: &Path, config: &RedbConfig) -> Result<Self, StateBackendError> {
        let shown = path.display();
        let opened = catch_unwind(AssertUnwindSafe(|| {
            Database::builder()
                .set_check_integrity_on_open(config.verify_on_open)
                .create(path)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StateBackendError::Io(format!(
                    "{shown} is open in another process: redb locks its file, so a store is shared by the handles of one process only"
                )));
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(StateBackendError::Io(format!("cannot open {shown}: {e}")));
            }
            Ok(Err(e)) => {
                return Err(StateBackendError::Serialization(format!(
                    "{shown} is damaged or is not a redb database: {e}"
                )));
            }
            Err(_) => {
                return Err(StateBackendError::Serialization(format!(
                    "{shown} is damaged or is not a redb database: redb could not read it"
                )));
            }
        };
        let txn = db.begin_write().map_err(|e| redb_error("open", e))?;
        let fence = {
            txn.open_table(PARTIALS)
                .map_err(|e| redb_error("open", e))?;
            txn.open_table(MARKERS).map_err(|e| redb_error("open", e))?;
            let mut meta = txn.open_table(META).map_err(|e| redb_error("open", e))?;
            let format = meta
                .get(FORMAT_KEY)
                .map_err(|e| redb_error("open", e))?
                .map(|v| v.value());
            match format {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT)
                        .map_err(|e| redb_error("open", e))?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StateBackendError::Serialization(format!(
                        "{shown} has layout version {other}; this build reads version {FORMAT}"
                    )));
                }
            }
            meta.get(FENCE_KEY)
                .map_err(|e| redb_error("open", e))?
                .map_or(0, |v| v.value())
        };
        txn.commit().map_err(|e| redb_error("open", e))?;
        Ok(Self {
            db,
            fence: RwLock::new(fence),
            fence_now: AtomicU64::new(fence),
            fence_on_disk: AtomicU64::new(fence),
            max_payload_len: config.max_payload_len,
            transactions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }
}

/// Group-commit counters of one [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed by the committer thread.
    pub transactions: u64,
    /// Requests those transactions carried.
    pub requests: u64,
}

/// A handle on a [`RedbStore`], with its own instance id.
#[derive(Clone)]
pub struct RedbBackend {
    store: RedbStore,
    instance_id: Arc<str>,
    limits: InputLimits,
    /// The highest version this handle (and its clones) was told; a handle
    /// told less than the fence is a deposed leader and may not seal.
    told: Arc<AtomicU64>,
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
            .field("path", &self.store.inner.path)
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
        self.store
            .blocking(move |core| {
                let what = || format!("read_partial({vnode}, {epoch})");
                let txn = core.db.begin_read().map_err(|e| redb_error(&what(), e))?;
                let table = txn
                    .open_table(PARTIALS)
                    .map_err(|e| redb_error(&what(), e))?;
                let stored = table
                    .get((epoch, vnode))
                    .map_err(|e| redb_error(&what(), e))?;
                stored
                    .map(|frame| unframe(frame.value(), &what).map(Bytes::copy_from_slice))
                    .transpose()
            })
            .await
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
        self.store
            .blocking(move |core| {
                let what = || format!("prune_before({before})");
                loop {
                    let txn = core.db.begin_write().map_err(|e| redb_error(&what(), e))?;
                    let finished = {
                        let mut partials = txn
                            .open_table(PARTIALS)
                            .map_err(|e| redb_error(&what(), e))?;
                        // Lazily extracted: only what is taken is removed, so
                        // one transaction deletes at most PRUNE_CHUNK partials.
                        let mut removed = 0;
                        for entry in partials
                            .extract_from_if(..(before, 0), |_, _| true)
                            .map_err(|e| redb_error(&what(), e))?
                            .take(PRUNE_CHUNK)
                        {
                            entry.map_err(|e| redb_error(&what(), e))?;
                            removed += 1;
                        }
                        let finished = removed < PRUNE_CHUNK;
                        if finished {
                            let mut markers = txn
                                .open_table(MARKERS)
                                .map_err(|e| redb_error(&what(), e))?;
                            markers
                                .retain_in(..before, |_, _| false)
                                .map_err(|e| redb_error(&what(), e))?;
                        }
                        finished
                    };
                    txn.commit().map_err(|e| redb_error(&what(), e))?;
                    if finished {
                        return Ok(());
                    }
                }
            })
            .await
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
        let core = &self.store.inner.core;
        if version <= core.fence_now.load(Ordering::Acquire) {
            return;
        }
        let mut fence = core.fence.write().unwrap_or_else(PoisonError::into_inner);
        if version > *fence {
            *fence = version;
            core.fence_now.store(version, Ordering::Release);
        }
    }

    fn authoritative_version(&self) -> u64 {
        self.store.inner.core.fence_now.load(Ordering::Acquire)
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.store
            .blocking(|core| {
                let what = || "latest_committed_epoch()".to_owned();
                let txn = core.db.begin_read().map_err(|e| redb_error(&what(), e))?;
                let markers = txn
                    .open_table(MARKERS)
                    .map_err(|e| redb_error(&what(), e))?;
                let last = markers.last().map_err(|e| redb_error(&what(), e))?;
                Ok(last.map(|(epoch, _)| epoch.value()))
            })
            .await
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        self.store
            .blocking(move |core| {
                let what = || format!("sealed_epochs({after})");
                let txn = core.db.begin_read().map_err(|e| redb_error(&what(), e))?;
                let markers = txn
                    .open_table(MARKERS)
                    .map_err(|e| redb_error(&what(), e))?;
                markers
                    .range::<u64>((Bound::Excluded(after), Bound::Unbounded))
                    .map_err(|e| redb_error(&what(), e))?
                    .map(|entry| {
                        entry
                            .map(|(epoch, _)| epoch.value())
                            .map_err(|e| redb_error(&what(), e))
                    })
                    .collect()
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
}

/// What the commit gate found.
enum Gate {
    Missing,
    Unsealed,
    SealedBy(String),
}

fn gate(
    partials: &impl ReadableTable<(u64, u32), &'static [u8]>,
    markers: &impl ReadableTable<u64, &'static [u8]>,
    epoch: u64,
    vnodes: &[u32],
) -> Result<Gate, StateBackendError> {
    let what = || format!("epoch_complete({epoch})");
    for &vnode in vnodes {
        if partials
            .get((epoch, vnode))
            .map_err(|e| redb_error(&what(), e))?
            .is_none()
        {
            return Ok(Gate::Missing);
        }
    }
    match markers.get(epoch).map_err(|e| redb_error(&what(), e))? {
        None => Ok(Gate::Unsealed),
        Some(frame) => {
            let marker_what = || format!("the commit marker of epoch {epoch}");
            let body = unframe(frame.value(), &marker_what)?;
            let committer = std::str::from_utf8(body).map_err(|_| {
                StateBackendError::Serialization(format!("{} is not UTF-8", marker_what()))
            })?;
            Ok(Gate::SealedBy(committer.to_owned()))
        }
    }
}

/// The committer thread: one transaction per batch of queued requests.
///
/// Callers answered by one batch usually come straight back with their next
/// request, but a commit returns faster than they do; taking only what is
/// queued at that instant would commit a trickle of tiny batches. So when the
/// queue holds less than half of the previous batch, the committer waits up
/// to [`GATHER_WAIT`] for the rest. A lone writer (previous batch of one)
/// never waits.
fn commit_loop(core: &Core, queue: &mpsc::Receiver<Request>) {
    let mut previous_batch = 1;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let mut bytes = batch_bytes(&batch[0]);
        let deadline = Instant::now() + GATHER_WAIT;
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            let next = match queue.try_recv() {
                Ok(request) => Some(request),
                Err(mpsc::TryRecvError::Disconnected) => None,
                Err(mpsc::TryRecvError::Empty) if batch.len() * 2 < previous_batch => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    queue.recv_timeout(left).ok()
                }
                Err(mpsc::TryRecvError::Empty) => None,
            };
            let Some(request) = next else { break };
            bytes += batch_bytes(&request);
            batch.push(request);
        }
        previous_batch = batch.len();
        commit_batch(core, batch);
    }
}

fn batch_bytes(request: &Request) -> usize {
    match request {
        Request::Write { bytes, .. } => bytes.len(),
        _ => 0,
    }
}

/// The answer each request of a batch gets once the batch is committed.
enum Answer {
    Write(Result<(), StateBackendError>),
    Seal(Result<bool, StateBackendError>),
    Done,
}

fn commit_batch(core: &Core, batch: Vec<Request>) {
    let fence = core.fence.read().unwrap_or_else(PoisonError::into_inner);
    let applied = apply_batch(core, *fence, &batch);
    if applied.is_ok() && *fence > core.fence_on_disk.load(Ordering::Acquire) {
        core.fence_on_disk.store(*fence, Ordering::Release);
    }
    drop(fence);
    match applied {
        Ok(answers) => {
            for (request, answer) in batch.into_iter().zip(answers) {
                match (request, answer) {
                    (Request::Write { reply, .. }, Answer::Write(result)) => {
                        let _ = reply.send(result);
                    }
                    (Request::Seal { reply, .. }, Answer::Seal(result)) => {
                        let _ = reply.send(result);
                    }
                    (Request::PersistFence { reply }, _) => {
                        let _ = reply.send(Ok(()));
                    }
                    _ => {}
                }
            }
        }
        Err(error) => {
            let failed = |what: &str| {
                StateBackendError::Io(format!("{what}: the batch's commit failed: {error}"))
            };
            for request in batch {
                match request {
                    Request::Write {
                        reply,
                        vnode,
                        epoch,
                        ..
                    } => {
                        let _ =
                            reply.send(Err(failed(&format!("write_partial({vnode}, {epoch})"))));
                    }
                    Request::Seal { reply, epoch, .. } => {
                        let _ = reply.send(Err(failed(&format!("epoch_complete({epoch})"))));
                    }
                    Request::PersistFence { reply } => {
                        let _ = reply.send(Err(failed("persist_authoritative_version")));
                    }
                }
            }
        }
    }
}

fn apply_batch(
    core: &Core,
    fence: u64,
    batch: &[Request],
) -> Result<Vec<Answer>, StateBackendError> {
    let what = || "group commit".to_owned();
    let txn = core.db.begin_write().map_err(|e| redb_error(&what(), e))?;
    let mut answers = Vec::with_capacity(batch.len());
    // A batch of refused writes, early gates and repeated seals changes
    // nothing: it is rolled back instead of paying a commit.
    let mut dirty = false;
    {
        let mut partials = txn
            .open_table(PARTIALS)
            .map_err(|e| redb_error(&what(), e))?;
        let mut markers = txn
            .open_table(MARKERS)
            .map_err(|e| redb_error(&what(), e))?;
        for request in batch {
            answers.push(match request {
                Request::Write {
                    vnode,
                    epoch,
                    version,
                    bytes,
                    ..
                } => {
                    if fence > 0 && *version < fence {
                        Answer::Write(Err(StateBackendError::StaleVersion {
                            caller: *version,
                            authoritative: fence,
                        }))
                    } else {
                        let mut slot = partials
                            .insert_reserve((*epoch, *vnode), FRAME_HEADER + bytes.len())
                            .map_err(|e| redb_error(&what(), e))?;
                        frame_into(slot.as_mut(), bytes);
                        dirty = true;
                        Answer::Write(Ok(()))
                    }
                }
                Request::Seal { told, .. } if *told > 0 && *told < fence => {
                    // A deposed leader may not seal: no need to look.
                    Answer::Seal(Err(StateBackendError::StaleVersion {
                        caller: *told,
                        authoritative: fence,
                    }))
                }
                Request::Seal {
                    epoch,
                    vnodes,
                    instance_id,
                    ..
                } => Answer::Seal(match gate(&partials, &markers, *epoch, vnodes) {
                    Ok(Gate::Missing) => Ok(false),
                    Ok(Gate::SealedBy(committer)) if *committer == **instance_id => Ok(true),
                    Ok(Gate::SealedBy(committer)) => Err(StateBackendError::SplitBrainCommit {
                        committer,
                        self_id: instance_id.to_string(),
                    }),
                    Ok(Gate::Unsealed) => {
                        let id = instance_id.as_bytes();
                        let mut slot = markers
                            .insert_reserve(*epoch, FRAME_HEADER + id.len())
                            .map_err(|e| redb_error(&what(), e))?;
                        frame_into(slot.as_mut(), id);
                        dirty = true;
                        Ok(true)
                    }
                    Err(error) => Err(error),
                }),
                Request::PersistFence { .. } => Answer::Done,
            });
        }
        if fence > core.fence_on_disk.load(Ordering::Acquire) {
            dirty = true;
            let mut meta = txn.open_table(META).map_err(|e| redb_error(&what(), e))?;
            meta.insert(FENCE_KEY, fence)
                .map_err(|e| redb_error(&what(), e))?;
        }
    }
    if !dirty {
        txn.abort().map_err(|e| redb_error(&what(), e))?;
        return Ok(answers);
    }
    txn.commit().map_err(|e| redb_error(&what(), e))?;
    core.transactions.fetch_add(1, Ordering::Relaxed);
    core.requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(answers)
}

fn frame_into(slot: &mut [u8], body: &[u8]) {
    slot[0] = FRAME_FORMAT;
    slot[1..FRAME_HEADER].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    slot[FRAME_HEADER..].copy_from_slice(body);
}

fn unframe<'a>(frame: &'a [u8], what: &impl Fn() -> String) -> Result<&'a [u8], StateBackendError> {
    let damaged =
        |why: &str| StateBackendError::Serialization(format!("{} is damaged: {why}", what()));
    if frame.len() < FRAME_HEADER {
        return Err(damaged("shorter than its header"));
    }
    if frame[0] != FRAME_FORMAT {
        return Err(damaged(&format!("unknown frame format {}", frame[0])));
    }
    let body = &frame[FRAME_HEADER..];
    let stored = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
    if crc32fast::hash(body) != stored {
        return Err(damaged("checksum mismatch"));
    }
    Ok(body)
}

/// Map a redb error once, keeping which call failed and why: damage found
/// by redb is a `Serialization` error, everything else `Io`.
fn redb_error(what: &str, error: impl Into<redb::Error>) -> StateBackendError {
    match error.into() {
        redb::Error::Corrupted(why) => {
            StateBackendError::Serialization(format!("redb: {what}: the file is damaged: {why}"))
        }
        other => StateBackendError::Io(format!("redb: {what}: {other}")),
    }
}

/// The key under which the registry finds an open file: symlinks resolved
/// where the file exists, so two spellings of one file share one store.
fn absolute(path: &Path) -> Result<PathBuf, StateBackendError> {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| StateBackendError::Io(format!("cannot resolve {}: {e}", path.display())))
}
