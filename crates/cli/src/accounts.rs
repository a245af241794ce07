//! Account administration from the command line: administrators, users, service
//! accounts, API tokens and signing keys. Commands work on the store named by the
//! configuration's `data_dir`, so no gateway needs to run; running gateways pick
//! changes up from the identity change feed within a fraction of a second.
//! Passwords are read from stdin or the environment and never printed; a new
//! token is printed once, alone on stdout.
//!
//! Every command that changes something records it in the audit log
//! ([`CliAudit`]), with the operator at the command line as actor. The log is
//! opened before the change, so a log that cannot be opened changes nothing;
//! a record that cannot be written after the change is reported and the
//! command exits 1 (the change itself stands).

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use portcullis_audit::{format_time, Actor, AuditEvent, Auditor};
use portcullis_config::Config;
use portcullis_identity::{accounts, now};
use portcullis_store::identity::{ApiTokenRow, UserPatch, UserRow};
use portcullis_store::Store;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;

/// Environment variable `admin create` reads the password from.
const PASSWORD_ENV: &str = "PORTCULLIS_ADMIN_PASSWORD";

#[derive(Args)]
pub struct ConfigArg {
    /// Configuration file (its `data_dir` holds the store).
    #[arg(long, short, global = true, default_value = "portcullis.yaml")]
    config: PathBuf,
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    cfg: ConfigArg,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Create a local administrator, or reset its password and re-enable it.
    Create {
        #[arg(long)]
        username: String,
        /// Read the password from the first line of stdin (else PORTCULLIS_ADMIN_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Args)]
pub struct UserArgs {
    #[command(flatten)]
    cfg: ConfigArg,
    #[command(subcommand)]
    cmd: UserCmd,
}

#[derive(Subcommand)]
enum UserCmd {
    /// List people and service accounts.
    List,
    /// Disable a user: every token and grant they hold is revoked.
    Disable { username: String },
    /// Enable a disabled user (revoked credentials stay revoked).
    Enable { username: String },
}

#[derive(Args)]
pub struct ServiceAccountArgs {
    #[command(flatten)]
    cfg: ConfigArg,
    #[command(subcommand)]
    cmd: ServiceAccountCmd,
}

#[derive(Subcommand)]
enum ServiceAccountCmd {
    /// Create a service account (a non-human principal for automation).
    Create {
        name: String,
        /// Username of the person accountable; disabling them disables the account.
        #[arg(long)]
        owner: Option<String>,
    },
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    cfg: ConfigArg,
    #[command(subcommand)]
    cmd: TokenCmd,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue an API token; it is printed once on stdout, its metadata on stderr.
    Create {
        /// Username of the person or service account the token acts as.
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// vs:<virtual server>, vs:*, admin or scim; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime in days (default 90, at most auth.max_api_token_ttl_days).
        #[arg(long)]
        expires_days: Option<u64>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    cfg: ConfigArg,
    #[command(subcommand)]
    cmd: KeysCmd,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Start signing with a new key; the previous one keeps verifying for a day.
    Rotate,
}

async fn open(cfg: &ConfigArg) -> anyhow::Result<(Config, Store)> {
    let config = Config::load(&cfg.config)?;
    let data_dir = data_dir(&config);
    let store = Store::open(&data_dir)
        .await
        .with_context(|| format!("opening the state store in {}", data_dir.display()))?;
    Ok((config, store))
}

fn data_dir(config: &Config) -> PathBuf {
    config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".portcullis"))
}

/// The audit log of a command that changes something. It writes the same log
/// as a running gateway (records chain correctly alongside it) with the
/// operator as actor (`admin_cli`).
pub(crate) struct CliAudit {
    auditor: Auditor,
    failed: bool,
}

impl CliAudit {
    /// Open the log the configuration names (a disabled one records nothing).
    pub(crate) async fn open(config: &Config) -> anyhow::Result<CliAudit> {
        let auditor = Auditor::open_for_command(&config.audit, &data_dir(config))
            .await
            .context("opening the audit log (nothing was changed)")?;
        Ok(CliAudit {
            auditor,
            failed: false,
        })
    }

    /// Record a change the command made; a failure is reported, remembered
    /// for [`CliAudit::close`], and does not undo the change.
    pub(crate) async fn record(&mut self, event_type: &str, mut detail: Value) {
        if let Value::Object(m) = &mut detail {
            m.insert("via".into(), json!("cli"));
        }
        let event = AuditEvent::security(event_type, Some(Actor::cli()), detail);
        if let Err(e) = self.auditor.record(event).await {
            eprintln!("error: the change was made but could not be recorded in the audit log: {e}");
            self.failed = true;
        }
    }

