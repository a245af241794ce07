//! Queries the admin API and SCIM need beyond `identity.rs`: single-row lookups
//! and helpers to classify database errors. Read-only except where noted.

use crate::identity::FamilyRow;
use crate::{Store, StoreError};
use sqlx::FromRow;

/// A token family as administrators see it.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct GrantRow {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    pub resource: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
}

impl StoreError {
    /// Whether the error is a UNIQUE constraint violation (a duplicate name).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.is_unique_violation(),
            _ => false,
        }
    }

    /// Whether the error is a FOREIGN KEY violation (a reference to a missing row).
    pub fn is_foreign_key_violation(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => e.is_foreign_key_violation(),
            _ => false,
        }
    }
}

impl Store {
    /// One token family (an OAuth grant), revoked or not.
    pub async fn family(&self, id: &str) -> Result<Option<FamilyRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, client_id, resource, scope, created_at, expires_at, revoked_at
             FROM token_families WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Token families with why they were revoked (the admin view of grants).
    pub async fn grants(&self, user_id: Option<&str>) -> Result<Vec<GrantRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, user_id, client_id, resource, scope, created_at, expires_at, revoked_at, revoke_reason
             FROM token_families WHERE (?1 IS NULL OR user_id = ?1) ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every (group id, user id) membership, for listing groups with their members
    /// in one query.
    pub async fn all_memberships(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as(
                "SELECT group_id, user_id FROM group_members ORDER BY group_id, user_id",
            )
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// (group id, display name) of every group a user belongs to.
    pub async fn user_groups(&self, user_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT g.id, g.display_name FROM groups g JOIN group_members m ON m.group_id = g.id
             WHERE m.user_id = ? ORDER BY g.display_name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
