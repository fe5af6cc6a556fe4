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
use laminar_state_s3::S3Backend;
use support::proxy::Action;
use support::{
    ProxiedPrefix, VNODE_CAPACITY, assert_sealed_by, held, impatient_config, now_ms, put_registry,
    raw_delete, raw_put, read, store, stored_keys, wait_for, write_epoch,
};

/// Every epoch the recovery queries call sealed has a partial for each of
/// `vnodes`, and `latest_committed_epoch` is the last of them. Run while
/// nothing else changes the store.
async fn every_sealed_epoch_has_its_partials(handle: &dyn StateBackend, vnodes: &[u32]) {
    let sealed = handle.sealed_epochs(0).await.expect("sealed_epochs");
    for &epoch in &sealed {
        for &vnode in vnodes {
            assert!(
                read(handle, vnode, epoch).await.is_some(),
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

/// Write and seal each of `epochs` through `handle`.
async fn seal_epochs(handle: &dyn StateBackend, epochs: &[u64], vnodes: &[u32]) {
    for &epoch in epochs {
        write_epoch(handle, epoch, 0, vnodes).await;
        assert!(handle.epoch_complete(epoch, vnodes).await.unwrap());
    }
}

/// Poll every `period` until `done` holds, failing with `never` at
/// `deadline`; when it held.
async fn poll_until<F: std::future::Future<Output = bool>>(
    deadline: Instant,
    period: Duration,
    never: &str,
    mut done: impl FnMut() -> F,
) -> Instant {
    while !done().await {
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(period).await;
    }
    Instant::now()
}

/// The pruned epoch 3 is written again and sealed by `pruner`, after
/// which `sealed` are the sealed epochs; `sealer`'s gate (`who`), asking
/// again, is told that the pruner sealed it.
async fn pruner_reseals_3(
    sealer: &dyn StateBackend,
    pruner: &dyn StateBackend,
    vnodes: &[u32],
    sealed: &[u64],
    who: &str,
) {
    seal_epochs(pruner, &[3], vnodes).await;
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), sealed);
    let asking = format!("{who}, asking again,");
    assert_sealed_by(sealer, 3, vnodes, "pruner", &asking).await;
    every_sealed_epoch_has_its_partials(pruner, vnodes).await;
}

/// A gate racing a prune: on a prefix behind a proxy, a handle "sealer"
/// that reaches it through the proxy and a handle "pruner" that reaches it
/// directly.
struct Race {
    on: ProxiedPrefix,
    sealer: S3Backend,
    pruner: S3Backend,
}

impl Race {
    async fn start(tag: &str) -> Self {
        let on = ProxiedPrefix::start(tag).await;
        let sealer = on.proxied("sealer").await;
        let pruner = on.direct("pruner").await;
        Self { on, sealer, pruner }
    }

    /// The sealer's gate for `epoch` over `vnodes`, with one request (or
    /// answer) of it held at the proxy (`what` names it) while the pruner
    /// prunes below `bound` to the end; what the gate answered, once every
    /// sealed epoch is seen to have its partials.
    async fn gate_across_prune(
        &self,
        epoch: u64,
        vnodes: &[u32],
        bound: u64,
        what: &str,
    ) -> Result<bool, StateBackendError> {
        let gate = self.sealer.epoch_complete(epoch, vnodes);
        let gated = self
            .on
            .prune_while_held(what, gate, &self.pruner, bound)
            .await;
        every_sealed_epoch_has_its_partials(&self.pruner, vnodes).await;
        gated
    }
}

/// A gate whose seal another handle learns of before a prune: on a prefix
/// behind a proxy, a handle "sealer" that reaches it through the proxy and
/// has written epoch 3, and a "rival" and a "pruner" on one store that
/// reaches it directly.
struct Rivals {
    on: ProxiedPrefix,
    sealer: S3Backend,
    rival: S3Backend,
    pruner: S3Backend,
}

impl Rivals {
    const VNODES: [u32; 2] = [0, 1];

    async fn start(tag: &str) -> Self {
        let on = ProxiedPrefix::start(tag).await;
        let direct = on.direct_store().await;
        let (rival, pruner) = (
            direct.handle("rival", VNODE_CAPACITY),
            direct.handle("pruner", VNODE_CAPACITY),
        );
        let sealer = on.proxied("sealer").await;
        write_epoch(&sealer, 3, 0, &Self::VNODES).await;
        Self {
            on,
            sealer,
            rival,
            pruner,
        }
    }

    /// The sealer's gate for epoch 3, with one request (or answer) of it
    /// held at the proxy (`what` names it) while, once `landed` is done,
    /// the rival's gate is told that the sealer sealed the epoch and a
    /// prune of the epoch runs to the end. The sealer's gate must then
    /// answer that it sealed.
    async fn sealer_named_then_pruned(
        &self,
        what: &str,
        landed: impl std::future::Future<Output = ()>,
    ) {
        let vnodes = &Self::VNODES;
        let told_then_pruned = async {
            landed.await;
            assert_sealed_by(
                &self.rival,
                3,
                vnodes,
                "sealer",
                "the rival's gate, after the sealer's marker landed,",
            )
            .await;
            self.pruner.prune_before(4).await.expect("the prune");
        };
        let gate = self.sealer.epoch_complete(3, vnodes);
        let (gated, ()) = self.on.while_held(1, what, gate, told_then_pruned).await;
        assert!(
            matches!(gated, Ok(true)),
            "the rival was told the sealer sealed epoch 3, but the sealer's own gate gave {gated:?}"
        );
        every_sealed_epoch_has_its_partials(&self.pruner, vnodes).await;
    }
}

/// The gate listed the partials and its marker PUT is in flight (held at
/// the proxy) while a prune of a later bound runs to the end: the prune's
/// marker pass finds no marker yet, and it deletes the partials the gate
/// counted. Then the marker lands. No reader may count it as a seal (the
/// epoch's partials are gone); the gate, which checked the registry before
/// the prune began, answers that it sealed (ordered before the prune).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_while_the_marker_put_is_in_flight_leaves_no_seal_without_partials() {
    let race = Race::start("race-put").await;
    let Race { sealer, pruner, .. } = &race;
    let vnodes = [0, 1];
    write_epoch(sealer, 3, 0, &vnodes).await;
    write_epoch(sealer, 5, 0, &vnodes).await;
    assert!(sealer.epoch_complete(5, &vnodes).await.unwrap());
    race.on.fault("PUT", "/m/", Action::Hold, 1);
    let gated = race
        .gate_across_prune(3, &vnodes, 4, "the marker PUT to be held")
        .await;
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
    pruner_reseals_3(sealer, pruner, &vnodes, &[3, 5], "the first gate").await;
}

/// The same race one step earlier: the gate's listing was answered (all
/// partials present), and the answer reaches the gate only after a prune
/// of the epoch ran to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_after_the_gates_listing_was_answered_leaves_no_seal_without_partials() {
    let race = Race::start("race-list").await;
    let vnodes = [0, 1, 2];
    write_epoch(&race.sealer, 7, 0, &vnodes).await;
    race.on.fault("GET", "list-type=2", Action::HoldAnswer, 1);
    let gated = race
        .gate_across_prune(7, &vnodes, 8, "the listing's answer to be held")
        .await;
    // The gate's registry read after its listing shows the prune: it
    // starts over and finds the partials gone.
    assert!(
        matches!(gated, Ok(false)),
        "the gate whose epoch was pruned under it gave {gated:?}"
    );
    assert_eq!(race.pruner.latest_committed_epoch().await.unwrap(), None);
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
    let race = ProxiedPrefix::start("race-dead-gate").await;
    let direct = race.direct_store().await;
    let pruner = direct.handle("pruner", VNODE_CAPACITY);
    let sealer = store(&impatient_config(&race.proxy.endpoint(), &race.prefix))
        .await
        .handle("sealer", VNODE_CAPACITY);
    let vnodes = [0, 1];
    write_epoch(&sealer, 3, 0, &vnodes).await;
    race.fault("PUT", "/m/", Action::Hold, 1);
    let (gated, ()) = race
        .while_held(
            1,
            "the marker PUT to be held",
            sealer.epoch_complete(3, &vnodes),
            async {
                pruner.prune_before(4).await.expect("the prune");
                // From now on the sealer cannot read anything but its marker
                // PUT's answer: as if it died right after that PUT.
                race.fault("GET", "", Action::Status(500), 1_000);
            },
        )
        .await;
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
    // no seal, so it is replaced. (The pruner does not go through the
    // proxy: only the dead gate's instance, asking again, is back.)
    race.proxy.clear_rules();
    pruner_reseals_3(&sealer, &pruner, &vnodes, &[3], "the dead gate's instance").await;
}

