//! What a decision is about, and its translation into Cedar entities and
//! context with the typed API (cheaper than going through JSON).

use crate::derive::Patterns;
use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user_id: &'a str,
    pub username: &'a str,
    pub email: Option<&'a str>,
    /// For service accounts: the accountable owner's user id.
    pub service_owner: Option<&'a str>,
    pub is_service: bool,
    pub is_admin: bool,
    pub groups: &'a [String],
    pub client_id: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
}

/// MCP annotations of a tool that policies can test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolFlags {
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl ToolFlags {
    /// From a tool's `annotations` object. MCP's defaults apply when a hint
    /// is absent: not read-only, destructive, not idempotent, open world.
    pub fn from_annotations(a: Option<&Value>) -> ToolFlags {
        let hint = |k: &str, default: bool| {
            a.and_then(|a| a.get(k))
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        let read_only = hint("readOnlyHint", false);
        ToolFlags {
            read_only,
            // A read-only tool is never destructive, whatever the hint says.
            destructive: !read_only && hint("destructiveHint", true),
            idempotent: hint("idempotentHint", false),
            open_world: hint("openWorldHint", true),
        }
    }
}

/// What is being used.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Tool {
        virtual_server: &'a str,
        /// The upstream (catalog server) the tool comes from.
        server: &'a str,
        name: &'a str,
        upstream_name: &'a str,
        flags: ToolFlags,
        risk_tier: Option<u8>,
    },
    Prompt {
        virtual_server: &'a str,
        server: &'a str,
        name: &'a str,
        upstream_name: &'a str,
    },
    Resource {
        virtual_server: &'a str,
        server: &'a str,
        uri: &'a str,
    },
    List {
        virtual_server: &'a str,
    },
}

impl<'a> Target<'a> {
    pub fn virtual_server(&self) -> &'a str {
        match *self {
            Target::Tool { virtual_server, .. }
            | Target::Prompt { virtual_server, .. }
            | Target::Resource { virtual_server, .. }
            | Target::List { virtual_server } => virtual_server,
        }
    }
    pub fn server(&self) -> Option<&'a str> {
        match *self {
            Target::Tool { server, .. }
            | Target::Prompt { server, .. }
            | Target::Resource { server, .. } => Some(server),
            Target::List { .. } => None,
        }
    }
    pub fn action(&self) -> &'static str {
        match self {
            Target::Tool { .. } => "call_tool",
            Target::Prompt { .. } => "get_prompt",
            Target::Resource { .. } => "read_resource",
            Target::List { .. } => "list",
        }
    }
    /// Display name for messages: the tool or prompt name, or the URI.
    pub fn label(&self) -> &'a str {
        match *self {
            Target::Tool { name, .. } | Target::Prompt { name, .. } => name,
            Target::Resource { uri, .. } => uri,
            Target::List { virtual_server } => virtual_server,
        }
    }
}

/// Entity type names, parsed once.
pub(crate) struct Types {
    pub user: EntityTypeName,
    pub service: EntityTypeName,
    pub group: EntityTypeName,
    pub client: EntityTypeName,
    pub vs: EntityTypeName,
    pub server: EntityTypeName,
    pub tool: EntityTypeName,
    pub prompt: EntityTypeName,
    pub resource: EntityTypeName,
    pub action: EntityTypeName,
}

pub(crate) fn types() -> &'static Types {
    static T: OnceLock<Types> = OnceLock::new();
    T.get_or_init(|| {
        let t = |s: &str| EntityTypeName::from_str(s).expect("static entity type names parse");
        Types {
            user: t("User"),
            service: t("ServiceAccount"),
            group: t("Group"),
            client: t("Client"),
            vs: t("VirtualServer"),
            server: t("Server"),
            tool: t("Tool"),
            prompt: t("Prompt"),
            resource: t("Resource"),
            action: t("Action"),
        }
    })
}

pub(crate) fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

pub(crate) fn principal_uid(sub: &Subject) -> EntityUid {
    let ty = types();
    uid(
        if sub.is_service {
            &ty.service
        } else {
            &ty.user
        },
        sub.user_id,
    )
}

