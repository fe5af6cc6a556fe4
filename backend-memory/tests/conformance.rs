//! The conformance suite against the memory backend.

mod factory;

use factory::MemoryFactory;

laminar_state_conformance::conformance_tests!(memory, MemoryFactory);
