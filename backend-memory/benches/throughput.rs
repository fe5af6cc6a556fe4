//! The memory backend against the simplest correct in-process store doing
//! the same work, in one run: one `RwLock<HashMap>` of partials, a fence
//! checked under it, commit markers in one map (the design of a typical
//! in-process test backend). Same data (256 vnodes x 64 epochs of 4 KiB),
//! same operation counts, alternated in slices; a prune between units. And
//! the latency of whole checkpoints (256 vnodes x 16 KiB written at once,
//! the gate, a prune keeping two epochs).
//!
//! `cargo bench -p laminar-state-memory` (or `cargo xtask bench --backend
//! memory`): a table on stdout and `target/bench/memory.json`. Under `cargo
//! test` it runs once, tiny, as a smoke test.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use laminar_state_api::StateBackend;
use laminar_state_bench::growth::{Growth, RawSide, Step, growth_rows};
use laminar_state_bench::{
    BackendOps, CHECKPOINT_VNODES, Mode, Row, alternate, checkpoint_rows, report,
};
use laminar_state_memory::MemoryBackend;

const VNODES: u32 = 256;
const PAYLOAD: usize = 4096;

/// One lock for every partial: the baseline.
#[derive(Default)]
struct SingleLock {
    partials: RwLock<HashMap<(u64, u32), Bytes>>,
    fence: RwLock<u64>,
    markers: Mutex<BTreeMap<u64, String>>,
}

impl SingleLock {
    fn write(&self, vnode: u32, epoch: u64, version: u64, bytes: Bytes) {
        let fence = self.fence.read().unwrap();
        assert!(version >= *fence);
        self.partials.write().unwrap().insert((epoch, vnode), bytes);
    }

    fn read(&self, vnode: u32, epoch: u64) -> Option<Bytes> {
        self.partials.read().unwrap().get(&(epoch, vnode)).cloned()
    }

    /// Check every vnode, then seal: the same work as the backend's gate.
    fn seal(&self, epoch: u64, vnodes: &[u32], id: &str) -> bool {
        let mut markers = self.markers.lock().unwrap();
        let partials = self.partials.read().unwrap();
        if !vnodes.iter().all(|&v| partials.contains_key(&(epoch, v))) {
            return false;
        }
        markers.entry(epoch).or_insert_with(|| id.to_owned()) == id
    }

    /// [`seal`](Self::seal) of vnodes `0..vnodes`.
    fn seal_all(&self, epoch: u64, vnodes: u32, id: &str) -> bool {
        let mut markers = self.markers.lock().unwrap();
        let partials = self.partials.read().unwrap();
        if !(0..vnodes).all(|v| partials.contains_key(&(epoch, v))) {
            return false;
        }
        markers.entry(epoch).or_insert_with(|| id.to_owned()) == id
    }

    fn prune(&self, before: u64) {
        self.markers.lock().unwrap().retain(|&e, _| e >= before);
        self.partials
            .write()
            .unwrap()
            .retain(|&(e, _), _| e >= before);
    }
}

struct Scale {
    epochs: u64,
    gate_rounds: u64,
}

