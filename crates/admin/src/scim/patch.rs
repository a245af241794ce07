//! SCIM PATCH (RFC 7644 §3.5.2) applied to the JSON form of a resource. The
//! caller renders the stored resource, applies the operations here, and maps the
//! result back to store changes, so every operation form the IdPs send (with and
//! without `path`, value filters, sub-attributes) goes through one code path.
//! Attributes Portcullis does not store (titles, addresses, ...) are accepted and
//! dropped by that mapping.

use super::filter::{get_ci, key_ci, matches, parse_path, seed_of, PatchPath};
use super::ScimError;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Replace,
    Remove,
}

/// Attributes the server owns; value objects may echo them and are ignored.
const READ_ONLY: &[&str] = &["id", "meta", "schemas", "groups"];

/// Apply a PatchOp request body to `res` (a JSON object).
pub fn apply_ops(res: &mut Value, body: &Value) -> Result<(), ScimError> {
    let ops = get_ci(body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::invalid_syntax("a PATCH body needs an \"Operations\" array"))?;
    if ops.is_empty() {
        return Err(ScimError::invalid_syntax("\"Operations\" is empty"));
    }
    let Some(obj) = res.as_object_mut() else {
        return Err(ScimError::invalid_syntax("resource is not an object"));
    };
    for (i, op) in ops.iter().enumerate() {
        let name = get_ci(op, "op").and_then(Value::as_str).ok_or_else(|| {
            ScimError::invalid_syntax(format!("Operations[{i}]: \"op\" is missing"))
        })?;
        let kind = match name.to_ascii_lowercase().as_str() {
            "add" => Kind::Add,
            "replace" => Kind::Replace,
            "remove" => Kind::Remove,
            _ => {
                return Err(ScimError::invalid_syntax(format!(
                    "Operations[{i}]: op {name:?} is not add, replace or remove"
                )))
            }
        };
        let path = match get_ci(op, "path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(
                parse_path(p)
                    .map_err(|e| ScimError::invalid_path(format!("Operations[{i}]: {e}")))?,
            ),
            Some(_) => {
                return Err(ScimError::invalid_path(format!(
                    "Operations[{i}]: \"path\" must be a string"
                )))
            }
        };
        let value = get_ci(op, "value");
        match (kind, path) {
            (Kind::Remove, None) => {
                return Err(ScimError::no_target(format!(
                    "Operations[{i}]: remove needs a \"path\""
                )));
            }
            (Kind::Remove, Some(p)) => {
                read_only(&p, i)?;
                apply(obj, &p, kind, value, i)?;
            }
            (_, Some(p)) => {
                read_only(&p, i)?;
                let v = value.ok_or_else(|| {
                    ScimError::invalid_syntax(format!("Operations[{i}]: \"value\" is missing"))
                })?;
                apply(obj, &p, kind, Some(v), i)?;
            }
            (_, None) => {
                let Some(Value::Object(fields)) = value else {
                    return Err(ScimError::invalid_syntax(format!(
                        "Operations[{i}]: without a \"path\", \"value\" must be an object"
                    )));
                };
                for (k, v) in fields {
                    let p = parse_path(k)
                        .map_err(|e| ScimError::invalid_path(format!("Operations[{i}]: {e}")))?;
                    if READ_ONLY.iter().any(|r| r.eq_ignore_ascii_case(&p.attr)) {
                        continue;
                    }
                    apply(obj, &p, kind, Some(v), i)?;
                }
            }
        }
    }
    Ok(())
}

fn read_only(p: &PatchPath, i: usize) -> Result<(), ScimError> {
    if READ_ONLY.iter().any(|r| r.eq_ignore_ascii_case(&p.attr)) {
        return Err(ScimError::mutability(format!(
            "Operations[{i}]: {:?} is read-only",
            p.attr
        )));
    }
    Ok(())
}

/// Set `name` in an object, reusing an existing key that differs only in case.
fn set_ci(obj: &mut Map<String, Value>, name: &str, v: Value) {
    let key = key_ci(obj, name).unwrap_or_else(|| name.to_owned());
    obj.insert(key, v);
}

fn remove_ci(obj: &mut Map<String, Value>, name: &str) {
    if let Some(k) = key_ci(obj, name) {
        obj.remove(&k);
    }
}

/// Merge sub-attributes of `new` into `old`.
fn merge(old: &mut Map<String, Value>, new: &Map<String, Value>) {
    for (k, v) in new {
        set_ci(old, k, v.clone());
    }
}

