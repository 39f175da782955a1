//! Everything that can go wrong in the notification service, and how
//! clients (and the consumer) see it.

use std::time::Duration;

use stockmesh_platform::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// An event whose content cannot become a notification (poison).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("notification not found")]
    NotFound,
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl NotificationError {
    /// Whether the database could not be reached at all: the consumer holds
    /// the event and waits for it, without spending a delivery attempt (an
    /// outage says nothing about the message).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether handling the same event again may succeed (the consumer
    /// requeues these within the delivery limit and dead-letters the rest
    /// at once).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Database(_))
    }
}

impl From<sqlx::Error> for NotificationError {
    fn from(err: sqlx::Error) -> Self {
        if stockmesh_platform::db::is_connection_error(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

impl From<NotificationError> for ApiError {
    fn from(err: NotificationError) -> Self {
        use NotificationError::*;
        match &err {
            InvalidEvent(_) => ApiError::validation(err.to_string()),
            NotFound => ApiError::not_found(err.to_string()),
            Unavailable(source) => {
                tracing::warn!(error = %stockmesh_platform::error::ErrorChain(source), "database unavailable");
                ApiError::unavailable("notification database unavailable", Duration::from_secs(1))
            }
            Database(source) => ApiError::internal(source),
        }
    }
}

impl axum::response::IntoResponse for NotificationError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}