/// A prune whose caller gave up on it (its future dropped, as on a
/// timeout) still runs to the end, so it neither leaves a half-pruned epoch
/// behind nor blocks seals below its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_whose_caller_gave_up_still_finishes() {
    let race = ProxiedPrefix::start("race-dropped").await;
    let direct = race.direct_store().await;
    let writer = direct.handle("writer", VNODE_CAPACITY);
    let pruner = race.proxied("pruner").await;
    let vnodes = [0, 1];
    seal_epochs(&writer, &[1, 2, 3], &vnodes).await;
    race.fault("GET", "list-type=2", Action::Hold, 1);
    let prune = pruner.prune_before(3);
    let gave_up = async {
        wait_for(&race.proxy, "the prune's listing to be held", |p| {
            held(p) > 0
        })
        .await;
    };
    tokio::select! {
        done = prune => panic!("the prune finished while held: {done:?}"),
        () = gave_up => {}
    }
    // The future is dropped; the held request goes on.
    race.proxy.release(1);
    poll_until(
        Instant::now() + Duration::from_secs(10),
        Duration::from_millis(20),
        "the abandoned prune never finished",
        || async {
            stored_keys(&direct, "/p/00000000000000000002/")
                .await
                .is_empty()
        },
    )
    .await;
    assert_eq!(writer.sealed_epochs(0).await.unwrap(), vec![3]);
    // Unregistered: a pruned epoch can be sealed again at once.
    poll_until(
        Instant::now() + Duration::from_secs(5),
        Duration::from_millis(20),
        "the abandoned prune kept blocking seals below its bound",
        || async {
            write_epoch(&writer, 1, 0, &vnodes).await;
            writer.epoch_complete(1, &vnodes).await.unwrap()
        },
    )
    .await;
    every_sealed_epoch_has_its_partials(&writer, &vnodes).await;
}

