//! Issue 9, point 9: a seal racing a prune of its own epoch, on a real
//! server, with the races forced by a proxy rather than hoped for. The
//! promise: no sealed epoch lacks its partials. A seal ordered before the
//! prune loses its marker to it; one ordered after finds no partials and
//! answers `Ok(false)`; a gate or a pruner that dies half-way leaves no
//! sealed epoch without partials either.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use support::proxy::{Action, FaultProxy, Rule};
use support::{TestServer, config, fresh_prefix, impatient_config, store, stored_keys, wait_for};

/// Every epoch the recovery queries call sealed has a partial for each of
/// `vnodes`, and `latest_committed_epoch` is the last of them. Run while
/// nothing else changes the store.
async fn every_sealed_epoch_has_its_partials(handle: &dyn StateBackend, vnodes: &[u32]) {
    let sealed = handle.sealed_epochs(0).await.expect("sealed_epochs");
    for &epoch in &sealed {
        for &vnode in vnodes {
            assert!(
                handle
                    .read_partial(vnode, epoch)
                    .await
                    .expect("read_partial")
                    .is_some(),
                "epoch {epoch} is sealed (sealed_epochs(0) = {sealed:?}) but its partial for \
                 vnode {vnode} is gone"
            );
        }
    }
    assert_eq!(
        handle
            .latest_committed_epoch()
            .await
            .expect("latest_committed_epoch"),
        sealed.last().copied(),
        "latest_committed_epoch disagrees with sealed_epochs(0) = {sealed:?}"
    );
}

async fn write_epoch(handle: &dyn StateBackend, epoch: u64, vnodes: &[u32]) {
    for &vnode in vnodes {
        handle
            .write_partial(vnode, epoch, 0, Bytes::from_static(b"x"))
            .await
            .expect("write_partial");
    }
}

fn held(proxy: &FaultProxy) -> bool {
    proxy
        .seen()
        .iter()
        .any(|s| matches!(s.fault, Some(Action::Hold | Action::HoldAnswer)))
}

/// The gate listed the partials and its marker PUT is in flight (held at
/// the proxy) while a prune of a later bound runs to the end: the prune's
/// marker pass finds no marker yet, and it deletes the partials the gate
/// counted. Then the marker lands. No reader may count it as a seal (the
/// epoch's partials are gone); the gate, which checked the registry before
/// the prune began, answers that it sealed (ordered before the prune).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_while_the_marker_put_is_in_flight_leaves_no_seal_without_partials() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-put");
    let pruner = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("pruner", 4);
    let sealer = store(&config(&proxy.endpoint(), &prefix))
        .await
        .handle("sealer", 4);
    let vnodes = [0, 1];
    write_epoch(&sealer, 3, &vnodes).await;
    write_epoch(&sealer, 5, &vnodes).await;
    assert!(sealer.epoch_complete(5, &vnodes).await.unwrap());
    proxy.add(Rule {
        method: "PUT",
        contains: "/m/".into(),
        action: Action::Hold,
        times: 1,
    });
    let gate = sealer.epoch_complete(3, &vnodes);
    let prune = async {
        wait_for(&proxy, "the marker PUT to be held", held).await;
        pruner.prune_before(4).await.expect("the prune");
        proxy.release(1);
    };
    let (gated, ()) = tokio::join!(gate, prune);
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
    // No prune had begun when the gate read the registry, after its
    // listing and before its marker PUT: the seal is ordered before the
    // prune, which took it away (readers never count the marker: the
    // prune shows in every registry read after the marker landed).
    assert!(
        matches!(gated, Ok(true)),
        "the gate that checked before the prune began gave {gated:?}"
    );
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), vec![5]);
    // The pruned epoch can be written and sealed afresh, by anyone.
    write_epoch(&pruner, 3, &vnodes).await;
    assert!(pruner.epoch_complete(3, &vnodes).await.unwrap());
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), vec![3, 5]);
    match sealer.epoch_complete(3, &vnodes).await {
        Err(StateBackendError::SplitBrainCommit { committer, .. }) => {
            assert_eq!(committer, "pruner")
        }
        other => panic!("the first gate, asking again, gave {other:?}"),
    }
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
}

