//! The redb backend against raw redb doing the same work, in one run.
//!
//! `cargo bench -p laminar-state-redb` (or `cargo xtask bench`) measures:
//! durable 4 KiB writes with 1 and 64 concurrent writers, reads with 1 and 64,
//! `epoch_complete` at 256 vnodes, pruning 20 epochs x 256 vnodes, how the
//! gate and the prune grow (256 to 16,384 vnodes; 10 to 1,000 epochs), and the
//! latency of whole checkpoints (256 vnodes x 16 KiB written at once, the
//! gate, a prune keeping two epochs). Raw
//! redb writes are one transaction (one fsync) per write, which is what a
//! store without group commit pays. Results: a table on stdout and
//! `target/bench/redb.json`. Under `cargo test` it runs once, tiny, as a
//! smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::StateBackend;
use laminar_state_bench::growth::{Growth, RawSide, Step, growth_rows};
use laminar_state_bench::{
    BackendOps, CHECKPOINT_VNODES, Mode, Row, alternate, checkpoint_rows, report,
};
use laminar_state_redb::RedbStore;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const RAW: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("raw");
const RAW_MARKERS: TableDefinition<u64, &[u8]> = TableDefinition::new("raw_markers");
const PAYLOAD: usize = 4096;
const GATE_VNODES: u32 = 256;

struct Scale {
    single_writes: u64,
    concurrent_writes: u64,
    reads: u64,
    gate_rounds: u64,
    prune_epochs: u64,
}

const FULL: Scale = Scale {
    single_writes: 1_000,
    concurrent_writes: 20_000,
    reads: 50_000,
    gate_rounds: 50,
    prune_epochs: 20,
};

const SMOKE: Scale = Scale {
    single_writes: 20,
    concurrent_writes: 128,
    reads: 256,
    gate_rounds: 2,
    prune_epochs: 2,
};

