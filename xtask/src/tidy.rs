//! Tidy tests: the repository's documents stay true and stand alone.
//!
//! - `architecture_md_lists_every_crate_edge`: the two edge blocks of `ARCHITECTURE.md`
//!   (` ```deps ` and ` ```dev-deps `) name exactly the workspace-internal dependency edges
//!   `cargo metadata` reports, so adding or dropping an edge in a `Cargo.toml` fails here until
//!   the map is updated.
//! - `documents_point_nowhere_outside_the_repository`: no Markdown file and no `//!`/`///`
//!   comment links or points outside the repository (a `../` path, a relative link to a file
//!   that is not in the repository, a team document that is not shipped with it).
//!
//! - `publishable_crates_carry_registry_metadata`: exactly the library crates other services
//!   import are publishable (`cargo xtask ci` packages those), and each has a description, a
//!   license, a README, keywords and categories; no manifest carries a placeholder URL.
//!
//! They run with the workspace's tests (`cargo nextest run -p xtask`, `cargo xtask ci`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `from -> to` edges between workspace packages, by package name.
type Edges = BTreeSet<(String, String)>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// (a) ARCHITECTURE.md's edges against `cargo metadata`

/// The workspace's packages and its internal edges, as Cargo sees them.
struct Graph {
    packages: BTreeSet<String>,
    /// Normal and build dependencies.
    normal: Edges,
    /// Dev-dependencies that are not also normal ones. A dev-dependency on a crate that is
    /// already a normal dependency (to turn on its `mock` feature) and a crate's dev-dependency
    /// on itself add no edge.
    dev_only: Edges,
}

/// `cargo metadata --no-deps` of the workspace.
fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

fn cargo_graph() -> Graph {
    let meta = metadata();
    let packages: Vec<&serde_json::Value> = meta["packages"]
        .as_array()
        .expect("metadata has packages")
        .iter()
        .collect();
    // A crate is named as code names it: its library's name (`provisioner-audit` publishes
    // the library `audit`), `_` written `-`; a package without a library by its own name.
    let crate_name: BTreeMap<String, String> = packages
        .iter()
        .map(|p| {
            let package = p["name"].as_str().expect("package name").to_owned();
            let lib = p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .find(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "lib"))
                })
                .and_then(|t| t["name"].as_str())
                .map(|name| name.replace('_', "-"));
            (package.clone(), lib.unwrap_or(package))
        })
        .collect();
    let names: BTreeSet<String> = crate_name.values().cloned().collect();
    let mut normal = Edges::new();
    let mut dev = Edges::new();
    for p in &packages {
        let from = &crate_name[p["name"].as_str().expect("package name")];
        for d in p["dependencies"].as_array().expect("dependencies") {
            let Some(to) = crate_name.get(d["name"].as_str().expect("dependency name")) else {
                continue;
            };
            if to == from {
                continue;
            }
            let edge = (from.clone(), to.clone());
            match d["kind"].as_str() {
                Some("dev") => dev.insert(edge),
                // `null` (normal) or "build".
                _ => normal.insert(edge),
            };
        }
    }
    let dev_only = dev.difference(&normal).cloned().collect();
    Graph {
        packages: names,
        normal,
        dev_only,
    }
}

/// The lines of each fenced block of `markdown` whose info string is exactly `info`.
fn fenced_blocks<'a>(markdown: &'a str, info: &str) -> Vec<Vec<&'a str>> {
    enum State<'a> {
        Outside,
        Other,
        Wanted(Vec<&'a str>),
    }
    let mut blocks = Vec::new();
    let mut state = State::Outside;
    for line in markdown.lines() {
        let fence = line.trim_start().starts_with("```");
        state = match state {
            State::Outside if fence => {
                if line.trim().trim_start_matches('`').trim() == info {
                    State::Wanted(Vec::new())
                } else {
                    State::Other
                }
            }
            State::Other if fence => State::Outside,
            State::Wanted(lines) if fence => {
                blocks.push(lines);
                State::Outside
            }
            State::Wanted(mut lines) => {
                lines.push(line);
                State::Wanted(lines)
            }
            other => other,
        };
    }
    blocks
}

