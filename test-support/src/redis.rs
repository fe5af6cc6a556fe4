//! Real `redis-server` processes: standalone (restartable on the same port
//! and data), replicas, and a 3-node Redis Cluster, on free loopback ports,
//! each in its own directory, under a [`Watched`] shell and killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use crate::TcpRelay;
use crate::free_port;
use crate::lazy::Servers;
use crate::process::Watched;
use crate::tls::TestCertificates;

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a cluster may take to report `cluster_state:ok`, after its
/// creation or a restart of its nodes.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// One redis-server process, restartable on the same port and data. It
/// fsyncs every write before answering (`--appendonly yes --appendfsync
/// always`), so what it acknowledged survives a SIGKILL.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    /// With TLS: the port takes TLS only (no plain port), with these
    /// certificates.
    tls: Option<Box<TestCertificates>>,
    process: Option<Watched>,
}

impl RedisServer {
    /// A standalone server with its data in `dir`, started with the extra
    /// redis-server arguments `extra`; panics if it does not start.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::try_start(dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start) on a free port, with an error instead of a
    /// panic.
    pub fn try_start(dir: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_on(dir, free_port(false, &[]), extra)
    }

    /// [`try_start`](Self::try_start) on `port`.
    pub fn try_start_on(dir: &Path, port: u16, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_with(dir, port, None, extra)
    }

