#![doc = include_str!("../README.md")]
//!
//! # The model
//!
//! Operators persist one opaque blob per `(vnode, epoch)`: the partial
//! aggregate a virtual node held when a checkpoint barrier passed. A
//! checkpoint coordinator then asks [`StateBackend::epoch_complete`] whether
//! every vnode of the epoch has landed; the first caller to get `Ok(true)`
//! seals the epoch with a commit marker naming it, and only then may sinks
//! commit. A deposed leader is kept out by a monotonic fence: writes that
//! carry an assignment version below [`StateBackend::authoritative_version`]
//! are refused with [`StateBackendError::StaleVersion`].
//!
//! The trait and the error enum have exactly the shape engines already code
//! against; everything this crate adds is additive (provided methods, helper
//! types), so existing implementations and call sites compile unchanged.
//!
//! # Middleware
//!
//! A wrapper that changes some calls of another backend (a layer, a fault
//! injector) implements [`ForwardingBackend`]: every call that carries no
//! partial bytes forwards by default, and the three that do are written out,
//! so no byte-transforming wrapper hands a batch read through unopened.
//!
//! # Errors for bad input
//!
//! The error enum is exhaustive and engines match on it, so it gains no new
//! variants. Input a backend refuses before touching its store (a vnode
//! outside the handle's capacity, a payload over the backend's size limit, an
//! empty vnode list for the commit gate) and stored bytes that fail their
//! framing or checksum are reported as [`StateBackendError::Serialization`],
//! with a message that names the offending value and the limit.
//! [`InputLimits`] builds those errors so every backend words them alike.
//!
//! # Backend URLs
//!
//! Every backend parses its URL with [`BackendUrl`], so all share one
//! dialect (one percent-decoding rule, unknown parameters refused) and a
//! bad URL is always a [`UrlError`] naming the parameter, with the URL's
//! credentials redacted ([`redact_url`]). [`BackendUrl`] states the rules.

mod forwarding;
mod url;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::forwarding::{ForwardingBackend, read_each};
pub use crate::url::{BackendUrl, UrlError, redact_url};

/// Errors a [`StateBackend`] can raise.
#[derive(Debug, thiserror::Error)]
pub enum StateBackendError {
    /// The store could not be reached or failed to carry out the request
    /// (filesystem, network, server error, timeout). The message keeps the
    /// underlying cause.
    #[error("I/O error: {0}")]
    Io(String),

    /// Bytes that cannot be framed or unframed: stored data that fails its
    /// checksum or layout, or input the backend refuses before storing it
    /// (see the crate docs, "Errors for bad input").
    #[error("serialization error: {0}")]
    Serialization(String),

    /// No partial is stored for `(vnode, epoch)`.
    #[error("not found: vnode={vnode} epoch={epoch}")]
    NotFound {
        /// The virtual node asked for.
        vnode: u32,
        /// The epoch asked for.
        epoch: u64,
    },

    /// The writer's assignment version is below the fence. Returned by
    /// [`StateBackend::write_partial`] when a writer that lost its
    /// assignment (the old side of a split brain) tries to persist state.
    /// Nothing was written; the writer should stop, refresh its assignment
    /// and retry at the new version.
    #[error("stale assignment version: caller={caller} < authoritative={authoritative}")]
    StaleVersion {
        /// The version the writer presented.
        caller: u64,
        /// The fence the backend enforced.
        authoritative: u64,
    },

    /// Returned by [`StateBackend::epoch_complete`] when the epoch is already
    /// sealed by a commit marker that names another instance: two leaders
    /// raced for the epoch and the other one won. The loser must not run its
    /// sink-commit phase; the durable state is the winner's.
    #[error(
        "split-brain commit detected: epoch already committed by {committer:?}, we are {self_id:?}"
    )]
    SplitBrainCommit {
        /// The instance id recorded in the existing commit marker.
        committer: String,
        /// The instance id of the handle that lost.
        self_id: String,
    },
}

