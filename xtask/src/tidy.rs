//! The tidy test: what a reviewer would otherwise check by hand, checked on
//! the whole repository by `cargo test -p xtask` (and so by `cargo xtask
//! test`, which runs every test of the workspace).
//!
//! - Internal dev-dependencies are path-only: no `version` and no
//!   `workspace = true` (the workspace entry carries a version). `cargo
//!   publish` strips a path-only dev-dependency, so no versioned cycle
//!   (a backend's tests using the facade that depends on that backend) stops
//!   the publication.
//! - No relative link leaves the repository or names a missing file: in
//!   markdown files (inline links and reference definitions, outside code),
//!   in `include_str!`/`include_bytes!`, and in doc comments.
//! - Every published crate (no `publish = false`) has a `README.md` and says
//!   `readme = "README.md"`, and has what a registry and docs.rs need: a
//!   description, the workspace's license and repository, keywords and
//!   categories, the license text itself (`LICENSE`, the same as the root's),
//!   and `[package.metadata.docs.rs]` with all features and `--cfg docsrs`.
//! - The workspace's `rust-version` is the toolchain's, and every member
//!   inherits it.
//! - `cargo xtask ci` runs the same steps as `.ci/run`.

use std::path::{Component, Path, PathBuf};

use toml_edit::{DocumentMut, Item};

use crate::cargo::root;

