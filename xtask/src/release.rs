//! `cargo xtask release <patch|minor|major|X.Y.Z> [--registry NAME] [--execute]`:
//! one command from a clean tree to published crates and a tag.
//!
//! A dry run unless `--execute`: it checks what can be checked without
//! changing anything (a clean tree, the new version, the crates and their
//! order, the changelog) and prints every step it would take. With
//! `--execute` it takes them, in order:
//!
//! 1. refuse a dirty tree (`git status` must show nothing);
//! 2. the crates to publish: every workspace member without
//!    `publish = false`, ordered so each comes after its internal
//!    dependencies (from `cargo metadata`, never a hand-kept list);
//! 3. the lints (`cargo xtask lint`'s steps) and 4. the tests
//!    (`cargo xtask test`), unless `--no-lints` / `--no-tests`;
//! 5. the new version in `[workspace.package]` and in every internal pin of
//!    `[workspace.dependencies]`, in one edit; `Cargo.lock` follows;
//! 6. `CHANGELOG.md`'s "Unreleased" section moves under the new version
//!    and today's date (UTC);
//! 7. `cargo semver-checks` per crate against the previous release tag
//!    (skipped, saying why, without a tag or without the tool);
//! 8. the commit "release vX.Y.Z";
//! 9. `cargo package` of the published crates, verified (each built from
//!    its tarball, the unpublished ones overlaid), unless `--no-verify`;
//! 10. `cargo publish`, crate by crate in that order, to `--registry NAME`
//!     (crates.io without it); for a registry other than crates.io the
//!     internal pins name it (`registry = "NAME"`) while packaging and
//!     publishing, since a dependency without `registry` means crates.io;
//! 11. the annotated tag `vX.Y.Z` (not pushed).
//!
//! A failure names the step and the crate, and leaves the tree as it was:
//! the files it changed are restored and the release commit is undone (a
//! crate already published stays published; the message lists them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use toml_edit::{DocumentMut, Item};

use crate::cargo::{cargo, root};

/// The command line, for errors and the help.
pub(crate) const USAGE: &str = "cargo xtask release <patch|minor|major|X.Y.Z> [--registry NAME] [--execute] [--no-tests] [--no-lints] [--no-verify]";

const STEPS: usize = 11;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    bump: String,
    registry: Option<String>,
    execute: bool,
    lints: bool,
    tests: bool,
    verify: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        bump: String::new(),
        registry: None,
        execute: false,
        lints: true,
        tests: true,
        verify: true,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--execute" => options.execute = true,
            "--no-tests" => options.tests = false,
            "--no-lints" => options.lints = false,
            "--no-verify" => options.verify = false,
            "--registry" => {
                let name = rest
                    .next()
                    .ok_or_else(|| format!("--registry needs a name\n\nusage: {USAGE}"))?;
                options.registry = Some(name.clone());
            }
            flag if flag.starts_with("--registry=") => {
                options.registry = Some(flag["--registry=".len()..].to_owned());
            }
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag:?}\n\nusage: {USAGE}"));
            }
            bump if options.bump.is_empty() => options.bump = bump.to_owned(),
            extra => return Err(format!("unexpected argument {extra:?}\n\nusage: {USAGE}")),
        }
    }
    if options.bump.is_empty() {
        return Err(format!("which version?\n\nusage: {USAGE}"));
    }
    if options.registry.as_deref() == Some("crates.io") {
        options.registry = Some("crates-io".to_owned());
    }
    Ok(options)
}

/// A version `MAJOR.MINOR.PATCH[-PRE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Option<String>,
}

impl Version {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a version MAJOR.MINOR.PATCH[-PRE]");
        let (numbers, pre) = match text.split_once('-') {
            Some((numbers, pre)) if !pre.is_empty() => (numbers, Some(pre.to_owned())),
            Some(_) => return Err(bad()),
            None => (text, None),
        };
        let parts: Vec<u64> = numbers
            .split('.')
            .map(|n| {
                if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
                    Err(bad())
                } else {
                    n.parse().map_err(|_| bad())
                }
            })
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [major, minor, patch] => Ok(Version {
                major,
                minor,
                patch,
                pre,
            }),
            _ => Err(bad()),
        }
    }

    /// The version a `patch`, `minor` or `major` release of `self` gets,
    /// or an explicit `X.Y.Z`.
    fn bumped(&self, bump: &str) -> Result<Self, String> {
        let released = |major, minor, patch| Version {
            major,
            minor,
            patch,
            pre: None,
        };
        // A pre-release becomes its release; otherwise the part goes up.
        let pre = self.pre.is_some();
        Ok(match bump {
            "patch" if pre => released(self.major, self.minor, self.patch),
            "patch" => released(self.major, self.minor, self.patch + 1),
            "minor" if pre && self.patch == 0 => released(self.major, self.minor, 0),
            "minor" => released(self.major, self.minor + 1, 0),
            "major" if pre && self.patch == 0 && self.minor == 0 => released(self.major, 0, 0),
            "major" => released(self.major + 1, 0, 0),
            explicit => Version::parse(explicit)
                .map_err(|e| format!("{e}; or one of patch, minor, major"))?,
        })
    }

    fn key(&self) -> (u64, u64, u64, bool, &str) {
        (
            self.major,
            self.minor,
            self.patch,
            self.pre.is_none(),
            self.pre.as_deref().unwrap_or(""),
        )
    }

    /// Semver precedence (pre-releases compare as text, enough here).
    fn newer_than(&self, other: &Version) -> bool {
        self.key() > other.key()
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

/// A published crate of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crate {
    pub(crate) name: String,
    /// Its folder, relative to the workspace root.
    pub(crate) dir: String,
    /// Its internal dependencies that ship with it (normal and build).
    pub(crate) internal: Vec<String>,
}

