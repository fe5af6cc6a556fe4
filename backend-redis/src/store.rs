//! [`RedisStore`]: one namespace on one server or cluster, its connection,
//! and the one place redis errors become [`StateBackendError`]s.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use laminar_state_api::{InputLimits, StateBackendError};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, Pipeline, RedisError, RedisFuture, Script, TlsCertificates, Value,
};
use tokio::sync::mpsc;

use crate::backend::RedisBackend;
use crate::config::{DEFAULT_CLUSTER_GROUPS, DEFAULT_STANDALONE_GROUPS, RedisConfig};
use crate::keys::{Keys, parse_decimal};
use crate::pauses::Pauses;
use crate::scripts::Scripts;
use crate::writer::{PendingWrite, group_writer};

/// A multiplexed, self-reconnecting connection to a server or a cluster.
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// One namespace on one server or cluster: shared by the handles opened
/// from it (they share its connection).
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// One queue per vnode group, drained by that group's writer task.
    pub(crate) writers: Vec<mpsc::UnboundedSender<PendingWrite>>,
    /// Per vnode group: direct writes in flight (see [`group_writer`]).
    pub(crate) direct_writes: Vec<AtomicU64>,
    pub(crate) connection: Connection,
    /// The namespace as the user named it.
    pub(crate) namespace: String,
    pub(crate) keys: Keys,
    pub(crate) cluster: bool,
    pub(crate) scripts: Scripts,
    pub(crate) timeout: Duration,
    pub(crate) max_payload_len: usize,
    pub(crate) server: String,
    pub(crate) replicas: u32,
    pub(crate) replica_timeout: Duration,
    pub(crate) replicate_writes: bool,
    /// The `maxmemory-policy` of every primary, as found at connect.
    pub(crate) eviction_policies: Vec<String>,
    pub(crate) pauses: Pauses,
}

