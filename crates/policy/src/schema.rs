//! The Cedar schema for MCP, completed with the argument types the loaded
//! policies use, and the scan that finds those arguments.

use crate::source::{located, Parsed, SourceError};
use cedar_policy::{Schema, ValidationMode, Validator};
use portcullis_config::ArgumentType;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const BASE: &str = include_str!("schema.cedarschema");

/// Arguments named by policies: `context.args.X` and `context.derived.X`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArgumentUse {
    pub args: BTreeSet<String>,
    pub derived: BTreeSet<String>,
}

impl ArgumentUse {
    pub(crate) fn scan(parsed: &[Parsed]) -> ArgumentUse {
        let mut found = ArgumentUse::default();
        for p in parsed {
            if let Ok(est) = p.policy.to_json() {
                walk(&est, &mut found);
            }
        }
        found
    }
}

/// `{".": {"left": <context.args>, "attr": NAME}}` and the same under `has`.
fn walk(v: &Value, found: &mut ArgumentUse) {
    match v {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(inner) = map.get(op) {
                    if let (Some(left), Some(attr)) =
                        (inner.get("left"), inner.get("attr").and_then(Value::as_str))
                    {
                        match context_field(left) {
                            Some("args") => {
                                found.args.insert(attr.to_owned());
                            }
                            Some("derived") => {
                                found.derived.insert(attr.to_owned());
                            }
                            _ => {}
                        }
                    }
                }
            }
            for child in map.values() {
                walk(child, found);
            }
        }
        Value::Array(items) => {
            for child in items {
                walk(child, found);
            }
        }
        _ => {}
    }
}

fn context_field(v: &Value) -> Option<&str> {
    let inner = v.get(".")?;
    if inner.get("left")?.get("Var")?.as_str()? != "context" {
        return None;
    }
    inner.get("attr")?.as_str()
}

fn cedar_type(t: ArgumentType) -> &'static str {
    match t {
        ArgumentType::String => "String",
        ArgumentType::Long => "Long",
        ArgumentType::Bool => "Bool",
        ArgumentType::SetOfString => "Set<String>",
    }
}

/// The schema text: the base plus `Args`/`DerivedArgs` for these arguments.
pub fn schema_text(used: &ArgumentUse, declared: &BTreeMap<String, ArgumentType>) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let args: Vec<String> = used
        .args
        .iter()
        .map(|a| {
            let t = declared.get(a).copied().unwrap_or(ArgumentType::String);
            format!("  {}: {},", quote(a), cedar_type(t))
        })
        .collect();
    let derived: Vec<String> = used
        .derived
        .iter()
        .map(|a| format!("  {}: Derived,", quote(a)))
        .collect();
    format!(
        "{BASE}\ntype Args = {{\n{}\n}};\ntype DerivedArgs = {{\n{}\n}};\n",
        args.join("\n"),
        derived.join("\n")
    )
}

pub(crate) fn build(text: &str) -> Result<Schema, SourceError> {
    Schema::from_cedarschema_str(text)
        .map(|(s, _warnings)| s)
        .map_err(|e| located("schema", text, &e, e.to_string()))
}

/// Validate every policy against the schema; errors point into their source.
pub(crate) fn validate(
    schema: &Schema,
    set: &cedar_policy::PolicySet,
    parsed: &[Parsed],
    texts: &BTreeMap<String, String>,
) -> Vec<SourceError> {
    let validator = Validator::new(schema.clone());
    let result = validator.validate(set, ValidationMode::Strict);
    result
        .validation_errors()
        .map(|e| {
            let id = e.policy_id().to_string();
            let origin = parsed
                .iter()
                .find(|p| p.policy.id().to_string() == id)
                .map(|p| p.origin.clone())
                .unwrap_or_default();
            let text = texts.get(&origin).map(String::as_str).unwrap_or("");
            located(&origin, text, e, format!("policy {id:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{parse_all, PolicySource};

    #[test]
    fn arguments_are_found_in_conditions() {
        let parsed = parse_all(&[PolicySource {
            origin: "a.cedar".into(),
            text: r#"permit(principal, action == Action::"call_tool", resource)
                when { context.args.repo like "acme/*" && context.args has count
                       && context.derived.url.host == "example.com" };"#
                .into(),
        }])
        .unwrap();
        let used = ArgumentUse::scan(&parsed);
        assert_eq!(used.args.iter().collect::<Vec<_>>(), vec!["count", "repo"]);
        assert_eq!(used.derived.iter().collect::<Vec<_>>(), vec!["url"]);
        let text = schema_text(&used, &BTreeMap::new());
        build(&text).expect("the generated schema parses");
    }
}
