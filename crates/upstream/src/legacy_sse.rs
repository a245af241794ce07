//! The deprecated HTTP+SSE transport (2024-11-05) as an upstream: a GET stream that
//! first names a POST endpoint, then carries every server message.

use crate::duplex::Duplex;
use crate::{EventSink, UpstreamError};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use sse_stream::SseByteStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Stops the stream reader and the writer when dropped.
pub(crate) struct SseGuard {
    stop: CancellationToken,
}

impl SseGuard {
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) async fn connect(
    name: &str,
    client: reqwest::Client,
    url: &str,
    static_headers: HeaderMap,
    events: EventSink,
    timeout: Duration,
) -> Result<(Arc<Duplex>, SseGuard), UpstreamError> {
    let unreachable = |e: String| UpstreamError::Unreachable(name.to_owned(), e);
    let mut h = static_headers.clone();
    h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let resp = tokio::time::timeout(timeout, client.get(url).headers(h).send())
        .await
        .map_err(|_| UpstreamError::Timeout(name.to_owned(), timeout.as_millis() as u64))?
        .map_err(|e| unreachable(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(UpstreamError::Http(
            name.to_owned(),
            resp.status().as_u16(),
            "the SSE stream was refused".into(),
        ));
    }
    let mut stream = SseByteStream::new(resp.bytes_stream());
    let endpoint = loop {
        let ev = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| UpstreamError::Timeout(name.to_owned(), timeout.as_millis() as u64))?;
        match ev {
            Some(Ok(ev)) if ev.event.as_deref() == Some("endpoint") => {
                break ev.data.unwrap_or_default();
            }
            Some(Ok(_)) => continue,
            _ => {
                return Err(unreachable(
                    "the SSE stream ended before naming an endpoint".into(),
                ))
            }
        }
    };
    let base = reqwest::Url::parse(url).map_err(|e| unreachable(e.to_string()))?;
    let post_url = base
        .join(endpoint.trim())
        .map_err(|e| unreachable(format!("bad endpoint {endpoint:?}: {e}")))?;
    if post_url.origin() != base.origin() {
        // Following an endpoint on another origin would let the server redirect our
        // credentials anywhere.
        return Err(UpstreamError::Protocol(
            name.to_owned(),
            "the endpoint event names another origin".into(),
        ));
    }

    let (out_tx, mut out_rx) = mpsc::channel::<Value>(256);
    let duplex = Arc::new(Duplex::new(name.to_owned(), out_tx, events));
    let stop = CancellationToken::new();

    let reader = duplex.clone();
    let reader_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = reader_stop.cancelled() => break,
                ev = stream.next() => ev,
            };
            let Some(Ok(ev)) = ev else { break };
            if ev.event.as_deref().is_some_and(|e| e != "message") {
                continue;
            }
            if let Some(msg) = ev
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
            {
                reader.dispatch(msg);
            }
        }
        reader.mark_dead();
    });

    let writer_stop = stop.clone();
    let writer_name = name.to_owned();
    let writer_duplex = duplex.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = writer_stop.cancelled() => break,
                m = out_rx.recv() => m,
            };
            let Some(msg) = msg else { break };
            let mut h = static_headers.clone();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let body = serde_json::to_vec(&msg).unwrap_or_default();
            match client
                .post(post_url.clone())
                .headers(h)
                .body(body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(upstream = %writer_name, status = %r.status(), "SSE upstream refused a message")
                }
                Err(e) => {
                    tracing::warn!(upstream = %writer_name, error = %e.without_url(), "SSE upstream POST failed");
                    writer_duplex.mark_dead();
                    break;
                }
            }
        }
    });
    Ok((duplex, SseGuard { stop }))
}
