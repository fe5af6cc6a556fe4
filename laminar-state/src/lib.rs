//! Pluggable state backends for streaming engines.
//!
//! Engines code against [`StateBackend`] (re-exported from
//! `laminar-state-api`) and pick a backend at start-up, from a URL or a
//! serde config, as an `Arc<dyn StateBackend>`. Cargo features decide which
//! backends are compiled in:
//!
//! | feature | URL | backend |
//! |---|---|---|
//! | `memory` (default) | `memory://` or `memory://NAME` | [`memory`]: in-process; a name shares one store between handles |
//! | `redb` (default) | `redb:///path/to/state.redb` | [`redb`]: durable, one file, no server |
//! | `redis` | `redis://host:port/?namespace=NS`, `rediss://...` | [`redis`]: Redis or Redis Cluster (`&cluster=true`) |
//! | `s3` | `s3://BUCKET/PREFIX?endpoint=URL&region=R` | [`s3`]: Amazon S3 or an S3-compatible store (path-style with an endpoint) |
//!
//! A URL whose backend is not compiled in fails with
//! [`ConfigError::FeatureDisabled`], which names the feature to enable.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), laminar_state::ConfigError> {
//! use laminar_state::{StateBackend, connect};
//!
//! let backend = connect("memory://", "node-1", 256).await?;
//! backend.write_partial(0, 1, 0, "partial".into()).await?;
//! assert!(backend.epoch_complete(1, &[0]).await?);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::path::PathBuf;
use std::sync::Arc;

use laminar_state_api::redact_url;
pub use laminar_state_api::{InputLimits, StateBackend, StateBackendError};

/// The in-process backend.
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use laminar_state_memory as memory;

/// The durable embedded backend.
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use laminar_state_redb as redb;

/// Redis and Redis Cluster.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use laminar_state_redis as redis;

/// Amazon S3 and S3-compatible stores.
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use laminar_state_s3 as s3;

/// Why a backend could not be built from a URL or config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL names a backend this build does not include.
    #[error(
        "the `{scheme}://` backend is not compiled in: enable the `{feature}` feature of laminar-state"
    )]
    FeatureDisabled {
        /// The URL's scheme.
        scheme: String,
        /// The Cargo feature that brings the backend.
        feature: &'static str,
    },
    /// The URL's scheme names no backend.
    #[error("unknown state backend scheme `{0}://` (known: memory, redb, redis, rediss, s3)")]
    UnknownScheme(String),
    /// The URL or config is malformed.
    #[error("invalid state backend URL or config `{input}`: {reason}")]
    Invalid {
        /// The offending URL or value.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend refused to open.
    #[error(transparent)]
    Backend(#[from] StateBackendError),
}

/// Which backend to build, and its settings. Deserializes from a tagged
/// map, e.g. `{"backend": "redb", "path": "/var/lib/engine/state.redb"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum BackendConfig {
    /// In-process memory.
    Memory {
        /// Handles whose config names the same store share it; unnamed
        /// stores are private to one handle.
        #[serde(default)]
        store: Option<String>,
        /// The largest partial in bytes.
        #[serde(default)]
        max_payload_len: Option<usize>,
    },
    /// One redb file.
    Redb {
        /// The database file; created if missing.
        path: PathBuf,
        /// The largest partial in bytes.
        #[serde(default)]
        max_payload_len: Option<usize>,
        /// Verify the file's checksums when it is opened (default true).
        #[serde(default)]
        verify_on_open: Option<bool>,
    },
    /// Redis or Redis Cluster.
    Redis {
        /// `redis://...` or `rediss://...`, with the settings of
        /// `RedisConfig::from_url` in its query (`namespace`, `cluster`,
        /// `nodes`, `groups`, `timeout_ms`, `max_payload_len`, `replicas`,
        /// `replica_timeout_ms`, `replicate_writes`, `allow_eviction`).
        /// Its password is never shown by `Debug`.
        url: SecretUrl,
    },
    /// Amazon S3 or an S3-compatible store. Unset fields take the S3
    /// backend's defaults; credentials come from AWS's default chain unless
    /// both keys are given.
    S3 {
        /// The bucket; it must exist.
        bucket: String,
        /// The key prefix of the store.
        #[serde(default)]
        prefix: String,
        /// An S3-compatible endpoint, e.g. `http://127.0.0.1:8333`.
        #[serde(default)]
        endpoint: Option<String>,
        /// The region.
        #[serde(default)]
        region: Option<String>,
        /// Path-style addressing (default: on with an endpoint, off without).
        #[serde(default)]
        path_style: Option<bool>,
        /// A static access key id (with `secret_access_key`).
        #[serde(default)]
        access_key_id: Option<String>,
        /// A static secret access key (with `access_key_id`).
        #[serde(default)]
        secret_access_key: Option<Secret>,
        /// Attempts per request, the first included.
        #[serde(default)]
        max_attempts: Option<u32>,
        /// The bound on one attempt, in milliseconds.
        #[serde(default)]
        attempt_timeout_ms: Option<u64>,
        /// The bound on one request, all attempts included, in milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// The largest partial in bytes.
        #[serde(default)]
        max_payload_len: Option<usize>,
    },
}

