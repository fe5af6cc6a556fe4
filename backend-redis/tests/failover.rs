//! Failover to a replica, against a real primary and replica started here:
//! the primary is SIGKILLed and the replica promoted (`REPLICAOF NO ONE`),
//! as Sentinel or a managed service would. Replication is asynchronous, so
//! what the replica had not received is gone; with `replicas` set, nothing
//! the backend acknowledged is among it.

use laminar_state_test_support::redis as support;

use std::time::Duration;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_redis::{RedisBackend, RedisConfig};
use support::{RedisServer, TcpRelay};

const VNODES: u32 = 4;

fn config(server: &RedisServer, replicas: u32) -> RedisConfig {
    let mut config = RedisConfig::from_url(&server.url()).unwrap();
    config.namespace = "failover".into();
    config.operation_timeout = Duration::from_millis(1500);
    config.replicas = replicas;
    config.replicate_writes = replicas > 0;
    config.replica_timeout = Duration::from_millis(300);
    config
}

fn all() -> Vec<u32> {
    (0..VNODES).collect()
}

/// A primary with one replica linked through a relay that can partition
/// them, each server in its own directory under `dir`, and a handle
/// "leader" on the primary with `replicas` to confirm each step.
async fn leader_on_a_pair(
    dir: &std::path::Path,
    replicas: u32,
) -> (RedisServer, RedisServer, TcpRelay, RedisBackend) {
    let dir = dir.to_path_buf();
    let (primary, replica, link) = run_blocking(move || {
        let primary = RedisServer::start(&dir.join("primary"), &[]);
        let link = TcpRelay::start(primary.port);
        let replica = RedisServer::start_replica_of(&dir.join("replica"), link.port);
        (primary, replica, link)
    })
    .await;
    let leader = connect(&primary, replicas, "leader").await;
    (primary, replica, link, leader)
}

/// SIGKILL the primary (what the partition held is gone with it) and
/// promote the replica; the promoted replica.
async fn fail_over(mut primary: RedisServer, replica: RedisServer) -> RedisServer {
    run_blocking(move || {
        primary.kill();
        let answer = replica.cli(&["replicaof", "no", "one"]);
        assert!(answer.contains("OK"), "promotion failed: {answer}");
        replica
    })
    .await
}

async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// A handle `id` on `server`, with `replicas` to confirm each step.
async fn connect(server: &RedisServer, replicas: u32, id: &str) -> RedisBackend {
    RedisBackend::connect(&config(server, replicas), id, VNODES)
        .await
        .unwrap()
}

/// Write the partial of every vnode in `epoch` at `version`, each one's
/// bytes given by `bytes`, and expect every write to be acknowledged.
async fn write_every_vnode(
    handle: &RedisBackend,
    epoch: u64,
    version: u64,
    bytes: impl Fn(u32) -> Bytes,
) {
    for vnode in all() {
        handle
            .write_partial(vnode, epoch, version, bytes(vnode))
            .await
            .unwrap();
    }
}

