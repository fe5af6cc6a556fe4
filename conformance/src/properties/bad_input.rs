//! Bad input and damaged data (P12): a typed error, no side effect, no
//! panic.

use bytes::Bytes;
use laminar_state_api::StateBackendError;

use crate::factory::{BackendFactory, Damage};
use crate::runner::{Checked, ensure};
use crate::support::{Context, describe, fresh_store, open, payload, read, unique_tag, write};

/// The largest payload whose acceptance P12 checks; backends with a higher
/// limit are probed only above it.
const EXACT_LIMIT_PROBE: usize = 8 << 20;

fn is_input_error<T>(result: &Result<T, StateBackendError>, mentions: &str) -> bool {
    matches!(result, Err(StateBackendError::Serialization(message)) if message.contains(mentions))
}

/// P12 (input): a vnode outside the handle's capacity, a payload one byte
/// over the backend's stated limit, and an empty or out-of-range vnode list
/// for the commit gate each fail with `Serialization` naming the offending
/// value, and change nothing; a payload exactly at the limit is accepted.
pub async fn p12_bad_input(factory: &dyn BackendFactory) -> Checked {
    const CAPACITY: u32 = 8;
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p12");
    let handle = open(&*store, &format!("{tag}-a"), CAPACITY).await?;
    let other = open(&*store, &format!("{tag}-b"), CAPACITY).await?;
    let before = payload(1, 100);
    for vnode in 0..CAPACITY {
        write(&handle, vnode, 3, 0, &before).await?;
    }

    for vnode in [CAPACITY, CAPACITY + 1, u32::MAX] {
        let result = handle.write_partial(vnode, 3, 0, payload(2, 10)).await;
        ensure!(
            is_input_error(&result, &vnode.to_string()),
            "write to vnode {vnode} (capacity {CAPACITY}) gave {}, expected a Serialization error naming vnode {vnode}",
            describe(&result)
        );
        let result = handle.read_partial(vnode, 3).await;
        ensure!(
            is_input_error(&result, &vnode.to_string()),
            "read of vnode {vnode} (capacity {CAPACITY}) gave {}, expected a Serialization error naming it",
            describe(&result)
        );
    }

    let limit = store.max_payload_len();
    let oversize = Bytes::from(vec![7u8; limit + 1]);
    let result = handle.write_partial(1, 3, 0, oversize).await;
    ensure!(
        is_input_error(&result, &(limit + 1).to_string()),
        "a payload of {} bytes (limit {limit}) gave {}, expected a Serialization error naming its size",
        limit + 1,
        describe(&result)
    );
    if limit <= EXACT_LIMIT_PROBE {
        let exact = payload(3, limit);
        write(&handle, 2, 3, 0, &exact).await?;
        ensure!(
            read(&other, 2, 3).await?.as_ref() == Some(&exact),
            "a payload exactly at the limit did not round-trip"
        );
        write(&handle, 2, 3, 0, &before).await?;
    }

    let all: Vec<u32> = (0..CAPACITY).collect();
    let result = handle.epoch_complete(3, &[]).await;
    ensure!(
        is_input_error(&result, "empty"),
        "epoch_complete with no vnodes gave {}, expected a Serialization error",
        describe(&result)
    );
    let mut with_bad = all.clone();
    with_bad.push(CAPACITY);
    let result = handle.epoch_complete(3, &with_bad).await;
    ensure!(
        is_input_error(&result, &CAPACITY.to_string()),
        "epoch_complete listing vnode {CAPACITY} gave {}, expected a Serialization error",
        describe(&result)
    );

    // Nothing above left a trace: every partial is as written, and the epoch
    // is unsealed, so the other instance can seal it.
    for vnode in 0..CAPACITY {
        ensure!(
            read(&other, vnode, 3).await?.as_ref() == Some(&before),
            "refused input changed vnode {vnode}"
        );
    }
    let sealed = other.epoch_complete(3, &all).await;
    ensure!(
        matches!(sealed, Ok(true)),
        "a refused epoch_complete sealed the epoch: another instance then got {}",
        describe(&sealed)
    );
    extreme_queries(factory, CAPACITY).await
}

