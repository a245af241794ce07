//! Identity tables: users and service accounts, groups, API tokens, OAuth clients,
//! authorization requests and codes, refresh-token families, signing keys, and the
//! change feed (`identity_events`) that every replica follows.
//!
//! Every mutation that can take access away writes an event in the same
//! transaction, so a replica that applies events in order never misses one.

use crate::{now, Store, StoreError};
use rand::RngCore;
use sqlx::{FromRow, Sqlite, Transaction};

mod oauth;
pub use oauth::*;

/// A random identifier: 128 bits, hex.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct UserRow {
    pub id: String,
    pub kind: String,
    pub username: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub external_id: Option<String>,
    pub idp: Option<String>,
    pub idp_subject: Option<String>,
    pub password_hash: Option<String>,
    pub active: bool,
    pub is_admin: bool,
    pub owner_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub kind: String,
    pub username: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub external_id: Option<String>,
    pub idp: Option<String>,
    pub idp_subject: Option<String>,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub owner_id: Option<String>,
}

/// Fields a SCIM or admin update may change; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub username: Option<String>,
    pub email: Option<Option<String>>,
    pub display_name: Option<Option<String>>,
    pub external_id: Option<Option<String>>,
    pub active: Option<bool>,
    pub is_admin: Option<bool>,
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct GroupRow {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct ApiTokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub subject: Option<String>,
    pub at: i64,
}

/// Everything the in-memory identity view is built from.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub users: Vec<UserRow>,
    /// (user id, group display name)
    pub memberships: Vec<(String, String)>,
    pub tokens: Vec<ApiTokenRow>,
    pub revoked_families: Vec<(String, i64)>,
    pub keys: Vec<KeyRow>,
    pub last_event: i64,
}

