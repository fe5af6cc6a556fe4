//! The S3 backend against raw aws-sdk-s3 requests doing the same work, on
//! the same SeaweedFS server, in one run.
//!
//! `cargo bench -p laminar-state-s3` (or `cargo xtask bench`): 4 KiB writes
//! (raw: one PUT) and reads (raw: one GET) with 1 and 16 concurrent tasks;
//! `epoch_complete` at 256 and 1,024 vnodes against the seed's approach (a
//! HEAD per vnode, 256 in parallel, then a PUT `If-None-Match: *` of the
//! marker); pruning 20 epochs of 256 vnodes against a raw LIST plus
//! DeleteObjects of the same number of keys; the latency of whole
//! checkpoints (256 vnodes x 16 KiB written at once, the gate, a prune
//! keeping two) against the least a raw client needs and against the
//! seed's approach. Results: a table and
//! `target/bench/s3.json`. Under `cargo test` it runs once, tiny.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::Client;
use bytes::Bytes;
use laminar_state_api::StateBackend;
use laminar_state_bench::growth::{Growth, RawSide, Step, growth_rows};
use laminar_state_bench::{
    BackendOps, CHECKPOINT_VNODES, Mode, Row, alternate, checkpoint_rows, raw_s3, report,
};
use laminar_state_s3::S3Store;

const PAYLOAD: usize = 4096;
const PRUNE_EPOCHS: u64 = 20;
const PRUNE_VNODES: u32 = 256;
/// The vnodes of the recovery measure, and their partials' size.
const RECOVERY_VNODES: u32 = 256;
const RECOVERY_PAYLOAD: usize = 64 << 10;