/// The recovery and gate calls at their edges: a typed answer, never a
/// panic or an overflow. `sealed_epochs(u64::MAX)` is empty; a vnode list
/// with duplicates, or longer than the capacity through repeats, is the set
/// it names; `prune_before(0)` removes nothing; `prune_before(u64::MAX)`
/// removes every epoch but `u64::MAX`.
async fn extreme_queries(factory: &dyn BackendFactory, capacity: u32) -> Checked {
    let store = fresh_store(factory).await?;
    let handle = open(&*store, &unique_tag("p12-edges"), capacity).await?;
    for epoch in [0, 5, u64::MAX] {
        write(&handle, 0, epoch, 0, &payload(epoch, 8)).await?;
        write(&handle, 1, epoch, 0, &payload(epoch ^ 1, 8)).await?;
    }
    let duplicates = handle.epoch_complete(5, &[1, 0, 1, 0]).await;
    ensure!(
        matches!(duplicates, Ok(true)),
        "epoch_complete(5, [1, 0, 1, 0]) with both partials present gave {}",
        describe(&duplicates)
    );
    let long: Vec<u32> = (0..capacity * 3).map(|i| i % 2).collect();
    let long_gate = handle.epoch_complete(5, &long).await;
    ensure!(
        matches!(long_gate, Ok(true)),
        "a gate list of {} entries naming vnodes 0 and 1 gave {}",
        long.len(),
        describe(&long_gate)
    );
    let sealed = handle.epoch_complete(u64::MAX, &[0, 1]).await;
    ensure!(
        matches!(sealed, Ok(true)),
        "sealing epoch u64::MAX gave {}",
        describe(&sealed)
    );
    let after_max = handle.sealed_epochs(u64::MAX).await;
    ensure!(
        matches!(&after_max, Ok(epochs) if epochs.is_empty()),
        "sealed_epochs(u64::MAX) gave {}",
        describe(&after_max)
    );
    handle
        .prune_before(0)
        .await
        .ctx(|| "prune_before(0)".into())?;
    ensure!(
        read(&handle, 0, 0).await?.is_some(),
        "prune_before(0) removed epoch 0"
    );
    handle
        .prune_before(u64::MAX)
        .await
        .ctx(|| "prune_before(u64::MAX)".into())?;
    for epoch in [0, 5] {
        ensure!(
            read(&handle, 1, epoch).await?.is_none(),
            "prune_before(u64::MAX) kept epoch {epoch}"
        );
    }
    ensure!(
        read(&handle, 1, u64::MAX).await?.as_ref() == Some(&payload(u64::MAX ^ 1, 8)),
        "prune_before(u64::MAX) removed epoch u64::MAX, which is not below it"
    );
    Ok(())
}

/// P12 (damage): a stored partial or commit marker overwritten with bytes
/// that fail the backend's framing is reported as `Serialization` (never
/// returned as data, never a panic), and other keys are unaffected.
pub async fn p12_corruption(factory: &dyn BackendFactory) -> Checked {
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p12-damage");
    let handle = open(&*store, &format!("{tag}-a"), 4).await?;
    let all: Vec<u32> = (0..4).collect();
    for epoch in [5, 6] {
        for vnode in 0..4 {
            write(&handle, vnode, epoch, 0, &payload(u64::from(vnode), 64)).await?;
        }
        ensure!(
            handle
                .epoch_complete(epoch, &all)
                .await
                .ctx(|| format!("epoch_complete({epoch})"))?,
            "epoch {epoch} did not seal"
        );
    }
    drop(handle);
    store
        .damage(Damage::Partial { vnode: 1, epoch: 5 })
        .await
        .ctx(|| "damage(partial 1 @ 5)".into())?;
    store
        .damage(Damage::Marker { epoch: 6 })
        .await
        .ctx(|| "damage(marker @ 6)".into())?;
    store.reopen().await.ctx(|| "reopen()".into())?;
    let handle = open(&*store, &format!("{tag}-b"), 4).await?;
    let damaged = handle.read_partial(1, 5).await;
    ensure!(
        matches!(damaged, Err(StateBackendError::Serialization(_))),
        "reading a damaged partial gave {}, expected a Serialization error",
        describe(&damaged)
    );
    ensure!(
        read(&handle, 2, 5).await?.as_ref() == Some(&payload(2, 64)),
        "damage to one partial affected its neighbour"
    );
    let gate = handle.epoch_complete(6, &all).await;
    ensure!(
        matches!(gate, Err(StateBackendError::Serialization(_))),
        "sealing an epoch whose marker is damaged gave {}, expected a Serialization error",
        describe(&gate)
    );
    Ok(())
}
