//! A miniature engine checkpoint loop against any backend URL.
//!
//! Operator tasks persist one partial per vnode per epoch; the coordinator
//! waits for the commit gate, "commits the sinks", and prunes epochs that can
//! no longer be recovered. Run it with a URL:
//!
//! ```text
//! cargo run -p laminar-state --example checkpoint -- redb:///tmp/engine.redb
//! ```

use std::sync::Arc;
use std::time::Instant;

use laminar_state::{StateBackend, connect};

const VNODES: u32 = 64;
const EPOCHS: u64 = 50;
/// Epochs kept for recovery behind the newest committed one.
const RETAINED: u64 = 2;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let backend = connect(&url, "engine-1", VNODES).await?;
    let first = backend.latest_committed_epoch().await?.map_or(0, |e| e + 1);
    let vnodes: Vec<u32> = (0..VNODES).collect();
    let started = Instant::now();
    for epoch in first..first + EPOCHS {
        let mut operators = tokio::task::JoinSet::new();
        for vnode in 0..VNODES {
            let backend: Arc<dyn StateBackend> = Arc::clone(&backend);
            operators.spawn(async move {
                let partial = format!("sum of vnode {vnode} up to epoch {epoch}");
                backend.write_partial(vnode, epoch, 0, partial.into()).await
            });
        }
        while let Some(written) = operators.join_next().await {
            written??;
        }
        if !backend.epoch_complete(epoch, &vnodes).await? {
            return Err(format!("epoch {epoch} is incomplete after every operator wrote").into());
        }
        backend.prune_before(epoch.saturating_sub(RETAINED)).await?;
    }
    let latest = backend.latest_committed_epoch().await?;
    println!(
        "{url}: {EPOCHS} checkpoints of {VNODES} vnodes in {:.2?}; latest committed epoch {latest:?}",
        started.elapsed()
    );
    Ok(())
}