impl RedisStore {
    /// Connect and check (or record) the namespace's layout.
    ///
    /// Spawns one writer task per vnode group on the current tokio runtime
    /// (they batch concurrent writes and end when the store is dropped), so
    /// use the store on the runtime that created it.
    pub async fn connect(config: &RedisConfig) -> Result<Self, StateBackendError> {
        let server = config
            .url
            .split('@')
            .next_back()
            .unwrap_or(&config.url)
            .to_owned();
        let connect_error = |e: RedisError| {
            StateBackendError::Io(format!("cannot connect to redis at {server}: {e}"))
        };
        let connection = if config.cluster {
            let nodes: Vec<&str> = std::iter::once(config.url.as_str())
                .chain(config.extra_nodes.iter().map(String::as_str))
                .collect();
            let mut builder = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(config.operation_timeout)
                .response_timeout(config.operation_timeout)
                .retries(3);
            if let Some(certificates) = tls_certificates(config)? {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(connect_error)?;
            let connection =
                tokio::time::timeout(config.operation_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| {
                        StateBackendError::Io(format!(
                            "connecting to redis cluster at {server} timed out"
                        ))
                    })?
                    .map_err(connect_error)?;
            Connection::Cluster(connection)
        } else {
            let client = match tls_certificates(config)? {
                Some(certificates) => {
                    redis::Client::build_with_tls(config.url.as_str(), certificates)
                }
                None => redis::Client::open(config.url.as_str()),
            }
            .map_err(connect_error)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.operation_timeout))
                .set_response_timeout(Some(config.operation_timeout))
                .set_number_of_retries(3)
                .set_max_delay(Duration::from_millis(500));
            let connection = tokio::time::timeout(
                config.operation_timeout,
                ConnectionManager::new_with_config(client, manager_config),
            )
            .await
            .map_err(|_| {
                StateBackendError::Io(format!("connecting to redis at {server} timed out"))
            })?
            .map_err(connect_error)?;
            Connection::Standalone(connection)
        };
        let wanted = config.groups.unwrap_or(if config.cluster {
            DEFAULT_CLUSTER_GROUPS
        } else {
            DEFAULT_STANDALONE_GROUPS
        });
        let mut store = Self {
            shared: Arc::new(Shared {
                connection,
                keys: Keys::new(&config.namespace, wanted),
                namespace: config.namespace.clone(),
                cluster: config.cluster,
                scripts: Scripts::new(),
                timeout: config.operation_timeout,
                max_payload_len: config.max_payload_len,
                server: server.clone(),
                replicas: config.replicas,
                replica_timeout: config.replica_timeout.max(Duration::from_millis(1)),
                replicate_writes: config.replicate_writes,
                eviction_policies: Vec::new(),
                pauses: Pauses::default(),
                writers: Vec::new(),
                direct_writes: Vec::new(),
            }),
        };
        store.check_permissions().await?;
        let policies = store.eviction_policies().await?;
        if let Some(policy) = policies.iter().find(|p| p.starts_with("allkeys-")) {
            let why = format!(
                "redis at {server} runs with maxmemory-policy {policy}, which can evict any key: \
                 this store's fences, commit markers and partials could vanish silently"
            );
            if !config.allow_eviction {
                return Err(StateBackendError::Io(format!(
                    "{why}; use noeviction (or a volatile-* policy: this store sets no TTL), \
                     or open anyway with allow_eviction=true"
                )));
            }
            tracing::warn!(server = %server, policy = %policy, "{why}; opened anyway (allow_eviction)");
        }
        if let Some(shared) = Arc::get_mut(&mut store.shared) {
            shared.eviction_policies = policies;
        }
        let keys_layout = store.shared.keys.layout();
        let recorded: String = store
            .call(
                "open",
                |s| &s.layout,
                |call| {
                    call.key(keys_layout).arg(wanted);
                },
            )
            .await?;
        let groups = u32::try_from(parse_decimal(&recorded, "the layout key")?)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| {
                StateBackendError::Serialization(format!(
                    "namespace {:?} records {recorded} vnode groups",
                    config.namespace
                ))
            })?;
        if groups != wanted {
            if config.groups.is_some() {
                return Err(StateBackendError::Serialization(format!(
                    "namespace {:?} was created with {groups} vnode groups, not {wanted}",
                    config.namespace
                )));
            }
            if let Some(shared) = Arc::get_mut(&mut store.shared) {
                shared.keys.groups = groups;
            }
        }
        let mut queues = Vec::new();
        if let Some(shared) = Arc::get_mut(&mut store.shared) {
            for _ in 0..shared.keys.groups {
                let (sender, queue) = mpsc::unbounded_channel();
                shared.writers.push(sender);
                shared.direct_writes.push(AtomicU64::new(0));
                queues.push(queue);
            }
        }
        for (group, queue) in queues.into_iter().enumerate() {
            tokio::spawn(group_writer(
                Arc::downgrade(&store.shared),
                group as u32,
                queue,
            ));
        }
        Ok(store)
    }

    /// A handle on this namespace for `instance_id`, serving vnodes
    /// `0..vnode_capacity`. It starts with the namespace's current fence.
    pub async fn handle(
        &self,
        instance_id: impl Into<String>,
        vnode_capacity: u32,
    ) -> Result<RedisBackend, StateBackendError> {
        let fence: Option<String> = self
            .query(
                "open",
                redis::cmd("GET").arg(self.shared.keys.fence()).clone(),
            )
            .await?;
        let fence = fence
            .map(|f| parse_decimal(&f, "the fence key"))
            .transpose()?
            .unwrap_or(0);
        Ok(RedisBackend {
            store: self.clone(),
            instance_id: instance_id.into(),
            limits: InputLimits::new(vnode_capacity, self.shared.max_payload_len),
            fence: AtomicU64::new(fence),
            // The namespace key is raised only after every group (see
            // `propagate_fence`), so a fence read there is already in every
            // group. Unless replicas must confirm a raise: this handle has
            // not seen it confirmed, so its first raise copies it again.
            propagated: AtomicU64::new(if self.shared.replicas > 0 { 0 } else { fence }),
            told: AtomicU64::new(0),
        })
    }

    /// Run one command, bounded by the operation timeout.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: Cmd,
    ) -> Result<T, StateBackendError> {
        let mut connection = self.shared.connection.clone();
        let result =
            tokio::time::timeout(self.shared.timeout, cmd.query_async(&mut connection)).await;
        self.finish(what, result)
    }

    /// Run `call(store, group)` for each of `groups` at once, each in its
    /// own task (on a cluster, groups live on different primaries); their
    /// answers, in no particular order, or the first error.
    pub(crate) async fn in_groups<G, T, F>(
        &self,
        what: &str,
        groups: impl IntoIterator<Item = G>,
        call: impl Fn(RedisStore, G) -> F,
    ) -> Result<Vec<T>, StateBackendError>
    where
        F: std::future::Future<Output = Result<T, StateBackendError>> + Send + 'static,
        T: Send + 'static,
    {
        let mut calls = tokio::task::JoinSet::new();
        for group in groups {
            calls.spawn(call(self.clone(), group));
        }
        let mut answers = Vec::with_capacity(calls.len());
        while let Some(answer) = calls.join_next().await {
            answers.push(answer.map_err(|e| {
                StateBackendError::Io(format!("a redis {what} task failed: {e}"))
            })??);
        }
        Ok(answers)
    }

    /// Run one script, by SHA (loading it on first use), with the keys and
    /// arguments `build` adds, bounded by the operation timeout.
    pub(crate) async fn call<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: fn(&Scripts) -> &Script,
        build: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, StateBackendError> {
        let mut connection = self.shared.connection.clone();
        let mut invocation = script(&self.shared.scripts).prepare_invoke();
        build(&mut invocation);
        let result = tokio::time::timeout(
            self.shared.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await;
        self.finish(what, result)
    }

    pub(crate) fn finish<T>(
        &self,
        what: &str,
        result: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StateBackendError> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(redis_error(what, &self.shared.server, &error)),
            Err(_) => Err(StateBackendError::Io(format!(
                "redis {what} at {}: no answer within {:?}",
                self.shared.server, self.shared.timeout
            ))),
        }
    }

    /// Refuse, naming them, the commands and keys this store needs that
    /// the connected ACL user may not use, before it uses any: a user
    /// that may not run scripts fails on this very call (`NOPERM`), one
    /// that may not run a command inside them is found by the probe
    /// script (`redis.acl_check_cmd`, Redis 7.0 and later). On a cluster,
    /// the node of the namespace's slot answers for all.
    pub(crate) async fn check_permissions(&self) -> Result<(), StateBackendError> {
        let keys = &self.shared.keys;
        let missing: Vec<String> = self
            .call(
                "open",
                |s| &s.permissions,
                |call| {
                    call.key(keys.layout()).arg(self.touch());
                    for key in keys
                        .namespace_keys()
                        .into_iter()
                        .chain(keys.group_keys(0, 0))
                    {
                        call.arg(key);
                    }
                },
            )
            .await?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(StateBackendError::Io(format!(
            "redis at {}: NOPERM: the ACL user this store connects as may not use {}, which \
             the store needs; grant the rules in laminar-state-redis's README (\"ACL\")",
            self.shared.server,
            missing.join(", ")
        )))
    }

    /// The `maxmemory-policy` of every primary (a cluster's `INFO` goes to
    /// all of them).
    pub(crate) async fn eviction_policies(&self) -> Result<Vec<String>, StateBackendError> {
        let info: Value = self
            .query("open", redis::cmd("INFO").arg("memory").clone())
            .await?;
        let mut texts = Vec::new();
        collect_texts(&info, &mut texts);
        let policies: Vec<String> = texts
            .iter()
            .flat_map(|text| text.lines())
            .filter_map(|line| line.trim().strip_prefix("maxmemory_policy:"))
            .map(str::to_owned)
            .collect();
        if policies.is_empty() {
            return Err(StateBackendError::Io(format!(
                "redis at {}: INFO memory names no maxmemory_policy, so this store cannot \
                 check that its keys are safe from eviction",
                self.shared.server
            )));
        }
        Ok(policies)
    }

    /// Test-only pause points (see [`Pauses`]).
    #[doc(hidden)]
    pub fn pauses(&self) -> &Pauses {
        &self.shared.pauses
    }

    /// The `maxmemory-policy` of every primary, as found at connect.
    pub fn maxmemory_policies(&self) -> &[String] {
        &self.shared.eviction_policies
    }

    /// Run one script like [`RedisStore::call`]; when `replicate` and
    /// [`RedisConfig::replicas`] are set, with a `WAIT` for that many
    /// replicas in the same pipeline, and say whether they confirmed it.
    ///
    /// One pipeline, because a `WAIT` only covers what its own connection
    /// wrote: sent on its own after the connection dropped and was made
    /// again, it would run on a connection that wrote nothing and confirm
    /// nothing while answering as if it did. The script is loaded in the
    /// same pipeline, since a server restarted or promoted has no scripts.
    /// On a cluster the pipeline goes to the primary of the script's keys.
    pub(crate) async fn call_replicated<T: redis::FromRedisValue>(
        &self,
        what: &str,
        replicate: bool,
        script: fn(&Scripts) -> &Script,
        build: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<(T, Confirmation), StateBackendError> {
        let wanted = self.shared.replicas;
        if !replicate || wanted == 0 {
            let reply = self.call(what, script, build).await?;
            return Ok((reply, Confirmation(None)));
        }
        let wait = self.shared.replica_timeout;
        let script = script(&self.shared.scripts);
        let mut invocation = script.prepare_invoke();
        build(&mut invocation);
        let mut pipeline = redis::pipe();
        pipeline
            .load_script(script)
            .ignore()
            .invoke_script(&invocation)
            .cmd("WAIT")
            .arg(wanted)
            .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        let mut connection = self.shared.connection.clone();
        let result = tokio::time::timeout(
            self.shared.timeout + wait,
            pipeline.query_async::<(T, i64)>(&mut connection),
        )
        .await;
        let (reply, acknowledged) = self.finish(what, result)?;
        let refusal = (acknowledged < i64::from(wanted)).then(|| {
            StateBackendError::Io(format!(
                "redis {what} at {}: applied on the primary, but only {acknowledged} of \
                 {wanted} replicas confirmed it within {wait:?}; not acknowledged (a retry \
                 settles the outcome)",
                self.shared.server
            ))
        });
        Ok((reply, Confirmation(refusal)))
    }

    /// Whether steps that found nothing to change must still write, so that
    /// a `WAIT` after them covers what an earlier, unconfirmed attempt
    /// wrote (possibly through another connection).
    pub(crate) fn touch(&self) -> &'static str {
        if self.shared.replicas > 0 { "1" } else { "0" }
    }
}

