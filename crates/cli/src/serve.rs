//! Start the gateway: store, state, listener, graceful shutdown.

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use portcullis_config::Config;
use portcullis_gateway::{Gateway, HostPolicy};
use portcullis_store::{Applied, Store};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Called once the listener is bound, with the actual address.
pub type OnListen = Box<dyn FnOnce(SocketAddr) + Send>;

const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(config: Config, source: &str, on_listen: Option<OnListen>) -> anyhow::Result<()> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {:?} is not IP:PORT", config.listen))?;
    if !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr}: authentication is not available yet, so the gateway only listens on loopback addresses"
        );
    }
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".portcullis"));
    let store = Store::open(&data_dir)
        .await
        .with_context(|| format!("opening the state store in {}", data_dir.display()))?;
    match store.apply_config(&config, source).await? {
        Applied::Unchanged => tracing::info!("configuration unchanged since the last start"),
        Applied::Changed { revision } => {
            tracing::info!(revision, "configuration loaded into the store")
        }
    }
    let mut hosts = config.security.allowed_hosts.clone();
    if let Some(url) = &config.public_url {
        if let Some(host) = url.split("://").nth(1).and_then(|r| r.split('/').next()) {
            hosts.push(host.to_owned());
        }
    }
    let gateway = Gateway::new(
        &config,
        HostPolicy::new(&hosts, &config.security.allowed_origins),
    )?;
    gateway.spawn_reaper();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(
        address = %bound,
        virtual_servers = ?gateway.virtual_server_names(),
        "portcullis listening"
    );
    if let Some(f) = on_listen {
        f(bound);
    }
    let app = gateway.router();
    // On a signal, end every session first: their open streams (GET, SSE) end with
    // them, which lets the server drain; a hard deadline covers anything left.
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let (gw, notify) = (gateway.clone(), stopping.clone());
    let graceful = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: closing sessions and stopping upstream processes");
        notify.notify_one();
        gw.shutdown().await;
    };
    // Answers are often written in two pieces (headers, body): without TCP_NODELAY
    // the second waits for a delayed ACK, ~40 ms per call.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    tokio::select! {
        r = server => r?,
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_DEADLINE).await;
        } => tracing::warn!("connections still open after {SHUTDOWN_DEADLINE:?}; closing them"),
    }
    gateway.shutdown().await;
    store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
