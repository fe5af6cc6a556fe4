//! `cargo xtask chaos`: Jepsen-style runs of the `laminar-state-chaos`
//! binary (see chaos/README.md), one per backend.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::cargo::cargo;

/// The backends the chaos binary knows, and whether each needs a server.
const CHAOS_BACKENDS: &[(&str, bool)] = &[
    ("redb", false),
    ("redis", true),
    ("redis-cluster", true),
    ("s3", true),
];

const USAGE: &str = "cargo xtask chaos|soak --backend redb|redis|redis-cluster|s3|all [options of laminar-state-chaos run|soak]";

/// `laminar-state-chaos <subcommand>` (`run`: a chaos run; `soak`: the
/// growth soak) with `args`, once per backend `--backend` names.
pub(crate) fn run(subcommand: &str, args: &[String]) -> Result<(), String> {
    let mut backend = None;
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--backend" {
            backend = Some(args.next().ok_or("--backend wants a value")?.clone());
        } else if let Some(value) = arg.strip_prefix("--backend=") {
            backend = Some(value.to_owned());
        } else {
            rest.push(arg.clone());
        }
    }
    let backend = backend.ok_or_else(|| format!("chaos: --backend is required: {USAGE}"))?;
    let chosen: Vec<(&str, bool)> = match backend.as_str() {
        "all" => CHAOS_BACKENDS.to_vec(),
        name => CHAOS_BACKENDS
            .iter()
            .copied()
            .filter(|(b, _)| *b == name)
            .collect(),
    };
    if chosen.is_empty() {
        return Err(format!(
            "chaos: unknown backend {backend:?}; known: redb, redis, redis-cluster, s3, all"
        ));
    }
    if chosen.iter().any(|(_, server)| *server) {
        crate::cargo::install()?;
    }
    let binary = build()?;
    let mut failed = Vec::new();
    for (name, _) in chosen {
        let mut command = Command::new(&binary);
        command.args([subcommand, "--backend", name]).args(&rest);
        eprintln!("$ {command:?}");
        let status = command
            .status()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if !status.success() {
            failed.push(format!("{name} ({status})"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{subcommand} failed on {}", failed.join(", ")))
    }
}

/// Build the chaos binary with the packages and features `cargo xtask
/// test` uses (so CI compiles nothing twice) and return its path.
fn build() -> Result<PathBuf, String> {
    let mut command = cargo();
    command.args([
        "test",
        "--workspace",
        "--all-features",
        "--test",
        "chaos",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let messages = crate::cargo::build_messages(command, "the chaos binary")?;
    chaos_binary(&messages).ok_or_else(|| "cargo named no laminar-state-chaos binary".to_owned())
}

/// The executable of the `laminar-state-chaos` bin target among cargo's
/// JSON messages.
fn chaos_binary(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == "laminar-state-chaos")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_binary_among_cargo_messages() {
        let messages = concat!(
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"laminar-state-chaos\",\"kind\":[\"lib\"]},\"executable\":null}\n",
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"chaos\",\"kind\":[\"test\"]},\"executable\":\"/t/deps/chaos-1\"}\n",
            "not json\n",
            "{\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"laminar-state-chaos\",\"kind\":[\"bin\"]},\"executable\":\"/t/debug/laminar-state-chaos\"}\n",
        );
        assert_eq!(
            chaos_binary(messages),
            Some(PathBuf::from("/t/debug/laminar-state-chaos"))
        );
        assert_eq!(chaos_binary(""), None);
    }
}
