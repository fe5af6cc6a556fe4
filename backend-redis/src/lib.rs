//! A [`StateBackend`] on Redis or Redis Cluster, for engines that already
//! run Redis and want low-latency state shared by several nodes.
//!
//! # Layout
//!
//! One store is one namespace `NS`. Its vnodes are split into `G` groups
//! (`vnode % G`); each group's keys share the hash tag `{NS/gK}`, so they
//! live in one cluster slot and every per-write atomic step is a single-slot
//! script, while different groups spread over the cluster's shards. The
//! namespace-wide keys share the tag `{NS}`. In keys, `NS` is the namespace
//! with `%`, `/`, `{` and `}` percent-escaped, so a namespace's tag holds no
//! `/` and a group's exactly one: no two namespaces share a key, whatever
//! their names.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `laminar:{NS}:layout` | string | `G`, fixed when the namespace is created |
//! | `laminar:{NS}:fence` | string | the fence (20-digit decimal) |
//! | `laminar:{NS}:markers` | hash | sealed epoch → committer instance id |
//! | `laminar:{NS}:sealed` | sorted set (lex) | sealed epochs |
//! | `laminar:{NS}:pruning` | hash | unfinished prunes: id → bound |
//! | `laminar:{NS}:prunes` | string | how many prunes began |
//! | `laminar:{NS/gK}:fence` | string | group K's copy of the fence |
//! | `laminar:{NS/gK}:p:EPOCH` | hash | vnode → partial bytes, for group K's vnodes in EPOCH |
//! | `laminar:{NS/gK}:epochs` | sorted set (lex) | epochs group K holds |
//!
//! Epochs and versions are written as 20-digit zero-padded decimals: they
//! sort and compare as strings exactly as `u64`s do, which Lua's doubles
//! cannot do above 2^53.
//!
//! # Operations and round trips
//!
//! - `write_partial`: one script on the vnode's group checks the group's
//!   fence and sets the partial's field (and, for an epoch's first partial
//!   in the group, the epoch index), atomically: 1 round trip. Concurrent
//!   writes to one group share that script call: each group has a writer
//!   task that sends everything queued as one batch and answers each write
//!   on its own (a refused write fails alone).
//!   After a raise, the raising handle first copies the fence to every group
//!   (G small scripts, in parallel), then to the namespace key (one more),
//!   so that every group refuses stale writers before the raise is
//!   acknowledged (see "The fence").
//! - `read_partial`: one `HGET`.
//! - `epoch_complete`: standalone, one script checks every listed vnode
//!   (`HEXISTS`) and creates the marker only if absent: 1 round trip
//!   whatever the number of vnodes. Cluster: one `MGET` (fence and prune
//!   count), one presence script per group in parallel, then the marker
//!   script: 3 round trips.
//! - `prune_before`: a script registers the prune; the markers below the
//!   bound go, 1,024 per script; then per group, a script pops up to 16
//!   epochs below the bound from the group's epoch index and unlinks their
//!   hashes, one key per group and epoch (no keyspace scan); a last script
//!   unregisters (see "Pruning and sealing").
//!
//! # The fence
//!
//! Every group keeps its own copy of the fence, which its write script
//! checks atomically with the write; the namespace key is where a new
//! handle learns the fence and what the seal script checks. A raise is
//! copied to every group first and to the namespace key last, and a handle
//! takes the namespace key's value as already copied everywhere. So the
//! namespace key never runs ahead of a group: a raiser that dies, times out
//! or cannot reach one shard half-way leaves it where it was, its raise is
//! not acknowledged, and the next raise to that version (by any handle)
//! copies it to every group again. A raise is acknowledged
//! ([`StateBackend::persist_authoritative_version`], or the next write or
//! seal after [`StateBackend::set_authoritative_version`]) only once every
//! group holds it.
//!
//! # Durability
//!
//! A write is acknowledged when the server answers. It survives a server
//! crash only if the server runs with `appendonly yes` and
//! `appendfsync always` (the reply is sent after the AOF is fsynced); with
//! `everysec`, up to a second of acknowledged writes can be lost. The test
//! servers run with `always`, and P10 is checked by killing and restarting
//! them.
//!
//! # Failover
//!
//! Redis replicates asynchronously: a primary answers before its replicas
//! have the change. When a replica is promoted (Sentinel, a managed
//! service, a cluster's failover), whatever it had not received is gone: an
//! acknowledged partial, a fence raise (a zombie writes again), or a seal
//! (a second instance seals the same epoch: two `Ok(true)`).
//!
//! [`RedisConfig::replicas`] (`?replicas=N&replica_timeout_ms=MS`) closes
//! that for the steps that matter most: after a seal or a fence raise, the
//! backend sends `WAIT N MS` and acknowledges only if `N` replicas confirmed
//! they received it; otherwise the caller gets [`StateBackendError::Io`]
//! (the step may have applied on the primary; a retry settles it, and a
//! retried seal comes back as won). With
//! [`RedisConfig::replicate_writes`] (`&replicate_writes=true`), writes wait
//! too. What each setting survives:
//!
//! | setting | a promoted replica keeps |
//! |---|---|
//! | `replicas=0` (default) | nothing is promised: only what happened to reach it |
//! | `replicas=N` | every acknowledged seal and fence raise, if the promoted replica is one of the `N` that confirmed (promote the most up-to-date replica, as Sentinel does; with `N` = all replicas, any) |
//! | `replicas=N&replicate_writes=true` | the same, and every acknowledged write |
//!
//! `WAIT` confirms that replicas *received* a change, not that they wrote
//! it to disk: a replica that crashes at the same time as the primary can
//! still lose it (Redis 7.2's `WAITAOF` would close that; the servers this
//! project is tested on are 7.0). On a cluster, `WAIT` goes to every primary
//! and the smallest count counts. While a `WAIT` is pending, other commands
//! on the same multiplexed connection queue behind it, so with replicas
//! set, every seal and raise costs at least one replication round trip.
//! Tested with a real primary and replica partitioned by a relay, the
//! primary SIGKILLed and the replica promoted (`tests/failover.rs`).
//!
//! # Eviction
//!
//! A server whose `maxmemory-policy` is `allkeys-*` may evict any key,
//! which silently deletes fences, markers and partials. [`RedisStore::connect`]
//! reads every primary's policy (`INFO memory`) and refuses such a server
//! unless [`RedisConfig::allow_eviction`] is set, in which case it logs a
//! warning (`tracing`) and opens. `noeviction` (then a full server refuses
//! writes with a clear error) and `volatile-*` policies (this store sets no
//! TTL) are safe. A policy changed after connect is not seen.
//!
//! # Pruning and sealing
//!
//! No sealed epoch lacks its partials, even when a prune races a seal of
//! the same epoch or dies half-way. A prune first registers itself
//! (`laminar:{NS}:pruning`, id → bound, and a count of prunes begun,
//! `laminar:{NS}:prunes`), then deletes the markers below its bound, then
//! the partials, then unregisters. The seal script answers `false` for an
//! epoch below an unfinished prune's bound (a seal ordered after that prune
//! finds no partials), and on a cluster, where the partials are checked in
//! their own slots before the seal script runs in the namespace's, it also
//! checks that no prune began since the caller read the count, else the
//! gate checks the partials again (at most 8 times). A seal ordered before
//! the prune loses its marker to it.
//!
//! A prune that dies half-way (its process killed, its future dropped)
//! stays registered: seals of epochs below its bound answer `false` until a
//! later `prune_before` of that bound or higher finishes, which unregisters
//! the older prunes it covers. Markers go before partials, so whatever
//! point it died at, every marker left has its partials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackend, StateBackendError};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use tokio::sync::{Notify, mpsc, oneshot};