/// Two multi-valued elements are the same when their `value`s are (or, without
/// `value`, when they are equal).
fn same_element(a: &Value, b: &Value) -> bool {
    match (get_ci(a, "value"), get_ci(b, "value")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn apply(
    obj: &mut Map<String, Value>,
    p: &PatchPath,
    kind: Kind,
    value: Option<&Value>,
    i: usize,
) -> Result<(), ScimError> {
    let key = key_ci(obj, &p.attr).unwrap_or_else(|| p.attr.clone());
    match (&p.filter, &p.sub, kind) {
        (None, None, Kind::Remove) => match (obj.get_mut(&key), value) {
            // Okta: {"op":"remove","path":"members","value":[{"value":"id"}]}
            (Some(Value::Array(items)), Some(v)) => {
                let gone: Vec<Value> = match v {
                    Value::Array(a) => a.clone(),
                    other => vec![other.clone()],
                };
                items.retain(|e| !gone.iter().any(|g| same_element(e, g)));
            }
            _ => {
                obj.remove(&key);
            }
        },
        (None, None, _) => {
            let Some(v) = value else { return Ok(()) };
            match (obj.get_mut(&key), v) {
                (Some(Value::Array(items)), _) if kind == Kind::Add => {
                    let new: Vec<Value> = match v {
                        Value::Array(a) => a.clone(),
                        other => vec![other.clone()],
                    };
                    for n in new {
                        if !items.iter().any(|e| same_element(e, &n)) {
                            items.push(n);
                        }
                    }
                }
                (Some(Value::Object(old)), Value::Object(new)) => merge(old, new),
                _ => {
                    obj.insert(key, v.clone());
                }
            }
        }
        (None, Some(sub), _) => match obj.get_mut(&key) {
            Some(Value::Object(inner)) => match value {
                Some(v) if kind != Kind::Remove => set_ci(inner, sub, v.clone()),
                _ => remove_ci(inner, sub),
            },
            Some(Value::Array(items)) => {
                for e in items.iter_mut().filter_map(Value::as_object_mut) {
                    match value {
                        Some(v) if kind != Kind::Remove => set_ci(e, sub, v.clone()),
                        _ => remove_ci(e, sub),
                    }
                }
            }
            _ if kind == Kind::Remove => {}
            _ => {
                let mut inner = Map::new();
                if let Some(v) = value {
                    inner.insert(sub.clone(), v.clone());
                }
                obj.insert(key, Value::Object(inner));
            }
        },
        (Some(f), sub, _) => {
            let items = match obj.get_mut(&key) {
                Some(Value::Array(items)) => items,
                None | Some(Value::Null) if kind == Kind::Remove => return Ok(()),
                None | Some(Value::Null) => {
                    obj.insert(key.clone(), Value::Array(Vec::new()));
                    match obj.get_mut(&key) {
                        Some(Value::Array(items)) => items,
                        _ => return Ok(()),
                    }
                }
                Some(_) => {
                    return Err(ScimError::invalid_path(format!(
                        "Operations[{i}]: {:?} is not multi-valued",
                        p.attr
                    )))
                }
            };
            if kind == Kind::Remove {
                match sub {
                    None => items.retain(|e| !matches(f, e)),
                    Some(s) => {
                        for e in items.iter_mut().filter(|e| matches(f, e)) {
                            if let Some(o) = e.as_object_mut() {
                                remove_ci(o, s);
                            }
                        }
                    }
                }
                return Ok(());
            }
            let Some(v) = value else { return Ok(()) };
            if !items.iter().any(|e| matches(f, e)) {
                // Entra adds `emails[type eq "work"].value` to users without one.
                let seed = seed_of(f).ok_or_else(|| {
                    ScimError::no_target(format!(
                        "Operations[{i}]: no {:?} element matches the filter",
                        p.attr
                    ))
                })?;
                items.push(Value::Object(seed));
            }
            for e in items.iter_mut().filter(|e| matches(f, e)) {
                let Some(o) = e.as_object_mut() else { continue };
                match (sub, v) {
                    (Some(s), _) => set_ci(o, s, v.clone()),
                    (None, Value::Object(new)) => merge(o, new),
                    (None, _) => {
                        return Err(ScimError::invalid_value(format!(
                            "Operations[{i}]: the value for a filtered path without a sub-attribute must be an object"
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "id": "u1",
            "userName": "alice",
            "displayName": "Alice",
            "name": {"formatted": "Alice"},
            "emails": [{"value": "alice@example.com", "type": "work", "primary": true}],
            "active": true
        })
    }

    fn patched(mut res: Value, ops: Value) -> Value {
        apply_ops(&mut res, &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        res
    }

    #[test]
    fn deactivation_in_the_okta_and_entra_forms() {
        let okta = patched(
            user(),
            json!([{"op": "replace", "value": {"active": false}}]),
        );
        assert_eq!(okta["active"], json!(false));
        let entra = patched(
            user(),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        );
        assert_eq!(
            entra["active"],
            json!("False"),
            "coerced later, when mapped to the store"
        );
        let id_echo = patched(
            user(),
            json!([{"op": "replace", "value": {"id": "other", "active": false}}]),
        );
        assert_eq!(
            id_echo["id"],
            json!("u1"),
            "read-only attributes in a value object are ignored"
        );
    }

    #[test]
    fn attribute_updates() {
        let r = patched(
            user(),
            json!([
                {"op": "replace", "path": "userName", "value": "alice2"},
                {"op": "replace", "path": "name.formatted", "value": "Alice L"},
                {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "a2@example.com"},
                {"op": "add", "path": "title", "value": "Engineer"},
            ]),
        );
        assert_eq!(r["userName"], json!("alice2"));
        assert_eq!(r["name"]["formatted"], json!("Alice L"));
        assert_eq!(r["emails"].as_array().map(Vec::len), Some(1));
        assert_eq!(r["emails"][0]["value"], json!("a2@example.com"));
        assert_eq!(r["title"], json!("Engineer"));
        // A filtered path with no match creates the element (Entra on a new user).
        let mut bare = user();
        bare.as_object_mut().map(|o| o.remove("emails"));
        let r = patched(
            bare,
            json!([{"op": "add", "path": "emails[type eq \"work\"].value", "value": "x@y.z"}]),
        );
        assert_eq!(r["emails"], json!([{"type": "work", "value": "x@y.z"}]));
        let r = patched(
            user(),
            json!([{"op": "remove", "path": "emails"}, {"op": "remove", "path": "displayName"}]),
        );
        assert!(r.get("emails").is_none() && r.get("displayName").is_none());
        let r = patched(
            user(),
            json!([{"op": "replace", "value": {"name.formatted": "Via Key", "USERNAME": "bob"}}]),
        );
        assert_eq!(
            (r["name"]["formatted"].as_str(), r["userName"].as_str()),
            (Some("Via Key"), Some("bob"))
        );
    }

    fn group() -> Value {
        json!({"id": "g1", "displayName": "eng", "members": [{"value": "a"}, {"value": "b"}]})
    }

    fn members(r: &Value) -> Vec<&str> {
        r["members"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["value"].as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn group_members() {
        let r = patched(
            group(),
            json!([{"op": "add", "path": "members", "value": [{"value": "c"}, {"value": "a"}]}]),
        );
        assert_eq!(members(&r), ["a", "b", "c"]);
        // Okta removes with a value list.
        let r = patched(
            group(),
            json!([{"op": "remove", "path": "members", "value": [{"value": "a"}]}]),
        );
        assert_eq!(members(&r), ["b"]);
        // Entra removes with a value filter in the path.
        let r = patched(
            group(),
            json!([{"op": "Remove", "path": "members[value eq \"b\"]"}]),
        );
        assert_eq!(members(&r), ["a"]);
        let r = patched(group(), json!([{"op": "remove", "path": "members"}]));
        assert!(members(&r).is_empty());
        let r = patched(
            group(),
            json!([{"op": "replace", "path": "members", "value": [{"value": "z"}]}]),
        );
        assert_eq!(members(&r), ["z"]);
        let r = patched(
            group(),
            json!([{"op": "replace", "value": {"id": "g1", "displayName": "platform"}}]),
        );
        assert_eq!(r["displayName"], json!("platform"));
        assert_eq!(members(&r), ["a", "b"]);
        let r = patched(
            group(),
            json!([{"op": "add", "value": {"members": [{"value": "d"}]}}]),
        );
        assert_eq!(members(&r), ["a", "b", "d"]);
    }

    #[test]
    fn malformed_operations() {
        let cases = [
            (json!({}), "invalidSyntax"),
            (json!({"Operations": []}), "invalidSyntax"),
            (
                json!({"Operations": [{"op": "move", "path": "active"}]}),
                "invalidSyntax",
            ),
            (
                json!({"Operations": [{"path": "active", "value": true}]}),
                "invalidSyntax",
            ),
            (json!({"Operations": [{"op": "remove"}]}), "noTarget"),
            (
                json!({"Operations": [{"op": "replace", "path": "active"}]}),
                "invalidSyntax",
            ),
            (
                json!({"Operations": [{"op": "replace", "value": false}]}),
                "invalidSyntax",
            ),
            (
                json!({"Operations": [{"op": "replace", "path": "a b", "value": 1}]}),
                "invalidPath",
            ),
            (
                json!({"Operations": [{"op": "replace", "path": "id", "value": "x"}]}),
                "mutability",
            ),
            (
                json!({"Operations": [{"op": "replace", "path": "userName[value eq \"x\"]", "value": {}}]}),
                "invalidPath",
            ),
            (
                json!({"Operations": [{"op": "add", "path": "emails[type ne \"work\"]", "value": {}}]}),
                "noTarget",
            ),
        ];
        for (body, want) in cases {
            let err = apply_ops(&mut user(), &body).expect_err(&body.to_string());
            assert_eq!(err.scim_type, Some(want), "{body}");
        }
    }
}
