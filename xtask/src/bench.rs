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
    write(&dir.join("results.md"), &markdown_table(&records))?;
    let chart = dir.join("ratios.svg");
    write(&chart, &ratio_chart(&records))?;
    let mut charts = vec![chart];
    for (file, growth) in [
        ("gate-growth.svg", &GATE_GROWTH),
        ("prune-growth.svg", &PRUNE_GROWTH),
    ] {
        if let Some(svg) = growth_chart(&records, growth) {
            let path = dir.join(file);
            write(&path, &svg)?;
            charts.push(path);
        }
    }
    print!("{}", summary(&records));
    println!(
        "results in {}, charts in {}",
        results.display(),
        charts
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
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

/// The records as a markdown table (`target/bench/results.md`), as the
/// README shows them.
fn markdown_table(records: &[Record]) -> String {
    let mut table = String::from(
        "| backend | measure | ours | raw | ratio | target |\n|---|---|---:|---:|---:|---|\n",
    );
    for r in records {
        let target = match (r.target, r.pass()) {
            (Some(target), Some(true)) => format!("≥ {target} pass"),
            (Some(target), _) => format!("≥ {target} **miss**"),
            (None, _) => "-".to_owned(),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} {unit} | {} {unit} | {:.2} | {target} |",
            r.backend,
            r.measure,
            figure(r.ours),
            figure(r.raw),
            r.ratio,
            unit = r.unit,
        );
    }
    table
}

