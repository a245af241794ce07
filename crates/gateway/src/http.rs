//! The downstream HTTP edge: Streamable HTTP (both eras) at `/mcp/<virtual server>`.

use crate::binding::Binding;
use crate::dispatch::{self, Caller};
use crate::observe;
use crate::respond::{self, Pending, Work};
use crate::session::{Session, Waiter};
use crate::{caps, legacy_sse, modern, Gateway, Who};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::stream::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use portcullis_identity::Principal;
use portcullis_protocol::era::{self, Era};
use portcullis_protocol::jsonrpc::{error_response, result_response};
use portcullis_protocol::{ErrorCode, Message, MessageKind};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/mcp/{vs}",
            get(get_stream).post(post_message).delete(delete_session),
        )
        .route(
            "/mcp",
            get(default_get).post(default_post).delete(default_delete),
        )
        .route("/sse", get(default_sse))
        .route("/messages", axum::routing::post(default_messages))
        .route("/mcp/{vs}/sse", get(legacy_sse::open))
        .route("/mcp/{vs}/messages", axum::routing::post(legacy_sse::post))
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            crate::authn::require_token,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                ErrorCode::InvalidRequest,
                "no such endpoint; MCP endpoints are /mcp/<virtual-server>",
            )
        })
        .with_state(gw)
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn json_error(status: StatusCode, code: ErrorCode, text: &str) -> Response {
    json_response(status, &error_response(Value::Null, code, text))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Edge checks shared by every MCP route: Host/Origin and the virtual server.
pub(crate) fn admit(gw: &Gateway, headers: &HeaderMap, vs: &str) -> Result<(), Response> {
    if let Err(why) = gw.hosts.check(headers) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::InvalidRequest,
            why,
        ));
    }
    if !gw.vservers.contains_key(vs) {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            &format!("unknown virtual server {vs:?}"),
        ));
    }
    Ok(())
}

/// Read a body up to the configured limit and classify it as one JSON-RPC message.
pub(crate) async fn read_message(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Message, observe::Arrival), Response> {
    let ct = header(headers, "content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidRequest,
            "Content-Type must be application/json",
        ));
    }
    let limit = gw.limits.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded,
            &format!("request body exceeds the limit of {limit} bytes"),
        )
    })?;
    let msg = Message::parse(&bytes)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()))?;
    let arrival = observe::Arrival {
        traceparent: header(headers, "traceparent").map(str::to_owned),
        user_agent: header(headers, "user-agent").map(str::to_owned),
        bytes_in: bytes.len(),
        ..Default::default()
    };
    Ok((msg, arrival))
}

async fn post_message(
    State(gw): State<Arc<Gateway>>,
    Path(vs): Path<String>,
    principal: Option<Extension<Principal>>,
    who: Option<Extension<Who>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let owner = crate::authn::owner(&principal);
    if let Err(r) = admit(&gw, &headers, &vs) {
        return r;
    }
    let (msg, arrival) = match read_message(&gw, &headers, body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let session_id = header(&headers, era::HEADER_SESSION_ID);
    let is_modern = era::meta_protocol_version(&msg.value)
        .is_some_and(|v| !era::is_legacy_version(v))
        || (session_id.is_none()
            && header(&headers, era::HEADER_PROTOCOL_VERSION) == Some(era::MODERN))
        || (session_id.is_none() && msg.method() == Some("server/discover"));
    let explicit_modern =
        era::meta_protocol_version(&msg.value).is_some_and(|v| !era::is_legacy_version(v));
    if is_modern && (explicit_modern || msg.method() != Some("initialize")) {
        return post_modern(gw, &vs, &headers, msg, arrival, who.map(|w| w.0)).await;
    }
    if msg.method() == Some("initialize") {
        if session_id.is_some() {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "initialize starts a new session: send it without Mcp-Session-Id",
            );
        }
        return match msg.kind {
            MessageKind::Request { id, .. } => {
                let who = who.map(|w| w.0);
                initialize(&gw, &vs, id, &msg.value, owner, who.as_ref(), arrival).await
            }
            _ => json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "initialize must be a request",
            ),
        };
    }
    let Some(sid) = session_id else {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "Mcp-Session-Id header required (send initialize first, or use 2026-07-28 per-request _meta)",
        );
    };
    let Some(session) = gw.sessions.get(&vs, sid, owner) else {
        return json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "session not found; initialize a new session",
        );
    };
    if let Some(v) = header(&headers, era::HEADER_PROTOCOL_VERSION) {
        if v != session.protocol_version {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                &format!(
                    "MCP-Protocol-Version {v:?} does not match the negotiated version {:?}",
                    session.protocol_version
                ),
            );
        }
    }
    session.touch();
    match on_session_message(&gw, &session, msg, arrival, who.map(|w| w.0)).await {
        Some(Reply::Request(pending)) => {
            let sse = header(&headers, "accept").is_none_or(|a| a.contains("text/event-stream"));
            respond::legacy(session, pending, sse).await
        }
        None => accepted(),
    }
}

