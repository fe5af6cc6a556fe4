//! Pruning (P11).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use laminar_state_api::StateBackendError;

use crate::factory::BackendFactory;
use crate::runner::{Checked, ensure, for_all, race_rounds, run_seed, splitmix64};
use crate::support::{Context, describe, fresh_store, open, payload, read, unique_tag, write};

/// P11: `prune_before(b)` removes every partial and commit marker with epoch
/// `< b` and keeps everything `>= b`; a second prune changes nothing; a
/// pruned epoch can be written and sealed afresh by another instance (its
/// marker is gone); and prunes racing writers of epochs `>= b` lose none of
/// their acknowledged writes.
pub async fn p11_pruning(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 3;
    let strategy = (
        proptest::collection::btree_set((0u64..12, 0u32..VNODES), 1..24),
        proptest::collection::btree_set(0u64..12, 0..6),
        0u64..14,
    );
    for_all(factory, strategy, |(keys, seal_attempts, before)| async move {
        let store = fresh_store(factory).await?;
        let tag = unique_tag("p11");
        let handle = open(&*store, &format!("{tag}-old"), VNODES).await?;
        let all: Vec<u32> = (0..VNODES).collect();
        let value = |epoch: u64, vnode: u32| payload(epoch << 8 | u64::from(vnode), 24);
        for &(epoch, vnode) in &keys {
            write(&handle, vnode, epoch, 0, &value(epoch, vnode)).await?;
        }
        let mut sealed = BTreeMap::new();
        for &epoch in &seal_attempts {
            let ok = handle.epoch_complete(epoch, &all).await.ctx(|| format!("epoch_complete({epoch})"))?;
            sealed.insert(epoch, ok);
        }
        for round in 0..2 {
            handle.prune_before(before).await.ctx(|| format!("prune_before({before}), round {round}"))?;
            for epoch in 0..12 {
                for vnode in 0..VNODES {
                    let held = read(&handle, vnode, epoch).await?;
                    let expected = (epoch >= before && keys.contains(&(epoch, vnode))).then(|| value(epoch, vnode));
                    ensure!(held == expected, "after prune_before({before}) #{round}, (vnode {vnode}, epoch {epoch}) is {}, expected {}", presence(held.is_some()), presence(expected.is_some()));
                }
            }
        }
        // Markers: a sealed epoch below `before` is free again; one at or
        // above it still names its committer.
        let newcomer = open(&*store, &format!("{tag}-new"), VNODES).await?;
        for (&epoch, _) in sealed.iter().filter(|(_, ok)| **ok) {
            if epoch < before {
                for vnode in 0..VNODES {
                    write(&newcomer, vnode, epoch, 0, &value(epoch, vnode)).await?;
                }
                let result = newcomer.epoch_complete(epoch, &all).await;
                ensure!(matches!(result, Ok(true)), "epoch {epoch} was sealed then pruned (before {before}), but resealing it gave {}: its marker survived", describe(&result));
            } else {
                let result = newcomer.epoch_complete(epoch, &all).await;
                ensure!(matches!(result, Err(StateBackendError::SplitBrainCommit { .. })), "the marker of epoch {epoch} (>= {before}) did not survive pruning: {}", describe(&result));
            }
        }
        Ok(())
    })
    .await?;
    pruned_marker_is_gone(factory).await?;
    prune_races_writes(factory).await
}

