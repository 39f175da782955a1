//! One error shape for every service and transport.
//!
//! A service's own error type converts into [`ApiError`], which carries a
//! [`ErrorKind`] (deciding the HTTP status and the gRPC code, in one table),
//! a stable machine-readable `code` and a message that is safe to show a
//! client. Internal causes are logged, never sent: a client never sees a raw
//! database or gRPC message.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (bad JSON, bad id syntax): 400 / INVALID_ARGUMENT.
    BadRequest,
    /// Well-formed but invalid values: 422 / INVALID_ARGUMENT.
    Validation,
    /// Body over the size limit: 413 / INVALID_ARGUMENT.
    PayloadTooLarge,
    /// Missing or invalid credentials: 401 / UNAUTHENTICATED.
    Unauthenticated,
    /// Authenticated but not allowed: 403 / PERMISSION_DENIED.
    Forbidden,
    /// 404 / NOT_FOUND.
    NotFound,
    /// Duplicate (email, name, key reuse): 409 / ALREADY_EXISTS.
    Conflict,
    /// The state does not allow it (e.g. not enough stock): 409 / FAILED_PRECONDITION.
    FailedPrecondition,
    /// Too many requests: 429 / RESOURCE_EXHAUSTED.
    RateLimited,
    /// The server sheds load: 503 / RESOURCE_EXHAUSTED.
    Overloaded,
    /// A dependency is down or its breaker is open: 503 / UNAVAILABLE.
    Unavailable,
    /// A deadline passed: 504 / DEADLINE_EXCEEDED.
    Timeout,
    /// A bug or an unexpected failure: 500 / INTERNAL.
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict | Self::FailedPrecondition => StatusCode::CONFLICT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadRequest | Self::Validation | Self::PayloadTooLarge => {
                tonic::Code::InvalidArgument
            }
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Forbidden => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::Conflict => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::RateLimited | Self::Overloaded => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Timeout => tonic::Code::DeadlineExceeded,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// Default machine-readable code for this kind.
    pub fn default_code(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Validation => "validation_failed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::FailedPrecondition => "failed_precondition",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }
}

/// An error ready to be sent to a client over HTTP or gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (HTTP) or `retry-after` metadata (gRPC).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: kind.default_code(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(ErrorKind::Unavailable, message).with_retry_after(retry_after)
    }

    /// An unexpected failure: the cause is logged here, the client gets a
    /// generic message.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "internal error");
        Self::new(ErrorKind::Internal, "internal error")
    }

    /// The JSON body `{"error": {"code", "message"}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The error document every HTTP service returns.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a message for people.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// e.g. `validation_failed`, `not_found`, `insufficient_stock`.
    pub code: String,
    pub message: String,
}

fn retry_after_secs(after: Duration) -> u64 {
    after.as_secs_f64().ceil().max(1.0) as u64
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.kind.http_status(), Json(self.body())).into_response();
        if let Some(after) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs(after).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let mut status = tonic::Status::new(err.kind.grpc_code(), err.message);
        if let Some(after) = err.retry_after
            && let Ok(value) = retry_after_secs(after).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        if let Ok(value) = err.code.parse() {
            status.metadata_mut().insert("error-code", value);
        }
        status
    }
}

/// Formats an error with its whole `source()` chain, for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_response_has_status_body_and_retry_after() {
        let err = ApiError::unavailable("inventory is unavailable", Duration::from_millis(1500));
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.error.code, "unavailable");
        assert_eq!(body.error.message, "inventory is unavailable");
    }

    #[test]
    fn grpc_status_uses_the_same_table() {
        let status: tonic::Status = ApiError::new(ErrorKind::FailedPrecondition, "only 3 left")
            .with_code("insufficient_stock")
            .into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "only 3 left");
        assert_eq!(
            status.metadata().get("error-code").unwrap(),
            "insufficient_stock"
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let cause = std::io::Error::other("relation \"stock\" does not exist");
        let err = ApiError::internal(&cause);
        assert_eq!(err.message, "internal error");
        let status: tonic::Status = err.into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("relation"));
    }
}
