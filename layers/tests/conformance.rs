//! The whole conformance suite on memory and redb wrapped in every layer at
//! once: tracing, metrics, compression (LZ4, with payloads stretched so
//! they compress), encryption, retry and timeout, built by
//! `layer_with_keyring` from a `LayerConfig`. `cargo xtask conformance
//! --backend layered` shows these two columns.

mod support;

use support::{Inner, LayeredFactory, Stack};

laminar_state_conformance::conformance_tests!(
    layered_memory,
    LayeredFactory::new(Inner::Memory, Stack::All)
);
laminar_state_conformance::conformance_tests!(
    layered_redb,
    LayeredFactory::new(Inner::Redb, Stack::All)
);
