//! [`RedisConfig`]: how to reach the server, and the URL that says so.

use std::path::PathBuf;
use std::time::Duration;

use laminar_state_api::{BackendUrl, StateBackendError, UrlError, redact_url};

/// The default largest partial: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 64 << 20;
/// The default bound on every network call.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The default wait for replicas, when [`RedisConfig::replicas`] is set.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(1);
/// Vnode groups of a new standalone namespace.
pub const DEFAULT_STANDALONE_GROUPS: u32 = 1;
/// Vnode groups of a new cluster namespace: enough to spread over the
/// shards of a typical cluster.
pub const DEFAULT_CLUSTER_GROUPS: u32 = 16;

/// How to reach the server and which namespace to use.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
    /// Treat `url` (and `extra_nodes`) as seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// More cluster seed nodes, as URLs.
    pub extra_nodes: Vec<String>,
    /// The namespace: every key of this store carries it.
    pub namespace: String,
    /// Vnode groups for a new namespace; an existing namespace keeps its own.
    pub groups: Option<u32>,
    /// The bound on every network call.
    pub operation_timeout: Duration,
    /// The largest partial, in bytes.
    pub max_payload_len: usize,
    /// Replicas that must hold a seal or a fence raise (and, with
    /// [`replicate_writes`](Self::replicate_writes), a write) before it is
    /// acknowledged: `WAIT replicas replica_timeout` after the step. `0`
    /// (the default) acknowledges what the primary applied, which a
    /// failover to a replica that had not received it loses. See the crate
    /// docs, "Failover".
    pub replicas: u32,
    /// How long a step waits for [`replicas`](Self::replicas); a step not
    /// confirmed by then is answered with [`StateBackendError::Io`] (it
    /// may have applied on the primary: its outcome is uncertain, and a
    /// retry settles it).
    pub replica_timeout: Duration,
    /// Wait for [`replicas`](Self::replicas) after writes too, not only
    /// after seals and raises.
    pub replicate_writes: bool,
    /// Open even on a server whose `maxmemory-policy` can evict any key
    /// (`allkeys-*`), which can silently delete fences, markers and
    /// partials. Off by default: such a server is refused at connect.
    pub allow_eviction: bool,
    /// With `rediss://`: the PEM file of the certificate authorities to
    /// trust instead of the system's (a private CA, a test server). A
    /// server whose certificate none of them signed is refused at connect.
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: the PEM file of this client's certificate chain,
    /// for a server that checks clients (`tls-auth-clients yes`); with
    /// [`tls_key_file`](Self::tls_key_file).
    pub tls_cert_file: Option<PathBuf>,
    /// With `rediss://`: the PEM file of the private key of
    /// [`tls_cert_file`](Self::tls_cert_file).
    pub tls_key_file: Option<PathBuf>,
}

