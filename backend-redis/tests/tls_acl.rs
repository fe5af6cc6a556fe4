//! TLS and ACLs against real redis-servers: the write, read, seal, fence
//! and prune properties of the suite over `rediss://` (certificates
//! generated at test time) and as an ACL user holding exactly the rules of
//! the README; a wrong CA, a missing client certificate and users lacking
//! permissions refused at connect, in bounded time, with clear errors that
//! never show the password.

mod support;

use std::time::{Duration, Instant};

use laminar_state_api::StateBackendError;
use laminar_state_conformance::{ChildCommand, Outcome, properties};
use laminar_state_redis::{RedisConfig, RedisStore};
use laminar_state_test_support::fresh_prefix;
use laminar_state_test_support::redis::RedisServer;
use laminar_state_test_support::tls::TestCertificates;
use support::{Deployment, RedisFactory};

/// What the backend does over the link: writes and reads, the commit gate
/// and its races, the fence and a deposed leader's seal, pruning, and the
/// recovery queries (between them, every script and command it sends).
const PROPERTIES: &[&str] = &[
    "p01_round_trip",
    "p01_batch_read",
    "p05_fence_enforced",
    "p06_shared_fence",
    "p08_commit_gate",
    "p09_one_committer",
    "p11_pruning",
    "p14_recovery_queries",
    "p15_fenced_seal",
    "p16_list_partials",
];

/// A password no error text or `Debug` output may show.
const PASSWORD: &str = "s3cr3t-pw";

/// A connect is refused within this, timeouts included.
const CONNECT_BOUND: Duration = Duration::from_secs(15);

