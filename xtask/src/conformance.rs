//! The conformance matrix: every property of the suite, per backend, each
//! run in its own process so its outcome and time are its own.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Backend;
use crate::cargo::{cargo, root};

/// How one property went on one backend.
enum Verdict {
    Pass,
    NotApplicable(String),
    Fail(String),
}

struct Cell {
    verdict: Verdict,
    elapsed: Duration,
}

pub(crate) fn run(backends: &[&Backend]) -> Result<(), String> {
    if backends.iter().any(|b| !b.embedded) {
        crate::cargo::install()?;
    }
    let binaries = build(backends)?;
    let mut planned = Vec::new();
    for (backend, binary) in backends.iter().zip(&binaries) {
        for test in list(binary)? {
            planned.push(PlannedCell::new(binary, backend.name, test));
        }
    }
    let outcomes = run_cells(&planned, jobs())?;
    let mut columns: Vec<(String, Vec<(String, Cell)>)> = Vec::new();
    for (planned, cell) in planned.into_iter().zip(outcomes) {
        let PlannedCell {
            column, property, ..
        } = planned;
        match columns.iter_mut().find(|(name, _)| *name == column) {
            Some((_, cells)) => cells.push((property, cell)),
            None => columns.push((column, vec![(property, cell)])),
        }
    }
    print_matrix(&columns);
    write_json(&columns)?;
    let failures: Vec<String> = columns
        .iter()
        .flat_map(|(backend, cells)| {
            cells
                .iter()
                .filter_map(move |(property, cell)| match &cell.verdict {
                    Verdict::Fail(reason) => Some(format!("{property} on {backend}:\n{reason}")),
                    _ => None,
                })
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} properties failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        ))
    }
}

/// Build the `tests/conformance.rs` binaries of `backends` and return them,
/// in order.
///
/// Only what those backends need is built: `embedded` (the default, and
/// the README's first command) does not compile the Redis or AWS stacks.
/// For `all` (what CI runs) every `tests/conformance.rs` of the workspace is
/// built in one call, with the packages and features `cargo xtask test`
/// uses, so CI compiles each dependency once for both.
fn build(backends: &[&Backend]) -> Result<Vec<PathBuf>, String> {
    let mut command = cargo();
    command.args(build_args(backends));
    let stdout = crate::cargo::build_messages(command, "the conformance tests")?;
    backends
        .iter()
        .map(|backend| {
            conformance_binary(&stdout, backend.package).ok_or_else(|| {
                format!(
                    "cargo named no conformance test binary for {}",
                    backend.package
                )
            })
        })
        .collect()
}

/// The arguments of the `cargo` call that builds the conformance tests of
/// `backends`.
fn build_args(backends: &[&Backend]) -> Vec<&'static str> {
    let mut args = vec![
        "test",
        "--test",
        "conformance",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    if backends.len() == crate::BACKENDS.len() {
        args.extend(["--workspace", "--all-features"]);
    } else {
        for backend in backends {
            args.extend(["--package", backend.package]);
        }
    }
    args
}

/// The `conformance` test executable of `package` among cargo's JSON
/// messages (one object per line).
fn conformance_binary(messages: &str, package: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "conformance"
                && message["profile"]["test"] == true
                && message["package_id"]
                    .as_str()
                    .is_some_and(|id| package_of(id) == Some(package))
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

/// The package name in a cargo package id: `path+file:///dir#name@1.0.0`,
/// or `path+file:///dir/name#1.0.0` when the folder is named after it.
fn package_of(id: &str) -> Option<&str> {
    let (source, fragment) = id.rsplit_once('#')?;
    match fragment.split_once('@') {
        Some((name, _version)) => Some(name),
        None => source.rsplit('/').next(),
    }
}

fn list(binary: &PathBuf) -> Result<Vec<String>, String> {
    let output = Command::new(binary)
        .args(["--list", "--format", "terse"])
        .output()
        .map_err(|e| format!("cannot list {}: {e}", binary.display()))?;
    let tests: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_owned)
        .collect();
    if tests.is_empty() {
        return Err(format!("{} lists no tests", binary.display()));
    }
    Ok(tests)
}