/// A pruner that dies registered (here: every listing it makes fails, so it
/// stops after registering, before deleting anything) takes the markers
/// below its bound out of the recovery queries at once, and blocks seals
/// below its bound until its lease runs out; then they seal again, and a
/// later prune of the bound finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruner_that_dies_registered_blocks_seals_below_its_bound_until_its_lease_ends() {
    let race = ProxiedPrefix::start("race-dead-pruner").await;
    let direct = race.direct_store().await;
    let writer: Arc<dyn StateBackend> = Arc::new(direct.handle("writer", VNODE_CAPACITY));
    let mut short = impatient_config(&race.proxy.endpoint(), &race.prefix);
    short.max_attempts = 2;
    short.attempt_timeout = Duration::from_millis(500);
    short.operation_timeout = Duration::from_secs(1);
    let pruner = store(&short).await.handle("pruner", VNODE_CAPACITY);
    let vnodes = [0, 1];
    seal_epochs(&*writer, &[2, 4], &vnodes).await;
    race.fault("GET", "list-type=2", Action::Status(500), 1_000);
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
    assert!(read(&*writer, 0, 2).await.is_some());
    assert!(
        !writer.epoch_complete(2, &vnodes).await.unwrap(),
        "a seal below the bound of a registered prune"
    );
    let sealed_again = poll_until(
        died_at + Duration::from_secs(30),
        Duration::from_millis(200),
        "seals below a dead prune's bound stayed blocked",
        || async { writer.epoch_complete(2, &vnodes).await.unwrap() },
    )
    .await
        - died_at;
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
    assert!(read(&*writer, 0, 2).await.is_none());
    every_sealed_epoch_has_its_partials(&*writer, &vnodes).await;
}

