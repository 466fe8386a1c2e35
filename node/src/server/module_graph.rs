//! A test that keeps the server's modules free of import cycles
//! (ARCHITECTURE.md, "The server's modules"): it reads every source file
//! under `src/server`, takes the sibling modules each one names in code
//! (`super::x`, `crate::server::x`, `super::super::x` from a submodule's
//! own files; comments and doc links do not count), and fails naming the
//! cycle if there is one. `mod.rs` wires the modules together and is not a
//! module of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/server") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` without comments (line comments, doc comments and
/// block comments), string contents left as they are.
fn code_only(text: &str) -> String {
    let mut out = String::new();
    let mut in_block = 0usize;
    for line in text.lines() {
        let mut rest = line;
        let mut kept = String::new();
        loop {
            if in_block > 0 {
                match rest.find("*/") {
                    Some(i) => {
                        in_block -= 1;
                        rest = &rest[i + 2..];
                    }
                    None => break,
                }
            } else if let Some(i) = rest.find("/*") {
                let before = &rest[..i];
                if let Some(j) = before.find("//") {
                    kept.push_str(&before[..j]);
                    break;
                }
                kept.push_str(before);
                in_block += 1;
                rest = &rest[i + 2..];
            } else {
                kept.push_str(rest.split("//").next().unwrap_or(""));
                break;
            }
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The identifiers a path prefix is followed by: `prefix::name` and every
/// top-level name of `prefix::{a, b::c, d}`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        // `super::super::x` is not `super::x`.
        if prefix == "super::" && code[..i].ends_with("super::") {
            continue;
        }
        let after = &code[i + prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = 0usize;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
    }
    // `super::super::x` names the grandparent's `x`, not a `super` module.
    found.remove("super");
    found.remove("");
    found
}

fn module_graph(server_dir: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(server_dir, &mut files);
    let module_of = |path: &Path| -> Option<(String, bool)> {
        let rel = path.strip_prefix(server_dir).expect("under src/server");
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().expect("UTF-8 path")).collect();
        match parts.as_slice() {
            ["mod.rs"] => None,
            [file] => Some((file.trim_end_matches(".rs").to_string(), true)),
            [dir, "mod.rs"] => Some((dir.to_string(), true)),
            [dir, ..] => Some((dir.to_string(), false)),
            [] => None,
        }
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).map(|(m, _)| m).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some((module, top_file)) = module_of(file) else { continue };
        let code = code_only(&std::fs::read_to_string(file).expect("read a source file"));
        let mut named = names_after(&code, "crate::server::");
        // In a module's own file `super` is the server; in a submodule's
        // file it is the module, and `super::super` the server.
        named.extend(names_after(&code, if top_file { "super::" } else { "super::super::" }));
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(named.into_iter().filter(|n| *n != module && modules.contains(n)));
    }
    graph
}

/// A cycle of `graph`, as the modules along it, if it has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(node: &str, graph: &Graph, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> bool {
        match marks.get(node) {
            Some(Mark::Done) => return false,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).expect("an open node is on the path");
                path.drain(..start);
                path.push(node.to_string());
                return true;
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if visit(next, graph, marks, path) {
                return true;
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        false
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if visit(node, graph, &mut marks, &mut path) {
            return Some(path);
        }
    }
    None
}

#[test]
fn the_reader_finds_imports_and_cycles_and_skips_comments() {
    let code = code_only(
        "use super::{alpha, beta::{x, y}, gamma as g};\n\
         /// see [`super::doc_only`]\n\
         let a = crate::server::delta::f(); // super::trailing\n\
         /* super::blocked */ super::super::parent_of_sub::g();\n",
    );
    let names: Vec<String> = names_after(&code, "super::").into_iter().collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert_eq!(names_after(&code, "crate::server::").into_iter().collect::<Vec<_>>(), ["delta"]);
    assert_eq!(names_after(&code, "super::super::").into_iter().collect::<Vec<_>>(), ["parent_of_sub"]);
    let graph: Graph = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(find_cycle(&graph), Some(["a", "b", "c", "a"].map(String::from).to_vec()));
    let mut acyclic = graph.clone();
    acyclic.insert("c".into(), BTreeSet::new());
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn the_server_modules_import_each_other_without_a_cycle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let graph = module_graph(&dir);
    // The graph is read from real files: a reader that found nothing would
    // pass vacuously.
    assert!(graph.get("client_service").is_some_and(|e| e.contains("proposer")), "{graph:#?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the server's modules import each other in a circle: {}\n{graph:#?}", cycle.join(" → "));
    }
    for (module, imports) in &graph {
        println!("{module} → {}", imports.iter().cloned().collect::<Vec<_>>().join(", "));
    }
}
