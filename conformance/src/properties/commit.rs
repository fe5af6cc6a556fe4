//! The commit gate (P8) and the single committer per epoch (P9).

use std::sync::Arc;

use laminar_state_api::{StateBackend, StateBackendError};
use proptest::prelude::*;
use tokio::sync::Barrier;

use crate::factory::BackendFactory;
use crate::runner::{Checked, ensure, for_all, race_rounds, run_seed, splitmix64};
use crate::support::{describe, fresh_store, open, payload, unique_tag, write};

/// P8: `epoch_complete` returns `false`, and seals nothing, while any listed
/// vnode lacks a partial for that epoch (a partial for another epoch does not
/// count); once all are present it returns `true`, and the seal is the first
/// caller's.
pub async fn p08_commit_gate(factory: &dyn BackendFactory) -> Checked {
    let strategy = (1u32..10, any::<u64>(), 0u64..1_000);
    for_all(factory, strategy, |(vnodes, present_mask, epoch)| async move {
        let store = fresh_store(factory).await?;
        let tag = unique_tag("p08");
        // One vnode more than the epoch uses: `vnodes` never gets a partial.
        let early = open(&*store, &format!("{tag}-early"), vnodes + 1).await?;
        let late = open(&*store, &format!("{tag}-late"), vnodes + 1).await?;
        let all: Vec<u32> = (0..vnodes).collect();
        let incomplete: Vec<u32> = (0..=vnodes).collect();
        let present: Vec<u32> = all.iter().copied().filter(|v| present_mask >> v & 1 == 1).collect();
        let missing: Vec<u32> = all.iter().copied().filter(|v| present_mask >> v & 1 == 0).collect();
        for &vnode in &present {
            write(&early, vnode, epoch, 0, &payload(u64::from(vnode), 8)).await?;
        }
        // The missing vnodes do have partials, for the neighbouring epochs.
        for &vnode in &missing {
            write(&early, vnode, epoch + 1, 0, &payload(u64::from(vnode), 8)).await?;
            if epoch > 0 {
                write(&early, vnode, epoch - 1, 0, &payload(u64::from(vnode), 8)).await?;
            }
        }
        let gate = early.epoch_complete(epoch, &all).await;
        if missing.is_empty() {
            ensure!(matches!(gate, Ok(true)), "all {vnodes} partials present but epoch_complete gave {}", describe(&gate));
            return sealed_but_incomplete(&[&early, &late], epoch, &incomplete).await;
        }
        ensure!(matches!(gate, Ok(false)), "vnodes {missing:?} lack a partial for epoch {epoch} but epoch_complete gave {}", describe(&gate));
        // Asking only for the present ones is a complete gate of its own, so
        // only check the full list again after the missing ones land.
        let again = early.epoch_complete(epoch, &all).await;
        ensure!(matches!(again, Ok(false)), "asking again without new writes gave {}", describe(&again));
        for &vnode in &missing {
            write(&late, vnode, epoch, 0, &payload(u64::from(vnode), 8)).await?;
        }
        // If the refused gate had sealed anything, the late handle would now
        // lose to the early one.
        let sealed = late.epoch_complete(epoch, &all).await;
        ensure!(matches!(sealed, Ok(true)), "after the missing partials landed, a second instance got {}: the refused gate left a seal behind", describe(&sealed));
        let loser = early.epoch_complete(epoch, &all).await;
        ensure!(
            matches!(&loser, Err(StateBackendError::SplitBrainCommit { committer, self_id }) if *committer == format!("{tag}-late") && *self_id == format!("{tag}-early")),
            "the instance that did not seal got {}", describe(&loser)
        );
        sealed_but_incomplete(&[&early, &late], epoch, &incomplete).await
    })
    .await
}

