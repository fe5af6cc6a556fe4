//! A real S3-compatible server: SeaweedFS (`weed mini`, installed by
//! `.ci/install`), on free loopback ports, in its own directory, under a
//! [`Watched`] shell and killed on drop.
//!
//! SeaweedFS honours `If-None-Match: *` and `If-Match` atomically, which the
//! S3 backend's fence and markers rely on; the stores that ignore them
//! (s3rver) or race them (s3s-fs) cannot stand in for S3 here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::free_port;
use crate::lazy::Servers;
use crate::process::Watched;

/// The bucket every server is started with.
pub const BUCKET: &str = "laminar";
/// The access key id of the test clients; a SeaweedFS without an identity
/// configuration accepts any signed request.
pub const ACCESS_KEY: &str = "laminar-test";
/// The secret access key of the test clients.
pub const SECRET_KEY: &str = "laminar-test-secret";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `weed` binary: `$LAMINAR_WEED`, else the one `.ci/install` puts under
/// `target/tools`, else `weed` on the PATH.
pub fn weed_binary() -> PathBuf {
    crate::installed_tool("LAMINAR_WEED", "seaweedfs/bin/weed", "weed")
}

/// One `weed mini` process: master, volume, filer and S3 gateway,
/// restartable on its data directory.
#[derive(Debug)]
pub struct SeaweedServer {
    /// The S3 gateway's port on 127.0.0.1 (it may change on a restart).
    pub port: u16,
    /// The master, volume, filer, S3 and admin ports of the last start.
    ports: Option<[u16; 5]>,
    dir: PathBuf,
    process: Option<Watched>,
}

impl SeaweedServer {
    /// Start a server whose data lives in `dir`, with bucket [`BUCKET`];
    /// panics if it does not start. Ports are picked free just before the
    /// start; if another process takes one first, the server fails to bind
    /// and is started again on new ports.
    pub fn start(dir: &Path) -> Self {
        Self::try_start(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), with an error instead of a panic.
    pub fn try_start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            port: 0,
            ports: None,
            dir: dir.to_path_buf(),
            process: None,
        };
        server.launch_anywhere()?;
        Ok(server)
    }

    /// SIGKILL it, then start it again on its data, on the ports of the
    /// last start if they are still free, else on new ones (so callers
    /// re-read [`port`](Self::port)).
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch_anywhere()
    }

    /// Launch on the ports of the last start, if any, else on free ones;
    /// up to five times, on new free ports after a failure.
    fn launch_anywhere(&mut self) -> Result<(), String> {
        let mut last_log = String::new();
        for attempt in 0..5 {
            let ports = match self.ports {
                Some(ports) if attempt == 0 => ports,
                _ => {
                    let mut taken = Vec::new();
                    for _ in 0..5 {
                        let port = free_port(true, &taken);
                        taken.extend([port, port + 10_000]);
                    }
                    [taken[0], taken[2], taken[4], taken[6], taken[8]]
                }
            };
            self.ports = Some(ports);
            self.port = ports[3];
            self.launch(ports)?;
            if self.wait_until_ready() {
                return Ok(());
            }
            last_log = self.log();
            self.kill();
        }
        let tail: String = last_log
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(format!(
            "SeaweedFS did not accept a PUT within {START_TIMEOUT:?} in five starts (is it installed? bash .ci/install); last log:\n{tail}"
        ))
    }

    fn launch(&mut self, [master, volume, filer, s3, admin]: [u16; 5]) -> Result<(), String> {
        let args = [
            format!("-dir={}", self.dir.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={master}"),
            format!("-volume.port={volume}"),
            format!("-filer.port={filer}"),
            format!("-s3.port={s3}"),
            format!("-admin.port={admin}"),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-bucket={BUCKET}"),
        ];
        self.process = Some(Watched::try_start(
            weed_binary(),
            std::iter::once("mini".to_owned()).chain(args),
            &self.dir.join("weed.log"),
        )?);
        Ok(())
    }

    /// Wait until a PUT into the bucket succeeds on our port while our
    /// process lives (if another process took a port, ours has exited);
    /// false if it exits or `START_TIMEOUT` passes first.
    fn wait_until_ready(&self) -> bool {
        self.process.as_ref().is_some_and(|process| {
            process.wait_until_ready(START_TIMEOUT, || put_ready_marker(self.port))
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// A reopen leaves the server up: an S3 store's durability is the bucket's,
/// and the store reads it afresh through a new client.
impl Servers for SeaweedServer {}

/// An anonymous PUT of a small object: SeaweedFS without identities
/// accepts it once the filer and a volume are up.
fn put_ready_marker(port: u16) -> bool {
    crate::moto::put_ok(port, &format!("/{BUCKET}/.ready"), "ok")
}

pub use crate::s3::TestServer;