/// Whether enough replicas confirmed a step (see
/// [`RedisStore::call_replicated`]): the caller requires it only for the
/// outcomes it acknowledges.
#[must_use]
pub(crate) struct Confirmation(Option<StateBackendError>);

impl Confirmation {
    /// `Ok` when confirmed or when no confirmation was asked for; else the
    /// refusal naming the step and the count.
    pub(crate) fn require(self) -> Result<(), StateBackendError> {
        self.0.map_or(Ok(()), Err)
    }
}

/// The certificates the config names, read from their files, for a
/// `rediss://` URL with any of them; `None` uses the client's defaults.
fn tls_certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>, StateBackendError> {
    if config.tls_ca_file.is_none() && config.tls_cert_file.is_none() {
        return Ok(None);
    }
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StateBackendError::Io(format!("cannot read {what} {}: {e}", path.display()))
        })
    };
    let root_cert = config
        .tls_ca_file
        .as_deref()
        .map(|path| read("tls_ca_file", path))
        .transpose()?;
    let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("tls_cert_file", cert)?,
            client_key: read("tls_key_file", key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Every text in a reply (a cluster answers `INFO` with one per node).
fn collect_texts(value: &Value, texts: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => texts.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => texts.push(text.clone()),
        Value::VerbatimString { text, .. } => texts.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|item| collect_texts(item, texts))
        }
        Value::Map(pairs) => pairs
            .iter()
            .for_each(|(_, item)| collect_texts(item, texts)),
        _ => {}
    }
}

/// Map a redis error once: what failed, where, and why. A full server
/// (`maxmemory` reached) is called out, since retrying will not help.
pub(crate) fn redis_error(what: &str, server: &str, error: &RedisError) -> StateBackendError {
    let text = error.to_string();
    if text.contains("OOM") {
        return StateBackendError::Io(format!(
            "redis {what} at {server}: the server is full (maxmemory reached): {text}"
        ));
    }
    if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) {
        return StateBackendError::Io(format!(
            "redis {what} at {server}: NOPERM: {text} (the ACL user this store connects as lacks a \
             permission it needs: see laminar-state-redis's README, \"ACL\")"
        ));
    }
    StateBackendError::Io(format!("redis {what} at {server}: {text}"))
}
