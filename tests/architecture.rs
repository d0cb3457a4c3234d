//! The layer table of ARCHITECTURE.md, enforced against the code.
//!
//! Every `crate::x` path in the files of a top-level module `m` of `src/` is an arrow `m -> x`. The table says
//! which arrows may exist; the invariants ARCHITECTURE.md names are checked on their own, so a failure names the
//! one that broke. Only `std`, so it also runs as `rustc --edition 2021 --test tests/architecture.rs`.
//! `WEIR_ARCH_ROOT` points it at another checkout (default: the crate's root).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::{env, fs};

const BEGIN: &str = "<!-- layers:begin -->";
const END: &str = "<!-- layers:end -->";
const FIX: &str = "Change the design (and the table in ARCHITECTURE.md, saying why), not this test.";

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A path at `file:line`, in top-level module `from`, that names `to`.
struct Arrow {
    file: String,
    line: usize,
    from: String,
    to: String,
}

impl Arrow {
    fn describe(&self, why: &str) -> String {
        let Arrow { file, line, from, to } = self;
        format!("{file}:{line}: module '{from}' imports '{to}', which {why}")
    }
}

#[derive(Default)]
struct Code {
    modules: BTreeSet<String>,
    /// What `crate::x` paths name, self-references left out.
    arrows: Vec<Arrow>,
    /// The first segment of every other path (`http::HeaderMap`, `use bytes;`): external crates, `std`, items.
    roots: Vec<Arrow>,
}

/// Where ARCHITECTURE.md and src/ are: `$WEIR_ARCH_ROOT`, else the crate's root (`.` under plain rustc).
fn root() -> PathBuf {
    let manifest_dir = option_env!("CARGO_MANIFEST_DIR").unwrap_or(".");
    env::var_os("WEIR_ARCH_ROOT").map_or_else(|| manifest_dir.into(), PathBuf::from)
}

