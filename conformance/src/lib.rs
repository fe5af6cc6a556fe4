#![doc = include_str!("../README.md")]
//!
//! # Where to start
//!
//! Implement [`BackendFactory`] (fresh isolated stores) and [`TestStore`]
//! (handles on one store), then run the properties with
//! [`conformance_main!`] and the [`harness`] (or [`Harness`] by hand), with
//! [`conformance_tests!`], or, from another harness, with [`run_all`], which
//! returns a [`Report`], or the functions of [`properties`] one by one.
//! [`faults`] holds the faulty wrappers. [`Wrapped`] runs the suite on any
//! factory's stores through middleware of yours (a [`Wrapper`]).
//!
//! # Knobs
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PROPTEST_CASES` | 64 | cases per proptest property (a factory may lower it) |
//! | `LAMINAR_CONFORMANCE_ROUNDS` | 32 | rounds per race (P7, P9, P11, P15) |
//! | `LAMINAR_CONFORMANCE_KILLS` | 8 | child processes killed by the crash property |
//! | `LAMINAR_CONFORMANCE_SEED` | random | hex seed, printed on failure, to replay one |
//! | `LAMINAR_CONFORMANCE_TIMEOUT_SECS` | 900 | per-property time limit |

mod factory;
pub mod faults;
pub mod harness;
mod model;
pub mod properties;
mod runner;
mod support;
mod wrapped;

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

pub use factory::{BackendFactory, Capabilities, Capability, Damage, TestStore};
pub use harness::Harness;
pub use properties::{ChildCommand, PROPERTIES, Property};
pub use runner::{DEFAULT_CASES, DEFAULT_KILLS, DEFAULT_RACE_ROUNDS};
pub use wrapped::{Wrapped, Wrapper};

/// How one property went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// The backend does not claim a capability the property needs.
    NotApplicable {
        /// The first missing capability.
        missing: Capability,
    },
    /// A check failed; the reason says what was expected and what happened,
    /// and for proptest properties the minimal input and seed.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// One property's result in a [`Report`].
#[derive(Debug, Clone)]
pub struct PropertyReport {
    /// The property.
    pub property: &'static Property,
    /// How it went.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// The results of [`run_all`] for one backend.
#[derive(Debug, Clone)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// One entry per property, in contract order.
    pub properties: Vec<PropertyReport>,
}

impl Report {
    /// Whether no property failed.
    pub fn passed(&self) -> bool {
        !self
            .properties
            .iter()
            .any(|p| matches!(p.outcome, Outcome::Failed { .. }))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of {}:", self.backend)?;
        for p in &self.properties {
            let verdict = match &p.outcome {
                Outcome::Passed => "pass".to_owned(),
                Outcome::NotApplicable { missing } => {
                    format!("not applicable (needs {})", missing.name())
                }
                Outcome::Failed { .. } => "FAIL".to_owned(),
            };
            writeln!(
                f,
                "  {:<4} {:<24} {:<32} {:>8.2}s",
                p.property.id,
                p.property.name,
                verdict,
                p.elapsed.as_secs_f64()
            )?;
        }
        for p in &self.properties {
            if let Outcome::Failed { reason } = &p.outcome {
                writeln!(
                    f,
                    "\n{} {} failed:\n{reason}",
                    p.property.id, p.property.name
                )?;
            }
        }
        Ok(())
    }
}

fn property_timeout() -> Duration {
    Duration::from_secs(u64::from(runner::env_u32(
        "LAMINAR_CONFORMANCE_TIMEOUT_SECS",
        900,
    )))
}

/// Check one property against `factory`: not applicable if a needed
/// capability is missing, else run it within the time limit.
///
/// In a crash property's child process (see [`ChildCommand`]) this runs the
/// child writer instead and never returns.
pub async fn check(
    property: &'static Property,
    factory: &dyn BackendFactory,
    child: &ChildCommand,
) -> PropertyReport {
    properties::run_child_if_requested(factory).await;
    let started = Instant::now();
    let capabilities = factory.capabilities();
    let outcome = if let Some(&missing) = property.needs.iter().find(|&&c| !capabilities.has(c)) {
        Outcome::NotApplicable { missing }
    } else {
        match tokio::time::timeout(
            property_timeout(),
            properties::run(property, factory, child),
        )
        .await
        {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(reason)) => Outcome::Failed { reason },
            Err(_) => Outcome::Failed {
                reason: format!("did not finish within {:?}", property_timeout()),
            },
        }
    };
    PropertyReport {
        property,
        outcome,
        elapsed: started.elapsed(),
    }
}

/// [`check`] of the property named `property` on a runtime of its own (four
/// worker threads), for a plain `#[test]`; the outcome. Panics if no
/// property has that name.
pub fn check_blocking(
    property: &str,
    factory: &dyn BackendFactory,
    child: &ChildCommand,
) -> Outcome {
    let property = properties::property(property)
        .unwrap_or_else(|| panic!("{property:?} is not the name of a property"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(check(property, factory, child)).outcome
}

/// Teeth: panic unless `outcome`, of `property` on a backend with a
/// deliberate `flaw`, is a failure, i.e. the property caught the flaw.
/// With [`check_blocking`], the test that keeps a property from going
/// blind as it or the backend changes (pair it with a passing run on the
/// backend without the flaw, so the failure is the flaw's).
pub fn assert_caught(property: &str, flaw: &dyn fmt::Debug, outcome: Outcome) {
    match outcome {
        Outcome::Failed { reason } => eprintln!(
            "{property} caught {flaw:?}: {}",
            reason.lines().next().unwrap_or("")
        ),
        other => panic!("{property} did not catch {flaw:?}: {other:?}"),
    }
}

/// Check every property against `factory`, in order.
///
/// The crash property re-executes the current binary with `child`'s
/// arguments, which must lead back here (or to the crash property) with the
/// same factory: [`ChildCommand::same_args`] does for a program that calls
/// `run_all` from `main`. In that child, this function runs the child writer
/// and never returns.
pub async fn run_all(factory: &dyn BackendFactory, child: &ChildCommand) -> Report {
    properties::run_child_if_requested(factory).await;
    let mut report = Report {
        backend: factory.name(),
        properties: Vec::with_capacity(PROPERTIES.len()),
    };
    if std::env::var_os(properties::CHILD_ENV).is_some() {
        // A crash child for another backend's factory: run nothing here.
        return report;
    }
    for property in PROPERTIES {
        report
            .properties
            .push(check(property, factory, child).await);
    }
    report
}

/// The body of each test the [`conformance_tests!`] macro generates:
/// check the property named `name`, given the properties expected to fail.
#[doc(hidden)]
pub fn __run_libtest(
    module_path: &str,
    name: &str,
    factory: &dyn BackendFactory,
    expected_failures: &[&str],
) {
    let property = properties::property(name)
        .unwrap_or_else(|| panic!("the conformance macro names an unknown property {name}"));
    for listed in expected_failures {
        assert!(
            properties::property(listed).is_some(),
            "expect_failure names {listed:?}, which is not a property"
        );
    }
    // libtest names a test by its path without the crate's name.
    let test_path = match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_owned(),
    };
    let child = ChildCommand::libtest(&test_path);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance test");
    let report = runtime.block_on(check(property, factory, &child));
    let expected = expected_failures.contains(&name);
    match harness::verdict(property, &factory.name(), report.outcome, expected) {
        harness::Verdict::Passed => {}
        harness::Verdict::NotApplicable(_) => {
            // Straight to the process's stderr, past libtest's capture, so
            // the line shows in every run.
            let missing = property
                .needs
                .iter()
                .find(|&&c| !factory.capabilities().has(c))
                .map_or("?", |c| c.name());
            let _ = writeln!(
                std::io::stderr().lock(),
                "NOT APPLICABLE: {} {} on {}: the backend does not claim `{missing}`",
                property.id,
                property.name,
                factory.name(),
            );
        }
        harness::Verdict::ExpectedFailure(reason) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "EXPECTED FAILURE: {} {} on {} failed, as listed in expect_failure: {}",
                property.id,
                property.name,
                factory.name(),
                reason.lines().next().unwrap_or("")
            );
        }
        harness::Verdict::Failed(reason) | harness::Verdict::UnexpectedPass(reason) => {
            panic!("{reason}")
        }
    }
}