/// P9: N handles with distinct instance ids race `epoch_complete` on one
/// epoch, released together by a barrier, for many rounds: exactly one gets
/// `Ok(true)`, every other gets `SplitBrainCommit { committer: <winner>,
/// self_id: <its own id> }`, and every repeat, sequential or racing, gives
/// each handle the same answer.
pub async fn p09_one_committer(factory: &dyn BackendFactory) -> Checked {
    const RACERS: usize = 8;
    const VNODES: u32 = 4;
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p09");
    let mut racers: Vec<(String, Arc<dyn StateBackend>)> = Vec::with_capacity(RACERS);
    for i in 0..RACERS {
        let id = format!("{tag}-leader-{i}");
        let handle = open(&*store, &id, VNODES).await?;
        racers.push((id, handle));
    }
    let all: Vec<u32> = (0..VNODES).collect();
    for round in 0..u64::from(race_rounds(factory)) {
        let epoch = 1_000 + round;
        for vnode in 0..VNODES {
            write(
                &racers[round as usize % RACERS].1,
                vnode,
                epoch,
                0,
                &payload(epoch, 16),
            )
            .await?;
        }
        let mut sealed_by: Option<String> = None;
        for attempt in 0..2 {
            let barrier = Arc::new(Barrier::new(RACERS));
            let mut tasks = tokio::task::JoinSet::new();
            for (id, handle) in &racers {
                let (id, handle, barrier, all) = (
                    id.clone(),
                    Arc::clone(handle),
                    Arc::clone(&barrier),
                    all.clone(),
                );
                tasks.spawn(async move {
                    barrier.wait().await;
                    (id, handle.epoch_complete(epoch, &all).await)
                });
            }
            let mut results = Vec::with_capacity(RACERS);
            while let Some(joined) = tasks.join_next().await {
                results.push(joined.map_err(|e| format!("a racer panicked: {e}"))?);
            }
            // And one sequential repeat per racer.
            for (id, handle) in &racers {
                results.push((id.clone(), handle.epoch_complete(epoch, &all).await));
            }
            let winners: Vec<&String> = results
                .iter()
                .filter(|(_, r)| matches!(r, Ok(true)))
                .map(|(id, _)| id)
                .collect();
            let winner = winners.first().copied().cloned();
            let Some(winner) = winner else {
                return Err(format!(
                    "round {round}, attempt {attempt}: nobody sealed epoch {epoch}: {}",
                    summarize(&results)
                ));
            };
            ensure!(
                winners.iter().all(|w| **w == winner),
                "round {round}, attempt {attempt}: two instances sealed epoch {epoch}: {}",
                summarize(&results)
            );
            let first = sealed_by.get_or_insert_with(|| winner.clone());
            ensure!(
                *first == winner,
                "round {round}: epoch {epoch} was sealed by {first}, a repeat was won by {winner}"
            );
            for (id, result) in &results {
                if *id == winner {
                    continue;
                }
                ensure!(
                    matches!(result, Err(StateBackendError::SplitBrainCommit { committer, self_id }) if *committer == winner && self_id == id),
                    "round {round}, attempt {attempt}: loser {id} got {}, expected SplitBrainCommit naming {winner}",
                    describe(result)
                );
            }
        }
    }
    Ok(())
}

/// A sealed epoch asked about with a list that names a vnode without a
/// partial: `Ok(false)` for the sealer and for anyone else. The gate is
/// true *iff* every listed vnode has a partial, and it looks at the
/// partials before the existing seal.
async fn sealed_but_incomplete(
    handles: &[&Arc<dyn StateBackend>],
    epoch: u64,
    incomplete: &[u32],
) -> Checked {
    for handle in handles {
        let gate = handle.epoch_complete(epoch, incomplete).await;
        ensure!(
            matches!(gate, Ok(false)),
            "epoch {epoch} is sealed, but asked with vnode {} that has no partial, epoch_complete gave {}, expected Ok(false)",
            incomplete.len() - 1,
            describe(&gate)
        );
    }
    Ok(())
}