fn main() {
    let mode = Mode::from_args();
    let (ops, gate_rounds) = if mode == Mode::Full {
        (2_000u64, 20u64)
    } else {
        (32, 1)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = support::SeaweedServer::start(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = runtime.block_on(measure(&server.endpoint(), ops, gate_rounds));
    rows.extend(runtime.block_on(growth(mode, &server.endpoint())));
    let notes = [
        "(raw writes: one PUT per write; raw reads: one GET)".to_owned(),
        format!(
            "(raw epoch_complete: the seed's approach, one HEAD per vnode, {} in parallel, then PUT If-None-Match of the marker)",
            raw_s3::HEADS_IN_FLIGHT
        ),
        "(raw prune: LIST the keys below the bound, DeleteObjects in batches of 1,000)".to_owned(),
    ];
    report("s3", "raw aws-sdk-s3", &rows, mode, &notes);
    drop(server);
}

async fn measure(endpoint: &str, ops: u64, gate_rounds: u64) -> Vec<Row> {
    let store = S3Store::connect(&support::config(endpoint, &support::fresh_prefix("bench")))
        .await
        .expect("store");
    let client = store.client().clone();
    let bucket = store.bucket().to_owned();
    let raw_prefix = format!("{}raw/", store.prefix());
    let backend: Arc<dyn StateBackend> = Arc::new(store.handle("bench", u32::MAX));
    let payload = Bytes::from(vec![0x5A; PAYLOAD]);
    let mut rows = Vec::new();

    for tasks in [1u64, 16] {
        let raw_put = {
            let (client, bucket, prefix, payload) = (
                client.clone(),
                bucket.clone(),
                raw_prefix.clone(),
                payload.clone(),
            );
            move |i: u64| {
                let (client, bucket, payload) = (client.clone(), bucket.clone(), payload.clone());
                let key = format!("{prefix}{tasks}/{i:010}");
                async move {
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(key)
                        .body(payload.into())
                        .send()
                        .await
                        .expect("PUT");
                }
            }
        };
        let epoch = tasks;
        let our_write = {
            let (ours, payload) = (BackendOps::new(&backend), payload.clone());
            move |i: u64| ours.write(i as u32, epoch, payload.clone())
        };
        let (raw_rate, our_rate) = alternate(tasks, ops, raw_put, our_write).await;
        rows.push(Row::per_second(
            format!("writes/s, {tasks} task(s), 4 KiB"),
            our_rate,
            raw_rate,
            Some(0.8),
        ));

        let raw_get = {
            let (client, bucket, prefix) = (client.clone(), bucket.clone(), raw_prefix.clone());
            move |i: u64| {
                let (client, bucket) = (client.clone(), bucket.clone());
                let key = format!("{prefix}{tasks}/{i:010}");
                async move {
                    let object = client
                        .get_object()
                        .bucket(bucket)
                        .key(key)
                        .send()
                        .await
                        .expect("GET");
                    let body = object.body.collect().await.expect("body");
                    assert_eq!(body.into_bytes().len(), PAYLOAD);
                }
            }
        };
        let our_read = {
            let ours = BackendOps::new(&backend);
            move |i: u64| ours.read(i as u32, epoch, PAYLOAD)
        };
        let (raw_rate, our_rate) = alternate(tasks, ops, raw_get, our_read).await;
        rows.push(Row::per_second(
            format!("reads/s, {tasks} task(s), 4 KiB"),
            our_rate,
            raw_rate,
            None,
        ));
    }

    for vnodes in [256u32, 1024] {
        let (mut ours, mut seed) = (0.0, 0.0);
        // Round 0 warms both sides up and is not counted.
        for round in 0..=gate_rounds {
            let epoch = 1_000 * u64::from(vnodes) + round;
            support::fill(&backend, epoch, vnodes).await;
            let raw_epoch = format!("{raw_prefix}gate/{epoch:020}/");
            put_many(&client, &bucket, &raw_epoch, vnodes).await;
            let all: Vec<u32> = (0..vnodes).collect();
            let started = Instant::now();
            assert!(backend.epoch_complete(epoch, &all).await.expect("seal"));
            let our_time = started.elapsed().as_secs_f64();
            let started = Instant::now();
            seed_gate(&client, &bucket, &raw_epoch, vnodes).await;
            let seed_time = started.elapsed().as_secs_f64();
            if round > 0 {
                ours += our_time;
                seed += seed_time;
            }
        }
        let ms = |total: f64| total * 1e3 / gate_rounds as f64;
        rows.push(Row::millis(
            format!("epoch_complete, {vnodes} vnodes (ms)"),
            ms(ours),
            ms(seed),
            (vnodes == 256).then_some(5.0),
        ));
    }

    // Recovery: one epoch of RECOVERY_VNODES x 64 KiB read back whole.
    // Ours: read_partials. Raw: what the store needs at least, one LIST of
    // the epoch, then the GETs, as many in flight as ours keeps.
    let vnodes = if ops > 100 { RECOVERY_VNODES } else { 8 };
    let big = Bytes::from(vec![0x3C; RECOVERY_PAYLOAD]);
    let epoch = 7_000_000;
    let mut writes = tokio::task::JoinSet::new();
    for vnode in 0..vnodes {
        let (backend, big) = (Arc::clone(&backend), big.clone());
        writes.spawn(async move { backend.write_partial(vnode, epoch, 0, big).await });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("task").expect("write");
    }
    let raw_epoch = format!("{raw_prefix}recovery/");
    put_many_of(&client, &bucket, &raw_epoch, vnodes, &big).await;
    let all: Vec<u32> = (0..vnodes).collect();
    let (mut ours, mut raw) = (0.0, 0.0);
    // Round 0 warms both sides up and is not counted.
    for round in 0..=gate_rounds {
        let started = Instant::now();
        let read = backend.read_partials(epoch, &all).await.expect("recovery");
        assert!(
            read.iter()
                .all(|p| p.as_ref().map(Bytes::len) == Some(RECOVERY_PAYLOAD))
        );
        let our_time = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let bytes = raw_recovery(&client, &bucket, &raw_epoch).await;
        assert_eq!(bytes, u64::from(vnodes) * RECOVERY_PAYLOAD as u64);
        let raw_time = started.elapsed().as_secs_f64();
        if round > 0 {
            ours += our_time;
            raw += raw_time;
        }
    }
    let per_second = |total: f64| gate_rounds as f64 / total;
    rows.push(Row::per_second(
        format!("recoveries/s, {vnodes} vnodes x 64 KiB"),
        per_second(ours),
        per_second(raw),
        Some(0.8),
    ));

    // Prune, on a store of its own: 20 epochs x 256 vnodes, all sealed,
    // below the bound; two more epochs above it that must stay.
    let backend: Arc<dyn StateBackend> = Arc::new(
        S3Store::connect(&support::config(endpoint, &support::fresh_prefix("prune")))
            .await
            .expect("store")
            .handle("bench", u32::MAX),
    );
    let base = 1u64;
    let all: Vec<u32> = (0..PRUNE_VNODES).collect();
    for epoch in base..base + PRUNE_EPOCHS + 2 {
        support::fill(&backend, epoch, PRUNE_VNODES).await;
        assert!(backend.epoch_complete(epoch, &all).await.expect("seal"));
    }
    let raw_prune = format!("{raw_prefix}prune/");
    put_many(
        &client,
        &bucket,
        &raw_prune,
        PRUNE_VNODES * PRUNE_EPOCHS as u32,
    )
    .await;
    let started = Instant::now();
    backend
        .prune_before(base + PRUNE_EPOCHS)
        .await
        .expect("prune");
    let ours = started.elapsed().as_secs_f64() * 1e3;
    assert!(
        backend
            .read_partial(0, base + PRUNE_EPOCHS)
            .await
            .expect("read")
            .is_some()
    );
    assert!(backend.read_partial(0, base).await.expect("read").is_none());
    let started = Instant::now();
    raw_s3::delete_below(&client, &bucket, &raw_prune, None)
        .await
        .expect("raw prune");
    let raw = started.elapsed().as_secs_f64() * 1e3;
    rows.push(Row::millis(
        format!("prune {PRUNE_EPOCHS} epochs x {PRUNE_VNODES} vnodes (ms)"),
        ours,
        raw,
        None,
    ));
    rows.extend(whole_checkpoints(endpoint, gate_rounds).await);
    rows
}

/// Whole checkpoints (every vnode written at once, the gate, a prune
/// keeping two epochs), each on a store of its own: ours against the least
/// a raw client needs (the PUTs, one LIST, the conditional marker PUT, the
/// prune's LIST and DeleteObjects), and against the seed's approach (a HEAD
/// per vnode instead of the LIST); alternated checkpoint by checkpoint.
async fn whole_checkpoints(endpoint: &str, rounds: u64) -> Vec<Row> {
    let rounds = 2 * rounds;
    let vnodes = if rounds > 10 { CHECKPOINT_VNODES } else { 8 };
    let mut rows = Vec::new();
    for (name, gate) in [
        ("raw LIST", raw_s3::Gate::List),
        ("seed HEADs", raw_s3::Gate::Heads),
    ] {
        let store = S3Store::connect(&support::config(endpoint, &support::fresh_prefix("ckpt")))
            .await
            .expect("store");
        let raw = S3Store::connect(&support::config(
            endpoint,
            &support::fresh_prefix("rawckpt"),
        ))
        .await
        .expect("raw store");
        let backend: Arc<dyn StateBackend> = Arc::new(store.handle("bench", vnodes));
        let raw = &raw;
        rows.extend(
            checkpoint_rows(
                rounds,
                &backend,
                vnodes,
                &format!(" vs {name}"),
                |epoch, payload| async move {
                    let (client, bucket, root) = (raw.client(), raw.bucket(), raw.prefix());
                    raw_s3::checkpoint(client, bucket, root, epoch, vnodes, &payload, gate)
                        .await
                        .expect("raw checkpoint");
                },
            )
            .await,
        );
    }
    rows
}

/// How the gate and the prune grow, both sides through one counting proxy
/// (so both pay its hop, and the rows can give each side's requests).
/// Raw: the seed's gate as above; the prune a LIST of the raw epochs, then
/// DeleteObjects.
async fn growth(mode: Mode, endpoint: &str) -> Vec<Row> {
    let growth = Growth::for_mode(mode);
    let proxy = support::proxy::FaultProxy::start(endpoint.trim_start_matches("http://")).await;
    let store = S3Store::connect(&support::config(
        &proxy.endpoint(),
        &support::fresh_prefix("growth"),
    ))
    .await
    .expect("store");
    let (client, bucket) = (store.client().clone(), store.bucket().to_owned());
    let raw_root = format!("{}raw/", store.prefix());
    let backend: Arc<dyn StateBackend> = Arc::new(store.handle("bench", u32::MAX));
    let raw = move || (client.clone(), bucket.clone(), raw_root.clone());
    let epoch_dir = |root: &str, epoch: u64| format!("{root}{epoch:020}/");
    let write = {
        let raw = raw.clone();
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let (client, bucket, root) = raw();
            Box::pin(
                async move { put_many(&client, &bucket, &epoch_dir(&root, epoch), vnodes).await },
            )
        }
    };
    let gate = {
        let raw = raw.clone();
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let (client, bucket, root) = raw();
            Box::pin(
                async move { seed_gate(&client, &bucket, &epoch_dir(&root, epoch), vnodes).await },
            )
        }
    };
    let prune = move |_: u64, end: u64, _: u32| -> Step<'static> {
        let (client, bucket, root) = raw();
        Box::pin(async move {
            raw_s3::delete_below(&client, &bucket, &root, Some(&epoch_dir(&root, end)))
                .await
                .expect("raw prune");
        })
    };
    let requests = {
        let proxy = proxy.clone();
        move || -> Step<'static, u64> {
            let seen = proxy.seen().len() as u64;
            Box::pin(async move { seen })
        }
    };
    let raw = RawSide {
        write: &write,
        gate: &gate,
        prune: &prune,
        requests: Some(&requests),
    };
    growth_rows(&growth, &backend, &raw).await
}

