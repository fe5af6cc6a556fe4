//! Faults and layout, against real servers: a server killed and restarted
//! mid-run, a full server, the spread of one namespace over a cluster, and
//! round trips of the commit gate.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::properties;
use laminar_state_redis::{RedisBackend, RedisConfig};
use support::{TempCluster, TempServer, write_epoch};

fn config(url: &str, namespace: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.namespace = namespace.into();
    config.operation_timeout = Duration::from_millis(800);
    config
}

/// A handle "w" on namespace `namespace` at `url`, serving `vnodes`
/// vnodes, each with the partial `bytes` in epoch 1; and those vnodes.
async fn written(
    url: &str,
    namespace: &str,
    vnodes: u32,
    bytes: &'static [u8],
) -> (RedisBackend, Vec<u32>) {
    let handle = RedisBackend::connect(&config(url, namespace), "w", vnodes)
        .await
        .unwrap();
    let all: Vec<u32> = (0..vnodes).collect();
    write_epoch(&handle, 1, &all, Bytes::from_static(bytes)).await;
    (handle, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_gives_typed_errors_then_loses_nothing_acknowledged() {
    let mut server = TempServer::start(&[]);
    let handle: Arc<dyn StateBackend> = Arc::new(
        RedisBackend::connect(&config(&server.url(), "restart"), "w", 1 << 20)
            .await
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (handle, stop) = (Arc::clone(&handle), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut acked, mut errors, mut recovered) = (Vec::new(), Vec::new(), 0);
            let mut vnode = 0u32;
            while !stop.load(Ordering::Acquire) {
                match handle
                    .write_partial(vnode, 1, 0, Bytes::from(vnode.to_string()))
                    .await
                {
                    Ok(()) => {
                        acked.push(vnode);
                        recovered += 1;
                    }
                    Err(error) => {
                        errors.push(error);
                        recovered = 0;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                vnode += 1;
            }
            (acked, errors, recovered)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.kill();
        std::thread::sleep(Duration::from_millis(500));
        server.restart();
        server
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Release);
    let (acked, errors, recovered) = writer.await.unwrap();
    assert!(!errors.is_empty(), "the outage produced no error");
    assert!(
        errors.iter().all(|e| matches!(e, StateBackendError::Io(_))),
        "untyped errors: {errors:?}"
    );
    assert!(recovered > 0, "writes never recovered after the restart");
    for vnode in &acked {
        assert_eq!(
            handle.read_partial(*vnode, 1).await.unwrap(),
            Some(Bytes::from(vnode.to_string())),
            "acknowledged write {vnode} lost"
        );
    }
    drop(server);
}

#[tokio::test]
async fn a_full_server_is_a_typed_error() {
    let server = TempServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let handle = RedisBackend::connect(&config(&server.url(), "full"), "w", 1 << 20)
        .await
        .unwrap();
    let chunk = Bytes::from(vec![7u8; 256 << 10]);
    let mut written = 0;
    let error = loop {
        match handle.write_partial(written, 1, 0, chunk.clone()).await {
            Ok(()) => written += 1,
            Err(error) => break error,
        }
        assert!(written < 1000, "maxmemory never refused a write");
    };
    assert!(
        matches!(&error, StateBackendError::Io(m) if m.contains("maxmemory")),
        "{error}"
    );
    for vnode in 0..written {
        assert_eq!(
            handle.read_partial(vnode, 1).await.unwrap().as_ref(),
            Some(&chunk)
        );
    }
    drop(server);
}

#[tokio::test]
async fn one_namespace_spreads_over_every_shard() {
    let cluster = TempCluster::start().await;
    let (handle, all) = written(&cluster.url(), "spread", 64, b"x").await;
    assert!(handle.epoch_complete(1, &all).await.unwrap());
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["dbsize"]).trim().parse().unwrap();
        assert!(keys > 0, "node {} holds none of the namespace", node.port);
    }
}

#[tokio::test]
async fn a_namespace_keeps_its_layout() {
    let server = TempServer::start(&[]);
    let mut four = config(&server.url(), "layout");
    four.groups = Some(4);
    RedisBackend::connect(&four, "a", 8).await.unwrap();
    let mut eight = four.clone();
    eight.groups = Some(8);
    let error = RedisBackend::connect(&eight, "b", 8).await.unwrap_err();
    assert!(
        matches!(&error, StateBackendError::Serialization(m) if m.contains("4 vnode groups")),
        "{error}"
    );
    // Without an explicit count, the recorded one is adopted.
    let mut unspecified = four.clone();
    unspecified.groups = None;
    let handle = RedisBackend::connect(&unspecified, "c", 8).await.unwrap();
    handle
        .write_partial(5, 1, 0, Bytes::from_static(b"y"))
        .await
        .unwrap();
    let first = RedisBackend::connect(&four, "a", 8).await.unwrap();
    assert_eq!(
        first.read_partial(5, 1).await.unwrap().as_deref(),
        Some(&b"y"[..])
    );
}

#[tokio::test]
async fn the_commit_gate_is_one_round_trip_on_a_standalone_server() {
    let server = TempServer::start(&[]);
    let (handle, all) = written(&server.url(), "trips", 256, b"p").await;
    // Load the script once, then count what one call sends.
    assert!(!handle.epoch_complete(2, &all).await.unwrap());
    let stat = |info: &str, name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let before = server.cli(&["info", "commandstats"]);
    assert!(handle.epoch_complete(1, &all).await.unwrap());
    let after = server.cli(&["info", "commandstats"]);
    assert_eq!(
        stat(&after, "evalsha") - stat(&before, "evalsha"),
        1,
        "epoch_complete sent more than one script call"
    );
    // Every other command counted in between ran inside that one script
    // (GET of the fence, HVALS of the unfinished prunes, HEXISTS for each
    // of the 256 vnodes, then HGET, HSET, ZADD), plus the first INFO itself.
    for (command, inside) in [
        ("get", 1),
        ("hvals", 1),
        ("hexists", 256),
        ("hget", 1),
        ("hset", 1),
        ("zadd", 1),
        ("info", 1),
    ] {
        assert_eq!(
            stat(&after, command) - stat(&before, command),
            inside,
            "{command}"
        );
    }
    let total = |info: &str| -> u64 {
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .map(|l| {
                l.split_once(":calls=")
                    .unwrap()
                    .1
                    .split(',')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(
        total(&after) - total(&before),
        263,
        "epoch_complete sent commands outside its one script"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_script_calls_and_fail_alone() {
    let server = TempServer::start(&[]);
    let handle: Arc<dyn StateBackend> = Arc::new(
        RedisBackend::connect(&config(&server.url(), "batch"), "w", 256)
            .await
            .unwrap(),
    );
    // Load the scripts and carry the fence before counting.
    handle.set_authoritative_version(5);
    handle
        .write_partial(0, 0, 5, Bytes::from_static(b"warm-up"))
        .await
        .unwrap();
    let calls = |info: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let before = calls(&server.cli(&["info", "commandstats"]));
    properties::concurrent_writes_fail_alone(&handle, 256)
        .await
        .unwrap();
    let used = calls(&server.cli(&["info", "commandstats"])) - before;
    assert!(
        used < 128,
        "256 concurrent writes took {used} script calls: no batching"
    );
}
