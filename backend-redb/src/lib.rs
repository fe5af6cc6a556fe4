#![doc = include_str!("../README.md")]
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
//! file in one process returns the same store (a process-wide registry), so
//! any number of handles, each with its own instance id, share its data, its
//! fence and its commit markers. The registry knows a file by its identity
//! (device and inode on Unix), not by its path: a symlink, a symlinked
//! directory, `..`, or a hard link all reach the same store. A file that
//! does not exist yet is created first and then known by its identity, so
//! two spellings of one new file share one store too. A second process gets
//! a clear [`StateBackendError::Io`] naming the lock, never a hang or
//! corruption.
//!
//! # Writes: group commit on one thread
//!
//! Writes and seals go to a committer thread. It takes everything queued,
//! applies it in one write transaction, commits once (fsync) and only then
//! answers each caller: many concurrent writers share one fsync, and an
//! acknowledged write is on disk. Each request in a batch succeeds or fails
//! on its own (a write refused by the fence does not fail its neighbours); a
//! failed commit fails the whole batch, since none of it is on disk. redb's
//! blocking calls that wait for the disk stay off the async runtime: writes
//! on the committer thread, prunes and recovery queries on tokio's blocking
//! pool.
//!
//! # Reads
//!
//! `read_partial` runs on the caller's task: one read transaction (no
//! lock a writer holds: redb readers see the last commit and never wait
//! for the committer), one B-tree lookup, one copy of the payload. With the
//! pages in redb's cache or the OS's, that is a few microseconds, less than
//! the hand-off to tokio's blocking pool it replaced, which cost 7 to 25
//! times the read itself (`cargo xtask bench --backend redb`, "reads/s"
//! against raw redb). A page not cached costs one positioned read of the
//! file on the caller's worker thread; an engine recovering a large epoch
//! from a cold disk that must keep its runtime responsive meanwhile can read
//! from `spawn_blocking` itself.
//!
//! # A dead committer
//!
//! If the committer thread panics (a bug, never bad input), its batch is
//! rolled back and answered with [`StateBackendError::Io`] saying the
//! committer died and why, the store closes its database (after the reads in
//! flight finish), and from then on every call on any handle of that store
//! fails at once with the same error; nothing hangs. The registry no longer
//! hands out the dead store: the next [`RedbStore::open`] of the file opens
//! it afresh, with a new committer and everything acknowledged before the
//! panic, even while handles on the dead store are still alive.
//!
//! # The fence
//!
//! The fence is one atomic in memory, shared by every handle on the store,
//! and a value in `meta`. [`StateBackend::set_authoritative_version`] raises
//! the atomic (`fetch_max`) and returns: it takes no lock and never waits
//! for the batch in flight or a fsync, so its cost is one atomic operation
//! and it is safe to call from an async worker. The committer checks every
//! write and seal against the fence as it is at the moment it applies that
//! request, inside the write transaction. So (P7):
//!
//! - every write or seal submitted after the raise returned is checked
//!   against the new fence (the raise happens before the request is queued,
//!   which happens before the committer takes it): no write started after
//!   the raise is ever acknowledged at an old version;
//! - a write checked before the raise, in the batch in flight, may still be
//!   committed, and acknowledged, up to one batch (one fsync) after the
//!   raise returned: it started before the raise. It is applied before any
//!   request submitted after the raise, in the same transaction or an
//!   earlier one, so it never overwrites the new leader's bytes, and it is
//!   answered before the raising handle's next write or seal is: once that
//!   returns (the contract's acknowledgement of the raise), no zombie write
//!   is acknowledged any more, nor lands.
//!
//! (Earlier, the raise waited for the batch in flight, which ruled out the
//! second case at the cost of blocking an async worker for a batch and a
//! fsync; no property of the contract needs that.)
//!
//! The committer writes the fence into `meta` in every batch that commits
//! after it has risen (read after the batch's last request was taken), so a
//! raise is durable once any write or seal submitted after it is
//! acknowledged, or at once with
//! [`StateBackend::persist_authoritative_version`].
//!
//! # Pruning
//!
//! [`StateBackend::prune_before`] deletes in transactions of at most 8,192
//! entries. Each one first deletes every commit marker below the bound, and
//! deletes partials (lowest epoch first, as many as the rest of its 8,192
//! allow) only if that left no marker below the bound. So:
//!
//! - **No sealed epoch ever lacks its partials**, in any committed state,
//!   and so whatever a crash, a SIGKILL or a power loss leaves: a
//!   transaction that deletes partials commits with no marker below the
//!   bound, and a seal marks an epoch only in a transaction that finds all
//!   its partials. That holds with seals below the bound racing the prune:
//!   a seal that lands between two of its transactions finds the epoch whole
//!   (`Ok(true)`, ordered before the rest of the prune, whose next
//!   transaction removes the marker before, or with, any of the partials) or
//!   not (`Ok(false)`). It holds for any number of prunes of any bounds at
//!   once, each transaction keeping it on its own, and for a prune that
//!   fails midway (a dead committer): no lock, no record, nothing to repair
//!   at open.
//! - A prune is not atomic as a whole: reads during it may see some epochs
//!   below the bound gone and others not yet. A prune that fits in one
//!   transaction (markers and partials together) is atomic.
//! - What a crash or a failed prune can leave below the bound: unsealed
//!   epochs with some of their partials, which no recovery reads, and epochs
//!   sealed during the prune with all their partials. Running the prune
//!   again (the engine's next one does) finishes the job; after a completed
//!   prune, a pruned epoch written again can be sealed again.
//!
//! Cost: one fsync per transaction, so one for a prune of up to 8,192
//! entries (markers and partials together), none for a prune with nothing
//! to delete; each transaction after the first also looks up the (usually
//! empty) marker range below the bound. Seals pay nothing.
//!
//! # Configuration
//!
//! [`RedbConfig`] (in `config.rs`) names the file, the payload limit and
//! whether the file is verified on open, and parses the URL that says so:
//! `redb:///path/to/state.redb?max_payload_len=BYTES&verify_on_open=false`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
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
use laminar_state_api::{InputLimits, StateBackend, StateBackendError, seal_outcome};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

