//! `laminar-state-chaos`: `run` a chaos run, `check` a finished run's
//! history again, or (internally) be one `worker` engine process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use laminar_state_chaos::broken::Breakage;
use laminar_state_chaos::run::{self, Backend, Options};
use laminar_state_chaos::soak::{self, SoakOptions};
use laminar_state_chaos::worker::{self, WorkerArgs};

const HELP: &str = "\
laminar-state-chaos run --backend redb|redis|redis-cluster|s3 [--seconds N] [--seed S]
                        [--broken[=fence|seal|lose]] [--dir DIR]
    engine processes over one store under faults drawn from the seed, then a
    check of their history; one summary line; exit 1 on any violation
    (default: 60 s, a random seed, DIR = target/chaos/BACKEND-SEED)
laminar-state-chaos check DIR [--all]
    check the history of a finished run again (--all: every violation)
laminar-state-chaos soak --backend redb|redis|redis-cluster|s3 [--cycles N]
                         [--vnodes V] [--bytes B] [--raise-every K] [--dir DIR]
    N checkpoint cycles (V partials of B bytes written concurrently, the
    gate, a prune keeping 2; a fence raise every K cycles, 0: never) on one
    store, its footprint and latency sampled 20 times; exit 1 if the
    footprint grows after the warm-up (default: 10000 cycles, 16 vnodes,
    4096 bytes, K = 0, DIR = target/soak/BACKEND)
";

fn default_dir(backend: Backend, seed: u64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/chaos")
        .join(format!("{}-{seed}", backend.name()))
}

/// One command-line flag: `--name value` or `--name=value`.
struct Flag<'a> {
    name: &'a str,
    /// `None` only for a flag that may stand alone (see [`flags`]).
    value: Option<&'a str>,
}

impl Flag<'_> {
    fn text(&self) -> Result<&str, String> {
        self.value
            .ok_or_else(|| format!("{} wants a value\n\n{HELP}", self.name))
    }

    fn number(&self) -> Result<u64, String> {
        let value = self.text()?;
        value
            .parse::<u64>()
            .map_err(|_| format!("{} wants a number, got {value:?}", self.name))
    }
}

/// The flags of `args`. A flag named in `alone` takes a value only as
/// `--name=value`, so it never swallows the next argument; every other
/// flag wants one.
fn flags<'a>(args: &'a [String], alone: &[&str]) -> Result<Vec<Flag<'a>>, String> {
    let mut out = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let flag = match arg.split_once('=') {
            Some((name, value)) => Flag {
                name,
                value: Some(value),
            },
            None if alone.contains(&arg.as_str()) => Flag {
                name: arg,
                value: None,
            },
            None => Flag {
                name: arg,
                value: Some(
                    args.next()
                        .ok_or_else(|| format!("{arg} wants a value\n\n{HELP}"))?,
                ),
            },
        };
        out.push(flag);
    }
    Ok(out)
}

fn parse_run(args: &[String]) -> Result<Options, String> {
    let mut backend = None;
    let mut seconds = 60;
    let mut seed = None;
    let mut broken = None;
    let mut dir = None;
    for flag in flags(args, &["--broken"])? {
        match flag.name {
            "--broken" => {
                broken = Some(Breakage::parse(flag.value.unwrap_or("fence"))?);
            }
            "--backend" => backend = Some(Backend::parse(flag.text()?)?),
            "--seconds" => seconds = flag.number()?.max(3),
            "--seed" => seed = Some(flag.number()?),
            "--dir" => dir = Some(PathBuf::from(flag.text()?)),
            other => return Err(format!("unknown argument {other}\n\n{HELP}")),
        }
    }
    let backend = backend.ok_or_else(|| format!("--backend is required\n\n{HELP}"))?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
    });
    Ok(Options {
        backend,
        seconds,
        seed,
        broken,
        dir: dir.unwrap_or_else(|| default_dir(backend, seed)),
        verbose: true,
    })
}

