//! A `harness = false` entry point, built on `libtest-mimic`: every property
//! a trial, named `<name>::<property>` as [`conformance_tests!`] names its
//! tests, with what libtest cannot do for a property decided at run time:
//!
//! - a property that does not apply to the backend's capabilities is
//!   **ignored**, not passed, and its reason (the missing capability) is
//!   printed: on its trial's line when it is run explicitly (`--ignored`,
//!   `--include-ignored`), and in the table after the run;
//! - a property may be marked an **expected failure** while the backend is
//!   being built ([`Harness::expect_failure`]): if it fails, its trial is
//!   reported ignored with `expected failure: <why>` and the run does not
//!   fail; if it passes, the trial fails ("now passes: remove it from the
//!   expected failures"), like a strict xfail;
//! - each property's time is printed in the table after the run.
//!
//! It takes libtest's usual arguments (a filter, `--exact`, `--skip`,
//! `--list`, `--ignored`, `--include-ignored`, `--test-threads`, ...), so it
//! works under `cargo test` and `cargo nextest run`. In `tests/harness.rs`,
//! with `[[test]] name = "harness" harness = false` in `Cargo.toml`:
//!
//! ```text
//! laminar_state_conformance::conformance_main!(mine, MyFactory, expect_failure = [p09_one_committer]);
//! ```
//!
//! or, by hand, several backends in one binary:
//!
//! ```text
//! fn main() -> std::process::ExitCode {
//!     laminar_state_conformance::Harness::new("mine", MyFactory)
//!         .expect_failure("p09_one_committer")
//!         .main()
//! }
//! ```
//!
//! [`conformance_tests!`]: crate::conformance_tests

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Failed, FormatSetting, Trial};

use crate::factory::BackendFactory;
use crate::properties::{self, ChildCommand, PROPERTIES, Property};
use crate::{Outcome, check};

/// One backend's trials: a name (the trials' prefix), its factory, and the
/// properties expected to fail on it.
pub struct Harness {
    name: String,
    factory: Arc<dyn BackendFactory>,
    expected_failures: Vec<&'static Property>,
}

/// How one trial went, as the table after the run and [`HarnessRun`] show
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held.
    Passed,
    /// A check failed; the reason says what was expected and what happened.
    Failed(String),
    /// Listed as an expected failure, and failed: the run does not fail.
    ExpectedFailure(String),
    /// Listed as an expected failure, but passed (or does not apply): the
    /// run fails until it is taken off the list.
    UnexpectedPass(String),
    /// The backend does not claim a capability the property needs; the
    /// string names it.
    NotApplicable(String),
}

impl Verdict {
    /// Whether this verdict fails the run.
    pub fn fails_run(&self) -> bool {
        matches!(self, Verdict::Failed(_) | Verdict::UnexpectedPass(_))
    }

    fn label(&self) -> String {
        match self {
            Verdict::Passed => "pass".into(),
            Verdict::Failed(_) => "FAIL".into(),
            Verdict::ExpectedFailure(_) => "expected failure".into(),
            Verdict::UnexpectedPass(_) => "FAIL (expected to fail)".into(),
            Verdict::NotApplicable(reason) => format!("ignored: {reason}"),
        }
    }
}

/// One trial of a [`HarnessRun`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialReport {
    /// The trial's name, `<harness name>::<property name>`.
    pub trial: String,
    /// The property.
    pub property: &'static Property,
    /// How it went.
    pub verdict: Verdict,
    /// How long it ran (zero if it did not run).
    pub elapsed: Duration,
}

/// What a run of the harness did: libtest's counts, and one report per
/// trial that was not filtered out, in contract order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HarnessRun {
    /// Trials that passed.
    pub passed: u64,
    /// Trials that failed, an expected failure that passed included.
    pub failed: u64,
    /// Trials ignored: not applicable, or an expected failure that failed.
    pub ignored: u64,
    /// Trials left out by a filter.
    pub filtered_out: u64,
    /// Per trial, in contract order (empty with `--list`).
    pub trials: Vec<TrialReport>,
}

impl HarnessRun {
    /// Whether the run failed.
    pub fn has_failed(&self) -> bool {
        self.failed > 0
    }

    /// The report of the trial for `property` (by name), of the first
    /// harness that ran it.
    pub fn trial(&self, property: &str) -> Option<&TrialReport> {
        self.trials.iter().find(|t| t.property.name == property)
    }
}