mod config;

pub use config::{DEFAULT_MAX_PAYLOAD_LEN, RedbConfig};

const PARTIALS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("partials");
const MARKERS: TableDefinition<u64, &[u8]> = TableDefinition::new("markers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FENCE_KEY: &str = "fence";
const FORMAT_KEY: &str = "format";
const FORMAT: u64 = 1;

const FRAME_FORMAT: u8 = 1;
const FRAME_HEADER: usize = 5;

/// Requests one transaction takes at most.
const MAX_BATCH_REQUESTS: usize = 4096;
/// Payload bytes one transaction takes at most (the first request always
/// goes in, whatever its size).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// How long the committer waits for returning callers to fill a batch.
const GATHER_WAIT: Duration = Duration::from_micros(200);
/// Partials (or markers) one prune transaction deletes at most.
const PRUNE_CHUNK: usize = 8192;

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
}

struct Core {
    /// `None` once the committer died: the file is closed, so that a reopen
    /// can open it afresh. Read-locked by every operation for its
    /// transaction (the committer for a whole batch, a prune per chunk).
    db: RwLock<Option<Database>>,
    /// The file, as the first opener named it (symlinks resolved).
    path: PathBuf,
    /// The fence: raised by `fetch_max`, read by the committer per request.
    fence: AtomicU64,
    /// The highest fence committed to `meta`.
    fence_on_disk: AtomicU64,
    /// Why the committer died, once it has.
    dead: OnceLock<String>,
    max_payload_len: usize,
    transactions: AtomicU64,
    requests: AtomicU64,
    /// A fault injected by a test into the next batch.
    fault: Mutex<Option<CommitFault>>,
    /// Called by a test after each transaction of a prune.
    prune_hook: Mutex<Option<PruneHook>>,
}

/// What a test runs on the pruning thread after each transaction of a prune
/// (see [`RedbStore::set_prune_hook`]): for tests only.
#[doc(hidden)]
pub type PruneHook = Arc<dyn Fn() + Send + Sync>;

/// Which record [`RedbStore::store_damaged`] damages. Test-only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum DamagedRecord {
    /// The partial of `vnode` at `epoch`.
    Partial {
        /// The vnode.
        vnode: u32,
        /// The epoch.
        epoch: u64,
    },
    /// The commit marker of `epoch`.
    Marker {
        /// The epoch.
        epoch: u64,
    },
}

/// A fault the committer injects into its next batch, inside the write
/// transaction: for tests only (see [`RedbStore::inject_commit_fault`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// Panic, as a bug in the committer would.
    Panic,
    /// Hold the transaction open this long before committing, as a slow
    /// disk would.
    Stall(Duration),
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