    /// A standalone server that speaks only TLS on its port, with the
    /// server certificate of `certificates` (generate them with
    /// [`TestCertificates::generate`]); clients that present a certificate
    /// must present one of their CA's, clients without one are accepted
    /// (`--tls-auth-clients optional`). Its [`url`](Self::url) is
    /// `rediss://`. Panics if it does not start.
    pub fn start_tls(dir: &Path, certificates: &TestCertificates, extra: &[&str]) -> Self {
        Self::try_start_with(
            dir,
            free_port(false, &[]),
            Some(Box::new(certificates.clone())),
            extra,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(
        dir: &Path,
        port: u16,
        tls: Option<Box<TestCertificates>>,
        extra: &[&str],
    ) -> Result<Self, String> {
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
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            port,
            dir: dir.to_path_buf(),
            args,
            tls,
            process: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.display().to_string();
        let mut args: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(tls) => {
                let mut args: Vec<String> = ["--port", "0", "--tls-port", &port]
                    .map(String::from)
                    .into();
                for (flag, path) in [
                    ("--tls-cert-file", &tls.server_cert),
                    ("--tls-key-file", &tls.server_key),
                    ("--tls-ca-cert-file", &tls.ca),
                ] {
                    args.extend([flag.to_owned(), path.display().to_string()]);
                }
                args.extend(["--tls-auth-clients".into(), "optional".into()]);
                args
            }
        };
        args.extend(["--dir".into(), dir]);
        args.extend(self.args.iter().cloned());
        self.process = Some(Watched::try_start(
            "redis-server",
            args,
            &self.dir.join("redis.out"),
        )?);
        self.wait_until_ready()
    }

    /// Wait for PING, and make sure the server answering is ours: if
    /// another process took the port first, ours has exited.
    fn wait_until_ready(&self) -> Result<(), String> {
        let pid = self.process.as_ref().map_or(0, Watched::pid);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let up = match self.tls {
                None => ping(self.port),
                Some(_) => self.try_cli(&["ping"])?.contains("PONG"),
            };
            if up {
                let info = self.try_cli(&["info", "server"])?;
                if info.contains(&format!("process_id:{pid}\r"))
                    || info.contains(&format!("process_id:{pid}\n"))
                {
                    return Ok(());
                }
                return Err(format!(
                    "port {} is served by another process, not our redis-server {pid}",
                    self.port,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let out = std::fs::read_to_string(self.dir.join("redis.out")).unwrap_or_default();
        Err(format!(
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?} (is it installed? bash .ci/install); log:\n{log}{out}",
            self.port
        ))
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The certificates of a TLS server.
    pub fn tls(&self) -> Option<&TestCertificates> {
        self.tls.as_deref()
    }

    /// SIGKILL the server: no shutdown, no final fsync.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
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

    /// SIGKILL it, then start it again on the same port and data; panics
    /// if it does not come back.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`restart`](Self::restart), with an error instead of a panic.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch()
    }

    /// A redis-cli command against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("redis-cli");
        command.arg("-p").arg(self.port.to_string());
        if let Some(tls) = &self.tls {
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        let output = command
            .args(args)
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, the seed first.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start the nodes in `dir/node0` to `dir/node2` on free ports and
    /// create the cluster; returned once every node reports
    /// `cluster_state:ok`. Panics if it does not start.
    pub fn start(dir: &Path) -> Self {
        let ports = Self::free_ports(3);
        Self::try_start_on(dir, &ports, &ports).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `n` free ports for cluster nodes, each with its bus port (+10000)
    /// free too.
    pub fn free_ports(n: usize) -> Vec<u16> {
        let mut taken = Vec::new();
        for _ in 0..n {
            let port = free_port(true, &taken);
            taken.extend([port, port + 10_000]);
        }
        taken.into_iter().step_by(2).collect()
    }

    /// Start a node on each of `ports` (with its bus port +10000 free) in
    /// `dir/node0`, `dir/node1`, ..., node `i` announcing `announce[i]` as
    /// its client port (the port of a proxy in front of it, or its own),
    /// and create the cluster; returned once every node reports
    /// `cluster_state:ok`.
    pub fn try_start_on(dir: &Path, ports: &[u16], announce: &[u16]) -> Result<Self, String> {
        if ports.len() != announce.len() {
            return Err(format!(
                "{} cluster ports but {} announced ports",
                ports.len(),
                announce.len()
            ));
        }
        let mut nodes = Vec::new();
        for (i, (&port, &announced)) in ports.iter().zip(announce).enumerate() {
            let announced = announced.to_string();
            let bus = (port + 10_000).to_string();
            nodes.push(RedisServer::try_start_on(
                &dir.join(format!("node{i}")),
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-announce-ip",
                    "127.0.0.1",
                    "--cluster-announce-port",
                    &announced,
                    "--cluster-announce-bus-port",
                    &bus,
                ],
            )?);
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
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while Instant::now() < deadline {
            let mut ok = true;
            for node in &self.nodes {
                ok &= node
                    .try_cli(&["cluster", "info"])?
                    .contains("cluster_state:ok");
            }
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the cluster did not reach cluster_state:ok within {CLUSTER_TIMEOUT:?}"
        ))
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

    /// SIGKILL every node, then start them again on their data; panics if
    /// the cluster does not come back.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`restart`](Self::restart), with an error instead of a panic.
    pub fn try_restart(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            node.launch()?;
        }
        self.wait_until_ok()
    }
}

/// The servers of a conformance factory: one standalone server or one
/// cluster. A reopen restarts them (SIGKILL, then the same data), since a
/// redis store's durability is its server's.
#[derive(Debug)]
pub enum RedisServers {
    /// One standalone server.
    Standalone(RedisServer),
    /// A 3-node cluster.
    Cluster(RedisCluster),
}

impl RedisServers {
    /// Start a cluster or a standalone server in `dir`.
    pub fn start(dir: &Path, cluster: bool) -> Self {
        if cluster {
            RedisServers::Cluster(RedisCluster::start(dir))
        } else {
            RedisServers::Standalone(RedisServer::start(dir, &[]))
        }
    }

    /// The backend URL that reaches them, ending in the query (`/`,
    /// `/?tls_ca_file=...` for a TLS server, or `/?cluster=true&nodes=...`),
    /// to which a test adds its parameters.
    pub fn url(&self) -> String {
        match self {
            RedisServers::Standalone(server) => match server.tls() {
                None => format!("{}/", server.url()),
                Some(tls) => format!("{}/?tls_ca_file={}", server.url(), tls.ca.display()),
            },
            RedisServers::Cluster(cluster) => cluster.url(),
        }
    }

    /// SIGKILL them and start them again on their data.
    pub fn restart(&mut self) {
        match self {
            RedisServers::Standalone(server) => server.restart(),
            RedisServers::Cluster(cluster) => cluster.restart(),
        }
    }
}

impl Servers for RedisServers {
    fn on_reopen(&mut self) {
        self.restart();
    }
}