    /// Seal and close the log; an error if a record was lost.
    pub(crate) async fn close(self) -> anyhow::Result<()> {
        self.auditor.close_and_release().await;
        if self.failed {
            bail!("an audit record could not be written (see above)");
        }
        Ok(())
    }
}

/// A user as a record's detail names them.
fn who(u: &UserRow) -> Value {
    json!({"id": u.id, "username": u.username, "kind": u.kind})
}

/// An API token as its records name it: id and metadata, never the secret.
fn token_detail(t: &ApiTokenRow, user: &UserRow) -> Value {
    let scopes: Vec<String> = serde_json::from_str(&t.scopes).unwrap_or_default();
    json!({
        "credential": if user.kind == "service" { "service_account_token" } else { "api_token" },
        "token_id": t.id,
        "name": t.name,
        "user": who(user),
        "scopes": scopes,
        "expires_at": t.expires_at.map(|e| format_time(e.saturating_mul(1_000_000))),
    })
}

async fn user_named(store: &Store, username: &str) -> anyhow::Result<UserRow> {
    store
        .user_by_username(username)
        .await?
        .ok_or_else(|| anyhow!("no user named {username:?}"))
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        std::env::var(PASSWORD_ENV).map_err(|_| {
            anyhow!("give the password on stdin with --password-stdin, or in {PASSWORD_ENV}")
        })?
    };
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}

pub async fn admin(a: AdminArgs) -> anyhow::Result<()> {
    let AdminCmd::Create {
        username,
        password_stdin,
    } = a.cmd;
    let password = read_password(password_stdin)?;
    let (config, store) = open(&a.cfg).await?;
    let mut audit = CliAudit::open(&config).await?;
    let existed = store.user_by_username(&username).await?.is_some();
    let user = accounts::upsert_local_user(&store, &username, &password, true).await?;
    drop(password);
    let verb = if existed { "reset" } else { "created" };
    let operation = if existed {
        "admin.reset"
    } else {
        "admin.created"
    };
    audit
        .record(
            "account.changed",
            json!({"operation": operation, "user": who(&user), "is_admin": true}),
        )
        .await;
    println!(
        "{verb} local administrator {:?} (id {})",
        user.username, user.id
    );
    store.close().await;
    audit.close().await
}

pub async fn user(a: UserArgs) -> anyhow::Result<()> {
    let (config, store) = open(&a.cfg).await?;
    let mut audit = match a.cmd {
        UserCmd::List => None,
        _ => Some(CliAudit::open(&config).await?),
    };
    match a.cmd {
        UserCmd::List => {
            let users = store.users(None).await?;
            println!(
                "{:<32} {:<8} {:<7} {:<6} {:<8} ID",
                "USERNAME", "KIND", "ACTIVE", "ADMIN", "IDP"
            );
            for u in users {
                println!(
                    "{:<32} {:<8} {:<7} {:<6} {:<8} {}",
                    u.username,
                    u.kind,
                    if u.active { "yes" } else { "no" },
                    if u.is_admin { "yes" } else { "no" },
                    u.idp.as_deref().unwrap_or("-"),
                    u.id
                );
            }
        }
        UserCmd::Disable { username } => {
            let u = user_named(&store, &username).await?;
            set_active(&store, &u, false).await?;
            if let Some(audit) = &mut audit {
                let detail = json!({"operation": "user.disabled", "user": who(&u),
                                    "changed": {"active": false}});
                audit.record("account.changed", detail).await;
            }
            println!("disabled {username:?}: its tokens and grants are revoked");
        }
        UserCmd::Enable { username } => {
            let u = user_named(&store, &username).await?;
            set_active(&store, &u, true).await?;
            if let Some(audit) = &mut audit {
                let detail = json!({"operation": "user.enabled", "user": who(&u),
                                    "changed": {"active": true}});
                audit.record("account.changed", detail).await;
            }
            println!("enabled {username:?} (revoked tokens stay revoked)");
        }
    }
    store.close().await;
    match audit {
        Some(a) => a.close().await,
        None => Ok(()),
    }
}

async fn set_active(store: &Store, u: &UserRow, active: bool) -> anyhow::Result<()> {
    let patch = UserPatch {
        active: Some(active),
        ..Default::default()
    };
    store.update_user(&u.id, &patch).await?;
    Ok(())
}

