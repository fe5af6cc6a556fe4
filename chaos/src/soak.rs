//! The growth soak: many checkpoint cycles (every vnode written
//! concurrently, the gate, a prune keeping the last two epochs) on one
//! store, with the store's footprint and the cycle's latency sampled as it
//! goes. A state tier that runs for months must stay flat: a key, object or
//! page left behind per cycle is a leak that no single property notices.
//!
//! What "the footprint" is, per store:
//!
//! | store | items | bytes |
//! |---|---|---|
//! | redb | (none: one file) | the file's size |
//! | redis, redis-cluster | keys (`DBSIZE`, summed over the nodes) | `used_memory` (`INFO memory`, summed) |
//! | s3 | objects under the store's prefix | their total size |
//!
//! The verdict: after the warm-up (the first tenth of the cycles), the item
//! count never exceeds the warm-up's, and the bytes stay within 1.5 times
//! the warm-up's (plus 1 MiB, for allocator and page-size noise). Latency
//! is reported (the last tenth's median against the warm-up's), not judged:
//! on a shared machine a timing verdict would be noise.
//!
//! On S3 each cycle is also done by a raw S3 client on the same server
//! (under another prefix, alternated cycle by cycle with the backend's, so
//! noise falls on both; see `raw_s3::checkpoint` in the bench harness): a latency that climbs on
//! both sides is the store's, one that climbs on the backend's alone is ours.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use laminar_state::BackendConfig;
use laminar_state_bench::{Latency, checkpoint, raw_s3};
use laminar_state_test_support::redis::{RedisCluster, RedisServer};
use laminar_state_test_support::seaweed::{self, SeaweedServer};
use serde_json::json;

use crate::run::{Backend, redis_url, s3_config};

/// A soak's settings.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The store.
    pub backend: Backend,
    /// Checkpoint cycles.
    pub cycles: u64,
    /// Vnodes written per cycle.
    pub vnodes: u32,
    /// Bytes per partial.
    pub bytes: usize,
    /// Raise the fence (a leader change) every this many cycles; 0: never.
    pub raise_every: u64,
    /// Where the store and the results live (emptied first).
    pub dir: PathBuf,
}

/// The store's footprint at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    /// Keys or objects; `None` where the store has no such count.
    pub items: Option<u64>,
    /// Bytes: the file, the server's memory, the objects.
    pub bytes: u64,
}

/// One sample: the footprint after `cycle` cycles, and the latency of the
/// cycles since the previous sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Cycles done.
    pub cycle: u64,
    /// The footprint then.
    pub footprint: Footprint,
    /// Median cycle latency since the previous sample, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// Slowest, in milliseconds.
    pub max_ms: f64,
    /// On S3: the raw client's median for the same cycles, in milliseconds.
    pub raw_p50_ms: Option<f64>,
}

/// What a soak found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    /// The store's name.
    pub backend: &'static str,
    /// The samples, in order.
    pub samples: Vec<Sample>,
    /// Why the footprint is not flat, if it is not.
    pub growth: Option<String>,
    /// The whole run's wall time, in seconds.
    pub seconds: f64,
}

impl SoakReport {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        let (Some(first), Some(last)) = (self.warm(), self.samples.last()) else {
            return format!("soak {}: no samples", self.backend);
        };
        let items = |f: &Footprint| f.items.map_or("-".to_owned(), |n| n.to_string());
        format!(
            "soak {}: {} cycles in {:.0} s; footprint after warm-up {} items / {} bytes, at the end {} items / {} bytes; cycle p50 {:.2} ms -> {:.2} ms ({:.2}x), p99 {:.2} ms -> {:.2} ms; {}",
            self.backend,
            last.cycle,
            self.seconds,
            items(&first.footprint),
            first.footprint.bytes,
            items(&last.footprint),
            last.footprint.bytes,
            first.p50_ms,
            last.p50_ms,
            last.p50_ms / first.p50_ms.max(f64::MIN_POSITIVE),
            first.p99_ms,
            last.p99_ms,
            self.growth.as_deref().unwrap_or("flat"),
        ) + &match (first.raw_p50_ms, last.raw_p50_ms) {
            (Some(before), Some(after)) => format!(
                "; the raw S3 client's cycle p50 {before:.2} ms -> {after:.2} ms ({:.2}x)",
                after / before.max(f64::MIN_POSITIVE)
            ),
            _ => String::new(),
        }
    }

    /// The sample that ends the warm-up.
    fn warm(&self) -> Option<&Sample> {
        self.samples
            .get(self.samples.len().div_ceil(10).saturating_sub(1))
    }
}

/// Whether `samples` show growth after the warm-up; `None`: flat.
pub fn growth(samples: &[Sample]) -> Option<String> {
    let warm_up = samples.len().div_ceil(10);
    let (early, later) = samples.split_at(warm_up.min(samples.len()));
    let items = early.iter().filter_map(|s| s.footprint.items).max();
    let bytes = early.iter().map(|s| s.footprint.bytes).max()?;
    let byte_limit = bytes + bytes / 2 + (1 << 20);
    later.iter().find_map(|s| {
        match (items, s.footprint.items) {
            (Some(most), Some(now)) if now > most => {
                return Some(format!(
                    "GROWTH: {now} items after {} cycles, at most {most} during the warm-up",
                    s.cycle
                ));
            }
            _ => {}
        }
        (s.footprint.bytes > byte_limit).then(|| {
            format!(
                "GROWTH: {} bytes after {} cycles, more than 1.5 x the warm-up's {bytes} + 1 MiB",
                s.footprint.bytes, s.cycle
            )
        })
    })
}

