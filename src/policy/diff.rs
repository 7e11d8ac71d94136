//! A line diff of two policy documents for the dry-run: both are pretty-printed the
//! same way first, so the diff shows what changes in content, not in layout.

use serde_json::Value;

/// Lines of `old_json` and `new_json`, each prefixed `"  "` (kept), `"- "` (removed) or
/// `"+ "` (added), one per line with a trailing newline. Valid JSON is pretty-printed
/// before comparing; anything else is compared as written.
///
/// A longest-common-subsequence table is quadratic, which is fine here: a key policy is
/// at most 32 KB, a few hundred lines.
pub fn diff(old_json: &str, new_json: &str) -> String {
    let old = normalize(old_json);
    let new = normalize(new_json);
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();

    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }

    let mut out = String::new();
    let mut push = |prefix: &str, line: &str| {
        out.push_str(prefix);
        out.push_str(line);
        out.push('\n');
    };
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            push("  ", a[i]);
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            // Removals before additions, as readers of unified diffs expect.
            push("- ", a[i]);
            i += 1;
        } else {
            push("+ ", b[j]);
            j += 1;
        }
    }
    a[i..].iter().for_each(|l| push("- ", l));
    b[j..].iter().for_each(|l| push("+ ", l));
    out
}

fn normalize(doc: &str) -> String {
    match serde_json::from_str::<Value>(doc) {
        Ok(v) => format!("{v:#}"),
        Err(_) => doc.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_documents_have_no_change_lines() {
        let d = diff(r#"{"a":1}"#, "{\n  \"a\": 1\n}");
        assert_eq!(d, "  {\n    \"a\": 1\n  }\n");
    }

    #[test]
    fn not_json_is_diffed_as_text() {
        assert_eq!(diff("x\ny", "x\nz"), "  x\n- y\n+ z\n");
    }
}
