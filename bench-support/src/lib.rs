//! The benchmark harness shared by the backends' `benches/`: how a bench
//! binary was invoked, and one report format (a table on stdout and
//! `target/bench/NAME.json`), every row a measurement of the backend next to
//! the raw store doing the same work in the same run; and the checkpoint an
//! engine makes, whose latency the benches and the growth soak measure.

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::StateBackend;

pub mod growth;
#[cfg(feature = "s3")]
pub mod raw_s3;

/// How the bench binary was invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo bench`: the full measurement, results written to a file.
    Full,
    /// `cargo test` or a test runner: the whole benchmark at a tiny scale,
    /// so it keeps building and running.
    Smoke,
}

impl Mode {
    /// The mode from the process arguments. A test runner's `--list` is
    /// answered here (one test, `smoke`) and the process exits.
    pub fn from_args() -> Self {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--list") {
            if !args.iter().any(|a| a == "--ignored") {
                println!("smoke: test");
            }
            std::process::exit(0);
        }
        if args.iter().any(|a| a == "--bench") {
            Mode::Full
        } else {
            Mode::Smoke
        }
    }
}

/// What a row measures: a rate (higher is better) or a time (lower is
/// better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Operations per second.
    PerSecond,
    /// Milliseconds per operation.
    Millis,
    /// Requests to the store per operation (lower is better).
    Requests,
}

/// One measurement of the backend and of the raw store.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// The backend's figure.
    pub backend: f64,
    /// The raw store's figure.
    pub raw: f64,
    /// The lowest acceptable ratio, if the project set one.
    pub target: Option<f64>,
}

impl Row {
    /// A throughput row: `ours` and `raw` in operations per second.
    pub fn per_second(name: impl Into<String>, ours: f64, raw: f64, target: Option<f64>) -> Self {
        Self {
            name: name.into(),
            unit: Unit::PerSecond,
            backend: ours,
            raw,
            target,
        }
    }

    /// A latency row: `ours` and `raw` in milliseconds per operation.
    pub fn millis(name: impl Into<String>, ours: f64, raw: f64, target: Option<f64>) -> Self {
        Self {
            name: name.into(),
            unit: Unit::Millis,
            backend: ours,
            raw,
            target,
        }
    }

    /// A request-count row: requests per operation, ours and raw.
    pub fn requests(name: impl Into<String>, ours: f64, raw: f64) -> Self {
        Self {
            name: name.into(),
            unit: Unit::Requests,
            backend: ours,
            raw,
            target: None,
        }
    }

    /// How many times better than raw the backend is: above 1 is faster,
    /// for rates and times alike.
    pub fn ratio(&self) -> f64 {
        match self.unit {
            Unit::PerSecond => self.backend / self.raw,
            Unit::Millis | Unit::Requests => self.raw / self.backend,
        }
    }
}

/// A figure for the console table: microseconds still show in a column
/// of milliseconds (`target/bench/results.md`, written by `cargo xtask
/// bench`, groups digits for people).
fn shown(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.4}")
    }
}