/// The same race one step earlier: the gate's listing was answered (all
/// partials present), and the answer reaches the gate only after a prune
/// of the epoch ran to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_after_the_gates_listing_was_answered_leaves_no_seal_without_partials() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-list");
    let pruner = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("pruner", 4);
    let sealer = store(&config(&proxy.endpoint(), &prefix))
        .await
        .handle("sealer", 4);
    let vnodes = [0, 1, 2];
    write_epoch(&sealer, 7, &vnodes).await;
    proxy.add(Rule {
        method: "GET",
        contains: "list-type=2".into(),
        action: Action::HoldAnswer,
        times: 1,
    });
    let gate = sealer.epoch_complete(7, &vnodes);
    let prune = async {
        wait_for(&proxy, "the listing's answer to be held", held).await;
        pruner.prune_before(8).await.expect("the prune");
        proxy.release(1);
    };
    let (gated, ()) = tokio::join!(gate, prune);
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
    // The gate's registry read after its listing shows the prune: it
    // starts over and finds the partials gone.
    assert!(
        matches!(gated, Ok(false)),
        "the gate whose epoch was pruned under it gave {gated:?}"
    );
    assert_eq!(pruner.latest_committed_epoch().await.unwrap(), None);
}

/// The gate's marker landed after a prune of its epoch ran to the end, and
/// the gate died then (here: every read it makes afterwards fails). The
/// gate had checked the registry before the prune began, so the seal is
/// ordered before the prune: the marker stays in the bucket, but nothing
/// treats it as a seal: not the recovery queries, not another gate (which
/// replaces it when the epoch is written again), not the dead gate's
/// instance asking again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_dies_after_its_marker_landed_leaves_no_visible_seal() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-dead-gate");
    let direct = store(&config(&server.endpoint(), &prefix)).await;
    let pruner = direct.handle("pruner", 4);
    let sealer = store(&impatient_config(&proxy.endpoint(), &prefix))
        .await
        .handle("sealer", 4);
    let vnodes = [0, 1];
    write_epoch(&sealer, 3, &vnodes).await;
    proxy.add(Rule {
        method: "PUT",
        contains: "/m/".into(),
        action: Action::Hold,
        times: 1,
    });
    let gate = sealer.epoch_complete(3, &vnodes);
    let prune = async {
        wait_for(&proxy, "the marker PUT to be held", held).await;
        pruner.prune_before(4).await.expect("the prune");
        // From now on the sealer cannot read anything but its marker PUT's
        // answer: as if it died right after that PUT.
        proxy.add(Rule {
            method: "GET",
            contains: String::new(),
            action: Action::Status(500),
            times: 1_000,
        });
        proxy.release(1);
    };
    let (gated, ()) = tokio::join!(gate, prune);
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
    assert!(
        matches!(gated, Ok(true)),
        "the gate, whose marker landed once its PUT was sent, gave {gated:?}"
    );
    assert_eq!(
        stored_keys(&direct, "/m/").await.len(),
        1,
        "the dead gate's marker is in the bucket"
    );
    assert_eq!(pruner.latest_committed_epoch().await.unwrap(), None);
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), Vec::<u64>::new());
    // Written again and sealed by another instance: the left-over marker is
    // no seal, so it is replaced.
    write_epoch(&pruner, 3, &vnodes).await;
    assert!(pruner.epoch_complete(3, &vnodes).await.unwrap());
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), vec![3]);
    proxy.clear_rules();
    match sealer.epoch_complete(3, &vnodes).await {
        Err(StateBackendError::SplitBrainCommit { committer, .. }) => {
            assert_eq!(committer, "pruner")
        }
        other => panic!("the dead gate's instance, asking again, gave {other:?}"),
    }
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
}

/// A prune whose caller gave up on it (its future dropped, as on a
/// timeout) still runs to the end, so it neither leaves a half-pruned epoch
/// behind nor blocks seals below its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_whose_caller_gave_up_still_finishes() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-dropped");
    let direct = store(&config(&server.endpoint(), &prefix)).await;
    let writer = direct.handle("writer", 4);
    let pruner = store(&config(&proxy.endpoint(), &prefix))
        .await
        .handle("pruner", 4);
    let vnodes = [0, 1];
    for epoch in [1, 2, 3] {
        write_epoch(&writer, epoch, &vnodes).await;
        assert!(writer.epoch_complete(epoch, &vnodes).await.unwrap());
    }
    proxy.add(Rule {
        method: "GET",
        contains: "list-type=2".into(),
        action: Action::Hold,
        times: 1,
    });
    let prune = pruner.prune_before(3);
    let gave_up = async {
        wait_for(&proxy, "the prune's listing to be held", held).await;
    };
    tokio::select! {
        done = prune => panic!("the prune finished while held: {done:?}"),
        () = gave_up => {}
    }
    // The future is dropped; the held request goes on.
    proxy.release(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stored_keys(&direct, "/p/00000000000000000002/")
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the abandoned prune never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(writer.sealed_epochs(0).await.unwrap(), vec![3]);
    // Unregistered: a pruned epoch can be sealed again at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        write_epoch(&writer, 1, &vnodes).await;
        if writer.epoch_complete(1, &vnodes).await.unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned prune kept blocking seals below its bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    every_sealed_epoch_has_its_partials(&writer, &vnodes).await;
}

