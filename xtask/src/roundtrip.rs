//! `cargo xtask roundtrip`: the release, for real, against a registry on
//! this machine, then the crates used the way users use them.
//!
//! 1. A scratch repository: the working tree as it is (tracked and
//!    untracked files, not the ignored ones; so uncommitted work is what is
//!    tested), committed in `target/roundtrip/work/repo`. The real tree is
//!    never touched.
//! 2. A registry (`xtask/registry.py`: the sparse index, the publish API and
//!    downloads, on a free loopback port).
//! 3. `cargo xtask release patch --registry roundtrip --execute` in the
//!    scratch repository (without lints, tests and package verification:
//!    `cargo xtask test` ran those on the same tree, and step 5 builds every
//!    published crate from the registry); it must leave a clean tree, the
//!    release commit and the tag.
//! 4. Every published crate (no `publish = false`) must be in the registry
//!    at the new version.
//! 5. Fresh projects outside the workspace, resolving this project's crates
//!    only from that registry:
//!    - an engine with `laminar-state = { default-features = false,
//!      features = ["redb"] }` runs a checkpoint loop on redb, reopens it,
//!      and gets `ConfigError::FeatureDisabled` naming `redis` for a
//!      `redis://` URL;
//!    - a third-party backend (its own `StateBackend` wrapping the published
//!      `laminar-state-memory`) runs `conformance_tests!` from the published
//!      `laminar-state-conformance`, and passes;
//!    - each published crate with features is checked with no feature and
//!      with each feature alone (the features as the registry lists them);
//!    - all published crates resolve together (a missing crate or a
//!      dependency on a version that is not there fails here at the latest).
//!
//! Everything cargo keeps lives under `target/roundtrip` (or
//! `$LAMINAR_ROUNDTRIP_DIR`, e.g. a cache that outlives the checkout): a private
//! `CARGO_HOME` (crates.io downloads are kept; the test registry's caches
//! are dropped every run) and one `CARGO_TARGET_DIR` (third-party crates
//! stay built; this project's crates are dropped every run, since every run
//! publishes the same version with new contents).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cargo::{cargo, root};
use crate::release::{Crate, published_crates, workspace_version};

/// The registry's name in the scratch repository and the fresh projects.
const REGISTRY: &str = "roundtrip";

/// Where everything goes.
struct Layout {
    home: PathBuf,
    target: PathBuf,
    work: PathBuf,
}

/// The environment every cargo of the round trip runs in.
struct Env {
    layout: Layout,
    index: String,
}

impl Env {
    fn cargo(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = cargo();
        command
            .current_dir(dir)
            .args(args)
            .env("CARGO_HOME", &self.layout.home)
            .env("CARGO_TARGET_DIR", &self.layout.target)
            .env("CARGO_REGISTRIES_ROUNDTRIP_INDEX", &self.index)
            .env("CARGO_REGISTRIES_ROUNDTRIP_TOKEN", "roundtrip-token");
        isolate_git(&mut command);
        command
    }
}

/// Git without the user's configuration (signing, hooks paths), with an
/// identity for the scratch repository's commits and tag.
fn isolate_git(command: &mut Command) {
    command
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "roundtrip")
        .env("GIT_AUTHOR_EMAIL", "roundtrip@localhost")
        .env("GIT_COMMITTER_NAME", "roundtrip")
        .env("GIT_COMMITTER_EMAIL", "roundtrip@localhost");
}

fn say(message: &str) {
    eprintln!("roundtrip: {message}");
}

fn run(command: Command, what: &str) -> Result<(), String> {
    crate::cargo::run_quietly(command, what)
}

/// `f`, timed (wall clock, and the CPU time of the processes it ran,
/// which other load on the machine does not inflate) and announced.
fn timed<T>(
    times: &mut Vec<(String, Duration, Option<Duration>)>,
    what: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    say(&format!("{what} ..."));
    let started = Instant::now();
    let cpu_before = children_cpu();
    let result = f().map_err(|e| format!("{what}: {e}"))?;
    let took = started.elapsed();
    let cpu = children_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    say(&format!("{what}: ok ({})", shown_time(took, cpu)));
    times.push((what.to_owned(), took, cpu));
    Ok(result)
}

