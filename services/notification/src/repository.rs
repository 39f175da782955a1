//! PostgreSQL storage of notifications.

use sqlx::{PgPool, Row};
use stockmesh_platform::db::span as db_span;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{NewNotification, Notification, NotificationKind};
use crate::error::NotificationError;

#[derive(Clone)]
pub struct NotificationRepository {
    pool: PgPool,
}

const COLUMNS: &str = "id, event_id, user_id, order_id, kind, message, created_at, read_at";

fn notification_from_row(row: &sqlx::postgres::PgRow) -> Result<Notification, NotificationError> {
    let kind: String = row.try_get("kind")?;
    let kind = NotificationKind::parse(&kind).ok_or_else(|| {
        NotificationError::Database(sqlx::Error::Decode(
            format!("unknown notification kind {kind:?}").into(),
        ))
    })?;
    Ok(Notification {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        user_id: row.try_get("user_id")?,
        order_id: row.try_get("order_id")?,
        kind,
        message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        read_at: row.try_get("read_at")?,
    })
}

impl NotificationRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores the notification of an event unless that event was stored
    /// before; `None` means a duplicate (nothing changed). The statement
    /// commits on its own: when this returns, the row is durable.
    pub async fn insert_if_absent(
        &self,
        new: &NewNotification,
    ) -> Result<Option<Notification>, NotificationError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO notifications (id, event_id, user_id, order_id, kind, message) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (event_id) DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(new.event_id)
        .bind(new.user_id)
        .bind(new.order_id)
        .bind(new.kind.as_str())
        .bind(&new.message)
        .fetch_optional(&self.pool)
        .instrument(db_span("insert", "notifications"))
        .await?;
        row.as_ref().map(notification_from_row).transpose()
    }

    /// A page of one user's notifications, newest first, and their total.
    pub async fn list_for_user(
        &self,
        user_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Notification>, i64), NotificationError> {
        async {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM notifications WHERE user_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            )))
            .bind(user_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
            let total: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_one(&self.pool)
                    .await?;
            let items = rows
                .iter()
                .map(notification_from_row)
                .collect::<Result<_, _>>()?;
            Ok((items, total))
        }
        .instrument(db_span("select", "notifications"))
        .await
    }

    /// How many of `user_id`'s notifications are unread.
    pub async fn unread_count(&self, user_id: Uuid) -> Result<i64, NotificationError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .instrument(db_span("select", "notifications"))
        .await?)
    }

    /// `user_id`'s notifications stored after the one with id `after`
    /// (oldest first, at most `limit`): what a reconnecting stream missed.
    /// Ids are UUIDv7, so they order by time of storing; a notification id
    /// that is not the user's yields nothing.
    pub async fn stored_after(
        &self,
        user_id: Uuid,
        after: Uuid,
        limit: i64,
    ) -> Result<Vec<Notification>, NotificationError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM notifications n WHERE user_id = $1 AND (created_at, id) > \
             (SELECT created_at, id FROM notifications WHERE id = $2 AND user_id = $1) \
             ORDER BY created_at, id LIMIT $3"
        )))
        .bind(user_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "notifications"))
        .await?;
        rows.iter().map(notification_from_row).collect()
    }

    /// Marks one of `user_id`'s notifications read (the first time only);
    /// `None` when there is no such notification of theirs.
    pub async fn mark_read(
        &self,
        id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<Notification>, NotificationError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE notifications SET read_at = COALESCE(read_at, now()) \
             WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .instrument(db_span("update", "notifications"))
        .await?;
        row.as_ref().map(notification_from_row).transpose()
    }
}