/// `count` small objects `prefix{i}`, 64 at a time.
async fn put_many(client: &Client, bucket: &str, prefix: &str, count: u32) {
    put_many_of(client, bucket, prefix, count, &Bytes::from_static(b"p")).await;
}

/// `count` objects `prefix{i}` holding `body`, 64 at a time.
async fn put_many_of(client: &Client, bucket: &str, prefix: &str, count: u32, body: &Bytes) {
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..count {
        let request = client
            .put_object()
            .bucket(bucket)
            .key(format!("{prefix}{i:010}"))
            .body(body.clone().into());
        puts.spawn(async move { request.send().await.expect("PUT") });
        if puts.len() >= 64 {
            puts.join_next().await.expect("a PUT").expect("task");
        }
    }
    while let Some(done) = puts.join_next().await {
        done.expect("task");
    }
}

/// The seed's gate: a HEAD per vnode ([`raw_s3::HEADS_IN_FLIGHT`] in
/// flight), then the marker with `If-None-Match: *`.
async fn seed_gate(client: &Client, bucket: &str, dir: &str, vnodes: u32) {
    let present = raw_s3::count_present(client, bucket, dir, vnodes, raw_s3::Gate::Heads)
        .await
        .expect("HEADs");
    assert_eq!(present, vnodes as usize, "a partial is missing");
    raw_s3::seal(client, bucket, dir).await.expect("marker PUT");
}

/// A recovery as the raw store does it: LIST `prefix`, then GET every
/// object, as many in flight as the backend's batch read keeps; the bytes
/// read.
async fn raw_recovery(client: &Client, bucket: &str, prefix: &str) -> u64 {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("LIST");
    let mut gets = tokio::task::JoinSet::new();
    let mut bytes = 0;
    for object in listed.contents() {
        let request = client
            .get_object()
            .bucket(bucket)
            .key(object.key().expect("a key"));
        gets.spawn(async move {
            let object = request.send().await.expect("GET");
            object
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .len() as u64
        });
        if gets.len() >= 32 {
            bytes += gets.join_next().await.expect("a GET").expect("task");
        }
    }
    while let Some(done) = gets.join_next().await {
        bytes += done.expect("task");
    }
    bytes
}
