//! [`RedisConfig`]: how to reach the server, and the URL that says so.

use std::time::Duration;

use laminar_state_api::{StateBackendError, redact_url};

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
        }
    }

    /// Parse `redis://host:port/?namespace=NS` (or `rediss://`), with
    /// optional `cluster=true`, `nodes=host:port,host:port`, `groups=N`,
    /// `timeout_ms=MS`, `max_payload_len=BYTES`, `replicas=N`,
    /// `replica_timeout_ms=MS`, `replicate_writes=true` and
    /// `allow_eviction=true`. Other query settings are passed to the redis
    /// client.
    pub fn from_url(url: &str) -> Result<Self, StateBackendError> {
        let bad = |why: String| {
            StateBackendError::Serialization(format!("bad redis URL {:?}: {why}", redact_url(url)))
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let scheme = base.split_once("://").map_or("", |(s, _)| s);
        if scheme != "redis" && scheme != "rediss" {
            return Err(bad("the scheme must be redis:// or rediss://".into()));
        }
        let mut config = Self::new(base, "laminar");
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = |value: &str| match value {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(bad(format!("{key}={value} is not true or false"))),
            };
            let number = |what: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{what}={value} is not a number")))
            };
            match key {
                "namespace" | "prefix" if !value.is_empty() => config.namespace = value.to_owned(),
                "cluster" => config.cluster = flag(value)?,
                "nodes" => {
                    config.extra_nodes = value
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(|node| format!("{scheme}://{node}"))
                        .collect();
                }
                "groups" => {
                    let groups = u32::try_from(number("groups")?)
                        .map_err(|_| bad("groups is too large".into()))?;
                    if groups == 0 {
                        return Err(bad("groups must be at least 1".into()));
                    }
                    config.groups = Some(groups);
                }
                "timeout_ms" => {
                    config.operation_timeout = Duration::from_millis(number("timeout_ms")?)
                }
                "replicas" => {
                    config.replicas = u32::try_from(number("replicas")?)
                        .map_err(|_| bad("replicas is too large".into()))?;
                }
                "replica_timeout_ms" => {
                    let ms = number("replica_timeout_ms")?;
                    if ms == 0 {
                        return Err(bad("replica_timeout_ms must be at least 1".into()));
                    }
                    config.replica_timeout = Duration::from_millis(ms);
                }
                "replicate_writes" => config.replicate_writes = flag(value)?,
                "allow_eviction" => config.allow_eviction = flag(value)?,
                "max_payload_len" => {
                    config.max_payload_len = usize::try_from(number("max_payload_len")?)
                        .map_err(|_| bad("max_payload_len is too large".into()))?;
                }
                _ => passed.push(pair),
            }
        }
        if !passed.is_empty() {
            config.url = format!("{base}?{}", passed.join("&"));
        }
        Ok(config)
    }
}
