//! The architecture invariants of ARCHITECTURE.md, checked on the source text (as
//! rust-analyzer's tidy test does): the AWS SDK stays in `src/cloud/aws`, the pure
//! modules stay pure, every source file says what it owns, no two files import each
//! other, a volume's state changes only in the engine, and the tags on AWS resources
//! are written only in `src/tags.rs`.

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

/// The modules that do no I/O: the plan, the policies, the step machine, the ids, the
/// lock and verify vocabularies, the tags, and the runner's decisions (what follows an
/// error, what a recurring plan runs, what a volume's state is from its resources'
/// tags). Time arrives as milliseconds, resources as lists.
const PURE: [&str; 11] = [
    "src/plan",
    "src/policy",
    "src/engine",
    "src/ids.rs",
    "src/lock.rs",
    "src/verify",
    "src/tags.rs",
    "src/exec/sched.rs",
    "src/exec/agenda.rs",
    "src/exec/recurring.rs",
    "src/exec/adopt/infer.rs",
];

/// What a pure module may not name: the runtime, the filesystem, the network, the
/// environment, processes, the clock (the wall's or the runner's) and the cloud.
const IMPURE: [&str; 14] = [
    "tokio",
    "async",
    "await",
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "std::thread",
    "SystemTime",
    "Instant",
    "Clock",
    "Cloud",
    "ObjectStore",
    "reqwest",
];

/// The I/O a file does by its text, as `path: name` per forbidden name it mentions
/// outside comments and string literals.
fn io_in(path: &str, text: &str) -> Vec<String> {
    let code = code_only(text);
    IMPURE.iter().filter(|name| mentions(&code, name)).map(|name| format!("{path}: {name}")).collect()
}

#[test]
fn the_pure_modules_do_no_io() {
    let mut bad = vec![];
    let mut seen = BTreeSet::new();
    for (path, text) in sources(&["src"]) {
        let Some(p) = PURE.iter().find(|p| path == **p || path.starts_with(&format!("{p}/"))) else { continue };
        seen.insert(*p);
        bad.extend(io_in(&path, &text));
    }
    assert!(
        bad.is_empty(),
        "pure modules name I/O (no tokio, filesystem, clock or cloud; time arrives as an argument):\n{}",
        bad.join("\n")
    );
    // Every entry names files that exist, so a move cannot drop a file from the check.
    let missing: Vec<_> = PURE.iter().filter(|p| !seen.contains(*p)).collect();
    assert!(missing.is_empty(), "pure modules without a source file: {missing:?}");
}

