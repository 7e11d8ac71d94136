//! Reading plan text as YAML: the parser settings and input budget, positions in the
//! text, and the translation of parser and serde errors into [`PlanIssue`]s that name
//! their field.
//!
//! Serde stops at the first error and knows no field path, so the text is first read
//! into an untyped [`Node`] tree that records where every key and value sits. That
//! pass reports YAML syntax errors as such (a typed read can trip over a structure
//! error before it reaches the real syntax error further on), and the tree gives each
//! later serde error its dotted field path.

use miette::SourceSpan;
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DuplicateKeyPolicy, Error, Location, MessageFormatter, Spanned, UserMessageFormatter};

use super::error::PlanIssue;

/// The largest plan text read at all. A plan with hundreds of volumes is a few tens of
/// kilobytes; anything near this is not a plan.
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;

/// Parser settings shared by both passes. The budget is far below serde-saphyr's
/// defaults because plans are small: it bounds what a hostile or runaway file (an alias
/// bomb, deep nesting) can cost before anything is validated.
pub(crate) fn options(duplicate_keys: DuplicateKeyPolicy) -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_nodes: 50_000,
            max_depth: 32,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_merge_keys: 1_000,
            max_total_scalar_bytes: MAX_PLAN_BYTES,
            max_total_comment_bytes: MAX_PLAN_BYTES,
            max_recorded_anchor_events: 200_000,
            max_recorded_anchor_bytes: MAX_PLAN_BYTES,
        },
        // Aliases are replayed after the budget's pre-scan, so they need their own cap.
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 50_000,
        },
        // YAML 1.1 spellings like `yes` and `off` are rejected for booleans: a plan
        // reads the same in every YAML 1.2 tool.
        strict_booleans: true,
        duplicate_keys: duplicate_keys,
        // Positions are reported by PlanIssue; serde-saphyr's own snippets would
        // duplicate them.
        with_snippet: false,
    }
}

/// The plan text with its line starts, to turn parser locations (1-based line and
/// character column) into byte spans.
pub(crate) struct SourceText<'a> {
    pub text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    pub fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceText { text, line_starts }
    }

    /// Byte offset of a 1-based line and character column, clamped to the text.
    fn offset(&self, line: usize, column: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        start + rest.char_indices().nth(column.saturating_sub(1)).map_or(rest.len(), |(i, _)| i)
    }

    /// The line, column and byte span of a location, `chars` characters long. An
    /// unknown location (line 0) is reported at the start of the file.
    fn place(&self, loc: &Location, chars: usize) -> ((usize, usize), SourceSpan) {
        let (line, column) = match (loc.line(), loc.column()) {
            (0, _) => (1, 1),
            (l, c) => (l as usize, (c as usize).max(1)),
        };
        let start = self.offset(line, column);
        let end = self.text[start..].char_indices().nth(chars).map_or(self.text.len(), |(i, _)| start + i);
        ((line, column), SourceSpan::from(start..end))
    }

    /// An issue about the value at `loc`.
    pub fn issue(&self, loc: &Location, field: &str, message: impl Into<String>) -> PlanIssue {
        let (pos, span) = self.place(loc, loc.span().len() as usize);
        PlanIssue::new(pos, span, field, message)
    }

    /// The text of the scalar at `loc`, as written (quotes included).
    pub fn snippet(&self, loc: &Location) -> &'a str {
        let (_, span) = self.place(loc, loc.span().len() as usize);
        &self.text[span.offset()..span.offset() + span.len()]
    }
}

/// An untyped YAML node with the positions of every key and value below it.
#[derive(Debug)]
pub(crate) enum Node {
    /// What kind of scalar, in words: "a string", "a number", "true or false", "nothing".
    Scalar(&'static str),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    /// What this node is, in words, for "found ..." in messages.
    fn describe(&self) -> &'static str {
        match self {
            Node::Scalar(kind) => kind,
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar("true or false"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar("a number"))
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar("a number"))
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar("a string"))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar("binary data"))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar("nothing"))
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar("nothing"))
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
        }

        deserializer.deserialize_any(NodeVisitor)
    }
}