fn main() {
    let mode = Mode::from_args();
    let scale = if mode == Mode::Full { &FULL } else { &SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let payload = Bytes::from(vec![0xA5; PAYLOAD]);

    let raw_db = Arc::new(Database::create(dir.path().join("raw.redb")).expect("raw db"));
    let store = RedbStore::open(dir.path().join("backend.redb")).expect("backend db");
    let backend: Arc<dyn StateBackend> = Arc::new(store.handle("bench", u32::MAX));

    let mut rows = Vec::new();

    // Durable writes, the same count on both sides, alternated in slices.
    // Raw redb pays a transaction (an fsync) per write; its writers run on
    // the same runtime as ours and block it inside each transaction, which
    // costs raw nothing, since redb runs one write transaction at a time.
    for (writers, epoch, count, target) in [
        (1u64, 0, scale.single_writes, 0.8),
        (64, 1, scale.concurrent_writes, 10.0),
    ] {
        let raw_write = {
            let (db, payload) = (Arc::clone(&raw_db), payload.clone());
            move |i: u64| {
                let txn = db.begin_write().expect("begin");
                txn.open_table(RAW)
                    .expect("table")
                    .insert((epoch, i as u32), &payload[..])
                    .expect("insert");
                txn.commit().expect("commit");
                std::future::ready(())
            }
        };
        let our_write = {
            let (ours, payload) = (BackendOps::new(&backend), payload.clone());
            move |i: u64| ours.write(i as u32, epoch, payload.clone())
        };
        let (raw, ours) = runtime.block_on(alternate(writers, count, raw_write, our_write));
        rows.push(Row::per_second(
            format!("durable writes/s, {writers} writer(s)"),
            ours,
            raw,
            Some(target),
        ));
    }
    let ours = rows.last().map_or(0.0, |row| row.backend);

    // The ceiling for any group commit: raw redb with 64 writes per
    // transaction, one writer, no hand-off.
    let ceiling = per_second(scale.concurrent_writes, || {
        raw_batched_writes(&raw_db, 3, scale.concurrent_writes, 64, &payload)
    });
    rows.push(Row::per_second(
        "durable writes/s, 64 writers vs raw 64/txn",
        ours,
        ceiling,
        None,
    ));

    // Reads of what was just written: the same keys on both sides (some of
    // those the 64-writer run wrote at epoch 1), the same count, from the
    // same number of tasks on the same runtime, alternated in slices. Raw
    // redb reads inline in each task: one read transaction per read, as the
    // backend does.
    let keys = scale.concurrent_writes / 10;
    for tasks in [1u64, 64] {
        let db = Arc::clone(&raw_db);
        let raw_read = move |i: u64| {
            let db = Arc::clone(&db);
            async move {
                let txn = db.begin_read().expect("read");
                let table = txn.open_table(RAW).expect("table");
                let value = table
                    .get((1, (i % keys) as u32))
                    .expect("get")
                    .expect("present");
                std::hint::black_box(Bytes::copy_from_slice(value.value()));
            }
        };
        let ours = BackendOps::new(&backend);
        let our_read = move |i: u64| ours.read((i % keys) as u32, 1, PAYLOAD);
        let (raw, ours) = runtime.block_on(alternate(tasks, scale.reads, raw_read, our_read));
        let name = if tasks == 1 {
            "reads/s, 1 reader"
        } else {
            "reads/s, 64 readers"
        };
        rows.push(Row::per_second(name, ours, raw, Some(0.5)));
    }

    // Recovery: one epoch of 256 vnodes x 64 KiB read back whole, every
    // partial held at the end on both sides (a raw side that dropped each
    // copy at once reused one buffer and looked 5 times faster: the fresh
    // pages of 16 MiB are most of a recovery's cost). Ours: read_partials,
    // which also checks each frame's CRC; raw: one read transaction with a
    // get per vnode.
    let big = Bytes::from(vec![0x3C; 64 << 10]);
    let recovery_epoch = 900_000;
    raw_writes_at(&raw_db, recovery_epoch, GATE_VNODES, &big);
    runtime.block_on(async {
        for vnode in 0..GATE_VNODES {
            backend
                .write_partial(vnode, recovery_epoch, 0, big.clone())
                .await
                .expect("write");
        }
    });
    let all: Vec<u32> = (0..GATE_VNODES).collect();
    let db = Arc::clone(&raw_db);
    let raw_recovery = move |_: u64| {
        let db = Arc::clone(&db);
        async move {
            // Every partial held at once, as a recovery hands them over.
            let txn = db.begin_read().expect("read");
            let table = txn.open_table(RAW).expect("table");
            let read: Vec<Bytes> = (0..GATE_VNODES)
                .map(|vnode| {
                    let value = table
                        .get((recovery_epoch, vnode))
                        .expect("get")
                        .expect("present");
                    Bytes::copy_from_slice(value.value())
                })
                .collect();
            std::hint::black_box(read);
        }
    };
    let ours = Arc::clone(&backend);
    let our_recovery = move |_: u64| {
        let (backend, all) = (Arc::clone(&ours), all.clone());
        async move {
            let read = backend
                .read_partials(recovery_epoch, &all)
                .await
                .expect("recovery");
            assert!(read.iter().all(Option::is_some));
            std::hint::black_box(read);
        }
    };
    let (raw, ours) = runtime.block_on(alternate(
        1,
        scale.gate_rounds * 4,
        raw_recovery,
        our_recovery,
    ));
    rows.push(Row::per_second(
        "recoveries/s, 256 vnodes x 64 KiB",
        ours,
        raw,
        Some(0.8),
    ));

    // The commit gate at 256 vnodes: a fresh seal each round.
    let gate_vnodes: Vec<u32> = (0..GATE_VNODES).collect();
    let mut raw_gate = Duration::ZERO;
    let mut our_gate = Duration::ZERO;
    for round in 0..scale.gate_rounds {
        let epoch = 1_000_000 + round;
        raw_writes_at(&raw_db, epoch, GATE_VNODES, &payload);
        let started = Instant::now();
        raw_seal(&raw_db, epoch, GATE_VNODES);
        raw_gate += started.elapsed();
        runtime.block_on(async {
            for vnode in 0..GATE_VNODES {
                backend
                    .write_partial(vnode, epoch, 0, payload.clone())
                    .await
                    .expect("write");
            }
            let started = Instant::now();
            assert!(
                backend
                    .epoch_complete(epoch, &gate_vnodes)
                    .await
                    .expect("seal")
            );
            our_gate += started.elapsed();
        });
    }
    let per_round = |d: Duration| d.as_secs_f64() * 1e3 / scale.gate_rounds as f64;
    rows.push(Row::millis(
        "epoch_complete, 256 vnodes",
        per_round(our_gate),
        per_round(raw_gate),
        None,
    ));

    // Prune 20 epochs x 256 vnodes.
    let base = 2_000_000;
    for epoch in base..base + scale.prune_epochs {
        raw_writes_at(&raw_db, epoch, GATE_VNODES, &payload);
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for vnode in 0..GATE_VNODES {
                let (backend, payload) = (Arc::clone(&backend), payload.clone());
                tasks.spawn(async move { backend.write_partial(vnode, epoch, 0, payload).await });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("task").expect("write");
            }
        });
    }
    let started = Instant::now();
    raw_prune(&raw_db, base + scale.prune_epochs);
    let raw = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    runtime
        .block_on(backend.prune_before(base + scale.prune_epochs))
        .expect("prune");
    let ours = started.elapsed().as_secs_f64() * 1e3;
    rows.push(Row::millis(
        format!("prune {} epochs x 256 vnodes", scale.prune_epochs),
        ours,
        raw,
        None,
    ));

    // How cost grows, on databases of their own.
    let growth = Growth::for_mode(mode);
    let raw_db = Arc::new(Database::create(dir.path().join("raw-growth.redb")).expect("raw db"));
    let ours: Arc<dyn StateBackend> = Arc::new(
        RedbStore::open(dir.path().join("growth.redb"))
            .expect("backend db")
            .handle("bench", u32::MAX),
    );
    let one_byte = Bytes::from_static(b"p");
    let write = {
        let db = Arc::clone(&raw_db);
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let (db, one_byte) = (Arc::clone(&db), one_byte.clone());
            Box::pin(async move { raw_writes_at(&db, epoch, vnodes, &one_byte) })
        }
    };
    let gate = {
        let db = Arc::clone(&raw_db);
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let db = Arc::clone(&db);
            Box::pin(async move { raw_seal(&db, epoch, vnodes) })
        }
    };
    let prune = {
        let db = Arc::clone(&raw_db);
        move |_: u64, end: u64, _: u32| -> Step<'static> {
            let db = Arc::clone(&db);
            Box::pin(async move { raw_prune(&db, end) })
        }
    };
    let raw = RawSide {
        write: &write,
        gate: &gate,
        prune: &prune,
        requests: None,
    };
    rows.extend(runtime.block_on(growth_rows(&growth, &ours, &raw)));

    // Whole checkpoints, on databases of their own: ours (every vnode
    // written at once, the gate, a prune keeping two epochs) against the
    // floor of raw redb, one durable transaction per step (all partials,
    // the checked seal, the prune), which only a single writer can do.
    let raw_db = Arc::new(Database::create(dir.path().join("raw-ckpt.redb")).expect("raw db"));
    let ckpt = RedbStore::open(dir.path().join("ckpt.redb")).expect("backend db");
    let vnodes = if mode == Mode::Full {
        CHECKPOINT_VNODES
    } else {
        8
    };
    let ckpt_backend: Arc<dyn StateBackend> = Arc::new(ckpt.handle("bench", vnodes));
    rows.extend(runtime.block_on(checkpoint_rows(
        scale.gate_rounds,
        &ckpt_backend,
        vnodes,
        "",
        |epoch, payload| {
            raw_writes_at(&raw_db, epoch, vnodes, &payload);
            raw_seal(&raw_db, epoch, vnodes);
            raw_prune(&raw_db, epoch.saturating_sub(1));
            std::future::ready(())
        },
    )));

    let stats = store.commit_stats();
    let notes = [format!(
        "group commit: {} requests in {} transactions",
        stats.requests, stats.transactions
    )];
    report("redb", "raw redb", &rows, mode, &notes);
}