fn main() {
    let mode = Mode::from_args();
    let scale = if mode == Mode::Full {
        Scale {
            epochs: 64,
            gate_rounds: 2_000,
        }
    } else {
        Scale {
            epochs: 4,
            gate_rounds: 8,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let payload = Bytes::from(vec![0xA5; PAYLOAD]);
    let base = Arc::new(SingleLock::default());
    let ours: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new("bench", VNODES));
    let ops = u64::from(VNODES) * scale.epochs;
    let key = move |i: u64| ((i % u64::from(VNODES)) as u32, i / u64::from(VNODES));
    let mut rows = Vec::new();

    for tasks in [1u64, 16] {
        let (b, p) = (Arc::clone(&base), payload.clone());
        let base_write = move |i: u64| {
            let (b, p) = (Arc::clone(&b), p.clone());
            async move {
                let (vnode, epoch) = key(i);
                b.write(vnode, epoch, 0, p);
            }
        };
        let (o, p) = (BackendOps::new(&ours), payload.clone());
        let our_write = move |i: u64| {
            let (vnode, epoch) = key(i);
            o.write(vnode, epoch, p.clone())
        };
        let (raw, mine) = runtime.block_on(alternate(tasks, ops, base_write, our_write));
        rows.push(Row::per_second(
            format!("writes/s, {tasks} task(s), 4 KiB"),
            mine,
            raw,
            Some(1.0),
        ));

        let b = Arc::clone(&base);
        let base_read = move |i: u64| {
            let b = Arc::clone(&b);
            async move {
                let (vnode, epoch) = key(i);
                assert!(b.read(vnode, epoch).is_some());
            }
        };
        let o = BackendOps::new(&ours);
        let our_read = move |i: u64| {
            let (vnode, epoch) = key(i);
            o.read(vnode, epoch, PAYLOAD)
        };
        let (raw, mine) = runtime.block_on(alternate(tasks, ops, base_read, our_read));
        rows.push(Row::per_second(
            format!("reads/s, {tasks} task(s)"),
            mine,
            raw,
            Some(1.0),
        ));
        base.prune(u64::MAX);
        runtime
            .block_on(ours.prune_before(u64::MAX))
            .expect("prune");
    }

    // The gate at 256 vnodes: a fresh epoch each round, both sides
    // alternately, each timed alone.
    let all: Vec<u32> = (0..VNODES).collect();
    let (mut base_gate, mut our_gate) = (Duration::ZERO, Duration::ZERO);
    for round in 0..scale.gate_rounds {
        let epoch = 1_000_000 + round;
        runtime.block_on(async {
            for vnode in 0..VNODES {
                base.write(vnode, epoch, 0, payload.clone());
                ours.write_partial(vnode, epoch, 0, payload.clone())
                    .await
                    .expect("write");
            }
            let started = Instant::now();
            assert!(base.seal(epoch, &all, "bench"));
            base_gate += started.elapsed();
            let started = Instant::now();
            assert!(ours.epoch_complete(epoch, &all).await.expect("seal"));
            our_gate += started.elapsed();
        });
        if round % 16 == 15 {
            base.prune(epoch);
            runtime.block_on(ours.prune_before(epoch)).expect("prune");
        }
    }
    let per_second = |d: Duration| scale.gate_rounds as f64 / d.as_secs_f64();
    rows.push(Row::per_second(
        "epoch_complete/s, 256 vnodes",
        per_second(our_gate),
        per_second(base_gate),
        Some(1.0),
    ));

    // Prune: 64 epochs x 256 vnodes below the bound, timed alone.
    let (mut base_prune, mut our_prune) = (Duration::ZERO, Duration::ZERO);
    for unit in 0..4u64 {
        let first = 2_000_000 + unit * scale.epochs;
        runtime.block_on(async {
            for epoch in first..first + scale.epochs {
                for vnode in 0..VNODES {
                    base.write(vnode, epoch, 0, payload.clone());
                    ours.write_partial(vnode, epoch, 0, payload.clone())
                        .await
                        .expect("write");
                }
            }
        });
        let started = Instant::now();
        base.prune(first + scale.epochs);
        base_prune += started.elapsed();
        let started = Instant::now();
        runtime
            .block_on(ours.prune_before(first + scale.epochs))
            .expect("prune");
        our_prune += started.elapsed();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / 4.0;
    rows.push(Row::millis(
        format!("prune {} epochs x 256 vnodes", scale.epochs),
        ms(our_prune),
        ms(base_prune),
        Some(1.0),
    ));

    // Whole checkpoints on stores of their own, alternated: every vnode
    // written at once (a task each, on both sides), the gate, a prune
    // keeping two epochs.
    let vnodes = if mode == Mode::Full {
        CHECKPOINT_VNODES
    } else {
        8
    };
    let all: Vec<u32> = (0..vnodes).collect();
    let (base, ours): (Arc<SingleLock>, Arc<dyn StateBackend>) = (
        Arc::default(),
        Arc::new(MemoryBackend::new("bench", vnodes)),
    );
    rows.extend(runtime.block_on(checkpoint_rows(
        scale.gate_rounds / 4,
        &ours,
        vnodes,
        "",
        |epoch, payload| {
            let (base, all) = (Arc::clone(&base), &all);
            async move {
                let mut writes = tokio::task::JoinSet::new();
                for vnode in 0..vnodes {
                    let (base, payload) = (Arc::clone(&base), payload.clone());
                    writes.spawn(async move { base.write(vnode, epoch, 0, payload) });
                }
                while let Some(done) = writes.join_next().await {
                    done.expect("write task");
                }
                assert!(base.seal(epoch, all, "bench"));
                base.prune(epoch.saturating_sub(1));
            }
        },
    )));

    // How cost grows, on stores of their own.
    let growth = Growth::for_mode(mode);
    let base = Arc::new(SingleLock::default());
    let ours: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new("growth", u32::MAX));
    let write = {
        let base = Arc::clone(&base);
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let base = Arc::clone(&base);
            Box::pin(async move {
                for vnode in 0..vnodes {
                    base.write(vnode, epoch, 0, Bytes::from_static(b"p"));
                }
            })
        }
    };
    let gate = {
        let base = Arc::clone(&base);
        move |epoch: u64, vnodes: u32| -> Step<'static> {
            let base = Arc::clone(&base);
            Box::pin(async move { assert!(base.seal_all(epoch, vnodes, "bench")) })
        }
    };
    let prune = {
        let base = Arc::clone(&base);
        move |_: u64, end: u64, _: u32| -> Step<'static> {
            let base = Arc::clone(&base);
            Box::pin(async move { base.prune(end) })
        }
    };
    let raw = RawSide {
        write: &write,
        gate: &gate,
        prune: &prune,
        requests: None,
    };
    rows.extend(runtime.block_on(growth_rows(&growth, &ours, &raw)));

    report(
        "memory",
        "one RwLock<HashMap>",
        &rows,
        mode,
        &["(the baseline: one lock over every partial, the fence checked under it, markers in one map; the gate checks then seals, as ours)".to_owned()],
    );
}
