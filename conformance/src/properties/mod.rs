//! The properties, one public async function each, and the catalog that
//! names them, says what they need, and runs them.

mod bad_input;
mod commit;
mod data;
mod durability;
mod fence;
mod pruning;
mod recovery;

pub use bad_input::{p12_bad_input, p12_corruption};
pub use commit::{p08_commit_gate, p09_one_committer, p15_fenced_seal};
pub use data::{p01_round_trip, p02_idempotent_replay, p03_independence, p13_shared_object};
pub use durability::{
    CHILD_ENV, ChildCommand, p06_shared_fence_across_processes, p10_durability_crash,
    p10_durability_reopen,
};
pub use fence::{
    concurrent_writes_fail_alone, p04_fence_monotonic, p05_fence_enforced, p06_shared_fence,
    p07_atomic_fence, p07_cancelled_raise,
};
pub use pruning::{p11_prune_races_seals, p11_pruning};
pub use recovery::p14_recovery_queries;

pub(crate) use durability::run_child_if_requested;

use crate::factory::{BackendFactory, Capability};

/// One property of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property {
    /// The contract's id, `P1` to `P15`.
    pub id: &'static str,
    /// The test name, as the conformance macro and reports spell it.
    pub name: &'static str,
    /// One line on what it proves.
    pub summary: &'static str,
    /// Capabilities the backend must claim for the property to apply.
    pub needs: &'static [Capability],
}

use Capability::*;

/// Every property, in contract order.
pub const PROPERTIES: &[Property] = &[
    Property {
        id: "P1",
        name: "p01_round_trip",
        summary: "reads return the last acknowledged bytes, None when absent or pruned",
        needs: &[],
    },
    Property {
        id: "P2",
        name: "p02_idempotent_replay",
        summary: "replaying the same write, before or after the seal, changes nothing",
        needs: &[],
    },
    Property {
        id: "P3",
        name: "p03_independence",
        summary: "random multi-handle sequences match the reference model",
        needs: &[],
    },
    Property {
        id: "P4",
        name: "p04_fence_monotonic",
        summary: "the fence never goes down; 0 means off",
        needs: &[Fencing],
    },
    Property {
        id: "P5",
        name: "p05_fence_enforced",
        summary: "writes below the fence fail with StaleVersion and write nothing",
        needs: &[Fencing],
    },
    Property {
        id: "P6",
        name: "p06_shared_fence",
        summary: "a raise through one handle fences every handle on the store",
        needs: &[SharedFence],
    },
    Property {
        id: "P6",
        name: "p06_shared_fence_across_processes",
        summary: "a raise in another process fences a handle here",
        needs: &[SharedFence, CrossProcess],
    },
    Property {
        id: "P7",
        name: "p07_atomic_fence",
        summary: "no zombie write lands after a raise is acknowledged",
        needs: &[Fencing],
    },
    Property {
        id: "P7",
        name: "p07_cancelled_raise",
        summary: "a raise cancelled half-way is finished by the next acknowledged raise",
        needs: &[SharedFence],
    },
    Property {
        id: "P8",
        name: "p08_commit_gate",
        summary: "epoch_complete is false and seals nothing while a partial is missing",
        needs: &[],
    },
    Property {
        id: "P9",
        name: "p09_one_committer",
        summary: "racing sealers: exactly one wins, the others learn its id",
        needs: &[],
    },
    Property {
        id: "P10",
        name: "p10_durability_reopen",
        summary: "writes, seals and the fence survive a reopen",
        needs: &[Durable],
    },
    Property {
        id: "P10",
        name: "p10_durability_crash",
        summary: "nothing acknowledged is lost when a writer is SIGKILLed",
        needs: &[CrossProcessReopen],
    },
    Property {
        id: "P11",
        name: "p11_pruning",
        summary: "prune removes exactly the older epochs and races writes safely",
        needs: &[],
    },
    Property {
        id: "P11",
        name: "p11_prune_races_seals",
        summary: "seals racing prunes, or prunes cut short, leave no sealed epoch without partials",
        needs: &[AtomicPrune],
    },
    Property {
        id: "P12",
        name: "p12_bad_input",
        summary: "bad input gets a typed error and no side effect",
        needs: &[],
    },
    Property {
        id: "P12",
        name: "p12_corruption",
        summary: "damaged stored bytes are reported, not returned",
        needs: &[CorruptionDetection],
    },
    Property {
        id: "P13",
        name: "p13_shared_object",
        summary: "one Arc<dyn StateBackend> serves many tasks at once",
        needs: &[],
    },
    Property {
        id: "P14",
        name: "p14_recovery_queries",
        summary: "latest_committed_epoch and sealed_epochs follow the markers",
        needs: &[RecoveryQueries],
    },
    Property {
        id: "P15",
        name: "p15_fenced_seal",
        summary: "a handle behind the fence cannot seal an epoch",
        needs: &[FencedSeal],
    },
];

/// The property named `name`, if there is one.
pub fn property(name: &str) -> Option<&'static Property> {
    PROPERTIES.iter().find(|p| p.name == name)
}

/// Run `property` against `factory`, without the applicability check.
pub(crate) async fn run(
    property: &Property,
    factory: &dyn BackendFactory,
    child: &ChildCommand,
) -> Result<(), String> {
    match property.name {
        "p01_round_trip" => p01_round_trip(factory).await,
        "p02_idempotent_replay" => p02_idempotent_replay(factory).await,
        "p03_independence" => p03_independence(factory).await,
        "p04_fence_monotonic" => p04_fence_monotonic(factory).await,
        "p05_fence_enforced" => p05_fence_enforced(factory).await,
        "p06_shared_fence" => p06_shared_fence(factory).await,
        "p06_shared_fence_across_processes" => {
            p06_shared_fence_across_processes(factory, child).await
        }
        "p07_atomic_fence" => p07_atomic_fence(factory).await,
        "p07_cancelled_raise" => p07_cancelled_raise(factory).await,
        "p08_commit_gate" => p08_commit_gate(factory).await,
        "p09_one_committer" => p09_one_committer(factory).await,
        "p10_durability_reopen" => p10_durability_reopen(factory).await,
        "p10_durability_crash" => p10_durability_crash(factory, child).await,
        "p11_pruning" => p11_pruning(factory).await,
        "p11_prune_races_seals" => p11_prune_races_seals(factory).await,
        "p12_bad_input" => p12_bad_input(factory).await,
        "p12_corruption" => p12_corruption(factory).await,
        "p13_shared_object" => p13_shared_object(factory).await,
        "p14_recovery_queries" => p14_recovery_queries(factory).await,
        "p15_fenced_seal" => p15_fenced_seal(factory).await,
        other => Err(format!("no property is named {other:?}")),
    }
}
