#![doc = include_str!("../README.md")]
//!
//! # Where to start
//!
//! [`connect`] builds a handle from a URL, [`Config::open`] from a serde
//! [`Config`] (a [`BackendConfig`] and who the handle is); both fail with a
//! [`ConfigError`]. Each backend crate compiled in is re-exported as the
//! module its feature is named after (`memory`, `redb`, `redis`, `s3`), and
//! the contract's types ([`StateBackend`], [`StateBackendError`],
//! [`BackendUrl`]) are re-exported at the root. [`layers`] is the layer
//! crate; [`BackendConfig::open_layered`] and [`split_layers`] are what
//! [`connect`] and [`Config::open`] use to wrap a backend in layers.

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::path::PathBuf;
use std::sync::Arc;

pub use laminar_state_api::{
    BackendUrl, InputLimits, StateBackend, StateBackendError, UrlError, redact_url,
};

/// Layers over any backend: tracing, metrics, retries, timeouts,
/// compression and encryption (see [Layers](crate#layers)).
pub use laminar_state_layers as layers;
use laminar_state_layers::{LayerConfig, LayerError, Target};

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
    /// The URL cannot be used: it names the parameter to blame, if one is,
    /// and shows the URL with its credentials redacted.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The config contradicts itself.
    #[error("invalid state backend config `{input}`: {reason}")]
    Invalid {
        /// The offending value.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The layers cannot be built: a layer whose feature is not compiled
    /// in (the facade's feature of the same name brings it), or a bad
    /// setting.
    #[error(transparent)]
    Layer(#[from] LayerError),
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
        /// `replica_timeout_ms`, `replicate_writes`, `allow_eviction`,
        /// `protocol`; with `rediss://`, `tls_ca_file`, `tls_cert_file`,
        /// `tls_key_file`). Its password is never shown by `Debug`.
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
    /// The layers around the backend, under `"layers"` (see
    /// [`LayerConfig`]; by default tracing and metrics if compiled in,
    /// nothing else).
    #[serde(default)]
    pub layers: LayerConfig,
}

/// The backends this crate knows, compiled in or not: the one table of
/// schemes and features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Redb,
    Redis,
    S3,
}

impl Backend {
    /// The backend a URL scheme names.
    fn of_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "memory" => Some(Backend::Memory),
            "redb" => Some(Backend::Redb),
            "redis" | "rediss" => Some(Backend::Redis),
            "s3" => Some(Backend::S3),
            _ => None,
        }
    }

    /// The Cargo feature that brings it (also its main scheme).
    fn feature(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redb => "redb",
            Backend::Redis => "redis",
            Backend::S3 => "s3",
        }
    }

    /// Whether the backend's own URL takes the query parameter `name`, which
    /// then is not a layer setting (`timeout_ms`: use `layer_timeout_ms`
    /// for the timeout layer).
    fn owns(self, name: &str) -> bool {
        name == "timeout_ms" && matches!(self, Backend::Redis | Backend::S3)
    }

    /// The error for a URL or config of this backend in a build without it.
    fn disabled(self, scheme: &str) -> ConfigError {
        ConfigError::FeatureDisabled {
            scheme: scheme.to_owned(),
            feature: self.feature(),
        }
    }
}

