//! PostgreSQL storage of notifications.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgPool, Row};
use stockmesh_platform::db::span as db_span;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{NewNotification, Notification, NotificationKind};
use crate::error::NotificationError;

#[derive(Clone)]
pub struct NotificationRepository {
    pool: PgPool,
    /// Inserts waiting for the group insert task.
    inserts: mpsc::Sender<PendingInsert>,
}

/// Most notifications stored by one group insert.
const GROUP_MAX: usize = 64;
/// How long a group insert may wait on a row lock before its members are
/// stored one by one instead.
const GROUP_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// Group inserts running at once, at most (as many as the consumer's
/// default concurrency: never fewer statements in flight than before grouping).
const GROUPS_IN_FLIGHT: usize = 8;
/// How long the next group waits for the last one to commit before it is
/// sent anyway: a commit takes a millisecond or two; much longer means the
/// last group is stuck (a row lock) and must not hold the others up.
const GROUP_PATIENCE: std::time::Duration = std::time::Duration::from_millis(5);

type Stored = Result<Option<Notification>, NotificationError>;

/// One insert waiting for its group, and where its answer goes.
struct PendingInsert {
    new: NewNotification,
    answer: oneshot::Sender<Stored>,
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
    /// Starts the group insert task (needs a Tokio runtime).
    pub fn new(pool: PgPool) -> Self {
        let (inserts, waiting) = mpsc::channel(4 * GROUP_MAX);
        tokio::spawn(group_inserts(pool.clone(), waiting));
        Self { pool, inserts }
    }

