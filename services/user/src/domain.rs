//! Users and the rules for their fields.

use chrono::{DateTime, Utc};
use serde::Serialize;
use stockmesh_platform::auth::Role;
use uuid::Uuid;

use crate::error::UserError;

/// A stored account (the password hash never leaves the service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What clients see of a user.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            role: user.role,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;

/// Trims and lower-cases an email and checks its shape.
pub fn normalise_email(raw: &str) -> Result<String, UserError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && local.len() <= 64
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(UserError::Invalid(
            "email must be a valid address like name@example.com",
        ))
    }
}

pub fn check_password(password: &str) -> Result<(), UserError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD {
        return Err(UserError::Invalid(
            "password must have at least 8 characters",
        ));
    }
    if length > MAX_PASSWORD {
        return Err(UserError::Invalid(
            "password must have at most 128 characters",
        ));
    }
    if password.trim().is_empty() {
        return Err(UserError::Invalid("password must not be only whitespace"));
    }
    Ok(())
}

pub fn normalise_name(raw: &str) -> Result<String, UserError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(|c| c.is_control()) {
        return Err(UserError::Invalid(
            "name must have 1 to 100 printable characters",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalise_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "ada@.com",
            "ada@example..com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn password_and_name_rules() {
        assert!(check_password("short").is_err());
        assert!(check_password("        ").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
        assert!(check_password("correct horse").is_ok());
        assert_eq!(normalise_name("  Ada ").unwrap(), "Ada");
        assert!(normalise_name("   ").is_err());
    }
}