impl BackendConfig {
    /// Parse a backend URL: the scheme picks the backend, whose crate
    /// parses the rest (see the crate docs' table, and each backend's
    /// `from_url`). A bad URL fails here, before any connection, with
    /// [`ConfigError::Url`]; one of a backend not compiled in with
    /// [`ConfigError::FeatureDisabled`].
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .ok_or_else(|| {
                UrlError::new(
                    url,
                    None,
                    "expected SCHEME://... (memory, redb, redis, rediss, s3)",
                )
            })?;
        let backend = Backend::of_scheme(&scheme)
            .ok_or_else(|| ConfigError::UnknownScheme(scheme.clone()))?;
        match backend {
            #[cfg(feature = "memory")]
            Backend::Memory => Ok(memory::MemoryConfig::parse_url(url)?.into()),
            #[cfg(feature = "redb")]
            Backend::Redb => Ok(redb::RedbConfig::parse_url(url)?.into()),
            #[cfg(feature = "redis")]
            Backend::Redis => {
                redis::RedisConfig::parse_url(url)?;
                Ok(BackendConfig::Redis {
                    url: SecretUrl::new(url),
                })
            }
            #[cfg(feature = "s3")]
            Backend::S3 => Ok(s3::S3Config::parse_url(url)?.into()),
            #[allow(unreachable_patterns)]
            disabled => Err(disabled.disabled(&scheme)),
        }
    }

    fn backend(&self) -> Backend {
        match self {
            BackendConfig::Memory { .. } => Backend::Memory,
            BackendConfig::Redb { .. } => Backend::Redb,
            BackendConfig::Redis { .. } => Backend::Redis,
            BackendConfig::S3 { .. } => Backend::S3,
        }
    }

    /// Build a handle for `instance_id` serving vnodes `0..vnode_capacity`,
    /// with no layers.
    pub async fn open(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, ConfigError> {
        Ok(self.open_limited(instance_id, vnode_capacity, 0).await?.0)
    }

    /// Build a handle wrapped in the layers `layers` switches on. The
    /// caller may still write partials of the configured `max_payload_len`:
    /// the backend inside is opened with room for what the layers add.
    pub async fn open_layered(
        &self,
        layers: &LayerConfig,
        instance_id: &str,
        vnode_capacity: u32,
    ) -> Result<Arc<dyn StateBackend>, ConfigError> {
        let (backend, limit) = self
            .open_limited(instance_id, vnode_capacity, layers.stored_overhead())
            .await?;
        let target = Target::new(self.backend().feature(), instance_id, limit);
        Ok(laminar_state_layers::layer(backend, layers, &target)?)
    }

    /// The handle, opened with `extra` bytes above the configured payload
    /// limit, and that limit.
    async fn open_limited(
        &self,
        instance_id: &str,
        vnode_capacity: u32,
        extra: usize,
    ) -> Result<(Arc<dyn StateBackend>, usize), ConfigError> {
        match self {
            #[cfg(feature = "memory")]
            BackendConfig::Memory {
                store,
                max_payload_len,
            } => {
                let limit =
                    max_payload_len.unwrap_or(memory::MemoryConfig::default().max_payload_len);
                let config = memory::MemoryConfig {
                    name: store.clone(),
                    max_payload_len: limit.saturating_add(extra),
                };
                Ok((Arc::new(config.open(instance_id, vnode_capacity)), limit))
            }
            #[cfg(feature = "redb")]
            BackendConfig::Redb {
                path,
                max_payload_len,
                verify_on_open,
            } => {
                let defaults = redb::RedbConfig::new(path);
                let limit = max_payload_len.unwrap_or(defaults.max_payload_len);
                let config = redb::RedbConfig {
                    max_payload_len: limit.saturating_add(extra),
                    verify_on_open: verify_on_open.unwrap_or(defaults.verify_on_open),
                    ..defaults
                };
                // Opening may read and repair the whole file: keep it off
                // the runtime.
                let store = tokio::task::spawn_blocking(move || redb::RedbStore::open_with(config))
                    .await
                    .map_err(|e| {
                        StateBackendError::Io(format!("opening the redb store failed: {e}"))
                    })??;
                Ok((Arc::new(store.handle(instance_id, vnode_capacity)), limit))
            }
            #[cfg(feature = "redis")]
            BackendConfig::Redis { url } => {
                let mut config = redis::RedisConfig::parse_url(url.expose())?;
                let limit = config.max_payload_len;
                config.max_payload_len = limit.saturating_add(extra);
                let backend =
                    redis::RedisBackend::connect(&config, instance_id, vnode_capacity).await?;
                Ok((Arc::new(backend), limit))
            }
            #[cfg(feature = "s3")]
            BackendConfig::S3 { .. } => {
                let mut config = self.s3_config()?;
                let limit = config.max_payload_len;
                config.max_payload_len = limit.saturating_add(extra);
                let backend = s3::S3Backend::connect(&config, instance_id, vnode_capacity).await?;
                Ok((Arc::new(backend), limit))
            }
            #[allow(unreachable_patterns)]
            disabled => {
                let _ = (instance_id, vnode_capacity, extra);
                let backend = disabled.backend();
                Err(backend.disabled(backend.feature()))
            }
        }
    }

    /// The S3 settings, unset ones at the S3 backend's defaults.
    #[cfg(feature = "s3")]
    fn s3_config(&self) -> Result<s3::S3Config, ConfigError> {
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
        } = self
        else {
            unreachable!("s3_config is called on S3 settings")
        };
        let mut config = s3::S3Config::new(bucket, prefix);
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
        Ok(config)
    }
}

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
impl From<memory::MemoryConfig> for BackendConfig {
    fn from(config: memory::MemoryConfig) -> Self {
        BackendConfig::Memory {
            store: config.name,
            max_payload_len: Some(config.max_payload_len),
        }
    }
}

