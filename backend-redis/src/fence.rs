//! The fence: a copy in every vnode group (checked atomically by each
//! write) and one for the namespace (what a new handle starts from and what
//! the seal checks), and how a raise reaches them.
//!
//!
//! Every group keeps its own copy of the fence, which its write script
//! checks atomically with the write; the namespace key is where a new
//! handle learns the fence and what the seal script checks. A raise is
//! copied to every group first and to the namespace key last, and a handle
//! takes the namespace key's value as already copied everywhere. So the
//! namespace key never runs ahead of a group: a raiser that dies, times out
//! or cannot reach one shard half-way leaves it where it was, its raise is
//! not acknowledged, and the next raise to that version (by any handle)
//! copies it to every group again. A raise is acknowledged
//! ([`StateBackend::persist_authoritative_version`], or the next write or
//! seal after [`StateBackend::set_authoritative_version`]) only once every
//! group holds it.
//!

use std::sync::atomic::Ordering;

use laminar_state_api::StateBackendError;

use crate::backend::RedisBackend;
use crate::keys::decimal;
use crate::store::RedisStore;

impl RedisStore {
    /// Copy `fence` to every group's fence, in parallel, and only then to
    /// the namespace's: done when every copy is at least `fence`.
    ///
    /// The order is what makes a raise that dies half-way harmless. The
    /// namespace key is the one a new handle starts from (and trusts as
    /// already copied to every group), so it may only say `fence` once
    /// every group does: a raiser that dies, times out or cannot reach one
    /// shard leaves the namespace key where it was, and the next raise to
    /// `fence`, by any handle, copies it to every group again.
    pub(crate) async fn propagate_fence(&self, fence: u64) -> Result<(), StateBackendError> {
        let keys = &self.shared.keys;
        self.in_groups("fence raise", 0..keys.groups, |store, group| async move {
            store
                .raise_key(store.shared.keys.group_fence(group), fence)
                .await
        })
        .await?;
        self.raise_key(keys.fence(), fence).await
    }

    /// Raise one fence key to at least `fence`.
    pub(crate) async fn raise_key(&self, key: String, fence: u64) -> Result<(), StateBackendError> {
        let (_, confirmation): (String, _) = self
            .call_replicated(
                "fence raise",
                true,
                |s| &s.raise,
                |call| {
                    call.key(key).arg(decimal(fence)).arg(self.touch());
                },
            )
            .await?;
        confirmation.require()
    }
}

impl RedisBackend {
    /// Carry a raise made on this handle to every group before its next
    /// write or seal, as the contract requires.
    pub(crate) async fn carry_fence(&self) -> Result<u64, StateBackendError> {
        let fence = self.fence.load(Ordering::Acquire);
        if fence > self.propagated.load(Ordering::Acquire) {
            self.store.propagate_fence(fence).await?;
            self.propagated.fetch_max(fence, Ordering::AcqRel);
        }
        Ok(fence)
    }
}
