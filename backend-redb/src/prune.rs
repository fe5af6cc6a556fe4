//! Pruning, in chunks of [`PRUNE_CHUNK`] deletions a transaction, markers
//! first.

use laminar_state_api::StateBackendError;
use redb::Database;

use crate::OrRedb;
use crate::store::Core;
use crate::{MARKERS, PARTIALS};

/// Partials (or markers) one prune transaction deletes at most.
pub(crate) const PRUNE_CHUNK: usize = 8192;

/// `prune_before(before)`: [`prune_step`] until none is left.
pub(crate) fn prune(core: &Core, what: &str, before: u64) -> Result<(), StateBackendError> {
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
pub(crate) fn prune_step(
    db: &Database,
    what: &str,
    before: u64,
) -> Result<bool, StateBackendError> {
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

pub(crate) fn count_taken<T, E: Into<redb::Error>>(
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
