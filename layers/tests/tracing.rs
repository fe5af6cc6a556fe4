//! The tracing layer, under a subscriber that captures everything: one span
//! per call with its fields, warnings for fence rejections and split-brain
//! commits with theirs, and never a payload byte or a key.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use laminar_state_api::StateBackendError;
use laminar_state_layers::{
    CompressionAlgorithm, EncryptionKey, Keyring, LayerConfig, Target, layer_with_keyring,
};
use laminar_state_memory::MemoryStore;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Everything the subscriber writes, kept.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const SECRET: &[u8] = b"TOP-SECRET-PAYLOAD-7f3a";
const KEY: [u8; 32] = [0xAB; 32];

#[test]
fn spans_and_warnings_carry_their_fields_and_never_payloads_or_keys() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(captured.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let store = MemoryStore::new();
            let config = LayerConfig {
                tracing: Some(true),
                metrics: Some(false),
                retry: 1,
                timeout_ms: Some(5_000),
                compression: CompressionAlgorithm::Lz4,
                ..LayerConfig::default()
            };
            let stack = |id: &str| {
                layer_with_keyring(
                    Arc::new(store.open(id, 4)),
                    &config,
                    &Target::new("redis://user:hunter2@host:6379/", id, 1 << 20),
                    Keyring::new(3, EncryptionKey::from_bytes(KEY)),
                )
                .unwrap()
            };
            let a = stack("node-a");
            let b = stack("node-b");
            a.write_partial(1, 2, 0, Bytes::from_static(SECRET))
                .await
                .unwrap();
            assert_eq!(a.read_partial(1, 2).await.unwrap().unwrap(), SECRET);
            assert!(a.epoch_complete(2, &[1]).await.unwrap());
            // A split brain: b asks about the epoch a sealed.
            assert!(matches!(
                b.epoch_complete(2, &[1]).await,
                Err(StateBackendError::SplitBrainCommit { .. })
            ));
            // A fence rejection: the fence is raised to 5, a zombie writes at 4.
            a.set_authoritative_version(5);
            assert!(matches!(
                b.write_partial(1, 3, 4, Bytes::from_static(SECRET)).await,
                Err(StateBackendError::StaleVersion {
                    caller: 4,
                    authoritative: 5
                })
            ));
            a.prune_before(1).await.unwrap();
            a.latest_committed_epoch().await.unwrap();
            a.sealed_epochs(0).await.unwrap();
            a.persist_authoritative_version(6).await.unwrap();
            assert_eq!(a.authoritative_version(), 6);
        });
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let find = |all: &[&str]| -> Vec<String> {
        lines
            .iter()
            .filter(|line| all.iter().all(|needle| line.contains(needle)))
            .map(|line| line.to_string())
            .collect()
    };

    // One span per call, closed with its fields.
    for operation in [
        "write_partial",
        "read_partial",
        "epoch_complete",
        "prune_before",
        "set_authoritative_version",
        "authoritative_version",
        "latest_committed_epoch",
        "sealed_epochs",
        "persist_authoritative_version",
    ] {
        assert!(
            !find(&["close", &format!("operation=\"{operation}\"")]).is_empty(),
            "no span for {operation}:\n{text}"
        );
    }
    let write = find(&[
        "close",
        "operation=\"write_partial\"",
        "instance=\"node-a\"",
    ]);
    assert_eq!(write.len(), 1, "{text}");
    for field in [
        "backend=\"redis://user:***@host:6379/\"",
        "vnode=1",
        "epoch=2",
        "version=0",
        &format!("bytes={}", SECRET.len()),
        "outcome=\"ok\"",
    ] {
        assert!(
            write[0].contains(field),
            "{field} missing from {}",
            write[0]
        );
    }
    assert!(
        !find(&[
            "close",
            "operation=\"read_partial\"",
            &format!("bytes={}", SECRET.len())
        ])
        .is_empty()
    );
    assert!(
        !find(&[
            "close",
            "operation=\"epoch_complete\"",
            "sealed=true",
            "outcome=\"ok\""
        ])
        .is_empty()
    );

    // The two warnings, at WARN, with their fields.
    let split = find(&[
        "WARN",
        "split-brain",
        "committer=\"node-a\"",
        "self_id=\"node-b\"",
    ]);
    assert_eq!(split.len(), 1, "{text}");
    assert!(split[0].contains("epoch=2"), "{}", split[0]);
    let stale = find(&["WARN", "caller=4", "authoritative=5"]);
    assert_eq!(stale.len(), 1, "{text}");
    assert!(
        stale[0].contains("vnode=1") && stale[0].contains("epoch=3"),
        "{}",
        stale[0]
    );
    assert!(!find(&["close", "outcome=\"stale_version\""]).is_empty());
    assert!(!find(&["close", "outcome=\"split_brain\""]).is_empty());
    assert!(
        !find(&["INFO", "fence raised", "version=5"]).is_empty(),
        "{text}"
    );

    // Never a payload, a key or a password, in any form.
    let secret = String::from_utf8_lossy(SECRET);
    let secret_debug = format!("{:?}", &SECRET[..6]);
    let key_debug = format!("{:?}", &KEY[..4]);
    for forbidden in [
        &*secret,
        "TOP-SECRET",
        &secret_debug,
        "544f502d",
        "abababab",
        &key_debug,
        "hunter2",
    ] {
        assert!(
            !text.contains(forbidden),
            "{forbidden:?} was logged:\n{text}"
        );
    }
    let _ = std::io::stderr().write_all(b"");
}