/// Expand to one `#[test]` per property, in a module named `$module`, each
/// running against the factory `$factory` (an expression, evaluated per
/// test). Optionally, `expect_failure = [...]` lists properties (by name)
/// expected to fail on this backend: each of those passes if it fails
/// (printing `EXPECTED FAILURE: ...`) and fails if it passes.
///
/// ```text
/// laminar_state_conformance::conformance_tests!(memory, MemoryFactory::default());
/// laminar_state_conformance::conformance_tests!(mine, MyFactory, expect_failure = [p09_one_committer]);
/// ```
///
/// A property whose capability the backend does not claim passes here (libtest
/// cannot skip at run time), printing `NOT APPLICABLE: ...` on stderr; the
/// [`conformance_main!`] harness reports it ignored instead.
#[macro_export]
macro_rules! conformance_tests {
    ($module:ident, $factory:expr $(, expect_failure = [$($expected:ident),* $(,)?])? $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            /// The properties expected to fail on this backend.
            const __EXPECTED_FAILURES: &[&str] = &[$($(stringify!($expected)),*)?];
            // A misspelt name does not compile.
            #[allow(dead_code)]
            fn __expected_failures_are_properties() {
                $($(let _ = $crate::properties::$expected;)*)?
            }
            $crate::__with_properties!($crate::__conformance_tests; $factory);
        }
    };
}

