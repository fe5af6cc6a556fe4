//! `cargo xtask`: the project's automation, in Rust so it runs wherever
//! cargo does. No arguments prints the help.

mod bench;
mod cargo;
mod chaos;
mod conformance;
mod release;
mod roundtrip;
#[cfg(test)]
mod tidy;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <command>

commands:
  test                     install the servers the tests start (.ci/install:
                           redis-server, SeaweedFS, moto), then run every test of the
                           workspace: doc tests, the facade with only `memory`,
                           the conformance matrix of every backend (as
                           `conformance --backend all`), then unit, integration
                           and the tidy test (nextest if installed, leaving out
                           the matrix's binaries; else cargo test); then
                           `roundtrip`
  lint                     cargo fmt --check, clippy -D warnings, rustdoc -D warnings
  conformance [--backend NAME|embedded|all]
                           build the chosen backends' conformance tests (only
                           what they need; cargo's progress on stderr), run each
                           property in its own process and print the matrix,
                           property by backend; also written to
                           target/conformance/matrix.json (default: embedded =
                           memory, redb; redis and s3 install and start their
                           own servers: redis-server, SeaweedFS and moto (s3
                           runs on both stores), and run the suite through
                           every layer of laminar-state-layers too; layered =
                           memory and redb wrapped in every layer, in `all`
                           but not `embedded`)
  bench [--backend NAME|all] [--check] [--collect-only]
                           benchmarks against the raw store, in release mode
                           (default: all; redis and s3 install and start their
                           own servers; layered: the overhead of the tracing and
                           metrics layers, and compression, against the
                           unwrapped backend); each bench's table, then
                           target/bench/results.json (a record per measure, with
                           its target and verdict), target/bench/ratios.svg and
                           one summary table; --check: exit non-zero when a
                           measure misses its target; --collect-only: measure
                           nothing, gather the last runs' results
  chaos --backend NAME|all [--seconds N] [--seed S] [--broken[=fence|seal|lose]]
                           engine processes over one store under faults drawn
                           from the seed (kills, pauses, server restarts, a
                           fault proxy), then a check of the recorded history;
                           one summary line per backend, non-zero exit on any
                           violation (backends: redb, redis, redis-cluster, s3;
                           default 60 s and a random seed, printed)
  soak --backend NAME|all [--cycles N] [--vnodes V] [--bytes B] [--raise-every K]
                           the growth soak: N checkpoint cycles (write every
                           vnode, gate, prune keeping 2) on one store, its
                           footprint (file size, keys and memory, objects) and
                           cycle latency sampled 20 times; non-zero exit if the
                           footprint grows after the warm-up (default 10000
                           cycles; backends as for chaos)
  release <patch|minor|major|X.Y.Z> [--registry NAME] [--execute] [--no-tests]
                           dry run unless --execute: refuse a dirty tree, lint,
                           test, bump the version and the internal pins, move
                           CHANGELOG's Unreleased section, semver checks,
                           commit, cargo package (verified), cargo publish each
                           crate in dependency order, tag vX.Y.Z (not pushed);
                           also --no-lints, --no-verify
  roundtrip                the release against a registry on a loopback port
                           (xtask/registry.py), in a scratch copy of the tree,
                           then fresh projects using the crates from it (also
                           the last step of `test`)
  ci                       what .ci/run does: lint, test (the matrix included),
                           chaos --backend all --seconds 30 --seed 5,
                           soak --backend all --cycles 200

backends: memory, redb, redis, s3, layered
";

/// The `cargo xtask` steps of `ci`, in order: exactly what `.ci/run` runs
/// (the tidy test checks it).
pub(crate) const CI_STEPS: &[&str] = &[
    "lint",
    // The conformance matrix of every backend is part of `test`.
    "test",
    // Bounded, with a fixed seed so the fault schedule is the same every
    // run; long runs with fresh seeds are `chaos --backend all --seconds
    // 1200` (see chaos/README.md).
    "chaos --backend all --seconds 30 --seed 5",
    // Bounded too; the long soaks are `soak --backend all` (10,000 cycles).
    "soak --backend all --cycles 200",
];

/// The backends xtask knows: name, package, whether it needs a server.
pub(crate) const BACKENDS: &[Backend] = &[
    Backend {
        name: "memory",
        package: "laminar-state-memory",
        embedded: true,
        layers: false,
    },
    Backend {
        name: "redb",
        package: "laminar-state-redb",
        embedded: true,
        layers: false,
    },
    Backend {
        name: "redis",
        package: "laminar-state-redis",
        embedded: false,
        layers: false,
    },
    Backend {
        name: "s3",
        package: "laminar-state-s3",
        embedded: false,
        layers: false,
    },
    Backend {
        name: "layered",
        package: "laminar-state-layers",
        embedded: true,
        layers: true,
    },
];

/// One backend crate.
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    pub(crate) package: &'static str,
    pub(crate) embedded: bool,
    /// Not a backend: memory and redb wrapped in laminar-state-layers. Run
    /// when named, or with `all`; not part of `embedded`.
    pub(crate) layers: bool,
}

/// The backends a `--backend` value selects.
pub(crate) fn select(choice: &str) -> Result<Vec<&'static Backend>, String> {
    match choice {
        "all" => Ok(BACKENDS.iter().collect()),
        "embedded" => Ok(BACKENDS
            .iter()
            .filter(|b| b.embedded && !b.layers)
            .collect()),
        name => BACKENDS
            .iter()
            .find(|b| b.name == name)
            .map(|b| vec![b])
            .ok_or_else(|| {
                let known: Vec<&str> = BACKENDS.iter().map(|b| b.name).collect();
                format!(
                    "unknown backend {name:?}; known: {}, embedded, all",
                    known.join(", ")
                )
            }),
    }
}

/// The value of `--backend`, or `default`.
fn backend_arg(args: &[String], default: &str) -> Result<String, String> {
    match args {
        [] => Ok(default.to_owned()),
        [flag, value] if flag == "--backend" => Ok(value.clone()),
        [flag] if flag.starts_with("--backend=") => Ok(flag["--backend=".len()..].to_owned()),
        other => Err(format!("unexpected arguments {other:?}\n\n{HELP}")),
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.split_first() {
        None => {
            print!("{HELP}");
            Ok(())
        }
        Some((command, rest)) => match command.as_str() {
            "test" if rest.is_empty() => cargo::test().and_then(|()| roundtrip::run_roundtrip()),
            "roundtrip" if rest.is_empty() => roundtrip::run_roundtrip(),
            "release" => release::run_release(rest),
            "lint" if rest.is_empty() => cargo::lint(),
            "ci" if rest.is_empty() => ci(),
            "conformance" => conformance::run(&select(&backend_arg(rest, "embedded")?)?),
            "bench" => {
                let (options, rest) = bench::Options::parse(rest);
                bench::run(&select(&backend_arg(&rest, "all")?)?, options)
            }
            "chaos" => chaos::run("run", rest),
            "soak" => chaos::run("soak", rest),
            "help" | "--help" | "-h" => {
                print!("{HELP}");
                Ok(())
            }
            other => Err(format!("unknown command {other:?}\n\n{HELP}")),
        },
    }
}

/// What `.ci/run` does: every step of [`CI_STEPS`], in order.
fn ci() -> Result<(), String> {
    for step in CI_STEPS {
        let args: Vec<String> = step.split_whitespace().map(str::to_owned).collect();
        eprintln!("xtask: ci: {step}");
        run(&args)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
