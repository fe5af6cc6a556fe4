//! The conformance matrix: every property of the suite, per backend, each
//! run in its own process so its outcome and time are its own.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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
    let mut columns: Vec<(String, Vec<(String, Cell)>)> = Vec::new();
    for (backend, binary) in backends.iter().zip(&binaries) {
        // One column per conformance module: a crate may test several
        // deployments (redis: standalone and cluster).
        for test in list(binary)? {
            let (column, property) = test.rsplit_once("::").unwrap_or((backend.name, &test));
            let cell = run_one(binary, &test)?;
            eprintln!("  {column:<18} {property:<34} {}", verdict_text(&cell));
            match columns.iter_mut().find(|(name, _)| name == column) {
                Some((_, cells)) => cells.push((property.to_owned(), cell)),
                None => columns.push((column.to_owned(), vec![(property.to_owned(), cell)])),
            }
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

/// Build every `tests/conformance.rs` of the workspace in one cargo call,
/// with the packages and features `cargo xtask test` uses, so the
/// dependencies are compiled once for both; return the test binaries of
/// `backends`, in order.
fn build(backends: &[&Backend]) -> Result<Vec<PathBuf>, String> {
    let output = cargo()
        .args([
            "test",
            "--workspace",
            "--all-features",
            "--test",
            "conformance",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the conformance tests failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // cargo prints one JSON object per line; a test artifact's line names
    // its package, the target "conformance" and its "executable".
    let stdout = String::from_utf8_lossy(&output.stdout);
    backends
        .iter()
        .map(|backend| {
            stdout
                .lines()
                .filter(|line| {
                    line.contains("\"name\":\"conformance\"")
                        && line.contains("\"test\":true")
                        && json_string_field(line, "package_id")
                            .is_some_and(|id| id.contains(&format!("#{}@", backend.package)))
                })
                .find_map(|line| json_string_field(line, "executable"))
                .map(PathBuf::from)
                .ok_or_else(|| {
                    format!(
                        "cargo named no conformance test binary for {}",
                        backend.package
                    )
                })
        })
        .collect()
}

fn json_string_field(line: &str, field: &str) -> Option<String> {
    let start = line.find(&format!("\"{field}\":\""))? + field.len() + 4;
    let end = start + line[start..].find('"')?;
    Some(line[start..end].replace("\\\\", "\\"))
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

fn write_json(columns: &[(String, Vec<(String, Cell)>)]) -> Result<(), String> {
    let mut json = String::from("[\n");
    let rows: Vec<String> = columns
        .iter()
        .flat_map(|(backend, cells)| {
            cells.iter().map(move |(property, cell)| {
                let (verdict, detail) = match &cell.verdict {
                    Verdict::Pass => ("pass", String::new()),
                    Verdict::NotApplicable(needs) => ("not_applicable", needs.clone()),
                    Verdict::Fail(reason) => ("fail", reason.lines().next().unwrap_or("").to_owned()),
                };
                format!(
                    "  {{\"backend\": \"{backend}\", \"property\": \"{property}\", \"verdict\": \"{verdict}\", \"detail\": {:?}, \"seconds\": {:.3}}}",
                    detail,
                    cell.elapsed.as_secs_f64()
                )
            })
        })
        .collect();
    json.push_str(&rows.join(",\n"));
    json.push_str("\n]\n");
    let dir = root().join("target").join("conformance");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("matrix.json");
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("matrix written to {}", path.display());
    Ok(())
}