#[test]
fn the_purity_check_finds_io() {
    let f = "src/exec/sched.rs";
    assert_eq!(
        io_in(f, "async fn wait(d: u64) { tokio::time::sleep(d).await; }"),
        [format!("{f}: tokio"), format!("{f}: async"), format!("{f}: await")]
    );
    assert_eq!(io_in(f, "fn read() { let _ = std::fs::read(\"x\"); }"), [format!("{f}: std::fs")]);
    assert_eq!(io_in(f, "fn now(c: &dyn crate::clock::Clock) -> i64 { c.now_ms() }"), [format!("{f}: Clock")]);
    assert_eq!(io_in(f, "use crate::cloud::Cloud;"), [format!("{f}: Cloud")]);
    // Domain types of the cloud module, prose and strings are no I/O.
    assert!(io_in(f, "use crate::cloud::{CloudError, Snapshot}; // tokio\nlet s = \"std::fs\";").is_empty());
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

/// What the import check knows of the crate: the module of every file, and per
/// `mod.rs` the names it re-exports from each of its children (`pub use child::X`).
#[derive(Debug, Default)]
struct Modules {
    files: BTreeSet<String>,
    /// Per module: re-exported name -> the child module it comes from.
    reexports: BTreeMap<String, BTreeMap<String, String>>,
}

impl Modules {
    fn of(srcs: &[(String, String)]) -> Self {
        let files: BTreeSet<String> = srcs.iter().filter_map(|(p, _)| module_of(p)).filter(|m| !m.is_empty()).collect();
        let mut m = Modules { files, reexports: BTreeMap::new() };
        for (path, text) in srcs {
            if let Some(module) = module_of(path).filter(|_| path.ends_with("/mod.rs")) {
                let names = m.reexports_of(&module, &code_only(text));
                m.reexports.insert(module, names);
            }
        }
        m
    }

    /// Of `modules` alone, with nothing re-exported: for the planted violations.
    fn named(modules: &[&str]) -> Self {
        Modules { files: modules.iter().map(|m| m.to_string()).collect(), reexports: BTreeMap::new() }
    }

    /// The child module of `module` that a path inside it starts with (`local::X`,
    /// `self::local::X`), if any.
    fn child_of(&self, module: &str, path: &str) -> Option<String> {
        let path = path.trim().strip_prefix("self::").unwrap_or(path.trim());
        let first = path.split("::").next()?.trim();
        let child = if module.is_empty() { first.to_owned() } else { format!("{module}::{first}") };
        (path.contains("::") && self.files.contains(&child)).then_some(child)
    }

    /// The names a `mod.rs` re-exports from its children: `pub use child::{A, b::C}`.
    fn reexports_of(&self, module: &str, code: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for stmt in code.split(';') {
            let Some(rest) = reexport(stmt) else { continue };
            let Some(child) = self.child_of(module, rest) else { continue };
            for t in brace_tails(rest) {
                let full = format!("{}{t}", rest.split_once('{').map_or(rest, |(p, _)| p));
                let name = full.rsplit([':', ' ']).next().unwrap_or("").trim();
                if !name.is_empty() && name != "*" && name != "self" {
                    out.insert(name.to_owned(), child.clone());
                }
            }
        }
        out
    }
}

/// The path of a `pub use` (any visibility), the re-export of a module's face.
fn reexport(stmt: &str) -> Option<&str> {
    let stmt = stmt.trim();
    let rest = stmt.strip_prefix("pub ").or_else(|| stmt.strip_prefix("pub(crate) "))?;
    rest.trim_start().strip_prefix("use ").map(str::trim)
}

/// One level of braces expanded: `a::{b, c::D}` -> `b`, `c::D`; no braces -> ``.
fn brace_tails(path: &str) -> Vec<&str> {
    match path.split_once('{') {
        None => vec![""],
        Some((_, tail)) => tail.trim_end_matches('}').split(',').map(str::trim).filter(|t| !t.is_empty()).collect(),
    }
}

/// The modules a file depends on: what it imports with `use crate::...`,
/// `use super::...` or `use self::...`, and the same paths written out in code,
/// resolved to the longest module path that is a file (a name a `mod.rs` re-exports
/// resolves to the child it comes from). A `mod.rs` (or `lib.rs`) declaring and
/// re-exporting its children is their face, not a dependency; a `mod.rs` that uses a
/// child (a private `use child::..`, a `child::` path, a name re-exported from it
/// written in its code) depends on it, so a child that imports an item defined in
/// that `mod.rs` makes a loop.
fn imports(module: &str, is_mod_file: bool, code: &str, m: &Modules) -> BTreeSet<String> {
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
        let is_reexport = reexport(stmt).is_some();
        let Some(rest) = reexport(stmt).or_else(|| stmt.strip_prefix("use ")) else {
            continue;
        };
        let rest = rest.trim();
        let base = if let Some(r) = rest.strip_prefix("crate::") {
            (String::new(), r)
        } else if let Some(r) = rest.strip_prefix("super::") {
            (parent(module), r)
        } else if let Some(r) = rest.strip_prefix("self::") {
            (module.to_owned(), r)
        } else if is_mod_file && m.child_of(module, rest).is_some() {
            // `use child::X` in a mod.rs: a path relative to it.
            (module.to_owned(), rest)
        } else {
            continue;
        };
        let (prefix, _) = base.1.split_once('{').unwrap_or((base.1, ""));
        for t in brace_tails(base.1) {
            let full = format!("{prefix}{t}");
            let mut path = base.0.clone();
            // An item of the module the path starts from is a dependency on that file.
            let mut best = m.files.contains(&path).then(|| path.clone());
            for seg in full.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self") {
                let seg = seg.split([' ', '{', '}']).next().unwrap_or(seg);
                let next = if path.is_empty() { seg.to_owned() } else { format!("{path}::{seg}") };
                if m.files.contains(&next) {
                    best = Some(next.clone());
                    path = next;
                } else {
                    // An item: one a mod.rs re-exports is its child's.
                    if let Some(child) = m.reexports.get(&path).and_then(|r| r.get(seg)) {
                        best = Some(child.clone());
                    }
                    break;
                }
            }
            let Some(b) = best else { continue };
            let own_child = b.starts_with(&format!("{module}::")) || module.is_empty();
            if b != module && !(is_mod_file && own_child && is_reexport) {
                out.insert(b);
            }
        }
    }
    if is_mod_file {
        out.extend(children_used(module, code, m));
    }
    out
}

