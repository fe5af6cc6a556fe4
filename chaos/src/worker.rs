//! An engine process: the chaos binary re-invoked as `worker`.
//!
//! It runs some *engines* and some *coordinators*, each a task with its own
//! handle (its own instance id: `w<slot>.<incarnation>/e<n>` or `/c<n>`),
//! and records every call in its history file, until the run's deadline.
//!
//! - An **engine** takes over by allocating a version above every version
//!   allocated before (a shared counter: the first free number among files
//!   created with `O_EXCL`) and raising the fence to it, half the time
//!   with `persist_authoritative_version`, half with
//!   `set_authoritative_version` and its next write (the contract's two
//!   ways). It restores from `latest_committed_epoch` (reading that epoch's
//!   partials) and runs the checkpoint loop: write every vnode of epoch `e`
//!   at its version, with unique payloads, at once; `epoch_complete(e,
//!   all)`; read every partial back once the epoch is sealed, by itself or
//!   by another; `prune_before(e - 2)`. Writes that fail with `Io` are
//!   replayed once with the same bytes, a seal that fails with `Io` is
//!   asked again. Now and then it takes over again, deposing whoever leads.
//!   A deposed engine (refused with `StaleVersion`) takes over again at
//!   once a third of the time, and otherwise stays a **zombie** for one to
//!   four cycles: it keeps writing and sealing at its old version. After
//!   a cycle that failed (`Io`, or a gate still missing partials) it backs
//!   off for 50 to 400 ms, as an engine would, instead of spinning through
//!   an outage.
//! - A **coordinator** (a handle never told a version) races the gate: it
//!   reads the latest sealed epoch and its partials, then asks
//!   `epoch_complete` for the next epoch a few times, reading the partials
//!   back when it wins; it backs off likewise when the store fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use laminar_state::BackendConfig;
use laminar_state_api::{StateBackend, StateBackendError};
use tokio::task::JoinSet;

use crate::broken::{Breakage, Broken};
use crate::history::{Op, Outcome, Recorder, decode_payload, encode_payload, now_ns};

/// What a worker is told on its command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The run's directory: `history/`, `versions/`, `config-<slot>.json`.
    pub dir: PathBuf,
    /// The engine process's slot.
    pub slot: usize,
    /// How many times the slot was started before.
    pub incarnation: u32,
    /// Engine tasks.
    pub engines: usize,
    /// Coordinator tasks.
    pub coordinators: usize,
    /// Vnodes per epoch.
    pub vnodes: u32,
    /// The seed of this process's choices.
    pub seed: u64,
    /// Stop at this CLOCK_MONOTONIC instant.
    pub deadline_ns: u64,
    /// Break the backend this way.
    pub broken: Option<Breakage>,
}

impl WorkerArgs {
    /// The command-line arguments that give these values to [`parse`](Self::parse).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "worker".to_owned(),
            format!("--dir={}", self.dir.display()),
            format!("--slot={}", self.slot),
            format!("--incarnation={}", self.incarnation),
            format!("--engines={}", self.engines),
            format!("--coordinators={}", self.coordinators),
            format!("--vnodes={}", self.vnodes),
            format!("--seed={}", self.seed),
            format!("--deadline-ns={}", self.deadline_ns),
        ];
        if let Some(breakage) = self.broken {
            args.push(format!("--broken={}", breakage.name()));
        }
        args
    }

    /// Parse what [`to_args`](Self::to_args) made (without `worker`).
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut parsed = Self {
            dir: PathBuf::new(),
            slot: 0,
            incarnation: 0,
            engines: 1,
            coordinators: 1,
            vnodes: 8,
            seed: 0,
            deadline_ns: 0,
            broken: None,
        };
        for arg in args {
            let (name, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("worker: expected --name=value, got {arg:?}"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("worker: {name} wants a number, got {value:?}"))
            };
            match name {
                "--dir" => parsed.dir = PathBuf::from(value),
                "--slot" => parsed.slot = number()? as usize,
                "--incarnation" => parsed.incarnation = number()? as u32,
                "--engines" => parsed.engines = number()? as usize,
                "--coordinators" => parsed.coordinators = number()? as usize,
                "--vnodes" => parsed.vnodes = number()? as u32,
                "--seed" => parsed.seed = number()?,
                "--deadline-ns" => parsed.deadline_ns = number()?,
                "--broken" => parsed.broken = Some(Breakage::parse(value)?),
                other => return Err(format!("worker: unknown argument {other}")),
            }
        }
        Ok(parsed)
    }

    /// The process's name in the history.
    pub fn process(&self) -> String {
        format!("w{}.{}", self.slot, self.incarnation)
    }
}

