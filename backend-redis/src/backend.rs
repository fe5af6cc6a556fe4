//! [`RedisBackend`]: a handle with its own instance id, and the
//! [`StateBackend`] implementation, in the trait's order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError, seal_outcome};
use redis::Value;
use tokio::sync::oneshot;

use crate::config::RedisConfig;
use crate::keys::{decimal, parse_decimal};
use crate::store::{Confirmation, RedisStore};
use crate::writer::{DirectWrite, PendingWrite, WriteOp};

/// Times a cluster gate checks the partials again because a prune began
/// meanwhile, before it gives up with an error.
const MAX_GATE_ATTEMPTS: usize = 8;

/// Test pause point: a cluster gate has checked the partials and is about to
/// run the seal script.
#[doc(hidden)]
pub const PAUSE_GATE_CHECKED: &str = "gate: partials checked";
/// Test pause point: a prune has deleted the partials and is about to
/// unregister.
#[doc(hidden)]
pub const PAUSE_PRUNE_PARTIALS_DELETED: &str = "prune: partials deleted";
/// Test pause point: a prune has registered and deleted the markers, and is
/// about to delete the partials.
#[doc(hidden)]
pub const PAUSE_PRUNE_REGISTERED: &str = "prune: registered";

/// Epochs one prune script removes from a group at most.
const PRUNE_EPOCHS_PER_CALL: u32 = 16;
/// A handle on a [`RedisStore`], with its own instance id.
pub struct RedisBackend {
    pub(crate) store: RedisStore,
    pub(crate) instance_id: String,
    pub(crate) limits: InputLimits,
    /// The fence this handle enforces: raised locally, and learned from the
    /// server whenever it refuses a write.
    pub(crate) fence: AtomicU64,
    /// The highest fence this handle has copied to every group.
    pub(crate) propagated: AtomicU64,
    /// The highest version this handle was told; a handle told less than
    /// the fence is a deposed leader and may not seal.
    pub(crate) told: AtomicU64,
}

impl RedisBackend {
    /// Connect with `config` and return a handle.
    pub async fn connect(
        config: &RedisConfig,
        instance_id: impl Into<String>,
        vnode_capacity: u32,
    ) -> Result<Self, StateBackendError> {
        RedisStore::connect(config)
            .await?
            .handle(instance_id, vnode_capacity)
            .await
    }

    /// The store this handle uses.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Run the seal script: with the listed partials to check (standalone),
    /// or with the prune count seen before the caller checked them itself
    /// (cluster).
    async fn seal_script(
        &self,
        epoch: u64,
        listed: &[(u32, Vec<u32>)],
        prunes: Option<&str>,
    ) -> Result<(Vec<Value>, Confirmation), StateBackendError> {
        let keys = &self.store.shared.keys;
        self.store
            .call_replicated(
                &format!("epoch_complete({epoch})"),
                true,
                |s| &s.seal,
                |call| {
                    call.key(keys.markers())
                        .key(keys.sealed())
                        .key(keys.fence())
                        .key(keys.pruning())
                        .key(keys.prunes());
                    call.arg(decimal(epoch))
                        .arg(&self.instance_id)
                        .arg(decimal(self.told.load(Ordering::Acquire)))
                        .arg(self.store.touch())
                        .arg(prunes.unwrap_or(""));
                    for (group, vnodes) in listed {
                        call.key(keys.epoch_partials(*group, epoch));
                        call.arg(vnodes.len()).arg(vnodes.as_slice());
                    }
                },
            )
            .await
    }

    /// What the seal script's reply means for the caller.
    async fn seal_outcome(
        &self,
        epoch: u64,
        what: &str,
        (reply, confirmation): (Vec<Value>, Confirmation),
    ) -> Result<bool, StateBackendError> {
        match reply.as_slice() {
            [Value::Int(0)] => Ok(false),
            [Value::Int(2), fence] => {
                let fence: String = redis::from_redis_value_ref(fence).map_err(|e| {
                    StateBackendError::Serialization(format!("{what}: unreadable fence: {e}"))
                })?;
                Err(self.deposed(parse_decimal(&fence, "the fence key")?))
            }
            [Value::Int(1), committer] => {
                confirmation.require()?;
                let committer: String = redis::from_redis_value_ref(committer).map_err(|e| {
                    StateBackendError::Serialization(format!(
                        "the commit marker of epoch {epoch} is unreadable: {e}"
                    ))
                })?;
                seal_outcome(&committer, &self.instance_id)
            }
            other => Err(StateBackendError::Serialization(format!(
                "{what}: unexpected reply from the seal script: {other:?}"
            ))),
        }
    }

