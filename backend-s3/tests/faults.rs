//! Faults between the client and a real server, injected by a proxy:
//! error answers and stalls are retried and then surface as typed errors
//! within the configured bounds; requests that landed but whose answer was
//! lost are retried without harm to the fence, the marker or the data.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_s3::{S3Backend, S3Config};
use support::proxy::Action;
use support::{ProxiedPrefix, impatient_config, is_stale, raw_put, read, store};

/// The configuration of the faulted store: impatient, through the proxy.
fn impatient(proxied: &ProxiedPrefix) -> S3Config {
    impatient_config(&proxied.proxy.endpoint(), &proxied.prefix)
}

/// A prefix on a server behind a proxy, and a handle `id` (16 vnodes) on
/// a store that reaches it through the proxy, impatiently.
async fn setup(id: &str) -> (ProxiedPrefix, S3Backend) {
    let proxied = ProxiedPrefix::start("faults").await;
    let backend = store(&impatient(&proxied)).await.handle(id, 16);
    (proxied, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_retried_then_typed() {
    let (proxied, backend) = setup("errors").await;
    backend
        .write_partial(0, 1, 0, Bytes::from_static(b"acknowledged"))
        .await
        .unwrap();

    // Two 503s, then the server: the write goes through.
    proxied.fault("PUT", "/p/", Action::Status(503), 2);
    backend
        .write_partial(1, 1, 0, Bytes::from_static(b"after 503s"))
        .await
        .expect("retried past two 503s");
    assert_eq!(
        proxied.seen("PUT", "/p/00000000000000000001/0000000001."),
        3
    );

    // 500 on every attempt: a typed error naming the operation.
    proxied.fault("PUT", "/p/", Action::Status(500), 1_000);
    let failed = backend
        .write_partial(2, 1, 0, Bytes::from_static(b"never"))
        .await;
    match &failed {
        Err(StateBackendError::Io(message)) => assert!(
            message.contains("write_partial(2, 1)"),
            "the error does not name the operation: {message}"
        ),
        other => panic!("a write against a failing server gave {other:?}"),
    }
    assert_eq!(
        proxied.seen("PUT", "/p/00000000000000000001/0000000002."),
        3,
        "max_attempts is 3"
    );
    proxied.fault("GET", "list-type=2", Action::Status(503), 1_000);
    assert!(matches!(
        backend.read_partial(0, 1).await,
        Err(StateBackendError::Io(_))
    ));
    assert!(matches!(
        backend.epoch_complete(1, &[0, 1]).await,
        Err(StateBackendError::Io(_))
    ));

    // The server recovers: everything acknowledged is there, nothing else.
    proxied.proxy.clear_rules();
    assert_eq!(
        read(&backend, 0, 1).await.as_deref(),
        Some(&b"acknowledged"[..])
    );
    assert_eq!(
        read(&backend, 1, 1).await.as_deref(),
        Some(&b"after 503s"[..])
    );
    assert_eq!(read(&backend, 2, 1).await, None);
    assert!(backend.epoch_complete(1, &[0, 1]).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_hit_the_attempt_timeout_and_the_operation_timeout() {
    let (proxied, backend) = setup("stalls").await;
    let config = impatient(&proxied);
    backend
        .write_partial(0, 1, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();

    // One stalled attempt: the next one succeeds.
    proxied.fault("HEAD", "/fence", Action::Stall, 1);
    let started = Instant::now();
    backend
        .write_partial(1, 1, 0, Bytes::from_static(b"y"))
        .await
        .expect("retried past one stalled fence read");
    assert!(started.elapsed() >= config.attempt_timeout);

    // Every attempt stalls: a typed error, within the operation timeout.
    proxied.fault("GET", "list-type=2", Action::Stall, 1_000);
    let started = Instant::now();
    let stalled = backend.read_partial(0, 1).await;
    let waited = started.elapsed();
    assert!(
        matches!(stalled, Err(StateBackendError::Io(_))),
        "a stalled read gave {stalled:?}"
    );
    assert!(
        waited < config.operation_timeout + Duration::from_secs(2),
        "a stalled read took {waited:?}, the operation timeout is {:?}",
        config.operation_timeout
    );
    proxied.proxy.clear_rules();
    assert_eq!(read(&backend, 1, 1).await.as_deref(), Some(&b"y"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_landed_but_lost_their_answer_are_retried_safely() {
    let (proxied, backend) = setup("lost").await;
    let direct = proxied.direct_store().await;

    // A partial PUT that landed: the retry writes the same object again.
    proxied.fault("PUT", "/p/", Action::ForwardThenDrop, 1);
    for vnode in [0, 1] {
        backend
            .write_partial(vnode, 1, 0, Bytes::from_static(b"landed"))
            .await
            .expect("a write whose first answer was lost");
    }
    assert_eq!(proxied.faulted(), 1);

    // A marker PUT that landed: the retry meets 412, and the marker names
    // this very instance, so the seal is ours.
    proxied.fault("PUT", "/m/", Action::ForwardThenDrop, 1);
    assert!(
        backend.epoch_complete(1, &[0, 1]).await.unwrap(),
        "a seal whose first answer was lost"
    );
    let other = direct.handle("other", 16);
    match other.epoch_complete(1, &[0, 1]).await {
        Err(StateBackendError::SplitBrainCommit { committer, self_id }) => {
            assert_eq!((committer.as_str(), self_id.as_str()), ("lost", "other"));
        }
        unexpected => panic!("another instance sealing got {unexpected:?}"),
    }

    // A fence swap that landed: the retry meets 412, the fence reads 5,
    // and the raise is complete (snapshot included).
    proxied.fault("PUT", "/fence", Action::ForwardThenDrop, 1);
    backend
        .persist_authoritative_version(5)
        .await
        .expect("a raise whose first answer was lost");
    let stale = other.write_partial(2, 2, 4, Bytes::new()).await;
    assert!(is_stale(&stale, 4, 5), "{stale:?}");
    assert_eq!(read(&other, 0, 1).await.as_deref(), Some(&b"landed"[..]));
    // Every injected fault was hit.
    assert_eq!(proxied.faulted(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_gives_typed_errors_and_a_missing_bucket_is_named() {
    let (mut proxied, backend) = setup("dead").await;
    let config = impatient(&proxied);
    backend
        .write_partial(0, 1, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mut wrong_bucket = config.clone();
    wrong_bucket.bucket = "no-such-bucket".into();
    match S3Backend::connect(&wrong_bucket, "x", 1).await {
        Err(StateBackendError::Io(message)) => {
            assert!(message.contains("no-such-bucket"), "{message}")
        }
        other => panic!("a missing bucket gave {:?}", other.map(|_| ())),
    }
    proxied.server.server.kill();
    let started = Instant::now();
    for outcome in [
        backend.write_partial(1, 1, 0, Bytes::new()).await.err(),
        backend.read_partial(0, 1).await.err(),
        backend.epoch_complete(1, &[0]).await.err(),
        backend.prune_before(1).await.err(),
    ] {
        assert!(
            matches!(outcome, Some(StateBackendError::Io(_))),
            "{outcome:?}"
        );
    }
    assert!(started.elapsed() < 4 * (config.operation_timeout + Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_fence_or_snapshot_objects_are_typed_errors() {
    let (proxied, backend) = setup("damaged").await;
    backend.persist_authoritative_version(3).await.unwrap();
    let damaged = backend.store();
    for key in ["fence".to_owned(), format!("snapshots/{:020}", 3)] {
        raw_put(damaged, &format!("{}{key}", damaged.prefix()), b"garbage")
            .await
            .unwrap();
    }
    let fresh = store(&impatient_config(
        &proxied.server.endpoint(),
        &proxied.prefix,
    ))
    .await
    .handle("fresh", 16);
    let outcome = fresh.write_partial(0, 1, 5, Bytes::new()).await;
    assert!(
        matches!(outcome, Err(StateBackendError::Serialization(_))),
        "a damaged fence gave {outcome:?}"
    );
}