/// The backend configuration file of `slot`.
pub fn config_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("config-{slot}.json"))
}

/// Run the worker until the deadline.
pub fn main(args: WorkerArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(config_path(&args.dir, args.slot))
        .map_err(|e| format!("worker: cannot read its config: {e}"))?;
    let config: BackendConfig =
        serde_json::from_str(&text).map_err(|e| format!("worker: bad config: {e}"))?;
    let recorder = Arc::new(
        Recorder::open(&args.dir.join("history"), &args.process())
            .map_err(|e| format!("worker: cannot open its history: {e}"))?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("worker: no runtime: {e}"))?;
    // Die with the orchestrator: a worker whose parent is gone stops.
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(3);
            }
        }
    });
    runtime.block_on(async move {
        let ctx = Arc::new(Ctx {
            recorder,
            deadline_ns: args.deadline_ns,
            vnodes: args.vnodes,
            versions: args.dir.join("versions"),
        });
        let mut roles = JoinSet::new();
        let mut rng = fastrand::Rng::with_seed(
            args.seed ^ ((args.slot as u64) << 32) ^ u64::from(args.incarnation),
        );
        let prefix = args.process();
        let names = (0..args.engines)
            .map(|n| (format!("{prefix}/e{n}"), true))
            .chain((0..args.coordinators).map(|n| (format!("{prefix}/c{n}"), false)));
        for (inst, engine) in names {
            let Some(backend) = open(&config, &inst, args.vnodes, &ctx).await else {
                return;
            };
            let backend = match args.broken {
                Some(breakage) => Broken::wrap(backend, breakage),
                None => backend,
            };
            let handle = Arc::new(Handle {
                inst,
                backend,
                told: AtomicU64::new(0),
                payloads: AtomicU64::new(0),
            });
            let (ctx, role_rng) = (Arc::clone(&ctx), rng.fork());
            if engine {
                roles.spawn(engine_loop(ctx, handle, role_rng));
            } else {
                roles.spawn(coordinator_loop(ctx, handle, role_rng));
            }
        }
        while roles.join_next().await.is_some() {}
    });
    Ok(())
}

