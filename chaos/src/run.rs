//! The orchestrator: start the store, the fault proxies and the engine
//! processes, inject the seed's faults on schedule, stop, sweep, check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use laminar_state::BackendConfig;
use laminar_state_test_support::redis::{RedisCluster, RedisServer};
use laminar_state_test_support::seaweed::{self, SeaweedServer};
use serde_json::json;

use crate::broken::Breakage;
use crate::checker::{self, History, Report};
use crate::history::{self, Kind, Recorder, decode_payload, now_ns};
use crate::proxy::FaultProxy;
use crate::schedule::{self, Fault, Planned, Shape};
use crate::worker::{self, WorkerArgs};

/// The stores a run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One redb file; one process holds it at a time, others wait.
    Redb,
    /// A standalone redis-server.
    Redis,
    /// A 3-node Redis Cluster.
    RedisCluster,
    /// SeaweedFS's S3 gateway.
    S3,
}

impl Backend {
    /// Parse `redb`, `redis`, `redis-cluster`, `s3`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "redb" => Ok(Backend::Redb),
            "redis" => Ok(Backend::Redis),
            "redis-cluster" => Ok(Backend::RedisCluster),
            "s3" => Ok(Backend::S3),
            other => Err(format!(
                "unknown backend {other:?}: redb, redis, redis-cluster or s3"
            )),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Redb => "redb",
            Backend::Redis => "redis",
            Backend::RedisCluster => "redis-cluster",
            Backend::S3 => "s3",
        }
    }
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The store.
    pub backend: Backend,
    /// How long the engines run.
    pub seconds: u64,
    /// The seed of the fault schedule and of the engines' choices.
    pub seed: u64,
    /// Break the backend this way (the checker must then object).
    pub broken: Option<Breakage>,
    /// Where the run keeps its store, history and logs (emptied first).
    pub dir: PathBuf,
    /// Print progress to stderr.
    pub verbose: bool,
}

/// What a run found.
pub struct Outcome {
    /// The checker's report.
    pub report: Report,
    /// The history checked.
    pub history: History,
    /// The one-line summary.
    pub summary: String,
}

impl Outcome {
    /// No violation, and the run did useful work.
    pub fn passed(&self) -> bool {
        self.report.violations.is_empty() && self.useful().is_ok()
    }

    /// Whether the engines got anything done: at least one seal won and
    /// one read checked (a run whose every call failed proves nothing).
    pub fn useful(&self) -> Result<(), String> {
        let stats = &self.report.stats;
        if stats.seals_won == 0 || stats.reads == 0 {
            Err(format!(
                "the run did no useful work ({} seals won, {} reads): see the logs",
                stats.seals_won, stats.reads
            ))
        } else {
            Ok(())
        }
    }
}

/// The deployment: servers (kept alive by being held), proxies, engine
/// configuration per slot, and the configuration of the final sweep.
struct Deployment {
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
    seaweed: Option<SeaweedServer>,
    proxies: Vec<FaultProxy>,
    /// The engines' configuration, per slot.
    configs: Vec<serde_json::Value>,
    /// Processes, engines and coordinators per process.
    slots: usize,
    engines: usize,
    coordinators: usize,
    restart_gap_ms: u64,
}

const VNODES: u32 = 8;

pub(crate) fn s3_config(endpoint: &str, prefix: &str) -> serde_json::Value {
    json!({
        "backend": "s3",
        "bucket": seaweed::BUCKET,
        "prefix": prefix,
        "endpoint": endpoint,
        "region": "us-east-1",
        "access_key_id": seaweed::ACCESS_KEY,
        "secret_access_key": seaweed::SECRET_KEY,
        "max_attempts": 3,
        "attempt_timeout_ms": 1000,
        "timeout_ms": 4000,
    })
}

/// A loopback address.
fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(crate) fn redis_url(port: u16, query: &str) -> String {
    format!("redis://127.0.0.1:{port}/?namespace=chaos&timeout_ms=1000{query}")
}

