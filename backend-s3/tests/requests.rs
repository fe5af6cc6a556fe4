//! What each operation costs in requests, counted by a proxy in front of a
//! real server: the figures the crate docs promise.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use laminar_state_api::StateBackend;
use support::proxy::{FaultProxy, Seen};
use support::{ProxiedPrefix, fill, raw_put, read, store};

/// What a request was, by method and key.
fn kind(request: &Seen) -> String {
    let target = request.target.as_str();
    let path = target.split('?').next().unwrap_or_default();
    let what = match request.method.as_str() {
        "PUT" if path.contains("conditional-write-probe") => "put-probe",
        "DELETE" if path.contains("conditional-write-probe") => "delete-probe",
        "HEAD" if path.trim_end_matches('/') == format!("/{}", support::BUCKET) => "head-bucket",
        "PUT" if path.ends_with("/fence") => "put-fence",
        "PUT" if path.contains("/p/") => "put-partial",
        "PUT" if path.contains("/m/") => "put-marker",
        "PUT" if path.ends_with("/prunes") => "put-prunes",
        "GET" if path.ends_with("/prunes") => "get-prunes",
        "GET" if path.contains("/m/") => "get-marker",
        "GET" if target.contains("list-type=2") => "list",
        "HEAD" if path.ends_with("/fence") => "head-fence",
        "GET" if path.contains("/p/") => "get-partial",
        "POST" if target.contains("delete") => "delete-batch",
        _ => return format!("unexpected {} {target}", request.method),
    };
    what.to_owned()
}

/// The requests `operation` made, as `kind xN` in sorted order.
async fn cost<T>(
    proxy: &FaultProxy,
    operation: impl std::future::Future<Output = T>,
) -> (T, String) {
    proxy.reset_log();
    let output = operation.await;
    let mut kinds: Vec<String> = proxy.seen().iter().map(kind).collect();
    kinds.sort();
    let mut summary: Vec<String> = Vec::new();
    for kind in kinds.chunk_by(|a, b| a == b) {
        summary.push(format!("{} x{}", kind[0], kind.len()));
    }
    (output, summary.join(", "))
}

