//! Real redis-server processes for the tests and benchmarks: standalone or
//! a 3-node cluster, on free loopback ports, each in its own temporary
//! directory, stopped on drop. A watchdog shell kills a server if the test
//! process dies without dropping it (a SIGKILL from a test runner's time
//! limit), so no server outlives its test.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback port nobody listens on now (and, for a cluster node, whose
/// bus port, +10000, is free too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if !with_bus || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
}

/// One redis-server process, restartable on the same port and data.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    watchdog: Option<Child>,
    pid: u32,
}

impl RedisServer {
    /// A standalone server that fsyncs every write before answering.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(dir, free_port(false), extra)
    }

    fn start_on(dir: &Path, port: u16, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
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
        args.extend(extra.iter().map(|s| s.to_string()));
        std::fs::create_dir_all(dir).expect("server dir");
        let mut server = Self {
            port,
            dir: dir.to_path_buf(),
            args,
            watchdog: None,
            pid: 0,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        // The shell prints the server's pid, then watches both processes.
        let script = r#"redis-server "$@" & s=$!; echo $s; while kill -0 "$WATCH" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.2; done; kill -9 $s 2>/dev/null; wait $s 2>/dev/null"#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .env("WATCH", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash .ci/install)");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("server pid");
        self.pid = line.trim().parse().expect("a pid");
        self.watchdog = Some(watchdog);
        self.wait_until_ready();
    }

    /// Wait for PING, and make sure the server answering is ours: if
    /// another process took the port first, ours has exited.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ping(self.port) {
                let info = self.cli(&["info", "server"]);
                assert!(
                    info.contains(&format!("process_id:{}\r", self.pid))
                        || info.contains(&format!("process_id:{}\n", self.pid)),
                    "port {} is served by another process, not our redis-server {}",
                    self.port,
                    self.pid
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?}; log:\n{log}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server: no shutdown, no final fsync.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .status();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.wait();
        }
    }

    /// A replica of the server on `primary_port` (a [`TcpRelay`]'s port to
    /// cut it off at will), returned once its replication link is up.
    pub fn start_replica_of(dir: &Path, primary_port: u16) -> Self {
        let primary_port = primary_port.to_string();
        let replica = Self::start(dir, &["--replicaof", "127.0.0.1", &primary_port]);
        let deadline = Instant::now() + START_TIMEOUT;
        while !replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < deadline,
                "the replica on port {} did not link to its primary within {START_TIMEOUT:?}",
                replica.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// Start it again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A redis-cli command against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisServer {
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

/// Three cluster nodes with every slot assigned, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                RedisServer::start_on(
                    &dir.join(format!("node{i}")),
                    free_port(true),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self
                .nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not reach cluster_state:ok within {START_TIMEOUT:?}");
    }

    /// The seed URL plus the other nodes, as a backend URL query.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!(
            "{}/?cluster=true&nodes={}",
            self.nodes[0].url(),
            others.join(",")
        )
    }

    /// SIGKILL every node, then start them again on their data.
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            node.launch();
        }
        self.wait_until_ok();
    }
}

/// A TCP relay on a free loopback port to `target`, that can be told to
/// hold all traffic: a network partition. Held bytes stay in the senders'
/// socket buffers, so a process killed while held loses them, as it would
/// behind a real partition.
pub struct TcpRelay {
    pub port: u16,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TcpRelay {
    pub fn start(target: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("relay addr").port();
        let hold = Arc::new(AtomicBool::new(false));
        let held = Arc::clone(&hold);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let held = Arc::clone(&held);
                    std::thread::spawn(move || relay(from, to, &held));
                }
            }
        });
        Self { port, hold }
    }

    /// Stop forwarding in both directions (nothing is read while held).
    pub fn hold(&self) {
        self.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream, held: &std::sync::atomic::AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buffer = [0u8; 16 << 10];
    loop {
        if held.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => return,
            // Bytes read while the hold was being set are held too.
            Ok(_) if held.load(std::sync::atomic::Ordering::SeqCst) => return,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