/// A gate judges a marker with the newest registry its process saw, which
/// may be older than a prune another process ran since; the read after its
/// marker landed shows the prune, and the gate seals again on that
/// registry, so a pruned epoch written again is sealed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_with_an_old_copy_of_the_registry_seals_a_rewritten_epoch_for_good() {
    let race = ProxiedPrefix::start("race-stale-copy").await;
    let sealer = race.direct("sealer").await;
    let pruner = race.direct("pruner").await;
    let vnodes = [0, 1];
    seal_epochs(&sealer, &[1, 2], &vnodes).await;
    // Another process prunes twice; the sealer's copy predates both.
    pruner.prune_before(2).await.unwrap();
    pruner.prune_before(3).await.unwrap();
    assert_eq!(pruner.sealed_epochs(0).await.unwrap(), Vec::<u64>::new());
    seal_epochs(&sealer, &[1], &vnodes).await;
    let observer = race.direct("observer").await;
    assert_eq!(observer.sealed_epochs(0).await.unwrap(), vec![1]);
    assert_eq!(observer.latest_committed_epoch().await.unwrap(), Some(1));
    assert_sealed_by(&observer, 1, &vnodes, "sealer", "another instance sealing").await;
    every_sealed_epoch_has_its_partials(&observer, &vnodes).await;
}

/// The registry decides which markers are seals, so damage to it is an
/// error, never an empty registry: damaged bytes fail their frame, and a
/// registry that goes back (deleted, as by a lifecycle rule) is noticed by
/// a process that read it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_deleted_prune_registry_is_an_error() {
    let race = ProxiedPrefix::start("race-damage").await;
    let direct = race.direct_store().await;
    let handle = direct.handle("a", VNODE_CAPACITY);
    let vnodes = [0];
    seal_epochs(&handle, &[1, 2], &vnodes).await;
    handle.prune_before(2).await.unwrap();
    assert_eq!(handle.sealed_epochs(0).await.unwrap(), vec![2]);
    let key = format!("{}prunes", direct.prefix());
    raw_delete(&direct, &key).await;
    let gone = handle.sealed_epochs(0).await;
    assert!(
        matches!(&gone, Err(StateBackendError::Serialization(m)) if m.contains("prune registry")),
        "a deleted registry gave {gone:?}"
    );
    raw_put(&direct, &key, b"not a frame")
        .await
        .expect("raw PUT");
    let fresh = race.direct("b").await;
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
    let rivals = Rivals::start("race-named").await;
    // The gate's marker lands; its answer waits at the proxy.
    rivals.on.fault("PUT", "/m/", Action::HoldAnswer, 1);
    let landed = async {
        poll_until(
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(5),
            "the sealer's marker never landed",
            || async { rivals.rival.latest_committed_epoch().await.expect("latest") == Some(3) },
        )
        .await;
    };
    rivals
        .sealer_named_then_pruned("the marker PUT's answer to be held", landed)
        .await;
}

/// Found by `cargo xtask chaos --backend s3` (a long run: "refused bytes
/// read"). A write's object landed and was read by others; then its epoch
/// was pruned, and only after that was the fence raised past the write's
/// period, so the new fence's snapshot (listed after the prune) does not
/// name the object. The writer, learning of the raise, must not answer
/// `StaleVersion`: its bytes were visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_read_by_others_and_then_pruned_is_never_refused() {
    let race = ProxiedPrefix::start("race-read-pruned").await;
    let leader = race.direct("leader").await;
    let writer = race.proxied("writer").await;
    writer
        .persist_authoritative_version(1)
        .await
        .expect("fence 1");
    // The write lands at once; its answer waits at the proxy.
    race.fault("PUT", "/p/", Action::HoldAnswer, 1);
    let (written, ()) = race
        .while_held(
            1,
            "the write's answer to be held",
            writer.write_partial(0, 3, 1, Bytes::from_static(b"seen")),
            async {
                // Held once the server answered, which the proxy logs only
                // after it saw the request: poll until the object is there.
                poll_until(
                    Instant::now() + Duration::from_secs(10),
                    Duration::from_millis(5),
                    "the landed write never became visible under the fence it was written at",
                    || async { read(&leader, 0, 3).await.is_some() },
                )
                .await;
                assert_eq!(read(&leader, 0, 3).await, Some(Bytes::from_static(b"seen")));
                leader.prune_before(4).await.expect("the prune");
                leader
                    .persist_authoritative_version(2)
                    .await
                    .expect("fence 2");
            },
        )
        .await;
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

