//! What is stored: round trip (P1), idempotent replay (P2), independence
//! against the model (P3), sharing as `Arc<dyn StateBackend>` (P13).

use std::sync::Arc;

use bytes::Bytes;
use laminar_state_api::StateBackend;
use proptest::prelude::*;

use crate::factory::BackendFactory;
use crate::model::{self, op_strategy};
use crate::runner::{Checked, ensure, for_all};
use crate::support::{Context, fresh_store, open, payload, read, unique_tag, write};

/// The largest payload P1 tries, whatever the backend's limit.
const ROUND_TRIP_MAX_LEN: usize = 256 << 10;

/// P1: `read_partial` returns exactly the last acknowledged bytes, through
/// the writing handle and another one; `None` for keys never written and for
/// pruned keys. Payloads from empty to large.
pub async fn p01_round_trip(factory: &dyn BackendFactory) -> Checked {
    let probe = fresh_store(factory).await?;
    let max_len = probe.max_payload_len().min(ROUND_TRIP_MAX_LEN);
    drop(probe);
    let len = prop_oneof![Just(0usize), 1usize..64, 64usize..4096, Just(max_len)];
    let epoch = prop_oneof![Just(0u64), Just(u64::MAX), 1u64..1_000_000];
    let strategy = (0u32..16, epoch, len, any::<u64>(), any::<u64>());
    for_all(
        factory,
        strategy,
        |(vnode, epoch, len, seed, seed2)| async move {
            let store = fresh_store(factory).await?;
            let tag = unique_tag("p01");
            let writer = open(&*store, &format!("{tag}-w"), 16).await?;
            let reader = open(&*store, &format!("{tag}-r"), 16).await?;

            ensure!(
                read(&reader, vnode, epoch).await?.is_none(),
                "a never-written key is not None"
            );
            let first = payload(seed, len);
            write(&writer, vnode, epoch, 1, &first).await?;
            for handle in [&writer, &reader] {
                let got = read(handle, vnode, epoch).await?;
                ensure!(
                    got.as_ref() == Some(&first),
                    "read back {:?} bytes, wrote {} bytes (or different content)",
                    got.map(|b| b.len()),
                    first.len()
                );
            }
            // Neighbouring keys stay empty.
            let neighbour_epoch = epoch.wrapping_add(1);
            ensure!(
                read(&reader, vnode, neighbour_epoch).await?.is_none(),
                "writing epoch {epoch} made epoch {neighbour_epoch} visible"
            );
            ensure!(
                read(&reader, (vnode + 1) % 16, epoch).await?.is_none(),
                "writing vnode {vnode} made another vnode visible"
            );

            // The last acknowledged write wins.
            let second = payload(seed2 ^ 1, len.min(1024));
            write(&writer, vnode, epoch, 1, &second).await?;
            ensure!(
                read(&reader, vnode, epoch).await?.as_ref() == Some(&second),
                "an overwrite did not replace the bytes"
            );

            // Pruned keys read as None.
            if epoch < u64::MAX {
                writer
                    .prune_before(epoch + 1)
                    .await
                    .ctx(|| format!("prune_before({})", epoch + 1))?;
                ensure!(
                    read(&reader, vnode, epoch).await?.is_none(),
                    "a pruned key still reads back"
                );
            }
            Ok(())
        },
    )
    .await
}

