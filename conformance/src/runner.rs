//! Drives proptest from async code: generates cases, runs each against the
//! backend, and on failure shrinks to a minimal input.
//!
//! proptest's own runner takes a synchronous closure, and a property here
//! awaits a backend, possibly on the same runtime that runs the property;
//! blocking on a runtime from inside it would panic. So the loop below is
//! proptest's own algorithm (`new_tree`, then `simplify`/`complicate`),
//! awaited.

use std::fmt::Debug;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::factory::BackendFactory;

/// Cases per property when `PROPTEST_CASES` is not set.
pub const DEFAULT_CASES: u32 = 64;

/// Rounds of each race (P7, P9, P11) when `LAMINAR_CONFORMANCE_ROUNDS` is
/// not set.
pub const DEFAULT_RACE_ROUNDS: u32 = 32;

/// Child processes killed per crash property when
/// `LAMINAR_CONFORMANCE_KILLS` is not set.
pub const DEFAULT_KILLS: u32 = 8;

const MAX_SHRINK_STEPS: u32 = 512;

/// A check's failure: what was expected and what happened.
pub(crate) type Checked = Result<(), String>;

/// Return `Err(message)` from the enclosing check unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// The number from environment variable `name`, or `default`.
pub(crate) fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(default)
}

/// Race rounds for this run, as `factory` takes them.
pub(crate) fn race_rounds(factory: &dyn BackendFactory) -> u32 {
    factory
        .race_rounds(env_u32("LAMINAR_CONFORMANCE_ROUNDS", DEFAULT_RACE_ROUNDS))
        .max(1)
}

/// A seed for this run: `LAMINAR_CONFORMANCE_SEED` if set, so a failure can
/// be replayed, else fresh.
pub(crate) fn run_seed() -> u64 {
    if let Some(seed) = std::env::var("LAMINAR_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
    {
        return seed;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(nanos ^ (u64::from(std::process::id()) << 32))
}

/// A small deterministic generator for the race schedules and payloads.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Run `check` on `cases` inputs drawn from `strategy`; on the first failure,
/// shrink and report the minimal input, its error and the seed.
pub(crate) async fn for_all<S, F, Fut>(
    factory: &dyn BackendFactory,
    strategy: S,
    mut check: F,
) -> Checked
where
    S: Strategy,
    S::Value: Debug,
    F: FnMut(S::Value) -> Fut,
    Fut: Future<Output = Checked>,
{
    let cases = factory
        .proptest_cases(env_u32("PROPTEST_CASES", DEFAULT_CASES))
        .max(1);
    let seed = run_seed();
    let mut seed_bytes = [0u8; 32];
    for (i, chunk) in seed_bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix64(seed.wrapping_add(i as u64)).to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            ..Config::default()
        },
        rng,
    );

    for case in 0..cases {
        let mut tree = strategy
            .new_tree(&mut runner)
            .map_err(|reason| format!("could not generate a case: {reason}"))?;
        let Err(first_error) = check(tree.current()).await else {
            continue;
        };
        let mut minimal = (format!("{:#?}", tree.current()), first_error);
        let mut steps = 0;
        if tree.simplify() {
            while steps < MAX_SHRINK_STEPS {
                steps += 1;
                match check(tree.current()).await {
                    Err(error) => {
                        minimal = (format!("{:#?}", tree.current()), error);
                        if !tree.simplify() {
                            break;
                        }
                    }
                    Ok(()) => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                }
            }
        }
        return Err(format!(
            "{}\n  minimal failing input (case {} of {cases}, shrunk in {steps} steps):\n{}\n  \
             replay with LAMINAR_CONFORMANCE_SEED={seed:x}",
            minimal.1,
            case + 1,
            minimal.0
        ));
    }
    Ok(())
}
