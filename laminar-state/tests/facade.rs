//! The facade builds every compiled-in backend from a URL or a config, and
//! names the missing feature otherwise.

use bytes::Bytes;
use laminar_state::{ConfigError, StateBackendError, connect};

#[cfg(feature = "memory")]
#[tokio::test]
async fn memory_urls_share_named_stores_only() {
    let a = connect("memory://facade-shared", "a", 4).await.unwrap();
    let b = connect("memory://facade-shared", "b", 4).await.unwrap();
    let private = connect("memory://", "c", 4).await.unwrap();
    a.write_partial(1, 7, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        b.read_partial(1, 7).await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(private.read_partial(1, 7).await.unwrap(), None);
    assert!(a.epoch_complete(7, &[1]).await.unwrap());
    assert!(matches!(
        b.epoch_complete(7, &[1]).await,
        Err(StateBackendError::SplitBrainCommit { committer, self_id }) if committer == "a" && self_id == "b"
    ));
}

#[cfg(feature = "redb")]
#[tokio::test]
async fn redb_urls_open_one_durable_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "redb://{}?max_payload_len=1024",
        dir.path().join("state.redb").display()
    );
    {
        let a = connect(&url, "a", 4).await.unwrap();
        let b = connect(&url, "b", 4).await.unwrap();
        a.set_authoritative_version(3);
        a.write_partial(0, 1, 3, Bytes::from_static(b"kept"))
            .await
            .unwrap();
        assert!(matches!(
            b.write_partial(0, 1, 2, Bytes::from_static(b"stale")).await,
            Err(StateBackendError::StaleVersion {
                caller: 2,
                authoritative: 3
            })
        ));
        assert!(matches!(
            a.write_partial(0, 1, 3, Bytes::from(vec![0; 1025])).await,
            Err(StateBackendError::Serialization(_))
        ));
    }
    let reopened = connect(&url, "c", 4).await.unwrap();
    assert_eq!(
        reopened.read_partial(0, 1).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(reopened.authoritative_version(), 3);
}

#[tokio::test]
async fn missing_features_and_bad_urls_are_named() {
    let mut missing = Vec::new();
    if cfg!(not(feature = "s3")) {
        missing.push(("s3://bucket/prefix", "s3"));
    }
    if cfg!(not(feature = "redis")) {
        missing.extend([("redis://localhost/0", "redis"), ("rediss://h", "redis")]);
    }
    if cfg!(not(feature = "redb")) {
        missing.push(("redb:///tmp/x.redb", "redb"));
    }
    if cfg!(not(feature = "memory")) {
        missing.push(("memory://", "memory"));
    }
    for (url, feature) in missing {
        let error = connect(url, "a", 4).await.err().expect("not compiled in");
        assert!(
            matches!(&error, ConfigError::FeatureDisabled { feature: f, .. } if *f == feature),
            "{url}: {error}"
        );
        assert!(
            error.to_string().contains(&format!("`{feature}` feature")),
            "{error}"
        );
    }
    assert!(
        matches!(connect("postgres://x", "a", 4).await, Err(ConfigError::UnknownScheme(s)) if s == "postgres")
    );
    assert!(matches!(
        connect("memory", "a", 4).await,
        Err(ConfigError::Invalid { .. })
    ));
    assert!(matches!(
        connect("redb://", "a", 4).await,
        Err(ConfigError::Invalid { .. })
    ));
    assert!(matches!(
        connect("memory://?max_payload_len=lots", "a", 4).await,
        Err(ConfigError::Invalid { .. })
    ));
    assert!(matches!(
        connect("memory://?colour=blue", "a", 4).await,
        Err(ConfigError::Invalid { .. })
    ));
}

#[cfg(feature = "redb")]
#[tokio::test]
async fn a_damaged_redb_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.redb");
    std::fs::write(&path, vec![0xAB; 20_000]).unwrap();
    let error = connect(&format!("redb://{}", path.display()), "a", 4)
        .await
        .err()
        .expect("junk is refused");
    assert!(
        matches!(
            error,
            ConfigError::Backend(StateBackendError::Serialization(_))
        ),
        "{error}"
    );
}