    /// The refusal of a seal by a handle told less than `fence`.
    fn deposed(&self, fence: u64) -> StateBackendError {
        StateBackendError::StaleVersion {
            caller: self.told.load(Ordering::Acquire),
            authoritative: fence,
        }
    }

    /// Cluster gate, phase one: every listed vnode has a partial, asked of
    /// each group in parallel.
    async fn all_present(
        &self,
        epoch: u64,
        listed: &[(u32, Vec<u32>)],
    ) -> Result<bool, StateBackendError> {
        let what = format!("epoch_complete({epoch})");
        let present = self
            .store
            .in_groups(&what, listed.iter().cloned(), |store, (group, vnodes)| {
                let what = what.clone();
                async move {
                    let keys = &store.shared.keys;
                    let present: u8 = store
                        .call(
                            &what,
                            |s| &s.present,
                            |call| {
                                call.key(keys.epoch_partials(group, epoch))
                                    .arg(vnodes.as_slice());
                            },
                        )
                        .await?;
                    Ok(present == 1)
                }
            })
            .await?;
        Ok(present.into_iter().all(|p| p))
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("server", &self.store.shared.server)
            .field("namespace", &self.store.shared.namespace)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StateBackend for RedisBackend {
    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        assignment_version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.limits.check_write(vnode, &bytes)?;
        // The server decides, after any pending raise of this handle has
        // reached it, so a refusal always names the fence actually in force.
        let carried = self.carry_fence().await?;
        let shared = &self.store.shared;
        let group = shared.keys.group_of(vnode);
        let op = WriteOp {
            vnode,
            epoch,
            version: assignment_version,
            carried,
            bytes,
        };
        let in_flight = &shared.direct_writes[group as usize];
        let outcome = if in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            let _direct = DirectWrite(in_flight);
            self.store.write_one(group, &op).await?
        } else {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            let (reply, answer) = oneshot::channel();
            let stopped = || {
                StateBackendError::Io(format!(
                    "redis write_partial({vnode}, {epoch}): the group's writer task stopped"
                ))
            };
            shared.writers[group as usize]
                .send(PendingWrite { op, reply })
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())??
        };
        match outcome {
            None => Ok(()),
            Some(fence) => {
                self.fence.fetch_max(fence, Ordering::AcqRel);
                Err(StateBackendError::StaleVersion {
                    caller: assignment_version,
                    authoritative: fence,
                })
            }
        }
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.limits.check_vnode(vnode)?;
        let keys = &self.store.shared.keys;
        let hash = keys.epoch_partials(keys.group_of(vnode), epoch);
        let value: Option<Vec<u8>> = self
            .store
            .query(
                &format!("read_partial({vnode}, {epoch})"),
                redis::cmd("HGET").arg(hash).arg(vnode).clone(),
            )
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        self.limits.check_gate(epoch, vnodes)?;
        self.carry_fence().await?;
        let keys = &self.store.shared.keys;
        let mut by_group: Vec<Vec<u32>> = vec![Vec::new(); keys.groups as usize];
        for &vnode in vnodes {
            by_group[keys.group_of(vnode) as usize].push(vnode);
        }
        let what = format!("epoch_complete({epoch})");
        let listed: Vec<(u32, Vec<u32>)> = by_group
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(g, v)| (g as u32, v))
            .collect();
        if !self.store.shared.cluster {
            // One script checks the partials and seals, atomically.
            let reply = self.seal_script(epoch, &listed, None).await?;
            return self.seal_outcome(epoch, &what, reply).await;
        }
        // Cluster: the partials live in other slots than the marker, so
        // they are checked first, then the seal script makes sure no prune
        // began in between (else it checks again).
        for _ in 0..MAX_GATE_ATTEMPTS {
            let (fence, prunes): (Option<String>, Option<String>) = self
                .store
                .query(
                    &what,
                    redis::cmd("MGET")
                        .arg(keys.fence())
                        .arg(keys.prunes())
                        .clone(),
                )
                .await?;
            let fence = fence
                .map(|f| parse_decimal(&f, "the fence key"))
                .transpose()?
                .unwrap_or(0);
            let told = self.told.load(Ordering::Acquire);
            if told > 0 && told < fence {
                return Err(self.deposed(fence));
            }
            if !self.all_present(epoch, &listed).await? {
                return Ok(false);
            }
            self.store.shared.pauses.at(PAUSE_GATE_CHECKED).await;
            let prunes = prunes.unwrap_or_else(|| "0".to_owned());
            let reply = self.seal_script(epoch, &[], Some(&prunes)).await?;
            if !matches!(reply.0.as_slice(), [Value::Int(3)]) {
                return self.seal_outcome(epoch, &what, reply).await;
            }
        }
        Err(StateBackendError::Io(format!(
            "redis {what} at {}: prunes kept beginning while the gate checked the partials \
             ({MAX_GATE_ATTEMPTS} attempts)",
            self.store.shared.server
        )))
    }

    async fn prune_before(&self, before: u64) -> Result<(), StateBackendError> {
        if before == 0 {
            return Ok(());
        }
        let store = &self.store;
        let keys = &store.shared.keys;
        let what = format!("prune_before({before})");
        // Allowed in every group first, then registered, so that no seal
        // below the bound can land while this prune runs; then markers, then
        // partials, so that a prune cut short anywhere never leaves a marker
        // without its partials.
        let id = prune_id();
        store
            .in_groups(&what, 0..keys.groups, |store, group| {
                let command = redis::cmd("HSET")
                    .arg(keys.group_pruning(group))
                    .arg(&id)
                    .arg(decimal(before))
                    .clone();
                let what = what.clone();
                async move { store.query::<Value>(&what, command).await }
            })
            .await?;
        let older: Vec<(String, String)> = store
            .call(
                &what,
                |s| &s.prune_begin,
                |call| {
                    call.key(keys.pruning())
                        .key(keys.prunes())
                        .arg(&id)
                        .arg(decimal(before));
                },
            )
            .await?;
        loop {
            let removed: u32 = store
                .call(
                    &what,
                    |s| &s.prune_markers,
                    |call| {
                        call.key(keys.markers())
                            .key(keys.sealed())
                            .arg(decimal(before))
                            .arg(1024);
                    },
                )
                .await?;
            if removed < 1024 {
                break;
            }
        }
        store.shared.pauses.at(PAUSE_PRUNE_REGISTERED).await;
        store
            .in_groups(&what, 0..keys.groups, |store, group| {
                let (what, id) = (what.clone(), id.clone());
                async move {
                    let keys = &store.shared.keys;
                    loop {
                        // -1: a later prune finished this one (everything
                        // below the bound was deleted after this prune
                        // began), and what the group holds below the bound
                        // now is not ours.
                        let removed: i64 = store
                            .call(
                                &what,
                                |s| &s.prune_group,
                                |call| {
                                    call.key(keys.group_epochs(group))
                                        .key(keys.group_pruning(group))
                                        .arg(decimal(before))
                                        .arg(PRUNE_EPOCHS_PER_CALL)
                                        .arg(keys.group_prefix(group))
                                        .arg(&id);
                                },
                            )
                            .await?;
                        if removed < i64::from(PRUNE_EPOCHS_PER_CALL) {
                            return Ok(());
                        }
                    }
                }
            })
            .await?;
        store.shared.pauses.at(PAUSE_PRUNE_PARTIALS_DELETED).await;
        // This prune is done, and so is every older unfinished prune whose
        // bound it covers (its pruner died, or is slow): everything below
        // those bounds was deleted after they began. Their right to delete
        // goes first, in every group, so that once they are unregistered
        // (and seals below their bounds are taken again) none of them can
        // delete a partial, however late it wakes up.
        let mut done = vec![id];
        done.extend(
            older
                .into_iter()
                .filter(|(_, bound)| bound.as_str() <= decimal(before).as_str())
                .map(|(id, _)| id),
        );
        store
            .in_groups(&what, 0..keys.groups, |store, group| {
                let command = redis::cmd("HDEL")
                    .arg(keys.group_pruning(group))
                    .arg(done.as_slice())
                    .clone();
                let what = what.clone();
                async move { store.query::<Value>(&what, command).await }
            })
            .await?;
        let _: i64 = store
            .call(
                &what,
                |s| &s.prune_end,
                |call| {
                    call.key(keys.pruning())
                        .key(keys.prunes())
                        .arg(done.as_slice());
                },
            )
            .await?;
        Ok(())
    }

    fn set_authoritative_version(&self, version: u64) {
        self.told.fetch_max(version, Ordering::AcqRel);
        self.fence.fetch_max(version, Ordering::AcqRel);
    }

    fn authoritative_version(&self) -> u64 {
        self.fence.load(Ordering::Acquire)
    }

    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        let latest: Vec<String> = self
            .store
            .query(
                "latest_committed_epoch()",
                redis::cmd("ZREVRANGEBYLEX")
                    .arg(self.store.shared.keys.sealed())
                    .arg("+")
                    .arg("-")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1)
                    .clone(),
            )
            .await?;
        latest
            .first()
            .map(|e| parse_decimal(e, "the sealed index"))
            .transpose()
    }

    async fn sealed_epochs(&self, after: u64) -> Result<Vec<u64>, StateBackendError> {
        let sealed: Vec<String> = self
            .store
            .query(
                &format!("sealed_epochs({after})"),
                redis::cmd("ZRANGEBYLEX")
                    .arg(self.store.shared.keys.sealed())
                    .arg(format!("({}", decimal(after)))
                    .arg("+")
                    .clone(),
            )
            .await?;
        sealed
            .iter()
            .map(|e| parse_decimal(e, "the sealed index"))
            .collect()
    }

    async fn partials(&self, epoch: u64) -> Result<Option<Vec<u32>>, StateBackendError> {
        // One hash per group and epoch, each in its group's slot: asked of
        // every group (in parallel, so of every shard of a cluster).
        let what = format!("partials({epoch})");
        let keys = &self.store.shared.keys;
        let groups = self
            .store
            .in_groups(&what, 0..keys.groups, |store, group| {
                let what = what.clone();
                async move {
                    let hash = store.shared.keys.epoch_partials(group, epoch);
                    let fields: Vec<String> = store
                        .query(&what, redis::cmd("HKEYS").arg(hash).clone())
                        .await?;
                    fields
                        .iter()
                        .map(|field| {
                            field.parse::<u32>().map_err(|_| {
                                StateBackendError::Serialization(format!(
                                    "redis {what}: group {group} holds a partial under \
                                     {field:?}, which is not a vnode"
                                ))
                            })
                        })
                        .collect::<Result<Vec<u32>, _>>()
                }
            })
            .await?;
        let mut vnodes: Vec<u32> = groups.into_iter().flatten().collect();
        vnodes.sort_unstable();
        Ok(Some(vnodes))
    }

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.set_authoritative_version(version);
        self.carry_fence().await.map(drop)
    }

    /// One `HMGET` per vnode group (the group's hash of the epoch), the
    /// groups at once: on a cluster each goes to its own primary.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        let keys = &self.store.shared.keys;
        let mut by_group: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for &vnode in vnodes {
            self.limits.check_vnode(vnode)?;
            by_group
                .entry(keys.group_of(vnode))
                .or_default()
                .push(vnode);
        }
        let what = format!("read_partials({epoch}, {} vnodes)", vnodes.len());
        let answers = self
            .store
            .in_groups(&what, by_group, |store, (group, asked)| {
                let hash = store.shared.keys.epoch_partials(group, epoch);
                let what = format!("read_partials({epoch}): group {group}");
                async move {
                    let values: Vec<Option<Vec<u8>>> = store
                        .query(&what, redis::cmd("HMGET").arg(hash).arg(&asked).clone())
                        .await?;
                    Ok(asked.into_iter().zip(values).collect::<Vec<_>>())
                }
            })
            .await?;
        // Bytes, so a vnode asked twice shares one buffer.
        let found: HashMap<u32, Bytes> = answers
            .into_iter()
            .flatten()
            .filter_map(|(vnode, value)| value.map(|v| (vnode, Bytes::from(v))))
            .collect();
        Ok(vnodes
            .iter()
            .map(|vnode| found.get(vnode).cloned())
            .collect())
    }
}

/// An id for one prune, unique across processes and time.
fn prune_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}.{nanos}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
