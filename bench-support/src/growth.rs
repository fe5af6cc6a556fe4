//! How cost grows: the commit gate's latency as the vnodes of an epoch
//! grow, and a prune's as the epochs below its bound grow, each next to
//! the raw store doing the same work on the same sizes in the same run,
//! and, where the store is networked and the bench can count, the requests
//! each side sends.
//!
//! A backend's bench supplies the raw side as closures (write an epoch's
//! partials; check them all and put the marker; write sealed epochs; delete
//! below a bound); this module writes the backend's side through the trait,
//! times both sides alternately, and names the rows the same way for every
//! backend, so the summary can draw them as one chart (latency against
//! size, log axes).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::StateBackend;

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
    let mut writes = tokio::task::JoinSet::new();
    for vnode in 0..vnodes {
        let backend = Arc::clone(backend);
        writes.spawn(async move {
            backend
                .write_partial(vnode, epoch, 0, Bytes::from_static(b"p"))
                .await
        });
        if writes.len() >= in_flight {
            let done = writes.join_next().await.expect("a write in flight");
            done.expect("the write task").expect("write_partial");
        }
    }
    while let Some(done) = writes.join_next().await {
        done.expect("the write task").expect("write_partial");
    }
}

/// The gate at each of `growth.gate_vnodes`, on fresh epochs from
/// `first_epoch` on: both sides' partials written first (not timed), then
/// `epoch_complete` and `raw_gate` timed one after the other, round by
/// round (round 0 warms up and is not counted). One row a size, `ms`; with
/// a counter, one more of requests per gate.
pub async fn gate_growth(
    growth: &Growth,
    backend: &Arc<dyn StateBackend>,
    first_epoch: u64,
    raw_write: &(dyn Fn(u64, u32) -> Step<'static> + Sync),
    raw_gate: &(dyn Fn(u64, u32) -> Step<'static> + Sync),
    counter: Option<RequestCounter<'_>>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut epoch = first_epoch;
    for &vnodes in &growth.gate_vnodes {
        let all: Vec<u32> = (0..vnodes).collect();
        let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
        let (mut our_requests, mut raw_requests) = (0, 0);
        let rounds = Growth::rounds(u64::from(vnodes));
        for round in 0..=rounds {
            epoch += 1;
            fill(backend, epoch, vnodes, growth.in_flight).await;
            raw_write(epoch, vnodes).await;
            let (took, requests) = timed(counter, async {
                assert!(
                    backend
                        .epoch_complete(epoch, &all)
                        .await
                        .expect("epoch_complete")
                );
            })
            .await;
            let (raw_took, raw_sent) = timed(counter, raw_gate(epoch, vnodes)).await;
            if round > 0 {
                (ours, raw) = (ours + took, raw + raw_took);
                (our_requests, raw_requests) = (requests, raw_sent);
            }
        }
        let ms = |total: Duration| total.as_secs_f64() * 1e3 / f64::from(rounds);
        rows.push(Row::millis(
            format!("gate, {vnodes} vnodes (ms)"),
            ms(ours),
            ms(raw),
            None,
        ));
        if counter.is_some() {
            rows.push(Row::requests(
                format!("gate, {vnodes} vnodes (requests)"),
                our_requests as f64,
                raw_requests as f64,
            ));
        }
    }
    rows
}

/// A prune of each of `growth.prune_epochs` sealed epochs of
/// `growth.prune_epoch_vnodes` vnodes, from `first_epoch` on: both sides
/// written and sealed first (`raw_write_sealed(first, end, vnodes)` for the
/// raw side, not timed), then `prune_before` and `raw_prune(first, end,
/// vnodes)` timed, round by round. One row a size, `ms`; with a counter,
/// one more of requests per prune.
pub async fn prune_growth(
    growth: &Growth,
    backend: &Arc<dyn StateBackend>,
    first_epoch: u64,
    raw_write_sealed: &(dyn Fn(u64, u64, u32) -> Step<'static> + Sync),
    raw_prune: &(dyn Fn(u64, u64, u32) -> Step<'static> + Sync),
    counter: Option<RequestCounter<'_>>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let vnodes = growth.prune_epoch_vnodes;
    let all: Vec<u32> = (0..vnodes).collect();
    let mut first = first_epoch;
    for &epochs in &growth.prune_epochs {
        let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
        let (mut our_requests, mut raw_requests) = (0, 0);
        let rounds = Growth::rounds(epochs * u64::from(vnodes));
        for round in 0..=rounds {
            let end = first + epochs;
            for epoch in first..end {
                fill(backend, epoch, vnodes, growth.in_flight).await;
                assert!(
                    backend
                        .epoch_complete(epoch, &all)
                        .await
                        .expect("epoch_complete")
                );
            }
            raw_write_sealed(first, end, vnodes).await;
            let (took, requests) = timed(counter, async {
                backend.prune_before(end).await.expect("prune_before");
            })
            .await;
            assert!(
                backend
                    .read_partial(0, end - 1)
                    .await
                    .expect("read_partial")
                    .is_none(),
                "the prune left epoch {} behind",
                end - 1
            );
            let (raw_took, raw_sent) = timed(counter, raw_prune(first, end, vnodes)).await;
            if round > 0 {
                (ours, raw) = (ours + took, raw + raw_took);
                (our_requests, raw_requests) = (requests, raw_sent);
            }
            first = end;
        }
        let ms = |total: Duration| total.as_secs_f64() * 1e3 / f64::from(rounds);
        rows.push(Row::millis(
            format!("prune {epochs} epochs x {vnodes} vnodes (ms)"),
            ms(ours),
            ms(raw),
            None,
        ));
        if counter.is_some() {
            rows.push(Row::requests(
                format!("prune {epochs} epochs x {vnodes} vnodes (requests)"),
                our_requests as f64,
                raw_requests as f64,
            ));
        }
    }
    rows
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
