//! A binding: one virtual server's upstream connections for one kind of caller (a
//! legacy session, or modern stateless callers sharing client capabilities), with
//! the merged catalogs used to route names back to upstreams.

use crate::vserver::{ListKind, VirtualServerRt};
use futures_util::future::join_all;
use portcullis_protocol::era::Era;
use portcullis_upstream::{Connection, OpenParams, UpstreamError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

const MAX_UPSTREAM_PAGES: usize = 100;

/// Receives server-initiated messages, tagged with the member they came from.
pub type MemberEvents = Arc<dyn Fn(usize, Value) + Send + Sync>;

/// A merged list, in deterministic order, with the way back to each upstream.
pub struct Catalog {
    pub items: Vec<Value>,
    /// Exposed name or URI → (member, upstream name or URI).
    pub index: HashMap<String, (usize, String)>,
    positions: HashMap<String, usize>,
    pub fingerprint: u64,
    /// Members that could not be listed, and why.
    pub failures: Vec<UpstreamError>,
}

impl Catalog {
    /// The exposed item named `exposed`.
    pub fn item(&self, exposed: &str) -> Option<&Value> {
        self.positions.get(exposed).and_then(|p| self.items.get(*p))
    }
}

struct Slot {
    conn: RwLock<Option<Arc<Connection>>>,
    opening: tokio::sync::Mutex<()>,
}

pub struct Binding {
    pub vs: Arc<VirtualServerRt>,
    client_era: Era,
    client_capabilities: Value,
    client_info: Value,
    slots: Vec<Slot>,
    catalogs: Mutex<HashMap<ListKind, Arc<Catalog>>>,
    on_event: Mutex<Option<MemberEvents>>,
    self_ref: Weak<Binding>,
    last_used: AtomicU64,
    active: AtomicUsize,
}

/// Marks a call in progress on a binding for as long as it lives.
pub struct ActiveGuard<'a>(&'a Binding);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Binding {
    /// What the client calls itself (`clientInfo.name`), for sessions that
    /// negotiated one.
    pub fn client_name(&self) -> Option<&str> {
        self.client_info.get("name").and_then(Value::as_str)
    }

    pub fn new(
        vs: Arc<VirtualServerRt>,
        client_era: Era,
        client_capabilities: Value,
        client_info: Value,
    ) -> Arc<Binding> {
        let slots = vs
            .members
            .iter()
            .map(|_| Slot {
                conn: RwLock::new(None),
                opening: tokio::sync::Mutex::new(()),
            })
            .collect();
        Arc::new_cyclic(|me| Binding {
            vs,
            client_era,
            client_capabilities,
            client_info,
            slots,
            catalogs: Mutex::new(HashMap::new()),
            on_event: Mutex::new(None),
            self_ref: me.clone(),
            last_used: AtomicU64::new(now_secs()),
            active: AtomicUsize::new(0),
        })
    }

    /// Route server-initiated messages to `f` (a session's streams).
    pub fn set_event_handler(&self, f: MemberEvents) {
        *lock(&self.on_event) = Some(f);
    }

    pub fn touch(&self) {
        self.last_used.store(now_secs(), Ordering::Relaxed);
    }

    pub fn idle_secs(&self) -> u64 {
        now_secs().saturating_sub(self.last_used.load(Ordering::Relaxed))
    }

    fn event(&self, member: usize, msg: Value) {
        if let Some(kind) = msg
            .get("method")
            .and_then(Value::as_str)
            .and_then(list_changed_kind)
        {
            let mut cats = lock(&self.catalogs);
            cats.remove(&kind);
            if kind == ListKind::Resources {
                cats.remove(&ListKind::Templates);
            }
        }
        let handler = lock(&self.on_event).clone();
        if let Some(h) = handler {
            h(member, msg);
        }
    }

    /// The live connection to member `i`, opened on first use and reopened when it died.
    pub async fn conn(&self, i: usize) -> Result<Arc<Connection>, UpstreamError> {
        let slot = &self.slots[i];
        if let Some(c) = read(&slot.conn).as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let _opening = slot.opening.lock().await;
        let stale = read(&slot.conn).clone();
        if let Some(c) = stale.as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        if let Some(old) = stale {
            tokio::spawn(async move { old.close().await });
        }
        let me = self.self_ref.clone();
        let params = OpenParams {
            client_era: self.client_era,
            client_capabilities: self.client_capabilities.clone(),
            client_info: self.client_info.clone(),
            events: Arc::new(move |msg| {
                if let Some(b) = me.upgrade() {
                    b.event(i, msg);
                }
            }),
        };
        let conn = self.vs.members[i].upstream.open(&params).await?;
        *slot.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Open every member concurrently; failures are reported, not fatal.
    pub async fn open_all(&self) -> Vec<Result<Arc<Connection>, UpstreamError>> {
        join_all((0..self.slots.len()).map(|i| self.conn(i))).await
    }

    /// Open every member concurrently, waiting at most `budget`: members still
    /// opening after it keep opening in the background, and `on_late` runs when
    /// each of them is up. Returns the init results of the members that are open.
    pub async fn open_within(
        self: &Arc<Self>,
        budget: std::time::Duration,
        on_late: impl Fn(usize) + Send + Sync + 'static,
    ) -> Vec<Value> {
        let on_late = Arc::new(on_late);
        let deadline = tokio::time::Instant::now() + budget;
        let tasks: Vec<_> = (0..self.slots.len())
            .map(|i| {
                let b = self.clone();
                let late = on_late.clone();
                tokio::spawn(async move {
                    let r = b.conn(i).await;
                    if r.is_ok() && tokio::time::Instant::now() > deadline {
                        late(i);
                    }
                    r
                })
            })
            .collect();
        let _ = tokio::time::timeout_at(deadline, join_all(tasks)).await;
        self.slots
            .iter()
            .filter_map(|s| read(&s.conn).clone())
            .filter(|c| c.is_alive())
            .map(|c| c.init_result().clone())
            .collect()
    }

    pub async fn close(&self) {
        let conns: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.conn.write().unwrap_or_else(|p| p.into_inner()).take())
            .collect();
        join_all(conns.iter().map(|c| c.close())).await;
    }