/// Shows the URLs without their passwords.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.extra_nodes.iter().map(|n| redact_url(n)).collect();
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("cluster", &self.cluster)
            .field("extra_nodes", &nodes)
            .field("namespace", &self.namespace)
            .field("groups", &self.groups)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_payload_len", &self.max_payload_len)
            .field("replicas", &self.replicas)
            .field("replica_timeout", &self.replica_timeout)
            .field("replicate_writes", &self.replicate_writes)
            .field("allow_eviction", &self.allow_eviction)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl RedisConfig {
    /// Defaults for a standalone server at `url`, namespace `namespace`.
    pub fn new(url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            extra_nodes: Vec::new(),
            namespace: namespace.into(),
            groups: None,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
            replicas: 0,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            replicate_writes: false,
            allow_eviction: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }

    /// Parse `redis://[user:password@]host:port[/db]/?namespace=NS` (or
    /// `rediss://` for TLS, with `#insecure` at the very end to skip
    /// certificate checks). The query takes `namespace` (default
    /// `laminar`; `prefix` is another name for it), `cluster=true`,
    /// `nodes=host:port,host:port` (more cluster seeds), `groups=N`,
    /// `timeout_ms=MS`, `max_payload_len=BYTES`, `replicas=N`,
    /// `replica_timeout_ms=MS`, `replicate_writes=true`,
    /// `allow_eviction=true`, with `rediss://` `tls_ca_file=PATH` (the
    /// certificate authorities to trust) and `tls_cert_file=PATH` with
    /// `tls_key_file=PATH` (a client certificate), and the redis client's
    /// own `protocol=resp3`; any other parameter is refused. The user, password, host and
    /// database go to the redis client as written (it percent-decodes the
    /// user and password) and are checked by it here, before any
    /// connection; the query follows the rules of [`BackendUrl`]. A bad
    /// URL is a [`StateBackendError::Serialization`] naming the parameter,
    /// with the password redacted.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        Ok(Self::parse_url(url)?)
    }

    /// [`from_url`](Self::from_url), with the error as the [`UrlError`]
    /// itself.
    pub fn parse_url(url: &str) -> Result<Self, UrlError> {
        // Every error names the whole URL, so its redaction sees the whole
        // user info even when a `#` cuts through it.
        let whole = |e: UrlError| UrlError::new(url, e.parameter(), e.reason());
        // The redis client reads a fragment (`#insecure`); it ends the URL.
        let (before, fragment) = url
            .split_once('#')
            .map_or((url, None), |(b, f)| (b, Some(f)));
        let mut parsed = BackendUrl::parse(before, &["redis", "rediss"]).map_err(whole)?;
        let config = Self::from_parsed(&mut parsed, fragment).map_err(whole)?;
        parsed.finish().map_err(whole)?;
        Ok(config)
    }

    fn from_parsed(url: &mut BackendUrl, fragment: Option<&str>) -> Result<Self, UrlError> {
        let scheme = url.scheme().to_owned();
        let mut client_url = format!("{scheme}://{}", url.raw_location());
        if let Some(protocol) = url.take("protocol") {
            client_url.push_str(&format!("?protocol={protocol}"));
        }
        if let Some(fragment) = fragment {
            client_url.push_str(&format!("#{fragment}"));
        }
        let mut config = Self::new(client_url, "laminar");
        let namespace = match (url.take("namespace"), url.take("prefix")) {
            (Some(_), Some(_)) => {
                return Err(url.error(
                    Some("prefix"),
                    "is another name for `namespace`: give one of them",
                ));
            }
            (Some(ns), None) => Some(("namespace", ns)),
            (None, Some(ns)) => Some(("prefix", ns)),
            (None, None) => None,
        };
        if let Some((name, namespace)) = namespace {
            if namespace.is_empty() {
                return Err(url.error(Some(name), "is empty"));
            }
            config.namespace = namespace;
        }
        config.cluster = url.flag("cluster")?.unwrap_or(config.cluster);
        if let Some(nodes) = url.take("nodes") {
            config.extra_nodes = nodes
                .split(',')
                .filter(|node| !node.is_empty())
                .map(|node| format!("{scheme}://{node}"))
                .collect();
        }
        config.groups = url.number_at_least("groups", 1)?;
        config.operation_timeout = url
            .millis("timeout_ms", 1)?
            .unwrap_or(config.operation_timeout);
        config.max_payload_len = url
            .number("max_payload_len")?
            .unwrap_or(config.max_payload_len);
        config.replicas = url.number("replicas")?.unwrap_or(config.replicas);
        config.replica_timeout = url
            .millis("replica_timeout_ms", 1)?
            .unwrap_or(config.replica_timeout);
        config.replicate_writes = url
            .flag("replicate_writes")?
            .unwrap_or(config.replicate_writes);
        config.allow_eviction = url.flag("allow_eviction")?.unwrap_or(config.allow_eviction);
        for (name, field) in [
            ("tls_ca_file", &mut config.tls_ca_file),
            ("tls_cert_file", &mut config.tls_cert_file),
            ("tls_key_file", &mut config.tls_key_file),
        ] {
            if let Some(path) = url.take(name) {
                if scheme != "rediss" {
                    return Err(url.error(Some(name), "needs TLS: a rediss:// URL"));
                }
                if path.is_empty() {
                    return Err(url.error(Some(name), "is empty"));
                }
                *field = Some(PathBuf::from(path));
            }
        }
        if config.tls_cert_file.is_some() != config.tls_key_file.is_some() {
            return Err(url.error(
                Some("tls_cert_file"),
                "a client certificate needs both tls_cert_file and tls_key_file",
            ));
        }
        // What the redis client would refuse at connect, refused now.
        let client_check = |parameter: Option<&str>, target: &str| {
            redis::IntoConnectionInfo::into_connection_info(target)
                .map_err(|e| url.error(parameter, format!("the redis client cannot use it: {e}")))
        };
        client_check(None, &config.url)?;
        for node in &config.extra_nodes {
            client_check(Some("nodes"), node)?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_nonsense() {
        let config = RedisConfig::from_url(
            "rediss://u:p%40ss@h:7000/2?namespace=a+b%2Fc&cluster=1&nodes=h:7001,h:7002&groups=4&timeout_ms=250&max_payload_len=9&protocol=resp3#insecure",
        )
        .unwrap();
        assert_eq!(
            config.url,
            "rediss://u:p%40ss@h:7000/2?protocol=resp3#insecure"
        );
        assert_eq!(config.namespace, "a b/c");
        assert!(config.cluster);
        assert_eq!(config.extra_nodes, ["rediss://h:7001", "rediss://h:7002"]);
        assert_eq!(config.groups, Some(4));
        assert_eq!(config.operation_timeout, Duration::from_millis(250));
        assert_eq!(config.max_payload_len, 9);
        let tls = RedisConfig::from_url(
            "rediss://h:1/?tls_ca_file=/etc/my%20ca.pem&tls_cert_file=/c.pem&tls_key_file=/k.pem",
        )
        .unwrap();
        assert_eq!(tls.url, "rediss://h:1/");
        assert_eq!(tls.tls_ca_file, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(tls.tls_cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.tls_key_file, Some(PathBuf::from("/k.pem")));
        let plain = RedisConfig::from_url("redis://127.0.0.1:6379").unwrap();
        assert_eq!(plain, RedisConfig::new("redis://127.0.0.1:6379", "laminar"));
        assert_eq!(
            RedisConfig::from_url("redis://h/?prefix=p")
                .unwrap()
                .namespace,
            "p"
        );
        for (bad, parameter) in [
            ("http://h/", None),
            ("redis://h:port/", None),
            ("redis://h/db", None),
            ("redis://h/?namespace=", Some("namespace")),
            ("redis://h/?namespace=a&prefix=b", Some("prefix")),
            ("redis://h/?cluster=maybe", Some("cluster")),
            ("redis://h/?groups=0", Some("groups")),
            ("redis://h/?groups=many", Some("groups")),
            ("redis://h/?timeout_ms=0", Some("timeout_ms")),
            ("redis://h/?replicas=-1", Some("replicas")),
            ("redis://h/?max_payload_len=%zz", Some("max_payload_len")),
            ("redis://h/?protocol=resp9", None),
            ("redis://h/?nodes=h:x", Some("nodes")),
            ("redis://h/?colour=red", Some("colour")),
            ("redis://h/?namespace=a&namespace=b", Some("namespace")),
            ("redis://h/?tls_ca_file=/ca.pem", Some("tls_ca_file")),
            ("rediss://h/?tls_ca_file=", Some("tls_ca_file")),
            ("rediss://h/?tls_cert_file=/c.pem", Some("tls_cert_file")),
            ("rediss://h/?tls_key_file=/k.pem", Some("tls_cert_file")),
        ] {
            let error = RedisConfig::parse_url(bad).expect_err(bad);
            assert_eq!(error.parameter(), parameter, "{bad}: {error}");
            assert!(matches!(
                RedisConfig::from_url(bad),
                Err(StateBackendError::Serialization(_))
            ));
        }
    }

    #[test]
    fn passwords_stay_in_the_url() {
        for url in [
            "redis://user:hunter2@h:1/?namespace=n&groups=many",
            "redis://user:hunter2@h:port/",
            "rediss://:hunter2@h:1/?colour=red#insecure",
            "redis://user:hun#ter2@h:1/?namespace=n",
            "redis://h:1/?namespace=n&password=hunter2",
            "rediss://laminar:hunter2@h:1/?tls_ca_file=/ca.pem&tls_cert_file=/c.pem",
            "rediss://laminar:hunter2@h:1/?tls_ca_file=",
            "redis://laminar:hunter2@h:1/?tls_ca_file=/ca.pem",
            "rediss://laminar:hunter2@h:1/?tls_ca_file=/ca.pem&tls_cert_file=/c.pem&tls_key_file=/k.pem",
        ] {
            let shown = match RedisConfig::from_url(url) {
                Ok(config) => format!("{config:?}"),
                Err(error) => format!("{error} {error:?}"),
            };
            assert!(
                !shown.contains("hunter2") && !shown.contains("hun#"),
                "{url}: {shown}"
            );
        }
        let config = RedisConfig::from_url("redis://user:hunter2@h:1/?nodes=h:2").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
