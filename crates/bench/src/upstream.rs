//! A lean in-process MCP upstream (Streamable HTTP, JSON responses only).
//!
//! Dual-era: a request whose `params._meta` carries
//! `io.modelcontextprotocol/protocolVersion` is handled as modern (2026-07-28,
//! stateless, SEP-2243 header checks); anything else follows the legacy
//! session rules (`initialize` mints an `Mcp-Session-Id`, later requests must
//! echo it). It runs on its own single-threaded tokio runtime so that it costs
//! at most one core.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const MODERN_VERSION: &str = "2026-07-28";
pub const LEGACY_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";

/// What the upstream has served so far (to see what the gateway sends it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub http_requests: u64,
    pub tools_call: u64,
    pub tools_list: u64,
    pub initialize: u64,
    pub discover: u64,
    pub notifications: u64,
    pub other: u64,
}

impl Counts {
    pub fn since(self, before: Counts) -> Counts {
        Counts {
            connections: self.connections - before.connections,
            http_requests: self.http_requests - before.http_requests,
            tools_call: self.tools_call - before.tools_call,
            tools_list: self.tools_list - before.tools_list,
            initialize: self.initialize - before.initialize,
            discover: self.discover - before.discover,
            notifications: self.notifications - before.notifications,
            other: self.other - before.other,
        }
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    http_requests: AtomicU64,
    tools_call: AtomicU64,
    tools_list: AtomicU64,
    initialize: AtomicU64,
    discover: AtomicU64,
    notifications: AtomicU64,
    other: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A running upstream; stops (and joins its thread) when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds 127.0.0.1:`port` (0 = ephemeral) and serves `/mcp` on a new thread.
    pub fn start(port: u16) -> Result<Upstream> {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("binding the upstream on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the upstream runtime")?;
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(State::default());
        let served = state.clone();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || runtime.block_on(serve(listener, served, rx)))
            .context("spawning the upstream thread")?;
        Ok(Upstream {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Upstream {
    pub fn counts(&self) -> Counts {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connections: get(&c.connections),
            http_requests: get(&c.http_requests),
            tools_call: get(&c.tools_call),
            tools_list: get(&c.tools_list),
            initialize: get(&c.initialize),
            discover: get(&c.discover),
            notifications: get(&c.notifications),
            other: get(&c.other),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Default)]
struct State {
    sessions: Mutex<HashSet<String>>,
    next_session: AtomicU64,
    counters: Counters,
}

async fn serve(listener: StdListener, state: Arc<State>, mut shutdown: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench upstream: cannot register listener: {e}");
            return;
        }
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("bench upstream: accept failed: {e}");
                    continue;
                }
            },
        };
        bump(&state.counters.connections);
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            // Connection errors (client resets) are irrelevant to the benchmark.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn rpc_error(
    status: StatusCode,
    id: &Value,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Resp {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json_resp(status, &json!({"jsonrpc": "2.0", "id": id, "error": error}))
}

fn rpc_result(id: &Value, result: Value) -> Resp {
    json_resp(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Resp, Infallible> {
    bump(&state.counters.http_requests);
    if req.uri().path() != "/mcp" {
        return Ok(empty(StatusCode::NOT_FOUND));
    }
    match *req.method() {
        Method::POST => {}
        Method::DELETE => return Ok(delete_session(req.headers(), &state)),
        _ => {
            let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut().insert(
                header::ALLOW,
                header::HeaderValue::from_static("POST, DELETE"),
            );
            return Ok(r);
        }
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(empty(StatusCode::BAD_REQUEST)),
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return Ok(rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                -32700,
                "Parse error",
                None,
            ))
        }
    };
    Ok(dispatch(&parts.headers, &msg, &state))
}

fn delete_session(headers: &HeaderMap, state: &State) -> Resp {
    let Some(sid) = header_str(headers, "mcp-session-id") else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let removed = state
        .sessions
        .lock()
        .map(|mut s| s.remove(sid))
        .unwrap_or(false);
    empty(if removed {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

fn dispatch(headers: &HeaderMap, msg: &Value, state: &State) -> Resp {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A JSON-RPC response from the client (legacy only): accept it.
        return empty(StatusCode::ACCEPTED);
    };
    let c = &state.counters;
    bump(match method {
        "tools/call" => &c.tools_call,
        "tools/list" => &c.tools_list,
        "initialize" => &c.initialize,
        "server/discover" => &c.discover,
        m if m.starts_with("notifications/") => &c.notifications,
        _ => &c.other,
    });
    let Some(id) = msg.get("id") else {
        return empty(StatusCode::ACCEPTED); // notification
    };
    let params = msg.get("params").unwrap_or(&Value::Null);
    if method == "server/discover" {
        return rpc_result(id, discover_result());
    }
    match params.pointer("/_meta").and_then(|m| m.get(META_VERSION)) {
        Some(version) => modern(headers, id, method, params, version),
        None => legacy(headers, id, method, params, state),
    }
}

fn server_info() -> Value {
    json!({"name": "portcullis-bench-upstream", "version": env!("CARGO_PKG_VERSION")})
}

fn discover_result() -> Value {
    json!({
        "supportedVersions": [MODERN_VERSION, "2025-11-25"],
        "capabilities": {"tools": {"listChanged": true}},
        "serverInfo": server_info(),
        "_meta": {"io.modelcontextprotocol/serverInfo": server_info()},
        "ttlMs": 0,
        "cacheScope": "private",
        "resultType": "complete",
    })
}

fn tools() -> Value {
    json!([{
        "name": "echo",
        "description": "Echoes the given text",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    }])
}

/// `tools/call` for `echo`: `Ok(result)` or `Err((code, message))`.
fn call_tool(params: &Value) -> Result<Value, (i64, String)> {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    if name != "echo" {
        return Err((-32602, format!("Unknown tool: {name}")));
    }
    let Some(text) = params.pointer("/arguments/text").and_then(Value::as_str) else {
        return Err((-32602, "echo requires a string argument `text`".into()));
    };
    Ok(json!({"content": [{"type": "text", "text": text}], "isError": false}))
}

fn modern(headers: &HeaderMap, id: &Value, method: &str, params: &Value, version: &Value) -> Resp {
    let bad = StatusCode::BAD_REQUEST;
    if version.as_str() != Some(MODERN_VERSION) {
        let data = json!({"supported": [MODERN_VERSION, "2025-11-25"]});
        return rpc_error(bad, id, -32022, "Unsupported protocol version", Some(data));
    }
    if params
        .pointer("/_meta")
        .and_then(|m| m.get(META_CAPS))
        .is_none()
    {
        return rpc_error(bad, id, -32602, "Missing _meta clientCapabilities", None);
    }
    // SEP-2243: the routing headers must mirror the body.
    let mismatch = if header_str(headers, "mcp-protocol-version") != Some(MODERN_VERSION) {
        Some("MCP-Protocol-Version")
    } else if header_str(headers, "mcp-method") != Some(method) {
        Some("Mcp-Method")
    } else if method == "tools/call"
        && header_str(headers, "mcp-name") != params.get("name").and_then(Value::as_str)
    {
        Some("Mcp-Name")
    } else {
        None
    };
    if let Some(h) = mismatch {
        return rpc_error(bad, id, -32020, &format!("Header mismatch: {h}"), None);
    }
    match method {
        "tools/list" => rpc_result(
            id,
            json!({"tools": tools(), "ttlMs": 0, "cacheScope": "private", "resultType": "complete"}),
        ),
        "tools/call" => match call_tool(params) {
            Ok(mut result) => {
                result["resultType"] = json!("complete");
                rpc_result(id, result)
            }
            Err((code, message)) => rpc_error(bad, id, code, &message, None),
        },
        _ => rpc_error(StatusCode::NOT_FOUND, id, -32601, "Method not found", None),
    }
}

fn legacy(headers: &HeaderMap, id: &Value, method: &str, params: &Value, state: &State) -> Resp {
    if method == "initialize" {
        let requested = params.get("protocolVersion").and_then(Value::as_str);
        let version = requested
            .filter(|v| LEGACY_VERSIONS.contains(v))
            .unwrap_or(LEGACY_VERSIONS[0]);
        let n = state.next_session.fetch_add(1, Ordering::Relaxed);
        let sid = format!("bench-{:08x}-{n}", std::process::id());
        if let Ok(mut sessions) = state.sessions.lock() {
            sessions.insert(sid.clone());
        }
        let mut resp = rpc_result(
            id,
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": true}},
                "serverInfo": server_info(),
            }),
        );
        if let Ok(v) = header::HeaderValue::from_str(&sid) {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        return resp;
    }
    let Some(sid) = header_str(headers, "mcp-session-id") else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            -32600,
            "Missing Mcp-Session-Id",
            None,
        );
    };
    let known = state
        .sessions
        .lock()
        .map(|s| s.contains(sid))
        .unwrap_or(false);
    if !known {
        return rpc_error(StatusCode::NOT_FOUND, id, -32001, "Session not found", None);
    }
    if let Some(v) = header_str(headers, "mcp-protocol-version") {
        if !LEGACY_VERSIONS.contains(&v) {
            let msg = format!("Unsupported MCP-Protocol-Version: {v}");
            return rpc_error(StatusCode::BAD_REQUEST, id, -32600, &msg, None);
        }
    }
    match method {
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, json!({"tools": tools()})),
        "tools/call" => match call_tool(params) {
            Ok(result) => rpc_result(id, result),
            Err((code, message)) => rpc_error(StatusCode::OK, id, code, &message, None),
        },
        _ => rpc_error(StatusCode::OK, id, -32601, "Method not found", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Conn;
    use http::HeaderValue;
    use std::time::Duration;

    async fn post(
        addr: SocketAddr,
        headers: &[(&'static str, &'static str)],
        body: Value,
    ) -> (StatusCode, Value) {
        let mut conn = Conn::connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        let headers: Vec<_> = headers
            .iter()
            .map(|(n, v)| (*n, HeaderValue::from_static(v)))
            .collect();
        let resp = conn
            .send(
                Method::POST,
                "/mcp",
                &headers,
                Bytes::from(body.to_string()),
            )
            .await
            .expect("send");
        let v = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp.status, v)
    }

    fn modern_call(name: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": name, "arguments": {"text": "x"},
                          "_meta": {META_VERSION: MODERN_VERSION, META_CAPS: {}}}})
    }

    #[test]
    fn enforces_modern_headers_and_legacy_sessions() {
        let up = Upstream::start(0).expect("upstream");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let ok = [
                ("mcp-protocol-version", MODERN_VERSION),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ];
            let (status, v) = post(up.addr, &ok, modern_call("echo")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(v["result"]["resultType"], "complete");

            let wrong = [
                ("mcp-protocol-version", MODERN_VERSION),
                ("mcp-method", "tools/call"),
                ("mcp-name", "other"),
            ];
            let (status, v) = post(up.addr, &wrong, modern_call("echo")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(v["error"]["code"], -32020);

            let legacy = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
            let (status, _) = post(up.addr, &[], legacy.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let (status, _) = post(up.addr, &[("mcp-session-id", "unknown")], legacy).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        });
    }
}
