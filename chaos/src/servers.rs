//! The servers a run starts: redis-server (standalone, or a 3-node
//! cluster), SeaweedFS (`weed mini`). Each on free loopback ports, in the
//! run's directory, restartable on the same data, and watched: a shell
//! kills the server if this process dies without stopping it, so no server
//! outlives its run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on now, whose companion port (+10000: a
/// cluster bus, a SeaweedFS gRPC port) is free too, and not in `taken`.
pub fn free_port_pair(taken: &[u16]) -> u16 {
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

/// A loopback address.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A server process under a watchdog shell.
struct Watched {
    pid: u32,
    watchdog: Child,
}

/// Run `script` (which starts the server in the background, prints its
/// pid, then waits while both it and `$WATCH` live) under `sh`.
fn spawn_watched(script: &str, args: &[String], env: &[(&str, &Path)]) -> Result<Watched, String> {
    let full = format!(
        "{script} & s=$!; echo $s; while kill -0 \"$WATCH\" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.2; done; kill -9 $s 2>/dev/null; wait $s 2>/dev/null"
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(full)
        .arg("sh")
        .args(args)
        .env("WATCH", std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut watchdog = command.spawn().map_err(|e| format!("cannot run sh: {e}"))?;
    let mut line = String::new();
    BufReader::new(watchdog.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| format!("no pid from the watchdog: {e}"))?;
    let pid = line
        .trim()
        .parse()
        .map_err(|_| format!("no pid from the watchdog: {line:?}"))?;
    Ok(Watched { pid, watchdog })
}

impl Watched {
    fn alive(&self) -> bool {
        rustix::process::Pid::from_raw(self.pid as i32)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
    }

    fn kill(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.watchdog.wait();
        // The server is the watchdog's child: wait until it is gone, so its
        // port and files are free.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One redis-server that fsyncs every write before answering
/// (`--appendonly yes --appendfsync always`), so what it acknowledged
/// survives a SIGKILL.
pub struct Redis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    process: Option<Watched>,
}

impl Redis {
    /// Start a server on `port` with its data in `dir`.
    pub fn start(dir: &Path, port: u16, extra: &[String]) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            port,
            dir: dir.to_path_buf(),
            extra: extra.to_vec(),
            process: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--dir",
            &self.dir.display().to_string(),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let process = spawn_watched(r#"redis-server "$@""#, &args, &[])
            .map_err(|e| format!("{e} (is redis-server installed? bash .ci/install)"))?;
        let pid = process.pid;
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ping(self.port) {
                let info = self.cli(&["info", "server"]);
                if !info.contains(&format!("process_id:{pid}")) {
                    return Err(format!(
                        "port {} is served by another process, not our redis-server {pid}",
                        self.port
                    ));
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        Err(format!(
            "redis-server on port {} did not answer PING in 20 s; log:\n{log}",
            self.port
        ))
    }

    /// SIGKILL the server: no shutdown, no final fsync.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Start it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch()
    }

    /// A redis-cli command against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Three cluster nodes with every slot assigned and no replicas, each
/// announcing `announce[i]` as its client port (the port of a proxy in
/// front of it), so clients reach every node through its proxy.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Start the nodes on `ports` (each with its bus port +10000 free) and
    /// create the cluster.
    pub fn start(dir: &Path, ports: &[u16], announce: &[u16]) -> Result<Self, String> {
        let mut nodes = Vec::new();
        for (i, (&port, &announced)) in ports.iter().zip(announce).enumerate() {
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                "--cluster-announce-ip",
                "127.0.0.1",
                "--cluster-announce-port",
                &announced.to_string(),
                "--cluster-announce-bus-port",
                &(port + 10_000).to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(Redis::start(&dir.join(format!("node{i}")), port, &extra)?);
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            ));
        }
        let cluster = Self { nodes };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    fn wait_until_ok(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the cluster did not reach cluster_state:ok in 30 s".into())
    }

    /// SIGKILL every node, then start them again on their data.
    pub fn restart(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            node.launch()?;
        }
        self.wait_until_ok()
    }
}

/// The bucket SeaweedFS is started with.
pub const BUCKET: &str = "laminar";
/// Credentials for the clients; a SeaweedFS without identities accepts any
/// signed request.
pub const ACCESS_KEY: &str = "laminar-chaos";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "laminar-chaos-secret";

/// The `weed` binary: `$LAMINAR_WEED`, else the one `.ci/install` puts
/// under `target/tools`, else `weed` on the PATH.
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

/// One `weed mini` (master, volume, filer, S3 gateway), restartable on its
/// data directory.
pub struct Seaweed {
    /// The S3 port.
    pub port: u16,
    ports: Vec<u16>,
    dir: PathBuf,
    process: Option<Watched>,
}

impl Seaweed {
    /// Start a server whose data lives in `dir`, with bucket [`BUCKET`].
    pub fn start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            port: 0,
            ports: Vec::new(),
            dir: dir.to_path_buf(),
            process: None,
        };
        server.launch_anywhere()?;
        Ok(server)
    }

    /// Launch on the ports of the last start if they are still free, else
    /// on new ones (the S3 port may change: callers re-read [`Self::port`]).
    fn launch_anywhere(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 || self.ports.is_empty() {
                let mut ports = Vec::new();
                for _ in 0..5 {
                    ports.push(free_port_pair(&ports));
                }
                self.ports = ports;
            }
            self.port = self.ports[3];
            self.launch()?;
            if self.wait_until_ready() {
                return Ok(());
            }
            last = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
            self.kill();
        }
        let tail: String = last
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(format!("SeaweedFS did not start; last log:\n{tail}"))
    }

    fn launch(&mut self) -> Result<(), String> {
        let [master, volume, filer, s3, admin] = self.ports[..] else {
            unreachable!("five ports")
        };
        let args: Vec<String> = vec![
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
        let weed = weed_binary();
        let log = self.dir.join("weed.log");
        let process = spawn_watched(
            r#""$WEED" mini "$@" >>"$LOG" 2>&1"#,
            &args,
            &[("WEED", &weed), ("LOG", &log)],
        )?;
        self.process = Some(process);
        Ok(())
    }

    fn wait_until_ready(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Some(process) = &self.process else {
                return false;
            };
            if !process.alive() {
                return false;
            }
            if put_ready_marker(self.port) {
                return process.alive();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Start it again on its data (same ports if they are free).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch_anywhere()
    }
}

impl Drop for Seaweed {
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