fn per_second(ops: u64, work: impl FnOnce()) -> f64 {
    let started = Instant::now();
    work();
    ops as f64 / started.elapsed().as_secs_f64()
}

/// `count` writes, `per_txn` to a durable transaction.
fn raw_batched_writes(db: &Database, epoch: u64, count: u64, per_txn: u64, payload: &Bytes) {
    for start in (0..count).step_by(per_txn as usize) {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(RAW).expect("table");
            for i in start..(start + per_txn).min(count) {
                table
                    .insert((epoch, i as u32), &payload[..])
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
}

fn raw_writes_at(db: &Database, epoch: u64, vnodes: u32, payload: &Bytes) {
    let txn = db.begin_write().expect("begin");
    {
        let mut table = txn.open_table(RAW).expect("table");
        for vnode in 0..vnodes {
            table.insert((epoch, vnode), &payload[..]).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

/// The seal as raw redb does it: check every vnode, then write the marker.
fn raw_seal(db: &Database, epoch: u64, vnodes: u32) {
    let txn = db.begin_write().expect("begin");
    {
        let table = txn.open_table(RAW).expect("table");
        for vnode in 0..vnodes {
            assert!(table.get((epoch, vnode)).expect("get").is_some());
        }
        txn.open_table(RAW_MARKERS)
            .expect("markers")
            .insert(epoch, &b"bench"[..])
            .expect("insert");
    }
    txn.commit().expect("commit");
}

/// The prune as raw redb does it: the partials and the markers below
/// `before`, in one transaction.
fn raw_prune(db: &Database, before: u64) {
    let txn = db.begin_write().expect("begin");
    txn.open_table(RAW)
        .expect("table")
        .retain_in(..(before, 0), |_, _| false)
        .expect("retain");
    txn.open_table(RAW_MARKERS)
        .expect("markers")
        .retain_in(..before, |_, _| false)
        .expect("retain markers");
    txn.commit().expect("commit");
}
