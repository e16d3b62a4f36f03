//! Console users, their passwords and API tokens (migration 0013).
//!
//! Passwords are kept as argon2id hashes. A failed sign-in is counted in
//! PostgreSQL, so the count holds whichever replica the next attempt
//! reaches, and is taken before the password is checked, so parallel
//! guesses are counted too; past [`FREE_ATTEMPTS`] failures in a row each
//! one locks the user out for twice as long as the last, up to
//! [`MAX_LOCKOUT_SECS`], and while locked even the right password is
//! refused without being checked.
//! Session and API tokens are 256 random bits; only their SHA-256 digests
//! are stored.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crmsync_store::admin_audit::{self, Actor, NewEntry};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Failed sign-ins in a row allowed before the lockouts start.
pub const FREE_ATTEMPTS: i32 = 5;
/// The first lockout; each further failure doubles it.
pub const FIRST_LOCKOUT_SECS: i64 = 30;
/// The longest lockout.
pub const MAX_LOCKOUT_SECS: i64 = 15 * 60;
/// The shortest password `add-user` takes.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// What API tokens start with, so that a leaked one is recognised (by
/// secret scanners, and by people) for what it is.
pub const TOKEN_PREFIX: &str = "crmsync_";

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees everything and changes settings.
    Admin,
    /// Sees everything, changes nothing.
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// Why a user or token could not be added, or a sign-in was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("a console user named {0:?} already exists")]
    Exists(String),
    #[error("no console user named {0:?}")]
    Unknown(String),
    #[error("{user:?} has no unrevoked API token named {name:?}")]
    NoToken { user: String, name: String },
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    #[error("a user name is 1 to 64 letters, digits, '.', '_', '-' or '@'")]
    BadName,
    #[error("the user name or the password is wrong")]
    BadCredentials,
    #[error("too many failed sign-ins: try again in {0} s")]
    LockedOut(i64),
    #[error("hashing the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A signed-in user.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// 256 random bits, URL-safe.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a token: its SHA-256 digest.
pub fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn hash(password: &str) -> Result<String, UserError> {
    let hash: PasswordHash = Argon2::default().hash_password(password.as_bytes()).map_err(|e| UserError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash of no one's password: checked when the name is unknown, so that
/// an unknown name takes as long to refuse as a wrong password.
static DECOY: LazyLock<String> = LazyLock::new(|| hash(&random_token()).unwrap_or_default());

/// A new password, checked for length and hashed off the async threads
/// (argon2id takes tens of milliseconds of CPU on purpose).
async fn hashed_password(password: &str) -> Result<String, UserError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(UserError::WeakPassword);
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash(&password)).await.map_err(|e| UserError::Hash(e.to_string()))?
}

/// Adds a user (`crmsync console add-user`), recorded in the admin audit log.
pub async fn add(pool: &PgPool, actor: &Actor, name: &str, role: Role, password: &str) -> Result<i64, UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName);
    }
    let hashed = hashed_password(password).await?;
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO console_users (name, role, password_hash) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hashed)
    .fetch_optional(&mut *tx)
    .await?;
    let id = id.ok_or_else(|| UserError::Exists(name.to_owned()))?;
    let entry = NewEntry {
        actor,
        connection_id: None,
        action: "user.add",
        target: Some(name),
        before: None,
        after: Some(serde_json::json!({ "role": role.as_str() })),
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    Ok(id)
}