#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
impl From<redb::RedbConfig> for BackendConfig {
    fn from(config: redb::RedbConfig) -> Self {
        BackendConfig::Redb {
            path: config.path,
            max_payload_len: Some(config.max_payload_len),
            verify_on_open: Some(config.verify_on_open),
        }
    }
}

/// Every setting but the connect timeout, which the S3 settings do not
/// carry (the backend's default applies).
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
impl From<s3::S3Config> for BackendConfig {
    fn from(config: s3::S3Config) -> Self {
        let (access_key_id, secret_access_key) = config
            .credentials
            .map(|(id, secret)| (id, Secret(secret)))
            .unzip();
        BackendConfig::S3 {
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
        }
    }
}

impl Config {
    /// Build the configured handle, wrapped in its layers.
    pub async fn open(&self) -> Result<Arc<dyn StateBackend>, ConfigError> {
        self.backend
            .open_layered(&self.layers, &self.instance_id, self.vnode_capacity)
            .await
    }
}

/// Split a URL into the backend's URL and the layer settings of its query
/// (see [`LayerConfig::from_query`]; a parameter the backend's own URL
/// takes, like `timeout_ms` for redis and s3, stays with the backend). The
/// query ends at a `#` (redis's `#insecure`).
pub fn split_layers(url: &str) -> Result<(String, LayerConfig), ConfigError> {
    let Some((base, after)) = url.split_once('?') else {
        return Ok((url.to_owned(), LayerConfig::default()));
    };
    let (query, fragment) = match after.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (after, None),
    };
    let backend = url
        .split_once("://")
        .and_then(|(scheme, _)| Backend::of_scheme(&scheme.to_ascii_lowercase()));
    let (mut layer_pairs, mut backend_pairs) = (Vec::new(), Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        let layer = laminar_state_layers::QUERY_KEYS.contains(&name)
            && !backend.is_some_and(|b| b.owns(name));
        if layer {
            layer_pairs.push(pair);
        } else {
            backend_pairs.push(pair);
        }
    }
    let (layers, _) = LayerConfig::from_query(&layer_pairs.join("&"))?;
    let mut backend_url = base.to_owned();
    if !backend_pairs.is_empty() {
        backend_url.push('?');
        backend_url.push_str(&backend_pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        backend_url.push('#');
        backend_url.push_str(fragment);
    }
    Ok((backend_url, layers))
}

/// Build a handle from a URL: the backend's (see
/// [`BackendConfig::from_url`]), with layer settings in its query if
/// wanted (see [Layers](crate#layers)), e.g.
/// `redb:///var/lib/engine/state.redb?compression=lz4&retry=4`.
pub async fn connect(
    url: &str,
    instance_id: &str,
    vnode_capacity: u32,
) -> Result<Arc<dyn StateBackend>, ConfigError> {
    let (backend_url, layers) = split_layers(url)?;
    BackendConfig::from_url(&backend_url)?
        .open_layered(&layers, instance_id, vnode_capacity)
        .await
}