/// A pluggable store for per-`(vnode, epoch)` partial state, with a commit
/// gate and a split-brain fence.
///
/// # Object safety
///
/// The engine holds an `Arc<dyn StateBackend>` and picks the implementation
/// at start-up, so the trait stays object-safe: no generic methods, nothing
/// returns `Self`, and async methods are boxed by `async_trait`.
///
/// # Concurrency
///
/// One handle is shared by many worker tasks at once; implementations are
/// `Send + Sync + 'static` and must not assume callers take turns.
///
/// # Idempotence
///
/// Recovery replays writes, so [`write_partial`](Self::write_partial) must
/// accept the same bytes for the same `(vnode, epoch)` any number of times,
/// before or after the epoch is sealed, with no further effect. Different
/// bytes for the same key mean a bug upstream; backends do not have to
/// detect it.
///
/// # When a fence raise takes effect
///
/// [`set_authoritative_version`](Self::set_authoritative_version) is
/// synchronous, so a backend whose fence lives on a server cannot wait for
/// the server inside it. The raise is enforced by the raising handle at once,
/// and becomes durable and visible to every other handle on the store no
/// later than that handle's next successful write or seal, which carries it
/// to the store in the same atomic step.
/// [`persist_authoritative_version`](Self::persist_authoritative_version)
/// makes a raise durable and shared before it returns.
#[async_trait]
pub trait StateBackend: Send + Sync + 'static {
    /// Persist `bytes` as the partial for `(vnode, epoch)`.
    ///
    /// `assignment_version` is the assignment version the writer observed
    /// when it began. A fencing backend refuses the write with
    /// [`StateBackendError::StaleVersion`] when it is below the authoritative
    /// version, checking and writing in one atomic step; a backend without a
    /// fence accepts any version. When this returns `Ok`, the write is as
    /// durable as the backend promises.
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError>;

    /// The last acknowledged partial for `(vnode, epoch)`, or `None` if none
    /// was written or it was pruned.
    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError>;

    /// The commit gate: `Ok(true)` iff every vnode in `vnodes` has a partial
    /// for `epoch`, in which case the epoch is sealed with a commit marker
    /// naming this handle's instance.
    ///
    /// The coordinator calls it after sinks pre-commit and lets them commit
    /// only on `Ok(true)`. While any partial is missing it returns
    /// `Ok(false)` and seals nothing. If the epoch is already sealed by
    /// another instance it returns [`StateBackendError::SplitBrainCommit`]
    /// naming the winner; asking again as the winner returns `Ok(true)`.
    ///
    /// A handle that was told an assignment version below the store's fence
    /// (a deposed leader) may be refused with
    /// [`StateBackendError::StaleVersion`]; every backend of this workspace
    /// does so, since a leader that lost its assignment must not seal.
    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError>;

    /// Delete every partial and commit marker whose epoch is strictly below
    /// `before`.
    ///
    /// The coordinator calls it once a checkpoint has committed, since older
    /// epochs can never be recovered. There is deliberately no default: a
    /// backend that truly holds nothing implements `Ok(())` so the choice is
    /// visible. Writes to epochs at or above `before` that run at the same
    /// time must not be lost.
    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError>;

    /// Raise the fence: the lowest assignment version
    /// [`write_partial`](Self::write_partial) will accept from now on.
    ///
    /// Hosts call it at boot after adopting an assignment snapshot, and on
    /// every rotation, so writers of a deposed leader are refused. Monotonic:
    /// a version at or below the current one changes nothing. See "When a
    /// fence raise takes effect" above for when other handles see it. The
    /// default does nothing, for backends that do not fence.
    fn set_authoritative_version(&self, _version: u64) {}

    /// The fence this handle enforces; `0` means fencing is off and every
    /// version is accepted. Backends that do not fence return `0`.
    fn authoritative_version(&self) -> u64 {
        0
    }

    /// The highest sealed epoch still in the store, or `None` if there is
    /// none.
    ///
    /// A node that takes over vnodes after a restart or rebalance restores
    /// their partials from this epoch. The default returns `None` ("no
    /// committed state"), for backends that cannot enumerate their markers.
    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        Ok(None)
    }

    /// The sealed epochs strictly greater than `after`, in ascending order.
    ///
    /// A committer uses it to commit exactly the sealed epochs in one pass
    /// and skip abandoned ones, with one listing rather than a probe per
    /// epoch. The default returns an empty list, for backends that cannot
    /// enumerate their markers.
    async fn sealed_epochs(&self, _after: u64) -> Result<Vec<u64>, StateBackendError> {
        Ok(Vec::new())
    }

    /// The vnodes that have a partial for `epoch`, in ascending order, or
    /// `None` if this backend cannot enumerate its partials (the default).
    ///
    /// `Some(list)` names exactly the vnodes whose
    /// [`read_partial`](Self::read_partial) would find bytes at that moment:
    /// every vnode written at `epoch` and not pruned since, and no other (a
    /// write the fence refused is never listed). Operator tools use it to
    /// inspect, copy and back up a store without knowing its vnode count;
    /// the listing carries no sizes, since what a backend stores (framed,
    /// compressed, encrypted) is not what a read returns. It says nothing
    /// about seals: ask [`sealed_epochs`](Self::sealed_epochs) for those.
    ///
    /// The default returns `Ok(None)` ("cannot enumerate"), never an empty
    /// list, so a caller can tell "no partial" from "cannot say"; every
    /// backend of this workspace overrides it.
    async fn partials(&self, _epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        Ok(None)
    }

    /// Raise the fence and make the raise durable and visible to every
    /// handle on the store before returning.
    ///
    /// The synchronous [`set_authoritative_version`](Self::set_authoritative_version)
    /// may defer that to the handle's next write or seal; hosts that rotate
    /// an assignment without writing call this instead. The default raises
    /// the fence and returns, which is enough for backends whose raise is
    /// immediately shared and durable.
    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.set_authoritative_version(version);
        Ok(())
    }

    /// The partials of `vnodes` at `epoch`, in the order asked: element `i`
    /// is what [`read_partial(vnodes[i], epoch)`](Self::read_partial) would
    /// return (`None` for a vnode never written, or pruned; a vnode asked
    /// twice is answered twice). The first error any of them would give
    /// fails the whole call.
    ///
    /// Recovery reads every vnode of the latest sealed epoch while the job
    /// is down; a backend answers them together in fewer round trips (one
    /// read transaction, one pipeline, one listing). The default reads them
    /// one by one with `read_partial`, so a backend that does not override
    /// it keeps working, only slower.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        read_each(self, epoch, vnodes).await
    }
}

