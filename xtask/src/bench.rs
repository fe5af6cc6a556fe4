//! Benchmarks: each backend crate's `benches/`, in release mode, compared
//! with the raw store in the same run; then one place to look at them all:
//! `target/bench/results.json` (a record per measure), a chart of every
//! ratio (`target/bench/ratios.svg`) and one summary table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::Backend;
use crate::cargo::{cargo, root, run as run_command};

/// What `cargo xtask bench` was asked to do besides measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Options {
    /// Exit non-zero when a measure misses its target.
    pub(crate) check: bool,
    /// Measure nothing: gather what the last runs left in `target/bench/`.
    pub(crate) collect_only: bool,
}

impl Options {
    /// The flags among `args`, and the arguments left for `--backend`.
    pub(crate) fn parse(args: &[String]) -> (Self, Vec<String>) {
        let mut options = Options::default();
        let mut rest = Vec::new();
        for arg in args {
            match arg.as_str() {
                "--check" => options.check = true,
                "--collect-only" => options.collect_only = true,
                _ => rest.push(arg.clone()),
            }
        }
        (options, rest)
    }
}

pub(crate) fn run(backends: &[&Backend], options: Options) -> Result<(), String> {
    if !options.collect_only {
        if backends.iter().any(|b| !b.embedded) {
            crate::cargo::install()?;
        }
        for backend in backends {
            let mut bench = cargo();
            bench.args(["bench", "--package", backend.package]);
            run_command(bench)?;
        }
    }
    let dir = root().join("target").join("bench");
    let records = collect(&dir, backends)?;
    let results = dir.join("results.json");
    let mut text =
        serde_json::to_string_pretty(&Value::Array(records.iter().map(Record::to_json).collect()))
            .map_err(|e| e.to_string())?;
    text.push('\n');
    write(&results, &text)?;
    let chart = dir.join("ratios.svg");
    write(&chart, &ratio_chart(&records))?;
    print!("{}", summary(&records));
    println!(
        "results in {}, chart in {}",
        results.display(),
        chart.display()
    );
    let missed: Vec<String> = records
        .iter()
        .filter(|r| r.pass() == Some(false))
        .map(|r| {
            format!(
                "{} {}: {:.2} < {}",
                r.backend,
                r.measure,
                r.ratio,
                r.target.unwrap_or(0.0)
            )
        })
        .collect();
    if options.check && !missed.is_empty() {
        return Err(format!(
            "{} measures missed their targets:\n  {}",
            missed.len(),
            missed.join("\n  ")
        ));
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// One measure of one backend, as its bench reported it.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    backend: String,
    measure: String,
    unit: String,
    ours: f64,
    raw: f64,
    /// How many times better than raw ours is (above 1: faster), for rates
    /// and times alike.
    ratio: f64,
    target: Option<f64>,
}

impl Record {
    /// Whether the ratio meets the target; `None` when there is none.
    fn pass(&self) -> Option<bool> {
        self.target.map(|target| self.ratio >= target)
    }

    fn to_json(&self) -> Value {
        json!({
            "backend": self.backend,
            "measure": self.measure,
            "unit": self.unit,
            "ours": self.ours,
            "raw": self.raw,
            "ratio": self.ratio,
            "target": self.target,
            "pass": self.pass(),
        })
    }
}

/// The records of `backends`' last runs, read from `dir/{name}.json`; a
/// backend that has none yet is an error naming the file.
fn collect(dir: &Path, backends: &[&Backend]) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    for backend in backends {
        let path: PathBuf = dir.join(format!("{}.json", backend.name));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no results of {} ({}: {e}); run `cargo xtask bench --backend {}`",
                backend.name,
                path.display(),
                backend.name
            )
        })?;
        records.extend(parse(backend.name, &text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(records)
}

/// The records of one bench's JSON file (see `laminar_state_bench::report`).
fn parse(backend: &str, text: &str) -> Result<Vec<Record>, String> {
    let rows: Vec<Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            let number = |field: &str| {
                row[field]
                    .as_f64()
                    .ok_or_else(|| format!("a row without a number {field:?}: {row}"))
            };
            Ok(Record {
                backend: backend.to_owned(),
                measure: row["measure"]
                    .as_str()
                    .ok_or_else(|| format!("a row without a measure: {row}"))?
                    .to_owned(),
                unit: row["unit"].as_str().unwrap_or("").to_owned(),
                ours: number("backend")?,
                raw: number("raw")?,
                ratio: number("ratio")?,
                target: row["target"].as_f64(),
            })
        })
        .collect()
}

/// One table of every record: backend, measure, ratio, target, verdict.
fn summary(records: &[Record]) -> String {
    let width = records.iter().map(|r| r.measure.len()).max().unwrap_or(8);
    let mut table = format!(
        "\n{:<8} {:<width$} {:>7} {:>7}  verdict\n",
        "backend", "measure", "ratio", "target"
    );
    for r in records {
        let target = r.target.map_or("-".to_owned(), |t| format!(">={t}"));
        let verdict = match r.pass() {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "-",
        };
        let _ = writeln!(
            table,
            "{:<8} {:<width$} {:>7.2} {target:>7}  {verdict}",
            r.backend, r.measure, r.ratio
        );
    }
    let with_target = records.iter().filter(|r| r.target.is_some()).count();
    let passed = records.iter().filter(|r| r.pass() == Some(true)).count();
    let _ = writeln!(
        table,
        "{passed} of {with_target} targets met; {} measures in all",
        records.len()
    );
    table
}