/// Parses `crate -> dep, dep` lines (`(none)` for no edges, `#` starts a comment). Returns the
/// crates that have a line, the edges, and the problems found (duplicates, malformed lines).
fn parse_edges(lines: &[&str]) -> (BTreeSet<String>, Edges, Vec<String>) {
    let mut crates = BTreeSet::new();
    let mut edges = Edges::new();
    let mut problems = Vec::new();
    for raw in lines {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let Some((from, to)) = line.split_once("->") else {
            problems.push(format!("not `crate -> dep, dep`: {raw:?}"));
            continue;
        };
        let from = from.trim().to_owned();
        if !crates.insert(from.clone()) {
            problems.push(format!("{from} has more than one line"));
        }
        let to = to.trim();
        if to == "(none)" {
            continue;
        }
        for dep in to.split(',').map(str::trim) {
            if dep.is_empty() || dep.contains(char::is_whitespace) {
                problems.push(format!("bad dependency name {dep:?} in {raw:?}"));
            } else if !edges.insert((from.clone(), dep.to_owned())) {
                problems.push(format!("{from} -> {dep} written twice"));
            }
        }
    }
    (crates, edges, problems)
}

/// What differs between the edges written down and Cargo's, one line each.
fn edge_diff(block: &str, documented: &Edges, actual: &Edges) -> Vec<String> {
    let mut out = Vec::new();
    for (from, to) in actual.difference(documented) {
        out.push(format!(
            "`{block}` block lacks {from} -> {to} (it is in {from}'s Cargo.toml)"
        ));
    }
    for (from, to) in documented.difference(actual) {
        out.push(format!(
            "`{block}` block has {from} -> {to}, which no Cargo.toml declares"
        ));
    }
    out
}

fn single_block<'a>(markdown: &'a str, info: &str, problems: &mut Vec<String>) -> Vec<&'a str> {
    let mut blocks = fenced_blocks(markdown, info);
    if blocks.len() != 1 {
        problems.push(format!(
            "ARCHITECTURE.md needs exactly one ```{info} block, found {}",
            blocks.len()
        ));
    }
    blocks.pop().unwrap_or_default()
}