/// How many cells run at once: `LAMINAR_MATRIX_JOBS`, else 2.
///
/// Most of the matrix's time is networked cells waiting on their servers
/// (S3 and Redis Cluster columns are four fifths of it), so two at a time
/// fill a 2-core machine without making each cell CPU-bound. Every cell
/// starts its own servers on free ports in its own process, so cells share
/// nothing but the machine.
fn jobs() -> usize {
    std::env::var("LAMINAR_MATRIX_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}

/// Run every `(binary, test)` cell, `jobs` at a time, and return their
/// outcomes in the order given; each is printed as it finishes.
/// One cell of the matrix to run: a test of a backend's conformance binary,
/// and where its verdict goes in the table.
struct PlannedCell<'a> {
    binary: &'a PathBuf,
    /// The test's full name, as the binary lists it.
    test: String,
    /// The column: the test's module, so a crate that tests several
    /// deployments (redis: standalone and cluster) gets one column each;
    /// the backend's name for a test at the binary's root.
    column: String,
    /// The row: the property's name.
    property: String,
}

impl<'a> PlannedCell<'a> {
    fn new(binary: &'a PathBuf, backend: &str, test: String) -> Self {
        let (column, property) = test.rsplit_once("::").unwrap_or((backend, &test));
        let (column, property) = (column.to_owned(), property.to_owned());
        Self {
            binary,
            test,
            column,
            property,
        }
    }
}

fn run_cells(cells: &[PlannedCell<'_>], jobs: usize) -> Result<Vec<Cell>, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let outcomes: std::sync::Mutex<Vec<Option<Result<Cell, String>>>> =
        std::sync::Mutex::new(cells.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(cells.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(PlannedCell { binary, test, .. }) = cells.get(i) else {
                        break;
                    };
                    let outcome = run_one(binary, test);
                    if let Ok(cell) = &outcome {
                        eprintln!("  {test:<52} {}", verdict_text(cell));
                    }
                    outcomes.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
                }
            });
        }
    });
    outcomes
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("a matrix cell was never run".to_owned())))
        .collect()
}

fn run_one(binary: &PathBuf, test: &str) -> Result<Cell, String> {
    let started = Instant::now();
    let output = Command::new(binary)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run {test}: {e}"))?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let verdict = if !output.status.success() {
        let reason: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .skip_while(|l| !l.contains("panicked at"))
            .take(12)
            .collect();
        Verdict::Fail(if reason.is_empty() {
            format!("{}{}", stdout, stderr)
        } else {
            reason.join("\n")
        })
    } else if let Some(line) = stderr.lines().find(|l| l.starts_with("NOT APPLICABLE")) {
        let needs = line.rsplit('`').nth(1).unwrap_or("a capability").to_owned();
        Verdict::NotApplicable(needs)
    } else if stdout.contains("1 passed") {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{test} ran no test:\n{stdout}"))
    };
    Ok(Cell { verdict, elapsed })
}

fn verdict_text(cell: &Cell) -> String {
    match &cell.verdict {
        Verdict::Pass => format!("pass {:>6.2}s", cell.elapsed.as_secs_f64()),
        Verdict::NotApplicable(needs) => format!("n/a ({needs})"),
        Verdict::Fail(_) => format!("FAIL {:>6.2}s", cell.elapsed.as_secs_f64()),
    }
}

fn print_matrix(columns: &[(String, Vec<(String, Cell)>)]) {
    let Some((_, first)) = columns.first() else {
        return;
    };
    let width = first.iter().map(|(p, _)| p.len()).max().unwrap_or(8);
    let mut table = format!("\n{:<width$}", "property");
    for (backend, _) in columns {
        let _ = write!(table, " {backend:<28}");
    }
    table.push('\n');
    for (row, (property, _)) in first.iter().enumerate() {
        let _ = write!(table, "{property:<width$}");
        for (_, cells) in columns {
            let text = cells
                .get(row)
                .map_or_else(String::new, |(_, cell)| verdict_text(cell));
            let _ = write!(table, " {text:<28}");
        }
        table.push('\n');
    }
    let mut totals = format!("{:<width$}", "total");
    for (_, cells) in columns {
        let pass = cells
            .iter()
            .filter(|(_, c)| matches!(c.verdict, Verdict::Pass))
            .count();
        let na = cells
            .iter()
            .filter(|(_, c)| matches!(c.verdict, Verdict::NotApplicable(_)))
            .count();
        let fail = cells.len() - pass - na;
        let secs: f64 = cells.iter().map(|(_, c)| c.elapsed.as_secs_f64()).sum();
        let _ = write!(
            totals,
            " {:<28}",
            format!("{pass} pass, {na} n/a, {fail} fail, {secs:.1}s")
        );
    }
    println!("{table}{totals}");
}