/// One `#[test]` per property of the list (see `__with_properties!`).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($factory:expr; $(($id:ident, $name:ident, $kind:ident, [$($need:ident),*], $summary:literal),)*) => {
        $(
            #[test]
            fn $name() {
                $crate::__run_libtest(module_path!(), stringify!($name), &$factory, __EXPECTED_FAILURES);
            }
        )*
    };
}

/// Expand to the `main` of a `harness = false` test that runs every
/// property against `$factory` as a trial named `$name::<property>` (see
/// [`harness`]): properties that do not apply are ignored with their
/// reason, each property's time is printed, and `expect_failure = [...]`
/// lists properties (by name) expected to fail, as [`Harness::expect_failure`].
///
/// ```text
/// // tests/harness.rs, with [[test]] name = "harness" harness = false
/// laminar_state_conformance::conformance_main!(mine, MyFactory);
/// laminar_state_conformance::conformance_main!(mine, MyFactory, expect_failure = [p09_one_committer]);
/// ```
#[macro_export]
macro_rules! conformance_main {
    ($name:ident, $factory:expr $(, expect_failure = [$($expected:ident),* $(,)?])? $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            // A misspelt name does not compile.
            $($(let _ = $crate::properties::$expected;)*)?
            $crate::Harness::new(stringify!($name), $factory)
                $($(.expect_failure(stringify!($expected)))*)?
                .main()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_property_is_named_once_and_found_by_name() {
        let mut names: Vec<&str> = PROPERTIES.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PROPERTIES.len(), "a property is listed twice");
        for property in PROPERTIES {
            assert_eq!(properties::property(property.name), Some(property));
            let number: u32 = property.id[1..].parse().expect("ids are P<number>");
            assert!(
                (1..=16).contains(&number),
                "{} is outside P1-P16",
                property.id
            );
            assert!(
                property.name.starts_with(&format!("p{number:02}_")),
                "{} does not start with its id {}",
                property.name,
                property.id
            );
        }
    }
}