#[test]
fn architecture_md_lists_every_crate_edge() {
    let graph = cargo_graph();
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut problems = Vec::new();

    let (listed, normal, p) = parse_edges(&single_block(&text, "deps", &mut problems));
    problems.extend(p.into_iter().map(|p| format!("`deps` block: {p}")));
    let (_, dev, p) = parse_edges(&single_block(&text, "dev-deps", &mut problems));
    problems.extend(p.into_iter().map(|p| format!("`dev-deps` block: {p}")));

    // Every package has its line in `deps`, so a new crate cannot go unmapped.
    for missing in graph.packages.difference(&listed) {
        problems.push(format!(
            "`deps` block has no line for the workspace package {missing} (write `{missing} -> (none)` if it has no edges)"
        ));
    }
    let named: BTreeSet<&String> = listed
        .iter()
        .chain(normal.iter().chain(&dev).flat_map(|(a, b)| [a, b]))
        .collect();
    for unknown in named {
        if !graph.packages.contains(unknown) {
            problems.push(format!("{unknown} is not a workspace package"));
        }
    }
    problems.extend(edge_diff("deps", &normal, &graph.normal));
    problems.extend(edge_diff("dev-deps", &dev, &graph.dev_only));
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's crate edges disagree with the Cargo.toml files:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn edge_blocks_parse_as_documented() {
    let md = "text\n```deps\na -> b, c # why\nb -> (none)\n```\n```text\nx -> y\n```\n";
    let blocks = fenced_blocks(md, "deps");
    assert_eq!(blocks, vec![vec!["a -> b, c # why", "b -> (none)"]]);
    let (crates, edges, problems) = parse_edges(&blocks[0]);
    assert_eq!(crates, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    let want: Edges = [("a", "b"), ("a", "c")]
        .iter()
        .map(|(x, y)| ((*x).to_owned(), (*y).to_owned()))
        .collect();
    assert_eq!(edges, want);
    assert!(problems.is_empty(), "{problems:?}");
    let (_, _, problems) = parse_edges(&["a -> b", "a -> c", "oops"]);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

// ---------------------------------------------------------------------------------------------
// (b) documents that stand alone

/// Text that names a document outside the repository: the team's design and style documents
/// and the interop notes are not shipped with it.
const OUTSIDE_NEEDLES: &[&str] = &[
    "shared/",
    "DESIGN.md",
    "STYLE.md",
    "DESIGN §",
    "STYLE §",
    "interop §",
    "interop/",
    "interop checklist",
];

/// Findings in files this branch may not edit (other people's work in flight), each
/// `(path, needle)`. An entry must still match something, so the list only shrinks: once the
/// file is fixed, the test asks for its entry to go.
const PENDING: &[(&str, &str)] = &[];

/// One place a document points outside the repository.
#[derive(Debug)]
struct Finding {
    path: String,
    line: usize,
    needle: String,
    text: String,
}

/// Every `*.md` and `*.rs` file under `dir`, skipping `target/` directories and dot-dirs.
fn documents(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("reading a repository directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                documents(&path, out);
            }
        } else if name.ends_with(".md") || name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The documentation text of one line: all of a Markdown line, the comment of a `//!` or `///`
/// line of Rust, nothing otherwise.
fn doc_text<'a>(path: &Path, line: &'a str) -> Option<&'a str> {
    if path.extension().is_some_and(|e| e == "md") {
        return Some(line);
    }
    let t = line.trim_start();
    t.strip_prefix("//!")
        .or_else(|| t.strip_prefix("///").filter(|_| !t.starts_with("////")))
}

/// A `../` that starts a path (`../x`, `(../x)`, `` `../x` ``), not the `...` of an elided URL
/// or path (`https://.../api.php`, `/proc/.../stat`) nor a `a/../b` inside the repository.
fn parent_path_at(text: &str) -> Option<usize> {
    text.match_indices("../").map(|(i, _)| i).find(|&i| {
        text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c == '.' || c == '/' || c.is_alphanumeric() || c == '_' || c == '-'))
    })
}

/// Relative Markdown link targets (`[text](target)`) of a line.
fn link_targets(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            rest.find(')').map(|end| rest[..end].trim())
        })
        .filter(|t| !t.is_empty() && !t.starts_with('#') && !t.contains(':'))
        .collect()
}

fn findings_in(root: &Path, path: &Path, text: &str) -> Vec<Finding> {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/");
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(doc) = doc_text(path, line) else {
            continue;
        };
        let mut hit = |needle: &str| {
            found.push(Finding {
                path: rel.clone(),
                line: n + 1,
                needle: needle.to_owned(),
                text: line.trim().to_owned(),
            });
        };
        if parent_path_at(doc).is_some() {
            hit("../");
        }
        for needle in OUTSIDE_NEEDLES {
            if doc.contains(needle) {
                hit(needle);
            }
        }
        if path.extension().is_some_and(|e| e == "md") {
            let dir = path.parent().unwrap_or(root);
            for target in link_targets(doc) {
                let file = target.split('#').next().unwrap_or_default();
                let inside = dir
                    .join(file)
                    .canonicalize()
                    .is_ok_and(|p| p.starts_with(root));
                if !inside {
                    hit(&format!("link to {target} (not a file in the repository)"));
                }
            }
        }
    }
    found
}

fn all_findings(root: &Path) -> Vec<Finding> {
    let root = root.canonicalize().expect("repository root");
    let mut files = Vec::new();
    documents(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "the walk found no README.md under {}",
        root.display()
    );
    // This file spells the patterns out on purpose.
    let this = root.join("xtask").join("src").join("tidy.rs");
    files
        .iter()
        .filter(|f| **f != this)
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            findings_in(&root, f, &text)
        })
        .collect()
}

