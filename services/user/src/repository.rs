//! PostgreSQL storage of accounts (sessions: `sessions.rs`).

use sqlx::{PgPool, Row};
use stockmesh_platform::auth::Role;
use stockmesh_platform::db::span as db_span;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::User;
use crate::error::UserError;

#[derive(Clone)]
pub struct UserRepository {
    pool: PgPool,
}

pub(crate) const COLUMNS: &str = "id, email, name, password_hash, role, created_at, updated_at";

pub(crate) fn user_from_row(row: &sqlx::postgres::PgRow) -> Result<User, UserError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role).ok_or(UserError::Internal(format!("unknown role {role:?}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Fields to change; `None` keeps the current value.
#[derive(Debug, Default, Clone)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
}

impl UserRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn insert(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<User, UserError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO users (id, email, name, password_hash, role) VALUES ($1, $2, $3, $4, $5) \
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(email)
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .fetch_one(&self.pool)
        .instrument(db_span("insert", "users"))
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                UserError::EmailTaken
            } else {
                e.into()
            }
        })?;
        user_from_row(&row)
    }

    /// Inserts unless the email exists; true when a row was created.
    pub async fn insert_if_absent(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<bool, UserError> {
        let done = sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(email)
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .execute(&self.pool)
        .instrument(db_span("insert", "users"))
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn by_email(&self, email: &str) -> Result<Option<User>, UserError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users WHERE email = $1"
        )))
        .bind(email)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "users"))
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn by_id(&self, id: Uuid) -> Result<Option<User>, UserError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "users"))
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn list(&self, limit: i64, offset: i64) -> Result<(Vec<User>, i64), UserError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2"
        )))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "users"))
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.pool)
            .instrument(db_span("select", "users"))
            .await?;
        let users = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok((users, total))
    }

    /// Applies `changes`; refuses to leave the system without an admin.
    /// A new password or a different role ends every session of the
    /// account in the same transaction (the tokens of those sessions speak
    /// for a password that is no longer the key, or name a role the
    /// account no longer has); returns the account and whether it did.
    pub async fn update(&self, id: Uuid, changes: &UserChanges) -> Result<(User, bool), UserError> {
        let mut tx = self.pool.begin().await?;
        if changes.role == Some(Role::User) {
            Self::guard_last_admin(&mut tx, id).await?;
        }
        // Locks the row, so the role compared below is the one replaced.
        let current_role: Option<String> =
            sqlx::query_scalar("SELECT role FROM users WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .instrument(db_span("select", "users"))
                .await?;
        let Some(current_role) = current_role else {
            return Err(UserError::NotFound);
        };
        let end_sessions = changes.password_hash.is_some()
            || changes
                .role
                .is_some_and(|role| role.as_str() != current_role);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET email = COALESCE($2, email), name = COALESCE($3, name), \
             password_hash = COALESCE($4, password_hash), role = COALESCE($5, role), \
             updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(changes.email.as_deref())
        .bind(changes.name.as_deref())
        .bind(changes.password_hash.as_deref())
        .bind(changes.role.map(Role::as_str))
        .fetch_optional(&mut *tx)
        .instrument(db_span("update", "users"))
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                UserError::EmailTaken
            } else {
                e.into()
            }
        })?;
        let user = row
            .as_ref()
            .map(user_from_row)
            .transpose()?
            .ok_or(UserError::NotFound)?;
        if end_sessions {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .instrument(db_span("delete", "sessions"))
                .await?;
        }
        tx.commit().await?;
        Ok((user, end_sessions))
    }

    /// Deletes the account; its sessions go with it (`ON DELETE CASCADE`),
    /// so its tokens stop working in this service at once.
    pub async fn delete(&self, id: Uuid) -> Result<(), UserError> {
        let mut tx = self.pool.begin().await?;
        Self::guard_last_admin(&mut tx, id).await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .instrument(db_span("delete", "users"))
            .await?;
        if done.rows_affected() == 0 {
            return Err(UserError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fails with `LastAdmin` when `id` is the only admin. Locks the admin
    /// rows so two concurrent demotions cannot both pass.
    async fn guard_last_admin(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: Uuid,
    ) -> Result<(), UserError> {
        let admins: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin' FOR UPDATE")
                .fetch_all(&mut **tx)
                .instrument(db_span("update", "users"))
                .await?;
        if admins == [id] {
            return Err(UserError::LastAdmin);
        }
        Ok(())
    }
}
