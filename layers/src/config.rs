//! The layer stack from configuration: [`LayerConfig`] (serde, or a URL
//! query) and [`layer`], which wraps a backend in the layers it switches on.

use std::sync::Arc;
use std::time::Duration;

use laminar_state_api::StateBackend;

use crate::retry::{RetryLayer, RetryPolicy};
use crate::timeout::TimeoutLayer;

/// Why a layer stack could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The configuration switches on a layer this build does not include.
    #[error(
        "the `{layer}` layer is not compiled in: enable the `{feature}` feature of laminar-state-layers"
    )]
    FeatureDisabled {
        /// The layer, as the configuration names it.
        layer: &'static str,
        /// The Cargo feature of `laminar-state-layers` that brings it.
        feature: &'static str,
    },
    /// A setting is malformed or inconsistent.
    #[error("invalid layer setting `{setting}`: {reason}")]
    Invalid {
        /// The setting, as the configuration or URL names it.
        setting: String,
        /// What is wrong with it (never a key's value).
        reason: String,
    },
}

/// The compression algorithm of the compression layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// No compression layer (the default).
    #[default]
    None,
    /// LZ4 block compression (lz4_flex, pure Rust), feature `compression`.
    Lz4,
}

impl CompressionAlgorithm {
    fn parse(value: &str) -> Result<Self, LayerError> {
        match value {
            "none" | "off" | "false" => Ok(Self::None),
            "lz4" | "true" | "on" => Ok(Self::Lz4),
            "zstd" => Err(invalid(
                "compression",
                "zstd is not offered: the layer compresses with lz4 (pure Rust; no C build); \
                 use compression=lz4",
            )),
            other => Err(invalid(
                "compression",
                &format!("unknown algorithm `{other}` (known: lz4, none)"),
            )),
        }
    }
}

/// Where an encryption key comes from: an environment variable holding its
/// 64 hexadecimal digits, and the id written into the partials it encrypts.
/// The key itself is never part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// The key id (recorded in each partial's header).
    pub id: u32,
    /// The environment variable that holds the key, as 64 hex digits.
    pub env: String,
}

/// The encryption layer's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// The key new partials are encrypted with.
    pub key: KeySource,
    /// Keys rotated out, still used to decrypt what they encrypted.
    #[serde(default)]
    pub previous: Vec<KeySource>,
    /// Return stored partials without an encryption header as they are
    /// (for switching encryption on over an existing store). Default false.
    #[serde(default)]
    pub allow_plaintext_reads: bool,
}

/// Which layers wrap a backend, and their settings. Every field has a
/// default, so `{}` (or an empty query) is a valid configuration.
///
/// | field | URL query | default | layer |
/// |---|---|---|---|
/// | `tracing` | `tracing=true\|false` | on if the `tracing` feature is compiled in | [`TracingLayer`](crate::TracingLayer) |
/// | `metrics` | `metrics=true\|false` | on if the `metrics` feature is compiled in | [`MetricsLayer`](crate::MetricsLayer) |
/// | `retry` | `retry=N` | `0`: no retry layer | [`RetryLayer`] with up to `N` retries after the first attempt |
/// | `retry_initial_backoff_ms` | same | `50` | first backoff |
/// | `retry_max_backoff_ms` | same | `2000` | longest backoff |
/// | `retry_max_elapsed_ms` | same | `10000` | no retry starts after this long |
/// | `timeout_ms` | `timeout_ms` or `layer_timeout_ms` (for backends whose own URL has a `timeout_ms`) | none: no timeout layer | [`TimeoutLayer`], per attempt |
/// | `compression` | `compression=lz4\|none` | `none` | [`CompressionLayer`](crate::CompressionLayer) |
/// | `compression_min_size` | same | `64` | smaller payloads are stored as is |
/// | `encryption` | `encryption_key_id=ID&encryption_key_env=VAR` (`&encryption_previous=ID:VAR,ID:VAR`, `&encryption_allow_plaintext=true`) | off | [`EncryptionLayer`](crate::EncryptionLayer), key from the environment |
///
/// Switching on a layer whose feature is not compiled in (`tracing=true`
/// without `tracing`, `compression=lz4` without `compression`, any
/// encryption setting without `encryption`) fails with
/// [`LayerError::FeatureDisabled`]. The defaults never do.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerConfig {
    /// Trace every call. `None`: on if the `tracing` feature is compiled in.
    pub tracing: Option<bool>,
    /// Record metrics. `None`: on if the `metrics` feature is compiled in.
    pub metrics: Option<bool>,
    /// Retries after an `Io` error; `0` means no retry layer.
    pub retry: u32,
    /// The first backoff of the retry layer, in milliseconds (default 50).
    pub retry_initial_backoff_ms: Option<u64>,
    /// The longest backoff of the retry layer, in milliseconds (default 2000).
    pub retry_max_backoff_ms: Option<u64>,
    /// No retry starts this long after the first attempt, in milliseconds
    /// (default 10000).
    pub retry_max_elapsed_ms: Option<u64>,
    /// The bound on each attempt of each asynchronous call, in
    /// milliseconds; `None` means no timeout layer.
    pub timeout_ms: Option<u64>,
    /// The compression layer's algorithm (default none).
    pub compression: CompressionAlgorithm,
    /// Payloads shorter than this are stored uncompressed (default 64).
    pub compression_min_size: Option<usize>,
    /// Encryption at rest (default off).
    pub encryption: Option<EncryptionSettings>,
}