// The engine stores backends as trait objects: keep the trait object-safe.
const _: Option<&dyn StateBackend> = None;

/// The commit gate's answer once the epoch's marker names `committer`:
/// `Ok(true)` when that is the asking instance `self_id` (it sealed the
/// epoch, now or on an earlier call whose answer it may never have seen),
/// [`StateBackendError::SplitBrainCommit`] naming both otherwise. Every
/// backend decides with this, so the rule is written once.
pub fn seal_outcome(committer: &str, self_id: &str) -> Result<bool, StateBackendError> {
    if committer == self_id {
        Ok(true)
    } else {
        Err(StateBackendError::SplitBrainCommit {
            committer: committer.to_owned(),
            self_id: self_id.to_owned(),
        })
    }
}

/// The input limits of one backend handle, and the errors for input beyond
/// them, worded the same way by every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Vnodes are numbered `0..vnode_capacity`.
    pub vnode_capacity: u32,
    /// The largest partial, in bytes, the backend stores.
    pub max_payload_len: usize,
}

impl InputLimits {
    /// Limits for vnodes `0..vnode_capacity` and partials of at most
    /// `max_payload_len` bytes.
    pub const fn new(vnode_capacity: u32, max_payload_len: usize) -> Self {
        Self {
            vnode_capacity,
            max_payload_len,
        }
    }

    /// Refuse a vnode outside `0..vnode_capacity`.
    pub fn check_vnode(&self, vnode: u32) -> Result<(), StateBackendError> {
        if vnode < self.vnode_capacity {
            Ok(())
        } else {
            Err(StateBackendError::Serialization(format!(
                "vnode {vnode} is out of range: this handle serves vnodes 0..{}",
                self.vnode_capacity
            )))
        }
    }

    /// Refuse a write whose vnode or payload is out of bounds.
    pub fn check_write(&self, vnode: u32, bytes: &[u8]) -> Result<(), StateBackendError> {
        self.check_vnode(vnode)?;
        if bytes.len() > self.max_payload_len {
            return Err(StateBackendError::Serialization(format!(
                "payload of {} bytes for vnode {vnode} exceeds the backend's limit of {} bytes",
                bytes.len(),
                self.max_payload_len
            )));
        }
        Ok(())
    }

    /// Refuse a commit-gate vnode list that is empty (sealing an epoch that
    /// names no vnode is a coordinator bug, not a vacuous success) or that
    /// holds a vnode out of range.
    pub fn check_gate(&self, epoch: u64, vnodes: &[u32]) -> Result<(), StateBackendError> {
        if vnodes.is_empty() {
            return Err(StateBackendError::Serialization(format!(
                "epoch_complete({epoch}) got an empty vnode list: nothing would be sealed"
            )));
        }
        self.check_vnodes(vnodes)
    }

    /// Refuse a batch (a batch read) naming any vnode outside the capacity:
    /// the first such vnode's error from [`check_vnode`](Self::check_vnode).
    pub fn check_vnodes(&self, vnodes: &[u32]) -> Result<(), StateBackendError> {
        vnodes.iter().try_for_each(|&vnode| self.check_vnode(vnode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_is_won_only_by_its_committer() {
        assert!(matches!(seal_outcome("a", "a"), Ok(true)));
        assert!(matches!(
            seal_outcome("a", "b"),
            Err(StateBackendError::SplitBrainCommit { committer, self_id })
                if committer == "a" && self_id == "b"
        ));
    }

    #[test]
    fn limits_name_the_offending_value() {
        let limits = InputLimits::new(4, 10);
        assert!(limits.check_write(3, &[0; 10]).is_ok());
        let err = limits.check_write(4, b"").unwrap_err();
        assert!(matches!(&err, StateBackendError::Serialization(m) if m.contains("vnode 4")));
        let err = limits.check_write(0, &[0; 11]).unwrap_err();
        assert!(matches!(&err, StateBackendError::Serialization(m) if m.contains("11 bytes")));
        assert!(limits.check_gate(1, &[]).is_err());
        assert!(limits.check_gate(1, &[0, 9]).is_err());
        assert!(limits.check_gate(1, &[0, 3]).is_ok());
        // A batch may be empty; its first vnode out of range is named.
        assert!(limits.check_vnodes(&[]).is_ok());
        let err = limits.check_vnodes(&[1, 7, 9]).unwrap_err();
        assert!(matches!(&err, StateBackendError::Serialization(m) if m.contains("vnode 7")));
    }
}
