//! The benchmark harness shared by the backends' `benches/`: how a bench
//! binary was invoked, and one report format (a table on stdout and
//! `target/bench/NAME.json`), every row a measurement of the backend next to
//! the raw store doing the same work in the same run.

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// How many times better than raw the backend is: above 1 is faster,
    /// for rates and times alike.
    pub fn ratio(&self) -> f64 {
        match self.unit {
            Unit::PerSecond => self.backend / self.raw,
            Unit::Millis => self.raw / self.backend,
        }
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
        };
        let target = row
            .target
            .map_or_else(|| "-".to_owned(), |t| format!(">={t}"));
        let _ = writeln!(
            table,
            "{:<44} {:>10.1} {unit:<2} {:>10.1} {unit:<2} {:>7.2} {target:>7}",
            row.name,
            row.backend,
            row.raw,
            row.ratio()
        );
        json.push(format!(
            "  {{\"measure\": {:?}, \"unit\": {unit:?}, \"backend\": {:.3}, \"raw\": {:.3}, \"ratio\": {:.3}, \"target\": {}}}",
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