/// Open a handle, retrying (a redb file locked by another process, a
/// server restarting) until the deadline.
async fn open(
    config: &BackendConfig,
    inst: &str,
    vnodes: u32,
    ctx: &Ctx,
) -> Option<Arc<dyn StateBackend>> {
    let mut said = false;
    while ctx.running() {
        match config.open(inst, vnodes).await {
            Ok(backend) => return Some(backend),
            Err(e) => {
                if !said {
                    eprintln!("{inst}: cannot open the store yet ({e}); retrying");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

struct Ctx {
    recorder: Arc<Recorder>,
    deadline_ns: u64,
    vnodes: u32,
    versions: PathBuf,
}

impl Ctx {
    fn running(&self) -> bool {
        now_ns() < self.deadline_ns
    }
}

/// A version above every version allocated before: the first number whose
/// file `create_new` creates. The files form a prefix `1..=n` (each is
/// created only when its predecessor exists), so the count of files is the
/// highest version, and each allocation is above every earlier one.
fn allocate_version(dir: &Path) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let _ = std::fs::create_dir_all(dir);
    let mut next = LAST.load(Ordering::Relaxed);
    if next == 0 {
        next = std::fs::read_dir(dir).map_or(0, |d| d.count() as u64);
    }
    loop {
        next += 1;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{next:012}")))
        {
            Ok(_) => {
                LAST.fetch_max(next, Ordering::Relaxed);
                return next;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("cannot allocate a version in {}: {e}", dir.display()),
        }
    }
}

/// One handle and its recorded calls.
struct Handle {
    inst: String,
    backend: Arc<dyn StateBackend>,
    /// The highest version this handle was told (or asked to persist).
    told: AtomicU64,
    payloads: AtomicU64,
}

type Answer<T> = Result<T, StateBackendError>;

fn outcome<T>(result: &Answer<T>, ok: impl FnOnce(&T) -> Outcome) -> Outcome {
    match result {
        Ok(value) => ok(value),
        Err(e) => Outcome::of_error(e),
    }
}

impl Handle {
    fn new_payload(&self) -> String {
        format!(
            "{}#{}",
            self.inst,
            self.payloads.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn write(
        &self,
        ctx: &Ctx,
        vnode: u32,
        epoch: u64,
        version: u64,
        payload: &str,
        filler: usize,
    ) -> Answer<()> {
        let bytes = Bytes::from(encode_payload(payload, filler));
        let op = Op::Write {
            vnode,
            epoch,
            version,
            payload: payload.to_owned(),
        };
        let id = ctx.recorder.invoke(&self.inst, op);
        let result = self
            .backend
            .write_partial(vnode, epoch, version, bytes)
            .await;
        ctx.recorder.complete(id, outcome(&result, |_| Outcome::Ok));
        result
    }

    async fn read(&self, ctx: &Ctx, vnode: u32, epoch: u64) -> Answer<Option<Bytes>> {
        let id = ctx.recorder.invoke(&self.inst, Op::Read { vnode, epoch });
        let result = self.backend.read_partial(vnode, epoch).await;
        ctx.recorder.complete(
            id,
            outcome(&result, |value| {
                Outcome::Value(value.as_deref().map(decode_payload))
            }),
        );
        result
    }

    async fn seal(&self, ctx: &Ctx, epoch: u64) -> Answer<bool> {
        let vnodes: Vec<u32> = (0..ctx.vnodes).collect();
        let op = Op::Seal {
            epoch,
            vnodes: ctx.vnodes,
            told: self.told.load(Ordering::Relaxed),
        };
        let id = ctx.recorder.invoke(&self.inst, op);
        let result = self.backend.epoch_complete(epoch, &vnodes).await;
        ctx.recorder
            .complete(id, outcome(&result, |won| Outcome::Sealed(*won)));
        result
    }

    async fn prune(&self, ctx: &Ctx, before: u64) -> Answer<()> {
        let id = ctx.recorder.invoke(&self.inst, Op::Prune { before });
        let result = self.backend.prune_before(before).await;
        ctx.recorder.complete(id, outcome(&result, |_| Outcome::Ok));
        result
    }

    fn set_fence(&self, ctx: &Ctx, version: u64) {
        self.told.fetch_max(version, Ordering::Relaxed);
        let id = ctx.recorder.invoke(&self.inst, Op::SetFence { version });
        self.backend.set_authoritative_version(version);
        ctx.recorder.complete(id, Outcome::Ok);
    }

    async fn persist_fence(&self, ctx: &Ctx, version: u64) -> Answer<()> {
        self.told.fetch_max(version, Ordering::Relaxed);
        let id = ctx
            .recorder
            .invoke(&self.inst, Op::PersistFence { version });
        let result = self.backend.persist_authoritative_version(version).await;
        ctx.recorder.complete(id, outcome(&result, |_| Outcome::Ok));
        result
    }

    async fn latest(&self, ctx: &Ctx) -> Answer<Option<u64>> {
        let id = ctx.recorder.invoke(&self.inst, Op::Latest);
        let result = self.backend.latest_committed_epoch().await;
        ctx.recorder
            .complete(id, outcome(&result, |l| Outcome::Latest(*l)));
        result
    }

    /// Read every vnode of `epoch` at once.
    async fn read_all(self: &Arc<Self>, ctx: &Arc<Ctx>, epoch: u64) {
        let mut reads = JoinSet::new();
        for vnode in 0..ctx.vnodes {
            let (handle, ctx) = (Arc::clone(self), Arc::clone(ctx));
            reads.spawn(async move {
                let _ = handle.read(&ctx, vnode, epoch).await;
            });
        }
        while reads.join_next().await.is_some() {}
    }
}

/// How a checkpoint cycle ended.
#[derive(Debug, PartialEq, Eq)]
enum Cycle {
    Sealed,
    Lost,
    Deposed,
    Incomplete,
    Failed,
}

async fn pause(rng: &mut fastrand::Rng, ms: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.u64(ms))).await;
}

async fn engine_loop(ctx: Arc<Ctx>, handle: Arc<Handle>, mut rng: fastrand::Rng) {
    let mut version = 0;
    let mut epoch = 1;
    let mut zombie_cycles = 0u32;
    let mut take_over = true;
    while ctx.running() {
        if take_over {
            take_over = false;
            version = allocate_version(&ctx.versions);
            if rng.bool() {
                let _ = handle.persist_fence(&ctx, version).await;
            } else {
                handle.set_fence(&ctx, version);
            }
            if let Ok(latest) = handle.latest(&ctx).await {
                if let Some(latest) = latest {
                    handle.read_all(&ctx, latest).await;
                }
                epoch = latest.map_or(1, |l| l + 1);
            }
        }
        let zombie = zombie_cycles > 0;
        let cycle = checkpoint(&ctx, &handle, epoch, version, zombie, &mut rng).await;
        if cycle == Cycle::Deposed && !zombie {
            if rng.u32(0..3) == 0 {
                take_over = true;
            } else {
                zombie_cycles = rng.u32(1..5);
            }
        } else if zombie {
            zombie_cycles -= 1;
            take_over = zombie_cycles == 0;
        } else if rng.u32(0..25) == 0 {
            take_over = true;
        }
        epoch += 1;
        if matches!(cycle, Cycle::Failed | Cycle::Incomplete) {
            // The store is unreachable or slow: back off, as an engine
            // would, instead of spinning through failures.
            pause(&mut rng, 50..400).await;
        }
        pause(&mut rng, 2..20).await;
    }
}

/// One checkpoint: write every vnode of `epoch`, seal, read back, prune.
async fn checkpoint(
    ctx: &Arc<Ctx>,
    handle: &Arc<Handle>,
    epoch: u64,
    version: u64,
    zombie: bool,
    rng: &mut fastrand::Rng,
) -> Cycle {
    let mut writes = JoinSet::new();
    for vnode in 0..ctx.vnodes {
        let (handle, ctx) = (Arc::clone(handle), Arc::clone(ctx));
        let payload = handle.new_payload();
        let filler = rng.usize(0..200);
        writes.spawn(async move {
            let result = handle
                .write(&ctx, vnode, epoch, version, &payload, filler)
                .await;
            (vnode, payload, filler, result)
        });
    }
    let mut stale = false;
    let mut failed = Vec::new();
    while let Some(done) = writes.join_next().await {
        let Ok((vnode, payload, filler, result)) = done else {
            continue;
        };
        match result {
            Ok(()) => {}
            Err(StateBackendError::StaleVersion { .. }) => stale = true,
            Err(_) => failed.push((vnode, payload, filler)),
        }
    }
    if stale && !zombie {
        return Cycle::Deposed;
    }
    // Replay what failed, with the same bytes (writes are idempotent).
    for (vnode, payload, filler) in failed {
        if !ctx.running() {
            return Cycle::Failed;
        }
        let _ = handle
            .write(ctx, vnode, epoch, version, &payload, filler)
            .await;
    }
    let mut sealed = handle.seal(ctx, epoch).await;
    if matches!(sealed, Err(StateBackendError::Io(_))) && ctx.running() {
        // Asked again after a lost answer, a seal comes back won.
        sealed = handle.seal(ctx, epoch).await;
    }
    let cycle = match sealed {
        Ok(true) => Cycle::Sealed,
        Err(StateBackendError::SplitBrainCommit { .. }) => Cycle::Lost,
        Ok(false) => return Cycle::Incomplete,
        Err(StateBackendError::StaleVersion { .. }) => return Cycle::Deposed,
        Err(_) => return Cycle::Failed,
    };
    handle.read_all(ctx, epoch).await;
    if epoch > 2 {
        let _ = handle.prune(ctx, epoch - 2).await;
    }
    cycle
}

async fn coordinator_loop(ctx: Arc<Ctx>, handle: Arc<Handle>, mut rng: fastrand::Rng) {
    while ctx.running() {
        let Ok(latest) = handle.latest(&ctx).await else {
            pause(&mut rng, 50..400).await;
            continue;
        };
        {
            if let Some(latest) = latest {
                handle.read_all(&ctx, latest).await;
            }
            let target = latest.map_or(1, |l| l + 1);
            for _ in 0..rng.u32(1..6) {
                if !ctx.running() {
                    break;
                }
                match handle.seal(&ctx, target).await {
                    Ok(true) => {
                        handle.read_all(&ctx, target).await;
                        break;
                    }
                    Ok(false) => pause(&mut rng, 1..10).await,
                    Err(StateBackendError::Io(_)) => {
                        pause(&mut rng, 50..400).await;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        pause(&mut rng, 5..40).await;
    }
}