/// The default largest partial: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;
/// The default bound on every network call.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The default wait for replicas, when [`RedisConfig::replicas`] is set.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(1);
/// Vnode groups of a new standalone namespace.
pub const DEFAULT_STANDALONE_GROUPS: u32 = 1;
/// Vnode groups of a new cluster namespace: enough to spread over the
/// shards of a typical cluster.
pub const DEFAULT_CLUSTER_GROUPS: u32 = 16;

/// Writes one batch script carries at most.
const MAX_BATCH_WRITES: usize = 256;
/// Payload bytes one batch script carries at most (the first write always
/// goes in, whatever its size).
const MAX_BATCH_BYTES: usize = 8 << 20;

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

/// Epochs one prune script removes from a group at most.
const PRUNE_EPOCHS_PER_CALL: u32 = 16;

/// The key names of one namespace.
///
/// The scheme is injective: the namespace is escaped (`%`, `/`, `{` and `}`
/// become `%25`, `%2F`, `%7B`, `%7D`), so a namespace's hash tag `{NS}`
/// holds no `/` and a group's tag `{NS/gK}` holds exactly one. No key of
/// one namespace can be a key of another, whatever the names (without the
/// escape, namespace `x/g1` would share its fence key with group 1 of `x`).
#[derive(Debug, Clone)]
struct Keys {
    /// The escaped namespace, as it appears in keys.
    tag: String,
    groups: u32,
}

impl Keys {
    fn new(namespace: &str, groups: u32) -> Self {
        Self {
            tag: escape_namespace(namespace),
            groups,
        }
    }
    fn layout(&self) -> String {
        format!("laminar:{{{}}}:layout", self.tag)
    }
    fn fence(&self) -> String {
        format!("laminar:{{{}}}:fence", self.tag)
    }
    fn markers(&self) -> String {
        format!("laminar:{{{}}}:markers", self.tag)
    }
    fn sealed(&self) -> String {
        format!("laminar:{{{}}}:sealed", self.tag)
    }
    /// Unfinished prunes: prune id → bound.
    fn pruning(&self) -> String {
        format!("laminar:{{{}}}:pruning", self.tag)
    }
    /// How many prunes ever began: a seal that checked partials before a
    /// prune began must check them again.
    fn prunes(&self) -> String {
        format!("laminar:{{{}}}:prunes", self.tag)
    }
    fn group_of(&self, vnode: u32) -> u32 {
        vnode % self.groups
    }
    /// Every key of group `group` starts with this.
    fn group_prefix(&self, group: u32) -> String {
        format!("laminar:{{{}/g{group}}}:", self.tag)
    }
    fn group_fence(&self, group: u32) -> String {
        format!("{}fence", self.group_prefix(group))
    }
    /// The hash of group `group`'s partials in `epoch`.
    fn epoch_partials(&self, group: u32, epoch: u64) -> String {
        format!("{}p:{}", self.group_prefix(group), decimal(epoch))
    }
    fn group_epochs(&self, group: u32) -> String {
        format!("{}epochs", self.group_prefix(group))
    }
}

