//! The whole conformance suite on memory and redb wrapped in each layer
//! alone.

mod support;

use support::{Inner, LayeredFactory, Stack};

macro_rules! each {
    ($($module:ident: $inner:ident, $stack:ident;)*) => {
        $(laminar_state_conformance::conformance_tests!(
            $module,
            LayeredFactory::new(Inner::$inner, Stack::$stack)
        );)*
    };
}

each! {
    tracing_memory: Memory, Tracing;
    tracing_redb: Redb, Tracing;
    metrics_memory: Memory, Metrics;
    metrics_redb: Redb, Metrics;
    retry_memory: Memory, Retry;
    retry_redb: Redb, Retry;
    timeout_memory: Memory, Timeout;
    timeout_redb: Redb, Timeout;
    compression_memory: Memory, Compression;
    compression_redb: Redb, Compression;
    encryption_memory: Memory, Encryption;
    encryption_redb: Redb, Encryption;
}