/// A pruner that dies registered (here: every listing it makes fails, so it
/// stops after registering, before deleting anything) takes the markers
/// below its bound out of the recovery queries at once, and blocks seals
/// below its bound until its lease runs out; then they seal again, and a
/// later prune of the bound finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruner_that_dies_registered_blocks_seals_below_its_bound_until_its_lease_ends() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-dead-pruner");
    let direct = store(&config(&server.endpoint(), &prefix)).await;
    let writer: Arc<dyn StateBackend> = Arc::new(direct.handle("writer", 4));
    let mut short = impatient_config(&proxy.endpoint(), &prefix);
    short.max_attempts = 2;
    short.attempt_timeout = Duration::from_millis(500);
    short.operation_timeout = Duration::from_secs(1);
    let pruner = store(&short).await.handle("pruner", 4);
    let vnodes = [0, 1];
    for epoch in [2, 4] {
        write_epoch(&*writer, epoch, &vnodes).await;
        assert!(writer.epoch_complete(epoch, &vnodes).await.unwrap());
    }
    proxy.add(Rule {
        method: "GET",
        contains: "list-type=2".into(),
        action: Action::Status(500),
        times: 1_000,
    });
    let died = pruner.prune_before(3).await;
    let died_at = Instant::now();
    assert!(
        matches!(died, Err(StateBackendError::Io(_))),
        "a prune that cannot list gave {died:?}"
    );
    assert_eq!(
        stored_keys(&direct, "/m/").await.len(),
        2,
        "the dead prune deleted no marker"
    );
    // Its marker is still there, its partials too, but epoch 2 is being
    // pruned: not sealed any more.
    assert_eq!(writer.sealed_epochs(0).await.unwrap(), vec![4]);
    assert_eq!(writer.latest_committed_epoch().await.unwrap(), Some(4));
    assert!(writer.read_partial(0, 2).await.unwrap().is_some());
    assert!(
        !writer.epoch_complete(2, &vnodes).await.unwrap(),
        "a seal below the bound of a registered prune"
    );
    let sealed_again = loop {
        if writer.epoch_complete(2, &vnodes).await.unwrap() {
            break died_at.elapsed();
        }
        assert!(
            died_at.elapsed() < Duration::from_secs(30),
            "seals below a dead prune's bound stayed blocked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The lease: 4 x (1 s operation + 0.5 s attempt) = 6 s from the
    // registration, plus the clock skew allowed.
    assert!(
        sealed_again >= Duration::from_secs(4),
        "the dead prune's lease ended after only {sealed_again:?}"
    );
    assert_eq!(writer.sealed_epochs(0).await.unwrap(), vec![2, 4]);
    every_sealed_epoch_has_its_partials(&*writer, &vnodes).await;
    writer.prune_before(3).await.expect("a later prune");
    assert_eq!(writer.sealed_epochs(0).await.unwrap(), vec![4]);
    assert!(writer.read_partial(0, 2).await.unwrap().is_none());
    every_sealed_epoch_has_its_partials(&*writer, &vnodes).await;
}

/// A gate judges a marker with the newest registry its process saw, which
/// may be older than a prune another process ran since; the read after its
/// marker landed shows the prune, and the gate seals again on that
/// registry, so a pruned epoch written again is sealed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_with_an_old_copy_of_the_registry_seals_a_rewritten_epoch_for_good() {
    let server = TestServer::start();
    let prefix = fresh_prefix("race-stale-copy");
    let sealer = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("sealer", 4);
    let pruner = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("pruner", 4);
    let vnodes = [0, 1];
    for epoch in [1, 2] {
        write_epoch(&sealer, epoch, &vnodes).await;
        assert!(sealer.epoch_complete(epoch, &vnodes).await.unwrap());
    }
    // Another process prunes twice; the sealer's copy predates both.
    pruner.prune_before(2).await.unwrap();
    pruner.prune_before(3).await.unwrap();
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), Vec::<u64>::new());
    write_epoch(&sealer, 1, &vnodes).await;
    assert!(sealer.epoch_complete(1, &vnodes).await.unwrap());
    let observer = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("observer", 4);
    assert_eq!(observer.sealed_epochs(0).await.unwrap(), vec![1]);
    assert_eq!(observer.latest_committed_epoch().await.unwrap(), Some(1));
    match observer.epoch_complete(1, &vnodes).await {
        Err(StateBackendError::SplitBrainCommit { committer, .. }) => {
            assert_eq!(committer, "sealer")
        }
        other => panic!("another instance sealing gave {other:?}"),
    }
    every_sealed_epoch_has_its_partials(&observer, &vnodes).await;
}