impl Deployment {
    fn start(options: &Options) -> Result<Self, String> {
        let dir = &options.dir;
        let mut deployment = Self {
            redis: None,
            cluster: None,
            seaweed: None,
            proxies: Vec::new(),
            configs: Vec::new(),
            slots: 4,
            engines: 1,
            coordinators: 1,
            restart_gap_ms: 5_000,
        };
        let proxy = |port: u16| {
            FaultProxy::start(local(port)).map_err(|e| format!("cannot start a proxy: {e}"))
        };
        match options.backend {
            Backend::Redb => {
                // One process at a time holds the file: two processes, one
                // waiting to take over, each with several engines.
                deployment.slots = 2;
                deployment.engines = 3;
                deployment.coordinators = 2;
                let path = dir.join("store.redb");
                let config = json!({"backend": "redb", "path": path});
                deployment.configs = vec![config; 2];
            }
            Backend::Redis => {
                let redis = RedisServer::try_start(&dir.join("redis"), &[])?;
                let port = redis.port;
                deployment.redis = Some(redis);
                deployment.proxies = vec![proxy(port)?, proxy(port)?];
                deployment.configs = (0..deployment.slots)
                    .map(|slot| {
                        let url = redis_url(deployment.proxies[slot % 2].port, "");
                        json!({"backend": "redis", "url": url})
                    })
                    .collect();
            }
            Backend::RedisCluster => {
                let ports = RedisCluster::free_ports(3);
                for &port in &ports {
                    deployment.proxies.push(proxy(port)?);
                }
                let announce: Vec<u16> = deployment.proxies.iter().map(|p| p.port).collect();
                deployment.cluster = Some(RedisCluster::try_start_on(
                    &dir.join("cluster"),
                    &ports,
                    &announce,
                )?);
                let nodes = format!(
                    "&cluster=true&nodes=127.0.0.1:{},127.0.0.1:{}",
                    announce[1], announce[2]
                );
                let url = redis_url(announce[0], &nodes);
                deployment.configs =
                    vec![json!({"backend": "redis", "url": url}); deployment.slots];
                deployment.restart_gap_ms = 10_000;
            }
            Backend::S3 => {
                let seaweed = SeaweedServer::try_start(&dir.join("seaweedfs"))?;
                deployment.proxies = vec![proxy(seaweed.port)?, proxy(seaweed.port)?];
                let prefix = format!("chaos-{}", options.seed);
                deployment.configs = (0..deployment.slots)
                    .map(|slot| {
                        let endpoint =
                            format!("http://127.0.0.1:{}", deployment.proxies[slot % 2].port);
                        s3_config(&endpoint, &prefix)
                    })
                    .collect();
                deployment.seaweed = Some(seaweed);
                // SeaweedFS takes seconds to come back (6 s on average
                // here): restart it less often, so the run is not mostly
                // an outage.
                deployment.restart_gap_ms = 30_000;
            }
        }
        Ok(deployment)
    }

    fn shape(&self) -> Shape {
        Shape {
            slots: self.slots,
            proxies: self.proxies.len(),
            server: self.redis.is_some() || self.cluster.is_some() || self.seaweed.is_some(),
            restart_gap_ms: self.restart_gap_ms,
        }
    }

    /// Kill the server and start it again on its data.
    fn restart_server(&mut self) -> Result<(), String> {
        if let Some(redis) = &mut self.redis {
            redis.try_restart()?;
        }
        if let Some(cluster) = &mut self.cluster {
            cluster.try_restart()?;
        }
        if let Some(seaweed) = &mut self.seaweed {
            seaweed.try_restart()?;
            for proxy in &self.proxies {
                proxy.set_upstream(local(seaweed.port));
            }
        }
        Ok(())
    }

    /// The configuration of the final sweep: straight to the server where
    /// it can be (a cluster announces its proxies, healed by then).
    fn sweep_config(&self, options: &Options) -> serde_json::Value {
        if let Some(redis) = &self.redis {
            return json!({"backend": "redis", "url": redis_url(redis.port, "")});
        }
        if let Some(seaweed) = &self.seaweed {
            let endpoint = format!("http://127.0.0.1:{}", seaweed.port);
            return s3_config(&endpoint, &format!("chaos-{}", options.seed));
        }
        self.configs[0].clone()
    }
}

