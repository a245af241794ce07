//! Downstream legacy sessions: gateway-minted ids, the server→client request table,
//! and the session-wide (GET) stream.

use crate::binding::{now_secs, Binding};
use portcullis_protocol::names;
use rand::RngCore;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

const BACKLOG_LIMIT: usize = 256;

/// Who is waiting for the client's answer to a server→client request.
pub enum Waiter {
    /// An upstream asked; its own id must be restored.
    Upstream { member: usize, id: Value },
    /// The gateway asked (era bridging).
    Gateway(oneshot::Sender<Value>),
}

pub struct Session {
    pub id: String,
    /// Subject of the principal that created the session; only it may use it.
    pub owner: Option<String>,
    pub binding: Arc<Binding>,
    pub protocol_version: String,
    pub client_capabilities: Value,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<String, Waiter>>,
    /// Client request id (JSON text) → task serving it, for `notifications/cancelled`.
    running: Mutex<HashMap<String, futures_util::future::AbortHandle>>,
    stream: Mutex<(Option<mpsc::UnboundedSender<Value>>, VecDeque<Value>)>,
    last_used: AtomicU64,
    closed: AtomicBool,
    /// Resumable request streams.
    pub replay: crate::replay::ReplayLog,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 256 random bits, hex: visible ASCII as the spec requires.
pub fn mint_session_id() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Session {
    pub fn new(
        binding: Arc<Binding>,
        protocol_version: String,
        client_capabilities: Value,
        owner: Option<String>,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            id: mint_session_id(),
            owner,
            binding: binding.clone(),
            protocol_version,
            client_capabilities,
            next_id: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            stream: Mutex::new((None, VecDeque::new())),
            last_used: AtomicU64::new(now_secs()),
            closed: AtomicBool::new(false),
            replay: Default::default(),
        });
        let weak = Arc::downgrade(&session);
        binding.set_event_handler(Arc::new(move |member, msg| {
            if let Some(s) = weak.upgrade() {
                let msg = s.translate_upstream(member, msg);
                s.push_to_stream(msg);
            }
        }));
        session
    }

    pub fn touch(&self) {
        self.last_used.store(now_secs(), Ordering::Relaxed);
        self.binding.touch();
    }

    pub fn idle_secs(&self) -> u64 {
        let own = now_secs().saturating_sub(self.last_used.load(Ordering::Relaxed));
        own.min(self.binding.idle_secs())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Translate a message an upstream sent so the client can use it: requests get
    /// gateway ids, cancellations of them follow, resource URIs get namespaced.
    pub fn translate_upstream(&self, member: usize, mut msg: Value) -> Value {
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if msg.get("id").is_some() {
            let upstream_id = msg["id"].clone();
            let gw = self.register(Waiter::Upstream {
                member,
                id: upstream_id,
            });
            msg["id"] = Value::from(gw);
            return msg;
        }
        match method.as_str() {
            "notifications/cancelled" => {
                if let Some(rid) = msg.pointer("/params/requestId").cloned() {
                    let waiters = lock(&self.waiters);
                    let found = waiters.iter().find_map(|(k, w)| match w {
                        Waiter::Upstream { member: m, id } if *m == member && *id == rid => {
                            Some(k.clone())
                        }
                        _ => None,
                    });
                    if let Some(k) = found {
                        msg["params"]["requestId"] = Value::from(k);
                    }
                }
            }
            "notifications/resources/updated" => {
                let prefix = &self.binding.vs.members[member].prefix;
                if let Some(uri) = msg.pointer("/params/uri").and_then(Value::as_str) {
                    let namespaced = names::namespace_uri(prefix, uri);
                    msg["params"]["uri"] = Value::from(namespaced);
                }
            }
            _ => {}
        }
        msg
    }

    /// Remember who waits for a server→client request; returns the client-facing id.
    pub fn register(&self, waiter: Waiter) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("pc-{n}");
        lock(&self.waiters).insert(id.clone(), waiter);
        id
    }

    pub fn take_waiter(&self, id: &Value) -> Option<Waiter> {
        let key = id.as_str()?;
        lock(&self.waiters).remove(key)
    }

    pub fn forget_waiter(&self, id: &str) {
        lock(&self.waiters).remove(id);
    }

    pub fn track(&self, client_id: &Value, task: futures_util::future::AbortHandle) {
        lock(&self.running).insert(client_id.to_string(), task);
    }

    pub fn untrack(&self, client_id: &Value) {
        lock(&self.running).remove(&client_id.to_string());
    }

    /// Abort the task serving a client request (the client cancelled it).
    pub fn cancel(&self, client_id: &Value) -> bool {
        match lock(&self.running).remove(&client_id.to_string()) {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Send a message on the session-wide stream, or keep it until one is open.
    pub fn push_to_stream(&self, msg: Value) {
        let mut s = lock(&self.stream);
        if let Some(tx) = &s.0 {
            match tx.send(msg) {
                Ok(()) => return,
                Err(e) => {
                    s.0 = None;
                    s.1.push_back(e.0);
                }
            }
        } else {
            s.1.push_back(msg);
        }
        while s.1.len() > BACKLOG_LIMIT {
            s.1.pop_front();
        }
    }

    /// Attach the session-wide stream; returns `None` when one is already open.
    pub fn open_stream(&self) -> Option<mpsc::UnboundedReceiver<Value>> {
        let mut s = lock(&self.stream);
        if s.0.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for m in s.1.drain(..) {
            let _ = tx.send(m);
        }
        s.0 = Some(tx);
        Some(rx)
    }

    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        lock(&self.stream).0 = None;
        for (_, h) in lock(&self.running).drain() {
            h.abort();
        }
        lock(&self.waiters).clear();
        self.binding.close().await;
    }
}

/// All live sessions. Lookups are lock-free of I/O; nothing is held across `.await`.
#[derive(Default)]
pub struct SessionStore {
    sessions: RwLock<HashMap<String, Arc<Session>>>,
}

impl SessionStore {
    /// A live session of `vs` owned by `owner`: another principal presenting the
    /// id gets nothing, exactly as if it did not exist.
    pub fn get(&self, vs: &str, id: &str, owner: Option<&str>) -> Option<Arc<Session>> {
        let s = self
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()?;
        (s.binding.vs.name == vs && !s.is_closed() && s.owner.as_deref() == owner).then_some(s)
    }

    /// Sessions whose owner is one of `owners`.
    pub fn owned_by(&self, owners: &[String]) -> Vec<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.owner.as_ref().is_some_and(|o| owners.contains(o)))
            .cloned()
            .collect()
    }

    pub fn insert(&self, s: Arc<Session>) {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id.clone(), s);
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Sessions idle for longer than `max_idle` seconds, removed from the store.
    pub fn take_idle(&self, max_idle: u64) -> Vec<Arc<Session>> {
        let mut map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let idle: Vec<String> = map
            .iter()
            .filter(|(_, s)| s.idle_secs() > max_idle && !s.binding.busy())
            .map(|(k, _)| k.clone())
            .collect();
        idle.iter().filter_map(|k| map.remove(k)).collect()
    }

    pub fn drain(&self) -> Vec<Arc<Session>> {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect()
    }
}