/// A figure for people: thousands separated, four significant digits at
/// least for small ones.
fn figure(value: f64) -> String {
    if value.abs() >= 1_000.0 {
        let digits = format!("{:.0}", value.abs());
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        format!("{}{grouped}", if value < 0.0 { "-" } else { "" })
    } else if value.abs() >= 100.0 || value == 0.0 {
        format!("{value:.1}")
    } else {
        let decimals = (3 - value.abs().log10().floor() as i32).clamp(1, 9) as usize;
        format!("{value:.decimals$}")
    }
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

/// A family of growth rows (see `laminar_state_bench::growth`): measures
/// named `{prefix}{size}{rest} (ms)`, drawn as latency against size.
struct GrowthRows {
    prefix: &'static str,
    size: &'static str,
    title: &'static str,
}

const GATE_GROWTH: GrowthRows = GrowthRows {
    prefix: "gate growth: ",
    size: "vnodes per epoch",
    title: "epoch_complete latency as the vnodes grow",
};

const PRUNE_GROWTH: GrowthRows = GrowthRows {
    prefix: "prune growth: ",
    size: "epochs pruned (16 vnodes each)",
    title: "prune_before latency as the epochs below the bound grow",
};

/// One size of a growth family: (size, ours, raw).
type GrowthPoint = (f64, f64, f64);

/// Latency against size on log axes, a line per backend for ours (solid)
/// and one for its raw store (dashed, same colour); `None` if no record
/// belongs to the family.
fn growth_chart(records: &[Record], rows: &GrowthRows) -> Option<String> {
    const COLOURS: [&str; 6] = [
        "#2e86c1", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#7f8c8d",
    ];
    const LEFT: f64 = 70.0;
    const TOP: f64 = 40.0;
    const WIDTH: f64 = 520.0;
    const HEIGHT: f64 = 300.0;
    // Per backend: (size, ours, raw) in the order measured.
    let mut series: Vec<(&str, Vec<GrowthPoint>)> = Vec::new();
    for r in records {
        let Some(size) = r
            .measure
            .strip_prefix(rows.prefix)
            .filter(|_| r.unit == "ms")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|size| size.parse::<f64>().ok())
        else {
            continue;
        };
        if r.ours <= 0.0 || r.raw <= 0.0 {
            continue;
        }
        match series.iter_mut().find(|(backend, _)| *backend == r.backend) {
            Some((_, points)) => points.push((size, r.ours, r.raw)),
            None => series.push((&r.backend, vec![(size, r.ours, r.raw)])),
        }
    }
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (y_min, y_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1.min(p.2)), hi.max(p.1.max(p.2)))
    });
    if series.is_empty() {
        return None;
    }
    let (y_low, y_high) = (
        y_min.log10().floor(),
        y_max.log10().ceil().max(y_min.log10().floor() + 1.0),
    );
    let x_span = (x_max / x_min).log2().max(1.0);
    let x = |size: f64| LEFT + WIDTH * (size / x_min).log2() / x_span;
    let y = |ms: f64| TOP + HEIGHT * (y_high - ms.log10()) / (y_high - y_low);
    let mut body = String::new();
    for decade in y_low as i32..=y_high as i32 {
        let ms = 10f64.powi(decade);
        let _ = writeln!(
            body,
            r##"<line x1="{LEFT}" x2="{0:.1}" y1="{1:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{ms} ms</text>"##,
            LEFT + WIDTH,
            y(ms),
            LEFT - 6.0,
            y(ms) + 4.0,
        );
    }
    let mut sizes: Vec<f64> = points().map(|p| p.0).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    for size in &sizes {
        let _ = writeln!(
            body,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1:.1}" stroke="#ddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{size}</text>"##,
            x(*size),
            TOP + HEIGHT,
            TOP + HEIGHT + 16.0
        );
    }
    for (i, (backend, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        for (side, dash, pick) in [
            ("ours", "", 1usize),
            ("raw", r#" stroke-dasharray="5,4""#, 2),
        ] {
            let path: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.0), y(if pick == 1 { p.1 } else { p.2 })))
                .collect();
            let _ = writeln!(
                body,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            let _ = writeln!(
                body,
                r#"<line x1="{0:.1}" x2="{1:.1}" y1="{2:.1}" y2="{2:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{3:.1}" y="{4:.1}">{5} {side}</text>"#,
                LEFT + WIDTH + 14.0,
                LEFT + WIDTH + 40.0,
                TOP + 10.0 + 32.0 * i as f64 + if pick == 1 { 0.0 } else { 14.0 },
                LEFT + WIDTH + 46.0,
                TOP + 14.0 + 32.0 * i as f64 + if pick == 1 { 0.0 } else { 14.0 },
                escape(backend)
            );
        }
    }
    Some(format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="20" font-weight="bold">{}</text>
{body}<text x="4" y="{:.1}">{} (log scale); latency per operation (log scale); solid: ours, dashed: the raw store doing the same work</text>
</svg>
"#,
        LEFT + WIDTH + 170.0,
        TOP + HEIGHT + 50.0,
        escape(rows.title),
        TOP + HEIGHT + 38.0,
        escape(rows.size)
    ))
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
    fn growth_charts_draw_a_line_per_backend_and_side() {
        let gate = |backend: &str, size: u32, ours: f64, raw: f64| Record {
            backend: backend.into(),
            measure: format!("gate growth: {size} vnodes (ms)"),
            unit: "ms".into(),
            ours,
            raw,
            ratio: raw / ours,
            target: None,
        };
        let mut records = vec![
            gate("redb", 256, 2.0, 2.5),
            gate("redb", 16384, 90.0, 150.0),
            gate("s3", 256, 30.0, 200.0),
            gate("s3", 16384, 900.0, 9000.0),
        ];
        records.extend(parse("s3", BENCH_JSON).unwrap());
        let svg = growth_chart(&records, &GATE_GROWTH).expect("a chart");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline ").count(), 4, "{svg}");
        assert!(svg.contains(">16384<") && svg.contains(">256<"));
        assert!(svg.contains("1000 ms") || svg.contains("10000 ms"), "{svg}");
        assert!(growth_chart(&records, &PRUNE_GROWTH).is_none());
    }

    #[test]
    fn the_markdown_table_has_a_row_per_record() {
        let records = parse("s3", BENCH_JSON).unwrap();
        let table = markdown_table(&records);
        assert_eq!(table.lines().count(), 2 + records.len());
        assert!(
            table.contains(
                "| s3 | writes/s, 1 task(s), 4 KiB | 300.0 /s | 400.0 /s | 0.75 | ≥ 0.8 **miss** |"
            ),
            "{table}"
        );
        assert_eq!(figure(1_234_567.0), "1,234,567");
        assert_eq!(figure(0.006905), "0.006905");
        assert_eq!(figure(42.0), "42.00");
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
