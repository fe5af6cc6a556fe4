//! The facade builds every compiled-in backend from a URL or a config, and
//! names the missing feature otherwise.

use bytes::Bytes;
use laminar_state::{BackendConfig, ConfigError, StateBackendError, connect};

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
    // A bad URL fails when it is parsed, naming the parameter to blame.
    let mut bad = vec![("memory", None)];
    if cfg!(feature = "memory") {
        bad.extend([
            ("memory://?max_payload_len=lots", Some("max_payload_len")),
            ("memory://?colour=blue", Some("colour")),
            (
                "memory://?max_payload_len=1&max_payload_len=2",
                Some("max_payload_len"),
            ),
        ]);
    }
    if cfg!(feature = "redb") {
        bad.extend([
            ("redb://", None),
            (
                "redb:///tmp/x.redb?verify_on_open=maybe",
                Some("verify_on_open"),
            ),
            ("redb:///tmp/x.redb?sync=always", Some("sync")),
        ]);
    }
    for (url, parameter) in bad {
        match BackendConfig::from_url(url) {
            Err(ConfigError::Url(error)) => {
                assert_eq!(error.parameter(), parameter, "{url}: {error}");
                if let Some(parameter) = parameter {
                    assert!(
                        error.to_string().contains(&format!("`{parameter}`")),
                        "{error}"
                    );
                }
            }
            other => panic!("{url}: {other:?}"),
        }
        assert!(
            matches!(connect(url, "a", 4).await, Err(ConfigError::Url(_))),
            "{url}"
        );
    }
}