/// The namespace as it appears inside a hash tag: `%`, `/`, `{` and `}`
/// percent-escaped, so the tag has no brace (which would end it early) and
/// no `/` (which separates the namespace from a group number).
fn escape_namespace(namespace: &str) -> String {
    let mut escaped = String::with_capacity(namespace.len());
    for c in namespace.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '/' => escaped.push_str("%2F"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A `u64` as 20 zero-padded digits, so string order is numeric order.
fn decimal(value: u64) -> String {
    format!("{value:020}")
}

fn parse_decimal(text: &str, what: &str) -> Result<u64, StateBackendError> {
    text.parse().map_err(|_| {
        StateBackendError::Serialization(format!("{what} holds {text:?}, not a number"))
    })
}

/// One write to one group: the batch script's work for a single write,
/// without its bookkeeping, for the common lone writer. KEYS: group fence,
/// epoch index, epoch hash. ARGV: carried fence, version, vnode, epoch,
/// bytes. Returns the group's fence; the write happened unless the version
/// is below it.
const WRITE_ONE_SCRIPT: &str = r"
local fence = redis.call('GET', KEYS[1]) or '00000000000000000000'
if ARGV[1] > fence then
  redis.call('SET', KEYS[1], ARGV[1])
  fence = ARGV[1]
end
if ARGV[2] < fence then
  return fence
end
if redis.call('HSET', KEYS[3], ARGV[3], ARGV[5]) == 1 and redis.call('HLEN', KEYS[3]) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[4])
end
return fence
";

/// A batch of writes to one group. Raises the group's fence to the highest
/// fence the batch carries, then checks and applies each write on its own,
/// indexing an epoch when it gets its first partial in the group.
/// KEYS: group fence, epoch index, then the epoch hashes the batch touches.
/// ARGV: carried fence, then per write: version, vnode, epoch, index of its
/// hash in KEYS, bytes. Returns {fence, {1 written | 0 refused, ...}}.
const WRITE_SCRIPT: &str = r"
local fence = redis.call('GET', KEYS[1]) or '00000000000000000000'
if ARGV[1] > fence then
  redis.call('SET', KEYS[1], ARGV[1])
  fence = ARGV[1]
end
local written = {}
for at = 2, #ARGV, 5 do
  if ARGV[at] < fence then
    written[#written + 1] = 0
  else
    local hash = KEYS[tonumber(ARGV[at + 3])]
    if redis.call('HSET', hash, ARGV[at + 1], ARGV[at + 4]) == 1 and redis.call('HLEN', hash) == 1 then
      redis.call('ZADD', KEYS[2], 0, ARGV[at + 2])
    end
    written[#written + 1] = 1
  end
end
return {fence, written}
";

/// Raises one fence key, never lowers it. Returns the fence. With ARGV[2]
/// = '1' it rewrites an unchanged fence, so a `WAIT` after it covers the
/// value.
const RAISE_SCRIPT: &str = r"
local fence = redis.call('GET', KEYS[1]) or '00000000000000000000'
if ARGV[1] > fence then
  fence = ARGV[1]
elseif ARGV[2] ~= '1' then
  return fence
end
redis.call('SET', KEYS[1], fence)
return fence
";

/// The commit gate. KEYS: markers, sealed, the namespace fence, unfinished
/// prunes, the prune count, then (standalone only) the epoch hash of each
/// group. ARGV: epoch, instance id, the version the handle was told, '1' to
/// rewrite an existing marker (so a `WAIT` after it covers it), the prune
/// count the caller saw before checking the partials itself ('' when this
/// script checks them), then per group in KEYS order: a count and that many
/// vnodes. Returns {2, fence} if the handle was told a version below the
/// fence (a deposed leader may not seal), {3} if a prune began since the
/// caller checked the partials (check again), {0} if a partial is missing or
/// an unfinished prune covers the epoch (a seal ordered after that prune
/// finds no partials), else {1, committer}, creating the marker if there was
/// none.
const SEAL_SCRIPT: &str = r"
local fence = redis.call('GET', KEYS[3]) or '00000000000000000000'
if ARGV[3] ~= '00000000000000000000' and ARGV[3] < fence then
  return {2, fence}
end
if ARGV[5] ~= '' and (redis.call('GET', KEYS[5]) or '0') ~= ARGV[5] then
  return {3}
end
for _, bound in ipairs(redis.call('HVALS', KEYS[4])) do
  if ARGV[1] < bound then return {0} end
end
local at = 6
for i = 6, #KEYS do
  local count = tonumber(ARGV[at])
  for j = at + 1, at + count do
    if redis.call('HEXISTS', KEYS[i], ARGV[j]) == 0 then return {0} end
  end
  at = at + count + 1
end
local committer = redis.call('HGET', KEYS[1], ARGV[1])
if committer then
  if ARGV[4] == '1' then redis.call('HSET', KEYS[1], ARGV[1], committer) end
  return {1, committer}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {1, ARGV[2]}
";

/// Cluster gate, phase one, for one group: 1 if every vnode in ARGV has a
/// field in the epoch hash KEYS[1], else 0.
const PRESENT_SCRIPT: &str = r"
for _, vnode in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], vnode) == 0 then return 0 end
end
return 1
";

/// Removes up to ARGV[2] epochs below ARGV[1] from one group. KEYS[1] is the
/// group's epoch index; ARGV[3] the group's key prefix. Returns how many
/// epochs it removed.
const PRUNE_GROUP_SCRIPT: &str = r"
local epochs = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, epoch in ipairs(epochs) do
  redis.call('UNLINK', ARGV[3] .. 'p:' .. epoch)
  redis.call('ZREM', KEYS[1], epoch)
end
return #epochs
";

/// Registers a prune before it deletes anything. KEYS: unfinished prunes,
/// the prune count. ARGV: prune id, bound. Returns the ids of the prunes
/// that were unfinished before it.
const PRUNE_BEGIN_SCRIPT: &str = r"
local older = redis.call('HKEYS', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return older
";

/// Unregisters a finished prune, and any older unfinished prune whose bound
/// it covers (its pruner died: everything it would delete is deleted).
/// KEYS: unfinished prunes. ARGV: prune id, bound, then the ids that were
/// unfinished when this prune began.
const PRUNE_END_SCRIPT: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
for at = 3, #ARGV do
  local bound = redis.call('HGET', KEYS[1], ARGV[at])
  if bound and bound <= ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[at]) end
end
return 1
";

/// Removes up to ARGV[2] markers below ARGV[1]. KEYS: markers, sealed.
const PRUNE_MARKERS_SCRIPT: &str = r"
local epochs = redis.call('ZRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, epoch in ipairs(epochs) do
  redis.call('HDEL', KEYS[1], epoch)
  redis.call('ZREM', KEYS[2], epoch)
end
return #epochs
";

/// Records the namespace's group count, or returns the one recorded.
const LAYOUT_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// The compiled scripts, loaded once per server and called by SHA.
struct Scripts {
    write: Script,
    write_one: Script,
    raise: Script,
    seal: Script,
    present: Script,
    prune_group: Script,
    prune_markers: Script,
    prune_begin: Script,
    prune_end: Script,
    layout: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            write: Script::new(WRITE_SCRIPT),
            write_one: Script::new(WRITE_ONE_SCRIPT),
            raise: Script::new(RAISE_SCRIPT),
            seal: Script::new(SEAL_SCRIPT),
            present: Script::new(PRESENT_SCRIPT),
            prune_group: Script::new(PRUNE_GROUP_SCRIPT),
            prune_markers: Script::new(PRUNE_MARKERS_SCRIPT),
            prune_begin: Script::new(PRUNE_BEGIN_SCRIPT),
            prune_end: Script::new(PRUNE_END_SCRIPT),
            layout: Script::new(LAYOUT_SCRIPT),
        }
    }
}

