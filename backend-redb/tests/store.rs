//! What the conformance suite does not cover: damaged files, the file lock
//! between processes, group commit, and file growth under steady pruning.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::properties;
use laminar_state_redb::{RedbBackend, RedbStore};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// A small database with 3 sealed epochs of 4 vnodes.
fn populated(path: &Path) -> Vec<((u32, u64), Bytes)> {
    let mut written = Vec::new();
    runtime().block_on(async {
        let handle = RedbBackend::open(path, "writer", 4).unwrap();
        for epoch in 0..3u64 {
            for vnode in 0..4u32 {
                let bytes = Bytes::from(format!("partial {vnode}@{epoch} ").repeat(40));
                handle
                    .write_partial(vnode, epoch, 0, bytes.clone())
                    .await
                    .unwrap();
                written.push(((vnode, epoch), bytes));
            }
            assert!(handle.epoch_complete(epoch, &[0, 1, 2, 3]).await.unwrap());
        }
    });
    written
}

/// Open `path` and read everything back: every outcome must be a typed
/// error or the right data, never a panic or wrong bytes.
fn open_and_check(path: &Path, written: &[((u32, u64), Bytes)]) -> Result<(), StateBackendError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runtime().block_on(async {
            let handle = RedbBackend::open(path, "reader", 4)?;
            for ((vnode, epoch), bytes) in written {
                match handle.read_partial(*vnode, *epoch).await {
                    Ok(Some(read)) => assert_eq!(&read, bytes, "damage returned wrong bytes"),
                    Ok(None) => panic!("damage silently lost ({vnode}, {epoch})"),
                    Err(StateBackendError::Serialization(_) | StateBackendError::Io(_)) => {}
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
            Ok(())
        })
    }));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("opening or reading a damaged file panicked: {message}")
    })
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in [
        ("text.redb", b"just some text, not a database\n".repeat(100)),
        ("zeros.redb", vec![0u8; 64 << 10]),
        (
            "random.redb",
            (0..100_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let error = RedbStore::open(&path).expect_err(name);
        assert!(
            matches!(error, StateBackendError::Serialization(ref m) if m.contains("not a redb database")),
            "{name}: {error}"
        );
    }
}

#[test]
fn a_truncated_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let written = populated(&path);
    let full = std::fs::read(&path).unwrap();
    for cut in [full.len() / 2, full.len() / 4, 600, 100, 8] {
        std::fs::write(&path, &full[..cut]).unwrap();
        match open_and_check(&path, &written) {
            Err(StateBackendError::Serialization(_) | StateBackendError::Io(_)) => {}
            Err(other) => panic!("cut at {cut}: unexpected {other:?}"),
            Ok(()) => {}
        }
    }
}

#[test]
fn flipped_bytes_never_panic_or_return_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.redb");
    let written = populated(&original);
    let full = std::fs::read(&original).unwrap();
    let damaged = dir.path().join("damaged.redb");
    let step = (full.len() / 97).max(1);
    for offset in (0..full.len()).step_by(step) {
        let mut bytes = full.clone();
        bytes[offset] ^= 0x5A;
        std::fs::write(&damaged, &bytes).unwrap();
        let _ = open_and_check(&damaged, &written);
    }
}

#[test]
fn one_process_shares_one_store_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.redb");
    let first = RedbStore::open(&path).unwrap();
    // Another spelling of the same file.
    let second = RedbStore::open(dir.path().join(".").join("shared.redb")).unwrap();
    runtime().block_on(async {
        let a = first.handle("a", 2);
        let b = second.handle("b", 2);
        a.set_authoritative_version(9);
        assert_eq!(b.authoritative_version(), 9);
        a.write_partial(0, 1, 9, Bytes::from_static(b"a"))
            .await
            .unwrap();
        assert_eq!(
            b.read_partial(0, 1).await.unwrap().as_deref(),
            Some(&b"a"[..])
        );
    });
}

const LOCK_CHILD_ENV: &str = "LAMINAR_REDB_LOCK_CHILD";