pub async fn service_account(a: ServiceAccountArgs) -> anyhow::Result<()> {
    let (config, store) = open(&a.cfg).await?;
    let ServiceAccountCmd::Create { name, owner } = a.cmd;
    let mut audit = CliAudit::open(&config).await?;
    let owner_id = match owner {
        None => None,
        Some(o) => {
            let u = user_named(&store, &o).await?;
            if u.kind != "user" || !u.active {
                bail!("the owner {o:?} must be an active person, not a service account or a disabled user");
            }
            Some(u.id)
        }
    };
    let sa = accounts::create_service_account(&store, &name, owner_id.as_deref()).await?;
    let detail = json!({"operation": "service_account.created", "user": who(&sa),
                        "owner_id": sa.owner_id});
    audit.record("account.changed", detail).await;
    println!("created service account {:?} (id {})", sa.username, sa.id);
    eprintln!("issue it a token with: portcullis token create --user {} --name <name> --scope vs:<virtual server>", sa.username);
    store.close().await;
    audit.close().await
}

fn expiry(e: Option<i64>) -> String {
    e.map(portcullis_admin::rfc3339)
        .unwrap_or_else(|| "never".into())
}

pub async fn token(a: TokenArgs) -> anyhow::Result<()> {
    let (config, store) = open(&a.cfg).await?;
    let mut audit = match a.cmd {
        TokenCmd::List { .. } => None,
        _ => Some(CliAudit::open(&config).await?),
    };
    match a.cmd {
        TokenCmd::Create {
            user,
            name,
            scopes,
            expires_days,
        } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            accounts::check_scopes(&scopes)?;
            for s in &scopes {
                if let Some(vs) = s.strip_prefix("vs:") {
                    if vs != "*" && !config.virtual_servers.iter().any(|v| v.name == vs) {
                        bail!("scope {s:?}: the configuration has no virtual server named {vs:?}");
                    }
                }
            }
            let u = user_named(&store, &user).await?;
            let (row, secret) = accounts::create_api_token(
                &store,
                &u,
                &name,
                &scopes,
                expires_days,
                config.auth.max_api_token_ttl_days,
            )
            .await?;
            if let Some(audit) = &mut audit {
                audit.record("token.issued", token_detail(&row, &u)).await;
            }
            println!("{secret}");
            eprintln!(
                "token {} {:?} for {:?}, scopes {}, expires {} (shown once: store it now)",
                row.id,
                row.name,
                u.username,
                scopes.join(" "),
                expiry(row.expires_at)
            );
        }
        TokenCmd::List { user } => {
            let filter = match &user {
                Some(u) => Some(user_named(&store, u).await?.id),
                None => None,
            };
            let names: std::collections::HashMap<String, String> = store
                .users(None)
                .await?
                .into_iter()
                .map(|u| (u.id, u.username))
                .collect();
            println!(
                "{:<32} {:<24} {:<20} {:<8} {:<20} SCOPES",
                "ID", "USER", "NAME", "STATUS", "EXPIRES"
            );
            for t in store.api_tokens(filter.as_deref()).await? {
                let scopes: Vec<String> = serde_json::from_str(&t.scopes).unwrap_or_default();
                let status = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= now()) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<32} {:<24} {:<20} {:<8} {:<20} {}",
                    t.id,
                    names.get(&t.user_id).map(String::as_str).unwrap_or("?"),
                    t.name,
                    status,
                    expiry(t.expires_at),
                    scopes.join(" ")
                );
            }
        }
        TokenCmd::Revoke { id } => {
            let t = store
                .api_token(&id)
                .await?
                .ok_or_else(|| anyhow!("no token with id {id:?}"))?;
            if t.revoked_at.is_some() {
                println!("token {id} was already revoked");
            } else {
                store.revoke_api_token(&id).await?;
                if let Some(audit) = &mut audit {
                    let mut detail = match store.user(&t.user_id).await? {
                        Some(u) => token_detail(&t, &u),
                        None => json!({"credential": "api_token", "token_id": t.id,
                                       "name": t.name, "user": {"id": t.user_id}}),
                    };
                    detail["reason"] = json!("revoked_by_operator");
                    audit.record("token.revoked", detail).await;
                }
                println!("revoked token {id} {:?}", t.name);
            }
        }
    }
    store.close().await;
    match audit {
        Some(a) => a.close().await,
        None => Ok(()),
    }
}

pub async fn keys(a: KeysArgs) -> anyhow::Result<()> {
    let (config, store) = open(&a.cfg).await?;
    let KeysCmd::Rotate = a.cmd;
    let mut audit = CliAudit::open(&config).await?;
    let kid = accounts::rotate_signing_key(&store).await?;
    audit
        .record(
            "keys.rotated",
            json!({"operation": "keys.rotated", "kid": kid}),
        )
        .await;
    println!("signing with new key {kid}; the previous key keeps verifying for a day");
    store.close().await;
    audit.close().await
}
