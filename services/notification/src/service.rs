//! The notification rules: one notification per event, owned by the
//! event's user, visible and markable only by that user.

use stockmesh_platform::auth::Caller;
use stockmesh_platform::events::OrderEvent;
use uuid::Uuid;

use crate::domain::{NewNotification, Notification};
use crate::error::NotificationError;
use crate::repository::NotificationRepository;

/// What storing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Created(Notification),
    /// The event was stored before (a redelivery); nothing changed.
    Duplicate,
}

#[derive(Clone)]
pub struct NotificationService {
    repository: NotificationRepository,
}

impl NotificationService {
    pub fn new(repository: NotificationRepository) -> Self {
        Self { repository }
    }

    /// Stores the notification for `event`, idempotently by event id.
    pub async fn record(&self, event: &OrderEvent) -> Result<Recorded, NotificationError> {
        let new = NewNotification::from_event(event)?;
        match self.repository.insert_if_absent(&new).await? {
            Some(notification) => {
                tracing::info!(
                    event_id = %event.id,
                    notification_id = %notification.id,
                    user_id = %notification.user_id,
                    order_id = %notification.order_id,
                    kind = notification.kind.as_str(),
                    "notification stored"
                );
                Ok(Recorded::Created(notification))
            }
            None => {
                tracing::info!(event_id = %event.id, "event already stored, nothing to do");
                Ok(Recorded::Duplicate)
            }
        }
    }

    /// The caller's own notifications, newest first.
    pub async fn list(
        &self,
        caller: Caller,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Notification>, i64), NotificationError> {
        self.repository
            .list_for_user(caller.id, limit, offset)
            .await
    }

    /// How many of the caller's notifications are unread.
    pub async fn unread(&self, caller: Caller) -> Result<i64, NotificationError> {
        self.repository.unread_count(caller.id).await
    }

    /// What a reconnecting stream of the caller missed since notification
    /// `after` (at most `limit`, oldest first).
    pub async fn missed_since(
        &self,
        caller: Caller,
        after: Uuid,
        limit: i64,
    ) -> Result<Vec<Notification>, NotificationError> {
        self.repository.stored_after(caller.id, after, limit).await
    }

    /// Marks one of the caller's notifications read; someone else's is
    /// "not found" (its existence is not revealed). Repeating it keeps the
    /// first `read_at`.
    pub async fn mark_read(
        &self,
        caller: Caller,
        id: Uuid,
    ) -> Result<Notification, NotificationError> {
        self.repository
            .mark_read(id, caller.id)
            .await?
            .ok_or(NotificationError::NotFound)
    }
}