impl Harness {
    /// The trials of `factory`'s backend, named `<name>::<property>`.
    /// `name` is a path segment (letters, digits, `_`), distinct per
    /// harness in one binary.
    pub fn new(name: impl Into<String>, factory: impl BackendFactory) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a harness name is letters, digits and `_`, not {name:?}"
        );
        Self {
            name,
            factory: Arc::new(factory),
            expected_failures: Vec::new(),
        }
    }

    /// Mark the property named `property` (e.g. `"p09_one_committer"`) as
    /// expected to fail on this backend, while the backend is being built.
    /// If it fails, the run reports it and does not fail; if it passes, the
    /// run fails until it is taken off the list.
    ///
    /// # Panics
    ///
    /// If no property has that name.
    pub fn expect_failure(mut self, property: &str) -> Self {
        let found = properties::property(property).unwrap_or_else(|| {
            panic!(
                "expect_failure names {property:?}, which is not a property; the properties are: {}",
                property_names()
            )
        });
        if !self.expected_failures.contains(&found) {
            self.expected_failures.push(found);
        }
        self
    }

    /// Run with the process's arguments and exit code, printing as libtest
    /// does: the body of a `harness = false` test's `main`.
    pub fn main(self) -> ExitCode {
        main_all(vec![self])
    }

    /// Run with `args` (the first is the program's name, as in
    /// `std::env::args`), printing as libtest does, and return what
    /// happened. For a harness's own tests; `main` is the entry point.
    pub fn run_with_args<I>(self, args: I) -> HarnessRun
    where
        I: IntoIterator,
        I::Item: Into<OsString> + Clone,
    {
        run_all_with_args(vec![self], args)
    }

    fn is_expected_failure(&self, property: &Property) -> bool {
        self.expected_failures
            .iter()
            .any(|p| p.name == property.name)
    }
}

