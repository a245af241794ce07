//! MCP client side of the load generator: one keep-alive HTTP/1.1 connection
//! per client, legacy (session) or modern (stateless) era.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::upstream::{META_VERSION, MODERN_VERSION};

const LEGACY_VERSION: &str = "2025-11-25";
const ACCEPT: &str = "application/json, text/event-stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Legacy,
    Modern,
}

impl Era {
    pub fn name(self) -> &'static str {
        match self {
            Era::Legacy => "legacy",
            Era::Modern => "modern",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Era::Legacy => LEGACY_VERSION,
            Era::Modern => MODERN_VERSION,
        }
    }
}

/// Where to send requests: a loopback address plus the MCP endpoint path, and
/// the bearer credential to present (gateway with authentication on).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
    /// `Authorization` header value (`Bearer <token>`), sent on every request.
    pub authorization: Option<HeaderValue>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, path: impl Into<String>) -> Endpoint {
        Endpoint {
            addr,
            path: path.into(),
            authorization: None,
        }
    }

    /// The same endpoint, presenting `token` as a bearer credential.
    pub fn with_bearer(mut self, token: &str) -> Result<Endpoint> {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        v.set_sensitive(true);
        self.authorization = Some(v);
        Ok(self)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

/// A raw HTTP response, body fully read.
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    timeout: Duration,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = HeaderValue::from_str(&addr.to_string())?;
        Ok(Conn {
            sender,
            host,
            timeout,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole response, bounded by the timeout.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
    ) -> Result<HttpResponse> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(h) = req.headers_mut() {
            h.insert(header::HOST, self.host.clone());
            for (name, value) in headers {
                h.insert(*name, value.clone());
            }
        }
        let req = req.body(Full::new(body))?;
        let fut = async {
            self.sender.ready().await.context("connection not ready")?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .context("sending request")?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.context("reading response body")?;
            Ok::<_, anyhow::Error>(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("request timed out after {:?}", self.timeout))?
    }
}

/// An MCP client bound to one era; legacy clients hold a session.
pub struct McpClient {
    conn: Conn,
    endpoint: Endpoint,
    era: Era,
    session: Option<HeaderValue>,
    next_id: u64,
    /// Non-fatal protocol deviations seen on responses (e.g. missing resultType).
    pub warnings: Vec<String>,
}

impl McpClient {
    /// Connects and performs the era's opening: `initialize` +
    /// `notifications/initialized` (legacy) or `server/discover` (modern).
    pub async fn open(endpoint: &Endpoint, era: Era, timeout: Duration) -> Result<McpClient> {
        let conn = Conn::connect(endpoint.addr, timeout).await?;
        let mut client = McpClient {
            conn,
            endpoint: endpoint.clone(),
            era,
            session: None,
            next_id: 1,
            warnings: Vec::new(),
        };
        match era {
            Era::Legacy => client.initialize().await?,
            Era::Modern => client.discover().await?,
        }
        Ok(client)
    }

    pub fn is_broken(&self) -> bool {
        self.conn.is_closed()
    }

    /// Replaces a closed connection with a new one, keeping the MCP session
    /// (sessions are not tied to TCP connections).
    pub async fn reconnect(&mut self) -> Result<()> {
        self.conn = Conn::connect(self.endpoint.addr, self.conn.timeout).await?;
        Ok(())
    }

    fn headers(&self, method: &'static str) -> Vec<(&'static str, HeaderValue)> {
        let mut h = vec![
            ("content-type", HeaderValue::from_static("application/json")),
            ("accept", HeaderValue::from_static(ACCEPT)),
            (
                "mcp-protocol-version",
                HeaderValue::from_static(self.era.version()),
            ),
        ];
        if let Some(sid) = &self.session {
            h.push(("mcp-session-id", sid.clone()));
        }
        if let Some(a) = &self.endpoint.authorization {
            h.push(("authorization", a.clone()));
        }
        if self.era == Era::Modern {
            h.push(("mcp-method", HeaderValue::from_static(method)));
        }
        h
    }

    async fn post(
        &mut self,
        headers: &[(&'static str, HeaderValue)],
        body: String,
    ) -> Result<HttpResponse> {
        let path = self.endpoint.path.clone();
        self.conn
            .send(Method::POST, &path, headers, Bytes::from(body))
            .await
    }

    async fn initialize(&mut self) -> Result<()> {
        let id = self.take_id();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{LEGACY_VERSION}","capabilities":{{}},"clientInfo":{{"name":"bench","version":"1"}}}}}}"#
        );
        let mut headers = vec![
            ("content-type", HeaderValue::from_static("application/json")),
            ("accept", HeaderValue::from_static(ACCEPT)),
        ];
        if let Some(a) = &self.endpoint.authorization {
            headers.push(("authorization", a.clone()));
        }
        let resp = self.post(&headers, body).await.context("initialize")?;
        let result = parse_result(&resp, id).context("initialize")?;
        let version = result.get("protocolVersion").and_then(Value::as_str);
        if version != Some(LEGACY_VERSION) {
            bail!("initialize negotiated protocolVersion {version:?}, expected {LEGACY_VERSION}");
        }
        self.session = resp.headers.get("mcp-session-id").cloned();
        let body = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_string();
        let headers = self.headers("notifications/initialized");
        let resp = self
            .post(&headers, body)
            .await
            .context("notifications/initialized")?;
        if resp.status != StatusCode::ACCEPTED {
            bail!(
                "notifications/initialized answered {} (expected 202)",
                resp.status
            );
        }
        Ok(())
    }

    async fn discover(&mut self) -> Result<()> {
        let id = self.take_id();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"server/discover","params":{{"_meta":{{"{META_VERSION}":"{MODERN_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        );
        let headers = self.headers("server/discover");
        let resp = self.post(&headers, body).await.context("server/discover")?;
        let result = parse_result(&resp, id).context("server/discover")?;
        let supported = result
            .get("supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|v| v.as_str() == Some(MODERN_VERSION)));
        if !supported {
            bail!("server/discover does not offer {MODERN_VERSION}: {result}");
        }
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// One `tools/call echo {"text":"hello"}`, checked end to end.
    pub async fn call_echo(&mut self) -> Result<()> {
        let (id, resp) = self.send_echo().await?;
        self.check_echo(id, &resp)
    }

    /// Sends one `tools/call echo` and returns its id and the raw response,
    /// unchecked (the revocation probe needs the status of a refused call).
    pub async fn send_echo(&mut self) -> Result<(u64, HttpResponse)> {
        let id = self.take_id();
        let body = match self.era {
            Era::Legacy => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}}}}}}"#
            ),
            Era::Modern => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}},"_meta":{{"{META_VERSION}":"{MODERN_VERSION}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
            ),
        };
        let mut headers = self.headers("tools/call");
        if self.era == Era::Modern {
            headers.push(("mcp-name", HeaderValue::from_static("echo")));
        }
        let resp = self.post(&headers, body).await?;
        Ok((id, resp))
    }

    /// Checks a `tools/call echo` response: HTTP 200, matching id, echoed text.
    pub fn check_echo(&mut self, id: u64, resp: &HttpResponse) -> Result<()> {
        let result = parse_result(resp, id)?;
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            bail!("tools/call returned isError: {result}");
        }
        let text = result.pointer("/content/0/text").and_then(Value::as_str);
        if text != Some("hello") {
            bail!("tools/call result does not echo \"hello\": {result}");
        }
        if self.era == Era::Modern {
            match result.get("resultType").and_then(Value::as_str) {
                Some("complete") => {}
                other => self.warn(format!("modern tools/call result has resultType {other:?}")),
            }
        }
        Ok(())
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < 8 && !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    /// Ends a legacy session with DELETE (405 is an allowed answer).
    pub async fn close(mut self) -> Result<()> {
        let Some(sid) = self.session.clone() else {
            return Ok(());
        };
        let mut headers = vec![
            ("mcp-session-id", sid),
            (
                "mcp-protocol-version",
                HeaderValue::from_static(LEGACY_VERSION),
            ),
        ];
        if let Some(a) = &self.endpoint.authorization {
            headers.push(("authorization", a.clone()));
        }
        let path = self.endpoint.path.clone();
        let resp = self
            .conn
            .send(Method::DELETE, &path, &headers, Bytes::new())
            .await?;
        if !(resp.status.is_success() || resp.status == StatusCode::METHOD_NOT_ALLOWED) {
            bail!("DELETE of the session answered {}", resp.status);
        }
        Ok(())
    }
}

