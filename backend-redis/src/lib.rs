#![doc = include_str!("../README.md")]
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
//! that for the steps that matter most: a seal or a fence raise goes in one
//! pipeline with `WAIT N MS` (so the `WAIT` runs on the very connection that
//! applied the step: one sent after a reconnect would confirm nothing), and
//! the backend acknowledges only if `N` replicas confirmed they received it; otherwise the caller gets [`StateBackendError::Io`]
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
//! project is tested on are 7.0). On a cluster, each step's `WAIT` goes to
//! the primary that applied it. While a `WAIT` is pending, other commands
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
//! the same epoch, dies half-way, or wakes up after another prune finished
//! its work. A prune first allows itself in every group (each group's
//! `pruning` hash, id → bound), then registers (`laminar:{NS}:pruning`, and
//! a count of prunes begun or ended, `laminar:{NS}:prunes`), then deletes
//! the markers below its bound, then the partials (each group's delete
//! script checks, atomically, that the prune is still allowed there), then
//! unregisters. The seal script answers `false` for an epoch below an
//! unfinished prune's bound (a seal ordered after that prune finds no
//! partials), and on a cluster, where the partials are checked in their own
//! slots before the seal script runs in the namespace's, it also checks
//! that no prune began or ended since the caller read the count, else the
//! gate checks the partials again (at most 8 times). A seal ordered before
//! the prune loses its marker to it.
//!
//! A prune that dies half-way (its process killed, its future dropped)
//! stays registered: seals of epochs below its bound answer `false` until a
//! later `prune_before` of that bound or higher finishes. That one first
//! takes the older prune's right to delete away in every group, then
//! unregisters it, so an older pruner that was only slow deletes nothing
//! once seals below its bound are taken again. Markers go before partials,
//! so whatever point a prune died at, every marker left has its partials.
//! A prune that dies between allowing itself in the groups and registering
//! leaves its id in the groups' `pruning` hashes (a few bytes, never
//! consulted by a seal).
//!
//! # Where things are
//!
//! | module | holds |
//! |---|---|
//! | `config` | [`RedisConfig`] and its URL |
//! | `keys` | the key scheme above |
//! | `scripts/*.lua` | the Lua scripts, each with what it takes and returns |
//! | `store` | [`RedisStore`]: connection, timeouts, error mapping, replicas, eviction check |
//! | `fence` | the fence's copies and how a raise reaches them |
//! | `writer` | the write path and group commit |
//! | `backend` | [`RedisBackend`] and the trait implementation, in the trait's order |
//!
//! [`StateBackendError::Io`]: laminar_state_api::StateBackendError::Io
//! [`StateBackend::persist_authoritative_version`]: laminar_state_api::StateBackend::persist_authoritative_version
//! [`StateBackend::set_authoritative_version`]: laminar_state_api::StateBackend::set_authoritative_version

mod backend;
mod config;
mod fence;
mod keys;
mod pauses;
mod scripts;
mod store;
mod writer;

pub use backend::{
    PAUSE_GATE_CHECKED, PAUSE_PRUNE_PARTIALS_DELETED, PAUSE_PRUNE_REGISTERED, RedisBackend,
};
pub use config::{
    DEFAULT_CLUSTER_GROUPS, DEFAULT_MAX_PAYLOAD_LEN, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_REPLICA_TIMEOUT, DEFAULT_STANDALONE_GROUPS, RedisConfig,
};
pub use pauses::Pauses;
pub use store::RedisStore;
