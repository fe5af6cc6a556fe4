//! Short chaos runs through the binary: a correct backend passes, and a
//! broken one makes the checker object and the run exit non-zero (the
//! checker's teeth). redb needs nothing; redis needs redis-server
//! (`bash .ci/install`).

use std::process::Command;

/// Run the chaos binary; its exit code and stdout.
fn chaos(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_laminar-state-chaos"))
        .arg("run")
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run the chaos binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code(), stdout)
}

/// A correct run of `backend` for `seconds`: it exits 0; its stdout.
fn passes(backend: &str, seconds: &str, seed: &str) -> String {
    let (code, stdout) = chaos(&["--backend", backend, "--seconds", seconds, "--seed", seed]);
    assert_eq!(code, Some(0), "{stdout}");
    stdout
}

/// A 5-second run of `backend` with `breakage` (`--broken`): the checker
/// objects with `violation`, so the run exits 1; its stdout.
fn caught(backend: &str, seed: &str, breakage: &str, violation: &str) -> String {
    let broken = format!("--broken={breakage}");
    let (code, stdout) = chaos(&[
        "--backend",
        backend,
        "--seconds",
        "5",
        "--seed",
        seed,
        &broken,
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains(violation), "{stdout}");
    stdout
}

#[test]
fn redb_passes() {
    let stdout = passes("redb", "6", "11");
    assert!(stdout.contains("violations=0"), "{stdout}");
    assert!(stdout.contains("kills="), "{stdout}");
}

#[test]
fn redb_ignoring_the_fence_is_caught() {
    let stdout = caught("redb", "12", "fence", "first violation: stale write");
    assert!(
        stdout.contains("\"invoke\""),
        "the excerpt shows history lines: {stdout}"
    );
}

#[test]
fn redb_sealing_without_the_gate_is_caught() {
    caught("redb", "13", "seal", "seal without partials");
}

#[test]
fn redb_losing_writes_is_caught() {
    caught("redb", "14", "lose", "lost write");
}

#[test]
fn redis_passes_and_its_broken_fence_is_caught() {
    passes("redis", "8", "15");
    caught("redis", "16", "fence", "first violation: stale write");
}
