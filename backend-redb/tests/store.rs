//! What the conformance suite does not cover: damaged files, the file lock
//! between processes, one store per file (symlinks, hard links), group
//! commit, file growth under steady pruning, a crash mid-prune (with seals
//! below the bound racing it), a dead committer, and the cost of a fence
//! raise.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::properties;
use laminar_state_redb::{CommitFault, RedbBackend, RedbStore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const PARTIALS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("partials");
const MARKERS: TableDefinition<u64, &[u8]> = TableDefinition::new("markers");

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

/// Whether two stores are one: a raise through one is seen by the other at
/// once (the fence lives in memory, shared by the store's handles), and a
/// write through one is read through the other.
fn same_store(a: &RedbStore, b: &RedbStore, version: u64) -> bool {
    runtime().block_on(async {
        let (a, b) = (a.handle("a", 2), b.handle("b", 2));
        a.set_authoritative_version(version);
        if b.authoritative_version() != version {
            return false;
        }
        let bytes = Bytes::from(format!("written at {version}"));
        a.write_partial(0, version, version, bytes.clone())
            .await
            .unwrap();
        b.read_partial(0, version).await.unwrap() == Some(bytes)
    })
}

#[cfg(unix)]
#[test]
fn symlinks_and_hard_links_to_one_file_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    // A file that exists: the real path, then through the symlinked dir.
    let by_real = RedbStore::open(real.join("existing.redb")).unwrap();
    let by_link = RedbStore::open(link.join("existing.redb"))
        .unwrap_or_else(|e| panic!("existing file through a symlinked dir: {e}"));
    assert!(same_store(&by_real, &by_link, 1), "two stores for one file");

    // A file that does not exist yet, created through the symlinked dir,
    // then opened again by the same spelling and by the real path.
    let created = RedbStore::open(link.join("new.redb")).unwrap();
    let again = RedbStore::open(link.join("new.redb"))
        .unwrap_or_else(|e| panic!("new file, same spelling through a symlink: {e}"));
    assert!(same_store(&created, &again, 2), "two stores for one file");
    let real_again = RedbStore::open(real.join("new.redb"))
        .unwrap_or_else(|e| panic!("new file, real path after the symlinked one: {e}"));
    assert!(
        same_store(&created, &real_again, 3),
        "two stores for one file"
    );

    // A new file first by its real path, then through the symlinked dir.
    let fresh = RedbStore::open(real.join("fresh.redb")).unwrap();
    let fresh_link = RedbStore::open(link.join("fresh.redb"))
        .unwrap_or_else(|e| panic!("new file through a symlinked dir: {e}"));
    assert!(
        same_store(&fresh, &fresh_link, 4),
        "two stores for one file"
    );

    // A hard link is the same file under another name.
    std::fs::hard_link(real.join("existing.redb"), dir.path().join("hard.redb")).unwrap();
    let by_hard_link =
        RedbStore::open(dir.path().join("hard.redb")).unwrap_or_else(|e| panic!("hard link: {e}"));
    assert!(
        same_store(&by_real, &by_hard_link, 5),
        "two stores for one file"
    );

    // Different files stay different stores.
    assert!(
        !same_store(&by_real, &created, 6),
        "two files share a store"
    );
}

