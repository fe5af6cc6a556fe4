//! What the S3 tests and the benchmark share: the SeaweedFS launcher and
//! the fault proxy of `laminar-state-test-support`, and store configs for
//! them.

#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

use std::time::{Duration, Instant};

pub use laminar_state_test_support::seaweed::{
    ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, TestServer,
};
pub use laminar_state_test_support::{fill, fresh_prefix, proxy};

/// A store configuration for `endpoint`, prefix `prefix`, with the test
/// credentials.
pub fn config(endpoint: &str, prefix: &str) -> laminar_state_s3::S3Config {
    let mut config = laminar_state_s3::S3Config::new(BUCKET, prefix);
    config.endpoint = Some(endpoint.to_owned());
    config.force_path_style = true;
    config.region = Some("us-east-1".into());
    config.credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
    config
}

/// A configuration with few attempts and short timeouts, so fault tests
/// reach their typed errors quickly (and boundedly).
pub fn impatient_config(endpoint: &str, prefix: &str) -> laminar_state_s3::S3Config {
    let mut config = config(endpoint, prefix);
    config.max_attempts = 3;
    config.attempt_timeout = Duration::from_millis(1_500);
    config.operation_timeout = Duration::from_secs(6);
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// Connect a store, panicking with the reason if it fails.
pub async fn store(config: &laminar_state_s3::S3Config) -> laminar_state_s3::S3Store {
    laminar_state_s3::S3Store::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting {config:?}: {e}"))
}

/// Keys in the bucket under the store's prefix whose `/`-prefixed form
/// contains `fragment` (so `"/m/"` matches a key that starts with `m/`).
pub async fn stored_keys(store: &laminar_state_s3::S3Store, fragment: &str) -> Vec<String> {
    let listed = store
        .client()
        .list_objects_v2()
        .bucket(store.bucket())
        .prefix(store.prefix())
        .send()
        .await
        .expect("raw LIST");
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| format!("/{k}").contains(fragment))
        .map(str::to_owned)
        .collect()
}

/// Wait (at most 10 s) until `seen` holds for the proxy; `what` names it
/// in the failure.
pub async fn wait_for(
    proxy: &proxy::FaultProxy,
    what: &str,
    seen: impl Fn(&proxy::FaultProxy) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(proxy) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