impl Request {
    /// The call this request answers, for error messages.
    fn what(&self) -> String {
        match self {
            Self::Write { vnode, epoch, .. } => format!("write_partial({vnode}, {epoch})"),
            Self::Seal { epoch, .. } => format!("epoch_complete({epoch})"),
            Self::PersistFence { .. } => "persist_authoritative_version".to_owned(),
        }
    }

    /// Answer with an error, whatever the request.
    fn fail(self, error: StateBackendError) {
        match self {
            Self::Write { reply, .. } | Self::PersistFence { reply } => {
                let _ = reply.send(Err(error));
            }
            Self::Seal { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// What the registry knows an open file by: its identity, not its name.
#[cfg(unix)]
type FileKey = (u64, u64);
#[cfg(not(unix))]
type FileKey = PathBuf;

/// The identity of the open `file`: device and inode.
#[cfg(unix)]
fn file_key(file: &File, path: &Path) -> Result<FileKey, StateBackendError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| StateBackendError::Io(format!("cannot stat {}: {e}", path.display())))?;
    Ok((meta.dev(), meta.ino()))
}

/// Without inodes: the path with symlinks resolved (the file exists by now).
#[cfg(not(unix))]
fn file_key(_file: &File, path: &Path) -> Result<FileKey, StateBackendError> {
    resolved(path)
}

fn registry() -> &'static Mutex<HashMap<FileKey, Weak<Inner>>> {
    static OPEN: OnceLock<Mutex<HashMap<FileKey, Weak<Inner>>>> = OnceLock::new();
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
    /// already has the file open (by whatever path: the file's identity
    /// decides), the existing store is returned and `config`'s other
    /// settings are ignored; unless that store's committer died, in which
    /// case the file is opened afresh.
    pub fn open_with(config: RedbConfig) -> Result<Self, StateBackendError> {
        let shown = config.path.display();
        let mut open = registry().lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, store| store.strong_count() > 0);
        // Create the file if need be, then know it by its identity: the
        // same `File` goes to redb, so the key is the file redb locks.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&config.path)
            .map_err(|e| StateBackendError::Io(format!("cannot open {shown}: {e}")))?;
        let key = file_key(&file, &config.path)?;
        if let Some(inner) = open.get(&key).and_then(Weak::upgrade) {
            if inner.core.dead.get().is_none() {
                return Ok(Self { inner });
            }
            // Its committer closed the file when it died; this waits for
            // the dead store's last reads to let go of it.
            inner.core.close();
        }
        let path = resolved(&config.path)?;
        let core = Arc::new(Core::open(file, path, &config)?);
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
        });
        open.insert(key, Arc::downgrade(&inner));
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

    /// The database file, as first opened in this process (symlinks
    /// resolved).
    pub fn path(&self) -> &Path {
        &self.inner.core.path
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

    /// Run `work` on the underlying database, for maintenance and for tests
    /// that damage stored bytes on purpose. Writing to this store's tables
    /// directly bypasses the fence and the framing. `work` must not call
    /// this store again. Fails with [`StateBackendError::Io`] if the store's
    /// committer died.
    #[doc(hidden)]
    pub fn with_raw_database<T>(
        &self,
        work: impl FnOnce(&Database) -> T,
    ) -> Result<T, StateBackendError> {
        self.inner
            .core
            .with_db(|| "with_raw_database".to_owned(), |db| Ok(work(db)))
    }

    /// Test-only: store bytes that fail this backend's framing as the
    /// partial of `vnode` at `epoch` (a valid header whose checksum does not
    /// match the body), or as `epoch`'s commit marker (too short for a
    /// header): what a bad disk leaves, for the tests and conformance runs
    /// that prove damage is reported, never returned as data. Bypasses the
    /// fence. Not for production use.
    #[doc(hidden)]
    pub fn store_damaged(&self, what: DamagedRecord) -> Result<(), StateBackendError> {
        let what_name = || format!("store_damaged({what:?})");
        self.with_raw_database(|db| {
            let txn = db.begin_write().or_redb(what_name)?;
            match what {
                DamagedRecord::Partial { vnode, epoch } => {
                    let mut table = txn.open_table(PARTIALS).or_redb(what_name)?;
                    let body_mismatch: &[u8] = &[FRAME_FORMAT, 0, 0, 0, 0, 42];
                    table
                        .insert((epoch, vnode), body_mismatch)
                        .or_redb(what_name)?;
                }
                DamagedRecord::Marker { epoch } => {
                    let mut table = txn.open_table(MARKERS).or_redb(what_name)?;
                    table.insert(epoch, &[9u8, 9][..]).or_redb(what_name)?;
                }
            }
            txn.commit().or_redb(what_name)
        })?
    }

    /// Test-only fault injection: the committer's next batch suffers
    /// `fault` inside its write transaction. Not for production use.
    #[doc(hidden)]
    pub fn inject_commit_fault(&self, fault: CommitFault) {
        *self
            .inner
            .core
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    /// Test-only: run `hook` on the pruning thread after each transaction
    /// of every prune of this store (committed or rolled back), before the
    /// next one begins, so that a test can pause a prune between two of its
    /// transactions (and kill the process there). `None` removes it. Not for
    /// production use.
    #[doc(hidden)]
    pub fn set_prune_hook(&self, hook: Option<PruneHook>) {
        *self
            .inner
            .core
            .prune_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = hook;
    }

    async fn submit<T>(
        &self,
        request: Request,
        reply: oneshot::Receiver<Result<T, StateBackendError>>,
    ) -> Result<T, StateBackendError> {
        let core = &self.inner.core;
        let what = request.what();
        if core.dead.get().is_some() {
            return Err(core.dead_error(&what));
        }
        self.inner
            .requests
            .send(request)
            .map_err(|_| core.dead_error(&what))?;
        reply.await.unwrap_or_else(|_| Err(core.dead_error(&what)))
    }

    /// Run a blocking read or prune on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        what: String,
        work: impl FnOnce(&Core, &str) -> Result<T, StateBackendError> + Send + 'static,
    ) -> Result<T, StateBackendError> {
        let core = Arc::clone(&self.inner.core);
        if core.dead.get().is_some() {
            return Err(core.dead_error(&what));
        }
        tokio::task::spawn_blocking(move || work(&core, &what))
            .await
            .map_err(|e| StateBackendError::Io(format!("a redb task failed: {e}")))?
    }

    /// [`blocking`](Self::blocking), in one read transaction: the recovery
    /// queries and the listing, which may scan many keys. `work` gets the
    /// transaction and the call's name for its errors.
    async fn blocking_read<T: Send + 'static>(
        &self,
        what: String,
        work: impl FnOnce(&redb::ReadTransaction, &dyn Fn() -> String) -> Result<T, StateBackendError>
        + Send
        + 'static,
    ) -> Result<T, StateBackendError> {
        self.blocking(what, move |core, what| {
            let what = || what.to_owned();
            core.with_db(what, |db| work(&db.begin_read().or_redb(what)?, &what))
        })
        .await
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.core.path)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn open(file: File, path: PathBuf, config: &RedbConfig) -> Result<Self, StateBackendError> {
        let shown = path.display();
        let opened = catch_unwind(AssertUnwindSafe(|| {
            redb::backends::FileBackend::new(file).and_then(|backend| {
                Database::builder()
                    .set_check_integrity_on_open(config.verify_on_open)
                    .create_with_backend(backend)
            })
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
        let what = || "open".to_owned();
        let txn = db.begin_write().or_redb(what)?;
        let fence = {
            txn.open_table(PARTIALS).or_redb(what)?;
            txn.open_table(MARKERS).or_redb(what)?;
            let mut meta = txn.open_table(META).or_redb(what)?;
            let format = meta.get(FORMAT_KEY).or_redb(what)?.map(|v| v.value());
            match format {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT).or_redb(what)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StateBackendError::Serialization(format!(
                        "{shown} has layout version {other}; this build reads version {FORMAT}"
                    )));
                }
            }
            meta.get(FENCE_KEY).or_redb(what)?.map_or(0, |v| v.value())
        };
        txn.commit().or_redb(what)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path,
            fence: AtomicU64::new(fence),
            fence_on_disk: AtomicU64::new(fence),
            dead: OnceLock::new(),
            max_payload_len: config.max_payload_len,
            transactions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            fault: Mutex::new(None),
            prune_hook: Mutex::new(None),
        })
    }

    /// Run `work` on the database, unless the committer died.
    /// (`what` names the call in the error; built only then.)
    fn with_db<T>(
        &self,
        what: impl FnOnce() -> String,
        work: impl FnOnce(&Database) -> Result<T, StateBackendError>,
    ) -> Result<T, StateBackendError> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match (&*db, self.dead.get()) {
            (Some(db), None) => work(db),
            _ => Err(self.dead_error(&what())),
        }
    }

    /// The error every call gets once the committer died.
    fn dead_error(&self, what: &str) -> StateBackendError {
        let why = self.dead.get().map_or("it stopped", String::as_str);
        StateBackendError::Io(format!(
            "redb: {what}: the committer thread of {} died ({why}); this store is closed, open the file again for a fresh one",
            self.path.display()
        ))
    }

    /// Mark the store dead (the first reason wins) and close the file.
    fn kill(&self, why: String) {
        let _ = self.dead.set(why);
        self.close();
    }

    /// Run the test's prune hook, if any.
    fn after_prune_transaction(&self) {
        let hook = self
            .prune_hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Close the database once the operations in flight are done.
    fn close(&self) {
        let db = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(db);
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

/// `prune_before(before)`: [`prune_step`] until none is left.
fn prune(core: &Core, what: &str, before: u64) -> Result<(), StateBackendError> {
    loop {
        let done = core.with_db(|| what.to_owned(), |db| prune_step(db, what, before))?;
        core.after_prune_transaction();
        if done {
            return Ok(());
        }
    }
}

/// One transaction of `prune_before(before)`: delete every commit marker
/// below `before`, then, only if that left none and the transaction has
/// room for more (at most [`PRUNE_CHUNK`] deletions in all), partials below
/// `before`, lowest epoch first. `Ok(true)` when nothing below `before` is
/// left.
///
/// So a transaction that deletes a partial leaves no marker below the
/// bound: whatever a seal marked between two of a prune's transactions (it
/// found all its partials, since seals check them in their own transaction)
/// loses its marker in the next one, before or with any of its partials.
/// Every committed state, and so whatever a kill leaves, has every marked
/// epoch with all its partials; concurrent prunes of any bounds keep that
/// too, each transaction on its own.
fn prune_step(db: &Database, what: &str, before: u64) -> Result<bool, StateBackendError> {
    let what = || what.to_owned();
    let txn = db.begin_write().or_redb(what)?;
    let (removed, done) = {
        // Lazily extracted: only what is taken is removed.
        let mut markers = txn.open_table(MARKERS).or_redb(what)?;
        let taken = markers
            .extract_from_if(..before, |_, _| true)
            .or_redb(what)?
            .take(PRUNE_CHUNK);
        let markers_removed = count_taken(taken, what)?;
        // Fewer than asked for: no marker below the bound is left.
        let budget = PRUNE_CHUNK - markers_removed;
        if budget == 0 {
            (markers_removed, false)
        } else {
            let mut partials = txn.open_table(PARTIALS).or_redb(what)?;
            let taken = partials
                .extract_from_if(..(before, 0), |_, _| true)
                .or_redb(what)?
                .take(budget);
            let partials_removed = count_taken(taken, what)?;
            (
                markers_removed + partials_removed,
                partials_removed < budget,
            )
        }
    };
    if removed == 0 {
        txn.abort().or_redb(what)?;
    } else {
        txn.commit().or_redb(what)?;
    }
    Ok(done)
}

fn count_taken<T, E: Into<redb::Error>>(
    taken: impl Iterator<Item = Result<T, E>>,
    what: impl Fn() -> String + Copy,
) -> Result<usize, StateBackendError> {
    let mut removed = 0;
    for entry in taken {
        entry.or_redb(what)?;
        removed += 1;
    }
    Ok(removed)
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
        if partials.get((epoch, vnode)).or_redb(what)?.is_none() {
            return Ok(Gate::Missing);
        }
    }
    match markers.get(epoch).or_redb(what)? {
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

/// Marks the store dead if the committer thread unwinds outside a batch.
struct DeathWatch<'a>(&'a Core);

impl Drop for DeathWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.kill("it panicked".to_owned());
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
/// never waits. Once the committer died it answers every request with the
/// dead store's error until the store is dropped.
fn commit_loop(core: &Core, queue: &mpsc::Receiver<Request>) {
    let _watch = DeathWatch(core);
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
    if core.dead.get().is_some() {
        for request in batch {
            let error = core.dead_error(&request.what());
            request.fail(error);
        }
        return;
    }
    // A panic rolls the transaction back (redb aborts it on drop, during the
    // unwind) and kills the store; the batch is answered below.
    let applied = match catch_unwind(AssertUnwindSafe(|| apply_batch(core, &batch))) {
        Ok(applied) => applied,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            core.kill(format!("it panicked: {message}"));
            for request in batch {
                let error = core.dead_error(&request.what());
                request.fail(error);
            }
            return;
        }
    };
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
            for request in batch {
                let failed = StateBackendError::Io(format!(
                    "{}: the batch's commit failed: {error}",
                    request.what()
                ));
                request.fail(failed);
            }
        }
    }
}