/// How to reach the server and which namespace to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
    /// Treat `url` (and `extra_nodes`) as seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// More cluster seed nodes, as URLs.
    pub extra_nodes: Vec<String>,
    /// The namespace: every key of this store carries it.
    pub namespace: String,
    /// Vnode groups for a new namespace; an existing namespace keeps its own.
    pub groups: Option<u32>,
    /// The bound on every network call.
    pub operation_timeout: Duration,
    /// The largest partial, in bytes.
    pub max_payload_len: usize,
    /// Replicas that must hold a seal or a fence raise (and, with
    /// [`replicate_writes`](Self::replicate_writes), a write) before it is
    /// acknowledged: `WAIT replicas replica_timeout` after the step. `0`
    /// (the default) acknowledges what the primary applied, which a
    /// failover to a replica that had not received it loses. See the crate
    /// docs, "Failover".
    pub replicas: u32,
    /// How long a step waits for [`replicas`](Self::replicas); a step not
    /// confirmed by then is answered with [`StateBackendError::Io`] (it
    /// may have applied on the primary: its outcome is uncertain, and a
    /// retry settles it).
    pub replica_timeout: Duration,
    /// Wait for [`replicas`](Self::replicas) after writes too, not only
    /// after seals and raises.
    pub replicate_writes: bool,
    /// Open even on a server whose `maxmemory-policy` can evict any key
    /// (`allkeys-*`), which can silently delete fences, markers and
    /// partials. Off by default: such a server is refused at connect.
    pub allow_eviction: bool,
}