/// The chart: one bar per measure, the ratio on a log scale from 1/16 to
/// 16 (parity marked; a bar right of it is faster than the raw store), the
/// target as a tick, grouped by backend. Plain SVG, no dependency.
fn ratio_chart(records: &[Record]) -> String {
    const LABEL: f64 = 430.0;
    const PLOT: f64 = 420.0;
    const ROW: f64 = 18.0;
    let x = |ratio: f64| LABEL + PLOT * (ratio.clamp(1.0 / 16.0, 16.0).log2() + 4.0) / 8.0;
    let mut body = String::new();
    let mut y = 30.0;
    let mut backend = "";
    for r in records {
        if r.backend != backend {
            backend = &r.backend;
            y += 8.0;
            let _ = writeln!(
                body,
                r#"<text x="4" y="{:.0}" font-weight="bold">{}</text>"#,
                y + 12.0,
                escape(backend)
            );
            y += ROW;
        }
        let (from, to) = (x(1.0), x(r.ratio));
        let colour = match r.pass() {
            Some(false) => "#c0392b",
            _ if r.ratio >= 1.0 => "#2e86c1",
            _ => "#85929e",
        };
        let _ = writeln!(
            body,
            r#"<text x="14" y="{:.0}">{}</text><rect x="{:.1}" y="{:.0}" width="{:.1}" height="{}" fill="{colour}"/><text x="{:.1}" y="{:.0}">{:.2}x</text>"#,
            y + 12.0,
            escape(&r.measure),
            from.min(to),
            y + 3.0,
            (to - from).abs().max(1.0),
            ROW - 6.0,
            LABEL + PLOT + 6.0,
            y + 12.0,
            r.ratio
        );
        if let Some(target) = r.target {
            let _ = writeln!(
                body,
                r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.0}" y2="{2:.0}" stroke="black" stroke-width="2"/>"#,
                x(target),
                y + 1.0,
                y + ROW - 1.0
            );
        }
        y += ROW;
    }
    let height = y + 30.0;
    let mut axis = String::new();
    for power in -4i32..=4 {
        let ratio = 2f64.powi(power);
        let label = if power < 0 {
            format!("1/{}", 1 << -power)
        } else {
            format!("{}", 1 << power)
        };
        let _ = writeln!(
            axis,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="24" y2="{1:.0}" stroke="{2}"/><text x="{0:.1}" y="18" text-anchor="middle">{label}x</text>"##,
            x(ratio),
            height - 20.0,
            if power == 0 { "#000" } else { "#ddd" }
        );
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
{axis}{body}<text x="4" y="{foot:.0}">ours / raw store, same work in the same run (log scale; right of 1x is faster; black tick: target; red: target missed)</text>
</svg>
"#,
        w = LABEL + PLOT + 60.0,
        foot = height - 6.0
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH_JSON: &str = r#"[
  {"measure": "writes/s, 1 task(s), 4 KiB", "unit": "/s", "backend": 300.0, "raw": 400.0, "ratio": 0.750, "target": 0.8},
  {"measure": "epoch_complete <256> & more", "unit": "ms", "backend": 15.0, "raw": 150.0, "ratio": 10.000, "target": 5},
  {"measure": "prune", "unit": "ms", "backend": 3.0, "raw": 3.0, "ratio": 1.000, "target": null}
]"#;

    #[test]
    fn records_carry_their_verdicts() {
        let records = parse("s3", BENCH_JSON).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].pass(), Some(false));
        assert_eq!(records[1].pass(), Some(true));
        assert_eq!(records[2].pass(), None);
        let json = records[0].to_json();
        assert_eq!(json["backend"], "s3");
        assert_eq!(json["pass"], false);
        assert_eq!(json["ours"], 300.0);
        let table = summary(&records);
        assert!(
            table.contains("MISS") && table.contains("1 of 2 targets met"),
            "{table}"
        );
    }

    #[test]
    fn the_chart_is_svg_with_every_measure_escaped() {
        let records = parse("s3", BENCH_JSON).unwrap();
        let svg = ratio_chart(&records);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("epoch_complete &lt;256&gt; &amp; more"));
        assert!(!svg.contains("<256>"));
        assert_eq!(svg.matches("<rect ").count(), 1 + records.len());
        assert!(svg.contains("#c0392b"), "the missed target is red");
    }

    #[test]
    fn bad_results_are_named() {
        assert!(
            parse("s3", "[{\"unit\": \"/s\"}]")
                .unwrap_err()
                .contains("measure")
        );
        assert!(parse("s3", "not json").is_err());
        let (options, rest) = Options::parse(&["--check".into(), "--backend".into(), "s3".into()]);
        assert!(options.check && !options.collect_only);
        assert_eq!(rest, ["--backend", "s3"]);
    }
}