fn accepted() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

pub(crate) enum Reply {
    /// A request being served.
    Request(Pending),
}

/// Handle one message on a legacy session. `None` for notifications and responses.
pub(crate) async fn on_session_message(
    gw: &Arc<Gateway>,
    session: &Arc<Session>,
    msg: Message,
    arrival: observe::Arrival,
    who: Option<Who>,
) -> Option<Reply> {
    match msg.kind {
        MessageKind::Response { ref id } => {
            match session.take_waiter(id) {
                Some(Waiter::Gateway(tx)) => {
                    let _ = tx.send(msg.value);
                }
                Some(Waiter::Upstream {
                    member,
                    id: upstream_id,
                }) => {
                    let mut answer = msg.value;
                    answer["id"] = upstream_id;
                    let binding = session.binding.clone();
                    tokio::spawn(async move {
                        match binding.conn(member).await {
                            Ok(conn) => {
                                if let Err(e) = conn.respond(answer).await {
                                    tracing::warn!(error = %e, "relaying a client answer upstream failed");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "upstream gone before the client answered")
                            }
                        }
                    });
                }
                None => tracing::debug!("response to an unknown server request ignored"),
            }
            None
        }
        MessageKind::Notification { ref method } => {
            on_notification(session, method, msg.value.clone()).await;
            None
        }
        MessageKind::Request { id, method } => {
            let (out_tx, rx) = mpsc::unbounded_channel();
            let caller = Caller::Legacy(session.clone());
            let gw2 = gw.clone();
            let client_id = id.clone();
            let (abort, registration) = futures_util::future::AbortHandle::new_pair();
            session.track(&client_id, abort);
            let s2 = session.clone();
            let arrival = observe::Arrival {
                session_id: Some(session.id.clone()),
                protocol_version: Some(session.protocol_version.clone()),
                ..arrival
            };
            let work: Work = Box::pin(async move {
                let resp = observe::serve(
                    &gw2,
                    &caller,
                    who.as_ref(),
                    msg.value,
                    &method,
                    id,
                    &out_tx,
                    arrival,
                    Some(registration),
                )
                .await;
                s2.untrack(&client_id);
                resp
            });
            Some(Reply::Request(Pending { rx, work }))
        }
    }
}

async fn on_notification(session: &Arc<Session>, method: &str, value: Value) {
    match method {
        "notifications/initialized" => {}
        "notifications/cancelled" => {
            if let Some(rid) = value.pointer("/params/requestId") {
                session.cancel(rid);
            }
        }
        "notifications/roots/list_changed" => dispatch::fan_out(&session.binding, &value).await,
        _ => {
            if session.binding.vs.members.len() == 1 {
                if let Ok(conn) = session.binding.conn(0).await {
                    let _ = conn.notify(value).await;
                }
            }
        }
    }
}

