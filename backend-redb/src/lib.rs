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
//!
//! # Where things are
//!
//! | module | holds |
//! |---|---|
//! | `config` | [`RedbConfig`] and its URL |
//! | `store` | [`RedbStore`]: one open file per process, the committer thread, the test hooks |
//! | `committer` | group commit: requests, batches, the fence check and the gate inside each write transaction (P7, P9, P15) |
//! | `prune` | pruning in chunks, markers first (P11) |
//! | `frame` | framing and checksums (P12) |
//! | `backend` | [`RedbBackend`] and the trait implementation, in the trait's order |
//!
//! The tables (above) and the crate-wide mapping of redb's errors are in
//! `lib.rs`.
//!
//! [`StateBackend::persist_authoritative_version`]: laminar_state_api::StateBackend::persist_authoritative_version
//! [`StateBackend::prune_before`]: laminar_state_api::StateBackend::prune_before
//! [`StateBackend::set_authoritative_version`]: laminar_state_api::StateBackend::set_authoritative_version

use laminar_state_api::StateBackendError;
use redb::TableDefinition;

mod backend;
mod committer;
mod config;
mod frame;
mod prune;
mod store;

pub use backend::RedbBackend;
pub use config::{DEFAULT_MAX_PAYLOAD_LEN, RedbConfig};
pub use store::{CommitFault, CommitStats, DamagedRecord, PruneHook, RedbStore};

const PARTIALS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("partials");
const MARKERS: TableDefinition<u64, &[u8]> = TableDefinition::new("markers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FENCE_KEY: &str = "fence";
const FORMAT_KEY: &str = "format";
const FORMAT: u64 = 1;

/// Map a redb error once, keeping which call failed and why: damage found
/// by redb is a `Serialization` error, everything else `Io`.
pub(crate) trait OrRedb<T> {
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
