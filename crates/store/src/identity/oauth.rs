//! OAuth state: registered clients, pending authorization requests, single-use
//! codes, token families with rotating refresh tokens, and signing keys.

use super::{emit, revoke_family_tx};
use crate::{now, Store, StoreError};
use sqlx::{FromRow, Row};

#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct ClientRow {
    pub client_id: String,
    pub secret_hash: Option<String>,
    pub kind: String,
    pub client_name: String,
    pub redirect_uris: String,
    pub application_type: String,
    pub auth_method: String,
    pub metadata: String,
    pub created_at: i64,
    pub fetched_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AuthRequestRow {
    pub id: String,
    pub params: String,
    pub csrf: String,
    pub idp_state: Option<String>,
    pub idp_nonce: Option<String>,
    pub idp_verifier: Option<String>,
    pub idp: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct AuthCodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub family_id: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct FamilyRow {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    pub kid: String,
    pub alg: String,
    pub private_der: String,
    pub public_raw: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// What redeeming an authorization code found.
#[derive(Debug)]
pub enum Redeemed {
    Fresh(AuthCodeRow),
    /// The code was already used: the family it produced has been revoked.
    Replayed {
        family_id: Option<String>,
    },
    Unknown,
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub enum Rotated {
    Fresh(FamilyRow),
    /// A spent token came back: the whole family is now revoked.
    Reused {
        family_id: String,
    },
    Revoked,
    Unknown,
}

impl Store {
    // ---- OAuth clients ----

    pub async fn upsert_client(&self, c: &ClientRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_clients (client_id, secret_hash, kind, client_name, redirect_uris,
                application_type, auth_method, metadata, created_at, fetched_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (client_id) DO UPDATE SET client_name = excluded.client_name,
                redirect_uris = excluded.redirect_uris, metadata = excluded.metadata,
                application_type = excluded.application_type, auth_method = excluded.auth_method,
                fetched_at = excluded.fetched_at",
        )
        .bind(&c.client_id)
        .bind(&c.secret_hash)
        .bind(&c.kind)
        .bind(&c.client_name)
        .bind(&c.redirect_uris)
        .bind(&c.application_type)
        .bind(&c.auth_method)
        .bind(&c.metadata)
        .bind(c.created_at)
        .bind(c.fetched_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM oauth_clients WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM oauth_clients ORDER BY created_at, client_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Delete a client and revoke every grant it holds.
    pub async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let fams: Vec<(String, String)> = sqlx::query_as(
            "UPDATE token_families SET revoked_at = ?, revoke_reason = 'client deleted'
             WHERE client_id = ? AND revoked_at IS NULL RETURNING id, user_id",
        )
        .bind(now())
        .bind(client_id)
        .fetch_all(&mut *tx)
        .await?;
        for (_, user) in &fams {
            emit(&mut tx, "family", user).await?;
        }
        let n = sqlx::query("DELETE FROM oauth_clients WHERE client_id = ?")
            .bind(client_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    // ---- authorization requests and codes ----

    pub async fn insert_auth_request(&self, r: &AuthRequestRow) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM auth_requests WHERE expires_at < ?")
            .bind(now())
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO auth_requests (id, params, csrf, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&r.id)
            .bind(&r.params)
            .bind(&r.csrf)
            .bind(r.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn auth_request(&self, id: &str) -> Result<Option<AuthRequestRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM auth_requests WHERE id = ? AND expires_at >= ?")
                .bind(id)
                .bind(now())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// After consent: remember the single-use state sent to the IdP.
    pub async fn begin_idp_login(
        &self,
        id: &str,
        idp: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE auth_requests SET idp = ?, idp_state = ?, idp_nonce = ?, idp_verifier = ? WHERE id = ?",
        )
        .bind(idp)
        .bind(state)
        .bind(nonce)
        .bind(verifier)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Take (and delete) the request an IdP callback's state names.
    pub async fn take_by_idp_state(
        &self,
        state: &str,
    ) -> Result<Option<AuthRequestRow>, StoreError> {
        Ok(sqlx::query_as(
            "DELETE FROM auth_requests WHERE idp_state = ? AND expires_at >= ? RETURNING *",
        )
        .bind(state)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn delete_auth_request(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM auth_requests WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn insert_code(&self, c: &AuthCodeRow) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM auth_codes WHERE expires_at < ?")
            .bind(now() - 3600)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, redirect_uri, code_challenge, resource, scope, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.code_hash)
        .bind(&c.client_id)
        .bind(&c.user_id)
        .bind(&c.redirect_uri)
        .bind(&c.code_challenge)
        .bind(&c.resource)
        .bind(&c.scope)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mark a code used exactly once. A second presentation revokes what the first
    /// produced (OAuth 2.1 §4.1.3).
    pub async fn redeem_code(&self, code_hash: &str) -> Result<Redeemed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let fresh: Option<AuthCodeRow> = sqlx::query_as(
            "UPDATE auth_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL RETURNING *",
        )
        .bind(now())
        .bind(code_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(c) = fresh {
            tx.commit().await?;
            return Ok(Redeemed::Fresh(c));
        }
        let spent: Option<AuthCodeRow> =
            sqlx::query_as("SELECT * FROM auth_codes WHERE code_hash = ?")
                .bind(code_hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(spent) = spent else {
            tx.commit().await?;
            return Ok(Redeemed::Unknown);
        };
        if let Some(f) = &spent.family_id {
            revoke_family_tx(&mut tx, f, "authorization code replayed").await?;
        }
        tx.commit().await?;
        Ok(Redeemed::Replayed {
            family_id: spent.family_id,
        })
    }

    /// Open a token family for a redeemed code and store its first refresh token.
    pub async fn open_family(
        &self,
        f: &FamilyRow,
        code_hash: Option<&str>,
        refresh_hash: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO token_families (id, user_id, client_id, resource, scope, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&f.id)
        .bind(&f.user_id)
        .bind(&f.client_id)
        .bind(&f.resource)
        .bind(&f.scope)
        .bind(f.created_at)
        .bind(f.expires_at)
        .execute(&mut *tx)
        .await?;
        if let Some(c) = code_hash {
            sqlx::query("UPDATE auth_codes SET family_id = ? WHERE code_hash = ?")
                .bind(&f.id)
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, created_at) VALUES (?, ?, ?)",
        )
        .bind(refresh_hash)
        .bind(&f.id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spend a refresh token and store its successor, atomically.
    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        next_hash: &str,
    ) -> Result<Rotated, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT family_id, used_at FROM refresh_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(Rotated::Unknown);
        };
        let family_id: String = row.get("family_id");
        let used: Option<i64> = row.get("used_at");
        if used.is_some() {
            revoke_family_tx(&mut tx, &family_id, "refresh token reused").await?;
            tx.commit().await?;
            return Ok(Rotated::Reused { family_id });
        }
        let fam: Option<FamilyRow> = sqlx::query_as(
            "SELECT id, user_id, client_id, resource, scope, created_at, expires_at, revoked_at
             FROM token_families WHERE id = ?",
        )
        .bind(&family_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(fam) = fam else {
            return Ok(Rotated::Unknown);
        };
        if fam.revoked_at.is_some() || fam.expires_at < now() {
            return Ok(Rotated::Revoked);
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?")
            .bind(now())
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, created_at) VALUES (?, ?, ?)",
        )
        .bind(next_hash)
        .bind(&family_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Rotated::Fresh(fam))
    }

    pub async fn revoke_family(&self, family_id: &str, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        revoke_family_tx(&mut tx, family_id, reason).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Family of a refresh token (for RFC 7009 revocation).
    pub async fn family_of_refresh(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = ?")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn families(&self, user_id: Option<&str>) -> Result<Vec<FamilyRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, client_id, resource, scope, created_at, expires_at, revoked_at
             FROM token_families WHERE (?1 IS NULL OR user_id = ?1) ORDER BY created_at",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    // ---- signing keys ----

    pub async fn signing_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM signing_keys ORDER BY created_at, kid")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Add a key and retire the current ones (they keep verifying until dropped).
    pub async fn rotate_signing_key(&self, k: &KeyRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL")
            .bind(now())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_der, public_raw, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(&k.private_der)
        .bind(&k.public_raw)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await?;
        emit(&mut tx, "keys", &k.kid).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drop retired keys older than `before` (their tokens have expired).
    pub async fn drop_retired_keys(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// The browser approved the client on the consent page.
    pub async fn mark_consented(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE auth_requests SET idp = 'consented' WHERE id = ? AND idp IS NULL")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
