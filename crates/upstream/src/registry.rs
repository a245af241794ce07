//! Opening connections: era negotiation, process limits and restart backoff.

use crate::duplex::{lock, Duplex};
use crate::http::HttpConn;
use crate::legacy_sse::{self, SseGuard};
use crate::stdio::{self, StdioGuard};
use crate::{EventSink, RelatedSink, RequestOptions, UpstreamError};
use portcullis_config::{ProtocolPreference, Transport, Upstream};
use portcullis_protocol::era::{self, Era};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One configured upstream: shared HTTP client, process slots and failure backoff.
pub struct UpstreamHandle {
    pub spec: Arc<Upstream>,
    client: reqwest::Client,
    static_headers: HeaderMap,
    /// Parsed once: URL parsing is measurable on the per-call path.
    url: Option<reqwest::Url>,
    processes: Arc<Semaphore>,
    /// Consecutive failures, when the next attempt is allowed, and why the last failed.
    backoff: Mutex<(u32, Option<Instant>, String)>,
    request_timeout: Duration,
    /// Told the outcome of every exchange (open, request): health metrics.
    health: std::sync::OnceLock<HealthHook>,
}

/// Called with `true` when an exchange with the upstream succeeded (any
/// JSON-RPC answer counts) and `false` when it failed (unreachable, timeout,
/// HTTP error, broken stream, failed initialize). A full process table is
/// not the upstream's failure and is not reported.
pub type HealthHook = Arc<dyn Fn(bool) + Send + Sync>;

/// What the downstream side tells an upstream when opening a connection.
#[derive(Clone)]
pub struct OpenParams {
    /// The era the downstream client speaks; preferred when the upstream has both.
    pub client_era: Era,
    pub client_capabilities: Value,
    pub client_info: Value,
    /// Where unrelated server messages go.
    pub events: EventSink,
}

enum Kind {
    Http(Arc<HttpConn>),
    Stdio(Arc<Duplex>, tokio::sync::Mutex<StdioGuard>),
    Sse(Arc<Duplex>, SseGuard),
}

/// An initialized conversation with one upstream.
pub struct Connection {
    pub name: String,
    kind: Kind,
    era: Era,
    init_result: Value,
    client_capabilities: Value,
    client_info: Value,
    timeout: Duration,
    health: Option<HealthHook>,
}