/// P15: a handle told an assignment version below the store's fence (a
/// deposed leader) cannot seal: `epoch_complete` fails with `StaleVersion {
/// caller: its version, authoritative: the fence }` and seals nothing, so the
/// new leader seals the epoch itself. A handle never told any version (fencing
/// opted out) is not refused. Then, for backends that also claim
/// `recovery_queries`, a deposed leader's seal races the raise that deposes
/// it, over many rounds: if the epoch was not sealed right after the raise was
/// acknowledged, the deposed seal must not come back as won.
pub async fn p15_fenced_seal(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 4;
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p15");
    let (old_id, new_id) = (format!("{tag}-old"), format!("{tag}-new"));
    let old = open(&*store, &old_id, VNODES).await?;
    let new = open(&*store, &new_id, VNODES).await?;
    let bystander = open(&*store, &format!("{tag}-bystander"), VNODES).await?;
    let all: Vec<u32> = (0..VNODES).collect();
    old.set_authoritative_version(3);
    for vnode in 0..VNODES {
        write(&old, vnode, 1, 3, &payload(u64::from(vnode), 16)).await?;
    }
    // The rotation: the new leader raises the fence and writes.
    new.set_authoritative_version(5);
    write(&new, 0, 2, 5, &payload(9, 16)).await?;

    let refused = old.epoch_complete(1, &all).await;
    ensure!(
        matches!(
            refused,
            Err(StateBackendError::StaleVersion {
                caller: 3,
                authoritative: 5
            })
        ),
        "the deposed leader (told 3, fence 5) sealing got {}, expected StaleVersion {{ caller: 3, authoritative: 5 }}",
        describe(&refused)
    );
    let sealed = new.epoch_complete(1, &all).await;
    ensure!(
        matches!(sealed, Ok(true)),
        "after the refused seal, the new leader got {}: the refusal sealed something",
        describe(&sealed)
    );
    let other = bystander.epoch_complete(1, &all).await;
    ensure!(
        matches!(&other, Err(StateBackendError::SplitBrainCommit { committer, .. }) if *committer == new_id),
        "a handle never told a version got {}, expected SplitBrainCommit naming {new_id}",
        describe(&other)
    );
    let again = old.epoch_complete(1, &all).await;
    ensure!(
        matches!(
            again,
            Err(StateBackendError::StaleVersion { .. })
                | Err(StateBackendError::SplitBrainCommit { .. })
        ),
        "the deposed leader asking again got {}",
        describe(&again)
    );
    if factory.capabilities().recovery_queries {
        seal_racing_raise(factory).await?;
    }
    Ok(())
}

/// A deposed leader's seal races the raise that deposes it. The seal may
/// win only if it took effect before the raise was acknowledged: the new
/// leader lists the sealed epochs right after its raise returns, and if the
/// epoch was not sealed then, the deposed leader's seal must not come back
/// as won (it took effect after the raise: a fence check and a marker write
/// that are two steps let a raise in between). Either way there is exactly
/// one winner, and the new leader learns who.
///
/// In odd rounds the last partial is missing until the new leader writes it,
/// right after its raise returned: a seal that checks the fence, then the
/// partials, can find it there and win, though at no moment was it both
/// undeposed and complete. Such a seal may only find the partial missing
/// (`Ok(false)`) or be refused, never win.
async fn seal_racing_raise(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 4;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p15-race");
    let all: Vec<u32> = (0..VNODES).collect();
    for round in 0..u64::from(race_rounds(factory)) {
        let (old_version, new_version, epoch) = (2 * round + 1, 2 * round + 2, round + 1);
        let deposed_id = format!("{tag}-old-{round}");
        let deposed = open(&*store, &deposed_id, VNODES).await?;
        deposed.set_authoritative_version(old_version);
        let late = round % 2 == 1;
        let written_first = if late { VNODES - 1 } else { VNODES };
        for vnode in 0..written_first {
            write(
                &deposed,
                vnode,
                epoch,
                old_version,
                &payload(epoch ^ u64::from(vnode), 16),
            )
            .await?;
        }
        let leader = open(&*store, &format!("{tag}-new-{round}"), VNODES).await?;
        let sealer = {
            let (deposed, all) = (Arc::clone(&deposed), all.clone());
            tokio::spawn(async move { deposed.epoch_complete(epoch, &all).await })
        };
        let delay = splitmix64(seed ^ round) % 1_500;
        tokio::time::sleep(std::time::Duration::from_micros(delay)).await;
        leader
            .persist_authoritative_version(new_version)
            .await
            .map_err(|e| format!("round {round}: the raise to {new_version} failed: {e:?}"))?;
        // With the last partial written only now, no seal can have been
        // both undeposed and complete: none may come back won. (Written
        // before any listing, which may wait for a seal in progress.)
        let sealed_then = if late {
            let vnode = VNODES - 1;
            let bytes = payload(epoch ^ u64::from(vnode), 16);
            write(&leader, vnode, epoch, new_version, &bytes).await?;
            false
        } else {
            leader
                .sealed_epochs(epoch - 1)
                .await
                .map_err(|e| format!("round {round}: sealed_epochs failed: {e:?}"))?
                .contains(&epoch)
        };
        let outcome = sealer
            .await
            .map_err(|e| format!("the sealer panicked: {e}"))?;
        DeposedSeal {
            round,
            epoch,
            old: old_version,
            new: new_version,
            deposed_id: &deposed_id,
            how: if late {
                "racing the raise, its last partial written by the new leader after the raise"
            } else {
                "racing the raise"
            },
            may_be_incomplete: late,
        }
        .judge(&leader, &all, sealed_then, outcome)
        .await?;
    }
    Ok(())
}

