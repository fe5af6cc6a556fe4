//! The reference model: what a correct store holds after any sequence of
//! operations from several handles, and what each call must return.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use proptest::prelude::*;

use crate::factory::{Capabilities, TestStore};
use crate::runner::{Checked, ensure};

/// Handles per modelled store.
pub(crate) const HANDLES: usize = 3;
/// Vnodes per modelled store: few, so operations collide often.
pub(crate) const VNODES: u32 = 4;
/// Epochs `0..EPOCHS` are used.
pub(crate) const EPOCHS: u64 = 6;
/// Versions `0..VERSIONS` are written and raised to (`RaiseThenWrite` may
/// write at `VERSIONS`).
pub(crate) const VERSIONS: u64 = 8;

/// One call on one handle.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Write {
        handle: usize,
        vnode: u32,
        epoch: u64,
        version: u64,
        bytes: Vec<u8>,
    },
    Read {
        handle: usize,
        vnode: u32,
        epoch: u64,
    },
    /// `read_partials`: any vnodes, in any order, repeats allowed.
    ReadMany {
        handle: usize,
        epoch: u64,
        vnodes: Vec<u32>,
    },
    /// A raise followed by a write at or above it: the contract makes a raise
    /// shared no later than the raising handle's next write, so the model
    /// pairs them to stay exact for every backend.
    RaiseThenWrite {
        handle: usize,
        raise: u64,
        above: u64,
        vnode: u32,
        epoch: u64,
        bytes: Vec<u8>,
    },
    Complete {
        handle: usize,
        epoch: u64,
        vnodes: Vec<u32>,
    },
    Prune {
        handle: usize,
        before: u64,
    },
}

pub(crate) fn op_strategy() -> impl Strategy<Value = Op> {
    let handle = 0..HANDLES;
    let vnode = 0..VNODES;
    let epoch = 0..EPOCHS;
    // A tiny alphabet, so replays of identical bytes happen often.
    let bytes = proptest::collection::vec(0u8..3, 0..5);
    prop_oneof![
        4 => (handle.clone(), vnode.clone(), epoch.clone(), 0..VERSIONS, bytes.clone()).prop_map(
            |(handle, vnode, epoch, version, bytes)| Op::Write { handle, vnode, epoch, version, bytes }
        ),
        2 => (handle.clone(), vnode.clone(), epoch.clone())
            .prop_map(|(handle, vnode, epoch)| Op::Read { handle, vnode, epoch }),
        1 => (handle.clone(), epoch.clone(), proptest::collection::vec(vnode.clone(), 0..=2 * VNODES as usize))
            .prop_map(|(handle, epoch, vnodes)| Op::ReadMany { handle, epoch, vnodes }),
        1 => (handle.clone(), 0..VERSIONS, 0u64..2, vnode.clone(), epoch.clone(), bytes).prop_map(
            |(handle, raise, above, vnode, epoch, bytes)| Op::RaiseThenWrite {
                handle, raise, above, vnode, epoch, bytes
            }
        ),
        2 => (handle.clone(), epoch.clone(), proptest::sample::subsequence((0..VNODES).collect::<Vec<_>>(), 1..=VNODES as usize))
            .prop_map(|(handle, epoch, vnodes)| Op::Complete { handle, epoch, vnodes }),
        1 => (handle, 0..EPOCHS + 1).prop_map(|(handle, before)| Op::Prune { handle, before }),
    ]
}

/// What a call returned, in a form that compares exactly.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Done,
    Read(Option<Vec<u8>>),
    ReadMany(Vec<Option<Vec<u8>>>),
    Complete(bool),
    Stale { caller: u64, authoritative: u64 },
    SplitBrain { committer: String, self_id: String },
    Other(String),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Done => write!(f, "Ok(())"),
            Reply::Read(value) => write!(f, "Ok({value:?})"),
            Reply::ReadMany(values) => write!(f, "Ok({values:?})"),
            Reply::Complete(sealed) => write!(f, "Ok({sealed})"),
            Reply::Stale {
                caller,
                authoritative,
            } => write!(
                f,
                "StaleVersion {{ caller: {caller}, authoritative: {authoritative} }}"
            ),
            Reply::SplitBrain { committer, self_id } => write!(
                f,
                "SplitBrainCommit {{ committer: {committer:?}, self_id: {self_id:?} }}"
            ),
            Reply::Other(error) => write!(f, "Err({error})"),
        }
    }
}

impl Reply {
    pub(crate) fn from_error(error: StateBackendError) -> Self {
        match error {
            StateBackendError::StaleVersion {
                caller,
                authoritative,
            } => Reply::Stale {
                caller,
                authoritative,
            },
            StateBackendError::SplitBrainCommit { committer, self_id } => {
                Reply::SplitBrain { committer, self_id }
            }
            other => Reply::Other(other.to_string()),
        }
    }
}

