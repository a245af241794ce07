//! Start the gateway: store, state, listener, graceful shutdown.

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use portcullis_config::{AuthMode, Config};
use portcullis_gateway::{Gateway, HostPolicy};
use portcullis_identity::Identity;
use portcullis_policy::PolicyRuntime;
use portcullis_store::{Applied, Store};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Called once the listener is bound, with the actual address.
pub type OnListen = Box<dyn FnOnce(SocketAddr) + Send>;

/// How often the identity change feed is polled: the bound on revocation delay
/// for changes made by another process (CLI, another replica).
const CHANGE_FEED_POLL: std::time::Duration = std::time::Duration::from_millis(100);

const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(config: Config, source: &str, on_listen: Option<OnListen>) -> anyhow::Result<()> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {:?} is not IP:PORT", config.listen))?;
    portcullis_audit::sinks::validate_sinks(&config.audit.sinks)
        .map_err(|e| anyhow::anyhow!("audit.sinks: {e}"))?;
    let auth_on = config.auth.mode == AuthMode::Required;
    if !addr.ip().is_loopback() && !auth_on {
        bail!("refusing to listen on {addr} with auth.mode: off; unauthenticated gateways listen on loopback only");
    }
    if !addr.ip().is_loopback() && config.public_url.is_none() && config.auth.issuer.is_none() {
        bail!("listening on {addr} needs `public_url`: tokens name the gateway's public address as issuer and audience");
    }
    let data_dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".portcullis"));
    let store = Store::open(&data_dir)
        .await
        .with_context(|| format!("opening the state store in {}", data_dir.display()))?;
    let applied = store.apply_config(&config, source).await?;
    match &applied {
        Applied::Unchanged => tracing::info!("configuration unchanged since the last start"),
        Applied::Changed { revision } => {
            tracing::info!(revision, "configuration loaded into the store")
        }
    }
    let auditor = crate::audit::open_for_serve(&config, &data_dir, source, &applied).await?;
    let mut hosts = config.security.allowed_hosts.clone();
    if let Some(url) = &config.public_url {
        if let Some(host) = url.split("://").nth(1).and_then(|r| r.split('/').next()) {
            hosts.push(host.to_owned());
        }
    }
    let identity = if auth_on {
        let id = Identity::open(store.clone(), &config)
            .await
            .context("loading identities")?;
        id.spawn_watcher(CHANGE_FEED_POLL);
        id.set_auditor(auditor.clone());
        Some(id)
    } else {
        tracing::warn!(
            "authentication is OFF (auth.mode: off): anyone on this machine can call every tool"
        );
        None
    };
    let policy = match &identity {
        Some(_) => {
            let rt = PolicyRuntime::open(&config, store.clone())
                .await
                .context("loading policies")?;
            portcullis_admin::record_policy_reloads(&rt, &auditor);
            rt.spawn_watcher();
            Some(rt)
        }
        None => None,
    };
    let telemetry = portcullis_telemetry::Telemetry::start(&config)?;
    // Kept alive for the life of the gateway: dropping it stops the sinks.
    let sinks = portcullis_audit::sinks::SinkSet::start(&auditor, &config.audit.sinks)
        .context("starting the audit sinks")?;
    if auditor.enabled() {
        let metrics = telemetry.metrics().clone();
        metrics.set_audit_healthy(true);
        auditor.observe_batches(move |group| {
            if group.written {
                metrics.observe_audit_batch(group.records);
                for wait in group.waits {
                    metrics.observe_audit_wait(*wait);
                }
            }
            metrics.set_audit_healthy(group.written);
        });
        let a = auditor.clone();
        telemetry.readiness().add_sync_check("audit", move || {
            if a.healthy() {
                Ok(())
            } else {
                Err("the audit log cannot be written".into())
            }
        });
    }
    let gateway = Gateway::new(
        &config,
        HostPolicy::new(&hosts, &config.security.allowed_origins),
        identity.clone(),
        policy.clone(),
        auditor.clone(),
        telemetry.clone(),
    )?;
    gateway.spawn_reaper();
    let workers = worker_count();
    let first = bind(addr)?;
    let bound = first.local_addr()?;
    // The other workers share the port (SO_REUSEPORT); the kernel spreads connections.
    let mut extra = Vec::new();
    for _ in 1..workers {
        extra.push(bind(bound)?.into_std()?);
    }
    tracing::info!(
        address = %bound,
        workers,
        virtual_servers = ?gateway.virtual_server_names(),
        "portcullis listening"
    );
    if let Some(f) = on_listen {
        f(bound);
    }
    let mut app = gateway.router();
    if let Some(id) = &identity {
        app = app
            .merge(portcullis_authserver::router(id.clone()))
            .merge(portcullis_admin::router(id.clone(), policy.clone()));
    }
    app = app.merge(
        crate::telemetry::mount(&config, &telemetry, identity.clone(), store.clone()).await?,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let threads: Vec<_> = extra
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-worker-{}", i + 1))
                .spawn(move || -> anyhow::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        let graceful = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        serve_on(listener, app, graceful).await
                    })
                })
        })
        .collect::<Result<_, _>>()?;
    // On a signal, end every session first: their open streams (GET, SSE) end with
    // them, which lets the servers drain; a hard deadline covers anything left.
    let gw = gateway.clone();
    let graceful = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: closing sessions and stopping upstream processes");
        gw.shutdown().await;
        let _ = stop_tx.send(true);
    };
    let mut stopped = stop_rx.clone();
    tokio::select! {
        r = serve_on(first, app, graceful) => r?,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_DEADLINE).await;
        } => tracing::warn!("connections still open after {SHUTDOWN_DEADLINE:?}; closing them"),
    }
    gateway.shutdown().await;
    if let Some(p) = &policy {
        p.flush_usage().await;
    }
    for t in threads {
        // A worker still draining after the deadline is abandoned with the process.
        if t.is_finished() {
            let _ = t.join();
        }
    }
    auditor.close().await;
    // After the log closes, so `audit.stopped` is still delivered.
    sinks.shutdown(std::time::Duration::from_secs(5)).await;
    // Last of all the readers (the admin API's searches, the sinks): the WAL
    // is then copied into the audit database and removed.
    if let Some(db) = auditor.db() {
        db.close().await;
    }
    telemetry.shutdown().await;
    store.close().await;
    Ok(())
}

/// How many single-threaded server runtimes to run: one per core unless
/// `PORTCULLIS_WORKER_THREADS` says otherwise. One thread per core, each owning its
/// connections, avoids handing every request between threads (the largest cost per
/// call on small machines).
fn worker_count() -> usize {
    std::env::var("PORTCULLIS_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .min(64)
}

fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(1024)?)
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    graceful: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Answers are often written in two pieces (headers, body): without TCP_NODELAY
    // the second waits for a delayed ACK, ~40 ms per call.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Peer addresses feed policy (`context.source_ip`).
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .await?;
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