/// A credential: deserializes from a plain string, never printed by
/// `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a credential.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A connection URL that may carry a password: deserializes from a plain
/// string; `Debug` shows it without the password.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wrap a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// A whole backend configuration: the backend, and who this handle is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Config {
    /// This process's instance id, recorded in the commit markers it wins.
    pub instance_id: String,
    /// Vnodes are numbered `0..vnode_capacity`.
    pub vnode_capacity: u32,
    /// The backend and its settings.
    #[serde(flatten)]
    pub backend: BackendConfig,
}

impl BackendConfig {
    /// Parse a backend URL: `memory://`, `memory://NAME`,
    /// `redb:///path/to/file.redb`. Settings go in the query string:
    /// `max_payload_len=BYTES` (both), `verify_on_open=false` (redb).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid {
            input: redact_url(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected SCHEME://..."))?;
        if scheme == "redis" || scheme == "rediss" {
            return Ok(BackendConfig::Redis {
                url: SecretUrl::new(url),
            });
        }
        if scheme == "s3" {
            return s3_from_url(url);
        }
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let location = percent_decode(location).map_err(|reason| invalid(&reason))?;
        let mut max_payload_len = None;
        let mut verify_on_open = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "max_payload_len" => {
                    max_payload_len = Some(value.parse().map_err(|_| {
                        invalid(&format!("max_payload_len={value} is not a byte count"))
                    })?);
                }
                "verify_on_open" if scheme == "redb" => {
                    verify_on_open = Some(value.parse().map_err(|_| {
                        invalid(&format!("verify_on_open={value} is not true or false"))
                    })?);
                }
                other => return Err(invalid(&format!("unknown setting `{other}`"))),
            }
        }
        match scheme {
            "memory" => Ok(BackendConfig::Memory {
                store: (!location.is_empty()).then_some(location),
                max_payload_len,
            }),
            "redb" if location.is_empty() => Err(invalid("redb:// needs a file path")),
            "redb" => Ok(BackendConfig::Redb {
                path: PathBuf::from(location),
                max_payload_len,
                verify_on_open,
            }),
            other => Err(ConfigError::UnknownScheme(other.to_owned())),
        }
    }

    /// Build a handle for `instance_id` serving vnodes `0..vnode_capacity`.
    pub async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, ConfigError> {
        match self {
            BackendConfig::Memory {
                store,
                max_payload_len,
            } => open_memory(
                store.as_deref(),
                *max_payload_len,
                instance_id,
                vnode_capacity,
            ),
            BackendConfig::Redb {
                path,
                max_payload_len,
                verify_on_open,
            } => {
                open_redb(
                    path.clone(),
                    *max_payload_len,
                    *verify_on_open,
                    instance_id,
                    vnode_capacity,
                )
                .await
            }
            BackendConfig::Redis { url } => {
                open_redis(url.expose(), instance_id, vnode_capacity).await
            }
            BackendConfig::S3 { .. } => open_s3(self, instance_id, vnode_capacity).await,
        }
    }
}

impl Config {
    /// Build the configured handle.
    pub async fn open(&self) -> Result<Arc<dyn StateBackend>, ConfigError> {
        self.backend
            .open(&self.instance_id, self.vnode_capacity)
            .await
    }
}

/// Build a handle from a backend URL (see [`BackendConfig::from_url`]).
pub async fn connect(
    url: &str,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    BackendConfig::from_url(url)?
        .open(instance_id, vnode_capacity)
        .await
}

#[cfg(feature = "memory")]
fn open_memory(
    store: Option<&str>,
    max_payload_len: Option<usize>,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};

    use laminar_state_memory::{DEFAULT_MAX_PAYLOAD_LEN, MemoryStore};

    let limit = max_payload_len.unwrap_or(DEFAULT_MAX_PAYLOAD_LEN);
    let Some(name) = store else {
        return Ok(Arc::new(
            MemoryStore::with_max_payload_len(limit).open(instance_id, vnode_capacity),
        ));
    };
    // Named stores live as long as the process, like a server would.
    static NAMED: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
    let mut named = NAMED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let store = named
        .entry(name.to_owned())
        .or_insert_with(|| MemoryStore::with_max_payload_len(limit));
    Ok(Arc::new(store.open(instance_id, vnode_capacity)))
}