async fn emit(
    tx: &mut Transaction<'_, Sqlite>,
    kind: &str,
    subject: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO identity_events (kind, subject, at) VALUES (?, ?, ?)")
        .bind(kind)
        .bind(subject)
        .bind(now())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const USER_COLS: &str = "id, kind, username, email, display_name, external_id, idp, idp_subject, \
     password_hash, active, is_admin, owner_id, created_at, updated_at";

impl Store {
    // ---- users ----

    pub async fn create_user(&self, u: &NewUser) -> Result<UserRow, StoreError> {
        let id = new_id();
        let ts = now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, kind, username, email, display_name, external_id, idp, idp_subject,
                password_hash, active, is_admin, owner_id, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&u.kind)
        .bind(&u.username)
        .bind(&u.email)
        .bind(&u.display_name)
        .bind(&u.external_id)
        .bind(&u.idp)
        .bind(&u.idp_subject)
        .bind(&u.password_hash)
        .bind(u.is_admin)
        .bind(&u.owner_id)
        .bind(ts)
        .bind(ts)
        .execute(&mut *tx)
        .await?;
        emit(&mut tx, "user", &id).await?;
        tx.commit().await?;
        self.user(&id)
            .await?
            .ok_or(StoreError::Db(sqlx::Error::RowNotFound))
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(
            sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(
            sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE username = ?"))
                .bind(username)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn user_by_idp(
        &self,
        idp: &str,
        subject: &str,
    ) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLS} FROM users WHERE idp = ? AND idp_subject = ?"
        ))
        .bind(idp)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLS} FROM users WHERE external_id = ?"
        ))
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn users(&self, kind: Option<&str>) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {USER_COLS} FROM users WHERE (?1 IS NULL OR kind = ?1) ORDER BY username"
        ))
        .bind(kind)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Apply a patch; deactivation also revokes every credential the user holds.
    pub async fn update_user(
        &self,
        id: &str,
        p: &UserPatch,
    ) -> Result<Option<UserRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let ts = now();
        if let Some(v) = &p.username {
            set_col(&mut tx, id, "username", Some(v.as_str())).await?;
        }
        for (col, v) in [
            ("email", &p.email),
            ("display_name", &p.display_name),
            ("external_id", &p.external_id),
        ] {
            if let Some(v) = v {
                set_col(&mut tx, id, col, v.as_deref()).await?;
            }
        }
        if let Some(h) = &p.password_hash {
            set_col(&mut tx, id, "password_hash", Some(h.as_str())).await?;
        }
        if let Some(a) = p.is_admin {
            sqlx::query("UPDATE users SET is_admin = ? WHERE id = ?")
                .bind(a)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(a) = p.active {
            sqlx::query("UPDATE users SET active = ? WHERE id = ?")
                .bind(a)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if !a {
                revoke_everything(&mut tx, id, "user deactivated").await?;
            }
        }
        sqlx::query("UPDATE users SET updated_at = ? WHERE id = ?")
            .bind(ts)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        emit(&mut tx, "user", id).await?;
        tx.commit().await?;
        self.user(id).await
    }

    /// Delete a user (deprovisioning): credentials go with it.
    pub async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        revoke_everything(&mut tx, id, "user deleted").await?;
        let n = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        emit(&mut tx, "user", id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    // ---- groups ----

    pub async fn create_group(
        &self,
        name: &str,
        external_id: Option<&str>,
    ) -> Result<GroupRow, StoreError> {
        let id = new_id();
        let ts = now();
        sqlx::query(
            "INSERT INTO groups (id, display_name, external_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(name)
        .bind(external_id)
        .bind(ts)
        .bind(ts)
        .execute(&self.pool)
        .await?;
        self.group(&id)
            .await?
            .ok_or(StoreError::Db(sqlx::Error::RowNotFound))
    }

    pub async fn group(&self, id: &str) -> Result<Option<GroupRow>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM groups WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn group_by_name(&self, name: &str) -> Result<Option<GroupRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM groups WHERE display_name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM groups ORDER BY display_name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn group_member_ids(&self, group_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id",
        )
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Group names of a user, sorted.
    pub async fn user_group_names(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT g.display_name FROM groups g JOIN group_members m ON m.group_id = g.id
             WHERE m.user_id = ? ORDER BY g.display_name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn rename_group(
        &self,
        id: &str,
        name: &str,
        external_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE groups SET display_name = ?, external_id = COALESCE(?, external_id), updated_at = ? WHERE id = ?",
        )
        .bind(name)
        .bind(external_id)
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        emit_members(&mut tx, id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn delete_group(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        emit_members(&mut tx, id).await?;
        let n = sqlx::query("DELETE FROM groups WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Add and remove members in one transaction; each affected user gets an event.
    pub async fn change_members(
        &self,
        group_id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for u in add {
            sqlx::query("INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)")
                .bind(group_id)
                .bind(u)
                .execute(&mut *tx)
                .await?;
            emit(&mut tx, "user", u).await?;
        }
        for u in remove {
            sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
                .bind(group_id)
                .bind(u)
                .execute(&mut *tx)
                .await?;
            emit(&mut tx, "user", u).await?;
        }
        sqlx::query("UPDATE groups SET updated_at = ? WHERE id = ?")
            .bind(now())
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replace a group's members.
    pub async fn set_members(&self, group_id: &str, members: &[String]) -> Result<(), StoreError> {
        let current = self.group_member_ids(group_id).await?;
        let add: Vec<String> = members
            .iter()
            .filter(|m| !current.contains(m))
            .cloned()
            .collect();
        let remove: Vec<String> = current
            .into_iter()
            .filter(|c| !members.contains(c))
            .collect();
        self.change_members(group_id, &add, &remove).await
    }

    /// Make a user's groups exactly `names` (IdP login with a groups claim), creating
    /// groups that do not exist yet.
    pub async fn sync_user_groups(
        &self,
        user_id: &str,
        names: &[String],
    ) -> Result<(), StoreError> {
        let current = self.user_group_names(user_id).await?;
        let mut want = names.to_vec();
        want.sort();
        want.dedup();
        if current == want {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM group_members WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for name in &want {
            let gid: Option<String> =
                sqlx::query_scalar("SELECT id FROM groups WHERE display_name = ?")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let gid = match gid {
                Some(g) => g,
                None => {
                    let g = new_id();
                    sqlx::query(
                        "INSERT INTO groups (id, display_name, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(&g)
                    .bind(name)
                    .bind(now())
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                    g
                }
            };
            sqlx::query("INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)")
                .bind(&gid)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        emit(&mut tx, "user", user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- API tokens ----

    pub async fn insert_api_token(&self, t: &ApiTokenRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, secret_hash, scopes, expires_at, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.name)
        .bind(&t.secret_hash)
        .bind(&t.scopes)
        .bind(t.expires_at)
        .bind(t.created_at)
        .execute(&mut *tx)
        .await?;
        emit(&mut tx, "token", &t.user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn api_tokens(&self, user_id: Option<&str>) -> Result<Vec<ApiTokenRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT * FROM api_tokens WHERE (?1 IS NULL OR user_id = ?1) ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM api_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Revoke one API token; returns false when it does not exist or was revoked.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user: Option<String> = sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING user_id",
        )
        .bind(now())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(u) = &user {
            emit(&mut tx, "token", u).await?;
        }
        tx.commit().await?;
        Ok(user.is_some())
    }

    // ---- change feed ----

    pub async fn events_since(&self, seq: i64) -> Result<Vec<EventRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM identity_events WHERE seq > ? ORDER BY seq LIMIT 10000")
                .bind(seq)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Everything the in-memory view needs, read in one transaction.
    pub async fn identity_snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        let last_event: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM identity_events")
                .fetch_one(&mut *tx)
                .await?;
        let users = sqlx::query_as(&format!("SELECT {USER_COLS} FROM users"))
            .fetch_all(&mut *tx)
            .await?;
        let memberships = sqlx::query_as(
            "SELECT m.user_id, g.display_name FROM group_members m JOIN groups g ON g.id = m.group_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let tokens = sqlx::query_as("SELECT * FROM api_tokens WHERE revoked_at IS NULL")
            .fetch_all(&mut *tx)
            .await?;
        let revoked_families = sqlx::query_as(
            "SELECT id, expires_at FROM token_families WHERE revoked_at IS NOT NULL AND expires_at > ?",
        )
        .bind(now())
        .fetch_all(&mut *tx)
        .await?;
        let keys = sqlx::query_as("SELECT * FROM signing_keys")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Snapshot {
            users,
            memberships,
            tokens,
            revoked_families,
            keys,
            last_event,
        })
    }
}

async fn set_col(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    col: &str,
    v: Option<&str>,
) -> Result<(), StoreError> {
    // `col` comes from a fixed list in this module, never from input.
    sqlx::query(&format!("UPDATE users SET {col} = ? WHERE id = ?"))
        .bind(v)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn emit_members(tx: &mut Transaction<'_, Sqlite>, group_id: &str) -> Result<(), StoreError> {
    let members: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM group_members WHERE group_id = ?")
            .bind(group_id)
            .fetch_all(&mut **tx)
            .await?;
    for m in members {
        emit(tx, "user", &m).await?;
    }
    Ok(())
}

async fn revoke_family_tx(
    tx: &mut Transaction<'_, Sqlite>,
    family_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let user: Option<String> = sqlx::query_scalar(
        "UPDATE token_families SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at IS NULL RETURNING user_id",
    )
    .bind(now())
    .bind(reason)
    .bind(family_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(u) = user {
        emit(tx, "family", &u).await?;
    }
    Ok(())
}

async fn revoke_everything(
    tx: &mut Transaction<'_, Sqlite>,
    user_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let ts = now();
    sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL")
        .bind(ts)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE token_families SET revoked_at = ?, revoke_reason = ? WHERE user_id = ? AND revoked_at IS NULL",
    )
    .bind(ts)
    .bind(reason)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    // Service accounts a departing person owns stop with them.
    let owned: Vec<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE owner_id = ? AND active = 1")
            .bind(user_id)
            .fetch_all(&mut **tx)
            .await?;
    for sa in owned {
        sqlx::query("UPDATE users SET active = 0, updated_at = ? WHERE id = ?")
            .bind(ts)
            .bind(&sa)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(ts)
        .bind(&sa)
        .execute(&mut **tx)
        .await?;
        emit(tx, "user", &sa).await?;
    }
    emit(tx, "user", user_id).await?;
    Ok(())
}

impl Store {
    /// Record that a person logged in through an IdP (first login links the
    /// account, e.g. one SCIM provisioned earlier).
    pub async fn link_idp(
        &self,
        user_id: &str,
        idp: &str,
        subject: &str,
        email: Option<&str>,
        display_name: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET idp = ?, idp_subject = ?, email = COALESCE(?, email),
                display_name = COALESCE(?, display_name), updated_at = ? WHERE id = ?",
        )
        .bind(idp)
        .bind(subject)
        .bind(email)
        .bind(display_name)
        .bind(now())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        emit(&mut tx, "user", user_id).await?;
        tx.commit().await?;
        Ok(())
    }
}
