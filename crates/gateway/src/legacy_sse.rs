//! The deprecated HTTP+SSE transport (2024-11-05) for old clients: `GET
//! /mcp/<vs>/sse` opens the stream and names a POST endpoint; every answer travels
//! on the stream.

use crate::http::{admit, json_error, on_session_message, read_message, start_session, Reply};
use crate::respond::Pending;
use crate::session::Session;
use crate::Gateway;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use portcullis_identity::Principal;
use portcullis_protocol::jsonrpc::result_response;
use portcullis_protocol::{ErrorCode, MessageKind};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// One open stream: where its messages go, its session once initialized, and
/// the subject of the principal that opened it.
type SseEntry = (
    mpsc::UnboundedSender<Value>,
    Option<Arc<Session>>,
    Option<String>,
);

/// Open SSE streams by their endpoint id, with the session once initialized.
#[derive(Default)]
pub(crate) struct SseTransports {
    streams: Mutex<HashMap<String, SseEntry>>,
}

impl SseTransports {
    /// Drop every stream (shutdown): their responses end.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SseEntry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the transport (and closes its session) when the client disconnects.
struct Cleanup(Arc<Gateway>, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let entry = self.0.sse.lock().remove(&self.1);
        if let Some((_, Some(session), _)) = entry {
            self.0.sessions.remove(&session.id);
            tokio::spawn(async move { session.close().await });
        }
    }
}

pub(crate) async fn open(
    State(gw): State<Arc<Gateway>>,
    Path(vs): Path<String>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let owner = crate::authn::owner(&principal).map(str::to_owned);
    if let Err(r) = admit(&gw, &headers, &vs) {
        return r;
    }
    let id = crate::session::mint_session_id();
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    gw.sse.lock().insert(id.clone(), (tx, None, owner));
    let endpoint = format!("/mcp/{vs}/messages?session_id={id}");
    let cleanup = Cleanup(gw.clone(), id);
    let first = futures_util::stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("endpoint").data(endpoint))
    });
    let rest = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |v| {
        let _keep = &cleanup;
        Ok(Event::default()
            .event("message")
            .data(serde_json::to_string(&v).unwrap_or_default()))
    });
    Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

pub(crate) async fn post(
    State(gw): State<Arc<Gateway>>,
    Path(vs): Path<String>,
    principal: Option<Extension<Principal>>,
    who: Option<Extension<crate::Who>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = admit(&gw, &headers, &vs) {
        return r;
    }
    let Some(sid) = q.get("session_id").or_else(|| q.get("sessionId")).cloned() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "session_id query parameter required",
        );
    };
    let owner = crate::authn::owner(&principal);
    let found = gw.sse.lock().get(&sid).cloned();
    let Some((tx, session, _)) = found.filter(|e| e.2.as_deref() == owner) else {
        return json_error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequest,
            "unknown SSE session",
        );
    };
    let (msg, arrival) = match read_message(&gw, &headers, body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let session = match (session, &msg.kind) {
        (Some(s), _) => s,
        (None, MessageKind::Request { id, method }) if method == "initialize" => {
            let (s, result) = match start_session(&gw, &vs, &msg.value, owner).await {
                Ok(started) => started,
                Err((status, code, text)) => return json_error(status, code, text),
            };
            let _ = tx.send(result_response(id.clone(), result));
            if let Some(e) = gw.sse.lock().get_mut(&sid) {
                e.1 = Some(s.clone());
            }
            forward_session_stream(&s, tx.clone());
            return StatusCode::ACCEPTED.into_response();
        }
        (None, _) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                "initialize first",
            )
        }
    };
    session.touch();
    match on_session_message(&gw, &session, msg, arrival, who.map(|w| w.0)).await {
        Some(Reply::Request(Pending { mut rx, mut work })) => {
            tokio::spawn(async move {
                let paused = |m: &Value| {
                    m.get("method").and_then(Value::as_str)
                        == Some(portcullis_upstream::STREAM_PAUSED)
                };
                loop {
                    tokio::select! {
                        Some(m) = rx.recv() => {
                            if !paused(&m) {
                                let _ = tx.send(m);
                            }
                        }
                        resp = &mut work => {
                            while let Ok(m) = rx.try_recv() {
                                if !paused(&m) {
                                    let _ = tx.send(m);
                                }
                            }
                            let _ = tx.send(resp);
                            break;
                        }
                    }
                }
            });
        }
        None => {}
    }
    StatusCode::ACCEPTED.into_response()
}

/// Session-wide messages (list changes, unrelated requests) share the one stream.
fn forward_session_stream(session: &Arc<Session>, tx: mpsc::UnboundedSender<Value>) {
    if let Some(mut rx) = session.open_stream() {
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
    }
}