#[cfg(not(feature = "memory"))]
fn open_memory(
    _: Option<&str>,
    _: Option<usize>,
    _: &str,
    _: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: "memory".into(),
        feature: "memory",
    })
}

#[cfg(feature = "redb")]
async fn open_redb(
    path: PathBuf,
    max_payload_len: Option<usize>,
    verify_on_open: Option<bool>,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    use laminar_state_redb::{RedbConfig, RedbStore};

    let defaults = RedbConfig::new(path);
    let config = RedbConfig {
        max_payload_len: max_payload_len.unwrap_or(defaults.max_payload_len),
        verify_on_open: verify_on_open.unwrap_or(defaults.verify_on_open),
        ..defaults
    };
    // Opening may read and repair the whole file: keep it off the runtime.
    let store = tokio::task::spawn_blocking(move || RedbStore::open_with(config))
        .await
        .map_err(|e| StateBackendError::Io(format!("opening the redb store failed: {e}")))??;
    Ok(Arc::new(store.handle(instance_id, vnode_capacity)))
}

#[cfg(not(feature = "redb"))]
async fn open_redb(
    _: PathBuf,
    _: Option<usize>,
    _: Option<bool>,
    _: &str,
    _: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: "redb".into(),
        feature: "redb",
    })
}

#[cfg(feature = "redis")]
async fn open_redis(
    url: &str,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    let config = laminar_state_redis::RedisConfig::from_url(url)?;
    Ok(Arc::new(
        laminar_state_redis::RedisBackend::connect(&config, instance_id, vnode_capacity).await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: &str, _: &str, _: u32) -> Result<Arc<dyn StateBackend>, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: "redis".into(),
        feature: "redis",
    })
}

/// `s3://` URLs are parsed by the S3 backend, so the settings and their
/// errors are the same whichever way the store is configured.
#[cfg(feature = "s3")]
fn s3_from_url(url: &str) -> Result<BackendConfig, ConfigError> {
    let config = laminar_state_s3::S3Config::from_url(url).map_err(|e| ConfigError::Invalid {
        input: redact_url(url),
        reason: e.to_string(),
    })?;
    let (access_key_id, secret_access_key) = config
        .credentials
        .clone()
        .map(|(id, secret)| (id, Secret(secret)))
        .unzip();
    Ok(BackendConfig::S3 {
        bucket: config.bucket,
        prefix: config.prefix,
        endpoint: config.endpoint,
        region: config.region,
        path_style: Some(config.force_path_style),
        access_key_id,
        secret_access_key,
        max_attempts: Some(config.max_attempts),
        attempt_timeout_ms: Some(config.attempt_timeout.as_millis() as u64),
        timeout_ms: Some(config.operation_timeout.as_millis() as u64),
        max_payload_len: Some(config.max_payload_len),
    })
}

#[cfg(not(feature = "s3"))]
fn s3_from_url(_: &str) -> Result<BackendConfig, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: "s3".into(),
        feature: "s3",
    })
}

#[cfg(feature = "s3")]
async fn open_s3(
    settings: &BackendConfig,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    use std::time::Duration;

    let BackendConfig::S3 {
        bucket,
        prefix,
        endpoint,
        region,
        path_style,
        access_key_id,
        secret_access_key,
        max_attempts,
        attempt_timeout_ms,
        timeout_ms,
        max_payload_len,
    } = settings
    else {
        unreachable!("open_s3 is called with S3 settings")
    };
    let mut config = laminar_state_s3::S3Config::new(bucket, prefix);
    config.endpoint = endpoint.clone();
    config.region = region.clone();
    config.force_path_style = path_style.unwrap_or(endpoint.is_some());
    config.credentials = match (access_key_id, secret_access_key) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.expose().to_owned())),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid {
                input: format!("s3 bucket {bucket:?}"),
                reason: "access_key_id and secret_access_key go together".into(),
            });
        }
    };
    if let Some(attempts) = max_attempts {
        config.max_attempts = (*attempts).max(1);
    }
    if let Some(ms) = attempt_timeout_ms {
        config.attempt_timeout = Duration::from_millis(*ms);
    }
    if let Some(ms) = timeout_ms {
        config.operation_timeout = Duration::from_millis(*ms);
    }
    if let Some(limit) = max_payload_len {
        config.max_payload_len = *limit;
    }
    Ok(Arc::new(
        laminar_state_s3::S3Backend::connect(&config, instance_id, vnode_capacity).await?,
    ))
}

#[cfg(not(feature = "s3"))]
async fn open_s3(_: &BackendConfig, _: &str, _: u32) -> Result<Arc<dyn StateBackend>, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: "s3".into(),
        feature: "s3",
    })
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the path is not UTF-8 once decoded".to_owned())
}
