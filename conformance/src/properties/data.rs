//! What is stored: round trip (P1), idempotent replay (P2), independence
//! against the model (P3), sharing as `Arc<dyn StateBackend>` (P13).

use std::sync::Arc;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use proptest::prelude::*;

use crate::factory::BackendFactory;
use crate::faults::LostAnswers;
use crate::model::{self, op_strategy};
use crate::runner::{Checked, ensure, for_all, run_seed};
use crate::support::{
    Context, describe, fresh_store, is_stale, open, payload, read, unique_tag, write,
};

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

/// P1 (batch): `read_partials(epoch, vnodes)` answers exactly what
/// `read_partial` of each vnode answers, in the order asked: random
/// sequences of writes, raises, seals, prunes and batch reads (any vnodes,
/// repeats, none) match the reference model step by step; then a handle
/// opened afterwards reads every epoch in one batch (every vnode backwards,
/// then again) and one by one, and the two agree; a batch naming a vnode
/// outside the handle's capacity fails with `Serialization` naming it, as
/// a single read does. Then, at scale, batches of up to 1,200 vnodes of an
/// epoch where 1,100 were written (every one, backwards, every other, every
/// third, repeats; the vnodes next to multiples of 128, 256, 500 and 512
/// written twice) answer what was written: an override that cuts a batch
/// into chunks, key ranges or pages must lose no vnode at an edge.
pub async fn p01_batch_read(factory: &dyn BackendFactory) -> Checked {
    let capabilities = factory.capabilities();
    let strategy = proptest::collection::vec(op_strategy(), 1..24);
    for_all(factory, strategy, |ops| async move {
        let store = fresh_store(factory).await?;
        model::run_sequence(&*store, capabilities, &ops, false).await?;
        let handle = open(&*store, &unique_tag("p01-batch"), model::VNODES).await?;
        let asked: Vec<u32> = (0..model::VNODES).rev().chain(0..model::VNODES).collect();
        for epoch in 0..model::EPOCHS {
            let batch = handle
                .read_partials(epoch, &asked)
                .await
                .map_err(|e| format!("read_partials({epoch}, {asked:?}) failed: {e}"))?;
            ensure!(
                batch.len() == asked.len(),
                "read_partials({epoch}, {asked:?}) answered {} partials for {} vnodes",
                batch.len(),
                asked.len()
            );
            for (vnode, got) in asked.iter().zip(&batch) {
                let single = read(&handle, *vnode, epoch).await?;
                ensure!(
                    got.as_deref() == single.as_deref(),
                    "read_partials({epoch}, ...) gave {:?} for vnode {vnode}, read_partial gave {:?}",
                    got.as_ref().map(|b| b.len()),
                    single.as_ref().map(|b| b.len())
                );
            }
        }
        let outside = model::VNODES;
        let result = handle.read_partials(1, &[0, outside]).await;
        ensure!(
            matches!(&result, Err(StateBackendError::Serialization(m)) if m.contains(&outside.to_string())),
            "read_partials(1, [0, {outside}]) with capacity {outside} gave {}, expected a Serialization error naming vnode {outside}",
            describe(&result)
        );
        Ok(())
    })
    .await?;
    batch_read_at_scale(factory).await
}

/// Vnodes [`batch_read_at_scale`] writes; its handle's capacity is
/// [`AT_SCALE_CAPACITY`].
const AT_SCALE_WRITTEN: u32 = 1_100;
const AT_SCALE_CAPACITY: u32 = 1_200;

