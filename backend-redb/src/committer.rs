//! Group commit: the requests the committer thread takes, its batches, and
//! the commit gate it decides inside each write transaction.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackendError, seal_outcome};
use redb::ReadableTable;
use tokio::sync::oneshot;

use crate::OrRedb;
use crate::frame::FRAME_HEADER;
use crate::frame::{frame_into, unframe};
use crate::store::{CommitFault, Core};
use crate::{FENCE_KEY, MARKERS, META, PARTIALS};

/// Requests one transaction takes at most.
pub(crate) const MAX_BATCH_REQUESTS: usize = 4096;
/// Payload bytes one transaction takes at most (the first request always
/// goes in, whatever its size).
pub(crate) const MAX_BATCH_BYTES: usize = 64 << 20;
/// How long the committer waits for returning callers to fill a batch.
pub(crate) const GATHER_WAIT: Duration = Duration::from_micros(200);

pub(crate) enum Request {
    Write {
        vnode: u32,
        epoch: u64,
        version: u64,
        bytes: Bytes,
        reply: oneshot::Sender<Result<(), StateBackendError>>,
    },
    Seal {
        epoch: u64,
        vnodes: Vec<u32>,
        instance_id: Arc<str>,
        told: u64,
        reply: oneshot::Sender<Result<bool, StateBackendError>>,
    },
    PersistFence {
        reply: oneshot::Sender<Result<(), StateBackendError>>,
    },
}

impl Request {
    /// The call this request answers, for error messages.
    pub(crate) fn what(&self) -> String {
        match self {
            Self::Write { vnode, epoch, .. } => format!("write_partial({vnode}, {epoch})"),
            Self::Seal { epoch, .. } => format!("epoch_complete({epoch})"),
            Self::PersistFence { .. } => "persist_authoritative_version".to_owned(),
        }
    }

    /// Answer with an error, whatever the request.
    pub(crate) fn fail(self, error: StateBackendError) {
        match self {
            Self::Write { reply, .. } | Self::PersistFence { reply } => {
                let _ = reply.send(Err(error));
            }
            Self::Seal { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// What the commit gate found.
pub(crate) enum Gate {
    Missing,
    Unsealed,
    SealedBy(String),
}

pub(crate) fn gate(
    partials: &impl ReadableTable<(u64, u32), &'static [u8]>,
    markers: &impl ReadableTable<u64, &'static [u8]>,
    epoch: u64,
    vnodes: &[u32],
) -> Result<Gate, StateBackendError> {
    let what = || format!("epoch_complete({epoch})");
    for &vnode in vnodes {
        if partials.get((epoch, vnode)).or_redb(what)?.is_none() {
            return Ok(Gate::Missing);
        }
    }
    match markers.get(epoch).or_redb(what)? {
        None => Ok(Gate::Unsealed),
        Some(frame) => {
            let marker_what = || format!("the commit marker of epoch {epoch}");
            let body = unframe(frame.value(), &marker_what)?;
            let committer = std::str::from_utf8(body).map_err(|_| {
                StateBackendError::Serialization(format!("{} is not UTF-8", marker_what()))
            })?;
            Ok(Gate::SealedBy(committer.to_owned()))
        }
    }
}

/// Marks the store dead if the committer thread unwinds outside a batch.
pub(crate) struct DeathWatch<'a>(&'a Core);

impl Drop for DeathWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.kill("it panicked".to_owned());
        }
    }
}

/// The committer thread: one transaction per batch of queued requests.
///
/// Callers answered by one batch usually come straight back with their next
/// request, but a commit returns faster than they do; taking only what is
/// queued at that instant would commit a trickle of tiny batches. So until
/// the batch is as large as the previous one, the committer waits up to
/// [`GATHER_WAIT`] for the rest. (Waiting only for half of it, as it once
/// did, settled 64 closed-loop writers into alternating batches of about 33:
/// two fsyncs where one would do, 0.78 of raw redb's 64-writes-per-transaction
/// rate. Waiting for all of them keeps batches at 63 to 64 writes, and the
/// wait, about 130 us, is 3% of the 4.4 ms commit it saves.) A lone writer
/// (previous batch of one) never waits, and a crowd that thins out costs one
/// wait of at most [`GATHER_WAIT`]. Once the committer died it answers every request with the
/// dead store's error until the store is dropped.
pub(crate) fn commit_loop(core: &Core, queue: &mpsc::Receiver<Request>) {
    let _watch = DeathWatch(core);
    let mut previous_batch = 1;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let mut bytes = batch_bytes(&batch[0]);
        let deadline = Instant::now() + GATHER_WAIT;
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            let next = match queue.try_recv() {
                Ok(request) => Some(request),
                Err(mpsc::TryRecvError::Disconnected) => None,
                Err(mpsc::TryRecvError::Empty) if batch.len() < previous_batch => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    queue.recv_timeout(left).ok()
                }
                Err(mpsc::TryRecvError::Empty) => None,
            };
            let Some(request) = next else { break };
            bytes += batch_bytes(&request);
            batch.push(request);
        }
        previous_batch = batch.len();
        commit_batch(core, batch);
    }
}

pub(crate) fn batch_bytes(request: &Request) -> usize {
    match request {
        Request::Write { bytes, .. } => bytes.len(),
        _ => 0,
    }
}

