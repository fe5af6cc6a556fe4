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

#[test]
fn redb_passes() {
    let (code, stdout) = chaos(&["--backend", "redb", "--seconds", "6", "--seed", "11"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("violations=0"), "{stdout}");
    assert!(stdout.contains("kills="), "{stdout}");
}

#[test]
fn redb_ignoring_the_fence_is_caught() {
    let (code, stdout) = chaos(&[
        "--backend",
        "redb",
        "--seconds",
        "5",
        "--seed",
        "12",
        "--broken=fence",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("first violation: stale write"), "{stdout}");
    assert!(
        stdout.contains("\"invoke\""),
        "the excerpt shows history lines: {stdout}"
    );
}

#[test]
fn redb_sealing_without_the_gate_is_caught() {
    let (code, stdout) = chaos(&[
        "--backend",
        "redb",
        "--seconds",
        "5",
        "--seed",
        "13",
        "--broken=seal",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("seal without partials"), "{stdout}");
}

#[test]
fn redb_losing_writes_is_caught() {
    let (code, stdout) = chaos(&[
        "--backend",
        "redb",
        "--seconds",
        "5",
        "--seed",
        "14",
        "--broken=lose",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("lost write"), "{stdout}");
}

#[test]
fn redis_passes_and_its_broken_fence_is_caught() {
    let (code, stdout) = chaos(&["--backend", "redis", "--seconds", "8", "--seed", "15"]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout) = chaos(&[
        "--backend",
        "redis",
        "--seconds",
        "5",
        "--seed",
        "16",
        "--broken=fence",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("first violation: stale write"), "{stdout}");
}
