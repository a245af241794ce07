//! The audit log from the command line (`portcullis audit verify | search |
//! prune`) and its start-up at `serve`: open, record the configuration that
//! is starting, and keep retention running.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use portcullis_audit::{
    format_time, parse_time, prune, verify, Actor, AuditDb, AuditEvent, Auditor, Query,
};
use portcullis_config::Config;
use portcullis_store::Applied;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct AuditArgs {
    /// Configuration file (its `audit` section and `data_dir` locate the log).
    #[arg(long, short, global = true, default_value = "portcullis.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain and the signed checkpoints; exits 1 and names the
    /// first bad record if anything was edited, inserted or deleted.
    Verify {
        /// Trusted public key (64 hex digits, or a file holding them); default
        /// the `.pub` file beside the signing key.
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Find records; newest first.
    Search {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        /// Virtual server or upstream.
        #[arg(long)]
        server: Option<String>,
        /// RFC 3339 time, a date, or a duration back from now (`15m`, `24h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// success, tool_error, protocol_error, denied or cancelled.
        #[arg(long)]
        outcome: Option<String>,
        /// Event type, e.g. mcp.request, auth.login, policy.changed.
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Whole records as JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export records older than the retention period to the archive
    /// directory, then delete them (a running gateway does this daily).
    Prune {
        /// Override `audit.retention_days`.
        #[arg(long)]
        older_than_days: Option<u32>,
    },
}

pub async fn run(a: AuditArgs) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let data_dir = data_dir(&config);
    let path = config
        .audit
        .path
        .clone()
        .unwrap_or_else(|| data_dir.join("audit.db"));
    match a.cmd {
        AuditCmd::Verify { public_key, json } => {
            let key_text = match public_key {
                Some(k) if Path::new(&k).exists() => std::fs::read_to_string(&k)?,
                Some(k) => k,
                None => {
                    let key = signing_key_path(&config, &data_dir);
                    let p = portcullis_audit::public_key_path(&key);
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading the public key {}", p.display()))?
                }
            };
            let key = portcullis_audit::PublicKey::from_hex(&key_text)?;
            let db = AuditDb::open_existing(&path).await?;
            let report = verify(&db, &key).await;
            db.close().await;
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if let Some(p) = &report.problem {
                println!("FAILED at record {}: {}", p.seq, p.reason);
                println!(
                    "{} records checked before the failure",
                    report.records.saturating_sub(1)
                );
            } else {
                println!(
                    "OK: {} records (seq {}..{}), {} signed checkpoints verified, {} records after the last checkpoint",
                    report.records,
                    report.first_seq.unwrap_or(0),
                    report.last_seq.unwrap_or(0),
                    report.checkpoints_verified,
                    report.unsealed
                );
            }
            if !report.ok() {
                std::process::exit(1);
            }
        }
        AuditCmd::Search {
            user,
            tool,
            server,
            since,
            until,
            outcome,
            event_type,
            limit,
            json,
        } => {
            if let Some(o) = &outcome {
                if !portcullis_audit::OUTCOMES.contains(&o.as_str()) {
                    bail!(
                        "--outcome must be one of {}",
                        portcullis_audit::OUTCOMES.join(", ")
                    );
                }
            }
            let time = |t: Option<String>, what: &str| -> anyhow::Result<Option<i64>> {
                t.map(|t| {
                    parse_time(&t).with_context(|| {
                        format!("--{what} {t:?}: use RFC 3339, a date, or 15m / 24h / 7d")
                    })
                })
                .transpose()
            };
            let q = Query {
                user,
                tool,
                server,
                outcome,
                event_type,
                since_us: time(since, "since")?,
                until_us: time(until, "until")?,
                before_seq: None,
                limit: Some(limit),
            };
            let db = AuditDb::open_existing(&path).await?;
            let rows = q.run(&db).await;
            db.close().await;
            let rows = rows?;
            // Reading the audit log is itself an audited action.
            let auditor = Auditor::open_for_command(&config.audit, &data_dir).await?;
            auditor
                .record(AuditEvent::security(
                    "audit.read",
                    Some(Actor::cli()),
                    json!({"via": "cli", "query": query_detail(&q), "results": rows.len()}),
                ))
                .await?;
            auditor.close_and_release().await;
            if json {
                for r in &rows {
                    println!("{}", r.export());
                }
            } else {
                println!(
                    "{:>7}  {:<27} {:<18} {:<14} {:<12} {:<16} {:<24} OUTCOME",
                    "SEQ", "TIME", "TYPE", "USER", "SERVER", "METHOD", "TOOL"
                );
                for r in &rows {
                    println!(
                        "{:>7}  {:<27} {:<18} {:<14} {:<12} {:<16} {:<24} {}",
                        r.seq,
                        format_time(r.time_us),
                        r.event_type,
                        r.username.as_deref().unwrap_or("-"),
                        r.virtual_server.as_deref().unwrap_or("-"),
                        r.method.as_deref().unwrap_or("-"),
                        r.tool.as_deref().unwrap_or("-"),
                        r.outcome.as_deref().unwrap_or("-"),
                    );
                }
                eprintln!("{} records", rows.len());
            }
        }
        AuditCmd::Prune { older_than_days } => {
            let days = older_than_days.unwrap_or(config.audit.retention_days);
            if days == 0 {
                bail!("retention is 0 (keep everything): pass --older-than-days N to prune");
            }
            let auditor = Auditor::open_for_command(&config.audit, &data_dir).await?;
            let report = run_prune(&config, &data_dir, &auditor, days).await;
            auditor.close_and_release().await;
            let report = report?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

fn query_detail(q: &Query) -> serde_json::Value {
    json!({"user": q.user, "tool": q.tool, "server": q.server, "outcome": q.outcome,
           "event_type": q.event_type, "since_us": q.since_us, "until_us": q.until_us})
}

fn data_dir(config: &Config) -> PathBuf {
    config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".portcullis"))
}

fn signing_key_path(config: &Config, data_dir: &Path) -> PathBuf {
    config
        .audit
        .signing_key
        .clone()
        .unwrap_or_else(|| data_dir.join("audit-signing.key"))
}

async fn run_prune(
    config: &Config,
    data_dir: &Path,
    auditor: &Auditor,
    days: u32,
) -> anyhow::Result<portcullis_audit::PruneReport> {
    let Some(db) = auditor.db() else {
        bail!("the audit log is disabled");
    };
    let archive = config
        .audit
        .archive_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("audit-archive"));
    let cutoff = portcullis_audit::now_us() - i64::from(days) * 86_400 * 1_000_000;
    let sinks: Vec<String> = config.audit.sinks.iter().map(|s| s.name.clone()).collect();
    Ok(prune(db, auditor, cutoff, &archive, &sinks).await?)
}

/// Open the audit log for a starting gateway and record what configuration
/// it starts with.
pub async fn open_for_serve(
    config: &Config,
    data_dir: &Path,
    source: &str,
    applied: &Applied,
) -> anyhow::Result<Auditor> {
    let auditor = Auditor::open(&config.audit, data_dir)
        .await
        .context("opening the audit log")?;
    if !auditor.enabled() {
        tracing::warn!("the audit log is OFF (audit.enabled: false): calls are not recorded");
        return Ok(auditor);
    }
    let (event_type, revision) = match applied {
        Applied::Changed { revision } => ("config.changed", Some(*revision)),
        Applied::Unchanged => ("config.loaded", None),
    };
    auditor
        .record(AuditEvent::security(
            event_type,
            Some(Actor::system()),
            json!({"source": source, "revision": revision,
                   "virtual_servers": config.virtual_servers.iter().map(|v| &v.name).collect::<Vec<_>>(),
                   "upstreams": config.upstreams.iter().map(|u| &u.name).collect::<Vec<_>>(),
                   "auth_mode": format!("{:?}", config.auth.mode).to_lowercase(),
                   "audit_on_failure": format!("{:?}", config.audit.on_failure).to_lowercase()}),
        ))
        .await
        .context("recording the configuration in the audit log")?;
    tracing::info!(
        replica = auditor.replica(),
        public_key = auditor.public_key().unwrap_or(""),
        "audit log open"
    );
    if config.audit.retention_days > 0 {
        spawn_retention(config.clone(), data_dir.to_owned(), auditor.clone());
    }
    Ok(auditor)
}

/// Prune once an hour after start, then daily.
fn spawn_retention(config: Config, data_dir: PathBuf, auditor: Auditor) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(86_400));
        loop {
            tick.tick().await;
            match run_prune(&config, &data_dir, &auditor, config.audit.retention_days).await {
                Ok(r) if r.pruned > 0 => {
                    tracing::info!(pruned = r.pruned, archive = ?r.archive, "audit retention")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "audit retention failed"),
            }
        }
    });
}