#[test]
fn documents_point_nowhere_outside_the_repository() {
    let findings = all_findings(&root());
    let pending = |f: &Finding| PENDING.contains(&(f.path.as_str(), f.needle.as_str()));
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| !pending(f))
        .map(|f| format!("{}:{}: {} in {:?}", f.path, f.line, f.needle, f.text))
        .collect();
    let stale: Vec<String> = PENDING
        .iter()
        .filter(|(p, n)| !findings.iter().any(|f| f.path == *p && f.needle == *n))
        .map(|(p, n)| format!("{p} no longer has {n:?}: remove it from PENDING"))
        .collect();
    assert!(
        bad.is_empty() && stale.is_empty(),
        "documents must stand alone: say it in this repository's words instead of pointing \
         outside it\n  {}",
        bad.iter()
            .chain(&stale)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn outside_pointers_are_recognised() {
    let check = |file: &str, text: &str| -> Vec<String> {
        let root = Path::new("/repo");
        findings_in(root, &root.join(file), text)
            .into_iter()
            .map(|f| f.needle)
            .collect()
    };
    assert_eq!(
        check("README.md", "see [design](../shared/DESIGN.md)"),
        [
            "../",
            "shared/",
            "DESIGN.md",
            "link to ../shared/DESIGN.md (not a file in the repository)",
        ]
    );
    assert_eq!(check("a.md", "`../x` and (../y)"), ["../"]);
    assert_eq!(
        check("a/b.rs", "//! the contract (DESIGN §7)"),
        ["DESIGN §"]
    );
    assert_eq!(
        check("a/b.rs", "/// facts in interop/whmcs.md"),
        ["interop/"]
    );
    // Not documentation, or not outside: nothing.
    assert!(check("a/b.rs", "// DESIGN §7 in a plain comment").is_empty());
    assert!(check("a/b.rs", "let p = \"../x\";").is_empty());
    assert!(
        check(
            "a.md",
            "`https://.../includes/api.php`, /proc/.../stat, a/../b"
        )
        .is_empty()
    );
    assert!(check("a.md", "[Demo](#demo), [site](https://example.com/x)").is_empty());
}

// ---------------------------------------------------------------------------------------------
// (c) The library crates' registry metadata

/// Crates under `crates/` that are not for other services: the emulators and test helpers.
const NOT_FOR_IMPORT: [&str; 2] = ["sandbox", "test-support"];

#[test]
fn publishable_crates_carry_registry_metadata() {
    let meta = metadata();
    let root = root();
    let mut problems = Vec::new();
    let publishable: BTreeSet<String> = crate::publishable_packages()
        .expect("publishable packages")
        .into_iter()
        .collect();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("package name");
        let manifest = Path::new(p["manifest_path"].as_str().expect("manifest path"));
        let dir = manifest.parent().expect("manifest dir");
        let library = dir.parent() == Some(root.join("crates").as_path())
            && !NOT_FOR_IMPORT.iter().any(|n| dir.ends_with(n));
        if library != publishable.contains(name) {
            problems.push(format!(
                "{name}: publishable must be {library} (a library crate other services import \
                 sets `publish = true`; the rest inherit `publish = false`)"
            ));
        }
        for key in ["repository", "homepage", "documentation"] {
            if let Some(url) = p[key].as_str()
                && (url.contains(".invalid") || url.contains("example.") || url.is_empty())
            {
                problems.push(format!("{name}: {key} is a placeholder: {url}"));
            }
        }
        if !library {
            continue;
        }
        for key in ["description", "license"] {
            if p[key].as_str().is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!("{name}: no {key}"));
            }
        }
        match p["readme"].as_str() {
            Some(readme) if dir.join(readme).is_file() => {}
            other => problems.push(format!(
                "{name}: readme {other:?} is not a file of the crate"
            )),
        }
        for key in ["keywords", "categories"] {
            if p[key].as_array().is_none_or(Vec::is_empty) {
                problems.push(format!("{name}: no {key}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