/// A prefix on a server behind a proxy, and a handle (`vnodes` of them) on
/// a store that reaches it through the proxy, which counts its requests.
async fn setup(vnodes: u32) -> (ProxiedPrefix, Arc<dyn StateBackend>) {
    let counted = ProxiedPrefix::start("requests").await;
    let store = store(&counted.proxied_config()).await;
    let backend: Arc<dyn StateBackend> = Arc::new(store.handle("counted", vnodes));
    (counted, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_operations_cost_what_the_docs_say() {
    let (counted, backend) = setup(8).await;
    let (written, requests) = cost(
        &counted.proxy,
        backend.write_partial(3, 1, 0, Bytes::from_static(b"x")),
    )
    .await;
    written.unwrap();
    assert_eq!(requests, "head-fence x1, put-partial x1", "write_partial");
    let (read, requests) = cost(&counted.proxy, backend.read_partial(3, 1)).await;
    assert!(read.unwrap().is_some());
    assert_eq!(
        requests, "get-partial x1, head-fence x1, list x1",
        "read_partial"
    );
    let (read, requests) = cost(&counted.proxy, backend.read_partial(4, 1)).await;
    assert!(read.unwrap().is_none());
    // Nothing listed: no fence read is needed.
    assert_eq!(requests, "list x1", "read_partial, missing");
    // No marker listed: the prune registry is not read.
    let (latest, requests) = cost(&counted.proxy, backend.latest_committed_epoch()).await;
    assert_eq!(latest.unwrap(), None);
    assert_eq!(
        requests, "list x1",
        "latest_committed_epoch, nothing sealed"
    );
    let (sealed, requests) = cost(&counted.proxy, backend.epoch_complete(1, &[3])).await;
    assert!(sealed.unwrap());
    assert_eq!(
        requests, "get-prunes x1, head-fence x1, list x1, put-marker x1",
        "epoch_complete"
    );
    // Sealed already: the registry is read before the marker PUT (which
    // meets 412), and the marker read then is judged under it.
    let (sealed, requests) = cost(&counted.proxy, backend.epoch_complete(1, &[3])).await;
    assert!(sealed.unwrap());
    assert_eq!(
        requests, "get-marker x1, get-prunes x1, head-fence x1, list x1, put-marker x1",
        "epoch_complete, sealed already"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_probes_once_and_creates_the_fence_on_a_new_store() {
    let counted = ProxiedPrefix::start("connect").await;
    let config = counted.proxied_config();
    // A new store, first connect of this process to this endpoint and
    // bucket: the probe, then the fence check finds no fence and no
    // snapshot, and creates the fence.
    let (connected, requests) =
        cost(&counted.proxy, laminar_state_s3::S3Store::connect(&config)).await;
    connected.expect("connect");
    assert_eq!(
        requests,
        "delete-probe x1, head-bucket x1, head-fence x1, list x1, put-fence x1, put-probe x3",
        "the first connect"
    );
    // Again: probed already, the fence exists.
    let (connected, requests) =
        cost(&counted.proxy, laminar_state_s3::S3Store::connect(&config)).await;
    connected.expect("connect");
    assert_eq!(requests, "head-bucket x1, head-fence x1", "a later connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_gate_lists_instead_of_probing_each_vnode() {
    let (counted, backend) = setup(1_500).await;
    // Up to 512 vnodes: one listing of the epoch. More: key ranges of 512
    // asked vnodes, listed at once, each one page here.
    for (epoch, vnodes, pages) in [(1u64, 256u32, 1usize), (2, 1_000, 2), (3, 1_500, 3)] {
        fill(&backend, epoch, vnodes).await;
        let all: Vec<u32> = (0..vnodes).collect();
        let (sealed, requests) = cost(&counted.proxy, backend.epoch_complete(epoch, &all)).await;
        assert!(sealed.unwrap());
        assert_eq!(
            requests,
            format!("get-prunes x1, head-fence x1, list x{pages}, put-marker x1"),
            "epoch_complete over {vnodes} vnodes"
        );
    }
    // An incomplete epoch: the listing alone decides, no marker request.
    fill(&backend, 4, 255).await;
    let all: Vec<u32> = (0..256).collect();
    let (sealed, requests) = cost(&counted.proxy, backend.epoch_complete(4, &all)).await;
    assert!(!sealed.unwrap());
    assert_eq!(requests, "head-fence x1, list x1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_lists_only_what_it_deletes_and_deletes_a_thousand_at_a_time() {
    let (counted, backend) = setup(500).await;
    let all: Vec<u32> = (0..500).collect();
    // 1,500 partials and 3 markers below the bound; 1,500 partials and 3
    // markers at or above it.
    for epoch in 10..16u64 {
        fill(&backend, epoch, 500).await;
        assert!(backend.epoch_complete(epoch, &all).await.unwrap());
    }
    let (pruned, requests) = cost(&counted.proxy, backend.prune_before(13)).await;
    pruned.unwrap();
    // The registry swapped twice (registered, unregistered), from the copy
    // the gates read. Markers: one page (3 below, 3 above), one batch.
    // Partials: a page of 1,000 below, then a page of 500 below and 500
    // above: two pages, two batches; the other 1,000 above the bound are
    // never listed. Markers again: one page, nothing to delete.
    assert_eq!(requests, "delete-batch x3, list x4, put-prunes x2");
    // The kept markers are at or above every prune's bound: no marker is
    // read.
    let (sealed, requests) = cost(&counted.proxy, backend.sealed_epochs(0)).await;
    assert_eq!(sealed.unwrap(), vec![13, 14, 15]);
    assert_eq!(requests, "get-prunes x1, list x1", "sealed_epochs");
    let (latest, requests) = cost(&counted.proxy, backend.latest_committed_epoch()).await;
    assert_eq!(latest.unwrap(), Some(15));
    assert_eq!(requests, "get-prunes x1, list x1", "latest_committed_epoch");
    for epoch in 10..16u64 {
        let kept = read(&*backend, 499, epoch).await.is_some();
        assert_eq!(kept, epoch >= 13, "epoch {epoch}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_fence_reads() {
    let (counted, backend) = setup(64).await;
    let ((), _) = cost(&counted.proxy, fill(&backend, 1, 64)).await;
    let kinds: Vec<String> = counted.proxy.seen().iter().map(kind).collect();
    let count = |k: &str| kinds.iter().filter(|seen| *seen == k).count();
    assert_eq!(count("put-partial"), 64);
    assert!(
        count("head-fence") < 64,
        "64 concurrent writes made {} fence reads: none were shared",
        count("head-fence")
    );
    assert_eq!(
        count("put-partial") + count("head-fence"),
        kinds.len(),
        "{kinds:?}"
    );
    for vnode in 0..64 {
        assert!(read(&*backend, vnode, 1).await.is_some());
    }
}

/// Write `round`'s payload for each of `vnodes` in `epoch`, 64 at a time.
async fn write_round(backend: &Arc<dyn StateBackend>, epoch: u64, vnodes: &[u32], round: u8) {
    let payload = |vnode| round_payload(vnode, round);
    laminar_state_bench::growth::fill_with(backend, epoch, vnodes.iter().copied(), 64, payload)
        .await;
}

fn round_payload(vnode: u32, round: u8) -> Bytes {
    Bytes::from(format!("vnode {vnode}, round {round}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_listings_lose_nothing_at_the_edges_of_their_ranges() {
    let (counted, backend) = setup(1_200).await;
    let epoch = 1;
    // 1,100 vnodes written; the ranges of a batch of all 1,200 split at
    // vnodes 512 and 1,024. The vnodes at each edge (and the first and the
    // last) are written three times, so their newest object is the third,
    // and the 512 vnodes of the middle range twice, so that range is more
    // than one page.
    let written: Vec<u32> = (0..1_100).collect();
    let middle: Vec<u32> = (512..1_024).collect();
    let edges = [0u32, 511, 512, 513, 1_023, 1_024, 1_025, 1_099];
    write_round(&backend, epoch, &written, 0).await;
    write_round(&backend, epoch, &middle, 1).await;
    let outside: Vec<u32> = edges
        .iter()
        .copied()
        .filter(|v| !middle.contains(v))
        .collect();
    write_round(&backend, epoch, &outside, 1).await;
    write_round(&backend, epoch, &edges, 2).await;
    let newest = |vnode: u32| {
        let round = if edges.contains(&vnode) {
            2
        } else if middle.contains(&vnode) {
            1
        } else {
            0
        };
        (vnode < 1_100).then(|| round_payload(vnode, round))
    };
    // A foreign object named exactly as a split: no partial, in no range.
    let direct = counted.direct_store().await;
    let split = format!("{}/p/{epoch:020}/{:010}", counted.prefix, 512);
    raw_put(&direct, &split, b"not a partial").await.unwrap();
    // Objects per range: [0, 512) 512 + 4 rewrites; [512, 1024) 1,024 + 3;
    // [1024, ..) 76 + 6; and the foreign one: 1,626 in the epoch.
    let all: Vec<u32> = (0..1_200).collect();
    let backwards: Vec<u32> = all.iter().rev().copied().collect();
    let every_other: Vec<u32> = all.iter().copied().step_by(2).collect();
    let every_third: Vec<u32> = all.iter().copied().step_by(3).collect();
    for (asked, listings, found, name) in [
        // Three ranges: one page, two pages, one page.
        (&all, 4, 1_100, "every vnode"),
        (&backwards, 4, 1_100, "every vnode, backwards"),
        // Two ranges split at vnode 1,024: [0, 1024) holds 1,543 objects.
        (&every_other, 3, 550, "every other vnode"),
        // 400 asked: one listing of the whole epoch, two pages.
        (&every_third, 2, 367, "every third vnode"),
    ] {
        let (batch, requests) = cost(&counted.proxy, backend.read_partials(epoch, asked)).await;
        let batch = batch.unwrap_or_else(|e| panic!("read_partials of {name}: {e}"));
        assert_eq!(batch.len(), asked.len(), "{name}");
        for (vnode, got) in asked.iter().zip(&batch) {
            assert_eq!(*got, newest(*vnode), "{name}: vnode {vnode}");
        }
        assert_eq!(
            requests,
            format!("get-partial x{found}, head-fence x1, list x{listings}"),
            "read_partials of {name}"
        );
    }
    let (sealed, requests) = cost(&counted.proxy, backend.epoch_complete(epoch, &written)).await;
    assert!(sealed.unwrap(), "every asked vnode was written");
    assert_eq!(
        requests, "get-prunes x1, head-fence x1, list x4, put-marker x1",
        "the gate over 1,100 vnodes"
    );
    // One vnode at an edge missing from the asked set's epoch: not sealed.
    let (sealed, _) = cost(&counted.proxy, backend.epoch_complete(2, &written)).await;
    assert!(!sealed.unwrap());
    write_round(&backend, 2, &written[..1_023], 0).await;
    write_round(&backend, 2, &written[1_024..], 0).await;
    let (sealed, requests) = cost(&counted.proxy, backend.epoch_complete(2, &written)).await;
    assert!(
        !sealed.unwrap(),
        "vnode 1,023, the last of a range, is missing"
    );
    assert_eq!(
        requests, "head-fence x1, list x3",
        "the gate, one vnode missing"
    );
}