#[test]
fn tidy() {
    let root = root();
    let mut problems = Vec::new();
    let members = members(&root);
    let internal: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let root_license = std::fs::read(root.join("LICENSE")).ok();
    if root_license.is_none() {
        problems.push("LICENSE: missing at the root".to_owned());
    }
    for member in &members {
        let manifest = member.dir.join("Cargo.toml");
        let shown = relative(&root, &manifest);
        problems.extend(
            dev_dependency_problems(&member.text, &internal)
                .into_iter()
                .map(|p| format!("{shown}: {p}")),
        );
        problems.extend(
            readme_problems(&member.text, member.dir.join("README.md").is_file())
                .into_iter()
                .map(|p| format!("{shown}: {p}")),
        );
        let license = std::fs::read(member.dir.join("LICENSE")).ok();
        let same_license = license.is_some() && license == root_license;
        problems.extend(
            registry_problems(&member.text, same_license)
                .into_iter()
                .map(|p| format!("{shown}: {p}")),
        );
    }
    for file in files(&root) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let dir = file.parent().expect("a file has a folder");
        let links = match file.extension().and_then(|e| e.to_str()) {
            Some("md") => markdown_links(&text)
                .into_iter()
                .map(|link| (dir.to_path_buf(), link))
                .collect(),
            Some("rs") => {
                let package = package_dir(&root, dir);
                let mut links: Vec<(PathBuf, String)> = included_files(&text)
                    .into_iter()
                    .map(|link| (dir.to_path_buf(), link))
                    .collect();
                links.extend(
                    doc_comment_links(&text)
                        .into_iter()
                        .map(|link| (package.clone(), link)),
                );
                links
            }
            _ => Vec::new(),
        };
        // A crate is published without the rest of the repository, so its
        // files' relative links must stay inside the crate.
        let within = package_dir(&root, dir);
        for (base, link) in links {
            if let Err(problem) = check_link(&within, &base, &link) {
                problems.push(format!("{}: {problem}", relative(&root, &file)));
            }
        }
    }
    problems.extend(ci_problems(
        &std::fs::read_to_string(root.join(".ci").join("run")).unwrap_or_default(),
    ));
    assert!(
        problems.is_empty(),
        "tidy found {} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// One workspace member: its package name, folder and manifest text.
struct Member {
    name: String,
    dir: PathBuf,
    text: String,
}

fn members(root: &Path) -> Vec<Member> {
    let workspace = read_manifest(&root.join("Cargo.toml"));
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("the root manifest lists workspace members");
    members
        .iter()
        .map(|member| {
            let dir = root.join(member.as_str().expect("members are strings"));
            let text = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap_or_else(|e| panic!("cannot read {}/Cargo.toml: {e}", dir.display()));
            let manifest: DocumentMut = text.parse().expect("manifests parse");
            let name = manifest["package"]["name"]
                .as_str()
                .expect("every member names its package")
                .to_owned();
            Member { name, dir, text }
        })
        .collect()
}

fn read_manifest(path: &Path) -> DocumentMut {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// Problems with the internal dev-dependencies of one manifest: each must
/// be `{ path = "..." }` without `version` and without `workspace = true`.
fn dev_dependency_problems(manifest: &str, internal: &[String]) -> Vec<String> {
    let manifest: DocumentMut = match manifest.parse() {
        Ok(manifest) => manifest,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    let mut tables = vec![(
        "dev-dependencies".to_owned(),
        manifest.get("dev-dependencies"),
    )];
    if let Some(targets) = manifest.get("target").and_then(Item::as_table_like) {
        for (cfg, target) in targets.iter() {
            tables.push((
                format!("target.{cfg}.dev-dependencies"),
                target.get("dev-dependencies"),
            ));
        }
    }
    let mut problems = Vec::new();
    for (section, table) in tables {
        let Some(table) = table.and_then(Item::as_table_like) else {
            continue;
        };
        for (key, spec) in table.iter() {
            let spec = spec.as_table_like();
            let package = spec
                .and_then(|s| s.get("package"))
                .and_then(Item::as_str)
                .unwrap_or(key);
            if !internal.iter().any(|name| name == package) {
                continue;
            }
            let Some(spec) = spec else {
                problems.push(format!(
                    "[{section}] {key} is internal: write {{ path = \"../...\" }} without a version"
                ));
                continue;
            };
            if spec.get("workspace").is_some() {
                problems.push(format!(
                    "[{section}] {key} is internal and inherits the workspace entry, which carries a version: write {{ path = \"../...\" }} instead"
                ));
            } else if spec.get("version").is_some() {
                problems.push(format!(
                    "[{section}] {key} is internal and has a version: drop it, so cargo publish strips the dev-dependency"
                ));
            } else if spec.get("path").is_none() {
                problems.push(format!("[{section}] {key} is internal and has no path"));
            }
        }
    }
    problems
}

/// Problems with a published crate's README: it must exist and be named
/// by `readme = "README.md"`. Crates with `publish = false` need none.
fn readme_problems(manifest: &str, has_readme: bool) -> Vec<String> {
    let manifest: DocumentMut = match manifest.parse() {
        Ok(manifest) => manifest,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    let field = |name: &str| manifest.get("package").and_then(|p| p.get(name));
    if field("publish").and_then(Item::as_bool) == Some(false) {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if !has_readme {
        problems.push("the crate is published (no `publish = false`) but has no README.md".into());
    }
    if field("readme").and_then(Item::as_str) != Some("README.md") {
        problems.push("the crate is published: set `readme = \"README.md\"`".into());
    }
    problems
}

/// Problems with a published crate's registry metadata: what crates.io
/// shows and searches (description, license, repository, keywords,
/// categories), the license text in the package (`same_license`: its
/// `LICENSE` is the root's, e.g. a symlink to it, which `cargo package`
/// copies in), and the docs.rs build (all features, `--cfg docsrs` for the
/// feature badges). Crates with `publish = false` need none.
fn registry_problems(manifest: &str, same_license: bool) -> Vec<String> {
    let manifest: DocumentMut = match manifest.parse() {
        Ok(manifest) => manifest,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    let package = manifest.get("package");
    let field = |name: &str| package.and_then(|p| p.get(name));
    if field("publish").and_then(Item::as_bool) == Some(false) {
        return Vec::new();
    }
    let inherits = |name: &str| {
        field(name)
            .and_then(|f| f.get("workspace"))
            .and_then(Item::as_bool)
            == Some(true)
    };
    let mut problems = Vec::new();
    if field("description")
        .and_then(Item::as_str)
        .is_none_or(|d| d.trim().is_empty())
    {
        problems.push("the crate is published: give it a `description`".to_owned());
    }
    for name in ["license", "repository", "rust-version", "version"] {
        if !inherits(name) {
            problems.push(format!(
                "the crate is published: write `{name}.workspace = true`"
            ));
        }
    }
    let strings = |name: &str| -> Vec<String> {
        field(name)
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let keywords = strings("keywords");
    if keywords.is_empty() || keywords.len() > 5 {
        problems.push(format!(
            "the crate is published: give it 1 to 5 `keywords` (has {})",
            keywords.len()
        ));
    }
    for keyword in &keywords {
        let valid = keyword.len() <= 20
            && keyword.starts_with(|c: char| c.is_ascii_alphabetic())
            && keyword
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+".contains(c));
        if !valid {
            problems.push(format!(
                "keyword {keyword:?} is not one crates.io takes (ASCII letters, digits, - _ +, a letter first, at most 20)"
            ));
        }
    }
    if strings("categories").is_empty() {
        problems
            .push("the crate is published: give it `categories` (crates.io's slugs)".to_owned());
    }
    if !same_license {
        problems.push(
            "the crate is published: its LICENSE must be the root's (ln -s ../LICENSE LICENSE), so the package carries the license text".to_owned(),
        );
    }
    let docs_rs = package
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("docs"))
        .and_then(|d| d.get("rs"));
    let all_features = docs_rs
        .and_then(|d| d.get("all-features"))
        .and_then(Item::as_bool)
        == Some(true);
    let rustdoc_args: Vec<&str> = docs_rs
        .and_then(|d| d.get("rustdoc-args"))
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if !all_features || !rustdoc_args.windows(2).any(|w| w == ["--cfg", "docsrs"]) {
        problems.push(
            "the crate is published: add [package.metadata.docs.rs] with `all-features = true` and `rustdoc-args = [\"--cfg\", \"docsrs\"]`".to_owned(),
        );
    }
    problems
}

/// The workspace's `rust-version` must be the toolchain's `MAJOR.MINOR`
/// (`rustc --version`): the MSRV the README states is the one CI builds
/// with.
fn rust_version_problems(manifest: &str, rustc_version: &str) -> Vec<String> {
    let manifest: DocumentMut = match manifest.parse() {
        Ok(manifest) => manifest,
        Err(e) => return vec![format!("Cargo.toml does not parse: {e}")],
    };
    let stated = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("rust-version"))
        .and_then(Item::as_str);
    // "rustc 1.95.0 (59807616e 2026-03-20)" -> "1.95"
    let toolchain: Option<String> = rustc_version
        .split_whitespace()
        .nth(1)
        .map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."));
    match (stated, toolchain) {
        (None, _) => vec!["Cargo.toml: set [workspace.package] rust-version".to_owned()],
        (_, None) => vec![format!(
            "cannot read the toolchain's version from {rustc_version:?}"
        )],
        (Some(stated), Some(toolchain)) if stated != toolchain => vec![format!(
            "Cargo.toml: [workspace.package] rust-version is {stated}, but CI's toolchain is {toolchain}: keep them equal (and the README's MSRV)"
        )],
        _ => Vec::new(),
    }
}

#[test]
fn rust_version_is_the_toolchains() {
    let root = root();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = std::process::Command::new(&rustc)
        .arg("--version")
        .output()
        .expect("rustc runs");
    let version = String::from_utf8_lossy(&output.stdout);
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the root manifest");
    let problems = rust_version_problems(&manifest, &version);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The link targets of a markdown text: inline links `[text](target)`
/// and reference definitions `[name]: target`, outside fenced code blocks
/// and inline code.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            continue;
        }
        let line = strip_inline_code(line);
        links.extend(inline_links(&line));
        if let Some(rest) = line.trim_start().strip_prefix('[')
            && let Some((_, target)) = rest.split_once("]:")
            && let Some(target) = target.split_whitespace().next()
        {
            links.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        }
    }
    links
}

/// `line` with every inline code span (between backticks) blanked out.
fn strip_inline_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(c);
        } else {
            out.push(if in_code { ' ' } else { c });
        }
    }
    out
}

