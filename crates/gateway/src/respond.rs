//! Writing answers. A request's work runs inline in the HTTP handler: when the
//! response is ready before anything else it goes out in one piece; when related
//! messages (progress, logging, server→client requests) come first, the answer
//! becomes an SSE stream. A legacy client's disconnect never cancels the work (it
//! is detached to a task); a 2026-07-28 client closing its stream does.

use crate::session::Session;
use crate::{http, modern};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_types::{HeaderValue, StatusCode};
use portcullis_protocol::jsonrpc::error_response;
use portcullis_protocol::sse::message_event;
use portcullis_protocol::ErrorCode;
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use ::http as http_types;

/// The work of serving one request; resolves to its JSON-RPC response.
pub(crate) type Work = Pin<Box<dyn Future<Output = Value> + Send>>;

/// A request being served: its work, the related messages it emits, and its id.
pub(crate) struct Pending {
    pub rx: mpsc::UnboundedReceiver<Value>,
    pub work: Work,
}

/// Delay a client should wait before resuming a paused stream.
const RETRY: Duration = Duration::from_millis(500);

/// The answer to a request whose work was cancelled (client cancellation, session
/// end, shutdown): an error carrying the request's own id.
pub(crate) fn cancelled_response(id: Value) -> Value {
    error_response(id, ErrorCode::InternalError, "request cancelled")
}

fn is_pause_marker(m: &Value) -> bool {
    m.get("method").and_then(Value::as_str) == Some(portcullis_upstream::STREAM_PAUSED)
}

/// Holds the work while the handler waits; if the handler is dropped (the client
/// went away) the work is either detached to finish on its own or dropped.
struct Slot {
    work: Option<Work>,
    detach: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (true, Some(work)) = (self.detach, self.work.take()) {
            tokio::spawn(async move {
                let _ = work.await;
            });
        }
    }
}

enum First {
    Done(Value),
    Message(Value),
}

/// Run the work until it completes or emits its first related message.
async fn race(rx: &mut mpsc::UnboundedReceiver<Value>, slot: &mut Slot) -> First {
    let first = match slot.work.as_mut() {
        Some(work) => tokio::select! {
            biased;
            Some(m) = rx.recv() => First::Message(m),
            v = work => First::Done(v),
        },
        None => First::Done(Value::Null),
    };
    if matches!(first, First::Done(_)) {
        slot.work = None;
    }
    first
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Value>) -> Vec<Value> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter(|m| !is_pause_marker(m))
        .collect()
}

/// A legacy request's answer: SSE starting with a priming event and resumable
/// through the session's replay log; JSON for a client that accepts only JSON (its
/// related messages then go to the session stream).
pub(crate) async fn legacy(session: Arc<Session>, mut p: Pending, sse: bool) -> Response {
    let mut slot = Slot {
        work: Some(p.work),
        detach: true,
    };
    if !sse {
        loop {
            match race(&mut p.rx, &mut slot).await {
                First::Message(m) => {
                    if !is_pause_marker(&m) {
                        session.push_to_stream(m);
                    }
                }
                First::Done(resp) => {
                    for m in drain(&mut p.rx) {
                        session.push_to_stream(m);
                    }
                    return http::json_response(StatusCode::OK, &resp);
                }
            }
        }
    }
    match race(&mut p.rx, &mut slot).await {
        First::Done(resp) => {
            // Complete already: one write, no replay needed.
            let n = session.replay.number();
            let mut body = priming(n);
            let events = drain(&mut p.rx).into_iter().chain(std::iter::once(resp));
            for (seq, m) in events.enumerate() {
                let json = serde_json::to_string(&m).unwrap_or_default();
                let id = crate::replay::event_id(n, seq as u64 + 1);
                body.extend_from_slice(&message_event(&json, Some(&id)));
            }
            raw_sse(Body::from(body))
        }
        First::Message(first) => {
            let (n, live) = session.replay.open();
            if is_pause_marker(&first) {
                session.replay.pause(n);
            } else {
                session.replay.append(n, first);
            }
            let work = slot.work.take();
            tokio::spawn(pump(session, n, p.rx, work));
            let head = stream::once(async move { Ok::<_, Infallible>(Bytes::from(priming(n))) });
            raw_sse(Body::from_stream(head.chain(replayed(live))))
        }
    }
}

/// Drive detached legacy work to its end, recording everything in the replay log.
async fn pump(
    session: Arc<Session>,
    n: u64,
    mut rx: mpsc::UnboundedReceiver<Value>,
    work: Option<Work>,
) {
    let Some(mut work) = work else { return };
    loop {
        tokio::select! {
            Some(m) = rx.recv() => {
                if is_pause_marker(&m) {
                    session.replay.pause(n);
                } else {
                    session.replay.append(n, m);
                }
            }
            resp = &mut work => {
                for m in drain(&mut rx) {
                    session.replay.append(n, m);
                }
                session.replay.append(n, resp);
                session.replay.finish(n);
                return;
            }
        }
    }
}

fn priming(n: u64) -> Vec<u8> {
    format!(
        "id: {}\nretry: {}\ndata: \n\n",
        crate::replay::event_id(n, 0),
        RETRY.as_millis()
    )
    .into_bytes()
}

pub(crate) fn replayed(
    rx: mpsc::UnboundedReceiver<(String, Value)>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|(id, v)| {
        let json = serde_json::to_string(&v).unwrap_or_default();
        Ok(message_event(&json, Some(&id)))
    })
}

/// An SSE response from pre-framed events (axum's framing cannot emit the empty
/// `data:` line a priming event needs).
pub(crate) fn raw_sse(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        http_types::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http_types::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn event(v: &Value) -> Bytes {
    message_event(&serde_json::to_string(v).unwrap_or_default(), None)
}

/// A 2026-07-28 request's answer: JSON when nothing came before the response,
/// otherwise an SSE stream scoped to the request. Dropping it cancels the work.
pub(crate) async fn modern(mut p: Pending, method: String, server_info: Value) -> Response {
    let mut slot = Slot {
        work: Some(p.work),
        detach: false,
    };
    let finish = move |mut v: Value| {
        modern::decorate(&method, &mut v, &server_info);
        v
    };
    match race(&mut p.rx, &mut slot).await {
        First::Done(resp) => {
            let pending = drain(&mut p.rx);
            let resp = finish(resp);
            if pending.is_empty() {
                return http::json_response(modern::status_for(&resp), &resp);
            }
            let mut body = Vec::new();
            for m in pending.iter().chain(std::iter::once(&resp)) {
                body.extend_from_slice(&event(m));
            }
            raw_sse(Body::from(body))
        }
        First::Message(first) => {
            let work = slot.work.take();
            let state = (p.rx, work, finish);
            let rest = stream::unfold(Some(state), |state| async move {
                let (mut rx, mut work, finish) = state?;
                let w = work.as_mut()?;
                tokio::select! {
                    biased;
                    Some(m) = rx.recv() => Some((vec![event(&m)], Some((rx, work, finish)))),
                    resp = w => {
                        let mut out: Vec<Bytes> = drain(&mut rx).iter().map(event).collect();
                        out.push(event(&finish(resp)));
                        Some((out, None))
                    }
                }
            })
            .flat_map(|v| stream::iter(v.into_iter().map(Ok::<_, Infallible>)));
            let head = stream::once(async move { Ok::<_, Infallible>(event(&first)) });
            raw_sse(Body::from_stream(head.chain(rest)))
        }
    }
}