impl RedisConfig {
    /// Defaults for a standalone server at `url`, namespace `namespace`.
    pub fn new(url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            extra_nodes: Vec::new(),
            namespace: namespace.into(),
            groups: None,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
            replicas: 0,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            replicate_writes: false,
            allow_eviction: false,
        }
    }

    /// Parse `redis://host:port/?namespace=NS` (or `rediss://`), with
    /// optional `cluster=true`, `nodes=host:port,host:port`, `groups=N`,
    /// `timeout_ms=MS`, `max_payload_len=BYTES`, `replicas=N`,
    /// `replica_timeout_ms=MS`, `replicate_writes=true` and
    /// `allow_eviction=true`. Other query settings are passed to the redis
    /// client.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        let bad =
            |why: String| StateBackendError::Serialization(format!("bad redis URL {url:?}: {why}"));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let scheme = base.split_once("://").map_or("", |(s, _)| s);
        if scheme != "redis" && scheme != "rediss" {
            return Err(bad("the scheme must be redis:// or rediss://".into()));
        }
        let mut config = Self::new(base, "laminar");
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = |value: &str| match value {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(bad(format!("{key}={value} is not true or false"))),
            };
            let number = |what: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{what}={value} is not a number")))
            };
            match key {
                "namespace" | "prefix" if !value.is_empty() => config.namespace = value.to_owned(),
                "cluster" => config.cluster = flag(value)?,
                "nodes" => {
                    config.extra_nodes = value
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(|node| format!("{scheme}://{node}"))
                        .collect();
                }
                "groups" => {
                    let groups = u32::try_from(number("groups")?)
                        .map_err(|_| bad("groups is too large".into()))?;
                    if groups == 0 {
                        return Err(bad("groups must be at least 1".into()));
                    }
                    config.groups = Some(groups);
                }
                "timeout_ms" => {
                    config.operation_timeout = Duration::from_millis(number("timeout_ms")?)
                }
                "replicas" => {
                    config.replicas = u32::try_from(number("replicas")?)
                        .map_err(|_| bad("replicas is too large".into()))?;
                }
                "replica_timeout_ms" => {
                    let ms = number("replica_timeout_ms")?;
                    if ms == 0 {
                        return Err(bad("replica_timeout_ms must be at least 1".into()));
                    }
                    config.replica_timeout = Duration::from_millis(ms);
                }
                "replicate_writes" => config.replicate_writes = flag(value)?,
                "allow_eviction" => config.allow_eviction = flag(value)?,
                "max_payload_len" => {
                    config.max_payload_len = usize::try_from(number("max_payload_len")?)
                        .map_err(|_| bad("max_payload_len is too large".into()))?;
                }
                _ => passed.push(pair),
            }
        }
        if !passed.is_empty() {
            config.url = format!("{base}?{}", passed.join("&"));
        }
        Ok(config)
    }
}

/// A multiplexed, self-reconnecting connection to a server or a cluster.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// One namespace on one server or cluster: shared by the handles opened
/// from it (they share its connection).
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// One queue per vnode group, drained by that group's writer task.
    writers: Vec<mpsc::UnboundedSender<PendingWrite>>,
    /// Per vnode group: direct writes in flight (see [`group_writer`]).
    direct_writes: Vec<AtomicU64>,
    connection: Connection,
    /// The namespace as the user named it.
    namespace: String,
    keys: Keys,
    cluster: bool,
    scripts: Scripts,
    timeout: Duration,
    max_payload_len: usize,
    server: String,
    replicas: u32,
    replica_timeout: Duration,
    replicate_writes: bool,
    /// The `maxmemory-policy` of every primary, as found at connect.
    eviction_policies: Vec<String>,
    pauses: Pauses,
}