/// The matrix as JSON: one object per property and backend.
fn matrix_json(columns: &[(String, Vec<(String, Cell)>)]) -> Value {
    let rows: Vec<Value> = columns
        .iter()
        .flat_map(|(backend, cells)| {
            cells.iter().map(move |(property, cell)| {
                let (verdict, detail) = match &cell.verdict {
                    Verdict::Pass => ("pass", ""),
                    Verdict::NotApplicable(needs) => ("not_applicable", needs.as_str()),
                    Verdict::Fail(reason) => ("fail", reason.lines().next().unwrap_or("")),
                };
                json!({
                    "backend": backend,
                    "property": property,
                    "verdict": verdict,
                    "detail": detail,
                    "seconds": (cell.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                })
            })
        })
        .collect();
    Value::Array(rows)
}

fn write_json(columns: &[(String, Vec<(String, Cell)>)]) -> Result<(), String> {
    let mut json = serde_json::to_string_pretty(&matrix_json(columns))
        .map_err(|e| format!("cannot render the matrix as JSON: {e}"))?;
    json.push('\n');
    let dir = root().join("target").join("conformance");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("matrix.json");
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("matrix written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_from_ids() {
        assert_eq!(
            package_of("path+file:///w/backend-redb#laminar-state-redb@0.1.0"),
            Some("laminar-state-redb")
        );
        assert_eq!(
            package_of("path+file:///w/laminar-state#0.1.0"),
            Some("laminar-state")
        );
        assert_eq!(package_of("no fragment"), None);
    }

    #[test]
    fn finds_the_conformance_binary_of_a_package() {
        let messages = [
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/backend-memory#laminar-state-memory@0.1.0","target":{"name":"conformance"},"profile":{"test":true},"executable":"/t/conformance-1"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/backend-redb#laminar-state-redb@0.1.0","target":{"name":"laminar_state_redb"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/backend-redb#laminar-state-redb@0.1.0","target":{"name":"conformance"},"profile":{"test":true},"executable":"/t/conformance-2"}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(
            conformance_binary(&messages, "laminar-state-redb"),
            Some(PathBuf::from("/t/conformance-2"))
        );
        assert_eq!(
            conformance_binary(&messages, "laminar-state-memory"),
            Some(PathBuf::from("/t/conformance-1"))
        );
        assert_eq!(conformance_binary(&messages, "laminar-state-s3"), None);
    }

    #[test]
    fn embedded_builds_only_its_packages() {
        let embedded = crate::select("embedded").unwrap();
        let args = build_args(&embedded);
        assert!(args.contains(&"laminar-state-memory") && args.contains(&"laminar-state-redb"));
        assert!(!args.contains(&"--workspace") && !args.contains(&"--all-features"));
        let all = build_args(&crate::select("all").unwrap());
        assert!(all.contains(&"--workspace") && all.contains(&"--all-features"));
    }

    #[test]
    fn layered_runs_when_named_or_with_all_only() {
        assert!(!args_name("embedded", "laminar-state-layers"));
        assert!(args_name("layered", "laminar-state-layers"));
        assert!(!args_name("layered", "laminar-state-memory"));
        assert!(
            crate::select("all")
                .unwrap()
                .iter()
                .any(|b| b.name == "layered")
        );
    }

    /// Whether building the conformance tests of `choice` names `package`.
    fn args_name(choice: &str, package: &str) -> bool {
        build_args(&crate::select(choice).unwrap()).contains(&package)
    }

    #[test]
    fn the_matrix_is_json_even_with_quotes_and_control_characters() {
        let columns = vec![(
            "redb".to_owned(),
            vec![
                (
                    "p01_round_trip".to_owned(),
                    Cell {
                        verdict: Verdict::Fail("panicked at \"x\\y\"\t\u{1}\nmore".to_owned()),
                        elapsed: Duration::from_millis(1500),
                    },
                ),
                (
                    "p15_fenced_seal".to_owned(),
                    Cell {
                        verdict: Verdict::NotApplicable("fenced_seal".to_owned()),
                        elapsed: Duration::ZERO,
                    },
                ),
            ],
        )];
        let text = serde_json::to_string(&matrix_json(&columns)).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["detail"], "panicked at \"x\\y\"\t\u{1}");
        assert_eq!(parsed[0]["verdict"], "fail");
        assert_eq!(parsed[0]["seconds"], 1.5);
        assert_eq!(parsed[1]["verdict"], "not_applicable");
        assert_eq!(parsed[1]["detail"], "fenced_seal");
    }
}
