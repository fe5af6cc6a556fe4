//! Jepsen-style chaos runs for the laminar-state backends.
//!
//! A run (`cargo xtask chaos --backend redb|redis|redis-cluster|s3`)
//! starts a store, puts a [fault proxy](proxy) between it and the engines
//! when it is a server, and starts several engine processes
//! ([`worker`]): leaders that take over by raising the fence, deposed
//! leaders that keep writing and sealing, coordinators racing the commit
//! gate. It injects faults on a [schedule] drawn from the seed:
//! SIGKILL of engine processes (restarted with new instance ids), SIGSTOP
//! and SIGCONT (a paused zombie that wakes up after a takeover), restarts
//! of the server on its data (servers started by the workspace's
//! test-support launchers), stalls, dropped answers and reset
//! connections at the proxy. Every call's invocation and answer goes into a
//! [history]; at the end the server is restarted once more, a
//! fresh handle reads the recent epochs, and the [checker] verifies the
//! history against the contract. A [broken] backend shows that it
//! objects when a promise is broken.
//!
//! A [soak] runs many checkpoint cycles on one store and shows that its
//! footprint (file, keys, memory, objects) stays flat.

pub mod broken;
pub mod checker;
pub mod history;
pub mod proxy;
pub mod run;
pub mod schedule;
pub mod soak;
pub mod worker;
