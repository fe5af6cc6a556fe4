//! A server process under a watchdog shell.
//!
//! The shell starts the server in the background, prints its pid, then
//! polls every 0.2 s: once the test process (or the server) is gone, it
//! kills the server with SIGKILL. A test process killed without running its
//! destructors (a test runner's time limit, a crash test's SIGKILL) so
//! leaves no server behind.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The watchdog: `$PROGRAM "$@"` in the background with its output in
/// `$LOG`, its pid on stdout, then a wait for it or `$WATCH` to end.
const WATCHDOG: &str = r#""$PROGRAM" "$@" >"$LOG" 2>&1 & s=$!; echo $s; while kill -0 "$WATCH" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.2; done; kill -9 $s 2>/dev/null; wait $s 2>/dev/null"#;

/// One server process, killed when this test process ends, or on
/// [`kill`](Self::kill) or drop, whichever comes first.
#[derive(Debug)]
pub struct Watched {
    pid: u32,
    watchdog: Option<Child>,
}

impl Watched {
    /// Start `program` with `args`, its stdout and stderr appended to
    /// `log`.
    pub fn start<I, S>(program: impl AsRef<OsStr>, args: I, log: &Path) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .args(args)
            .env("PROGRAM", program.as_ref())
            .env("LOG", log)
            .env("WATCH", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the server's pid");
        Self {
            pid: line.trim().parse().expect("a pid"),
            watchdog: Some(watchdog),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server still runs (a server that could not bind its
    /// port has exited).
    pub fn alive(&self) -> bool {
        self.watchdog.is_some()
            && Command::new("kill")
                .arg("-0")
                .arg(self.pid.to_string())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// SIGKILL the server (no shutdown, no final fsync) and reap the
    /// watchdog. Does nothing the second time.
    pub fn kill(&mut self) {
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        let _ = watchdog.wait();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_process_runs_until_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleeper = Watched::start("sleep", ["30"], &dir.path().join("log"));
        assert!(sleeper.pid() > 0 && sleeper.alive());
        sleeper.kill();
        assert!(!sleeper.alive());
        sleeper.kill();
    }
}
