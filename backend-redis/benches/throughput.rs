//! The Redis backend against raw Redis commands doing the same work, on
//! the same server (`appendfsync always`, as P10 requires), in one run.
//!
//! `cargo bench -p laminar-state-redis` (or `cargo xtask bench`): 4 KiB
//! writes (raw `SET`) and reads (raw `GET`) with 1 and 64 concurrent tasks,
//! and `epoch_complete` at 256 vnodes against the raw approach of a pipeline
//! of 256 `EXISTS` followed by `SET NX` of the marker; the latency of whole
//! checkpoints (256 vnodes x 16 KiB written at once, the gate, a prune
//! keeping two epochs) against raw commands doing the same. Results: a table and
//! `target/bench/redis.json`. Under `cargo test` it runs once, tiny.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use laminar_state_api::StateBackend;
use laminar_state_bench::growth::{Growth, RawSide, Step, growth_rows};
use laminar_state_bench::{
    BackendOps, CHECKPOINT_VNODES, Mode, Row, alternate, checkpoint_rows, report,
};
use laminar_state_redis::{RedisBackend, RedisConfig};
use laminar_state_test_support::redis as support;
use redis::aio::ConnectionManager;

const PAYLOAD: usize = 4096;
const GATE_VNODES: u32 = 256;

fn main() {
    let mode = Mode::from_args();
    let (ops, gate_rounds) = if mode == Mode::Full {
        (20_000u64, 200u64)
    } else {
        (256, 3)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = support::RedisServer::start(dir.path(), &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = runtime.block_on(measure(&server.url(), ops, gate_rounds));
    rows.extend(runtime.block_on(growth(mode, &server.url())));
    let notes = ["(raw epoch_complete: pipelined EXISTS x256, then SET NX of the marker: the seed's approach, 2 round trips)".to_owned()];
    report("redis", "raw redis", &rows, mode, &notes);
    drop(server);
}

async fn measure(url: &str, ops: u64, gate_rounds: u64) -> Vec<Row> {
    let raw = ConnectionManager::new(redis::Client::open(url).expect("client"))
        .await
        .expect("raw connection");
    let mut config = RedisConfig::new(url, "bench");
    config.groups = Some(1);
    let backend: Arc<dyn StateBackend> = Arc::new(
        RedisBackend::connect(&config, "bench", u32::MAX)
            .await
            .expect("backend"),
    );
    let payload = Bytes::from(vec![0x5A; PAYLOAD]);
    let mut rows = Vec::new();

    for tasks in [1u64, 64] {
        let raw_set = {
            let (raw, payload) = (raw.clone(), payload.clone());
            move |i: u64| {
                let (mut raw, payload) = (raw.clone(), payload.clone());
                async move {
                    let () = redis::cmd("SET")
                        .arg(format!("raw:{i}"))
                        .arg(&payload[..])
                        .query_async(&mut raw)
                        .await
                        .expect("SET");
                }
            }
        };
        let our_write = {
            let (ours, payload) = (BackendOps::new(&backend), payload.clone());
            move |i: u64| ours.write(i as u32, 1, payload.clone())
        };
        let (raw_rate, our_rate) = alternate(tasks, ops, raw_set, our_write).await;
        rows.push(Row::per_second(
            format!("writes/s, {tasks} task(s), 4 KiB"),
            our_rate,
            raw_rate,
            Some(0.8),
        ));

        let raw_get = {
            let raw = raw.clone();
            move |i: u64| {
                let mut raw = raw.clone();
                async move {
                    let value: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(format!("raw:{i}"))
                        .query_async(&mut raw)
                        .await
                        .expect("GET");
                    assert!(value.is_some());
                }
            }
        };
        let our_read = {
            let ours = BackendOps::new(&backend);
            move |i: u64| ours.read(i as u32, 1, PAYLOAD)
        };
        let (raw_rate, our_rate) = alternate(tasks, ops, raw_get, our_read).await;
        rows.push(Row::per_second(
            format!("reads/s, {tasks} task(s), 4 KiB"),
            our_rate,
            raw_rate,
            Some(0.8),
        ));
    }

    let vnodes: Vec<u32> = (0..GATE_VNODES).collect();
    let (mut ours, mut seed) = (0.0, 0.0);
    for round in 0..gate_rounds {
        let epoch = 1_000 + round;
        let mut pipe = redis::pipe();
        for vnode in 0..GATE_VNODES {
            backend
                .write_partial(vnode, epoch, 0, Bytes::from_static(b"p"))
                .await
                .expect("write");
            pipe.cmd("SET")
                .arg(format!("raw:{epoch}:{vnode}"))
                .arg("p")
                .ignore();
        }
        let () = pipe
            .query_async(&mut raw.clone())
            .await
            .expect("raw partials");
        let started = Instant::now();
        assert!(backend.epoch_complete(epoch, &vnodes).await.expect("seal"));
        ours += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut exists = redis::pipe();
        for vnode in 0..GATE_VNODES {
            exists.cmd("EXISTS").arg(format!("raw:{epoch}:{vnode}"));
        }
        let present: Vec<u8> = exists.query_async(&mut raw.clone()).await.expect("EXISTS");
        assert!(present.iter().all(|&p| p == 1));
        let _: Option<String> = redis::cmd("SET")
            .arg(format!("raw:marker:{epoch}"))
            .arg("bench")
            .arg("NX")
            .query_async(&mut raw.clone())
            .await
            .expect("SET NX");
        seed += started.elapsed().as_secs_f64();
    }
    let ms = |total: f64| total * 1e3 / gate_rounds as f64;
    rows.push(Row::millis(
        "epoch_complete, 256 vnodes",
        ms(ours),
        ms(seed),
        None,
    ));
    rows.extend(whole_checkpoints(url, &raw, gate_rounds).await);
    rows
}

/// How the gate and the prune grow, with the commands each side sends
/// (the server's `total_commands_processed`). Raw: the gate as above; the
/// prune one pipelined `DEL` of every key below the bound, which the raw
/// side can name without a listing since it knows the vnodes.
async fn growth(mode: Mode, url: &str) -> Vec<Row> {
    fn partial(epoch: u64, vnode: u32) -> String {
        format!("rawgrowth:{epoch}:{vnode}")
    }
    fn marker(epoch: u64) -> String {
        format!("rawgrowth:marker:{epoch}")
    }
    let growth = Growth::for_mode(mode);
    let raw = ConnectionManager::new(redis::Client::open(url).expect("client"))
        .await
        .expect("raw connection");
    let backend: Arc<dyn StateBackend> = Arc::new(
        RedisBackend::connect(&RedisConfig::new(url, "growth"), "bench", u32::MAX)
            .await
            .expect("backend"),
    );
    let backend = &backend;
    let on_raw = move || raw.clone();
    let write = {
        let on_raw = on_raw.clone();
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let mut raw = on_raw();
            Box::pin(async move {
                let mut pipe = redis::pipe();
                for vnode in 0..vnodes {
                    pipe.cmd("SET").arg(partial(epoch, vnode)).arg("p").ignore();
                }
                let () = pipe.query_async(&mut raw).await.expect("raw partials");
            })
        }
    };
    let gate = {
        let on_raw = on_raw.clone();
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let mut raw = on_raw();
            Box::pin(async move {
                let mut exists = redis::pipe();
                for vnode in 0..vnodes {
                    exists.cmd("EXISTS").arg(partial(epoch, vnode));
                }
                let present: Vec<u8> = exists.query_async(&mut raw).await.expect("EXISTS");
                assert!(present.iter().all(|&p| p == 1));
                let _: Option<String> = redis::cmd("SET")
                    .arg(marker(epoch))
                    .arg("bench")
                    .arg("NX")
                    .query_async(&mut raw)
                    .await
                    .expect("SET NX");
            })
        }
    };
    let prune = {
        let on_raw = on_raw.clone();
        move |first: u64, end: u64, vnodes: u32| -> Step<'static> {
            let mut raw = on_raw();
            Box::pin(async move {
                let mut del = redis::pipe();
                for epoch in first..end {
                    for vnode in 0..vnodes {
                        del.cmd("DEL").arg(partial(epoch, vnode)).ignore();
                    }
                    del.cmd("DEL").arg(marker(epoch)).ignore();
                }
                let () = del.query_async(&mut raw).await.expect("DEL");
            })
        }
    };
    let commands = move || -> Step<'static, u64> {
        let mut raw = on_raw();
        Box::pin(async move {
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut raw)
                .await
                .expect("INFO");
            info.lines()
                .find_map(|line| line.strip_prefix("total_commands_processed:"))
                .and_then(|count| count.trim().parse().ok())
                .expect("total_commands_processed in INFO stats")
        })
    };
    let raw = RawSide {
        write: &write,
        gate: &gate,
        prune: &prune,
        requests: Some(&commands),
    };
    growth_rows(&growth, backend, &raw).await
}

