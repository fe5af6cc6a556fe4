#![doc = include_str!("../README.md")]
//!
//! # Where to start
//!
//! [`layer`] wraps a backend in the stack a [`LayerConfig`] switches on, for
//! a [`Target`], and fails with a [`LayerError`]; `layer_with_keyring` does
//! the same with the caller's encryption keys. Each layer is also a type
//! that wraps a backend by hand: [`RetryLayer`] and [`TimeoutLayer`] always,
//! and `TracingLayer`, `MetricsLayer`, `CompressionLayer` and
//! `EncryptionLayer` behind their features.

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

/// A batch read's answer from the backend inside, each partial turned back
/// into the caller's bytes by `open(vnode, stored)`: what the size-changing
/// layers (compression, encryption) answer for `read_partials`. An answer
/// whose length is not the number of vnodes asked is an error, never a
/// silently shortened batch.
#[cfg_attr(
    not(any(feature = "compression", feature = "encryption")),
    allow(dead_code)
)]
pub(crate) fn open_batch(
    epoch: u64,
    vnodes: &[u32],
    stored: Vec<Option<bytes::Bytes>>,
    open: impl Fn(u32, bytes::Bytes) -> Result<bytes::Bytes, StateBackendError>,
) -> Result<Vec<Option<bytes::Bytes>>, StateBackendError> {
    if stored.len() != vnodes.len() {
        return Err(StateBackendError::Io(format!(
            "read_partials({epoch}): the backend answered {} partials for {} vnodes",
            stored.len(),
            vnodes.len()
        )));
    }
    vnodes
        .iter()
        .zip(stored)
        .map(|(&vnode, stored)| stored.map(|s| open(vnode, s)).transpose())
        .collect()
}
