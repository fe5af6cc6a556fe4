//! Faults that broke the fence before, each set up exactly as the fault
//! leaves the server, against a real redis-server: a raise that dies half
//! way, two namespaces whose keys collided, and a server that may evict keys.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_redis::{RedisBackend, RedisConfig, RedisStore};
use support::{TempCluster, TempServer, write_epoch};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

fn config(url: &str, namespace: &str, groups: u32) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.namespace = namespace.into();
    config.groups = Some(groups);
    config.operation_timeout = Duration::from_millis(800);
    config
}

/// A raise that reached some groups but not all (the raiser died, timed
/// out, or one shard could not take it) must not be taken as done by
/// anyone: the next raise to the same version copies it to every group,
/// and a zombie is refused in every group afterwards.
#[tokio::test]
async fn a_raise_that_dies_half_way_is_finished_by_the_next_raise() {
    let server = TempServer::start(&[]);
    let config = config(&server.url(), "half", 4);
    let store = RedisStore::connect(&config).await.unwrap();
    let old_leader = store.handle("old", 16).await.unwrap();
    old_leader.persist_authoritative_version(1).await.unwrap();
    let zombie = store.handle("zombie", 16).await.unwrap();

    // Group 0's shard cannot take the next raise: its fence key answers
    // every command with an error (WRONGTYPE), as an unreachable shard
    // answers with a timeout.
    let group0 = "laminar:{half/g0}:fence";
    server.cli(&["del", group0]);
    server.cli(&["hset", group0, "broken", "1"]);
    let error = old_leader
        .persist_authoritative_version(2)
        .await
        .expect_err("a raise that could not reach group 0 was acknowledged");
    assert!(matches!(error, StateBackendError::Io(_)), "{error}");
    // The fault clears: group 0 still holds the fence it had.
    server.cli(&["del", group0]);
    server.cli(&["set", group0, "00000000000000000001"]);

    // A new leader, on its own connection as another process would be,
    // raises to 2 and is acknowledged.
    let new_leader = RedisBackend::connect(&config, "new", 16).await.unwrap();
    new_leader.persist_authoritative_version(2).await.unwrap();

    for vnode in 0..4 {
        let result = zombie
            .write_partial(vnode, 7, 1, Bytes::from_static(b"ZOMBIE"))
            .await;
        assert!(
            matches!(
                result,
                Err(StateBackendError::StaleVersion {
                    caller: 1,
                    authoritative: 2
                })
            ),
            "after an acknowledged raise to 2, a zombie write at 1 into group {vnode} gave {result:?}"
        );
        assert_eq!(new_leader.read_partial(vnode, 7).await.unwrap(), None);
    }
}

