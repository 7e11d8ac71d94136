//! The plan's JSON Schema (`snapferry schema`) as JSON Schema tools read it, and the
//! check that keeps snapferry and the schema in agreement on scalar types.
//!
//! The schema is derived from the raw structs (`raw`), then made fit for strict
//! validators: an `$id`, no integer `format`s (`uint32` is no format JSON Schema or
//! Ajv knows), and every `required` inside a `oneOf` branch naming a property that
//! branch declares (Ajv's strictRequired).
//!
//! YAML reads `keep: "7"` as a string and `name: 123` as a number, and serde would
//! happily turn each into what the field wants; a JSON Schema tool (an editor, CI)
//! refuses both. [`scalar_types`] walks the untyped tree with the schema and refuses
//! a scalar whose YAML type the schema does not allow, so what one accepts the other
//! accepts too.

use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::error::PlanIssue;
use super::yaml::{Node, SourceText};

/// Where the schema says it lives: a name, not a place (the schema is printed by the
/// binary of the same version).
pub const SCHEMA_ID: &str = "urn:snapferry:plan:v1";

/// The schema of a plan file, as printed by `snapferry schema`.
pub fn generate(raw: Value) -> Value {
    let mut schema = raw;
    strip_integer_formats(&mut schema);
    declare_required_in_branches(&mut schema);
    if let Value::Object(top) = &mut schema {
        // `$id` first, where readers look for it.
        let mut with_id = Map::new();
        if let Some(dialect) = top.remove("$schema") {
            with_id.insert("$schema".into(), dialect);
        }
        with_id.insert("$id".into(), Value::from(SCHEMA_ID));
        with_id.append(top);
        *top = with_id;
    }
    schema
}

/// Drops schemars' `format: uint32` and friends: JSON Schema defines no such format,
/// strict validators refuse unknown ones, and `minimum`/`maximum` already bound them.
fn strip_integer_formats(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let integer = m.get("format").and_then(Value::as_str).is_some_and(|f| {
                let digits = f.trim_start_matches("uint").trim_start_matches("int");
                digits != f && (digits.is_empty() || digits.chars().all(|c| c.is_ascii_digit()))
            });
            if integer {
                m.remove("format");
            }
            m.values_mut().for_each(strip_integer_formats);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_integer_formats),
        _ => {}
    }
}

/// In a `oneOf`/`anyOf` branch that only says which keys are required, declares those
/// keys (as `true`, leaving their schema to the parent's `properties`), so strict
/// validators see each required key defined where it is required.
fn declare_required_in_branches(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for key in ["oneOf", "anyOf", "allOf"] {
                if let Some(Value::Array(branches)) = m.get_mut(key) {
                    for b in branches.iter_mut() {
                        let Value::Object(b) = b else { continue };
                        let Some(Value::Array(req)) = b.get("required").cloned() else { continue };
                        let props = b.entry("properties").or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(props) = props {
                            for r in req.iter().filter_map(Value::as_str) {
                                props.entry(r.to_owned()).or_insert(Value::Bool(true));
                            }
                        }
                    }
                }
            }
            m.values_mut().for_each(declare_required_in_branches);
        }
        Value::Array(a) => a.iter_mut().for_each(declare_required_in_branches),
        _ => {}
    }
}

/// Every scalar of the plan whose YAML type the schema does not allow at its place: a
/// quoted number or boolean where a number or boolean is expected, a number or boolean
/// where a string is. Places the schema does not describe (unknown keys) are left to
/// the typed pass.
pub(crate) fn scalar_types(tree: &Spanned<Node>, schema: &Value, src: &SourceText) -> Vec<PlanIssue> {
    let mut issues = Vec::new();
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    walk(tree, schema, &defs, "", src, &mut issues);
    issues
}

