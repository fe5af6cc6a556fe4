//! [`S3Config`]: where the bucket is, how to reach it, and the URL that
//! says so.

use std::time::Duration;

use laminar_state_api::{BackendUrl, StateBackendError, UrlError};

/// The default largest partial: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;
/// The default number of attempts per request, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// The default bound on one attempt of a request.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// The default bound on a request, all attempts and backoff included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which bucket and prefix, how to reach them, and the request policy.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket; it must exist.
    pub bucket: String,
    /// Every key of the store starts with this prefix (`/`-terminated when
    /// not empty). Several stores share a bucket under different prefixes.
    pub prefix: String,
    /// An explicit endpoint, for S3-compatible stores
    /// (`http://127.0.0.1:8333`); `None` uses AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// The region. `None` with an `endpoint`: `us-east-1` (S3-compatible
    /// stores mostly ignore it, and the default chain's probe of the
    /// instance metadata service would only slow every connect). `None` on
    /// AWS: the default chain (environment, profile, instance metadata),
    /// else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores need; AWS uses virtual-hosted style.
    pub force_path_style: bool,
    /// Static credentials `(access key id, secret access key)`. `None` uses
    /// AWS's default chain: environment, profile, web identity, container
    /// and instance metadata.
    pub credentials: Option<(String, String)>,
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The bound on one attempt.
    pub attempt_timeout: Duration,
    /// The bound on one request, all attempts and backoff included.
    pub operation_timeout: Duration,
    /// The bound on opening a connection.
    pub connect_timeout: Duration,
    /// The largest partial, in bytes.
    pub max_payload_len: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(id, _)| (id, "<secret>")),
            )
            .field("max_attempts", &self.max_attempts)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_payload_len", &self.max_payload_len)
            .finish()
    }
}

impl S3Config {
    /// Defaults for `bucket` and `prefix` on AWS.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            force_path_style: false,
            credentials: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
        }
    }

    /// Parse `s3://BUCKET/PREFIX` with optional query settings:
    /// `endpoint=URL` (implies path-style unless `path_style=false`),
    /// `region=NAME`, `path_style=true|false`, `access_key_id=..` with
    /// `secret_access_key=..`, `max_attempts=N`, `attempt_timeout_ms=MS`,
    /// `timeout_ms=MS` (the whole request) and `max_payload_len=BYTES`;
    /// any other parameter is refused. The bucket and prefix and every
    /// value are percent-decoded by the rules of [`BackendUrl`] (in the
    /// query `+` is a space: write a secret key's `+` as `%2B`). A bad URL
    /// is a [`StateBackendError::Serialization`] naming the parameter, with
    /// the secret key redacted.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        Ok(Self::parse_url(url)?)
    }

    /// [`from_url`](Self::from_url), with the error as the [`UrlError`]
    /// itself.
    pub fn parse_url(url: &str) -> Result<Self, UrlError> {
        let mut url = BackendUrl::parse(url, &["s3"])?;
        let location = url.location()?;
        let (bucket, prefix) = location.split_once('/').unwrap_or((&location, ""));
        if bucket.is_empty() {
            return Err(url.error(None, "the bucket is missing (s3://BUCKET/PREFIX)"));
        }
        let mut config = Self::new(bucket, prefix);
        config.endpoint = url.take("endpoint");
        config.region = url.take("region");
        config.force_path_style = url.flag("path_style")?.unwrap_or(config.endpoint.is_some());
        config.credentials = match (url.take("access_key_id"), url.take("secret_access_key")) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            (id, _) => {
                let missing = if id.is_some() {
                    "secret_access_key"
                } else {
                    "access_key_id"
                };
                return Err(url.error(
                    Some(missing),
                    "is missing: access_key_id and secret_access_key go together",
                ));
            }
        };
        config.max_attempts = url
            .number_at_least("max_attempts", 1)?
            .unwrap_or(config.max_attempts);
        config.attempt_timeout = url
            .millis("attempt_timeout_ms", 1)?
            .unwrap_or(config.attempt_timeout);
        config.operation_timeout = url
            .millis("timeout_ms", 1)?
            .unwrap_or(config.operation_timeout);
        config.max_payload_len = url
            .number("max_payload_len")?
            .unwrap_or(config.max_payload_len);
        url.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_one_dialect() {
        let config = S3Config::from_url(
            "s3://bucket/a%20b/c+d?region=eu+west&access_key_id=k&secret_access_key=a%2Bb+c&attempt_timeout_ms=700",
        )
        .unwrap();
        assert_eq!(
            (config.bucket.as_str(), config.prefix.as_str()),
            ("bucket", "a b/c+d")
        );
        assert_eq!(config.region.as_deref(), Some("eu west"));
        assert_eq!(config.credentials, Some(("k".into(), "a+b c".into())));
        assert_eq!(config.attempt_timeout, Duration::from_millis(700));
        let shown = format!("{config:?}");
        assert!(!shown.contains("a+b c"), "the secret is printed: {shown}");
        for (bad, parameter) in [
            ("s3://", None),
            ("s3://b%zz/x", None),
            ("s3://b/x?max_attempts=0", Some("max_attempts")),
            ("s3://b/x?timeout_ms=soon", Some("timeout_ms")),
            ("s3://b/x?secret_access_key=hunter2", Some("access_key_id")),
            ("s3://b/x?access_key_id=k", Some("secret_access_key")),
            ("s3://b/x?region=a&region=b", Some("region")),
            ("s3://b/x?colour=red&shape=round", Some("colour")),
        ] {
            let error = S3Config::parse_url(bad).expect_err(bad);
            assert_eq!(error.parameter(), parameter, "{bad}: {error}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }
}
