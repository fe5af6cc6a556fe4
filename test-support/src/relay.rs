//! A TCP relay that can cut a link: a network partition between a client
//! (or a replica) and a server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A TCP relay on a free loopback port to `target`, that can be told to
/// hold all traffic: a network partition. Held bytes stay in the senders'
/// socket buffers, so a process killed while held loses them, as it would
/// behind a real partition.
#[derive(Debug)]
pub struct TcpRelay {
    /// The relay's port on 127.0.0.1.
    pub port: u16,
    hold: Arc<AtomicBool>,
}

impl TcpRelay {
    /// Relay every connection to 127.0.0.1:`target`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("relay addr").port();
        let hold = Arc::new(AtomicBool::new(false));
        let held = Arc::clone(&hold);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let held = Arc::clone(&held);
                    std::thread::spawn(move || relay(from, to, &held));
                }
            }
        });
        Self { port, hold }
    }

    /// Stop forwarding in both directions (nothing is read while held).
    pub fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream, held: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buffer = [0u8; 16 << 10];
    loop {
        if held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => return,
            // Bytes read while the hold was being set are held too.
            Ok(_) if held.load(Ordering::SeqCst) => return,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
