//! What the layers cost, against the unwrapped backend doing the same work
//! in the same run.
//!
//! `cargo bench -p laminar-state-layers` (or `cargo xtask bench --backend
//! layered`) measures, at 64 concurrent writers, alternating in slices with
//! the unwrapped backend:
//!
//! - the tracing and metrics layers on memory writes and on redb durable
//!   writes: with no subscriber or recorder installed; with a Prometheus
//!   recorder and a `tracing-subscriber` filtered at `INFO` (the usual
//!   production set-up: the layer's `DEBUG` spans are filtered out, its
//!   warnings are not); and with the subscriber at `DEBUG`, formatting every
//!   span;
//! - the compression layer on realistic aggregate payloads (serialized hash
//!   maps of counters, numeric window aggregates, JSON): writes and reads
//!   through the layer over memory against bare LZ4 compressing and
//!   decompressing the same payloads, with the ratio and LZ4's own speeds in
//!   the notes.
//!
//! Results: a table on stdout and `target/bench/layered.json`. Under `cargo
//! test` it runs once, tiny, as a smoke test.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::StateBackend;
use laminar_state_bench::{Mode, Row, report, run_tasks};
use laminar_state_layers::{CompressionLayer, MetricsLayer, TracingLayer};
use laminar_state_memory::MemoryStore;
use laminar_state_redb::RedbStore;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

const WRITERS: u64 = 64;
const PAYLOAD: usize = 4096;

struct Scale {
    memory_writes: u64,
    redb_writes: u64,
    compression_rounds: u64,
}

const FULL: Scale = Scale {
    memory_writes: 4_000_000,
    redb_writes: 16_000,
    compression_rounds: 64,
};

const SMOKE: Scale = Scale {
    memory_writes: 2_000,
    redb_writes: 256,
    compression_rounds: 2,
};

/// Tracing (outside) and metrics, as `layer` stacks them.
fn observed(raw: Arc<dyn StateBackend>, name: &str) -> Arc<dyn StateBackend> {
    Arc::new(TracingLayer::new(
        Arc::new(MetricsLayer::new(raw, name, "bench")),
        name,
        "bench",
    ))
}

