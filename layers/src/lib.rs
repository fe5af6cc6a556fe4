//! Composable layers for any [`StateBackend`]: tracing, metrics, retries,
//! timeouts, compression and encryption at rest.
//!
//! Each layer wraps an `Arc<B>` for any `B: StateBackend + ?Sized` (so an
//! `Arc<dyn StateBackend>`, ours or a third party's, or a concrete backend)
//! and is itself a [`StateBackend`]: it forwards every method of the trait,
//! the fence ([`set_authoritative_version`], [`authoritative_version`],
//! [`persist_authoritative_version`]) and the recovery queries
//! ([`latest_committed_epoch`], [`sealed_epochs`]) included, so a wrapped
//! backend keeps every capability of the backend inside it and passes the
//! same conformance properties.
//!
//! | layer | feature | what it does |
//! |---|---|---|
//! | [`TracingLayer`] | `tracing` | one span per call; `StaleVersion` and `SplitBrainCommit` at warn |
//! | [`MetricsLayer`] | `metrics` | counters by operation and outcome, bytes, fence rejections, seals, latency histograms |
//! | [`RetryLayer`] | (none) | retries `Io` errors with exponential backoff and jitter, bounded by attempts and time |
//! | [`TimeoutLayer`] | (none) | bounds each call; a call over its limit is an `Io` error naming both |
//! | [`CompressionLayer`] | `compression` | LZ4 with a self-describing header; plain partials still read |
//! | [`EncryptionLayer`] | `encryption` | XChaCha20-Poly1305, `(vnode, epoch)` bound as associated data |
//!
//! Every feature is on by default; a facade that wants a lean build turns
//! the default features off and picks the layers it needs.
//!
//! # Building a stack from configuration
//!
//! [`layer`] wraps a backend in the layers a [`LayerConfig`] switches on
//! (deserialized with serde, or parsed from a URL query such as
//! `?compression=lz4&retry=4&timeout_ms=2000`), in the one order that is
//! safe for all of them (outermost first):
//!
//! ```text
//! tracing -> metrics -> compression -> encryption -> retry -> timeout -> backend
//! ```
//!
//! Tracing and metrics see each call once, as the engine made it (with the
//! caller's byte counts); compression runs before encryption (ciphertext
//! does not compress); the retry layer resends the very bytes the layers
//! above produced (a retried write replays identical bytes), and the timeout
//! bounds each attempt. A layer whose feature is not compiled in fails with
//! [`LayerError::FeatureDisabled`], naming it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use laminar_state_api::StateBackend;
//! use laminar_state_layers::{LayerConfig, Target, layer};
//!
//! # let backend: Arc<dyn StateBackend> = Arc::new(laminar_state_memory::MemoryBackend::new("node-1", 16));
//! let (config, _rest) = LayerConfig::from_query("compression=lz4&retry=4&timeout_ms=2000")?;
//! let backend = layer(backend, &config, &Target::new("memory", "node-1", 64 << 20))?;
//! backend.write_partial(0, 1, 0, vec![7; 4096].into()).await?;
//! assert_eq!(backend.read_partial(0, 1).await?.unwrap(), vec![7; 4096]);
//! # Ok(())
//! # }
//! ```
//!
//! [`set_authoritative_version`]: StateBackend::set_authoritative_version
//! [`authoritative_version`]: StateBackend::authoritative_version
//! [`persist_authoritative_version`]: StateBackend::persist_authoritative_version
//! [`latest_committed_epoch`]: StateBackend::latest_committed_epoch
//! [`sealed_epochs`]: StateBackend::sealed_epochs

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod operation;
mod retry;
mod timeout;

#[cfg(feature = "compression")]
mod compression;
#[cfg(feature = "encryption")]
mod encryption;
#[cfg(feature = "metrics")]
mod metrics_layer;
#[cfg(feature = "tracing")]
mod tracing_layer;

pub use config::{
    CompressionAlgorithm, EncryptionSettings, KeySource, LayerConfig, LayerError, QUERY_KEYS,
    Target, layer,
};
pub use laminar_state_api::{StateBackend, StateBackendError};
pub use operation::{Operation, Outcome};
pub use retry::{RetryLayer, RetryPolicy};
pub use timeout::TimeoutLayer;

#[cfg(feature = "compression")]
#[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
pub use compression::{COMPRESSION_HEADER_LEN, COMPRESSION_MAGIC, CompressionLayer};
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use config::layer_with_keyring;
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub use encryption::{
    ENCRYPTION_MAGIC, ENCRYPTION_OVERHEAD, EncryptionKey, EncryptionLayer, KeyId, Keyring,
};
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use metrics_layer::{METRIC_NAMES, MetricsLayer, describe_metrics};
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub use tracing_layer::TracingLayer;

/// The payload-limit check the size-changing layers (compression,
/// encryption) run on the bytes the caller passed, worded like
/// [`laminar_state_api::InputLimits::check_write`] so engines see one
/// message whichever layer refused.
#[cfg_attr(
    not(any(feature = "compression", feature = "encryption")),
    allow(dead_code)
)]
pub(crate) fn check_caller_payload(
    vnode: u32,
    len: usize,
    limit: Option<usize>,
    layer: &str,
) -> Result<(), StateBackendError> {
    match limit {
        Some(limit) if len > limit => Err(StateBackendError::Serialization(format!(
            "payload of {len} bytes for vnode {vnode} exceeds the backend's limit of {limit} bytes \
             (the limit applies to the payload the caller passed, before {layer})"
        ))),
        _ => Ok(()),
    }
}
