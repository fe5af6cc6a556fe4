//! The properties, one public async function each, and the catalog that
//! names them, says what they need, and runs them.

mod bad_input;
mod commit;
mod data;
mod durability;
mod fence;
mod listing;
mod pruning;
mod recovery;
mod stalls;

pub use bad_input::{p12_bad_input, p12_corruption};
pub use commit::{p08_commit_gate, p09_one_committer, p15_fenced_seal};
pub use data::{
    p01_batch_read, p01_round_trip, p02_idempotent_replay, p02_lost_answers, p03_independence,
    p13_shared_object,
};
pub use durability::{
    CHILD_ENV, ChildCommand, p06_shared_fence_across_processes, p10_durability_crash,
    p10_durability_reopen,
};
pub use fence::{
    concurrent_writes_fail_alone, p04_fence_monotonic, p05_fence_enforced, p06_shared_fence,
    p07_atomic_fence, p07_cancelled_raise,
};
pub use listing::p16_list_partials;
pub use pruning::{p11_prune_races_seals, p11_pruning};
pub use recovery::p14_recovery_queries;
pub use stalls::{
    p07_seen_write_never_refused, p07_stalled_raise, p07_stalled_zombie, p09_stalled_seal,
};

pub(crate) use durability::run_child_if_requested;

use crate::factory::{BackendFactory, Capability};

/// One property of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property {
    /// The contract's id, `P1` to `P16`.
    pub id: &'static str,
    /// The test name, as the conformance macro and reports spell it.
    pub name: &'static str,
    /// One line on what it proves.
    pub summary: &'static str,
    /// Capabilities the backend must claim for the property to apply.
    pub needs: &'static [Capability],
}

/// The one list of properties, in contract order: `(id, function, how it
/// is called, capabilities it needs, summary)`. It is passed to `$callback`,
/// which builds what it needs from it: [`PROPERTIES`] and the dispatch
/// here, one `#[test]` per property in [`conformance_tests!`](crate::conformance_tests).
/// A property is added here and nowhere else. `child` properties re-run
/// the test binary and get the command for it.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_properties {
    ($callback:path; $($args:tt)*) => {
        $callback! { $($args)*;
            (P1, p01_round_trip, plain, [], "reads return the last acknowledged bytes, None when absent or pruned"),
            (P1, p01_batch_read, plain, [], "read_partials answers exactly what read_partial of each vnode answers, in order"),
            (P2, p02_idempotent_replay, plain, [], "replaying the same write, before or after the seal, changes nothing"),
            (P2, p02_lost_answers, plain, [], "calls whose answers are lost after they applied: retries succeed, a retried seal is won"),
            (P3, p03_independence, plain, [], "random multi-handle sequences match the reference model"),
            (P4, p04_fence_monotonic, plain, [Fencing], "the fence never goes down; 0 means off"),
            (P5, p05_fence_enforced, plain, [Fencing], "writes below the fence fail with StaleVersion and write nothing"),
            (P6, p06_shared_fence, plain, [SharedFence], "a raise through one handle fences every handle on the store"),
            (P6, p06_shared_fence_across_processes, child, [SharedFence, CrossProcess], "a raise in another process fences a handle here"),
            (P7, p07_atomic_fence, plain, [Fencing], "no zombie write lands after a raise is acknowledged"),
            (P7, p07_cancelled_raise, plain, [SharedFence], "a raise cancelled half-way is finished by the next acknowledged raise"),
            (P7, p07_stalled_zombie, plain, [Fencing], "a zombie write (or deposed seal) held in flight across a raise is refused, or landed before it"),
            (P7, p07_seen_write_never_refused, plain, [Fencing], "a write whose bytes another handle read is never refused, even once its epoch is pruned and the fence has risen past it"),
            (P7, p07_stalled_raise, plain, [SharedFence], "a raise held in flight while another handle raises higher never lowers the fence"),
            (P8, p08_commit_gate, plain, [], "epoch_complete is false and seals nothing while a partial is missing"),
            (P9, p09_one_committer, plain, [], "racing sealers: exactly one wins, the others learn its id"),
            (P9, p09_stalled_seal, plain, [], "a seal held in flight while another instance seals: still one winner, the loser told who"),
            (P10, p10_durability_reopen, plain, [Durable], "writes, seals and the fence survive a reopen"),
            (P10, p10_durability_crash, child, [CrossProcessReopen], "nothing acknowledged is lost when a writer is SIGKILLed"),
            (P11, p11_pruning, plain, [], "prune removes exactly the older epochs and races writes safely"),
            (P11, p11_prune_races_seals, plain, [AtomicPrune], "seals racing prunes, or prunes cut short, leave no sealed epoch without partials"),
            (P12, p12_bad_input, plain, [], "bad input gets a typed error and no side effect"),
            (P12, p12_corruption, plain, [CorruptionDetection], "damaged stored bytes are reported, not returned"),
            (P13, p13_shared_object, plain, [], "one Arc<dyn StateBackend> serves many tasks at once"),
            (P14, p14_recovery_queries, plain, [RecoveryQueries], "latest_committed_epoch and sealed_epochs follow the markers"),
            (P15, p15_fenced_seal, plain, [FencedSeal], "a handle behind the fence cannot seal an epoch"),
            (P16, p16_list_partials, plain, [ListPartials], "partials(epoch) lists exactly the vnodes written and not pruned, through any handle"),
        }
    };
}

/// Builds [`PROPERTIES`] and [`run`] from the list.
macro_rules! catalog {
    (; $(($id:ident, $name:ident, $kind:ident, [$($need:ident),*], $summary:literal),)*) => {
        /// Every property, in contract order.
        pub const PROPERTIES: &[Property] = &[
            $(Property {
                id: stringify!($id),
                name: stringify!($name),
                summary: $summary,
                needs: &[$(Capability::$need),*],
            },)*
        ];

        /// Run `property` against `factory`, without the applicability check.
        pub(crate) async fn run(
            property: &Property,
            factory: &dyn BackendFactory,
            child: &ChildCommand,
        ) -> Result<(), String> {
            match property.name {
                $(stringify!($name) => call!($kind, $name, factory, child),)*
                other => Err(format!("no property is named {other:?}")),
            }
        }
    };
}

/// One property call: `plain` ones take the factory, `child` ones also the
/// command that re-runs the test binary.
macro_rules! call {
    (plain, $name:ident, $factory:expr, $child:expr) => {
        $name($factory).await
    };
    (child, $name:ident, $factory:expr, $child:expr) => {
        $name($factory, $child).await
    };
}

crate::__with_properties!(catalog;);

/// The property named `name`, if there is one.
pub fn property(name: &str) -> Option<&'static Property> {
    PROPERTIES.iter().find(|p| p.name == name)
}
