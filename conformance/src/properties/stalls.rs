//! Calls stalled in flight (see [`Stalls`]): a zombie's write or seal sent
//! before a raise that reaches the store after it (P7), a write read by
//! others, then pruned and fenced out while held (P7), a raise held
//! part-way while another handle raises higher (P7), and a seal held
//! part-way while another instance seals the same epoch (P9).
//!
//! Each round holds one call at one [`StallPoint`], the rounds cycling
//! through all of them, and ends the stall only once the racing call has
//! been acknowledged: a backend that looks at the store (the fence, the
//! marker) in one step and writes in a later one is caught at
//! [`StallPoint::Inside`] every run, not when a race happens to hit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::factory::BackendFactory;
use crate::faults::{StallPlan, StallPoint, Stalls};
use crate::properties::commit::DeposedSeal;
use crate::runner::{Checked, ensure, race_rounds, run_seed};
use crate::support::{describe, fresh_store, open, payload, read, unique_tag, write};

/// The longest a stall lasts if the property does not end it: a backend
/// that holds an in-process lock across an await blocks the racing call
/// until then (the property still holds, it is only slower).
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// How long a round waits for its stalled call to reach its stall.
const STALL_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The stall point of `round`: the rounds cycle through every point.
fn point_of(round: u64) -> StallPoint {
    StallPoint::ALL[(round % StallPoint::ALL.len() as u64) as usize]
}

/// Wrap `inner` so that the calls `plan` names stall at `point` until
/// released (or [`STALL_LIMIT`]).
fn stalled(
    inner: Arc<dyn StateBackend>,
    seed: u64,
    plan: StallPlan,
    point: StallPoint,
) -> Arc<Stalls> {
    Arc::new(Stalls::new(
        inner,
        seed,
        plan.at(point).lasting(STALL_LIMIT, STALL_LIMIT),
    ))
}

/// Wait until `wrapper`'s first stall has begun.
async fn stall_begun(wrapper: &Stalls, round: u64, what: &str) -> Checked {
    tokio::time::timeout(STALL_START_TIMEOUT, wrapper.until_stalled(1))
        .await
        .map_err(|_| {
            format!("round {round}: {what} never reached its stall in {STALL_START_TIMEOUT:?}")
        })
}

/// The result of a spawned stalled call.
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Result<T, String> {
    task.await
        .map_err(|e| format!("a stalled call panicked: {e}"))
}

