//! The benchmark harness shared by the backends' `benches/`: how a bench
//! binary was invoked, and one report format (a table on stdout and
//! `target/bench/NAME.json`), every row a measurement of the backend next to
//! the raw store doing the same work in the same run.

use std::fmt::Write as _;
use std::path::Path;

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
