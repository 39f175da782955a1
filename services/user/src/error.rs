//! Everything that can go wrong in the user service, and how clients see it.

use std::time::Duration;

use stockmesh_platform::{ApiError, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Unknown email or wrong password: deliberately indistinguishable.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("user not found")]
    NotFound,
    #[error("only an administrator can change roles")]
    RoleChangeForbidden,
    #[error("the last administrator cannot be removed or demoted")]
    LastAdmin,
    /// The access token is genuine but its session is gone: logged out,
    /// ended by a password or role change or by a reused refresh token,
    /// expired, or the account was deleted.
    #[error("the session has ended; log in again")]
    SessionEnded,
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    /// A spent refresh token came back: someone holds a copy.
    #[error("this refresh token was already used; the session has been ended, log in again")]
    RefreshTokenReused,
    /// Spent moments ago by a concurrent refresh of the same session.
    #[error("this refresh token was just replaced by a concurrent refresh; use the newest one")]
    RefreshTokenRotated,
    #[error("current_password is required to change your email or password")]
    CurrentPasswordRequired,
    #[error("current_password is incorrect")]
    CurrentPasswordIncorrect,
    #[error("too many wrong current passwords, retry later")]
    TooManyPasswordChecks(Duration),
    #[error("too many login attempts, retry later")]
    RateLimited(Duration),
    #[error("too many registrations from this address, retry later")]
    TooManyRegistrations(Duration),
    /// Every password-hashing slot is taken and the queue is full or the
    /// wait ran out: the client should come back, the server is fine.
    #[error("too many password checks in progress, retry later")]
    Busy(Duration),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for UserError {
    fn from(err: sqlx::Error) -> Self {
        if stockmesh_platform::db::is_connection_error(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

impl From<UserError> for ApiError {
    fn from(err: UserError) -> Self {
        use UserError::*;
        match &err {
            Invalid(_) => ApiError::validation(err.to_string()),
            EmailTaken => {
                ApiError::new(ErrorKind::Conflict, err.to_string()).with_code("email_taken")
            }
            InvalidCredentials => ApiError::new(ErrorKind::Unauthenticated, err.to_string())
                .with_code("invalid_credentials"),
            NotFound => ApiError::not_found(err.to_string()),
            RoleChangeForbidden => ApiError::new(ErrorKind::Forbidden, err.to_string()),
            LastAdmin => ApiError::new(ErrorKind::FailedPrecondition, err.to_string())
                .with_code("last_admin"),
            SessionEnded => ApiError::new(ErrorKind::Unauthenticated, err.to_string())
                .with_code("session_ended"),
            InvalidRefreshToken => ApiError::new(ErrorKind::Unauthenticated, err.to_string())
                .with_code("invalid_refresh_token"),
            RefreshTokenReused => ApiError::new(ErrorKind::Unauthenticated, err.to_string())
                .with_code("refresh_token_reused"),
            RefreshTokenRotated => ApiError::new(ErrorKind::Unauthenticated, err.to_string())
                .with_code("refresh_token_rotated"),
            CurrentPasswordRequired => {
                ApiError::validation(err.to_string()).with_code("current_password_required")
            }
            CurrentPasswordIncorrect => ApiError::new(ErrorKind::Forbidden, err.to_string())
                .with_code("current_password_incorrect"),
            RateLimited(after) | TooManyRegistrations(after) | TooManyPasswordChecks(after) => {
                ApiError::new(ErrorKind::RateLimited, err.to_string()).with_retry_after(*after)
            }
            Busy(after) => {
                ApiError::new(ErrorKind::Overloaded, err.to_string()).with_retry_after(*after)
            }
            Unavailable(source) => {
                tracing::warn!(error = %stockmesh_platform::error::ErrorChain(source), "database unavailable");
                ApiError::unavailable("user database unavailable", Duration::from_secs(1))
            }
            Database(source) => ApiError::internal(source),
            Internal(message) => {
                tracing::error!(%message, "internal error");
                ApiError::new(ErrorKind::Internal, "internal error")
            }
        }
    }
}

impl axum::response::IntoResponse for UserError {
    fn into_response(self) -> axum::response::Response {
        ApiError::from(self).into_response()
    }
}
