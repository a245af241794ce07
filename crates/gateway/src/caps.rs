//! The capabilities and instructions a virtual server presents: the union of its
//! upstreams', with list changes always announced (policy and catalog changes
//! change lists too).

use serde_json::{json, Map, Value};

pub fn merge(init_results: &[Value], members: usize) -> Value {
    let mut caps = Map::new();
    for r in init_results {
        let Some(c) = r.get("capabilities").and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in c {
            match (caps.get_mut(k), v) {
                (Some(Value::Object(have)), Value::Object(add)) => {
                    for (k2, v2) in add {
                        if v2 == &Value::Bool(true) || !have.contains_key(k2) {
                            have.insert(k2.clone(), v2.clone());
                        }
                    }
                }
                (None, _) => {
                    caps.insert(k.clone(), v.clone());
                }
                _ => {}
            }
        }
    }
    if members > 1 {
        // Task ids and experimental features are not remapped across upstreams.
        caps.remove("tasks");
        caps.remove("experimental");
        caps.remove("extensions");
    }
    for k in ["tools", "prompts", "resources"] {
        if let Some(Value::Object(o)) = caps.get_mut(k) {
            o.insert("listChanged".into(), Value::Bool(true));
        }
    }
    if caps.is_empty() {
        return json!({"tools": {"listChanged": true}});
    }
    Value::Object(caps)
}

pub fn instructions(init_results: &[Value], description: Option<&str>) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if let Some(d) = description {
        parts.push(d);
    }
    for r in init_results {
        if let Some(i) = r.get("instructions").and_then(Value::as_str) {
            parts.push(i);
        }
    }
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_announces_list_changes_and_drops_unremappable_features() {
        let a = json!({"capabilities": {"tools": {}, "tasks": {"list": {}}}, "instructions": "A"});
        let b = json!({"capabilities": {"resources": {"subscribe": true}, "logging": {}}});
        let merged = merge(&[a.clone(), b.clone()], 2);
        assert_eq!(merged["tools"]["listChanged"], true);
        assert_eq!(
            merged["resources"],
            json!({"subscribe": true, "listChanged": true})
        );
        assert!(
            merged.get("tasks").is_none(),
            "task ids are not remapped across upstreams"
        );
        assert!(
            merge(std::slice::from_ref(&a), 1).get("tasks").is_some(),
            "a single upstream keeps them"
        );
        assert_eq!(
            instructions(&[a, b], Some("VS")).as_deref(),
            Some("VS\n\nA")
        );
    }
}
