//! A TCP fault proxy between the engines and a networked server.
//!
//! It forwards bytes both ways, one thread per direction per connection,
//! and on command:
//!
//! - **stalls**: forwards nothing either way for a while (new connections
//!   are accepted and held too). The clients' timeouts fire; what they sent
//!   meanwhile is delivered when the stall ends, so requests their callers
//!   gave up on land late.
//! - **drops answers**: forwards requests but, when the server answers,
//!   throws the answer away and cuts the connection: the server applied the
//!   request, the client sees a broken connection and cannot know.
//! - **resets**: cuts every open connection at once.
//!
//! The upstream address can change (a server restarted on a new port).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::history::now_ns;

#[derive(Default)]
struct State {
    /// Forward nothing until this instant (CLOCK_MONOTONIC ns).
    stall_until: AtomicU64,
    /// Drop answers until this instant.
    drop_until: AtomicU64,
    upstream: Mutex<Option<SocketAddr>>,
    /// Every open connection's two sockets, to cut them.
    open: Mutex<Vec<(TcpStream, TcpStream, Arc<AtomicBool>)>>,
    /// Answers dropped.
    dropped: AtomicU64,
}

/// A running proxy; it lives as long as the process.
#[derive(Clone)]
pub struct FaultProxy {
    /// The loopback port clients connect to.
    pub port: u16,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listen on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on(0, upstream)
    }

    /// Listen on `port` (0: any free one).
    pub fn start_on(port: u16, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        *state.upstream.lock().unwrap() = Some(upstream);
        let accepting = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let state = Arc::clone(&accepting);
                    std::thread::spawn(move || serve(client, &state));
                }
            })?;
        Ok(Self { port, state })
    }

    /// Send new connections to `upstream`.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().unwrap() = Some(upstream);
    }

    /// Forward nothing for `duration`.
    pub fn stall(&self, duration: Duration) {
        let until = now_ns() + duration.as_nanos() as u64;
        self.state.stall_until.fetch_max(until, Ordering::SeqCst);
    }

    /// Drop every answer (and cut its connection) for `duration`.
    pub fn drop_answers(&self, duration: Duration) {
        let until = now_ns() + duration.as_nanos() as u64;
        self.state.drop_until.fetch_max(until, Ordering::SeqCst);
    }

    /// End every fault now.
    pub fn heal(&self) {
        self.state.stall_until.store(0, Ordering::SeqCst);
        self.state.drop_until.store(0, Ordering::SeqCst);
    }

    /// Cut every open connection.
    pub fn reset(&self) {
        let open = std::mem::take(&mut *self.state.open.lock().unwrap());
        for (client, server, closed) in open {
            closed.store(true, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Answers dropped so far.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }
}

fn stalled(state: &State) -> bool {
    state.stall_until.load(Ordering::SeqCst) > now_ns()
}

fn serve(client: TcpStream, state: &Arc<State>) {
    while stalled(state) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(upstream) = *state.upstream.lock().unwrap() else {
        return;
    };
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let closed = Arc::new(AtomicBool::new(false));
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    {
        let mut open = state.open.lock().unwrap();
        open.retain(|(_, _, closed)| !closed.load(Ordering::SeqCst));
        open.push((c3, s3, Arc::clone(&closed)));
    }
    let up = {
        let (state, closed) = (Arc::clone(state), Arc::clone(&closed));
        std::thread::spawn(move || relay(client, server, &state, &closed, false))
    };
    relay(s2, c2, state, &closed, true);
    let _ = up.join();
}

/// Copy `from` to `to` until either closes; `answers`: this is the
/// server-to-client direction, whose bytes a drop fault throws away.
fn relay(
    mut from: TcpStream,
    mut to: TcpStream,
    state: &State,
    closed: &AtomicBool,
    answers: bool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buffer = vec![0u8; 64 << 10];
    let cut = |from: &TcpStream, to: &TcpStream| {
        closed.store(true, Ordering::SeqCst);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    loop {
        if closed.load(Ordering::SeqCst) {
            cut(&from, &to);
            return;
        }
        if stalled(state) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => {
                // Half-close: pass the end on, keep the other direction.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if answers && state.drop_until.load(Ordering::SeqCst) > now_ns() {
                    state.dropped.fetch_add(1, Ordering::Relaxed);
                    cut(&from, &to);
                    return;
                }
                // Bytes read as a stall began are held until it ends.
                while stalled(state) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if to.write_all(&buffer[..n]).is_err() {
                    cut(&from, &to);
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                cut(&from, &to);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; returns its address.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(port: u16, timeout: Duration) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn forwards_stalls_drops_and_resets() {
        let proxy = FaultProxy::start(echo()).unwrap();
        let second = Duration::from_secs(2);
        assert_eq!(roundtrip(proxy.port, second).unwrap(), b"ping");

        proxy.stall(Duration::from_millis(300));
        assert!(roundtrip(proxy.port, Duration::from_millis(100)).is_err());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(roundtrip(proxy.port, second).unwrap(), b"ping");

        proxy.drop_answers(Duration::from_millis(300));
        assert!(roundtrip(proxy.port, second).is_err());
        assert_eq!(proxy.dropped(), 1);
        proxy.heal();
        assert_eq!(roundtrip(proxy.port, second).unwrap(), b"ping");

        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        stream.set_read_timeout(Some(second)).unwrap();
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).unwrap();
        proxy.reset();
        let mut rest = [0u8; 1];
        assert!(matches!(stream.read(&mut rest), Ok(0) | Err(_)));
    }
}
