//! Durability (P10): everything acknowledged survives dropping every handle
//! and reopening the store, and survives a writer process killed with
//! SIGKILL at a random moment.
//!
//! The crash half re-executes the running binary as a child writer (the
//! caller says how, see [`ChildCommand`]): the child attaches to the store by
//! its locator, writes, seals and raises the fence, and prints one line per
//! acknowledgement. The parent kills it, reopens the store and checks every
//! acknowledged line. Any backend whose factory can attach by locator gets
//! this for free.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::factory::BackendFactory;
use crate::runner::{Checked, DEFAULT_KILLS, ensure, env_u32, run_seed, splitmix64};
use crate::support::{Context, describe, fresh_store, open, payload, read, unique_tag, write};

/// The environment variable that turns a re-executed binary into the crash
/// property's child writer.
pub const CHILD_ENV: &str = "LAMINAR_CONFORMANCE_CRASH_CHILD";

const CHILD_VNODES: u32 = 8;
const CHILD_ID: &str = "crash-writer";
const ACK_PREFIX: &str = "LAMINAR-ACK ";
/// How long the parent waits for the child's acknowledgements before it
/// declares the child stuck.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start this same property in a child process: arguments for the
/// current executable. The conformance macro fills it in for libtest; a
/// custom harness passes whatever makes it call [`crate::run_all`] (or the
/// crash property) again with the same factory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    /// Arguments after the executable's path.
    pub args: Vec<String>,
}

impl ChildCommand {
    /// Re-run one libtest test by its full name.
    pub fn libtest(test_name: &str) -> Self {
        Self {
            args: vec![
                test_name.to_owned(),
                "--exact".into(),
                "--nocapture".into(),
                "--test-threads=1".into(),
            ],
        }
    }

    /// Re-run the current process with the arguments it was given.
    pub fn same_args() -> Self {
        Self {
            args: std::env::args().skip(1).collect(),
        }
    }
}