/// Keys of one namespace are never keys of another, whatever the names:
/// `x/g1` once shared its fence key with group 1 of `x`.
#[tokio::test]
async fn namespaces_never_share_a_key() {
    let server = TempServer::start(&[]);
    let plain = RedisBackend::connect(&config(&server.url(), "x", 2), "x", 4)
        .await
        .unwrap();
    let lookalikes = ["x/g1", "x/g0", "x%2Fg1", "{x/g1}", "x}"];
    for (i, name) in lookalikes.iter().enumerate() {
        let other = RedisBackend::connect(&config(&server.url(), name, 1), "other", 4)
            .await
            .unwrap();
        let fence = 5 + i as u64;
        other.persist_authoritative_version(fence).await.unwrap();
        other
            .write_partial(1, 1, fence, Bytes::from(name.to_string()))
            .await
            .unwrap();
        assert!(other.epoch_complete(1, &[1]).await.unwrap());
    }
    // Namespace `x` saw none of it: no fence, no partial, no marker.
    for vnode in 0..2 {
        plain
            .write_partial(vnode, 2, 1, Bytes::from_static(b"x"))
            .await
            .unwrap_or_else(|e| panic!("namespace x refused a write to vnode {vnode}: {e}"));
    }
    assert_eq!(plain.read_partial(1, 1).await.unwrap(), None);
    assert_eq!(plain.latest_committed_epoch().await.unwrap(), None);
    plain
        .write_partial(1, 1, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(plain.epoch_complete(1, &[1]).await.unwrap());
    // And `x` sealing epoch 1 did not touch the others' markers.
    for name in lookalikes {
        let other = RedisBackend::connect(&config(&server.url(), name, 1), "late", 4)
            .await
            .unwrap();
        let result = other.epoch_complete(1, &[1]).await;
        assert!(
            matches!(&result, Err(StateBackendError::SplitBrainCommit { committer, .. }) if committer == "other"),
            "namespace {name:?}: {result:?}"
        );
        assert_eq!(
            other.read_partial(1, 1).await.unwrap(),
            Some(Bytes::from(name.to_string()))
        );
    }
}

/// A server that may evict any key could drop a fence or a marker and
/// silently lose acknowledged state: refused at connect unless allowed.
#[tokio::test]
async fn a_server_that_may_evict_any_key_is_refused_unless_allowed() {
    let server = TempServer::start(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let mut config = config(&server.url(), "evict", 1);
    let error = RedisBackend::connect(&config, "w", 4)
        .await
        .expect_err("a server with allkeys-lru was accepted");
    assert!(
        matches!(&error, StateBackendError::Io(m) if m.contains("allkeys-lru") && m.contains("allow_eviction")),
        "{error}"
    );
    config.allow_eviction = true;
    let store = RedisStore::connect(&config).await.unwrap();
    assert_eq!(store.maxmemory_policies(), ["allkeys-lru"]);
    let handle = store.handle("w", 4).await.unwrap();
    handle
        .write_partial(0, 1, 0, Bytes::from_static(b"kept"))
        .await
        .unwrap();

    // A policy that only evicts keys with a TTL never touches this store's.
    server.cli(&["config", "set", "maxmemory-policy", "volatile-lru"]);
    let config = self::config(&server.url(), "evict", 1);
    let store = RedisStore::connect(&config).await.unwrap();
    assert_eq!(store.maxmemory_policies(), ["volatile-lru"]);
}

#[test]
fn the_url_takes_the_safety_settings() {
    let config = RedisConfig::from_url(
        "redis://127.0.0.1:6379/?namespace=n&replicas=2&replica_timeout_ms=250&replicate_writes=true&allow_eviction=true",
    )
    .unwrap();
    assert_eq!(config.replicas, 2);
    assert_eq!(config.replica_timeout, Duration::from_millis(250));
    assert!(config.replicate_writes && config.allow_eviction);
    for bad in [
        "redis://h/?replicas=x",
        "redis://h/?replica_timeout_ms=0",
        "redis://h/?replicate_writes=maybe",
    ] {
        let error = RedisConfig::from_url(bad).expect_err(bad);
        assert!(
            matches!(error, StateBackendError::Serialization(_)),
            "{bad}: {error}"
        );
    }
}
/// A cluster, and a config for `namespace` on it.
async fn cluster(namespace: &str) -> (TempCluster, RedisConfig) {
    let cluster = TempCluster::start().await;
    let mut config = RedisConfig::from_url(&cluster.url()).unwrap();
    config.namespace = namespace.into();
    (cluster, config)
}

/// `scenario` on namespace `namespace` (4 vnode groups) of a standalone
/// server.
async fn on_a_server<F: Future<Output = ()>>(
    namespace: &str,
    scenario: impl FnOnce(RedisConfig) -> F,
) {
    let server = TempServer::start(&[]);
    scenario(config(&server.url(), namespace, 4)).await;
}

/// `scenario` on namespace `namespace` of a cluster.
async fn on_a_cluster<F: Future<Output = ()>>(
    namespace: &str,
    scenario: impl FnOnce(RedisConfig) -> F,
) {
    let (cluster, config) = cluster(namespace).await;
    scenario(config).await;
    drop(cluster);
}

/// `operation` on a task of its own, once it has stopped at the pause
/// `point` armed on `store`; the task, and the `Notify` that lets it go on.
async fn paused_at<T: Send + 'static>(
    store: &RedisStore,
    point: &'static str,
    operation: impl Future<Output = T> + Send + 'static,
) -> (JoinHandle<T>, Arc<Notify>) {
    let (reached, resume) = store.pauses().arm(point);
    let task = tokio::spawn(operation);
    reached.notified().await;
    (task, resume)
}

/// `sealer`'s gate for `epoch` over `vnodes`, to run on a task of its own.
fn gating(
    sealer: &Arc<RedisBackend>,
    epoch: u64,
    vnodes: &[u32],
) -> impl Future<Output = Result<bool, StateBackendError>> + Send + 'static {
    let (sealer, vnodes) = (Arc::clone(sealer), vnodes.to_vec());
    async move { sealer.epoch_complete(epoch, &vnodes).await }
}

