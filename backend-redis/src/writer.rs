//! The write path: one script per write, and group commit for concurrent
//! writers of a vnode group (one script call per batch, each write answered
//! on its own).

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use laminar_state_api::StateBackendError;
use tokio::sync::{mpsc, oneshot};

use crate::keys::{decimal, parse_decimal};
use crate::store::{RedisStore, Shared};

/// Writes one batch script carries at most.
const MAX_BATCH_WRITES: usize = 256;
/// Payload bytes one batch script carries at most (the first write always
/// goes in, whatever its size).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// One write, as the write script takes it.
pub(crate) struct WriteOp {
    pub(crate) vnode: u32,
    pub(crate) epoch: u64,
    pub(crate) version: u64,
    /// The writer's fence, carried to the group.
    pub(crate) carried: u64,
    pub(crate) bytes: Bytes,
}

/// A write waiting for its group's next batch. The answer is `None` when it
/// was written, `Some(fence)` when the group's fence refused it.
pub(crate) struct PendingWrite {
    pub(crate) op: WriteOp,
    pub(crate) reply: oneshot::Sender<Result<Option<u64>, StateBackendError>>,
}

/// Counts a group's direct (unbatched) write in flight while alive.
pub(crate) struct DirectWrite<'a>(pub(crate) &'a AtomicU64);

impl Drop for DirectWrite<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One group's writer: sends everything queued for the group as one script
/// call, so concurrent writers share round trips and script runs (the
/// group commit of this backend), and answers each write on its own. Only
/// writes that find another write of the group in flight are queued; a
/// lone writer calls the script itself. The task ends when the store is
/// dropped.
pub(crate) async fn group_writer(
    store: Weak<Shared>,
    group: u32,
    mut queue: mpsc::UnboundedReceiver<PendingWrite>,
) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.op.bytes.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += next.op.bytes.len();
            batch.push(next);
        }
        let Some(shared) = store.upgrade() else {
            return;
        };
        let ops: Vec<&WriteOp> = batch.iter().map(|w| &w.op).collect();
        let outcome = RedisStore { shared }.write_batch(group, &ops).await;
        match outcome {
            Ok((fence, written)) => {
                for (write, written) in batch.into_iter().zip(written) {
                    let _ = write.reply.send(Ok((!written).then_some(fence)));
                }
            }
            Err(error) => {
                let text = error.to_string();
                for write in batch {
                    let _ = write.reply.send(Err(StateBackendError::Io(text.clone())));
                }
            }
        }
    }
}

impl RedisStore {
    /// Apply one write to `group`; `Some(fence)` if the fence refused it.
    pub(crate) async fn write_one(
        &self,
        group: u32,
        op: &WriteOp,
    ) -> Result<Option<u64>, StateBackendError> {
        let keys = &self.shared.keys;
        let what = format!("write_partial({}, {})", op.vnode, op.epoch);
        let (fence, confirmation): (String, _) = self
            .call_replicated(
                &what,
                self.shared.replicate_writes,
                |s| &s.write_one,
                |call| {
                    call.key(keys.group_fence(group))
                        .key(keys.group_epochs(group))
                        .key(keys.epoch_partials(group, op.epoch))
                        .arg(decimal(op.carried))
                        .arg(decimal(op.version))
                        .arg(op.vnode)
                        .arg(decimal(op.epoch))
                        .arg(&op.bytes[..]);
                },
            )
            .await?;
        let fence = parse_decimal(&fence, "a group fence")?;
        if op.version >= fence {
            confirmation.require()?;
        }
        Ok((op.version < fence).then_some(fence))
    }

    /// Apply one batch of writes to `group` in one script call; the group's
    /// fence and, per write, whether it was written.
    pub(crate) async fn write_batch(
        &self,
        group: u32,
        batch: &[&WriteOp],
    ) -> Result<(u64, Vec<bool>), StateBackendError> {
        let keys = &self.shared.keys;
        let mut epochs: Vec<u64> = batch.iter().map(|w| w.epoch).collect();
        epochs.sort_unstable();
        epochs.dedup();
        let carried = batch.iter().map(|w| w.carried).max().unwrap_or(0);
        let what = match batch {
            [one] => format!("write_partial({}, {})", one.vnode, one.epoch),
            many => format!("a batch of {} writes to vnode group {group}", many.len()),
        };
        let ((fence, written), confirmation): ((String, Vec<u8>), _) = self
            .call_replicated(
                &what,
                self.shared.replicate_writes,
                |s| &s.write,
                |call| {
                    call.key(keys.group_fence(group))
                        .key(keys.group_epochs(group));
                    for &epoch in &epochs {
                        call.key(keys.epoch_partials(group, epoch));
                    }
                    call.arg(decimal(carried));
                    for write in batch {
                        // Lua indexes KEYS from 1; the two group keys come first.
                        let hash = 3 + epochs.binary_search(&write.epoch).unwrap_or(0);
                        call.arg(decimal(write.version))
                            .arg(write.vnode)
                            .arg(decimal(write.epoch))
                            .arg(hash)
                            .arg(&write.bytes[..]);
                    }
                },
            )
            .await?;
        if written.len() != batch.len() {
            return Err(StateBackendError::Serialization(format!(
                "{what}: the write script answered for {} of {} writes",
                written.len(),
                batch.len()
            )));
        }
        if written.contains(&1) {
            confirmation.require()?;
        }
        Ok((
            parse_decimal(&fence, "a group fence")?,
            written.into_iter().map(|w| w == 1).collect(),
        ))
    }
}
