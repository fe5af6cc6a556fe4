//! What the backend assumes of the store, checked rather than trusted: a
//! store that ignores conditional writes, a directory bucket, and a fence
//! object that vanished (lifecycle expiry) are refused with typed errors,
//! never run on silently.

mod support;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_s3::{S3Backend, S3Store};
use support::proxy::FaultProxy;
use support::{TestServer, config, fresh_prefix, store};

/// The connect error for a store reached through `proxy`, with `stripped`
/// headers dropped from every request.
async fn connect_without(proxy: &FaultProxy, stripped: &[&str]) -> Result<(), StateBackendError> {
    proxy.strip_headers(stripped);
    let outcome = S3Store::connect(&config(&proxy.endpoint(), &fresh_prefix("conditions")))
        .await
        .map(drop);
    proxy.strip_headers(&[]);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_is_refused_at_connect() {
    let server = TestServer::start();
    for (stripped, named) in [
        (&["If-None-Match", "If-Match"][..], "If-None-Match"),
        (&["If-Match"][..], "If-Match"),
    ] {
        // A fresh proxy each time: a fresh endpoint, so no cached probe.
        let proxy = FaultProxy::start(&server.address()).await;
        match connect_without(&proxy, stripped).await {
            Err(StateBackendError::Io(message)) => assert!(
                message.contains(named) && message.contains("ignores"),
                "the refusal does not name the missing behaviour ({named}): {message}"
            ),
            other => panic!("a store that ignores {stripped:?} gave {other:?}"),
        }
        // The same store honouring them is accepted, and the probe object is
        // cleaned up.
        let accepted = connect_without(&proxy, &[]).await;
        assert!(accepted.is_ok(), "{accepted:?}");
        let raw = store(&config(&server.endpoint(), "")).await;
        let listed = raw
            .client()
            .list_objects_v2()
            .bucket(raw.bucket())
            .send()
            .await
            .expect("raw LIST");
        let left: Vec<&str> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter(|k| k.contains("conditional-write-probe"))
            .collect();
        assert!(left.is_empty(), "probe objects left behind: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_buckets_are_refused() {
    let server = TestServer::start();
    let mut directory = config(&server.endpoint(), "x");
    directory.bucket = "state--use1-az4--x-s3".into();
    match S3Backend::connect(&directory, "x", 1).await {
        Err(StateBackendError::Io(message)) => assert!(
            message.contains("directory bucket"),
            "the refusal does not say why: {message}"
        ),
        other => panic!("a directory bucket gave {:?}", other.map(|_| ())),
    }
    let url = format!(
        "s3://state--use1-az4--x-s3/x?endpoint={}&access_key_id=a&secret_access_key=b",
        server.endpoint()
    );
    let parsed = laminar_state_s3::S3Config::from_url(&url).expect("the URL parses");
    assert!(S3Store::connect(&parsed).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_fence_object_whose_snapshots_exist_is_damage_not_fence_zero() {
    let server = TestServer::start();
    let prefix = fresh_prefix("expired");
    let direct = config(&server.endpoint(), &prefix);
    let leader = store(&direct).await.handle("leader", 4);
    leader.persist_authoritative_version(3).await.unwrap();
    leader
        .write_partial(0, 1, 3, Bytes::from_static(b"x"))
        .await
        .unwrap();
    // Connected before the damage, never told a version.
    let bystander = store(&direct).await.handle("bystander", 4);
    // Lifecycle expiry, or a careless clean-up, removes the fence object.
    let raw = leader.store();
    raw.client()
        .delete_object()
        .bucket(raw.bucket())
        .key(format!("{}fence", raw.prefix()))
        .send()
        .await
        .expect("raw DELETE");

    // Handles already connected: their next fence read finds no fence.
    for handle in [&leader, &bystander] {
        let stale = handle
            .write_partial(1, 1, 1, Bytes::from_static(b"stale"))
            .await;
        match &stale {
            Err(StateBackendError::Serialization(message)) => {
                assert!(message.contains("fence"), "{message}")
            }
            other => panic!("a write at 1 after the fence object (3) vanished gave {other:?}"),
        }
    }
    assert!(matches!(
        bystander.read_partial(0, 1).await,
        Err(StateBackendError::Serialization(_))
    ));
    // A new process: connecting finds snapshots but no fence.
    let fresh = S3Backend::connect(&direct, "fresh", 4).await;
    match fresh {
        Err(StateBackendError::Serialization(message)) => {
            assert!(message.contains("fence"), "{message}")
        }
        Ok(backend) => {
            let outcome = backend
                .write_partial(1, 1, 1, Bytes::from_static(b"stale"))
                .await;
            panic!("a fresh handle connected, and a write at 1 gave {outcome:?}")
        }
        Err(other) => panic!("connecting gave {other:?}"),
    }
}