/// The registry decides which markers are seals, so damage to it is an
/// error, never an empty registry: damaged bytes fail their frame, and a
/// registry that goes back (deleted, as by a lifecycle rule) is noticed by
/// a process that read it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_deleted_prune_registry_is_an_error() {
    let server = TestServer::start();
    let prefix = fresh_prefix("race-damage");
    let direct = store(&config(&server.endpoint(), &prefix)).await;
    let handle = direct.handle("a", 4);
    let vnodes = [0];
    for epoch in [1, 2] {
        write_epoch(&handle, epoch, &vnodes).await;
        assert!(handle.epoch_complete(epoch, &vnodes).await.unwrap());
    }
    handle.prune_before(2).await.unwrap();
    assert_eq!(handle.sealed_epochs(0).await.unwrap(), vec![2]);
    let key = format!("{}prunes", direct.prefix());
    direct
        .client()
        .delete_object()
        .bucket(direct.bucket())
        .key(&key)
        .send()
        .await
        .expect("raw DELETE");
    let gone = handle.sealed_epochs(0).await;
    assert!(
        matches!(&gone, Err(StateBackendError::Serialization(m)) if m.contains("prune registry")),
        "a deleted registry gave {gone:?}"
    );
    direct
        .client()
        .put_object()
        .bucket(direct.bucket())
        .key(&key)
        .body(b"not a frame".to_vec().into())
        .send()
        .await
        .expect("raw PUT");
    let fresh = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("b", 4);
    let damaged = fresh.latest_committed_epoch().await;
    assert!(
        matches!(damaged, Err(StateBackendError::Serialization(_))),
        "a damaged registry gave {damaged:?} to a reader"
    );
    let damaged = fresh.epoch_complete(2, &vnodes).await;
    assert!(
        matches!(damaged, Err(StateBackendError::Serialization(_))),
        "a damaged registry gave {damaged:?} to a gate"
    );
}

/// Found by `cargo xtask chaos --backend s3` (seed 77: "wrong loser"). A
/// gate's marker landed and another handle was told it sealed the epoch
/// (`SplitBrainCommit` naming it); then a prune of the epoch ran before
/// the gate heard back. The gate must answer that it sealed: the other
/// handle's answer names it (the gate used to read the registry after its
/// marker landed, see the prune, and answer `Ok(false)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_named_as_committer_never_answers_that_it_did_not_seal() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-named");
    let direct = store(&config(&server.endpoint(), &prefix)).await;
    let (rival, pruner) = (direct.handle("rival", 4), direct.handle("pruner", 4));
    let sealer = store(&config(&proxy.endpoint(), &prefix))
        .await
        .handle("sealer", 4);
    let vnodes = [0, 1];
    write_epoch(&sealer, 3, &vnodes).await;
    // The gate's marker lands; its answer waits at the proxy.
    proxy.add(Rule {
        method: "PUT",
        contains: "/m/".into(),
        action: Action::HoldAnswer,
        times: 1,
    });
    let gate = sealer.epoch_complete(3, &vnodes);
    let others = async {
        wait_for(&proxy, "the marker PUT's answer to be held", held).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while rival.latest_committed_epoch().await.expect("latest") != Some(3) {
            assert!(
                Instant::now() < deadline,
                "the sealer's marker never landed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match rival.epoch_complete(3, &vnodes).await {
            Err(StateBackendError::SplitBrainCommit { committer, .. }) => {
                assert_eq!(
                    committer, "sealer",
                    "the rival was told the wrong committer"
                )
            }
            other => panic!("the rival's gate, after the sealer's marker landed, gave {other:?}"),
        }
        pruner.prune_before(4).await.expect("the prune");
        proxy.release(1);
    };
    let (gated, ()) = tokio::join!(gate, others);
    assert!(
        matches!(gated, Ok(true)),
        "the rival was told the sealer sealed epoch 3, but the sealer's own gate gave {gated:?}"
    );
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
}