/// P1 (batch) at scale: an override that splits a large batch into chunks,
/// ranges or pages (the S3 backend lists key ranges of 512 vnodes, a
/// database may cut a query into chunks) must lose no vnode at a chunk's
/// edge. 1,100 vnodes of one epoch are written (every eighth and the
/// vnodes next to the multiples of 128, 256, 500 and 512 twice, the second
/// write the one that counts), and batches of up to 1,200 vnodes (every
/// one, backwards, every other, every third, 100 never written mixed in,
/// repeats) must answer each vnode's newest bytes, or `None`, in the order
/// asked.
async fn batch_read_at_scale(factory: &dyn BackendFactory) -> Checked {
    let store = fresh_store(factory).await?;
    let handle = open(&*store, &unique_tag("p01-scale"), AT_SCALE_CAPACITY).await?;
    let edge = |v: u32| {
        [128, 256, 500, 512]
            .iter()
            .any(|step| matches!((v + 1) % step, 0..=2))
    };
    let rewritten = |v: u32| v.is_multiple_of(8) || edge(v);
    let bytes =
        |vnode: u32, round: u64| payload(u64::from(vnode) << 8 | round, 24 + vnode as usize % 40);
    let expected =
        |vnode: u32| (vnode < AT_SCALE_WRITTEN).then(|| bytes(vnode, u64::from(rewritten(vnode))));
    for round in 0..2u64 {
        let mut writes = tokio::task::JoinSet::new();
        for vnode in (0..AT_SCALE_WRITTEN).filter(|v| round == 0 || rewritten(*v)) {
            let (handle, data) = (Arc::clone(&handle), bytes(vnode, round));
            writes.spawn(async move { (vnode, handle.write_partial(vnode, 1, 0, data).await) });
            join_writes(&mut writes, 15).await?;
        }
        join_writes(&mut writes, 0).await?;
    }
    let all: Vec<u32> = (0..AT_SCALE_CAPACITY).collect();
    let repeats: Vec<u32> = (0..AT_SCALE_CAPACITY)
        .map(|i| (i * 7) % AT_SCALE_CAPACITY)
        .chain([511, 512, 0, 1_099, 1_100])
        .collect();
    let batches: [(&str, Vec<u32>); 5] = [
        ("every vnode", all.clone()),
        (
            "every vnode, backwards",
            all.iter().rev().copied().collect(),
        ),
        (
            "every other vnode",
            all.iter().copied().step_by(2).collect(),
        ),
        (
            "every third vnode",
            all.iter().copied().step_by(3).collect(),
        ),
        ("every vnode in a stride of 7, then repeats", repeats),
    ];
    for (name, asked) in batches {
        let batch = handle
            .read_partials(1, &asked)
            .await
            .ctx(|| format!("read_partials(1, {name}: {} vnodes)", asked.len()))?;
        ensure!(
            batch.len() == asked.len(),
            "read_partials(1, {name}) answered {} partials for {} vnodes",
            batch.len(),
            asked.len()
        );
        for (vnode, got) in asked.iter().zip(&batch) {
            let want = expected(*vnode);
            let held = |b: &Option<Bytes>| {
                b.as_ref()
                    .map_or("nothing".into(), |b| format!("{} bytes", b.len()))
            };
            ensure!(
                *got == want,
                "read_partials(1, {name}: {} vnodes) gave {} for vnode {vnode}, which holds {}{}",
                asked.len(),
                held(got),
                held(&want),
                if got.is_some() && want.is_some() {
                    " (other bytes)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Wait for writes (`(vnode, outcome)` of epoch 1) until at most `left`
/// are in flight; the first that failed is the error.
async fn join_writes(
    writes: &mut tokio::task::JoinSet<(u32, Result<(), StateBackendError>)>,
    left: usize,
) -> Checked {
    while writes.len() > left {
        let Some(done) = writes.join_next().await else {
            break;
        };
        let (vnode, written) = done.map_err(|e| format!("a write task failed: {e}"))?;
        written.ctx(|| format!("write_partial({vnode}, 1)"))?;
    }
    Ok(())
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

/// P2, lost answers: a checkpoint loop (write every vnode, seal, now and
/// then raise the fence, prune what is two epochs old) through a
/// [`LostAnswers`] wrapper that loses one answer in three after the store
/// applied the call; the caller retries each call until it gets an answer.
/// A retried write succeeds, a retried seal comes back won (`Ok(true)`,
/// never `SplitBrainCommit` naming the caller itself), a retried raise and
/// prune succeed. Afterwards a fault-free handle reads exactly what the loop
/// wrote and kept, finds each kept epoch sealed by the loop's instance, and
/// (with `fencing`) is refused below the last raise.
pub async fn p02_lost_answers(factory: &dyn BackendFactory) -> Checked {
    const VNODES: u32 = 4;
    const EPOCHS: u64 = 12;
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p02-lost");
    let id = format!("{tag}-leader");
    let inner = open(&*store, &id, VNODES).await?;
    let faulty = LostAnswers::new(Arc::clone(&inner), run_seed(), 3);
    let fencing = factory.capabilities().fencing;
    let all: Vec<u32> = (0..VNODES).collect();
    let bytes = |epoch: u64, vnode: u32| payload(epoch << 8 | u64::from(vnode), 32);
    let mut version = 1;
    if fencing {
        retried("persist_authoritative_version(1)", || {
            faulty.persist_authoritative_version(1)
        })
        .await?;
    }
    for epoch in 1..=EPOCHS {
        for vnode in 0..VNODES {
            retried(&format!("write_partial({vnode}, {epoch})"), || {
                faulty.write_partial(vnode, epoch, version, bytes(epoch, vnode))
            })
            .await?;
        }
        let sealed = retried(&format!("epoch_complete({epoch})"), || {
            faulty.epoch_complete(epoch, &all)
        })
        .await?;
        ensure!(
            sealed,
            "epoch {epoch}: every partial was written, yet the retried seal gave Ok(false)"
        );
        if fencing && epoch % 4 == 0 {
            version += 1;
            retried(&format!("persist_authoritative_version({version})"), || {
                faulty.persist_authoritative_version(version)
            })
            .await?;
        }
        if epoch > 2 {
            retried(&format!("prune_before({})", epoch - 2), || {
                faulty.prune_before(epoch - 2)
            })
            .await?;
        }
    }
    ensure!(
        faulty.lost() > 0,
        "no answer was lost: the property proved nothing"
    );

    let other = open(&*store, &format!("{tag}-other"), VNODES).await?;
    for epoch in 1..=EPOCHS {
        for vnode in 0..VNODES {
            let held = read(&other, vnode, epoch).await?;
            let expected = (epoch >= EPOCHS - 2).then(|| bytes(epoch, vnode));
            ensure!(
                held == expected,
                "after the loop, (vnode {vnode}, epoch {epoch}) is {}, expected {}",
                if held.is_some() { "present" } else { "absent" },
                if expected.is_some() {
                    "present"
                } else {
                    "absent"
                }
            );
        }
    }
    for epoch in EPOCHS - 2..=EPOCHS {
        let result = other.epoch_complete(epoch, &all).await;
        ensure!(
            matches!(&result, Err(StateBackendError::SplitBrainCommit { committer, .. }) if *committer == id),
            "epoch {epoch} should be sealed by {id}, but another instance's gate gave {}",
            describe(&result)
        );
    }
    if fencing {
        let stale = other
            .write_partial(0, EPOCHS + 1, version - 1, payload(1, 8))
            .await;
        ensure!(
            is_stale(&stale, version - 1, version),
            "the retried raise to {version} did not hold: a write at {} gave {}",
            version - 1,
            describe(&stale)
        );
    }
    Ok(())
}

/// `call` again while its answer is a lost one, at most 16 times; its first
/// real answer, or a failure naming `what` for any other error.
async fn retried<T, F, Fut>(what: &str, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StateBackendError>>,
{
    for _ in 0..16 {
        match call().await {
            Err(StateBackendError::Io(message)) if message.starts_with("fault injected") => {}
            Ok(value) => return Ok(value),
            Err(error) => {
                return Err(format!(
                    "{what}, retried after a lost answer, gave {error:?}"
                ));
            }
        }
    }
    Err(format!("{what}: 16 answers in a row were lost"))
}
