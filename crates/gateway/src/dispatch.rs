//! What the gateway does with each client request: answer it locally, merge it
//! across upstreams, or route it to exactly one upstream with names translated.

use crate::binding::Binding;
use crate::govern::{self, Use};
use crate::session::Session;
use crate::vserver::ListKind;
use crate::{bridge, caps, Gateway, Who};
use portcullis_protocol::era::{self, Era};
use portcullis_protocol::jsonrpc::{error_response, result_response};
use portcullis_protocol::{headers, names, ErrorCode};
use portcullis_upstream::{RequestOptions, UpstreamError};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

const PAGE_SIZE: usize = 200;

/// Where messages for the client's response stream go.
pub type Out = mpsc::UnboundedSender<Value>;

/// Who is asking.
#[derive(Clone)]
pub enum Caller {
    Legacy(Arc<Session>),
    Modern {
        binding: Arc<Binding>,
        /// `Mcp-Param-*` headers the client sent, forwarded verbatim.
        param_headers: Vec<(String, String)>,
    },
}

impl Caller {
    pub fn binding(&self) -> &Arc<Binding> {
        match self {
            Caller::Legacy(s) => &s.binding,
            Caller::Modern { binding, .. } => binding,
        }
    }
    pub fn era(&self) -> Era {
        match self {
            Caller::Legacy(_) => Era::Legacy,
            Caller::Modern { .. } => Era::Modern,
        }
    }
}

pub fn upstream_error(id: Value, e: &UpstreamError) -> Value {
    error_response(id, e.code(), e.to_string())
}

/// Serve one request; related messages go to `out`, the response is returned.
pub async fn handle(
    gw: &Gateway,
    caller: &Caller,
    who: Option<&Who>,
    msg: Value,
    method: &str,
    id: Value,
    out: &Out,
) -> Value {
    let binding = caller.binding();
    let _active = binding.begin();
    match method {
        "ping" => result_response(id, json!({})),
        "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
            let kind = ListKind::from_method(method).unwrap_or(ListKind::Tools);
            list(gw, binding, who, kind, &msg, id).await
        }
        "tools/call" => call_named(gw, caller, who, ListKind::Tools, msg, id, out).await,
        "prompts/get" => call_named(gw, caller, who, ListKind::Prompts, msg, id, out).await,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            call_uri(gw, caller, who, msg, id, out).await
        }
        "completion/complete" => complete(gw, caller, who, msg, id, out).await,
        "logging/setLevel" => {
            fan_out(binding, &msg).await;
            result_response(id, json!({}))
        }
        "server/discover" => discover(gw, binding, id).await,
        "initialize" => error_response(
            id,
            ErrorCode::InvalidRequest,
            "initialize must be the first message of a new session",
        ),
        _ => {
            if binding.vs.members.len() == 1 {
                forward(caller, 0, msg, id, out, None).await
            } else {
                error_response(
                    id,
                    ErrorCode::MethodNotFound,
                    format!(
                        "method {method:?} is not routable: virtual server {:?} has {} upstreams",
                        binding.vs.name,
                        binding.vs.members.len()
                    ),
                )
            }
        }
    }
}

async fn list(
    gw: &Gateway,
    binding: &Binding,
    who: Option<&Who>,
    kind: ListKind,
    msg: &Value,
    id: Value,
) -> Value {
    let catalog = binding.refresh(kind).await;
    if catalog.items.is_empty() && catalog.failures.len() == binding.vs.members.len() {
        if let Some(e) = catalog.failures.first() {
            return upstream_error(id, e);
        }
    }
    // Governed callers page through what they may use; cursors from another
    // caller's view or policy version do not decode.
    let governed = govern::filter_list(gw, binding, who, kind, &catalog);
    let (items, fingerprint) = match &governed {
        Some((kept, view)) => (kept.as_slice(), catalog.fingerprint ^ view),
        None => (catalog.items.as_slice(), catalog.fingerprint),
    };
    let offset = match msg.pointer("/params/cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(c)) => match gw.cursors.decode(c, fingerprint) {
            Some(o) => o as usize,
            None => {
                return error_response(
                    id,
                    ErrorCode::InvalidParams,
                    "invalid or expired cursor; list again from the start",
                )
            }
        },
        Some(_) => return error_response(id, ErrorCode::InvalidParams, "cursor must be a string"),
    };
    let end = (offset + PAGE_SIZE).min(items.len());
    let page: Vec<Value> = items
        .get(offset..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut result = Map::new();
    result.insert(kind.field().into(), Value::Array(page));
    if end < items.len() {
        let next = gw.cursors.encode(end as u32, fingerprint);
        result.insert("nextCursor".into(), Value::from(next));
    }
    result_response(id, Value::Object(result))
}