/// P7, stalled zombie: a zombie's write at `v - 1`, sent before the fence
/// rises to `v`, is held (before the store, part-way, or before its
/// answer) until the raise is acknowledged and the new leader has written
/// the key; then it resumes. It must be refused, or have landed before the
/// raise: never after it, so the key keeps the new leader's bytes. A write
/// held before it reached the store must be refused. A backend that checks
/// the fence in one step and writes in a later one fails. With
/// `fenced_seal` and `recovery_queries`, the same for a deposed leader's
/// seal: if the epoch was not sealed right after the raise was
/// acknowledged, the held seal must not come back as won.
pub async fn p07_stalled_zombie(factory: &dyn BackendFactory) -> Checked {
    let capabilities = factory.capabilities();
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p07-stall");
    for round in 0..u64::from(race_rounds(factory)) {
        let point = point_of(round);
        let (old, new, epoch) = (2 * round + 1, 2 * round + 2, round);
        let leader = open(&*store, &format!("{tag}-leader-{round}"), 2).await?;
        // Without a shared fence, a zombie is the old leader's own handle.
        let zombie_inner = if capabilities.shared_fence {
            open(&*store, &format!("{tag}-zombie-{round}"), 2).await?
        } else {
            Arc::clone(&leader)
        };
        leader.set_authoritative_version(old);
        zombie_inner.set_authoritative_version(old);
        write(&leader, 0, epoch, old, &Bytes::from_static(b"start")).await?;

        let zombie = stalled(zombie_inner, seed ^ round, StallPlan::NONE.writes(), point);
        let task = {
            let zombie = Arc::clone(&zombie);
            tokio::spawn(async move {
                zombie
                    .write_partial(1, epoch, old, Bytes::from_static(b"ZOMBIE"))
                    .await
            })
        };
        stall_begun(&zombie, round, "the zombie's write").await?;

        leader.set_authoritative_version(new);
        let leader_bytes = |key: u32| Bytes::from(format!("leader round {round} key {key}"));
        write(&leader, 0, epoch, new, &leader_bytes(0)).await?;
        // The raise is acknowledged; was the zombie still held?
        let held_past_raise = zombie.stalling() > 0;
        write(&leader, 1, epoch, new, &leader_bytes(1)).await?;
        zombie.release();
        let result = joined(task).await?;
        match &result {
            Ok(()) => ensure!(
                !(held_past_raise && point == StallPoint::BeforeCall),
                "round {round}: a zombie write at {old}, held before it reached the store until the raise to {new} was acknowledged, was acknowledged"
            ),
            Err(StateBackendError::StaleVersion {
                caller,
                authoritative,
            }) if *caller == old && *authoritative >= new => {}
            Err(_) => {
                return Err(format!(
                    "round {round}: a zombie write at {old} held {point:?} across the raise to {new} gave {}, expected Ok or StaleVersion {{ caller: {old}, authoritative: >= {new} }}",
                    describe(&result)
                ));
            }
        }
        for key in 0..2 {
            let held = read(&leader, key, epoch).await?;
            ensure!(
                held.as_ref() == Some(&leader_bytes(key)),
                "round {round}: a zombie write at {old} was held {point:?} until the raise to {new} was acknowledged and the new leader had written; afterwards key {key} holds {:?}, not the new leader's bytes: the write landed after the raise (its fence check and its write are two steps)",
                held.map(|b| String::from_utf8_lossy(&b).into_owned())
            );
        }
    }
    if capabilities.fenced_seal && capabilities.recovery_queries {
        stalled_deposed_seal(factory).await?;
    }
    Ok(())
}

/// How long a round of [`p07_seen_write_never_refused`] waits for the held
/// write's bytes to become readable.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest [`p07_seen_write_never_refused`] holds its write if the
/// round does not release it first.
const SEEN_HOLD_LIMIT: Duration = Duration::from_secs(5);