/// `pruner`'s prune below `bound`, to run on a task of its own.
fn pruning(
    pruner: &Arc<RedisBackend>,
    bound: u64,
) -> impl Future<Output = Result<(), StateBackendError>> + Send + 'static {
    let pruner = Arc::clone(pruner);
    async move { pruner.prune_before(bound).await }
}

/// Write and seal each of `epochs` (the partials hold the epoch's number).
async fn seal_epochs(handle: &RedisBackend, epochs: std::ops::RangeInclusive<u64>, vnodes: &[u32]) {
    for epoch in epochs {
        write_epoch(handle, epoch, vnodes, Bytes::from(format!("{epoch}"))).await;
        assert!(handle.epoch_complete(epoch, vnodes).await.unwrap());
    }
}

/// Every sealed epoch still has all its partials (`vnodes` of them).
async fn assert_no_marker_without_partials(handle: &RedisBackend, vnodes: u32, when: &str) {
    for epoch in handle.sealed_epochs(0).await.unwrap() {
        for vnode in 0..vnodes {
            assert!(
                handle.read_partial(vnode, epoch).await.unwrap().is_some(),
                "{when}: epoch {epoch} is sealed but its partial for vnode {vnode} is gone"
            );
        }
    }
}

/// On a cluster the gate checks the partials (their slots) and then seals
/// (the namespace's slot). A prune of the epoch that runs whole in between
/// must not leave a marker for partials it deleted: the gate answers
/// `false`, as a gate ordered after the prune would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_between_the_gate_and_its_seal_leaves_no_marker_without_partials() {
    let (cluster, config) = cluster("gate-prune").await;
    let store = RedisStore::connect(&config).await.unwrap();
    let sealer = Arc::new(store.handle("sealer", 32).await.unwrap());
    let pruner = store.handle("pruner", 32).await.unwrap();
    let all: Vec<u32> = (0..32).collect();
    write_epoch(&sealer, 1, &all, Bytes::from_static(b"one")).await;
    let checked = laminar_state_redis::PAUSE_GATE_CHECKED;
    let (gate, resume) = paused_at(&store, checked, gating(&sealer, 1, &all)).await;
    pruner.prune_before(2).await.unwrap();
    resume.notify_one();
    let result = gate.await.unwrap();
    assert!(
        matches!(result, Ok(false)),
        "the gate checked the partials, a prune deleted them, then the gate gave {result:?}"
    );
    assert_no_marker_without_partials(&pruner, 32, "after the gate raced the prune").await;
    assert_eq!(pruner.latest_committed_epoch().await.unwrap(), None);
    drop(cluster);
}

