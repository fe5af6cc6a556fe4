//! The fence design on a real server, with the races forced rather than
//! hoped for: a proxy holds a zombie's PUT until the raise is acknowledged,
//! and makes the zombie's clean-up fail, so the late object stays in the
//! bucket. It must be invisible to reads and to the commit gate, while
//! everything acknowledged before the raise stays visible.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use support::proxy::{Action, FaultProxy};
use support::{
    ProxiedPrefix, assert_sealed_by, config, held, is_stale, read, requests, rule, store,
    stored_keys, wait_for, while_held, write_epoch,
};

/// The path fragment of the partials of `(vnode, epoch)`.
fn partial_path(vnode: u32, epoch: u64) -> String {
    format!("/p/{epoch:020}/{vnode:010}.")
}

/// A handle through the proxy, told version 1, whose write to vnode 0 of
/// epoch 5 was acknowledged (before a raise to come).
async fn zombie_told_1(race: &ProxiedPrefix) -> laminar_state_s3::S3Backend {
    let zombie = race.proxied("zombie").await;
    zombie.set_authoritative_version(1);
    zombie
        .write_partial(0, 5, 1, Bytes::from_static(b"before"))
        .await
        .expect("a write before the raise");
    zombie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_write_landing_after_the_raise_is_invisible() {
    let race = ProxiedPrefix::start("zombie").await;
    // The zombie reaches the bucket through the proxy; the leader and the
    // observer directly.
    let zombie_store = store(&race.proxied_config()).await;
    let leader = race.direct_store().await.handle("leader", 8);
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
        race.fault("PUT", &partial_path(vnode, 5), Action::Hold, 1);
    }
    race.fault("DELETE", "/p/", Action::Status(500), 1_000);
    let late = |vnode: u32| {
        let zombie = &zombie;
        async move {
            zombie
                .write_partial(vnode, 5, 1, Bytes::from_static(b"zombie"))
                .await
        }
    };
    let zombie_writes = async { tokio::join!(late(1), late(2)) };
    // Only once the raise is acknowledged do the zombie's PUTs land.
    let ((one, two), ()) = race
        .while_held(
            2,
            "the zombie's PUTs to reach the proxy",
            zombie_writes,
            async {
                leader
                    .persist_authoritative_version(2)
                    .await
                    .expect("the raise");
            },
        )
        .await;
    for (vnode, outcome) in [(1, one), (2, two)] {
        assert!(
            is_stale(&outcome, 1, 2),
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
    let observer = race.direct_store().await.handle("observer", 8);
    assert_eq!(read(&observer, 1, 5).await, None);
    assert_eq!(
        read(&observer, 2, 5).await.as_deref(),
        Some(&b"before"[..]),
        "the zombie's late write replaced acknowledged data"
    );
    assert_eq!(read(&observer, 0, 5).await.as_deref(), Some(&b"before"[..]));
    assert!(
        !observer.epoch_complete(5, &[0, 1, 2]).await.unwrap(),
        "the gate counted the zombie's late partial"
    );
    assert_eq!(
        observer.partials(5).await.unwrap(),
        Some(vec![0, 2]),
        "the listing named the zombie's late, invisible partial of vnode 1"
    );
    leader
        .write_partial(1, 5, 2, Bytes::from_static(b"leader"))
        .await
        .expect("the leader's write");
    assert_eq!(read(&observer, 1, 5).await.as_deref(), Some(&b"leader"[..]));
    assert!(observer.epoch_complete(5, &[0, 1, 2]).await.unwrap());

    // Another raise builds on the snapshot: the late object stays hidden,
    // the pre-raise data stays visible.
    leader.persist_authoritative_version(3).await.unwrap();
    let later = race.direct_store().await.handle("later", 8);
    assert_eq!(read(&later, 2, 5).await.as_deref(), Some(&b"before"[..]));
    assert_eq!(read(&later, 1, 5).await.as_deref(), Some(&b"leader"[..]));
    assert_eq!(later.partials(5).await.unwrap(), Some(vec![0, 1, 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_cut_short_before_its_snapshot_is_finished_by_the_next_reader() {
    let race = ProxiedPrefix::start("cut").await;
    let mut through_proxy = race.proxied_config();
    through_proxy.max_attempts = 2;
    let leader = store(&through_proxy).await.handle("leader", 4);
    let writer = race.direct("writer").await;
    writer
        .write_partial(0, 7, 0, Bytes::from_static(b"kept"))
        .await
        .unwrap();

    // The raise swaps the fence, then cannot write its snapshot.
    race.fault("PUT", "/snapshots/", Action::Status(500), 1_000);
    let cut = leader.persist_authoritative_version(4).await;
    assert!(
        matches!(cut, Err(StateBackendError::Io(_))),
        "a raise whose snapshot failed gave {cut:?}"
    );
    let snapshot_writes = race.seen("PUT", "/snapshots/");
    assert_eq!(snapshot_writes, 2, "the snapshot PUT was retried once");

    // A reader that needs the missing snapshot builds it...
    let reader = race.direct("reader").await;
    assert_eq!(read(&reader, 0, 7).await.as_deref(), Some(&b"kept"[..]));
    assert_eq!(read(&reader, 1, 7).await, None);
    let built = stored_keys(&reader.store().clone(), "/snapshots/").await;
    assert!(
        built.iter().any(|k| k.ends_with(&format!("{:020}", 4))),
        "no snapshot for fence 4 in {built:?}"
    );
    // ...and from then on the fence is in force for every handle, even one
    // that has not read it yet. (A write that lands before the snapshot's
    // listing is concurrent with the unfinished raise: the snapshot names
    // it and its writer is told `Ok`.)
    let stale = writer
        .write_partial(1, 7, 3, Bytes::from_static(b"stale"))
        .await;
    assert!(is_stale(&stale, 3, 4), "{stale:?}");
    assert_eq!(read(&reader, 1, 7).await, None);

    // The leader, its fault gone, raises again.
    race.proxy.clear_rules();
    leader.persist_authoritative_version(6).await.unwrap();
    writer
        .write_partial(1, 7, 6, Bytes::from_static(b"new"))
        .await
        .unwrap();
    let again = race.direct("again").await;
    assert_eq!(read(&again, 0, 7).await.as_deref(), Some(&b"kept"[..]));
    assert_eq!(read(&again, 1, 7).await.as_deref(), Some(&b"new"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_raisers_agree_and_every_acknowledged_write_survives() {
    let race = ProxiedPrefix::start("raisers").await;
    let writer = race.direct_store().await.handle("writer", 16);
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
        raisers.push(race.direct_store().await.handle(format!("raiser-{i}"), 16));
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
    let reader = race.direct_store().await.handle("reader", 16);
    assert_eq!(reader.authoritative_version(), 0, "not read yet");
    for vnode in 0..16u32 {
        assert_eq!(
            read(&reader, vnode, 1).await,
            Some(Bytes::from(vec![vnode as u8; 8]))
        );
        assert_eq!(
            read(&reader, vnode, 2).await,
            Some(Bytes::from(vec![vnode as u8; 4]))
        );
    }
    assert_eq!(reader.authoritative_version(), 17, "the highest raise won");
    let stale = reader.write_partial(0, 3, 16, Bytes::new()).await;
    assert!(is_stale(&stale, 16, 17), "{stale:?}");
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

/// Issue 9, point 5: a reader's LIST answered after a raise (and after a
/// zombie's late object landed) is judged under a fence read that started
/// after the listing, never under one answered before the raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_answered_after_a_raise_is_judged_under_a_later_fence_read() {
    let race = ProxiedPrefix::start("order").await;
    let leader = race.direct("leader").await;
    leader.persist_authoritative_version(1).await.unwrap();
    // The zombie was told 1 and its store has read fence 1.
    let zombie = zombie_told_1(&race).await;
    // A reader and a gate, each on its own store (its own fence reads).
    let reader = race.proxied("reader").await;
    let gate = race.proxied("gate").await;
    race.proxy.reset_log();
    race.fault("GET", "list-type=2", Action::Hold, 2);
    let reading =
        async { tokio::join!(reader.read_partial(1, 5), gate.epoch_complete(5, &[0, 1])) };
    let meanwhile = async {
        // A fence read sent alongside the LIST is answered now, before the
        // raise (fence 1). If none is sent within a second, none is coming.
        let quiet = Instant::now() + Duration::from_secs(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let sent_while_listing = loop {
            let sent = requests(&race.proxy.seen(), "HEAD", "/fence");
            let answered = requests(&race.proxy.answered(), "HEAD", "/fence");
            if (sent == 0 && Instant::now() >= quiet) || (sent == 2 && answered == 2) {
                break sent;
            }
            assert!(
                Instant::now() < deadline,
                "fence reads sent {sent}, answered {answered}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        leader
            .persist_authoritative_version(2)
            .await
            .expect("the raise");
        // The zombie's write lands after the raise; its clean-up fails, so
        // its object stays in the bucket.
        race.fault("DELETE", "/p/", Action::Status(500), 1_000);
        let late = zombie
            .write_partial(1, 5, 1, Bytes::from_static(b"zombie"))
            .await;
        assert!(is_stale(&late, 1, 2), "the late zombie write gave {late:?}");
        sent_while_listing
    };
    let ((read, sealed), sent_while_listing) = race
        .while_held(2, "both LISTs to be held", reading, meanwhile)
        .await;
    assert_eq!(
        stored_keys(reader.store(), &partial_path(1, 5)).await.len(),
        1,
        "the zombie's object is in the bucket (its clean-up failed)"
    );
    assert_eq!(
        read.expect("the read"),
        None,
        "the read returned the bytes of a refused write"
    );
    assert!(
        !sealed.expect("the gate"),
        "the gate counted the partial of a refused write"
    );
    assert_eq!(
        sent_while_listing, 0,
        "the reader and the gate read the fence while their listings were held"
    );
}

/// Issue 9, point 6: a zombie whose PUT lands between the fence swap and the
/// raise's listing is named by the raise's snapshot. Whatever its writer is
/// told must match what readers see, even when its clean-up DELETE fails:
/// `StaleVersion` means never visible, `Ok` means visible for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_never_visible_even_when_its_clean_up_fails() {
    // The zombie reaches the bucket through the race's proxy, the leader
    // through a proxy of its own.
    let race = ProxiedPrefix::start("refused").await;
    let leader_proxy = FaultProxy::start(&race.server.address()).await;
    let leader = store(&config(&leader_proxy.endpoint(), &race.prefix))
        .await
        .handle("leader", 4);
    leader.persist_authoritative_version(1).await.unwrap();
    let zombie = zombie_told_1(&race).await;

    race.fault("PUT", &partial_path(1, 5), Action::Hold, 1);
    race.fault("DELETE", "/p/", Action::Status(500), 1_000);
    // The raise's listing for its snapshot is held: the swap is done, the
    // snapshot not yet listed.
    leader_proxy.reset_log();
    leader_proxy.add(rule("GET", "list-type=2", Action::Hold, 1));
    let write = zombie.write_partial(1, 5, 1, Bytes::from_static(b"zombie"));
    let raise = async {
        wait_for(&race.proxy, "the zombie's PUT to be held", |p| held(p) > 0).await;
        let land_in_between = async {
            assert_eq!(
                requests(&leader_proxy.answered(), "PUT", "/fence"),
                1,
                "the swap is done"
            );
            race.proxy.release(1);
            wait_for(&race.proxy, "the zombie's PUT to land", |p| {
                requests(&p.answered(), "PUT", &partial_path(1, 5)) == 1
            })
            .await;
        };
        let (raised, ()) = while_held(
            &leader_proxy,
            1,
            "the raise's listing to be held",
            leader.persist_authoritative_version(2),
            land_in_between,
        )
        .await;
        raised.expect("the raise");
    };
    let (outcome, ()) = tokio::join!(write, raise);
    assert_eq!(
        stored_keys(zombie.store(), &partial_path(1, 5)).await.len(),
        1,
        "the zombie's object is in the bucket"
    );
    let observer = race.direct("observer").await;
    let seen = observer.read_partial(1, 5).await.expect("a read");
    let counted = observer.epoch_complete(5, &[0, 1]).await.expect("the gate");
    match &outcome {
        Err(StateBackendError::StaleVersion { .. }) => {
            assert_eq!(seen, None, "a write answered {outcome:?} is visible");
            assert!(!counted, "the gate counted a write answered {outcome:?}");
        }
        Ok(()) => {
            assert_eq!(seen.as_deref(), Some(&b"zombie"[..]));
            assert!(counted);
        }
        Err(other) => panic!("the zombie's write failed with {other:?}"),
    }
    // The write was named by the snapshot, so it took effect before the
    // raise: the writer is told so.
    assert!(outcome.is_ok(), "the zombie's write gave {outcome:?}");
    // Later snapshots carry it, and a new leader's gate agrees.
    leader.persist_authoritative_version(3).await.unwrap();
    let later = race.direct("later").await;
    assert_eq!(read(&later, 1, 5).await.as_deref(), Some(&b"zombie"[..]));
}

/// Issue 9, point 6, the rewrite path: a writer whose version satisfies a
/// fence that rose past its store's period writes again in the new period;
/// its first object, landed after the raise's snapshot, is invisible and is
/// deleted, not left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_rewritten_in_the_new_period_leaves_no_object_behind() {
    let race = ProxiedPrefix::start("rewrite").await;
    let leader = race.direct("leader").await;
    leader.persist_authoritative_version(1).await.unwrap();
    let writer = race.direct("writer").await;
    writer
        .write_partial(0, 5, 1, Bytes::from_static(b"period 1"))
        .await
        .unwrap();
    // The raise is acknowledged; the writer's store still believes fence 1.
    leader.persist_authoritative_version(2).await.unwrap();
    writer
        .write_partial(1, 5, 2, Bytes::from_static(b"rewritten"))
        .await
        .expect("a write at the new fence");
    let keys = stored_keys(writer.store(), &partial_path(1, 5)).await;
    assert_eq!(keys.len(), 1, "objects of one write: {keys:?}");
    assert!(
        keys[0].contains(&format!(".{:020}.", 2)),
        "the object left is of period 2: {keys:?}"
    );
    let reader = race.direct("reader").await;
    assert_eq!(
        read(&reader, 1, 5).await.as_deref(),
        Some(&b"rewritten"[..])
    );
}

/// Issue 9, point 7: the S3 gate cannot make its marker PUT conditional on
/// the fence (two requests, two objects), so it does not claim to fence
/// seals: a deposed leader whose marker PUT is in flight while a raise is
/// acknowledged seals the epoch (shown here by holding that PUT), and so
/// does one whose gate starts after the raise. What holds is one committer
/// per epoch: the new leader learns who sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_can_seal_while_its_marker_is_in_flight() {
    let race = ProxiedPrefix::start("seal-window").await;
    let old = race.proxied("old").await;
    let new = race.direct("new").await;
    old.persist_authoritative_version(1).await.unwrap();
    for epoch in [3, 4] {
        write_epoch(&old, epoch, 1, &[0, 1]).await;
    }
    race.fault("PUT", "/m/", Action::Hold, 1);
    let (sealed, ()) = race
        .while_held(
            1,
            "the marker PUT to be held",
            old.epoch_complete(3, &[0, 1]),
            async {
                new.persist_authoritative_version(2)
                    .await
                    .expect("the raise");
            },
        )
        .await;
    assert!(
        matches!(sealed, Ok(true)),
        "the documented window: the deposed leader's seal in flight during the raise gave {sealed:?}"
    );
    assert_sealed_by(&new, 3, &[0, 1], "old", "the new leader's gate").await;
    // Once the raise is acknowledged, a gate that starts then reads the new
    // fence and refuses the deposed leader (the best effort that holds
    // whenever no marker PUT is already in flight), sealing nothing.
    let late = old.epoch_complete(4, &[0, 1]).await;
    assert!(
        is_stale(&late, 1, 2),
        "a deposed leader's gate after the raise gave {late:?}"
    );
    assert!(matches!(new.epoch_complete(4, &[0, 1]).await, Ok(true)));
    // The deposed leader's writes are refused, as ever.
    let stale = old.write_partial(0, 5, 1, Bytes::from_static(b"x")).await;
    assert!(is_stale(&stale, 1, 2), "{stale:?}");
}

/// Issue 9, point 9 (the part fixed): a gate whose marker PUT met 412, and
/// whose marker was pruned (with the epoch's partials) before it could read
/// it, lists the partials again instead of creating the marker unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_marker_was_pruned_after_its_412_lists_again() {
    let race = ProxiedPrefix::start("gate-prune").await;
    let first = race.direct("first").await;
    let second = race.proxied("second").await;
    write_epoch(&first, 3, 0, &[0, 1]).await;
    assert!(first.epoch_complete(3, &[0, 1]).await.unwrap());
    // The second gate's read of the marker (after its 412) is held while
    // the epoch is pruned.
    race.fault("GET", "/m/", Action::Hold, 1);
    let gate = second.epoch_complete(3, &[0, 1]);
    let gated = race
        .prune_while_held("the marker read to be held", gate, &first, 4)
        .await;
    assert!(
        matches!(gated, Ok(false)),
        "a gate racing the prune of its epoch gave {gated:?}"
    );
    assert_eq!(
        first.latest_committed_epoch().await.unwrap(),
        None,
        "a marker outlived the prune of its epoch"
    );
    assert_eq!(first.sealed_epochs(0).await.unwrap(), Vec::<u64>::new());
}