impl RedisStore {
    /// Connect and check (or record) the namespace's layout.
    ///
    /// Spawns one writer task per vnode group on the current tokio runtime
    /// (they batch concurrent writes and end when the store is dropped), so
    /// use the store on the runtime that created it.
    pub async fn connect(config: &RedisConfig) -> Result<Self, StateBackendError> {
        let server = config
            .url
            .split('@')
            .next_back()
            .unwrap_or(&config.url)
            .to_owned();
        let connect_error = |e: RedisError| {
            StateBackendError::Io(format!("cannot connect to redis at {server}: {e}"))
        };
        let connection = if config.cluster {
            let nodes: Vec<&str> = std::iter::once(config.url.as_str())
                .chain(config.extra_nodes.iter().map(String::as_str))
                .collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(config.operation_timeout)
                .response_timeout(config.operation_timeout)
                .retries(3)
                .build()
                .map_err(connect_error)?;
            let connection =
                tokio::time::timeout(config.operation_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| {
                        StateBackendError::Io(format!(
                            "connecting to redis cluster at {server} timed out"
                        ))
                    })?
                    .map_err(connect_error)?;
            Connection::Cluster(connection)
        } else {
            let client = redis::Client::open(config.url.as_str()).map_err(connect_error)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.operation_timeout))
                .set_response_timeout(Some(config.operation_timeout))
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_millis(500));
            let connection = tokio::time::timeout(
                config.operation_timeout,
                ConnectionManager::new_with_config(client, manager_config),
            )
            .await
            .map_err(|_| {
                StateBackendError::Io(format!("connecting to redis at {server} timed out"))
            })?
            .map_err(connect_error)?;
            Connection::Standalone(connection)
        };
        let wanted = config.groups.unwrap_or(if config.cluster {
            DEFAULT_CLUSTER_GROUPS
        } else {
            DEFAULT_STANDALONE_GROUPS
        });
        let mut store = Self {
            shared: Arc::new(Shared {
                connection,
                keys: Keys::new(&config.namespace, wanted),
                namespace: config.namespace.clone(),
                cluster: config.cluster,
                scripts: Scripts::new(),
                timeout: config.operation_timeout,
                max_payload_len: config.max_payload_len,
                server: server.clone(),
                replicas: config.replicas,
                replica_timeout: config.replica_timeout.max(Duration::from_millis(1)),
                replicate_writes: config.replicate_writes,
                eviction_policies: Vec::new(),
                pauses: Pauses::default(),
                writers: Vec::new(),
                direct_writes: Vec::new(),
            }),
        };
        let policies = store.eviction_policies().await?;
        if let Some(policy) = policies.iter().find(|p| p.starts_with("allkeys-")) {
            let why = format!(
                "redis at {server} runs with maxmemory-policy {policy}, which can evict any key: \
                 this store's fences, commit markers and partials could vanish silently"
            );
            if !config.allow_eviction {
                return Err(StateBackendError::Io(format!(
                    "{why}; use noeviction (or a volatile-* policy: this store sets no TTL), \
                     or open anyway with allow_eviction=true"
                )));
            }
            tracing::warn!(server = %server, policy = %policy, "{why}; opened anyway (allow_eviction)");
        }
        if let Some(shared) = Arc::get_mut(&mut store.shared) {
            shared.eviction_policies = policies;
        }
        let keys_layout = store.shared.keys.layout();
        let recorded: String = store
            .call(
                "open",
                |s| &s.layout,
                |call| {
                    call.key(keys_layout).arg(wanted);
                },
            )
            .await?;
        let groups = u32::try_from(parse_decimal(&recorded, "the layout key")?)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| {
                StateBackendError::Serialization(format!(
                    "namespace {:?} records {recorded} vnode groups",
                    config.namespace
                ))
            })?;
        if groups != wanted {
            if config.groups.is_some() {
                return Err(StateBackendError::Serialization(format!(
                    "namespace {:?} was created with {groups} vnode groups, not {wanted}",
                    config.namespace
                )));
            }
            if let Some(shared) = Arc::get_mut(&mut store.shared) {
                shared.keys.groups = groups;
            }
        }
        let mut queues = Vec::new();
        if let Some(shared) = Arc::get_mut(&mut store.shared) {
            for _ in 0..shared.keys.groups {
                let (sender, queue) = mpsc::unbounded_channel();
                shared.writers.push(sender);
                shared.direct_writes.push(AtomicU64::new(0));
                queues.push(queue);
            }
        }
        for (group, queue) in queues.into_iter().enumerate() {
            tokio::spawn(group_writer(
                Arc::downgrade(&store.shared),
                group as u32,
                queue,
            ));
        }
        Ok(store)
    }

    /// A handle on this namespace for `instance_id`, serving vnodes
    /// `0..vnode_capacity`. It starts with the namespace's current fence.
    pub async fn handle(
        &self,
        instance_id: impl Into<String>,
        vnode_capacity: u32,
    ) -> Result<RedisBackend, StateBackendError> {
        let fence: Option<String> = self
            .query(
                "open",
                redis::cmd("GET").arg(self.shared.keys.fence()).clone(),
            )
            .await?;
        let fence = fence
            .map(|f| parse_decimal(&f, "the fence key"))
            .transpose()?
            .unwrap_or(0);
        Ok(RedisBackend {
            store: self.clone(),
            instance_id: instance_id.into(),
            limits: InputLimits::new(vnode_capacity, self.shared.max_payload_len),
            fence: AtomicU64::new(fence),
            // The namespace key is raised only after every group (see
            // `propagate_fence`), so a fence read there is already in every
            // group. Unless replicas must confirm a raise: this handle has
            // not seen it confirmed, so its first raise copies it again.
            propagated: AtomicU64::new(if self.shared.replicas > 0 { 0 } else { fence }),
            told: AtomicU64::new(0),
        })
    }

    /// Run one command, bounded by the operation timeout.
    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: Cmd,
    ) -> Result<T, StateBackendError> {
        let mut connection = self.shared.connection.clone();
        let result =
            tokio::time::timeout(self.shared.timeout, cmd.query_async(&mut connection)).await;
        self.finish(what, result)
    }

    /// Run one script, by SHA (loading it on first use), with the keys and
    /// arguments `build` adds, bounded by the operation timeout.
    async fn call<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: fn(&Scripts) -> &Script,
        build: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, StateBackendError> {
        let mut connection = self.shared.connection.clone();
        let mut invocation = script(&self.shared.scripts).prepare_invoke();
        build(&mut invocation);
        let result = tokio::time::timeout(
            self.shared.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await;
        self.finish(what, result)
    }

    fn finish<T>(
        &self,
        what: &str,
        result: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StateBackendError> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(redis_error(what, &self.shared.server, &error)),
            Err(_) => Err(StateBackendError::Io(format!(
                "redis {what} at {}: no answer within {:?}",
                self.shared.server, self.shared.timeout
            ))),
        }
    }

    /// The `maxmemory-policy` of every primary (a cluster's `INFO` goes to
    /// all of them).
    async fn eviction_policies(&self) -> Result<Vec<String>, StateBackendError> {
        let info: Value = self
            .query("open", redis::cmd("INFO").arg("memory").clone())
            .await?;
        let mut texts = Vec::new();
        collect_texts(&info, &mut texts);
        let policies: Vec<String> = texts
            .iter()
            .flat_map(|text| text.lines())
            .filter_map(|line| line.trim().strip_prefix("maxmemory_policy:"))
            .map(str::to_owned)
            .collect();
        if policies.is_empty() {
            return Err(StateBackendError::Io(format!(
                "redis at {}: INFO memory names no maxmemory_policy, so this store cannot \
                 check that its keys are safe from eviction",
                self.shared.server
            )));
        }
        Ok(policies)
    }

    /// Test-only pause points (see [`Pauses`]).
    #[doc(hidden)]
    pub fn pauses(&self) -> &Pauses {
        &self.shared.pauses
    }

    /// The `maxmemory-policy` of every primary, as found at connect.
    pub fn maxmemory_policies(&self) -> &[String] {
        &self.shared.eviction_policies
    }

    /// With [`RedisConfig::replicas`] set, wait until that many replicas
    /// hold everything this connection has written (so the step `what`
    /// just applied); a refusal otherwise. On a cluster, `WAIT` goes to
    /// every primary and the smallest count counts.
    async fn replicate(&self, what: &str) -> Result<(), StateBackendError> {
        let wanted = self.shared.replicas;
        if wanted == 0 {
            return Ok(());
        }
        let wait = self.shared.replica_timeout;
        let mut connection = self.shared.connection.clone();
        let cmd = redis::cmd("WAIT")
            .arg(wanted)
            .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
            .clone();
        let result = tokio::time::timeout(
            self.shared.timeout + wait,
            cmd.query_async::<i64>(&mut connection),
        )
        .await;
        let acknowledged = self.finish(what, result)?;
        if acknowledged < i64::from(wanted) {
            return Err(StateBackendError::Io(format!(
                "redis {what} at {}: applied on the primary, but only {acknowledged} of \
                 {wanted} replicas confirmed it within {wait:?}; not acknowledged (a retry \
                 settles the outcome)",
                self.shared.server
            )));
        }
        Ok(())
    }

    /// Whether steps that found nothing to change must still write, so that
    /// a `WAIT` after them covers what an earlier, unconfirmed attempt
    /// wrote (possibly through another connection).
    fn touch(&self) -> &'static str {
        if self.shared.replicas > 0 { "1" } else { "0" }
    }

    /// Copy `fence` to every group's fence, in parallel, and only then to
    /// the namespace's: done when every copy is at least `fence`.
    ///
    /// The order is what makes a raise that dies half-way harmless. The
    /// namespace key is the one a new handle starts from (and trusts as
    /// already copied to every group), so it may only say `fence` once
    /// every group does: a raiser that dies, times out or cannot reach one
    /// shard leaves the namespace key where it was, and the next raise to
    /// `fence`, by any handle, copies it to every group again.
    async fn propagate_fence(&self, fence: u64) -> Result<(), StateBackendError> {
        let keys = &self.shared.keys;
        let mut raises = tokio::task::JoinSet::new();
        for group in 0..keys.groups {
            let (store, key) = (self.clone(), keys.group_fence(group));
            raises.spawn(async move { store.raise_key(key, fence).await });
        }
        while let Some(raised) = raises.join_next().await {
            raised
                .map_err(|e| StateBackendError::Io(format!("a fence raise task failed: {e}")))??;
        }
        self.raise_key(keys.fence(), fence).await?;
        self.replicate("fence raise").await
    }

    /// Raise one fence key to at least `fence`.
    async fn raise_key(&self, key: String, fence: u64) -> Result<(), StateBackendError> {
        let _: String = self
            .call(
                "fence raise",
                |s| &s.raise,
                |call| {
                    call.key(key).arg(decimal(fence)).arg(self.touch());
                },
            )
            .await?;
        Ok(())
    }
}