fn shown_time(wall: Duration, cpu: Option<Duration>) -> String {
    match cpu {
        Some(cpu) => format!("{:.1}s, cpu {:.1}s", wall.as_secs_f64(), cpu.as_secs_f64()),
        None => format!("{:.1}s", wall.as_secs_f64()),
    }
}

/// The user and system time of this process's finished children (Linux:
/// `cutime` and `cstime` in `/proc/self/stat`, at 100 ticks a second).
fn children_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses: the
    // first of them is field 3, so cutime (16) and cstime (17) are at 13
    // and 14.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// `cargo xtask roundtrip`.
pub(crate) fn run_roundtrip() -> Result<(), String> {
    let started = Instant::now();
    let root = root();
    let base = std::env::var_os("LAMINAR_ROUNDTRIP_DIR")
        .map_or_else(|| root.join("target").join("roundtrip"), PathBuf::from);
    let layout = Layout {
        home: base.join("cargo-home"),
        target: base.join("target"),
        work: base.join("work"),
    };
    forget_previous_runs(&layout)?;
    let mut times = Vec::new();

    let repo = layout.work.join("repo");
    timed(&mut times, "scratch repository (the working tree)", || {
        scratch_repository(&root, &repo)
    })?;

    let registry = Registry::start(
        &root.join("xtask").join("registry.py"),
        &layout.work.join("registry"),
    )?;
    let env = Env {
        index: format!("sparse+http://127.0.0.1:{}/index/", registry.port),
        layout,
    };
    say(&format!("registry `{REGISTRY}` at {}", env.index));

    let version = timed(&mut times, "release (--execute) to the registry", || {
        release(&env, &repo)
    })?;

    let crates = published_crates(&repo)?;
    let features = timed(&mut times, "every published crate in the registry", || {
        crates
            .iter()
            .map(|c| registry_features(&registry.dir, &c.name, &version).map(|f| (c, f)))
            .collect::<Result<Vec<_>, String>>()
    })?;
    say(&format!(
        "published, in order: {}",
        crates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let lock = repo.join("Cargo.lock");
    let projects = env.layout.work.join("projects");
    timed(
        &mut times,
        "engine: laminar-state with only `redb`, checkpoint loop",
        || engine(&env, &projects.join("engine"), &lock, &version),
    )?;
    timed(
        &mut times,
        "third-party backend: the published conformance suite",
        || backend(&env, &projects.join("backend"), &lock, &version),
    )?;
    timed(
        &mut times,
        "each feature alone (cargo check --no-default-features --features F)",
        || alone(&env, &projects.join("alone"), &lock, &version, &features),
    )?;
    timed(&mut times, "all published crates resolve together", || {
        together(&env, &projects.join("together"), &version, &crates)
    })?;
    drop(registry);

    let summary: Vec<String> = times
        .iter()
        .map(|(what, took, cpu)| {
            format!(
                "{}: {}",
                what.split([':', '(']).next().unwrap_or(what).trim(),
                shown_time(*took, *cpu)
            )
        })
        .collect();
    say(&format!(
        "passed in {:.0}s (cpu {:.0}s):\n  {}",
        started.elapsed().as_secs_f64(),
        children_cpu().unwrap_or_default().as_secs_f64(),
        summary.join("\n  ")
    ));
    Ok(())
}

/// Start from a new scratch folder, a registry cache that knows none of
/// this project's crates, and a target folder holding none of them (every
/// run publishes the same version with new contents, and cargo never
/// rebuilds a registry crate it has built: a stale one would be tested).
fn forget_previous_runs(layout: &Layout) -> Result<(), String> {
    remove(&layout.work)?;
    std::fs::create_dir_all(&layout.work)
        .map_err(|e| format!("cannot create {}: {e}", layout.work.display()))?;
    for kind in ["index", "cache", "src"] {
        remove_matching(&layout.home.join("registry").join(kind), |name| {
            name.starts_with("127.0.0.1-")
        })?;
    }
    for kind in ["deps", ".fingerprint", "build"] {
        remove_matching(&layout.target.join("debug").join(kind), |name| {
            name.starts_with("laminar-state")
                || name.starts_with("laminar_state")
                || name.starts_with("liblaminar_state")
        })?;
    }
    remove(&layout.target.join("package"))?;
    // The user's cargo configuration (a mirror, a proxy) applies here too.
    let user_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    std::fs::create_dir_all(&layout.home)
        .map_err(|e| format!("cannot create {}: {e}", layout.home.display()))?;
    if let Some(user_home) = user_home {
        for name in ["config.toml", "config"] {
            let config = user_home.join(name);
            if config.is_file() {
                std::fs::copy(&config, layout.home.join(name))
                    .map_err(|e| format!("cannot copy {}: {e}", config.display()))?;
            }
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

fn remove_matching(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if !matches(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Copy the working tree's files (tracked or untracked, not ignored) to
/// `repo` and commit them there.
fn scratch_repository(root: &Path, repo: &Path) -> Result<(), String> {
    let output = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run git ls-files: {e}"))?;
    if !output.status.success() {
        return Err(format!("git ls-files failed ({})", output.status));
    }
    let listing =
        String::from_utf8(output.stdout).map_err(|_| "a file name is not UTF-8".to_owned())?;
    let mut copied = 0;
    for file in listing.split('\0').filter(|f| !f.is_empty()) {
        let from = root.join(file);
        let to = repo.join(file);
        // Listed but deleted in the working tree: not part of it.
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue;
        };
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from)
                .map_err(|e| format!("cannot read the link {file}: {e}"))?;
            symlink(&target, &to).map_err(|e| format!("cannot link {file}: {e}"))?;
        } else if meta.is_file() {
            std::fs::copy(&from, &to).map_err(|e| format!("cannot copy {file}: {e}"))?;
        } else {
            continue;
        }
        copied += 1;
    }
    let head = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    for args in [
        vec!["init", "-q", "-b", "main"],
        vec!["add", "-A"],
        vec![
            "commit",
            "-q",
            "-m",
            &format!("round trip: the working tree over {head}"),
        ],
    ] {
        let mut git = Command::new("git");
        git.current_dir(repo).args(&args);
        isolate_git(&mut git);
        run(git, &format!("git {}", args[0]))?;
    }
    say(&format!("{copied} files in {}", repo.display()));
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let from = link.parent().unwrap_or(Path::new(".")).join(target);
    std::fs::copy(from, link).map(drop)
}

/// The registry server, stopped when dropped.
struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Registry {
    fn start(script: &Path, dir: &Path) -> Result<Self, String> {
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(dir)
            // A bound for a server whose xtask was killed without closing
            // its stdin: far above the round trip's own time.
            .args(["--max-seconds", "7200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the registry (python3 {}): {e}",
                    script.display()
                )
            })?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        let read = BufReader::new(stdout).read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok());
        match (read, port) {
            (Ok(_), Some(port)) => Ok(Registry {
                child,
                port,
                dir: dir.to_path_buf(),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the registry did not start (it said {line:?})"))
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the release in the scratch repository; the version it released.
fn release(env: &Env, repo: &Path) -> Result<String, String> {
    let before = workspace_version(&read(&repo.join("Cargo.toml"))?)?;
    let command = env.cargo(
        repo,
        &[
            "xtask",
            "release",
            "patch",
            "--registry",
            REGISTRY,
            "--execute",
            "--no-lints",
            "--no-tests",
            "--no-verify",
        ],
    );
    run(command, "cargo xtask release patch --execute")?;
    let version = workspace_version(&read(&repo.join("Cargo.toml"))?)?.to_string();
    if version == before.to_string() {
        return Err(format!("the workspace is still at {version}"));
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(repo)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .map_err(|e| format!("cannot run git: {e}"))
    };
    let status = git(&["status", "--porcelain"])?;
    if !status.is_empty() {
        return Err(format!("the release left changes behind:\n{status}"));
    }
    let subject = git(&["log", "-1", "--format=%s"])?;
    if subject != format!("release v{version}") {
        return Err(format!("the last commit is {subject:?}, not the release"));
    }
    let kind = git(&["cat-file", "-t", &format!("v{version}")])?;
    if kind != "tag" {
        return Err(format!("v{version} is not an annotated tag ({kind:?})"));
    }
    Ok(version)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The sparse index's path of a crate.
fn index_path(name: &str) -> String {
    let name = name.to_lowercase();
    match name.len() {
        1 | 2 => format!("{}/{name}", name.len()),
        3 => format!("3/{}/{name}", &name[..1]),
        _ => format!("{}/{}/{name}", &name[..2], &name[2..4]),
    }
}

/// The features the registry lists for `name` at `version` (not
/// `default`); an error if it does not hold that version.
fn registry_features(registry: &Path, name: &str, version: &str) -> Result<Vec<String>, String> {
    let file = registry.join("index").join(index_path(name));
    let text = std::fs::read_to_string(&file)
        .map_err(|_| format!("{name} is missing from the registry"))?;
    let entry: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["vers"] == version)
        .ok_or_else(|| format!("{name} {version} is missing from the registry"))?;
    let mut features: Vec<String> = ["features", "features2"]
        .iter()
        .filter_map(|key| entry[key].as_object())
        .flat_map(|map| map.keys().cloned())
        .filter(|f| f != "default")
        .collect();
    features.sort();
    features.dedup();
    Ok(features)
}

/// A dependency on one of this project's crates, from the registry only.
fn dep(name: &str, version: &str, extra: &str) -> String {
    format!("{name} = {{ version = \"={version}\", registry = \"{REGISTRY}\"{extra} }}\n")
}

/// A fresh project's manifest: its own workspace (it lives under this
/// one's folder), built without debug info (a third of the build time;
/// nothing here is debugged).
fn manifest(name: &str, body: &str) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n{body}\n\
         [profile.dev]\ndebug = false\n\n[workspace]\n"
    )
}

/// Start a project at `dir` with this workspace's lock file, so it builds
/// the third-party versions the workspace tested (cargo drops the rest).
fn seed_lock(dir: &Path, lock: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::copy(lock, dir.join("Cargo.lock"))
        .map(drop)
        .map_err(|e| format!("cannot copy {}: {e}", lock.display()))
}

const ENGINE: &str = r#"//! An engine that picked one backend by feature: a checkpoint loop on
//! redb, a restart, and a clear error for a backend it did not compile in.

use laminar_state::{ConfigError, connect};

const VNODES: u32 = 16;
const EPOCHS: u64 = 12;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: engine STATE_DIR")?;
    let url = format!("redb://{dir}/state.redb");
    let vnodes: Vec<u32> = (0..VNODES).collect();
    for run in 0..2 {
        // The second run is a restart: it resumes after the last commit.
        let backend = connect(&url, "engine-1", VNODES).await?;
        let first = backend.latest_committed_epoch().await?.map_or(0, |e| e + 1);
        assert_eq!(first, run * EPOCHS, "run {run} resumes after the last sealed epoch");
        if run == 1 {
            let restored = backend.read_partial(3, first - 1).await?;
            assert_eq!(restored.as_deref(), Some(format!("vnode 3 at {}", first - 1).as_bytes()));
        }
        for epoch in first..first + EPOCHS {
            for vnode in 0..VNODES {
                let partial = format!("vnode {vnode} at {epoch}");
                backend.write_partial(vnode, epoch, 0, partial.into()).await?;
            }
            assert!(backend.epoch_complete(epoch, &vnodes).await?, "epoch {epoch} seals");
            backend.prune_before(epoch.saturating_sub(2)).await?;
        }
        assert_eq!(backend.read_partial(0, 0).await?, None, "epoch 0 is pruned");
    }
    match connect("redis://127.0.0.1:6379/?namespace=engine", "engine-1", VNODES).await {
        Err(error @ ConfigError::FeatureDisabled { .. }) => {
            let message = error.to_string();
            assert!(message.contains("`redis`"), "the error names the feature: {message}");
            println!("engine: redis:// without the feature: {message}");
        }
        Err(other) => return Err(format!("redis:// gave {other:?}, not FeatureDisabled").into()),
        Ok(_) => return Err("redis:// opened without the redis feature".into()),
    }
    println!("engine: {} checkpoints of {VNODES} vnodes on redb, across a restart", 2 * EPOCHS);
    Ok(())
}
"#;

fn engine(env: &Env, dir: &Path, lock: &Path, version: &str) -> Result<(), String> {
    seed_lock(dir, lock)?;
    let body = format!(
        "[dependencies]\n{}tokio = {{ version = \"1\", features = [\"rt-multi-thread\", \"macros\"] }}\n",
        dep(
            "laminar-state",
            version,
            ", default-features = false, features = [\"redb\"]"
        )
    );
    write(
        &dir.join("Cargo.toml"),
        &manifest("roundtrip-engine", &body),
    )?;
    write(&dir.join("src").join("main.rs"), ENGINE)?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let state = state.display().to_string();
    run(
        env.cargo(dir, &["run", "--quiet", "--", &state]),
        "cargo run (the engine)",
    )
}

const BACKEND_LIB: &str = r#"//! A third party's backend: a thin layer over the published in-process
//! store (the API's `ForwardingBackend`), tested with the published suite.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_memory::{MemoryBackend, MemoryStore};

/// A store: handles opened on it share it.
#[derive(Clone, Default)]
pub struct Store(MemoryStore);

impl Store {
    /// A store whose partials are at most `max_payload_len` bytes.
    pub fn new(max_payload_len: usize) -> Self {
        Store(MemoryStore::with_max_payload_len(max_payload_len))
    }

    /// A handle for `instance_id`, serving vnodes `0..vnode_capacity`.
    pub fn handle(&self, instance_id: &str, vnode_capacity: u32) -> Arc<dyn StateBackend> {
        Arc::new(Handle(self.0.open(instance_id, vnode_capacity)))
    }
}

struct Handle(MemoryBackend);

#[async_trait]
impl laminar_state_api::ForwardingBackend for Handle {
    type Inner = MemoryBackend;

    fn inner(&self) -> &Self::Inner {
        &self.0
    }

    async fn write_partial(&self, vnode: u32, epoch: u64, version: u64, bytes: Bytes) -> Result<(), StateBackendError> {
        self.0.write_partial(vnode, epoch, version, bytes).await
    }
    async fn read_partial(&self, vnode: u32, epoch: u64) -> Result<Option<Bytes>, StateBackendError> {
        self.0.read_partial(vnode, epoch).await
    }

    async fn read_partials(
        &self,
        epoch: u64,
        vnodes: &[u32],
    ) -> Result<Vec<Option<Bytes>>, StateBackendError> {
        self.0.read_partials(epoch, vnodes).await
    }
}
"#;

const BACKEND_TEST: &str = r#"//! The published conformance suite against this backend.

use std::sync::Arc;

use async_trait::async_trait;
use laminar_state_api::{StateBackend, StateBackendError};
use laminar_state_conformance::{BackendFactory, Capabilities, TestStore};

const MAX_PAYLOAD: usize = 1 << 20;

struct Factory;

#[async_trait]
impl BackendFactory for Factory {
    fn name(&self) -> String {
        "third-party".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.fenced_seal().recovery_queries().atomic_prune()
    }

    async fn create_store(&self) -> Result<Box<dyn TestStore>, StateBackendError> {
        Ok(Box::new(Fresh(roundtrip_backend::Store::new(MAX_PAYLOAD))))
    }
}

struct Fresh(roundtrip_backend::Store);

#[async_trait]
impl TestStore for Fresh {
    async fn open(&self, id: &str, vnodes: u32) -> Result<Arc<dyn StateBackend>, StateBackendError> {
        Ok(self.0.handle(id, vnodes))
    }

    fn max_payload_len(&self) -> usize {
        MAX_PAYLOAD
    }
}

laminar_state_conformance::conformance_tests!(third_party, Factory);
"#;

fn backend(env: &Env, dir: &Path, lock: &Path, version: &str) -> Result<(), String> {
    seed_lock(dir, lock)?;
    let body = format!(
        "[dependencies]\n{}{}async-trait = \"0.1\"\nbytes = \"1\"\n\n[dev-dependencies]\n{}",
        dep("laminar-state-api", version, ""),
        dep("laminar-state-memory", version, ""),
        dep("laminar-state-conformance", version, ""),
    );
    write(
        &dir.join("Cargo.toml"),
        &manifest("roundtrip-backend", &body),
    )?;
    write(&dir.join("src").join("lib.rs"), BACKEND_LIB)?;
    write(&dir.join("tests").join("conformance.rs"), BACKEND_TEST)?;
    run(
        env.cargo(dir, &["test", "--quiet", "--test", "conformance"]),
        "cargo test (the published suite on a third-party backend)",
    )
}

/// Each published crate that has features, checked with none and with each
/// alone: a project depending on it alone, forwarding its features.
fn alone(
    env: &Env,
    dir: &Path,
    lock: &Path,
    version: &str,
    crates: &[(&Crate, Vec<String>)],
) -> Result<(), String> {
    seed_lock(dir, lock)?;
    write(&dir.join("src").join("lib.rs"), "//! Builds one crate.\n")?;
    for (krate, features) in crates.iter().filter(|(_, f)| !f.is_empty()) {
        let forwarded: String = features
            .iter()
            .map(|f| format!("{f} = [\"{}/{f}\"]\n", krate.name))
            .collect();
        let body = format!(
            "[dependencies]\n{}\n[features]\n{forwarded}",
            dep(&krate.name, version, ", default-features = false")
        );
        write(&dir.join("Cargo.toml"), &manifest("roundtrip-alone", &body))?;
        let sets = std::iter::once(None).chain(features.iter().map(Some));
        for feature in sets {
            let mut args = vec!["check", "--quiet", "--no-default-features"];
            if let Some(feature) = feature {
                args.extend(["--features", feature]);
            }
            let shown = format!(
                "{} with {}",
                krate.name,
                feature.map_or("no feature", |f| f)
            );
            let started = Instant::now();
            run(env.cargo(dir, &args), &shown)?;
            say(&format!(
                "  {shown}: ok ({:.1}s)",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(())
}

/// Every published crate in one project, default features, resolved (each
/// is built above, with the features it is used with).
fn together(env: &Env, dir: &Path, version: &str, crates: &[Crate]) -> Result<(), String> {
    let deps: String = crates.iter().map(|c| dep(&c.name, version, "")).collect();
    write(
        &dir.join("Cargo.toml"),
        &manifest("roundtrip-together", &format!("[dependencies]\n{deps}")),
    )?;
    write(&dir.join("src").join("lib.rs"), "//! Uses every crate.\n")?;
    // Resolution only: the index, no downloads.
    run(
        env.cargo(dir, &["generate-lockfile", "--quiet"]),
        "cargo generate-lockfile (resolving every crate)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths_follow_cargo() {
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("abc"), "3/a/abc");
        assert_eq!(index_path("Laminar-State"), "la/mi/laminar-state");
    }

    #[test]
    fn features_come_from_the_registry() {
        let dir = std::env::temp_dir().join(format!("xtask-roundtrip-{}", std::process::id()));
        let line = r#"{"name":"laminar-state","vers":"0.1.1","deps":[],"cksum":"00","features":{"default":["memory"],"memory":[]},"features2":{"redb":["dep:x"]},"yanked":false,"v":2}"#;
        write(
            &dir.join("index").join("la/mi/laminar-state"),
            &format!("{line}\n"),
        )
        .unwrap();
        assert_eq!(
            registry_features(&dir, "laminar-state", "0.1.1").unwrap(),
            ["memory", "redb"]
        );
        let missing = registry_features(&dir, "laminar-state", "0.1.2").unwrap_err();
        assert!(missing.contains("missing from the registry"), "{missing}");
        let missing = registry_features(&dir, "laminar-state-s3", "0.1.1").unwrap_err();
        assert!(missing.contains("laminar-state-s3 is missing"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