/// The path fragment of the partials of `(vnode, epoch)`.
fn partial_path(vnode: u32, epoch: u64) -> String {
    format!("/p/{epoch:020}/{vnode:010}.")
}

/// The write of `writer` to vnode 0 of `epoch`: its first PUT lands and its
/// answer is lost (the connection drops), and the client's retry is held
/// while `reader` reads the bytes, `delete` deletes the object (as a prune
/// does) and `reader` raises the fence to 1; then the retry stores the
/// object again. A write whose bytes were read must answer that its outcome
/// is unknown (`Io`), never `StaleVersion`; `why` names the case.
async fn assert_retry_after_delete_and_raise_is_unknown(
    race: &ProxiedPrefix,
    writer: &S3Backend,
    reader: &S3Backend,
    epoch: u64,
    delete: impl std::future::Future<Output = ()>,
    why: &str,
) {
    race.fault("PUT", &partial_path(0, epoch), Action::ForwardThenDrop, 1);
    race.fault("PUT", &partial_path(0, epoch), Action::Hold, 1);
    let write = writer.write_partial(0, epoch, 0, Bytes::from_static(b"landed"));
    let (outcome, ()) = race
        .while_held(1, "the retried PUT to reach the proxy", write, async {
            assert_eq!(
                read(reader, 0, epoch).await.as_deref(),
                Some(&b"landed"[..]),
                "the first attempt landed and is visible"
            );
            delete.await;
            assert_eq!(read(reader, 0, epoch).await, None, "deleted");
            reader
                .persist_authoritative_version(1)
                .await
                .expect("the raise");
        })
        .await;
    assert!(
        matches!(&outcome, Err(StateBackendError::Io(m)) if m.contains("unknown")),
        "{why}: a write whose bytes were read answered {outcome:?}: only an unknown outcome is \
         true"
    );
    // The object the answer is about: the retry stored it again (an Io
    // answer leaves it; it is invisible, not named by the snapshot).
    assert_eq!(
        race.seen("PUT", &partial_path(0, epoch)),
        2,
        "one PUT and its retry"
    );
    assert!(
        !stored_keys(&race.direct_store().await, &partial_path(0, epoch))
            .await
            .is_empty(),
        "the retry stored the object again after the delete"
    );
}

/// Found by `cargo xtask chaos --backend s3` (a paused engine): a write's
/// PUT lands, its answer is lost, readers read the bytes, a prune deletes
/// the epoch and a raise lists the partials without it; then the client's
/// retry of the PUT stores it again. The object is back, not named by the
/// raise's snapshot, so the write used to conclude it was never visible and
/// answer `StaleVersion`, though readers had read its bytes (it took effect
/// before the raise). Its outcome is unknown to the writer: an `Io` error,
/// never a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_retry_lands_after_a_prune_and_a_raise_is_not_refused() {
    let race = ProxiedPrefix::start("race-retry-after-prune").await;
    let writer = race.proxied("writer").await;
    let leader = race.direct("leader").await;
    let prune = async { leader.prune_before(6).await.expect("the prune") };
    assert_retry_after_delete_and_raise_is_unknown(&race, &writer, &leader, 5, prune, "pruned")
        .await;
}