fn summarize(results: &[(String, Result<bool, StateBackendError>)]) -> String {
    results
        .iter()
        .map(|(id, r)| format!("{id}: {}", describe(r)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A deposed leader's seal of `epoch` (told `old`) that met the raise to
/// `new` in flight, `how`: the verdict both P15's race and P7's stalled seal
/// give.
pub(crate) struct DeposedSeal<'a> {
    pub(crate) round: u64,
    pub(crate) epoch: u64,
    pub(crate) old: u64,
    pub(crate) new: u64,
    pub(crate) deposed_id: &'a str,
    pub(crate) how: &'a str,
    /// A partial was missing when the seal began: `Ok(false)` is an answer
    /// too.
    pub(crate) may_be_incomplete: bool,
}

impl DeposedSeal<'_> {
    /// The seal may come back won only if the epoch was sealed right after
    /// the raise was acknowledged (`sealed_then`: it took effect before the
    /// raise), else it is refused with `StaleVersion` naming the new fence;
    /// either way the new leader's own seal finds exactly one winner.
    pub(crate) async fn judge(
        &self,
        leader: &Arc<dyn StateBackend>,
        all: &[u32],
        sealed_then: bool,
        outcome: Result<bool, StateBackendError>,
    ) -> Checked {
        let Self {
            round,
            epoch,
            old,
            new,
            deposed_id,
            how,
            may_be_incomplete,
        } = *self;
        match &outcome {
            Ok(false) if may_be_incomplete => {}
            Ok(true) => ensure!(
                sealed_then,
                "round {round}: the deposed leader's seal (told {old}), {how} to {new}, came back won, but right after the raise was acknowledged epoch {epoch} was not sealed: the seal took effect after the raise (a fence check and a marker write that are two steps let a raise in between)"
            ),
            Err(StateBackendError::StaleVersion {
                caller,
                authoritative,
            }) if *caller == old && *authoritative >= new => {}
            _ => {
                return Err(format!(
                    "round {round}: the deposed leader's seal {how} to {new} gave {}, expected Ok(true){} or StaleVersion {{ caller: {old}, authoritative: >= {new} }}",
                    describe(&outcome),
                    if may_be_incomplete { ", Ok(false)" } else { "" }
                ));
            }
        }
        let mine = leader.epoch_complete(epoch, all).await;
        let one_winner = match outcome {
            Ok(true) => {
                matches!(&mine, Err(StateBackendError::SplitBrainCommit { committer, .. }) if *committer == deposed_id)
            }
            _ => matches!(mine, Ok(true)),
        };
        ensure!(
            one_winner,
            "round {round}: after the deposed leader's seal {how}, the new leader's seal of epoch {epoch} gave {}",
            describe(&mine)
        );
        Ok(())
    }
}