/// P10 (reopen): write partials, seal epochs from two instances, raise the
/// fence, drop every handle, reopen the store: every partial, every seal with
/// its committer, and the fence are still there.
pub async fn p10_durability_reopen(factory: &dyn BackendFactory) -> Checked {
    let store = fresh_store(factory).await?;
    let tag = unique_tag("p10");
    let (first_id, second_id) = (format!("{tag}-a"), format!("{tag}-b"));
    let seed = run_seed();
    let key_payload = |vnode: u32, epoch: u64| {
        payload(
            seed ^ (epoch << 8) ^ u64::from(vnode),
            (epoch as usize * 97 + vnode as usize * 13) % 3000,
        )
    };
    const VNODES: u32 = 6;
    const EPOCHS: u64 = 6;
    let all: Vec<u32> = (0..VNODES).collect();
    {
        let first = open(&*store, &first_id, VNODES).await?;
        let second = open(&*store, &second_id, VNODES).await?;
        for epoch in 0..EPOCHS {
            for vnode in 0..VNODES {
                write(&first, vnode, epoch, 0, &key_payload(vnode, epoch)).await?;
            }
            let sealer = if epoch % 2 == 0 { &first } else { &second };
            if epoch < EPOCHS - 1 {
                ensure!(
                    sealer
                        .epoch_complete(epoch, &all)
                        .await
                        .ctx(|| format!("epoch_complete({epoch})"))?,
                    "epoch {epoch} did not seal"
                );
            }
        }
        first.set_authoritative_version(42);
        write(&first, 0, EPOCHS, 42, &key_payload(0, EPOCHS)).await?;
    }
    store.reopen().await.ctx(|| "reopen()".into())?;

    let first = open(&*store, &first_id, VNODES).await?;
    let second = open(&*store, &second_id, VNODES).await?;
    for epoch in 0..EPOCHS {
        for vnode in 0..VNODES {
            ensure!(
                read(&second, vnode, epoch).await?.as_ref() == Some(&key_payload(vnode, epoch)),
                "after reopen, (vnode {vnode}, epoch {epoch}) is lost or changed"
            );
        }
    }
    ensure!(
        read(&second, 0, EPOCHS).await?.as_ref() == Some(&key_payload(0, EPOCHS)),
        "the write at the raised fence was lost"
    );
    for epoch in 0..EPOCHS - 1 {
        let (winner, loser, winner_id) = if epoch % 2 == 0 {
            (&first, &second, &first_id)
        } else {
            (&second, &first, &second_id)
        };
        let again = winner.epoch_complete(epoch, &all).await;
        ensure!(
            matches!(again, Ok(true)),
            "after reopen, the sealer of epoch {epoch} got {}",
            describe(&again)
        );
        let other = loser.epoch_complete(epoch, &all).await;
        ensure!(
            matches!(&other, Err(StateBackendError::SplitBrainCommit { committer, .. }) if committer == winner_id),
            "after reopen, epoch {epoch}'s seal does not name {winner_id}: {}",
            describe(&other)
        );
    }
    let stale = second
        .write_partial(1, EPOCHS, 41, Bytes::from_static(b"stale"))
        .await;
    ensure!(
        matches!(stale, Err(StateBackendError::StaleVersion { caller: 41, authoritative }) if authoritative >= 42),
        "after reopen the fence 42 is lost: a write at 41 gave {}",
        describe(&stale)
    );
    if factory.capabilities().recovery_queries {
        let latest = second
            .latest_committed_epoch()
            .await
            .ctx(|| "latest_committed_epoch()".into())?;
        ensure!(
            latest == Some(EPOCHS - 2),
            "after reopen latest_committed_epoch() = {latest:?}, expected Some({})",
            EPOCHS - 2
        );
    }
    // A raise made durable by `persist_authoritative_version` alone, with no
    // write or seal after it, survives a reopen too.
    first
        .persist_authoritative_version(50)
        .await
        .ctx(|| "persist_authoritative_version(50)".into())?;
    drop((first, second));
    store.reopen().await.ctx(|| "the second reopen()".into())?;
    let fresh = open(&*store, &format!("{tag}-c"), VNODES).await?;
    let stale = fresh
        .write_partial(2, EPOCHS, 49, Bytes::from_static(b"stale"))
        .await;
    ensure!(
        matches!(stale, Err(StateBackendError::StaleVersion { caller: 49, authoritative }) if authoritative >= 50),
        "persist_authoritative_version(50) returned, but after a reopen a write at 49 gave {}: the raise was not durable",
        describe(&stale)
    );
    Ok(())
}

/// What the child acknowledged, as the parent collects it.
#[derive(Default)]
struct Acknowledged {
    writes: BTreeSet<(u64, u32)>,
    seals: BTreeSet<u64>,
    fence: u64,
    lines: u64,
}

/// P10 (crash): a child process writes (8 vnodes at once), seals and raises
/// the fence in a loop and is killed with SIGKILL at a random moment, several
/// times on the same store. After each kill, the reopened store holds every
/// write, seal and fence value the child acknowledged.
pub async fn p10_durability_crash(factory: &dyn BackendFactory, child: &ChildCommand) -> Checked {
    let store = fresh_store(factory).await?;
    let Some(locator) = store.locator() else {
        return Err(
            "the backend claims cross_process_reopen, but its test store has no locator".into(),
        );
    };
    let seed = run_seed();
    let kills = factory
        .crash_kills(env_u32("LAMINAR_CONFORMANCE_KILLS", DEFAULT_KILLS))
        .max(1);
    let mut acked = Acknowledged::default();
    let mut next_epoch = 0u64;
    for kill in 0..u64::from(kills) {
        let wanted = 1 + splitmix64(seed ^ kill) % 300;
        run_child_until_killed(
            &factory.name(),
            &locator,
            next_epoch,
            seed,
            wanted,
            child,
            &mut acked,
        )
        .map_err(|e| format!("kill {kill}: {e}"))?;
        store.reopen().await.ctx(|| "reopen()".into())?;
        verify_acknowledged(factory, &*store, seed, &acked)
            .await
            .map_err(|e| {
                format!(
                    "after kill {kill} ({} acknowledgements so far): {e}",
                    acked.lines
                )
            })?;
        next_epoch = acked
            .writes
            .iter()
            .map(|&(epoch, _)| epoch + 1)
            .max()
            .unwrap_or(next_epoch);
    }
    Ok(())
}