/// P7, the other half: a write whose bytes another handle read is never
/// refused. A write at `v` is held part-way (its request may be at the
/// store already) until another handle has read its bytes, pruned its
/// epoch and raised the fence past `v`; then it resumes. Had it answered
/// `StaleVersion` ("nothing was written"), the store would have shown a
/// refused write. `Ok` (it took effect, then was pruned) or an `Io` error
/// (its outcome unknown) are both true. A backend that decides a write's
/// fate from what it finds after the prune (a snapshot of visible objects
/// listed after the epoch was deleted, say) fails. Rounds in which the
/// bytes never became readable while the write was held check nothing
/// more than P7 does.
pub async fn p07_seen_write_never_refused(factory: &dyn BackendFactory) -> Checked {
    let capabilities = factory.capabilities();
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p07-seen");
    for round in 0..u64::from(race_rounds(factory).min(8)) {
        let point = StallPoint::Inside(1 + (round % 2) as u32);
        let (old, new, epoch) = (2 * round + 1, 2 * round + 2, round + 1);
        let writer_inner = open(&*store, &format!("{tag}-writer-{round}"), 2).await?;
        // Without a shared fence, the other handle is the writer's own.
        let other = if capabilities.shared_fence {
            open(&*store, &format!("{tag}-other-{round}"), 2).await?
        } else {
            Arc::clone(&writer_inner)
        };
        writer_inner
            .persist_authoritative_version(old)
            .await
            .map_err(|e| format!("round {round}: the raise to {old} failed: {e:?}"))?;
        // Held longer than the other properties' stalls: the read, the
        // prune and the raise all happen inside it.
        let writer = Arc::new(Stalls::new(
            writer_inner,
            seed ^ round,
            StallPlan::NONE
                .writes()
                .at(point)
                .lasting(SEEN_HOLD_LIMIT, SEEN_HOLD_LIMIT),
        ));
        let bytes = Bytes::from(format!("{tag} round {round}"));
        let task = {
            let (writer, bytes) = (Arc::clone(&writer), bytes.clone());
            tokio::spawn(async move { writer.write_partial(0, epoch, old, bytes).await })
        };
        stall_begun(&writer, round, "the write").await?;
        let deadline = tokio::time::Instant::now() + VISIBLE_TIMEOUT;
        let seen = loop {
            if read(&other, 0, epoch).await?.as_ref() == Some(&bytes) {
                break true;
            }
            if tokio::time::Instant::now() >= deadline || writer.stalling() == 0 {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        other
            .prune_before(epoch + 1)
            .await
            .map_err(|e| format!("round {round}: prune_before({}) failed: {e:?}", epoch + 1))?;
        other
            .persist_authoritative_version(new)
            .await
            .map_err(|e| format!("round {round}: the raise to {new} failed: {e:?}"))?;
        let held_throughout = writer.stalling() > 0;
        writer.release();
        let result = joined(task).await?;
        if seen && held_throughout {
            ensure!(
                matches!(result, Ok(()) | Err(StateBackendError::Io(_))),
                "round {round}: a write at {old}, held {point:?}, was read by another handle, then its epoch {epoch} was pruned and the fence raised to {new}; released, the write gave {}, but a write whose bytes were read took effect (expected Ok, or an Io error if its outcome is unknown)",
                describe(&result)
            );
        }
    }
    Ok(())
}

/// The seal half of [`p07_stalled_zombie`].
async fn stalled_deposed_seal(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 2;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p07-stall-seal");
    let all: Vec<u32> = (0..VNODES).collect();
    for round in 0..u64::from(race_rounds(factory)) {
        let point = point_of(round);
        let (old, new, epoch) = (2 * round + 1, 2 * round + 2, round + 1);
        let deposed_id = format!("{tag}-old-{round}");
        let deposed_inner = open(&*store, &deposed_id, VNODES).await?;
        deposed_inner.set_authoritative_version(old);
        for vnode in 0..VNODES {
            write(
                &deposed_inner,
                vnode,
                epoch,
                old,
                &payload(epoch ^ u64::from(vnode), 8),
            )
            .await?;
        }
        let leader = open(&*store, &format!("{tag}-new-{round}"), VNODES).await?;
        let deposed = stalled(deposed_inner, seed ^ round, StallPlan::NONE.seals(), point);
        let task = {
            let (deposed, all) = (Arc::clone(&deposed), all.clone());
            tokio::spawn(async move { deposed.epoch_complete(epoch, &all).await })
        };
        stall_begun(&deposed, round, "the deposed leader's seal").await?;
        leader
            .persist_authoritative_version(new)
            .await
            .map_err(|e| format!("round {round}: the raise to {new} failed: {e:?}"))?;
        let sealed_then = leader
            .sealed_epochs(epoch - 1)
            .await
            .map_err(|e| format!("round {round}: sealed_epochs failed: {e:?}"))?
            .contains(&epoch);
        deposed.release();
        let outcome = joined(task).await?;
        DeposedSeal {
            round,
            epoch,
            old,
            new,
            deposed_id: &deposed_id,
            how: &format!("held {point:?} across the raise"),
            may_be_incomplete: false,
        }
        .judge(&leader, &all, sealed_then, outcome)
        .await?;
    }
    Ok(())
}

/// How the raise held in [`p07_stalled_raise`] is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RaiseBy {
    Persist,
    Write,
    Seal,
}

/// P7, stalled raise: handle A's raise to `v1` is held (before the store,
/// part-way, or before its answer) while handle B raises to `v2 > v1` and
/// is acknowledged; then A's call resumes. The raise is made three ways,
/// by turns: `persist_authoritative_version`, or `set_authoritative_version`
/// carried by A's next write or by its next seal. Afterwards the fence is
/// still at least `v2`: a never-told handle and one opened later are
/// refused at `v2 - 1`; A's held write at `v1`, if refused, is not visible,
/// and if held before it reached the store, is refused. A backend that
/// reads the fence in one step and writes `max(read, v1)` in a later one
/// lowers the fence, and fails.
pub async fn p07_stalled_raise(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 2;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p07-stall-raise");
    let all: Vec<u32> = (0..VNODES).collect();
    for round in 0..u64::from(race_rounds(factory)) {
        let point = point_of(round);
        let way = [RaiseBy::Persist, RaiseBy::Write, RaiseBy::Seal]
            [(round / StallPoint::ALL.len() as u64 % 3) as usize];
        let (v0, v1, v2, epoch) = (3 * round + 1, 3 * round + 2, 3 * round + 3, round + 1);
        // A handle on the store from before the rotation, never told.
        let zombie = open(&*store, &format!("{tag}-zombie-{round}"), VNODES).await?;
        write(&zombie, 0, epoch, v0, &payload(epoch, 8)).await?;
        if way == RaiseBy::Seal {
            write(&zombie, 1, epoch, v0, &payload(epoch ^ 1, 8)).await?;
        }
        let a_inner = open(&*store, &format!("{tag}-a-{round}"), VNODES).await?;
        let a = stalled(a_inner, seed ^ round, StallPlan::NONE.raises(), point);
        let task = {
            let (a, all) = (Arc::clone(&a), all.clone());
            tokio::spawn(async move {
                match way {
                    RaiseBy::Persist => a.persist_authoritative_version(v1).await.map(|()| None),
                    RaiseBy::Write => {
                        a.set_authoritative_version(v1);
                        a.write_partial(1, epoch, v1, Bytes::from_static(b"A"))
                            .await
                            .map(|()| None)
                    }
                    RaiseBy::Seal => {
                        a.set_authoritative_version(v1);
                        a.epoch_complete(epoch, &all).await.map(Some)
                    }
                }
            })
        };
        stall_begun(&a, round, &format!("A's raise to {v1} ({way:?})")).await?;
        let b = open(&*store, &format!("{tag}-b-{round}"), VNODES).await?;
        b.persist_authoritative_version(v2)
            .await
            .map_err(|e| format!("round {round}: B's raise to {v2} failed: {e:?}"))?;
        let held_past_raise = a.stalling() > 0;
        a.release();
        let result = joined(task).await?;
        let context = format!(
            "round {round}: A's raise to {v1} by {way:?}, held {point:?} while B raised to {v2} and was acknowledged"
        );
        let refused = matches!(&result, Err(StateBackendError::StaleVersion { caller, authoritative }) if *caller == v1 && *authoritative >= v2);
        match (way, &result) {
            (RaiseBy::Persist, Ok(_)) | (RaiseBy::Seal, Ok(Some(true))) => {}
            (RaiseBy::Write, Ok(_)) => ensure!(
                !(held_past_raise && point == StallPoint::BeforeCall),
                "{context}: A's write at {v1} reached the store after B's raise to {v2} was acknowledged, and was acknowledged"
            ),
            (RaiseBy::Write | RaiseBy::Seal, Err(_)) if refused => {}
            _ => {
                return Err(format!(
                    "{context}: A's call gave {}, expected Ok{}",
                    describe(&result),
                    if way == RaiseBy::Persist {
                        String::new()
                    } else {
                        format!(" or StaleVersion {{ caller: {v1}, authoritative: >= {v2} }}")
                    }
                ));
            }
        }
        if way == RaiseBy::Write && refused {
            ensure!(
                read(&b, 1, epoch).await?.as_deref() != Some(b"A".as_slice()),
                "{context}: A's write was refused, yet its bytes are stored"
            );
        }
        let late = open(&*store, &format!("{tag}-late-{round}"), VNODES).await?;
        for (who, handle) in [
            ("a handle never told", &zombie),
            ("a handle opened later", &late),
        ] {
            let result = handle
                .write_partial(0, epoch, v2 - 1, Bytes::from_static(b"ZOMBIE"))
                .await;
            ensure!(
                matches!(&result, Err(StateBackendError::StaleVersion { caller, authoritative }) if *caller == v2 - 1 && *authoritative >= v2),
                "{context}: afterwards, {who} writing at {} got {}: the fence went back below {v2} (a raise that reads the fence and writes it in two steps lowers it)",
                v2 - 1,
                describe(&result)
            );
        }
        write(&b, 0, epoch, v2, &payload(epoch ^ 2, 8)).await?;
    }
    Ok(())
}

/// P9, stalled seal: instance A's seal of an epoch is held (before the
/// store, part-way, or before its answer) while instance B seals the same
/// epoch and is answered; then A's call resumes. Exactly one of them wins,
/// the other gets `SplitBrainCommit` naming the winner and itself, and
/// every repeat (A, B, and a third instance) agrees. A seal held before it
/// reached the store loses to B. A backend that looks for the marker in one
/// step and creates it in a later one (or whose store ignores
/// create-if-absent) seals twice, and fails.
pub async fn p09_stalled_seal(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 3;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p09-stall");
    let all: Vec<u32> = (0..VNODES).collect();
    for round in 0..u64::from(race_rounds(factory)) {
        let point = point_of(round);
        let epoch = round + 1;
        let (a_id, b_id, c_id) = (
            format!("{tag}-a-{round}"),
            format!("{tag}-b-{round}"),
            format!("{tag}-c-{round}"),
        );
        let a_inner = open(&*store, &a_id, VNODES).await?;
        let b = open(&*store, &b_id, VNODES).await?;
        let c = open(&*store, &c_id, VNODES).await?;
        for vnode in 0..VNODES {
            write(
                &b,
                vnode,
                epoch,
                0,
                &payload(epoch << 8 | u64::from(vnode), 8),
            )
            .await?;
        }
        let a = stalled(
            Arc::clone(&a_inner),
            seed ^ round,
            StallPlan::NONE.seals(),
            point,
        );
        let task = {
            let (a, all) = (Arc::clone(&a), all.clone());
            tokio::spawn(async move { a.epoch_complete(epoch, &all).await })
        };
        stall_begun(&a, round, "A's seal").await?;
        let theirs_b = b.epoch_complete(epoch, &all).await;
        let held_past_b = a.stalling() > 0;
        a.release();
        let theirs_a = joined(task).await?;
        let context = format!(
            "round {round}: A's seal of epoch {epoch} held {point:?} while B sealed it: A got {}, B got {}",
            describe(&theirs_a),
            describe(&theirs_b)
        );
        let (winner, loser, loser_result) = match (&theirs_a, &theirs_b) {
            (Ok(true), Ok(true)) => {
                return Err(format!(
                    "{context}: two winners (a look for the marker and its creation are two steps, or the store ignores create-if-absent)"
                ));
            }
            (Ok(true), other) => (&a_id, &b_id, other),
            (other, Ok(true)) => (&b_id, &a_id, other),
            _ => return Err(format!("{context}: nobody won")),
        };
        ensure!(
            matches!(loser_result, Err(StateBackendError::SplitBrainCommit { committer, self_id }) if committer == winner && self_id == loser),
            "{context}: the loser {loser} must get SplitBrainCommit naming {winner} and itself"
        );
        ensure!(
            !(held_past_b && point == StallPoint::BeforeCall && *winner == a_id),
            "{context}: A's seal reached the store only after B's was answered, yet A won"
        );
        for (id, handle) in [(&a_id, &a_inner), (&b_id, &b), (&c_id, &c)] {
            let again = handle.epoch_complete(epoch, &all).await;
            let agrees = if id == winner {
                matches!(again, Ok(true))
            } else {
                matches!(&again, Err(StateBackendError::SplitBrainCommit { committer, self_id }) if committer == winner && self_id == id)
            };
            ensure!(
                agrees,
                "{context}; asked again, {id} got {}, but the winner was {winner}",
                describe(&again)
            );
        }
    }
    Ok(())
}
