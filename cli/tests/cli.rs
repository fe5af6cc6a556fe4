//! The built `laminar-state` binary, end to end, against real stores: redb
//! files, redis-server and SeaweedFS (S3) from the test-support launchers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state::{StateBackend, StateBackendError};
use laminar_state_test_support::fresh_prefix;
use laminar_state_test_support::redis::RedisServer;
use laminar_state_test_support::seaweed::{ACCESS_KEY, BUCKET, SECRET_KEY, TestServer};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_laminar-state");

/// Run the CLI; its exit code, stdout and stderr.
fn cli(args: &[&str]) -> (i32, String, String) {
    cli_env(args, &[])
}

fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the laminar-state binary");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Run the CLI with `--json`, expecting exit code `code`; its JSON document.
fn cli_json(args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (got, stdout, stderr) = cli(&all);
    assert_eq!(
        got, code,
        "laminar-state {args:?}: exit {got}, expected {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout of {args:?} is not JSON ({e}): {stdout}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(url: &str, id: &str) -> Arc<dyn StateBackend> {
    laminar_state::connect(url, id, 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

fn payload(epoch: u64, vnode: u32, len: usize) -> Bytes {
    (0..len)
        .map(|i| (epoch as usize * 31 + vnode as usize * 7 + i * 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// What a store holds, as far as the tests look: per sealed epoch, its
/// committer and its partials.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    latest: Option<u64>,
    epochs: BTreeMap<u64, (String, BTreeMap<u32, Bytes>)>,
}

/// Who sealed `epoch`: the gate asked by an instance that did not.
async fn committer_of(url: &str, epoch: u64, vnodes: &[u32]) -> String {
    let probe = open(url, "test-probe").await;
    match probe.epoch_complete(epoch, vnodes).await {
        Err(StateBackendError::SplitBrainCommit { committer, .. }) => committer,
        other => panic!("epoch {epoch} of {url} is not sealed by another: {other:?}"),
    }
}

async fn snapshot(url: &str) -> Snapshot {
    let handle = open(url, "test-reader").await;
    let latest = handle.latest_committed_epoch().await.unwrap();
    let mut epochs = BTreeMap::new();
    for epoch in handle.sealed_epochs(0).await.unwrap() {
        let vnodes = handle.partials(epoch).await.unwrap().expect("listable");
        let mut partials = BTreeMap::new();
        for &vnode in &vnodes {
            let bytes = handle.read_partial(vnode, epoch).await.unwrap().unwrap();
            partials.insert(vnode, bytes);
        }
        let committer = committer_of(url, epoch, &vnodes).await;
        epochs.insert(epoch, (committer, partials));
    }
    Snapshot { latest, epochs }
}

/// A source store: epochs 1 and 2 sealed by node-a, 3 by node-b (sparse
/// vnodes, one empty partial, one of 200 KiB), epoch 4 written but not
/// sealed; the fence raised to 3.
async fn fill_source(url: &str) {
    let a = open(url, "node-a").await;
    let b = open(url, "node-b").await;
    a.persist_authoritative_version(3).await.unwrap();
    let vnodes = [0u32, 5, 17, 300];
    for epoch in 1..=4u64 {
        for &vnode in &vnodes {
            let len = match (epoch, vnode) {
                (2, 5) => 0,
                (3, 300) => 200 << 10,
                _ => 100 + vnode as usize,
            };
            a.write_partial(vnode, epoch, 3, payload(epoch, vnode, len))
                .await
                .unwrap();
        }
        let sealer = if epoch == 3 { &b } else { &a };
        if epoch < 4 {
            assert!(sealer.epoch_complete(epoch, &vnodes).await.unwrap());
        }
    }
}

fn redb_url(dir: &Path, name: &str) -> String {
    format!("redb://{}", dir.join(name).display())
}

fn s3_url(server: &TestServer) -> String {
    format!(
        "s3://{BUCKET}/{}?endpoint={}&access_key_id={ACCESS_KEY}&secret_access_key={SECRET_KEY}",
        fresh_prefix("cli"),
        server.endpoint()
    )
}

fn redis_url(server: &RedisServer) -> String {
    format!("{}/?namespace={}", server.url(), fresh_prefix("cli"))
}

#[test]
fn copy_round_trip_redb_s3_redis_redb_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = TestServer::start();
    let redis = RedisServer::start(&dir.path().join("redis"), &[]);
    let src = redb_url(dir.path(), "src.redb");
    let via_s3 = s3_url(&s3);
    let via_redis = redis_url(&redis);
    let back = redb_url(dir.path(), "back.redb");
    let rt = runtime();
    rt.block_on(fill_source(&src));
    // The redb file is locked by the process that has it open: let go.
    let original = rt.block_on(snapshot(&src));
    assert_eq!(original.latest, Some(3));
    assert_eq!(original.epochs.len(), 3);
    for (from, to) in [(&src, &via_s3), (&via_s3, &via_redis), (&via_redis, &back)] {
        let report = cli_json(&["copy", from, to, "--epochs", "all", "--verify"], 0);
        assert_eq!(report["epochs_sealed"], 3, "{report}");
        assert_eq!(report["partials_copied"], 12, "{report}");
        assert_eq!(report["dst_latest_sealed_epoch"], 3, "{report}");
        assert_eq!(report["verified"], true);
        // The copied seal names the source's committer.
        assert_eq!(report["epochs"][2]["committer"], "node-b", "{report}");
    }
    let copied = rt.block_on(snapshot(&back));
    assert_eq!(
        copied, original,
        "redb -> s3 -> redis -> redb changed the state"
    );
    // inspect agrees on both ends.
    let inspect_src = cli_json(&["inspect", &src], 0);
    let inspect_back = cli_json(&["inspect", &back], 0);
    assert_eq!(inspect_src["latest_sealed_epoch"], 3);
    assert_eq!(inspect_src["latest_committer"], "node-b");
    assert_eq!(inspect_src["fence"], 3);
    for field in ["latest_sealed_epoch", "latest_committer", "sealed_epochs"] {
        assert_eq!(inspect_src[field], inspect_back[field], "{field}");
    }
    assert_eq!(
        inspect_back["sealed_epochs"][2]["bytes"],
        100 + 105 + 117 + (200 << 10)
    );
    // The unsealed epoch 4 was not copied; the fence was not raised.
    assert_eq!(inspect_back["fence"], 0);
    let (code, _, stderr) = cli(&["get", &back, "--vnode", "0", "--epoch", "4"]);
    assert_eq!(code, 6, "{stderr}");
    // get returns the very bytes.
    let out = dir.path().join("part.bin");
    let got = cli_json(
        &[
            "get",
            &via_redis,
            "--vnode",
            "300",
            "--epoch",
            "3",
            "-o",
            out.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(got["len"], 200 << 10);
    assert_eq!(std::fs::read(&out).unwrap(), payload(3, 300, 200 << 10));
    // Copying again copies nothing.
    let again = cli_json(&["copy", &src, &back, "--epochs", "all"], 0);
    assert_eq!(again["partials_copied"], 0, "{again}");
    assert_eq!(again["epochs_skipped"], 3, "{again}");
}

#[test]
fn a_killed_copy_resumes_and_copies_nothing_twice() {
    const VNODES: u32 = 60;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"), &[]);
    let src = redb_url(dir.path(), "src.redb");
    let dst = redis_url(&redis);
    let rt = runtime();
    rt.block_on(async {
        let h = open(&src, "engine").await;
        let all: Vec<u32> = (0..VNODES).collect();
        for epoch in [1, 2] {
            for &vnode in &all {
                h.write_partial(vnode, epoch, 0, payload(epoch, vnode, 512))
                    .await
                    .unwrap();
            }
            assert!(h.epoch_complete(epoch, &all).await.unwrap());
        }
    });
    // Slowed down (each write waits 100 ms, 8 at a time), so it is killed
    // in the middle of epoch 1 whatever the machine's speed.
    let mut child = Command::new(BIN)
        .args(["copy", &src, &dst, "--epochs", "all"])
        .env("LAMINAR_STATE_CLI_WRITE_DELAY_MS", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watcher = rt.block_on(open(&dst, "test-watcher"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let present = rt.block_on(watcher.partials(1)).unwrap().unwrap().len();
        if present >= 16 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "the copy made no progress in 60s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGKILL: no cleanup of any kind.
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let present = rt.block_on(watcher.partials(1)).unwrap().unwrap().len() as u64;
    assert!(
        (16..VNODES as u64).contains(&present),
        "{present} partials of epoch 1 landed"
    );
    assert_eq!(
        rt.block_on(watcher.sealed_epochs(0)).unwrap(),
        Vec::<u64>::new(),
        "an epoch was sealed on the destination with partials missing"
    );
    assert!(
        rt.block_on(watcher.partials(2))
            .unwrap()
            .unwrap()
            .is_empty()
    );
    drop(watcher);
    let resumed = cli_json(&["copy", &src, &dst, "--epochs", "all", "--verify"], 0);
    // Every partial is either one the killed run stored (skipped, found
    // equal) or one this run copied: none is copied twice.
    assert_eq!(resumed["partials_skipped"], present, "{resumed}");
    assert_eq!(
        resumed["partials_copied"],
        2 * u64::from(VNODES) - present,
        "{resumed}"
    );
    assert_eq!(resumed["epochs_sealed"], 2, "{resumed}");
    assert_eq!(resumed["dst_latest_sealed_epoch"], 2);
    let third = cli_json(&["copy", &src, &dst, "--epochs", "all"], 0);
    assert_eq!(third["partials_copied"], 0, "{third}");
    assert_eq!(third["epochs_sealed"], 0, "{third}");
    assert_eq!(third["epochs_skipped"], 2, "{third}");
    assert_eq!(
        rt.block_on(snapshot(&dst)),
        rt.block_on(snapshot(&src)),
        "the resumed copy differs from the source"
    );
}

#[test]
fn a_corrupted_source_partial_fails_the_copy_naming_it_and_seals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.redb");
    let src = redb_url(dir.path(), "src.redb");
    let dst = redb_url(dir.path(), "dst.redb");
    let rt = runtime();
    rt.block_on(fill_source(&src));
    // Damage the stored frame of (vnode 17, epoch 1) behind the backend's
    // back: a valid header whose checksum does not match the body.
    {
        const PARTIALS: redb::TableDefinition<(u64, u32), &[u8]> =
            redb::TableDefinition::new("partials");
        let db = redb::Database::open(&src_path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(PARTIALS).unwrap();
            table
                .insert((1u64, 17u32), &[1u8, 0, 0, 0, 0, 42][..])
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let report = cli_json(&["copy", &src, &dst, "--epochs", "all"], 1);
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("vnode 17") && message.contains("epoch 1"),
        "{message}"
    );
    assert_eq!(report["ok"], false);
    let (code, _, stderr) = cli(&["copy", &src, &dst, "--epochs", "all"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("vnode 17 at epoch 1"), "{stderr}");
    let inspect = cli_json(&["inspect", &dst], 0);
    assert_eq!(inspect["latest_sealed_epoch"], Value::Null, "{inspect}");
    assert_eq!(inspect["sealed_epochs"], serde_json::json!([]));
    // inspect of the source reads the partials, and fails the same way.
    let (code, _, stderr) = cli(&["inspect", &src]);
    assert_eq!(code, 1);
    assert!(stderr.contains("vnode 17 at epoch 1"), "{stderr}");
}

/// A filled source redb file and a destination redb file holding one
/// partial, `(vnode, epoch)`, sealed if `seal`.
fn source_and_destination(
    vnode: u32,
    epoch: u64,
    seal: bool,
) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let src = redb_url(dir.path(), "src.redb");
    let dst = redb_url(dir.path(), "dst.redb");
    let rt = runtime();
    rt.block_on(fill_source(&src));
    rt.block_on(async {
        let h = open(&dst, "other").await;
        h.write_partial(vnode, epoch, 0, Bytes::from_static(b"there"))
            .await
            .unwrap();
        if seal {
            assert!(h.epoch_complete(epoch, &[vnode]).await.unwrap());
        }
    });
    (dir, src, dst)
}

#[test]
fn a_destination_with_newer_seals_is_refused_unless_forced() {
    let (_dir, src, dst) = source_and_destination(0, 9, true);
    let refused = cli_json(&["copy", &src, &dst, "--epochs", "all"], 4);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("sealed epoch 9")
    );
    assert_eq!(
        cli_json(&["inspect", &dst, "--quick"], 0)["sealed_epochs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let forced = cli_json(&["copy", &src, &dst, "--epochs", "all", "--force"], 0);
    assert_eq!(forced["epochs_sealed"], 3);
    assert_eq!(forced["dst_latest_sealed_epoch"], 9);
}

#[test]
fn export_import_round_trip_and_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = redb_url(dir.path(), "src.redb");
    let rt = runtime();
    rt.block_on(fill_source(&src));
    let original = rt.block_on(snapshot(&src));
    let file = dir.path().join("backup.lsx");
    let file_s = file.to_str().unwrap();
    let exported = cli_json(&["export", &src, file_s], 0);
    assert_eq!(exported["partials"], 12);
    assert_eq!(exported["epochs"], serde_json::json!([1, 2, 3]));
    assert!(!Path::new(&format!("{file_s}.partial")).exists());
    // An existing file is not overwritten.
    assert_eq!(cli_json(&["export", &src, file_s], 4)["error"], "refused");

    let restored = redb_url(dir.path(), "restored.redb");
    let imported = cli_json(&["import", file_s, &restored], 0);
    assert_eq!(imported["epochs_sealed"], 3, "{imported}");
    assert_eq!(imported["partials_copied"], 12, "{imported}");
    assert_eq!(rt.block_on(snapshot(&restored)), original);
    let again = cli_json(&["import", file_s, &restored], 0);
    assert_eq!(again["partials_copied"], 0, "{again}");
    assert_eq!(again["epochs_skipped"], 3, "{again}");

    let bytes = std::fs::read(&file).unwrap();
    let damaged = |name: &str, content: &[u8], expect: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let target = redb_url(dir.path(), &format!("{name}.redb"));
        let report = cli_json(&["import", path.to_str().unwrap(), &target], 5);
        let message = report["message"].as_str().unwrap().to_owned();
        for word in expect {
            assert!(message.contains(word), "{name}: {message:?} lacks {word:?}");
        }
        assert!(message.contains("nothing was sealed"), "{message}");
        let inspect = cli_json(&["inspect", &target, "--quick"], 0);
        assert_eq!(
            inspect["latest_sealed_epoch"],
            Value::Null,
            "{name}: {inspect}"
        );
    };
    // Truncated in the middle of the 200 KiB partial, and before the end
    // record.
    let big = find(&bytes, br#""epoch":3,"vnode":300"#);
    damaged(
        "cut.lsx",
        &bytes[..big + 1000],
        &["truncated", "vnode 300", "epoch 3"],
    );
    let end = find(&bytes, br#"{"record":"end""#);
    damaged(
        "no-end.lsx",
        &bytes[..end],
        &["truncated", "before its end record"],
    );
    // One byte of a partial altered.
    let mut altered = bytes.clone();
    let at = big + 200;
    altered[at] ^= 0x55;
    damaged(
        "altered.lsx",
        &altered,
        &["altered", "vnode 300", "epoch 3"],
    );
    // One byte of the manifest altered (the partials all check out).
    let mut manifest = bytes.clone();
    let entries = end + find(&bytes[end..], b"\"manifest\":[[");
    // A hex digit inside the first entry's sha256.
    let digit = entries + find(&bytes[entries..], b",\"") + 5;
    manifest[digit] = if manifest[digit] == b'a' { b'b' } else { b'a' };
    damaged("manifest.lsx", &manifest, &["altered"]);
    // Not an export at all.
    damaged("garbage.lsx", b"hello\n", &["not a record"]);
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

#[test]
fn fence_prune_and_bench() {
    let dir = tempfile::tempdir().unwrap();
    let url = redb_url(dir.path(), "bench.redb");
    let bench = cli_json(
        &[
            "bench", &url, "--vnodes", "8", "--bytes", "1024", "--epochs", "5",
        ],
        0,
    );
    assert_eq!(bench["last_epoch"], 5);
    assert!(
        bench["checkpoint_ms"]["p99"].as_f64().unwrap()
            >= bench["checkpoint_ms"]["p50"].as_f64().unwrap()
    );
    let inspect = cli_json(&["inspect", &url], 0);
    assert_eq!(inspect["latest_sealed_epoch"], 5);
    assert_eq!(inspect["latest_committer"], "laminar-state-cli-bench");
    // The loop prunes behind itself: epochs 4 and 5 are left.
    assert_eq!(inspect["sealed_epochs"].as_array().unwrap().len(), 2);
    assert_eq!(cli_json(&["fence", &url, "--raise", "7"], 0)["fence"], 7);
    let lower = cli_json(&["fence", &url, "--raise", "2"], 0);
    assert_eq!(
        (lower["fence"].clone(), lower["raised"].clone()),
        (7.into(), false.into())
    );
    // Off a terminal, prune needs --yes.
    assert_eq!(
        cli_json(&["prune", &url, "--before", "5"], 4)["error"],
        "refused"
    );
    let pruned = cli_json(&["prune", &url, "--before", "5", "--yes"], 0);
    assert_eq!(pruned["sealed_epochs_pruned"], serde_json::json!([4]));
    assert_eq!(
        cli_json(&["inspect", &url], 0)["sealed_epochs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A bad epoch range is a usage error.
    let (code, _, _) = cli(&["copy", &url, &url, "--epochs", "5..2"]);
    assert_eq!(code, 2);
}

#[test]
fn an_epoch_with_an_extra_partial_on_the_destination_is_not_sealed() {
    let (_dir, src, dst) = source_and_destination(999, 2, false);
    let report = cli_json(&["copy", &src, &dst, "--epochs", "all"], 3);
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains("epoch 2") && message.contains("[999]"),
        "{message}"
    );
    // Epoch 1 was complete and is sealed; epoch 2 is not, nor anything after.
    let inspect = cli_json(&["inspect", &dst, "--quick"], 0);
    assert_eq!(inspect["latest_sealed_epoch"], 1, "{inspect}");
}
