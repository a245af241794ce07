//! Request/response correlation for connections that carry every message on one
//! channel (stdio pipes, the deprecated HTTP+SSE transport), plus the id and
//! progress-token rewriting that all connections share.

use crate::{EventSink, RelatedSink, UpstreamError};
use portcullis_protocol::era::META_SUBSCRIPTION_ID;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

struct Entry {
    original_id: Value,
    original_token: Option<Value>,
    related: Option<RelatedSink>,
    responder: Option<oneshot::Sender<Value>>,
}

/// Requests in flight on one connection, keyed by the id the gateway gave them
/// upstream. The upstream id doubles as the upstream progress token, so progress
/// from a shared connection always finds its way back to the right caller.
#[derive(Default)]
pub(crate) struct InFlight {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl InFlight {
    /// Give `msg` a fresh upstream id (and progress token) and remember the originals.
    pub(crate) fn register(
        &self,
        msg: &mut Value,
        related: Option<RelatedSink>,
        responder: Option<oneshot::Sender<Value>>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let original_id = msg.get("id").cloned().unwrap_or(Value::Null);
        let mut original_token = None;
        if let Some(obj) = msg.as_object_mut() {
            obj.insert("id".into(), Value::from(id));
            if let Some(meta) = obj
                .get_mut("params")
                .and_then(|p| p.get_mut("_meta"))
                .and_then(Value::as_object_mut)
            {
                if let Some(tok) = meta.get_mut("progressToken") {
                    original_token = Some(std::mem::replace(tok, Value::from(id)));
                }
            }
        }
        let entry = Entry {
            original_id,
            original_token,
            related,
            responder,
        };
        lock(&self.entries).insert(id, entry);
        id
    }

    /// The related sink of an in-flight request.
    pub(crate) fn related(&self, id: u64) -> Option<RelatedSink> {
        lock(&self.entries).get(&id).and_then(|e| e.related.clone())
    }

    /// Forget a request; returns its original id.
    pub(crate) fn finish(&self, id: u64) -> Option<Value> {
        lock(&self.entries).remove(&id).map(|e| e.original_id)
    }

    /// Complete a request whose response came on the shared channel.
    fn complete(&self, mut response: Value) -> bool {
        let Some(id) = response.get("id").and_then(Value::as_u64) else {
            return false;
        };
        let Some(entry) = lock(&self.entries).remove(&id) else {
            return false;
        };
        if let Some(obj) = response.as_object_mut() {
            obj.insert("id".into(), entry.original_id);
        }
        if let Some(tx) = entry.responder {
            let _ = tx.send(response);
        }
        true
    }

    /// Put the caller's progress token back and find who should get `msg`.
    /// `on_request` names the request whose stream carried the message, if any.
    pub(crate) fn route(&self, mut msg: Value, on_request: Option<u64>, events: &EventSink) {
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let is_progress = method == "notifications/progress";
        let subscription = msg
            .pointer("/params/_meta")
            .and_then(|m| m.get(META_SUBSCRIPTION_ID))
            .and_then(Value::as_u64);
        // Catalog and resource changes belong to no call, unless they answer a
        // `subscriptions/listen` request (2026-07-28), which names itself.
        let unrelated =
            method.ends_with("/list_changed") || method == "notifications/resources/updated";
        let entries = lock(&self.entries);
        let target = if let Some(sub) = subscription {
            match entries.get(&sub) {
                Some(e) => {
                    if let Some(meta) = msg
                        .pointer_mut("/params/_meta")
                        .and_then(Value::as_object_mut)
                    {
                        meta.insert(META_SUBSCRIPTION_ID.into(), e.original_id.clone());
                    }
                    e.related.clone()
                }
                None => None,
            }
        } else if is_progress {
            let token = msg
                .get("params")
                .and_then(|p| p.get("progressToken"))
                .and_then(Value::as_u64);
            match token.and_then(|t| entries.get(&t)) {
                Some(e) => {
                    if let (Some(orig), Some(params)) = (
                        e.original_token.clone(),
                        msg.get_mut("params").and_then(Value::as_object_mut),
                    ) {
                        params.insert("progressToken".into(), orig);
                    }
                    e.related.clone()
                }
                None => None,
            }
        } else if unrelated && on_request.is_none() {
            None
        } else {
            match on_request {
                Some(id) => entries.get(&id).and_then(|e| e.related.clone()),
                // One channel for everything: attribute it to the newest request
                // that can receive related messages.
                None => entries
                    .iter()
                    .filter(|(_, e)| e.related.is_some() && e.responder.is_some())
                    .max_by_key(|(k, _)| **k)
                    .and_then(|(_, e)| e.related.clone()),
            }
        };
        drop(entries);
        let undelivered = match target {
            Some(sink) => sink.send(msg).err().map(|e| e.0),
            None => Some(msg),
        };
        if let Some(msg) = undelivered {
            events(msg);
        }
    }