/// Found by `cargo xtask chaos --backend s3` (a long run: "refused bytes
/// read"). A write's object landed and was read by others; then its epoch
/// was pruned, and only after that was the fence raised past the write's
/// period, so the new fence's snapshot (listed after the prune) does not
/// name the object. The writer, learning of the raise, must not answer
/// `StaleVersion`: its bytes were visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_read_by_others_and_then_pruned_is_never_refused() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-read-pruned");
    let leader = store(&config(&server.endpoint(), &prefix))
        .await
        .handle("leader", 4);
    let writer = store(&config(&proxy.endpoint(), &prefix))
        .await
        .handle("writer", 4);
    writer
        .persist_authoritative_version(1)
        .await
        .expect("fence 1");
    // The write lands at once; its answer waits at the proxy.
    proxy.add(Rule {
        method: "PUT",
        contains: "/p/".into(),
        action: Action::HoldAnswer,
        times: 1,
    });
    let write = writer.write_partial(0, 3, 1, Bytes::from_static(b"seen"));
    let others = async {
        wait_for(&proxy, "the write's answer to be held", held).await;
        // Held once the server answered, which the proxy logs only after
        // it saw the request: poll until the object is there.
        let deadline = Instant::now() + Duration::from_secs(10);
        while leader
            .read_partial(0, 3)
            .await
            .expect("read_partial")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "the landed write never became visible under the fence it was written at"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            leader.read_partial(0, 3).await.expect("read_partial"),
            Some(Bytes::from_static(b"seen"))
        );
        leader.prune_before(4).await.expect("the prune");
        leader
            .persist_authoritative_version(2)
            .await
            .expect("fence 2");
        proxy.release(1);
    };
    let (written, ()) = tokio::join!(write, others);
    assert!(
        matches!(written, Ok(()) | Err(StateBackendError::Io(_))),
        "a write whose bytes were read was answered {written:?}"
    );
    // Whatever the answer, the writer is fenced out from now on.
    assert!(matches!(
        writer
            .write_partial(0, 5, 1, Bytes::from_static(b"late"))
            .await,
        Err(StateBackendError::StaleVersion { .. })
    ));
    assert_eq!(leader.read_partial(0, 5).await.unwrap(), None);
}

/// The lost-answer twin of the test above: the marker PUT lands but its
/// answer is lost (the connection drops), and the client's retry of the PUT
/// reaches the store only after another handle was told the sealer won and
/// a prune of the epoch ran (and deleted the marker, so the retry creates
/// it again). The gate must still answer that it sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_marker_answer_was_lost_still_answers_that_it_sealed() {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let prefix = fresh_prefix("race-lost-marker");
    let direct = store(&config(&server.endpoint(), &prefix)).await;
    let (rival, pruner) = (direct.handle("rival", 4), direct.handle("pruner", 4));
    let sealer = store(&config(&proxy.endpoint(), &prefix))
        .await
        .handle("sealer", 4);
    let vnodes = [0, 1];
    write_epoch(&sealer, 3, &vnodes).await;
    // The first marker PUT lands and its answer is lost; the retry waits.
    proxy.add(Rule {
        method: "PUT",
        contains: "/m/".into(),
        action: Action::ForwardThenDrop,
        times: 1,
    });
    proxy.add(Rule {
        method: "PUT",
        contains: "/m/".into(),
        action: Action::Hold,
        times: 1,
    });
    let gate = sealer.epoch_complete(3, &vnodes);
    let others = async {
        wait_for(&proxy, "the retried marker PUT to be held", |p| {
            p.seen().iter().any(|s| s.fault == Some(Action::Hold))
        })
        .await;
        match rival.epoch_complete(3, &vnodes).await {
            Err(StateBackendError::SplitBrainCommit { committer, .. }) => {
                assert_eq!(
                    committer, "sealer",
                    "the rival was told the wrong committer"
                )
            }
            other => panic!("the rival's gate, after the sealer's marker landed, gave {other:?}"),
        }
        pruner.prune_before(4).await.expect("the prune");
        proxy.release(1);
    };
    let (gated, ()) = tokio::join!(gate, others);
    assert!(
        matches!(gated, Ok(true)),
        "the rival was told the sealer sealed epoch 3, but the sealer's own gate gave {gated:?}"
    );
    every_sealed_epoch_has_its_partials(&pruner, &vnodes).await;
}