/// Sets a user's password (`crmsync console set-password`), ends the
/// user's sessions (whoever knew the old one is signed out) and clears
/// any lockout; recorded in the admin audit log (without the password).
pub async fn set_password(pool: &PgPool, actor: &Actor, name: &str, password: &str) -> Result<(), UserError> {
    let hashed = hashed_password(password).await?;
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "UPDATE console_users SET password_hash = $2, failed_signins = 0, locked_until = NULL, updated_at = now() \
         WHERE name = $1 RETURNING id",
    )
    .bind(name)
    .bind(hashed)
    .fetch_optional(&mut *tx)
    .await?;
    let id = id.ok_or_else(|| UserError::Unknown(name.to_owned()))?;
    sqlx::query("DELETE FROM console_sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
    let entry = NewEntry { actor, connection_id: None, action: "user.set_password", target: Some(name), before: None, after: None };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Removes a user (`crmsync console remove-user`) with its sessions and API
/// tokens; recorded in the admin audit log, which keeps the user's entries.
pub async fn remove(pool: &PgPool, actor: &Actor, name: &str) -> Result<(), UserError> {
    let mut tx = pool.begin().await?;
    let role: Option<String> =
        sqlx::query_scalar("DELETE FROM console_users WHERE name = $1 RETURNING role").bind(name).fetch_optional(&mut *tx).await?;
    let role = role.ok_or_else(|| UserError::Unknown(name.to_owned()))?;
    let entry = NewEntry {
        actor,
        connection_id: None,
        action: "user.remove",
        target: Some(name),
        before: Some(serde_json::json!({ "role": role })),
        after: None,
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds an API token for a user (`crmsync console add-token`); returns the
/// token, which is shown this once and never stored.
pub async fn add_token(pool: &PgPool, actor: &Actor, user: &str, token_name: &str) -> Result<String, UserError> {
    let token = format!("{TOKEN_PREFIX}{}", random_token());
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO console_api_tokens (user_id, name, token_hash) SELECT id, $2, $3 FROM console_users WHERE name = $1 RETURNING id",
    )
    .bind(user)
    .bind(token_name)
    .bind(digest(&token))
    .fetch_optional(&mut *tx)
    .await?;
    if id.is_none() {
        return Err(UserError::Unknown(user.to_owned()));
    }
    let entry = NewEntry {
        actor,
        connection_id: None,
        action: "token.add",
        target: Some(user),
        before: None,
        after: Some(serde_json::json!({ "token_name": token_name })),
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    Ok(token)
}

/// Revokes a user's API tokens of that name (`crmsync console
/// revoke-token`); how many there were. A revoked token opens nothing from
/// its next request on.
pub async fn revoke_tokens(pool: &PgPool, actor: &Actor, user: &str, token_name: &str) -> Result<u64, UserError> {
    let mut tx = pool.begin().await?;
    let revoked = sqlx::query(
        "UPDATE console_api_tokens t SET revoked_at = now() FROM console_users u \
         WHERE u.name = $1 AND t.user_id = u.id AND t.name = $2 AND t.revoked_at IS NULL",
    )
    .bind(user)
    .bind(token_name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if revoked == 0 {
        return Err(UserError::NoToken { user: user.to_owned(), name: token_name.to_owned() });
    }
    let entry = NewEntry {
        actor,
        connection_id: None,
        action: "token.revoke",
        target: Some(user),
        before: Some(serde_json::json!({ "token_name": token_name, "tokens": revoked })),
        after: None,
    };
    admin_audit::record(&mut *tx, &entry).await?;
    tx.commit().await?;
    Ok(revoked)
}

/// The user an API token belongs to, if it is one of ours and not revoked.
pub async fn by_token(pool: &PgPool, token: &str) -> Result<Option<User>, sqlx::Error> {
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "UPDATE console_api_tokens t SET last_used_at = now() FROM console_users u \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND u.id = t.user_id RETURNING u.id, u.name, u.role",
    )
    .bind(digest(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(id, name, role)| Some(User { id, name, role: Role::parse(&role)? })))
}

/// Checks a sign-in: the user, or why not.
///
/// The attempt is counted as a failure before the password is checked, in
/// the statement that checks the lock: attempts sent in parallel (to one
/// replica or several) are each counted, so no more than
/// [`FREE_ATTEMPTS`] get their password checked before the lock holds.
/// The right password then clears the count.
pub async fn sign_in(pool: &PgPool, name: &str, password: &str) -> Result<User, UserError> {
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "UPDATE console_users SET failed_signins = failed_signins + 1, \
         locked_until = CASE WHEN failed_signins + 1 >= $2 \
           THEN now() + make_interval(secs => least($4::float8, $3::float8 * power(2, failed_signins + 1 - $2))) \
           ELSE locked_until END \
         WHERE name = $1 AND (locked_until IS NULL OR locked_until <= now()) \
         RETURNING id, role, password_hash",
    )
    .bind(name)
    .bind(FREE_ATTEMPTS)
    .bind(FIRST_LOCKOUT_SECS as f64)
    .bind(MAX_LOCKOUT_SECS as f64)
    .fetch_optional(pool)
    .await?;
    let password = password.to_owned();
    let Some((id, role, stored)) = row else {
        let locked_for: Option<Option<i64>> =
            sqlx::query_scalar("SELECT ceil(extract(epoch FROM locked_until - now()))::bigint FROM console_users WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        return match locked_for {
            // Locked (or unlocked a moment ago, after the statement above).
            Some(secs) => Err(UserError::LockedOut(secs.unwrap_or(1).max(1))),
            None => {
                let _ = tokio::task::spawn_blocking(move || verify(&password, &DECOY)).await;
                Err(UserError::BadCredentials)
            }
        };
    };
    let ok = tokio::task::spawn_blocking(move || verify(&password, &stored)).await.unwrap_or(false);
    if !ok {
        return Err(UserError::BadCredentials);
    }
    sqlx::query("UPDATE console_users SET failed_signins = 0, locked_until = NULL WHERE id = $1").bind(id).execute(pool).await?;
    let role = Role::parse(&role).ok_or(UserError::BadCredentials)?;
    Ok(User { id, name: name.to_owned(), role })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_argon2id_hash_only() {
        let stored = hash("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        assert!(verify("correct horse battery", &stored));
        assert!(!verify("correct horse battery!", &stored));
        assert!(!verify("correct horse battery", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_only_their_digest_is_kept() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(digest(&a).len(), 32);
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn user_names_are_plain() {
        assert!(valid_name("ops.admin@example.com"));
        assert!(!valid_name(""));
        assert!(!valid_name("<script>"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