/// One engine process slot.
struct Slot {
    incarnation: u32,
    child: Option<Child>,
    paused: bool,
}

/// What the fault loop does next.
enum Step {
    Planned(Fault),
    RestartEngine(usize),
    Resume(usize, u32),
}

struct Engines {
    exe: PathBuf,
    dir: PathBuf,
    slots: Vec<Slot>,
    template: WorkerArgs,
}

impl Engines {
    fn spawn(&mut self, slot: usize) -> Result<(), String> {
        let incarnation = self.slots[slot].incarnation;
        let args = WorkerArgs {
            slot,
            incarnation,
            seed: self.template.seed,
            ..self.template.clone()
        };
        let log_path = self
            .dir
            .join("logs")
            .join(format!("{}.log", args.process()));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&self.exe)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        self.slots[slot].child = Some(child);
        self.slots[slot].paused = false;
        Ok(())
    }

    fn signal(&self, slot: usize, signal: rustix::process::Signal) {
        if let Some(child) = &self.slots[slot].child
            && let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32)
        {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    fn name(&self, slot: usize) -> String {
        format!("w{slot}.{}", self.slots[slot].incarnation)
    }

    /// Whether the slot's process runs (not killed, not exited).
    fn alive(&mut self, slot: usize) -> bool {
        match &mut self.slots[slot].child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// Run the whole thing.
pub fn run(options: &Options) -> Result<Outcome, String> {
    let dir = &options.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot empty {}: {e}", dir.display()))?;
    }
    for sub in ["history", "versions", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let say = |text: &str| {
        if options.verbose {
            eprintln!("chaos: {text}");
        }
    };
    say(&format!(
        "{} for {} s, seed {}{}, in {}",
        options.backend.name(),
        options.seconds,
        options.seed,
        options
            .broken
            .map_or(String::new(), |b| format!(", broken: {}", b.name())),
        dir.display()
    ));
    let mut deployment = Deployment::start(options)?;
    for (slot, config) in deployment.configs.iter().enumerate() {
        std::fs::write(worker::config_path(dir, slot), config.to_string())
            .map_err(|e| format!("cannot write a config: {e}"))?;
    }
    let plan = schedule::generate(options.seed, options.seconds, deployment.shape());
    let plan_text: String = plan
        .iter()
        .map(|p| format!("{:>7} ms  {}\n", p.at_ms, p.fault))
        .collect();
    std::fs::write(dir.join("schedule.txt"), plan_text).map_err(|e| e.to_string())?;
    let recorder = Recorder::open(&dir.join("history"), "run").map_err(|e| e.to_string())?;

    let start = now_ns();
    let deadline_ns = start + options.seconds * 1_000_000_000;
    let mut engines = Engines {
        exe: std::env::current_exe().map_err(|e| format!("where am I? {e}"))?,
        dir: dir.clone(),
        slots: (0..deployment.slots)
            .map(|_| Slot {
                incarnation: 0,
                child: None,
                paused: false,
            })
            .collect(),
        template: WorkerArgs {
            dir: dir.clone(),
            slot: 0,
            incarnation: 0,
            engines: deployment.engines,
            coordinators: deployment.coordinators,
            vnodes: VNODES,
            seed: options.seed,
            deadline_ns,
            broken: options.broken,
        },
    };
    for slot in 0..deployment.slots {
        engines.spawn(slot)?;
    }
    say(&format!(
        "{} engine processes up, {} faults planned",
        deployment.slots,
        plan.len()
    ));

    let mut queue: BTreeMap<(u64, u64), Step> = BTreeMap::new();
    for (n, Planned { at_ms, fault }) in plan.into_iter().enumerate() {
        queue.insert((at_ms, n as u64), Step::Planned(fault));
    }
    let mut tiebreak = 1u64 << 32;
    let mut schedule = |queue: &mut BTreeMap<(u64, u64), Step>, at_ms: u64, step: Step| {
        tiebreak += 1;
        queue.insert((at_ms, tiebreak), step);
    };
    let fault = |kind: &str, target: &str| {
        recorder.record(Kind::Fault {
            kind: kind.into(),
            target: target.into(),
        });
    };
    let elapsed_ms = || (now_ns() - start) / 1_000_000;
    let end_ms = options.seconds * 1000;
    loop {
        // Engines that exited on their own before the end are restarted
        // (and reported: a worker should only stop at the deadline).
        if elapsed_ms() + 500 < end_ms {
            for slot in 0..engines.slots.len() {
                if engines.slots[slot].child.is_some() && !engines.alive(slot) {
                    let status = engines.slots[slot]
                        .child
                        .take()
                        .and_then(|mut c| c.wait().ok());
                    let name = engines.name(slot);
                    fault("engine_exited", &format!("{name} {status:?}"));
                    say(&format!(
                        "{name} exited by itself ({status:?}); restarting it"
                    ));
                    engines.slots[slot].incarnation += 1;
                    engines.spawn(slot)?;
                }
            }
        }
        let Some((&(at_ms, _), _)) = queue.first_key_value() else {
            break;
        };
        if at_ms >= end_ms {
            break;
        }
        let now = elapsed_ms();
        if now < at_ms {
            std::thread::sleep(Duration::from_millis((at_ms - now).min(100)));
            continue;
        }
        let (_, step) = queue.pop_first().expect("not empty");
        match step {
            Step::Planned(Fault::Kill {
                slot,
                restart_after_ms,
            }) => {
                if engines.alive(slot) {
                    if let Some(mut child) = engines.slots[slot].child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    fault("kill", &engines.name(slot));
                    schedule(
                        &mut queue,
                        at_ms + restart_after_ms,
                        Step::RestartEngine(slot),
                    );
                }
            }
            Step::RestartEngine(slot) => {
                engines.slots[slot].incarnation += 1;
                engines.spawn(slot)?;
                fault("restart_engine", &engines.name(slot));
            }
            Step::Planned(Fault::Pause { slot, for_ms }) => {
                if engines.alive(slot) && !engines.slots[slot].paused {
                    engines.signal(slot, rustix::process::Signal::STOP);
                    engines.slots[slot].paused = true;
                    fault("pause", &engines.name(slot));
                    let incarnation = engines.slots[slot].incarnation;
                    schedule(&mut queue, at_ms + for_ms, Step::Resume(slot, incarnation));
                }
            }
            Step::Resume(slot, incarnation) => {
                if engines.slots[slot].incarnation == incarnation && engines.slots[slot].paused {
                    engines.signal(slot, rustix::process::Signal::CONT);
                    engines.slots[slot].paused = false;
                    fault("resume", &engines.name(slot));
                }
            }
            Step::Planned(Fault::RestartServer) => {
                fault("restart_server", options.backend.name());
                say(&format!("{} ms: restarting the server", elapsed_ms()));
                deployment.restart_server()?;
                fault("server_back", options.backend.name());
            }
            Step::Planned(Fault::Stall { proxies, for_ms }) => {
                for &p in &proxies {
                    deployment.proxies[p].stall(Duration::from_millis(for_ms));
                }
                fault("proxy_stall", &format!("{proxies:?} {for_ms} ms"));
            }
            Step::Planned(Fault::DropAnswers { proxies, for_ms }) => {
                for &p in &proxies {
                    deployment.proxies[p].drop_answers(Duration::from_millis(for_ms));
                }
                fault("proxy_drop", &format!("{proxies:?} {for_ms} ms"));
            }
            Step::Planned(Fault::Reset { proxies }) => {
                for &p in &proxies {
                    deployment.proxies[p].reset();
                }
                fault("proxy_reset", &format!("{proxies:?}"));
            }
        }
    }

    // The end: wake the paused, heal the network, let the engines finish
    // (they stop at the deadline), kill the stragglers.
    for slot in 0..engines.slots.len() {
        if engines.slots[slot].paused {
            engines.signal(slot, rustix::process::Signal::CONT);
            engines.slots[slot].paused = false;
            fault("resume", &engines.name(slot));
        }
    }
    for proxy in &deployment.proxies {
        proxy.heal();
    }
    while now_ns() < deadline_ns {
        std::thread::sleep(Duration::from_millis(50));
    }
    let grace = now_ns() + 15_000_000_000;
    for slot in 0..engines.slots.len() {
        while engines.alive(slot) && now_ns() < grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = engines.slots[slot].child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                fault("kill_at_end", &engines.name(slot));
            }
            let _ = child.wait();
        }
    }
    say("engines stopped; restarting the server and sweeping");

    // Everything acknowledged must survive a restart of the server: restart
    // it once more, then read the recent epochs with a fresh handle.
    if deployment.shape().server {
        fault("restart_server", options.backend.name());
        deployment.restart_server()?;
        fault("server_back", options.backend.name());
    }
    let sweep_config: BackendConfig = serde_json::from_value(deployment.sweep_config(options))
        .map_err(|e| format!("sweep config: {e}"))?;
    let sweep_recorder =
        Arc::new(Recorder::open(&dir.join("history"), "sweep").map_err(|e| e.to_string())?);
    sweep(&sweep_config, &sweep_recorder)?;
    drop(deployment);

    let events = history::read_dir(&dir.join("history"))?;
    let history = History::from_events(events)?;
    let report = checker::check(&history);
    let stats = &report.stats;
    let count = |kinds: &[&str]| -> usize {
        kinds
            .iter()
            .map(|k| stats.faults.get(*k).copied().unwrap_or(0))
            .sum()
    };
    let summary = format!(
        "chaos {}{} seed={} {}s: operations={} (succeeded {}, refused {}, split-brain {}, failed {}, unanswered {}; seals won {}, reads {}) kills={} restarts={} stalls={} proxy_faults={} violations={}",
        options.backend.name(),
        options
            .broken
            .map_or(String::new(), |b| format!(" (broken: {})", b.name())),
        options.seed,
        options.seconds,
        stats.operations,
        stats.succeeded,
        stats.refused,
        stats.split_brain,
        stats.failed,
        stats.unanswered,
        stats.seals_won,
        stats.reads,
        count(&["kill"]),
        count(&["restart_server"]),
        count(&["pause"]),
        count(&["proxy_stall", "proxy_drop", "proxy_reset"]),
        report.violations.len(),
    );
    Ok(Outcome {
        report,
        history,
        summary,
    })
}