pub(crate) fn principal_entity(sub: &Subject) -> Option<Entity> {
    let ty = types();
    let parents: HashSet<EntityUid> = sub.groups.iter().map(|g| uid(&ty.group, g)).collect();
    let mut attrs = HashMap::with_capacity(3);
    attrs.insert("username".into(), s(sub.username));
    attrs.insert(
        "is_admin".into(),
        RestrictedExpression::new_bool(sub.is_admin),
    );
    if sub.is_service {
        attrs.insert("owner".into(), s(sub.service_owner.unwrap_or("")));
    } else {
        attrs.insert("email".into(), s(sub.email.unwrap_or("")));
    }
    Entity::new(principal_uid(sub), attrs, parents).ok()
}

/// The client's entity: the OAuth client id, or `api-token` for tokens.
pub(crate) fn client_entity(sub: &Subject) -> (EntityUid, Option<Entity>) {
    let id = sub.client_id.unwrap_or("api-token");
    let u = uid(&types().client, id);
    let attrs = HashMap::from([("name".to_owned(), s(id))]);
    let e = Entity::new(u.clone(), attrs, HashSet::new()).ok();
    (u, e)
}

/// A catalog server as an entity, built once per engine.
pub(crate) fn server_entity(
    name: &str,
    catalog: &portcullis_config::Catalog,
    member_of: &[String],
) -> Option<Entity> {
    let ty = types();
    let set = |v: &[String]| RestrictedExpression::new_set(v.iter().map(|x| s(x)));
    let attrs = HashMap::from([
        ("name".to_owned(), s(name)),
        (
            "owner".to_owned(),
            s(catalog.owner.as_deref().unwrap_or("")),
        ),
        ("team".to_owned(), s(catalog.team.as_deref().unwrap_or(""))),
        (
            "risk_tier".to_owned(),
            RestrictedExpression::new_long(catalog.risk_tier.map_or(DEFAULT_RISK_TIER, i64::from)),
        ),
        ("data_domains".to_owned(), set(&catalog.data_domains)),
        ("tags".to_owned(), set(&catalog.tags)),
    ]);
    let parents = member_of.iter().map(|v| uid(&ty.vs, v)).collect();
    Entity::new(uid(&ty.server, name), attrs, parents).ok()
}

/// Servers without a declared risk tier count as tier 2 ("internal").
pub const DEFAULT_RISK_TIER: i64 = 2;

/// The resource entity and its uid for a target.
pub(crate) fn resource_entity(
    target: &Target,
    server_tier: Option<i64>,
) -> (EntityUid, Option<Entity>) {
    let ty = types();
    match *target {
        Target::Tool {
            virtual_server,
            server,
            name,
            upstream_name,
            flags,
            risk_tier,
        } => {
            let u = uid(&ty.tool, &format!("{virtual_server}/{name}"));
            let tier = risk_tier
                .map(i64::from)
                .or(server_tier)
                .unwrap_or(DEFAULT_RISK_TIER);
            let b = RestrictedExpression::new_bool;
            let attrs = HashMap::from([
                ("name".to_owned(), s(name)),
                ("upstream_name".to_owned(), s(upstream_name)),
                ("risk_tier".to_owned(), RestrictedExpression::new_long(tier)),
                ("read_only".to_owned(), b(flags.read_only)),
                ("destructive".to_owned(), b(flags.destructive)),
                ("idempotent".to_owned(), b(flags.idempotent)),
                ("open_world".to_owned(), b(flags.open_world)),
            ]);
            let parents = HashSet::from([uid(&ty.server, server), uid(&ty.vs, virtual_server)]);
            let e = Entity::new(u.clone(), attrs, parents).ok();
            (u, e)
        }
        Target::Prompt {
            virtual_server,
            server,
            name,
            upstream_name,
        } => {
            let u = uid(&ty.prompt, &format!("{virtual_server}/{name}"));
            let attrs = HashMap::from([
                ("name".to_owned(), s(name)),
                ("upstream_name".to_owned(), s(upstream_name)),
            ]);
            let parents = HashSet::from([uid(&ty.server, server), uid(&ty.vs, virtual_server)]);
            let e = Entity::new(u.clone(), attrs, parents).ok();
            (u, e)
        }
        Target::Resource {
            virtual_server,
            server,
            uri,
        } => {
            let u = uid(&ty.resource, &format!("{virtual_server}/{uri}"));
            let scheme = uri.split_once(':').map_or("", |(s, _)| s);
            let attrs =
                HashMap::from([("uri".to_owned(), s(uri)), ("scheme".to_owned(), s(scheme))]);
            let parents = HashSet::from([uid(&ty.server, server), uid(&ty.vs, virtual_server)]);
            let e = Entity::new(u.clone(), attrs, parents).ok();
            (u, e)
        }
        Target::List { virtual_server } => (uid(&ty.vs, virtual_server), None),
    }
}

