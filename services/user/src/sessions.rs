//! Server-side sessions and their rotating refresh tokens.
//!
//! A login creates a session row; every access token the service signs
//! names it (`sid`). The user service checks, on each authenticated request
//! it serves, that the session still exists and has not expired, and takes
//! the caller's role from the account, not from the token: ending a session
//! (deleting its row) therefore takes effect here at once. Other services
//! verify tokens offline and only learn of it when the token expires, which
//! is why access tokens are short-lived.
//!
//! A session lives at most `SESSION_TTL_SECONDS` from login. Within it the
//! client trades its refresh token for a new access token and a new refresh
//! token; the old one is spent. Refresh tokens are 244 random bits, stored
//! only as SHA-256 (a stolen table yields no usable token; a hash, not
//! argon2, because the secret is random, not a password). A spent token
//! presented again means two parties hold copies, one of them a thief, and
//! nobody can tell which: the whole session ends (OAuth 2.0 Security BCP,
//! "refresh token rotation"). One exception keeps browsers with several
//! tabs from logging themselves out: the token spent most recently, within
//! [`REUSE_GRACE`], whose replacement is still unused, is refused without
//! ending anything, since two tabs refreshing at once look exactly like
//! that; the refused tab gets nothing and uses the newer cookie.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use stockmesh_platform::auth::Role;
use stockmesh_platform::db::span as db_span;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::User;
use crate::error::UserError;
use crate::repository::{COLUMNS, user_from_row};

/// How long a just-spent refresh token is answered "rotated" rather than
/// treated as stolen (two tabs refreshing at the same moment).
pub const REUSE_GRACE: Duration = Duration::from_secs(10);

/// Expired sessions removed per login, so the table does not keep sessions
/// nobody will use again, at a bounded cost per call.
const EXPIRED_SWEEP_BATCH: i64 = 100;

/// Longest refresh token accepted for hashing; genuine ones are 64 chars.
const MAX_REFRESH_TOKEN_LEN: usize = 256;

/// A live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// A refresh token as handed to the client, with what is stored of it.
struct NewRefreshToken {
    token: String,
    hash: [u8; 32],
}

impl NewRefreshToken {
    fn generate() -> Self {
        // Two v4 UUIDs: 244 bits from the OS random source (getrandom).
        let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let hash = hash(&token);
        Self { token, hash }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Refreshed {
    /// Rotated: the session, its account as it is now, the new token.
    Rotated {
        session: SessionInfo,
        user: User,
        refresh_token: String,
    },
    /// No such token (never issued, or its session has ended).
    Unknown,
    /// The session had reached its end; it is gone now.
    Expired,
    /// A spent token: the session has been ended.
    Reused,
    /// Spent moments ago by a concurrent refresh; nothing changed.
    JustRotated,
}

#[derive(Clone)]
pub struct SessionStore {
    pool: PgPool,
}

impl SessionStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Starts a session for `user_id` lasting `ttl`; returns it and its
    /// first refresh token.
    pub async fn create(
        &self,
        user_id: Uuid,
        ttl: Duration,
    ) -> Result<(SessionInfo, String), UserError> {
        self.sweep_expired().await;
        let id = Uuid::now_v7();
        let refresh = NewRefreshToken::generate();
        let ttl_secs = ttl.as_secs_f64();
        let mut tx = self.pool.begin().await?;
        let expires_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO sessions (id, user_id, expires_at) \
             VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at",
        )
        .bind(id)
        .bind(user_id)
        .bind(ttl_secs)
        .fetch_one(&mut *tx)
        .instrument(db_span("insert", "sessions"))
        .await?;
        sqlx::query("INSERT INTO refresh_tokens (hash, session_id) VALUES ($1, $2)")
            .bind(&refresh.hash[..])
            .bind(id)
            .execute(&mut *tx)
            .instrument(db_span("insert", "refresh_tokens"))
            .await?;
        tx.commit().await?;
        Ok((SessionInfo { id, expires_at }, refresh.token))
    }