/// Read the latest sealed epoch, and every vnode of the epochs around it,
/// with a fresh handle, recorded like any engine's reads.
fn sweep(config: &BackendConfig, recorder: &Arc<Recorder>) -> Result<(), String> {
    use crate::history::{Op, Outcome as Out};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let inst = "sweep";
        let mut backend = None;
        for _ in 0..100 {
            match config.open(inst, VNODES).await {
                Ok(b) => {
                    backend = Some(b);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let backend = backend.ok_or("the sweep cannot open the store")?;
        let mut latest = None;
        for _ in 0..20 {
            let id = recorder.invoke(inst, Op::Latest);
            match backend.latest_committed_epoch().await {
                Ok(l) => {
                    recorder.complete(id, Out::Latest(l));
                    latest = Some(l);
                    break;
                }
                Err(e) => {
                    recorder.complete(id, Out::of_error(&e));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let latest = latest.ok_or("the sweep cannot read the latest epoch")?;
        let top = latest.unwrap_or(0);
        for epoch in top.saturating_sub(6).max(1)..=top + 3 {
            for vnode in 0..VNODES {
                let id = recorder.invoke(inst, Op::Read { vnode, epoch });
                let result = backend.read_partial(vnode, epoch).await;
                recorder.complete(
                    id,
                    match &result {
                        Ok(value) => Out::Value(value.as_deref().map(decode_payload)),
                        Err(e) => Out::of_error(e),
                    },
                );
            }
        }
        Ok::<(), String>(())
    })
}

/// Check the history in `dir/history` again (a finished run's).
pub fn check_dir(dir: &Path) -> Result<(Report, History), String> {
    let history = History::from_events(history::read_dir(&dir.join("history"))?)?;
    Ok((checker::check(&history), history))
}
