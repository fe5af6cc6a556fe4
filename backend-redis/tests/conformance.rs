//! The conformance suite against real redis-server processes: a standalone
//! server, and a 3-node Redis Cluster. Each test starts its own servers on
//! free loopback ports; every store is a fresh namespace on them.

mod support;

use support::{Deployment, RedisFactory};

laminar_state_conformance::conformance_tests!(
    redis_standalone,
    RedisFactory::new(Deployment::Standalone)
);
laminar_state_conformance::conformance_tests!(
    redis_cluster,
    RedisFactory::new(Deployment::Cluster)
);
// The suite through every layer of laminar-state-layers at once (on the
// standalone server: the layers see one handle whatever the deployment),
// with a quarter of the proptest cases: the plain column covers the cases,
// this one every call forwarded through every layer.
laminar_state_conformance::conformance_tests!(
    layered_redis,
    laminar_state_conformance::Wrapped::new(
        RedisFactory::new(Deployment::Standalone),
        laminar_state_test_support::layered::EveryLayer::over("redis").with_fewer_cases(4)
    )
);