/// The URL query settings [`LayerConfig::from_query`] takes; any other
/// setting is left for the backend.
pub const QUERY_KEYS: &[&str] = &[
    "tracing",
    "metrics",
    "retry",
    "retry_initial_backoff_ms",
    "retry_max_backoff_ms",
    "retry_max_elapsed_ms",
    "timeout_ms",
    "layer_timeout_ms",
    "compression",
    "compression_min_size",
    "encryption_key_id",
    "encryption_key_env",
    "encryption_previous",
    "encryption_allow_plaintext",
];

fn invalid(setting: &str, reason: &str) -> LayerError {
    LayerError::Invalid {
        setting: setting.to_owned(),
        reason: reason.to_owned(),
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, LayerError> {
    value
        .parse()
        .map_err(|_| invalid(key, &format!("`{value}` is not a number")))
}

fn boolean(key: &str, value: &str) -> Result<bool, LayerError> {
    match value {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        other => Err(invalid(key, &format!("`{other}` is not true or false"))),
    }
}

impl LayerConfig {
    /// Take the layer settings ([`QUERY_KEYS`]) out of a URL query (the part
    /// after `?`, without it) and return them with the rest of the query,
    /// in its order, for the backend's own parser. For example
    /// `compression=lz4&retry=4&timeout_ms=2000&namespace=n` gives LZ4, 4
    /// retries, a 2 s timeout, and `namespace=n`.
    ///
    /// Values are taken as written (no percent-decoding: none of them needs
    /// it). The encryption key itself never goes in a URL: the query names
    /// the environment variable that holds it.
    pub fn from_query(query: &str) -> Result<(Self, String), LayerError> {
        let mut config = Self::default();
        let mut rest = Vec::new();
        let (mut key_id, mut key_env, mut previous, mut plaintext) =
            (None, None, Vec::new(), false);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "tracing" => config.tracing = Some(boolean(key, value)?),
                "metrics" => config.metrics = Some(boolean(key, value)?),
                "retry" => config.retry = number(key, value)?,
                "retry_initial_backoff_ms" => {
                    config.retry_initial_backoff_ms = Some(number(key, value)?)
                }
                "retry_max_backoff_ms" => config.retry_max_backoff_ms = Some(number(key, value)?),
                "retry_max_elapsed_ms" => config.retry_max_elapsed_ms = Some(number(key, value)?),
                "timeout_ms" | "layer_timeout_ms" => config.timeout_ms = Some(number(key, value)?),
                "compression" => config.compression = CompressionAlgorithm::parse(value)?,
                "compression_min_size" => config.compression_min_size = Some(number(key, value)?),
                "encryption_key_id" => key_id = Some(number(key, value)?),
                "encryption_key_env" => key_env = Some(value.to_owned()),
                "encryption_previous" => {
                    for item in value.split(',').filter(|i| !i.is_empty()) {
                        let (id, env) = item
                            .split_once(':')
                            .ok_or_else(|| invalid(key, &format!("`{item}` is not ID:ENV_VAR")))?;
                        previous.push(KeySource {
                            id: number(key, id)?,
                            env: env.to_owned(),
                        });
                    }
                }
                "encryption_allow_plaintext" => plaintext = boolean(key, value)?,
                _ => rest.push(pair),
            }
        }
        config.encryption = match (key_id, key_env) {
            (Some(id), Some(env)) => Some(EncryptionSettings {
                key: KeySource { id, env },
                previous,
                allow_plaintext_reads: plaintext,
            }),
            (None, None) if previous.is_empty() && !plaintext => None,
            _ => {
                return Err(invalid(
                    "encryption_key_env",
                    "encryption needs both encryption_key_id and encryption_key_env",
                ));
            }
        };
        Ok((config, rest.join("&")))
    }

    /// The most the layers this configuration switches on add to a payload
    /// on its way into the backend: open the backend inside with a limit of
    /// at least `max_payload_len + stored_overhead()`, so a payload at the
    /// caller's limit still fits once framed.
    pub fn stored_overhead(&self) -> usize {
        #[cfg(feature = "compression")]
        let compression = match self.compression {
            CompressionAlgorithm::Lz4 => crate::COMPRESSION_HEADER_LEN,
            CompressionAlgorithm::None => 0,
        };
        #[cfg(not(feature = "compression"))]
        let compression = 0;
        #[cfg(feature = "encryption")]
        let encryption = if self.encryption.is_some() {
            crate::ENCRYPTION_OVERHEAD
        } else {
            0
        };
        #[cfg(not(feature = "encryption"))]
        let encryption = 0;
        compression + encryption
    }

    /// The retry policy the configuration describes.
    pub fn retry_policy(&self) -> RetryPolicy {
        let default = RetryPolicy::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        RetryPolicy {
            max_retries: self.retry,
            initial_backoff: ms(self.retry_initial_backoff_ms, default.initial_backoff),
            max_backoff: ms(self.retry_max_backoff_ms, default.max_backoff),
            max_elapsed: ms(self.retry_max_elapsed_ms, default.max_elapsed),
        }
    }
}