/// The first pass: the untyped tree, or the YAML syntax error that prevents it.
pub(crate) fn read_tree(src: &SourceText) -> Result<Spanned<Node>, PlanIssue> {
    // Duplicate keys pass through here so the tree holds both and the typed pass can
    // report the second one at its own position and path.
    let options = options(DuplicateKeyPolicy::PassThrough);
    serde_saphyr::from_str_with_options::<Spanned<Node>>(src.text, options).map_err(|e| issue_from_error(src, None, &e))
}

/// Which node an error location refers to: a key (unknown or repeated keys) or a value
/// (type errors). A mapping value starts where its first key does, so both can match.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Key,
    Value,
}

/// The dotted path and node at `loc`, searching keys or values.
fn find<'t>(node: &'t Spanned<Node>, loc: &Location, part: Part, path: &str) -> Option<(String, &'t Node)> {
    let here = |l: &Location| l.line() == loc.line() && l.column() == loc.column();
    // Values: the outermost match wins, since a mapping or list starts where its
    // first child does and a type error is about the container.
    if part == Part::Value && here(&node.referenced) {
        return Some((path.to_owned(), &node.value));
    }
    match &node.value {
        Node::Scalar(_) => None,
        Node::Seq(items) => {
            items.iter().enumerate().find_map(|(i, item)| find(item, loc, part, &format!("{path}[{i}]")))
        }
        Node::Map(entries) => entries.iter().find_map(|(key, value)| {
            let child = if path.is_empty() { key.value.clone() } else { format!("{path}.{}", key.value) };
            if part == Part::Key && here(&key.referenced) {
                Some((child, &value.value))
            } else {
                find(value, loc, part, &child)
            }
        }),
    }
}

/// The innermost error, which says what went wrong, and where the user wrote it: for
/// a value reached through an alias that is the alias, not the anchor it points to.
fn unwrap_error(err: &Error) -> (&Error, Option<Location>) {
    match err {
        Error::AliasError { error, locations, .. } => {
            let (inner, _) = unwrap_error(error);
            (inner, Some(locations.reference_location))
        }
        Error::WithSnippet { error, .. } => unwrap_error(error),
        other => (other, None),
    }
}

/// What a Rust type expects, in the words of a plan author.
fn expected_kind(ty: &str) -> &str {
    match ty {
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" | "isize" | "usize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        // Any scalar target asks for a "string scalar" first; the type is not known here.
        "string scalar" => "a single value",
        "string" => "a string",
        "mapping start" | "mapping" => "a mapping",
        "sequence start" | "sequence" => "a list",
        other => other,
    }
}

fn budget_message(breach: &BudgetBreach) -> String {
    let what = match breach {
        BudgetBreach::Events { .. } | BudgetBreach::Nodes { .. } => "too many YAML nodes",
        BudgetBreach::Depth { .. } => "nesting too deep",
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => "too many anchors or aliases",
        BudgetBreach::ScalarBytes { .. } | BudgetBreach::CommentBytes { .. } => "too much text",
        BudgetBreach::Documents { .. } => "more than one YAML document",
        BudgetBreach::MergeKeys { .. } => "too many merge keys",
        _ => "more than a plan file may hold",
    };
    format!("expected a plan of ordinary size, found {what}: the plan parser's limits guard against runaway files")
}