#[test]
fn a_second_process_gets_a_clear_error() {
    if let Ok(path) = std::env::var(LOCK_CHILD_ENV) {
        match RedbStore::open(&path) {
            Ok(_) => println!("LOCK-RESULT opened"),
            Err(error) => println!("LOCK-RESULT {error}"),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.redb");
    let _open = RedbStore::open(&path).unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_second_process_gets_a_clear_error",
            "--exact",
            "--nocapture",
        ])
        .env(LOCK_CHILD_ENV, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("LOCK-RESULT"))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"));
    assert!(line.contains("open in another process"), "{line}");
}

#[test]
fn concurrent_writes_share_commits_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("batch.redb")).unwrap();
    runtime().block_on(async {
        let handle: Arc<dyn StateBackend> = Arc::new(store.handle("w", 256));
        let before = store.commit_stats();
        properties::concurrent_writes_fail_alone(&handle, 256)
            .await
            .unwrap();
        let after = store.commit_stats();
        assert_eq!(after.requests - before.requests, 256);
        let transactions = after.transactions - before.transactions;
        assert!(
            transactions < 128,
            "256 concurrent writes took {transactions} transactions: no group commit"
        );
    });
}

#[test]
fn the_file_stops_growing_under_steady_checkpoints() {
    const CYCLES: u64 = 1_000;
    const VNODES: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steady.redb");
    let store = RedbStore::open(&path).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let mut sizes = Vec::new();
    runtime().block_on(async {
        let handle: Arc<dyn StateBackend> = Arc::new(store.handle("engine", VNODES));
        let all: Vec<u32> = (0..VNODES).collect();
        for epoch in 0..CYCLES {
            let mut tasks = tokio::task::JoinSet::new();
            for vnode in 0..VNODES {
                let handle = Arc::clone(&handle);
                tasks.spawn(async move {
                    handle
                        .write_partial(vnode, epoch, 0, Bytes::from(vec![epoch as u8; 1024]))
                        .await
                });
            }
            while let Some(joined) = tasks.join_next().await {
                joined.unwrap().unwrap();
            }
            assert!(handle.epoch_complete(epoch, &all).await.unwrap());
            handle.prune_before(epoch.saturating_sub(2)).await.unwrap();
            if epoch % 100 == 99 {
                sizes.push(size());
            }
        }
        assert_eq!(
            handle.sealed_epochs(0).await.unwrap(),
            vec![CYCLES - 3, CYCLES - 2, CYCLES - 1]
        );
    });
    eprintln!("file size every 100 checkpoint cycles: {sizes:?}");
    let settled = sizes[1];
    let last = *sizes.last().unwrap();
    assert!(
        last <= settled * 2,
        "the file kept growing under pruning: {sizes:?}"
    );
}

#[test]
fn prune_spans_several_transactions() {
    const VNODES: u32 = 7_000;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("prune.redb")).unwrap();
    runtime().block_on(async {
        let handle: Arc<dyn StateBackend> = Arc::new(store.handle("p", VNODES));
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..64u32 {
            let handle = Arc::clone(&handle);
            tasks.spawn(async move {
                for vnode in (writer..VNODES).step_by(64) {
                    for epoch in 0..3 {
                        handle
                            .write_partial(vnode, epoch, 0, Bytes::from_static(b"p"))
                            .await
                            .unwrap();
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        // 14,000 partials below epoch 2: more than one prune transaction.
        handle.prune_before(2).await.unwrap();
        for vnode in (0..VNODES).step_by(7) {
            assert_eq!(
                handle.read_partial(vnode, 0).await.unwrap(),
                None,
                "({vnode}, 0)"
            );
            assert_eq!(
                handle.read_partial(vnode, 1).await.unwrap(),
                None,
                "({vnode}, 1)"
            );
            assert!(
                handle.read_partial(vnode, 2).await.unwrap().is_some(),
                "({vnode}, 2)"
            );
        }
    });
}
