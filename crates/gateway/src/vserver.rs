//! A virtual server: several upstreams composed into one endpoint, and the rules
//! that turn upstream names into exposed names and back.

use portcullis_config::{Member, ToolOverride, VirtualServer};
use portcullis_protocol::names;
use portcullis_upstream::UpstreamHandle;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

pub struct MemberRt {
    pub upstream: Arc<UpstreamHandle>,
    pub prefix: String,
    pub tools: HashMap<String, ToolOverride>,
    pub hide_prompts: Vec<String>,
}

pub struct VirtualServerRt {
    pub name: String,
    pub description: Option<String>,
    pub separator: String,
    pub members: Vec<MemberRt>,
}

/// Which list a merged catalog is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl ListKind {
    pub fn from_method(m: &str) -> Option<ListKind> {
        Some(match m {
            "tools/list" => ListKind::Tools,
            "prompts/list" => ListKind::Prompts,
            "resources/list" => ListKind::Resources,
            "resources/templates/list" => ListKind::Templates,
            _ => return None,
        })
    }
    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::Templates => "resources/templates/list",
        }
    }
    /// The result field holding the items.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
        }
    }
    /// The item field that identifies it.
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::Templates => "uriTemplate",
        }
    }
    /// The capability an upstream must declare to have this list.
    pub fn capability(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources | ListKind::Templates => "resources",
        }
    }
}

impl VirtualServerRt {
    pub fn new(spec: &VirtualServer, upstreams: &HashMap<String, Arc<UpstreamHandle>>) -> Self {
        let members = spec
            .upstreams
            .iter()
            .filter_map(|m: &Member| {
                let upstream = upstreams.get(&m.upstream)?.clone();
                Some(MemberRt {
                    upstream,
                    prefix: m.effective_prefix(),
                    tools: m.tools.clone().into_iter().collect(),
                    hide_prompts: m.hide_prompts.clone(),
                })
            })
            .collect();
        VirtualServerRt {
            name: spec.name.clone(),
            description: spec.description.clone(),
            separator: spec.separator.clone(),
            members,
        }
    }

    /// The exposed name of an upstream tool, or `None` when it is hidden.
    pub fn expose_tool(&self, member: usize, tool: &str) -> Option<String> {
        let m = &self.members[member];
        match m.tools.get(tool) {
            Some(o) if o.hide => None,
            Some(ToolOverride {
                rename: Some(r), ..
            }) => Some(r.clone()),
            _ => Some(names::expose(&m.prefix, &self.separator, tool)),
        }
    }

    /// The exposed name of an upstream prompt, or `None` when it is hidden.
    pub fn expose_prompt(&self, member: usize, prompt: &str) -> Option<String> {
        let m = &self.members[member];
        if m.hide_prompts.iter().any(|p| p == prompt) {
            return None;
        }
        Some(names::expose(&m.prefix, &self.separator, prompt))
    }

    /// Rewrite one upstream list item for clients; `None` drops it.
    pub fn expose_item(
        &self,
        kind: ListKind,
        member: usize,
        mut item: Value,
    ) -> Option<(String, Value)> {
        let m = &self.members[member];
        let obj = item.as_object_mut()?;
        let exposed = match kind {
            ListKind::Tools => {
                let upstream_name = obj.get("name")?.as_str()?.to_owned();
                let exposed = self.expose_tool(member, &upstream_name)?;
                if let Some(o) = m.tools.get(&upstream_name) {
                    if let Some(d) = &o.description {
                        obj.insert("description".into(), Value::from(d.clone()));
                    }
                    if !o.fixed_arguments.is_empty() {
                        hide_fixed_arguments(obj, &o.fixed_arguments);
                    }
                }
                exposed
            }
            ListKind::Prompts => {
                let upstream_name = obj.get("name")?.as_str()?.to_owned();
                self.expose_prompt(member, &upstream_name)?
            }
            ListKind::Resources | ListKind::Templates => {
                let key = kind.key();
                let uri = obj.get(key)?.as_str()?;
                names::namespace_uri(&m.prefix, uri)
            }
        };
        obj.insert(kind.key().into(), Value::from(exposed.clone()));
        Some((exposed, item))
    }

