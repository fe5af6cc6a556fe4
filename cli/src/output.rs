//! Exit codes, errors, and what a command prints: a JSON document with
//! `--json`, a table otherwise.

use std::fmt::Write as _;
use std::process::ExitCode;

use laminar_state::StateBackendError;
use serde_json::Value;

/// The exit codes, as the README documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// (0 is success, which is no `Exit`.)
pub(crate) enum Exit {
    /// A backend or file error: the store could not be reached, a partial
    /// could not be read, a write was refused.
    Failure = 1,
    /// Bad arguments (clap's own usage errors exit 2 too).
    Usage = 2,
    /// A digest differs: `copy --verify` read back other bytes, or an
    /// epoch already sealed on the destination holds other partials or
    /// names another committer.
    Mismatch = 3,
    /// Refused: the destination holds newer sealed epochs (without
    /// `--force`), the file exists (without `--force`), or a prune was not
    /// confirmed.
    Refused = 4,
    /// The export file is damaged: truncated, altered, or not an export.
    Damaged = 5,
    /// `get`: no partial is stored for that vnode and epoch.
    NotFound = 6,
}

impl Exit {
    fn name(self) -> &'static str {
        match self {
            Exit::Failure => "failure",
            Exit::Usage => "usage",
            Exit::Mismatch => "mismatch",
            Exit::Refused => "refused",
            Exit::Damaged => "damaged",
            Exit::NotFound => "not_found",
        }
    }
}

/// A command's failure: its exit code and what to tell the operator.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub(crate) fn failure(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    /// A backend error during `what`.
    pub(crate) fn backend(what: impl std::fmt::Display, error: StateBackendError) -> Self {
        Self::failure(format!("{what}: {error}"))
    }
}

/// `Result` of a command.
pub(crate) type CliResult<T> = Result<T, CliError>;

/// Print `error` (on stderr; with `json`, also as a JSON document on
/// stdout) and turn it into the process's exit code.
pub(crate) fn fail(error: &CliError, json: bool) -> ExitCode {
    eprintln!("laminar-state: error: {}", error.message);
    if json {
        let doc = serde_json::json!({
            "ok": false,
            "exit_code": error.exit as u8,
            "error": error.exit.name(),
            "message": error.message,
        });
        println!("{doc}");
    }
    ExitCode::from(error.exit as u8)
}

/// Print a command's result: `doc` with `json`, else `table`.
pub(crate) fn print(json: bool, doc: &Value, table: impl FnOnce() -> String) {
    if json {
        println!("{doc}");
    } else {
        print!("{}", table());
    }
}

/// A plain text table: a header row and rows, columns padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

/// `bytes` for people: `1.5 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Lowercase hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
