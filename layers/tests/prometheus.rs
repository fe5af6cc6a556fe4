//! The Prometheus example, scraped over HTTP on a loopback port: every
//! metric the README documents is there.

#[path = "../examples/prometheus.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use laminar_state_layers::METRIC_NAMES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback port nothing listens on (taken from the OS, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    for _ in 0..100 {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            return response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on {addr}");
}

#[test]
fn the_example_serves_every_documented_metric() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let addr = free_port();
        example::install(addr).unwrap();
        example::workload().await.unwrap();
        let response = scrape(addr).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        for (name, kind, _, _) in METRIC_NAMES {
            assert!(
                response.contains(&format!("# TYPE {name} {}", if *kind == "histogram" { "summary" } else { kind })),
                "{name} ({kind}) is not exported:\n{response}"
            );
        }
        for sample in [
            r#"laminar_state_seals_total{backend="memory",instance="node-1",result="won"} 5"#,
            r#"laminar_state_split_brain_total{backend="memory",instance="node-0"} 1"#,
            r#"laminar_state_fence_rejections_total{backend="memory",instance="node-0",operation="write_partial"} 1"#,
            r#"laminar_state_timeouts_total{backend="memory",instance="node-1",operation="read_partial"}"#,
            r#"laminar_state_operations_total{backend="memory",instance="node-1",operation="write_partial",outcome="ok"} 20"#,
            r#"laminar_state_fence_version{backend="memory",instance="node-1"} 2"#,
        ] {
            assert!(response.contains(sample), "{sample} missing:\n{response}");
        }
    });
}
