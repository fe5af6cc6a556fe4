//! How cost grows: the commit gate's latency as the vnodes of an epoch
//! grow, and a prune's as the epochs below its bound grow, each next to
//! the raw store doing the same work on the same sizes in the same run,
//! and, where the store is networked and the bench can count, the requests
//! each side sends.
//!
//! A backend's bench supplies the raw side as closures ([`RawSide`]: write
//! an epoch's partials; check them all and put the marker; delete epochs); this module writes the backend's side through the trait,
//! times both sides alternately, and names the rows the same way for every
//! backend, so the summary can draw them as one chart (latency against
//! size, log axes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};

use crate::{Mode, Row};

/// The sizes a growth run measures.
#[derive(Debug, Clone)]
pub struct Growth {
    /// Vnodes per epoch of the gate rows.
    pub gate_vnodes: Vec<u32>,
    /// Epochs below the bound of the prune rows.
    pub prune_epochs: Vec<u64>,
    /// Vnodes per epoch of the prune rows.
    pub prune_epoch_vnodes: u32,
    /// Partials written at once while filling an epoch.
    pub in_flight: usize,
}

impl Growth {
    /// The sizes in a full run (256 to 16,384 vnodes; 10 to 1,000
    /// epochs of 16 vnodes), tiny ones in a smoke run.
    pub fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::Full => Self {
                gate_vnodes: vec![256, 1_024, 4_096, 16_384],
                prune_epochs: vec![10, 100, 1_000],
                prune_epoch_vnodes: 16,
                in_flight: 64,
            },
            Mode::Smoke => Self {
                gate_vnodes: vec![4, 16],
                prune_epochs: vec![2, 5],
                prune_epoch_vnodes: 2,
                in_flight: 4,
            },
        }
    }

    /// Timed rounds at `size` (vnodes or epochs): enough that small sizes
    /// are not one noisy sample, few enough that the largest stays within
    /// minutes on a networked store.
    fn rounds(size: u64) -> u32 {
        match size {
            0..=300 => 5,
            301..=2_000 => 3,
            _ => 1,
        }
    }
}

/// A boxed future: what the raw side's closures return.
pub type Step<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store's count of requests served so far, for the request rows
/// (redis: `total_commands_processed`; S3: requests through a counting
/// proxy). Reading it may itself count as one request; the rows subtract
/// the cost of a reading taken back to back.
pub type RequestCounter<'a> = &'a (dyn Fn() -> Step<'static, u64> + Sync);

/// Write a one-byte partial for each of `vnodes` vnodes of `epoch`,
/// `in_flight` writes at a time; panics if one fails.
pub async fn fill(backend: &Arc<dyn StateBackend>, epoch: u64, vnodes: u32, in_flight: usize) {
    fill_with(backend, epoch, 0..vnodes, in_flight, |_| {
        Bytes::from_static(b"p")
    })
    .await;
}

/// Write `payload(vnode)` as the partial of each of `vnodes` of `epoch`
/// (at version 0), `in_flight` writes at a time; panics if one fails.
pub async fn fill_with(
    backend: &Arc<dyn StateBackend>,
    epoch: u64,
    vnodes: impl IntoIterator<Item = u32>,
    in_flight: usize,
    payload: impl Fn(u32) -> Bytes,
) {
    let mut writes = tokio::task::JoinSet::new();
    for vnode in vnodes {
        let (backend, bytes) = (Arc::clone(backend), payload(vnode));
        writes.spawn(async move { (vnode, backend.write_partial(vnode, epoch, 0, bytes).await) });
        if writes.len() >= in_flight {
            let done = writes.join_next().await.expect("a write in flight");
            written(done);
        }
    }
    while let Some(done) = writes.join_next().await {
        written(done);
    }
}

/// A finished write of [`fill_with`]: panics, naming the vnode, if it failed.
fn written(done: Result<(u32, Result<(), StateBackendError>), tokio::task::JoinError>) {
    let (vnode, outcome) = done.expect("the write task");
    outcome.unwrap_or_else(|e| panic!("write_partial({vnode}): {e}"));
}

/// What the raw store does in the growth rows, each step a future that
/// does its work when polled (so that only the work is timed).
pub struct RawSide<'a> {
    /// Write a partial for each of `vnodes` vnodes of `epoch`.
    pub write: &'a (dyn Fn(u64, u32) -> Step<'static> + Sync),
    /// The gate of `epoch` over `vnodes` vnodes: check every partial, then
    /// put the marker (it must seal).
    pub gate: &'a (dyn Fn(u64, u32) -> Step<'static> + Sync),
    /// Delete everything of the epochs `first..end` of `vnodes` vnodes.
    pub prune: &'a (dyn Fn(u64, u64, u32) -> Step<'static> + Sync),
    /// The store's request count, where the bench can read one.
    pub requests: Option<RequestCounter<'a>>,
}

/// Every growth row: [`gate_growth`] on epochs from 2^30, then
/// [`prune_growth`] on epochs from 2^40 (clear of any a bench used before).
pub async fn growth_rows(
    growth: &Growth,
    backend: &Arc<dyn StateBackend>,
    raw: &RawSide<'_>,
) -> Vec<Row> {
    let mut rows = gate_growth(growth, backend, 1 << 30, raw).await;
    rows.extend(prune_growth(growth, backend, 1 << 40, raw).await);
    rows
}