/// Apply one batch in one write transaction and commit it. Each write and
/// seal is checked against the fence as it is when that request is applied.
fn apply_batch(core: &Core, batch: &[Request]) -> Result<Vec<Answer>, StateBackendError> {
    core.with_db(
        || "group commit".to_owned(),
        |db| {
            let what = || "group commit".to_owned();
            let txn = db.begin_write().or_redb(what)?;
            let mut answers = Vec::with_capacity(batch.len());
            // A batch of refused writes, early gates and repeated seals changes
            // nothing: it is rolled back instead of paying a commit.
            let mut dirty = false;
            let mut fence_written = None;
            {
                let mut partials = txn.open_table(PARTIALS).or_redb(what)?;
                let mut markers = txn.open_table(MARKERS).or_redb(what)?;
                for request in batch {
                    let fence = core.fence.load(Ordering::Acquire);
                    answers.push(match request {
                        Request::Write { version, .. } if fence > 0 && *version < fence => {
                            Answer::Write(Err(StateBackendError::StaleVersion {
                                caller: *version,
                                authoritative: fence,
                            }))
                        }
                        Request::Write {
                            vnode,
                            epoch,
                            bytes,
                            ..
                        } => {
                            let mut slot = partials
                                .insert_reserve((*epoch, *vnode), FRAME_HEADER + bytes.len())
                                .or_redb(what)?;
                            frame_into(slot.as_mut(), bytes);
                            dirty = true;
                            Answer::Write(Ok(()))
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
                            Ok(Gate::SealedBy(committer)) => seal_outcome(&committer, instance_id),
                            Ok(Gate::Unsealed) => {
                                let id = instance_id.as_bytes();
                                let mut slot = markers
                                    .insert_reserve(*epoch, FRAME_HEADER + id.len())
                                    .or_redb(what)?;
                                frame_into(slot.as_mut(), id);
                                dirty = true;
                                Ok(true)
                            }
                            Err(error) => Err(error),
                        }),
                        Request::PersistFence { .. } => Answer::Done,
                    });
                }
                // Read after every request was taken: a raise that happened
                // before any of them was queued is in this value.
                let fence = core.fence.load(Ordering::Acquire);
                if fence > core.fence_on_disk.load(Ordering::Acquire) {
                    dirty = true;
                    let mut meta = txn.open_table(META).or_redb(what)?;
                    meta.insert(FENCE_KEY, fence).or_redb(what)?;
                    fence_written = Some(fence);
                }
            }
            let fault = core
                .fault
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match fault {
                Some(CommitFault::Panic) => panic!("a fault injected into the redb committer"),
                Some(CommitFault::Stall(time)) => std::thread::sleep(time),
                None => {}
            }
            if !dirty {
                txn.abort().or_redb(what)?;
                return Ok(answers);
            }
            txn.commit().or_redb(what)?;
            if let Some(fence) = fence_written {
                core.fence_on_disk.fetch_max(fence, Ordering::AcqRel);
            }
            core.transactions.fetch_add(1, Ordering::Relaxed);
            core.requests
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(answers)
        },
    )
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
trait OrRedb<T> {
    /// This result, with a redb error mapped for the call `what` names.
    fn or_redb(self, what: impl Fn() -> String) -> Result<T, StateBackendError>;
}

impl<T, E: Into<redb::Error>> OrRedb<T> for Result<T, E> {
    fn or_redb(self, what: impl Fn() -> String) -> Result<T, StateBackendError> {
        self.map_err(|error| match error.into() {
            redb::Error::Corrupted(why) => StateBackendError::Serialization(format!(
                "redb: {}: the file is damaged: {why}",
                what()
            )),
            other => StateBackendError::Io(format!("redb: {}: {other}", what())),
        })
    }
}

/// The file's path with symlinks resolved (it exists by now), for
/// messages and [`RedbStore::path`]; the registry keys on the identity.
fn resolved(path: &Path) -> Result<PathBuf, StateBackendError> {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| StateBackendError::Io(format!("cannot resolve {}: {e}", path.display())))
}
