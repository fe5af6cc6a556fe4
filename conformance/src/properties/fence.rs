//! The split-brain fence: monotonic (P4), enforced (P5), shared by every
//! handle on a store (P6), and atomic with the write it guards (P7).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use proptest::prelude::*;

use crate::factory::BackendFactory;
use crate::runner::{Checked, ensure, for_all, race_rounds, run_seed, splitmix64};
use crate::support::{describe, fresh_store, is_stale, open, payload, read, unique_tag, write};

/// P4: `set_authoritative_version` never lowers the fence: after any sequence
/// of raises the handle reports the highest version seen. `0` means off: a
/// fresh handle reports `0` and accepts writes at version `0`.
pub async fn p04_fence_monotonic(factory: &dyn BackendFactory) -> Checked {
    let strategy =
        proptest::collection::vec(prop_oneof![Just(0u64), 0u64..50, Just(u64::MAX)], 1..12);
    for_all(factory, strategy, |raises| async move {
        let store = fresh_store(factory).await?;
        let handle = open(&*store, &unique_tag("p04"), 4).await?;
        ensure!(handle.authoritative_version() == 0, "a fresh store's fence is {}, not 0", handle.authoritative_version());
        write(&handle, 0, 1, 0, &Bytes::from_static(b"v0")).await?;
        let mut highest = 0;
        for raise in raises {
            handle.set_authoritative_version(raise);
            highest = highest.max(raise);
            let now = handle.authoritative_version();
            ensure!(now == highest, "after set_authoritative_version({raise}) the fence is {now}, expected the maximum so far, {highest}");
        }
        Ok(())
    })
    .await
}

/// P5: with fence `f > 0`, a write at `v < f` fails with exactly
/// `StaleVersion { caller: v, authoritative: f }` and leaves the stored bytes
/// as they were; `v >= f` is accepted. Then the same with 64 concurrent
/// writers, a quarter of them stale (see [`concurrent_writes_fail_alone`]).
pub async fn p05_fence_enforced(factory: &dyn BackendFactory) -> Checked {
    let strategy = (1u64..1_000, 0u64..1_200, any::<u64>());
    for_all(factory, strategy, |(fence, version, seed)| async move {
        let store = fresh_store(factory).await?;
        let handle = open(&*store, &unique_tag("p05"), 4).await?;
        handle.set_authoritative_version(fence);
        let before = payload(seed, 32);
        write(&handle, 2, 9, fence, &before).await?;
        let attempt = payload(seed ^ 0xFF, 32);
        let result = handle.write_partial(2, 9, version, attempt.clone()).await;
        if version < fence {
            ensure!(is_stale(&result, version, fence), "write at {version} under fence {fence} gave {}, expected StaleVersion {{ caller: {version}, authoritative: {fence} }}", describe(&result));
            ensure!(read(&handle, 2, 9).await?.as_ref() == Some(&before), "a refused write changed the stored bytes");
            let other_key = handle.write_partial(3, 9, version, attempt).await;
            ensure!(is_stale(&other_key, version, fence), "a refused version was accepted on another key: {}", describe(&other_key));
            ensure!(read(&handle, 3, 9).await?.is_none(), "a refused write to an empty key stored something");
        } else {
            ensure!(result.is_ok(), "write at {version} under fence {fence} was refused: {}", describe(&result));
            ensure!(read(&handle, 2, 9).await?.as_ref() == Some(&attempt), "an accepted write is not visible");
        }
        // The boundary, every case.
        let at = handle.write_partial(1, 9, fence, Bytes::from_static(b"at")).await;
        ensure!(at.is_ok(), "a write exactly at the fence {fence} was refused: {}", describe(&at));
        let below = handle.write_partial(1, 9, fence - 1, Bytes::from_static(b"below")).await;
        ensure!(is_stale(&below, fence - 1, fence), "a write one below the fence gave {}", describe(&below));
        Ok(())
    })
    .await?;
    let store = fresh_store(factory).await?;
    let handle = open(&*store, &unique_tag("p05-concurrent"), 64).await?;
    concurrent_writes_fail_alone(&handle, 64).await
}

