//! A real S3-compatible server for the tests and benchmarks: SeaweedFS
//! (`weed mini`, installed by `.ci/install`), on free loopback ports, in its
//! own temporary directory, stopped on drop. A watchdog shell kills it if
//! the test process dies without dropping it, so no server outlives its
//! test.
//!
//! SeaweedFS honours `If-None-Match: *` and `If-Match` atomically, which the
//! backend's fence and markers rely on; the stores that ignore them
//! (s3rver) or race them (s3s-fs) cannot stand in for S3 here.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod proxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every server is started with.
pub const BUCKET: &str = "laminar";
/// Credentials for the test clients; a SeaweedFS without an identity
/// configuration accepts any signed request.
pub const ACCESS_KEY: &str = "laminar-test";
pub const SECRET_KEY: &str = "laminar-test-secret";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `weed` binary: `$LAMINAR_WEED`, else the one `.ci/install` puts under
/// `target/tools`, else `weed` on the PATH.
pub fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LAMINAR_WEED") {
        return PathBuf::from(path);
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/seaweedfs/bin/weed");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("weed")
}

/// A loopback port that is free, and whose gRPC companion (+10000, which
/// SeaweedFS opens for each of its servers) is free too.
fn free_port_pair(taken: &[u16]) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port < 55_000
            && !taken.contains(&port)
            && !taken.contains(&(port + 10_000))
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// One `weed mini` process: master, volume, filer and S3 gateway.
pub struct SeaweedServer {
    pub port: u16,
    dir: PathBuf,
    watchdog: Option<Child>,
    pid: u32,
}

impl SeaweedServer {
    /// Start a server whose data lives in `dir`, with bucket [`BUCKET`].
    /// Ports are picked free just before the start; if another process
    /// takes one first, the server fails to bind and is started again on
    /// new ports.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("server dir");
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut ports = Vec::new();
            for _ in 0..5 {
                let port = free_port_pair(&ports);
                ports.push(port);
            }
            let mut server = Self {
                port: ports[3],
                dir: dir.to_path_buf(),
                watchdog: None,
                pid: 0,
            };
            server.launch(&ports);
            if server.wait_until_ready() {
                return server;
            }
            last_log = server.log();
            server.kill();
        }
        panic!("SeaweedFS did not start; last log:\n{last_log}");
    }

    fn launch(&mut self, ports: &[u16]) {
        let [master, volume, filer, s3, admin] = ports else {
            unreachable!("five ports")
        };
        // The shell prints the server's pid, then watches both processes.
        let script = r#""$WEED" mini "$@" >"$LOG" 2>&1 & s=$!; echo $s; while kill -0 "$WATCH" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.2; done; kill -9 $s 2>/dev/null; wait $s 2>/dev/null"#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(format!("-dir={}", self.dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-admin.port={admin}"))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .env("WEED", weed_binary())
            .env("LOG", self.dir.join("weed.log"))
            .env("WATCH", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("server pid");
        self.pid = line.trim().parse().expect("a pid");
        self.watchdog = Some(watchdog);
    }

    /// Wait until a PUT into the bucket succeeds on our port while our
    /// process lives (if another process took a port, ours has exited).
    fn wait_until_ready(&self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if !self.alive() {
                return false;
            }
            if put_ready_marker(self.port) {
                return self.alive();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "SeaweedFS on port {} did not accept a PUT within {START_TIMEOUT:?} (is it installed? bash .ci/install); log:\n{}",
            self.port,
            self.log()
        );
    }

    fn alive(&self) -> bool {
        Command::new("kill")
            .arg("-0")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }

    /// The S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.wait();
        }
    }
}

impl Drop for SeaweedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An anonymous PUT of a small object: SeaweedFS without identities
/// accepts it once the filer and a volume are up.
fn put_ready_marker(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "PUT /{BUCKET}/.ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.1 200")
}

/// A store configuration for `endpoint`, prefix `prefix`, with retries and
/// timeouts short enough for tests.
pub fn config(endpoint: &str, prefix: &str) -> laminar_state_s3::S3Config {
    let mut config = laminar_state_s3::S3Config::new(BUCKET, prefix);
    config.endpoint = Some(endpoint.to_owned());
    config.force_path_style = true;
    config.region = Some("us-east-1".into());
    config.credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
    config
}

/// A prefix no other store of any test process uses.
pub fn fresh_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A server in a temporary directory, for one test.
pub struct TestServer {
    pub server: SeaweedServer,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            server: SeaweedServer::start(dir.path()),
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// `host:port`, for a proxy in front of it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }
}

/// A configuration with few attempts and short timeouts, so fault tests
/// reach their typed errors quickly (and boundedly).
pub fn impatient_config(endpoint: &str, prefix: &str) -> laminar_state_s3::S3Config {
    let mut config = config(endpoint, prefix);
    config.max_attempts = 3;
    config.attempt_timeout = Duration::from_millis(1_500);
    config.operation_timeout = Duration::from_secs(6);
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// Connect a store, panicking with the reason if it fails.
pub async fn store(config: &laminar_state_s3::S3Config) -> laminar_state_s3::S3Store {
    laminar_state_s3::S3Store::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting {config:?}: {e}"))
}

/// Write a one-byte partial for each of `vnodes` vnodes of `epoch`, 64
/// writes in flight at a time.
pub async fn fill(
    backend: &std::sync::Arc<dyn laminar_state_api::StateBackend>,
    epoch: u64,
    vnodes: u32,
) {
    let mut writes = tokio::task::JoinSet::new();
    for vnode in 0..vnodes {
        let backend = std::sync::Arc::clone(backend);
        writes.spawn(async move {
            backend
                .write_partial(vnode, epoch, 0, bytes::Bytes::from_static(b"p"))
                .await
        });
        if writes.len() >= 64 {
            writes
                .join_next()
                .await
                .expect("a write")
                .expect("task")
                .expect("write");
        }
    }
    while let Some(done) = writes.join_next().await {
        done.expect("task").expect("write");
    }
}

/// Keys in the bucket under the store's prefix whose `/`-prefixed form
/// contains `fragment` (so `"/m/"` matches a key that starts with `m/`).
pub async fn stored_keys(store: &laminar_state_s3::S3Store, fragment: &str) -> Vec<String> {
    let listed = store
        .client()
        .list_objects_v2()
        .bucket(store.bucket())
        .prefix(store.prefix())
        .send()
        .await
        .expect("raw LIST");
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| format!("/{k}").contains(fragment))
        .map(str::to_owned)
        .collect()
}

/// Wait (at most 10 s) until `seen` holds for the proxy; `what` names it
/// in the failure.
pub async fn wait_for(
    proxy: &proxy::FaultProxy,
    what: &str,
    seen: impl Fn(&proxy::FaultProxy) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(proxy) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