/// The branches a schema allows, `$ref`s resolved and `null` dropped.
fn branches<'s>(schema: &'s Value, defs: &'s Value, out: &mut Vec<&'s Value>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        if let Some(target) = r.strip_prefix("#/$defs/").and_then(|name| defs.get(name)) {
            branches(target, defs, out);
        }
        return;
    }
    let mut split = false;
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = schema.get(key)
            && alts.iter().any(|a| a.get("$ref").is_some() || a.get("type").is_some())
        {
            split = true;
            alts.iter().for_each(|a| branches(a, defs, out));
        }
    }
    if !split && schema.get("type") != Some(&Value::from("null")) {
        out.push(schema);
    }
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn walk(node: &Spanned<Node>, schema: &Value, defs: &Value, path: &str, src: &SourceText, out: &mut Vec<PlanIssue>) {
    let mut alts = Vec::new();
    branches(schema, defs, &mut alts);
    match &node.value {
        Node::Scalar(kind) => {
            // A branch that names no type (a `const`, an `enum`, `true`) could take any
            // scalar: the typed pass decides.
            if alts.is_empty() || alts.iter().any(|s| types(s).is_empty()) {
                return;
            }
            let allowed: Vec<&str> = alts.iter().flat_map(|s| types(s)).collect();
            let fits = match *kind {
                "a string" => allowed.contains(&"string"),
                "a number" => allowed.iter().any(|t| *t == "integer" || *t == "number"),
                "true or false" => allowed.contains(&"boolean"),
                // Nothing, binary data: the typed pass has its own words for them.
                _ => true,
            };
            if fits {
                return;
            }
            let text = src.snippet(&node.referenced);
            let message = if *kind == "a string" {
                let bare = text.trim_matches(|c| c == '"' || c == '\'');
                format!("expected {}, found the string {text}: write it without quotes, {bare}", wanted(&allowed))
            } else {
                format!("expected {}, found {kind} `{text}`: put it in quotes, \"{text}\"", wanted(&allowed))
            };
            out.push(src.issue(&node.referenced, path, message));
        }
        Node::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = alts.iter().find_map(|a| a.get("items")) {
                    walk(item, s, defs, &format!("{path}[{i}]"), src, out);
                }
            }
        }
        Node::Map(entries) => {
            for (key, value) in entries {
                let child = if path.is_empty() { key.value.clone() } else { format!("{path}.{}", key.value) };
                let s = alts.iter().find_map(|a| {
                    a.get("properties")
                        .and_then(|p| p.get(&key.value))
                        .or_else(|| a.get("additionalProperties").filter(|ap| ap.is_object()))
                });
                if let Some(s) = s {
                    walk(value, s, defs, &child, src, out);
                }
            }
        }
    }
}

fn wanted(types: &[&str]) -> &'static str {
    if types.contains(&"integer") {
        "a whole number"
    } else if types.contains(&"number") {
        "a number"
    } else if types.contains(&"boolean") {
        "true or false"
    } else {
        "a string"
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::yaml::read_tree;

    fn issues(schema: &Value, text: &str) -> Vec<String> {
        let src = SourceText::new(text);
        let tree = read_tree(&src).unwrap();
        scalar_types(&tree, schema, &src).iter().map(|i| format!("{}: {}", i.field, i.message)).collect()
    }

    #[test]
    fn a_scalar_of_a_type_the_schema_refuses_is_named_with_its_field() {
        let schema = json!({
            "type": "object",
            "properties": {
                "keep": {"type": ["integer", "null"]},
                "name": {"type": "string"},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
            },
            "$defs": {"Item": {"type": "object", "properties": {"on": {"type": "boolean"}}}},
        });
        assert_eq!(issues(&schema, "keep: 7\nname: x\ntags: {a: b}\nlist: [{on: true}]\n"), Vec::<String>::new());
        let found = issues(&schema, "keep: '7'\nname: 12\ntags: {a: 1}\nlist: [{on: \"true\"}]\n");
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("keep: expected a whole number, found the string '7'"), "{found:?}");
        assert!(found[1].starts_with("name: expected a string, found a number `12`"), "{found:?}");
        assert!(found[2].starts_with("tags.a: expected a string"), "{found:?}");
        assert!(found[3].starts_with("list[0].on: expected true or false"), "{found:?}");
    }

    #[test]
    fn a_branch_without_a_type_takes_any_scalar() {
        // `lock: none` or a mapping: the typed pass decides what the string may be.
        let schema = json!({
            "type": "object",
            "properties": {"lock": {"anyOf": [{"const": "none"}, {"$ref": "#/$defs/Lock"}]}},
            "$defs": {"Lock": {"type": "object", "properties": {"days": {"type": "integer"}}}},
        });
        assert_eq!(issues(&schema, "lock: none\n"), Vec::<String>::new());
        assert_eq!(issues(&schema, "lock: {days: \"3\"}\n").len(), 1);
    }

    #[test]
    fn the_schema_has_an_id_and_no_integer_formats() {
        let s = generate(json!({"$schema": "x", "properties": {"n": {"type": "integer", "format": "uint32"},
            "d": {"type": "string", "format": "date-time"}}}));
        assert_eq!(s["$id"], SCHEMA_ID);
        assert!(s["properties"]["n"].get("format").is_none());
        assert_eq!(s["properties"]["d"]["format"], "date-time", "real formats stay");
    }
}