    /// The member whose namespace a URI belongs to, with the upstream URI.
    pub fn route_uri<'a>(&self, uri: &'a str) -> Option<(usize, &'a str)> {
        let prefixed = self.members.iter().enumerate().find_map(|(i, m)| {
            if m.prefix.is_empty() {
                return None;
            }
            names::strip_uri(&m.prefix, uri).map(|u| (i, u))
        });
        if prefixed.is_some() {
            return prefixed;
        }
        let unprefixed: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.prefix.is_empty())
            .map(|(i, _)| i)
            .collect();
        match unprefixed.as_slice() {
            [only] => Some((*only, uri)),
            _ => None,
        }
    }

    /// Fixed arguments for a tool: merged over whatever the client sent.
    pub fn fixed_arguments(
        &self,
        member: usize,
        tool: &str,
    ) -> Option<&serde_json::Map<String, Value>> {
        self.members[member]
            .tools
            .get(tool)
            .map(|o| &o.fixed_arguments)
            .filter(|f| !f.is_empty())
    }
}

/// Remove fixed arguments from a tool's input schema: clients neither see nor set them.
fn hide_fixed_arguments(
    tool: &mut serde_json::Map<String, Value>,
    fixed: &serde_json::Map<String, Value>,
) {
    let Some(schema) = tool.get_mut("inputSchema").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for k in fixed.keys() {
            props.remove(k);
        }
    }
    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| r.as_str().is_none_or(|r| !fixed.contains_key(r)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::Config;
    use serde_json::json;

    fn vs() -> VirtualServerRt {
        let yaml = r#"
upstreams:
  - {name: gh, transport: streamable_http, url: "http://127.0.0.1:1/mcp"}
  - {name: fs, transport: streamable_http, url: "http://127.0.0.1:2/mcp"}
virtual_servers:
  - name: v
    upstreams:
      - upstream: gh
        tools:
          create_issue: {fixed_arguments: {owner: acme}, description: "Create an acme issue"}
          delete_repo: {hide: true}
          search: {rename: find}
      - upstream: fs
        prefix: ""
"#;
        let config = Config::from_yaml(yaml, "t").unwrap();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    Arc::new(UpstreamHandle::new(u.clone(), 1000).unwrap()),
                )
            })
            .collect();
        VirtualServerRt::new(&config.virtual_servers[0], &upstreams)
    }

    #[test]
    fn tools_are_renamed_hidden_described_and_fixed() {
        let v = vs();
        let tool = json!({"name": "create_issue", "description": "x", "inputSchema": {"type": "object",
            "properties": {"owner": {"type": "string"}, "title": {"type": "string"}}, "required": ["owner", "title"]}});
        let (name, item) = v.expose_item(ListKind::Tools, 0, tool).unwrap();
        assert_eq!(name, "gh_create_issue");
        assert_eq!(item["description"], "Create an acme issue");
        assert!(
            item["inputSchema"]["properties"].get("owner").is_none(),
            "fixed arguments are not shown"
        );
        assert_eq!(item["inputSchema"]["required"], json!(["title"]));
        assert!(v
            .expose_item(ListKind::Tools, 0, json!({"name": "delete_repo"}))
            .is_none());
        assert_eq!(v.expose_tool(0, "search").as_deref(), Some("find"));
        assert_eq!(
            v.expose_tool(1, "read").as_deref(),
            Some("read"),
            "empty prefix"
        );
        assert_eq!(
            v.fixed_arguments(0, "create_issue").unwrap()["owner"],
            "acme"
        );
    }

    #[test]
    fn uris_are_namespaced_and_routed_back() {
        let v = vs();
        let (uri, _) = v
            .expose_item(
                ListKind::Resources,
                0,
                json!({"uri": "repo://acme/x", "name": "x"}),
            )
            .unwrap();
        assert_eq!(uri, "gh+repo://acme/x");
        assert_eq!(v.route_uri("gh+repo://acme/x"), Some((0, "repo://acme/x")));
        assert_eq!(
            v.route_uri("file:///etc/hosts"),
            Some((1, "file:///etc/hosts")),
            "the one unprefixed member"
        );
    }
}
