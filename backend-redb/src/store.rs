//! The store: one open database file per process (a registry keyed on the
//! file's identity), its committer thread and the test hooks.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use laminar_state_api::{InputLimits, StateBackendError};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::OrRedb;
use crate::backend::RedbBackend;
use crate::committer::{Request, commit_loop};
use crate::config::RedbConfig;
use crate::frame::FRAME_FORMAT;
use crate::{FENCE_KEY, FORMAT, FORMAT_KEY, MARKERS, META, PARTIALS};

/// One open database file, shared by every handle on it in this process.
#[derive(Clone)]
pub struct RedbStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    // Field order matters on drop: the sender goes first, which lets the
    // committer thread finish, then `_committer` joins it, then the database
    // closes with the last `Arc<Core>`.
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) _committer: JoinOnDrop,
    pub(crate) core: Arc<Core>,
}

pub(crate) struct Core {
    /// `None` once the committer died: the file is closed, so that a reopen
    /// can open it afresh. Read-locked by every operation for its
    /// transaction (the committer for a whole batch, a prune per chunk).
    pub(crate) db: RwLock<Option<Database>>,
    /// The file, as the first opener named it (symlinks resolved).
    pub(crate) path: PathBuf,
    /// The fence: raised by `fetch_max`, read by the committer per request.
    pub(crate) fence: AtomicU64,
    /// The highest fence committed to `meta`.
    pub(crate) fence_on_disk: AtomicU64,
    /// Why the committer died, once it has.
    pub(crate) dead: OnceLock<String>,
    pub(crate) max_payload_len: usize,
    pub(crate) transactions: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// A fault injected by a test into the next batch.
    pub(crate) fault: Mutex<Option<CommitFault>>,
    /// Called by a test after each transaction of a prune.
    pub(crate) prune_hook: Mutex<Option<PruneHook>>,
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

pub(crate) struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// What the registry knows an open file by: its identity, not its name.
#[cfg(unix)]
pub(crate) type FileKey = (u64, u64);
#[cfg(not(unix))]
pub(crate) type FileKey = PathBuf;

/// The identity of the open `file`: device and inode.
#[cfg(unix)]
pub(crate) fn file_key(file: &File, path: &Path) -> Result<FileKey, StateBackendError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| StateBackendError::Io(format!("cannot stat {}: {e}", path.display())))?;
    Ok((meta.dev(), meta.ino()))
}

/// Without inodes: the path with symlinks resolved (the file exists by now).
#[cfg(not(unix))]
pub(crate) fn file_key(_file: &File, path: &Path) -> Result<FileKey, StateBackendError> {
    resolved(path)
}

pub(crate) fn registry() -> &'static Mutex<HashMap<FileKey, Weak<Inner>>> {
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

    pub(crate) async fn submit<T>(
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
    pub(crate) async fn blocking<T: Send + 'static>(
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
    pub(crate) async fn blocking_read<T: Send + 'static>(
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
    pub(crate) fn open(
        file: File,
        path: PathBuf,
        config: &RedbConfig,
    ) -> Result<Self, StateBackendError> {
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
    pub(crate) fn with_db<T>(
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
    pub(crate) fn dead_error(&self, what: &str) -> StateBackendError {
        let why = self.dead.get().map_or("it stopped", String::as_str);
        StateBackendError::Io(format!(
            "redb: {what}: the committer thread of {} died ({why}); this store is closed, open the file again for a fresh one",
            self.path.display()
        ))
    }

    /// Mark the store dead (the first reason wins) and close the file.
    pub(crate) fn kill(&self, why: String) {
        let _ = self.dead.set(why);
        self.close();
    }

    /// Run the test's prune hook, if any.
    pub(crate) fn after_prune_transaction(&self) {
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
    pub(crate) fn close(&self) {
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

/// The file's path with symlinks resolved (it exists by now), for
/// messages and [`RedbStore::path`]; the registry keys on the identity.
pub(crate) fn resolved(path: &Path) -> Result<PathBuf, StateBackendError> {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .map_err(|e| StateBackendError::Io(format!("cannot resolve {}: {e}", path.display())))
}
