//! The user service's rules: who may see and change which account, how
//! logins are checked and limited, and the first administrator.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use stockmesh_platform::auth::{Caller, Role};
use uuid::Uuid;

use crate::config::{AdminBootstrap, LoginLimits};
use crate::domain::{self, User};
use crate::error::UserError;
use crate::password;
use crate::rate_limit::RateLimiter;
use crate::repository::{UserChanges, UserRepository};
use crate::tokens::Issuer;

/// A successful login.
pub struct Session {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// Requested changes to an account, as received.
#[derive(Debug, Default, Clone)]
pub struct UserUpdate {
    pub email: Option<String>,
    pub name: Option<String>,
    pub password: Option<String>,
    pub role: Option<Role>,
}

#[derive(Clone)]
pub struct UserService {
    repository: UserRepository,
    issuer: Issuer,
    /// A real argon2id hash of a random password: unknown emails are checked
    /// against it so they cost exactly what a wrong password costs.
    dummy_hash: Arc<String>,
    per_client: Arc<RateLimiter>,
    per_account: Arc<RateLimiter>,
}

impl UserService {
    pub async fn new(
        repository: UserRepository,
        issuer: Issuer,
        limits: LoginLimits,
    ) -> Result<Self, UserError> {
        let dummy_hash = password::hash(Uuid::new_v4().to_string()).await?;
        Ok(Self {
            repository,
            issuer,
            dummy_hash: Arc::new(dummy_hash),
            per_client: Arc::new(RateLimiter::new(limits.window, limits.per_client)),
            per_account: Arc::new(RateLimiter::new(limits.window, limits.per_account)),
        })
    }

    pub fn token_ttl(&self) -> std::time::Duration {
        self.issuer.ttl()
    }

    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
    ) -> Result<User, UserError> {
        let email = domain::normalise_email(email)?;
        let name = domain::normalise_name(name)?;
        domain::check_password(password)?;
        let hash = password::hash(password.to_owned()).await?;
        let user = self
            .repository
            .insert(&email, &name, &hash, Role::User)
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(user)
    }

    /// Checks credentials. Unknown email, malformed email and wrong password
    /// all take one argon2 verification and give the same error.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: &str,
    ) -> Result<Session, UserError> {
        let account_key = email.trim().to_lowercase();
        self.per_client
            .hit(client)
            .map_err(UserError::RateLimited)?;
        self.per_account
            .hit(&account_key)
            .map_err(UserError::RateLimited)?;
        let user = match domain::normalise_email(email) {
            Ok(normalised) => self.repository.by_email(&normalised).await?,
            Err(_) => None,
        };
        let stored = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let matches = password::verify(password.to_owned(), stored).await?;
        let Some(user) = user.filter(|_| matches) else {
            tracing::info!("login refused");
            return Err(UserError::InvalidCredentials);
        };
        let (token, expires_at) = self.issuer.issue(user.id, user.role)?;
        tracing::info!(user_id = %user.id, "login");
        Ok(Session {
            token,
            expires_at,
            user,
        })
    }

    /// One account, for itself or an admin; others see 404 (no probing).
    pub async fn get(&self, caller: Caller, id: Uuid) -> Result<User, UserError> {
        if !caller.may_access(id) {
            return Err(UserError::NotFound);
        }
        self.repository.by_id(id).await?.ok_or(UserError::NotFound)
    }

    pub async fn list(&self, limit: i64, offset: i64) -> Result<(Vec<User>, i64), UserError> {
        self.repository.list(limit, offset).await
    }

    pub async fn update(
        &self,
        caller: Caller,
        id: Uuid,
        update: UserUpdate,
    ) -> Result<User, UserError> {
        if !caller.may_access(id) {
            return Err(UserError::NotFound);
        }
        if update.role.is_some() && !caller.is_admin() {
            return Err(UserError::RoleChangeForbidden);
        }
        let mut changes = UserChanges {
            role: update.role,
            ..Default::default()
        };
        if let Some(email) = &update.email {
            changes.email = Some(domain::normalise_email(email)?);
        }
        if let Some(name) = &update.name {
            changes.name = Some(domain::normalise_name(name)?);
        }
        if let Some(password) = &update.password {
            domain::check_password(password)?;
            changes.password_hash = Some(password::hash(password.clone()).await?);
        }
        let user = self.repository.update(id, &changes).await?;
        tracing::info!(user_id = %id, by = %caller.id, "user updated");
        Ok(user)
    }

    pub async fn delete(&self, caller: Caller, id: Uuid) -> Result<(), UserError> {
        if !caller.may_access(id) {
            return Err(UserError::NotFound);
        }
        self.repository.delete(id).await?;
        tracing::info!(user_id = %id, by = %caller.id, "user deleted");
        Ok(())
    }

    /// Creates the configured first admin if no account has that email.
    pub async fn bootstrap_admin(&self, admin: &AdminBootstrap) -> Result<(), UserError> {
        let email = domain::normalise_email(&admin.email)?;
        domain::check_password(&admin.password)?;
        if self.repository.by_email(&email).await?.is_some() {
            return Ok(());
        }
        let hash = password::hash(admin.password.clone()).await?;
        if self
            .repository
            .insert_if_absent(&email, "Administrator", &hash, Role::Admin)
            .await?
        {
            tracing::info!(%email, "first administrator created");
        }
        Ok(())
    }
}