#[cfg(all(feature = "memory", feature = "redb"))]
#[tokio::test]
async fn configs_deserialize_and_open() {
    use laminar_state::{BackendConfig, Config};

    let dir = tempfile::tempdir().unwrap();
    let json = format!(
        r#"{{"instance_id": "node-1", "vnode_capacity": 8, "backend": "redb", "path": {:?}}}"#,
        dir.path().join("cfg.redb")
    );
    let config: Config = serde_json::from_str(&json).unwrap();
    assert!(matches!(config.backend, BackendConfig::Redb { .. }));
    let backend = config.open().await.unwrap();
    backend
        .write_partial(7, 0, 0, Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert!(matches!(
        backend.write_partial(8, 0, 0, Bytes::new()).await,
        Err(StateBackendError::Serialization(_))
    ));

    let memory: Config =
        serde_json::from_str(r#"{"instance_id": "n", "vnode_capacity": 2, "backend": "memory"}"#)
            .unwrap();
    assert_eq!(
        memory.backend,
        BackendConfig::Memory {
            store: None,
            max_payload_len: None
        }
    );
    assert!(
        serde_json::from_str::<Config>(
            r#"{"instance_id": "n", "vnode_capacity": 2, "backend": "cassandra"}"#
        )
        .is_err()
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_urls_reach_the_redis_backend() {
    use laminar_state::BackendConfig;

    let config =
        BackendConfig::from_url("redis://127.0.0.1:1/?namespace=n&timeout_ms=200").unwrap();
    assert!(matches!(config, BackendConfig::Redis { .. }));
    // Nothing listens on port 1: a typed I/O error, within the timeout.
    let error = config.open("a", 4).await.err().expect("no server");
    assert!(
        matches!(error, ConfigError::Backend(StateBackendError::Io(_))),
        "{error}"
    );
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_urls_and_configs_become_s3_settings() {
    use laminar_state::BackendConfig;

    let url = BackendConfig::from_url(
        "s3://state/engine/a?endpoint=http://127.0.0.1:1&region=eu-west-1&max_attempts=1&timeout_ms=500&access_key_id=id&secret_access_key=hush",
    )
    .unwrap();
    assert!(
        !format!("{url:?}").contains("hush"),
        "Debug printed the secret: {url:?}"
    );
    let json: BackendConfig = serde_json::from_str(
        r#"{"backend": "s3", "bucket": "state", "prefix": "engine/a", "endpoint": "http://127.0.0.1:1", "region": "eu-west-1", "max_attempts": 1, "timeout_ms": 500, "access_key_id": "id", "secret_access_key": "hush"}"#,
    )
    .unwrap();
    for config in [url, json] {
        let BackendConfig::S3 {
            bucket,
            prefix,
            endpoint,
            ..
        } = &config
        else {
            panic!("not S3 settings: {config:?}")
        };
        assert_eq!(
            (bucket.as_str(), prefix.as_str(), endpoint.as_deref()),
            ("state", "engine/a", Some("http://127.0.0.1:1"))
        );
        // Nothing listens on port 1: a typed I/O error, within the timeout.
        let error = config.open("a", 4).await.err().expect("no server");
        assert!(
            matches!(error, ConfigError::Backend(StateBackendError::Io(_))),
            "{error}"
        );
    }
    for bad in [
        "s3://",
        "s3://b/p?max_attempts=none",
        "s3://b/p?shape=round",
    ] {
        assert!(
            matches!(
                BackendConfig::from_url(bad),
                Err(ConfigError::Invalid { .. })
            ),
            "{bad}"
        );
    }
}

/// No `Debug` or error text of a config, a bad URL or a failed connect
/// holds a password or secret key given in the URL.
#[cfg(all(feature = "redis", feature = "s3"))]
#[tokio::test]
async fn credentials_never_leave_the_url() {
    use laminar_state::{BackendConfig, Config};

    let secret = "hunter2-ZQX";
    let url = format!("redis://user:{secret}@127.0.0.1:1/?namespace=n&timeout_ms=200");
    let config = BackendConfig::from_url(&url).unwrap();
    let full = Config {
        instance_id: "a".into(),
        vnode_capacity: 4,
        backend: config.clone(),
    };
    let redis_config = laminar_state::redis::RedisConfig::from_url(&url).unwrap();
    let mut shown = vec![
        format!("{config:?}"),
        format!("{full:?}"),
        format!("{redis_config:?}"),
    ];
    match config.open("a", 4).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(error) => shown.push(format!("{error} / {error:?}")),
    }
    for bad in [
        format!("redis://user:{secret}@127.0.0.1:1/?groups=many"),
        format!("rediss://:{secret}@h:1/?timeout_ms=x"),
        format!("s3://bucket/p?secret_access_key={secret}&access_key_id=id&max_attempts=x"),
        format!("redb://user:{secret}@h/?x=1"),
    ] {
        let error = match BackendConfig::from_url(&bad) {
            Ok(config) => config.open("a", 4).await.err().expect("a bad URL opened"),
            Err(error) => error,
        };
        shown.push(format!("{error} / {error:?}"));
    }
    for text in shown {
        assert!(!text.contains(secret), "a secret was shown: {text}");
    }
}