    pub fn cached(&self, kind: ListKind) -> Option<Arc<Catalog>> {
        lock(&self.catalogs).get(&kind).cloned()
    }

    /// Fetch every page of `kind` from every member that offers it, and merge.
    pub async fn refresh(&self, kind: ListKind) -> Arc<Catalog> {
        let fetches = (0..self.slots.len()).map(|i| self.fetch_member(kind, i));
        let per_member = join_all(fetches).await;
        let mut items = Vec::new();
        let mut failures = Vec::new();
        let mut index: HashMap<String, (usize, String)> = HashMap::new();
        let mut positions = HashMap::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for (i, list) in per_member.into_iter().enumerate() {
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            for item in list {
                let upstream_key = item
                    .get(kind.key())
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let Some((exposed, item)) = self.vs.expose_item(kind, i, item) else {
                    continue;
                };
                if let Some((other, _)) = index.get(&exposed) {
                    tracing::warn!(virtual_server = %self.vs.name, name = %exposed,
                        "name collision: {} keeps it, {} loses it",
                        self.vs.members[*other].upstream.name(),
                        self.vs.members[i].upstream.name());
                    continue;
                }
                std::hash::Hash::hash(&exposed, &mut hasher);
                positions.insert(exposed.clone(), items.len());
                index.insert(exposed, (i, upstream_key));
                items.push(item);
            }
        }
        let catalog = Arc::new(Catalog {
            items,
            index,
            positions,
            failures,
            fingerprint: std::hash::Hasher::finish(&hasher),
        });
        lock(&self.catalogs).insert(kind, catalog.clone());
        catalog
    }

    async fn fetch_member(&self, kind: ListKind, i: usize) -> Result<Vec<Value>, UpstreamError> {
        let conn = match self.conn(i).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(virtual_server = %self.vs.name, error = %e, "member skipped in {}", kind.method());
                return Err(e);
            }
        };
        let caps = conn.init_result().get("capabilities");
        if caps.and_then(|c| c.get(kind.capability())).is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut cursor: Option<Value> = None;
        for page in 0..MAX_UPSTREAM_PAGES {
            let mut params = json!({});
            if let Some(c) = cursor.take() {
                params["cursor"] = c;
            }
            let req = json!({"jsonrpc": "2.0", "id": format!("list-{page}"), "method": kind.method(), "params": params});
            let resp = match conn.request(req, None, None).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(upstream = %conn.name, error = %e, "{} failed", kind.method());
                    return Err(e);
                }
            };
            let Some(result) = resp.get("result") else {
                let why = resp
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                tracing::warn!(upstream = %conn.name, error = why, "{} returned an error", kind.method());
                return Err(UpstreamError::Protocol(
                    conn.name.clone(),
                    format!("{} failed: {why}", kind.method()),
                ));
            };
            if let Some(arr) = result.get(kind.field()).and_then(Value::as_array) {
                out.extend(arr.iter().cloned());
            }
            match result.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Which member and upstream name an exposed tool or prompt name stands for.
    /// Only names the catalog lists resolve, so hidden and unknown tools never reach
    /// an upstream. `Err` carries why a member could not be listed, when the name may
    /// belong to it.
    pub async fn resolve(
        &self,
        kind: ListKind,
        exposed: &str,
    ) -> Result<Option<(usize, String)>, UpstreamError> {
        if let Some(hit) = self
            .cached(kind)
            .and_then(|c| c.index.get(exposed).cloned())
        {
            return Ok(Some(hit));
        }
        let catalog = self.refresh(kind).await;
        match catalog.index.get(exposed) {
            Some(hit) => Ok(Some(hit.clone())),
            None => match catalog.failures.first() {
                Some(e) => Err(e.clone()),
                None => Ok(None),
            },
        }
    }

    /// Lets the idle reaper know a call is running.
    pub fn begin(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActiveGuard(self)
    }

    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Which member serves a (possibly namespaced) resource URI.
    pub async fn resolve_uri(&self, uri: &str) -> Option<(usize, String)> {
        if let Some((i, u)) = self.vs.route_uri(uri) {
            return Some((i, u.to_owned()));
        }
        for kind in [ListKind::Resources, ListKind::Templates] {
            let cat = match self.cached(kind) {
                Some(c) => c,
                None => self.refresh(kind).await,
            };
            if let Some(hit) = cat.index.get(uri) {
                return Some(hit.clone());
            }
        }
        None
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn list_changed_kind(method: &str) -> Option<ListKind> {
    Some(match method {
        "notifications/tools/list_changed" => ListKind::Tools,
        "notifications/prompts/list_changed" => ListKind::Prompts,
        "notifications/resources/list_changed" => ListKind::Resources,
        _ => return None,
    })
}
