//! The layering rule, checked: top-level modules import one another without cycles, and the
//! leaves import no flow. Reads the crate's own source, so a new `use` that closes a cycle
//! fails here, in CI, before it becomes a tangle.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Modules every other module may use, which themselves use no flow.
pub(crate) const LEAVES: &[&str] = &["types", "crypto", "cache", "throttle", "clock", "error"];

/// Top-level module -> the top-level modules its files name through `crate::`.
pub(crate) fn module_graph(src: &Path) -> std::io::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut graph = BTreeMap::new();
    for entry in fs::read_dir(src)? {
        let path = entry?.path();
        let name = match path.file_stem().and_then(|s| s.to_str()) {
            Some(n) if n != "lib" && n != "layering" => n.to_owned(),
            _ => continue,
        };
        let mut files = Vec::new();
        collect_rs(&path, &mut files)?;
        let mut uses = BTreeSet::new();
        for f in files {
            for m in crate_paths(&fs::read_to_string(&f)?) {
                if m != name {
                    uses.insert(m);
                }
            }
        }
        graph.insert(name, uses);
    }
    // Names that are not modules (`crate::CoreError`, `crate::Clock`) are re-exports of leaves.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    Ok(graph)
}

fn collect_rs(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for e in fs::read_dir(path)? {
            collect_rs(&e?.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
    Ok(())
}

/// The first segment after every `crate::`, including inside `use crate::{a::x, b}` groups.
/// Comments are skipped so that documentation may name any module.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = without_comment(line);
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    found.insert(ident(item.trim()));
                }
            } else {
                found.insert(ident(rest));
            }
        }
    }
    found.retain(|s| !s.is_empty() && s.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    found
}

/// A line without its `//` comment; a `//` inside a string literal (a URL) is not one.
fn without_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    let b = line.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && b.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// One cycle, if any, as the path that closes it.
pub(crate) fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap()
    }

    #[test]
    fn module_graph_has_no_cycles() {
        let g = graph();
        assert!(g.contains_key("identity") && g.contains_key("authz"), "read the source tree: {g:?}");
        if let Some(cycle) = find_cycle(&g) {
            panic!("import cycle between top-level modules: {}", cycle.join(" -> "));
        }
    }

    #[test]
    fn leaves_import_no_flow() {
        let g = graph();
        for leaf in LEAVES {
            let uses = g.get(*leaf).cloned().unwrap_or_default();
            let bad: Vec<_> = uses.iter().filter(|m| !LEAVES.contains(&m.as_str())).collect();
            assert!(bad.is_empty(), "leaf `{leaf}` imports {bad:?}");
        }
    }

    #[test]
    fn the_checker_sees_cycles_and_grouped_imports() {
        let paths = crate_paths(
            "use crate::{audit::Actor, identity};\n// crate::oidc in a comment\nlet x = crate::types::Email::parse(s);\n\
             let u = \"https://a.test/\"; crate::cache::f(); // crate::tenancy",
        );
        assert_eq!(paths, ["audit", "cache", "identity", "types"].iter().map(|s| s.to_string()).collect());
        let mut g = BTreeMap::new();
        g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
        g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
        assert_eq!(find_cycle(&g), Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()]));
        g.insert("b".to_owned(), BTreeSet::new());
        assert_eq!(find_cycle(&g), None);
    }
}