/// The gate at each of `growth.gate_vnodes`, on fresh epochs from
/// `first_epoch` on: both sides' partials written first (not timed), then
/// `epoch_complete` and the raw gate timed one after the other, round by
/// round (round 0 warms up and is not counted). One row a size, `ms`; with
/// a counter, one more of requests per gate.
pub async fn gate_growth(
    growth: &Growth,
    backend: &Arc<dyn StateBackend>,
    first_epoch: u64,
    raw: &RawSide<'_>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut epoch = first_epoch;
    for &vnodes in &growth.gate_vnodes {
        let all: Vec<u32> = (0..vnodes).collect();
        let mut sizes = Rounds::new(u64::from(vnodes), raw.requests);
        for round in 0..=sizes.rounds {
            epoch += 1;
            fill(backend, epoch, vnodes, growth.in_flight).await;
            (raw.write)(epoch, vnodes).await;
            let ours = async {
                let sealed = backend.epoch_complete(epoch, &all).await;
                assert!(sealed.expect("epoch_complete"), "the gate did not seal");
            };
            sizes.time(round, ours, (raw.gate)(epoch, vnodes)).await;
        }
        sizes.rows(&mut rows, &format!("gate growth: {vnodes} vnodes"));
    }
    rows
}

/// A prune of each of `growth.prune_epochs` sealed epochs of
/// `growth.prune_epoch_vnodes` vnodes, from `first_epoch` on: both sides
/// written and sealed first (not timed), then `prune_before` and the raw
/// prune timed, round by round. One row a size, `ms`; with a counter, one
/// more of requests per prune.
pub async fn prune_growth(
    growth: &Growth,
    backend: &Arc<dyn StateBackend>,
    first_epoch: u64,
    raw: &RawSide<'_>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let vnodes = growth.prune_epoch_vnodes;
    let all: Vec<u32> = (0..vnodes).collect();
    let mut first = first_epoch;
    for &epochs in &growth.prune_epochs {
        let mut sizes = Rounds::new(epochs * u64::from(vnodes), raw.requests);
        for round in 0..=sizes.rounds {
            let end = first + epochs;
            for epoch in first..end {
                fill(backend, epoch, vnodes, growth.in_flight).await;
                let sealed = backend.epoch_complete(epoch, &all).await;
                assert!(sealed.expect("epoch_complete"), "the gate did not seal");
                (raw.write)(epoch, vnodes).await;
                (raw.gate)(epoch, vnodes).await;
            }
            let ours = async { backend.prune_before(end).await.expect("prune_before") };
            sizes
                .time(round, ours, (raw.prune)(first, end, vnodes))
                .await;
            let left = backend
                .read_partial(0, end - 1)
                .await
                .expect("read_partial");
            assert!(left.is_none(), "the prune left epoch {} behind", end - 1);
            first = end;
        }
        let name = format!("prune growth: {epochs} epochs x {vnodes} vnodes");
        sizes.rows(&mut rows, &name);
    }
    rows
}

/// The rounds of one size: ours and raw timed one after the other, round 0
/// a warm-up.
struct Rounds<'a> {
    rounds: u32,
    counter: Option<RequestCounter<'a>>,
    ours: Duration,
    raw: Duration,
    /// Requests of the last round, ours then raw (the same every round).
    requests: (u64, u64),
}

impl<'a> Rounds<'a> {
    fn new(size: u64, counter: Option<RequestCounter<'a>>) -> Self {
        Self {
            rounds: Growth::rounds(size),
            counter,
            ours: Duration::ZERO,
            raw: Duration::ZERO,
            requests: (0, 0),
        }
    }

    async fn time(&mut self, round: u32, ours: impl Future<Output = ()>, raw: Step<'static>) {
        let (ours, our_requests) = timed(self.counter, ours).await;
        let (raw, raw_requests) = timed(self.counter, raw).await;
        if round > 0 {
            self.ours += ours;
            self.raw += raw;
            self.requests = (our_requests, raw_requests);
        }
    }

    /// The rows: `{name} (ms)`, and `{name} (requests)` with a counter.
    fn rows(&self, rows: &mut Vec<Row>, name: &str) {
        let ms = |total: Duration| total.as_secs_f64() * 1e3 / f64::from(self.rounds);
        rows.push(Row::millis(
            format!("{name} (ms)"),
            ms(self.ours),
            ms(self.raw),
            None,
        ));
        if self.counter.is_some() {
            let (ours, raw) = self.requests;
            rows.push(Row::requests(
                format!("{name} (requests)"),
                ours as f64,
                raw as f64,
            ));
        }
    }
}

/// How long `work` took, and how many requests it sent if there is a
/// counter (the counter's own reading subtracted).
async fn timed(
    counter: Option<RequestCounter<'_>>,
    work: impl Future<Output = ()>,
) -> (Duration, u64) {
    let before = match counter {
        Some(count) => count().await,
        None => 0,
    };
    let started = Instant::now();
    work.await;
    let took = started.elapsed();
    let sent = match counter {
        Some(count) => {
            let after = count().await;
            let idle = count().await;
            // `idle - after` is what one reading itself adds.
            after
                .saturating_sub(before)
                .saturating_sub(idle.saturating_sub(after))
        }
        None => 0,
    };
    (took, sent)
}
