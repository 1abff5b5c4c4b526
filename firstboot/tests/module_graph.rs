//! The modules of firstboot form no cycle: not between top-level modules (`ignition` and
//! `source` once used each other) and not between siblings (`blockdev` and `iso9660`).
//!
//! The graph is read from the sources: every `crate::…` and `super::…` path outside the
//! test modules is an edge from the file's module to the longest module prefix of the
//! path. A module using its own parent or child (re-exports, `super::Error`) is not an
//! edge: that is how a module and its parts are meant to talk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut pending_test = false;
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        if let Some(d) = skip_depth.as_mut() {
            *d += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if *d <= 0 {
                skip_depth = None;
            }
            continue;
        }
        let t = line.trim();
        if t == "#[cfg(test)]" {
            pending_test = true;
            continue;
        }
        if pending_test && t.contains("mod ") && t.ends_with('{') {
            skip_depth = Some(1);
            pending_test = false;
            continue;
        }
        pending_test = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths that follow `prefix` (`crate::`, `super::super::`) in `code`; a `{…}` group
/// yields one path per item (`a::{b, c::{d}}` is `a::b` and `a::c::d`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') || rest.starts_with("super::") {
            // Part of a longer path, or a longer `super::super::` chain found by its own
            // prefix.
            continue;
        }
        out.extend(expand(rest));
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The paths at the start of `s`: `a::b::c`, or `a::{…}` with a group.
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(is_ident(c) || c == ':'))
        .unwrap_or(s.len());
    let head: Vec<String> = s[..end]
        .split("::")
        .filter(|p| !p.is_empty() && *p != "self")
        .map(str::to_string)
        .collect();
    let Some(group) = s[end..].strip_prefix('{') else {
        return vec![head];
    };
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .flat_map(expand)
        .map(|tail| head.iter().cloned().chain(tail).collect())
        .collect()
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeSet<Module> = all.iter().map(|f| module_of(&src, f)).collect();
    let longest = |p: &[String]| -> Option<Module> {
        (1..=p.len())
            .rev()
            .map(|k| p[..k].to_vec())
            .find(|m| modules.contains(m))
    };
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for f in &all {
        let from = module_of(&src, f);
        if from.is_empty() {
            continue; // lib.rs and main.rs declare the modules
        }
        let code = code(&std::fs::read_to_string(f).unwrap());
        let mut targets = Vec::new();
        for p in paths_after(&code, "crate::") {
            targets.extend(longest(&p));
        }
        for ups in 1..=3 {
            if ups > from.len() {
                break;
            }
            let base = &from[..from.len() - ups];
            for p in paths_after(&code, &"super::".repeat(ups)) {
                let full: Vec<String> = base.iter().cloned().chain(p).collect();
                targets.extend(longest(&full));
            }
        }
        for to in targets {
            let related = to.starts_with(&from) || from.starts_with(&to);
            if !related {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// A cycle reachable from `node`, if any (depth-first).
fn cycle_from(
    edges: &BTreeMap<Module, BTreeSet<Module>>,
    node: &Module,
    stack: &mut Vec<Module>,
    done: &mut BTreeSet<Module>,
) -> Option<Vec<Module>> {
    if let Some(i) = stack.iter().position(|m| m == node) {
        return Some(stack[i..].to_vec());
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node.clone());
    for next in edges.get(node).into_iter().flatten() {
        if let Some(c) = cycle_from(edges, next, stack, done) {
            return Some(c);
        }
    }
    stack.pop();
    done.insert(node.clone());
    None
}

fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<String> {
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        if let Some(c) = cycle_from(edges, start, &mut Vec::new(), &mut done) {
            return Some(
                c.iter()
                    .map(|m| m.join("::"))
                    .collect::<Vec<_>>()
                    .join(" -> "),
            );
        }
    }
    None
}

#[test]
fn no_module_cycles() {
    let deep = graph();
    let top: BTreeMap<Module, BTreeSet<Module>> = deep
        .iter()
        .map(|(from, to)| {
            let to = to
                .iter()
                .map(|m| m[..1].to_vec())
                .filter(|m| *m != from[..1])
                .collect();
            (from[..1].to_vec(), to)
        })
        .fold(
            BTreeMap::new(),
            |mut acc, (k, v): (Module, BTreeSet<Module>)| {
                acc.entry(k).or_insert_with(BTreeSet::new).extend(v);
                acc
            },
        );
    assert!(
        deep.contains_key(&vec!["source".to_string(), "acquire".to_string()]),
        "the graph was read: {deep:?}"
    );
    assert_eq!(find_cycle(&top), None, "top-level modules");
    assert_eq!(find_cycle(&deep), None, "modules and their parts");
}

#[test]
fn the_reader_sees_the_edges_it_must() {
    let code = code(
        "use crate::net::{Http, Timeouts};\nuse super::{a, b::{c, d}};\n// crate::x\n#[cfg(test)]\nmod tests {\n    use crate::y;\n}\n",
    );
    let joined = |prefix: &str| -> Vec<String> {
        paths_after(&code, prefix)
            .into_iter()
            .map(|p| p.join("::"))
            .collect()
    };
    assert_eq!(joined("crate::"), ["net::Http", "net::Timeouts"]);
    assert_eq!(joined("super::"), ["a", "b::c", "b::d"]);
    let m = |s: &str| -> Module { s.split("::").map(str::to_string).collect() };
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("a")]));
    assert_eq!(find_cycle(&edges).as_deref(), Some("a -> b"));
}
