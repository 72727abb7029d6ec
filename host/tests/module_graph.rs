//! The shape of `host/src`, checked: no import cycle between its top-level
//! modules, and no file over [`MAX_LINES`] lines (tests aside).
//!
//! Why: a module that imports another which imports it back cannot be read
//! (or replaced) on its own; a file that holds several jobs hides them. Both
//! creep in one convenient `use` or one more function at a time, so a test
//! keeps them out (issue 18).
//!
//! The graph is read from the text: every `crate::name` in code (comments
//! and `#[cfg(test)]` sections skipped) is an edge from the file's top-level
//! module to `name` when `name` is a module declared in `lib.rs`; a file
//! `engine/x.rs` belongs to `engine`. `lib.rs` (the crate root, re-exporting
//! everything) and `main.rs` (another crate) are not nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a file in `host/src` may be, tests aside.
const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines before the file's `#[cfg(test)]` section, comments dropped.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .collect()
}

/// Top-level modules declared in `lib.rs`.
fn modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules `code` names through `crate::`.
fn references(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            // `crate::{a, b::C}`: the first segment of each item.
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .map(|item| ident(item.trim()))
                .collect(),
            None => vec![ident(rest)],
        };
        found.extend(
            names
                .into_iter()
                .filter(|name| modules.contains(*name))
                .map(str::to_owned),
        );
    }
    found
}

/// Every elementary cycle's smallest rotation, as `a -> b -> a`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        found: &mut BTreeSet<String>,
    ) {
        let last = path.last().expect("non-empty").clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                found.insert(cycle.join(" -> "));
            } else if next.as_str() > start && !path.contains(next) {
                // Each cycle is found once, from its smallest module.
                path.push(next.clone());
                walk(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start.clone()], &mut found);
    }
    found
}

#[test]
fn no_import_cycles_and_no_long_files() {
    let modules = modules();
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut long = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let name = relative.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).expect("read a source file");
        let lines = code_lines(&text);
        if lines.len() > MAX_LINES {
            long.push(format!("{name}: {} lines", lines.len()));
        }
        if name == "lib.rs" || name == "main.rs" {
            continue;
        }
        let module = ident(&name).to_owned();
        let code: String = lines
            .iter()
            .filter(|line| !line.trim_start().starts_with("//"))
            .map(|line| format!("{line}\n"))
            .collect();
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(
            references(&code, &modules)
                .into_iter()
                .filter(|to| *to != module),
        );
    }
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between host modules (a module that imports one that imports it back): {found:#?}"
    );
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:#?}");
}