    /// The role of `user_id` if session `id` is theirs and live; `None`
    /// when it has ended, expired or never existed.
    pub async fn live_role(&self, id: Uuid, user_id: Uuid) -> Result<Option<Role>, UserError> {
        let role: Option<String> = sqlx::query_scalar(
            "SELECT u.role FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.user_id = $2 AND s.expires_at > now()",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "sessions"))
        .await?;
        role.map(|role| {
            Role::parse(&role).ok_or_else(|| UserError::Internal(format!("unknown role {role:?}")))
        })
        .transpose()
    }

    /// Trades a refresh token for a new one (see the module notes).
    pub async fn refresh(&self, token: &str) -> Result<Refreshed, UserError> {
        if token.is_empty() || token.len() > MAX_REFRESH_TOKEN_LEN {
            return Ok(Refreshed::Unknown);
        }
        let presented = hash(token);
        let mut tx = self.pool.begin().await?;
        // Locks the token and its session: concurrent refreshes of one
        // session queue here, and each sees what the previous one did.
        let row = sqlx::query(
            "SELECT s.id, s.user_id, s.expires_at, s.expires_at <= now() AS expired, \
                    r.used_at IS NOT NULL AS used, r.replaced_by, \
                    r.used_at > now() - make_interval(secs => $2) AS recently_used \
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
             WHERE r.hash = $1 FOR UPDATE OF r, s",
        )
        .bind(&presented[..])
        .bind(REUSE_GRACE.as_secs_f64())
        .fetch_optional(&mut *tx)
        .instrument(db_span("select", "refresh_tokens"))
        .await?;
        let Some(row) = row else {
            return Ok(Refreshed::Unknown);
        };
        let session = SessionInfo {
            id: row.try_get("id")?,
            expires_at: row.try_get("expires_at")?,
        };
        let user_id: Uuid = row.try_get("user_id")?;
        if row.try_get::<bool, _>("expired")? {
            Self::delete_in(&mut tx, session.id).await?;
            tx.commit().await?;
            return Ok(Refreshed::Expired);
        }
        if row.try_get::<bool, _>("used")? {
            let replaced_by: Option<Vec<u8>> = row.try_get("replaced_by")?;
            let recently_used = row
                .try_get::<Option<bool>, _>("recently_used")?
                .unwrap_or(false);
            if recently_used && self.is_current(&mut tx, replaced_by.as_deref()).await? {
                return Ok(Refreshed::JustRotated);
            }
            Self::delete_in(&mut tx, session.id).await?;
            tx.commit().await?;
            tracing::warn!(session_id = %session.id, %user_id,
                "a spent refresh token was presented again: session ended");
            return Ok(Refreshed::Reused);
        }
        let next = NewRefreshToken::generate();
        sqlx::query("UPDATE refresh_tokens SET used_at = now(), replaced_by = $2 WHERE hash = $1")
            .bind(&presented[..])
            .bind(&next.hash[..])
            .execute(&mut *tx)
            .instrument(db_span("update", "refresh_tokens"))
            .await?;
        sqlx::query("INSERT INTO refresh_tokens (hash, session_id) VALUES ($1, $2)")
            .bind(&next.hash[..])
            .bind(session.id)
            .execute(&mut *tx)
            .instrument(db_span("insert", "refresh_tokens"))
            .await?;
        let user = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(user_id)
        .fetch_one(&mut *tx)
        .instrument(db_span("select", "users"))
        .await?;
        let user = user_from_row(&user)?;
        tx.commit().await?;
        Ok(Refreshed::Rotated {
            session,
            user,
            refresh_token: next.token,
        })
    }

    /// Whether `hash` is a session's current (unspent) refresh token.
    async fn is_current(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        hash: Option<&[u8]>,
    ) -> Result<bool, UserError> {
        let Some(hash) = hash else {
            return Ok(false);
        };
        let current: Option<bool> =
            sqlx::query_scalar("SELECT used_at IS NULL FROM refresh_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&mut **tx)
                .instrument(db_span("select", "refresh_tokens"))
                .await?;
        Ok(current.unwrap_or(false))
    }

    /// Ends session `id` if it belongs to `user_id`; true if it existed.
    pub async fn end(&self, id: Uuid, user_id: Uuid) -> Result<bool, UserError> {
        let done = sqlx::query("DELETE FROM sessions WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .instrument(db_span("delete", "sessions"))
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends the session a refresh token (spent or not) belongs to; true if
    /// there was one. Logging out with any token of a session ends it.
    pub async fn end_by_refresh_token(&self, token: &str) -> Result<bool, UserError> {
        if token.is_empty() || token.len() > MAX_REFRESH_TOKEN_LEN {
            return Ok(false);
        }
        let done = sqlx::query(
            "DELETE FROM sessions WHERE id = (SELECT session_id FROM refresh_tokens WHERE hash = $1)",
        )
        .bind(&hash(token)[..])
        .execute(&self.pool)
        .instrument(db_span("delete", "sessions"))
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: Uuid,
    ) -> Result<(), UserError> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .instrument(db_span("delete", "sessions"))
            .await?;
        Ok(())
    }

    /// Removes a bounded batch of expired sessions. Best effort: a failure
    /// is logged and the login goes on (expired sessions are refused
    /// whether or not their rows are gone).
    async fn sweep_expired(&self) {
        let swept = sqlx::query(
            "DELETE FROM sessions WHERE id IN \
             (SELECT id FROM sessions WHERE expires_at <= now() LIMIT $1)",
        )
        .bind(EXPIRED_SWEEP_BATCH)
        .execute(&self.pool)
        .instrument(db_span("delete", "sessions"))
        .await;
        if let Err(err) = swept {
            tracing::warn!(error = %err, "sweeping expired sessions failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_stored_only_hashed() {
        let a = NewRefreshToken::generate();
        let b = NewRefreshToken::generate();
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token, b.token);
        assert_eq!(a.hash, hash(&a.token));
        assert_ne!(&a.hash[..], a.token.as_bytes());
    }
}
