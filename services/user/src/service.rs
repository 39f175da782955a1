//! The user service's rules: who may see and change which account, how
//! logins are checked and limited, and the first administrator.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use stockmesh_platform::auth::{Caller, Role};
use uuid::Uuid;

use crate::backoff::FailureBackoff;
use crate::config::{AdminBootstrap, LoginLimits};
use crate::device::Devices;
use crate::domain::{self, User};
use crate::error::UserError;
use crate::password::Passwords;
use crate::rate_limit::RateLimiter;
use crate::repository::{UserChanges, UserRepository};
use crate::tokens::Issuer;

/// A successful login.
pub struct Session {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
    /// The device token for this browser and account (the device cookie).
    pub device_token: String,
}

/// Whose failure budget a login attempt is charged to.
#[derive(Clone, Copy)]
enum Charge {
    /// The account's: the client has not shown it logged in here before.
    Account(u64),
    /// The device's own: it presented this account's device cookie.
    Device(u64),
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
    passwords: Passwords,
    devices: Devices,
    login_per_client: Arc<RateLimiter<IpAddr>>,
    register_per_client: Arc<RateLimiter<IpAddr>>,
    /// Failed logins per account, from clients without its device cookie.
    account_failures: Arc<FailureBackoff>,
    /// Failed logins per device cookie.
    device_failures: Arc<FailureBackoff>,
}

impl UserService {
    pub async fn new(
        repository: UserRepository,
        issuer: Issuer,
        devices: Devices,
        passwords: Passwords,
        limits: LoginLimits,
    ) -> Result<Self, UserError> {
        let dummy_hash = passwords.hash(Uuid::new_v4().to_string()).await?;
        Ok(Self {
            repository,
            issuer,
            dummy_hash: Arc::new(dummy_hash),
            passwords,
            devices,
            login_per_client: Arc::new(RateLimiter::new(
                limits.window,
                limits.per_client,
                limits.max_keys,
            )),
            register_per_client: Arc::new(RateLimiter::new(
                limits.register_window,
                limits.register_per_client,
                limits.max_keys,
            )),
            account_failures: Arc::new(FailureBackoff::new(limits.backoff, limits.max_keys)),
            device_failures: Arc::new(FailureBackoff::new(limits.backoff, limits.max_keys)),
        })
    }

    /// How long the device cookie lives.
    pub fn device_ttl(&self) -> std::time::Duration {
        self.devices.ttl()
    }

    pub fn token_ttl(&self) -> std::time::Duration {
        self.issuer.ttl()
    }

    /// Creates an account. Rate-limited per client address (each
    /// registration costs an argon2 hash and a row).
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
        client: IpAddr,
    ) -> Result<User, UserError> {
        self.register_per_client
            .hit(client)
            .map_err(UserError::TooManyRegistrations)?;
        let email = domain::normalise_email(email)?;
        let name = domain::normalise_name(name)?;
        domain::check_password(password)?;
        let hash = self.passwords.hash(password.to_owned()).await?;
        let user = self
            .repository
            .insert(&email, &name, &hash, Role::User)
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(user)
    }

    /// Checks credentials. Unknown email, malformed email and wrong password
    /// all take one argon2 verification and give the same error; the
    /// guessing backoff is keyed by the normalised email whether or not the
    /// account exists, so it reveals nothing either. `device_token` is the
    /// device cookie the client sent, if any.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
        device_token: Option<&str>,
    ) -> Result<Session, UserError> {
        self.login_per_client
            .hit(client)
            .map_err(UserError::RateLimited)?;
        let user = match domain::normalise_email(email) {
            Ok(normalised) => self.repository.by_email(&normalised).await?,
            Err(_) => None,
        };
        let device = device_token
            .and_then(|token| self.devices.verify(token))
            .filter(|claims| user.as_ref().is_some_and(|u| u.id == claims.sub));
        let charge = self.charge(email, device.as_ref().map(|d| d.jti))?;
        let stored = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let matches = match self.passwords.verify(password.to_owned(), stored).await {
            Ok(matches) => matches,
            Err(err) => {
                // Never checked (busy): not a failed guess.
                self.forgive(charge);
                return Err(err);
            }
        };
        let Some(user) = user.filter(|_| matches) else {
            tracing::info!(
                known_device = matches!(charge, Charge::Device(_)),
                "login refused"
            );
            return Err(UserError::InvalidCredentials);
        };
        self.forgive(charge);
        let (token, expires_at) = self.issuer.issue(user.id, user.role)?;
        let device_token = self.devices.issue(user.id, device.map(|d| d.jti))?;
        tracing::info!(user_id = %user.id, "login");
        Ok(Session {
            token,
            expires_at,
            user,
            device_token,
        })
    }

    /// Charges the attempt to the device's own budget if the client holds
    /// this account's device cookie and that budget is not spent, else to
    /// the account's (which may answer 429 with the wait).
    fn charge(&self, email: &str, device: Option<Uuid>) -> Result<Charge, UserError> {
        if let Some(device) = device {
            let key = self.device_failures.key(device);
            if self.device_failures.begin(key).is_ok() {
                return Ok(Charge::Device(key));
            }
        }
        let key = self.account_failures.key(email.trim().to_lowercase());
        self.account_failures
            .begin(key)
            .map_err(UserError::RateLimited)?;
        Ok(Charge::Account(key))
    }

    fn forgive(&self, charge: Charge) {
        match charge {
            Charge::Account(key) => self.account_failures.forgive(key),
            Charge::Device(key) => self.device_failures.forgive(key),
        }
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
            changes.password_hash = Some(self.passwords.hash(password.clone()).await?);
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
        let hash = self.passwords.hash(admin.password.clone()).await?;
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
