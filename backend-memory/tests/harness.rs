//! The conformance suite against the memory backend, through the suite's
//! `harness = false` entry point: every property is a trial; those that
//! need a capability the memory backend does not claim (durability, cross
//! process, corruption detection) are reported ignored with the missing
//! capability, and each property's time is printed after the run.
//!
//! `cargo test -p laminar-state-memory --test harness` (or nextest), with
//! libtest's usual arguments: a filter, `--exact`, `--list`, `--ignored`.

mod factory;

use factory::MemoryFactory;

laminar_state_conformance::conformance_main!(memory, MemoryFactory);