fn run_properties(factory: RedisFactory) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let mut failures = Vec::new();
    for name in PROPERTIES {
        let property = properties::property(name).expect("a property of the suite");
        let report = runtime.block_on(laminar_state_conformance::check(
            property,
            &factory,
            &ChildCommand::same_args(),
        ));
        eprintln!(
            "{name} on {}: {:?} in {:.1}s",
            laminar_state_conformance::BackendFactory::name(&factory),
            report.outcome,
            report.elapsed.as_secs_f64()
        );
        match report.outcome {
            Outcome::Passed => {}
            other => failures.push(format!("{name}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The ACL line of the README, for namespaces `t-*` (the tests' fresh
/// namespaces), with [`PASSWORD`].
fn readme_acl_rules() -> String {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with("user laminar on >PASSWORD "))
        .expect("the README's ACL line");
    line.replace(">PASSWORD", &format!(">{PASSWORD}"))
        .replace("{NS}", "{t-*}")
        .replace("{NS/g*}", "{t-*/g*}")
}

/// Connect to a fresh namespace at `url` (which ends in its query), timed.
async fn connect(url: &str) -> (Result<RedisStore, StateBackendError>, Duration) {
    connect_to(url, &fresh_prefix("t")).await
}

/// Connect to `namespace` at `url` (which ends in its query), timed.
async fn connect_to(
    url: &str,
    namespace: &str,
) -> (Result<RedisStore, StateBackendError>, Duration) {
    let url = format!("{url}&namespace={namespace}&timeout_ms=3000");
    let config = RedisConfig::from_url(&url).expect("the URL parses");
    assert!(!format!("{config:?}").contains(PASSWORD), "{config:?}");
    let started = Instant::now();
    let outcome = tokio::time::timeout(CONNECT_BOUND, RedisStore::connect(&config))
        .await
        .expect("connect is bounded");
    (outcome, started.elapsed())
}

/// The error of a connect that must fail, checked for the password.
fn refusal(outcome: Result<RedisStore, StateBackendError>, what: &str) -> String {
    match outcome {
        Err(StateBackendError::Io(message)) => {
            eprintln!("{what}: {message}");
            assert!(!message.contains(PASSWORD), "{what}: {message}");
            message
        }
        Err(other) => panic!("{what}: expected an Io error, got {other:?}"),
        Ok(_) => panic!("{what}: connected"),
    }
}

#[test]
fn properties_hold_over_tls() {
    run_properties(RedisFactory::new(Deployment::Tls));
}

#[test]
fn properties_hold_as_the_readme_acl_user() {
    run_properties(RedisFactory::new(Deployment::Acl {
        users: vec![readme_acl_rules()],
        credentials: format!("laminar:{PASSWORD}"),
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_missing_client_certificate_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = TestCertificates::generate(&dir.path().join("certs"));
    let server = RedisServer::start_tls(
        &dir.path().join("server"),
        &certificates,
        &["--tls-auth-clients", "yes"],
    );
    let base = format!("{}/?", server.url());
    let client = format!(
        "tls_cert_file={}&tls_key_file={}",
        certificates.client_cert.display(),
        certificates.client_key.display()
    );
    let (wrong, elapsed) = connect(&format!(
        "{base}tls_ca_file={}&{client}",
        certificates.wrong_ca.display()
    ))
    .await;
    let message = refusal(wrong, "a server signed by another CA");
    assert!(
        message.to_lowercase().contains("certificate") && elapsed < CONNECT_BOUND,
        "the refusal does not say certificate, or took {elapsed:?}: {message}"
    );
    let (system_roots, _) = connect(&format!("{base}{client}")).await;
    let message = refusal(system_roots, "a test CA not in the system's roots");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    let ca = format!("tls_ca_file={}", certificates.ca.display());
    let (anonymous, elapsed) = connect(&format!("{base}{ca}")).await;
    let message = refusal(anonymous, "no client certificate, and the server asks one");
    assert!(elapsed < CONNECT_BOUND, "took {elapsed:?}: {message}");
    let (accepted, _) = connect(&format!("{base}{ca}&{client}")).await;
    accepted.expect("the right CA and a client certificate connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_without_the_needed_permissions_are_refused_at_connect() {
    let full = readme_acl_rules();
    let user =
        |name: &str, rules: &str| rules.replacen("user laminar ", &format!("user {name} "), 1);
    let without = |name: &str, removed: &[&str]| {
        let mut rules = user(name, &full);
        for rule in removed {
            let before = rules.clone();
            rules = rules.replacen(&format!(" {rule}"), "", 1);
            assert_ne!(rules, before, "the README's ACL line has no {rule}");
        }
        rules
    };
    let users = vec![
        full.clone(),
        without("noscripts", &["+evalsha"]),
        without("noload", &["+script|load"]),
        without("nohashes", &["+hdel", "+hgetall"]),
        without("nobatch", &["+hmget", "+hkeys"]),
        without("noinfo", &["+info"]),
        // One namespace, named exactly, without its groups' keys.
        without("nogroups", &["~laminar:{t-*/g*}:*"]).replace("{t-*}", "{fixed}"),
    ];
    let factory = RedisFactory::new(Deployment::Acl {
        users,
        credentials: format!("laminar:{PASSWORD}"),
    });
    let (laminar, _servers) = factory.fresh_url().await.expect("the server starts");
    let base = laminar.split_once('?').expect("a query").0.replacen(
        &format!("laminar:{PASSWORD}@"),
        "",
        1,
    );
    let url = |name: &str, password: &str| {
        base.replacen("://", &format!("://{name}:{password}@"), 1) + "?"
    };
    let (accepted, _) = connect(&url("laminar", PASSWORD)).await;
    accepted.expect("the README's user connects");
    for (name, named) in [
        ("noscripts", &["evalsha"][..]),
        ("noload", &["script|load"][..]),
        ("nohashes", &["hdel", "hgetall"][..]),
        ("nobatch", &["hmget", "hkeys"][..]),
        ("noinfo", &["info"][..]),
        (
            "nogroups",
            &[
                "key laminar:{fixed/g0}:fence",
                "key laminar:{fixed/g0}:epochs",
            ][..],
        ),
    ] {
        let namespace = if name == "nogroups" {
            "fixed".to_owned()
        } else {
            fresh_prefix("t")
        };
        let (outcome, elapsed) = connect_to(&url(name, PASSWORD), &namespace).await;
        let message = refusal(outcome, name);
        assert!(
            message.contains("NOPERM")
                && named.iter().all(|n| message.contains(n))
                && elapsed < CONNECT_BOUND,
            "user {name}: the refusal does not say NOPERM and {named:?}, or took {elapsed:?}: {message}"
        );
    }
    let (outcome, _) = connect(&url("laminar", "not-the-password")).await;
    let message = refusal(outcome, "a wrong password");
    assert!(!message.contains("not-the-password"), "{message}");
}