/// A running prune renews its lease, so a registry read before the renewal
/// shows a lease that ends earlier than it does. The writer of the test
/// above, whose process read the registry before the renewal, must judge
/// that prune by its newest lease, not its copy's: the prune is still
/// running, may have deleted the object after readers saw it, and the
/// retry stored it again. (Found in review. The registry is written as the
/// prune and its renewal leave it; the object is deleted as the prune
/// deletes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_judges_a_prune_by_its_renewed_lease_not_by_an_old_copy() {
    let race = ProxiedPrefix::start("race-renewed-write").await;
    let writer = race.proxied("writer").await;
    let leader = race.direct("leader").await;
    let direct = race.direct_store().await;
    // Prune "renewing" of bound 3 began; by the writer's copy its lease
    // ended ten seconds ago. A gate of epoch 9 makes the writer's process
    // read (and keep) that copy.
    put_registry(
        &direct,
        &race.prefix,
        1,
        1,
        &[("renewing", 3, now_ms() - 10_000)],
    )
    .await;
    write_epoch(&writer, 9, 0, &[0]).await;
    assert!(writer.epoch_complete(9, &[0]).await.unwrap());
    // It renewed: its lease goes on for a minute.
    put_registry(
        &direct,
        &race.prefix,
        2,
        1,
        &[("renewing", 3, now_ms() + 60_000)],
    )
    .await;
    let prune = async {
        for key in stored_keys(&direct, &partial_path(0, 2)).await {
            raw_delete(&direct, &key).await;
        }
    };
    assert_retry_after_delete_and_raise_is_unknown(
        &race,
        &writer,
        &leader,
        2,
        prune,
        "deleted by a prune whose lease its process last saw over",
    )
    .await;
}

/// The gate's twin of the test above: a gate whose process read the
/// registry before a running prune of the epoch renewed its lease sees that
/// lease over. Trusting it, the gate used to list, read the registry after
/// (a prune that began before its copy does not make a marker no seal) and
/// seal, counting partials the prune was about to delete: a sealed epoch
/// without its partials. It must read the registry again and answer
/// `Ok(false)` while the prune runs. (Found in review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_judges_a_prune_by_its_renewed_lease_not_by_an_old_copy() {
    let race = ProxiedPrefix::start("race-renewed-gate").await;
    let direct = race.direct_store().await;
    let sealer = race.direct("sealer").await;
    let vnodes = [0, 1];
    write_epoch(&sealer, 2, 0, &vnodes).await;
    put_registry(
        &direct,
        &race.prefix,
        1,
        1,
        &[("renewing", 3, now_ms() - 10_000)],
    )
    .await;
    seal_epochs(&sealer, &[9], &vnodes).await;
    put_registry(
        &direct,
        &race.prefix,
        2,
        1,
        &[("renewing", 3, now_ms() + 60_000)],
    )
    .await;
    assert!(
        !sealer.epoch_complete(2, &vnodes).await.unwrap(),
        "a gate sealed an epoch that a running prune (its lease renewed) is deleting"
    );
    // Once the renewed lease is over too, the epoch seals.
    put_registry(
        &direct,
        &race.prefix,
        3,
        1,
        &[("renewing", 3, now_ms() - 10_000)],
    )
    .await;
    assert!(sealer.epoch_complete(2, &vnodes).await.unwrap());
}

/// The lost-answer twin of the test above: the marker PUT lands but its
/// answer is lost (the connection drops), and the client's retry of the PUT
/// reaches the store only after another handle was told the sealer won and
/// a prune of the epoch ran (and deleted the marker, so the retry creates
/// it again). The gate must still answer that it sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_marker_answer_was_lost_still_answers_that_it_sealed() {
    let rivals = Rivals::start("race-lost-marker").await;
    // The first marker PUT lands and its answer is lost; the retry waits.
    rivals.on.fault("PUT", "/m/", Action::ForwardThenDrop, 1);
    rivals.on.fault("PUT", "/m/", Action::Hold, 1);
    rivals
        .sealer_named_then_pruned("the retried marker PUT to be held", async {})
        .await;
}