/// One error from either pass as a [`PlanIssue`]. With the tree, the issue names the
/// field; without it (a syntax error) the field is empty.
pub(crate) fn issue_from_error(src: &SourceText, tree: Option<&Spanned<Node>>, err: &Error) -> PlanIssue {
    let (err, use_site) = unwrap_error(err);
    // Where the offending text is, and where the field that holds it is (they differ
    // only for aliases).
    let value_at = err.location().unwrap_or(Location::UNKNOWN);
    let loc = use_site.unwrap_or(value_at);
    let locate = |part| tree.and_then(|t| find(t, &loc, part, ""));
    let field_of = |part| locate(part).map(|(path, _)| path).unwrap_or_default();
    let found_value = || {
        let text = src.snippet(&value_at);
        match locate(Part::Value) {
            Some((_, node)) if text.is_empty() || !matches!(node, Node::Scalar(_)) => node.describe().to_owned(),
            Some((_, node)) => format!("{} `{text}`", node.describe()),
            None => format!("`{text}`"),
        }
    };

    let (field, message) = match err {
        Error::SerdeUnknownField { field, expected, .. } => {
            (field_of(Part::Key), format!("unknown key `{field}`: expected one of {}", expected.join(", ")))
        }
        Error::DuplicateMappingKey { key, .. } => (
            field_of(Part::Key),
            match key {
                Some(k) => format!("expected each key once, found `{k}` again"),
                None => "expected each key once, found a repeated key".to_owned(),
            },
        ),
        Error::SerdeMissingField { field, .. } => (field_of(Part::Value), format!("missing required key `{field}`")),
        Error::InvalidScalar { ty, .. } => {
            (field_of(Part::Value), format!("expected {}, found {}", expected_kind(ty), found_value()))
        }
        Error::Unexpected { expected, .. } => {
            (field_of(Part::Value), format!("expected {}, found {}", expected_kind(expected), found_value()))
        }
        Error::SerdeInvalidType { unexpected, expected, .. }
        | Error::SerdeInvalidValue { unexpected, expected, .. } => {
            (field_of(Part::Value), format!("expected {expected}, found {unexpected}"))
        }
        Error::InvalidBooleanStrict { .. } => {
            (field_of(Part::Value), format!("expected true or false, found `{}`", src.snippet(&loc)))
        }
        Error::NullIntoString { .. } => {
            (field_of(Part::Value), "expected a string, found nothing (an empty value)".to_owned())
        }
        Error::MultipleDocuments { .. } => {
            (String::new(), "expected one YAML document, found a second one after `---`".to_owned())
        }
        Error::Budget { breach, .. } => (String::new(), budget_message(breach)),
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => (
            String::new(),
            "expected a plan of ordinary size, found aliases that expand too far: the plan \
             parser's limits guard against runaway files"
                .to_owned(),
        ),
        Error::Eof { .. } => (String::new(), "invalid YAML: unexpected end of file".to_owned()),
        other => {
            let text = UserMessageFormatter.format_message(other);
            let text = text.trim_end_matches('.');
            // Parser messages are syntax errors; others name a field when one is found.
            let field = field_of(Part::Value);
            if field.is_empty() { (String::new(), format!("invalid YAML: {text}")) } else { (field, text.to_owned()) }
        }
    };
    src.issue(&loc, &field, lowercase_first(&message))
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_characters_not_bytes() {
        let src = SourceText::new("a: é\nb: x\n");
        assert_eq!(src.offset(1, 1), 0);
        assert_eq!(src.offset(1, 5), 5);
        assert_eq!(src.offset(2, 4), 9);
        assert_eq!(src.offset(9, 1), src.text.len());
    }

    #[test]
    fn tree_finds_paths_of_keys_and_values() {
        let src = SourceText::new("a:\n  b: [1, {c: x}]\n");
        let tree = read_tree(&src).unwrap();
        let at = |line: usize, column: usize| {
            let padded = format!("{}{}x", "\n".repeat(line - 1), " ".repeat(column - 1));
            serde_saphyr::from_str::<Spanned<String>>(&padded).unwrap().referenced
        };
        assert_eq!(find(&tree, &at(2, 3), Part::Key, "").unwrap().0, "a.b");
        assert_eq!(find(&tree, &at(2, 6), Part::Value, "").unwrap().0, "a.b");
        assert_eq!(find(&tree, &at(2, 7), Part::Value, "").unwrap().0, "a.b[0]");
        assert_eq!(find(&tree, &at(2, 11), Part::Key, "").unwrap().0, "a.b[1].c");
    }

    #[test]
    fn syntax_errors_have_no_field() {
        let src = SourceText::new("a: 'open\n");
        let issue = read_tree(&src).unwrap_err();
        assert_eq!(issue.field, "");
        assert!(issue.message.starts_with("invalid YAML"), "{}", issue.message);
    }
}