/// The answer each request of a batch gets once the batch is committed.
pub(crate) enum Answer {
    Write(Result<(), StateBackendError>),
    Seal(Result<bool, StateBackendError>),
    Done,
}

pub(crate) fn commit_batch(core: &Core, batch: Vec<Request>) {
    if core.dead.get().is_some() {
        for request in batch {
            let error = core.dead_error(&request.what());
            request.fail(error);
        }
        return;
    }
    // A panic rolls the transaction back (redb aborts it on drop, during the
    // unwind) and kills the store; the batch is answered below.
    let applied = match catch_unwind(AssertUnwindSafe(|| apply_batch(core, &batch))) {
        Ok(applied) => applied,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            core.kill(format!("it panicked: {message}"));
            for request in batch {
                let error = core.dead_error(&request.what());
                request.fail(error);
            }
            return;
        }
    };
    match applied {
        Ok(answers) => {
            for (request, answer) in batch.into_iter().zip(answers) {
                match (request, answer) {
                    (Request::Write { reply, .. }, Answer::Write(result)) => {
                        let _ = reply.send(result);
                    }
                    (Request::Seal { reply, .. }, Answer::Seal(result)) => {
                        let _ = reply.send(result);
                    }
                    (Request::PersistFence { reply }, _) => {
                        let _ = reply.send(Ok(()));
                    }
                    _ => {}
                }
            }
        }
        Err(error) => {
            for request in batch {
                let failed = StateBackendError::Io(format!(
                    "{}: the batch's commit failed: {error}",
                    request.what()
                ));
                request.fail(failed);
            }
        }
    }
}

/// Apply one batch in one write transaction and commit it. Each write and
/// seal is checked against the fence as it is when that request is applied.
pub(crate) fn apply_batch(
    core: &Core,
    batch: &[Request],
) -> Result<Vec<Answer>, StateBackendError> {
    core.with_db(
        || "group commit".to_owned(),
        |db| {
            let what = || "group commit".to_owned();
            let txn = db.begin_write().or_redb(what)?;
            let mut answers = Vec::with_capacity(batch.len());
            // A batch of refused writes, early gates and repeated seals changes
            // nothing: it is rolled back instead of paying a commit.
            let mut dirty = false;
            let mut fence_written = None;
            {
                let mut partials = txn.open_table(PARTIALS).or_redb(what)?;
                let mut markers = txn.open_table(MARKERS).or_redb(what)?;
                for request in batch {
                    let fence = core.fence.load(Ordering::Acquire);
                    answers.push(match request {
                        Request::Write { version, .. } if fence > 0 && *version < fence => {
                            Answer::Write(Err(StateBackendError::StaleVersion {
                                caller: *version,
                                authoritative: fence,
                            }))
                        }
                        Request::Write {
                            vnode,
                            epoch,
                            bytes,
                            ..
                        } => {
                            let mut slot = partials
                                .insert_reserve((*epoch, *vnode), FRAME_HEADER + bytes.len())
                                .or_redb(what)?;
                            frame_into(slot.as_mut(), bytes);
                            dirty = true;
                            Answer::Write(Ok(()))
                        }
                        Request::Seal { told, .. } if *told > 0 && *told < fence => {
                            // A deposed leader may not seal: no need to look.
                            Answer::Seal(Err(StateBackendError::StaleVersion {
                                caller: *told,
                                authoritative: fence,
                            }))
                        }
                        Request::Seal {
                            epoch,
                            vnodes,
                            instance_id,
                            ..
                        } => Answer::Seal(match gate(&partials, &markers, *epoch, vnodes) {
                            Ok(Gate::Missing) => Ok(false),
                            Ok(Gate::SealedBy(committer)) => seal_outcome(&committer, instance_id),
                            Ok(Gate::Unsealed) => {
                                let id = instance_id.as_bytes();
                                let mut slot = markers
                                    .insert_reserve(*epoch, FRAME_HEADER + id.len())
                                    .or_redb(what)?;
                                frame_into(slot.as_mut(), id);
                                dirty = true;
                                Ok(true)
                            }
                            Err(error) => Err(error),
                        }),
                        Request::PersistFence { .. } => Answer::Done,
                    });
                }
                // Read after every request was taken: a raise that happened
                // before any of them was queued is in this value.
                let fence = core.fence.load(Ordering::Acquire);
                if fence > core.fence_on_disk.load(Ordering::Acquire) {
                    dirty = true;
                    let mut meta = txn.open_table(META).or_redb(what)?;
                    meta.insert(FENCE_KEY, fence).or_redb(what)?;
                    fence_written = Some(fence);
                }
            }
            let fault = core
                .fault
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match fault {
                Some(CommitFault::Panic) => panic!("a fault injected into the redb committer"),
                Some(CommitFault::Stall(time)) => std::thread::sleep(time),
                None => {}
            }
            if !dirty {
                txn.abort().or_redb(what)?;
                return Ok(answers);
            }
            txn.commit().or_redb(what)?;
            if let Some(fence) = fence_written {
                core.fence_on_disk.fetch_max(fence, Ordering::AcqRel);
            }
            core.transactions.fetch_add(1, Ordering::Relaxed);
            core.requests
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(answers)
        },
    )
}