impl UpstreamHandle {
    pub fn new(spec: Upstream, global_timeout_ms: u64) -> Result<UpstreamHandle, UpstreamError> {
        let mut static_headers = HeaderMap::new();
        for (k, v) in &spec.headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| {
                UpstreamError::Init(spec.name.clone(), format!("bad header name {k:?}: {e}"))
            })?;
            let mut value = HeaderValue::from_str(v).map_err(|_| {
                UpstreamError::Init(spec.name.clone(), format!("bad value for header {k:?}"))
            })?;
            value.set_sensitive(true);
            static_headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(spec.timeouts.connect_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            // Redirects could carry static credentials to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Init(spec.name.clone(), e.to_string()))?;
        let request_timeout =
            Duration::from_millis(spec.timeouts.request_ms.min(global_timeout_ms).max(1));
        let url = match &spec.url {
            Some(u) => Some(
                reqwest::Url::parse(u)
                    .map_err(|e| UpstreamError::Init(spec.name.clone(), format!("bad url: {e}")))?,
            ),
            None => None,
        };
        Ok(UpstreamHandle {
            url,
            processes: Arc::new(Semaphore::new(spec.max_processes)),
            spec: Arc::new(spec),
            client,
            static_headers,
            backoff: Mutex::new((0, None, String::new())),
            request_timeout,
            health: std::sync::OnceLock::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Install the health hook (once; later calls are ignored).
    pub fn set_health_hook(&self, hook: HealthHook) {
        let _ = self.health.set(hook);
    }

    fn check_backoff(&self) -> Result<(), UpstreamError> {
        let b = lock(&self.backoff);
        match b.1 {
            Some(t) if t > Instant::now() => Err(UpstreamError::Backoff(
                self.spec.name.clone(),
                (t - Instant::now()).as_millis() as u64,
                b.2.clone(),
            )),
            _ => Ok(()),
        }
    }

    fn record(&self, outcome: Result<(), &UpstreamError>) {
        report(self.health.get(), outcome);
        let mut b = lock(&self.backoff);
        match outcome {
            Ok(()) => *b = (0, None, String::new()),
            // A full process table is not a failure of the upstream.
            Err(UpstreamError::Capacity(..)) => {}
            Err(e) => {
                let n = b.0.saturating_add(1);
                let delay =
                    (Duration::from_millis(250) * 2u32.saturating_pow(n.min(8))).min(MAX_BACKOFF);
                *b = (n, Some(Instant::now() + delay), e.to_string());
            }
        }
    }

    /// Open and initialize a connection.
    pub async fn open(&self, params: &OpenParams) -> Result<Arc<Connection>, UpstreamError> {
        self.check_backoff()?;
        let init_timeout = Duration::from_millis(self.spec.timeouts.init_ms);
        let result = tokio::time::timeout(init_timeout, self.open_inner(params)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(
                self.spec.name.clone(),
                init_timeout.as_millis() as u64,
            )),
        };
        self.record(result.as_ref().map(|_| ()));
        if let Err(e) = &result {
            tracing::warn!(upstream = %self.spec.name, error = %e, "opening upstream failed");
        }
        result
    }

    async fn open_inner(&self, params: &OpenParams) -> Result<Arc<Connection>, UpstreamError> {
        let name = self.spec.name.clone();
        let kind =
            match self.spec.transport {
                Transport::StreamableHttp => {
                    // The era is settled below; start legacy and switch if needed.
                    let url = self.url.clone().ok_or_else(|| {
                        UpstreamError::Init(name.clone(), "no url configured".into())
                    })?;
                    Kind::Http(self.http_conn(&url, Era::Legacy, params))
                }
                Transport::Stdio => {
                    let permit = self.processes.clone().try_acquire_owned().map_err(|_| {
                        UpstreamError::Capacity(name.clone(), self.spec.max_processes)
                    })?;
                    let (duplex, guard) = stdio::spawn(&self.spec, params.events.clone(), permit)?;
                    Kind::Stdio(duplex, tokio::sync::Mutex::new(guard))
                }
                Transport::Sse => {
                    let url = self.spec.url.clone().unwrap_or_default();
                    let (duplex, guard) = legacy_sse::connect(
                        &name,
                        self.client.clone(),
                        &url,
                        self.static_headers.clone(),
                        params.events.clone(),
                        Duration::from_millis(self.spec.timeouts.init_ms),
                    )
                    .await?;
                    Kind::Sse(duplex, guard)
                }
            };
        let mut conn = Connection {
            name,
            kind,
            era: Era::Legacy,
            init_result: Value::Null,
            client_capabilities: params.client_capabilities.clone(),
            client_info: params.client_info.clone(),
            timeout: self.request_timeout,
            health: self.health.get().cloned(),
        };
        let pref = self.spec.protocol;
        let modern_first = pref == ProtocolPreference::Modern
            || (pref == ProtocolPreference::Auto && params.client_era == Era::Modern);
        let order: &[Era] = match (pref, modern_first) {
            (ProtocolPreference::Legacy, _) => &[Era::Legacy],
            (ProtocolPreference::Modern, _) => &[Era::Modern],
            (_, true) => &[Era::Modern, Era::Legacy],
            (_, false) => &[Era::Legacy, Era::Modern],
        };
        let mut last_err = None;
        for era in order {
            let replacement = match (&conn.kind, era) {
                (Kind::Http(h), era) if h.era != *era => Some(self.http_conn(&h.url, *era, params)),
                _ => None,
            };
            if let Some(h) = replacement {
                conn.kind = Kind::Http(h);
            }
            match conn.handshake(*era).await {
                Ok(()) => {
                    if let Kind::Http(h) = &conn.kind {
                        if *era == Era::Legacy {
                            h.start_listening();
                        }
                    }
                    tracing::debug!(upstream = %conn.name, era = ?era, "upstream connected");
                    return Ok(Arc::new(conn));
                }
                Err(e) => {
                    if !conn.is_alive() && !matches!(conn.kind, Kind::Http(_)) {
                        conn.close().await;
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        conn.close().await;
        Err(last_err
            .unwrap_or_else(|| UpstreamError::Init(self.spec.name.clone(), "no era".into())))
    }

    fn http_conn(&self, url: &reqwest::Url, era: Era, params: &OpenParams) -> Arc<HttpConn> {
        HttpConn::new(
            self.spec.name.clone(),
            self.client.clone(),
            url.clone(),
            self.static_headers.clone(),
            era,
            params.events.clone(),
        )
    }
}

impl Connection {
    pub fn era(&self) -> Era {
        self.era
    }

    /// The upstream's `initialize` result (legacy) or `server/discover` result (modern).
    pub fn init_result(&self) -> &Value {
        &self.init_result
    }

    pub fn is_alive(&self) -> bool {
        match &self.kind {
            Kind::Http(h) => h.is_alive(),
            Kind::Stdio(d, _) | Kind::Sse(d, _) => d.is_alive(),
        }
    }

    /// Process id of a stdio upstream (for supervision tests and diagnostics).
    pub async fn pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Stdio(_, g) => g.lock().await.pid,
            _ => None,
        }
    }

    async fn handshake(&mut self, era: Era) -> Result<(), UpstreamError> {
        self.era = era;
        let fail = |why: String| UpstreamError::Init(self.name.clone(), why);
        match era {
            Era::Modern => {
                let probe =
                    json!({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {}});
                let resp = self.raw_request(self.adapt(probe), None, None).await?;
                let result = resp.get("result").ok_or_else(|| {
                    fail(format!(
                        "server/discover failed: {}",
                        resp.get("error").cloned().unwrap_or(Value::Null)
                    ))
                })?;
                let modern = result
                    .get("supportedVersions")
                    .and_then(Value::as_array)
                    .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(era::MODERN)));
                if !modern {
                    return Err(fail("the upstream does not support 2026-07-28".into()));
                }
                self.init_result = result.clone();
            }
            Era::Legacy => {
                let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": era::LATEST_LEGACY,
                    "capabilities": self.client_capabilities,
                    "clientInfo": self.client_info,
                }});
                let resp = self.raw_request(init, None, None).await?;
                let result = resp.get("result").ok_or_else(|| {
                    fail(format!(
                        "initialize failed: {}",
                        resp.get("error").cloned().unwrap_or(Value::Null)
                    ))
                })?;
                let version = result
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .filter(|v| era::is_legacy_version(v))
                    .ok_or_else(|| {
                        fail("initialize returned an unsupported protocol version".into())
                    })?
                    .to_owned();
                if let Kind::Http(h) = &self.kind {
                    h.set_version(&version);
                }
                self.init_result = result.clone();
                let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                self.notify(note).await?;
            }
        }
        Ok(())
    }

    /// Rewrite `_meta` for the upstream's era: modern requests carry the protocol
    /// version and client capabilities; legacy ones do not carry reserved keys.
    fn adapt(&self, mut msg: Value) -> Value {
        let Some(meta) = portcullis_protocol::jsonrpc::meta_mut(&mut msg) else {
            return msg;
        };
        match self.era {
            Era::Modern => {
                meta.insert(era::META_PROTOCOL_VERSION.into(), Value::from(era::MODERN));
                meta.entry(era::META_CLIENT_CAPABILITIES)
                    .or_insert_with(|| self.client_capabilities.clone());
                meta.entry(era::META_CLIENT_INFO)
                    .or_insert_with(|| self.client_info.clone());
            }
            Era::Legacy => {
                meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
            }
        }
        if meta.is_empty() {
            if let Some(p) = msg.get_mut("params").and_then(Value::as_object_mut) {
                p.remove("_meta");
            }
        }
        msg
    }

    async fn raw_request(
        &self,
        msg: Value,
        related: Option<RelatedSink>,
        opts: Option<&RequestOptions>,
    ) -> Result<Value, UpstreamError> {
        match &self.kind {
            Kind::Http(h) => h.request(msg, related, opts, self.timeout).await,
            Kind::Stdio(d, _) | Kind::Sse(d, _) => d.request(msg, related, self.timeout).await,
        }
    }

    /// Send a request; the response carries the caller's original id. Messages the
    /// upstream sends while serving it go to `related`.
    pub async fn request(
        &self,
        msg: Value,
        related: Option<RelatedSink>,
        opts: Option<&RequestOptions>,
    ) -> Result<Value, UpstreamError> {
        let msg = self.adapt(msg);
        let result = self.raw_request(msg, related, opts).await;
        report(self.health.as_ref(), result.as_ref().map(|_| ()));
        result
    }

    /// Send a notification.
    pub async fn notify(&self, msg: Value) -> Result<(), UpstreamError> {
        let msg = if self.era == Era::Legacy {
            msg
        } else {
            self.adapt(msg)
        };
        self.send(msg).await
    }

    /// Send the client's answer to a server→client request (id already restored to
    /// the upstream's own id by the caller).
    pub async fn respond(&self, msg: Value) -> Result<(), UpstreamError> {
        self.send(msg).await
    }

    async fn send(&self, msg: Value) -> Result<(), UpstreamError> {
        match &self.kind {
            Kind::Http(h) => h.send(&msg, self.timeout).await,
            Kind::Stdio(d, _) | Kind::Sse(d, _) => d.send(msg).await,
        }
    }

    /// End the conversation: DELETE the session, or stop the process and reap it.
    pub async fn close(&self) {
        match &self.kind {
            Kind::Http(h) => h.close().await,
            Kind::Stdio(_, guard) => guard.lock().await.shutdown().await,
            Kind::Sse(d, guard) => {
                guard.stop();
                d.mark_dead();
            }
        }
    }
}

fn report(hook: Option<&HealthHook>, outcome: Result<(), &UpstreamError>) {
    if let Some(h) = hook {
        match outcome {
            Ok(()) => h(true),
            Err(UpstreamError::Capacity(..)) => {}
            Err(_) => h(false),
        }
    }
}