/// Print the table; in [`Mode::Full`] also write `target/bench/{name}.json`.
/// `raw` names the raw store's column; `notes` are printed under the table.
pub fn report(name: &str, raw: &str, rows: &[Row], mode: Mode, notes: &[String]) {
    let mut table = format!(
        "\n{name} backend vs {raw} ({} run)\n{:<44} {:>13} {:>13} {:>7} {:>7}\n",
        if mode == Mode::Full { "full" } else { "smoke" },
        "measure",
        "backend",
        raw,
        "ratio",
        "target"
    );
    let mut json = Vec::new();
    for row in rows {
        let unit = match row.unit {
            Unit::PerSecond => "/s",
            Unit::Millis => "ms",
            Unit::Requests => "rq",
        };
        let target = row
            .target
            .map_or_else(|| "-".to_owned(), |t| format!(">={t}"));
        let _ = writeln!(
            table,
            "{:<44} {:>10} {unit:<2} {:>10} {unit:<2} {:>7.2} {target:>7}",
            row.name,
            shown(row.backend),
            shown(row.raw),
            row.ratio()
        );
        json.push(format!(
            "  {{\"measure\": {:?}, \"unit\": {unit:?}, \"backend\": {:e}, \"raw\": {:e}, \"ratio\": {:.3}, \"target\": {}}}",
            row.name,
            row.backend,
            row.raw,
            row.ratio(),
            row.target.map_or("null".to_owned(), |t| t.to_string())
        ));
    }
    for note in notes {
        let _ = writeln!(table, "{note}");
    }
    print!("{table}");
    if mode == Mode::Full {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        let path = dir.join(format!("{name}.json"));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, format!("[\n{}\n]\n", json.join(",\n"))));
        match written {
            Ok(()) => println!("results in {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

/// Run `ops` operations (`op(0)` to `op(ops - 1)`) from `tasks` concurrent
/// tasks on the current runtime; the elapsed time.
pub async fn run_tasks<F, Fut>(tasks: u64, ops: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let op = Arc::clone(&op);
        set.spawn(async move {
            for i in (task..ops).step_by(tasks as usize) {
                op(i).await;
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("bench task");
    }
    started.elapsed()
}

/// Rounds each pair of measurements alternates over, so that drift in the
/// machine (fsync time, a server's background work) falls on both sides
/// alike.
pub const ROUNDS: u64 = 4;

/// `ops` operations of `raw` and of `ours`, alternating in [`ROUNDS`]
/// slices, from `tasks` concurrent tasks; the two rates, raw first.
/// Operation numbers continue across slices, so every operation of a side
/// has its own number.
pub async fn alternate<R, RFut, O, OFut>(tasks: u64, ops: u64, raw: R, ours: O) -> (f64, f64)
where
    R: Fn(u64) -> RFut + Clone + Send + Sync + 'static,
    RFut: Future<Output = ()> + Send + 'static,
    O: Fn(u64) -> OFut + Clone + Send + Sync + 'static,
    OFut: Future<Output = ()> + Send + 'static,
{
    let slice = ops / ROUNDS;
    let (mut raw_time, mut our_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let base = round * slice;
        let (raw, ours) = (raw.clone(), ours.clone());
        raw_time += run_tasks(tasks, slice, move |i| raw(base + i)).await;
        our_time += run_tasks(tasks, slice, move |i| ours(base + i)).await;
    }
    let total = (slice * ROUNDS) as f64;
    (
        total / raw_time.as_secs_f64(),
        total / our_time.as_secs_f64(),
    )
}

/// The backend's side of the write and read measures, one operation per
/// call, for the closures given to [`alternate`]: a handle that clones
/// cheaply into each operation's future.
#[derive(Clone)]
pub struct BackendOps {
    backend: Arc<dyn StateBackend>,
}

impl BackendOps {
    /// Operations on `backend`.
    pub fn new(backend: &Arc<dyn StateBackend>) -> Self {
        Self {
            backend: Arc::clone(backend),
        }
    }

    /// Write `payload` as the partial of `vnode` at `epoch`, with
    /// assignment version 0; panics if the backend refuses.
    pub fn write(
        &self,
        vnode: u32,
        epoch: u64,
        payload: Bytes,
    ) -> impl Future<Output = ()> + Send + use<> {
        let backend = Arc::clone(&self.backend);
        async move {
            backend
                .write_partial(vnode, epoch, 0, payload)
                .await
                .expect("write_partial");
        }
    }

    /// Read the partial of `vnode` at `epoch`; panics unless it is there
    /// and holds `len` bytes.
    pub fn read(
        &self,
        vnode: u32,
        epoch: u64,
        len: usize,
    ) -> impl Future<Output = ()> + Send + use<> {
        let backend = Arc::clone(&self.backend);
        async move {
            let read = backend
                .read_partial(vnode, epoch)
                .await
                .expect("read_partial");
            assert_eq!(
                read.map(|bytes| std::hint::black_box(bytes).len()),
                Some(len),
                "the partial of vnode {vnode} at epoch {epoch}"
            );
        }
    }
}

/// The vnodes of the checkpoint-latency rows.
pub const CHECKPOINT_VNODES: u32 = 256;

/// The size of each partial of the checkpoint-latency rows.
pub const CHECKPOINT_BYTES: usize = 16 << 10;

/// One checkpoint as an engine makes it: every vnode's partial written at
/// once (a task each), the commit gate, which must seal, then a prune that
/// keeps `epoch - 1` and `epoch`.
pub async fn checkpoint(
    backend: &Arc<dyn StateBackend>,
    epoch: u64,
    version: u64,
    vnodes: u32,
    payload: &Bytes,
) -> Result<(), String> {
    let mut writes = tokio::task::JoinSet::new();
    for vnode in 0..vnodes {
        let (backend, payload) = (Arc::clone(backend), payload.clone());
        writes.spawn(async move {
            backend
                .write_partial(vnode, epoch, version, payload)
                .await
                .map_err(|e| format!("write_partial({vnode}, {epoch}): {e}"))
        });
    }
    while let Some(done) = writes.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    let all: Vec<u32> = (0..vnodes).collect();
    match backend.epoch_complete(epoch, &all).await {
        Ok(true) => {}
        other => return Err(format!("epoch_complete({epoch}) answered {other:?}")),
    }
    if epoch >= 2 {
        backend
            .prune_before(epoch - 1)
            .await
            .map_err(|e| format!("prune_before({}): {e}", epoch - 1))?;
    }
    Ok(())
}

/// The latency of a series of operations: median, 99th percentile and
/// slowest, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of `samples` (all zero when there are none).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |p: f64| {
            let rank = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len().max(1));
            samples.get(rank - 1).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Latency {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }

    /// Three rows, median, p99 and slowest of `name`, ours against raw.
    fn rows(name: &str, ours: &Latency, raw: &Latency) -> Vec<Row> {
        [
            ("p50", ours.p50_ms, raw.p50_ms),
            ("p99", ours.p99_ms, raw.p99_ms),
            ("max", ours.max_ms, raw.max_ms),
        ]
        .into_iter()
        .map(|(which, backend, raw)| Row {
            name: format!("{name} {which} (ms)"),
            unit: Unit::Millis,
            backend,
            raw,
            target: None,
        })
        .collect()
    }
}

/// The checkpoint-latency rows of a bench: `rounds` [`checkpoint`]s
/// (epochs `1..=rounds`) of `vnodes` partials of [`CHECKPOINT_BYTES`]
/// through `backend`, alternated one by one with `raw(epoch, payload)` doing
/// the same on the raw store; median, p99 and slowest, named
/// `checkpoint {vnodes}x16KiB{suffix}`.
pub async fn checkpoint_rows<R, RFut>(
    rounds: u64,
    backend: &Arc<dyn StateBackend>,
    vnodes: u32,
    suffix: &str,
    mut raw: R,
) -> Vec<Row>
where
    R: FnMut(u64, Bytes) -> RFut,
    RFut: Future<Output = ()>,
{
    let payload = Bytes::from(vec![0x6B; CHECKPOINT_BYTES]);
    let (raw_latency, our_latency) = alternate_latency(
        rounds,
        |epoch| raw(epoch, payload.clone()),
        |epoch| {
            let payload = &payload;
            async move {
                checkpoint(backend, epoch, 0, vnodes, payload)
                    .await
                    .expect("checkpoint");
            }
        },
    )
    .await;
    Latency::rows(
        &format!("checkpoint {vnodes}x16KiB{suffix}"),
        &our_latency,
        &raw_latency,
    )
}

/// `rounds` operations of each side, `raw(i)` and `ours(i)` for `i` in
/// `1..=rounds`, one at a time, the side that goes first alternating each
/// round so drift falls on both; their latencies, raw first.
async fn alternate_latency<R, RFut, O, OFut>(
    rounds: u64,
    mut raw: R,
    mut ours: O,
) -> (Latency, Latency)
where
    R: FnMut(u64) -> RFut,
    RFut: Future<Output = ()>,
    O: FnMut(u64) -> OFut,
    OFut: Future<Output = ()>,
{
    let (mut raw_times, mut our_times) = (Vec::new(), Vec::new());
    for i in 1..=rounds {
        for side in [i % 2, 1 - i % 2] {
            let started = Instant::now();
            if side == 0 {
                raw(i).await;
                raw_times.push(started.elapsed());
            } else {
                ours(i).await;
                our_times.push(started.elapsed());
            }
        }
    }
    (Latency::of(raw_times), Latency::of(our_times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let latency = Latency::of((1..=200).rev().map(ms).collect());
        assert_eq!(latency.p50_ms, 100.0);
        assert_eq!(latency.p99_ms, 198.0);
        assert_eq!(latency.max_ms, 200.0);
        let one = Latency::of(vec![ms(7)]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert_eq!(Latency::of(Vec::new()).max_ms, 0.0);
    }
}