/// What the layers need to know of the handle they wrap: the backend's name
/// and the handle's instance id (labels of spans and metrics) and the
/// largest payload a caller may write (enforced by the size-changing
/// layers on the caller's bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The backend's name, e.g. `redb` (a URL is shown without its
    /// credentials).
    pub backend: String,
    /// The handle's instance id.
    pub instance_id: String,
    /// The largest payload the caller may pass; `None`: only the backend
    /// inside checks, on the stored bytes.
    pub max_payload_len: Option<usize>,
}

impl Target {
    /// The handle `instance_id` of `backend`, whose callers may write up to
    /// `max_payload_len` bytes.
    pub fn new(backend: &str, instance_id: &str, max_payload_len: usize) -> Self {
        Self {
            backend: backend.to_owned(),
            instance_id: instance_id.to_owned(),
            max_payload_len: Some(max_payload_len),
        }
    }
}

/// Wrap `backend` in the layers `config` switches on, outermost first:
/// tracing, metrics, compression, encryption, retry, timeout (see the
/// crate docs for why that order). Encryption keys are read from the
/// environment variables the configuration names.
///
/// Fails with [`LayerError::FeatureDisabled`] for a layer whose feature is
/// not compiled in, and with [`LayerError::Invalid`] for a missing or
/// malformed key.
pub fn layer(
    backend: Arc<dyn StateBackend>,
    config: &LayerConfig,
    target: &Target,
) -> Result<Arc<dyn StateBackend>, LayerError> {
    build(backend, config, target, None)
}

/// [`layer`], with the encryption keys supplied by the caller rather than
/// read from the environment: encryption is on with `keyring` whatever
/// `config.encryption` says (its `allow_plaintext_reads` still applies).
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub fn layer_with_keyring(
    backend: Arc<dyn StateBackend>,
    config: &LayerConfig,
    target: &Target,
    keyring: crate::Keyring,
) -> Result<Arc<dyn StateBackend>, LayerError> {
    build(backend, config, target, Some(keyring))
}

#[cfg(feature = "encryption")]
type MaybeKeyring = Option<crate::Keyring>;
#[cfg(not(feature = "encryption"))]
type MaybeKeyring = Option<std::convert::Infallible>;

fn build(
    backend: Arc<dyn StateBackend>,
    config: &LayerConfig,
    target: &Target,
    keyring: MaybeKeyring,
) -> Result<Arc<dyn StateBackend>, LayerError> {
    let mut stack = backend;
    let (name, id) = (target.backend.as_str(), target.instance_id.as_str());
    if let Some(ms) = config.timeout_ms {
        if ms == 0 {
            return Err(invalid("timeout_ms", "a timeout of 0 ms fails every call"));
        }
        stack =
            Arc::new(TimeoutLayer::new(stack, Duration::from_millis(ms)).with_metrics(name, id));
    }
    if config.retry > 0 {
        stack = Arc::new(RetryLayer::new(stack, config.retry_policy()).with_metrics(name, id));
    }
    stack = encryption(stack, config, target, keyring)?;
    match config.compression {
        CompressionAlgorithm::None => {}
        #[cfg(feature = "compression")]
        CompressionAlgorithm::Lz4 => {
            let layer = crate::CompressionLayer::new(stack, target.max_payload_len);
            stack = Arc::new(match config.compression_min_size {
                Some(size) => layer.with_min_size(size),
                None => layer,
            });
        }
        #[cfg(not(feature = "compression"))]
        CompressionAlgorithm::Lz4 => {
            return Err(LayerError::FeatureDisabled {
                layer: "compression",
                feature: "compression",
            });
        }
    }
    match config.metrics {
        #[cfg(feature = "metrics")]
        Some(true) | None => stack = Arc::new(crate::MetricsLayer::new(stack, name, id)),
        #[cfg(not(feature = "metrics"))]
        Some(true) => {
            return Err(LayerError::FeatureDisabled {
                layer: "metrics",
                feature: "metrics",
            });
        }
        _ => {}
    }
    match config.tracing {
        #[cfg(feature = "tracing")]
        Some(true) | None => stack = Arc::new(crate::TracingLayer::new(stack, name, id)),
        #[cfg(not(feature = "tracing"))]
        Some(true) => {
            return Err(LayerError::FeatureDisabled {
                layer: "tracing",
                feature: "tracing",
            });
        }
        _ => {}
    }
    Ok(stack)
}