fn run_child_until_killed(
    backend: &str,
    locator: &str,
    first_epoch: u64,
    seed: u64,
    wanted_acks: u64,
    child: &ChildCommand,
    acked: &mut Acknowledged,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let mut process = Command::new(&exe)
        .args(&child.args)
        .env(
            CHILD_ENV,
            format!("{backend}\tcrash\t{first_epoch}\t{seed:x}\t{locator}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the child writer {}: {e}", exe.display()))?;
    let stdout = process.stdout.take().expect("stdout is piped");
    let stderr = process.stderr.take().expect("stderr is piped");
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(200)
        {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut seen = 0;
    let mut early_exit = false;
    while seen < wanted_acks {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => seen += u64::from(record(&line, acked)?),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = process.kill();
                let _ = process.wait();
                return Err(format!(
                    "the child acknowledged only {seen} of {wanted_acks} operations in {CHILD_TIMEOUT:?}"
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                early_exit = true;
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_micros(splitmix64(seed ^ seen) % 3_000));
    // std's kill is SIGKILL on Unix: no destructor, flush or atexit runs.
    let _ = process.kill();
    let status = process
        .wait()
        .map_err(|e| format!("waiting for the killed child: {e}"))?;
    // Lines the child printed before it died were acknowledged too.
    for line in lines_rx.iter() {
        record(&line, acked)?;
    }
    let _ = reader.join();
    let stderr_text = stderr_reader.join().unwrap_or_default();
    if early_exit {
        return Err(format!(
            "the child writer exited ({status}) before it was killed; its stderr:\n{stderr_text}"
        ));
    }
    Ok(())
}

/// Parse one line of the child's stdout; `true` if it was an acknowledgement.
fn record(line: &str, acked: &mut Acknowledged) -> Result<bool, String> {
    let Some(ack) = line.strip_prefix(ACK_PREFIX) else {
        return Ok(false);
    };
    let fields: Vec<&str> = ack.split_whitespace().collect();
    let number = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("unreadable child line {line:?}"))
    };
    match fields.first() {
        Some(&"write") => {
            acked.writes.insert((number(2)?, number(1)? as u32));
        }
        Some(&"seal") => {
            acked.seals.insert(number(1)?);
        }
        Some(&"fence") => acked.fence = acked.fence.max(number(1)?),
        _ => return Err(format!("unknown child line {line:?}")),
    }
    acked.lines += 1;
    Ok(true)
}

fn child_payload(seed: u64, vnode: u32, epoch: u64) -> Bytes {
    let key = seed ^ (epoch << 8) ^ u64::from(vnode);
    payload(key, (splitmix64(key) % 4096) as usize)
}

async fn verify_acknowledged(
    factory: &dyn BackendFactory,
    store: &dyn crate::factory::TestStore,
    seed: u64,
    acked: &Acknowledged,
) -> Checked {
    let verifier = open(store, &unique_tag("crash-verifier"), CHILD_VNODES).await?;
    for &(epoch, vnode) in &acked.writes {
        let held = read(&verifier, vnode, epoch).await?;
        ensure!(
            held.as_ref() == Some(&child_payload(seed, vnode, epoch)),
            "acknowledged write (vnode {vnode}, epoch {epoch}) is {}",
            if held.is_some() { "corrupted" } else { "lost" }
        );
    }
    let all: Vec<u32> = (0..CHILD_VNODES).collect();
    for &epoch in &acked.seals {
        let result = verifier.epoch_complete(epoch, &all).await;
        ensure!(
            matches!(&result, Err(StateBackendError::SplitBrainCommit { committer, .. }) if committer == CHILD_ID),
            "the acknowledged seal of epoch {epoch} is lost: another instance got {}",
            describe(&result)
        );
    }
    if acked.fence > 1 {
        let below = acked.fence - 1;
        let result = verifier
            .write_partial(0, u64::MAX, below, Bytes::from_static(b"stale"))
            .await;
        ensure!(
            matches!(result, Err(StateBackendError::StaleVersion { authoritative, .. }) if authoritative >= acked.fence),
            "the acknowledged fence {} is lost: a write at {below} gave {}",
            acked.fence,
            describe(&result)
        );
    }
    if factory.capabilities().recovery_queries
        && let Some(&highest) = acked.seals.last()
    {
        let latest = verifier
            .latest_committed_epoch()
            .await
            .ctx(|| "latest_committed_epoch()".into())?;
        ensure!(
            latest.is_some_and(|l| l >= highest),
            "latest_committed_epoch() = {latest:?} after epoch {highest} was acknowledged as sealed"
        );
    }
    Ok(())
}

/// If this process is a crash child for `factory`'s backend, run the child
/// writer and never return; otherwise return at once.
pub(crate) async fn run_child_if_requested(factory: &dyn BackendFactory) {
    let Ok(value) = std::env::var(CHILD_ENV) else {
        return;
    };
    let Some(spec) = value.strip_prefix(&format!("{}\t", factory.name())) else {
        return;
    };
    let outcome = match spec.split_once('\t') {
        Some(("crash", spec)) => child_writer(factory, spec).await,
        Some(("raise", spec)) => child_raiser(factory, spec).await,
        _ => Err(format!("bad {CHILD_ENV} value {value:?}")),
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("conformance child failed: {error}");
            3
        }
    };
    std::process::exit(code);
}

