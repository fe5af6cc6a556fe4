//! The suite has teeth for layers too: a layer that drops the fence call, one
//! that swaps two partials' bytes, one that forgets the recovery queries and
//! a compression layer that checks the payload limit after compressing are
//! each caught by the property that guards against their flaw, while the
//! correct stack passes the same property.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{
    BackendFactory, Capabilities, ChildCommand, Outcome, TestStore, assert_caught, check_blocking,
};
use laminar_state_layers::CompressionLayer;
use laminar_state_memory::MemoryStore;
use support::{Inner, LIMIT, Stack, wrap};

/// One bug each, in a layer on top of the whole (correct) stack; `None`
/// is the correct stack alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// `set_authoritative_version` is not forwarded (and so neither is
    /// `persist_authoritative_version`, whose default calls it).
    DropsFence,
    /// Reads of vnode `v` return the partial of vnode `v ^ 1`.
    SwapsPartials,
    /// `latest_committed_epoch` and `sealed_epochs` are the trait's
    /// defaults, not forwarded.
    ForgetsRecovery,
    /// The compression layer alone, with no limit on the caller's payload:
    /// an oversize payload that compresses well slips under the backend's
    /// limit.
    LimitAfterCompression,
    /// The compression layer alone, correctly limited (the baseline of the
    /// flaw above).
    LimitBeforeCompression,
}

struct Flawed {
    inner: Arc<dyn StateBackend>,
    flaw: Flaw,
}

#[async_trait]
impl laminar_state_api::ForwardingBackend for Flawed {
    type Inner = dyn StateBackend;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.inner
            .write_partial(vnode, epoch, assignment_version, bytes)
            .await
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        let vnode = if self.flaw == Flaw::SwapsPartials {
            vnode ^ 1
        } else {
            vnode
        };
        self.inner.read_partial(vnode, epoch).await
    }

    // Batch reads go through this wrapper's own single reads.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        laminar_state_api::read_each(self, epoch, vnodes).await
    }

    fn set_authoritative_version(&self, version: u64) {
        if self.flaw != Flaw::DropsFence {
            self.inner.set_authoritative_version(version);
        }
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        match self.flaw {
            Flaw::ForgetsRecovery => Ok(None),
            _ => self.inner.latest_committed_epoch().await,
        }
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        match self.flaw {
            Flaw::ForgetsRecovery => Ok(Vec::new()),
            _ => self.inner.sealed_epochs(after).await,
        }
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        match self.flaw {
            // The trait's default: a call to our own (dropping) raise.
            Flaw::DropsFence => {
                StateBackend::set_authoritative_version(self, version);
                Ok(())
            }
            _ => self.inner.persist_authoritative_version(version).await,
        }
    }
}

struct Factory(Flaw);

struct Store(MemoryStore, Flaw);

#[async_trait]
impl BackendFactory for Factory {
    fn name(&self) -> String {
        format!("memory+all-layers+{:?}", self.0)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .fenced_seal()
            .recovery_queries()
            .atomic_prune()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(Store(
            MemoryStore::with_max_payload_len(support::INNER_LIMIT),
            self.0,
        )))
    }
}

#[async_trait]
impl TestStore for Store {
    async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        let raw: Arc<dyn StateBackend> = Arc::new(self.0.open(instance_id, vnode_capacity));
        Ok(match self.1 {
            Flaw::LimitAfterCompression => Arc::new(CompressionLayer::new(raw, None)),
            Flaw::LimitBeforeCompression => Arc::new(CompressionLayer::new(raw, Some(LIMIT))),
            flaw => Arc::new(Flawed {
                inner: wrap(raw, Inner::Memory, Stack::All, instance_id),
                flaw,
            }),
        })
    }

    fn max_payload_len(&self) -> usize {
        LIMIT
    }
}

fn run(property: &str, flaw: Flaw) -> Outcome {
    check_blocking(property, &Factory(flaw), &ChildCommand::libtest("no_child"))
}

/// `property` passes with `baseline` and fails with `flaw`.
fn caught(property: &str, baseline: Flaw, flaw: Flaw) {
    assert_eq!(
        run(property, baseline),
        Outcome::Passed,
        "{baseline:?} must pass {property}"
    );
    assert_caught(property, &flaw, run(property, flaw));
}

/// Tests, each named for a flaw and the property that catches it: the
/// property passes with the baseline and fails with the flaw.
macro_rules! caught_by {
    ($($test:ident: $property:literal passes $baseline:ident, fails $flaw:ident;)*) => {
        $(
            #[test]
            fn $test() {
                caught($property, Flaw::$baseline, Flaw::$flaw);
            }
        )*
    };
}

caught_by! {
    a_layer_dropping_the_fence_is_caught_by_p4: "p04_fence_monotonic" passes None, fails DropsFence;
    a_layer_dropping_the_fence_is_caught_by_p5: "p05_fence_enforced" passes None, fails DropsFence;
    a_layer_swapping_partials_is_caught_by_p1: "p01_round_trip" passes None, fails SwapsPartials;
    a_layer_swapping_partials_is_caught_by_p3: "p03_independence" passes None, fails SwapsPartials;
    a_layer_forgetting_the_recovery_queries_is_caught_by_p14:
        "p14_recovery_queries" passes None, fails ForgetsRecovery;
    a_payload_limit_checked_after_compression_is_caught_by_p12:
        "p12_bad_input" passes LimitBeforeCompression, fails LimitAfterCompression;
}