/// With `replicas=1`, what was acknowledged while the replica followed
/// survives the failover (partials, a seal, a fence raise), and what the
/// primary applied while the replica was cut off was never acknowledged:
/// after promotion, no epoch is sealed twice and the zombie stays fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_set_a_failover_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica, link, leader) = leader_on_a_pair(dir.path(), 1).await;
    write_every_vnode(&leader, 1, 1, |vnode| Bytes::from(format!("one-{vnode}"))).await;
    assert!(leader.epoch_complete(1, &all()).await.unwrap());
    leader.persist_authoritative_version(5).await.unwrap();

    // A partition cuts the replica off: nothing more can be confirmed.
    link.hold();
    for vnode in all() {
        let result = leader
            .write_partial(vnode, 2, 5, Bytes::from_static(b"unconfirmed"))
            .await;
        assert!(
            matches!(&result, Err(StateBackendError::Io(m)) if m.contains("replicas")),
            "a write the replica never received was answered {result:?}"
        );
    }
    let result = leader.epoch_complete(1, &all()).await;
    assert!(
        matches!(&result, Err(StateBackendError::Io(_))),
        "a repeated seal that could not be confirmed was answered {result:?}"
    );
    let result = leader.persist_authoritative_version(9).await;
    assert!(
        matches!(&result, Err(StateBackendError::Io(_))),
        "a raise the replica never received was answered {result:?}"
    );

    let replica = fail_over(primary, replica).await;

    // The promoted replica holds everything that was acknowledged.
    let survivor = connect(&replica, 0, "successor").await;
    for vnode in all() {
        assert_eq!(
            survivor.read_partial(vnode, 1).await.unwrap(),
            Some(Bytes::from(format!("one-{vnode}"))),
            "acknowledged partial (vnode {vnode}, epoch 1) lost in the failover"
        );
    }
    let result = survivor.epoch_complete(1, &all()).await;
    assert!(
        matches!(&result, Err(StateBackendError::SplitBrainCommit { committer, .. }) if committer == "leader"),
        "the acknowledged seal of epoch 1 was lost: a second instance got {result:?}"
    );
    let zombie = connect(&replica, 0, "zombie").await;
    let result = zombie
        .write_partial(0, 3, 4, Bytes::from_static(b"zombie"))
        .await;
    assert!(
        matches!(
            result,
            Err(StateBackendError::StaleVersion {
                caller: 4,
                authoritative
            }) if authoritative >= 5
        ),
        "the acknowledged raise to 5 was lost: a zombie at 4 got {result:?}"
    );
}

/// Without `replicas`, the hazard the setting exists for: a seal the
/// primary acknowledged but the replica never received is gone after the
/// promotion, and a second instance seals the same epoch. This test pins
/// down why the setting is needed (and that the failover above is real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replicas_a_failover_can_seal_an_epoch_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica, link, leader) = leader_on_a_pair(dir.path(), 0).await;
    link.hold();
    write_every_vnode(&leader, 1, 0, |_| Bytes::from_static(b"lost")).await;
    assert!(leader.epoch_complete(1, &all()).await.unwrap());
    let replica = fail_over(primary, replica).await;
    let successor = connect(&replica, 0, "successor").await;
    assert_eq!(successor.read_partial(0, 1).await.unwrap(), None);
    write_every_vnode(&successor, 1, 0, |_| Bytes::from_static(b"again")).await;
    assert!(
        successor.epoch_complete(1, &all()).await.unwrap(),
        "expected the unreplicated seal to be lost, so that epoch 1 is sealed a second time"
    );
}

/// With the replica cut off, nothing can be confirmed, however often the
/// backend's connection drops and is made again: a `WAIT` that ran on a new
/// connection, one that wrote nothing, would answer as if the step were
/// confirmed, so the step and its `WAIT` go in one pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_around_the_wait_confirm_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, _replica, link, leader) = leader_on_a_pair(dir.path(), 1).await;
    write_every_vnode(&leader, 1, 1, |_| Bytes::from_static(b"one")).await;
    link.hold();
    // Kill every client connection of the primary, again and again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = std::thread::spawn({
        let (stop, url) = (std::sync::Arc::clone(&stop), primary.url());
        move || {
            let client = redis::Client::open(url).unwrap();
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut connection) = client.get_connection() {
                    let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg("normal")
                        .query(&mut connection);
                    kills += 1;
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            kills
        }
    });
    for round in 0..15u64 {
        let sealed = leader.epoch_complete(1, &all()).await;
        assert!(
            sealed.is_err(),
            "round {round}: an unconfirmable seal gave {sealed:?}"
        );
        let raised = leader.persist_authoritative_version(2 + round).await;
        assert!(
            raised.is_err(),
            "round {round}: an unconfirmable raise gave {raised:?}"
        );
        let written = leader
            .write_partial(0, 2, 1, Bytes::from_static(b"two"))
            .await;
        assert!(
            written.is_err(),
            "round {round}: an unconfirmable write gave {written:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = run_blocking(move || killer.join().unwrap()).await;
    assert!(kills > 10, "the connections were killed only {kills} times");
}
