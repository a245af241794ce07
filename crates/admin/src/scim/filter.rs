//! SCIM filters (RFC 7644 §3.4.2.2) and PATCH paths (§3.5.2), parsed and
//! evaluated against the JSON form of a resource.
//!
//! Supported: `eq ne co sw ew gt ge lt le pr`, `and`, `or`, `not (...)`,
//! parentheses, value paths (`emails[type eq "work"]`, `members[value eq "id"]`),
//! sub-attributes (`name.givenName`) and schema-URN-qualified names.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        attr: AttrPath,
        op: Op,
        value: Value,
    },
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`: some element of a multi-valued attribute matches.
    Value {
        attr: String,
        filter: Box<Filter>,
    },
}

/// `attr` or `attr.sub`, names as written (compared case-insensitively).
#[derive(Debug, Clone, PartialEq)]
pub struct AttrPath {
    pub attr: String,
    pub sub: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A PATCH operation's `path`: `attr`, `attr.sub`, `attr[filter]` or `attr[filter].sub`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: String,
    pub filter: Option<Filter>,
    pub sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBrack,
    RBrack,
    Word(String),
    Str(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            b')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            b'[' => {
                out.push(Tok::LBrack);
                i += 1;
            }
            b']' => {
                out.push(Tok::RBrack);
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("unterminated string".into()),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                let lit = s.get(start..=i).ok_or("unterminated string")?;
                let v: String =
                    serde_json::from_str(lit).map_err(|e| format!("bad string {lit}: {e}"))?;
                out.push(Tok::Str(v));
                i += 1;
            }
            _ => {
                let start = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && !b"()[]\"".contains(&b[i]) {
                    i += 1;
                }
                out.push(Tok::Word(s[start..i].to_owned()));
            }
        }
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parse `attr` or `attr.sub`, dropping a schema URN prefix.
fn attr_path(word: &str) -> Result<AttrPath, String> {
    let name = if word.len() > 4 && word[..4].eq_ignore_ascii_case("urn:") {
        word.rsplit(':').next().unwrap_or_default()
    } else {
        word
    };
    let (attr, sub) = match name.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (name, None),
    };
    if !valid_name(attr) || sub.is_some_and(|s| !valid_name(s)) {
        return Err(format!("{word:?} is not an attribute name"));
    }
    Ok(AttrPath {
        attr: attr.to_owned(),
        sub: sub.map(str::to_owned),
    })
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), String> {
        if self.next() == Some(t) {
            Ok(())
        } else {
            Err(format!("expected {what}"))
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.keyword("not") {
            self.pos += 1;
            self.expect(Tok::LParen, "( after not")?;
            let f = self.or()?;
            self.expect(Tok::RParen, ")")?;
            return Ok(Filter::Not(Box::new(f)));
        }
        match self.next() {
            Some(Tok::LParen) => {
                let f = self.or()?;
                self.expect(Tok::RParen, ")")?;
                Ok(f)
            }
            Some(Tok::Word(w)) => {
                let path = attr_path(&w)?;
                if self.peek() == Some(&Tok::LBrack) {
                    self.pos += 1;
                    if path.sub.is_some() {
                        return Err(format!("{w:?}[...]: a value filter applies to an attribute, not a sub-attribute"));
                    }
                    let inner = self.or()?;
                    self.expect(Tok::RBrack, "]")?;
                    return Ok(Filter::Value {
                        attr: path.attr,
                        filter: Box::new(inner),
                    });
                }
                let op = match self.next() {
                    Some(Tok::Word(o)) => o.to_ascii_lowercase(),
                    _ => return Err(format!("expected an operator after {w:?}")),
                };
                let op = match op.as_str() {
                    "pr" => return Ok(Filter::Present(path)),
                    "eq" => Op::Eq,
                    "ne" => Op::Ne,
                    "co" => Op::Co,
                    "sw" => Op::Sw,
                    "ew" => Op::Ew,
                    "gt" => Op::Gt,
                    "ge" => Op::Ge,
                    "lt" => Op::Lt,
                    "le" => Op::Le,
                    other => return Err(format!("unknown operator {other:?}")),
                };
                let value = match self.next() {
                    Some(Tok::Str(s)) => Value::String(s),
                    Some(Tok::Word(v)) => match v.to_ascii_lowercase().as_str() {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        "null" => Value::Null,
                        _ => serde_json::from_str::<serde_json::Number>(&v)
                            .map(Value::Number)
                            .map_err(|_| format!("{v:?} is not a value: quote strings"))?,
                    },
                    _ => return Err(format!("expected a value after {w} {op:?}")),
                };
                Ok(Filter::Compare {
                    attr: path,
                    op,
                    value,
                })
            }
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("unexpected end of filter".into()),
        }
    }
}

/// Parse a `filter` query parameter.
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let f = p.or()?;
    match p.peek() {
        None => Ok(f),
        Some(t) => Err(format!("unexpected {t:?} after the filter")),
    }
}

/// Parse a PATCH operation's `path`.
pub fn parse_path(s: &str) -> Result<PatchPath, String> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let Some(Tok::Word(w)) = p.next() else {
        return Err(format!("{s:?} is not an attribute path"));
    };
    let head = attr_path(&w)?;
    let mut out = PatchPath {
        attr: head.attr,
        filter: None,
        sub: head.sub,
    };
    if p.peek() == Some(&Tok::LBrack) {
        if out.sub.is_some() {
            return Err(format!(
                "{s:?}: a value filter applies to an attribute, not a sub-attribute"
            ));
        }
        p.pos += 1;
        out.filter = Some(p.or()?);
        p.expect(Tok::RBrack, "]")?;
        if let Some(Tok::Word(rest)) = p.peek().cloned() {
            let sub = rest
                .strip_prefix('.')
                .filter(|x| valid_name(x))
                .ok_or_else(|| format!("{s:?}: expected .subAttribute after ]"))?;
            out.sub = Some(sub.to_owned());
            p.pos += 1;
        }
    }
    match p.peek() {
        None => Ok(out),
        Some(t) => Err(format!("{s:?}: unexpected {t:?}")),
    }
}

/// A member of `obj` by case-insensitive name.
pub fn get_ci<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The key under which `obj` holds `name`, compared case-insensitively.
pub fn key_ci(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// Identifiers compare exactly; everything else (userName, displayName, emails)
/// is case-insensitive, as RFC 7643 defines `caseExact` for them.
fn case_exact(attr: &AttrPath, in_value_of: Option<&str>) -> bool {
    let a = attr.attr.to_ascii_lowercase();
    match in_value_of {
        Some(parent) => parent.eq_ignore_ascii_case("members") && a == "value",
        None => {
            a == "id"
                || a == "externalid"
                || (a == "members"
                    && attr
                        .sub
                        .as_deref()
                        .is_none_or(|s| s.eq_ignore_ascii_case("value")))
        }
    }
}

fn values<'a>(res: &'a Value, p: &AttrPath) -> Vec<&'a Value> {
    let Some(v) = get_ci(res, &p.attr) else {
        return Vec::new();
    };
    let pick = |e: &'a Value| -> Option<&'a Value> {
        match &p.sub {
            Some(s) => get_ci(e, s),
            None if e.is_object() => get_ci(e, "value"),
            None => Some(e),
        }
    };
    let out: Vec<&Value> = match v {
        Value::Array(a) => a.iter().filter_map(pick).collect(),
        Value::Object(_) => p
            .sub
            .as_ref()
            .and_then(|s| get_ci(v, s))
            .into_iter()
            .collect(),
        other => p.sub.is_none().then_some(other).into_iter().collect(),
    };
    out.into_iter().filter(|v| !v.is_null()).collect()
}

fn compare(actual: &Value, op: Op, expected: &Value, exact: bool) -> bool {
    use std::cmp::Ordering::*;
    let ord = match (actual, expected) {
        (Value::String(a), Value::String(e)) => {
            let (a, e) = if exact {
                (a.clone(), e.clone())
            } else {
                (a.to_lowercase(), e.to_lowercase())
            };
            match op {
                Op::Co => return a.contains(&e),
                Op::Sw => return a.starts_with(&e),
                Op::Ew => return a.ends_with(&e),
                _ => a.cmp(&e),
            }
        }
        (Value::Bool(a), Value::Bool(e)) => match op {
            Op::Eq => return a == e,
            Op::Ne => return a != e,
            _ => return false,
        },
        (Value::Number(a), Value::Number(e)) => match (a.as_f64(), e.as_f64()) {
            (Some(a), Some(e)) => a.partial_cmp(&e).unwrap_or(Equal),
            _ => return false,
        },
        _ => return false,
    };
    match op {
        Op::Eq => ord == Equal,
        Op::Ne => ord != Equal,
        Op::Gt => ord == Greater,
        Op::Ge => ord != Less,
        Op::Lt => ord == Less,
        Op::Le => ord != Greater,
        Op::Co | Op::Sw | Op::Ew => false,
    }
}

/// Whether a resource (or, inside a value path, one element) matches.
pub fn matches(f: &Filter, res: &Value) -> bool {
    eval(f, res, None)
}

fn eval(f: &Filter, res: &Value, parent: Option<&str>) -> bool {
    match f {
        Filter::And(a, b) => eval(a, res, parent) && eval(b, res, parent),
        Filter::Or(a, b) => eval(a, res, parent) || eval(b, res, parent),
        Filter::Not(a) => !eval(a, res, parent),
        Filter::Present(p) => values(res, p).iter().any(|v| match v {
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }),
        Filter::Compare { attr, op, value } => {
            let exact = case_exact(attr, parent);
            let vals = values(res, attr);
            if *op == Op::Ne {
                !vals.iter().any(|v| compare(v, Op::Eq, value, exact))
            } else if value.is_null() {
                *op == Op::Eq && vals.is_empty()
            } else {
                vals.iter().any(|v| compare(v, *op, value, exact))
            }
        }
        Filter::Value { attr, filter } => match get_ci(res, attr) {
            Some(Value::Array(items)) => items.iter().any(|e| eval(filter, e, Some(attr))),
            Some(o @ Value::Object(_)) => eval(filter, o, Some(attr)),
            _ => false,
        },
    }
}

/// For `attr eq "x"` (the usual value filter in PATCH paths), the element a
/// missing target is created from: `{"attr": "x"}`.
pub fn seed_of(f: &Filter) -> Option<Map<String, Value>> {
    match f {
        Filter::Compare {
            attr: AttrPath { attr, sub: None },
            op: Op::Eq,
            value,
        } => {
            let mut m = Map::new();
            m.insert(attr.clone(), value.clone());
            Some(m)
        }
        Filter::And(a, b) => {
            let mut m = seed_of(a)?;
            m.extend(seed_of(b)?);
            Some(m)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "id": "abc123",
            "userName": "Alice@Example.com",
            "externalId": "00u1",
            "active": true,
            "emails": [{"value": "alice@example.com", "type": "work", "primary": true},
                       {"value": "a@home.example", "type": "home"}],
            "name": {"formatted": "Alice Liddell", "givenName": "Alice"},
            "members": [{"value": "U1"}, {"value": "u2"}],
            "meta": {"lastModified": "2024-05-01T00:00:00Z"}
        })
    }

    fn yes(f: &str) -> bool {
        matches(
            &parse_filter(f).unwrap_or_else(|e| panic!("{f}: {e}")),
            &user(),
        )
    }

    #[test]
    fn equality_as_okta_and_entra_send_it() {
        assert!(
            yes(r#"userName eq "alice@example.com""#),
            "userName is case-insensitive"
        );
        assert!(yes(r#"USERNAME EQ "ALICE@EXAMPLE.COM""#));
        assert!(!yes(r#"userName eq "bob""#));
        assert!(yes(r#"externalId eq "00u1""#));
        assert!(!yes(r#"externalId eq "00U1""#), "externalId is case-exact");
        assert!(yes(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "alice@example.com""#
        ));
        assert!(yes(r#"id eq "abc123" and members[value eq "U1"]"#));
        assert!(
            !yes(r#"members[value eq "u1"]"#),
            "member ids are case-exact"
        );
        assert!(yes(r#"members.value eq "u2""#));
    }

    #[test]
    fn operators_and_logic() {
        assert!(yes(r#"userName sw "alice" and active eq true"#));
        assert!(yes(r#"userName ew ".com""#) && yes(r#"userName co "@EXAMPLE""#));
        assert!(yes(
            r#"active eq false or emails[type eq "home" and value co "home"]"#
        ));
        assert!(yes(r#"not (active eq false)"#));
        assert!(yes(
            r#"(userName eq "x" or userName eq "alice@example.com") and externalId pr"#
        ));
        assert!(!yes("displayName pr"));
        assert!(yes(r#"emails.value eq "a@home.example""#));
        assert!(
            yes(r#"emails eq "a@home.example""#),
            "a multi-valued attribute compares its value"
        );
        assert!(yes(r#"name.givenName eq "alice""#));
        assert!(yes(r#"meta.lastModified gt "2024-01-01T00:00:00Z""#));
        assert!(yes(r#"userName ne "bob""#) && !yes(r#"userName ne "alice@example.com""#));
        assert!(yes(r#"title eq null"#));
        assert!(yes(r#"userName eq "with \"quotes\"" or id eq "abc123""#));
    }

    #[test]
    fn bad_filters_are_errors() {
        for f in [
            "",
            "userName",
            "userName eq",
            r#"userName xx "a""#,
            r#"userName eq alice"#,
            r#"userName eq "unterminated"#,
            r#"(userName eq "a""#,
            r#"userName eq "a" and"#,
            r#"userName eq "a" extra"#,
            r#"emails[type eq "work""#,
            r#"1bad eq "a""#,
        ] {
            assert!(parse_filter(f).is_err(), "{f:?} should not parse");
        }
    }

    #[test]
    fn patch_paths() {
        assert_eq!(
            parse_path("active"),
            Ok(PatchPath {
                attr: "active".into(),
                filter: None,
                sub: None
            })
        );
        assert_eq!(
            parse_path("name.formatted"),
            Ok(PatchPath {
                attr: "name".into(),
                filter: None,
                sub: Some("formatted".into())
            })
        );
        let p = parse_path(r#"members[value eq "2819c223"]"#).unwrap();
        assert_eq!(p.attr, "members");
        assert!(p.sub.is_none());
        let f = p.filter.unwrap();
        assert!(matches(&f, &json!({"value": "2819c223"})));
        assert!(!matches(&f, &json!({"value": "other"})));
        let p = parse_path(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(
            (p.attr.as_str(), p.sub.as_deref()),
            ("emails", Some("value"))
        );
        assert_eq!(
            seed_of(&p.filter.unwrap()),
            json!({"type": "work"}).as_object().cloned()
        );
        let p =
            parse_path("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber")
                .unwrap();
        assert_eq!(p.attr, "employeeNumber");
        for bad in [
            "",
            "a b",
            "members[value eq \"x\"",
            "members[value eq \"x\"]value",
            "name.x[type eq \"a\"]",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
