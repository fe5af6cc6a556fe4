//! The metrics layer under a recorder: each counter moves by what happened.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_layers::{MetricsLayer, RetryLayer, RetryPolicy, TimeoutLayer};
use laminar_state_memory::MemoryStore;
use metrics_exporter_prometheus::PrometheusBuilder;

/// A backend whose recovery listing takes 50 ms.
struct Slow;

#[async_trait]
impl StateBackend for Slow {
    async fn write_partial(
        &self,
        _: u32,
        _: u64,
        _: u64,
        _: Bytes,
    ) -> Result<(), StateBackendError> {
        Ok(())
    }
    async fn read_partial(&self, _: u32, _: u64) -> Result<Option<Bytes>, StateBackendError> {
        Ok(None)
    }
    async fn epoch_complete(&self, _: u64, _: &[u32]) -> Result<bool, StateBackendError> {
        Ok(false)
    }
    async fn prune_before(&self, _: u64) -> Result<(), StateBackendError> {
        Ok(())
    }
    async fn sealed_epochs(&self, _: u64) -> Result<Vec<u64>, StateBackendError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Vec::new())
    }
}

fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

#[test]
fn counters_follow_the_calls() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let store = MemoryStore::new();
            let a = MetricsLayer::new(Arc::new(store.open("a", 4)), "memory", "a");
            let b = MetricsLayer::new(Arc::new(store.open("b", 4)), "memory", "b");
            a.write_partial(0, 1, 0, Bytes::from(vec![1; 100]))
                .await
                .unwrap();
            a.write_partial(1, 1, 0, Bytes::from(vec![1; 50]))
                .await
                .unwrap();
            assert!(!a.epoch_complete(1, &[0, 1, 2]).await.unwrap());
            assert!(a.epoch_complete(1, &[0, 1]).await.unwrap());
            assert!(a.epoch_complete(1, &[0, 1]).await.unwrap());
            assert!(matches!(
                b.epoch_complete(1, &[0, 1]).await,
                Err(StateBackendError::SplitBrainCommit { .. })
            ));
            a.read_partial(0, 1).await.unwrap();
            a.read_partial(3, 1).await.unwrap();
            a.set_authoritative_version(4);
            assert!(b.write_partial(0, 2, 3, Bytes::new()).await.is_err());
            assert!(a.read_partial(99, 1).await.is_err());
            a.prune_before(1).await.unwrap();
            // Retries and timeouts, counted by their own layers.
            let slow = Arc::new(
                TimeoutLayer::new(Arc::new(Slow), Duration::from_millis(5))
                    .with_metrics("memory", "c"),
            );
            let retry = RetryLayer::new(
                slow,
                RetryPolicy {
                    max_retries: 2,
                    initial_backoff: Duration::from_millis(1),
                    ..RetryPolicy::default()
                },
            )
            .with_metrics("memory", "c");
            assert!(retry.sealed_epochs(0).await.is_err());
        });
    });
    let text = handle.render();
    // Each sample: the metric, the instance, the labels after it (each with
    // its leading comma) and the expected value.
    #[rustfmt::skip]
    let samples = [
        ("laminar_state_written_bytes_total",              "a", "", 150.0),
        ("laminar_state_read_bytes_total",                 "a", "", 100.0),
        ("laminar_state_seals_total",                      "a", ",result=\"won\"", 2.0),
        ("laminar_state_seals_total",                      "a", ",result=\"incomplete\"", 1.0),
        ("laminar_state_seals_total",                      "b", ",result=\"lost\"", 1.0),
        ("laminar_state_split_brain_total",                "b", "", 1.0),
        ("laminar_state_fence_rejections_total",           "b", ",operation=\"write_partial\"", 1.0),
        ("laminar_state_prunes_total",                     "a", "", 1.0),
        ("laminar_state_fence_version",                    "a", "", 4.0),
        ("laminar_state_operations_total",                 "a", ",operation=\"read_partial\",outcome=\"ok\"", 2.0),
        ("laminar_state_operations_total",                 "a", ",operation=\"read_partial\",outcome=\"serialization\"", 1.0),
        ("laminar_state_operation_duration_seconds_count", "a", ",operation=\"epoch_complete\"", 3.0),
        ("laminar_state_retries_total",                    "c", ",operation=\"sealed_epochs\"", 2.0),
        ("laminar_state_timeouts_total",                   "c", ",operation=\"sealed_epochs\"", 3.0),
    ];
    for (metric, instance, more, expected) in samples {
        let sample = format!("{metric}{{backend=\"memory\",instance=\"{instance}\"{more}}}");
        assert_eq!(value(&text, &sample), Some(expected), "{sample}\n{text}");
    }
}