/// A prune cut short after it deleted partials (its process died, its
/// future was dropped) leaves no sealed epoch without its partials; until
/// a later prune of that bound finishes the job, epochs below it cannot be
/// sealed; after it, they can be written and sealed afresh.
async fn prune_cut_short(config: RedisConfig) {
    const VNODES: u32 = 8;
    let store = RedisStore::connect(&config).await.unwrap();
    let first = store.handle("first", VNODES).await.unwrap();
    let all: Vec<u32> = (0..VNODES).collect();
    seal_epochs(&first, 1..=4, &all).await;
    let pruner = Arc::new(store.handle("pruner", VNODES).await.unwrap());
    let deleted = laminar_state_redis::PAUSE_PRUNE_PARTIALS_DELETED;
    let (prune, _never) = paused_at(&store, deleted, pruning(&pruner, 3)).await;
    prune.abort();
    assert!(prune.await.unwrap_err().is_cancelled());

    let observer = RedisBackend::connect(&config, "observer", VNODES)
        .await
        .unwrap();
    assert_no_marker_without_partials(&observer, VNODES, "after a prune died half-way").await;
    assert_eq!(observer.sealed_epochs(0).await.unwrap(), [3, 4]);
    // A pruned epoch rewritten while the dead prune is unfinished: its seal
    // would race that prune's remaining work, so it is refused for now.
    write_epoch(&observer, 1, &all, Bytes::from_static(b"again")).await;
    assert!(!observer.epoch_complete(1, &all).await.unwrap());
    // The next prune of that bound finishes the job, and unblocks the seal.
    observer.prune_before(3).await.unwrap();
    assert_eq!(observer.sealed_epochs(0).await.unwrap(), [3, 4]);
    write_epoch(&observer, 1, &all, Bytes::from_static(b"again")).await;
    assert!(observer.epoch_complete(1, &all).await.unwrap());
    assert_no_marker_without_partials(&observer, VNODES, "after the prune was finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_cut_short_leaves_no_marker_without_partials() {
    on_a_server("cut-short", prune_cut_short).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_cut_short_leaves_no_marker_without_partials_on_a_cluster() {
    on_a_cluster("cut-short", prune_cut_short).await;
}

/// On a cluster, a prune that began before the gate read the prune count,
/// and ran to its end between the gate's check of the partials and its seal
/// script, is seen too: the gate checks again and answers `false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_begun_before_the_gate_and_ended_before_its_seal_is_seen() {
    let (cluster, config) = cluster("begun-before").await;
    let store = RedisStore::connect(&config).await.unwrap();
    let sealer = Arc::new(store.handle("sealer", 32).await.unwrap());
    let pruner = Arc::new(store.handle("pruner", 32).await.unwrap());
    let all: Vec<u32> = (0..32).collect();
    write_epoch(&sealer, 1, &all, Bytes::from_static(b"one")).await;
    // The prune registers, then waits before deleting any partial.
    let registered = laminar_state_redis::PAUSE_PRUNE_REGISTERED;
    let (prune, go_prune) = paused_at(&store, registered, pruning(&pruner, 2)).await;
    // The gate reads the count (the prune has begun) and finds every
    // partial, then waits before its seal script.
    let checked = laminar_state_redis::PAUSE_GATE_CHECKED;
    let (gate, go_seal) = paused_at(&store, checked, gating(&sealer, 1, &all)).await;
    // The prune deletes the partials and ends; then the seal script runs.
    go_prune.notify_one();
    prune.await.unwrap().unwrap();
    go_seal.notify_one();
    let result = gate.await.unwrap();
    assert!(
        matches!(result, Ok(false)),
        "a prune ran to its end between the gate's check and its seal, and the gate gave {result:?}"
    );
    assert_no_marker_without_partials(&pruner, 32, "after the gate raced a whole prune").await;
    drop(cluster);
}

/// A slow prune that a later prune of the same bound finished (and
/// unregistered) must not delete anything afterwards: the epoch it would
/// have pruned may be written and sealed again by then, and deleting those
/// partials would leave a seal without them.
async fn slow_prune_overtaken(config: RedisConfig) {
    const VNODES: u32 = 8;
    let store = RedisStore::connect(&config).await.unwrap();
    let sealer = store.handle("sealer", VNODES).await.unwrap();
    let all: Vec<u32> = (0..VNODES).collect();
    seal_epochs(&sealer, 1..=3, &all).await;
    // The slow prune registers, deletes the markers, and stalls before the
    // partials.
    let slow = Arc::new(store.handle("slow", VNODES).await.unwrap());
    let registered = laminar_state_redis::PAUSE_PRUNE_REGISTERED;
    let (prune, resume) = paused_at(&store, registered, pruning(&slow, 3)).await;
    // Another pruner covers its bound and runs to the end.
    let other = RedisBackend::connect(&config, "other", VNODES)
        .await
        .unwrap();
    other.prune_before(3).await.unwrap();
    // Epoch 1 is written and sealed again.
    write_epoch(&sealer, 1, &all, Bytes::from_static(b"again")).await;
    let resealed = sealer.epoch_complete(1, &all).await.unwrap();
    // The slow prune wakes up.
    resume.notify_one();
    let slow_result = prune.await.unwrap();
    assert!(
        slow_result.is_ok(),
        "the overtaken prune gave {slow_result:?}"
    );
    assert_no_marker_without_partials(&other, VNODES, "after an overtaken prune woke up").await;
    assert!(
        resealed,
        "epoch 1 could not be sealed again after the prunes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_prune_overtaken_by_another_deletes_nothing_after() {
    on_a_server("overtaken", slow_prune_overtaken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_prune_overtaken_by_another_deletes_nothing_after_on_a_cluster() {
    on_a_cluster("overtaken", slow_prune_overtaken).await;
}
