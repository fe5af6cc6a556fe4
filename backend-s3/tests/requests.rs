//! What each operation costs in requests, counted by a proxy in front of a
//! real server: the figures the crate docs promise.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use laminar_state_api::StateBackend;
use support::proxy::{FaultProxy, Seen};
use support::{TestServer, config, fill, fresh_prefix, store};

/// Requests by kind: PUT of a partial, GET of the fence, and so on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    put_partial: usize,
    put_marker: usize,
    head_fence: usize,
    get_partial: usize,
    list: usize,
    delete_batch: usize,
    other: Vec<String>,
}

fn count(seen: &[Seen]) -> Counts {
    let mut counts = Counts::default();
    for request in seen {
        let target = request.target.as_str();
        let path = target.split('?').next().unwrap_or_default();
        match request.method.as_str() {
            "PUT" if target.contains("/p/") => counts.put_partial += 1,
            "PUT" if target.contains("/m/") => counts.put_marker += 1,
            "GET" if target.contains("list-type=2") => counts.list += 1,
            "HEAD" if path.ends_with("/fence") => counts.head_fence += 1,
            "GET" if target.contains("/p/") => counts.get_partial += 1,
            "POST" if target.contains("delete") => counts.delete_batch += 1,
            _ => counts.other.push(format!("{} {target}", request.method)),
        }
    }
    counts
}

struct Setup {
    _server: TestServer,
    proxy: FaultProxy,
    backend: Arc<dyn StateBackend>,
}

async fn setup(vnodes: u32) -> Setup {
    let server = TestServer::start();
    let proxy = FaultProxy::start(&server.address()).await;
    let store = store(&config(&proxy.endpoint(), &fresh_prefix("requests"))).await;
    let backend: Arc<dyn StateBackend> = Arc::new(store.handle("counted", vnodes));
    Setup {
        _server: server,
        proxy,
        backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_operations_cost_what_the_docs_say() {
    let Setup {
        _server,
        proxy,
        backend,
    } = setup(8).await;
    proxy.reset_log();
    backend
        .write_partial(3, 1, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        count(&proxy.seen()),
        Counts {
            put_partial: 1,
            head_fence: 1,
            ..Counts::default()
        },
        "write_partial"
    );
    proxy.reset_log();
    assert!(backend.read_partial(3, 1).await.unwrap().is_some());
    assert_eq!(
        count(&proxy.seen()),
        Counts {
            list: 1,
            head_fence: 1,
            get_partial: 1,
            ..Counts::default()
        },
        "read_partial"
    );
    proxy.reset_log();
    assert!(backend.read_partial(4, 1).await.unwrap().is_none());
    assert_eq!(
        count(&proxy.seen()),
        Counts {
            list: 1,
            head_fence: 1,
            ..Counts::default()
        },
        "read_partial of a missing partial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_gate_lists_instead_of_probing_each_vnode() {
    let Setup {
        _server,
        proxy,
        backend,
    } = setup(1_500).await;
    for (epoch, vnodes, pages) in [(1u64, 256u32, 1usize), (2, 1_000, 1), (3, 1_500, 2)] {
        fill(&backend, epoch, vnodes).await;
        let all: Vec<u32> = (0..vnodes).collect();
        proxy.reset_log();
        assert!(backend.epoch_complete(epoch, &all).await.unwrap());
        assert_eq!(
            count(&proxy.seen()),
            Counts {
                list: pages,
                head_fence: 1,
                put_marker: 1,
                ..Counts::default()
            },
            "epoch_complete over {vnodes} vnodes"
        );
    }
    // An incomplete epoch: the listing alone decides, no marker request.
    fill(&backend, 4, 255).await;
    let all: Vec<u32> = (0..256).collect();
    proxy.reset_log();
    assert!(!backend.epoch_complete(4, &all).await.unwrap());
    assert_eq!(
        count(&proxy.seen()),
        Counts {
            list: 1,
            head_fence: 1,
            ..Counts::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_lists_only_what_it_deletes_and_deletes_a_thousand_at_a_time() {
    let Setup {
        _server,
        proxy,
        backend,
    } = setup(500).await;
    let all: Vec<u32> = (0..500).collect();
    // 1,500 partials and 3 markers below the bound; 1,500 partials and 3
    // markers at or above it.
    for epoch in 10..16u64 {
        fill(&backend, epoch, 500).await;
        assert!(backend.epoch_complete(epoch, &all).await.unwrap());
    }
    proxy.reset_log();
    backend.prune_before(13).await.unwrap();
    // Markers: one page (3 below, 3 above), one batch. Partials: a page of
    // 1,000 below, then a page of 500 below and 500 above: two pages, two
    // batches; the other 1,000 above the bound are never listed.
    assert_eq!(
        count(&proxy.seen()),
        Counts {
            list: 3,
            delete_batch: 3,
            ..Counts::default()
        }
    );
    assert_eq!(backend.sealed_epochs(0).await.unwrap(), vec![13, 14, 15]);
    for epoch in 10..16u64 {
        let kept = backend.read_partial(499, epoch).await.unwrap().is_some();
        assert_eq!(kept, epoch >= 13, "epoch {epoch}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_fence_reads() {
    let Setup {
        _server,
        proxy,
        backend,
    } = setup(64).await;
    proxy.reset_log();
    fill(&backend, 1, 64).await;
    let counts = count(&proxy.seen());
    assert_eq!(counts.put_partial, 64);
    assert!(
        counts.head_fence < 64,
        "64 concurrent writes made {} fence reads: none were shared",
        counts.head_fence
    );
    assert!(counts.other.is_empty(), "{:?}", counts.other);
    for vnode in 0..64 {
        assert!(backend.read_partial(vnode, 1).await.unwrap().is_some());
    }
}