/// The children a `mod.rs` uses in its code, outside its `mod` declarations and `use`
/// statements: a `child::` path, or a name it re-exports from a child.
fn children_used(module: &str, code: &str, m: &Modules) -> BTreeSet<String> {
    let body: String = code
        .split_inclusive(';')
        .filter(|s| {
            let mut s = s.trim_start();
            // Past the attributes of the item: `#[cfg(test)]`, `#[doc(inline)]`.
            while let Some(rest) = s.strip_prefix("#[") {
                s = rest.split_once(']').map_or("", |(_, r)| r).trim_start();
            }
            let decl = s.strip_prefix("pub ").or_else(|| s.strip_prefix("pub(crate) ")).unwrap_or(s).trim_start();
            !(decl.starts_with("use ") || decl.starts_with("mod ") && !decl.contains('{'))
        })
        .collect();
    let mut out = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for word_at in body.match_indices(|c: char| ident(c)).map(|(at, _)| at) {
        if word_at > 0 && body[..word_at].ends_with(|c: char| ident(c) || c == ':') {
            continue;
        }
        let path: String = body[word_at..].chars().take_while(|c| ident(*c) || *c == ':').collect();
        if let Some(child) = m.child_of(module, &path) {
            out.insert(child);
        }
        let word = path.split("::").next().unwrap_or("");
        if let Some(child) = m.reexports.get(module).and_then(|r| r.get(word)) {
            out.insert(child.clone());
        }
    }
    out
}

/// The pairs of files that import each other, as `a <-> b`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = vec![];
    for (a, deps) in graph {
        for b in deps {
            if a < b && graph.get(b).is_some_and(|d| d.contains(a)) {
                out.push(format!("{a} <-> {b}"));
            }
        }
    }
    out
}

/// The code with `super::` inside an inline `mod name { .. }` (a file's tests) read as
/// `self::`: there it names the file's own module, not its parent.
fn inline_super(code: &str) -> String {
    let mut out = code.to_owned();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = out[from..].find("mod ").map(|a| a + from) {
        from = at + 4;
        if out[..at].ends_with(ident) {
            continue;
        }
        let rest = &out[at + 4..];
        let name = rest.chars().take_while(|c| ident(*c)).count();
        let after = rest[name..].trim_start();
        if name == 0 || !after.starts_with('{') {
            continue;
        }
        let open = out.len() - after.len();
        let mut depth = 0;
        let mut close = out.len();
        for (i, c) in out[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = out[open..close].replace("super::", "self::");
        out.replace_range(open..close, &inner);
    }
    out
}

/// The import graph of files given as (path, text).
fn import_graph(srcs: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let m = Modules::of(srcs);
    let mut graph = BTreeMap::new();
    for (path, text) in srcs {
        let Some(module) = module_of(path) else { continue };
        let is_mod_file = path.ends_with("/mod.rs") || path == "src/lib.rs" || path == "src/main.rs";
        graph.insert(module.clone(), imports(&module, is_mod_file, &inline_super(&code_only(text)), &m));
    }
    graph
}

#[test]
fn no_two_files_import_each_other() {
    let graph = import_graph(&sources(&["src"]));
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "files that import each other (give the shared item its own home):\n{}",
        cycles.join("\n")
    );
    // The check sees imports at all: the CLI's commands import the plan-file loader,
    // and a mod.rs that uses its child depends on it.
    assert!(graph["cli::commands"].contains("cli::plan_file"), "{:?}", graph["cli::commands"]);
    assert!(graph["cli"].contains("cli::commands"), "{:?}", graph["cli"]);
}