fn property_names() -> String {
    PROPERTIES
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run several backends' harnesses in one binary, with the process's
/// arguments: the body of a `harness = false` test's `main`.
pub fn main_all(harnesses: Vec<Harness>) -> ExitCode {
    let run = run_all_with_args(harnesses, std::env::args_os());
    if run.has_failed() {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}

/// Run several backends' harnesses with `args` (the first is the program's
/// name) and return what happened.
pub fn run_all_with_args<I>(harnesses: Vec<Harness>, args: I) -> HarnessRun
where
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    become_crash_child_if_requested(&harnesses);
    for (i, harness) in harnesses.iter().enumerate() {
        assert!(
            harnesses[..i].iter().all(|h| h.name != harness.name),
            "two harnesses are named {:?}: give each backend its own name",
            harness.name
        );
    }
    let args = Arguments::from_iter(args);
    let results: Arc<Mutex<BTreeMap<String, (Verdict, Duration)>>> = Arc::default();
    let mut trials = Vec::new();
    // (trial name, property, verdict if it will not run) in contract order.
    let mut order = Vec::new();
    for harness in &harnesses {
        let capabilities = harness.factory.capabilities();
        for property in PROPERTIES {
            let trial_name = format!("{}::{}", harness.name, property.name);
            let missing = property
                .needs
                .iter()
                .find(|&&c| !capabilities.has(c))
                .copied();
            let expected = harness.is_expected_failure(property);
            // A stale expected failure must run (and fail the run), so it is
            // never ignored up front.
            let ignored = missing.is_some() && !expected;
            let runner = {
                let factory = Arc::clone(&harness.factory);
                let results = Arc::clone(&results);
                let trial_name = trial_name.clone();
                move || run_trial(&trial_name, property, &*factory, expected, &results)
            };
            let trial =
                Trial::ignorable_test(trial_name.clone(), runner).with_ignored_flag(ignored);
            if !args.is_filtered_out(&trial) {
                let not_run = (ignored && !args.ignored && !args.include_ignored).then(|| {
                    Verdict::NotApplicable(not_applicable(missing.expect("ignored means missing")))
                });
                order.push((trial_name, property, not_run));
            }
            trials.push(trial);
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    let mut run = HarnessRun {
        passed: conclusion.num_passed,
        failed: conclusion.num_failed,
        ignored: conclusion.num_ignored,
        filtered_out: conclusion.num_filtered_out,
        trials: Vec::new(),
    };
    if args.list {
        return run;
    }
    let results = results.lock().unwrap_or_else(PoisonError::into_inner);
    for (trial, property, not_run) in order {
        let (verdict, elapsed) = match (results.get(&trial), not_run) {
            (Some((verdict, elapsed)), _) => (verdict.clone(), *elapsed),
            (None, Some(verdict)) => (verdict, Duration::ZERO),
            // It panicked before recording, or did not run at all.
            (None, None) => continue,
        };
        run.trials.push(TrialReport {
            trial,
            property,
            verdict,
            elapsed,
        });
    }
    // The table would corrupt a machine-readable output.
    if !matches!(args.format, Some(FormatSetting::Json)) {
        print_table(&run);
    }
    run
}

/// The reason a property is ignored.
fn not_applicable(missing: crate::Capability) -> String {
    format!(
        "not applicable: the backend does not claim `{}`",
        missing.name()
    )
}

/// Run one trial: check the property, record its verdict and time, and
/// answer libtest-mimic.
fn run_trial(
    trial_name: &str,
    property: &'static Property,
    factory: &dyn BackendFactory,
    expected_failure: bool,
    results: &Mutex<BTreeMap<String, (Verdict, Duration)>>,
) -> Result<Completion, Failed> {
    let child = ChildCommand::libtest(trial_name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance trial");
    let report = runtime.block_on(check(property, factory, &child));
    let verdict = verdict(property, &factory.name(), report.outcome, expected_failure);
    results
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(trial_name.to_owned(), (verdict.clone(), report.elapsed));
    match verdict {
        Verdict::Passed => Ok(Completion::Completed),
        Verdict::NotApplicable(reason) => Ok(Completion::ignored_with(reason)),
        Verdict::ExpectedFailure(reason) => Ok(Completion::ignored_with(format!(
            "expected failure: {}",
            reason.lines().next().unwrap_or("")
        ))),
        Verdict::Failed(reason) | Verdict::UnexpectedPass(reason) => Err(reason.into()),
    }
}

/// The verdict on a property's outcome, given whether it is expected to
/// fail: shared by the harness and the conformance macro.
pub(crate) fn verdict(
    property: &Property,
    backend: &str,
    outcome: Outcome,
    expected_failure: bool,
) -> Verdict {
    match (outcome, expected_failure) {
        (Outcome::Passed, false) => Verdict::Passed,
        (Outcome::Failed { reason }, false) => Verdict::Failed(format!(
            "{} {} failed on {backend}:\n{reason}",
            property.id, property.name
        )),
        (Outcome::NotApplicable { missing }, false) => {
            Verdict::NotApplicable(not_applicable(missing))
        }
        (Outcome::Failed { reason }, true) => Verdict::ExpectedFailure(reason),
        (Outcome::Passed, true) => Verdict::UnexpectedPass(format!(
            "{} {} now passes on {backend}: remove it from the expected failures",
            property.id, property.name
        )),
        (Outcome::NotApplicable { missing }, true) => Verdict::UnexpectedPass(format!(
            "{} {} is listed as an expected failure on {backend}, but it does not apply (the backend does not claim `{}`): remove it from the expected failures",
            property.id,
            property.name,
            missing.name()
        )),
    }
}

/// The table after the run: every trial that was not filtered out, its
/// verdict (with the reason it was ignored) and its time.
fn print_table(run: &HarnessRun) {
    if run.trials.is_empty() {
        return;
    }
    let mut text = String::from("\nconformance, per property:\n");
    for trial in &run.trials {
        let time = if trial.elapsed.is_zero() {
            "-".to_owned()
        } else {
            format!("{:.2}s", trial.elapsed.as_secs_f64())
        };
        let _ = writeln!(
            text,
            "  {:<4} {:<44} {:>8}  {}",
            trial.property.id,
            trial.trial,
            time,
            trial.verdict.label()
        );
    }
    for trial in &run.trials {
        if let Verdict::ExpectedFailure(reason) = &trial.verdict {
            let _ = writeln!(text, "\n{} failed, as expected:\n{reason}", trial.trial);
        }
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// In a crash property's child process, run the child writer for the
/// harness whose backend it names, before libtest-mimic prints anything to
/// the stdout the parent reads.
fn become_crash_child_if_requested(harnesses: &[Harness]) {
    if std::env::var_os(properties::CHILD_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the crash child");
    for harness in harnesses {
        // Exits the process if the child is for this backend.
        runtime.block_on(properties::run_child_if_requested(&*harness.factory));
    }
}