/// The modelled store.
pub(crate) struct Model {
    ids: Vec<String>,
    capabilities: Capabilities,
    partials: BTreeMap<(u64, u32), Vec<u8>>,
    markers: BTreeMap<u64, usize>,
    /// One fence per handle; with a shared fence every raise moves them all.
    fences: Vec<u64>,
    /// The highest version each handle was told.
    told: Vec<u64>,
}

impl Model {
    pub(crate) fn new(ids: Vec<String>, capabilities: Capabilities) -> Self {
        let fences = vec![0; ids.len()];
        Self {
            capabilities,
            partials: BTreeMap::new(),
            markers: BTreeMap::new(),
            told: fences.clone(),
            fences,
            ids,
        }
    }

    fn raise(&mut self, handle: usize, version: u64) {
        if !self.capabilities.fencing {
            return;
        }
        self.told[handle] = self.told[handle].max(version);
        if self.capabilities.shared_fence {
            self.fences.iter_mut().for_each(|f| *f = (*f).max(version));
        } else {
            self.fences[handle] = self.fences[handle].max(version);
        }
    }

    fn write(
        &mut self,
        handle: usize,
        vnode: u32,
        epoch: u64,
        version: u64,
        bytes: &[u8],
    ) -> Reply {
        let fence = self.fences[handle];
        if fence > 0 && version < fence {
            return Reply::Stale {
                caller: version,
                authoritative: fence,
            };
        }
        self.partials.insert((epoch, vnode), bytes.to_vec());
        Reply::Done
    }

    fn complete(&mut self, handle: usize, epoch: u64, vnodes: &[u32]) -> Reply {
        let (told, fence) = (self.told[handle], self.fences[handle]);
        if self.capabilities.fenced_seal && told > 0 && told < fence {
            return Reply::Stale {
                caller: told,
                authoritative: fence,
            };
        }
        if !vnodes
            .iter()
            .all(|&vnode| self.partials.contains_key(&(epoch, vnode)))
        {
            return Reply::Complete(false);
        }
        let winner = *self.markers.entry(epoch).or_insert(handle);
        if winner == handle {
            Reply::Complete(true)
        } else {
            Reply::SplitBrain {
                committer: self.ids[winner].clone(),
                self_id: self.ids[handle].clone(),
            }
        }
    }

    fn prune(&mut self, before: u64) {
        self.partials.retain(|&(epoch, _), _| epoch >= before);
        self.markers.retain(|&epoch, _| epoch >= before);
    }

    /// The sealed epochs, ascending.
    pub(crate) fn sealed(&self) -> Vec<u64> {
        self.markers.keys().copied().collect()
    }

    /// The refusal a backend may answer to `op` instead of what [`apply`]
    /// says: a gate asked by a deposed handle (told a version below the
    /// fence) of a backend that does not claim `fenced_seal`, which may
    /// refuse it as a best effort or carry on. A refusal changes nothing.
    ///
    /// [`apply`]: Self::apply
    pub(crate) fn optional_refusal(&self, op: &Op) -> Option<Reply> {
        let Op::Complete { handle, .. } = op else {
            return None;
        };
        let (told, fence) = (self.told[*handle], self.fences[*handle]);
        (!self.capabilities.fenced_seal && told > 0 && told < fence).then_some(Reply::Stale {
            caller: told,
            authoritative: fence,
        })
    }

    /// Apply `op` to the model and return what the backend must return.
    pub(crate) fn apply(&mut self, op: &Op) -> Reply {
        match op {
            Op::Write {
                handle,
                vnode,
                epoch,
                version,
                bytes,
            } => self.write(*handle, *vnode, *epoch, *version, bytes),
            Op::Read { vnode, epoch, .. } => {
                Reply::Read(self.partials.get(&(*epoch, *vnode)).cloned())
            }
            Op::ReadMany { epoch, vnodes, .. } => Reply::ReadMany(
                vnodes
                    .iter()
                    .map(|vnode| self.partials.get(&(*epoch, *vnode)).cloned())
                    .collect(),
            ),
            Op::RaiseThenWrite {
                handle,
                raise,
                above,
                vnode,
                epoch,
                bytes,
            } => {
                self.raise(*handle, *raise);
                self.write(*handle, *vnode, *epoch, raise + above, bytes)
            }
            Op::Complete {
                handle,
                epoch,
                vnodes,
            } => self.complete(*handle, *epoch, vnodes),
            Op::Prune { before, .. } => {
                self.prune(*before);
                Reply::Done
            }
        }
    }
}