    /// Fail everything still waiting (the channel died).
    pub(crate) fn fail_all(&self) {
        lock(&self.entries).clear();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection whose messages all travel on one channel in each direction.
pub(crate) struct Duplex {
    pub(crate) name: String,
    out: mpsc::Sender<Value>,
    pub(crate) inflight: InFlight,
    events: EventSink,
    alive: AtomicBool,
}

impl Duplex {
    pub(crate) fn new(name: String, out: mpsc::Sender<Value>, events: EventSink) -> Duplex {
        Duplex {
            name,
            out,
            inflight: InFlight::default(),
            events,
            alive: AtomicBool::new(true),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && !self.out.is_closed()
    }

    /// Called by the reader for every message the upstream sends.
    pub(crate) fn dispatch(&self, msg: Value) {
        let is_response = msg.get("method").is_none();
        if is_response {
            if !self.inflight.complete(msg) {
                tracing::debug!(upstream = %self.name, "response to an unknown request dropped");
            }
            return;
        }
        self.inflight.route(msg, None, &self.events);
    }

    /// Called by the reader when the channel ends.
    pub(crate) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Relaxed);
        self.inflight.fail_all();
    }

    pub(crate) async fn request(
        &self,
        mut msg: Value,
        related: Option<RelatedSink>,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        if !self.is_alive() {
            return Err(UpstreamError::Closed(self.name.clone()));
        }
        let (tx, rx) = oneshot::channel();
        let id = self.inflight.register(&mut msg, related, Some(tx));
        let guard = CancelOnDrop {
            duplex: self,
            id,
            armed: true,
        };
        if self.out.send(msg).await.is_err() {
            self.inflight.finish(id);
            return Err(UpstreamError::Closed(self.name.clone()));
        }
        let result = tokio::time::timeout(timeout, rx).await;
        let mut guard = guard;
        match result {
            Ok(Ok(resp)) => {
                guard.armed = false;
                Ok(resp)
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(UpstreamError::Closed(self.name.clone()))
            }
            Err(_) => Err(UpstreamError::Timeout(
                self.name.clone(),
                timeout.as_millis() as u64,
            )),
        }
    }

    pub(crate) async fn send(&self, msg: Value) -> Result<(), UpstreamError> {
        self.out
            .send(msg)
            .await
            .map_err(|_| UpstreamError::Closed(self.name.clone()))
    }

    fn cancel(&self, id: u64) {
        if self.inflight.finish(id).is_some() {
            let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": id, "reason": "cancelled by the gateway"}});
            let _ = self.out.try_send(note);
        }
    }
}

/// Tells the upstream a request was abandoned (caller dropped it or it timed out).
struct CancelOnDrop<'a> {
    duplex: &'a Duplex,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.duplex.cancel(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn sink() -> (EventSink, Arc<Mutex<Vec<Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        (Arc::new(move |v| lock(&s2).push(v)), seen)
    }

    #[test]
    fn ids_and_progress_tokens_are_rewritten_and_restored() {
        let inflight = InFlight::default();
        let (events, unrelated) = sink();
        let (tx_a, mut rx_a) = tokio::sync::mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
        let mut a = json!({"jsonrpc":"2.0","id":"client-a","method":"tools/call",
            "params":{"name":"t","_meta":{"progressToken":"tok"}}});
        let mut b = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
            "params":{"name":"t","_meta":{"progressToken":"tok"}}});
        let id_a = inflight.register(&mut a, Some(tx_a), None);
        let id_b = inflight.register(&mut b, Some(tx_b), None);
        assert_ne!(id_a, id_b, "two callers with the same token stay apart");
        assert_eq!(a["id"], json!(id_a));
        assert_eq!(a["params"]["_meta"]["progressToken"], json!(id_a));

        let progress = |tok: u64| {
            json!({"jsonrpc":"2.0","method":"notifications/progress",
            "params":{"progressToken": tok, "progress": 1}})
        };
        inflight.route(progress(id_b), None, &events);
        let got = rx_b.try_recv().unwrap();
        assert_eq!(got["params"]["progressToken"], json!("tok"));
        assert!(rx_a.try_recv().is_err());

        // A list change belongs to no call: it goes to the unrelated sink.
        inflight.route(
            json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}),
            None,
            &events,
        );
        assert_eq!(lock(&unrelated).len(), 1);

        // A 2026-07-28 subscription notification names its listen request.
        let sub = json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed",
            "params":{"_meta":{"io.modelcontextprotocol/subscriptionId": id_a}}});
        inflight.route(sub, None, &events);
        let got = rx_a.try_recv().unwrap();
        assert_eq!(
            got["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            json!("client-a")
        );

        assert_eq!(inflight.finish(id_a), Some(json!("client-a")));
        assert_eq!(inflight.finish(id_a), None);
    }

    #[tokio::test]
    async fn duplex_correlates_responses_and_cancels_abandoned_requests() {
        let (events, _) = sink();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(8);
        let duplex = Arc::new(Duplex::new("t".into(), out_tx, events));
        let d2 = duplex.clone();
        let call = tokio::spawn(async move {
            d2.request(
                json!({"jsonrpc":"2.0","id":"x","method":"ping"}),
                None,
                Duration::from_secs(5),
            )
            .await
        });
        let sent = out_rx.recv().await.unwrap();
        let upstream_id = sent["id"].as_u64().unwrap();
        duplex.dispatch(json!({"jsonrpc":"2.0","id": upstream_id, "result": {}}));
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp["id"], json!("x"), "the caller's id is restored");

        // A request whose caller gives up is cancelled upstream.
        let d3 = duplex.clone();
        let slow = tokio::spawn(async move {
            d3.request(
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call"}),
                None,
                Duration::from_millis(50),
            )
            .await
        });
        let sent = out_rx.recv().await.unwrap();
        assert!(matches!(
            slow.await.unwrap(),
            Err(UpstreamError::Timeout(..))
        ));
        let cancel = out_rx.recv().await.unwrap();
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], sent["id"]);
    }
}