/// Write `(i % 4096, i / 4096 % 8)`: a bounded key space, so memory does
/// not grow with the operation count.
fn writer(
    backend: Arc<dyn StateBackend>,
    payload: Bytes,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Clone + Send + Sync + 'static
{
    move |i| {
        let (backend, payload) = (Arc::clone(&backend), payload.clone());
        Box::pin(async move {
            backend
                .write_partial((i % 4096) as u32, i / 4096 % 8, 0, payload)
                .await
                .expect("bench write");
        })
    }
}

/// Slices each side's work is cut into. More than the harness's 4, in
/// A-B-B-A order, because the overhead measured is a few percent and this
/// machine is shared: drift then falls on both sides alike.
const SLICES: u64 = 16;

/// `ops` operations of `raw` and of `ours` from `tasks` tasks, alternating
/// in [`SLICES`] slices (A-B, then B-A); the two rates, raw first.
async fn alternate<R, RFut, O, OFut>(tasks: u64, ops: u64, raw: R, ours: O) -> (f64, f64)
where
    R: Fn(u64) -> RFut + Clone + Send + Sync + 'static,
    RFut: Future<Output = ()> + Send + 'static,
    O: Fn(u64) -> OFut + Clone + Send + Sync + 'static,
    OFut: Future<Output = ()> + Send + 'static,
{
    let slice = (ops / SLICES).max(1);
    let (mut raw_time, mut our_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..SLICES {
        let base = round * slice;
        let (raw, ours) = (raw.clone(), ours.clone());
        if round % 2 == 0 {
            raw_time += run_tasks(tasks, slice, move |i| raw(base + i)).await;
            our_time += run_tasks(tasks, slice, move |i| ours(base + i)).await;
        } else {
            our_time += run_tasks(tasks, slice, move |i| ours(base + i)).await;
            raw_time += run_tasks(tasks, slice, move |i| raw(base + i)).await;
        }
    }
    let total = (slice * SLICES) as f64;
    (
        total / raw_time.as_secs_f64(),
        total / our_time.as_secs_f64(),
    )
}

/// Memory and redb writes at 64 writers, unwrapped against tracing+metrics.
fn overhead_rows(
    runtime: &tokio::runtime::Runtime,
    scale: &Scale,
    dir: &std::path::Path,
    setting: &str,
    targets: (Option<f64>, Option<f64>),
    rows: &mut Vec<Row>,
) {
    let payload = Bytes::from(vec![0xA5; PAYLOAD]);
    let raw: Arc<dyn StateBackend> = Arc::new(MemoryStore::new().open("raw", u32::MAX));
    let ours = observed(
        Arc::new(MemoryStore::new().open("ours", u32::MAX)),
        "memory",
    );
    let (raw_rate, our_rate) = runtime.block_on(alternate(
        WRITERS,
        scale.memory_writes,
        writer(raw, payload.clone()),
        writer(ours, payload.clone()),
    ));
    rows.push(Row::per_second(
        format!("memory writes/s, 64 writers, {setting}"),
        our_rate,
        raw_rate,
        targets.0,
    ));

    let tag = setting.replace([' ', ','], "_");
    let raw_store = RedbStore::open(dir.join(format!("raw-{tag}.redb"))).expect("raw redb");
    let our_store = RedbStore::open(dir.join(format!("ours-{tag}.redb"))).expect("our redb");
    let raw: Arc<dyn StateBackend> = Arc::new(raw_store.handle("raw", u32::MAX));
    let ours = observed(Arc::new(our_store.handle("ours", u32::MAX)), "redb");
    let (raw_rate, our_rate) = runtime.block_on(alternate(
        WRITERS,
        scale.redb_writes,
        writer(raw, payload.clone()),
        writer(ours, payload),
    ));
    rows.push(Row::per_second(
        format!("redb durable writes/s, 64 writers, {setting}"),
        our_rate,
        raw_rate,
        targets.1,
    ));
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A serialized `HashMap<String, u64>` of per-user event counters
/// (length-prefixed keys, little-endian counts, as bincode writes them),
/// with skewed counts: what a keyed count aggregation checkpoints.
fn string_counters(entries: usize, seed: u64) -> Bytes {
    let events = ["clicks", "views", "purchases", "sessions", "errors"];
    let map: HashMap<String, u64> = (0..entries as u64)
        .map(|i| {
            let r = splitmix(seed ^ i);
            (
                format!(
                    "user:{}:{}",
                    100_000 + r % 900_000,
                    events[(r >> 20) as usize % 5]
                ),
                (splitmix(r) % 1000).pow(2) / 1000,
            )
        })
        .collect();
    let mut out = (map.len() as u64).to_le_bytes().to_vec();
    for (key, count) in &map {
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out.into()
}

/// Window aggregates keyed by a 64-bit key hash: count, sum and mean.
fn numeric_aggregates(entries: usize, seed: u64) -> Bytes {
    let mut out = (entries as u64).to_le_bytes().to_vec();
    for i in 0..entries as u64 {
        let r = splitmix(seed ^ i);
        let count = r % 500;
        let sum = count * (splitmix(r) % 100);
        out.extend_from_slice(&r.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&(sum as f64 / count.max(1) as f64).to_le_bytes());
    }
    out.into()
}

/// A JSON map of per-sensor aggregates.
fn json_aggregates(entries: usize, seed: u64) -> Bytes {
    let body: Vec<String> = (0..entries as u64)
        .map(|i| {
            let r = splitmix(seed ^ i);
            format!(
                "\"sensor-{:05}/temp\":{{\"count\":{},\"sum\":{},\"max\":{}}}",
                r % 20_000,
                r % 300,
                r % 9_000,
                r % 120
            )
        })
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes().into()
}

/// Builds a payload of `entries` entries from a seed.
type Generator = fn(usize, u64) -> Bytes;

fn compression_rows(
    runtime: &tokio::runtime::Runtime,
    scale: &Scale,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    notes.push(format!(
        "{:<34} {:>9} {:>7} {:>12} {:>12}",
        "lz4 on", "bytes", "ratio", "compress", "decompress"
    ));
    let kinds: [(&str, Generator, usize); 6] = [
        ("string counters", string_counters, 250),
        ("string counters", string_counters, 4_000),
        ("numeric aggregates", numeric_aggregates, 4_000),
        ("json aggregates", json_aggregates, 250),
        ("json aggregates", json_aggregates, 4_000),
        ("string counters", string_counters, 40_000),
    ];
    for (kind, make, entries) in kinds {
        let payloads: Vec<Bytes> = (0..16).map(|seed| make(entries, seed)).collect();
        let size = payloads[0].len();
        // LZ4 alone.
        let rounds = (scale.compression_rounds * (1 << 20) / size as u64).max(1);
        let started = Instant::now();
        let mut compressed = Vec::new();
        for round in 0..rounds {
            compressed = lz4_flex::block::compress(&payloads[round as usize % 16]);
        }
        let compress = (rounds * size as u64) as f64 / started.elapsed().as_secs_f64() / 1e6;
        let last = &payloads[(rounds as usize - 1) % 16];
        let started = Instant::now();
        for _ in 0..rounds {
            let out = lz4_flex::block::decompress(&compressed, last.len()).unwrap();
            assert_eq!(out.len(), last.len());
        }
        let decompress = (rounds * size as u64) as f64 / started.elapsed().as_secs_f64() / 1e6;
        let ratio = payloads
            .iter()
            .map(|p| p.len() as f64 / lz4_flex::block::compress(p).len() as f64)
            .sum::<f64>()
            / payloads.len() as f64;
        let label = format!("{kind} ({} KiB)", size.div_ceil(1024));
        notes.push(format!(
            "{label:<34} {size:>9} {ratio:>7.2} {compress:>8.0} MB/s {decompress:>7.0} MB/s"
        ));
        // Writes then reads through the layer, against bare LZ4 doing the
        // same compression and decompression (the layer adds its header,
        // the CRC-32 and the store's own work).
        let ours: Arc<dyn StateBackend> = Arc::new(CompressionLayer::new(
            Arc::new(MemoryStore::new().open("ours", u32::MAX)),
            Some(64 << 20),
        ));
        let payloads = Arc::new(payloads);
        let ops = (rounds / 2).max(4);
        let started = Instant::now();
        runtime.block_on(async {
            for i in 0..ops {
                let payload = &payloads[i as usize % 16];
                ours.write_partial(0, 1, 0, payload.clone()).await.unwrap();
                let read = ours.read_partial(0, 1).await.unwrap().unwrap();
                assert_eq!(read.len(), payload.len());
            }
        });
        let layered = (ops * size as u64) as f64 / started.elapsed().as_secs_f64() / 1e6;
        rows.push(Row::per_second(
            format!("MB/s written+read, {label}"),
            layered,
            1.0 / (1.0 / compress + 1.0 / decompress),
            None,
        ));
    }
}

fn main() {
    let mode = Mode::from_args();
    let scale = if mode == Mode::Full { &FULL } else { &SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "tracing+metrics: {WRITERS} writers, {PAYLOAD}-byte payloads; \"ratio\" is layered/raw (1.00 = no overhead)"
    )];

    overhead_rows(
        &runtime,
        scale,
        dir.path(),
        "nothing installed",
        (Some(0.97), None),
        &mut rows,
    );

    // A Prometheus recorder and a subscriber, installed once for the rest
    // of the run; the subscriber's level is switched by its reload handle.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    let (filter, level) = reload::Layer::new(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .init();
    overhead_rows(
        &runtime,
        scale,
        dir.path(),
        "recorder + subscriber at INFO",
        (None, Some(0.95)),
        &mut rows,
    );
    prometheus.run_upkeep();
    level.reload(LevelFilter::DEBUG).expect("reload the level");
    overhead_rows(
        &runtime,
        scale,
        dir.path(),
        "recorder + subscriber at DEBUG",
        (None, None),
        &mut rows,
    );
    level.reload(LevelFilter::OFF).expect("reload the level");
    let rendered = prometheus.render();
    notes.push(format!(
        "the recorder saw {} lines of metrics (e.g. laminar_state_operations_total)",
        rendered.lines().count()
    ));

    compression_rows(&runtime, scale, &mut rows, &mut notes);
    notes.push(
        "compression rows: \"unwrapped\" is bare lz4 compressing then decompressing the same payloads"
            .to_owned(),
    );
    report("layered", "unwrapped", &rows, mode, &notes);
}