/// A JSON value as a Cedar value; `None` for what Cedar cannot hold
/// (floats, nulls), which then reads as a missing argument.
pub(crate) fn json_to_cedar(v: &Value) -> Option<RestrictedExpression> {
    Some(match v {
        Value::String(x) => s(x),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().filter_map(json_to_cedar))
        }
        Value::Object(map) => RestrictedExpression::new_record(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_cedar(v)?))),
        )
        .ok()?,
        Value::Null => return None,
    })
}

/// `context.args`: only the arguments policies name, so large payloads are
/// never converted.
pub(crate) fn args_record(
    args: Option<&Map<String, Value>>,
    used: &BTreeSet<String>,
) -> RestrictedExpression {
    let fields = used.iter().filter_map(|name| {
        let v = args?.get(name)?;
        Some((name.clone(), json_to_cedar(v)?))
    });
    RestrictedExpression::new_record(fields).unwrap_or_else(|_| empty_record())
}

pub(crate) fn derived_record(
    args: Option<&Map<String, Value>>,
    used: &BTreeSet<String>,
    patterns: &Patterns,
) -> RestrictedExpression {
    let fields = used.iter().filter_map(|name| {
        let v = args?.get(name)?.as_str()?;
        Some((name.clone(), crate::derive::derive(v, patterns)))
    });
    RestrictedExpression::new_record(fields).unwrap_or_else(|_| empty_record())
}

pub(crate) fn empty_record() -> RestrictedExpression {
    RestrictedExpression::new_record(std::iter::empty()).unwrap_or_else(|_| s(""))
}

pub(crate) fn time_record(epoch: i64) -> RestrictedExpression {
    let days = epoch.div_euclid(86_400);
    let hour = epoch.rem_euclid(86_400) / 3600;
    // 1970-01-01 was a Thursday; Monday is 1.
    let weekday = (days + 3).rem_euclid(7) + 1;
    RestrictedExpression::new_record([
        ("epoch".to_owned(), RestrictedExpression::new_long(epoch)),
        ("hour".to_owned(), RestrictedExpression::new_long(hour)),
        (
            "weekday".to_owned(),
            RestrictedExpression::new_long(weekday),
        ),
    ])
    .unwrap_or_else(|_| empty_record())
}

pub(crate) fn ip(addr: Option<IpAddr>) -> RestrictedExpression {
    let text = addr.map_or_else(|| "0.0.0.0".to_owned(), |a| a.to_string());
    RestrictedExpression::new_ip(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_follow_mcp_defaults() {
        let none = ToolFlags::from_annotations(None);
        assert!(none.destructive && !none.read_only && none.open_world);
        let ro = ToolFlags::from_annotations(Some(&serde_json::json!({"readOnlyHint": true})));
        assert!(ro.read_only && !ro.destructive);
    }

    #[test]
    fn weekday_and_hour() {
        // 2026-11-24 13:05 UTC is a Tuesday.
        let t = 1_795_525_500;
        let days = i64::div_euclid(t, 86_400);
        assert_eq!((days + 3).rem_euclid(7) + 1, 2);
        assert_eq!(t.rem_euclid(86_400) / 3600, 13);
    }
}
