//! The layers' metrics, exported to Prometheus on a loopback port.
//!
//! ```text
//! cargo run -p laminar-state-layers --example prometheus
//! curl http://127.0.0.1:9464/metrics
//! ```
//!
//! It installs `metrics-exporter-prometheus` (HTTP listener only: no TLS
//! stack, and the tokio runtime the application already has), wraps an
//! in-process backend in the layer stack, runs a few checkpoints (with a
//! deposed leader, a split brain, a flaky store and a slow one, so every
//! metric of the README shows) and serves the metrics until it is stopped
//! (with `--once`, it exits after the workload).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_layers::{LayerConfig, Target, layer};
use laminar_state_memory::{MemoryBackend, MemoryStore};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

/// Install the Prometheus recorder globally, serving `/metrics` on `addr`
/// from the current tokio runtime.
pub fn install(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new().with_http_listener(addr).install()
}

/// A store that fails every third call before it reaches the backend, and
/// is slow on every read of vnode 3: so the retry and timeout layers have
/// something to do.
struct Flaky {
    inner: MemoryBackend,
    calls: AtomicU32,
}

impl Flaky {
    fn fail_now(&self) -> Result<(), StateBackendError> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
            Err(StateBackendError::Io("connection reset (simulated)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl laminar_state_api::ForwardingBackend for Flaky {
    type Inner = MemoryBackend;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn write_partial(
        &self,
        v: u32,
        e: u64,
        a: u64,
        b: Bytes,
    ) -> Result<(), StateBackendError> {
        self.fail_now()?;
        self.inner.write_partial(v, e, a, b).await
    }
    async fn read_partial(&self, v: u32, e: u64) -> Result<Option<Bytes>, StateBackendError> {
        if v == 3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.read_partial(v, e).await
    }

    // Batch reads go through this wrapper's own single reads.
    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        laminar_state_api::read_each(self, epoch, vnodes).await
    }
    async fn epoch_complete(&self, e: u64, v: &[u32]) -> Result<bool, StateBackendError> {
        self.fail_now()?;
        self.inner.epoch_complete(e, v).await
    }
}

/// A few checkpoints through the layer stack, touching every metric.
pub async fn workload() -> Result<(), StateBackendError> {
    let store = MemoryStore::new();
    let (config, _) = LayerConfig::from_query("compression=lz4&retry=4&timeout_ms=50")
        .map_err(|e| StateBackendError::Io(e.to_string()))?;
    let config = LayerConfig {
        retry_initial_backoff_ms: Some(1),
        ..config
    };
    let open = |id: &str| {
        let flaky = Arc::new(Flaky {
            inner: store.open(id, 4),
            calls: AtomicU32::new(0),
        });
        layer(flaky, &config, &Target::new("memory", id, 64 << 20))
            .map_err(|e| StateBackendError::Io(e.to_string()))
    };
    let leader = open("node-1")?;
    let zombie = open("node-0")?;
    let partial = Bytes::from(b"counter=1;".repeat(400));
    for epoch in 1..=5u64 {
        for vnode in 0..4 {
            leader
                .write_partial(vnode, epoch, 1, partial.clone())
                .await?;
        }
        leader.epoch_complete(epoch, &[0, 1, 2, 3]).await?;
        leader.read_partial(0, epoch).await?;
        leader.prune_before(epoch.saturating_sub(2)).await?;
    }
    // A split brain: the zombie asks about an epoch the leader sealed.
    let _ = zombie.epoch_complete(5, &[0, 1, 2, 3]).await;
    // A fence rejection: the leader moves to version 2; the zombie writes at 1.
    leader.persist_authoritative_version(2).await?;
    let _ = zombie.write_partial(0, 6, 1, partial.clone()).await;
    // A timeout: vnode 3 is slow to read.
    let _ = leader.read_partial(3, 5).await;
    leader.sealed_epochs(0).await?;
    leader.latest_committed_epoch().await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = ([127, 0, 0, 1], 9464).into();
    install(addr)?;
    workload().await?;
    if std::env::args().any(|a| a == "--once") {
        return Ok(());
    }
    println!("metrics on http://{addr}/metrics; Ctrl-C to stop");
    std::future::pending::<()>().await;
    Ok(())
}