/// The bytes the raising child writes.
const RAISED: &[u8] = b"written by the raising process";

/// P6 across processes: a zombie handle in this process, a new leader in a
/// child process that raises the fence, writes and exits. The zombie, never
/// told, is refused with the child's fence, and cannot overwrite the child's
/// data.
pub async fn p06_shared_fence_across_processes(
    factory: &dyn BackendFactory,
    child: &ChildCommand,
) -> Checked {
    const STALE: u64 = 2;
    const FENCE: u64 = 10;
    let store = fresh_store(factory).await?;
    let Some(locator) = store.locator() else {
        return Err("the backend claims cross_process, but its test store has no locator".into());
    };
    let zombie = open(&*store, &unique_tag("p06x-zombie"), 4).await?;
    write(
        &zombie,
        1,
        1,
        STALE,
        &Bytes::from_static(b"zombie, before the rotation"),
    )
    .await?;

    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let mut raiser = Command::new(&exe)
        .args(&child.args)
        .env(
            CHILD_ENV,
            format!("{}\traise\t{FENCE}\t{locator}", factory.name()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the raising child {}: {e}", exe.display()))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match raiser.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(None) => {
                let _ = raiser.kill();
                let _ = raiser.wait();
                return Err(format!(
                    "the raising child did not finish within {CHILD_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("waiting for the raising child: {e}")),
        }
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = raiser.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        return Err(format!("the raising child failed ({status}):\n{stderr}"));
    }

    let refused = zombie
        .write_partial(1, 1, STALE, Bytes::from_static(b"zombie, after"))
        .await;
    ensure!(
        crate::support::is_stale(&refused, STALE, FENCE),
        "after another process raised the fence to {FENCE}, a write at {STALE} gave {}",
        describe(&refused)
    );
    let overwrite = zombie
        .write_partial(0, 1, STALE, Bytes::from_static(b"zombie, overwrite"))
        .await;
    ensure!(
        crate::support::is_stale(&overwrite, STALE, FENCE),
        "the zombie overwrote the other process's data: {}",
        describe(&overwrite)
    );
    ensure!(
        read(&zombie, 0, 1).await?.as_deref() == Some(RAISED),
        "the other process's write is not visible here"
    );
    Ok(())
}

/// The raising child: a new leader in its own process.
async fn child_raiser(factory: &dyn BackendFactory, spec: &str) -> Result<(), String> {
    let (fence, locator) = spec
        .split_once('\t')
        .ok_or_else(|| format!("bad raise spec {spec:?}"))?;
    let fence: u64 = fence
        .parse()
        .map_err(|_| format!("bad fence in {spec:?}"))?;
    let store = factory
        .attach_store(locator)
        .await
        .ctx(|| format!("attach_store({locator:?})"))?;
    let leader = open(&*store, "raising-leader", 4).await?;
    leader.set_authoritative_version(fence);
    write(&leader, 0, 1, fence, &Bytes::from_static(RAISED)).await
}

async fn child_writer(factory: &dyn BackendFactory, spec: &str) -> Result<(), String> {
    let mut parts = spec.splitn(3, '\t');
    let (Some(first_epoch), Some(seed), Some(locator)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad {CHILD_ENV} value {spec:?}"));
    };
    let first_epoch: u64 = first_epoch
        .parse()
        .map_err(|_| format!("bad first epoch in {spec:?}"))?;
    let seed = u64::from_str_radix(seed, 16).map_err(|_| format!("bad seed in {spec:?}"))?;
    let store = factory
        .attach_store(locator)
        .await
        .ctx(|| format!("attach_store({locator:?})"))?;
    let handle: Arc<dyn StateBackend> = open(&*store, CHILD_ID, CHILD_VNODES).await?;
    let all: Vec<u32> = (0..CHILD_VNODES).collect();
    let mut version = handle.authoritative_version().max(1);
    let ack = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ACK_PREFIX}{line}");
        let _ = out.flush();
    };
    for epoch in first_epoch..first_epoch + 100_000 {
        let raise = epoch % 5 == 0;
        if raise {
            version += 1;
            handle.set_authoritative_version(version);
        }
        let mut writers = tokio::task::JoinSet::new();
        for vnode in 0..CHILD_VNODES {
            let handle = Arc::clone(&handle);
            writers.spawn(async move {
                let bytes = child_payload(seed, vnode, epoch);
                loop {
                    let current = handle.authoritative_version().max(version);
                    match handle
                        .write_partial(vnode, epoch, current, bytes.clone())
                        .await
                    {
                        Ok(()) => return Ok((vnode, current)),
                        // Another run of the child raised the fence further
                        // than this one knows: catch up and retry.
                        Err(StateBackendError::StaleVersion { authoritative, .. }) => {
                            handle.set_authoritative_version(authoritative)
                        }
                        Err(other) => {
                            return Err(format!("write ({vnode}, {epoch}) failed: {other}"));
                        }
                    }
                }
            });
        }
        while let Some(joined) = writers.join_next().await {
            let (vnode, at) = joined.map_err(|e| format!("writer task panicked: {e}"))??;
            ack(format!("write {vnode} {epoch}"));
            version = version.max(at);
        }
        if raise {
            // The raise is durable once a write at it has been acknowledged.
            ack(format!("fence {version}"));
        }
        if handle
            .epoch_complete(epoch, &all)
            .await
            .ctx(|| format!("epoch_complete({epoch})"))?
        {
            ack(format!("seal {epoch}"));
        } else {
            return Err(format!(
                "epoch {epoch} did not seal with every write acknowledged"
            ));
        }
    }
    Ok(())
}
