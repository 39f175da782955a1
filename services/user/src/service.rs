//! The user service's rules: who may see and change which account, how
//! logins are checked and limited, how sessions start, refresh and end,
//! and the first administrator.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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
use crate::sessions::{Refreshed, SessionStore};
use crate::tokens::{AccessClaims, Issuer};

/// What a login or a refresh hands out.
pub struct Grant {
    /// The access token and when it expires.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The next refresh token, and when its session ends.
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub user: User,
    /// The device token for this browser and account (the device cookie);
    /// set on login only.
    pub device_token: Option<String>,
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
    /// Proof that the caller knows the account's password; required when
    /// the owner changes the email or the password.
    pub current_password: Option<String>,
}

/// The caller of a user-service route: a genuine access token whose
/// session is live, with the account's current role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaller {
    pub caller: Caller,
    pub session: Uuid,
}

#[derive(Clone)]
pub struct UserService {
    repository: UserRepository,
    sessions: SessionStore,
    issuer: Issuer,
    session_ttl: Duration,
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
    /// Wrong current passwords per session: a stolen session cannot be
    /// used to guess the password faster than a login could, and it slows
    /// only that session, not the owner's others.
    reauth_failures: Arc<FailureBackoff>,
}

impl UserService {
    pub async fn new(
        repository: UserRepository,
        sessions: SessionStore,
        issuer: Issuer,
        session_ttl: Duration,
        devices: Devices,
        passwords: Passwords,
        limits: LoginLimits,
    ) -> Result<Self, UserError> {
        let dummy_hash = passwords.hash(Uuid::new_v4().to_string()).await?;
        Ok(Self {
            repository,
            sessions,
            issuer,
            session_ttl,
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
            reauth_failures: Arc::new(FailureBackoff::new(limits.backoff, limits.max_keys)),
        })
    }

    /// How long the device cookie lives.
    pub fn device_ttl(&self) -> std::time::Duration {
        self.devices.ttl()
    }

    pub fn token_ttl(&self) -> std::time::Duration {
        self.issuer.ttl()
    }

    /// The caller behind a genuine access token, if its session is live:
    /// the role is the account's current one, not the token's. Any ended
    /// session is 401 `session_ended`, whatever ended it.
    pub async fn authenticate(&self, claims: &AccessClaims) -> Result<SessionCaller, UserError> {
        let role = self
            .sessions
            .live_role(claims.sid, claims.sub)
            .await?
            .ok_or(UserError::SessionEnded)?;
        Ok(SessionCaller {
            caller: Caller {
                id: claims.sub,
                role,
            },
            session: claims.sid,
        })
    }

    /// Trades a refresh token for a new access token and a new refresh
    /// token (rotation; see `sessions.rs` for reuse detection).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Grant, UserError> {
        match self.sessions.refresh(refresh_token).await? {
            Refreshed::Rotated {
                session,
                user,
                refresh_token,
            } => {
                let (token, expires_at) =
                    self.issuer
                        .issue(user.id, user.role, session.id, session.expires_at)?;
                Ok(Grant {
                    token,
                    expires_at,
                    refresh_token,
                    refresh_expires_at: session.expires_at,
                    user,
                    device_token: None,
                })
            }
            Refreshed::Unknown | Refreshed::Expired => Err(UserError::InvalidRefreshToken),
            Refreshed::Reused => Err(UserError::RefreshTokenReused),
            Refreshed::JustRotated => Err(UserError::RefreshTokenRotated),
        }
    }

    /// Ends the session named by a genuine access token and/or the one a
    /// refresh token belongs to. Ending nothing is not an error: after a
    /// logout the client holds no session, whatever it sent.
    pub async fn logout(
        &self,
        access: Option<&AccessClaims>,
        refresh_token: Option<&str>,
    ) -> Result<(), UserError> {
        if let Some(claims) = access
            && self.sessions.end(claims.sid, claims.sub).await?
        {
            tracing::info!(user_id = %claims.sub, session_id = %claims.sid, "logout");
        }
        if let Some(token) = refresh_token
            && self.sessions.end_by_refresh_token(token).await?
        {
            tracing::info!("logout by refresh token");
        }
        Ok(())
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
    ) -> Result<Grant, UserError> {
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
        let (session, refresh_token) = self.sessions.create(user.id, self.session_ttl).await?;
        let (token, expires_at) =
            self.issuer
                .issue(user.id, user.role, session.id, session.expires_at)?;
        let device_token = self.devices.issue(user.id, device.map(|d| d.jti))?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "login");
        Ok(Grant {
            token,
            expires_at,
            refresh_token,
            refresh_expires_at: session.expires_at,
            user,
            device_token: Some(device_token),
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

    /// Changes an account. The owner changing their own email or password
    /// must give the current password (a borrowed or stolen session is not
    /// enough to take the account over); an admin changing another
    /// account's does not (recovery: the admin cannot know it, and could
    /// grant itself the same reach by changing roles anyway). A new
    /// password or role ends every session of the account.
    pub async fn update(
        &self,
        caller: SessionCaller,
        id: Uuid,
        update: UserUpdate,
    ) -> Result<User, UserError> {
        let SessionCaller { caller, session } = caller;
        if !caller.may_access(id) {
            return Err(UserError::NotFound);
        }
        if update.role.is_some() && !caller.is_admin() {
            return Err(UserError::RoleChangeForbidden);
        }
        // Cheap checks first: a malformed value is answered before any
        // password is checked or hashed.
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
        }
        let credentials_change = update.email.is_some() || update.password.is_some();
        if credentials_change && caller.id == id {
            self.check_current_password(id, session, update.current_password.as_deref())
                .await?;
        }
        if let Some(password) = &update.password {
            changes.password_hash = Some(self.passwords.hash(password.clone()).await?);
        }
        let (user, sessions_ended) = self.repository.update(id, &changes).await?;
        tracing::info!(user_id = %id, by = %caller.id, sessions_ended, "user updated");
        Ok(user)
    }

    /// Verifies `current` against the account's password. Wrong answers
    /// count against the session's own guessing backoff (429 once spent).
    async fn check_current_password(
        &self,
        id: Uuid,
        session: Uuid,
        current: Option<&str>,
    ) -> Result<(), UserError> {
        let current = current.ok_or(UserError::CurrentPasswordRequired)?;
        let key = self.reauth_failures.key(session);
        self.reauth_failures
            .begin(key)
            .map_err(UserError::TooManyPasswordChecks)?;
        let user = self.repository.by_id(id).await;
        let user = match user {
            Ok(Some(user)) => user,
            Ok(None) => {
                self.reauth_failures.forgive(key);
                return Err(UserError::NotFound);
            }
            Err(err) => {
                self.reauth_failures.forgive(key);
                return Err(err);
            }
        };
        match self
            .passwords
            .verify(current.to_owned(), user.password_hash)
            .await
        {
            Ok(true) => {
                self.reauth_failures.forgive(key);
                Ok(())
            }
            Ok(false) => {
                tracing::info!(user_id = %id, "credential change refused: wrong current password");
                Err(UserError::CurrentPasswordIncorrect)
            }
            Err(err) => {
                // Never checked (busy): not a failed guess.
                self.reauth_failures.forgive(key);
                Err(err)
            }
        }
    }

    /// Deletes an account; its sessions end with it.
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
