//! A second S3-compatible server: moto's (`moto_server`, PyPI's `moto`,
//! installed by `.ci/install`), on a free loopback port, in its own
//! directory, under a [`Watched`] shell and killed on drop.
//!
//! moto keeps its buckets in memory: a restart loses them, so a moto
//! server is never restarted under a store (a reopen leaves it up, as for
//! SeaweedFS). It honours `If-None-Match: *` and `If-Match` on `PutObject`
//! and `start-after` on `ListObjectsV2` (what the S3 backend needs); what it
//! lacks is in the S3 backend's README, "Stores".

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::free_port;
use crate::lazy::Servers;
use crate::process::Watched;
use crate::seaweed::BUCKET;

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `moto_server` program: `$LAMINAR_MOTO`, else the one `.ci/install`
/// puts under `target/tools`, else `moto_server` on the PATH.
pub fn moto_binary() -> PathBuf {
    crate::installed_tool("LAMINAR_MOTO", "moto/bin/moto_server", "moto_server")
}

/// One `moto_server` process with the bucket [`BUCKET`].
#[derive(Debug)]
pub struct MotoServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    process: Option<Watched>,
}

impl MotoServer {
    /// Start a server (its log in `dir`) and create [`BUCKET`]; panics if
    /// it does not start.
    pub fn start(dir: &Path) -> Self {
        Self::try_start(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), with an error instead of a panic. The port
    /// is picked free just before the start; if another process takes it
    /// first, the server exits and is started again on another (three
    /// times at most).
    pub fn try_start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            port: 0,
            dir: dir.to_path_buf(),
            process: None,
        };
        for _ in 0..3 {
            server.port = free_port(false, &[]);
            let port = server.port.to_string();
            server.process = Some(Watched::try_start(
                moto_binary(),
                ["-H", "127.0.0.1", "-p", &port],
                &dir.join("moto.log"),
            )?);
            if server.wait_until_ready() {
                return Ok(server);
            }
            server.kill();
        }
        let log = std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default();
        Err(format!(
            "moto_server did not create its bucket within {START_TIMEOUT:?} in three starts (is it installed? bash .ci/install); log:\n{log}"
        ))
    }

    /// Wait until the bucket is created on our port while our process
    /// lives; false if it exits or `START_TIMEOUT` passes first.
    fn wait_until_ready(&self) -> bool {
        self.process.as_ref().is_some_and(|process| {
            process.wait_until_ready(START_TIMEOUT, || {
                put_ok(self.port, &format!("/{BUCKET}"), "")
            })
        })
    }

    /// Create bucket `name` (empty).
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        if put_ok(self.port, &format!("/{name}"), "") {
            Ok(())
        } else {
            Err(format!(
                "moto_server on port {} did not create bucket {name}",
                self.port
            ))
        }
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server (its buckets are gone with it).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Its directory (the log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A reopen leaves the server up (its data lives in its memory).
impl Servers for MotoServer {}

/// An anonymous PUT of `path` with `body`, answered `200`: a bucket
/// created, or an object stored.
pub(crate) fn put_ok(port: u16, path: &str, body: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.1 200")
}