/// The running store: its servers (kept alive by being held) and how to
/// reach and measure it.
struct Store {
    config: BackendConfig,
    redis: Vec<RedisServer>,
    cluster: Option<RedisCluster>,
    s3: Option<(SeaweedServer, String)>,
    /// The client that counts the objects, connected at the first sample.
    s3_lister: tokio::sync::OnceCell<laminar_state_s3::S3Store>,
    redb: Option<PathBuf>,
}

impl Store {
    fn start(backend: Backend, dir: &Path) -> Result<Self, String> {
        let mut store = Store {
            config: BackendConfig::from_url("memory://").map_err(|e| e.to_string())?,
            redis: Vec::new(),
            cluster: None,
            s3: None,
            s3_lister: tokio::sync::OnceCell::new(),
            redb: None,
        };
        let value = match backend {
            Backend::Redb => {
                let path = dir.join("store.redb");
                store.redb = Some(path.clone());
                json!({"backend": "redb", "path": path})
            }
            Backend::Redis => {
                let server = RedisServer::try_start(&dir.join("redis"), &[])?;
                let url = redis_url(server.port, "");
                store.redis.push(server);
                json!({"backend": "redis", "url": url})
            }
            Backend::RedisCluster => {
                let ports = RedisCluster::free_ports(3);
                let cluster = RedisCluster::try_start_on(&dir.join("cluster"), &ports, &ports)?;
                let nodes = format!(
                    "&cluster=true&nodes=127.0.0.1:{},127.0.0.1:{}",
                    ports[1], ports[2]
                );
                store.cluster = Some(cluster);
                json!({"backend": "redis", "url": redis_url(ports[0], &nodes)})
            }
            Backend::S3 => {
                let server = SeaweedServer::try_start(&dir.join("seaweedfs"))?;
                let endpoint = format!("http://127.0.0.1:{}", server.port);
                let config = s3_config(&endpoint, "soak");
                store.s3 = Some((server, endpoint));
                config
            }
        };
        store.config = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(store)
    }

    fn redis_ports(&self) -> Vec<u16> {
        let cluster = self.cluster.iter().flat_map(|c| c.nodes.iter());
        self.redis.iter().chain(cluster).map(|s| s.port).collect()
    }

    async fn footprint(&self) -> Result<Footprint, String> {
        if let Some(path) = &self.redb {
            let bytes = std::fs::metadata(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            return Ok(Footprint { items: None, bytes });
        }
        if let Some((_, endpoint)) = &self.s3 {
            let lister = self
                .s3_lister
                .get_or_try_init(|| connect_s3(endpoint, "soak"))
                .await?;
            return s3_footprint(lister).await;
        }
        let (mut items, mut bytes) = (0, 0);
        for port in self.redis_ports() {
            items += redis_number(port, &["DBSIZE"], None)?;
            bytes += redis_number(port, &["INFO", "memory"], Some("used_memory:"))?;
        }
        Ok(Footprint {
            items: Some(items),
            bytes,
        })
    }
}

/// A number from `redis-cli -p port ARGS`: the whole answer, or the value
/// after `field` in it.
fn redis_number(port: u16, args: &[&str], field: Option<&str>) -> Result<u64, String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value = match field {
        None => Some(text.trim()),
        Some(field) => text.lines().find_map(|l| l.trim().strip_prefix(field)),
    };
    value
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("redis-cli -p {port} {args:?} answered {text:?}"))
}

/// A store on `prefix`, whose client lists it (or does raw cycles on it).
async fn connect_s3(endpoint: &str, prefix: &str) -> Result<laminar_state_s3::S3Store, String> {
    let mut config = laminar_state_s3::S3Config::new(seaweed::BUCKET, prefix);
    config.endpoint = Some(endpoint.to_owned());
    config.force_path_style = true;
    config.region = Some("us-east-1".into());
    config.credentials = Some((seaweed::ACCESS_KEY.into(), seaweed::SECRET_KEY.into()));
    laminar_state_s3::S3Store::connect(&config)
        .await
        .map_err(|e| e.to_string())
}

/// The objects under the soak's prefix, and their bytes.
async fn s3_footprint(store: &laminar_state_s3::S3Store) -> Result<Footprint, String> {
    let (mut items, mut bytes) = (0, 0);
    let mut token = None;
    loop {
        let page = store
            .client()
            .list_objects_v2()
            .bucket(store.bucket())
            .prefix(store.prefix())
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| format!("LIST: {e:?}"))?;
        for object in page.contents() {
            items += 1;
            bytes += object.size().unwrap_or(0).max(0) as u64;
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(Footprint {
                items: Some(items),
                bytes,
            });
        }
    }
}