#[test]
fn the_import_check_finds_a_cycle() {
    let files = Modules::named(&["cli", "cli::a", "cli::b"]);
    assert!(imports("cli::a", false, "use super::b::thing;", &files).contains("cli::b"));
    assert!(imports("cli::b", false, "use super::{a, Failure};", &files).contains("cli::a"));
    assert!(imports("cli::b", false, "use crate::cli::a::{x, y};", &files).contains("cli::a"));
    assert!(imports("cli::b", false, "fn f() { super::a::run(); }", &files).contains("cli::a"));
    // A mod.rs declaring and re-exporting its child is not a dependency on it; one that
    // uses it is.
    assert!(imports("cli", true, "mod a; pub use a::X; pub(crate) use self::b::Y;", &files).is_empty());
    assert!(imports("cli", true, "use self::b::Y;", &files).contains("cli::b"));
    // A file's inline tests importing `super::*` import the file, not its parent.
    let tests = inline_super("use super::b::Z;\nmod tests { use super::*; }");
    assert_eq!(imports("cli::a", false, &tests, &files), BTreeSet::from(["cli::b".to_owned()]));
    assert!(!mentions("let tokio_like = 1;", "tokio"));
    assert!(mentions("use tokio::sync;", "tokio"));
    assert_eq!(code_only("let a = \"tokio\"; // std::fs\nb"), "let a = \"\"; \nb");
}

