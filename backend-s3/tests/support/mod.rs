//! What the S3 tests and the benchmark share: the SeaweedFS launcher and
//! the fault proxy of `laminar-state-test-support`, and store configs for
//! them.

#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

use std::time::{Duration, Instant};

pub use laminar_state_test_support::seaweed::{
    ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer, TestServer,
};
pub use laminar_state_test_support::{fill, fresh_prefix, proxy};

/// A store configuration for `endpoint`, prefix `prefix`, with the test
/// credentials.
pub fn config(endpoint: &str, prefix: &str) -> laminar_state_s3::S3Config {
    let mut config = laminar_state_s3::S3Config::new(BUCKET, prefix);
    config.endpoint = Some(endpoint.to_owned());
    config.force_path_style = true;
    config.region = Some("us-east-1".into());
    config.credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
    config
}

/// A configuration with few attempts and short timeouts, so fault tests
/// reach their typed errors quickly (and boundedly).
pub fn impatient_config(endpoint: &str, prefix: &str) -> laminar_state_s3::S3Config {
    let mut config = config(endpoint, prefix);
    config.max_attempts = 3;
    config.attempt_timeout = Duration::from_millis(1_500);
    config.operation_timeout = Duration::from_secs(6);
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// Connect a store, panicking with the reason if it fails.
pub async fn store(config: &laminar_state_s3::S3Config) -> laminar_state_s3::S3Store {
    laminar_state_s3::S3Store::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting {config:?}: {e}"))
}

/// Keys in the bucket under the store's prefix whose `/`-prefixed form
/// contains `fragment` (so `"/m/"` matches a key that starts with `m/`).
pub async fn stored_keys(store: &laminar_state_s3::S3Store, fragment: &str) -> Vec<String> {
    let listed = store
        .client()
        .list_objects_v2()
        .bucket(store.bucket())
        .prefix(store.prefix())
        .send()
        .await
        .expect("raw LIST");
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| format!("/{k}").contains(fragment))
        .map(str::to_owned)
        .collect()
}

/// Wait (at most 10 s) until `seen` holds for the proxy; `what` names it
/// in the failure.
pub async fn wait_for(
    proxy: &proxy::FaultProxy,
    what: &str,
    seen: impl Fn(&proxy::FaultProxy) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(proxy) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// PUT `body` at `key` (a whole key, the prefix included) in the store's
/// bucket, past the backend: how tests damage or plant objects.
pub async fn raw_put(
    store: &laminar_state_s3::S3Store,
    key: &str,
    body: &[u8],
) -> Result<(), String> {
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .map(drop)
        .map_err(|e| format!("raw PUT of {key}: {e}"))
}

/// The time by this machine's clock, in milliseconds since the Unix epoch
/// (the clock prune leases are written in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Store the prune registry of the store at `prefix` past the backend, in
/// its frame, as a prune leaves it: change number `version`, `began`
/// prunes begun (one step: the highest bound listed, at `began`), and the
/// unfinished ones `(id, bound, lease end in ms since the Unix epoch)`. How
/// tests set the registry up exactly as a prune, or its lease renewal,
/// leaves it.
pub async fn put_registry(
    store: &laminar_state_s3::S3Store,
    prefix: &str,
    version: u64,
    began: u64,
    pruning: &[(&str, u64, u64)],
) {
    let mut text = format!("version {version}\nbegan {began}\n");
    if let Some(bound) = pruning.iter().map(|&(_, bound, _)| bound).max() {
        text.push_str(&format!("step {began} {bound}\n"));
    }
    for (id, bound, expires_ms) in pruning {
        text.push_str(&format!("pruning {id} {bound} {expires_ms}\n"));
    }
    let mut framed = vec![b'L', b'R', 1];
    framed.extend_from_slice(&crc32fast::hash(text.as_bytes()).to_le_bytes());
    framed.extend_from_slice(text.as_bytes());
    raw_put(store, &format!("{prefix}/prunes"), &framed)
        .await
        .expect("the registry PUT");
}

/// DELETE `key` (a whole key, the prefix included) from the store's bucket,
/// past the backend: as a lifecycle rule or a careless clean-up would.
pub async fn raw_delete(store: &laminar_state_s3::S3Store, key: &str) {
    store
        .client()
        .delete_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("raw DELETE of {key}: {e}"));
}

/// A fault for the next `times` requests of `method` whose target contains
/// `contains`.
pub fn rule(
    method: &'static str,
    contains: &str,
    action: proxy::Action,
    times: usize,
) -> proxy::Rule {
    proxy::Rule {
        method,
        contains: contains.into(),
        action,
        times,
    }
}

/// How many requests in `log` (the proxy's `seen` or `answered`) have this
/// method and a target containing `fragment`.
pub fn requests(log: &[proxy::Seen], method: &str, fragment: &str) -> usize {
    log.iter()
        .filter(|s| s.method == method && s.target.contains(fragment))
        .count()
}

/// How many requests, or answers, the proxy has held so far.
pub fn held(proxy: &proxy::FaultProxy) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| {
            matches!(
                s.fault,
                Some(proxy::Action::Hold | proxy::Action::HoldAnswer)
            )
        })
        .count()
}

/// Run `operation` until the proxy holds `count` requests (or answers),
/// `what` naming them in the failure; then `meanwhile`, and only then
/// release them. This is how a test orders another step inside the window
/// of a request that is in flight.
pub async fn while_held<T, U>(
    proxy: &proxy::FaultProxy,
    count: usize,
    what: &str,
    operation: impl std::future::Future<Output = T>,
    meanwhile: impl std::future::Future<Output = U>,
) -> (T, U) {
    let meanwhile = async {
        wait_for(proxy, what, |p| held(p) == count).await;
        let output = meanwhile.await;
        proxy.release(count);
        output
    };
    tokio::join!(operation, meanwhile)
}

