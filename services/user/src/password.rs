//! Password hashing with argon2id (default parameters: 19 MiB, 2 passes),
//! off the async threads.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::error::UserError;

/// Hashes a password into a PHC string with a random salt.
pub async fn hash(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| UserError::Internal(format!("hashing failed: {e}")))
    })
    .await
    .map_err(|e| UserError::Internal(format!("hashing task failed: {e}")))?
}

/// Checks a password against a stored hash. Costs the same whatever the
/// outcome, so callers verify against a dummy hash for unknown users.
pub async fn verify(password: String, stored: String) -> Result<bool, UserError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), stored.as_str())
            .is_ok()
    })
    .await
    .map_err(|e| UserError::Internal(format!("verify task failed: {e}")))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let stored = super::hash("correct horse".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            super::verify("correct horse".into(), stored.clone())
                .await
                .unwrap()
        );
        assert!(!super::verify("wrong horse".into(), stored).await.unwrap());
    }
}