/// The fixed case behind the markers half of P11, checked every run (the
/// random draw above seals an epoch below its bound only some of the time):
/// A seals epoch 1, `prune_before(2)`, B writes epoch 1 again and seals it:
/// `Ok(true)`, since A's marker went with the prune.
async fn pruned_marker_is_gone(factory: &dyn BackendFactory) -> Checked {
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p11-marker");
    let a = open(&*store, &format!("{tag}-a"), 2).await?;
    let b = open(&*store, &format!("{tag}-b"), 2).await?;
    for vnode in 0..2 {
        write(&a, vnode, 1, 0, &payload(u64::from(vnode), 8)).await?;
    }
    let sealed = a.epoch_complete(1, &[0, 1]).await;
    ensure!(
        matches!(sealed, Ok(true)),
        "A sealing epoch 1 gave {}",
        describe(&sealed)
    );
    a.prune_before(2).await.ctx(|| "prune_before(2)".into())?;
    for vnode in 0..2 {
        write(&b, vnode, 1, 0, &payload(u64::from(vnode) + 10, 8)).await?;
    }
    let resealed = b.epoch_complete(1, &[0, 1]).await;
    ensure!(
        matches!(resealed, Ok(true)),
        "epoch 1 was sealed by A and pruned (prune_before(2)); B rewrote it and sealing gave {}: A's marker survived the prune",
        describe(&resealed)
    );
    Ok(())
}

fn presence(present: bool) -> &'static str {
    if present { "present" } else { "absent" }
}

/// Writers of epochs `>= b` race repeated `prune_before(b)` calls; afterwards
/// every acknowledged write is present.
async fn prune_races_writes(factory: &dyn BackendFactory) -> Checked {
    const WRITERS: u32 = 4;
    let store = fresh_store(factory).await?;
    let handle = open(&*store, &unique_tag("p11-race"), WRITERS).await?;
    let rounds = u64::from(race_rounds(factory));
    let mut acknowledged = Vec::new();
    for round in 0..rounds {
        let before = round * 4;
        let pruning = Arc::new(AtomicBool::new(true));
        let pruner = {
            let (handle, pruning) = (Arc::clone(&handle), Arc::clone(&pruning));
            tokio::spawn(async move {
                let mut prunes = 0u32;
                while pruning.load(Ordering::Acquire) || prunes == 0 {
                    handle
                        .prune_before(before)
                        .await
                        .map_err(|e| format!("prune_before({before}) failed: {e}"))?;
                    prunes += 1;
                    tokio::task::yield_now().await;
                }
                Ok::<u32, String>(prunes)
            })
        };
        let mut writers = tokio::task::JoinSet::new();
        for vnode in 0..WRITERS {
            let handle = Arc::clone(&handle);
            writers.spawn(async move {
                let mut done = Vec::new();
                for epoch in before..before + 4 {
                    let bytes = payload(epoch << 8 | u64::from(vnode), 40);
                    write(&handle, vnode, epoch, 0, &bytes).await?;
                    done.push((vnode, epoch, bytes));
                    tokio::task::yield_now().await;
                }
                Ok::<_, String>(done)
            });
        }
        while let Some(joined) = writers.join_next().await {
            acknowledged.extend(joined.map_err(|e| format!("writer panicked: {e}"))??);
        }
        pruning.store(false, Ordering::Release);
        pruner
            .await
            .map_err(|e| format!("pruner panicked: {e}"))??;
        // Only this round's epochs are safe from the next round's prune.
        for (vnode, epoch, bytes) in acknowledged.drain(..) {
            let held = read(&handle, vnode, epoch).await?;
            ensure!(
                held.as_ref() == Some(&bytes),
                "round {round}: write (vnode {vnode}, epoch {epoch}) acknowledged during prune_before({before}) was lost"
            );
        }
    }
    Ok(())
}