/// Whole checkpoints, alternated: ours (every vnode written at once, the
/// gate, a prune keeping two epochs; default groups) against raw commands
/// doing the same: a `SET` per vnode at once, the gate as above (pipelined
/// `EXISTS`, then `SET NX` of the marker), and one pipelined `DEL` of the
/// epoch before the last two.
async fn whole_checkpoints(url: &str, raw: &ConnectionManager, rounds: u64) -> Vec<Row> {
    let vnodes = if rounds > 10 { CHECKPOINT_VNODES } else { 8 };
    let backend: Arc<dyn StateBackend> = Arc::new(
        RedisBackend::connect(&RedisConfig::new(url, "ckpt"), "bench", vnodes)
            .await
            .expect("backend"),
    );
    checkpoint_rows(rounds, &backend, vnodes, "", |epoch, payload| {
        let raw = raw.clone();
        async move {
            let mut sets = tokio::task::JoinSet::new();
            for vnode in 0..vnodes {
                let (mut raw, payload) = (raw.clone(), payload.clone());
                sets.spawn(async move {
                    let () = redis::cmd("SET")
                        .arg(format!("rawckpt:{epoch}:{vnode}"))
                        .arg(&payload[..])
                        .query_async(&mut raw)
                        .await
                        .expect("SET");
                });
            }
            while let Some(done) = sets.join_next().await {
                done.expect("SET task");
            }
            let mut exists = redis::pipe();
            for vnode in 0..vnodes {
                exists.cmd("EXISTS").arg(format!("rawckpt:{epoch}:{vnode}"));
            }
            let present: Vec<u8> = exists.query_async(&mut raw.clone()).await.expect("EXISTS");
            assert!(present.iter().all(|&p| p == 1));
            let _: Option<String> = redis::cmd("SET")
                .arg(format!("rawckpt:marker:{epoch}"))
                .arg("bench")
                .arg("NX")
                .query_async(&mut raw.clone())
                .await
                .expect("SET NX");
            if let Some(old) = epoch.checked_sub(2) {
                let mut del = redis::pipe();
                for vnode in 0..vnodes {
                    del.cmd("DEL")
                        .arg(format!("rawckpt:{old}:{vnode}"))
                        .ignore();
                }
                del.cmd("DEL").arg(format!("rawckpt:marker:{old}")).ignore();
                let () = del.query_async(&mut raw.clone()).await.expect("DEL");
            }
        }
    })
    .await
}
