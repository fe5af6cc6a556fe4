//! The facade opens `s3://` URLs and S3 configs against a real server
//! (SeaweedFS, started by the test).

#![cfg(feature = "s3")]

use bytes::Bytes;
use laminar_state::{Config, StateBackendError, connect};
use laminar_state_test_support::fresh_prefix;
use laminar_state_test_support::seaweed::{ACCESS_KEY, BUCKET, SECRET_KEY, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_urls_and_configs_open_one_shared_store() {
    let server = TestServer::start();
    let prefix = fresh_prefix("facade");
    let url = format!(
        "s3://{BUCKET}/{prefix}?endpoint={}&region=us-east-1&access_key_id={ACCESS_KEY}&secret_access_key={SECRET_KEY}&max_payload_len=1024",
        server.endpoint()
    );
    let a = connect(&url, "a", 4).await.unwrap();
    a.set_authoritative_version(3);
    a.write_partial(0, 1, 3, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    assert!(matches!(
        a.write_partial(1, 1, 3, Bytes::from(vec![0; 1025])).await,
        Err(StateBackendError::Serialization(_))
    ));

    let json = format!(
        r#"{{"instance_id": "b", "vnode_capacity": 4, "backend": "s3", "bucket": "{BUCKET}", "prefix": "{prefix}", "endpoint": "{}", "access_key_id": "{ACCESS_KEY}", "secret_access_key": "{SECRET_KEY}"}}"#,
        server.endpoint()
    );
    let config: Config = serde_json::from_str(&json).unwrap();
    let b = config.open().await.unwrap();
    assert_eq!(
        b.read_partial(0, 1).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert!(matches!(
        b.write_partial(0, 1, 2, Bytes::from_static(b"stale")).await,
        Err(StateBackendError::StaleVersion {
            caller: 2,
            authoritative: 3
        })
    ));
    assert!(a.epoch_complete(1, &[0]).await.unwrap());
    assert_eq!(b.latest_committed_epoch().await.unwrap(), Some(1));
}
