//! Daily usage counters (calls and refusals per team, user, virtual server and
//! tool), for quotas that survive restarts and for cost attribution.
//!
//! Writers only ever add deltas (never overwrite totals), so several replicas
//! flushing into the same database add up instead of clobbering each other.

use crate::{Store, StoreError};
use sqlx::Row;

/// Calls of one (day, team, user, virtual server, tool). As an argument of
/// [`Store::add_usage`] the counts are deltas; as a result of
/// [`Store::usage`], totals.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageCount {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// One of the caller's groups, or `-` for callers in none.
    pub team: String,
    pub user: String,
    pub virtual_server: String,
    pub tool: String,
    /// Calls the rate limits and quotas admitted.
    pub calls: u64,
    /// Calls a rate limit or quota refused.
    pub refused: u64,
}

/// Calls counted against one daily quota bucket. As an argument of
/// [`Store::add_quota_use`], `used` is a delta.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaUse {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub limit: String,
    /// The bucket's key: a user id, group, tool or virtual server name.
    pub bucket: String,
    pub used: u64,
}

/// SQLite integers are signed; counts beyond i64::MAX cannot happen in
/// practice, but saturating keeps a corrupt value from wrapping negative.
fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Add usage deltas, all in one transaction.
    pub async fn add_usage(&self, deltas: &[UsageCount]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deltas {
            sqlx::query(
                "INSERT INTO usage_daily (day, team, user_name, virtual_server, tool, calls, refused)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(day, team, user_name, virtual_server, tool) DO UPDATE SET
                   calls = calls + excluded.calls, refused = refused + excluded.refused",
            )
            .bind(&d.day)
            .bind(&d.team)
            .bind(&d.user)
            .bind(&d.virtual_server)
            .bind(&d.tool)
            .bind(to_db(d.calls))
            .bind(to_db(d.refused))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage totals of one day (`YYYY-MM-DD`) or of every day, sorted by day,
    /// team, user, virtual server and tool.
    pub async fn usage(&self, day: Option<&str>) -> Result<Vec<UsageCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT day, team, user_name, virtual_server, tool, calls, refused FROM usage_daily
             WHERE ?1 IS NULL OR day = ?1
             ORDER BY day, team, user_name, virtual_server, tool",
        )
        .bind(day)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| UsageCount {
                day: r.get("day"),
                team: r.get("team"),
                user: r.get("user_name"),
                virtual_server: r.get("virtual_server"),
                tool: r.get("tool"),
                calls: from_db(r.get("calls")),
                refused: from_db(r.get("refused")),
            })
            .collect())
    }

    /// Add quota use deltas, all in one transaction.
    pub async fn add_quota_use(&self, deltas: &[QuotaUse]) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deltas {
            sqlx::query(
                "INSERT INTO quota_daily (day, limit_name, bucket, used) VALUES (?, ?, ?, ?)
                 ON CONFLICT(day, limit_name, bucket) DO UPDATE SET used = used + excluded.used",
            )
            .bind(&d.day)
            .bind(&d.limit)
            .bind(&d.bucket)
            .bind(to_db(d.used))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Quota use of one day (`YYYY-MM-DD`), sorted by limit and bucket.
    pub async fn quota_use(&self, day: &str) -> Result<Vec<QuotaUse>, StoreError> {
        let rows = sqlx::query(
            "SELECT day, limit_name, bucket, used FROM quota_daily WHERE day = ?
             ORDER BY limit_name, bucket",
        )
        .bind(day)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| QuotaUse {
                day: r.get("day"),
                limit: r.get("limit_name"),
                bucket: r.get("bucket"),
                used: from_db(r.get("used")),
            })
            .collect())
    }

    /// Delete quota counters of days before `day` (`YYYY-MM-DD`): only
    /// today's are ever read back. Usage is kept (it is the billing record).
    pub async fn prune_quota_before(&self, day: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM quota_daily WHERE day < ?")
            .bind(day)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(day: &str, team: &str, tool: &str, calls: u64, refused: u64) -> UsageCount {
        UsageCount {
            day: day.into(),
            team: team.into(),
            user: "alice".into(),
            virtual_server: "eng".into(),
            tool: tool.into(),
            calls,
            refused,
        }
    }

    fn quota(day: &str, limit: &str, bucket: &str, used: u64) -> QuotaUse {
        QuotaUse {
            day: day.into(),
            limit: limit.into(),
            bucket: bucket.into(),
            used,
        }
    }

    #[tokio::test]
    async fn usage_and_quota_deltas_add_up() {
        let dir = std::env::temp_dir().join(format!("pc-store-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).await.expect("open");

        store
            .add_usage(&[
                usage("2026-03-01", "dev", "gh_issue", 3, 1),
                usage("2026-03-01", "ops", "gh_issue", 3, 1),
                usage("2026-03-02", "dev", "gh_issue", 1, 0),
            ])
            .await
            .expect("first add");
        store
            .add_usage(&[usage("2026-03-01", "dev", "gh_issue", 2, 5)])
            .await
            .expect("second add");
        store.add_usage(&[]).await.expect("nothing to add");

        let day1 = store.usage(Some("2026-03-01")).await.expect("day 1");
        assert_eq!(
            day1,
            vec![
                usage("2026-03-01", "dev", "gh_issue", 5, 6),
                usage("2026-03-01", "ops", "gh_issue", 3, 1),
            ]
        );
        assert_eq!(store.usage(None).await.expect("all").len(), 3);
        assert!(store
            .usage(Some("2026-03-09"))
            .await
            .expect("none")
            .is_empty());

        store
            .add_quota_use(&[
                quota("2026-03-01", "daily", "u1", 10),
                quota("2026-03-01", "daily", "u2", 1),
                quota("2026-03-02", "daily", "u1", 4),
            ])
            .await
            .expect("quota add");
        store
            .add_quota_use(&[quota("2026-03-01", "daily", "u1", 7)])
            .await
            .expect("quota add again");
        assert_eq!(
            store.quota_use("2026-03-01").await.expect("quota day 1"),
            vec![
                quota("2026-03-01", "daily", "u1", 17),
                quota("2026-03-01", "daily", "u2", 1),
            ]
        );
        assert_eq!(
            store.prune_quota_before("2026-03-02").await.expect("prune"),
            2
        );
        assert!(store
            .quota_use("2026-03-01")
            .await
            .expect("gone")
            .is_empty());
        assert_eq!(store.quota_use("2026-03-02").await.expect("kept").len(), 1);

        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
