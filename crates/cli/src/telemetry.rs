//! Serving telemetry: `/metrics` and `/readyz` on the main listener (metrics
//! behind an administrator's token when authentication is on), and the
//! optional internal listener (`telemetry.metrics.listen`) with `/metrics`,
//! `/healthz` and `/readyz` unauthenticated.

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use portcullis_config::Config;
use portcullis_identity::Identity;
use portcullis_store::Store;
use portcullis_telemetry::Telemetry;
use std::net::SocketAddr;
use std::sync::Arc;

const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Ctx {
    telemetry: Arc<Telemetry>,
    /// `None`: no token needed (authentication off, or the internal listener).
    identity: Option<Arc<Identity>>,
}

/// Readiness checks for the store, the internal listener if configured, and
/// the routes to merge into the main application. Call once the main
/// listener is bound: the gateway counts as started from here on.
pub async fn mount(
    config: &Config,
    telemetry: &Arc<Telemetry>,
    identity: Option<Arc<Identity>>,
    store: Store,
) -> anyhow::Result<Router> {
    telemetry.readiness().add_check("store", move || {
        let store = store.clone();
        Box::pin(async move {
            store
                .revision_count()
                .await
                .map(|_| ())
                .map_err(|e| format!("state store unreachable: {e}"))
        })
    });
    if let Some(listen) = &config.telemetry.metrics.listen {
        let addr: SocketAddr = listen
            .parse()
            .with_context(|| format!("telemetry.metrics.listen {listen:?} is not IP:PORT"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        let internal = Router::new()
            .route("/metrics", get(metrics))
            .route("/readyz", get(readyz))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Ctx {
                telemetry: telemetry.clone(),
                identity: None,
            });
        tracing::info!(address = %listener.local_addr()?, "metrics listener (unauthenticated)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, internal).await {
                tracing::error!(error = %e, "metrics listener stopped");
            }
        });
    }
    let mut routes = Router::new().route("/readyz", get(readyz));
    if config.telemetry.metrics.main_listener {
        routes = routes.route("/metrics", get(metrics));
    }
    telemetry.readiness().set_started(true);
    Ok(routes.with_state(Ctx {
        telemetry: telemetry.clone(),
        identity,
    }))
}

async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Some(identity) = &ctx.identity {
        if let Err(r) = admin_only(identity, &headers) {
            return r;
        }
    }
    let mut r = ctx.telemetry.metrics().render().into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(EXPOSITION));
    r
}

/// An administrator's API token with the `admin` scope, as for the admin API.
#[allow(clippy::result_large_err)] // the error is the ready-made answer
fn admin_only(identity: &Identity, headers: &HeaderMap) -> Result<(), Response> {
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refuse = |status: StatusCode, why: String| {
        let mut r = (status, why).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-metrics\""),
            );
        }
        r
    };
    let principal = identity.authenticate_api(authz).map_err(|why| {
        tracing::info!(reason = %why, "metrics scrape refused");
        refuse(
            StatusCode::UNAUTHORIZED,
            format!("metrics need an admin API token: {why}\n"),
        )
    })?;
    if !principal.has_scope("admin") || !principal.user.is_admin {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "metrics need an administrator's token with the admin scope\n".into(),
        ));
    }
    Ok(())
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    let (ready, report) = ctx.telemetry.readiness().check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