    /// Stores the notification of an event unless that event was stored
    /// before; `None` means a duplicate (nothing changed). When this
    /// returns, the row is committed: durable.
    ///
    /// Concurrent calls are stored together (group insert): the consumer
    /// handles several deliveries at once, and one multi-row statement
    /// costs one commit for all of them instead of one each. Each caller
    /// still gets its own answer, and its delivery is acknowledged only
    /// after it. A group the database refuses is stored one by one, so one
    /// refused event never fails its neighbours.
    ///
    /// The database span is the caller's (a child of its delivery's
    /// `process` span, in the order's trace) and lasts until its row is
    /// committed, whichever statement carried it.
    pub async fn insert_if_absent(&self, new: &NewNotification) -> Stored {
        async {
            let (answer, answered) = oneshot::channel();
            let pending = PendingInsert {
                new: new.clone(),
                answer,
            };
            if self.inserts.send(pending).await.is_err() {
                // The group task is gone (the runtime is shutting down).
                return insert_one(&self.pool, new).await;
            }
            match answered.await {
                Ok(stored) => stored,
                Err(_) => insert_one(&self.pool, new).await,
            }
        }
        .instrument(db_span("insert", "notifications"))
        .await
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

/// Stores one notification (a group of one, or a refused group's member).
/// No span of its own: the waiting caller's span covers it (the group task
/// runs outside any trace).
async fn insert_one(pool: &PgPool, new: &NewNotification) -> Stored {
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
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(notification_from_row).transpose()
}

/// Takes whatever inserts are waiting (up to [`GROUP_MAX`]) and stores them
/// with one statement; repeats until every repository handle is dropped.
///
/// The next group is sent when the last one committed (so, under load, the
/// stores that arrive meanwhile share the next commit), or after
/// [`GROUP_PATIENCE`] if it has not: a group stuck on a row lock or a slow
/// disk never holds the others up. At most [`GROUPS_IN_FLIGHT`] at once.
async fn group_inserts(pool: PgPool, mut waiting: mpsc::Receiver<PendingInsert>) {
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    let mut last: Option<oneshot::Receiver<()>> = None;
    loop {
        if let Some(last) = last.take() {
            let _ = tokio::time::timeout(GROUP_PATIENCE, last).await;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut group = Vec::with_capacity(GROUP_MAX);
        if waiting.recv_many(&mut group, GROUP_MAX).await == 0 {
            return;
        }
        let (done, finished) = oneshot::channel();
        last = Some(finished);
        let pool = pool.clone();
        tokio::spawn(async move {
            insert_group(&pool, group).await;
            drop(permit);
            let _ = done.send(());
        });
    }
}

/// Runs `store` unless every member of `group` gave up waiting first (its
/// delivery was dropped: the session broke or the process stops), as a
/// single insert would have been dropped with its caller: a statement stuck
/// on a row lock must not keep holding a pooled connection for nobody.
async fn unless_abandoned<T>(
    group: &mut [PendingInsert],
    store: impl Future<Output = T>,
) -> Option<T> {
    let abandoned = futures::future::join_all(group.iter_mut().map(|p| p.answer.closed()));
    tokio::select! {
        stored = store => Some(stored),
        _ = abandoned => None,
    }
}

async fn insert_group(pool: &PgPool, mut group: Vec<PendingInsert>) {
    if group.len() == 1 {
        let new = group[0].new.clone();
        if let Some(stored) = unless_abandoned(&mut group, insert_one(pool, &new)).await
            && let Some(one) = group.pop()
        {
            let _ = one.answer.send(stored);
        }
        return;
    }
    let ids: Vec<Uuid> = group.iter().map(|_| Uuid::now_v7()).collect();
    let event_ids: Vec<Uuid> = group.iter().map(|p| p.new.event_id).collect();
    let user_ids: Vec<Uuid> = group.iter().map(|p| p.new.user_id).collect();
    let order_ids: Vec<Uuid> = group.iter().map(|p| p.new.order_id).collect();
    let kinds: Vec<&'static str> = group.iter().map(|p| p.new.kind.as_str()).collect();
    let messages: Vec<String> = group.iter().map(|p| p.new.message.clone()).collect();
    let insert = async {
        // A group must not wait long on a row lock (another replica storing
        // a redelivered copy of one of its events): everything else in it
        // would wait too. Past GROUP_LOCK_TIMEOUT the statement is refused
        // cleanly (nothing of it stays behind) and the members are stored
        // one by one below, where only the contended one waits.
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            GROUP_LOCK_TIMEOUT.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO notifications (id, event_id, user_id, order_id, kind, message) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[]) \
             ON CONFLICT (event_id) DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(&ids)
        .bind(&event_ids)
        .bind(&user_ids)
        .bind(&order_ids)
        .bind(&kinds)
        .bind(&messages)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(rows)
    };
    let Some(inserted) = unless_abandoned(&mut group, insert).await else {
        return;
    };
    match inserted {
        Ok(rows) => {
            let mut created: HashMap<Uuid, Stored> = HashMap::with_capacity(rows.len());
            for row in &rows {
                let notification = notification_from_row(row);
                let event_id = match &notification {
                    Ok(n) => n.event_id,
                    Err(_) => match row.try_get("event_id") {
                        Ok(id) => id,
                        Err(_) => continue,
                    },
                };
                created.insert(event_id, notification.map(Some));
            }
            for pending in group {
                // The first of an event's copies gets the row; any other
                // copy in the same group (or one stored before) is a duplicate.
                let stored = created.remove(&pending.new.event_id).unwrap_or(Ok(None));
                let _ = pending.answer.send(stored);
            }
        }
        Err(err) if stockmesh_platform::db::is_connection_error(&err) => {
            // Nothing was stored: every member waits for the database.
            let reason = err.to_string();
            for pending in group {
                let _ = pending
                    .answer
                    .send(Err(NotificationError::Unavailable(sqlx::Error::Io(
                        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, reason.clone()),
                    ))));
            }
        }
        Err(err) => {
            // Refused (one member the database will not take), or waited
            // too long on a lock: nothing of the group was stored. Each
            // member on its own, all at once, so only the culprit fails or
            // waits.
            let lock_wait =
                matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"));
            if lock_wait {
                tracing::info!(
                    members = group.len(),
                    "group insert waited on a row lock; storing its notifications one by one"
                );
            } else {
                tracing::warn!(error = %stockmesh_platform::error::ErrorChain(&err), members = group.len(), "group insert refused; storing its notifications one by one");
            }
            futures::future::join_all(group.into_iter().map(|mut pending| async move {
                let new = pending.new.clone();
                let one = std::slice::from_mut(&mut pending);
                if let Some(stored) = unless_abandoned(one, insert_one(pool, &new)).await {
                    let _ = pending.answer.send(stored);
                }
            }))
            .await;
        }
    }
}