/// One workspace member as `cargo metadata` describes it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    version: String,
    dir: String,
    published: bool,
    /// (package, kind, requirement) of each dependency on another member.
    internal: Vec<(String, String, String)>,
}

fn members_from_metadata(metadata: &Value, root: &Path) -> Result<Vec<Member>, String> {
    let ids: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .ok_or("cargo metadata lists no workspace members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages: Vec<&Value> = metadata["packages"]
        .as_array()
        .ok_or("cargo metadata lists no packages")?
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(id)))
        .collect();
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut members = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default().to_owned();
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest
            .parent()
            .and_then(|d| d.strip_prefix(root).ok())
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        // `publish = false` is an empty list; absent is null (anywhere).
        let published = match &package["publish"] {
            Value::Array(registries) => !registries.is_empty(),
            _ => true,
        };
        let internal = package["dependencies"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|d| d["path"].is_string())
            .filter_map(|d| {
                let dep = d["name"].as_str()?;
                names.contains(dep).then(|| {
                    (
                        dep.to_owned(),
                        d["kind"].as_str().unwrap_or("normal").to_owned(),
                        d["req"].as_str().unwrap_or("*").to_owned(),
                    )
                })
            })
            .collect();
        members.push(Member {
            name,
            version: package["version"].as_str().unwrap_or_default().to_owned(),
            dir,
            published,
            internal,
        });
    }
    Ok(members)
}

/// The published crates in publishing order, after checking that each
/// ships only with published internal dependencies pinned to `version`.
fn publish_plan(members: &[Member], version: &str) -> Result<Vec<Crate>, String> {
    let published: BTreeMap<&str, &Member> = members
        .iter()
        .filter(|m| m.published)
        .map(|m| (m.name.as_str(), m))
        .collect();
    let mut problems = Vec::new();
    let mut crates = Vec::new();
    for member in published.values() {
        if member.version != version {
            problems.push(format!(
                "{} is at version {} but the workspace is at {version}: write `version.workspace = true`",
                member.name, member.version
            ));
        }
        let mut internal = Vec::new();
        for (dep, kind, req) in &member.internal {
            if kind == "dev" {
                continue;
            }
            if !published.contains_key(dep.as_str()) {
                problems.push(format!(
                    "{} depends on {dep}, which has `publish = false`",
                    member.name
                ));
            } else if req != &format!("^{version}") && req != &format!("={version}") {
                problems.push(format!(
                    "{} depends on {dep} as {req:?}, not on the workspace version {version}: write `{dep}.workspace = true`",
                    member.name
                ));
            }
            internal.push(dep.clone());
        }
        internal.sort();
        internal.dedup();
        crates.push(Crate {
            name: member.name.clone(),
            dir: member.dir.clone(),
            internal,
        });
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    dependency_order(crates)
}

/// `crates` ordered so that each comes after its internal dependencies;
/// among those ready at once, by name (a stable order).
pub(crate) fn dependency_order(crates: Vec<Crate>) -> Result<Vec<Crate>, String> {
    let mut pending: BTreeMap<String, Crate> =
        crates.into_iter().map(|c| (c.name.clone(), c)).collect();
    let mut ordered: Vec<Crate> = Vec::new();
    while !pending.is_empty() {
        let ready = pending
            .values()
            .find(|c| {
                c.internal
                    .iter()
                    .all(|dep| ordered.iter().any(|done| &done.name == dep))
            })
            .map(|c| c.name.clone());
        match ready {
            Some(name) => ordered.push(pending.remove(&name).expect("a pending crate")),
            None => {
                let stuck: Vec<&str> = pending.keys().map(String::as_str).collect();
                return Err(format!(
                    "the internal dependencies of {} form a cycle",
                    stuck.join(", ")
                ));
            }
        }
    }
    Ok(ordered)
}

/// The published crates of the workspace at `root`, in publishing order.
pub(crate) fn published_crates(root: &Path) -> Result<Vec<Crate>, String> {
    let version = workspace_version(&read(&root.join("Cargo.toml"))?)?;
    let metadata = cargo_metadata(root)?;
    publish_plan(
        &members_from_metadata(&metadata, root)?,
        &version.to_string(),
    )
}

fn cargo_metadata(root: &Path) -> Result<Value, String> {
    let output = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed ({})", output.status));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata's JSON: {e}"))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn parse_manifest(text: &str) -> Result<DocumentMut, String> {
    text.parse()
        .map_err(|e| format!("Cargo.toml does not parse: {e}"))
}