/// The raw S3 client's cycle: [`raw_s3::checkpoint`], gated by one LIST.
async fn raw_cycle(
    raw: &laminar_state_s3::S3Store,
    epoch: u64,
    vnodes: u32,
    payload: &Bytes,
) -> Result<(), String> {
    let (client, bucket, root) = (raw.client(), raw.bucket(), raw.prefix());
    raw_s3::checkpoint(
        client,
        bucket,
        root,
        epoch,
        vnodes,
        payload,
        raw_s3::Gate::List,
    )
    .await
}

/// Run a soak.
pub fn soak(options: &SoakOptions) -> Result<SoakReport, String> {
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir).map_err(|e| format!("{}: {e}", options.dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let store = Store::start(options.backend, &options.dir)?;
    let started = Instant::now();
    let samples = runtime.block_on(async {
        let backend = store
            .config
            .open("soak", options.vnodes)
            .await
            .map_err(|e| e.to_string())?;
        // Not all one byte, so no layer or store can make it nothing.
        let payload: Bytes = (0..options.bytes).map(|i| (i % 251) as u8).collect();
        let every = (options.cycles / 20).max(1);
        let (mut samples, mut window, mut raw_window) = (Vec::new(), Vec::new(), Vec::new());
        // The raw client of the baseline cycles, on its own prefix.
        let raw = match &store.s3 {
            Some((_, endpoint)) => Some(connect_s3(endpoint, "raw-soak").await?),
            None => None,
        };
        let mut version = 1;
        backend
            .persist_authoritative_version(version)
            .await
            .map_err(|e| e.to_string())?;
        for cycle in 1..=options.cycles {
            if options.raise_every > 0 && cycle % options.raise_every == 0 {
                version += 1;
                backend
                    .persist_authoritative_version(version)
                    .await
                    .map_err(|e| format!("raise to {version}: {e}"))?;
            }
            // Alternated, so a burst of noise falls on both sides alike.
            let ours_first = cycle % 2 == 1;
            for ours in [ours_first, !ours_first] {
                let begun = Instant::now();
                if ours {
                    checkpoint(&backend, cycle, version, options.vnodes, &payload).await?;
                    window.push(begun.elapsed());
                } else if let Some(raw) = &raw {
                    raw_cycle(raw, cycle, options.vnodes, &payload).await?;
                    raw_window.push(begun.elapsed());
                }
            }
            if cycle % every == 0 || cycle == options.cycles {
                let latency = Latency::of(std::mem::take(&mut window));
                let raw_latency = Latency::of(std::mem::take(&mut raw_window));
                let sample = Sample {
                    cycle,
                    footprint: store.footprint().await?,
                    p50_ms: latency.p50_ms,
                    p99_ms: latency.p99_ms,
                    max_ms: latency.max_ms,
                    raw_p50_ms: raw.as_ref().map(|_| raw_latency.p50_ms),
                };
                eprintln!(
                    "soak {}: {cycle:>6} cycles  items {:>8}  bytes {:>12}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                    options.backend.name(),
                    sample.footprint.items.map_or("-".into(), |n| n.to_string()),
                    sample.footprint.bytes,
                    sample.p50_ms,
                    sample.p99_ms,
                    sample.max_ms,
                );
                if let Some(raw_p50) = sample.raw_p50_ms {
                    eprintln!("soak raw s3: {cycle:>6} cycles  p50 {raw_p50:>7.2} ms");
                }
                samples.push(sample);
            }
        }
        Ok::<_, String>(samples)
    })?;
    let report = SoakReport {
        backend: options.backend.name(),
        growth: growth(&samples),
        samples,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(options.dir.join("soak.json"), json)
        .map_err(|e| format!("{}: {e}", options.dir.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cycle: u64, items: Option<u64>, bytes: u64) -> Sample {
        Sample {
            cycle,
            footprint: Footprint { items, bytes },
            p50_ms: 1.0,
            p99_ms: 2.0,
            max_ms: 3.0,
            raw_p50_ms: None,
        }
    }

    #[test]
    fn a_flat_footprint_passes_and_one_more_item_after_the_warm_up_fails() {
        let flat: Vec<Sample> = (1..=20).map(|c| sample(c, Some(40), 5_000)).collect();
        assert_eq!(growth(&flat), None);
        let mut leak = flat.clone();
        leak[15].footprint.items = Some(41);
        let why = growth(&leak).expect("a leaked key is growth");
        assert!(why.contains("41 items after 16 cycles"), "{why}");
    }

    #[test]
    fn bytes_may_wobble_but_not_climb() {
        let mut wobble: Vec<Sample> = (1..=20).map(|c| sample(c, None, 10 << 20)).collect();
        wobble[10].footprint.bytes = 14 << 20;
        assert_eq!(growth(&wobble), None);
        let climb: Vec<Sample> = (1..=20).map(|c| sample(c, None, c * (4 << 20))).collect();
        let why = growth(&climb).expect("a file that grows every cycle is growth");
        assert!(why.contains("bytes after"), "{why}");
    }
}
