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
use std::time::{Duration, Instant};

/// The watchdog: `$PROGRAM "$@"` in the background with its output in
/// `$LOG`, its pid on stdout, then a wait for it or `$WATCH` to end.
const WATCHDOG: &str = r#""$PROGRAM" "$@" >>"$LOG" 2>&1 & s=$!; echo $s; while kill -0 "$WATCH" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.2; done; kill -9 $s 2>/dev/null; wait $s 2>/dev/null"#;

/// One server process, killed when this test process ends, or on
/// [`kill`](Self::kill) or drop, whichever comes first.
#[derive(Debug)]
pub struct Watched {
    pid: u32,
    watchdog: Option<Child>,
}

impl Watched {
    /// Start `program` with `args`, its stdout and stderr appended to
    /// `log`; panics if it cannot.
    pub fn start<I, S>(program: impl AsRef<OsStr>, args: I, log: &Path) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::try_start(program, args, log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), with an error instead of a panic when the
    /// watchdog shell cannot run or gives no pid.
    pub fn try_start<I, S>(program: impl AsRef<OsStr>, args: I, log: &Path) -> Result<Self, String>
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
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let mut line = String::new();
        let read = BufReader::new(watchdog.stdout.take().expect("piped")).read_line(&mut line);
        match (read, line.trim().parse()) {
            (Ok(_), Ok(pid)) => Ok(Self {
                pid,
                watchdog: Some(watchdog),
            }),
            (read, _) => {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                Err(format!("no pid from the watchdog: {line:?} {read:?}"))
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server still runs (a server that could not bind its
    /// port has exited).
    pub fn alive(&self) -> bool {
        self.watchdog.is_some() && pid_alive(self.pid)
    }

    /// Poll `ready` every 50 ms until it holds while the server lives:
    /// true then, false if the server exits (another process took its
    /// port) or `timeout` passes first.
    pub fn wait_until_ready(&self, timeout: Duration, ready: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.alive() {
            if ready() {
                return self.alive();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL the server (no shutdown, no final fsync), reap the watchdog
    /// and wait (at most 5 s) until the server is gone, so its port and
    /// files are free for a restart. Does nothing the second time.
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
        // The server is the watchdog's child, reaped by it; make sure.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether a process `pid` exists (`kill -0`).
fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
