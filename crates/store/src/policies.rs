//! Policy documents stored through the admin API, with a revision counter
//! every change bumps so other replicas reload.

use crate::{now, Store, StoreError};
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct StoredPolicy {
    pub name: String,
    pub text: String,
    pub updated_at: i64,
    pub updated_by: String,
}

impl Store {
    pub async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, text, updated_at, updated_by FROM policies ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Create or replace a document; returns the new revision.
    pub async fn put_policy(&self, name: &str, text: &str, by: &str) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO policies (name, text, updated_at, updated_by) VALUES (?, ?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET text = excluded.text,
               updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(name)
        .bind(text)
        .bind(now())
        .bind(by)
        .execute(&mut *tx)
        .await?;
        let rev: i64 = sqlx::query_scalar(
            "UPDATE policy_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rev)
    }

    /// Delete a document; `None` when there was none.
    pub async fn delete_policy(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM policies WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(None);
        }
        let rev: i64 = sqlx::query_scalar(
            "UPDATE policy_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rev))
    }

    pub async fn policy_revision(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT revision FROM policy_revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