/// P2: repeating a write with the same bytes, any number of times, before or
/// after its epoch is sealed, succeeds and changes nothing (the bytes, and
/// who sealed the epoch).
pub async fn p02_idempotent_replay(factory: &dyn BackendFactory) -> Checked {
    let strategy = (any::<u64>(), 0usize..2048, 1usize..5, 1usize..4, 1u32..5);
    for_all(factory, strategy, |(seed, len, before_seal, after_seal, vnodes)| async move {
        let store = fresh_store(factory).await?;
        let tag = unique_tag("p02");
        let handle = open(&*store, &format!("{tag}-a"), vnodes).await?;
        let other = open(&*store, &format!("{tag}-b"), vnodes).await?;
        let all: Vec<u32> = (0..vnodes).collect();
        let bytes = payload(seed, len);
        for vnode in 0..vnodes {
            for _ in 0..before_seal {
                write(&handle, vnode, 7, 3, &bytes).await?;
            }
        }
        ensure!(
            handle.epoch_complete(7, &all).await.ctx(|| "epoch_complete(7)".into())?,
            "epoch_complete was false with every partial written"
        );
        for vnode in 0..vnodes {
            for _ in 0..after_seal {
                write(&other, vnode, 7, 3, &bytes).await?;
            }
            ensure!(read(&other, vnode, 7).await?.as_ref() == Some(&bytes), "replays changed vnode {vnode}'s bytes");
        }
        // The other instance asks first: if a replay had unsealed the epoch,
        // it would now win it.
        let loser = other.epoch_complete(7, &all).await;
        ensure!(
            matches!(&loser, Err(laminar_state_api::StateBackendError::SplitBrainCommit { committer, .. }) if *committer == format!("{tag}-a")),
            "after replays the seal no longer names its committer: {}", crate::support::describe(&loser)
        );
        ensure!(
            handle.epoch_complete(7, &all).await.ctx(|| "epoch_complete(7) again".into())?,
            "replaying writes after the seal unsealed the epoch"
        );
        Ok(())
    })
    .await
}

/// P3: random operation sequences from several handles (writes, reads,
/// raises, seals, prunes) return exactly what the reference model returns,
/// and afterwards every key holds what the model holds: a write changes its
/// own key and nothing else.
pub async fn p03_independence(factory: &dyn BackendFactory) -> Checked {
    let capabilities = factory.capabilities();
    let strategy = proptest::collection::vec(op_strategy(), 1..48);
    for_all(factory, strategy, |ops| async move {
        let store = fresh_store(factory).await?;
        model::run_sequence(&*store, capabilities, &ops, false).await
    })
    .await
}

/// P13: one `Arc<dyn StateBackend>` shared by many tasks at once: each
/// task's writes, reads and seals are its own, none lost or mixed.
pub async fn p13_shared_object(factory: &dyn BackendFactory) -> Checked {
    const TASKS: u32 = 32;
    const EPOCHS: u64 = 8;
    let store = fresh_store(factory).await?;
    let handle: Arc<dyn StateBackend> = open(&*store, &unique_tag("p13"), TASKS).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let handle = Arc::clone(&handle);
        tasks.spawn(async move {
            for epoch in 0..EPOCHS {
                let bytes = payload(u64::from(task) << 32 | epoch, 64 + task as usize);
                write(&handle, task, epoch, 0, &bytes).await?;
                tokio::task::yield_now().await;
                ensure!(
                    read(&handle, task, epoch).await?.as_ref() == Some(&bytes),
                    "task {task} read back other bytes at epoch {epoch}"
                );
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("a task panicked: {e}"))??;
    }
    let all: Vec<u32> = (0..TASKS).collect();
    let mut seals = tokio::task::JoinSet::new();
    for epoch in 0..EPOCHS {
        let handle = Arc::clone(&handle);
        let all = all.clone();
        seals.spawn(async move { (epoch, handle.epoch_complete(epoch, &all).await) });
    }
    while let Some(joined) = seals.join_next().await {
        let (epoch, sealed) = joined.map_err(|e| format!("a task panicked: {e}"))?;
        ensure!(
            matches!(sealed, Ok(true)),
            "sealing epoch {epoch} from a shared handle gave {}",
            crate::support::describe(&sealed)
        );
    }
    for task in 0..TASKS {
        for epoch in 0..EPOCHS {
            let expected: Bytes = payload(u64::from(task) << 32 | epoch, 64 + task as usize);
            ensure!(
                read(&handle, task, epoch).await?.as_ref() == Some(&expected),
                "vnode {task} epoch {epoch} lost or mixed after concurrent use"
            );
        }
    }
    Ok(())
}
