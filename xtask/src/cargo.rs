//! Running cargo (through `$CARGO`, so the same toolchain) from the project
//! root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A cargo command in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Run a cargo build `command` that prints JSON messages
/// (`--message-format=json-render-diagnostics`) and return them. Cargo's own
/// progress and diagnostics go to stderr as usual; only its JSON messages on
/// stdout, which name the artifacts, are kept. `what` names the build in
/// the error.
pub(crate) fn build_messages(mut command: Command, what: &str) -> Result<String, String> {
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    eprintln!("$ {command:?}");
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building {what} failed ({}); cargo's errors are above",
            output.status
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Run `command`, streaming its output; fail if it fails.
pub(crate) fn run(command: Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    eprintln!("$ {shown}");
    run_quietly(command, &shown)
}

/// Run `command` without showing it first; an error names it as `shown`.
pub(crate) fn run_quietly(mut command: Command, shown: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn have_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Make sure the servers the tests start (redis-server) are installed.
pub(crate) fn install() -> Result<(), String> {
    let mut install = Command::new("bash");
    install.arg(root().join(".ci").join("install"));
    run(install)
}

/// Every test: the doc tests first (nextest does not run them), the
/// facade with only `memory`, then the conformance matrix of every backend
/// (each property in its own process, see [`crate::conformance`]), then the
/// rest with nextest (one process per test, so the crash tests' children
/// and the per-test time limits are isolated) when it is installed, else
/// with libtest.
///
/// The `tests/conformance.rs` binaries are the matrix's: nextest leaves
/// them out rather than run every property twice. Without nextest, libtest
/// cannot leave out a test target by name, and runs them again.
pub(crate) fn test() -> Result<(), String> {
    install()?;
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc", "--all-features"]);
    run(doc)?;
    // The facade with only the in-process backend: the others must answer
    // with an error naming their feature.
    let mut minimal = cargo();
    minimal.args([
        "test",
        "--package",
        "laminar-state",
        "--no-default-features",
        "--features",
        "memory",
        "--test",
        "facade",
    ]);
    run(minimal)?;
    crate::conformance::run(&crate::BACKENDS.iter().collect::<Vec<_>>())?;
    let mut tests = cargo();
    let all = [
        "--workspace",
        "--all-targets",
        "--all-features",
        "--no-fail-fast",
    ];
    if have_nextest() {
        tests
            .args(["nextest", "run"])
            .args(all)
            .args(["-E", NOT_THE_MATRIX]);
    } else {
        tests.arg("test").args(all);
    }
    run(tests)
}

/// The nextest filter of every test the conformance matrix does not run.
pub(crate) const NOT_THE_MATRIX: &str = "not binary(=conformance)";

/// Formatting, lints and docs, all warnings denied.
pub(crate) fn lint() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;
    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    run(doc)
}
