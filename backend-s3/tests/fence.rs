//! The fence design on a real server, with the races forced rather than
//! hoped for: a proxy holds a zombie's PUT until the raise is acknowledged,
//! and makes the zombie's clean-up fail, so the late object stays in the
//! bucket. It must be invisible to reads and to the commit gate, while
//! everything acknowledged before the raise stays visible.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use support::proxy::{Action, FaultProxy, Rule};
use support::{TestServer, config, fresh_prefix, store};

/// The path fragment of the partials of `(vnode, epoch)`.
fn partial_path(vnode: u32, epoch: u64) -> String {
    format!("/p/{epoch:020}/{vnode:010}.")
}

/// Keys in the bucket under `prefix` that contain `fragment`.
async fn stored_keys(store: &laminar_state_s3::S3Store, fragment: &str) -> Vec<String> {
    let listed = store
        .client()
        .list_objects_v2()
        .bucket(store.bucket())
        .prefix(store.prefix())
        .send()
        .await
        .expect("raw LIST");
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| format!("/{k}").contains(fragment))
        .map(str::to_owned)
        .collect()
}

async fn wait_for(proxy: &FaultProxy, what: &str, seen: impl Fn(&FaultProxy) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(proxy) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_write_landing_after_the_raise_is_invisible() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("zombie");
    // The zombie reaches the bucket through the proxy; the leader and the
    // observer directly.
    let zombie_store = store(&config(&proxy.endpoint(), &prefix)).await;
    let direct = config(&server.endpoint(), &prefix);
    let leader = store(&direct).await.handle("leader", 8);
    let zombie = zombie_store.handle("zombie", 8);
    zombie.set_authoritative_version(1);

    // Acknowledged before the raise: must stay visible after it.
    for vnode in [0, 2] {
        zombie
            .write_partial(vnode, 5, 1, Bytes::from_static(b"before"))
            .await
            .expect("a write before the raise");
    }

    // The zombie's next writes to vnodes 1 and 2 are held at the proxy, and
    // its clean-up deletes fail, as if it died right after the PUT.
    for vnode in [1, 2] {
        proxy.add(Rule {
            method: "PUT",
            contains: partial_path(vnode, 5),
            action: Action::Hold,
            times: 1,
        });
    }
    proxy.add(Rule {
        method: "DELETE",
        contains: "/p/".into(),
        action: Action::Status(500),
        times: 1_000,
    });
    let late = |vnode: u32| {
        let zombie = &zombie;
        async move {
            zombie
                .write_partial(vnode, 5, 1, Bytes::from_static(b"zombie"))
                .await
        }
    };
    let zombie_writes = async { tokio::join!(late(1), late(2)) };
    let raise_then_release = async {
        wait_for(&proxy, "the zombie's PUTs to reach the proxy", |p| {
            p.seen()
                .iter()
                .filter(|s| s.fault == Some(Action::Hold))
                .count()
                == 2
        })
        .await;
        leader
            .persist_authoritative_version(2)
            .await
            .expect("the raise");
        // The raise is acknowledged: only now do the zombie's PUTs land.
        proxy.release(2);
    };
    let ((one, two), ()) = tokio::join!(zombie_writes, raise_then_release);
    for (vnode, outcome) in [(1, one), (2, two)] {
        assert!(
            matches!(
                outcome,
                Err(StateBackendError::StaleVersion {
                    caller: 1,
                    authoritative: 2
                })
            ),
            "the late zombie write to vnode {vnode} gave {outcome:?}"
        );
    }
    assert_eq!(
        stored_keys(&zombie_store, &partial_path(1, 5)).await.len(),
        1,
        "the late object is in the bucket (its clean-up failed)"
    );
    assert_eq!(
        stored_keys(&zombie_store, &partial_path(2, 5)).await.len(),
        2
    );

    // A handle in a fresh process state sees the pre-raise data, not the
    // zombie's.
    let observer = store(&direct).await.handle("observer", 8);
    assert_eq!(observer.read_partial(1, 5).await.unwrap(), None);
    assert_eq!(
        observer.read_partial(2, 5).await.unwrap().as_deref(),
        Some(&b"before"[..]),
        "the zombie's late write replaced acknowledged data"
    );
    assert_eq!(
        observer.read_partial(0, 5).await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    assert!(
        !observer.epoch_complete(5, &[0, 1, 2]).await.unwrap(),
        "the gate counted the zombie's late partial"
    );
    leader
        .write_partial(1, 5, 2, Bytes::from_static(b"leader"))
        .await
        .expect("the leader's write");
    assert_eq!(
        observer.read_partial(1, 5).await.unwrap().as_deref(),
        Some(&b"leader"[..])
    );
    assert!(observer.epoch_complete(5, &[0, 1, 2]).await.unwrap());

    // Another raise builds on the snapshot: the late object stays hidden,
    // the pre-raise data stays visible.
    leader.persist_authoritative_version(3).await.unwrap();
    let later = store(&direct).await.handle("later", 8);
    assert_eq!(
        later.read_partial(2, 5).await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(
        later.read_partial(1, 5).await.unwrap().as_deref(),
        Some(&b"leader"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_cut_short_before_its_snapshot_is_finished_by_the_next_reader() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("cut");
    let direct = config(&server.endpoint(), &prefix);
    let mut through_proxy = config(&proxy.endpoint(), &prefix);
    through_proxy.max_attempts = 2;
    let leader = store(&through_proxy).await.handle("leader", 4);
    let writer = store(&direct).await.handle("writer", 4);
    writer
        .write_partial(0, 7, 0, Bytes::from_static(b"kept"))
        .await
        .unwrap();

    // The raise swaps the fence, then cannot write its snapshot.
    proxy.add(Rule {
        method: "PUT",
        contains: "/snapshots/".into(),
        action: Action::Status(500),
        times: 1_000,
    });
    let cut = leader.persist_authoritative_version(4).await;
    assert!(
        matches!(cut, Err(StateBackendError::Io(_))),
        "a raise whose snapshot failed gave {cut:?}"
    );
    let snapshot_writes = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("/snapshots/"))
        .count();
    assert_eq!(snapshot_writes, 2, "the snapshot PUT was retried once");

    // The fence is in force for every handle...
    let stale = writer
        .write_partial(1, 7, 3, Bytes::from_static(b"stale"))
        .await;
    assert!(
        matches!(
            stale,
            Err(StateBackendError::StaleVersion {
                caller: 3,
                authoritative: 4
            })
        ),
        "{stale:?}"
    );
    // ...and a reader that needs the missing snapshot builds it.
    let reader = store(&direct).await.handle("reader", 4);
    assert_eq!(
        reader.read_partial(0, 7).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(reader.read_partial(1, 7).await.unwrap(), None);
    let built = stored_keys(&reader.store().clone(), "/snapshots/").await;
    assert!(
        built.iter().any(|k| k.ends_with(&format!("{:020}", 4))),
        "no snapshot for fence 4 in {built:?}"
    );

    // The leader, its fault gone, raises again.
    proxy.clear_rules();
    leader.persist_authoritative_version(6).await.unwrap();
    writer
        .write_partial(1, 7, 6, Bytes::from_static(b"new"))
        .await
        .unwrap();
    let again = store(&direct).await.handle("again", 4);
    assert_eq!(
        again.read_partial(0, 7).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        again.read_partial(1, 7).await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_raisers_agree_and_every_acknowledged_write_survives() {
    let server = TestServer::start();
    let prefix = fresh_prefix("raisers");
    let direct = config(&server.endpoint(), &prefix);
    let writer = store(&direct).await.handle("writer", 16);
    for vnode in 0..16 {
        writer
            .write_partial(vnode, 1, 0, Bytes::from(vec![vnode as u8; 8]))
            .await
            .unwrap();
    }
    // Eight handles on eight stores (separate caches) raise at once, to
    // different versions, while writers at version 100 keep writing.
    let mut raisers = Vec::new();
    for i in 0..8u64 {
        raisers.push(store(&direct).await.handle(format!("raiser-{i}"), 16));
    }
    let raises = futures_join_all(
        raisers
            .iter()
            .enumerate()
            .map(|(i, r)| r.persist_authoritative_version(10 + i as u64)),
    );
    let writes = futures_join_all(
        (0..16u32)
            .map(|vnode| writer.write_partial(vnode, 2, 100, Bytes::from(vec![vnode as u8; 4]))),
    );
    let (raised, written) = tokio::join!(raises, writes);
    raised.into_iter().for_each(|r| r.expect("a raise"));
    written.into_iter().for_each(|w| w.expect("a write at 100"));
    let reader = store(&direct).await.handle("reader", 16);
    assert_eq!(reader.authoritative_version(), 0, "not read yet");
    for vnode in 0..16u32 {
        assert_eq!(
            reader.read_partial(vnode, 1).await.unwrap(),
            Some(Bytes::from(vec![vnode as u8; 8]))
        );
        assert_eq!(
            reader.read_partial(vnode, 2).await.unwrap(),
            Some(Bytes::from(vec![vnode as u8; 4]))
        );
    }
    assert_eq!(reader.authoritative_version(), 17, "the highest raise won");
    let stale = reader.write_partial(0, 3, 16, Bytes::new()).await;
    assert!(
        matches!(
            stale,
            Err(StateBackendError::StaleVersion {
                caller: 16,
                authoritative: 17
            })
        ),
        "{stale:?}"
    );
}

/// Await every future, concurrently, in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut pending: Vec<_> = futures.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, future)| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => {
                outputs[*i] = Some(output);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to the end"))
        .collect()
}