fn parse_soak(args: &[String]) -> Result<SoakOptions, String> {
    let mut options = SoakOptions {
        backend: Backend::Redb,
        cycles: 10_000,
        vnodes: 16,
        bytes: 4096,
        raise_every: 0,
        dir: PathBuf::new(),
    };
    let mut backend = None;
    let mut dir = None;
    for flag in flags(args, &[])? {
        match flag.name {
            "--backend" => backend = Some(Backend::parse(flag.text()?)?),
            "--cycles" => options.cycles = flag.number()?.max(1),
            "--vnodes" => {
                options.vnodes = u32::try_from(flag.number()?.clamp(1, 65_536)).unwrap_or(16);
            }
            "--bytes" => options.bytes = usize::try_from(flag.number()?).unwrap_or(4096),
            "--raise-every" => options.raise_every = flag.number()?,
            "--dir" => dir = Some(PathBuf::from(flag.text()?)),
            other => return Err(format!("unknown argument {other}\n\n{HELP}")),
        }
    }
    options.backend = backend.ok_or_else(|| format!("--backend is required\n\n{HELP}"))?;
    options.dir = dir.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/soak")
            .join(options.backend.name())
    });
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) if command == "worker" => WorkerArgs::parse(rest)
            .and_then(worker::main)
            .map(|()| true),
        Some((command, rest)) if command == "run" => parse_run(rest).and_then(|options| {
            let outcome = run::run(&options)?;
            println!("{}", outcome.summary);
            if let Some(first) = outcome.report.describe_first(&outcome.history) {
                println!("violations by kind: {}", outcome.report.by_kind());
                print!("{first}");
            }
            if let Err(useless) = outcome.useful() {
                println!("{useless}");
            }
            println!(
                "history: {} (replay the faults: --seed {})",
                options.dir.join("history").display(),
                options.seed
            );
            Ok(outcome.passed())
        }),
        Some((command, rest)) if command == "soak" => parse_soak(rest).and_then(|options| {
            let report = soak::soak(&options)?;
            println!("{}", report.summary());
            println!("samples: {}", options.dir.join("soak.json").display());
            Ok(report.growth.is_none())
        }),
        Some((command, [dir, more @ ..])) if command == "check" && more.len() <= 1 => {
            let all = more.first().is_some_and(|a| a == "--all");
            run::check_dir(Path::new(dir)).map(|(report, history)| {
                println!(
                    "operations={} violations={}",
                    report.stats.operations,
                    report.violations.len()
                );
                if let Some(first) = report.describe_first(&history) {
                    println!("violations by kind: {}", report.by_kind());
                    print!("{first}");
                }
                if all {
                    for index in 1..report.violations.len() {
                        print!("{}", report.describe(&history, index).unwrap_or_default());
                    }
                }
                report.violations.is_empty()
            })
        }
        _ => {
            print!("{HELP}");
            Ok(args.is_empty() || args[0] == "--help")
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("laminar-state-chaos: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_bare_broken_flag_keeps_the_next_argument() {
        let options = parse_run(&args("--broken --backend redb --seconds=7 --seed 9")).unwrap();
        assert_eq!(options.broken, Some(Breakage::Fence));
        assert_eq!((options.seconds, options.seed), (7, 9));
        let options = parse_run(&args("--backend redb --broken=seal --seed 1")).unwrap();
        assert_eq!(options.broken, Some(Breakage::Seal));
    }

    #[test]
    fn bad_flags_are_named() {
        let missing = parse_run(&args("--backend")).err().unwrap();
        assert!(missing.starts_with("--backend wants a value"), "{missing}");
        let word = parse_soak(&args("--backend redb --cycles many"))
            .err()
            .unwrap();
        assert!(
            word.starts_with("--cycles wants a number, got \"many\""),
            "{word}"
        );
        let unknown = parse_soak(&args("--backend redb --speed 3")).err().unwrap();
        assert!(unknown.starts_with("unknown argument --speed"), "{unknown}");
        let options = parse_soak(&args("--backend=redb --cycles 5 --vnodes=0")).unwrap();
        assert_eq!((options.cycles, options.vnodes), (5, 1));
    }
}
