//! The architecture invariants of ARCHITECTURE.md, checked on the source text (as
//! rust-analyzer's tidy test does): the AWS SDK stays in `src/cloud/aws`, the pure
//! modules stay pure, every source file says what it owns, no two files import each
//! other, and a volume's state changes only in the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under the given directories of the crate, as (path relative to
/// the crate root with `/` separators, text).
fn sources(dirs: &[&str]) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = vec![];
    for d in dirs {
        walk(&root().join(d), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            (rel, text)
        })
        .collect()
}

/// The code of a file without its comments and string literals, so that prose about
/// `tokio` or `std::fs` is not mistaken for a use of them.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#")) {
            // A raw string: r"...", r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '"'.
            i += 3;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Whether `name` appears in `code` as a whole path segment (not inside a longer
/// identifier).
fn mentions(code: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[test]
fn the_aws_sdk_stays_in_cloud_aws() {
    let mut bad = vec![];
    for (path, text) in sources(&["src", "tests", "benches"]) {
        if path.starts_with("src/cloud/aws/") {
            continue;
        }
        let code = code_only(&text);
        for word in code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("aws_sdk_") || word == "aws_config" || word.starts_with("aws_smithy_") {
                bad.push(format!("{path}: {word}"));
            }
        }
    }
    bad.dedup();
    assert!(
        bad.is_empty(),
        "AWS SDK names outside src/cloud/aws (keep them behind the Cloud trait):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_pure_modules_do_no_io() {
    const PURE: [&str; 7] =
        ["src/plan", "src/policy", "src/engine", "src/ids.rs", "src/lock.rs", "src/verify", "src/exec/agenda.rs"];
    const FORBIDDEN: [&str; 7] = ["tokio", "std::fs", "std::net", "SystemTime", "Instant", "std::process", "reqwest"];
    let mut bad = vec![];
    for (path, text) in sources(&["src"]) {
        if !PURE.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) {
            continue;
        }
        let code = code_only(&text);
        for name in FORBIDDEN {
            if mentions(&code, name) {
                bad.push(format!("{path}: {name}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "plan, policy, engine and ids are pure (no I/O, tokio or clock; time arrives as an argument):\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_source_file_says_what_it_owns() {
    let missing: Vec<String> = sources(&["src", "tests", "benches"])
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(missing.is_empty(), "source files without a //! doc at the top:\n{}", missing.join("\n"));
}

/// The module path of a file under src/: `src/cli/mod.rs` -> `cli`, `src/cli/args.rs`
/// -> `cli::args`, `src/lib.rs` -> ``.
fn module_of(path: &str) -> Option<String> {
    let rel = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    Some(match rel {
        "lib" | "main" => String::new(),
        other => other.replace('/', "::"),
    })
}

/// The modules a file imports with `use crate::...` or `use super::...` (module
/// level), resolved to the longest module path that is a file. A `mod.rs` (or
/// `lib.rs`) re-exporting its own children is its public face, not a dependency, and
/// is left out.
fn imports(module: &str, is_mod_file: bool, code: &str, files: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let parent = |m: &str| m.rsplit_once("::").map(|(p, _)| p.to_owned()).unwrap_or_default();
    // A path written out in code (`super::dryrun::dry_run(..)`) is a dependency as much
    // as a `use` is: rewrite each as a `use` statement and read them all alike.
    let mut stmts: Vec<String> = code.split(';').map(str::to_owned).collect();
    for prefix in ["crate::", "super::"] {
        for (at, _) in code.match_indices(prefix) {
            if code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String =
                code[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            stmts.push(format!("use {path}"));
        }
    }
    for stmt in &stmts {
        let stmt = stmt.trim();
        let Some(rest) = stmt.strip_prefix("pub use ").or_else(|| stmt.strip_prefix("use ")) else {
            continue;
        };
        let rest = rest.trim();
        let base = if let Some(r) = rest.strip_prefix("crate::") {
            (String::new(), r)
        } else if let Some(r) = rest.strip_prefix("super::") {
            (parent(module), r)
        } else if let Some(r) = rest.strip_prefix("self::") {
            (module.to_owned(), r)
        } else {
            continue;
        };
        // Expand one level of braces: `super::{a, b::C}`.
        let (prefix, tail) = base.1.split_once('{').unwrap_or((base.1, ""));
        let tails: Vec<&str> =
            if tail.is_empty() { vec![""] } else { tail.trim_end_matches('}').split(',').map(str::trim).collect() };
        for t in tails {
            let full = format!("{}{}", prefix, t);
            let mut path = base.0.clone();
            let mut best = None;
            for seg in full.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self") {
                let seg = seg.split([' ', '{', '}']).next().unwrap_or(seg);
                path = if path.is_empty() { seg.to_owned() } else { format!("{path}::{seg}") };
                if files.contains(&path) {
                    best = Some(path.clone());
                }
            }
            if let Some(b) = best
                && b != module
                && !(is_mod_file && b.starts_with(&format!("{module}::")))
                && !(module.is_empty() && is_mod_file)
            {
                out.insert(b);
            }
        }
    }
    out
}

#[test]
fn no_two_files_import_each_other() {
    let srcs = sources(&["src"]);
    let files: BTreeSet<String> = srcs.iter().filter_map(|(p, _)| module_of(p)).filter(|m| !m.is_empty()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in &srcs {
        let Some(module) = module_of(path) else { continue };
        let is_mod_file = path.ends_with("/mod.rs") || path == "src/lib.rs" || path == "src/main.rs";
        graph.insert(module.clone(), imports(&module, is_mod_file, &code_only(text), &files));
    }
    let mut cycles = vec![];
    for (a, deps) in &graph {
        for b in deps {
            if a < b && graph.get(b).is_some_and(|d| d.contains(a)) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that import each other (give the shared item its own home):\n{}",
        cycles.join("\n")
    );
    // The check sees imports at all: the CLI's commands import the plan-file loader.
    assert!(graph["cli::commands"].contains("cli::plan_file"), "{:?}", graph["cli::commands"]);
}

#[test]
fn the_import_check_finds_a_cycle() {
    let files: BTreeSet<String> = ["cli", "cli::a", "cli::b"].into_iter().map(String::from).collect();
    assert!(imports("cli::a", false, "use super::b::thing;", &files).contains("cli::b"));
    assert!(imports("cli::b", false, "use super::{a, Failure};", &files).contains("cli::a"));
    assert!(imports("cli::b", false, "use crate::cli::a::{x, y};", &files).contains("cli::a"));
    assert!(imports("cli::b", false, "fn f() { super::a::run(); }", &files).contains("cli::a"));
    // A mod.rs re-exporting its child is not a dependency on it.
    assert!(imports("cli", true, "pub use a::X; use self::b::Y;", &files).is_empty());
    assert!(!mentions("let tokio_like = 1;", "tokio"));
    assert!(mentions("use tokio::sync;", "tokio"));
    assert_eq!(code_only("let a = \"tokio\"; // std::fs\nb"), "let a = \"\"; \nb");
}

/// Assignments to a volume run's step, failure or intent outside its tests, as
/// `path:line: text`: those fields belong to the engine, whose transitions are the only
/// way they change.
fn state_assignments(path: &str, text: &str) -> Vec<String> {
    let code = code_only(text);
    let live = code.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = vec![];
    for (n, line) in live.lines().enumerate() {
        for field in [".step", ".in_flight", ".failure"] {
            for (at, _) in line.match_indices(field) {
                let rest = line[at + field.len()..].trim_start();
                let ident_goes_on =
                    line[at + field.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
                if !ident_goes_on && rest.starts_with('=') && !rest.starts_with("==") {
                    out.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    out
}

/// Files that only tests compile: declared `#[cfg(test)] mod name;` by their parent.
fn test_only_files(srcs: &[(String, String)]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (path, text) in srcs {
        let dir = match path.rsplit_once('/') {
            Some((d, f)) if f == "mod.rs" || f == "lib.rs" => d.to_owned(),
            Some((d, f)) => format!("{d}/{}", f.trim_end_matches(".rs")),
            None => continue,
        };
        let code = code_only(text);
        let mut rest = code.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            rest = &rest[at + "#[cfg(test)]".len()..];
            let decl = rest.trim_start();
            if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.split_once(';')).map(|(n, _)| n.trim())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                out.insert(format!("{dir}/{name}.rs"));
                out.insert(format!("{dir}/{name}/mod.rs"));
            }
        }
    }
    out
}

#[test]
fn a_volumes_state_changes_only_in_the_engine() {
    let mut bad = vec![];
    let srcs = sources(&["src"]);
    let test_only = test_only_files(&srcs);
    assert!(test_only.contains("src/engine/tests.rs"), "{test_only:?}");
    for (path, text) in srcs {
        if path.starts_with("src/engine/") || test_only.contains(&path) {
            continue;
        }
        bad.extend(state_assignments(&path, &text));
    }
    assert!(
        bad.is_empty(),
        "a VolumeRun's step, failure or in_flight set outside src/engine (add or use an engine transition):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_state_check_finds_an_assignment() {
    assert_eq!(state_assignments("x.rs", "fn f(v: &mut V) {\n    v.step = Step::Done;\n}").len(), 1);
    assert_eq!(state_assignments("x.rs", "v.in_flight = false; v.failure = None;").len(), 2);
    assert!(state_assignments("x.rs", "if v.step == Step::Done { v.steps = 1; }").is_empty());
    assert!(
        state_assignments("x.rs", "// v.step = Step::Done\n#[cfg(test)]\nmod t { fn f() { v.step = S; } }").is_empty()
    );
}