/// `[workspace.package] version`.
pub(crate) fn workspace_version(manifest: &str) -> Result<Version, String> {
    let doc = parse_manifest(manifest)?;
    let version = doc
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(Item::as_str)
        .ok_or("the root Cargo.toml has no [workspace.package] version")?;
    Version::parse(version)
}

fn workspace_repository(manifest: &str) -> Option<String> {
    let doc = parse_manifest(manifest).ok()?;
    doc.get("workspace")?
        .get("package")?
        .get("repository")?
        .as_str()
        .map(|r| r.trim_end_matches('/').to_owned())
}

/// The root manifest with `new` as the workspace version and as the
/// version of every pin of a published crate in `[workspace.dependencies]`;
/// with `registry`, those pins also name it. Also the changes, for the log.
fn bump_manifest(
    manifest: &str,
    published: &[String],
    new: &str,
    registry: Option<&str>,
) -> Result<(String, Vec<String>), String> {
    let mut doc = parse_manifest(manifest)?;
    let mut changes = Vec::new();
    let package = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("package"))
        .and_then(Item::as_table_like_mut)
        .ok_or("the root Cargo.toml has no [workspace.package]")?;
    let old = package
        .get("version")
        .and_then(Item::as_str)
        .ok_or("the root Cargo.toml has no [workspace.package] version")?
        .to_owned();
    if old != new {
        set_value(
            package.get_mut("version").expect("checked above"),
            new.into(),
        );
        changes.push(format!("[workspace.package] version {old} -> {new}"));
    }
    let deps = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("dependencies"))
        .and_then(Item::as_table_like_mut)
        .ok_or("the root Cargo.toml has no [workspace.dependencies]")?;
    let mut pinned = BTreeSet::new();
    for (key, spec) in deps.iter_mut() {
        let Some(spec) = spec.as_table_like_mut() else {
            continue;
        };
        let package = spec
            .get("package")
            .and_then(Item::as_str)
            .unwrap_or(key.get())
            .to_owned();
        if !published.contains(&package) {
            continue;
        }
        let Some(version) = spec.get_mut("version") else {
            return Err(format!(
                "[workspace.dependencies] {package} has no version: published crates are pinned"
            ));
        };
        let old = version.as_str().unwrap_or_default().to_owned();
        if old != new {
            set_value(version, new.into());
            changes.push(format!("[workspace.dependencies] {package} {old} -> {new}"));
        }
        if let Some(registry) = registry {
            spec.insert("registry", toml_edit::value(registry));
            // A temporary edit: cargo's layout is fine for it.
            spec.fmt();
        }
        pinned.insert(package);
    }
    let unpinned: Vec<&String> = published.iter().filter(|p| !pinned.contains(*p)).collect();
    if !unpinned.is_empty() {
        // A crate nobody depends on needs no pin; one that is depended on
        // would keep an old requirement, which plan's checks catch.
        changes.push(format!(
            "(no pin in [workspace.dependencies] for {})",
            unpinned
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok((doc.to_string(), changes))
}

/// Replace a value, keeping the spaces and comments around it.
fn set_value(item: &mut Item, new: toml_edit::Value) {
    let mut new = new;
    if let Some(old) = item.as_value() {
        *new.decor_mut() = old.decor().clone();
    }
    *item = Item::Value(new);
}

/// `CHANGELOG.md` with its "Unreleased" section moved under `new` and
/// `date`, an empty "Unreleased" above it, and the comparison links at the
/// bottom updated; also the section's text (for the tag's message).
fn release_changelog(
    text: &str,
    new: &str,
    date: &str,
    repository: Option<&str>,
    previous_tag: Option<&str>,
) -> Result<(String, String), String> {
    let lines: Vec<&str> = text.lines().collect();
    let is_heading = |l: &str| l.trim_end().eq_ignore_ascii_case("## [unreleased]");
    let start = lines
        .iter()
        .position(|l| is_heading(l))
        .ok_or("CHANGELOG.md has no `## [Unreleased]` section")?;
    let is_link_definition = |l: &str| {
        l.starts_with('[')
            && l.split_once("]:")
                .is_some_and(|(label, _)| !label.contains(']'))
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## ") || is_link_definition(l))
        .map_or(lines.len(), |i| start + 1 + i);
    let body: Vec<&str> = lines[start + 1..end].to_vec();
    let first = body.iter().position(|l| !l.trim().is_empty());
    let last = body.iter().rposition(|l| !l.trim().is_empty());
    let (Some(first), Some(last)) = (first, last) else {
        return Err(
            "the Unreleased section of CHANGELOG.md is empty: say what this release changes".into(),
        );
    };
    let section = body[first..=last].join("\n");
    let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
    out.push(lines[start].to_owned());
    out.push(String::new());
    out.push(format!("## [{new}] - {date}"));
    out.push(String::new());
    out.push(section.clone());
    out.push(String::new());
    let mut rest = lines[end..].iter();
    for line in rest.by_ref() {
        let Some(repository) = repository else {
            out.push((*line).to_owned());
            continue;
        };
        if line.to_ascii_lowercase().starts_with("[unreleased]:") {
            out.push(format!("[Unreleased]: {repository}/compare/v{new}...HEAD"));
            out.push(match previous_tag {
                Some(tag) => format!("[{new}]: {repository}/compare/{tag}...v{new}"),
                None => format!("[{new}]: {repository}/releases/tag/v{new}"),
            });
        } else {
            out.push((*line).to_owned());
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    Ok((text, section))
}

/// Today's date in UTC, `YYYY-MM-DD`.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01),
/// after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------
// Running it.

fn say(message: &str) {
    println!("release: {message}");
    let _ = std::io::stdout().flush();
}

fn step(n: usize, title: &str) {
    say(&format!("[{n}/{STEPS}] {title}"));
}

fn git(root: &Path) -> Command {
    let mut git = Command::new("git");
    git.current_dir(root);
    git
}

fn git_output(root: &Path, args: &[&str]) -> Result<String, String> {
    let output = git(root)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    } else {
        Err(format!("git {} failed ({})", args.join(" "), output.status))
    }
}

fn git_succeeds(root: &Path, args: &[&str]) -> bool {
    git(root)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_git(root: &Path, args: &[&str]) -> Result<(), String> {
    git_output(root, args).map(drop)
}

/// Run `command` (shown first); an error says what failed.
fn run(command: Command) -> Result<(), String> {
    let shown = shown(&command);
    say(&format!("$ {shown}"));
    crate::cargo::run_quietly(command, &shown)
}

fn shown(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    if words[0].ends_with("/cargo") || words[0].ends_with("\\cargo.exe") {
        words[0] = "cargo".into();
    }
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Run a cargo command over several crates, echoing its stderr, and on
/// failure name the crate it was working on (its last "Packaging X" or
/// "Verifying X" line).
fn run_naming_crate(
    mut command: Command,
    crates: &[Crate],
) -> Result<(), (Option<String>, String)> {
    let shown = shown(&command);
    say(&format!("$ {shown}"));
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (None, format!("cannot run {shown}: {e}")))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut current = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        eprintln!("{line}");
        let mut words = line.split_whitespace();
        if let (Some("Packaging" | "Verifying"), Some(name)) = (words.next(), words.next())
            && crates.iter().any(|c| c.name == name)
        {
            current = Some(name.to_owned());
        }
    }
    let status = child
        .wait()
        .map_err(|e| (current.clone(), format!("{shown}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err((current, format!("{shown} failed ({status})")))
    }
}

/// What the release changed, to put back on failure.
struct Undo {
    root: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    /// The commit before the release commit, once that is made.
    before_commit: Option<String>,
    tag: Option<String>,
}

impl Undo {
    fn keep(&mut self, path: &Path) -> Result<(), String> {
        if self.files.iter().all(|(p, _)| p != path) {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            self.files.push((path.to_path_buf(), bytes));
        }
        Ok(())
    }

    /// Put the files back as they were before `keep`.
    fn restore_files(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, bytes) in self.files.iter().rev() {
            if let Err(e) = std::fs::write(path, bytes) {
                problems.push(format!("cannot restore {}: {e}", path.display()));
            }
        }
        problems
    }

    fn undo(&self) {
        let mut problems = Vec::new();
        if let Some(tag) = &self.tag
            && let Err(e) = run_git(&self.root, &["tag", "-d", tag])
        {
            problems.push(e);
        }
        if let Some(commit) = &self.before_commit
            && let Err(e) = run_git(&self.root, &["reset", "-q", "--mixed", commit])
        {
            problems.push(e);
        }
        problems.extend(self.restore_files());
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(p, _)| relative(&self.root, p))
            .collect();
        if problems.is_empty() {
            let mut what = Vec::new();
            if !files.is_empty() {
                what.push(format!("restored {}", files.join(", ")));
            }
            if let Some(commit) = &self.before_commit {
                what.push(format!(
                    "undid the release commit (HEAD is {})",
                    &commit[..12.min(commit.len())]
                ));
            }
            if !what.is_empty() {
                say(&format!("the tree is as it was: {}", what.join("; ")));
            }
        } else {
            say(&format!(
                "could not put everything back: {}",
                problems.join("; ")
            ));
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A failed step: which, for which crate, why.
struct Failure {
    step: &'static str,
    krate: Option<String>,
    message: String,
}

fn fail(step: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        step,
        krate: None,
        message: message.into(),
    }
}

/// `cargo xtask release ...`.
pub(crate) fn run_release(args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let root = root();
    release(&root, &options).map_err(|f| match f.krate {
        Some(krate) => format!(
            "release failed at step `{}` for crate {krate}: {}",
            f.step, f.message
        ),
        None => format!("release failed at step `{}`: {}", f.step, f.message),
    })
}

fn release(root: &Path, options: &Options) -> Result<(), Failure> {
    let manifest_path = root.join("Cargo.toml");
    let changelog_path = root.join("CHANGELOG.md");
    let lock_path = root.join("Cargo.lock");
    let manifest = read(&manifest_path).map_err(|e| fail("plan", e))?;
    let current = workspace_version(&manifest).map_err(|e| fail("plan", e))?;
    let new = current.bumped(&options.bump).map_err(|e| fail("plan", e))?;
    let tag = format!("v{new}");
    let released_before = git_succeeds(
        root,
        &[
            "rev-parse",
            "-q",
            "--verify",
            &format!("refs/tags/v{current}"),
        ],
    );
    if !(new.newer_than(&current) || (new == current && !released_before)) {
        return Err(fail(
            "plan",
            format!("{new} is not newer than the workspace's {current}"),
        ));
    }
    if git_succeeds(
        root,
        &["rev-parse", "-q", "--verify", &format!("refs/tags/{tag}")],
    ) {
        return Err(fail("plan", format!("the tag {tag} already exists")));
    }
    let registry_name = options.registry.as_deref().unwrap_or("crates-io");
    let alternative = options.registry.as_deref().filter(|r| *r != "crates-io");
    say(&format!(
        "{current} -> {new} ({}), to registry {registry_name}{}",
        if options.bump.contains('.') {
            "explicit"
        } else {
            &options.bump
        },
        if options.execute {
            ""
        } else {
            "; dry run: nothing is changed (--execute to release)"
        }
    ));

    step(1, "clean tree");
    let status = git_output(root, &["status", "--porcelain", "--untracked-files=normal"])
        .map_err(|e| fail("clean tree", e))?;
    if !status.is_empty() {
        let shown: Vec<&str> = status.lines().take(10).collect();
        return Err(fail(
            "clean tree",
            format!(
                "the tree has changes (commit or stash them first):\n  {}{}",
                shown.join("\n  "),
                if status.lines().count() > 10 {
                    "\n  ..."
                } else {
                    ""
                }
            ),
        ));
    }
    let head = git_output(root, &["rev-parse", "HEAD"]).map_err(|e| fail("clean tree", e))?;
    say(&format!("  clean at {}", &head[..12.min(head.len())]));

    step(
        2,
        "crates to publish, in dependency order (cargo metadata; `publish = false` excluded)",
    );
    let metadata = cargo_metadata(root).map_err(|e| fail("plan", e))?;
    let members = members_from_metadata(&metadata, root).map_err(|e| fail("plan", e))?;
    let crates = publish_plan(&members, &current.to_string()).map_err(|e| fail("plan", e))?;
    for (i, c) in crates.iter().enumerate() {
        let after = if c.internal.is_empty() {
            String::new()
        } else {
            format!(" (after {})", c.internal.join(", "))
        };
        say(&format!("  {}. {} {new}  {}/{after}", i + 1, c.name, c.dir));
    }
    let skipped: Vec<&str> = members
        .iter()
        .filter(|m| !m.published)
        .map(|m| m.name.as_str())
        .collect();
    say(&format!("  not published: {}", skipped.join(", ")));
    let names: Vec<String> = crates.iter().map(|c| c.name.clone()).collect();

    // Everything that can fail on the files' content is checked before any
    // step runs, so a dry run catches it too.
    let date = today();
    let repository = workspace_repository(&manifest);
    let previous_tag = git_output(
        root,
        &[
            "tag",
            "--list",
            "v[0-9]*",
            "--merged",
            "HEAD",
            "--sort=-v:refname",
        ],
    )
    .ok()
    .and_then(|tags| tags.lines().next().map(str::to_owned));
    let (bumped, changes) =
        bump_manifest(&manifest, &names, &new.to_string(), None).map_err(|e| fail("version", e))?;
    let changelog = read(&changelog_path).map_err(|e| fail("changelog", e))?;
    let (released_changelog, section) = release_changelog(
        &changelog,
        &new.to_string(),
        &date,
        repository.as_deref(),
        previous_tag.as_deref(),
    )
    .map_err(|e| fail("changelog", e))?;

    let mut undo = Undo {
        root: root.to_path_buf(),
        files: Vec::new(),
        before_commit: None,
        tag: None,
    };
    let result = (|| {
        step(3, "lints (cargo xtask lint's steps)");
        if !options.lints {
            say("  skipped (--no-lints)");
        } else if options.execute {
            crate::cargo::lint().map_err(|e| fail("lints", e))?;
        } else {
            say("  would run cargo fmt --check, cargo clippy -D warnings, cargo doc -D warnings");
        }

        step(4, "tests (cargo xtask test)");
        if !options.tests {
            say("  skipped (--no-tests)");
        } else if options.execute {
            crate::cargo::test().map_err(|e| fail("tests", e))?;
            crate::roundtrip::run_roundtrip().map_err(|e| fail("tests", e))?;
        } else {
            say("  would run cargo xtask test (every test, then the registry round trip)");
        }

        step(5, "version");
        for change in &changes {
            say(&format!(
                "  {}{change}",
                if options.execute { "" } else { "would set " }
            ));
        }
        if options.execute {
            undo.keep(&manifest_path).map_err(|e| fail("version", e))?;
            undo.keep(&lock_path).map_err(|e| fail("version", e))?;
            std::fs::write(&manifest_path, &bumped)
                .map_err(|e| fail("version", format!("cannot write Cargo.toml: {e}")))?;
            let mut update = cargo();
            update.current_dir(root).args(["update", "--workspace"]);
            run(update).map_err(|e| fail("version", e))?;
        } else {
            say("  would update Cargo.lock (cargo update --workspace)");
        }

        step(6, "changelog");
        say(&format!(
            "  {} \"Unreleased\" ({} lines) under \"## [{new}] - {date}\" in CHANGELOG.md",
            if options.execute {
                "moved"
            } else {
                "would move"
            },
            section.lines().count()
        ));
        if options.execute {
            undo.keep(&changelog_path)
                .map_err(|e| fail("changelog", e))?;
            std::fs::write(&changelog_path, &released_changelog)
                .map_err(|e| fail("changelog", format!("cannot write CHANGELOG.md: {e}")))?;
        }

        step(7, "semver checks");
        semver_checks(root, &crates, previous_tag.as_deref(), options.execute)?;

        step(8, "commit");
        let message = format!("release v{new}");
        let files = ["Cargo.toml", "Cargo.lock", "CHANGELOG.md"];
        if options.execute {
            let mut args = vec!["commit", "-q", "-m", &message, "--"];
            args.extend(files);
            run_git(root, &args).map_err(|e| fail("commit", e))?;
            undo.before_commit = Some(head.clone());
            let commit = git_output(root, &["rev-parse", "HEAD"]).map_err(|e| fail("commit", e))?;
            say(&format!("  committed {:?} as {}", message, &commit[..12]));
        } else {
            say(&format!(
                "  would commit {message:?} ({})",
                files.join(", ")
            ));
        }

        // Packaging and publishing to another registry: the internal pins
        // name it, or cargo would look for them on crates.io.
        let publish_manifest = match alternative {
            Some(registry) => {
                let (text, _) = bump_manifest(&bumped, &names, &new.to_string(), Some(registry))
                    .map_err(|e| fail("package", e))?;
                say(&format!(
                    "  {} the internal pins name registry {registry} while packaging and publishing (restored after)",
                    if options.execute { "now" } else { "then" }
                ));
                Some(text)
            }
            None => None,
        };
        let with_registry = |command: &mut Command| {
            if let Some(registry) = &options.registry {
                command.args(["--registry", registry]);
            }
            if publish_manifest.is_some() {
                command.arg("--allow-dirty");
            }
        };
        if let Some(text) = &publish_manifest
            && options.execute
        {
            std::fs::write(&manifest_path, text)
                .map_err(|e| fail("package", format!("cannot write Cargo.toml: {e}")))?;
        }
        let restore_pins = || -> Result<(), Failure> {
            if publish_manifest.is_some() && options.execute {
                std::fs::write(&manifest_path, &bumped)
                    .map_err(|e| fail("publish", format!("cannot restore Cargo.toml: {e}")))?;
            }
            Ok(())
        };

        step(9, "package");
        let mut package = cargo();
        package.current_dir(root).arg("package");
        for name in &names {
            package.args(["-p", name]);
        }
        with_registry(&mut package);
        if options.verify {
            say("  each crate is built from its tarball (its unpublished dependencies overlaid)");
        } else {
            package.arg("--no-verify");
            say("  not verified (--no-verify)");
        }
        if options.execute {
            if let Err((krate, message)) = run_naming_crate(package, &crates) {
                restore_pins()?;
                return Err(Failure {
                    step: "package",
                    krate,
                    message,
                });
            }
        } else {
            say(&format!("  would run {}", shown(&package)));
        }

        step(10, "publish");
        let mut published = Vec::new();
        for c in &crates {
            let mut publish = cargo();
            publish
                .current_dir(root)
                .args(["publish", "-p", &c.name, "--no-verify"]);
            with_registry(&mut publish);
            if options.execute {
                if let Err(message) = run(publish) {
                    restore_pins()?;
                    let already = if published.is_empty() {
                        "nothing was published".to_owned()
                    } else {
                        format!(
                            "already published, and staying so: {} (a version cannot be published twice: fix the cause and release the next version, or yank these)",
                            published.join(", ")
                        )
                    };
                    return Err(Failure {
                        step: "publish",
                        krate: Some(c.name.clone()),
                        message: format!("{message}; {already}"),
                    });
                }
                published.push(c.name.clone());
            } else {
                say(&format!("  would run {}", shown(&publish)));
            }
        }
        restore_pins()?;

        step(11, "tag");
        let tag_message = format!("laminar-state {tag}\n\n{section}\n");
        if options.execute {
            run_git(
                root,
                &["tag", "-a", "--cleanup=verbatim", &tag, "-m", &tag_message],
            )
            .map_err(|e| fail("tag", e))?;
            undo.tag = Some(tag.clone());
            say(&format!(
                "  tagged {tag}; push with: git push origin HEAD {tag}"
            ));
        } else {
            say(&format!(
                "  would create the annotated tag {tag} (not pushed)"
            ));
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            say(&format!(
                "{} {tag}: {}",
                if options.execute {
                    "released"
                } else {
                    "dry run done for"
                },
                names.join(", ")
            ));
            Ok(())
        }
        Err(failure) => {
            undo.undo();
            Err(failure)
        }
    }
}

fn semver_checks(
    root: &Path,
    crates: &[Crate],
    previous_tag: Option<&str>,
    execute: bool,
) -> Result<(), Failure> {
    let Some(tag) = previous_tag else {
        say("  skipped: no release tag (v*) yet, so nothing to compare with");
        return Ok(());
    };
    let installed = cargo()
        .args(["semver-checks", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        say(&format!(
            "  skipped: cargo-semver-checks is not installed (cargo install --locked cargo-semver-checks), so nothing is compared with {tag}"
        ));
        return Ok(());
    }
    for c in crates {
        let existed = git_succeeds(
            root,
            &["cat-file", "-e", &format!("{tag}:{}/Cargo.toml", c.dir)],
        );
        if !existed {
            say(&format!("  {}: skipped, new since {tag}", c.name));
            continue;
        }
        let mut check = cargo();
        check.current_dir(root).args([
            "semver-checks",
            "check-release",
            "-p",
            &c.name,
            "--baseline-rev",
            tag,
        ]);
        if execute {
            run(check).map_err(|message| Failure {
                step: "semver checks",
                krate: Some(c.name.clone()),
                message,
            })?;
        } else {
            say(&format!("  would run {}", shown(&check)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &str) -> Vec<String> {
        words.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&args("patch")).unwrap();
        assert!(!o.execute && o.tests && o.lints && o.verify && o.registry.is_none());
        let o = parse_args(&args("1.2.3 --registry local --execute --no-tests")).unwrap();
        assert_eq!(o.bump, "1.2.3");
        assert_eq!(o.registry.as_deref(), Some("local"));
        assert!(o.execute && !o.tests);
        assert!(parse_args(&args("")).is_err());
        assert!(parse_args(&args("patch minor")).is_err());
        assert!(parse_args(&args("patch --registry")).is_err());
        assert!(parse_args(&args("patch --force")).is_err());
    }

    #[test]
    fn versions() {
        let v = Version::parse("0.1.9").unwrap();
        assert_eq!(v.bumped("patch").unwrap().to_string(), "0.1.10");
        assert_eq!(v.bumped("minor").unwrap().to_string(), "0.2.0");
        assert_eq!(v.bumped("major").unwrap().to_string(), "1.0.0");
        assert_eq!(v.bumped("0.3.0-rc.1").unwrap().to_string(), "0.3.0-rc.1");
        assert!(v.bumped("0.3").is_err());
        assert!(v.bumped("next").is_err());
        let rc = Version::parse("0.3.0-rc.1").unwrap();
        assert_eq!(rc.bumped("patch").unwrap().to_string(), "0.3.0");
        assert_eq!(rc.bumped("minor").unwrap().to_string(), "0.3.0");
        assert!(Version::parse("0.3.0").unwrap().newer_than(&rc));
        assert!(Version::parse("0.1.10").unwrap().newer_than(&v));
        assert!(!v.newer_than(&v));
        for bad in ["1.2", "1.2.3.4", "01.2.3", "1.2.x", "1.2.3-", ""] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    fn krate(name: &str, internal: &[&str]) -> Crate {
        Crate {
            name: name.into(),
            dir: name.into(),
            internal: internal.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn dependencies_come_first() {
        let crates = vec![
            krate("facade", &["api", "memory", "redb"]),
            krate("conformance", &["api"]),
            krate("redb", &["api"]),
            krate("memory", &["api"]),
            krate("api", &[]),
        ];
        let order: Vec<String> = dependency_order(crates)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(order, ["api", "conformance", "memory", "redb", "facade"]);
        let cycle = vec![krate("a", &["b"]), krate("b", &["a"]), krate("c", &[])];
        let err = dependency_order(cycle).unwrap_err();
        assert!(err.contains("a, b"), "{err}");
    }

    fn member(name: &str, published: bool, internal: &[(&str, &str, &str)]) -> Member {
        Member {
            name: name.into(),
            version: "0.1.0".into(),
            dir: name.into(),
            published,
            internal: internal
                .iter()
                .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
                .collect(),
        }
    }

    #[test]
    fn the_plan_skips_unpublished_crates_and_dev_dependencies() {
        let members = vec![
            member("api", true, &[("bench", "dev", "*")]),
            member(
                "memory",
                true,
                &[("api", "normal", "^0.1.0"), ("conformance", "dev", "*")],
            ),
            member("conformance", true, &[("api", "normal", "^0.1.0")]),
            member("bench", false, &[]),
            member("xtask", false, &[]),
        ];
        let plan = publish_plan(&members, "0.1.0").unwrap();
        let names: Vec<&str> = plan.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["api", "conformance", "memory"]);
    }

    #[test]
    fn the_plan_refuses_what_cannot_be_published() {
        let members = vec![
            member("api", true, &[("bench", "normal", "*")]),
            member("memory", true, &[("api", "normal", "^0.0.9")]),
            member("bench", false, &[]),
        ];
        let err = publish_plan(&members, "0.1.0").unwrap_err();
        assert!(
            err.contains("api depends on bench, which has `publish = false`"),
            "{err}"
        );
        assert!(err.contains("memory depends on api as \"^0.0.9\""), "{err}");
        let mut stray = member("api", true, &[]);
        stray.version = "0.2.0".into();
        assert!(
            publish_plan(&[stray], "0.1.0")
                .unwrap_err()
                .contains("version.workspace")
        );
    }

    const MANIFEST: &str = r#"[workspace]
members = ["api", "facade"]

[workspace.package]
version = "0.1.0" # the one version
edition = "2024"

[workspace.dependencies]
# Internal crates, pinned to one version.
laminar-state-api = { path = "api", version = "0.1.0" }
facade = { package = "laminar-state", path = "facade", version = "0.1.0", default-features = false }
laminar-state-bench = { path = "bench" }
tokio = { version = "0.1.0", default-features = false }
"#;

    #[test]
    fn the_bump_changes_the_version_and_the_pins_only() {
        let published = vec!["laminar-state-api".to_owned(), "laminar-state".to_owned()];
        let (text, changes) = bump_manifest(MANIFEST, &published, "0.2.0", None).unwrap();
        assert_eq!(
            text,
            MANIFEST
                .replace(
                    "version = \"0.1.0\" # the one",
                    "version = \"0.2.0\" # the one"
                )
                .replace(
                    "\"api\", version = \"0.1.0\"",
                    "\"api\", version = \"0.2.0\""
                )
                .replace(
                    "\"facade\", version = \"0.1.0\"",
                    "\"facade\", version = \"0.2.0\""
                )
        );
        assert_eq!(changes.len(), 3, "{changes:?}");
        let (text, _) = bump_manifest(MANIFEST, &published, "0.2.0", Some("local")).unwrap();
        assert!(
            text.contains(
                "laminar-state-api = { path = \"api\", version = \"0.2.0\", registry = \"local\" }"
            ),
            "{text}"
        );
        assert!(text.contains("tokio = { version = \"0.1.0\", default-features = false }\n"));
        assert!(text.contains("laminar-state-bench = { path = \"bench\" }\n"));
        let err = bump_manifest(
            "[workspace.package]\nversion = \"0.1.0\"\n[workspace.dependencies]\nx = { path = \"x\" }\n",
            &["x".to_owned()],
            "0.2.0",
            None,
        )
        .unwrap_err();
        assert!(err.contains("no version"), "{err}");
    }

    const CHANGELOG: &str = "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n### Added\n\n- A thing.\n\n## [0.1.0] - 2026-01-02\n\n- First.\n\n[Unreleased]: https://h/r/compare/v0.1.0...HEAD\n[0.1.0]: https://h/r/releases/tag/v0.1.0\n";

    #[test]
    fn the_changelog_moves_unreleased_under_the_version() {
        let (text, section) = release_changelog(
            CHANGELOG,
            "0.1.1",
            "2026-02-03",
            Some("https://h/r"),
            Some("v0.1.0"),
        )
        .unwrap();
        assert_eq!(section, "### Added\n\n- A thing.");
        assert_eq!(
            text,
            "# Changelog\n\nIntro.\n\n## [Unreleased]\n\n## [0.1.1] - 2026-02-03\n\n### Added\n\n- A thing.\n\n## [0.1.0] - 2026-01-02\n\n- First.\n\n[Unreleased]: https://h/r/compare/v0.1.1...HEAD\n[0.1.1]: https://h/r/compare/v0.1.0...v0.1.1\n[0.1.0]: https://h/r/releases/tag/v0.1.0\n"
        );
        // The first release, the section running into the links.
        let first = "## [Unreleased]\n- Everything.\n[Unreleased]: https://h/r/commits/HEAD\n";
        let (text, _) =
            release_changelog(first, "0.1.0", "2026-01-02", Some("https://h/r"), None).unwrap();
        assert_eq!(
            text,
            "## [Unreleased]\n\n## [0.1.0] - 2026-01-02\n\n- Everything.\n\n[Unreleased]: https://h/r/compare/v0.1.0...HEAD\n[0.1.0]: https://h/r/releases/tag/v0.1.0\n"
        );
        let empty = "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2026-01-02\n- First.\n";
        assert!(
            release_changelog(empty, "0.1.1", "d", None, None)
                .unwrap_err()
                .contains("empty")
        );
        assert!(release_changelog("# Changelog\n", "0.1.1", "d", None, None).is_err());
    }

    #[test]
    fn the_repository_changelog_can_be_released() {
        let text = read(&root().join("CHANGELOG.md")).unwrap();
        let (released, section) =
            release_changelog(&text, "9.9.9", "2026-01-01", Some("https://x/y"), None).unwrap();
        assert!(!section.trim().is_empty());
        assert!(released.contains("## [9.9.9] - 2026-01-01"));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(today().len(), 10);
    }
}