/// P11, seals racing prunes (capability `atomic_prune`): no sealed epoch
/// ever lacks its partials. Each round writes four epochs, seals them one
/// after the other while another handle prunes the first two, and in every
/// other round abandons the prune after a random while (its future is
/// dropped, as when its caller times out or its process dies). After the
/// race, every sealed epoch has all its partials; a prune of the same bound
/// then finishes the job (no sealed epoch below it is left), and a pruned
/// epoch can be written and sealed afresh.
pub async fn p11_prune_races_seals(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 4;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p11-seal-race");
    let sealer = open(&*store, &format!("{tag}-sealer"), VNODES).await?;
    let pruner = open(&*store, &format!("{tag}-pruner"), VNODES).await?;
    let all: Vec<u32> = (0..VNODES).collect();
    for round in 0..u64::from(race_rounds(factory)) {
        let first = 10 * round + 1;
        let bound = first + 2;
        for epoch in first..first + 4 {
            for vnode in 0..VNODES {
                write(
                    &sealer,
                    vnode,
                    epoch,
                    0,
                    &payload(epoch ^ u64::from(vnode), 16),
                )
                .await?;
            }
        }
        let seals = {
            let (sealer, all) = (Arc::clone(&sealer), all.clone());
            tokio::spawn(async move {
                for epoch in first..first + 4 {
                    sealer
                        .epoch_complete(epoch, &all)
                        .await
                        .ctx(|| format!("epoch_complete({epoch})"))?;
                }
                Ok::<(), String>(())
            })
        };
        let random = splitmix64(seed ^ round);
        tokio::time::sleep(std::time::Duration::from_micros(random % 1_500)).await;
        let prune = pruner.prune_before(bound);
        let abandoned_after =
            (round % 2 == 1).then(|| std::time::Duration::from_micros((random >> 16) % 2_000));
        match abandoned_after {
            Some(patience) => {
                if let Ok(result) = tokio::time::timeout(patience, prune).await {
                    result.ctx(|| format!("prune_before({bound})"))?;
                }
            }
            None => prune.await.ctx(|| format!("prune_before({bound})"))?,
        }
        seals
            .await
            .map_err(|e| format!("the sealer panicked: {e}"))??;
        let when = match abandoned_after {
            Some(patience) => format!(
                "round {round}, after a prune_before({bound}) abandoned after {patience:?} raced seals of epochs {first}..{}",
                first + 3
            ),
            None => format!(
                "round {round}, after prune_before({bound}) raced seals of epochs {first}..{}",
                first + 3
            ),
        };
        every_seal_has_its_partials(&pruner, first, VNODES, &when).await?;

        pruner
            .prune_before(bound)
            .await
            .ctx(|| format!("prune_before({bound}), again"))?;
        let when = format!("round {round}, after prune_before({bound}) ran again to the end");
        every_seal_has_its_partials(&pruner, first, VNODES, &when).await?;
        let sealed = pruner
            .sealed_epochs(first - 1)
            .await
            .ctx(|| "sealed_epochs".into())?;
        ensure!(
            sealed.iter().all(|&e| e >= bound),
            "{when}: epochs {sealed:?} are sealed, some below the bound"
        );
        // An abandoned prune may still be running (its work was handed to
        // a thread, or its requests are in flight), and may delete the
        // rewrite: try again for a bounded while.
        let mut resealed = Ok(false);
        for _ in 0..40 {
            for vnode in 0..VNODES {
                write(&pruner, vnode, first, 0, &payload(first, 16)).await?;
            }
            resealed = pruner.epoch_complete(first, &all).await;
            if !matches!(resealed, Ok(false)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        ensure!(
            matches!(resealed, Ok(true)),
            "{when}: epoch {first} was rewritten, and sealing it gave {} (for 2 s)",
            describe(&resealed)
        );
    }
    Ok(())
}

/// Every epoch sealed from `first` on has a partial for each of `vnodes`,
/// while no seal runs. The marker and the partials are read one after the
/// other, and an abandoned prune may still be deleting between the reads:
/// a missing partial counts only if the epoch is still sealed afterwards
/// (a correct prune deletes the marker before the partials, and no seal can
/// bring it back).
async fn every_seal_has_its_partials(
    handle: &Arc<dyn laminar_state_api::StateBackend>,
    first: u64,
    vnodes: u32,
    when: &str,
) -> Checked {
    let sealed_now = || async {
        handle
            .sealed_epochs(first - 1)
            .await
            .ctx(|| "sealed_epochs".into())
    };
    for epoch in sealed_now().await? {
        for vnode in 0..vnodes {
            if read(handle, vnode, epoch).await?.is_none() {
                ensure!(
                    !sealed_now().await?.contains(&epoch),
                    "{when}: epoch {epoch} is sealed but its partial for vnode {vnode} is gone"
                );
            }
        }
    }
    Ok(())
}