/// A handle on a [`RedisStore`], with its own instance id.
pub struct RedisBackend {
    store: RedisStore,
    instance_id: String,
    limits: InputLimits,
    /// The fence this handle enforces: raised locally, and learned from the
    /// server whenever it refuses a write.
    fence: AtomicU64,
    /// The highest fence this handle has copied to every group.
    propagated: AtomicU64,
    /// The highest version this handle was told; a handle told less than
    /// the fence is a deposed leader and may not seal.
    told: AtomicU64,
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

    /// Carry a raise made on this handle to every group before its next
    /// write or seal, as the contract requires.
    async fn carry_fence(&self) -> Result<u64, StateBackendError> {
        let fence = self.fence.load(Ordering::Acquire);
        if fence > self.propagated.load(Ordering::Acquire) {
            self.store.propagate_fence(fence).await?;
            self.propagated.fetch_max(fence, Ordering::AcqRel);
        }
        Ok(fence)
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
            if !matches!(reply.as_slice(), [Value::Int(3)]) {
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
        // Registered first, so that no seal below the bound can land while
        // this prune runs; then markers, then partials, so that a prune cut
        // short anywhere never leaves a marker without its partials.
        let id = prune_id();
        let older: Vec<String> = store
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
        let mut groups = tokio::task::JoinSet::new();
        for group in 0..keys.groups {
            let (store, what) = (store.clone(), what.clone());
            groups.spawn(async move {
                let keys = &store.shared.keys;
                loop {
                    let removed: u32 = store
                        .call(
                            &what,
                            |s| &s.prune_group,
                            |call| {
                                call.key(keys.group_epochs(group))
                                    .arg(decimal(before))
                                    .arg(PRUNE_EPOCHS_PER_CALL)
                                    .arg(keys.group_prefix(group));
                            },
                        )
                        .await?;
                    if removed < PRUNE_EPOCHS_PER_CALL {
                        return Ok::<(), StateBackendError>(());
                    }
                }
            });
        }
        while let Some(pruned) = groups.join_next().await {
            pruned.map_err(|e| StateBackendError::Io(format!("a prune task failed: {e}")))??;
        }
        store.shared.pauses.at(PAUSE_PRUNE_PARTIALS_DELETED).await;
        let _: i64 = store
            .call(
                &what,
                |s| &s.prune_end,
                |call| {
                    call.key(keys.pruning())
                        .arg(&id)
                        .arg(decimal(before))
                        .arg(older.as_slice());
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

    async fn persist_authoritative_version(&self, version: u64) -> Result<(), StateBackendError> {
        self.set_authoritative_version(version);
        self.carry_fence().await.map(drop)
    }
}

impl RedisBackend {
    /// Run the seal script: with the listed partials to check (standalone),
    /// or with the prune count seen before the caller checked them itself
    /// (cluster).
    async fn seal_script(
        &self,
        epoch: u64,
        listed: &[(u32, Vec<u32>)],
        prunes: Option<&str>,
    ) -> Result<Vec<Value>, StateBackendError> {
        let keys = &self.store.shared.keys;
        self.store
            .call(
                &format!("epoch_complete({epoch})"),
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
        reply: Vec<Value>,
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
                self.store.replicate(what).await?;
                let committer: String = redis::from_redis_value_ref(committer).map_err(|e| {
                    StateBackendError::Serialization(format!(
                        "the commit marker of epoch {epoch} is unreadable: {e}"
                    ))
                })?;
                if committer == self.instance_id {
                    Ok(true)
                } else {
                    Err(StateBackendError::SplitBrainCommit {
                        committer,
                        self_id: self.instance_id.clone(),
                    })
                }
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
        let mut checks = tokio::task::JoinSet::new();
        for (group, vnodes) in listed {
            let (store, group, vnodes) = (self.store.clone(), *group, vnodes.clone());
            checks.spawn(async move {
                let keys = &store.shared.keys;
                let present: u8 = store
                    .call(
                        &format!("epoch_complete({epoch})"),
                        |s| &s.present,
                        |call| {
                            call.key(keys.epoch_partials(group, epoch))
                                .arg(vnodes.as_slice());
                        },
                    )
                    .await?;
                Ok::<bool, StateBackendError>(present == 1)
            });
        }
        let mut all = true;
        while let Some(check) = checks.join_next().await {
            all &=
                check.map_err(|e| StateBackendError::Io(format!("a gate task failed: {e}")))??;
        }
        Ok(all)
    }
}

/// One write, as the write script takes it.
struct WriteOp {
    vnode: u32,
    epoch: u64,
    version: u64,
    /// The writer's fence, carried to the group.
    carried: u64,
    bytes: Bytes,
}

/// A write waiting for its group's next batch. The answer is `None` when it
/// was written, `Some(fence)` when the group's fence refused it.
struct PendingWrite {
    op: WriteOp,
    reply: oneshot::Sender<Result<Option<u64>, StateBackendError>>,
}

/// Counts a group's direct (unbatched) write in flight while alive.
struct DirectWrite<'a>(&'a AtomicU64);

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
async fn group_writer(
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
    async fn write_one(&self, group: u32, op: &WriteOp) -> Result<Option<u64>, StateBackendError> {
        let keys = &self.shared.keys;
        let what = format!("write_partial({}, {})", op.vnode, op.epoch);
        let fence: String = self
            .call(
                &what,
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
        if op.version >= fence && self.shared.replicate_writes {
            self.replicate(&what).await?;
        }
        Ok((op.version < fence).then_some(fence))
    }

    /// Apply one batch of writes to `group` in one script call; the group's
    /// fence and, per write, whether it was written.
    async fn write_batch(
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
        let (fence, written): (String, Vec<u8>) = self
            .call(
                &what,
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
        if self.shared.replicate_writes && written.contains(&1) {
            self.replicate(&what).await?;
        }
        Ok((
            parse_decimal(&fence, "a group fence")?,
            written.into_iter().map(|w| w == 1).collect(),
        ))
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

/// Test-only: named points where an operation can be made to wait, so a
/// test can put a fault (a prune, a crash) exactly there. Not part of the
/// API; nothing waits unless a test armed a point.
#[doc(hidden)]
#[derive(Default)]
pub struct Pauses {
    armed: std::sync::Mutex<Vec<(&'static str, Arc<Notify>, Arc<Notify>)>>,
}

impl Pauses {
    /// Arm `point`: the next operation that reaches it notifies the first
    /// `Notify` and waits for the second.
    pub fn arm(&self, point: &'static str) -> (Arc<Notify>, Arc<Notify>) {
        let (reached, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        self.armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((point, Arc::clone(&reached), Arc::clone(&resume)));
        (reached, resume)
    }

    async fn at(&self, point: &'static str) {
        let armed = {
            let mut armed = self
                .armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if armed.is_empty() {
                return;
            }
            armed
                .iter()
                .position(|(p, _, _)| *p == point)
                .map(|at| armed.remove(at))
        };
        if let Some((_, reached, resume)) = armed {
            reached.notify_one();
            resume.notified().await;
        }
    }
}

/// Every text in a reply (a cluster answers `INFO` with one per node).
fn collect_texts(value: &Value, texts: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => texts.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => texts.push(text.clone()),
        Value::VerbatimString { text, .. } => texts.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|item| collect_texts(item, texts))
        }
        Value::Map(pairs) => pairs
            .iter()
            .for_each(|(_, item)| collect_texts(item, texts)),
        _ => {}
    }
}

/// Map a redis error once: what failed, where, and why. A full server
/// (`maxmemory` reached) is called out, since retrying will not help.
fn redis_error(what: &str, server: &str, error: &RedisError) -> StateBackendError {
    let text = error.to_string();
    if text.contains("OOM") {
        return StateBackendError::Io(format!(
            "redis {what} at {server}: the server is full (maxmemory reached): {text}"
        ));
    }
    StateBackendError::Io(format!("redis {what} at {server}: {text}"))
}