async fn call_named(
    gw: &Gateway,
    caller: &Caller,
    who: Option<&Who>,
    kind: ListKind,
    mut msg: Value,
    id: Value,
    out: &Out,
) -> Value {
    let binding = caller.binding();
    let Some(name) = msg
        .pointer("/params/name")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error_response(id, ErrorCode::InvalidParams, "params.name is required");
    };
    let (member, upstream_name) = match binding.resolve(kind, &name).await {
        Ok(Some(hit)) => hit,
        Ok(None) => {
            let what = if kind == ListKind::Tools {
                "tool"
            } else {
                "prompt"
            };
            return error_response(
                id,
                ErrorCode::InvalidParams,
                format!("unknown {what}: {name}"),
            );
        }
        Err(e) => return upstream_error(id, &e),
    };
    if let (Caller::Modern { param_headers, .. }, ListKind::Tools) = (caller, kind) {
        let catalog = match binding.cached(kind) {
            Some(c) if c.item(&name).is_some() => c,
            _ => binding.refresh(kind).await,
        };
        if let Some(tool) = catalog.item(&name) {
            if let Err(why) = crate::modern::check_param_headers(
                tool,
                msg.pointer("/params/arguments"),
                param_headers,
            ) {
                return error_response(id, ErrorCode::HeaderMismatch, why);
            }
        }
    }
    msg["params"]["name"] = Value::from(upstream_name.clone());
    let mut opts = None;
    if kind == ListKind::Tools {
        if let Some(fixed) = binding.vs.fixed_arguments(member, &upstream_name) {
            let args = &mut msg["params"]["arguments"];
            if !args.is_object() {
                *args = json!({});
            }
            if let Some(obj) = args.as_object_mut() {
                for (k, v) in fixed {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        opts = Some(param_headers(caller, binding, &name, &msg));
    }
    let catalog = binding.cached(kind);
    let item = catalog.as_ref().and_then(|c| c.item(&name));
    let used = Use {
        kind,
        exposed: &name,
        member,
        upstream_name: &upstream_name,
    };
    let passed = match govern::gate(gw, caller, who, &used, item, &mut msg, &id, out).await {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let args = passed
        .confirmed_modern
        .then(|| msg.pointer("/params/arguments").cloned());
    let mut resp = forward(caller, member, msg, id, out, opts.as_ref()).await;
    if let (Some(args), Some(who)) = (args, who) {
        if bridge::is_input_required(&resp) {
            govern::carry_confirmation(gw, who, binding, &used, item, args.as_ref(), &mut resp);
        }
    }
    resp
}

/// `Mcp-Param-*` mirrors for a modern upstream, computed from the final arguments
/// (after fixed values) and the tool's `x-mcp-header` annotations.
fn param_headers(caller: &Caller, binding: &Binding, exposed: &str, msg: &Value) -> RequestOptions {
    let mut opts = RequestOptions::default();
    if let Caller::Modern { param_headers, .. } = caller {
        // Intermediaries forward Mcp-Param-* they do not compute themselves.
        opts.headers.extend(param_headers.iter().cloned());
    }
    let Some(catalog) = binding.cached(ListKind::Tools) else {
        return opts;
    };
    let Some(tool) = catalog.item(exposed) else {
        return opts;
    };
    let (Some(props), Some(args)) = (
        tool.pointer("/inputSchema/properties")
            .and_then(Value::as_object),
        msg.pointer("/params/arguments").and_then(Value::as_object),
    ) else {
        return opts;
    };
    for (arg, schema) in props {
        let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        if let Some(v) = args.get(arg).and_then(headers::param_header_value) {
            let name = format!(
                "{}{}",
                era::HEADER_PARAM_PREFIX,
                header.to_ascii_lowercase()
            );
            opts.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
            opts.headers.push((name, v));
        }
    }
    opts
}

async fn call_uri(
    gw: &Gateway,
    caller: &Caller,
    who: Option<&Who>,
    mut msg: Value,
    id: Value,
    out: &Out,
) -> Value {
    let binding = caller.binding();
    let Some(uri) = msg
        .pointer("/params/uri")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error_response(id, ErrorCode::InvalidParams, "params.uri is required");
    };
    let Some((member, upstream_uri)) = binding.resolve_uri(&uri).await else {
        return error_response(
            id,
            ErrorCode::InvalidParams,
            format!("unknown resource: {uri}"),
        );
    };
    let used = Use {
        kind: ListKind::Resources,
        exposed: &uri,
        member,
        upstream_name: &upstream_uri,
    };
    if let Err(answer) = govern::gate(gw, caller, who, &used, None, &mut msg, &id, out).await {
        return answer;
    }
    msg["params"]["uri"] = Value::from(upstream_uri.clone());
    let mut resp = forward(caller, member, msg, id, out, None).await;
    let prefix = &binding.vs.members[member].prefix;
    if !prefix.is_empty() {
        if let Some(contents) = resp
            .pointer_mut("/result/contents")
            .and_then(Value::as_array_mut)
        {
            for c in contents {
                if let Some(u) = c.get("uri").and_then(Value::as_str) {
                    c["uri"] = Value::from(names::namespace_uri(prefix, u));
                }
            }
        }
    }
    resp
}

async fn complete(
    gw: &Gateway,
    caller: &Caller,
    who: Option<&Who>,
    mut msg: Value,
    id: Value,
    out: &Out,
) -> Value {
    let binding = caller.binding();
    let kind = msg
        .pointer("/params/ref/type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let target = match kind.as_str() {
        "ref/prompt" => {
            let name = msg
                .pointer("/params/ref/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match binding.resolve(ListKind::Prompts, &name).await {
                Ok(hit) => hit.map(|(m, n)| (m, "name", n)),
                Err(e) => return upstream_error(id, &e),
            }
        }
        "ref/resource" => {
            let uri = msg
                .pointer("/params/ref/uri")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            binding.resolve_uri(&uri).await.map(|(m, u)| (m, "uri", u))
        }
        _ => {
            return error_response(
                id,
                ErrorCode::InvalidParams,
                "params.ref.type must be ref/prompt or ref/resource",
            )
        }
    };
    let Some((member, field, upstream)) = target else {
        return error_response(
            id,
            ErrorCode::InvalidParams,
            "completion reference names nothing on this server",
        );
    };
    // Completions reveal a prompt's or resource's arguments: only for what the caller may see.
    let exposed = msg
        .pointer(if field == "name" {
            "/params/ref/name"
        } else {
            "/params/ref/uri"
        })
        .and_then(Value::as_str)
        .unwrap_or_default();
    let used = Use {
        kind: if field == "name" {
            ListKind::Prompts
        } else {
            ListKind::Resources
        },
        exposed,
        member,
        upstream_name: &upstream,
    };
    if !govern::may_see(gw, binding, who, &used) {
        return error_response(
            id,
            ErrorCode::InvalidParams,
            "completion reference names nothing on this server",
        );
    }
    msg["params"]["ref"][field] = Value::from(upstream);
    forward(caller, member, msg, id, out, None).await
}

/// Send to every member that is (or can be) connected; used for setLevel and
/// `notifications/roots/list_changed`.
pub async fn fan_out(binding: &Binding, msg: &Value) {
    let is_request = msg.get("id").is_some();
    for (i, result) in binding.open_all().await.into_iter().enumerate() {
        let Ok(conn) = result else { continue };
        if conn.era() == Era::Modern {
            continue; // no session state upstream to update
        }
        let r = if is_request {
            conn.request(msg.clone(), None, None).await.map(|_| ())
        } else {
            conn.notify(msg.clone()).await
        };
        if let Err(e) = r {
            tracing::debug!(member = i, error = %e, "fan-out failed");
        }
    }
}

async fn discover(gw: &Gateway, binding: &Binding, id: Value) -> Value {
    let opened = binding.open_all().await;
    let results: Vec<Value> = opened
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|c| c.init_result().clone()))
        .collect();
    let mut result = json!({
        "supportedVersions": crate::modern::supported_versions(),
        "capabilities": caps::merge(&results, binding.vs.members.len()),
        "serverInfo": gw.server_info(&binding.vs.name),
    });
    if let Some(instr) = caps::instructions(&results, binding.vs.description.as_deref()) {
        result["instructions"] = Value::from(instr);
    }
    result_response(id, result)
}