const PRUNE_CHILD_ENV: &str = "LAMINAR_REDB_PRUNE_CHILD";
/// 64 vnodes x 1,000 sealed epochs: pruning below 900 deletes 57,600
/// partials, several prune transactions.
const PRUNE_VNODES: u32 = 64;
const PRUNE_EPOCHS: u64 = 1_000;
const PRUNE_BEFORE: u64 = 900;
const PRUNE_ROUNDS: u64 = 12;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The epochs below the bound the template leaves unsealed (with all their
/// partials), for the child to seal while it prunes.
fn racing_seal(epoch: u64) -> bool {
    epoch < PRUNE_BEFORE && epoch.is_multiple_of(2)
}

/// The child of [`a_crash_mid_prune_never_leaves_a_sealed_epoch_without_its_partials`]:
/// prune, and say when it started and when its first deletions committed;
/// meanwhile seal the unsealed epochs below the bound, highest first (the
/// prune deletes lowest first), over and over until the prune is done.
fn prune_child(path: &str) {
    const SEALERS: u64 = 4;
    runtime().block_on(async {
        let handle = RedbBackend::open(path, "pruner", PRUNE_VNODES).unwrap();
        let pruner = handle.clone();
        let pruned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sealer in 0..SEALERS {
            let (handle, pruned) = (handle.clone(), Arc::clone(&pruned));
            tokio::spawn(async move {
                let all: Vec<u32> = (0..PRUNE_VNODES).collect();
                while !pruned.load(std::sync::atomic::Ordering::Acquire) {
                    let mine = (0..PRUNE_BEFORE)
                        .rev()
                        .filter(|epoch| racing_seal(*epoch) && epoch / 2 % SEALERS == sealer);
                    for epoch in mine {
                        handle.epoch_complete(epoch, &all).await.unwrap();
                    }
                }
            });
        }
        say("PRUNE-STARTED");
        let prune = tokio::spawn(async move { pruner.prune_before(PRUNE_BEFORE).await });
        while handle.read_partial(0, 0).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        say("PRUNE-PROGRESS");
        prune.await.unwrap().unwrap();
        pruned.store(true, std::sync::atomic::Ordering::Release);
        say("PRUNE-DONE");
    });
    // Wait to be killed, boundedly.
    std::thread::sleep(Duration::from_secs(20));
}

/// Partials per epoch and the sealed epochs of `db`.
fn census_of(db: &Database) -> (BTreeMap<u64, u32>, Vec<u64>) {
    let txn = db.begin_read().unwrap();
    let mut partials = BTreeMap::new();
    for entry in txn.open_table(PARTIALS).unwrap().iter().unwrap() {
        let (key, _) = entry.unwrap();
        *partials.entry(key.value().0).or_insert(0) += 1;
    }
    let markers = txn
        .open_table(MARKERS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value())
        .collect();
    (partials, markers)
}

/// Partials per epoch and the sealed epochs, read straight from the file.
fn census(store: &RedbStore) -> (BTreeMap<u64, u32>, Vec<u64>) {
    store.with_raw_database(census_of).unwrap()
}

/// Prune `store` again below `kept.start` (as an operator does after a
/// crash mid-prune): afterwards exactly the epochs of `kept` are left, each
/// with its `vnodes` partials and its marker. `case` names the round in a
/// failure.
fn prune_again_keeps_every_epoch_from_the_bound(
    store: &RedbStore,
    vnodes: u32,
    kept: std::ops::Range<u64>,
    case: &str,
) {
    runtime().block_on(async {
        let handle = store.handle("again", vnodes);
        handle.prune_before(kept.start).await.unwrap();
    });
    let (partials, markers) = census(store);
    let expected: BTreeMap<u64, u32> = kept.clone().map(|epoch| (epoch, vnodes)).collect();
    assert_eq!(partials, expected, "{case}: partials after pruning again");
    assert_eq!(
        markers,
        kept.collect::<Vec<_>>(),
        "{case}: markers after pruning again"
    );
}

/// The census of the file exactly as a kill left it, read with redb alone.
fn raw_census(path: &Path) -> (BTreeMap<u64, u32>, Vec<u64>) {
    census_of(&Database::open(path).unwrap())
}

#[test]
fn a_crash_mid_prune_never_leaves_a_sealed_epoch_without_its_partials() {
    if let Ok(path) = std::env::var(PRUNE_CHILD_ENV) {
        prune_child(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.redb");
    runtime().block_on(async {
        let handle: Arc<dyn StateBackend> =
            Arc::new(RedbBackend::open(&template, "engine", PRUNE_VNODES).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..PRUNE_VNODES {
            let handle = Arc::clone(&handle);
            tasks.spawn(async move {
                for epoch in 0..PRUNE_EPOCHS {
                    let bytes = Bytes::from(format!("{writer}@{epoch}"));
                    handle.write_partial(writer, epoch, 0, bytes).await.unwrap();
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let all: Arc<[u32]> = (0..PRUNE_VNODES).collect();
        for sealer in 0..16 {
            let (handle, all) = (Arc::clone(&handle), Arc::clone(&all));
            tasks.spawn(async move {
                for epoch in (sealer..PRUNE_EPOCHS).step_by(16) {
                    if !racing_seal(epoch) {
                        assert!(handle.epoch_complete(epoch, &all).await.unwrap());
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut killed_mid_prune = 0;
    for round in 0..PRUNE_ROUNDS {
        let path = dir.path().join(format!("round-{round}.redb"));
        std::fs::copy(&template, &path).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "a_crash_mid_prune_never_leaves_a_sealed_epoch_without_its_partials",
                "--exact",
                "--nocapture",
            ])
            .env(PRUNE_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut wait_for = |wanted: &str| loop {
            match lines.next() {
                Some(Ok(line)) if line == wanted => return true,
                Some(Ok(_)) => {}
                _ => return false,
            }
        };
        // Kill at a random moment after the prune started, or just after its
        // first deletions committed.
        let random = splitmix64(seed ^ round);
        let started = wait_for("PRUNE-STARTED");
        assert!(started, "round {round}: the child did not start pruning");
        if round % 3 == 0 {
            std::thread::sleep(Duration::from_micros(random % 40_000));
        } else {
            assert!(wait_for("PRUNE-PROGRESS"), "round {round}: no progress");
            std::thread::sleep(Duration::from_micros(random % 2_000));
        }
        child.kill().unwrap();
        child.wait().unwrap();

        // The file as the kill left it.
        let (partials, markers) = raw_census(&path);
        for epoch in &markers {
            let held = partials.get(epoch).copied().unwrap_or(0);
            assert_eq!(
                held,
                PRUNE_VNODES,
                "round {round}: sealed epoch {epoch} has {held} of its {PRUNE_VNODES} partials after a crash mid-prune (sealed epochs left: {})",
                markers.len()
            );
        }
        let below: u32 = partials.range(..PRUNE_BEFORE).map(|(_, n)| n).sum();
        if below > 0 && below < PRUNE_BEFORE as u32 * PRUNE_VNODES {
            killed_mid_prune += 1;
        }
        // Pruning again finishes the job, and keeps everything from PRUNE_BEFORE.
        prune_again_keeps_every_epoch_from_the_bound(
            &RedbStore::open(&path).unwrap(),
            PRUNE_VNODES,
            PRUNE_BEFORE..PRUNE_EPOCHS,
            &format!("round {round}"),
        );
    }
    eprintln!("{killed_mid_prune} of {PRUNE_ROUNDS} rounds were killed mid-prune");
    assert!(
        killed_mid_prune > 0,
        "no round was killed mid-prune: the test proved nothing"
    );
}

/// Await `call`, boundedly.
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung on a dead store"))
}

fn assert_dead<T: std::fmt::Debug>(what: &str, result: Result<T, StateBackendError>) {
    match result {
        Err(StateBackendError::Io(message))
            if message.contains("committer") && message.contains("died") => {}
        other => panic!(
            "{what} on a store whose committer panicked gave {other:?}, expected an Io error naming the dead committer"
        ),
    }
}

#[test]
fn a_panicked_committer_fails_every_call_and_a_reopen_gets_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.redb");
    let store = RedbStore::open(&path).unwrap();
    runtime().block_on(async {
        let a = store.handle("a", 4);
        let b = store.handle("b", 4);
        a.persist_authoritative_version(3).await.unwrap();
        a.write_partial(0, 1, 3, Bytes::from_static(b"zero"))
            .await
            .unwrap();
        a.write_partial(1, 1, 3, Bytes::from_static(b"one"))
            .await
            .unwrap();
        assert!(a.epoch_complete(1, &[0, 1]).await.unwrap());

        store.inject_commit_fault(CommitFault::Panic);
        let started = Instant::now();
        // Many writers at once: the batch that panics, and whatever is
        // queued behind it, all get the dead committer's error.
        let mut writers = tokio::task::JoinSet::new();
        for epoch in 2..34u64 {
            let a = a.clone();
            writers.spawn(async move {
                bounded(
                    "a write",
                    a.write_partial(2, epoch, 3, Bytes::from_static(b"two")),
                )
                .await
            });
        }
        while let Some(joined) = writers.join_next().await {
            assert_dead("a write racing the panic", joined.unwrap());
        }
        for handle in [&a, &b] {
            assert_dead(
                "write_partial",
                bounded(
                    "write_partial",
                    handle.write_partial(3, 1, 3, Bytes::from_static(b"x")),
                )
                .await,
            );
            assert_dead(
                "read_partial",
                bounded("read_partial", handle.read_partial(0, 1)).await,
            );
            assert_dead(
                "epoch_complete",
                bounded("epoch_complete", handle.epoch_complete(1, &[0, 1])).await,
            );
            assert_dead(
                "prune_before",
                bounded("prune_before", handle.prune_before(1)).await,
            );
            assert_dead(
                "latest_committed_epoch",
                bounded("latest_committed_epoch", handle.latest_committed_epoch()).await,
            );
            assert_dead(
                "sealed_epochs",
                bounded("sealed_epochs", handle.sealed_epochs(0)).await,
            );
            assert_dead(
                "persist_authoritative_version",
                bounded(
                    "persist_authoritative_version",
                    handle.persist_authoritative_version(4),
                )
                .await,
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the dead store answered slowly: {:?}",
            started.elapsed()
        );

        // A reopen gets a fresh, working store with everything acknowledged,
        // while the dead store's handles are still alive.
        let reopened = {
            let path = path.clone();
            bounded(
                "a reopen",
                tokio::task::spawn_blocking(move || RedbStore::open(path)),
            )
            .await
            .unwrap()
        }
        .unwrap_or_else(|e| panic!("reopening after the committer died: {e}"));
        let c = reopened.handle("c", 4);
        assert_eq!(c.authoritative_version(), 3);
        assert_eq!(
            c.read_partial(0, 1).await.unwrap().as_deref(),
            Some(&b"zero"[..])
        );
        assert_eq!(
            c.read_partial(1, 1).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        for epoch in 2..34u64 {
            assert_eq!(
                c.read_partial(2, epoch).await.unwrap(),
                None,
                "a write of the panicked batch landed"
            );
        }
        assert_eq!(c.sealed_epochs(0).await.unwrap(), vec![1]);
        bounded(
            "a write on the fresh store",
            c.write_partial(2, 1, 3, Bytes::from_static(b"two")),
        )
        .await
        .unwrap_or_else(|e| panic!("the reopened store does not work: {e}"));
        assert_eq!(
            c.read_partial(2, 1).await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        // The dead store stays dead.
        assert_dead(
            "a dead handle after the reopen",
            bounded(
                "write_partial",
                a.write_partial(3, 1, 3, Bytes::from_static(b"x")),
            )
            .await,
        );
    });
}

#[test]
fn a_raise_does_not_wait_for_the_batch_in_flight() {
    const STALL: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raise.redb");
    let store = RedbStore::open(&path).unwrap();
    runtime().block_on(async {
        let leader = store.handle("leader", 4);
        let zombie = store.handle("zombie", 4);
        leader.set_authoritative_version(1);
        zombie
            .write_partial(0, 1, 1, Bytes::from_static(b"early"))
            .await
            .unwrap();

        // A write at version 1 goes into a batch that takes STALL to commit.
        store.inject_commit_fault(CommitFault::Stall(STALL));
        let in_flight = {
            let zombie = zombie.clone();
            tokio::spawn(async move {
                zombie
                    .write_partial(1, 1, 1, Bytes::from_static(b"in flight"))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;

        let started = Instant::now();
        leader.set_authoritative_version(2);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "set_authoritative_version waited {took:?} for the batch in flight"
        );
        assert_eq!(
            zombie.authoritative_version(),
            2,
            "the raise is not shared at once"
        );

        // Started after the raise returned: refused, even though it is queued
        // behind the batch that was checked against the old fence.
        let late = zombie
            .write_partial(2, 1, 1, Bytes::from_static(b"late"))
            .await;
        assert!(
            matches!(
                late,
                Err(StateBackendError::StaleVersion {
                    caller: 1,
                    authoritative: 2
                })
            ),
            "a write started after the raise gave {late:?}"
        );
        // Started before the raise: may be acknowledged, but never lands
        // after the new leader's write.
        let _ = in_flight.await.unwrap();
        leader
            .write_partial(1, 1, 2, Bytes::from_static(b"leader"))
            .await
            .unwrap();
        let stale = zombie
            .write_partial(1, 1, 1, Bytes::from_static(b"zombie"))
            .await;
        assert!(
            matches!(stale, Err(StateBackendError::StaleVersion { .. })),
            "{stale:?}"
        );
        assert_eq!(
            leader.read_partial(1, 1).await.unwrap().as_deref(),
            Some(&b"leader"[..])
        );
        assert_eq!(leader.read_partial(2, 1).await.unwrap(), None);
    });
    drop(store);
    // The raise went to disk with the leader's write.
    let reopened = RedbStore::open(&path).unwrap();
    assert_eq!(reopened.handle("x", 4).authoritative_version(), 2);
}

const SEAL_RACE_CHILD_ENV: &str = "LAMINAR_REDB_SEAL_RACE_CHILD";
const SEAL_RACE_VICTIM_ENV: &str = "LAMINAR_REDB_SEAL_RACE_VICTIM";
/// 64 vnodes x 200 epochs; pruning below 150 deletes 9,600 partials: more
/// than one prune transaction.
const RACE_VNODES: u32 = 64;
const RACE_EPOCHS: u64 = 200;
const RACE_BEFORE: u64 = 150;

/// The epochs below the bound the template leaves unsealed (with all their
/// partials), for the child to seal while its prune is paused.
fn unsealed_below_bound() -> impl Iterator<Item = u64> {
    (0..RACE_BEFORE).step_by(2)
}

/// Prunes of a store paused after each of their transactions, through the
/// test-only prune hook: `step` waits until a prune is paused, `resume`
/// lets it go on to its next transaction.
struct PausedPrunes {
    steps: tokio::sync::mpsc::UnboundedReceiver<()>,
    go: std::sync::mpsc::Sender<()>,
}

impl PausedPrunes {
    fn install(store: &RedbStore) -> Self {
        let (step, steps) = tokio::sync::mpsc::unbounded_channel();
        let (go, gone) = std::sync::mpsc::channel::<()>();
        let gone = std::sync::Mutex::new(gone);
        store.set_prune_hook(Some(Arc::new(move || {
            let _ = step.send(());
            // Bounded: a test that forgets to resume fails on its own.
            let _ = gone.lock().unwrap().recv_timeout(Duration::from_secs(20));
        })));
        Self { steps, go }
    }

    /// Wait (boundedly) until a prune is paused after a transaction.
    async fn step(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.steps.recv())
            .await
            .expect("no prune transaction within 10 s")
            .expect("the prune hook is gone");
    }

    fn resume(&self) {
        self.go.send(()).unwrap();
    }
}

/// `RACE_VNODES` partials for each of the epochs `0..RACE_EPOCHS`, every
/// epoch sealed but [`unsealed_below_bound`].
async fn fill_race_store(handle: &RedbBackend) {
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..RACE_VNODES {
        let handle = handle.clone();
        tasks.spawn(async move {
            for epoch in 0..RACE_EPOCHS {
                let bytes = Bytes::from(format!("{writer}@{epoch}"));
                handle.write_partial(writer, epoch, 0, bytes).await.unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let all: Vec<u32> = (0..RACE_VNODES).collect();
    let unsealed: Vec<u64> = unsealed_below_bound().collect();
    for epoch in (0..RACE_EPOCHS).filter(|epoch| !unsealed.contains(epoch)) {
        assert!(handle.epoch_complete(epoch, &all).await.unwrap());
    }
}

/// Say `line` on stdout at once, for the parent.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The child of [`a_seal_racing_a_prune_then_a_kill_never_leaves_a_sealed_epoch_without_its_partials`]:
/// start `prune_before(RACE_BEFORE)`, pause it after each of its
/// transactions, and at every pause try to seal every epoch below the bound
/// the template left unsealed (those with all their partials get sealed),
/// until the partials of epoch `victim` are gone; then wait there, the
/// prune paused, to be killed.
fn seal_race_child(path: &str, victim: u64) {
    runtime().block_on(async {
        let store = RedbStore::open(path).unwrap();
        let handle = store.handle("racer", RACE_VNODES);
        let mut paused = PausedPrunes::install(&store);
        let pruner = handle.clone();
        let mut prune = tokio::spawn(async move { pruner.prune_before(RACE_BEFORE).await });
        let all: Arc<[u32]> = (0..RACE_VNODES).collect();
        paused.step().await;
        for pause in 1.. {
            // The prune is paused between two of its transactions: seal
            // below it (the gate says which epochs still have their
            // partials).
            let mut seals = tokio::task::JoinSet::new();
            for epoch in unsealed_below_bound() {
                let (handle, all) = (handle.clone(), Arc::clone(&all));
                seals.spawn(async move { handle.epoch_complete(epoch, &all).await });
            }
            let mut sealed = 0;
            while let Some(joined) = seals.join_next().await {
                sealed += u32::from(joined.unwrap().unwrap());
            }
            say(&format!("SEALED {sealed} at pause {pause}"));
            if handle.read_partial(0, victim).await.unwrap().is_none() {
                say(&format!(
                    "KILL-ME partials of epoch {victim} deleted, prune paused"
                ));
                break;
            }
            paused.resume();
            // The prune's next transaction, or its end.
            tokio::select! {
                () = paused.step() => {}
                done = &mut prune => {
                    done.unwrap().unwrap();
                    say("KILL-ME prune finished");
                    break;
                }
            }
        }
        // Wait to be killed, boundedly, with the prune still paused: leaving
        // this block would drop `paused`, which lets the prune go on.
        std::thread::sleep(Duration::from_secs(20));
        drop(paused);
    });
}

/// Issue 9, point 9: seals of epochs below the bound that land after the
/// prune's first transaction (each epoch with all its partials), then a
/// SIGKILL while the prune is paused between two of its transactions, once
/// as soon as epoch 0's partials are gone (mid-deletion), once as soon as
/// the last unsealed epoch's are (after the last deletion, before the prune
/// returns). The child seals at every pause. No sealed epoch may lack its
/// partials in the file the kill left.
#[test]
fn a_seal_racing_a_prune_then_a_kill_never_leaves_a_sealed_epoch_without_its_partials() {
    if let Ok(path) = std::env::var(SEAL_RACE_CHILD_ENV) {
        let victim = std::env::var(SEAL_RACE_VICTIM_ENV).unwrap();
        seal_race_child(&path, victim.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.redb");
    runtime().block_on(async {
        fill_race_store(&RedbBackend::open(&template, "engine", RACE_VNODES).unwrap()).await;
    });
    // The handle is dropped: this process let go of the file.
    let last_sealed = unsealed_below_bound().last().unwrap();
    for victim in [0, last_sealed] {
        let path = dir.path().join(format!("race-{victim}.redb"));
        std::fs::copy(&template, &path).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "a_seal_racing_a_prune_then_a_kill_never_leaves_a_sealed_epoch_without_its_partials",
                "--exact",
                "--nocapture",
            ])
            .env(SEAL_RACE_CHILD_ENV, &path)
            .env(SEAL_RACE_VICTIM_ENV, victim.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let done = line.starts_with("KILL-ME");
            said.push(line);
            if done {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("victim {victim}: the child said: {said:?}");
        assert!(
            said.iter()
                .any(|line| line.starts_with("KILL-ME") && line.ends_with("prune paused")),
            "victim {victim}: the child was not killed mid-prune: {said:?}"
        );
        let sealed_during_prune: u32 = said
            .iter()
            .filter_map(|line| line.strip_prefix("SEALED "))
            .map(|rest| rest.split(' ').next().unwrap().parse::<u32>().unwrap())
            .sum();
        assert!(
            sealed_during_prune > 0,
            "victim {victim}: no seal below the bound landed during the prune: the test proved nothing ({said:?})"
        );

        // The file as the kill left it.
        let (partials, markers) = raw_census(&path);
        for epoch in &markers {
            let held = partials.get(epoch).copied().unwrap_or(0);
            assert_eq!(
                held, RACE_VNODES,
                "victim {victim}: sealed epoch {epoch} has {held} of its {RACE_VNODES} partials after a seal raced the prune and a kill (child: {said:?})"
            );
        }
        let below: u32 = partials.range(..RACE_BEFORE).map(|(_, n)| n).sum();
        assert!(
            victim != 0 || (below > 0 && below < RACE_BEFORE as u32 * RACE_VNODES),
            "victim {victim}: the kill was not mid-deletion ({below} partials below the bound; markers {markers:?}; partials per epoch {partials:?}; child: {said:?})"
        );
        // Pruning again finishes the job: nothing below the bound is left,
        // everything from it is intact.
        let store = RedbStore::open(&path).unwrap();
        prune_again_keeps_every_epoch_from_the_bound(
            &store,
            RACE_VNODES,
            RACE_BEFORE..RACE_EPOCHS,
            &format!("victim {victim}"),
        );
        // A pruned epoch can be written and sealed again.
        runtime().block_on(async {
            let handle = store.handle("newcomer", RACE_VNODES);
            let all: Vec<u32> = (0..RACE_VNODES).collect();
            for vnode in 0..RACE_VNODES {
                handle
                    .write_partial(vnode, 0, 0, Bytes::from_static(b"again"))
                    .await
                    .unwrap();
            }
            assert!(
                handle.epoch_complete(0, &all).await.unwrap(),
                "victim {victim}: a pruned epoch could not be sealed again"
            );
        });
    }
}

/// Every sealed epoch of `store` has all `vnodes` partials.
fn assert_sealed_epochs_whole(store: &RedbStore, vnodes: u32, when: &str) {
    let (partials, markers) = census(store);
    for epoch in &markers {
        let held = partials.get(epoch).copied().unwrap_or(0);
        assert_eq!(
            held, vnodes,
            "{when}: sealed epoch {epoch} has {held} of its {vnodes} partials"
        );
    }
}

/// Three prunes of different bounds overlap, paused after each of their
/// transactions; at every pause seals of epochs below the bounds land (those
/// whose partials are all there succeed). At every pause every sealed epoch
/// has all its partials, the prunes all finish, and a pruned epoch can be
/// written and sealed again afterwards.
#[test]
fn seals_between_the_transactions_of_overlapping_prunes_keep_sealed_epochs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("overlap.redb")).unwrap();
    runtime().block_on(async {
        let handle = store.handle("engine", RACE_VNODES);
        fill_race_store(&handle).await;
        let all: Arc<[u32]> = (0..RACE_VNODES).collect();
        // A fresh epoch at the top, written before the prunes.
        for vnode in 0..RACE_VNODES {
            handle
                .write_partial(vnode, RACE_EPOCHS, 0, Bytes::from_static(b"top"))
                .await
                .unwrap();
        }
        let mut paused = PausedPrunes::install(&store);
        let mut prunes = tokio::task::JoinSet::new();
        let prune = |before: u64| {
            let handle = handle.clone();
            async move { handle.prune_before(before).await }
        };
        prunes.spawn(prune(RACE_BEFORE));
        paused.step().await;
        assert_sealed_epochs_whole(&store, RACE_VNODES, "after the first transaction");

        // The last unsealed epoch below the bound still has its partials: a
        // seal now is ordered before the rest of the prune.
        let victim = unsealed_below_bound().last().unwrap();
        assert!(handle.read_partial(0, victim).await.unwrap().is_some());
        assert!(handle.epoch_complete(victim, &all).await.unwrap());
        assert!(handle.sealed_epochs(0).await.unwrap().contains(&victim));
        // At and above the bound, seals go on.
        assert!(handle.epoch_complete(RACE_EPOCHS, &all).await.unwrap());

        // Two more prunes, below and above the first one's bound.
        prunes.spawn(prune(RACE_BEFORE - 50));
        prunes.spawn(prune(RACE_BEFORE + 30));
        paused.resume();
        let (mut pauses, mut sealed) = (1, 1);
        while !prunes.is_empty() {
            tokio::select! {
                () = paused.step() => {
                    pauses += 1;
                    assert_sealed_epochs_whole(&store, RACE_VNODES, &format!("pause {pauses}"));
                    for epoch in unsealed_below_bound() {
                        sealed += u32::from(handle.epoch_complete(epoch, &all).await.unwrap());
                    }
                    assert_sealed_epochs_whole(&store, RACE_VNODES, &format!("seals at pause {pauses}"));
                    paused.resume();
                }
                Some(joined) = prunes.join_next() => {
                    joined.unwrap().unwrap_or_else(|e| panic!("a prune failed: {e}"));
                }
            }
        }
        eprintln!("{pauses} pauses, {sealed} seals below a bound landed during the prunes");
        let (partials, markers) = census(&store);
        let expected: BTreeMap<u64, u32> = (RACE_BEFORE + 30..=RACE_EPOCHS)
            .map(|epoch| (epoch, RACE_VNODES))
            .collect();
        assert_eq!(partials, expected);
        assert_eq!(markers, (RACE_BEFORE + 30..=RACE_EPOCHS).collect::<Vec<_>>());

        // A pruned epoch can be written and sealed again by another instance.
        let newcomer = store.handle("newcomer", RACE_VNODES);
        for vnode in 0..RACE_VNODES {
            newcomer
                .write_partial(vnode, victim, 0, Bytes::from_static(b"again"))
                .await
                .unwrap();
        }
        assert!(newcomer.epoch_complete(victim, &all).await.unwrap());
    });
}

/// A store whose committer dies while a prune is paused between two of its
/// transactions, after a seal below the bound landed: the prune fails
/// (boundedly), the reopened file has every sealed epoch whole, and pruning
/// again finishes the job.
#[test]
fn a_prune_cut_short_by_a_dead_committer_leaves_sealed_epochs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.redb");
    let store = RedbStore::open(&path).unwrap();
    runtime().block_on(async {
        let handle = store.handle("engine", RACE_VNODES);
        fill_race_store(&handle).await;
        let all: Vec<u32> = (0..RACE_VNODES).collect();
        let mut paused = PausedPrunes::install(&store);
        let prune = {
            let handle = handle.clone();
            tokio::spawn(async move { handle.prune_before(RACE_BEFORE).await })
        };
        paused.step().await;
        let victim = unsealed_below_bound().last().unwrap();
        assert!(handle.epoch_complete(victim, &all).await.unwrap());
        store.inject_commit_fault(CommitFault::Panic);
        assert!(
            handle
                .write_partial(0, RACE_EPOCHS, 0, Bytes::from_static(b"x"))
                .await
                .is_err()
        );
        store.set_prune_hook(None);
        paused.resume();
        let result = tokio::time::timeout(Duration::from_secs(10), prune)
            .await
            .expect("the prune hung on a dead store")
            .unwrap();
        assert!(
            matches!(result, Err(StateBackendError::Io(ref m)) if m.contains("died")),
            "{result:?}"
        );

        let reopened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || RedbStore::open(path))
                .await
                .unwrap()
                .unwrap()
        };
        assert_sealed_epochs_whole(&reopened, RACE_VNODES, "after the reopen");
        let again = reopened.handle("again", RACE_VNODES);
        again.prune_before(RACE_BEFORE).await.unwrap();
        let (partials, markers) = census(&reopened);
        let expected: BTreeMap<u64, u32> = (RACE_BEFORE..RACE_EPOCHS)
            .map(|epoch| (epoch, RACE_VNODES))
            .collect();
        assert_eq!(partials, expected, "after pruning again");
        assert_eq!(markers, (RACE_BEFORE..RACE_EPOCHS).collect::<Vec<_>>());
    });
}
