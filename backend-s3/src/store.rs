//! [`S3Store`]: one prefix in one bucket, its client, and the checks made
//! at connect.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_smithy_http_client::tls;
use bytes::Bytes;
use laminar_state_api::{InputLimits, StateBackendError};
use tokio::sync::oneshot;

use crate::backend::S3Backend;
use crate::client::{Condition, Failure};
use crate::config::S3Config;
use crate::fence::{FenceState, Snapshot};
use crate::layout::{Layout, stamp};
use crate::prunes::Observed;

/// Directory buckets (S3 Express One Zone) end their names with this.
pub(crate) const DIRECTORY_BUCKET_SUFFIX: &str = "--x-s3";

/// The endpoints and buckets (`"ENDPOINT BUCKET"`) whose conditional writes
/// this process has probed successfully.
pub(crate) static PROBED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One prefix in one bucket, with its client: shared by the handles opened
/// from it (they share connections, fence reads and snapshots).
#[derive(Clone)]
pub struct S3Store {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    pub(crate) layout: Layout,
    pub(crate) max_payload_len: usize,
    /// The highest fence value read from the bucket.
    pub(crate) seen: AtomicU64,
    /// Callers waiting for the next fence read (see [`Shared::fresh_fence`]).
    pub(crate) fence_reads: Mutex<FenceReads>,
    /// Snapshots by fence value; immutable once written.
    pub(crate) snapshots: Mutex<HashMap<u64, Arc<Snapshot>>>,
    /// The newest prune registry this process saw (see `prunes`).
    pub(crate) registry: Mutex<Arc<Observed>>,
    /// How late a request may land after it was sent: every attempt starts
    /// within the operation timeout, and a store is assumed to apply an
    /// attempt within the attempt timeout or never. A prune's lease is
    /// counted in these.
    pub(crate) request_bound: Duration,
}

#[derive(Default)]
pub(crate) struct FenceReads {
    pub(crate) running: bool,
    pub(crate) waiting: Vec<oneshot::Sender<Result<FenceState, StateBackendError>>>,
}

/// The error again, for answering every caller that shared one request.
pub(crate) fn copy_error(error: &StateBackendError) -> StateBackendError {
    match error {
        StateBackendError::Serialization(m) => StateBackendError::Serialization(m.clone()),
        other => StateBackendError::Io(other.to_string()),
    }
}