/// The layer table: module → the modules it may import.
fn table() -> Graph {
    let path = root().join("ARCHITECTURE.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = text.split_once(BEGIN).and_then(|(_, rest)| rest.split_once(END));
    let (rows, _) = section.unwrap_or_else(|| panic!("ARCHITECTURE.md has no `{BEGIN}` … `{END}`"));
    let mut table = Graph::new();
    for row in rows.lines().map(str::trim).filter(|row| row.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let (module, imports) = (cells[0].trim_matches('`'), cells[cells.len() - 1]);
        if module == "module" || module.starts_with("---") {
            continue;
        }
        let allowed = imports.split(',').map(|m| m.trim().trim_matches('`'));
        let allowed = allowed.filter(|m| !matches!(*m, "" | "—" | "-")).map(String::from);
        let fresh = table.insert(module.to_string(), allowed.collect()).is_none();
        assert!(fresh, "ARCHITECTURE.md lists '{module}' twice");
    }
    table
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn code() -> Code {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut code = Code::default();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src/");
        let first = rel.iter().next().expect("non-empty path").to_string_lossy();
        if rel.iter().count() == 1 && (first == "lib.rs" || first == "main.rs") {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let file = format!("src/{}", rel.display());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let arrow = |(line, to)| Arrow {
            file: file.clone(),
            line,
            from: module.clone(),
            to,
        };
        let arrows = crate_paths(&text).into_iter().filter(|(_, to)| *to != module);
        code.arrows.extend(arrows.map(arrow));
        code.roots.extend(path_roots(&text).into_iter().map(arrow));
        code.modules.insert(module);
    }
    code
}

fn is_ident(tok: &str) -> bool {
    tok.starts_with(|ch: char| ch.is_alphabetic() || ch == '_')
}

/// Identifiers, `::` and single punctuation characters, each with its line. Comments, string, char and number
/// literals, lifetimes and labels are dropped.
fn lex(src: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let word = |ch: char| ch.is_alphanumeric() || ch == '_';
    let skip = |mut i: usize, stop: &dyn Fn(usize) -> bool| {
        while i < c.len() && !stop(i) {
            i += 1;
        }
        i
    };
    let string_end = |mut i: usize| {
        while i < c.len() && c[i] != '"' {
            i += if c[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    let block_comment_end = |mut i: usize| {
        let mut depth = 0;
        while i < c.len() {
            match (c[i], at(i + 1)) {
                ('/', '*') => (depth, i) = (depth + 1, i + 2),
                ('*', '/') if depth == 1 => return i + 2,
                ('*', '/') => (depth, i) = (depth - 1, i + 2),
                _ => i += 1,
            }
        }
        i
    };
    let (mut toks, mut i, mut line, mut counted) = (Vec::new(), 0, 1, 0);
    while i < c.len() {
        let start = i;
        // Where the item starting at `i` ends, and whether it is a token (else a comment, literal or space).
        let (end, keep) = match (c[i], at(i + 1)) {
            ('/', '/') => (skip(i, &|j| c[j] == '\n'), false),
            ('/', '*') => (block_comment_end(i), false),
            ('"', _) => (string_end(i + 1), false),
            ('\'', '\\') => (skip(i + 3, &|j| c[j] == '\'') + 1, false),
            ('\'', _) if at(i + 2) == '\'' => (i + 3, false),
            ('\'', _) => (skip(i + 1, &|j| !word(c[j])), false), // a lifetime or label
            (':', ':') => (i + 2, true),
            (ch, _) if word(ch) => {
                let end = skip(i, &|j| !word(c[j]));
                let text: String = c[i..end].iter().collect();
                let hashes = skip(end, &|j| c[j] != '#') - end;
                match text.as_str() {
                    "r" | "br" | "cr" if at(end + hashes) == '"' => {
                        let close: Vec<char> = format!("\"{}", "#".repeat(hashes)).chars().collect();
                        let close_at = skip(end + hashes + 1, &|j| c[j..].starts_with(&close));
                        (close_at + close.len(), false)
                    }
                    "b" | "c" if at(end) == '"' => (string_end(end + 1), false),
                    "r" if hashes == 1 && word(at(end + 1)) => (skip(end + 1, &|j| !word(c[j])), true), // r#type
                    _ => (end, is_ident(&text)),
                }
            }
            (ch, _) => (i + 1, !ch.is_whitespace()),
        };
        if keep {
            line += c[counted..start].iter().filter(|&&ch| ch == '\n').count();
            counted = start;
            let text: String = c[start..end].iter().collect();
            toks.push((text.trim_start_matches("r#").to_string(), line));
        }
        i = end;
    }
    toks
}

/// What every `crate::x…` path names first, with its line: `x`, and for `crate::{a::X, b, c::{d}}` `a`, `b`, `c`.
fn crate_paths(src: &str) -> Vec<(usize, String)> {
    let toks = lex(src);
    let tok = |k: usize| toks.get(k).map_or("", |t| t.0.as_str());
    let mut out = Vec::new();
    for k in (0..toks.len()).filter(|&k| tok(k) == "crate" && tok(k + 1) == "::") {
        if is_ident(tok(k + 2)) {
            out.push((toks[k + 2].1, tok(k + 2).to_string()));
        } else if tok(k + 2) == "{" {
            let (mut depth, mut first) = (0, true); // `first`: at the start of an item of the group
            for (t, line) in &toks[k + 3..] {
                match t.as_str() {
                    "{" => depth += 1,
                    "}" if depth == 0 => break,
                    "}" => depth -= 1,
                    name if first && depth == 0 && is_ident(name) && name != "self" => out.push((*line, t.clone())),
                    _ => {}
                }
                first = depth == 0 && t == ",";
            }
        }
    }
    out
}

/// The first segment of every path, with its line: `http` in `http::X`, `::http::X` and `use http;`, but not in
/// `crate::http::X`, `T::http`, `use a::{http}` or `use a as http`.
fn path_roots(src: &str) -> Vec<(usize, String)> {
    let toks = lex(src);
    let tok = |k: Option<usize>| k.and_then(|k| toks.get(k)).map_or("", |t| t.0.as_str());
    let (mut out, mut groups, mut in_use) = (Vec::new(), Vec::new(), false);
    for (k, (t, line)) in toks.iter().enumerate() {
        let (before, after) = (tok(k.checked_sub(1)), tok(Some(k + 1)));
        match t.as_str() {
            "{" => groups.push(before == "::"), // a group of a `use` path, `a::{…}`
            "}" => _ = groups.pop(),
            ";" => in_use = false,
            "use" => in_use = true,
            name if is_ident(name) => {
                let continued = before == "::" && (is_ident(tok(k.checked_sub(2))) || tok(k.checked_sub(2)) == ">");
                let grouped = before != "::" && groups.last() == Some(&true);
                if (after == "::" || in_use) && !continued && !grouped && before != "as" {
                    out.push((*line, name.to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

fn is_http_crate(name: &str) -> bool {
    name.starts_with("pingora") || matches!(name, "http" | "bytes" | "hyper")
}

/// The shortest circle through each module that lies on one, each circle once, as `a -> b -> a`.
fn circles(graph: &Graph) -> Vec<String> {
    let mut found = BTreeSet::new();
    for start in graph.keys().map(String::as_str) {
        let (mut parent, mut queue) = (BTreeMap::new(), VecDeque::from([start]));
        'search: while let Some(at) = queue.pop_front() {
            for next in graph.get(at).into_iter().flatten().filter(|next| *next != at) {
                let next = next.as_str();
                if next == start {
                    let mut circle = vec![at];
                    while let Some(&prev) = parent.get(circle[circle.len() - 1]) {
                        circle.push(prev);
                    }
                    circle.reverse();
                    let lowest = (0..circle.len()).min_by_key(|&i| circle[i]).unwrap_or(0);
                    circle.rotate_left(lowest);
                    found.insert(format!("{} -> {}", circle.join(" -> "), circle[0]));
                    break 'search;
                }
                if !parent.contains_key(next) {
                    parent.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
    }
    found.into_iter().collect()
}

fn verdict(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}\n{FIX}", problems.join("\n  "));
}

/// Fails on every `crate::x` path in one of the modules `from` whose `x` is picked by `module`, and on every
/// other path there whose first segment (an external crate) is picked by `krate`.
fn deny(rule: &str, from: &[&str], module: impl Fn(&str) -> bool, krate: impl Fn(&str) -> bool) {
    let (code, why) = (code(), format!("breaks `{rule}`"));
    let from = |a: &&Arrow| from.contains(&a.from.as_str());
    let arrows = code.arrows.iter().filter(from).filter(|a| module(&a.to));
    let roots = code.roots.iter().filter(from).filter(|a| krate(&a.to));
    let mut bad: Vec<&Arrow> = arrows.chain(roots).collect();
    bad.sort_by_key(|a| (&a.file, a.line));
    verdict(rule, bad.into_iter().map(|a| a.describe(&why)).collect());
}

#[test]
fn table_names_every_module() {
    let (table, code) = (table(), code());
    let mut problems = Vec::new();
    for module in code.modules.iter().filter(|m| !table.contains_key(*m)) {
        problems.push(format!("src/ has a module '{module}', which the table does not place"));
    }
    for module in table.keys().filter(|m| !code.modules.contains(*m)) {
        problems.push(format!("the table lists '{module}', which is no module of src/"));
    }
    for (module, allowed) in &table {
        for missing in allowed.iter().filter(|m| !table.contains_key(*m)) {
            problems.push(format!("'{module}' may import '{missing}', which is no row"));
        }
    }
    verdict("the layer table and src/ disagree", problems);
}

#[test]
fn table_matches_the_code() {
    let (table, code, why) = (table(), code(), "ARCHITECTURE.md does not allow");
    let forbidden = |a: &&Arrow| table.get(&a.from).is_some_and(|ok| !ok.contains(&a.to));
    let problems = code.arrows.iter().filter(forbidden).map(|a| a.describe(why));
    verdict("arrows the layer table does not allow", problems.collect());
}

#[test]
fn table_has_no_circle() {
    verdict("the layer table of ARCHITECTURE.md has circles", circles(&table()));
}

#[test]
fn no_circles_between_top_level_modules() {
    let code = code();
    let mut graph = Graph::new();
    for a in code.arrows.iter().filter(|a| code.modules.contains(&a.to)) {
        graph.entry(a.from.clone()).or_default().insert(a.to.clone());
    }
    verdict("top-level modules import each other in circles", circles(&graph));
}

#[test]
fn config_is_a_leaf() {
    deny("config_is_a_leaf", &["config"], |_| true, |_| false);
}

#[test]
fn plugins_and_wasm_never_reach_up() {
    let up = |to: &str| matches!(to, "proxy" | "server" | "runtime");
    deny("plugins_and_wasm_never_reach_up", &["plugins", "wasm"], up, |_| false);
}

#[test]
fn traffic_and_bulkhead_know_no_http() {
    let http = |to: &str| matches!(to, "error" | "llm" | "provider" | "upstream" | "pipeline" | "proxy");
    let from = ["traffic", "bulkhead"];
    deny("traffic_and_bulkhead_know_no_http", &from, http, is_http_crate);
}

#[test]
fn mock_knows_nothing_of_the_pipeline() {
    let pipeline = |to: &str| {
        matches!(
            to,
            "pipeline" | "plugins" | "wasm" | "runtime" | "proxy" | "provider" | "upstream"
        )
    };
    deny("mock_knows_nothing_of_the_pipeline", &["mock"], pipeline, |_| false);
}

mod collector {
    use super::*;

    /// `line:name` pairs, space-separated.
    fn found(paths: &[(usize, String)]) -> String {
        let pairs: Vec<String> = paths.iter().map(|(line, name)| format!("{line}:{name}")).collect();
        pairs.join(" ")
    }

    #[test]
    fn reads_grouped_multi_line_and_inline_paths() {
        let src = "use crate::{a::X, b, c::{d, e::F}};\nuse crate::{\n    f,\n    g::{self, H},\n    *,\n};\n\
                   fn x() { crate::metrics::X.inc(); <crate::h::T as Tr>::f(); $crate::i::j!() }\npub(crate) fn y() {}\n";
        assert_eq!(found(&crate_paths(src)), "1:a 1:b 1:c 3:f 4:g 7:metrics 7:h 7:i");
    }

    #[test]
    fn skips_comments_strings_and_chars_but_not_lifetimes() {
        let src = r###"// crate::a
/// crate::b
//! crate::c
/* crate::d /* nested crate::e */ crate::f */
let s = "crate::g \" crate::h";
let r = r#"crate::i " crate::j"#; let rr = r##"crate::k "# crate::l"##;
let b = br"crate::m"; let c = b"crate::n"; let d = b'"'; let r#type = 1;
let q = '"'; let e = '\''; let u = '\u{1F600}'; use crate::real;
fn f<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer crate::also::it(x) } }
"###;
        assert_eq!(found(&crate_paths(src)), "8:real 9:also");
    }

    #[test]
    fn roots_are_whole_first_segments() {
        let src = "use http::HeaderMap;\nuse crate::http_call;\nuse pingora_core::x;\nuse foo::{bytes, http::Y};\n\
                   fn f(bytes: B) { let https = 1; ::hyper::x(); bytes::Bytes::new(); crate::http::z(); T::http::q() }\n\
                   use bytes;\nuse a as http;\nuse {http::Z};\n";
        let mut roots = path_roots(src);
        roots.retain(|(_, root)| is_http_crate(root));
        assert_eq!(found(&roots), "1:http 3:pingora_core 5:hyper 5:bytes 6:bytes 8:http");
    }

    #[test]
    fn finds_each_circle_once() {
        let mut graph = Graph::new();
        for edge in "a-b b-a b-c c-d d-b d-e e-e".split(' ') {
            let (from, to) = edge.split_once('-').expect("an edge");
            graph.entry(from.to_string()).or_default().insert(to.to_string());
        }
        assert_eq!(circles(&graph), ["a -> b -> a", "b -> c -> d -> b"]);
    }
}
