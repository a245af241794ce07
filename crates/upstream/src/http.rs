//! Streamable HTTP upstreams, both eras.
//!
//! Legacy (2025-06-18 / 2025-11-25): a session id from `initialize`, POST per message,
//! JSON or SSE answers, an optional GET stream for unrelated messages, and SEP-1699
//! polling servers that close a stream early and expect GET + `Last-Event-ID`.
//! Modern (2026-07-28): stateless POSTs with mirrored headers; dropping the response
//! stream is how a request is cancelled.

use crate::duplex::{lock, InFlight};
use crate::{EventSink, RelatedSink, RequestOptions, UpstreamError};
use futures_util::StreamExt;
use portcullis_protocol::era::{self, Era};
use portcullis_protocol::headers::encode_value;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use sse_stream::SseByteStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_RESUMES: usize = 20;
const DEFAULT_RETRY_MS: u64 = 1_000;
/// Largest JSON answer accepted from an upstream.
const MAX_BODY: usize = 64 * 1024 * 1024;

pub(crate) struct HttpConn {
    pub(crate) name: String,
    client: reqwest::Client,
    pub(crate) url: reqwest::Url,
    static_headers: HeaderMap,
    pub(crate) era: Era,
    pub(crate) protocol_version: Mutex<String>,
    session_id: Mutex<Option<String>>,
    inflight: InFlight,
    events: EventSink,
    alive: AtomicBool,
    stop: CancellationToken,
}

enum Answer {
    Response(Value),
    Accepted,
}