impl S3Store {
    /// Build the client from `config` and check what the backend relies on
    /// (see "What the store must do" in the crate docs): the bucket answers
    /// and is not a directory bucket; the store honours `If-None-Match: *`
    /// and `If-Match` (probed once per process for each endpoint and
    /// bucket); the fence object exists, or the store is new (no snapshots)
    /// and the fence object is created. Each failed check is a
    /// [`StateBackendError::Io`] naming what is missing, or a
    /// [`StateBackendError::Serialization`] for a damaged fence history.
    ///
    /// The HTTP client is hyper with rustls (ring): the workspace's one TLS
    /// stack.
    pub async fn connect(config: &S3Config) -> Result<Self, StateBackendError> {
        if config.bucket.ends_with(DIRECTORY_BUCKET_SUFFIX) {
            return Err(StateBackendError::Io(format!(
                "s3 bucket {:?} is a directory bucket (S3 Express One Zone, name ending in \
                 {DIRECTORY_BUCKET_SUFFIX:?}): its listings are not in key order and ignore \
                 StartAfter, which the commit markers' queries and prune rely on; use a general \
                 purpose bucket",
                config.bucket
            )));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(config.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_secs(2));
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.attempt_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts);
        let region = config
            .region
            .clone()
            .or_else(|| config.endpoint.as_ref().map(|_| "us-east-1".to_owned()));
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some((id, secret)) = &config.credentials {
            loader = loader.credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                id,
                secret,
                None,
                None,
                "laminar-state-config",
            )));
        }
        let sdk = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            s3 = s3.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        let client = Client::from_conf(s3.build());
        let store = Self {
            shared: Arc::new(Shared {
                client,
                bucket: config.bucket.clone(),
                layout: Layout::new(&config.prefix),
                max_payload_len: config.max_payload_len,
                seen: AtomicU64::new(0),
                fence_reads: Mutex::new(FenceReads::default()),
                snapshots: Mutex::new(HashMap::new()),
                registry: Mutex::new(Arc::new(Observed::default())),
                request_bound: config.operation_timeout + config.attempt_timeout,
            }),
        };
        store
            .shared
            .client
            .head_bucket()
            .bucket(&config.bucket)
            .send()
            .await
            .map_err(|e| {
                StateBackendError::Io(format!(
                    "s3 bucket {:?} at {}: {}",
                    config.bucket,
                    config.endpoint.as_deref().unwrap_or("AWS"),
                    DisplayErrorContext(&e)
                ))
            })?;
        let probed = format!(
            "{} {}",
            config.endpoint.as_deref().unwrap_or("AWS"),
            config.bucket
        );
        if !PROBED.lock().expect("probe cache lock").contains(&probed) {
            store.shared.probe_conditions().await?;
            PROBED.lock().expect("probe cache lock").insert(probed);
        }
        store.shared.check_fence().await?;
        Ok(store)
    }

    /// A handle on this store for `instance_id`, serving vnodes
    /// `0..vnode_capacity`.
    pub fn handle(&self, instance_id: impl Into<String>, vnode_capacity: u32) -> S3Backend {
        S3Backend {
            store: self.clone(),
            instance_id: instance_id.into(),
            limits: InputLimits::new(vnode_capacity, self.shared.max_payload_len),
            told: AtomicU64::new(0),
            carried: AtomicU64::new(0),
        }
    }

    /// The S3 client, for tools that inspect the bucket (benchmarks, tests
    /// that damage objects).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// The key prefix of this store (empty, or ending with `/`).
    pub fn prefix(&self) -> &str {
        &self.shared.layout.prefix
    }
}

impl Shared {
    /// Check that the store honours conditional writes, on a probe object
    /// of its own (deleted afterwards): a second `If-None-Match: *` create
    /// and an `If-Match` with a wrong ETag must both fail their condition.
    pub(crate) async fn probe_conditions(&self) -> Result<(), StateBackendError> {
        let key = format!("{}conditional-write-probe.{}", self.layout.prefix, stamp());
        let body = || Bytes::from_static(b"laminar-state probe");
        let outcome = async {
            match self
                .put("conditional write probe", &key, body(), Condition::Absent)
                .await
            {
                // Created; a 412 can only be this very PUT, retried after
                // it landed (the key is unique to this probe).
                Ok(_) | Err(Failure::Precondition(_)) => {}
                Err(other) => return Err(other.into()),
            }
            let checks = [
                (
                    Condition::Absent,
                    "If-None-Match: * (a second create of the same key succeeded)",
                ),
                (
                    Condition::Matches("\"00000000000000000000000000000000\""),
                    "If-Match (a replace with a wrong ETag succeeded)",
                ),
            ];
            for (condition, missing) in checks {
                match self
                    .put("conditional write probe", &key, body(), condition)
                    .await
                {
                    Err(Failure::Precondition(_)) => {}
                    Ok(_) => {
                        return Err(StateBackendError::Io(format!(
                            "s3 bucket {:?}: the store ignores {missing}; the fence and the \
                             commit markers need conditional writes, refusing to run on it",
                            self.bucket
                        )));
                    }
                    Err(
                        Failure::Missing(message) | Failure::Error(StateBackendError::Io(message)),
                    ) => {
                        return Err(StateBackendError::Io(format!(
                            "s3 bucket {:?}: probing {missing}: {message}; the fence and the \
                             commit markers need conditional writes",
                            self.bucket
                        )));
                    }
                    Err(Failure::Error(other)) => return Err(other),
                }
            }
            Ok(())
        }
        .await;
        // Deleted whatever happened; a probe object left behind is inert.
        self.discard(&key).await;
        outcome
    }
}