async fn initialize(
    gw: &Arc<Gateway>,
    vs_name: &str,
    id: Value,
    value: &Value,
    owner: Option<&str>,
    who: Option<&Who>,
    arrival: observe::Arrival,
) -> Response {
    let started = std::time::Instant::now();
    let (status, body, session) = match start_session(gw, vs_name, value, owner).await {
        Ok((session, result)) => (StatusCode::OK, result_response(id, result), Some(session)),
        Err((status, code, text)) => (status, error_response(id, code, text), None),
    };
    let arrival = observe::Arrival {
        session_id: session.as_ref().map(|s| s.id.clone()),
        protocol_version: session.as_ref().map(|s| s.protocol_version.clone()),
        ..arrival
    };
    let client = value
        .pointer("/params/clientInfo/name")
        .and_then(Value::as_str);
    let body =
        observe::record_session_start(gw, who, vs_name, client, &arrival, body, started).await;
    let mut r = json_response(status, &body);
    if let (Some(session), true) = (session, body.get("result").is_some()) {
        if let Ok(v) = HeaderValue::from_str(&session.id) {
            r.headers_mut().insert(era::HEADER_SESSION_ID, v);
        }
    } else if body.get("error").is_some() && status == StatusCode::OK {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

/// Start a legacy session from an `initialize` request (Streamable HTTP or the
/// deprecated HTTP+SSE transport): open every upstream concurrently and answer with
/// the virtual server's merged capabilities.
pub(crate) async fn start_session(
    gw: &Arc<Gateway>,
    vs_name: &str,
    value: &Value,
    owner: Option<&str>,
) -> Result<(Arc<Session>, Value), (StatusCode, ErrorCode, &'static str)> {
    if gw.sessions.len() >= gw.limits.max_sessions {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::LimitExceeded,
            "the gateway is at its session limit",
        ));
    }
    let vs = gw.vservers.get(vs_name).cloned().ok_or((
        StatusCode::NOT_FOUND,
        ErrorCode::InvalidRequest,
        "unknown virtual server",
    ))?;
    let params = value.get("params");
    let field = |k: &str| params.and_then(|p| p.get(k)).cloned();
    let version = era::negotiate_legacy(
        params
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str),
    );
    let caps_in = field("capabilities").unwrap_or_else(|| json!({}));
    let info = field("clientInfo").unwrap_or_else(|| json!({"name": "unknown", "version": "0"}));
    let binding = Binding::new(vs.clone(), Era::Legacy, caps_in.clone(), info);
    let session = Session::new(
        binding.clone(),
        version.to_owned(),
        caps_in,
        owner.map(str::to_owned),
    );
    // A slow upstream must not hold the client's initialize: past the budget the
    // session starts with what is up, and the client is told to list again when a
    // late upstream arrives.
    let weak = Arc::downgrade(&session);
    let budget = std::time::Duration::from_millis(gw.limits.initialize_wait_ms);
    let results = binding
        .open_within(budget, move |member| {
            if let Some(s) = weak.upgrade() {
                tracing::info!(member, "late upstream joined the session");
                for kind in ["tools", "prompts", "resources"] {
                    s.push_to_stream(json!({"jsonrpc": "2.0", "method": format!("notifications/{kind}/list_changed")}));
                }
            }
        })
        .await;
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": caps::merge(&results, vs.members.len()),
        "serverInfo": gw.server_info(vs_name),
    });
    if let Some(i) = caps::instructions(&results, vs.description.as_deref()) {
        result["instructions"] = Value::from(i);
    }
    gw.sessions.insert(session.clone());
    tracing::info!(virtual_server = vs_name, session = %&session.id[..8], version, "session started");
    Ok((session, result))
}

async fn post_modern(
    gw: Arc<Gateway>,
    vs_name: &str,
    headers: &HeaderMap,
    msg: Message,
    arrival: observe::Arrival,
    who: Option<Who>,
) -> Response {
    let (id, method) = match &msg.kind {
        MessageKind::Request { id, method } => (id.clone(), method.clone()),
        MessageKind::Notification { .. } => return accepted(),
        MessageKind::Response { .. } => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "2026-07-28 clients do not send responses",
            )
        }
    };
    if let Err((status, body)) = modern::validate(headers, &msg) {
        return json_response(status, &body);
    }
    if modern::is_removed_method(&method) {
        return json_response(
            StatusCode::NOT_FOUND,
            &error_response(
                id,
                ErrorCode::MethodNotFound,
                format!("{method} does not exist in 2026-07-28"),
            ),
        );
    }
    let Some(vs) = gw.vservers.get(vs_name).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "unknown virtual server",
        );
    };
    let binding = gw.modern_binding(&vs);
    let param_headers = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(era::HEADER_PARAM_PREFIX))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let caller = Caller::Modern {
        binding,
        param_headers,
    };
    let (out_tx, rx) = mpsc::unbounded_channel();
    let m2 = method.clone();
    let gw2 = gw.clone();
    let arrival = observe::Arrival {
        protocol_version: era::meta_protocol_version(&msg.value).map(str::to_owned),
        ..arrival
    };
    let work: Work = Box::pin(async move {
        observe::serve(
            &gw2,
            &caller,
            who.as_ref(),
            msg.value,
            &m2,
            id,
            &out_tx,
            arrival,
            None,
        )
        .await
    });
    let info = gw.server_info(vs_name);
    respond::modern(Pending { rx, work }, method, info).await
}

