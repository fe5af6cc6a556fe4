//! [`S3Config`]: where the bucket is, how to reach it, and the URL that
//! says so.

use std::time::Duration;

use laminar_state_api::StateBackendError;

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
    /// `timeout_ms=MS` (the whole request) and `max_payload_len=BYTES`.
    /// Values are percent-decoded.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        let bad = |why: String| StateBackendError::Serialization(format!("bad s3 URL: {why}"));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let path = base
            .strip_prefix("s3://")
            .ok_or_else(|| bad(format!("{base:?} does not start with s3://")))?;
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket is missing (s3://BUCKET/PREFIX)".into()));
        }
        let mut config = Self::new(bucket, prefix);
        let (mut key_id, mut secret, mut path_style) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw).ok_or_else(|| bad(format!("{key}: bad escape")))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{key}={value} is not a number")))
            };
            match key {
                "endpoint" => config.endpoint = Some(value.clone()),
                "region" => config.region = Some(value.clone()),
                "path_style" => {
                    path_style = Some(match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad(format!("path_style={value} is not true or false"))),
                    })
                }
                "access_key_id" => key_id = Some(value.clone()),
                "secret_access_key" => secret = Some(value.clone()),
                "max_attempts" => {
                    config.max_attempts = u32::try_from(number()?)
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| bad("max_attempts must be 1 or more".into()))?;
                }
                "attempt_timeout_ms" => config.attempt_timeout = Duration::from_millis(number()?),
                "timeout_ms" => config.operation_timeout = Duration::from_millis(number()?),
                "max_payload_len" => {
                    config.max_payload_len = usize::try_from(number()?)
                        .map_err(|_| bad("max_payload_len is too large".into()))?;
                }
                other => return Err(bad(format!("unknown setting {other:?}"))),
            }
        }
        config.force_path_style = path_style.unwrap_or(config.endpoint.is_some());
        config.credentials = match (key_id, secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(bad("access_key_id and secret_access_key go together".into()));
            }
        };
        Ok(config)
    }
}

pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
