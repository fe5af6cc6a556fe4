//! Progress: an indicatif bar (partials, bytes, bytes/s, ETA) when stderr
//! is a terminal, plain lines at most once a second otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::human_bytes;

/// The progress of one command over a known number of items (partials, or
/// checkpoints for `bench`).
pub(crate) struct Progress {
    what: &'static str,
    unit: &'static str,
    total: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    state: Mutex<State>,
}

struct State {
    done: u64,
    bytes: u64,
    last_line: Instant,
}

impl Progress {
    /// Progress of `what` over `total` items named `unit`.
    pub(crate) fn new(what: &'static str, unit: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar.set_message(unit);
            bar
        });
        let now = Instant::now();
        Self {
            what,
            unit,
            total,
            started: now,
            bar,
            state: Mutex::new(State {
                done: 0,
                bytes: 0,
                last_line: now,
            }),
        }
    }

    /// One more item done, of `bytes` bytes.
    pub(crate) fn inc(&self, bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done += 1;
        state.bytes += bytes;
        let rate = self.rate(state.bytes);
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!(
                    "{} · {} · {}/s",
                    self.unit,
                    human_bytes(state.bytes),
                    human_bytes(rate)
                ));
                bar.inc(1);
            }
            None => {
                if state.last_line.elapsed() >= Duration::from_secs(1) {
                    state.last_line = Instant::now();
                    eprintln!(
                        "{}: {}/{} {}, {}, {}/s",
                        self.what,
                        state.done,
                        self.total,
                        self.unit,
                        human_bytes(state.bytes),
                        human_bytes(rate)
                    );
                }
            }
        }
    }

    /// A line for the operator, above the bar or on its own.
    pub(crate) fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{}: {line}", self.what),
        }
    }

    /// The end: the bar is cleared, a plain summary line printed.
    pub(crate) fn finish(&self) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}: {}/{} {}, {} in {:.1}s ({}/s)",
            self.what,
            state.done,
            self.total,
            self.unit,
            human_bytes(state.bytes),
            self.started.elapsed().as_secs_f64(),
            human_bytes(self.rate(state.bytes))
        );
    }

    fn rate(&self, bytes: u64) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            (bytes as f64 / secs) as u64
        } else {
            0
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}