/// Carry out `op` on the backend handles and return what they said.
pub(crate) async fn execute(handles: &[Arc<dyn StateBackend>], op: &Op) -> Reply {
    fn done<T>(result: Result<T, StateBackendError>, ok: impl FnOnce(T) -> Reply) -> Reply {
        result.map_or_else(Reply::from_error, ok)
    }
    match op {
        Op::Write {
            handle,
            vnode,
            epoch,
            version,
            bytes,
        } => done(
            handles[*handle]
                .write_partial(*vnode, *epoch, *version, Bytes::from(bytes.clone()))
                .await,
            |()| Reply::Done,
        ),
        Op::Read {
            handle,
            vnode,
            epoch,
        } => done(
            handles[*handle].read_partial(*vnode, *epoch).await,
            |value| Reply::Read(value.map(|b| b.to_vec())),
        ),
        Op::ReadMany {
            handle,
            epoch,
            vnodes,
        } => done(
            handles[*handle].read_partials(*epoch, vnodes).await,
            |values| Reply::ReadMany(values.into_iter().map(|v| v.map(|b| b.to_vec())).collect()),
        ),
        Op::RaiseThenWrite {
            handle,
            raise,
            above,
            vnode,
            epoch,
            bytes,
        } => {
            handles[*handle].set_authoritative_version(*raise);
            done(
                handles[*handle]
                    .write_partial(*vnode, *epoch, raise + above, Bytes::from(bytes.clone()))
                    .await,
                |()| Reply::Done,
            )
        }
        Op::Complete {
            handle,
            epoch,
            vnodes,
        } => done(
            handles[*handle].epoch_complete(*epoch, vnodes).await,
            Reply::Complete,
        ),
        Op::Prune { handle, before } => done(handles[*handle].prune_before(*before).await, |()| {
            Reply::Done
        }),
    }
}

/// Open [`HANDLES`] handles with distinct instance ids on `store`.
pub(crate) async fn open_handles(
    store: &dyn TestStore,
    tag: &str,
) -> Result<(Vec<String>, Vec<Arc<dyn StateBackend>>), String> {
    let ids: Vec<String> = (0..HANDLES).map(|i| format!("{tag}-{i}")).collect();
    let mut handles = Vec::with_capacity(HANDLES);
    for id in &ids {
        handles.push(
            store
                .open(id, VNODES)
                .await
                .map_err(|e| format!("open({id:?}) failed: {e}"))?,
        );
    }
    Ok((ids, handles))
}

/// Run `ops` against fresh handles on `store` and the model side by side;
/// after each step, `after_step` may compare more (recovery queries).
pub(crate) async fn run_sequence(
    store: &dyn TestStore,
    capabilities: Capabilities,
    ops: &[Op],
    check_recovery: bool,
) -> Checked {
    let (ids, handles) = open_handles(store, "model").await?;
    let mut model = Model::new(ids, capabilities);
    for (step, op) in ops.iter().enumerate() {
        let refusal = model.optional_refusal(op);
        let actual = execute(&handles, op).await;
        if refusal.as_ref() == Some(&actual) {
            // A best-effort refusal: nothing changed, in the model either.
            continue;
        }
        let expected = model.apply(op);
        ensure!(
            actual == expected,
            "step {step}: {op:?} returned {actual:?}, the model expects {expected:?}"
        );
        if check_recovery {
            check_recovery_queries(&handles[step % HANDLES], &model)
                .await
                .map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
        }
    }
    // Every key, through every handle: nothing changed that the model did
    // not change.
    for handle in &handles {
        for epoch in 0..EPOCHS {
            for vnode in 0..VNODES {
                let actual = handle
                    .read_partial(vnode, epoch)
                    .await
                    .map_err(|e| format!("final read of ({vnode}, {epoch}) failed: {e}"))?
                    .map(|b| b.to_vec());
                let expected = model.partials.get(&(epoch, vnode)).cloned();
                ensure!(
                    actual == expected,
                    "after the sequence, (vnode {vnode}, epoch {epoch}) holds {actual:?}, the model expects {expected:?}"
                );
            }
        }
    }
    Ok(())
}

/// `latest_committed_epoch` and `sealed_epochs` agree with the model.
pub(crate) async fn check_recovery_queries(
    handle: &Arc<dyn StateBackend>,
    model: &Model,
) -> Checked {
    let sealed = model.sealed();
    let latest = handle
        .latest_committed_epoch()
        .await
        .map_err(|e| format!("latest_committed_epoch failed: {e}"))?;
    ensure!(
        latest == sealed.last().copied(),
        "latest_committed_epoch() = {latest:?}, sealed epochs are {sealed:?}"
    );
    for after in [0, 1, EPOCHS / 2, EPOCHS] {
        let listed = handle
            .sealed_epochs(after)
            .await
            .map_err(|e| format!("sealed_epochs({after}) failed: {e}"))?;
        let expected: Vec<u64> = sealed.iter().copied().filter(|&e| e > after).collect();
        ensure!(
            listed == expected,
            "sealed_epochs({after}) = {listed:?}, expected {expected:?}"
        );
    }
    Ok(())
}
