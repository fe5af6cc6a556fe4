//! What each layer does beyond the conformance suite: every method reaches
//! the backend inside as itself; retries, timeouts, compression and
//! encryption behave as documented.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::faults::LostAnswers;
use laminar_state_layers::{
    COMPRESSION_MAGIC, CompressionAlgorithm, CompressionLayer, ENCRYPTION_OVERHEAD, EncryptionKey,
    EncryptionLayer, Keyring, LayerConfig, MetricsLayer, Operation, RetryLayer, RetryPolicy,
    Target, TimeoutLayer, TracingLayer, layer, layer_with_keyring,
};
use laminar_state_memory::{MemoryBackend, MemoryStore};

/// A backend that records which of its methods were called, answers
/// `Ok`, and says 7 for every query.
#[derive(Default)]
struct Recording(Mutex<Vec<&'static str>>);

impl Recording {
    fn log(&self, name: &'static str) {
        self.0.lock().unwrap().push(name);
    }
}

#[async_trait]
impl StateBackend for Recording {
    async fn write_partial(
        &self,
        _: u32,
        _: u64,
        _: u64,
        _: Bytes,
    ) -> Result<(), StateBackendError> {
        self.log("write_partial");
        Ok(())
    }
    async fn read_partial(&self, _: u32, _: u64) -> Result<Option<Bytes>, StateBackendError> {
        self.log("read_partial");
        Ok(None)
    }
    async fn epoch_complete(&self, _: u64, _: &[u32]) -> Result<bool, StateBackendError> {
        self.log("epoch_complete");
        Ok(true)
    }
    async fn prune_before(&self, _: u64) -> Result<(), StateBackendError> {
        self.log("prune_before");
        Ok(())
    }
    fn set_authoritative_version(&self, _: u64) {
        self.log("set_authoritative_version");
    }
    fn authoritative_version(&self) -> u64 {
        self.log("authoritative_version");
        7
    }
    async fn latest_committed_epoch(&self) -> Result<Option<u64>, StateBackendError> {
        self.log("latest_committed_epoch");
        Ok(Some(7))
    }
    async fn sealed_epochs(&self, _: u64) -> Result<Vec<u64>, StateBackendError> {
        self.log("sealed_epochs");
        Ok(vec![7])
    }
    async fn persist_authoritative_version(&self, _: u64) -> Result<(), StateBackendError> {
        self.log("persist_authoritative_version");
        Ok(())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn keyring() -> Keyring {
    Keyring::new(1, EncryptionKey::from_bytes([3; 32]))
}

#[test]
fn every_layer_forwards_every_method_as_itself() {
    type Wrap = fn(Arc<dyn StateBackend>) -> Arc<dyn StateBackend>;
    let layers: [(&str, Wrap); 7] = [
        ("tracing", |b| Arc::new(TracingLayer::new(b, "rec", "i"))),
        ("metrics", |b| Arc::new(MetricsLayer::new(b, "rec", "i"))),
        ("retry", |b| {
            Arc::new(RetryLayer::new(b, RetryPolicy::default()))
        }),
        ("timeout", |b| {
            Arc::new(TimeoutLayer::new(b, Duration::from_secs(5)))
        }),
        ("compression", |b| Arc::new(CompressionLayer::new(b, None))),
        ("encryption", |b| {
            Arc::new(EncryptionLayer::new(b, keyring(), None))
        }),
        ("all", |b| {
            let config = LayerConfig {
                tracing: Some(true),
                metrics: Some(true),
                retry: 2,
                timeout_ms: Some(5000),
                compression: CompressionAlgorithm::Lz4,
                ..LayerConfig::default()
            };
            layer_with_keyring(b, &config, &Target::new("rec", "i", 1 << 20), keyring()).unwrap()
        }),
    ];
    rt().block_on(async {
        for (name, wrap) in layers {
            let inner = Arc::new(Recording::default());
            let layered = wrap(inner.clone());
            layered
                .write_partial(1, 2, 3, Bytes::from_static(b"x"))
                .await
                .unwrap();
            layered.read_partial(1, 2).await.unwrap();
            assert!(layered.epoch_complete(2, &[1]).await.unwrap(), "{name}");
            layered.prune_before(1).await.unwrap();
            layered.set_authoritative_version(4);
            assert_eq!(layered.authoritative_version(), 7, "{name}");
            assert_eq!(
                layered.latest_committed_epoch().await.unwrap(),
                Some(7),
                "{name}"
            );
            assert_eq!(layered.sealed_epochs(0).await.unwrap(), vec![7], "{name}");
            layered.persist_authoritative_version(5).await.unwrap();
            let mut seen = inner.0.lock().unwrap().clone();
            // The metrics layer reads the fence after a raise, for its gauge.
            seen.retain(|&m| m != "authoritative_version");
            assert_eq!(
                seen,
                [
                    "write_partial",
                    "read_partial",
                    "epoch_complete",
                    "prune_before",
                    "set_authoritative_version",
                    "latest_committed_epoch",
                    "sealed_epochs",
                    "persist_authoritative_version",
                ],
                "{name}"
            );
        }
    });
}

/// A backend whose calls answer from a script, counting the calls.
struct Scripted {
    answers: Mutex<Vec<StateBackendError>>,
    calls: AtomicU32,
    delay: Duration,
}

impl Scripted {
    fn new(mut answers: Vec<StateBackendError>) -> Arc<Self> {
        answers.reverse();
        Arc::new(Self {
            answers: Mutex::new(answers),
            calls: AtomicU32::new(0),
            delay: Duration::ZERO,
        })
    }

    async fn answer(&self) -> Result<(), StateBackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        match self.answers.lock().unwrap().pop() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl StateBackend for Scripted {
    async fn write_partial(
        &self,
        _: u32,
        _: u64,
        _: u64,
        _: Bytes,
    ) -> Result<(), StateBackendError> {
        self.answer().await
    }
    async fn read_partial(&self, _: u32, _: u64) -> Result<Option<Bytes>, StateBackendError> {
        self.answer().await.map(|()| None)
    }
    async fn epoch_complete(&self, _: u64, _: &[u32]) -> Result<bool, StateBackendError> {
        self.answer().await.map(|()| true)
    }
    async fn prune_before(&self, _: u64) -> Result<(), StateBackendError> {
        self.answer().await
    }
    async fn sealed_epochs(&self, _: u64) -> Result<Vec<u64>, StateBackendError> {
        self.answer().await.map(|()| vec![])
    }
}

fn io(message: &str) -> StateBackendError {
    StateBackendError::Io(message.to_owned())
}

fn fast(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        max_elapsed: Duration::from_secs(5),
    }
}

#[test]
fn io_errors_are_retried_until_they_stop() {
    rt().block_on(async {
        let inner = Scripted::new(vec![io("reset"), io("reset")]);
        let retry = RetryLayer::new(inner.clone(), fast(3));
        retry.write_partial(0, 1, 0, Bytes::new()).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn retries_are_bounded_by_count_and_say_so() {
    rt().block_on(async {
        let inner = Scripted::new((0..10).map(|_| io("reset")).collect());
        let retry = RetryLayer::new(inner.clone(), fast(2));
        let err = retry.prune_before(3).await.unwrap_err();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert!(
            matches!(&err, StateBackendError::Io(m) if m.contains("reset") && m.contains("prune_before after 3 attempts")),
            "{err}"
        );
    });
}

#[test]
fn retries_are_bounded_by_time() {
    rt().block_on(async {
        let inner = Scripted::new((0..1000).map(|_| io("reset")).collect());
        let policy = RetryPolicy {
            max_retries: 1000,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(20),
            max_elapsed: Duration::from_millis(150),
        };
        let started = Instant::now();
        let err = RetryLayer::new(inner.clone(), policy)
            .sealed_epochs(0)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        let calls = inner.calls.load(Ordering::SeqCst);
        assert!((5..=16).contains(&calls), "{calls} calls");
        assert!(matches!(err, StateBackendError::Io(m) if m.contains("gave up on sealed_epochs")));
    });
}

#[test]
fn answers_are_never_retried() {
    rt().block_on(async {
        for answer in [
            StateBackendError::StaleVersion {
                caller: 1,
                authoritative: 2,
            },
            StateBackendError::SplitBrainCommit {
                committer: "a".into(),
                self_id: "b".into(),
            },
            StateBackendError::Serialization("bad".into()),
            StateBackendError::NotFound { vnode: 1, epoch: 2 },
        ] {
            let shown = format!("{answer:?}");
            let inner = Scripted::new(vec![answer]);
            let retry = RetryLayer::new(inner.clone(), fast(5));
            let err = retry.epoch_complete(2, &[1]).await.unwrap_err();
            assert_eq!(format!("{err:?}"), shown);
            assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "{shown} was retried");
        }
    });
}

/// The first write applies, then another handle raises the fence past it,
/// then its answer is lost (`Io`); later writes pass through.
struct LandsThenFencedThenLost {
    inner: Arc<dyn StateBackend>,
    raiser: Arc<dyn StateBackend>,
    raise_to: u64,
    first: AtomicU32,
}

#[async_trait]
impl laminar_state_api::ForwardingBackend for LandsThenFencedThenLost {
    type Inner = dyn StateBackend;

    fn inner(&self) -> &Self::Inner {
        &*self.inner
    }

    async fn write_partial(
        &self,
        vnode: u32,
        epoch: u64,
        version: u64,
        bytes: Bytes,
    ) -> Result<(), StateBackendError> {
        self.inner
            .write_partial(vnode, epoch, version, bytes)
            .await?;
        if self.first.fetch_add(1, Ordering::SeqCst) == 0 {
            self.raiser
                .persist_authoritative_version(self.raise_to)
                .await?;
            return Err(io("the answer was lost"));
        }
        Ok(())
    }

    async fn read_partial(
        &self,
        vnode: u32,
        epoch: u64,
    ) -> Result<Option<Bytes>, StateBackendError> {
        self.inner.read_partial(vnode, epoch).await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.inner.read_partials(epoch, vnodes).await
    }
}

/// A write whose first attempt landed and whose answer was lost, retried
/// after the fence rose past it: the retry is refused, but the call must
/// not answer `StaleVersion` ("nothing was written"): its bytes are there
/// for anyone to read. It answers `Io`: outcome unknown.
#[test]
fn a_retry_refused_after_a_lost_answer_is_not_a_refusal() {
    rt().block_on(async {
        let store = MemoryStore::new();
        let writer: Arc<dyn StateBackend> = Arc::new(store.open("writer", 4));
        let leader: Arc<dyn StateBackend> = Arc::new(store.open("leader", 4));
        writer.persist_authoritative_version(1).await.unwrap();
        let faulty = Arc::new(LandsThenFencedThenLost {
            inner: Arc::clone(&writer),
            raiser: Arc::clone(&leader),
            raise_to: 2,
            first: AtomicU32::new(0),
        });
        let retry = RetryLayer::new(faulty, fast(3));
        let answer = retry
            .write_partial(0, 1, 1, Bytes::from_static(b"landed"))
            .await;
        assert_eq!(
            leader.read_partial(0, 1).await.unwrap(),
            Some(Bytes::from_static(b"landed")),
            "the first attempt landed"
        );
        match answer {
            Err(StateBackendError::Io(message)) => assert!(
                message.contains("unknown") && message.contains("below the fence 2"),
                "{message}"
            ),
            other => {
                panic!("a write whose bytes landed, retried after the fence rose, gave {other:?}")
            }
        }
        // Without an earlier failed attempt, a refusal stays a refusal.
        match retry
            .write_partial(0, 2, 1, Bytes::from_static(b"late"))
            .await
        {
            Err(StateBackendError::StaleVersion {
                caller: 1,
                authoritative: 2,
            }) => {}
            other => panic!("a plain refusal through the retry layer gave {other:?}"),
        }
    });
}

/// A seed for which `LostAnswers(every = 2)` loses the answer of its first
/// call and delivers its second.
fn seed_losing_first_answer_only() -> u64 {
    let probe = rt();
    (0..10_000u64)
        .find(|&seed| {
            let faulty = LostAnswers::new(Arc::new(MemoryBackend::new("p", 1)), seed, 2);
            probe.block_on(async {
                faulty.read_partial(0, 0).await.is_err() && faulty.read_partial(0, 0).await.is_ok()
            })
        })
        .expect("some seed loses exactly the first of two answers")
}

#[test]
fn a_seal_whose_answer_was_lost_comes_back_won() {
    let seed = seed_losing_first_answer_only();
    rt().block_on(async {
        let store = MemoryStore::new();
        let leader = Arc::new(store.open("leader", 4));
        for vnode in 0..4 {
            leader
                .write_partial(vnode, 9, 0, Bytes::from_static(b"p"))
                .await
                .unwrap();
        }
        // The first seal applies (the marker names the leader), then its
        // answer is lost; the retry must report the seal as won.
        let faulty = Arc::new(LostAnswers::new(leader, seed, 2));
        let retry = RetryLayer::new(faulty.clone(), fast(3));
        assert!(retry.epoch_complete(9, &[0, 1, 2, 3]).await.unwrap());
        assert_eq!(faulty.lost(), 1, "the first answer was lost");
        // Another instance learns who won.
        let other = store.open("other", 4);
        assert!(matches!(
            other.epoch_complete(9, &[0, 1, 2, 3]).await,
            Err(StateBackendError::SplitBrainCommit { committer, .. }) if committer == "leader"
        ));
    });
}

/// A backend whose seal names itself the loser after a lost answer: the
/// flaw the conformance suite's P2 catches in backends; the retry layer
/// guards against it.
struct SealRetryNotWon(Arc<MemoryBackend>, AtomicU32);

#[async_trait]
impl laminar_state_api::ForwardingBackend for SealRetryNotWon {
    type Inner = MemoryBackend;

    fn inner(&self) -> &Self::Inner {
        &self.0
    }

    async fn write_partial(
        &self,
        v: u32,
        e: u64,
        a: u64,
        b: Bytes,
    ) -> Result<(), StateBackendError> {
        self.0.write_partial(v, e, a, b).await
    }
    async fn read_partial(&self, v: u32, e: u64) -> Result<Option<Bytes>, StateBackendError> {
        self.0.read_partial(v, e).await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.0.read_partials(epoch, vnodes).await
    }
    async fn epoch_complete(&self, epoch: u64, vnodes: &[u32]) -> Result<bool, StateBackendError> {
        let won = self.0.epoch_complete(epoch, vnodes).await?;
        match self.1.fetch_add(1, Ordering::SeqCst) {
            0 => Err(io("answer lost")),
            _ if won => Err(StateBackendError::SplitBrainCommit {
                committer: self.0.instance_id().to_owned(),
                self_id: self.0.instance_id().to_owned(),
            }),
            _ => Ok(false),
        }
    }
}

#[test]
fn a_split_brain_naming_ourselves_after_a_lost_answer_is_a_won_seal() {
    rt().block_on(async {
        let inner = Arc::new(MemoryBackend::new("me", 1));
        inner
            .write_partial(0, 1, 0, Bytes::from_static(b"p"))
            .await
            .unwrap();
        let flawed = Arc::new(SealRetryNotWon(inner, AtomicU32::new(0)));
        assert!(
            RetryLayer::new(flawed, fast(3))
                .epoch_complete(1, &[0])
                .await
                .unwrap()
        );
    });
}

#[test]
fn a_checkpoint_loop_through_lost_answers_and_retries_never_splits() {
    rt().block_on(async {
        for seed in 0..64u64 {
            let store = MemoryStore::new();
            let faulty = Arc::new(LostAnswers::new(Arc::new(store.open("leader", 4)), seed, 3));
            let retry = RetryLayer::new(faulty, fast(20));
            for epoch in 1..=12u64 {
                for vnode in 0..4 {
                    retry
                        .write_partial(vnode, epoch, epoch / 4, Bytes::from(vec![vnode as u8; 16]))
                        .await
                        .unwrap();
                }
                assert!(
                    retry.epoch_complete(epoch, &[0, 1, 2, 3]).await.unwrap(),
                    "seed {seed}"
                );
                if epoch % 4 == 3 {
                    retry
                        .persist_authoritative_version(epoch / 4 + 1)
                        .await
                        .unwrap();
                }
                retry.prune_before(epoch.saturating_sub(2)).await.unwrap();
            }
            let check = store.open("check", 4);
            assert_eq!(check.sealed_epochs(0).await.unwrap(), vec![10, 11, 12]);
        }
    });
}

#[test]
fn a_call_over_its_limit_is_an_io_error_naming_both() {
    rt().block_on(async {
        let mut slow = Scripted::new(vec![]);
        Arc::get_mut(&mut slow).unwrap().delay = Duration::from_millis(200);
        let timeout = TimeoutLayer::new(slow.clone(), Duration::from_millis(20))
            .with_limit(Operation::PruneBefore, Some(Duration::from_secs(5)))
            .with_limit(Operation::SealedEpochs, None);
        let err = timeout
            .write_partial(3, 7, 0, Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StateBackendError::Io(m)
                if m.contains("write_partial(vnode 3, epoch 7) timed out after 20ms")
                    && m.contains("limit for write_partial")),
            "{err}"
        );
        let err = timeout.epoch_complete(7, &[0]).await.unwrap_err();
        assert!(
            matches!(&err, StateBackendError::Io(m) if m.contains("epoch_complete")),
            "{err}"
        );
        // Longer or no limits let the same calls through.
        timeout.prune_before(1).await.unwrap();
        timeout.sealed_epochs(1).await.unwrap();
        assert_eq!(timeout.limit(Operation::SealedEpochs), None);
        assert_eq!(timeout.limit(Operation::SetAuthoritativeVersion), None);
    });
}

#[test]
fn timeouts_under_retries_are_retried_per_attempt() {
    rt().block_on(async {
        let mut slow = Scripted::new(vec![]);
        Arc::get_mut(&mut slow).unwrap().delay = Duration::from_millis(100);
        let stack = RetryLayer::new(
            Arc::new(TimeoutLayer::new(slow.clone(), Duration::from_millis(10))),
            fast(2),
        );
        let err = stack.read_partial(0, 0).await.unwrap_err();
        assert_eq!(slow.calls.load(Ordering::SeqCst), 3);
        assert!(matches!(err, StateBackendError::Io(m) if m.contains("timed out") && m.contains("3 attempts")));
    });
}

/// A serialized `HashMap<String, u64>` of counters, as an aggregation
/// operator would checkpoint it.
fn counters(entries: usize) -> Bytes {
    let mut out = Vec::new();
    for i in 0..entries {
        let key = format!("user:{}:clicks", 100_000 + (i * 7919) % 900_000);
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(((i * i) % 1000) as u64).to_le_bytes());
    }
    Bytes::from(out)
}

#[test]
fn compression_shrinks_reads_plain_partials_and_stores_incompressible_ones_as_is() {
    rt().block_on(async {
        let raw = Arc::new(MemoryBackend::new("a", 4));
        let layer = CompressionLayer::new(raw.clone(), Some(1 << 20));
        let payload = counters(2000);
        layer.write_partial(0, 1, 0, payload.clone()).await.unwrap();
        let stored = raw.read_partial(0, 1).await.unwrap().unwrap();
        assert!(stored.starts_with(&COMPRESSION_MAGIC));
        assert!(
            stored.len() * 2 < payload.len(),
            "{} of {}",
            stored.len(),
            payload.len()
        );
        assert_eq!(layer.read_partial(0, 1).await.unwrap().unwrap(), payload);

        // Written without the layer: read through it unchanged.
        raw.write_partial(1, 1, 0, payload.clone()).await.unwrap();
        assert_eq!(layer.read_partial(1, 1).await.unwrap().unwrap(), payload);

        // Incompressible: stored exactly as passed.
        let mut x = 88172645463325252u64;
        let noise: Bytes = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
            .into();
        layer.write_partial(2, 1, 0, noise.clone()).await.unwrap();
        assert_eq!(raw.read_partial(2, 1).await.unwrap().unwrap(), noise);
        assert_eq!(layer.read_partial(2, 1).await.unwrap().unwrap(), noise);
    });
}

#[test]
fn the_payload_limit_applies_to_what_the_caller_passed() {
    rt().block_on(async {
        let raw = Arc::new(MemoryStore::with_max_payload_len(1 << 20).open("a", 4));
        let layer = CompressionLayer::new(raw, Some(1000));
        let err = layer.write_partial(0, 1, 0, Bytes::from(vec![0; 1001])).await.unwrap_err();
        assert!(
            matches!(&err, StateBackendError::Serialization(m)
                if m.contains("payload of 1001 bytes for vnode 0") && m.contains("limit of 1000 bytes")
                    && m.contains("before compression")),
            "{err}"
        );
        layer.write_partial(0, 1, 0, Bytes::from(vec![0; 1000])).await.unwrap();
        let encrypted = EncryptionLayer::new(Arc::new(MemoryBackend::new("b", 4)), keyring(), Some(10));
        assert!(matches!(
            encrypted.write_partial(0, 1, 0, Bytes::from(vec![0; 11])).await,
            Err(StateBackendError::Serialization(m)) if m.contains("11 bytes") && m.contains("before encryption")
        ));
    });
}

#[test]
fn encrypted_partials_moved_flipped_or_read_with_another_key_are_refused() {
    rt().block_on(async {
        let store = MemoryStore::new();
        let raw = Arc::new(store.open("a", 8));
        let layer = EncryptionLayer::new(raw.clone(), keyring(), None);
        let secret = Bytes::from_static(b"account 42 balance 1000");
        layer.write_partial(1, 5, 0, secret.clone()).await.unwrap();
        let stored = raw.read_partial(1, 5).await.unwrap().unwrap();
        assert_eq!(stored.len(), secret.len() + ENCRYPTION_OVERHEAD);
        assert!(
            !stored.windows(7).any(|w| w == b"account"),
            "the payload is not stored in clear"
        );
        assert_eq!(layer.read_partial(1, 5).await.unwrap().unwrap(), secret);

        let refused = |r: Result<Option<Bytes>, StateBackendError>| {
            matches!(r, Err(StateBackendError::Serialization(_)))
        };
        // Copied to another vnode, and to another epoch.
        raw.write_partial(2, 5, 0, stored.clone()).await.unwrap();
        raw.write_partial(1, 6, 0, stored.clone()).await.unwrap();
        assert!(refused(layer.read_partial(2, 5).await));
        assert!(refused(layer.read_partial(1, 6).await));
        // A flipped bit.
        let mut flipped = stored.to_vec();
        flipped[40] ^= 1;
        raw.write_partial(3, 5, 0, flipped.into()).await.unwrap();
        assert!(refused(layer.read_partial(3, 5).await));
        // The wrong key, under the same id.
        let wrong = EncryptionLayer::new(
            raw.clone(),
            Keyring::new(1, EncryptionKey::from_bytes([4; 32])),
            None,
        );
        assert!(refused(wrong.read_partial(1, 5).await));
        // Written without the layer: refused, unless plaintext reads are allowed.
        raw.write_partial(4, 5, 0, Bytes::from_static(b"plain"))
            .await
            .unwrap();
        assert!(refused(layer.read_partial(4, 5).await));
        let migrating =
            EncryptionLayer::new(raw.clone(), keyring(), None).allow_plaintext_reads(true);
        assert_eq!(
            migrating.read_partial(4, 5).await.unwrap().unwrap(),
            "plain"
        );
        assert_eq!(migrating.read_partial(1, 5).await.unwrap().unwrap(), secret);
        // Keys are not shown.
        let shown = format!("{layer:?} {wrong:?}");
        assert!(
            !shown.contains("[3, 3") && !shown.contains("[4, 4"),
            "{shown}"
        );
    });
}

/// Run in a child process (this test binary, re-run with the key variables
/// set), since setting the environment of a running process is `unsafe`.
#[test]
fn keys_come_from_the_environment_and_never_show_in_errors() {
    let hex = "0f".repeat(32);
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "keys_from_the_environment_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LAYERS_TEST_CHILD", "1")
        .env("LAYERS_TEST_KEY_OK", &hex)
        .env("LAYERS_TEST_KEY_BAD", format!("{}zz", &hex[..62]))
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && shown.contains("1 passed"),
        "{shown}"
    );
    assert!(!shown.contains("0f0f"), "a key was shown: {shown}");
}

#[test]
fn keys_from_the_environment_child() {
    if std::env::var_os("LAYERS_TEST_CHILD").is_none() {
        return;
    }
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new("a", 1));
    let target = Target::new("memory", "a", 1 << 20);
    let (config, _) =
        LayerConfig::from_query("encryption_key_id=9&encryption_key_env=LAYERS_TEST_KEY_OK")
            .unwrap();
    let stack = layer(backend.clone(), &config, &target).unwrap();
    rt().block_on(async {
        stack
            .write_partial(0, 1, 0, Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(stack.read_partial(0, 1).await.unwrap().unwrap(), "x");
    });
    let (config, _) =
        LayerConfig::from_query("encryption_key_id=9&encryption_key_env=LAYERS_TEST_KEY_BAD")
            .unwrap();
    let err = layer(backend, &config, &target).err().unwrap().to_string();
    eprintln!("error: {err}");
    assert!(err.contains("LAYERS_TEST_KEY_BAD"), "{err}");
}