/// `writers` concurrent 4 KiB writes through `handle` (fence raised to 5
/// here) to vnodes `0..writers` of epoch 1, every fourth at version 4: each
/// of those fails alone with exactly `StaleVersion { 4, 5 }` and stores
/// nothing, every other one is stored. Backends that batch concurrent writes
/// (group commit) run it to show a refusal does not fail its batch.
pub async fn concurrent_writes_fail_alone(handle: &Arc<dyn StateBackend>, writers: u32) -> Checked {
    handle.set_authoritative_version(5);
    let bytes = |vnode: u32| Bytes::from(vec![vnode as u8; 4096]);
    let mut tasks = tokio::task::JoinSet::new();
    for vnode in 0..writers {
        let handle = Arc::clone(handle);
        let version = if vnode % 4 == 0 { 4 } else { 5 };
        tasks.spawn(async move {
            (
                vnode,
                handle.write_partial(vnode, 1, version, bytes(vnode)).await,
            )
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (vnode, result) = joined.map_err(|e| format!("a writer panicked: {e}"))?;
        if vnode % 4 == 0 {
            ensure!(
                is_stale(&result, 4, 5),
                "concurrent stale write to vnode {vnode} gave {}",
                describe(&result)
            );
        } else {
            ensure!(
                result.is_ok(),
                "concurrent write to vnode {vnode} at the fence failed: {}",
                describe(&result)
            );
        }
    }
    for vnode in 0..writers {
        let held = read(handle, vnode, 1).await?;
        let expected = (vnode % 4 != 0).then(|| bytes(vnode));
        ensure!(
            held == expected,
            "after the concurrent writes, vnode {vnode} is {}",
            if held.is_some() { "present" } else { "absent" }
        );
    }
    Ok(())
}

/// P6: a raise through one handle is enforced against another handle on the
/// same store that was never told, once the raising handle has written; the
/// stale handle cannot overwrite newer data, and learns the fence from the
/// error.
pub async fn p06_shared_fence(factory: &dyn BackendFactory) -> Checked {
    let strategy = (2u64..1_000, 1u64..50, any::<u64>());
    for_all(factory, strategy, |(fence, lag, seed)| async move {
        let stale_version = fence.saturating_sub(lag).max(1).min(fence - 1);
        let store = fresh_store(factory).await?;
        let tag = unique_tag("p06");
        let leader = open(&*store, &format!("{tag}-leader"), 4).await?;
        let zombie = open(&*store, &format!("{tag}-zombie"), 4).await?;
        // The zombie was legitimately writing before the rotation.
        write(&zombie, 0, 5, stale_version, &payload(seed, 16)).await?;

        leader.set_authoritative_version(fence);
        let newer = payload(seed ^ 1, 16);
        write(&leader, 0, 5, fence, &newer).await?;

        let result = zombie.write_partial(0, 5, stale_version, payload(seed ^ 2, 16)).await;
        ensure!(is_stale(&result, stale_version, fence), "a handle that was never told accepted or misreported a stale write: {}, expected StaleVersion {{ caller: {stale_version}, authoritative: {fence} }}", describe(&result));
        for handle in [&leader, &zombie] {
            ensure!(read(handle, 0, 5).await?.as_ref() == Some(&newer), "the stale handle overwrote newer data");
        }
        let fresh_key = zombie.write_partial(1, 6, stale_version, payload(seed ^ 3, 16)).await;
        ensure!(is_stale(&fresh_key, stale_version, fence), "the stale handle wrote a fresh key: {}", describe(&fresh_key));
        ensure!(read(&leader, 1, 6).await?.is_none(), "a refused write became visible");

        // A third handle opened after the raise enforces it too.
        let late = open(&*store, &format!("{tag}-late"), 4).await?;
        let late_result = late.write_partial(2, 6, stale_version, payload(seed ^ 4, 16)).await;
        ensure!(is_stale(&late_result, stale_version, fence), "a handle opened after the raise accepted a stale write: {}", describe(&late_result));
        // And the up-to-date version is accepted from any handle.
        write(&zombie, 1, 6, fence, &payload(seed ^ 5, 16)).await?;
        Ok(())
    })
    .await?;
    raise_is_shared_by_seal_and_persist(factory).await
}

/// The fence timing rule's other two ways of sharing a raise: a raise
/// becomes shared no later than the raising handle's next successful *seal*
/// (not only its next write), and at once with
/// `persist_authoritative_version`. After each, a handle that was never told
/// (opened before the raise) is refused.
async fn raise_is_shared_by_seal_and_persist(factory: &dyn BackendFactory) -> Checked {
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p06-timing");
    let leader = open(&*store, &format!("{tag}-leader"), 2).await?;
    let zombie = open(&*store, &format!("{tag}-zombie"), 2).await?;
    for vnode in 0..2 {
        write(&leader, vnode, 1, 0, &payload(u64::from(vnode), 8)).await?;
    }
    leader.set_authoritative_version(7);
    let sealed = leader.epoch_complete(1, &[0, 1]).await;
    ensure!(
        matches!(sealed, Ok(true)),
        "the leader's seal after its raise to 7 gave {}",
        describe(&sealed)
    );
    let result = zombie.write_partial(0, 2, 6, payload(1, 8)).await;
    ensure!(
        is_stale(&result, 6, 7),
        "after a raise to 7 and a successful seal by the raising handle, a never-told handle's write at 6 gave {}: the seal did not carry the raise",
        describe(&result)
    );
    ensure!(
        read(&leader, 0, 2).await?.is_none(),
        "the refused write is visible"
    );

    let late_zombie = open(&*store, &format!("{tag}-late-zombie"), 2).await?;
    leader
        .persist_authoritative_version(9)
        .await
        .map_err(|e| format!("persist_authoritative_version(9) failed: {e:?}"))?;
    for zombie in [&zombie, &late_zombie] {
        let result = zombie.write_partial(1, 3, 8, payload(2, 8)).await;
        ensure!(
            is_stale(&result, 8, 9),
            "persist_authoritative_version(9) returned, yet a never-told handle's write at 8 gave {}: the raise was not shared",
            describe(&result)
        );
    }
    Ok(())
}

/// P7: zombie writers at `v - 1` race a raise to `v` for many rounds. Once the
/// raise is acknowledged, no zombie write that starts is acknowledged, and
/// none lands afterwards: what every key holds the moment the raise returns
/// is what it holds after the zombies, still hammering, are stopped. A write
/// checked against the old fence before the raise and stored after it (a
/// check-then-write that is not atomic) changes a key in between and fails.
/// Rounds alternate the two ways a raise is acknowledged: the explicit
/// `persist_authoritative_version`, and the raising handle's next write
/// (to a key no zombie writes). Half the zombies give up on their writes
/// after a random few hundred microseconds (the future is dropped, as a
/// caller's timeout does): a write abandoned mid-flight, whose request may
/// still reach the store after the raise, must not land either.
pub async fn p07_atomic_fence(factory: &dyn BackendFactory) -> Checked {
    const ZOMBIES: u64 = 4;
    const KEYS: u32 = 4;
    // The key the leader's raising write goes to; zombies write the others.
    const RAISE_KEY: u32 = KEYS;
    let shared = factory.capabilities().shared_fence;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p07");
    let leader = open(&*store, &format!("{tag}-leader"), KEYS + 1).await?;
    let zombie_handle = if shared {
        open(&*store, &format!("{tag}-zombie"), KEYS + 1).await?
    } else {
        Arc::clone(&leader)
    };
    for round in 0..u64::from(race_rounds(factory)) {
        let old = 2 * round + 1;
        let new = old + 1;
        let epoch = round;
        let by_persist = round % 2 == 0;
        leader.set_authoritative_version(old);
        write(&leader, 0, epoch, old, &Bytes::from_static(b"start")).await?;

        let raised = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let after_raise = Arc::new(AtomicU64::new(0));
        let mut zombies = tokio::task::JoinSet::new();
        for z in 0..ZOMBIES {
            let (handle, raised, stop, after_raise) = (
                Arc::clone(&zombie_handle),
                Arc::clone(&raised),
                Arc::clone(&stop),
                Arc::clone(&after_raise),
            );
            zombies.spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Acquire) {
                    seq += 1;
                    let key = ((z + seq) % u64::from(KEYS)) as u32;
                    let started_after_raise = raised.load(Ordering::Acquire);
                    let bytes = Bytes::from(format!("zombie {z} write {seq}"));
                    let write = handle.write_partial(key, epoch, old, bytes);
                    let result = if z % 2 == 1 {
                        let patience = splitmix64(seed ^ round ^ (z << 32) ^ seq) % 400;
                        // `None`: abandoned, neither acknowledged nor refused.
                        tokio::time::timeout(Duration::from_micros(patience), write).await.ok()
                    } else {
                        Some(write.await)
                    };
                    match result {
                        None => {}
                        Some(Ok(())) if started_after_raise => {
                            return Err(format!("round {round}: zombie write {seq} at version {old} started after the raise to {new} was acknowledged, and was acknowledged"));
                        }
                        Some(Ok(())) => {}
                        Some(Err(StateBackendError::StaleVersion { caller, authoritative })) if caller == old && authoritative >= new => {}
                        Some(Err(other)) => return Err(format!("round {round}: a zombie write failed with {other:?}, expected StaleVersion {{ caller: {old}, authoritative: >= {new} }}")),
                    }
                    if started_after_raise {
                        after_raise.fetch_add(1, Ordering::AcqRel);
                    }
                    tokio::task::yield_now().await;
                }
                Ok(())
            });
        }
        // Let the zombies get going, for a varying while.
        let delay = splitmix64(seed ^ round) % 2_000;
        tokio::time::sleep(Duration::from_micros(delay)).await;

        let leader_bytes = Bytes::from(format!("leader round {round}"));
        let how = if by_persist {
            leader
                .persist_authoritative_version(new)
                .await
                .map_err(|e| {
                    format!("round {round}: persist_authoritative_version({new}) failed: {e:?}")
                })?;
            "persist_authoritative_version"
        } else {
            leader.set_authoritative_version(new);
            write(&leader, RAISE_KEY, epoch, new, &leader_bytes).await?;
            "the leader's next write"
        };
        raised.store(true, Ordering::Release);
        // The raise is acknowledged: from here on, no key may change.
        let mut frozen = Vec::with_capacity(KEYS as usize);
        for key in 0..KEYS {
            frozen.push(read(&leader, key, epoch).await?);
        }
        // Keep the zombies going past the raise, boundedly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while after_raise.load(Ordering::Acquire) < ZOMBIES * 4
            && tokio::time::Instant::now() < deadline
        {
            // A zombie that saw a breach ends the round at once.
            if let Some(joined) = zombies.try_join_next() {
                stop.store(true, Ordering::Release);
                joined.map_err(|e| format!("a zombie task panicked: {e}"))??;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.store(true, Ordering::Release);
        while let Some(joined) = zombies.join_next().await {
            joined.map_err(|e| format!("a zombie task panicked: {e}"))??;
        }
        let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        for (key, before) in (0..KEYS).zip(&frozen) {
            let held = read(&leader, key, epoch).await?;
            ensure!(
                held == *before,
                "round {round}: key {key} held {:?} when the raise to {new} (by {how}) was acknowledged, and {:?} after the zombies at {old} stopped: a zombie write landed after the raise",
                text(before),
                text(&held)
            );
        }
        if !by_persist {
            let held = read(&leader, RAISE_KEY, epoch).await?;
            ensure!(
                held.as_ref() == Some(&leader_bytes),
                "round {round}: the leader's raising write at {new} to key {RAISE_KEY} was acknowledged, yet the key holds {:?}",
                text(&held)
            );
        }
    }
    Ok(())
}

/// P7, a raise cancelled half-way: a raise whose future is dropped part-way
/// through (the raiser crashed or its caller timed out) may have reached
/// part of the store. Then another handle, on the store as a new leader,
/// raises to the same version and is acknowledged: from then on every
/// zombie write below it is refused, on every key, and nothing it sent
/// becomes visible. A backend that takes a half-done raise as done (a
/// summary of the fence updated before the copies that enforce it) fails.
pub async fn p07_cancelled_raise(factory: &dyn BackendFactory) -> Checked {
    const KEYS: u32 = 8;
    let seed = run_seed();
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p07-cancel");
    for round in 0..u64::from(race_rounds(factory)) {
        let old = 2 * round + 1;
        let new = old + 1;
        let epoch = round;
        let zombie = open(&*store, &format!("{tag}-zombie-{round}"), KEYS).await?;
        zombie.set_authoritative_version(old);
        write(&zombie, 0, epoch, old, &Bytes::from_static(b"before")).await?;

        // The raise to `new`, abandoned after a random while: anywhere from
        // before its first request to after its last.
        let raiser = open(&*store, &format!("{tag}-raiser-{round}"), KEYS).await?;
        let patience = Duration::from_micros(splitmix64(seed ^ round) % 3_000);
        let _ = tokio::time::timeout(patience, raiser.persist_authoritative_version(new)).await;

        let leader = open(&*store, &format!("{tag}-leader-{round}"), KEYS).await?;
        leader
            .persist_authoritative_version(new)
            .await
            .map_err(|e| format!("round {round}: the new leader's raise to {new} failed: {e:?}"))?;
        for key in 0..KEYS {
            let result = zombie
                .write_partial(key, epoch, old, Bytes::from_static(b"ZOMBIE"))
                .await;
            ensure!(
                matches!(result, Err(StateBackendError::StaleVersion { caller, authoritative }) if caller == old && authoritative >= new),
                "round {round}: a raise to {new} was cancelled after {patience:?}, then another handle's raise to {new} was acknowledged, yet a zombie write at {old} to key {key} gave {}: the half-finished raise was taken as done",
                describe(&result)
            );
            let held = read(&leader, key, epoch).await?;
            let expected = (key == 0).then(|| Bytes::from_static(b"before"));
            ensure!(
                held == expected,
                "round {round}: after the acknowledged raise to {new}, key {key} holds {:?}",
                held.map(|b| String::from_utf8_lossy(&b).into_owned())
            );
        }
    }
    Ok(())
}