/// Send `msg` to member `member`, relaying related messages to the client.
pub async fn forward(
    caller: &Caller,
    member: usize,
    msg: Value,
    id: Value,
    out: &Out,
    opts: Option<&RequestOptions>,
) -> Value {
    let binding = caller.binding();
    let conn = match binding.conn(member).await {
        Ok(c) => c,
        Err(e) => return upstream_error(id, &e),
    };
    let bridging = caller.era() == Era::Legacy && conn.era() == Era::Modern;
    let mut msg = Some(msg);
    for _round in 0..bridge::MAX_ROUNDS {
        let (rel_tx, mut rel_rx) = mpsc::unbounded_channel::<Value>();
        // Only a bridged call may need the request again (for its retry).
        let Some(this) = (if bridging { msg.clone() } else { msg.take() }) else {
            break;
        };
        let request = conn.request(this, Some(rel_tx), opts);
        tokio::pin!(request);
        let resp = loop {
            tokio::select! {
                resp = &mut request => break resp,
                Some(m) = rel_rx.recv() => relay(caller, &conn, member, m, out),
            }
        };
        while let Ok(m) = rel_rx.try_recv() {
            relay(caller, &conn, member, m, out);
        }
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return upstream_error(id, &e),
        };
        if bridging && bridge::is_input_required(&resp) {
            match bridge::gather_inputs(caller, &resp, out).await {
                Ok(next) => {
                    if let Some(m) = msg.as_mut() {
                        bridge::prepare_retry(m, &resp, next);
                    }
                    continue;
                }
                Err(err) => return error_response(id, ErrorCode::InternalError, err),
            }
        }
        return resp;
    }
    error_response(
        id,
        ErrorCode::InternalError,
        "too many input-required rounds",
    )
}

/// Pass a message related to an in-flight request on to the client.
fn relay(
    caller: &Caller,
    conn: &Arc<portcullis_upstream::Connection>,
    member: usize,
    msg: Value,
    out: &Out,
) {
    let paused =
        msg.get("method").and_then(Value::as_str) == Some(portcullis_upstream::STREAM_PAUSED);
    match caller {
        Caller::Legacy(session) => {
            if paused {
                // Forwarded as is: the response writer mirrors the pause, clients never see it.
                let _ = out.send(msg);
            } else {
                let _ = out.send(session.translate_upstream(member, msg));
            }
        }
        Caller::Modern { .. } if paused => {}
        Caller::Modern { .. } => {
            if msg.get("id").is_some() {
                // 2026-07-28 clients cannot receive requests; refuse on their behalf.
                let refusal = error_response(
                    msg["id"].clone(),
                    ErrorCode::MethodNotFound,
                    "the client speaks 2026-07-28 and cannot receive server requests mid-call",
                );
                let conn = conn.clone();
                tokio::spawn(async move {
                    let _ = conn.respond(refusal).await;
                });
            } else {
                let _ = out.send(msg);
            }
        }
    }
}
