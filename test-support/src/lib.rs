//! The test servers of laminar-state's tests and benchmarks, in one place,
//! so every backend starts, checks and stops its servers the same way:
//!
//! | module | what |
//! |---|---|
//! | [`process`] | a server process under a watchdog shell, so no server outlives its test process (not even one killed by a test runner's time limit) |
//! | [`redis`] | `redis-server` processes: standalone, replicas, a 3-node cluster; a [`TcpRelay`] to cut a link |
//! | [`tls`] | a test CA and the certificates it signs, generated at test time (rcgen) |
//! | [`seaweed`] | SeaweedFS (`weed mini`), an S3-compatible store, with its bucket and test credentials |
//! | [`moto`] | moto's S3 server (`moto_server`), the second S3-compatible store |
//! | [`s3`] | either S3-compatible store by kind, and a test's own server |
//! | [`proxy`] | an HTTP proxy in front of SeaweedFS that logs requests and injects faults |
//! | [`layered`] | every layer of `laminar-state-layers` as a conformance [`Wrapper`](laminar_state_conformance::Wrapper), for the layered columns of the matrix |
//! | [`lazy`] | servers started once per conformance factory, and the lazily connected conformance [`TestStore`](laminar_state_conformance::TestStore) of a networked backend |
//!
//! Servers listen on free loopback ports ([`free_port`]), each in its own
//! temporary directory, and are killed (SIGKILL) on drop. `bash
//! .ci/install` installs `redis-server` and SeaweedFS.
//!
//! Each launcher has a panicking constructor for tests (`start`) and a
//! fallible one (`try_start`, `try_restart`) for the chaos runner, which
//! starts, kills and restarts the same servers on given ports and data.
//!
//! Internal: a path-only dev-dependency of the workspace's crates (and a
//! dependency of the unpublished chaos runner), never published. It
//! depends on no backend crate, so no backend's tests form a dependency
//! cycle through it.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use laminar_state_api::StateBackend;

pub mod layered;
pub mod lazy;
pub mod moto;
pub mod process;
pub mod proxy;
pub mod redis;
mod relay;
pub mod s3;
pub mod seaweed;
pub mod tls;

pub use relay::TcpRelay;

/// A loopback port nobody listens on now, and not in `taken`. With
/// `companion`, the port 10,000 above it is free too (and below 65,536):
/// a Redis Cluster node's bus port, or a SeaweedFS server's gRPC port.
pub fn free_port(companion: bool, taken: &[u16]) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if taken.contains(&port) {
            continue;
        }
        if !companion
            || (port < 55_000
                && !taken.contains(&(port + 10_000))
                && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok())
        {
            return port;
        }
    }
}

/// A program the tests start: the path in environment variable `env`, else
/// `target/tools/<installed>` (where `.ci/install` puts it) if it exists,
/// else `name`, looked up on the PATH.
pub(crate) fn installed_tool(env: &str, installed: &str, name: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools")
        .join(installed);
    if installed.exists() {
        return installed;
    }
    name.into()
}

/// A name that no other store of any test process uses: `tag`, the process
/// id, a counter and the time. A key prefix, a namespace.
pub fn fresh_prefix(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Write a one-byte partial for each of `vnodes` vnodes of `epoch`, 64
/// writes in flight at a time; panics if one fails.
pub async fn fill(backend: &Arc<dyn StateBackend>, epoch: u64, vnodes: u32) {
    laminar_state_bench::growth::fill(backend, epoch, vnodes, 64).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_free_and_avoid_the_taken() {
        let first = free_port(true, &[]);
        let second = free_port(true, &[first]);
        assert_ne!(first, second);
        assert!(first < 55_000 && second < 55_000);
        TcpListener::bind(("127.0.0.1", second)).expect("the port is free");
    }

    #[test]
    fn prefixes_are_fresh() {
        assert_ne!(fresh_prefix("t"), fresh_prefix("t"));
        assert!(fresh_prefix("tag").starts_with("tag-"));
    }
}