impl HttpConn {
    pub(crate) fn new(
        name: String,
        client: reqwest::Client,
        url: reqwest::Url,
        static_headers: HeaderMap,
        era: Era,
        events: EventSink,
    ) -> Arc<HttpConn> {
        let version = match era {
            Era::Modern => era::MODERN.to_owned(),
            Era::Legacy => era::LATEST_LEGACY.to_owned(),
        };
        Arc::new(HttpConn {
            name,
            client,
            url,
            static_headers,
            era,
            protocol_version: Mutex::new(version),
            session_id: Mutex::new(None),
            inflight: InFlight::default(),
            events,
            alive: AtomicBool::new(true),
            stop: CancellationToken::new(),
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    pub(crate) fn set_version(&self, version: &str) {
        *lock(&self.protocol_version) = version.to_owned();
    }

    fn headers(&self, msg: &Value, opts: Option<&RequestOptions>, with_version: bool) -> HeaderMap {
        let mut h = self.static_headers.clone();
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if with_version {
            if let Ok(v) = HeaderValue::from_str(&lock(&self.protocol_version)) {
                h.insert(era::HEADER_PROTOCOL_VERSION, v);
            }
        }
        if let Some(sid) = lock(&self.session_id).as_deref() {
            if let Ok(v) = HeaderValue::from_str(sid) {
                h.insert(era::HEADER_SESSION_ID, v);
            }
        }
        if self.era == Era::Modern {
            if let Some(m) = msg.get("method").and_then(Value::as_str) {
                if let Ok(v) = HeaderValue::from_str(m) {
                    h.insert(era::HEADER_METHOD, v);
                }
                if let Some((_, Some(n))) = era::mirrored_name(m, msg) {
                    if let Ok(v) = HeaderValue::from_str(&encode_value(n)) {
                        h.insert(era::HEADER_NAME, v);
                    }
                }
            }
        }
        // Trace context travels in `_meta` (MCP) and, for HTTP tracing
        // middleware on the upstream's side, as W3C headers too.
        if let Some(meta) = msg.pointer("/params/_meta") {
            for key in ["traceparent", "tracestate"] {
                if let Some(v) = meta.get(key).and_then(Value::as_str) {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        h.insert(key, v);
                    }
                }
            }
        }
        if let Some(opts) = opts {
            for (k, v) in &opts.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
                {
                    h.insert(k, v);
                }
            }
        }
        h
    }

    /// Send a request and wait for its response, forwarding related messages.
    pub(crate) async fn request(
        self: &Arc<Self>,
        mut msg: Value,
        related: Option<RelatedSink>,
        opts: Option<&RequestOptions>,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        if !self.is_alive() {
            return Err(UpstreamError::Closed(self.name.clone()));
        }
        let id = self.inflight.register(&mut msg, related, None);
        let mut guard = CancelOnDrop {
            conn: self.clone(),
            id,
            armed: self.era == Era::Legacy,
        };
        let is_init = msg.get("method").and_then(Value::as_str) == Some("initialize");
        let headers = self.headers(&msg, opts, !is_init);
        let outcome = tokio::time::timeout(timeout, self.exchange(headers, &msg, Some(id))).await;
        let original = self.inflight.finish(id);
        let result = match outcome {
            Err(_) => {
                return Err(UpstreamError::Timeout(
                    self.name.clone(),
                    timeout.as_millis() as u64,
                ))
            }
            Ok(r) => r,
        };
        guard.armed = false;
        match result? {
            Answer::Response(mut resp) => {
                if let (Some(obj), Some(orig)) = (resp.as_object_mut(), original) {
                    obj.insert("id".into(), orig);
                }
                Ok(resp)
            }
            Answer::Accepted => Err(UpstreamError::Protocol(
                self.name.clone(),
                "a request was answered with 202 and no response".into(),
            )),
        }
    }

    /// Send a notification or a response to a server request.
    pub(crate) async fn send(&self, msg: &Value, timeout: Duration) -> Result<(), UpstreamError> {
        let headers = self.headers(msg, None, true);
        match tokio::time::timeout(timeout, self.exchange(headers, msg, None)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(UpstreamError::Timeout(
                self.name.clone(),
                timeout.as_millis() as u64,
            )),
        }
    }

    async fn exchange(
        &self,
        headers: HeaderMap,
        msg: &Value,
        id: Option<u64>,
    ) -> Result<Answer, UpstreamError> {
        let body = serde_json::to_vec(msg).map_err(|e| self.protocol(e.to_string()))?;
        let resp = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                UpstreamError::Unreachable(self.name.clone(), e.without_url().to_string())
            })?;
        let status = resp.status();
        if let Some(sid) = resp.headers().get(era::HEADER_SESSION_ID) {
            if let Ok(s) = sid.to_str() {
                *lock(&self.session_id) = Some(s.to_owned());
            }
        }
        if status == reqwest::StatusCode::NOT_FOUND && lock(&self.session_id).is_some() {
            self.alive.store(false, Ordering::Relaxed);
            return Err(UpstreamError::SessionExpired(self.name.clone()));
        }
        if status == reqwest::StatusCode::ACCEPTED {
            return Ok(Answer::Accepted);
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status.is_success() && is_sse {
            return match id {
                Some(id) => self.read_stream(resp, id).await.map(Answer::Response),
                None => Ok(Answer::Accepted),
            };
        }
        let bytes = self.read_body(resp).await?;
        // A JSON-RPC error in a 4xx body is the upstream's answer: pass it on.
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            if (status.is_success() && v.get("result").is_some()) || v.get("error").is_some() {
                return Ok(Answer::Response(v));
            }
        }
        if status.is_success() {
            return if id.is_some() {
                Err(self.protocol("a request was answered without a JSON-RPC response".into()))
            } else {
                Ok(Answer::Accepted)
            };
        }
        let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        Err(UpstreamError::Http(
            self.name.clone(),
            status.as_u16(),
            text,
        ))
    }

    /// Read a JSON answer, refusing one larger than `MAX_BODY` so a misbehaving
    /// upstream cannot exhaust the gateway's memory.
    async fn read_body(&self, mut resp: reqwest::Response) -> Result<bytes::Bytes, UpstreamError> {
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(self.protocol(format!("answer larger than {MAX_BODY} bytes")));
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            UpstreamError::Unreachable(self.name.clone(), e.without_url().to_string())
        })? {
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(self.protocol(format!("answer larger than {MAX_BODY} bytes")));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    fn protocol(&self, why: String) -> UpstreamError {
        UpstreamError::Protocol(self.name.clone(), why)
    }

    /// Read an SSE answer until the response to `id` arrives, resuming with GET +
    /// `Last-Event-ID` when the server closes the stream early.
    async fn read_stream(&self, resp: reqwest::Response, id: u64) -> Result<Value, UpstreamError> {
        let mut last_event: Option<String> = None;
        let mut retry_ms = DEFAULT_RETRY_MS;
        let mut resp = resp;
        for _ in 0..=MAX_RESUMES {
            let mut events = SseByteStream::new(resp.bytes_stream());
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(_) => break,
                };
                if let Some(r) = ev.retry {
                    retry_ms = r;
                }
                if ev.id.is_some() {
                    last_event = ev.id.clone();
                }
                let Some(data) = ev.data.as_deref().filter(|d| !d.is_empty()) else {
                    continue;
                };
                let msg: Value = match serde_json::from_str(data) {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                if msg.get("method").is_none() {
                    if msg.get("id").and_then(Value::as_u64) == Some(id) {
                        return Ok(msg);
                    }
                    continue;
                }
                self.inflight.route(msg, Some(id), &self.events);
            }
            let Some(last) = last_event.clone() else {
                return Err(self.protocol("the response stream ended without a response".into()));
            };
            if let Some(sink) = self.inflight.related(id) {
                let _ = sink.send(
                    serde_json::json!({"jsonrpc": "2.0", "method": crate::STREAM_PAUSED,
                    "params": {"retryMs": retry_ms}}),
                );
            }
            tokio::time::sleep(Duration::from_millis(retry_ms.min(30_000))).await;
            resp = self.resume(&last).await?;
        }
        Err(self.protocol("too many stream resumptions".into()))
    }

    async fn resume(&self, last_event: &str) -> Result<reqwest::Response, UpstreamError> {
        let mut h = self.headers(&Value::Null, None, true);
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        h.remove(CONTENT_TYPE);
        if let Ok(v) = HeaderValue::from_str(last_event) {
            h.insert(era::HEADER_LAST_EVENT_ID, v);
        }
        let resp = self
            .client
            .get(self.url.clone())
            .headers(h)
            .send()
            .await
            .map_err(|e| {
                UpstreamError::Unreachable(self.name.clone(), e.without_url().to_string())
            })?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Http(
                self.name.clone(),
                resp.status().as_u16(),
                "resuming the stream failed".into(),
            ));
        }
        Ok(resp)
    }

    /// Keep a legacy GET stream open for messages unrelated to any request.
    pub(crate) fn start_listening(self: &Arc<Self>) {
        let conn = self.clone();
        tokio::spawn(async move {
            let mut last_event: Option<String> = None;
            let mut failures = 0u32;
            while conn.is_alive() && !conn.stop.is_cancelled() {
                let mut h = conn.headers(&Value::Null, None, true);
                h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                h.remove(CONTENT_TYPE);
                if let Some(v) = last_event
                    .as_deref()
                    .and_then(|l| HeaderValue::from_str(l).ok())
                {
                    h.insert(era::HEADER_LAST_EVENT_ID, v);
                }
                let req = conn.client.get(conn.url.clone()).headers(h).send();
                let resp = tokio::select! {
                    _ = conn.stop.cancelled() => return,
                    r = req => r,
                };
                let mut retry_ms = DEFAULT_RETRY_MS;
                match resp {
                    Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                        conn.alive.store(false, Ordering::Relaxed);
                        return;
                    }
                    Ok(r) if r.status().is_success() => {
                        failures = 0;
                        let mut events = SseByteStream::new(r.bytes_stream());
                        loop {
                            let ev = tokio::select! {
                                _ = conn.stop.cancelled() => return,
                                ev = events.next() => ev,
                            };
                            let Some(Ok(ev)) = ev else { break };
                            if let Some(ms) = ev.retry {
                                retry_ms = ms;
                            }
                            if ev.id.is_some() {
                                last_event = ev.id.clone();
                            }
                            if let Some(msg) = ev
                                .data
                                .as_deref()
                                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                            {
                                conn.inflight.route(msg, None, &conn.events);
                            }
                        }
                    }
                    _ => failures += 1,
                }
                let backoff = if failures == 0 {
                    retry_ms
                } else {
                    (500u64 << failures.min(6)).min(30_000)
                };
                tokio::select! {
                    _ = conn.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                }
            }
        });
    }

    /// End the upstream session (DELETE) and stop listening.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        self.alive.store(false, Ordering::Relaxed);
        let sid = lock(&self.session_id).clone();
        if let (Era::Legacy, Some(_)) = (self.era, sid) {
            let mut h = self.headers(&Value::Null, None, true);
            h.remove(CONTENT_TYPE);
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.client.delete(self.url.clone()).headers(h).send(),
            )
            .await;
        }
    }

    fn cancel(self: &Arc<Self>, id: u64) {
        let conn = self.clone();
        tokio::spawn(async move {
            let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "cancelled by the client"}});
            let _ = conn.send(&note, Duration::from_secs(5)).await;
        });
    }
}

/// A legacy upstream is told explicitly when a request is abandoned; a modern one
/// learns it from the closed stream.
struct CancelOnDrop {
    conn: Arc<HttpConn>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.conn.inflight.finish(self.id);
            self.conn.cancel(self.id);
        }
    }
}