fn to_event(v: Value) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event("message")
        .data(serde_json::to_string(&v).unwrap_or_default()))
}

async fn get_stream(
    State(gw): State<Arc<Gateway>>,
    Path(vs): Path<String>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let owner = crate::authn::owner(&principal);
    if let Err(r) = admit(&gw, &headers, &vs) {
        return r;
    }
    let Some(sid) = header(&headers, era::HEADER_SESSION_ID) else {
        let mut r = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidRequest,
            "GET needs a legacy session; 2026-07-28 clients use POST only",
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    };
    let Some(session) = gw.sessions.get(&vs, sid, owner) else {
        return json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "session not found",
        );
    };
    if !header(&headers, "accept")
        .unwrap_or("")
        .contains("text/event-stream")
    {
        return json_error(
            StatusCode::NOT_ACCEPTABLE,
            ErrorCode::InvalidRequest,
            "Accept must include text/event-stream",
        );
    }
    if let Some(last) = header(&headers, era::HEADER_LAST_EVENT_ID) {
        let resumed = crate::replay::parse_event_id(last)
            .and_then(|(stream, seq)| session.replay.resume(stream, seq));
        return match resumed {
            Some(rx) => {
                session.touch();
                respond::raw_sse(Body::from_stream(respond::replayed(rx)))
            }
            None => json_error(
                StatusCode::NOT_FOUND,
                ErrorCode::InvalidRequest,
                "unknown or expired Last-Event-ID",
            ),
        };
    }
    let Some(rx) = session.open_stream() else {
        return json_error(
            StatusCode::CONFLICT,
            ErrorCode::InvalidRequest,
            "this session already has an open GET stream",
        );
    };
    session.touch();
    let s = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(to_event);
    let mut r = Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

async fn delete_session(
    State(gw): State<Arc<Gateway>>,
    Path(vs): Path<String>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let owner = crate::authn::owner(&principal);
    if let Err(r) = admit(&gw, &headers, &vs) {
        return r;
    }
    let Some(sid) = header(&headers, era::HEADER_SESSION_ID) else {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidRequest,
            "DELETE needs an Mcp-Session-Id",
        );
    };
    if gw.sessions.get(&vs, sid, owner).is_none() {
        return json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "session not found",
        );
    }
    if let Some(s) = gw.sessions.remove(sid) {
        tracing::info!(session = %&s.id[..8], "session deleted by the client");
        s.close().await;
    }
    StatusCode::OK.into_response()
}

fn default_vs(gw: &Gateway) -> Result<Path<String>, Response> {
    gw.default_vs.clone().map(Path).ok_or_else(|| {
        json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "no default virtual server; use /mcp/<virtual-server>",
        )
    })
}

async fn default_post(
    State(gw): State<Arc<Gateway>>,
    principal: Option<Extension<Principal>>,
    who: Option<Extension<Who>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match default_vs(&gw) {
        Ok(p) => post_message(State(gw), p, principal, who, headers, body).await,
        Err(r) => r,
    }
}

async fn default_get(
    State(gw): State<Arc<Gateway>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    match default_vs(&gw) {
        Ok(p) => get_stream(State(gw), p, principal, headers).await,
        Err(r) => r,
    }
}

async fn default_delete(
    State(gw): State<Arc<Gateway>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    match default_vs(&gw) {
        Ok(p) => delete_session(State(gw), p, principal, headers).await,
        Err(r) => r,
    }
}

async fn default_sse(
    State(gw): State<Arc<Gateway>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    match default_vs(&gw) {
        Ok(p) => legacy_sse::open(State(gw), p, principal, headers).await,
        Err(r) => r,
    }
}

async fn default_messages(
    State(gw): State<Arc<Gateway>>,
    principal: Option<Extension<Principal>>,
    who: Option<Extension<Who>>,
    q: axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match default_vs(&gw) {
        Ok(p) => legacy_sse::post(State(gw), p, principal, who, q, headers, body).await,
        Err(r) => r,
    }
}