#[test]
fn the_import_check_finds_a_loop_through_a_mod_rs() {
    let planted = |parent: &str, child: &str| {
        let srcs = [
            ("src/store/mod.rs".to_owned(), parent.to_owned()),
            ("src/store/local.rs".to_owned(), child.to_owned()),
            ("src/store/error.rs".to_owned(), "//! e\npub struct StoreError;".to_owned()),
        ];
        cycles(&import_graph(&srcs))
    };
    let child_imports_parent = "//! l\nuse super::Journal;\npub struct LocalStore;";
    // The parent builds its child and defines what the child imports: a loop.
    let builds =
        "//! s\nmod local;\npub use local::LocalStore;\npub struct Journal;\nfn open() -> LocalStore { LocalStore }";
    assert_eq!(planted(builds, child_imports_parent), vec!["store <-> store::local"]);
    let by_path = "//! s\nmod local;\npub struct Journal;\nfn open() { local::LocalStore::new(); }";
    assert_eq!(planted(by_path, child_imports_parent), vec!["store <-> store::local"]);
    // Declaring and re-exporting it alone is the module's face.
    let face = "//! s\nmod local;\npub use local::LocalStore;\npub struct Journal;";
    assert!(planted(face, child_imports_parent).is_empty());
    // A child importing a sibling re-exported by the parent imports the sibling.
    let child_imports_sibling = "//! l\nuse super::StoreError;\npub struct LocalStore;";
    let reexports_sibling = "//! s\nmod error;\nmod local;\npub use error::StoreError;\npub use local::LocalStore;\nfn open() -> LocalStore { LocalStore }";
    assert!(planted(reexports_sibling, child_imports_sibling).is_empty());
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
                let assigned = (rest.starts_with('=') && !rest.starts_with("=="))
                    || ["|=", "&=", "^=", ".take()", ".replace(", ".insert(", ".get_or_insert"]
                        .iter()
                        .any(|op| rest.starts_with(op));
                if !ident_goes_on && assigned {
                    out.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        // A run written whole (`VolumeRun { step: .., ..v }`), not a signature.
        for (at, _) in line.match_indices("VolumeRun {") {
            let before = line[..at].trim_end();
            if !(before.ends_with("->") || before.ends_with("struct") || before.ends_with("impl")) {
                out.push(format!("{path}:{}: {}", n + 1, line.trim()));
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
    assert_eq!(state_assignments("x.rs", "v.in_flight |= true; let f = v.failure.take();").len(), 2);
    assert_eq!(state_assignments("x.rs", "let n = VolumeRun { step: Step::Done, ..v.clone() };").len(), 1);
    assert!(state_assignments("x.rs", "fn f(v: &VolumeRun) -> VolumeRun {\n    engine::fail(v)\n}").is_empty());
    assert!(
        state_assignments("x.rs", "// v.step = Step::Done\n#[cfg(test)]\nmod t { fn f() { v.step = S; } }").is_empty()
    );
}

/// Where a file outside `src/cli/exit.rs` picks an exit code itself, as `path:line:
/// text`: a constant of the table (`exit::USAGE`), a numeric code given to the process
/// (`ExitCode::from(2)`, `process::exit`), or written into a document or log line
/// (`"exit_code": 2`).
fn exit_code_choices(path: &str, text: &str) -> Vec<String> {
    let mut out = vec![];
    let code = code_only(text);
    let constant = |rest: &str| {
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    for (n, line) in code.lines().enumerate() {
        let picks = line.match_indices("exit::").any(|(at, _)| {
            let rest = &line[at + "exit::".len()..];
            // `exit::USAGE`, or the constants imported by name: `use super::exit::{USAGE, ..}`.
            constant(rest)
                || rest.strip_prefix('{').is_some_and(|names| names.split([',', '}']).map(str::trim).any(constant))
        }) || line
            .match_indices("ExitCode::from(")
            .any(|(at, _)| line[at + "ExitCode::from(".len()..].trim_start().starts_with(|c: char| c.is_ascii_digit()))
            || mentions(line, "process::exit")
            || line.contains("ExitCode::SUCCESS")
            || line.contains("ExitCode::FAILURE");
        if picks {
            out.push(format!("{path}:{}: {}", n + 1, line.trim()));
        }
    }
    // The key of a document or a log field survives only in the text with its strings.
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("exit_code") {
            let rest = line[at + "exit_code".len()..].trim_start_matches(['"', ' ']);
            let value = rest.strip_prefix(':').or_else(|| rest.strip_prefix('=')).map(str::trim_start);
            if value.is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())) {
                out.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn exit_codes_are_chosen_only_in_cli_exit() {
    let mut bad = vec![];
    for (path, text) in sources(&["src"]) {
        if path != "src/cli/exit.rs" {
            bad.extend(exit_code_choices(&path, &text));
        }
    }
    assert!(
        bad.is_empty(),
        "exit codes picked outside src/cli/exit.rs (say what went wrong with a Failure or a Done, and map it there):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_exit_code_check_finds_a_choice() {
    assert_eq!(exit_code_choices("x.rs", "Err(Failure::new(exit::USAGE, m))").len(), 1);
    assert_eq!(exit_code_choices("x.rs", "return ExitCode::from(2);").len(), 1);
    assert_eq!(exit_code_choices("x.rs", "use super::exit::{Done, USAGE};").len(), 1);
    assert_eq!(exit_code_choices("x.rs", "std::process::exit(1);").len(), 1);
    assert_eq!(exit_code_choices("x.rs", "json!({\"status\": \"error\", \"exit_code\": 2})").len(), 1);
    assert_eq!(exit_code_choices("x.rs", "tracing::error!(exit_code = 1, \"x\");").len(), 1);
    // Naming how a command ended, or passing a code the table gave, is no choice.
    assert!(exit_code_choices("x.rs", "use super::exit::Done; Ok(Done::Run(status))").is_empty());
    assert!(exit_code_choices("x.rs", "ExitCode::from(exit::of_result(&r)); json!({\"exit_code\": code})").is_empty());
    assert!(exit_code_choices("x.rs", "// exit::USAGE in prose\nlet a = 1;").is_empty());
}

/// Where a file matches the output format (`Format::Json`, `Format::Text`) outside
/// `src/cli/render.rs`, as `path:line: text`: in a `match` arm, an `if let`, a
/// comparison or `matches!`. Naming a format as a value (a default, an argument, what a
/// command's format is) is no match.
fn format_matches(path: &str, text: &str) -> Vec<String> {
    let code = code_only(text);
    let mut out = vec![];
    for (n, line) in code.lines().enumerate() {
        for variant in ["Format::Json", "Format::Text"] {
            for (at, _) in line.match_indices(variant) {
                if line[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue; // LogFormat::Json; a path to it (args::Format::Json) is the same
                }
                let before = line[..at].trim_end();
                let after = line[at + variant.len()..].trim_start();
                let pattern_after = after.starts_with("=>")
                    || after.starts_with("==")
                    || after.starts_with("!=")
                    || (after.starts_with('|') && !after.starts_with("||"))
                    || (after.starts_with('=') && !after.starts_with("=="));
                let pattern_before = before.ends_with("==")
                    || before.ends_with("!=")
                    || before.ends_with("let")
                    || (before.ends_with('|') && !before.ends_with("||"))
                    || before.rfind("matches!(").is_some_and(|m| !before[m..].contains(')'));
                if pattern_after || pattern_before {
                    out.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    out
}

#[test]
fn the_output_format_is_matched_only_in_render() {
    let mut bad = vec![];
    for (path, text) in sources(&["src"]) {
        if path != "src/cli/render.rs" {
            bad.extend(format_matches(&path, &text));
        }
    }
    assert!(
        bad.is_empty(),
        "the output format matched outside src/cli/render.rs (hand render::emit a value and its text):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_format_check_finds_a_match() {
    assert_eq!(
        format_matches("x.rs", "match format {\n    Format::Json => a(),\n    Format::Text => b(),\n}").len(),
        2
    );
    assert_eq!(format_matches("x.rs", "if format == Format::Text { print!(\"{}\", t) }").len(), 1);
    assert_eq!(format_matches("x.rs", "if let Format::Json = format {}").len(), 1);
    assert_eq!(format_matches("x.rs", "let j = matches!(format, Format::Json);").len(), 1);
    assert_eq!(format_matches("x.rs", "Format::Json | Format::Text => {}").len(), 2);
    assert_eq!(format_matches("x.rs", "args::Format::Json => a(),").len(), 1);
    assert_eq!(format_matches("x.rs", "if Format::Json != format {}").len(), 1);
    // Values are not matches; neither is the log format.
    assert!(
        format_matches("x.rs", "#[arg(default_value_t = Format::Text)]\nCommand::Schema => Format::Json,").is_empty()
    );
    assert!(format_matches("x.rs", "emit(Format::Json, &doc, text); if f == LogFormat::Json {}").is_empty());
}

/// The string literals of a file's code (comments left out), each as (line number,
/// the text of its line before it, its content as written, escapes unresolved).
fn string_literals(text: &str) -> Vec<(usize, &str, &str)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    // Moves past `text[from..to]`, counting the lines it ends.
    let pass = |from: usize, to: usize, line: &mut usize, line_start: &mut usize| {
        for (at, _) in text[from..to].match_indices('\n') {
            *line += 1;
            *line_start = from + at + 1;
        }
        to
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            i = text[i..].find('\n').map_or(b.len(), |e| i + e);
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = pass(i, end, &mut line, &mut line_start);
        } else if b[i] == b'r'
            && (i == 0 || !ident(b[i - 1]) || b[i - 1] == b'b')
            && b[i + 1..].iter().find(|&&c| c != b'#') == Some(&b'"')
        {
            // A raw string: r"...", r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let start = i + 2 + hashes;
            let close = format!("\"{}", "#".repeat(hashes));
            let end = text[start..].find(&close).map_or(b.len(), |e| start + e);
            out.push((line, &text[line_start..i], &text[start..end]));
            i = pass(i, (end + close.len()).min(b.len()), &mut line, &mut line_start);
        } else if b[i] == b'"' {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end] != b'"' {
                end += if b[end] == b'\\' { 2 } else { 1 };
            }
            let end = end.min(b.len());
            out.push((line, &text[line_start..i], &text[start..end]));
            i = pass(i, (end + 1).min(b.len()), &mut line, &mut line_start);
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') {
            i += 4; // '\"'
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // '"'
        } else {
            if b[i] == b'\n' {
                line += 1;
                line_start = i + 1;
            }
            i += 1;
        }
    }
    out
}

/// A file's text up to its test module (`#[cfg(test)] mod tests { .. }`); a test module
/// declared in a file of its own (`#[cfg(test)] mod tests;`) is skipped over.
fn before_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]").map(|a| from + a) {
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        let body = rest.strip_prefix("mod ").map(|r| r.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
        if body.is_some_and(|r| r.trim_start().starts_with('{')) {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// The tag keys and `snapferry:step` values of the contract's tag table written as
/// string literals, as `path:line: text`: they belong in `src/tags.rs` (`StepTag`,
/// `TAG_*`), which every other file names them through. Test code is left out, and so
/// are the step machine's names in `src/engine/` (a match arm on `Step`, such as
/// `Step::Copy => "copy"` or the `options.timeouts` field of a wait): words it shares
/// with the tag values, in another vocabulary.
fn tag_literals(path: &str, text: &str) -> Vec<String> {
    use snapferry::tags::*;
    let keys = [TAG_PLAN, TAG_RUN, TAG_SOURCE_VOLUME, TAG_STEP, TAG_CHAIN_STARTED, TAG_VERIFY];
    let words: Vec<&str> = StepTag::ALL.iter().map(|t| t.as_str()).chain(keys).collect();
    let lines: Vec<&str> = text.lines().collect();
    string_literals(before_tests(text))
        .into_iter()
        .filter(|(_, _, lit)| words.contains(lit))
        .filter(|(_, before, _)| {
            let step_arm = before.trim_start().starts_with("Step::") && before.contains("=>");
            !(path.starts_with("src/engine/") && step_arm)
        })
        .map(|(n, _, _)| format!("{path}:{n}: {}", lines.get(n - 1).map_or("", |l| l.trim())))
        .collect()
}

#[test]
fn the_tags_are_written_only_in_their_home() {
    let srcs = sources(&["src"]);
    let test_only = test_only_files(&srcs);
    let mut bad = vec![];
    for (path, text) in &srcs {
        if path == "src/tags.rs" || test_only.contains(path) {
            continue;
        }
        bad.extend(tag_literals(path, text));
    }
    assert!(
        bad.is_empty(),
        "tag keys or snapferry:step values written out of src/tags.rs (use TAG_* and StepTag):\n{}",
        bad.join("\n")
    );
    // The check sees the home's literals at all.
    let home = std::fs::read_to_string(root().join("src/tags.rs")).unwrap();
    assert!(tag_literals("src/tags.rs", &home).len() >= 10, "{:?}", tag_literals("src/tags.rs", &home));
}

#[test]
fn the_tag_check_finds_a_step_value_written_out() {
    let f = "src/exec/cleanup.rs";
    assert_eq!(
        tag_literals(
            f,
            "fn f(s: &Snapshot) -> bool {\n    s.tags.get(TAG_STEP).map(String::as_str) == Some(\"copy\")\n}"
        ),
        [format!("{f}:2: s.tags.get(TAG_STEP).map(String::as_str) == Some(\"copy\")")]
    );
    assert_eq!(tag_literals(f, "let k = r\"snapferry:step\";").len(), 1);
    assert_eq!(tag_literals(f, "let t = ctx.tags(v, \"volume\", None);").len(), 1);
    // Other words, prose, the engine's step names and tests are not the tags.
    assert!(tag_literals(f, "let d = \"re-encrypted snapshot\"; // \"copy\"\n/* \"volume\" */").is_empty());
    assert!(tag_literals("src/engine/mod.rs", "            Step::Copy => \"copy\",").is_empty());
    assert_eq!(tag_literals("src/exec/act.rs", "            Step::Copy => \"copy\",").len(), 1);
    assert!(tag_literals(f, "fn g() {}\n#[cfg(test)]\nmod tests {\n    const S: &str = \"snapshot\";\n}").is_empty());
    assert_eq!(tag_literals(f, "#[cfg(test)]\nmod tests;\nconst S: &str = \"snapshot\";").len(), 1);
}
