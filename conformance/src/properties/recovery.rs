//! Recovery queries (P14): `latest_committed_epoch` and `sealed_epochs`.

use crate::factory::BackendFactory;
use crate::model::{self, op_strategy};
use crate::runner::{Checked, for_all};
use crate::support::fresh_store;

/// P14: after every step of a random operation sequence (as in P3),
/// `latest_committed_epoch` is the highest sealed epoch still stored and
/// `sealed_epochs(after)` lists exactly the sealed epochs above `after`, in
/// order; prunes remove epochs from both.
pub async fn p14_recovery_queries(factory: &dyn BackendFactory) -> Checked {
    let capabilities = factory.capabilities();
    let strategy = proptest::collection::vec(op_strategy(), 1..32);
    for_all(factory, strategy, |ops| async move {
        let store = fresh_store(factory).await?;
        model::run_sequence(&*store, capabilities, &ops, true).await
    })
    .await
}