/// The targets of `[text](target)` and `[text](target "title")` in a line.
fn inline_links(line: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        if let Some(target) = after[..end].split_whitespace().next() {
            links.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        }
        rest = &after[end..];
    }
    links
}

/// The files named by `include_str!` and `include_bytes!` in Rust source
/// (string literals only; they resolve against the source file's folder).
fn included_files(source: &str) -> Vec<String> {
    let mut files = Vec::new();
    // Spelled in two halves so this file does not match itself.
    for pattern in [concat!("include_str", "!("), concat!("include_bytes", "!(")] {
        let mut rest = source;
        while let Some(at) = rest.find(pattern) {
            rest = &rest[at + pattern.len()..];
            let literal = rest.trim_start();
            if let Some(literal) = literal.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                files.push(literal[..end].to_owned());
            }
        }
    }
    files
}

/// Links to files in doc comments (`///`, `//!`): markdown links whose
/// target looks like a path rather than an intra-doc link to an item.
fn doc_comment_links(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            line.strip_prefix("//!")
                .or_else(|| line.strip_prefix("///"))
        })
        .flat_map(markdown_links)
        .filter(|target| {
            !target.contains("::")
                && (target.contains('/')
                    || [".md", ".rs", ".toml", ".json", ".txt"]
                        .iter()
                        .any(|ext| target.split('#').next().unwrap_or("").ends_with(ext)))
        })
        .collect()
}

