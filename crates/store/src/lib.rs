//! The embedded SQLite state store of Portcullis.
//!
//! It owns the database file in the data directory, its migrations, and the
//! idempotent loading of the declarative YAML into tables. It is not on the request
//! hot path: the gateway works from in-memory state built at start-up. Secret values
//! (upstream header and environment values) are never written here in clear.

pub mod identity;
pub mod identity_admin;
pub mod policies;
pub mod usage;

use portcullis_config::{Config, Upstream};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("encoding error: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Marker written in place of secret values.
pub const REDACTED: &str = "<redacted>";

/// A handle on the state database.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// What applying a configuration changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Changed { revision: i64 },
}

/// A catalog row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRow {
    pub name: String,
    pub transport: String,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub risk_tier: Option<i64>,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn redacted(up: &Upstream) -> Upstream {
    let mut up = up.clone();
    for v in up.headers.values_mut().chain(up.env.values_mut()) {
        *v = REDACTED.to_owned();
    }
    up
}

impl Store {
    /// Open (creating if needed) `portcullis.db` in `data_dir` and migrate it.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::DataDir(data_dir.display().to_string(), e))?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("portcullis.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Load the declarative configuration: upsert what it names, delete what it no
    /// longer names, and record a revision only when something changed.
    pub async fn apply_config(&self, config: &Config, source: &str) -> Result<Applied, StoreError> {
        let ups: Vec<Upstream> = config.upstreams.iter().map(redacted).collect();
        let up_json: Vec<String> = ups
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        let vs_json: Vec<String> = config
            .virtual_servers
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        let mut hasher = Sha256::new();
        for s in up_json.iter().chain(vs_json.iter()) {
            hasher.update(s.as_bytes());
            hasher.update([0]);
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

        let mut tx = self.pool.begin().await?;
        let last: Option<String> =
            sqlx::query_scalar("SELECT digest FROM config_revisions ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        if last.as_deref() == Some(digest.as_str()) {
            tx.commit().await?;
            return Ok(Applied::Unchanged);
        }
        let ts = now();
        sqlx::query("DELETE FROM upstreams")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM virtual_servers")
            .execute(&mut *tx)
            .await?;
        for (up, json) in ups.iter().zip(up_json.iter()) {
            let transport = serde_json::to_value(up.transport)?;
            sqlx::query(
                "INSERT INTO upstreams (name, transport, owner, team, risk_tier, spec, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&up.name)
            .bind(transport.as_str().unwrap_or_default())
            .bind(&up.catalog.owner)
            .bind(&up.catalog.team)
            .bind(up.catalog.risk_tier.map(i64::from))
            .bind(json)
            .bind(ts)
            .execute(&mut *tx)
            .await?;
        }
        for (vs, json) in config.virtual_servers.iter().zip(vs_json.iter()) {
            sqlx::query("INSERT INTO virtual_servers (name, spec, updated_at) VALUES (?, ?, ?)")
                .bind(&vs.name)
                .bind(json)
                .bind(ts)
                .execute(&mut *tx)
                .await?;
        }
        let revision = sqlx::query(
            "INSERT INTO config_revisions (digest, source, applied_at) VALUES (?, ?, ?)",
        )
        .bind(&digest)
        .bind(source)
        .bind(ts)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        tx.commit().await?;
        Ok(Applied::Changed { revision })
    }

    /// The catalog of upstreams, by name.
    pub async fn upstreams(&self) -> Result<Vec<UpstreamRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, transport, owner, team, risk_tier FROM upstreams ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| UpstreamRow {
                name: r.get("name"),
                transport: r.get("transport"),
                owner: r.get("owner"),
                team: r.get("team"),
                risk_tier: r.get("risk_tier"),
            })
            .collect())
    }

    /// Raw stored spec of one upstream (for inspection and tests).
    pub async fn upstream_spec(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT spec FROM upstreams WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn revision_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM config_revisions")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
