//! The deadline of the request being served, carried in a task-local so an
//! outgoing call can use what is left of it.
//!
//! Servers set it (HTTP: arrival + request timeout; gRPC: arrival + the
//! smaller of the caller's `grpc-timeout` and the server's own limit);
//! gRPC clients read it and send the remainder as their `grpc-timeout`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the current request's deadline.
pub fn scope<F: Future>(deadline: Instant, fut: F) -> impl Future<Output = F::Output> {
    DEADLINE.scope(deadline, fut)
}

/// Time left until the current request's deadline, if one is set.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (milliseconds, at least 1).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    format!("{}m", timeout.as_millis().clamp(1, 99_999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_round_trip() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(format_grpc_timeout(Duration::from_micros(10)), "1m");
        assert_eq!(format_grpc_timeout(Duration::from_millis(1500)), "1500m");
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_shrinks_inside_the_scope() {
        assert_eq!(remaining(), None);
        let deadline = Instant::now() + Duration::from_secs(2);
        scope(deadline, async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(remaining(), Some(Duration::from_millis(1500)));
        })
        .await;
    }
}