/// Vnodes per handle where a test needs no particular number.
pub const VNODE_CAPACITY: u32 = 4;

/// A fresh prefix on a server of its own, reached directly or through a
/// fault proxy: handles on the proxied side meet the faults and holds the
/// test adds, handles on the direct side act and observe unhindered.
pub struct ProxiedPrefix {
    pub server: TestServer,
    pub proxy: proxy::FaultProxy,
    pub prefix: String,
}

impl ProxiedPrefix {
    /// Start the server and the proxy, on a prefix tagged `tag`.
    pub async fn start(tag: &str) -> Self {
        let server = TestServer::start();
        let proxy = proxy::FaultProxy::start(&server.address()).await;
        Self {
            server,
            proxy,
            prefix: fresh_prefix(tag),
        }
    }

    /// The configuration of a store that reaches the server directly.
    pub fn direct_config(&self) -> laminar_state_s3::S3Config {
        config(&self.server.endpoint(), &self.prefix)
    }

    /// The configuration of a store that reaches the server through the
    /// proxy.
    pub fn proxied_config(&self) -> laminar_state_s3::S3Config {
        config(&self.proxy.endpoint(), &self.prefix)
    }

    /// A store (its own client and caches) that reaches the server directly.
    pub async fn direct_store(&self) -> laminar_state_s3::S3Store {
        store(&self.direct_config()).await
    }

    /// A handle `id` on a store of its own that reaches the server directly.
    pub async fn direct(&self, id: &str) -> laminar_state_s3::S3Backend {
        self.direct_store().await.handle(id, VNODE_CAPACITY)
    }

    /// A handle `id` on a store of its own that reaches the server through
    /// the proxy.
    pub async fn proxied(&self, id: &str) -> laminar_state_s3::S3Backend {
        store(&self.proxied_config())
            .await
            .handle(id, VNODE_CAPACITY)
    }

    /// Fault the next `times` requests of `method` whose target contains
    /// `contains`.
    pub fn fault(&self, method: &'static str, contains: &str, action: proxy::Action, times: usize) {
        self.proxy.add(rule(method, contains, action, times));
    }

    /// How many requests of `method` whose target contains `fragment` the
    /// proxy has seen.
    pub fn seen(&self, method: &str, fragment: &str) -> usize {
        requests(&self.proxy.seen(), method, fragment)
    }

    /// How many requests the proxy has faulted (held, failed, stalled or
    /// dropped the answer of).
    pub fn faulted(&self) -> usize {
        self.proxy
            .seen()
            .iter()
            .filter(|s| s.fault.is_some())
            .count()
    }

    /// Run `operation` until the proxy holds one of its requests (or its
    /// answer), `what` naming it, while `pruner` prunes below `bound` to
    /// the end; the operation's outcome.
    pub async fn prune_while_held<T>(
        &self,
        what: &str,
        operation: impl std::future::Future<Output = T>,
        pruner: &dyn laminar_state_api::StateBackend,
        bound: u64,
    ) -> T {
        let prune = async {
            pruner.prune_before(bound).await.expect("the prune");
        };
        self.while_held(1, what, operation, prune).await.0
    }

    /// [`while_held`] on this proxy.
    pub async fn while_held<T, U>(
        &self,
        count: usize,
        what: &str,
        operation: impl std::future::Future<Output = T>,
        meanwhile: impl std::future::Future<Output = U>,
    ) -> (T, U) {
        while_held(&self.proxy, count, what, operation, meanwhile).await
    }
}

/// What `handle` reads for `vnode` in `epoch` (panicking on an error).
pub async fn read(
    handle: &dyn laminar_state_api::StateBackend,
    vnode: u32,
    epoch: u64,
) -> Option<bytes::Bytes> {
    handle
        .read_partial(vnode, epoch)
        .await
        .unwrap_or_else(|e| panic!("read_partial({vnode}, {epoch}): {e}"))
}

/// `handle`'s gate for `epoch` answers that `committer` sealed it; `asking`
/// names the gate in the failure.
pub async fn assert_sealed_by(
    handle: &dyn laminar_state_api::StateBackend,
    epoch: u64,
    vnodes: &[u32],
    committer: &str,
    asking: &str,
) {
    match handle.epoch_complete(epoch, vnodes).await {
        Err(laminar_state_api::StateBackendError::SplitBrainCommit {
            committer: named, ..
        }) => {
            assert_eq!(named, committer, "{asking} was told the wrong committer")
        }
        other => panic!("{asking} gave {other:?}"),
    }
}

/// Whether `outcome` is the refusal of a caller at version `caller` by the
/// fence at `authoritative`.
pub fn is_stale<T>(
    outcome: &Result<T, laminar_state_api::StateBackendError>,
    caller: u64,
    authoritative: u64,
) -> bool {
    matches!(
        outcome,
        Err(laminar_state_api::StateBackendError::StaleVersion { caller: c, authoritative: a })
            if *c == caller && *a == authoritative
    )
}

/// Write `x` as the partial of each of `vnodes` in `epoch`, at `version`.
pub async fn write_epoch(
    handle: &dyn laminar_state_api::StateBackend,
    epoch: u64,
    version: u64,
    vnodes: &[u32],
) {
    for &vnode in vnodes {
        handle
            .write_partial(vnode, epoch, version, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap_or_else(|e| panic!("write_partial({vnode}, {epoch}) at {version}: {e}"));
    }
}
