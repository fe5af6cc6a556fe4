//! Recovery queries (P14): `latest_committed_epoch` and `sealed_epochs`.

use proptest::prelude::*;

use crate::factory::BackendFactory;
use crate::model::{self, EPOCHS, Op, VERSIONS, VNODES, op_strategy};
use crate::runner::{Checked, for_all};
use crate::support::fresh_store;

/// P14: after every step of a random operation sequence (as in P3),
/// `latest_committed_epoch` is the highest sealed epoch still stored and
/// `sealed_epochs(after)` lists exactly the sealed epochs above `after`, in
/// order; prunes remove epochs from both. Every sequence ends with a whole
/// checkpoint of an epoch above the random ones, so each case seals at
/// least once: a random sequence alone may seal nothing (about one run in a
/// hundred sealed nothing in all its cases), and a backend whose queries
/// answer "nothing sealed" then passed.
pub async fn p14_recovery_queries(factory: &dyn BackendFactory) -> Checked {
    let capabilities = factory.capabilities();
    let strategy = proptest::collection::vec(op_strategy(), 1..32).prop_map(|mut ops| {
        ops.extend(whole_checkpoint());
        ops
    });
    for_all(factory, strategy, |ops| async move {
        let store = fresh_store(factory).await?;
        model::run_sequence(&*store, capabilities, &ops, true).await
    })
    .await
}

/// Handle 0 raises above every random version and writes every vnode of epoch
/// `EPOCHS` (no random operation touches it), then seals it.
fn whole_checkpoint() -> Vec<Op> {
    let epoch = EPOCHS;
    let writes = (0..VNODES).map(|vnode| Op::RaiseThenWrite {
        handle: 0,
        raise: VERSIONS,
        above: 0,
        vnode,
        epoch,
        bytes: vec![1, 2],
    });
    writes
        .chain([Op::Complete {
            handle: 0,
            epoch,
            vnodes: (0..VNODES).collect(),
        }])
        .collect()
}
