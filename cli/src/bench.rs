//! `bench`: the checkpoint loop of an engine, timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state::{StateBackend, redact_url};
use serde_json::{Value, json};

use crate::output::{CliError, CliResult, human_bytes};
use crate::progress::Progress;
use crate::store::{open, sealed_epochs};

/// The instance id `bench` seals as.
const BENCH_ID: &str = "laminar-state-cli-bench";

/// `bench`: `epochs` checkpoints after the store's latest sealed epoch,
/// each writing `vnodes` partials of `bytes` bytes at once, sealing the
/// epoch, and pruning what is two epochs old.
pub(crate) async fn bench(
    url: &str,
    vnodes: u32,
    bytes: usize,
    epochs: u64,
) -> CliResult<(Value, String)> {
    if vnodes == 0 || epochs == 0 {
        return Err(CliError::new(
            crate::output::Exit::Usage,
            "--vnodes and --epochs must be at least 1",
        ));
    }
    let handle = open(url, BENCH_ID).await?;
    let first = sealed_epochs(&handle).await?.last().map_or(1, |e| e + 1);
    let version = handle.authoritative_version();
    let all: Arc<[u32]> = (0..vnodes).collect();
    let payload: Bytes = (0..bytes)
        .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[7])
        .collect::<Vec<u8>>()
        .into();
    let progress = Progress::new("bench", "checkpoints", epochs);
    let started = Instant::now();
    let mut times = Vec::with_capacity(epochs as usize);
    for epoch in first..first + epochs {
        let checkpoint = Instant::now();
        let mut writes = tokio::task::JoinSet::new();
        for &vnode in all.iter() {
            let handle: Arc<dyn StateBackend> = Arc::clone(&handle);
            let payload = payload.clone();
            writes.spawn(async move {
                handle
                    .write_partial(vnode, epoch, version, payload)
                    .await
                    .map_err(|e| {
                        CliError::backend(format!("writing vnode {vnode} of epoch {epoch}"), e)
                    })
            });
        }
        while let Some(done) = writes.join_next().await {
            done.map_err(|e| CliError::failure(format!("a write task failed: {e}")))??;
        }
        match handle.epoch_complete(epoch, &all).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(CliError::failure(format!(
                    "epoch {epoch}: the gate found a partial missing"
                )));
            }
            Err(e) => return Err(CliError::backend(format!("sealing epoch {epoch}"), e)),
        }
        if epoch >= 2 {
            handle
                .prune_before(epoch - 1)
                .await
                .map_err(|e| CliError::backend(format!("prune_before({})", epoch - 1), e))?;
        }
        times.push(checkpoint.elapsed());
        progress.inc(u64::from(vnodes) * bytes as u64);
    }
    progress.finish();
    let elapsed = started.elapsed();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (p50, p99, max) = (pick(0.5), pick(0.99), *sorted.last().expect("one epoch"));
    let written = u64::from(vnodes) * bytes as u64 * epochs;
    let per_sec = written as f64 / elapsed.as_secs_f64().max(1e-9);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let doc = json!({
        "ok": true,
        "command": "bench",
        "url": redact_url(url),
        "vnodes": vnodes,
        "bytes": bytes,
        "epochs": epochs,
        "first_epoch": first,
        "last_epoch": first + epochs - 1,
        "checkpoint_ms": { "p50": ms(p50), "p99": ms(p99), "max": ms(max) },
        "bytes_written": written,
        "bytes_per_second": per_sec,
        "checkpoints_per_second": epochs as f64 / elapsed.as_secs_f64().max(1e-9),
        "seconds": elapsed.as_secs_f64(),
    });
    let text = format!(
        "{epochs} checkpoints (epochs {first} to {}) of {vnodes} vnodes x {}: p50 {:.1} ms, p99 \
         {:.1} ms, max {:.1} ms; {} in {:.2}s = {}/s\n",
        first + epochs - 1,
        human_bytes(bytes as u64),
        ms(p50),
        ms(p99),
        ms(max),
        human_bytes(written),
        elapsed.as_secs_f64(),
        human_bytes(per_sec as u64),
    );
    Ok((doc, text))
}
