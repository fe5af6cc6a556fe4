//! Every layer of `laminar-state-layers` at once, as a conformance
//! [`Wrapper`]: the stack the layered columns of the matrix run the suite
//! through, over any backend.

use std::sync::Arc;

use laminar_state_api::StateBackend;
use laminar_state_conformance::Wrapper;
use laminar_state_layers::{
    COMPRESSION_HEADER_LEN, CompressionAlgorithm, ENCRYPTION_OVERHEAD, EncryptionKey, Keyring,
    LayerConfig, Target, layer_with_keyring,
};

/// The test key ring: fixed keys, so a crash test's child process reads
/// what its parent wrote and the other way round.
pub fn keyring() -> Keyring {
    Keyring::new(2, EncryptionKey::from_bytes([0x5A; 32]))
        .with_key(1, EncryptionKey::from_bytes([0xA5; 32]))
}

/// Every layer on: tracing, metrics, retry (short backoffs, so the suite's
/// fault properties stay quick), a generous timeout, LZ4 on every payload,
/// and (with [`keyring`]) encryption.
pub fn every_layer_config() -> LayerConfig {
    LayerConfig {
        tracing: Some(true),
        metrics: Some(true),
        retry: 3,
        retry_initial_backoff_ms: Some(5),
        retry_max_backoff_ms: Some(50),
        retry_max_elapsed_ms: Some(2_000),
        timeout_ms: Some(60_000),
        compression: CompressionAlgorithm::Lz4,
        compression_min_size: Some(0),
        encryption: None,
    }
}

/// Every layer around each handle of a backend named `backend`, built by
/// `layer_with_keyring` from [`every_layer_config`], as a deployment would
/// build it from a URL's parameters.
pub struct EveryLayer {
    backend: &'static str,
    cases_divisor: u32,
}

impl EveryLayer {
    /// The stack over `backend` (its name, for spans and metric labels).
    pub const fn over(backend: &'static str) -> Self {
        Self {
            backend,
            cases_divisor: 1,
        }
    }

    /// Run a `divisor`-th of the inner factory's proptest cases (at least
    /// 8): the layered column of a remote store repeats what its plain
    /// column already covers case by case, and what it adds (every call
    /// forwarded through every layer) shows in the first cases.
    pub const fn with_fewer_cases(mut self, divisor: u32) -> Self {
        self.cases_divisor = divisor;
        self
    }
}

impl Wrapper for EveryLayer {
    fn name(&self) -> String {
        "every-layer".into()
    }

    fn wrap(
        &self,
        backend: Arc<dyn StateBackend>,
        instance_id: &str,
        max_payload_len: usize,
    ) -> Arc<dyn StateBackend> {
        layer_with_keyring(
            backend,
            &every_layer_config(),
            &Target::new(self.backend, instance_id, max_payload_len),
            keyring(),
        )
        .expect("test-support builds laminar-state-layers with every feature")
    }

    fn overhead(&self) -> usize {
        COMPRESSION_HEADER_LEN + ENCRYPTION_OVERHEAD
    }

    fn proptest_cases(&self, inner: u32) -> u32 {
        (inner / self.cases_divisor.max(1)).max(8.min(inner))
    }
}