/// Extracts the `result` of the JSON-RPC response with id `id` from a JSON or
/// SSE HTTP response.
fn parse_result(resp: &HttpResponse, id: u64) -> Result<Value> {
    if resp.status != StatusCode::OK {
        bail!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    let ctype = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let msg = if ctype.starts_with("application/json") {
        serde_json::from_slice::<Value>(&resp.body).context("response body is not JSON")?
    } else if ctype.starts_with("text/event-stream") {
        find_in_sse(&resp.body, id)?
    } else {
        bail!("unexpected Content-Type {ctype:?}");
    };
    if msg.get("id").and_then(Value::as_u64) != Some(id) {
        bail!(
            "response id {:?} does not match request id {id}",
            msg.get("id")
        );
    }
    if let Some(err) = msg.get("error") {
        bail!("JSON-RPC error: {err}");
    }
    msg.get("result")
        .cloned()
        .ok_or_else(|| anyhow!("response has neither result nor error: {msg}"))
}

/// Scans SSE events (`data:` lines, blank-line separated) for the response with `id`.
fn find_in_sse(body: &[u8], id: u64) -> Result<Value> {
    let text = std::str::from_utf8(body).context("SSE body is not UTF-8")?;
    let mut data = String::new();
    let check = |data: &mut String| -> Option<Value> {
        let found = serde_json::from_str::<Value>(data).ok().filter(|m| {
            m.get("method").is_none() && m.get("id").and_then(Value::as_u64) == Some(id)
        });
        data.clear();
        found
    };
    for line in text.lines() {
        if line.is_empty() {
            if let Some(v) = check(&mut data) {
                return Ok(v);
            }
        } else if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    check(&mut data).ok_or_else(|| anyhow!("no response with id {id} in the SSE stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_finds_the_response_after_notifications() {
        let body = b"id: 1\ndata:\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":true}}\n\n";
        let v = find_in_sse(body, 7).expect("found");
        assert_eq!(v["result"]["ok"], true);
        assert!(find_in_sse(body, 8).is_err());
    }

    #[test]
    fn sse_without_trailing_blank_line() {
        let body = b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}";
        assert!(find_in_sse(body, 3).is_ok());
    }
}