/// Every URL the facade took before it parsed through the backend crates
/// still opens the same store.
#[cfg(all(feature = "memory", feature = "redb"))]
#[test]
fn urls_of_every_embedded_backend_parse_as_before() {
    use std::path::PathBuf;

    for (url, expected) in [
        (
            "memory://",
            BackendConfig::Memory {
                store: None,
                max_payload_len: Some(64 << 20),
            },
        ),
        (
            "memory://a%20b+c?max_payload_len=5",
            BackendConfig::Memory {
                store: Some("a b+c".into()),
                max_payload_len: Some(5),
            },
        ),
        (
            "redb:///var/lib/a%20b.redb?max_payload_len=7&verify_on_open=false",
            BackendConfig::Redb {
                path: PathBuf::from("/var/lib/a b.redb"),
                max_payload_len: Some(7),
                verify_on_open: Some(false),
            },
        ),
        (
            "redb://relative/state.redb",
            BackendConfig::Redb {
                path: PathBuf::from("relative/state.redb"),
                max_payload_len: Some(64 << 20),
                verify_on_open: Some(true),
            },
        ),
    ] {
        assert_eq!(BackendConfig::from_url(url).unwrap(), expected, "{url}");
    }
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
    use laminar_state::Config;

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
    let config =
        BackendConfig::from_url("redis://127.0.0.1:1/?namespace=n&timeout_ms=200").unwrap();
    assert!(matches!(config, BackendConfig::Redis { .. }));
    // Nothing listens on port 1: a typed I/O error, within the timeout.
    let error = config.open("a", 4).await.err().expect("no server");
    assert!(
        matches!(error, ConfigError::Backend(StateBackendError::Io(_))),
        "{error}"
    );
    // A bad redis URL fails when it is parsed, before any connection.
    for (bad, parameter) in [
        ("redis://127.0.0.1:1/?groups=0", Some("groups")),
        ("rediss://127.0.0.1:1/?colour=red", Some("colour")),
        ("redis://127.0.0.1:port/", None),
        ("redis://127.0.0.1:1/notadb", None),
    ] {
        assert!(
            matches!(BackendConfig::from_url(bad), Err(ConfigError::Url(ref e)) if e.parameter() == parameter),
            "{bad}: {:?}",
            BackendConfig::from_url(bad)
        );
    }
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_urls_and_configs_become_s3_settings() {
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
    for (bad, parameter) in [
        ("s3://", None),
        ("s3://b/p?max_attempts=none", Some("max_attempts")),
        ("s3://b/p?shape=round", Some("shape")),
        ("s3://b/p?access_key_id=id", Some("secret_access_key")),
    ] {
        assert!(
            matches!(BackendConfig::from_url(bad), Err(ConfigError::Url(ref e)) if e.parameter() == parameter),
            "{bad}: {:?}",
            BackendConfig::from_url(bad)
        );
    }
}

/// No `Debug` or error text of a config (the facade's and every
/// backend's), a bad URL of any backend, or a failed connect holds a
/// password or secret key given in the URL.
#[cfg(all(
    feature = "memory",
    feature = "redb",
    feature = "redis",
    feature = "s3"
))]
#[tokio::test]
async fn credentials_never_leave_the_url() {
    use laminar_state::memory::MemoryConfig;
    use laminar_state::redb::RedbConfig;
    use laminar_state::redis::RedisConfig;
    use laminar_state::s3::S3Config;
    use laminar_state::{Config, UrlError};

    let secret = "hunter2-ZQX";
    let redis_url = format!("redis://user:{secret}@127.0.0.1:1/?namespace=n&timeout_ms=200");
    let cluster_url = format!(
        "redis://user:{secret}@127.0.0.1:1/?namespace=n&timeout_ms=200&cluster=true&nodes=127.0.0.1:2"
    );
    let s3_url = format!(
        "s3://bucket/p?endpoint=http://127.0.0.1:1&access_key_id=id&secret_access_key={secret}&max_attempts=1&timeout_ms=500"
    );
    let s3_json = format!(
        r#"{{"backend": "s3", "bucket": "b", "endpoint": "http://127.0.0.1:1", "max_attempts": 1, "timeout_ms": 500, "access_key_id": "id", "secret_access_key": "{secret}"}}"#
    );
    let mut configs = vec![
        BackendConfig::from_url(&redis_url).unwrap(),
        BackendConfig::from_url(&cluster_url).unwrap(),
        BackendConfig::from_url(&s3_url).unwrap(),
        serde_json::from_str(&s3_json).unwrap(),
        serde_json::from_str(&format!(r#"{{"backend": "redis", "url": "{redis_url}"}}"#)).unwrap(),
    ];
    let mut shown = vec![
        format!("{:?}", RedisConfig::from_url(&redis_url).unwrap()),
        format!("{:?}", RedisConfig::from_url(&cluster_url).unwrap()),
        format!("{:?}", S3Config::from_url(&s3_url).unwrap()),
    ];
    // Every failed connect: redis standalone and cluster, S3 by URL and by
    // config; nothing listens on ports 1 and 2.
    for config in configs.drain(..) {
        let full = Config {
            instance_id: "a".into(),
            vnode_capacity: 4,
            backend: config.clone(),
            layers: Default::default(),
        };
        shown.push(format!("{config:?} {full:?}"));
        match config.open("a", 4).await {
            Ok(_) => panic!("nothing listens on port 1: {config:?}"),
            Err(error) => shown.push(format!("{error} / {error:?}")),
        }
    }
    // Every backend's bad URLs, through the facade and the backend crate.
    let bad_urls = [
        format!("redis://user:{secret}@127.0.0.1:1/?groups=many"),
        format!("rediss://:{secret}@h:1/?timeout_ms=x#insecure"),
        format!("redis://user:{secret}@h:port/"),
        format!("redis://h:1/?namespace=n&password={secret}"),
        format!("s3://bucket/p?secret_access_key={secret}&access_key_id=id&max_attempts=x"),
        format!("s3://id:{secret}@bucket/p"),
        format!("s3://bucket/p?secret_access_key={secret}"),
        format!("redb://user:{secret}@h/?x=1"),
        format!("redb://user:{secret}@h/state.redb"),
        format!("memory://user:{secret}@name"),
        format!("memory://name?token={secret}"),
        format!("postgres://user:{secret}@h/"),
        format!("user:{secret}@h"),
    ];
    for bad in &bad_urls {
        let error = match BackendConfig::from_url(bad) {
            Ok(config) => config.open("a", 4).await.err().expect("a bad URL opened"),
            Err(error) => error,
        };
        shown.push(format!("{error} / {error:?}"));
    }
    type Parse = fn(&str) -> Result<(), UrlError>;
    let backend_errors: [Parse; 4] = [
        |url| MemoryConfig::parse_url(url).map(drop),
        |url| RedbConfig::parse_url(url).map(drop),
        |url| RedisConfig::parse_url(url).map(drop),
        |url| S3Config::parse_url(url).map(drop),
    ];
    for bad in &bad_urls[..11] {
        for parse in backend_errors {
            if let Err(error) = parse(bad) {
                shown.push(format!("{error} / {error:?}"));
            }
        }
    }
    for text in shown {
        assert!(!text.contains(secret), "a secret was shown: {text}");
    }
}

/// Layer settings in a URL's query wrap the backend; the rest of the query
/// reaches the backend, and a plain URL of the same store sees what the
/// layers stored.
#[tokio::test]
async fn layer_settings_in_a_url_wrap_the_backend() {
    let store = format!("layers-{}", std::process::id());
    let layered = connect(
        &format!(
            "memory://{store}?compression=lz4&retry=2&layer_timeout_ms=5000&max_payload_len=1000"
        ),
        "n1",
        4,
    )
    .await
    .expect("a layered memory URL");
    let plain = connect(&format!("memory://{store}"), "n2", 4)
        .await
        .expect("the same store, without layers");
    // Compressible, and exactly at the caller's limit: the layers' header
    // must still fit in the store below.
    let payload = Bytes::from(vec![b'a'; 1000]);
    layered
        .write_partial(0, 1, 0, payload.clone())
        .await
        .unwrap();
    assert_eq!(layered.read_partial(0, 1).await.unwrap(), Some(payload));
    let stored = plain.read_partial(0, 1).await.unwrap().expect("stored");
    assert_eq!(
        &stored[..4],
        &laminar_state::layers::COMPRESSION_MAGIC,
        "the layer's frame"
    );
    assert!(
        stored.len() < 100,
        "1000 equal bytes compress: {} stored",
        stored.len()
    );
    // The caller's limit is the URL's, not the room made for the header.
    match layered
        .write_partial(0, 2, 0, Bytes::from(vec![b'a'; 1001]))
        .await
    {
        Err(StateBackendError::Serialization(reason)) => {
            assert!(reason.contains("1000"), "{reason}")
        }
        other => panic!("a payload over the URL's limit gave {other:?}"),
    }
}

#[test]
fn layer_settings_are_split_from_the_backends_own() {
    let (url, layers) = laminar_state::split_layers(
        "redis://h:1/?namespace=n&timeout_ms=50&retry=3&layer_timeout_ms=9#insecure",
    )
    .unwrap();
    // redis takes `timeout_ms` itself; `layer_timeout_ms` is the layer's.
    assert_eq!(url, "redis://h:1/?namespace=n&timeout_ms=50#insecure");
    assert_eq!(layers.retry, 3);
    assert_eq!(layers.timeout_ms, Some(9));
    let (url, layers) = laminar_state::split_layers("memory://x?timeout_ms=7").unwrap();
    assert_eq!(url, "memory://x");
    assert_eq!(layers.timeout_ms, Some(7));
    let (url, layers) = laminar_state::split_layers("redb:///tmp/a.redb").unwrap();
    assert_eq!(url, "redb:///tmp/a.redb");
    assert_eq!(layers, Default::default());
    match laminar_state::split_layers("memory://?compression=zip") {
        Err(ConfigError::Layer(e)) => assert!(e.to_string().contains("compression"), "{e}"),
        other => panic!("a bad layer setting gave {other:?}"),
    }
}

/// A config's `layers` section wraps the backend the same way, with the
/// encryption key from the environment variable it names. Run in a child
/// process of this test binary with the variable set, since setting the
/// environment of a running process is `unsafe`.
#[test]
fn a_configs_layers_section_wraps_the_backend() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_configs_layers_section_child", "--nocapture"])
        .env("LAMINAR_FACADE_CHILD", "1")
        .env("LAMINAR_FACADE_TEST_KEY", "11".repeat(32))
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed or did not run:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The child of `a_configs_layers_section_wraps_the_backend`; on its own it
/// has nothing to check.
#[tokio::test]
async fn a_configs_layers_section_child() {
    if std::env::var_os("LAMINAR_FACADE_CHILD").is_none() {
        return;
    }
    let config: laminar_state::Config = serde_json::from_value(serde_json::json!({
        "instance_id": "n1",
        "vnode_capacity": 4,
        "backend": "memory",
        "store": "config-layers",
        "layers": {
            "encryption": {"key": {"id": 7, "env": "LAMINAR_FACADE_TEST_KEY"}},
        },
    }))
    .expect("a config with layers");
    let layered = config.open().await.expect("open");
    layered
        .write_partial(1, 1, 0, Bytes::from_static(b"secret state"))
        .await
        .unwrap();
    assert_eq!(
        layered.read_partial(1, 1).await.unwrap(),
        Some(Bytes::from_static(b"secret state"))
    );
    let plain = connect("memory://config-layers", "n2", 4).await.unwrap();
    let stored = plain.read_partial(1, 1).await.unwrap().expect("stored");
    assert!(
        !stored.windows(6).any(|w| w == b"secret"),
        "the stored bytes are encrypted"
    );
    // A key variable that is not set is a clear error, naming it.
    let missing: laminar_state::Config = serde_json::from_value(serde_json::json!({
        "instance_id": "n1",
        "vnode_capacity": 4,
        "backend": "memory",
        "layers": {"encryption": {"key": {"id": 7, "env": "LAMINAR_FACADE_NO_SUCH_KEY"}}},
    }))
    .unwrap();
    match missing.open().await {
        Err(ConfigError::Layer(e)) => {
            assert!(e.to_string().contains("LAMINAR_FACADE_NO_SUCH_KEY"), "{e}")
        }
        other => panic!(
            "a missing key variable gave {:?}",
            other.map(|_| "a handle")
        ),
    }
}