#[cfg(feature = "encryption")]
fn encryption(
    stack: Arc<dyn StateBackend>,
    config: &LayerConfig,
    target: &Target,
    keyring: MaybeKeyring,
) -> Result<Arc<dyn StateBackend>, LayerError> {
    let settings = config.encryption.as_ref();
    let keyring = match (keyring, settings) {
        (Some(keyring), _) => keyring,
        (None, Some(settings)) => {
            let mut keyring = crate::Keyring::new(settings.key.id, key_from_env(&settings.key)?);
            for source in &settings.previous {
                keyring = keyring.with_key(source.id, key_from_env(source)?);
            }
            keyring
        }
        (None, None) => return Ok(stack),
    };
    let plaintext = settings.is_some_and(|s| s.allow_plaintext_reads);
    Ok(Arc::new(
        crate::EncryptionLayer::new(stack, keyring, target.max_payload_len)
            .allow_plaintext_reads(plaintext),
    ))
}

#[cfg(not(feature = "encryption"))]
fn encryption(
    stack: Arc<dyn StateBackend>,
    config: &LayerConfig,
    _target: &Target,
    _keyring: MaybeKeyring,
) -> Result<Arc<dyn StateBackend>, LayerError> {
    match config.encryption {
        Some(_) => Err(LayerError::FeatureDisabled {
            layer: "encryption",
            feature: "encryption",
        }),
        None => Ok(stack),
    }
}

/// The key `source` names, from its environment variable; errors name the
/// variable, never its value.
#[cfg(feature = "encryption")]
fn key_from_env(source: &KeySource) -> Result<crate::EncryptionKey, LayerError> {
    let setting = format!("encryption key {} (${})", source.id, source.env);
    let value = std::env::var(&source.env)
        .map_err(|_| invalid(&setting, "the environment variable is not set"))?;
    crate::EncryptionKey::from_hex(&value).map_err(|reason| invalid(&setting, &reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_and_leaves_the_rest() {
        let (config, rest) =
            LayerConfig::from_query("compression=lz4&retry=4&namespace=n&timeout_ms=2000&x")
                .unwrap();
        assert_eq!(config.compression, CompressionAlgorithm::Lz4);
        assert_eq!(config.retry, 4);
        assert_eq!(config.timeout_ms, Some(2000));
        assert_eq!(rest, "namespace=n&x");
        assert_eq!(config.retry_policy().max_retries, 4);
        assert_eq!(
            config.retry_policy().initial_backoff,
            Duration::from_millis(50)
        );
    }

    #[test]
    fn defaults_are_an_empty_config() {
        let (config, rest) = LayerConfig::from_query("").unwrap();
        assert_eq!(config, LayerConfig::default());
        assert_eq!(rest, "");
        let parsed: LayerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, LayerConfig::default());
    }

    #[test]
    fn serde_config() {
        let config: LayerConfig = serde_json::from_str(
            r#"{"compression": "lz4", "retry": 2, "timeout_ms": 500, "tracing": false,
                "encryption": {"key": {"id": 3, "env": "K3"}, "previous": [{"id": 2, "env": "K2"}]}}"#,
        )
        .unwrap();
        assert_eq!(config.compression, CompressionAlgorithm::Lz4);
        assert_eq!(config.tracing, Some(false));
        let encryption = config.encryption.unwrap();
        assert_eq!(encryption.key.id, 3);
        assert_eq!(encryption.previous[0].env, "K2");
        assert!(serde_json::from_str::<LayerConfig>(r#"{"compresion": "lz4"}"#).is_err());
    }

    #[test]
    fn bad_values_are_named() {
        for (query, setting) in [
            ("retry=many", "retry"),
            ("compression=zstd", "compression"),
            ("compression=brotli", "compression"),
            ("tracing=maybe", "tracing"),
            ("encryption_key_id=1", "encryption_key_env"),
            ("encryption_previous=1", "encryption_previous"),
        ] {
            match LayerConfig::from_query(query) {
                Err(LayerError::Invalid { setting: s, .. }) => assert_eq!(s, setting, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
        let (config, _) =
            LayerConfig::from_query("encryption_key_id=1&encryption_key_env=LAYERS_TEST_KEY")
                .unwrap();
        assert_eq!(config.encryption.unwrap().key.env, "LAYERS_TEST_KEY");
    }
}
