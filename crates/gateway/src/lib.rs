//! The Portcullis data plane.
//!
//! It serves one MCP endpoint per virtual server (`/mcp/<name>`) in both protocol
//! eras and the deprecated HTTP+SSE transport, mints and guards downstream
//! sessions, composes upstream catalogs, routes every request to the right upstream
//! with names and ids translated, and relays everything an upstream sends back. It
//! does not decide who may call what (identity and policy wrap it) and does not
//! speak to upstreams itself (`portcullis-upstream` does).

// Edge helpers return ready-made HTTP responses as their error: that is the point.
#![allow(clippy::result_large_err)]

mod authn;
mod binding;
mod bridge;
mod caps;
mod confirm;
mod dispatch;
mod edge;
mod govern;
mod http;
mod legacy_sse;
mod modern;
mod observe;
mod replay;
mod respond;
mod session;
mod telemetry_hook;
mod vserver;

pub use edge::HostPolicy;
pub use govern::Who;

use binding::Binding;
use portcullis_config::{Config, Limits};
use portcullis_identity::Identity;
use portcullis_policy::PolicyRuntime;
use portcullis_protocol::cursor::CursorCodec;
use portcullis_protocol::era::Era;
use portcullis_upstream::{UpstreamError, UpstreamHandle};
use serde_json::{json, Value};
use session::SessionStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vserver::VirtualServerRt;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

pub struct Gateway {
    vservers: HashMap<String, Arc<VirtualServerRt>>,
    sessions: SessionStore,
    cursors: CursorCodec,
    limits: Limits,
    hosts: HostPolicy,
    /// Bindings shared by stateless (2026-07-28) callers, per virtual server and
    /// client capability set, so upstream sessions are never set up per call.
    modern: Mutex<HashMap<String, Arc<Binding>>>,
    sse: legacy_sse::SseTransports,
    /// Virtual server also served at `/mcp` (quick proxy mode).
    default_vs: Option<String>,
    /// Token checks; `None` only with `auth.mode: off` on loopback.
    identity: Option<Arc<Identity>>,
    /// Policy, limits and checkpoints; `None` exactly when `identity` is.
    policy: Option<Arc<PolicyRuntime>>,
    confirmations: confirm::Confirmations,
    /// The durable record of every request (disabled only by configuration).
    auditor: portcullis_audit::Auditor,
    /// Traces and metrics of every request, upstream health.
    telemetry: Arc<portcullis_telemetry::Telemetry>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        hosts: HostPolicy,
        identity: Option<Arc<Identity>>,
        policy: Option<Arc<PolicyRuntime>>,
        auditor: portcullis_audit::Auditor,
        telemetry: Arc<portcullis_telemetry::Telemetry>,
    ) -> Result<Arc<Gateway>, GatewayError> {
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            let h = UpstreamHandle::new(u.clone(), config.limits.request_timeout_ms)?;
            if let Some(health) = telemetry.metrics().upstream(&u.name) {
                h.set_health_hook(Arc::new(move |ok| health.record(ok)));
            }
            upstreams.insert(u.name.clone(), Arc::new(h));
        }
        let vservers = config
            .virtual_servers
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    Arc::new(VirtualServerRt::new(v, &upstreams)),
                )
            })
            .collect();
        let gw = Arc::new(Gateway {
            vservers,
            sessions: SessionStore::default(),
            cursors: CursorCodec::random(),
            limits: config.limits.clone(),
            hosts,
            modern: Mutex::new(HashMap::new()),
            sse: Default::default(),
            default_vs: (config.virtual_servers.len() == 1)
                .then(|| config.virtual_servers[0].name.clone()),
            identity,
            policy,
            confirmations: Default::default(),
            auditor,
            telemetry,
        });
        gw.close_sessions_on_revocation();
        Ok(gw)
    }

    /// When users change, close the sessions of those who lost access, so their
    /// upstream sessions (and stdio children) go too.
    fn close_sessions_on_revocation(self: &Arc<Self>) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let gw = Arc::downgrade(self);
        let id = Arc::downgrade(&identity);
        identity.on_change(move |users| {
            let (Some(gw), Some(identity)) = (gw.upgrade(), id.upgrade()) else {
                return;
            };
            for s in gw.sessions.owned_by(users) {
                let Some(owner) = s.owner.as_deref() else {
                    continue;
                };
                let still = identity
                    .user(owner)
                    .is_some_and(|u| u.active && identity.user_may_use(&u, &s.binding.vs.name));
                if !still {
                    tracing::info!(session = %&s.id[..8], "closing session: access revoked");
                    gw.sessions.remove(&s.id);
                    tokio::spawn(async move { s.close().await });
                }
            }
        });
    }

    /// The HTTP application: MCP endpoints and health.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(self.clone())
    }

    pub fn virtual_server_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vservers.keys().cloned().collect();
        v.sort();
        v
    }

    fn server_info(&self, vs: &str) -> Value {
        json!({"name": format!("portcullis/{vs}"), "version": env!("CARGO_PKG_VERSION")})
    }

    /// The binding stateless callers of `vs` share. Each modern request carries its
    /// own capabilities to modern upstreams; legacy upstreams are initialized
    /// without client capabilities, because a 2026-07-28 client cannot receive
    /// their mid-call requests anyway.
    fn modern_binding(&self, vs: &Arc<VirtualServerRt>) -> Arc<Binding> {
        let mut pool = self.modern.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = pool.get(&vs.name) {
            return b.clone();
        }
        let info = json!({"name": "portcullis", "version": env!("CARGO_PKG_VERSION")});
        let b = Binding::new(vs.clone(), Era::Modern, json!({}), info);
        pool.insert(vs.name.clone(), b.clone());
        b
    }

    /// Close idle sessions and idle stateless bindings every few seconds.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                let idle = gw.limits.session_idle_timeout_secs;
                for s in gw.sessions.take_idle(idle) {
                    tracing::info!(session = %&s.id[..8], "closing idle session");
                    s.close().await;
                }
                let stale: Vec<Arc<Binding>> = {
                    let mut pool = gw.modern.lock().unwrap_or_else(|p| p.into_inner());
                    let keys: Vec<_> = pool
                        .iter()
                        .filter(|(_, b)| b.idle_secs() > idle && !b.busy())
                        .map(|(k, _)| k.clone())
                        .collect();
                    keys.iter().filter_map(|k| pool.remove(k)).collect()
                };
                for b in stale {
                    b.close().await;
                }
            }
        });
    }

    /// Close every session and upstream connection (stops stdio children).
    pub async fn shutdown(&self) {
        self.sse.clear();
        for s in self.sessions.drain() {
            s.close().await;
        }
        let pooled: Vec<Arc<Binding>> = self
            .modern
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, b)| b)
            .collect();
        for b in pooled {
            b.close().await;
        }
    }
}