/// A relative link must resolve, from `base`, to a file or folder that
/// exists inside `root`. URLs and in-page anchors are not checked.
fn check_link(root: &Path, base: &Path, link: &str) -> Result<(), String> {
    let is_url = link.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if is_url || link.starts_with('#') || link.is_empty() {
        return Ok(());
    }
    let path = link.split(['#', '?']).next().unwrap_or(link);
    if path.is_empty() {
        return Ok(());
    }
    if path.starts_with('/') {
        return Err(format!(
            "link {link:?} is absolute: make it relative to the file"
        ));
    }
    let Some(resolved) = normalize(&base.join(path)) else {
        return Err(format!("link {link:?} leaves the repository"));
    };
    let Some(root) = normalize(root) else {
        return Err(format!("cannot resolve the repository root for {link:?}"));
    };
    if !resolved.starts_with(&root) {
        return Err(format!(
            "link {link:?} leaves the repository (or its crate, which is published alone): users get only what is in it"
        ));
    }
    if !resolved.exists() {
        return Err(format!("link {link:?} names a file that does not exist"));
    }
    Ok(())
}

/// `path` with `.` and `..` resolved lexically; `None` if it climbs above
/// the filesystem root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// The `.md` and `.rs` files of the repository, outside `target/` and
/// hidden folders.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    pending.push(path);
                }
            } else if name.ends_with(".md") || name.ends_with(".rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The folder of the package a source folder belongs to (the nearest
/// folder above it with a `Cargo.toml`).
fn package_dir(root: &Path, dir: &Path) -> PathBuf {
    dir.ancestors()
        .take_while(|d| d.starts_with(root))
        .find(|d| d.join("Cargo.toml").is_file())
        .unwrap_or(root)
        .to_path_buf()
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `.ci/run` and `cargo xtask ci` must run the same `cargo xtask` steps.
fn ci_problems(script: &str) -> Vec<String> {
    let steps: Vec<&str> = script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("cargo xtask "))
        .map(str::trim)
        .collect();
    if steps == crate::CI_STEPS {
        Vec::new()
    } else {
        vec![format!(
            ".ci/run runs cargo xtask {steps:?}, but `cargo xtask ci` runs {:?}: keep them (and the help) in step",
            crate::CI_STEPS
        )]
    }
}

#[cfg(test)]
mod checks {
    use super::*;

    fn internal() -> Vec<String> {
        vec!["laminar-state".to_owned(), "laminar-state-api".to_owned()]
    }

    #[test]
    fn a_versioned_internal_dev_dependency_fails() {
        let bad = r#"
[package]
name = "x"
[dependencies]
laminar-state-api = { path = "../api", version = "0.1.0" }
[dev-dependencies]
laminar-state = { path = "../laminar-state", version = "0.1.0", features = ["s3"] }
"#;
        let problems = dev_dependency_problems(bad, &internal());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("laminar-state is internal and has a version"));
    }

    #[test]
    fn a_workspace_inherited_internal_dev_dependency_fails() {
        for bad in [
            "[dev-dependencies]\nlaminar-state.workspace = true\n",
            "[dev-dependencies]\nlaminar-state = { workspace = true, features = [\"s3\"] }\n",
            "[target.'cfg(unix)'.dev-dependencies]\nlaminar-state-api.workspace = true\n",
            "[dev-dependencies]\nfacade = { package = \"laminar-state\", workspace = true }\n",
            "[dev-dependencies]\nlaminar-state = \"0.1\"\n",
        ] {
            assert_eq!(
                dev_dependency_problems(bad, &internal()).len(),
                1,
                "not caught: {bad}"
            );
        }
    }

    #[test]
    fn path_only_internal_and_external_dev_dependencies_pass() {
        let good = r#"
[dev-dependencies]
laminar-state = { path = "../laminar-state", features = ["s3"] }
tokio.workspace = true
serde_json = "1"
"#;
        assert!(dev_dependency_problems(good, &internal()).is_empty());
    }

    #[test]
    fn published_crates_need_a_readme() {
        let published = "[package]\nname = \"x\"\n";
        assert_eq!(readme_problems(published, false).len(), 2);
        assert_eq!(readme_problems(published, true).len(), 1);
        let named = "[package]\nname = \"x\"\nreadme = \"README.md\"\n";
        assert!(readme_problems(named, true).is_empty());
        let private = "[package]\nname = \"x\"\npublish = false\n";
        assert!(readme_problems(private, false).is_empty());
    }

    const PUBLISHED: &str = r#"
[package]
name = "x"
description = "X."
version.workspace = true
rust-version.workspace = true
license.workspace = true
repository.workspace = true
keywords = ["streaming", "state"]
categories = ["database"]

[package.metadata.docs.rs]
all-features = true
rustdoc-args = ["--cfg", "docsrs"]
"#;

    #[test]
    fn published_crates_need_registry_metadata() {
        assert!(registry_problems(PUBLISHED, true).is_empty());
        assert_eq!(registry_problems(PUBLISHED, false).len(), 1);
        for (from, to) in [
            ("description = \"X.\"\n", ""),
            ("repository.workspace = true\n", ""),
            ("license.workspace = true\n", "license = \"MIT\"\n"),
            ("keywords = [\"streaming\", \"state\"]", "keywords = []"),
            ("\"state\"]", "\"state\", \"a\", \"b\", \"c\", \"d\"]"),
            ("\"state\"]", "\"not a keyword\"]"),
            ("categories = [\"database\"]", ""),
            ("all-features = true\n", ""),
            (
                "rustdoc-args = [\"--cfg\", \"docsrs\"]",
                "rustdoc-args = [\"--cfg\", \"doc\"]",
            ),
        ] {
            let bad = PUBLISHED.replace(from, to);
            assert_eq!(
                registry_problems(&bad, true).len(),
                1,
                "not caught: {from:?} -> {to:?}"
            );
        }
        let private = "[package]\nname = \"x\"\npublish = false\n";
        assert!(registry_problems(private, false).is_empty());
    }

    #[test]
    fn rust_version_must_be_the_toolchains() {
        let manifest = "[workspace.package]\nrust-version = \"1.95\"\n";
        assert!(rust_version_problems(manifest, "rustc 1.95.0 (59807616e 2026-03-20)").is_empty());
        let err = rust_version_problems(manifest, "rustc 1.96.1 (0 2026-05-01)");
        assert!(
            err[0].contains("rust-version is 1.95, but CI's toolchain is 1.96"),
            "{err:?}"
        );
        assert_eq!(
            rust_version_problems("[workspace.package]\n", "rustc 1.95.0").len(),
            1
        );
    }

    #[test]
    fn finds_links_outside_code() {
        let text = "\
See [the contract](CONTRACT.md#p7) and [docs](https://docs.rs/x).\n\
`[not](a-link.md)` is code.\n\
```text\n\
[neither](fenced.md)\n\
```\n\
[ref]: ../outside.md \"title\"\n";
        assert_eq!(
            markdown_links(text),
            ["CONTRACT.md#p7", "https://docs.rs/x", "../outside.md"]
        );
    }

    #[test]
    fn a_link_that_leaves_the_repository_fails() {
        let root = crate::cargo::root();
        let err = check_link(&root, &root, "../elsewhere/NOTES.md").unwrap_err();
        assert!(err.contains("leaves the repository"), "{err}");
        let err = check_link(&root, &root.join("conformance"), "../../x.md").unwrap_err();
        assert!(err.contains("leaves the repository"), "{err}");
        assert!(check_link(&root, &root, "/etc/passwd").is_err());
    }

    #[test]
    fn a_link_to_a_missing_file_fails_and_good_links_pass() {
        let root = crate::cargo::root();
        let err = check_link(&root, &root, "conformance/NOPE.md").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let conformance = root.join("conformance");
        // A crate's file may not reach above the crate: it is published alone.
        assert!(check_link(&conformance, &conformance, "../README.md#pick-a-backend").is_err());
        assert!(check_link(&root, &root, "conformance/README.md").is_ok());
        assert!(check_link(&root, &root, "https://example.com/a.md").is_ok());
        assert!(check_link(&root, &root, "#anchor").is_ok());
    }

    #[test]
    fn finds_included_files_and_doc_links() {
        let source = "#![doc = include_str!(\"../README.md\")]\n//! See [the contract](../CONTRACT.md) and [`Foo`](crate::Foo).\n/// [`write`](Self::write_partial), [more](https://x.y/z)\nconst B: &[u8] = include_bytes!( \"data.bin\");\n";
        assert_eq!(included_files(source), ["../README.md", "data.bin"]);
        assert_eq!(
            doc_comment_links(source),
            ["../CONTRACT.md", "https://x.y/z"]
        );
    }

    #[test]
    fn ci_steps_must_match() {
        let script = "bash .ci/install\n\ncargo xtask lint\ncargo xtask test\ncargo xtask chaos --backend all --seconds 30 --seed 5\ncargo xtask soak --backend all --cycles 200\n";
        assert!(ci_problems(script).is_empty());
        assert_eq!(ci_problems("cargo xtask lint\ncargo xtask test\n").len(), 1);
        let twice = "cargo xtask lint\ncargo xtask conformance --backend all\ncargo xtask test\ncargo xtask chaos --backend all --seconds 30 --seed 5\ncargo xtask soak --backend all --cycles 200\n";
        assert_eq!(ci_problems(twice).len(), 1);
    }
}
